//! Cross-object references: ReferenceGrants, server certificate refs (Secrets) and CA refs
//! (ConfigMaps or Secrets). Each resolver returns the parsed data or a [`Problem`] whose
//! message names the reference (kind, namespace/name, key).

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use portcullis_core::certs::{parse_ca_bundle, parse_server_certificate};
use portcullis_core::desired::{CaCertificate, ObjectRef, ServerCertificate};

use super::conditions::{Problem, reasons};
use crate::store::ObjectStore;

/// The Gateway API group.
pub(crate) const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
/// The Kubernetes core group, written `""` in references.
pub(crate) const CORE_GROUP: &str = "";

pub(crate) const TLS_CERT_KEY: &str = "tls.crt";
pub(crate) const TLS_KEY_KEY: &str = "tls.key";
pub(crate) const CA_CERT_KEY: &str = "ca.crt";

/// The referring side of a cross-namespace reference.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Referrer<'a> {
    pub group: &'a str,
    pub kind: &'a str,
    pub namespace: &'a str,
}

impl<'a> Referrer<'a> {
    /// A Gateway in `namespace` (certificate and CA refs).
    pub fn gateway(namespace: &'a str) -> Self {
        Self {
            group: GATEWAY_GROUP,
            kind: "Gateway",
            namespace,
        }
    }
}

/// The referenced side of a reference.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Referent<'a> {
    pub group: &'a str,
    pub kind: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
}

impl Referent<'_> {
    /// `Kind namespace/name`, with `.group` after the kind outside the core group, the way
    /// `kubectl` names resources.
    pub fn describe(&self) -> String {
        describe(self.group, self.kind, self.namespace, self.name)
    }
}

pub(crate) fn describe(group: &str, kind: &str, namespace: &str, name: &str) -> String {
    if group.is_empty() {
        format!("{kind} {namespace}/{name}")
    } else {
        format!("{kind}.{group} {namespace}/{name}")
    }
}

/// Whether `from` may reference `to`: always within a namespace; across namespaces only when a
/// ReferenceGrant (v1beta1 or v1, stored alike) in `to`'s namespace allows it. A grant's `to`
/// entry without a name allows every object of that group and kind in its namespace.
fn reference_permitted(store: &ObjectStore, from: Referrer<'_>, to: Referent<'_>) -> bool {
    if from.namespace == to.namespace {
        return true;
    }
    store
        .reference_grants
        .iter()
        .filter(|(key, _)| key.namespace == to.namespace)
        .any(|(_, stored)| {
            let spec = &stored.grant.spec;
            let from_matches = spec.from.iter().any(|f| {
                f.group == from.group && f.kind == from.kind && f.namespace == from.namespace
            });
            let to_matches = spec.to.iter().any(|t| {
                t.group == to.group
                    && t.kind == to.kind
                    && t.name
                        .as_deref()
                        .is_none_or(|name| name.is_empty() || name == to.name)
            });
            from_matches && to_matches
        })
}

/// A Secret's value for `key`: `stringData` wins over `data`, as the API server merges them.
pub(crate) fn secret_value(secret: &Secret, key: &str) -> Option<Vec<u8>> {
    if let Some(value) = secret.string_data.as_ref().and_then(|d| d.get(key)) {
        return Some(value.as_bytes().to_vec());
    }
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| v.0.clone())
}

/// A ConfigMap's value for `key`, from `data` or `binaryData`.
pub(crate) fn config_map_value(config_map: &ConfigMap, key: &str) -> Option<Vec<u8>> {
    if let Some(value) = config_map.data.as_ref().and_then(|d| d.get(key)) {
        return Some(value.as_bytes().to_vec());
    }
    config_map
        .binary_data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| v.0.clone())
}

/// A listener's `tls.certificateRefs[]` entry, with the API defaults applied.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CertificateRef<'a> {
    pub group: &'a str,
    pub kind: &'a str,
    pub name: &'a str,
    pub namespace: Option<&'a str>,
}

/// Server certificates parsed from Secrets during one translation, each Secret once: checking
/// a private key costs aws-lc hundreds of microseconds (RSA), and many listeners, often every
/// listener of a Gateway, reference the same Secret.
#[derive(Default)]
pub(crate) struct ServerCertificates {
    by_secret: HashMap<ObjectRef, Result<ServerCertificate, Problem>>,
}

/// Resolves a server certificate reference of a Gateway in `gateway_namespace`.
pub(crate) fn resolve_certificate_ref(
    store: &ObjectStore,
    certificates: &mut ServerCertificates,
    gateway_namespace: &str,
    reference: CertificateRef<'_>,
) -> Result<ServerCertificate, Problem> {
    let to = Referent {
        group: reference.group,
        kind: reference.kind,
        namespace: reference.namespace.unwrap_or(gateway_namespace),
        name: reference.name,
    };
    let what = format!("certificateRef {}", to.describe());
    let invalid = |message: String| Problem::new(reasons::INVALID_CERTIFICATE_REF, message);
    if to.group != CORE_GROUP || to.kind != "Secret" {
        return Err(invalid(format!(
            "{what}: only kind Secret in the core group (\"\") is supported"
        )));
    }
    // Permission depends on the referring Gateway, so it is checked every time; the Secret's
    // content only on its first reference.
    require_grant(store, Referrer::gateway(gateway_namespace), to, &what)?;
    let secret_ref = ObjectRef::new(to.namespace, to.name);
    if let Some(parsed) = certificates.by_secret.get(&secret_ref) {
        return parsed.clone();
    }
    let parsed = server_certificate_from_secret(store, &secret_ref, &what);
    certificates.by_secret.insert(secret_ref, parsed.clone());
    parsed
}

fn server_certificate_from_secret(
    store: &ObjectStore,
    secret_ref: &ObjectRef,
    what: &str,
) -> Result<ServerCertificate, Problem> {
    let invalid = |message: String| Problem::new(reasons::INVALID_CERTIFICATE_REF, message);
    let secret = store
        .secrets
        .get(secret_ref)
        .ok_or_else(|| invalid(format!("{what}: not found")))?;
    let cert = secret_value(secret, TLS_CERT_KEY)
        .ok_or_else(|| invalid(format!("{what}: key \"{TLS_CERT_KEY}\" is missing")))?;
    let key = secret_value(secret, TLS_KEY_KEY)
        .ok_or_else(|| invalid(format!("{what}: key \"{TLS_KEY_KEY}\" is missing")))?;
    let source = format!("Secret {secret_ref}");
    parse_server_certificate(&cert, &key, &source).map_err(|e| invalid(format!("{what}: {e}")))
}

/// A `caCertificateRefs[]` entry (default or perPort: the API has two identical types).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CaRef<'a> {
    pub group: &'a str,
    pub kind: &'a str,
    pub name: &'a str,
    pub namespace: Option<&'a str>,
}

/// Resolves a CA certificate reference of a Gateway in `gateway_namespace` (spec §4).
pub(crate) fn resolve_ca_ref(
    store: &ObjectStore,
    gateway_namespace: &str,
    reference: CaRef<'_>,
) -> Result<Vec<CaCertificate>, Problem> {
    let to = Referent {
        group: reference.group,
        kind: reference.kind,
        namespace: reference.namespace.unwrap_or(gateway_namespace),
        name: reference.name,
    };
    let what = format!("caCertificateRef {}", to.describe());
    let invalid = |message: String| Problem::new(reasons::INVALID_CA_CERTIFICATE_REF, message);
    let is_config_map = match (to.group, to.kind) {
        (CORE_GROUP, "ConfigMap") => true,
        (CORE_GROUP, "Secret") => false,
        _ => {
            return Err(Problem::new(
                reasons::INVALID_CA_CERTIFICATE_KIND,
                format!("{what}: kind must be ConfigMap or Secret in the core group (\"\")"),
            ));
        }
    };
    require_grant(store, Referrer::gateway(gateway_namespace), to, &what)?;
    let at = ObjectRef::new(to.namespace, to.name);
    let bundle = if is_config_map {
        let config_map = store
            .config_maps
            .get(&at)
            .ok_or_else(|| invalid(format!("{what}: not found")))?;
        config_map_value(config_map, CA_CERT_KEY)
    } else {
        let secret = store
            .secrets
            .get(&at)
            .ok_or_else(|| invalid(format!("{what}: not found")))?;
        secret_value(secret, CA_CERT_KEY)
    }
    .ok_or_else(|| invalid(format!("{what}: key \"{CA_CERT_KEY}\" is missing")))?;
    let source = format!("{} {}/{}", to.kind, to.namespace, to.name);
    parse_ca_bundle(&bundle, &source).map_err(|e| invalid(format!("{what}: {e}")))
}

/// `Ok` when `from` may reference `to` (same namespace, or a ReferenceGrant allows it); else
/// the `RefNotPermitted` problem, naming the reference as `what`.
pub(crate) fn require_grant(
    store: &ObjectStore,
    from: Referrer<'_>,
    to: Referent<'_>,
    what: &str,
) -> Result<(), Problem> {
    if reference_permitted(store, from, to) {
        return Ok(());
    }
    Err(Problem::new(
        reasons::REF_NOT_PERMITTED,
        format!(
            "{what}: no ReferenceGrant in namespace {} allows {}s in namespace {} to reference it",
            to.namespace, from.kind, from.namespace
        ),
    ))
}
