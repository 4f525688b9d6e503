//! The upstream conformance suite's manifests (v1.6.1, in
//! `translate/tests/fixtures/conformance/v1.6.1/`) served on loopback: their ports moved to
//! free ones, and the suite's backends (`infra-backend-v1` to `-v3`) as backends that answer
//! their own name, which is how the upstream tests tell which backend served a request.

use std::collections::BTreeMap;
use std::path::Path;

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
