//! A DNS server the test controls: Debian's `pebble-challtestsrv`, serving the A records a test
//! sets over its management API (with a TTL of 0), and no address for any other name.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command};
use std::time::Duration;

use super::{free_port, pebble::require, wait_for};

pub struct DnsServer {
    /// Where it answers queries, over UDP and TCP.
    pub addr: SocketAddr,
    management: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl DnsServer {
    pub fn start() -> DnsServer {
        require("pebble-challtestsrv");
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("dns.log")).unwrap();
        let (port, management) = (free_port(), free_port());
        let child = Command::new("pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{port}")])
            .args(["-management", &format!("127.0.0.1:{management}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            // No made-up answer for names nobody set: they do not resolve.
            .args(["-defaultIPv4", "", "-defaultIPv6", ""])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start pebble-challtestsrv");
        let server = DnsServer {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            management,
            child,
            _dir: dir,
        };
        wait_for(
            "pebble-challtestsrv to listen",
            Duration::from_secs(20),
            || {
                TcpStream::connect(("127.0.0.1", management)).is_ok()
                    && TcpStream::connect(server.addr).is_ok()
            },
        );
        server
    }

    /// Makes `host` resolve to `addresses`, replacing what it had. Between the two calls this
    /// takes, the name briefly resolves to nothing: under load, use [`DnsServer::add_a`].
    pub fn set_a(&self, host: &str, addresses: &[&str]) {
        self.clear_a(host);
        self.add_a(host, addresses);
    }

    /// Adds `addresses` to what `host` resolves to. A name with a record of its own no longer
    /// gets the default address: the move from the default to a record is atomic.
    pub fn add_a(&self, host: &str, addresses: &[&str]) {
        let body = serde_json::json!({ "host": format!("{host}."), "addresses": addresses });
        self.manage("/add-a", &body.to_string());
    }

    /// The address every name without a record of its own resolves to.
    pub fn set_default_ipv4(&self, ip: &str) {
        self.manage(
            "/set-default-ipv4",
            &serde_json::json!({ "ip": ip }).to_string(),
        );
    }

    /// Makes `host` resolve to nothing.
    pub fn clear_a(&self, host: &str) {
        let body = serde_json::json!({ "host": format!("{host}.") });
        self.manage("/clear-a", &body.to_string());
    }

    fn manage(&self, path: &str, body: &str) {
        let mut s = TcpStream::connect(("127.0.0.1", self.management)).unwrap();
        write!(
            s,
            "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer}");
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
