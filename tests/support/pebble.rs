//! Pebble, the ACME test CA (Debian's `pebble` package), with `pebble-challtestsrv` as its DNS
//! server so that every name resolves to 127.0.0.1, and a TLS client that trusts what Pebble
//! issues.
//!
//! The package ships no certificate for Pebble's own HTTPS listener: each harness makes a CA
//! with rcgen, signs a `localhost`/`127.0.0.1` certificate for Pebble with it, and hands the CA
//! to switchback as `acme.ca_root`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use super::{free_port, wait_for};

pub struct Pebble {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub management_port: u16,
    /// The CA that signed Pebble's own listener certificate: switchback's `acme.ca_root`.
    pub ca_root: PathBuf,
    pebble: Option<Child>,
    challtestsrv: Option<Child>,
    config: PathBuf,
    dns_port: u16,
}

pub fn require(tool: &str) {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{tool} is missing: apt-get install -y pebble curl (.ci/run does)"
    );
}

impl Pebble {
    /// Starts Pebble validating HTTP-01 on `http_port` (the proxy's plain HTTP port). With
    /// `eab`, accounts must be bound to one of these (kid, base64url HMAC key) pairs.
    pub fn start(http_port: u16, eab: &[(&str, &str)]) -> Pebble {
        require("pebble");
        require("pebble-challtestsrv");
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "switchback test CA for Pebble");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .unwrap()
                .signed_by(&leaf_key, &issuer)
                .unwrap();
        let ca_root = dir.path().join("ca.pem");
        std::fs::write(&ca_root, ca.pem()).unwrap();
        std::fs::write(dir.path().join("pebble.pem"), leaf.pem()).unwrap();
        std::fs::write(dir.path().join("pebble.key"), leaf_key.serialize_pem()).unwrap();

        let (port, management_port, dns_port) = (free_port(), free_port(), free_port());
        let keys: serde_json::Map<String, serde_json::Value> = eab
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
            .collect();
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{port}"),
                "managementListenAddress": format!("127.0.0.1:{management_port}"),
                "certificate": dir.path().join("pebble.pem"),
                "privateKey": dir.path().join("pebble.key"),
                "httpPort": http_port,
                "tlsPort": free_port(),
                "ocspResponderURL": "",
                "externalAccountBindingRequired": !eab.is_empty(),
                "externalAccountMACKeys": keys,
            }
        });
        let config_path = dir.path().join("pebble.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let mut pebble = Pebble {
            dir,
            port,
            management_port,
            ca_root,
            pebble: None,
            challtestsrv: None,
            config: config_path,
            dns_port,
        };
        pebble.spawn_dns();
        pebble.spawn_pebble();
        pebble
    }

    fn log(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(name))
            .unwrap()
    }

    fn spawn_dns(&mut self) {
        let management = free_port();
        let child = Command::new("pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{}", self.dns_port)])
            .args(["-management", &format!("127.0.0.1:{management}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(self.log("challtestsrv.log"))
            .stderr(self.log("challtestsrv.log"))
            .spawn()
            .expect("start pebble-challtestsrv");
        self.challtestsrv = Some(child);
        wait_for(
            "pebble-challtestsrv to listen",
            Duration::from_secs(20),
            || std::net::TcpStream::connect(("127.0.0.1", management)).is_ok(),
        );
    }

    fn spawn_pebble(&mut self) {
        let child = Command::new("pebble")
            .arg("-config")
            .arg(&self.config)
            .args(["-dnsserver", &format!("127.0.0.1:{}", self.dns_port)])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(self.log("pebble.log"))
            .stderr(self.log("pebble.log"))
            .spawn()
            .expect("start pebble");
        self.pebble = Some(child);
        let (port, management) = (self.port, self.management_port);
        wait_for("pebble to listen", Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                && std::net::TcpStream::connect(("127.0.0.1", management)).is_ok()
        });
    }

    pub fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    /// `[acme]` for switchback.
    pub fn acme_section(&self, extra: &str) -> String {
        format!(
            "[acme]\ndirectory = \"{}\"\nca_root = \"{}\"\nemail = \"ops@switchback.test\"\nretry_after = \"1s\"\n{extra}\n",
            self.directory(),
            self.ca_root.display()
        )
    }

    /// Pebble's root of issuance (it changes with every Pebble start), as PEM.
    pub fn issuing_root(&self) -> String {
        let out = Command::new("curl")
            .args(["-sS", "--fail", "--cacert"])
            .arg(&self.ca_root)
            .arg(format!(
                "https://127.0.0.1:{}/roots/0",
                self.management_port
            ))
            .output()
            .expect("run curl");
        assert!(
            out.status.success(),
            "cannot fetch Pebble's root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Stops Pebble (the CA becomes unreachable); DNS stays.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.pebble.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn pebble_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
        if let Some(mut c) = self.challtestsrv.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What one HTTPS request saw.
#[derive(Debug, Clone)]
pub struct TlsAnswer {
    pub status: u16,
    pub serial: String,
    pub alpn: Option<Vec<u8>>,
    pub head: String,
    pub body: String,
}

/// A TLS client configuration trusting `root_pem`, offering the given ALPN protocols, without
/// session resumption.
pub fn client_config(root_pem: &str, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // Every connection a full handshake: a resumed session shows the certificate of the
    // session it resumes, not the one served now.
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// A fresh TLS connection (a full handshake) to 127.0.0.1:`port` for `host`, and one
/// HTTP/1.1 GET on it.
pub async fn https_get(
    config: Arc<rustls::ClientConfig>,
    port: u16,
    host: &str,
    path: &str,
) -> Result<TlsAnswer, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name =
        rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (serial, alpn) = {
        let (_, conn) = tls.get_ref();
        let leaf = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or("no certificate")?;
        (
            serial_of(leaf.as_ref()),
            conn.alpn_protocol().map(|p| p.to_vec()),
        )
    };
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    match tls.read_to_end(&mut raw).await {
        Ok(_) => {}
        // Some servers close without close_notify after Connection: close.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(format!("read: {e}")),
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not HTTP: {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status: {head:?}"))?;
    Ok(TlsAnswer {
        status,
        serial,
        alpn,
        head: head.to_string(),
        body: body.to_string(),
    })
}

/// The serial of a DER certificate, in the hex form `switchback certs` shows.
pub fn serial_of(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("a certificate");
    cert.raw_serial_as_string().replace(':', "")
}

/// A self-signed certificate and key for `names`, as PEM.
pub fn self_signed(names: &[&str]) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap()
            .self_signed(&key)
            .unwrap();
    (cert.pem(), key.serialize_pem())
}
