//! What the handshake negotiates besides certificates: ALPN (`h2` preferred, then `http/1.1`;
//! clients without ALPN get HTTP/1.1), both TLS versions, and the cipher suite (AES-128-GCM by the
//! server's preference, ChaCha20 for clients that put it first).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;

use portcullis_runtime::pki::{GuidePki, KeyKind};
use rustls::crypto::aws_lc_rs::cipher_suite::{
    TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, TLS13_AES_128_GCM_SHA256,
    TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
};
use rustls::version::{TLS12, TLS13};
use rustls::{AlertDescription, CipherSuite, ClientConfig, ProtocolVersion};
use support::backends::echo;
use support::*;

fn gateway() -> (Gateway, u16, GuidePki) {
    let pki = GuidePki::generate(KeyKind::EcdsaP256).unwrap();
    let port = free_port();
    let docs = one_https_port(port, &pki.server, echo());
    (Gateway::start(desired(&docs)), port, pki)
}

fn with_alpn(protocols: &[&[u8]]) -> Arc<ClientConfig> {
    let mut config = (*any_server_client_config(None)).clone();
    config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

#[test]
fn alpn_prefers_h2_and_serves_http11_to_clients_that_offer_only_that() {
    let (_gw, port, _) = gateway();
    let both = connect(port, "example.com", &with_alpn(&[b"http/1.1", b"h2"])).unwrap();
    assert_eq!(both.conn.alpn_protocol(), Some(&b"h2"[..]));
    let mut http = Http::connect(port, "example.com", &with_alpn(&[b"http/1.1"])).unwrap();
    assert_eq!(http.stream.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(http.get("example.com", "/get").unwrap().status, 200);
}

#[test]
fn a_client_without_alpn_gets_http11() {
    let (_gw, port, _) = gateway();
    let mut http = Http::connect(port, "example.com", &with_alpn(&[])).unwrap();
    assert_eq!(http.stream.conn.alpn_protocol(), None);
    assert_eq!(http.get("example.com", "/get").unwrap().status, 200);
}

#[test]
fn a_client_offering_only_protocols_we_do_not_speak_is_refused_with_no_application_protocol() {
    let (_gw, port, _) = gateway();
    let refused = Http::connect(port, "example.com", &with_alpn(&[b"h3", b"spdy/3.1"]))
        .and_then(|mut http| http.get("example.com", "/get"));
    assert_eq!(
        expect_alert(refused),
        AlertDescription::NoApplicationProtocol
    );
}

#[test]
fn tls13_is_preferred_and_tls12_is_served() {
    let (_gw, port, pki) = gateway();
    let modern = connect(port, "example.com", &any_server_client_config(None)).unwrap();
    assert_eq!(
        modern.conn.protocol_version(),
        Some(ProtocolVersion::TLSv1_3)
    );

    let mut legacy = Http::connect(
        port,
        "example.com",
        &client_config_tls12(&pki.ca.pem.cert, None),
    )
    .unwrap();
    assert_eq!(
        legacy.stream.conn.protocol_version(),
        Some(ProtocolVersion::TLSv1_2)
    );
    assert_eq!(legacy.get("example.com", "/get").unwrap().status, 200);
}

/// The suite a client offering `suites` (in its order) negotiates, after one request through.
fn negotiated(
    port: u16,
    suites: &[rustls::SupportedCipherSuite],
    version: &'static rustls::SupportedProtocolVersion,
) -> CipherSuite {
    let config = any_server_client_offering(suites, &[version]);
    let mut http = Http::connect(port, "example.com", &config).unwrap();
    assert_eq!(http.get("example.com", "/get").unwrap().status, 200);
    http.stream.conn.negotiated_cipher_suite().unwrap().suite()
}

#[test]
fn the_server_prefers_aes128_gcm_over_the_clients_aes256_first() {
    let (_gw, port, _) = gateway();
    // rustls' and OpenSSL's default order.
    let aes256_first = [
        TLS13_AES_256_GCM_SHA384,
        TLS13_AES_128_GCM_SHA256,
        TLS13_CHACHA20_POLY1305_SHA256,
    ];
    assert_eq!(
        negotiated(port, &aes256_first, &TLS13),
        CipherSuite::TLS13_AES_128_GCM_SHA256
    );
    let tls12_aes256_first = [
        TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ];
    assert_eq!(
        negotiated(port, &tls12_aes256_first, &TLS12),
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
    );
    // Whatever the client offers is served when AES-128 is not among it.
    assert_eq!(
        negotiated(port, &[TLS13_AES_256_GCM_SHA384], &TLS13),
        CipherSuite::TLS13_AES_256_GCM_SHA384
    );
}

#[test]
fn a_client_that_puts_chacha20_first_gets_chacha20() {
    let (_gw, port, _) = gateway();
    let chacha_first = [
        TLS13_CHACHA20_POLY1305_SHA256,
        TLS13_AES_128_GCM_SHA256,
        TLS13_AES_256_GCM_SHA384,
    ];
    assert_eq!(
        negotiated(port, &chacha_first, &TLS13),
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
    );
    let tls12_chacha_first = [
        TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ];
    assert_eq!(
        negotiated(port, &tls12_chacha_first, &TLS12),
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
    );
}
