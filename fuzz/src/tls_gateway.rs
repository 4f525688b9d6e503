//! The HTTPS port the `tls_accept` target serves: manifests (a Gateway with two HTTPS listeners,
//! mutual TLS with `AllowValidOnly`, a SAN rule on one listener) translated and compiled as
//! `portcullis serve --manifests` does, with the fixed PKI in `fuzz/pki/` so that the committed
//! client flights (certificates included) stay valid for it.

use std::path::Path;
use std::sync::Arc;

use portcullis_translate::check;
use portcullis_translate::manifests::{LoadedManifests, load_text};
use portcullis_translate::{TranslateOptions, translate};
use portcullis_core::compile::{CompiledPort, ShardServerConfigs, compile};
use rustls::ServerConfig;
use rustls::server::ClientHello;

/// The port of the fuzzed listeners.
pub const PORT: u16 = 8443;

/// The server name of the exact-hostname listener (the wildcard one takes `*.example.com`).
pub const SERVER_NAME: &str = "a.example.com";

/// The SAN the wildcard listener requires of client certificates.
pub const CLIENT_SAN: &str = "client.example.com";

/// The PEM files of `fuzz/pki/`.
#[derive(Debug, Clone, Copy)]
pub struct Pki<'a> {
    pub ca_cert: &'a str,
    pub server_cert: &'a str,
    pub server_key: &'a str,
}

/// The manifests, as a user would write them.
pub fn manifests(pki: &Pki<'_>) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata:
  name: portcullis
spec:
  controllerName: portcullis.dev/gateway-controller
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: fuzz
  namespace: fuzz
spec:
  gatewayClassName: portcullis
  tls:
    frontend:
      default:
        validation:
          mode: AllowValidOnly
          caCertificateRefs:
          - group: ""
            kind: ConfigMap
            name: ca
  listeners:
  - name: exact
    protocol: HTTPS
    port: {PORT}
    hostname: {SERVER_NAME}
    tls:
      mode: Terminate
      certificateRefs:
      - name: server
  - name: wildcard
    protocol: HTTPS
    port: {PORT}
    hostname: "*.example.com"
    tls:
      mode: Terminate
      certificateRefs:
      - name: server
      options:
        portcullis.dev/verify-subject-alt-names: "{CLIENT_SAN}"
        portcullis.dev/forward-client-cert: rfc9440
---
apiVersion: v1
kind: Secret
metadata:
  name: server
  namespace: fuzz
type: kubernetes.io/tls
stringData:
  tls.crt: |
{server_cert}  tls.key: |
{server_key}---
apiVersion: v1
kind: ConfigMap
metadata:
  name: ca
  namespace: fuzz
data:
  ca.crt: |
{ca_cert}"#,
        server_cert = indent(pki.server_cert),
        server_key = indent(pki.server_key),
        ca_cert = indent(pki.ca_cert),
    )
}

fn indent(pem: &str) -> String {
    pem.lines().map(|line| format!("    {line}\n")).collect()
}

/// The compiled port and this thread's copies of its listeners' configs, as a shard holds them.
#[derive(Debug)]
pub struct TlsGateway {
    port: Arc<CompiledPort>,
    configs: Vec<Option<ShardServerConfigs>>,
}

impl TlsGateway {
    /// Compiles the manifests; fails if they do not give exactly the two HTTPS listeners.
    pub fn new(pki: &Pki<'_>) -> Result<Self, String> {
        let mut loaded = LoadedManifests::default();
        load_text(
            Path::new("tls_gateway.yaml"),
            &manifests(pki),
            false,
            &mut loaded,
        )
        .map_err(|e| e.to_string())?;
        let translation = translate(&loaded.store, &TranslateOptions::new(check::now()));
        let snapshot = compile(translation.desired, None, 1);
        if let Some(error) = snapshot.errors.first() {
            return Err(error.to_string());
        }
        let port = snapshot
            .port(PORT)
            .filter(|p| p.listeners.len() == 2)
            .ok_or(format!("port {PORT} with two listeners was not compiled"))?;
        let configs = port
            .listeners
            .iter()
            .map(|l| l.tls.as_ref().map(|t| t.shard_local_server_configs()))
            .collect();
        Ok(Self {
            port: Arc::clone(port),
            configs,
        })
    }

    /// The listener (by SNI) and its config for a ClientHello, as the runtime's
    /// `ShardPort::choose` picks them; `None`: refused with `unrecognized_name`.
    pub fn choose(&self, hello: &ClientHello<'_>) -> Option<(usize, Arc<ServerConfig>)> {
        let index = self.port.hosts.resolve(hello.server_name())?;
        let configs = self.configs.get(index)?.as_ref()?;
        Some((index, Arc::clone(configs.for_client(hello.cipher_suites()))))
    }
}
