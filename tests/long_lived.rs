//! WebSockets across a switch, against the real binary: they stop counting as requests in
//! flight, `status` and `/metrics` count them per pool, and once the drain timeout passes
//! they are closed (unless the service keeps them), so that their clients reconnect to the
//! pool that serves now.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

/// A WebSocket through the proxy: the upgrade answered 101 by `pool`, then an echo.
struct WebSocket {
    stream: TcpStream,
    pool: String,
}

impl WebSocket {
    fn open(proxy: &Proxy) -> WebSocket {
        let mut stream = raw_connect(proxy.addr());
        stream
            .write_all(
                b"GET /ws HTTP/1.1\r\nhost: app.test\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\
                  sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
            )
            .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(
                stream.read(&mut byte).unwrap(),
                1,
                "closed during the upgrade"
            );
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let pool = head
            .lines()
            .find_map(|l| l.strip_prefix("x-pool: "))
            .expect("an x-pool header")
            .to_string();
        let mut ws = WebSocket { stream, pool };
        ws.echo("hello");
        ws
    }

    fn echo(&mut self, text: &str) {
        self.stream.write_all(text.as_bytes()).unwrap();
        let mut back = vec![0u8; text.len()];
        self.stream.read_exact(&mut back).unwrap();
        assert_eq!(back, text.as_bytes());
    }

    /// Waits for the proxy to end the connection (end of stream or a reset).
    fn wait_closed(&mut self) {
        let mut buf = [0u8; 64];
        match self.stream.read(&mut buf) {
            Ok(0) | Err(_) => {}
            Ok(n) => panic!("{n} unexpected bytes instead of the end"),
        }
    }
}

fn pool_counts(proxy: &Proxy, pool: &str) -> (u64, u64) {
    let status = proxy.status();
    let pools = status["services"][0]["pools"].as_array().unwrap().clone();
    let p = pools.iter().find(|p| p["name"] == pool).unwrap();
    (
        p["in_flight"].as_u64().unwrap(),
        p["long_lived"].as_u64().unwrap(),
    )
}

#[test]
fn a_websocket_is_closed_when_the_drain_timeout_passes_and_its_client_reconnects_to_the_new_pool() {
    let (blue, green) = (Upstream::start("blue"), Upstream::start("green"));
    let proxy = Proxy::start(&blue_green(&blue, &green));
    proxy.wait_health("app", "green", "healthy");
    let mut ws = WebSocket::open(&proxy);
    assert_eq!(ws.pool, "blue");
    // Counted apart from requests in flight, in status and in /metrics.
    assert_eq!(pool_counts(&proxy, "blue"), (0, 1));
    assert_eq!(
        proxy.metric("switchback_long_lived_connections{pool=\"blue\",service=\"app\"}"),
        Some(1.0)
    );

    let started = Instant::now();
    let out = proxy.cli_ok(&["switch", "green", "--wait-drain", "--drain-timeout", "1s"]);
    let took = started.elapsed();
    assert!(out.contains("1 long-lived connection(s) closed"), "{out}");
    assert!(
        took >= Duration::from_secs(1),
        "waited for the timeout: {took:?}"
    );
    ws.wait_closed();
    assert_eq!(pool_counts(&proxy, "blue"), (0, 0));
    let mut again = WebSocket::open(&proxy);
    assert_eq!(again.pool, "green");
    again.echo("on green");
}

#[test]
fn a_switch_nobody_waits_on_still_closes_the_old_pools_websockets_after_its_drain_timeout() {
    let (blue, green) = (Upstream::start("blue"), Upstream::start("green"));
    let proxy = Proxy::start(&format!(
        "{}drain_timeout = \"1s\"\n",
        blue_green(&blue, &green)
    ));
    proxy.wait_health("app", "green", "healthy");
    let mut ws = WebSocket::open(&proxy);
    proxy.cli_ok(&["switch", "green"]);
    // Still open right after the switch: the drain timeout is its grace.
    ws.echo("still here");
    ws.wait_closed();
    assert_eq!(WebSocket::open(&proxy).pool, "green");
}

#[test]
fn long_lived_keep_leaves_websockets_open_and_the_drain_waits_for_requests_only() {
    let (blue, green) = (Upstream::start("blue"), Upstream::start("green"));
    let proxy = Proxy::start(&format!(
        "{}drain_timeout = \"200ms\"\nlong_lived = \"keep\"\n",
        blue_green(&blue, &green)
    ));
    proxy.wait_health("app", "green", "healthy");
    let mut ws = WebSocket::open(&proxy);
    let out = proxy.cli_ok(&["switch", "green", "--wait-drain"]);
    assert!(out.contains("drained"), "{out}");
    assert!(!out.contains("closed"), "{out}");
    // Well past the drain timeout, the WebSocket still echoes on blue.
    let deadline = Instant::now() + Duration::from_millis(600);
    while Instant::now() < deadline {
        ws.echo("kept");
    }
    assert_eq!(pool_counts(&proxy, "blue"), (0, 1));
}

#[test]
fn a_canary_that_ends_closes_its_websockets_after_the_drain_timeout() {
    let (blue, green) = (Upstream::start("blue"), Upstream::start("green"));
    let proxy = Proxy::start(&format!(
        "{}drain_timeout = \"1s\"\n",
        blue_green(&blue, &green)
    ));
    proxy.wait_health("app", "green", "healthy");
    proxy.cli_ok(&["canary", "green", "100"]);
    // A new client draws a bucket, and at 100% every bucket is the canary's.
    let mut ws = WebSocket::open(&proxy);
    assert_eq!(ws.pool, "green");
    proxy.cli_ok(&["canary", "green", "0"]);
    ws.echo("still here");
    ws.wait_closed();
    assert_eq!(pool_counts(&proxy, "green"), (0, 0));
    assert_eq!(WebSocket::open(&proxy).pool, "blue");
}

/// A line of `/proc/PID/status` of the proxy, as a number (kB for memory lines).
fn proc_status(proxy: &Proxy, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", proxy.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in:\n{status}"))
}

#[test]
fn an_open_websocket_holds_little_memory_as_the_proxy_runs_without_huge_pages() {
    let (blue, green) = (Upstream::start("blue"), Upstream::start("green"));
    let proxy = Proxy::start(&blue_green(&blue, &green));
    // The first ones allocate what later ones reuse.
    drop((0..10).map(|_| WebSocket::open(&proxy)).collect::<Vec<_>>());
    wait_for("the first WebSockets closed", Duration::from_secs(10), || {
        pool_counts(&proxy, "blue") == (0, 0)
    });
    let n = 200;
    let before = proc_status(&proxy, "VmRSS:");
    let open: Vec<WebSocket> = (0..n).map(|_| WebSocket::open(&proxy)).collect();
    assert_eq!(pool_counts(&proxy, "blue"), (0, n as u64));
    let per_websocket = (proc_status(&proxy, "VmRSS:") - before) / n as u64;
    // With huge pages, the few bytes a WebSocket's buffers hold made whole 2 MiB regions
    // resident: 163 KB each, against 45 KB without.
    assert!(
        per_websocket < 100,
        "{per_websocket} kB resident per open WebSocket"
    );
    assert_eq!(proc_status(&proxy, "THP_enabled:"), 0);
    drop(open);
}
