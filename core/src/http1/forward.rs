//! Rewriting heads once for the other side: the request for the backend, the response for the
//! client. One pass over the parsed header spans, no allocation besides growing `out`.

use std::io::Write as _;
use std::net::IpAddr;

use super::fields::{Field, classify, list_elements};
use super::{
    HeaderSpan, RequestBody, RequestHead, ResponseBody, ResponseHead, Span, TargetForm, Version,
};
use crate::filters::{HeaderModifier, NO_HEADER_CHANGES};

/// The scheme the client used, for `X-Forwarded-Proto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardedProto {
    Https,
    Http,
}

impl ForwardedProto {
    fn as_bytes(self) -> &'static [u8] {
        match self {
            ForwardedProto::Https => b"https",
            ForwardedProto::Http => b"http",
        }
    }
}

/// What the gateway adds to a forwarded request.
#[derive(Debug, Clone, Copy)]
pub struct ForwardExtras<'a> {
    /// The peer address of the client connection, appended to `X-Forwarded-For`.
    pub client_ip: IpAddr,
    pub proto: ForwardedProto,
    /// Header lines the gateway sets (client identity), pre-encoded as `Name: value\r\n` lines
    /// and appended verbatim. The caller guarantees they are well-formed: no validation here.
    pub identity_headers: &'a [u8],
    /// The matched rule's `RequestHeaderModifier` (see [`crate::filters`]); translation
    /// guarantees it names no field the gateway manages and only valid values.
    pub request_headers: &'a HeaderModifier,
}

/// Writes the request head to send to the backend into `out` (appending).
///
/// - Request line: the method and target as received, an absolute-form target turned into
///   origin-form, always `HTTP/1.1`.
/// - `Host` first: the absolute-form authority, else the client's `Host` value as received (port
///   included), else empty (an HTTP/1.0 request without one; RFC 9112 §3.2).
/// - Dropped: hop-by-hop fields (`Connection`, `Keep-Alive`, `Proxy-Connection`, `TE`,
///   `Trailer`, `Upgrade`), every field the client named in `Connection`, and the identity
///   fields only the gateway may set (`X-Forwarded-Client-Cert`, `Client-Cert`,
///   `Client-Cert-Chain`). `Proxy-Authorization` is kept (it is the backend's business).
/// - Framing: the received `Content-Length`/`Transfer-Encoding` fields are replaced by one
///   canonical `Content-Length: N` or `Transfer-Encoding: chunked` describing the body exactly as
///   it will be forwarded. `Connection` can never remove them (nor `Host`).
/// - `X-Forwarded-For`: the client's values (all its field lines, in order) with `, <client ip>`
///   appended; `X-Forwarded-Proto` replaced by the gateway's; then `extra.identity_headers`.
/// - The rule's header modifier: the client's fields it sets or removes are dropped, and its
///   `set` then `add` fields are written after the client's fields that are kept.
pub fn write_forwarded_request_head(
    head: &RequestHead,
    buf: &[u8],
    extra: &ForwardExtras<'_>,
    out: &mut Vec<u8>,
) {
    out.reserve(
        head.head_len
            .saturating_add(extra.identity_headers.len())
            .saturating_add(FORWARD_OVERHEAD_BYTES),
    );
    out.extend_from_slice(head.method(buf).as_bytes());
    out.push(b' ');
    match head.form {
        TargetForm::Origin => out.extend_from_slice(head.target(buf)),
        TargetForm::Absolute => {
            out.extend_from_slice(head.path(buf).as_bytes());
            if let Some(query) = head.query(buf) {
                out.push(b'?');
                out.extend_from_slice(query.as_bytes());
            }
        }
        TargetForm::Asterisk => out.push(b'*'),
    }
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(head.forward_host(buf));
    out.extend_from_slice(b"\r\n");

    let spans = head.header_spans();
    let nominates = connection_nominates(spans, buf);
    let mut forwarded_for = false;
    for h in spans {
        let name = h.name.slice(buf);
        match classify(name) {
            Field::Other | Field::Expect => {
                if !(nominates && nominated(spans, buf, name) || extra.request_headers.drops(name))
                {
                    write_field(out, name, h.value.slice(buf));
                }
            }
            Field::XForwardedFor => forwarded_for = true,
            Field::Host
            | Field::ContentLength
            | Field::TransferEncoding
            | Field::Connection
            | Field::HopByHop
            | Field::XForwardedProto
            | Field::Identity => {}
        }
    }
    for field in extra.request_headers.written() {
        write_field(out, field.name.as_bytes(), field.value.as_bytes());
    }
    match head.body {
        RequestBody::None => {}
        RequestBody::ContentLength(n) => {
            let _ = write!(out, "Content-Length: {n}\r\n");
        }
        RequestBody::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"X-Forwarded-For: ");
    if forwarded_for {
        for h in spans {
            let name = h.name.slice(buf);
            if classify(name) == Field::XForwardedFor {
                for element in list_elements(h.value.slice(buf)) {
                    out.extend_from_slice(element);
                    out.extend_from_slice(b", ");
                }
            }
        }
    }
    let _ = write!(out, "{}\r\n", extra.client_ip);
    out.extend_from_slice(b"X-Forwarded-Proto: ");
    out.extend_from_slice(extra.proto.as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(extra.identity_headers);
    out.extend_from_slice(b"\r\n");
}

/// Room reserved beyond the received head for what the rewrite adds: `X-Forwarded-For` with an
/// IPv6 address (~60 bytes), `X-Forwarded-Proto` (~27), a canonical framing field (~40) and the
/// request line's `HTTP/1.1`. 256 bytes covers them, so `out` grows at most once.
const FORWARD_OVERHEAD_BYTES: usize = 256;

/// The client side of an exchange, as the writer of the response head needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientConn {
    pub version: Version,
    /// Whether the client connection would stay open after this exchange as far as the request
    /// and the runtime are concerned ([`RequestHead::keep_alive`], draining, limits).
    pub keep_alive: bool,
}

/// How the response body goes to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientBody {
    None,
    /// Forward exactly this many bytes ([`super::ContentLengthBody`]).
    ContentLength(u64),
    /// Forward the chunked body as received ([`super::ChunkedDecoder::advance`]).
    Chunked,
    /// The client is HTTP/1.0, which cannot read chunked: forward only the chunk data
    /// ([`super::ChunkedDecoder::advance_with`]) and close the client connection after it.
    Dechunk,
    /// Close-delimited: forward until the backend closes, then close the client connection.
    UntilClose,
}

/// What the caller must do after writing a response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponsePlan {
    pub body: ClientBody,
    /// Whether the client connection stays open after this response. Always false for
    /// [`ClientBody::Dechunk`] and [`ClientBody::UntilClose`].
    pub keep_alive: bool,
}

/// Writes the response head to send to the client into `out` (appending) and says how to
/// forward the body.
///
/// The status line is `HTTP/1.1` (the gateway's version), the backend's status and reason (the
/// standard reason when the backend sent none). Hop-by-hop fields and those named in `Connection`
/// are dropped, `Content-Length` is written once in canonical form, `Transfer-Encoding` is kept
/// as received (dropped for HTTP/1.0 clients, which get the body de-chunked). `Connection:
/// close` is added when the client connection will close after this response, `Connection:
/// keep-alive` for an HTTP/1.0 client that stays.
///
/// A 1xx (informational) head is written without connection management, and for an HTTP/1.0
/// client not at all (RFC 9110 §15.2): `out` is left unchanged.
///
/// `response_headers` (the matched rule's `ResponseHeaderModifier`) changes the final head only:
/// the backend's fields it sets or removes are dropped, its `set` then `add` fields written
/// after the backend's fields that are kept.
pub fn write_forwarded_response_head(
    head: &ResponseHead,
    buf: &[u8],
    client: ClientConn,
    response_headers: &HeaderModifier,
    out: &mut Vec<u8>,
) -> ResponsePlan {
    let modifier = if head.is_informational {
        &NO_HEADER_CHANGES
    } else {
        response_headers
    };
    if head.is_informational && client.version == Version::Http10 {
        return ResponsePlan {
            body: ClientBody::None,
            keep_alive: client.keep_alive,
        };
    }
    let body = match (head.body, client.version) {
        (ResponseBody::None, _) => ClientBody::None,
        (ResponseBody::ContentLength(n), _) => ClientBody::ContentLength(n),
        (ResponseBody::Chunked, Version::Http11) => ClientBody::Chunked,
        (ResponseBody::Chunked, Version::Http10) => ClientBody::Dechunk,
        (ResponseBody::CloseDelimited, _) => ClientBody::UntilClose,
    };
    let keep_alive = client.keep_alive
        && matches!(
            body,
            ClientBody::None | ClientBody::ContentLength(_) | ClientBody::Chunked
        );

    out.reserve(head.head_len.saturating_add(FORWARD_OVERHEAD_BYTES));
    let _ = write!(out, "HTTP/1.1 {} ", head.status);
    let reason = head.reason(buf);
    if reason.is_empty() {
        out.extend_from_slice(canonical_reason(head.status).as_bytes());
    } else {
        out.extend_from_slice(reason);
    }
    out.extend_from_slice(b"\r\n");

    let spans = head.header_spans();
    let nominates = connection_nominates(spans, buf);
    let mut length_written = false;
    for h in spans {
        let name = h.name.slice(buf);
        match classify(name) {
            Field::ContentLength => {
                if let (false, Some(n)) = (length_written, head.content_length) {
                    let _ = write!(out, "Content-Length: {n}\r\n");
                    length_written = true;
                }
            }
            Field::TransferEncoding => {
                if client.version == Version::Http11 {
                    write_field(out, name, h.value.slice(buf));
                }
            }
            Field::Connection | Field::HopByHop => {}
            Field::Host
            | Field::Expect
            | Field::XForwardedFor
            | Field::XForwardedProto
            | Field::Identity
            | Field::Other => {
                if !(nominates && nominated(spans, buf, name) || modifier.drops(name)) {
                    write_field(out, name, h.value.slice(buf));
                }
            }
        }
    }
    for field in modifier.written() {
        write_field(out, field.name.as_bytes(), field.value.as_bytes());
    }
    if !head.is_informational {
        if !keep_alive {
            out.extend_from_slice(b"Connection: close\r\n");
        } else if client.version == Version::Http10 {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
    ResponsePlan {
        body: if head.is_informational {
            ClientBody::None
        } else {
            body
        },
        keep_alive: if head.is_informational {
            client.keep_alive
        } else {
            keep_alive
        },
    }
}

fn write_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Whether any `Connection` field names an option other than `close`/`keep-alive`, which makes
/// the per-field [`nominated`] scan worth doing.
fn connection_nominates(spans: &[HeaderSpan], buf: &[u8]) -> bool {
    connection_values(spans, buf).any(|v| {
        list_elements(v)
            .any(|e| !e.eq_ignore_ascii_case(b"close") && !e.eq_ignore_ascii_case(b"keep-alive"))
    })
}

/// Whether `name` is listed in a `Connection` field (RFC 9110 §7.6.1): it is hop-by-hop.
fn nominated(spans: &[HeaderSpan], buf: &[u8], name: &[u8]) -> bool {
    connection_values(spans, buf).any(|v| list_elements(v).any(|e| e.eq_ignore_ascii_case(name)))
}

fn connection_values<'a>(
    spans: &'a [HeaderSpan],
    buf: &'a [u8],
) -> impl Iterator<Item = &'a [u8]> + 'a {
    spans
        .iter()
        .filter(move |h| classify(h.name.slice(buf)) == Field::Connection)
        .map(move |h| Span::slice(&h.value, buf))
}

fn canonical_reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        102 => "Processing",
        103 => "Early Hints",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        421 => "Misdirected Request",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::super::{HeadLimits, parse_request_head, parse_response_head};
    use super::*;
    use crate::filters::{HeaderField, NO_HEADER_CHANGES as NO_CHANGES};

    fn extras(identity: &[u8]) -> ForwardExtras<'_> {
        ForwardExtras {
            client_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
            proto: ForwardedProto::Https,
            identity_headers: identity,
            request_headers: &NO_CHANGES,
        }
    }

    fn forward(buf: &[u8], identity: &[u8]) -> String {
        let head = parse_request_head(buf, &HeadLimits::default())
            .unwrap()
            .unwrap();
        let mut out = b"previous".to_vec();
        write_forwarded_request_head(&head, buf, &extras(identity), &mut out);
        let out = out.strip_prefix(b"previous").unwrap();
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn request_rewrite_table() {
        let cases: &[(&[u8], &str)] = &[
            (
                b"GET /a?b=c HTTP/1.1\r\nHost: Example.com:8443\r\nAccept: */*\r\n\r\n",
                "GET /a?b=c HTTP/1.1\r\nHost: Example.com:8443\r\nAccept: */*\r\n\
                 X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: https\r\n\r\n",
            ),
            // Hop-by-hop, nominated and identity fields dropped; framing canonical; XFF merged.
            (
                b"POST /u HTTP/1.1\r\nhost: a\r\nConnection: keep-alive, X-Secret\r\n\
                  Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\n\
                  Trailer: X-Sum\r\nUpgrade: h2c\r\nX-Secret: s\r\nx-secret: s2\r\n\
                  X-Forwarded-Client-Cert: forged\r\nclient-cert: :forged:\r\n\
                  Client-Cert-Chain: :forged:\r\nX-Forwarded-Proto: http\r\n\
                  X-Forwarded-For: 10.0.0.1, 10.0.0.2\r\nProxy-Authorization: Basic x\r\n\
                  X-Forwarded-For: 10.0.0.3\r\nContent-Length: 005\r\nContent-Length: 5\r\n\r\n",
                "POST /u HTTP/1.1\r\nHost: a\r\nProxy-Authorization: Basic x\r\n\
                 Content-Length: 5\r\n\
                 X-Forwarded-For: 10.0.0.1, 10.0.0.2, 10.0.0.3, 192.0.2.7\r\n\
                 X-Forwarded-Proto: https\r\n\r\n",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: , Chunked\r\n\r\n",
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\
                 X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: https\r\n\r\n",
            ),
            // Connection cannot remove framing or Host.
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nConnection: Content-Length, Host, Transfer-Encoding\r\n\
                  Content-Length: 2\r\n\r\n",
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\
                 X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: https\r\n\r\n",
            ),
            // Absolute-form becomes origin-form, Host from the authority.
            (
                b"GET http://b.example:81?x=1 HTTP/1.1\r\nHost: other\r\n\r\n",
                "GET /?x=1 HTTP/1.1\r\nHost: b.example:81\r\n\
                 X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: https\r\n\r\n",
            ),
            // HTTP/1.0 without Host: HTTP/1.1 to the backend, empty Host; bare LF normalized.
            (
                b"GET /x HTTP/1.0\nUser-Agent: old\n\n",
                "GET /x HTTP/1.1\r\nHost: \r\nUser-Agent: old\r\n\
                 X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: https\r\n\r\n",
            ),
            (
                b"OPTIONS * HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
                "OPTIONS * HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\
                 X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: https\r\n\r\n",
            ),
            // Empty XFF elements are skipped.
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For:\r\nX-Forwarded-For: ,1.1.1.1,\r\n\r\n",
                "GET / HTTP/1.1\r\nHost: a\r\n\
                 X-Forwarded-For: 1.1.1.1, 192.0.2.7\r\nX-Forwarded-Proto: https\r\n\r\n",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                forward(input, b""),
                *want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn identity_headers_are_appended_verbatim_and_proto_is_configurable() {
        let buf = b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-Client-Cert: forged\r\n\r\n";
        let head = parse_request_head(buf, &HeadLimits::default())
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        let extra = ForwardExtras {
            client_ip: IpAddr::V6(Ipv6Addr::LOCALHOST),
            proto: ForwardedProto::Http,
            identity_headers: b"X-Forwarded-Client-Cert: Hash=abc\r\nX-Client-Verified: yes\r\n",
            request_headers: &NO_CHANGES,
        };
        write_forwarded_request_head(&head, buf, &extra, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: ::1\r\nX-Forwarded-Proto: http\r\n\
             X-Forwarded-Client-Cert: Hash=abc\r\nX-Client-Verified: yes\r\n\r\n"
        );
    }

    #[test]
    fn the_rules_header_modifier_sets_adds_and_removes() {
        let buf = b"GET / HTTP/1.1\r\nHost: a\r\nx-header-set: client\r\nX-Header-Set: again\r\n\
            x-header-add: original\r\nX-Header-Remove: gone\r\nAnother: kept\r\n\r\n";
        let head = parse_request_head(buf, &HeadLimits::default())
            .unwrap()
            .unwrap();
        let field = |name: &str, value: &str| HeaderField {
            name: name.to_owned(),
            value: value.to_owned(),
        };
        let modifier = HeaderModifier {
            set: vec![field("X-Header-Set", "set"), field("X-New", "new")],
            add: vec![field("X-Header-Add", "added")],
            remove: vec!["x-header-REMOVE".to_owned()],
        };
        let mut out = Vec::new();
        let extra = ForwardExtras {
            client_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
            proto: ForwardedProto::Http,
            identity_headers: b"",
            request_headers: &modifier,
        };
        write_forwarded_request_head(&head, buf, &extra, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET / HTTP/1.1\r\nHost: a\r\nx-header-add: original\r\nAnother: kept\r\n\
             X-Header-Set: set\r\nX-New: new\r\nX-Header-Add: added\r\n\
             X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: http\r\n\r\n"
        );
    }

    fn respond(buf: &[u8], is_head: bool, client: ClientConn) -> (String, ResponsePlan) {
        let head = parse_response_head(buf, is_head, &HeadLimits::default())
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        let plan = write_forwarded_response_head(&head, buf, client, &NO_CHANGES, &mut out);
        (String::from_utf8(out).unwrap(), plan)
    }

    #[test]
    fn the_rules_response_header_modifier_changes_the_final_head_only() {
        let field = |name: &str, value: &str| HeaderField {
            name: name.to_owned(),
            value: value.to_owned(),
        };
        let modifier = HeaderModifier {
            set: vec![field("X-Header-Set", "set")],
            add: vec![field("X-Header-Add", "added")],
            remove: vec!["X-Header-Remove".to_owned()],
        };
        let buf = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nx-header-set: old\r\n\
            X-Header-Add: backend\r\nx-header-remove: gone\r\nOther: kept\r\n\r\n";
        let head = parse_response_head(buf, false, &HeadLimits::default())
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        write_forwarded_response_head(&head, buf, V11_KEEP, &modifier, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Header-Add: backend\r\nOther: kept\r\n\
             X-Header-Set: set\r\nX-Header-Add: added\r\n\r\n"
        );
        let informational = b"HTTP/1.1 103 Early Hints\r\nx-header-remove: kept\r\n\r\n";
        let head = parse_response_head(informational, false, &HeadLimits::default())
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        write_forwarded_response_head(&head, informational, V11_KEEP, &modifier, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 103 Early Hints\r\nx-header-remove: kept\r\n\r\n"
        );
    }

    const V11_KEEP: ClientConn = ClientConn {
        version: Version::Http11,
        keep_alive: true,
    };
    const V11_CLOSE: ClientConn = ClientConn {
        version: Version::Http11,
        keep_alive: false,
    };
    const V10_KEEP: ClientConn = ClientConn {
        version: Version::Http10,
        keep_alive: true,
    };
    const V10_CLOSE: ClientConn = ClientConn {
        version: Version::Http10,
        keep_alive: false,
    };

    /// Backend head, request was HEAD, client, expected output, body plan, client keep-alive.
    type ResponseCase<'a> = (&'a [u8], bool, ClientConn, &'a str, ClientBody, bool);

    #[test]
    fn response_rewrite_table() {
        let cases: &[ResponseCase<'_>] = &[
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n\r\n",
                false,
                V11_KEEP,
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n\r\n",
                ClientBody::ContentLength(2),
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n",
                false,
                V11_CLOSE,
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n",
                ClientBody::ContentLength(2),
                false,
            ),
            (
                b"HTTP/1.0 200 OK\r\nContent-Length: 2, 2\r\nConnection: keep-alive, X-H\r\n\
                  Keep-Alive: timeout=4\r\nX-H: 1\r\nUpgrade: x\r\nTrailer: a\r\n\r\n",
                false,
                V10_KEEP,
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n",
                ClientBody::ContentLength(2),
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n",
                false,
                V10_CLOSE,
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n",
                ClientBody::ContentLength(2),
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                false,
                V11_KEEP,
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                ClientBody::Chunked,
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false,
                V10_KEEP,
                "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n",
                ClientBody::Dechunk,
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\nX: y\r\n\r\n",
                false,
                V11_KEEP,
                "HTTP/1.1 200 OK\r\nX: y\r\nConnection: close\r\n\r\n",
                ClientBody::UntilClose,
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
                true,
                V11_KEEP,
                "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
                ClientBody::None,
                true,
            ),
            (
                b"HTTP/1.1 204\r\n\r\n",
                false,
                V11_KEEP,
                "HTTP/1.1 204 No Content\r\n\r\n",
                ClientBody::None,
                true,
            ),
            (
                b"HTTP/1.1 299\r\n\r\n",
                false,
                V11_KEEP,
                "HTTP/1.1 299 \r\nConnection: close\r\n\r\n",
                ClientBody::UntilClose,
                false,
            ),
            (
                b"HTTP/1.1 100 Continue\r\nConnection: close\r\n\r\n",
                false,
                V11_KEEP,
                "HTTP/1.1 100 Continue\r\n\r\n",
                ClientBody::None,
                true,
            ),
            (
                b"HTTP/1.1 100 Continue\r\n\r\n",
                false,
                V10_KEEP,
                "",
                ClientBody::None,
                true,
            ),
            // The backend closing its side does not close the client's.
            (
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                false,
                V11_KEEP,
                "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                ClientBody::ContentLength(0),
                true,
            ),
        ];
        for (input, is_head, client, want, body, keep) in cases {
            let (got, plan) = respond(input, *is_head, *client);
            let ctx = String::from_utf8_lossy(input);
            assert_eq!(got, *want, "{ctx:?}");
            assert_eq!(plan.body, *body, "{ctx:?}");
            assert_eq!(plan.keep_alive, *keep, "{ctx:?}");
        }
    }
}
