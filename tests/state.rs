//! The routing state survives a crash, and a state file that cannot be trusted is reported and
//! kept aside, never silently used or lost.

mod support;

use std::os::unix::fs::PermissionsExt;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_active_pool_survives_a_crash_and_restart() {
    let blue = Upstream::start("blue");
    let green = Upstream::start("green");
    let spare = Upstream::start("green");
    let mut proxy = Proxy::start(&blue_green(&blue, &green));
    proxy.wait_health("app", "green", "healthy");
    proxy.cli_ok(&["pool", "set", "green", &spare.addr.to_string(), "--wait"]);
    proxy.cli_ok(&["switch", "green"]);

    let state_file = proxy.state_dir().join("state.json");
    let mode = std::fs::metadata(&state_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the state file must be private");

    proxy.restart();
    let status = proxy.status();
    let app = &status["services"][0];
    assert_eq!(
        app["active"], "green",
        "the live pool wins over the file after a restart: {status}"
    );
    assert_eq!(
        app["configured_active"], "blue",
        "status still shows what the file says: {status}"
    );
    assert_eq!(app["previous"], "blue", "{status}");
    let green_pool = &app["pools"][1];
    assert_eq!(
        green_pool["backends"][0]["address"],
        spare.addr.to_string(),
        "{status}"
    );
    assert_eq!(green_pool["differs_from_config"], true, "{status}");

    let answer = get_once(proxy.addr(), "/").await.unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(
        spare.requests.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "traffic goes to the pool set before the restart"
    );
    proxy.cli_ok(&["rollback"]);
    assert_eq!(get_once(proxy.addr(), "/").await.unwrap().pool, "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_state_file_is_reported_and_set_aside() {
    let blue = Upstream::start("blue");
    let green = Upstream::start("green");
    let mut proxy = Proxy::start(&blue_green(&blue, &green));
    proxy.wait_health("app", "green", "healthy");
    proxy.cli_ok(&["switch", "green"]);
    proxy.kill();

    let state_file = proxy.state_dir().join("state.json");
    std::fs::write(&state_file, b"{\"version\": 1, \"generation\": 3, \"servi").unwrap();
    proxy.restart();

    let status = proxy.status();
    let notices = status["notices"].as_array().unwrap();
    assert_eq!(notices.len(), 1, "{status}");
    let notice = notices[0].as_str().unwrap();
    assert!(notice.contains("is not a valid state file"), "{notice}");
    assert!(notice.contains("set aside as"), "{notice}");
    assert_eq!(
        status["services"][0]["active"], "blue",
        "the config file's pool is live: {status}"
    );

    let kept: Vec<_> = std::fs::read_dir(proxy.state_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("state.json.rejected-"))
        .collect();
    assert_eq!(kept.len(), 1, "the bad file is kept for a human: {kept:?}");
    assert_eq!(
        std::fs::read(&kept[0]).unwrap(),
        b"{\"version\": 1, \"generation\": 3, \"servi",
        "kept byte for byte"
    );
    assert!(
        proxy.log().contains("is not a valid state file"),
        "and it is logged"
    );
    let out = proxy.cli_ok(&["status"]);
    assert!(
        out.contains("notice:"),
        "human status shows the notice too:\n{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_file_naming_a_pool_the_config_lacks_is_set_aside() {
    let blue = Upstream::start("blue");
    let green = Upstream::start("green");
    let mut proxy = Proxy::start(&blue_green(&blue, &green));
    proxy.kill();
    let state_file = proxy.state_dir().join("state.json");
    let text = std::fs::read_to_string(&state_file).unwrap();
    std::fs::write(
        &state_file,
        text.replace("\"active\": \"blue\"", "\"active\": \"red\""),
    )
    .unwrap();
    proxy.restart();
    let status = proxy.status();
    let notice = status["notices"][0]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        notice.contains("pool \"red\" is not in the config file"),
        "{status}"
    );
    assert_eq!(status["services"][0]["active"], "blue");
}

#[test]
fn a_second_proxy_on_the_same_state_dir_is_refused() {
    let blue = Upstream::start("blue");
    let green = Upstream::start("green");
    let proxy = Proxy::start(&blue_green(&blue, &green));
    // Same state dir, different port and socket.
    let text = std::fs::read_to_string(&proxy.config)
        .unwrap()
        .replace(
            &format!("127.0.0.1:{}", proxy.port),
            &format!("127.0.0.1:{}", free_port()),
        )
        .replace(
            &format!("127.0.0.1:{}", proxy.admin_port),
            &format!("127.0.0.1:{}", free_port()),
        )
        .replace("control.sock", "other.sock");
    let other = proxy.dir.path().join("other.toml");
    std::fs::write(&other, text).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["run", "--config"])
        .arg(&other)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("another switchback is using this state dir"),
        "{stderr}"
    );
    assert_eq!(
        proxy.active_pool("app"),
        "blue",
        "the first proxy is untouched"
    );
}
