//! `switchback demo`: the proxy in front of two small built-in backends, blue and green, so a
//! newcomer can watch a switch without setting anything up.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

pub const DEMO_DIR: &str = "/tmp/switchback-demo";

/// The demo's config: the minimal example from the README, as written.
pub fn config_text(port: u16) -> String {
    format!(
        r#"[listen]
http = ["127.0.0.1:{port}"]

[control]
socket = "{DEMO_DIR}/control.sock"

[state]
dir = "{DEMO_DIR}/state"

[services.app]
hosts = []                    # empty: this service takes every Host
active = "blue"
pools.blue = ["127.0.0.1:9001"]
pools.green = ["127.0.0.1:9002"]
health = {{ path = "/", interval = "500ms", timeout = "1s" }}
"#
    )
}

/// Writes the demo config into the demo dir and returns its path.
pub fn write_config(port: u16) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(DEMO_DIR)?;
    let path = Path::new(DEMO_DIR).join("switchback.toml");
    switchback_config::atomic::write_atomic(&path, config_text(port).as_bytes(), 0o644)?;
    Ok(path)
}

/// Binds the demo backends now (so a taken port is reported before the proxy starts) and
/// serves them from a thread of their own.
pub fn start_backends(backends: &[(&'static str, SocketAddr)]) -> std::io::Result<()> {
    let mut listeners = Vec::new();
    for (name, addr) in backends {
        let l = std::net::TcpListener::bind(addr).map_err(|e| {
            std::io::Error::new(e.kind(), format!("demo backend {name} on {addr}: {e}"))
        })?;
        l.set_nonblocking(true)?;
        listeners.push((*name, l));
    }
    std::thread::Builder::new()
        .name("demo backends".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime for the demo backends");
            rt.block_on(async move {
                let mut tasks = tokio::task::JoinSet::new();
                for (name, l) in listeners {
                    let l = TcpListener::from_std(l).expect("a tokio listener");
                    tasks.spawn(serve(name, l));
                }
                while tasks.join_next().await.is_some() {}
            });
        })?;
    Ok(())
}

async fn serve(name: &'static str, listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| async move {
                let body = format!(
                    "hello from {name} ({} {})\n",
                    req.method(),
                    req.uri().path()
                );
                Ok::<_, Infallible>(
                    Response::builder()
                        .header("content-type", "text/plain")
                        .header("x-pool", name)
                        .body(Full::new(Bytes::from(body)))
                        .expect("a valid response"),
                )
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
