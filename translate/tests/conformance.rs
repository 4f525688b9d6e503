//! Upstream Gateway API conformance manifests (v1.4.0 and v1.6.1, copied byte-for-byte into
//! `tests/fixtures/conformance/`) give the statuses the upstream Go tests expect.
//!
//! The upstream suite applies `base-manifests.yaml` plus one test's manifests, and creates the
//! certificate Secrets itself; these tests do the same, generating the Secrets with rcgen.
//! Upstream, every Gateway gets its own address; Portcullis serves all its Gateways in one
//! process where two Gateways cannot share a port (the younger gets `PortUnavailable`, tested
//! in `spec_tables.rs`). So each Gateway under test is translated with the other Gateways
//! removed, as if it were alone on its own address, except where a test's Gateways are checked
//! together. Upstream matching is by subset: the expected conditions must be present with the
//! expected status and reason; extra conditions are allowed.

// Test-crate helpers outside #[test] fns: a failed setup step stops the test with its message.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod support;

use std::path::Path;
use std::sync::OnceLock;

use gateway_api::experimental::gateways::GatewayStatusAddresses;
use portcullis_core::desired::ObjectRef;
use portcullis_core::filters::{HeaderField, RedirectScheme, RedirectSource};
use portcullis_core::routing::{HeaderPairs, RouteRequest, RouteTable, Routed};
use portcullis_translate::{ObjectStore, Translation, translate};
use support::*;

/// The class name the upstream manifests leave as a placeholder.
const CLASS: &str = "{GATEWAY_CLASS_NAME}";
const INFRA: &str = "gateway-conformance-infra";
const WEB_BACKEND: &str = "gateway-conformance-web-backend";
const VERSIONS: [&str; 2] = ["v1.4.0", "v1.6.1"];

fn fixture(version: &str, file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/conformance")
        .join(version)
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Base manifests, one test's manifests, and the Secrets the upstream suite creates.
fn conformance_store(version: &str, test_file: &str) -> ObjectStore {
    let mut store = ObjectStore::new();
    load_yaml(&mut store, &fixture(version, "base-manifests.yaml"));
    load_yaml(&mut store, &fixture(version, test_file));
    let (web, infra) = suite_certificates();
    store
        .insert(tls_secret(
            WEB_BACKEND,
            "certificate",
            &web.cert_pem,
            &web.key_pem,
        ))
        .expect("secret");
    store
        .insert(tls_secret(
            INFRA,
            "tls-validity-checks-certificate",
            &infra.cert_pem,
            &infra.key_pem,
        ))
        .expect("secret");
    store
}

/// The suite's self-signed RSA certificates, generated once per test binary (RSA key
/// generation is slow in debug builds). suite.go: MustCreateSelfSignedCertSecret(web-backend,
/// "certificate", ["*"]) and (infra, "tls-validity-checks-certificate", ["*", "*.org"]).
fn suite_certificates() -> &'static (ServerPair, ServerPair) {
    static CERTIFICATES: OnceLock<(ServerPair, ServerPair)> = OnceLock::new();
    CERTIFICATES.get_or_init(|| {
        (
            self_signed_leaf(&["*"], KeyKind::Rsa2048),
            self_signed_leaf(&["*", "*.org"], KeyKind::Rsa2048),
        )
    })
}

/// Translates with only `gateways` left, each with an address, as upstream gives each
/// Gateway its own.
fn translate_alone(store: &ObjectStore, gateways: &[&str]) -> Translation {
    let mut store = store.clone();
    store
        .gateways
        .retain(|key, _| key.namespace == INFRA && gateways.contains(&key.name.as_str()));
    assert_eq!(
        store.gateways.len(),
        gateways.len(),
        "gateways under test exist"
    );
    let mut options = options(Some(CLASS));
    for (i, name) in gateways.iter().enumerate() {
        options.gateway_addresses.insert(
            ObjectRef::new(INFRA, *name),
            vec![GatewayStatusAddresses {
                r#type: Some("IPAddress".to_owned()),
                value: format!("192.0.2.{}", i + 1),
            }],
        );
    }
    translate(&store, &options)
}

/// listenersMatch of the upstream helpers: name, supportedKinds with HTTPRoute (upstream looks
/// for the expected kinds, as an implementation may support more: ours adds GRPCRoute),
/// attachedRoutes and each expected condition.
#[track_caller]
fn assert_https_listener(t: &Translation, gateway: &str, expected: &[(&str, bool, Option<&str>)]) {
    let status = gateway_status(t, INFRA, gateway);
    let listeners = status.listeners.as_deref().unwrap_or_default();
    assert_eq!(listeners.len(), 1, "{gateway}");
    let l = listener(status, "https");
    let kinds = l.supported_kinds.as_deref().unwrap_or_default();
    assert!(
        kinds.iter().any(|k| (k.group.as_deref(), k.kind.as_str())
            == (Some("gateway.networking.k8s.io"), "HTTPRoute")),
        "{gateway}: {kinds:?}"
    );
    assert_eq!(l.attached_routes, 0, "{gateway}");
    for (type_, status, reason) in expected {
        let c = condition(&l.conditions, type_)
            .unwrap_or_else(|| panic!("{gateway}: no {type_} in {:#?}", l.conditions));
        assert_eq!(
            c.status,
            if *status { "True" } else { "False" },
            "{gateway} {type_}: {}",
            c.message
        );
        if let Some(reason) = reason {
            assert_eq!(c.reason, *reason, "{gateway} {type_}: {}", c.message);
        }
        assert_eq!(c.observed_generation, Some(1));
    }
    assert!(
        status.addresses.as_ref().is_some_and(|a| !a.is_empty()),
        "{gateway} has an address"
    );
}

#[test]
fn gateway_invalid_tls_configuration() {
    for version in VERSIONS {
        let store = conformance_store(version, "gateway-invalid-tls-configuration.yaml");
        for gateway in [
            "gateway-certificate-nonexistent-secret",
            "gateway-certificate-unsupported-group",
            "gateway-certificate-unsupported-kind",
            "gateway-certificate-malformed-secret",
        ] {
            let t = translate_alone(&store, &[gateway]);
            assert_https_listener(
                &t,
                gateway,
                &[
                    ("ResolvedRefs", false, Some("InvalidCertificateRef")),
                    ("Programmed", false, Some("Invalid")),
                ],
            );
            assert!(
                t.desired.ports.is_empty(),
                "{version} {gateway}: nothing is served"
            );
        }
        // All four together, as one process would see them: three lose port 443, and every
        // one still reports its certificate problem.
        let t = translate(&store, &options(Some(CLASS)));
        for gateway in [
            "gateway-certificate-malformed-secret",
            "gateway-certificate-nonexistent-secret",
            "gateway-certificate-unsupported-group",
            "gateway-certificate-unsupported-kind",
        ] {
            let l = listener(gateway_status(&t, INFRA, gateway), "https");
            assert_condition(
                &l.conditions,
                "ResolvedRefs",
                false,
                "InvalidCertificateRef",
            );
        }
    }
}

#[test]
fn gateway_invalid_tls_configuration_messages_name_the_reference() {
    let store = conformance_store("v1.4.0", "gateway-invalid-tls-configuration.yaml");
    let cases = [
        (
            "gateway-certificate-nonexistent-secret",
            "Secret gateway-conformance-infra/nonexistent-certificate: not found",
        ),
        (
            "gateway-certificate-unsupported-group",
            "Secret.wrong.group.company.io gateway-conformance-infra/tls-validity-checks-certificate",
        ),
        (
            "gateway-certificate-unsupported-kind",
            "WrongKind gateway-conformance-infra/tls-validity-checks-certificate",
        ),
        (
            "gateway-certificate-malformed-secret",
            "Secret gateway-conformance-infra/malformed-certificate: tls.crt",
        ),
    ];
    for (gateway, needle) in cases {
        let t = translate_alone(&store, &[gateway]);
        let l = listener(gateway_status(&t, INFRA, gateway), "https");
        let message = &condition(&l.conditions, "ResolvedRefs")
            .expect("ResolvedRefs")
            .message;
        assert!(message.contains(needle), "{gateway}: {message}");
    }
}

#[test]
fn gateway_secret_missing_reference_grant() {
    for version in VERSIONS {
        let store = conformance_store(version, "gateway-secret-missing-reference-grant.yaml");
        let gateway = "gateway-secret-missing-reference-grant";
        let t = translate_alone(&store, &[gateway]);
        assert_https_listener(
            &t,
            gateway,
            &[
                ("ResolvedRefs", false, Some("RefNotPermitted")),
                ("Programmed", false, Some("Invalid")),
            ],
        );
    }
}

#[test]
fn gateway_secret_invalid_reference_grant() {
    for version in VERSIONS {
        let store = conformance_store(version, "gateway-secret-invalid-reference-grant.yaml");
        assert_eq!(
            store.reference_grants.len(),
            7,
            "{version}: all grants loaded"
        );
        let gateway = "gateway-secret-invalid-reference-grant";
        let t = translate_alone(&store, &[gateway]);
        assert_https_listener(
            &t,
            gateway,
            &[
                ("ResolvedRefs", false, Some("RefNotPermitted")),
                ("Programmed", false, Some("Invalid")),
            ],
        );
    }
}

#[test]
fn gateway_secret_reference_grant_specific_and_all_in_namespace() {
    for version in VERSIONS {
        for (file, gateway) in [
            (
                "gateway-secret-reference-grant-specific.yaml",
                "gateway-secret-reference-grant-specific",
            ),
            (
                "gateway-secret-reference-grant-all-in-namespace.yaml",
                "gateway-secret-reference-grant-all-in-namespace",
            ),
        ] {
            let store = conformance_store(version, file);
            let t = translate_alone(&store, &[gateway]);
            assert_https_listener(
                &t,
                gateway,
                &[
                    ("Programmed", true, None),
                    ("ResolvedRefs", true, None),
                    ("Accepted", true, None),
                ],
            );
            let port = t.desired.port(443).expect("443 served");
            let tls = port.listeners[0].tls.as_ref().expect("tls");
            assert_eq!(
                tls.certificate.source,
                "Secret gateway-conformance-web-backend/certificate"
            );
            // Deleting the grant revokes access.
            let mut revoked = store.clone();
            revoked.reference_grants.clear();
            let t = translate_alone(&revoked, &[gateway]);
            assert_https_listener(
                &t,
                gateway,
                &[("ResolvedRefs", false, Some("RefNotPermitted"))],
            );
        }
    }
}

#[test]
fn httproute_hostname_intersection() {
    for version in VERSIONS {
        let store = conformance_store(version, "httproute-hostname-intersection.yaml");
        let gateway = "httproute-hostname-intersection";
        let t = translate_alone(&store, &[gateway]);
        for route in [
            "specific-host-matches-listener-specific-host",
            "specific-host-matches-listener-wildcard-host",
            "wildcard-host-matches-listener-specific-host",
            "wildcard-host-matches-listener-wildcard-host",
        ] {
            let status = route_status(&t, INFRA, route);
            assert_eq!(status.parents.len(), 1, "{route}");
            let p = parent(status, gateway, None);
            assert_eq!(
                p.parent_ref.group.as_deref(),
                Some("gateway.networking.k8s.io")
            );
            assert_eq!(p.parent_ref.kind.as_deref(), Some("Gateway"));
            assert_eq!(p.parent_ref.namespace.as_deref(), Some(INFRA));
            assert_condition(&p.conditions, "Accepted", true, "Accepted");
            assert_condition(&p.conditions, "ResolvedRefs", true, "ResolvedRefs");
        }
        let p = parent(
            route_status(&t, INFRA, "no-intersecting-hosts"),
            gateway,
            None,
        );
        assert_condition(
            &p.conditions,
            "Accepted",
            false,
            "NoMatchingListenerHostname",
        );

        // Which hostnames each listener serves for each route.
        let port = t.desired.port(80).expect("port 80");
        let on = |listener: &str| -> Vec<(String, Vec<String>)> {
            port.listeners
                .iter()
                .find(|l| l.name == listener)
                .expect("listener programmed")
                .routes
                .iter()
                .map(|r| (r.route.name.clone(), r.hostnames.clone()))
                .collect()
        };
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            on("listener-1"),
            vec![
                (
                    "specific-host-matches-listener-specific-host".to_owned(),
                    s(&["very.specific.com"])
                ),
                (
                    "wildcard-host-matches-listener-specific-host".to_owned(),
                    s(&["very.specific.com"])
                ),
            ]
        );
        assert_eq!(
            on("listener-2"),
            vec![(
                "specific-host-matches-listener-wildcard-host".to_owned(),
                s(&["foo.wildcard.io", "bar.wildcard.io", "foo.bar.wildcard.io"])
            )]
        );
        assert_eq!(
            on("listener-3"),
            vec![(
                "wildcard-host-matches-listener-wildcard-host".to_owned(),
                s(&["*.anotherwildcard.io"])
            )]
        );
        let g = gateway_status(&t, INFRA, gateway);
        assert_eq!(listener(g, "listener-1").attached_routes, 2);
        assert_eq!(listener(g, "listener-2").attached_routes, 1);
        assert_eq!(listener(g, "listener-3").attached_routes, 1);

        let all = "httproute-hostname-intersection-all";
        let t = translate_alone(&store, &[all]);
        let p = parent(route_status(&t, INFRA, all), all, None);
        assert_condition(&p.conditions, "Accepted", true, "Accepted");
        let port = t.desired.port(80).expect("port 80");
        assert_eq!(
            port.listeners[0].routes[0].hostnames,
            s(&["first.com", "sub.first.com", "second.com", "sub.second.com"])
        );
    }
}

#[test]
fn httproute_listener_hostname_matching() {
    for version in VERSIONS {
        let store = conformance_store(version, "httproute-listener-hostname-matching.yaml");
        let gateway = "httproute-listener-hostname-matching";
        let t = translate_alone(&store, &[gateway]);
        for (route, sections) in [
            ("backend-v1", vec!["listener-1"]),
            ("backend-v2", vec!["listener-2"]),
            ("backend-v3", vec!["listener-3", "listener-4"]),
        ] {
            let status = route_status(&t, INFRA, route);
            assert_eq!(status.parents.len(), sections.len(), "{route}");
            for section in sections {
                let p = parent(status, gateway, Some(section));
                assert_condition(&p.conditions, "Accepted", true, "Accepted");
                assert_condition(&p.conditions, "ResolvedRefs", true, "ResolvedRefs");
            }
        }
        let g = gateway_status(&t, INFRA, gateway);
        assert_condition(gateway_conditions(g), "Accepted", true, "Accepted");
        assert_condition(gateway_conditions(g), "Programmed", true, "Programmed");
        let port = t.desired.port(80).expect("port 80");
        for (listener_name, hostname, route) in [
            ("listener-1", "bar.com", "backend-v1"),
            ("listener-2", "foo.bar.com", "backend-v2"),
            ("listener-3", "*.bar.com", "backend-v3"),
            ("listener-4", "*.foo.com", "backend-v3"),
        ] {
            assert_listener_healthy(listener(g, listener_name));
            assert_eq!(listener(g, listener_name).attached_routes, 1);
            let l = port
                .listeners
                .iter()
                .find(|l| l.name == listener_name)
                .expect("listener");
            assert_eq!(l.hostname.as_deref(), Some(hostname));
            assert_eq!(l.routes.len(), 1);
            assert_eq!(l.routes[0].route.name, route);
            assert!(
                l.routes[0].hostnames.is_empty(),
                "the route takes the listener's hostname"
            );
        }
    }
}

/// Routes the way the data plane does on the `same-namespace` Gateway (HTTP, port 80) of a
/// translation: the route table of its listener, for a request to `host` and `path`.
fn route_on_same_namespace<'t>(
    table: &'t RouteTable,
    host: &'t str,
    path: &'t str,
    headers: &'t HeaderPairs<'t>,
) -> Routed<'t> {
    let request = RouteRequest {
        host,
        method: "GET",
        path,
        query: None,
        headers,
    };
    table
        .find_routed(&request)
        .unwrap_or_else(|| panic!("{path} is routed"))
}

fn same_namespace_table(t: &Translation) -> RouteTable {
    let port = t.desired.port(80).expect("port 80");
    RouteTable::new(&port.listeners[0].routes)
}

/// A request path, the status and the `Location` the suite expects for it.
type Expected<'a> = (&'a str, u16, &'a str);

/// The suite's redirect tests (Core `HTTPRouteRedirectHostAndStatus`, Extended scheme, port
/// and path): the route is accepted with its refs resolved, and each request the suite sends
/// gets the status and `Location` it expects (scheme, host, port 80 left out, path), the
/// gateway's address standing in for the host the suite does not check.
#[test]
fn httproute_redirects_give_what_the_suite_expects() {
    const ADDRESS: &str = "192.0.2.1";
    let cases: [(&str, &str, &[Expected<'_>]); 4] = [
        (
            "httproute-redirect-host-and-status.yaml",
            "redirect-host-and-status",
            &[
                (
                    "/hostname-redirect",
                    302,
                    "http://example.org/hostname-redirect",
                ),
                (
                    "/host-and-status",
                    301,
                    "http://example.org/host-and-status",
                ),
            ],
        ),
        (
            "httproute-redirect-scheme.yaml",
            "redirect-scheme",
            &[
                ("/scheme", 302, "https://192.0.2.1/scheme"),
                (
                    "/scheme-and-host",
                    302,
                    "https://example.org/scheme-and-host",
                ),
                (
                    "/scheme-and-status",
                    301,
                    "https://192.0.2.1/scheme-and-status",
                ),
                (
                    "/scheme-and-host-and-status",
                    302,
                    "https://example.org/scheme-and-host-and-status",
                ),
            ],
        ),
        (
            "httproute-redirect-port.yaml",
            "redirect-port",
            &[
                ("/port", 302, "http://192.0.2.1:8083/port"),
                (
                    "/port-and-host",
                    302,
                    "http://example.org:8083/port-and-host",
                ),
                (
                    "/port-and-status",
                    301,
                    "http://192.0.2.1:8083/port-and-status",
                ),
                (
                    "/port-and-host-and-status",
                    302,
                    "http://example.org:8083/port-and-host-and-status",
                ),
            ],
        ),
        (
            "httproute-redirect-path.yaml",
            "redirect-path",
            &[
                (
                    "/original-prefix/lemon",
                    302,
                    "http://192.0.2.1/replacement-prefix/lemon",
                ),
                (
                    "/full/path/original",
                    302,
                    "http://192.0.2.1/full-path-replacement",
                ),
                (
                    "/path-and-host",
                    302,
                    "http://example.org/replacement-prefix",
                ),
                (
                    "/path-and-status",
                    301,
                    "http://192.0.2.1/replacement-prefix",
                ),
                (
                    "/full-path-and-host",
                    302,
                    "http://example.org/replacement-full",
                ),
                (
                    "/full-path-and-status",
                    301,
                    "http://192.0.2.1/replacement-full",
                ),
            ],
        ),
    ];
    for (file, route, requests) in cases {
        let store = conformance_store("v1.6.1", file);
        let t = translate_alone(&store, &["same-namespace"]);
        let p = parent(route_status(&t, INFRA, route), "same-namespace", None);
        assert_condition(&p.conditions, "Accepted", true, "Accepted");
        assert_condition(&p.conditions, "ResolvedRefs", true, "ResolvedRefs");
        let table = same_namespace_table(&t);
        let headers = HeaderPairs(&[]);
        for (path, status, location) in requests {
            let routed = route_on_same_namespace(&table, ADDRESS, path, &headers);
            let redirect = routed.target.filters.redirect.as_ref().expect("a redirect");
            let source = RedirectSource {
                scheme: RedirectScheme::Http,
                host: ADDRESS,
                listener_port: 80,
                path,
                query: None,
                matched_prefix: routed.matched_prefix,
            };
            assert_eq!(redirect.status.code(), *status, "{file} {path}");
            assert_eq!(redirect.location(&source), *location, "{file} {path}");
        }
    }
}

/// The suite's header modifier tests (Core `HTTPRouteRequestHeaderModifier`, Extended
/// `HTTPRouteResponseHeaderModifier`): accepted, refs resolved, each rule's modifier as the
/// manifest says (how the data plane applies them is tested on real sockets in
/// cli/tests/route_filters.rs).
#[test]
fn httproute_header_modifiers_are_served() {
    for (file, route) in [
        (
            "httproute-request-header-modifier.yaml",
            "request-header-modifier",
        ),
        (
            "httproute-response-header-modifier.yaml",
            "response-header-modifier",
        ),
    ] {
        let store = conformance_store("v1.6.1", file);
        let t = translate_alone(&store, &["same-namespace"]);
        let p = parent(route_status(&t, INFRA, route), "same-namespace", None);
        assert_condition(&p.conditions, "Accepted", true, "Accepted");
        assert_condition(&p.conditions, "ResolvedRefs", true, "ResolvedRefs");
        let table = same_namespace_table(&t);
        let headers = HeaderPairs(&[]);
        let routed = route_on_same_namespace(&table, "192.0.2.1", "/multiple", &headers);
        let filters = &routed.target.filters;
        let modifier = if file.contains("request") {
            assert!(filters.response_headers.is_empty());
            &filters.request_headers
        } else {
            assert!(filters.request_headers.is_empty());
            &filters.response_headers
        };
        let names = |fields: &[HeaderField]| -> Vec<String> {
            fields
                .iter()
                .map(|f| format!("{}={}", f.name, f.value))
                .collect()
        };
        assert_eq!(
            names(&modifier.set),
            ["X-Header-Set-1=header-set-1", "X-Header-Set-2=header-set-2"]
        );
        assert_eq!(
            names(&modifier.add),
            [
                "X-Header-Add-1=header-add-1",
                "X-Header-Add-2=header-add-2",
                "X-Header-Add-3=header-add-3"
            ]
        );
        assert_eq!(modifier.remove, ["X-Header-Remove-1", "X-Header-Remove-2"]);
    }
}

#[test]
fn base_gateways_are_served() {
    for version in VERSIONS {
        let store = conformance_store(version, "httproute-listener-hostname-matching.yaml");
        let t = translate_alone(&store, &["same-namespace-with-https-listener"]);
        let g = gateway_status(&t, INFRA, "same-namespace-with-https-listener");
        for l in g.listeners.iter().flatten() {
            assert_listener_healthy(l);
        }
        let port = t.desired.port(443).expect("443");
        assert!(port.listeners.iter().all(|l| l.tls.is_some()));
    }
}

/// Kube mode translates once for every Gateway, each with a data plane of its own: each
/// Gateway's desired config is what translating it alone gives, for every test's manifests.
#[test]
fn each_gateways_desired_config_is_what_it_alone_gives() {
    let mut checked = 0;
    for version in VERSIONS {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/conformance")
            .join(version);
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".yaml") && name != "base-manifests.yaml")
            .collect();
        files.sort();
        for file in files {
            let store = conformance_store(version, &file);
            let mut shared_options = options(Some(CLASS));
            shared_options.separate_data_planes = true;
            let shared = translate(&store, &shared_options);
            assert!(!shared.desired_by_gateway.is_empty(), "{version}/{file}");
            for (key, desired) in &shared.desired_by_gateway {
                let mut alone = store.clone();
                alone.gateways.retain(|k, _| k == key);
                assert_eq!(
                    &translate(&alone, &options(Some(CLASS))).desired,
                    desired,
                    "{version}/{file}: {key}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 20, "only {checked} Gateways checked");
}
