//! A plain-TCP client connection as pingora's stream type: the socket and its addresses,
//! nothing more.
//!
//! pingora's own L4 stream keeps, for every connection, read and write buffers (left empty
//! here: the own path reads and writes buffers of its own), a list of bytes to read again, and
//! the time each read and write spent waiting, taking the clock twice per read. A keep-alive
//! request pays about 250 instructions for that, and an idle connection a few hundred bytes.
//! [`ClientTcp`] carries what the proxy asks of a client's stream (its socket digest, its
//! establishment time) and passes reads and writes straight to the socket.
//!
//! Connections that must be read again after a look at their first bytes (a PROXY protocol
//! header on a plain listener) keep pingora's stream, which can take bytes back.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::SystemTime;

use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType,
};
use std::os::fd::AsRawFd;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// An accepted plain-TCP client connection.
#[derive(Debug)]
pub struct ClientTcp {
    tcp: TcpStream,
    peer: SocketAddr,
    /// Made when first asked (by pingora's path, or a route by listener): most connections
    /// never ask, and a digest is about 400 bytes.
    digest: OnceLock<Arc<SocketDigest>>,
    established: SystemTime,
}

impl ClientTcp {
    pub fn new(tcp: TcpStream, peer: SocketAddr) -> ClientTcp {
        ClientTcp {
            tcp,
            peer,
            digest: OnceLock::new(),
            established: SystemTime::now(),
        }
    }
}

impl AsyncRead for ClientTcp {
    #[inline]
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientTcp {
    #[inline]
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    #[inline]
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    #[inline]
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for ClientTcp {
    async fn shutdown(&mut self) {
        let _ = AsyncWriteExt::shutdown(&mut self.tcp).await;
    }
}

impl UniqueID for ClientTcp {
    fn id(&self) -> UniqueIDType {
        self.tcp.as_raw_fd()
    }
}

impl Ssl for ClientTcp {}

#[async_trait]
impl Peek for ClientTcp {}

impl GetTimingDigest for ClientTcp {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        vec![Some(TimingDigest {
            established_ts: self.established,
            establishment_duration: None,
            offload_wait_duration: None,
        })]
    }
}

impl GetProxyDigest for ClientTcp {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        None
    }
}

impl GetSocketDigest for ClientTcp {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        let digest = self.digest.get_or_init(|| {
            let digest = SocketDigest::from_raw_fd(self.tcp.as_raw_fd());
            let _ = digest.peer_addr.set(Some(self.peer.into()));
            Arc::new(digest)
        });
        Some(digest.clone())
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.digest = OnceLock::from(Arc::new(digest));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::protocols::Stream;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn reads_writes_and_digest_pass_through_to_the_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut peer = TcpStream::connect(addr).await.unwrap();
        let (tcp, from) = listener.accept().await.unwrap();
        let mut stream: Stream = Box::new(ClientTcp::new(tcp, from));
        let seen = stream.get_socket_digest().unwrap();
        assert_eq!(
            seen.peer_addr().and_then(|a| a.as_inet().copied()),
            Some(from)
        );
        assert_eq!(
            seen.local_addr().and_then(|a| a.as_inet().copied()),
            Some(addr)
        );
        // Made once.
        assert!(Arc::ptr_eq(&seen, &stream.get_socket_digest().unwrap()));
        peer.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        stream.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        stream.write_all(b"pong").await.unwrap();
        stream.flush().await.unwrap();
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong");
        Shutdown::shutdown(&mut *stream).await;
        assert_eq!(peer.read(&mut got).await.unwrap(), 0, "closed for writing");
    }
}
