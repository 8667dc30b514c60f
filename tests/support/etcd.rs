//! A real etcd (Debian's `etcd-server`): one member on loopback ports the kernel picked, with
//! a data dir of its own. It can be stopped and started again on the same ports and data, as
//! an outage and its end. [`Etcd::start_tls`] serves its clients over TLS only, and only to
//! clients with a certificate of its test CA.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, pebble::require, wait_for};

pub struct Etcd {
    /// The client URL, as `fleet.etcd` takes it.
    pub url: String,
    client_port: u16,
    peer_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    pub tls: Option<EtcdTls>,
}

/// The files of an etcd that speaks TLS: the CA that signed its certificate and the client's,
/// the client's certificate and its key (mode 0600), and etcd's own pair.
pub struct EtcdTls {
    pub ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
}

impl EtcdTls {
    fn write(dir: &std::path::Path) -> EtcdTls {
        use std::os::unix::fs::PermissionsExt;
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "switchback test CA for etcd");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf = |names: Vec<String>, usage: rcgen::ExtendedKeyUsagePurpose| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(names).unwrap();
            params.extended_key_usages = vec![usage];
            (params.signed_by(&key, &issuer).unwrap(), key)
        };
        let (server, server_key) = leaf(
            vec!["localhost".into(), "127.0.0.1".into()],
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client, client_key) = leaf(
            vec!["switchback-node".into()],
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        );
        let tls = EtcdTls {
            ca: dir.join("ca.pem"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
        };
        std::fs::write(&tls.ca, ca.pem()).unwrap();
        std::fs::write(&tls.client_cert, client.pem()).unwrap();
        std::fs::write(&tls.client_key, client_key.serialize_pem()).unwrap();
        std::fs::set_permissions(&tls.client_key, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&tls.server_cert, server.pem()).unwrap();
        std::fs::write(&tls.server_key, server_key.serialize_pem()).unwrap();
        tls
    }
}

impl Etcd {
    pub fn start() -> Etcd {
        require("etcd");
        let (client_port, peer_port) = (free_port(), free_port());
        let mut etcd = Etcd {
            url: format!("http://127.0.0.1:{client_port}"),
            client_port,
            peer_port,
            dir: tempfile::tempdir().unwrap(),
            child: None,
            tls: None,
        };
        etcd.spawn();
        etcd
    }

    /// An etcd that serves its clients over TLS and asks each for a certificate of its CA.
    pub fn start_tls() -> Etcd {
        require("etcd");
        let (client_port, peer_port) = (free_port(), free_port());
        let dir = tempfile::tempdir().unwrap();
        let tls = EtcdTls::write(dir.path());
        let mut etcd = Etcd {
            url: format!("https://127.0.0.1:{client_port}"),
            client_port,
            peer_port,
            dir,
            child: None,
            tls: Some(tls),
        };
        etcd.spawn();
        etcd
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .unwrap();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut etcd = Command::new("etcd");
        if let Some(tls) = &self.tls {
            etcd.arg("--cert-file")
                .arg(&tls.server_cert)
                .arg("--key-file")
                .arg(&tls.server_key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        let child = etcd
            .args(["--name", "test"])
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &self.url])
            .args(["--advertise-client-urls", &self.url])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("test={peer}")])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
        wait_for("etcd to serve", Duration::from_secs(30), || {
            TcpStream::connect(("127.0.0.1", self.client_port)).is_ok()
                && self.ctl(&["endpoint", "health"]).is_some()
        });
    }

    /// Kills etcd (an outage: no goodbye to its clients).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same ports and data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// `etcdctl` against this member: its output, or None when it failed.
    pub fn ctl(&self, args: &[&str]) -> Option<String> {
        let mut ctl = Command::new("etcdctl");
        if let Some(tls) = &self.tls {
            ctl.arg("--cacert")
                .arg(&tls.ca)
                .arg("--cert")
                .arg(&tls.client_cert)
                .arg("--key")
                .arg(&tls.client_key);
        }
        let out = ctl
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.url, "--command-timeout=2s"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The value of `key`, or None when there is none.
    pub fn get(&self, key: &str) -> Option<String> {
        let out = self.ctl(&["get", key, "--print-value-only"])?;
        let value = out.trim_end_matches('\n');
        (!value.is_empty()).then(|| value.to_string())
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
