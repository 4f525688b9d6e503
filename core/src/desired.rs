//! The desired configuration: what `translate` produces from Kubernetes objects and `compile`
//! turns into a runnable snapshot. Plain data, no IO, no Kubernetes types: the data plane never
//! sees the API objects, only this.
//!
//! Only what is *programmed* appears here. A listener whose server certificate could not be
//! resolved, or that lost a port conflict, is absent (its status says why); a port whose CA
//! references are all invalid is present with [`ClientValidation::RefuseAll`] so that it fails
//! closed instead of silently serving without mutual TLS.

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::filters::RuleFilters;
use crate::listener_options::ListenerTlsOptions;

/// Everything the data plane should serve, one entry per TCP port, sorted by port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DesiredConfig {
    pub ports: Vec<DesiredPort>,
}

impl DesiredConfig {
    pub fn port(&self, port: u16) -> Option<&DesiredPort> {
        self.ports.iter().find(|p| p.port == port)
    }
}

/// A namespaced object's identity, as `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectRef {
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What is spoken on a port. Gateway API forbids HTTP and HTTPS listeners sharing a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PortProtocol {
    Http,
    Https,
}

/// One TCP port of one Gateway, with the listeners that share it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DesiredPort {
    pub port: u16,
    pub protocol: PortProtocol,
    /// The Gateway that owns the port (two Gateways never share one: the later loses it).
    pub gateway: ObjectRef,
    /// Client-certificate policy, bound to the port: every HTTPS listener on it shares it
    /// (spec §2). Always [`ClientValidation::NotRequested`] for HTTP ports.
    pub client_validation: ClientValidation,
    pub listeners: Vec<DesiredListener>,
}

/// How clients are verified on a port (spec §3, §4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum ClientValidation {
    /// No frontend validation covers this port: no CertificateRequest is sent.
    NotRequested,
    /// Ask for a client certificate and check it against `trust_anchors`.
    Verify {
        mode: ValidationMode,
        /// The union of every valid CA reference, in reference order.
        trust_anchors: Vec<CaCertificate>,
    },
    /// Every CA reference of the port's policy is invalid: refuse every TLS client.
    RefuseAll { reason: String },
}

impl ClientValidation {
    pub fn mode(&self) -> Option<ValidationMode> {
        match self {
            ClientValidation::Verify { mode, .. } => Some(*mode),
            ClientValidation::NotRequested | ClientValidation::RefuseAll { .. } => None,
        }
    }
}

/// The Gateway API's `FrontendValidationModeType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ValidationMode {
    /// Only clients with a certificate that verifies complete the handshake.
    AllowValidOnly,
    /// Ask for a certificate; accept none or an invalid one, marking the connection unverified.
    AllowInsecureFallback,
}

/// One trusted CA certificate and where it came from.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct CaCertificate {
    #[serde(serialize_with = "serialize_len")]
    pub der: Vec<u8>,
    /// For logs and `/config`: for example `ConfigMap agentgateway-system/ca-cert`.
    pub source: String,
}

impl fmt::Debug for CaCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaCertificate")
            .field("source", &self.source)
            .field("der_len", &self.der.len())
            .finish()
    }
}

/// One programmed listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DesiredListener {
    /// The listener's `name` in the Gateway (unique within it).
    pub name: String,
    /// `None` matches any host (and clients without SNI).
    pub hostname: Option<String>,
    /// Present exactly for HTTPS listeners.
    pub tls: Option<ListenerTls>,
    /// Routes attached to this listener, in Gateway API tie-break order: oldest first
    /// (creationTimestamp), then by `namespace/name`.
    pub routes: Vec<DesiredRoute>,
}

/// The TLS side of an HTTPS listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListenerTls {
    pub certificate: ServerCertificate,
    pub options: ListenerTlsOptions,
}

/// A parsed, checked server certificate chain and its private key.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct ServerCertificate {
    /// Leaf first, DER.
    #[serde(serialize_with = "serialize_chain_lens")]
    pub chain_der: Vec<Vec<u8>>,
    /// Never serialized: `/config` shows only that a key is there.
    #[serde(serialize_with = "serialize_redacted")]
    pub key: PrivateKey,
    /// For logs and `/config`: for example `Secret agentgateway-system/https-cert`.
    pub source: String,
}

impl fmt::Debug for ServerCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCertificate")
            .field("source", &self.source)
            .field("chain_len", &self.chain_der.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

/// A private key in one of the encodings `tls.key` may carry.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKey {
    pub encoding: PrivateKeyEncoding,
    pub der: Vec<u8>,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey({:?}, <redacted>)", self.encoding)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PrivateKeyEncoding {
    /// `RSA PRIVATE KEY`
    Pkcs1,
    /// `PRIVATE KEY`
    Pkcs8,
    /// `EC PRIVATE KEY`
    Sec1,
}

/// An HTTPRoute or GRPCRoute as attached to one listener. Translation never attaches both kinds
/// with intersecting hostnames to one listener (the Gateway API keeps the older route), so the
/// routes sharing a hostname of a listener are all of one kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredRoute {
    pub route: ObjectRef,
    /// The route's hostnames intersected with the listener's hostname. Empty means the route
    /// takes every host the listener accepts.
    pub hostnames: Vec<String>,
    pub rules: Vec<DesiredRule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredRule {
    /// Empty means one match of path prefix `/` (the API's default).
    pub matches: Vec<RouteMatch>,
    /// What the rule's filters do to the requests it matched (header changes, a redirect).
    pub filters: RuleFilters,
    /// Empty means requests matching this rule get 500, as the API requires when no backend is
    /// configured or resolvable (unless the rule redirects).
    pub backends: Vec<DesiredBackend>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteMatch {
    pub path: PathMatch,
    /// Upper-case HTTP method, for example `GET`.
    pub method: Option<String>,
    pub headers: Vec<HeaderMatch>,
    pub query_params: Vec<QueryParamMatch>,
}

impl Default for RouteMatch {
    fn default() -> Self {
        Self {
            path: PathMatch::Prefix("/".to_owned()),
            method: None,
            headers: Vec::new(),
            query_params: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PathMatch {
    Exact(String),
    /// Element-wise prefix: `/foo` matches `/foo` and `/foo/bar`, not `/foobar`.
    Prefix(String),
    /// A GRPCRoute method match, on the gRPC path `/<service>/<method>`: each part given must
    /// equal the request's exactly; a part not given takes any (non-empty, without `/`).
    /// Translation always gives at least one.
    Grpc {
        service: Option<String>,
        method: Option<String>,
    },
}

/// Exact header match; names compare case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderMatch {
    pub name: String,
    pub value: String,
}

/// Exact query parameter match; names compare exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryParamMatch {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredBackend {
    /// For logs and metrics: `namespace/service:port`.
    pub name: String,
    /// Share of the rule's traffic (backendRef `weight`, default 1). Zero takes no traffic.
    pub weight: u32,
    /// What the backend speaks; requests are translated to it whatever the client speaks.
    pub protocol: BackendProtocol,
    pub target: BackendTarget,
}

/// The protocol spoken to a backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BackendProtocol {
    /// HTTP/1.1 over TCP: every Service port unless it says otherwise.
    #[default]
    Http1,
    /// HTTP/2 without TLS (prior knowledge): the Service port's `appProtocol` is
    /// `kubernetes.io/h2c`, or the backend is a GRPCRoute's.
    H2c,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackendTarget {
    /// Ready endpoints of the Service's EndpointSlices. Empty: 503 (no ready endpoint).
    Endpoints(Vec<SocketAddr>),
    /// The reference did not resolve (missing Service, wrong kind, not permitted): requests
    /// sent to this backend get 500, as the Gateway API requires.
    Invalid { reason: String },
}

fn serialize_len<S: serde::Serializer>(der: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("<{} bytes DER>", der.len()))
}

fn serialize_chain_lens<S: serde::Serializer>(chain: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("<{} certificate(s) DER>", chain.len()))
}

fn serialize_redacted<S: serde::Serializer>(_: &PrivateKey, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("<redacted>")
}
