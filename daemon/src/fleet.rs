//! Fleet mode: several proxies share one desired state through etcd.
//!
//! ```text
//!   {prefix}/state           the desired state (a LiveState, JSON); every change is one
//!                            transaction that compares the key's revision with the one the
//!                            writer started from
//!   {prefix}/nodes/{node}    a connected node's ack: the generation it serves, under its lease
//!   {prefix}/members/{node}  the same, with no lease: a node that lost etcd is still listed
//!   {prefix}/acme/account    the fleet's ACME account (sealed)
//!   {prefix}/certs/{host}    each ACME certificate with its key (sealed)
//!   {prefix}/challenges/{t}  HTTP-01 answers of an order under way, under the orderer's lease
//!   {prefix}/locks/acme/{h}  the node ordering host h, under its lease
//!   {prefix}/stats/{s}/{n}   while a rollout runs on service s: node n's counters of each
//!                            pool, under its lease, for the driver to judge the fleet's sum
//! ```
//!
//! Sealed values are encrypted (AES-256-GCM, the key name as associated data) with a key
//! derived from `fleet.key_file`, which etcd never sees; the canary cookie key is derived from
//! the same file, so every node signs the same cookies.
//!
//! A node follows the fleet in sessions ([`Fleet::follow`]): connect, take a lease, read the
//! prefix whole at one revision, then watch from the next one. A session that breaks (etcd
//! gone, the lease lost, a watch start compacted away) marks the node disconnected: it keeps
//! serving the state it has, refuses changes, and the next session reads everything again,
//! which is how it catches up. The state file stays the last state the node applied, so a
//! node starts while etcd is down.
//!
//! This module knows etcd and the keys; what a state means is the [`Follower`]'s (the
//! controller), so that the two never import each other.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use switchback_certs::{CertManager, OrderLock, SavedAccount, SharedStore};
use switchback_config::{FleetConfig, LiveState};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::change::DeployError;
use crate::etcd::{Client, Compare, ConnectOptions, RequestOp, TlsOptions};
use crate::judge::{Counts, Snapshot};

/// A node's counters of each pool of one service.
pub type PoolCounts = BTreeMap<String, Snapshot>;

/// How long a node's lease outlives its last keep-alive: a node that stops (or loses etcd) is
/// out of the fleet's acks this long after.
const LEASE_TTL: i64 = 3;
/// How often the lease is kept alive: three times per TTL.
const KEEP_ALIVE: Duration = Duration::from_secs(1);
/// How often a node's ack and `members` record are written again while nothing changes, for
/// `status`'s last seen.
const MEMBER_REFRESH: Duration = Duration::from_secs(10);
/// The longest wait for one call to etcd.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// The wait before a new session after one broke.
const RECONNECT: Duration = Duration::from_millis(500);
/// A change that keeps losing its transaction to changes of other services gives up.
const WRITE_ATTEMPTS: usize = 5;

/// What a node says it serves, under `nodes/` and `members/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    /// The generation of the fleet state it serves.
    pub generation: u64,
    /// Why part of that state does not apply here (a pool this node's config lacks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When it was written, in seconds since the Unix epoch.
    pub seen: i64,
}

/// A node as the fleet knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    pub name: String,
    pub ack: Ack,
    /// Whether it holds a live lease: connected to etcd now.
    pub connected: bool,
}

/// The controller's side: what a node does with the fleet's state.
#[async_trait]
pub trait Follower: Send + Sync {
    /// Applies the fleet state at `revision`, unless what this node serves is already as new.
    async fn apply(&self, fleet: &Fleet, state: LiveState, revision: i64);
    /// This node's live state: what an empty fleet starts from.
    async fn local_state(&self) -> LiveState;
    /// The counters of each pool of every service a rollout runs on (driven by any node).
    async fn rollout_counts(&self) -> Vec<(String, PoolCounts)>;
    /// Ends the rollouts whose driving node left.
    async fn end_orphans(&self, fleet: &Fleet);
}

/// What this node has applied of the fleet's state.
#[derive(Debug, Clone, Default)]
struct Applied {
    /// The fleet state as written in etcd (not fitted to this node's config).
    state: Option<LiveState>,
    /// Its key's mod revision.
    revision: i64,
}

/// One node's link to the fleet.
pub struct Fleet {
    config: FleetConfig,
    state_key: String,
    connected: AtomicBool,
    /// Why the node is not connected.
    problem: Mutex<Option<String>>,
    /// The client of the current session.
    client: Mutex<Option<Client>>,
    /// Changed by the controller only, under its state lock (see [`Follower::apply`]).
    applied: Mutex<Applied>,
    nodes: Mutex<BTreeMap<String, NodeView>>,
    /// What each node published for rollouts: service, then node.
    stats: Mutex<BTreeMap<String, BTreeMap<String, PoolCounts>>>,
    /// Bumped whenever `nodes` changes, for ack waits.
    nodes_changed: watch::Sender<u64>,
    /// What this node serves: published by the session.
    ack: watch::Sender<(u64, Option<String>)>,
    /// The current session's lease (0: none).
    lease: AtomicI64,
    /// Set once a session has read the prefix whole.
    synced: watch::Sender<bool>,
    /// Seals what is secret before it goes to etcd.
    seal: ring::aead::LessSafeKey,
    bucket_key: Vec<u8>,
    /// TLS: the certificate manager, for what other nodes share.
    certs: std::sync::OnceLock<Arc<CertManager>>,
}

/// A key for one purpose, derived from the fleet's key file.
fn derive(secret: &[u8], purpose: &[u8]) -> Vec<u8> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    ring::hmac::sign(&key, purpose).as_ref().to_vec()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn unreachable(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// An etcd client error without the transport's debug dump that tonic appends.
fn short(error: &str) -> &str {
    error.split(", source:").next().unwrap_or(error)
}

async fn call<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, crate::etcd::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {}", short(&e.to_string()))),
        Err(_) => Err(format!("{what}: no answer within {CALL_TIMEOUT:?}")),
    }
}

impl Fleet {
    /// A node's link, with `secret`, the bytes of `fleet.key_file`.
    pub fn new(config: FleetConfig, secret: &[u8]) -> Fleet {
        let sealing = derive(secret, b"switchback fleet sealing v1");
        let seal = ring::aead::LessSafeKey::new(
            ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &sealing).expect("a 32-byte key"),
        );
        Fleet {
            lease: AtomicI64::new(0),
            synced: watch::Sender::new(false),
            seal,
            bucket_key: derive(secret, b"switchback canary bucket cookie v1"),
            certs: std::sync::OnceLock::new(),
            state_key: format!("{}/state", config.prefix),
            config,
            connected: AtomicBool::new(false),
            problem: Mutex::new(Some("not connected yet".into())),
            client: Mutex::new(None),
            applied: Mutex::default(),
            nodes: Mutex::default(),
            stats: Mutex::default(),
            nodes_changed: watch::Sender::new(0),
            ack: watch::Sender::new((0, None)),
        }
    }

    /// The key canary bucket cookies are signed with: the same on every node.
    pub fn bucket_key(&self) -> &[u8] {
        &self.bucket_key
    }

    /// TLS: takes the certificates other nodes share, and shares this node's.
    pub fn attach_certs(self: &Arc<Self>, certs: Arc<CertManager>) {
        certs.set_shared(self.clone());
        let _ = self.certs.set(certs);
    }

    /// `value` sealed for `key`: a random nonce, then the ciphertext and its tag.
    fn seal(&self, key: &str, value: &[u8]) -> Result<Vec<u8>, String> {
        use ring::rand::SecureRandom;
        let mut nonce = [0u8; ring::aead::NONCE_LEN];
        ring::rand::SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| "no random bytes for a nonce".to_string())?;
        let mut sealed = value.to_vec();
        self.seal
            .seal_in_place_append_tag(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::from(key.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| "sealing failed".to_string())?;
        let mut out = nonce.to_vec();
        out.extend(sealed);
        Ok(out)
    }

    /// The value sealed for `key`; an error when it was not sealed with this fleet's key file
    /// (or not for this key).
    fn open(&self, key: &str, sealed: &[u8]) -> Result<Vec<u8>, String> {
        if sealed.len() < ring::aead::NONCE_LEN {
            return Err(format!("{key} is not sealed"));
        }
        let (nonce, rest) = sealed.split_at(ring::aead::NONCE_LEN);
        let nonce = ring::aead::Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| format!("{key} is not sealed"))?;
        let mut buf = rest.to_vec();
        let plain = self
            .seal
            .open_in_place(nonce, ring::aead::Aad::from(key.as_bytes()), &mut buf)
            .map_err(|_| {
                format!("{key} cannot be opened: it was sealed with another fleet.key_file")
            })?;
        Ok(plain.to_vec())
    }

    fn client(&self) -> Result<Client, String> {
        match (
            self.client
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            self.connected(),
        ) {
            (Some(client), true) => Ok(client),
            _ => Err(format!(
                "fleet store unreachable: {}",
                self.problem().unwrap_or_else(|| "not connected".into())
            )),
        }
    }

    fn key(&self, rest: &str) -> String {
        format!("{}/{rest}", self.config.prefix)
    }

    pub fn node(&self) -> &str {
        &self.config.node
    }

    pub fn ack_timeout(&self) -> Duration {
        self.config.ack_timeout
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    /// Why the node is not connected, when it is not.
    pub fn problem(&self) -> Option<String> {
        self.problem
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A pool's counters as the other connected nodes last published them, by node.
    pub fn pool_counts(&self, service: &str, pool: &str) -> Counts {
        let connected: Vec<String> = self
            .nodes()
            .into_iter()
            .filter(|n| n.connected && n.name != self.node())
            .map(|n| n.name)
            .collect();
        let stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        stats
            .get(service)
            .map(|by_node| {
                by_node
                    .iter()
                    .filter(|(node, _)| connected.contains(node))
                    .filter_map(|(node, pools)| Some((node.clone(), pools.get(pool)?.clone())))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The mod revision of the fleet state this node serves.
    pub fn applied_revision(&self) -> i64 {
        self.applied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .revision
    }

    /// Notes that this node serves the fleet `state` at `revision` (the controller, under its
    /// state lock), and publishes the ack: its generation, and what did not apply.
    pub fn note_applied(&self, state: LiveState, revision: i64, error: Option<String>) {
        let generation = state.generation;
        *self.applied.lock().unwrap_or_else(|e| e.into_inner()) = Applied {
            state: Some(state),
            revision,
        };
        self.ack.send_replace((generation, error));
    }

    /// Every node known, this one first.
    pub fn nodes(&self) -> Vec<NodeView> {
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        let mut list: Vec<NodeView> = nodes.values().cloned().collect();
        let me = self.node();
        let connected = self.connected();
        for node in &mut list {
            // This node knows its own link best; while it has none, it cannot vouch for the
            // others' either.
            if node.name == me || !connected {
                node.connected = node.name == me && connected;
            }
        }
        list.sort_by_key(|n| n.name != me);
        list
    }

    fn set_disconnected(&self, why: String) {
        if self.connected.swap(false, Ordering::SeqCst) {
            warn!(error = %why, "fleet store unreachable: serving the last applied state, refusing changes until it is back");
        }
        *self.problem.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
        *self.client.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn refuse_unreachable(&self) -> DeployError {
        DeployError::FleetUnreachable(self.problem().unwrap_or_else(|| "not connected".into()))
    }

    /// Writes a change to the fleet: `next` is this node's state after it, `base` before it.
    /// The services it touches are laid over the fleet state this node serves, and written if
    /// the key has not moved since. When it has, a change to another service is taken in and
    /// the write tried again; a change to the same service is a conflict. Returns the fleet
    /// state written, with its revision.
    pub async fn write(
        &self,
        base: &LiveState,
        next: &LiveState,
    ) -> Result<(LiveState, i64), DeployError> {
        let client = self
            .client
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let (Some(client), true) = (client, self.connected()) else {
            return Err(self.refuse_unreachable());
        };
        let (mut fleet, mut revision) = {
            let applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
            match &applied.state {
                Some(s) => (s.clone(), applied.revision),
                None => return Err(self.refuse_unreachable()),
            }
        };
        let touched: Vec<String> = LiveState::touched(base, next)
            .into_iter()
            .map(str::to_string)
            .collect();
        for _ in 0..WRITE_ATTEMPTS {
            let mut candidate = LiveState::changed_over(&fleet, base, next);
            candidate.generation = fleet.generation + 1;
            let json = serde_json::to_vec(&candidate).map_err(|e| {
                DeployError::FleetUnreachable(format!("cannot encode the state: {e}"))
            })?;
            let txn = client.txn(
                vec![Compare::mod_revision_is(&self.state_key, revision)],
                vec![RequestOp::put(&self.state_key, json, 0)],
                vec![RequestOp::get(&self.state_key)],
            );
            let response = match call("write the state", txn).await {
                Ok(r) => r,
                Err(e) => {
                    // The write may have gone through: the next session reads what it did.
                    self.set_disconnected(e.clone());
                    return Err(DeployError::FleetWriteUnknown(e));
                }
            };
            if response.succeeded {
                let written = response.header.map_or(revision, |h| h.revision);
                return Ok((candidate, written));
            }
            let current = response.first_range().and_then(|kvs| kvs.first());
            let Some(kv) = current else {
                return Err(DeployError::FleetUnreachable(
                    "the fleet state key is gone from etcd".into(),
                ));
            };
            let now: LiveState = serde_json::from_slice(&kv.value).map_err(|e| {
                DeployError::FleetUnreachable(format!("the fleet state in etcd is not valid: {e}"))
            })?;
            if let Some(service) = touched
                .iter()
                .find(|s| now.services.get(*s) != fleet.services.get(*s))
            {
                return Err(DeployError::Conflict {
                    service: service.clone(),
                    generation: now.generation,
                });
            }
            fleet = now;
            revision = kv.mod_revision;
        }
        Err(DeployError::Conflict {
            service: touched.first().cloned().unwrap_or_default(),
            generation: fleet.generation,
        })
    }

    /// Waits until every connected node serves `generation` (or a later one). After
    /// `ack_timeout`, names the nodes that lag.
    pub async fn wait_applied(&self, generation: u64) -> Result<(), DeployError> {
        let deadline = tokio::time::Instant::now() + self.config.ack_timeout;
        let mut changed = self.nodes_changed.subscribe();
        loop {
            changed.borrow_and_update();
            let lagging: Vec<String> = self
                .nodes()
                .iter()
                .filter(|n| n.connected && (n.ack.generation < generation || n.ack.error.is_some()))
                .map(|n| match &n.ack.error {
                    Some(e) => format!("{} (at generation {}: {e})", n.name, n.ack.generation),
                    None => format!("{} (at generation {})", n.name, n.ack.generation),
                })
                .collect();
            if lagging.is_empty() {
                return Ok(());
            }
            tokio::select! {
                _ = changed.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(DeployError::FleetLagging {
                        generation,
                        timeout: self.config.ack_timeout,
                        nodes: lagging,
                    });
                }
            }
        }
    }

    async fn connect(&self) -> Result<Client, String> {
        let mut options = ConnectOptions {
            connect_timeout: Some(CALL_TIMEOUT),
            keep_alive: Some((KEEP_ALIVE, CALL_TIMEOUT)),
            ..ConnectOptions::default()
        };
        if let Some((user, file)) = &self.config.user {
            // A token that expires is renewed on the next call, not by a broken session.
            options.user = Some((user.clone(), read_secret(file)?));
        }
        if self.config.ca.is_some() || self.config.client_cert.is_some() {
            let mut tls = TlsOptions::default();
            if let Some(ca) = &self.config.ca {
                let pem =
                    std::fs::read(ca).map_err(|e| format!("fleet.ca {}: {e}", ca.display()))?;
                tls.ca = Some(pem);
            }
            if let Some((cert, key)) = &self.config.client_cert {
                let cert = std::fs::read(cert)
                    .map_err(|e| format!("fleet.cert {}: {e}", cert.display()))?;
                tls.identity = Some((cert, read_secret(key)?.into_bytes()));
            }
            options.tls = Some(tls);
        }
        call("connect", Client::connect(&self.config.etcd, options)).await
    }

    /// At start, before the first request: the fleet's state, when etcd answers. When it does
    /// not, the node starts on its state file's state, and the first session catches up.
    pub async fn read_once(&self, follower: &dyn Follower) -> Result<(), String> {
        let client = self.connect().await?;
        let read = call("read the fleet state", client.get(&self.state_key, false)).await?;
        if let Some(kv) = read.kvs.first() {
            let state: LiveState = serde_json::from_slice(&kv.value)
                .map_err(|e| format!("the fleet state in etcd is not valid: {e}"))?;
            follower.apply(self, state, kv.mod_revision).await;
        }
        Ok(())
    }

    /// Follows the fleet until `shutdown`: one session after another.
    pub async fn follow(&self, follower: Arc<dyn Follower>, mut shutdown: watch::Receiver<bool>) {
        loop {
            let ended = tokio::select! {
                r = self.session(follower.as_ref()) => r,
                _ = shutdown.changed() => return self.leave().await,
            };
            if let Err(e) = ended {
                self.set_disconnected(e);
            }
            if *shutdown.borrow() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(RECONNECT) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Takes this node out at a clean stop: its ack goes, so no change waits for it. Only its
    /// own: after an upgrade, the new process acks under the same name with a lease of its own.
    async fn leave(&self) {
        let client = self.client.lock().unwrap_or_else(|e| e.into_inner()).take();
        let lease = self.lease.load(Ordering::SeqCst);
        if let Some(client) = client {
            let key = self.key(&format!("nodes/{}", self.node()));
            let txn = client.txn(
                vec![Compare::lease_is(&key, lease)],
                vec![RequestOp::delete(&key)],
                vec![],
            );
            let _ = call("leave", txn).await;
            let _ = call("end the lease", client.lease_revoke(lease)).await;
        }
        self.connected.store(false, Ordering::SeqCst);
    }

    /// One session: returns why it ended.
    async fn session(&self, follower: &dyn Follower) -> Result<(), String> {
        let client = self.connect().await?;
        let lease = call("grant a lease", client.lease_grant(LEASE_TTL)).await?;
        self.lease.store(lease, Ordering::SeqCst);
        let (mut keeper, mut keep_alive) =
            call("keep the lease alive", client.lease_keep_alive(lease)).await?;
        let prefix = format!("{}/", self.config.prefix);
        let revision = self.read_all(&client, follower, &prefix).await?;
        let mut watch = call("watch", client.watch(&prefix, true, revision + 1)).await?;
        *self.client.lock().unwrap_or_else(|e| e.into_inner()) = Some(client.clone());
        *self.problem.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if !self.connected.swap(true, Ordering::SeqCst) {
            info!(node = %self.node(), revision, "fleet store connected: following it");
        }
        self.synced.send_replace(true);
        follower.end_orphans(self).await;
        let mut acks = self.ack.subscribe();
        acks.mark_changed();
        let mut tick = tokio::time::interval(KEEP_ALIVE);
        let mut member_written = tokio::time::Instant::now();
        loop {
            tokio::select! {
                message = watch.message() => {
                    let response = message
                        .map_err(|e| format!("watch: {}", e.message()))?
                        .ok_or("the watch ended")?;
                    if response.compact_revision > 0 || response.canceled {
                        return Err(format!(
                            "the watch was cancelled ({}); reading everything again",
                            if response.compact_revision > 0 { "its start revision was compacted" } else { &response.cancel_reason }
                        ));
                    }
                    for event in &response.events {
                        let Some(kv) = &event.kv else { continue };
                        let key = std::str::from_utf8(&kv.key).unwrap_or_default();
                        self.take(follower, key, &kv.value, kv.mod_revision, event.is_delete()).await;
                    }
                    if !response.events.is_empty() {
                        follower.end_orphans(self).await;
                    }
                }
                _ = tick.tick() => {
                    call("keep the lease alive", keeper.keep_alive()).await?;
                    self.publish_counts(&client, follower, lease).await?;
                    if member_written.elapsed() >= MEMBER_REFRESH {
                        // The live ack too: after an upgrade, the old process's last words may
                        // have removed it.
                        self.publish(&client, lease, true).await?;
                        member_written = tokio::time::Instant::now();
                    }
                }
                reply = keep_alive.message() => {
                    match reply.map_err(|e| format!("lease: {}", e.message()))? {
                        Some(r) if r.ttl > 0 => {}
                        _ => return Err("the lease expired".into()),
                    }
                }
                changed = acks.changed() => {
                    changed.map_err(|_| "stopping")?;
                    self.publish(&client, lease, true).await?;
                    member_written = tokio::time::Instant::now();
                }
            }
        }
    }

    /// While rollouts run: this node's counters of their pools, for the driving node.
    async fn publish_counts(
        &self,
        client: &Client,
        follower: &dyn Follower,
        lease: i64,
    ) -> Result<(), String> {
        for (service, pools) in follower.rollout_counts().await {
            let json = serde_json::to_vec(&pools).map_err(unreachable)?;
            let key = self.key(&format!("stats/{service}/{}", self.node()));
            call("publish rollout counters", client.put(&key, json, lease)).await?;
        }
        Ok(())
    }

    /// Writes this node's ack: under its lease (`with_live`), and as a member.
    async fn publish(&self, client: &Client, lease: i64, with_live: bool) -> Result<(), String> {
        let (generation, error) = self.ack.borrow().clone();
        let ack = Ack {
            generation,
            error,
            seen: now(),
        };
        let json = serde_json::to_vec(&ack).map_err(unreachable)?;
        let node = self.node();
        let mut ops = vec![RequestOp::put(
            &format!("{}/members/{node}", self.config.prefix),
            json.clone(),
            0,
        )];
        if with_live {
            ops.push(RequestOp::put(
                &format!("{}/nodes/{node}", self.config.prefix),
                json,
                lease,
            ));
        }
        call("write this node's ack", client.txn(vec![], ops, vec![])).await?;
        Ok(())
    }

    /// Reads the whole prefix at one revision: the state (written from this node's own when
    /// the fleet has none yet) and the nodes. Returns the revision read.
    async fn read_all(
        &self,
        client: &Client,
        follower: &dyn Follower,
        prefix: &str,
    ) -> Result<i64, String> {
        let all = call("read the fleet", client.get(prefix, true)).await?;
        let mut revision = all.header.map_or(0, |h| h.revision);
        let has_state = all.kvs.iter().any(|kv| kv.key == self.state_key.as_bytes());
        if !has_state {
            // The first node of a fleet: its state becomes the fleet's, unless another node's
            // got there first.
            let mine = follower.local_state().await;
            let json = serde_json::to_vec(&mine).map_err(unreachable)?;
            let txn = client.txn(
                vec![Compare::create_revision_is(&self.state_key, 0)],
                vec![RequestOp::put(&self.state_key, json, 0)],
                vec![],
            );
            let written = call("start the fleet state", txn).await?;
            if written.succeeded {
                info!(node = %self.node(), generation = mine.generation, "the fleet had no state: this node's state is the fleet's now");
            }
            return Box::pin(self.read_all(client, follower, prefix)).await;
        }
        {
            let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
            nodes.clear();
        }
        for kv in &all.kvs {
            let key = std::str::from_utf8(&kv.key).unwrap_or_default();
            self.take(follower, key, &kv.value, kv.mod_revision, false)
                .await;
            revision = revision.max(kv.mod_revision);
        }
        self.nodes_changed.send_modify(|n| *n += 1);
        Ok(revision)
    }

    /// One key's new value (or its deletion).
    async fn take(
        &self,
        follower: &dyn Follower,
        key: &str,
        value: &[u8],
        revision: i64,
        deleted: bool,
    ) {
        let Some(rest) = key.strip_prefix(self.config.prefix.as_str()) else {
            return;
        };
        if rest == "/state" {
            if deleted {
                warn!("the fleet state was deleted from etcd: serving the last applied state");
                return;
            }
            match serde_json::from_slice::<LiveState>(value) {
                Ok(state) => follower.apply(self, state, revision).await,
                Err(e) => {
                    warn!(error = %e, revision, "the fleet state in etcd is not valid: ignored")
                }
            }
            return;
        }
        if let Some((service, node)) = rest.strip_prefix("/stats/").and_then(|r| r.split_once('/'))
        {
            let counts = (!deleted)
                .then(|| serde_json::from_slice::<PoolCounts>(value).ok())
                .flatten();
            let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
            let by_node = stats.entry(service.to_string()).or_default();
            match counts {
                Some(c) => {
                    by_node.insert(node.to_string(), c);
                }
                None => {
                    by_node.remove(node);
                }
            }
            return;
        }
        if let Some(host) = rest.strip_prefix("/certs/") {
            self.take_cert(key, host, value, deleted);
            return;
        }
        if let Some(token) = rest.strip_prefix("/challenges/") {
            if let Some(certs) = self.certs.get() {
                match deleted {
                    true => certs.challenges().forget(token),
                    false => certs
                        .challenges()
                        .remember(token, &String::from_utf8_lossy(value)),
                }
            }
            return;
        }
        let (live, name) = match (rest.strip_prefix("/nodes/"), rest.strip_prefix("/members/")) {
            (Some(name), _) => (true, name),
            (_, Some(name)) => (false, name),
            _ => return,
        };
        let ack = if deleted {
            None
        } else {
            match serde_json::from_slice::<Ack>(value) {
                Ok(ack) => Some(ack),
                Err(_) => return,
            }
        };
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        let view = nodes.entry(name.to_string()).or_insert_with(|| NodeView {
            name: name.to_string(),
            ack: Ack {
                generation: 0,
                error: None,
                seen: 0,
            },
            connected: false,
        });
        match (live, ack) {
            (true, Some(ack)) => {
                view.connected = true;
                if ack.seen >= view.ack.seen || ack.generation != view.ack.generation {
                    view.ack = ack;
                }
            }
            (true, None) => view.connected = false,
            (false, Some(ack)) => {
                if ack.seen >= view.ack.seen {
                    view.ack = ack;
                }
            }
            (false, None) => {
                nodes.remove(name);
            }
        }
        drop(nodes);
        self.nodes_changed.send_modify(|n| *n += 1);
    }
}

impl Fleet {
    /// A certificate another node (or this one) shared.
    fn take_cert(&self, key: &str, host: &str, sealed: &[u8], deleted: bool) {
        let Some(certs) = self.certs.get() else {
            return;
        };
        if deleted {
            return;
        }
        match self.open(key, sealed) {
            Ok(pem) => certs.take_shared(host, &pem),
            Err(e) => warn!(host = %host, error = %e, "a fleet certificate was ignored"),
        }
    }
}

#[async_trait]
impl SharedStore for Fleet {
    async fn ready(&self) {
        let mut synced = self.synced.subscribe();
        let _ = synced.wait_for(|s| *s).await;
    }

    async fn lock_order(&self, host: &str) -> Result<OrderLock, String> {
        let client = self.client()?;
        let key = self.key(&format!("locks/acme/{host}"));
        let lease = self.lease.load(Ordering::SeqCst);
        let txn = client.txn(
            vec![Compare::create_revision_is(&key, 0)],
            vec![RequestOp::put(&key, self.node().into(), lease)],
            vec![RequestOp::get(&key)],
        );
        let response = call("take the ACME order lock", txn).await?;
        if response.succeeded {
            return Ok(OrderLock::Acquired);
        }
        let holder = response
            .first_range()
            .and_then(|kvs| kvs.first())
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
            .unwrap_or_default();
        if holder == self.node() {
            // Left by this node's own order that ended without its release reaching etcd.
            return Ok(OrderLock::Acquired);
        }
        Ok(OrderLock::HeldBy(holder))
    }

    async fn unlock_order(&self, host: &str) {
        let Ok(client) = self.client() else {
            // The lock goes with this node's lease.
            return;
        };
        let key = self.key(&format!("locks/acme/{host}"));
        let txn = client.txn(
            vec![Compare::value_is(&key, self.node().as_bytes())],
            vec![RequestOp::delete(&key)],
            vec![],
        );
        if let Err(e) = call("release the ACME order lock", txn).await {
            warn!(host = %host, error = %e, "the ACME order lock stays until this node's lease ends");
        }
    }

    async fn load_account(&self) -> Result<Option<SavedAccount>, String> {
        let client = self.client()?;
        let key = self.key("acme/account");
        let read = call("read the ACME account", client.get(&key, false)).await?;
        let Some(kv) = read.kvs.first() else {
            return Ok(None);
        };
        let plain = self.open(&key, &kv.value)?;
        serde_json::from_slice(&plain)
            .map(Some)
            .map_err(|e| format!("the fleet's ACME account: {e}"))
    }

    async fn save_account(&self, account: &SavedAccount) -> Result<(), String> {
        let client = self.client()?;
        let key = self.key("acme/account");
        let json = serde_json::to_vec(account).map_err(|e| e.to_string())?;
        let sealed = self.seal(&key, &json)?;
        call("save the ACME account", client.put(&key, sealed, 0)).await?;
        Ok(())
    }

    async fn save_cert(&self, host: &str, pem: &[u8]) -> Result<(), String> {
        let client = self.client()?;
        let key = self.key(&format!("certs/{host}"));
        let sealed = self.seal(&key, pem)?;
        call("share the certificate", client.put(&key, sealed, 0)).await?;
        Ok(())
    }

    async fn put_challenge(&self, token: &str, key_authorization: &str) -> Result<(), String> {
        let client = self.client()?;
        let key = self.key(&format!("challenges/{token}"));
        let lease = self.lease.load(Ordering::SeqCst);
        call(
            "share the challenge answer",
            client.put(&key, key_authorization.into(), lease),
        )
        .await?;
        Ok(())
    }

    async fn remove_challenge(&self, token: &str) {
        if let Ok(client) = self.client() {
            let key = self.key(&format!("challenges/{token}"));
            let _ = call("remove the challenge answer", client.delete(&key)).await;
        }
    }
}

/// The smallest `fleet.key_file`.
const MIN_KEY_BYTES: usize = 32;

/// A secret file's bytes: it must be readable by its owner only.
fn read_private(path: &std::path::Path) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "{} can be read by others (mode {:o}): make it mode 0600",
            path.display(),
            meta.permissions().mode() & 0o777
        ));
    }
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// A password file's text, without its last line break.
fn read_secret(path: &std::path::Path) -> Result<String, String> {
    let bytes = read_private(path)?;
    Ok(String::from_utf8_lossy(&bytes).trim_end().to_string())
}

/// `fleet.key_file`: private, and at least 32 bytes.
pub fn read_key_file(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let key = read_private(path)?;
    if key.len() < MIN_KEY_BYTES {
        return Err(format!(
            "{} has {} bytes; it needs at least {MIN_KEY_BYTES} random ones (head -c 32 /dev/urandom > FILE)",
            path.display(),
            key.len()
        ));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(secret: &[u8]) -> Fleet {
        Fleet::new(
            FleetConfig {
                etcd: vec!["http://127.0.0.1:2379".into()],
                prefix: "/switchback".into(),
                node: "edge-1".into(),
                ack_timeout: Duration::from_secs(5),
                ca: None,
                client_cert: None,
                user: None,
                key_file: "/k".into(),
            },
            secret,
        )
    }

    #[test]
    fn sealed_values_open_only_with_the_same_key_file_and_for_the_same_key() {
        let a = fleet(b"0123456789abcdef0123456789abcdef");
        let sealed = a
            .seal("/switchback/certs/x.test", b"-----BEGIN PRIVATE KEY-----")
            .unwrap();
        assert!(
            !sealed.windows(5).any(|w| w == b"BEGIN"),
            "not in the clear"
        );
        assert_eq!(
            a.open("/switchback/certs/x.test", &sealed).unwrap(),
            b"-----BEGIN PRIVATE KEY-----"
        );
        // Sealed twice, never the same bytes (a fresh nonce each time).
        assert_ne!(
            sealed,
            a.seal("/switchback/certs/x.test", b"-----BEGIN PRIVATE KEY-----")
                .unwrap()
        );
        // Moved to another key: refused.
        assert!(a.open("/switchback/certs/y.test", &sealed).is_err());
        // Another fleet's key file: refused, and said so.
        let b = fleet(b"another key file, 32 bytes or more");
        let e = b.open("/switchback/certs/x.test", &sealed).unwrap_err();
        assert!(e.contains("another fleet.key_file"), "{e}");
        assert!(a.open("/switchback/certs/x.test", b"short").is_err());
    }

    #[test]
    fn every_node_of_a_fleet_signs_cookies_with_the_same_key() {
        let secret = b"0123456789abcdef0123456789abcdef";
        assert_eq!(fleet(secret).bucket_key(), fleet(secret).bucket_key());
        assert_ne!(fleet(secret).bucket_key(), &secret[..]);
        assert_ne!(
            fleet(secret).bucket_key(),
            fleet(b"another key file, 32 bytes or more").bucket_key()
        );
    }

    #[test]
    fn a_key_file_must_be_private_and_long_enough() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.key");
        std::fs::write(&path, [7u8; 32]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(read_key_file(&path)
            .unwrap_err()
            .contains("make it mode 0600"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_key_file(&path).unwrap().len(), 32);
        std::fs::write(&path, [7u8; 31]).unwrap();
        assert!(read_key_file(&path).unwrap_err().contains("at least 32"));
    }

    #[test]
    fn etcd_errors_lose_the_transport_dump() {
        assert_eq!(
            short("grpc request error: code: 'Unavailable', message: \"tcp connect error\", source: tonic::transport::Error(…)"),
            "grpc request error: code: 'Unavailable', message: \"tcp connect error\""
        );
    }
}
