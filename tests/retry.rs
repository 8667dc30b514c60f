//! Retries: when a backend fails a request before any of its answer reached the client, the
//! proxy tries again where that is safe (idempotent methods, a reused connection that never got
//! the whole request, a body still held), and never where a backend may have acted on it.
//!
//! The backends are real servers: a Python process killed with SIGKILL, and small TCP servers
//! that misbehave on purpose (never answer, close without answering, close kept-alive
//! connections).

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::*;

/// tests/support/backend.py in a process of its own, which a test can kill with SIGKILL.
struct ProcessBackend {
    child: Child,
    addr: SocketAddr,
    /// `METHOD PATH` of every request that reached it, in order.
    seen: Arc<Mutex<Vec<String>>>,
}

impl ProcessBackend {
    fn start(name: &str) -> ProcessBackend {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/backend.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(name)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start python3 tests/support/backend.py");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().expect("a first line").unwrap();
        let port: u16 = first
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("backend.py said {first:?}"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Some(request) = line.strip_prefix("request ") {
                    sink.lock().unwrap().push(request.to_string());
                }
            }
        });
        ProcessBackend {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            seen,
        }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for ProcessBackend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How a [`RawBackend`] misbehaves.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Reads each request and never answers.
    Silent,
    /// Reads each request, then closes the connection without a byte of answer.
    Empty,
    /// Answers the first request of each connection and keeps it open; when another request
    /// comes on it, closes it unread (a reset), as a server does whose idle timer fired as the
    /// request came.
    ClosesReusedConnections,
    /// Answers every request, and closes a connection that stays idle this long.
    ClosesIdleAfter(Duration),
}

/// How long a [`Behaviour::ClosesIdleAfter`] server takes to close an idle connection.
const CLOSING: Duration = Duration::from_millis(5);

/// A small HTTP/1.1 server over TCP that misbehaves as told. Answers are `200 ok:METHOD:BODY`.
struct RawBackend {
    addr: SocketAddr,
    /// Requests answered.
    answered: Arc<AtomicU64>,
    /// Connections closed under a request, unread.
    resets: Arc<AtomicU64>,
    /// `METHOD BODY_LENGTH` of every request read whole.
    seen: Arc<Mutex<Vec<String>>>,
    _thread: std::thread::JoinHandle<()>,
}

impl RawBackend {
    fn start(behaviour: Behaviour) -> RawBackend {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let answered = Arc::new(AtomicU64::new(0));
        let resets = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let state = (answered.clone(), resets.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).unwrap();
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let state = state.clone();
                    tokio::spawn(serve_raw(stream, behaviour, state));
                }
            });
        });
        RawBackend {
            addr,
            answered,
            resets,
            seen,
            _thread: thread,
        }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

type RawState = (Arc<AtomicU64>, Arc<AtomicU64>, Arc<Mutex<Vec<String>>>);

async fn serve_raw(
    mut stream: TcpStream,
    behaviour: Behaviour,
    (answered, resets, seen): RawState,
) {
    stream.set_nodelay(true).unwrap();
    let mut buf = Vec::new();
    let mut served = 0u32;
    loop {
        if served > 0 {
            match behaviour {
                Behaviour::ClosesReusedConnections => {
                    // Wait for the next request to arrive, then close with it unread. The
                    // proxy may also close the connection itself (an idle one its pool lets
                    // go), which is no reset.
                    if !matches!(stream.peek(&mut [0u8; 1]).await, Ok(n) if n > 0) {
                        return;
                    }
                    // Counted before the reset, so that whoever sees the reset sees the count.
                    resets.fetch_add(1, Ordering::SeqCst);
                    stream.set_zero_linger().unwrap();
                    drop(stream);
                    return;
                }
                Behaviour::ClosesIdleAfter(idle) => {
                    let idled = tokio::time::timeout(idle, stream.readable()).await.is_err();
                    if idled {
                        // Closing takes the server a moment, as it does a real one; a
                        // request that comes meanwhile is reset, unread.
                        tokio::time::sleep(CLOSING).await;
                        if stream.try_read(&mut [0u8; 1]).is_ok_and(|n| n > 0) {
                            resets.fetch_add(1, Ordering::SeqCst);
                        }
                        return;
                    }
                }
                _ => {}
            }
        }
        let Some((method, body)) = read_request(&mut stream, &mut buf).await else {
            return;
        };
        seen.lock()
            .unwrap()
            .push(format!("{method} {}", body.len()));
        match behaviour {
            Behaviour::Silent => {
                // Hold the connection until the peer goes away.
                let mut sink = [0u8; 1024];
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                return;
            }
            Behaviour::Empty => return,
            _ => {}
        }
        let text = format!("ok:{method}:{}", String::from_utf8_lossy(&body));
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-pool: raw\r\n\r\n{text}",
            text.len()
        );
        if stream.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
        answered.fetch_add(1, Ordering::SeqCst);
        served += 1;
    }
}

/// Reads one request: its method and body (by Content-Length). None when the peer closed.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let method = head.split_whitespace().next()?.to_string();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[head_end..head_end + length].to_vec();
    buf.drain(..head_end + length);
    Some((method, body))
}

fn retries(proxy: &Proxy, service: &str, reason: &str) -> f64 {
    proxy
        .metric(&format!(
            "switchback_upstream_retries_total{{pool=\"blue\",reason=\"{reason}\",service=\"{service}\"}}"
        ))
        .unwrap_or_else(|| panic!("no retries series for {service}/{reason}"))
}

/// A proxy on one thread, whose kept-alive backend connections are always reused: with more,
/// pingora's pool can miss one (a request on one thread races the pool's idle watch of the
/// connection on another) and open a new connection instead.
fn one_thread_proxy(services: &str) -> Proxy {
    Proxy::start_with_server("threads = 1", services)
}

/// Waits until the proxy is done with its `n`th request, which it logs only after its backend
/// connection went back to the pool: a client has the answer a moment before that, and a next
/// request sent in that moment would go on a new connection.
fn backend_connection_pooled(proxy: &Proxy, n: usize) {
    wait_for(
        "the request's access log line",
        Duration::from_secs(5),
        || proxy.log().matches("\"retries\":").count() >= n,
    );
}

fn retries_by_reason(proxy: &Proxy, service: &str) -> Vec<(&'static str, f64)> {
    ["connect", "reused_connection", "error", "timeout"]
        .into_iter()
        .map(|r| (r, retries(proxy, service, r)))
        .collect()
}

fn total_retries(proxy: &Proxy, service: &str) -> f64 {
    retries_by_reason(proxy, service).iter().map(|r| r.1).sum()
}

/// A service on `host` whose blue pool is `backends`, in that order, with `extra` lines.
fn service(name: &str, host: &str, backends: &[SocketAddr], extra: &str) -> String {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    format!(
        "[services.{name}]\nhosts = [\"{host}\"]\nactive = \"blue\"\npools.blue = [{}]\n{extra}\n",
        list.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_gets_on_a_backend_killed_with_sigkill_all_answer_from_the_other() {
    let mut doomed = ProcessBackend::start("doomed");
    let live = Upstream::start("live");
    let proxy = Proxy::start(&service("app", "app.test", &[doomed.addr, live.addr], ""));

    let mut clients = Vec::new();
    for _ in 0..6 {
        let addr = proxy.addr();
        clients.push(tokio::spawn(async move {
            get_host(addr, "app.test", "/slow?ms=1500").await
        }));
    }
    // Round robin puts three on each backend.
    wait_for(
        "three slow GETs on each backend",
        Duration::from_secs(10),
        || doomed.seen().len() == 3 && live.slow_in_flight.load(Ordering::SeqCst) == 3,
    );
    doomed.kill();

    let mut from_live = 0;
    for c in clients {
        let answer = c.await.unwrap().expect("an answer");
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.body, "live");
        from_live += 1;
    }
    assert_eq!(from_live, 6);
    assert_eq!(
        live.requests.load(Ordering::SeqCst),
        6,
        "the three GETs of the killed backend went again to the live one, once each"
    );
    assert_eq!(total_retries(&proxy, "app"), 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_in_flight_on_a_killed_backend_fails_once_and_is_never_replayed() {
    let mut doomed = ProcessBackend::start("doomed");
    let live = Upstream::start("live");
    let services = [
        service("app", "app.test", &[doomed.addr, live.addr], ""),
        // The same pool, for a service that says its POSTs are safe to replay.
        service(
            "replays",
            "replays.test",
            &[doomed.addr, live.addr],
            "retry_non_idempotent = true",
        ),
    ]
    .concat();
    let proxy = Proxy::start(&services);

    let post = |host: &'static str| {
        let addr = proxy.addr();
        tokio::spawn(async move {
            let mut c = KeepAlive::connect(addr).await.unwrap();
            c.host = host.to_string();
            c.request("POST", "/slow?ms=5000", b"order=1".to_vec())
                .await
        })
    };
    let (post, replayed) = (post("app.test"), post("replays.test"));
    // Each service's first pick is the first backend of its pool.
    wait_for(
        "both POSTs on the doomed backend",
        Duration::from_secs(10),
        || doomed.seen() == ["POST /slow?ms=5000", "POST /slow?ms=5000"],
    );
    doomed.kill();

    let answer = post.await.unwrap().expect("an answer");
    assert_eq!(answer.status, 502, "{answer:?}");
    assert_eq!(total_retries(&proxy, "app"), 0.0);
    let answer = replayed.await.unwrap().expect("an answer");
    assert_eq!(
        (answer.status.as_u16(), answer.body.as_str()),
        (200, "live")
    );
    assert_eq!(
        live.requests.load(Ordering::SeqCst),
        1,
        "the surviving backend saw only the POST its service allows to replay"
    );
    wait_for(
        "the failure in the access log",
        Duration::from_secs(5),
        || proxy.log().contains("\"status\":502"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_closes_idle_connections_costs_no_request() {
    // As gunicorn and many app servers do, after a short idle time (and a moment to close).
    // One client's requests come spaced around that time, so the proxy's kept-alive connection
    // is sometimes still open, sometimes closed, and sometimes closing as the request comes.
    let idle = Duration::from_millis(50);
    let backend = RawBackend::start(Behaviour::ClosesIdleAfter(idle));
    let proxy = Proxy::start(&service("app", "app.test", &[backend.addr], ""));

    let mut failures = Vec::new();
    for i in 0..200u64 {
        let gap = 44 + (i * 7) % 17; // 44 to 60 ms, spread evenly
        tokio::time::sleep(Duration::from_millis(gap)).await;
        match get_host(proxy.addr(), "app.test", "/").await {
            Ok(a) if a.status == 200 => {}
            other => failures.push(format!("request {i}: {other:?}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} failed: {failures:?}",
        failures.len()
    );
    assert_eq!(backend.answered.load(Ordering::SeqCst), 200);
    // The race happened, and each time the request went again on a new connection.
    let raced = backend.resets.load(Ordering::SeqCst);
    assert!(
        raced >= 5,
        "only {raced} requests crossed a closing connection"
    );
    let retried = retries(&proxy, "app", "reused_connection");
    assert!(
        retried >= raced as f64,
        "{retried} retries for {raced} resets"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_connection_the_backend_closed_is_retried_on_the_same_backend() {
    // Every reused connection fails as the request comes: the keep-alive race, made certain.
    // The pool has one backend, so the retry must go to the same backend, on a new connection.
    let backend = RawBackend::start(Behaviour::ClosesReusedConnections);
    let proxy = one_thread_proxy(&service("app", "app.test", &[backend.addr], ""));

    let mut c = KeepAlive::connect(proxy.addr()).await.unwrap();
    c.host = "app.test".into();
    for i in 0..20 {
        let a = c.get("/").await.unwrap();
        assert_eq!(
            (a.status.as_u16(), a.body.as_str()),
            (200, "ok:GET:"),
            "GET {i}"
        );
        backend_connection_pooled(&proxy, i + 1);
    }
    assert_eq!(backend.resets.load(Ordering::SeqCst), 19);
    assert_eq!(
        retries(&proxy, "app", "reused_connection"),
        19.0,
        "retries by reason: {:?}",
        retries_by_reason(&proxy, "app")
    );
    // The access log says which answers came from a retry.
    wait_for("the access log", Duration::from_secs(5), || {
        proxy.log().matches("\"retries\":1").count() == 19
    });
    assert_eq!(proxy.log().matches("\"retries\":0").count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_whose_reused_connection_failed_before_it_was_all_sent_is_retried() {
    let backend = RawBackend::start(Behaviour::ClosesReusedConnections);
    let proxy = one_thread_proxy(&service("app", "app.test", &[backend.addr], ""));
    // One answered request leaves a kept-alive connection in the proxy's pool.
    let a = get_host(proxy.addr(), "app.test", "/").await.unwrap();
    assert_eq!(a.status, 200);
    backend_connection_pooled(&proxy, 1);

    // The POST's head and half its body go out on that connection, which the backend resets;
    // the rest of the body comes only once the proxy has seen the failure.
    let mut client = std::net::TcpStream::connect(proxy.addr()).unwrap();
    client
        .write_all(b"POST /orders HTTP/1.1\r\nHost: app.test\r\nContent-Length: 10\r\n\r\nhello")
        .unwrap();
    wait_for(
        "the reused connection to fail",
        Duration::from_secs(10),
        || retries(&proxy, "app", "reused_connection") == 1.0,
    );
    client.write_all(b"world").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // The head and the body may come in separate segments.
    let answer = read_raw_answer(&mut client);
    assert_eq!(answer, Some((200, "ok:POST:helloworld".to_string())));
    assert_eq!(
        backend.seen(),
        ["GET 0", "POST 10"],
        "the backend got the POST whole, once"
    );
    assert_eq!(backend.resets.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_answers_nothing_is_retried_as_retry_on_says() {
    let silent = RawBackend::start(Behaviour::Silent);
    let empty = RawBackend::start(Behaviour::Empty);
    let live = Upstream::start("live");
    let timeout = "read_timeout = \"300ms\"";
    let services = [
        service(
            "silent_default",
            "a.test",
            &[silent.addr, live.addr],
            timeout,
        ),
        service(
            "silent_timeout",
            "b.test",
            &[silent.addr, live.addr],
            &format!("{timeout}\nretry_on = [\"error\", \"timeout\"]"),
        ),
        service("empty_default", "c.test", &[empty.addr, live.addr], ""),
        service(
            "empty_timeout_only",
            "d.test",
            &[empty.addr, live.addr],
            "retry_on = [\"timeout\"]",
        ),
    ]
    .concat();
    let proxy = Proxy::start(&services);

    // A backend that never answers: 504 by default; with "timeout", the other backend answers.
    let a = get_host(proxy.addr(), "a.test", "/").await.unwrap();
    assert_eq!(a.status, 504, "{a:?}");
    let b = get_host(proxy.addr(), "b.test", "/").await.unwrap();
    assert_eq!((b.status.as_u16(), b.body.as_str()), (200, "live"), "{b:?}");
    assert_eq!(retries(&proxy, "silent_default", "timeout"), 0.0);
    assert_eq!(retries(&proxy, "silent_timeout", "timeout"), 1.0);

    // A backend that closes without answering: retried by default ("error"); not when
    // retry_on names only "timeout".
    let c = get_host(proxy.addr(), "c.test", "/").await.unwrap();
    assert_eq!((c.status.as_u16(), c.body.as_str()), (200, "live"), "{c:?}");
    let d = get_host(proxy.addr(), "d.test", "/").await.unwrap();
    assert_eq!(d.status, 502, "{d:?}");
    assert_eq!(retries(&proxy, "empty_default", "error"), 1.0);
    assert_eq!(total_retries(&proxy, "empty_timeout_only"), 0.0);

    assert_eq!(silent.seen().len(), 2);
    assert_eq!(empty.seen().len(), 2);
    assert_eq!(live.requests.load(Ordering::SeqCst), 2, "the two retries");
    wait_for(
        "both retries in the access log",
        Duration::from_secs(5),
        || proxy.log().matches("\"retries\":1").count() == 2,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_longer_than_the_retry_buffer_is_not_replayed() {
    let empty = RawBackend::start(Behaviour::Empty);
    let live = Upstream::start("live");
    let limited = "retry_buffer = \"1k\"";
    let services = [
        service("big", "big.test", &[empty.addr, live.addr], limited),
        service("small", "small.test", &[empty.addr, live.addr], limited),
    ]
    .concat();
    let proxy = Proxy::start(&services);

    let mut big = KeepAlive::connect(proxy.addr()).await.unwrap();
    big.host = "big.test".into();
    let a = big.request("PUT", "/file", vec![b'x'; 4096]).await.unwrap();
    assert_eq!(a.status, 502, "{a:?}");
    assert_eq!(live.requests.load(Ordering::SeqCst), 0, "not replayed");

    let mut small = KeepAlive::connect(proxy.addr()).await.unwrap();
    small.host = "small.test".into();
    let b = small
        .request("PUT", "/file", vec![b'x'; 512])
        .await
        .unwrap();
    assert_eq!((b.status.as_u16(), b.body.as_str()), (200, "live"), "{b:?}");
    assert_eq!(live.requests.load(Ordering::SeqCst), 1, "replayed whole");
    assert_eq!(empty.seen(), ["PUT 4096", "PUT 512"]);
    assert_eq!(total_retries(&proxy, "big"), 0.0);
    assert_eq!(retries(&proxy, "small", "error"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_larger_than_the_retry_buffer_still_goes_on_after_a_failed_connect() {
    // Nothing of the body was read when the connect failed: the next attempt reads it all.
    let live = Upstream::start("live");
    let proxy = Proxy::start(&dead_then_live(free_port(), &live));
    let mut c = KeepAlive::connect(proxy.addr()).await.unwrap();
    let a = c
        .request("POST", "/upload", vec![b'x'; 256 * 1024])
        .await
        .unwrap();
    assert_eq!((a.status.as_u16(), a.body.as_str()), (200, "live"), "{a:?}");
    assert_eq!(
        proxy.metric(
            "switchback_upstream_retries_total{pool=\"blue\",reason=\"connect\",service=\"app\"}"
        ),
        Some(1.0)
    );
}
