//! The upstream conformance suite's manifests (v1.6.1, in
//! `translate/tests/fixtures/conformance/v1.6.1/`) served on loopback: their ports moved to
//! free ones, and the suite's backends (`infra-backend-v1` to `-v3`) as backends that answer
//! their own name, which is how the upstream tests tell which backend served a request.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::thread;

use portcullis_runtime::demo;

use super::backends::named_backend;
use super::manifests::CLASS;

/// The suite's namespace for Gateways, routes and backends.
pub const INFRA: &str = "gateway-conformance-infra";
/// The port of the suite's backend Services.
pub const BACKEND_PORT: u16 = 8080;
const CLASS_PLACEHOLDER: &str = "{GATEWAY_CLASS_NAME}";
const BACKENDS: [&str; 3] = ["infra-backend-v1", "infra-backend-v2", "infra-backend-v3"];

/// An upstream manifest file, served by the tests' gateway class.
pub fn fixture(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../translate/tests/fixtures/conformance/v1.6.1")
        .join(file);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .replace(CLASS_PLACEHOLDER, CLASS)
}

/// The document of `base-manifests.yaml` that defines the Gateway `name`.
pub fn base_gateway(name: &str) -> String {
    fixture("base-manifests.yaml")
        .split("\n---\n")
        .find(|doc| doc.contains("kind: Gateway\n") && doc.contains(&format!("  name: {name}\n")))
        .unwrap_or_else(|| panic!("no Gateway {name} in the base manifests"))
        .to_owned()
}

/// The document of `base-manifests.yaml` that defines the Service `name` (in [`INFRA`]).
pub fn base_service(name: &str) -> String {
    fixture("base-manifests.yaml")
        .split("\n---\n")
        .find(|doc| doc.contains("kind: Service\n") && doc.contains(&format!("  name: {name}\n")))
        .unwrap_or_else(|| panic!("no Service {name} in the base manifests"))
        .to_owned()
}

/// Port numbers moved: every `port: FROM` line of a manifest (listeners, `perPort` entries,
/// parentRefs, backendRefs alike) becomes `port: TO`. Moving [`BACKEND_PORT`] moves the
/// backend Services' port with it (see [`infra_backends`]).
pub struct Ports(BTreeMap<u16, u16>);

impl Ports {
    pub fn new(moves: &[(u16, u16)]) -> Self {
        Self(moves.iter().copied().collect())
    }

    /// Where `port` went (itself when not moved).
    pub fn of(&self, port: u16) -> u16 {
        self.0.get(&port).copied().unwrap_or(port)
    }

    pub fn apply(&self, yaml: &str) -> String {
        yaml.lines()
            .map(|line| {
                let Some((head, number)) = line.rsplit_once("port: ") else {
                    return line.to_owned();
                };
                let key_only = head
                    .trim_start_matches(' ')
                    .trim_start_matches("- ")
                    .is_empty();
                match number.parse::<u16>() {
                    Ok(from) if key_only => format!("{head}port: {}", self.of(from)),
                    _ => line.to_owned(),
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The suite's three infra backend Services on their (possibly moved) port 8080, each with
/// one endpoint answering `200` with its own name.
pub fn infra_backends(ports: &Ports) -> Vec<String> {
    BACKENDS
        .iter()
        .map(|&name| {
            demo::service_with_endpoint(INFRA, name, ports.of(BACKEND_PORT), named_backend(name))
        })
        .collect()
}

/// An h2c (HTTP/2 prior knowledge) server answering every request `200` with `name` as its
/// body: it stands for the suite's h2c and gRPC echo backends where only the routing matters.
pub fn h2c_named_backend(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(mut connection) = h2::server::handshake(tcp).await else {
                        return;
                    };
                    while let Some(Ok((_request, mut respond))) = connection.accept().await {
                        let response = http::Response::builder().status(200).body(()).unwrap();
                        let Ok(mut body) = respond.send_response(response, false) else {
                            return;
                        };
                        let _ = body.send_data(bytes::Bytes::from_static(name.as_bytes()), true);
                    }
                });
            }
        });
    });
    addr
}

/// The EndpointSlice of Service `service` (in [`INFRA`]): one ready endpoint, 127.0.0.1, with
/// each of the Service's ports (by name; `None` for an unnamed one) at a loopback port.
pub fn endpoint_slice(service: &str, ports: &[(Option<&str>, u16)]) -> String {
    let mut yaml = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-local\n  \
         namespace: {INFRA}\n  labels:\n    kubernetes.io/service-name: {service}\n\
         addressType: IPv4\nports:\n"
    );
    for (name, port) in ports {
        match name {
            Some(name) => yaml.push_str(&format!(
                "- name: {name}\n  port: {port}\n  protocol: TCP\n"
            )),
            None => yaml.push_str(&format!("- port: {port}\n  protocol: TCP\n")),
        }
    }
    yaml.push_str("endpoints:\n- addresses: [\"127.0.0.1\"]\n  conditions:\n    ready: true\n");
    yaml
}
