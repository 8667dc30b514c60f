//! `reload`: what a proxy's own change costs its clients. Under load (wrk with kept-alive
//! connections, and a second wrk whose every request opens a new connection), each proxy
//! changes itself and the failed requests and refused connections are counted:
//! - 20 config reloads: `switchback reload` (the file alternating between one and two
//!   backends), nginx `-s reload`, HAProxy's master-worker reload (SIGUSR2, the listeners
//!   handed over through `expose-fd listeners`);
//! - 3 upgrades of the process itself: `switchback upgrade`.
//!
//! `cargo bench --bench proxy -- reload`

use std::path::Path;
use std::process::Command;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{haproxy_bin, nginx_bin, nginx_conf, parse_wrk, spawn, wait_http, Bench, Options, BIN};

/// What one wrk run saw.
#[derive(Default)]
struct Seen {
    requests: u64,
    non_2xx: u64,
    /// Connections refused (wrk's `connect` errors).
    refused: u64,
    /// Reads and writes that failed, and timeouts.
    other: u64,
}

fn run_wrk(port: u16, seconds: u64, connections: usize, close: bool) -> JoinHandle<Seen> {
    std::thread::spawn(move || {
        let mut cmd = Command::new("wrk");
        cmd.args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--timeout",
            "5s",
        ]);
        if close {
            cmd.args(["-H", "Connection: close"]);
        }
        let out = cmd
            .arg(format!("http://127.0.0.1:{port}/"))
            .output()
            .expect("run wrk");
        let text = String::from_utf8_lossy(&out.stdout);
        let r = parse_wrk(&text);
        let count = |what: &str| -> u64 {
            text.lines()
                .find_map(|l| l.trim().strip_prefix("Socket errors:"))
                .and_then(|errors| {
                    errors.split(',').find_map(|part| {
                        let mut words = part.split_whitespace();
                        (words.next() == Some(what))
                            .then(|| words.next()?.parse().ok())
                            .flatten()
                    })
                })
                .unwrap_or(0)
        };
        Seen {
            requests: r.requests,
            non_2xx: r.non_2xx,
            refused: count("connect"),
            other: count("read") + count("write") + count("timeout"),
        }
    })
}

/// Runs the load on `port` for `seconds`, calling `change(i)` `times` times, evenly spread
/// from the second second on, and adds up what both loads saw.
fn under_load(port: u16, seconds: u64, times: usize, mut change: impl FnMut(usize)) -> Seen {
    let kept = run_wrk(port, seconds, 50, false);
    let fresh = run_wrk(port, seconds, 10, true);
    let start = Instant::now();
    let span = Duration::from_secs(seconds.saturating_sub(3));
    for i in 0..times {
        let at = Duration::from_secs(1) + span * i as u32 / times as u32;
        if let Some(wait) = at.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        change(i);
    }
    let (a, b) = (kept.join().unwrap(), fresh.join().unwrap());
    Seen {
        requests: a.requests + b.requests,
        non_2xx: a.non_2xx + b.non_2xx,
        refused: a.refused + b.refused,
        other: a.other + b.other,
    }
}

fn row(proxy: &str, change: &str, s: &Seen) {
    println!(
        "{proxy:<11} {change:<38} {:>9} {:>8} {:>8} {:>8}",
        s.requests, s.non_2xx, s.refused, s.other
    );
}

fn ok(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The config of a switchback with one service on the bench's upstreams: the blue one alone,
/// or both.
fn switchback_config(bench: &Bench, dir: &Path, port: u16, both: bool) -> String {
    let backends = if both {
        format!(
            "\"127.0.0.1:{}\", \"127.0.0.1:{}\"",
            bench.upstream_blue, bench.upstream_green
        )
    } else {
        format!("\"127.0.0.1:{}\"", bench.upstream_blue)
    };
    format!(
        "[listen]\nhttp = [\"127.0.0.1:{port}\"]\n[server]\nthreads = 1\n[control]\nsocket = \"{d}/control.sock\"\n\
         [state]\ndir = \"{d}/state\"\n[access_log]\nenabled = false\n\
         [services.app]\nactive = \"blue\"\npools.blue = [{backends}]\n",
        d = dir.display()
    )
}

pub fn reload(bench: &Bench, o: &Options) {
    let seconds = o.seconds.max(12);
    println!(
        "\n== reload: failed requests and refused connections while each proxy changes itself, under wrk -c50 (kept alive) and wrk -c10 (a new connection per request), {seconds} s, 1 worker each"
    );
    println!(
        "{:<11} {:<38} {:>9} {:>8} {:>8} {:>8}",
        "proxy", "change", "requests", "non-2xx", "refused", "errors"
    );

    // switchback: 20 reloads, then 3 upgrades.
    let port = super::free_port();
    let dir = bench.dir.join(format!("reload-switchback-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("switchback.toml");
    std::fs::write(&config, switchback_config(bench, &dir, port, false)).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "error");
    let mut p = spawn("switchback", &mut cmd, &dir.join("log"));
    wait_http(&mut p, port, "/");
    let cli = |args: &[&str]| {
        let mut c = Command::new(BIN);
        c.arg("--socket").arg(dir.join("control.sock")).args(args);
        c
    };
    let seen = under_load(port, seconds, 20, |i| {
        std::fs::write(&config, switchback_config(bench, &dir, port, i % 2 == 0)).unwrap();
        ok(&mut cli(&["reload"]), "switchback reload");
    });
    row("switchback", "20 x switchback reload", &seen);
    let mut pids = Vec::new();
    let seen = under_load(port, seconds.max(24), 3, |_| {
        let out = cli(&["upgrade", "--json"]).output().unwrap();
        assert!(
            out.status.success(),
            "switchback upgrade failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let reply: serde_json::Value =
            serde_json::from_slice(out.stdout.split(|b| *b == b'\n').next().unwrap()).unwrap();
        pids.push(reply["new_pid"].as_u64().unwrap());
    });
    row("switchback", "3 x switchback upgrade", &seen);
    // The last new process serves (the others drained and exited); the first is `p`.
    if let Some(pid) = pids.last() {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    drop(p);

    // nginx: 20 x `nginx -s reload`.
    let port = super::free_port();
    let ndir = bench.dir.join(format!("reload-nginx-{port}"));
    let conf = nginx_conf(
        &ndir,
        &format!(
            "upstream app {{ server 127.0.0.1:{}; keepalive 64; }}\n\
             server {{ listen 127.0.0.1:{port}; access_log off;\n\
               location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}",
            bench.upstream_blue
        ),
    );
    let mut cmd = Command::new(nginx_bin());
    cmd.args(["-e", "stderr", "-c"]).arg(&conf);
    let mut p = spawn("nginx", &mut cmd, &ndir.join("log"));
    wait_http(&mut p, port, "/");
    let seen = under_load(port, seconds, 20, |_| {
        let mut c = Command::new(nginx_bin());
        c.args(["-e", "stderr", "-c"])
            .arg(&conf)
            .args(["-s", "reload"]);
        ok(&mut c, "nginx -s reload");
    });
    row("nginx", "20 x nginx -s reload", &seen);
    drop(p);

    // HAProxy: 20 x master-worker reload with the listeners handed over.
    let port = super::free_port();
    let hdir = bench.dir.join(format!("reload-haproxy-{port}"));
    std::fs::create_dir_all(&hdir).unwrap();
    let conf = hdir.join("haproxy.cfg");
    std::fs::write(
        &conf,
        format!(
            "global\n  master-worker\n  nbthread 1\n  maxconn 4096\n  stats socket {}/admin.sock mode 600 level admin expose-fd listeners\n\
             defaults\n  mode http\n  timeout connect 3s\n  timeout client 60s\n  timeout server 60s\n  option http-keep-alive\n  http-reuse always\n\
             frontend fe\n  bind 127.0.0.1:{port}\n  default_backend be\n\
             backend be\n  server s1 127.0.0.1:{}\n",
            hdir.display(),
            bench.upstream_blue
        ),
    )
    .unwrap();
    let mut cmd = Command::new(haproxy_bin());
    cmd.args(["-W", "-db", "-f"]).arg(&conf);
    let mut p = spawn("haproxy", &mut cmd, &hdir.join("log"));
    wait_http(&mut p, port, "/");
    let master = p.child.id().to_string();
    let seen = under_load(port, seconds, 20, |_| {
        ok(
            Command::new("kill").args(["-USR2", &master]),
            "kill -USR2 haproxy",
        );
    });
    row("haproxy", "20 x reload (master-worker, expose-fd)", &seen);
    drop(p);
}
