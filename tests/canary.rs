//! Canary weights: the split over many clients, stickiness per client, overrides for testers,
//! and bad input, against real upstreams through the real proxy and CLI.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::*;

/// The bucket cookie (`switchback_bucket=N`) of an answer, as a request `cookie` value.
fn bucket_cookie(a: &Answer) -> Option<String> {
    a.set_cookies
        .iter()
        .find(|c| c.starts_with("switchback_bucket="))
        .map(|c| c.split(';').next().unwrap().to_string())
}

/// The pool that answers a request for `host` with `headers`.
async fn ask(conn: &mut KeepAlive, host: &str, headers: Vec<(&str, &str)>) -> String {
    conn.host = host.to_string();
    conn.get_with("/", &headers).await.unwrap().pool
}

/// `n` requests from clients seen for the first time (no cookie), over `conns` keep-alive
/// connections: (pool, bucket cookie) of each.
async fn new_clients(proxy: &Proxy, n: usize, conns: usize) -> Vec<(String, Option<String>)> {
    let mut tasks = Vec::new();
    for c in 0..conns {
        let addr = proxy.addr();
        let count = n / conns + usize::from(c < n % conns);
        tasks.push(tokio::spawn(async move {
            let mut conn = KeepAlive::connect(addr).await.unwrap();
            let mut out = Vec::with_capacity(count);
            for _ in 0..count {
                let a = conn.get("/").await.unwrap();
                assert_eq!(a.status, 200, "{a:?}");
                out.push((a.pool.clone(), bucket_cookie(&a)));
            }
            out
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// Each client (by its cookie) asks once more: its pool now.
async fn replay(proxy: &Proxy, cookies: &[String]) -> Vec<String> {
    let mut conn = KeepAlive::connect(proxy.addr()).await.unwrap();
    let mut pools = Vec::with_capacity(cookies.len());
    for cookie in cookies {
        let a = conn.get_with("/", &[("cookie", cookie)]).await.unwrap();
        assert!(
            a.set_cookies.is_empty(),
            "a client with a bucket keeps it: {a:?}"
        );
        pools.push(a.pool);
    }
    pools
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_percent_of_clients_go_to_the_canary_and_each_keeps_its_pool() {
    let blue = Upstream::start("blue");
    let green = Upstream::start("green");
    let proxy = Proxy::start(&blue_green(&blue, &green));
    proxy.wait_health("app", "green", "healthy");

    let out = proxy.cli_ok(&["canary", "green", "10"]);
    assert!(out.contains("10% of clients go to green"), "{out}");
    let status = proxy.status();
    let app = service_status(&status, "app");
    assert_eq!(app["canary"]["pool"], "green");
    assert_eq!(app["canary"]["percent"], 10.0);
    let split: HashMap<String, f64> = app["split"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["pool"].as_str().unwrap().to_string(),
                s["percent"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        split,
        HashMap::from([("blue".into(), 90.0), ("green".into(), 10.0)])
    );
    assert_eq!(
        proxy.metric("switchback_pool_traffic_ratio{pool=\"green\",service=\"app\"}"),
        Some(0.1)
    );

    // Split accuracy over 20,000 clients.
    let clients = new_clients(&proxy, 20_000, 4).await;
    let on_green = clients.iter().filter(|(p, _)| p == "green").count();
    let share = on_green as f64 / clients.len() as f64 * 100.0;
    assert!((9.0..=11.0).contains(&share), "{share:.2}% on the canary");
    assert!(
        clients.iter().all(|(_, c)| c.is_some()),
        "every new client is handed its bucket"
    );

    // One client, 1,000 requests, one pool; for a canary client and for a stable one.
    for pool in ["green", "blue"] {
        let (_, cookie) = clients.iter().find(|(p, _)| p == pool).unwrap();
        let pools = replay(&proxy, &vec![cookie.clone().unwrap(); 1000]).await;
        assert!(pools.iter().all(|p| p == pool), "a {pool} client moved");
    }

    // Raising 10% -> 30% moves clients from stable to canary only; back to 10% undoes it.
    let sample: Vec<(String, String)> = clients
        .iter()
        .take(3000)
        .map(|(p, c)| (p.clone(), c.clone().unwrap()))
        .collect();
    let cookies: Vec<String> = sample.iter().map(|(_, c)| c.clone()).collect();
    proxy.cli_ok(&["canary", "green", "30"]);
    let at_30 = replay(&proxy, &cookies).await;
    let mut moved = 0;
    for ((before, _), now) in sample.iter().zip(&at_30) {
        assert!(
            !(before == "green" && now == "blue"),
            "raising the weight moved a client from canary back to stable"
        );
        moved += usize::from(before == "blue" && now == "green");
    }
    let share_30 = at_30.iter().filter(|p| *p == "green").count() as f64 / 30.0;
    assert!(
        moved > 0 && (27.0..=33.0).contains(&share_30),
        "{moved} moved, {share_30:.1}% on green"
    );
    proxy.cli_ok(&["canary", "green", "10"]);
    let back = replay(&proxy, &cookies).await;
    assert!(
        sample
            .iter()
            .zip(&back)
            .all(|((before, _), now)| before == now),
        "lowering the weight again puts every client back where it was"
    );

    // A rollback ends the canary: everyone on the stable pool, no cookie handed out.
    let out = proxy.cli_ok(&["rollback"]);
    assert!(out.contains("green -> blue"), "{out}");
    let after = new_clients(&proxy, 200, 1).await;
    assert!(
        after.iter().all(|(p, c)| p == "blue" && c.is_none()),
        "{after:?}"
    );
    assert!(service_status(&proxy.status(), "app")["canary"].is_null());
    assert_eq!(
        proxy.metric("switchback_rollbacks_total{service=\"app\"}"),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_survives_a_restart() {
    let blue = Upstream::start("blue");
    let green = Upstream::start("green");
    let mut proxy = Proxy::start(&blue_green(&blue, &green));
    proxy.wait_health("app", "green", "healthy");
    proxy.cli_ok(&["canary", "green", "12.5"]);
    let clients = new_clients(&proxy, 400, 2).await;
    proxy.restart();
    let app = service_status(&proxy.status(), "app").clone();
    assert_eq!(app["canary"]["percent"], 12.5, "{app}");
    let cookies: Vec<String> = clients.iter().map(|(_, c)| c.clone().unwrap()).collect();
    let again = replay(&proxy, &cookies).await;
    assert!(
        clients
            .iter()
            .zip(&again)
            .all(|((before, _), now)| before == now),
        "clients keep their pool across a restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hashed_header_keeps_clients_without_cookies() {
    let blue = Upstream::start("blue");
    let green = Upstream::start("green");
    let config = format!(
        "{}[services.app.canary]\nsticky = \"header\"\nsticky_header = \"X-User-Id\"\n",
        blue_green(&blue, &green)
    );
    let proxy = Proxy::start(&config);
    proxy.wait_health("app", "green", "healthy");
    proxy.cli_ok(&["canary", "green", "10"]);
    let mut conn = KeepAlive::connect(proxy.addr()).await.unwrap();
    let mut first = Vec::new();
    for i in 0..5000 {
        let user = format!("user-{i}");
        let a = conn.get_with("/", &[("x-user-id", &user)]).await.unwrap();
        assert!(a.set_cookies.is_empty(), "no cookie in header mode");
        first.push(a.pool);
    }
    let share = first.iter().filter(|p| *p == "green").count() as f64 / 50.0;
    assert!((8.0..=12.0).contains(&share), "{share}% of users on green");
    for i in (0..5000).step_by(50) {
        let user = format!("user-{i}");
        let a = conn.get_with("/", &[("x-user-id", &user)]).await.unwrap();
        assert_eq!(a.pool, first[i], "{user} changed pool");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overrides_need_a_secret_and_never_reach_the_backend() {
    let blue = Upstream::start("blue");
    let green = Upstream::start("green");
    let pools = format!(
        "active = \"blue\"\npools.blue = [\"{}\"]\npools.green = [\"{}\"]\n",
        blue.addr, green.addr
    );
    let config = format!(
        "[services.app]\n{pools}\n\
         [services.closed]\nhosts = [\"closed.test\"]\n{pools}[services.closed.canary]\noverride_header = \"\"\noverride_cookie = \"\"\n\n\
         [services.tester]\nhosts = [\"tester.test\"]\n{pools}[services.tester.canary]\noverride_secret = \"0123456789abcdef\"\n\n\
         [services.qa]\nhosts = [\"qa.test\"]\n{pools}[services.qa.canary]\noverride_header = \"X-QA-Pool\"\noverride_secret = \"0123456789abcdef\"\n"
    );
    let proxy = Proxy::start(&config);
    let mut conn = KeepAlive::connect(proxy.addr()).await.unwrap();
    let secret = "green:0123456789abcdef";
    let secret_cookie = format!("switchback_pool={secret}");
    // (host, request headers, the pool that must answer, what the case is)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        // Off by default: no client chooses its pool, with or without a secret.
        ("app.test", vec![], "blue", "no override"),
        (
            "app.test",
            vec![("x-switchback-pool", "green")],
            "blue",
            "header, default",
        ),
        (
            "app.test",
            vec![("x-switchback-pool", secret)],
            "blue",
            "header with a secret, default",
        ),
        (
            "app.test",
            vec![("cookie", "a=b; switchback_pool=green")],
            "blue",
            "cookie, default",
        ),
        // Turned off explicitly.
        (
            "closed.test",
            vec![("x-switchback-pool", secret)],
            "blue",
            "header off",
        ),
        (
            "closed.test",
            vec![("cookie", &secret_cookie)],
            "blue",
            "cookie off",
        ),
        // A secret turns the default names on; the value must carry it.
        (
            "tester.test",
            vec![("x-switchback-pool", "green")],
            "blue",
            "no secret",
        ),
        (
            "tester.test",
            vec![("x-switchback-pool", "green:wrong-secret-value")],
            "blue",
            "wrong secret",
        ),
        (
            "tester.test",
            vec![("x-switchback-pool", secret)],
            "green",
            "header with its secret",
        ),
        (
            "tester.test",
            vec![("cookie", &secret_cookie)],
            "green",
            "cookie with its secret",
        ),
        (
            "tester.test",
            vec![("x-switchback-pool", "purple:0123456789abcdef")],
            "blue",
            "an unknown pool is ignored",
        ),
        // Renamed.
        (
            "qa.test",
            vec![("x-switchback-pool", secret)],
            "blue",
            "the default header name",
        ),
        (
            "qa.test",
            vec![("x-qa-pool", secret)],
            "green",
            "renamed header with its secret",
        ),
    ];
    for (host, headers, pool, what) in cases {
        assert_eq!(ask(&mut conn, host, headers).await, pool, "{host}: {what}");
    }
    // Neither the header nor the cookie reaches the backend, forced or not; other cookies do.
    conn.host = "tester.test".into();
    for (header, answering) in [(secret, "green"), ("green:wrong-secret-value", "blue")] {
        let cookie = format!("a=b; switchback_pool={header}; c=d");
        let a = conn
            .get_with(
                "/headers",
                &[("x-switchback-pool", header), ("cookie", &cookie)],
            )
            .await
            .unwrap();
        assert_eq!(a.pool, answering);
        let seen = a.body.to_ascii_lowercase();
        assert!(
            !seen.contains("x-switchback-pool"),
            "the header reached the backend:\n{seen}"
        );
        assert!(
            !seen.contains("switchback_pool"),
            "the cookie reached the backend:\n{seen}"
        );
        assert!(
            seen.contains("cookie: a=b; c=d"),
            "other cookies are kept:\n{seen}"
        );
    }
    // The access log (the proxy's stdout here) marks forced requests, and only those.
    wait_for("the access log lines", Duration::from_secs(5), || {
        proxy
            .log()
            .lines()
            .filter(|l| l.contains("\"path\":\"/headers\""))
            .count()
            == 2
    });
    let log = proxy.log();
    let marks: Vec<bool> = log
        .lines()
        .filter(|l| l.contains("\"path\":\"/headers\""))
        .map(|l| l.contains("\"forced\":true"))
        .collect();
    assert_eq!(marks, vec![true, false], "{log}");
    // An override wins over the canary split, both ways.
    proxy.cli_ok(&["canary", "green", "100", "-s", "tester"]);
    assert_eq!(ask(&mut conn, "tester.test", vec![]).await, "green");
    assert_eq!(
        ask(
            &mut conn,
            "tester.test",
            vec![("x-switchback-pool", "blue:0123456789abcdef")]
        )
        .await,
        "blue"
    );
}

#[test]
fn bad_canary_input_is_refused_and_changes_nothing() {
    let blue = Upstream::start("blue");
    let green = Upstream::start("green");
    let proxy = Proxy::start(&blue_green(&blue, &green));
    proxy.wait_health("app", "green", "healthy");
    proxy.cli_ok(&["canary", "green", "5"]);
    let before = proxy.status();
    for (args, code) in [
        (vec!["canary", "green", "101"], "bad_percent"),
        (vec!["canary", "green", "-1"], "bad_percent"),
        (vec!["canary", "green", "12.34"], "bad_percent"),
        (vec!["canary", "purple", "10"], "unknown_pool"),
        (vec!["canary", "blue", "10"], "active_pool"),
        (
            vec!["canary", "green", "10", "-s", "nope"],
            "unknown_service",
        ),
    ] {
        let mut with_json = args.clone();
        with_json.push("--json");
        let out = proxy.cli(&with_json);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let answer: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(answer["ok"], false);
        assert_eq!(answer["error"]["code"], code, "{args:?}: {answer}");
        assert!(!answer["error"]["message"].as_str().unwrap().is_empty());
    }
    let out = proxy.cli(&["canary", "green", "ten"]);
    assert_eq!(out.status.code(), Some(2), "not a number is a usage error");
    // A pool with no healthy backend needs --force.
    green.set_healthy(false);
    proxy.wait_health("app", "green", "down");
    let out = proxy.cli(&["canary", "green", "20"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no_healthy_backend"));
    let after = proxy.status();
    assert_eq!(after["generation"], before["generation"], "nothing changed");
    assert_eq!(
        service_status(&after, "app")["canary"],
        service_status(&before, "app")["canary"]
    );
}
