//! What a new install starts from: `switchback --version` names the commit it was built from,
//! and `switchback init` writes a starter config that passes `check` and serves, and never
//! overwrites a file.

mod support;

use std::process::{Command, Output};
use std::time::Duration;

use support::*;

fn switchback(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("SWITCHBACK_SOCKET")
        .env_remove("SWITCHBACK_CONFIG")
        .output()
        .expect("run switchback")
}

#[test]
fn version_names_the_release_and_the_commit() {
    let out = switchback(&["--version"]);
    assert!(out.status.success(), "{out:?}");
    let line = String::from_utf8(out.stdout).unwrap();
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8(o.stdout).unwrap().trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    assert_eq!(
        line.trim(),
        format!("switchback {} (commit {head})", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn init_prints_a_checked_acme_config_and_refuses_bad_values() {
    let out = switchback(&[
        "init",
        "--host",
        "app.example.com",
        "--backend",
        "127.0.0.1:8000",
        "--acme-email",
        "ops@example.com",
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("tls = \"acme\""), "{text}");
    assert!(text.contains("email = \"ops@example.com\""), "{text}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchback.toml");
    std::fs::write(&path, &text).unwrap();
    let checked = check_config(&path);
    assert!(checked.status.success(), "{checked:?}\n{text}");

    // A backend that is no address: the config error, exit 2, and nothing written.
    let bad = dir.path().join("bad.toml");
    let out = switchback(&[
        "init",
        "--host",
        "app.example.com",
        "--backend",
        "not an address",
        "--output",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("services.app.pools.blue"),
        "{out:?}"
    );
    assert!(!bad.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_writes_a_config_that_serves_and_never_overwrites_it() {
    let blue = Upstream::start("blue");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchback.toml");
    let socket = dir.path().join("control.sock");
    let state = dir.path().join("state");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let backend = blue.addr.to_string();
    let args = [
        "--socket",
        socket.to_str().unwrap(),
        "init",
        "--host",
        "localhost",
        "--backend",
        &backend,
        "--no-tls",
        "--http",
        &listen,
        "--state-dir",
        state.to_str().unwrap(),
        "--output",
        path.to_str().unwrap(),
    ];
    let out = switchback(&args);
    assert!(out.status.success(), "{out:?}");
    let written = std::fs::read_to_string(&path).unwrap();
    let checked = check_config(&path);
    assert!(checked.status.success(), "{checked:?}\n{written}");

    // Once more over the same file: refused, and the file is as it was.
    std::fs::write(&path, "# edited by hand\n").unwrap();
    let again = switchback(&args);
    assert_eq!(again.status.code(), Some(1), "{again:?}");
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("never overwrites"),
        "{again:?}"
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "# edited by hand\n"
    );
    std::fs::write(&path, &written).unwrap();

    // The written config serves the backend, and the CLI finds the proxy through it.
    let mut proxy = Command::new(BIN)
        .args(["run", "--config", path.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = listen.parse().unwrap();
    wait_for("the proxy to listen", Duration::from_secs(20), || {
        std::net::TcpStream::connect(addr).is_ok()
    });
    let answer = get_host(addr, "localhost", "/").await.unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.pool, "blue");
    let status = switchback(&["--config", path.to_str().unwrap(), "status", "--json"]);
    assert!(status.status.success(), "{status:?}");
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["services"][0]["active"], "blue", "{status}");
    proxy.kill().unwrap();
    proxy.wait().unwrap();
}

/// The package's man page, completions and starter config are what this binary generates.
/// They are committed so that `cargo deb` needs nothing but the release build; after a change
/// to the CLI or the starter, run this test with `SWITCHBACK_WRITE_GENERATED=1` and commit.
#[test]
fn packaged_files_are_what_the_binary_generates() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/debian");
    let files: [(&str, &[&str]); 5] = [
        ("switchback.1", &["manpage"]),
        ("completions/switchback.bash", &["completions", "bash"]),
        ("completions/_switchback", &["completions", "zsh"]),
        ("completions/switchback.fish", &["completions", "fish"]),
        (
            "switchback.toml",
            &[
                "init",
                "--host",
                "app.example.com",
                "--backend",
                "127.0.0.1:8000",
            ],
        ),
    ];
    let write = std::env::var_os("SWITCHBACK_WRITE_GENERATED").is_some();
    let mut stale = Vec::new();
    for (file, args) in files {
        let out = switchback(args);
        assert!(out.status.success(), "switchback {args:?}: {out:?}");
        let path = root.join(file);
        if write {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &out.stdout).unwrap();
        }
        if std::fs::read(&path).unwrap_or_default() != out.stdout {
            stale.push(file);
        }
    }
    assert!(
        stale.is_empty(),
        "packaging/debian/{stale:?} differ from what `switchback` generates now: run this test \
         with SWITCHBACK_WRITE_GENERATED=1 and commit the result"
    );
}
