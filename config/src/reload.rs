//! A config reload: what a new config file changes against the one running, and the live state
//! after it.
//!
//! The file's routing (services, hosts, path prefixes, pools and their backends, health checks,
//! timeouts, retries, canary settings) is applied; live choices survive where the new file
//! still has what they name: the active pool, the pool `rollback` goes to, a canary, a running
//! rollout, and backends set with `pool set` while the file's list for that pool is unchanged.
//! Removing a pool that serves (the active pool, a canary, a running rollout's pool) is refused
//! unless forced. What only a new process can apply (listeners, threads, the state dir, the
//! control socket, …) is reported, not applied.

use crate::model::{Config, ServiceConfig};
use crate::state::{LiveState, PoolState};

/// What a reload does.
#[derive(Debug, Clone, PartialEq)]
pub struct ReloadPlan {
    /// The live state after the reload (its generation is the current one; the commit bumps it).
    pub state: LiveState,
    /// What changed, one line each.
    pub changes: Vec<String>,
    /// What the new file changes that only a new process applies (`switchback upgrade`).
    pub needs_upgrade: Vec<String>,
    /// Services whose running rollout must end first (only when forced).
    pub ends_rollouts: Vec<String>,
}

/// Plans the reload of `new` over `old`, with `live` the state now. Without `force`, a reload
/// that removes a pool in use is refused: the errors say what and why, one per line.
pub fn plan_reload(
    old: &Config,
    new: &Config,
    live: &LiveState,
    force: bool,
) -> Result<ReloadPlan, Vec<String>> {
    let mut refusals = Vec::new();
    let mut changes = Vec::new();
    let mut ends_rollouts = Vec::new();
    let mut state = LiveState::from_config(new);
    state.generation = live.generation;

    for old_service in &old.services {
        let name = &old_service.name;
        if new.service(name).is_some() {
            continue;
        }
        changes.push(format!("service {name:?} removed"));
        if let Some(mark) = live.services.get(name).and_then(|s| s.rollout.as_ref()) {
            if force {
                ends_rollouts.push(name.clone());
            } else {
                refusals.push(format!(
                    "service {name:?} is removed while a rollout of its pool {:?} runs",
                    mark.pool
                ));
            }
        }
    }

    for new_service in &new.services {
        let name = &new_service.name;
        let (Some(old_service), Some(now)) = (old.service(name), live.services.get(name)) else {
            changes.push(format!("service {name:?} added"));
            continue;
        };
        if old_service.redirect.is_some() || new_service.redirect.is_some() {
            // A redirect has no pools: nothing live carries over to or from one, and the
            // file's state (from_config) is the service's.
            redirect_change(
                old_service,
                new_service,
                now,
                force,
                &mut changes,
                &mut refusals,
            );
            if force && now.rollout.is_some() {
                ends_rollouts.push(name.clone());
            }
            continue;
        }
        let next = state
            .services
            .get_mut(name)
            .expect("from_config has every service of the new config");
        let kept = |pool: &str| new_service.pool(pool).is_some();

        for pool in &old_service.pools {
            if !kept(&pool.name) {
                changes.push(format!("service {name:?}: pool {:?} removed", pool.name));
            }
        }
        for pool in &new_service.pools {
            let Some(old_pool) = old_service.pool(&pool.name) else {
                changes.push(format!("service {name:?}: pool {:?} added", pool.name));
                continue;
            };
            let live_pool = now.pools.get(&pool.name);
            if old_pool.backends == pool.backends {
                // The file did not touch it: backends set with `pool set` stay.
                if let Some(live_pool) = live_pool {
                    next.pools.insert(
                        pool.name.clone(),
                        PoolState {
                            backends: live_pool.backends.clone(),
                            configured: pool.backends.clone(),
                        },
                    );
                }
            } else {
                changes.push(format!(
                    "service {name:?}: pool {:?} backends {}",
                    pool.name,
                    list(&pool.backends)
                ));
            }
        }

        // The pool that serves.
        if kept(&now.active) {
            next.active = now.active.clone();
        } else if force {
            changes.push(format!(
                "service {name:?}: its active pool {:?} is removed; {:?} serves now (forced)",
                now.active, new_service.active
            ));
        } else {
            refusals.push(format!(
                "service {name:?}: pool {:?} serves its traffic and the new config removes it (switch to another pool first)",
                now.active
            ));
        }
        next.rollback_to = now
            .rollback_to
            .clone()
            .filter(|p| kept(p) && *p != next.active);

        match &now.rollout {
            Some(mark) if kept(&mark.pool) && kept(&now.active) => {
                next.rollout = Some(mark.clone());
                next.canary = now.canary.clone();
            }
            Some(mark) => {
                if force {
                    ends_rollouts.push(name.clone());
                    changes.push(format!(
                        "service {name:?}: the rollout of pool {:?} ends (forced)",
                        mark.pool
                    ));
                } else {
                    refusals.push(format!(
                        "service {name:?}: a rollout of pool {:?} runs and the new config removes a pool it uses",
                        mark.pool
                    ));
                }
            }
            None => match &now.canary {
                Some(canary) if kept(&canary.pool) && canary.pool != next.active => {
                    next.canary = Some(canary.clone());
                }
                Some(canary) if force || canary.pool == next.active => {
                    changes.push(format!(
                        "service {name:?}: the canary of pool {:?} ends",
                        canary.pool
                    ));
                }
                Some(canary) => refusals.push(format!(
                    "service {name:?}: pool {:?} has a canary and the new config removes it (end it with `switchback canary {} 0` first)",
                    canary.pool, canary.pool
                )),
                None => {}
            },
        }

        let settings = changed_settings(old_service, new_service);
        if !settings.is_empty() {
            changes.push(format!("service {name:?}: {} changed", settings.join(", ")));
        }
        if new_service.active != old_service.active && next.active != new_service.active {
            changes.push(format!(
                "service {name:?}: the file's active pool is now {:?}; the live active pool {:?} stays (use `switchback switch` to move traffic)",
                new_service.active, next.active
            ));
        }
    }

    // The running listeners are the old file's until an upgrade: a service limited to one
    // only the new file has would be on no listener at all.
    for service in &new.services {
        let missing: Vec<String> = service
            .listen
            .iter()
            .filter(|l| !old.listen.http.contains(l) && !old.listen.https.contains(l))
            .map(|l| l.to_string())
            .collect();
        if !missing.is_empty() && !force {
            refusals.push(format!(
                "service {:?}: listen names {}, which this process does not listen on yet: `switchback upgrade` starts a process with the new listeners",
                service.name,
                missing.join(", ")
            ));
        }
    }
    if old.resolver != new.resolver {
        changes.push("resolver settings changed: names are resolved with them from now on".into());
    }
    if !refusals.is_empty() {
        return Err(refusals);
    }
    Ok(ReloadPlan {
        state,
        changes,
        needs_upgrade: needs_upgrade(old, new),
        ends_rollouts,
    })
}

/// A reload's word on a service that answers with a redirect before or after it.
fn redirect_change(
    old: &ServiceConfig,
    new: &ServiceConfig,
    now: &crate::state::ServiceState,
    force: bool,
    changes: &mut Vec<String>,
    refusals: &mut Vec<String>,
) {
    let name = &new.name;
    if let Some(mark) = &now.rollout {
        if force {
            changes.push(format!(
                "service {name:?}: the rollout of pool {:?} ends (forced)",
                mark.pool
            ));
        } else {
            refusals.push(format!(
                "service {name:?}: a rollout of pool {:?} runs and the new config makes the service a redirect",
                mark.pool
            ));
        }
    }
    match (old.redirect.is_some(), new.redirect.is_some()) {
        // As removing the pool that serves: only when forced.
        (false, true) if !force => refusals.push(format!(
            "service {name:?}: pool {:?} serves its traffic and the new config makes the service a redirect (reload with --force to do it)",
            now.active
        )),
        (false, true) => changes.push(format!(
            "service {name:?}: answers every request with its redirect now; its pools are gone (forced)"
        )),
        (true, false) => changes.push(format!(
            "service {name:?}: proxies to its pools now, {:?} active",
            new.active
        )),
        _ => {}
    }
    let settings = changed_settings(old, new);
    if !settings.is_empty() {
        changes.push(format!("service {name:?}: {} changed", settings.join(", ")));
    }
}

/// The config that runs after a reload of `new` over `old`: the new file's services, and the
/// old one's sections that the process set up at its start (see [`ReloadPlan::needs_upgrade`]),
/// so that a later reload still sees them as not applied.
pub fn applied_config(old: &Config, new: Config) -> Config {
    Config {
        source: new.source,
        services: new.services,
        resolver: new.resolver,
        listen: old.listen.clone(),
        server: old.server.clone(),
        control: old.control.clone(),
        state: old.state.clone(),
        admin: old.admin.clone(),
        acme: old.acme.clone(),
        access_log: old.access_log.clone(),
        metrics: old.metrics.clone(),
        fleet: old.fleet.clone(),
    }
}

fn list(addrs: &[crate::Target]) -> String {
    if addrs.is_empty() {
        return "none".to_string();
    }
    addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The keys of a service, other than its pools and active pool, that differ.
fn changed_settings(old: &ServiceConfig, new: &ServiceConfig) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut check = |key: &'static str, differs: bool| {
        if differs {
            changed.push(key);
        }
    };
    check("hosts", old.hosts != new.hosts);
    check("path_prefix", old.path_prefix != new.path_prefix);
    check("listen", old.listen != new.listen);
    check("default", old.default != new.default);
    check("redirect", old.redirect != new.redirect);
    check("health", old.health != new.health);
    check(
        "connect_timeout",
        old.connect_timeout != new.connect_timeout,
    );
    check("read_timeout", old.read_timeout != new.read_timeout);
    check("upstream", old.upstream != new.upstream);
    check("retries", old.retries != new.retries);
    check("retry_on", old.retry_on != new.retry_on);
    check(
        "retry_non_idempotent",
        old.retry_non_idempotent != new.retry_non_idempotent,
    );
    check("retry_buffer", old.retry_buffer != new.retry_buffer);
    check("tls", old.tls != new.tls);
    check("https_redirect", old.https_redirect != new.https_redirect);
    check("hsts", old.hsts != new.hsts);
    check("canary", old.canary != new.canary);
    check(
        "max_request_body",
        old.max_request_body != new.max_request_body,
    );
    check(
        "request_headers",
        old.request_headers != new.request_headers,
    );
    check(
        "response_headers",
        old.response_headers != new.response_headers,
    );
    check("compress", old.compress != new.compress);
    check("drain_timeout", old.drain_timeout != new.drain_timeout);
    check("long_lived", old.long_lived != new.long_lived);
    check(
        "compress_min_length",
        old.compress_min_length != new.compress_min_length,
    );
    changed
}

/// The parts of the file that the running process set up once, at its start.
fn needs_upgrade(old: &Config, new: &Config) -> Vec<String> {
    let mut keys = Vec::new();
    let mut check = |key: &str, differs: bool| {
        if differs {
            keys.push(key.to_string());
        }
    };
    check("[listen]", old.listen != new.listen);
    check("[server]", old.server != new.server);
    check("[control]", old.control != new.control);
    check("[state]", old.state != new.state);
    check("[admin]", old.admin != new.admin);
    check("[acme]", old.acme != new.acme);
    check("[access_log]", old.access_log != new.access_log);
    check("[metrics]", old.metrics != new.metrics);
    check("[fleet]", old.fleet != new.fleet);
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{CanaryState, RolloutMark};
    use std::path::Path;

    fn config(services: &str) -> Config {
        let text = format!(
            "[listen]\nhttp = [\"127.0.0.1:8080\"]\n[control]\nsocket = \"/tmp/sb.sock\"\n[state]\ndir = \"/tmp/sb\"\n{services}"
        );
        crate::parse(Path::new("test.toml"), &text).unwrap()
    }

    const BLUE_GREEN: &str = "[services.app]\nactive = \"blue\"\npools.blue = [\"127.0.0.1:9001\"]\npools.green = [\"127.0.0.1:9002\"]\n";

    #[test]
    fn a_new_service_and_new_backends_are_added_and_the_live_choice_stays() {
        let old = config(BLUE_GREEN);
        let mut live = LiveState::from_config(&old);
        live.generation = 7;
        let app = live.services.get_mut("app").unwrap();
        app.active = "green".into();
        app.rollback_to = Some("blue".into());
        let new = config(&format!(
            "{}\n[services.api]\nhosts = [\"api.test\"]\nactive = \"a\"\npools.a = [\"127.0.0.1:9100\"]\n",
            BLUE_GREEN.replace("9002", "9003")
        ));
        let plan = plan_reload(&old, &new, &live, false).unwrap();
        assert_eq!(plan.state.generation, 7);
        let app = &plan.state.services["app"];
        assert_eq!(app.active, "green");
        assert_eq!(app.rollback_to.as_deref(), Some("blue"));
        assert_eq!(
            app.pools["green"].backends,
            ["127.0.0.1:9003".parse().unwrap()]
        );
        assert!(plan.state.services.contains_key("api"));
        assert_eq!(
            plan.changes,
            [
                "service \"api\" added",
                "service \"app\": pool \"green\" backends 127.0.0.1:9003"
            ]
        );
        assert!(plan.needs_upgrade.is_empty());
    }

    #[test]
    fn redirect_services_reload_and_a_service_becomes_one_only_when_forced() {
        const WWW: &str = "[services.www]\nhosts = [\"www.test\"]\nredirect = { to = \"https://test$request_uri\" }\n";
        let old = config(&format!("{BLUE_GREEN}{WWW}"));
        let live = LiveState::from_config(&old);
        // The same file, and a changed redirect.
        assert!(plan_reload(&old, &old, &live, false)
            .unwrap()
            .changes
            .is_empty());
        let new = config(&format!(
            "{BLUE_GREEN}{}",
            WWW.replace("https://test", "https://x.test")
        ));
        let plan = plan_reload(&old, &new, &live, false).unwrap();
        assert_eq!(plan.changes, ["service \"www\": redirect changed"]);
        // A redirect that gets pools serves its file's active pool.
        let pooled = config(&format!(
            "{BLUE_GREEN}[services.www]\nhosts = [\"www.test\"]\nactive = \"a\"\npools.a = [\"127.0.0.1:9100\"]\n"
        ));
        let plan = plan_reload(&old, &pooled, &live, false).unwrap();
        assert_eq!(plan.state.services["www"].active, "a");
        // And back: the pool that serves goes only with --force.
        let live = LiveState::from_config(&pooled);
        let e = plan_reload(&pooled, &old, &live, false).unwrap_err();
        assert!(e[0].contains("makes the service a redirect"), "{e:?}");
        let plan = plan_reload(&pooled, &old, &live, true).unwrap();
        assert!(plan.state.services["www"].is_redirect());
    }

    #[test]
    fn a_service_may_not_move_to_a_listener_the_process_lacks() {
        let old = config(BLUE_GREEN);
        let live = LiveState::from_config(&old);
        let text = format!("[listen]\nhttp = [\"127.0.0.1:8080\", \"127.0.0.1:8081\"]\n[control]\nsocket = \"/tmp/sb.sock\"\n[state]\ndir = \"/tmp/sb\"\n{BLUE_GREEN}listen = [\"127.0.0.1:8081\"]\n");
        let new = crate::parse(Path::new("test.toml"), &text).unwrap();
        let e = plan_reload(&old, &new, &live, false).unwrap_err();
        assert!(
            e[0].contains("listen names 127.0.0.1:8081, which this process does not listen on yet"),
            "{e:?}"
        );
    }

    #[test]
    fn backends_set_live_stay_while_the_file_keeps_its_list() {
        let old = config(BLUE_GREEN);
        let mut live = LiveState::from_config(&old);
        let set: crate::Target = "127.0.0.1:9555".parse().unwrap();
        live.services
            .get_mut("app")
            .unwrap()
            .pools
            .get_mut("blue")
            .unwrap()
            .backends = vec![set.clone()];
        let new = config(&format!("{BLUE_GREEN}hosts = [\"app.test\"]\n"));
        let plan = plan_reload(&old, &new, &live, false).unwrap();
        assert_eq!(plan.state.services["app"].pools["blue"].backends, [set]);
        assert_eq!(plan.changes, ["service \"app\": hosts changed"]);
    }

    #[test]
    fn removing_the_serving_pool_is_refused_unless_forced() {
        let old = config(BLUE_GREEN);
        let mut live = LiveState::from_config(&old);
        live.services.get_mut("app").unwrap().active = "green".into();
        let new = config(
            "[services.app]\nactive = \"blue\"\npools.blue = [\"127.0.0.1:9001\"]\npools.red = [\"127.0.0.1:9004\"]\n",
        );
        let refused = plan_reload(&old, &new, &live, false).unwrap_err();
        assert_eq!(refused.len(), 1);
        assert!(refused[0].contains("pool \"green\" serves"), "{refused:?}");
        let plan = plan_reload(&old, &new, &live, true).unwrap();
        assert_eq!(plan.state.services["app"].active, "blue");
        assert!(plan.changes.iter().any(|c| c.contains("forced")));
    }

    #[test]
    fn a_canary_or_rollout_on_a_removed_pool_is_refused_unless_forced() {
        let old = config(BLUE_GREEN);
        let only_blue =
            config("[services.app]\nactive = \"blue\"\npools.blue = [\"127.0.0.1:9001\"]\n");
        let mut live = LiveState::from_config(&old);
        live.services.get_mut("app").unwrap().canary = Some(CanaryState {
            pool: "green".into(),
            permille: 100,
        });
        assert!(plan_reload(&old, &only_blue, &live, false).is_err());
        let plan = plan_reload(&old, &only_blue, &live, true).unwrap();
        assert_eq!(plan.state.services["app"].canary, None);

        live.services.get_mut("app").unwrap().rollout = Some(RolloutMark {
            pool: "green".into(),
            step: 1,
            steps: 4,
            started: 0,
            node: None,
        });
        let refused = plan_reload(&old, &only_blue, &live, false).unwrap_err();
        assert!(refused[0].contains("rollout"), "{refused:?}");
        let plan = plan_reload(&old, &only_blue, &live, true).unwrap();
        assert_eq!(plan.ends_rollouts, ["app"]);
        // A rollout whose pools all stay keeps running, canary and all.
        let plan = plan_reload(&old, &old, &live, false).unwrap();
        assert!(plan.state.services["app"].rollout.is_some());
        assert!(plan.state.services["app"].canary.is_some());
        assert!(plan.changes.is_empty());
    }

    #[test]
    fn keys_set_up_at_start_are_reported_for_an_upgrade() {
        let old = config(BLUE_GREEN);
        let mut new = old.clone();
        new.listen.http = vec!["127.0.0.1:8081".parse().unwrap()];
        new.server.threads = Some(3);
        let plan = plan_reload(&old, &new, &LiveState::from_config(&old), false).unwrap();
        assert_eq!(plan.needs_upgrade, ["[listen]", "[server]"]);
        assert!(plan.changes.is_empty());
    }
}
