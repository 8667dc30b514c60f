//! A real etcd (Debian's `etcd-server`): one member on loopback ports the kernel picked, with
//! a data dir of its own. It can be stopped and started again on the same ports and data, as
//! an outage and its end.

use std::net::TcpStream;
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
        let child = Command::new("etcd")
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
        let out = Command::new("etcdctl")
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
