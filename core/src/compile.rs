//! `compile`: desired config -> an immutable [`Snapshot`] the shards can run.
//!
//! Everything that can fail or costs CPU happens here, on the control thread: PEM is already
//! parsed by translate; here the rustls `ServerConfig`s, verifiers, ticket keys, SNI resolvers
//! and route tables are built. A listener that cannot be built is left out and reported, and
//! never takes its port's other listeners (or other ports) with it.
//!
//! Shards never share mutable state through a snapshot: it is read-only, and each shard makes
//! its own copies of every `ServerConfig` ([`CompiledTls::shard_local_server_configs`]).

use std::collections::HashMap;
use std::sync::Arc;

use ::aws_lc_rs::digest;
use rustls::compress::CompressionCache;
use rustls::server::NoServerSessionStorage;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{CipherSuite, ServerConfig, version};

use crate::certs;
use crate::client_auth::ClientAuth;
use crate::desired::{
    ClientValidation, DesiredConfig, DesiredListener, DesiredPort, ListenerTls, ObjectRef,
    PortProtocol, ServerCertificate,
};
use crate::routing::RouteTable;
use crate::sni::HostResolver;
use crate::suites;
use crate::tickets::TicketKeys;

/// The application protocols Portcullis speaks to clients, preferred first: HTTP/2, then
/// HTTP/1.1 (which clients that send no ALPN get too).
pub const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Tickets sent after a full TLS 1.3 handshake. One is enough for the next connection, and
/// each resumed handshake issues a fresh one; more would cost an encryption each for nothing.
const TLS13_TICKETS_PER_HANDSHAKE: usize = 1;

/// One immutable, runnable configuration. Published to every shard as a whole.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases by one per published change (config or ticket-key rotation).
    pub generation: u64,
    pub ports: Vec<Arc<CompiledPort>>,
    /// What this was compiled from, for `/config` (keys redacted by its serializer).
    pub desired: Arc<DesiredConfig>,
    /// Listeners left out because they could not be built.
    pub errors: Vec<CompileError>,
}

impl Snapshot {
    pub fn empty() -> Self {
        Snapshot {
            generation: 0,
            ports: Vec::new(),
            desired: Arc::new(DesiredConfig::default()),
            errors: Vec::new(),
        }
    }

    pub fn port(&self, port: u16) -> Option<&Arc<CompiledPort>> {
        self.ports.iter().find(|p| p.port == port)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("port {port} listener {listener:?}: {message}")]
pub struct CompileError {
    pub port: u16,
    pub listener: String,
    pub message: String,
}

/// One port, ready to serve.
#[derive(Debug)]
pub struct CompiledPort {
    pub port: u16,
    pub protocol: PortProtocol,
    pub gateway: ObjectRef,
    pub listeners: Vec<CompiledListener>,
    /// SNI and Host -> index into `listeners`.
    pub hosts: HostResolver,
}

#[derive(Debug)]
pub struct CompiledListener {
    pub name: String,
    pub hostname: Option<String>,
    /// Present exactly on HTTPS ports.
    pub tls: Option<CompiledTls>,
    pub routes: RouteTable,
}

/// A listener's TLS: the template config and what it was built from.
#[derive(Debug, Clone)]
pub struct CompiledTls {
    server_config: Arc<ServerConfig>,
    pub client_auth: Arc<ClientAuth>,
    certified_key: Arc<CertifiedKey>,
    ticket_keys: Option<TicketKeys>,
    /// SHA-256 over everything a resumed session relies on; a change means new ticket keys.
    fingerprint: [u8; 32],
}

impl CompiledTls {
    /// Copies of the listener's `ServerConfig` for one shard. rustls configs share their
    /// session cache between clones; ours has none (stateless tickets), and these copies give
    /// the shard its own reference counts, so handshakes never touch another core's memory.
    pub fn shard_local_server_configs(&self) -> ShardServerConfigs {
        let mut client_order = (*self.server_config).clone();
        client_order.ignore_client_order = false;
        ShardServerConfigs {
            server_order: Arc::new((*self.server_config).clone()),
            client_order: Arc::new(client_order),
        }
    }

    pub fn resumption_enabled(&self) -> bool {
        self.ticket_keys.is_some()
    }

    /// The ticket keys in use (tests check that sessions are bound to the policy).
    pub fn ticket_keys(&self) -> Option<&TicketKeys> {
        self.ticket_keys.as_ref()
    }
}

/// One shard's copies of a listener's `ServerConfig`, identical but for whose order of cipher
/// suites decides ([`suites`]).
#[derive(Debug, Clone)]
pub struct ShardServerConfigs {
    server_order: Arc<ServerConfig>,
    client_order: Arc<ServerConfig>,
}

impl ShardServerConfigs {
    /// The config for a ClientHello offering `offered` (in the client's order).
    pub fn for_client(&self, offered: &[CipherSuite]) -> &Arc<ServerConfig> {
        if suites::client_prefers_chacha(offered) {
            &self.client_order
        } else {
            &self.server_order
        }
    }
}

/// Compiles `desired` into snapshot `generation`. Ticket keys of listeners whose TLS policy is
/// unchanged since `previous` are kept, so unchanged listeners keep resuming across reloads.
pub fn compile(desired: DesiredConfig, previous: Option<&Snapshot>, generation: u64) -> Snapshot {
    let previous_keys = previous.map(previous_ticket_keys).unwrap_or_default();
    let mut signing_keys = SigningKeys::default();
    let mut errors = Vec::new();
    let ports = desired
        .ports
        .iter()
        .map(|port| {
            Arc::new(compile_port(
                port,
                &previous_keys,
                &mut signing_keys,
                &mut errors,
            ))
        })
        .collect();
    Snapshot {
        generation,
        ports,
        desired: Arc::new(desired),
        errors,
    }
}

/// The same configuration with every listener's ticket keys rotated (see
/// [`crate::tickets::TICKET_KEY_ROTATION_SECS`]). A listener whose keys cannot be rotated
/// (the random source failed) keeps its current ones, and the failure is reported.
pub fn rotate_ticket_keys(current: &Snapshot, generation: u64) -> Snapshot {
    let mut errors = Vec::new();
    let ports = current
        .ports
        .iter()
        .map(|port| {
            let listeners = port
                .listeners
                .iter()
                .map(|listener| CompiledListener {
                    name: listener.name.clone(),
                    hostname: listener.hostname.clone(),
                    tls: listener.tls.as_ref().map(|tls| {
                        tls.with_rotated_keys().unwrap_or_else(|message| {
                            errors.push(CompileError {
                                port: port.port,
                                listener: listener.name.clone(),
                                message,
                            });
                            tls.clone()
                        })
                    }),
                    routes: listener.routes.clone(),
                })
                .collect();
            Arc::new(CompiledPort {
                port: port.port,
                protocol: port.protocol,
                gateway: port.gateway.clone(),
                listeners,
                hosts: port.hosts.clone(),
            })
        })
        .collect();
    Snapshot {
        generation,
        ports,
        desired: Arc::clone(&current.desired),
        errors,
    }
}

impl CompiledTls {
    fn with_rotated_keys(&self) -> Result<CompiledTls, String> {
        let keys = match &self.ticket_keys {
            Some(keys) => Some(keys.rotated().map_err(|e| e.to_string())?),
            None => None,
        };
        build_tls(
            Arc::clone(&self.client_auth),
            Arc::clone(&self.certified_key),
            keys,
            self.fingerprint,
        )
    }
}

type KeyIndex = HashMap<(u16, String), ([u8; 32], TicketKeys)>;

fn previous_ticket_keys(previous: &Snapshot) -> KeyIndex {
    let mut index = KeyIndex::new();
    for port in &previous.ports {
        for listener in &port.listeners {
            if let Some(tls) = &listener.tls
                && let Some(keys) = &tls.ticket_keys
            {
                index.insert(
                    (port.port, listener.name.clone()),
                    (tls.fingerprint, keys.clone()),
                );
            }
        }
    }
    index
}

/// Signing keys built during one compile, one per distinct certificate and key: loading a
/// key costs aws-lc hundreds of microseconds (RSA), and listeners often share a certificate.
#[derive(Default)]
struct SigningKeys<'d> {
    by_certificate: HashMap<CertificateId<'d>, Arc<CertifiedKey>>,
}

/// A certificate by content: its chain and its private key (DER).
type CertificateId<'d> = (&'d [Vec<u8>], &'d [u8]);

impl<'d> SigningKeys<'d> {
    fn get(&mut self, certificate: &'d ServerCertificate) -> Result<Arc<CertifiedKey>, String> {
        let id = (
            certificate.chain_der.as_slice(),
            certificate.key.der.as_slice(),
        );
        if let Some(key) = self.by_certificate.get(&id) {
            return Ok(Arc::clone(key));
        }
        let key = Arc::new(
            certs::certified_key(&certificate.chain_der, &certificate.key)
                .map_err(|e| format!("{}: {e}", certificate.source))?,
        );
        self.by_certificate.insert(id, Arc::clone(&key));
        Ok(key)
    }
}

fn compile_port<'d>(
    port: &'d DesiredPort,
    previous_keys: &KeyIndex,
    signing_keys: &mut SigningKeys<'d>,
    errors: &mut Vec<CompileError>,
) -> CompiledPort {
    let mut listeners = Vec::with_capacity(port.listeners.len());
    for listener in &port.listeners {
        let tls = match (&listener.tls, port.protocol) {
            (Some(tls), PortProtocol::Https) => {
                match compile_tls(port, listener, tls, previous_keys, signing_keys) {
                    Ok(compiled) => Some(compiled),
                    Err(message) => {
                        errors.push(CompileError {
                            port: port.port,
                            listener: listener.name.clone(),
                            message,
                        });
                        continue;
                    }
                }
            }
            (None, PortProtocol::Http) => None,
            (Some(_), PortProtocol::Http) | (None, PortProtocol::Https) => {
                errors.push(CompileError {
                    port: port.port,
                    listener: listener.name.clone(),
                    message: "TLS settings do not match the port's protocol".to_owned(),
                });
                continue;
            }
        };
        listeners.push(CompiledListener {
            name: listener.name.clone(),
            hostname: listener.hostname.clone(),
            tls,
            routes: RouteTable::new(&listener.routes),
        });
    }
    let hosts = HostResolver::new(listeners.iter().map(|l| l.hostname.as_deref()));
    CompiledPort {
        port: port.port,
        protocol: port.protocol,
        gateway: port.gateway.clone(),
        listeners,
        hosts,
    }
}

fn compile_tls<'d>(
    port: &DesiredPort,
    listener: &DesiredListener,
    tls: &'d ListenerTls,
    previous_keys: &KeyIndex,
    signing_keys: &mut SigningKeys<'d>,
) -> Result<CompiledTls, String> {
    let client_auth = Arc::new(
        ClientAuth::new(
            &port.client_validation,
            &tls.options.client_identity,
            tls.options.forward_client_cert,
        )
        .map_err(|e| e.to_string())?,
    );
    let certified_key = signing_keys.get(&tls.certificate)?;
    let fingerprint = tls_fingerprint(port, listener, tls);
    let ticket_keys = if tls.options.session_resumption {
        match previous_keys.get(&(port.port, listener.name.clone())) {
            Some((previous_fingerprint, keys)) if *previous_fingerprint == fingerprint => {
                Some(keys.clone())
            }
            _ => Some(TicketKeys::generate().map_err(|e| e.to_string())?),
        }
    } else {
        None
    };
    build_tls(client_auth, certified_key, ticket_keys, fingerprint)
}

fn build_tls(
    client_auth: Arc<ClientAuth>,
    certified_key: Arc<CertifiedKey>,
    ticket_keys: Option<TicketKeys>,
    fingerprint: [u8; 32],
) -> Result<CompiledTls, String> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(suites::server_provider()))
        .with_protocol_versions(&[&version::TLS13, &version::TLS12])
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(client_auth.rustls_verifier())
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(Arc::clone(&certified_key))));
    config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
    // `ShardServerConfigs` flips this for clients that put ChaCha20 first.
    config.ignore_client_order = true;
    // Resumption is by stateless tickets only: a server-side session cache would be shared
    // mutable state (and a lock) across shards.
    config.session_storage = Arc::new(NoServerSessionStorage {});
    // Certificate compression's cache is a Mutex shared by all clones of a config.
    config.cert_compression_cache = Arc::new(CompressionCache::Disabled);
    config.max_early_data_size = 0;
    match &ticket_keys {
        Some(keys) => {
            config.ticketer = Arc::new(keys.clone());
            config.send_tls13_tickets = TLS13_TICKETS_PER_HANDSHAKE;
        }
        None => config.send_tls13_tickets = 0,
    }
    Ok(CompiledTls {
        server_config: Arc::new(config),
        client_auth,
        certified_key,
        ticket_keys,
        fingerprint,
    })
}

/// Everything a resumed session stands on: the port, the listener, the client policy with
/// every CA, the identity rules and the server certificate.
fn tls_fingerprint(port: &DesiredPort, listener: &DesiredListener, tls: &ListenerTls) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut field = |bytes: &[u8]| {
        ctx.update(&(bytes.len() as u64).to_be_bytes());
        ctx.update(bytes);
    };
    field(&port.port.to_be_bytes());
    field(listener.name.as_bytes());
    field(listener.hostname.as_deref().unwrap_or_default().as_bytes());
    match &port.client_validation {
        ClientValidation::NotRequested => field(b"not-requested"),
        ClientValidation::RefuseAll { .. } => field(b"refuse-all"),
        ClientValidation::Verify {
            mode,
            trust_anchors,
        } => {
            field(format!("verify {mode:?}").as_bytes());
            for ca in trust_anchors {
                field(&ca.der);
            }
        }
    }
    field(format!("{:?}", tls.options).as_bytes());
    for der in &tls.certificate.chain_der {
        field(der);
    }
    let d = ctx.finish();
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}
