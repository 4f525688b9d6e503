//! The data plane's limits on real sockets: what a client gets when it exceeds one. Each test
//! sets the limit it exercises small (via `Limits`) so it runs quickly; the assertions are on
//! statuses and closed connections, never on durations.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

use portcullis_runtime::limits::Limits;
use portcullis_runtime::pki::{GuidePki, KeyKind};
use support::backends::echo;
use support::*;

/// Short enough to keep the tests quick, long enough that a healthy exchange never hits it.
const SHORT: Duration = Duration::from_millis(300);

/// One HTTPS port without client validation, routing everything to the echo backend.
fn gateway(limits: Limits) -> (Gateway, u16) {
    let pki = GuidePki::generate(KeyKind::EcdsaP256).unwrap();
    let port = free_port();
    let docs = one_https_port(port, &pki.server, echo());
    (Gateway::start_with_limits(desired(&docs), limits), port)
}

fn client(port: u16) -> Http<TlsStream> {
    Http::connect(port, "example.com", &any_server_client_config(None)).unwrap()
}

#[test]
fn a_client_that_never_completes_the_handshake_is_disconnected() {
    let (_gw, port) = gateway(Limits {
        handshake_timeout: SHORT,
        ..Limits::default()
    });
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = [0u8; 64];
    let read = tcp.read(&mut buf);
    assert!(
        matches!(read, Ok(0))
            || read
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "expected the server to close the silent connection, got {read:?}"
    );
}

#[test]
fn a_request_head_that_never_completes_gets_408() {
    let (_gw, port) = gateway(Limits {
        request_head_timeout: SHORT,
        ..Limits::default()
    });
    let mut http = client(port);
    http.send(b"GET /get HTTP/1.1\r\nHost: exam").unwrap();
    let response = http.read_response().unwrap();
    assert_eq!(response.status, 408);
    http.assert_closed();
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    // Longer than SHORT: the first request must arrive within it too, even on a busy machine.
    let (_gw, port) = gateway(Limits {
        idle_timeout: Duration::from_secs(1),
        ..Limits::default()
    });
    let mut http = client(port);
    assert_eq!(http.get("example.com", "/get").unwrap().status, 200);
    http.assert_closed();
}

#[test]
fn too_many_header_fields_get_431() {
    let (_gw, port) = gateway(Limits::default());
    let mut http = client(port);
    let mut request = String::from("GET /get HTTP/1.1\r\nHost: example.com\r\n");
    for i in 0..=portcullis_core::http1::DEFAULT_MAX_HEADERS {
        request.push_str(&format!("x-field-{i}: {i}\r\n"));
    }
    request.push_str("\r\n");
    let response = http.request(request.as_bytes()).unwrap();
    assert_eq!(response.status, 431);
}

#[test]
fn a_small_head_limit_is_honoured() {
    let (_gw, port) = gateway(Limits {
        max_request_head_bytes: 1024,
        ..Limits::default()
    });
    let mut http = client(port);
    let fits = format!(
        "GET /get HTTP/1.1\r\nHost: example.com\r\nx-pad: {}\r\n\r\n",
        "p".repeat(800)
    );
    assert_eq!(http.request(fits.as_bytes()).unwrap().status, 200);
    let too_big = format!(
        "GET /get HTTP/1.1\r\nHost: example.com\r\nx-pad: {}\r\n\r\n",
        "p".repeat(1100)
    );
    assert_eq!(http.request(too_big.as_bytes()).unwrap().status, 431);
}

#[test]
fn connections_beyond_the_per_shard_limit_are_closed_and_room_frees_up() {
    let (_gw, port) = gateway(Limits {
        max_connections_per_shard: 1,
        ..Limits::default()
    });
    let mut first = client(port);
    assert_eq!(first.get("example.com", "/get").unwrap().status, 200);

    let over = Http::connect(port, "example.com", &any_server_client_config(None))
        .and_then(|mut http| http.get("example.com", "/get"));
    assert!(over.is_err(), "a second connection was served: {over:?}");

    drop(first);
    wait_until("a connection is served again", || {
        https_get(
            port,
            "example.com",
            "example.com",
            "/get",
            &any_server_client_config(None),
        )
        .is_ok_and(|r| r.status == 200)
    });
}
