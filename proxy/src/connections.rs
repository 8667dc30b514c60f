//! Client connections: the caps on how many are open, and the deadlines and size limits of
//! HTTP/1.1 request heads.
//!
//! [`Connections`] wraps pingora's HTTP app and runs the HTTP/1.1 keep-alive loop itself,
//! instead of pingora's loop, which gives the read of the next request no deadline at all and
//! the head as a whole none either. Per connection it:
//! - counts the connection (every open one, idle keep-alive connections included) and closes it
//!   at once when `server.max_connections`, or `server.max_connections_per_ip`, is reached;
//! - reads each request head itself: on a new connection the whole head must arrive within
//!   `client_header_timeout` of the accept; on a reused one the first byte within
//!   `keepalive_timeout` of the last answer, then the whole head within `client_header_timeout`;
//! - answers 408 when a head was started and not finished in time (an idle connection that
//!   sent nothing is closed without an answer), 414 when the request line is longer than
//!   `max_uri_length`, and 431 when the head is larger than `max_request_head`;
//! - writes the forwarding headers into the head of a request from a peer that is not a trusted
//!   proxy (see [`crate::forwarding`]), and answers 431 when that leaves more header lines than
//!   pingora parses;
//! - serves the request on switchback's own HTTP/1.1 path ([`crate::h1`]) when that path
//!   carries it (`server.http1 = "switchback"`, the default), keeping what the client sent past
//!   its end (pipelined requests) as the start of the next head;
//! - else hands the head to pingora as already-read bytes (the same buffer pingora would have
//!   allocated), with `client_body_timeout` as the read deadline of the body and
//!   `send_timeout` as the write deadline of the answer.
//!
//! An idle keep-alive connection holds as little as it can (about 1 KB in all, measured with
//! `cargo bench --bench proxy -- memory`):
//! - it runs in a task of its own on the worker thread that accepted it ([`crate::workers`]),
//!   with no room in its state for the TLS handshake, which ran in a task of its own;
//! - while it waits, its state is the connection's facts and a hand-written wait ([`Idle`]),
//!   about 400 bytes: each request is served in a future of its own, in a block the thread
//!   recycles, held only while the request lasts;
//! - it watches for the process to stop by leaving its waker with its thread, not with a
//!   future of the stop watch;
//! - no head buffer while it waits (the first read goes through a buffer on the stack and is
//!   copied into a head buffer of its size, which a request held open for long, a WebSocket
//!   say, keeps instead of 4 KiB);
//! - its stream has no buffers of its own: what the proxy writes goes out in one `write` or
//!   `writev` of its own buffers.
//!
//! HTTP/2 connections go to pingora's own loop, with `keepalive_timeout` as its idle timeout.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream, ServerApp};
use pingora::prelude::timeout;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use std::task::Poll;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::time::Sleep;

use switchback_config::{Cidr, Http1Engine};

use crate::forwarding::Forwarding;
use crate::h1::{self, Http1};
use crate::metrics::ClientCounters;
use crate::policy::Policy;
use crate::proxy_protocol::ProxyProtocol;
use crate::recycle::Recycled;
use crate::tunnel::{self, ClientSide, Splice};

/// The deadlines and caps of `[server]`, as the data path uses them.
#[derive(Debug, Clone)]
pub struct ClientLimits {
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub body_timeout: Duration,
    pub send_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_ip: Option<usize>,
    pub max_request_head: usize,
    pub max_uri_length: usize,
    /// Peers whose forwarding headers are kept (`server.trusted_proxies`); everyone else's
    /// requests get theirs written here (see [`crate::forwarding`]).
    pub trusted_proxies: Vec<Cidr>,
    /// `server.http1`: whether switchback's own HTTP/1.1 path serves the requests it carries.
    pub http1: Http1Engine,
}

impl ClientLimits {
    pub fn from_config(server: &switchback_config::ServerConfig) -> ClientLimits {
        ClientLimits {
            header_timeout: server.client_header_timeout,
            keepalive_timeout: server.keepalive_timeout,
            body_timeout: server.client_body_timeout,
            send_timeout: server.send_timeout,
            max_connections: server.max_connections,
            max_connections_per_ip: server.max_connections_per_ip,
            max_request_head: server.max_request_head,
            max_uri_length: server.max_uri_length,
            trusted_proxies: server.trusted_proxies.clone(),
            http1: server.http1,
        }
    }

    /// The forwarding lines for a connection from `stream`'s peer, or None when the peer is a
    /// trusted proxy, whose requests keep their own.
    fn forwarding(&self, peer: Option<IpAddr>, tls: bool) -> Option<Forwarding> {
        if peer.is_some_and(|ip| self.trusted_proxies.iter().any(|c| c.contains(ip))) {
            return None;
        }
        Some(Forwarding::new(peer, tls))
    }
}

/// Wraps the proxy's pingora app: counts and caps client connections, and reads HTTP/1.1
/// request heads under the deadlines and size limits of [`ClientLimits`].
pub struct Connections<A> {
    app: Arc<A>,
    limits: ClientLimits,
    open: Arc<AtomicI64>,
    per_ip: Option<Mutex<HashMap<IpAddr, usize>>>,
    counters: ClientCounters,
    /// switchback's own HTTP/1.1 path, unless `server.http1 = "pingora"`.
    http1: Option<Http1>,
    /// `listen.proxy_protocol`, read here on plain HTTP listeners (on HTTPS ones, before the
    /// handshake: [`crate::proxy_protocol::BeforeTls`]).
    proxy_protocol: Option<Arc<ProxyProtocol>>,
}

impl<A> Connections<A> {
    pub fn new(
        app: A,
        limits: ClientLimits,
        open: Arc<AtomicI64>,
        counters: ClientCounters,
    ) -> Connections<A> {
        Connections {
            app: Arc::new(app),
            per_ip: limits.max_connections_per_ip.map(|_| Mutex::default()),
            limits,
            open,
            counters,
            http1: None,
            proxy_protocol: None,
        }
    }

    /// Reads a PROXY protocol header first on connections from `proxy_protocol`'s sources.
    pub fn with_proxy_protocol(mut self, proxy_protocol: Arc<ProxyProtocol>) -> Connections<A> {
        self.proxy_protocol = Some(proxy_protocol);
        self
    }

    /// Serves the HTTP/1.1 requests it carries on switchback's own path ([`crate::h1`]), with
    /// the decisions of `policy` (the proxy's own), unless `server.http1 = "pingora"`.
    pub fn with_policy(mut self, policy: Arc<Policy>) -> Connections<A> {
        if self.limits.http1 == Http1Engine::Switchback {
            self.http1 = Some(Http1::new(
                policy,
                self.limits.body_timeout,
                self.limits.send_timeout,
            ));
        }
        self
    }

    /// Whether connections from some sources open with a PROXY protocol header.
    pub fn reads_proxy_protocol(&self) -> bool {
        self.proxy_protocol.is_some()
    }

    /// Takes a place for `ip` under `max_connections_per_ip`, or None at the cap.
    fn enter(&self, ip: IpAddr) -> Option<PerIp<'_>> {
        let (Some(map), Some(cap)) = (&self.per_ip, self.limits.max_connections_per_ip) else {
            return Some(PerIp(None, ip));
        };
        let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
        let count = map.entry(ip).or_insert(0);
        if *count >= cap {
            return None;
        }
        *count += 1;
        Some(PerIp(Some(&self.per_ip), ip))
    }
}

struct Open<'a>(&'a AtomicI64);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection's place in the per-address count, given back on drop.
struct PerIp<'a>(Option<&'a Option<Mutex<HashMap<IpAddr, usize>>>>, IpAddr);

impl Drop for PerIp<'_> {
    fn drop(&mut self) {
        if let Some(Some(map)) = self.0 {
            let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(count) = map.get_mut(&self.1) {
                *count -= 1;
                if *count == 0 {
                    map.remove(&self.1);
                }
            }
        }
    }
}

/// How reading a request head ended, other than with a whole head.
#[derive(Debug, PartialEq, Eq)]
enum HeadEnd {
    /// The client closed the connection, or it failed.
    Closed,
    /// The deadline passed; `started` when some of a head had arrived.
    TimedOut { started: bool },
    /// The request line is longer than `max_uri_length` allows.
    UriTooLong,
    /// The head is larger than `max_request_head`.
    TooLarge,
}

/// The size pingora starts a head buffer with: the first read of a head, and the least a head
/// buffer grows by.
const HEAD_BUFFER: usize = 4096;

/// Where the head in `buf` ends (just past its empty line), looking from `from`; None while it
/// is not all there. Lines may end in CRLF or a bare LF, as pingora's parser accepts both.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(offset) = memchr::memchr(b'\n', &buf[i..]) {
        let nl = i + offset;
        match buf.get(nl + 1) {
            Some(b'\n') => return Some(nl + 2),
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => return Some(nl + 3),
            _ => i = nl + 1,
        }
    }
    None
}

/// Checks the request line in `buf` against `max_uri`: too long when the target (between the
/// first two spaces) is longer, or when no line end has come in `max_uri` plus room for the
/// method and version.
fn uri_too_long(buf: &[u8], max_uri: usize) -> bool {
    let line_end = memchr::memchr(b'\n', buf);
    let line = &buf[..line_end.unwrap_or(buf.len())];
    let Some(start) = line.iter().position(|&b| b == b' ') else {
        return line_end.is_none() && line.len() > max_uri + 32;
    };
    let target = &line[start + 1..];
    match target.iter().position(|&b| b == b' ') {
        Some(len) => len > max_uri,
        None => target.len() > max_uri,
    }
}

impl ClientLimits {
    /// Checks a whole head, `end` bytes long, against the limits.
    fn check(&self, buf: &[u8], end: usize) -> Result<(), HeadEnd> {
        if uri_too_long(buf, self.max_uri_length) {
            Err(HeadEnd::UriTooLong)
        } else if end > self.max_request_head {
            Err(HeadEnd::TooLarge)
        } else {
            Ok(())
        }
    }

    /// Reads into `buf` until a whole head is there (Ok), checking the size limits as bytes
    /// come in. `buf` may already hold the start of the head.
    async fn read_head(&self, stream: &mut Stream, buf: &mut BytesMut) -> Result<(), HeadEnd> {
        let mut scanned = 0;
        loop {
            if !buf.is_empty() {
                if let Some(end) = head_end(buf, scanned) {
                    // A whole head, which can still be over a limit.
                    return self.check(buf, end);
                }
                if uri_too_long(buf, self.max_uri_length) {
                    return Err(HeadEnd::UriTooLong);
                }
                if buf.len() > self.max_request_head {
                    return Err(HeadEnd::TooLarge);
                }
                // A line end may straddle two reads.
                scanned = buf.len().saturating_sub(2);
                if buf.len() == buf.capacity() {
                    buf.reserve(
                        buf.capacity()
                            .max(HEAD_BUFFER)
                            .min(self.max_request_head + 1),
                    );
                }
            }
            match stream.read_buf(buf).await {
                Ok(0) | Err(_) => return Err(HeadEnd::Closed),
                Ok(_) => {}
            }
        }
    }

    /// Reads the rest of a head into `buf` until `deadline`.
    async fn rest_of_head(
        &self,
        stream: &mut Stream,
        mut buf: BytesMut,
        deadline: &mut Pin<Box<Sleep>>,
    ) -> Result<BytesMut, HeadEnd> {
        tokio::select! {
            biased;
            result = self.read_head(stream, &mut buf) => result.map(|()| buf),
            () = deadline.as_mut() => Err(HeadEnd::TimedOut {
                started: !buf.is_empty(),
            }),
        }
    }
}

/// How long a kept-alive connection waits before it watches for the process to stop.
const STOP_WATCH_AFTER: Duration = Duration::from_secs(1);

/// The first bytes of a new connection's first request, before `deadline` (armed for the whole
/// head); None when the client closed first or the deadline passed.
fn first_bytes<'a>(
    stream: &'a mut Stream,
    deadline: &'a mut Pin<Box<Sleep>>,
) -> impl Future<Output = Option<BytesMut>> + 'a {
    std::future::poll_fn(move |cx| {
        if let Poll::Ready(read) = poll_first_read(stream, cx) {
            return Poll::Ready(read);
        }
        deadline.as_mut().poll(cx).map(|()| None)
    })
}

/// The wait of a kept-alive connection for the first bytes of its next request, within
/// `keepalive_timeout` of the last answer; None when the client closed, the wait timed out,
/// or the process stopped.
///
/// Written by hand, with no select and no future of the stop watch inside, as it is the state
/// every idle connection holds (about 70 bytes, against 340 as an async fn).
///
/// A connection that waits is closed as the process stops (a SIGTERM, an upgrade's old
/// process): its client sees the close while idle and opens its next connection to whoever
/// serves, rather than sending into a process about to exit. Only a connection idle for
/// [`STOP_WATCH_AFTER`] watches for the stop, so a busy one pays nothing for it (its next
/// answer says `connection: close` instead); the close comes at most that long after the stop.
/// It watches by leaving its waker with its worker thread ([`wake_idle_connections`]).
struct Idle<'a> {
    stream: &'a mut Stream,
    deadline: &'a mut Pin<Box<Sleep>>,
    client: &'a Client,
    /// When the wait starts watching for the stop.
    quiet_until: tokio::time::Instant,
    /// When the wait ends.
    end: tokio::time::Instant,
    /// The waker left with the thread, once the wait watches for the stop.
    watching: Option<StopWatch>,
}

impl<'a> Idle<'a> {
    fn new(
        limits: &ClientLimits,
        stream: &'a mut Stream,
        deadline: &'a mut Pin<Box<Sleep>>,
        client: &'a Client,
    ) -> Idle<'a> {
        let start = tokio::time::Instant::now();
        let quiet_until = start + STOP_WATCH_AFTER.min(limits.keepalive_timeout);
        // The timer is re-armed only when it would not go off before `quiet_until`: a
        // connection that asks again within a second keeps the one it armed for an earlier
        // request, which goes off early once and is armed again then. Moving a timer in tokio's
        // wheel on every request cost more than the rest of the wait.
        let armed = deadline.deadline();
        if armed <= start || armed > quiet_until {
            deadline.as_mut().reset(quiet_until);
        }
        Idle {
            stream,
            deadline,
            client,
            quiet_until,
            end: start + limits.keepalive_timeout,
            watching: None,
        }
    }
}

impl Future for Idle<'_> {
    type Output = Option<BytesMut>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Option<BytesMut>> {
        let this = self.get_mut();
        loop {
            if let Poll::Ready(read) = poll_first_read(this.stream, cx) {
                return Poll::Ready(read);
            }
            if let Some(watch) = &this.watching {
                if this.client.stopped() {
                    return Poll::Ready(None);
                }
                watch.update(cx.waker());
            }
            if this.deadline.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = tokio::time::Instant::now();
            if now >= this.end {
                return Poll::Ready(None);
            }
            if now >= this.quiet_until && this.watching.is_none() {
                this.watching = Some(StopWatch::new(cx.waker()));
                this.deadline.as_mut().reset(this.end);
            } else if this.watching.is_none() {
                // Went off early, armed for an earlier wait.
                this.deadline.as_mut().reset(this.quiet_until);
            } else {
                this.deadline.as_mut().reset(this.end);
            }
        }
    }
}

/// The wakers of a worker thread's idle connections that watch for the process to stop, and
/// whether the thread wakes them then.
#[derive(Default)]
struct StopWaiters {
    /// The thread wakes them: set by [`watch_stops_on_this_thread`].
    woken: bool,
    wakers: Vec<Option<std::task::Waker>>,
    free: Vec<usize>,
}

thread_local! {
    static STOP_WAITERS: std::cell::RefCell<StopWaiters> =
        std::cell::RefCell::new(StopWaiters::default());
}

/// Marks this thread as one that calls [`wake_idle_connections`] as the process stops.
pub fn watch_stops_on_this_thread() {
    STOP_WAITERS.with(|w| w.borrow_mut().woken = true);
}

/// Wakes this thread's idle connections that watch for the stop: each sees it and closes.
pub fn wake_idle_connections() {
    let wakers: Vec<_> = STOP_WAITERS.with(|w| {
        let mut w = w.borrow_mut();
        w.wakers.iter_mut().filter_map(Option::take).collect()
    });
    for waker in wakers {
        waker.wake();
    }
}

/// An idle connection's waker, left with its thread while it watches for the stop; taken back
/// when the wait ends.
struct StopWatch(Option<usize>);

impl StopWatch {
    fn new(waker: &std::task::Waker) -> StopWatch {
        let slot = STOP_WAITERS
            .try_with(|w| {
                let mut w = w.borrow_mut();
                if !w.woken {
                    return None;
                }
                let waker = Some(waker.clone());
                Some(match w.free.pop() {
                    Some(slot) => {
                        w.wakers[slot] = waker;
                        slot
                    }
                    None => {
                        w.wakers.push(waker);
                        w.wakers.len() - 1
                    }
                })
            })
            .ok()
            .flatten();
        StopWatch(slot)
    }

    /// Keeps the waker the connection was last polled with (a woken one is taken).
    fn update(&self, waker: &std::task::Waker) {
        let Some(slot) = self.0 else {
            return;
        };
        let _ = STOP_WAITERS.try_with(|w| {
            let mut w = w.borrow_mut();
            let kept = &mut w.wakers[slot];
            if !kept.as_ref().is_some_and(|k| k.will_wake(waker)) {
                *kept = Some(waker.clone());
            }
        });
    }
}

impl Drop for StopWatch {
    fn drop(&mut self) {
        if let Some(slot) = self.0 {
            let _ = STOP_WAITERS.try_with(|w| {
                let mut w = w.borrow_mut();
                w.wakers[slot] = None;
                w.free.push(slot);
            });
        }
    }
}

/// Polls the first read of a connection's next request, into a head buffer allocated only once
/// bytes came, and only as large as what came: an idle connection holds no buffer while it
/// waits (the read goes through a stack buffer that lives for one poll, then is copied, a few
/// hundred bytes, into the head buffer), and a request held open for long (a WebSocket, a slow
/// answer) holds its head, not 4 KiB. None when the client closed or the read failed.
fn poll_first_read(stream: &mut Stream, cx: &mut std::task::Context<'_>) -> Poll<Option<BytesMut>> {
    // Uninitialized: zeroing 4 KiB on every poll would cost more than the read.
    let mut scratch = [std::mem::MaybeUninit::<u8>::uninit(); HEAD_BUFFER];
    let mut read = ReadBuf::uninit(&mut scratch);
    match Pin::new(&mut *stream).poll_read(cx, &mut read) {
        Poll::Ready(Ok(())) if !read.filled().is_empty() => {
            // With room for the forwarding lines, so writing them moves no buffer.
            let filled = read.filled();
            let mut head = take_head_buffer(filled.len() + FORWARDING_ROOM);
            head.extend_from_slice(filled);
            Poll::Ready(Some(head))
        }
        Poll::Ready(_) => Poll::Ready(None),
        Poll::Pending => Poll::Pending,
    }
}

thread_local! {
    /// Head buffers of requests that ended, for the thread's next heads.
    static HEAD_BUFFERS: std::cell::RefCell<Vec<BytesMut>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Head buffers kept per thread at most, and the largest kept.
const KEPT_HEAD_BUFFERS: usize = 256;
const KEPT_HEAD_BUFFER_SIZE: usize = 4 * 1024;

/// An empty head buffer with room for `len` bytes: one the thread kept, or a new one.
fn take_head_buffer(len: usize) -> BytesMut {
    let kept = HEAD_BUFFERS
        .try_with(|b| b.borrow_mut().pop())
        .ok()
        .flatten();
    match kept {
        Some(mut head) => {
            // Reclaims the room before the start of the view the last request left, without
            // an allocation when the buffer is large enough.
            head.reserve(len);
            head
        }
        None => BytesMut::with_capacity(len),
    }
}

/// Keeps an empty head buffer, the sole owner of its memory, for the thread's next head.
fn give_head_buffer(mut head: BytesMut) {
    head.clear();
    if head.capacity() > KEPT_HEAD_BUFFER_SIZE {
        return;
    }
    let _ = HEAD_BUFFERS.try_with(|b| {
        let mut b = b.borrow_mut();
        if b.len() < KEPT_HEAD_BUFFERS {
            b.push(head);
        }
    });
}

/// Room for a connection's forwarding lines (see [`crate::forwarding`]): an IPv6 address at its
/// longest, and `https`.
const FORWARDING_ROOM: usize = 96;

/// Writes a short error answer and closes the connection, reading (and dropping) what the
/// client still sends for a moment, so that the close does not reset the connection before the
/// client read the answer.
fn answer_and_close(stream: Stream, answer: &'static [u8]) -> impl Future<Output = Step> {
    // Boxed: its buffer and timers are no part of a request's state.
    let answering = Box::pin(write_and_drain(stream, answer));
    async move {
        answering.await;
        Step::End
    }
}

/// The writing and draining of [`answer_and_close`].
async fn write_and_drain(mut stream: Stream, answer: &'static [u8]) {
    let write = async {
        stream.write_all(answer).await?;
        stream.flush().await?;
        stream.shutdown().await
    };
    if !matches!(timeout(Duration::from_secs(1), write).await, Ok(Ok(()))) {
        return;
    }
    let drain = async {
        let mut sink = [0u8; 4096];
        let mut left = 16 << 20;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left -= n.min(left),
            }
        }
    };
    let _ = timeout(Duration::from_secs(1), drain).await;
}

const REQUEST_TIMEOUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
const URI_TOO_LONG: &[u8] =
    b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
const BAD_REQUEST: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
const HEAD_TOO_LARGE: &[u8] =
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// What a client connection keeps from one request to the next.
struct Between {
    /// pingora's settings of the connection, once pingora served it. Boxed: only a connection
    /// pingora served has them, and they would size every idle connection's state (80 bytes).
    settings: Option<Box<HttpPersistentSettings>>,
    /// What the last request on switchback's own path left of the next one (pipelined).
    carried: BytesMut,
    /// A request was served: the next head is on a kept-alive connection.
    reused: bool,
    /// The connection's one timer, reset for each wait rather than made anew: moving a tokio
    /// timer later only updates it in place, so the wait for each next request costs no timer
    /// registration.
    deadline: Pin<Box<Sleep>>,
}

/// What a client connection is, for each of its requests.
struct Client {
    peer: Option<IpAddr>,
    tls: bool,
    forwarding: Option<Forwarding>,
    /// The process was stopping as the connection began.
    stopped_before: bool,
    shutdown: ShutdownWatch,
}

impl Client {
    /// Whether the process is stopping, without the watch's lock: it only ever changes once
    /// (to true), and this receiver never marks a value seen, so any change since the
    /// connection began is the stop.
    fn stopped(&self) -> bool {
        self.stopped_before || self.shutdown.has_changed().unwrap_or(true)
    }
}

/// How a request left its connection.
enum Step {
    /// Ready for the next request.
    Next(Stream),
    /// The backend said 101: switchback carries the connection on.
    Tunnel(Arc<Splice>),
    /// Closed.
    End,
}

impl<A: HttpServerApp + Send + Sync + 'static> Connections<A> {
    /// Serves one client connection from `peer` to its end, on the worker thread that accepted
    /// it (see [`crate::workers`]), holding `_held` until then.
    ///
    /// While the connection waits for a request, its state is this future's, kept small: the
    /// connection's facts and an [`Idle`] wait. Each request is served in a future of its own,
    /// in a block the thread recycles (no allocation per request once warm), which the
    /// connection holds only while the request lasts.
    pub async fn serve<H: Send>(
        self: Arc<Self>,
        mut stream: Stream,
        mut peer: Option<IpAddr>,
        shutdown: ShutdownWatch,
        _held: H,
    ) {
        let stopped_before = *shutdown.borrow();
        let before = self.open.fetch_add(1, Ordering::Relaxed);
        let _open = Open(&self.open);
        if before >= self.limits.max_connections as i64 {
            self.counters.refused_max_connections.inc();
            return;
        }
        if let Some(pp) = &self.proxy_protocol {
            if stream.get_ssl_digest().is_none() && pp.expects_header(peer) {
                // A plain listener's stream is pingora's L4 stream, which can take back what
                // was read past the header.
                let Ok(mut l4) = stream.into_any().downcast::<L4Stream>() else {
                    return;
                };
                if Box::pin(pp.accept(&mut l4)).await.is_err() {
                    return;
                }
                stream = l4;
                // The client the header names.
                peer = peer_ip(&stream);
            }
        }
        let _per_ip = match self.per_ip.is_some().then_some(peer).flatten() {
            Some(ip) => match self.enter(ip) {
                Some(place) => Some(place),
                None => {
                    self.counters.refused_per_ip.inc();
                    return;
                }
            },
            None => None,
        };
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            let mut next = ServerApp::process_new(&self.app, stream, &shutdown).await;
            while let Some(stream) = next {
                next = ServerApp::process_new(&self.app, stream, &shutdown).await;
            }
            return;
        }
        let tls = stream.get_ssl_digest().is_some();
        let client = Client {
            peer,
            tls,
            forwarding: self.limits.forwarding(peer, tls),
            stopped_before,
            shutdown,
        };
        let mut between = Between {
            settings: None,
            carried: BytesMut::new(),
            reused: false,
            // A new connection's whole first head is due client_header_timeout after the
            // accept.
            deadline: Box::pin(tokio::time::sleep(self.limits.header_timeout)),
        };
        loop {
            let first = if !between.carried.is_empty() {
                std::mem::take(&mut between.carried)
            } else if between.reused {
                let idle = Idle::new(&self.limits, &mut stream, &mut between.deadline, &client);
                match idle.await {
                    Some(first) => first,
                    None => return,
                }
            } else {
                match first_bytes(&mut stream, &mut between.deadline).await {
                    Some(first) => first,
                    None => return,
                }
            };
            let request = Recycled::new(self.request(stream, first, &client, &mut between));
            match request.await {
                Step::Next(next) => stream = next,
                Step::Tunnel(splice) => {
                    // Boxed, as the carrying's state is no part of every connection's.
                    let carrying = Box::pin(tunnel::take_over(splice, self.limits.send_timeout));
                    return carrying.await;
                }
                Step::End => return,
            }
        }
    }

    /// Serves the request whose head starts with `first` on `stream`: reads the rest of the head
    /// under the deadlines (the whole head within `header_timeout` of the accept on a new
    /// connection, of its first bytes on a kept-alive one) and the size limits, and has
    /// switchback's own path or pingora serve it.
    async fn request(
        &self,
        mut stream: Stream,
        first: BytesMut,
        client: &Client,
        between: &mut Between,
    ) -> Step {
        let head = match head_end(&first, 0) {
            Some(end) => self.limits.check(&first, end).map(|()| first),
            None => {
                if between.reused {
                    between
                        .deadline
                        .as_mut()
                        .reset(tokio::time::Instant::now() + self.limits.header_timeout);
                }
                self.limits
                    .rest_of_head(&mut stream, first, &mut between.deadline)
                    .await
            }
        };
        let mut head = match head {
            Ok(head) => head,
            Err(HeadEnd::Closed) | Err(HeadEnd::TimedOut { started: false }) => return Step::End,
            Err(HeadEnd::TimedOut { started: true }) => {
                self.counters.header_timeouts.inc();
                return answer_and_close(stream, REQUEST_TIMEOUT).await;
            }
            Err(HeadEnd::UriTooLong) => {
                self.counters.uri_too_long.inc();
                return answer_and_close(stream, URI_TOO_LONG).await;
            }
            Err(HeadEnd::TooLarge) => {
                self.counters.head_too_large.inc();
                return answer_and_close(stream, HEAD_TOO_LARGE).await;
            }
        };
        if let Some(http1) = &self.http1 {
            let conn = h1::Conn {
                peer: client.peer,
                tls: client.tls,
                forwarding: client.forwarding.as_ref().map(Forwarding::lines),
                stopping: client.stopped(),
            };
            match http1
                .serve(&mut stream, head, &conn, &mut between.deadline)
                .await
            {
                h1::Outcome::Declined(declined) => head = declined,
                h1::Outcome::Next(next) => {
                    if next.is_empty() {
                        // The buffer goes to the connection that reads a head next.
                        give_head_buffer(next);
                    } else {
                        between.carried = next;
                    }
                    between.reused = true;
                    return Step::Next(stream);
                }
                h1::Outcome::Close => return Step::End,
                h1::Outcome::Refused(h1::framing::Refusal::TooManyHeaders) => {
                    // More header lines than a backend parses, with the forwarding lines.
                    self.counters.head_too_large.inc();
                    return answer_and_close(stream, HEAD_TOO_LARGE).await;
                }
                h1::Outcome::Refused(_) => {
                    self.counters.bad_requests.inc();
                    return answer_and_close(stream, BAD_REQUEST).await;
                }
            }
        }
        if let Some(forwarding) = &client.forwarding {
            if forwarding.write_into(&mut head).is_err() {
                // More header lines than pingora parses.
                self.counters.head_too_large.inc();
                return answer_and_close(stream, HEAD_TOO_LARGE).await;
            }
        }
        // An upgrade (a WebSocket) is carried by switchback once the backend said 101: see
        // crate::tunnel.
        let splice = tunnel::asks_upgrade(&head).then(|| Arc::new(Splice::default()));
        if let Some(splice) = &splice {
            stream = ClientSide::wrap(stream, splice.clone());
        }
        let settings = between.settings.take();
        let done = self
            .pingora_serves(stream, head, settings, client.stopped(), &client.shutdown)
            .await;
        let wrapped = splice.is_some();
        if let Some(splice) = splice.filter(|s| s.upgraded()) {
            drop(done);
            return Step::Tunnel(splice);
        }
        let Some(done) = done else {
            return Step::End;
        };
        let (next, kept) = done.consume();
        stream = next;
        between.settings = kept.map(Box::new);
        if wrapped {
            // Answered without an upgrade: the connection goes on unwrapped.
            let Some(unwrapped) = ClientSide::unwrap(stream) else {
                return Step::End;
            };
            stream = unwrapped;
        }
        between.reused = true;
        Step::Next(stream)
    }
}

impl<A: HttpServerApp + Send + Sync + 'static> Connections<A> {
    /// pingora's session for the request whose head is `head`, and the (boxed) future that
    /// serves it. Not async: a session made in the connection's future, even moved out at
    /// once, would keep its room (about 1 KB) in that future while the connection is idle.
    fn pingora_serves<'a>(
        &'a self,
        stream: Stream,
        head: BytesMut,
        settings: Option<Box<HttpPersistentSettings>>,
        stopping: bool,
        shutdown: &'a ShutdownWatch,
    ) -> Pin<Box<dyn Future<Output = Option<ReusedHttpStream>> + Send + 'a>> {
        let mut session = ServerSession::new_http1(stream);
        match settings {
            Some(settings) => (*settings).apply_to_session(&mut session),
            None => session.set_keepalive(Some(self.limits.keepalive_timeout.as_secs().max(1))),
        }
        if stopping {
            session.set_keepalive(None);
        }
        session.set_read_timeout(Some(self.limits.body_timeout));
        session.set_write_timeout(Some(self.limits.send_timeout));
        // pingora hands back no bytes of a next request with the stream (pipelining is off,
        // so it closes a connection that sent some), so the head read here is all of it.
        session.set_pipelined_prefix(head);
        self.app.process_new_http(session, shutdown)
    }
}

/// The peer's address as the stream's digest has it (after a PROXY header, the client's).
pub fn peer_ip(stream: &Stream) -> Option<IpAddr> {
    let digest = stream.get_socket_digest()?;
    Some(digest.peer_addr()?.as_inet()?.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_ends_at_its_empty_line_with_crlf_or_lf() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 0), Some(27));
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: a\n\nbody", 0), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n", 0), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r", 0), None);
        // Scanning on from where the last read ended still finds an end split across reads.
        let whole = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(head_end(whole, whole.len() - 3), Some(27));
    }

    #[test]
    fn the_uri_limit_looks_at_the_request_target() {
        let line = |n: usize| format!("GET /{} HTTP/1.1\r\n", "a".repeat(n - 1));
        assert!(!uri_too_long(line(100).as_bytes(), 100));
        assert!(uri_too_long(line(101).as_bytes(), 100));
        // A target still coming in is too long as soon as it passes the limit.
        assert!(uri_too_long(
            format!("GET /{}", "a".repeat(200)).as_bytes(),
            100
        ));
        assert!(!uri_too_long(b"GET /abc", 100));
        // A line with no space and no end is cut once it could hold no method and URI.
        assert!(uri_too_long(&[b'x'; 200], 100));
        assert!(!uri_too_long(&[b'x'; 120], 100));
    }
}
