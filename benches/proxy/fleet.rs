//! `fleet`: how long a switch takes to reach a fleet. A real etcd (one member on loopback) and
//! three switchback nodes sharing it, under wrk on every node (kept-alive connections, and a
//! new connection per request). 50 switches (blue -> green -> blue ...), each through the next
//! node's socket in turn; for each, the time from the command's start until it returned (every
//! connected node acknowledged), and until every node answered from the new pool (seen by a
//! client polling each node on new connections). Then the failed requests of the whole run.
//!
//! `cargo bench --bench proxy -- fleet`

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::{median, spawn, wait_http, wrk_url, Bench, Options, Proc, BIN};

/// The pool that answers on `port` (the bench's upstreams answer their own name).
fn pool_at(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_nodelay(true).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let body = text.split_once("\r\n\r\n")?.1.trim();
    Some(body.to_string())
}

/// `switchback_open_connections` of a node's `/metrics`.
fn open_connections(admin: u16) -> Option<u64> {
    let mut s = TcpStream::connect(("127.0.0.1", admin)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("switchback_open_connections "))
        .and_then(|v| v.trim().parse().ok())
}

fn start_etcd(dir: &Path) -> (Proc, String) {
    let (client, peer) = (super::free_port(), super::free_port());
    let url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let mut cmd = Command::new("etcd");
    cmd.args(["--name", "bench"])
        .arg("--data-dir")
        .arg(dir.join("etcd"))
        .args(["--listen-client-urls", &url])
        .args(["--advertise-client-urls", &url])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("bench={peer_url}")]);
    let mut etcd = spawn("etcd", &mut cmd, &dir.join("etcd.log"));
    wait_http(&mut etcd, client, "/health");
    (etcd, url)
}

pub fn fleet(bench: &Bench, o: &Options) {
    let dir = bench.dir.join("fleet");
    std::fs::create_dir_all(&dir).unwrap();
    let (_etcd, url) = start_etcd(&dir);
    let key = dir.join("fleet.key");
    std::fs::write(&key, b"bench-fleet-key-0123456789abcdef-0123456789").unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let mut nodes = Vec::new();
    for n in 1..=3 {
        let (port, admin) = (super::free_port(), super::free_port());
        let d = dir.join(format!("node-{n}"));
        std::fs::create_dir_all(&d).unwrap();
        let config = d.join("switchback.toml");
        std::fs::write(
            &config,
            format!(
                "[listen]\nhttp = [\"127.0.0.1:{port}\"]\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n[server]\nthreads = 1\n[control]\nsocket = \"{d}/control.sock\"\n\
                 [state]\ndir = \"{d}/state\"\n[access_log]\nenabled = false\n\
                 [fleet]\netcd = [\"{url}\"]\nnode = \"node-{n}\"\nkey_file = \"{key}\"\n\
                 [services.app]\nactive = \"blue\"\npools.blue = [\"127.0.0.1:{}\"]\npools.green = [\"127.0.0.1:{}\"]\n",
                bench.upstream_blue,
                bench.upstream_green,
                d = d.display(),
                key = key.display(),
            ),
        )
        .unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "error");
        let mut p = spawn("switchback", &mut cmd, &d.join("log"));
        wait_http(&mut p, port, "/");
        nodes.push((p, port, d.join("control.sock"), admin));
    }
    let switches = 50;
    let seconds = o.seconds.max(15);
    println!(
        "\n== fleet: {switches} switches through 3 nodes sharing one etcd, under wrk -c8 (kept alive) and wrk -c2 (a new connection per request) on every node, {seconds} s, 1 worker each"
    );
    let loads: Vec<_> = nodes
        .iter()
        .flat_map(|(_, port, _, _)| {
            let url = format!("http://127.0.0.1:{port}/");
            let (a, b) = (url.clone(), url);
            [
                std::thread::spawn(move || wrk_url(&a, seconds, 8, false)),
                std::thread::spawn(move || wrk_url(&b, seconds, 2, true)),
            ]
        })
        .collect();
    // The switches start once every node has wrk's kept-alive connections open.
    let waiting = Instant::now();
    for (_, _, _, admin) in &nodes {
        while open_connections(*admin).unwrap_or(0) < 8 {
            assert!(
                waiting.elapsed() < Duration::from_secs(10),
                "wrk did not connect to every node"
            );
        }
    }
    let (mut returned, mut everywhere) = (Vec::new(), Vec::new());
    let run_started = Instant::now();
    for i in 0..switches {
        let pool = if i % 2 == 0 { "green" } else { "blue" };
        let socket = &nodes[i % 3].2;
        let start = Instant::now();
        let out = Command::new(BIN)
            .arg("--socket")
            .arg(socket)
            .args(["switch", pool])
            .output()
            .unwrap();
        let took = start.elapsed();
        assert!(
            out.status.success(),
            "switch {i} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Every node answers from the new pool: asked again until it does.
        for (_, port, _, _) in &nodes {
            while pool_at(*port).as_deref() != Some(pool) {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "node on {port} never served {pool}"
                );
            }
        }
        everywhere.push(start.elapsed().as_secs_f64() * 1000.0);
        returned.push(took.as_secs_f64() * 1000.0);
        // Spread over the load's time.
        let next =
            Duration::from_secs(seconds.saturating_sub(3)) * (i as u32 + 1) / switches as u32;
        if let Some(wait) = next.checked_sub(run_started.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    let (mut requests, mut failed) = (0, 0);
    for l in loads {
        let r = l.join().unwrap();
        requests += r.requests;
        failed += r.errors + r.non_2xx;
    }
    let max = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    println!(
        "command returned (every connected node acked): median {:.2} ms, max {:.2} ms",
        median(returned.clone()),
        max(&returned)
    );
    println!(
        "every node serving the new pool (a client's view): median {:.2} ms, max {:.2} ms",
        median(everywhere.clone()),
        max(&everywhere)
    );
    println!("requests during the run: {requests}, failed (socket errors and non-2xx): {failed}");
}
