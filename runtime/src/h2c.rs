//! Requests to h2c backends (the connections are [`crate::h2c_pool`]'s): from an h2 client
//! stream for stream, from an HTTP/1.1 client as one stream per request.
//!
//! - **Requests** are the forwarded HTTP/1.1 head ([`portcullis_core::http1`]'s writer, the one
//!   source of the identity, `X-Forwarded-*` and hop-by-hop rules) turned into h2 fields,
//!   with `te: trailers` kept when the client asked for trailers (gRPC requires it). Bodies
//!   and trailers are relayed frame by frame in both directions, with flow control: the
//!   credit a backend gets back is what the client took, and the other way round.
//! - **Timeouts.** The response head must come within the backend response timeout (504);
//!   after it, a stream ends when neither direction moved for the idle timeout ([`Activity`]):
//!   a streaming call lives as long as either side keeps talking (a client streaming its
//!   upload to a backend that answers only at the end, a watch a client only listens to).
//!
//! HTTP/1.1 backends never touch this module: the choice is made once per request on the
//! backend's protocol.

use std::cell::Cell;
use std::future::{Future, poll_fn};
use std::io::Write as _;
use std::pin::pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use ::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use bytes::Bytes;
use h2::client::ResponseFuture;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use portcullis_core::filters::HeaderModifier;
use portcullis_core::http1::{
    ChunkedDecoder, ContentLengthBody, HeadLimits, RequestBody, RequestHead, Version,
    parse_request_head,
};
use tracing::debug;

use crate::bufpool;
use crate::forward::{self, BackendAttempts, Delivered, ForwardError};
use crate::h2c_pool::H2cStream;
use crate::rejection::Rejection;
use crate::shard_state::ShardContext;
use crate::tls::ClientIo;

/// Fields the forwarded head may hold beyond the client's: `Host`, framing,
/// `X-Forwarded-For`, `X-Forwarded-Proto` and the identity fields.
const FORWARD_ADDED_FIELDS: usize = 8;

/// The request for an h2c backend, from the forwarded HTTP/1.1 head.
pub(crate) struct BackendRequest {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    /// The request has no body.
    end_of_stream: bool,
}

impl BackendRequest {
    /// `forwarded_head`: what [`portcullis_core::http1::write_forwarded_request_head`] wrote;
    /// `wants_trailers`: the client sent `te: trailers`. `Err`: why the gateway answers.
    pub(crate) fn from_forwarded_head(
        forwarded_head: &[u8],
        wants_trailers: bool,
    ) -> Result<Self, Rejection> {
        let limits = HeadLimits {
            max_head_bytes: forwarded_head.len(),
            max_headers: forward::MAX_HEADERS + FORWARD_ADDED_FIELDS,
        };
        let head = match parse_request_head(forwarded_head, &limits) {
            Ok(Some(head)) => head,
            // Our own writer's output: anything else is a bug of ours.
            Ok(None) | Err(_) => return Err(Rejection::Internal),
        };
        let method = Method::from_bytes(head.method(forwarded_head).as_bytes())
            .map_err(|_| Rejection::BadRequest)?;
        let authority = head.forward_host(forwarded_head);
        let uri = Uri::builder()
            .scheme("http")
            .authority(if authority.is_empty() {
                b"localhost".as_slice()
            } else {
                authority
            })
            .path_and_query(head.target(forwarded_head))
            .build()
            .map_err(|_| Rejection::BadRequest)?;
        let mut headers = HeaderMap::with_capacity(head.header_spans().len() + 1);
        for (name, value) in head.headers(forwarded_head).iter() {
            // Host became `:authority`; HTTP/2 frames the body itself (RFC 9113 §8.2.2).
            if name.eq_ignore_ascii_case(b"host") || name.eq_ignore_ascii_case(b"transfer-encoding")
            {
                continue;
            }
            let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
            else {
                return Err(Rejection::BadRequest);
            };
            headers.append(name, value);
        }
        if wants_trailers {
            headers.insert(::http::header::TE, HeaderValue::from_static("trailers"));
        }
        Ok(Self {
            method,
            uri,
            headers,
            end_of_stream: matches!(head.body, RequestBody::None | RequestBody::ContentLength(0)),
        })
    }

    fn request(&self) -> Request<()> {
        let mut request = Request::new(());
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        request
    }
}

/// Whether a `te` field value lists `trailers` (the only value HTTP/2 allows).
pub(crate) fn te_lists_trailers(value: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|element| element.trim_ascii().eq_ignore_ascii_case(b"trailers"))
}

/// Sends the request's head on a stream of the chosen backend: a pooled connection with room,
/// else a new one (connect failures move on to other endpoints, as for HTTP/1.1); once more on
/// a new connection when a pooled one would not take it.
async fn send_head(
    attempts: &mut BackendAttempts<'_>,
    request: &BackendRequest,
    ctx: &ShardContext,
) -> Result<(ResponseFuture, SendStream<Bytes>, H2cStream), ForwardError> {
    let mut fresh = false;
    loop {
        let stream = attempts.h2c_stream(ctx, fresh).await?;
        let mut send = stream.sender();
        let sent = match poll_fn(|cx| send.poll_ready(cx)).await {
            Ok(()) => send.send_request(request.request(), request.end_of_stream),
            Err(e) => Err(e),
        };
        match sent {
            Ok((response, body)) => return Ok((response, body, stream)),
            Err(e) => {
                debug!(shard = ctx.index, endpoint = %stream.endpoint, error = %e, "h2c backend connection took no new stream");
                stream.end_connection();
                if stream.reused && !fresh {
                    fresh = true;
                    continue;
                }
                return Err(ForwardError::Rejected(Rejection::BackendClosed));
            }
        }
    }
}

/// Waits for the backend's response head.
async fn response_head(
    response: ResponseFuture,
    ctx: &ShardContext,
) -> Result<Response<RecvStream>, ForwardError> {
    match monoio::time::timeout(ctx.limits.backend_response_timeout, response).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(e)) => {
            debug!(shard = ctx.index, error = %e, "h2c backend stream failed before its response");
            Err(ForwardError::Rejected(Rejection::BackendClosed))
        }
        Err(_) => Err(ForwardError::Rejected(Rejection::BackendTimeout)),
    }
}

/// Forwards a request from an h2 client to an h2c backend: head, DATA and trailers both ways,
/// the request body streamed while the response comes back (bidirectional gRPC streams).
/// Returns the status the client got.
pub(crate) async fn forward_from_h2(
    mut attempts: BackendAttempts<'_>,
    request: &BackendRequest,
    client_body: &mut RecvStream,
    respond: &mut SendResponse<Bytes>,
    response_headers: &HeaderModifier,
    ctx: &ShardContext,
) -> Result<u16, ForwardError> {
    let (response, backend_body, _stream) = send_head(&mut attempts, request, ctx).await?;
    let activity = Activity::new(ctx.limits.idle_timeout);
    let activity = &activity;
    let upload = async move {
        let Some(mut to) = (!request.end_of_stream).then_some(backend_body) else {
            return;
        };
        if let Err(e) = pipe(client_body, &mut to, activity).await {
            // The client broke off its request: the backend's stream goes too.
            if e != PipeError::Sink {
                to.send_reset(Reason::CANCEL);
            }
        }
    };
    let download = async {
        let outcome = response_head(response, ctx).await;
        attempts.count_response_timeout(&outcome, ctx);
        let response = outcome?;
        let (mut parts, mut body) = response.into_parts();
        forward::modify_response_headers(&mut parts.headers, response_headers);
        let status = parts.status.as_u16();
        let end = body.is_end_stream();
        let mut send = respond
            .send_response(Response::from_parts(parts, ()), end)
            .map_err(|_| ForwardError::ClientGone)?;
        if end {
            return Ok(status);
        }
        match pipe(&mut body, &mut send, activity).await {
            Ok(()) => Ok(status),
            Err(PipeError::Sink) => Err(ForwardError::ClientGone),
            Err(PipeError::Source | PipeError::Idle) => {
                send.send_reset(Reason::INTERNAL_ERROR);
                Err(ForwardError::Broken(status))
            }
        }
    };
    beside(download, upload).await
}

/// Forwards a request from an HTTP/1.1 client to an h2c backend: the body (Content-Length or
/// chunked) as DATA, then the response as HTTP/1.1, chunked, with the backend's trailers as
/// chunked trailers.
pub(crate) async fn forward_from_h1<C: ClientIo>(
    client: &mut C,
    inbuf: &mut Vec<u8>,
    head: &RequestHead,
    request: &BackendRequest,
    mut attempts: BackendAttempts<'_>,
    response_headers: &HeaderModifier,
    ctx: &ShardContext,
) -> Result<Delivered, ForwardError> {
    let (response, mut backend_body, _stream) = send_head(&mut attempts, request, ctx).await?;
    if !request.end_of_stream {
        upload_h1_body(client, inbuf, head.body, &mut backend_body, ctx).await?;
    }
    let outcome = response_head(response, ctx).await;
    attempts.count_response_timeout(&outcome, ctx);
    let response = outcome?;
    let (mut parts, mut body) = response.into_parts();
    forward::modify_response_headers(&mut parts.headers, response_headers);
    let status = parts.status.as_u16();
    let end = body.is_end_stream();
    let http11 = head.version == Version::Http11;
    // A body an HTTP/1.0 client can read only until the connection closes.
    let keep_alive = head.keep_alive && !ctx.draining.is_fired() && (end || http11);
    let mut out = bufpool::take();
    let reason = parts.status.canonical_reason().unwrap_or("");
    let _ = write!(out, "HTTP/1.1 {status} {reason}\r\n");
    let mut has_length = false;
    for (name, value) in &parts.headers {
        if *name == ::http::header::CONTENT_LENGTH {
            if !end && http11 {
                continue; // chunked instead
            }
            has_length = true;
        }
        write_field(&mut out, name.as_str().as_bytes(), value.as_bytes());
    }
    let bodiless = head.is_head()
        || status == StatusCode::NO_CONTENT.as_u16()
        || status == StatusCode::NOT_MODIFIED.as_u16();
    if end {
        if !has_length && !bodiless {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
    } else if http11 {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let queued = client.queue(&out);
    bufpool::give(out);
    queued.map_err(|_| ForwardError::ClientGone)?;
    let relayed = if end {
        Ok(())
    } else {
        relay_to_h1(client, &mut body, http11, ctx.limits.idle_timeout).await
    };
    match relayed {
        Ok(()) => {
            if !keep_alive {
                client.queue_close();
            }
            client
                .flush()
                .await
                .map_err(|_| ForwardError::Broken(status))?;
            Ok(Delivered { keep_alive, status })
        }
        Err(_) => Err(ForwardError::Broken(status)),
    }
}

/// The HTTP/1.1 client's request body (what `inbuf` holds of it, then what the client sends)
/// as DATA on `to`, ending the stream with the body.
async fn upload_h1_body<C: ClientIo>(
    client: &mut C,
    inbuf: &mut Vec<u8>,
    framing: RequestBody,
    to: &mut SendStream<Bytes>,
    ctx: &ShardContext,
) -> Result<(), ForwardError> {
    enum Decoder {
        Length(ContentLengthBody),
        Chunked(ChunkedDecoder),
    }
    let mut decoder = match framing {
        RequestBody::ContentLength(n) => Decoder::Length(ContentLengthBody::new(n)),
        RequestBody::Chunked => Decoder::Chunked(ChunkedDecoder::new()),
        RequestBody::None => return Ok(()),
    };
    loop {
        let mut data = Vec::new();
        let (consumed, done) = match &mut decoder {
            Decoder::Length(length) => {
                let p = length.advance(inbuf);
                data.extend_from_slice(inbuf.get(..p.consumed).unwrap_or_default());
                (p.consumed, p.done)
            }
            Decoder::Chunked(chunked) => {
                match chunked.advance_with(inbuf, |piece| data.extend_from_slice(piece)) {
                    Ok(p) => (p.consumed, p.done),
                    Err(_) => return Err(ForwardError::Rejected(Rejection::BadRequestBody)),
                }
            }
        };
        forward::drop_prefix(inbuf, consumed);
        if !data.is_empty() || done {
            send_all(to, Bytes::from(data), done)
                .await
                .map_err(|_| ForwardError::Rejected(Rejection::BackendClosed))?;
        }
        if done {
            return Ok(());
        }
        if inbuf.capacity() == 0 {
            *inbuf = bufpool::take();
        }
        match monoio::time::timeout(ctx.limits.idle_timeout, client.read_into(inbuf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => {
                to.send_reset(Reason::CANCEL);
                return Err(ForwardError::ClientGone);
            }
        }
    }
}

/// The backend's DATA to an HTTP/1.1 client, each frame flushed as it comes (streamed gRPC
/// messages must not wait for the next), chunk-encoded with the trailers as chunked trailers
/// (`http11`), else raw until the connection closes.
async fn relay_to_h1<C: ClientIo>(
    client: &mut C,
    from: &mut RecvStream,
    http11: bool,
    idle: Duration,
) -> Result<(), PipeError> {
    loop {
        let data = match monoio::time::timeout(idle, from.data()).await {
            Err(_) => return Err(PipeError::Idle),
            Ok(None) => break,
            Ok(Some(Err(_))) => return Err(PipeError::Source),
            Ok(Some(Ok(data))) => data,
        };
        if data.is_empty() {
            continue;
        }
        let mut out = bufpool::take();
        if http11 {
            let _ = write!(out, "{:x}\r\n", data.len());
        }
        out.extend_from_slice(&data);
        if http11 {
            out.extend_from_slice(b"\r\n");
        }
        let queued = client.queue(&out);
        bufpool::give(out);
        queued.map_err(|_| PipeError::Sink)?;
        client.flush().await.map_err(|_| PipeError::Sink)?;
        let _ = from.flow_control().release_capacity(data.len());
    }
    let trailers = match monoio::time::timeout(idle, from.trailers()).await {
        Err(_) => return Err(PipeError::Idle),
        Ok(Err(_)) => return Err(PipeError::Source),
        Ok(Ok(trailers)) => trailers,
    };
    if http11 {
        let mut out = bufpool::take();
        out.extend_from_slice(b"0\r\n");
        for (name, value) in trailers.iter().flatten() {
            write_field(&mut out, name.as_str().as_bytes(), value.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        let queued = client.queue(&out);
        bufpool::give(out);
        queued.map_err(|_| PipeError::Sink)?;
    }
    Ok(())
}

fn write_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Which side of a relay broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PipeError {
    /// The stream we read from failed.
    Source,
    /// The stream we write to failed or was reset.
    Sink,
    /// Nothing came for the idle timeout.
    Idle,
}

/// When a stream last moved, in either direction: it is idle only when both are quiet.
struct Activity {
    idle: Duration,
    last: Cell<Instant>,
}

impl Activity {
    fn new(idle: Duration) -> Self {
        Self {
            idle,
            last: Cell::new(Instant::now()),
        }
    }

    fn moved(&self) {
        self.last.set(Instant::now());
    }

    /// Polls `poll` until it is ready, or `None` once the stream was quiet for the idle
    /// timeout (the other direction's traffic counts too).
    async fn until<T>(
        &self,
        mut poll: impl FnMut(&mut std::task::Context<'_>) -> Poll<T>,
    ) -> Option<T> {
        loop {
            let quiet = self.last.get().elapsed();
            let left = self.idle.checked_sub(quiet).filter(|d| !d.is_zero())?;
            if let Ok(ready) = monoio::time::timeout(left, poll_fn(&mut poll)).await {
                return Some(ready);
            }
        }
    }
}

/// Relays DATA and then the trailers (or the end of stream) from `from` to `to`. Credit goes
/// back to `from` only as `to` takes the bytes, so a slow reader slows the writer down
/// instead of filling the shard.
async fn pipe(
    from: &mut RecvStream,
    to: &mut SendStream<Bytes>,
    activity: &Activity,
) -> Result<(), PipeError> {
    enum Next {
        Data(Option<Result<Bytes, h2::Error>>),
        SinkReset,
    }
    loop {
        // A reader that resets its stream ends the relay even while the writer is quiet (a
        // cancelled watch on a backend that sends rarely).
        let next = activity
            .until(|cx| {
                if to.poll_reset(cx).is_ready() {
                    return Poll::Ready(Next::SinkReset);
                }
                from.poll_data(cx).map(Next::Data)
            })
            .await;
        let data = match next {
            None => return Err(PipeError::Idle),
            Some(Next::SinkReset) => return Err(PipeError::Sink),
            Some(Next::Data(None)) => break,
            Some(Next::Data(Some(Err(_)))) => return Err(PipeError::Source),
            Some(Next::Data(Some(Ok(data)))) => data,
        };
        activity.moved();
        let len = data.len();
        send_all(to, data, false)
            .await
            .map_err(|_| PipeError::Sink)?;
        let _ = from.flow_control().release_capacity(len);
    }
    match activity.until(|cx| from.poll_trailers(cx)).await {
        None => Err(PipeError::Idle),
        Some(Err(_)) => Err(PipeError::Source),
        Some(Ok(Some(trailers))) => to.send_trailers(trailers).map_err(|_| PipeError::Sink),
        Some(Ok(None)) => to
            .send_data(Bytes::new(), true)
            .map_err(|_| PipeError::Sink),
    }
}

/// Sends `data` as the peer's window allows; `end` ends the stream with it.
async fn send_all(to: &mut SendStream<Bytes>, mut data: Bytes, end: bool) -> Result<(), h2::Error> {
    if data.is_empty() {
        return if end {
            to.send_data(data, true)
        } else {
            Ok(())
        };
    }
    while !data.is_empty() {
        to.reserve_capacity(data.len());
        let granted = match poll_fn(|cx| to.poll_capacity(cx)).await {
            Some(Ok(granted)) => granted,
            Some(Err(e)) => return Err(e),
            None => return Err(Reason::CANCEL.into()),
        };
        if granted == 0 {
            continue;
        }
        let piece = data.split_to(granted.min(data.len()));
        to.send_data(piece, end && data.is_empty())?;
    }
    Ok(())
}

/// Runs `main` to its end with `side` running beside it (dropped, unfinished, when `main`
/// ends first).
async fn beside<T>(main: impl Future<Output = T>, side: impl Future<Output = ()>) -> T {
    let mut main = pin!(main);
    let mut side = pin!(side);
    let mut side_done = false;
    poll_fn(|cx| {
        if !side_done && side.as_mut().poll(cx).is_ready() {
            side_done = true;
        }
        main.as_mut().poll(cx)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn te_trailers_is_found_in_a_list() {
        assert!(te_lists_trailers(b"trailers"));
        assert!(te_lists_trailers(b"gzip, Trailers"));
        assert!(!te_lists_trailers(b"gzip"));
    }

    #[test]
    fn the_forwarded_head_becomes_h2_fields_without_framing_or_host() {
        let head = b"POST /pkg.Svc/Call?x=1 HTTP/1.1\r\nHost: grpc.example.com:8443\r\n\
content-type: application/grpc\r\nTransfer-Encoding: chunked\r\nX-Forwarded-For: 10.0.0.1\r\n\
X-Forwarded-Proto: https\r\nx-forwarded-client-cert: Hash=abc\r\n\r\n";
        let request = BackendRequest::from_forwarded_head(head, true).unwrap();
        let r = request.request();
        assert_eq!(r.method(), Method::POST);
        assert_eq!(
            r.uri().to_string(),
            "http://grpc.example.com:8443/pkg.Svc/Call?x=1"
        );
        assert!(!request.end_of_stream);
        let h = r.headers();
        assert!(h.get("host").is_none() && h.get("transfer-encoding").is_none());
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["x-forwarded-client-cert"], "Hash=abc");
        assert_eq!(h["x-forwarded-for"], "10.0.0.1");
        assert_eq!(h["content-type"], "application/grpc");

        let get = BackendRequest::from_forwarded_head(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", false)
            .unwrap();
        assert!(get.end_of_stream);
        assert!(get.request().headers().get("te").is_none());
    }
}
