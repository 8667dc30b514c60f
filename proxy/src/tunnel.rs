//! WebSockets and other upgraded connections, carried by switchback itself once the backend
//! answered `101 Switching Protocols`.
//!
//! pingora copies an upgraded connection through two body reads of 64 KiB each, two task
//! channels and the request's boxed future (about 14 KB), all held for as long as the
//! connection is open: 42 KB of resident memory per open WebSocket. Instead, for a request
//! that asks to upgrade (and has no body), switchback:
//! - wraps the client's connection ([`ClientSide`]) and connects to the backend itself
//!   ([`BackendConnect`], [`BackendSide`]), so that it sees both sides' bytes;
//! - hands pingora the backend's answer up to the end of its head and no further, so pingora
//!   routes, runs every filter and writes the 101 to the client as for any other request,
//!   and holds none of what comes after;
//! - then ends pingora's part: once the 101 is written, pingora's next read of the client sees
//!   the end, which ends an upgraded request cleanly; neither connection is shut down, and
//!   each side hands its connection to the [`Splice`] as pingora lets go of it;
//! - copies between the two connections itself ([`carry`]), in the client connection's task,
//!   with no buffer while both sides are quiet: each read goes through a buffer on the stack,
//!   and only what a side could not take at once is kept.
//!
//! The request's access-log line and metrics are written when the connection ends, as they
//! were, and the connection counts as long-lived in its pool until then. A backend that
//! answers anything but 101 is read through as usual, and the client's connection goes on to
//! its next request.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use pingora::connectors::L4Connect;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::socket::SocketAddr;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::l4::virt::{VirtualSockOpt, VirtualSocket, VirtualSocketStream};
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::TlsRef;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::{Error, ErrorType};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// What the end of a carried connection records (its access-log line and metrics), given the
/// bytes it carried to the client.
pub type OnEnd = Box<dyn FnOnce(u64) + Send>;

/// Whether the request head `head` asks to upgrade the connection and has no body: an
/// `Upgrade` header, and neither `Transfer-Encoding` nor a `Content-Length` other than 0.
pub fn asks_upgrade(head: &[u8]) -> bool {
    // On every request, so first the quickest look: a head where no line starts with a U asks
    // for no upgrade.
    if !memchr::memchr2_iter(b'u', b'U', head).any(|i| i > 0 && head[i - 1] == b'\n') {
        return false;
    }
    let mut upgrade = false;
    for newline in memchr::memchr_iter(b'\n', head) {
        let line = &head[newline + 1..];
        let Some(&first) = line.first() else { break };
        match first | 0x20 {
            b'u' if header_is(line, b"upgrade") => upgrade = true,
            b't' if header_is(line, b"transfer-encoding") => return false,
            b'c' if header_is(line, b"content-length") => {
                let end = memchr::memchr(b'\n', line).unwrap_or(line.len());
                if line[b"content-length:".len()..end].trim_ascii() != b"0" {
                    return false;
                }
            }
            // The empty line: the head ends.
            b'-' | b'*' => break,
            _ => {}
        }
    }
    upgrade
}

/// Whether the header line `line` has the name `name` (ASCII case aside).
fn header_is(line: &[u8], name: &[u8]) -> bool {
    line.len() > name.len()
        && line[name.len()] == b':'
        && line[..name.len()].eq_ignore_ascii_case(name)
}

/// One upgrade request's two connections, shared by the client's side, the backend's side,
/// the request's context and the client connection's task.
pub struct Splice {
    /// Unique among splices: the connection group of its backend connections.
    group: u64,
    /// The backend's 101 head went to pingora: from here the connections are switchback's.
    upgraded: AtomicBool,
    /// pingora wrote to the client since (the 101's head): its next read of the client ends.
    answered: AtomicBool,
    parts: Mutex<Parts>,
}

#[derive(Default)]
struct Parts {
    client: Option<Stream>,
    /// The backend's connection, with what it sent after its 101 head.
    backend: Option<(TcpStream, BytesMut)>,
    backend_fd: Option<RawFd>,
    /// The service's `read_timeout`: how long the backend may stay silent, and a write to it
    /// may wait.
    read_timeout: Duration,
    /// pingora's part of the request ended without an error.
    clean: bool,
    on_end: Option<OnEnd>,
}

impl Drop for Parts {
    fn drop(&mut self) {
        // Never carried (pingora's part failed, or the client left first): the request is
        // still logged.
        if let Some(on_end) = self.on_end.take() {
            on_end(0);
        }
    }
}

/// Splices so far, for their groups.
static SPLICES: AtomicU64 = AtomicU64::new(0);

impl Default for Splice {
    fn default() -> Splice {
        Splice {
            // Ordinary requests' connections are in group 0.
            group: 1 + SPLICES.fetch_add(1, Ordering::Relaxed),
            upgraded: AtomicBool::default(),
            answered: AtomicBool::default(),
            parts: Mutex::default(),
        }
    }
}

impl std::fmt::Debug for Splice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Splice")
            .field("upgraded", &self.upgraded)
            .field("answered", &self.answered)
            .finish_non_exhaustive()
    }
}

/// What the client connection's task does with an upgrade request's connections once
/// pingora is done with the request.
enum Taken {
    /// Carry the connection ([`carry`]).
    Carry(Ends),
    /// pingora's part failed after the backend said 101: close the client's connection.
    Close(Stream),
    /// Not upgraded: the client's connection is pingora's to hand back, as for any request.
    Nothing,
}

/// An upgraded connection's two ends, taken from pingora.
struct Ends {
    client: Stream,
    backend: TcpStream,
    /// What the backend sent after its 101 head, for the client.
    leftover: BytesMut,
    read_timeout: Duration,
    on_end: Option<OnEnd>,
}

impl Splice {
    /// The splice of the request `session` reads, if its connection is wrapped for one.
    pub fn of(session: &ServerSession) -> Option<Arc<Splice>> {
        let client = session.stream()?.as_any().downcast_ref::<ClientSide>()?;
        Some(client.splice.clone())
    }

    /// The connection group (pingora's `HttpPeer::group_key`) of this request's backend
    /// connections: its own, so it never takes a pooled connection. pingora pools none that
    /// was upgraded, but it may pool one whose backend refused the upgrade, which must not
    /// carry a later upgrade request: this request's splice would not see that one's 101.
    pub fn group(&self) -> u64 {
        self.group
    }

    fn parts(&self) -> MutexGuard<'_, Parts> {
        self.parts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The backend answered 101 (and pingora has its head).
    pub fn upgraded(&self) -> bool {
        self.upgraded.load(Ordering::Acquire)
    }

    /// The descriptor of the backend connection of the latest attempt.
    pub fn backend_fd(&self) -> Option<RawFd> {
        self.parts().backend_fd
    }

    pub fn set_read_timeout(&self, read_timeout: Duration) {
        self.parts().read_timeout = read_timeout;
    }

    /// pingora's part of the request ended (`clean`: without an error); `on_end` records the
    /// request when the connection ends.
    pub fn ended(&self, clean: bool, on_end: OnEnd) {
        let mut parts = self.parts();
        parts.clean = clean;
        parts.on_end = Some(on_end);
    }

    /// Takes the connections back from pingora, once it returned from the request.
    fn take(&self) -> Taken {
        if !self.upgraded() {
            return Taken::Nothing;
        }
        let mut parts = self.parts();
        let Some(client) = parts.client.take() else {
            return Taken::Nothing;
        };
        match parts.backend.take() {
            Some((backend, leftover)) if parts.clean => Taken::Carry(Ends {
                client,
                backend,
                leftover,
                read_timeout: parts.read_timeout,
                on_end: parts.on_end.take(),
            }),
            _ => Taken::Close(client),
        }
    }
}

/// The client's connection while it carries an upgrade request: passes everything through,
/// until the backend's 101 was written to the client; then reads see the end, a shutdown
/// leaves the connection open, and dropping it hands the connection to the [`Splice`].
#[derive(Debug)]
pub struct ClientSide {
    inner: Option<Stream>,
    splice: Arc<Splice>,
}

impl ClientSide {
    pub fn wrap(stream: Stream, splice: Arc<Splice>) -> Stream {
        Box::new(ClientSide {
            inner: Some(stream),
            splice,
        })
    }

    /// The connection [`ClientSide::wrap`] wrapped, as pingora handed it back.
    pub fn unwrap(stream: Stream) -> Option<Stream> {
        let mut side = stream.into_any().downcast::<ClientSide>().ok()?;
        side.inner.take()
    }

    fn inner(&mut self) -> &mut Stream {
        self.inner
            .as_mut()
            .expect("a client side keeps its connection until dropped")
    }

    fn ended(&self) -> bool {
        self.splice.answered.load(Ordering::Acquire)
    }

    /// A write by pingora: once the backend said 101, it is the 101's head.
    fn writing(&self) {
        if self.splice.upgraded() {
            self.splice.answered.store(true, Ordering::Release);
        }
    }
}

impl Drop for ClientSide {
    fn drop(&mut self) {
        if self.splice.upgraded() {
            if let Some(client) = self.inner.take() {
                self.splice.parts().client = Some(client);
            }
        }
    }
}

impl AsyncRead for ClientSide {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.ended() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(this.inner()).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientSide {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.writing();
        Pin::new(this.inner()).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.writing();
        Pin::new(this.inner()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().inner()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.splice.upgraded() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(this.inner()).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for ClientSide {
    async fn shutdown(&mut self) {
        if !self.splice.upgraded() {
            Shutdown::shutdown(self.inner().as_mut()).await
        }
    }
}

impl UniqueID for ClientSide {
    fn id(&self) -> UniqueIDType {
        self.inner.as_ref().map_or(-1, |s| s.id())
    }
}

impl Ssl for ClientSide {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.as_ref()?.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.as_ref()?.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.as_ref()?.selected_alpn_proto()
    }
}

impl GetTimingDigest for ClientSide {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner
            .as_ref()
            .map_or_else(Vec::new, |s| s.get_timing_digest())
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner
            .as_ref()
            .map_or(Duration::ZERO, |s| s.get_read_pending_time())
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner
            .as_ref()
            .map_or(Duration::ZERO, |s| s.get_write_pending_time())
    }
}

impl GetProxyDigest for ClientSide {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.as_ref()?.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner().set_proxy_digest(digest)
    }
}

impl GetSocketDigest for ClientSide {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.as_ref()?.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner().set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for ClientSide {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner().try_peek(buf).await
    }
}

/// Connects an upgrade request to its backend, for switchback to see the backend's bytes.
#[derive(Debug)]
pub struct BackendConnect {
    splice: Arc<Splice>,
    timeout: Duration,
}

impl BackendConnect {
    /// `timeout`: the service's `connect_timeout` (pingora applies none to a connector of
    /// its user's).
    pub fn new(splice: Arc<Splice>, timeout: Duration) -> BackendConnect {
        BackendConnect { splice, timeout }
    }
}

#[async_trait]
impl L4Connect for BackendConnect {
    async fn connect(&self, addr: &SocketAddr) -> pingora::Result<L4Stream> {
        let SocketAddr::Inet(addr) = addr else {
            return Error::e_explain(ErrorType::ConnectError, "a backend is an IP address");
        };
        let socket = match tokio::time::timeout(self.timeout, TcpStream::connect(addr)).await {
            Ok(Ok(socket)) => socket,
            Ok(Err(e)) => {
                let kind = match e.kind() {
                    io::ErrorKind::ConnectionRefused => ErrorType::ConnectRefused,
                    _ => ErrorType::ConnectError,
                };
                return Err(Error::because(kind, format!("connecting to {addr}"), e));
            }
            Err(_) => {
                return Error::e_explain(
                    ErrorType::ConnectTimedout,
                    format!("timeout {:?} connecting to {addr}", self.timeout),
                )
            }
        };
        self.splice.parts().backend_fd = Some(socket.as_raw_fd());
        let side = BackendSide {
            socket: Some(socket),
            splice: self.splice.clone(),
            scan: HeadScan::default(),
            leftover: BytesMut::new(),
            state: BackendState::Head,
        };
        Ok(L4Stream::from(VirtualSocketStream::new(Box::new(side))))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BackendState {
    /// Reading the answer's head (and the heads of 1xx answers before it).
    Head,
    /// The answer was 101: pingora reads no more, and a shutdown leaves the connection open.
    Upgraded,
    /// Any other answer: everything passes through.
    Through,
}

/// The backend's connection of an upgrade request, as pingora sees it.
#[derive(Debug)]
struct BackendSide {
    socket: Option<TcpStream>,
    splice: Arc<Splice>,
    scan: HeadScan,
    /// What came after the 101's head, in the same read.
    leftover: BytesMut,
    state: BackendState,
}

impl BackendSide {
    fn socket(&mut self) -> &mut TcpStream {
        self.socket
            .as_mut()
            .expect("a backend side keeps its connection until dropped")
    }
}

impl Drop for BackendSide {
    fn drop(&mut self) {
        if self.state == BackendState::Upgraded {
            if let Some(socket) = self.socket.take() {
                let leftover = std::mem::take(&mut self.leftover);
                self.splice.parts().backend = Some((socket, leftover));
            }
        }
    }
}

impl AsyncRead for BackendSide {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.state {
            // Never ready: pingora's read is dropped once its request ends.
            BackendState::Upgraded => Poll::Pending,
            BackendState::Through => Pin::new(this.socket()).poll_read(cx, buf),
            BackendState::Head => {
                let before = buf.filled().len();
                ready!(Pin::new(this.socket()).poll_read(cx, buf))?;
                match this.scan.feed(&buf.filled()[before..]) {
                    Scanned::More => {}
                    Scanned::Other => this.state = BackendState::Through,
                    Scanned::Upgraded(end) => {
                        this.leftover
                            .extend_from_slice(&buf.filled()[before + end..]);
                        buf.set_filled(before + end);
                        this.state = BackendState::Upgraded;
                        this.splice.upgraded.store(true, Ordering::Release);
                    }
                }
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl AsyncWrite for BackendSide {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().socket()).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().socket()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.state == BackendState::Upgraded {
            return Poll::Ready(Ok(()));
        }
        Pin::new(this.socket()).poll_shutdown(cx)
    }
}

impl VirtualSocket for BackendSide {
    fn set_socket_option(&self, opt: VirtualSockOpt) -> io::Result<()> {
        match (opt, &self.socket) {
            (VirtualSockOpt::NoDelay, Some(socket)) => socket.set_nodelay(true),
            _ => Ok(()),
        }
    }
}

/// How far [`HeadScan::feed`] got.
#[derive(Debug, PartialEq, Eq)]
enum Scanned {
    /// The answer's head has not ended yet.
    More,
    /// A 101 head ended this many bytes into what was fed.
    Upgraded(usize),
    /// The answer is not a 101 (or not HTTP/1.x as expected).
    Other,
}

/// Finds the end of the backend's answer heads, as they arrive in pieces, and whether the
/// final one is a 101. The heads of other 1xx answers (100, 103) before it are passed over.
#[derive(Debug, Default)]
struct HeadScan {
    /// The start of the head's first line: `HTTP/1.1 101`.
    status_line: [u8; 12],
    status_len: usize,
    /// Lines of the head so far, and bytes (other than CR) of the current one.
    lines: usize,
    line_len: usize,
    /// Bytes of the head so far.
    size: usize,
}

/// A head larger than this is pingora's to refuse; switchback passes it through.
const MAX_HEAD: usize = 64 * 1024;

impl HeadScan {
    fn feed(&mut self, bytes: &[u8]) -> Scanned {
        for (i, &b) in bytes.iter().enumerate() {
            self.size += 1;
            if self.size > MAX_HEAD {
                return Scanned::Other;
            }
            match b {
                b'\n' if self.line_len == 0 && self.lines > 0 => match self.status() {
                    Some(101) => return Scanned::Upgraded(i + 1),
                    Some(100..=199) => *self = HeadScan::default(),
                    _ => return Scanned::Other,
                },
                b'\n' => {
                    if self.line_len > 0 {
                        self.lines += 1;
                    }
                    self.line_len = 0;
                }
                b'\r' => {}
                _ => {
                    if self.lines == 0 && self.status_len < self.status_line.len() {
                        self.status_line[self.status_len] = b;
                        self.status_len += 1;
                    }
                    self.line_len += 1;
                }
            }
        }
        Scanned::More
    }

    /// The status code of the head's first line.
    fn status(&self) -> Option<u16> {
        let line = &self.status_line[..self.status_len];
        if line.len() < 12 || !line.starts_with(b"HTTP/1.") || line[8] != b' ' {
            return None;
        }
        std::str::from_utf8(&line[9..12]).ok()?.parse().ok()
    }
}

/// The most bytes one read of a carried connection takes, through a buffer on the stack.
const CHUNK: usize = 16 * 1024;

/// Reads a connection pump makes in one poll before it lets the other direction and other
/// tasks run.
const READS_PER_POLL: usize = 16;

/// One direction of a carried connection.
#[derive(Default)]
struct Pump {
    /// Read and not yet taken by the writer (empty, and unallocated, while the writer keeps
    /// up).
    pending: BytesMut,
    /// Written since the last flush.
    unflushed: bool,
    /// The writer did not take everything at once: the time that started.
    stalled: bool,
    /// The reader ended.
    eof: bool,
}

impl Pump {
    /// Moves what `from` has to `to`. Ready when `from` ended and all of it was written, or
    /// either failed. `written` counts the bytes written, `heard` is set when a read brought
    /// some.
    fn poll_move<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut R,
        to: &mut W,
        written: &mut u64,
        heard: &mut bool,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        for _ in 0..READS_PER_POLL {
            self.stalled = true;
            while !self.pending.is_empty() {
                let n = ready!(poll_write(cx, to, &self.pending))?;
                self.pending.advance(n);
                *written += n as u64;
                self.unflushed = true;
            }
            if self.pending.capacity() > 0 {
                self.pending = BytesMut::new();
            }
            if self.unflushed {
                ready!(Pin::new(&mut *to).poll_flush(cx))?;
                self.unflushed = false;
            }
            self.stalled = false;
            if self.eof {
                return Poll::Ready(Ok(()));
            }
            let mut scratch = [MaybeUninit::<u8>::uninit(); CHUNK];
            let mut read = ReadBuf::uninit(&mut scratch);
            ready!(Pin::new(&mut *from).poll_read(cx, &mut read))?;
            let mut got = read.filled();
            if got.is_empty() {
                self.eof = true;
                continue;
            }
            *heard = true;
            // Straight from the stack while the writer takes it; only the rest is kept.
            while !got.is_empty() {
                match poll_write(cx, to, got) {
                    Poll::Ready(Ok(n)) => {
                        got = &got[n..];
                        *written += n as u64;
                        self.unflushed = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        self.pending.extend_from_slice(got);
                        break;
                    }
                }
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

fn poll_write<W: AsyncWrite + Unpin + ?Sized>(
    cx: &mut Context<'_>,
    to: &mut W,
    bytes: &[u8],
) -> Poll<io::Result<usize>> {
    match ready!(Pin::new(to).poll_write(cx, bytes)) {
        Ok(0) => Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
        other => Poll::Ready(other),
    }
}

/// Carries on the connection of an upgrade request the backend answered 101, once pingora
/// returned from the request; closes it instead when pingora's part failed.
pub async fn take_over(splice: Arc<Splice>, send_timeout: Duration) {
    let taken = splice.take();
    drop(splice);
    match taken {
        Taken::Carry(ends) => carry(ends, send_timeout).await,
        Taken::Close(mut client) => {
            // What pingora wrote (an error answer) is flushed first.
            let _ = tokio::time::timeout(send_timeout, AsyncWriteExt::shutdown(&mut client)).await;
        }
        Taken::Nothing => {}
    }
}

/// Copies between an upgraded connection's client and backend until either ends it, the
/// backend stays silent for the service's `read_timeout`, or a side does not take what it is
/// sent within its write deadline (`send_timeout` for the client, `read_timeout` for the
/// backend); then closes both and records the request.
async fn carry(ends: Ends, send_timeout: Duration) {
    let Ends {
        mut client,
        mut backend,
        leftover,
        read_timeout,
        on_end,
    } = ends;
    let mut to_client = Pump {
        pending: leftover,
        // The 101's head may still be in the client connection's write buffer.
        unflushed: true,
        ..Pump::default()
    };
    let mut to_backend = Pump::default();
    let mut carried = 0u64;
    let mut silent_since = Instant::now();
    let mut client_stalled: Option<Instant> = None;
    let mut backend_stalled: Option<Instant> = None;
    let deadline = tokio::time::sleep(read_timeout);
    tokio::pin!(deadline);
    std::future::poll_fn(|cx| {
        let mut heard = false;
        if to_client
            .poll_move(cx, &mut backend, client.as_mut(), &mut carried, &mut heard)
            .is_ready()
        {
            return Poll::Ready(());
        }
        let (mut sent, mut client_heard) = (0, false);
        if to_backend
            .poll_move(
                cx,
                client.as_mut(),
                &mut backend,
                &mut sent,
                &mut client_heard,
            )
            .is_ready()
        {
            return Poll::Ready(());
        }
        let now = Instant::now();
        if heard {
            silent_since = now;
        }
        client_stalled = to_client.stalled.then(|| client_stalled.unwrap_or(now));
        backend_stalled = to_backend.stalled.then(|| backend_stalled.unwrap_or(now));
        let due = [
            Some(silent_since + read_timeout),
            client_stalled.map(|t| t + send_timeout),
            backend_stalled.map(|t| t + read_timeout),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(now);
        if due <= now {
            return Poll::Ready(());
        }
        if deadline.deadline() != due {
            deadline.as_mut().reset(due);
        }
        deadline.as_mut().poll(cx)
    })
    .await;
    // What was written is flushed by the shutdown; a client that takes nothing more is not
    // waited on for longer than its write deadline.
    let _ = tokio::time::timeout(send_timeout, AsyncWriteExt::shutdown(&mut client)).await;
    let _ = AsyncWriteExt::shutdown(&mut backend).await;
    if let Some(on_end) = on_end {
        on_end(carried);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn an_upgrade_is_a_head_with_an_upgrade_header_and_no_body() {
        let head = |lines: &str| format!("GET /ws HTTP/1.1\r\n{lines}\r\n").into_bytes();
        assert!(asks_upgrade(&head(
            "Host: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        )));
        assert!(asks_upgrade(&head("upgrade: h2c\r\ncontent-length: 0\r\n")));
        assert!(asks_upgrade(b"GET / HTTP/1.1\nUPGRADE: websocket\n\n"));
        assert!(!asks_upgrade(&head("Host: a\r\nConnection: Upgrade\r\n")));
        assert!(!asks_upgrade(&head("Upgrade: x\r\nContent-Length: 5\r\n")));
        assert!(!asks_upgrade(&head(
            "Upgrade: x\r\nTransfer-Encoding: chunked\r\n"
        )));
        // A header that only starts like it, or the request line, is not one.
        assert!(!asks_upgrade(&head("Upgrade-Insecure-Requests: 1\r\n")));
        assert!(!asks_upgrade(b"GET /upgrade: HTTP/1.1\r\n\r\n"));
    }

    #[test]
    fn a_101_head_ends_where_its_empty_line_does_across_pieces() {
        let answer = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\nhello";
        let end = answer.len() - 5;
        for split in 1..answer.len() {
            let mut scan = HeadScan::default();
            let first = scan.feed(&answer[..split]);
            if split >= end {
                assert_eq!(first, Scanned::Upgraded(end), "split at {split}");
                continue;
            }
            assert_eq!(first, Scanned::More, "split at {split}");
            assert_eq!(scan.feed(&answer[split..]), Scanned::Upgraded(end - split));
        }
        let mut scan = HeadScan::default();
        assert_eq!(scan.feed(b"HTTP/1.1 101 OK\n\nx"), Scanned::Upgraded(17));
    }

    #[test]
    fn other_answers_pass_through_and_1xx_heads_before_a_101_are_passed_over() {
        let mut scan = HeadScan::default();
        assert_eq!(
            scan.feed(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n"),
            Scanned::Other
        );
        let mut scan = HeadScan::default();
        let answer =
            b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 101 Switching\r\n\r\n";
        assert_eq!(scan.feed(answer), Scanned::Upgraded(answer.len()));
        let mut scan = HeadScan::default();
        assert_eq!(scan.feed(b"garbage\r\n\r\n"), Scanned::Other);
        let mut scan = HeadScan::default();
        assert_eq!(scan.feed(&vec![b'a'; MAX_HEAD + 1]), Scanned::Other);
    }

    #[tokio::test]
    async fn a_pump_moves_everything_and_ends_after_the_readers_end() {
        let (mut client, mut proxy_side) = tokio::io::duplex(64);
        let (mut backend_side, mut backend) = tokio::io::duplex(64);
        // More than the writer's room at once: part of it waits in the pump.
        let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            AsyncWriteExt::shutdown(&mut client).await.unwrap();
        });
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            backend.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut pump = Pump::default();
        let (mut written, mut heard) = (0, false);
        std::future::poll_fn(|cx| {
            pump.poll_move(
                cx,
                &mut proxy_side,
                &mut backend_side,
                &mut written,
                &mut heard,
            )
        })
        .await
        .unwrap();
        drop(backend_side);
        writer.await.unwrap();
        assert_eq!(reader.await.unwrap(), data);
        assert_eq!(written, data.len() as u64);
        assert!(heard);
        assert_eq!(pump.pending.capacity(), 0, "nothing held once written");
    }
}
