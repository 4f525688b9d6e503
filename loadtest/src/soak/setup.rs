//! The soak's certificates and its folder of manifests: the user guide's Gateway, HTTPRoute,
//! TLS Secret and CA ConfigMap (as `portcullis demo` writes them), and one Service with two
//! local echo endpoints. [`Manifests`] rewrites them under the load; every state it writes
//! keeps the well-formed clients' path routed and their CA trusted.

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use portcullis_runtime::demo;
use portcullis_runtime::pki::{Authority, CertKeyPem, KeyKind};

/// The SNI and Host of every client: the guide's.
pub const SERVER_NAME: &str = "example.com";

const GATEWAY_NAMESPACE: &str = "agentgateway-system";
const SECRET_NAME: &str = "https-cert";
const CA_CONFIG_MAP_NAME: &str = "ca-cert";
const BACKEND_NAMESPACE: &str = "httpbin";
const BACKEND_SERVICE: &str = "httpbin";
/// The Service port the guide's HTTPRoute names.
const BACKEND_SERVICE_PORT: u16 = 8000;

/// The certificates of the soak. ECDSA keys: RSA ones take seconds to make in a debug build,
/// and the soak is not about key types.
#[derive(Debug)]
pub struct SoakPki {
    /// Signs both server certificates; the clients trust it.
    pub server_ca: String,
    /// The Secret alternates between these two.
    pub server_certs: [CertKeyPem; 2],
    /// Signs the valid and the expired client certificates; always in the CA bundle.
    pub client_ca: String,
    /// In the CA bundle every other rotation, next to the client CA.
    pub extra_ca: String,
    pub valid_client: CertKeyPem,
    pub expired_client: CertKeyPem,
    /// Signed by a CA the bundle never holds.
    pub unknown_ca_client: CertKeyPem,
}

/// How long before now the expired client certificate stopped being valid.
const EXPIRED_SINCE: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long it was valid.
const EXPIRED_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

impl SoakPki {
    pub fn generate() -> Result<SoakPki, String> {
        let kind = KeyKind::EcdsaP256;
        let server_ca = Authority::new("Soak Server CA", kind).map_err(text)?;
        let client_ca = Authority::new("Soak Client CA", kind).map_err(text)?;
        let extra_ca = Authority::new("Soak Extra CA", kind).map_err(text)?;
        let unknown_ca = Authority::new("Soak Unknown CA", kind).map_err(text)?;
        let names = [SERVER_NAME, "*.example.com"];
        let client_names = ["client.example.com"];
        Ok(SoakPki {
            server_certs: [
                server_ca.issue(SERVER_NAME, &names).map_err(text)?,
                server_ca.issue(SERVER_NAME, &names).map_err(text)?,
            ],
            server_ca: server_ca.pem.cert,
            valid_client: client_ca
                .issue("client.example.com", &client_names)
                .map_err(text)?,
            expired_client: client_ca
                .issue_with("expired.example.com", &client_names, |p| {
                    p.not_after = p.not_before - EXPIRED_SINCE;
                    p.not_before = p.not_after - EXPIRED_VALIDITY;
                })
                .map_err(text)?,
            client_ca: client_ca.pem.cert,
            extra_ca: extra_ca.pem.cert,
            unknown_ca_client: unknown_ca
                .issue("unknown.example.com", &client_names)
                .map_err(text)?,
        })
    }
}

/// A certificate error as text (rcgen's error type is the runtime's business).
fn text(error: impl std::fmt::Display) -> String {
    error.to_string()
}

/// The client-side files of one certificate, for `client_config::build`.
#[derive(Debug, Clone)]
pub struct ClientFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Writes the client certificates and the server CA where the clients read them.
pub fn write_client_files(dir: &Path, pki: &SoakPki) -> io::Result<(PathBuf, [ClientFiles; 3])> {
    fs::create_dir_all(dir)?;
    let server_ca = dir.join("server-ca.pem");
    fs::write(&server_ca, &pki.server_ca)?;
    let write = |name: &str, pem: &CertKeyPem| -> io::Result<ClientFiles> {
        let files = ClientFiles {
            cert: dir.join(format!("{name}-cert.pem")),
            key: dir.join(format!("{name}-key.pem")),
        };
        fs::write(&files.cert, &pem.cert)?;
        fs::write(&files.key, &pem.key)?;
        Ok(files)
    };
    let clients = [
        write("valid", &pki.valid_client)?,
        write("expired", &pki.expired_client)?,
        write("unknown-ca", &pki.unknown_ca_client)?,
    ];
    Ok((server_ca, clients))
}

/// A second rule for the clients' route, on a path they never use.
const EXTRA_RULE: &str = "    - matches:
        - path:
            type: PathPrefix
            value: /soak-extra
          headers:
            - name: x-soak
              value: extra
      backendRefs:
        - name: httpbin
          port: 8000
";

/// A second HTTPRoute on the same Gateway and hostname, on a path the clients never use.
const EXTRA_ROUTE: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: soak-extra
  namespace: httpbin
spec:
  hostnames:
  - "example.com"
  parentRefs:
    - name: mtls
      namespace: agentgateway-system
  rules:
    - matches:
        - path:
            type: PathPrefix
            value: /soak-only
      backendRefs:
        - name: httpbin
          port: 8000
"#;

/// The Service and one EndpointSlice per echo backend (the slices' ports differ, so one
/// slice each).
fn service_with_endpoints(backends: &[SocketAddr]) -> String {
    let mut yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {BACKEND_SERVICE}\n  namespace: {BACKEND_NAMESPACE}\nspec:\n  ports:\n  - name: http\n    port: {BACKEND_SERVICE_PORT}\n"
    );
    for (i, backend) in backends.iter().enumerate() {
        yaml.push_str(&format!(
            r#"---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {BACKEND_SERVICE}-echo-{i}
  namespace: {BACKEND_NAMESPACE}
  labels:
    kubernetes.io/service-name: {BACKEND_SERVICE}
addressType: {family}
ports:
- name: http
  port: {port}
  protocol: TCP
endpoints:
- addresses: ["{ip}"]
  conditions:
    ready: true
"#,
            family = if backend.is_ipv4() { "IPv4" } else { "IPv6" },
            port = backend.port(),
            ip = backend.ip(),
        ));
    }
    yaml
}

/// The folder `portcullis serve --manifests` watches.
#[derive(Debug)]
pub struct Manifests {
    dir: PathBuf,
}

const GATEWAY_FILE: &str = "gateway.yaml";
const ROUTE_FILE: &str = "httproute.yaml";
const EXTRA_ROUTE_FILE: &str = "httproute-extra.yaml";
const SECRET_FILE: &str = "secret-https-cert.yaml";
const CA_FILE: &str = "configmap-ca-cert.yaml";
const BACKEND_FILE: &str = "httpbin-backend.yaml";

impl Manifests {
    /// Writes the first state: server certificate 0, the client CA alone, the guide's route.
    pub fn create(
        dir: &Path,
        ports: [u16; 2],
        backends: &[SocketAddr],
        pki: &SoakPki,
    ) -> io::Result<Manifests> {
        fs::create_dir_all(dir)?;
        let manifests = Manifests {
            dir: dir.to_owned(),
        };
        let [first, second] = demo::GUIDE_PORTS;
        let gateway = demo::GUIDE_GATEWAY
            .replace(&first.to_string(), &ports[0].to_string())
            .replace(&second.to_string(), &ports[1].to_string());
        manifests.write(GATEWAY_FILE, &gateway)?;
        manifests.write(BACKEND_FILE, &service_with_endpoints(backends))?;
        manifests.set_server_cert(pki, 0)?;
        manifests.set_ca_bundle(pki, false)?;
        manifests.set_extra_routes(false)?;
        Ok(manifests)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Replaces a file in one step (written aside, then renamed over), so that the gateway
    /// never reads half of it. The aside name has no manifest extension: it is never read.
    fn write(&self, name: &str, contents: &str) -> io::Result<()> {
        let aside = self.dir.join(format!("{name}.writing"));
        fs::write(&aside, contents)?;
        fs::rename(&aside, self.dir.join(name))
    }

    pub fn set_server_cert(&self, pki: &SoakPki, index: usize) -> io::Result<()> {
        let cert = &pki.server_certs[index % pki.server_certs.len()];
        self.write(
            SECRET_FILE,
            &demo::tls_secret(GATEWAY_NAMESPACE, SECRET_NAME, &cert.cert, &cert.key),
        )
    }

    /// The client CA, alone or with the extra CA.
    pub fn set_ca_bundle(&self, pki: &SoakPki, with_extra: bool) -> io::Result<()> {
        let mut bundle = pki.client_ca.clone();
        if with_extra {
            bundle.push_str(&pki.extra_ca);
        }
        self.write(
            CA_FILE,
            &demo::ca_config_map(GATEWAY_NAMESPACE, CA_CONFIG_MAP_NAME, &bundle),
        )
    }

    /// The guide's route alone, or with an extra rule and an extra route.
    pub fn set_extra_routes(&self, extra: bool) -> io::Result<()> {
        if extra {
            self.write(ROUTE_FILE, &format!("{}{EXTRA_RULE}", demo::GUIDE_ROUTE))?;
            self.write(EXTRA_ROUTE_FILE, EXTRA_ROUTE)
        } else {
            self.write(ROUTE_FILE, demo::GUIDE_ROUTE)?;
            match fs::remove_file(self.dir.join(EXTRA_ROUTE_FILE)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use portcullis_core::desired::{BackendTarget, ClientValidation, DesiredConfig, PathMatch};
    use portcullis_translate::manifests;
    use portcullis_translate::{TranslateOptions, translate};

    use super::*;

    fn translate_folder(dir: &Path) -> DesiredConfig {
        let loaded = manifests::load(dir).unwrap();
        let mut options = TranslateOptions::new(portcullis_translate::check::now());
        options.extra_gateway_class = Some(demo::GUIDE_GATEWAY_CLASS.to_owned());
        translate(&loaded.store, &options).desired
    }

    /// Every state the rotation writes is a config that trusts the client CA (with the extra
    /// CA or not) and routes every path of the clients' host to both echo endpoints, on both
    /// ports.
    #[test]
    fn every_rotation_state_routes_the_clients_and_trusts_their_ca() {
        let pki = SoakPki::generate().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let backends: Vec<SocketAddr> = vec![
            "127.0.0.1:40001".parse().unwrap(),
            "127.0.0.1:40002".parse().unwrap(),
        ];
        let folder = Manifests::create(dir.path(), [41001, 41002], &backends, &pki).unwrap();
        for state in 0..4 {
            let with_extra = state % 2 == 1;
            folder.set_server_cert(&pki, state).unwrap();
            folder.set_ca_bundle(&pki, with_extra).unwrap();
            folder.set_extra_routes(state / 2 == 1).unwrap();
            let desired = translate_folder(folder.dir());
            let ports: Vec<u16> = desired.ports.iter().map(|p| p.port).collect();
            assert_eq!(ports, vec![41001, 41002], "state {state}");
            for port in &desired.ports {
                let ClientValidation::Verify { trust_anchors, .. } = &port.client_validation else {
                    panic!("state {state}: {:?}", port.client_validation);
                };
                assert_eq!(trust_anchors.len(), 1 + usize::from(with_extra));
                for listener in &port.listeners {
                    let catch_all = listener
                        .routes
                        .iter()
                        .filter(|r| r.route.name == "httpbin-https")
                        .flat_map(|r| &r.rules)
                        // No match is the Gateway API's default: every path.
                        .find(|rule| {
                            rule.matches.is_empty()
                                || rule.matches.iter().any(|m| {
                                    m.path == PathMatch::Prefix("/".to_owned())
                                        && m.headers.is_empty()
                                })
                        })
                        .unwrap_or_else(|| panic!("state {state}: {listener:?}"));
                    assert_eq!(
                        catch_all.backends[0].target,
                        BackendTarget::Endpoints(backends.clone())
                    );
                }
            }
        }
    }

    /// The rotation is seen: the route count follows it.
    #[test]
    fn extra_routes_come_and_go() {
        let pki = SoakPki::generate().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let backends: Vec<SocketAddr> = vec!["127.0.0.1:40001".parse().unwrap()];
        let folder = Manifests::create(dir.path(), [41001, 41002], &backends, &pki).unwrap();
        let rules = |desired: &DesiredConfig| -> usize {
            desired.ports[0].listeners[0]
                .routes
                .iter()
                .map(|r| r.rules.len())
                .sum()
        };
        assert_eq!(rules(&translate_folder(folder.dir())), 1);
        folder.set_extra_routes(true).unwrap();
        assert_eq!(rules(&translate_folder(folder.dir())), 3);
        folder.set_extra_routes(false).unwrap();
        assert_eq!(rules(&translate_folder(folder.dir())), 1);
    }
}
