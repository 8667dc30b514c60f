//! `switchback deploy`: new backends to the pool that is not active, health-gated, switched to
//! and the old pool drained, in one command, under load; and a deploy that cannot pass its
//! health checks changes nothing.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_under_load_goes_to_the_idle_pool_switches_and_drains_with_no_failed_request() {
    let blue = Upstream::start("blue");
    let green = Upstream::start("green");
    let proxy = Proxy::start(&blue_green(&blue, &green));
    proxy.wait_health("app", "blue", "healthy");
    let load = Load::start(proxy.addr(), "app", 4, 2, |a| a.status == 200);
    load.wait_for_more(200, "requests before the deploy");

    // The new version: two backends that green gets in place of its old one.
    let new = [Upstream::start("green-v2"), Upstream::start("green-v2")];
    let list = format!("{},{}", new[0].addr, new[1].addr);
    let out = proxy.cli_ok(&["deploy", &list, "--health-timeout", "10s"]);
    for line in [
        "app: deploying to green (active: blue): waiting for the new backends' health checks",
        "app: pool green: 2/2 new backends healthy",
        "app: healthy; switching from blue to green",
        "app: waiting for blue to drain",
        &format!(
            "app: deployed {}, {} to green, the active pool (was blue); blue drained",
            new[0].addr, new[1].addr
        ),
    ] {
        assert!(out.contains(line), "{line:?} is missing from:\n{out}");
    }
    assert_eq!(proxy.active_pool("app"), "green");
    load.wait_for_more(200, "requests after the deploy");
    load.stop_with_no_failure().await;
    let answered_new =
        new[0].requests.load(Ordering::SeqCst) + new[1].requests.load(Ordering::SeqCst);
    assert!(answered_new > 0, "the new backends serve");
    assert_eq!(
        green.requests.load(Ordering::SeqCst),
        0,
        "green's old backend got no request"
    );

    // The next deploy goes to blue, now the pool that is not active; as JSON lines.
    let next = Upstream::start("blue-v3");
    let out = proxy.cli_ok(&["deploy", &next.addr.to_string(), "--json"]);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let phases: Vec<&str> = lines
        .iter()
        .filter(|l| l["event"] == "deploy_phase")
        .map(|l| l["phase"].as_str().unwrap())
        .collect();
    assert_eq!(phases, ["health", "switch", "drain"]);
    let end = lines.last().unwrap();
    assert_eq!(end["ok"], true, "{end}");
    assert_eq!(
        (
            end["pool"].as_str(),
            end["previous"].as_str(),
            end["outcome"].as_str()
        ),
        (Some("blue"), Some("green"), Some("switched"))
    );
    assert_eq!(end["previous_backends"][0], blue.addr.to_string());
    assert_eq!(end["drain"]["drained"], true);
    assert_eq!(proxy.active_pool("app"), "blue");
    assert_eq!(get_once(proxy.addr(), "/").await.unwrap().pool, "blue-v3");

    // --watch shows how the last one ended.
    let watched = proxy.cli_ok(&["deploy", "--watch"]);
    assert!(
        watched.contains(&format!("app: deployed {} to blue", next.addr)),
        "{watched}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_whose_backends_never_pass_changes_nothing_and_says_which_failed() {
    let blue = Upstream::start("blue");
    let green = Upstream::start("green");
    let proxy = Proxy::start(&blue_green(&blue, &green));
    proxy.wait_health("app", "green", "healthy");

    let broken = Upstream::start("green-broken");
    broken.set_healthy(false);
    let out = proxy.cli(&["deploy", &broken.addr.to_string(), "--health-timeout", "1s"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("health_timeout")
            && stderr.contains(&format!("{}: status 503", broken.addr)),
        "names the backend and how it failed: {stderr}"
    );
    assert_eq!(proxy.active_pool("app"), "blue", "nothing was switched");
    let backends = proxy.pool_backends("app", "green");
    assert_eq!(backends.len(), 1, "{backends:?}");
    assert_eq!(
        backends[0]["address"],
        green.addr.to_string(),
        "green keeps its backend"
    );
    assert_eq!(get_once(proxy.addr(), "/").await.unwrap().pool, "blue");

    // The active pool and an unknown one are refused before anything runs.
    let active = proxy.cli(&["deploy", &broken.addr.to_string(), "--pool", "blue"]);
    assert_eq!(active.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&active.stderr).contains("active_pool"));
    let unknown = proxy.cli(&["deploy", &broken.addr.to_string(), "--pool", "purple"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown_pool"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_deploy_runs_per_service_and_it_outlives_its_client() {
    let blue = Upstream::start("blue");
    let green = Upstream::start("green");
    let third = Upstream::start("canary");
    let proxy = Proxy::start(&format!(
        "{}pools.canary = [\"{}\"]\n",
        blue_green(&blue, &green),
        third.addr
    ));
    proxy.wait_health("app", "blue", "healthy");

    // With two pools that are not active, the pool must be named.
    let unnamed = proxy.cli(&["deploy", &green.addr.to_string()]);
    assert_eq!(unnamed.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&unnamed.stderr).contains("pool_required"),
        "{unnamed:?}"
    );

    // A deploy waiting on a backend that is not healthy yet, whose client goes away.
    let late = Upstream::start("green-late");
    late.set_healthy(false);
    let mut client = std::process::Command::new(env!("CARGO_BIN_EXE_switchback"))
        .arg("--socket")
        .arg(&proxy.socket)
        .args(["deploy", &late.addr.to_string(), "--pool", "green"])
        .args(["--health-timeout", "30s"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut control = RawControl::connect(&proxy.socket);
    wait_for("the deploy to run", Duration::from_secs(10), || {
        // To the active pool: refused as such while no deploy runs, changing nothing.
        let refused = control.request(&format!(
            r#"{{"cmd":"deploy","pool":"blue","backends":["{}"]}}"#,
            third.addr
        ));
        refused["error"]["code"] == "deploy_running"
    });
    let rollout = control.request(r#"{"cmd":"rollout","pool":"canary"}"#);
    assert_eq!(rollout["error"]["code"], "deploy_running", "{rollout}");
    client.kill().unwrap();
    client.wait().unwrap();

    // It goes on without its client: once the backend is healthy, green is switched to.
    late.set_healthy(true);
    let watched = proxy.cli_ok(&["deploy", "--watch"]);
    assert!(
        watched.contains(&format!("app: deployed {} to green", late.addr)),
        "{watched}"
    );
    assert_eq!(proxy.active_pool("app"), "green");
}
