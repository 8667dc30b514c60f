//! Hostile clients against the real binary over real sockets: idle and slow clients meet their
//! deadlines, connection caps hold while the control socket, the health checks and the admin
//! listener keep working, oversized heads get 414 and 431, no client chooses its pool or its
//! canary bucket, and forwarding headers are believed only from trusted proxies.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

/// Waits until the proxy closes `s` (reads give end of file or a reset) and returns how long
/// that took; fails after 15 s.
fn wait_closed(s: &mut TcpStream) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return start.elapsed(),
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                panic!("the connection is still open after 15 s")
            }
            Err(_) => return start.elapsed(),
        }
    }
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: app.test\r\n\r\n").into_bytes()
}

fn one_service(up: &Upstream) -> String {
    format!(
        "[services.app]\nactive = \"blue\"\npools.blue = [\"{}\"]\n",
        up.addr
    )
}

#[test]
fn an_idle_keepalive_connection_is_closed_after_keepalive_timeout() {
    let up = Upstream::start("blue");
    let proxy = Proxy::start_with_server("keepalive_timeout = \"1s\"", &one_service(&up));
    let mut s = raw_connect(proxy.addr());
    // Two requests: the deadline holds after the first reuse too, not only the first request.
    for _ in 0..2 {
        s.write_all(&get("/")).unwrap();
        assert_eq!(read_raw_answer(&mut s).unwrap().0, 200);
    }
    let idle = wait_closed(&mut s);
    eprintln!("idle keep-alive connection closed after {idle:?}");
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_secs(4),
        "closed after {idle:?}, keepalive_timeout is 1s"
    );
}

/// Sends `bytes` one at a time, `gap` apart, until the proxy answers or closes; returns what
/// came back and when, from the first byte.
fn trickle(s: &mut TcpStream, bytes: &[u8], gap: Duration) -> (Option<(u16, String)>, Duration) {
    let start = Instant::now();
    s.set_nonblocking(true).unwrap();
    for b in bytes {
        if s.write_all(&[*b]).is_err() {
            break;
        }
        std::thread::sleep(gap);
        let mut peek = [0u8; 1];
        match s.peek(&mut peek) {
            Ok(_) => break,
            Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
            Err(_) => break,
        }
    }
    s.set_nonblocking(false).unwrap();
    let answer = read_raw_answer(s);
    (answer, start.elapsed())
}

#[test]
fn a_head_sent_a_byte_at_a_time_is_cut_at_client_header_timeout() {
    let up = Upstream::start("blue");
    let proxy = Proxy::start_with_server("client_header_timeout = \"2s\"", &one_service(&up));
    // 4 bytes a second: every read gets a byte long before any per-read timeout, and the
    // whole head (about 40 bytes) would take 10 s.
    let head = get("/");
    let mut s = raw_connect(proxy.addr());
    let (answer, took) = trickle(&mut s, &head, Duration::from_millis(250));
    eprintln!("slow head on a new connection answered {answer:?} after {took:?}");
    assert_eq!(answer.map(|a| a.0), Some(408));
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_secs(5),
        "cut after {took:?}, client_header_timeout is 2s"
    );
    wait_closed(&mut s);

    // The same on a connection that already served a request.
    let mut s = raw_connect(proxy.addr());
    s.write_all(&get("/")).unwrap();
    assert_eq!(read_raw_answer(&mut s).unwrap().0, 200);
    let (answer, took) = trickle(&mut s, &head, Duration::from_millis(250));
    eprintln!("slow head on a reused connection answered {answer:?} after {took:?}");
    assert_eq!(answer.map(|a| a.0), Some(408));
    assert!(took < Duration::from_secs(5), "cut after {took:?}");
    assert_eq!(up.requests.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[test]
fn a_stalled_body_is_cut_at_client_body_timeout() {
    let up = Upstream::start("blue");
    let proxy = Proxy::start_with_server("client_body_timeout = \"1s\"", &one_service(&up));
    let mut s = raw_connect(proxy.addr());
    s.write_all(
        b"POST /upload HTTP/1.1\r\nhost: app.test\r\ncontent-length: 100\r\n\r\n0123456789",
    )
    .unwrap();
    let start = Instant::now();
    let answer = read_raw_answer(&mut s);
    let took = start.elapsed();
    eprintln!("stalled body answered {answer:?} after {took:?}");
    assert_eq!(answer.map(|a| a.0), Some(408));
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "cut after {took:?}, client_body_timeout is 1s"
    );
    wait_closed(&mut s);
    let metric = "switchback_client_errors_total{reason=\"body_timeout\"}";
    assert_eq!(proxy.metric(metric), Some(1.0));
}

#[test]
fn heads_over_the_limits_get_414_and_431() {
    let up = Upstream::start("blue");
    let proxy = Proxy::start(&one_service(&up));
    // Defaults: an 8 KiB request target, a 64 KiB head.
    let mut s = raw_connect(proxy.addr());
    s.write_all(&get(&format!("/{}", "a".repeat(9 * 1024))))
        .unwrap();
    assert_eq!(read_raw_answer(&mut s).map(|a| a.0), Some(414));

    let mut s = raw_connect(proxy.addr());
    let big = format!(
        "GET / HTTP/1.1\r\nhost: app.test\r\nx-big: {}\r\n\r\n",
        "b".repeat(70 * 1024)
    );
    s.write_all(big.as_bytes()).unwrap();
    assert_eq!(read_raw_answer(&mut s).map(|a| a.0), Some(431));

    // Just under both limits is served.
    let mut s = raw_connect(proxy.addr());
    let fine = format!(
        "GET /{} HTTP/1.1\r\nhost: app.test\r\nx-big: {}\r\n\r\n",
        "a".repeat(8 * 1024 - 1),
        "b".repeat(50 * 1024)
    );
    s.write_all(fine.as_bytes()).unwrap();
    assert_eq!(read_raw_answer(&mut s).map(|a| a.0), Some(200));
    assert_eq!(
        proxy.metric("switchback_client_errors_total{reason=\"uri_too_long\"}"),
        Some(1.0)
    );
    assert_eq!(
        proxy.metric("switchback_client_errors_total{reason=\"head_too_large\"}"),
        Some(1.0)
    );
}

/// Open file descriptors of process `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn max_connections_holds_while_control_health_checks_and_admin_keep_working() {
    let blue = Upstream::start("blue");
    let green = Upstream::start("green");
    let cap = 20;
    let proxy = Proxy::start_with_server(
        &format!("max_connections = {cap}"),
        &blue_green(&blue, &green),
    );
    proxy.wait_health("app", "green", "healthy");

    // Give the proxy room for its own files, the capped clients and some slack, and no more:
    // without the cap, the flood below would take every descriptor it has.
    let limit = open_fds(proxy.pid()) + cap + 30;
    let set = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &proxy.pid().to_string(),
            &format!("--nofile={limit}:{limit}"),
        ])
        .status()
        .unwrap();
    assert!(set.success(), "prlimit failed");

    let mut held = Vec::new();
    for _ in 0..cap {
        let mut s = raw_connect(proxy.addr());
        s.write_all(&get("/")).unwrap();
        assert_eq!(read_raw_answer(&mut s).unwrap().0, 200);
        held.push(s);
    }
    // The flood: twice the descriptors the proxy has left. Each is closed at once, unanswered.
    // The flood is held open, so that without the cap it would need 60 more descriptors.
    let mut refused = 0;
    let mut flood = Vec::new();
    for _ in 0..60 {
        let mut s = raw_connect(proxy.addr());
        let _ = s.write_all(&get("/"));
        if read_raw_answer(&mut s).is_none() {
            refused += 1;
        }
        flood.push(s);
    }
    assert_eq!(
        refused, 60,
        "every connection past the cap is closed unanswered"
    );

    // At the cap: the control socket, the health checks and the admin listener still work.
    assert!(proxy.status()["generation"].is_u64());
    green.set_healthy(false);
    proxy.wait_health("app", "green", "down");
    proxy.cli_ok(&["switch", "blue"]);
    assert_eq!(
        proxy.metric("switchback_open_connections"),
        Some(cap as f64),
        "the held connections, idle ones included"
    );
    assert_eq!(
        proxy.metric("switchback_connections_refused_total{reason=\"max_connections\"}"),
        Some(60.0)
    );
    // The held connections still work, and once one closes a new client gets in.
    assert_eq!(
        {
            held[0].write_all(&get("/")).unwrap();
            read_raw_answer(&mut held[0]).unwrap().0
        },
        200
    );
    drop(held.pop());
    wait_for("a place under the cap", Duration::from_secs(5), || {
        proxy.metric("switchback_open_connections") == Some(cap as f64 - 1.0)
    });
    let mut s = raw_connect(proxy.addr());
    s.write_all(&get("/")).unwrap();
    assert_eq!(read_raw_answer(&mut s).unwrap().0, 200);
}

#[test]
fn max_connections_per_ip_caps_one_address() {
    let up = Upstream::start("blue");
    let proxy = Proxy::start_with_server("max_connections_per_ip = 2", &one_service(&up));
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = raw_connect(proxy.addr());
        s.write_all(&get("/")).unwrap();
        assert_eq!(read_raw_answer(&mut s).unwrap().0, 200);
        held.push(s);
    }
    let mut third = raw_connect(proxy.addr());
    let _ = third.write_all(&get("/"));
    assert_eq!(
        read_raw_answer(&mut third),
        None,
        "a third from one address"
    );
    assert_eq!(
        proxy.metric("switchback_connections_refused_total{reason=\"max_connections_per_ip\"}"),
        Some(1.0)
    );
    drop(held.pop());
    wait_for("a place for the address", Duration::from_secs(5), || {
        let mut s = raw_connect(proxy.addr());
        let _ = s.write_all(&get("/"));
        read_raw_answer(&mut s).is_some()
    });
}

/// What the backend's `/headers` endpoint saw, one `name: value` a line, for a request with
/// `extra` header lines.
fn headers_seen(proxy: &Proxy, extra: &str) -> String {
    let mut s = raw_connect(proxy.addr());
    s.write_all(format!("GET /headers HTTP/1.1\r\nhost: app.test\r\n{extra}\r\n").as_bytes())
        .unwrap();
    let (status, body) = read_raw_answer(&mut s).unwrap();
    assert_eq!(status, 200);
    body
}

const FORGED: &str = "x-forwarded-for: 6.6.6.6\r\nx-forwarded-proto: https\r\nx-real-ip: 7.7.7.7\r\nforwarded: for=8.8.8.8\r\n";

#[test]
fn forwarding_headers_from_an_untrusted_client_are_replaced() {
    let up = Upstream::start("blue");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let proxy = Proxy::start(&format!(
        "[access_log]\npath = \"{}\"\n\n{}",
        log.display(),
        one_service(&up)
    ));
    let seen = headers_seen(&proxy, FORGED);
    assert!(seen.contains("x-forwarded-for: 127.0.0.1\n"), "{seen}");
    assert!(seen.contains("x-forwarded-proto: http\n"), "{seen}");
    assert!(!seen.contains("6.6.6.6"), "{seen}");
    assert!(!seen.contains("x-real-ip"), "{seen}");
    assert!(!seen.contains("forwarded: for="), "{seen}");
    wait_for("the access log line", Duration::from_secs(5), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("\"client\":\"127.0.0.1\""))
    });
}

#[test]
fn forwarding_headers_from_a_trusted_proxy_are_appended_to() {
    let up = Upstream::start("blue");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let proxy = Proxy::start_with_server(
        "trusted_proxies = [\"127.0.0.0/8\"]",
        &format!(
            "[access_log]\npath = \"{}\"\n\n{}",
            log.display(),
            one_service(&up)
        ),
    );
    let seen = headers_seen(&proxy, FORGED);
    assert!(
        seen.contains("x-forwarded-for: 6.6.6.6, 127.0.0.1\n"),
        "{seen}"
    );
    assert!(seen.contains("x-forwarded-proto: https\n"), "{seen}");
    assert!(seen.contains("x-real-ip: 7.7.7.7\n"), "{seen}");
    // The client is the first hop the trusted proxy did not vouch for.
    wait_for("the access log line", Duration::from_secs(5), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("\"client\":\"6.6.6.6\""))
    });
}

#[test]
fn no_client_chooses_its_pool_by_default() {
    let blue = Upstream::start("blue");
    let green = Upstream::start("green");
    let proxy = Proxy::start(&blue_green(&blue, &green));
    let mut s = raw_connect(proxy.addr());
    s.write_all(
        b"GET / HTTP/1.1\r\nhost: app.test\r\nx-switchback-pool: green\r\ncookie: switchback_pool=green\r\n\r\n",
    )
    .unwrap();
    assert_eq!(read_raw_answer(&mut s).unwrap().1, "blue");
}

#[tokio::test]
async fn a_forged_bucket_cookie_is_not_honoured() {
    let blue = Upstream::start("blue");
    let green = Upstream::start("green");
    let proxy = Proxy::start(&blue_green(&blue, &green));
    proxy.wait_health("app", "green", "healthy");
    proxy.cli_ok(&["canary", "green", "50"]);
    let mut conn = KeepAlive::connect(proxy.addr()).await.unwrap();
    let bucket_cookie = |a: &Answer| {
        a.set_cookies
            .iter()
            .find(|c| c.starts_with("switchback_bucket="))
            .map(|c| c.split(';').next().unwrap().to_string())
    };

    // A cookie the proxy signed keeps its client where it is, with no new draw.
    let first = conn.get("/").await.unwrap();
    let honest = bucket_cookie(&first).expect("a new client gets a bucket cookie");
    for _ in 0..10 {
        let a = conn.get_with("/", &[("cookie", &honest)]).await.unwrap();
        assert_eq!(a.pool, first.pool);
        assert_eq!(bucket_cookie(&a), None, "a signed cookie is honoured");
    }

    // A bucket the client wrote itself, or a signed tag moved to another bucket, is a fresh
    // draw: the proxy sends a cookie of its own.
    let (bucket, tag) = honest["switchback_bucket=".len()..]
        .split_once('.')
        .unwrap();
    let other = (bucket.parse::<u32>().unwrap() + 500) % 1000;
    for forged in [
        "switchback_bucket=0".to_string(),
        format!("switchback_bucket={other}"),
        format!("switchback_bucket={other}.{tag}"),
        format!("switchback_bucket=0.{}", "0".repeat(32)),
    ] {
        let a = conn.get_with("/", &[("cookie", &forged)]).await.unwrap();
        let fresh = bucket_cookie(&a).unwrap_or_else(|| panic!("{forged} was honoured"));
        assert_ne!(fresh, forged);
        assert!(fresh.contains('.'), "{fresh} is signed");
    }
    // The key is kept in the state dir, private.
    let key = proxy.state_dir().join("bucket.key");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn a_head_with_more_header_lines_than_fit_with_the_forwarding_headers_gets_431() {
    let up = Upstream::start("blue");
    let proxy = Proxy::start(&one_service(&up));
    // pingora parses 256 header lines; switchback writes two of its own (X-Forwarded-For and
    // X-Forwarded-Proto) in place of any the client sent.
    let head = |lines: usize, forged: &str| {
        let mut head = String::from("GET /headers HTTP/1.1\r\nhost: app.test\r\n");
        head.push_str(forged);
        for i in 1..lines {
            head.push_str(&format!("x-h{i}: v\r\n"));
        }
        head + "\r\n"
    };
    let status = |head: String| {
        let mut s = raw_connect(proxy.addr());
        s.write_all(head.as_bytes()).unwrap();
        read_raw_answer(&mut s).map(|(status, _)| status)
    };
    assert_eq!(status(head(254, "")), Some(200));
    assert_eq!(status(head(255, "")), Some(431));
    // A client's own forwarding headers are replaced, so they take no room.
    assert_eq!(
        status(head(
            253,
            "x-forwarded-for: 6.6.6.6\r\nx-real-ip: 6.6.6.6\r\n"
        )),
        Some(200)
    );
}
