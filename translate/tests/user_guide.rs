//! Golden tests: the user guide's manifests (default step and perPort step) with the Secret and
//! ConfigMap its openssl commands create, generated here with rcgen.

// Test-crate helpers outside #[test] fns: a failed setup step stops the test with its message.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};

use portcullis_core::desired::{
    BackendTarget, ClientValidation, ObjectRef, PortProtocol, ValidationMode,
};
use portcullis_translate::check::render_statuses;
use portcullis_translate::{ObjectStore, Translation, translate};
use support::*;

const GUIDE_NAMESPACE: &str = "agentgateway-system";
const GUIDE_CLASS: &str = "agentgateway";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/user-guide")
        .join(name)
}

/// The guide's certificates: a "Test CA", a server leaf for example.com and *.example.com.
struct GuideCerts {
    ca: TestCa,
    server: ServerPair,
}

fn guide_certs() -> GuideCerts {
    let ca = TestCa::new("Test CA");
    let server = ca.leaf(&["example.com", "*.example.com"]);
    GuideCerts { ca, server }
}

/// The cluster after the guide's step `gateway_file`: httpbin, the route, the Gateway, the
/// `https-cert` Secret and the `ca-cert` ConfigMap.
fn guide_store(gateway_file: &str, certs: &GuideCerts) -> ObjectStore {
    let mut store = ObjectStore::new();
    for file in ["httpbin.yaml", "httproute.yaml", gateway_file] {
        let text = std::fs::read_to_string(fixture(file)).expect("fixture readable");
        load_yaml(&mut store, &text);
    }
    store
        .insert(tls_secret(
            GUIDE_NAMESPACE,
            "https-cert",
            &certs.server.cert_pem,
            &certs.server.key_pem,
        ))
        .expect("secret");
    store
        .insert(ca_config_map(
            GUIDE_NAMESPACE,
            "ca-cert",
            "ca.crt",
            &certs.ca.cert_pem,
        ))
        .expect("configmap");
    store
}

fn translate_step(gateway_file: &str, certs: &GuideCerts) -> Translation {
    translate(
        &guide_store(gateway_file, certs),
        &options(Some(GUIDE_CLASS)),
    )
}

/// Compares with a golden file; `UPDATE_GOLDEN=1 cargo test` rewrites it.
fn assert_golden(name: &str, actual: &str) {
    let path = fixture(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("golden writable");
    }
    let expected = std::fs::read_to_string(&path).expect("golden file exists");
    assert_eq!(actual, expected, "statuses differ from {}", path.display());
}

#[track_caller]
fn assert_all_true_with_one_route(t: &Translation) {
    let gateway = gateway_status(t, GUIDE_NAMESPACE, "mtls");
    assert_condition(gateway_conditions(gateway), "Accepted", true, "Accepted");
    assert_condition(
        gateway_conditions(gateway),
        "Programmed",
        true,
        "Programmed",
    );
    for name in ["https-8443", "https-8444"] {
        let l = listener(gateway, name);
        assert_listener_healthy(l);
        assert_eq!(l.attached_routes, 1, "{name}");
        let kinds = l.supported_kinds.as_deref().unwrap_or_default();
        assert_eq!(kinds.len(), 2);
        assert_eq!(kinds[0].kind, "HTTPRoute");
        assert_eq!(kinds[1].kind, "GRPCRoute");
        assert!(
            kinds
                .iter()
                .all(|k| k.group.as_deref() == Some("gateway.networking.k8s.io"))
        );
    }
    let route = route_status(t, "httpbin", "httpbin-https");
    assert_eq!(route.parents.len(), 1);
    let p = &route.parents[0];
    assert_eq!(p.controller_name, "portcullis.dev/gateway-controller");
    assert_eq!(p.parent_ref.name, "mtls");
    assert_eq!(p.parent_ref.namespace.as_deref(), Some(GUIDE_NAMESPACE));
    assert_condition(&p.conditions, "Accepted", true, "Accepted");
    assert_condition(&p.conditions, "ResolvedRefs", true, "ResolvedRefs");
    for c in gateway_conditions(gateway)
        .iter()
        .chain(
            gateway
                .listeners
                .iter()
                .flatten()
                .flat_map(|l| &l.conditions),
        )
        .chain(&p.conditions)
    {
        assert_eq!(c.observed_generation, Some(1), "{}", c.type_);
        assert_eq!(c.last_transition_time, fixed_now());
    }
}

#[track_caller]
fn assert_port(t: &Translation, port: u16, mode: ValidationMode, ca_der: &[u8]) {
    let p = t
        .desired
        .port(port)
        .unwrap_or_else(|| panic!("port {port} served"));
    assert_eq!(p.protocol, PortProtocol::Https);
    assert_eq!(p.gateway, ObjectRef::new(GUIDE_NAMESPACE, "mtls"));
    match &p.client_validation {
        ClientValidation::Verify {
            mode: actual,
            trust_anchors,
        } => {
            assert_eq!(*actual, mode);
            assert_eq!(trust_anchors.len(), 1);
            assert_eq!(trust_anchors[0].der, ca_der);
            assert_eq!(
                trust_anchors[0].source,
                "ConfigMap agentgateway-system/ca-cert"
            );
        }
        other => panic!("port {port}: {other:?}"),
    }
    assert_eq!(p.listeners.len(), 1);
    let l = &p.listeners[0];
    assert_eq!(l.name, format!("https-{port}"));
    assert_eq!(l.hostname, None);
    let tls = l.tls.as_ref().expect("HTTPS listener has TLS");
    assert_eq!(
        tls.certificate.source,
        "Secret agentgateway-system/https-cert"
    );
    assert_eq!(l.routes.len(), 1);
    let route = &l.routes[0];
    assert_eq!(route.route, ObjectRef::new("httpbin", "httpbin-https"));
    assert_eq!(route.hostnames, vec!["example.com".to_owned()]);
    assert_eq!(route.rules.len(), 1);
    assert!(route.rules[0].matches.is_empty(), "no match means prefix /");
    let backend = &route.rules[0].backends[0];
    assert_eq!(backend.name, "httpbin/httpbin:8000");
    assert_eq!(backend.weight, 1);
    // The Service port 8000 is named http; the EndpointSlice's http port is 8080; only the
    // ready endpoint is used.
    assert_eq!(
        backend.target,
        BackendTarget::Endpoints(vec!["10.244.0.12:8080".parse().expect("addr")])
    );
}

#[test]
fn default_step_serves_both_ports_allow_valid_only() {
    let certs = guide_certs();
    let t = translate_step("gateway-default.yaml", &certs);
    assert_all_true_with_one_route(&t);
    let gateway = gateway_status(&t, GUIDE_NAMESPACE, "mtls");
    assert!(
        condition(
            gateway_conditions(gateway),
            "InsecureFrontendValidationMode"
        )
        .is_none(),
        "no insecure mode in the default step"
    );
    assert_eq!(t.desired.ports.len(), 2);
    assert_port(&t, 8443, ValidationMode::AllowValidOnly, &certs.ca.der);
    assert_port(&t, 8444, ValidationMode::AllowValidOnly, &certs.ca.der);
    assert_golden(
        "expected-default-statuses.yaml",
        &render_statuses(&t).expect("yaml"),
    );
}

#[test]
fn per_port_step_falls_back_on_8444_only() {
    let certs = guide_certs();
    let t = translate_step("gateway-perport.yaml", &certs);
    assert_all_true_with_one_route(&t);
    let gateway = gateway_status(&t, GUIDE_NAMESPACE, "mtls");
    assert_condition(
        gateway_conditions(gateway),
        "InsecureFrontendValidationMode",
        true,
        "ConfigurationChanged",
    );
    assert_eq!(t.desired.ports.len(), 2);
    assert_port(&t, 8443, ValidationMode::AllowValidOnly, &certs.ca.der);
    assert_port(
        &t,
        8444,
        ValidationMode::AllowInsecureFallback,
        &certs.ca.der,
    );
    assert_golden(
        "expected-perport-statuses.yaml",
        &render_statuses(&t).expect("yaml"),
    );
}

#[test]
fn going_back_to_the_default_step_removes_the_insecure_condition() {
    let certs = guide_certs();
    let per_port = translate_step("gateway-perport.yaml", &certs);
    let default = translate_step("gateway-default.yaml", &certs);
    let has_insecure = |t: &Translation| {
        condition(
            gateway_conditions(gateway_status(t, GUIDE_NAMESPACE, "mtls")),
            "InsecureFrontendValidationMode",
        )
        .is_some()
    };
    assert!(has_insecure(&per_port));
    assert!(!has_insecure(&default));
}

#[test]
fn without_the_gateway_class_flag_nothing_is_served() {
    let certs = guide_certs();
    let t = translate(&guide_store("gateway-default.yaml", &certs), &options(None));
    assert!(t.gateway_statuses.is_empty());
    assert!(t.route_statuses.is_empty());
    assert!(t.desired.ports.is_empty());
}
