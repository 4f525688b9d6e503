//! One test per row of the frontend-TLS rule tables (Gateway API `spec.tls.frontend`; the
//! `s2_`..`s6_` prefixes name the table) and of the
//! listener and route rules of issue 2. §3's handshake table is data-plane behaviour; here it
//! is the policy data each mode maps to.

// Test-crate helpers outside #[test] fns: a failed setup step stops the test with its message.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;

use gateway_api::experimental::gateways::{Gateway, GatewayStatusAddresses};
use gateway_api::experimental::grpcroutes::{GrpcRoute, GrpcRouteStatusParents};
use gateway_api::experimental::httproutes::HttpRoute;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use portcullis_core::desired::{
    BackendProtocol, BackendTarget, ClientValidation, DesiredListener, DesiredPort, HeaderMatch,
    ObjectRef, PathMatch, PortProtocol, PrivateKeyEncoding, QueryParamMatch, RouteMatch,
    ValidationMode,
};
use portcullis_core::filters::{
    HeaderField, HeaderModifier, RedirectStatus, RequestRedirect, RuleFilters,
};
use portcullis_core::routing::{HeaderPairs, RouteRequest, RouteTable};
use portcullis_translate::store::{ObjectKey, ObjectKind};
use portcullis_translate::{Object, ObjectStore, StoredReferenceGrant, Translation, translate};
use serde_json::{Value, json};
use support::*;

const NS: &str = "infra";
const CLASS: &str = "portcullis";

// ---------------------------------------------------------------------------------------------
// The world every test starts from.

/// A GatewayClass of ours, a server certificate Secret `server`, and two CA ConfigMaps
/// `ca-a` and `ca-b`, all in namespace `infra`.
struct World {
    store: ObjectStore,
    server: ServerPair,
    ca_a: TestCa,
    ca_b: TestCa,
}

fn world() -> World {
    let server_ca = TestCa::new("Server CA");
    let server = server_ca.leaf(&["example.com", "*.example.com"]);
    let ca_a = TestCa::new("Client CA A");
    let ca_b = TestCa::new("Client CA B");
    let mut store = ObjectStore::new();
    insert(
        &mut store,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
               "metadata": {"name": CLASS},
               "spec": {"controllerName": "portcullis.dev/gateway-controller"}}),
    );
    store
        .insert(tls_secret(NS, "server", &server.cert_pem, &server.key_pem))
        .unwrap();
    store
        .insert(ca_config_map(NS, "ca-a", "ca.crt", &ca_a.cert_pem))
        .unwrap();
    store
        .insert(ca_config_map(NS, "ca-b", "ca.crt", &ca_b.cert_pem))
        .unwrap();
    World {
        store,
        server,
        ca_a,
        ca_b,
    }
}

/// Inserts an object given as JSON, by its kind.
fn insert(store: &mut ObjectStore, object: Value) {
    let kind = object["kind"].as_str().expect("kind").to_owned();
    let object: Object = match kind.as_str() {
        "GatewayClass" => Object::GatewayClass(serde_json::from_value(object).unwrap()),
        "Gateway" => Object::Gateway(serde_json::from_value::<Gateway>(object).unwrap()),
        "HTTPRoute" => Object::HttpRoute(serde_json::from_value::<HttpRoute>(object).unwrap()),
        "GRPCRoute" => Object::GrpcRoute(serde_json::from_value::<GrpcRoute>(object).unwrap()),
        "ReferenceGrant" => Object::ReferenceGrant(StoredReferenceGrant {
            api_version: object["apiVersion"].as_str().unwrap().to_owned(),
            grant: serde_json::from_value(object).unwrap(),
        }),
        "Secret" => Object::Secret(serde_json::from_value::<Secret>(object).unwrap()),
        "ConfigMap" => Object::ConfigMap(serde_json::from_value(object).unwrap()),
        "Service" => Object::Service(serde_json::from_value::<Service>(object).unwrap()),
        "EndpointSlice" => {
            Object::EndpointSlice(serde_json::from_value::<EndpointSlice>(object).unwrap())
        }
        "Namespace" => Object::Namespace(serde_json::from_value::<Namespace>(object).unwrap()),
        other => panic!("unknown kind {other}"),
    };
    store.insert(object).unwrap();
}

fn https(name: &str, port: u16) -> Value {
    json!({"name": name, "port": port, "protocol": "HTTPS",
           "tls": {"certificateRefs": [{"name": "server"}]},
           "allowedRoutes": {"namespaces": {"from": "All"}}})
}

fn https_host(name: &str, port: u16, hostname: &str) -> Value {
    let mut l = https(name, port);
    l["hostname"] = json!(hostname);
    l
}

fn http(name: &str, port: u16) -> Value {
    json!({"name": name, "port": port, "protocol": "HTTP",
           "allowedRoutes": {"namespaces": {"from": "All"}}})
}

fn cm(name: &str) -> Value {
    json!({"group": "", "kind": "ConfigMap", "name": name})
}

fn validation(mode: Option<&str>, refs: Vec<Value>) -> Value {
    let mut v = json!({"caCertificateRefs": refs});
    if let Some(mode) = mode {
        v["mode"] = json!(mode);
    }
    v
}

/// `tls.frontend` with a default validation and perPort entries `(port, validation)`.
fn frontend(default: Option<Value>, per_port: Vec<(u16, Option<Value>)>) -> Value {
    let mut default_block = json!({});
    if let Some(v) = default {
        default_block["validation"] = v;
    }
    let mut f = json!({"default": default_block});
    if !per_port.is_empty() {
        f["perPort"] = Value::Array(
            per_port
                .into_iter()
                .map(|(port, v)| {
                    let mut tls = json!({});
                    if let Some(v) = v {
                        tls["validation"] = v;
                    }
                    json!({"port": port, "tls": tls})
                })
                .collect(),
        );
    }
    f
}

fn gateway_json(name: &str, listeners: Vec<Value>, frontend: Option<Value>) -> Value {
    let mut spec = json!({"gatewayClassName": CLASS, "listeners": listeners});
    if let Some(f) = frontend {
        spec["tls"] = json!({"frontend": f});
    }
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
           "metadata": {"name": name, "namespace": NS}, "spec": spec})
}

fn add_gateway(
    store: &mut ObjectStore,
    name: &str,
    listeners: Vec<Value>,
    frontend: Option<Value>,
) {
    insert(store, gateway_json(name, listeners, frontend));
}

fn run(store: &ObjectStore) -> Translation {
    translate(store, &options(None))
}

#[track_caller]
fn port(t: &Translation, port: u16) -> &DesiredPort {
    t.desired
        .port(port)
        .unwrap_or_else(|| panic!("port {port} not served: {:#?}", t.desired))
}

/// The trust anchors of a verifying port, as DER.
#[track_caller]
fn anchors(t: &Translation, p: u16) -> (ValidationMode, Vec<Vec<u8>>) {
    match &port(t, p).client_validation {
        ClientValidation::Verify {
            mode,
            trust_anchors,
        } => (*mode, trust_anchors.iter().map(|a| a.der.clone()).collect()),
        other => panic!("port {p}: {other:?}"),
    }
}

fn gw<'a>(
    t: &'a Translation,
    name: &str,
) -> &'a gateway_api::experimental::gateways::GatewayStatus {
    gateway_status(t, NS, name)
}

/// The ResolvedRefs message of a listener.
fn resolved_refs_message(t: &Translation, gateway: &str, listener_name: &str) -> String {
    condition(
        &listener(gw(t, gateway), listener_name).conditions,
        "ResolvedRefs",
    )
    .expect("ResolvedRefs")
    .message
    .clone()
}

// ---------------------------------------------------------------------------------------------
// §2 Which policy a listener gets.

#[test]
fn s2_http_listener_is_never_covered_even_when_a_per_port_entry_names_its_port() {
    let mut w = world();
    add_gateway(
        &mut w.store,
        "g",
        vec![http("web", 8080), https("secure", 8443)],
        Some(frontend(
            Some(validation(None, vec![cm("ca-a")])),
            vec![(8080, Some(validation(None, vec![cm("ca-b")])))],
        )),
    );
    let t = run(&w.store);
    let web = port(&t, 8080);
    assert_eq!(web.protocol, PortProtocol::Http);
    assert_eq!(web.client_validation, ClientValidation::NotRequested);
    assert!(web.listeners[0].tls.is_none());
    assert_listener_healthy(listener(gw(&t, "g"), "web"));
    assert_listener_healthy(listener(gw(&t, "g"), "secure"));
    assert_eq!(anchors(&t, 8443).1, vec![w.ca_a.der.clone()]);
}

#[test]
fn s2_a_per_port_entry_replaces_the_default_for_its_port() {
    let mut w = world();
    add_gateway(
        &mut w.store,
        "g",
        vec![https("a", 8443), https("b", 8444)],
        Some(frontend(
            Some(validation(None, vec![cm("ca-a")])),
            vec![(8444, Some(validation(None, vec![cm("ca-b")])))],
        )),
    );
    let t = run(&w.store);
    assert_eq!(anchors(&t, 8443).1, vec![w.ca_a.der.clone()]);
    // CA A is trusted by default but not on 8444, which has its own entry.
    assert_eq!(anchors(&t, 8444).1, vec![w.ca_b.der.clone()]);
}

#[test]
fn s2_policy_is_bound_to_the_port_and_shared_by_its_https_listeners() {
    let mut w = world();
    add_gateway(
        &mut w.store,
        "g",
        vec![
            https_host("a", 8443, "a.example.com"),
            https_host("b", 8443, "b.example.com"),
            https("other", 9443),
        ],
        Some(frontend(
            Some(validation(None, vec![cm("ca-a")])),
            vec![(
                8443,
                Some(validation(Some("AllowInsecureFallback"), vec![cm("ca-b")])),
            )],
        )),
    );
    let t = run(&w.store);
    let p = port(&t, 8443);
    assert_eq!(p.listeners.len(), 2);
    assert_eq!(
        anchors(&t, 8443),
        (
            ValidationMode::AllowInsecureFallback,
            vec![w.ca_b.der.clone()]
        )
    );
    assert_eq!(
        anchors(&t, 9443),
        (ValidationMode::AllowValidOnly, vec![w.ca_a.der.clone()])
    );
}

#[test]
fn s2_no_frontend_or_no_validation_means_no_certificate_request() {
    let mut w = world();
    add_gateway(&mut w.store, "plain", vec![https("a", 8443)], None);
    add_gateway(
        &mut w.store,
        "no-validation",
        vec![https("a", 9443)],
        Some(frontend(None, vec![])),
    );
    // A perPort entry without validation turns validation off for its port only.
    add_gateway(
        &mut w.store,
        "per-port-off",
        vec![https("a", 10443), https("b", 10444)],
        Some(frontend(
            Some(validation(None, vec![cm("ca-a")])),
            vec![(10444, None)],
        )),
    );
    let t = run(&w.store);
    for p in [8443, 9443, 10444] {
        assert_eq!(
            port(&t, p).client_validation,
            ClientValidation::NotRequested,
            "{p}"
        );
    }
    assert_eq!(anchors(&t, 10443).1, vec![w.ca_a.der.clone()]);
}

#[test]
fn s2_tls_tcp_and_udp_listeners_are_not_served() {
    let mut w = world();
    add_gateway(
        &mut w.store,
        "g",
        vec![
            json!({"name": "tls", "port": 7443, "protocol": "TLS",
                   "tls": {"mode": "Passthrough"}}),
            json!({"name": "tcp", "port": 7000, "protocol": "TCP"}),
            json!({"name": "udp", "port": 7001, "protocol": "UDP"}),
            https("ok", 8443),
        ],
        Some(frontend(
            Some(validation(None, vec![cm("ca-a")])),
            vec![(7443, None)],
        )),
    );
    let t = run(&w.store);
    for name in ["tls", "tcp", "udp"] {
        let l = listener(gw(&t, "g"), name);
        assert_condition(&l.conditions, "Accepted", false, "UnsupportedProtocol");
        assert_condition(&l.conditions, "Programmed", false, "Invalid");
        assert_eq!(l.supported_kinds.as_deref(), Some(&[][..]), "{name}");
    }
    assert_eq!(t.desired.ports.len(), 1);
    let g = gw(&t, "g");
    assert_condition(gateway_conditions(g), "Accepted", true, "ListenersNotValid");
    assert_condition(gateway_conditions(g), "Programmed", true, "Programmed");
}

// ---------------------------------------------------------------------------------------------
// §3 Modes, as policy data.

#[test]
fn s3_modes_map_to_policy_data() {
    for (mode, expected) in [
        (None, ValidationMode::AllowValidOnly),
        (Some("AllowValidOnly"), ValidationMode::AllowValidOnly),
        (
            Some("AllowInsecureFallback"),
            ValidationMode::AllowInsecureFallback,
        ),
    ] {
        let mut w = world();
        add_gateway(
            &mut w.store,
            "g",
            vec![https("a", 8443)],
            Some(frontend(Some(validation(mode, vec![cm("ca-a")])), vec![])),
        );
        let t = run(&w.store);
        assert_eq!(
            anchors(&t, 8443),
            (expected, vec![w.ca_a.der.clone()]),
            "{mode:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// §4 CA references.

/// A Gateway `g` with one HTTPS listener `a` on 8443 and these default CA refs.
fn with_ca_refs(w: &mut World, refs: Vec<Value>) -> Translation {
    add_gateway(
        &mut w.store,
        "g",
        vec![https("a", 8443)],
        Some(frontend(Some(validation(None, refs)), vec![])),
    );
    run(&w.store)
}

#[test]
fn s4_config_map_ca_crt_is_trusted_and_other_keys_are_ignored() {
    let mut w = world();
    let mut cm_with_extras = ca_config_map(NS, "bundle", "ca.crt", &w.ca_a.cert_pem);
    let data = cm_with_extras.data.as_mut().unwrap();
    data.insert("other.crt".to_owned(), w.ca_b.cert_pem.clone());
    data.insert("README".to_owned(), "not PEM at all".to_owned());
    w.store.insert(cm_with_extras).unwrap();
    let t = with_ca_refs(&mut w, vec![cm("bundle")]);
    assert_eq!(anchors(&t, 8443).1, vec![w.ca_a.der.clone()]);
    assert_listener_healthy(listener(gw(&t, "g"), "a"));
}

#[test]
fn s4_secret_kind_with_ca_crt_is_trusted() {
    let mut w = world();
    w.store
        .insert(ca_secret(NS, "ca-secret", &w.ca_b.cert_pem))
        .unwrap();
    let t = with_ca_refs(
        &mut w,
        vec![json!({"group": "", "kind": "Secret", "name": "ca-secret"})],
    );
    let p = port(&t, 8443);
    let ClientValidation::Verify { trust_anchors, .. } = &p.client_validation else {
        panic!("{:?}", p.client_validation)
    };
    assert_eq!(trust_anchors.len(), 1);
    assert_eq!(trust_anchors[0].der, w.ca_b.der);
    assert_eq!(trust_anchors[0].source, "Secret infra/ca-secret");
    assert_listener_healthy(listener(gw(&t, "g"), "a"));
}

#[test]
fn s4_several_refs_trust_the_union_in_reference_order() {
    let mut w = world();
    let t = with_ca_refs(&mut w, vec![cm("ca-b"), cm("ca-a")]);
    assert_eq!(
        anchors(&t, 8443).1,
        vec![w.ca_b.der.clone(), w.ca_a.der.clone()]
    );
}

#[test]
fn s4_a_bundle_of_several_cas_trusts_each_of_them() {
    let mut w = world();
    let ca_c = TestCa::new("Client CA C");
    let bundle = format!("{}{}{}", w.ca_a.cert_pem, w.ca_b.cert_pem, ca_c.cert_pem);
    w.store
        .insert(ca_config_map(NS, "bundle", "ca.crt", &bundle))
        .unwrap();
    let t = with_ca_refs(&mut w, vec![cm("bundle")]);
    assert_eq!(
        anchors(&t, 8443).1,
        vec![w.ca_a.der.clone(), w.ca_b.der.clone(), ca_c.der.clone()]
    );
}

#[test]
fn s4_two_cas_with_identical_subject_and_serial_are_two_trust_anchors() {
    let mut w = world();
    let twin_1 = TestCa::with_serial("Twin CA", 42);
    let twin_2 = TestCa::with_serial("Twin CA", 42);
    assert_ne!(
        twin_1.der, twin_2.der,
        "different keys, so different certificates"
    );
    w.store
        .insert(ca_config_map(NS, "twin-1", "ca.crt", &twin_1.cert_pem))
        .unwrap();
    w.store
        .insert(ca_config_map(NS, "twin-2", "ca.crt", &twin_2.cert_pem))
        .unwrap();
    add_gateway(
        &mut w.store,
        "g",
        vec![https("one", 8443), https("both", 8444)],
        Some(frontend(
            Some(validation(None, vec![cm("twin-1")])),
            vec![(
                8444,
                Some(validation(None, vec![cm("twin-1"), cm("twin-2")])),
            )],
        )),
    );
    let t = run(&w.store);
    // Port 8443 trusts only the first twin: the data plane checks signatures, so a client of
    // the second twin fails there although subject and serial are the same.
    assert_eq!(anchors(&t, 8443).1, vec![twin_1.der.clone()]);
    assert_eq!(
        anchors(&t, 8444).1,
        vec![twin_1.der.clone(), twin_2.der.clone()]
    );
}

/// One invalid ref after a valid one: (reason, message) of ResolvedRefs; the listener stays
/// accepted and programmed and the valid CA is still trusted.
fn one_bad_ref(w: &mut World, bad: Value) -> (String, String) {
    let t = with_ca_refs(w, vec![cm("ca-a"), bad]);
    let l = listener(gw(&t, "g"), "a");
    assert_condition(&l.conditions, "Accepted", true, "Accepted");
    assert_condition(&l.conditions, "Programmed", true, "Programmed");
    assert_eq!(anchors(&t, 8443).1, vec![w.ca_a.der.clone()]);
    let c = condition(&l.conditions, "ResolvedRefs").unwrap();
    assert_eq!(c.status, "False");
    (c.reason.clone(), c.message.clone())
}

#[test]
fn s4_missing_object_is_invalid_ca_certificate_ref() {
    let (reason, message) = one_bad_ref(&mut world(), cm("nope"));
    assert_eq!(reason, "InvalidCACertificateRef");
    assert!(
        message.contains("ConfigMap infra/nope: not found"),
        "{message}"
    );
}

#[test]
fn s4_missing_ca_crt_key_is_invalid_ca_certificate_ref() {
    let mut w = world();
    let pem = w.ca_b.cert_pem.clone();
    w.store
        .insert(ca_config_map(NS, "wrong-key", "ca.pem", &pem))
        .unwrap();
    let (reason, message) = one_bad_ref(&mut w, cm("wrong-key"));
    assert_eq!(reason, "InvalidCACertificateRef");
    assert!(
        message.contains("ConfigMap infra/wrong-key: key \"ca.crt\" is missing"),
        "{message}"
    );
}

#[test]
fn s4_pem_that_does_not_parse_is_invalid_ca_certificate_ref() {
    let mut w = world();
    w.store
        .insert(ca_config_map(
            NS,
            "bad-pem",
            "ca.crt",
            "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
        ))
        .unwrap();
    w.store
        .insert(ca_config_map(NS, "no-pem", "ca.crt", "hello"))
        .unwrap();
    w.store
        .insert(ca_config_map(
            NS,
            "not-a-cert",
            "ca.crt",
            &pem("CERTIFICATE", b"definitely not DER"),
        ))
        .unwrap();
    for name in ["bad-pem", "no-pem", "not-a-cert"] {
        let (reason, message) = one_bad_ref(&mut world_with(&w, name), cm(name));
        assert_eq!(reason, "InvalidCACertificateRef", "{name}");
        assert!(
            message.contains(&format!("ConfigMap infra/{name}: ca.crt")),
            "{message}"
        );
    }
}

/// A fresh world that shares `w`'s ConfigMap `name`.
fn world_with(w: &World, name: &str) -> World {
    let mut fresh = world();
    let object = w.store.config_maps[&ObjectRef::new(NS, name)].clone();
    fresh.store.insert(object).unwrap();
    fresh
}

#[test]
fn s4_other_kinds_or_groups_are_invalid_ca_certificate_kind() {
    for bad in [
        json!({"group": "", "kind": "Service", "name": "ca-a"}),
        json!({"group": "example.com", "kind": "ConfigMap", "name": "ca-a"}),
    ] {
        let (reason, message) = one_bad_ref(&mut world(), bad.clone());
        assert_eq!(reason, "InvalidCACertificateKind", "{bad}");
        assert!(message.contains("infra/ca-a"), "{message}");
    }
}

fn reference_grant(
    api_version: &str,
    namespace: &str,
    to_kind: &str,
    to_name: Option<&str>,
) -> Value {
    let mut to = json!({"group": "", "kind": to_kind});
    if let Some(name) = to_name {
        to["name"] = json!(name);
    }
    json!({"apiVersion": api_version, "kind": "ReferenceGrant",
           "metadata": {"name": "allow-gateways", "namespace": namespace},
           "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "Gateway",
                              "namespace": NS}],
                    "to": [to]}})
}

#[test]
fn s4_cross_namespace_ca_needs_a_reference_grant_v1beta1_or_v1() {
    let cross = json!({"group": "", "kind": "ConfigMap", "name": "shared-ca", "namespace": "pki"});
    // Without a grant.
    let mut w = world();
    let pem = w.ca_b.cert_pem.clone();
    w.store
        .insert(ca_config_map("pki", "shared-ca", "ca.crt", &pem))
        .unwrap();
    let (reason, message) = one_bad_ref(&mut w, cross.clone());
    assert_eq!(reason, "RefNotPermitted");
    assert!(message.contains("ConfigMap pki/shared-ca"), "{message}");
    // With a grant, in either API version, for the object or for all ConfigMaps.
    for (api_version, name) in [
        ("gateway.networking.k8s.io/v1beta1", Some("shared-ca")),
        ("gateway.networking.k8s.io/v1", None),
    ] {
        let mut w = world();
        w.store
            .insert(ca_config_map("pki", "shared-ca", "ca.crt", &pem))
            .unwrap();
        insert(
            &mut w.store,
            reference_grant(api_version, "pki", "ConfigMap", name),
        );
        let t = with_ca_refs(&mut w, vec![cross.clone()]);
        assert_listener_healthy(listener(gw(&t, "g"), "a"));
        assert_eq!(anchors(&t, 8443).1.len(), 1, "{api_version}");
        // Deleting the grant revokes access: the only ref is then invalid, fail closed.
        w.store.remove(&ObjectKey {
            kind: ObjectKind::ReferenceGrant,
            object: ObjectRef::new("pki", "allow-gateways"),
        });
        let t = run(&w.store);
        assert!(matches!(
            port(&t, 8443).client_validation,
            ClientValidation::RefuseAll { .. }
        ));
    }
}

#[test]
fn s4_a_grant_for_configmaps_or_another_name_does_not_permit_the_ref() {
    let cross = json!({"group": "", "kind": "Secret", "name": "shared-ca", "namespace": "pki"});
    for grant in [
        reference_grant("gateway.networking.k8s.io/v1", "pki", "ConfigMap", None),
        reference_grant(
            "gateway.networking.k8s.io/v1",
            "pki",
            "Secret",
            Some("other"),
        ),
        reference_grant("gateway.networking.k8s.io/v1", "elsewhere", "Secret", None),
    ] {
        let mut w = world();
        let pem = w.ca_b.cert_pem.clone();
        w.store.insert(ca_secret("pki", "shared-ca", &pem)).unwrap();
        insert(&mut w.store, grant);
        let (reason, _) = one_bad_ref(&mut w, cross.clone());
        assert_eq!(reason, "RefNotPermitted");
    }
}

#[test]
fn s4_s5_some_ca_refs_invalid_reports_the_first_bad_reason_and_keeps_serving() {
    let mut w = world();
    let t = with_ca_refs(
        &mut w,
        vec![
            json!({"group": "", "kind": "Service", "name": "x"}),
            cm("ca-a"),
            cm("missing"),
            cm("ca-b"),
        ],
    );
    let l = listener(gw(&t, "g"), "a");
    assert_condition(
        &l.conditions,
        "ResolvedRefs",
        false,
        "InvalidCACertificateKind",
    );
    assert_condition(&l.conditions, "Accepted", true, "Accepted");
    assert_condition(&l.conditions, "Programmed", true, "Programmed");
    let message = resolved_refs_message(&t, "g", "a");
    assert!(message.contains("Service infra/x") && message.contains("ConfigMap infra/missing"));
    assert_eq!(
        anchors(&t, 8443).1,
        vec![w.ca_a.der.clone(), w.ca_b.der.clone()]
    );
}

#[test]
fn s4_s5_all_ca_refs_invalid_fails_closed_on_that_port_only() {
    let mut w = world();
    add_gateway(
        &mut w.store,
        "g",
        vec![
            https_host("a", 8443, "a.example.com"),
            https_host("b", 8443, "b.example.com"),
            https("fine", 8444),
            http("web", 8080),
        ],
        Some(frontend(
            Some(validation(
                None,
                vec![
                    cm("missing"),
                    json!({"group": "", "kind": "Service", "name": "x"}),
                ],
            )),
            vec![(8444, Some(validation(None, vec![cm("ca-a")])))],
        )),
    );
    insert(
        &mut w.store,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
               "metadata": {"name": "r", "namespace": NS},
               "spec": {"parentRefs": [{"name": "g"}]}}),
    );
    let t = run(&w.store);
    for name in ["a", "b"] {
        let l = listener(gw(&t, "g"), name);
        assert_condition(
            &l.conditions,
            "ResolvedRefs",
            false,
            "InvalidCACertificateRef",
        );
        assert_condition(&l.conditions, "Accepted", false, "NoValidCACertificate");
        assert_condition(&l.conditions, "Programmed", false, "Invalid");
        let accepted = &condition(&l.conditions, "Accepted").unwrap().message;
        assert!(accepted.contains("ConfigMap infra/missing"), "{accepted}");
    }
    let refused = port(&t, 8443);
    let ClientValidation::RefuseAll { reason } = &refused.client_validation else {
        panic!("{:?}", refused.client_validation)
    };
    assert!(reason.contains("ConfigMap infra/missing"), "{reason}");
    // The port is kept so that it refuses clients; it has no routes to serve.
    assert_eq!(refused.listeners.len(), 2);
    assert!(refused.listeners.iter().all(|l| l.routes.is_empty()));
    // Other ports are unaffected.
    assert_listener_healthy(listener(gw(&t, "g"), "fine"));
    assert_listener_healthy(listener(gw(&t, "g"), "web"));
    assert_eq!(anchors(&t, 8444).1, vec![w.ca_a.der.clone()]);
    assert_eq!(port(&t, 8444).listeners[0].routes.len(), 1);
    assert_eq!(
        port(&t, 8080).client_validation,
        ClientValidation::NotRequested
    );
    assert_condition(
        gateway_conditions(gw(&t, "g")),
        "Programmed",
        true,
        "Programmed",
    );
}

#[test]
fn s4_an_empty_ca_list_fails_closed() {
    let mut w = world();
    let t = with_ca_refs(&mut w, vec![]);
    assert!(matches!(
        port(&t, 8443).client_validation,
        ClientValidation::RefuseAll { .. }
    ));
    let l = listener(gw(&t, "g"), "a");
    assert_condition(&l.conditions, "Accepted", false, "NoValidCACertificate");
}

// ---------------------------------------------------------------------------------------------
// §5 Status: listeners.

#[test]
fn s5_valid_listener_is_true_true_true_with_supported_kinds() {
    let mut w = world();
    let t = with_ca_refs(&mut w, vec![cm("ca-a")]);
    let l = listener(gw(&t, "g"), "a");
    assert_listener_healthy(l);
    assert_eq!(l.attached_routes, 0);
    let kinds: Vec<(Option<&str>, &str)> = l
        .supported_kinds
        .as_deref()
        .unwrap()
        .iter()
        .map(|k| (k.group.as_deref(), k.kind.as_str()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (Some("gateway.networking.k8s.io"), "HTTPRoute"),
            (Some("gateway.networking.k8s.io"), "GRPCRoute")
        ]
    );
    assert!(condition(&l.conditions, "Conflicted").is_none());
}

/// Gateway `g` with one HTTPS listener using these certificateRefs.
fn with_cert_refs(w: &mut World, refs: Value) -> Translation {
    let mut l = https("a", 8443);
    l["tls"]["certificateRefs"] = refs;
    add_gateway(&mut w.store, "g", vec![l], None);
    run(&w.store)
}

#[track_caller]
fn assert_cert_ref_rejected(t: &Translation, reason: &str, needle: &str) {
    let l = listener(gw(t, "g"), "a");
    assert_condition(&l.conditions, "ResolvedRefs", false, reason);
    assert_condition(&l.conditions, "Programmed", false, "Invalid");
    let message = resolved_refs_message(t, "g", "a");
    assert!(message.contains(needle), "{message}");
    assert!(t.desired.ports.is_empty());
}

#[test]
fn s5_server_certificate_ref_missing_wrong_group_or_kind_or_malformed() {
    let mut w = world();
    w.store
        .insert(tls_secret(NS, "garbage", "Hello world\n", "Hello world\n"))
        .unwrap();
    let mut no_key = tls_secret(NS, "no-key", &w.server.cert_pem, "");
    no_key.data.as_mut().unwrap().remove("tls.key");
    w.store.insert(no_key).unwrap();
    let other = self_signed_leaf(&["example.com"], KeyKind::EcdsaP256);
    w.store
        .insert(tls_secret(
            NS,
            "mismatch",
            &w.server.cert_pem,
            &other.key_pem,
        ))
        .unwrap();
    let base = w.store.clone();
    for (refs, needle) in [
        (json!([{"name": "nope"}]), "Secret infra/nope: not found"),
        (
            json!([{"group": "wrong.group.company.io", "kind": "Secret", "name": "server"}]),
            "Secret.wrong.group.company.io infra/server",
        ),
        (
            json!([{"group": "", "kind": "WrongKind", "name": "server"}]),
            "WrongKind infra/server",
        ),
        (
            json!([{"name": "garbage"}]),
            "Secret infra/garbage: tls.crt",
        ),
        (
            json!([{"name": "no-key"}]),
            "Secret infra/no-key: key \"tls.key\" is missing",
        ),
        (
            json!([{"name": "mismatch"}]),
            "Secret infra/mismatch: tls.key does not match",
        ),
        (
            json!([{"name": "server"}, {"name": "nope"}]),
            "Secret infra/nope: not found",
        ),
        (json!([]), "no tls.certificateRefs"),
    ] {
        w.store = base.clone();
        let t = with_cert_refs(&mut w, refs);
        assert_cert_ref_rejected(&t, "InvalidCertificateRef", needle);
    }
}

#[test]
fn s5_server_certificate_in_another_namespace_needs_a_grant() {
    let mut w = world();
    let pair = w.server.clone();
    w.store
        .insert(tls_secret("certs", "shared", &pair.cert_pem, &pair.key_pem))
        .unwrap();
    let refs = json!([{"name": "shared", "namespace": "certs"}]);
    let t = with_cert_refs(&mut w, refs.clone());
    assert_cert_ref_rejected(&t, "RefNotPermitted", "Secret certs/shared");
    insert(
        &mut w.store,
        reference_grant(
            "gateway.networking.k8s.io/v1beta1",
            "certs",
            "Secret",
            Some("shared"),
        ),
    );
    let t = run(&w.store);
    assert_listener_healthy(listener(gw(&t, "g"), "a"));
    let tls = port(&t, 8443).listeners[0].tls.as_ref().unwrap();
    assert_eq!(tls.certificate.source, "Secret certs/shared");
}

#[test]
fn s6_pkcs1_pkcs8_and_sec1_keys_are_accepted() {
    let rsa = self_signed_leaf(&["example.com"], KeyKind::Rsa2048);
    let ec = self_signed_leaf(&["example.com"], KeyKind::EcdsaP256);
    for (pair, key_pem, encoding) in [
        (
            &rsa,
            rsa.traditional_key_pem(KeyKind::Rsa2048),
            PrivateKeyEncoding::Pkcs1,
        ),
        (&rsa, rsa.key_pem.clone(), PrivateKeyEncoding::Pkcs8),
        (&ec, ec.key_pem.clone(), PrivateKeyEncoding::Pkcs8),
        (
            &ec,
            ec.traditional_key_pem(KeyKind::EcdsaP256),
            PrivateKeyEncoding::Sec1,
        ),
    ] {
        let mut w = world();
        w.store
            .insert(tls_secret(NS, "server", &pair.cert_pem, &key_pem))
            .unwrap();
        add_gateway(&mut w.store, "g", vec![https("a", 8443)], None);
        let t = run(&w.store);
        assert_listener_healthy(listener(gw(&t, "g"), "a"));
        let tls = port(&t, 8443).listeners[0].tls.as_ref().unwrap();
        assert_eq!(
            tls.certificate.key.encoding,
            encoding,
            "{}",
            key_pem.lines().next().unwrap()
        );
    }
}

#[test]
fn s6_secret_string_data_is_read_like_data() {
    let mut w = world();
    let pair = w.server.clone();
    insert(
        &mut w.store,
        json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
               "metadata": {"name": "server", "namespace": NS},
               "stringData": {"tls.crt": pair.cert_pem, "tls.key": pair.key_pem}}),
    );
    add_gateway(&mut w.store, "g", vec![https("a", 8443)], None);
    assert_listener_healthy(listener(gw(&run(&w.store), "g"), "a"));
}

// ---------------------------------------------------------------------------------------------
// §5 Status: Gateway.

#[test]
fn s5_insecure_frontend_validation_mode_follows_default_and_per_port_modes() {
    for (default_mode, per_port_mode, expected) in [
        (Some("AllowInsecureFallback"), None, true),
        (Some("AllowValidOnly"), Some("AllowInsecureFallback"), true),
        (None, Some("AllowValidOnly"), false),
        (Some("AllowValidOnly"), None, false),
    ] {
        let mut w = world();
        let per_port = per_port_mode
            .map(|m| vec![(8444, Some(validation(Some(m), vec![cm("ca-b")])))])
            .unwrap_or_default();
        add_gateway(
            &mut w.store,
            "g",
            vec![https("a", 8443), https("b", 8444)],
            Some(frontend(
                Some(validation(default_mode, vec![cm("ca-a")])),
                per_port,
            )),
        );
        let t = run(&w.store);
        let conditions = gateway_conditions(gw(&t, "g"));
        match condition(conditions, "InsecureFrontendValidationMode") {
            Some(c) => {
                assert!(expected, "{default_mode:?} {per_port_mode:?}");
                assert_eq!(
                    (c.status.as_str(), c.reason.as_str()),
                    ("True", "ConfigurationChanged")
                );
            }
            None => assert!(!expected, "{default_mode:?} {per_port_mode:?}"),
        }
    }
}

#[test]
fn s5_addresses_are_set_even_when_every_listener_is_invalid() {
    let mut w = world();
    let mut g = gateway_json(
        "g",
        vec![{
            let mut l = https("a", 8443);
            l["tls"]["certificateRefs"] = json!([{"name": "nope"}]);
            l
        }],
        None,
    );
    g["spec"]["addresses"] = json!([{"value": "192.0.2.10"}]);
    insert(&mut w.store, g);
    let t = run(&w.store);
    let status = gw(&t, "g");
    let addresses = status.addresses.as_ref().expect("addresses");
    assert_eq!(addresses[0].value, "192.0.2.10");
    assert_eq!(addresses[0].r#type.as_deref(), Some("IPAddress"));
    assert_condition(gateway_conditions(status), "Programmed", false, "Invalid");
    // The caller's addresses (kube mode: the provisioned Service) win.
    let mut opts = options(None);
    opts.gateway_addresses.insert(
        ObjectRef::new(NS, "g"),
        vec![GatewayStatusAddresses {
            r#type: Some("Hostname".to_owned()),
            value: "lb.example.com".to_owned(),
        }],
    );
    let t = translate(&w.store, &opts);
    assert_eq!(
        gw(&t, "g").addresses.as_ref().unwrap()[0].value,
        "lb.example.com"
    );
}

#[test]
fn s5_observed_generation_is_the_objects_generation() {
    let mut w = world();
    let mut g = gateway_json("g", vec![https("a", 8443)], None);
    g["metadata"]["generation"] = json!(7);
    insert(&mut w.store, g);
    insert(
        &mut w.store,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
               "metadata": {"name": "r", "namespace": NS, "generation": 3},
               "spec": {"parentRefs": [{"name": "g"}]}}),
    );
    let t = run(&w.store);
    let status = gw(&t, "g");
    for c in gateway_conditions(status).iter().chain(
        status
            .listeners
            .iter()
            .flatten()
            .flat_map(|l| &l.conditions),
    ) {
        assert_eq!(c.observed_generation, Some(7), "{}", c.type_);
    }
    for c in &route_status(&t, NS, "r").parents[0].conditions {
        assert_eq!(c.observed_generation, Some(3), "{}", c.type_);
    }
    let (_, class) = &t.gateway_class_statuses[0];
    let c = &class.conditions.as_ref().unwrap()[0];
    assert_eq!(
        (c.type_.as_str(), c.status.as_str(), c.observed_generation),
        ("Accepted", "True", Some(1))
    );
}

// ---------------------------------------------------------------------------------------------
// Which Gateways are ours; listeners against each other and across Gateways.

#[test]
fn gateways_are_ours_by_controller_name_or_by_the_extra_class() {
    let mut w = world();
    insert(
        &mut w.store,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
               "metadata": {"name": "someone-else"},
               "spec": {"controllerName": "example.com/other"}}),
    );
    add_gateway(&mut w.store, "ours", vec![http("web", 8080)], None);
    let mut theirs = gateway_json("theirs", vec![http("web", 8081)], None);
    theirs["spec"]["gatewayClassName"] = json!("someone-else");
    insert(&mut w.store, theirs);
    let mut classless = gateway_json("classless", vec![http("web", 8082)], None);
    classless["spec"]["gatewayClassName"] = json!("guide-class");
    insert(&mut w.store, classless);

    let t = run(&w.store);
    let served: Vec<&str> = t
        .gateway_statuses
        .iter()
        .map(|(k, _)| k.name.as_str())
        .collect();
    assert_eq!(served, vec!["ours"]);
    assert_eq!(t.gateway_class_statuses.len(), 1);

    let t = translate(&w.store, &options(Some("guide-class")));
    let served: Vec<&str> = t
        .gateway_statuses
        .iter()
        .map(|(k, _)| k.name.as_str())
        .collect();
    assert_eq!(served, vec!["classless", "ours"]);
}

fn created(seconds: i64) -> Value {
    json!(Time(Timestamp::from_second(seconds).unwrap()))
}

#[test]
fn two_gateways_on_one_port_the_younger_gets_port_unavailable() {
    let mut w = world();
    // "a-young" sorts first by name but is younger by creationTimestamp.
    let mut young = gateway_json("a-young", vec![https("a", 8443), http("web", 8080)], None);
    young["metadata"]["creationTimestamp"] = created(2_000);
    let mut old = gateway_json("z-old", vec![https("a", 8443)], None);
    old["metadata"]["creationTimestamp"] = created(1_000);
    insert(&mut w.store, young);
    insert(&mut w.store, old);
    let t = run(&w.store);
    let l = listener(gw(&t, "a-young"), "a");
    assert_condition(&l.conditions, "Accepted", false, "PortUnavailable");
    assert_condition(&l.conditions, "Programmed", false, "Invalid");
    assert!(
        condition(&l.conditions, "Accepted")
            .unwrap()
            .message
            .contains("infra/z-old")
    );
    assert_listener_healthy(listener(gw(&t, "a-young"), "web"));
    assert_listener_healthy(listener(gw(&t, "z-old"), "a"));
    assert_eq!(port(&t, 8443).gateway, ObjectRef::new(NS, "z-old"));
    assert_eq!(port(&t, 8080).gateway, ObjectRef::new(NS, "a-young"));

    // Without timestamps, namespace/name decides.
    let mut w = world();
    add_gateway(&mut w.store, "b", vec![https("a", 8443)], None);
    add_gateway(&mut w.store, "a", vec![https("a", 8443)], None);
    let t = run(&w.store);
    assert_eq!(port(&t, 8443).gateway, ObjectRef::new(NS, "a"));
    assert_condition(
        &listener(gw(&t, "b"), "a").conditions,
        "Accepted",
        false,
        "PortUnavailable",
    );
}

#[test]
fn same_port_protocol_and_hostname_is_a_hostname_conflict() {
    let mut w = world();
    add_gateway(
        &mut w.store,
        "g",
        vec![
            https_host("one", 8443, "a.example.com"),
            https_host("two", 8443, "A.example.com"),
            https_host("three", 8443, "b.example.com"),
            http("x", 8080),
            http("y", 8080),
        ],
        None,
    );
    let t = run(&w.store);
    for name in ["one", "two", "x", "y"] {
        let l = listener(gw(&t, "g"), name);
        assert_condition(&l.conditions, "Conflicted", true, "HostnameConflict");
        assert_condition(&l.conditions, "Accepted", false, "HostnameConflict");
        assert_condition(&l.conditions, "Programmed", false, "Invalid");
    }
    assert_listener_healthy(listener(gw(&t, "g"), "three"));
    assert_eq!(port(&t, 8443).listeners.len(), 1);
    assert!(t.desired.port(8080).is_none());
}

#[test]
fn a_listener_refused_on_its_own_does_not_conflict_with_a_valid_one() {
    let mut w = world();
    let mut bad_host = http("bad-host", 8080);
    bad_host["hostname"] = json!("not_a_hostname");
    add_gateway(&mut w.store, "g", vec![http("good", 8080), bad_host], None);
    let t = run(&w.store);
    assert_listener_healthy(listener(gw(&t, "g"), "good"));
    let bad = listener(gw(&t, "g"), "bad-host");
    assert_condition(&bad.conditions, "Accepted", false, "UnsupportedValue");
    assert!(condition(&bad.conditions, "Conflicted").is_none());
}

#[test]
fn a_refused_https_listener_beside_a_served_http_one_leaves_the_port_http() {
    // Found by the property test: the port's protocol comes from the served listeners, and a
    // fail-closed HTTPS policy on the port does not empty the HTTP listener's routes.
    let mut w = world();
    let mut bad_https = https("bad-https", 8080);
    bad_https["hostname"] = json!("..");
    add_gateway(
        &mut w.store,
        "g",
        vec![bad_https, http("web", 8080)],
        Some(frontend(
            Some(validation(None, vec![cm("missing")])),
            vec![],
        )),
    );
    insert(
        &mut w.store,
        route(
            "r",
            NS,
            json!({"parentRefs": [{"name": "g", "sectionName": "web"}]}),
        ),
    );
    let t = run(&w.store);
    let p = port(&t, 8080);
    assert_eq!(p.protocol, PortProtocol::Http);
    assert_eq!(p.client_validation, ClientValidation::NotRequested);
    assert_eq!(p.listeners.len(), 1);
    assert_eq!(p.listeners[0].routes.len(), 1);
}

#[test]
fn http_and_https_on_one_port_is_a_protocol_conflict() {
    let mut w = world();
    add_gateway(
        &mut w.store,
        "g",
        vec![https("s", 8443), http("p", 8443), http("ok", 8080)],
        None,
    );
    let t = run(&w.store);
    for name in ["s", "p"] {
        let l = listener(gw(&t, "g"), name);
        assert_condition(&l.conditions, "Conflicted", true, "ProtocolConflict");
        assert_condition(&l.conditions, "Accepted", false, "ProtocolConflict");
    }
    assert!(t.desired.port(8443).is_none());
    assert_listener_healthy(listener(gw(&t, "g"), "ok"));
}

#[test]
fn passthrough_bad_options_bad_ports_and_hostnames_are_not_accepted() {
    let mut w = world();
    let mut passthrough = https("pass", 8443);
    passthrough["tls"]["mode"] = json!("Passthrough");
    let mut bad_option = https("opt", 8444);
    bad_option["tls"]["options"] = json!({"portcullis.dev/no-such-option": "1"});
    let mut good_option = https("good", 8445);
    good_option["tls"]["options"] = json!({"portcullis.dev/tls-session-resumption": "off",
               "example.com/someone-elses": "x"});
    add_gateway(
        &mut w.store,
        "g",
        vec![
            passthrough,
            bad_option,
            good_option,
            json!({"name": "zero", "port": 0, "protocol": "HTTP"}),
            json!({"name": "huge", "port": 70000, "protocol": "HTTP"}),
            json!({"name": "host", "port": 8080, "protocol": "HTTP", "hostname": "bad_host"}),
        ],
        None,
    );
    let t = run(&w.store);
    let g = gw(&t, "g");
    assert_condition(
        &listener(g, "pass").conditions,
        "Accepted",
        false,
        "UnsupportedValue",
    );
    let opt = &listener(g, "opt").conditions;
    assert_condition(opt, "Accepted", false, "UnsupportedValue");
    assert!(
        condition(opt, "Accepted")
            .unwrap()
            .message
            .contains("portcullis.dev/no-such-option")
    );
    assert_listener_healthy(listener(g, "good"));
    let options = &port(&t, 8445).listeners[0].tls.as_ref().unwrap().options;
    assert!(!options.session_resumption);
    for name in ["zero", "huge"] {
        assert_condition(
            &listener(g, name).conditions,
            "Accepted",
            false,
            "PortUnavailable",
        );
    }
    assert_condition(
        &listener(g, "host").conditions,
        "Accepted",
        false,
        "UnsupportedValue",
    );
    assert_eq!(
        t.desired.ports.iter().map(|p| p.port).collect::<Vec<_>>(),
        vec![8445]
    );
}

#[test]
fn allowed_route_kinds_other_than_httproute_and_grpcroute_are_invalid_route_kinds() {
    let mut w = world();
    let mut mixed = http("mixed", 8080);
    mixed["allowedRoutes"]["kinds"] = json!([{"kind": "HTTPRoute"}, {"kind": "TCPRoute"}]);
    let mut none = http("none", 8081);
    none["allowedRoutes"]["kinds"] = json!([{"kind": "TLSRoute"}]);
    add_gateway(&mut w.store, "g", vec![mixed, none], None);
    let t = run(&w.store);
    let g = gw(&t, "g");
    let mixed = listener(g, "mixed");
    assert_condition(
        &mixed.conditions,
        "ResolvedRefs",
        false,
        "InvalidRouteKinds",
    );
    assert_condition(&mixed.conditions, "Programmed", true, "Programmed");
    assert_eq!(mixed.supported_kinds.as_ref().unwrap().len(), 1);
    let none = listener(g, "none");
    assert_condition(&none.conditions, "ResolvedRefs", false, "InvalidRouteKinds");
    assert_condition(&none.conditions, "Programmed", false, "Invalid");
    assert!(none.supported_kinds.as_ref().unwrap().is_empty());
}

#[test]
fn a_repeated_listener_name_is_ignored_and_reported() {
    let mut w = world();
    add_gateway(
        &mut w.store,
        "g",
        vec![http("web", 8080), http("web", 8081)],
        None,
    );
    let t = run(&w.store);
    let g = gw(&t, "g");
    assert_eq!(g.listeners.as_ref().unwrap().len(), 1);
    let accepted = condition(gateway_conditions(g), "Accepted").unwrap();
    assert_eq!(
        (accepted.status.as_str(), accepted.reason.as_str()),
        ("True", "ListenersNotValid")
    );
    assert!(accepted.message.contains("web (duplicate name"));
    assert!(t.desired.port(8081).is_none());
}

// ---------------------------------------------------------------------------------------------
// §5 HTTPRoute status and attachment.

fn route(name: &str, namespace: &str, spec: Value) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
           "metadata": {"name": name, "namespace": namespace}, "spec": spec})
}

fn service(namespace: &str, name: &str, ports: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": namespace}, "spec": {"ports": ports}})
}

#[track_caller]
fn route_accepted(
    t: &Translation,
    namespace: &str,
    name: &str,
    section: Option<&str>,
) -> (String, String, String) {
    let p = parent(route_status(t, namespace, name), "g", section);
    let c = condition(&p.conditions, "Accepted").unwrap();
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

#[test]
fn routes_attach_by_allowed_namespaces_same_all_and_selector() {
    let mut w = world();
    let mut same = http("same", 8080);
    same["allowedRoutes"] = json!({"namespaces": {"from": "Same"}});
    let mut default_same = http("default-same", 8081);
    default_same
        .as_object_mut()
        .unwrap()
        .remove("allowedRoutes");
    let all = http("all", 8082);
    let mut selector = http("selector", 8083);
    selector["allowedRoutes"] = json!({"namespaces": {"from": "Selector",
        "selector": {"matchLabels": {"team": "blue"}}}});
    add_gateway(
        &mut w.store,
        "g",
        vec![same, default_same, all, selector],
        None,
    );
    insert(
        &mut w.store,
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": "blue-apps", "labels": {"team": "blue"}}}),
    );
    let parent_ref = |section: &str| json!({"name": "g", "namespace": NS, "sectionName": section});
    for ns in [NS, "blue-apps", "red-apps"] {
        insert(
            &mut w.store,
            route(
                "r",
                ns,
                json!({"parentRefs": [parent_ref("same"), parent_ref("default-same"),
                                                 parent_ref("all"), parent_ref("selector")]}),
            ),
        );
    }
    let t = run(&w.store);
    let accepted = |ns: &str, section: &str| route_accepted(&t, ns, "r", Some(section));
    let yes = |ns, section| assert_eq!(accepted(ns, section).0, "True", "{ns} {section}");
    let no = |ns, section| {
        let (status, reason, _) = accepted(ns, section);
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("False", "NotAllowedByListeners"),
            "{ns} {section}"
        );
    };
    yes(NS, "same");
    yes(NS, "default-same");
    yes(NS, "all");
    no(NS, "selector");
    no("blue-apps", "same");
    no("blue-apps", "default-same");
    yes("blue-apps", "all");
    yes("blue-apps", "selector");
    no("red-apps", "selector");
    yes("red-apps", "all");
    let g = gw(&t, "g");
    assert_eq!(listener(g, "same").attached_routes, 1);
    assert_eq!(listener(g, "all").attached_routes, 3);
    assert_eq!(listener(g, "selector").attached_routes, 1);
}

#[test]
fn parent_refs_by_section_name_and_port_or_no_matching_parent() {
    let mut w = world();
    add_gateway(
        &mut w.store,
        "g",
        vec![http("a", 8080), http("b", 8081)],
        None,
    );
    insert(
        &mut w.store,
        route(
            "r",
            NS,
            json!({"parentRefs": [
                {"name": "g", "sectionName": "b"},
                {"name": "g", "port": 8080},
                {"name": "g", "sectionName": "missing"},
                {"name": "g", "sectionName": "a", "port": 8081},
                {"name": "not-ours"},
                {"name": "g", "kind": "Service", "group": ""}
            ]}),
        ),
    );
    let t = run(&w.store);
    let status = route_status(&t, NS, "r");
    assert_eq!(
        status.parents.len(),
        4,
        "only parentRefs to our Gateways get a status"
    );
    assert_eq!(route_accepted(&t, NS, "r", Some("b")).0, "True");
    let by_port = status
        .parents
        .iter()
        .find(|p| p.parent_ref.port == Some(8080))
        .unwrap();
    assert_condition(&by_port.conditions, "Accepted", true, "Accepted");
    assert_eq!(
        route_accepted(&t, NS, "r", Some("missing")).1,
        "NoMatchingParent"
    );
    let wrong_port = status
        .parents
        .iter()
        .find(|p| p.parent_ref.section_name.as_deref() == Some("a"))
        .unwrap();
    assert_condition(
        &wrong_port.conditions,
        "Accepted",
        false,
        "NoMatchingParent",
    );
    // Echoed with the API defaults for group and kind.
    assert_eq!(
        by_port.parent_ref.group.as_deref(),
        Some("gateway.networking.k8s.io")
    );
    assert_eq!(by_port.parent_ref.kind.as_deref(), Some("Gateway"));
    assert_eq!(by_port.parent_ref.namespace, None);
    let g = gw(&t, "g");
    assert_eq!(listener(g, "a").attached_routes, 1);
    assert_eq!(listener(g, "b").attached_routes, 1);
}

#[test]
fn route_hostnames_must_intersect_a_listener_hostname() {
    let mut w = world();
    add_gateway(
        &mut w.store,
        "g",
        vec![
            https_host("wild", 8443, "*.example.com"),
            https_host("exact", 8443, "api.example.org"),
        ],
        None,
    );
    insert(
        &mut w.store,
        route(
            "match",
            NS,
            json!({"parentRefs": [{"name": "g"}],
        "hostnames": ["a.example.com", "b.a.example.com", "example.com", "api.example.org"]}),
        ),
    );
    insert(
        &mut w.store,
        route(
            "miss",
            NS,
            json!({"parentRefs": [{"name": "g"}],
        "hostnames": ["example.com", "other.org"]}),
        ),
    );
    let t = run(&w.store);
    assert_eq!(route_accepted(&t, NS, "match", None).0, "True");
    let (status, reason, message) = route_accepted(&t, NS, "miss", None);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "NoMatchingListenerHostname")
    );
    assert!(message.contains("other.org"), "{message}");
    let p = port(&t, 8443);
    let hostnames = |listener_name: &str| {
        p.listeners
            .iter()
            .find(|l| l.name == listener_name)
            .unwrap()
            .routes[0]
            .hostnames
            .clone()
    };
    assert_eq!(
        hostnames("wild"),
        vec!["a.example.com".to_owned(), "b.a.example.com".to_owned()]
    );
    assert_eq!(hostnames("exact"), vec!["api.example.org".to_owned()]);
    let g = gw(&t, "g");
    assert_eq!(
        listener(g, "wild").attached_routes,
        1,
        "only accepted routes count"
    );
}

#[test]
fn backend_refs_resolve_through_services_to_ready_endpoints() {
    let mut w = world();
    add_gateway(&mut w.store, "g", vec![http("web", 8080)], None);
    insert(
        &mut w.store,
        service(
            NS,
            "svc",
            json!([{"name": "http", "port": 80},
                   {"name": "admin", "port": 9000, "appProtocol": "kubernetes.io/h2c"}]),
        ),
    );
    for (slice, ip_ready, ip_not_ready) in [
        ("svc-1", "10.0.0.1", "10.0.0.2"),
        ("svc-2", "10.0.0.3", "10.0.0.4"),
    ] {
        insert(
            &mut w.store,
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": slice, "namespace": NS, "labels": {"kubernetes.io/service-name": "svc"}},
            "addressType": "IPv4",
            "ports": [{"name": "admin", "port": 9900}, {"name": "http", "port": 8080}],
            "endpoints": [
                {"addresses": [ip_ready]},
                {"addresses": [ip_not_ready], "conditions": {"ready": false}}
            ]}),
        );
    }
    // A slice of another Service is not used.
    insert(
        &mut w.store,
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "x", "namespace": NS, "labels": {"kubernetes.io/service-name": "other"}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 1}],
        "endpoints": [{"addresses": ["10.9.9.9"]}]}),
    );
    insert(
        &mut w.store,
        route(
            "r",
            NS,
            json!({"parentRefs": [{"name": "g"}], "rules": [
                {"backendRefs": [{"name": "svc", "port": 80, "weight": 3}, {"name": "svc", "port": 9000, "weight": 0}]}
            ]}),
        ),
    );
    let t = run(&w.store);
    let p = parent(route_status(&t, NS, "r"), "g", None);
    assert_condition(&p.conditions, "ResolvedRefs", true, "ResolvedRefs");
    let backends = &port(&t, 8080).listeners[0].routes[0].rules[0].backends;
    assert_eq!(backends[0].name, "infra/svc:80");
    assert_eq!(backends[0].weight, 3);
    assert_eq!(
        backends[0].target,
        BackendTarget::Endpoints(vec![
            "10.0.0.1:8080".parse().unwrap(),
            "10.0.0.3:8080".parse().unwrap()
        ])
    );
    assert_eq!(backends[0].protocol, BackendProtocol::Http1);
    assert_eq!(backends[1].weight, 0);
    assert_eq!(
        backends[1].protocol,
        BackendProtocol::H2c,
        "appProtocol kubernetes.io/h2c"
    );
    assert_eq!(
        backends[1].target,
        BackendTarget::Endpoints(vec![
            "10.0.0.1:9900".parse().unwrap(),
            "10.0.0.3:9900".parse().unwrap()
        ])
    );
}

#[test]
fn unresolvable_backend_refs_set_resolved_refs_false_and_invalid_targets() {
    for (backend, reason, needle) in [
        (
            json!({"name": "missing", "port": 80}),
            "BackendNotFound",
            "Service infra/missing: not found",
        ),
        (
            json!({"name": "svc", "port": 81}),
            "BackendNotFound",
            "has no port 81",
        ),
        (
            json!({"name": "svc"}),
            "BackendNotFound",
            "port is required",
        ),
        (
            json!({"group": "example.com", "kind": "Bucket", "name": "svc", "port": 80}),
            "InvalidKind",
            "Bucket.example.com infra/svc",
        ),
        (
            json!({"name": "svc", "namespace": "apps", "port": 80}),
            "RefNotPermitted",
            "Service apps/svc",
        ),
    ] {
        let mut w = world();
        add_gateway(&mut w.store, "g", vec![http("web", 8080)], None);
        insert(&mut w.store, service(NS, "svc", json!([{"port": 80}])));
        insert(&mut w.store, service("apps", "svc", json!([{"port": 80}])));
        insert(
            &mut w.store,
            route(
                "r",
                NS,
                json!({"parentRefs": [{"name": "g"}],
            "rules": [{"backendRefs": [backend.clone()]}]}),
            ),
        );
        let t = run(&w.store);
        let p = parent(route_status(&t, NS, "r"), "g", None);
        assert_condition(&p.conditions, "Accepted", true, "Accepted");
        assert_condition(&p.conditions, "ResolvedRefs", false, reason);
        let message = &condition(&p.conditions, "ResolvedRefs").unwrap().message;
        assert!(message.contains(needle), "{message}");
        let target = &port(&t, 8080).listeners[0].routes[0].rules[0].backends[0].target;
        assert!(matches!(target, BackendTarget::Invalid { .. }), "{backend}");
    }
}

#[test]
fn cross_namespace_backend_with_a_grant_from_httproutes_resolves() {
    let mut w = world();
    add_gateway(&mut w.store, "g", vec![http("web", 8080)], None);
    insert(&mut w.store, service("apps", "svc", json!([{"port": 80}])));
    insert(
        &mut w.store,
        route(
            "r",
            NS,
            json!({"parentRefs": [{"name": "g"}],
        "rules": [{"backendRefs": [{"name": "svc", "namespace": "apps", "port": 80}]}]}),
        ),
    );
    insert(
        &mut w.store,
        json!({"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
        "metadata": {"name": "routes", "namespace": "apps"},
        "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": NS}],
                 "to": [{"group": "", "kind": "Service"}]}}),
    );
    let t = run(&w.store);
    assert_condition(
        &parent(route_status(&t, NS, "r"), "g", None).conditions,
        "ResolvedRefs",
        true,
        "ResolvedRefs",
    );
}

#[test]
fn route_matches_become_desired_matches() {
    let mut w = world();
    add_gateway(&mut w.store, "g", vec![http("web", 8080)], None);
    insert(
        &mut w.store,
        route(
            "r",
            NS,
            json!({"parentRefs": [{"name": "g"}], "rules": [
                {"matches": [
                    {"path": {"type": "Exact", "value": "/exact"}, "method": "POST",
                     "headers": [{"name": "X-Env", "value": "prod"}],
                     "queryParams": [{"name": "v", "value": "2"}]},
                    {"path": {"value": "/prefix"}},
                    {"headers": [{"name": "h", "value": "1", "type": "Exact"}]}
                ]},
                {}
            ]}),
        ),
    );
    let t = run(&w.store);
    let rules = &port(&t, 8080).listeners[0].routes[0].rules;
    assert_eq!(
        rules[0].matches,
        vec![
            RouteMatch {
                path: PathMatch::Exact("/exact".to_owned()),
                method: Some("POST".to_owned()),
                headers: vec![HeaderMatch {
                    name: "X-Env".to_owned(),
                    value: "prod".to_owned()
                }],
                query_params: vec![QueryParamMatch {
                    name: "v".to_owned(),
                    value: "2".to_owned()
                }],
            },
            RouteMatch {
                path: PathMatch::Prefix("/prefix".to_owned()),
                ..RouteMatch::default()
            },
            RouteMatch {
                headers: vec![HeaderMatch {
                    name: "h".to_owned(),
                    value: "1".to_owned()
                }],
                ..RouteMatch::default()
            },
        ]
    );
    assert!(rules[1].matches.is_empty());
    assert!(rules[1].backends.is_empty());
}

#[test]
fn regular_expressions_and_filters_make_the_route_unsupported() {
    for rule in [
        json!({"matches": [{"path": {"type": "RegularExpression", "value": "/a.*"}}]}),
        json!({"matches": [{"headers": [{"name": "h", "value": ".*", "type": "RegularExpression"}]}]}),
        json!({"matches": [{"queryParams": [{"name": "q", "value": ".*", "type": "RegularExpression"}]}]}),
        json!({"matches": [{"path": {"type": "PathPrefix", "value": "no-slash"}}]}),
        json!({"filters": [{"type": "URLRewrite", "urlRewrite": {"hostname": "a.example"}}]}),
        json!({"filters": [{"type": "RequestRedirect", "requestRedirect": {"statusCode": 304}}]}),
        json!({"filters": [{"type": "RequestRedirect", "requestRedirect": {"scheme": "https"}}],
               "backendRefs": [{"name": "svc", "port": 80}]}),
        json!({"matches": [{"path": {"type": "Exact", "value": "/a"}}],
               "filters": [{"type": "RequestRedirect", "requestRedirect":
                   {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/b"}}}]}),
        json!({"matches": [{"path": {"type": "PathPrefix", "value": "/a"}},
                           {"path": {"type": "PathPrefix", "value": "/c"}}],
               "filters": [{"type": "RequestRedirect", "requestRedirect":
                   {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/b"}}}]}),
        json!({"filters": [{"type": "RequestHeaderModifier",
               "requestHeaderModifier": {"set": [{"name": "Transfer-Encoding", "value": "chunked"}]}}]}),
    ] {
        let mut w = world();
        add_gateway(&mut w.store, "g", vec![http("web", 8080)], None);
        insert(
            &mut w.store,
            route(
                "r",
                NS,
                json!({"parentRefs": [{"name": "g"}], "rules": [rule.clone()]}),
            ),
        );
        let t = run(&w.store);
        let (status, reason, message) = route_accepted(&t, NS, "r", None);
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("False", "UnsupportedValue"),
            "{rule}"
        );
        assert!(message.contains("rules[0]"), "{message}");
        assert_eq!(listener(gw(&t, "g"), "web").attached_routes, 0);
        assert!(port(&t, 8080).listeners[0].routes.is_empty());
    }
}

/// The conformance suite's RequestHeaderModifier and RequestRedirect rules (Core) become the
/// rules' filters, and the route is accepted.
#[test]
fn header_modifiers_and_redirects_become_the_rules_filters() {
    let mut w = world();
    add_gateway(&mut w.store, "g", vec![http("web", 8080)], None);
    insert(
        &mut w.store,
        route(
            "r",
            NS,
            json!({"parentRefs": [{"name": "g"}], "rules": [
                {"matches": [{"path": {"type": "PathPrefix", "value": "/set"}}],
                 "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {
                     "set": [{"name": "X-Header-Set", "value": "set-overwrites-values"}],
                     "add": [{"name": "X-Header-Add", "value": "add-appends-values"}],
                     "remove": ["X-Header-Remove"]}}]},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/host-and-status"}}],
                 "filters": [{"type": "RequestRedirect", "requestRedirect":
                     {"statusCode": 301, "hostname": "example.org"}}]},
            ]}),
        ),
    );
    let t = run(&w.store);
    let (status, reason, message) = route_accepted(&t, NS, "r", None);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "Accepted"),
        "{message}"
    );
    let rules = &port(&t, 8080).listeners[0].routes[0].rules;
    let field = |name: &str, value: &str| HeaderField {
        name: name.to_owned(),
        value: value.to_owned(),
    };
    assert_eq!(
        rules[0].filters,
        RuleFilters {
            request_headers: HeaderModifier {
                set: vec![field("X-Header-Set", "set-overwrites-values")],
                add: vec![field("X-Header-Add", "add-appends-values")],
                remove: vec!["X-Header-Remove".to_owned()],
            },
            ..RuleFilters::default()
        }
    );
    assert_eq!(
        rules[1].filters.redirect,
        Some(RequestRedirect {
            scheme: None,
            hostname: Some("example.org".to_owned()),
            port: None,
            path: None,
            status: RedirectStatus::MovedPermanently,
        })
    );
    assert!(rules[1].backends.is_empty());
}

#[test]
fn routes_on_a_listener_are_ordered_oldest_first_then_by_name() {
    let mut w = world();
    add_gateway(&mut w.store, "g", vec![http("web", 8080)], None);
    for (name, namespace, created_at) in [
        ("c", NS, Some(100)),
        ("b", NS, None),
        ("a", "zz", None),
        ("d", NS, Some(50)),
    ] {
        let mut r = route(
            name,
            namespace,
            json!({"parentRefs": [{"name": "g", "namespace": NS}]}),
        );
        if let Some(s) = created_at {
            r["metadata"]["creationTimestamp"] = created(s);
        }
        insert(&mut w.store, r);
    }
    let mut web = http("web", 8080);
    web["allowedRoutes"] = json!({"namespaces": {"from": "All"}});
    add_gateway(&mut w.store, "g", vec![web], None);
    let t = run(&w.store);
    let order: Vec<String> = port(&t, 8080).listeners[0]
        .routes
        .iter()
        .map(|r| r.route.to_string())
        .collect();
    // Objects without a timestamp first (a manifest folder has none), then by age.
    assert_eq!(order, vec!["infra/b", "zz/a", "infra/d", "infra/c"]);
}

#[test]
fn a_listener_that_is_not_programmed_still_counts_attached_routes() {
    // Gateway API: attachment depends on parentRef and allowedRoutes, not on listener state.
    let mut w = world();
    let mut l = https("a", 8443);
    l["tls"]["certificateRefs"] = json!([{"name": "nope"}]);
    add_gateway(&mut w.store, "g", vec![l], None);
    insert(
        &mut w.store,
        route("r", NS, json!({"parentRefs": [{"name": "g"}]})),
    );
    let t = run(&w.store);
    let l = listener(gw(&t, "g"), "a");
    assert_eq!(l.attached_routes, 1);
    assert_condition(&l.conditions, "Programmed", false, "Invalid");
    assert_eq!(route_accepted(&t, NS, "r", None).0, "True");
    assert!(t.desired.ports.is_empty());
}

#[test]
fn client_identity_rules_need_frontend_validation_on_their_port() {
    let mut w = world();
    let restricted = || {
        let mut l = https("restricted", 8443);
        l["tls"]["options"] =
            json!({"portcullis.dev/verify-subject-alt-names": "client.example.com"});
        l
    };
    add_gateway(&mut w.store, "unverified", vec![restricted()], None);
    let t = run(&w.store);
    let conditions = &listener(gw(&t, "unverified"), "restricted").conditions;
    assert_condition(conditions, "Accepted", false, "UnsupportedValue");
    assert!(t.desired.port(8443).is_none(), "fail closed: not served");

    let mut w = world();
    add_gateway(
        &mut w.store,
        "verified",
        vec![restricted()],
        Some(frontend(Some(validation(None, vec![cm("ca-a")])), vec![])),
    );
    let t = run(&w.store);
    assert_listener_healthy(listener(gw(&t, "verified"), "restricted"));
    let options = &port(&t, 8443).listeners[0].tls.as_ref().unwrap().options;
    assert_eq!(options.client_identity.subject_alt_names.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// GRPCRoute: attachment, matches, precedence, the HTTPRoute/GRPCRoute hostname rule, backends,
// statuses.

fn grpc_route(name: &str, namespace: &str, spec: Value) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
           "metadata": {"name": name, "namespace": namespace, "generation": 3}, "spec": spec})
}

#[track_caller]
fn grpc_parent<'a>(
    t: &'a Translation,
    name: &str,
    section: Option<&str>,
) -> &'a GrpcRouteStatusParents {
    t.grpc_route_status(&ObjectRef::new(NS, name))
        .unwrap_or_else(|| panic!("no status for GRPCRoute {NS}/{name}"))
        .parents
        .iter()
        .find(|p| p.parent_ref.name == "g" && p.parent_ref.section_name.as_deref() == section)
        .unwrap_or_else(|| panic!("no parent status for g {section:?}"))
}

/// `(status, reason, message)` of a GRPCRoute's Accepted condition for Gateway `g`.
#[track_caller]
fn grpc_accepted(t: &Translation, name: &str, section: Option<&str>) -> (String, String, String) {
    let c = condition(&grpc_parent(t, name, section).conditions, "Accepted").unwrap();
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

#[track_caller]
fn desired_listener<'a>(t: &'a Translation, port_number: u16, name: &str) -> &'a DesiredListener {
    port(t, port_number)
        .listeners
        .iter()
        .find(|l| l.name == name)
        .unwrap_or_else(|| panic!("listener {name} not served"))
}

/// The names of the routes attached to a served listener, in its order.
fn attached(t: &Translation, port_number: u16, listener_name: &str) -> Vec<String> {
    desired_listener(t, port_number, listener_name)
        .routes
        .iter()
        .map(|r| r.route.name.clone())
        .collect()
}

#[test]
fn grpc_routes_attach_like_http_routes_to_http_and_https_listeners() {
    let mut w = world();
    let mut http_only = http("http-only", 8081);
    http_only["allowedRoutes"]["kinds"] = json!([{"kind": "HTTPRoute"}]);
    let mut grpc_only = http("grpc-only", 8082);
    grpc_only["allowedRoutes"]["kinds"] = json!([{"kind": "GRPCRoute"}]);
    let mut same_ns = http("same-ns", 8083);
    same_ns["allowedRoutes"] = json!({"namespaces": {"from": "Same"}});
    add_gateway(
        &mut w.store,
        "g",
        vec![
            http("web", 8080),
            https_host("secure", 8443, "*.example.com"),
            http_only,
            grpc_only,
            same_ns,
        ],
        None,
    );
    let parent_ref = |section: &str| json!({"name": "g", "namespace": NS, "sectionName": section});
    insert(
        &mut w.store,
        grpc_route(
            "all",
            NS,
            json!({"parentRefs": [{"name": "g"}], "hostnames": ["rpc.example.com"]}),
        ),
    );
    insert(
        &mut w.store,
        grpc_route(
            "r",
            "apps",
            json!({"parentRefs": [parent_ref("http-only"), parent_ref("grpc-only"),
                                  parent_ref("same-ns"), parent_ref("missing"),
                                  {"name": "g", "namespace": NS, "port": 8443}],
                   "hostnames": ["rpc.example.org"]}),
        ),
    );
    let t = run(&w.store);
    // Listeners without allowedRoutes.kinds take both kinds; a kinds list may name GRPCRoute.
    let g = gw(&t, "g");
    let kinds = |name: &str| -> Vec<String> {
        listener(g, name)
            .supported_kinds
            .iter()
            .flatten()
            .map(|k| k.kind.clone())
            .collect()
    };
    assert_eq!(kinds("web"), vec!["HTTPRoute", "GRPCRoute"]);
    assert_eq!(kinds("secure"), vec!["HTTPRoute", "GRPCRoute"]);
    assert_eq!(kinds("http-only"), vec!["HTTPRoute"]);
    assert_eq!(kinds("grpc-only"), vec!["GRPCRoute"]);
    assert_listener_healthy(listener(g, "grpc-only"));

    // No parentRef section: every listener that admits it and whose hostname intersects.
    let p = grpc_parent(&t, "all", None);
    assert_condition(&p.conditions, "Accepted", true, "Accepted");
    assert_condition(&p.conditions, "ResolvedRefs", true, "ResolvedRefs");
    assert_eq!(p.controller_name, "portcullis.dev/gateway-controller");
    assert_eq!(
        p.parent_ref.group.as_deref(),
        Some("gateway.networking.k8s.io")
    );
    assert_eq!(p.parent_ref.kind.as_deref(), Some("Gateway"));
    assert!(
        p.conditions
            .iter()
            .all(|c| c.observed_generation == Some(3))
    );
    assert_eq!(attached(&t, 8080, "web"), vec!["all"]);
    assert_eq!(attached(&t, 8443, "secure"), vec!["all"]);
    assert_eq!(
        desired_listener(&t, 8443, "secure").routes[0].hostnames,
        vec!["rpc.example.com"]
    );
    assert!(attached(&t, 8081, "http-only").is_empty());
    // apps/r too (below); without timestamps, by namespace/name.
    assert_eq!(attached(&t, 8082, "grpc-only"), vec!["r", "all"]);
    assert_eq!(listener(g, "web").attached_routes, 1);
    assert_eq!(listener(g, "http-only").attached_routes, 0);

    // From namespace apps, by section name and port.
    let parents = &t
        .grpc_route_status(&ObjectRef::new("apps", "r"))
        .unwrap()
        .parents;
    let reason = |section: Option<&str>, port: Option<i32>| {
        let p = parents
            .iter()
            .find(|p| p.parent_ref.section_name.as_deref() == section && p.parent_ref.port == port)
            .unwrap();
        let c = condition(&p.conditions, "Accepted").unwrap();
        (c.status.clone(), c.reason.clone(), c.message.clone())
    };
    let (status, why, message) = reason(Some("http-only"), None);
    assert_eq!(
        (status.as_str(), why.as_str()),
        ("False", "NotAllowedByListeners")
    );
    assert!(
        message.contains("GRPCRoutes from namespace apps"),
        "{message}"
    );
    assert_eq!(reason(Some("grpc-only"), None).0, "True");
    assert_eq!(reason(Some("same-ns"), None).1, "NotAllowedByListeners");
    assert_eq!(reason(Some("missing"), None).1, "NoMatchingParent");
    assert_eq!(reason(None, Some(8443)).1, "NoMatchingListenerHostname");
    assert_eq!(listener(g, "grpc-only").attached_routes, 2);
}

#[test]
fn grpc_method_and_header_matches_become_desired_matches() {
    let mut w = world();
    add_gateway(&mut w.store, "g", vec![http("web", 8080)], None);
    // Read through the manifest loader, as in file mode.
    load_yaml(
        &mut w.store,
        "
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: rpc, namespace: infra}
spec:
  parentRefs: [{name: g}]
  rules:
  - matches:
    - method: {service: pkg.Echo, method: Say}
      headers: [{name: X-Env, value: prod}]
    - method: {type: Exact, service: pkg.Other}
    - method: {method: Ping, service: ''}
    - headers: [{name: h, value: '1', type: Exact}]
  - {}
",
    );
    let t = run(&w.store);
    assert_eq!(grpc_accepted(&t, "rpc", None).0, "True");
    let rules = &desired_listener(&t, 8080, "web").routes[0].rules;
    let grpc = |service: Option<&str>, method: Option<&str>| PathMatch::Grpc {
        service: service.map(str::to_owned),
        method: method.map(str::to_owned),
    };
    let header = |name: &str, value: &str| HeaderMatch {
        name: name.to_owned(),
        value: value.to_owned(),
    };
    assert_eq!(
        rules[0].matches,
        vec![
            RouteMatch {
                path: grpc(Some("pkg.Echo"), Some("Say")),
                headers: vec![header("X-Env", "prod")],
                ..RouteMatch::default()
            },
            RouteMatch {
                path: grpc(Some("pkg.Other"), None),
                ..RouteMatch::default()
            },
            RouteMatch {
                path: grpc(None, Some("Ping")),
                ..RouteMatch::default()
            },
            // No method: every gRPC request (the default match), with the header.
            RouteMatch {
                headers: vec![header("h", "1")],
                ..RouteMatch::default()
            },
        ]
    );
    // No matches at all: every request, as the API requires.
    assert!(rules[1].matches.is_empty());
}

#[test]
fn grpc_regular_expressions_filters_and_bad_method_matches_make_the_route_unsupported() {
    for rule in [
        json!({"matches": [{"method": {"type": "RegularExpression", "service": "pkg\\..*"}}]}),
        json!({"matches": [{"headers": [{"name": "h", "value": ".*", "type": "RegularExpression"}]}]}),
        json!({"matches": [{"method": {"type": "Exact"}}]}),
        json!({"matches": [{"method": {"service": "", "method": ""}}]}),
        json!({"matches": [{"method": {"service": "pkg/Echo"}}]}),
        json!({"matches": [{"method": {"method": "Say/x"}}]}),
        json!({"filters": [{"type": "RequestHeaderModifier",
                            "requestHeaderModifier": {"set": [{"name": "a", "value": "b"}]}}]}),
        json!({"backendRefs": [{"name": "svc", "port": 80, "filters": [{"type": "RequestHeaderModifier",
                            "requestHeaderModifier": {"set": [{"name": "a", "value": "b"}]}}]}]}),
    ] {
        let mut w = world();
        add_gateway(&mut w.store, "g", vec![http("web", 8080)], None);
        insert(&mut w.store, service(NS, "svc", json!([{"port": 80}])));
        insert(
            &mut w.store,
            grpc_route(
                "r",
                NS,
                json!({"parentRefs": [{"name": "g"}], "rules": [rule.clone()]}),
            ),
        );
        let t = run(&w.store);
        let (status, reason, message) = grpc_accepted(&t, "r", None);
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("False", "UnsupportedValue"),
            "{rule}"
        );
        assert!(message.contains("rules[0]"), "{message}");
        assert_eq!(listener(gw(&t, "g"), "web").attached_routes, 0);
        assert!(port(&t, 8080).listeners[0].routes.is_empty());
    }
}

/// The backend name of the rule a gRPC call is routed to on a served listener.
fn route_call(
    listener: &DesiredListener,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<String> {
    let table = RouteTable::new(&listener.routes);
    let headers = HeaderPairs(headers);
    table
        .find(&RouteRequest {
            host,
            method: "POST",
            path,
            query: None,
            headers: &headers,
        })
        .map(|t| t.backends[0].name.clone())
}

#[test]
fn grpc_precedence_across_routes_is_service_then_method_then_headers_then_age() {
    let mut w = world();
    add_gateway(&mut w.store, "g", vec![http("web", 8080)], None);
    for svc in ["older", "younger", "service", "method", "header"] {
        insert(&mut w.store, service(NS, svc, json!([{"port": 80}])));
    }
    let backend = |name: &str| json!([{"name": name, "port": 80}]);
    let mut younger = grpc_route(
        "a-younger",
        NS,
        json!({"parentRefs": [{"name": "g"}], "rules": [
            {"matches": [{"method": {"service": "pkg.Echo", "method": "Say"}}],
             "backendRefs": backend("younger")},
            {"matches": [{"method": {"service": "pkg.Echo", "method": "Say"},
                          "headers": [{"name": "x-canary", "value": "1"}]}],
             "backendRefs": backend("header")}
        ]}),
    );
    younger["metadata"]["creationTimestamp"] = created(200);
    let mut older = grpc_route(
        "z-older",
        NS,
        json!({"parentRefs": [{"name": "g"}], "rules": [
            {"matches": [{"method": {"service": "pkg.Echo"}}], "backendRefs": backend("service")},
            {"matches": [{"method": {"service": "pkg.Echo", "method": "Say"}}],
             "backendRefs": backend("older")},
            {"matches": [{"method": {"method": "AVeryLongMethodName"}}],
             "backendRefs": backend("method")}
        ]}),
    );
    older["metadata"]["creationTimestamp"] = created(100);
    insert(&mut w.store, younger);
    insert(&mut w.store, older);
    let t = run(&w.store);
    let web = desired_listener(&t, 8080, "web");
    assert_eq!(attached(&t, 8080, "web"), vec!["z-older", "a-younger"]);
    let call = |path, headers: &[(&str, &str)]| route_call(web, "h", path, headers);
    // Same service and method in two routes: the older route wins, whatever the names.
    assert_eq!(
        call("/pkg.Echo/Say", &[]).as_deref(),
        Some("infra/older:80")
    );
    // More header matches win over age.
    assert_eq!(
        call("/pkg.Echo/Say", &[("x-canary", "1")]).as_deref(),
        Some("infra/header:80")
    );
    // A service match beats a longer method-only match; the method match takes other services.
    assert_eq!(
        call("/pkg.Echo/AVeryLongMethodName", &[]).as_deref(),
        Some("infra/service:80")
    );
    assert_eq!(
        call("/pkg.Other/AVeryLongMethodName", &[]).as_deref(),
        Some("infra/method:80")
    );
    assert_eq!(call("/pkg.Other/Say", &[]), None);
}

#[test]
fn an_http_route_and_a_grpc_route_sharing_a_hostname_on_a_listener_the_older_is_accepted() {
    let mut w = world();
    add_gateway(
        &mut w.store,
        "g",
        vec![
            http("web", 8080),
            https_host("rpc", 8443, "rpc.example.com"),
        ],
        None,
    );
    let add = |store: &mut ObjectStore, kind: &str, name: &str, created_at: i64, spec: Value| {
        let mut r = if kind == "HTTPRoute" {
            route(name, NS, spec)
        } else {
            grpc_route(name, NS, spec)
        };
        r["metadata"]["creationTimestamp"] = created(created_at);
        insert(store, r);
    };
    let web = json!({"name": "g", "sectionName": "web"});
    // An older HTTPRoute keeps *.example.com's a.example.com against a younger GRPCRoute.
    add(
        &mut w.store,
        "HTTPRoute",
        "site",
        100,
        json!({"parentRefs": [web], "hostnames": ["a.example.com"]}),
    );
    add(
        &mut w.store,
        "GRPCRoute",
        "api",
        200,
        json!({"parentRefs": [web], "hostnames": ["*.example.com"]}),
    );
    // An older GRPCRoute against a younger HTTPRoute without hostnames (every host).
    add(
        &mut w.store,
        "GRPCRoute",
        "rpc-old",
        50,
        json!({"parentRefs": [web], "hostnames": ["rpc.example.org"]}),
    );
    add(
        &mut w.store,
        "HTTPRoute",
        "catch-all",
        300,
        json!({"parentRefs": [web]}),
    );
    // Disjoint hostnames: both accepted.
    add(
        &mut w.store,
        "HTTPRoute",
        "x",
        400,
        json!({"parentRefs": [web], "hostnames": ["x.test"]}),
    );
    add(
        &mut w.store,
        "GRPCRoute",
        "y",
        500,
        json!({"parentRefs": [web], "hostnames": ["y.test"]}),
    );
    // Same age: the first by namespace/name wins (a GRPCRoute "t1" before an HTTPRoute "t2").
    add(
        &mut w.store,
        "HTTPRoute",
        "t2",
        600,
        json!({"parentRefs": [web], "hostnames": ["tie.test"]}),
    );
    add(
        &mut w.store,
        "GRPCRoute",
        "t1",
        600,
        json!({"parentRefs": [web], "hostnames": ["tie.test"]}),
    );
    // Refused on one listener, attached on another: accepted for the parentRef.
    add(
        &mut w.store,
        "GRPCRoute",
        "both",
        700,
        json!({"parentRefs": [{"name": "g"}],
        "hostnames": ["a.example.com", "rpc.example.com"]}),
    );
    let t = run(&w.store);
    let http_accepted = |name: &str| route_accepted(&t, NS, name, Some("web"));
    let conflict = |(status, reason, message): (String, String, String), older: &str| {
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("False", "HostnameConflict"),
            "{message}"
        );
        assert!(message.contains(older), "{message}");
    };
    assert_eq!(http_accepted("site").0, "True");
    conflict(
        grpc_accepted(&t, "api", Some("web")),
        "HTTPRoute infra/site",
    );
    assert_eq!(grpc_accepted(&t, "rpc-old", Some("web")).0, "True");
    conflict(http_accepted("catch-all"), "GRPCRoute infra/rpc-old");
    assert_eq!(http_accepted("x").0, "True");
    assert_eq!(grpc_accepted(&t, "y", Some("web")).0, "True");
    assert_eq!(grpc_accepted(&t, "t1", Some("web")).0, "True");
    conflict(http_accepted("t2"), "GRPCRoute infra/t1");
    assert_eq!(grpc_accepted(&t, "both", None).0, "True");

    assert_eq!(
        attached(&t, 8080, "web"),
        vec!["rpc-old", "site", "x", "y", "t1"]
    );
    assert_eq!(attached(&t, 8443, "rpc"), vec!["both"]);
    let g = gw(&t, "g");
    assert_eq!(listener(g, "web").attached_routes, 5);
    assert_eq!(listener(g, "rpc").attached_routes, 1);
}

#[test]
fn grpc_backends_are_h2c_whatever_the_service_port_says() {
    let mut w = world();
    add_gateway(&mut w.store, "g", vec![http("web", 8080)], None);
    insert(
        &mut w.store,
        service(
            NS,
            "svc",
            json!([{"name": "plain", "port": 80},
                   {"name": "h2c", "port": 9000, "appProtocol": "kubernetes.io/h2c"}]),
        ),
    );
    insert(
        &mut w.store,
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "svc-1", "namespace": NS, "labels": {"kubernetes.io/service-name": "svc"}},
        "addressType": "IPv4",
        "ports": [{"name": "plain", "port": 8080}, {"name": "h2c", "port": 9900}],
        "endpoints": [{"addresses": ["10.0.0.1"]}]}),
    );
    insert(
        &mut w.store,
        grpc_route(
            "r",
            NS,
            json!({"parentRefs": [{"name": "g"}], "rules": [{"backendRefs": [
                {"name": "svc", "port": 80, "weight": 2},
                {"name": "svc", "port": 9000},
                {"name": "missing", "port": 80}
            ]}]}),
        ),
    );
    let t = run(&w.store);
    let backends = &desired_listener(&t, 8080, "web").routes[0].rules[0].backends;
    assert_eq!(
        backends
            .iter()
            .map(|b| (b.name.as_str(), b.weight, b.protocol))
            .collect::<Vec<_>>(),
        vec![
            ("infra/svc:80", 2, BackendProtocol::H2c),
            ("infra/svc:9000", 1, BackendProtocol::H2c),
            ("infra/missing:80", 1, BackendProtocol::H2c),
        ]
    );
    assert_eq!(
        backends[0].target,
        BackendTarget::Endpoints(vec!["10.0.0.1:8080".parse().unwrap()])
    );
    assert_eq!(
        backends[1].target,
        BackendTarget::Endpoints(vec!["10.0.0.1:9900".parse().unwrap()])
    );
    assert!(matches!(backends[2].target, BackendTarget::Invalid { .. }));
    let p = grpc_parent(&t, "r", None);
    assert_condition(&p.conditions, "Accepted", true, "Accepted");
    assert_condition(&p.conditions, "ResolvedRefs", false, "BackendNotFound");
}

#[test]
fn grpc_cross_namespace_backends_need_a_grant_from_grpcroutes() {
    let grant_from = |kind: &str| {
        json!({"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
        "metadata": {"name": "routes", "namespace": "apps"},
        "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": kind, "namespace": NS}],
                 "to": [{"group": "", "kind": "Service"}]}})
    };
    for (grant, resolved) in [
        (None, false),
        (Some(grant_from("HTTPRoute")), false),
        (Some(grant_from("GRPCRoute")), true),
    ] {
        let mut w = world();
        add_gateway(&mut w.store, "g", vec![http("web", 8080)], None);
        insert(&mut w.store, service("apps", "svc", json!([{"port": 80}])));
        insert(
            &mut w.store,
            grpc_route(
                "r",
                NS,
                json!({"parentRefs": [{"name": "g"}],
                "rules": [{"backendRefs": [{"name": "svc", "namespace": "apps", "port": 80}]}]}),
            ),
        );
        if let Some(grant) = grant.clone() {
            insert(&mut w.store, grant);
        }
        let t = run(&w.store);
        let conditions = &grpc_parent(&t, "r", None).conditions;
        let target = &desired_listener(&t, 8080, "web").routes[0].rules[0].backends[0].target;
        if resolved {
            assert_condition(conditions, "ResolvedRefs", true, "ResolvedRefs");
            assert!(matches!(target, BackendTarget::Endpoints(_)));
        } else {
            assert_condition(conditions, "ResolvedRefs", false, "RefNotPermitted");
            let message = &condition(conditions, "ResolvedRefs").unwrap().message;
            assert!(
                message.contains("GRPCRoutes in namespace infra"),
                "{message}"
            );
            assert!(matches!(target, BackendTarget::Invalid { .. }), "{grant:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A port the data plane reported it cannot listen on.

#[test]
fn a_port_the_data_plane_cannot_listen_on_leaves_its_listeners_pending() {
    let mut w = world();
    add_gateway(
        &mut w.store,
        "g",
        vec![http("open", 8080), http("taken", 8081)],
        None,
    );
    let mut options = options(None);
    options.unserved_ports.insert(
        portcullis_core::desired::ObjectRef::new(NS, "g"),
        BTreeMap::from([(
            8081,
            "port 8081 is already in use by another process".to_owned(),
        )]),
    );
    let t = translate(&w.store, &options);
    let status = gw(&t, "g");
    assert_condition(
        &listener(status, "open").conditions,
        "Programmed",
        true,
        "Programmed",
    );
    let taken = &listener(status, "taken").conditions;
    assert_condition(taken, "Programmed", false, "Pending");
    assert_condition(taken, "Accepted", true, "Accepted");
    let message = &condition(taken, "Programmed").unwrap().message;
    assert!(message.contains("already in use"), "{message}");
    let programmed = condition(status.conditions.as_ref().unwrap(), "Programmed").unwrap();
    assert_eq!(programmed.message, "1 of 2 listeners programmed");
    // What the data plane is given does not change: it keeps trying.
    assert!(t.desired.port(8081).is_some());
    // Served again: programmed again.
    assert_condition(
        &listener(gw(&run(&w.store), "g"), "taken").conditions,
        "Programmed",
        true,
        "Programmed",
    );
}
