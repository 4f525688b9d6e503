//! HTTP/2 with prior knowledge (h2c, RFC 9113 §3.3) on a plain HTTP listener, on real
//! sockets: curl (`--http2-prior-knowledge`) for one request, the `h2` crate's client for many
//! multiplexed on one connection, a raw client whose preface arrives byte by byte, and HTTP/1.1 clients on the
//! same port, including one whose first bytes look like the preface and then differ.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use portcullis_runtime::limits::Limits;
use portcullis_runtime::metrics::RequestProtocol;
use portcullis_runtime::shard::DriverChoice;
use support::backends::echo;
use support::*;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Between the pieces a client sends, so that the gateway reads them one at a time.
const PIECE_PAUSE: Duration = Duration::from_millis(20);

/// A gateway with one plain HTTP listener routing everything to the echo backend.
struct Fixture {
    port: u16,
    gateway: Gateway,
}

fn fixture() -> Fixture {
    fixture_on(DriverChoice::Auto)
}

fn fixture_on(driver: DriverChoice) -> Fixture {
    let port = free_port();
    let docs = vec![
        GatewayYaml::new().listener(http("plain", port)).yaml(),
        route("echo", &[], &rule_to("echo")),
        service("echo", echo()),
    ];
    Fixture {
        port,
        gateway: Gateway::start_with(desired(&docs), 1, driver, Limits::default()),
    }
}

impl Fixture {
    fn url(&self, path: &str) -> String {
        format!("http://example.com:{}{path}", self.port)
    }

    /// `curl --http2-prior-knowledge` with `args`, names resolving to 127.0.0.1; its stdout.
    fn curl(&self, args: &[&str]) -> String {
        let out = Command::new("curl")
            .args(["-sS", "--http2-prior-knowledge", "--max-time", "30"])
            .args(["--resolve", &format!("example.com:{}:127.0.0.1", self.port)])
            .args(args)
            .output()
            .expect("curl is installed (scripts/install-test-deps)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn accepted(&self) -> u64 {
        self.gateway
            .metrics()
            .shards
            .values()
            .map(|s| s.accepted)
            .sum()
    }

    fn h2_requests(&self) -> u64 {
        self.gateway
            .metrics()
            .requests
            .values()
            .flat_map(|(codes, _)| codes.iter())
            .filter(|((protocol, _), _)| *protocol == RequestProtocol::H2)
            .map(|(_, n)| n)
            .sum()
    }

    fn connect(&self) -> TcpStream {
        let tcp = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        tcp.set_nodelay(true).unwrap();
        tcp.set_read_timeout(Some(PATIENCE)).unwrap();
        tcp
    }
}

#[test]
fn curl_with_prior_knowledge_gets_the_backends_answer_over_h2() {
    let f = fixture();
    let out = f.curl(&[
        "-w",
        "\n%{http_code} %{http_version}",
        "-H",
        "x-forwarded-proto: https",
        &f.url("/get"),
    ]);
    let (body, trailer) = out.rsplit_once('\n').unwrap();
    assert_eq!(trailer, "200 2", "{out}");
    let echoed: serde_json::Value = serde_json::from_str(body).unwrap();
    let headers = echoed["headers"].as_object().unwrap();
    let proto: Vec<&str> = headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("x-forwarded-proto"))
        .map(|(_, v)| v.as_str().unwrap())
        .collect();
    assert_eq!(proto, ["http"], "the client's own value is replaced");
    assert_eq!(f.h2_requests(), 1);
}

#[test]
fn many_prior_knowledge_streams_share_one_connection() {
    // The `h2` crate as the client (curl 7.88 fails its own parallel transfers over prior
    // knowledge): every request on one connection, all in flight at once.
    const STREAMS: u16 = 100;
    let f = fixture();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut statuses: Vec<u16> = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", f.port))
            .await
            .unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(connection);
        let mut client = client.ready().await.unwrap();
        let mut responses = Vec::new();
        for i in 0..STREAMS {
            let request = http::Request::get(f.url(&format!("/status/{}", 200 + i % 3)))
                .body(())
                .unwrap();
            let (response, _) = client.send_request(request, true).unwrap();
            responses.push(response);
            client = client.ready().await.unwrap();
        }
        let mut statuses = Vec::new();
        for response in responses {
            statuses.push(response.await.unwrap().status().as_u16());
        }
        statuses
    });
    assert_eq!(statuses.len(), usize::from(STREAMS));
    statuses.sort_unstable();
    statuses.dedup();
    assert_eq!(statuses, [200, 201, 202]);
    assert_eq!(f.h2_requests(), u64::from(STREAMS));
    assert_eq!(f.accepted(), 1, "one connection carried them all");
}

/// Writes one HTTP/2 frame.
fn frame(tcp: &mut TcpStream, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    tcp.write_all(&out).unwrap();
}

/// A literal header field without indexing, new name, no Huffman (RFC 7541 §6.2.2); names
/// and values shorter than 127 bytes.
fn literal(block: &mut Vec<u8>, name: &str, value: &str) {
    block.push(0x00);
    block.push(u8::try_from(name.len()).unwrap());
    block.extend_from_slice(name.as_bytes());
    block.push(u8::try_from(value.len()).unwrap());
    block.extend_from_slice(value.as_bytes());
}

#[test]
fn a_preface_that_arrives_byte_by_byte_still_starts_http2() {
    const SETTINGS: u8 = 0x4;
    const HEADERS: u8 = 0x1;
    const DATA: u8 = 0x0;
    const END_STREAM: u8 = 0x1;
    const END_HEADERS: u8 = 0x4;
    /// HPACK's static-table `:status: 200` (RFC 7541 Appendix A, index 8).
    const STATUS_200: u8 = 0x88;

    let f = fixture();
    let mut tcp = f.connect();
    for byte in PREFACE {
        tcp.write_all(std::slice::from_ref(byte)).unwrap();
        std::thread::sleep(PIECE_PAUSE);
    }
    frame(&mut tcp, SETTINGS, 0, 0, &[]);
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/get"),
        (":authority", "example.com"),
    ] {
        literal(&mut block, name, value);
    }
    frame(&mut tcp, HEADERS, END_STREAM | END_HEADERS, 1, &block);

    let mut received = Vec::new();
    let mut status = None;
    let mut body = Vec::new();
    loop {
        if received.len() >= 9 {
            let len = usize::from(received[0]) << 16
                | usize::from(received[1]) << 8
                | usize::from(received[2]);
            if received.len() >= 9 + len {
                let head: Vec<u8> = received.drain(..9).collect();
                let payload: Vec<u8> = received.drain(..len).collect();
                let (kind, flags) = (head[3], head[4]);
                let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]);
                if kind == SETTINGS && flags & 0x1 == 0 {
                    frame(&mut tcp, SETTINGS, 0x1, 0, &[]);
                }
                if stream == 1 && kind == HEADERS {
                    status = payload.first().copied();
                }
                if stream == 1 && kind == DATA {
                    body.extend_from_slice(&payload);
                }
                if stream == 1 && flags & END_STREAM != 0 {
                    break;
                }
                continue;
            }
        }
        let mut chunk = [0u8; 16 * 1024];
        let n = tcp.read(&mut chunk).unwrap();
        assert!(
            n > 0,
            "closed early; received {:?}",
            String::from_utf8_lossy(&received)
        );
        assert!(
            !received.starts_with(b"HTTP/1.1"),
            "answered as HTTP/1.1: {:?}",
            String::from_utf8_lossy(&received)
        );
        received.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(status, Some(STATUS_200));
    let echoed: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(echoed["headers"].is_object(), "{echoed}");
}

#[test]
fn http1_whose_first_bytes_look_like_the_preface_is_still_http1_and_keeps_the_connection() {
    let f = fixture();
    let mut client = Http::new(f.connect());
    // "PRI" as the preface starts, in pieces, then a different method: not HTTP/2.
    for piece in [
        &b"P"[..],
        b"RI",
        b"X /get HTTP/1.1\r\nHost: example.com\r\n\r\n",
    ] {
        client.send(piece).unwrap();
        std::thread::sleep(PIECE_PAUSE);
    }
    let first = client.read_response().unwrap();
    assert_eq!(first.status, 200, "{}", first.body_text());
    assert_eq!(
        first.json()["method"],
        "PRIX",
        "no byte read while sniffing is lost"
    );
    assert!(!first.closes());
    // Keep-alive: a second request on the same connection.
    let second = client.get("example.com", "/status/201").unwrap();
    assert_eq!(second.status, 201);
    // A request line that matches the preface up to the version.
    let mut asterisk = Http::new(f.connect());
    let refused = asterisk
        .request(b"PRI * HTTP/1.1\r\nHost: example.com\r\n\r\n")
        .unwrap();
    assert_eq!(refused.status, 400);
}

#[test]
fn http1_keep_alive_on_the_same_port_still_works() {
    let f = fixture();
    let mut client = Http::new(f.connect());
    for path in ["/get", "/status/202", "/get"] {
        let response = client.get("example.com", path).unwrap();
        assert!(matches!(response.status, 200 | 202), "{}", response.status);
        assert!(!response.closes());
    }
    assert_eq!(f.accepted(), 1);
}

#[test]
fn the_epoll_driver_serves_prior_knowledge_and_http1_on_one_plain_port() {
    let f = fixture_on(DriverChoice::Epoll);
    let out = f.curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{http_version}",
        &f.url("/get"),
    ]);
    assert_eq!(out, "200 2");
    let mut client = Http::new(f.connect());
    assert_eq!(client.get("example.com", "/get").unwrap().status, 200);
}
