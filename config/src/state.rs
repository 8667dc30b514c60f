//! The persisted routing state: which pool is live for each service, and each pool's backends.
//!
//! The config file says what the user wrote; this file says what is live after `switch`,
//! `rollback` and `pool set`. It lives in the state dir as `state.json`, is written atomically
//! after every change, and is read back at start so that a restart never undoes a deploy.
//!
//! A state file that cannot be parsed, or that names a service or pool the config no longer has,
//! is never trusted and never deleted: it is renamed to `state.json.rejected-<time>` and the
//! reason is reported, and switchback starts from the config file.

use crate::address::Target;
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::atomic::{ensure_private_dir, write_atomic};
use crate::model::Config;

/// The version of the state file format this build writes and reads.
pub const STATE_VERSION: u32 = 1;
const STATE_FILE: &str = "state.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveState {
    pub version: u32,
    /// Bumped on every change; lets `status` and logs tell generations apart.
    pub generation: u64,
    pub services: BTreeMap<String, ServiceState>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceState {
    pub active: String,
    /// The pool that was active before the last switch: where `rollback` goes. Kept as
    /// `previous` in the file.
    #[serde(default, rename = "previous")]
    pub rollback_to: Option<String>,
    pub pools: BTreeMap<String, PoolState>,
    /// A share of clients sent to another pool than `active`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryState>,
    /// A rollout in progress. A process that starts and finds one here was stopped in the
    /// middle of it: it comes back on the stable pool, with a notice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutMark>,
}

impl ServiceState {
    /// The state of a service that answers with a redirect: no pools, none active.
    pub fn is_redirect(&self) -> bool {
        self.active.is_empty() && self.pools.is_empty()
    }
}

/// The canary of a service: `permille` thousandths of clients go to `pool`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryState {
    pub pool: String,
    /// 1 to 1000 (0.1% to 100%).
    pub permille: u32,
}

/// What a rollout was doing when the state was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutMark {
    pub pool: String,
    /// 1-based.
    pub step: usize,
    pub steps: usize,
    /// Seconds since the Unix epoch.
    pub started: i64,
    /// Fleet mode: the node that drives it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolState {
    /// The live backends.
    pub backends: Vec<Target>,
    /// What the config file said when this was written. When the file says something else at
    /// the next start, the file was edited since, and the file wins for this pool.
    pub configured: Vec<Target>,
}

impl LiveState {
    /// The state a config file describes, before any change.
    pub fn from_config(config: &Config) -> LiveState {
        let services = config
            .services
            .iter()
            .map(|s| {
                let pools = s
                    .pools
                    .iter()
                    .map(|p| {
                        let state = PoolState {
                            backends: p.backends.clone(),
                            configured: p.backends.clone(),
                        };
                        (p.name.clone(), state)
                    })
                    .collect();
                let state = ServiceState {
                    active: s.active.clone(),
                    rollback_to: None,
                    pools,
                    canary: None,
                    rollout: None,
                };
                (s.name.clone(), state)
            })
            .collect();
        LiveState {
            version: STATE_VERSION,
            generation: 0,
            services,
        }
    }

    /// Lays a restored state over the config: live choices survive, file edits to a pool's
    /// backends win, services and pools new in the file are added. Anything the state names
    /// that the config does not have is a mismatch, reported whole. A rollout that was under
    /// way is ended on its stable pool; the notices say so.
    pub fn restore(
        config: &Config,
        saved: LiveState,
    ) -> Result<(LiveState, Vec<String>), RestoreError> {
        if saved.version != STATE_VERSION {
            return Err(RestoreError::Version {
                found: saved.version,
                expected: STATE_VERSION,
            });
        }
        let mut problems = Vec::new();
        for (name, s) in &saved.services {
            let Some(conf) = config.service(name) else {
                problems.push(Missing::Service(name.clone()));
                continue;
            };
            if conf.redirect.is_some() || s.is_redirect() {
                // No pools to be live, now or when it was saved: what the state says of it is
                // past, and the file's pools (if any) serve.
                continue;
            }
            let missing_pool = |pool: &String| Missing::Pool {
                service: name.clone(),
                pool: pool.clone(),
            };
            for pool in s.pools.keys() {
                if conf.pool(pool).is_none() {
                    problems.push(missing_pool(pool));
                }
            }
            let canary = s.canary.as_ref().map(|c| &c.pool);
            let rollout = s.rollout.as_ref().map(|r| &r.pool);
            for pool in std::iter::once(&s.active)
                .chain(s.rollback_to.as_ref())
                .chain(canary)
                .chain(rollout)
            {
                if conf.pool(pool).is_none() {
                    problems.push(missing_pool(pool));
                }
            }
        }
        if !problems.is_empty() {
            problems.dedup();
            return Err(RestoreError::NotInConfig(problems));
        }
        let mut live = LiveState::from_config(config);
        let mut notices = Vec::new();
        live.generation = saved.generation;
        for (name, service) in live.services.iter_mut() {
            let Some(saved_service) = saved.services.get(name) else {
                continue;
            };
            if saved_service.is_redirect()
                || config.service(name).is_some_and(|s| s.redirect.is_some())
            {
                continue;
            }
            service.active = saved_service.active.clone();
            service.rollback_to = saved_service.rollback_to.clone();
            match &saved_service.rollout {
                Some(r) => notices.push(format!(
                    "service {name:?}: the rollout of pool {:?} was stopped by a restart at step {} of {}; all traffic is on the stable pool {:?} (start it again with `switchback rollout {}`)",
                    r.pool, r.step, r.steps, service.active, r.pool
                )),
                None => {
                    service.canary = saved_service
                        .canary
                        .clone()
                        .filter(|c| c.pool != service.active && c.permille > 0);
                }
            }
            for (pool_name, pool) in service.pools.iter_mut() {
                if let Some(saved_pool) = saved_service.pools.get(pool_name) {
                    if saved_pool.configured == pool.configured {
                        pool.backends = saved_pool.backends.clone();
                    }
                }
            }
        }
        Ok((live, notices))
    }
}

impl LiveState {
    /// Lays a fleet's desired state (shared by several proxies, each with its own config file)
    /// over `self`, this node's live state: for every service both have, the fleet's active
    /// pool, canary, rollout mark, rollback pool and pool backends. A service whose active,
    /// canary or rollout pool this config lacks is left as it is, and the problem returned;
    /// pools only the fleet has are left out (a node whose file is reloaded later gets them
    /// then), and so is a rollback pool this config lacks. The generation is the fleet's.
    pub fn adopt(&self, config: &Config, fleet: &LiveState) -> (LiveState, Vec<String>) {
        let mut next = self.clone();
        next.generation = fleet.generation;
        let mut problems = Vec::new();
        for (name, wanted) in &fleet.services {
            let (Some(service), Some(conf)) = (next.services.get_mut(name), config.service(name))
            else {
                continue;
            };
            // A redirect here (or in the node that wrote it) has no pools to take.
            if conf.redirect.is_some() || wanted.is_redirect() {
                continue;
            }
            let canary = wanted.canary.as_ref().map(|c| &c.pool);
            let rollout = wanted.rollout.as_ref().map(|r| &r.pool);
            let missing: Vec<&String> = std::iter::once(&wanted.active)
                .chain(canary)
                .chain(rollout)
                .filter(|p| conf.pool(p).is_none())
                .collect();
            if let Some(pool) = missing.first() {
                problems.push(format!(
                    "service {name:?}: this node's config has no pool {pool:?}"
                ));
                continue;
            }
            service.active = wanted.active.clone();
            if let Some(pool) = wanted
                .rollback_to
                .as_ref()
                .filter(|p| conf.pool(p).is_some())
            {
                service.rollback_to = Some(pool.clone());
            }
            service.canary = wanted.canary.clone();
            service.rollout = wanted.rollout.clone();
            for (pool, state) in service.pools.iter_mut() {
                if let Some(wanted) = wanted.pools.get(pool) {
                    state.backends = wanted.backends.clone();
                }
            }
        }
        (next, problems)
    }

    /// The fleet's state after a change this node made: `fleet` with the services that differ
    /// between `base` (this node's state before the change) and `next` (after it) taken from
    /// `next`. Services the change did not touch keep what the fleet has, and so do the pools
    /// of a touched service that only the fleet has (other nodes' configs have them).
    pub fn changed_over(fleet: &LiveState, base: &LiveState, next: &LiveState) -> LiveState {
        let mut merged = fleet.clone();
        for (name, service) in &next.services {
            if base.services.get(name) != Some(service) {
                let mut service = service.clone();
                if let Some(theirs) = fleet.services.get(name) {
                    for (pool, state) in &theirs.pools {
                        service
                            .pools
                            .entry(pool.clone())
                            .or_insert_with(|| state.clone());
                    }
                }
                merged.services.insert(name.clone(), service);
            }
        }
        merged
    }

    /// The services a change from `base` to `next` touches.
    pub fn touched<'a>(base: &LiveState, next: &'a LiveState) -> Vec<&'a str> {
        next.services
            .iter()
            .filter(|(name, s)| base.services.get(*name) != Some(*s))
            .map(|(name, _)| name.as_str())
            .collect()
    }
}

/// Why a saved state could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{} is locked: another switchback is using this state dir", path.display())]
    Locked { path: PathBuf },
    #[error("{} is not a valid state file: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
}

/// Why a saved state cannot be laid over the config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    #[error("state format version {found} is not the version this build reads ({expected})")]
    Version { found: u32, expected: u32 },
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    NotInConfig(Vec<Missing>),
}

/// Something a saved state names that the config does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Missing {
    #[error("service {0:?} is not in the config file")]
    Service(String),
    #[error("service {service:?}: pool {pool:?} is not in the config file")]
    Pool { service: String, pool: String },
}

/// The exclusive hold of a state dir; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct StateLock {
    _lock: crate::atomic::FileLock,
}

impl StateLock {
    /// The descriptor that holds the lock, for handing it to an upgrade's new process.
    pub fn raw_fd(&self) -> std::os::unix::io::RawFd {
        self._lock.raw_fd()
    }
}

/// The state dir and the files switchback keeps in it.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    pub fn new(dir: impl Into<PathBuf>) -> StateStore {
        StateStore { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// Creates the state dir (mode 0700) if it does not exist.
    pub fn prepare(&self) -> io::Result<()> {
        ensure_private_dir(&self.dir)
    }

    /// Takes the state dir for this process: a second switchback on the same state dir would
    /// overwrite the first one's state, so it is refused. Held until the lock is dropped.
    pub fn lock(&self) -> Result<StateLock, StateError> {
        let path = self.dir.join("lock");
        match crate::atomic::try_lock(&path) {
            Ok(Some(lock)) => Ok(StateLock { _lock: lock }),
            Ok(None) => Err(StateError::Locked { path }),
            Err(source) => Err(StateError::Read { path, source }),
        }
    }

    /// Takes over the lock of the state dir through `fd`, inherited from the process that held
    /// it (an upgrade): the lock passes with no moment where nobody holds it.
    pub fn adopt_lock(&self, fd: std::os::unix::io::RawFd) -> Result<StateLock, StateError> {
        let path = self.dir.join("lock");
        crate::atomic::FileLock::adopt(fd)
            .map(|lock| StateLock { _lock: lock })
            .map_err(|source| StateError::Read { path, source })
    }

    /// The saved state, `None` when there is none yet.
    pub fn load(&self) -> Result<Option<LiveState>, StateError> {
        let path = self.path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StateError::Read { path, source }),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StateError::Corrupt {
                path,
                reason: e.to_string(),
            })
    }

    /// Writes the state atomically, mode 0600.
    pub fn save(&self, state: &LiveState) -> io::Result<()> {
        let mut bytes = serde_json::to_vec_pretty(state).map_err(io::Error::other)?;
        bytes.push(b'\n');
        write_atomic(&self.path(), &bytes, 0o600)
    }

    /// Moves an untrusted state file out of the way, keeping it for a human to read. Returns
    /// where it went.
    pub fn set_aside(&self) -> io::Result<PathBuf> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut target = self.dir.join(format!("{STATE_FILE}.rejected-{stamp}"));
        let mut n = 1;
        while target.exists() {
            target = self.dir.join(format!("{STATE_FILE}.rejected-{stamp}-{n}"));
            n += 1;
        }
        std::fs::rename(self.path(), &target)?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        Ok(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::parse;

    fn config(extra_pool: &str) -> Config {
        let text = format!(
            "[listen]\nhttp = [\"127.0.0.1:8080\"]\n[control]\nsocket = \"/tmp/s.sock\"\n[state]\ndir = \"/tmp/s\"\n\
             [services.app]\nactive = \"blue\"\npools.blue = [\"127.0.0.1:9001\"]\npools.green = [\"127.0.0.1:9002\"]\n{extra_pool}"
        );
        parse(Path::new("t.toml"), &text).unwrap()
    }

    #[test]
    fn a_fleet_state_is_adopted_where_this_config_has_its_pools() {
        let mine = config("");
        let local = LiveState::from_config(&mine);
        // Another node's config has a pool "red" this one lacks, and a service of its own.
        let theirs = config("pools.red = [\"127.0.0.1:9003\"]\n[services.other]\npath_prefix = \"/o/\"\nactive = \"a\"\npools.a = [\"127.0.0.1:9100\"]\n");
        let mut fleet = LiveState::from_config(&theirs);
        fleet.generation = 41;
        let app = fleet.services.get_mut("app").unwrap();
        app.active = "green".into();
        app.canary = Some(CanaryState {
            pool: "blue".into(),
            permille: 100,
        });
        app.pools.get_mut("green").unwrap().backends = vec!["127.0.0.1:9012".parse().unwrap()];
        fleet.services.get_mut("app").unwrap().active = "red".into();
        let (adopted, problems) = local.adopt(&mine, &fleet);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("no pool \"red\""), "{problems:?}");
        assert_eq!(
            adopted.services, local.services,
            "a service whose active pool is not in this config is left as it is"
        );
        // A pool only the fleet has, that serves nothing, is left out.
        fleet.services.get_mut("app").unwrap().active = "green".into();
        let (adopted, problems) = local.adopt(&mine, &fleet);
        assert!(problems.is_empty(), "{problems:?}");
        let app = &adopted.services["app"];
        assert_eq!(adopted.generation, 41);
        assert_eq!(app.active, "green");
        assert_eq!(app.canary.as_ref().unwrap().permille, 100);
        assert_eq!(app.pools["green"].backends[0].to_string(), "127.0.0.1:9012");
        assert_eq!(
            app.pools["green"].configured,
            local.services["app"].pools["green"].configured
        );
        assert!(!app.pools.contains_key("red"));
        assert!(!adopted.services.contains_key("other"));
    }

    #[test]
    fn a_change_is_laid_over_the_fleet_state_by_service() {
        let c = config("[services.api]\npath_prefix = \"/api/\"\nactive = \"a\"\npools.a = [\"127.0.0.1:9100\"]\npools.b = [\"127.0.0.1:9101\"]\n");
        let base = LiveState::from_config(&c);
        let mut fleet = base.clone();
        fleet.services.get_mut("api").unwrap().active = "b".into();
        let mut next = base.clone();
        next.services.get_mut("app").unwrap().active = "green".into();
        assert_eq!(LiveState::touched(&base, &next), vec!["app"]);
        let mut with_red = fleet.clone();
        with_red.services.get_mut("app").unwrap().pools.insert(
            "red".into(),
            PoolState {
                backends: vec!["127.0.0.1:9003".parse().unwrap()],
                configured: vec![],
            },
        );
        let merged = LiveState::changed_over(&with_red, &base, &next);
        assert_eq!(merged.services["app"].active, "green", "the change is in");
        assert_eq!(
            merged.services["api"].active, "b",
            "another node's change stays"
        );
        assert!(
            merged.services["app"].pools.contains_key("red"),
            "a pool only other nodes have stays"
        );
    }

    #[test]
    fn save_load_round_trip_with_private_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path().join("state"));
        store.prepare().unwrap();
        assert!(store.load().unwrap().is_none());
        let mut state = LiveState::from_config(&config(""));
        state.services.get_mut("app").unwrap().active = "green".into();
        store.save(&state).unwrap();
        assert_eq!(store.load().unwrap(), Some(state));
        let mode = std::fs::metadata(store.path())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn restore_keeps_the_live_pool_over_the_file() {
        let c = config("");
        let mut saved = LiveState::from_config(&c);
        let app = saved.services.get_mut("app").unwrap();
        app.active = "green".into();
        app.rollback_to = Some("blue".into());
        app.pools.get_mut("green").unwrap().backends = vec!["127.0.0.1:9012".parse().unwrap()];
        let (live, notices) = LiveState::restore(&c, saved).unwrap();
        assert!(notices.is_empty());
        let app = &live.services["app"];
        assert_eq!(app.active, "green");
        assert_eq!(app.rollback_to.as_deref(), Some("blue"));
        assert_eq!(
            app.pools["green"].backends,
            vec!["127.0.0.1:9012".parse().unwrap()]
        );
    }

    #[test]
    fn a_file_edit_to_a_pool_wins_over_the_saved_backends() {
        let old = config("");
        let mut saved = LiveState::from_config(&old);
        saved
            .services
            .get_mut("app")
            .unwrap()
            .pools
            .get_mut("green")
            .unwrap()
            .backends = vec!["127.0.0.1:9012".parse().unwrap()];
        let edited = parse(
            Path::new("t.toml"),
            "[listen]\nhttp = [\"127.0.0.1:8080\"]\n[control]\nsocket = \"/tmp/s.sock\"\n[state]\ndir = \"/tmp/s\"\n\
             [services.app]\nactive = \"blue\"\npools.blue = [\"127.0.0.1:9001\"]\npools.green = [\"127.0.0.1:9022\"]\n",
        )
        .unwrap();
        let (live, _) = LiveState::restore(&edited, saved).unwrap();
        assert_eq!(
            live.services["app"].pools["green"].backends,
            vec!["127.0.0.1:9022".parse().unwrap()]
        );
    }

    #[test]
    fn a_canary_survives_a_restart_but_a_rollout_ends_on_the_stable_pool() {
        let c = config("");
        let mut saved = LiveState::from_config(&c);
        let canary = Some(CanaryState {
            pool: "green".into(),
            permille: 100,
        });
        saved.services.get_mut("app").unwrap().canary = canary.clone();
        let (live, notices) = LiveState::restore(&c, saved.clone()).unwrap();
        assert_eq!(live.services["app"].canary, canary);
        assert!(notices.is_empty());
        saved.services.get_mut("app").unwrap().rollout = Some(RolloutMark {
            pool: "green".into(),
            step: 2,
            steps: 4,
            started: 0,
            node: None,
        });
        let (live, notices) = LiveState::restore(&c, saved).unwrap();
        let app = &live.services["app"];
        assert_eq!(
            (app.active.as_str(), &app.canary, &app.rollout),
            ("blue", &None, &None)
        );
        assert!(
            notices[0].contains("stopped by a restart at step 2 of 4"),
            "{notices:?}"
        );
    }

    #[test]
    fn a_redirect_service_restores_whatever_its_state_said() {
        let www = "[services.www]\nhosts = [\"www.example.com\"]\nredirect = { to = \"https://example.com$request_uri\" }\n";
        let c = config(www);
        // As saved with the redirect, and as saved while it still had pools.
        let same = LiveState::from_config(&c);
        let mut before = same.clone();
        before.services.get_mut("www").unwrap().active = "blue".into();
        for saved in [same.clone(), before] {
            let (live, _) = LiveState::restore(&c, saved).unwrap();
            assert_eq!(live.services["www"].active, "");
            assert!(live.services["www"].pools.is_empty());
        }
        // Saved as a redirect, then given pools: the file's pools serve, and the rest of
        // the state is kept.
        let pooled = config("[services.www]\nhosts = [\"www.example.com\"]\nactive = \"a\"\npools.a = [\"127.0.0.1:9100\"]\n");
        let mut saved = same;
        saved.services.get_mut("app").unwrap().active = "green".into();
        let (live, _) = LiveState::restore(&pooled, saved.clone()).unwrap();
        assert_eq!(live.services["www"].active, "a");
        assert_eq!(live.services["app"].active, "green");
        // A fleet state with the redirect in it is taken without a problem, both ways.
        let (_, problems) = LiveState::from_config(&c).adopt(&c, &saved);
        assert!(problems.is_empty(), "{problems:?}");
        let (adopted, problems) = LiveState::from_config(&pooled).adopt(&pooled, &saved);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(adopted.services["www"].active, "a");
        assert_eq!(adopted.services["app"].active, "green");
    }

    #[test]
    fn restore_refuses_pools_and_services_the_config_lacks() {
        let with_red = config("pools.red = [\"127.0.0.1:9003\"]\n");
        let mut saved = LiveState::from_config(&with_red);
        saved.services.get_mut("app").unwrap().active = "red".into();
        let err = LiveState::restore(&config(""), saved).unwrap_err();
        assert!(
            matches!(&err, RestoreError::NotInConfig(m) if m.contains(&Missing::Pool {
                service: "app".into(),
                pool: "red".into()
            })),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains("pool \"red\" is not in the config file"),
            "{err}"
        );
    }

    #[test]
    fn a_state_dir_has_one_owner() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        let held = store.lock().unwrap();
        assert!(matches!(store.lock(), Err(StateError::Locked { .. })));
        drop(held);
        store.lock().expect("free again once the holder is gone");
    }

    #[test]
    fn corrupt_file_is_reported_and_set_aside_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        std::fs::write(store.path(), b"{ not json").unwrap();
        let err = store.load().unwrap_err();
        assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
        let kept = store.set_aside().unwrap();
        assert!(!store.path().exists());
        assert_eq!(std::fs::read(kept).unwrap(), b"{ not json");
    }
}
