//! Spec §3 on real sockets: the guide's Gateway, both validation modes, with and without a
//! client certificate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::SocketAddr;

use portcullis_runtime::echo;
use portcullis_runtime::pki::{GuidePki, KeyKind};
use rustls::AlertDescription;
use support::*;

fn echo_backend() -> SocketAddr {
    echo::spawn("127.0.0.1:0".parse().unwrap()).unwrap()
}

#[test]
fn guide_default_step_requires_a_valid_client_certificate_on_both_ports() {
    let pki = GuidePki::generate(KeyKind::EcdsaP256).unwrap();
    let ports = (free_port(), free_port());
    let docs = guide_manifests(ports, &pki.ca.pem.cert, &pki.server, echo_backend(), false);
    let gw = Gateway::start(translate_yaml(&refs(&docs), "agentgateway"));

    let anonymous = client_config(&pki.ca.pem.cert, None);
    let with_cert = client_config(&pki.ca.pem.cert, Some(&pki.client));
    for port in [ports.0, ports.1] {
        let err = https_get(port, "example.com", "example.com", "/get", &anonymous).unwrap_err();
        assert_eq!(
            alert_of(&err),
            Some(AlertDescription::CertificateRequired),
            "{err}"
        );

        let ok = https_get(port, "example.com", "example.com", "/get", &with_cert).unwrap();
        assert_eq!(ok.status, 200, "{}", ok.body_text());
        assert!(ok.body_text().contains("x-forwarded-client-cert"));
    }
    drop(gw);
}

#[test]
fn guide_per_port_step_tolerates_missing_certificates_on_8444_only() {
    let pki = GuidePki::generate(KeyKind::EcdsaP256).unwrap();
    let ports = (free_port(), free_port());
    let docs = guide_manifests(ports, &pki.ca.pem.cert, &pki.server, echo_backend(), true);
    let _gw = Gateway::start(translate_yaml(&refs(&docs), "agentgateway"));

    let anonymous = client_config(&pki.ca.pem.cert, None);
    let err = https_get(ports.0, "example.com", "example.com", "/get", &anonymous).unwrap_err();
    assert_eq!(alert_of(&err), Some(AlertDescription::CertificateRequired));

    let ok = https_get(ports.1, "example.com", "example.com", "/get", &anonymous).unwrap();
    assert_eq!(ok.status, 200);
    assert!(
        !ok.body_text().contains("x-forwarded-client-cert"),
        "an anonymous client has no identity to forward"
    );
}
