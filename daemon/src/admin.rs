//! The admin listener: `/metrics` for Prometheus, `/healthz` for an outer load balancer, and
//! `/readyz` for an orchestrator that must know when traffic can be sent.
//!
//! It is off unless `[admin] listen` is set, and meant for a loopback or private address: it
//! tells anyone who can reach it the shape of the deployment.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use switchback_certs::CertManager;

use crate::controller::Controller;
use crate::{scrape, status};

pub struct AdminApp {
    controller: Arc<Controller>,
    certs: Option<Arc<CertManager>>,
    /// The proxy's listeners; ready once each accepts a connection.
    listeners: Vec<SocketAddr>,
    ready: AtomicBool,
}

impl AdminApp {
    pub fn new(
        controller: Arc<Controller>,
        certs: Option<Arc<CertManager>>,
        listeners: Vec<SocketAddr>,
    ) -> AdminApp {
        AdminApp {
            controller,
            certs,
            listeners,
            ready: AtomicBool::new(false),
        }
    }

    /// Ready means: the config was loaded and the state restored (the controller exists), and
    /// every proxy listener accepts connections. Once true it stays true.
    async fn readiness(&self) -> Result<(), String> {
        if self.ready.load(Ordering::Relaxed) {
            return Ok(());
        }
        for addr in &self.listeners {
            let target = reachable(*addr);
            let connect = tokio::net::TcpStream::connect(target);
            match tokio::time::timeout(Duration::from_millis(500), connect).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(format!("listener {addr} is not accepting yet: {e}")),
                Err(_) => return Err(format!("listener {addr} did not accept within 500ms")),
            }
        }
        self.ready.store(true, Ordering::Relaxed);
        Ok(())
    }
}

/// Where to connect to reach a listener bound to a wildcard address.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

fn respond(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body)
        .expect("a valid response")
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let text = "text/plain; charset=utf-8";
        if session.req_header().method != http::Method::GET {
            return respond(405, text, b"only GET\n".to_vec());
        }
        match session.req_header().uri.path() {
            "/metrics" => {
                let certs = self
                    .certs
                    .as_ref()
                    .map(|c| c.statuses())
                    .unwrap_or_default();
                let status = status::read(&self.controller, None)
                    .expect("every service is known when none is named");
                let body = scrape::render(self.controller.metrics(), &status, &certs);
                respond(
                    200,
                    "text/plain; version=0.0.4; charset=utf-8",
                    body.into_bytes(),
                )
            }
            "/healthz" => respond(200, text, b"ok\n".to_vec()),
            "/readyz" => match self.readiness().await {
                Ok(()) => respond(200, text, b"ready\n".to_vec()),
                Err(why) => respond(503, text, format!("not ready: {why}\n").into_bytes()),
            },
            _ => respond(
                404,
                text,
                b"not found: try /metrics, /healthz or /readyz\n".to_vec(),
            ),
        }
    }
}
