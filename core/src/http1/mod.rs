//! HTTP/1.1 message heads and body framing for a reverse proxy that never lets a request be
//! smuggled: the bytes the gateway counts as one request are exactly the bytes the backend will
//! count as one request, or the request is refused.
//!
//! Everything here is pure and synchronous: the runtime owns the sockets and the buffers, parses a
//! head in place ([`parse_request_head`], [`parse_response_head`]), rewrites it once for the other
//! side ([`write_forwarded_request_head`], [`write_forwarded_response_head`]) and then streams the
//! body, using [`ChunkedDecoder`] or [`ContentLengthBody`] to know where the body ends (and so where
//! the next pipelined message starts).
//!
//! # Decisions (where the RFCs leave a choice)
//! - **Ambiguous framing is refused, never repaired.** A request with both `Content-Length` and
//!   `Transfer-Encoding` gets 400 (RFC 9112 §6.3 allows the server to process it with
//!   `Transfer-Encoding`; a proxy that does so is one half of every CL.TE smuggling attack). The same
//!   response from a backend is a 502.
//! - **Repeated `Content-Length`**: identical values, in separate field lines or as a comma list
//!   (`5, 5`), collapse into one (RFC 9110 §8.6 permits it); differing values, an empty value, a
//!   sign, spaces inside the digits, hex, or a value that overflows `u64` are 400. The forwarded head
//!   always carries one canonical `Content-Length: N`, so the backend never sees the list.
//! - **`Transfer-Encoding` in requests**: only `chunked` alone is accepted (empty list elements
//!   ignored, names case-insensitive). A final coding other than `chunked` (including `xchunked`,
//!   `identity`, `chunked;ext`, a quoted `"chunked"`) or `chunked` applied twice is 400 (RFC 9112
//!   §6.3 rule 4: the length cannot be determined). A known-length-preserving list such as
//!   `gzip, chunked` is answered 501, as RFC 9112 §6.1 suggests for a coding the server does not
//!   implement: the gateway forwards bodies verbatim and does not vouch for codings it does not
//!   understand. The forwarded head carries exactly `Transfer-Encoding: chunked`.
//! - **`Transfer-Encoding` in an HTTP/1.0 message** is faulty framing (RFC 9112 §6.1): 400 for a
//!   request, 502 for a response.
//! - **Bare LF** as a line terminator in a head is accepted as httparse does (RFC 9112 §2.2 allows a
//!   recipient to); the rewritten head always uses CRLF, so the backend never sees a bare LF from
//!   the client. A bare CR is an error. Inside a chunked body (size lines, trailers) only CRLF is
//!   accepted: those bytes are forwarded verbatim, and a lenient chunk parser is the classic
//!   desync vector.
//! - **Obsolete line folding** is 400 in requests and 502 in responses (httparse's default).
//! - **Request targets**: origin-form, absolute-form (`http`/`https`, converted to origin-form when
//!   forwarded, with a `Host` made from its authority as RFC 9112 §3.2.2 requires of a proxy) and
//!   `*` for `OPTIONS`. Authority-form (`CONNECT`) is 501; a fragment (`#`) or userinfo (`@`) in
//!   the target is 400. Paths are neither decoded nor normalized: routing sees the same raw path
//!   the backend receives.
//! - **Host**: from the absolute-form authority if there is one, else the single `Host` field.
//!   HTTP/1.1 without `Host`, or any request with several, is 400; an empty `Host` value is valid
//!   (RFC 9112 §3.2) and means "no host". The port is stripped; IPv6 literals lose their brackets
//!   and are canonicalized (`[0:0::1]:443` -> `::1`); names are limited to letters, digits, `-`,
//!   `.`, `_` (stricter than RFC 3986 reg-name: no percent-encoding or sub-delims, which DNS names
//!   never need) and normalized with [`crate::hostname::normalize`].
//! - **Expect: 100-continue** is reported in [`RequestHead::expect_continue`] (HTTP/1.1 only, RFC
//!   9110 §10.1.1) and forwarded; the backend's `100 Continue` comes back as an informational
//!   response.
//! - **Upgrades**: only WebSocket ([`websocket_upgrade`]); its handshake is forwarded with the
//!   upgrade asked for again ([`write_websocket_request_head`]) and its answer parsed with
//!   [`parse_upgrade_response_head`], which accepts a 101. Every other `Upgrade` is stripped, so a
//!   101 to any other request is a backend that ignored the protocol: 502.
//! - Errors say whose fault it is: [`RequestHeadError`] is the client's (4xx/5xx via `status()`),
//!   [`ResponseHeadError`] the backend's (always 502), [`ChunkedError`] either (the caller knows
//!   which side it decodes).

mod chunked;
mod fields;
mod forward;
mod request;
mod response;
mod websocket;

pub use chunked::{
    ChunkProgress, ChunkedDecoder, ChunkedError, ContentLengthBody, MAX_CHUNK_LINE_BYTES,
    MAX_TRAILER_BYTES,
};
pub use fields::{is_field_name, is_field_value, is_gateway_managed_field};
pub use forward::{
    ClientBody, ClientConn, ForwardExtras, ForwardedProto, ResponsePlan,
    write_forwarded_request_head, write_forwarded_response_head,
};
pub use request::{RequestBody, RequestHead, RequestHeadError, TargetForm, parse_request_head};
pub use response::{
    ResponseBody, ResponseHead, ResponseHeadError, parse_response_head, parse_upgrade_response_head,
};
pub use websocket::{
    SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SwitchingProtocolsError, WebSocketRequestError,
    accept_key, check_switching_protocols, generate_key, websocket_upgrade,
    write_switching_protocols_head, write_websocket_request_head,
};

/// Default limit on the size of a request head (request line and all fields). 16 KiB holds
/// every head a browser or API client sends in practice, large cookies included (Node.js uses the
/// same default; nginx's `large_client_header_buffers` is 4 x 8 KiB), while keeping the per-
/// connection read buffer that must hold a whole head small. Beyond it: 431.
pub const DEFAULT_MAX_HEAD_BYTES: usize = 16 * 1024;

/// Default limit on the number of header fields in a head: 100, Envoy's default
/// (`max_headers_count`). Beyond it: 431 for a request, 502 for a response.
pub const DEFAULT_MAX_HEADERS: usize = 100;

/// The number of `httparse::Header` slots parsed on the stack: the hard ceiling for
/// [`HeadLimits::max_headers`]. 128 slots are 4 KiB of stack, taken once per parse, and leave room
/// above the default for operators who raise it.
pub const MAX_HEADER_SLOTS: usize = 128;

/// Limits applied while parsing a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// A head that has not completed within this many bytes is refused (431 / 502).
    pub max_head_bytes: usize,
    /// More header fields than this are refused (431 / 502). Capped at [`MAX_HEADER_SLOTS`].
    pub max_headers: usize,
}

impl Default for HeadLimits {
    fn default() -> Self {
        Self {
            max_head_bytes: DEFAULT_MAX_HEAD_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
        }
    }
}

/// The HTTP version of a message. httparse knows only these two; anything else is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    Http10,
    Http11,
}

impl Version {
    fn from_minor(minor: u8) -> Option<Self> {
        match minor {
            0 => Some(Version::Http10),
            1 => Some(Version::Http11),
            _ => None,
        }
    }

    /// `HTTP/1.0` or `HTTP/1.1`.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::Http10 => "HTTP/1.0",
            Version::Http11 => "HTTP/1.1",
        }
    }
}

/// A byte range into the buffer a head was parsed from. Heads store spans, not slices, so they
/// own nothing of the connection buffer and the caller re-borrows it as needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    /// The bytes of `buf` in this span; empty if `buf` is not the buffer the span came from and is
    /// too short.
    pub fn slice<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        buf.get(self.start..self.end).unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.end.saturating_sub(self.start)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The span of `part`, a subslice of `buf` (as httparse hands out), found by address. A slice
    /// that is not inside `buf` (which httparse never returns) maps to an empty span.
    fn within(buf: &[u8], part: &[u8]) -> Span {
        let base = buf.as_ptr() as usize;
        let start = (part.as_ptr() as usize).checked_sub(base);
        match start.and_then(|s| s.checked_add(part.len()).map(|e| (s, e))) {
            Some((start, end)) if end <= buf.len() => Span { start, end },
            _ => Span::default(),
        }
    }

    fn sub(&self, from: usize, to: usize) -> Span {
        let start = self.start.saturating_add(from).min(self.end);
        let end = self.start.saturating_add(to).min(self.end).max(start);
        Span { start, end }
    }
}

/// Where one header field's name and value lie in the head's buffer. The value has its
/// surrounding whitespace removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderSpan {
    pub name: Span,
    pub value: Span,
}

/// A view of a parsed head's header fields over its buffer, in the order received.
#[derive(Debug, Clone, Copy)]
pub struct Headers<'a> {
    spans: &'a [HeaderSpan],
    buf: &'a [u8],
}

impl<'a> Headers<'a> {
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// `(name, value)` for every field line, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        let buf = self.buf;
        self.spans
            .iter()
            .map(move |h| (h.name.slice(buf), h.value.slice(buf)))
    }

    /// The value of the first field named `name` (ASCII case-insensitive).
    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }
}
