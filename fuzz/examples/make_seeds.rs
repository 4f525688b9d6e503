//! Writes the seed corpus `fuzz/corpus/<target>/` (and the fixed PKI `fuzz/pki/` when missing):
//!
//! - `request_head`, `response_head`, `chunked_body`: every byte-string literal of the unit tests
//!   in `core/src/http1/` that is a request head, a response head or (in `chunked.rs`) a body.
//! - `delivered_config`: the TLS gateway's translated config, encoded as the controller delivers
//!   it, the same with an HTTP port whose route has every implemented filter, and the empty
//!   config.
//! - `manifests_translate`: the user guide's and the conformance fixtures of
//!   `translate/tests/fixtures/`, and the manifests of the `tls_accept` gateway.
//! - `tls_accept`: what real rustls clients send to that gateway, captured in memory: full
//!   handshakes (TLS 1.3 and 1.2, with and without a client certificate), a resumption, a
//!   ChaCha20-first client, an unknown and an absent server name.
//!
//! Each seed of an incremental target starts with its pattern byte (`portcullis_fuzz::reads`).
//! Run from the repository root without the fuzzing flags:
//! `cargo run --manifest-path fuzz/Cargo.toml --example make_seeds`.

// A generator run by hand: any failure stops it with its reason.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use portcullis_fuzz::tls_gateway::{CLIENT_SAN, Pki, SERVER_NAME, TlsGateway, manifests};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::client::Resumption;
use rustls::crypto::aws_lc_rs;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::Acceptor;
use rustls::{
    ClientConfig, ClientConnection, RootCertStore, ServerConnection, SupportedProtocolVersion,
    version,
};

/// Byte-by-byte reads: the strictest split, for the small HTTP seeds.
const BYTEWISE: u8 = 0x00;
/// Reads of up to 100 bytes.
const SMALL_READS: u8 = 0x65;
/// Reads of up to 5000 bytes: across rustls' 4 KiB `read_tls` step.
const LARGE_READS: u8 = 0xc9;

fn main() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = fuzz.parent().expect("repository root");
    let corpus = fuzz.join("corpus");

    http_seeds(root, &corpus);
    let pki = fixed_pki(&fuzz.join("pki"));
    manifest_seeds(root, &corpus, &pki);
    tls_seeds(&corpus, &pki);
}

fn write_seeds(dir: &Path, seeds: impl IntoIterator<Item = (String, Vec<u8>)>) {
    if dir.exists() {
        fs::remove_dir_all(dir).expect("clear the old seeds");
    }
    fs::create_dir_all(dir).expect("seed folder");
    let mut count = 0;
    for (name, bytes) in seeds {
        fs::write(dir.join(name), bytes).expect("write a seed");
        count += 1;
    }
    println!("{}: {count} seeds", dir.display());
}

fn with_pattern(pattern: u8, bytes: &[u8]) -> Vec<u8> {
    let mut seed = vec![pattern];
    seed.extend_from_slice(bytes);
    seed
}

// --- HTTP/1.1 heads and bodies from the unit tests ------------------------------------------

fn http_seeds(root: &Path, corpus: &Path) {
    let http1 = root.join("core/src/http1");
    let mut requests = BTreeSet::new();
    let mut responses = BTreeSet::new();
    for file in ["request.rs", "forward.rs", "response.rs", "fields.rs"] {
        for literal in byte_string_literals(&fs::read_to_string(http1.join(file)).unwrap()) {
            if literal.starts_with(b"HTTP/") {
                responses.insert(literal);
            } else if literal.windows(6).any(|w| w == b" HTTP/") {
                requests.insert(literal);
            }
        }
    }
    let bodies: BTreeSet<Vec<u8>> =
        byte_string_literals(&fs::read_to_string(http1.join("chunked.rs")).unwrap())
            .into_iter()
            .filter(|l| l.first().is_some_and(u8::is_ascii_hexdigit))
            .collect();
    let numbered = |set: BTreeSet<Vec<u8>>, prefix: &str, patterns: &[u8]| {
        set.into_iter()
            .enumerate()
            .map(|(i, bytes)| {
                let pattern = patterns[i % patterns.len()];
                (format!("{prefix}-{i:03}"), with_pattern(pattern, &bytes))
            })
            .collect::<Vec<_>>()
    };
    // The pattern byte also picks the limits (bit 4) and, for responses, a HEAD request (bit 0).
    write_seeds(
        &corpus.join("request_head"),
        numbered(requests, "test", &[BYTEWISE, SMALL_READS]),
    );
    write_seeds(
        &corpus.join("response_head"),
        numbered(responses, "test", &[BYTEWISE, SMALL_READS]),
    );
    write_seeds(
        &corpus.join("chunked_body"),
        numbered(bodies, "test", &[BYTEWISE, SMALL_READS]),
    );
}

/// The values of the `b"..."` literals in Rust source, escapes resolved.
fn byte_string_literals(source: &str) -> Vec<Vec<u8>> {
    let bytes = source.as_bytes();
    let mut literals = Vec::new();
    let mut i = 0;
    while i + 1 < bytes.len() {
        let starts = bytes[i] == b'b'
            && bytes[i + 1] == b'"'
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'));
        if !starts {
            i += 1;
            continue;
        }
        i += 2;
        let mut value = Vec::new();
        while i < bytes.len() && bytes[i] != b'"' {
            if bytes[i] != b'\\' {
                value.push(bytes[i]);
                i += 1;
                continue;
            }
            let escaped = bytes[i + 1];
            i += 2;
            match escaped {
                b'r' => value.push(b'\r'),
                b'n' => value.push(b'\n'),
                b't' => value.push(b'\t'),
                b'0' => value.push(0),
                b'\\' | b'"' | b'\'' => value.push(escaped),
                b'x' => {
                    let hex = std::str::from_utf8(&bytes[i..i + 2]).unwrap();
                    value.push(u8::from_str_radix(hex, 16).unwrap());
                    i += 2;
                }
                // A line continuation: the newline and the next line's indentation vanish.
                b'\n' => {
                    while i < bytes.len() && bytes[i].is_ascii_whitespace() {
                        i += 1;
                    }
                }
                other => panic!("unknown escape \\{}", other as char),
            }
        }
        i += 1;
        literals.push(value);
    }
    literals
}

// --- Manifests ---------------------------------------------------------------------------------

fn manifest_seeds(root: &Path, corpus: &Path, pki: &PkiFiles) {
    let fixtures = root.join("translate/tests/fixtures");
    let mut seeds = Vec::new();
    let mut add_dir = |dir: PathBuf, prefix: &str| {
        let mut files: Vec<PathBuf> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        files.sort();
        for file in files {
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            seeds.push((format!("{prefix}-{name}"), fs::read(&file).unwrap()));
        }
    };
    add_dir(fixtures.join("user-guide"), "guide");
    add_dir(fixtures.join("conformance/v1.6.1"), "conformance");
    seeds.push((
        "tls-gateway.yaml".to_owned(),
        manifests(&pki.server_pki()).into_bytes(),
    ));
    write_seeds(&corpus.join("manifests_translate"), seeds);
    delivered_seeds(corpus, pki);
}

/// An HTTP Gateway whose route uses every implemented filter (header modifiers both ways, and
/// a redirect), to a Service with one endpoint.
const FILTERS_MANIFESTS: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: filters
  namespace: fuzz
spec:
  gatewayClassName: portcullis
  listeners:
  - name: http
    protocol: HTTP
    port: 8080
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: filters
  namespace: fuzz
spec:
  parentRefs:
  - name: filters
  rules:
  - matches: [{path: {type: PathPrefix, value: /headers}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: X-Set, value: a}]
        add: [{name: X-Add, value: b}]
        remove: [X-Remove]
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        add: [{name: X-Served-By, value: portcullis}]
    backendRefs: [{name: web, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect:
        scheme: https
        hostname: example.org
        port: 8443
        statusCode: 301
        path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: fuzz
spec:
  ports:
  - name: http
    port: 80
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web
  namespace: fuzz
  labels:
    kubernetes.io/service-name: web
addressType: IPv4
ports:
- name: http
  port: 8080
endpoints:
- addresses: ["127.0.0.1"]
"#;

/// `delivered_config`: the TLS gateway's config as the controller delivers it (a port with a
/// certificate, a key, a CA bundle and routes), with and without the filters Gateway, and the
/// empty config.
fn delivered_seeds(corpus: &Path, pki: &PkiFiles) {
    use portcullis_core::delivery::encode;
    use portcullis_core::desired::DesiredConfig;
    use portcullis_translate::manifests::{LoadedManifests, load_text};
    use portcullis_translate::{TranslateOptions, check, translate};
    let desired_of = |text: &str| {
        let mut loaded = LoadedManifests::default();
        load_text(Path::new("tls-gateway.yaml"), text, false, &mut loaded).unwrap();
        translate(&loaded.store, &TranslateOptions::new(check::now())).desired
    };
    let tls_gateway = manifests(&pki.server_pki());
    let desired = desired_of(&tls_gateway);
    let with_filters = desired_of(&format!("{tls_gateway}---\n{FILTERS_MANIFESTS}"));
    assert!(
        with_filters
            .port(8080)
            .is_some_and(|p| p.listeners[0].routes[0].rules.len() == 2),
        "the filters route is served"
    );
    let seed = |desired: &DesiredConfig| {
        let delivered = encode(desired).unwrap();
        let mut bytes = u16::try_from(delivered.config.len())
            .unwrap()
            .to_le_bytes()
            .to_vec();
        bytes.extend_from_slice(&delivered.config);
        bytes.extend_from_slice(&delivered.endpoints);
        bytes
    };
    write_seeds(
        &corpus.join("delivered_config"),
        [
            ("tls-gateway.json".to_owned(), seed(&desired)),
            ("filters.json".to_owned(), seed(&with_filters)),
            ("empty.json".to_owned(), seed(&DesiredConfig::default())),
        ],
    );
}

// --- The fixed PKI -----------------------------------------------------------------------------

struct PkiFiles {
    ca_cert: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

impl PkiFiles {
    fn server_pki(&self) -> Pki<'_> {
        Pki {
            ca_cert: &self.ca_cert,
            server_cert: &self.server_cert,
            server_key: &self.server_key,
        }
    }
}

const PKI_FILES: [&str; 5] = [
    "ca.pem",
    "server.pem",
    "server.key",
    "client.pem",
    "client.key",
];

/// Reads `fuzz/pki/`, generating it first if absent: the `tls_accept` target compiles its
/// gateway from these files, and the captured flights carry the client certificate.
fn fixed_pki(dir: &Path) -> PkiFiles {
    if !dir.join(PKI_FILES[0]).exists() {
        generate_pki(dir);
    }
    let read = |name: &str| fs::read_to_string(dir.join(name)).unwrap();
    PkiFiles {
        ca_cert: read("ca.pem"),
        server_cert: read("server.pem"),
        server_key: read("server.key"),
        client_cert: read("client.pem"),
        client_key: read("client.key"),
    }
}

fn generate_pki(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Portcullis Fuzz CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose| {
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, names[0].as_str());
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(
        vec![SERVER_NAME.to_owned(), "*.example.com".to_owned()],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client_cert, client_key) = leaf(
        vec![CLIENT_SAN.to_owned()],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    for (name, pem) in PKI_FILES.iter().zip([
        ca_cert.pem(),
        server_cert,
        server_key,
        client_cert,
        client_key,
    ]) {
        fs::write(dir.join(name), pem).unwrap();
    }
}

// --- TLS client flights ------------------------------------------------------------------------

const TLS13: &[&SupportedProtocolVersion] = &[&version::TLS13];
const TLS12: &[&SupportedProtocolVersion] = &[&version::TLS12];
const BOTH: &[&SupportedProtocolVersion] = &[&version::TLS13, &version::TLS12];

struct Client {
    name: &'static str,
    versions: &'static [&'static SupportedProtocolVersion],
    server_name: &'static str,
    client_cert: bool,
    chacha_first: bool,
}

fn tls_seeds(corpus: &Path, pki: &PkiFiles) {
    let gateway = TlsGateway::new(&pki.server_pki()).expect("the fuzz gateway compiles");
    let clients = [
        Client {
            name: "tls13-client-cert",
            versions: TLS13,
            server_name: SERVER_NAME,
            client_cert: true,
            chacha_first: false,
        },
        Client {
            name: "tls12-client-cert",
            versions: TLS12,
            server_name: SERVER_NAME,
            client_cert: true,
            chacha_first: false,
        },
        Client {
            name: "tls13-wildcard-listener",
            versions: TLS13,
            server_name: "b.example.com",
            client_cert: true,
            chacha_first: false,
        },
        Client {
            name: "tls12-wildcard-listener",
            versions: TLS12,
            server_name: "b.example.com",
            client_cert: true,
            chacha_first: false,
        },
        Client {
            name: "tls12-no-client-cert",
            versions: TLS12,
            server_name: SERVER_NAME,
            client_cert: false,
            chacha_first: false,
        },
        Client {
            name: "tls13-no-client-cert",
            versions: TLS13,
            server_name: SERVER_NAME,
            client_cert: false,
            chacha_first: false,
        },
        Client {
            name: "chacha-first",
            versions: BOTH,
            server_name: SERVER_NAME,
            client_cert: true,
            chacha_first: true,
        },
        Client {
            name: "unknown-server-name",
            versions: BOTH,
            server_name: "other.test",
            client_cert: true,
            chacha_first: false,
        },
        Client {
            name: "no-server-name",
            versions: BOTH,
            server_name: "127.0.0.1",
            client_cert: true,
            chacha_first: false,
        },
    ];
    let mut seeds = Vec::new();
    for client in &clients {
        let config = Arc::new(client_config(pki, client));
        let flight = connect(&gateway, &config, client.server_name);
        seeds.push((client.name.to_owned(), with_pattern(SMALL_READS, &flight)));
        seeds.push((
            format!("{}-large-reads", client.name),
            with_pattern(LARGE_READS, &flight),
        ));
        if client.name == "tls13-client-cert" {
            // The same client again: its ClientHello offers the ticket of the first connection.
            let resumed = connect(&gateway, &config, client.server_name);
            seeds.push((
                "tls13-resumption".to_owned(),
                with_pattern(SMALL_READS, &resumed),
            ));
        }
    }
    write_seeds(&corpus.join("tls_accept"), seeds);
}

fn client_config(pki: &PkiFiles, client: &Client) -> ClientConfig {
    let mut provider = aws_lc_rs::default_provider();
    if client.chacha_first {
        provider
            .cipher_suites
            .sort_by_key(|s| !format!("{:?}", s.suite()).contains("CHACHA20"));
    }
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pki.ca_cert.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(client.versions)
        .unwrap()
        .with_root_certificates(roots);
    let mut config = if client.client_cert {
        let chain = CertificateDer::pem_slice_iter(pki.client_cert.as_bytes())
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_slice(pki.client_key.as_bytes()).unwrap();
        builder.with_client_auth_cert(chain, key).unwrap()
    } else {
        builder.with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = Resumption::in_memory_sessions(8);
    config
}

/// Runs one connection in memory against the gateway, the server side as the fuzz target drives
/// it; returns every byte the client sent: its flights, a request and its close_notify.
fn connect(gateway: &TlsGateway, config: &Arc<ClientConfig>, server_name: &'static str) -> Vec<u8> {
    let name = ServerName::try_from(server_name).unwrap();
    let mut client = ClientConnection::new(Arc::clone(config), name).unwrap();
    let mut acceptor = Some(Acceptor::default());
    let mut server: Option<ServerConnection> = None;
    let mut sent = Vec::new();
    let mut request_sent = false;
    for _ in 0..32 {
        let mut flight = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut flight).unwrap();
        }
        sent.extend_from_slice(&flight);
        let mut rest = flight.as_slice();
        while !rest.is_empty() {
            if let Some(a) = acceptor.as_mut() {
                a.read_tls(&mut rest).unwrap();
                match a.accept() {
                    Ok(None) => {}
                    Ok(Some(accepted)) => {
                        acceptor = None;
                        let Some((_, config)) = gateway.choose(&accepted.client_hello()) else {
                            return sent;
                        };
                        server = Some(accepted.into_connection(config).unwrap());
                    }
                    Err(_) => return sent,
                }
            } else if let Some(s) = server.as_mut() {
                s.read_tls(&mut rest).unwrap();
                if s.process_new_packets().is_err() {
                    // The server refused (no client certificate, say): what the client sent
                    // up to here is the seed.
                    return sent;
                }
            }
        }
        let Some(s) = server.as_mut() else { continue };
        let mut answer = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut answer).unwrap();
        }
        let mut rest = answer.as_slice();
        while !rest.is_empty() {
            client.read_tls(&mut rest).unwrap();
            if client.process_new_packets().is_err() {
                return sent;
            }
        }
        if !client.is_handshaking() && !request_sent {
            let request = format!("GET / HTTP/1.1\r\nHost: {server_name}\r\n\r\n");
            client.writer().write_all(request.as_bytes()).unwrap();
            client.send_close_notify();
            request_sent = true;
        } else if request_sent && !client.wants_write() {
            let mut plaintext = Vec::new();
            let _ = s.reader().read_to_end(&mut plaintext);
            return sent;
        }
    }
    panic!("the in-memory handshake with {server_name} did not settle");
}
