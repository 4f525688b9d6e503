//! Forwarding a request to a backend and its response back: the pieces the HTTP/1.1 (`http`),
//! HTTP/2 (`h2`), h2c-backend (`h2c`) and WebSocket (`websocket`) paths share.
//!
//! - `BackendAttempts`: a connection (or an h2c stream) to the endpoint [`crate::route`]
//!   chose, moving on to another endpoint while connects fail, and resending a request without
//!   a body once when its connection closed unanswered.
//! - Reading an HTTP/1.1 backend's response head and relaying its body, to an HTTP/1.1 client
//!   (`relay_response_body`) or as HTTP/2 DATA (`relay_body`).
//! - `ForwardError`: what went wrong, and so what the client gets.
//!
//! It sits below the protocol modules, which call it, and imports none of them.

use std::cell::Cell;
use std::future::poll_fn;
use std::io;
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use h2::{Reason, SendStream};
use portcullis_core::desired::BackendProtocol;
use portcullis_core::filters::HeaderModifier;
use portcullis_core::http1::{
    ChunkedDecoder, ClientBody, ContentLengthBody, HeadLimits, ResponseBody, ResponseHead,
    ResponsePlan, parse_response_head,
};
use portcullis_core::routing::RouteTarget;
use tracing::{debug, info};

use crate::backend::{BackendConnection, ConnectError, ConnectFailure};
use crate::bufpool;
use crate::h2c_pool::{H2cConnectError, H2cStream};
use crate::metrics::{BackendFailure, RequestProtocol, RouteMetrics};
use crate::rejection::{Rejection, Reply};
use crate::route::{choose_backend, next_endpoint};
use crate::shard_state::{ShardContext, TargetState};
use crate::tls::{ClientIo, read_append};

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
    ) -> Result<Self, Rejection> {
        let (endpoints, cursor, protocol) = choose_backend(target, state)?;
        let endpoint =
            next_endpoint(endpoints, cursor, &[], &ctx.ejections).ok_or(Rejection::NoEndpoints)?;
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
                Err(H2cConnectError::Handshake(_)) => {
                    return Err(ForwardError::Rejected(Rejection::H2cHandshakeFailed));
                }
            }
        }
    }

    /// Counts a failed connect (ejecting the endpoint if it was its fault) and moves on to an
    /// endpoint not tried yet; `Err` when none is left or enough were tried.
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
            _ => Err(ForwardError::Rejected(Rejection::ConnectFailed)),
        }
    }

    /// Counts a response timeout against the endpoint that timed out.
    pub(crate) fn count_response_timeout<T>(
        &self,
        outcome: &Result<T, ForwardError>,
        ctx: &ShardContext,
    ) {
        if matches!(
            outcome,
            Err(ForwardError::Rejected(Rejection::BackendTimeout))
        ) {
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
                return Err(ForwardError::Rejected(Rejection::BadResponse));
            }
        }
        let read = monoio::time::timeout(
            ctx.limits.backend_response_timeout,
            read_append(&mut conn.tcp, std::mem::take(rbuf)),
        )
        .await;
        let Ok((res, buf)) = read else {
            return Err(ForwardError::Rejected(Rejection::BackendTimeout));
        };
        *rbuf = buf;
        match res {
            Ok(n) if n > 0 => {}
            // Closed before any response byte: a stale pooled connection, if it was one.
            _ if rbuf.is_empty() && replayable => {
                return Err(ForwardError::StaleConnection);
            }
            _ => return Err(ForwardError::Rejected(Rejection::BackendClosed)),
        }
    }
}

/// Why an exchange with a backend failed, and what the client gets.
#[derive(Debug)]
pub(crate) enum ForwardError {
    /// Nothing was sent to the client yet: the gateway answers.
    Rejected(Rejection),
    /// The connection closed before a byte of response, and the request (it has no body) can
    /// be sent again: see [`BackendAttempts::retry_unanswered`].
    StaleConnection,
    /// The client went away or sent a bad body: close without an answer.
    ClientGone,
    /// The backend's response (with this status) was partly sent: all we can do is close.
    Broken(u16),
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

/// A backend's response that reached the client.
#[derive(Debug)]
pub(crate) struct Delivered {
    pub(crate) keep_alive: bool,
    /// The backend's status.
    pub(crate) status: u16,
}

/// Applies a rule's `ResponseHeaderModifier` to a final response head that goes out as HTTP/2
/// fields (or came from an h2c backend), as `write_forwarded_response_head` does to an
/// HTTP/1.1 head: the fields it sets or removes dropped, its `set` then `add` fields appended.
pub(crate) fn modify_response_headers(headers: &mut ::http::HeaderMap, modifier: &HeaderModifier) {
    if modifier.is_empty() {
        return;
    }
    let dropped = modifier.set.iter().map(|f| &f.name).chain(&modifier.remove);
    for name in dropped {
        if let Ok(name) = ::http::HeaderName::from_bytes(name.as_bytes()) {
            headers.remove(name);
        }
    }
    // Translation checked every name and value, so none is skipped here in practice.
    for field in modifier.written() {
        if let (Ok(name), Ok(value)) = (
            ::http::HeaderName::from_bytes(field.name.as_bytes()),
            ::http::HeaderValue::from_str(&field.value),
        ) {
            headers.append(name, value);
        }
    }
}

/// Counts a request that ended with `reply` on `metrics` (its route's, or the port's
/// unrouted requests), by the status the client got; a gateway answer is also counted by
/// reason and logged, here only.
pub(crate) fn count_request(
    metrics: &RouteMetrics,
    protocol: RequestProtocol,
    reply: Reply,
    took: Duration,
    ctx: &ShardContext,
    peer: SocketAddr,
) {
    metrics.request(protocol, reply.status(), took);
    if let Reply::Gateway(rejection) = reply {
        ctx.metrics.rejected(rejection);
        rejection.log(ctx.index, peer);
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

/// Writes the stream's request as an HTTP/1.1 head: request line, `Host` from `:authority`
/// (or the client's `host` field), the fields, and the body's framing (`transfer-encoding:
/// chunked` when the client gave no length). HTTP/2 forbids connection-specific fields; a
/// client that sends them anyway has them refused by the HTTP/1.1 parser's rules as usual.
pub(crate) fn h1_head(
    parts: &::http::request::Parts,
    end_of_stream: bool,
    out: &mut Vec<u8>,
) -> Result<(), Rejection> {
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", ::http::uri::PathAndQuery::as_str);
    // Plain CONNECT is not proxied (the gateway is no forward proxy); extended CONNECT comes
    // here as the GET it stands for (see `websocket`).
    if parts.method == ::http::Method::CONNECT {
        return Err(Rejection::NotImplemented);
    }
    let _ = write!(out, "{} {path} HTTP/1.1\r\n", parts.method);
    let authority = parts.uri.authority().map(::http::uri::Authority::as_str);
    if let Some(authority) = authority {
        let _ = write!(out, "host: {authority}\r\n");
    }
    let mut has_length = false;
    for (name, value) in &parts.headers {
        if *name == ::http::header::HOST && authority.is_some() {
            continue; // `:authority` wins (RFC 9113 §8.3.1)
        }
        if *name == ::http::header::COOKIE {
            continue; // joined below
        }
        has_length |= *name == ::http::header::CONTENT_LENGTH;
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // h2 clients may split cookies over several fields; HTTP/1.1 has one (RFC 9113 §8.2.3).
    let mut cookies = parts.headers.get_all(::http::header::COOKIE).iter();
    if let Some(first) = cookies.next() {
        out.extend_from_slice(b"cookie: ");
        out.extend_from_slice(first.as_bytes());
        for more in cookies {
            out.extend_from_slice(b"; ");
            out.extend_from_slice(more.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    if !end_of_stream && !has_length {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// Fields that describe one HTTP/1.1 connection and are meaningless (and forbidden) in h2.
pub(crate) fn is_hop_by_hop(name: &[u8]) -> bool {
    const HOP_BY_HOP: [&str; 6] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "te",
    ];
    HOP_BY_HOP
        .iter()
        .any(|h| h.as_bytes().eq_ignore_ascii_case(name))
}

pub(crate) enum RelayError {
    ClientGone,
    Backend,
}

/// Relays the response body as DATA frames, waiting for the client's flow-control credit so
/// that a slow client holds at most the h2 send buffer. Returns whether the backend
/// connection ended exactly at the end of the body (and so can be reused).
pub(crate) async fn relay_body(
    response: &ResponseHead,
    mut rbuf: Vec<u8>,
    backend: &mut BackendConnection,
    mut send: SendStream<Bytes>,
    ctx: &ShardContext,
) -> Result<bool, RelayError> {
    enum Framing {
        Length(ContentLengthBody),
        Chunked(ChunkedDecoder),
        UntilClose,
    }
    let mut framing = match response.body {
        ResponseBody::ContentLength(n) => Framing::Length(ContentLengthBody::new(n)),
        ResponseBody::Chunked => Framing::Chunked(ChunkedDecoder::new()),
        ResponseBody::CloseDelimited | ResponseBody::None => Framing::UntilClose,
    };
    drop_prefix(&mut rbuf, response.head_len);
    let result = loop {
        let mut data = Vec::new();
        let (consumed, done) = match &mut framing {
            Framing::Length(length) => {
                let p = length.advance(&rbuf);
                data.extend_from_slice(rbuf.get(..p.consumed).unwrap_or_default());
                (p.consumed, p.done)
            }
            Framing::Chunked(decoder) => {
                match decoder.advance_with(&rbuf, |piece| data.extend_from_slice(piece)) {
                    Ok(p) => (p.consumed, p.done),
                    Err(_) => break Err(RelayError::Backend),
                }
            }
            Framing::UntilClose => {
                data.extend_from_slice(&rbuf);
                (rbuf.len(), false)
            }
        };
        drop_prefix(&mut rbuf, consumed);
        if let Err(e) = send_data(&mut send, data, done).await {
            break Err(e);
        }
        if done {
            break Ok(rbuf.is_empty());
        }
        rbuf.clear();
        let read = monoio::time::timeout(
            ctx.limits.backend_response_timeout,
            read_append(&mut backend.tcp, std::mem::take(&mut rbuf)),
        )
        .await;
        let Ok((res, buf)) = read else {
            break Err(RelayError::Backend);
        };
        rbuf = buf;
        match res {
            Ok(0) if matches!(framing, Framing::UntilClose) => {
                break send_data(&mut send, Vec::new(), true).await.map(|()| false);
            }
            Ok(0) | Err(_) => break Err(RelayError::Backend),
            Ok(_) => {}
        }
    };
    bufpool::give(rbuf);
    if matches!(result, Err(RelayError::Backend)) {
        send.send_reset(Reason::INTERNAL_ERROR);
    }
    result
}

/// Sends `data` (possibly empty) on the stream, as the client's window allows; `end` closes
/// the stream after it.
async fn send_data(
    send: &mut SendStream<Bytes>,
    data: Vec<u8>,
    end: bool,
) -> Result<(), RelayError> {
    let mut data = Bytes::from(data);
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let granted = match poll_fn(|cx| send.poll_capacity(cx)).await {
            Some(Ok(granted)) => granted,
            Some(Err(_)) | None => return Err(RelayError::ClientGone),
        };
        if granted == 0 {
            continue;
        }
        let piece = data.split_to(granted.min(data.len()));
        let last = data.is_empty() && end;
        send.send_data(piece, last)
            .map_err(|_| RelayError::ClientGone)?;
        if last {
            return Ok(());
        }
    }
    if end {
        send.send_data(Bytes::new(), true)
            .map_err(|_| RelayError::ClientGone)?;
    }
    Ok(())
}
