//! The data path: pingora's `ProxyHttp` for switchback.
//!
//! Per request: load the live [`RoutingTable`] once, route by host and path to a service, take
//! the service's active pool (or its canary, or the pool an override names: see
//! [`crate::split`]) and count the request in flight there, pick a healthy backend
//! round robin, and proxy. While the backend has the whole request and owes its answer, the
//! request waits in its worker thread's list of [`crate::read_deadline`]. A failed attempt is
//! tried again, on another backend of the same pool, when [`crate::retry`] says it is safe. At
//! the end, count the request in its pool's metrics and send an access-log record down the
//! worker thread's lane to the log's writer. Nothing here waits on a lock another thread holds
//! for more than a moment, formats a log line or writes to a file.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{ErrorSource, ErrorType};

use switchback_certs::ChallengeStore;
use switchback_config::Encoding;

use crate::access_log::AccessLog;
use crate::answers::{OwnAnswer, BAD_GATEWAY, BODY_TOO_LARGE, GATEWAY_TIMEOUT, NO_BACKEND};
use crate::compress;
use crate::headers::Vars;
use crate::host_and_path::HostAndPath;
use crate::long_lived::LongLivedGuard;
use crate::metrics::Metrics;
use crate::policy::{Admission, Ending, Facts, Policy, Socket};
use crate::pool::{InFlight, Tried};
use crate::read_deadline;
use crate::request_id::RequestId;
use crate::retry::{self, FailedAttempt, Failure, RetryReason};
use crate::routing::RoutingTable;
use crate::split;
use crate::text::push_ip;
use crate::tunnel::{BackendConnect, Splice};

/// The proxy service.
pub struct SwitchbackProxy {
    /// The decisions it shares with switchback's own HTTP/1 path.
    policy: Arc<Policy>,
    /// The write deadline of HTTP/2 answers (HTTP/1.1 gets it from the connection wrapper).
    send_timeout: Duration,
}

impl SwitchbackProxy {
    pub fn new(table: Arc<ArcSwap<RoutingTable>>, metrics: Arc<Metrics>) -> SwitchbackProxy {
        SwitchbackProxy {
            policy: Arc::new(Policy::new(table, metrics)),
            send_timeout: switchback_config::defaults::SEND_TIMEOUT,
        }
    }

    /// The policy, shared with switchback's own HTTP/1 path once configured.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.clone()
    }

    fn configure(&mut self) -> &mut Policy {
        Arc::get_mut(&mut self.policy).expect("the proxy is configured before it is shared")
    }

    /// Signs bucket cookies with `signer` (its key kept in the state dir, so that cookies
    /// outlive a restart).
    pub fn with_bucket_signer(mut self, signer: split::BucketSigner) -> SwitchbackProxy {
        self.configure().buckets = signer;
        self
    }

    /// The forwarding-header trust and the client deadlines of `[server]`.
    pub fn with_server(mut self, server: &switchback_config::ServerConfig) -> SwitchbackProxy {
        let policy = self.configure();
        policy.trusted_proxies = server.trusted_proxies.clone();
        policy.max_request_body = server.max_request_body;
        self.send_timeout = server.send_timeout;
        self
    }

    /// Fills in the peer, whether it is a trusted proxy, and the client (see
    /// [`Policy::identify`]).
    fn identify_client(&self, session: &Session, ctx: &mut RequestCtx) {
        let Some(peer) = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
        else {
            return;
        };
        ctx.peer = Some(peer);
        let forwarded_for = session.req_header().headers.get_all(&X_FORWARDED_FOR);
        let (client, trusted) = self
            .policy
            .identify(peer, forwarded_for.iter().map(|v| v.as_bytes()));
        ctx.client = Some(client);
        ctx.from_trusted_proxy = trusted;
    }

    pub fn with_access_log(mut self, log: Option<AccessLog>) -> SwitchbackProxy {
        self.configure().access_log = log;
        self
    }

    /// Answers ACME challenges from `challenges`, and redirects to HTTPS on `https_port`.
    pub fn with_tls(
        mut self,
        challenges: Option<Arc<ChallengeStore>>,
        https_port: Option<u16>,
    ) -> SwitchbackProxy {
        let policy = self.configure();
        policy.challenges = challenges;
        policy.https_port = https_port.filter(|p| *p != 443);
        self
    }

    /// The proxy's own answer. The connection stays open for the next request unless the
    /// answer closes it; after a request with a body (never read) pingora closes it.
    async fn answer_own(&self, session: &mut Session, answer: &OwnAnswer) -> Result<()> {
        if answer.close {
            session.set_keepalive(None);
        }
        let resp = answer.response_header()?;
        let head_only = answer.body.is_empty() || session.req_header().method == http::Method::HEAD;
        session
            .write_response_header(Box::new(resp), head_only)
            .await?;
        if !head_only {
            session
                .write_response_body(Some(Bytes::copy_from_slice(&answer.body)), true)
                .await?;
        }
        Ok(())
    }
}

/// What one request carries through its phases.
#[derive(Default)]
pub struct RequestCtx {
    /// The generation this request was routed by, kept for its whole life (retries included).
    table: Option<Arc<RoutingTable>>,
    service: usize,
    pool: usize,
    tried: Tried,
    /// Attempts so far (each call to `upstream_peer`).
    attempts: u32,
    /// The current attempt handed the whole request, body included, to its connection.
    request_sent: bool,
    /// Counts this request in its pool's in-flight gauge until the context is dropped.
    in_flight: Option<InFlight>,
    /// The backend (index into the pool) of the last attempt.
    backend: Option<usize>,
    started: Option<Instant>,
    /// Whether the request came over TLS.
    tls: bool,
    /// The connection's peer.
    peer: Option<IpAddr>,
    /// The client's address (see [`SwitchbackProxy::identify_client`]).
    client: Option<IpAddr>,
    /// The peer is a trusted proxy: its forwarding headers are kept and appended to.
    from_trusted_proxy: bool,
    /// Answered by the proxy itself (ACME challenge, HTTPS redirect): not a pool's traffic.
    answered_here: bool,
    /// A canary bucket drawn for this client, to send back in the sticky cookie.
    new_bucket: Option<u32>,
    /// The pool came from an override header or cookie.
    forced: bool,
    /// The split assigned this request while a canary runs: its answer counts in the pool's
    /// judged numbers (what rollouts decide on).
    judged: bool,
    /// When the request was all sent to the backend (judged requests only).
    sent: Option<Instant>,
    /// The backend's time from `sent` to its response header.
    backend_time: Option<Duration>,
    /// The request carried the override header / cookie, which must not reach the backend.
    override_header_seen: bool,
    override_cookie_seen: bool,
    /// The current attempt's backend connection was an idle keep-alive one.
    reused: Option<bool>,
    /// The request's `Authorization` was the login of the service's access rule: the backend
    /// does not get it.
    strip_authorization: bool,
    /// Refused by an access rule, for this reason.
    denied: Option<&'static str>,
    /// The service's request body limit (0: none), and the body bytes read so far.
    body_limit: usize,
    body_read: usize,
    /// The encoding the client takes that the service compresses with, if any.
    encoding: Option<Encoding>,
    /// The backend connection of the current attempt, and its [`read_deadline::identity`].
    upstream_fd: Option<std::os::fd::RawFd>,
    upstream_identity: u64,
    /// The current attempt's backend read deadline is kept by [`read_deadline`], not pingora.
    deadline_here: bool,
    /// The current attempt's backend has started its answer.
    answer_started: bool,
    /// The wait on the backend, while the request is all sent and its answer not all read.
    backend_wait: read_deadline::Wait,
    /// Registers an upgraded connection (a WebSocket) with its pool, once the backend said 101.
    long_lived: Option<LongLivedGuard>,
    /// An upgrade request's connections, which switchback carries itself once upgraded.
    splice: Option<Arc<Splice>>,
    /// Compresses the answer's body, once its head said it would.
    compressor: Option<compress::Compressor>,
    /// For the access log only: the Host header (or authority) as the client sent it; the
    /// path and query are appended at the end.
    host_and_path: HostAndPath,
    /// `$request_id`, when the log or a header rule wants it.
    request_id: Option<RequestId>,
}

impl RequestCtx {
    fn route(&self) -> Option<(&crate::routing::ServiceRoute, &Arc<crate::pool::Pool>)> {
        let service = &self.table.as_ref()?.services[self.service];
        Some((service, &service.pools[self.pool]))
    }

    /// Counts a failure of the current attempt's backend, and says whether another attempt may
    /// follow for `retry`: attempts are left and a backend can take it (the same one, after a
    /// reused connection failed, when no other is left).
    fn after_failure(&mut self, kind: RetryReason, retry: Option<RetryReason>) -> bool {
        let Some(table) = self.table.clone() else {
            return false;
        };
        let service = &table.services[self.service];
        crate::policy::after_failure(
            service,
            &service.pools[self.pool],
            (self.backend, self.attempts),
            &mut self.tried,
            kind,
            retry,
        )
    }
}

const X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: http::HeaderName = http::HeaderName::from_static("x-forwarded-proto");
const X_REAL_IP: http::HeaderName = http::HeaderName::from_static("x-real-ip");
const HTTP: http::HeaderValue = http::HeaderValue::from_static("http");
const HTTPS: http::HeaderValue = http::HeaderValue::from_static("https");

#[async_trait]
impl ProxyHttp for SwitchbackProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::default()
    }

    /// No downstream modules: switchback passes bodies through as the backend sent them, and
    /// pingora's default (a disabled compression module) still costs a call per request phase.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    /// Its answers of its own (a challenge, a redirect, a 503 or 413) are boxed where they are
    /// awaited: pingora boxes this filter's future for every request, and copies all of it
    /// into the box, so a future sized for those rare answers (about 1.4 KB) would cost every
    /// request a copy of that size.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        if session.is_http2() {
            // HTTP/1.1 connections get their deadlines from the connection wrapper; pingora
            // has no read deadline for HTTP/2 streams, only this one.
            session.set_write_timeout(Some(self.send_timeout));
        }
        if self.policy.records() {
            ctx.started = Some(Instant::now());
        }
        let req = session.req_header();
        let raw_host = req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri.authority().map(|a| a.as_str()))
            .unwrap_or("");
        if self.policy.access_log.is_some() {
            ctx.host_and_path = HostAndPath::with_host(raw_host);
        }
        ctx.tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        self.identify_client(session, ctx);
        let req = session.req_header();
        let facts = Facts {
            host: raw_host,
            path: req.uri.path(),
            headers: &req.headers,
            client: ctx.client,
            tls: ctx.tls,
            get_or_head: matches!(req.method, http::Method::GET | http::Method::HEAD),
            declared_length: declared_length(req),
            now: ctx.started,
            socket: Socket::Digest(session.digest().and_then(|d| d.socket_digest.as_deref())),
        };
        let admission = self.policy.admit(&facts);
        let route = match admission {
            Admission::Forward(route) => route,
            other => {
                let uri = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
                let local = || facts.local();
                let Some(answer) =
                    OwnAnswer::of(&self.policy, &other, raw_host, uri, ctx.tls, local)
                else {
                    return Ok(false);
                };
                ctx.answered_here = answer.answered_here;
                Box::pin(self.answer_own(session, &answer)).await?;
                return Ok(true);
            }
        };
        match self.policy.guard(&route, &facts) {
            Ok(passed) => ctx.strip_authorization = passed.strip_authorization,
            Err(denial) => {
                self.policy.denied(&route, &denial);
                ctx.denied = Some(denial.reason());
                ctx.service = route.service;
                ctx.pool = route.pool;
                ctx.table = Some(route.table.clone());
                drop(route);
                Box::pin(self.answer_own(session, &OwnAnswer::denied(&denial))).await?;
                return Ok(true);
            }
        }
        let config = &route.service().config;
        if !config.compress.is_empty() {
            ctx.encoding = compress::choose(
                session
                    .req_header()
                    .headers
                    .get(http::header::ACCEPT_ENCODING)
                    .map(|v| v.as_bytes()),
                &config.compress,
            );
        }
        let given = || {
            let value = session.req_header().headers.get("x-request-id");
            value.map(|v| v.as_bytes())
        };
        if route.service().request_headers.uses_request_id() {
            ctx.request_id = Some(RequestId::of(given()));
        } else if self.policy.access_log.is_some() {
            ctx.request_id = given().and_then(RequestId::given);
        }
        ctx.service = route.service;
        ctx.pool = route.pool;
        ctx.new_bucket = route.new_bucket;
        ctx.forced = route.forced;
        ctx.judged = route.judged;
        ctx.override_header_seen = route.override_header_seen;
        ctx.override_cookie_seen = route.override_cookie_seen;
        ctx.body_limit = route.body_limit;
        ctx.in_flight = Some(route.in_flight);
        ctx.table = Some(route.table);
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let (service, pool) = ctx
            .route()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "request was not routed"))?;
        let read_timeout = service.config.read_timeout;
        match pool.select(ctx.tried) {
            Some((index, backend)) => {
                let mut peer = Box::new(backend.peer.clone());
                if let Some(splice) = Splice::of(session.as_ref()) {
                    // Connected by switchback, to carry the connection once upgraded; never a
                    // pooled connection.
                    let config = &service.config;
                    splice.set_read_timeout(config.read_timeout);
                    peer.options.custom_l4 = Some(Arc::new(BackendConnect::new(
                        splice.clone(),
                        config.connect_timeout,
                    )));
                    peer.group_key = splice.group();
                    // And a connection whose backend refused the upgrade is not kept either:
                    // no later request is in its group.
                    peer.options.idle_timeout = Some(Duration::ZERO);
                    ctx.splice = Some(splice);
                }
                // The backend's read deadline: switchback's own (crate::read_deadline), but for
                // an upgrade switchback carries, which keeps deadlines of its own once upgraded.
                ctx.deadline_here = ctx.splice.is_none();
                if !ctx.deadline_here {
                    peer.options.read_timeout = Some(read_timeout);
                }
                ctx.answer_started = false;
                ctx.tried.add(index);
                ctx.backend = Some(index);
                ctx.attempts += 1;
                ctx.request_sent = false;
                Ok(peer)
            }
            None => Err(Error::explain(
                ErrorType::HTTPStatus(503),
                format!("no healthy backend in pool {}", pool.name),
            )),
        }
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        ctx.backend_wait.end();
        // The backend never had the request: any method may go elsewhere, its body permitting.
        let retry = body_held(session, ctx).then_some(RetryReason::Connect);
        e.set_retry(ctx.after_failure(RetryReason::Connect, retry));
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        // A backend silent past read_timeout had its connection shut down, which pingora saw
        // as the connection's end: it is a read timeout.
        let e = if ctx.backend_wait.end() {
            backend_timed_out()
        } else {
            e
        };
        // As pingora's default does: the error log names the backend.
        let mut e = e.more_context(format!("Peer: {peer}"));
        e.set_retry(false);
        let failure = match (e.esource(), e.etype()) {
            (ErrorSource::Upstream, ErrorType::ReadTimedout | ErrorType::WriteTimedout) => {
                Failure::Timeout
            }
            (ErrorSource::Upstream, _) => Failure::Error,
            // The client's side, or the proxy's own: nothing a backend did.
            _ => return e,
        };
        let Some((service, _)) = ctx.route() else {
            return e;
        };
        let config = &service.config;
        let attempt = FailedAttempt {
            failure,
            reused: client_reused,
            request_sent: ctx.request_sent,
            answer_started: session.response_written().is_some(),
            body_held: body_held(session, ctx),
            replayable_method: session.req_header().method.is_idempotent()
                || config.retry_non_idempotent,
        };
        let (kind, retry) = retry::after_failure(&attempt, config.retry_on);
        e.set_retry(ctx.after_failure(kind, retry));
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if ctx.strip_authorization {
            upstream_request.remove_header(&http::header::AUTHORIZATION);
        }
        if ctx.override_header_seen || ctx.override_cookie_seen {
            // An override carries the secret: it is the proxy's business, never the backend's.
            if let Some((service, _)) = ctx.route() {
                let overrides = &service.overrides;
                if let Some(header) = overrides
                    .header
                    .as_ref()
                    .filter(|_| ctx.override_header_seen)
                {
                    upstream_request.remove_header(header);
                }
                if let Some(cookie) = overrides
                    .cookie
                    .as_deref()
                    .filter(|_| ctx.override_cookie_seen)
                {
                    let kept = split::cookies_without(&upstream_request.headers, cookie);
                    upstream_request.remove_header(&http::header::COOKIE);
                    if let Some(kept) = kept {
                        upstream_request.insert_header(http::header::COOKIE, kept)?;
                    }
                }
            }
        }
        // Forwarding headers: a trusted proxy's are kept and appended to; anyone else's are
        // replaced by what this proxy saw. An HTTP/1.x request from anyone else had that done
        // to its head already, by the connection loop (crate::forwarding).
        if ctx.from_trusted_proxy || session.is_http2() {
            set_forwarding_headers(upstream_request, ctx)?;
        }
        if let Some((service, _)) = ctx.route().filter(|(s, _)| !s.request_headers.is_empty()) {
            let req = session.req_header();
            let vars = Vars {
                client: ctx.client,
                host: req
                    .headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .or_else(|| req.uri.authority().map(|a| a.as_str()))
                    .unwrap_or(""),
                tls: ctx.tls,
                request_id: ctx.request_id.as_ref(),
                remote_port: crate::policy::peer_port(
                    session.digest().and_then(|d| d.socket_digest.as_deref()),
                ),
            };
            service
                .request_headers
                .apply_to_request(upstream_request, &vars)?;
        }
        Ok(())
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        fd: std::os::fd::RawFd,
        digest: Option<&pingora::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.upstream_fd = Some(fd);
        ctx.reused = Some(reused);
        if !reused {
            if let Some((_, pool)) = ctx.route() {
                if let Some(m) = ctx.backend.and_then(|i| pool.backend_metrics.get(i)) {
                    m.opened.inc();
                }
            }
        }
        // Kept with the connection's digest: queried once per connection, not per request.
        ctx.upstream_identity = digest
            .and_then(|d| d.socket_digest.as_ref())
            .and_then(|s| Some((s.local_addr()?.as_inet()?, s.peer_addr()?.as_inet()?)))
            .map_or(0, |(local, peer)| read_deadline::identity(*local, *peer));
        Ok(())
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if ctx.body_limit > 0 {
            // A body without a declared length (chunked, or HTTP/2) is cut where it crosses
            // the limit: the backend gets a request that never ends, and drops it.
            ctx.body_read += body.as_ref().map_or(0, |b| b.len());
            if ctx.body_read > ctx.body_limit {
                self.policy.client_counters.body_too_large.inc();
                return Err(Error::explain(
                    ErrorType::HTTPStatus(413),
                    "request body over max_request_body",
                ));
            }
        }
        if end_of_stream {
            ctx.request_sent = true;
            if ctx.judged {
                ctx.sent = Some(Instant::now());
            }
            if ctx.answer_started {
                // The answer came before the request's end (an upgraded connection whose client
                // closed, or a backend that answered early): the backend connection may go with
                // the request, and the wait ends here.
                ctx.backend_wait.end();
            } else if let (true, Some(fd), Some((service, _))) =
                (ctx.deadline_here, ctx.upstream_fd, ctx.route())
            {
                let limit = service.config.read_timeout;
                ctx.backend_wait
                    .start((fd, ctx.upstream_identity), limit, || {
                        match session.as_downstream().stream() {
                            Some(stream) => Some(read_deadline::Client::Fd(stream.id())),
                            None => session
                                .digest()
                                .and_then(|d| d.socket_digest.clone())
                                .map(read_deadline::Client::Digest),
                        }
                    });
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(sent) = ctx.sent {
            // The backend's answer head has just come in.
            ctx.backend_time = Some(sent.elapsed());
        }
        ctx.answer_started = true;
        if answer_ends_with_head(session, upstream_response) {
            ctx.backend_wait.end();
        } else {
            // More is to come (for an upgrade pingora carries, what either side sends).
            ctx.backend_wait.answered();
        }
        if upstream_response.status == http::StatusCode::SWITCHING_PROTOCOLS {
            // A WebSocket (or another upgrade) from here on: no longer a request in flight,
            // which a drain would wait on for as long as the client likes, but a long-lived
            // connection of its pool, which a drain closes once its timeout passes.
            let fd = match &ctx.splice {
                Some(splice) => splice.backend_fd(),
                None => ctx.upstream_fd,
            };
            if let (Some((_, pool)), Some(fd)) = (ctx.route(), fd) {
                ctx.long_lived = pool.stats.long_lived.register(fd);
                if ctx.long_lived.is_some() {
                    ctx.in_flight = None;
                }
            }
        }
        if ctx.tls {
            if let Some(hsts) = ctx.route().and_then(|(s, _)| s.config.hsts.as_deref()) {
                upstream_response.insert_header("strict-transport-security", hsts)?;
            }
        }
        if let Some(bucket) = ctx.new_bucket {
            if let Some((service, _)) = ctx.route() {
                if let switchback_config::Sticky::Cookie(name) = &service.config.canary.sticky {
                    let cookie =
                        split::sticky_cookie(name, self.policy.buckets.value(bucket), ctx.tls);
                    upstream_response.append_header("set-cookie", cookie)?;
                }
            }
        }
        let Some((service, _)) = ctx.route() else {
            return Ok(());
        };
        let config = &service.config;
        let mut compressor = None;
        if !config.compress.is_empty()
            && compress::eligible(
                session.req_header().method == http::Method::HEAD,
                upstream_response,
                config.compress_min_length,
            )
        {
            compress::add_vary(upstream_response)?;
            if let Some(encoding) = ctx.encoding {
                let http10 = session.req_header().version == http::Version::HTTP_10;
                compressor = Some(compress::start(encoding, upstream_response, http10)?);
                if http10 {
                    // Its end is the close.
                    session.set_keepalive(None);
                }
            }
        }
        if !service.response_headers.is_empty() {
            service
                .response_headers
                .apply_to_response(upstream_response)?;
        }
        ctx.compressor = compressor;
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if ctx.backend_wait.expired() {
            // The backend went silent mid-answer and its connection was shut down: what came
            // last is not the answer's end (which a close would mark, for an answer without a
            // length).
            return Err(backend_timed_out());
        }
        if end_of_stream {
            ctx.backend_wait.end();
        } else {
            ctx.backend_wait.answered();
        }
        if let Some(compressor) = ctx.compressor.as_mut() {
            *body = Some(compressor.encode(body.as_deref().unwrap_or(&[]), end_of_stream)?);
        }
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        _ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
                if e.esource() == &ErrorSource::Upstream =>
            {
                504
            }
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::ReadTimedout => {
                        // The body stalled past client_body_timeout.
                        self.policy.client_counters.body_timeouts.inc();
                        408
                    }
                    ErrorType::WriteTimedout => {
                        // The client took no answer data for send_timeout.
                        self.policy.client_counters.send_timeouts.inc();
                        0
                    }
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        if code > 0 {
            let body: &'static [u8] = match code {
                503 => NO_BACKEND,
                413 => BODY_TOO_LARGE,
                504 => GATEWAY_TIMEOUT,
                502 => BAD_GATEWAY,
                _ => b"",
            };
            let _ = session
                .respond_error_with_body(code, Bytes::from_static(body))
                .await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        ctx.backend_wait.end();
        let Some(ending) = self.ending(session, ctx) else {
            return;
        };
        let bytes = session.body_bytes_sent() as u64;
        if let Some(splice) = ctx.splice.take().filter(|s| s.upgraded()) {
            // Carried on by switchback (crate::tunnel): recorded when the connection ends, and
            // long-lived in its pool until then.
            let (metrics, log) = (self.policy.metrics.clone(), self.policy.access_log.clone());
            let long_lived = ctx.long_lived.take();
            splice.ended(
                e.is_none(),
                Box::new(move |carried| {
                    ending.record(&metrics, log.as_ref(), bytes + carried);
                    drop(long_lived);
                }),
            );
            return;
        }
        ending.record(&self.policy.metrics, self.policy.access_log.as_ref(), bytes);
    }
}

/// The forwarding headers of a request that did not get them in its head (see
/// [`crate::forwarding`]): a trusted proxy's are kept and appended to; anyone else's are
/// replaced by what this proxy saw (X-Real-IP and Forwarded, which it does not write, are
/// removed), so a backend never believes a client's own claim.
fn set_forwarding_headers(upstream_request: &mut RequestHeader, ctx: &RequestCtx) -> Result<()> {
    if let Some(peer) = ctx.peer {
        let mut value = String::new();
        if ctx.from_trusted_proxy {
            for prior in upstream_request.headers.get_all(&X_FORWARDED_FOR) {
                value.push_str(&String::from_utf8_lossy(prior.as_bytes()));
                value.push_str(", ");
            }
        }
        push_ip(&mut value, peer);
        let value = http::HeaderValue::from_maybe_shared(Bytes::from(value))
            .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "x-forwarded-for", e))?;
        // Named by a static string: pingora keeps the name's case as given.
        upstream_request.insert_header("X-Forwarded-For", value)?;
    }
    if !ctx.from_trusted_proxy || !upstream_request.headers.contains_key(&X_FORWARDED_PROTO) {
        let proto = if ctx.tls { &HTTPS } else { &HTTP };
        upstream_request.insert_header("X-Forwarded-Proto", proto.clone())?;
    }
    if !ctx.from_trusted_proxy {
        if upstream_request.headers.contains_key(&X_REAL_IP) {
            upstream_request.remove_header(&X_REAL_IP);
        }
        if upstream_request
            .headers
            .contains_key(&http::header::FORWARDED)
        {
            upstream_request.remove_header(&http::header::FORWARDED);
        }
    }
    Ok(())
}

/// The error of a backend silent past its `read_timeout`, as pingora's own read deadline
/// would give it.
fn backend_timed_out() -> Box<Error> {
    Error::explain(
        ErrorType::ReadTimedout,
        "the backend sent nothing for read_timeout",
    )
    .into_up()
}

/// Whether the backend's answer is all in its head (no body follows), as pingora reads it: an
/// answer to HEAD, a 204 or 304, or one of `Content-Length: 0` not chunked. An upgrade's 101 is
/// followed by whatever the two sides send.
fn answer_ends_with_head(session: &Session, answer: &ResponseHeader) -> bool {
    match answer.status.as_u16() {
        204 | 304 => return true,
        // 100 Continue, say: the answer is still to come; after a 101, the upgraded connection.
        100..=199 => return false,
        _ => {}
    }
    if session.req_header().method == http::Method::HEAD {
        return true;
    }
    // Nearly every answer has a length, and most not 0: one lookup.
    let zero_length = answer
        .headers
        .get(http::header::CONTENT_LENGTH)
        .is_some_and(|v| !v.is_empty() && v.as_bytes().iter().all(|&b| b == b'0'));
    zero_length
        && !answer
            .headers
            .get(http::header::TRANSFER_ENCODING)
            .is_some_and(|v| {
                v.as_bytes()
                    .trim_ascii_end()
                    .to_ascii_lowercase()
                    .ends_with(b"chunked")
            })
}

impl SwitchbackProxy {
    fn ending(&self, session: &Session, ctx: &mut RequestCtx) -> Option<Ending> {
        let started = ctx.started?;
        let req = session.req_header();
        let mut host_and_path = std::mem::take(&mut ctx.host_and_path);
        if self.policy.access_log.is_some() {
            host_and_path.push_path(
                req.uri
                    .path_and_query()
                    .map_or(req.uri.path(), |p| p.as_str()),
            );
        }
        Some(Ending {
            started,
            // 499, as nginx logs it, when the client went away before any response.
            status: session
                .response_written()
                .map_or(499, |r| r.status.as_u16()),
            table: ctx.table.take(),
            service: ctx.service,
            pool: ctx.pool,
            backend: ctx.backend,
            judged: ctx.judged,
            backend_time: ctx.backend_time,
            answered_here: ctx.answered_here,
            client: ctx.client,
            host_and_path,
            method: req.method.clone(),
            forced: ctx.forced,
            retries: ctx.attempts.saturating_sub(1),
            reused: ctx.reused,
            denied: ctx.denied,
            request_id: ctx.request_id.take(),
        })
    }
}

/// The request's declared `Content-Length`, if it has one that parses.
fn declared_length(req: &RequestHeader) -> Option<u64> {
    let value = req.headers.get(http::header::CONTENT_LENGTH)?;
    std::str::from_utf8(value.as_bytes())
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether what was read of the request body so far is all held for another attempt, within
/// the service's `retry_buffer` (what is not read yet is read by the next attempt itself).
fn body_held(session: &Session, ctx: &RequestCtx) -> bool {
    let Some((service, _)) = ctx.route() else {
        return false;
    };
    let downstream = session.as_ref();
    retry::body_held(
        downstream.body_bytes_read(),
        downstream.retry_buffer_truncated(),
        service.config.retry_buffer,
    )
}
