//! Shared fixtures for the criterion benches: certificates (from `portcullis_runtime::pki`, shaped
//! like the user guide's), desired configs built in code, compiled rustls configs, an in-memory
//! TLS handshake pump, manifests with many listeners, and request heads.
//!
//! Setup failures end the bench process with a message ([`OrExit`]): a bench that cannot set
//! up has nothing to measure.

use std::fmt::{Display, Write as _};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use portcullis_core::client_auth::{ClientAuth, PeerIdentity};
use portcullis_core::compile::{self, ShardServerConfigs, Snapshot};
use portcullis_core::desired::{
    BackendProtocol, BackendTarget, CaCertificate, ClientValidation, DesiredBackend, DesiredConfig,
    DesiredListener, DesiredPort, DesiredRoute, DesiredRule, ListenerTls, ObjectRef, PathMatch,
    PortProtocol, PrivateKey, PrivateKeyEncoding, RouteMatch, ServerCertificate, ValidationMode,
};
use portcullis_core::filters::RuleFilters;
use portcullis_core::listener_options::{
    CertificateHash, ClientIdentityRules, ListenerTlsOptions, SanPattern,
};
use portcullis_runtime::demo;
use portcullis_runtime::pki::{GuidePki, KeyKind};
use portcullis_translate::manifests::{LoadedManifests, load_text};
use portcullis_translate::{ObjectStore, TranslateOptions};
use rustls::client::Resumption;
use rustls::crypto::aws_lc_rs;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::Acceptor;
use rustls::{ClientConfig, ClientConnection, HandshakeKind, RootCertStore};

pub use portcullis_core::client_identity::sha256;

/// The port the benches' configs serve (never bound, except by the fan-out bench's shards,
/// which take a free one).
pub const BENCH_PORT: u16 = 8443;

/// The guide's server name.
pub const SERVER_NAME: &str = "example.com";

/// Capacity of the buffer that carries one flight of TLS records between the two in-memory
/// peers: a full handshake's largest flight (certificate chain, RSA signatures) is a few KiB;
/// 64 KiB never grows.
const FLIGHT_BUFFER_BYTES: usize = 64 * 1024;

/// Ends the bench with a message when setup fails.
pub trait OrExit<T> {
    fn or_exit(self, what: &str) -> T;
}

impl<T, E: Display> OrExit<T> for Result<T, E> {
    fn or_exit(self, what: &str) -> T {
        match self {
            Ok(value) => value,
            Err(e) => {
                eprintln!("bench setup failed: {what}: {e}");
                std::process::exit(2)
            }
        }
    }
}

/// The guide's certificates, parsed.
#[derive(Debug)]
pub struct Pki {
    /// The CA's and the server's key type.
    pub kind: KeyKind,
    pub client_kind: KeyKind,
    pub ca_pem: String,
    pub ca_der: CertificateDer<'static>,
    pub server_chain: Vec<CertificateDer<'static>>,
    pub server_key: PrivateKey,
    pub server_pem: (String, String),
    pub client_chain: Vec<CertificateDer<'static>>,
    pub client_key_pem: String,
}

impl Pki {
    pub fn generate(kind: KeyKind) -> Result<Self, String> {
        Self::generate_with_client_key(kind, kind)
    }

    /// The guide's certificates with a client key of `client_kind`.
    pub fn generate_with_client_key(kind: KeyKind, client_kind: KeyKind) -> Result<Self, String> {
        let guide =
            GuidePki::generate_with_client_key(kind, client_kind).map_err(|e| e.to_string())?;
        let chain = |pem: &str| {
            CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{e:?}"))
        };
        let ca_der = chain(&guide.ca.pem.cert)?
            .into_iter()
            .next()
            .ok_or("no CA certificate")?;
        let key_der = PrivateKeyDer::from_pem_slice(guide.server.key.as_bytes())
            .map_err(|e| format!("{e:?}"))?;
        let encoding = match &key_der {
            PrivateKeyDer::Pkcs1(_) => PrivateKeyEncoding::Pkcs1,
            PrivateKeyDer::Sec1(_) => PrivateKeyEncoding::Sec1,
            _ => PrivateKeyEncoding::Pkcs8,
        };
        Ok(Pki {
            kind,
            client_kind,
            ca_pem: guide.ca.pem.cert.clone(),
            ca_der,
            server_chain: chain(&guide.server.cert)?,
            server_key: PrivateKey {
                encoding,
                der: key_der.secret_der().to_vec(),
            },
            server_pem: (guide.server.cert.clone(), guide.server.key.clone()),
            client_chain: chain(&guide.client.cert)?,
            client_key_pem: guide.client.key.clone(),
        })
    }

    /// The key types in a bench name: `rsa2048`, `ecdsa_p256`, or the server's and then the
    /// client's when they differ (`rsa2048_p256_client`).
    pub fn label(&self) -> String {
        let name = |kind| match kind {
            KeyKind::Rsa2048 => "rsa2048",
            KeyKind::EcdsaP256 => "ecdsa_p256",
        };
        if self.kind == self.client_kind {
            name(self.kind).to_owned()
        } else {
            let client = match self.client_kind {
                KeyKind::Rsa2048 => "rsa_client",
                KeyKind::EcdsaP256 => "p256_client",
            };
            format!("{}_{client}", name(self.kind))
        }
    }

    /// The client leaf certificate.
    pub fn client_leaf(&self) -> Result<&CertificateDer<'static>, String> {
        self.client_chain
            .first()
            .ok_or_else(|| "no client certificate".to_owned())
    }
}

/// How the port treats client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientPolicy {
    AllowValidOnly,
    AllowInsecureFallback,
    NoClientAuth,
}

impl ClientPolicy {
    pub const ALL: [ClientPolicy; 3] = [
        ClientPolicy::AllowValidOnly,
        ClientPolicy::AllowInsecureFallback,
        ClientPolicy::NoClientAuth,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ClientPolicy::AllowValidOnly => "valid_only",
            ClientPolicy::AllowInsecureFallback => "fallback",
            ClientPolicy::NoClientAuth => "no_client_auth",
        }
    }
}

/// Listener identity restrictions (spec §7), for the cost of checking them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restrictions {
    None,
    /// One DNS SAN the client carries.
    San,
    /// The client's SHA-256.
    Hash,
    SanAndHash,
}

impl Restrictions {
    pub fn label(self) -> &'static str {
        match self {
            Restrictions::None => "no_rules",
            Restrictions::San => "san",
            Restrictions::Hash => "hash",
            Restrictions::SanAndHash => "san+hash",
        }
    }

    fn rules(self, pki: &Pki) -> Result<ClientIdentityRules, String> {
        let hash = sha256(pki.client_leaf()?);
        let san = SanPattern::Dns(SERVER_NAME.to_owned());
        Ok(match self {
            Restrictions::None => ClientIdentityRules::default(),
            Restrictions::San => ClientIdentityRules {
                subject_alt_names: vec![san],
                certificate_sha256: Vec::new(),
            },
            Restrictions::Hash => ClientIdentityRules {
                subject_alt_names: Vec::new(),
                certificate_sha256: vec![hash],
            },
            Restrictions::SanAndHash => ClientIdentityRules {
                subject_alt_names: vec![san],
                certificate_sha256: vec![hash],
            },
        })
    }
}

/// A route to a backend that is never contacted.
fn route(prefix: &str) -> DesiredRoute {
    DesiredRoute {
        route: ObjectRef::new("httpbin", "httpbin-https"),
        hostnames: vec![SERVER_NAME.to_owned()],
        rules: vec![DesiredRule {
            matches: vec![RouteMatch {
                path: PathMatch::Prefix(prefix.to_owned()),
                ..RouteMatch::default()
            }],
            filters: RuleFilters::default(),
            backends: vec![DesiredBackend {
                name: "httpbin/httpbin:8000".to_owned(),
                weight: 1,
                protocol: BackendProtocol::Http1,
                target: BackendTarget::Endpoints(vec![SocketAddr::from(([127, 0, 0, 1], 8000))]),
            }],
        }],
    }
}

/// One HTTPS port with one listener (no hostname), as the guide's, built in code.
pub fn desired(
    pki: &Pki,
    policy: ClientPolicy,
    restrictions: Restrictions,
    resumption: bool,
    route_prefix: &str,
) -> Result<DesiredConfig, String> {
    let client_validation = match policy {
        ClientPolicy::NoClientAuth => ClientValidation::NotRequested,
        ClientPolicy::AllowValidOnly | ClientPolicy::AllowInsecureFallback => {
            ClientValidation::Verify {
                mode: if policy == ClientPolicy::AllowValidOnly {
                    ValidationMode::AllowValidOnly
                } else {
                    ValidationMode::AllowInsecureFallback
                },
                trust_anchors: vec![CaCertificate {
                    der: pki.ca_der.to_vec(),
                    source: "ConfigMap agentgateway-system/ca-cert".to_owned(),
                }],
            }
        }
    };
    let options = ListenerTlsOptions {
        session_resumption: resumption,
        client_identity: restrictions.rules(pki)?,
        ..ListenerTlsOptions::default()
    };
    Ok(DesiredConfig {
        ports: vec![DesiredPort {
            port: BENCH_PORT,
            protocol: PortProtocol::Https,
            gateway: ObjectRef::new("agentgateway-system", "mtls"),
            client_validation,
            listeners: vec![DesiredListener {
                name: "https".to_owned(),
                hostname: None,
                tls: Some(ListenerTls {
                    certificate: ServerCertificate {
                        chain_der: pki.server_chain.iter().map(|c| c.to_vec()).collect(),
                        key: pki.server_key.clone(),
                        source: "Secret agentgateway-system/https-cert".to_owned(),
                    },
                    options,
                }),
                routes: vec![route(route_prefix)],
            }],
        }],
    })
}

/// The server side of one listener as a shard runs it: its shard-local `ServerConfig`s and its
/// client policy, from the real `compile`.
#[derive(Debug, Clone)]
pub struct ServerSide {
    pub configs: ShardServerConfigs,
    pub client_auth: Arc<ClientAuth>,
    pub snapshot: Arc<Snapshot>,
}

impl ServerSide {
    pub fn compile(desired: DesiredConfig) -> Result<Self, String> {
        let snapshot = compile::compile(desired, None, 1);
        if let Some(error) = snapshot.errors.first() {
            return Err(error.to_string());
        }
        let tls = snapshot
            .ports
            .first()
            .and_then(|p| p.listeners.first())
            .and_then(|l| l.tls.as_ref())
            .ok_or("no TLS listener compiled")?;
        Ok(ServerSide {
            configs: tls.shard_local_server_configs(),
            client_auth: Arc::clone(&tls.client_auth),
            snapshot: Arc::new(snapshot),
        })
    }
}

/// A rustls client as the load generator builds it: TLS 1.3, X25519, trusting the guide's CA,
/// presenting the client certificate when `with_cert`, resuming when `resumption`.
pub fn client_config(
    pki: &Pki,
    with_cert: bool,
    resumption: bool,
) -> Result<Arc<ClientConfig>, String> {
    let mut provider = aws_lc_rs::default_provider();
    provider.kx_groups = vec![aws_lc_rs::kx_group::X25519];
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca_der.clone()).map_err(|e| e.to_string())?;
    let builder = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut config = if with_cert {
        let key = PrivateKeyDer::from_pem_slice(pki.client_key_pem.as_bytes())
            .map_err(|e| format!("{e:?}"))?;
        builder
            .with_client_auth_cert(pki.client_chain.clone(), key)
            .map_err(|e| e.to_string())?
    } else {
        builder.with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = if resumption {
        Resumption::in_memory_sessions(256)
    } else {
        Resumption::disabled()
    };
    Ok(Arc::new(config))
}

/// The CPU time the calling thread has used. The handshake benches count it instead of wall
/// time: a bench that shares its CPU with another process (`loadtest/compare` runs the ceiling
/// next to a loaded Portcullis on the same CPU, so that both see the same seconds of the
/// machine) must not count the time the other process ran. About 0.3 µs per reading (a
/// system call); a handshake reads it eight times.
#[derive(Debug, Clone, Copy)]
pub struct ThreadCpuTime(Duration);

impl ThreadCpuTime {
    pub fn now() -> Self {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
        // Both fields are non-negative for this clock; `try_from` only guards the type change.
        let secs = u64::try_from(t.tv_sec).unwrap_or(0);
        let nanos = u32::try_from(t.tv_nsec).unwrap_or(0);
        ThreadCpuTime(Duration::new(secs, nanos))
    }

    pub fn elapsed(&self) -> Duration {
        Self::now().0.saturating_sub(self.0)
    }
}

/// What one in-memory handshake cost, in the thread's CPU time.
#[derive(Debug, Clone, Copy)]
pub struct HandshakeCost {
    /// Client and server together (one thread does both).
    pub total: Duration,
    /// The server's share only: ClientHello through `Acceptor`, the handshake, and the
    /// post-handshake identity check a shard runs ([`ClientAuth::identify`]).
    pub server: Duration,
    pub resumed: bool,
}

/// Runs one complete handshake between a fresh client and server connection, moving records
/// through memory until neither side has anything to send (so TLS 1.3 tickets reach the
/// client). Fails when the handshake does not complete or the server rejects the client.
pub fn handshake(client: &Arc<ClientConfig>, server: &ServerSide) -> Result<HandshakeCost, String> {
    let started = ThreadCpuTime::now();
    let name = ServerName::try_from(SERVER_NAME).map_err(|e| e.to_string())?;
    let mut c = ClientConnection::new(Arc::clone(client), name).map_err(|e| e.to_string())?;
    let mut flight = Vec::with_capacity(FLIGHT_BUFFER_BYTES);
    let mut server_time = Duration::ZERO;

    // ClientHello through the Acceptor, as a shard picks the listener by SNI.
    write_all(&mut c, &mut flight)?;
    let t = ThreadCpuTime::now();
    let mut acceptor = Acceptor::default();
    let mut input = flight.as_slice();
    let accepted = loop {
        acceptor.read_tls(&mut input).map_err(|e| e.to_string())?;
        match acceptor.accept() {
            Ok(Some(accepted)) => break accepted,
            Ok(None) if input.is_empty() => return Err("ClientHello incomplete".to_owned()),
            Ok(None) => {}
            Err((e, _)) => return Err(e.to_string()),
        }
    };
    let config = Arc::clone(
        server
            .configs
            .for_client(accepted.client_hello().cipher_suites()),
    );
    let mut s = accepted
        .into_connection(config)
        .map_err(|(e, _)| e.to_string())?;
    server_time += t.elapsed();

    loop {
        let t = ThreadCpuTime::now();
        flight.clear();
        while s.wants_write() {
            s.write_tls(&mut flight).map_err(|e| e.to_string())?;
        }
        server_time += t.elapsed();
        let server_sent = !flight.is_empty();
        feed(&mut c, &flight)?;

        flight.clear();
        write_all(&mut c, &mut flight)?;
        let client_sent = !flight.is_empty();
        let t = ThreadCpuTime::now();
        feed(&mut s, &flight)?;
        server_time += t.elapsed();
        if !server_sent && !client_sent {
            break;
        }
    }
    if c.is_handshaking() || s.is_handshaking() {
        return Err("handshake did not complete".to_owned());
    }
    let resumed = s.handshake_kind() == Some(HandshakeKind::Resumed);
    let t = ThreadCpuTime::now();
    let identity = server.client_auth.identify(s.peer_certificates(), resumed);
    server_time += t.elapsed();
    if let PeerIdentity::Rejected(why) = std::hint::black_box(identity) {
        return Err(format!("client rejected: {why}"));
    }
    Ok(HandshakeCost {
        total: started.elapsed(),
        server: server_time,
        resumed,
    })
}

fn write_all<Data>(
    conn: &mut rustls::ConnectionCommon<Data>,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    while conn.wants_write() {
        conn.write_tls(out).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn feed<Data>(conn: &mut rustls::ConnectionCommon<Data>, mut input: &[u8]) -> Result<(), String> {
    while !input.is_empty() {
        conn.read_tls(&mut input).map_err(|e| e.to_string())?;
        conn.process_new_packets().map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// A typical request head, as curl sends it through the guide (plus an API client's
/// authorization and a couple of common fields).
pub const REQUEST_HEAD: &[u8] = b"GET /get?user=42 HTTP/1.1\r\n\
Host: example.com\r\n\
User-Agent: curl/8.5.0\r\n\
Accept: */*\r\n\
Accept-Encoding: gzip, deflate\r\n\
Authorization: Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJl\r\n\
X-Request-Id: 7f3c2a9e-1b5d-4e8f-9a0b-c1d2e3f40516\r\n\
\r\n";

/// A typical backend response head (the echo backend's).
pub const RESPONSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\n\
content-type: application/json; encoding=utf-8\r\n\
access-control-allow-origin: *\r\n\
content-length: 412\r\n\
\r\n";

/// Manifests for one Gateway whose port 443 has `n` HTTPS listeners (`h{i}.example.com`), each
/// with its own HTTPRoute, all sharing the guide's certificate, CA and backend.
pub fn many_listener_manifests(pki: &Pki, n: usize) -> Vec<String> {
    let mut gateway = String::with_capacity(n * 256 + 1024);
    gateway.push_str(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: many\n  namespace: agentgateway-system\nspec:\n  gatewayClassName: agentgateway\n  tls:\n    frontend:\n      default:\n        validation:\n          mode: AllowValidOnly\n          caCertificateRefs:\n            - name: ca-cert\n              kind: ConfigMap\n              group: \"\"\n  listeners:\n",
    );
    let mut routes = String::with_capacity(n * 320);
    for i in 0..n {
        let _ = write!(
            gateway,
            "  - name: l{i}\n    protocol: HTTPS\n    port: 443\n    hostname: h{i}.example.com\n    tls:\n      mode: Terminate\n      certificateRefs:\n        - name: https-cert\n          kind: Secret\n    allowedRoutes:\n      namespaces:\n        from: All\n"
        );
        let _ = write!(
            routes,
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: r{i}\n  namespace: httpbin\nspec:\n  hostnames: [\"h{i}.example.com\"]\n  parentRefs:\n    - name: many\n      namespace: agentgateway-system\n      sectionName: l{i}\n  rules:\n    - backendRefs:\n        - name: httpbin\n          port: 8000\n"
        );
    }
    vec![
        gateway,
        routes,
        demo::tls_secret(
            "agentgateway-system",
            "https-cert",
            &pki.server_pem.0,
            &pki.server_pem.1,
        ),
        demo::ca_config_map("agentgateway-system", "ca-cert", &pki.ca_pem),
        demo::service_with_endpoint(
            "httpbin",
            "httpbin",
            8000,
            SocketAddr::from(([127, 0, 0, 1], 8000)),
        ),
    ]
}

/// Loads manifests into an object store, as `portcullis serve --manifests` does.
pub fn object_store(docs: &[String]) -> Result<ObjectStore, String> {
    let mut loaded = LoadedManifests::default();
    for (i, doc) in docs.iter().enumerate() {
        load_text(Path::new(&format!("doc-{i}.yaml")), doc, false, &mut loaded)
            .map_err(|e| e.to_string())?;
    }
    Ok(loaded.store)
}

/// Translate options as `portcullis serve --gateway-class agentgateway` uses them.
pub fn translate_options() -> TranslateOptions {
    let mut options = TranslateOptions::new(portcullis_translate::check::now());
    options.extra_gateway_class = Some(demo::GUIDE_GATEWAY_CLASS.to_owned());
    options
}

/// `n` hostnames as a port's listeners would carry them: mostly exact names, one wildcard in
/// ten, and a catch-all listener.
pub fn hostnames(n: usize) -> Vec<Option<String>> {
    let mut names: Vec<Option<String>> = (0..n)
        .map(|i| {
            Some(if i % 10 == 9 {
                format!("*.w{i}.example.com")
            } else {
                format!("h{i}.example.com")
            })
        })
        .collect();
    names.push(None);
    names
}

/// The hash of a certificate, as a rule would list it.
pub fn hash_of(der: &[u8]) -> CertificateHash {
    sha256(der)
}
