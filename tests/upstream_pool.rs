//! Backend keep-alive connections under many clients (`services.NAME.upstream.keepalive` and
//! `idle_timeout`), against a backend that counts the connections it accepts.

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use support::{wait_for, KeepAlive, Proxy, Upstream};

fn service(upstream: &Upstream, settings: &str) -> String {
    format!(
        "[services.app]\nactive = \"blue\"\npools.blue = [\"{}\"]\n[services.app.upstream]\n{settings}\n",
        upstream.addr
    )
}

fn opened(proxy: &Proxy, upstream: &Upstream) -> f64 {
    proxy
        .metric(&format!(
            "switchback_upstream_connections_opened_total{{backend=\"{}\",pool=\"blue\",service=\"app\"}}",
            upstream.addr
        ))
        .unwrap_or(0.0)
}

/// `clients` keep-alive clients, each sending GETs one after another for `run` (and at most
/// 2000 each): the requests answered 200. Any other answer or a failure fails the test.
async fn steady_load(proxy: &Proxy, clients: usize, run: Duration) -> u64 {
    let addr = proxy.addr();
    let until = Instant::now() + run;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        tasks.push(tokio::spawn(async move {
            let mut conn = KeepAlive::connect(addr).await.expect("connect");
            let mut answered = 0u64;
            while Instant::now() < until && answered < 2000 {
                let answer = conn.get("/").await.expect("an answer");
                assert_eq!(answer.status, 200);
                answered += 1;
            }
            answered
        }));
    }
    let mut answered = 0;
    for task in tasks {
        answered += task.await.expect("a client");
    }
    answered
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hundred_clients_need_no_more_backend_connections_than_clients() {
    let blue = Upstream::start("blue");
    let proxy = Proxy::start(&service(&blue, ""));
    let answered = steady_load(&proxy, 300, Duration::from_secs(3)).await;
    // Every client sent several requests, so without reuse there would be thousands of
    // connections.
    assert!(answered >= 1500, "only {answered} requests answered");
    let accepted = blue.accepted.load(Ordering::SeqCst);
    // pingora's path gives a connection back to its pool after the client has the answer, so a
    // client's next request sometimes comes first and opens another: a few dozen in tens of
    // thousands of requests. switchback's path gives it back before any other request runs.
    let slack = if std::env::var("SWITCHBACK_TEST_HTTP1").as_deref() == Ok("pingora") {
        75
    } else {
        8
    };
    assert!(
        accepted <= 300 + slack,
        "{accepted} backend connections for 300 clients ({answered} requests)"
    );
    wait_for("the opened count", Duration::from_secs(5), || {
        opened(&proxy, &blue) == blue.accepted.load(Ordering::SeqCst) as f64
    });
}

/// One slow GET on each of `clients`, all at once: each holds its backend connection for
/// 200 ms, so the backend sees them all in flight together.
async fn burst(clients: Vec<KeepAlive>) -> Vec<KeepAlive> {
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut conn| {
            tokio::spawn(async move {
                let answer = conn.get("/slow?ms=200").await.expect("an answer");
                assert_eq!(answer.status, 200);
                conn
            })
        })
        .collect();
    let mut back = Vec::new();
    for task in tasks {
        back.push(task.await.expect("a client"));
    }
    back
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_small_keepalive_opens_more_connections_and_counts_them() {
    let blue = Upstream::start("blue");
    let proxy = Proxy::start(&service(&blue, "keepalive = 8"));
    let mut clients = Vec::new();
    for _ in 0..300 {
        clients.push(KeepAlive::connect(proxy.addr()).await.expect("connect"));
    }
    // 300 requests in flight at once need 300 backend connections; once they ended, at most 8
    // per worker thread were kept, so the same burst again opens most of them anew. pingora's
    // path has one pool for the process, sized from keepalive but never under 128 and sharded,
    // so there it only has to open some.
    let clients = burst(clients).await;
    let first = blue.accepted.load(Ordering::SeqCst);
    assert!(
        first >= 300,
        "{first} backend connections for 300 requests in flight"
    );
    burst(clients).await;
    let opened_again = blue.accepted.load(Ordering::SeqCst) - first;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let least = if std::env::var("SWITCHBACK_TEST_HTTP1").as_deref() == Ok("pingora") {
        1
    } else {
        300 - 8 * threads
    };
    assert!(
        opened_again >= least,
        "only {opened_again} backend connections opened by the second burst with keepalive = 8"
    );
    wait_for("the opened count", Duration::from_secs(5), || {
        opened(&proxy, &blue) == blue.accepted.load(Ordering::SeqCst) as f64
    });
}

#[tokio::test]
async fn idle_connections_close_after_idle_timeout_and_the_next_request_opens_another() {
    let blue = Upstream::start("blue");
    let proxy = Proxy::start(&service(&blue, "idle_timeout = \"1s\""));
    let mut conn = KeepAlive::connect(proxy.addr()).await.unwrap();
    assert_eq!(conn.get("/").await.unwrap().status, 200);
    assert_eq!(blue.accepted.load(Ordering::SeqCst), 1);
    // The proxy closes its idle connection: the backend sees the close.
    wait_for(
        "the idle backend connection to close",
        Duration::from_secs(10),
        || blue.open.load(Ordering::SeqCst) == 0,
    );
    assert_eq!(conn.get("/").await.unwrap().status, 200);
    assert_eq!(blue.accepted.load(Ordering::SeqCst), 2);
    wait_for("the opened count", Duration::from_secs(5), || {
        opened(&proxy, &blue) == 2.0
    });
}
