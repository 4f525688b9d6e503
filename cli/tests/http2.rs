//! HTTP/2 to clients on real sockets: curl (`--http2`, with the client certificate) for what
//! users do, and a small frame writer for what attackers do (rapid reset, too many streams,
//! oversized headers, CONTINUATION floods).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{self, Read, Write};
use std::process::Command;
use std::sync::Arc;

use portcullis_runtime::metrics::RequestProtocol;
use portcullis_runtime::pki::{GuidePki, KeyKind};
use rustls::ClientConfig;
use support::backends::echo;
use support::*;

/// A gateway on one HTTPS port that requires a certificate from the guide's CA, with two
/// listeners that share the server certificate (`*.example.com`): `strict.example.com` and
/// `open.example.com`. Both route to the echo backend.
struct Fixture {
    pki: GuidePki,
    port: u16,
    dir: tempfile::TempDir,
    gateway: Gateway,
}

fn fixture() -> Fixture {
    fixture_with(echo())
}

fn fixture_with(backend: std::net::SocketAddr) -> Fixture {
    let pki = GuidePki::generate(KeyKind::EcdsaP256).unwrap();
    let port = free_port();
    let docs = vec![
        GatewayYaml::new()
            .per_port(port, valid_only(&["ca"]))
            .listener(https("strict", port, "server-cert").hostname("strict.example.com"))
            .listener(https("open", port, "server-cert").hostname("open.example.com"))
            .yaml(),
        route("echo", &[], &rule_to("echo")),
        server_secret("server-cert", &pki.server),
        ca_config_map("ca", &pki.ca.pem.cert),
        service("echo", backend),
    ];
    let gateway = Gateway::start(desired(&docs));
    let dir = tempfile::tempdir().unwrap();
    for (name, pem) in [
        ("ca.pem", &pki.ca.pem.cert),
        ("client.pem", &pki.client.cert),
        ("client.key", &pki.client.key),
    ] {
        std::fs::write(dir.path().join(name), pem).unwrap();
    }
    Fixture {
        pki,
        port,
        dir,
        gateway,
    }
}

/// What curl reports for one URL: status, HTTP version, body.
struct CurlResult {
    status: u16,
    http_version: String,
    body: String,
}

/// `curl --http2` on the fixture's port (names resolve to 127.0.0.1), presenting the client
/// certificate when `with_cert`; `None` when curl fails (a TLS failure, say).
fn curl(f: &Fixture, url: &str, with_cert: bool, extra: &[&str]) -> Option<CurlResult> {
    let dir = f.dir.path();
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--http2", "--max-time", "20"])
        .arg("--cacert")
        .arg(dir.join("ca.pem"));
    for host in ["strict.example.com", "open.example.com"] {
        cmd.args(["--resolve", &format!("{host}:{}:127.0.0.1", f.port)]);
    }
    if with_cert {
        cmd.arg("--cert").arg(dir.join("client.pem"));
        cmd.arg("--key").arg(dir.join("client.key"));
    }
    let marker = "\n--curl-write-out--";
    cmd.args(["-w", &format!("{marker}%{{http_code}} %{{http_version}}")]);
    cmd.args(extra).arg(url);
    let out = cmd
        .output()
        .expect("curl is installed (scripts/install-test-deps)");
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, trailer) = text.rsplit_once(marker).unwrap();
    let (status, version) = trailer.split_once(' ').unwrap();
    Some(CurlResult {
        status: status.parse().unwrap(),
        http_version: version.to_owned(),
        body: body.to_owned(),
    })
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn url(f: &Fixture, host: &str, path: &str) -> String {
    format!("https://{host}:{}{path}", f.port)
}

#[test]
fn curl_speaks_h2_with_a_client_certificate_and_the_backend_sees_only_our_identity() {
    let f = fixture();
    let result = curl(
        &f,
        &url(&f, "strict.example.com", "/get"),
        true,
        &[
            "-H",
            "x-forwarded-client-cert: Hash=spoofed",
            "-H",
            "client-cert: :c3Bvb2Y=:",
        ],
    )
    .unwrap();
    assert_eq!((result.status, result.http_version.as_str()), (200, "2"));
    let echoed = json(&result.body);
    let headers = echoed["headers"].as_object().unwrap();
    let xfcc: Vec<&str> = headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("x-forwarded-client-cert"))
        .map(|(_, v)| v.as_str().unwrap())
        .collect();
    assert_eq!(xfcc.len(), 1, "{headers:?}");
    assert!(xfcc[0].contains("client.example.com"), "{}", xfcc[0]);
    assert!(!xfcc[0].contains("spoofed"));
    assert!(
        !headers
            .keys()
            .any(|n| n.eq_ignore_ascii_case("client-cert"))
    );
}

#[test]
fn cookies_split_over_h2_fields_reach_the_backend_as_one_field() {
    let f = fixture();
    let mut h2 = RawH2::connect(&f);
    assert!(h2.request(1, true, &[("cookie", "a=1"), ("cookie", "b=2")]));
    let mut body = Vec::new();
    loop {
        let frame = h2.next().expect("a response");
        if frame.stream == 1 && frame.kind == FRAME_DATA {
            body.extend_from_slice(&frame.payload);
            if frame.flags & FLAG_END_STREAM != 0 {
                break;
            }
        }
    }
    let echoed = json(&String::from_utf8(body).unwrap());
    let cookie = echoed["headers"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("cookie"))
        .map(|(_, v)| v.as_str().unwrap().to_owned());
    assert_eq!(cookie.as_deref(), Some("a=1; b=2"));
}

#[test]
fn request_bodies_of_any_framing_and_large_responses_cross_h2() {
    let f = fixture();
    let payload = f.dir.path().join("payload.bin");
    std::fs::write(&payload, vec![b'x'; 700_000]).unwrap();
    let data = format!("@{}", payload.display());
    for framing in [&[][..], &["-H", "transfer-encoding: chunked"][..]] {
        let mut args = vec!["--data-binary", data.as_str()];
        args.extend_from_slice(framing);
        let result = curl(&f, &url(&f, "strict.example.com", "/post"), true, &args).unwrap();
        assert_eq!(result.status, 200, "{}", result.body);
        assert_eq!(json(&result.body)["body_bytes"], 700_000);
    }
    let result = curl(
        &f,
        &url(&f, "strict.example.com", "/bytes/3000000"),
        true,
        &[],
    )
    .unwrap();
    assert_eq!(result.status, 200);
    assert_eq!(result.body.len(), 3_000_000);
}

#[test]
fn many_streams_on_one_connection_all_complete() {
    let f = fixture();
    let dir = f.dir.path();
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--http2", "--parallel", "--parallel-max", "64"])
        .args(["--max-time", "60", "-w", "%{http_code} %{http_version}\\n"])
        .arg("--cacert")
        .arg(dir.join("ca.pem"))
        .arg("--cert")
        .arg(dir.join("client.pem"))
        .arg("--key")
        .arg(dir.join("client.key"))
        .args([
            "--resolve",
            &format!("strict.example.com:{}:127.0.0.1", f.port),
        ]);
    for i in 0..200 {
        cmd.args(["-o", "/dev/null"]).arg(url(
            &f,
            "strict.example.com",
            &format!("/status/{}", 200 + i % 5),
        ));
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut statuses: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    statuses.sort();
    statuses.dedup();
    assert_eq!(statuses, ["200 2", "201 2", "202 2", "203 2", "204 2"]);
    let forwarded: u64 = f
        .gateway
        .metrics()
        .requests
        .values()
        .map(|(codes, _)| codes.values().sum::<u64>())
        .sum();
    assert_eq!(forwarded, 200);
    let accepted: u64 = f
        .gateway
        .metrics()
        .shards
        .values()
        .map(|s| s.accepted)
        .sum();
    assert_eq!(accepted, 1, "one connection carried them all");
}

#[test]
fn a_client_without_a_certificate_still_fails_in_the_tls_handshake_over_h2() {
    let f = fixture();
    for host in ["strict.example.com", "open.example.com"] {
        assert!(curl(&f, &url(&f, host, "/get"), false, &[]).is_none());
    }
    // And curl says why: the alert reaches it although it had already sent its preface (a
    // gateway that closed at once would have reset the connection over the alert).
    let out = Command::new("curl")
        .args(["-sS", "--http2", "--max-time", "20", "--cacert"])
        .arg(f.dir.path().join("ca.pem"))
        .args([
            "--resolve",
            &format!("strict.example.com:{}:127.0.0.1", f.port),
            &url(&f, "strict.example.com", "/get"),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(56), "{stderr}");
    assert!(stderr.contains("alert certificate required"), "{stderr}");
}

#[test]
fn a_coalesced_request_for_a_listener_the_connection_did_not_pass_gets_421() {
    let f = fixture();
    // The connection's SNI chose `open`: a request for `strict` on it must not reach strict's
    // routes, whose listener (its certificate, its policy) the connection did not go through.
    let misdirected = curl(
        &f,
        &url(&f, "open.example.com", "/get"),
        true,
        &["-H", "host: strict.example.com"],
    )
    .unwrap();
    assert_eq!(misdirected.status, 421, "{}", misdirected.body);
    // And an unknown name gets 404.
    let unknown = curl(
        &f,
        &url(&f, "open.example.com", "/get"),
        true,
        &["-H", "host: nobody.example.net"],
    )
    .unwrap();
    assert_eq!(unknown.status, 404);
}

// ---------------------------------------------------------------------------------------------
// A raw HTTP/2 client, for the attacks
// ---------------------------------------------------------------------------------------------

const FRAME_DATA: u8 = 0x0;
const FRAME_HEADERS: u8 = 0x1;
const FRAME_RST_STREAM: u8 = 0x3;
const FRAME_SETTINGS: u8 = 0x4;
const FRAME_GOAWAY: u8 = 0x7;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
/// SETTINGS_MAX_FRAME_SIZE's initial value (RFC 9113 §6.5.2).
const MAX_FRAME_BYTES: usize = 16_384;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_ACK: u8 = 0x1;
const CANCEL: u32 = 0x8;
const REFUSED_STREAM: u32 = 0x7;
const ENHANCE_YOUR_CALM: u32 = 0xb;

struct RawH2 {
    tls: TlsStream,
    pending: Vec<u8>,
}

/// A received frame: type, flags, stream, payload.
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl RawH2 {
    fn connect(f: &Fixture) -> RawH2 {
        let mut config: ClientConfig =
            (*client_config(&f.pki.ca.pem.cert, Some(&f.pki.client))).clone();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let tls = connect(f.port, "strict.example.com", &Arc::new(config)).unwrap();
        assert_eq!(tls.conn.alpn_protocol(), Some(&b"h2"[..]));
        let mut h2 = RawH2 {
            tls,
            pending: Vec::new(),
        };
        h2.tls
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .unwrap();
        assert!(h2.frame(FRAME_SETTINGS, 0, 0, &[]));
        h2
    }

    /// Sends a frame; `false` once the server closed the connection.
    fn frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) -> bool {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut out = vec![len[1], len[2], len[3], kind, flags];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        self.tls
            .write_all(&out)
            .and_then(|()| self.tls.flush())
            .is_ok()
    }

    /// HEADERS for `GET /get` (plus `extra` fields), closing the stream when `end_stream`.
    fn request(&mut self, stream: u32, end_stream: bool, extra: &[(&str, &str)]) -> bool {
        let mut block = Vec::new();
        for (name, value) in [
            (":method", if end_stream { "GET" } else { "POST" }),
            (":scheme", "https"),
            (":path", "/get"),
            (":authority", "strict.example.com"),
        ]
        .iter()
        .chain(extra)
        {
            literal(&mut block, name, value);
        }
        // Within the default maximum frame size: the rest in CONTINUATION frames.
        let mut pieces = block.chunks(MAX_FRAME_BYTES).peekable();
        let mut kind = FRAME_HEADERS;
        let mut flags = if end_stream { FLAG_END_STREAM } else { 0 };
        while let Some(piece) = pieces.next() {
            if pieces.peek().is_none() {
                flags |= FLAG_END_HEADERS;
            }
            if !self.frame(kind, flags, stream, piece) {
                return false;
            }
            kind = FRAME_CONTINUATION;
            flags = 0;
        }
        true
    }

    /// The next frame (SETTINGS are acknowledged on the way); `None` at end of stream.
    fn next(&mut self) -> Option<Frame> {
        loop {
            if self.pending.len() >= 9 {
                let len = usize::from(self.pending[0]) << 16
                    | usize::from(self.pending[1]) << 8
                    | usize::from(self.pending[2]);
                if self.pending.len() >= 9 + len {
                    let head: Vec<u8> = self.pending.drain(..9).collect();
                    let payload: Vec<u8> = self.pending.drain(..len).collect();
                    let frame = Frame {
                        kind: head[3],
                        flags: head[4],
                        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]])
                            & 0x7fff_ffff,
                        payload,
                    };
                    if frame.kind == FRAME_SETTINGS && frame.flags & FLAG_ACK == 0 {
                        let _ = self.frame(FRAME_SETTINGS, FLAG_ACK, 0, &[]);
                    }
                    return Some(frame);
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.tls.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.pending.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                    ) =>
                {
                    return None;
                }
                Err(e) if alert_of(&e).is_some() => return None,
                Err(e) => panic!("reading frames: {e}"),
            }
        }
    }

    /// Reads frames until GOAWAY and returns its error code; `None` if the connection ended
    /// without one.
    fn goaway(&mut self) -> Option<u32> {
        while let Some(frame) = self.next() {
            if frame.kind == FRAME_GOAWAY {
                return Some(u32::from_be_bytes(frame.payload[4..8].try_into().unwrap()));
            }
        }
        None
    }
}

/// A literal header field without indexing, new name, no Huffman (RFC 7541 §6.2.2).
fn literal(block: &mut Vec<u8>, name: &str, value: &str) {
    block.push(0x00);
    integer(block, name.len());
    block.extend_from_slice(name.as_bytes());
    integer(block, value.len());
    block.extend_from_slice(value.as_bytes());
}

/// A 7-bit-prefix HPACK integer with the Huffman bit clear.
fn integer(block: &mut Vec<u8>, mut n: usize) {
    if n < 127 {
        block.push(u8::try_from(n).unwrap());
        return;
    }
    block.push(127);
    n -= 127;
    while n >= 128 {
        block.push(u8::try_from(n % 128).unwrap() | 0x80);
        n /= 128;
    }
    block.push(u8::try_from(n).unwrap());
}

fn goaways(gateway: &Gateway, reason: &str) -> u64 {
    gateway
        .metrics()
        .h2_goaways
        .iter()
        .filter(|((direction, r), _)| *direction == "sent" && *r == reason)
        .map(|(_, n)| *n)
        .sum()
}

#[test]
fn rapid_reset_gets_goaway_enhance_your_calm_and_is_counted() {
    let f = fixture();
    let mut h2 = RawH2::connect(&f);
    let mut stream = 1;
    for _ in 0..1000 {
        if !h2.request(stream, true, &[])
            || !h2.frame(FRAME_RST_STREAM, 0, stream, &CANCEL.to_be_bytes())
        {
            break; // closed after its GOAWAY
        }
        stream += 2;
    }
    assert_eq!(h2.goaway(), Some(ENHANCE_YOUR_CALM));
    let counted = goaways(&f.gateway, "rapid_reset") + goaways(&f.gateway, "enhance_your_calm");
    assert!(counted >= 1, "{:?}", f.gateway.metrics().h2_goaways);
    // The gateway is unharmed.
    let ok = curl(&f, &url(&f, "strict.example.com", "/get"), true, &[]).unwrap();
    assert_eq!(ok.status, 200);
}

#[test]
fn a_client_that_cancels_most_of_the_streams_it_opens_gets_goaway() {
    // A backend that counts the requests it got and never answers: each stream stays open
    // until the client cancels it.
    let received = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&received);
    let backend = support::backends::raw_backend(move |_, tcp| {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let _ = tcp.read(&mut [0u8; 1]);
        support::backends::After::Close
    });
    let f = fixture_with(backend);
    let mut h2 = RawH2::connect(&f);
    let mut stream = 1;
    for round in 1..=2 {
        let opened: Vec<u32> = (0..50).map(|i| stream + 2 * i).collect();
        stream += 100;
        for &id in &opened {
            assert!(h2.request(id, false, &[]));
        }
        // Cancelled only once forwarded: each one cost a backend request.
        wait_until("the backend got every request", || {
            received.load(std::sync::atomic::Ordering::SeqCst) == 50 * round
        });
        for &id in &opened {
            assert!(h2.frame(FRAME_RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
        }
    }
    wait_until("the gateway counted 100 cancelled requests", || {
        f.gateway
            .metrics()
            .requests
            .values()
            .map(|(codes, _)| codes.get(&(RequestProtocol::H2, 499)).copied().unwrap_or(0))
            .sum::<u64>()
            == 100
    });
    assert!(h2.request(stream, false, &[]));
    assert_eq!(h2.goaway(), Some(ENHANCE_YOUR_CALM));
    assert_eq!(goaways(&f.gateway, "rapid_reset"), 1);
}

#[test]
fn streams_beyond_the_concurrency_limit_are_refused() {
    let f = fixture();
    let mut h2 = RawH2::connect(&f);
    // POSTs whose bodies never come keep their streams open.
    let streams: Vec<u32> = (0..150).map(|i| 1 + 2 * i).collect();
    for &stream in &streams {
        assert!(h2.request(stream, false, &[]));
    }
    let mut refused = Vec::new();
    while refused.len() < 50 {
        let frame = h2.next().expect("the connection stays up");
        if frame.kind == FRAME_RST_STREAM
            && u32::from_be_bytes(frame.payload[..4].try_into().unwrap()) == REFUSED_STREAM
        {
            refused.push(frame.stream);
        }
    }
    refused.sort_unstable();
    assert_eq!(refused, streams[100..].to_vec(), "the first 100 are served");
}

#[test]
fn an_oversized_header_list_never_reaches_the_backend_and_the_connection_survives() {
    let f = fixture();
    let mut h2 = RawH2::connect(&f);
    let big = "v".repeat(20 * 1024);
    assert!(h2.request(1, true, &[("x-big", &big)]));
    assert!(h2.request(3, true, &[]));
    let mut outcome_1 = None;
    let mut answered_3 = false;
    while outcome_1.is_none() || !answered_3 {
        let frame = h2.next().expect("the connection stays up");
        match (frame.kind, frame.stream) {
            (FRAME_HEADERS, 1) => outcome_1 = Some("response"),
            (FRAME_RST_STREAM, 1) => outcome_1 = Some("reset"),
            (FRAME_HEADERS, 3) => answered_3 = true,
            (FRAME_GOAWAY, _) => panic!("GOAWAY for one oversized stream"),
            _ => {}
        }
    }
    let routed: u64 = f
        .gateway
        .metrics()
        .requests
        .iter()
        .filter(|((_, route), _)| !route.is_empty())
        .map(|(_, (codes, _))| codes.get(&(RequestProtocol::H2, 200)).copied().unwrap_or(0))
        .sum();
    assert_eq!(
        routed, 1,
        "only the small request was forwarded ({outcome_1:?})"
    );
}

#[test]
fn a_continuation_flood_ends_the_connection() {
    let f = fixture();
    let mut h2 = RawH2::connect(&f);
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "GET"),
        (":scheme", "https"),
        (":path", "/get"),
        (":authority", "strict.example.com"),
    ] {
        literal(&mut block, name, value);
    }
    assert!(h2.frame(FRAME_HEADERS, 0, 1, &block));
    let mut filler = Vec::new();
    literal(&mut filler, "x-filler", &"f".repeat(1000));
    let mut goaway = None;
    // Far past the 16 KiB header list limit: the gateway must stop it, not buffer it.
    for _ in 0..300 {
        if !h2.frame(FRAME_CONTINUATION, 0, 1, &filler) {
            break; // closed after its GOAWAY
        }
    }
    while let Some(frame) = h2.next() {
        if frame.kind == FRAME_GOAWAY {
            goaway = Some(frame);
            break;
        }
        assert_ne!(frame.kind, FRAME_DATA, "no response to a flooded request");
    }
    assert!(goaway.is_some(), "GOAWAY before the flood ended");
    let ok = curl(&f, &url(&f, "strict.example.com", "/get"), true, &[]).unwrap();
    assert_eq!(ok.status, 200);
}
