//! Thread per core: the proxy's worker threads, each accepting on its own and keeping every
//! connection it accepted, with that connection's backend connections and timers, on itself.
//!
//! pingora's listening service accepts on one runtime and hands each connection to a runtime
//! picked at random. The accepted socket stays registered with the accepting runtime's reactor,
//! so every readiness event of the connection wakes the accepting thread, which then wakes the
//! serving one: two wake-ups and an eventfd write per read on a second thread. Here every
//! worker thread runs a single-threaded tokio runtime of its own, with its own copy (a `dup`)
//! of each listening socket registered with its own reactor, and serves what it accepts where
//! it accepted it. No wake crosses threads on the request path. The kernel gives a new
//! connection to whichever worker's `accept` wins, so a busy thread takes fewer, as with
//! nginx's workers on a shared socket.
//!
//! The listening sockets themselves are still pingora's: they come from and go into its table
//! of listening descriptors, so `switchback upgrade` hands them to the next process as before,
//! and a process that took them over serves from them without a new `bind`. TLS handshakes are
//! pingora's acceptor's, HTTP/2 and the fallback path its apps'.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::os::fd::{AsRawFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::HttpServerApp;
use pingora::listeners::tls::Acceptor;
use pingora::listeners::PreTlsProcess;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::SocketDigest;
use pingora::protocols::{GetSocketDigest, Stream};
use pingora::server::{ListenFds, ShutdownWatch};
use pingora::services::Service;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tracing::{error, warn};

use crate::client_tcp::ClientTcp;
use crate::connections::Connections;

/// How long a worker waits before accepting again when the process is out of descriptors.
const OUT_OF_FILES_PAUSE: Duration = Duration::from_millis(200);

/// How many connections more than another worker a worker may hold before it lets the others
/// accept first, and for how long it does.
const BALANCE_SLACK: usize = 1;
const BALANCE_PAUSE: Duration = Duration::from_millis(1);

/// One listening address of the proxy.
pub struct Listener {
    pub addr: SocketAddr,
    /// Its TLS acceptor, on HTTPS listeners.
    pub tls: Option<Arc<Acceptor>>,
    /// The socket bound at start, used unless the table of listening descriptors already has
    /// one for `addr` (an upgrade's new process takes the old one's).
    pub bound: Option<StdListener>,
}

/// The proxy's listening service: `threads` worker threads, each with its own runtime.
pub struct Workers<A> {
    app: Arc<Connections<A>>,
    listeners: Vec<Listener>,
    threads: usize,
    /// What runs on a TLS listener's connection before the handshake (the PROXY protocol).
    before_tls: Option<Arc<dyn PreTlsProcess>>,
    /// The deadline of a TLS handshake.
    handshake_timeout: Duration,
}

impl<A> Workers<A> {
    pub fn new(
        app: Connections<A>,
        listeners: Vec<Listener>,
        threads: usize,
        handshake_timeout: Duration,
    ) -> Workers<A> {
        Workers {
            app: Arc::new(app),
            listeners,
            threads: threads.max(1),
            before_tls: None,
            handshake_timeout,
        }
    }

    pub fn with_before_tls(mut self, before_tls: Arc<dyn PreTlsProcess>) -> Workers<A> {
        self.before_tls = Some(before_tls);
        self
    }
}

/// A listening socket of the process: its address, its descriptor in pingora's table, and its
/// TLS acceptor on HTTPS listeners.
type SharedSocket = (SocketAddr, RawFd, Option<Arc<Acceptor>>);

/// What a worker accepts on: its own descriptor of one listening socket.
struct Socket {
    fd: OwnedFd,
    tls: Option<Arc<Acceptor>>,
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> Service for Workers<A> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
    ) {
        let shared = self.listening_fds(fds);
        let balance = Arc::new(Balance {
            open: (0..self.threads).map(|_| AtomicUsize::new(0)).collect(),
        });
        for me in 0..self.threads {
            let mut sockets = Vec::with_capacity(shared.len());
            for (addr, fd, tls) in &shared {
                // SAFETY: the descriptor is in the table of listening descriptors, which keeps
                // it open for the life of the process.
                match unsafe { BorrowedFd::borrow_raw(*fd) }.try_clone_to_owned() {
                    Ok(fd) => sockets.push(Socket {
                        fd,
                        tls: tls.clone(),
                    }),
                    Err(e) => error!(%addr, error = %e, "cannot copy the listening socket"),
                }
            }
            let worker = Arc::new(Worker {
                me,
                app: self.app.clone(),
                before_tls: self.before_tls.clone(),
                handshake_timeout: self.handshake_timeout,
                balance: balance.clone(),
            });
            let shutdown = shutdown.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("switchback-{me}"))
                .spawn(move || worker.run(sockets, shutdown));
            if let Err(e) = spawned {
                error!(error = %e, "cannot start a worker thread");
            }
        }
        let mut shutdown = shutdown;
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
    }

    fn name(&self) -> &str {
        "switchback proxy"
    }

    /// The runtime pingora gives this service only starts the workers.
    fn threads(&self) -> Option<usize> {
        Some(1)
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        Some(self.listeners.iter().map(|l| l.addr.to_string()).collect())
    }
}

impl<A> Workers<A> {
    /// Each listener's descriptor in pingora's table: the one an upgrade handed over, or the
    /// socket bound at start, put in the table for the next upgrade.
    fn listening_fds(&mut self, fds: Option<ListenFds>) -> Vec<SharedSocket> {
        let mut shared = Vec::with_capacity(self.listeners.len());
        for listener in &mut self.listeners {
            let key = listener.addr.to_string();
            let handed = fds.as_ref().and_then(|t| t.lock().get(&key).copied());
            let fd = match handed {
                Some(fd) => fd,
                None => {
                    // Bound at start; or, in an upgrade's new process, a listener the old one
                    // did not have.
                    let bound = match listener.bound.take() {
                        Some(bound) => Ok(bound),
                        None => StdListener::bind(listener.addr),
                    };
                    let bound = match bound.and_then(|b| b.set_nonblocking(true).map(|()| b)) {
                        Ok(bound) => bound,
                        Err(e) => {
                            error!(addr = %listener.addr, error = %e, "cannot listen");
                            continue;
                        }
                    };
                    let fd = bound.into_raw_fd();
                    if let Some(table) = &fds {
                        table.lock().add(key, fd);
                    }
                    fd
                }
            };
            shared.push((listener.addr, fd, listener.tls.clone()));
        }
        shared
    }
}

/// The connections each worker thread holds, which their accept loops keep even.
struct Balance {
    open: Box<[AtomicUsize]>,
}

impl Balance {
    /// Whether worker `me` holds more than [`BALANCE_SLACK`] connections more than another.
    fn ahead(&self, me: usize) -> bool {
        let mine = self.open[me].load(Ordering::Relaxed);
        self.open
            .iter()
            .any(|other| other.load(Ordering::Relaxed) + BALANCE_SLACK < mine)
    }
}

/// A connection's place in its worker's count, given back when the connection ends.
struct Held(Arc<Balance>, usize);

impl Held {
    fn new(balance: &Arc<Balance>, me: usize) -> Held {
        balance.open[me].fetch_add(1, Ordering::Relaxed);
        Held(balance.clone(), me)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.open[self.1].fetch_sub(1, Ordering::Relaxed);
    }
}

/// One worker thread.
struct Worker<A> {
    me: usize,
    app: Arc<Connections<A>>,
    before_tls: Option<Arc<dyn PreTlsProcess>>,
    handshake_timeout: Duration,
    balance: Arc<Balance>,
}

impl<A: HttpServerApp + Send + Sync + 'static> Worker<A> {
    /// The thread's body: its runtime, an accept loop per listening socket, and the connections
    /// they accept, until the process ends (after a stop, for the grace period pingora gives
    /// the connections).
    fn run(self: Arc<Self>, sockets: Vec<Socket>, shutdown: ShutdownWatch) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                error!(error = %e, "cannot start a worker thread's runtime");
                return;
            }
        };
        crate::connections::watch_stops_on_this_thread();
        runtime.block_on(async move {
            for socket in sockets {
                match register(socket.fd) {
                    Ok(listener) => {
                        tokio::spawn(self.clone().accept_loop(
                            listener,
                            socket.tls,
                            shutdown.clone(),
                        ));
                    }
                    Err(e) => error!(error = %e, "cannot listen on a worker thread"),
                }
            }
            // Idle connections close as the process stops.
            let mut shutdown = shutdown;
            while !*shutdown.borrow_and_update() {
                if shutdown.changed().await.is_err() {
                    break;
                }
            }
            crate::connections::wake_idle_connections();
            std::future::pending::<()>().await
        })
    }

    async fn accept_loop(
        self: Arc<Self>,
        listener: AsyncFd<StdListener>,
        tls: Option<Arc<Acceptor>>,
        mut shutdown: ShutdownWatch,
    ) {
        loop {
            let ready = tokio::select! {
                biased;
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        return;
                    }
                    continue;
                }
                ready = listener.readable() => ready,
            };
            let Ok(mut ready) = ready else {
                return;
            };
            if self.balance.ahead(self.me) {
                // Every worker is woken by a new connection, and the first to call accept()
                // gets it: one that holds more than another lets the others go first. A burst
                // of connections (a load balancer's pool opening, say) would otherwise all go
                // to the one thread that drains the queue.
                tokio::time::sleep(BALANCE_PAUSE).await;
            }
            let (tcp, peer) = match ready.try_io(|l| l.get_ref().accept()) {
                Ok(Ok(accepted)) => accepted,
                // Another worker took it.
                Err(_would_block) => continue,
                Ok(Err(e)) => {
                    if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                        // accept() would fail at once again until a descriptor is given back.
                        warn!(error = %e, "cannot accept: out of file descriptors");
                        tokio::time::sleep(OUT_OF_FILES_PAUSE).await;
                    }
                    continue;
                }
            };
            let tcp = match tcp
                .set_nonblocking(true)
                .and_then(|()| TcpStream::from_std(tcp))
            {
                Ok(tcp) => tcp,
                Err(_) => continue,
            };
            let _ = tcp.set_nodelay(true);
            let held = Held::new(&self.balance, self.me);
            let app = self.app.clone();
            let shutdown = shutdown.clone();
            match &tls {
                // A PROXY protocol header is read through pingora's stream, which can take
                // back what followed it.
                None if !app.reads_proxy_protocol() => {
                    let client = ClientTcp::new(tcp, peer);
                    tokio::spawn(app.serve(Box::new(client), Some(peer.ip()), shutdown, held));
                }
                None => {
                    let mut l4 = L4Stream::from(tcp);
                    l4.set_socket_digest(digest(&l4, peer));
                    tokio::spawn(app.serve(Box::new(l4), Some(peer.ip()), shutdown, held));
                }
                Some(tls) => {
                    let mut l4 = L4Stream::from(tcp);
                    l4.set_socket_digest(digest(&l4, peer));
                    let tls = tls.clone();
                    let before_tls = self.before_tls.clone();
                    let timeout = self.handshake_timeout;
                    // The handshake in a task of its own, which hands the connection on to one
                    // that serves it: the handshake's state is no part of the connection's.
                    tokio::spawn(async move {
                        if let Some(stream) = handshake(l4, tls, before_tls, timeout).await {
                            // After a PROXY header, the client it names.
                            let peer = crate::connections::peer_ip(&stream);
                            tokio::spawn(app.serve(stream, peer, shutdown, held));
                        }
                    });
                }
            }
        }
    }
}

/// A socket digest for a connection from `peer`.
fn digest(socket: &impl AsRawFd, peer: std::net::SocketAddr) -> SocketDigest {
    let digest = SocketDigest::from_raw_fd(socket.as_raw_fd());
    let _ = digest.peer_addr.set(Some(peer.into()));
    digest
}

/// Registers a worker's copy of a listening socket with the worker's reactor.
fn register(fd: OwnedFd) -> std::io::Result<AsyncFd<StdListener>> {
    let listener = StdListener::from(fd);
    listener.set_nonblocking(true)?;
    // SAFETY: the listener owns its descriptor, which stays open and the same until the
    // AsyncFd, its only owner, is dropped.
    unsafe { AsyncFd::register_with_interest(listener, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

/// The TLS handshake of a connection, after the PROXY protocol header when there is one; None
/// when it failed or took longer than `timeout`.
async fn handshake(
    mut l4: L4Stream,
    tls: Arc<Acceptor>,
    before_tls: Option<Arc<dyn PreTlsProcess>>,
    timeout: Duration,
) -> Option<Stream> {
    let shaking = async {
        if let Some(before_tls) = &before_tls {
            before_tls.process(&mut l4).await.ok()?;
        }
        tls.tls_handshake(l4).await.ok()
    };
    let tls_stream = tokio::time::timeout(timeout, shaking).await.ok()??;
    Some(Box::new(tls_stream))
}
