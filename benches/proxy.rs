//! Load benchmarks: switchback beside nginx and HAProxy, on the same upstream and machine, one
//! worker thread each, measured by wrk in alternating rounds, with the engine's floor beside
//! them: the thinnest proxy pingora can be (one thread, no work stealing, mimalloc, a fixed
//! peer, nothing else), which this bench binary becomes when run as `proxy --floor PORT
//! UPSTREAM_PORT`. Nothing switchback does can be cheaper than the floor; the ratio to it is
//! what switchback's own code costs. Beside it runs `floor-forwarding` (`--floor PORT
//! UPSTREAM_PORT --forwarding`): the floor plus the `X-Forwarded-For` and `X-Forwarded-Proto`
//! that switchback writes for every client, and that nginx and HAProxy are configured to add
//! here, inserted the way pingora's filters allow. The ratio to it is what switchback costs
//! beyond forwarding.
//!
//! `cargo bench --bench proxy -- [SCENARIO…] [--rounds N] [--seconds S] [--connections C]
//! [--threads T]` (T worker threads for every proxy; 1 by default)
//!
//! Scenarios (all by default):
//! - `http`: keep-alive requests per second and p99 latency of switchback (its default config:
//!   metrics and access log on; switchback-quiet with both off, the work the peers do here), the
//!   floor, nginx, HAProxy and floor-forwarding, with the ratios
//!   of switchback and of the floor to each other proxy measured in the same round, and their
//!   medians; then requests per second, p99 and backend connections opened at 64, 256 and 1000
//!   clients (switchback on both HTTP/1 paths, nginx with `keepalive 1024`, HAProxy), which
//!   `backends` runs alone;
//! - `large`: keep-alive GETs of a 1 MiB answer (requests per second times 1 MiB is the
//!   bytes per second), for switchback on both HTTP/1 paths, the floor, nginx and HAProxy;
//! - `https`: keep-alive requests per second over TLS, and new TLS handshakes per second, for
//!   switchback, nginx and HAProxy with the same certificate;
//! - `switch`: failed requests while switchback switches blue → green → blue 100 times under
//!   load;
//! - `observability`: switchback with metrics and the access log on, against both off;
//! - `canary`: switchback with a 10% canary against the same proxy with a plain active pool,
//!   for clients that carry their bucket cookie;
//! - `instructions`: user-space instructions per request under callgrind for switchback (bare,
//!   with metrics, with metrics and access log, with one allow list and one rate limit, with a
//!   10% canary), the floor, floor-forwarding,
//!   nginx and HAProxy, and heap allocations per request (calls into malloc's or mimalloc's
//!   entry points in the same profile): measures of work that, unlike requests per second, do
//!   not move with the load of a shared machine. With `SWITCHBACK_BASELINE=/path/to/switchback` (another build, say of the commit
//!   before a change), that binary runs on the default config too, and the same-run ratio prices
//!   the change (`http` runs it beside the others too);
//! - `memory`: resident memory per idle keep-alive connection and per open WebSocket, for
//!   switchback, the floor and nginx (see `proxy/memory.rs`; needs python3);
//! - `retry`: failed requests when a backend is killed under slow GETs, and when a backend
//!   closes idle keep-alive connections, for switchback and nginx (see `proxy/retry.rs`; needs
//!   python3);
//! - `reload`: failed requests and refused connections during 20 config reloads (switchback,
//!   nginx, HAProxy) and 3 upgrades of switchback itself (see `proxy/reload.rs`);
//! - `shaping`: what header rules and gzip compression cost switchback, and its gzip beside
//!   nginx's at the same level (see `proxy/shaping.rs`).
//! - `fleet`: three nodes sharing one etcd: how long a switch takes to reach all of them, and
//!   the failed requests meanwhile (see `proxy/fleet.rs`). Not in the default set.
//!
//! Needs wrk, nginx and haproxy (Debian packages `wrk nginx-light haproxy`), and valgrind for
//! `instructions`. Everything listens
//! on 127.0.0.1. Machines are shared and noisy: read the medians and the same-round ratios, not
//! any single number.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_switchback");

#[path = "proxy/fleet.rs"]
mod fleet;
#[path = "proxy/memory.rs"]
mod memory;
#[path = "proxy/reload.rs"]
mod reload;
#[path = "proxy/retry.rs"]
mod retry;
#[path = "proxy/shaping.rs"]
mod shaping;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The engine's floor: a pingora proxy that does nothing of its own (with `forwarding`, nothing
/// but the two forwarding headers).
mod floor {
    use async_trait::async_trait;
    use pingora::prelude::*;
    use pingora::proxy::{ProxyHttp, Session};
    use pingora::server::configuration::ServerConf;

    /// Forwards to its peer and does nothing else: pingora's own filters throughout. With
    /// `FORWARDING`, it writes the two forwarding headers into each request to its peer.
    struct Floor<const FORWARDING: bool>(HttpPeer);

    #[async_trait]
    impl<const FORWARDING: bool> ProxyHttp for Floor<FORWARDING> {
        type CTX = ();

        fn new_ctx(&self) {}

        fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

        async fn upstream_peer(
            &self,
            _session: &mut Session,
            _ctx: &mut (),
        ) -> Result<Box<HttpPeer>> {
            Ok(Box::new(self.0.clone()))
        }

        async fn upstream_request_filter(
            &self,
            session: &mut Session,
            upstream_request: &mut pingora::http::RequestHeader,
            _ctx: &mut (),
        ) -> Result<()> {
            if !FORWARDING {
                return Ok(());
            }
            if let Some(peer) = session.client_addr().and_then(|a| a.as_inet()) {
                upstream_request.insert_header("X-Forwarded-For", peer.ip().to_string())?;
            }
            upstream_request.insert_header("X-Forwarded-Proto", "http")
        }
    }

    /// Serves on 127.0.0.1:`port` in front of 127.0.0.1:`upstream` until killed; with
    /// `forwarding`, writing the forwarding headers into each request to the upstream.
    pub fn run(port: u16, upstream: u16, forwarding: bool) {
        let conf = ServerConf {
            threads: super::threads(),
            work_stealing: false,
            grace_period_seconds: Some(0),
            graceful_shutdown_timeout_seconds: Some(0),
            ..ServerConf::default()
        };
        let mut server = Server::new_with_opt_and_conf(None, conf);
        server.bootstrap();
        let peer = HttpPeer::new(("127.0.0.1", upstream), false, String::new());
        if forwarding {
            serve(server, port, Floor::<true>(peer))
        } else {
            serve(server, port, Floor::<false>(peer))
        }
    }

    fn serve<P>(mut server: Server, port: u16, proxy: P)
    where
        P: ProxyHttp<CTX = ()> + Send + Sync + 'static,
    {
        let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, proxy);
        proxy.add_tcp(&format!("127.0.0.1:{port}"));
        server.add_service(proxy);
        server.run_forever();
    }
}

/// Worker threads of every proxy (`--threads N`, default 1): switchback's and the floor's
/// `threads`, nginx's `worker_processes`, HAProxy's `nbthread`. Passed on to the floor's
/// process in `SWITCHBACK_BENCH_THREADS`.
fn threads() -> usize {
    std::env::var("SWITCHBACK_BENCH_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(1)
}

struct Options {
    scenarios: Vec<String>,
    rounds: usize,
    seconds: u64,
    connections: usize,
}

fn options() -> Options {
    let mut o = Options {
        scenarios: Vec::new(),
        rounds: 5,
        seconds: 5,
        connections: 32,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |name: &str| -> u64 {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} takes a number"))
        };
        match a.as_str() {
            "--rounds" => o.rounds = num("--rounds") as usize,
            "--seconds" => o.seconds = num("--seconds"),
            "--connections" => o.connections = num("--connections") as usize,
            // Read by threads() here and in the floor's process, which inherits it.
            "--threads" => {
                std::env::set_var("SWITCHBACK_BENCH_THREADS", num("--threads").to_string())
            }
            "--bench" => {}
            s if s.starts_with("--") => panic!("unknown option {s}"),
            s => o.scenarios.push(s.to_string()),
        }
    }
    if o.scenarios.is_empty() {
        o.scenarios = vec![
            "http".into(),
            "https".into(),
            "large".into(),
            "switch".into(),
            "observability".into(),
            "canary".into(),
            "instructions".into(),
            "memory".into(),
            "retry".into(),
        ];
    }
    o
}

/// A child process killed on drop.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Drop for Proc {
    /// SIGTERM first, so that a master process (nginx, HAProxy) takes its workers with it; a
    /// SIGKILLed nginx master leaves its workers running, listening and eating CPU in the
    /// rounds that follow. SIGKILL after 5 s.
    fn drop(&mut self) {
        // Already reaped (a bench that stopped it itself): its pid may be another process's now.
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Proc {
    let log_path = log.to_path_buf();
    let log = std::fs::File::create(log).unwrap();
    let child = cmd
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    Proc {
        name: name.to_string(),
        child,
        log: log_path,
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `port` answers an HTTP request with 200.
fn wait_http(proc: &mut Proc, port: u16, path: &str) {
    let start = Instant::now();
    loop {
        if let Ok(Some(status)) = proc.child.try_wait() {
            let log = std::fs::read_to_string(&proc.log).unwrap_or_default();
            panic!("{} exited at start with {status}:\n{log}", proc.name);
        }
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let req = format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
            if s.write_all(req.as_bytes()).is_ok() {
                let mut line = String::new();
                if BufReader::new(s).read_line(&mut line).is_ok() && line.contains(" 200") {
                    return;
                }
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{} did not serve on {port}",
            proc.name
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Bench {
    dir: PathBuf,
    _tmp: tempfile::TempDir,
    upstream_blue: u16,
    upstream_green: u16,
    _upstream: Proc,
}

impl Bench {
    fn new() -> Bench {
        for tool in ["wrk", "nginx", "haproxy"] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
                || Path::new(&format!("/usr/sbin/{tool}")).exists();
            assert!(
                found,
                "{tool} is missing: apt-get install -y wrk nginx-light haproxy"
            );
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let (blue, green) = (free_port(), free_port());
        let conf = nginx_conf(
            &dir.join("upstream"),
            &format!(
                "server {{ listen 127.0.0.1:{blue}; access_log off; location / {{ return 200 \"blue\\n\"; }}\n\
                   location = /page {{ default_type text/html; alias {}; }}\n\
                   location = /large {{ default_type application/octet-stream; alias {}; }} }}\n\
                 server {{ listen 127.0.0.1:{green}; access_log off; location / {{ return 200 \"green\\n\"; }} }}",
                shaping::page_file(&dir).display(),
                large_file(&dir).display()
            ),
        );
        let mut upstream = spawn(
            "upstream nginx",
            Command::new(nginx_bin())
                .args(["-e", "stderr", "-c"])
                .arg(&conf),
            &dir.join("upstream.log"),
        );
        wait_http(&mut upstream, blue, "/");
        wait_http(&mut upstream, green, "/");
        Bench {
            dir,
            _tmp: tmp,
            upstream_blue: blue,
            upstream_green: green,
            _upstream: upstream,
        }
    }

    fn switchback(&self, port: u16) -> (Proc, PathBuf) {
        self.switchback_with(port, "[access_log]\nenabled = false\n")
    }

    /// switchback with `extra` TOML sections (access log, metrics, …) added to its config.
    fn switchback_with(&self, port: u16, extra: &str) -> (Proc, PathBuf) {
        let (cmd, socket) = self.switchback_cmd(port, extra, true);
        (start("switchback", cmd, port, &self.dir), socket)
    }

    /// The command line of a switchback with `extra` config sections, and its control socket.
    /// Without `health`, no health checks run (their timing would blur instruction counts).
    fn switchback_cmd(&self, port: u16, extra: &str, health: bool) -> (Command, PathBuf) {
        self.switchback_cmd_server(port, "", extra, health)
    }

    /// [`Bench::switchback_cmd`] with `server` lines (`http1 = "pingora"`, say) in `[server]`.
    fn switchback_cmd_server(
        &self,
        port: u16,
        server: &str,
        extra: &str,
        health: bool,
    ) -> (Command, PathBuf) {
        let dir = self.dir.join(format!("switchback-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("control.sock");
        let config = dir.join("switchback.toml");
        std::fs::write(
            &config,
            format!(
                "[listen]\nhttp = [\"127.0.0.1:{port}\"]\n[server]\nthreads = {threads}\n{server}\n[control]\nsocket = \"{}\"\n[state]\ndir = \"{}\"\n\
                 [services.app]\nactive = \"blue\"\npools.blue = [\"127.0.0.1:{}\"]\npools.green = [\"127.0.0.1:{}\"]\n{}\n{extra}",
                socket.display(),
                dir.join("state").display(),
                self.upstream_blue,
                self.upstream_green,
                if health { "health = { path = \"/\", interval = \"1s\" }" } else { "" },
                threads = threads(),
            ),
        )
        .unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn");
        (cmd, socket)
    }

    /// The command line of another build of switchback (SWITCHBACK_BASELINE, say of the commit
    /// before a change) on the same config as [`Bench::switchback_cmd`]'s, to price a change in
    /// the same run.
    fn baseline_cmd(&self, port: u16, extra: &str, health: bool) -> Option<Command> {
        let bin = std::env::var_os("SWITCHBACK_BASELINE")?;
        let (cmd, _) = self.switchback_cmd(port, extra, health);
        let mut other = Command::new(bin);
        other.args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            if let Some(v) = v {
                other.env(k, v);
            }
        }
        Some(other)
    }

    /// The floor in front of the blue upstream.
    fn floor_cmd(&self, port: u16) -> Command {
        let mut cmd = Command::new(std::env::current_exe().expect("the bench binary's path"));
        cmd.args([
            "--floor",
            &port.to_string(),
            &self.upstream_blue.to_string(),
        ]);
        cmd
    }

    fn floor(&self, port: u16) -> Proc {
        start("floor", self.floor_cmd(port), port, &self.dir)
    }

    /// The floor plus the two forwarding headers.
    fn floor_forwarding_cmd(&self, port: u16) -> Command {
        let mut cmd = self.floor_cmd(port);
        cmd.arg("--forwarding");
        cmd
    }

    fn nginx(&self, port: u16) -> Proc {
        start("nginx", self.nginx_cmd(port), port, &self.dir)
    }

    fn nginx_cmd(&self, port: u16) -> Command {
        let dir = self.dir.join(format!("nginx-{port}"));
        let conf = nginx_conf(
            &dir,
            &format!(
                "upstream app {{ server 127.0.0.1:{}; keepalive 64; }}\n\
                 server {{ listen 127.0.0.1:{port}; access_log off;\n\
                   location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\";\n\
                     proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; proxy_set_header X-Forwarded-Proto $scheme; }} }}",
                self.upstream_blue
            ),
        );
        let mut cmd = Command::new(nginx_bin());
        cmd.args(["-e", "stderr", "-c"]).arg(&conf);
        cmd
    }

    fn haproxy(&self, port: u16) -> Proc {
        start("haproxy", self.haproxy_cmd(port), port, &self.dir)
    }

    fn haproxy_cmd(&self, port: u16) -> Command {
        let conf = self.dir.join(format!("haproxy-{port}.cfg"));
        std::fs::write(
            &conf,
            format!(
                "global\n  nbthread {threads}\n  maxconn 4096\n\
                 defaults\n  mode http\n  timeout connect 3s\n  timeout client 60s\n  timeout server 60s\n  option http-keep-alive\n  option forwardfor\n  http-reuse always\n\
                 frontend fe\n  bind 127.0.0.1:{port}\n  default_backend be\n\
                 backend be\n  server s1 127.0.0.1:{}\n",
                self.upstream_blue,
                threads = threads(),
            ),
        )
        .unwrap();
        let mut cmd = Command::new(haproxy_bin());
        cmd.arg("-db").arg("-f").arg(&conf);
        cmd
    }
}

/// Starts a proxy and waits until it answers on `port`.
fn start(name: &str, mut cmd: Command, port: u16, dir: &Path) -> Proc {
    let mut p = spawn(name, &mut cmd, &dir.join(format!("{name}-{port}.log")));
    wait_http(&mut p, port, "/");
    p
}

/// The same command under callgrind, every process it forks writing `prefix.<pid>`.
fn under_callgrind(cmd: &Command, prefix: &Path) -> Command {
    let mut v = Command::new("valgrind");
    v.args([
        "--tool=callgrind",
        "--trace-children=yes",
        "--separate-threads=yes",
        "--compress-strings=no",
    ])
    .arg(format!("--callgrind-out-file={}.%p", prefix.display()))
    .arg(cmd.get_program())
    .args(cmd.get_args());
    for (k, val) in cmd.get_envs() {
        if let Some(val) = val {
            v.env(k, val);
        }
    }
    v
}

/// Sends `n` keep-alive GETs one after another on one connection, each with `headers`
/// (complete lines, `\r\n` included).
fn send_requests(port: u16, n: usize, headers: &str) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut buf: Vec<u8> = Vec::new();
    let request = format!("GET / HTTP/1.1\r\nHost: bench\r\n{headers}\r\n");
    for _ in 0..n {
        s.write_all(request.as_bytes()).unwrap();
        assert!(
            read_answer(&mut s, &mut buf).is_some(),
            "the proxy closed the connection"
        );
    }
}

/// Reads one answer (its head, and its Content-Length body) off `s`, with `buf` holding what
/// was read ahead: its status line, lower-cased, or None when the connection ended first.
fn read_answer(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                buf.drain(..end + 4 + len);
                return head.lines().next().map(str::to_string);
            }
        }
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Instructions (user space, as callgrind counts them) a proxy runs per request: the
/// difference between a run of `few` and a run of `many` requests, so start-up and shutdown
/// cancel out. Unlike time, this does not move with the machine's load. Returns (all threads,
/// all but switchback's access-log writer thread).
fn instructions_per_request(
    name: &str,
    cmd: &Command,
    port: u16,
    dir: &Path,
    headers: &str,
) -> (f64, f64, f64) {
    let (few, many) = (1000, 3000);
    let mut totals = Vec::new();
    for n in [few, many] {
        let prefix = dir.join(format!("callgrind-{name}-{n}"));
        let mut p = spawn(
            name,
            &mut under_callgrind(cmd, &prefix),
            &dir.join(format!("callgrind-{name}-{n}.log")),
        );
        wait_http(&mut p, port, "/");
        send_requests(port, n, headers);
        // SIGINT: every proxy here exits at once and callgrind writes its totals.
        let _ = Command::new("kill")
            .args(["-INT", &p.child.id().to_string()])
            .status();
        let _ = p.child.wait();
        let (mut all, mut writer, mut allocs) = (0u64, 0u64, 0u64);
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let file = path.file_name().unwrap().to_string_lossy().to_string();
            if file.starts_with(&format!("callgrind-{name}-{n}.")) && !file.ends_with(".log") {
                let text = std::fs::read_to_string(&path).unwrap();
                allocs += allocation_calls(&text);
                let total = text
                    .lines()
                    .find_map(|l| l.strip_prefix("totals: "))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(0);
                all += total;
                let is_writer = text.lines().any(|l| {
                    l.starts_with("fn=") && l.ends_with("switchback_proxy::access_log::write_loop")
                });
                if is_writer {
                    writer += total;
                }
            }
        }
        totals.push((all, all - writer, allocs));
    }
    let per = |a: u64, b: u64| (b as f64 - a as f64) / (many - few) as f64;
    (
        per(totals[0].0, totals[1].0),
        per(totals[0].1, totals[1].1),
        per(totals[0].2, totals[1].2),
    )
}

/// Heap allocations in a callgrind profile: calls into the allocators' entry points (glibc's
/// malloc family, and mimalloc's, which switchback and the floor use) from outside the
/// allocators.
fn allocation_calls(profile: &str) -> u64 {
    const ENTRIES: [&str; 10] = [
        "malloc",
        "calloc",
        "realloc",
        "mi_malloc",
        "mi_zalloc",
        "mi_calloc",
        "mi_realloc",
        "mi_malloc_aligned",
        "mi_zalloc_aligned",
        "mi_realloc_aligned",
    ];
    let (mut caller, mut callee) = ("", "");
    let mut calls = 0;
    for line in profile.lines() {
        if let Some(name) = line.strip_prefix("fn=") {
            caller = name.trim();
        } else if let Some(name) = line.strip_prefix("cfn=") {
            callee = name.trim();
        } else if let Some(rest) = line.strip_prefix("calls=") {
            let inside = caller.starts_with("mi_") || caller.starts_with("_mi_");
            if !inside && ENTRIES.contains(&callee) {
                calls += rest
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    calls
}

fn nginx_bin() -> &'static str {
    if Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    }
}

fn haproxy_bin() -> &'static str {
    if Path::new("/usr/sbin/haproxy").exists() {
        "/usr/sbin/haproxy"
    } else {
        "haproxy"
    }
}

/// An nginx config with one worker, everything under `dir`, and `http` inside the http block.
fn nginx_conf(dir: &Path, http: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let d = dir.display();
    let user = if is_root() { "user root;\n" } else { "" };
    let conf = format!(
        "{user}worker_processes {threads};\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fastcgi;\n\
           uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n  keepalive_requests 1000000;\n{http}\n}}\n",
        threads = threads(),
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    path
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

#[derive(Debug, Clone, Copy, Default)]
struct WrkResult {
    rps: f64,
    p99_ms: f64,
    errors: u64,
    non_2xx: u64,
    requests: u64,
}

fn wrk(port: u16, seconds: u64, connections: usize) -> WrkResult {
    wrk_url(
        &format!("http://127.0.0.1:{port}/"),
        seconds,
        connections,
        false,
    )
}

/// wrk against `url`; with `close`, every request on a new connection (for TLS: a new
/// handshake).
fn wrk_url(url: &str, seconds: u64, connections: usize, close: bool) -> WrkResult {
    let headers: &[&str] = if close { &["Connection: close"] } else { &[] };
    wrk_headers(url, seconds, connections, headers)
}

/// wrk against `url`, sending `headers` with every request.
fn wrk_headers(url: &str, seconds: u64, connections: usize, headers: &[&str]) -> WrkResult {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t1",
        &format!("-c{connections}"),
        &format!("-d{seconds}s"),
        "--latency",
    ]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd.arg(url).output().expect("run wrk");
    parse_wrk(&String::from_utf8_lossy(&out.stdout))
}

fn parse_wrk(text: &str) -> WrkResult {
    let mut r = WrkResult::default();
    for line in text.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            r.rps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = t.strip_prefix("99%") {
            r.p99_ms = parse_latency(v.trim());
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            r.non_2xx = v.trim().parse().unwrap_or(0);
        } else if let Some(v) = t.strip_prefix("Socket errors:") {
            r.errors = v
                .split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum();
        } else if t.contains("requests in") {
            r.requests = t
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        }
    }
    r
}

fn parse_latency(v: &str) -> f64 {
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
    let n: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        _ => f64::NAN,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return f64::NAN;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// switchback as shipped (metrics on, the access log on: to its stdout, a file here), the floor,
/// nginx, HAProxy and switchback on pingora's HTTP/1 path (`server.http1 = "pingora"`), started
/// side by side: the processes (stopped on drop), and each one's name and URL for `path`.
fn start_peers(bench: &Bench, path: &str) -> (Vec<Proc>, Vec<(&'static str, String)>) {
    let url = |port: u16| format!("http://127.0.0.1:{port}{path}");
    let (sb_port, fl_port, ng_port, hp_port) = (free_port(), free_port(), free_port(), free_port());
    let sp_port = free_port();
    let (sp_cmd, _) = bench.switchback_cmd_server(sp_port, "http1 = \"pingora\"", "", true);
    let procs = vec![
        bench.switchback_with(sb_port, "").0,
        bench.floor(fl_port),
        bench.nginx(ng_port),
        bench.haproxy(hp_port),
        start("switchback-pingora", sp_cmd, sp_port, &bench.dir),
    ];
    let targets = vec![
        ("switchback", url(sb_port)),
        ("floor", url(fl_port)),
        ("nginx", url(ng_port)),
        ("haproxy", url(hp_port)),
        ("switchback-pingora", url(sp_port)),
    ];
    (procs, targets)
}

/// With SWITCHBACK_BASELINE, that build too, on the same config: a change's price.
fn add_baseline(
    bench: &Bench,
    path: &str,
    procs: &mut Vec<Proc>,
    targets: &mut Vec<(&'static str, String)>,
) {
    let port = free_port();
    if let Some(cmd) = bench.baseline_cmd(port, "", true) {
        procs.push(start("baseline", cmd, port, &bench.dir));
        targets.push(("baseline", format!("http://127.0.0.1:{port}{path}")));
    }
}

fn http(bench: &Bench, o: &Options) {
    let (mut procs, mut targets) = start_peers(bench, "/");
    let ff_port = free_port();
    procs.push(start(
        "floor-forwarding",
        bench.floor_forwarding_cmd(ff_port),
        ff_port,
        &bench.dir,
    ));
    targets.push(("floor-forwarding", format!("http://127.0.0.1:{ff_port}/")));
    // The work nginx and HAProxy do here: no access log (theirs is off), no metrics.
    let quiet_port = free_port();
    procs.push(
        bench
            .switchback_with(
                quiet_port,
                "[access_log]\nenabled = false\n[metrics]\nenabled = false\n",
            )
            .0,
    );
    targets.push((
        "switchback-quiet",
        format!("http://127.0.0.1:{quiet_port}/"),
    ));
    add_baseline(bench, "/", &mut procs, &mut targets);
    compare(
        &format!(
            "http: keep-alive GET through each proxy, {} worker thread(s) each, wrk -t1 -c{} -d{}s, {} rounds; switchback with its default config (metrics and access log on), switchback-quiet with both off (nginx and HAProxy log nothing here)",
            threads(),
            o.connections,
            o.seconds,
            o.rounds
        ),
        &targets,
        o,
        false,
    );
    backend_connections(bench, o);
}

/// The upstream's `/large`: a 1 MiB answer.
fn large_file(dir: &Path) -> PathBuf {
    let path = dir.join("large.bin");
    let bytes: Vec<u8> = (0..LARGE).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, bytes).unwrap();
    path
}

const LARGE: usize = 1 << 20;

/// 1 MiB answers over keep-alive connections: requests per second times 1 MiB is the bytes per
/// second each proxy moves, for switchback on both HTTP/1 paths, the floor, nginx and HAProxy.
fn large(bench: &Bench, o: &Options) {
    let (mut procs, mut targets) = start_peers(bench, "/large");
    add_baseline(bench, "/large", &mut procs, &mut targets);
    let connections = o.connections.min(8);
    compare(
        &format!(
            "large: keep-alive GET of a 1 MiB answer, {} worker thread(s) each, wrk -t1 -c{connections} -d{}s, {} rounds (MiB/s = req/s)",
            threads(),
            o.seconds,
            o.rounds
        ),
        &targets,
        &Options {
            scenarios: Vec::new(),
            connections,
            ..*o
        },
        false,
    );
}

/// TCP connections this machine opened so far (`Tcp: ActiveOpens` in /proc/net/snmp).
fn active_opens() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").expect("read /proc/net/snmp");
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (Some(names), Some(values)) = (tcp.next(), tcp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "ActiveOpens")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// Requests/s, p99 and backend connections opened at 64, 256 and 1000 keep-alive clients, for
/// switchback on both HTTP/1 paths, nginx (`keepalive 1024`: switchback's default idle cap)
/// and HAProxy. A proxy that keeps too few idle backend connections opens one for most
/// requests once more clients are in flight than it keeps.
fn backend_connections(bench: &Bench, o: &Options) {
    let (sb_port, sp_port, ng_port, hp_port) = (free_port(), free_port(), free_port(), free_port());
    let (_sb, _) = bench.switchback_with(sb_port, "");
    let (sp_cmd, _) = bench.switchback_cmd_server(sp_port, "http1 = \"pingora\"", "", false);
    let _sp = start("switchback-pingora", sp_cmd, sp_port, &bench.dir);
    let dir = bench.dir.join(format!("nginx-{ng_port}"));
    let conf = nginx_conf(
        &dir,
        &format!(
            "upstream app {{ server 127.0.0.1:{}; keepalive 1024; }}\n\
             server {{ listen 127.0.0.1:{ng_port} backlog=4096; access_log off;\n\
               location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\";\n\
                 proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; proxy_set_header X-Forwarded-Proto $scheme; }} }}",
            bench.upstream_blue
        ),
    );
    let mut ng_cmd = Command::new(nginx_bin());
    ng_cmd.args(["-e", "stderr", "-c"]).arg(&conf);
    let _ng = start("nginx-keepalive-1024", ng_cmd, ng_port, &bench.dir);
    let _hp = bench.haproxy(hp_port);
    let targets = [
        ("switchback", sb_port),
        ("switchback-pingora", sp_port),
        ("nginx", ng_port),
        ("haproxy", hp_port),
    ];
    println!(
        "\n== backend connections: keep-alive GET at 64, 256 and 1000 clients, {} worker thread(s) each, wrk -t1 -d{}s, {} rounds; backend connections opened per run (the machine's TCP ActiveOpens, less wrk's own)",
        threads(),
        o.seconds,
        o.rounds
    );
    println!(
        "{:<20} {:>8} {:>14} {:>12} {:>16}",
        "proxy", "clients", "median req/s", "median p99", "median opened"
    );
    for clients in [64usize, 256, 1000] {
        for (_, port) in &targets {
            wrk(*port, 1, clients); // warm up: the pools fill
        }
        let mut runs: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); targets.len()];
        for round in 0..o.rounds {
            let mut order: Vec<usize> = (0..targets.len()).collect();
            order.rotate_left(round % targets.len());
            for i in order {
                let before = active_opens();
                let r = wrk(targets[i].1, o.seconds, clients);
                let opened = active_opens()
                    .saturating_sub(before)
                    .saturating_sub(clients as u64);
                runs[i].push((r.rps, r.p99_ms, opened as f64));
            }
        }
        for ((name, _), r) in targets.iter().zip(&runs) {
            println!(
                "{:<20} {:>8} {:>14.0} {:>10.2}ms {:>16.0}",
                name,
                clients,
                median(r.iter().map(|x| x.0).collect()),
                median(r.iter().map(|x| x.1).collect()),
                median(r.iter().map(|x| x.2).collect()),
            );
        }
    }
}

/// Runs wrk against each target in alternating rounds and prints per-round numbers, medians,
/// and the median of the same-round ratios of the first target (switchback) to each other one;
/// when the second target is the floor, of the floor to the ones after it too.
fn compare(title: &str, targets: &[(&str, String)], o: &Options, close: bool) {
    println!("\n== {title}");
    for (_, url) in targets {
        wrk_url(url, 1, o.connections, close); // warm up
    }
    let mut results: Vec<Vec<WrkResult>> = vec![Vec::new(); targets.len()];
    for round in 0..o.rounds {
        // Alternate the order so no proxy always runs first or last.
        let mut order: Vec<usize> = (0..targets.len()).collect();
        order.rotate_left(round % targets.len());
        for i in order {
            results[i].push(wrk_url(&targets[i].1, o.seconds, o.connections, close));
        }
        let line: Vec<String> = targets
            .iter()
            .zip(&results)
            .map(|((name, _), r)| {
                let r = r.last().unwrap();
                format!("{name} {:.0} req/s p99 {:.2}ms", r.rps, r.p99_ms)
            })
            .collect();
        println!("round {}: {}", round + 1, line.join(" | "));
    }
    let width = targets
        .iter()
        .map(|(n, _)| n.len())
        .max()
        .unwrap_or(0)
        .max(12);
    println!(
        "\n{:<width$} {:>14} {:>12} {:>8}",
        "proxy", "median req/s", "median p99", "errors"
    );
    for ((name, _), r) in targets.iter().zip(&results) {
        println!(
            "{:<width$} {:>14.0} {:>10.2}ms {:>8}",
            name,
            median(r.iter().map(|x| x.rps).collect()),
            median(r.iter().map(|x| x.p99_ms).collect()),
            r.iter().map(|x| x.errors + x.non_2xx).sum::<u64>()
        );
    }
    let bases = if targets.get(1).is_some_and(|(n, _)| *n == "floor") {
        2
    } else {
        1
    };
    // switchback doing what the peers do here (no access log, no metrics), against them.
    let quiet = targets
        .iter()
        .position(|(n, _)| *n == "switchback-quiet")
        .map(|q| (q, ["nginx", "haproxy"]));
    let pairs = (0..bases)
        .flat_map(|base| (base + 1..targets.len()).map(move |i| (base, i)))
        .chain(quiet.into_iter().flat_map(|(q, peers)| {
            peers
                .into_iter()
                .filter_map(|p| targets.iter().position(|(n, _)| *n == p))
                .map(move |i| (q, i))
        }));
    for (base, i) in pairs {
        let peer = targets[i].0;
        let rps: Vec<f64> = (0..o.rounds)
            .map(|k| results[base][k].rps / results[i][k].rps)
            .collect();
        let p99: Vec<f64> = (0..o.rounds)
            .map(|k| results[base][k].p99_ms / results[i][k].p99_ms)
            .collect();
        println!(
            "{} / {peer}: req/s x{:.3} (median of same-round ratios; >1 is better), p99 x{:.2} (<1 is better)",
            targets[base].0,
            median(rps),
            median(p99)
        );
    }
}

/// HTTPS: keep-alive requests per second, and new TLS handshakes per second (one request per
/// connection), for switchback, nginx and HAProxy with the same certificate (ECDSA P-256) and
/// upstream, one worker thread each.
fn https(bench: &Bench, o: &Options) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["bench.switchback.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_path, key_path, combined) = (
        bench.dir.join("tls-cert.pem"),
        bench.dir.join("tls-key.pem"),
        bench.dir.join("tls-combined.pem"),
    );
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    std::fs::write(&combined, format!("{}{}", cert.pem(), key.serialize_pem())).unwrap();

    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let (sb, ng, hp) = (ports[0], ports[1], ports[2]);
    let dir = bench.dir.join("switchback-tls");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("switchback.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\nhttp = [\"127.0.0.1:{}\"]\nhttps = [\"127.0.0.1:{}\"]\n[server]\nthreads = 1\n[control]\nsocket = \"{}\"\n[state]\ndir = \"{}\"\n\
             [access_log]\nenabled = false\n[services.app]\nactive = \"blue\"\npools.blue = [\"127.0.0.1:{}\"]\n\
             tls = {{ cert = \"{}\", key = \"{}\" }}\n",
            sb.0,
            sb.1,
            dir.join("control.sock").display(),
            dir.join("state").display(),
            bench.upstream_blue,
            cert_path.display(),
            key_path.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn");
    let _sb = start("switchback-tls", cmd, sb.0, &bench.dir);

    let nginx_dir = bench.dir.join("nginx-tls");
    let conf = nginx_conf(
        &nginx_dir,
        &format!(
            "upstream app {{ server 127.0.0.1:{up}; keepalive 64; }}\n\
             server {{ listen 127.0.0.1:{plain}; listen 127.0.0.1:{tls} ssl; access_log off;\n\
               ssl_certificate {cert}; ssl_certificate_key {key}; ssl_protocols TLSv1.2 TLSv1.3;\n\
               location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\";\n\
                 proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; proxy_set_header X-Forwarded-Proto $scheme; }} }}",
            up = bench.upstream_blue,
            plain = ng.0,
            tls = ng.1,
            cert = cert_path.display(),
            key = key_path.display()
        ),
    );
    let mut cmd = Command::new(nginx_bin());
    cmd.args(["-e", "stderr", "-c"]).arg(&conf);
    let _ng = start("nginx-tls", cmd, ng.0, &bench.dir);

    let hconf = bench.dir.join("haproxy-tls.cfg");
    std::fs::write(
        &hconf,
        format!(
            "global\n  nbthread {threads}\n  maxconn 4096\n\
             defaults\n  mode http\n  timeout connect 3s\n  timeout client 60s\n  timeout server 60s\n  option http-keep-alive\n  option forwardfor\n  http-reuse always\n\
             frontend fe\n  bind 127.0.0.1:{}\n  bind 127.0.0.1:{} ssl crt {} alpn http/1.1\n  default_backend be\n\
             backend be\n  server s1 127.0.0.1:{}\n",
            hp.0,
            hp.1,
            combined.display(),
            bench.upstream_blue,
            threads = threads(),
        ),
    )
    .unwrap();
    let mut cmd = Command::new(haproxy_bin());
    cmd.arg("-db").arg("-f").arg(&hconf);
    let _hp = start("haproxy-tls", cmd, hp.0, &bench.dir);

    let url = |port: u16| format!("https://127.0.0.1:{port}/");
    let targets = [
        ("switchback", url(sb.1)),
        ("nginx", url(ng.1)),
        ("haproxy", url(hp.1)),
    ];
    compare(
        &format!(
            "https keep-alive: GET over TLS 1.3, {} worker thread(s) each, wrk -t1 -c{} -d{}s, {} rounds",
            threads(),
            o.connections,
            o.seconds,
            o.rounds
        ),
        &targets,
        o,
        false,
    );
    compare(
        &format!(
            "https handshakes: a new TLS connection per request (Connection: close), {} worker thread(s) each, wrk -t1 -c{} -d{}s, {} rounds",
            threads(),
            o.connections,
            o.seconds,
            o.rounds
        ),
        &targets,
        o,
        true,
    );
}

/// The cost of recording: metrics and the access log on, against both off.
/// Alternating wrk rounds against two proxies (`a` first in even rounds, `b` first in odd
/// ones), each sending `headers`; prints every round and the medians, and returns the median
/// same-round ratio of a to b.
fn alternate(names: (&str, &str), ports: (u16, u16), headers: &[&str], o: &Options) -> f64 {
    alternate_on(names, ports, "/", headers, o)
}

/// [`alternate`] on `path`.
fn alternate_on(
    names: (&str, &str),
    ports: (u16, u16),
    path: &str,
    headers: &[&str],
    o: &Options,
) -> f64 {
    let run = |port: u16, seconds: u64| {
        wrk_headers(
            &format!("http://127.0.0.1:{port}{path}"),
            seconds,
            o.connections,
            headers,
        )
    };
    run(ports.0, 1);
    run(ports.1, 1);
    let mut ratios = Vec::new();
    let (mut a_rps, mut b_rps) = (Vec::new(), Vec::new());
    for round in 0..o.rounds {
        let (a, b) = if round % 2 == 0 {
            let a = run(ports.0, o.seconds);
            (a, run(ports.1, o.seconds))
        } else {
            let b = run(ports.1, o.seconds);
            (run(ports.0, o.seconds), b)
        };
        println!(
            "round {}: {} {:.0} req/s p99 {:.2}ms | {} {:.0} req/s p99 {:.2}ms | {}/{} x{:.3}",
            round + 1,
            names.0,
            a.rps,
            a.p99_ms,
            names.1,
            b.rps,
            b.p99_ms,
            names.0,
            names.1,
            a.rps / b.rps
        );
        assert_eq!(
            a.errors + a.non_2xx + b.errors + b.non_2xx,
            0,
            "failed requests"
        );
        ratios.push(a.rps / b.rps);
        a_rps.push(a.rps);
        b_rps.push(b.rps);
    }
    let ratio = median(ratios);
    println!(
        "median req/s: {} {:.0}, {} {:.0}; median same-round {}/{} x{ratio:.3} (cost {:+.1}%)",
        names.0,
        median(a_rps),
        names.1,
        median(b_rps),
        names.0,
        names.1,
        (1.0 - ratio) * 100.0
    );
    ratio
}

fn observability(bench: &Bench, o: &Options) {
    let (on_port, off_port) = (free_port(), free_port());
    let log = bench.dir.join("access.log");
    let (_on, _) = bench.switchback_with(
        on_port,
        &format!(
            "[access_log]\npath = \"{}\"\n[metrics]\nenabled = true\n",
            log.display()
        ),
    );
    let (_off, _) = bench.switchback_with(
        off_port,
        "[access_log]\nenabled = false\n[metrics]\nenabled = false\n",
    );
    println!(
        "\n== observability: switchback with metrics + JSON access log to a file, against both off; wrk -t1 -c{} -d{}s, {} rounds",
        o.connections, o.seconds, o.rounds
    );
    alternate(("on", "off"), (on_port, off_port), &[], o);
    let lines = std::fs::read_to_string(&log)
        .map(|t| t.lines().count())
        .unwrap_or(0);
    println!("{lines} access log lines written");
}

/// Sets a canary through the control socket of a running switchback.
/// Waits until the proxy behind `socket` has a request in flight (wrk's load has reached it),
/// for at most 10 s.
fn wait_for_load(socket: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = Command::new(BIN)
            .arg("--socket")
            .arg(socket)
            .args(["status", "--json"])
            .output()
            .unwrap();
        let in_flight: u64 = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .flat_map(|v| v["services"].as_array().cloned().unwrap_or_default())
            .flat_map(|s| s["pools"].as_array().cloned().unwrap_or_default())
            .filter_map(|p| p["in_flight"].as_u64())
            .sum();
        if in_flight > 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no load reached the proxy within 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn set_canary(socket: &Path, pool: &str, percent: &str) {
    let ok = Command::new(BIN)
        .arg("--socket")
        .arg(socket)
        .args(["canary", pool, percent])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success(), "canary {pool} {percent} failed");
}

/// The `Cookie` header of a client that comes back to the 10% canary of the proxy on `port`:
/// a bucket cookie that proxy signed, for a bucket below 100. New clients are sent one until
/// one lands there. The signing key is kept in the state dir, so a new process on the same dir
/// takes the cookie too.
fn canary_client(port: u16) -> String {
    for _ in 0..1000 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        let cookie = answer
            .lines()
            .find_map(|l| {
                l.get(..11)
                    .filter(|n| n.eq_ignore_ascii_case("set-cookie:"))
                    .map(|_| l[11..].trim())
            })
            .and_then(|v| v.split(';').next())
            .unwrap_or_else(|| panic!("no bucket cookie in the canary's answer:\n{answer}"));
        let bucket = cookie
            .split_once('=')
            .and_then(|(_, v)| v.split_once('.'))
            .and_then(|(b, _)| b.parse::<u32>().ok());
        if bucket.is_some_and(|b| b < 100) {
            return format!("Cookie: {cookie}");
        }
    }
    panic!("no new client of 1000 got a canary bucket");
}

fn canary(bench: &Bench, o: &Options) {
    let (canary_port, plain_port) = (free_port(), free_port());
    let (_canary, socket) = bench.switchback(canary_port);
    let (_plain, _) = bench.switchback(plain_port);
    set_canary(&socket, "green", "10");
    let client = canary_client(canary_port);
    println!(
        "\n== canary: switchback with a 10% canary (clients with a bucket cookie) against a plain active pool; wrk -t1 -c{} -d{}s, {} rounds",
        o.connections, o.seconds, o.rounds
    );
    alternate(
        ("canary", "plain"),
        (canary_port, plain_port),
        &[client.as_str()],
        o,
    );
}

/// Work per request, counted in instructions under callgrind: stable on a noisy machine where
/// requests per second are not.
fn instructions(bench: &Bench) {
    let ok = Command::new("valgrind")
        .arg("--version")
        .stdout(Stdio::null())
        .status();
    assert!(
        ok.is_ok_and(|s| s.success()),
        "valgrind is missing: apt-get install -y valgrind"
    );
    println!("\n== instructions: user-space instructions per keep-alive request under callgrind (one connection, 1000 vs 3000 requests)");
    let dir = bench.dir.join("callgrind");
    std::fs::create_dir_all(&dir).unwrap();
    // (name, command, port, request headers)
    let mut variants: Vec<(&str, Command, u16, String)> = vec![
        {
            let port = free_port();
            let (cmd, _) = bench.switchback_cmd(
                port,
                "[access_log]\nenabled = false\n[metrics]\nenabled = false\n",
                false,
            );
            ("switchback-bare", cmd, port, String::new())
        },
        {
            let port = free_port();
            let (cmd, _) = bench.switchback_cmd(port, "[access_log]\nenabled = false\n", false);
            ("switchback-metrics", cmd, port, String::new())
        },
        {
            let port = free_port();
            let log = dir.join("access.log");
            let (cmd, _) = bench.switchback_cmd(
                port,
                &format!("[access_log]\npath = \"{}\"\n", log.display()),
                false,
            );
            ("switchback-metrics-log", cmd, port, String::new())
        },
        {
            let port = free_port();
            let (cmd, _) = bench.switchback_cmd(port, "", false);
            ("switchback-default", cmd, port, String::new())
        },
        {
            // One allow list and one rate limit on the whole service, which every request
            // passes (the rate is far above what the run sends).
            let port = free_port();
            let (cmd, _) = bench.switchback_cmd(
                port,
                "[access_log]\nenabled = false\n\
                 [[services.app.access]]\nallow = [\"127.0.0.0/8\", \"::1\"]\nrate = { limit = \"1000000/s\", burst = 1000000 }\n",
                false,
            );
            ("switchback-access", cmd, port, String::new())
        },
        {
            let port = free_port();
            let (cmd, _) = bench.switchback_cmd_server(port, "http1 = \"pingora\"", "", false);
            ("switchback-pingora", cmd, port, String::new())
        },
        {
            let port = free_port();
            ("floor", bench.floor_cmd(port), port, String::new())
        },
        {
            let port = free_port();
            let cmd = bench.floor_forwarding_cmd(port);
            ("floor-forwarding", cmd, port, String::new())
        },
        {
            let port = free_port();
            ("nginx", bench.nginx_cmd(port), port, String::new())
        },
        {
            let port = free_port();
            ("haproxy", bench.haproxy_cmd(port), port, String::new())
        },
    ];
    // The canary variants: a returning client (its signed bucket cookie) with and without a
    // 10% canary, and new clients (no cookie: a bucket drawn and a Set-Cookie sent each time).
    // The canary is set once through the control socket and restored from the state dir by
    // the measured runs, which also keep the key that signed the cookie.
    let with_canary = |name: &str, port: u16, learn_cookie: bool| {
        let (cmd, socket) = bench.switchback_cmd(port, "[access_log]\nenabled = false\n", false);
        let mut p = start(name, cmd, port, &dir);
        set_canary(&socket, "green", "10");
        let cookie = learn_cookie.then(|| canary_client(port));
        let _ = Command::new("kill")
            .args(["-INT", &p.child.id().to_string()])
            .status();
        let _ = p.child.wait();
        let cmd = bench
            .switchback_cmd(port, "[access_log]\nenabled = false\n", false)
            .0;
        (cmd, cookie)
    };
    let canary_port = free_port();
    let (canary_cmd, cookie) = with_canary("switchback-canary-cookie", canary_port, true);
    let cookie = format!("{}\r\n", cookie.expect("a canary client's cookie"));
    let plain_port = free_port();
    let (plain_cmd, _) = bench.switchback_cmd(plain_port, "[access_log]\nenabled = false\n", false);
    variants.push((
        "switchback-plain-cookie",
        plain_cmd,
        plain_port,
        cookie.clone(),
    ));
    variants.push(("switchback-canary-cookie", canary_cmd, canary_port, cookie));
    let new_port = free_port();
    let (new_cmd, _) = with_canary("switchback-canary-new", new_port, false);
    variants.push(("switchback-canary-new", new_cmd, new_port, String::new()));
    // Another build of switchback (SWITCHBACK_BASELINE=/path/to/switchback, say the commit
    // before a change) on the default config, to price a change in the same run.
    let port = free_port();
    let other = bench.baseline_cmd(port, "", false);
    let baseline = other.is_some();
    if let Some(other) = other {
        variants.push(("baseline-default", other, port, String::new()));
    }
    // SWITCHBACK_BENCH_ONLY=switchback-metrics,switchback-access measures only those (and
    // prints no ratios), for a quick look at one change.
    let only: Option<Vec<String>> = std::env::var("SWITCHBACK_BENCH_ONLY")
        .ok()
        .map(|v| v.split(',').map(str::to_string).collect());
    let mut results = Vec::new();
    for (name, cmd, port, headers) in &variants {
        if only.as_ref().is_some_and(|o| !o.iter().any(|n| n == name)) {
            continue;
        }
        let (all, request_path, allocs) =
            instructions_per_request(name, cmd, *port, dir.as_path(), headers);
        if (all - request_path).abs() > 1.0 {
            println!("{name:<24} {all:>10.0} instructions/request ({request_path:.0} outside the access-log writer thread), {allocs:.2} heap allocations/request");
        } else {
            println!(
                "{name:<24} {all:>10.0} instructions/request, {allocs:.2} heap allocations/request"
            );
        }
        results.push((*name, all, request_path));
    }
    if only.is_some() {
        return;
    }
    let get = |n: &str| {
        results
            .iter()
            .find(|(k, _, _)| *k == n)
            .map(|(_, a, r)| (*a, *r))
            .unwrap()
    };
    if baseline {
        let (now, then) = (get("switchback-default"), get("baseline-default"));
        println!(
            "switchback-default / baseline-default x{:.4} on the request path, x{:.4} with the writer thread ({:+.0} instructions per request on the request path)",
            now.1 / then.1,
            now.0 / then.0,
            now.1 - then.1
        );
    }
    let bare = get("switchback-bare").0;
    println!(
        "recording cost: metrics {:+.1}%; metrics + access log {:+.1}% on the request path, {:+.1}% with the writer thread (against switchback-bare)",
        (get("switchback-metrics").0 / bare - 1.0) * 100.0,
        (get("switchback-metrics-log").1 / bare - 1.0) * 100.0,
        (get("switchback-metrics-log").0 / bare - 1.0) * 100.0
    );
    println!(
        "access rules cost: one allow list and one rate limit {:+.1}% (against switchback-metrics)",
        (get("switchback-access").0 / get("switchback-metrics").0 - 1.0) * 100.0
    );
    println!(
        "canary cost: 10% canary {:+.1}% for a client with its cookie (against the same client on a plain pool); {:+.1}% for a new client (bucket drawn, cookie set; against switchback-metrics)",
        (get("switchback-canary-cookie").0 / get("switchback-plain-cookie").0 - 1.0) * 100.0,
        (get("switchback-canary-new").0 / get("switchback-metrics").0 - 1.0) * 100.0
    );
    println!(
        "switchback (default config: metrics and access log on) / floor x{:.3} on the request path, x{:.3} with the writer thread (instructions per request; <1 is less work)",
        get("switchback-default").1 / get("floor").0,
        get("switchback-default").0 / get("floor").0,
    );
    println!(
        "switchback (default config) / floor-forwarding x{:.3} on the request path (what switchback does beyond writing the forwarding headers; the floor pays {:+.0} instructions per request for them)",
        get("switchback-default").1 / get("floor-forwarding").0,
        get("floor-forwarding").0 - get("floor").0,
    );
    println!(
        "switchback (metrics on) / nginx x{:.2}, / haproxy x{:.2} (instructions per request; <1 is less work)",
        get("switchback-metrics").0 / get("nginx").0,
        get("switchback-metrics").0 / get("haproxy").0
    );
}

fn switch(bench: &Bench, o: &Options) {
    let port = free_port();
    let (_sb, socket) = bench.switchback(port);
    println!(
        "\n== switch: 100 switches (blue -> green -> blue ...) under wrk -t1 -c{} load",
        o.connections
    );
    let seconds = 10;
    let load = std::thread::spawn({
        let c = o.connections;
        move || wrk(port, seconds, c)
    });
    wait_for_load(&socket);
    let started = Instant::now();
    let mut switches = 0;
    for i in 0..100 {
        let pool = if i % 2 == 0 { "green" } else { "blue" };
        let status = Command::new(BIN)
            .arg("--socket")
            .arg(&socket)
            .args(["switch", pool])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "switch {i} failed");
        switches += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = started.elapsed();
    let r = load.join().unwrap();
    println!(
        "{switches} switches in {:.1}s while serving {} requests ({:.0} req/s): {} socket errors, {} non-2xx responses",
        took.as_secs_f64(),
        r.requests,
        r.rps,
        r.errors,
        r.non_2xx
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--floor") {
        let port = |i: usize| -> u16 {
            args.get(i)
                .and_then(|p| p.parse().ok())
                .expect("--floor PORT UPSTREAM_PORT [--forwarding]")
        };
        floor::run(
            port(2),
            port(3),
            args.get(4).is_some_and(|a| a == "--forwarding"),
        );
        return;
    }
    let o = options();
    let bench = Bench::new();
    for s in &o.scenarios {
        match s.as_str() {
            "http" => http(&bench, &o),
            "switch" => switch(&bench, &o),
            "observability" => observability(&bench, &o),
            "canary" => canary(&bench, &o),
            "instructions" => instructions(&bench),
            "https" => https(&bench, &o),
            "memory" => memory::memory(&bench, &o),
            "retry" => retry::retry(&bench, &o),
            "reload" => reload::reload(&bench, &o),
            "shaping" => shaping::shaping(&bench, &o),
            "fleet" => fleet::fleet(&bench, &o),
            "backends" => backend_connections(&bench, &o),
            "large" => large(&bench, &o),
            other => panic!(
                "unknown scenario {other} (http, backends, large, https, switch, observability, canary, instructions, memory, retry, reload, shaping, fleet)"
            ),
        }
    }
}
