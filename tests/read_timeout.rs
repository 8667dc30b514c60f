//! A service's `read_timeout` against the real binary: a backend that goes silent in the middle
//! of its answer is cut once it has sent nothing for that long; one that keeps talking is not,
//! however long its answer takes; and a client that stops taking a large answer for a while is
//! not taken for a silent backend. (A backend silent before its answer gets 504, and a retry
//! when `retry_on` says so: see tests/retry.rs.)

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

/// How a [`Backend`] answers each request.
#[derive(Clone, Copy)]
enum Answer {
    /// A head promising `length` bytes, `sent` of them, then nothing (the connection kept open).
    Stalls { length: usize, sent: usize },
    /// `pieces` pieces of 10 bytes, `gap` apart, with their length in the head.
    Trickles { pieces: usize, gap: Duration },
    /// `length` bytes at once.
    Bulk { length: usize },
}

/// A backend over plain TCP that answers every request on a connection as told.
struct Backend {
    addr: SocketAddr,
    /// A connection it answered was closed by the proxy (its read gave end of file).
    closed_by_proxy: Arc<AtomicBool>,
    /// The proxy closed a connection in the middle of an answer (a write of it failed).
    cut_mid_answer: Arc<AtomicBool>,
}

impl Backend {
    fn start(answer: Answer) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let closed_by_proxy = Arc::new(AtomicBool::new(false));
        let cut_mid_answer = Arc::new(AtomicBool::new(false));
        let (closed, cut) = (closed_by_proxy.clone(), cut_mid_answer.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let (closed, cut) = (closed.clone(), cut.clone());
                std::thread::spawn(move || serve(conn, answer, &closed, &cut));
            }
        });
        Backend {
            addr,
            closed_by_proxy,
            cut_mid_answer,
        }
    }
}

fn serve(mut conn: TcpStream, answer: Answer, closed: &AtomicBool, cut: &AtomicBool) {
    conn.set_nodelay(true).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // One request head (the proxy sends GETs without a body here).
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => {
                    closed.store(true, Ordering::SeqCst);
                    return;
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.clear();
        let head = |length: usize| format!("HTTP/1.1 200 OK\r\ncontent-length: {length}\r\n\r\n");
        let sent = match answer {
            Answer::Stalls { length, sent } => {
                let mut bytes = head(length).into_bytes();
                bytes.extend(std::iter::repeat_n(b'a', sent));
                conn.write_all(&bytes)
            }
            Answer::Trickles { pieces, gap } => {
                let mut result = conn.write_all(head(pieces * 10).as_bytes());
                for _ in 0..pieces {
                    // The backend's pace is the scenario.
                    std::thread::sleep(gap);
                    result = result.and_then(|()| conn.write_all(b"0123456789"));
                }
                result
            }
            Answer::Bulk { length } => {
                let mut bytes = head(length).into_bytes();
                bytes.extend(std::iter::repeat_n(b'b', length));
                conn.write_all(&bytes)
            }
        };
        if sent.is_err() {
            cut.store(true, Ordering::SeqCst);
            return;
        }
    }
}

fn service(backend: &Backend, read_timeout: &str) -> String {
    format!(
        "[services.app]\nactive = \"blue\"\npools.blue = [\"{}\"]\nread_timeout = \"{read_timeout}\"\n",
        backend.addr
    )
}

/// Sends a GET and reads the answer's head; returns its status and content length.
fn get_head(s: &mut TcpStream) -> (u16, usize) {
    s.write_all(b"GET / HTTP/1.1\r\nhost: app.test\r\n\r\n")
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "the head ended early");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let length = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .unwrap();
    (status, length)
}

/// Reads the body until `length` bytes came or the connection ended; returns how many came.
fn read_body(s: &mut TcpStream, length: usize) -> usize {
    let mut got = 0;
    let mut buf = vec![0u8; 64 * 1024];
    while got < length {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                panic!("the answer neither came nor ended in 15 s ({got} of {length} bytes)")
            }
            Err(_) => break,
        }
    }
    got
}

#[test]
fn a_backend_silent_in_the_middle_of_its_answer_is_cut_after_read_timeout() {
    let backend = Backend::start(Answer::Stalls {
        length: 1000,
        sent: 100,
    });
    let proxy = Proxy::start(&service(&backend, "300ms"));
    let mut s = raw_connect(proxy.addr());
    let start = Instant::now();
    assert_eq!(get_head(&mut s), (200, 1000));
    let got = read_body(&mut s, 1000);
    let cut = start.elapsed();
    eprintln!("{got} of 1000 bytes, then the connection closed after {cut:?}");
    assert_eq!(got, 100, "what the backend sent, and no more");
    assert!(
        cut >= Duration::from_millis(290) && cut < Duration::from_secs(5),
        "cut after {cut:?}, read_timeout is 300ms"
    );
    wait_for(
        "the backend connection closed",
        Duration::from_secs(5),
        || backend.closed_by_proxy.load(Ordering::SeqCst),
    );
}

#[test]
fn a_backend_that_keeps_talking_is_not_cut_however_long_its_answer_takes() {
    let backend = Backend::start(Answer::Trickles {
        pieces: 8,
        gap: Duration::from_millis(100),
    });
    let proxy = Proxy::start(&service(&backend, "300ms"));
    let mut s = raw_connect(proxy.addr());
    let start = Instant::now();
    for _ in 0..2 {
        // Twice on one connection: the deadline of the second answer is its own.
        assert_eq!(get_head(&mut s), (200, 80));
        assert_eq!(read_body(&mut s, 80), 80);
    }
    assert!(
        start.elapsed() > Duration::from_millis(1200),
        "two answers of 8 pieces 100 ms apart, each longer than read_timeout"
    );
    // Not "no connection closed": pingora may drop an idle pooled connection instead of reusing
    // it (cloudflare/pingora#998), which cuts nothing.
    assert!(!backend.cut_mid_answer.load(Ordering::SeqCst));
}

#[test]
fn a_client_that_stops_taking_a_large_answer_for_a_while_is_not_taken_for_a_silent_backend() {
    // More than the socket buffers on both sides and pingora's own hold, so the proxy stops
    // reading the backend while the client takes nothing.
    let length = 32 << 20;
    let backend = Backend::start(Answer::Bulk { length });
    let proxy = Proxy::start(&service(&backend, "300ms"));
    let mut s = raw_connect(proxy.addr());
    assert_eq!(get_head(&mut s), (200, length));
    let mut first = vec![0u8; 64 * 1024];
    s.read_exact(&mut first).unwrap();
    // The client's pause, three times read_timeout, is the scenario.
    std::thread::sleep(Duration::from_millis(900));
    assert_eq!(
        read_body(&mut s, length - first.len()),
        length - first.len()
    );
    assert!(!backend.closed_by_proxy.load(Ordering::SeqCst));
}
