//! `retry`: failed requests when a backend fails under requests, switchback beside nginx (its
//! default `proxy_next_upstream error timeout`), on the same backends, in alternating rounds:
//! - `killed`: 20 slow GETs over fresh connections, spread over two backends; one backend is
//!   killed with SIGKILL while they are in flight;
//! - `idle close`: a backend that closes keep-alive connections idle for 100 ms (as gunicorn
//!   does after its `keepalive`); one client sends 200 GETs on one connection, 80 to 120 ms
//!   apart, so the proxy's connection to the backend is reused as it closes.
//!
//! With `SWITCHBACK_BASELINE=/path/to/switchback`, that build runs beside them as `baseline`.
//!
//! The backends are tests/support/backend.py, in processes of their own (python3).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{nginx_bin, nginx_conf, read_answer, spawn, wait_http, Bench, Options, Proc, BIN};

/// A Python backend, killed on drop.
pub(super) struct Backend {
    child: Child,
    pub(super) port: u16,
    /// Requests it received.
    seen: Arc<AtomicU64>,
}

impl Backend {
    pub(super) fn start(name: &str, idle: Option<f64>) -> Backend {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/backend.py");
        let mut cmd = Command::new("python3");
        cmd.arg(script).arg(name);
        if let Some(idle) = idle {
            cmd.arg(idle.to_string());
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 (Debian: python3)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().expect("a first line").unwrap();
        let port = first
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("backend.py said {first:?}"));
        let seen = Arc::new(AtomicU64::new(0));
        let count = seen.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if line.starts_with("request ") {
                    count.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        Backend { child, port, seen }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A switchback config in `dir`: one worker on `port`, no access log, one service whose blue
/// pool is `backends`, in order, with no health check. Returns its path.
pub(super) fn switchback_config(dir: &Path, port: u16, backends: &[u16]) -> PathBuf {
    let list: Vec<String> = backends
        .iter()
        .map(|p| format!("\"127.0.0.1:{p}\""))
        .collect();
    let config = dir.join("switchback.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\nhttp = [\"127.0.0.1:{port}\"]\n[server]\nthreads = 1\n[control]\nsocket = \"{}\"\n[state]\ndir = \"{}\"\n\
             [access_log]\nenabled = false\n[services.app]\nactive = \"blue\"\npools.blue = [{}]\n",
            dir.join("control.sock").display(),
            dir.join("state").display(),
            list.join(", ")
        ),
    )
    .unwrap();
    config
}

/// The proxy `name` ("switchback", "baseline" or "nginx") on `port` in front of `backends`.
fn proxy(bench: &Bench, name: &str, port: u16, backends: &[u16]) -> Proc {
    let dir = bench.dir.join(format!("retry-{name}-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut p = match name {
        "switchback" | "baseline" => {
            let config = switchback_config(&dir, port, backends);
            let bin = match name {
                "baseline" => std::env::var("SWITCHBACK_BASELINE").expect("SWITCHBACK_BASELINE"),
                _ => BIN.to_string(),
            };
            let mut cmd = Command::new(bin);
            cmd.args(["run", "--config"])
                .arg(&config)
                .env("RUST_LOG", "error");
            spawn(name, &mut cmd, &dir.join("log"))
        }
        _ => {
            let servers: String = backends
                .iter()
                .map(|p| format!("server 127.0.0.1:{p};"))
                .collect();
            let conf = nginx_conf(
                &dir,
                &format!(
                    "upstream app {{ {servers} keepalive 16; }}\n\
                     server {{ listen 127.0.0.1:{port}; access_log off;\n\
                       location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}"
                ),
            );
            let mut cmd = Command::new(nginx_bin());
            cmd.args(["-e", "stderr", "-c"]).arg(&conf);
            spawn("nginx", &mut cmd, &dir.join("log"))
        }
    };
    wait_http(&mut p, port, "/");
    p
}

/// The status of one GET on a new connection; 0 when no answer came.
fn get_once(port: u16, path: &str) -> u16 {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let req = format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return 0;
    }
    let mut line = String::new();
    let _ = BufReader::new(s).read_line(&mut line);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Failed GETs of 20 in flight when one of two backends is killed.
fn killed(bench: &Bench, name: &str) -> usize {
    let mut doomed = Backend::start("doomed", None);
    let other = Backend::start("other", None);
    let port = super::free_port();
    let _proxy = proxy(bench, name, port, &[doomed.port, other.port]);
    // The proxy's own readiness probe reached a backend: count from here.
    let before = doomed.seen.load(Ordering::SeqCst) + other.seen.load(Ordering::SeqCst);
    let clients: Vec<_> = (0..20)
        .map(|_| std::thread::spawn(move || get_once(port, "/slow?ms=1000")))
        .collect();
    let started = Instant::now();
    while doomed.seen.load(Ordering::SeqCst) + other.seen.load(Ordering::SeqCst) < before + 20 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the GETs never reached the backends"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    doomed.kill();
    clients
        .into_iter()
        .map(|c| c.join().unwrap())
        .filter(|s| *s != 200)
        .count()
}

/// Failed GETs of 200 on one keep-alive connection, spaced around the backend's idle close.
fn idle_close(bench: &Bench, name: &str) -> usize {
    let backend = Backend::start("idle", Some(0.1));
    let port = super::free_port();
    let _proxy = proxy(bench, name, port, &[backend.port]);
    let mut failed = 0;
    let mut conn: Option<(TcpStream, Vec<u8>)> = None;
    for i in 0..200u64 {
        std::thread::sleep(Duration::from_millis(80 + (i * 7) % 41));
        let (s, buf) = conn.get_or_insert_with(|| {
            let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            (s, Vec::new())
        });
        match keep_alive_get(s, buf) {
            Some(200) => {}
            Some(_) => failed += 1,
            None => {
                failed += 1;
                conn = None;
            }
        }
    }
    failed
}

/// One GET on a kept-alive connection: its status, or None when the connection failed.
fn keep_alive_get(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<u16> {
    s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n").ok()?;
    read_answer(s, buf)?.split_whitespace().nth(1)?.parse().ok()
}

pub fn retry(bench: &Bench, o: &Options) {
    let python = Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(python, "python3 is missing: apt-get install -y python3");
    let rounds = o.rounds.min(3);
    println!(
        "\n== retry: failed requests when a backend fails ({rounds} alternating rounds; nginx with its default proxy_next_upstream)"
    );
    let mut proxies = vec!["switchback", "nginx"];
    if std::env::var_os("SWITCHBACK_BASELINE").is_some() {
        proxies.push("baseline");
    }
    let mut totals = vec![(0usize, 0usize); proxies.len()];
    for round in 0..rounds {
        for (i, name) in proxies.iter().enumerate() {
            let k = killed(bench, name);
            let c = idle_close(bench, name);
            println!(
                "round {}: {name:<10} killed backend: {k:>2} of 20 failed   idle-closing backend: {c:>3} of 200 failed",
                round + 1
            );
            totals[i].0 += k;
            totals[i].1 += c;
        }
    }
    for (i, name) in proxies.iter().enumerate() {
        println!(
            "total   {name:<10} killed backend: {:>2} of {} failed   idle-closing backend: {:>3} of {} failed",
            totals[i].0,
            20 * rounds,
            totals[i].1,
            200 * rounds
        );
    }
}
