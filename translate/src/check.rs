//! `portcullis check --manifests DIR [--gateway-class NAME]`: translate a folder of manifests
//! and print the statuses the controller would write.
//!
//! stdout: a multi-document YAML stream, one document per Gateway we serve and per HTTPRoute
//! or GRPCRoute with a parentRef to one (`apiVersion`, `kind`, `metadata.name/namespace`, `status`).
//! stderr: a short human summary. Exit 0 when the manifests were read (invalid references are
//! statuses, not failures); 2 when DIR is missing or a file cannot be read or parsed.

use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use portcullis_core::desired::{ClientValidation, ObjectRef, PortProtocol};
use serde::Serialize;

use crate::manifests::{self, LoadedManifests};
use crate::translate::{TranslateOptions, Translation, translate};

/// Manifests read; statuses printed.
pub const EXIT_OK: u8 = 0;
/// DIR missing, or a manifest that cannot be read or parsed.
pub const EXIT_BAD_MANIFESTS: u8 = 2;
/// stdout or stderr could not be written.
pub const EXIT_OUTPUT_FAILED: u8 = 1;

const GATEWAY_API_VERSION: &str = "gateway.networking.k8s.io/v1";

/// Runs `check` with the current time as `lastTransitionTime`.
pub fn run(
    dir: &Path,
    gateway_class: Option<&str>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    run_at(dir, gateway_class, now(), out, err)
}

/// Runs `check` with a given `lastTransitionTime`, for reproducible output.
pub fn run_at(
    dir: &Path,
    gateway_class: Option<&str>,
    now: Time,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let loaded = match manifests::load(dir) {
        Ok(loaded) => loaded,
        Err(e) => {
            // Nothing more useful can be done when stderr itself fails.
            let _ = writeln!(err, "portcullis check: {e}");
            return EXIT_BAD_MANIFESTS;
        }
    };
    let mut options = TranslateOptions::new(now);
    options.extra_gateway_class = gateway_class.map(str::to_owned);
    let translation = translate(&loaded.store, &options);
    let written = render_statuses(&translation)
        .map_err(|e| e.to_string())
        .and_then(|yaml| out.write_all(yaml.as_bytes()).map_err(|e| e.to_string()))
        .and_then(|()| {
            err.write_all(summary(&loaded, &translation).as_bytes())
                .map_err(|e| e.to_string())
        });
    match written {
        Ok(()) => EXIT_OK,
        Err(e) => {
            let _ = writeln!(err, "portcullis check: cannot write the output: {e}");
            EXIT_OUTPUT_FAILED
        }
    }
}

/// The current time, to the second, as Kubernetes writes `lastTransitionTime`.
pub fn now() -> Time {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(0))
        .unwrap_or(0);
    Time(Timestamp::from_second(seconds).unwrap_or(Timestamp::UNIX_EPOCH))
}

#[derive(Debug, Serialize)]
struct StatusDocument<'a, S: Serialize> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    metadata: Metadata<'a>,
    status: &'a S,
}

#[derive(Debug, Serialize)]
struct Metadata<'a> {
    name: &'a str,
    namespace: &'a str,
}

fn document<S: Serialize>(
    kind: &'static str,
    key: &ObjectRef,
    status: &S,
) -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(&StatusDocument {
        api_version: GATEWAY_API_VERSION,
        kind,
        metadata: Metadata {
            name: &key.name,
            namespace: &key.namespace,
        },
        status,
    })
}

/// The statuses as a multi-document YAML stream: Gateways first, then HTTPRoutes, then
/// GRPCRoutes, each sorted by `namespace/name`.
pub fn render_statuses(translation: &Translation) -> Result<String, serde_yaml::Error> {
    let mut documents = Vec::new();
    for (key, status) in &translation.gateway_statuses {
        documents.push(document("Gateway", key, status)?);
    }
    for (key, status) in &translation.route_statuses {
        documents.push(document("HTTPRoute", key, status)?);
    }
    for (key, status) in &translation.grpc_route_statuses {
        documents.push(document("GRPCRoute", key, status)?);
    }
    Ok(documents.join("---\n"))
}

/// A few lines for people: what was read, what is served, what is not.
pub fn summary(loaded: &LoadedManifests, translation: &Translation) -> String {
    let mut lines = Vec::new();
    let skipped: usize = loaded.skipped.values().sum();
    lines.push(format!(
        "read {} object(s) from {} file(s); skipped {} of kinds not used{}",
        loaded.objects,
        loaded.files.len(),
        skipped,
        if loaded.skipped.is_empty() {
            String::new()
        } else {
            format!(
                " ({})",
                loaded
                    .skipped
                    .iter()
                    .map(|(kind, n)| format!("{kind}: {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    ));
    let ignored = loaded
        .store
        .gateways
        .len()
        .saturating_sub(translation.gateway_statuses.len());
    lines.push(format!(
        "gateways served: {} (ignored, not ours: {ignored})",
        translation.gateway_statuses.len()
    ));
    for (key, status) in &translation.gateway_statuses {
        let listeners = status.listeners.as_deref().unwrap_or_default();
        let programmed = listeners
            .iter()
            .filter(|l| {
                l.conditions
                    .iter()
                    .any(|c| c.type_ == "Programmed" && c.status == "True")
            })
            .count();
        lines.push(format!(
            "  Gateway {key}: {programmed}/{} listener(s) programmed",
            listeners.len()
        ));
        for listener in listeners {
            for condition in &listener.conditions {
                if condition.status == "False" {
                    lines.push(format!(
                        "    listener {}: {}={} {}: {}",
                        listener.name,
                        condition.type_,
                        condition.status,
                        condition.reason,
                        condition.message
                    ));
                }
            }
        }
    }
    let mut accepted = 0;
    let mut not_accepted = Vec::new();
    // Both kinds' statuses have the API's one RouteStatus shape.
    let http = translation.route_statuses.iter().flat_map(|(key, status)| {
        status.parents.iter().map(move |p| {
            (
                "HTTPRoute",
                key,
                p.parent_ref.name.as_str(),
                p.conditions.as_slice(),
            )
        })
    });
    let grpc = translation
        .grpc_route_statuses
        .iter()
        .flat_map(|(key, status)| {
            status.parents.iter().map(move |p| {
                (
                    "GRPCRoute",
                    key,
                    p.parent_ref.name.as_str(),
                    p.conditions.as_slice(),
                )
            })
        });
    for (kind, key, parent, conditions) in http.chain(grpc) {
        for condition in conditions {
            if condition.type_ == "Accepted" && condition.status == "True" {
                accepted += 1;
            } else if condition.status == "False" {
                not_accepted.push(format!(
                    "  {kind} {key} -> {parent}: {}={} {}: {}",
                    condition.type_, condition.status, condition.reason, condition.message
                ));
            }
        }
    }
    lines.push(format!(
        "routes: {} with our parents, {accepted} parent attachment(s) accepted",
        translation.route_statuses.len() + translation.grpc_route_statuses.len()
    ));
    lines.extend(not_accepted);
    for port in &translation.desired.ports {
        let protocol = match port.protocol {
            PortProtocol::Http => "HTTP",
            PortProtocol::Https => "HTTPS",
        };
        let validation = match &port.client_validation {
            ClientValidation::NotRequested => "no client certificate".to_owned(),
            ClientValidation::Verify {
                mode,
                trust_anchors,
            } => format!("{mode:?}, {} CA certificate(s)", trust_anchors.len()),
            ClientValidation::RefuseAll { .. } => "REFUSES ALL CLIENTS (no valid CA)".to_owned(),
        };
        lines.push(format!(
            "port {} {protocol} (Gateway {}): {} listener(s), {validation}",
            port.port,
            port.gateway,
            port.listeners.len()
        ));
    }
    let mut text = lines.join("\n");
    text.push('\n');
    text
}
