//! Shared by the integration tests: certificates generated at test time, object builders and
//! status lookups. Each test crate uses a different part of it.
// Test helpers: a failed setup step should stop the test with its message.
#![allow(dead_code, clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine;
use gateway_api::experimental::gateways::{GatewayStatus, GatewayStatusListeners};
use gateway_api::experimental::httproutes::{HttpRouteStatus, HttpRouteStatusParents};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use portcullis_core::desired::ObjectRef;
use portcullis_translate::manifests::{LoadedManifests, load_text};
use portcullis_translate::{ObjectStore, TranslateOptions, Translation};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256, SerialNumber,
};

/// The `lastTransitionTime` every test passes, so that statuses compare exactly.
pub fn fixed_now() -> Time {
    Time(Timestamp::from_second(1_767_225_600).expect("a valid timestamp")) // 2026-01-01
}

/// Options with the fixed time and, when given, an extra GatewayClass name.
pub fn options(extra_gateway_class: Option<&str>) -> TranslateOptions {
    let mut options = TranslateOptions::new(fixed_now());
    options.extra_gateway_class = extra_gateway_class.map(str::to_owned);
    options
}

/// A CA that signs leaves.
pub struct TestCa {
    pub cert_pem: String,
    pub der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new(common_name: &str) -> Self {
        Self::build(common_name, None)
    }

    /// A CA with a chosen serial: two of them with one name have identical subject and serial
    /// but different keys.
    pub fn with_serial(common_name: &str, serial: u64) -> Self {
        Self::build(common_name, Some(serial))
    }

    fn build(common_name: &str, serial: Option<u64>) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, common_name);
        name.push(DnType::OrganizationName, "Test Org");
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = serial.map(SerialNumber::from);
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        Self {
            cert_pem: cert.pem(),
            der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server leaf for `dns_names`, signed by this CA, with an ECDSA P-256 key.
    pub fn leaf(&self, dns_names: &[&str]) -> ServerPair {
        leaf(dns_names, KeyKind::EcdsaP256, Some(&self.issuer))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    EcdsaP256,
    Rsa2048,
}

/// A certificate and its private key, PEM.
#[derive(Debug, Clone)]
pub struct ServerPair {
    pub cert_pem: String,
    /// PKCS#8 (`PRIVATE KEY`), as rcgen writes it.
    pub key_pem: String,
    pub key_pkcs8_der: Vec<u8>,
}

impl ServerPair {
    /// The key in its traditional encoding: PKCS#1 (`RSA PRIVATE KEY`) for RSA, SEC1
    /// (`EC PRIVATE KEY`) for EC.
    pub fn traditional_key_pem(&self, kind: KeyKind) -> String {
        let label = match kind {
            KeyKind::EcdsaP256 => "EC PRIVATE KEY",
            KeyKind::Rsa2048 => "RSA PRIVATE KEY",
        };
        pem(label, &pkcs8_private_key(&self.key_pkcs8_der))
    }
}

/// A self-signed server leaf (the upstream conformance suite's Secrets are self-signed).
pub fn self_signed_leaf(dns_names: &[&str], kind: KeyKind) -> ServerPair {
    leaf(dns_names, kind, None)
}

fn leaf(
    dns_names: &[&str],
    kind: KeyKind,
    issuer: Option<&Issuer<'static, KeyPair>>,
) -> ServerPair {
    let names: Vec<String> = dns_names.iter().map(|n| (*n).to_owned()).collect();
    let mut params = CertificateParams::new(names).expect("leaf params");
    let mut name = DistinguishedName::new();
    name.push(
        DnType::CommonName,
        dns_names.first().copied().unwrap_or("leaf"),
    );
    params.distinguished_name = name;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = match kind {
        KeyKind::EcdsaP256 => KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256),
        KeyKind::Rsa2048 => KeyPair::generate_for(&PKCS_RSA_SHA256),
    }
    .expect("leaf key");
    let cert = match issuer {
        Some(issuer) => params.signed_by(&key, issuer),
        None => params.self_signed(&key),
    }
    .expect("leaf certificate");
    ServerPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        key_pkcs8_der: key.serialize_der(),
    }
}

pub fn pem(label: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The `privateKey` OCTET STRING of a PKCS#8 PrivateKeyInfo: the PKCS#1 RSAPrivateKey or the
/// SEC1 ECPrivateKey it wraps.
fn pkcs8_private_key(pkcs8: &[u8]) -> Vec<u8> {
    let (_, info) = der_element(pkcs8, 0x30);
    let (rest, _version) = der_element(info, 0x02);
    let (rest, _algorithm) = der_element(rest, 0x30);
    let (_, key) = der_element(rest, 0x04);
    key.to_vec()
}

/// Splits one DER element of `tag` off the front of `input`: (rest, contents).
fn der_element(input: &[u8], tag: u8) -> (&[u8], &[u8]) {
    assert_eq!(input[0], tag, "unexpected DER tag");
    let (len, header) = match input[1] {
        n if n < 0x80 => (usize::from(n), 2),
        n => {
            let count = usize::from(n & 0x7f);
            let len = input[2..2 + count]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            (len, 2 + count)
        }
    };
    (&input[header + len..], &input[header..header + len])
}

fn metadata(namespace: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        ..ObjectMeta::default()
    }
}

/// A `kubernetes.io/tls` Secret.
pub fn tls_secret(namespace: &str, name: &str, cert_pem: &str, key_pem: &str) -> Secret {
    let mut data = BTreeMap::new();
    data.insert(
        "tls.crt".to_owned(),
        ByteString(cert_pem.as_bytes().to_vec()),
    );
    data.insert(
        "tls.key".to_owned(),
        ByteString(key_pem.as_bytes().to_vec()),
    );
    Secret {
        metadata: metadata(namespace, name),
        data: Some(data),
        type_: Some("kubernetes.io/tls".to_owned()),
        ..Secret::default()
    }
}

/// A ConfigMap holding `pem` under `key` (normally `ca.crt`).
pub fn ca_config_map(namespace: &str, name: &str, key: &str, pem: &str) -> ConfigMap {
    let mut data = BTreeMap::new();
    data.insert(key.to_owned(), pem.to_owned());
    ConfigMap {
        metadata: metadata(namespace, name),
        data: Some(data),
        ..ConfigMap::default()
    }
}

/// An Opaque Secret holding `pem` under `ca.crt`.
pub fn ca_secret(namespace: &str, name: &str, pem: &str) -> Secret {
    let mut data = BTreeMap::new();
    data.insert("ca.crt".to_owned(), ByteString(pem.as_bytes().to_vec()));
    Secret {
        metadata: metadata(namespace, name),
        data: Some(data),
        type_: Some("Opaque".to_owned()),
        ..Secret::default()
    }
}

/// Objects from YAML text, as the manifest loader reads a file.
pub fn load_yaml(store: &mut ObjectStore, yaml: &str) {
    let mut loaded = LoadedManifests {
        store: std::mem::take(store),
        ..LoadedManifests::default()
    };
    load_text(Path::new("inline.yaml"), yaml, false, &mut loaded).expect("test YAML loads");
    *store = loaded.store;
}

pub fn store_from_yaml(yaml: &str) -> ObjectStore {
    let mut store = ObjectStore::new();
    load_yaml(&mut store, yaml);
    store
}

pub fn gateway_status<'a>(t: &'a Translation, namespace: &str, name: &str) -> &'a GatewayStatus {
    t.gateway_status(&ObjectRef::new(namespace, name))
        .unwrap_or_else(|| panic!("no status for Gateway {namespace}/{name}"))
}

pub fn route_status<'a>(t: &'a Translation, namespace: &str, name: &str) -> &'a HttpRouteStatus {
    t.route_status(&ObjectRef::new(namespace, name))
        .unwrap_or_else(|| panic!("no status for HTTPRoute {namespace}/{name}"))
}

pub fn listener<'a>(status: &'a GatewayStatus, name: &str) -> &'a GatewayStatusListeners {
    status
        .listeners
        .iter()
        .flatten()
        .find(|l| l.name == name)
        .unwrap_or_else(|| panic!("no listener status {name}"))
}

pub fn gateway_conditions(status: &GatewayStatus) -> &[Condition] {
    status.conditions.as_deref().unwrap_or_default()
}

/// The one parent entry for a parentRef to `gateway_name`, with `section_name` if given.
pub fn parent<'a>(
    status: &'a HttpRouteStatus,
    gateway_name: &str,
    section_name: Option<&str>,
) -> &'a HttpRouteStatusParents {
    status
        .parents
        .iter()
        .find(|p| {
            p.parent_ref.name == gateway_name
                && p.parent_ref.section_name.as_deref() == section_name
        })
        .unwrap_or_else(|| panic!("no parent status for {gateway_name} {section_name:?}"))
}

pub fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Asserts that condition `type_` is there with `status` and `reason`.
#[track_caller]
pub fn assert_condition(conditions: &[Condition], type_: &str, status: bool, reason: &str) {
    let c = condition(conditions, type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {conditions:#?}"));
    let expected = if status { "True" } else { "False" };
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        (expected, reason),
        "{type_}: {}",
        c.message
    );
}

/// Asserts Accepted, Programmed and ResolvedRefs are all True.
#[track_caller]
pub fn assert_listener_healthy(listener: &GatewayStatusListeners) {
    assert_condition(&listener.conditions, "Accepted", true, "Accepted");
    assert_condition(&listener.conditions, "Programmed", true, "Programmed");
    assert_condition(&listener.conditions, "ResolvedRefs", true, "ResolvedRefs");
}
