//! Property tests of the HTTP/1.1 heads and body framing: no panic on any input, answers that do
//! not depend on how the bytes were split into reads, and rewrites that re-parse to the same
//! request or response.

use std::net::{IpAddr, Ipv4Addr};

use portcullis_core::http1::{
    ChunkedDecoder, ChunkedError, ClientBody, ClientConn, ForwardExtras, ForwardedProto,
    HeadLimits, RequestBody, RequestHead, ResponseBody, Version, parse_request_head,
    parse_response_head, write_forwarded_request_head, write_forwarded_response_head,
};
use proptest::prelude::*;

/// Fragments that make arbitrary concatenations look like heads often enough to reach the
/// validation code, not only httparse's first error.
const FRAGMENTS: &[&str] = &[
    "GET ",
    "POST ",
    "HEAD ",
    "OPTIONS ",
    "CONNECT ",
    "/",
    "/a",
    "?",
    "=",
    "&",
    "#",
    "*",
    " ",
    "http://",
    "https://",
    "a.example",
    "[::1]",
    ":",
    "8443",
    "@",
    "HTTP/1.1",
    "HTTP/1.0",
    "HTTP/1.1 200 OK",
    "HTTP/1.0 204 No Content",
    "HTTP/1.1 101 Switching",
    "HTTP/1.1 100 Continue",
    "\r\n",
    "\n",
    "\r",
    "\t",
    "Host: ",
    "Content-Length: ",
    "Transfer-Encoding: ",
    "chunked",
    "identity",
    "gzip",
    ",",
    "0",
    "5",
    "18446744073709551616",
    "-1",
    "Connection: ",
    "close",
    "keep-alive",
    "Expect: 100-continue",
    "X-Forwarded-For: ",
    "X-A: b",
    "\x00",
    "\u{7f}",
    "é",
];

fn fragments() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(FRAGMENTS), 0..40)
        .prop_map(|parts| parts.concat().into_bytes())
}

fn any_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![prop::collection::vec(any::<u8>(), 0..512), fragments()]
}

fn limits() -> impl Strategy<Value = HeadLimits> {
    prop_oneof![
        Just(HeadLimits::default()),
        (0usize..300, 0usize..200).prop_map(|(max_head_bytes, max_headers)| HeadLimits {
            max_head_bytes,
            max_headers
        }),
    ]
}

// ---------------------------------------------------------------- valid request generator

#[derive(Debug, Clone)]
struct GenRequest {
    method: &'static str,
    path: String,
    query: Option<String>,
    absolute: Option<&'static str>,
    host: String,
    port: Option<u16>,
    http10: bool,
    omit_host_10: bool,
    headers: Vec<(String, String)>,
    framing: u8,
    length: u64,
    bare_lf: bool,
}

impl GenRequest {
    fn bytes(&self) -> Vec<u8> {
        let nl = if self.bare_lf { "\n" } else { "\r\n" };
        let authority = match self.port {
            Some(p) => format!("{}:{p}", self.host),
            None => self.host.clone(),
        };
        let mut target = String::new();
        if let Some(scheme) = self.absolute {
            target.push_str(scheme);
            target.push_str(&authority);
        }
        target.push_str(&self.path);
        if let Some(q) = &self.query {
            target.push('?');
            target.push_str(q);
        }
        let version = if self.http10 { "HTTP/1.0" } else { "HTTP/1.1" };
        let mut s = format!("{} {target} {version}{nl}", self.method);
        if !(self.http10 && self.omit_host_10) {
            s.push_str(&format!("Host: {authority}{nl}"));
        }
        for (n, v) in &self.headers {
            s.push_str(&format!("{n}: {v}{nl}"));
        }
        match self.framing {
            1 => s.push_str(&format!("Content-Length: {}{nl}", self.length)),
            2 if !self.http10 => s.push_str(&format!("Transfer-Encoding: chunked{nl}")),
            _ => {}
        }
        s.push_str(nl);
        s.into_bytes()
    }
}

const HEADER_NAMES: &[&str] = &[
    "Accept",
    "User-Agent",
    "X-Custom",
    "x-custom",
    "Connection",
    "Keep-Alive",
    "Proxy-Connection",
    "TE",
    "Trailer",
    "Upgrade",
    "X-Forwarded-For",
    "X-Forwarded-Proto",
    "X-Forwarded-Client-Cert",
    "Client-Cert",
    "Client-Cert-Chain",
    "Proxy-Authorization",
    "Expect",
    "Cookie",
];

fn header_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,20}".prop_map(|s| s.trim().to_owned()),
        prop::sample::select(
            &[
                "close",
                "keep-alive",
                "x-custom, accept",
                "upgrade",
                "10.0.0.1, 10.0.0.2",
                "100-continue",
                "trailers",
            ][..]
        )
        .prop_map(str::to_owned),
    ]
}

fn gen_request() -> impl Strategy<Value = GenRequest> {
    (
        prop::sample::select(&["GET", "POST", "PUT", "HEAD", "DELETE", "PATCH", "OPTIONS"][..]),
        "(/[a-zA-Z0-9._~%!$'()*+,;=:@-]{0,8}){0,4}",
        prop::option::of("[a-zA-Z0-9=&%/?:@._-]{0,12}"),
        prop::option::of(prop::sample::select(&["http://", "HTTPS://"][..])),
        "[a-zA-Z0-9]([a-zA-Z0-9-]{0,6}[a-zA-Z0-9])?(\\.[a-zA-Z0-9]{1,6}){0,3}",
        prop::option::of(any::<u16>()),
        (any::<bool>(), any::<bool>()),
        prop::collection::vec(
            (
                prop::sample::select(HEADER_NAMES).prop_map(str::to_owned),
                header_value(),
            ),
            0..8,
        ),
        0u8..3,
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(
            |(
                method,
                path,
                query,
                absolute,
                host,
                port,
                (http10, omit),
                headers,
                framing,
                length,
                bare_lf,
            )| {
                GenRequest {
                    method,
                    path: if path.is_empty() && absolute.is_none() {
                        "/".to_owned()
                    } else {
                        path
                    },
                    query,
                    absolute,
                    host,
                    port,
                    http10,
                    omit_host_10: omit,
                    headers,
                    framing,
                    length,
                    bare_lf,
                }
            },
        )
}

fn parse_ok(buf: &[u8]) -> Result<RequestHead, TestCaseError> {
    match parse_request_head(buf, &HeadLimits::default()) {
        Ok(Some(h)) => Ok(h),
        other => Err(TestCaseError::fail(format!(
            "{:?}: {other:?}",
            String::from_utf8_lossy(buf)
        ))),
    }
}

fn is_hop_by_hop_or_identity(name: &[u8]) -> bool {
    [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "x-forwarded-client-cert",
        "client-cert",
        "client-cert-chain",
    ]
    .iter()
    .any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
}

// ---------------------------------------------------------------- chunked generator

#[derive(Debug, Clone)]
struct GenChunked {
    chunks: Vec<(Vec<u8>, String, bool)>,
    last_ext: String,
    trailers: Vec<(String, String)>,
}

impl GenChunked {
    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (data, ext, upper) in &self.chunks {
            let size = if *upper {
                format!("{:X}", data.len())
            } else {
                format!("{:x}", data.len())
            };
            out.extend_from_slice(size.as_bytes());
            out.extend_from_slice(ext.as_bytes());
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(data);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0");
        out.extend_from_slice(self.last_ext.as_bytes());
        out.extend_from_slice(b"\r\n");
        for (n, v) in &self.trailers {
            out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    fn data(&self) -> Vec<u8> {
        self.chunks.iter().flat_map(|(d, _, _)| d.clone()).collect()
    }
}

fn chunk_ext() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "( ?;[a-z]{1,5}(=[a-z0-9\"]{1,5})?){1,3}"
    ]
}

fn gen_chunked() -> impl Strategy<Value = GenChunked> {
    (
        prop::collection::vec(
            (
                prop::collection::vec(any::<u8>(), 1..64),
                chunk_ext(),
                any::<bool>(),
            ),
            0..6,
        ),
        chunk_ext(),
        prop::collection::vec(("[A-Za-z][A-Za-z0-9-]{0,8}", "[ -~]{0,16}"), 0..3),
    )
        .prop_map(|(chunks, last_ext, trailers)| GenChunked {
            chunks,
            last_ext,
            trailers,
        })
}

/// Feeds `input` cut at `cuts` (positions, any order); returns the overall result and the data.
fn feed_split(input: &[u8], cuts: &[usize]) -> (Result<(usize, bool), ChunkedError>, Vec<u8>) {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    points.push(0);
    points.push(input.len());
    points.sort_unstable();
    points.dedup();
    let mut d = ChunkedDecoder::new();
    let mut consumed = 0;
    let mut done = false;
    let mut data = Vec::new();
    for w in points.windows(2) {
        let piece = &input[w[0]..w[1]];
        match d.advance_with(piece, |x| data.extend_from_slice(x)) {
            Ok(p) => {
                assert!(p.consumed <= piece.len());
                consumed += p.consumed;
                done = p.done;
                if p.done {
                    break;
                }
                assert_eq!(
                    p.consumed,
                    piece.len(),
                    "an unfinished body consumes all input"
                );
            }
            Err(e) => return (Err(e), data),
        }
    }
    (Ok((consumed, done)), data)
}

// ---------------------------------------------------------------- response generator

#[derive(Debug, Clone)]
struct GenResponse {
    status: u16,
    http10: bool,
    headers: Vec<(String, String)>,
    framing: u8,
    length: u64,
}

impl GenResponse {
    fn bytes(&self) -> Vec<u8> {
        let version = if self.http10 { "HTTP/1.0" } else { "HTTP/1.1" };
        let mut s = format!("{version} {} Reason\r\n", self.status);
        for (n, v) in &self.headers {
            s.push_str(&format!("{n}: {v}\r\n"));
        }
        match self.framing {
            1 => s.push_str(&format!("Content-Length: {}\r\n", self.length)),
            2 if !self.http10 => s.push_str("Transfer-Encoding: chunked\r\n"),
            3 if !self.http10 => s.push_str("Transfer-Encoding: gzip\r\n"),
            _ => {}
        }
        s.push_str("\r\n");
        s.into_bytes()
    }
}

fn gen_response() -> impl Strategy<Value = GenResponse> {
    (
        prop_oneof![
            Just(100u16),
            Just(103),
            Just(200),
            Just(204),
            Just(304),
            102u16..600
        ],
        any::<bool>(),
        prop::collection::vec(
            (
                prop::sample::select(HEADER_NAMES).prop_map(str::to_owned),
                header_value(),
            ),
            0..6,
        ),
        0u8..4,
        any::<u64>(),
    )
        .prop_map(|(status, http10, headers, framing, length)| GenResponse {
            status,
            http10,
            headers,
            framing,
            length,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn request_parser_never_panics(buf in any_bytes(), limits in limits()) {
        let _ = parse_request_head(&buf, &limits);
    }

    #[test]
    fn response_parser_never_panics(buf in any_bytes(), limits in limits(), head in any::<bool>()) {
        let _ = parse_response_head(&buf, head, &limits);
    }

    #[test]
    fn chunked_decoder_never_panics(buf in any_bytes(), cuts in prop::collection::vec(any::<usize>(), 0..8)) {
        let _ = feed_split(&buf, &cuts);
    }

    /// A parse of a prefix never contradicts the parse of the whole buffer.
    #[test]
    fn request_parse_is_prefix_stable(buf in any_bytes(), cut in any::<usize>(), limits in limits()) {
        let cut = cut % (buf.len() + 1);
        let whole = parse_request_head(&buf, &limits);
        match parse_request_head(&buf[..cut], &limits) {
            Ok(None) => {}
            prefix => prop_assert_eq!(prefix, whole),
        }
    }

    #[test]
    fn response_parse_is_prefix_stable(buf in any_bytes(), cut in any::<usize>(), limits in limits()) {
        let cut = cut % (buf.len() + 1);
        let whole = parse_response_head(&buf, false, &limits);
        match parse_response_head(&buf[..cut], false, &limits) {
            Ok(None) => {}
            prefix => prop_assert_eq!(prefix, whole),
        }
    }

    #[test]
    fn chunked_decoding_does_not_depend_on_splits(
        buf in any_bytes(),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let whole = feed_split(&buf, &[]);
        let split = feed_split(&buf, &cuts);
        prop_assert_eq!(whole, split);
    }

    #[test]
    fn valid_chunked_bodies_end_exactly(
        body in gen_chunked(),
        rest in prop::collection::vec(any::<u8>(), 0..32),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let bytes = body.bytes();
        let mut input = bytes.clone();
        input.extend_from_slice(&rest);
        let (result, data) = feed_split(&input, &cuts);
        prop_assert_eq!(result, Ok((bytes.len(), true)));
        prop_assert_eq!(data, body.data());
    }

    #[test]
    fn valid_requests_parse_and_rewrite_round_trips(
        req in gen_request(),
        pipelined in prop::collection::vec(any::<u8>(), 0..16),
        ip in any::<[u8; 4]>(),
        https in any::<bool>(),
    ) {
        let head_bytes = req.bytes();
        let mut buf = head_bytes.clone();
        buf.extend_from_slice(&pipelined);
        let head = parse_ok(&buf)?;
        prop_assert_eq!(head.head_len, head_bytes.len());
        prop_assert_eq!(head.method(&buf), req.method);
        prop_assert_eq!(head.path(&buf), if req.path.is_empty() { "/" } else { req.path.as_str() });
        prop_assert_eq!(head.query(&buf), req.query.as_deref());
        let want_host = if req.http10 && req.omit_host_10 && req.absolute.is_none() {
            None
        } else {
            Some(req.host.to_ascii_lowercase())
        };
        prop_assert_eq!(head.host(), want_host.as_deref());
        let want_body = match req.framing {
            1 => RequestBody::ContentLength(req.length),
            2 if !req.http10 => RequestBody::Chunked,
            _ => RequestBody::None,
        };
        prop_assert_eq!(head.body, want_body);

        // Every split before the end of the head is "incomplete".
        for cut in 0..head.head_len {
            prop_assert_eq!(parse_request_head(&buf[..cut], &HeadLimits::default()), Ok(None));
        }

        let client_ip = IpAddr::V4(Ipv4Addr::from(ip));
        let extra = ForwardExtras {
            client_ip,
            proto: if https { ForwardedProto::Https } else { ForwardedProto::Http },
            identity_headers: b"X-Forwarded-Client-Cert: By=gateway\r\n",
            request_headers: &portcullis_core::filters::NO_HEADER_CHANGES,
        };
        let mut out = Vec::new();
        write_forwarded_request_head(&head, &buf, &extra, &mut out);
        let again = parse_ok(&out)?;
        prop_assert_eq!(again.head_len, out.len());
        prop_assert_eq!(again.method(&out), head.method(&buf));
        prop_assert_eq!(again.path(&out), head.path(&buf));
        prop_assert_eq!(again.query(&out), head.query(&buf));
        prop_assert_eq!(again.host(), head.host());
        prop_assert_eq!(again.body, head.body);
        prop_assert_eq!(again.version, Version::Http11);
        prop_assert!(again.keep_alive);
        let headers = again.headers(&out);
        let mut xfcc = 0;
        let mut xff = Vec::new();
        let mut proto = Vec::new();
        for (name, value) in headers.iter() {
            if name.eq_ignore_ascii_case(b"x-forwarded-client-cert") {
                xfcc += 1;
                prop_assert_eq!(value, b"By=gateway");
            } else {
                prop_assert!(!is_hop_by_hop_or_identity(name), "{:?}", String::from_utf8_lossy(name));
            }
            if name.eq_ignore_ascii_case(b"x-forwarded-for") {
                xff.push(value.to_vec());
            }
            if name.eq_ignore_ascii_case(b"x-forwarded-proto") {
                proto.push(value.to_vec());
            }
        }
        prop_assert_eq!(xfcc, 1);
        prop_assert_eq!(xff.len(), 1);
        let ip_text = client_ip.to_string();
        prop_assert!(xff[0].ends_with(ip_text.as_bytes()));
        prop_assert_eq!(proto, vec![if https { b"https".to_vec() } else { b"http".to_vec() }]);
        // Rewriting the rewrite changes nothing but the forwarding fields.
        let mut twice = Vec::new();
        write_forwarded_request_head(&again, &out, &extra, &mut twice);
        let third = parse_ok(&twice)?;
        prop_assert_eq!(third.body, again.body);
        prop_assert_eq!(third.host(), again.host());
        prop_assert_eq!(third.path(&twice), again.path(&out));
    }

    #[test]
    fn valid_responses_rewrite_round_trips(
        res in gen_response(),
        is_head in any::<bool>(),
        client_10 in any::<bool>(),
        client_keep in any::<bool>(),
    ) {
        let buf = res.bytes();
        let head = match parse_response_head(&buf, is_head, &HeadLimits::default()) {
            Ok(Some(h)) => h,
            other => return Err(TestCaseError::fail(format!("{other:?}"))),
        };
        prop_assert_eq!(head.head_len, buf.len());
        prop_assert_eq!(head.status, res.status);
        for cut in 0..head.head_len {
            prop_assert_eq!(parse_response_head(&buf[..cut], is_head, &HeadLimits::default()), Ok(None));
        }
        let client = ClientConn {
            version: if client_10 { Version::Http10 } else { Version::Http11 },
            keep_alive: client_keep,
        };
        let mut out = Vec::new();
        let plan = write_forwarded_response_head(
            &head,
            &buf,
            client,
            &portcullis_core::filters::NO_HEADER_CHANGES,
            &mut out,
        );
        if head.is_informational && client_10 {
            prop_assert!(out.is_empty());
            return Ok(());
        }
        let again = match parse_response_head(&out, is_head, &HeadLimits::default()) {
            Ok(Some(h)) => h,
            other => return Err(TestCaseError::fail(format!("{other:?} {:?}", String::from_utf8_lossy(&out)))),
        };
        prop_assert_eq!(again.head_len, out.len());
        prop_assert_eq!(again.status, head.status);
        prop_assert_eq!(again.version, Version::Http11);
        let want = match plan.body {
            ClientBody::None => ResponseBody::None,
            ClientBody::ContentLength(n) => ResponseBody::ContentLength(n),
            ClientBody::Chunked => ResponseBody::Chunked,
            ClientBody::Dechunk | ClientBody::UntilClose => ResponseBody::CloseDelimited,
        };
        if head.body == ResponseBody::None {
            prop_assert_eq!(plan.body, ClientBody::None);
        } else {
            prop_assert_eq!(again.body, want);
        }
        if !head.is_informational {
            // The client reads the connection's fate from the head we wrote (as an HTTP/1.1
            // response; an HTTP/1.0 client reads `Connection: keep-alive` the same way).
            prop_assert_eq!(again.backend_keep_alive, plan.keep_alive);
        }
        for (name, _) in again.headers(&out).iter() {
            let hop = ["keep-alive", "proxy-connection", "te", "trailer", "upgrade"]
                .iter()
                .any(|n| name.eq_ignore_ascii_case(n.as_bytes()));
            prop_assert!(!hop);
        }
    }
}
