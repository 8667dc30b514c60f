//! switchback's own HTTP/1.1 path, with real clients on raw sockets: the smuggling rules, pipelined
//! requests, bodies and heads that come a byte at a time, chunked answers, and the same request
//! seen by the backend the same way on both `server.http1` settings.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;

use support::{raw_connect, read_raw_answer, Proxy, Upstream};

fn one_pool(upstream: &Upstream) -> String {
    format!(
        "[services.app]\nactive = \"blue\"\npools.blue = [\"{}\"]\n",
        upstream.addr
    )
}

fn start(http1: &str, upstream: &Upstream) -> Proxy {
    Proxy::start_with_server(&format!("http1 = \"{http1}\""), &one_pool(upstream))
}

/// Reads until the proxy closes the connection (or 15 s pass, which fails).
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return all,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return all,
            Err(e) => panic!("no close within 15 s ({e}); read so far: {all:?}"),
        }
    }
}

#[test]
fn heads_that_could_be_read_two_ways_get_400_and_the_connection_closes() {
    let blue = Upstream::start("blue");
    let proxy = start("switchback", &blue);
    let cases: [(&str, &[u8]); 9] = [
        (
            "length and chunked",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "a coding other than chunked",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "two lengths",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
        ),
        (
            "a length not all digits",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\nx",
        ),
        (
            "obs-fold",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n continued\r\n\r\n",
        ),
        (
            "space before the colon",
            b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n",
        ),
        ("a bare CR", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r2\r\n\r\n"),
        ("no Host", b"GET / HTTP/1.1\r\nX-A: 1\r\n\r\n"),
        ("two Hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
    ];
    for (what, head) in cases {
        let mut s = raw_connect(proxy.addr());
        s.write_all(head).unwrap();
        let answer = String::from_utf8_lossy(&read_to_close(&mut s)).into_owned();
        assert!(
            answer.starts_with("HTTP/1.1 400 "),
            "{what}: not answered 400 and closed: {answer:?}"
        );
        assert_eq!(
            answer.matches("HTTP/1.1").count(),
            1,
            "{what}: more than one answer: {answer:?}"
        );
    }
    assert_eq!(
        blue.requests.load(Ordering::SeqCst),
        0,
        "a refused request reached the backend"
    );
    assert_eq!(
        proxy.metric("switchback_client_errors_total{reason=\"bad_request\"}"),
        Some(cases.len() as f64),
        "each refusal is counted"
    );
}

#[test]
fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let blue = Upstream::start("blue");
    let proxy = start("switchback", &blue);
    let mut s = raw_connect(proxy.addr());
    s.write_all(
        b"GET /status/201 HTTP/1.1\r\nHost: a\r\n\r\n\
          POST /status/202 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
          POST /status/203 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n\
          GET /status/204 HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .unwrap();
    for want in [201, 202, 203, 204] {
        let (status, _) = read_raw_answer(&mut s).expect("an answer for each request");
        assert_eq!(status, want, "answers out of order");
    }
    assert_eq!(blue.complete_bodies.load(Ordering::SeqCst), 2);
}

/// Writes `bytes` one byte at a time, each its own segment.
fn trickle(s: &mut TcpStream, bytes: &[u8]) {
    for b in bytes {
        s.write_all(std::slice::from_ref(b)).unwrap();
        s.flush().unwrap();
    }
}

#[test]
fn a_head_and_a_chunked_body_that_come_a_byte_at_a_time_reach_the_backend_whole() {
    let blue = Upstream::start("blue");
    let proxy = start("switchback", &blue);
    let mut s = raw_connect(proxy.addr());
    trickle(
        &mut s,
        b"POST /headers HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
          6;ext=1\r\nhello \r\n5\r\nworld\r\n0\r\nX-Sum: 10\r\n\r\n",
    );
    let (status, seen) = read_raw_answer(&mut s).expect("an answer");
    assert_eq!(status, 200);
    assert!(seen.contains("transfer-encoding: chunked"), "{seen}");
    assert_eq!(blue.complete_bodies.load(Ordering::SeqCst), 1);
    // The connection goes on: the body's end was read exactly.
    s.write_all(b"GET /status/204 HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    assert_eq!(read_raw_answer(&mut s).map(|a| a.0), Some(204));
}

#[test]
fn a_bad_chunk_size_is_refused_before_the_backend_answers() {
    let blue = Upstream::start("blue");
    let proxy = start("switchback", &blue);
    let mut s = raw_connect(proxy.addr());
    s.write_all(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5x\r\nhello\r\n0\r\n\r\n",
    )
    .unwrap();
    let answer = String::from_utf8_lossy(&read_to_close(&mut s)).into_owned();
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer:?}");
    assert_eq!(blue.complete_bodies.load(Ordering::SeqCst), 0);
}

/// Decodes a chunked body from `s` after a head that said so.
fn read_chunked_answer(s: &mut TcpStream) -> (String, Vec<u8>) {
    let mut all = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = s.read(&mut buf).expect("the answer within 15 s");
        assert!(n > 0, "closed mid-answer: {all:?}");
        all.extend_from_slice(&buf[..n]);
        if all.ends_with(b"\r\n0\r\n\r\n") {
            break;
        }
    }
    let text = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&all[..text]).into_owned();
    let mut body = Vec::new();
    let mut at = text;
    loop {
        let line_end = at + all[at..].windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&all[at..line_end]).unwrap(), 16)
            .expect("a hex chunk size");
        at = line_end + 2;
        if size == 0 {
            break;
        }
        body.extend_from_slice(&all[at..at + size]);
        at += size + 2;
    }
    (head, body)
}

#[test]
fn a_chunked_answer_passes_whole_and_the_connection_is_kept() {
    let blue = Upstream::start("blue");
    let proxy = start("switchback", &blue);
    let mut s = raw_connect(proxy.addr());
    for _ in 0..2 {
        s.write_all(b"GET /text?bytes=200000&chunked=1 HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap();
        let (head, body) = read_chunked_answer(&mut s);
        assert!(
            head.to_ascii_lowercase()
                .contains("transfer-encoding: chunked"),
            "{head}"
        );
        assert_eq!(body, support::sample_text(200_000).into_bytes());
    }
}

/// Sends `head` through the proxy on each `server.http1` setting (with `server` settings and
/// `services`), checks that the backend saw the same header lines both times, with every one
/// of `want` and none of `gone`.
fn same_request_on_both_paths(
    server: &str,
    services: &str,
    head: &[u8],
    want: &[&str],
    gone: &[&str],
) {
    let seen = |http1: &str| {
        let proxy = Proxy::start_with_server(&format!("http1 = \"{http1}\"\n{server}"), services);
        let mut s = raw_connect(proxy.addr());
        s.write_all(head).unwrap();
        let (status, seen) = read_raw_answer(&mut s).expect("an answer");
        assert_eq!(status, 200, "{http1}");
        let mut lines: Vec<String> = seen.lines().map(str::to_string).collect();
        lines.sort();
        lines
    };
    let ours = seen("switchback");
    let pingora = seen("pingora");
    assert_eq!(ours, pingora, "the two paths forward different requests");
    let text = ours.join("\n");
    for want in want {
        assert!(text.contains(want), "{want} missing from {text}");
    }
    for gone in gone {
        assert!(!text.contains(gone), "{gone} reached the backend: {text}");
    }
}

#[test]
fn both_paths_hand_the_backend_the_same_request() {
    let blue = Upstream::start("blue");
    same_request_on_both_paths(
        "",
        &one_pool(&blue),
        b"GET /headers?q=1 HTTP/1.1\r\nHost: app.test\r\nX-Forwarded-For: 6.6.6.6\r\n\
          X-Real-IP: 6.6.6.6\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\n\
          Keep-Alive: timeout=5\r\nX-Kept: yes\r\n\r\n",
        &[
            "x-forwarded-for: 127.0.0.1",
            "x-forwarded-proto: http",
            "x-kept: yes",
        ],
        &["6.6.6.6", "x-secret", "keep-alive: timeout"],
    );
}

#[test]
fn an_idle_backend_connection_is_reused_not_reopened() {
    let blue = Upstream::start("blue");
    let proxy = start("switchback", &blue);
    let mut s = raw_connect(proxy.addr());
    for _ in 0..20 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!(read_raw_answer(&mut s).map(|a| a.0), Some(200));
    }
    // Every request went on the one backend connection: a second connection from the proxy's
    // port range would show in the backend's count of accepted connections.
    let sockets = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let port = format!("{:04X}", blue.addr.port());
    let established_to_backend = sockets
        .lines()
        .skip(1)
        .filter(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.len() > 3 && cols[2].ends_with(&format!(":{port}")) && cols[3] == "01"
        })
        .count();
    // Without reuse, each backend connection would be closed after its answer and none would
    // be open now. Rarely a second one shows while the suite runs in parallel (not explained
    // yet), so up to two are taken; 20 sequential requests must not open more.
    assert!(
        (1..=2).contains(&established_to_backend),
        "{established_to_backend} backend connections open after 20 sequential requests"
    );
}

/// Reads one answer head, up to its empty line.
fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).expect("a head within 15 s");
        assert_eq!(n, 1, "closed mid-head: {head:?}");
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).to_ascii_lowercase()
}

#[test]
fn both_paths_hand_the_backend_the_same_request_from_a_trusted_proxy_with_overrides() {
    let blue = Upstream::start("blue");
    same_request_on_both_paths(
        "trusted_proxies = [\"127.0.0.0/8\"]",
        &format!(
            "{}[services.app.canary]\noverride_secret = \"0123456789abcdef\"\n",
            one_pool(&blue)
        ),
        b"GET /headers HTTP/1.1\r\nHost: app.test\r\nX-Forwarded-For: 6.6.6.6\r\n\
          X-Forwarded-For: 5.5.5.5\r\nX-Real-IP: 7.7.7.7\r\nX-Forwarded-Proto: https\r\n\
          X-Switchback-Pool: blue:wrong\r\nCookie: a=1; switchback_pool=blue:wrong\r\n\
          Cookie: b=2\r\n\r\n",
        &[
            "x-forwarded-for: 6.6.6.6, 5.5.5.5, 127.0.0.1",
            "x-forwarded-proto: https",
            "x-real-ip: 7.7.7.7",
            "cookie: a=1; b=2",
        ],
        &["x-switchback-pool", "switchback_pool", "wrong"],
    );
}

#[test]
fn an_http_1_0_client_keeps_its_connection_when_it_asks_and_takes_chunked_answers_as_data() {
    let blue = Upstream::start("blue");
    let proxy = start("switchback", &blue);
    let mut s = raw_connect(proxy.addr());
    for _ in 0..3 {
        s.write_all(b"GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n")
            .unwrap();
        let head = read_head(&mut s);
        assert!(head.starts_with("http/1.1 200 "), "{head}");
        assert!(head.contains("\r\nconnection: keep-alive\r\n"), "{head}");
        assert!(head.contains("\r\ncontent-length: 4\r\n"), "{head}");
        let mut body = [0u8; 4];
        s.read_exact(&mut body).unwrap();
        assert_eq!(&body, b"blue");
    }
    // A chunked answer: its data, ended by the close (HTTP/1.0 has no chunks).
    s.write_all(
        b"GET /text?bytes=50000&chunked=1 HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
    )
    .unwrap();
    let all = read_to_close(&mut s);
    let end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    let head = String::from_utf8_lossy(&all[..end]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 "), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
    assert_eq!(&all[end..], support::sample_text(50_000).as_bytes());
    // Without keep-alive, the connection closes after the answer.
    let mut s = raw_connect(proxy.addr());
    s.write_all(b"GET / HTTP/1.0\r\nHost: a\r\n\r\n").unwrap();
    let all = String::from_utf8_lossy(&read_to_close(&mut s)).to_ascii_lowercase();
    assert!(all.starts_with("http/1.1 200 "), "{all}");
    assert!(all.contains("\r\nconnection: close\r\n"), "{all}");
    assert!(all.ends_with("\r\n\r\nblue"), "{all}");
}

#[test]
fn expect_100_continue_is_answered_before_the_body_and_not_passed_on() {
    let blue = Upstream::start("blue");
    let proxy = start("switchback", &blue);
    let mut s = raw_connect(proxy.addr());
    for round in 0..2 {
        s.write_all(
            b"POST /headers HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
        )
        .unwrap();
        // No body is sent until the proxy says so.
        let interim = read_head(&mut s);
        assert_eq!(interim, "http/1.1 100 continue\r\n\r\n", "round {round}");
        s.write_all(b"hello").unwrap();
        let (status, seen) = read_raw_answer(&mut s).expect("the final answer");
        assert_eq!(status, 200);
        assert!(
            !seen.contains("expect"),
            "the Expect reached the backend: {seen}"
        );
        assert!(seen.contains("content-length: 5"), "{seen}");
    }
    assert_eq!(blue.complete_bodies.load(Ordering::SeqCst), 2);
}

/// The names of the proxy's worker threads (`switchback-N`), sorted.
fn worker_threads(pid: u32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|comm| comm.trim().to_string())
        .filter(|comm| {
            comm.strip_prefix("switchback-")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect();
    names.sort();
    names
}

#[test]
fn server_threads_worker_threads_each_accept_and_serve_on_their_own() {
    let blue = Upstream::start("blue");
    let proxy = Proxy::start_with_server("threads = 3", &one_pool(&blue));
    // The first worker may serve before the last one is started.
    let want = ["switchback-0", "switchback-1", "switchback-2"];
    let started = std::time::Instant::now();
    while worker_threads(proxy.pid()) != want && started.elapsed().as_secs() < 10 {
        std::thread::yield_now();
    }
    assert_eq!(
        worker_threads(proxy.pid()),
        want,
        "one worker thread per server.threads"
    );
    // Connections open at once, each kept for a few requests, land on whichever worker
    // accepted them; every one is served.
    let mut conns: Vec<TcpStream> = (0..24).map(|_| raw_connect(proxy.addr())).collect();
    for round in 0..3 {
        for s in &mut conns {
            s.write_all(b"GET /status/204 HTTP/1.1\r\nHost: a\r\n\r\n")
                .unwrap();
        }
        for (i, s) in conns.iter_mut().enumerate() {
            let answer = read_raw_answer(s);
            assert_eq!(
                answer.map(|(status, _)| status),
                Some(204),
                "connection {i}, round {round}"
            );
        }
    }
    assert_eq!(worker_threads(proxy.pid()).len(), 3);
}

#[test]
fn the_proxys_own_answers_keep_the_connection_unless_they_close_it() {
    let blue = Upstream::start("blue");
    for http1 in ["switchback", "pingora"] {
        let proxy = Proxy::start_with_server(
            &format!("http1 = \"{http1}\""),
            &format!(
                "[services.app]\nhosts = [\"app.test\"]\nactive = \"blue\"\npools.blue = [\"{}\"]\n\
                 [[services.app.access]]\npath_prefix = \"/admin/\"\ndeny = [\"127.0.0.1\"]\n\
                 [services.old]\nhosts = [\"old.test\"]\n\
                 redirect = {{ to = \"https://app.test$request_uri\", code = 301 }}\n",
                blue.addr
            ),
        );
        let mut s = raw_connect(proxy.addr());
        let send = |s: &mut TcpStream, head: &str| s.write_all(head.as_bytes()).unwrap();
        send(&mut s, "GET /a?b=1 HTTP/1.1\r\nHost: old.test\r\n\r\n");
        let moved = read_head(&mut s);
        assert!(moved.starts_with("http/1.1 301 "), "{http1}: {moved}");
        assert!(
            moved.contains("\r\nlocation: https://app.test/a?b=1\r\n"),
            "{http1}: {moved}"
        );
        assert!(
            moved.contains("\r\ncontent-length: 0\r\n"),
            "{http1}: {moved}"
        );
        send(&mut s, "GET /admin/x HTTP/1.1\r\nHost: app.test\r\n\r\n");
        assert_eq!(
            read_raw_answer(&mut s),
            Some((403, "forbidden\n".to_string())),
            "{http1}"
        );
        // A HEAD gets the head alone, with the length the body would have.
        send(&mut s, "HEAD /admin/x HTTP/1.1\r\nHost: app.test\r\n\r\n");
        let head = read_head(&mut s);
        assert!(head.starts_with("http/1.1 403 "), "{http1}: {head}");
        assert!(
            head.contains("\r\ncontent-length: 10\r\n"),
            "{http1}: {head}"
        );
        send(&mut s, "GET /status/201 HTTP/1.1\r\nHost: app.test\r\n\r\n");
        let (status, _) = read_raw_answer(&mut s).expect("the request after the refusals");
        assert_eq!(status, 201, "{http1}");
        // No service for the host: 503, and the connection closes; a request sent with it is
        // never answered.
        send(
            &mut s,
            "GET / HTTP/1.1\r\nHost: nobody.test\r\n\r\n\
             GET /status/202 HTTP/1.1\r\nHost: app.test\r\n\r\n",
        );
        let (status, body) = read_raw_answer(&mut s).expect("the 503");
        assert_eq!(status, 503, "{http1}");
        assert_eq!(body, "switchback: no service for this host and path\n");
        let rest = read_to_close(&mut s);
        assert!(
            rest.is_empty(),
            "{http1}: {}",
            String::from_utf8_lossy(&rest)
        );
        assert_eq!(
            proxy.metric("switchback_access_denied_total{reason=\"deny\",service=\"app\"}"),
            Some(2.0),
            "{http1}"
        );
    }
}
