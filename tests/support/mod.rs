//! Real processes for the behaviour tests: upstream HTTP servers, the switchback binary, and
//! clients. Everything listens on 127.0.0.1, on ports the kernel picks; everything waits on a
//! condition (a port, a socket answer, a health state), never on a fixed sleep; every process
//! is killed when its handle is dropped.

#![allow(dead_code)]

use std::convert::Infallible;
use std::io::{ErrorKind, Read};
use std::net::SocketAddr;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

pub mod dns;
pub mod etcd;
pub mod pebble;

pub const BIN: &str = env!("CARGO_BIN_EXE_switchback");

/// `switchback check --config path`, run to its end.
pub fn check_config(path: &Path) -> Output {
    Command::new(BIN)
        .arg("--config")
        .arg(path)
        .arg("check")
        .output()
        .expect("run switchback check")
}

/// Polls `cond` every 10 ms until it holds, or panics after `timeout` saying what it waited for.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// An upstream HTTP server named after its pool. It answers:
/// - `/health`: 200, or 503 while `set_healthy(false)`;
/// - `/slow?ms=N`: after N milliseconds;
/// - `/status/N`: with status N;
/// - `/headers` (or any path ending so): 200 with the request headers it received, one `name: value` a line;
/// - `/text?bytes=N&type=T&encoding=E&chunked=1`: N bytes of text with content type T
///   (`text/plain`), labelled with content encoding E if given, without a length if chunked;
/// - a WebSocket upgrade: 101, then every byte back (an echo);
/// - a request whose body it read to the end (a non-empty one) counts in `complete_bodies`;
/// - anything else: 200 with its name as the body and in the `x-pool` header, or 500 for
///   every request that `set_failing` selects.
pub struct Upstream {
    pub name: String,
    pub addr: SocketAddr,
    healthy: Arc<AtomicBool>,
    /// Of every 100 ordinary requests, how many answer 500.
    failing: Arc<AtomicU64>,
    pub requests: Arc<AtomicU64>,
    pub slow_in_flight: Arc<AtomicU64>,
    pub complete_bodies: Arc<AtomicU64>,
    /// Connections accepted so far, and open now.
    pub accepted: Arc<AtomicU64>,
    pub open: Arc<AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Upstream {
    pub fn start(name: &str) -> Upstream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an upstream port");
        Self::serve(name, listener)
    }

    /// Starts on a given address (to bring a backend back where it was).
    pub fn start_on(name: &str, addr: SocketAddr) -> Upstream {
        let listener = std::net::TcpListener::bind(addr).expect("bind the upstream address again");
        Self::serve(name, listener)
    }

    fn serve(name: &str, listener: std::net::TcpListener) -> Upstream {
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let healthy = Arc::new(AtomicBool::new(true));
        let requests = Arc::new(AtomicU64::new(0));
        let slow_in_flight = Arc::new(AtomicU64::new(0));
        let failing = Arc::new(AtomicU64::new(0));
        let complete_bodies = Arc::new(AtomicU64::new(0));
        let accepted = Arc::new(AtomicU64::new(0));
        let open = Arc::new(AtomicU64::new(0));
        let (accepted_count, open_count) = (accepted.clone(), open.clone());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let state = (
            name.to_string(),
            healthy.clone(),
            requests.clone(),
            slow_in_flight.clone(),
            failing.clone(),
            complete_bodies.clone(),
        );
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let accept = async {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        let state = state.clone();
                        accepted_count.fetch_add(1, Ordering::SeqCst);
                        open_count.fetch_add(1, Ordering::SeqCst);
                        let open_count = open_count.clone();
                        tokio::spawn(async move {
                            let svc = service_fn(move |req| respond(state.clone(), req));
                            // Room for heads of as many header lines as pingora takes.
                            let _ = http1::Builder::new()
                                .max_headers(300)
                                .serve_connection(TokioIo::new(stream), svc)
                                .with_upgrades()
                                .await;
                            open_count.fetch_sub(1, Ordering::SeqCst);
                        });
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = stop_rx => {}
                }
            });
        });
        Upstream {
            name: name.to_string(),
            addr,
            healthy,
            failing,
            requests,
            slow_in_flight,
            complete_bodies,
            accepted,
            open,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::SeqCst);
    }

    /// Answers 500 to `percent` of every 100 ordinary requests (health checks still pass).
    pub fn set_failing(&self, percent: u64) {
        self.failing.store(percent, Ordering::SeqCst);
    }

    /// Stops listening and drops every connection.
    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop();
    }
}

type UpstreamState = (
    String,
    Arc<AtomicBool>,
    Arc<AtomicU64>,
    Arc<AtomicU64>,
    Arc<AtomicU64>,
    Arc<AtomicU64>,
);

/// The text `/text` answers with: `bytes` bytes of an English-like line, repeated.
pub fn sample_text(bytes: usize) -> String {
    "switchback compresses the text its backends send. "
        .chars()
        .cycle()
        .take(bytes)
        .collect()
}

async fn respond(
    (name, healthy, requests, slow, failing, complete_bodies): UpstreamState,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req
        .headers()
        .get("upgrade")
        .is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"websocket"))
    {
        tokio::spawn(async move {
            if let Ok(upgraded) = hyper::upgrade::on(req).await {
                let (mut from, mut to) = tokio::io::split(TokioIo::new(upgraded));
                let _ = tokio::io::copy(&mut from, &mut to).await;
            }
        });
        return Ok(Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("x-pool", name.as_str())
            .body(Full::new(Bytes::new()))
            .unwrap());
    }
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let seen_headers: String = req
        .headers()
        .iter()
        .map(|(k, v)| format!("{k}: {}\n", v.to_str().unwrap_or("?")))
        .collect();
    if let Ok(body) = req.into_body().collect().await {
        if !body.to_bytes().is_empty() {
            complete_bodies.fetch_add(1, Ordering::SeqCst);
        }
    }
    let reply = |status: u16, body: String| {
        Response::builder()
            .status(status)
            .header("x-pool", name.as_str())
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    if path.ends_with("/headers") {
        return Ok(reply(200, seen_headers));
    }
    if path == "/text" {
        let param = |key: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .map(|v| v.replace("%2F", "/").replace("%2B", "+"))
        };
        let bytes = param("bytes").and_then(|b| b.parse().ok()).unwrap_or(4096);
        let mut resp = Response::builder()
            .status(200)
            .header("x-pool", name.as_str())
            .header("content-type", param("type").unwrap_or("text/plain".into()));
        if let Some(encoding) = param("encoding") {
            resp = resp.header("content-encoding", encoding);
        }
        if let Some(etag) = param("etag") {
            resp = resp
                .header("etag", format!("\"{etag}\""))
                .header("accept-ranges", "bytes");
        }
        if param("chunked").is_some() {
            // hyper frames a body whose length the head does not give in chunks.
            resp = resp.header("transfer-encoding", "chunked");
        }
        return Ok(resp
            .body(Full::new(Bytes::from(sample_text(bytes))))
            .unwrap());
    }
    if path == "/health" {
        let ok = healthy.load(Ordering::SeqCst);
        return Ok(reply(if ok { 200 } else { 503 }, name.clone()));
    }
    let n = requests.fetch_add(1, Ordering::SeqCst);
    if n % 100 < failing.load(Ordering::SeqCst) {
        return Ok(reply(500, format!("{name} failed")));
    }
    if path == "/slow" {
        let ms: u64 = query
            .strip_prefix("ms=")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        slow.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        slow.fetch_sub(1, Ordering::SeqCst);
        return Ok(reply(200, name.clone()));
    }
    if let Some(code) = path
        .strip_prefix("/status/")
        .and_then(|c| c.parse::<u16>().ok())
    {
        return Ok(reply(code, name.clone()));
    }
    Ok(reply(200, name.clone()))
}

/// A raw client connection with a read deadline far past every deadline under test, so that a
/// proxy that never cuts the client fails the test instead of hanging it.
pub fn raw_connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s
}

/// A blocking connection from the loopback address `source` (any of 127.0.0.0/8), so that the
/// proxy sees another client, with [`raw_connect`]'s read deadline.
pub async fn raw_connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(source.parse().unwrap(), 0))
        .unwrap();
    let stream = socket.connect(to).await.unwrap().into_std().unwrap();
    stream.set_nonblocking(false).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    stream
}

/// Reads one answer: its status and body (by `content-length`). None if the connection
/// closed first.
pub fn read_raw_answer(s: &mut TcpStream) -> Option<(u16, String)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            Ok(_) => return None,
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                panic!("no answer and no close in 15 s")
            }
            Err(_) => return None,
        }
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    s.read_exact(&mut body).ok()?;
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The promtool command, after checking it is installed.
pub fn promtool() -> &'static str {
    let found = Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    assert!(
        found.is_ok_and(|s| s.success()),
        "promtool is missing: apt-get install -y prometheus (.ci/run does)"
    );
    "promtool"
}

/// Insists that `promtool check metrics` accepts a scrape.
pub fn assert_promtool_accepts(scrape: &str) {
    use std::io::Write;
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The switchback binary, running `run` on a config of its own in a temp dir.
pub struct Proxy {
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// The admin listener (`/metrics`, `/healthz`, `/readyz`).
    pub admin_port: u16,
    pub https_port: Option<u16>,
    pub socket: PathBuf,
    pub config: PathBuf,
    services: String,
    /// Extra lines for the `[server]` section.
    pub server: String,
    /// Extra lines for the `[listen]` section.
    pub listen: String,
    /// More plain HTTP listeners on 127.0.0.1, after `port`.
    pub more_http: Vec<u16>,
    child: Option<Child>,
    /// Processes an upgrade started (not children of the test): stopped with the proxy.
    upgraded: Vec<u32>,
    /// The switchback binary it runs.
    bin: PathBuf,
    /// The HTTP port was handed to someone else (an ACME CA validates on it) and must not
    /// change; the other ports may, when another process took them first.
    http_port_fixed: bool,
}

impl Proxy {
    /// Starts switchback with `services` (TOML for `[services.*]`, and any other section) below
    /// generated `[listen]`, `[control]` and `[state]` sections, and waits until it serves.
    pub fn start(services: &str) -> Proxy {
        Proxy::start_with_server("", services)
    }

    /// [`Proxy::start`], with `server` (lines like `max_connections = 10`) added to the
    /// `[server]` section.
    pub fn start_with_server(server: &str, services: &str) -> Proxy {
        let mut proxy = Proxy::unstarted(false);
        proxy.http_port_fixed = false;
        proxy.server = server.to_string();
        proxy.launch(services);
        proxy
    }

    /// [`Proxy::start`] of the binary at `bin` (a copy of switchback that a test replaces, say).
    pub fn start_binary(bin: &Path, services: &str) -> Proxy {
        let mut proxy = Proxy::unstarted(false);
        proxy.http_port_fixed = false;
        proxy.bin = bin.to_path_buf();
        proxy.launch(services);
        proxy
    }

    /// A proxy with its ports and dir chosen but not running yet, so that other parts (an
    /// ACME CA) can be pointed at it first. With `https`, it gets an HTTPS listener too.
    pub fn unstarted(https: bool) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        Proxy {
            port: free_port(),
            admin_port: free_port(),
            https_port: https.then(free_port),
            socket: dir.path().join("control.sock"),
            config: dir.path().join("switchback.toml"),
            services: String::new(),
            server: String::new(),
            listen: String::new(),
            more_http: Vec::new(),
            dir,
            child: None,
            upgraded: Vec::new(),
            bin: PathBuf::from(BIN),
            http_port_fixed: true,
        }
    }

    /// Writes the config with `services` and starts the proxy. A port taken by another
    /// process between the choice and the start ("a port that was free a moment ago") is
    /// chosen anew, unless it was handed out already.
    pub fn launch(&mut self, services: &str) {
        self.services = services.to_string();
        for _ in 0..5 {
            self.write_config();
            let log_before = self.log().len();
            let Some(taken) = self.try_spawn() else {
                return;
            };
            let log = self.log();
            let new_output = log.get(log_before..).unwrap_or_default();
            let in_use = |p: u16| {
                new_output.contains(&format!("cannot listen on 127.0.0.1:{p} "))
                    && new_output.contains("Address already in use")
            };
            if in_use(self.admin_port) {
                self.admin_port = free_port();
            } else if self.https_port.is_some_and(in_use) {
                self.https_port = Some(free_port());
            } else if in_use(self.port) && !self.http_port_fixed {
                self.port = free_port();
            } else {
                panic!("switchback exited at start with {taken}:\n{log}");
            }
        }
        panic!(
            "switchback found its ports taken five times:\n{}",
            self.log()
        );
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn write_config(&self) {
        let https = self
            .https_port
            .map(|p| format!("https = [\"127.0.0.1:{p}\"]\n"))
            .unwrap_or_default();
        // Two threads unless the test's server lines say otherwise.
        let mut threads = if self.server.contains("threads =") {
            String::new()
        } else {
            "threads = 2\n".to_string()
        };
        // SWITCHBACK_TEST_HTTP1=pingora runs a test on pingora's HTTP/1 path (the README's test
        // command runs the behaviour tests on both), unless the test chose one itself.
        if let Ok(http1) = std::env::var("SWITCHBACK_TEST_HTTP1") {
            if !self.server.contains("http1 =") {
                threads.push_str(&format!("http1 = \"{http1}\"\n"));
            }
        }
        let more: String = self
            .more_http
            .iter()
            .map(|p| format!(", \"127.0.0.1:{p}\""))
            .collect();
        let text = format!(
            "[listen]\nhttp = [\"127.0.0.1:{}\"{more}]\n{https}{}\n[admin]\nlisten = \"127.0.0.1:{}\"\n\n[control]\nsocket = \"{}\"\n\n[state]\ndir = \"{}\"\n\n[server]\n{threads}shutdown_grace = \"10s\"\n{}\n\n{}",
            self.port,
            self.listen,
            self.admin_port,
            self.socket.display(),
            self.state_dir().display(),
            self.server,
            self.services
        );
        std::fs::write(&self.config, text).unwrap();
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("switchback.log")
    }

    /// The proxy's own log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn spawn(&mut self) {
        if let Some(status) = self.try_spawn() {
            panic!("switchback exited at start with {status}:\n{}", self.log());
        }
    }

    /// Starts the proxy and waits until it serves; the exit status if it ended at start.
    fn try_spawn(&mut self) -> Option<std::process::ExitStatus> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut command = Command::new(&self.bin);
        command
            .args(["run", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = spawn_once_not_busy(&mut command).expect("start switchback");
        self.child = Some(child);
        let (port, admin_port, https_port) = (self.port, self.admin_port, self.https_port);
        let socket = self.socket.clone();
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            let serving = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                && std::net::TcpStream::connect(("127.0.0.1", admin_port)).is_ok()
                && https_port
                    .is_none_or(|p| std::net::TcpStream::connect(("127.0.0.1", p)).is_ok());
            if serving && control_answers(&socket) {
                return None;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "switchback did not start serving:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The process `switchback upgrade` started, which now serves: stopped with the proxy.
    pub fn upgraded_to(&mut self, pid: u32) {
        self.upgraded.push(pid);
    }

    /// Runs `switchback upgrade` and returns (old pid, new pid) once the new process serves;
    /// the new process is stopped with the proxy.
    pub fn upgrade(&mut self) -> (u64, u64) {
        let out = self.cli_ok(&["upgrade", "--json"]);
        let reply: serde_json::Value =
            serde_json::from_str(out.lines().next().expect("a reply line")).unwrap();
        let (old, new) = (reply["old_pid"].as_u64(), reply["new_pid"].as_u64());
        let (old, new) = (old.expect("the old pid"), new.expect("the new pid"));
        self.upgraded_to(new as u32);
        (old, new)
    }

    /// Kills the process without warning, as a crash would.
    pub fn kill(&mut self) {
        for pid in self.upgraded.drain(..) {
            let _ = Command::new("kill")
                .args(["-9", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal and waits (30 s at most) for the process to exit, returning how long
    /// that took.
    pub fn signal_and_wait(&mut self, signal: &str) -> Duration {
        let mut c = self.child.take().expect("running");
        let start = Instant::now();
        let ok = Command::new("kill")
            .args(["-s", signal, &c.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success(), "kill -s {signal} failed");
        let status = loop {
            if let Some(status) = c.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = c.kill();
                let _ = c.wait();
                panic!("switchback did not exit within 30 s of SIG{signal}");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let took = start.elapsed();
        assert!(
            status.success() || status.code().is_none(),
            "switchback exited with {status}"
        );
        took
    }

    /// Writes the config again with `services` in place of the ones it had (the process is
    /// left alone: `reload` or SIGHUP reads it).
    pub fn rewrite(&mut self, services: &str) {
        self.services = services.to_string();
        self.write_config();
    }

    /// Crash and start again on the same config, port and state dir.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// GET on the admin listener: (status, body).
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.admin_port))
            .expect("connect to the admin listener");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP answer");
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("a status");
        (status, body.to_string())
    }

    /// The value of one sample in a `/metrics` scrape (`name{labels}` exactly as exported).
    pub fn metric(&self, sample: &str) -> Option<f64> {
        let (_, body) = self.admin_get("/metrics");
        body.lines()
            .find_map(|l| {
                l.strip_prefix(sample)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .map(|v| v.trim().parse().expect("a number"))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Runs the CLI against this proxy's socket.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run the switchback CLI")
    }

    /// Runs the CLI and insists that it succeeds.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "switchback {args:?} failed with {}:\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.cli_ok(&["status", "--json"])).expect("status --json is JSON")
    }

    pub fn active_pool(&self, service: &str) -> String {
        let status = self.status();
        let s = status["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == service)
            .unwrap_or_else(|| panic!("no service {service} in {status}"));
        s["active"].as_str().unwrap().to_string()
    }

    /// The backends of a pool, as `status --json` lists them (none for an unknown pool).
    pub fn pool_backends(&self, service: &str, pool: &str) -> Vec<serde_json::Value> {
        let status = self.status();
        status["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == service)
            .and_then(|s| {
                s["pools"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|p| p["name"] == pool)
            })
            .and_then(|p| p["backends"].as_array().cloned())
            .unwrap_or_default()
    }

    /// The health of every backend of a pool, as `status` reports it.
    pub fn pool_health(&self, service: &str, pool: &str) -> Vec<String> {
        self.pool_backends(service, pool)
            .iter()
            .map(|b| b["health"].as_str().unwrap().to_string())
            .collect()
    }

    /// Waits until every backend of the pool reports `health`.
    pub fn wait_health(&self, service: &str, pool: &str, health: &str) {
        wait_for(
            &format!("{service}/{pool} to be {health}"),
            Duration::from_secs(10),
            || {
                let h = self.pool_health(service, pool);
                !h.is_empty() && h.iter().all(|x| x == health)
            },
        );
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.kill();
    }
}

fn control_answers(socket: &Path) -> bool {
    use std::io::{BufRead, BufReader, Write};
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"{\"cmd\":\"status\"}\n").is_err() {
        return false;
    }
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).is_ok() && line.starts_with("{\"ok\":true")
}

/// Sends raw lines to the control socket and reads one answer line per request.
pub struct RawControl {
    reader: std::io::BufReader<std::os::unix::net::UnixStream>,
    writer: std::os::unix::net::UnixStream,
}

impl RawControl {
    pub fn connect(socket: &Path) -> RawControl {
        let s =
            std::os::unix::net::UnixStream::connect(socket).expect("connect to the control socket");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        RawControl {
            reader: std::io::BufReader::new(s.try_clone().unwrap()),
            writer: s,
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        self.writer.write_all(bytes)
    }

    /// Reads the next line from the server as JSON; None when the server closed.
    pub fn read(&mut self) -> Option<serde_json::Value> {
        use std::io::BufRead;
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")),
            ),
        }
    }

    pub fn request(&mut self, line: &str) -> serde_json::Value {
        self.send_raw(format!("{line}\n").as_bytes()).unwrap();
        self.read().expect("an answer")
    }
}

/// One keep-alive HTTP/1.1 client connection.
pub struct KeepAlive {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    /// The Host header sent with each request.
    pub host: String,
}

/// What a request through the proxy came back with.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    /// The `x-pool` header: which upstream answered.
    pub pool: String,
    pub body: String,
    /// Every `set-cookie` header of the answer.
    pub set_cookies: Vec<String>,
    pub headers: hyper::HeaderMap,
    /// The body as it came, before any decoding.
    pub raw: Bytes,
}

impl KeepAlive {
    pub async fn connect(addr: SocketAddr) -> std::io::Result<KeepAlive> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        KeepAlive::over(stream).await
    }

    /// A connection from the loopback address `source` (any of 127.0.0.0/8), so that the proxy
    /// sees another client.
    pub async fn connect_from(addr: SocketAddr, source: &str) -> std::io::Result<KeepAlive> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(source.parse().unwrap(), 0))?;
        let stream = socket.connect(addr).await?;
        KeepAlive::over(stream).await
    }

    async fn over(stream: tokio::net::TcpStream) -> std::io::Result<KeepAlive> {
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        Ok(KeepAlive {
            sender,
            host: "app.test".to_string(),
        })
    }

    pub async fn get(&mut self, path: &str) -> Result<Answer, String> {
        self.request("GET", path, Vec::new()).await
    }

    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<Answer, String> {
        self.send(method, path, &[], body).await
    }

    /// A GET with extra request headers.
    pub async fn get_with(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Answer, String> {
        self.send("GET", path, headers, Vec::new()).await
    }

    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Answer, String> {
        self.sender
            .ready()
            .await
            .map_err(|e| format!("connection not ready: {e}"))?;
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.host.as_str());
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req.body(Full::new(Bytes::from(body))).unwrap();
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let status = resp.status();
        let pool = resp
            .headers()
            .get("x-pool")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let set_cookies = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_string)
            .collect();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body failed: {e}"))?
            .to_bytes();
        Ok(Answer {
            status,
            pool,
            body: String::from_utf8_lossy(&body).into_owned(),
            set_cookies,
            headers,
            raw: body,
        })
    }
}

/// One request on a fresh connection.
pub async fn get_once(addr: SocketAddr, path: &str) -> Result<Answer, String> {
    let mut c = KeepAlive::connect(addr).await.map_err(|e| e.to_string())?;
    c.get(path).await
}

/// One request on a fresh connection with a given Host header.
pub async fn get_host(addr: SocketAddr, host: &str, path: &str) -> Result<Answer, String> {
    let mut c = KeepAlive::connect(addr).await.map_err(|e| e.to_string())?;
    c.host = host.to_string();
    c.get(path).await
}

/// One GET to `127.0.0.1:port` with `host`: the status, which upstream answered (`x-pool`)
/// and the `location` of a redirect.
pub async fn ask(port: u16, host: &str, path: &str) -> (u16, String, String) {
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let answer = get_host(addr, host, path).await.unwrap();
    let location = answer
        .headers
        .get("location")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (answer.status.as_u16(), answer.pool, location)
}

/// The entry of service `name` in a `status --json` reply.
pub fn service_status<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no service {name} in {status}"))
}

/// `[services.app]` whose blue pool is port `dead` (where nobody listens), then `live`; no
/// health check, so only a failed connect tells the proxy the first backend is dead.
pub fn dead_then_live(dead: u16, live: &Upstream) -> String {
    format!(
        "[services.app]\nactive = \"blue\"\npools.blue = [\"127.0.0.1:{dead}\", \"{}\"]\n",
        live.addr
    )
}

/// `[services.app]` with a blue and a green pool and a fast health check.
pub fn blue_green(blue: &Upstream, green: &Upstream) -> String {
    format!(
        "[services.app]\nhosts = []\nactive = \"blue\"\npools.blue = [\"{}\"]\npools.green = [\"{}\"]\nhealth = {{ path = \"/health\", interval = \"100ms\", timeout = \"1s\" }}\n",
        blue.addr, green.addr
    )
}

/// Clients that keep sending GET / through a proxy until told to stop: some on kept-alive
/// connections, some opening a new connection for every request (a refused connection shows
/// there). An answer `wanted` rejects, and every request that fails, is kept as a failure. A
/// kept-alive connection the proxy closed after an answer that said `connection: close` is
/// no failure: the client opens a new one before it sends anything, as any client does.
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(
        addr: SocketAddr,
        host: &str,
        kept_alive: usize,
        new_connections: usize,
        wanted: fn(&Answer) -> bool,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let mut clients = Vec::new();
        let kinds = std::iter::repeat_n(true, kept_alive)
            .chain(std::iter::repeat_n(false, new_connections));
        for keep_alive in kinds {
            let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
            let host = host.to_string();
            clients.push(tokio::spawn(async move {
                let connect = || async {
                    let mut conn = KeepAlive::connect(addr).await?;
                    conn.host = host.clone();
                    Ok::<_, std::io::Error>(conn)
                };
                let mut conn = connect().await.expect("connect to the proxy");
                let deadline = Instant::now() + Duration::from_secs(120);
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    let answer = if keep_alive {
                        conn.get("/").await
                    } else {
                        get_host(addr, &host, "/").await
                    };
                    match answer {
                        Ok(a) if wanted(&a) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(a) => failures
                            .lock()
                            .unwrap()
                            .push(format!("status {} from {:?}: {}", a.status, a.pool, a.body)),
                        Err(e) => {
                            if !e.starts_with("connection not ready") {
                                failures.lock().unwrap().push(e);
                            }
                            if keep_alive {
                                match connect().await {
                                    Ok(c) => conn = c,
                                    Err(e) => failures.lock().unwrap().push(e.to_string()),
                                }
                            }
                        }
                    }
                }
            }));
        }
        Load {
            stop,
            ok,
            failures,
            clients,
        }
    }

    /// Waits until `n` more requests were answered as wanted.
    pub fn wait_for_more(&self, n: u64, what: &str) {
        let before = self.ok.load(Ordering::SeqCst);
        wait_for(what, Duration::from_secs(10), || {
            self.ok.load(Ordering::SeqCst) >= before + n
        });
    }

    /// Stops the clients and insists that no request failed.
    pub async fn stop_with_no_failure(self) {
        self.stop.store(true, Ordering::SeqCst);
        for c in self.clients {
            c.await.unwrap();
        }
        let failures = self.failures.lock().unwrap();
        assert!(
            failures.is_empty(),
            "{} of {} requests failed: {:?}",
            failures.len(),
            self.ok.load(Ordering::SeqCst) + failures.len() as u64,
            &failures[..failures.len().min(10)]
        );
    }
}

/// Waits until process `pid` has exited (gone, or a zombie nobody reaped yet).
pub fn wait_exited(pid: u64) {
    wait_for(
        &format!("process {pid} to exit"),
        Duration::from_secs(20),
        || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map_or(true, |stat| stat.contains(") Z "))
        },
    );
}

/// Spawns `command`, whose binary a test may have written a moment ago (a copy of switchback
/// to upgrade). While another test thread forks a child, that child holds every descriptor
/// open at that moment, the copy's writer among them, until it execs; executing the copy
/// then fails as busy (ETXTBSY). That lasts only until the child execs, so the spawn is tried
/// again until it is not busy, for at most two seconds.
pub fn spawn_once_not_busy(command: &mut Command) -> std::io::Result<Child> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match command.spawn() {
            Err(e) if e.kind() == ErrorKind::ExecutableFileBusy && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            spawned => return spawned,
        }
    }
}
