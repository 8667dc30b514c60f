//! Counting open client connections: a wrapper around the proxy's pingora app.
//!
//! pingora hands each accepted connection (HTTP/1, HTTP/2 and TLS alike) to `process_new` once
//! for its whole life, so a counter around that call is exact without any per-request work.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;

/// Wraps the proxy's pingora app to count open client connections (HTTP/1, HTTP/2 and TLS
/// alike: pingora hands each accepted connection to `process_new` once, for its whole life).
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

struct Open(Arc<AtomicI64>);

impl Drop for Open {
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
        let _open = Open(self.open.clone());
        self.inner.process_new(session, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}
