//! Golden signals: metrics counted exactly under the right labels, a scrape and the rules that
//! promtool accepts, a dashboard whose every query names a real metric, the access log, and the
//! admin endpoints.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_counts_known_traffic_under_the_right_labels() {
    let blue = Upstream::start("blue");
    let green = Upstream::start("green");
    let proxy = Proxy::start(&blue_green(&blue, &green));
    proxy.wait_health("app", "green", "healthy");

    let mut conn = KeepAlive::connect(proxy.addr()).await.unwrap();
    for _ in 0..7 {
        assert_eq!(conn.get("/").await.unwrap().status, 200);
    }
    for _ in 0..3 {
        assert_eq!(conn.get("/status/500").await.unwrap().status, 500);
    }
    assert_eq!(conn.get("/status/404").await.unwrap().status, 404);
    proxy.cli_ok(&["switch", "green"]);
    for _ in 0..5 {
        assert_eq!(conn.get("/").await.unwrap().status, 200);
    }
    for _ in 0..2 {
        assert_eq!(conn.get("/status/503").await.unwrap().status, 503);
    }

    let (b, g) = (blue.addr.to_string(), green.addr.to_string());
    let sample = |pool: &str, backend: &str, class: &str| {
        format!("switchback_requests_total{{backend=\"{backend}\",pool=\"{pool}\",service=\"app\",status_class=\"{class}\"}}")
    };
    let expect = [
        (sample("blue", &b, "2xx"), 7.0),
        (sample("blue", &b, "5xx"), 3.0),
        (sample("blue", &b, "4xx"), 1.0),
        (sample("green", &g, "2xx"), 5.0),
        (sample("green", &g, "5xx"), 2.0),
        (sample("green", &g, "4xx"), 0.0),
    ];
    // The last request's metrics are recorded as it ends, just after its answer was sent.
    wait_for(
        "the last request to be counted",
        Duration::from_secs(5),
        || proxy.metric(&sample("green", &g, "5xx")) == Some(2.0),
    );
    for (name, value) in &expect {
        assert_eq!(proxy.metric(name), Some(*value), "{name}");
    }
    assert_eq!(
        proxy.metric("switchback_request_duration_seconds_count{pool=\"blue\",service=\"app\"}"),
        Some(11.0)
    );
    assert_eq!(
        proxy.metric("switchback_active_pool{pool=\"green\",service=\"app\"}"),
        Some(1.0)
    );
    assert_eq!(
        proxy.metric("switchback_active_pool{pool=\"blue\",service=\"app\"}"),
        Some(0.0)
    );
    assert_eq!(
        proxy.metric("switchback_pool_traffic_ratio{pool=\"green\",service=\"app\"}"),
        Some(1.0)
    );
    assert_eq!(
        proxy.metric("switchback_switches_total{service=\"app\"}"),
        Some(1.0)
    );
    assert_eq!(
        proxy.metric("switchback_rollbacks_total{service=\"app\"}"),
        Some(0.0),
        "no rollback yet, and the series starts at 0 so that increase() sees the first one"
    );
    assert_eq!(
        proxy.metric(&format!(
            "switchback_backend_up{{backend=\"{g}\",pool=\"green\",service=\"app\"}}"
        )),
        Some(1.0)
    );
    assert!(
        proxy.metric("switchback_open_connections").unwrap() >= 1.0,
        "our keep-alive connection is open"
    );

    proxy.cli_ok(&["rollback"]);
    assert_eq!(
        proxy.metric("switchback_active_pool{pool=\"blue\",service=\"app\"}"),
        Some(1.0)
    );
    assert_eq!(
        proxy.metric("switchback_rollbacks_total{service=\"app\"}"),
        Some(1.0)
    );
    assert_eq!(
        proxy.metric("switchback_switches_total{service=\"app\"}"),
        Some(2.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_and_retries_are_counted() {
    let live = Upstream::start("blue");
    let dead = free_port();
    let proxy = Proxy::start(&dead_then_live(dead, &live));
    for _ in 0..10 {
        assert_eq!(get_once(proxy.addr(), "/").await.unwrap().status, 200);
    }
    let failures = proxy
        .metric(&format!(
            "switchback_upstream_connect_failures_total{{backend=\"127.0.0.1:{dead}\",pool=\"blue\",service=\"app\"}}"
        ))
        .unwrap();
    let retries = proxy
        .metric(
            "switchback_upstream_retries_total{pool=\"blue\",reason=\"connect\",service=\"app\"}",
        )
        .unwrap();
    assert_eq!(
        failures, 1.0,
        "after one refused connect the dead backend is passed over"
    );
    assert_eq!(
        retries, 1.0,
        "and that one request was retried on the live backend"
    );
}

#[test]
fn promtool_accepts_a_live_scrape_and_the_rules() {
    let tool = promtool();
    let blue = Upstream::start("blue");
    let green = Upstream::start("green");
    let proxy = Proxy::start(&blue_green(&blue, &green));
    proxy.wait_health("app", "blue", "healthy");
    let (status, scrape) = proxy.admin_get("/metrics");
    assert_eq!(status, 200);
    assert_promtool_accepts(&scrape);

    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    for args in [
        vec!["check", "rules", "prometheus-alerts.yml"],
        vec!["test", "rules", "prometheus-alerts.test.yml"],
    ] {
        let out = Command::new(tool)
            .args(&args)
            .current_dir(&docs)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The metric names a PromQL expression uses (`switchback_…`), histogram series reduced to
/// their family.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("switchback_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| f.ends_with("_seconds")))
            .unwrap_or(name);
        names.insert(family.to_string());
        rest = &tail[end..];
    }
    names
}

fn exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr" | "query" | "definition", serde_json::Value::String(s)) => {
                        out.push(s.clone())
                    }
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

#[test]
fn every_dashboard_query_names_a_metric_the_proxy_exports() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/grafana-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .expect("the dashboard is JSON");
    let mut queries = Vec::new();
    exprs(&dashboard, &mut queries);
    assert!(queries.len() >= 10, "the dashboard lost its queries");

    let blue = Upstream::start("blue");
    let green = Upstream::start("green");
    // A TLS service too, so that certificate metrics exist.
    let mut proxy = Proxy::unstarted(true);
    let (cert, key) = support::pebble::self_signed(&["secure.switchback.test"]);
    let (cert_path, key_path) = (
        proxy.dir.path().join("c.pem"),
        proxy.dir.path().join("k.pem"),
    );
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    proxy.launch(&format!(
        "{}[services.secure]\nhosts = [\"secure.switchback.test\"]\nactive = \"a\"\npools.a = [\"{}\"]\ntls = {{ cert = \"{}\", key = \"{}\" }}\n",
        blue_green(&blue, &green),
        blue.addr,
        cert_path.display(),
        key_path.display()
    ));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        get_once(proxy.addr(), "/").await.unwrap();
    });
    proxy.cli_ok(&["switch", "green", "--force", "-s", "app"]);
    proxy.cli_ok(&["rollback", "--force", "-s", "app"]);
    let (_, scrape) = proxy.admin_get("/metrics");
    let exported: BTreeSet<String> = scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    let mut used = BTreeSet::new();
    for q in &queries {
        used.extend(metric_names(q));
    }
    let missing: Vec<_> = used.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics the proxy does not export: {missing:?}"
    );
    for needed in [
        "switchback_requests_total",
        "switchback_request_duration_seconds",
        "switchback_in_flight_requests",
        "switchback_backend_up",
        "switchback_active_pool",
        "switchback_pool_traffic_ratio",
        "switchback_certificate_not_after_seconds",
    ] {
        assert!(
            used.contains(needed),
            "the dashboard has no panel on {needed}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_has_one_line_per_request_with_every_field() {
    let blue = Upstream::start("blue");
    let green = Upstream::start("green");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let services = format!(
        "[access_log]\npath = \"{}\"\n\n{}",
        log.display(),
        blue_green(&blue, &green)
    );
    let proxy = Proxy::start(&services);
    let mut conn = KeepAlive::connect(proxy.addr()).await.unwrap();
    conn.get("/hello?x=1").await.unwrap();
    conn.get("/status/503").await.unwrap();
    wait_for("two access log lines", Duration::from_secs(5), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count()
            >= 2
    });
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON lines"))
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    let first = &lines[0];
    assert_eq!(first["method"], "GET");
    assert_eq!(first["path"], "/hello?x=1");
    assert_eq!(first["host"], "app.test");
    assert_eq!(first["status"], 200);
    assert_eq!(first["bytes"], 4, "the body 'blue'");
    assert_eq!(first["client"], "127.0.0.1");
    assert_eq!(first["service"], "app");
    assert_eq!(first["pool"], "blue");
    assert_eq!(first["backend"], blue.addr.to_string());
    assert!(first["duration_ms"].as_f64().unwrap() >= 0.0);
    assert!(first["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(lines[1]["status"], 503);
    assert!(
        !proxy.log().contains("\"path\":\"/hello"),
        "access lines go to the file, not stdout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_combined_format_is_available_and_stdout_is_the_default() {
    let blue = Upstream::start("blue");
    let green = Upstream::start("green");
    let proxy = Proxy::start(&format!(
        "[access_log]\nformat = \"combined\"\n\n{}",
        blue_green(&blue, &green)
    ));
    get_once(proxy.addr(), "/combined").await.unwrap();
    wait_for(
        "a combined log line on stdout",
        Duration::from_secs(5),
        || {
            proxy
                .log()
                .lines()
                .any(|l| l.contains("\"GET /combined HTTP/1.1\" 200 4"))
        },
    );
    let line = proxy
        .log()
        .lines()
        .find(|l| l.contains("/combined"))
        .unwrap()
        .to_string();
    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    assert!(
        line.contains(&format!("service=app pool=blue backend={}", blue.addr)),
        "{line}"
    );
}

#[test]
fn admin_endpoints_answer_health_readiness_and_404() {
    let blue = Upstream::start("blue");
    let green = Upstream::start("green");
    let proxy = Proxy::start(&blue_green(&blue, &green));
    assert_eq!(proxy.admin_get("/healthz"), (200, "ok\n".to_string()));
    assert_eq!(proxy.admin_get("/readyz"), (200, "ready\n".to_string()));
    assert_eq!(proxy.admin_get("/nope").0, 404);
}

#[test]
fn state_changes_are_logged_with_who_asked() {
    let blue = Upstream::start("blue");
    let green = Upstream::start("green");
    let proxy = Proxy::start(&blue_green(&blue, &green));
    proxy.wait_health("app", "green", "healthy");
    proxy.cli_ok(&["switch", "green"]);
    proxy.cli_ok(&["rollback"]);
    use std::os::unix::fs::MetadataExt;
    // The test created this dir, so its owner is the uid the CLI runs as.
    let uid = std::fs::metadata(proxy.dir.path()).unwrap().uid();
    let log = proxy.log();
    let switched = log
        .lines()
        .find(|l| l.contains("switched"))
        .expect("a switch log line");
    assert!(switched.contains(&format!("uid={uid}")), "{switched}");
    assert!(
        switched.contains("pool=green") && switched.contains("previous=blue"),
        "{switched}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("rolled back") && l.contains("pool=blue")),
        "{log}"
    );
}

/// Sends `n` requests, then `signal`, and returns the access log's lines once the proxy has
/// exited. Every request answered before the signal must be in the log.
async fn lines_after(signal: &str, n: usize) -> Vec<serde_json::Value> {
    let blue = Upstream::start("blue");
    let green = Upstream::start("green");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let services = format!(
        "[access_log]\npath = \"{}\"\n\n{}",
        log.display(),
        blue_green(&blue, &green)
    );
    let mut proxy = Proxy::start(&services);
    let mut conn = KeepAlive::connect(proxy.addr()).await.unwrap();
    for i in 0..n {
        let a = conn.get(&format!("/n/{i}")).await.unwrap();
        assert_eq!(a.status, 200);
    }
    drop(conn);
    // Answered, but not yet written: the writer drains its queue every 50 ms.
    proxy.signal_and_wait(signal);
    std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON lines"))
        .collect()
}

#[tokio::test]
async fn no_access_log_line_is_lost_on_sigterm() {
    let lines = lines_after("TERM", 200).await;
    assert_eq!(
        lines.len(),
        200,
        "one line per request answered before SIGTERM"
    );
    assert_eq!(lines[199]["path"], "/n/199");
}

#[tokio::test]
async fn no_access_log_line_is_lost_on_sigint() {
    let lines = lines_after("INT", 200).await;
    assert_eq!(
        lines.len(),
        200,
        "one line per request answered before SIGINT"
    );
}

#[tokio::test]
async fn sighup_reloads_an_unchanged_file_and_the_proxy_keeps_serving() {
    let blue = Upstream::start("blue");
    let green = Upstream::start("green");
    let proxy = Proxy::start(&blue_green(&blue, &green));
    let ok = std::process::Command::new("kill")
        .args(["-s", "HUP", &proxy.pid().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    wait_for("the SIGHUP log line", Duration::from_secs(10), || {
        proxy.log().contains("SIGHUP: config reloaded")
    });
    let mut conn = KeepAlive::connect(proxy.addr()).await.unwrap();
    let a = conn.get("/").await.unwrap();
    assert_eq!(
        (a.status.as_u16(), a.pool.as_str()),
        (200, "blue"),
        "still serving"
    );
    // The file did not change: no new generation.
    assert_eq!(
        proxy.status()["generation"],
        0,
        "the control socket still answers"
    );
}
