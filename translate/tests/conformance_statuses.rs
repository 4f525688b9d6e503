//! The statuses the Core tests of the upstream conformance suite (v1.6.1, profiles
//! GATEWAY-HTTP and GATEWAY-GRPC), and the Extended tests of the features Portcullis claims,
//! check: one test per upstream test, on the upstream manifests (copied byte-for-byte into
//! `tests/fixtures/conformance/v1.6.1/`).
//!
//! Translation runs as the controller runs it (kube mode): every Gateway has its own data
//! plane and its own address, the GatewayClass named by the suite is ours, and every object
//! carries the `metadata.generation` the API server gives it (1 on creation, +1 per spec
//! change). The assertions follow the upstream helpers (`utils/kubernetes/helpers.go`):
//! conditions match by type, status and reason (an empty expected reason matches any), extra
//! conditions are allowed, every condition of the object must carry its latest generation, an
//! expected empty `supportedKinds` must be empty and an expected kind must be present.

// Test-crate helpers outside #[test] fns: a failed setup step stops the test with its message.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod support;

use std::path::Path;
use std::sync::OnceLock;

use gateway_api::experimental::gateways::{
    GatewayListeners, GatewayListenersAllowedRoutes, GatewayListenersAllowedRoutesNamespaces,
    GatewayListenersAllowedRoutesNamespacesFrom, GatewayStatus, GatewayStatusAddresses,
};
use gateway_api::experimental::httproutes::HttpRouteStatus;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use portcullis_core::desired::ObjectRef;
use portcullis_translate::{DEFAULT_CONTROLLER_NAME, ObjectStore, Translation, translate};
use support::*;

/// The class name and controller name the upstream manifests leave as placeholders.
const CLASS: &str = "{GATEWAY_CLASS_NAME}";
const CONTROLLER_PLACEHOLDER: &str = "{GATEWAY_CONTROLLER_NAME}";
const INFRA: &str = "gateway-conformance-infra";
const WEB_BACKEND: &str = "gateway-conformance-web-backend";
const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
/// The annotation that keeps a Gateway out of the suite's readiness checks.
const SKIP_READINESS: &str = "gateway-api/skip-this-for-readiness";

fn fixture(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/conformance/v1.6.1")
        .join(file);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .replace(CONTROLLER_PLACEHOLDER, DEFAULT_CONTROLLER_NAME)
}

/// What the suite sets up (the GatewayClass, base manifests, its certificate Secrets) plus
/// one test's manifests, each object at generation 1.
fn suite_store(test_file: &str) -> ObjectStore {
    suite_store_of(&[test_file])
}

/// [`suite_store`] for a test with several manifest files.
fn suite_store_of(test_files: &[&str]) -> ObjectStore {
    let mut store = ObjectStore::new();
    load_yaml(
        &mut store,
        &format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata:\n  \
             name: \"{CLASS}\"\nspec:\n  controllerName: {DEFAULT_CONTROLLER_NAME}\n"
        ),
    );
    load_yaml(&mut store, &fixture("base-manifests.yaml"));
    for file in test_files {
        load_yaml(&mut store, &fixture(file));
    }
    let (web, infra) = suite_certificates();
    for secret in [
        tls_secret(WEB_BACKEND, "certificate", &web.cert_pem, &web.key_pem),
        tls_secret(
            INFRA,
            "tls-validity-checks-certificate",
            &infra.cert_pem,
            &infra.key_pem,
        ),
    ] {
        store.insert(secret).expect("secret");
    }
    let cas = suite_client_cas();
    for (namespace, name, ca) in [
        (WEB_BACKEND, "web-backend-cm", &cas[0]),
        (INFRA, "tls-validity-checks-ca-certificate", &cas[1]),
        (
            INFRA,
            "tls-validity-checks-per-port-ca-certificate",
            &cas[2],
        ),
    ] {
        store
            .insert(ca_config_map(namespace, name, "ca.crt", &ca.cert_pem))
            .expect("CA ConfigMap");
    }
    for class in store.gateway_classes.values_mut() {
        class.metadata.generation = Some(1);
    }
    for gateway in store.gateways.values_mut() {
        gateway.metadata.generation = Some(1);
    }
    for route in store.http_routes.values_mut() {
        route.metadata.generation = Some(1);
    }
    for route in store.grpc_routes.values_mut() {
        route.metadata.generation = Some(1);
    }
    store
}

/// suite.go's self-signed certificates: web-backend `certificate` for `*`, infra
/// `tls-validity-checks-certificate` for `*`, `*.org` and `*.wildcard.org`.
fn suite_certificates() -> &'static (ServerPair, ServerPair) {
    static CERTIFICATES: OnceLock<(ServerPair, ServerPair)> = OnceLock::new();
    CERTIFICATES.get_or_init(|| {
        (
            self_signed_leaf(&["*"], KeyKind::EcdsaP256),
            self_signed_leaf(&["*", "*.org", "*.wildcard.org"], KeyKind::EcdsaP256),
        )
    })
}

/// suite.go's CA ConfigMaps (key `ca.crt`): web-backend `web-backend-cm`, infra
/// `tls-validity-checks-ca-certificate` and `tls-validity-checks-per-port-ca-certificate`.
fn suite_client_cas() -> &'static [TestCa; 3] {
    static CAS: OnceLock<[TestCa; 3]> = OnceLock::new();
    CAS.get_or_init(|| {
        [
            TestCa::new("gatewayapi"),
            TestCa::new("gatewayapi"),
            TestCa::new("gatewayapi"),
        ]
    })
}

/// Translates as the controller does: a data plane and an address per Gateway.
fn translate_kube(store: &ObjectStore) -> Translation {
    let mut options = options(None);
    options.separate_data_planes = true;
    for (i, key) in store.gateways.keys().enumerate() {
        options.gateway_addresses.insert(
            key.clone(),
            vec![GatewayStatusAddresses {
                r#type: Some("IPAddress".to_owned()),
                value: format!("10.245.0.{}", i + 1),
            }],
        );
    }
    translate(store, &options)
}

fn infra(name: &str) -> ObjectRef {
    ObjectRef::new(INFRA, name)
}

fn generation_of_gateway(store: &ObjectStore, gateway: &str) -> i64 {
    store.gateways[&infra(gateway)]
        .metadata
        .generation
        .expect("generation")
}

/// ConditionsHaveLatestObservedGeneration.
#[track_caller]
fn assert_latest(what: &str, conditions: &[Condition], generation: i64) {
    assert!(!conditions.is_empty(), "{what}: no conditions");
    for c in conditions {
        assert_eq!(
            c.observed_generation,
            Some(generation),
            "{what}: {} is stale",
            c.type_
        );
    }
}

/// findConditionInList: `reason` "" matches any reason.
#[track_caller]
fn assert_has(what: &str, conditions: &[Condition], type_: &str, status: bool, reason: &str) {
    let status = if status { "True" } else { "False" };
    assert!(
        conditions.iter().any(|c| c.type_ == type_
            && c.status == status
            && (reason.is_empty() || c.reason == reason)),
        "{what}: no {type_}={status} ({reason}) in {conditions:#?}"
    );
}

/// The Gateway's status, its conditions at the Gateway's latest generation.
#[track_caller]
fn gateway<'t>(t: &'t Translation, store: &ObjectStore, name: &str) -> &'t GatewayStatus {
    let status = gateway_status(t, INFRA, name);
    assert_latest(
        name,
        gateway_conditions(status),
        generation_of_gateway(store, name),
    );
    status
}

/// GatewayMustHaveCondition.
#[track_caller]
fn assert_gateway_condition(
    t: &Translation,
    store: &ObjectStore,
    name: &str,
    type_: &str,
    status: bool,
    reason: &str,
) {
    let g = gateway(t, store, name);
    assert_has(name, gateway_conditions(g), type_, status, reason);
}

/// One expected listener status, as the upstream tests write them.
struct ExpectedListener<'a> {
    name: &'a str,
    kinds: &'a [&'a str],
    attached_routes: i32,
    conditions: &'a [(&'a str, bool, &'a str)],
}

/// GatewayStatusMustHaveListeners (gatewayListenersMatch).
#[track_caller]
fn assert_listeners(
    t: &Translation,
    store: &ObjectStore,
    name: &str,
    expected: &[ExpectedListener<'_>],
) {
    let g = gateway(t, store, name);
    let actual = g.listeners.as_deref().unwrap_or_default();
    assert_eq!(actual.len(), expected.len(), "{name}: {actual:#?}");
    for e in expected {
        let a = listener(g, e.name);
        let kinds = a.supported_kinds.as_deref().unwrap_or_default();
        if e.kinds.is_empty() {
            assert!(kinds.is_empty(), "{name}/{}: {kinds:?}", e.name);
        }
        for kind in e.kinds {
            assert!(
                kinds.iter().any(
                    |k| k.group.as_deref().unwrap_or(GATEWAY_GROUP) == GATEWAY_GROUP
                        && k.kind == *kind
                ),
                "{name}/{}: no {kind} in {kinds:?}",
                e.name
            );
        }
        assert_eq!(a.attached_routes, e.attached_routes, "{name}/{}", e.name);
        for (type_, status, reason) in e.conditions {
            assert_has(
                &format!("{name}/{}", e.name),
                &a.conditions,
                type_,
                *status,
                reason,
            );
        }
    }
}

fn route<'t>(t: &'t Translation, name: &str, namespace: &str) -> &'t HttpRouteStatus {
    route_status(t, namespace, name)
}

/// HTTPRouteMustHaveCondition: every parent at the route's latest generation, and a parent
/// for Gateway `gateway` with the condition.
#[track_caller]
fn assert_route_condition(
    t: &Translation,
    store: &ObjectStore,
    (namespace, name): (&str, &str),
    gateway: &str,
    (type_, status, reason): (&str, bool, &str),
) {
    let generation = store.http_routes[&ObjectRef::new(namespace, name)]
        .metadata
        .generation
        .expect("generation");
    let status_ = route(t, name, namespace);
    for p in &status_.parents {
        assert_latest(name, &p.conditions, generation);
    }
    let found = status_.parents.iter().any(|p| {
        p.parent_ref.name == gateway
            && p.parent_ref.namespace.as_deref().is_none_or(|n| n == INFRA)
            && p.conditions.iter().any(|c| {
                c.type_ == type_
                    && c.status == if status { "True" } else { "False" }
                    && (reason.is_empty() || c.reason == reason)
            })
    });
    assert!(
        found,
        "{namespace}/{name}: no {type_}={status} ({reason}) for {gateway} in {:#?}",
        status_.parents
    );
}

/// GatewayAndHTTPRoutesMustBeAccepted: the Gateway has an address; each route has a parent
/// for it (group and kind set, namespace set or, for a route in the Gateway's namespace,
/// omitted; our controller name) with `Accepted=True, Accepted`; every listener of the Gateway
/// is `ResolvedRefs`, `Accepted` and `Programmed`.
#[track_caller]
fn assert_gateway_and_routes_accepted(
    t: &Translation,
    store: &ObjectStore,
    gateway_name: &str,
    routes: &[(&str, &str)],
) {
    let g = gateway(t, store, gateway_name);
    assert!(
        g.addresses
            .iter()
            .flatten()
            .any(|a| a.r#type.is_some() && !a.value.is_empty()),
        "{gateway_name}: no typed address"
    );
    for (namespace, name) in routes {
        let generation = store.http_routes[&ObjectRef::new(*namespace, *name)]
            .metadata
            .generation
            .expect("generation");
        let status = route(t, name, namespace);
        for p in &status.parents {
            assert_latest(name, &p.conditions, generation);
        }
        let matched = status.parents.iter().any(|p| {
            p.controller_name == DEFAULT_CONTROLLER_NAME
                && p.parent_ref.group.as_deref() == Some(GATEWAY_GROUP)
                && p.parent_ref.kind.as_deref() == Some("Gateway")
                && p.parent_ref.name == gateway_name
                && (p.parent_ref.namespace.as_deref() == Some(INFRA)
                    || (*namespace == INFRA && p.parent_ref.namespace.is_none()))
                && p.conditions
                    .iter()
                    .any(|c| c.type_ == "Accepted" && c.status == "True" && c.reason == "Accepted")
        });
        assert!(
            matched,
            "{namespace}/{name}: not accepted by {gateway_name}: {:#?}",
            status.parents
        );
    }
    for l in g.listeners.iter().flatten() {
        for type_ in ["ResolvedRefs", "Accepted", "Programmed"] {
            assert_has(
                &format!("{gateway_name}/{}", l.name),
                &l.conditions,
                type_,
                true,
                "",
            );
        }
    }
}

/// NamespacesMustBeReady (the Gateway part): every Gateway of the namespace not annotated
/// to be skipped is `Accepted` and `Programmed`, at its latest generation.
#[track_caller]
fn assert_namespace_ready(t: &Translation, store: &ObjectStore, namespace: &str) {
    let mut checked = 0;
    for (key, g) in &store.gateways {
        if key.namespace != namespace
            || g.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(SKIP_READINESS))
                .is_some_and(|v| v == "true")
        {
            continue;
        }
        assert_gateway_condition(t, store, &key.name, "Accepted", true, "");
        assert_gateway_condition(t, store, &key.name, "Programmed", true, "");
        checked += 1;
    }
    assert!(checked >= 4, "the base Gateways are checked");
}

/// HTTPRouteMustHaveNoAcceptedParents: no parent, or one that is not accepted.
#[track_caller]
fn assert_no_accepted_parents(t: &Translation, namespace: &str, name: &str) {
    let parents = t
        .route_status(&ObjectRef::new(namespace, name))
        .map(|s| s.parents.as_slice())
        .unwrap_or_default();
    assert!(parents.len() <= 1, "{name}: {parents:#?}");
    if let Some(p) = parents.first() {
        assert_has(name, &p.conditions, "Accepted", false, "");
    }
}

/// GatewayMustHaveZeroRoutes: no listener status, or one with no route attached.
#[track_caller]
fn assert_zero_routes(t: &Translation, store: &ObjectStore, name: &str) {
    let g = gateway(t, store, name);
    let listeners = g.listeners.as_deref().unwrap_or_default();
    assert!(
        listeners.is_empty() || (listeners.len() == 1 && listeners[0].attached_routes == 0),
        "{name}: {listeners:#?}"
    );
}

fn http_listener(name: &str, hostname: &str) -> GatewayListeners {
    GatewayListeners {
        name: name.to_owned(),
        port: 80,
        protocol: "HTTP".to_owned(),
        hostname: Some(hostname.to_owned()),
        allowed_routes: Some(GatewayListenersAllowedRoutes {
            kinds: None,
            namespaces: Some(GatewayListenersAllowedRoutesNamespaces {
                from: Some(GatewayListenersAllowedRoutesNamespacesFrom::All),
                selector: None,
            }),
        }),
        tls: None,
    }
}

/// A spec change as the API server records it: the new spec and generation + 1.
fn bump_gateway(
    store: &mut ObjectStore,
    name: &str,
    change: impl FnOnce(&mut Vec<GatewayListeners>),
) {
    let g = store.gateways.get_mut(&infra(name)).expect("gateway");
    change(&mut g.spec.listeners);
    g.metadata.generation = Some(g.metadata.generation.unwrap_or(1) + 1);
}

#[test]
fn suite_setup_base_gateways_and_class() {
    let store = suite_store("httproute-observed-generation-bump.yaml");
    let t = translate_kube(&store);
    assert_namespace_ready(&t, &store, INFRA);
    for name in [
        "same-namespace",
        "same-namespace-with-https-listener",
        "all-namespaces",
        "backend-namespaces",
    ] {
        assert!(
            gateway(&t, &store, name)
                .addresses
                .iter()
                .flatten()
                .any(|a| a.r#type.is_some()),
            "{name}: typed address"
        );
    }
    // GWCMustHaveAcceptedConditionTrue, and the features the suite infers from the class.
    let (_, class) = t
        .gateway_class_statuses
        .iter()
        .find(|(name, _)| name == CLASS)
        .expect("class status");
    let conditions = class.conditions.as_deref().unwrap_or_default();
    assert_latest(CLASS, conditions, 1);
    assert_has(CLASS, conditions, "Accepted", true, "");
    let features: Vec<&str> = class
        .supported_features
        .iter()
        .flatten()
        .map(|f| f.name.as_str())
        .collect();
    assert_eq!(
        features,
        [
            "GRPCRoute",
            "GRPCRouteNamedRouteRule",
            "Gateway",
            "GatewayAddressEmpty",
            "GatewayFrontendClientCertificateValidation",
            "GatewayFrontendClientCertificateValidationInsecureFallback",
            "GatewayHTTPListenerIsolation",
            "GatewayHTTPSListenerDetectMisdirectedRequests",
            "GatewayPort8080",
            "HTTPRoute",
            "HTTPRoute303RedirectStatusCode",
            "HTTPRoute307RedirectStatusCode",
            "HTTPRoute308RedirectStatusCode",
            "HTTPRouteBackendProtocolH2C",
            "HTTPRouteBackendProtocolWebSocket",
            "HTTPRouteMethodMatching",
            "HTTPRouteNamedRouteRule",
            "HTTPRouteParentRefPort",
            "HTTPRoutePathRedirect",
            "HTTPRoutePortRedirect",
            "HTTPRouteQueryParamMatching",
            "HTTPRouteResponseHeaderModification",
            "HTTPRouteSchemeRedirect",
            "ReferenceGrant",
        ]
    );
    assert!(features.is_sorted(), "the API wants them sorted");
}

#[test]
fn gateway_listener_unsupported_protocol() {
    let store = suite_store("gateway-invalid-listeners-unsupported-protocol.yaml");
    let t = translate_kube(&store);
    let only = "gateway-only-unsupported-protocols";
    assert_gateway_condition(&t, &store, only, "Accepted", false, "ListenersNotValid");
    assert_listeners(
        &t,
        &store,
        only,
        &[ExpectedListener {
            name: "invalid",
            kinds: &[],
            attached_routes: 0,
            conditions: &[("Accepted", false, "UnsupportedProtocol")],
        }],
    );
    let mixed = "gateway-supported-and-unsupported-protocols";
    assert_gateway_condition(&t, &store, mixed, "Accepted", true, "ListenersNotValid");
    assert_listeners(
        &t,
        &store,
        mixed,
        &[
            ExpectedListener {
                name: "http",
                kinds: &["HTTPRoute"],
                attached_routes: 0,
                conditions: &[("Accepted", true, "Accepted")],
            },
            ExpectedListener {
                name: "invalid",
                kinds: &[],
                attached_routes: 0,
                conditions: &[("Accepted", false, "UnsupportedProtocol")],
            },
        ],
    );
    // Not skipped for readiness: the valid listener keeps the Gateway programmed.
    assert_namespace_ready(&t, &store, INFRA);
}

#[test]
fn gateway_invalid_parameters_ref() {
    let store = suite_store("gateway-invalid-parameters-ref.yaml");
    let t = translate_kube(&store);
    let name = "gateway-invalid-parameters-ref";
    assert_gateway_condition(&t, &store, name, "Accepted", false, "InvalidParameters");
    // A Gateway that is not accepted is not served.
    assert_gateway_condition(&t, &store, name, "Programmed", false, "");
    assert_eq!(
        t.desired_by_gateway
            .get(&infra(name))
            .map(|d| d.ports.len()),
        Some(0),
        "nothing is served for {name}"
    );
    let message = &condition(
        gateway_conditions(gateway_status(&t, INFRA, name)),
        "Accepted",
    )
    .expect("Accepted")
    .message;
    assert!(
        message.contains("InvalidParameters.invalid.io gateway-conformance-infra/invalid"),
        "the message names the reference: {message}"
    );
    assert_namespace_ready(&t, &store, INFRA);
}

#[test]
fn gateway_invalid_route_kind() {
    let store = suite_store("gateway-invalid-route-kind.yaml");
    let t = translate_kube(&store);
    assert_listeners(
        &t,
        &store,
        "gateway-only-invalid-route-kind",
        &[ExpectedListener {
            name: "http",
            kinds: &[],
            attached_routes: 0,
            conditions: &[("ResolvedRefs", false, "InvalidRouteKinds")],
        }],
    );
    assert_listeners(
        &t,
        &store,
        "gateway-supported-and-invalid-route-kind",
        &[ExpectedListener {
            name: "http",
            kinds: &["HTTPRoute"],
            attached_routes: 0,
            conditions: &[("ResolvedRefs", false, "InvalidRouteKinds")],
        }],
    );
}

#[test]
fn gateway_modify_listeners() {
    let mut store = suite_store("gateway-modify-listeners.yaml");
    let t = translate_kube(&store);
    assert_namespace_ready(&t, &store, INFRA);
    let healthy: &[(&str, bool, &str)] = &[("Accepted", true, ""), ("ResolvedRefs", true, "")];

    let add = "gateway-add-listener";
    bump_gateway(&mut store, add, |listeners| {
        listeners.push(http_listener("http", "data.test.com"));
    });
    let remove = "gateway-remove-listener";
    bump_gateway(&mut store, remove, |listeners| {
        listeners.retain(|l| l.name == "http");
    });
    let t = translate_kube(&store);
    assert_namespace_ready(&t, &store, INFRA);
    assert_listeners(
        &t,
        &store,
        add,
        &[
            ExpectedListener {
                name: "https",
                kinds: &["HTTPRoute"],
                attached_routes: 1,
                conditions: healthy,
            },
            ExpectedListener {
                name: "http",
                kinds: &["HTTPRoute"],
                attached_routes: 1,
                conditions: healthy,
            },
        ],
    );
    assert_listeners(
        &t,
        &store,
        remove,
        &[ExpectedListener {
            name: "http",
            kinds: &["HTTPRoute"],
            attached_routes: 1,
            conditions: healthy,
        }],
    );
    let served: Vec<u16> = t.desired_by_gateway[&infra(remove)]
        .ports
        .iter()
        .map(|p| p.port)
        .collect();
    assert_eq!(
        served,
        [80],
        "the removed listener's port is no longer served"
    );
}

#[test]
fn gateway_observed_generation_bump() {
    let mut store = suite_store("gateway-observed-generation-bump.yaml");
    let name = "gateway-observed-generation-bump";
    let t = translate_kube(&store);
    assert_namespace_ready(&t, &store, INFRA);
    bump_gateway(&mut store, name, |listeners| {
        listeners.push(http_listener("alternate", "foo.com"));
    });
    let t = translate_kube(&store);
    assert_namespace_ready(&t, &store, INFRA);
    let g = gateway(&t, &store, name);
    for l in g.listeners.iter().flatten() {
        assert_latest(&l.name, &l.conditions, 2);
    }
}

#[test]
fn gatewayclass_observed_generation_bump() {
    let mut store = suite_store("gatewayclass-observed-generation-bump.yaml");
    let name = "gatewayclass-observed-generation-bump";
    let class_status = |t: &Translation| -> Vec<Condition> {
        t.gateway_class_statuses
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, s)| s.conditions.clone())
            .expect("class status")
    };
    let t = translate_kube(&store);
    assert_latest(name, &class_status(&t), 1);
    let class = store.gateway_classes.get_mut(name).expect("class");
    class.spec.description = Some("new".to_owned());
    class.metadata.generation = Some(2);
    let t = translate_kube(&store);
    let conditions = class_status(&t);
    assert_latest(name, &conditions, 2);
    assert_has(name, &conditions, "Accepted", true, "");
}

#[test]
fn gateway_with_attached_routes() {
    let store = suite_store("gateway-with-attached-routes.yaml");
    let t = translate_kube(&store);
    assert_namespace_ready(&t, &store, INFRA);
    let healthy: &[(&str, bool, &str)] = &[("Accepted", true, ""), ("ResolvedRefs", true, "")];
    assert_listeners(
        &t,
        &store,
        "gateway-with-one-attached-route",
        &[ExpectedListener {
            name: "http",
            kinds: &["HTTPRoute"],
            attached_routes: 1,
            conditions: healthy,
        }],
    );
    let two = "gateway-with-two-attached-routes";
    assert_listeners(
        &t,
        &store,
        two,
        &[ExpectedListener {
            name: "http",
            kinds: &["HTTPRoute"],
            attached_routes: 2,
            conditions: healthy,
        }],
    );
    assert_route_condition(
        &t,
        &store,
        (INFRA, "http-route-not-accepted"),
        two,
        ("Accepted", false, "NoMatchingListenerHostname"),
    );
    let unresolved = "unresolved-gateway-with-one-attached-unresolved-route";
    assert_listeners(
        &t,
        &store,
        unresolved,
        &[ExpectedListener {
            name: "tls",
            kinds: &["HTTPRoute"],
            attached_routes: 1,
            conditions: &[("Programmed", false, ""), ("ResolvedRefs", false, "")],
        }],
    );
    assert_route_condition(
        &t,
        &store,
        (INFRA, "http-route-4"),
        unresolved,
        ("ResolvedRefs", false, ""),
    );
}

#[test]
fn httproute_invalid_backend_ref_unknown_kind() {
    let store = suite_store("httproute-invalid-backendref-unknown-kind.yaml");
    let t = translate_kube(&store);
    let route = (INFRA, "invalid-backend-ref-unknown-kind");
    assert_gateway_and_routes_accepted(&t, &store, "same-namespace", &[route]);
    assert_route_condition(
        &t,
        &store,
        route,
        "same-namespace",
        ("ResolvedRefs", false, "InvalidKind"),
    );
}

#[test]
fn httproute_invalid_cross_namespace_backend_ref() {
    let store = suite_store("httproute-invalid-cross-namespace-backend-ref.yaml");
    let t = translate_kube(&store);
    let route = (INFRA, "invalid-cross-namespace-backend-ref");
    assert_gateway_and_routes_accepted(&t, &store, "same-namespace", &[route]);
    assert_route_condition(
        &t,
        &store,
        route,
        "same-namespace",
        ("ResolvedRefs", false, "RefNotPermitted"),
    );
}

#[test]
fn httproute_invalid_cross_namespace_parent_ref() {
    let store = suite_store("httproute-invalid-cross-namespace-parent-ref.yaml");
    let t = translate_kube(&store);
    let route = (WEB_BACKEND, "invalid-cross-namespace-parent-ref");
    assert_route_condition(
        &t,
        &store,
        route,
        "same-namespace",
        ("ResolvedRefs", true, "ResolvedRefs"),
    );
    assert_route_condition(
        &t,
        &store,
        route,
        "same-namespace",
        ("Accepted", false, "NotAllowedByListeners"),
    );
    assert_no_accepted_parents(&t, route.0, route.1);
    assert_zero_routes(&t, &store, "same-namespace");
}

#[test]
fn httproute_invalid_non_existent_backend_ref() {
    let store = suite_store("httproute-invalid-nonexistent-backendref.yaml");
    let t = translate_kube(&store);
    let route = (INFRA, "invalid-nonexistent-backend-ref");
    assert_gateway_and_routes_accepted(&t, &store, "same-namespace", &[route]);
    assert_route_condition(
        &t,
        &store,
        route,
        "same-namespace",
        ("ResolvedRefs", false, "BackendNotFound"),
    );
}

#[test]
fn httproute_invalid_parent_ref_not_matching_section_name() {
    let store = suite_store("httproute-invalid-parentref-not-matching-section-name.yaml");
    let t = translate_kube(&store);
    let route = (INFRA, "httproute-listener-not-matching-section-name");
    assert_route_condition(
        &t,
        &store,
        route,
        "same-namespace",
        ("Accepted", false, "NoMatchingParent"),
    );
    assert_no_accepted_parents(&t, route.0, route.1);
    assert_zero_routes(&t, &store, "same-namespace");
}

#[test]
fn httproute_invalid_reference_grant() {
    let store = suite_store("httproute-invalid-reference-grant.yaml");
    assert_eq!(store.reference_grants.len(), 7, "all grants loaded");
    let t = translate_kube(&store);
    let route = (INFRA, "reference-grant");
    assert_gateway_and_routes_accepted(&t, &store, "same-namespace", &[route]);
    assert_route_condition(
        &t,
        &store,
        route,
        "same-namespace",
        ("ResolvedRefs", false, "RefNotPermitted"),
    );
}

#[test]
fn httproute_no_backend_refs() {
    let store = suite_store("httproute-omitted-backendrefs.yaml");
    let t = translate_kube(&store);
    let route = (INFRA, "omitted-backendrefs");
    assert_gateway_and_routes_accepted(&t, &store, "same-namespace", &[route]);
    assert_route_condition(
        &t,
        &store,
        route,
        "same-namespace",
        ("ResolvedRefs", true, "ResolvedRefs"),
    );
}

#[test]
fn httproute_partially_invalid_via_invalid_reference_grant() {
    let store = suite_store("httproute-partially-invalid-via-invalid-reference-grant.yaml");
    let t = translate_kube(&store);
    let route = (INFRA, "invalid-reference-grant");
    assert_gateway_and_routes_accepted(&t, &store, "same-namespace", &[route]);
    assert_route_condition(
        &t,
        &store,
        route,
        "same-namespace",
        ("ResolvedRefs", false, "RefNotPermitted"),
    );
}

#[test]
fn httproute_observed_generation_bump() {
    let mut store = suite_store("httproute-observed-generation-bump.yaml");
    let key = ObjectRef::new(INFRA, "observed-generation-bump");
    let route = (INFRA, "observed-generation-bump");
    let t = translate_kube(&store);
    assert_namespace_ready(&t, &store, INFRA);
    assert_gateway_and_routes_accepted(&t, &store, "same-namespace", &[route]);
    let r = store.http_routes.get_mut(&key).expect("route");
    r.spec.rules.as_mut().expect("rules")[0]
        .backend_refs
        .as_mut()
        .expect("backendRefs")[0]
        .name = "infra-backend-v2".to_owned();
    r.metadata.generation = Some(2);
    let t = translate_kube(&store);
    assert_route_condition(&t, &store, route, "same-namespace", ("Accepted", true, ""));
    assert_route_condition(
        &t,
        &store,
        route,
        "same-namespace",
        ("ResolvedRefs", true, "ResolvedRefs"),
    );
}

#[test]
fn httproute_reference_grant() {
    let mut store = suite_store("httproute-reference-grant.yaml");
    let t = translate_kube(&store);
    let route = (INFRA, "reference-grant");
    assert_gateway_and_routes_accepted(&t, &store, "same-namespace", &[route]);
    assert_route_condition(
        &t,
        &store,
        route,
        "same-namespace",
        ("ResolvedRefs", true, "ResolvedRefs"),
    );
    // Deleting the grant revokes the reference.
    store
        .reference_grants
        .remove(&ObjectRef::new(WEB_BACKEND, "reference-grant"))
        .expect("grant");
    let t = translate_kube(&store);
    assert_route_condition(
        &t,
        &store,
        route,
        "same-namespace",
        ("ResolvedRefs", false, "RefNotPermitted"),
    );
}

#[test]
fn httproute_hostname_intersection_statuses() {
    let store = suite_store("httproute-hostname-intersection.yaml");
    let t = translate_kube(&store);
    assert_namespace_ready(&t, &store, INFRA);
    let gw = "httproute-hostname-intersection";
    let routes = [
        (INFRA, "specific-host-matches-listener-specific-host"),
        (INFRA, "specific-host-matches-listener-wildcard-host"),
        (INFRA, "wildcard-host-matches-listener-specific-host"),
        (INFRA, "wildcard-host-matches-listener-wildcard-host"),
    ];
    assert_gateway_and_routes_accepted(&t, &store, gw, &routes);
    for route in routes {
        assert_route_condition(
            &t,
            &store,
            route,
            gw,
            ("ResolvedRefs", true, "ResolvedRefs"),
        );
    }
    // HTTPRouteMustHaveParents with the namespace required.
    let p = parent(route(&t, "no-intersecting-hosts", INFRA), gw, None);
    assert_eq!(p.parent_ref.namespace.as_deref(), Some(INFRA));
    assert_eq!(p.controller_name, DEFAULT_CONTROLLER_NAME);
    assert_has(
        "no-intersecting-hosts",
        &p.conditions,
        "Accepted",
        false,
        "NoMatchingListenerHostname",
    );
    let healthy: &[(&str, bool, &str)] = &[("Accepted", true, ""), ("ResolvedRefs", true, "")];
    let listener = |name, attached_routes| ExpectedListener {
        name,
        kinds: &["HTTPRoute"],
        attached_routes,
        conditions: healthy,
    };
    assert_listeners(
        &t,
        &store,
        gw,
        &[
            listener("listener-1", 2),
            listener("listener-2", 1),
            listener("listener-3", 1),
        ],
    );
    let all = "httproute-hostname-intersection-all";
    assert_gateway_and_routes_accepted(&t, &store, all, &[(INFRA, all)]);
    assert_route_condition(
        &t,
        &store,
        (INFRA, all),
        all,
        ("ResolvedRefs", true, "ResolvedRefs"),
    );
}

#[test]
fn httproute_listener_hostname_matching_statuses() {
    let store = suite_store("httproute-listener-hostname-matching.yaml");
    let t = translate_kube(&store);
    assert_namespace_ready(&t, &store, INFRA);
    let gw = "httproute-listener-hostname-matching";
    for route in ["backend-v1", "backend-v2", "backend-v3"] {
        assert_gateway_and_routes_accepted(&t, &store, gw, &[(INFRA, route)]);
        assert_route_condition(
            &t,
            &store,
            (INFRA, route),
            gw,
            ("ResolvedRefs", true, "ResolvedRefs"),
        );
    }
}

/// The upstream tests of GatewayFrontendClientCertificateValidation(InsecureFallback) whose
/// statuses are checked here; their traffic is in `cli/tests/conformance_frontend_tls.rs`.
#[test]
fn gateway_frontend_client_certificate_validation() {
    let store = suite_store("gateway-with-clientcertificate-validation.yaml");
    let t = translate_kube(&store);
    let name = "client-validation-default";
    let routes = [
        (INFRA, "client-certificate-validation-https-test"),
        (
            INFRA,
            "client-certificate-validation-https-test-no-hostname",
        ),
    ];
    assert_gateway_and_routes_accepted(&t, &store, name, &routes);
    for r in routes {
        assert_route_condition(&t, &store, r, name, ("ResolvedRefs", true, "ResolvedRefs"));
    }
}

#[test]
fn gateway_frontend_client_certificate_validation_insecure_fallback() {
    let store = suite_store("gateway-with-clientcertificate-validation-insecure-fallback.yaml");
    let t = translate_kube(&store);
    let name = "client-validation-insecure-fallback";
    let routes = [
        (INFRA, "client-cert-validation-insecure-fallback-test"),
        (
            INFRA,
            "client-cert-validation-insecure-fallback-test-no-hostname",
        ),
    ];
    assert_gateway_and_routes_accepted(&t, &store, name, &routes);
    for r in routes {
        assert_route_condition(&t, &store, r, name, ("ResolvedRefs", true, "ResolvedRefs"));
    }
    assert_gateway_condition(
        &t,
        &store,
        name,
        "InsecureFrontendValidationMode",
        true,
        "ConfigurationChanged",
    );
}

/// GatewayListenerMustHaveConditions: the named listener has each condition.
#[track_caller]
fn assert_listener_conditions(
    t: &Translation,
    store: &ObjectStore,
    gateway_name: &str,
    listener_name: &str,
    expected: &[(&str, bool, &str)],
) {
    let g = gateway(t, store, gateway_name);
    let l = listener(g, listener_name);
    for (type_, status, reason) in expected {
        assert_has(
            &format!("{gateway_name}/{listener_name}"),
            &l.conditions,
            type_,
            *status,
            reason,
        );
    }
}

#[test]
fn gateway_invalid_frontend_client_certificate_validation() {
    let store = suite_store("gateway-with-invalid-clientcertificate-validation.yaml");
    let t = translate_kube(&store);
    let name = "gateway-with-invalid-client-cert-validation";
    let healthy = [
        ("ResolvedRefs", true, ""),
        ("Accepted", true, ""),
        ("Programmed", true, ""),
    ];
    assert_listener_conditions(&t, &store, name, "https", &healthy);
    for (listener_name, reason) in [
        ("https-unresolved", "InvalidCACertificateRef"),
        ("https-invalid-kind", "InvalidCACertificateKind"),
        ("https-grant-missing", "RefNotPermitted"),
    ] {
        assert_listener_conditions(
            &t,
            &store,
            name,
            listener_name,
            &[
                ("ResolvedRefs", false, reason),
                ("Accepted", false, "NoValidCACertificate"),
                ("Programmed", false, ""),
            ],
        );
    }
}

#[test]
fn gateway_frontend_invalid_default_client_certificate_validation() {
    let store = suite_store("gateway-invalid-default-frontend-client-certificate-validation.yaml");
    let t = translate_kube(&store);
    let name = "invalid-default-client-validation-config";
    assert!(
        gateway(&t, &store, name)
            .addresses
            .iter()
            .flatten()
            .any(|a| a.r#type.is_some() && !a.value.is_empty()),
        "{name}: no typed address"
    );
    assert_listener_conditions(
        &t,
        &store,
        name,
        "http",
        &[
            ("ResolvedRefs", true, ""),
            ("Accepted", true, ""),
            ("Programmed", true, ""),
        ],
    );
    assert_listener_conditions(
        &t,
        &store,
        name,
        "https",
        &[
            ("ResolvedRefs", false, "InvalidCACertificateRef"),
            ("Accepted", false, "NoValidCACertificate"),
            ("Programmed", false, ""),
        ],
    );
}

/// HTTPRouteInvalidParentRefSectionNameNotMatchingPort (HTTPRouteParentRefPort).
#[test]
fn httproute_invalid_parent_ref_section_name_not_matching_port() {
    let store = suite_store("httproute-invalid-parentref-section-name-not-matching-port.yaml");
    let t = translate_kube(&store);
    let gateway_name = "gateway-with-one-not-matching-port-and-section-name-route";
    let name = "httproute-listener-section-name-not-matching-port";
    assert_route_condition(
        &t,
        &store,
        (INFRA, name),
        gateway_name,
        ("Accepted", false, "NoMatchingParent"),
    );
    assert_no_accepted_parents(&t, INFRA, name);
    assert_zero_routes(&t, &store, gateway_name);
}

/// HTTPRouteListenerPortMatching (HTTPRouteParentRefPort), its status part; the traffic is
/// in `cli/tests/conformance_http.rs`.
#[test]
fn httproute_listener_port_matching_statuses() {
    let store = suite_store("httproute-listener-port-matching.yaml");
    let t = translate_kube(&store);
    assert_namespace_ready(&t, &store, INFRA);
    let name = "httproute-listener-port-matching";
    for route in ["backend-v1", "backend-v2", "backend-v3"] {
        assert_gateway_and_routes_accepted(&t, &store, name, &[(INFRA, route)]);
        assert_route_condition(
            &t,
            &store,
            (INFRA, route),
            name,
            ("ResolvedRefs", true, "ResolvedRefs"),
        );
    }
    let attached: Vec<(&str, i32)> = gateway(&t, &store, name)
        .listeners
        .iter()
        .flatten()
        .map(|l| (l.name.as_str(), l.attached_routes))
        .collect();
    // Port 80: listener-1; port 8080: listener-2 and -3; port 8090 with sectionName: listener-4.
    assert_eq!(
        attached,
        [
            ("listener-1", 1),
            ("listener-2", 1),
            ("listener-3", 1),
            ("listener-4", 1),
            ("listener-5", 0)
        ]
    );
}

/// GatewayWithAttachedRoutesWithPort8080 (GatewayPort8080).
#[test]
fn gateway_with_attached_routes_with_port_8080() {
    let store = suite_store("gateway-with-attached-routes-with-port-8080.yaml");
    let t = translate_kube(&store);
    let healthy: &[(&str, bool, &str)] = &[("Accepted", true, ""), ("ResolvedRefs", true, "")];
    assert_listeners(
        &t,
        &store,
        "gateway-with-two-listeners-and-one-attached-route",
        &[
            ExpectedListener {
                name: "http-unattached",
                kinds: &["HTTPRoute"],
                attached_routes: 0,
                conditions: healthy,
            },
            ExpectedListener {
                name: "http",
                kinds: &["HTTPRoute"],
                attached_routes: 1,
                conditions: healthy,
            },
        ],
    );
}

/// GatewayOptionalAddressValue (GatewayAddressEmpty): an address of a type without a value
/// is no reason to refuse the Gateway; it gets the address its data plane has.
#[test]
fn gateway_optional_address_value() {
    let store = suite_store("gateway-optional-address-value.yaml");
    let t = translate_kube(&store);
    assert_namespace_ready(&t, &store, INFRA);
    let name = "gateway-without-address-value";
    assert_gateway_condition(&t, &store, name, "Accepted", true, "");
    assert_gateway_condition(&t, &store, name, "Programmed", true, "");
    assert!(
        gateway(&t, &store, name)
            .addresses
            .iter()
            .flatten()
            .any(|a| a.r#type.is_some() && !a.value.is_empty()),
        "{name}: no typed address"
    );
}

/// GatewayHTTPListenerIsolation, its status part; the traffic is in
/// `cli/tests/conformance_http.rs`.
#[test]
fn gateway_http_listener_isolation_statuses() {
    let store = suite_store_of(&[
        "gateway-http-listener-isolation-with-hostname-intersection.yaml",
        "gateway-http-listener-isolation.yaml",
    ]);
    let t = translate_kube(&store);
    assert_namespace_ready(&t, &store, INFRA);
    for (gateway_name, suffix) in [
        ("http-listener-isolation", ""),
        (
            "http-listener-isolation-with-hostname-intersection",
            "-with-hostname-intersection",
        ),
    ] {
        let routes: Vec<String> = [
            "attaches-to-empty-hostname",
            "attaches-to-wildcard-example-com",
            "attaches-to-wildcard-foo-example-com",
            "attaches-to-abc-foo-example-com",
        ]
        .iter()
        .map(|r| format!("{r}{suffix}"))
        .collect();
        let routes: Vec<(&str, &str)> = routes.iter().map(|r| (INFRA, r.as_str())).collect();
        assert_gateway_and_routes_accepted(&t, &store, gateway_name, &routes);
        for r in routes {
            assert_route_condition(
                &t,
                &store,
                r,
                gateway_name,
                ("ResolvedRefs", true, "ResolvedRefs"),
            );
        }
    }
}

/// HTTPRouteQueryParamMatching, HTTPRouteMethodMatching and HTTPRouteNamedRule, their status
/// part; the traffic is in `cli/tests/conformance_http.rs`.
#[test]
fn httproute_query_param_and_method_matching_statuses() {
    for (file, route_name) in [
        (
            "httproute-query-param-matching.yaml",
            "query-param-matching",
        ),
        ("httproute-method-matching.yaml", "method-matching"),
        // HTTPRouteNamedRule (HTTPRouteNamedRouteRule).
        ("httproute-named-rule.yaml", "http-named-rules"),
    ] {
        let store = suite_store(file);
        let t = translate_kube(&store);
        assert_gateway_and_routes_accepted(&t, &store, "same-namespace", &[(INFRA, route_name)]);
        assert_route_condition(
            &t,
            &store,
            (INFRA, route_name),
            "same-namespace",
            ("ResolvedRefs", true, "ResolvedRefs"),
        );
    }
}

/// HTTPRouteBackendProtocolH2C and HTTPRouteBackendProtocolWebSocket, their status part: the
/// routes to the base Service's `kubernetes.io/h2c` and `kubernetes.io/ws` ports resolve; the
/// traffic is in `cli/tests/conformance_backend_protocols.rs`.
#[test]
fn httproute_backend_protocol_statuses() {
    for (file, route_name) in [
        (
            "httproute-backend-protocol-h2c.yaml",
            "backend-protocol-h2c",
        ),
        (
            "httproute-backend-protocol-websocket.yaml",
            "backend-protocol-ws",
        ),
    ] {
        let store = suite_store(file);
        let t = translate_kube(&store);
        assert_gateway_and_routes_accepted(&t, &store, "same-namespace", &[(INFRA, route_name)]);
    }
}

/// GatewayHTTPSListenerDetectMisdirectedRequests, its status part; the traffic is in
/// `cli/tests/conformance_https.rs`.
#[test]
fn httproute_https_listener_detect_misdirected_requests_statuses() {
    let store = suite_store("httproute-https-listener-detect-misdirected-requests.yaml");
    let t = translate_kube(&store);
    let name = "same-namespace-with-https-listener";
    let routes: Vec<String> = (1..=4)
        .map(|i| format!("https-listener-detect-misdirected-requests-test-{i}"))
        .collect();
    let routes: Vec<(&str, &str)> = routes.iter().map(|r| (INFRA, r.as_str())).collect();
    assert_gateway_and_routes_accepted(&t, &store, name, &routes);
    for r in routes {
        assert_route_condition(&t, &store, r, name, ("ResolvedRefs", true, "ResolvedRefs"));
    }
}

/// GatewayAndRoutesMustBeAccepted for GRPCRoutes: the Gateway has an address; each route has
/// a parent for it (our controller name) with `Accepted=True, Accepted`, and `ResolvedRefs`
/// true, at the route's generation; every listener of the Gateway is healthy.
#[track_caller]
fn assert_gateway_and_grpc_routes_accepted(
    t: &Translation,
    store: &ObjectStore,
    gateway_name: &str,
    routes: &[&str],
) {
    let g = gateway(t, store, gateway_name);
    assert!(
        g.addresses
            .iter()
            .flatten()
            .any(|a| a.r#type.is_some() && !a.value.is_empty()),
        "{gateway_name}: no typed address"
    );
    for name in routes {
        let status = t
            .grpc_route_status(&infra(name))
            .unwrap_or_else(|| panic!("{name}: no status"));
        let matched = status.parents.iter().any(|p| {
            assert_latest(name, &p.conditions, 1);
            p.controller_name == DEFAULT_CONTROLLER_NAME
                && p.parent_ref.name == gateway_name
                && p.conditions
                    .iter()
                    .any(|c| c.type_ == "Accepted" && c.status == "True" && c.reason == "Accepted")
                && p.conditions
                    .iter()
                    .any(|c| c.type_ == "ResolvedRefs" && c.status == "True")
        });
        assert!(
            matched,
            "{name}: not accepted by {gateway_name}: {:#?}",
            status.parents
        );
    }
    for l in g.listeners.iter().flatten() {
        for type_ in ["ResolvedRefs", "Accepted", "Programmed"] {
            assert_has(
                &format!("{gateway_name}/{}", l.name),
                &l.conditions,
                type_,
                true,
                "",
            );
        }
    }
}

/// The GATEWAY-GRPC Core tests' statuses (GRPCExactMethodMatching, GRPCRouteHeaderMatching,
/// GRPCRouteListenerHostnameMatching, GRPCRouteWeight) and GRPCRouteNamedRule's; their routing
/// is in
/// `cli/tests/conformance_grpc.rs`.
#[test]
fn grpcroute_core_statuses() {
    for (file, gateway_name, routes) in [
        (
            "grpcroute-exact-method-matching.yaml",
            "same-namespace",
            &["exact-matching"][..],
        ),
        (
            "grpcroute-header-matching.yaml",
            "same-namespace",
            &["grpc-header-matching"][..],
        ),
        (
            "grpcroute-listener-hostname-matching.yaml",
            "grpcroute-listener-hostname-matching",
            &["backend-v1", "backend-v2", "backend-v3"][..],
        ),
        (
            "grpcroute-weight.yaml",
            "same-namespace",
            &["weighted-backends"][..],
        ),
        // GRPCRouteNamedRule (GRPCRouteNamedRouteRule).
        (
            "grpcroute-named-rule.yaml",
            "same-namespace",
            &["grpc-named-rules"][..],
        ),
    ] {
        let store = suite_store(file);
        let t = translate_kube(&store);
        assert_namespace_ready(&t, &store, INFRA);
        assert_gateway_and_grpc_routes_accepted(&t, &store, gateway_name, routes);
    }
}
