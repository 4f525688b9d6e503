//! Request heads: parsing, validation of framing and Host, and the facts the proxy needs.

use std::net::Ipv6Addr;

use thiserror::Error;

use super::fields::{
    self, CodingScan, ConnectionOptions, Field, LengthError, classify, fold_content_length,
};
use super::{HeadLimits, HeaderSpan, Headers, MAX_HEADER_SLOTS, Span, Version};
use crate::hostname;

/// How the request body is delimited (RFC 9112 §6.3). The proxy forwards exactly these bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestBody {
    /// No body: neither `Content-Length` nor `Transfer-Encoding`.
    None,
    /// Exactly this many bytes follow the head.
    ContentLength(u64),
    /// A chunked body follows; [`super::ChunkedDecoder`] finds its end.
    Chunked,
}

/// The form of the request-target (RFC 9112 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetForm {
    /// `/path?query`
    Origin,
    /// `http://authority/path?query` (what a client talking to a proxy sends).
    Absolute,
    /// `*`, only with `OPTIONS`.
    Asterisk,
}

/// A parsed, validated request head. It stores byte ranges into the buffer it was parsed from;
/// accessors that return bytes take that buffer again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    method: Span,
    target: Span,
    path: Span,
    query: Option<Span>,
    /// The authority of an absolute-form target, raw.
    authority: Option<Span>,
    /// The value of the (single) `Host` field, raw.
    host_field: Option<Span>,
    host: Option<String>,
    headers: Vec<HeaderSpan>,
    is_head: bool,
    pub form: TargetForm,
    pub version: Version,
    pub body: RequestBody,
    /// Whether the client connection persists after this exchange, from the request alone
    /// (HTTP/1.1: unless `Connection: close`; HTTP/1.0: only with `Connection: keep-alive`).
    pub keep_alive: bool,
    /// `Expect: 100-continue` on an HTTP/1.1 request.
    pub expect_continue: bool,
    /// `Connection: upgrade`: without it no request is an upgrade (see `websocket_upgrade`).
    pub connection_upgrade: bool,
    /// Bytes of the head, blank line included: the body (or the next request) starts here.
    pub head_len: usize,
}

impl RequestHead {
    /// The method, for example `GET` (case-sensitive, as received).
    pub fn method<'b>(&self, buf: &'b [u8]) -> &'b str {
        std::str::from_utf8(self.method.slice(buf)).unwrap_or_default()
    }

    /// Whether the method is `HEAD` (its response never has a body).
    pub fn is_head(&self) -> bool {
        self.is_head
    }

    /// The request-target exactly as received.
    pub fn target<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        self.target.slice(buf)
    }

    /// The path, without the query: `/` for an absolute-form target without a path, `*` for the
    /// asterisk form. Raw: neither percent-decoded nor normalized.
    pub fn path<'b>(&self, buf: &'b [u8]) -> &'b str {
        let path = std::str::from_utf8(self.path.slice(buf)).unwrap_or_default();
        if path.is_empty() { "/" } else { path }
    }

    /// The query, without the `?`; `None` when the target has no `?`.
    pub fn query<'b>(&self, buf: &'b [u8]) -> Option<&'b str> {
        self.query
            .map(|q| std::str::from_utf8(q.slice(buf)).unwrap_or_default())
    }

    /// The host the request is for, port stripped, normalized (lower case, no trailing dot;
    /// an IPv6 literal without brackets). `None` for an HTTP/1.0 request without `Host` or an
    /// empty `Host`.
    pub fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }

    /// The raw `Host` value to forward: the absolute-form authority if any, else the `Host`
    /// field as received (port included); empty when there is none.
    pub fn forward_host<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        self.authority
            .or(self.host_field)
            .map_or(&[][..], |s| s.slice(buf))
    }

    /// The header fields, in order.
    pub fn headers<'a>(&'a self, buf: &'a [u8]) -> Headers<'a> {
        Headers {
            spans: &self.headers,
            buf,
        }
    }

    /// Where each header field lies in the buffer.
    pub fn header_spans(&self) -> &[HeaderSpan] {
        &self.headers
    }
}

/// Why a request head was refused. Each maps to the status sent to the client; the detail goes to
/// logs and metrics only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RequestHeadError {
    #[error("request head did not complete within {limit} bytes")]
    TooLarge { limit: usize },
    #[error("request head has more than {limit} header fields")]
    TooManyHeaders { limit: usize },
    #[error("malformed request head: {0}")]
    Malformed(httparse::Error),
    #[error("request-target is not origin-form, absolute-form or OPTIONS *")]
    InvalidTarget,
    #[error("CONNECT (authority-form) is not supported")]
    ConnectNotSupported,
    #[error("HTTP/1.1 request without a Host field")]
    MissingHost,
    #[error("request with more than one Host field")]
    MultipleHost,
    #[error("invalid Host (or absolute-form authority)")]
    InvalidHost,
    #[error("request has both Content-Length and Transfer-Encoding")]
    ContentLengthWithTransferEncoding,
    #[error("invalid Content-Length value")]
    InvalidContentLength,
    #[error("several differing Content-Length values")]
    ConflictingContentLength,
    #[error("Transfer-Encoding whose final coding is not chunked")]
    TransferEncodingNotChunked,
    #[error("transfer coding other than chunked")]
    UnsupportedTransferCoding,
    #[error("Transfer-Encoding in an HTTP/1.0 request")]
    TransferEncodingInHttp10,
}

impl RequestHeadError {
    /// The status code to answer with; the connection closes after it in every case.
    pub fn status(&self) -> u16 {
        match self {
            RequestHeadError::TooLarge { .. } | RequestHeadError::TooManyHeaders { .. } => 431,
            RequestHeadError::ConnectNotSupported | RequestHeadError::UnsupportedTransferCoding => {
                501
            }
            RequestHeadError::Malformed(_)
            | RequestHeadError::InvalidTarget
            | RequestHeadError::MissingHost
            | RequestHeadError::MultipleHost
            | RequestHeadError::InvalidHost
            | RequestHeadError::ContentLengthWithTransferEncoding
            | RequestHeadError::InvalidContentLength
            | RequestHeadError::ConflictingContentLength
            | RequestHeadError::TransferEncodingNotChunked
            | RequestHeadError::TransferEncodingInHttp10 => 400,
        }
    }
}

/// Parses the request head at the start of `buf`.
///
/// `Ok(None)`: the head is incomplete, read more and call again with the longer buffer. Only the
/// first `limits.max_head_bytes` bytes are looked at, so the answer for a buffer never depends on
/// how it was split into reads; bytes after the head (a body, pipelined requests) are left alone
/// and start at [`RequestHead::head_len`].
pub fn parse_request_head(
    buf: &[u8],
    limits: &HeadLimits,
) -> Result<Option<RequestHead>, RequestHeadError> {
    let window = buf.get(..limits.max_head_bytes).unwrap_or(buf);
    let max_headers = limits.max_headers.min(MAX_HEADER_SLOTS);
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADER_SLOTS];
    let slots = slots.get_mut(..max_headers).unwrap_or_default();
    let mut req = httparse::Request::new(slots);
    let head_len = match req.parse(window) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if window.len() >= limits.max_head_bytes => {
            return Err(RequestHeadError::TooLarge {
                limit: limits.max_head_bytes,
            });
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(RequestHeadError::TooManyHeaders { limit: max_headers });
        }
        Err(e) => return Err(RequestHeadError::Malformed(e)),
    };
    let malformed = RequestHeadError::Malformed(httparse::Error::Token);
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(malformed);
    };
    let version =
        Version::from_minor(minor).ok_or(RequestHeadError::Malformed(httparse::Error::Version))?;
    let method_span = Span::within(buf, method.as_bytes());
    let target_span = Span::within(buf, target.as_bytes());
    let parsed_target = parse_target(method, target, target_span)?;

    let mut headers = Vec::with_capacity(req.headers.len());
    let mut host_field: Option<Span> = None;
    let mut host_fields = 0usize;
    let mut content_length: Option<Result<u64, LengthError>> = None;
    let mut codings = CodingScan::default();
    let mut connection = ConnectionOptions::default();
    let mut expect_continue = false;
    for h in req.headers.iter() {
        let span = HeaderSpan {
            name: Span::within(buf, h.name.as_bytes()),
            value: Span::within(buf, h.value),
        };
        headers.push(span);
        let value = fields::trim_ows(h.value);
        match classify(h.name.as_bytes()) {
            Field::Host => {
                host_fields = host_fields.saturating_add(1);
                host_field = Some(Span::within(buf, value));
            }
            Field::ContentLength => {
                content_length = Some(match content_length {
                    None => fold_content_length(None, value),
                    Some(Ok(seen)) => fold_content_length(Some(seen), value),
                    Some(Err(e)) => Err(e),
                });
            }
            Field::TransferEncoding => codings.push_field(value),
            Field::Connection => connection.push_field(value),
            Field::Expect => {
                expect_continue |= value.eq_ignore_ascii_case(b"100-continue");
            }
            Field::HopByHop
            | Field::XForwardedFor
            | Field::XForwardedProto
            | Field::Identity
            | Field::Other => {}
        }
    }

    // Host (RFC 9112 §3.2, §3.2.2).
    if host_fields > 1 {
        return Err(RequestHeadError::MultipleHost);
    }
    if host_fields == 0 && version == Version::Http11 {
        return Err(RequestHeadError::MissingHost);
    }
    let field_host = match host_field {
        Some(span) => parse_host(span.slice(buf))?,
        None => None,
    };
    let host = match parsed_target.authority {
        Some(authority) => {
            Some(parse_host(authority.slice(buf))?.ok_or(RequestHeadError::InvalidHost)?)
        }
        None => field_host,
    };

    // Framing (RFC 9112 §6.1, §6.3), refusing every ambiguity.
    let body = match (content_length, codings.present) {
        (Some(_), true) => return Err(RequestHeadError::ContentLengthWithTransferEncoding),
        (_, true) if version == Version::Http10 => {
            return Err(RequestHeadError::TransferEncodingInHttp10);
        }
        (None, true) => {
            if !codings.last_is_chunked || codings.chunked_not_final {
                return Err(RequestHeadError::TransferEncodingNotChunked);
            }
            if codings.other_not_final {
                return Err(RequestHeadError::UnsupportedTransferCoding);
            }
            RequestBody::Chunked
        }
        (Some(Ok(n)), false) => RequestBody::ContentLength(n),
        (Some(Err(LengthError::Invalid)), false) => {
            return Err(RequestHeadError::InvalidContentLength);
        }
        (Some(Err(LengthError::Conflicting)), false) => {
            return Err(RequestHeadError::ConflictingContentLength);
        }
        (None, false) => RequestBody::None,
    };

    Ok(Some(RequestHead {
        method: method_span,
        target: target_span,
        path: parsed_target.path,
        query: parsed_target.query,
        authority: parsed_target.authority,
        host_field,
        host,
        headers,
        is_head: method == "HEAD",
        form: parsed_target.form,
        version,
        body,
        keep_alive: connection.persistent(version),
        connection_upgrade: connection.upgrade,
        expect_continue: expect_continue && version == Version::Http11,
        head_len,
    }))
}

struct ParsedTarget {
    form: TargetForm,
    path: Span,
    query: Option<Span>,
    authority: Option<Span>,
}

fn parse_target(method: &str, target: &str, span: Span) -> Result<ParsedTarget, RequestHeadError> {
    if target.contains('#') {
        return Err(RequestHeadError::InvalidTarget);
    }
    if method == "CONNECT" {
        return Err(RequestHeadError::ConnectNotSupported);
    }
    if target == "*" {
        if method != "OPTIONS" {
            return Err(RequestHeadError::InvalidTarget);
        }
        return Ok(ParsedTarget {
            form: TargetForm::Asterisk,
            path: span,
            query: None,
            authority: None,
        });
    }
    let bytes = target.as_bytes();
    if bytes.first() == Some(&b'/') {
        let (path, query) = split_query(span, bytes, 0);
        return Ok(ParsedTarget {
            form: TargetForm::Origin,
            path,
            query,
            authority: None,
        });
    }
    let after_scheme = ["http://", "https://"]
        .iter()
        .find(|s| {
            bytes
                .get(..s.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(s.as_bytes()))
        })
        .map(|s| s.len())
        .ok_or(RequestHeadError::InvalidTarget)?;
    let rest = bytes.get(after_scheme..).unwrap_or_default();
    let authority_len = rest
        .iter()
        .position(|b| *b == b'/' || *b == b'?')
        .unwrap_or(rest.len());
    let authority = span.sub(after_scheme, after_scheme.saturating_add(authority_len));
    if rest.get(..authority_len).is_some_and(|a| a.contains(&b'@')) {
        return Err(RequestHeadError::InvalidTarget);
    }
    let (path, query) = split_query(span, bytes, after_scheme.saturating_add(authority_len));
    Ok(ParsedTarget {
        form: TargetForm::Absolute,
        path,
        query,
        authority: Some(authority),
    })
}

/// Splits `target[from..]` at the first `?` into path and query spans.
fn split_query(span: Span, target: &[u8], from: usize) -> (Span, Option<Span>) {
    let rest = target.get(from..).unwrap_or_default();
    match rest.iter().position(|b| *b == b'?') {
        Some(q) => {
            let q = from.saturating_add(q);
            (
                span.sub(from, q),
                Some(span.sub(q.saturating_add(1), target.len())),
            )
        }
        None => (span.sub(from, target.len()), None),
    }
}

/// Parses a `Host` value or an absolute-form authority: `host[:port]` or `[v6]:port`.
/// `Ok(None)` for an empty value.
fn parse_host(value: &[u8]) -> Result<Option<String>, RequestHeadError> {
    let invalid = RequestHeadError::InvalidHost;
    if value.is_empty() {
        return Ok(None);
    }
    let (host, port) = if value.first() == Some(&b'[') {
        let close = value.iter().position(|b| *b == b']').ok_or(invalid)?;
        let literal = value.get(1..close).ok_or(invalid)?;
        let addr: Ipv6Addr = std::str::from_utf8(literal)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(invalid)?;
        let rest = value.get(close.saturating_add(1)..).unwrap_or_default();
        let port = match rest.split_first() {
            None => &[][..],
            Some((b':', port)) => port,
            Some(_) => return Err(invalid),
        };
        (addr.to_string(), port)
    } else {
        let (name, port) = match value.iter().position(|b| *b == b':') {
            Some(colon) => (
                value.get(..colon).unwrap_or_default(),
                value.get(colon.saturating_add(1)..).unwrap_or_default(),
            ),
            None => (value, &[][..]),
        };
        if name.is_empty()
            || !name
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        {
            return Err(invalid);
        }
        let name = std::str::from_utf8(name).map_err(|_| invalid)?;
        let normalized = hostname::normalize(name);
        if normalized.is_empty() {
            return Err(invalid);
        }
        (normalized, port)
    };
    // URI port = *DIGIT; more than 5 digits is no TCP port.
    if port.len() > 5 || !port.iter().all(u8::is_ascii_digit) {
        return Err(invalid);
    }
    Ok(Some(host))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(buf: &[u8]) -> Result<Option<RequestHead>, RequestHeadError> {
        parse_request_head(buf, &HeadLimits::default())
    }

    fn ok(buf: &[u8]) -> RequestHead {
        match parse(buf) {
            Ok(Some(h)) => h,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    fn err(buf: &[u8]) -> RequestHeadError {
        match parse(buf) {
            Err(e) => e,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    #[test]
    fn simple_get() {
        let buf = b"GET /a/b?x=1&y HTTP/1.1\r\nHost: Example.COM:8443\r\nAccept: */*\r\n\r\n";
        let h = ok(buf);
        assert_eq!(h.method(buf), "GET");
        assert_eq!(h.target(buf), b"/a/b?x=1&y");
        assert_eq!(h.path(buf), "/a/b");
        assert_eq!(h.query(buf), Some("x=1&y"));
        assert_eq!(h.host(), Some("example.com"));
        assert_eq!(h.forward_host(buf), b"Example.COM:8443");
        assert_eq!(h.version, Version::Http11);
        assert_eq!(h.form, TargetForm::Origin);
        assert_eq!(h.body, RequestBody::None);
        assert!(h.keep_alive);
        assert!(!h.expect_continue);
        assert!(!h.is_head());
        assert_eq!(h.head_len, buf.len());
        let headers = h.headers(buf);
        assert_eq!(headers.len(), 2);
        assert_eq!(headers.get("accept"), Some(&b"*/*"[..]));
        assert_eq!(headers.get("HOST"), Some(&b"Example.COM:8443"[..]));
        assert_eq!(headers.get("missing"), None);
    }

    #[test]
    fn empty_query_and_no_query() {
        let buf = b"GET /a? HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(ok(buf).query(buf), Some(""));
        let buf = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(ok(buf).query(buf), None);
    }

    #[test]
    fn pipelined_bytes_stay_after_the_head() {
        let first = b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut buf = first.to_vec();
        buf.extend_from_slice(b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n");
        let h = ok(&buf);
        assert_eq!(h.head_len, first.len());
        let rest = buf.get(h.head_len..).unwrap();
        let h2 = ok(rest);
        assert_eq!(h2.path(rest), "/2");
    }

    #[test]
    fn split_at_every_byte_is_incomplete_until_the_end() {
        let buf = b"POST /upload?x=1 HTTP/1.1\r\nHost: a.example.com\r\nContent-Length: 3\r\nX-A: b\r\n\r\nabc";
        let full = ok(buf);
        for cut in 0..full.head_len {
            assert_eq!(parse(buf.get(..cut).unwrap()), Ok(None), "cut at {cut}");
        }
        for cut in full.head_len..=buf.len() {
            assert_eq!(ok(buf.get(..cut).unwrap()), full, "cut at {cut}");
        }
    }

    #[test]
    fn head_limit_gives_431() {
        let limits = HeadLimits {
            max_head_bytes: 32,
            max_headers: 10,
        };
        let long = b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: aaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        let e = parse_request_head(long, &limits).unwrap_err();
        assert_eq!(e, RequestHeadError::TooLarge { limit: 32 });
        assert_eq!(e.status(), 431);
        // Below the limit it is still incomplete, not an error.
        assert_eq!(
            parse_request_head(long.get(..31).unwrap(), &limits),
            Ok(None)
        );
        // A head that fits is fine even when the buffer holds more.
        let fits = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /next-request HTTP/1.1\r\n";
        assert!(parse_request_head(fits, &limits).unwrap().is_some());
    }

    #[test]
    fn too_many_headers_gives_431() {
        let limits = HeadLimits {
            max_head_bytes: 4096,
            max_headers: 3,
        };
        let buf = b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
        let e = parse_request_head(buf, &limits).unwrap_err();
        assert_eq!(e, RequestHeadError::TooManyHeaders { limit: 3 });
        assert_eq!(e.status(), 431);
        let buf = b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n";
        assert!(parse_request_head(buf, &limits).unwrap().is_some());
        // The configured limit is capped by the stack slots.
        let limits = HeadLimits {
            max_head_bytes: 1 << 20,
            max_headers: usize::MAX,
        };
        let mut many = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        for i in 0..MAX_HEADER_SLOTS {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(
            parse_request_head(&many, &limits).unwrap_err(),
            RequestHeadError::TooManyHeaders {
                limit: MAX_HEADER_SLOTS
            }
        );
    }

    #[test]
    fn body_framing() {
        let h = ok(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 42\r\n\r\n");
        assert_eq!(h.body, RequestBody::ContentLength(42));
        let h = ok(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(h.body, RequestBody::Chunked);
        let h = ok(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: CHUNKED \r\n\r\n");
        assert_eq!(h.body, RequestBody::Chunked);
        let h = ok(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: , chunked,\r\n\r\n");
        assert_eq!(h.body, RequestBody::Chunked);
        // Identical repeated Content-Length values collapse (RFC 9110 §8.6).
        let h = ok(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(h.body, RequestBody::ContentLength(5));
        let h = ok(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n");
        assert_eq!(h.body, RequestBody::ContentLength(5));
        let h = ok(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(h.body, RequestBody::ContentLength(0));
        let h = ok(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551615\r\n\r\n");
        assert_eq!(h.body, RequestBody::ContentLength(u64::MAX));
    }

    /// Request smuggling vectors: every one is refused with the given status.
    #[test]
    fn smuggling_vectors_are_refused() {
        use RequestHeadError as E;
        let cases: &[(&[u8], E, u16)] = &[
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                E::ContentLengthWithTransferEncoding,
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
                E::ContentLengthWithTransferEncoding,
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n",
                E::TransferEncodingNotChunked,
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n",
                E::TransferEncodingNotChunked,
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunkedx\r\n\r\n",
                E::TransferEncodingNotChunked,
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \"chunked\"\r\n\r\n",
                E::TransferEncodingNotChunked,
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;x=1\r\n\r\n",
                E::TransferEncodingNotChunked,
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
                E::TransferEncodingNotChunked,
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                E::TransferEncodingNotChunked,
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n",
                E::TransferEncodingNotChunked,
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\n\r\n",
                E::TransferEncodingNotChunked,
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                E::UnsupportedTransferCoding,
                501,
            ),
            (
                b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
                E::TransferEncodingInHttp10,
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                E::ConflictingContentLength,
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n",
                E::ConflictingContentLength,
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
                E::InvalidContentLength,
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
                E::InvalidContentLength,
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 0\r\n\r\n",
                E::InvalidContentLength,
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n",
                E::InvalidContentLength,
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551616\r\n\r\n",
                E::InvalidContentLength,
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n",
                E::InvalidContentLength,
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: x\r\n\r\n",
                E::InvalidContentLength,
                400,
            ),
            (
                b"GET / HTTP/1.1\r\n\r\n",
                E::MissingHost,
                400,
            ),
            (
                b"GET http://a/ HTTP/1.1\r\n\r\n",
                E::MissingHost,
                400,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                E::MultipleHost,
                400,
            ),
            (
                b"GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n",
                E::MultipleHost,
                400,
            ),
        ];
        for (buf, want, status) in cases {
            let got = err(buf);
            assert_eq!(&got, want, "{:?}", String::from_utf8_lossy(buf));
            assert_eq!(got.status(), *status, "{:?}", String::from_utf8_lossy(buf));
        }
    }

    #[test]
    fn malformed_heads_are_400() {
        let cases: &[&[u8]] = &[
            // Obsolete line folding.
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n\tc\r\n\r\n",
            // Whitespace between field name and colon.
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n",
            // Whitespace before the first field.
            b"GET / HTTP/1.1\r\n Host: a\r\n\r\n",
            // Bare CR.
            b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n",
            // Control characters in names and values.
            b"GET / HTTP/1.1\r\nHost: a\r\nX\x00: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: b\x00c\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: b\x7fc\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX@Y: b\r\n\r\n",
            // Request line.
            b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
            b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.2\r\nHost: a\r\n\r\n",
            b"GET / http/1.1\r\nHost: a\r\n\r\n",
            b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
            b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET /\xff HTTP/1.1\r\nHost: a\r\n\r\n",
            // Targets.
            b"GET a/b HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET * HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET http://user@a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET http:/a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET http:///a HTTP/1.1\r\nHost: a\r\n\r\n",
            // Hosts.
            b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a,b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a:b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a:123456\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a:1:2\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: :80\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: .\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: [::1]x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: [zz]\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: [fe80::1%25eth0]\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a@b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: \xc3\xa9.com\r\n\r\n",
        ];
        for buf in cases {
            let e = err(buf);
            assert_eq!(e.status(), 400, "{:?}: {e:?}", String::from_utf8_lossy(buf));
        }
    }

    #[test]
    fn connect_is_501() {
        let e = err(b"CONNECT a.example.com:443 HTTP/1.1\r\nHost: a.example.com:443\r\n\r\n");
        assert_eq!(e, RequestHeadError::ConnectNotSupported);
        assert_eq!(e.status(), 501);
    }

    #[test]
    fn bare_lf_is_accepted_as_httparse_does() {
        let buf = b"GET /x HTTP/1.1\nHost: a\nX-A: b\n\n";
        let h = ok(buf);
        assert_eq!(h.head_len, buf.len());
        assert_eq!(h.headers(buf).get("x-a"), Some(&b"b"[..]));
        // Mixed, too.
        let buf = b"GET /x HTTP/1.1\r\nHost: a\n\r\n";
        assert_eq!(ok(buf).head_len, buf.len());
    }

    #[test]
    fn leading_empty_lines_are_skipped() {
        let buf = b"\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n";
        let h = ok(buf);
        assert_eq!(h.method(buf), "GET");
        assert_eq!(h.path(buf), "/x");
        assert_eq!(h.head_len, buf.len());
    }

    #[test]
    fn absolute_form() {
        let buf =
            b"GET HTTP://User.Example.com:8080/p/q?r=1 HTTP/1.1\r\nHost: other.example\r\n\r\n";
        let h = ok(buf);
        assert_eq!(h.form, TargetForm::Absolute);
        assert_eq!(h.host(), Some("user.example.com"));
        assert_eq!(h.forward_host(buf), b"User.Example.com:8080");
        assert_eq!(h.path(buf), "/p/q");
        assert_eq!(h.query(buf), Some("r=1"));

        let buf = b"GET https://a.example HTTP/1.1\r\nHost: a.example\r\n\r\n";
        let h = ok(buf);
        assert_eq!(h.path(buf), "/");
        assert_eq!(h.query(buf), None);

        let buf = b"GET http://a.example?x HTTP/1.1\r\nHost: a.example\r\n\r\n";
        let h = ok(buf);
        assert_eq!(h.path(buf), "/");
        assert_eq!(h.query(buf), Some("x"));

        // HTTP/1.0 with absolute-form needs no Host field.
        let buf = b"GET http://[::1]:80/ HTTP/1.0\r\n\r\n";
        assert_eq!(ok(buf).host(), Some("::1"));
    }

    #[test]
    fn asterisk_form_for_options() {
        let buf = b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n";
        let h = ok(buf);
        assert_eq!(h.form, TargetForm::Asterisk);
        assert_eq!(h.path(buf), "*");
    }

    #[test]
    fn hosts() {
        let host = |v: &str| {
            let buf = format!("GET / HTTP/1.1\r\nHost: {v}\r\n\r\n");
            ok(buf.as_bytes()).host().map(str::to_owned)
        };
        assert_eq!(host("example.com").as_deref(), Some("example.com"));
        assert_eq!(host("EXAMPLE.com.").as_deref(), Some("example.com"));
        assert_eq!(host("example.com:443").as_deref(), Some("example.com"));
        assert_eq!(host("example.com:").as_deref(), Some("example.com"));
        assert_eq!(
            host("my_host.internal").as_deref(),
            Some("my_host.internal")
        );
        assert_eq!(host("10.0.0.1:80").as_deref(), Some("10.0.0.1"));
        assert_eq!(host("[::1]").as_deref(), Some("::1"));
        assert_eq!(host("[0:0::1]:8443").as_deref(), Some("::1"));
        assert_eq!(host("[FE80::A]").as_deref(), Some("fe80::a"));
        assert_eq!(host("").as_deref(), None);
        assert_eq!(host("  a.b  ").as_deref(), Some("a.b"));
        // HTTP/1.0 without Host.
        assert_eq!(ok(b"GET / HTTP/1.0\r\n\r\n").host(), None);
    }

    #[test]
    fn keep_alive_rules() {
        let ka = |buf: &[u8]| ok(buf).keep_alive;
        assert!(ka(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(!ka(
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        ));
        assert!(!ka(
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Keep-Alive, CLOSE\r\n\r\n"
        ));
        assert!(ka(
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n"
        ));
        assert!(!ka(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(ka(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
        assert!(ka(b"GET / HTTP/1.0\r\nConnection: foo, Keep-Alive\r\n\r\n"));
        assert!(!ka(
            b"GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n"
        ));
        assert!(!ka(b"GET / HTTP/1.0\r\nKeep-Alive: timeout=5\r\n\r\n"));
    }

    #[test]
    fn expect_continue() {
        let buf = b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n";
        assert!(ok(buf).expect_continue);
        let buf = b"PUT / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n";
        assert!(!ok(buf).expect_continue);
        let buf = b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: something\r\n\r\n";
        assert!(!ok(buf).expect_continue);
    }

    #[test]
    fn head_method() {
        assert!(ok(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n").is_head());
        assert!(!ok(b"head / HTTP/1.1\r\nHost: a\r\n\r\n").is_head());
    }

    #[test]
    fn header_spans_point_into_the_buffer() {
        let buf = b"GET / HTTP/1.1\r\nHost:  a  \r\nX-Empty:\r\nX-B:\tv w\t\r\n\r\n";
        let h = ok(buf);
        let got: Vec<(&[u8], &[u8])> = h.headers(buf).iter().collect();
        assert_eq!(
            got,
            vec![
                (&b"Host"[..], &b"a"[..]),
                (&b"X-Empty"[..], &b""[..]),
                (&b"X-B"[..], &b"v w"[..]),
            ]
        );
        assert_eq!(h.header_spans().len(), 3);
    }
}
