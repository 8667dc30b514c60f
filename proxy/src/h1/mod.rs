//! switchback's own HTTP/1.1 path: a request the connection loop has read the head of is
//! served here, on the connection's thread, without pingora's session, header maps, boxed
//! request future or shared connection pool.
//!
//! ```text
//!   head (read by connections.rs) ─▶ framing::parse_request ─▶ policy::admit ─▶ upstream head
//!        │ not for this path: Declined, and pingora serves it          written as edits
//!        ▼
//!   upstream::take / connect ─▶ head + body (checked chunk by chunk) ─▶ answer head parsed,
//!   edited, written ─▶ answer body by its framing ─▶ connection kept (upstream::give_back)
//!   ─▶ policy::Ending::record
//! ```
//!
//! The decisions are the policy's ([`crate::policy`]), the same functions pingora's hooks call,
//! and so are the proxy's own answers ([`crate::answers`]: ACME challenge, HTTPS redirect, a
//! redirect service's, no service, a body over the limit, an access rule's refusal). What this
//! path does not carry goes to pingora on the same connection: upgrades (WebSockets), an
//! `Expect` other than `100-continue`, targets not in origin form, and HTTP/1.0 requests
//! without a Host.
//!
//! A service that compresses has its answers compressed here, with the same decisions as on
//! pingora's path ([`crate::compress`]): the body is read by its framing (chunks decoded), goes
//! through the encoder, and reaches the client in chunks, or until the close for HTTP/1.0.
//!
//! An `Expect: 100-continue` is answered here, with `100 Continue` once a backend connection
//! is ready and the body is wanted; the backend never sees the `Expect`. An HTTP/1.0 client
//! keeps its connection when it asked to and the answer has a length; a chunked answer reaches
//! it as plain data, ended by the close.
//!
//! Deadlines: the backend's `read_timeout` is the per-thread ticker's ([`crate::read_deadline`]);
//! the client's body and send deadlines use the connection's one timer, armed only when a read
//! or write has to wait.

pub mod framing;
pub mod upstream;

use std::cell::RefCell;
use std::future::Future;
use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use pingora::protocols::Stream;
use tokio::io::AsyncWriteExt;
use tokio::time::Sleep;

use crate::answers::OwnAnswer;
use crate::answers::{BAD_GATEWAY, BODY_TOO_LARGE, GATEWAY_TIMEOUT, NO_BACKEND};
use crate::compress::{self, AnswerHeaders, Compressor};
use crate::forwarding::is_forwarding_header;
use crate::headers::Vars;
use crate::host_and_path::HostAndPath;
use crate::policy::{self, Admission, Ending, Facts, Policy, Route, Socket};
use crate::pool::Tried;
use crate::read_deadline;
use crate::recycle::Recycled;
use crate::request_id::RequestId;
use crate::retry::{self, FailedAttempt, Failure, RetryReason};
use crate::routing::RoutingTable;
use crate::split::{self, RequestHeaders};
use framing::{Chunks, Framing, MAX_HEADERS};
use switchback_config::Encoding;
use upstream::Upstream;

/// The path, shared by every connection of the process.
pub struct Http1 {
    policy: Arc<Policy>,
    body_timeout: Duration,
    send_timeout: Duration,
}

/// What the connection loop knows of a connection.
pub struct Conn<'a> {
    pub peer: Option<IpAddr>,
    pub tls: bool,
    /// The forwarding lines (None: the peer is a trusted proxy, whose own are appended to).
    pub forwarding: Option<&'a [u8]>,
    /// The process is stopping: answer with `connection: close`.
    pub stopping: bool,
}

/// How a request on this path ended.
#[derive(Debug)]
pub enum Outcome {
    /// Not for this path: the head, untouched, for pingora.
    Declined(BytesMut),
    /// Answered; the connection goes on, with what came of the next request (maybe nothing).
    Next(BytesMut),
    /// Answered, or failed: close the connection.
    Close,
    /// The head breaks a framing rule: answer 400 and close.
    Refused(framing::Refusal),
}

/// What becomes of a request this path takes. The large variant is the common one: boxing it
/// would cost every forwarded request an allocation.
#[allow(clippy::large_enum_variant)]
enum Prepared {
    Forward(Plan),
    /// Answered by the proxy itself.
    Own(Box<Own>),
}

/// A request the proxy answers itself, and what its record needs.
struct Own {
    answer: OwnAnswer,
    head_len: usize,
    /// The request has a body, which is not read: the connection closes after the answer.
    has_body: bool,
    /// The client asked to close after this request.
    close: bool,
    http10: bool,
    head_request: bool,
    method: http::Method,
    client: Option<IpAddr>,
    host_and_path: HostAndPath,
    /// Refused by its service's access rules: the generation, service and pool it was routed
    /// to, and the reason.
    denied: Option<(Arc<RoutingTable>, usize, usize, &'static str)>,
}

/// A request this path forwards: what the policy decided, and the facts it goes on with.
struct Plan {
    route: Route,
    head_len: usize,
    framing: Framing,
    /// The client asked to close after this request.
    close: bool,
    /// The client speaks HTTP/1.0: no chunks, and keep-alive only when said.
    http10: bool,
    /// The client waits for `100 Continue` before its body.
    expect_continue: bool,
    head_request: bool,
    method: http::Method,
    host_and_path: HostAndPath,
    client: Option<IpAddr>,
    tls: bool,
    /// For the access log.
    request_id: Option<RequestId>,
    /// The service compresses: the encoding this client takes of its list (None: none).
    compress: Option<Option<Encoding>>,
}

/// A request's body as far as it came with its head, ready to send to any attempt.
struct Body {
    /// The body bytes the head's buffer held, in the form they are sent in.
    first: Vec<u8>,
    /// Where the body (as far as the buffer holds it) ends in the buffer.
    end: usize,
    /// Bytes of a Content-Length body still to come from the client.
    left: u64,
    chunks: Option<Chunks>,
    /// Body bytes read, for the body limit.
    read: u64,
    /// `first` no longer holds all that was sent (over the service's `retry_buffer`): no
    /// other attempt can have the body.
    overflow: bool,
    /// What the head's buffer held past the body's start was moved to `pending`.
    split: bool,
    /// Chunked bytes read and not yet taken (a line cut by a read's end).
    pending: Vec<u8>,
    /// The client waits for `100 Continue` before it sends the body (not yet sent).
    continue_wanted: bool,
}

impl Body {
    /// Keeps `sent` for another attempt, within `limit`.
    fn hold(&mut self, sent: &[u8], limit: usize) {
        if self.overflow {
            return;
        }
        if self.first.len() + sent.len() > limit {
            self.overflow = true;
            self.first = Vec::new();
        } else {
            self.first.extend_from_slice(sent);
        }
    }

    fn complete(&self) -> bool {
        self.left == 0 && self.chunks.as_ref().is_none_or(Chunks::done)
    }
}

/// Why an attempt failed.
enum AttemptError {
    /// The backend failed: the failure's kind, and whether the whole request had been sent.
    Backend(Failure, bool),
    /// The request body broke a rule, went over the limit, or the client failed: the answer
    /// to give, if any (0: close without one).
    Client(u16),
}

/// An answer that could not be passed on; true when nothing of it reached the client yet.
struct Unsent(bool);

/// Room kept for a backend's answer head; a larger head is refused (502).
const MAX_ANSWER_HEAD: usize = 64 * 1024;
/// The buffer a body passes through.
const BODY_BUFFER: usize = 32 * 1024;

thread_local! {
    /// Buffers kept for this thread's next requests: no allocation per request once warm.
    static BUFFERS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

fn take_buffer() -> Vec<u8> {
    BUFFERS
        .try_with(|b| b.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_else(|| Vec::with_capacity(BODY_BUFFER))
}

fn give_buffer(mut buf: Vec<u8>) {
    buf.clear();
    if buf.capacity() <= 4 * BODY_BUFFER {
        let _ = BUFFERS.try_with(|b| {
            let mut b = b.borrow_mut();
            if b.len() < 256 {
                b.push(buf);
            }
        });
    }
}

/// A head's headers as the split reads them.
struct Parsed<'a, 'b>(&'a [httparse::Header<'b>]);

impl RequestHeaders for Parsed<'_, '_> {
    fn first(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    fn cookies(&self) -> impl Iterator<Item = &[u8]> {
        self.0
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("cookie"))
            .map(|h| h.value)
    }
}

impl Http1 {
    pub fn new(policy: Arc<Policy>, body_timeout: Duration, send_timeout: Duration) -> Http1 {
        Http1 {
            policy,
            body_timeout,
            send_timeout,
        }
    }

    /// Serves the request whose head (and what followed it) is in `head`, or declines it.
    /// `deadline` is the connection's timer, free while a request is served.
    pub async fn serve(
        &self,
        stream: &mut Stream,
        head: BytesMut,
        conn: &Conn<'_>,
        deadline: &mut Pin<Box<Sleep>>,
    ) -> Outcome {
        let started = self.policy.records().then(Instant::now);
        let mut out = take_buffer();
        let plan = match self.prepare(&head, stream, conn, started, &mut out) {
            Ok(Some(Prepared::Forward(plan))) => plan,
            Ok(Some(Prepared::Own(own))) => {
                give_buffer(out);
                // Boxed: rare beside a forwarded request, and its state would size every
                // request's.
                return Box::pin(self.answer_own(stream, head, *own, conn, started, deadline))
                    .await;
            }
            Ok(None) => {
                give_buffer(out);
                return Outcome::Declined(head);
            }
            Err(refusal) => {
                give_buffer(out);
                return Outcome::Refused(refusal);
            }
        };
        let mut answer = take_buffer();
        let outcome = self
            .forward(
                stream,
                head,
                conn,
                deadline,
                plan,
                started,
                &mut out,
                &mut answer,
            )
            .await;
        give_buffer(out);
        give_buffer(answer);
        outcome
    }

    /// Parses the head, asks the policy, and writes the upstream request head into `out`:
    /// the plan, None to decline, or the rule the head broke.
    fn prepare(
        &self,
        buf: &[u8],
        stream: &Stream,
        conn: &Conn<'_>,
        started: Option<Instant>,
        out: &mut Vec<u8>,
    ) -> Result<Option<Prepared>, framing::Refusal> {
        let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let Some(head) = framing::parse_request(buf, &mut headers)? else {
            return Ok(None);
        };
        if head.upgrade || !head.target.starts_with('/') {
            return Ok(None);
        }
        let expect_continue = head.expect && expects_continue(head.headers);
        if (head.expect && !expect_continue)
            || (head.minor == 0 && (head.host.is_empty() || head.expect))
        {
            return Ok(None);
        }
        let Ok(host) = std::str::from_utf8(head.host) else {
            return Ok(None);
        };
        let path = head.target.split('?').next().unwrap_or("/");
        let view = Parsed(head.headers);
        // From a trusted proxy: the client is the one its X-Forwarded-For names.
        let (forwarding, client) = match (conn.forwarding, conn.peer) {
            (Some(lines), peer) => (Forwarding::Lines(lines), peer),
            (None, Some(peer)) => {
                let forwarded_for = head
                    .headers
                    .iter()
                    .filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"))
                    .map(|h| h.value);
                let (client, _) = self.policy.identify(peer, forwarded_for);
                (
                    Forwarding::Append {
                        peer,
                        tls: conn.tls,
                    },
                    Some(client),
                )
            }
            (None, None) => return Ok(None),
        };
        let get_or_head = matches!(head.method, "GET" | "HEAD");
        let facts = Facts {
            host,
            path,
            headers: &view,
            client,
            tls: conn.tls,
            get_or_head,
            declared_length: match head.framing {
                Framing::Length(n) => Some(n),
                _ => None,
            },
            now: started,
            socket: Socket::Stream(stream),
        };
        let Ok(method) = http::Method::from_bytes(head.method.as_bytes()) else {
            return Ok(None);
        };
        let host_and_path = || {
            if self.policy.access_log.is_some() {
                let mut hp = HostAndPath::with_host(host);
                hp.push_path(head.target);
                hp
            } else {
                HostAndPath::default()
            }
        };
        let own = |answer: OwnAnswer, method: http::Method, host_and_path, denied| {
            Some(Prepared::Own(Box::new(Own {
                answer,
                head_len: head.len,
                has_body: !matches!(head.framing, Framing::None | Framing::Close),
                close: head.close,
                http10: head.minor == 0,
                head_request: head.method == "HEAD",
                method,
                client,
                host_and_path,
                denied,
            })))
        };
        let route = match self.policy.admit(&facts) {
            Admission::Forward(route) => route,
            other => {
                let local = || facts.local();
                let answer =
                    OwnAnswer::of(&self.policy, &other, host, head.target, conn.tls, local);
                return Ok(answer.and_then(|a| own(a, method, host_and_path(), None)));
            }
        };
        let service = route.service();
        let compress = (!service.config.compress.is_empty())
            .then(|| compress::choose(view.first("accept-encoding"), &service.config.compress));
        // Last of all: a rate rule takes from its bucket here.
        let passed = match self.policy.guard(&route, &facts) {
            Ok(passed) => passed,
            Err(denial) => {
                self.policy.denied(&route, &denial);
                let denied = (
                    route.table.clone(),
                    route.service,
                    route.pool,
                    denial.reason(),
                );
                drop(route);
                let answer = OwnAnswer::denied(&denial);
                return Ok(own(answer, method, host_and_path(), Some(denied)));
            }
        };
        let overrides = &service.overrides;
        let rules = &service.request_headers;
        let request_id = if rules.uses_request_id() {
            Some(RequestId::of(head.request_id))
        } else if self.policy.access_log.is_some() {
            head.request_id.and_then(RequestId::given)
        } else {
            None
        };
        let edits = Edits {
            strip_authorization: passed.strip_authorization,
            forwarding,
            rules,
            vars: Vars {
                client,
                host,
                tls: conn.tls,
                request_id: request_id.as_ref(),
                remote_port: if rules.is_empty() {
                    None
                } else {
                    Socket::Stream(stream).peer_port()
                },
            },
            override_header: overrides
                .header
                .as_ref()
                .filter(|_| route.override_header_seen)
                .map(|h| h.as_str()),
            override_cookie: overrides
                .cookie
                .as_deref()
                .filter(|_| route.override_cookie_seen),
        };
        write_request_head(out, &head, &edits)?;
        let host_and_path = host_and_path();
        Ok(Some(Prepared::Forward(Plan {
            route,
            head_len: head.len,
            framing: head.framing,
            close: head.close,
            http10: head.minor == 0,
            expect_continue,
            head_request: head.method == "HEAD",
            method,
            host_and_path,
            client,
            tls: conn.tls,
            request_id,
            compress,
        })))
    }

    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        stream: &mut Stream,
        mut head: BytesMut,
        conn: &Conn<'_>,
        deadline: &mut Pin<Box<Sleep>>,
        mut plan: Plan,
        started: Option<Instant>,
        out: &mut Vec<u8>,
        answer: &mut Vec<u8>,
    ) -> Outcome {
        let client_fd = stream.id();
        let mut host_and_path = std::mem::take(&mut plan.host_and_path);
        let mut body = match first_body(&head, &plan) {
            Ok(body) => body,
            Err(status) => {
                let _ = self.answer_error(stream, status).await;
                return Outcome::Close;
            }
        };
        let route = &plan.route;
        let service = route.service();
        let pool = route.pool();
        let config = &service.config;
        let replayable = plan.method.is_idempotent() || config.retry_non_idempotent;
        let mut tried = Tried::default();
        let mut attempts = 0u32;
        let mut backend = None;
        let mut wait = read_deadline::Wait::default();
        if body.first.len() > config.retry_buffer {
            body.overflow = true;
        }
        // Whether the current attempt's backend connection was an idle one, for the log.
        let mut reused = None;
        let ending = |status: u16,
                      (backend, reused): (Option<usize>, Option<bool>),
                      backend_time,
                      attempts: u32| {
            started.map(|started| Ending {
                started,
                status,
                table: Some(route.table.clone()),
                service: route.service,
                pool: route.pool,
                backend,
                judged: route.judged,
                backend_time,
                answered_here: false,
                client: plan.client,
                host_and_path: HostAndPath::default(),
                method: plan.method.clone(),
                forced: route.forced,
                retries: attempts.saturating_sub(1),
                reused,
                denied: None,
                request_id: plan.request_id.clone(),
            })
        };
        // Attempts until one has the answer's head, or none is left.
        let (mut up, sent_at, addr, mut edited) = loop {
            let Some((index, chosen)) = pool.select(tried) else {
                let status = if attempts == 0 { 503 } else { 502 };
                let record = ending(status, (backend, reused), None, attempts);
                return self.fail(stream, status, record, &mut host_and_path).await;
            };
            tried.add(index);
            attempts += 1;
            backend = Some(index);
            let addr = chosen.addr;
            let mut up = match upstream::take(addr) {
                Some(up) => {
                    reused = Some(true);
                    up
                }
                // Boxed: a connect is rare beside a reuse, and its state would size every
                // request's.
                None => match Box::pin(upstream::connect(addr, config.connect_timeout)).await {
                    Ok(up) => {
                        reused = Some(false);
                        if let Some(m) = pool.backend_metrics.get(index) {
                            m.opened.inc();
                        }
                        up
                    }
                    Err(e) => {
                        let again = policy::after_failure(
                            service,
                            pool,
                            (backend, attempts),
                            &mut tried,
                            RetryReason::Connect,
                            (!body.overflow).then_some(RetryReason::Connect),
                        );
                        if again {
                            continue;
                        }
                        let status = if e.kind() == std::io::ErrorKind::TimedOut {
                            504
                        } else {
                            502
                        };
                        let record = ending(status, (backend, reused), None, attempts);
                        return self.fail(stream, status, record, &mut host_and_path).await;
                    }
                },
            };
            let result = async {
                self.send(&mut up, stream, &mut head, &mut body, route, deadline, out)
                    .await?;
                let sent_at = route.judged.then(Instant::now);
                wait.start((up.fd(), up.identity), config.read_timeout, || {
                    Some(read_deadline::Client::Fd(client_fd))
                });
                // The answer's head, once whole, is edited into `out` for the client. A body not
                // all read (the backend answered early) leaves the connection unusable.
                let keep_client = !plan.close && !conn.stopping && body.complete();
                let edited = read_answer_head(&mut up, answer, plan.head_request, |head| {
                    edit_answer(head, out, &plan, keep_client, &self.policy)
                })
                .await
                .map_err(|()| {
                    let failure = if wait.end() {
                        Failure::Timeout
                    } else {
                        Failure::Error
                    };
                    AttemptError::Backend(failure, true)
                })?;
                Ok::<_, AttemptError>((sent_at, edited))
            }
            .await;
            match result {
                Ok((sent_at, edited)) => break (up, sent_at, addr, edited),
                Err(AttemptError::Client(status)) => {
                    wait.end();
                    if status > 0 {
                        let _ = self.answer_error(stream, status).await;
                    }
                    self.record(
                        ending(
                            if status > 0 { status } else { 499 },
                            (backend, reused),
                            None,
                            attempts,
                        ),
                        &mut host_and_path,
                        0,
                    );
                    return Outcome::Close;
                }
                Err(AttemptError::Backend(failure, request_sent)) => {
                    wait.end();
                    let attempt = FailedAttempt {
                        failure,
                        reused: up.reused,
                        request_sent,
                        answer_started: false,
                        body_held: !body.overflow,
                        replayable_method: replayable,
                    };
                    let (kind, retry) = retry::after_failure(&attempt, config.retry_on);
                    let again = policy::after_failure(
                        service,
                        pool,
                        (backend, attempts),
                        &mut tried,
                        kind,
                        retry,
                    );
                    if again {
                        continue;
                    }
                    let status = if failure == Failure::Timeout {
                        504
                    } else {
                        502
                    };
                    let record = ending(status, (backend, reused), None, attempts);
                    return self.fail(stream, status, record, &mut host_and_path).await;
                }
            }
        };
        let backend_time = sent_at.map(|t| t.elapsed());
        wait.answered();
        let relayed = self
            .relay_answer(stream, &mut up, answer, out, &mut edited, &wait, deadline)
            .await;
        let cut = wait.end() || relayed.is_err();
        if let Err(Unsent(true)) = relayed {
            let record = ending(502, (backend, reused), backend_time, attempts);
            return self.fail(stream, 502, record, &mut host_and_path).await;
        }
        let (sent, clean) = relayed.unwrap_or((0, false));
        if !cut && clean && !edited.backend_closes && body.complete() {
            if let Some(metrics) = backend.and_then(|i| pool.backend_metrics.get(i)) {
                let keep = upstream::Keep {
                    keepalive: config.upstream.keepalive,
                    idle_timeout: config.upstream.idle_timeout,
                    metrics,
                };
                upstream::give_back(addr, up, &keep);
            }
        }
        self.record(
            ending(edited.status, (backend, reused), backend_time, attempts),
            &mut host_and_path,
            sent,
        );
        if cut || !edited.keep_client {
            return Outcome::Close;
        }
        // What came after this request's body: the start of the next one.
        let end = body.end.min(head.len());
        bytes::Buf::advance(&mut head, end);
        Outcome::Next(head)
    }

    /// Writes the proxy's own answer to a request it does not forward, and records it. The
    /// connection goes on unless the answer closes it, the client asked to, or the request has
    /// a body (which is never read).
    async fn answer_own(
        &self,
        stream: &mut Stream,
        mut head: BytesMut,
        own: Own,
        conn: &Conn<'_>,
        started: Option<Instant>,
        deadline: &mut Pin<Box<Sleep>>,
    ) -> Outcome {
        let keep = !own.answer.close && !own.close && !own.has_body && !conn.stopping;
        let mut out = take_buffer();
        own.answer
            .write_http1(&mut out, own.head_request, keep, own.http10);
        let written = if keep {
            self.write_client(stream, &out, deadline).await
        } else {
            self.write_and_close(stream, &out).await.map_err(|_| ())
        };
        give_buffer(out);
        if let Some(started) = started {
            let (table, service, pool, denied) = match own.denied {
                Some((table, service, pool, reason)) => (Some(table), service, pool, Some(reason)),
                None => (None, 0, 0, None),
            };
            let mut host_and_path = own.host_and_path;
            let ending = Ending {
                started,
                status: if written.is_ok() {
                    own.answer.status
                } else {
                    499
                },
                table,
                service,
                pool,
                backend: None,
                judged: false,
                backend_time: None,
                answered_here: own.answer.answered_here,
                client: own.client,
                host_and_path: HostAndPath::default(),
                method: own.method,
                forced: false,
                retries: 0,
                reused: None,
                denied,
                request_id: None,
            };
            let bytes = if own.head_request {
                0
            } else {
                own.answer.body.len() as u64
            };
            self.record(Some(ending), &mut host_and_path, bytes);
        }
        if written.is_err() || !keep {
            return Outcome::Close;
        }
        let end = own.head_len.min(head.len());
        bytes::Buf::advance(&mut head, end);
        Outcome::Next(head)
    }

    /// Gives the proxy's own error answer `status`, records the request, and closes.
    async fn fail(
        &self,
        stream: &mut Stream,
        status: u16,
        ending: Option<Ending>,
        host_and_path: &mut HostAndPath,
    ) -> Outcome {
        let _ = self.answer_error(stream, status).await;
        self.record(ending, host_and_path, 0);
        Outcome::Close
    }

    fn record(&self, ending: Option<Ending>, host_and_path: &mut HostAndPath, bytes: u64) {
        if let Some(mut ending) = ending {
            ending.host_and_path = std::mem::take(host_and_path);
            ending.record(&self.policy.metrics, self.policy.access_log.as_ref(), bytes);
        }
    }

    /// Sends the request (head and body) on `up`, the body as far as it is held first, then
    /// the rest as the client sends it. While it waits on the client, it watches the backend:
    /// a backend that closes fails the attempt (one whose body is still held is tried again),
    /// and one that answers early has its answer read at once (the client's connection then
    /// closes after it, as its body was not all read).
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        up: &mut Upstream,
        stream: &mut Stream,
        head: &mut BytesMut,
        body: &mut Body,
        route: &Route,
        deadline: &mut Pin<Box<Sleep>>,
        out: &[u8],
    ) -> Result<(), AttemptError> {
        // A backend that takes no bytes for read_timeout has failed as one that sends none.
        let config = &route.service().config;
        let limit = config.read_timeout;
        let backend_failed = |written: Option<std::io::Result<()>>| {
            let failure = if written.is_none() {
                Failure::Timeout
            } else {
                Failure::Error
            };
            AttemptError::Backend(failure, false)
        };
        match within(write_two(&mut up.stream, out, &body.first), deadline, limit).await {
            Some(Ok(())) => {}
            other => return Err(backend_failed(other)),
        }
        if body.complete() {
            return Ok(());
        }
        if body.continue_wanted {
            // The backend is there and takes the body: the client may send it.
            body.continue_wanted = false;
            if self
                .write_client(stream, b"HTTP/1.1 100 Continue\r\n\r\n", deadline)
                .await
                .is_err()
            {
                return Err(AttemptError::Client(0));
            }
        }
        if !body.split {
            // What follows the body's start in the head's buffer: a chunk line cut by the
            // buffer's end, to be taken with what comes next.
            body.pending = head[body.end.min(head.len())..].to_vec();
            head.truncate(body.end.min(head.len()));
            body.split = true;
        }
        let mut buf = take_buffer();
        let mut encoded = Vec::new();
        // In a recycled block: a body that streams is rarer than one that came with its head,
        // and its state would otherwise size every request's.
        let result = Recycled::new(async {
            loop {
                buf.clear();
                let want = if body.chunks.is_some() {
                    BODY_BUFFER
                } else {
                    (body.left as usize).min(BODY_BUFFER)
                };
                let read = within(
                    async {
                        tokio::select! {
                            biased;
                            read = read_some(stream, &mut buf, want) => Some(read),
                            _ = up.stream.readable() => None,
                        }
                    },
                    deadline,
                    self.body_timeout,
                )
                .await;
                let n = match read {
                    Some(Some(Ok(0))) | Some(Some(Err(_))) => return Err(AttemptError::Client(0)),
                    None => {
                        self.policy.client_counters.body_timeouts.inc();
                        return Err(AttemptError::Client(408));
                    }
                    Some(None) => match backend_spoke(&up.stream) {
                        // A stale readiness: nothing came.
                        None => continue,
                        // An answer before the body's end: read it.
                        Some(true) => return Ok(()),
                        Some(false) => return Err(AttemptError::Backend(Failure::Error, false)),
                    },
                    Some(Some(Ok(n))) => n,
                };
                if body.chunks.is_none() {
                    body.read += n as u64;
                }
                if route.body_limit > 0 && body.read > route.body_limit as u64 {
                    self.policy.client_counters.body_too_large.inc();
                    return Err(AttemptError::Client(413));
                }
                let to_send: &[u8] = match body.chunks.as_mut() {
                    None => {
                        body.left -= n as u64;
                        &buf
                    }
                    Some(chunks) => {
                        body.pending.extend_from_slice(&buf);
                        encoded.clear();
                        let taken = chunks
                            .feed(&body.pending, &mut encoded)
                            .map_err(|_| AttemptError::Client(400))?;
                        body.pending.drain(..taken);
                        body.read = chunks.data();
                        if route.body_limit > 0 && body.read > route.body_limit as u64 {
                            self.policy.client_counters.body_too_large.inc();
                            return Err(AttemptError::Client(413));
                        }
                        &encoded
                    }
                };
                body.hold(to_send, config.retry_buffer);
                match within(up.stream.write_all(to_send), deadline, limit).await {
                    Some(Ok(())) => {}
                    other => return Err(backend_failed(other)),
                }
                if body.complete() {
                    // What the client sent past the body's end is its next request.
                    head.extend_from_slice(&body.pending);
                    return Ok(());
                }
            }
        })
        .await;
        give_buffer(buf);
        result
    }

    /// Writes the answer head in `out` and its body, as its framing says, from `answer` (which
    /// holds the head and what followed it) and then from the backend: the body bytes sent,
    /// and whether the backend sent nothing past the answer's end.
    #[allow(clippy::too_many_arguments)]
    async fn relay_answer(
        &self,
        stream: &mut Stream,
        up: &mut Upstream,
        answer: &mut Vec<u8>,
        out: &mut Vec<u8>,
        edited: &mut Edited,
        wait: &read_deadline::Wait,
        deadline: &mut Pin<Box<Sleep>>,
    ) -> Result<(u64, bool), Unsent> {
        let head_end = out.len();
        let mut sent = 0u64;
        // Bytes of the body sent compressed, when it is.
        let mut compressed = 0u64;
        let mut left = match edited.framing {
            Framing::Length(n) => n,
            _ => u64::MAX,
        };
        let mut chunks = (edited.framing == Framing::Chunked).then(|| {
            if edited.dechunk {
                Chunks::plain()
            } else {
                Chunks::default()
            }
        });
        // The body bytes that came with the head.
        let mut pending: Vec<u8> = Vec::new();
        let first = &answer[edited.head_len..];
        let first_len = match edited.framing {
            Framing::None => 0,
            Framing::Length(n) => (n.min(first.len() as u64)) as usize,
            Framing::Chunked => {
                let chunks = chunks.as_mut().ok_or(Unsent(true))?;
                let taken = chunks.feed(first, out).map_err(|_| Unsent(true))?;
                pending.extend_from_slice(&first[taken..]);
                0
            }
            Framing::Close => first.len(),
        };
        // More than the answer: the backend is not to be trusted with another request.
        let mut clean = edited.framing == Framing::Chunked || first.len() == first_len;
        out.extend_from_slice(&first[..first_len]);
        sent += first_len as u64;
        left = left.saturating_sub(first_len as u64);
        let framing = edited.framing;
        let done = |left: u64, chunks: &Option<Chunks>| match framing {
            Framing::None => true,
            Framing::Length(_) => left == 0,
            Framing::Chunked => chunks.as_ref().is_some_and(Chunks::done),
            Framing::Close => false,
        };
        let http10 = edited.http10;
        let mut encoder = edited.encoder.as_mut();
        if let Some(encoder) = encoder.as_mut() {
            let end = done(left, &chunks);
            compressed +=
                compress_body(encoder, out, head_end, end, http10).map_err(|()| Unsent(true))?;
        }
        self.write_client(stream, out, deadline)
            .await
            .map_err(|()| Unsent(false))?;
        // In a recycled block: most answers come whole with their head, and the state of the
        // loop would otherwise size every request's.
        Recycled::new(async {
            while !done(left, &chunks) {
                answer.clear();
                let want = (left.min(BODY_BUFFER as u64)) as usize;
                let n = read_some(&mut up.stream, answer, want)
                    .await
                    .map_err(|_| Unsent(false))?;
                if n == 0 {
                    if framing == Framing::Close && !wait.expired() {
                        if let Some(encoder) = encoder.as_mut() {
                            out.clear();
                            compressed += compress_body(encoder, out, 0, true, http10)
                                .map_err(|()| Unsent(false))?;
                            self.write_client(stream, out, deadline)
                                .await
                                .map_err(|()| Unsent(false))?;
                        }
                        break;
                    }
                    return Err(Unsent(false));
                }
                wait.answered();
                out.clear();
                match chunks.as_mut() {
                    Some(chunks) => {
                        pending.extend_from_slice(answer);
                        let taken = chunks.feed(&pending, out).map_err(|_| Unsent(false))?;
                        pending.drain(..taken);
                        sent += n as u64;
                    }
                    None => {
                        out.extend_from_slice(answer);
                        left = left.saturating_sub(n as u64);
                        sent += n as u64;
                    }
                }
                if let Some(encoder) = encoder.as_mut() {
                    let end = done(left, &chunks);
                    compressed +=
                        compress_body(encoder, out, 0, end, http10).map_err(|()| Unsent(false))?;
                }
                self.write_client(stream, out, deadline)
                    .await
                    .map_err(|()| Unsent(false))?;
            }
            Ok(())
        })
        .await?;
        if chunks.is_some() && !pending.is_empty() {
            clean = false;
        }
        if edited.encoder.is_some() {
            sent = compressed;
        }
        Ok((sent, clean))
    }

    async fn write_client(
        &self,
        stream: &mut Stream,
        bytes: &[u8],
        deadline: &mut Pin<Box<Sleep>>,
    ) -> Result<(), ()> {
        if bytes.is_empty() {
            return Ok(());
        }
        // Flushed at once: an answer that streams (server-sent events, a long poll) reaches the
        // client as the backend sends it.
        let write = async {
            stream.write_all(bytes).await?;
            stream.flush().await
        };
        match within(write, deadline, self.send_timeout).await {
            Some(Ok(())) => Ok(()),
            Some(Err(_)) => Err(()),
            None => {
                self.policy.client_counters.send_timeouts.inc();
                Err(())
            }
        }
    }

    /// A short error answer of the proxy's own, after which the connection closes. Boxed: the
    /// rare error path's state (a drain buffer among it) would otherwise size every request's.
    async fn answer_error(&self, stream: &mut Stream, status: u16) -> std::io::Result<()> {
        Box::pin(self.answer_error_now(stream, status)).await
    }

    async fn answer_error_now(&self, stream: &mut Stream, status: u16) -> std::io::Result<()> {
        let (line, body): (&str, &[u8]) = match status {
            400 => ("400 Bad Request", b""),
            408 => ("408 Request Timeout", b""),
            413 => ("413 Payload Too Large", BODY_TOO_LARGE),
            503 => ("503 Service Unavailable", NO_BACKEND),
            504 => ("504 Gateway Timeout", GATEWAY_TIMEOUT),
            _ => ("502 Bad Gateway", BAD_GATEWAY),
        };
        let mut text = Vec::with_capacity(128 + body.len());
        text.extend_from_slice(b"HTTP/1.1 ");
        text.extend_from_slice(line.as_bytes());
        text.extend_from_slice(b"\r\ncontent-type: text/plain\r\ncontent-length: ");
        text.extend_from_slice(body.len().to_string().as_bytes());
        text.extend_from_slice(b"\r\nconnection: close\r\n\r\n");
        text.extend_from_slice(body);
        self.write_and_close(stream, &text).await
    }

    /// Writes `text`, the last the client gets, and closes: what the client still sends (the
    /// rest of a body) is read and dropped for a moment, so that the close does not reset the
    /// connection before the client read the answer.
    async fn write_and_close(&self, stream: &mut Stream, text: &[u8]) -> std::io::Result<()> {
        let write = async {
            stream.write_all(text).await?;
            stream.flush().await?;
            stream.shutdown().await
        };
        match tokio::time::timeout(self.send_timeout, write).await {
            Ok(result) => result?,
            Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
        }
        let drain = async {
            let mut sink = [0u8; 4096];
            // Up to the close, as nginx's lingering close: a client still sending a large body
            // that it gets a reset for may never read the answer.
            let mut left = 16 << 20;
            while left > 0 {
                match tokio::io::AsyncReadExt::read(stream, &mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left -= n.min(left),
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
        Ok(())
    }
}

/// The request body as far as the head's buffer holds it, checked (and for chunks, written
/// anew), or the status to refuse it with.
fn first_body(head: &[u8], plan: &Plan) -> Result<Body, u16> {
    let after = &head[plan.head_len.min(head.len())..];
    let limit = plan.route.body_limit as u64;
    match plan.framing {
        Framing::None | Framing::Close => Ok(Body {
            first: Vec::new(),
            end: plan.head_len,
            left: 0,
            chunks: None,
            overflow: false,
            split: false,
            pending: Vec::new(),
            read: 0,
            continue_wanted: false,
        }),
        Framing::Length(n) => {
            let have = (n.min(after.len() as u64)) as usize;
            if limit > 0 && n > limit {
                // GET or HEAD with a body over the limit (other methods were refused before).
                return Err(413);
            }
            Ok(Body {
                first: after[..have].to_vec(),
                end: plan.head_len + have,
                left: n - have as u64,
                chunks: None,
                overflow: false,
                split: false,
                pending: Vec::new(),
                read: have as u64,
                continue_wanted: plan.expect_continue && n > have as u64,
            })
        }
        Framing::Chunked => {
            let mut chunks = Chunks::default();
            let mut first = Vec::with_capacity(after.len() + 16);
            let taken = chunks.feed(after, &mut first).map_err(|_| 400u16)?;
            if limit > 0 && chunks.data() > limit {
                return Err(413);
            }
            Ok(Body {
                first,
                end: plan.head_len + taken,
                left: 0,
                overflow: false,
                split: false,
                pending: Vec::new(),
                read: chunks.data(),
                continue_wanted: plan.expect_continue && !chunks.done(),
                chunks: Some(chunks),
            })
        }
    }
}

/// The forwarding headers a request goes on with.
enum Forwarding<'a> {
    /// The connection's lines, written by this proxy; the client's own are removed.
    Lines(&'a [u8]),
    /// From a trusted proxy: its `X-Forwarded-For` goes on with `peer` appended, its other
    /// forwarding headers as they are (an `X-Forwarded-Proto` is added when it sent none).
    Append { peer: IpAddr, tls: bool },
}

/// What the upstream request head changes of the client's.
struct Edits<'a> {
    forwarding: Forwarding<'a>,
    rules: &'a crate::headers::HeaderRules,
    /// What the rules' variables stand for.
    vars: Vars<'a>,
    /// The pool override's header and cookie, when the request carried them: the proxy's
    /// business, never the backend's.
    override_header: Option<&'a str>,
    override_cookie: Option<&'a str>,
    /// The client's login to an access rule, which the backend does not get.
    strip_authorization: bool,
}

impl Edits<'_> {
    /// Whether the client's header `name` is the proxy's business: the pool override's header
    /// or cookie, or the login of an access rule.
    fn removes(&self, name: &[u8]) -> bool {
        self.override_header
            .is_some_and(|o| name.eq_ignore_ascii_case(o.as_bytes()))
            || (self.override_cookie.is_some() && name.eq_ignore_ascii_case(b"cookie"))
            || (self.strip_authorization && name.eq_ignore_ascii_case(b"authorization"))
    }
}

/// Writes the upstream request head: the request line, the client's headers but those that
/// are hop by hop, `Expect` (answered here), forwarding headers, overrides, or named by a header
/// rule; then the forwarding lines, the rules' headers, and the empty line.
fn write_request_head(
    out: &mut Vec<u8>,
    head: &framing::RequestHead<'_, '_>,
    edits: &Edits<'_>,
) -> Result<(), framing::Refusal> {
    let rules = edits.rules;
    let mut lines = 0;
    out.clear();
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let named = head.names_headers;
    let trusted = matches!(edits.forwarding, Forwarding::Append { .. });
    // Whether any header of the client's may be the proxy's own business: rare, so one test
    // per header in the common case.
    let removes = edits.override_header.is_some()
        || edits.override_cookie.is_some()
        || edits.strip_authorization;
    for h in head.headers {
        let name = h.name.as_bytes();
        if framing::is_hop_by_hop(name)
            || (head.expect && name.eq_ignore_ascii_case(b"expect"))
            || (is_forwarding_header(name)
                && (!trusted || name.eq_ignore_ascii_case(b"x-forwarded-for")))
            || (named && framing::dropped_by_connection(head.headers, name))
            || (!rules.is_empty() && rules.touches(name))
            || (removes && edits.removes(name))
        {
            continue;
        }
        lines += 1;
        push_header(out, name, h.value);
    }
    if let Some(cookie) = edits.override_cookie {
        if let Some(kept) = split::cookies_without(&Parsed(head.headers), cookie) {
            lines += 1;
            push_header(out, b"cookie", kept.as_bytes());
        }
    }
    match edits.forwarding {
        Forwarding::Lines(forwarding) => {
            lines += forwarding.iter().filter(|&&b| b == b'\n').count();
            out.extend_from_slice(forwarding);
        }
        Forwarding::Append { peer, tls } => {
            lines += 1;
            out.extend_from_slice(b"X-Forwarded-For: ");
            for h in head.headers {
                if h.name.eq_ignore_ascii_case("x-forwarded-for") {
                    out.extend_from_slice(h.value);
                    out.extend_from_slice(b", ");
                }
            }
            let mut ip = String::with_capacity(40);
            crate::text::push_ip(&mut ip, peer);
            out.extend_from_slice(ip.as_bytes());
            out.extend_from_slice(b"\r\n");
            if !has_header(head.headers, "x-forwarded-proto") {
                lines += 1;
                out.extend_from_slice(if tls {
                    b"X-Forwarded-Proto: https\r\n"
                } else {
                    b"X-Forwarded-Proto: http\r\n"
                });
            }
        }
    }
    if lines > crate::forwarding::MAX_HEADER_LINES {
        return Err(framing::Refusal::TooManyHeaders);
    }
    rules.write_sets(out, Some(&edits.vars));
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// Compresses the body data at `out[from..]` in its place, framed for the client (in a chunk,
/// unless `http10`), with the stream's end (and the last chunk) when `end`: the compressed
/// bytes written.
fn compress_body(
    encoder: &mut Compressor,
    out: &mut Vec<u8>,
    from: usize,
    end: bool,
    http10: bool,
) -> Result<u64, ()> {
    let encoded = encoder.encode(&out[from..], end).map_err(|_| ())?;
    out.truncate(from);
    if !encoded.is_empty() {
        if !http10 {
            framing::push_hex(out, encoded.len() as u64);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(&encoded);
        if !http10 {
            out.extend_from_slice(b"\r\n");
        }
    }
    if end && !http10 {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    Ok(encoded.len() as u64)
}

/// Whether the request's one `Expect` header asks for `100-continue`.
fn expects_continue(headers: &[httparse::Header<'_>]) -> bool {
    let mut expects = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("expect"));
    matches!(
        (expects.next(), expects.next()),
        (Some(h), None) if h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue")
    )
}

/// Whether a head has a header `name` (lowercase).
fn has_header(headers: &[httparse::Header<'_>], name: &str) -> bool {
    headers.iter().any(|h| h.name.eq_ignore_ascii_case(name))
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// What the answer's head said, once written anew for the client.
struct Edited {
    status: u16,
    head_len: usize,
    framing: Framing,
    /// The answer is chunked and only its data is read on (for a client that takes no chunks,
    /// or for the compressor).
    dechunk: bool,
    backend_closes: bool,
    keep_client: bool,
    /// The body is compressed on its way with this encoder, and goes to the client in chunks
    /// (HTTP/1.1) or until the close (HTTP/1.0).
    encoder: Option<Compressor>,
    /// The client speaks HTTP/1.0: no chunks.
    http10: bool,
}

impl AnswerHeaders for framing::AnswerHead<'_, '_> {
    fn status(&self) -> u16 {
        self.status
    }

    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> {
        self.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }
}

/// Writes the answer head `head` anew into `out` for the client: hop-by-hop headers out;
/// compression's changes, HSTS over TLS, the canary's sticky cookie, the service's response
/// rules and the connection's fate in.
fn edit_answer(
    head: &framing::AnswerHead<'_, '_>,
    out: &mut Vec<u8>,
    plan: &Plan,
    keep_client: bool,
    policy: &Policy,
) -> Edited {
    let service = plan.route.service();
    let hsts = service.config.hsts.as_deref().filter(|_| plan.tls);
    let rules = &service.response_headers;
    // Compressed when the service compresses, the answer may be, and the client takes one of
    // the service's encodings (an eligible answer says it varies on that, either way).
    let eligible = plan.compress.is_some()
        && head.framing != Framing::None
        && compress::eligible(plan.head_request, head, service.config.compress_min_length);
    let encoder = match plan.compress {
        Some(Some(encoding)) if eligible => Compressor::new(encoding).ok().map(|c| (encoding, c)),
        _ => None,
    };
    let compressing = encoder.is_some();
    let dechunk = (plan.http10 || compressing) && head.framing == Framing::Chunked;
    // An HTTP/1.0 client takes no chunks: a body of unknown length is ended by the close.
    let ends_by_close = plan.http10 && (head.framing == Framing::Chunked || compressing);
    let keep_client = keep_client && head.framing != Framing::Close && !ends_by_close;
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    let mut code = [0u8; 3];
    code[0] = b'0' + (head.status / 100) as u8;
    code[1] = b'0' + (head.status / 10 % 10) as u8;
    code[2] = b'0' + (head.status % 10) as u8;
    out.extend_from_slice(&code);
    out.push(b' ');
    out.extend_from_slice(head.reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    let named = head.names_headers;
    // With a Transfer-Encoding, a Content-Length is not to be believed, nor passed on.
    let coded = has_header(head.headers, "transfer-encoding");
    for h in head.headers {
        let name = h.name.as_bytes();
        if framing::is_hop_by_hop(name)
            || (named && framing::dropped_by_connection(head.headers, name))
            || (coded && name.eq_ignore_ascii_case(b"content-length"))
            || (dechunk && name.eq_ignore_ascii_case(b"transfer-encoding"))
            || (compressing
                && (compress::DROPPED
                    .iter()
                    .any(|d| name.eq_ignore_ascii_case(d.as_bytes()))
                    || name.eq_ignore_ascii_case(b"etag")))
            || (hsts.is_some() && name.eq_ignore_ascii_case(b"strict-transport-security"))
            || (!rules.is_empty() && rules.touches(name))
        {
            continue;
        }
        push_header(out, name, h.value);
    }
    if eligible && !compress::varies_on_encoding(head) && !rules.touches(b"vary") {
        out.extend_from_slice(b"vary: Accept-Encoding\r\n");
    }
    if let Some((encoding, _)) = &encoder {
        if !rules.touches(b"content-encoding") {
            push_header(out, b"content-encoding", encoding.as_str().as_bytes());
        }
        if !plan.http10 {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        if let Some(etag) = head.first("etag").and_then(compress::weakened_etag) {
            if !rules.touches(b"etag") {
                push_header(out, b"etag", &etag);
            }
        }
    }
    if let Some(hsts) = hsts {
        push_header(out, b"strict-transport-security", hsts.as_bytes());
    }
    if let (Some(bucket), switchback_config::Sticky::Cookie(name)) =
        (plan.route.new_bucket, &service.config.canary.sticky)
    {
        out.extend_from_slice(b"set-cookie: ");
        split::write_sticky_cookie(out, name, policy.buckets.value(bucket), plan.tls);
        out.extend_from_slice(b"\r\n");
    }
    rules.write_sets(out, None);
    if !keep_client {
        out.extend_from_slice(b"connection: close\r\n");
    } else if plan.http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Edited {
        status: head.status,
        head_len: head.len,
        framing: head.framing,
        dechunk,
        backend_closes: head.close,
        keep_client,
        encoder: encoder.map(|(_, c)| c),
        http10: plan.http10,
    }
}

/// Reads from the backend into `answer` until it holds a whole final answer head (1xx
/// interim answers other than 101 are skipped), and gives it to `on_head`. Err on a close, a
/// failure, a malformed or oversized head.
async fn read_answer_head<T>(
    up: &mut Upstream,
    answer: &mut Vec<u8>,
    head_request: bool,
    on_head: impl FnOnce(&framing::AnswerHead<'_, '_>) -> T,
) -> Result<T, ()> {
    answer.clear();
    loop {
        if !answer.is_empty() {
            let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
            match framing::parse_answer(answer, &mut headers, head_request) {
                Ok(Some(head)) if head.status == 101 => return Err(()),
                Ok(Some(head)) if (100..200).contains(&head.status) => {
                    let len = head.len;
                    answer.drain(..len);
                    continue;
                }
                Ok(Some(head)) => return Ok(on_head(&head)),
                Ok(None) if answer.len() < MAX_ANSWER_HEAD => {}
                _ => return Err(()),
            }
        }
        match read_some(&mut up.stream, answer, BODY_BUFFER).await {
            Ok(0) | Err(_) => return Err(()),
            Ok(_) => {}
        }
    }
}

/// What a backend connection that became readable while the request was being sent holds:
/// Some(true) an answer, Some(false) its close or a failure, None nothing (a stale readiness).
fn backend_spoke(up: &tokio::net::TcpStream) -> Option<bool> {
    let mut probe = [0u8; 1];
    let mut probe = tokio::io::ReadBuf::new(&mut probe);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match up.poll_peek(&mut cx, &mut probe) {
        Poll::Pending => None,
        Poll::Ready(Ok(n)) => Some(n > 0),
        Poll::Ready(Err(_)) => Some(false),
    }
}

/// Reads at most `want` bytes, appended to `buf`.
async fn read_some<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    want: usize,
) -> std::io::Result<usize> {
    buf.reserve(want);
    let len = buf.len();
    let spare = &mut buf.spare_capacity_mut()[..want];
    let mut read = tokio::io::ReadBuf::uninit(spare);
    std::future::poll_fn(|cx| Pin::new(&mut *reader).poll_read(cx, &mut read)).await?;
    let n = read.filled().len();
    // SAFETY: `n` bytes past `len` were just written by the read.
    unsafe { buf.set_len(len + n) };
    Ok(n)
}

/// Writes `a` then `b` to the backend, in one system call when it takes them.
async fn write_two(up: &mut tokio::net::TcpStream, a: &[u8], b: &[u8]) -> std::io::Result<()> {
    let mut a = a;
    let mut b = b;
    while !a.is_empty() {
        let slices = [std::io::IoSlice::new(a), std::io::IoSlice::new(b)];
        let n = up.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        if n < a.len() {
            a = &a[n..];
        } else {
            b = &b[n - a.len()..];
            a = &[];
        }
    }
    up.write_all(b).await
}

/// Runs `fut` under a deadline `limit` from now, armed only when it does not finish at its
/// first poll: None when the deadline passed first.
async fn within<F: Future>(
    fut: F,
    deadline: &mut Pin<Box<Sleep>>,
    limit: Duration,
) -> Option<F::Output> {
    let mut fut = pin!(fut);
    if let Poll::Ready(v) = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await {
        return Some(v);
    }
    deadline.as_mut().reset(tokio::time::Instant::now() + limit);
    tokio::select! {
        biased;
        v = fut => Some(v),
        () = deadline.as_mut() => None,
    }
}
