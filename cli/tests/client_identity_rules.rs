//! Spec §7 on real sockets: the listener options that narrow which verified clients a
//! listener admits, by subject alt name or by certificate hash. They run after chain
//! verification: a mismatch fails the handshake in `AllowValidOnly` and only withholds the
//! identity in `AllowInsecureFallback`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::fmt::Write as _;
use std::sync::Arc;

use portcullis_core::client_identity::sha256;
use portcullis_runtime::pki::{CertKeyPem, GuidePki, KeyKind};
use rustls::{AlertDescription, ClientConfig};
use support::backends::echo;
use support::*;

struct Fixture {
    pki: GuidePki,
    /// Carries the SAN the rules ask for.
    alice: CertKeyPem,
    /// Chains to the same CA, with another SAN.
    bob: CertKeyPem,
    _gateway: Gateway,
    /// AllowValidOnly, `verify-subject-alt-names: alice.clients.example`.
    by_san: u16,
    /// AllowValidOnly, `agentgateway.dev/verify-certificate-hash` of alice's certificate.
    by_hash: u16,
    /// AllowInsecureFallback, `verify-subject-alt-names: alice.clients.example`.
    fallback_by_san: u16,
}

/// SHA-256 of the certificate's DER as `openssl x509 -noout -fingerprint -sha256` prints it.
fn openssl_fingerprint(cert: &CertKeyPem) -> String {
    let hash = sha256(der_of(&cert.cert).as_ref());
    let mut out = String::new();
    for (i, b) in hash.0.iter().enumerate() {
        let sep = if i == 0 { "" } else { ":" };
        let _ = write!(out, "{sep}{b:02X}");
    }
    out
}

fn fixture() -> Fixture {
    let pki = GuidePki::generate(KeyKind::EcdsaP256).unwrap();
    let alice = pki.ca.issue("alice", &["alice.clients.example"]).unwrap();
    let bob = pki.ca.issue("bob", &["bob.clients.example"]).unwrap();
    let (by_san, by_hash, fallback_by_san) = (free_port(), free_port(), free_port());
    let san_rule = (
        "portcullis.dev/verify-subject-alt-names",
        "alice.clients.example",
    );
    let docs = vec![
        GatewayYaml::new()
            .default_validation(valid_only(&["ca"]))
            .per_port(fallback_by_san, insecure_fallback(&["ca"]))
            .listener(https("by-san", by_san, "server-cert").option(san_rule.0, san_rule.1))
            .listener(https("by-hash", by_hash, "server-cert").option(
                "agentgateway.dev/verify-certificate-hash",
                &openssl_fingerprint(&alice),
            ))
            .listener(
                https("fallback-by-san", fallback_by_san, "server-cert")
                    .option(san_rule.0, san_rule.1),
            )
            .yaml(),
        route("echo", &["example.com"], &rule_to("echo")),
        server_secret("server-cert", &pki.server),
        ca_config_map("ca", &pki.ca.pem.cert),
        service("echo", echo()),
    ];
    Fixture {
        _gateway: Gateway::start(desired(&docs)),
        pki,
        alice,
        bob,
        by_san,
        by_hash,
        fallback_by_san,
    }
}

impl Fixture {
    fn as_client(&self, cert: Option<&CertKeyPem>) -> Arc<ClientConfig> {
        client_config(&self.pki.ca.pem.cert, cert)
    }

    fn get(&self, port: u16, cert: Option<&CertKeyPem>) -> std::io::Result<Response> {
        https_get(
            port,
            "example.com",
            "example.com",
            "/get",
            &self.as_client(cert),
        )
    }
}

#[test]
fn a_subject_alt_name_rule_admits_only_clients_carrying_that_name() {
    let f = fixture();
    let ok = f.get(f.by_san, Some(&f.alice)).unwrap();
    assert_eq!(ok.status, 200);
    let xfcc = ok.echoed_header("x-forwarded-client-cert").unwrap();
    assert!(xfcc.contains("alice.clients.example"), "{xfcc}");

    let refused = f.get(f.by_san, Some(&f.bob));
    assert_eq!(expect_alert(refused), AlertDescription::CertificateUnknown);
    let refused = f.get(f.by_san, Some(&f.pki.client));
    assert_eq!(expect_alert(refused), AlertDescription::CertificateUnknown);
    let refused = f.get(f.by_san, None);
    assert_eq!(expect_alert(refused), AlertDescription::CertificateRequired);
}

#[test]
fn a_certificate_hash_rule_written_as_openssl_prints_it_admits_only_that_certificate() {
    let f = fixture();
    assert_eq!(f.get(f.by_hash, Some(&f.alice)).unwrap().status, 200);
    let refused = f.get(f.by_hash, Some(&f.bob));
    assert_eq!(expect_alert(refused), AlertDescription::CertificateUnknown);
}

#[test]
fn in_insecure_fallback_a_rule_mismatch_is_served_without_an_identity() {
    let f = fixture();
    let matching = f.get(f.fallback_by_san, Some(&f.alice)).unwrap();
    assert_eq!(matching.status, 200);
    assert!(matching.echoed_header("x-forwarded-client-cert").is_some());

    for (who, cert) in [("bob", Some(&f.bob)), ("anonymous", None)] {
        let served = f.get(f.fallback_by_san, cert).unwrap();
        assert_eq!(served.status, 200, "{who}");
        assert_eq!(
            served.echoed_header("x-forwarded-client-cert"),
            None,
            "{who}'s certificate does not pass the rule"
        );
    }
}
