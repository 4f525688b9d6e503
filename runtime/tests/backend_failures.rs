//! What the client gets when the backend side fails: 502 (nothing answers), 503 (no ready
//! endpoint), 500 (the backendRef resolves to nothing), 504 (no answer in time), a closed
//! connection (the backend died mid-response); and weighted backendRefs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use portcullis_runtime::limits::Limits;
use portcullis_runtime::pki::{GuidePki, KeyKind};
use support::backends::{
    After, dead_endpoint, named_backend, named_backend_on, raw_backend, silent_backend,
};
use support::*;

/// How long the gateway waits for a backend's response head in the 504 test: short, so the
/// test is quick (the test checks the status, not the time).
const SHORT_RESPONSE_TIMEOUT: Duration = Duration::from_millis(300);

/// One HTTPS port, no client validation, one route (all hosts) whose single rule is `rule`,
/// with `extra` documents (Services).
fn gateway_with(rule: &str, extra: Vec<String>, limits: Limits) -> (Gateway, u16) {
    let pki = GuidePki::generate(KeyKind::EcdsaP256).unwrap();
    let port = free_port();
    let mut docs = vec![
        GatewayYaml::new()
            .listener(https("https", port, "server-cert"))
            .yaml(),
        route("all", &[], rule),
        server_secret("server-cert", &pki.server),
    ];
    docs.extend(extra);
    (Gateway::start_with_limits(desired(&docs), limits), port)
}

fn service_at(backend: SocketAddr) -> (Gateway, u16) {
    gateway_with(
        &rule_to("backend"),
        vec![service("backend", backend)],
        Limits::default(),
    )
}

fn client(port: u16) -> Http<TlsStream> {
    Http::connect(port, "example.com", &any_server_client_config(None)).unwrap()
}

#[test]
fn a_backend_nobody_listens_on_gets_502() {
    let (_gw, port) = service_at(dead_endpoint());
    let response = client(port).get("example.com", "/").unwrap();
    assert_eq!(response.status, 502);
}

#[test]
fn a_service_without_ready_endpoints_gets_503() {
    let (_gw, port) = gateway_with(
        &rule_to("backend"),
        vec![service_not_ready("backend", named_backend("never used"))],
        Limits::default(),
    );
    let mut http = client(port);
    let response = http.get("example.com", "/").unwrap();
    assert_eq!(response.status, 503);
    // Nothing was read from the client beyond the head: the connection stays usable.
    assert_eq!(http.get("example.com", "/").unwrap().status, 503);
}

#[test]
fn a_backend_ref_to_a_missing_service_gets_500() {
    let (_gw, port) = gateway_with(&rule_to("no-such-service"), vec![], Limits::default());
    let response = client(port).get("example.com", "/").unwrap();
    assert_eq!(response.status, 500);
}

#[test]
fn a_backend_that_never_answers_gets_504() {
    let limits = Limits {
        backend_response_timeout: SHORT_RESPONSE_TIMEOUT,
        ..Limits::default()
    };
    let (_gw, port) = gateway_with(
        &rule_to("backend"),
        vec![service("backend", silent_backend())],
        limits,
    );
    let response = client(port).get("example.com", "/").unwrap();
    assert_eq!(response.status, 504);
}

#[test]
fn a_backend_that_dies_mid_response_closes_the_client_connection() {
    let truncating = raw_backend(|_, tcp| {
        let _ = tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nonly the start");
        After::Close
    });
    let (_gw, port) = service_at(truncating);
    let mut http = client(port);
    let err = http.get("example.com", "/").unwrap_err();
    // The client learns the body is short when the connection ends (not by a timeout).
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{err}");
}

#[test]
fn a_chunked_response_cut_short_closes_the_client_connection() {
    let truncating = raw_backend(|_, tcp| {
        let _ =
            tcp.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n");
        After::Close
    });
    let (_gw, port) = service_at(truncating);
    let err = client(port).get("example.com", "/").unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{err}");
}

#[test]
fn a_malformed_response_head_gets_502() {
    let garbage = raw_backend(|_, tcp| {
        let _ = tcp.write_all(b"NOT HTTP AT ALL\r\n\r\n");
        After::Close
    });
    let (_gw, port) = service_at(garbage);
    let response = client(port).get("example.com", "/").unwrap();
    assert_eq!(response.status, 502);
}

#[test]
fn weighted_backend_refs_split_requests_by_weight() {
    let (_gw, port) = gateway_with(
        &rule_with_matches("", &[("heavy", 3), ("light", 1)]),
        vec![
            service("heavy", named_backend("heavy")),
            service("light", named_backend("light")),
        ],
        Limits::default(),
    );
    let mut http = client(port);
    let mut answers = Vec::new();
    for _ in 0..8 {
        let response = http.get("example.com", "/").unwrap();
        assert_eq!(response.status, 200);
        answers.push(response.body_text());
    }
    let heavy = answers.iter().filter(|a| *a == "heavy").count();
    let light = answers.iter().filter(|a| *a == "light").count();
    // One shard, smooth weighted round-robin: exactly 3:1, interleaved.
    assert_eq!((heavy, light), (6, 2), "{answers:?}");
}

#[test]
fn a_zero_weight_backend_gets_nothing() {
    let (_gw, port) = gateway_with(
        &rule_with_matches("", &[("live", 1), ("drained", 0)]),
        vec![
            service("live", named_backend("live")),
            service("drained", named_backend("drained")),
        ],
        Limits::default(),
    );
    let mut http = client(port);
    for _ in 0..4 {
        assert_eq!(http.get("example.com", "/").unwrap().body_text(), "live");
    }
}

#[test]
fn a_dead_endpoint_is_retried_on_the_next_ready_one() {
    // Two endpoints of one Service: 127.0.0.1 (nothing listening) and 127.0.0.2 (alive), on
    // the same port number, as EndpointSlices list them.
    let port_number = free_port();
    let backend = named_backend_on(SocketAddr::from(([127, 0, 0, 2], port_number)), "alive");
    let two_endpoints = service("backend", backend).replace(
        "- addresses: [\"127.0.0.2\"]",
        "- addresses: [\"127.0.0.1\", \"127.0.0.2\"]",
    );
    let (_gw, port) = gateway_with(&rule_to("backend"), vec![two_endpoints], Limits::default());
    let mut http = client(port);
    for _ in 0..4 {
        let response = http.get("example.com", "/").unwrap();
        assert_eq!(
            (response.status, response.body_text().as_str()),
            (200, "alive")
        );
    }
}

/// A backend that answers one request per connection and then closes it, without saying
/// `Connection: close` (as a backend whose keep-alive timeout just expired does). Each close
/// is reported on `closed` once the socket is shut.
fn closes_after_each_response() -> (SocketAddr, std::sync::mpsc::Receiver<()>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let addr = raw_backend(move |request, tcp| {
        let body = format!("{} bytes", request.body.len());
        let _ = write!(
            tcp,
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let _ = tcp.shutdown(std::net::Shutdown::Both);
        let _ = tx.lock().unwrap().send(());
        After::Close
    });
    (addr, rx)
}

#[test]
fn a_request_without_body_is_retried_once_when_its_pooled_connection_turns_out_closed() {
    let (backend, closed) = closes_after_each_response();
    let (_gw, port) = service_at(backend);
    let mut http = client(port);
    for path in ["/first", "/second", "/third"] {
        let response = http.get("example.com", path).unwrap();
        assert_eq!(response.status, 200, "{path}: {}", response.body_text());
        closed.recv_timeout(PATIENCE).unwrap();
    }
}

#[test]
fn a_pooled_connection_the_backend_closed_meanwhile_is_not_used_for_a_request_with_a_body() {
    let (backend, closed) = closes_after_each_response();
    let (_gw, port) = service_at(backend);
    let mut http = client(port);
    for request in [
        "GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n\r\nhello",
        "POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    ] {
        assert_eq!(
            http.request(request.as_bytes()).unwrap().status,
            200,
            "{request:?}"
        );
        closed.recv_timeout(PATIENCE).unwrap();
    }
}
