//! ClientHellos as current clients send them: larger than one 4 KiB step of rustls' acceptor
//! (post-quantum key shares, resumption tickets that carry a client chain, long ALPN lists),
//! sent in one write or split over many, reach a complete handshake on real sockets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use portcullis_runtime::pki::{GuidePki, KeyKind};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, HandshakeKind, NamedGroup, StreamOwned};
use support::backends::echo;
use support::*;

/// A pause between the pieces of a split ClientHello, so that they arrive in separate reads.
const PIECE_PAUSE: Duration = Duration::from_millis(2);

struct Fixture {
    pki: GuidePki,
    port: u16,
    _gateway: Gateway,
}

/// One HTTPS port that requires a valid client certificate (AllowValidOnly on the guide's CA).
fn fixture() -> Fixture {
    let pki = GuidePki::generate(KeyKind::EcdsaP256).unwrap();
    let port = free_port();
    let docs = vec![
        GatewayYaml::new()
            .default_validation(valid_only(&["ca"]))
            .listener(https("https", port, "server-cert"))
            .yaml(),
        route("all", &[], &rule_to("echo")),
        server_secret("server-cert", &pki.server),
        ca_config_map("ca", &pki.ca.pem.cert),
        service("echo", echo()),
    ];
    let gateway = Gateway::start(desired(&docs));
    Fixture {
        pki,
        port,
        _gateway: gateway,
    }
}

/// The client's config with filler ALPN names ahead of `http/1.1` (which the server picks),
/// growing its ClientHello by about `bytes`.
fn padded(config: &Arc<ClientConfig>, bytes: usize) -> Arc<ClientConfig> {
    let mut config = (**config).clone();
    config.alpn_protocols = (0..bytes / 201)
        .map(|i| format!("x-filler-{i:03}-{}", "p".repeat(186)).into_bytes())
        .chain([b"http/1.1".to_vec()])
        .collect();
    Arc::new(config)
}

/// Connects, sends the first flight in pieces of `piece` bytes (all at once for `None`),
/// finishes the handshake. Returns the stream and the first flight's size.
fn connect_with_hello_in_pieces(
    port: u16,
    config: &Arc<ClientConfig>,
    piece: Option<usize>,
) -> (TlsStream, usize) {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    tcp.set_nodelay(true).unwrap();
    let name = ServerName::try_from("example.com").unwrap();
    let mut conn = ClientConnection::new(Arc::clone(config), name).unwrap();
    let mut flight = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut flight).unwrap();
    }
    match piece {
        None => tcp.write_all(&flight).unwrap(),
        Some(n) => {
            for chunk in flight.chunks(n) {
                tcp.write_all(chunk).unwrap();
                std::thread::sleep(PIECE_PAUSE);
            }
        }
    }
    let mut stream = StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .unwrap_or_else(|e| panic!("handshake with a {}-byte hello: {e}", flight.len()));
    }
    (stream, flight.len())
}

#[test]
fn client_hellos_of_4_to_16_kib_are_answered_whole_or_in_pieces() {
    let f = fixture();
    let base = client_config(&f.pki.ca.pem.cert, Some(&f.pki.client));
    for extra in [2_500, 4_000, 8_000, 12_000, 15_000] {
        let config = padded(&base, extra);
        for piece in [None, Some(1_000), Some(97)] {
            let (stream, sent) = connect_with_hello_in_pieces(f.port, &config, piece);
            let response = Http::new(stream).get("example.com", "/get").unwrap();
            assert_eq!(response.status, 200, "hello of {sent} bytes in {piece:?}");
            assert!(sent > extra, "the hello carried the padding ({sent} bytes)");
        }
    }
}

#[test]
fn post_quantum_key_exchange_with_a_client_certificate_resumes() {
    let f = fixture();
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider
        .kx_groups
        .retain(|group| group.name() == NamedGroup::X25519MLKEM768);
    assert_eq!(provider.kx_groups.len(), 1, "rustls offers X25519MLKEM768");
    let config = client_config_with_provider(provider, &f.pki.ca.pem.cert, Some(&f.pki.client));
    let mut kinds = Vec::new();
    for _ in 0..3 {
        let mut http = Http::connect(f.port, "example.com", &config).unwrap();
        let response = http.get("example.com", "/get").unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(
            http.stream
                .conn
                .negotiated_key_exchange_group()
                .map(|g| g.name()),
            Some(NamedGroup::X25519MLKEM768)
        );
        kinds.push(http.stream.conn.handshake_kind());
    }
    assert_eq!(kinds[0], Some(HandshakeKind::Full));
    assert!(
        kinds[1..].contains(&Some(HandshakeKind::Resumed)),
        "later connections resume: {kinds:?}"
    );
}
