//! `memory`: what an idle client costs. For switchback, the engine's floor and nginx (one
//! worker each) in front of the same backend, in the same run: the growth of the proxy's
//! resident memory (its process tree's, for nginx) with N keep-alive connections that each
//! made one request and then stay idle, and with N open WebSockets through the proxy to a real
//! WebSocket backend (tests/support/backend.py, which echoes). Read 1 s after the last
//! connection settled, per connection.
//!
//! `cargo bench --bench proxy -- memory [--connections N]` (N: 1000 unless given more than the
//! default 32). With `SWITCHBACK_BASELINE=/path/to/switchback`, that build gets a row too.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use super::retry::{switchback_config, Backend};
use super::{nginx_bin, nginx_conf, read_answer, spawn, wait_http, Bench, Options, Proc, BIN};

/// `pid`'s tree's resident memory once it has stopped moving: the same in four readings
/// 50 ms apart (or whatever it is after 5 s).
fn settled_rss(pid: u32) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = tree_rss(pid);
    let mut same = 0;
    while same < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        let now = tree_rss(pid);
        same = if now == last { same + 1 } else { 0 };
        last = now;
    }
    last
}

/// Resident memory of `pid` and its descendants, in bytes.
fn tree_rss(pid: u32) -> u64 {
    let mut total = 0;
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        let status = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
        total += status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1024;
        for task in std::fs::read_dir(format!("/proc/{p}/task"))
            .into_iter()
            .flatten()
        {
            let Ok(task) = task else { continue };
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            stack.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok()),
            );
        }
    }
    total
}

/// The proxy `name` ("switchback", "floor", "nginx", or "baseline": SWITCHBACK_BASELINE, another
/// build of switchback, say one on a patched pingora) on `port` in front of `backend`.
fn proxy(bench: &Bench, name: &str, port: u16, backend: u16) -> Proc {
    let dir = bench.dir.join(format!("memory-{name}-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd = match name {
        "switchback" | "baseline" => {
            let config = switchback_config(&dir, port, &[backend]);
            let bin = match name {
                "baseline" => std::env::var("SWITCHBACK_BASELINE").expect("SWITCHBACK_BASELINE"),
                _ => BIN.to_string(),
            };
            let mut cmd = Command::new(bin);
            cmd.args(["run", "--config"])
                .arg(&config)
                .env("RUST_LOG", "error");
            cmd
        }
        "floor" => {
            let mut cmd = Command::new(std::env::current_exe().unwrap());
            cmd.args(["--floor", &port.to_string(), &backend.to_string()]);
            cmd
        }
        _ => {
            let conf = nginx_conf(
                &dir,
                &format!(
                    "map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}\n\
                     upstream app {{ server 127.0.0.1:{backend}; keepalive 64; }}\n\
                     server {{ listen 127.0.0.1:{port}; access_log off;\n\
                       location / {{ proxy_pass http://app; proxy_http_version 1.1;\n\
                         proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection $connection_upgrade;\n\
                         proxy_read_timeout 1h; }} }}"
                ),
            );
            let mut cmd = Command::new(nginx_bin());
            cmd.args(["-e", "stderr", "-c"]).arg(&conf);
            cmd
        }
    };
    let mut p = spawn(name, &mut cmd, &dir.join("log"));
    wait_http(&mut p, port, "/");
    p
}

/// N connections that each made one request and stay idle.
fn idle_connections(port: u16, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
                .unwrap();
            let status = read_answer(&mut s, &mut Vec::new()).expect("an answer");
            assert!(status.contains(" 200"), "{status}");
            s
        })
        .collect()
}

/// N open WebSockets, each of which echoed one message.
fn websockets(port: u16, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|i| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            write!(
                s,
                "GET /ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            )
            .unwrap();
            let status = read_answer(&mut s, &mut Vec::new()).expect("an answer");
            assert!(status.contains(" 101"), "WebSocket {i}: {status}");
            // A masked text frame, "ping", echoed back as the bytes it was.
            let frame = [
                0x81,
                0x84,
                1,
                2,
                3,
                4,
                b'p' ^ 1,
                b'i' ^ 2,
                b'n' ^ 3,
                b'g' ^ 4,
            ];
            s.write_all(&frame).unwrap();
            let mut back = [0u8; 10];
            s.read_exact(&mut back).unwrap();
            assert_eq!(back, frame);
            s
        })
        .collect()
}

/// Bytes of resident memory per connection that `open` adds to `pid`'s tree, and the
/// connections, left open: closed, they would leave memory the allocator keeps and hands to
/// the next connections measured, which would then seem to cost nothing.
fn per_connection(
    pid: u32,
    n: usize,
    open: impl FnOnce() -> Vec<TcpStream>,
) -> (f64, Vec<TcpStream>) {
    let before = settled_rss(pid);
    let conns = open();
    let after = settled_rss(pid);
    (after.saturating_sub(before) as f64 / n as f64, conns)
}

pub fn memory(bench: &Bench, o: &Options) {
    let n = if o.connections > 32 {
        o.connections
    } else {
        1000
    };
    let backend = Backend::start("memory", None);
    println!("\n== memory: resident memory per idle keep-alive connection and per open WebSocket, {n} of each (one worker each)");
    println!(
        "{:<12} {:>16} {:>16}",
        "proxy", "idle keep-alive", "WebSocket"
    );
    let mut rows = Vec::new();
    let mut names = vec!["switchback", "floor", "nginx"];
    if std::env::var_os("SWITCHBACK_BASELINE").is_some() {
        names.push("baseline");
    }
    for name in names {
        let port = super::free_port();
        let p = proxy(bench, name, port, backend.port);
        let pid = p.child.id();
        // Warm: the first requests and upgrade allocate what every later one reuses.
        drop(idle_connections(port, 10));
        drop(websockets(port, 10));
        let (idle, idle_open) = per_connection(pid, n, || idle_connections(port, n));
        let (ws, ws_open) = per_connection(pid, n, || websockets(port, n));
        drop((idle_open, ws_open));
        println!(
            "{name:<12} {:>13.1} KB {:>13.1} KB",
            idle / 1024.0,
            ws / 1024.0
        );
        rows.push((name, idle, ws));
        drop(p);
    }
    let get = |name: &str| {
        rows.iter()
            .find(|r| r.0 == name)
            .map(|r| (r.1, r.2))
            .unwrap()
    };
    let (sb, floor, nginx) = (get("switchback"), get("floor"), get("nginx"));
    println!(
        "switchback / nginx: idle x{:.1}, WebSocket x{:.1}; switchback / floor: idle x{:.2}, WebSocket x{:.2}",
        sb.0 / nginx.0,
        sb.1 / nginx.1,
        sb.0 / floor.0,
        sb.1 / floor.1
    );
}
