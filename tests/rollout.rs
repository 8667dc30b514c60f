//! Rollouts: a failing canary is rolled back by the proxy itself, a healthy one is promoted,
//! the rollout outlives the CLI that started it, and bad input changes nothing.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

/// One answer seen by the load: when its request started, which pool, which status.
type Seen = (Instant, String, u16);

/// Keep-alive clients without cookies (each request a new client, so the canary share of
/// requests is the canary weight), until `stop`, for at most two minutes.
fn load(
    proxy: &Proxy,
    stop: &Arc<AtomicBool>,
    conns: usize,
) -> Vec<tokio::task::JoinHandle<Vec<Seen>>> {
    (0..conns)
        .map(|_| {
            let (addr, stop) = (proxy.addr(), stop.clone());
            tokio::spawn(async move {
                let mut conn = KeepAlive::connect(addr).await.unwrap();
                let mut seen = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(120);
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    let started = Instant::now();
                    let a = conn.get("/").await.unwrap();
                    seen.push((started, a.pool, a.status.as_u16()));
                    // Paced so that two cores are shared fairly with the proxy.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                seen
            })
        })
        .collect()
}

async fn collect(tasks: Vec<tokio::task::JoinHandle<Vec<Seen>>>) -> Vec<Seen> {
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

fn json_lines(out: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

fn app(proxy: &Proxy) -> serde_json::Value {
    proxy.status()["services"][0].clone()
}

/// Runs the CLI off the async runtime, so the load keeps going meanwhile.
async fn cli(proxy: &Arc<Proxy>, args: &[&str]) -> std::process::Output {
    let (proxy, args) = (
        proxy.clone(),
        args.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
    );
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        proxy.cli(&args)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_green_that_fails_thirty_percent_is_rolled_back_at_the_first_step() {
    let blue = Upstream::start("blue");
    let green = Upstream::start("green");
    let proxy = Arc::new(Proxy::start(&blue_green(&blue, &green)));
    proxy.wait_health("app", "green", "healthy");
    green.set_failing(30);
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(&proxy, &stop, 4);

    let started = Instant::now();
    let out = cli(
        &proxy,
        &[
            "rollout",
            "green",
            "--steps",
            "10,50,100",
            "--interval",
            "20s",
            "--min-requests",
            "30",
            "--json",
        ],
    )
    .await;
    let verdict_at = Instant::now();
    // Requests that start from now on must all be answered by blue: let 200 more reach it.
    let target = blue.requests.load(Ordering::SeqCst) + 200;
    while blue.requests.load(Ordering::SeqCst) < target {
        assert!(
            verdict_at.elapsed() < Duration::from_secs(20),
            "the load stopped"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let seen = collect(clients).await;

    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out.stdout);
    assert_eq!(lines[0]["event"], "rollout_step");
    assert_eq!(lines[0]["percent"], 10.0);
    assert!(lines.iter().any(|l| l["event"] == "rollout_progress"));
    let end = lines.last().unwrap();
    assert_eq!(end["ok"], true);
    assert_eq!(end["outcome"], "rolled_back", "{end}");
    assert_eq!(end["step"], 1, "rolled back at the first step: {end}");
    assert!(
        end["reason"].as_str().unwrap().contains("5xx ratio"),
        "{end}"
    );
    assert!(end["canary"]["error_rate"].as_f64().unwrap() > 5.0, "{end}");
    assert!(
        verdict_at - started < Duration::from_secs(20),
        "the breach is caught within the step, not at its end"
    );

    let late_green: Vec<_> = seen
        .iter()
        .filter(|(at, pool, _)| *at >= verdict_at && pool == "green")
        .collect();
    assert!(
        late_green.is_empty(),
        "green served after the verdict: {late_green:?}"
    );
    assert!(
        seen.iter().any(|(at, _, _)| *at >= verdict_at),
        "load ran past the verdict"
    );
    assert!(seen
        .iter()
        .any(|(_, pool, status)| pool == "green" && *status == 500));

    let a = app(&proxy);
    assert_eq!(a["active"], "blue");
    assert!(a["canary"].is_null(), "{a}");
    assert_eq!(a["rollout"]["outcome"], "rolled_back");
    assert_eq!(a["rollout"]["running"], false);
    assert_eq!(
        proxy.metric("switchback_rollbacks_total{service=\"app\"}"),
        Some(1.0)
    );
    assert!(proxy.log().contains("rollout rolled back"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_green_is_promoted_and_becomes_active() {
    let blue = Upstream::start("blue");
    let green = Upstream::start("green");
    let proxy = Arc::new(Proxy::start(&blue_green(&blue, &green)));
    proxy.wait_health("app", "green", "healthy");
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(&proxy, &stop, 4);
    let out = cli(
        &proxy,
        &[
            "rollout",
            "green",
            "--steps",
            "20,60",
            "--interval",
            "1s",
            "--min-requests",
            "10",
        ],
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    let seen = collect(clients).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("step 1/2: 20% of clients on green"),
        "{stdout}"
    );
    assert!(
        stdout.contains("step 2/2: 60% of clients on green"),
        "{stdout}"
    );
    assert!(
        stdout.contains("rollout promoted: green is the active pool"),
        "{stdout}"
    );
    assert!(
        seen.iter().all(|(_, _, status)| *status == 200),
        "nothing failed"
    );
    let a = app(&proxy);
    assert_eq!(a["active"], "green");
    assert_eq!(a["previous"], "blue");
    assert!(a["canary"].is_null());
    assert_eq!(a["rollout"]["outcome"], "promoted");
    assert_eq!(
        proxy.metric("switchback_active_pool{pool=\"green\",service=\"app\"}"),
        Some(1.0)
    );
}

/// Starts `switchback rollout` as a child and returns it once the first step has begun.
fn start_rollout_cli(proxy: &Proxy, args: &[&str]) -> std::process::Child {
    let mut child = Command::new(BIN)
        .arg("--socket")
        .arg(&proxy.socket)
        .arg("rollout")
        .args(args)
        .arg("--json")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains("\"event\":\"rollout_step\""), "{first}");
    child
}

#[test]
fn the_rollout_outlives_its_cli_and_abort_rolls_it_back() {
    let blue = Upstream::start("blue");
    let green = Upstream::start("green");
    let mut proxy = Proxy::start(&blue_green(&blue, &green));
    proxy.wait_health("app", "green", "healthy");
    let mut child = start_rollout_cli(&proxy, &["green", "--steps", "10,100", "--interval", "1h"]);
    child.kill().unwrap();
    child.wait().unwrap();

    let a = app(&proxy);
    assert_eq!(a["rollout"]["running"], true, "{a}");
    assert_eq!(a["rollout"]["step"], 1);
    assert_eq!(a["canary"]["pool"], "green");
    assert_eq!(a["canary"]["percent"], 10.0);

    // Another CLI reattaches and sees the running rollout's progress.
    let mut watcher = Command::new(BIN)
        .arg("--socket")
        .arg(&proxy.socket)
        .args(["rollout", "--watch", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut reader = BufReader::new(watcher.stdout.take().unwrap());
    reader.read_line(&mut line).unwrap();
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["event"], "rollout_progress", "{event}");
    assert_eq!(event["pool"], "green");

    // Changes other than an abort are refused while it runs.
    for (args, code) in [
        (vec!["switch", "green", "--json"], "rollout_running"),
        (vec!["canary", "green", "50", "--json"], "rollout_running"),
        (vec!["rollout", "green", "--json"], "rollout_running"),
    ] {
        let out = proxy.cli(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_eq!(
            json_lines(&out.stdout)[0]["error"]["code"],
            code,
            "{args:?}"
        );
    }

    let out = proxy.cli(&["rollout", "--abort", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let end = json_lines(&out.stdout).pop().unwrap();
    assert_eq!(end["outcome"], "aborted", "{end}");
    assert!(end["reason"]
        .as_str()
        .unwrap()
        .contains("aborted by control socket"));
    // The watcher hears the same end, and exits 3 as the rollout did not promote.
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut reader, &mut rest).unwrap();
    assert!(rest.contains("\"outcome\":\"aborted\""), "{rest}");
    assert_eq!(watcher.wait().unwrap().code(), Some(3));
    let a = app(&proxy);
    assert_eq!(a["active"], "blue");
    assert!(a["canary"].is_null());
    let out = proxy.cli(&["rollout", "--abort", "--json"]);
    assert_eq!(json_lines(&out.stdout)[0]["error"]["code"], "no_rollout");

    // A restart in the middle of a rollout comes back on the stable pool, and says so.
    let mut child = start_rollout_cli(&proxy, &["green", "--steps", "30,100", "--interval", "1h"]);
    assert_eq!(app(&proxy)["canary"]["percent"], 30.0);
    proxy.kill();
    let _ = child.wait();
    proxy.restart();
    let status = proxy.status();
    let a = &status["services"][0];
    assert_eq!(a["active"], "blue");
    assert!(a["canary"].is_null(), "{a}");
    let notices = status["notices"].to_string();
    assert!(
        notices.contains("rollout of pool \\\"green\\\" was stopped by a restart at step 1 of 2"),
        "{notices}"
    );
    let mut conn_pools = Vec::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut conn = KeepAlive::connect(proxy.addr()).await.unwrap();
        for _ in 0..200 {
            conn_pools.push(conn.get("/").await.unwrap().pool);
        }
    });
    assert!(conn_pools.iter().all(|p| p == "blue"));
}

#[test]
fn bad_rollout_input_is_refused_and_changes_nothing() {
    let blue = Upstream::start("blue");
    let green = Upstream::start("green");
    let proxy = Proxy::start(&blue_green(&blue, &green));
    proxy.wait_health("app", "green", "healthy");
    let before = proxy.status();
    for (args, code) in [
        (
            vec!["rollout", "green", "--steps", "50,25,100"],
            "bad_rollout",
        ),
        (vec!["rollout", "green", "--steps", "10,10"], "bad_rollout"),
        (vec!["rollout", "green", "--steps", "10,150"], "bad_rollout"),
        (
            vec!["rollout", "green", "--max-error-rate", "0"],
            "bad_rollout",
        ),
        (vec!["rollout", "purple"], "unknown_pool"),
        (vec!["rollout", "blue"], "active_pool"),
        (vec!["rollout", "--watch"], "no_rollout"),
    ] {
        let mut with_json = args.clone();
        with_json.push("--json");
        let out = proxy.cli(&with_json);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let answer = json_lines(&out.stdout).pop().unwrap();
        assert_eq!(answer["error"]["code"], code, "{args:?}: {answer}");
    }
    let out = proxy.cli(&["rollout", "green", "--steps", "ten"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a step that is not a number is a usage error"
    );
    let after = proxy.status();
    assert_eq!(after["generation"], before["generation"], "nothing changed");
    assert!(after["services"][0]["rollout"].is_null());
}

#[test]
fn a_canary_that_gets_too_few_requests_is_never_promoted() {
    let blue = Upstream::start("blue");
    let green = Upstream::start("green");
    let proxy = Proxy::start(&blue_green(&blue, &green));
    proxy.wait_health("app", "green", "healthy");
    let started = Instant::now();
    let out = proxy.cli(&[
        "rollout",
        "green",
        "--steps",
        "50,100",
        "--interval",
        "1s",
        "--min-requests",
        "1000",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(3));
    let lines = json_lines(&out.stdout);
    assert!(
        lines.iter().any(|l| l["waiting_for_requests"] == true),
        "progress says the step waits for requests"
    );
    let end = lines.last().unwrap();
    assert_eq!(end["outcome"], "rolled_back", "{end}");
    assert_eq!(end["step"], 1);
    let reason = end["reason"].as_str().unwrap();
    assert!(reason.contains("at least 1000 are needed"), "{reason}");
    assert!(
        started.elapsed() >= Duration::from_secs(10),
        "ten intervals are given first"
    );
    assert_eq!(app(&proxy)["active"], "blue");
    assert!(app(&proxy)["canary"].is_null());
}

/// One POST on a fresh connection with `cookie`, its 10-byte body sent over about `upload`;
/// the pool that answered.
async fn slow_upload(addr: std::net::SocketAddr, cookie: &str, upload: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let head = format!(
        "POST /upload HTTP/1.1\r\nhost: app.test\r\ncookie: {cookie}\r\ncontent-length: 10\r\nconnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..5 {
        tokio::time::sleep(upload / 5).await;
        s.write_all(b"xx").await.unwrap();
    }
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    answer
        .lines()
        .find_map(|l| l.strip_prefix("x-pool: "))
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_requests_and_slow_uploads_do_not_move_the_verdict() {
    const SECRET: &str = "0123456789abcdef";
    let blue = Upstream::start("blue");
    let green = Upstream::start("green");
    let proxy = Arc::new(Proxy::start(&format!(
        "{}[services.app.canary]\noverride_secret = \"{SECRET}\"\n",
        blue_green(&blue, &green)
    )));
    proxy.wait_health("app", "green", "healthy");

    let rollout = {
        let proxy = proxy.clone();
        tokio::task::spawn_blocking(move || {
            proxy.cli(&[
                "rollout",
                "green",
                "--steps",
                "50,100",
                "--interval",
                "4s",
                "--min-requests",
                "10",
                "--max-p95",
                "300ms",
                "--json",
            ])
        })
    };
    wait_for("the rollout's canary", Duration::from_secs(10), || {
        app(&proxy)["canary"]["pool"] == "green"
    });
    // A client the split put on green, by its signed bucket cookie.
    let mut green_cookie = None;
    for _ in 0..200 {
        let a = get_once(proxy.addr(), "/").await.unwrap();
        if a.pool == "green" {
            let c = a
                .set_cookies
                .iter()
                .find(|c| c.starts_with("switchback_bucket="));
            green_cookie = c.map(|c| c.split(';').next().unwrap().to_string());
            break;
        }
    }
    let green_cookie = green_cookie.expect("a client on green at 50%");

    let stop = Arc::new(AtomicBool::new(false));
    let forced = {
        let (addr, stop) = (proxy.addr(), stop.clone());
        // A tester forcing green onto a failing endpoint: none of it is the split's traffic.
        tokio::spawn(async move {
            let mut conn = KeepAlive::connect(addr).await.unwrap();
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut n = 0;
            let force = format!("green:{SECRET}");
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                let a = conn
                    .get_with("/status/500", &[("x-switchback-pool", force.as_str())])
                    .await
                    .unwrap();
                assert_eq!((a.status.as_u16(), a.pool.as_str()), (500, "green"));
                n += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            n
        })
    };
    let uploads: Vec<_> = (0..3)
        .map(|_| {
            let (addr, stop, cookie) = (proxy.addr(), stop.clone(), green_cookie.clone());
            // Clients on green whose uploads take 600 ms, twice the p95 limit; the backend
            // answers at once.
            tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    let pool = slow_upload(addr, &cookie, Duration::from_millis(600)).await;
                    assert_eq!(pool, "green", "the signed cookie keeps the client on green");
                    n += 1;
                }
                n
            })
        })
        .collect();
    let out = rollout.await.unwrap();
    stop.store(true, Ordering::SeqCst);
    let forced_n = forced.await.unwrap();
    let mut uploads_n = 0;
    for u in uploads {
        uploads_n += u.await.unwrap();
    }
    eprintln!("{forced_n} forced 500s and {uploads_n} slow uploads during the rollout");
    assert!(forced_n > 100 && uploads_n >= 20, "{forced_n} {uploads_n}");
    assert_eq!(
        out.status.code(),
        Some(0),
        "promoted: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(proxy.active_pool("app"), "green");
}
