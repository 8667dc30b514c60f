//! Backend connections kept alive between requests, per worker thread: a LIFO list per
//! backend address, with no task and no timer per idle connection.
//!
//! A connection is checked as it is taken: one that the backend closed (or that sent bytes
//! nobody asked for) has become readable, which tokio already knows from the thread's epoll
//! without a system call; only then is it read to tell a stale readiness from a close. One
//! sweeper per thread closes, every [`SWEEP`], the idle connections the backend has closed and
//! those idle past their service's `upstream.idle_timeout`. At most `upstream.keepalive` idle
//! connections are kept per backend and thread; one given back beyond that is closed, and
//! counted. Everything here stays on the thread that made it: each
//! worker thread runs its own single-threaded runtime, so a connection is only ever woken there.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::metrics::BackendMetrics;
use crate::read_deadline;

/// How a backend's connections are kept: its service's `upstream` settings, and its counters.
pub struct Keep<'a> {
    /// Idle connections kept per backend and thread at most (0: none).
    pub keepalive: usize,
    pub idle_timeout: Duration,
    pub metrics: &'a BackendMetrics,
}

/// How often a thread's sweeper looks over its idle connections.
const SWEEP: Duration = Duration::from_secs(2);

/// A backend connection, for the request that holds it.
#[derive(Debug)]
pub struct Upstream {
    pub stream: TcpStream,
    /// Its [`read_deadline::identity`], for the backend wait.
    pub identity: u64,
    /// It came from the idle list (a failure may be the keep-alive race).
    pub reused: bool,
}

impl Upstream {
    pub fn fd(&self) -> std::os::fd::RawFd {
        self.stream.as_raw_fd()
    }
}

struct Idle {
    stream: TcpStream,
    identity: u64,
    /// When it has been idle too long.
    expires: Instant,
}

/// A backend's idle connections on this thread.
struct List {
    addr: SocketAddr,
    idle: Vec<Idle>,
    /// The gauge of the backend's idle connections (of the service that first kept one).
    gauge: prometheus::IntGauge,
}

impl List {
    /// Closes the connections that have expired or that the backend closed.
    fn sweep(&mut self, now: Instant) {
        let before = self.idle.len();
        self.idle
            .retain(|idle| now < idle.expires && still_open(&idle.stream));
        self.gauge.sub((before - self.idle.len()) as i64);
    }
}

#[derive(Default)]
struct Lists {
    /// A thread talks to a handful of backends: a list looked over beats hashing the address
    /// twice per request.
    by_backend: Vec<List>,
    sweeping: bool,
}

impl Lists {
    fn of(&mut self, addr: SocketAddr) -> Option<&mut List> {
        self.by_backend.iter_mut().find(|l| l.addr == addr)
    }
}

thread_local! {
    static IDLE: RefCell<Lists> = RefCell::default();
}

/// An idle connection to `addr` that is still open, if this thread has one.
pub fn take(addr: SocketAddr) -> Option<Upstream> {
    IDLE.with(|lists| {
        let mut lists = lists.borrow_mut();
        let list = lists.of(addr)?;
        let now = Instant::now();
        while let Some(idle) = list.idle.pop() {
            list.gauge.dec();
            if still_open(&idle.stream) && now < idle.expires {
                return Some(Upstream {
                    stream: idle.stream,
                    identity: idle.identity,
                    reused: true,
                });
            }
        }
        None
    })
}

/// A new connection to `addr`, made within `timeout`.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<Upstream> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(stream) => stream?,
        Err(_) => return Err(std::io::Error::from(std::io::ErrorKind::TimedOut)),
    };
    stream.set_nodelay(true)?;
    let identity = read_deadline::identity(stream.local_addr()?, addr);
    Ok(Upstream {
        stream,
        identity,
        reused: false,
    })
}

/// Keeps `upstream`, whose last answer ended cleanly, for the next request to `addr`, or closes
/// it when `keep` says no more are kept.
pub fn give_back(addr: SocketAddr, upstream: Upstream, keep: &Keep<'_>) {
    if keep.keepalive == 0 {
        return;
    }
    let _ = IDLE.try_with(|lists| {
        let mut lists = lists.borrow_mut();
        if lists.of(addr).is_none() {
            lists.by_backend.push(List {
                addr,
                idle: Vec::new(),
                gauge: keep.metrics.idle.clone(),
            });
        }
        let Some(list) = lists.of(addr) else {
            return;
        };
        if list.idle.len() >= keep.keepalive {
            keep.metrics.pool_full.inc();
            return;
        }
        list.idle.push(Idle {
            stream: upstream.stream,
            identity: upstream.identity,
            expires: Instant::now() + keep.idle_timeout,
        });
        list.gauge.inc();
        if !lists.sweeping {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                lists.sweeping = true;
                runtime.spawn(sweep());
            }
        }
    });
}

/// Closes this thread's idle connections that were closed by their backend or idle too long,
/// every [`SWEEP`], for as long as the thread runs.
async fn sweep() {
    let mut ticks = tokio::time::interval(SWEEP);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        IDLE.with(|lists| {
            let mut lists = lists.borrow_mut();
            let now = Instant::now();
            lists.by_backend.retain_mut(|list| {
                list.sweep(now);
                !list.idle.is_empty()
            });
        });
    }
}

/// Whether an idle connection is still open with nothing unread: not readable by the reactor's
/// account, or readable only by a stale account (the read would block).
fn still_open(stream: &TcpStream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    match stream.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => {
            let mut probe = [0u8; 1];
            matches!(stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_connection_closed_while_idle_is_not_handed_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let first = connect(addr, Duration::from_secs(1)).await.unwrap();
        let (accepted_first, _) = listener.accept().await.unwrap();
        let second = connect(addr, Duration::from_secs(1)).await.unwrap();
        let (_accepted_second, _) = listener.accept().await.unwrap();
        let metrics = crate::metrics::Metrics::new(true).backend("app", "blue", "b");
        let keep = Keep {
            keepalive: 8,
            idle_timeout: Duration::from_secs(60),
            metrics: &metrics,
        };
        give_back(addr, first, &keep);
        give_back(addr, second, &keep);
        assert_eq!(metrics.idle.get(), 2);
        // The backend closes the first one; the second, taken first (LIFO), is still good.
        drop(accepted_first);
        let taken = take(addr).expect("the open connection");
        assert!(taken.reused);
        // Until the close has reached this side (the runtime polls its reactor between yields),
        // within a deadline; the assertion below fails if it never does.
        let closed = || {
            IDLE.with(|l| {
                // The sweeper may have closed it already.
                l.borrow_mut()
                    .of(addr)
                    .is_none_or(|list| list.idle.iter().all(|idle| !still_open(&idle.stream)))
            })
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while !closed() {
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert!(take(addr).is_none(), "a closed connection was handed out");
        assert_eq!(metrics.idle.get(), 0, "the idle gauge counts what is kept");
        let mut taken = taken;
        taken.stream.write_all(b"x").await.unwrap();
    }
}
