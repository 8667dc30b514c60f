//! Counting client connections: a wrapper around the proxy's pingora app.
//!
//! pingora hands an HTTP/2 connection to `process_new` once for its whole life, but an
//! HTTP/1.1 keep-alive connection once per request: between two requests the connection is
//! back in pingora's own loop, out of this wrapper's sight. So the count is of connections that
//! are busy (a request in progress, or an open HTTP/2 connection); idle keep-alive connections
//! are not in it. Counting those needs a hold on the connection across pingora's keep-alive
//! loop, which the connection caps and the per-connection memory work will add.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;

/// Wraps the proxy's pingora app to count busy client connections (see the module's note on
/// keep-alive).
pub struct ConnectionCounter<A> {
    inner: Arc<A>,
    open: Arc<AtomicI64>,
}

impl<A> ConnectionCounter<A> {
    pub fn new(inner: A, open: Arc<AtomicI64>) -> ConnectionCounter<A> {
        ConnectionCounter {
            inner: Arc::new(inner),
            open,
        }
    }
}

struct Open<'a>(&'a AtomicI64);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl<A: pingora::apps::ServerApp + Send + Sync + 'static> pingora::apps::ServerApp
    for ConnectionCounter<A>
{
    async fn process_new(
        self: &Arc<Self>,
        session: pingora::protocols::Stream,
        shutdown: &pingora::server::ShutdownWatch,
    ) -> Option<pingora::protocols::Stream> {
        self.open.fetch_add(1, Ordering::Relaxed);
        let _open = Open(&self.open);
        self.inner.process_new(session, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}
