//! Spec §2 and §4 on real sockets: which CAs a port trusts. Signatures, not names, decide;
//! bundles and several references add up; a perPort entry replaces the default; a port whose
//! CA references are all invalid refuses every client while the others serve.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use portcullis_runtime::pki::{Authority, CertKeyPem, KeyKind};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SerialNumber,
};
use rustls::{AlertDescription, ClientConfig};
use support::backends::echo;
use support::*;

/// The CA that signs the gateway's server certificate (unrelated to client trust).
struct Server {
    ca: Authority,
    cert: CertKeyPem,
}

fn server() -> Server {
    let ca = Authority::new("Server CA", KeyKind::EcdsaP256).unwrap();
    let cert = ca.issue("example.com", &["example.com"]).unwrap();
    Server { ca, cert }
}

fn ca(name: &str) -> Authority {
    Authority::new(name, KeyKind::EcdsaP256).unwrap()
}

fn client_of(ca: &Authority) -> CertKeyPem {
    ca.issue("client.example.com", &["client.example.com"])
        .unwrap()
}

/// A Secret (not `kubernetes.io/tls`) with key `ca.crt`, which Portcullis accepts as a CA ref.
fn ca_secret(name: &str, pem: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {NS}\ntype: Opaque\ndata:\n  ca.crt: {}\n",
        BASE64.encode(pem)
    )
}

/// The gateway's documents: `gateway`, a route to the echo backend, the server Secret and the
/// given extra documents (CA ConfigMaps).
fn docs(server: &Server, gateway: GatewayYaml, extra: Vec<String>) -> Vec<String> {
    let mut docs = vec![
        gateway.yaml(),
        route("echo", &[], &rule_to("echo")),
        server_secret("server-cert", &server.cert),
        service("echo", echo()),
    ];
    docs.extend(extra);
    docs
}

fn get_as(server: &Server, port: u16, client: Option<&CertKeyPem>) -> io::Result<Response> {
    let config: Arc<ClientConfig> = client_config(&server.ca.pem.cert, client);
    https_get(port, "example.com", "example.com", "/get", &config)
}

fn assert_served(server: &Server, port: u16, client: &CertKeyPem) {
    let response = get_as(server, port, Some(client)).unwrap();
    assert_eq!(response.status, 200, "{}", response.body_text());
}

#[test]
fn a_ca_twin_with_the_same_name_and_serial_does_not_vouch_for_the_other_ones_clients() {
    let server = server();
    let twin = |_: ()| {
        Authority::new_with("Test CA", KeyKind::EcdsaP256, |p| {
            p.serial_number = Some(SerialNumber::from(0x1234_5678_u64));
        })
        .unwrap()
    };
    let (ca_a, ca_b) = (twin(()), twin(()));
    assert_ne!(
        ca_a.pem.cert, ca_b.pem.cert,
        "the twins differ by their keys"
    );
    let (only_a, only_b) = (free_port(), free_port());
    let gateway = GatewayYaml::new()
        .default_validation(valid_only(&["ca-a"]))
        .per_port(only_b, valid_only(&["ca-b"]))
        .listener(https("a", only_a, "server-cert"))
        .listener(https("b", only_b, "server-cert"));
    let _gw = Gateway::start(desired(&docs(
        &server,
        gateway,
        vec![
            ca_config_map("ca-a", &ca_a.pem.cert),
            ca_config_map("ca-b", &ca_b.pem.cert),
        ],
    )));

    let (client_a, client_b) = (client_of(&ca_a), client_of(&ca_b));
    assert_served(&server, only_a, &client_a);
    assert_served(&server, only_b, &client_b);
    // The issuer name matches, the signature does not: rustls says decrypt_error (as OpenSSL
    // does for a certificate signature failure).
    let refused = get_as(&server, only_a, Some(&client_b));
    assert_eq!(expect_alert(refused), AlertDescription::DecryptError);
    let refused = get_as(&server, only_b, Some(&client_a));
    assert_eq!(expect_alert(refused), AlertDescription::DecryptError);
}

#[test]
fn a_bundle_in_one_config_map_trusts_every_ca_in_it() {
    let server = server();
    let cas = [ca("CA 1"), ca("CA 2"), ca("CA 3")];
    let outsider = ca("CA 4");
    let bundle: String = cas.iter().map(|c| c.pem.cert.as_str()).collect();
    let port = free_port();
    let gateway = GatewayYaml::new()
        .default_validation(valid_only(&["bundle"]))
        .listener(https("https", port, "server-cert"));
    let _gw = Gateway::start(desired(&docs(
        &server,
        gateway,
        vec![ca_config_map("bundle", &bundle)],
    )));

    for ca in &cas {
        assert_served(&server, port, &client_of(ca));
    }
    let refused = get_as(&server, port, Some(&client_of(&outsider)));
    assert_eq!(expect_alert(refused), AlertDescription::UnknownCA);
}

#[test]
fn several_ca_refs_trust_the_union_of_config_maps_and_secrets() {
    let server = server();
    let (in_config_map, in_secret, outsider) = (ca("CA 1"), ca("CA 2"), ca("CA 3"));
    let port = free_port();
    let gateway = GatewayYaml::new()
        .default_validation(valid_only(&["from-config-map"]).secret_ca("from-secret"))
        .listener(https("https", port, "server-cert"));
    let _gw = Gateway::start(desired(&docs(
        &server,
        gateway,
        vec![
            ca_config_map("from-config-map", &in_config_map.pem.cert),
            ca_secret("from-secret", &in_secret.pem.cert),
        ],
    )));

    assert_served(&server, port, &client_of(&in_config_map));
    assert_served(&server, port, &client_of(&in_secret));
    let refused = get_as(&server, port, Some(&client_of(&outsider)));
    assert_eq!(expect_alert(refused), AlertDescription::UnknownCA);
}

#[test]
fn invalid_ca_refs_are_skipped_while_a_valid_one_remains() {
    let server = server();
    let good = ca("Good CA");
    let port = free_port();
    let gateway = GatewayYaml::new()
        .default_validation(valid_only(&["missing", "good"]))
        .listener(https("https", port, "server-cert"));
    let _gw = Gateway::start(desired(&docs(
        &server,
        gateway,
        vec![ca_config_map("good", &good.pem.cert)],
    )));

    assert_served(&server, port, &client_of(&good));
    let refused = get_as(&server, port, None);
    assert_eq!(expect_alert(refused), AlertDescription::CertificateRequired);
}

#[test]
fn a_client_that_verified_before_its_ca_was_dropped_is_refused_after() {
    // A shard remembers chains that passed (`verified_chains`): a new policy must not use that.
    let server = server();
    let (old_ca, new_ca) = (ca("Old CA"), ca("New CA"));
    let port = free_port();
    let trusting = |ca_ref: &str| {
        GatewayYaml::new()
            .default_validation(valid_only(&[ca_ref]))
            .listener(https("https", port, "server-cert"))
    };
    let config_maps = || {
        vec![
            ca_config_map("old-ca", &old_ca.pem.cert),
            ca_config_map("new-ca", &new_ca.pem.cert),
        ]
    };
    let gw = Gateway::start(desired(&docs(&server, trusting("old-ca"), config_maps())));
    let (old_client, new_client) = (client_of(&old_ca), client_of(&new_ca));
    assert_served(&server, port, &old_client);
    assert_served(&server, port, &old_client);

    gw.publish(desired(&docs(&server, trusting("new-ca"), config_maps())));
    let refused = get_as(&server, port, Some(&old_client));
    assert_eq!(expect_alert(refused), AlertDescription::UnknownCA);
    assert_served(&server, port, &new_client);
}

#[test]
fn a_per_port_entry_replaces_the_default_trust_instead_of_adding_to_it() {
    let server = server();
    let (default_ca, port_ca) = (ca("Default CA"), ca("Port CA"));
    let (by_default, overridden) = (free_port(), free_port());
    let gateway = GatewayYaml::new()
        .default_validation(valid_only(&["default-ca"]))
        .per_port(overridden, valid_only(&["port-ca"]))
        .listener(https("by-default", by_default, "server-cert"))
        .listener(https("overridden", overridden, "server-cert"));
    let _gw = Gateway::start(desired(&docs(
        &server,
        gateway,
        vec![
            ca_config_map("default-ca", &default_ca.pem.cert),
            ca_config_map("port-ca", &port_ca.pem.cert),
        ],
    )));

    let (default_client, port_client) = (client_of(&default_ca), client_of(&port_ca));
    assert_served(&server, by_default, &default_client);
    assert_served(&server, overridden, &port_client);
    let refused = get_as(&server, overridden, Some(&default_client));
    assert_eq!(expect_alert(refused), AlertDescription::UnknownCA);
    let refused = get_as(&server, by_default, Some(&port_client));
    assert_eq!(expect_alert(refused), AlertDescription::UnknownCA);
}

#[test]
fn a_per_port_entry_naming_an_http_port_is_unused() {
    let server = server();
    let good = ca("Good CA");
    let (tls_port, plain_port) = (free_port(), free_port());
    let gateway = GatewayYaml::new()
        .default_validation(valid_only(&["good"]))
        .per_port(plain_port, valid_only(&["good"]))
        .listener(https("https", tls_port, "server-cert"))
        .listener(http("http", plain_port));
    let _gw = Gateway::start(desired(&docs(
        &server,
        gateway,
        vec![ca_config_map("good", &good.pem.cert)],
    )));

    let mut plain = Http::new(std::net::TcpStream::connect(("127.0.0.1", plain_port)).unwrap());
    plain.stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let response = plain.get("example.com", "/get").unwrap();
    assert_eq!(
        response.status, 200,
        "plain HTTP is never asked for a certificate"
    );
    let refused = get_as(&server, tls_port, None);
    assert_eq!(expect_alert(refused), AlertDescription::CertificateRequired);
}

/// The objects behind CA references that are all invalid: besides a missing ConfigMap and a
/// missing Secret, a ConfigMap without `ca.crt` (other keys are ignored) and one whose PEM
/// does not parse.
fn all_invalid_refs_docs() -> Vec<String> {
    let no_key = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: no-key\n  namespace: {NS}\ndata:\n  tls.crt: nothing\n"
    );
    let garbage = ca_config_map(
        "garbage",
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    );
    vec![no_key, garbage]
}

fn all_invalid(mode: Mode) -> Validation {
    Validation::new(mode, &["missing", "no-key", "garbage"]).secret_ca("missing-secret")
}

#[test]
fn a_port_whose_ca_refs_are_all_invalid_refuses_every_client_while_other_ports_serve() {
    let server = server();
    let good = ca("Good CA");
    let (healthy, broken) = (free_port(), free_port());
    let gateway = GatewayYaml::new()
        .default_validation(valid_only(&["good"]))
        .per_port(broken, all_invalid(Mode::AllowValidOnly))
        .listener(https("healthy", healthy, "server-cert"))
        .listener(https("broken", broken, "server-cert"));
    let mut extra = all_invalid_refs_docs();
    extra.push(ca_config_map("good", &good.pem.cert));
    let _gw = Gateway::start(desired(&docs(&server, gateway, extra)));

    // The handshake asks for a certificate, then refuses any (access_denied) or none.
    let client = client_of(&good);
    let refused = get_as(&server, broken, Some(&client));
    assert_eq!(expect_alert(refused), AlertDescription::AccessDenied);
    let refused = get_as(&server, broken, None);
    assert_eq!(expect_alert(refused), AlertDescription::CertificateRequired);
    assert_served(&server, healthy, &client);
}

#[test]
fn a_fallback_port_whose_ca_refs_are_all_invalid_fails_closed_too() {
    let server = server();
    let good = ca("Good CA");
    let (healthy, broken) = (free_port(), free_port());
    let gateway = GatewayYaml::new()
        .default_validation(insecure_fallback(&["good"]))
        .per_port(broken, all_invalid(Mode::AllowInsecureFallback))
        .listener(https("healthy", healthy, "server-cert"))
        .listener(https("broken", broken, "server-cert"));
    let mut extra = all_invalid_refs_docs();
    extra.push(ca_config_map("good", &good.pem.cert));
    let _gw = Gateway::start(desired(&docs(&server, gateway, extra)));

    let refused = get_as(&server, broken, Some(&client_of(&good)));
    assert_eq!(expect_alert(refused), AlertDescription::AccessDenied);
    let refused = get_as(&server, broken, None);
    assert_eq!(expect_alert(refused), AlertDescription::CertificateRequired);
    let anonymous = get_as(&server, healthy, None).unwrap();
    assert_eq!(anonymous.status, 200, "the fallback port still serves");
}

/// A root CA, an intermediate CA under it, and a client leaf issued by the intermediate.
struct Chain {
    root_pem: String,
    intermediate_pem: String,
    /// The leaf alone.
    leaf: CertKeyPem,
}

fn chain() -> Chain {
    let ca_params = |name: &str| {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p
    };
    let root_key = KeyPair::generate().unwrap();
    let root_params = ca_params("Root CA");
    let root = root_params.self_signed(&root_key).unwrap();
    let root_issuer = Issuer::new(root_params, root_key);
    let intermediate_key = KeyPair::generate().unwrap();
    let intermediate_params = ca_params("Intermediate CA");
    let intermediate = intermediate_params
        .signed_by(&intermediate_key, &root_issuer)
        .unwrap();
    let intermediate_issuer = Issuer::new(intermediate_params, intermediate_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["client.example.com".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &intermediate_issuer)
        .unwrap();
    Chain {
        root_pem: root.pem(),
        intermediate_pem: intermediate.pem(),
        leaf: CertKeyPem {
            cert: leaf.pem(),
            key: leaf_key.serialize_pem(),
        },
    }
}

#[test]
fn a_client_sending_its_intermediate_verifies_against_the_root() {
    let server = server();
    let chain = chain();
    let port = free_port();
    let gateway = GatewayYaml::new()
        .default_validation(valid_only(&["root"]))
        .listener(https("https", port, "server-cert"));
    let _gw = Gateway::start(desired(&docs(
        &server,
        gateway,
        vec![ca_config_map("root", &chain.root_pem)],
    )));

    let with_intermediate = CertKeyPem {
        cert: format!("{}{}", chain.leaf.cert, chain.intermediate_pem),
        key: chain.leaf.key.clone(),
    };
    let ok = get_as(&server, port, Some(&with_intermediate)).unwrap();
    assert_eq!(ok.status, 200);
    assert!(ok.echoed_header("x-forwarded-client-cert").is_some());

    // Without the intermediate there is no path to the root.
    let refused = get_as(&server, port, Some(&chain.leaf));
    assert_eq!(expect_alert(refused), AlertDescription::UnknownCA);
}
