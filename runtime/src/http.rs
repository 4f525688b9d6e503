//! HTTP/1.1 over an established client connection: read request heads (keep-alive and
//! pipelining), route them, forward each request to a backend endpoint and stream the
//! response back.
//!
//! Framing is decided by `portcullis_core::http1` (which refuses anything ambiguous); this
//! module only moves the bytes it says belong to a message. Requests are served one at a time
//! per connection: a pipelined request is read only after the previous response was sent.

use std::time::{Duration, Instant};

use monoio::io::AsyncWriteRentExt;
use portcullis_core::desired::BackendProtocol;
use portcullis_core::filters::HeaderModifier;
use portcullis_core::http1::{
    ChunkedDecoder, ClientConn, ContentLengthBody, ForwardExtras, HeadLimits, RequestBody,
    RequestHead, parse_request_head, websocket_upgrade, write_forwarded_request_head,
    write_forwarded_response_head,
};
use portcullis_core::routing::RouteTarget;
use tracing::debug;

use crate::backend::BackendConnection;
use crate::bufpool;
use crate::forward::{
    BackendAttempts, Delivered, ForwardError, MAX_HEADERS, count_request, drop_prefix,
    is_idempotent, read_response_head, relay_response_body,
};
use crate::h2c::{self, BackendRequest};
use crate::metrics::RequestProtocol;
use crate::rejection::{Rejection, Reply};
use crate::route::{ConnInfo, Route, route};
use crate::shard_state::{ShardContext, ShardPort, TargetState};
use crate::tls::ClientIo;
use crate::websocket::{self, Upgraded};

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
            Err(rejection) => {
                send_error(client, rejection, false).await;
                count_request(
                    &port.metrics.unrouted,
                    RequestProtocol::H1,
                    Reply::Gateway(rejection),
                    Duration::ZERO,
                    ctx,
                    info.peer,
                );
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
        let (keep_going, reply, protocol, metrics) = match route(port, &head, &inbuf, info) {
            Route::Reject(rejection) => {
                // Without a body the connection stays usable; with one, close rather than
                // read a body nobody wants.
                let keep =
                    head.keep_alive && head.body == RequestBody::None && !ctx.draining.is_fired();
                send_error(client, rejection, keep).await;
                if keep {
                    drop_prefix(&mut inbuf, head.head_len);
                }
                let reply = Reply::Gateway(rejection);
                (keep, reply, asked, &port.metrics.unrouted)
            }
            Route::Redirect { redirect, state } => {
                // As a refusal: a body nobody reads closes the connection.
                let keep =
                    head.keep_alive && head.body == RequestBody::None && !ctx.draining.is_fired();
                if client.queue(&redirect.h1_response(keep)).is_ok() {
                    let _ = client.flush().await;
                }
                if keep {
                    drop_prefix(&mut inbuf, head.head_len);
                }
                let reply = Reply::Redirect(redirect.status);
                (keep, reply, asked, &*state.metrics)
            }
            Route::Forward { target, state } => match upgrade {
                Ok(false) => {
                    let (keep, reply, protocol) =
                        forward(client, &mut inbuf, &head, target, state, ctx, info).await;
                    (keep, reply, protocol, &*state.metrics)
                }
                Ok(true) => {
                    let outcome =
                        websocket::forward_h1(client, &mut inbuf, &head, target, state, ctx, info)
                            .await;
                    upgraded = outcome.upgraded;
                    (outcome.keep_alive, outcome.reply, asked, &*state.metrics)
                }
                Err(e) => {
                    debug!(shard = ctx.index, error = %e, "malformed WebSocket upgrade");
                    let rejection = Rejection::BadWebSocketUpgrade;
                    send_error(client, rejection, false).await;
                    (false, Reply::Gateway(rejection), asked, &*state.metrics)
                }
            },
        };
        count_request(metrics, protocol, reply, started.elapsed(), ctx, info.peer);
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
/// stayed idle past the keep-alive timeout between requests. `Err`: answer and close.
async fn read_request_head<C: ClientIo>(
    client: &mut C,
    inbuf: &mut Vec<u8>,
    ctx: &ShardContext,
) -> Result<Option<RequestHead>, Rejection> {
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
                    return Err(Rejection::of_request_head(&e));
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
                return if inbuf.is_empty() {
                    Ok(None)
                } else {
                    Err(Rejection::HeadTimeout)
                };
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

/// Forwards one request and its response. Returns whether the client connection may carry
/// another request, what the client got and the
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
) -> (bool, Reply, RequestProtocol) {
    let mut attempts = match BackendAttempts::choose(target, state, ctx) {
        Ok(attempts) => attempts,
        Err(rejection) => {
            let keep =
                head.keep_alive && head.body == RequestBody::None && !ctx.draining.is_fired();
            send_error(client, rejection, keep).await;
            if keep {
                drop_prefix(inbuf, head.head_len);
            }
            return (keep, Reply::Gateway(rejection), RequestProtocol::H1);
        }
    };
    if head.expect_continue {
        // Reply the client's Expect ourselves (as nginx does): the body then streams without
        // a round trip to the backend; a 100 from the backend is forwarded too (harmless).
        if client.queue(b"HTTP/1.1 100 Continue\r\n\r\n").is_err() || client.flush().await.is_err()
        {
            return (
                false,
                Reply::Gateway(Rejection::ClientClosed),
                RequestProtocol::H1,
            );
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
            request_headers: &target.filters.request_headers,
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
        let response_headers = &target.filters.response_headers;
        let result = match BackendRequest::from_forwarded_head(&request_head, wants_trailers) {
            Ok(request) => {
                h2c::forward_from_h1(
                    client,
                    inbuf,
                    head,
                    &request,
                    attempts,
                    response_headers,
                    ctx,
                )
                .await
            }
            Err(rejection) => Err(ForwardError::Rejected(rejection)),
        };
        bufpool::give(request_head);
        let (keep, reply) = delivered_or_error(client, result).await;
        return (keep, reply, protocol);
    }
    let idempotent = is_idempotent(head.method(inbuf));
    drop_prefix(inbuf, head.head_len);
    let result = loop {
        let conn = match attempts.connect(ctx, head.body != RequestBody::None).await {
            Ok(conn) => conn,
            Err(e) => break Err(e),
        };
        let reused = conn.reused;
        let outcome = exchange(
            client,
            inbuf,
            head,
            &request_head,
            &target.filters.response_headers,
            conn,
            ctx,
        )
        .await;
        attempts.count_response_timeout(&outcome, ctx);
        match outcome {
            Err(ForwardError::StaleConnection)
                if attempts.retry_unanswered(reused, idempotent, ctx) => {}
            Err(ForwardError::StaleConnection) => {
                break Err(ForwardError::Rejected(Rejection::BackendClosed));
            }
            other => break other,
        }
    };
    bufpool::give(request_head);
    let (keep, reply) = delivered_or_error(client, result).await;
    (keep, reply, RequestProtocol::H1)
}

/// The outcome of a forwarded request for the client connection: whether it may carry another
/// request, and what the client got (the gateway answering here when nothing was sent yet).
async fn delivered_or_error<C: ClientIo>(
    client: &mut C,
    result: Result<Delivered, ForwardError>,
) -> (bool, Reply) {
    match result {
        Ok(delivered) => (delivered.keep_alive, Reply::Backend(delivered.status)),
        Err(ForwardError::Rejected(rejection)) => {
            send_error(client, rejection, false).await;
            (false, Reply::Gateway(rejection))
        }
        Err(ForwardError::Broken(status)) => (false, Reply::Backend(status)),
        Err(ForwardError::StaleConnection | ForwardError::ClientGone) => {
            (false, Reply::Gateway(Rejection::ClientClosed))
        }
    }
}

/// Sends the request (head, then body as it streams in) on `conn` and relays the response
/// (changed by the rule's `response_headers`).
async fn exchange<C: ClientIo>(
    client: &mut C,
    inbuf: &mut Vec<u8>,
    head: &RequestHead,
    request_head: &[u8],
    response_headers: &HeaderModifier,
    mut conn: BackendConnection,
    ctx: &ShardContext,
) -> Result<Delivered, ForwardError> {
    // 1. The head and whatever body bytes already arrived, in one write.
    let mut framing = BodyFraming::for_request(head.body);
    let (body_now, mut body_done) = framing
        .advance(inbuf)
        .map_err(|()| ForwardError::Rejected(Rejection::BadRequestBody))?;
    let mut out = bufpool::take();
    out.extend_from_slice(request_head);
    out.extend_from_slice(inbuf.get(..body_now).unwrap_or_default());
    let sent_body_bytes = body_now > 0;
    let (res, buf) = conn.tcp.write_all(out).await;
    bufpool::give(buf);
    if res.is_err() {
        return Err(if sent_body_bytes {
            ForwardError::Rejected(Rejection::BackendClosed)
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
            .map_err(|()| ForwardError::Rejected(Rejection::BadRequestBody))?;
        body_done = done;
        let mut chunk = bufpool::take();
        chunk.extend_from_slice(inbuf.get(..n).unwrap_or_default());
        drop_prefix(inbuf, n);
        let (res, buf) = conn.tcp.write_all(chunk).await;
        bufpool::give(buf);
        if res.is_err() {
            return Err(ForwardError::Rejected(Rejection::BackendClosed));
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
            response_headers,
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
        response_headers,
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

async fn send_error<C: ClientIo>(client: &mut C, rejection: Rejection, keep_alive: bool) {
    if client.queue(&rejection.h1_response(keep_alive)).is_ok() {
        let _ = client.flush().await;
    }
}
