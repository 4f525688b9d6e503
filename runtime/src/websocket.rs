//! WebSocket through the gateway: the opening handshake is an HTTP request like any other
//! (routed, identity headers added and client copies stripped), then the connection becomes a
//! byte tunnel between the client and the backend.
//!
//! - **HTTP/1.1 `Upgrade: websocket`** (RFC 6455): [`portcullis_core::http1::websocket_upgrade`]
//!   says which requests ask for one (malformed ones get 400); the handshake goes to a new or
//!   pooled backend connection with the upgrade asked for again, and the backend's `101` must
//!   switch to `websocket` with the `Sec-WebSocket-Accept` of the client's key (else 502). The
//!   101 is relayed and `http::serve` hands the connection back to its owner, which
//!   turns it into a tunnel ([`tunnel_h1`]). Any other answer is relayed as a normal response.
//! - **HTTP/2 extended CONNECT** (RFC 8441): the server advertises
//!   `SETTINGS_ENABLE_CONNECT_PROTOCOL`; a CONNECT stream with `:protocol websocket` is written
//!   out as the HTTP/1.1 `GET` upgrade a browser would send (with a key of ours, whose accept
//!   value the 101 must carry) and routed on `:authority` and `:path` exactly as HTTP/1.1. The
//!   101 becomes a 200 on the stream, then DATA frames and backend bytes are copied both ways
//!   ([`H2Stream`]), END_STREAM and half-close passed on, within the stream's flow-control
//!   window: a slow side stops the other, nothing is buffered beyond one window.
//! - **The tunnel** copies bytes, never frames: WebSocket framing, masking and close frames are
//!   the two ends' business. It ends when both directions ended (each end's close, or half-close,
//!   is passed to the other), on an error of either side, or after
//!   [`crate::limits::Limits::websocket_idle_timeout`] without a byte either way. A tunnel is a
//!   connection like any other for a drain: it may run until the drain deadline, when the
//!   process exits and closes it.
//! - The backend connection of an upgrade is never returned to the pool, whatever the answer
//!   (a backend that refused the upgrade may still hold state for it).
//! - Metrics count the opening handshake (`protocol="websocket"`, the status the client got,
//!   the time to the backend's answer), not the tunnel's lifetime.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use ::http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use monoio::io::AsyncWriteRentExt;
use portcullis_core::http1::{
    ClientConn, ForwardExtras, HeadLimits, RequestHead, ResponseBody, ResponseHead,
    SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, check_switching_protocols, generate_key,
    parse_request_head, parse_upgrade_response_head, websocket_upgrade,
    write_forwarded_response_head, write_switching_protocols_head, write_websocket_request_head,
};
use portcullis_core::routing::RouteTarget;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tracing::debug;

use crate::backend::BackendConnection;
use crate::bufpool;
use crate::forward::{self, BackendAttempts, ForwardError, count_request};
use crate::metrics::{RequestProtocol, RouteMetrics, ShardMetrics, TunnelEnd};
use crate::rejection::{Rejection, Reply};
use crate::route::{self, ConnInfo, Route};
use crate::shard_state::{ShardContext, ShardPort, TargetState};
use crate::tls::{ClientIo, read_append};

/// `101 Switching Protocols`.
const SWITCHING_PROTOCOLS: u16 = StatusCode::SWITCHING_PROTOCOLS.as_u16();

/// How long closing an idle tunnel may wait for the client to take our close (TLS
/// close_notify and FIN): a client that stopped reading does not hold the shard's slot.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// An HTTP/1.1 connection whose backend switched to WebSocket: the backend connection, and the
/// bytes the client sent after its handshake (already WebSocket frames).
#[derive(Debug)]
pub struct Upgraded {
    backend: BackendConnection,
    from_client: Vec<u8>,
}

/// What an HTTP/1.1 opening handshake came to.
#[derive(Debug)]
pub(crate) struct H1Outcome {
    /// `Some`: the 101 was relayed; the connection is now a tunnel.
    pub upgraded: Option<Upgraded>,
    /// Whether the client connection may carry another request (a refused upgrade).
    pub keep_alive: bool,
    /// What the client got.
    pub reply: Reply,
}

/// Forwards an HTTP/1.1 WebSocket handshake (one that
/// [`portcullis_core::http1::websocket_upgrade`] accepted) and relays the answer.
pub(crate) async fn forward_h1<C: ClientIo>(
    client: &mut C,
    inbuf: &mut Vec<u8>,
    head: &RequestHead,
    target: &RouteTarget,
    state: &TargetState,
    ctx: &ShardContext,
    info: &ConnInfo<'_>,
) -> H1Outcome {
    let key = head
        .headers(inbuf)
        .get(SEC_WEBSOCKET_KEY)
        .unwrap_or_default()
        .to_vec();
    let mut request_head = bufpool::take();
    write_websocket_request_head(
        head,
        inbuf,
        &ForwardExtras {
            client_ip: info.peer.ip(),
            proto: info.proto,
            identity_headers: info.identity_headers,
            request_headers: &target.filters.request_headers,
        },
        &mut request_head,
    );
    forward::drop_prefix(inbuf, head.head_len);
    let answer = handshake(target, state, ctx, &request_head, &key).await;
    bufpool::give(request_head);
    let closed = |reply| H1Outcome {
        upgraded: None,
        keep_alive: false,
        reply,
    };
    match answer {
        Ok(Answer::Switched {
            backend,
            response,
            rbuf,
        }) => {
            let mut out = bufpool::take();
            write_switching_protocols_head(&response, &rbuf, &mut out);
            // What the backend sent right behind its 101 is the tunnel's first bytes.
            out.extend_from_slice(rbuf.get(response.head_len..).unwrap_or_default());
            bufpool::give(rbuf);
            let sent = client.queue(&out).is_ok() && client.flush().await.is_ok();
            bufpool::give(out);
            if !sent {
                return closed(Reply::Gateway(Rejection::ClientClosed));
            }
            H1Outcome {
                upgraded: Some(Upgraded {
                    backend,
                    from_client: std::mem::take(inbuf),
                }),
                keep_alive: false,
                reply: Reply::Backend(SWITCHING_PROTOCOLS),
            }
        }
        Ok(Answer::Refused {
            mut backend,
            response,
            rbuf,
        }) => {
            let mut out = bufpool::take();
            let plan = write_forwarded_response_head(
                &response,
                &rbuf,
                ClientConn {
                    version: head.version,
                    keep_alive: head.keep_alive && !ctx.draining.is_fired(),
                },
                &target.filters.response_headers,
                &mut out,
            );
            // The backend connection is dropped after it, never pooled (see the module doc).
            let relayed =
                forward::relay_response_body(client, &mut backend, rbuf, &response, plan, out, ctx)
                    .await;
            H1Outcome {
                upgraded: None,
                keep_alive: relayed.is_ok() && plan.keep_alive,
                reply: Reply::Backend(response.status),
            }
        }
        Err(ForwardError::Rejected(rejection)) => {
            if client.queue(&rejection.h1_response(false)).is_ok() {
                let _ = client.flush().await;
            }
            closed(Reply::Gateway(rejection))
        }
        Err(ForwardError::Broken(status)) => closed(Reply::Backend(status)),
        Err(ForwardError::StaleConnection | ForwardError::ClientGone) => {
            closed(Reply::Gateway(Rejection::ClientClosed))
        }
    }
}

/// Runs the tunnel of an upgraded HTTP/1.1 connection (`client`: the client connection in poll
/// mode, its 101 already sent) until it ends, then closes both connections.
pub async fn tunnel_h1<S>(mut client: S, upgraded: Upgraded, ctx: &ShardContext, peer: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let end = tunnel(
        &mut client,
        upgraded.backend,
        &upgraded.from_client,
        &[],
        ctx,
    )
    .await;
    debug!(shard = ctx.index, %peer, end = end.label(), "WebSocket tunnel ended");
    if end != TunnelEnd::Closed {
        let _ = monoio::time::timeout(CLOSE_TIMEOUT, client.shutdown()).await;
    }
}

/// Counts a tunnel open while it runs, and how it ended once it does: dropped without an end
/// (the drain's deadline or the shard's shutdown cut it), it counts as [`TunnelEnd::Cut`].
struct TunnelCount<'m> {
    metrics: &'m ShardMetrics,
    end: Option<TunnelEnd>,
}

impl<'m> TunnelCount<'m> {
    fn open(metrics: &'m ShardMetrics) -> Self {
        metrics.websocket_opened();
        Self { metrics, end: None }
    }

    fn ended(mut self, end: TunnelEnd) -> TunnelEnd {
        self.end = Some(end);
        end
    }
}

impl Drop for TunnelCount<'_> {
    fn drop(&mut self) {
        self.metrics
            .websocket_closed(self.end.unwrap_or(TunnelEnd::Cut));
    }
}

/// Copies bytes both ways between `client` and the backend until the tunnel ends: first
/// `from_client` to the backend and `to_client` to the client (bytes that arrived with the
/// handshake), then whatever either side sends.
async fn tunnel<S>(
    client: &mut S,
    backend: BackendConnection,
    from_client: &[u8],
    to_client: &[u8],
    ctx: &ShardContext,
) -> TunnelEnd
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let count = TunnelCount::open(&ctx.metrics);
    let backend = match backend.tcp.try_into_poll_io() {
        Ok(backend) => backend,
        Err((e, _)) => {
            debug!(shard = ctx.index, error = %e, "cannot switch the backend connection to poll mode");
            return count.ended(TunnelEnd::Error);
        }
    };
    let last_byte = Cell::new(Instant::now());
    let mut client = Watched {
        inner: client,
        last_byte: &last_byte,
    };
    let mut backend = Watched {
        inner: backend,
        last_byte: &last_byte,
    };
    let idle_timeout = ctx.limits.websocket_idle_timeout;
    let idle = async {
        loop {
            let deadline = last_byte.get() + idle_timeout;
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            monoio::time::sleep(deadline - now).await;
        }
    };
    let copy = async {
        if !from_client.is_empty() {
            backend.write_all(from_client).await?;
        }
        if !to_client.is_empty() {
            client.write_all(to_client).await?;
            client.flush().await?;
        }
        tokio::io::copy_bidirectional(&mut client, &mut backend).await
    };
    let end = monoio::select! {
        copied = copy => match copied {
            Ok(_) => TunnelEnd::Closed,
            Err(_) => TunnelEnd::Error,
        },
        () = idle => TunnelEnd::Idle,
    };
    count.ended(end)
}

/// A stream that records when it last received a byte (the tunnel's idle clock).
struct Watched<'a, S> {
    inner: S,
    last_byte: &'a Cell<Instant>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<'_, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.last_byte.set(Instant::now());
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<'_, S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The backend's answer to a handshake.
enum Answer {
    /// A checked 101: the connection now speaks WebSocket; `rbuf` holds the 101 head and
    /// whatever followed it.
    Switched {
        backend: BackendConnection,
        response: ResponseHead,
        rbuf: Vec<u8>,
    },
    /// Any other final response, to relay as usual; `rbuf` starts with its head.
    Refused {
        backend: BackendConnection,
        response: ResponseHead,
        rbuf: Vec<u8>,
    },
}

/// Sends the handshake (`request_head`, whose key is `key`) to an endpoint of the route's
/// backend, with the usual connect retries and one resend when a pooled connection turned out
/// stale (a handshake has no body: sending it again is safe).
async fn handshake(
    target: &RouteTarget,
    state: &TargetState,
    ctx: &ShardContext,
    request_head: &[u8],
    key: &[u8],
) -> Result<Answer, ForwardError> {
    let mut attempts =
        BackendAttempts::choose(target, state, ctx).map_err(ForwardError::Rejected)?;
    loop {
        let mut backend = attempts.connect(ctx, false).await?;
        let reused = backend.reused;
        let outcome = exchange(&mut backend, request_head, key, ctx).await;
        attempts.count_response_timeout(&outcome, ctx);
        match outcome {
            Ok((response, rbuf)) if response.status == SWITCHING_PROTOCOLS => {
                return Ok(Answer::Switched {
                    backend,
                    response,
                    rbuf,
                });
            }
            Ok((response, rbuf)) => {
                return Ok(Answer::Refused {
                    backend,
                    response,
                    rbuf,
                });
            }
            Err(ForwardError::StaleConnection) if attempts.retry_unanswered(reused, true, ctx) => {}
            Err(ForwardError::StaleConnection) => {
                return Err(ForwardError::Rejected(Rejection::BackendClosed));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Writes the handshake and reads the backend's final answer (informational 1xx skipped); a
/// 101 is checked against `key`.
async fn exchange(
    backend: &mut BackendConnection,
    request_head: &[u8],
    key: &[u8],
    ctx: &ShardContext,
) -> Result<(ResponseHead, Vec<u8>), ForwardError> {
    let mut out = bufpool::take();
    out.extend_from_slice(request_head);
    let (res, buf) = backend.tcp.write_all(out).await;
    bufpool::give(buf);
    if res.is_err() {
        return Err(ForwardError::StaleConnection);
    }
    let limits = HeadLimits {
        max_head_bytes: forward::MAX_RESPONSE_HEAD_BYTES,
        max_headers: forward::MAX_HEADERS,
    };
    let mut rbuf = bufpool::take();
    loop {
        match parse_upgrade_response_head(&rbuf, &limits) {
            Ok(Some(response)) if response.is_informational => {
                forward::drop_prefix(&mut rbuf, response.head_len);
                continue;
            }
            Ok(Some(response)) => {
                if response.status == SWITCHING_PROTOCOLS
                    && let Err(e) = check_switching_protocols(&response, &rbuf, key)
                {
                    debug!(shard = ctx.index, endpoint = %backend.endpoint, error = %e, "backend's 101 does not open a WebSocket");
                    bufpool::give(rbuf);
                    return Err(ForwardError::Rejected(Rejection::BadResponse));
                }
                return Ok((response, rbuf));
            }
            Ok(None) => {}
            Err(e) => {
                debug!(shard = ctx.index, endpoint = %backend.endpoint, error = %e, "bad response head from backend");
                bufpool::give(rbuf);
                return Err(ForwardError::Rejected(Rejection::BadResponse));
            }
        }
        let read = monoio::time::timeout(
            ctx.limits.backend_response_timeout,
            read_append(&mut backend.tcp, std::mem::take(&mut rbuf)),
        )
        .await;
        let Ok((res, buf)) = read else {
            return Err(ForwardError::Rejected(Rejection::BackendTimeout));
        };
        rbuf = buf;
        match res {
            Ok(n) if n > 0 => {}
            // Closed before any response byte: a stale pooled connection, if it was one.
            _ if rbuf.is_empty() => return Err(ForwardError::StaleConnection),
            _ => return Err(ForwardError::Rejected(Rejection::BackendClosed)),
        }
    }
}

/// The `:protocol` of an extended CONNECT stream (RFC 8441 §4) that opens a WebSocket.
const WEBSOCKET_PROTOCOL: &str = "websocket";

/// Serves an HTTP/2 stream that carries `:protocol` (extended CONNECT): a WebSocket is opened
/// to the route's backend and tunnelled; any other protocol is refused with 501. The stream is
/// counted like a request, when its handshake is answered.
pub(crate) async fn serve_extended_connect(
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    port: &ShardPort,
    ctx: &ShardContext,
    info: &ConnInfo<'_>,
) {
    let started = Instant::now();
    let (reply, metrics, opened) =
        open_extended_connect(request, &mut respond, port, ctx, info).await;
    count_request(
        metrics.as_deref().unwrap_or(&port.metrics.unrouted),
        RequestProtocol::WebSocket,
        reply,
        started.elapsed(),
        ctx,
        info.peer,
    );
    let Some(Opened {
        mut stream,
        backend,
        to_client,
    }) = opened
    else {
        return;
    };
    let end = tunnel(&mut stream, backend, &[], &to_client, ctx).await;
    debug!(shard = ctx.index, peer = %info.peer, end = end.label(), "WebSocket tunnel over HTTP/2 ended");
    if end != TunnelEnd::Closed {
        stream.send.send_reset(Reason::CANCEL);
    }
}

/// A stream whose backend switched: the stream as a byte stream, the backend connection, and
/// the bytes the backend sent right behind its 101.
struct Opened {
    stream: H2Stream,
    backend: BackendConnection,
    to_client: Vec<u8>,
}

/// The handshake of an extended CONNECT stream: the status the client got, the route's
/// metrics (`None`: not routed) and, after a 200, the tunnel to run.
async fn open_extended_connect(
    request: Request<RecvStream>,
    respond: &mut SendResponse<Bytes>,
    port: &ShardPort,
    ctx: &ShardContext,
    info: &ConnInfo<'_>,
) -> (Reply, Option<Rc<RouteMetrics>>, Option<Opened>) {
    let refuse = |respond: &mut SendResponse<Bytes>, rejection: Rejection| {
        rejection.send_h2(respond, false);
        (Reply::Gateway(rejection), None, None)
    };
    let (mut parts, body) = request.into_parts();
    let is_websocket = parts
        .extensions
        .get::<h2::ext::Protocol>()
        .is_some_and(|p| p.as_str().eq_ignore_ascii_case(WEBSOCKET_PROTOCOL));
    if !is_websocket {
        // The gateway tunnels WebSocket only (no CONNECT-UDP, no other protocol).
        return refuse(respond, Rejection::NotImplemented);
    }
    let Some(key) = generate_key() else {
        return refuse(respond, Rejection::Internal);
    };
    // The HTTP/1.1 handshake a browser would send (RFC 8441 §5): a GET asking for the upgrade,
    // with our key (a client's own key or accept fields mean nothing over h2).
    parts.method = Method::GET;
    parts.headers.remove(SEC_WEBSOCKET_KEY);
    parts.headers.remove(SEC_WEBSOCKET_ACCEPT);
    let (Ok(key_value), upgrade) = (
        HeaderValue::from_str(&key),
        HeaderValue::from_static(WEBSOCKET_PROTOCOL),
    ) else {
        return refuse(respond, Rejection::Internal);
    };
    parts
        .headers
        .insert(HeaderName::from_static(SEC_WEBSOCKET_KEY), key_value);
    parts.headers.insert(::http::header::UPGRADE, upgrade);
    parts.headers.insert(
        ::http::header::CONNECTION,
        HeaderValue::from_static("upgrade"),
    );
    let mut head_buf = bufpool::take();
    // The stream's DATA is the tunnel, never a body: the head says none.
    if let Err(rejection) = forward::h1_head(&parts, true, &mut head_buf) {
        bufpool::give(head_buf);
        return refuse(respond, rejection);
    }
    let limits = HeadLimits {
        max_head_bytes: ctx.limits.max_request_head_bytes,
        max_headers: forward::MAX_HEADERS,
    };
    let head = match parse_request_head(&head_buf, &limits) {
        Ok(Some(head)) => head,
        Ok(None) => return refuse(respond, Rejection::BadRequest),
        Err(e) => return refuse(respond, Rejection::of_request_head(&e)),
    };
    match websocket_upgrade(&head, &head_buf) {
        Ok(true) => {}
        Ok(false) => return refuse(respond, Rejection::BadWebSocketUpgrade),
        Err(e) => {
            debug!(shard = ctx.index, peer = %info.peer, error = %e, "malformed extended CONNECT");
            return refuse(respond, Rejection::BadWebSocketUpgrade);
        }
    }
    let (target, state) = match route::route(port, &head, &head_buf, info) {
        Route::Reject(rejection) => return refuse(respond, rejection),
        Route::Redirect { redirect, state } => {
            return (
                redirect.send_h2(respond),
                Some(Rc::clone(&state.metrics)),
                None,
            );
        }
        Route::Forward { target, state } => (target, state),
    };
    let metrics = Some(Rc::clone(&state.metrics));
    let mut request_head = bufpool::take();
    write_websocket_request_head(
        &head,
        &head_buf,
        &ForwardExtras {
            client_ip: info.peer.ip(),
            proto: info.proto,
            identity_headers: info.identity_headers,
            request_headers: &target.filters.request_headers,
        },
        &mut request_head,
    );
    bufpool::give(head_buf);
    let answer = handshake(target, state, ctx, &request_head, key.as_bytes()).await;
    bufpool::give(request_head);
    let (switched, backend, response, rbuf) = match answer {
        Ok(Answer::Switched {
            backend,
            response,
            rbuf,
        }) => (true, backend, response, rbuf),
        Ok(Answer::Refused {
            backend,
            response,
            rbuf,
        }) => (false, backend, response, rbuf),
        Err(ForwardError::Rejected(rejection)) => {
            rejection.send_h2(respond, false);
            return (Reply::Gateway(rejection), metrics, None);
        }
        Err(ForwardError::Broken(status)) => return (Reply::Backend(status), metrics, None),
        Err(ForwardError::StaleConnection | ForwardError::ClientGone) => {
            return (Reply::Gateway(Rejection::ClientClosed), metrics, None);
        }
    };
    // A 101 is the stream's 200 (RFC 8441 §5), with the backend's fields but its accept proof,
    // which only the HTTP/1.1 hop needed.
    let status = if switched {
        StatusCode::OK.as_u16()
    } else {
        response.status
    };
    let mut builder = Response::builder().status(status);
    for (name, value) in response.headers(&rbuf).iter() {
        if forward::is_hop_by_hop(name)
            || name.eq_ignore_ascii_case(SEC_WEBSOCKET_ACCEPT.as_bytes())
            || (switched && name.eq_ignore_ascii_case(b"content-length"))
        {
            continue;
        }
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            builder = builder.header(name, value);
        }
    }
    let Ok(mut h2_response) = builder.body(()) else {
        let rejection = Rejection::BadResponse;
        rejection.send_h2(respond, false);
        return (Reply::Gateway(rejection), metrics, None);
    };
    // As over HTTP/1.1: a refused upgrade's answer is changed, the one opening a tunnel is not.
    if !switched {
        forward::modify_response_headers(
            h2_response.headers_mut(),
            &target.filters.response_headers,
        );
    }
    let end_of_stream = !switched
        && matches!(
            response.body,
            ResponseBody::None | ResponseBody::ContentLength(0)
        );
    let Ok(send) = respond.send_response(h2_response, end_of_stream) else {
        return (Reply::Gateway(Rejection::ClientClosed), metrics, None);
    };
    if switched {
        let to_client = rbuf.get(response.head_len..).unwrap_or_default().to_vec();
        bufpool::give(rbuf);
        let stream = H2Stream {
            send,
            recv: body,
            received: Bytes::new(),
            ended: false,
        };
        return (
            Reply::Backend(status),
            metrics,
            Some(Opened {
                stream,
                backend,
                to_client,
            }),
        );
    }
    if !end_of_stream {
        let mut backend = backend;
        // The backend connection is dropped after it, never pooled.
        let _ = forward::relay_body(&response, rbuf, &mut backend, send, ctx).await;
    } else {
        bufpool::give(rbuf);
    }
    (Reply::Backend(status), metrics, None)
}

/// An HTTP/2 stream as a byte stream: reads are the client's DATA (end of stream: the
/// client's half-close), writes go out as DATA as the client's flow-control window allows,
/// shutdown is END_STREAM. Received DATA gives its flow-control credit back once taken from
/// h2, so a client sends at most one window ahead of what the backend accepted.
struct H2Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Received DATA not read yet.
    received: Bytes,
    ended: bool,
}

impl AsyncRead for H2Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.received.is_empty() {
            match ready!(this.recv.poll_data(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    this.received = data;
                }
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
            }
        }
        let n = this.received.len().min(buf.remaining());
        buf.put_slice(&this.received.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        this.send.reserve_capacity(buf.len());
        loop {
            let available = this.send.capacity();
            if available > 0 {
                let n = available.min(buf.len());
                this.send
                    .send_data(
                        Bytes::copy_from_slice(buf.get(..n).unwrap_or_default()),
                        false,
                    )
                    .map_err(io::Error::other)?;
                return Poll::Ready(Ok(n));
            }
            match ready!(this.send.poll_capacity(cx)) {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.ended {
            this.ended = true;
            this.send
                .send_data(Bytes::new(), true)
                .map_err(io::Error::other)?;
        }
        Poll::Ready(Ok(()))
    }
}
