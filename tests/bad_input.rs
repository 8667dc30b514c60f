//! Bad input of every kind gets a clear error and changes nothing: config files, CLI commands,
//! raw control-socket lines, abusive control clients, and requests the proxy cannot route.

mod support;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use support::*;

fn generation(proxy: &Proxy) -> u64 {
    proxy.status()["generation"].as_u64().unwrap()
}

/// Runs the CLI, expects exit 1 and an error code on stderr, and checks nothing changed.
fn refused(proxy: &Proxy, args: &[&str], code: &str) -> String {
    let before = proxy.status();
    let out = proxy.cli(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "switchback {args:?} should be refused; stderr: {stderr}"
    );
    assert!(
        stderr.contains(code),
        "switchback {args:?}: expected {code} in: {stderr}"
    );
    let after = proxy.status();
    assert_eq!(
        before["generation"], after["generation"],
        "switchback {args:?} changed the state"
    );
    assert_eq!(
        before["services"], after["services"],
        "switchback {args:?} changed the state"
    );
    stderr
}

#[test]
fn refused_commands_change_nothing() {
    let blue = Upstream::start("blue");
    let mut green = Upstream::start("green");
    let proxy = Proxy::start(&blue_green(&blue, &green));
    proxy.wait_health("app", "green", "healthy");

    let e = refused(&proxy, &["switch", "gren"], "unknown_pool");
    assert!(
        e.contains("pools: blue, green"),
        "the error lists the pools: {e}"
    );
    refused(
        &proxy,
        &["switch", "green", "-s", "nope"],
        "unknown_service",
    );
    refused(&proxy, &["rollback"], "no_previous_pool");
    refused(
        &proxy,
        &["pool", "set", "green", "127.0.0.1"],
        "bad_address",
    );
    refused(
        &proxy,
        &["pool", "set", "green", "127.0.0.1:1,127.0.0.1:1"],
        "bad_address",
    );
    refused(
        &proxy,
        &["pool", "set", "purple", "127.0.0.1:9"],
        "unknown_pool",
    );

    // New backends that never become healthy: --wait gives up and leaves the pool as it was.
    let dead = free_port();
    let start = Instant::now();
    let e = refused(
        &proxy,
        &[
            "pool",
            "set",
            "green",
            &format!("127.0.0.1:{dead}"),
            "--wait",
            "--timeout",
            "1s",
        ],
        "health_timeout",
    );
    assert!(
        e.contains(&format!("127.0.0.1:{dead}")),
        "the error names the failing backend: {e}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "--timeout 1s was not honoured"
    );

    // A pool with no healthy backend is refused, unless forced.
    green.stop();
    proxy.wait_health("app", "green", "down");
    let e = refused(&proxy, &["switch", "green"], "no_healthy_backend");
    assert!(e.contains("--force"), "the error says how to override: {e}");
    let gen = generation(&proxy);
    proxy.cli_ok(&["switch", "green", "--force"]);
    assert_eq!(generation(&proxy), gen + 1);
    assert_eq!(proxy.active_pool("app"), "green");
}

#[test]
fn several_services_need_one_named() {
    let blue = Upstream::start("blue");
    let green = Upstream::start("green");
    let other = Upstream::start("other");
    let services = format!(
        "{}\n[services.admin]\nhosts = [\"admin.test\"]\nactive = \"one\"\npools.one = [\"{}\"]\n",
        blue_green(&blue, &green),
        other.addr
    );
    let proxy = Proxy::start(&services);
    // Health settles first: a first probe answering between the two status reads would look
    // like a change.
    proxy.wait_health("app", "blue", "healthy");
    proxy.wait_health("app", "green", "healthy");
    let e = refused(&proxy, &["switch", "green"], "service_required");
    assert!(
        e.contains("admin, app"),
        "the error lists the services: {e}"
    );
    proxy.cli_ok(&["switch", "green", "-s", "app", "--force"]);
}

#[test]
fn raw_protocol_errors_are_json_and_the_connection_survives() {
    let blue = Upstream::start("blue");
    let green = Upstream::start("green");
    let proxy = Proxy::start(&blue_green(&blue, &green));
    let mut c = RawControl::connect(&proxy.socket);

    let r = c.request("this is not json");
    assert_eq!(r["ok"], false);
    assert_eq!(r["error"]["code"], "bad_request", "{r}");
    let r = c.request(r#"{"cmd":"explode"}"#);
    assert_eq!(r["error"]["code"], "unknown_command", "{r}");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("switch"),
        "{r}"
    );
    let r = c.request(r#"{"cmd":"switch","pool":"green","colour":"red"}"#);
    assert_eq!(r["error"]["code"], "bad_request", "{r}");
    let r = c.request(r#"{"cmd":"switch"}"#);
    assert_eq!(r["error"]["code"], "bad_request", "{r}");
    let r = c.request(r#"{"cmd":"switch","pool":"gren"}"#);
    assert_eq!(r["error"]["code"], "unknown_pool", "{r}");
    let r = c.request(r#"{"cmd":"pool_set","pool":"green","backends":["nowhere"]}"#);
    assert_eq!(r["error"]["code"], "bad_address", "{r}");
    // Same connection, still answering.
    let r = c.request(r#"{"cmd":"status"}"#);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["generation"], 0, "nothing above changed the state: {r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_flooding_control_clients_block_nothing() {
    let blue = Upstream::start("blue");
    let green = Upstream::start("green");
    let proxy = Proxy::start(&blue_green(&blue, &green));

    // A client that connects and says nothing.
    let _silent = std::os::unix::net::UnixStream::connect(&proxy.socket).unwrap();
    // A client that sends 10 MB without a newline.
    let mut flood = RawControl::connect(&proxy.socket);
    let chunk = vec![b'x'; 1024 * 1024];
    let mut sent = 0;
    for _ in 0..10 {
        match flood.send_raw(&chunk) {
            Ok(()) => sent += chunk.len(),
            Err(_) => break, // the server hung up, as it should
        }
    }
    assert!(
        sent >= 1024 * 1024,
        "the server stopped reading before its limit"
    );
    let r = flood
        .read()
        .expect("an error line before the server hangs up");
    assert_eq!(r["error"]["code"], "line_too_long", "{r}");
    assert!(
        flood.read().is_none(),
        "the connection is closed after line_too_long"
    );

    // Meanwhile the control socket and the proxy serve others.
    assert_eq!(proxy.active_pool("app"), "blue");
    let answer = get_once(proxy.addr(), "/").await.unwrap();
    assert_eq!(answer.status, 200);
}

#[test]
fn the_control_socket_is_private_by_default() {
    let blue = Upstream::start("blue");
    let green = Upstream::start("green");
    let proxy = Proxy::start(&blue_green(&blue, &green));
    let mode = std::fs::metadata(&proxy.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn a_bad_config_file_is_refused_with_file_line_key_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchback.toml");
    let mut f = std::fs::File::create(&path).unwrap();
    write!(
        f,
        r#"[listen]
http = ["127.0.0.1:{}"]

[control]
socket = "{}/control.sock"

[state]
dir = "{}/state"

[services.app]
hosts = []
active = "gren"
pools.blue = ["127.0.0.1:9001"]
pools.green = ["127.0.0.1:99999"]
health = {{ path = "/", interval = "soon" }}

[services.web]
active = "a"
pools.a = ["127.0.0.1:9003"]
"#,
        free_port(),
        dir.path().display(),
        dir.path().display()
    )
    .unwrap();
    drop(f);
    let out = std::process::Command::new(BIN)
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let name = path.display().to_string();
    for expected in [
        format!("{name}:12: services.app.active: no pool named \"gren\" (pools: blue, green)"),
        format!("{name}:14: services.app.pools.green: \"127.0.0.1:99999\" is not an address"),
        format!("{name}:15: services.app.health.interval: \"soon\" is not a duration"),
        "take every host".to_string(),
    ] {
        assert!(
            stderr.contains(&expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    assert!(
        !dir.path().join("state").exists(),
        "a refused config must not create state"
    );
    assert!(!dir.path().join("control.sock").exists());

    let out = check_config(&path);
    assert_eq!(out.status.code(), Some(2), "check agrees with run");

    std::fs::write(&path, "[listen]\nhttp = [\"127.0.0.1:1\"]\nbogus = true\n").unwrap();
    let out = check_config(&path);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{name}:3: unknown field `bogus`")),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_requests_get_a_quick_503_with_a_reason() {
    let blue = Upstream::start("blue");
    let mut green = Upstream::start("green");
    let services = format!(
        "[services.app]\nhosts = [\"app.test\"]\nactive = \"blue\"\npools.blue = [\"{}\"]\npools.green = [\"{}\"]\nhealth = {{ path = \"/health\", interval = \"100ms\", timeout = \"1s\" }}\n",
        blue.addr, green.addr
    );
    let proxy = Proxy::start(&services);
    let started = Instant::now();
    let a = get_host(proxy.addr(), "unknown.test", "/").await.unwrap();
    assert_eq!(a.status, 503);
    assert!(a.body.contains("no service"), "{}", a.body);

    proxy.wait_health("app", "green", "healthy");
    green.stop();
    proxy.wait_health("app", "green", "down");
    proxy.cli_ok(&["switch", "green", "--force"]);
    let a = get_host(proxy.addr(), "app.test", "/").await.unwrap();
    assert_eq!(a.status, 503);
    assert!(a.body.contains("no healthy backend"), "{}", a.body);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answers must be quick, never a hang"
    );
}
