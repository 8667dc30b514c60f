//! `switchback reload` and SIGHUP: a new config file applied with no restart, under load,
//! with no failed request; a bad file or a refused change leaves everything as it was.

mod support;

use std::time::Duration;

use support::*;

/// `app.test` on `app_backend`; with `api`, also the service `api` on `api.test`.
fn services(app_backend: &Upstream, api: Option<&Upstream>) -> String {
    let mut text = format!(
        "[services.app]\nhosts = [\"app.test\"]\nactive = \"blue\"\npools.blue = [\"{}\"]\n",
        app_backend.addr
    );
    if let Some(api) = api {
        text.push_str(&format!(
            "\n[services.api]\nhosts = [\"api.test\"]\nactive = \"main\"\npools.main = [\"{}\"]\n",
            api.addr
        ));
    }
    text
}

const NO_SERVICE: &str = "switchback: no service for this host and path\n";

fn reload_json(proxy: &Proxy, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["reload", "--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&proxy.cli_ok(&all)).expect("reload --json is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_load_fail_no_request_and_apply_at_once() {
    let one = Upstream::start("one");
    let two = Upstream::start("two");
    let api = Upstream::start("api");
    let mut proxy = Proxy::start(&services(&one, None));

    // Keep-alive clients, and one that opens a new connection for every request.
    let load = Load::start(proxy.addr(), "app.test", 3, 1, |a| a.status == 200);

    for i in 0..20 {
        load.wait_for_more(20, "requests between reloads");
        let with_api = i % 2 == 0;
        let app_backend = if with_api { &two } else { &one };
        proxy.rewrite(&services(app_backend, with_api.then_some(&api)));
        let reply = reload_json(&proxy, &[]);
        let changes = reply["changes"].as_array().unwrap();
        assert!(
            changes
                .iter()
                .any(|c| c.as_str().unwrap().contains(if with_api {
                    "\"api\" added"
                } else {
                    "\"api\" removed"
                })),
            "reload {i}: {reply}"
        );
        // Applied by the time the command returns.
        let a = get_host(proxy.addr(), "app.test", "/").await.unwrap();
        assert_eq!(a.pool, if with_api { "two" } else { "one" }, "reload {i}");
        let a = get_host(proxy.addr(), "api.test", "/").await.unwrap();
        if with_api {
            assert_eq!((a.status.as_u16(), a.pool.as_str()), (200, "api"));
        } else {
            assert_eq!(
                (a.status.as_u16(), a.body.as_str()),
                (503, NO_SERVICE),
                "reload {i}: api.test is gone"
            );
        }
    }
    load.wait_for_more(20, "requests after the reloads");
    load.stop_with_no_failure().await;
    assert_eq!(proxy.status()["generation"], 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_file_is_reported_whole_and_changes_nothing() {
    let one = Upstream::start("one");
    let api = Upstream::start("api");
    let mut proxy = Proxy::start(&services(&one, None));
    let before = proxy.status();

    proxy.rewrite(&format!(
        "{}\n[services.api]\nhosts = [\"api.test\"]\nactive = \"main\"\npools.main = [\"{}\", \"not an address\"]\nread_timeout = \"soon\"\n",
        services(&one, None),
        api.addr
    ));
    let out = proxy.cli(&["reload"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = proxy.config.display().to_string();
    let text = std::fs::read_to_string(&proxy.config).unwrap();
    let line_of = |key: &str| 1 + text.lines().position(|l| l.starts_with(key)).unwrap();
    assert!(stderr.contains("bad_config"), "{stderr}");
    // Every problem, each with its file, line and key.
    for (key, line) in [
        ("services.api.pools.main", line_of("pools.main")),
        ("services.api.read_timeout", line_of("read_timeout")),
    ] {
        assert!(
            stderr.contains(&format!("{file}:{line}: {key}")),
            "{key} at line {line}: {stderr}"
        );
    }
    assert!(stderr.contains("nothing changed"), "{stderr}");

    assert_eq!(proxy.status(), before);
    let a = get_host(proxy.addr(), "api.test", "/").await.unwrap();
    assert_eq!((a.status.as_u16(), a.body.as_str()), (503, NO_SERVICE));
    let a = get_host(proxy.addr(), "app.test", "/").await.unwrap();
    assert_eq!(a.pool, "one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_the_process_keeps_serving() {
    let one = Upstream::start("one");
    let api = Upstream::start("api");
    let mut proxy = Proxy::start(&services(&one, None));
    let pid = proxy.pid();

    proxy.rewrite(&services(&one, Some(&api)));
    let sent = std::process::Command::new("kill")
        .args(["-s", "HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    wait_for("SIGHUP's reload", Duration::from_secs(10), || {
        proxy.log().contains("SIGHUP: config reloaded")
    });
    let a = get_host(proxy.addr(), "api.test", "/").await.unwrap();
    assert_eq!((a.status.as_u16(), a.pool.as_str()), (200, "api"));
    assert_eq!(proxy.pid(), pid);
    assert_eq!(proxy.status()["generation"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_serving_pool_needs_force_and_keys_of_the_process_wait_for_an_upgrade() {
    let blue = Upstream::start("blue");
    let green = Upstream::start("green");
    let mut proxy = Proxy::start(&blue_green(&blue, &green));
    proxy.wait_health("app", "green", "healthy");
    proxy.cli_ok(&["switch", "green"]);

    // The file drops green, which serves: refused, and nothing changes.
    let only_blue = format!(
        "[services.app]\nhosts = []\nactive = \"blue\"\npools.blue = [\"{}\"]\n",
        blue.addr
    );
    proxy.rewrite(&only_blue);
    let out = proxy.cli(&["reload"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("reload_refused"), "{stderr}");
    assert!(stderr.contains("pool \"green\" serves"), "{stderr}");
    assert_eq!(proxy.active_pool("app"), "green");

    // A reload that changes only its health check keeps green serving: live state wins.
    proxy.rewrite(&blue_green(&blue, &green).replace("100ms", "200ms"));
    let reply = reload_json(&proxy, &[]);
    assert_eq!(reply["changes"][0], "service \"app\": health changed");
    assert_eq!(proxy.active_pool("app"), "green");

    // Forced: blue, the file's active pool, serves. What only a new process applies is
    // reported and left alone; the rest is applied.
    proxy.rewrite(&format!("{only_blue}\n[metrics]\nenabled = false\n"));
    let reply = reload_json(&proxy, &["--force"]);
    assert!(reply["changes"].to_string().contains("forced"), "{reply}");
    assert_eq!(reply["needs_upgrade"], serde_json::json!(["[metrics]"]));
    // Metrics stay on until a new process reads the file.
    assert!(proxy
        .admin_get("/metrics")
        .1
        .contains("switchback_upstream_retries_total"));
    assert_eq!(proxy.active_pool("app"), "blue");
    let a = get_once(proxy.addr(), "/").await.unwrap();
    assert_eq!(a.pool, "blue");
}
