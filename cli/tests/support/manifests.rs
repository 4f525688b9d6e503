//! Manifests for the tests, as YAML a user would write: one Gateway `gw` in namespace
//! [`NS`], its routes, Secrets, CA ConfigMaps and Services.
//!
//! ```ignore
//! let docs = vec![
//!     GatewayYaml::new()
//!         .default_validation(valid_only(&["ca"]))
//!         .listener(https("https", port, "server-cert"))
//!         .yaml(),
//!     route("r", &["example.com"], &rule_to("echo")),
//!     server_secret("server-cert", &pki.server),
//!     ca_config_map("ca", &pki.ca.pem.cert),
//!     service("echo", echo_addr),
//! ];
//! let gw = Gateway::start(desired(&docs));
//! ```

use std::fmt::Write as _;
use std::net::SocketAddr;

use portcullis_runtime::demo;
use portcullis_runtime::pki::CertKeyPem;

/// The namespace of every test object.
pub const NS: &str = "tests";
/// The `gatewayClassName` the tests serve.
pub const CLASS: &str = "portcullis";
/// The Gateway's name.
pub const GATEWAY: &str = "gw";
/// The port every test Service exposes (its endpoints listen elsewhere).
pub const SERVICE_PORT: u16 = 8000;

/// A frontend validation mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    AllowValidOnly,
    AllowInsecureFallback,
}

/// `validation:` of `spec.tls.frontend.default` or of a `perPort` entry.
#[derive(Debug, Clone)]
pub struct Validation {
    mode: Mode,
    /// `(kind, name)` of each CA reference, in namespace [`NS`].
    ca_refs: Vec<(&'static str, String)>,
}

/// `AllowValidOnly` trusting the CA ConfigMaps `cas`.
pub fn valid_only(cas: &[&str]) -> Validation {
    Validation::new(Mode::AllowValidOnly, cas)
}

/// `AllowInsecureFallback` with the CA ConfigMaps `cas`.
pub fn insecure_fallback(cas: &[&str]) -> Validation {
    Validation::new(Mode::AllowInsecureFallback, cas)
}

impl Validation {
    pub fn new(mode: Mode, cas: &[&str]) -> Self {
        Self {
            mode,
            ca_refs: cas.iter().map(|c| ("ConfigMap", (*c).to_owned())).collect(),
        }
    }

    /// Adds a CA reference of kind `Secret` (key `ca.crt`).
    pub fn secret_ca(mut self, name: &str) -> Self {
        self.ca_refs.push(("Secret", name.to_owned()));
        self
    }

    fn write(&self, out: &mut String, indent: usize) {
        let pad = " ".repeat(indent);
        let mode = match self.mode {
            Mode::AllowValidOnly => "AllowValidOnly",
            Mode::AllowInsecureFallback => "AllowInsecureFallback",
        };
        let _ = writeln!(out, "{pad}validation:");
        let _ = writeln!(out, "{pad}  mode: {mode}");
        let _ = writeln!(out, "{pad}  caCertificateRefs:");
        for (kind, name) in &self.ca_refs {
            let _ = writeln!(out, "{pad}    - name: {name}");
            let _ = writeln!(out, "{pad}      kind: {kind}");
            let _ = writeln!(out, "{pad}      group: \"\"");
        }
    }
}

/// One listener of the Gateway.
#[derive(Debug, Clone)]
pub struct Listener {
    name: String,
    port: u16,
    /// `None`: plain HTTP.
    secret: Option<String>,
    hostname: Option<String>,
    options: Vec<(String, String)>,
}

/// An HTTPS listener terminating TLS with the `kubernetes.io/tls` Secret `secret`.
pub fn https(name: &str, port: u16, secret: &str) -> Listener {
    Listener {
        name: name.to_owned(),
        port,
        secret: Some(secret.to_owned()),
        hostname: None,
        options: Vec::new(),
    }
}

/// A plain HTTP listener.
pub fn http(name: &str, port: u16) -> Listener {
    Listener {
        name: name.to_owned(),
        port,
        secret: None,
        hostname: None,
        options: Vec::new(),
    }
}

impl Listener {
    pub fn hostname(mut self, hostname: &str) -> Self {
        self.hostname = Some(hostname.to_owned());
        self
    }

    /// A `tls.options` entry.
    pub fn option(mut self, key: &str, value: &str) -> Self {
        self.options.push((key.to_owned(), value.to_owned()));
        self
    }

    fn write(&self, out: &mut String) {
        let protocol = if self.secret.is_some() {
            "HTTPS"
        } else {
            "HTTP"
        };
        let _ = writeln!(out, "  - name: {}", self.name);
        let _ = writeln!(out, "    protocol: {protocol}");
        let _ = writeln!(out, "    port: {}", self.port);
        if let Some(hostname) = &self.hostname {
            let _ = writeln!(out, "    hostname: \"{hostname}\"");
        }
        if let Some(secret) = &self.secret {
            out.push_str("    tls:\n      mode: Terminate\n      certificateRefs:\n");
            let _ = writeln!(out, "        - name: {secret}\n          kind: Secret");
            if !self.options.is_empty() {
                out.push_str("      options:\n");
                for (k, v) in &self.options {
                    let _ = writeln!(out, "        {k}: \"{v}\"");
                }
            }
        }
        out.push_str("    allowedRoutes:\n      namespaces:\n        from: All\n");
    }
}

/// The Gateway `gw`.
#[derive(Debug, Clone, Default)]
pub struct GatewayYaml {
    default: Option<Validation>,
    per_port: Vec<(u16, Validation)>,
    listeners: Vec<Listener>,
}

impl GatewayYaml {
    pub fn new() -> Self {
        Self::default()
    }

    /// `spec.tls.frontend.default.validation`.
    pub fn default_validation(mut self, validation: Validation) -> Self {
        self.default = Some(validation);
        self
    }

    /// A `spec.tls.frontend.perPort` entry.
    pub fn per_port(mut self, port: u16, validation: Validation) -> Self {
        self.per_port.push((port, validation));
        self
    }

    pub fn listener(mut self, listener: Listener) -> Self {
        self.listeners.push(listener);
        self
    }

    pub fn yaml(&self) -> String {
        let mut out = format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: {GATEWAY}\n  namespace: {NS}\nspec:\n  gatewayClassName: {CLASS}\n"
        );
        if self.default.is_some() || !self.per_port.is_empty() {
            out.push_str("  tls:\n    frontend:\n      default:\n");
            match &self.default {
                Some(v) => v.write(&mut out, 8),
                None => out.push_str("        {}\n"),
            }
            if !self.per_port.is_empty() {
                out.push_str("      perPort:\n");
                for (port, v) in &self.per_port {
                    let _ = writeln!(out, "        - port: {port}\n          tls:");
                    v.write(&mut out, 12);
                }
            }
        }
        out.push_str("  listeners:\n");
        for listener in &self.listeners {
            listener.write(&mut out);
        }
        out
    }
}

/// An HTTPRoute on the Gateway with these hostnames (none: every host) and `rules` (YAML list
/// items, as [`rule_to`] writes them).
pub fn route(name: &str, hostnames: &[&str], rules: &str) -> String {
    let mut out = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: {name}\n  namespace: {NS}\nspec:\n  parentRefs:\n    - name: {GATEWAY}\n      namespace: {NS}\n"
    );
    if !hostnames.is_empty() {
        out.push_str("  hostnames:\n");
        for h in hostnames {
            let _ = writeln!(out, "  - \"{h}\"");
        }
    }
    out.push_str("  rules:\n");
    out.push_str(rules);
    out
}

/// A rule without matches (every request) to one Service.
pub fn rule_to(service: &str) -> String {
    rule_with_matches("", &[(service, 1)])
}

/// A rule with `matches` (YAML list items at the indentation of a rule's `matches:`, e.g.
/// `"    - path: {type: Exact, value: /x}\n"`) to weighted Services.
pub fn rule_with_matches(matches: &str, backends: &[(&str, u32)]) -> String {
    let mut out = String::from("  - ");
    if !matches.is_empty() {
        out.push_str("matches:\n");
        out.push_str(matches);
        out.push_str("    ");
    }
    out.push_str("backendRefs:\n");
    for (service, weight) in backends {
        let _ = writeln!(
            out,
            "    - name: {service}\n      port: {SERVICE_PORT}\n      weight: {weight}"
        );
    }
    out
}

/// The `kubernetes.io/tls` Secret `name` holding a server certificate and key.
/// One HTTPS port without client validation (the server certificate from `server`),
/// routing everything to `backend`.
pub fn one_https_port(port: u16, server: &CertKeyPem, backend: SocketAddr) -> Vec<String> {
    vec![
        GatewayYaml::new()
            .listener(https("https", port, "server-cert"))
            .yaml(),
        route("all", &[], &rule_to("backend")),
        server_secret("server-cert", server),
        service("backend", backend),
    ]
}

pub fn server_secret(name: &str, server: &CertKeyPem) -> String {
    demo::tls_secret(NS, name, &server.cert, &server.key)
}

/// The ConfigMap `name` with key `ca.crt` holding `pem` (one or more CA certificates).
pub fn ca_config_map(name: &str, pem: &str) -> String {
    demo::ca_config_map(NS, name, pem)
}

/// The Service `name` with one ready endpoint, `backend`.
pub fn service(name: &str, backend: SocketAddr) -> String {
    demo::service_with_endpoint(NS, name, SERVICE_PORT, backend)
}

/// The Service `name` with ready endpoints on several IP addresses and one port number, as
/// an EndpointSlice lists the pods of a Deployment (`endpoints` must share their port).
pub fn service_with_endpoints(name: &str, endpoints: &[SocketAddr]) -> String {
    let first = endpoints.first().expect("at least one endpoint");
    assert!(endpoints.iter().all(|e| e.port() == first.port()));
    let addresses: Vec<String> = endpoints
        .iter()
        .map(|e| format!("\"{}\"", e.ip()))
        .collect();
    service(name, *first).replace(
        &format!("- addresses: [\"{}\"]", first.ip()),
        &format!("- addresses: [{}]", addresses.join(", ")),
    )
}

/// The Service `name` whose only endpoint, `backend`, is not ready.
pub fn service_not_ready(name: &str, backend: SocketAddr) -> String {
    service(name, backend).replace("ready: true", "ready: false")
}
