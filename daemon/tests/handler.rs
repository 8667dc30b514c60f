//! The control handler in process: every command's reply, and every error code the handler
//! gives, each with the live state left as it was. (Malformed lines, unknown commands and
//! over-long lines are refused by the socket server before a handler sees them; its own tests
//! cover those.)

mod support;

use std::time::Duration;

use support::{Plane, BLUE, GREEN};
use switchback_control::{
    BackendHealth, CertSourceKind, ErrorCode, Event, Reply, Request, RolloutOutcome,
};

fn switch(pool: &str) -> Request {
    Request::Switch {
        service: None,
        pool: pool.into(),
        force: false,
        wait_drain: false,
        drain_timeout: None,
    }
}

fn canary(pool: &str, percent: f64) -> Request {
    Request::Canary {
        service: None,
        pool: pool.into(),
        percent,
        force: false,
    }
}

fn rollout(steps: Option<Vec<f64>>) -> Request {
    Request::Rollout {
        service: None,
        pool: "green".into(),
        steps,
        interval: Some(Duration::from_secs(1)),
        max_error_rate: None,
        max_p95: None,
        min_requests: None,
        force: false,
    }
}

const HEALTH: &str = "health = { path = \"/health\", interval = \"1s\" }\n";

#[tokio::test]
async fn status_shows_the_live_state_and_the_config_side_by_side() {
    let p = Plane::new(HEALTH);
    p.set_health("app", BLUE, true);
    p.set_health("app", GREEN, false);
    let Reply::Status(s) = p.ask(Request::Status { service: None }).await.unwrap() else {
        panic!("status answers with a status reply")
    };
    assert_eq!(s.generation, 0);
    assert!(s.state_file.ends_with("state.json"), "{}", s.state_file);
    let app = &s.services[0];
    assert_eq!(
        (app.active.as_str(), app.configured_active.as_str()),
        ("blue", "blue")
    );
    assert_eq!(app.previous, None);
    assert_eq!(app.split.len(), 1);
    assert_eq!(
        (app.split[0].pool.as_str(), app.split[0].percent),
        ("blue", 100.0)
    );
    let health: Vec<BackendHealth> = app.pools.iter().map(|p| p.backends[0].health).collect();
    assert_eq!(health, vec![BackendHealth::Healthy, BackendHealth::Down]);
    assert_eq!(
        app.pools[1].backends[0].last_error.as_deref(),
        Some("status 503")
    );
    p.refused(
        Request::Status {
            service: Some("nope".into()),
        },
        ErrorCode::UnknownService,
    )
    .await;
}

#[tokio::test]
async fn switch_and_rollback_move_the_active_pool_and_refuse_what_cannot_work() {
    let p = Plane::new(HEALTH);
    p.set_health("app", BLUE, true);
    p.set_health("app", GREEN, false);
    p.refused(
        Request::Rollback {
            service: None,
            force: false,
        },
        ErrorCode::NoPreviousPool,
    )
    .await;
    p.refused(switch("gren"), ErrorCode::UnknownPool).await;
    let e = p
        .refused(switch("green"), ErrorCode::NoHealthyBackend)
        .await;
    assert!(
        e.message.contains("127.0.0.1:9002 down: status 503"),
        "{}",
        e.message
    );
    p.refused(
        Request::Switch {
            service: Some("web".into()),
            pool: "green".into(),
            force: false,
            wait_drain: false,
            drain_timeout: None,
        },
        ErrorCode::UnknownService,
    )
    .await;

    p.set_health("app", GREEN, true);
    let (reply, events) = p
        .ask_with_events(Request::Switch {
            service: None,
            pool: "green".into(),
            force: false,
            wait_drain: true,
            drain_timeout: Some(Duration::from_secs(1)),
        })
        .await;
    let Reply::Switch(r) = reply.unwrap() else {
        panic!("a switch reply")
    };
    assert_eq!(
        (
            r.pool.as_str(),
            r.previous.as_str(),
            r.changed,
            r.generation
        ),
        ("green", "blue", true, 1)
    );
    let drain = r.drain.expect("--wait-drain reports the drain");
    assert!(drain.drained && drain.in_flight == 0, "{drain:?}");
    assert!(
        events.is_empty(),
        "nothing was in flight to report: {events:?}"
    );
    assert_eq!(
        p.controller
            .table()
            .configured("app")
            .active_pool()
            .name
            .as_ref(),
        "green"
    );

    let Reply::Switch(again) = p.ask(switch("green")).await.unwrap() else {
        panic!()
    };
    assert!(
        !again.changed,
        "switching to the active pool changes nothing"
    );
    assert_eq!(again.generation, 1);

    let Reply::Switch(back) = p
        .ask(Request::Rollback {
            service: None,
            force: false,
        })
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(
        (back.pool.as_str(), back.previous.as_str(), back.generation),
        ("blue", "green", 2)
    );
}

#[tokio::test]
async fn several_services_need_a_name() {
    let p = Plane::new(
        "[services.web]\nhosts = [\"web.example.com\"]\nactive = \"a\"\npools.a = [\"127.0.0.1:9003\"]\n",
    );
    let e = p.refused(switch("green"), ErrorCode::ServiceRequired).await;
    assert!(e.message.contains("app, web"), "{}", e.message);
    let Reply::Status(s) = p
        .ask(Request::Status {
            service: Some("web".into()),
        })
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(s.services.len(), 1, "status of the one service named");
}

#[tokio::test]
async fn canary_percentages_are_checked_and_applied() {
    let p = Plane::new("");
    for bad in [150.0, -1.0, 12.34, f64::NAN] {
        p.refused(canary("green", bad), ErrorCode::BadPercent).await;
    }
    p.refused(canary("blue", 10.0), ErrorCode::ActivePool).await;
    p.refused(canary("red", 10.0), ErrorCode::UnknownPool).await;
    let Reply::Canary(c) = p.ask(canary("green", 12.5)).await.unwrap() else {
        panic!()
    };
    assert_eq!(
        (c.percent, c.active.as_str(), c.previous.clone()),
        (12.5, "blue", None)
    );
    let Reply::Canary(c) = p.ask(canary("green", 0.0)).await.unwrap() else {
        panic!()
    };
    assert_eq!(
        c.previous.map(|v| v.percent),
        Some(12.5),
        "the canary it ended"
    );
    assert_eq!(c.generation, 2);
}

#[tokio::test]
async fn pool_set_replaces_backends_and_refuses_bad_ones() {
    let p = Plane::new("");
    let set = |backends: Vec<&str>| Request::PoolSet {
        service: None,
        pool: "green".into(),
        backends: backends.into_iter().map(String::from).collect(),
        wait: false,
        timeout: None,
    };
    p.refused(set(vec!["localhost"]), ErrorCode::BadAddress)
        .await;
    p.refused(set(vec![]), ErrorCode::BadAddress).await;
    let many: Vec<String> = (1..=65)
        .map(|i| format!("127.0.0.1:{}", 10_000 + i))
        .collect();
    let e = p
        .refused(
            set(many.iter().map(String::as_str).collect()),
            ErrorCode::BadAddress,
        )
        .await;
    assert!(e.message.contains("at most 64"), "{}", e.message);
    let Reply::PoolSet(r) = p
        .ask(set(vec!["127.0.0.1:9012", "127.0.0.1:9013"]))
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(r.previous_backends, vec![GREEN.to_string()]);
    assert_eq!(r.backends.len(), 2);
    let Reply::Status(s) = p.ask(Request::Status { service: None }).await.unwrap() else {
        panic!()
    };
    assert!(s.services[0].pools[1].differs_from_config);
}

#[tokio::test(start_paused = true)]
async fn pool_set_wait_times_out_on_backends_that_never_pass() {
    let p = Plane::new(HEALTH);
    let (reply, events) = p
        .ask_with_events(Request::PoolSet {
            service: None,
            pool: "green".into(),
            backends: vec!["127.0.0.1:9012".into()],
            wait: true,
            timeout: Some(Duration::from_secs(3)),
        })
        .await;
    let e = reply.unwrap_err();
    assert_eq!(e.code, ErrorCode::HealthTimeout, "{}", e.message);
    assert!(
        e.message.contains("127.0.0.1:9012: unknown"),
        "{}",
        e.message
    );
    assert!(
        matches!(
            events[..],
            [Event::WaitingHealth {
                healthy: 0,
                total: 1,
                ..
            }]
        ),
        "{events:?}"
    );
    assert_eq!(p.controller.generation().await, 0, "nothing changed");
}

#[tokio::test]
async fn a_state_file_that_cannot_be_written_refuses_the_change() {
    let p = Plane::new("");
    let state = p.controller.state_path();
    std::fs::remove_file(&state).unwrap();
    std::fs::create_dir(&state).unwrap();
    let e = p
        .refused(switch("green"), ErrorCode::StateWriteFailed)
        .await;
    assert!(e.message.contains("nothing changed"), "{}", e.message);
    assert_eq!(
        p.controller
            .table()
            .configured("app")
            .active_pool()
            .name
            .as_ref(),
        "blue"
    );
}

#[tokio::test(start_paused = true)]
async fn rollouts_are_checked_refuse_concurrent_changes_and_abort() {
    let p = Plane::new("");
    let e = p
        .refused(rollout(Some(vec![50.0, 10.0])), ErrorCode::BadRollout)
        .await;
    assert!(e.message.contains("steps must increase"), "{}", e.message);
    p.refused(rollout(Some(vec![10.0, 100.5])), ErrorCode::BadRollout)
        .await;
    p.refused(
        Request::RolloutAbort { service: None },
        ErrorCode::NoRollout,
    )
    .await;
    p.refused(
        Request::RolloutWatch { service: None },
        ErrorCode::NoRollout,
    )
    .await;

    // No request ever reaches the canary, so it waits in its first step until aborted.
    let controller = p.controller.clone();
    let handler = std::sync::Arc::new(p.handler);
    let running = {
        let handler = handler.clone();
        tokio::spawn(async move {
            use switchback_control::{Caller, Handler, Progress};
            handler
                .handle(rollout(None), Caller::default(), Progress::discard())
                .await
        })
    };
    while controller.running_rollout("app").is_none() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ask = |r: Request| {
        let handler = handler.clone();
        async move {
            use switchback_control::{Caller, Handler, Progress};
            handler
                .handle(r, Caller::default(), Progress::discard())
                .await
        }
    };
    for r in [switch("green"), canary("green", 5.0), rollout(None)] {
        let e = ask(r).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::RolloutRunning, "{}", e.message);
    }
    let Reply::Rollout(aborted) = ask(Request::RolloutAbort { service: None }).await.unwrap()
    else {
        panic!()
    };
    assert_eq!(aborted.outcome, RolloutOutcome::Aborted);
    assert_eq!(aborted.step, 1, "the default steps start at 5%");
    assert_eq!(aborted.percent, 5.0);
    let Ok(Ok(Reply::Rollout(end))) = running.await else {
        panic!("the rollout answers")
    };
    assert_eq!(end.outcome, RolloutOutcome::Aborted);
    let Reply::Rollout(watched) = ask(Request::RolloutWatch { service: None }).await.unwrap()
    else {
        panic!()
    };
    assert_eq!(
        watched.outcome,
        RolloutOutcome::Aborted,
        "watch shows how the last one ended"
    );
    let live = controller.live_state().await;
    assert_eq!(
        live.services["app"].canary, None,
        "every client back on blue"
    );
}

#[tokio::test]
async fn a_rollout_needs_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let config = support::config(dir.path(), "[metrics]\nenabled = false\n");
    let controller = std::sync::Arc::new(
        switchback_daemon::Controller::start(
            std::sync::Arc::new(config),
            std::sync::Arc::new(switchback_proxy::Metrics::new(false)),
        )
        .unwrap(),
    );
    let handler = switchback_daemon::ControlHandler::new(controller, None);
    use switchback_control::{Caller, Handler, Progress};
    let e = handler
        .handle(rollout(None), Caller::default(), Progress::discard())
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::BadRollout);
    assert!(
        e.message.contains("[metrics] enabled = false"),
        "{}",
        e.message
    );
}

fn self_signed(name: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

#[tokio::test]
async fn certificate_commands_report_and_refuse() {
    let p = Plane::new("");
    p.refused(Request::Certs, ErrorCode::UnknownHost).await;

    let tls =
        "hosts = [\"a.example.com\"]\ntls = { cert = \"{dir}/c.pem\", key = \"{dir}/k.pem\" }\n";
    let p = Plane::with_certs(tls, |config| {
        let dir = config.state.dir.parent().unwrap();
        let (cert, key) = self_signed("a.example.com");
        std::fs::write(dir.join("c.pem"), cert).unwrap();
        std::fs::write(dir.join("k.pem"), key).unwrap();
        Some(std::sync::Arc::new(switchback_certs::CertManager::new(
            config,
        )))
    });
    let Reply::Certs(c) = p.ask(Request::Certs).await.unwrap() else {
        panic!()
    };
    assert_eq!(c.certs.len(), 1);
    assert_eq!(c.certs[0].source, CertSourceKind::File);
    assert!(c.certs[0].served, "{:?}", c.certs[0]);
    let e = p
        .refused(
            Request::CertsRenew {
                host: "b.example.com".into(),
            },
            ErrorCode::UnknownHost,
        )
        .await;
    assert!(
        e.message.contains("a.example.com"),
        "names the hosts: {}",
        e.message
    );
    let e = p
        .refused(
            Request::CertsRenew {
                host: "a.example.com".into(),
            },
            ErrorCode::RenewFailed,
        )
        .await;
    assert!(e.message.contains("served from files"), "{}", e.message);
    std::fs::write(p.dir.path().join("k.pem"), "not a key").unwrap();
    let e = p
        .refused(Request::ReloadCerts, ErrorCode::CertLoadFailed)
        .await;
    assert!(
        e.message.contains("keep the certificate they had"),
        "{}",
        e.message
    );
    let Reply::Certs(c) = p.ask(Request::Certs).await.unwrap() else {
        panic!()
    };
    assert!(
        c.certs[0].served,
        "the broken pair did not replace the served one"
    );
}

#[tokio::test]
async fn reload_applies_the_file_or_says_why_nothing_changed() {
    let p = Plane::new("");
    // The plane's file is not written yet: it cannot be read.
    let e = p
        .refused(Request::Reload { force: false }, ErrorCode::BadConfig)
        .await;
    assert!(e.message.contains("cannot read"), "{}", e.message);
    p.write_config("pools.red = [\"127.0.0.1:9003\"]\nread_timeout = \"never\"\n");
    let e = p
        .refused(Request::Reload { force: false }, ErrorCode::BadConfig)
        .await;
    assert!(
        e.message.contains("services.app.read_timeout"),
        "{}",
        e.message
    );

    p.write_config("pools.red = [\"127.0.0.1:9003\"]\n");
    let Reply::Reload(r) = p.ask(Request::Reload { force: false }).await.unwrap() else {
        panic!("reload answers with a reload reply")
    };
    assert_eq!(r.changes, ["service \"app\": pool \"red\" added"]);
    assert!(r.needs_upgrade.is_empty());
    assert_eq!(r.generation, 1);
    assert!(
        r.config_file.ends_with("switchback.toml"),
        "{}",
        r.config_file
    );

    // Red serves; a file without it is refused, then applied when forced.
    p.set_health("app", "127.0.0.1:9003", true);
    p.ask(switch("red")).await.unwrap();
    p.write_config("");
    let e = p
        .refused(Request::Reload { force: false }, ErrorCode::ReloadRefused)
        .await;
    assert!(e.message.contains("pool \"red\" serves"), "{}", e.message);
    let Reply::Reload(r) = p.ask(Request::Reload { force: true }).await.unwrap() else {
        panic!("reload answers with a reload reply")
    };
    assert_eq!(r.generation, 3);
    let live = p.controller.live_state().await;
    assert_eq!(live.services["app"].active, "blue");
    assert!(!live.services["app"].pools.contains_key("red"));
}

#[tokio::test]
async fn upgrade_needs_a_process_to_hand_over_and_a_frozen_plane_changes_nothing() {
    let p = Plane::new(HEALTH);
    // A handler with no upgrader (this one, in process) cannot start a new process.
    p.refused(Request::Upgrade, ErrorCode::UpgradeFailed).await;
    // While an upgrade hands over, no change is written: the new process owns the state.
    p.set_health("app", GREEN, true);
    p.controller.freeze(true);
    let e = p.refused(switch("green"), ErrorCode::Unavailable).await;
    assert!(e.message.contains("upgrade"), "{}", e.message);
    p.controller.freeze(false);
    p.ask(switch("green")).await.unwrap();
    assert_eq!(
        p.controller.live_state().await.services["app"].active,
        "green"
    );
}

#[tokio::test]
async fn a_fleet_node_without_etcd_refuses_changes_and_says_why() {
    use std::os::unix::fs::PermissionsExt;
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("fleet.key");
    std::fs::write(&key, [7u8; 32]).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Nothing listens on port 1: the node never reaches etcd.
    let p = Plane::new(&format!(
        "[fleet]\netcd = [\"http://127.0.0.1:1\"]\nnode = \"edge-1\"\nkey_file = \"{}\"\n",
        key.display()
    ));
    p.set_health("app", GREEN, true);
    for request in [
        switch("green"),
        canary("green", 10.0),
        Request::PoolSet {
            service: None,
            pool: "green".into(),
            backends: vec!["127.0.0.1:9012".into()],
            wait: false,
            timeout: None,
        },
    ] {
        let e = p.refused(request, ErrorCode::FleetUnreachable).await;
        assert!(
            e.message.contains("fleet store unreachable") && e.message.contains("nothing changed"),
            "{}",
            e.message
        );
    }
    let live = p.controller.live_state().await;
    assert_eq!(live.services["app"].active, "blue");
    assert_eq!(live.services["app"].canary, None);
    assert_eq!(live.generation, 0);
    // status says which node this is and why it is not connected.
    let Reply::Status(s) = p.ask(Request::Status { service: None }).await.unwrap() else {
        panic!("a status reply")
    };
    let fleet = s.fleet.expect("a fleet part");
    assert_eq!((fleet.node.as_str(), fleet.connected), ("edge-1", false));
    assert!(fleet.problem.is_some());
}
