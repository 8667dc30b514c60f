//! The backend's read deadline (a service's `read_timeout`): how long a backend may stay
//! silent while a request waits on it, kept by one ticker per worker thread rather than by a
//! timer per read.
//!
//! pingora keeps a read deadline with a timer it registers for every read of a backend that
//! has to wait, and every request waits for its answer: a lock, a shared map, an allocation,
//! reference counts and a notification apiece, the largest cost of switchback's request path
//! over pingora's own. Here a request that waits on its backend gets an entry in its worker
//! thread's list instead, with the time by which the backend must have sent something, moved on
//! by every piece of the answer. A ticker task per thread looks over the list every [`TICK`],
//! and ends a wait past its deadline by shutting its backend connection down: pingora's read of
//! it ends, and the request fails as a read timeout (504, or a cut answer once it has started).
//!
//! Only the backend's silence counts. Once the answer is being sent, pingora stops reading the
//! backend while the client has not taken what it was sent; a wait whose client still has bytes
//! queued (unsent or unacknowledged) at its deadline gets another `read_timeout` (the client has
//! `send_timeout`).
//!
//! The request path reads no clock for its deadlines: each ticker leaves its reading of the clock
//! where every request reads it, and a deadline counts from one [`TICK`] after that reading (a
//! time not yet reached). A wait thus ends between `read_timeout` and `read_timeout` plus two
//! ticks after the backend fell silent.
//!
//! An entry waits from the request's last byte sent to the backend to the last byte of the
//! answer read (or the request's end), and is always left before pingora closes or pools that
//! backend connection, so a shutdown never reaches a descriptor another connection reused.
//!
//! Entries are kept for the thread's next requests rather than allocated for each: a request
//! takes one from its thread's free list and gives it back at its end, with no lock and no
//! allocation once the thread has as many as it serves requests at once. This holds where the
//! ticker runs on the requests' own thread (each worker thread its own runtime, as switchback
//! runs them), so that the two take turns and never act on an entry at the same time; on a
//! runtime shared by several threads each request gets an entry of its own.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use pingora::protocols::SocketDigest;

/// How often a ticker looks over its thread's waits: the deadline's precision.
pub const TICK: Duration = Duration::from_millis(20);

/// Nanoseconds since [`epoch`], the clock of the deadlines (0: no wait).
fn now_nanos() -> u64 {
    (Instant::now() - epoch()).as_nanos() as u64 + 1
}

/// The latest tickers' reading of [`now_nanos`] (0: none yet).
static TICKED: AtomicU64 = AtomicU64::new(0);

/// A time in [`now_nanos`] that is not yet past, within two ticks: the ticker's latest reading
/// plus one [`TICK`]; the clock itself before any ticker has read it.
fn soon() -> u64 {
    match TICKED.load(Ordering::Relaxed) {
        0 => now_nanos(),
        ticked => ticked + TICK.as_nanos() as u64,
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// One request's wait on its backend, shared by the request and its thread's ticker.
#[derive(Debug)]
struct Entry {
    /// When the wait ends, in [`now_nanos`]; 0 while the request waits on nothing.
    deadline: AtomicU64,
    /// The backend connection, whose shutdown ends the wait; written before `deadline`.
    backend_fd: AtomicU64,
    /// The backend connection's [`identity`], checked before the shutdown.
    identity: AtomicU64,
    /// The answer has started: a late deadline may be the client's doing.
    answering: AtomicBool,
    /// The ticker shut the backend connection down.
    fired: AtomicBool,
    /// The client connection (for its send queue): an HTTP/2 connection's digest, kept for the
    /// entry's life (such an entry is not kept for other requests)...
    client: Option<Arc<SocketDigest>>,
    /// ... or an HTTP/1.x connection's descriptor, set for each request (-1: none).
    client_fd: AtomicI32,
    /// The list it is in (its address), whose thread may keep it for its next requests.
    owner: usize,
    /// `read_timeout` in nanoseconds.
    limit: AtomicU64,
}

/// The waits of one worker thread, with its ticker.
type List = Arc<Mutex<Vec<Arc<Entry>>>>;

/// A worker thread's list, and whether its entries are kept for its next requests.
struct Own {
    list: List,
    /// The ticker runs on this thread: see the module's doc.
    reuse: bool,
    /// This thread's entries that no request holds, each also in `list`.
    free: RefCell<Vec<Arc<Entry>>>,
}

/// Entries a thread keeps for its next requests at most.
const FREE_MAX: usize = 1024;

thread_local! {
    static LIST: Own = start_ticker();
}

/// A new list, and its ticker on the current runtime (if any: outside one, waits are never
/// ended, which only unit tests see).
fn start_ticker() -> Own {
    let list: List = Arc::default();
    let mut reuse = false;
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        reuse = runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread;
        let watched = Arc::downgrade(&list);
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(list) = watched.upgrade() else {
                    return;
                };
                let now = now_nanos();
                TICKED.fetch_max(now, Ordering::Relaxed);
                look_over(&list, now);
            }
        });
    }
    Own {
        list,
        reuse,
        free: RefCell::default(),
    }
}

/// Drops the entries no request holds or waits on (nor a free list keeps), and ends the waits
/// past their deadline.
fn look_over(list: &Mutex<Vec<Arc<Entry>>>, now: u64) {
    let mut entries = list.lock().unwrap_or_else(|e| e.into_inner());
    entries.retain(|entry| {
        let deadline = entry.deadline.load(Ordering::Acquire);
        if deadline == 0 {
            // Not waiting: kept while its request may wait again (a retry), dropped after.
            return Arc::strong_count(entry) > 1;
        }
        if deadline > now {
            return true;
        }
        if entry.answering.load(Ordering::Relaxed) && client_behind(entry) {
            // pingora is not reading the backend: it waits on the client.
            let limit = entry.limit.load(Ordering::Relaxed);
            let _ = entry.deadline.compare_exchange(
                deadline,
                now + limit,
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
            return true;
        }
        // Claimed first, so the request (which clears `deadline` before its connection is
        // closed or pooled) and the ticker never both act on the descriptor.
        if entry
            .deadline
            .compare_exchange(deadline, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            let fd = entry.backend_fd.load(Ordering::Relaxed) as RawFd;
            // The wait is cleared before its connection is closed or pooled; and should a
            // descriptor number ever have passed to another connection meanwhile, its addresses
            // differ, and it is left alone.
            if identity_of(fd) == Some(entry.identity.load(Ordering::Relaxed)) {
                entry.fired.store(true, Ordering::Release);
                // SAFETY: a plain syscall on the descriptor, which is the waiting connection's.
                unsafe {
                    libc::shutdown(fd, libc::SHUT_RDWR);
                }
            } else {
                tracing::warn!(
                    fd,
                    "read deadline of a backend connection that is gone: left alone"
                );
            }
        }
        Arc::strong_count(entry) > 1
    });
}

/// Whether the client connection still has bytes it has not taken.
fn client_behind(entry: &Entry) -> bool {
    let info = match &entry.client {
        Some(client) => client.tcp_info(),
        None => match entry.client_fd.load(Ordering::Relaxed) {
            // The request still waits, so its connection is open: the descriptor is its.
            fd if fd >= 0 => pingora::protocols::l4::ext::get_tcp_info(fd).ok(),
            _ => None,
        },
    };
    info.is_some_and(|info| info.tcpi_notsent_bytes > 0 || info.tcpi_unacked > 0)
}

/// A connection's local and remote addresses folded into one number, which tells it from any
/// other connection its descriptor number may pass to.
pub fn identity(local: SocketAddr, peer: SocketAddr) -> u64 {
    fn fold(addr: SocketAddr) -> u64 {
        let ip = match addr {
            SocketAddr::V4(a) => u32::from(*a.ip()) as u64,
            SocketAddr::V6(a) => {
                let bits = u128::from(*a.ip());
                (bits as u64) ^ ((bits >> 64) as u64).rotate_left(17)
            }
        };
        (ip << 16) ^ addr.port() as u64
    }
    fold(local).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ fold(peer)
}

/// The [`identity`] of the connection `fd` is now.
fn identity_of(fd: RawFd) -> Option<u64> {
    // SAFETY: borrowed for two queries, never closed here (ManuallyDrop).
    let socket = std::mem::ManuallyDrop::new(unsafe { std::net::TcpStream::from_raw_fd(fd) });
    Some(identity(
        socket.local_addr().ok()?,
        socket.peer_addr().ok()?,
    ))
}

/// The client connection of a request, whose send queue a late deadline looks at.
pub enum Client {
    /// An HTTP/1.x connection's descriptor.
    Fd(RawFd),
    /// An HTTP/2 connection's digest.
    Digest(Arc<SocketDigest>),
}

/// A request's wait on its backend, kept in its [`crate::http::RequestCtx`].
#[derive(Debug, Default)]
pub struct Wait {
    entry: Option<Arc<Entry>>,
}

impl Wait {
    /// The whole request is with the backend connection `backend_fd` (of [`identity`]
    /// `identity`): its answer is due within `limit`. `client` is the client connection.
    pub fn start(
        &mut self,
        backend: (RawFd, u64),
        limit: Duration,
        client: impl FnOnce() -> Option<Client>,
    ) {
        self.start_at(backend, limit, client, soon());
    }

    fn start_at(
        &mut self,
        (backend_fd, identity): (RawFd, u64),
        limit: Duration,
        client: impl FnOnce() -> Option<Client>,
        now: u64,
    ) {
        let (digest, client_fd) = match client() {
            Some(Client::Fd(fd)) => (None, fd),
            Some(Client::Digest(digest)) => (Some(digest), -1),
            None => (None, -1),
        };
        // A retry's wait reuses the entry: the same request, and client.
        let entry = self.entry.get_or_insert_with(|| match digest {
            Some(digest) => new_entry(Some(digest)),
            None => LIST
                .try_with(|own| own.free.borrow_mut().pop())
                .ok()
                .flatten()
                .unwrap_or_else(|| new_entry(None)),
        });
        entry.client_fd.store(client_fd, Ordering::Relaxed);
        let limit = limit.as_nanos() as u64;
        entry.limit.store(limit, Ordering::Relaxed);
        entry.backend_fd.store(backend_fd as u64, Ordering::Relaxed);
        entry.identity.store(identity, Ordering::Relaxed);
        entry.answering.store(false, Ordering::Relaxed);
        entry.fired.store(false, Ordering::Relaxed);
        entry.deadline.store(now + limit, Ordering::Release);
    }

    /// Some of the answer came: the backend has `read_timeout` again for the rest.
    pub fn answered(&self) {
        self.answered_at(soon());
    }

    fn answered_at(&self, now: u64) {
        if let Some(entry) = &self.entry {
            let deadline = entry.deadline.load(Ordering::Acquire);
            if deadline != 0 {
                entry.answering.store(true, Ordering::Relaxed);
                let moved = now + entry.limit.load(Ordering::Relaxed);
                // Unless the ticker has just claimed it.
                let _ = entry.deadline.compare_exchange(
                    deadline,
                    moved,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                );
            }
        }
    }

    /// The wait is over (the answer is all read, or the attempt ended): the backend connection
    /// is no longer this wait's. Says whether the deadline passed first.
    pub fn end(&self) -> bool {
        let Some(entry) = &self.entry else {
            return false;
        };
        entry.deadline.store(0, Ordering::Release);
        entry.fired.load(Ordering::Acquire)
    }

    /// Whether the deadline passed (and the backend connection was shut down).
    pub fn expired(&self) -> bool {
        self.entry
            .as_ref()
            .is_some_and(|e| e.fired.load(Ordering::Acquire))
    }
}

impl Drop for Wait {
    fn drop(&mut self) {
        self.end();
        let Some(entry) = self.entry.take() else {
            return;
        };
        if entry.client.is_some() {
            return;
        }
        // Kept for this thread's next request, if this thread's ticker looks after it.
        let _ = LIST.try_with(|own| {
            if own.reuse && Arc::as_ptr(&own.list) as usize == entry.owner {
                let mut free = own.free.borrow_mut();
                if free.len() < FREE_MAX {
                    free.push(entry);
                }
            }
        });
    }
}

/// A new entry, in this thread's list.
fn new_entry(client: Option<Arc<SocketDigest>>) -> Arc<Entry> {
    let entry = Arc::new(Entry {
        deadline: AtomicU64::new(0),
        backend_fd: AtomicU64::new(0),
        identity: AtomicU64::new(0),
        answering: AtomicBool::new(false),
        fired: AtomicBool::new(false),
        client,
        client_fd: AtomicI32::new(-1),
        limit: AtomicU64::new(0),
        owner: LIST.with(|own| Arc::as_ptr(&own.list) as usize),
    });
    LIST.with(|own| {
        own.list
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(entry.clone())
    });
    entry
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    const MS: u64 = 1_000_000;

    /// A wait started at `now` on a connection of our own.
    fn waiting(limit: Duration, now: u64) -> (Wait, TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let ours = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (theirs, _) = listener.accept().unwrap();
        let mut wait = Wait::default();
        wait.start_at(backend(&ours), limit, || None, now);
        (wait, ours, theirs)
    }

    fn backend(s: &TcpStream) -> (RawFd, u64) {
        let fd = s.as_raw_fd();
        (fd, identity_of(fd).unwrap())
    }

    /// Asserts `s` is neither shut down nor closed: a read would wait.
    fn assert_open(s: &TcpStream, what: &str) {
        s.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(
            (&*s).read(&mut buf).unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock,
            "{what}"
        );
    }

    fn list() -> List {
        LIST.with(|own| own.list.clone())
    }

    #[test]
    fn a_wait_past_its_deadline_shuts_its_backend_connection_down() {
        let start = now_nanos();
        let (wait, mut ours, _theirs) = waiting(Duration::from_millis(50), start);
        look_over(&list(), start + 49 * MS);
        assert!(!wait.expired(), "not yet");
        look_over(&list(), start + 50 * MS);
        assert!(wait.expired());
        // The read of the backend ends.
        let mut buf = [0u8; 8];
        assert_eq!(ours.read(&mut buf).unwrap(), 0);
        assert!(wait.end(), "the request learns it timed out");
    }

    #[test]
    fn an_answer_moves_the_deadline_and_an_ended_wait_is_never_fired() {
        let start = now_nanos();
        let (wait, ours, _theirs) = waiting(Duration::from_millis(50), start);
        wait.answered_at(start + 30 * MS);
        // 50 ms after the start, but not after the answer.
        look_over(&list(), start + 79 * MS);
        assert!(!wait.expired());
        assert!(!wait.end());
        look_over(&list(), start + 10_000 * MS);
        assert!(!wait.expired(), "an ended wait is left alone");
        assert_open(&ours, "still open");
    }

    #[test]
    fn a_wait_started_again_for_a_retry_has_its_own_deadline_and_connection() {
        let start = now_nanos();
        let (mut wait, first, _theirs) = waiting(Duration::from_millis(50), start);
        look_over(&list(), start + 50 * MS);
        assert!(wait.end());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let second = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        wait.start_at(
            backend(&second),
            Duration::from_millis(50),
            || None,
            start + 60 * MS,
        );
        assert!(!wait.expired(), "a new attempt starts unexpired");
        look_over(&list(), start + 100 * MS);
        assert!(!wait.expired());
        look_over(&list(), start + 110 * MS);
        assert!(wait.expired());
        drop(first);
    }

    #[test]
    fn entries_go_once_their_request_does() {
        let count = || {
            let own = list();
            let n = own.lock().unwrap().len();
            n
        };
        let before = count();
        let (wait, _ours, _theirs) = waiting(Duration::from_secs(60), now_nanos());
        assert_eq!(count(), before + 1);
        drop(wait);
        look_over(&list(), now_nanos());
        assert_eq!(count(), before);
    }

    #[test]
    fn a_thread_whose_ticker_runs_on_it_keeps_ended_entries_for_its_next_requests() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            let start = now_nanos();
            let (wait, first, _theirs) = waiting(Duration::from_millis(50), start);
            look_over(&list(), start + 50 * MS);
            assert!(wait.end(), "the first wait fired");
            let entry = wait.entry.clone().unwrap();
            drop(wait);
            let (again, second, _theirs) = waiting(Duration::from_millis(50), start + 60 * MS);
            assert!(
                Arc::ptr_eq(again.entry.as_ref().unwrap(), &entry),
                "the same entry, not a new one"
            );
            assert!(!again.expired(), "and nothing of the last request's wait");
            look_over(&list(), start + 100 * MS);
            assert_open(&second, "the new wait has its own deadline");
            look_over(&list(), start + 110 * MS);
            assert!(again.expired());
            drop(first);
        });
        // A thread with no ticker of its own keeps nothing.
        std::thread::spawn(|| {
            let (wait, _ours, _theirs) = waiting(Duration::from_secs(1), now_nanos());
            drop(wait);
            assert!(LIST.with(|own| own.free.borrow().is_empty()));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_descriptor_that_passed_to_another_connection_is_left_alone() {
        let start = now_nanos();
        let (wait, ours, _theirs) = waiting(Duration::from_millis(50), start);
        // The descriptor number comes to stand for another connection.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let other = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_accepted, _) = listener.accept().unwrap();
        // SAFETY: both descriptors are open and ours; `ours` then closes the duplicate.
        assert!(unsafe { libc::dup2(other.as_raw_fd(), ours.as_raw_fd()) } >= 0);
        look_over(&list(), start + 50 * MS);
        assert!(!wait.expired());
        assert_open(&other, "the other connection is still open");
    }
}
