//! `switchback upgrade`: a new process takes the listening sockets over under load, with no
//! failed request and no refused connection; one that cannot start leaves the old one serving.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use support::*;

fn status_pid(proxy: &Proxy) -> u64 {
    proxy.status()["pid"].as_u64().expect("status has the pid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_upgrades_under_load_fail_nothing_and_keep_the_state() {
    let blue = Upstream::start("blue");
    let green = Upstream::start("green");
    let mut proxy = Proxy::start(&blue_green(&blue, &green));
    proxy.wait_health("app", "green", "healthy");
    proxy.cli_ok(&["switch", "green"]);

    // Keep-alive clients, and ones that open a new connection for every request: a refused
    // connection shows there.
    let load = Load::start(proxy.addr(), "app.test", 2, 2, |a| {
        a.status == 200 && a.pool == "green"
    });

    let mut pids = vec![status_pid(&proxy)];
    for i in 0..3 {
        load.wait_for_more(50, "requests before the upgrade");
        let (_, new_pid) = proxy.upgrade();
        assert!(!pids.contains(&new_pid), "upgrade {i}: pid {new_pid} again");
        // `upgrade` returned: the new process answers, and it serves.
        assert_eq!(status_pid(&proxy), new_pid, "upgrade {i}");
        pids.push(new_pid);
        assert_eq!(proxy.active_pool("app"), "green", "upgrade {i}");
        // The old process drained and went away.
        wait_exited(pids[pids.len() - 2]);
    }
    load.wait_for_more(50, "requests after the upgrades");
    load.stop_with_no_failure().await;
    // The state went along: the generation of the switch, and green.
    assert_eq!(proxy.status()["generation"], 1);
    let log = proxy.log();
    assert_eq!(
        log.matches("upgrade: took the listening sockets over")
            .count(),
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_process_that_cannot_start_leaves_the_old_one_serving() {
    let blue = Upstream::start("blue");
    let green = Upstream::start("green");
    let mut proxy = Proxy::start(&blue_green(&blue, &green));
    let pid = status_pid(&proxy);

    // The new process reads the file again, and this one does not parse.
    proxy.rewrite("[services.app]\nactive = \"blue\"\npools.blue = [\"nowhere\"]\n");
    let out = proxy.cli(&["upgrade"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("upgrade_failed"), "{stderr}");
    assert!(stderr.contains("keeps serving"), "{stderr}");

    assert_eq!(status_pid(&proxy), pid);
    let a = get_once(proxy.addr(), "/").await.unwrap();
    assert_eq!((a.status.as_u16(), a.pool.as_str()), (200, "blue"));
    // Changes go on in the old process: it thawed.
    proxy.wait_health("app", "green", "healthy");
    proxy.cli_ok(&["switch", "green"]);
    assert_eq!(proxy.active_pool("app"), "green");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_process_closes_idle_kept_alive_connections_while_it_drains() {
    use std::io::{Read, Write};
    let blue = Upstream::start("blue");
    let proxy = Proxy::start(&format!(
        "[services.app]\nactive = \"blue\"\npools.blue = [\"{}\"]\n",
        blue.addr
    ));
    // Connections that made a request and wait, kept alive: one for longer than the second
    // after which a waiting connection watches for the stop (it is woken by it), one for less
    // (it looks when that second is up).
    let mut answer = [0u8; 1024];
    let kept_alive = || {
        let mut idle = std::net::TcpStream::connect(proxy.addr()).unwrap();
        idle.write_all(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
            .unwrap();
        let mut answer = [0u8; 1024];
        let n = idle.read(&mut answer).unwrap();
        assert!(String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 200"));
        idle
    };
    let mut long_idle = kept_alive();
    // What is tested is a connection idle for more than that second: the time is the
    // condition.
    std::thread::sleep(Duration::from_millis(1300));
    let mut idle = kept_alive();
    // And a request in flight, which holds the process up while it drains.
    let addr = proxy.addr();
    let slow = tokio::spawn(async move { get_once(addr, "/slow?ms=3000").await });
    wait_for(
        "the slow request at the backend",
        Duration::from_secs(5),
        || blue.slow_in_flight.load(Ordering::SeqCst) == 1,
    );

    let pid = proxy.pid().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-s", "TERM", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    // The idle connections are closed at once, not when the process exits (3 s on, with the
    // slow request), nor, for the one that watches, when its keep-alive ends.
    long_idle
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let closed = long_idle.read(&mut answer);
    assert!(
        matches!(closed, Ok(0)),
        "the connection idle for long is still open: {closed:?}"
    );
    idle.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let closed = idle.read(&mut answer);
    assert!(
        matches!(closed, Ok(0)),
        "the idle connection is still open: {closed:?}"
    );
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the process is still draining"
    );
    let a = slow.await.unwrap().unwrap();
    assert_eq!(a.status, 200, "the request in flight finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_binary_that_does_not_start_leaves_the_old_one_serving() {
    let blue = Upstream::start("blue");
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("switchback");
    std::fs::copy(env!("CARGO_BIN_EXE_switchback"), &bin).unwrap();
    let proxy = Proxy::start_binary(
        &bin,
        &format!(
            "[services.app]\nactive = \"blue\"\npools.blue = [\"{}\"]\n",
            blue.addr
        ),
    );
    let pid = status_pid(&proxy);

    // `install broken-switchback /usr/local/bin/switchback`: a new file at the same path.
    let broken = dir.path().join("broken");
    std::fs::write(
        &broken,
        "#!/bin/sh\necho 'this build is broken' >&2\nexit 70\n",
    )
    .unwrap();
    std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::rename(&broken, &bin).unwrap();
    let out = proxy.cli(&["upgrade"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("exit status: 70"), "{stderr}");
    assert!(stderr.contains("keeps serving"), "{stderr}");
    assert_eq!(status_pid(&proxy), pid);
    let a = get_once(proxy.addr(), "/").await.unwrap();
    assert_eq!((a.status.as_u16(), a.pool.as_str()), (200, "blue"));
}
