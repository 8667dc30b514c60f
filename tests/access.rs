//! `[[services.NAME.access]]` against the real binary with real clients: address rules (by the
//! connection's address and behind a trusted proxy), logins from files Debian's `htpasswd`
//! writes, and rate limits, with their metrics and access log marks.

mod support;

use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use support::*;

fn basic(user: &str, password: &str) -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {token}")
}

fn access_log(path: &std::path::Path, lines: usize) -> Vec<serde_json::Value> {
    wait_for("access log lines", Duration::from_secs(5), || {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .count()
            >= lines
    });
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_rules_deny_first_then_allow_by_the_longest_prefix() {
    let app = Upstream::start("blue");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let proxy = Proxy::start_with_server(
        "trusted_proxies = [\"127.0.0.9\"]",
        &format!(
            "[access_log]\npath = \"{}\"\n\n\
             [services.app]\nactive = \"blue\"\npools.blue = [\"{}\"]\n\
             [[services.app.access]]\npath_prefix = \"/admin/\"\nallow = [\"127.0.0.0/24\"]\ndeny = [\"127.0.0.3\"]\n\
             [[services.app.access]]\npath_prefix = \"/admin/public\"\ndeny = [\"127.0.0.4\"]\n",
            log.display(),
            app.addr
        ),
    );
    let status = |source: &'static str, path: &'static str| {
        let addr = proxy.addr();
        async move {
            let mut c = KeepAlive::connect_from(addr, source).await.unwrap();
            c.get(path).await.unwrap().status.as_u16()
        }
    };
    assert_eq!(status("127.0.0.2", "/admin/x").await, 200);
    // Without the slash, and spelled as a backend would decode it, the rule still applies.
    assert_eq!(status("127.0.0.2", "/admin").await, 200);
    assert_eq!(status("127.0.1.2", "/admin").await, 403);
    assert_eq!(status("127.0.1.2", "/%61dmin/x").await, 403);
    assert_eq!(status("127.0.1.2", "//admin/x").await, 403);
    // Denied although the allow list covers it.
    assert_eq!(status("127.0.0.3", "/admin/x").await, 403);
    // The longer prefix has a rule of its own.
    assert_eq!(status("127.0.1.2", "/admin/public/a").await, 200);
    assert_eq!(status("127.0.0.4", "/admin/public/a").await, 403);
    // Outside every prefix: no rule.
    assert_eq!(status("127.0.1.2", "/administrator").await, 200);

    // Behind a trusted proxy, the client its X-Forwarded-For names is the one judged.
    let mut lb = KeepAlive::connect_from(proxy.addr(), "127.0.0.9")
        .await
        .unwrap();
    let via = |xff: &'static str| [("x-forwarded-for", xff)];
    let answer = lb.get_with("/admin/x", &via("127.0.0.2")).await.unwrap();
    assert_eq!(answer.status, 200);
    let answer = lb.get_with("/admin/x", &via("203.0.113.9")).await.unwrap();
    assert_eq!(answer.status, 403);
    assert_eq!(answer.body, "forbidden\n");
    // A forged entry to the left of what the proxy saw changes nothing.
    let answer = lb
        .get_with("/admin/x", &via("127.0.0.2, 203.0.113.9"))
        .await
        .unwrap();
    assert_eq!(answer.status, 403);
    // The connection stays open after a refusal.
    let answer = lb.get_with("/admin/x", &via("127.0.0.2")).await.unwrap();
    assert_eq!(answer.status, 200);

    // A refused request with a body is answered, and its connection closed rather than the
    // body read.
    let mut small = raw_connect_from("127.0.1.2", proxy.addr()).await;
    small
        .write_all(b"POST /admin/x HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\n\r\nhello")
        .unwrap();
    assert_eq!(read_raw_answer(&mut small).map(|a| a.0), Some(403));
    let mut rest = Vec::new();
    assert_eq!(small.read_to_end(&mut rest).unwrap(), 0, "closed");
    let mut large = raw_connect_from("127.0.1.2", proxy.addr()).await;
    large
        .write_all(b"POST /admin/x HTTP/1.1\r\nHost: app.test\r\nContent-Length: 10000000\r\n\r\n")
        .unwrap();
    assert_eq!(read_raw_answer(&mut large).map(|a| a.0), Some(403));
    let mut rest = Vec::new();
    assert_eq!(large.read_to_end(&mut rest).unwrap(), 0, "closed");

    assert_eq!(
        proxy.metric("switchback_access_denied_total{reason=\"deny\",service=\"app\"}"),
        Some(9.0)
    );
    assert_eq!(
        proxy.metric("switchback_access_denied_total{reason=\"rate\",service=\"app\"}"),
        Some(0.0)
    );
    let lines = access_log(&log, 15);
    let denied: Vec<&serde_json::Value> = lines.iter().filter(|l| l["denied"] == "deny").collect();
    assert_eq!(denied.len(), 9, "{lines:?}");
    assert!(denied
        .iter()
        .all(|l| l["status"] == 403 && l["service"] == "app"));
    assert!(denied.iter().any(|l| l["client"] == "203.0.113.9"));
    assert!(lines
        .iter()
        .filter(|l| l["status"] == 200)
        .all(|l| l.get("denied").is_none()));
    // The backend never saw a refused request.
    assert_eq!(app.requests.load(std::sync::atomic::Ordering::SeqCst), 6);
}

fn htpasswd(file: &std::path::Path, flag: &str, user: &str, password: &str) {
    let create = if file.exists() { "-b" } else { "-cb" };
    let status = Command::new("htpasswd")
        .args([create, flag])
        .arg(file)
        .args([user, password])
        .status()
        .expect("htpasswd (Debian's apache2-utils) is installed");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_from_an_htpasswd_file_with_each_kind_of_hash() {
    let app = Upstream::start("blue");
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("admin.htpasswd");
    htpasswd(&users, "-B", "bcrypt-user", "correct horse");
    htpasswd(&users, "-5", "sha-user", "battery staple");
    htpasswd(&users, "-m", "apr1-user", "tr0ub4dor");
    let proxy = Proxy::start(&format!(
        "[services.app]\nactive = \"blue\"\npools.blue = [\"{}\"]\n\
         [[services.app.access]]\npath_prefix = \"/admin\"\nbasic_auth = {{ realm = \"admin area\", htpasswd = \"{}\" }}\n\
         [[services.app.access]]\npath_prefix = \"/api\"\nbasic_auth = {{ htpasswd = \"{}\", pass_authorization = true }}\n",
        app.addr,
        users.display(),
        users.display(),
    ));
    let mut c = KeepAlive::connect(proxy.addr()).await.unwrap();
    for (user, password) in [
        ("bcrypt-user", "correct horse"),
        ("sha-user", "battery staple"),
        ("apr1-user", "tr0ub4dor"),
    ] {
        let right = basic(user, password);
        let answer = c
            .get_with("/admin/headers", &[("authorization", &right)])
            .await
            .unwrap();
        assert_eq!(answer.status, 200, "{user}");
        // The login is the proxy's business: the backend does not get it.
        assert!(
            !answer.body.to_lowercase().contains("authorization"),
            "{user}: {}",
            answer.body
        );
        let wrong = basic(user, "guess");
        let answer = c
            .get_with("/admin/headers", &[("authorization", &wrong)])
            .await
            .unwrap();
        assert_eq!(answer.status, 401, "{user}");
        assert_eq!(
            answer.headers["www-authenticate"],
            "Basic realm=\"admin area\", charset=\"UTF-8\""
        );
    }
    let answer = c.get("/admin/").await.unwrap();
    assert_eq!(answer.status, 401);
    assert_eq!(answer.body, "login required\n");
    let answer = c
        .get_with(
            "/admin/",
            &[("authorization", &basic("nobody", "tr0ub4dor"))],
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 401);
    // pass_authorization: this route's backend gets the header.
    let right = basic("sha-user", "battery staple");
    let answer = c
        .get_with("/api/headers", &[("authorization", &right)])
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    assert!(
        answer.body.contains(&format!("authorization: {right}")),
        "{}",
        answer.body
    );
    let answer = c.get("/api/x").await.unwrap();
    assert_eq!(answer.status, 401);
    assert_eq!(
        answer.headers["www-authenticate"],
        "Basic realm=\"restricted\", charset=\"UTF-8\""
    );
    // Elsewhere, no login is asked for.
    assert_eq!(c.get("/").await.unwrap().status, 200);
    assert_eq!(
        proxy.metric("switchback_access_denied_total{reason=\"auth\",service=\"app\"}"),
        Some(6.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_rate_gets_429_and_another_client_is_not_affected() {
    let app = Upstream::start("blue");
    let proxy = Proxy::start(&format!(
        "[services.app]\nactive = \"blue\"\npools.blue = [\"{}\"]\n\
         [[services.app.access]]\npath_prefix = \"/login\"\nrate = {{ limit = \"5/s\", burst = 10 }}\n",
        app.addr
    ));
    // A second client, at 2 requests a second, all through the first one's flood.
    let addr = proxy.addr();
    let calm = tokio::spawn(async move {
        let mut c = KeepAlive::connect_from(addr, "127.0.0.2").await.unwrap();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut statuses = Vec::new();
        for _ in 0..8 {
            tick.tick().await;
            statuses.push(c.get("/login").await.unwrap().status.as_u16());
        }
        statuses
    });
    // The flood: 50 requests a second for 4 s.
    let mut c = KeepAlive::connect(proxy.addr()).await.unwrap();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let started = Instant::now();
    let (mut passed, mut limited) = (0u32, 0u32);
    for _ in 0..200 {
        tick.tick().await;
        let answer = c.get("/login").await.unwrap();
        match answer.status.as_u16() {
            200 => passed += 1,
            429 => {
                limited += 1;
                let wait: u64 = answer.headers["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!((1..=1).contains(&wait), "Retry-After {wait}");
            }
            other => panic!("status {other}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // The burst of 10 and the first, then 5 a second.
    let expected = 11.0 + 5.0 * elapsed;
    assert!(
        (f64::from(passed) - expected).abs() <= 3.0,
        "{passed} passed in {elapsed:.2} s, about {expected:.0} expected"
    );
    assert_eq!(passed + limited, 200);
    assert_eq!(calm.await.unwrap(), vec![200; 8]);
    // Other paths are not limited.
    assert_eq!(c.get("/").await.unwrap().status, 200);
    assert_eq!(
        proxy.metric("switchback_access_denied_total{reason=\"rate\",service=\"app\"}"),
        Some(f64::from(limited))
    );
}

/// The rules hold on pingora's HTTP/2 path too: curl over TLS with ALPN h2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rules_hold_over_http2() {
    let app = Upstream::start("blue");
    let mut proxy = Proxy::unstarted(true);
    let dir = proxy.dir.path().to_path_buf();
    let (cert, key) = support::pebble::self_signed(&["app.switchback.test"]);
    std::fs::write(dir.join("app.pem"), &cert).unwrap();
    std::fs::write(dir.join("app.key"), &key).unwrap();
    let users = dir.join("users");
    htpasswd(&users, "-B", "alice", "wonderland");
    proxy.launch(&format!(
        "[services.app]\nhosts = [\"app.switchback.test\"]\nactive = \"blue\"\npools.blue = [\"{}\"]\n\
         tls = {{ cert = \"{d}/app.pem\", key = \"{d}/app.key\" }}\n\
         [[services.app.access]]\npath_prefix = \"/admin\"\nbasic_auth = {{ htpasswd = \"{}\" }}\n\
         [[services.app.access]]\npath_prefix = \"/internal\"\nallow = [\"10.0.0.0/8\"]\n",
        app.addr,
        users.display(),
        d = dir.display()
    ));
    let port = proxy.https_port.unwrap();
    let curl = |path: &str, extra: &[&str]| {
        let out = Command::new("curl")
            .args(["-sS", "--http2", "--cacert"])
            .arg(dir.join("app.pem"))
            .args([
                "--resolve",
                &format!("app.switchback.test:{port}:127.0.0.1"),
            ])
            .args(["-o", "/dev/null", "-w", "%{http_version} %{http_code}"])
            .args(extra)
            .arg(format!("https://app.switchback.test:{port}{path}"))
            .output()
            .expect("curl is installed");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(curl("/", &[]), "2 200");
    assert_eq!(curl("/admin/", &[]), "2 401");
    assert_eq!(curl("/admin/", &["-u", "alice:wonderland"]), "2 200");
    assert_eq!(curl("/admin/", &["-u", "alice:rabbit"]), "2 401");
    assert_eq!(curl("/internal/x", &[]), "2 403");
}
