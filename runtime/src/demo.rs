//! `portcullis demo`: the user guide's mTLS gateway on this machine, with no cluster.
//!
//! Writes, in a folder, the guide's certificates (made as its `openssl` commands make them)
//! and its Gateway, HTTPRoute, Secret and ConfigMap as manifests, plus the Service and
//! EndpointSlice that point the route at a built-in echo backend. The folder is then served
//! and watched: editing `gateway.yaml` (adding the guide's `perPort` block, say) takes effect
//! live. Files that already exist are kept, so a second run serves your edits.

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::pki::{GuidePki, KeyKind};
use crate::serve::PortsReport;

/// The `gatewayClassName` of the guide's manifests, served without a GatewayClass object.
pub const GUIDE_GATEWAY_CLASS: &str = "agentgateway";

/// The ports of the guide's Gateway.
pub const GUIDE_PORTS: [u16; 2] = [8443, 8444];

/// The guide's Gateway, default step (`AllowValidOnly` on both ports).
pub const GUIDE_GATEWAY: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: mtls
  namespace: agentgateway-system
spec:
  gatewayClassName: agentgateway
  tls:
    frontend:
      default:
        validation:
          mode: AllowValidOnly
          caCertificateRefs:
            - name: ca-cert
              kind: ConfigMap
              group: ""
  listeners:
  - name: https-8443
    protocol: HTTPS
    port: 8443
    tls:
      mode: Terminate
      certificateRefs:
        - name: https-cert
          kind: Secret
    allowedRoutes:
      namespaces:
        from: All
  - name: https-8444
    protocol: HTTPS
    port: 8444
    tls:
      mode: Terminate
      certificateRefs:
        - name: https-cert
          kind: Secret
    allowedRoutes:
      namespaces:
        from: All
"#;

/// The guide's `perPort` block, to add under `spec.tls.frontend` of [`GUIDE_GATEWAY`].
pub const GUIDE_PER_PORT_BLOCK: &str = r#"      perPort:
        - port: 8444
          tls:
            validation:
              mode: AllowInsecureFallback
              caCertificateRefs:
                - name: ca-cert
                  kind: ConfigMap
                  group: ""
"#;

/// The guide's Gateway, perPort step (`AllowInsecureFallback` on 8444).
pub fn guide_gateway_per_port() -> String {
    GUIDE_GATEWAY.replace(
        "  listeners:\n",
        &format!("{GUIDE_PER_PORT_BLOCK}  listeners:\n"),
    )
}

/// The guide's HTTPRoute.
pub const GUIDE_ROUTE: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: httpbin-https
  namespace: httpbin
  labels:
    example: httpbin-route
spec:
  hostnames:
  - "example.com"
  parentRefs:
    - name: mtls
      namespace: agentgateway-system
  rules:
    - backendRefs:
        - name: httpbin
          port: 8000
"#;

/// The files the demo writes.
#[derive(Debug)]
pub struct DemoFolder {
    pub dir: PathBuf,
}

/// The Secret `https-cert` (as `kubectl create secret tls` makes it).
pub fn tls_secret(namespace: &str, name: &str, cert_pem: &str, key_pem: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {namespace}\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
        BASE64.encode(cert_pem),
        BASE64.encode(key_pem)
    )
}

/// The ConfigMap `ca-cert` (as `kubectl create configmap --from-file=ca.crt=...` makes it).
pub fn ca_config_map(namespace: &str, name: &str, ca_pem: &str) -> String {
    let indented: String = ca_pem.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: {namespace}\ndata:\n  ca.crt: |\n{indented}"
    )
}

/// A Service with one named port and an EndpointSlice pointing it at `backend`.
pub fn service_with_endpoint(
    namespace: &str,
    name: &str,
    port: u16,
    backend: SocketAddr,
) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: {namespace}
spec:
  ports:
  - name: http
    port: {port}
    targetPort: {target}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-local
  namespace: {namespace}
  labels:
    kubernetes.io/service-name: {name}
addressType: {family}
ports:
- name: http
  port: {target}
  protocol: TCP
endpoints:
- addresses: ["{ip}"]
  conditions:
    ready: true
"#,
        target = backend.port(),
        family = if backend.is_ipv4() { "IPv4" } else { "IPv6" },
        ip = backend.ip(),
    )
}

impl DemoFolder {
    /// Writes the certificates and manifests that do not exist yet, and (always) the
    /// EndpointSlice for this run's echo backend.
    pub fn prepare(dir: &Path, echo: SocketAddr) -> io::Result<DemoFolder> {
        fs::create_dir_all(dir)?;
        if !dir.join("ca-cert.pem").exists() {
            let pki = GuidePki::generate(KeyKind::Rsa2048).map_err(io::Error::other)?;
            fs::write(dir.join("ca-cert.pem"), &pki.ca.pem.cert)?;
            fs::write(dir.join("ca-key.pem"), &pki.ca.pem.key)?;
            fs::write(dir.join("server-cert.pem"), &pki.server.cert)?;
            fs::write(dir.join("server-key.pem"), &pki.server.key)?;
            fs::write(dir.join("client-cert.pem"), &pki.client.cert)?;
            fs::write(dir.join("client-key.pem"), &pki.client.key)?;
        }
        let read = |f: &str| fs::read_to_string(dir.join(f));
        write_if_missing(
            &dir.join("secret-https-cert.yaml"),
            &tls_secret(
                "agentgateway-system",
                "https-cert",
                &read("server-cert.pem")?,
                &read("server-key.pem")?,
            ),
        )?;
        write_if_missing(
            &dir.join("configmap-ca-cert.yaml"),
            &ca_config_map("agentgateway-system", "ca-cert", &read("ca-cert.pem")?),
        )?;
        write_if_missing(&dir.join("gateway.yaml"), GUIDE_GATEWAY)?;
        write_if_missing(&dir.join("httproute.yaml"), GUIDE_ROUTE)?;
        fs::write(
            dir.join("httpbin-backend.yaml"),
            service_with_endpoint("httpbin", "httpbin", 8000, echo),
        )?;
        Ok(DemoFolder {
            dir: dir.to_owned(),
        })
    }

    /// What to try, printed once the shards listen: which ports are served, and what is wrong
    /// with the others.
    pub fn instructions(&self, ports: &PortsReport) -> String {
        let d = self.dir.display();
        let served = match ports.served.as_slice() {
            [] => "serving no port".to_owned(),
            [one] => format!("serving port {one}"),
            [first @ .., last] => format!(
                "serving ports {} and {last}",
                first
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let problems: String = ports
            .unserved
            .iter()
            .map(|(port, why)| format!("NOT serving port {port}: {why}\n"))
            .collect();
        format!(
            r#"
Portcullis demo: the user guide's mTLS Gateway is {served}.
{problems}Files (certificates and manifests) are in {d}; try, from that folder:

  cd {d}
  # no client certificate: the TLS handshake fails on both ports
  curl -v -k https://localhost:8443/get --resolve example.com:8443:127.0.0.1 -H "Host: example.com"
  curl -v -k https://localhost:8444/get --resolve example.com:8444:127.0.0.1 -H "Host: example.com"
  # with the client certificate: 200 from the echo backend
  curl -v -k https://localhost:8443/get --resolve example.com:8443:127.0.0.1 -H "Host: example.com" \
    --cert client-cert.pem --key client-key.pem --cacert ca-cert.pem
  curl -v --resolve example.com:8444:127.0.0.1 https://example.com:8444/get \
    --cert client-cert.pem --key client-key.pem --cacert ca-cert.pem

Edit {d}/gateway.yaml (for example add the guide's perPort block for 8444 with
AllowInsecureFallback): the change is applied live. Ctrl-C stops the demo.
"#
        )
    }
}

fn write_if_missing(path: &Path, contents: &str) -> io::Result<()> {
    if path.exists() {
        return Ok(());
    }
    fs::write(path, contents)
}
