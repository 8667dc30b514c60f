//! Fleet mode, against a real etcd (one member on loopback) and three switchback processes
//! sharing it: a change made through any node reaches every node before the command returns,
//! with no failed request; a canary keeps a client on the same pool whichever node it reaches;
//! two nodes changing one service at once cannot both win; a node that loses etcd keeps
//! serving and refuses changes, and catches up when etcd is back; a node that lags is named;
//! a node restarted while etcd is down starts on its last state; and a rollout whose driving
//! node dies ends on the stable pool.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::etcd::Etcd;
use support::*;

/// The shared key file of a fleet's nodes.
fn key_file(dir: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("fleet.key");
    std::fs::write(&path, b"0123456789abcdef0123456789abcdef-test-fleet-key").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// Three nodes of one fleet, each with the same services.
struct Fleet {
    nodes: Vec<Proxy>,
    _keys: tempfile::TempDir,
}

fn fleet_section(etcd: &Etcd, node: usize, key: &std::path::Path, ack_timeout: &str) -> String {
    format!(
        "[fleet]\netcd = [\"{}\"]\nnode = \"node-{node}\"\nack_timeout = \"{ack_timeout}\"\nkey_file = \"{}\"\n",
        etcd.url,
        key.display()
    )
}

impl Fleet {
    fn start(etcd: &Etcd, services: &str, ack_timeout: &str) -> Fleet {
        let keys = tempfile::tempdir().unwrap();
        let key = key_file(keys.path());
        let nodes = (1..=3)
            .map(|n| {
                Proxy::start(&format!(
                    "{}\n{services}",
                    fleet_section(etcd, n, &key, ack_timeout)
                ))
            })
            .collect::<Vec<_>>();
        let fleet = Fleet { nodes, _keys: keys };
        fleet.wait_all_connected();
        fleet
    }

    /// Waits until every node sees all three connected.
    fn wait_all_connected(&self) {
        wait_for(
            "every node to see three connected nodes",
            Duration::from_secs(20),
            || {
                self.nodes.iter().all(|n| {
                    let s = n.status();
                    let nodes = s["fleet"]["nodes"].as_array().cloned().unwrap_or_default();
                    nodes.len() == 3 && nodes.iter().all(|x| x["connected"] == true)
                })
            },
        );
    }

    fn node(&self, n: usize) -> &Proxy {
        &self.nodes[n - 1]
    }
}

/// etcd, a blue and a green upstream, and three nodes in front of them with green healthy.
fn blue_green_fleet(ack_timeout: &str) -> (Etcd, Upstream, Upstream, Fleet) {
    let etcd = Etcd::start();
    let (blue, green) = (Upstream::start("blue"), Upstream::start("green"));
    let fleet = Fleet::start(&etcd, &blue_green(&blue, &green), ack_timeout);
    fleet.node(1).wait_health("app", "green", "healthy");
    (etcd, blue, green, fleet)
}

fn generation(proxy: &Proxy) -> u64 {
    proxy.status()["generation"].as_u64().unwrap()
}

fn fleet_view(proxy: &Proxy) -> serde_json::Value {
    proxy.status()["fleet"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_through_one_node_reaches_every_node_before_it_returns() {
    let etcd = Etcd::start();
    let (blue, green) = (Upstream::start("blue"), Upstream::start("green"));
    let fleet = Fleet::start(&etcd, &blue_green(&blue, &green), "5s");
    for node in &fleet.nodes {
        node.wait_health("app", "green", "healthy");
    }
    let loads: Vec<Load> = fleet
        .nodes
        .iter()
        .map(|n| Load::start(n.addr(), "app.test", 2, 1, |a| a.status == 200))
        .collect();
    for load in &loads {
        load.wait_for_more(100, "requests before the switch");
    }

    let before = generation(fleet.node(1));
    let out = fleet.node(2).cli_ok(&["switch", "green"]);
    assert!(out.contains("switched blue -> green"), "{out}");
    // Every node serves green as soon as the command has returned: no wait here.
    for node in &fleet.nodes {
        let answer = get_once(node.addr(), "/").await.unwrap();
        assert_eq!(answer.pool, "green", "node on port {}", node.port);
    }
    for node in &fleet.nodes {
        assert_eq!(node.active_pool("app"), "green");
        assert_eq!(generation(node), before + 1);
    }
    for load in &loads {
        load.wait_for_more(100, "requests after the switch");
    }
    for load in loads {
        load.stop_with_no_failure().await;
    }

    // The desired state is in etcd; status and /metrics show the fleet.
    let state: serde_json::Value =
        serde_json::from_str(&etcd.get("/switchback/state").expect("the fleet state")).unwrap();
    assert_eq!(state["services"]["app"]["active"], "green");
    assert_eq!(state["generation"].as_u64(), Some(before + 1));
    let view = fleet_view(fleet.node(3));
    assert_eq!(view["node"], "node-3");
    assert_eq!(view["connected"], true);
    let nodes = view["nodes"].as_array().unwrap();
    assert_eq!(nodes[0]["name"], "node-3", "this node comes first: {view}");
    assert!(
        nodes
            .iter()
            .all(|n| n["generation"].as_u64() == Some(before + 1)),
        "{view}"
    );
    let table = fleet.node(3).cli_ok(&["status"]);
    assert!(table.contains("node node-3   connected to etcd"), "{table}");
    assert_eq!(
        fleet.node(1).metric("switchback_fleet_connected"),
        Some(1.0)
    );
    assert_eq!(
        fleet
            .node(1)
            .metric("switchback_fleet_applied_generation{node=\"node-2\"}"),
        Some((before + 1) as f64)
    );
    assert_eq!(
        fleet
            .node(1)
            .metric("switchback_fleet_node_connected{node=\"node-3\"}"),
        Some(1.0)
    );
    // The fleet's metrics pass Prometheus' own lint.
    assert_promtool_accepts(&fleet.node(1).admin_get("/metrics").1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_keeps_each_client_on_the_same_pool_on_every_node() {
    let (_etcd, _blue, _green, fleet) = blue_green_fleet("5s");
    fleet.node(1).cli_ok(&["canary", "green", "10"]);
    let mut on_green = 0;
    for client in 0..200 {
        // The first request draws the client's bucket (a signed cookie) on one node...
        let first = get_once(fleet.nodes[client % 3].addr(), "/").await.unwrap();
        let cookie = first
            .set_cookies
            .iter()
            .find(|c| c.starts_with("switchback_bucket="))
            .unwrap_or_else(|| panic!("no bucket cookie in {:?}", first.set_cookies))
            .split(';')
            .next()
            .unwrap()
            .to_string();
        // ...and every other node puts it on the same pool.
        for node in &fleet.nodes {
            let mut c = KeepAlive::connect(node.addr()).await.unwrap();
            let again = c.get_with("/", &[("cookie", &cookie)]).await.unwrap();
            assert_eq!(again.pool, first.pool, "client {client} ({cookie})");
            assert!(
                again.set_cookies.is_empty(),
                "the cookie was taken as it is"
            );
        }
        on_green += (first.pool == "green") as usize;
    }
    // 10% of 200, give or take what chance does.
    assert!((4..=45).contains(&on_green), "{on_green} of 200 on green");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_changing_one_service_at_once_cannot_both_win() {
    let etcd = Etcd::start();
    let (blue, green) = (Upstream::start("blue"), Upstream::start("green"));
    let fleet = Fleet::start(&etcd, &blue_green(&blue, &green), "5s");
    let mut conflicts = 0;
    for round in 0..30 {
        // Two different backend lists for the same pool, through two nodes at the same time.
        let a = format!("127.0.0.1:{}", 20000 + round * 2);
        let b = format!("127.0.0.1:{}", 20001 + round * 2);
        let cli = |node: &Proxy, addr: &str| {
            Command::new(BIN)
                .arg("--socket")
                .arg(&node.socket)
                .args(["pool", "set", "green", addr])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (one, two) = (cli(fleet.node(1), &a), cli(fleet.node(3), &b));
        let (one, two) = (
            one.wait_with_output().unwrap(),
            two.wait_with_output().unwrap(),
        );
        let live: Vec<String> = fleet
            .node(2)
            .pool_backends("app", "green")
            .iter()
            .map(|b| b["address"].as_str().unwrap().to_string())
            .collect();
        match (one.status.success(), two.status.success()) {
            // One after the other: the last one stays.
            (true, true) => assert!(live == [a.clone()] || live == [b.clone()], "{live:?}"),
            (true, false) | (false, true) => {
                let (winner, loser) = if one.status.success() {
                    (&a, &two)
                } else {
                    (&b, &one)
                };
                let err = String::from_utf8_lossy(&loser.stderr);
                assert_eq!(loser.status.code(), Some(1), "{err}");
                assert!(
                    err.contains("conflict: another node changed service \"app\""),
                    "{err}"
                );
                assert_eq!(
                    live,
                    std::slice::from_ref(winner),
                    "the winner's change is live"
                );
                conflicts += 1;
            }
            (false, false) => panic!("both failed: {one:?} {two:?}"),
        }
        // Every node agrees.
        for node in &fleet.nodes {
            let backends: Vec<String> = node
                .pool_backends("app", "green")
                .iter()
                .map(|b| b["address"].as_str().unwrap().to_string())
                .collect();
            assert_eq!(backends, live);
        }
        if conflicts >= 2 {
            break;
        }
    }
    assert!(conflicts > 0, "no two changes ever met in 30 rounds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_loses_etcd_keeps_serving_refuses_changes_and_catches_up() {
    let (mut etcd, _blue, _green, mut fleet) = blue_green_fleet("1s");
    fleet.node(1).cli_ok(&["switch", "green", "--force"]);

    // etcd goes away: traffic goes on, changes are refused everywhere.
    let loads: Vec<Load> = fleet.nodes[..2]
        .iter()
        .map(|n| Load::start(n.addr(), "app.test", 2, 1, |a| a.pool == "green"))
        .collect();
    etcd.stop();
    wait_for(
        "every node to see etcd gone",
        Duration::from_secs(20),
        || {
            fleet
                .nodes
                .iter()
                .all(|n| fleet_view(n)["connected"] == false)
        },
    );
    let refused = fleet.node(2).cli(&["switch", "blue"]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{err}");
    assert!(
        err.contains("fleet_unreachable: fleet store unreachable"),
        "{err}"
    );
    assert_eq!(fleet.node(2).active_pool("app"), "green");
    let table = fleet.node(2).cli_ok(&["status"]);
    assert!(table.contains("NOT connected to etcd"), "{table}");
    assert_eq!(
        fleet.node(2).metric("switchback_fleet_connected"),
        Some(0.0)
    );
    // Still ready: pulling every proxy out at once would be worse.
    assert_eq!(fleet.node(2).admin_get("/readyz").0, 200);

    // A node restarted while etcd is down starts on its last state.
    fleet.nodes[2].restart();
    assert_eq!(
        get_once(fleet.node(3).addr(), "/").await.unwrap().pool,
        "green"
    );
    for load in &loads {
        load.wait_for_more(100, "requests while etcd is down");
    }
    for load in loads {
        load.stop_with_no_failure().await;
    }

    // etcd is back: every node reconnects, and changes go through again.
    etcd.restart();
    fleet.wait_all_connected();
    fleet.node(3).cli_ok(&["switch", "blue"]);
    for node in &fleet.nodes {
        assert_eq!(get_once(node.addr(), "/").await.unwrap().pool, "blue");
    }

    // A node that misses a change (stopped, so its lease is still live) is named, and the
    // command fails; it catches up when it runs again.
    let pid = fleet.node(3).pid().to_string();
    let stop = |sig: &str| {
        assert!(Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success())
    };
    stop("-STOP");
    let lagging = fleet.node(1).cli(&["switch", "green"]);
    stop("-CONT");
    let err = String::from_utf8_lossy(&lagging.stderr);
    assert_eq!(lagging.status.code(), Some(1), "{err}");
    assert!(
        err.contains("fleet_lagging") && err.contains("node-3 (at generation"),
        "{err}"
    );
    assert_eq!(
        fleet.node(2).active_pool("app"),
        "green",
        "the change was made"
    );
    wait_for("node 3 to catch up", Duration::from_secs(20), || {
        fleet.node(3).active_pool("app") == "green"
    });
    assert_eq!(
        get_once(fleet.node(3).addr(), "/").await.unwrap().pool,
        "green"
    );
    fleet.wait_all_connected();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_whose_driving_node_dies_ends_on_the_stable_pool() {
    let (etcd, _blue, _green, mut fleet) = blue_green_fleet("5s");
    // A rollout driven by node 1, on its first step for a minute.
    let mut cli = Command::new(BIN)
        .arg("--socket")
        .arg(&fleet.node(1).socket)
        .args(["rollout", "green", "--steps", "20,100", "--interval", "60s"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let share = |node: &Proxy| {
        let s = node.status();
        s["services"][0]["split"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["pool"] == "green")
            .map_or(0.0, |x| x["percent"].as_f64().unwrap())
    };
    wait_for(
        "every node to split 20% to green",
        Duration::from_secs(20),
        || fleet.nodes.iter().all(|n| share(n) == 20.0),
    );
    // Another node shows the rollout and who drives it...
    let rollout = fleet.node(2).status()["services"][0]["rollout"].clone();
    assert_eq!(
        (
            &rollout["pool"],
            &rollout["running"],
            &rollout["node"],
            &rollout["percent"]
        ),
        (
            &serde_json::json!("green"),
            &serde_json::json!(true),
            &serde_json::json!("node-1"),
            &serde_json::json!(20.0)
        ),
        "{rollout}"
    );
    let table = fleet.node(2).cli_ok(&["status"]);
    assert!(table.contains("(driven by fleet node node-1)"), "{table}");
    // ...and cannot take the service from under it.
    let refused = fleet.node(2).cli(&["switch", "green"]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{err}");
    assert!(err.contains("driven by fleet node \"node-1\""), "{err}");

    // The driver dies: once its lease ends, the others end the rollout on the stable pool.
    fleet.nodes[0].kill();
    let _ = cli.kill();
    let _ = cli.wait();
    wait_for(
        "the rollout to end on blue",
        Duration::from_secs(20),
        || fleet.nodes[1..].iter().all(|n| share(n) == 0.0),
    );
    for node in &fleet.nodes[1..] {
        assert_eq!(node.active_pool("app"), "blue");
        for _ in 0..10 {
            assert_eq!(get_once(node.addr(), "/").await.unwrap().pool, "blue");
        }
    }
    let logs: String = fleet.nodes[1..].iter().map(|n| n.log()).collect();
    assert!(
        logs.contains("the node driving a rollout left the fleet"),
        "{logs}"
    );
    let state = etcd.get("/switchback/state").unwrap();
    assert!(!state.contains("\"rollout\""), "{state}");
    // The service is free again.
    fleet.node(2).cli_ok(&["switch", "green"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_name_is_ordered_once_for_the_fleet_and_served_by_every_node() {
    use support::pebble::*;
    const HOST: &str = "app.switchback.test";
    let etcd = Etcd::start();
    let blue = Upstream::start("blue");
    let keys = tempfile::tempdir().unwrap();
    let key = key_file(keys.path());
    let mut nodes: Vec<Proxy> = (0..3).map(|_| Proxy::unstarted(true)).collect();
    // The CA validates on node 1's port only: an order placed by another node is answered by
    // node 1, from the answers the fleet shares.
    let pebble = Pebble::start(nodes[0].port, &[]);
    for (i, node) in nodes.iter_mut().enumerate() {
        node.launch(&format!(
            "{}{}[services.app]\nhosts = [\"{HOST}\"]\nactive = \"blue\"\npools.blue = [\"{}\"]\ntls = \"acme\"\n",
            fleet_section(&etcd, i + 1, &key, "5s"),
            pebble.acme_section(""),
            blue.addr
        ));
    }
    let serial = |node: &Proxy| {
        let v: serde_json::Value =
            serde_json::from_str(&node.cli_ok(&["certs", "--json"])).unwrap();
        v["certs"][0]["serial"].as_str().map(str::to_string)
    };
    wait_for(
        "every node to serve a certificate",
        Duration::from_secs(60),
        || nodes.iter().all(|n| serial(n).is_some()),
    );
    let first = serial(&nodes[0]).unwrap();
    let root = pebble.issuing_root();
    for node in &nodes {
        assert_eq!(serial(node).as_deref(), Some(first.as_str()));
        let answer = https_get(
            client_config(&root, &[b"http/1.1"]),
            node.https_port.unwrap(),
            HOST,
            "/",
        )
        .await
        .unwrap();
        assert_eq!(
            (answer.status, answer.serial.as_str()),
            (200, first.as_str())
        );
    }
    // Exactly one order: one node had it issued, the two others took it from the fleet.
    let logs: Vec<String> = nodes.iter().map(|n| n.log()).collect();
    let count = |what: &str| logs.iter().map(|l| l.matches(what).count()).sum::<usize>();
    assert_eq!(count("certificate issued and served"), 1, "{logs:#?}");
    assert_eq!(count("certificate from the fleet served"), 2, "{logs:#?}");
    assert_eq!(
        pebble
            .pebble_log()
            .matches("Issued certificate serial")
            .count(),
        1,
        "{}",
        pebble.pebble_log()
    );
    // What etcd holds is sealed: no key, no account credentials in the clear.
    let cert = etcd.get(&format!("/switchback/certs/{HOST}")).unwrap();
    let account = etcd.get("/switchback/acme/account").unwrap();
    for sealed in [&cert, &account] {
        assert!(
            !sealed.contains("PRIVATE KEY") && !sealed.contains("BEGIN"),
            "{sealed}"
        );
        assert!(!sealed.contains("\"credentials\""), "{sealed}");
    }
    assert!(etcd
        .get(&format!("/switchback/locks/acme/{HOST}"))
        .is_none());

    // An HTTP-01 answer one node publishes is answered by every node.
    etcd.ctl(&[
        "put",
        "/switchback/challenges/tok-EN_1",
        "tok-EN_1.thumbprint",
    ])
    .unwrap();
    for node in &nodes {
        let url = "/.well-known/acme-challenge/tok-EN_1";
        wait_for("the answer on every node", Duration::from_secs(10), || {
            let answer = plain_get(node.addr(), url);
            answer.as_deref() == Some("tok-EN_1.thumbprint")
        });
    }
    etcd.ctl(&["del", "/switchback/challenges/tok-EN_1"])
        .unwrap();
    wait_for(
        "the answer gone from every node",
        Duration::from_secs(10),
        || {
            nodes
                .iter()
                .all(|n| plain_get(n.addr(), "/.well-known/acme-challenge/tok-EN_1").is_none())
        },
    );
}

/// The body of a plain-HTTP GET that answers 200.
fn plain_get(addr: std::net::SocketAddr, path: &str) -> Option<String> {
    let mut s = raw_connect(addr);
    use std::io::Write;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: app.switchback.test\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    match read_raw_answer(&mut s) {
        Some((200, body)) => Some(body),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_judges_the_errors_of_every_node() {
    let (_etcd, _blue, green, fleet) = blue_green_fleet("5s");
    green.set_failing(50);
    // Every request reaches node 2; the rollout runs on node 1, which sees none of them.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let (stop, addr) = (stop.clone(), fleet.node(2).addr());
        tokio::spawn(async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while !stop.load(std::sync::atomic::Ordering::SeqCst)
                && std::time::Instant::now() < deadline
            {
                let _ = get_once(addr, "/").await;
            }
        })
    };
    let out = fleet.node(1).cli(&[
        "rollout",
        "green",
        "--steps",
        "50,100",
        "--interval",
        "60s",
        "--min-requests",
        "20",
        "--max-error-rate",
        "5",
        "--json",
    ]);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    traffic.await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "rolled back: {stdout}");
    let end: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(end["outcome"], "rolled_back", "{end}");
    assert!(
        end["reason"].as_str().unwrap().contains("5xx ratio"),
        "{end}"
    );
    // The window it judged is node 2's traffic.
    assert!(end["canary"]["requests"].as_u64().unwrap() >= 20, "{end}");
    for node in &fleet.nodes {
        assert_eq!(node.active_pool("app"), "blue");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reaches_etcd_over_tls_with_its_client_certificate() {
    let etcd = Etcd::start_tls();
    let tls = etcd.tls.as_ref().unwrap();
    let (blue, green) = (Upstream::start("blue"), Upstream::start("green"));
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path());
    let node = |name: &str, client_cert: bool| {
        let cert = if client_cert {
            format!(
                "cert = \"{}\"\nkey = \"{}\"\n",
                tls.client_cert.display(),
                tls.client_key.display()
            )
        } else {
            String::new()
        };
        Proxy::start(&format!(
            "[fleet]\netcd = [\"{}\"]\nnode = \"{name}\"\nkey_file = \"{}\"\nca = \"{}\"\n{cert}\n{}",
            etcd.url,
            key.display(),
            tls.ca.display(),
            blue_green(&blue, &green)
        ))
    };
    let good = node("node-1", true);
    wait_for(
        "node 1 to connect over TLS",
        Duration::from_secs(20),
        || fleet_view(&good)["connected"] == true,
    );
    good.wait_health("app", "green", "healthy");
    good.cli_ok(&["switch", "green"]);
    assert_eq!(good.active_pool("app"), "green");
    let state = etcd
        .get("/switchback/state")
        .expect("the fleet state in etcd");
    assert!(state.contains("\"green\""), "{state}");

    // Without a client certificate etcd refuses the handshake: the node says so and serves
    // its own state.
    let bare = node("node-2", false);
    wait_for(
        "node 2 to report its refused connection",
        Duration::from_secs(20),
        || {
            fleet_view(&bare)["problem"]
                .as_str()
                .is_some_and(|p| !p.is_empty())
        },
    );
    assert_eq!(fleet_view(&bare)["connected"], false);
    assert_eq!(bare.active_pool("app"), "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_logs_in_to_etcd_with_its_password_file() {
    use std::os::unix::fs::PermissionsExt;
    let etcd = Etcd::start();
    etcd.ctl(&["user", "add", "root", "--new-user-password", "s3cret-pass"])
        .expect("add etcd's root user");
    etcd.ctl(&["auth", "enable"]).expect("turn etcd's auth on");
    let blue = Upstream::start("blue");
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path());
    let node = |name: &str, password: &str| {
        let file = dir.path().join(format!("{name}.password"));
        std::fs::write(&file, format!("{password}\n")).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        Proxy::start(&format!(
            "[fleet]\netcd = [\"{}\"]\nnode = \"{name}\"\nkey_file = \"{}\"\nusername = \"root\"\npassword_file = \"{}\"\n\
             [services.app]\nactive = \"blue\"\npools.blue = [\"{}\"]\npools.green = [\"{}\"]\n",
            etcd.url,
            key.display(),
            file.display(),
            blue.addr,
            blue.addr
        ))
    };
    let good = node("node-1", "s3cret-pass");
    wait_for("node 1 to log in", Duration::from_secs(20), || {
        fleet_view(&good)["connected"] == true
    });
    good.cli_ok(&["switch", "green"]);
    assert_eq!(good.active_pool("app"), "green");

    // A wrong password: the node serves, says why it is not connected, and changes nothing.
    let bad = node("node-2", "wrong");
    wait_for(
        "node 2 to report its failed login",
        Duration::from_secs(20),
        || {
            fleet_view(&bad)["problem"]
                .as_str()
                .is_some_and(|p| p.contains("authentication failed"))
        },
    );
    assert_eq!(fleet_view(&bad)["connected"], false);
    // It never read the fleet: it serves its own state file's state (blue).
    assert_eq!(bad.active_pool("app"), "blue");
    let refused = bad.cli(&["switch", "green"]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("fleet_unreachable"),
        "{refused:?}"
    );
    assert_eq!(bad.active_pool("app"), "blue");
    assert_eq!(get_once(bad.addr(), "/").await.unwrap().status, 200);
}

#[test]
fn a_key_file_others_can_read_is_refused_with_a_clear_error() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path());
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = dir.path().join("switchback.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\nhttp = [\"127.0.0.1:{}\"]\n[control]\nsocket = \"{d}/control.sock\"\n[state]\ndir = \"{d}/state\"\n\
             [fleet]\netcd = [\"http://127.0.0.1:{}\"]\nnode = \"a\"\nkey_file = \"{}\"\n\
             [services.app]\nactive = \"blue\"\npools.blue = [\"127.0.0.1:9\"]\n",
            free_port(),
            free_port(),
            key.display(),
            d = dir.path().display()
        ),
    )
    .unwrap();
    // `check` warns (the file may only exist on the proxy's machine)...
    let check = check_config(&config);
    let err = String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "{check:?}");
    assert!(
        err.contains("warning: fleet.key_file:") && err.contains("make it mode 0600"),
        "{err}"
    );
    // ...and `run` refuses to start, saying why.
    let run = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{err}");
    assert!(
        err.contains("fleet.key_file:") && err.contains("can be read by others"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_dies_mid_order_releases_the_lock_with_its_lease() {
    let etcd = Etcd::start();
    let blue = Upstream::start("blue");
    let keys = tempfile::tempdir().unwrap();
    let key = key_file(keys.path());
    // A CA that accepts connections and never answers: an order hangs for acme.timeout,
    // holding the fleet's lock on the name.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let directory = format!(
        "https://127.0.0.1:{}/dir",
        hole.local_addr().unwrap().port()
    );
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in hole.incoming().flatten() {
            held.push(conn);
        }
    });
    let mut nodes: Vec<Proxy> = (1..=2)
        .map(|n| {
            let mut node = Proxy::unstarted(true);
            node.launch(&format!(
                "{}[acme]\ndirectory = \"{directory}\"\nretry_after = \"1s\"\ntimeout = \"60s\"\n\
                 [services.app]\nhosts = [\"app.switchback.test\"]\nactive = \"blue\"\npools.blue = [\"{}\"]\ntls = \"acme\"\n",
                fleet_section(&etcd, n, &key, "5s"),
                blue.addr
            ));
            node
        })
        .collect();
    let lock = "/switchback/locks/acme/app.switchback.test";
    wait_for(
        "a node to take the order lock",
        Duration::from_secs(20),
        || etcd.get(lock).is_some(),
    );
    let holder = etcd.get(lock).unwrap();
    let (dying, other) = if holder == "node-1" {
        (0, "node-2")
    } else {
        (1, "node-1")
    };
    // The other node waits for it, and says who orders.
    wait_for(
        "the other node to see who orders",
        Duration::from_secs(20),
        || {
            nodes[1 - dying]
            .log()
            .contains(&format!("another fleet node is ordering this certificate host=app.switchback.test node={holder}"))
        },
    );
    nodes[dying].kill();
    // Its lease ends within 3 s, and the lock with it: the other node takes it over.
    wait_for(
        "the other node to take the lock",
        Duration::from_secs(20),
        || etcd.get(lock).as_deref() == Some(other),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_node_stays_in_the_fleet() {
    let (_etcd, _blue, _green, mut fleet) = blue_green_fleet("5s");
    let load = Load::start(fleet.node(1).addr(), "app.test", 2, 1, |a| a.status == 200);
    load.wait_for_more(50, "requests before the upgrade");
    let (old, new) = fleet.nodes[0].upgrade();
    wait_exited(old);
    load.wait_for_more(50, "requests after the upgrade");
    load.stop_with_no_failure().await;
    assert_eq!(fleet.node(1).status()["pid"].as_u64(), Some(new));
    // The new process is node-1, connected, and a change waits for it and reaches it.
    fleet.wait_all_connected();
    fleet.node(2).cli_ok(&["switch", "green"]);
    assert_eq!(
        get_once(fleet.node(1).addr(), "/").await.unwrap().pool,
        "green"
    );
    let view = fleet_view(fleet.node(2));
    let node_1 = view["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "node-1")
        .cloned()
        .unwrap();
    assert_eq!(node_1["connected"], true, "{view}");
    assert_eq!(
        node_1["generation"],
        fleet.node(2).status()["generation"],
        "{view}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_config_lacks_the_new_pool_is_named_and_keeps_serving_its_own() {
    let etcd = Etcd::start();
    let (blue, green, red) = (
        Upstream::start("blue"),
        Upstream::start("green"),
        Upstream::start("red"),
    );
    let keys = tempfile::tempdir().unwrap();
    let key = key_file(keys.path());
    let with_red = format!(
        "{}pools.red = [\"{}\"]\n",
        blue_green(&blue, &green),
        red.addr
    );
    let nodes: Vec<Proxy> = (1..=3)
        .map(|n| {
            let services = if n == 3 {
                blue_green(&blue, &green)
            } else {
                with_red.clone()
            };
            Proxy::start(&format!(
                "{}\n{services}",
                fleet_section(&etcd, n, &key, "2s")
            ))
        })
        .collect();
    let fleet = Fleet { nodes, _keys: keys };
    fleet.wait_all_connected();
    fleet.node(1).wait_health("app", "red", "healthy");
    // Node 3 has no pool red: the change is made where it can be, and node 3 is named.
    let lagging = fleet.node(1).cli(&["switch", "red"]);
    let err = String::from_utf8_lossy(&lagging.stderr);
    assert_eq!(lagging.status.code(), Some(1), "{err}");
    assert!(
        err.contains("fleet_lagging")
            && err.contains("node-3")
            && err.contains("this node's config has no pool \"red\""),
        "{err}"
    );
    assert_eq!(
        get_once(fleet.node(2).addr(), "/").await.unwrap().pool,
        "red"
    );
    assert_eq!(
        get_once(fleet.node(3).addr(), "/").await.unwrap().pool,
        "blue"
    );
    let view = fleet_view(fleet.node(3));
    assert!(
        view["nodes"][0]["error"]
            .as_str()
            .unwrap()
            .contains("no pool"),
        "{view}"
    );
    // A pool every node has: all of them take it, and the error is gone.
    fleet.node(1).wait_health("app", "green", "healthy");
    fleet.node(1).cli_ok(&["switch", "green"]);
    for node in &fleet.nodes {
        assert_eq!(get_once(node.addr(), "/").await.unwrap().pool, "green");
    }
    assert!(fleet_view(fleet.node(3))["nodes"][0].get("error").is_none());
}
