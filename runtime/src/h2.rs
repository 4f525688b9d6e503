//! HTTP/2 to clients (ALPN `h2` over TLS; on plain HTTP ports, h2c with prior knowledge, RFC
//! 9113 §3.3, which gRPC clients use), served on the shard that accepted the connection.
//!
//! - Framing, HPACK, flow control and the protocol's own attack limits are the `h2` crate's
//!   (hyper's): it refuses CONTINUATION floods (header lists are bounded while they arrive),
//!   streams reset before we accept them (`max_pending_accept_reset_streams`) and clients that
//!   provoke too many resets of ours (`max_local_error_reset_streams`), with GOAWAY
//!   `ENHANCE_YOUR_CALM`. It polls tokio's IO traits: the connection's socket moves to monoio's
//!   poll mode and its rustls session to [`crate::tls_poll`], on the same shard.
//! - Rapid reset (CVE-2023-44487) also needs a limit of ours: each stream is accepted at once,
//!   so a client that opens and cancels streams costs a backend request each. A connection
//!   whose client cancelled at least half of its streams, once it has opened
//!   [`RAPID_RESET_MIN_STREAMS`], gets GOAWAY `ENHANCE_YOUR_CALM` (as Envoy's premature-reset
//!   rule).
//! - Each stream is one request, handled as an HTTP/1.1 request would be: its head is written
//!   out as an HTTP/1.1 head and parsed by the same parser, so routing (the 404 and 421 rules
//!   on `:authority`), identity headers (client copies stripped, ours added) and the forwarded
//!   head are exactly HTTP/1.1's. An HTTP/1.1 backend gets it as is; the response comes back
//!   as h2 HEADERS and DATA, hop-by-hop fields dropped, chunked bodies de-chunked. An h2c
//!   backend gets the stream as an h2 stream, trailers included ([`crate::h2c`]).
//! - A gRPC call the gateway answers itself gets a gRPC status ([`crate::grpc`]).

use std::cell::Cell;
use std::io::Write as _;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream};
use monoio::io::AsyncWriteRentExt;
use portcullis_core::client_identity::VerifiedClient;
use portcullis_core::desired::BackendProtocol;
use portcullis_core::filters::HeaderModifier;
use portcullis_core::http1::{
    ForwardExtras, ForwardedProto, HeadLimits, RequestBody, RequestHead, ResponseBody,
    parse_request_head, write_forwarded_request_head,
};
use tracing::debug;

use crate::backend::BackendConnection;
use crate::bufpool;
use crate::forward::{
    self, BackendAttempts, ForwardError, RelayError, count_request, h1_head, is_hop_by_hop,
    relay_body,
};
use crate::grpc;
use crate::h2c::{self, BackendRequest};
use crate::metrics::{H2GoAway, H2StreamReset, RequestProtocol};
use crate::rejection::{Rejection, Reply};
use crate::route::{self, ConnInfo, Route};
use crate::shard_state::{ShardContext, ShardPort};
use crate::tls_poll::SharedPollStream;
use crate::websocket;

/// How long a closing connection keeps reading (and dropping) what the client still sends, so
/// that our GOAWAY reaches it instead of being destroyed by a reset.
const LINGER_TIMEOUT: Duration = Duration::from_secs(2);

/// Streams a client may have open at once on one connection (the common server default:
/// nginx, Envoy and Go use 100 to 128).
const MAX_CONCURRENT_STREAMS: u32 = 100;

/// Flow-control window of each stream: how much request body a client may send ahead.
const STREAM_WINDOW_BYTES: u32 = 256 * 1024;

/// Flow-control window of the connection: a few streams' worth, bounding the request body a
/// connection may have buffered in the shard.
const CONNECTION_WINDOW_BYTES: u32 = 1024 * 1024;

/// Response bytes buffered per stream before we wait for the client to take them.
const MAX_SEND_BUFFER_BYTES: usize = 256 * 1024;

/// Streams the client reset before we accepted them, at most, before GOAWAY (h2's default).
const MAX_PENDING_ACCEPT_RESETS: usize = 20;

/// Streams we had to reset for a client's protocol errors, at most, before GOAWAY.
const MAX_LOCAL_ERROR_RESETS: usize = 256;

/// Streams a connection opens before its cancellation ratio is judged (see the module doc).
const RAPID_RESET_MIN_STREAMS: u64 = 100;

/// A backend's `101 Switching Protocols`, which no h2 stream can carry.
const SWITCHING_PROTOCOLS: u16 = StatusCode::SWITCHING_PROTOCOLS.as_u16();

/// What a connection's streams share: the connection's facts, never another connection's.
#[derive(Debug)]
pub struct H2Conn {
    pub port: Rc<ShardPort>,
    pub ctx: Rc<ShardContext>,
    pub peer: SocketAddr,
    /// `https` over TLS; `http` for h2c with prior knowledge on a plain port.
    pub proto: ForwardedProto,
    /// The listener the TLS SNI selected (`None` on a plain port).
    pub sni_listener: Option<usize>,
    /// The verified client, whose identity headers every request carries.
    pub client: Option<Arc<VerifiedClient>>,
    streams: Cell<u64>,
    cancelled: Cell<u64>,
    open: Cell<usize>,
}

impl H2Conn {
    pub fn new(
        port: Rc<ShardPort>,
        ctx: Rc<ShardContext>,
        peer: SocketAddr,
        proto: ForwardedProto,
        sni_listener: Option<usize>,
        client: Option<Arc<VerifiedClient>>,
    ) -> Self {
        Self {
            port,
            ctx,
            peer,
            proto,
            sni_listener,
            client,
            streams: Cell::new(0),
            cancelled: Cell::new(0),
            open: Cell::new(0),
        }
    }

    /// What routing and forwarding need to know of the connection.
    fn info(&self) -> ConnInfo<'_> {
        ConnInfo {
            peer: self.peer,
            proto: self.proto,
            sni_listener: self.sni_listener,
            identity_headers: self
                .client
                .as_ref()
                .map_or(&[], |c| c.identity_headers.as_slice()),
        }
    }

    fn rapid_reset(&self) -> bool {
        let streams = self.streams.get();
        streams >= RAPID_RESET_MIN_STREAMS && self.cancelled.get() * 2 >= streams
    }
}

/// Serves one HTTP/2 connection until it closes, the client breaks a limit, or the shard
/// drains (GOAWAY, then the open streams finish). `stream`: the TLS session, or the plain
/// socket (h2c), in poll mode.
pub async fn serve<S>(stream: S, conn: Rc<H2Conn>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let stream = SharedPollStream::new(stream);
    drive(stream.clone(), &conn).await;
    stream.linger(LINGER_TIMEOUT).await;
}

/// Runs the h2 connection until it ends.
async fn drive<S>(stream: SharedPollStream<S>, conn: &Rc<H2Conn>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let ctx = Rc::clone(&conn.ctx);
    let max_header_list = u32::try_from(ctx.limits.max_request_head_bytes).unwrap_or(u32::MAX);
    let handshake = h2::server::Builder::new()
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .initial_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .max_header_list_size(max_header_list)
        .max_send_buffer_size(MAX_SEND_BUFFER_BYTES)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        // RFC 8441: WebSocket over h2 (see `websocket`).
        .enable_connect_protocol()
        .handshake::<_, Bytes>(stream);
    let mut connection =
        match monoio::time::timeout(ctx.limits.request_head_timeout, handshake).await {
            Ok(Ok(connection)) => connection,
            Ok(Err(e)) => {
                debug!(shard = ctx.index, peer = %conn.peer, error = %e, "HTTP/2 preface failed");
                ctx.metrics.h2_goaway(H2GoAway::of(&e));
                return;
            }
            Err(_) => return,
        };
    let mut shutting_down = false;
    loop {
        let idle = conn.open.get() == 0;
        let accepted = monoio::select! {
            accepted = connection.accept() => accepted,
            () = ctx.draining.wait(), if !shutting_down => {
                connection.graceful_shutdown();
                ctx.metrics.h2_goaway(H2GoAway::Draining);
                shutting_down = true;
                continue;
            }
            () = monoio::time::sleep(ctx.limits.idle_timeout), if idle && !shutting_down => {
                connection.graceful_shutdown();
                ctx.metrics.h2_goaway(H2GoAway::Idle);
                shutting_down = true;
                continue;
            }
        };
        match accepted {
            Some(Ok((request, respond))) => {
                conn.streams.set(conn.streams.get() + 1);
                conn.open.set(conn.open.get() + 1);
                monoio::spawn(serve_stream(request, respond, Rc::clone(conn)));
                if conn.rapid_reset() {
                    connection.abrupt_shutdown(Reason::ENHANCE_YOUR_CALM);
                    ctx.metrics.h2_goaway(H2GoAway::RapidReset);
                    shutting_down = true;
                }
            }
            Some(Err(e)) => {
                debug!(shard = ctx.index, peer = %conn.peer, error = %e, "HTTP/2 connection error");
                ctx.metrics.h2_goaway(H2GoAway::of(&e));
                break;
            }
            None => break,
        }
    }
}

/// One stream: its request forwarded, its response relayed; counted like an HTTP/1.1 request.
async fn serve_stream(
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    conn: Rc<H2Conn>,
) {
    if request.extensions().get::<h2::ext::Protocol>().is_some() {
        websocket::serve_extended_connect(request, respond, &conn.port, &conn.ctx, &conn.info())
            .await;
        conn.open.set(conn.open.get().saturating_sub(1));
        return;
    }
    let started = Instant::now();
    let grpc = is_grpc(request.headers());
    let protocol = if grpc {
        RequestProtocol::Grpc
    } else {
        RequestProtocol::H2
    };
    let (reply, route_metrics) = handle(request, &mut respond, &conn, grpc).await;
    if reply == Reply::Gateway(Rejection::ClientClosed) {
        conn.cancelled.set(conn.cancelled.get() + 1);
        conn.ctx
            .metrics
            .h2_stream_reset(H2StreamReset::ClientCancelled);
    }
    count_request(
        route_metrics
            .as_deref()
            .unwrap_or(&conn.port.metrics.unrouted),
        protocol,
        reply,
        started.elapsed(),
        &conn.ctx,
        conn.peer,
    );
    conn.open.set(conn.open.get().saturating_sub(1));
}

/// A gRPC call: its content type is `application/grpc`, alone or with a `+format` or `;params`
/// suffix.
fn is_grpc(headers: &::http::HeaderMap) -> bool {
    headers
        .get(::http::header::CONTENT_TYPE)
        .is_some_and(|value| grpc::is_grpc_content_type(value.as_bytes()))
}

/// Routes and forwards one request; returns what the client got and the route's metrics
/// (`None`: not routed). `grpc`: the gateway's own answers go out as gRPC statuses.
async fn handle(
    request: Request<RecvStream>,
    respond: &mut SendResponse<Bytes>,
    conn: &H2Conn,
    grpc: bool,
) -> (Reply, Option<Rc<crate::metrics::RouteMetrics>>) {
    let ctx = &conn.ctx;
    let (parts, mut body) = request.into_parts();
    let wants_trailers = parts
        .headers
        .get(::http::header::TE)
        .is_some_and(|te| h2c::te_lists_trailers(te.as_bytes()));
    let mut head_buf = bufpool::take();
    let parsed = h1_head(&parts, body.is_end_stream(), &mut head_buf).and_then(|()| {
        let limits = HeadLimits {
            max_head_bytes: ctx.limits.max_request_head_bytes,
            max_headers: forward::MAX_HEADERS,
        };
        match parse_request_head(&head_buf, &limits) {
            Ok(Some(head)) => Ok(head),
            Ok(None) => Err(Rejection::BadRequest),
            Err(e) => Err(Rejection::of_request_head(&e)),
        }
    });
    let head = match parsed {
        Ok(head) => head,
        Err(rejection) => {
            bufpool::give(head_buf);
            rejection.send_h2(respond, grpc);
            return (Reply::Gateway(rejection), None);
        }
    };
    let info = conn.info();
    let (target, state) = match route::route(&conn.port, &head, &head_buf, &info) {
        Route::Reject(rejection) => {
            bufpool::give(head_buf);
            rejection.send_h2(respond, grpc);
            return (Reply::Gateway(rejection), None);
        }
        Route::Redirect { redirect, state } => {
            bufpool::give(head_buf);
            return (redirect.send_h2(respond), Some(Rc::clone(&state.metrics)));
        }
        Route::Forward { target, state } => (target, state),
    };
    let metrics = Rc::clone(&state.metrics);
    let mut forwarded_head = bufpool::take();
    write_forwarded_request_head(
        &head,
        &head_buf,
        &ForwardExtras {
            client_ip: conn.peer.ip(),
            proto: conn.proto,
            identity_headers: info.identity_headers,
            request_headers: &target.filters.request_headers,
        },
        &mut forwarded_head,
    );
    let idempotent = forward::is_idempotent(head.method(&head_buf));
    bufpool::give(head_buf);
    let has_body = head.body != RequestBody::None;
    let result = match BackendAttempts::choose(target, state, ctx) {
        Err(rejection) => Err(ForwardError::Rejected(rejection)),
        Ok(attempts) if attempts.protocol() == BackendProtocol::H2c => {
            match BackendRequest::from_forwarded_head(&forwarded_head, wants_trailers) {
                Ok(request) => {
                    h2c::forward_from_h2(
                        attempts,
                        &request,
                        &mut body,
                        respond,
                        &target.filters.response_headers,
                        ctx,
                    )
                    .await
                }
                Err(rejection) => Err(ForwardError::Rejected(rejection)),
            }
        }
        Ok(mut attempts) => loop {
            let backend = match attempts.connect(ctx, has_body).await {
                Ok(backend) => backend,
                Err(e) => break Err(e),
            };
            let reused = backend.reused;
            let outcome = exchange(
                &head,
                &forwarded_head,
                &mut body,
                &target.filters.response_headers,
                backend,
                respond,
                ctx,
            )
            .await;
            attempts.count_response_timeout(&outcome, ctx);
            match outcome {
                Err(ForwardError::StaleConnection)
                    if attempts.retry_unanswered(reused, idempotent, ctx) => {}
                other => break other,
            }
        },
    };
    bufpool::give(forwarded_head);
    let reply = match result {
        Ok(status) => Reply::Backend(status),
        Err(ForwardError::Rejected(rejection)) => {
            rejection.send_h2(respond, grpc);
            Reply::Gateway(rejection)
        }
        Err(ForwardError::Broken(status)) => {
            respond.send_reset(Reason::INTERNAL_ERROR);
            ctx.metrics.h2_stream_reset(H2StreamReset::BackendBroke);
            Reply::Backend(status)
        }
        Err(ForwardError::StaleConnection) => {
            let rejection = Rejection::BackendClosed;
            rejection.send_h2(respond, grpc);
            Reply::Gateway(rejection)
        }
        Err(ForwardError::ClientGone) => Reply::Gateway(Rejection::ClientClosed),
    };
    (reply, Some(metrics))
}

/// Sends the request on `backend` (head, then the body as the client sends it) and relays the
/// response (changed by the rule's `response_headers`); returns the status the client got.
async fn exchange(
    head: &RequestHead,
    forwarded_head: &[u8],
    body: &mut RecvStream,
    response_headers: &HeaderModifier,
    mut backend: BackendConnection,
    respond: &mut SendResponse<Bytes>,
    ctx: &ShardContext,
) -> Result<u16, ForwardError> {
    let mut out = bufpool::take();
    out.extend_from_slice(forwarded_head);
    let (res, buf) = backend.tcp.write_all(out).await;
    bufpool::give(buf);
    if res.is_err() {
        return Err(if head.body == RequestBody::None {
            ForwardError::StaleConnection
        } else {
            ForwardError::Rejected(Rejection::BackendClosed)
        });
    }
    if head.body != RequestBody::None {
        send_request_body(head.body, body, &mut backend, ctx).await?;
    }
    // Informational 1xx are not relayed over h2 (clients do not need them here).
    let replayable = head.body == RequestBody::None;
    let mut rbuf = bufpool::take();
    let response = loop {
        match forward::read_response_head(&mut backend, &mut rbuf, head.is_head(), replayable, ctx)
            .await
        {
            Ok(response) if response.is_informational => {
                forward::drop_prefix(&mut rbuf, response.head_len);
            }
            Ok(response) => break response,
            Err(e) => {
                bufpool::give(rbuf);
                return Err(e);
            }
        }
    };
    let status = response.status;
    if status == SWITCHING_PROTOCOLS {
        // No upgrades over h2 (RFC 9113 §8.6).
        bufpool::give(rbuf);
        return Err(ForwardError::Rejected(Rejection::BadResponse));
    }
    let mut builder = Response::builder().status(status);
    for (name, value) in response.headers(&rbuf).iter() {
        if is_hop_by_hop(name) {
            continue;
        }
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            builder = builder.header(name, value);
        }
    }
    let Ok(mut h2_response) = builder.body(()) else {
        bufpool::give(rbuf);
        return Err(ForwardError::Rejected(Rejection::BadResponse));
    };
    forward::modify_response_headers(h2_response.headers_mut(), response_headers);
    let end_of_stream = matches!(
        response.body,
        ResponseBody::None | ResponseBody::ContentLength(0)
    );
    let send = match respond.send_response(h2_response, end_of_stream) {
        Ok(send) => send,
        Err(_) => {
            bufpool::give(rbuf);
            return Err(ForwardError::ClientGone);
        }
    };
    if end_of_stream {
        let exact = rbuf.len() == response.head_len;
        bufpool::give(rbuf);
        if exact && response.backend_keep_alive {
            ctx.backends.put(backend);
        }
        return Ok(status);
    }
    match relay_body(&response, rbuf, &mut backend, send, ctx).await {
        Ok(reusable) => {
            if reusable && response.backend_keep_alive {
                ctx.backends.put(backend);
            }
            Ok(status)
        }
        Err(RelayError::ClientGone) => Err(ForwardError::ClientGone),
        Err(RelayError::Backend) => Err(ForwardError::Broken(status)),
    }
}

/// Copies the client's DATA frames to the backend, chunk-encoded when the head said chunked,
/// returning the flow-control credit as bytes leave.
async fn send_request_body(
    framing: RequestBody,
    body: &mut RecvStream,
    backend: &mut BackendConnection,
    ctx: &ShardContext,
) -> Result<(), ForwardError> {
    let chunked = framing == RequestBody::Chunked;
    loop {
        let data = match monoio::time::timeout(ctx.limits.idle_timeout, body.data()).await {
            Ok(Some(Ok(data))) => data,
            Ok(None) => break,
            Ok(Some(Err(_))) | Err(_) => return Err(ForwardError::ClientGone),
        };
        let _ = body.flow_control().release_capacity(data.len());
        if data.is_empty() {
            continue;
        }
        let mut out = bufpool::take();
        if chunked {
            let _ = write!(out, "{:x}\r\n", data.len());
        }
        out.extend_from_slice(&data);
        if chunked {
            out.extend_from_slice(b"\r\n");
        }
        let (res, buf) = backend.tcp.write_all(out).await;
        bufpool::give(buf);
        res.map_err(|_| ForwardError::Rejected(Rejection::BackendClosed))?;
    }
    if chunked {
        let (res, _) = backend.tcp.write_all(&b"0\r\n\r\n"[..]).await;
        res.map_err(|_| ForwardError::Rejected(Rejection::BackendClosed))?;
    }
    Ok(())
}
