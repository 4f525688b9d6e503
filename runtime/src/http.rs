//! HTTP/1.1 over an established client connection: read request heads (keep-alive and
//! pipelining), route them, forward each request to a backend endpoint and stream the
//! response back.
//!
//! Framing is decided by `portcullis_core::http1` (which refuses anything ambiguous); this
//! module only moves the bytes it says belong to a message. Requests are served one at a time
//! per connection: a pipelined request is read only after the previous response was sent.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use monoio::io::AsyncWriteRentExt;
use portcullis_core::desired::{BackendProtocol, BackendTarget};
use portcullis_core::http1::{
    ChunkedDecoder, ClientBody, ClientConn, ContentLengthBody, ForwardExtras, ForwardedProto,
    HeadLimits, RequestBody, RequestHead, ResponseHead, ResponsePlan, parse_request_head,
    parse_response_head, websocket_upgrade, write_forwarded_request_head,
    write_forwarded_response_head,
};
use portcullis_core::routing::{RouteRequest, RouteTarget};
use tracing::{debug, info};

use crate::backend::{BackendConnection, ConnectError, ConnectFailure, Ejections, pick_endpoint};
use crate::bufpool;
use crate::h2c::{self, BackendRequest};
use crate::h2c_pool::{H2cConnectError, H2cStream};
use crate::metrics::{BackendFailure, RequestProtocol};
use crate::shard_state::{ShardContext, ShardPort, TargetState};
use crate::tls::{ClientIo, read_append};
use crate::websocket::{self, Upgraded};

/// Endpoints tried for one request when connecting fails, before answering 502: each a
/// different endpoint of the backend the weights chose. Retrying a connect is always safe
/// (nothing was sent); three bounds the latency dead endpoints add (three connect timeouts
/// at most, and only until the shard has ejected them).
const MAX_CONNECT_ATTEMPTS: usize = 3;

/// Most header fields in a request or response head; beyond it 431 (request) or 502.
pub(crate) const MAX_HEADERS: usize = portcullis_core::http1::DEFAULT_MAX_HEADERS;

/// Largest response head accepted from a backend; larger is a 502. Backends set cookies and
/// CORS headers; 64 KiB is far beyond what well-behaved ones send.
pub(crate) const MAX_RESPONSE_HEAD_BYTES: usize = 64 * 1024;

/// What the HTTP layer knows about the connection.
#[derive(Debug)]
pub struct ConnInfo<'a> {
    pub peer: SocketAddr,
    pub proto: ForwardedProto,
    /// The listener the TLS SNI selected (`None` on plain-HTTP ports).
    pub sni_listener: Option<usize>,
    /// Pre-encoded identity header lines of a verified client certificate.
    pub identity_headers: &'a [u8],
}

/// A routing decision for one request.
pub(crate) enum Route<'p> {
    Forward {
        target: &'p RouteTarget,
        state: &'p TargetState,
    },
    Reject(u16),
}

/// Picks the listener by Host (the 421 rule of spec §6) and the rule by the route table.
pub(crate) fn route<'p>(
    port: &'p ShardPort,
    head: &RequestHead,
    buf: &[u8],
    info: &ConnInfo<'_>,
) -> Route<'p> {
    let compiled = &port.compiled;
    let listener_index = match (head.host().filter(|h| !h.is_empty()), info.sni_listener) {
        // No Host (HTTP/1.0): the SNI's listener, else the catch-all.
        (None, Some(sni)) => sni,
        (None, None) => match compiled.hosts.resolve(None) {
            Some(i) => i,
            None => return Route::Reject(404),
        },
        (Some(host), sni) => match (compiled.hosts.resolve(Some(host)), sni) {
            (None, _) => return Route::Reject(404),
            (Some(by_host), Some(sni)) if by_host != sni => return Route::Reject(421),
            (Some(by_host), _) => by_host,
        },
    };
    let Some(listener) = compiled.listeners.get(listener_index) else {
        return Route::Reject(404);
    };
    let headers = head.headers(buf);
    let request = RouteRequest::from_head(head, buf, &headers);
    let Some((index, target)) = listener.routes.find_indexed(&request) else {
        return Route::Reject(404);
    };
    match port.routing.target(listener_index, index) {
        Some(state) => Route::Forward { target, state },
        None => Route::Reject(500),
    }
}

/// The backend a request goes to (by the rule's weights): its endpoints and its round-robin
/// cursor, or the status that says why none.
fn choose_backend<'p>(
    target: &'p RouteTarget,
    state: &'p TargetState,
) -> Result<(&'p [SocketAddr], &'p Cell<usize>, BackendProtocol), u16> {
    let Some(backend_index) = target.weights.pick(&mut state.wrr.borrow_mut()) else {
        return Err(500); // no backend configured, or all weights zero
    };
    let Some(backend) = target.backends.get(backend_index) else {
        return Err(500);
    };
    match &backend.target {
        BackendTarget::Invalid { .. } => Err(500),
        BackendTarget::Endpoints(endpoints) if endpoints.is_empty() => Err(503),
        BackendTarget::Endpoints(endpoints) => {
            let cursor = state.endpoint_cursor.get(backend_index).ok_or(500u16)?;
            Ok((endpoints, cursor, backend.protocol))
        }
    }
}

/// The endpoint for a request's next connect attempt, one it has not `tried` (see
/// [`pick_endpoint`]); the cursor moves past it, so that skipping an ejected endpoint does not
/// send its share to the one after it. `None` once every endpoint was tried.
fn next_endpoint(
    endpoints: &[SocketAddr],
    cursor: &Cell<usize>,
    tried: &[SocketAddr],
    ejections: &Ejections,
) -> Option<SocketAddr> {
    let index = pick_endpoint(endpoints, cursor.get(), tried, |e| ejections.is_ejected(e))?;
    cursor.set(index + 1);
    endpoints.get(index).copied()
}

/// One request's way to a backend: the endpoints of the backend its rule's weights chose,
/// the endpoint it tries now, and those whose connect failed (a retry goes to another one).
pub(crate) struct BackendAttempts<'p> {
    endpoints: &'p [SocketAddr],
    cursor: &'p Cell<usize>,
    endpoint: SocketAddr,
    tried: Vec<SocketAddr>,
    /// After a connection closed unanswered, only new connections: a pooled one may be as
    /// stale.
    fresh_only: bool,
    protocol: BackendProtocol,
}

impl<'p> BackendAttempts<'p> {
    /// The backend and first endpoint for a request, or the status that says why none.
    pub(crate) fn choose(
        target: &'p RouteTarget,
        state: &'p TargetState,
        ctx: &ShardContext,
    ) -> Result<Self, u16> {
        let (endpoints, cursor, protocol) = choose_backend(target, state)?;
        let endpoint = next_endpoint(endpoints, cursor, &[], &ctx.ejections).ok_or(503u16)?;
        Ok(Self {
            endpoints,
            cursor,
            endpoint,
            tried: Vec::new(),
            fresh_only: false,
            protocol,
        })
    }

    /// What the chosen backend speaks.
    pub(crate) fn protocol(&self) -> BackendProtocol {
        self.protocol
    }

    /// Whether to send the request again after its connection closed before any byte of a
    /// response ([`ForwardError::StaleConnection`], only for requests without a body): once
    /// on a new connection to the same endpoint when the closed one was pooled (it had gone
    /// stale), and to an endpoint not tried yet when the request is idempotent (RFC 9110
    /// §9.2.2; the endpoint went away with it, a killed process say), as nginx does.
    pub(crate) fn retry_unanswered(
        &mut self,
        reused: bool,
        idempotent: bool,
        ctx: &ShardContext,
    ) -> bool {
        if reused && !self.fresh_only {
            self.fresh_only = true;
            return true;
        }
        self.fresh_only = true;
        if !idempotent {
            return false;
        }
        self.tried.push(self.endpoint);
        match next_endpoint(self.endpoints, self.cursor, &self.tried, &ctx.ejections) {
            Some(next) if self.tried.len() < MAX_CONNECT_ATTEMPTS => {
                debug!(shard = ctx.index, from = %self.endpoint, to = %next, "backend closed before answering; sending the request to another endpoint");
                self.endpoint = next;
                true
            }
            _ => false,
        }
    }

    /// A connection to the current endpoint (pooled, unless a retry asks for a new one),
    /// moving on to endpoints not tried yet while connects fail, up to
    /// [`MAX_CONNECT_ATTEMPTS`].
    pub(crate) async fn connect(
        &mut self,
        ctx: &ShardContext,
        has_body: bool,
    ) -> Result<BackendConnection, ForwardError> {
        loop {
            let timeout = ctx.limits.backend_connect_timeout;
            let conn = if self.fresh_only {
                ctx.backends.connect(self.endpoint, timeout).await
            } else {
                ctx.backends.get(self.endpoint, timeout, has_body).await
            };
            match conn {
                Ok(conn) => {
                    if !conn.reused {
                        ctx.ejections.restore(self.endpoint);
                    }
                    return Ok(conn);
                }
                Err(e) => self.move_on_after(&e, ctx)?,
            }
        }
    }

    /// A stream to the current endpoint of an h2c backend, on a pooled connection with room
    /// unless `fresh`, moving on to endpoints not tried yet while connects fail, as
    /// [`Self::connect`].
    pub(crate) async fn h2c_stream(
        &mut self,
        ctx: &ShardContext,
        fresh: bool,
    ) -> Result<H2cStream, ForwardError> {
        loop {
            let stream = ctx
                .h2c_backends
                .stream(
                    self.endpoint,
                    ctx.limits.backend_connect_timeout,
                    fresh,
                    &ctx.backends,
                    &ctx.metrics,
                )
                .await;
            match stream {
                Ok(stream) => {
                    if !stream.reused {
                        ctx.ejections.restore(self.endpoint);
                    }
                    return Ok(stream);
                }
                Err(H2cConnectError::Connect(e)) => self.move_on_after(&e, ctx)?,
                Err(H2cConnectError::Handshake(_)) => return Err(ForwardError::Status(502)),
            }
        }
    }

    /// Counts a failed connect (ejecting the endpoint if it was its fault) and moves on to an
    /// endpoint not tried yet; `Err` (502) when none is left or enough were tried.
    fn move_on_after(&mut self, e: &ConnectError, ctx: &ShardContext) -> Result<(), ForwardError> {
        let failure = e.failure();
        connect_failed(ctx, self.endpoint, failure);
        debug!(
            shard = ctx.index,
            reason = failure.label(),
            error = %e,
            "backend connect failed"
        );
        self.tried.push(self.endpoint);
        match next_endpoint(self.endpoints, self.cursor, &self.tried, &ctx.ejections) {
            Some(next) if self.tried.len() < MAX_CONNECT_ATTEMPTS => {
                self.endpoint = next;
                Ok(())
            }
            _ => Err(ForwardError::Status(502)),
        }
    }

    /// Counts a response timeout against the endpoint that timed out.
    pub(crate) fn count_response_timeout<T>(
        &self,
        outcome: &Result<T, ForwardError>,
        ctx: &ShardContext,
    ) {
        if matches!(outcome, Err(ForwardError::Status(504))) {
            ctx.metrics
                .backend_failure(self.endpoint, BackendFailure::ResponseTimeout);
        }
    }
}

/// Whether a request with this method may be sent twice to the same effect (RFC 9110 §9.2.2).
pub(crate) fn is_idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    )
}

/// Reads from `conn` until `rbuf` starts with a complete response head (an informational 1xx
/// included: the caller relays or skips it and reads again). `replayable`: the request can be
/// sent again, so a pooled connection closed before any byte of the answer is stale.
pub(crate) async fn read_response_head(
    conn: &mut BackendConnection,
    rbuf: &mut Vec<u8>,
    is_head: bool,
    replayable: bool,
    ctx: &ShardContext,
) -> Result<ResponseHead, ForwardError> {
    let limits = HeadLimits {
        max_head_bytes: MAX_RESPONSE_HEAD_BYTES,
        max_headers: MAX_HEADERS,
    };
    loop {
        match parse_response_head(rbuf, is_head, &limits) {
            Ok(Some(response)) => return Ok(response),
            Ok(None) => {}
            Err(e) => {
                debug!(shard = ctx.index, error = %e, "bad response head from backend");
                return Err(ForwardError::Status(502));
            }
        }
        let read = monoio::time::timeout(
            ctx.limits.backend_response_timeout,
            read_append(&mut conn.tcp, std::mem::take(rbuf)),
        )
        .await;
        let Ok((res, buf)) = read else {
            return Err(ForwardError::Status(504));
        };
        *rbuf = buf;
        match res {
            Ok(n) if n > 0 => {}
            // Closed before any response byte: a stale pooled connection, if it was one.
            _ if rbuf.is_empty() && replayable => {
                return Err(ForwardError::StaleConnection);
            }
            _ => return Err(ForwardError::Status(502)),
        }
    }
}

/// Serves requests on one client connection until it closes, or until a backend switched it
/// to WebSocket: then the connection is the caller's to turn into a tunnel
/// ([`websocket::tunnel_h1`]).
pub async fn serve<C: ClientIo>(
    client: &mut C,
    port: &ShardPort,
    ctx: &ShardContext,
    info: &ConnInfo<'_>,
) -> Option<Upgraded> {
    let mut inbuf: Vec<u8> = Vec::new();
    loop {
        let head = match read_request_head(client, &mut inbuf, ctx).await {
            Ok(Some(head)) => head,
            Ok(None) => break,
            Err(status) => {
                send_error(client, status, false).await;
                port.metrics
                    .unrouted
                    .request(RequestProtocol::H1, status, Duration::ZERO);
                break;
            }
        };
        let started = Instant::now();
        let upgrade = websocket_upgrade(&head, &inbuf);
        let asked = match upgrade {
            Ok(false) => RequestProtocol::H1,
            Ok(true) | Err(_) => RequestProtocol::WebSocket,
        };
        let mut upgraded = None;
        let (keep_going, status, protocol, metrics) = match route(port, &head, &inbuf, info) {
            Route::Reject(status) => {
                // Without a body the connection stays usable; with one, close rather than
                // read a body nobody wants.
                let keep =
                    head.keep_alive && head.body == RequestBody::None && !ctx.draining.is_fired();
                send_error(client, status, keep).await;
                if keep {
                    drop_prefix(&mut inbuf, head.head_len);
                }
                (keep, status, asked, &port.metrics.unrouted)
            }
            Route::Forward { target, state } => match upgrade {
                Ok(false) => {
                    let (keep, status, protocol) =
                        forward(client, &mut inbuf, &head, target, state, ctx, info).await;
                    (keep, status, protocol, &*state.metrics)
                }
                Ok(true) => {
                    let outcome =
                        websocket::forward_h1(client, &mut inbuf, &head, target, state, ctx, info)
                            .await;
                    upgraded = outcome.upgraded;
                    (outcome.keep_alive, outcome.status, asked, &*state.metrics)
                }
                Err(e) => {
                    debug!(shard = ctx.index, error = %e, "malformed WebSocket upgrade");
                    send_error(client, e.status(), false).await;
                    (false, e.status(), asked, &*state.metrics)
                }
            },
        };
        metrics.request(protocol, status, started.elapsed());
        if upgraded.is_some() {
            bufpool::give(inbuf);
            return upgraded;
        }
        if !keep_going {
            break;
        }
        if inbuf.is_empty() {
            bufpool::give(std::mem::take(&mut inbuf));
        }
    }
    bufpool::give(inbuf);
    client.close().await;
    None
}

/// Reads until `inbuf` starts with a complete request head. `Ok(None)`: the client closed or
/// stayed idle past the keep-alive timeout between requests. `Err(status)`: answer and close.
async fn read_request_head<C: ClientIo>(
    client: &mut C,
    inbuf: &mut Vec<u8>,
    ctx: &ShardContext,
) -> Result<Option<RequestHead>, u16> {
    let limits = HeadLimits {
        max_head_bytes: ctx.limits.max_request_head_bytes,
        max_headers: MAX_HEADERS,
    };
    let mut deadline: Option<Instant> = None;
    loop {
        if !inbuf.is_empty() {
            match parse_request_head(inbuf, &limits) {
                Ok(Some(head)) => return Ok(Some(head)),
                Ok(None) => {}
                Err(e) => {
                    debug!(shard = ctx.index, error = %e, "bad request head");
                    return Err(e.status());
                }
            }
        }
        let wait = match deadline {
            None if inbuf.is_empty() => {
                // Idle between requests: only a small read in flight (see `bufpool`); a drain or
                // the idle timeout closes us (the dropped read takes its buffer with it).
                if ctx.draining.is_fired() {
                    return Ok(None);
                }
                let readable = monoio::time::timeout(ctx.limits.idle_timeout, async {
                    monoio::select! {
                        r = client.wait_readable() => r.is_ok(),
                        () = ctx.draining.wait() => false,
                    }
                })
                .await;
                if readable != Ok(true) {
                    return Ok(None);
                }
                deadline = Some(Instant::now() + ctx.limits.request_head_timeout);
                ctx.limits.request_head_timeout
            }
            None => {
                let now = Instant::now();
                deadline = Some(now + ctx.limits.request_head_timeout);
                ctx.limits.request_head_timeout
            }
            Some(d) => d.saturating_duration_since(Instant::now()),
        };
        if inbuf.capacity() == 0 {
            *inbuf = bufpool::take();
        }
        match monoio::time::timeout(wait, client.read_into(inbuf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(None),
            Ok(Ok(_)) => {}
            Err(_) => {
                return if inbuf.is_empty() { Ok(None) } else { Err(408) };
            }
        }
    }
}

/// Tracks where a message body ends.
enum BodyFraming {
    Done,
    Length(ContentLengthBody),
    Chunked(ChunkedDecoder),
}

impl BodyFraming {
    fn for_request(body: RequestBody) -> Self {
        match body {
            RequestBody::None | RequestBody::ContentLength(0) => BodyFraming::Done,
            RequestBody::ContentLength(n) => BodyFraming::Length(ContentLengthBody::new(n)),
            RequestBody::Chunked => BodyFraming::Chunked(ChunkedDecoder::new()),
        }
    }

    /// How many bytes of `input` belong to the body, and whether it ended there.
    fn advance(&mut self, input: &[u8]) -> Result<(usize, bool), ()> {
        match self {
            BodyFraming::Done => Ok((0, true)),
            BodyFraming::Length(body) => {
                let p = body.advance(input);
                Ok((p.consumed, p.done))
            }
            BodyFraming::Chunked(decoder) => decoder
                .advance(input)
                .map(|p| (p.consumed, p.done))
                .map_err(drop),
        }
    }
}

/// Why an exchange with a backend failed, and what the client gets.
#[derive(Debug)]
pub(crate) enum ForwardError {
    /// Nothing was sent to the client yet: answer with this status.
    Status(u16),
    /// The connection closed before a byte of response, and the request (it has no body) can
    /// be sent again: see [`BackendAttempts::retry_unanswered`].
    StaleConnection,
    /// The client went away or sent a bad body: close without an answer.
    ClientGone,
    /// The response (with this status) was partly sent: all we can do is close.
    Broken(u16),
}

/// Forwards one request and its response. Returns whether the client connection may carry
/// another request, the status the client got (499: it left before a response) and the
/// protocol the request counts as (gRPC is told apart only on the way to h2c backends: gRPC
/// needs HTTP/2 to the server, and HTTP/1.1 backends pay no header lookup for it).
async fn forward<C: ClientIo>(
    client: &mut C,
    inbuf: &mut Vec<u8>,
    head: &RequestHead,
    target: &RouteTarget,
    state: &TargetState,
    ctx: &ShardContext,
    info: &ConnInfo<'_>,
) -> (bool, u16, RequestProtocol) {
    let mut attempts = match BackendAttempts::choose(target, state, ctx) {
        Ok(attempts) => attempts,
        Err(status) => {
            let keep =
                head.keep_alive && head.body == RequestBody::None && !ctx.draining.is_fired();
            send_error(client, status, keep).await;
            if keep {
                drop_prefix(inbuf, head.head_len);
            }
            return (keep, status, RequestProtocol::H1);
        }
    };
    if head.expect_continue {
        // Answer the client's Expect ourselves (as nginx does): the body then streams without
        // a round trip to the backend; a 100 from the backend is forwarded too (harmless).
        if client.queue(b"HTTP/1.1 100 Continue\r\n\r\n").is_err() || client.flush().await.is_err()
        {
            return (false, CLIENT_CLOSED_REQUEST, RequestProtocol::H1);
        }
    }
    let mut request_head = bufpool::take();
    write_forwarded_request_head(
        head,
        inbuf,
        &ForwardExtras {
            client_ip: info.peer.ip(),
            proto: info.proto,
            identity_headers: info.identity_headers,
        },
        &mut request_head,
    );
    if attempts.protocol() == BackendProtocol::H2c {
        let headers = head.headers(inbuf);
        let wants_trailers = headers.get("te").is_some_and(h2c::te_lists_trailers);
        let protocol = if headers
            .get("content-type")
            .is_some_and(crate::grpc::is_grpc_content_type)
        {
            RequestProtocol::Grpc
        } else {
            RequestProtocol::H1
        };
        drop_prefix(inbuf, head.head_len);
        let result = match BackendRequest::from_forwarded_head(&request_head, wants_trailers) {
            Ok(request) => h2c::forward_from_h1(client, inbuf, head, &request, attempts, ctx).await,
            Err(status) => Err(ForwardError::Status(status)),
        };
        bufpool::give(request_head);
        let (keep, status) = delivered_or_error(client, result).await;
        return (keep, status, protocol);
    }
    let idempotent = is_idempotent(head.method(inbuf));
    drop_prefix(inbuf, head.head_len);
    let result = loop {
        let conn = match attempts.connect(ctx, head.body != RequestBody::None).await {
            Ok(conn) => conn,
            Err(e) => break Err(e),
        };
        let reused = conn.reused;
        let outcome = exchange(client, inbuf, head, &request_head, conn, ctx).await;
        attempts.count_response_timeout(&outcome, ctx);
        match outcome {
            Err(ForwardError::StaleConnection)
                if attempts.retry_unanswered(reused, idempotent, ctx) => {}
            Err(ForwardError::StaleConnection) => break Err(ForwardError::Status(502)),
            other => break other,
        }
    };
    bufpool::give(request_head);
    let (keep, status) = delivered_or_error(client, result).await;
    (keep, status, RequestProtocol::H1)
}

/// The outcome of a forwarded request for the client connection: whether it may carry another
/// request, and the status the client got (answering it here when nothing was sent yet).
async fn delivered_or_error<C: ClientIo>(
    client: &mut C,
    result: Result<Delivered, ForwardError>,
) -> (bool, u16) {
    match result {
        Ok(delivered) => (delivered.keep_alive, delivered.status),
        Err(ForwardError::Status(status)) => {
            send_error(client, status, false).await;
            (false, status)
        }
        Err(ForwardError::Broken(status)) => (false, status),
        Err(ForwardError::StaleConnection | ForwardError::ClientGone) => {
            (false, CLIENT_CLOSED_REQUEST)
        }
    }
}

/// Counts a failed connect and ejects the endpoint if the failure was its fault.
fn connect_failed(ctx: &ShardContext, endpoint: SocketAddr, failure: ConnectFailure) {
    ctx.metrics
        .backend_failure(endpoint, BackendFailure::Connect(failure));
    if failure.ejects() && ctx.ejections.eject(endpoint) {
        ctx.metrics.endpoint_ejected(endpoint, failure);
        // Once per shard per ejection time for an endpoint that stays down.
        info!(
            shard = ctx.index,
            %endpoint,
            reason = failure.label(),
            for_seconds = ctx.limits.backend_ejection_time.as_secs_f64(),
            "backend endpoint ejected"
        );
    }
}

/// The status counted for a request whose client left before its response (nginx's 499).
pub(crate) const CLIENT_CLOSED_REQUEST: u16 = 499;

/// A response that reached the client.
#[derive(Debug)]
pub(crate) struct Delivered {
    pub(crate) keep_alive: bool,
    pub(crate) status: u16,
}

/// Sends the request (head, then body as it streams in) on `conn` and relays the response.
async fn exchange<C: ClientIo>(
    client: &mut C,
    inbuf: &mut Vec<u8>,
    head: &RequestHead,
    request_head: &[u8],
    mut conn: BackendConnection,
    ctx: &ShardContext,
) -> Result<Delivered, ForwardError> {
    // 1. The head and whatever body bytes already arrived, in one write.
    let mut framing = BodyFraming::for_request(head.body);
    let (body_now, mut body_done) = framing
        .advance(inbuf)
        .map_err(|()| ForwardError::Status(400))?;
    let mut out = bufpool::take();
    out.extend_from_slice(request_head);
    out.extend_from_slice(inbuf.get(..body_now).unwrap_or_default());
    let sent_body_bytes = body_now > 0;
    let (res, buf) = conn.tcp.write_all(out).await;
    bufpool::give(buf);
    if res.is_err() {
        return Err(if sent_body_bytes {
            ForwardError::Status(502)
        } else {
            ForwardError::StaleConnection
        });
    }
    drop_prefix(inbuf, body_now);
    // Once body bytes left the client buffer the request cannot be replayed.
    let replayable = head.body == RequestBody::None;

    // 2. The rest of the body, as the client sends it.
    while !body_done {
        if inbuf.capacity() == 0 {
            *inbuf = bufpool::take();
        }
        match monoio::time::timeout(ctx.limits.idle_timeout, client.read_into(inbuf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return Err(ForwardError::ClientGone),
        }
        let (n, done) = framing
            .advance(inbuf)
            .map_err(|()| ForwardError::Status(400))?;
        body_done = done;
        let mut chunk = bufpool::take();
        chunk.extend_from_slice(inbuf.get(..n).unwrap_or_default());
        drop_prefix(inbuf, n);
        let (res, buf) = conn.tcp.write_all(chunk).await;
        bufpool::give(buf);
        if res.is_err() {
            return Err(ForwardError::Status(502));
        }
    }

    // 3. The response head (informational 1xx are relayed).
    let mut rbuf = bufpool::take();
    let response = loop {
        let response =
            match read_response_head(&mut conn, &mut rbuf, head.is_head(), replayable, ctx).await {
                Ok(response) => response,
                Err(e) => {
                    bufpool::give(rbuf);
                    return Err(e);
                }
            };
        if !response.is_informational {
            break response;
        }
        let mut out = Vec::new();
        write_forwarded_response_head(
            &response,
            &rbuf,
            ClientConn {
                version: head.version,
                keep_alive: head.keep_alive,
            },
            &mut out,
        );
        if !out.is_empty() {
            client.queue(&out).map_err(|_| ForwardError::ClientGone)?;
            client.flush().await.map_err(|_| ForwardError::ClientGone)?;
        }
        drop_prefix(&mut rbuf, response.head_len);
    };

    // 4. Relay the response.
    let mut out = bufpool::take();
    let plan = write_forwarded_response_head(
        &response,
        &rbuf,
        ClientConn {
            version: head.version,
            keep_alive: head.keep_alive && !ctx.draining.is_fired(),
        },
        &mut out,
    );
    let relayed = relay_response_body(client, &mut conn, rbuf, &response, plan, out, ctx).await;
    match relayed {
        Ok(backend_reusable) => {
            if backend_reusable && response.backend_keep_alive {
                ctx.backends.put(conn);
            }
            Ok(Delivered {
                keep_alive: plan.keep_alive,
                status: response.status,
            })
        }
        Err(_) => Err(ForwardError::Broken(response.status)),
    }
}

/// Streams the response body after its head (`out` holds the rewritten head). Returns whether
/// the backend connection ended exactly at the end of the body (and so can be reused).
pub(crate) async fn relay_response_body<C: ClientIo>(
    client: &mut C,
    conn: &mut BackendConnection,
    mut rbuf: Vec<u8>,
    response: &ResponseHead,
    plan: ResponsePlan,
    out: Vec<u8>,
    ctx: &ShardContext,
) -> io::Result<bool> {
    let body = plan.body;
    let mut head = Some(out);
    drop_prefix(&mut rbuf, response.head_len);
    let mut length = match body {
        ClientBody::ContentLength(n) => Some(ContentLengthBody::new(n)),
        _ => None,
    };
    let mut chunked = match body {
        ClientBody::Chunked | ClientBody::Dechunk => Some(ChunkedDecoder::new()),
        _ => None,
    };
    let mut done = matches!(body, ClientBody::None | ClientBody::ContentLength(0));
    loop {
        if !rbuf.is_empty() && !done {
            let consumed = match (&mut length, &mut chunked, body) {
                (Some(l), _, _) => {
                    let p = l.advance(&rbuf);
                    done = p.done;
                    queue_after_head(
                        client,
                        &mut head,
                        rbuf.get(..p.consumed).unwrap_or_default(),
                    )?;
                    p.consumed
                }
                (_, Some(decoder), ClientBody::Dechunk) => {
                    let mut queued = Ok(());
                    let p = decoder
                        .advance_with(&rbuf, |data| {
                            if queued.is_ok() {
                                queued = queue_after_head(client, &mut head, data);
                            }
                        })
                        .map_err(io::Error::other)?;
                    queued?;
                    done = p.done;
                    p.consumed
                }
                (_, Some(decoder), _) => {
                    let p = decoder.advance(&rbuf).map_err(io::Error::other)?;
                    done = p.done;
                    queue_after_head(
                        client,
                        &mut head,
                        rbuf.get(..p.consumed).unwrap_or_default(),
                    )?;
                    p.consumed
                }
                _ => {
                    queue_after_head(client, &mut head, &rbuf)?;
                    rbuf.len()
                }
            };
            drop_prefix(&mut rbuf, consumed);
        }
        if let Some(head) = head.take() {
            let queued = client.queue(&head);
            bufpool::give(head);
            queued?;
        }
        if done && !plan.keep_alive {
            // The connection ends after this response: its close goes out in the same write.
            client.queue_close();
        }
        client.flush().await?;
        if done {
            let exact = rbuf.is_empty();
            bufpool::give(rbuf);
            return Ok(exact);
        }
        rbuf.clear();
        let (res, buf) = match monoio::time::timeout(
            ctx.limits.backend_response_timeout,
            read_append(&mut conn.tcp, rbuf),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => return Err(io::ErrorKind::TimedOut.into()),
        };
        rbuf = buf;
        match res {
            Ok(0) if body == ClientBody::UntilClose => {
                bufpool::give(rbuf);
                return Ok(false);
            }
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Largest response head plus first body bytes joined into one write: a typical small
/// response then leaves as one TLS record (one seal, less framing) instead of two; beyond this
/// the copy would cost more than the record it saves.
const COALESCE_HEAD_AND_BODY_BYTES: usize = 4 * 1024;

/// Queues response body bytes for the client, behind the response head while that is still
/// held back (`head`), joined with it when both are small.
fn queue_after_head<C: ClientIo>(
    client: &mut C,
    head: &mut Option<Vec<u8>>,
    data: &[u8],
) -> io::Result<()> {
    let Some(mut pending) = head.take() else {
        return client.queue(data);
    };
    let queued = if pending.len() + data.len() <= COALESCE_HEAD_AND_BODY_BYTES {
        pending.extend_from_slice(data);
        client.queue(&pending)
    } else {
        client.queue(&pending).and_then(|()| client.queue(data))
    };
    bufpool::give(pending);
    queued
}

/// Removes the first `n` bytes (a message that was handled) from the buffer.
pub(crate) fn drop_prefix(buf: &mut Vec<u8>, n: usize) {
    if n >= buf.len() {
        buf.clear();
    } else {
        buf.drain(..n);
    }
}

/// A complete error response with a short plain-text body. `keep_alive`: whether the
/// connection stays open after it.
pub fn error_response(status: u16, keep_alive: bool) -> Vec<u8> {
    let reason = reason_phrase(status);
    let body = format!("{status} {reason}\n");
    let connection = if keep_alive {
        ""
    } else {
        "connection: close\r\n"
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{connection}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn send_error<C: ClientIo>(client: &mut C, status: u16, keep_alive: bool) {
    if client.queue(&error_response(status, keep_alive)).is_ok() {
        let _ = client.flush().await;
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        404 => "Not Found",
        408 => "Request Timeout",
        421 => "Misdirected Request",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}
