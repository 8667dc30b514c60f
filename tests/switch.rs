//! Switching pools under load: nothing fails, new requests follow the switch at once, and
//! requests in flight finish where they started.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;

/// Which pool the n-th stable phase routes to: phases alternate blue, green, blue, …
fn pool_of_phase(phase: u64) -> &'static str {
    if (phase / 2).is_multiple_of(2) {
        "blue"
    } else {
        "green"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_round_trips_under_keepalive_load_fail_nothing() {
    let blue = Upstream::start("blue");
    let green = Upstream::start("green");
    let proxy = Arc::new(Proxy::start(&blue_green(&blue, &green)));
    proxy.wait_health("app", "blue", "healthy");
    proxy.wait_health("app", "green", "healthy");

    // Even phases are stable (no switch under way); odd phases have a switch in progress.
    let phase = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let checked = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let wrong_pool = Arc::new(Mutex::new(Vec::<String>::new()));

    let mut clients = Vec::new();
    for _ in 0..6 {
        let (phase, stop, ok, checked) = (phase.clone(), stop.clone(), ok.clone(), checked.clone());
        let (failures, wrong_pool) = (failures.clone(), wrong_pool.clone());
        let addr = proxy.addr();
        clients.push(tokio::spawn(async move {
            let mut conn = KeepAlive::connect(addr)
                .await
                .expect("connect to the proxy");
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                let before = phase.load(Ordering::SeqCst);
                match conn.get("/").await {
                    Ok(a) if a.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        let after = phase.load(Ordering::SeqCst);
                        if before == after && before % 2 == 0 {
                            checked.fetch_add(1, Ordering::Relaxed);
                            if a.pool != pool_of_phase(before) {
                                wrong_pool.lock().unwrap().push(format!(
                                    "phase {before}: answered by {} instead of {}",
                                    a.pool,
                                    pool_of_phase(before)
                                ));
                            }
                        }
                    }
                    Ok(a) => failures
                        .lock()
                        .unwrap()
                        .push(format!("status {}: {}", a.status, a.body)),
                    Err(e) => {
                        failures.lock().unwrap().push(e);
                        conn = KeepAlive::connect(addr)
                            .await
                            .expect("reconnect to the proxy");
                    }
                }
            }
        }));
    }

    let started = Instant::now();
    let socket = proxy.socket.clone();
    for i in 0..100u64 {
        let target = if i % 2 == 0 { "green" } else { "blue" };
        // Let some requests complete in the stable phase before switching again.
        let seen = checked.load(Ordering::SeqCst);
        let waited = Instant::now();
        while checked.load(Ordering::SeqCst) < seen + 20 {
            assert!(
                waited.elapsed() < Duration::from_secs(10),
                "load stalled before switch {i}"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        phase.fetch_add(1, Ordering::SeqCst);
        let p = proxy.clone();
        let out = tokio::task::spawn_blocking(move || p.cli(&["switch", target]))
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "switch {i} to {target} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        phase.fetch_add(1, Ordering::SeqCst);
    }
    let seen = checked.load(Ordering::SeqCst);
    while checked.load(Ordering::SeqCst) < seen + 20 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let total = ok.load(Ordering::SeqCst);
    eprintln!(
        "{total} requests in {elapsed:.2}s ({:.0}/s) across 100 switches, {} checked against a stable phase",
        total as f64 / elapsed,
        checked.load(Ordering::SeqCst)
    );
    let failures = failures.lock().unwrap();
    let wrong_pool = wrong_pool.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed requests, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        wrong_pool.is_empty(),
        "{} requests started after a switch returned went to the old pool, first: {:?}",
        wrong_pool.len(),
        &wrong_pool[..wrong_pool.len().min(5)]
    );
    assert!(
        checked.load(Ordering::SeqCst) >= 100 * 20,
        "too few requests checked against a stable phase"
    );
    assert!(
        total as f64 / elapsed > 1000.0,
        "load was only {:.0} requests/s",
        total as f64 / elapsed
    );
    assert_eq!(
        proxy.active_pool("app"),
        "blue",
        "100 switches end where they started"
    );
    assert!(blue.requests.load(Ordering::SeqCst) > 0 && green.requests.load(Ordering::SeqCst) > 0);
    drop(socket);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_in_flight_finishes_on_its_pool_and_wait_drain_waits_for_it() {
    let blue = Upstream::start("blue");
    let green = Upstream::start("green");
    let proxy = Proxy::start(&blue_green(&blue, &green));
    proxy.wait_health("app", "green", "healthy");

    let addr = proxy.addr();
    let slow = tokio::spawn(async move { get_once(addr, "/slow?ms=2000").await });
    let in_flight = blue.slow_in_flight.clone();
    tokio::task::spawn_blocking(move || {
        wait_for(
            "the slow request to reach blue",
            Duration::from_secs(5),
            || in_flight.load(Ordering::SeqCst) == 1,
        )
    })
    .await
    .unwrap();

    let started = Instant::now();
    let p_socket = proxy.socket.clone();
    let switch = tokio::task::spawn_blocking(move || {
        std::process::Command::new(BIN)
            .arg("--socket")
            .arg(p_socket)
            .args([
                "switch",
                "green",
                "--wait-drain",
                "--drain-timeout",
                "10s",
                "--json",
            ])
            .output()
            .unwrap()
    });
    // While the switch waits for blue to drain, new requests already go to green.
    let proxy = Arc::new(proxy);
    let p = proxy.clone();
    tokio::task::spawn_blocking(move || {
        wait_for(
            "the switch to green to apply",
            Duration::from_secs(5),
            || p.active_pool("app") == "green",
        )
    })
    .await
    .unwrap();
    let fresh = get_once(addr, "/")
        .await
        .expect("a request during the drain");
    assert_eq!(
        fresh.pool, "green",
        "a new request during the drain must go to green"
    );

    let out = switch.await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = String::from_utf8(out.stdout).unwrap();
    let reply: serde_json::Value = serde_json::from_str(last.lines().last().unwrap()).unwrap();
    assert_eq!(reply["drain"]["drained"], true, "{reply}");
    assert_eq!(reply["drain"]["pool"], "blue", "{reply}");

    let answer = slow.await.unwrap().expect("the slow request must complete");
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.pool, "blue",
        "the slow request finishes where it started"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "--wait-drain returned before the slow request finished"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keepalive_connection_follows_the_switch_on_its_next_request() {
    let blue = Upstream::start("blue");
    let green = Upstream::start("green");
    let proxy = Proxy::start(&blue_green(&blue, &green));
    proxy.wait_health("app", "green", "healthy");

    let mut conn = KeepAlive::connect(proxy.addr()).await.unwrap();
    assert_eq!(conn.get("/").await.unwrap().pool, "blue");
    proxy.cli_ok(&["switch", "green"]);
    assert_eq!(
        conn.get("/").await.unwrap().pool,
        "green",
        "same connection, next request"
    );
    proxy.cli_ok(&["rollback"]);
    assert_eq!(
        conn.get("/").await.unwrap().pool,
        "blue",
        "rollback goes back to blue"
    );
    proxy.cli_ok(&["rollback"]);
    assert_eq!(
        conn.get("/").await.unwrap().pool,
        "green",
        "a second rollback undoes the first"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_request_in_flight_finish_then_exits() {
    let blue = Upstream::start("blue");
    let green = Upstream::start("green");
    let mut proxy = Proxy::start(&blue_green(&blue, &green));
    let addr = proxy.addr();
    let slow = tokio::spawn(async move { get_once(addr, "/slow?ms=1500").await });
    let in_flight = blue.slow_in_flight.clone();
    let took = tokio::task::spawn_blocking(move || {
        wait_for(
            "the slow request to reach blue",
            Duration::from_secs(5),
            || in_flight.load(Ordering::SeqCst) == 1,
        );
        proxy.signal_and_wait("TERM")
    })
    .await
    .unwrap();
    let answer = slow
        .await
        .unwrap()
        .expect("the request in flight at SIGTERM completes");
    assert_eq!(answer.status, 200);
    assert!(
        took < Duration::from_secs(8),
        "SIGTERM took {took:?}: it should exit once nothing is in flight, well before the 10s grace"
    );
}
