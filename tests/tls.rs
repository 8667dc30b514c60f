//! TLS with certificates from a real ACME CA (Pebble): issuance, HTTP/1.1 and HTTP/2, renewal
//! under load without a failed handshake, restart without a new order, an unreachable CA,
//! External Account Binding, and broken certificate files.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::pebble::*;
use support::*;

const HOST: &str = "app.switchback.test";

/// `[services.app]` with TLS by ACME for [`HOST`].
fn acme_service(blue: &Upstream) -> String {
    format!(
        "[services.app]\nhosts = [\"{HOST}\"]\nactive = \"blue\"\npools.blue = [\"{}\"]\ntls = \"acme\"\n",
        blue.addr
    )
}

fn certs(proxy: &Proxy) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(&proxy.cli_ok(&["certs", "--json"])).unwrap();
    v["certs"].as_array().unwrap().clone()
}

fn served_serial(proxy: &Proxy, host: &str) -> Option<String> {
    certs(proxy)
        .into_iter()
        .find(|c| c["host"] == host)
        .and_then(|c| c["serial"].as_str().map(str::to_string))
}

/// Waits for the first certificate of `host`; returns its serial and how long it took.
fn wait_issued(proxy: &Proxy, pebble: &Pebble, host: &str) -> (String, Duration) {
    let start = Instant::now();
    let mut serial = None;
    let deadline = Duration::from_secs(60);
    while serial.is_none() {
        assert!(
            start.elapsed() < deadline,
            "no certificate for {host} after {deadline:?}: {:?}\nproxy log:\n{}\npebble log:\n{}",
            certs(proxy),
            proxy.log(),
            pebble.pebble_log()
        );
        serial = served_serial(proxy, host);
        if serial.is_none() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    (serial.unwrap(), start.elapsed())
}

/// A proxy with an HTTPS listener whose acme service (in front of `blue`) orders from a new
/// Pebble: `eab` are the bindings Pebble requires, `acme` extra lines of `[acme]`.
fn acme_proxy(blue: &Upstream, eab: &[(&str, &str)], acme: &str) -> (Proxy, Pebble) {
    let mut proxy = Proxy::unstarted(true);
    let pebble = Pebble::start(proxy.port, eab);
    proxy.launch(&format!(
        "{}{}",
        pebble.acme_section(acme),
        acme_service(blue)
    ));
    (proxy, pebble)
}

fn curl(args: &[&str]) -> std::process::Output {
    std::process::Command::new("curl")
        .args(args)
        .output()
        .expect("run curl")
}

/// An HTTP/2 GET of `path` on HOST at 127.0.0.1:`https` by curl, trusting the root in
/// `root_file`: its body, then what `write_out` says (curl's `-w`). Panics when curl fails.
fn curl_http2(
    root_file: &std::path::Path,
    https: u16,
    path: &str,
    write_out: &str,
    extra: &[&str],
) -> String {
    let resolve = format!("{HOST}:{https}:127.0.0.1");
    let url = format!("https://{HOST}:{https}{path}");
    let mut args = vec![
        "-sS",
        "--http2",
        "--cacert",
        root_file.to_str().unwrap(),
        "--resolve",
        &resolve,
        "-w",
        write_out,
    ];
    args.extend_from_slice(extra);
    args.push(&url);
    let out = curl(&args);
    assert!(
        out.status.success(),
        "curl --http2: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_gets_a_certificate_and_is_served_over_http1_and_http2() {
    let blue = Upstream::start("blue");
    let (proxy, pebble) = acme_proxy(&blue, &[], "");
    let (serial, took) = wait_issued(&proxy, &pebble, HOST);
    assert!(took < Duration::from_secs(20), "issuance took {took:?}");
    let root = pebble.issuing_root();
    let root_file = proxy.dir.path().join("pebble-root.pem");
    std::fs::write(&root_file, &root).unwrap();
    let https = proxy.https_port.unwrap();

    // A real client verifies the chain up to Pebble's root.
    let h1 = https_get(client_config(&root, &[b"http/1.1"]), https, HOST, "/hello")
        .await
        .unwrap();
    assert_eq!(h1.status, 200, "{h1:?}");
    assert_eq!(h1.body, "blue");
    assert_eq!(h1.serial, serial);
    assert_eq!(h1.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert!(
        h1.head
            .to_ascii_lowercase()
            .contains("strict-transport-security: max-age=31536000"),
        "HSTS on by default for ACME services: {}",
        h1.head
    );

    // HTTP/2 is negotiated by ALPN.
    let text = curl_http2(&root_file, https, "/hello", "\n%{http_version}", &[]);
    assert_eq!(text, "blue\n2", "HTTP/2 answer through the proxy");

    // Plain HTTP is redirected to HTTPS, keeping path and query; the challenge path is not.
    let plain = get_host(proxy.addr(), HOST, "/a/b?c=d").await.unwrap();
    assert_eq!(plain.status, 308);
    let out = curl(&[
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{redirect_url}",
        "-H",
        &format!("Host: {HOST}"),
        &proxy.url("/a/b?c=d"),
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("https://{HOST}:{https}/a/b?c=d")
    );
    let challenge = get_host(
        proxy.addr(),
        HOST,
        "/.well-known/acme-challenge/not-a-token",
    )
    .await
    .unwrap();
    assert_eq!(
        challenge.status, 404,
        "unknown tokens are 404, not redirected"
    );

    // The key is private; the certificate is listed with its issuer and next renewal.
    use std::os::unix::fs::PermissionsExt;
    let key_file = proxy.state_dir().join(format!("certs/{HOST}.pem"));
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let account = proxy.state_dir().join("acme/account.json");
    assert_eq!(
        std::fs::metadata(&account).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let c = &certs(&proxy)[0];
    assert!(c["issuer"].as_str().unwrap().contains("Pebble"), "{c}");
    assert!(c["next_renewal"].as_i64().unwrap() < c["not_after"].as_i64().unwrap());
    let human = proxy.cli_ok(&["certs"]);
    assert!(
        human.contains(HOST) && human.contains("acme") && human.contains(&serial),
        "{human}"
    );
    // And its expiry is a metric.
    assert_eq!(
        proxy.metric(&format!(
            "switchback_certificate_not_after_seconds{{name=\"{HOST}\"}}"
        )),
        c["not_after"].as_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_renewal_under_https_load_fails_no_handshake() {
    let blue = Upstream::start("blue");
    let (proxy, pebble) = acme_proxy(&blue, &[], "");
    let (old, _) = wait_issued(&proxy, &pebble, HOST);
    let root = pebble.issuing_root();
    let https = proxy.https_port.unwrap();
    let config = client_config(&root, &[b"http/1.1"]);

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let serials = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, done, failures, serials, config) = (
            stop.clone(),
            done.clone(),
            failures.clone(),
            serials.clone(),
            config.clone(),
        );
        clients.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                match https_get(config.clone(), https, HOST, "/").await {
                    Ok(a) if a.status == 200 => {
                        done.fetch_add(1, Ordering::SeqCst);
                        serials.lock().unwrap().push(a.serial);
                    }
                    Ok(a) => failures
                        .lock()
                        .unwrap()
                        .push(format!("status {}", a.status)),
                    Err(e) => failures.lock().unwrap().push(e),
                }
            }
        }));
    }
    let warm = done.load(Ordering::SeqCst);
    let d = done.clone();
    tokio::task::spawn_blocking(move || {
        wait_for(
            "handshakes before the renewal",
            Duration::from_secs(20),
            || d.load(Ordering::SeqCst) >= warm + 20,
        )
    })
    .await
    .unwrap();

    let p = Arc::new(proxy);
    let pr = p.clone();
    let out = tokio::task::spawn_blocking(move || pr.cli(&["certs", "renew", HOST, "--json"]))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "renew: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let renewed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let new = renewed["certs"][0]["serial"].as_str().unwrap().to_string();
    assert_ne!(new, old, "a renewal brings a new certificate");

    // Handshakes that start after the renewal returned see the new serial.
    let after = done.load(Ordering::SeqCst);
    let d = done.clone();
    tokio::task::spawn_blocking(move || {
        wait_for(
            "handshakes after the renewal",
            Duration::from_secs(20),
            || d.load(Ordering::SeqCst) >= after + 20,
        )
    })
    .await
    .unwrap();
    let fresh = https_get(config.clone(), https, HOST, "/").await.unwrap();
    assert_eq!(
        fresh.serial,
        new,
        "{:?}\n{}",
        certs(&p),
        p.log()
            .lines()
            .filter(|l| l.contains("certificate"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed handshakes or requests: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let serials = serials.lock().unwrap();
    assert!(serials.contains(&old) && serials.contains(&new));
    let tail = &serials[serials.len() - 10..];
    assert!(
        tail.iter().all(|s| *s == new),
        "after the renewal only the new certificate is served"
    );
    assert!(serials.len() >= 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_reuses_the_account_and_the_certificate() {
    let blue = Upstream::start("blue");
    let (mut proxy, pebble) = acme_proxy(&blue, &[], "");
    let (serial, _) = wait_issued(&proxy, &pebble, HOST);
    let account = std::fs::read(proxy.state_dir().join("acme/account.json")).unwrap();
    let orders_before = pebble.pebble_log().matches("POST /order-plz").count();
    assert!(orders_before >= 1, "Pebble logged the first order");

    proxy.restart();
    // Served at once from the state dir, before any order could complete.
    assert_eq!(
        served_serial(&proxy, HOST).as_deref(),
        Some(serial.as_str())
    );
    let root = pebble.issuing_root();
    let a = https_get(
        client_config(&root, &[b"http/1.1"]),
        proxy.https_port.unwrap(),
        HOST,
        "/",
    )
    .await
    .unwrap();
    assert_eq!(a.serial, serial);
    assert_eq!(
        std::fs::read(proxy.state_dir().join("acme/account.json")).unwrap(),
        account,
        "the account is reused"
    );
    assert_eq!(
        pebble.pebble_log().matches("POST /order-plz").count(),
        orders_before,
        "no new order after a restart"
    );
    let log = proxy.log();
    assert_eq!(
        log.matches("certificate loaded from the state dir").count(),
        1,
        "{log}"
    );
    assert_eq!(
        log.matches("ordering a certificate").count(),
        1,
        "only the first start orders: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_ca_keeps_the_old_certificate_reports_and_retries() {
    let blue = Upstream::start("blue");
    let (proxy, mut pebble) = acme_proxy(&blue, &[], "");
    let (serial, _) = wait_issued(&proxy, &pebble, HOST);
    let root = pebble.issuing_root();
    pebble.stop();

    let out = proxy.cli(&["certs", "renew", HOST]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("renew_failed") && stderr.contains("stays served"),
        "{stderr}"
    );

    let a = https_get(
        client_config(&root, &[b"http/1.1"]),
        proxy.https_port.unwrap(),
        HOST,
        "/",
    )
    .await
    .unwrap();
    assert_eq!(
        (a.status, a.serial.as_str()),
        (200, serial.as_str()),
        "the old certificate is still served"
    );
    // It retries by itself (retry_after = 1s, doubling), and says so.
    wait_for(
        "a retry after the failed renewal",
        Duration::from_secs(30),
        || {
            let c = &certs(&proxy)[0];
            c["failures_total"].as_u64().unwrap_or(0) >= 2
        },
    );
    let c = &certs(&proxy)[0];
    assert!(c["last_error"].as_str().unwrap().len() > 5, "{c}");
    assert_eq!(c["serial"], serial.as_str());
    assert!(
        proxy.log().contains("certificate order failed"),
        "the failure is logged"
    );
    let human = proxy.cli_ok(&["certs"]);
    assert!(human.contains("in a row"), "{human}");
    assert!(
        proxy
            .metric(&format!(
                "switchback_acme_failures_total{{name=\"{HOST}\"}}"
            ))
            .unwrap()
            >= 2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_account_binding_is_used_when_the_ca_requires_it() {
    const KID: &str = "kid-1";
    const KEY: &str = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";
    let blue = Upstream::start("blue");

    // Without the binding the CA refuses the account, and the error says so.
    let (refused, pebble) = acme_proxy(&blue, &[(KID, KEY)], "");
    wait_for(
        "the refused order to be reported",
        Duration::from_secs(30),
        || {
            certs(&refused)[0]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("account"))
        },
    );
    drop(refused);
    drop(pebble);

    let eab = format!("eab_kid = \"{KID}\"\neab_hmac_key = \"{KEY}\"");
    let (proxy, pebble) = acme_proxy(&blue, &[(KID, KEY)], &eab);
    wait_issued(&proxy, &pebble, HOST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_certificate_files_are_reported_and_never_take_down_the_others() {
    let blue = Upstream::start("blue");
    let other = Upstream::start("other");
    let mut proxy = Proxy::unstarted(true);
    let dir = proxy.dir.path().to_path_buf();
    let (good_cert, good_key) = self_signed(&["good.switchback.test"]);
    let (bad_cert, _) = self_signed(&["bad.switchback.test"]);
    let (_, wrong_key) = self_signed(&["bad.switchback.test"]);
    std::fs::write(dir.join("good.pem"), &good_cert).unwrap();
    std::fs::write(dir.join("good.key"), &good_key).unwrap();
    std::fs::write(dir.join("bad.pem"), &bad_cert).unwrap();
    std::fs::write(dir.join("bad.key"), &wrong_key).unwrap();
    let services = format!(
        "[services.good]\nhosts = [\"good.switchback.test\"]\nactive = \"a\"\npools.a = [\"{b}\"]\ntls = {{ cert = \"{d}/good.pem\", key = \"{d}/good.key\" }}\n\
         [services.bad]\nhosts = [\"bad.switchback.test\"]\nactive = \"a\"\npools.a = [\"{o}\"]\ntls = {{ cert = \"{d}/bad.pem\", key = \"{d}/bad.key\" }}\n\
         [services.missing]\nhosts = [\"missing.switchback.test\"]\nactive = \"a\"\npools.a = [\"{o}\"]\ntls = {{ cert = \"{d}/nope.pem\", key = \"{d}/nope.key\" }}\n",
        b = blue.addr,
        o = other.addr,
        d = dir.display()
    );
    proxy.launch(&services);
    let https = proxy.https_port.unwrap();

    // The good pair serves; the others are reported with their reason.
    let good = https_get(
        client_config(&good_cert, &[b"http/1.1"]),
        https,
        "good.switchback.test",
        "/",
    )
    .await
    .unwrap();
    assert_eq!((good.status, good.body.as_str()), (200, "blue"));
    let list = certs(&proxy);
    let by_host = |h: &str| list.iter().find(|c| c["host"] == h).unwrap().clone();
    assert_eq!(
        by_host("good.switchback.test")["last_error"],
        serde_json::Value::Null
    );
    let bad = by_host("bad.switchback.test");
    assert_eq!(bad["served"], false);
    assert!(
        bad["last_error"]
            .as_str()
            .unwrap()
            .contains("does not belong to the certificate"),
        "{bad}"
    );
    let missing = by_host("missing.switchback.test");
    assert!(
        missing["last_error"].as_str().unwrap().contains("nope.pem"),
        "{missing}"
    );
    assert!(
        proxy.log().contains("certificate files refused"),
        "logged at start"
    );
    let human = proxy.cli_ok(&["certs"]);
    assert!(human.contains("(none served)"), "{human}");

    // A host with no certificate of its own gets the default one: the handshake fails
    // verification for that name instead of serving someone else's silently.
    let wrong = https_get(
        client_config(&good_cert, &[b"http/1.1"]),
        https,
        "bad.switchback.test",
        "/",
    )
    .await;
    assert!(
        wrong.unwrap_err().contains("handshake"),
        "a client must not accept the default certificate for another name"
    );
    // Routing is untouched: plain HTTP to the same services still works.
    assert_eq!(
        get_host(proxy.addr(), "bad.switchback.test", "/")
            .await
            .unwrap()
            .body,
        "other"
    );

    // reload-certs says what is still wrong, exit 1, and keeps what is served.
    let out = proxy.cli(&["reload-certs"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cert_load_failed") && stderr.contains("bad.switchback.test"),
        "{stderr}"
    );
    // Fixed files are served after reload-certs.
    let (fixed_cert, fixed_key) = self_signed(&["bad.switchback.test"]);
    std::fs::write(dir.join("bad.pem"), &fixed_cert).unwrap();
    std::fs::write(dir.join("bad.key"), &fixed_key).unwrap();
    std::fs::write(dir.join("nope.pem"), &fixed_cert).unwrap();
    std::fs::write(dir.join("nope.key"), &fixed_key).unwrap();
    let out = proxy.cli(&["reload-certs"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fixed = https_get(
        client_config(&fixed_cert, &[b"http/1.1"]),
        https,
        "bad.switchback.test",
        "/",
    )
    .await
    .unwrap();
    assert_eq!((fixed.status, fixed.body.as_str()), (200, "other"));
    // The good one never changed.
    let good = https_get(
        client_config(&good_cert, &[b"http/1.1"]),
        https,
        "good.switchback.test",
        "/",
    )
    .await
    .unwrap();
    assert_eq!(good.status, 200);

    // A changed file on disk is picked up by itself, too.
    let (rotated_cert, rotated_key) = self_signed(&["good.switchback.test"]);
    std::fs::write(dir.join("good.key"), &rotated_key).unwrap();
    std::fs::write(dir.join("good.pem"), &rotated_cert).unwrap();
    let config = client_config(&rotated_cert, &[b"http/1.1"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if https_get(config.clone(), https, "good.switchback.test", "/")
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rotated files were not picked up: {:?}",
            certs(&proxy)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let renew = proxy.cli(&["certs", "renew", "good.switchback.test"]);
    assert_eq!(
        renew.status.code(),
        Some(1),
        "a file certificate cannot be renewed by ACME"
    );
    let renew = proxy.cli(&["certs", "renew", "nowhere.switchback.test"]);
    assert!(String::from_utf8_lossy(&renew.stderr).contains("unknown_host"));
}

#[test]
fn a_ca_that_never_answers_holds_up_nothing() {
    // A "CA" that accepts every connection and never sends a byte.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hung_addr = hung.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in hung.incoming().take(100) {
            held.push(s);
        }
    });
    let blue = Upstream::start("blue");
    let mut proxy = Proxy::unstarted(true);
    let dir = proxy.dir.path().to_path_buf();
    let (cert, key) = self_signed(&["files.switchback.test"]);
    std::fs::write(dir.join("files.pem"), &cert).unwrap();
    std::fs::write(dir.join("files.key"), &key).unwrap();
    proxy.launch(&format!(
        "[acme]\ndirectory = \"https://{hung_addr}/dir\"\ntimeout = \"1s\"\nretry_after = \"1s\"\n\n\
         {}\
         [services.files]\nhosts = [\"files.switchback.test\"]\nactive = \"a\"\npools.a = [\"{}\"]\ntls = {{ cert = \"{d}/files.pem\", key = \"{d}/files.key\" }}\n",
        acme_service(&blue),
        blue.addr,
        d = dir.display()
    ));

    // While the first order waits on the CA, everything else answers at once.
    let timed = |args: &[&str]| {
        let start = std::time::Instant::now();
        let out = proxy.cli(args);
        (out, start.elapsed())
    };
    let (out, took) = timed(&["certs", "--json"]);
    assert!(
        out.status.success() && took < Duration::from_secs(2),
        "certs took {took:?}"
    );
    let (out, took) = timed(&["reload-certs"]);
    assert!(
        out.status.success() && took < Duration::from_secs(2),
        "reload-certs took {took:?}"
    );
    let (_, took) = timed(&["certs", "renew", HOST]);
    assert!(took < Duration::from_secs(5), "certs renew took {took:?}");

    // Each call to the CA ends at acme.timeout, with an error that says so.
    wait_for("the hung order to fail", Duration::from_secs(20), || {
        certs(&proxy)
            .iter()
            .find(|c| c["host"] == HOST)
            .and_then(|c| c["last_error"].as_str())
            .is_some_and(|e| e.contains("no answer from the CA in 1s"))
    });
    // A file pair changed meanwhile is still picked up.
    let files_serial = |proxy: &Proxy| {
        certs(proxy)
            .into_iter()
            .find(|c| c["host"] == "files.switchback.test")
            .and_then(|c| c["serial"].as_str().map(str::to_string))
    };
    let before = files_serial(&proxy);
    assert!(before.is_some());
    let (cert2, key2) = self_signed(&["files.switchback.test"]);
    std::fs::write(dir.join("files.pem"), &cert2).unwrap();
    std::fs::write(dir.join("files.key"), &key2).unwrap();
    let (out, took) = timed(&["reload-certs"]);
    assert!(
        out.status.success() && took < Duration::from_secs(2),
        "reload-certs took {took:?}"
    );
    assert_ne!(files_serial(&proxy), before, "the new pair is served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_serves_the_same_certificate_with_no_failed_handshake_and_no_new_order() {
    let blue = Upstream::start("blue");
    let (mut proxy, pebble) = acme_proxy(&blue, &[], "");
    let (serial, _) = wait_issued(&proxy, &pebble, HOST);
    let orders_before = pebble.pebble_log().matches("POST /order-plz").count();
    let root = pebble.issuing_root();
    let https = proxy.https_port.unwrap();
    let config = client_config(&root, &[b"http/1.1"]);

    // New HTTPS connections (a handshake each) all through the upgrade.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let client = {
        let (stop, done, failures) = (stop.clone(), done.clone(), failures.clone());
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                match https_get(config.clone(), https, HOST, "/").await {
                    Ok(a) if a.status == 200 && a.serial == serial => {
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(a) => failures
                        .lock()
                        .unwrap()
                        .push(format!("status {} serial {}", a.status, a.serial)),
                    Err(e) => failures.lock().unwrap().push(e),
                }
            }
        })
    };
    let wait_more = |n: u64, what: &'static str| {
        let done = done.clone();
        let before = done.load(Ordering::SeqCst);
        tokio::task::spawn_blocking(move || {
            wait_for(what, Duration::from_secs(20), || {
                done.load(Ordering::SeqCst) >= before + n
            })
        })
    };
    wait_more(20, "handshakes before the upgrade")
        .await
        .unwrap();

    let serving = proxy.status()["pid"].as_u64().unwrap();
    let (old_pid, new_pid) = proxy.upgrade();
    assert_eq!(old_pid, serving);
    assert_eq!(proxy.status()["pid"].as_u64(), Some(new_pid));
    // Past the old process's hand-off window: only the new one answers now.
    wait_exited(old_pid);
    wait_more(20, "handshakes after the upgrade").await.unwrap();
    stop.store(true, Ordering::SeqCst);
    client.await.unwrap();
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed handshakes or requests: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(
        pebble.pebble_log().matches("POST /order-plz").count(),
        orders_before,
        "the new process loaded the certificate: no new order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_adds_an_acme_host_orders_its_certificate() {
    const API: &str = "api.switchback.test";
    let blue = Upstream::start("blue");
    let (mut proxy, pebble) = acme_proxy(&blue, &[], "");
    let (serial, _) = wait_issued(&proxy, &pebble, HOST);

    proxy.rewrite(&format!(
        "{}{}\n[services.api]\nhosts = [\"{API}\"]\nactive = \"blue\"\npools.blue = [\"{}\"]\ntls = \"acme\"\n",
        pebble.acme_section(""),
        acme_service(&blue),
        blue.addr
    ));
    let reply: serde_json::Value =
        serde_json::from_str(&proxy.cli_ok(&["reload", "--json"])).unwrap();
    assert!(
        reply["changes"]
            .to_string()
            .contains(&format!("TLS host \\\"{API}\\\" added")),
        "{reply}"
    );
    assert_eq!(reply["needs_upgrade"], serde_json::json!([]));
    let (api_serial, _) = wait_issued(&proxy, &pebble, API);
    assert_ne!(api_serial, serial);

    // Both served over HTTPS, each with its own certificate, by the same process.
    let root = pebble.issuing_root();
    let https = proxy.https_port.unwrap();
    let a = https_get(client_config(&root, &[b"http/1.1"]), https, API, "/")
        .await
        .unwrap();
    assert_eq!((a.status, a.serial.as_str()), (200, api_serial.as_str()));
    let a = https_get(client_config(&root, &[b"http/1.1"]), https, HOST, "/")
        .await
        .unwrap();
    assert_eq!((a.status, a.serial.as_str()), (200, serial.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_over_tls_is_carried_and_its_backend_is_told_https() {
    use std::io::{Read, Write};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A backend that answers the upgrade, sends the X-Forwarded-Proto it was given, then
    // echoes.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if conn.read(&mut byte).unwrap_or(0) != 1 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_lowercase();
                let proto = head
                    .lines()
                    .find_map(|l| l.strip_prefix("x-forwarded-proto: "))
                    .unwrap_or("none")
                    .to_string();
                let answer = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\r\n{proto:<5}"
                );
                conn.write_all(answer.as_bytes()).unwrap();
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = conn.read(&mut buf) {
                    if conn.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let mut proxy = Proxy::unstarted(true);
    let dir = proxy.dir.path().to_path_buf();
    let (cert, key) = self_signed(&["ws.switchback.test"]);
    std::fs::write(dir.join("ws.pem"), &cert).unwrap();
    std::fs::write(dir.join("ws.key"), &key).unwrap();
    proxy.launch(&format!(
        "[services.ws]\nhosts = [\"ws.switchback.test\"]\nactive = \"a\"\npools.a = [\"{backend}\"]\ntls = {{ cert = \"{d}/ws.pem\", key = \"{d}/ws.key\" }}\n",
        d = dir.display()
    ));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", proxy.https_port.unwrap()))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("ws.switchback.test").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(client_config(&cert, &[b"http/1.1"]))
        .connect(name, tcp)
        .await
        .unwrap();
    tls.write_all(
        b"GET /ws HTTP/1.1\r\nhost: ws.switchback.test\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(tls.read_u8().await.unwrap());
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mut proto = [0u8; 5];
    tls.read_exact(&mut proto).await.unwrap();
    assert_eq!(
        &proto, b"https",
        "the backend was told the client came over TLS"
    );
    for message in ["ping", "a longer message over TLS"] {
        tls.write_all(message.as_bytes()).await.unwrap();
        let mut back = vec![0u8; message.len()];
        tls.read_exact(&mut back).await.unwrap();
        assert_eq!(back, message.as_bytes());
    }
    let status = proxy.status();
    assert_eq!(
        status["services"][0]["pools"][0]["long_lived"], 1,
        "{status}"
    );
}

/// HTTP/2 requests do not pass through the connection loop that writes HTTP/1.x requests'
/// forwarding headers, and run as tasks of their own: both the filter's forwarding headers and
/// the backend read deadline must hold there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http2_the_backend_is_told_the_client_and_a_silent_backend_gets_504() {
    let blue = Upstream::start("blue");
    let mut proxy = Proxy::unstarted(true);
    let pebble = Pebble::start(proxy.port, &[]);
    proxy.launch(&format!(
        "{}{}read_timeout = \"300ms\"\n",
        pebble.acme_section(""),
        acme_service(&blue)
    ));
    wait_issued(&proxy, &pebble, HOST);
    let root_file = proxy.dir.path().join("pebble-root.pem");
    std::fs::write(&root_file, pebble.issuing_root()).unwrap();
    let https = proxy.https_port.unwrap();
    let h2 = |path: &str, extra: &[&str]| {
        curl_http2(
            &root_file,
            https,
            path,
            "\n%{http_version} %{http_code}",
            extra,
        )
    };
    let seen = h2(
        "/headers",
        &["-H", "X-Forwarded-For: 6.6.6.6", "-H", "X-Real-IP: 7.7.7.7"],
    );
    assert!(seen.ends_with("\n2 200"), "{seen}");
    assert!(seen.contains("x-forwarded-for: 127.0.0.1\n"), "{seen}");
    assert!(seen.contains("x-forwarded-proto: https\n"), "{seen}");
    assert!(
        !seen.contains("6.6.6.6") && !seen.contains("x-real-ip"),
        "{seen}"
    );
    let start = std::time::Instant::now();
    let slow = h2("/slow?ms=5000", &[]);
    assert!(slow.ends_with("\n2 504"), "{slow}");
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
}
