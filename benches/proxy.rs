//! Load benchmarks: switchback beside nginx and HAProxy, on the same upstream and machine, one
//! worker thread each, measured by wrk in alternating rounds.
//!
//! `cargo bench --bench proxy -- [SCENARIO…] [--rounds N] [--seconds S] [--connections C]`
//!
//! Scenarios (all by default):
//! - `http`: keep-alive requests per second and p99 latency of each proxy, with the ratios of
//!   switchback to each peer measured in the same round, and their medians;
//! - `switch`: failed requests while switchback switches blue → green → blue 100 times under
//!   load.
//!
//! Needs wrk, nginx and haproxy (Debian packages `wrk nginx-light haproxy`). Everything listens
//! on 127.0.0.1. Machines are shared and noisy: read the medians and the same-round ratios, not
//! any single number.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_switchback");

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
            "--bench" => {}
            s if s.starts_with("--") => panic!("unknown option {s}"),
            s => o.scenarios.push(s.to_string()),
        }
    }
    if o.scenarios.is_empty() {
        o.scenarios = vec!["http".into(), "switch".into()];
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
    fn drop(&mut self) {
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
                "server {{ listen 127.0.0.1:{blue}; access_log off; location / {{ return 200 \"blue\\n\"; }} }}\n\
                 server {{ listen 127.0.0.1:{green}; access_log off; location / {{ return 200 \"green\\n\"; }} }}"
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
        let dir = self.dir.join(format!("switchback-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("control.sock");
        let config = dir.join("switchback.toml");
        std::fs::write(
            &config,
            format!(
                "[listen]\nhttp = [\"127.0.0.1:{port}\"]\n[server]\nthreads = 1\n[control]\nsocket = \"{}\"\n[state]\ndir = \"{}\"\n\
                 [services.app]\nactive = \"blue\"\npools.blue = [\"127.0.0.1:{}\"]\npools.green = [\"127.0.0.1:{}\"]\n\
                 health = {{ path = \"/\", interval = \"1s\" }}\n",
                socket.display(),
                dir.join("state").display(),
                self.upstream_blue,
                self.upstream_green
            ),
        )
        .unwrap();
        let mut p = spawn(
            "switchback",
            Command::new(BIN)
                .args(["run", "--config"])
                .arg(&config)
                .env("RUST_LOG", "warn"),
            &dir.join("switchback.log"),
        );
        wait_http(&mut p, port, "/");
        (p, socket)
    }

    fn nginx(&self, port: u16) -> Proc {
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
        let mut p = spawn(
            "nginx",
            Command::new(nginx_bin())
                .args(["-e", "stderr", "-c"])
                .arg(&conf),
            &self.dir.join(format!("nginx-{port}.log")),
        );
        wait_http(&mut p, port, "/");
        p
    }

    fn haproxy(&self, port: u16) -> Proc {
        let conf = self.dir.join(format!("haproxy-{port}.cfg"));
        std::fs::write(
            &conf,
            format!(
                "global\n  nbthread 1\n  maxconn 4096\n\
                 defaults\n  mode http\n  timeout connect 3s\n  timeout client 60s\n  timeout server 60s\n  option http-keep-alive\n  option forwardfor\n  http-reuse always\n\
                 frontend fe\n  bind 127.0.0.1:{port}\n  default_backend be\n\
                 backend be\n  server s1 127.0.0.1:{}\n",
                self.upstream_blue
            ),
        )
        .unwrap();
        let mut p = spawn(
            "haproxy",
            Command::new(haproxy_bin()).arg("-db").arg("-f").arg(&conf),
            &self.dir.join(format!("haproxy-{port}.log")),
        );
        wait_http(&mut p, port, "/");
        p
    }
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
        "{user}worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fastcgi;\n\
           uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n  keepalive_requests 1000000;\n{http}\n}}\n"
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
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
            &format!("http://127.0.0.1:{port}/"),
        ])
        .output()
        .expect("run wrk");
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

fn http(bench: &Bench, o: &Options) {
    let (sb_port, ng_port, hp_port) = (free_port(), free_port(), free_port());
    let (_sb, _) = bench.switchback(sb_port);
    let _ng = bench.nginx(ng_port);
    let _hp = bench.haproxy(hp_port);
    let proxies = [
        ("switchback", sb_port),
        ("nginx", ng_port),
        ("haproxy", hp_port),
    ];
    println!(
        "\n== http: keep-alive GET through each proxy, 1 worker thread each, wrk -t1 -c{} -d{}s, {} rounds",
        o.connections, o.seconds, o.rounds
    );
    for (_, port) in proxies {
        wrk(port, 1, o.connections); // warm up
    }
    let mut results: Vec<Vec<WrkResult>> = vec![Vec::new(); proxies.len()];
    for round in 0..o.rounds {
        // Alternate the order so no proxy always runs first or last.
        let mut order: Vec<usize> = (0..proxies.len()).collect();
        order.rotate_left(round % proxies.len());
        for i in order {
            results[i].push(wrk(proxies[i].1, o.seconds, o.connections));
        }
        let line: Vec<String> = proxies
            .iter()
            .zip(&results)
            .map(|((name, _), r)| {
                let r = r.last().unwrap();
                format!("{name} {:.0} req/s p99 {:.2}ms", r.rps, r.p99_ms)
            })
            .collect();
        println!("round {}: {}", round + 1, line.join(" | "));
    }
    println!(
        "\n{:<12} {:>14} {:>12} {:>8}",
        "proxy", "median req/s", "median p99", "errors"
    );
    for ((name, _), r) in proxies.iter().zip(&results) {
        println!(
            "{:<12} {:>14.0} {:>10.2}ms {:>8}",
            name,
            median(r.iter().map(|x| x.rps).collect()),
            median(r.iter().map(|x| x.p99_ms).collect()),
            r.iter().map(|x| x.errors + x.non_2xx).sum::<u64>()
        );
    }
    for (i, (peer, _)) in proxies.iter().enumerate().skip(1) {
        let rps: Vec<f64> = (0..o.rounds)
            .map(|k| results[0][k].rps / results[i][k].rps)
            .collect();
        let p99: Vec<f64> = (0..o.rounds)
            .map(|k| results[0][k].p99_ms / results[i][k].p99_ms)
            .collect();
        println!(
            "switchback / {peer}: req/s x{:.2} (median of same-round ratios; >1 is better), p99 x{:.2} (<1 is better)",
            median(rps),
            median(p99)
        );
    }
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
    std::thread::sleep(Duration::from_millis(500));
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
    let o = options();
    let bench = Bench::new();
    for s in &o.scenarios {
        match s.as_str() {
            "http" => http(&bench, &o),
            "switch" => switch(&bench, &o),
            other => panic!("unknown scenario {other} (http, switch)"),
        }
    }
}
