//! `switchback demo`: the proxy in front of two small built-in backends, blue and green, so a
//! newcomer can watch a switch without setting anything up.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

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

/// Gets everything ready for `switchback demo`: the config written and loaded, the blue and
/// green backends serving, and what to try next printed. The caller runs the proxy.
pub fn prepare(port: u16) -> Result<switchback_config::Config, ExitCode> {
    let path = write_config(port).map_err(|e| {
        eprintln!("switchback: cannot write the demo config in {DEMO_DIR}: {e}");
        ExitCode::from(1)
    })?;
    let config = switchback_config::load(&path).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(2)
    })?;
    let backends = [
        ("blue", "127.0.0.1:9001".parse().expect("an address")),
        ("green", "127.0.0.1:9002".parse().expect("an address")),
    ];
    start_backends(&backends).map_err(|e| {
        eprintln!("switchback: {e}");
        ExitCode::from(1)
    })?;
    let me = std::env::current_exe()
        .ok()
        .and_then(|p| {
            let cwd = std::env::current_dir().ok()?;
            Some(
                p.strip_prefix(&cwd)
                    .map(|r| PathBuf::from(".").join(r))
                    .unwrap_or(p),
            )
        })
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "switchback".into());
    let sock = config.control.socket.display().to_string();
    println!(
        "\nswitchback demo: proxy on http://127.0.0.1:{port}, blue backend on 127.0.0.1:9001, green on 127.0.0.1:9002\n\
         config {}   control socket {sock}\n\n\
         Try, in another terminal:\n\
         \x20 curl http://127.0.0.1:{port}/\n\
         \x20 {me} --socket {sock} switch green\n\
         \x20 curl http://127.0.0.1:{port}/\n\
         \x20 {me} --socket {sock} status\n\
         \x20 {me} --socket {sock} rollback\n\
         \x20 {me} --socket {sock} canary green 50   # half the clients (curl -b jar -c jar keeps one on its pool)\n\
         \x20 {me} --socket {sock} rollout green --steps 10,50,100 --interval 10s --min-requests 5\n\n\
         Stop with Ctrl-C. The live pool is kept in {DEMO_DIR}/state and survives a restart.\n",
        path.display(),
    );
    Ok(config)
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
