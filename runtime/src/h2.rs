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
use std::future::poll_fn;
use std::io::Write as _;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use monoio::io::AsyncWriteRentExt;
use portcullis_core::client_identity::VerifiedClient;
use portcullis_core::desired::BackendProtocol;
use portcullis_core::http1::{
    ChunkedDecoder, ContentLengthBody, ForwardExtras, ForwardedProto, HeadLimits, RequestBody,
    RequestHead, ResponseBody, ResponseHead, parse_request_head, write_forwarded_request_head,
};
use tracing::debug;

use crate::backend::BackendConnection;
use crate::bufpool;
use crate::grpc;
use crate::h2c::{self, BackendRequest};
use crate::http::{self as h1, BackendAttempts, ConnInfo, ForwardError, Route};
use crate::metrics::{H2GoAway, H2StreamReset, RequestProtocol};
use crate::shard_state::{ShardContext, ShardPort};
use crate::tls::read_append;
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
const SWITCHING_PROTOCOLS: u16 = 101;

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
        websocket::serve_extended_connect(request, respond, &conn).await;
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
    let (status, route_metrics) = handle(request, &mut respond, &conn, grpc).await;
    if status == h1::CLIENT_CLOSED_REQUEST {
        conn.cancelled.set(conn.cancelled.get() + 1);
        conn.ctx
            .metrics
            .h2_stream_reset(H2StreamReset::ClientCancelled);
    }
    match route_metrics {
        Some(metrics) => metrics.request(protocol, status, started.elapsed()),
        None => conn
            .port
            .metrics
            .unrouted
            .request(protocol, status, started.elapsed()),
    }
    conn.open.set(conn.open.get().saturating_sub(1));
}

/// A gRPC call: its content type is `application/grpc`, alone or with a `+format` or `;params`
/// suffix.
fn is_grpc(headers: &::http::HeaderMap) -> bool {
    headers
        .get(::http::header::CONTENT_TYPE)
        .is_some_and(|value| grpc::is_grpc_content_type(value.as_bytes()))
}

/// Routes and forwards one request; returns the status the client got and the route's metrics
/// (`None`: not routed). `grpc`: the gateway's own answers go out as gRPC statuses.
async fn handle(
    request: Request<RecvStream>,
    respond: &mut SendResponse<Bytes>,
    conn: &H2Conn,
    grpc: bool,
) -> (u16, Option<Rc<crate::metrics::RouteMetrics>>) {
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
            max_headers: h1::MAX_HEADERS,
        };
        match parse_request_head(&head_buf, &limits) {
            Ok(Some(head)) => Ok(head),
            Ok(None) => Err(StatusCode::BAD_REQUEST),
            Err(e) => Err(StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST)),
        }
    });
    let head = match parsed {
        Ok(head) => head,
        Err(status) => {
            bufpool::give(head_buf);
            send_error(respond, status, grpc);
            return (status.as_u16(), None);
        }
    };
    let identity: &[u8] = conn
        .client
        .as_ref()
        .map_or(&[], |c| c.identity_headers.as_slice());
    let info = ConnInfo {
        peer: conn.peer,
        proto: conn.proto,
        sni_listener: conn.sni_listener,
        identity_headers: identity,
    };
    let (target, state) = match h1::route(&conn.port, &head, &head_buf, &info) {
        Route::Reject(status) => {
            bufpool::give(head_buf);
            send_error(respond, status_code(status), grpc);
            return (status, None);
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
            identity_headers: identity,
        },
        &mut forwarded_head,
    );
    let idempotent = h1::is_idempotent(head.method(&head_buf));
    bufpool::give(head_buf);
    let has_body = head.body != RequestBody::None;
    let result = match BackendAttempts::choose(target, state, ctx) {
        Err(status) => Err(ForwardError::Status(status)),
        Ok(attempts) if attempts.protocol() == BackendProtocol::H2c => {
            match BackendRequest::from_forwarded_head(&forwarded_head, wants_trailers) {
                Ok(request) => {
                    h2c::forward_from_h2(attempts, &request, &mut body, respond, ctx).await
                }
                Err(status) => Err(ForwardError::Status(status)),
            }
        }
        Ok(mut attempts) => loop {
            let backend = match attempts.connect(ctx, has_body).await {
                Ok(backend) => backend,
                Err(e) => break Err(e),
            };
            let reused = backend.reused;
            let outcome = exchange(&head, &forwarded_head, &mut body, backend, respond, ctx).await;
            attempts.count_response_timeout(&outcome, ctx);
            match outcome {
                Err(ForwardError::StaleConnection)
                    if attempts.retry_unanswered(reused, idempotent, ctx) => {}
                other => break other,
            }
        },
    };
    bufpool::give(forwarded_head);
    let status = match result {
        Ok(status) => status,
        Err(ForwardError::Status(status)) => {
            send_error(respond, status_code(status), grpc);
            status
        }
        Err(ForwardError::Broken(status)) => {
            respond.send_reset(Reason::INTERNAL_ERROR);
            ctx.metrics.h2_stream_reset(H2StreamReset::BackendBroke);
            status
        }
        Err(ForwardError::StaleConnection) => {
            send_error(respond, StatusCode::BAD_GATEWAY, grpc);
            502
        }
        Err(ForwardError::ClientGone) => h1::CLIENT_CLOSED_REQUEST,
    };
    (status, Some(metrics))
}

/// Writes the stream's request as an HTTP/1.1 head: request line, `Host` from `:authority`
/// (or the client's `host` field), the fields, and the body's framing (`transfer-encoding:
/// chunked` when the client gave no length). HTTP/2 forbids connection-specific fields; a
/// client that sends them anyway has them refused by the HTTP/1.1 parser's rules as usual.
pub(crate) fn h1_head(
    parts: &::http::request::Parts,
    end_of_stream: bool,
    out: &mut Vec<u8>,
) -> Result<(), StatusCode> {
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", ::http::uri::PathAndQuery::as_str);
    // Plain CONNECT is not proxied (the gateway is no forward proxy); extended CONNECT comes
    // here as the GET it stands for (see `websocket`).
    if parts.method == ::http::Method::CONNECT {
        return Err(StatusCode::NOT_IMPLEMENTED);
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

/// Sends the request on `backend` (head, then the body as the client sends it) and relays the
/// response; returns the status the client got.
async fn exchange(
    head: &RequestHead,
    forwarded_head: &[u8],
    body: &mut RecvStream,
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
            ForwardError::Status(502)
        });
    }
    if head.body != RequestBody::None {
        send_request_body(head.body, body, &mut backend, ctx).await?;
    }
    // Informational 1xx are not relayed over h2 (clients do not need them here).
    let replayable = head.body == RequestBody::None;
    let mut rbuf = bufpool::take();
    let response = loop {
        match h1::read_response_head(&mut backend, &mut rbuf, head.is_head(), replayable, ctx).await
        {
            Ok(response) if response.is_informational => {
                h1::drop_prefix(&mut rbuf, response.head_len);
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
        return Err(ForwardError::Status(502));
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
    let Ok(h2_response) = builder.body(()) else {
        bufpool::give(rbuf);
        return Err(ForwardError::Status(502));
    };
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
        res.map_err(|_| ForwardError::Status(502))?;
    }
    if chunked {
        let (res, _) = backend.tcp.write_all(&b"0\r\n\r\n"[..]).await;
        res.map_err(|_| ForwardError::Status(502))?;
    }
    Ok(())
}

pub(crate) enum RelayError {
    ClientGone,
    Backend,
}

/// Relays the response body as DATA frames, waiting for the client's flow-control credit so
/// that a slow client holds at most [`MAX_SEND_BUFFER_BYTES`]. Returns whether the backend
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
    h1::drop_prefix(&mut rbuf, response.head_len);
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
        h1::drop_prefix(&mut rbuf, consumed);
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

pub(crate) fn status_code(status: u16) -> StatusCode {
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// A complete error response: to a gRPC call a gRPC status (see [`crate::grpc`]), else a short
/// plain-text body, as HTTP/1.1's.
pub(crate) fn send_error(respond: &mut SendResponse<Bytes>, status: StatusCode, grpc: bool) {
    if grpc && grpc::answers_as_grpc_status(status.as_u16()) {
        let _ = respond.send_response(grpc::trailers_only_response(status.as_u16()), true);
        return;
    }
    let body = format!(
        "{} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error")
    );
    let response = Response::builder()
        .status(status)
        .header(::http::header::CONTENT_TYPE, "text/plain")
        .header(::http::header::CONTENT_LENGTH, body.len())
        .body(());
    let Ok(response) = response else {
        return;
    };
    if let Ok(mut send) = respond.send_response(response, false) {
        let _ = send.send_data(Bytes::from(body), true);
    }
}
