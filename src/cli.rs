//! The CLI's client commands: each sends one request over the control socket and prints the
//! answer, short and aligned for people, or as the protocol's JSON lines with `--json`.
//!
//! Exit codes: 0 done, 1 refused (or the proxy could not be reached), 2 usage or config error,
//! 3 a rollout (or a deploy's) rolled back or was aborted.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use switchback_control::{
    encode_err, encode_event, BackendHealth, CanaryReply, CertSourceKind, CertsReply, Client,
    ClientError, DeployOutcome, DeployPhase, DeployReply, Event, PoolSetReply, ReloadReply,
    Request, RolloutOutcome, RolloutReply, StatusReply, SwitchReply, UpgradeReply, WindowView,
};

/// Where the control socket is: `--socket`, else `SWITCHBACK_SOCKET`, else the `[control]`
/// socket of `--config` (or of `./switchback.toml`, then `/etc/switchback/switchback.toml`).
pub fn resolve_socket(socket: Option<PathBuf>, config: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(s) = socket {
        return Ok(s);
    }
    let candidates: Vec<PathBuf> = match config {
        Some(c) => vec![c],
        None => ["switchback.toml", "/etc/switchback/switchback.toml"]
            .iter()
            .map(PathBuf::from)
            .filter(|p| p.exists())
            .collect(),
    };
    match candidates.first() {
        Some(path) => switchback_config::load(path)
            .map(|c| c.control.socket)
            .map_err(|e| e.to_string()),
        None => Err(
            "no control socket: pass --socket PATH, set SWITCHBACK_SOCKET, or pass --config FILE"
                .into(),
        ),
    }
}

/// Sends `request` and prints what comes back. `human` formats the final answer for people.
pub fn call<T: DeserializeOwned + Serialize>(
    socket: Result<PathBuf, String>,
    request: Request,
    json: bool,
    human: impl FnOnce(&T),
) -> ExitCode {
    call_then(socket, request, json, human, |_| ExitCode::SUCCESS)
}

/// As [`call`], with the exit code of a successful answer chosen by `exit`.
pub fn call_then<T: DeserializeOwned + Serialize>(
    socket: Result<PathBuf, String>,
    request: Request,
    json: bool,
    human: impl FnOnce(&T),
    exit: impl FnOnce(&T) -> ExitCode,
) -> ExitCode {
    let socket = match socket {
        Ok(s) => s,
        Err(e) => {
            eprintln!("switchback: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime for the CLI");
    let result = rt.block_on(async {
        let mut client = Client::connect(&socket).await?;
        client
            .call::<T>(&request, |event| {
                if json {
                    println!("{}", encode_event(event));
                } else {
                    print_event(event);
                }
            })
            .await
    });
    match result {
        Ok(reply) => {
            if json {
                #[derive(Serialize)]
                struct Ok<'a, T> {
                    ok: bool,
                    #[serde(flatten)]
                    reply: &'a T,
                }
                let line = serde_json::to_string(&Ok {
                    ok: true,
                    reply: &reply,
                })
                .expect("replies serialize");
                println!("{line}");
            } else {
                human(&reply);
            }
            exit(&reply)
        }
        Err(ClientError::Refused(e)) => {
            if json {
                println!("{}", encode_err(&e));
            }
            eprintln!("switchback: {}: {}", e.code.as_str(), e.message);
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("switchback: {e}");
            ExitCode::from(1)
        }
    }
}

fn print_event(event: &Event) {
    match event {
        Event::Draining {
            service,
            pool,
            in_flight,
            long_lived,
        } => println!(
            "{service}: waiting for {pool} to drain: {in_flight} in flight, {long_lived} long-lived"
        ),
        Event::WaitingHealth {
            service,
            pool,
            healthy,
            total,
        } => println!("{service}: pool {pool}: {healthy}/{total} new backends healthy"),
        Event::RolloutStep {
            service,
            pool,
            step,
            steps,
            percent,
        } => println!("{service}: step {step}/{steps}: {percent}% of clients on {pool}"),
        Event::DeployPhase {
            service,
            pool,
            phase,
            previous,
        } => match phase {
            DeployPhase::Health => println!(
                "{service}: deploying to {pool} (active: {previous}): waiting for the new backends' health checks"
            ),
            DeployPhase::Switch => println!("{service}: healthy; switching from {previous} to {pool}"),
            DeployPhase::Rollout => println!("{service}: healthy; rolling {pool} out"),
            DeployPhase::Drain => println!("{service}: waiting for {previous} to drain"),
        },
        Event::RolloutProgress {
            pool,
            stable_pool,
            step,
            steps,
            percent,
            canary,
            stable,
            next_step_in_ms,
            waiting_for_requests,
            ..
        } => {
            let next = if *waiting_for_requests {
                "waiting for enough canary requests".to_string()
            } else if *next_step_in_ms == 0 {
                "step passed".to_string()
            } else {
                format!("next step in {}s", next_step_in_ms.div_ceil(1000))
            };
            println!(
                "  step {step}/{steps} {percent}%   {pool}: {}   {stable_pool}: {}   {next}",
                window(canary),
                window(stable)
            );
        }
    }
}

fn window(w: &WindowView) -> String {
    let p95 = w
        .p95_ms
        .map_or_else(|| "-".to_string(), |ms| format!("{ms:.0}ms"));
    let failures = if w.connect_failures > 0 {
        format!(", {} failed connections", w.connect_failures)
    } else {
        String::new()
    };
    format!(
        "{} req, {}% 5xx, p95 {p95}{failures}",
        w.requests, w.error_rate
    )
}

pub fn print_canary(r: &CanaryReply) {
    if r.percent == 0.0 {
        println!(
            "{}: no canary; every client goes to {} (generation {})",
            r.service, r.active, r.generation
        );
    } else {
        println!(
            "{}: {}% of clients go to {}, the rest to {} (generation {})",
            r.service, r.percent, r.pool, r.active, r.generation
        );
    }
}

pub fn print_rollout(r: &RolloutReply) {
    match r.outcome {
        RolloutOutcome::Promoted => println!(
            "{}: rollout promoted: {} is the active pool (generation {})",
            r.service, r.pool, r.generation
        ),
        outcome => println!(
            "{}: rollout {}: every client is back on {}: {}\n  at step {}/{} ({}%): {}: {}   {}: {}",
            r.service,
            outcome.as_str().replace('_', " "),
            r.stable_pool,
            r.reason.as_deref().unwrap_or("no reason given"),
            r.step,
            r.steps,
            r.percent,
            r.pool,
            window(&r.canary),
            r.stable_pool,
            window(&r.stable)
        ),
    }
}

pub fn print_deploy(r: &DeployReply) {
    if let Some(rollout) = &r.rollout {
        print_rollout(rollout);
    }
    let drain = match &r.drain {
        Some(d) if d.drained => format!("; {} drained in {} ms", d.pool, d.waited_ms),
        Some(d) => format!(
            "; {} did not drain within the timeout ({} in flight, {} long-lived closed)",
            d.pool, d.in_flight, d.closed
        ),
        None => String::new(),
    };
    match r.outcome {
        DeployOutcome::Switched | DeployOutcome::Promoted => println!(
            "{}: deployed {} to {}, the active pool (was {}){drain} (generation {})",
            r.service,
            r.backends.join(", "),
            r.pool,
            r.previous,
            r.generation
        ),
        DeployOutcome::RolledBack => println!(
            "{}: deploy rolled back: {} stays the active pool; {} keeps {}",
            r.service,
            r.previous,
            r.pool,
            r.backends.join(", ")
        ),
    }
}

/// 0 when the deploy switched or was promoted, 3 when its rollout rolled back.
pub fn deploy_exit(r: &DeployReply) -> ExitCode {
    match r.outcome {
        DeployOutcome::RolledBack => ExitCode::from(3),
        _ => ExitCode::SUCCESS,
    }
}

/// 0 when the rollout was promoted, 3 when it rolled back or was aborted.
pub fn rollout_exit(r: &RolloutReply) -> ExitCode {
    if r.outcome == RolloutOutcome::Promoted {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    }
}

/// The fleet part of `status`: this node's link to etcd, and every node known.
fn print_fleet(fleet: &switchback_control::FleetStatus, generation: u64) {
    match &fleet.problem {
        None => println!("fleet   node {}   connected to etcd", fleet.node),
        Some(why) => println!(
            "fleet   node {}   NOT connected to etcd ({why}): serving generation {generation}, changes refused",
            fleet.node
        ),
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    for n in &fleet.nodes {
        let seen = if n.connected {
            "now".to_string()
        } else {
            format!("{}s ago", (now - n.last_seen).max(0))
        };
        let link = if n.connected {
            "connected"
        } else {
            "disconnected"
        };
        let error = n
            .error
            .as_deref()
            .map(|e| format!("   {e}"))
            .unwrap_or_default();
        println!(
            "  node {:<20} generation {:<6} {link:<13} last seen {seen}{error}",
            n.name, n.generation
        );
    }
}

pub fn print_status(s: &StatusReply) {
    println!(
        "switchback {}   pid {}   since {}   generation {}",
        s.version,
        s.pid,
        switchback_config::time::format_utc(s.started),
        s.generation
    );
    for notice in &s.notices {
        println!("notice: {notice}");
    }
    if let Some(fleet) = &s.fleet {
        print_fleet(fleet, s.generation);
    }
    for (i, service) in s.services.iter().enumerate() {
        if i > 0 {
            println!();
        }
        let hosts = if service.hosts.is_empty() {
            "*".to_string()
        } else {
            service.hosts.join(", ")
        };
        let mut line = format!(
            "service {}   hosts {}   prefix {}",
            service.name, hosts, service.path_prefix
        );
        if !service.listen.is_empty() {
            line.push_str(&format!("   listen {}", service.listen.join(", ")));
        }
        if service.default {
            line.push_str("   default");
        }
        println!("{line}");
        if let Some(r) = &service.redirect {
            println!("  redirect {} {}", r.code, r.to);
            continue;
        }
        let mut active = format!("  active  {}", service.active);
        if service.active != service.configured_active {
            active.push_str(&format!("   (config file: {})", service.configured_active));
        }
        if let Some(prev) = &service.previous {
            active.push_str(&format!("   previous {prev}"));
        }
        println!("{active}");
        let split: Vec<String> = service
            .split
            .iter()
            .map(|s| format!("{} {}%", s.pool, s.percent))
            .collect();
        println!("  traffic {}", split.join(", "));
        if let Some(r) = &service.rollout {
            let state = match (&r.outcome, &r.reason) {
                (None, _) => "running".to_string(),
                (Some(o), Some(why)) => format!("{}: {why}", o.as_str().replace('_', " ")),
                (Some(o), None) => o.as_str().replace('_', " "),
            };
            let driver = r
                .node
                .as_ref()
                .map(|n| format!(" (driven by fleet node {n})"))
                .unwrap_or_default();
            println!(
                "  rollout {} (stable {})   step {}/{} at {}%   {state}{driver}",
                r.pool, r.stable_pool, r.step, r.steps, r.percent
            );
        }
        let mut rows = vec![[
            "POOL".to_string(),
            "BACKEND".to_string(),
            "HEALTH".to_string(),
            "IN FLIGHT".to_string(),
            "LONG-LIVED".to_string(),
        ]];
        for pool in &service.pools {
            let mut name = pool.name.clone();
            if pool.name == service.active {
                name.push_str(" *");
            }
            if pool.differs_from_config {
                name.push_str(" (live)");
            }
            if pool.backends.is_empty() {
                rows.push([
                    name.clone(),
                    "-".into(),
                    "-".into(),
                    pool.in_flight.to_string(),
                    pool.long_lived.to_string(),
                ]);
            }
            for (j, b) in pool.backends.iter().enumerate() {
                let health = match &b.last_error {
                    Some(e) if b.health != BackendHealth::Healthy => {
                        format!("{} ({e})", b.health.as_str())
                    }
                    _ => b.health.as_str().to_string(),
                };
                let (pool_cell, flight, long_lived) = if j == 0 {
                    (
                        name.clone(),
                        pool.in_flight.to_string(),
                        pool.long_lived.to_string(),
                    )
                } else {
                    (String::new(), String::new(), String::new())
                };
                // A resolved address shows the name it came from; a name with no address is
                // shown as itself.
                let backend = match &b.name {
                    Some(n) if *n != b.address => format!("{} ({n})", b.address),
                    _ => b.address.clone(),
                };
                rows.push([pool_cell, backend, health, flight, long_lived]);
            }
        }
        print_table(&rows);
    }
    println!(
        "\ngeneration {}   state {}   config {}",
        s.generation, s.state_file, s.config_file
    );
}

fn print_table<const N: usize>(rows: &[[String; N]]) {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in rows {
        let mut line = String::from("  ");
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}   ", width = widths[i]));
            }
        }
        println!("{}", line.trim_end());
    }
}

pub fn print_switch(r: &SwitchReply) {
    if r.changed {
        println!(
            "{}: switched {} -> {} (generation {})",
            r.service, r.previous, r.pool, r.generation
        );
    } else {
        println!(
            "{}: {} is already active; nothing changed",
            r.service, r.pool
        );
    }
    if let Some(d) = &r.drain {
        let secs = d.waited_ms as f64 / 1000.0;
        let closed = if d.closed > 0 {
            format!(", {} long-lived connection(s) closed", d.closed)
        } else {
            String::new()
        };
        if d.drained {
            println!(
                "{}: {} drained after {secs:.1}s: nothing in flight{closed}",
                r.service, d.pool
            );
        } else {
            println!(
                "{}: drain timeout: {} still has {} request(s) in flight after {secs:.1}s{closed}",
                r.service, d.pool, d.in_flight
            );
        }
    }
}

pub fn print_upgrade(r: &UpgradeReply) {
    println!(
        "upgrade: the listening sockets went from pid {} to pid {}",
        r.old_pid, r.new_pid
    );
}

/// After `upgrade`: waits until the new process answers on the control socket, which it does
/// once it serves; exit 0 then, 1 if it does not within 30 s.
pub fn wait_serving(socket: &Path, new_pid: u32, json: bool) -> ExitCode {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime for the CLI");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let serving = rt.block_on(async {
        while std::time::Instant::now() < deadline {
            if let Ok(mut client) = Client::connect(socket).await {
                let status = client
                    .call::<StatusReply>(&Request::Status { service: None }, |_| {})
                    .await;
                match status {
                    Ok(status) if status.pid == new_pid => return Some(status),
                    _ => {}
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    });
    match serving {
        Some(status) => {
            if !json {
                println!("pid {} serves (switchback {})", status.pid, status.version);
            }
            ExitCode::SUCCESS
        }
        None => {
            eprintln!("switchback: the new process (pid {new_pid}) did not answer on {} within 30 s: see its log", socket.display());
            ExitCode::from(1)
        }
    }
}

pub fn print_reload(r: &ReloadReply) {
    if r.changes.is_empty() {
        println!("{}: reloaded, nothing changed", r.config_file);
    } else {
        println!("{}: reloaded (generation {})", r.config_file, r.generation);
        for change in &r.changes {
            println!("  {change}");
        }
    }
    if !r.needs_upgrade.is_empty() {
        println!(
            "not applied, needs `switchback upgrade` (a new process): {}",
            r.needs_upgrade.join(", ")
        );
    }
}

pub fn print_certs(r: &CertsReply) {
    if r.certs.is_empty() {
        println!("no TLS hosts");
        return;
    }
    let time = |t: Option<i64>| {
        t.map(switchback_config::time::format_utc)
            .unwrap_or_else(|| "-".into())
    };
    let mut rows = vec![[
        "HOST".to_string(),
        "SOURCE".to_string(),
        "ISSUER".to_string(),
        "NOT AFTER".to_string(),
        "NEXT RENEWAL".to_string(),
        "SERIAL".to_string(),
        "LAST ERROR".to_string(),
    ]];
    for c in &r.certs {
        let error = match (&c.last_error, c.consecutive_failures) {
            (Some(e), 0) => e.clone(),
            (Some(e), n) => format!("{e} ({n} in a row)"),
            (None, _) => "-".into(),
        };
        rows.push([
            c.host.clone(),
            match c.source {
                CertSourceKind::Acme => "acme".to_string(),
                CertSourceKind::File => "file".to_string(),
            },
            c.issuer.clone().unwrap_or_else(|| "(none served)".into()),
            time(c.not_after),
            if c.source == CertSourceKind::Acme {
                time(c.next_renewal)
            } else {
                "-".into()
            },
            c.serial.clone().unwrap_or_else(|| "-".into()),
            error,
        ]);
    }
    print_table(&rows);
}

pub fn print_pool_set(r: &PoolSetReply) {
    println!(
        "{}: pool {} now {} (was {}) (generation {})",
        r.service,
        r.pool,
        r.backends.join(","),
        if r.previous_backends.is_empty() {
            "empty".to_string()
        } else {
            r.previous_backends.join(",")
        },
        r.generation
    );
    for name in &r.unresolved {
        eprintln!("warning: {name}; the pool has no backend for it until it resolves");
    }
}
