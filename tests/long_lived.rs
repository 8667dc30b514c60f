//! WebSockets across a switch, against the real binary: they stop counting as requests in
//! flight, `status` and `/metrics` count them per pool, and once the drain timeout passes
//! they are closed (unless the service keeps them), so that their clients reconnect to the
//! pool that serves now.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
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
        let head = read_head(&mut stream);
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
fn an_open_websocket_holds_little_memory() {
    let (blue, green) = (Upstream::start("blue"), Upstream::start("green"));
    let proxy = Proxy::start(&blue_green(&blue, &green));
    // The first ones allocate what later ones reuse.
    drop((0..10).map(|_| WebSocket::open(&proxy)).collect::<Vec<_>>());
    wait_for(
        "the first WebSockets closed",
        Duration::from_secs(10),
        || pool_counts(&proxy, "blue") == (0, 0),
    );
    let n = 200;
    let before = proc_status(&proxy, "VmRSS:");
    let open: Vec<WebSocket> = (0..n).map(|_| WebSocket::open(&proxy)).collect();
    assert_eq!(pool_counts(&proxy, "blue"), (0, n as u64));
    let per_websocket = (proc_status(&proxy, "VmRSS:") - before) / n as u64;
    // About 6 KB, carried by switchback (crate::tunnel). Carried by pingora it was 45 KB,
    // and 163 KB with huge pages on, which made whole 2 MiB regions resident for the few
    // bytes its 64 KiB buffers held.
    assert!(
        per_websocket < 30,
        "{per_websocket} kB resident per open WebSocket"
    );
    assert_eq!(proc_status(&proxy, "THP_enabled:"), 0);
    drop(open);
}

/// A backend written for the test: a thread per connection, and `answer` gets each request
/// head and writes what it likes on the connection. Returns the service's config, and a count
/// of the connections the proxy closed.
fn raw_backend(
    answer: impl Fn(&str, &mut TcpStream) + Send + Sync + 'static,
) -> (String, Arc<AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let answer = Arc::new(answer);
    let closed = Arc::new(AtomicUsize::new(0));
    let count = closed.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            conn.set_nodelay(true).unwrap();
            let (answer, count) = (answer.clone(), count.clone());
            std::thread::spawn(move || loop {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match conn.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => {
                            count.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    }
                }
                answer(&String::from_utf8_lossy(&head), &mut conn);
            });
        }
    });
    let config = format!("[services.app]\nhosts = []\nactive = \"blue\"\npools.blue = [\"{addr}\"]\nread_timeout = \"1s\"\n");
    (config, closed)
}

const SWITCHING: &[u8] =
    b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\r\n";

/// Echoes what comes on `conn` until it ends.
fn echo(conn: &mut TcpStream) {
    let mut buf = [0u8; 1024];
    while let Ok(n @ 1..) = conn.read(&mut buf) {
        if conn.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

/// Sends an upgrade request on a new connection to `proxy` and reads the answer's head (and
/// nothing after it).
fn upgrade(proxy: &Proxy) -> (TcpStream, String) {
    let mut stream = raw_connect(proxy.addr());
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nhost: app.test\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n",
        )
        .unwrap();
    let head = read_head(&mut stream);
    (stream, head)
}

/// Reads an answer's head off `stream`, a byte at a time, so nothing after it is taken.
fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            stream.read(&mut byte).unwrap(),
            1,
            "closed in a head: {head:?}"
        );
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

#[test]
fn what_the_backend_sends_right_behind_its_101_reaches_the_client() {
    // The 101 and the first message in one write, so they arrive in one read.
    let (service, _) = raw_backend(|_, conn| {
        conn.write_all(&[SWITCHING, b"first"].concat()).unwrap();
        echo(conn);
    });
    let proxy = Proxy::start(&service);
    let (mut ws, head) = upgrade(&proxy);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mut first = [0u8; 5];
    ws.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"first");
    ws.write_all(b"ping").unwrap();
    let mut back = [0u8; 4];
    ws.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"ping");
    assert_eq!(pool_counts(&proxy, "blue"), (0, 1));
}

#[test]
fn an_upgrade_the_backend_refuses_is_answered_and_the_connection_goes_on() {
    let (service, closed) = raw_backend(|head, conn| {
        let answer: &[u8] = if head.contains("upgrade: websocket") {
            b"HTTP/1.1 403 Forbidden\r\ncontent-length: 2\r\n\r\nno"
        } else {
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
        };
        conn.write_all(answer).unwrap();
    });
    let proxy = Proxy::start(&service);
    let (mut conn, head) = upgrade(&proxy);
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    // Its backend connection is not kept: no later request could use it.
    wait_for(
        "the refused upgrade's backend connection closed",
        Duration::from_secs(5),
        || closed.load(Ordering::SeqCst) == 1,
    );
    let mut body = [0u8; 2];
    conn.read_exact(&mut body).unwrap();
    assert_eq!(&body, b"no");
    // The same connection serves the next request, and a refused upgrade is not long-lived.
    conn.write_all(b"GET / HTTP/1.1\r\nhost: app.test\r\n\r\n")
        .unwrap();
    let head = read_head(&mut conn);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    conn.read_exact(&mut body).unwrap();
    assert_eq!(&body, b"ok");
    assert_eq!(pool_counts(&proxy, "blue"), (0, 0));
    // A new upgrade that the backend refuses again is answered again.
    let (_, head) = upgrade(&proxy);
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
}

#[test]
fn a_websocket_lives_while_its_backend_talks_and_ends_once_it_is_silent_for_read_timeout() {
    // The client never writes after its upgrade, far longer than client_body_timeout; the
    // backend sends a tick every 200 ms, six times, then nothing.
    let (service, _) = raw_backend(|_, conn| {
        conn.write_all(SWITCHING).unwrap();
        for _ in 0..6 {
            std::thread::sleep(Duration::from_millis(200));
            if conn.write_all(b"tick").is_err() {
                return;
            }
        }
        echo(conn);
    });
    let proxy = Proxy::start_with_server("client_body_timeout = \"300ms\"", &service);
    let (mut ws, head) = upgrade(&proxy);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mut ticks = [0u8; 24];
    ws.read_exact(&mut ticks).unwrap();
    assert_eq!(&ticks, b"ticktickticktickticktick");
    let silent = Instant::now();
    let mut rest = [0u8; 16];
    assert!(matches!(ws.read(&mut rest), Ok(0) | Err(_)), "closed");
    let waited = silent.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "closed after {waited:?} of silence; read_timeout is 1s"
    );
    wait_for("the WebSocket uncounted", Duration::from_secs(5), || {
        pool_counts(&proxy, "blue") == (0, 0)
    });
}

#[test]
fn a_websockets_access_log_line_is_written_when_it_ends_with_what_it_carried() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let (service, _) = raw_backend(|_, conn| {
        conn.write_all(SWITCHING).unwrap();
        echo(conn);
    });
    let proxy = Proxy::start(&format!(
        "[access_log]\npath = \"{}\"\n\n{service}",
        log.display()
    ));
    let (mut ws, _) = upgrade(&proxy);
    let opened = Instant::now();
    for message in ["hello", "abc"] {
        ws.write_all(message.as_bytes()).unwrap();
        let mut back = vec![0u8; message.len()];
        ws.read_exact(&mut back).unwrap();
    }
    // Counted as long-lived while open, and its line not written yet: the line comes at the
    // end, with the connection's whole duration.
    assert_eq!(pool_counts(&proxy, "blue"), (0, 1));
    assert!(std::fs::read_to_string(&log).unwrap_or_default().is_empty());
    drop(ws);
    let open_for = opened.elapsed();
    wait_for("the access log line", Duration::from_secs(5), || {
        std::fs::read_to_string(&log).is_ok_and(|t| !t.is_empty())
    });
    let text = std::fs::read_to_string(&log).unwrap();
    let line: serde_json::Value = serde_json::from_str(text.trim()).expect("one JSON line");
    assert_eq!(line["status"], 101, "{text}");
    assert_eq!(line["path"], "/ws");
    assert_eq!(line["bytes"], 8, "what the backend sent through: {text}");
    let duration = Duration::from_secs_f64(line["duration_ms"].as_f64().unwrap() / 1000.0);
    assert!(
        duration >= open_for.saturating_sub(Duration::from_millis(50)),
        "{text}"
    );
}
