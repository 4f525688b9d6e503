//! HTTP/1.1 forwarding on real sockets: keep-alive, pipelining, request and response body
//! framing, refusing ambiguous framing (no smuggling), limits, `HEAD`, `204`,
//! `Expect: 100-continue` and the headers the gateway adds or strips.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashSet;
use std::io::Write;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use portcullis_runtime::pki::{GuidePki, KeyKind};
use support::backends::{After, canned_backend, echo, named_backend, raw_backend};
use support::*;

/// A gateway with an HTTPS port (no client validation) and a plain HTTP port, both routing:
/// `/chunked`, `/close-delimited`, `/no-content` and `/length` to raw backends answering with
/// that framing, everything else to the echo backend.
struct Forwarding {
    _gateway: Gateway,
    https: u16,
    http: u16,
}

fn forwarding() -> Forwarding {
    let pki = GuidePki::generate(KeyKind::EcdsaP256).unwrap();
    let (https_port, http_port) = (free_port(), free_port());
    let prefix = |path: &str, service: &str| {
        rule_with_matches(
            &format!("    - path: {{type: PathPrefix, value: {path}}}\n"),
            &[(service, 1)],
        )
    };
    let rules = [
        prefix("/chunked", "chunked"),
        prefix("/close-delimited", "close-delimited"),
        prefix("/no-content", "no-content"),
        prefix("/length", "length"),
        rule_to("echo"),
    ]
    .concat();
    let docs = vec![
        GatewayYaml::new()
            .listener(https("https", https_port, "server-cert"))
            .listener(http("http", http_port))
            .yaml(),
        route("all", &[], &rules),
        server_secret("server-cert", &pki.server),
        service("echo", echo()),
        service(
            "chunked",
            canned_backend(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n",
                After::KeepAlive,
            ),
        ),
        service(
            "close-delimited",
            canned_backend(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the backend closes",
                After::Close,
            ),
        ),
        service(
            "no-content",
            canned_backend(
                b"HTTP/1.1 204 No Content\r\nx-backend: no-content\r\n\r\n",
                After::KeepAlive,
            ),
        ),
        service("length", named_backend("exactly this")),
    ];
    Forwarding {
        _gateway: Gateway::start(desired(&docs)),
        https: https_port,
        http: http_port,
    }
}

impl Forwarding {
    fn tls(&self) -> Http<TlsStream> {
        Http::connect(self.https, "example.com", &any_server_client_config(None)).unwrap()
    }

    fn plain(&self) -> Http<TcpStream> {
        let tcp = TcpStream::connect(("127.0.0.1", self.http)).unwrap();
        tcp.set_read_timeout(Some(PATIENCE)).unwrap();
        Http::new(tcp)
    }
}

/// `\n` line ends to `\r\n`, so requests read naturally in the tests.
fn crlf(request: &str) -> Vec<u8> {
    request.replace('\n', "\r\n").into_bytes()
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let gw = forwarding();
    let mut http = gw.tls();
    for i in 0..3 {
        let response = http.get("example.com", &format!("/get?n={i}")).unwrap();
        assert_eq!(response.status, 200);
        assert!(!response.closes(), "request {i} closed the connection");
        let url = response.json()["url"].as_str().unwrap().to_owned();
        assert!(url.ends_with(&format!("/get?n={i}")), "{url}");
    }
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let gw = forwarding();
    let mut http = gw.tls();
    http.send(&crlf(
        "GET /status/201 HTTP/1.1\nHost: example.com\n\nGET /status/202 HTTP/1.1\nHost: example.com\n\nGET /length HTTP/1.1\nHost: example.com\n\n",
    ))
    .unwrap();
    assert_eq!(http.read_response().unwrap().status, 201);
    assert_eq!(http.read_response().unwrap().status, 202);
    let third = http.read_response().unwrap();
    assert_eq!(
        (third.status, third.body_text().as_str()),
        (200, "exactly this")
    );
}

#[test]
fn requests_pipelined_behind_request_bodies_are_answered_in_order() {
    let gw = forwarding();
    let mut http = gw.tls();
    http.send(&crlf(
        "POST /anything HTTP/1.1\nHost: example.com\nContent-Length: 5\n\nhelloPOST /anything HTTP/1.1\nHost: example.com\nTransfer-Encoding: chunked\n\n3\nabc\n0\n\nGET /status/202 HTTP/1.1\nHost: example.com\n\n",
    ))
    .unwrap();
    let first = http.read_response().unwrap();
    assert_eq!(
        (first.status, first.json()["body_bytes"].as_u64()),
        (200, Some(5))
    );
    let second = http.read_response().unwrap();
    assert_eq!(
        (second.status, second.json()["body_bytes"].as_u64()),
        (200, Some(3))
    );
    assert_eq!(http.read_response().unwrap().status, 202);
}

#[test]
fn a_content_length_request_body_reaches_the_backend_whole() {
    let gw = forwarding();
    let mut http = gw.tls();
    let body = vec![b'x'; 100_000];
    let mut request =
        crlf("POST /anything HTTP/1.1\nHost: example.com\nContent-Length: 100000\n\n");
    request.extend_from_slice(&body);
    let response = http.request(&request).unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["body_bytes"], 100_000);
    // The connection is still in step: the next request is answered.
    assert_eq!(http.get("example.com", "/get").unwrap().status, 200);
}

#[test]
fn a_chunked_request_body_reaches_the_backend_whole() {
    let gw = forwarding();
    let mut http = gw.tls();
    let big_chunk = "y".repeat(0x4000);
    let request = format!(
        "POST /anything HTTP/1.1\nHost: example.com\nTransfer-Encoding: chunked\n\n5\nhello\n4000\n{big_chunk}\n3;ext=1\nabc\n0\n\n"
    );
    let response = http.request(&crlf(&request)).unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["body_bytes"], 5 + 0x4000 + 3);
    assert_eq!(http.get("example.com", "/get").unwrap().status, 200);
}

#[test]
fn a_request_with_both_content_length_and_transfer_encoding_gets_400_and_the_connection_closes() {
    let gw = forwarding();
    let smuggler = crlf(
        "POST /anything HTTP/1.1\nHost: example.com\nContent-Length: 5\nTransfer-Encoding: chunked\n\n0\n\nGET /get HTTP/1.1\nHost: example.com\n\n",
    );
    let mut tls = gw.tls();
    let response = tls.request(&smuggler).unwrap();
    assert_eq!(response.status, 400);
    assert!(response.closes());
    tls.assert_closed();

    let mut plain = gw.plain();
    let response = plain.request(&smuggler).unwrap();
    assert_eq!(response.status, 400);
    plain.assert_closed();
}

#[test]
fn a_bad_content_length_gets_400_and_the_connection_closes() {
    let gw = forwarding();
    for length in [
        "Content-Length: abc\n",
        "Content-Length: -1\n",
        "Content-Length: 5, 6\n",
        "Content-Length: 5\nContent-Length: 6\n",
        "Content-Length: 99999999999999999999999\n",
    ] {
        let mut http = gw.tls();
        let request = crlf(&format!(
            "POST /anything HTTP/1.1\nHost: example.com\n{length}\nhello"
        ));
        let response = http.request(&request).unwrap();
        assert_eq!(response.status, 400, "{length:?}");
        http.assert_closed();
    }
}

#[test]
fn an_oversized_request_head_gets_431() {
    let gw = forwarding();
    let mut http = gw.plain();
    let filler = "a".repeat(portcullis_runtime::limits::DEFAULT_MAX_REQUEST_HEAD_BYTES);
    let request = crlf(&format!(
        "GET /get HTTP/1.1\nHost: example.com\nX-Filler: {filler}\n\n"
    ));
    let response = http.request(&request).unwrap();
    assert_eq!(response.status, 431);
    assert!(response.closes());
}

#[test]
fn an_oversized_request_head_over_tls_gets_431() {
    let gw = forwarding();
    let mut http = gw.tls();
    let filler = "a".repeat(portcullis_runtime::limits::DEFAULT_MAX_REQUEST_HEAD_BYTES);
    let request = crlf(&format!(
        "GET /get HTTP/1.1\nHost: example.com\nX-Filler: {filler}\n\n"
    ));
    let response = http.request(&request).unwrap();
    assert_eq!(response.status, 431);
}

#[test]
fn a_chunked_response_is_relayed_and_the_connection_stays_in_step() {
    let gw = forwarding();
    let mut http = gw.tls();
    let response = http.get("example.com", "/chunked").unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.header("transfer-encoding"), Some("chunked"));
    assert_eq!(response.body_text(), "hello, world");
    assert_eq!(http.get("example.com", "/get").unwrap().status, 200);
}

#[test]
fn an_http10_client_gets_a_chunked_response_de_chunked_then_the_connection_closes() {
    let gw = forwarding();
    let mut http = gw.tls();
    let response = http
        .request(&crlf("GET /chunked HTTP/1.0\nHost: example.com\n\n"))
        .unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.header("transfer-encoding"), None);
    assert_eq!(response.body_text(), "hello, world");
    http.assert_closed();
}

#[test]
fn a_close_delimited_response_is_relayed_whole_then_the_connection_closes() {
    let gw = forwarding();
    let mut http = gw.tls();
    let response = http.get("example.com", "/close-delimited").unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.body_text(), "until the backend closes");
    assert!(response.closes());
}

#[test]
fn a_content_length_response_is_relayed_and_the_connection_stays_in_step() {
    let gw = forwarding();
    let mut http = gw.tls();
    for _ in 0..2 {
        let response = http.get("example.com", "/length").unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.header("content-length"), Some("12"));
        assert_eq!(response.body_text(), "exactly this");
    }
}

#[test]
fn an_empty_content_length_response_leaves_the_connection_ready_for_the_next_request() {
    let gw = forwarding();
    let mut http = gw.tls();
    // The echo backend answers /status/N with `content-length: 0`.
    let empty = http.get("example.com", "/status/201").unwrap();
    assert_eq!((empty.status, empty.body.len()), (201, 0));
    assert!(!empty.closes());
    let next = http.get("example.com", "/length").unwrap();
    assert_eq!(
        (next.status, next.body_text().as_str()),
        (200, "exactly this")
    );
}

#[test]
fn a_response_to_head_has_no_body_and_the_connection_stays_in_step() {
    let gw = forwarding();
    let mut http = gw.tls();
    http.send(&crlf("HEAD /get HTTP/1.1\nHost: example.com\n\n"))
        .unwrap();
    let head = http.read_head_response().unwrap();
    assert_eq!(head.status, 200);
    let advertised: usize = head.header("content-length").unwrap().parse().unwrap();
    assert!(advertised > 0, "HEAD keeps the GET's length");
    // Had the gateway sent (or waited for) a body, this response would be garbage or hang.
    let next = http.get("example.com", "/status/202").unwrap();
    assert_eq!(next.status, 202);
}

#[test]
fn a_204_response_has_no_body_and_the_connection_stays_in_step() {
    let gw = forwarding();
    let mut http = gw.tls();
    let response = http.get("example.com", "/no-content").unwrap();
    assert_eq!(response.status, 204);
    assert_eq!(response.header("x-backend"), Some("no-content"));
    let next = http.get("example.com", "/length").unwrap();
    assert_eq!(
        (next.status, next.body_text().as_str()),
        (200, "exactly this")
    );
}

#[test]
fn expect_100_continue_gets_an_interim_response_before_the_body_is_sent() {
    let gw = forwarding();
    let mut http = gw.tls();
    http.send(&crlf(
        "POST /anything HTTP/1.1\nHost: example.com\nContent-Length: 11\nExpect: 100-continue\n\n",
    ))
    .unwrap();
    let interim = http.read_response().unwrap();
    assert_eq!(interim.status, 100);
    http.send(b"hello world").unwrap();
    let mut response = http.read_response().unwrap();
    // A backend may send its own 100 too; interim responses can repeat.
    while response.status == 100 {
        response = http.read_response().unwrap();
    }
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["body_bytes"], 11);
}

#[test]
fn forwarded_for_and_proto_are_added_and_client_sent_identity_headers_are_stripped() {
    let gw = forwarding();
    let mut http = gw.tls();
    let response = http
        .request(&crlf(
            "GET /get HTTP/1.1\nHost: example.com\nX-Forwarded-For: 203.0.113.7\nX-Forwarded-Proto: http\nX-Forwarded-Client-Cert: Hash=spoofed\nClient-Cert: :c3Bvb2ZlZA==:\n\n",
        ))
        .unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(
        response.echoed_header("x-forwarded-for").as_deref(),
        Some("203.0.113.7, 127.0.0.1")
    );
    assert_eq!(
        response.echoed_header("x-forwarded-proto").as_deref(),
        Some("https")
    );
    assert_eq!(response.echoed_header("x-forwarded-client-cert"), None);
    assert_eq!(response.echoed_header("client-cert"), None);

    let plain = gw.plain().get("example.com", "/get").unwrap();
    assert_eq!(
        plain.echoed_header("x-forwarded-proto").as_deref(),
        Some("http")
    );
}

#[test]
fn hop_by_hop_headers_and_those_named_in_connection_are_not_forwarded() {
    let gw = forwarding();
    let response = gw
        .tls()
        .request(&crlf(
            "GET /get HTTP/1.1\nHost: example.com\nConnection: keep-alive, X-Secret\nX-Secret: hop\nKeep-Alive: timeout=5\nTE: trailers\nX-Kept: end-to-end\n\n",
        ))
        .unwrap();
    assert_eq!(response.status, 200);
    for hop in ["x-secret", "keep-alive", "te", "connection"] {
        assert_eq!(response.echoed_header(hop), None, "{hop} was forwarded");
    }
    assert_eq!(
        response.echoed_header("x-kept").as_deref(),
        Some("end-to-end")
    );
}

#[test]
fn an_http10_request_is_answered_and_the_connection_closes() {
    let gw = forwarding();
    let mut http = gw.tls();
    let response = http
        .request(&crlf("GET /length HTTP/1.0\nHost: example.com\n\n"))
        .unwrap();
    assert_eq!(
        (response.status, response.body_text().as_str()),
        (200, "exactly this")
    );
    http.assert_closed();
}

#[test]
fn malformed_or_ambiguous_request_heads_get_400_and_the_connection_closes() {
    let gw = forwarding();
    let cases = [
        ("garbage", "\x16\x03\x01 not http at all\n\n"),
        ("no Host", "GET /get HTTP/1.1\n\n"),
        ("two Hosts", "GET /get HTTP/1.1\nHost: a\nHost: b\n\n"),
        (
            "space before colon",
            "POST /anything HTTP/1.1\nHost: a\nContent-Length : 5\n\nhello",
        ),
        (
            "obsolete line folding",
            "GET /get HTTP/1.1\nHost: a\nX-Fold: a\n b\n\n",
        ),
        (
            "TE not ending in chunked",
            "POST /anything HTTP/1.1\nHost: a\nTransfer-Encoding: chunked, gzip\n\n",
        ),
        (
            "TE identity",
            "POST /anything HTTP/1.1\nHost: a\nTransfer-Encoding: identity\n\n",
        ),
        (
            "bad chunk size",
            "POST /anything HTTP/1.1\nHost: a\nTransfer-Encoding: chunked\n\nzz\nhello\n0\n\n",
        ),
    ];
    for (what, request) in cases {
        let mut plain = gw.plain();
        let response = plain.request(&crlf(request)).unwrap();
        assert_eq!(response.status, 400, "{what}");
        assert!(response.closes(), "{what}");
        plain.assert_closed();
    }
}

#[test]
fn a_transfer_coding_other_than_chunked_gets_501_and_the_connection_closes() {
    let gw = forwarding();
    let mut plain = gw.plain();
    let response = plain
        .request(&crlf(
            "POST /anything HTTP/1.1\nHost: a\nTransfer-Encoding: gzip, chunked\n\n0\n\n",
        ))
        .unwrap();
    assert_eq!(response.status, 501);
    plain.assert_closed();
}

#[test]
fn connection_close_from_the_client_is_honoured() {
    let gw = forwarding();
    let mut http = gw.tls();
    let response = http
        .request(&crlf(
            "GET /get HTTP/1.1\nHost: example.com\nConnection: close\n\n",
        ))
        .unwrap();
    assert_eq!(response.status, 200);
    assert!(response.closes());
    http.assert_closed();
}

/// Requests after which the connection closes, and the text each response ends with.
const LAST_REQUESTS: [(&str, &str); 4] = [
    (
        "GET /length HTTP/1.1\nHost: example.com\nConnection: close\n\n",
        "exactly this",
    ),
    (
        "GET /chunked HTTP/1.1\nHost: example.com\nConnection: close\n\n",
        "0\r\n\r\n",
    ),
    // HTTP/1.0: the chunked response is de-chunked, and the connection closes after it.
    (
        "GET /chunked HTTP/1.0\nHost: example.com\n\n",
        "hello, world",
    ),
    (
        "GET /close-delimited HTTP/1.1\nHost: example.com\n\n",
        "until the backend closes",
    ),
];

/// The close_notify leaves in the same write as the last response: the response must still
/// arrive whole, whatever its framing, and the stream end cleanly after it.
#[test]
fn a_last_response_arrives_whole_and_is_followed_by_close_notify() {
    let gw = forwarding();
    for (request, _) in LAST_REQUESTS {
        let mut http = gw.tls();
        let response = http.request(&crlf(request)).unwrap();
        assert_eq!(response.status, 200, "{request}");
        assert!(!response.body.is_empty(), "{request}");
        http.assert_closed_cleanly();
    }
}

/// The same with a real OpenSSL client, which stops reading at close_notify: every byte of
/// the last response must come before it.
#[test]
fn openssl_gets_the_whole_last_response_before_close_notify() {
    let gw = forwarding();
    for (request, response_end) in LAST_REQUESTS {
        let mut openssl = Command::new("timeout")
            .arg(PATIENCE.as_secs().to_string())
            .args([
                "openssl",
                "s_client",
                "-quiet",
                "-servername",
                "example.com",
            ])
            .args(["-connect", &format!("127.0.0.1:{}", gw.https)])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("openssl");
        // `-quiet` keeps the connection open after stdin ends: only the server closes it.
        let mut stdin = openssl.stdin.take().unwrap();
        stdin.write_all(&crlf(request)).unwrap();
        let output = openssl.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success()
                && stdout.starts_with("HTTP/1.1 200")
                && stdout.ends_with(response_end),
            "{request}: exit {:?}, stdout {stdout:?}, stderr {:?}",
            output.status.code(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn a_large_response_body_is_streamed_whole() {
    let gw = forwarding();
    let mut http = gw.tls();
    let response = http.get("example.com", "/bytes/4000000").unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.body.len(), 4_000_000);
    assert!(response.body.iter().all(|b| *b == b'x'));
    assert_eq!(http.get("example.com", "/get").unwrap().status, 200);
}

/// A burst of concurrent requests, and the same burst again: the second finds the first's
/// backend connections in the shard's pool, however many there were (a fixed cap of 64 made
/// every request beyond it connect anew and close again), and the shard closes them once they
/// sat idle too long to reuse.
#[test]
fn a_burst_of_concurrent_requests_reuses_its_backend_connections_in_the_next_burst() {
    // More than the 64 a fixed cap kept, on the test gateway's one shard.
    const CONCURRENT: usize = 100;
    // The backend answers only once every request of the burst is in, so the burst is truly
    // concurrent: one backend connection per request.
    let burst = Arc::new(Barrier::new(CONCURRENT));
    let connections = Arc::new(Mutex::new(HashSet::new()));
    let backend = {
        let (burst, connections) = (Arc::clone(&burst), Arc::clone(&connections));
        raw_backend(move |_, tcp| {
            connections.lock().unwrap().insert(tcp.peer_addr().unwrap());
            burst.wait();
            match tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok") {
                Ok(()) => After::KeepAlive,
                Err(_) => After::Close,
            }
        })
    };
    let pki = GuidePki::generate(KeyKind::EcdsaP256).unwrap();
    let port = free_port();
    let gateway = Gateway::start(desired(&one_https_port(port, &pki.server, backend)));
    let config = any_server_client_config(None);
    let mut clients: Vec<Http<TlsStream>> = (0..CONCURRENT)
        .map(|_| Http::connect(port, "example.com", &config).unwrap())
        .collect();
    for burst in 1..=2 {
        for client in &mut clients {
            client
                .send(b"GET /burst HTTP/1.1\r\nHost: example.com\r\n\r\n")
                .unwrap();
        }
        for client in &mut clients {
            assert_eq!(client.read_response().unwrap().status, 200);
        }
        assert_eq!(
            connections.lock().unwrap().len(),
            CONCURRENT,
            "backend connections after burst {burst}"
        );
    }
    assert_eq!(
        gateway.metrics().shards[&0].now.idle_backend,
        CONCURRENT as u64
    );
    // Idle past the reuse age (4 s), they are closed at the next sweep (every 4 s).
    wait_until_within(
        "the shard closes its stale backend connections",
        Duration::from_secs(20),
        || gateway.metrics().shards[&0].now.idle_backend == 0,
    );
}

/// A connection counts as handshaking from its accept until its handshake ends, however it
/// ends (the shard's accept loop takes waiting connections in batches only while few are).
#[test]
fn a_connection_counts_as_handshaking_until_its_handshake_ends() {
    let pki = GuidePki::generate(KeyKind::EcdsaP256).unwrap();
    let port = free_port();
    let gateway = Gateway::start(desired(&one_https_port(port, &pki.server, echo())));
    let handshaking = || gateway.metrics().shards[&0].now.handshaking;
    let silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    wait_until("the silent connection is accepted", || handshaking() == 1);
    let mut client = Http::connect(port, "example.com", &any_server_client_config(None)).unwrap();
    assert_eq!(client.get("example.com", "/get").unwrap().status, 200);
    assert_eq!(handshaking(), 1, "the completed handshake no longer counts");
    drop(silent);
    wait_until("the silent connection's handshake ends at its EOF", || {
        handshaking() == 0
    });
}
