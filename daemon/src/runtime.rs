//! `switchback run`: wires the parts into one pingora server, runs it, and stops it cleanly.
//!
//! ```text
//!   pingora Server
//!   ├── proxy service      (N worker threads)  SwitchbackProxy on every [listen] address
//!   ├── control service    (1 thread)          the control socket → ControlHandler → Controller
//!   ├── health service     (1 thread)          one checker per service with a health check
//!   ├── certificates       (1 thread)          orders, renewals, file reloads, when TLS is on
//!   └── admin service      (1 thread)          /metrics, /healthz, /readyz, when [admin] is set
//!   + the access log writer thread, when the access log is on
//! ```
//!
//! Signals: SIGINT stops at once (requests in flight are cut). SIGTERM stops accepting, lets in-flight requests finish (at
//! most `server.shutdown_grace`), and exits as soon as none is left. SIGQUIT hands the
//! listeners to a new process (pingora's upgrade). SIGHUP reloads the config file, as
//! `switchback reload` does. Every way out flushes the access log first.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use switchback_certs::CertManager;
use switchback_config::{AccessLogFormat, Config, TlsMode};
use switchback_control::BindError;
use switchback_proxy::access_log::{self, AccessLog};
use switchback_proxy::proxy_protocol::{BeforeTls, ProxyProtocol};
use switchback_proxy::split::BucketSigner;
use switchback_proxy::workers::{Listener, Workers};
use switchback_proxy::{ClientLimits, Connections, Metrics, SwitchbackProxy};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Notify;
use tracing::{debug, error, info, warn};

use crate::admin::AdminApp;
use crate::change::StartError;
use crate::controller::Controller;
use crate::handler::{reload, ControlHandler};
use crate::health_check::{check_all_once, run_checker};
use crate::upgrade::{self, Upgrader};

/// How long an exit waits for the access log writer to catch up.
const ACCESS_LOG_FLUSH: Duration = Duration::from_secs(5);

/// Why `run` could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot listen on {addr} ({key}): {source}")]
    Listen {
        addr: SocketAddr,
        key: &'static str,
        source: std::io::Error,
    },
    #[error("cannot open the access log {path} (access_log.path): {source}")]
    AccessLog {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] StartError),
    #[error("control.group: {0}")]
    ControlGroup(BindError),
    #[error(transparent)]
    ControlSocket(BindError),
    #[error("TLS listener {addr}: {reason}")]
    Tls { addr: SocketAddr, reason: String },
    #[error("the bucket cookie key {}: {source}", path.display())]
    BucketKey {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start a runtime: {0}")]
    Runtime(std::io::Error),
}

impl RunError {
    /// Whether the config itself is wrong (exit 2), rather than the machine refusing (exit 1).
    pub fn is_config(&self) -> bool {
        matches!(self, RunError::ControlGroup(_))
    }
}

/// Descriptors the process needs besides client and backend connections: listeners, the
/// control socket, health checks, log and state files, the runtime's own.
const OWN_FILES: u64 = 256;

/// Raises the soft limit on open files to the hard limit, and warns when `max_connections`
/// (a client and a backend connection each) does not fit under it: past the limit every
/// accept fails, for the control socket and the health checks too, which the cap is there to
/// prevent.
fn raise_open_files_limit(max_connections: usize) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    // A client and a backend connection each, and a WebSocket a third: the duplicate that
    // lets a drain close it (see switchback_proxy::long_lived).
    let needed = 3 * max_connections as u64 + OWN_FILES;
    if limit.rlim_cur != libc::RLIM_INFINITY && limit.rlim_cur < needed {
        warn!(
            max_connections,
            open_files_limit = limit.rlim_cur,
            needed,
            "server.max_connections does not fit under the open-files limit (a client and a backend connection each, and a third for a WebSocket): raise the limit (LimitNOFILE= in a systemd unit, ulimit -n) or lower max_connections"
        );
    }
}

/// The key that signs canary bucket cookies: `bucket.key` in the state dir (32 random bytes,
/// mode 0600), made on first start, so that clients keep their buckets across restarts.
fn bucket_key(state_dir: &std::path::Path) -> Result<Vec<u8>, RunError> {
    use std::io::Read;
    let path = state_dir.join("bucket.key");
    let fail = |source| RunError::BucketKey {
        path: path.clone(),
        source,
    };
    match std::fs::read(&path) {
        Ok(key) if key.len() >= 32 => return Ok(key),
        Ok(_) => {
            warn!(path = %path.display(), "the bucket cookie key is too short: making a new one (clients draw new buckets)")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e)),
    }
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .map_err(fail)?;
    switchback_config::atomic::write_atomic(&path, &key, 0o600).map_err(fail)?;
    // Another process on the same state dir may have written its key first: use the one kept.
    std::fs::read(&path).map_err(fail)
}

/// Turns transparent huge pages off for this process (and the processes it starts: an
/// upgrade's new one inherits it).
///
/// mimalloc asks the kernel for huge pages for its arenas. With them, the first byte written in
/// a 2 MiB region makes all of it resident, so a buffer that holds a few bytes costs all the
/// memory it could hold: an open WebSocket, which waits in two 64 KiB body reads of pingora's,
/// cost 163 KB of resident memory with them and 45 KB without (`cargo bench --bench proxy --
/// memory`), at the same requests per second. Best effort: a kernel without the call keeps them.
fn no_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory of ours.
    if unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } != 0 {
        debug!(error = %std::io::Error::last_os_error(), "transparent huge pages stay on");
    }
}

/// Starts the proxy and blocks until it is told to stop.
pub fn run(config: Config) -> Result<(), RunError> {
    std::sync::LazyLock::force(&crate::status::STARTED);
    no_huge_pages();
    // Until the signal watcher is listening, a SIGHUP must not end the process, nor be
    // lost: it is noted, and the watcher reloads for it once it listens.
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGHUP,
            note_early_hup as extern "C" fn(libc::c_int) as *const () as libc::sighandler_t,
        );
    }
    let config = Arc::new(config);
    // An upgrade's new process: the listeners, the control socket's path and the state dir's
    // lock are the old process's until they are handed over.
    let taking_over = upgrade::taking_over();
    let admin_listen = config.admin.as_ref().map(|a| a.listen);
    let listeners = config
        .listen
        .http
        .iter()
        .map(|a| (*a, "listen.http"))
        .chain(config.listen.https.iter().map(|a| (*a, "listen.https")))
        .chain(admin_listen.map(|a| (a, "admin.listen")));
    // The proxy's sockets are bound here, so that a port in use stops the start with its
    // reason; the admin listener's is bound again by pingora.
    let mut bound = std::collections::HashMap::new();
    for (addr, key) in listeners.filter(|_| !taking_over) {
        let listener =
            TcpListener::bind(addr).map_err(|source| RunError::Listen { addr, key, source })?;
        if key != "admin.listen" {
            bound.insert(addr, listener);
        }
    }
    if let Some(addr) = admin_listen {
        if !addr.ip().is_loopback() {
            warn!(%addr, "the admin listener is not on a loopback address: anyone who reaches it can read the metrics");
        }
    }
    raise_open_files_limit(config.server.max_connections);
    let metrics = Arc::new(Metrics::new(config.metrics.enabled));
    let access_log = start_access_log(&config, &metrics)?;
    let certs = config
        .services
        .iter()
        .any(|s| s.tls != TlsMode::Off)
        .then(|| Arc::new(CertManager::new(&config)));
    for status in certs.iter().flat_map(|c| c.statuses()) {
        if let Some(e) = &status.last_error {
            error!(host = %status.host, error = %e, "certificate problem at start");
        }
    }
    let controller = Arc::new(Controller::start(config.clone(), metrics.clone())?);
    if let (Some(fleet), Some(certs)) = (controller.fleet(), &certs) {
        fleet.attach_certs(certs.clone());
    }
    for notice in controller.notices() {
        error!("{notice}");
    }
    let start_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    // Fleet mode: the fleet's state before the first request, when etcd answers.
    if let Some(fleet) = controller.fleet() {
        match start_runtime.block_on(fleet.read_once(controller.as_ref())) {
            Ok(()) => {
                info!(node = %fleet.node(), generation = start_runtime.block_on(controller.generation()), "fleet state read")
            }
            Err(e) => {
                warn!(error = %e, "fleet store unreachable at start: serving the state file's state until it is back")
            }
        }
    }
    // Backends given by name get their addresses before the first request.
    let first_names = start_runtime.block_on(resolve_names(&controller));
    drop(start_runtime);
    let bind = if taking_over {
        switchback_control::bind_taking_over
    } else {
        switchback_control::bind
    };
    let control_listener = bind(
        &config.control.socket,
        config.control.mode,
        config.control.group.as_deref(),
    )
    .map_err(|e| match e {
        BindError::UnknownGroup { .. } => RunError::ControlGroup(e),
        e => RunError::ControlSocket(e),
    })?;

    if let Ok(meta) = std::fs::metadata(&config.control.socket) {
        let _ = CONTROL_SOCKET_INODE.set(std::os::unix::fs::MetadataExt::ino(&meta));
    }
    let threads = config
        .server
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // pingora's path keeps one pool of idle backend connections for the process: room for every
    // backend's upstream.keepalive (its default of 128 closes most connections given back under
    // load). Fixed at start; a reload does not resize it.
    let keepalive_pool: usize = config
        .services
        .iter()
        .map(|s| {
            let backends: usize = s.pools.iter().map(|p| p.backends.len().max(1)).sum();
            s.upstream.keepalive.saturating_mul(backends)
        })
        .fold(0usize, usize::saturating_add)
        .clamp(128, 1 << 20);
    let conf = ServerConf {
        threads,
        upstream_keepalive_pool_size: keepalive_pool,
        // pingora's own services (admin, background tasks) run on single-threaded runtimes, as
        // the proxy's worker threads do (switchback_proxy::workers): measured 10-15% less CPU
        // per request than tokio's work-stealing scheduler on short keep-alive requests.
        work_stealing: false,
        grace_period_seconds: Some(config.server.shutdown_grace.as_secs().max(1)),
        graceful_shutdown_timeout_seconds: Some(1),
        upgrade_sock: config.state.dir.join("upgrade.sock").display().to_string(),
        pid_file: config
            .state
            .dir
            .join("switchback.pid")
            .display()
            .to_string(),
        ..ServerConf::default()
    };
    let upgrade_sock = PathBuf::from(&conf.upgrade_sock);
    let opt = taking_over.then(|| Opt {
        upgrade: true,
        ..Opt::default()
    });
    if taking_over {
        // Ready before the sockets come: every backend's health known.
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(RunError::Runtime)?
            .block_on(check_all_once(&config, &controller.registry()));
    }
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    // In an upgrade's new process, this waits for the old one to hand the listeners over.
    server.bootstrap();
    if taking_over {
        info!("upgrade: took the listening sockets over");
    }
    upgrade::notify_ready();
    let hand_over = Arc::new(Notify::new());
    let upgrader = Arc::new(Upgrader::new(upgrade_sock, hand_over.clone()));

    let switchback = SwitchbackProxy::new(controller.table_handle(), metrics.clone())
        .with_server(&config.server)
        .with_bucket_signer(BucketSigner::new(&match controller.fleet() {
            Some(fleet) => fleet.bucket_key().to_vec(),
            None => bucket_key(&config.state.dir)?,
        }))
        .with_access_log(access_log.clone())
        .with_tls(
            certs.as_ref().map(|c| c.challenges()),
            config.listen.https.first().map(|a| a.port()),
        );
    let policy = switchback.policy();
    let mut proxy = pingora::proxy::http_proxy(&server.configuration, switchback);
    let mut options = pingora::apps::HttpServerOptions::default();
    options.h2_idle_timeout = Some(config.server.keepalive_timeout);
    proxy.server_options = Some(options);
    let proxy_protocol = (!config.listen.proxy_protocol.is_empty()).then(|| {
        Arc::new(ProxyProtocol {
            sources: config.listen.proxy_protocol.clone(),
            timeout: config.server.client_header_timeout,
            refused: metrics.client().proxy_protocol_refused.clone(),
        })
    });
    let mut connections = Connections::new(
        proxy,
        ClientLimits::from_config(&config.server),
        metrics.open_connections(),
        metrics.client().clone(),
    )
    .with_policy(policy);
    if let Some(pp) = &proxy_protocol {
        connections = connections.with_proxy_protocol(pp.clone());
    }
    let mut listeners: Vec<Listener> = config
        .listen
        .http
        .iter()
        .map(|addr| Listener {
            addr: *addr,
            tls: None,
            bound: bound.remove(addr),
        })
        .collect();
    if let Some(certs) = &certs {
        for addr in &config.listen.https {
            let mut tls = TlsSettings::intermediate("", "").map_err(|e| RunError::Tls {
                addr: *addr,
                reason: e.to_string(),
            })?;
            tls.set_cert_resolver(certs.resolver());
            tls.enable_h2();
            listeners.push(Listener {
                addr: *addr,
                tls: Some(Arc::new(tls.build())),
                bound: bound.remove(addr),
            });
        }
    }
    // Each worker thread accepts on its own and serves what it accepted: see
    // switchback_proxy::workers. A TLS handshake is due within client_header_timeout.
    let mut proxy = Workers::new(
        connections,
        listeners,
        threads,
        config.server.client_header_timeout,
    );
    if let Some(pp) = proxy_protocol {
        // On HTTPS listeners the header comes before the TLS handshake.
        proxy = proxy.with_before_tls(Arc::new(BeforeTls(pp)));
    }
    server.add_service(proxy);
    if let Some(addr) = admin_listen {
        let proxy_listeners = config
            .listen
            .http
            .iter()
            .chain(&config.listen.https)
            .copied()
            .collect();
        let mut admin = Service::new(
            "admin".to_string(),
            AdminApp::new(controller.clone(), certs.clone(), proxy_listeners),
        );
        admin.threads = Some(1);
        admin.add_tcp(&addr.to_string());
        server.add_service(admin);
    }
    server.add_service(background_service(
        "control",
        ControlService {
            listener: Mutex::new(Some(control_listener)),
            controller: controller.clone(),
            certs: certs.clone(),
            upgrader,
            access_log: access_log.clone(),
        },
    ));
    if let Some(certs) = &certs {
        server.add_service(background_service(
            "certificates",
            CertService {
                manager: certs.clone(),
            },
        ));
    }
    server.add_service(background_service(
        "health checks",
        HealthService {
            controller: controller.clone(),
        },
    ));
    if controller.fleet().is_some() {
        server.add_service(background_service(
            "fleet",
            FleetService {
                controller: controller.clone(),
            },
        ));
    }
    server.add_service(background_service(
        "backend names",
        NameService {
            controller: controller.clone(),
            first: first_names,
        },
    ));
    info!(
        listen = ?config.listen.http,
        control = %config.control.socket.display(),
        threads,
        "switchback is starting"
    );
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals {
            controller: controller.clone(),
            certs: certs.clone(),
            hand_over,
            access_log: access_log.clone(),
        }),
    });
    finish(&config, access_log.as_ref());
    Ok(())
}

fn start_access_log(config: &Config, metrics: &Metrics) -> Result<Option<AccessLog>, RunError> {
    if !config.access_log.enabled {
        return Ok(None);
    }
    let format = match config.access_log.format {
        AccessLogFormat::Json => access_log::Format::Json,
        AccessLogFormat::Combined => access_log::Format::Combined,
    };
    AccessLog::start(
        format,
        config.access_log.path.clone(),
        metrics.access_log_dropped.clone(),
    )
    .map(Some)
    .map_err(|source| RunError::AccessLog {
        path: config
            .access_log
            .path
            .as_ref()
            .map_or("stdout".into(), |p| p.display().to_string()),
        source,
    })
}

/// The control socket file this process bound: after an upgrade, the path is the new
/// process's, and the old one must leave it.
static CONTROL_SOCKET_INODE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// The last thing before the process ends, whichever way it ends: the access log's last lines
/// are written and the control socket is removed (unless a new process took its path over).
fn finish(config: &Config, access_log: Option<&AccessLog>) {
    if let Some(log) = access_log {
        if !log.flush(ACCESS_LOG_FLUSH) {
            warn!("the access log writer did not finish within {ACCESS_LOG_FLUSH:?}; its last lines may be missing");
        }
    }
    let path = &config.control.socket;
    let ours = std::fs::metadata(path).is_ok_and(|m| {
        Some(&std::os::unix::fs::MetadataExt::ino(&m)) == CONTROL_SOCKET_INODE.get()
    });
    if ours {
        let _ = std::fs::remove_file(path);
    }
}

/// A SIGHUP that came before the signal watcher listened.
static EARLY_HUP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn note_early_hup(_: libc::c_int) {
    EARLY_HUP.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// pingora's signals (SIGQUIT upgrade, SIGTERM graceful), SIGINT, and SIGHUP, which pingora
/// leaves at its default (ending the process at once, unflushed).
///
/// SIGINT exits here rather than through pingora's fast shutdown: that shutdown joins each
/// service's runtime thread while the listeners, never told to stop, spin on accept errors
/// from the runtime being shut down, so the process never ends.
struct Signals {
    controller: Arc<Controller>,
    certs: Option<Arc<CertManager>>,
    /// `switchback upgrade`'s new process is ready: hand it the listeners, as SIGQUIT does.
    hand_over: Arc<Notify>,
    access_log: Option<AccessLog>,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let watch = |kind: SignalKind| signal(kind).expect("tokio can watch a unix signal");
        let mut quit = watch(SignalKind::quit());
        let mut term = watch(SignalKind::terminate());
        let mut int = watch(SignalKind::interrupt());
        let mut hup = watch(SignalKind::hangup());
        if EARLY_HUP.swap(false, std::sync::atomic::Ordering::SeqCst) {
            self.reload_on_hup();
        }
        loop {
            tokio::select! {
                _ = quit.recv() => return ShutdownSignal::GracefulUpgrade,
                _ = self.hand_over.notified() => return ShutdownSignal::GracefulUpgrade,
                _ = term.recv() => return ShutdownSignal::GracefulTerminate,
                _ = int.recv() => {
                    info!("SIGINT received, exiting now");
                    finish(&self.controller.config(), self.access_log.as_ref());
                    std::process::exit(0);
                }
                _ = hup.recv() => self.reload_on_hup(),
            }
        }
    }
}

impl Signals {
    /// As `switchback reload`, in a task of its own: signals keep being watched.
    fn reload_on_hup(&self) {
        let (controller, certs) = (self.controller.clone(), self.certs.clone());
        tokio::spawn(async move {
            match reload(&controller, certs.as_ref(), false, "SIGHUP").await {
                Ok(r) if r.needs_upgrade.is_empty() => {
                    info!(changes = ?r.changes, generation = r.generation, "SIGHUP: config reloaded")
                }
                Ok(r) => {
                    warn!(changes = ?r.changes, generation = r.generation, needs_upgrade = ?r.needs_upgrade, "SIGHUP: config reloaded; some changes need `switchback upgrade`")
                }
                Err(e) => error!("SIGHUP: the config was not reloaded: {}", e.message),
            }
        });
    }
}

/// Serves the control socket, and on graceful shutdown exits once no request is in flight.
struct ControlService {
    listener: Mutex<Option<std::os::unix::net::UnixListener>>,
    controller: Arc<Controller>,
    certs: Option<Arc<CertManager>>,
    upgrader: Arc<Upgrader>,
    access_log: Option<AccessLog>,
}

#[async_trait]
impl BackgroundService for ControlService {
    async fn start(&self, shutdown: ShutdownWatch) {
        let Some(listener) = self
            .listener
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        tokio::spawn(exit_when_drained(
            self.controller.clone(),
            self.access_log.clone(),
            shutdown.clone(),
        ));
        let handler = Arc::new(
            ControlHandler::new(self.controller.clone(), self.certs.clone())
                .with_upgrader(self.upgrader.clone()),
        );
        if let Err(e) = switchback_control::serve(listener, handler, shutdown).await {
            error!(error = %e, "the control socket failed");
        }
    }
}

/// pingora waits the whole grace period after SIGTERM; a proxy with nothing in flight has no
/// reason to, so this ends the process as soon as every pool has drained.
async fn exit_when_drained(
    controller: Arc<Controller>,
    access_log: Option<AccessLog>,
    mut shutdown: ShutdownWatch,
) {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
    info!("graceful shutdown: waiting for in-flight requests");
    // Give the listeners a moment to close so no new request slips in after the count.
    tokio::time::sleep(Duration::from_millis(100)).await;
    loop {
        let in_flight: u64 = controller
            .table()
            .services
            .iter()
            .flat_map(|s| &s.pools)
            .map(|p| p.stats.in_flight())
            .sum();
        if in_flight == 0 {
            // WebSockets end with the process: shut their backend side down first, so both
            // ends see a clean close rather than a reset.
            let closed: u64 = controller
                .table()
                .services
                .iter()
                .flat_map(|s| &s.pools)
                .map(|p| p.stats.long_lived.close_all())
                .sum();
            info!(closed, "graceful shutdown: nothing in flight, exiting");
            let config = controller.config().clone();
            let log = access_log.clone();
            let _ = tokio::task::spawn_blocking(move || finish(&config, log.as_ref())).await;
            std::process::exit(0);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Orders, renews and reloads certificates.
struct CertService {
    manager: Arc<CertManager>,
}

#[async_trait]
impl BackgroundService for CertService {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.manager.run(shutdown).await;
    }
}

/// Looks up every host name the live state gives a backend by, and applies the answers.
/// Returns when the soonest of them should be asked again (`None`: no names in use).
async fn resolve_names(controller: &Controller) -> Option<Duration> {
    let hosts = controller.names_in_use().await;
    if hosts.is_empty() {
        return None;
    }
    let config = controller.config();
    let round = crate::names::lookup(&config.resolver, &hosts, &controller.resolved()).await;
    controller.apply_names(&round.answers).await;
    Some(round.next)
}

/// Looks backend names up again every `resolver.refresh` (or a record's shorter TTL).
struct NameService {
    controller: Arc<Controller>,
    /// When the lookup made at the start is due again.
    first: Option<Duration>,
}

#[async_trait]
impl BackgroundService for NameService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut wait = self
            .first
            .unwrap_or_else(|| self.controller.config().resolver.refresh);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
            wait = resolve_names(&self.controller)
                .await
                .unwrap_or_else(|| self.controller.config().resolver.refresh);
        }
    }
}

/// Follows the fleet's state in etcd (see [`crate::fleet`]).
struct FleetService {
    controller: Arc<Controller>,
}

#[async_trait]
impl BackgroundService for FleetService {
    async fn start(&self, shutdown: ShutdownWatch) {
        if let Some(fleet) = self.controller.fleet() {
            let follower: Arc<dyn crate::fleet::Follower> = self.controller.clone();
            fleet.follow(follower, shutdown).await;
        }
    }
}

/// Runs one health checker per service that has a health check.
struct HealthService {
    controller: Arc<Controller>,
}

#[async_trait]
impl BackgroundService for HealthService {
    /// The checkers of the running config; after a reload, those of the new one (health state
    /// lives in the registry, so a backend that stays keeps what was known of it).
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let registry = self.controller.registry();
        let mut reloads = self.controller.reloads();
        loop {
            let mut checkers = tokio::task::JoinSet::new();
            for service in &self.controller.config().services {
                if let Some(health) = &service.health {
                    checkers.spawn(run_checker(
                        service.name.clone(),
                        health.clone(),
                        registry.clone(),
                        shutdown.clone(),
                    ));
                }
            }
            reloads.borrow_and_update();
            tokio::select! {
                changed = reloads.changed() => if changed.is_err() { break },
                _ = shutdown.changed() => break,
            }
            checkers.abort_all();
        }
    }
}
