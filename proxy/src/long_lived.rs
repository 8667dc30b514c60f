//! Long-lived connections: WebSockets and other upgraded connections, which outlive any
//! request count and would keep an old pool serving forever after a switch.
//!
//! Once a backend answers `101 Switching Protocols`, the request stops counting as in flight
//! (a drain no longer waits on it) and its backend connection is registered with its pool's
//! [`LongLived`] set instead, as a duplicate of the socket's descriptor. Closing the set shuts
//! every such socket down: pingora's copy loop sees the backend's end, finishes, and closes
//! the client's connection, whose client then reconnects, to the pool that serves now. The
//! duplicate keeps the socket itself alive until the registration is dropped, so a shutdown can
//! never reach another connection that reused the descriptor's number.

use std::collections::HashMap;
use std::net::{Shutdown, TcpStream};
use std::os::fd::{BorrowedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The long-lived connections open to one pool.
#[derive(Debug, Default)]
pub struct LongLived {
    open: Mutex<HashMap<u64, TcpStream>>,
    next_id: AtomicU64,
}

impl LongLived {
    pub fn count(&self) -> u64 {
        self.open.lock().map_or(0, |open| open.len() as u64)
    }

    /// Registers the backend connection `fd` (live for the duration of the call) until the
    /// returned guard is dropped. None if the descriptor could not be duplicated.
    pub fn register(self: &Arc<Self>, fd: RawFd) -> Option<LongLivedGuard> {
        // SAFETY: pingora handed this descriptor to `connected_to_upstream` for the connection
        // the current request still holds, so it is open for the whole call.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let socket = TcpStream::from(borrowed.try_clone_to_owned().ok()?);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.open.lock().ok()?.insert(id, socket);
        Some(LongLivedGuard {
            set: self.clone(),
            id,
        })
    }

    /// Shuts down every registered connection; returns how many there were.
    pub fn close_all(&self) -> u64 {
        let Ok(open) = self.open.lock() else { return 0 };
        for socket in open.values() {
            let _ = socket.shutdown(Shutdown::Both);
        }
        open.len() as u64
    }
}

/// One registered long-lived connection; dropping it ends the registration.
#[derive(Debug)]
pub struct LongLivedGuard {
    set: Arc<LongLived>,
    id: u64,
}

impl Drop for LongLivedGuard {
    fn drop(&mut self) {
        if let Ok(mut open) = self.set.open.lock() {
            open.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;
    use std::os::fd::AsRawFd;

    #[test]
    fn closing_shuts_the_socket_down_and_dropping_unregisters() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server_side, _) = listener.accept().unwrap();
        let set = Arc::new(LongLived::default());
        let guard = set.register(client.as_raw_fd()).unwrap();
        assert_eq!(set.count(), 1);
        assert_eq!(set.close_all(), 1);
        // The peer sees the end of the stream.
        let mut buf = [0u8; 8];
        assert_eq!(server_side.read(&mut buf).unwrap(), 0);
        drop(guard);
        assert_eq!(set.count(), 0);
        assert_eq!(set.close_all(), 0);
    }
}
