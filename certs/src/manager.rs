//! Keeps every certificate served, current and reported.
//!
//! At start the manager loads file pairs and saved ACME certificates into the resolver. Then
//! one task loops: it orders a certificate for each ACME host that has none, renews each one
//! when a third of its lifetime is left (a little earlier, at random, so many hosts do not
//! renew at once), retries failed orders with exponential backoff and jitter (starting at
//! `acme.retry_after`, up to a day), reloads file pairs whose files changed, and serves forced
//! renewals (`switchback certs renew HOST`). A failure never unloads what is served: the old
//! certificate stays until a new one is in hand.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use switchback_config::{Config, TlsMode};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

use crate::acme::{AcmeClient, AcmeError};
use crate::challenge::ChallengeStore;
use crate::material::{load_pair, name_covers, CertError, CertInfo};
use crate::resolver::SniResolver;
use crate::shared::SharedStore;
use crate::store::CertStore;

/// How often file pairs are checked for changes on disk.
const FILE_POLL: Duration = Duration::from_secs(2);
/// The longest wait between retries of a failing order.
const MAX_BACKOFF: Duration = Duration::from_secs(24 * 3600);

/// Where a host's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CertSource {
    Acme,
    File { cert: PathBuf, key: PathBuf },
}

/// What `switchback certs` shows for one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertStatus {
    pub host: String,
    pub source: CertSource,
    /// The certificate served now, if any.
    pub served: Option<CertInfo>,
    /// ACME: when the next order is due (seconds since the epoch).
    pub next_renewal: Option<i64>,
    pub last_error: Option<String>,
    /// Failed orders or loads since the last success.
    pub consecutive_failures: u32,
    /// Failed orders or loads since start.
    pub failures_total: u64,
    /// When the served certificate was issued or loaded (seconds since the epoch).
    pub updated_at: Option<i64>,
}

/// Modification times of a certificate file and its key file.
type Mtimes = (SystemTime, SystemTime);

struct Entry {
    status: CertStatus,
    /// File pairs: the modification times last loaded.
    mtimes: Option<Mtimes>,
}

/// Why `certs renew` did not give a host a new certificate. The one served before stays.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    #[error("no TLS host named {0:?}")]
    UnknownHost(String),
    #[error("{0} is served from files; replace them and run switchback reload-certs")]
    FromFiles(String),
    #[error("ACME is not configured")]
    NoAcme,
    #[error(transparent)]
    Order(#[from] AcmeError),
    #[error("the CA sent a certificate that cannot be served: {0}")]
    Unusable(CertError),
    #[error("saving the certificate: {0}")]
    Save(std::io::Error),
    #[error("the certificate manager is not running")]
    NotRunning,
    #[error("an order for {0} is running already: see switchback certs for how it ends")]
    InProgress(String),
}

type RenewReply = oneshot::Sender<Result<CertStatus, RenewError>>;

pub struct CertManager {
    resolver: Arc<SniResolver>,
    challenges: Arc<ChallengeStore>,
    store: CertStore,
    acme: Option<AcmeClient>,
    retry_after: Duration,
    entries: Mutex<BTreeMap<String, Entry>>,
    renew_tx: mpsc::UnboundedSender<(String, RenewReply)>,
    renew_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<(String, RenewReply)>>,
    /// Hosts queued for an order or being ordered.
    ordering: Mutex<std::collections::HashSet<String>>,
    /// Fleet mode: certificates are ordered once for the fleet and shared through it.
    shared: std::sync::OnceLock<Arc<dyn SharedStore>>,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A number in [0, 1) that differs from call to call.
fn random_fraction() -> f64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// The wait before retry number `failures` (1-based): `base` doubling, capped at a day, ±20%.
pub fn backoff(base: Duration, failures: u32) -> Duration {
    let doubled = base.as_secs_f64() * 2f64.powi(failures.saturating_sub(1).min(30) as i32);
    let capped = doubled.min(MAX_BACKOFF.as_secs_f64());
    Duration::from_secs_f64(capped * (0.8 + 0.4 * random_fraction()))
}

fn mtimes(cert: &Path, key: &Path) -> Option<Mtimes> {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some((m(cert)?, m(key)?))
}

impl CertManager {
    /// Loads what can be served now (file pairs, saved ACME certificates) and plans the rest.
    pub fn new(config: &Config) -> CertManager {
        let state_dir = &config.state.dir;
        let mut hosts_in_order = Vec::new();
        let mut entries = BTreeMap::new();
        let mut has_acme = false;
        for (host, source) in tls_hosts(config) {
            has_acme |= source == CertSource::Acme;
            hosts_in_order.push(host.clone());
            entries
                .entry(host.clone())
                .or_insert_with(|| Entry::new(host, source));
        }
        let store = CertStore::new(state_dir);
        let challenges = Arc::new(ChallengeStore::new(state_dir));
        let acme = has_acme
            .then(|| AcmeClient::new(config.acme.clone(), store.clone(), challenges.clone()));
        let (renew_tx, renew_rx) = mpsc::unbounded_channel();
        let manager = CertManager {
            resolver: Arc::new(SniResolver::new(hosts_in_order)),
            challenges,
            store,
            acme,
            retry_after: config.acme.retry_after,
            entries: Mutex::new(entries),
            renew_tx,
            renew_rx: tokio::sync::Mutex::new(renew_rx),
            ordering: Mutex::default(),
            shared: std::sync::OnceLock::new(),
        };
        manager.load_saved_acme();
        manager.reload_files(true);
        manager
    }

    /// Fleet mode: orders, the account and challenge answers go through `shared`, and each
    /// certificate issued is saved to it for the other nodes.
    pub fn set_shared(&self, shared: Arc<dyn SharedStore>) {
        if let Some(acme) = &self.acme {
            acme.set_shared(shared.clone());
        }
        let _ = self.shared.set(shared);
    }

    /// Fleet mode: a certificate another node got for `host` (key and chain, one PEM text).
    /// Served from the next handshake when it is newer than the one served, and saved to the
    /// state dir; its renewal is planned as if this node had ordered it.
    pub fn take_shared(&self, host: &str, pem: &[u8]) {
        let is_acme = self
            .lock()
            .get(host)
            .is_some_and(|e| e.status.source == CertSource::Acme);
        if !is_acme {
            return;
        }
        let m = match load_pair(pem, pem) {
            Ok(m) => m,
            Err(e) => {
                warn!(host = %host, error = %e, "the fleet's certificate cannot be served; ignored");
                return;
            }
        };
        let newer = self
            .lock()
            .get(host)
            .and_then(|e| e.status.served.as_ref().map(|s| s.not_after))
            .is_none_or(|served| m.info.not_after > served);
        if !newer || m.info.not_after <= now() {
            return;
        }
        let text = String::from_utf8_lossy(pem);
        let split = text.find("-----BEGIN CERTIFICATE-----").unwrap_or(0);
        if let Err(e) = self.store.save_cert(host, &text[..split], &text[split..]) {
            warn!(host = %host, error = %e, "the fleet's certificate is served but not saved to the state dir");
        }
        self.resolver.set(host, m.key.clone());
        let mut entries = self.lock();
        let Some(entry) = entries.get_mut(host) else {
            return;
        };
        info!(host = %host, serial = %m.info.serial, not_after = m.info.not_after, "certificate from the fleet served");
        entry.status.next_renewal = Some(renewal_time(&m.info));
        entry.status.served = Some(m.info);
        entry.status.last_error = None;
        entry.status.consecutive_failures = 0;
        entry.status.updated_at = Some(now());
    }

    pub fn resolver(&self) -> Arc<SniResolver> {
        self.resolver.clone()
    }

    pub fn challenges(&self) -> Arc<ChallengeStore> {
        self.challenges.clone()
    }

    /// Whether any host has TLS.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every host's certificate status, by host name.
    pub fn statuses(&self) -> Vec<CertStatus> {
        self.lock().values().map(|e| e.status.clone()).collect()
    }

    fn record_failure(&self, host: &str, error: String, retry: bool) {
        let mut entries = self.lock();
        if let Some(e) = entries.get_mut(host) {
            e.status.consecutive_failures += 1;
            e.status.failures_total += 1;
            e.status.last_error = Some(error);
            if retry {
                let wait = backoff(self.retry_after, e.status.consecutive_failures);
                e.status.next_renewal = Some(now() + wait.as_secs().max(1) as i64);
            }
        }
    }

    /// Takes on the TLS hosts of a reloaded config that it does not have yet: a file pair is
    /// loaded, an ACME host's saved certificate is served or a first one ordered (the order
    /// starts within 2 s). Hosts the config no longer has keep their certificate and files.
    /// Returns the hosts added, or, adding none, the ACME hosts it cannot order: no ACME
    /// service was set up at start (that takes `switchback upgrade`).
    pub fn add_hosts(&self, config: &Config) -> Result<Vec<String>, Vec<String>> {
        let new: Vec<(String, CertSource)> = {
            let entries = self.lock();
            tls_hosts(config)
                .into_iter()
                .filter(|(host, _)| !entries.contains_key(host))
                .collect()
        };
        let cannot: Vec<String> = new
            .iter()
            .filter(|(_, source)| *source == CertSource::Acme && self.acme.is_none())
            .map(|(host, _)| host.clone())
            .collect();
        if !cannot.is_empty() {
            return Err(cannot);
        }
        let mut added = Vec::new();
        for (host, source) in new {
            let acme = source == CertSource::Acme;
            self.lock()
                .insert(host.clone(), Entry::new(host.clone(), source));
            self.resolver.add_host(&host);
            if acme {
                self.load_saved(&host);
            }
            info!(host = %host, "TLS host added by a reload");
            added.push(host);
        }
        self.reload_files(false);
        Ok(added)
    }

    fn load_saved_acme(&self) {
        let hosts: Vec<String> = self
            .lock()
            .values()
            .filter(|e| e.status.source == CertSource::Acme)
            .map(|e| e.status.host.clone())
            .collect();
        for host in hosts {
            self.load_saved(&host);
        }
    }

    /// Serves an ACME host's saved certificate, or plans its order.
    fn load_saved(&self, host: &str) {
        let loaded = match self.store.load_cert(host) {
            Ok(Some(pem)) => load_pair(&pem, &pem).map(Some).map_err(|e| e.to_string()),
            Ok(None) => Ok(None),
            Err(e) => Err(e.to_string()),
        };
        let mut entries = self.lock();
        let Some(entry) = entries.get_mut(host) else {
            return;
        };
        match loaded {
            Ok(Some(m)) if m.info.not_after > now() => {
                self.resolver.set(host, m.key.clone());
                entry.status.next_renewal = Some(renewal_time(&m.info));
                entry.status.served = Some(m.info);
                info!(host = %host, "certificate loaded from the state dir");
            }
            Ok(_) => entry.status.next_renewal = Some(now()),
            Err(e) => {
                warn!(host = %host, error = %e, "the saved certificate cannot be used; ordering a new one");
                entry.status.last_error = Some(format!("saved certificate: {e}"));
                entry.status.next_renewal = Some(now());
            }
        }
    }

    /// Loads file pairs again: every one when `all`, else those whose files changed. A pair
    /// that fails keeps the previous one served. Returns the statuses of the file hosts.
    pub fn reload_files(&self, all: bool) -> Vec<CertStatus> {
        let files: Vec<(String, PathBuf, PathBuf, Option<Mtimes>)> = self
            .lock()
            .values()
            .filter_map(|e| match &e.status.source {
                CertSource::File { cert, key } => {
                    Some((e.status.host.clone(), cert.clone(), key.clone(), e.mtimes))
                }
                CertSource::Acme => None,
            })
            .collect();
        let mut touched = Vec::new();
        for (host, cert, key, seen) in files {
            let current = mtimes(&cert, &key);
            if !all && current == seen {
                continue;
            }
            touched.push(host.clone());
            let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
            let loaded = read(&cert).and_then(|c| {
                let k = read(&key)?;
                load_pair(&c, &k)
                    .map_err(|e| format!("{} and {}: {e}", cert.display(), key.display()))
            });
            match loaded {
                Ok(m) => {
                    self.resolver.set(&host, m.key.clone());
                    let mut entries = self.lock();
                    let entry = entries.get_mut(&host).expect("listed above");
                    entry.mtimes = current;
                    entry.status.last_error = if host.starts_with("(service ")
                        || m.info.names.iter().any(|n| name_covers(n, &host))
                    {
                        None
                    } else {
                        Some(format!(
                            "the certificate is for {} and does not cover {host}",
                            m.info.names.join(", ")
                        ))
                    };
                    entry.status.consecutive_failures = 0;
                    entry.status.updated_at = Some(now());
                    entry.status.served = Some(m.info);
                    info!(host = %host, cert = %cert.display(), "certificate loaded");
                }
                Err(e) => {
                    error!(host = %host, error = %e, "certificate files refused; the previous certificate (if any) stays served");
                    self.record_failure(&host, e, false);
                    self.lock().get_mut(&host).expect("listed above").mtimes = current;
                }
            }
        }
        let entries = self.lock();
        touched
            .iter()
            .filter_map(|h| entries.get(h).map(|e| e.status.clone()))
            .collect()
    }

    /// Orders a certificate for `host` now and waits for the outcome.
    pub async fn renew_now(&self, host: &str) -> Result<CertStatus, RenewError> {
        let host = host.to_ascii_lowercase();
        match self.lock().get(&host).map(|e| e.status.source.clone()) {
            Some(CertSource::Acme) => {}
            Some(CertSource::File { .. }) => return Err(RenewError::FromFiles(host)),
            None => return Err(RenewError::UnknownHost(host)),
        }
        let (tx, rx) = oneshot::channel();
        self.renew_tx
            .send((host, tx))
            .map_err(|_| RenewError::NotRunning)?;
        rx.await.map_err(|_| RenewError::NotRunning)?
    }

    async fn renew(&self, host: &str) -> Result<CertStatus, RenewError> {
        let acme = self.acme.as_ref().ok_or(RenewError::NoAcme)?;
        info!(host = %host, "ordering a certificate");
        let result = match acme.order(host).await {
            Ok(issued) => {
                let pem = format!("{}\n{}", issued.key_pem.trim_end(), issued.chain_pem);
                match load_pair(pem.as_bytes(), pem.as_bytes()) {
                    Ok(m) => self
                        .store
                        .save_cert(host, &issued.key_pem, &issued.chain_pem)
                        .map(|()| (m, pem))
                        .map_err(RenewError::Save),
                    Err(e) => Err(RenewError::Unusable(e)),
                }
            }
            Err(AcmeError::OrderedElsewhere { host: h, node }) => {
                // Not a failure: the certificate comes through the fleet. Look again later,
                // in case that node fails.
                info!(host = %h, node = %node, "another fleet node is ordering this certificate");
                if let Some(e) = self.lock().get_mut(host) {
                    e.status.next_renewal = Some(now() + self.retry_after.as_secs().max(1) as i64);
                }
                return Err(RenewError::Order(AcmeError::OrderedElsewhere {
                    host: h,
                    node,
                }));
            }
            Err(e) => Err(e.into()),
        };
        match result {
            Ok((m, pem)) => {
                self.resolver.set(host, m.key.clone());
                let status = {
                    let mut entries = self.lock();
                    let entry = entries.get_mut(host).expect("an ACME host");
                    entry.status.next_renewal = Some(renewal_time(&m.info));
                    info!(host = %host, serial = %m.info.serial, not_after = m.info.not_after, "certificate issued and served");
                    entry.status.served = Some(m.info);
                    entry.status.last_error = None;
                    entry.status.consecutive_failures = 0;
                    entry.status.updated_at = Some(now());
                    entry.status.clone()
                };
                // Served here first, then given to the other nodes.
                if let Some(shared) = self.shared.get() {
                    if let Err(e) = shared.save_cert(host, pem.as_bytes()).await {
                        warn!(host = %host, error = %e, "the certificate is served here but not shared with the fleet; the other nodes order their own when due");
                    }
                }
                Ok(status)
            }
            Err(e) => {
                warn!(host = %host, error = %e, "certificate order failed; the current certificate (if any) stays served");
                self.record_failure(host, e.to_string(), true);
                Err(e)
            }
        }
    }

    /// The renewal loop; returns when `shutdown` turns true. Orders run one at a time in a
    /// task of their own, so that a slow or hung CA never holds up file reloads or an answer
    /// to `certs renew` (each order ends within its timeout).
    pub async fn run(self: &Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let (jobs, mut queue) = mpsc::unbounded_channel::<(String, Option<RenewReply>)>();
        let orderer = {
            let manager = self.clone();
            tokio::spawn(async move {
                while let Some((host, reply)) = queue.recv().await {
                    let result = manager.renew(&host).await;
                    manager.ordering_lock().remove(&host);
                    if let Some(reply) = reply {
                        let _ = reply.send(result);
                    }
                }
            })
        };
        let mut forced = self.renew_rx.lock().await;
        if let Some(shared) = self.shared.get().cloned() {
            // What the fleet has is served first: no order for a name another node holds.
            tokio::select! {
                _ = shared.ready() => {}
                _ = shutdown.changed() => return,
            }
        }
        loop {
            let due = {
                let entries = self.lock();
                let ordering = self.ordering_lock();
                entries
                    .values()
                    .filter(|e| e.status.source == CertSource::Acme)
                    .filter(|e| !ordering.contains(&e.status.host))
                    .filter_map(|e| e.status.next_renewal.map(|t| (t, e.status.host.clone())))
                    .min()
            };
            let wait = match &due {
                Some((t, _)) => Duration::from_secs((*t - now()).max(0) as u64).min(FILE_POLL),
                None => FILE_POLL,
            };
            if let Some((t, host)) = due {
                if t <= now() {
                    self.ordering_lock().insert(host.clone());
                    let _ = jobs.send((host, None));
                    continue;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => { self.reload_files(false); }
                Some((host, reply)) = forced.recv() => {
                    if self.ordering_lock().insert(host.clone()) {
                        let _ = jobs.send((host, Some(reply)));
                    } else {
                        let _ = reply.send(Err(RenewError::InProgress(host)));
                    }
                }
                _ = shutdown.changed() => if *shutdown.borrow() {
                    orderer.abort();
                    return;
                },
            }
        }
    }

    fn ordering_lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.ordering.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Entry {
    fn new(host: String, source: CertSource) -> Entry {
        Entry {
            status: CertStatus {
                host,
                source,
                served: None,
                next_renewal: None,
                last_error: None,
                consecutive_failures: 0,
                failures_total: 0,
                updated_at: None,
            },
            mtimes: None,
        }
    }
}

/// Every host the config serves over TLS, in config order, with where its certificate comes
/// from. A catch-all service with a file pair serves it under the names it holds.
fn tls_hosts(config: &Config) -> Vec<(String, CertSource)> {
    let mut hosts = Vec::new();
    for service in &config.services {
        let source = match &service.tls {
            TlsMode::Off => continue,
            TlsMode::Acme => CertSource::Acme,
            TlsMode::Files { cert, key } => CertSource::File {
                cert: cert.clone(),
                key: key.clone(),
            },
        };
        let names: Vec<String> = if service.hosts.is_empty() {
            match &source {
                CertSource::File { cert, key } => std::fs::read(cert)
                    .ok()
                    .zip(std::fs::read(key).ok())
                    .and_then(|(c, k)| load_pair(&c, &k).ok())
                    .map(|m| m.info.names)
                    .unwrap_or_else(|| vec![format!("(service {})", service.name)]),
                CertSource::Acme => Vec::new(),
            }
        } else {
            service.hosts.clone()
        };
        hosts.extend(names.into_iter().map(|h| (h, source.clone())));
    }
    hosts
}

/// When to order again: a third of the lifetime before expiry, up to 2% of the lifetime
/// earlier at random so that certificates issued together do not all renew at once.
fn renewal_time(info: &CertInfo) -> i64 {
    let lifetime = (info.not_after - info.not_before).max(0) as f64;
    info.renew_at() - (lifetime * 0.02 * random_fraction()) as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::material::tests::self_signed;

    #[test]
    fn backoff_doubles_with_jitter_and_stops_at_a_day() {
        let base = Duration::from_secs(60);
        for (failures, nominal) in [(1u32, 60.0), (2, 120.0), (3, 240.0)] {
            let d = backoff(base, failures).as_secs_f64();
            assert!(
                d >= nominal * 0.8 && d <= nominal * 1.2,
                "retry {failures}: {d}s"
            );
        }
        assert!(backoff(base, 40) <= Duration::from_secs_f64(86_400.0 * 1.2));
    }

    #[test]
    fn renewal_is_due_with_a_third_of_the_lifetime_left() {
        let info = CertInfo {
            names: vec![],
            issuer: String::new(),
            serial: String::new(),
            not_before: 0,
            not_after: 90 * 86_400,
        };
        let t = renewal_time(&info);
        assert!(
            (60 * 86_400 - (90 * 86_400) / 50..=60 * 86_400).contains(&t),
            "{t}"
        );
    }

    fn config(dir: &Path, tls: &str) -> Config {
        let text = format!(
            "[listen]\nhttp = [\"127.0.0.1:1\"]\nhttps = [\"127.0.0.1:2\"]\n[control]\nsocket = \"{0}/s\"\n[state]\ndir = \"{0}/state\"\n\
             [services.app]\nhosts = [\"a.example.com\"]\nactive = \"a\"\npools.a = [\"127.0.0.1:3\"]\ntls = {tls}\n",
            dir.display()
        );
        switchback_config::parse(Path::new("t.toml"), &text).unwrap()
    }

    #[test]
    fn a_broken_file_pair_is_reported_and_a_fixed_one_is_served_on_reload() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_path, key_path) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        let (cert, _) = self_signed(&["a.example.com"]);
        let (_, wrong_key) = self_signed(&["a.example.com"]);
        std::fs::write(&cert_path, &cert).unwrap();
        std::fs::write(&key_path, &wrong_key).unwrap();
        let c = config(
            dir.path(),
            &format!(
                "{{ cert = \"{}\", key = \"{}\" }}",
                cert_path.display(),
                key_path.display()
            ),
        );
        let m = CertManager::new(&c);
        let s = &m.statuses()[0];
        assert!(s.served.is_none());
        assert!(
            s.last_error.as_deref().unwrap().contains("does not belong"),
            "{s:?}"
        );
        assert!(m.resolver.get("a.example.com").is_none());

        let (cert, key) = self_signed(&["a.example.com"]);
        std::fs::write(&cert_path, &cert).unwrap();
        std::fs::write(&key_path, &key).unwrap();
        let s = m.reload_files(true);
        assert_eq!(s[0].last_error, None);
        assert!(m.resolver.get("a.example.com").is_some());

        // Broken again: the good one stays served.
        std::fs::write(&key_path, b"junk").unwrap();
        let s = m.reload_files(true);
        assert!(s[0].last_error.is_some());
        assert!(
            m.resolver.get("a.example.com").is_some(),
            "one bad reload never unloads a served certificate"
        );
    }

    #[test]
    fn an_acme_host_without_a_saved_certificate_is_due_now() {
        let dir = tempfile::tempdir().unwrap();
        let m = CertManager::new(&config(dir.path(), "\"acme\""));
        let s = &m.statuses()[0];
        assert_eq!(s.source, CertSource::Acme);
        assert!(s.next_renewal.unwrap() <= now());
    }
}
