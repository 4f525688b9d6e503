//! Response heads from backends: parsing, framing, and the facts the proxy needs.

use thiserror::Error;

use super::fields::{
    self, CodingScan, ConnectionOptions, Field, LengthError, classify, fold_content_length,
};
use super::{HeadLimits, HeaderSpan, Headers, MAX_HEADER_SLOTS, Span, Version};

/// How the response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseBody {
    /// No body: a response to `HEAD`, a 1xx, 204 or 304, whatever the framing fields say.
    None,
    ContentLength(u64),
    /// The final transfer coding is `chunked`; [`super::ChunkedDecoder`] finds the end.
    Chunked,
    /// No length: the body runs until the backend closes. The client connection must close after
    /// it, and the backend connection cannot be reused.
    CloseDelimited,
}

/// A parsed, validated response head, as byte ranges into the buffer it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    reason: Span,
    headers: Vec<HeaderSpan>,
    pub version: Version,
    pub status: u16,
    pub body: ResponseBody,
    /// The folded `Content-Length`, when present and valid (also for bodiless responses, where it
    /// describes the representation, as for `HEAD`).
    pub content_length: Option<u64>,
    /// Whether the backend connection can carry another request after this response.
    pub backend_keep_alive: bool,
    /// A 1xx other than 101: forward it (to HTTP/1.1 clients) and read the final response next.
    pub is_informational: bool,
    /// Bytes of the head, blank line included.
    pub head_len: usize,
}

impl ResponseHead {
    /// The reason phrase as received; empty when the backend sent none, or sent obs-text in it
    /// (httparse does not hand such phrases out).
    pub fn reason<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        self.reason.slice(buf)
    }

    pub fn headers<'a>(&'a self, buf: &'a [u8]) -> Headers<'a> {
        Headers {
            spans: &self.headers,
            buf,
        }
    }

    pub fn header_spans(&self) -> &[HeaderSpan] {
        &self.headers
    }

    /// Whether the client connection must close once this response's body is forwarded.
    pub fn close_delimited(&self) -> bool {
        self.body == ResponseBody::CloseDelimited
    }
}

/// `101 Switching Protocols` (RFC 9110 §15.2.2).
const SWITCHING_PROTOCOLS: u16 = 101;

/// Why a backend's response head was refused: the backend's fault, always a 502 to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ResponseHeadError {
    #[error("response head did not complete within {limit} bytes")]
    TooLarge { limit: usize },
    #[error("response head has more than {limit} header fields")]
    TooManyHeaders { limit: usize },
    #[error("malformed response head: {0}")]
    Malformed(httparse::Error),
    #[error("status code {0} outside 100..=599")]
    InvalidStatus(u16),
    #[error("101 Switching Protocols to a request that asked for no upgrade")]
    SwitchingProtocols,
    #[error("response has both Content-Length and Transfer-Encoding")]
    ContentLengthWithTransferEncoding,
    #[error("invalid Content-Length value")]
    InvalidContentLength,
    #[error("several differing Content-Length values")]
    ConflictingContentLength,
    #[error("empty Transfer-Encoding or chunked applied more than once")]
    InvalidTransferEncoding,
    #[error("Transfer-Encoding in an HTTP/1.0 response")]
    TransferEncodingInHttp10,
}

impl ResponseHeadError {
    /// What the client gets: 502 Bad Gateway, whatever the backend got wrong.
    pub fn status(&self) -> u16 {
        502
    }
}

/// Parses the response head at the start of `buf`. `request_method_is_head`: the request was
/// `HEAD`, so the response has no body whatever its fields say. `Ok(None)`: incomplete.
pub fn parse_response_head(
    buf: &[u8],
    request_method_is_head: bool,
    limits: &HeadLimits,
) -> Result<Option<ResponseHead>, ResponseHeadError> {
    parse_head(buf, request_method_is_head, false, limits)
}

/// Parses the answer to a request that asked for a protocol upgrade (a WebSocket opening
/// handshake, always a `GET`): as [`parse_response_head`], except that `101 Switching
/// Protocols` is accepted as the final response, without a body and with a backend connection
/// that no longer speaks HTTP ([`ResponseHead::backend_keep_alive`] false). Whether the 101
/// names the protocol asked for is [`super::check_switching_protocols`]'s business.
pub fn parse_upgrade_response_head(
    buf: &[u8],
    limits: &HeadLimits,
) -> Result<Option<ResponseHead>, ResponseHeadError> {
    parse_head(buf, false, true, limits)
}

fn parse_head(
    buf: &[u8],
    request_method_is_head: bool,
    upgrade_requested: bool,
    limits: &HeadLimits,
) -> Result<Option<ResponseHead>, ResponseHeadError> {
    let window = buf.get(..limits.max_head_bytes).unwrap_or(buf);
    let max_headers = limits.max_headers.min(MAX_HEADER_SLOTS);
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADER_SLOTS];
    let slots = slots.get_mut(..max_headers).unwrap_or_default();
    let mut res = httparse::Response::new(slots);
    let head_len = match res.parse(window) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if window.len() >= limits.max_head_bytes => {
            return Err(ResponseHeadError::TooLarge {
                limit: limits.max_head_bytes,
            });
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ResponseHeadError::TooManyHeaders { limit: max_headers });
        }
        Err(e) => return Err(ResponseHeadError::Malformed(e)),
    };
    let (Some(minor), Some(status)) = (res.version, res.code) else {
        return Err(ResponseHeadError::Malformed(httparse::Error::Status));
    };
    let version =
        Version::from_minor(minor).ok_or(ResponseHeadError::Malformed(httparse::Error::Version))?;
    if !(100..=599).contains(&status) {
        return Err(ResponseHeadError::InvalidStatus(status));
    }
    let switching = status == SWITCHING_PROTOCOLS;
    if switching && !upgrade_requested {
        return Err(ResponseHeadError::SwitchingProtocols);
    }
    let reason = res
        .reason
        .map_or(Span::default(), |r| Span::within(buf, r.as_bytes()));

    let mut headers = Vec::with_capacity(res.headers.len());
    let mut content_length: Option<Result<u64, LengthError>> = None;
    let mut codings = CodingScan::default();
    let mut connection = ConnectionOptions::default();
    for h in res.headers.iter() {
        headers.push(HeaderSpan {
            name: Span::within(buf, h.name.as_bytes()),
            value: Span::within(buf, h.value),
        });
        let value = fields::trim_ows(h.value);
        match classify(h.name.as_bytes()) {
            Field::ContentLength => {
                content_length = Some(match content_length {
                    None => fold_content_length(None, value),
                    Some(Ok(seen)) => fold_content_length(Some(seen), value),
                    Some(Err(e)) => Err(e),
                });
            }
            Field::TransferEncoding => codings.push_field(value),
            Field::Connection => connection.push_field(value),
            Field::Host
            | Field::Expect
            | Field::HopByHop
            | Field::XForwardedFor
            | Field::XForwardedProto
            | Field::Identity
            | Field::Other => {}
        }
    }

    // Framing is validated for every response, bodiless ones included: a backend that cannot
    // frame a 204 is not trusted to frame the next response on the same connection.
    let content_length = match (content_length, codings.present) {
        (Some(_), true) => return Err(ResponseHeadError::ContentLengthWithTransferEncoding),
        (_, true) if version == Version::Http10 => {
            return Err(ResponseHeadError::TransferEncodingInHttp10);
        }
        (None, true) if codings.codings == 0 || codings.chunked_not_final => {
            return Err(ResponseHeadError::InvalidTransferEncoding);
        }
        (Some(Err(LengthError::Invalid)), _) => {
            return Err(ResponseHeadError::InvalidContentLength);
        }
        (Some(Err(LengthError::Conflicting)), _) => {
            return Err(ResponseHeadError::ConflictingContentLength);
        }
        (Some(Ok(n)), _) => Some(n),
        (None, _) => None,
    };
    let is_informational = (100..200).contains(&status) && !switching;
    let body = if request_method_is_head
        || is_informational
        || switching
        || status == 204
        || status == 304
    {
        ResponseBody::None
    } else if codings.present {
        if codings.last_is_chunked {
            ResponseBody::Chunked
        } else {
            // RFC 9112 §6.3 rule 4: a response whose final coding is not chunked is read until
            // the connection closes.
            ResponseBody::CloseDelimited
        }
    } else if let Some(n) = content_length {
        ResponseBody::ContentLength(n)
    } else {
        ResponseBody::CloseDelimited
    };
    // After a 101 the connection carries the new protocol, never another HTTP response.
    let backend_keep_alive =
        connection.persistent(version) && body != ResponseBody::CloseDelimited && !switching;

    Ok(Some(ResponseHead {
        reason,
        headers,
        version,
        status,
        body,
        content_length,
        backend_keep_alive,
        is_informational,
        head_len,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(buf: &[u8], head: bool) -> Result<Option<ResponseHead>, ResponseHeadError> {
        parse_response_head(buf, head, &HeadLimits::default())
    }

    fn ok(buf: &[u8]) -> ResponseHead {
        match parse(buf, false) {
            Ok(Some(h)) => h,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    #[test]
    fn framing_table() {
        use ResponseBody as B;
        let cases: &[(&[u8], bool, B, bool)] = &[
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                false,
                B::ContentLength(5),
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
                false,
                B::ContentLength(5),
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false,
                B::Chunked,
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                false,
                B::Chunked,
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                false,
                B::CloseDelimited,
                false,
            ),
            (b"HTTP/1.1 200 OK\r\n\r\n", false, B::CloseDelimited, false),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                true,
                B::None,
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                true,
                B::None,
                true,
            ),
            (b"HTTP/1.1 200 OK\r\n\r\n", true, B::None, true),
            (b"HTTP/1.1 204 No Content\r\n\r\n", false, B::None, true),
            (
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
                false,
                B::None,
                true,
            ),
            (b"HTTP/1.1 100 Continue\r\n\r\n", false, B::None, true),
            (
                b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
                false,
                B::None,
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                false,
                B::ContentLength(0),
                false,
            ),
            (
                b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n",
                false,
                B::ContentLength(3),
                false,
            ),
            (
                b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\n",
                false,
                B::ContentLength(3),
                true,
            ),
            (b"HTTP/1.0 200 OK\r\n\r\n", false, B::CloseDelimited, false),
        ];
        for (buf, head, body, keep) in cases {
            let h = match parse(buf, *head) {
                Ok(Some(h)) => h,
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
            };
            assert_eq!(h.body, *body, "{:?}", String::from_utf8_lossy(buf));
            assert_eq!(
                h.backend_keep_alive,
                *keep,
                "{:?}",
                String::from_utf8_lossy(buf)
            );
            assert_eq!(h.head_len, buf.len());
        }
    }

    #[test]
    fn informational() {
        let h = ok(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n");
        assert!(h.is_informational);
        assert_eq!(h.status, 100);
        assert_eq!(h.head_len, 25);
        assert!(!ok(b"HTTP/1.1 200 OK\r\n\r\n").is_informational);
    }

    #[test]
    fn errors_are_502() {
        use ResponseHeadError as E;
        let cases: &[(&[u8], E)] = &[
            (
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
                E::SwitchingProtocols,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                E::ContentLengthWithTransferEncoding,
            ),
            (
                b"HTTP/1.1 204 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                E::ContentLengthWithTransferEncoding,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                E::ConflictingContentLength,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n",
                E::InvalidContentLength,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
                E::InvalidContentLength,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
                E::InvalidTransferEncoding,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: \r\n\r\n",
                E::InvalidTransferEncoding,
            ),
            (
                b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                E::TransferEncodingInHttp10,
            ),
            (b"HTTP/1.1 099 Odd\r\n\r\n", E::InvalidStatus(99)),
            (b"HTTP/1.1 600 Odd\r\n\r\n", E::InvalidStatus(600)),
        ];
        for (buf, want) in cases {
            let got = parse(buf, false).unwrap_err();
            assert_eq!(&got, want, "{:?}", String::from_utf8_lossy(buf));
            assert_eq!(got.status(), 502);
        }
        for buf in [
            &b"HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\n\r\n"[..],
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/2 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX A: b\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n",
        ] {
            assert!(
                matches!(parse(buf, false), Err(ResponseHeadError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(buf)
            );
        }
    }

    #[test]
    fn split_at_every_byte() {
        let buf = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n\r\nhi";
        let full = ok(buf);
        for cut in 0..full.head_len {
            assert_eq!(parse(buf.get(..cut).unwrap(), false), Ok(None), "{cut}");
        }
        assert_eq!(ok(buf.get(..full.head_len).unwrap()), full);
    }

    #[test]
    fn limits() {
        let limits = HeadLimits {
            max_head_bytes: 20,
            max_headers: 1,
        };
        assert_eq!(
            parse_response_head(
                b"HTTP/1.1 200 OK\r\nX-Long: aaaaaaaa\r\n\r\n",
                false,
                &limits
            ),
            Err(ResponseHeadError::TooLarge { limit: 20 })
        );
        let limits = HeadLimits {
            max_head_bytes: 1000,
            max_headers: 1,
        };
        assert_eq!(
            parse_response_head(b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\n\r\n", false, &limits),
            Err(ResponseHeadError::TooManyHeaders { limit: 1 })
        );
    }

    #[test]
    fn reason_phrase() {
        let buf = b"HTTP/1.1 404 Not Found\r\n\r\n";
        assert_eq!(ok(buf).reason(buf), b"Not Found");
        let buf = b"HTTP/1.1 404\r\n\r\n";
        assert_eq!(ok(buf).reason(buf), b"");
        let buf = b"HTTP/1.1 200 \xe2\x9c\x93\r\n\r\n";
        assert_eq!(ok(buf).reason(buf), b"");
    }
}
