//! `switchback import nginx` with the real binary: a Compose stack's nginx config (with an
//! `include` glob) becomes a config that passes `switchback check`, every directive left behind
//! is named by file and line, and an imported config routes as the nginx one did: server
//! blocks on their own listeners, redirects, the default server, nginx's guards.

mod support;

use std::io::Write;
use std::process::Command;

use support::*;

const COMPOSE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/nginx/compose/nginx.conf"
);

fn import(file: &str) -> (String, String) {
    let out = Command::new(BIN)
        .args(["import", "nginx", file])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn a_compose_stacks_nginx_config_imports_to_a_config_that_passes_check() {
    let (toml, notes) = import(COMPOSE);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchback.toml");
    std::fs::write(&path, &toml).unwrap();
    let check = check_config(&path);
    assert!(check.status.success(), "{check:?}\n{toml}");
    assert!(String::from_utf8_lossy(&check.stdout).contains("3 service(s)"));
    let config = switchback_config::load(&path).unwrap();
    let api = config.service("api").unwrap();
    assert_eq!(api.path_prefix, "/api/");
    assert_eq!(api.hosts, ["app.example.com"]);
    assert_eq!(api.max_request_body, Some(10 << 20));
    assert_eq!(api.tls, switchback_config::TlsMode::Acme);
    assert!(api.https_redirect);
    assert_eq!(
        api.hsts.as_deref(),
        Some("max-age=31536000; includeSubDomains")
    );
    assert_eq!(api.response_headers.len(), 4);
    // proxy_set_header X-Real-IP $remote_addr.
    assert!(api
        .request_headers
        .iter()
        .any(|h| h.name == "x-real-ip" && h.value.as_deref() == Some("$client_ip")));
    let ws = config.service("api-ws").unwrap();
    assert_eq!(ws.read_timeout.as_secs(), 86400);
    assert_eq!(config.service("dashboard").unwrap().path_prefix, "/");
    assert_eq!(config.server.keepalive_timeout.as_secs(), 65);
    // What it left behind, by file and line, with the included file named as itself.
    for expected in [
        "nginx.conf:29: server: max_fails=3: use services.NAME.health",
        "nginx.conf:19: gzip_types: switchback compresses a fixed set of types",
        "nginx.conf:11: include: file not found: mime.types",
    ] {
        assert!(notes.contains(expected), "{expected:?} not in\n{notes}");
    }
}

#[test]
fn a_broken_nginx_config_is_refused_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, "http {\n  server {\n    listen 80\n  }\n}\n").unwrap();
    let out = Command::new(BIN)
        .args(["import", "nginx"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nginx.conf:3: listen: missing ';'"), "{err}");
    assert!(out.stdout.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_config_routes_and_shapes_answers_as_nginx_did() {
    let (api, dashboard) = (Upstream::start("api"), Upstream::start("dashboard"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nginx.conf");
    let mut file = std::fs::File::create(&path).unwrap();
    write!(
        file,
        "http {{\n  client_max_body_size 1k;\n  gzip on;\n\
           upstream api {{ server {}; }}\n  upstream dashboard {{ server {}; }}\n\
           server {{\n    listen 127.0.0.1:8080;\n    server_name app.test;\n\
             add_header X-Frame-Options SAMEORIGIN always;\n\
             location /api/ {{ proxy_pass http://api; proxy_set_header X-Env prod; }}\n\
             location /ws {{ proxy_pass http://api; proxy_read_timeout 1h; }}\n\
             location / {{ proxy_pass http://dashboard; }}\n  }}\n}}\n",
        api.addr, dashboard.addr
    )
    .unwrap();
    let (toml, _) = import(path.to_str().unwrap());
    let services = &toml[toml.find("[services.").expect("services")..];
    let proxy = Proxy::start(services);
    let mut conn = KeepAlive::connect(proxy.addr()).await.unwrap();
    for (path, pool) in [
        ("/api/users", "api"),
        ("/ws", "api"),
        ("/", "dashboard"),
        ("/apix", "dashboard"),
    ] {
        let answer = conn.get(path).await.unwrap();
        assert_eq!(answer.pool, pool, "{path}");
        assert_eq!(answer.headers["x-frame-options"], "SAMEORIGIN", "{path}");
    }
    let seen = conn.get("/api/headers").await.unwrap();
    assert_eq!(seen.pool, "api");
    assert!(seen.body.contains("x-env: prod"), "{}", seen.body);
    let big = conn
        .request("POST", "/api/upload", vec![b'x'; 2048])
        .await
        .map(|a| a.status);
    // 413 (the connection closes after it, the body unread).
    assert_eq!(big.unwrap(), 413);
    let text = KeepAlive::connect(proxy.addr())
        .await
        .unwrap()
        .get_with("/text?bytes=4000", &[("accept-encoding", "gzip")])
        .await
        .unwrap();
    assert_eq!(text.headers["content-encoding"], "gzip");
}

/// nginx's guards come along: an admin UI behind `auth_basic` and `allow`/`deny` stays behind
/// them, and a login route keeps its `limit_req`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_config_guards_what_nginx_guarded() {
    let app = Upstream::start("app");
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("htpasswd");
    let status = Command::new("htpasswd")
        .args(["-cbB"])
        .arg(&users)
        .args(["admin", "s3cret"])
        .status()
        .expect("htpasswd (Debian's apache2-utils) is installed");
    assert!(status.success());
    let path = dir.path().join("nginx.conf");
    let mut file = std::fs::File::create(&path).unwrap();
    write!(
        file,
        "http {{\n  limit_req_zone $binary_remote_addr zone=login:10m rate=1r/m;\n\
           upstream app {{ server {}; }}\n\
           server {{\n    listen 127.0.0.1:8080;\n    server_name app.test;\n\
             location / {{ proxy_pass http://app; }}\n\
             location /admin/ {{ auth_basic \"Admin\"; auth_basic_user_file {}; proxy_pass http://app; }}\n\
             location /metrics {{ allow 10.0.0.0/8; deny all; proxy_pass http://app; }}\n\
             location /login {{ limit_req zone=login burst=1 nodelay; proxy_pass http://app; }}\n  }}\n}}\n",
        app.addr,
        users.display()
    )
    .unwrap();
    let (toml, notes) = import(path.to_str().unwrap());
    assert!(!notes.contains("auth_basic"), "{notes}");
    let services = &toml[toml.find("[services.").expect("services")..];
    let proxy = Proxy::start(services);
    let mut conn = KeepAlive::connect(proxy.addr()).await.unwrap();
    conn.host = "app.test".into();
    assert_eq!(conn.get("/").await.unwrap().status, 200);
    assert_eq!(conn.get("/admin/").await.unwrap().status, 401);
    let login = format!(
        "Basic {}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "admin:s3cret")
    );
    let answer = conn
        .get_with("/admin/", &[("authorization", login.as_str())])
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(conn.get("/metrics").await.unwrap().status, 403);
    // The rate and burst: two pass, the third is over.
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(conn.get("/login").await.unwrap().status.as_u16());
        }
        v
    };
    assert_eq!(statuses, [200, 200, 429]);
}

/// The Compose example the README walks through is a valid config: `check` passes it, and its
/// backends are the stack's service names.
#[test]
fn the_compose_example_passes_check() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/compose/switchback.toml"
    );
    let check = check_config(std::path::Path::new(path));
    assert!(check.status.success(), "{check:?}");
    assert!(String::from_utf8_lossy(&check.stdout).contains("3 service(s)"));
    let config = switchback_config::load(std::path::Path::new(path)).unwrap();
    let api = config.service("api").unwrap();
    assert_eq!(
        api.pool("green").unwrap().backends,
        ["api-green:8000".parse().unwrap()]
    );
    assert_eq!(config.service("ws").unwrap().read_timeout.as_secs(), 86400);
    // The compose file names every backend host the config gives.
    let compose = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/compose/docker-compose.yml"
    ))
    .unwrap();
    for name in config.backend_names() {
        let host = name.host().unwrap();
        assert!(
            compose.contains(&format!("\n  {host}:\n")),
            "{host} is not a service of docker-compose.yml"
        );
    }
}

/// Real configs' server blocks, imported and served with real backends: the certbot port-80
/// server, a www redirect server, two `server_name _` servers on their own ports, a default
/// server, `X-Real-IP`/`X-Request-ID`, and nginx's 1 MB body limit where none was set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_config_keeps_each_server_block_on_its_own_listeners() {
    let app = Upstream::start("app");
    let grafana = Upstream::start("grafana");
    let api = Upstream::start("api");
    let other = Upstream::start("other");
    let mut proxy = Proxy::unstarted(true);
    let (p2, p3) = (free_port(), free_port());
    proxy.more_http = vec![p2, p3];
    let (p1, ps) = (proxy.port, proxy.https_port.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pebble::self_signed(&["app.test"]);
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    let path = dir.path().join("nginx.conf");
    std::fs::write(
        &path,
        format!(
            "http {{\n  upstream app {{ server {app}; }}\n\
             server {{\n listen 127.0.0.1:{p1};\n server_name app.test;\n\
               location /.well-known/acme-challenge/ {{ root /var/www/certbot; }}\n\
               location / {{ return 301 https://$host$request_uri; }}\n }}\n\
             server {{\n listen 127.0.0.1:{ps} ssl;\n server_name app.test;\n\
               ssl_certificate {cert};\n ssl_certificate_key {key};\n\
               add_header Strict-Transport-Security \"max-age=63072000\" always;\n\
               location / {{ proxy_pass http://app; proxy_set_header X-Real-IP $remote_addr;\n\
                 proxy_set_header X-Request-ID $request_id; }}\n }}\n\
             server {{\n listen 127.0.0.1:{p1};\n server_name www.app.test;\n\
               return 301 https://app.test$request_uri;\n }}\n\
             server {{\n listen 127.0.0.1:{p2};\n server_name _;\n\
               location / {{ proxy_pass http://{grafana}; }}\n }}\n\
             server {{\n listen 127.0.0.1:{p3};\n server_name other.test;\n\
               location / {{ proxy_pass http://{other}; }}\n }}\n\
             server {{\n listen 127.0.0.1:{p3} default_server;\n server_name api.test;\n\
               location / {{ proxy_pass http://{api}; }}\n }}\n}}\n",
            app = app.addr,
            grafana = grafana.addr,
            other = other.addr,
            api = api.addr,
            cert = cert_path.display(),
            key = key_path.display(),
        ),
    )
    .unwrap();
    let (toml, notes) = import(path.to_str().unwrap());
    // The challenge location is switchback's own business, not a lost directive.
    assert!(!notes.contains("root: no switchback equivalent"), "{notes}");
    proxy.launch(&toml[toml.find("[services.").expect("services")..]);

    // The certbot server: plain HTTP for app.test goes to HTTPS, which serves with HSTS and
    // tells the backend who the client is.
    let (status, _, location) = ask(p1, "app.test", "/x?y=1").await;
    assert_eq!(status, 308);
    assert_eq!(location, format!("https://app.test:{ps}/x?y=1"));
    let out = Command::new("curl")
        .args(["-sk", "-D", "-", "--resolve"])
        .arg(format!("app.test:{ps}:127.0.0.1"))
        .arg(format!("https://app.test:{ps}/headers"))
        .output()
        .expect("curl is installed");
    let text = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(
        text.contains("strict-transport-security: max-age=63072000"),
        "{text}"
    );
    assert!(text.contains("x-real-ip: 127.0.0.1"), "{text}");
    let id = text
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .expect("a request id");
    assert!(id.trim().len() == 32, "{id}");
    // The www server redirects, on its own listener.
    let (status, _, location) = ask(p1, "www.app.test", "/a?b").await;
    assert_eq!((status, location.as_str()), (301, "https://app.test/a?b"));
    // Each catch-all server keeps its port; the default server takes unknown names.
    assert_eq!(ask(p2, "app.test", "/").await.1, "grafana");
    assert_eq!(ask(p2, "10.0.0.1", "/").await.1, "grafana");
    assert_eq!(ask(p3, "other.test", "/").await.1, "other");
    assert_eq!(ask(p3, "api.test", "/").await.1, "api");
    assert_eq!(ask(p3, "localhost", "/").await.1, "api");
    assert_eq!(ask(p3, "app.test", "/").await.1, "api");
    // nginx's 1 MB body limit: a 2 MB upload is refused before the backend has it.
    let mut conn = KeepAlive::connect(format!("127.0.0.1:{p3}").parse().unwrap())
        .await
        .unwrap();
    conn.host = "api.test".into();
    let big = conn.request("POST", "/upload", vec![b'x'; 2 << 20]).await;
    assert_eq!(big.unwrap().status, 413);
}
