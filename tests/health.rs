//! Health checks and retries: no request goes to a backend known to be down while a healthy one
//! exists, a refused connection is retried on another backend, and `pool set --wait` applies
//! new backends only once they pass.

mod support;

use std::sync::atomic::Ordering;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_fails_its_check_gets_no_traffic_until_it_recovers() {
    let one = Upstream::start("blue");
    let two = Upstream::start("blue");
    let green = Upstream::start("green");
    let services = format!(
        "[services.app]\nactive = \"blue\"\npools.blue = [\"{}\", \"{}\"]\npools.green = [\"{}\"]\n\
         health = {{ path = \"/health\", interval = \"100ms\", timeout = \"1s\", healthy_threshold = 2, unhealthy_threshold = 2 }}\n",
        one.addr, two.addr, green.addr
    );
    let proxy = Proxy::start(&services);
    proxy.wait_health("app", "blue", "healthy");

    two.set_healthy(false);
    wait_for(
        "the second backend to be down",
        std::time::Duration::from_secs(10),
        || proxy.pool_health("app", "blue") == ["healthy", "down"],
    );
    let (one_before, two_before) = (
        one.requests.load(Ordering::SeqCst),
        two.requests.load(Ordering::SeqCst),
    );
    let mut conn = KeepAlive::connect(proxy.addr()).await.unwrap();
    for _ in 0..50 {
        assert_eq!(conn.get("/").await.unwrap().status, 200);
    }
    assert_eq!(
        one.requests.load(Ordering::SeqCst) - one_before,
        50,
        "all traffic to the healthy backend"
    );
    assert_eq!(
        two.requests.load(Ordering::SeqCst),
        two_before,
        "none to the backend that is down"
    );
    let status = proxy.cli_ok(&["status"]);
    assert!(
        status.contains("down (status 503)"),
        "status shows why:\n{status}"
    );

    two.set_healthy(true);
    proxy.wait_health("app", "blue", "healthy");
    for _ in 0..50 {
        assert_eq!(conn.get("/").await.unwrap().status, 200);
    }
    assert!(
        two.requests.load(Ordering::SeqCst) > two_before,
        "the recovered backend serves again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_retried_on_another_backend_of_the_pool() {
    let live = Upstream::start("blue");
    let proxy = Proxy::start(&dead_then_live(free_port(), &live));
    for i in 0..40 {
        let a = get_once(proxy.addr(), "/").await.unwrap();
        assert_eq!(a.status, 200, "request {i} failed: {}", a.body);
        assert_eq!(a.pool, "blue");
    }
    assert_eq!(live.requests.load(Ordering::SeqCst), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_set_wait_applies_new_backends_once_they_pass() {
    let blue = Upstream::start("blue");
    let green = Upstream::start("green");
    let proxy = Proxy::start(&blue_green(&blue, &green));
    proxy.wait_health("app", "green", "healthy");

    let new_green = [Upstream::start("green-2"), Upstream::start("green-3")];
    let list = format!("{},{}", new_green[0].addr, new_green[1].addr);
    let out = proxy.cli_ok(&["pool", "set", "green", &list, "--wait", "--timeout", "10s"]);
    assert!(
        out.contains("2/2 new backends healthy"),
        "progress is shown:\n{out}"
    );
    assert!(out.contains(&format!("pool green now {list}")), "{out}");
    assert_eq!(proxy.pool_health("app", "green"), ["healthy", "healthy"]);

    proxy.cli_ok(&["switch", "green"]);
    let mut conn = KeepAlive::connect(proxy.addr()).await.unwrap();
    let mut pools = std::collections::BTreeSet::new();
    for _ in 0..10 {
        pools.insert(conn.get("/").await.unwrap().pool);
    }
    assert_eq!(
        pools.into_iter().collect::<Vec<_>>(),
        ["green-2", "green-3"],
        "round robin over the new backends, none to the old one"
    );
    assert_eq!(green.requests.load(Ordering::SeqCst), 0);
}
