//! `listen.proxy_protocol` behind a real load balancer: Debian's HAProxy in TCP mode in front,
//! sending PROXY protocol version 2 (`send-proxy-v2`) or version 1 (`send-proxy`), on HTTP and
//! on HTTPS (the header before the handshake). The backend and the access log see the client,
//! not the balancer; a header from an untrusted address is not believed; a trusted source that
//! sends none is closed and counted.

mod support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::pebble::{client_config, https_get, self_signed};
use support::*;

/// The address HAProxy connects to switchback from: the one trusted source.
const BALANCER: &str = "127.0.0.7";

struct HaProxy {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl HaProxy {
    /// HAProxy in TCP mode on a free port, forwarding to `to` from [`BALANCER`] with `send`
    /// (`send-proxy` or `send-proxy-v2`).
    fn start(to: SocketAddr, send: &str) -> HaProxy {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("haproxy.cfg");
        std::fs::write(
            &config,
            format!(
                "global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
                 frontend front\n  bind 127.0.0.1:{port}\n  default_backend back\n\
                 backend back\n  server switchback {to} source {BALANCER} {send}\n"
            ),
        )
        .unwrap();
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy (Debian's haproxy package) is installed");
        wait_for("haproxy to listen", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        HaProxy {
            child,
            port,
            _dir: dir,
        }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn forwarded_for(body: &str) -> Option<&str> {
    body.lines()
        .find_map(|l| l.strip_prefix("x-forwarded-for: "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_behind_haproxy_is_the_client_over_http_with_either_version() {
    let app = Upstream::start("blue");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let mut proxy = Proxy::unstarted(false);
    proxy.listen = format!("proxy_protocol = [\"{BALANCER}/32\"]\n");
    proxy.server = "client_header_timeout = \"1s\"".into();
    proxy.launch(&format!(
        "[access_log]\npath = \"{}\"\n\n[services.app]\nactive = \"blue\"\npools.blue = [\"{}\"]\n",
        log.display(),
        app.addr
    ));
    for send in ["send-proxy-v2", "send-proxy"] {
        let haproxy = HaProxy::start(proxy.addr(), send);
        let mut c = KeepAlive::connect_from(haproxy.addr(), "127.0.0.2")
            .await
            .unwrap();
        // Two requests on one connection: the header comes once, before the first.
        for _ in 0..2 {
            let answer = c.get("/headers").await.unwrap();
            assert_eq!(answer.status, 200, "{send}");
            assert_eq!(
                forwarded_for(&answer.body),
                Some("127.0.0.2"),
                "{send}: {}",
                answer.body
            );
        }
    }
    wait_for("four access log lines", Duration::from_secs(5), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count()
            >= 4
    });
    let text = std::fs::read_to_string(&log).unwrap();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["client"], "127.0.0.2", "{line}");
    }

    // From an untrusted address, a PROXY header is not believed: it is no HTTP request.
    let mut s = std::net::TcpStream::connect(proxy.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(b"PROXY TCP4 203.0.113.9 127.0.0.1 5555 80\r\nGET /headers HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(!answer.contains("203.0.113.9"), "{answer}");
    // And a client without one is served as before.
    let answer = get_once(proxy.addr(), "/headers").await.unwrap();
    assert_eq!(forwarded_for(&answer.body), Some("127.0.0.1"));

    // The trusted source sends no header, or garbage: closed without an answer, and counted.
    let before = proxy
        .metric("switchback_access_denied_total{reason=\"proxy_protocol\",service=\"\"}")
        .unwrap();
    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n"[..],
        b"PROXY TCP4 nonsense\r\n",
    ] {
        let mut s = raw_connect_from(BALANCER, proxy.addr()).await;
        s.write_all(garbage).unwrap();
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    }
    wait_for("the refusals counted", Duration::from_secs(5), || {
        proxy.metric("switchback_access_denied_total{reason=\"proxy_protocol\",service=\"\"}")
            == Some(before + 2.0)
    });
    // A trusted source that sends nothing at all is closed at client_header_timeout.
    let mut s = raw_connect_from(BALANCER, proxy.addr()).await;
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(answer.is_empty());
    assert_eq!(
        proxy.metric("switchback_access_denied_total{reason=\"proxy_protocol\",service=\"\"}"),
        Some(before + 3.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_comes_before_the_tls_handshake_on_https() {
    let app = Upstream::start("blue");
    let mut proxy = Proxy::unstarted(true);
    proxy.listen = format!("proxy_protocol = [\"{BALANCER}\"]\n");
    let dir = proxy.dir.path().to_path_buf();
    let (cert, key) = self_signed(&["app.switchback.test"]);
    std::fs::write(dir.join("app.pem"), &cert).unwrap();
    std::fs::write(dir.join("app.key"), &key).unwrap();
    proxy.launch(&format!(
        "[services.app]\nhosts = [\"app.switchback.test\"]\nactive = \"blue\"\npools.blue = [\"{}\"]\n\
         tls = {{ cert = \"{d}/app.pem\", key = \"{d}/app.key\" }}\nhttps_redirect = false\n",
        app.addr,
        d = dir.display()
    ));
    let https = SocketAddr::from(([127, 0, 0, 1], proxy.https_port.unwrap()));
    for send in ["send-proxy-v2", "send-proxy"] {
        let haproxy = HaProxy::start(https, send);
        let answer = https_get(
            client_config(&cert, &[b"http/1.1"]),
            haproxy.port,
            "app.switchback.test",
            "/headers",
        )
        .await
        .unwrap();
        assert_eq!(answer.status, 200, "{send}");
        // The client (127.0.0.1), not the balancer (127.0.0.7), and over HTTPS.
        assert_eq!(
            forwarded_for(&answer.body),
            Some("127.0.0.1"),
            "{send}: {}",
            answer.body
        );
        assert!(
            answer.body.contains("x-forwarded-proto: https"),
            "{}",
            answer.body
        );
    }
    // HTTP/2 through the balancer too.
    let haproxy = HaProxy::start(https, "send-proxy-v2");
    let root = dir.join("root.pem");
    std::fs::write(&root, &cert).unwrap();
    let port = haproxy.port;
    let out = Command::new("curl")
        .args(["-sS", "--http2", "--cacert"])
        .arg(&root)
        .args([
            "--resolve",
            &format!("app.switchback.test:{port}:127.0.0.1"),
        ])
        .args(["-w", "%{http_version}"])
        .arg(format!("https://app.switchback.test:{port}/headers"))
        .output()
        .expect("curl is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.ends_with('2'), "not HTTP/2: {text}");
    assert_eq!(forwarded_for(&text), Some("127.0.0.1"), "{text}");
    // A trusted source that starts with the TLS handshake, no header: closed.
    let mut s = raw_connect_from(BALANCER, https).await;
    s.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5])
        .unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(answer.is_empty());
    wait_for("the refusal counted", Duration::from_secs(5), || {
        proxy.metric("switchback_access_denied_total{reason=\"proxy_protocol\",service=\"\"}")
            == Some(1.0)
    });
}
