//! Which cipher suite a handshake gets: the server's order of preference, AES-128-GCM first,
//! unless the client puts ChaCha20-Poly1305 first.
//!
//! Gateways run on CPUs with AES instructions, where AES-128-GCM with SHA-256 is the cheapest
//! suite: AES-128 has 10 rounds to AES-256's 14, and SHA-256 has instructions of its own
//! (x86 SHA-NI, ARMv8 SHA2) while SHA-384 does not. Every TLS 1.3 key-schedule step and the
//! transcript hash run in the suite's hash, so a full RSA-2048 mTLS handshake costs the server
//! about 5% less CPU with AES-128-GCM-SHA256 than with the AES-256-GCM-SHA384 that OpenSSL- and
//! rustls-based clients list first (`handshake/server/...` in BENCHMARKS.md). Both are
//! recommended TLS 1.3 suites; Go's crypto/tls and BoringSSL choose the same way.
//!
//! A client that lists ChaCha20-Poly1305 first is saying it has no fast AES (a phone without
//! AES instructions, say); AES-GCM in software would cost it far more than the hash saves us,
//! so such a client keeps its own order.

use rustls::CipherSuite;
use rustls::crypto::{CryptoProvider, aws_lc_rs};

/// The AEAD families of the suites rustls' aws-lc-rs provider implements, in the server's
/// order of preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Family {
    Aes128Gcm,
    Aes256Gcm,
    ChaCha20Poly1305,
}

/// The family of a suite rustls implements; `None` for any other value a client may offer
/// (GREASE, CBC suites, suites of other key exchanges).
fn family(suite: CipherSuite) -> Option<Family> {
    match suite {
        CipherSuite::TLS13_AES_128_GCM_SHA256
        | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        | CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => Some(Family::Aes128Gcm),
        CipherSuite::TLS13_AES_256_GCM_SHA384
        | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
        | CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => Some(Family::Aes256Gcm),
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
        | CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        | CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => {
            Some(Family::ChaCha20Poly1305)
        }
        _ => None,
    }
}

/// rustls' aws-lc-rs provider with its suites in the server's order of preference (used with
/// `ServerConfig::ignore_client_order`).
pub fn server_provider() -> CryptoProvider {
    let mut provider = aws_lc_rs::default_provider();
    // Stable: within a family, TLS 1.3 stays ahead of TLS 1.2 and ECDSA ahead of RSA, as in
    // rustls' own order. (The version is negotiated first, so families never mix versions.)
    provider
        .cipher_suites
        .sort_by_key(|suite| family(suite.suite()).unwrap_or(Family::ChaCha20Poly1305));
    provider
}

/// Whether a ClientHello's suites (in the client's order) put ChaCha20-Poly1305 ahead of
/// every AES-GCM suite, so that the client's order should decide.
pub fn client_prefers_chacha(offered: &[CipherSuite]) -> bool {
    offered.iter().find_map(|suite| family(*suite)) == Some(Family::ChaCha20Poly1305)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GREASE: CipherSuite = CipherSuite::Unknown(0x0a0a);

    #[test]
    fn the_server_order_is_aes128_then_aes256_then_chacha_for_both_versions() {
        let order: Vec<CipherSuite> = server_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        assert_eq!(
            order,
            [
                CipherSuite::TLS13_AES_128_GCM_SHA256,
                CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
                CipherSuite::TLS13_AES_256_GCM_SHA384,
                CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
                CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
                CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
                CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
            ]
        );
    }

    #[test]
    fn a_client_listing_chacha_first_keeps_its_order() {
        assert!(client_prefers_chacha(&[
            CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
            CipherSuite::TLS13_AES_128_GCM_SHA256,
        ]));
        // GREASE and suites rustls does not implement are skipped, not taken as a preference.
        assert!(client_prefers_chacha(&[
            GREASE,
            CipherSuite::TLS_RSA_WITH_AES_128_CBC_SHA,
            CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
            CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        ]));
    }

    #[test]
    fn a_client_listing_aes_first_gets_the_server_order() {
        assert!(!client_prefers_chacha(&[
            CipherSuite::TLS13_AES_256_GCM_SHA384,
            CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
            CipherSuite::TLS13_AES_128_GCM_SHA256,
        ]));
        assert!(!client_prefers_chacha(&[
            GREASE,
            CipherSuite::TLS13_AES_128_GCM_SHA256
        ]));
        assert!(!client_prefers_chacha(&[]));
        assert!(!client_prefers_chacha(&[GREASE]));
    }
}
