//! The traffic of the upstream conformance tests of HTTPS listeners (v1.6.1), on real
//! sockets: GatewayFrontendClientCertificateValidation and its InsecureFallback,
//! GatewayFrontendInvalidDefaultClientCertificateValidation, and
//! GatewayHTTPSListenerDetectMisdirectedRequests. Each runs the upstream manifests
//! (`translate/tests/fixtures/conformance/v1.6.1/`) with their ports moved to free ones, with
//! certificates shaped as the suite makes them, and checks what the upstream test expects (a
//! status from the right backend, or a request that fails). Their statuses are checked in
//! `translate/tests/conformance_statuses.rs`.
//!
//! The suite's certificates (`utils/kubernetes/certificate.go`): two CAs that differ only by
//! their keys (both `CN=gatewayapi`, serial 2024, RSA-2048, key usages digitalSignature and
//! keyCertSign, extended key usages clientAuth and serverAuth), each signing one client
//! certificate without any subject alt name (`CN=default, O=Acme Co`, RSA-2048, clientAuth),
//! and a self-signed RSA server certificate for `*.org`, `*.wildcard.org` and the URI `*`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;

use base64::Engine;
use portcullis_runtime::demo;
use portcullis_runtime::pki::{Authority, CertKeyPem, KeyKind};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, PKCS_RSA_SHA256, RsaKeySize, SanType, SerialNumber,
};
use support::conformance::{INFRA, Ports, base_gateway, fixture, infra_backends};
use support::*;

/// One CA of suite.go's `MustCreateCACertConfigMap` and the client certificate
/// `MustCreateCASignedClientCertSecret` makes with it.
struct SuiteCa {
    ca: Authority,
    client: CertKeyPem,
}

impl SuiteCa {
    fn generate() -> Self {
        let ca = Authority::new_with("gatewayapi", KeyKind::Rsa2048, |p| {
            let mut name = DistinguishedName::new();
            name.push(DnType::CountryName, "US");
            name.push(DnType::OrganizationName, "Kubernetes Gateway API");
            name.push(DnType::CommonName, "gatewayapi");
            p.distinguished_name = name;
            p.serial_number = Some(SerialNumber::from(2024_u64));
            p.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyCertSign,
            ];
            p.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ClientAuth,
                ExtendedKeyUsagePurpose::ServerAuth,
            ];
        })
        .unwrap();
        let client = ca
            .issue_with("default", &[], |p| {
                p.distinguished_name = acme_default();
                p.is_ca = IsCa::ExplicitNoCa;
                p.key_usages = vec![
                    KeyUsagePurpose::KeyEncipherment,
                    KeyUsagePurpose::DigitalSignature,
                ];
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            })
            .unwrap();
        Self { ca, client }
    }
}

fn acme_default() -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "default");
    name.push(DnType::OrganizationName, "Acme Co");
    name
}

/// suite.go's `tls-validity-checks-certificate`: self-signed, RSA-2048, for `*`, `*.org` and
/// `*.wildcard.org` (`*` is no valid DNS name, so it becomes a URI), its key PKCS#1 (`RSA
/// PRIVATE KEY`) as Go writes it.
fn suite_server_certificate() -> CertKeyPem {
    let key = KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_2048).unwrap();
    let mut params =
        CertificateParams::new(vec!["*.org".to_owned(), "*.wildcard.org".to_owned()]).unwrap();
    params
        .subject_alt_names
        .push(SanType::URI("*".try_into().unwrap()));
    params.distinguished_name = acme_default();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.self_signed(&key).unwrap();
    CertKeyPem {
        cert: cert.pem(),
        key: pkcs1_pem(&key.serialize_der()),
    }
}

/// The PKCS#1 `RSA PRIVATE KEY` PEM of an RSA key given as PKCS#8 DER (its `privateKey`
/// octet string).
fn pkcs1_pem(pkcs8: &[u8]) -> String {
    let (_, info) = x509_parser::der_parser::parse_der(pkcs8).unwrap();
    let pkcs1 = info.as_sequence().unwrap()[2].as_slice().unwrap();
    let base64 = base64::engine::general_purpose::STANDARD.encode(pkcs1);
    let mut pem = String::from("-----BEGIN RSA PRIVATE KEY-----\n");
    for line in base64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap());
        pem.push('\n');
    }
    pem.push_str("-----END RSA PRIVATE KEY-----\n");
    pem
}

/// suite.go's CA ConfigMap: the CA under `ca.crt`, and its private key under `key.crt`.
fn suite_ca_config_map(name: &str, ca: &Authority) -> String {
    let indent = |pem: &str| pem.trim_end().replace('\n', "\n    ");
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: {INFRA}\ndata:\n  \
         ca.crt: |\n    {}\n  key.crt: |\n    {}\n",
        indent(&ca.pem.cert),
        indent(&ca.pem.key)
    )
}

/// What suite.go sets up for these tests: the server certificate, the two CA ConfigMaps with
/// their client certificates, and the infra backends (each answers its own name).
struct Suite {
    server: CertKeyPem,
    default_ca: SuiteCa,
    per_port_ca: SuiteCa,
}

impl Suite {
    fn generate() -> Self {
        Self {
            server: suite_server_certificate(),
            default_ca: SuiteCa::generate(),
            per_port_ca: SuiteCa::generate(),
        }
    }

    /// The gateway serving `test_yaml`, its ports moved, with the suite's objects.
    fn start(&self, test_yaml: &str, ports: &Ports) -> Gateway {
        let mut docs = vec![
            ports.apply(test_yaml),
            demo::tls_secret(
                INFRA,
                "tls-validity-checks-certificate",
                &self.server.cert,
                &self.server.key,
            ),
            suite_ca_config_map("tls-validity-checks-ca-certificate", &self.default_ca.ca),
            suite_ca_config_map(
                "tls-validity-checks-per-port-ca-certificate",
                &self.per_port_ca.ca,
            ),
        ];
        docs.extend(infra_backends(ports));
        Gateway::start(desired(&docs))
    }
}

/// The suite's client: it checks the server against the server certificate, which is no CA
/// and names `*.org` (Go accepts both; rustls does not), so this client accepts any server
/// certificate and presents `client` when asked.
fn client(client: Option<&CertKeyPem>) -> Arc<rustls::ClientConfig> {
    any_server_client_config(client)
}

/// `GET /` with `Host: host` on a TLS connection whose SNI is `host`, as
/// `MakeTLSRequestAndExpect*` sends it.
fn get_tls(port: u16, host: &str, config: &Arc<rustls::ClientConfig>) -> std::io::Result<Response> {
    Http::connect(port, host, config)?.get(host, "/")
}

#[track_caller]
fn assert_served_by(response: std::io::Result<Response>, backend: &str) {
    let response = response.unwrap_or_else(|e| panic!("expected a 200 from {backend}, got {e}"));
    assert_eq!(response.status, 200, "{}", response.body_text());
    assert_eq!(response.body_text(), backend);
}

#[test]
fn gateway_frontend_client_certificate_validation() {
    let suite = Suite::generate();
    let (default_port, per_port) = (free_port(), free_port());
    let _gw = suite.start(
        &fixture("gateway-with-clientcertificate-validation.yaml"),
        &Ports::new(&[(443, default_port), (8443, per_port)]),
    );
    let default_client = client(Some(&suite.default_ca.client));
    let per_port_client = client(Some(&suite.per_port_ca.client));

    // Validate default configuration.
    assert_served_by(
        get_tls(default_port, "example.org", &default_client),
        "infra-backend-v1",
    );
    expect_alert(get_tls(default_port, "example.org", &per_port_client));

    // Validate per port configuration.
    assert_served_by(
        get_tls(per_port, "second-example.org", &per_port_client),
        "infra-backend-v2",
    );
    expect_alert(get_tls(per_port, "second-example.org", &default_client));
}

#[test]
fn gateway_frontend_client_certificate_validation_insecure_fallback() {
    let suite = Suite::generate();
    let (default_port, per_port) = (free_port(), free_port());
    let _gw = suite.start(
        &fixture("gateway-with-clientcertificate-validation-insecure-fallback.yaml"),
        &Ports::new(&[(443, default_port), (8443, per_port)]),
    );
    let default_client = client(Some(&suite.default_ca.client));
    let per_port_client = client(Some(&suite.per_port_ca.client));
    let no_certificate = client(None);
    for (port, host, backend) in [
        (default_port, "example.org", "infra-backend-v1"),
        (per_port, "second-example.org", "infra-backend-v2"),
    ] {
        for config in [&default_client, &per_port_client, &no_certificate] {
            assert_served_by(get_tls(port, host, config), backend);
        }
    }
}

#[test]
fn gateway_frontend_invalid_default_client_certificate_validation() {
    let suite = Suite::generate();
    let (https_port, http_port) = (free_port(), free_port());
    let _gw = suite.start(
        &fixture("gateway-invalid-default-frontend-client-certificate-validation.yaml"),
        &Ports::new(&[(443, https_port), (80, http_port)]),
    );

    // The HTTP listener is untouched by the invalid default (and by its port's perPort entry).
    let tcp = std::net::TcpStream::connect(("127.0.0.1", http_port)).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    assert_served_by(Http::new(tcp).get("example.org", "/"), "infra-backend-v1");

    // The HTTPS listener refuses every client.
    expect_alert(get_tls(https_port, "example.org", &client(None)));
}

/// One request of the upstream test over HTTP/2 (ALPN `h2`, a new connection each, as the
/// suite's `http2.Transport` per request): its status and body.
fn get_h2(port: u16, server_name: &str, host: &str, path: &str) -> (u16, String) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let mut config = (*client(None)).clone();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let name = rustls::pki_types::ServerName::try_from(server_name.to_owned()).unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .unwrap();
        let (client, connection) = h2::client::handshake(tls).await.unwrap();
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut client = client.ready().await.unwrap();
        let request = http::Request::get(format!("https://{host}{path}"))
            .body(())
            .unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        let response = tokio::time::timeout(PATIENCE, response)
            .await
            .unwrap()
            .unwrap();
        let status = response.status().as_u16();
        let mut body = response.into_body();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            body.flow_control().release_capacity(chunk.len()).unwrap();
            bytes.extend_from_slice(&chunk);
        }
        (status, String::from_utf8_lossy(&bytes).into_owned())
    })
}

#[test]
fn httproute_https_listener_detect_misdirected_requests() {
    let suite = Suite::generate();
    let port = free_port();
    let ports = Ports::new(&[(443, port)]);
    let _gw = suite.start(
        &format!(
            "{}\n---\n{}",
            base_gateway("same-namespace-with-https-listener"),
            fixture("httproute-https-listener-detect-misdirected-requests.yaml")
        ),
        &ports,
    );
    let v1 = Some("infra-backend-v1");
    let v2 = Some("infra-backend-v2");
    let v3 = Some("infra-backend-v3");
    for (server_name, host, status, backend) in [
        ("example.org", "example.org", 200, v1),
        ("example.org", "second-example.org", 421, None),
        ("example.org", "unknown-example.org", 404, None),
        ("second-example.org", "second-example.org", 200, v2),
        ("second-example.org", "example.org", 421, None),
        ("second-example.org", "unknown-example.org", 421, None),
        (
            "third-example.wildcard.org",
            "third-example.wildcard.org",
            200,
            v3,
        ),
        (
            "third-example.wildcard.org",
            "fith-example.wildcard.org",
            200,
            v3,
        ),
        (
            "third-example.wildcard.org",
            "fourth-example.wildcard.org",
            421,
            None,
        ),
        (
            "third-example.wildcard.org",
            "second-example.org",
            421,
            None,
        ),
        (
            "third-example.wildcard.org",
            "unknown-example.org",
            421,
            None,
        ),
        (
            "fourth-example.wildcard.org",
            "fourth-example.wildcard.org",
            200,
            v1,
        ),
        (
            "fourth-example.wildcard.org",
            "fith-example.wildcard.org",
            421,
            None,
        ),
        ("unknown-example.org", "example.org", 200, v1),
        ("unknown-example.org", "unknown-example.org", 404, None),
    ] {
        let (got, body) = get_h2(port, server_name, host, "/detect-misdirected-requests");
        let case = format!("SNI {server_name}, host {host}");
        assert_eq!(got, status, "{case}: {body}");
        if let Some(backend) = backend {
            assert_eq!(body, backend, "{case}");
        }
    }
}
