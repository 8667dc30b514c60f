//! Active health checks: one HTTP probe per backend per interval, recorded in the backend's
//! [`HealthState`] that the request path reads.
//!
//! The checker of a service probes whatever the [`HealthRegistry`] holds for it, so backends
//! added by `pool set` are checked from the next round on. Verdicts follow common practice
//! (HAProxy's rise/fall): the first probe decides for a new backend; after that a healthy
//! backend goes down after `unhealthy_threshold` failures in a row and comes back after
//! `healthy_threshold` passes in a row. `pool set --wait` uses [`wait_healthy`] to hold a
//! change until the new backends pass.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use switchback_config::{defaults, Config, HealthConfig, ServiceConfig};
use switchback_proxy::health::{Health, HealthRegistry, HealthState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{info, warn};

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("send: {0}")]
    Send(std::io::Error),
    #[error("read: {0}")]
    Read(std::io::Error),
    #[error("connection closed before a status line")]
    Closed,
    #[error("answer is not HTTP/1.x")]
    NotHttp,
    #[error("status {0}")]
    Status(u16),
    #[error("no answer within {}ms", .0.as_millis())]
    Timeout(Duration),
}

/// One HTTP probe: `GET path` with `Host: host` (the backend's name and port, when it was
/// given by name; else its address), passing on any 2xx or 3xx status within `timeout`.
pub async fn probe(
    addr: SocketAddr,
    host: Option<&str>,
    path: &str,
    timeout: Duration,
) -> Result<(), ProbeError> {
    let attempt = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(ProbeError::Connect)?;
        let host = match host {
            Some(h) => h.to_string(),
            None => addr.to_string(),
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: switchback-health-check\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(ProbeError::Send)?;
        let mut buf = [0u8; 64];
        let mut len = 0;
        while len < 12 {
            let n = stream
                .read(&mut buf[len..])
                .await
                .map_err(ProbeError::Read)?;
            if n == 0 {
                return Err(ProbeError::Closed);
            }
            len += n;
        }
        let status = parse_status(&buf[..len]).ok_or(ProbeError::NotHttp)?;
        if (200..400).contains(&status) {
            Ok(())
        } else {
            Err(ProbeError::Status(status))
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(ProbeError::Timeout(timeout)),
    }
}

fn parse_status(head: &[u8]) -> Option<u16> {
    let rest = head.strip_prefix(b"HTTP/1.")?;
    let code = rest.get(2..5)?;
    if rest.get(1) != Some(&b' ') {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

/// Probes every backend of one service each interval until `shutdown` turns true.
pub async fn run_checker(
    service: String,
    config: HealthConfig,
    registry: Arc<HealthRegistry>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => if *shutdown.borrow() { return },
        }
        check_round(&service, &config, &registry).await;
    }
}

/// Probes every backend of `service` once, each verdict counted as the checker counts it.
async fn check_round(service: &str, config: &HealthConfig, registry: &HealthRegistry) {
    let mut probes = tokio::task::JoinSet::new();
    for (addr, state) in registry.targets(service) {
        let path = config.path.clone();
        let timeout = config.timeout;
        probes.spawn(async move {
            let result = probe(addr, state.host(), &path, timeout).await;
            (addr, state, result)
        });
    }
    while let Some(done) = probes.join_next().await {
        let Ok((addr, state, result)) = done else {
            continue;
        };
        let error = result.as_ref().err().map(ToString::to_string);
        match state.observe(result, config.healthy_threshold, config.unhealthy_threshold) {
            Some(Health::Healthy) => {
                info!(service = %service, backend = %addr, "backend is healthy")
            }
            Some(_) => {
                warn!(service = %service, backend = %addr, error = error.as_deref().unwrap_or(""), "backend is down")
            }
            None => {}
        }
    }
}

/// One round of health checks for every service that has them (a service's backends at once):
/// how an upgrade's new process learns its backends' health before it takes traffic over.
pub async fn check_all_once(config: &Config, registry: &HealthRegistry) {
    for service in &config.services {
        if let Some(health) = &service.health {
            check_round(&service.name, health, registry).await;
        }
    }
}

/// The new backends of a `pool set --wait` did not all pass in time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthTimeout {
    pub timeout: Duration,
    /// Each backend that did not pass, and why.
    pub detail: String,
}

/// Waits until every one of `backends` passes its health check, or `timeout` passes.
///
/// For a service with a health check, the backends are registered with the checker (which
/// probes them from its next round) and their verdicts are watched; the returned states must
/// be held until a routing table holds the backends, or the checker forgets them. A service
/// without one gets a direct probe of `/` per backend per half second. `on_progress` hears the
/// number passing out of the total whenever it changes.
pub async fn wait_healthy(
    registry: &HealthRegistry,
    service: &ServiceConfig,
    backends: &[SocketAddr],
    timeout: Duration,
    on_progress: &mut impl FnMut(usize, usize),
) -> Result<Vec<Arc<HealthState>>, HealthTimeout> {
    let checked = service.health.is_some();
    let states: Vec<Arc<HealthState>> = backends
        .iter()
        .map(|a| registry.get(&service.name, *a, checked))
        .collect();
    let (path, probe_timeout, pause) = match &service.health {
        Some(h) => (h.path.clone(), h.timeout, Duration::from_millis(20)),
        None => (
            defaults::HEALTH_PATH.to_string(),
            defaults::HEALTH_TIMEOUT,
            Duration::from_millis(500),
        ),
    };
    let deadline = Instant::now() + timeout;
    let mut reported = usize::MAX;
    let mut errors: Vec<Option<String>> = vec![None; backends.len()];
    loop {
        let mut healthy = 0;
        for (i, (addr, state)) in backends.iter().zip(&states).enumerate() {
            let ok = if checked {
                errors[i] = state.last_error();
                state.get() == Health::Healthy
            } else {
                let result = probe(*addr, state.host(), &path, probe_timeout).await;
                errors[i] = result.as_ref().err().map(ToString::to_string);
                result.is_ok()
            };
            healthy += ok as usize;
        }
        if healthy != reported {
            on_progress(healthy, backends.len());
            reported = healthy;
        }
        if healthy == backends.len() {
            return Ok(states);
        }
        if Instant::now() >= deadline {
            let detail = backends
                .iter()
                .zip(&states)
                .zip(&errors)
                .filter(|((_, s), _)| !checked || s.get() != Health::Healthy)
                .map(|((a, s), e)| match e {
                    Some(e) => format!("{a}: {e}"),
                    None if checked => format!("{a}: {}", s.get().as_str()),
                    None => format!("{a}: passed"),
                })
                .collect::<Vec<_>>()
                .join(", ");
            return Err(HealthTimeout { timeout, detail });
        }
        tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn status_lines_parse() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.0 503 x"), Some(503));
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH"), None);
    }

    #[tokio::test]
    async fn probe_reports_refused_and_bad_status() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n")
                    .await;
            }
        });
        let err = probe(addr, None, "/", Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(matches!(err, ProbeError::Status(500)), "{err}");
        assert_eq!(err.to_string(), "status 500");
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let err = probe(closed, None, "/", Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(matches!(err, ProbeError::Connect(_)), "{err}");
        assert!(err.to_string().starts_with("connect:"), "{err}");
    }

    /// A backend given by name is asked for by its name, as a virtual host behind it expects.
    #[tokio::test]
    async fn probe_sends_the_name_as_host() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = tokio::spawn(async move {
            let mut hosts = Vec::new();
            for _ in 0..2 {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 1024];
                let mut len = 0;
                while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                    len += s.read(&mut buf[len..]).await.unwrap();
                }
                let head = String::from_utf8_lossy(&buf[..len]).to_string();
                hosts.push(
                    head.lines()
                        .find(|l| l.starts_with("Host: "))
                        .map(str::to_string),
                );
                s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                    .await
                    .unwrap();
            }
            hosts
        });
        probe(
            addr,
            Some("api-green:8000"),
            "/health",
            Duration::from_secs(2),
        )
        .await
        .unwrap();
        probe(addr, None, "/health", Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(
            seen.await.unwrap(),
            [
                Some("Host: api-green:8000".to_string()),
                Some(format!("Host: {addr}"))
            ]
        );
    }

    fn checked_service() -> ServiceConfig {
        let config = switchback_config::parse(
            Path::new("t.toml"),
            "[listen]\nhttp = [\"127.0.0.1:1\"]\n[control]\nsocket = \"/tmp/s\"\n[state]\ndir = \"/tmp/d\"\n\
             [services.app]\nactive = \"blue\"\npools.blue = [\"127.0.0.1:2\"]\n\
             health = { path = \"/health\", interval = \"1s\" }\n",
        )
        .unwrap();
        config.services[0].clone()
    }

    #[tokio::test(start_paused = true)]
    async fn wait_healthy_returns_once_every_new_backend_passes() {
        let registry = Arc::new(HealthRegistry::default());
        let service = checked_service();
        let backends: Vec<SocketAddr> = vec![
            "127.0.0.1:9101".parse().unwrap(),
            "127.0.0.1:9102".parse().unwrap(),
        ];
        // The checker's verdicts, as they would arrive: one backend after 1 s, the other after 3 s.
        let verdicts = {
            let registry = registry.clone();
            let backends = backends.clone();
            tokio::spawn(async move {
                for (addr, after) in backends.iter().zip([1, 2]) {
                    tokio::time::sleep(Duration::from_secs(after)).await;
                    registry
                        .get("app", *addr, true)
                        .observe(Ok::<(), &str>(()), 2, 3);
                }
            })
        };
        let started = Instant::now();
        let mut seen = Vec::new();
        let states = wait_healthy(
            &registry,
            &service,
            &backends,
            Duration::from_secs(10),
            &mut |healthy, total| seen.push((healthy, total)),
        )
        .await
        .expect("both pass within the timeout");
        verdicts.await.unwrap();
        assert_eq!(states.len(), 2);
        assert_eq!(seen, vec![(0, 2), (1, 2), (2, 2)]);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(3) && waited < Duration::from_millis(3100),
            "returned as the last one passed: {waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn wait_healthy_times_out_naming_the_backends_that_did_not_pass() {
        let registry = HealthRegistry::default();
        let service = checked_service();
        let good: SocketAddr = "127.0.0.1:9201".parse().unwrap();
        let bad: SocketAddr = "127.0.0.1:9202".parse().unwrap();
        registry
            .get("app", good, true)
            .observe(Ok::<(), &str>(()), 2, 3);
        registry
            .get("app", bad, true)
            .observe(Err("status 503"), 2, 3);
        let started = Instant::now();
        let err = wait_healthy(
            &registry,
            &service,
            &[good, bad],
            Duration::from_secs(4),
            &mut |_, _| {},
        )
        .await
        .unwrap_err();
        assert_eq!(err.timeout, Duration::from_secs(4));
        assert_eq!(err.detail, "127.0.0.1:9202: status 503", "{err:?}");
        assert_eq!(started.elapsed(), Duration::from_secs(4));
    }
}
