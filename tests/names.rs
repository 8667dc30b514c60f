//! Backends given by host name, against the real binary and a real DNS server the test
//! controls (`pebble-challtestsrv`): a name is looked up again while the proxy runs and a new
//! address takes the traffic with no failed request; a name that does not resolve leaves its
//! pool without backends (status says why, `switch` refuses it, `check` warns) until it does;
//! `pool set` takes names; `localhost` works with no DNS server at all.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use support::dns::DnsServer;
use support::*;

/// The `backends` of a pool in `status --json`: (address, name, health).
fn backends(proxy: &Proxy, pool: &str) -> Vec<(String, String, String)> {
    proxy
        .pool_backends("app", pool)
        .iter()
        .map(|b| {
            let s = |k: &str| b[k].as_str().unwrap_or_default().to_string();
            (s("address"), s("name"), s("health"))
        })
        .collect()
}

fn resolver(dns: &DnsServer) -> String {
    format!(
        "[resolver]\nnameservers = [\"{}\"]\nrefresh = \"1s\"\n",
        dns.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_record_moves_traffic_to_the_new_address_with_no_failed_request() {
    let dns = DnsServer::start();
    let port = free_port();
    let one = Upstream::start_on("one", SocketAddr::from(([127, 0, 0, 1], port)));
    let two = Upstream::start_on("two", SocketAddr::from(([127, 0, 0, 2], port)));
    // api.test has no record of its own yet: it gets the default address.
    dns.set_default_ipv4("127.0.0.1");
    let proxy = Proxy::start(&format!(
        "{}\n[services.app]\nactive = \"blue\"\npools.blue = [\"api.test:{port}\"]\n\
         health = {{ path = \"/health\", interval = \"100ms\", timeout = \"1s\" }}\n",
        resolver(&dns)
    ));
    // Resolved before the first request: the start waits for the names.
    assert_eq!(get_once(proxy.addr(), "/").await.unwrap().pool, "one");
    proxy.wait_health("app", "blue", "healthy");
    assert_eq!(
        backends(&proxy, "blue"),
        [(
            format!("127.0.0.1:{port}"),
            format!("api.test:{port}"),
            "healthy".to_string()
        )]
    );

    let load = Load::start(proxy.addr(), "app.test", 4, 2, |a| a.status == 200);
    load.wait_for_more(200, "requests served by the first address");
    dns.add_a("api.test", &["127.0.0.2"]);
    wait_for(
        "the proxy to look the name up again",
        Duration::from_secs(15),
        || {
            backends(&proxy, "blue")
                .iter()
                .map(|b| b.0.clone())
                .collect::<Vec<_>>()
                == [format!("127.0.0.2:{port}")]
        },
    );
    let before = two.requests.load(Ordering::SeqCst);
    load.wait_for_more(200, "requests served by the new address");
    assert!(two.requests.load(Ordering::SeqCst) >= before + 200);
    // Every request after the change went to the new address (probes aside).
    let one_after = one.requests.load(Ordering::SeqCst);
    load.wait_for_more(100, "more requests");
    assert_eq!(one.requests.load(Ordering::SeqCst), one_after);
    load.stop_with_no_failure().await;
    // The address that left is no longer exported; the new one is.
    let (_, metrics) = proxy.admin_get("/metrics");
    assert!(
        !metrics.contains(&format!("backend=\"127.0.0.1:{port}\"")),
        "{metrics}"
    );
    assert!(metrics.contains(&format!("backend=\"127.0.0.2:{port}\"")));

    // Both addresses at once: each is a backend of its own, checked on its own.
    dns.add_a("api.test", &["127.0.0.1"]);
    wait_for("both addresses", Duration::from_secs(15), || {
        backends(&proxy, "blue").len() == 2
    });
    proxy.wait_health("app", "blue", "healthy");
    let mut pools = std::collections::BTreeSet::new();
    for _ in 0..8 {
        pools.insert(get_once(proxy.addr(), "/").await.unwrap().pool);
    }
    assert_eq!(pools.into_iter().collect::<Vec<_>>(), ["one", "two"]);
    assert!(
        proxy.log().contains("backend name resolved"),
        "{}",
        proxy.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_does_not_resolve_is_down_until_it_does() {
    let dns = DnsServer::start();
    let blue = Upstream::start("blue");
    let green = Upstream::start_on("green", SocketAddr::from(([127, 0, 0, 3], 0)));
    let services = format!(
        "{}\n[services.app]\nactive = \"blue\"\npools.blue = [\"{}\"]\npools.green = [\"green.test:{}\"]\n\
         health = {{ path = \"/health\", interval = \"100ms\", timeout = \"1s\" }}\n",
        resolver(&dns),
        blue.addr,
        green.addr.port()
    );

    // `check` warns, and the config is still valid.
    let mut proxy = Proxy::start(&services);
    let check = check_config(&proxy.config);
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "{check:?}");
    assert!(
        stderr.contains(&format!(
            "warning: services.app.pools.green: green.test:{} does not resolve",
            green.addr.port()
        )),
        "{stderr}"
    );

    // The running proxy shows the name as a backend that is down, and says why.
    let name = format!("green.test:{}", green.addr.port());
    let listed = backends(&proxy, "green");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (&listed[0].0, &listed[0].1, listed[0].2.as_str()),
        (&name, &name, "down")
    );
    let table = proxy.cli_ok(&["status"]);
    assert!(table.contains("does not resolve"), "{table}");
    // /metrics has it as a backend that is down, which the SwitchbackBackendDown alert sees.
    let (_, metrics) = proxy.admin_get("/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("switchback_backend_up{")
                && l.contains(&format!("backend=\"{name}\""))
                && l.ends_with(" 0")),
        "{metrics}"
    );
    let refused = proxy.cli(&["switch", "green"]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("resolve to no address"), "{err}");
    assert_eq!(proxy.active_pool("app"), "blue");

    // Once the record exists, the next lookup brings the backend in, and the switch goes.
    dns.set_a("green.test", &["127.0.0.3"]);
    wait_for("green to resolve", Duration::from_secs(15), || {
        backends(&proxy, "green").first().map(|b| b.0.clone()) == Some(green.addr.to_string())
    });
    proxy.wait_health("app", "green", "healthy");
    proxy.cli_ok(&["switch", "green"]);
    assert_eq!(get_once(proxy.addr(), "/").await.unwrap().pool, "green");

    // `pool set` takes names, looked up at once; with --wait, one that does not resolve is
    // refused and nothing changes.
    let refused = proxy.cli(&["pool", "set", "blue", "nowhere.test:80", "--wait"]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("nowhere.test"),
        "{refused:?}"
    );
    // Without --wait it is taken (the name may be a container still starting), with a warning.
    let taken = proxy.cli(&["pool", "set", "blue", "nowhere.test:80"]);
    assert!(taken.status.success(), "{taken:?}");
    let warning = String::from_utf8_lossy(&taken.stderr);
    assert!(
        warning.contains("warning: nowhere.test:80 does not resolve"),
        "{warning}"
    );
    dns.set_a("blue.test", &["127.0.0.1"]);
    let set = format!("blue.test:{}", blue.addr.port());
    proxy.cli_ok(&["pool", "set", "blue", &set, "--wait"]);
    assert_eq!(
        backends(&proxy, "blue"),
        [(blue.addr.to_string(), set.clone(), "healthy".to_string())]
    );
    // The state keeps the name, not the address it had.
    let state = std::fs::read_to_string(proxy.state_dir().join("state.json")).unwrap();
    assert!(state.contains(&format!("\"{set}\"")), "{state}");

    // A name that stops resolving takes its backends out: the active pool has none left.
    dns.clear_a("green.test");
    wait_for("green to stop resolving", Duration::from_secs(15), || {
        backends(&proxy, "green").first().map(|b| b.0.clone()) == Some(name.clone())
    });
    let answer = get_once(proxy.addr(), "/").await.unwrap();
    assert_eq!(answer.status, 503, "{}", answer.body);

    // A reload that brings a new name looks it up before the new file goes live: its pool
    // has the address as soon as `reload` answers.
    dns.set_a("fresh.test", &["127.0.0.3"]);
    proxy.rewrite(&services.replace("green.test", "fresh.test"));
    proxy.cli_ok(&["reload"]);
    let listed = backends(&proxy, "green");
    assert_eq!(
        listed.iter().map(|b| b.0.as_str()).collect::<Vec<_>>(),
        [green.addr.to_string()],
        "{listed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn localhost_needs_no_dns_server() {
    let up = Upstream::start("local");
    let proxy = Proxy::start(&format!(
        "[services.app]\nactive = \"blue\"\npools.blue = [\"localhost:{}\"]\n\
         health = {{ path = \"/health\", interval = \"100ms\", timeout = \"1s\" }}\n",
        up.addr.port()
    ));
    wait_for("127.0.0.1 to be healthy", Duration::from_secs(10), || {
        backends(&proxy, "blue")
            .iter()
            .any(|b| b.0 == up.addr.to_string() && b.2 == "healthy")
    });
    for b in backends(&proxy, "blue") {
        assert_eq!(b.1, format!("localhost:{}", up.addr.port()));
    }
    for _ in 0..4 {
        let a = get_once(proxy.addr(), "/").await.unwrap();
        assert_eq!((a.status.as_u16(), a.pool.as_str()), (200, "local"));
    }
}

/// Compose names services with underscores (`flask_server`), and Docker's DNS answers them:
/// such a name is looked up and served, through a real DNS server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compose_name_with_an_underscore_resolves_and_serves() {
    let dns = DnsServer::start();
    let port = free_port();
    let _app = Upstream::start_on("flask", SocketAddr::from(([127, 0, 0, 3], port)));
    dns.add_a("flask_server", &["127.0.0.3"]);
    let proxy = Proxy::start(&format!(
        "{}\n[services.app]\nactive = \"blue\"\npools.blue = [\"flask_server:{port}\"]\n",
        resolver(&dns)
    ));
    assert_eq!(get_once(proxy.addr(), "/").await.unwrap().pool, "flask");
    assert_eq!(
        backends(&proxy, "blue")
            .iter()
            .map(|b| (b.0.clone(), b.1.clone()))
            .collect::<Vec<_>>(),
        [(format!("127.0.0.3:{port}"), format!("flask_server:{port}"))]
    );
}
