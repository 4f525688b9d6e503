//! Spec §3 on real sockets: every kind of client certificate against both validation modes,
//! and the user guide's two steps.
//!
//! `AllowValidOnly` must refuse at the TLS layer (an alert, never an HTTP response);
//! `AllowInsecureFallback` must route everyone and forward an identity only for a certificate
//! that verifies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use portcullis_core::client_identity::IDENTITY_HEADER_NAMES;
use portcullis_runtime::pki::{Authority, CertKeyPem, GuidePki, KeyKind};
use rcgen::ExtendedKeyUsagePurpose;
use rustls::AlertDescription;
use support::backends::echo;
use support::*;
use time::{Duration, OffsetDateTime};

const CLIENT_NAME: &str = "client.example.com";
const CLIENT_SANS: &[&str] = &["example.com", "*.example.com"];

/// One of each kind of client certificate of the §3 table.
struct Clients {
    pki: GuidePki,
    unknown_ca: CertKeyPem,
    expired: CertKeyPem,
    not_yet_valid: CertKeyPem,
    server_auth_only: CertKeyPem,
}

impl Clients {
    fn generate() -> Clients {
        let pki = GuidePki::generate(KeyKind::EcdsaP256).unwrap();
        // A differently named CA (a same-named twin is in trust_anchors.rs).
        let stranger = Authority::new("Stranger CA", KeyKind::EcdsaP256).unwrap();
        let now = OffsetDateTime::now_utc();
        let unknown_ca = stranger.issue(CLIENT_NAME, CLIENT_SANS).unwrap();
        let expired = pki
            .ca
            .issue_with(CLIENT_NAME, CLIENT_SANS, |p| {
                p.not_before = now - Duration::days(30);
                p.not_after = now - Duration::days(1);
            })
            .unwrap();
        let not_yet_valid = pki
            .ca
            .issue_with(CLIENT_NAME, CLIENT_SANS, |p| {
                p.not_before = now + Duration::days(1);
                p.not_after = now + Duration::days(30);
            })
            .unwrap();
        let server_auth_only = pki
            .ca
            .issue_with(CLIENT_NAME, CLIENT_SANS, |p| {
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            })
            .unwrap();
        Clients {
            pki,
            unknown_ca,
            expired,
            not_yet_valid,
            server_auth_only,
        }
    }

    /// A client config presenting `cert` (or none), trusting the guide's CA for the server.
    fn config(&self, cert: Option<&CertKeyPem>) -> std::sync::Arc<rustls::ClientConfig> {
        client_config(&self.pki.ca.pem.cert, cert)
    }
}

/// A gateway with the guide's CA: `strict` port `AllowValidOnly` (the default), `fallback`
/// port `AllowInsecureFallback` (a perPort entry), both routing example.com to the echo
/// backend.
struct TwoModes {
    _gateway: Gateway,
    strict: u16,
    fallback: u16,
}

fn two_modes(clients: &Clients) -> TwoModes {
    let (strict, fallback) = (free_port(), free_port());
    let docs = vec![
        GatewayYaml::new()
            .default_validation(valid_only(&["ca"]))
            .per_port(fallback, insecure_fallback(&["ca"]))
            .listener(https("strict", strict, "server-cert"))
            .listener(https("fallback", fallback, "server-cert"))
            .yaml(),
        route("echo", &["example.com"], &rule_to("echo")),
        server_secret("server-cert", &clients.pki.server),
        ca_config_map("ca", &clients.pki.ca.pem.cert),
        service("echo", echo()),
    ];
    TwoModes {
        _gateway: Gateway::start(desired(&docs)),
        strict,
        fallback,
    }
}

/// `GET /get` that also tries to smuggle every identity header in.
fn get_with_spoofed_identity(
    port: u16,
    config: &std::sync::Arc<rustls::ClientConfig>,
) -> std::io::Result<Response> {
    let mut request = String::from("GET /get HTTP/1.1\r\nHost: example.com\r\n");
    for name in IDENTITY_HEADER_NAMES {
        request.push_str(&format!("{name}: Hash=spoofed;Subject=\"CN=admin\"\r\n"));
    }
    request.push_str("\r\n");
    Http::connect(port, "example.com", config)?.request(request.as_bytes())
}

#[test]
fn allow_valid_only_refuses_a_client_without_certificate_with_certificate_required() {
    let clients = Clients::generate();
    let gw = two_modes(&clients);
    let alert = expect_alert(get_with_spoofed_identity(gw.strict, &clients.config(None)));
    assert_eq!(alert, AlertDescription::CertificateRequired);
}

#[test]
fn allow_valid_only_refuses_a_certificate_from_an_unknown_ca_with_unknown_ca() {
    let clients = Clients::generate();
    let gw = two_modes(&clients);
    let alert = expect_alert(get_with_spoofed_identity(
        gw.strict,
        &clients.config(Some(&clients.unknown_ca)),
    ));
    assert_eq!(alert, AlertDescription::UnknownCA);
}

#[test]
fn allow_valid_only_refuses_expired_and_not_yet_valid_certificates_with_certificate_expired() {
    let clients = Clients::generate();
    let gw = two_modes(&clients);
    for cert in [&clients.expired, &clients.not_yet_valid] {
        let alert = expect_alert(get_with_spoofed_identity(
            gw.strict,
            &clients.config(Some(cert)),
        ));
        assert_eq!(alert, AlertDescription::CertificateExpired);
    }
}

#[test]
fn allow_valid_only_refuses_a_certificate_for_server_auth_only_with_unsupported_certificate() {
    let clients = Clients::generate();
    let gw = two_modes(&clients);
    let alert = expect_alert(get_with_spoofed_identity(
        gw.strict,
        &clients.config(Some(&clients.server_auth_only)),
    ));
    assert_eq!(alert, AlertDescription::UnsupportedCertificate);
}

#[test]
fn allow_valid_only_routes_a_valid_certificate_and_forwards_the_verified_identity_only() {
    let clients = Clients::generate();
    let gw = two_modes(&clients);
    let ok =
        get_with_spoofed_identity(gw.strict, &clients.config(Some(&clients.pki.client))).unwrap();
    assert_eq!(ok.status, 200, "{}", ok.body_text());
    let xfcc = ok.echoed_header("x-forwarded-client-cert").unwrap();
    assert!(!xfcc.contains("spoofed"), "{xfcc}");
    assert!(xfcc.contains(CLIENT_NAME), "{xfcc}");
}

#[test]
fn allow_valid_only_refuses_tls12_clients_at_the_tls_layer_too() {
    let clients = Clients::generate();
    let gw = two_modes(&clients);
    let ca = &clients.pki.ca.pem.cert;
    let refusals = [
        (None, AlertDescription::CertificateRequired),
        (Some(&clients.unknown_ca), AlertDescription::UnknownCA),
        (Some(&clients.expired), AlertDescription::CertificateExpired),
    ];
    for (cert, expected) in refusals {
        let alert = expect_alert(get_with_spoofed_identity(
            gw.strict,
            &client_config_tls12(ca, cert),
        ));
        assert_eq!(alert, expected);
    }
    let ok = get_with_spoofed_identity(
        gw.strict,
        &client_config_tls12(ca, Some(&clients.pki.client)),
    )
    .unwrap();
    assert_eq!(ok.status, 200);
}

#[test]
fn insecure_fallback_routes_every_client_but_forwards_no_identity_for_an_unverified_one() {
    let clients = Clients::generate();
    let gw = two_modes(&clients);
    let unverified = [
        ("no certificate", None),
        ("unknown CA", Some(&clients.unknown_ca)),
        ("expired", Some(&clients.expired)),
        ("not yet valid", Some(&clients.not_yet_valid)),
        ("serverAuth only", Some(&clients.server_auth_only)),
    ];
    for (what, cert) in unverified {
        let response = get_with_spoofed_identity(gw.fallback, &clients.config(cert))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(response.status, 200, "{what}: {}", response.body_text());
        for name in IDENTITY_HEADER_NAMES {
            assert_eq!(
                response.echoed_header(name),
                None,
                "{what}: {name} reached the backend"
            );
        }
    }
}

#[test]
fn insecure_fallback_forwards_the_identity_of_a_valid_certificate() {
    let clients = Clients::generate();
    let gw = two_modes(&clients);
    let ok =
        get_with_spoofed_identity(gw.fallback, &clients.config(Some(&clients.pki.client))).unwrap();
    assert_eq!(ok.status, 200);
    let xfcc = ok.echoed_header("x-forwarded-client-cert").unwrap();
    assert!(!xfcc.contains("spoofed"), "{xfcc}");
    assert!(xfcc.contains(CLIENT_NAME), "{xfcc}");
}

#[test]
fn insecure_fallback_serves_tls12_clients_without_certificate() {
    let clients = Clients::generate();
    let gw = two_modes(&clients);
    let ok = get_with_spoofed_identity(
        gw.fallback,
        &client_config_tls12(&clients.pki.ca.pem.cert, None),
    )
    .unwrap();
    assert_eq!(ok.status, 200);
    assert_eq!(ok.echoed_header("x-forwarded-client-cert"), None);
}

#[test]
fn a_hostile_certificate_subject_cannot_inject_headers_or_identity_fields() {
    let clients = Clients::generate();
    let gw = two_modes(&clients);
    let hostile = clients
        .pki
        .ca
        .issue_with("placeholder", &["hostile.example.com"], |p| {
            p.distinguished_name = rcgen::DistinguishedName::new();
            p.distinguished_name.push(
                rcgen::DnType::CommonName,
                "x\";URI=spiffe://admin;DNS=\"y\r\nx-injected: yes",
            );
        })
        .unwrap();
    let ok = get_with_spoofed_identity(gw.strict, &clients.config(Some(&hostile))).unwrap();
    assert_eq!(ok.status, 200);
    assert_eq!(
        ok.echoed_header("x-injected"),
        None,
        "a header was injected"
    );
    let xfcc = ok.echoed_header("x-forwarded-client-cert").unwrap();
    // The subject stays inside its quoted value: no URI field appears.
    let fields = xfcc_fields(&xfcc);
    let keys: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["Hash", "Cert", "Subject", "DNS"], "{xfcc}");
    assert_eq!(fields[3].1, "hostile.example.com");
}

/// Splits an `x-forwarded-client-cert` element into `(key, raw value)` pairs, honouring
/// quoted values and backslash escapes inside them.
fn xfcc_fields(value: &str) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    let (mut current, mut quoted, mut escaped) = (String::new(), false, false);
    for c in value.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ';' if !quoted => {
                fields.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    fields.push(current);
    fields
        .into_iter()
        .map(|f| {
            let (k, v) = f.split_once('=').unwrap_or((&f, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

#[test]
fn a_copied_certificate_without_its_private_key_is_refused_in_both_modes() {
    let clients = Clients::generate();
    let gw = two_modes(&clients);
    // The valid client certificate, signed for with another client's key (same key type).
    let impostor = impostor_client_config(
        &clients.pki.ca.pem.cert,
        &clients.pki.client,
        &clients.expired,
    );
    // The owner connects first, so the shard has seen this chain pass its chain check: what it
    // remembers of that must never stand in for the signature.
    let owner = client_config(&clients.pki.ca.pem.cert, Some(&clients.pki.client));
    for port in [gw.strict, gw.fallback] {
        let served = get_with_spoofed_identity(port, &owner).unwrap();
        assert_eq!(served.status, 200, "port {port}");
    }
    for port in [gw.strict, gw.fallback] {
        let alert = expect_alert(get_with_spoofed_identity(port, &impostor));
        assert_eq!(alert, AlertDescription::DecryptError, "port {port}");
    }
}

#[test]
fn guide_default_step_requires_a_valid_client_certificate_on_both_ports() {
    let pki = GuidePki::generate(KeyKind::EcdsaP256).unwrap();
    let ports = (free_port(), free_port());
    let docs = guide_manifests(ports, &pki.ca.pem.cert, &pki.server, echo(), false);
    let _gw = Gateway::start(translate_yaml(&refs(&docs), "agentgateway"));

    let anonymous = client_config(&pki.ca.pem.cert, None);
    let with_cert = client_config(&pki.ca.pem.cert, Some(&pki.client));
    for port in [ports.0, ports.1] {
        let refused = https_get(port, "example.com", "example.com", "/get", &anonymous);
        assert_eq!(expect_alert(refused), AlertDescription::CertificateRequired);

        let ok = https_get(port, "example.com", "example.com", "/get", &with_cert).unwrap();
        assert_eq!(ok.status, 200, "{}", ok.body_text());
        assert!(ok.echoed_header("x-forwarded-client-cert").is_some());
    }
}

#[test]
fn guide_per_port_step_tolerates_missing_certificates_on_8444_only() {
    let pki = GuidePki::generate(KeyKind::EcdsaP256).unwrap();
    let ports = (free_port(), free_port());
    let docs = guide_manifests(ports, &pki.ca.pem.cert, &pki.server, echo(), true);
    let _gw = Gateway::start(translate_yaml(&refs(&docs), "agentgateway"));

    let anonymous = client_config(&pki.ca.pem.cert, None);
    let refused = https_get(ports.0, "example.com", "example.com", "/get", &anonymous);
    assert_eq!(expect_alert(refused), AlertDescription::CertificateRequired);

    let ok = https_get(ports.1, "example.com", "example.com", "/get", &anonymous).unwrap();
    assert_eq!(ok.status, 200);
    assert_eq!(
        ok.echoed_header("x-forwarded-client-cert"),
        None,
        "an anonymous client has no identity to forward"
    );
}

#[test]
fn insecure_fallback_serves_an_x509_v1_certificate_as_unverified_but_checks_its_key() {
    let clients = Clients::generate();
    let gw = two_modes(&clients);
    let tutorial = openssl_x509_v1_client(CLIENT_NAME, None);
    let trusted_v1 = openssl_x509_v1_client(CLIENT_NAME, Some(&clients.pki.ca.pem));
    let ca = &clients.pki.ca.pem.cert;
    for cert in [&tutorial, &trusted_v1] {
        for versions in [rustls::DEFAULT_VERSIONS, &[&rustls::version::TLS12]] {
            let config = unchecked_client_config(ca, cert, versions);
            let ok = get_with_spoofed_identity(gw.fallback, &config).unwrap();
            assert_eq!(ok.status, 200, "{}", ok.body_text());
            for name in IDENTITY_HEADER_NAMES {
                assert_eq!(ok.echoed_header(name), None, "{name} forwarded");
            }
        }
    }
    // The client must still own the key of the certificate it presents.
    let impostor = impostor_client_config(ca, &tutorial, &clients.pki.client);
    let alert = expect_alert(get_with_spoofed_identity(gw.fallback, &impostor));
    assert_eq!(alert, AlertDescription::DecryptError);
}

#[test]
fn allow_valid_only_refuses_an_x509_v1_certificate_even_from_a_trusted_ca_and_says_why() {
    let clients = Clients::generate();
    let gw = two_modes(&clients);
    let trusted_v1 = openssl_x509_v1_client(CLIENT_NAME, Some(&clients.pki.ca.pem));
    let alert = expect_alert(get_with_spoofed_identity(
        gw.strict,
        &unchecked_client_config(
            &clients.pki.ca.pem.cert,
            &trusted_v1,
            rustls::DEFAULT_VERSIONS,
        ),
    ));
    assert_eq!(alert, AlertDescription::CertificateUnknown);
    // Counted as the alert leaves: wait for the shard, not for a timer.
    wait_until("the refusal is counted under its own outcome", || {
        gw._gateway.metrics().handshakes(
            gw.strict,
            "strict",
            portcullis_runtime::metrics::HandshakeOutcome::X509V1ClientCert,
        ) == 1
    });
}
