//! Where requests go, against the real binary with real clients and backends: services limited
//! to listeners, a listener's default service for names no service has, redirect services,
//! and the variables of request header rules (`$client_ip`, `$request_id`, …) with the request
//! id in the access log.

mod support;

use std::io::Write;
use std::time::Duration;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_are_per_listener_with_a_default_service_and_redirects() {
    let site = Upstream::start("site");
    let api = Upstream::start("api");
    let admin = Upstream::start("admin");
    let metrics = Upstream::start("metrics");
    let mut proxy = Proxy::unstarted(false);
    let second = free_port();
    proxy.more_http = vec![second];
    let main = proxy.port;
    proxy.launch(&format!(
        "[services.site]\nhosts = [\"site.test\"]\nlisten = [\"127.0.0.1:{main}\"]\ndefault = true\nactive = \"a\"\npools.a = [\"{}\"]\n\
         [services.site-api]\nhosts = [\"site.test\"]\npath_prefix = \"/api/\"\nlisten = [\"127.0.0.1:{main}\"]\nactive = \"a\"\npools.a = [\"{}\"]\n\
         [services.admin]\nhosts = [\"admin.test\"]\npath_prefix = \"/admin/\"\nactive = \"a\"\npools.a = [\"{}\"]\n\
         [services.metrics]\nlisten = [\"127.0.0.1:{second}\"]\nactive = \"a\"\npools.a = [\"{}\"]\n\
         [services.www]\nhosts = [\"www.site.test\"]\nredirect = {{ to = \"https://site.test$request_uri\", code = 301 }}\n\
         [services.old]\nhosts = [\"old.test\"]\nredirect = {{ to = \"$scheme://new.test:$server_port/moved$request_uri\" }}\n",
        site.addr, api.addr, admin.addr, metrics.addr
    ));

    // The first listener: by Host, then path; a name no service has goes to the default
    // service's server block, paths and all.
    assert_eq!(ask(main, "site.test", "/").await.1, "site");
    assert_eq!(ask(main, "site.test", "/api/users").await.1, "api");
    assert_eq!(ask(main, "127.0.0.1", "/").await.1, "site");
    assert_eq!(ask(main, "unknown.example", "/api/x").await.1, "api");
    assert_eq!(ask(main, "admin.test", "/admin/").await.1, "admin");
    // A name that a service has keeps to that service's paths: no default for it.
    assert_eq!(ask(main, "admin.test", "/").await.0, 503);

    // The second listener has its own services: the same names and paths go elsewhere.
    assert_eq!(ask(second, "site.test", "/").await.1, "metrics");
    assert_eq!(ask(second, "127.0.0.1", "/api/x").await.1, "metrics");
    assert_eq!(ask(second, "admin.test", "/admin/x").await.1, "admin");

    // Redirect services answer on every listener, with the request's parts expanded.
    let (status, _, location) = ask(main, "www.site.test", "/a/b?c=1").await;
    assert_eq!(
        (status, location.as_str()),
        (301, "https://site.test/a/b?c=1")
    );
    let (status, _, location) = ask(second, "WWW.site.test:80", "/").await;
    assert_eq!((status, location.as_str()), (301, "https://site.test/"));
    let (status, _, location) = ask(second, "old.test", "/p?q").await;
    assert_eq!(status, 302);
    assert_eq!(location, format!("http://new.test:{second}/moved/p?q"));
    assert_eq!(site.requests.load(std::sync::atomic::Ordering::SeqCst), 2);

    // status shows each service's listeners, the default, the redirect.
    let status = proxy.status();
    let service = |name: &str| service_status(&status, name).clone();
    assert_eq!(service("site")["listen"][0], format!("127.0.0.1:{main}"));
    assert_eq!(service("site")["default"], true);
    assert_eq!(service("www")["redirect"]["code"], 301);
    assert!(service("admin").get("listen").is_none());
    let text = proxy.cli_ok(&["status"]);
    assert!(
        text.contains(&format!("listen 127.0.0.1:{second}")),
        "{text}"
    );
    assert!(
        text.contains("redirect 301 https://site.test$request_uri"),
        "{text}"
    );
    // A redirect has no pools to switch.
    let out = proxy.cli(&["switch", "a", "-s", "www"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("it answers every request with its redirect"),
        "{err}"
    );
    // A reload of the same file changes nothing, redirect and all.
    let out = proxy.cli_ok(&["reload"]);
    assert!(!out.contains("refused"), "{out}");
    // A state file written with a redirect service in it is read back on a restart.
    let moved = Upstream::start("metrics-2");
    proxy.cli_ok(&["pool", "set", "a", &moved.addr.to_string(), "-s", "metrics"]);
    proxy.restart();
    assert_eq!(ask(second, "any.test", "/").await.1, "metrics-2");
    assert_eq!(ask(main, "www.site.test", "/").await.0, 301);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_variables_reach_the_backend_and_the_request_id_the_log() {
    let app = Upstream::start("app");
    let mut proxy = Proxy::unstarted(false);
    let log = proxy.dir.path().join("access.log");
    proxy.launch(&format!(
        "[access_log]\npath = \"{}\"\n\
         [services.app]\nactive = \"blue\"\npools.blue = [\"{}\"]\n\
         [services.app.request_headers]\nX-Real-IP = \"$client_ip\"\nX-Request-ID = \"$request_id\"\n\
         X-Origin = \"$scheme://$host\"\nX-Remote-Port = \"$remote_port\"\nX-Cost = \"$$5\"\n",
        log.display(),
        app.addr
    ));
    let ask = |head: &'static str| {
        let addr = proxy.addr();
        async move {
            let mut s = raw_connect_from("127.0.0.7", addr).await;
            let port = s.local_addr().unwrap().port();
            s.write_all(head.as_bytes()).unwrap();
            let (status, body) = read_raw_answer(&mut s).unwrap();
            assert_eq!(status, 200, "{body}");
            (body, port)
        }
    };
    let (seen, port) = ask("GET /headers HTTP/1.1\r\nHost: App.Test:8080\r\n\r\n").await;
    let lines: Vec<&str> = seen.lines().collect();
    assert!(lines.contains(&"x-real-ip: 127.0.0.7"), "{lines:?}");
    assert!(lines.contains(&"x-origin: http://app.test"), "{lines:?}");
    assert!(lines.contains(&"x-cost: $5"), "{lines:?}");
    assert!(
        lines.contains(&format!("x-remote-port: {port}").as_str()),
        "{lines:?}"
    );
    let fresh = lines
        .iter()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .expect("a request id");
    assert!(
        fresh.len() == 32 && fresh.bytes().all(|b| b.is_ascii_hexdigit()),
        "{fresh}"
    );

    // The client's own id is kept, once.
    let (seen, _) =
        ask("GET /headers HTTP/1.1\r\nHost: app.test\r\nX-Request-ID: deploy-42\r\n\r\n").await;
    let ids: Vec<&str> = seen
        .lines()
        .filter(|l| l.starts_with("x-request-id"))
        .collect();
    assert_eq!(ids, ["x-request-id: deploy-42"]);

    // Both ids are in the access log, on the lines of their requests.
    let id_line = format!("\"request_id\":\"{fresh}\"");
    wait_for(
        "both ids in the access log",
        Duration::from_secs(10),
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.contains(&id_line) && text.contains("\"request_id\":\"deploy-42\"")
        },
    );
}
