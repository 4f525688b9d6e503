//! Property test: `translate` never panics, is deterministic, and keeps the desired config's
//! invariants, on arbitrary object sets (garbage included: bad ports, protocols, hostnames,
//! references, PEM, addresses, selectors).

// Test-crate helpers outside #[test] fns: a failed setup step stops the test with its message.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use std::sync::OnceLock;

use portcullis_core::desired::{ClientValidation, PortProtocol};
use portcullis_core::hostname;
use portcullis_translate::check::render_statuses;
use portcullis_translate::{Object, ObjectStore, StoredReferenceGrant, translate};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Value, json};
use support::*;

/// Valid PEM to mix with garbage, generated once.
struct Material {
    cert: String,
    key: String,
    ca: String,
}

fn material() -> &'static Material {
    static MATERIAL: OnceLock<Material> = OnceLock::new();
    MATERIAL.get_or_init(|| {
        let ca = TestCa::new("Prop CA");
        let leaf = ca.leaf(&["a.example.com", "*.example.com"]);
        Material {
            cert: leaf.cert_pem,
            key: leaf.key_pem,
            ca: ca.cert_pem,
        }
    })
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(vec!["g", "h", "r", "s", "server", "ca", "svc"]).prop_map(str::to_owned),
        1 => "[a-z0-9.-]{0,6}",
    ]
}

/// Mostly namespace `a`, so that references often resolve.
fn namespace() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        6 => Just(Some("a".to_owned())),
        1 => Just(None),
        1 => select(vec!["b", "default", ""]).prop_map(|n| Some(n.to_owned())),
    ]
}

fn garbage() -> impl Strategy<Value = String> {
    "\\PC{0,10}"
}

fn hostname() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => select(vec![
            "a.example.com", "*.example.com", "example.com", "*.a.example.com", "A.EXAMPLE.COM.",
            "xn--bcher-kva.example",
        ]).prop_map(str::to_owned),
        1 => select(vec!["*", "", "..", "*.*.com", "-x.com"]).prop_map(str::to_owned),
        1 => garbage(),
    ]
}

fn port() -> impl Strategy<Value = i64> {
    prop_oneof![
        8 => select(vec![80i64, 443, 8443, 8444, 8080]),
        1 => select(vec![0i64, -1, 65535, 65536, 70000, i64::from(i32::MAX), i64::from(i32::MIN)]),
    ]
}

fn reference() -> impl Strategy<Value = Value> {
    (
        prop::option::of(select(vec!["", "gateway.networking.k8s.io", "x.io"])),
        prop::option::of(select(vec![
            "Secret",
            "ConfigMap",
            "Service",
            "Gateway",
            "HTTPRoute",
            "Weird",
        ])),
        name(),
        namespace(),
        prop::option::of(port()),
        prop::option::of(select(vec!["l1", "l2", "x"])),
        prop::option::of(any::<i32>()),
    )
        .prop_map(|(group, kind, name, namespace, port, section, weight)| {
            let mut r = json!({"name": name});
            if let Some(g) = group {
                r["group"] = json!(g);
            }
            if let Some(k) = kind {
                r["kind"] = json!(k);
            }
            if let Some(n) = namespace {
                r["namespace"] = json!(n);
            }
            if let Some(p) = port {
                r["port"] = json!(p.clamp(i64::from(i32::MIN), i64::from(i32::MAX)));
            }
            if let Some(s) = section {
                r["sectionName"] = json!(s);
            }
            if let Some(w) = weight {
                r["weight"] = json!(w);
            }
            r
        })
}

/// A ref for fields whose group and kind are required strings.
fn ca_reference() -> impl Strategy<Value = Value> {
    (
        prop_oneof![4 => Just(""), 1 => Just("x.io")],
        prop_oneof![4 => Just("ConfigMap"), 1 => select(vec!["Secret", "Service"])],
        prop_oneof![3 => Just("ca".to_owned()), 1 => name()],
        namespace(),
    )
        .prop_map(|(group, kind, name, namespace)| {
            let mut r = json!({"group": group, "kind": kind, "name": name});
            if let Some(n) = namespace {
                r["namespace"] = json!(n);
            }
            r
        })
}

fn validation() -> impl Strategy<Value = Option<Value>> {
    prop::option::of(
        (
            prop::collection::vec(ca_reference(), 0..4),
            prop::option::of(select(vec!["AllowValidOnly", "AllowInsecureFallback"])),
        )
            .prop_map(|(refs, mode)| {
                let mut v = json!({"caCertificateRefs": refs});
                if let Some(m) = mode {
                    v["mode"] = json!(m);
                }
                v
            }),
    )
}

fn frontend() -> impl Strategy<Value = Option<Value>> {
    prop::option::of(
        (
            validation(),
            prop::collection::vec((port(), validation()), 0..3),
        )
            .prop_map(|(default, per_port)| {
                let mut default_block = json!({});
                if let Some(v) = default {
                    default_block["validation"] = v;
                }
                let per_port: Vec<Value> = per_port
                .into_iter()
                .map(|(p, v)| {
                    let mut tls = json!({});
                    if let Some(v) = v { tls["validation"] = v; }
                    json!({"port": p.clamp(i64::from(i32::MIN), i64::from(i32::MAX)), "tls": tls})
                })
                .collect();
                json!({"default": default_block, "perPort": per_port})
            }),
    )
}

fn selector() -> impl Strategy<Value = Value> {
    (
        prop::collection::btree_map(
            select(vec!["team", "env"]),
            select(vec!["blue", "prod"]),
            0..2,
        ),
        prop::collection::vec(
            (
                select(vec!["team", "env"]),
                select(vec!["In", "NotIn", "Exists", "DoesNotExist", "Bogus"]),
                prop::collection::vec(select(vec!["blue", "prod"]), 0..2),
            ),
            0..2,
        ),
    )
        .prop_map(|(labels, exprs)| {
            let exprs: Vec<Value> = exprs
                .into_iter()
                .map(|(k, op, values)| json!({"key": k, "operator": op, "values": values}))
                .collect();
            json!({"matchLabels": labels, "matchExpressions": exprs})
        })
}

fn listener() -> impl Strategy<Value = Value> {
    (
        select(vec!["l1", "l2", "l3", "x"]),
        port(),
        prop_oneof![
            8 => select(vec!["HTTP", "HTTPS"]),
            1 => select(vec!["TLS", "TCP", "UDP", "garbage", ""]),
        ],
        prop::option::of(hostname()),
        prop::option::weighted(0.9, (
            prop::option::of(select(vec!["Terminate", "Passthrough"])),
            prop::option::of(prop_oneof![
                4 => Just(vec![json!({"name": "server"})]),
                1 => prop::collection::vec(reference(), 0..3),
            ]),
            prop::option::of(prop::collection::btree_map(
                select(vec![
                    "portcullis.dev/verify-subject-alt-names",
                    "portcullis.dev/verify-certificate-hash",
                    "portcullis.dev/tls-session-resumption",
                    "portcullis.dev/forward-client-cert",
                    "kgateway.dev/verify-subject-alt-names",
                    "portcullis.dev/unknown",
                    "someone.else/option",
                ]),
                garbage(),
                0..2,
            )),
        )),
        prop::option::of((
            prop::option::of(select(vec!["All", "Same", "Selector"])),
            prop::option::of(selector()),
            prop::option::of(prop::collection::vec(
                (prop::option::of(select(vec!["gateway.networking.k8s.io", "x.io"])),
                 select(vec!["HTTPRoute", "GRPCRoute", "TCPRoute", "Weird"])),
                0..3,
            )),
        )),
    )
        .prop_map(|(name, port, protocol, hostname, tls, allowed)| {
            let mut l = json!({"name": name, "port": port.clamp(i64::from(i32::MIN), i64::from(i32::MAX)), "protocol": protocol});
            if let Some(h) = hostname { l["hostname"] = json!(h); }
            if let Some((mode, refs, options)) = tls {
                let mut t = json!({});
                if let Some(m) = mode { t["mode"] = json!(m); }
                if let Some(r) = refs { t["certificateRefs"] = json!(r); }
                if let Some(o) = options { t["options"] = json!(o); }
                l["tls"] = t;
            }
            if let Some((from, selector, kinds)) = allowed {
                let mut namespaces = json!({});
                if let Some(f) = from { namespaces["from"] = json!(f); }
                if let Some(s) = selector { namespaces["selector"] = s; }
                let mut a = json!({"namespaces": namespaces});
                if let Some(kinds) = kinds {
                    a["kinds"] = Value::Array(kinds.into_iter().map(|(g, k)| {
                        let mut kind = json!({"kind": k});
                        if let Some(g) = g { kind["group"] = json!(g); }
                        kind
                    }).collect());
                }
                l["allowedRoutes"] = a;
            }
            l
        })
}

fn metadata() -> impl Strategy<Value = Value> {
    (
        prop_oneof![3 => select(vec!["g", "h"]).prop_map(str::to_owned), 1 => name()],
        namespace(),
        prop::option::of(0i64..5),
        prop::option::of(any::<i64>()),
    )
        .prop_map(|(name, namespace, created, generation)| {
            let mut m = json!({"name": if name.is_empty() { "n".to_owned() } else { name }});
            if let Some(n) = namespace {
                m["namespace"] = json!(n);
            }
            if let Some(c) = created {
                m["creationTimestamp"] = json!(format!("2026-01-01T00:00:0{c}Z"));
            }
            if let Some(g) = generation {
                m["generation"] = json!(g);
            }
            m
        })
}

fn gateway() -> impl Strategy<Value = Value> {
    (
        metadata(),
        select(vec!["portcullis", "other", "extra"]),
        prop::collection::vec(listener(), 0..5),
        frontend(),
        prop::option::of(prop::collection::vec(
            prop::option::of(select(vec!["192.0.2.1", "", "x"])),
            0..2,
        )),
    )
        .prop_map(|(metadata, class, listeners, frontend, addresses)| {
            let mut spec = json!({"gatewayClassName": class, "listeners": listeners});
            if let Some(f) = frontend {
                spec["tls"] = json!({"frontend": f});
            }
            if let Some(a) = addresses {
                spec["addresses"] = Value::Array(
                    a.into_iter()
                        .map(|v| match v {
                            Some(v) => json!({"value": v}),
                            None => json!({}),
                        })
                        .collect(),
                );
            }
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                   "metadata": metadata, "spec": spec})
        })
}

fn route_match() -> impl Strategy<Value = Value> {
    (
        prop::option::of((
            prop::option::of(prop_oneof![
                6 => select(vec!["Exact", "PathPrefix"]),
                1 => Just("RegularExpression"),
            ]),
            prop::option::of(prop_oneof![
                6 => select(vec!["/", "/a", "/a/"]),
                1 => select(vec!["", "a"]),
            ]),
        )),
        prop::option::of(select(vec!["GET", "POST", "PATCH"])),
        prop::collection::vec(
            (
                garbage(),
                garbage(),
                prop::option::of(prop_oneof![6 => Just("Exact"), 1 => Just("RegularExpression")]),
            ),
            0..2,
        ),
    )
        .prop_map(|(path, method, headers)| {
            let mut m = json!({});
            if let Some((t, v)) = path {
                let mut p = json!({});
                if let Some(t) = t {
                    p["type"] = json!(t);
                }
                if let Some(v) = v {
                    p["value"] = json!(v);
                }
                m["path"] = p;
            }
            if let Some(method) = method {
                m["method"] = json!(method);
            }
            let hs: Vec<Value> = headers
                .iter()
                .map(|(n, v, t)| {
                    let mut h = json!({"name": n, "value": v});
                    if let Some(t) = t {
                        h["type"] = json!(t);
                    }
                    h
                })
                .collect();
            m["headers"] = json!(hs);
            m["queryParams"] = json!(hs);
            m
        })
}

fn http_route() -> impl Strategy<Value = Value> {
    (
        metadata(),
        prop::collection::vec(
            prop_oneof![
                4 => (select(vec!["g", "h"]), prop::option::of(select(vec!["l1", "l2"])))
                    .prop_map(|(n, s)| json!({"name": n, "namespace": "a", "sectionName": s})),
                1 => reference(),
            ],
            0..4,
        ),
        prop::collection::vec(hostname(), 0..2),
        prop::collection::vec(
            (
                prop::collection::vec(route_match(), 0..3),
                prop::collection::vec(reference(), 0..3),
                prop::collection::vec(http_filter(), 0..3),
            ),
            0..3,
        ),
    )
        .prop_map(|(metadata, parents, hostnames, rules)| {
            let rules: Vec<Value> = rules
                .into_iter()
                .map(|(matches, backends, filters)| {
                    let mut r = json!({"matches": matches, "backendRefs": backends});
                    if !filters.is_empty() {
                        r["filters"] = json!(filters);
                    }
                    r
                })
                .collect();
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                   "metadata": metadata,
                   "spec": {"parentRefs": parents, "hostnames": hostnames, "rules": rules}})
        })
}

/// An HTTPRoute filter: the implemented kinds with valid and invalid values (header names the
/// gateway manages, values with line breaks, bad status codes, ports and paths), an
/// unimplemented kind, and a type without its field.
fn http_filter() -> impl Strategy<Value = Value> {
    let name = || {
        select(vec![
            "X-A",
            "x-a",
            "Host",
            "Content-Length",
            "bad name",
            "",
            "X-Forwarded-Client-Cert",
        ])
    };
    let value = || select(vec!["v", "", "a b", "a\r\nX-Injected: 1", " padded "]);
    let path = || select(vec!["/", "/new", "", "no-slash", "/a b", "/%zz", "/x/"]);
    let modifier = (
        prop::collection::vec((name(), value()), 0..3),
        prop::collection::vec((name(), value()), 0..3),
        prop::collection::vec(name(), 0..3),
    )
        .prop_map(|(set, add, remove)| {
            let pairs = |l: Vec<(&str, &str)>| -> Vec<Value> {
                l.into_iter()
                    .map(|(n, v)| json!({"name": n, "value": v}))
                    .collect()
            };
            json!({"set": pairs(set), "add": pairs(add), "remove": remove})
        });
    let redirect = (
        prop::option::of(select(vec!["http", "https"])),
        prop::option::of(select(vec!["example.org", "*.example.org", "Bad_Host", ""])),
        prop::option::of(select(vec![0i64, 1, 8083, 65535, 65536, -1])),
        prop::option::of(select(vec![301i64, 302, 303, 307, 308, 200, 0])),
        prop::option::of((
            select(vec!["ReplaceFullPath", "ReplacePrefixMatch"]),
            prop::option::of(path()),
        )),
    )
        .prop_map(|(scheme, hostname, port, status, path)| {
            let mut r = json!({});
            if let Some(s) = scheme {
                r["scheme"] = json!(s);
            }
            if let Some(h) = hostname {
                r["hostname"] = json!(h);
            }
            if let Some(p) = port {
                r["port"] = json!(p);
            }
            if let Some(c) = status {
                r["statusCode"] = json!(c);
            }
            if let Some((kind, value)) = path {
                r["path"] = json!({"type": kind});
                if let Some(v) = value {
                    let field = if kind == "ReplaceFullPath" {
                        "replaceFullPath"
                    } else {
                        "replacePrefixMatch"
                    };
                    r["path"][field] = json!(v);
                }
            }
            r
        });
    prop_oneof![
        modifier
            .clone()
            .prop_map(|m| json!({"type": "RequestHeaderModifier", "requestHeaderModifier": m})),
        modifier
            .prop_map(|m| json!({"type": "ResponseHeaderModifier", "responseHeaderModifier": m})),
        redirect.prop_map(|r| json!({"type": "RequestRedirect", "requestRedirect": r})),
        Just(json!({"type": "URLRewrite", "urlRewrite": {"hostname": "a"}})),
        Just(json!({"type": "RequestRedirect"})),
    ]
}

/// A GRPCRoute method match: service and/or method (valid, empty or garbage), Exact or
/// RegularExpression, and headers.
fn grpc_match() -> impl Strategy<Value = Value> {
    let part = || {
        prop::option::of(prop_oneof![
            6 => select(vec!["pkg.Echo", "Echo", "Say", "_x.y_1"]).prop_map(str::to_owned),
            1 => Just(String::new()),
            1 => garbage(),
        ])
    };
    (
        prop::option::of((
            part(),
            part(),
            prop::option::of(prop_oneof![6 => Just("Exact"), 1 => Just("RegularExpression")]),
        )),
        prop::collection::vec(
            (
                garbage(),
                garbage(),
                prop::option::of(prop_oneof![6 => Just("Exact"), 1 => Just("RegularExpression")]),
            ),
            0..2,
        ),
    )
        .prop_map(|(method, headers)| {
            let mut m = json!({});
            if let Some((service, name, t)) = method {
                let mut method = json!({});
                if let Some(service) = service {
                    method["service"] = json!(service);
                }
                if let Some(name) = name {
                    method["method"] = json!(name);
                }
                if let Some(t) = t {
                    method["type"] = json!(t);
                }
                m["method"] = method;
            }
            let hs: Vec<Value> = headers
                .iter()
                .map(|(n, v, t)| {
                    let mut h = json!({"name": n, "value": v});
                    if let Some(t) = t {
                        h["type"] = json!(t);
                    }
                    h
                })
                .collect();
            m["headers"] = json!(hs);
            m
        })
}

/// GRPCRoutes are named `G-...` (a name `name()` never makes), so that a served route's kind
/// can be told by its name.
fn grpc_route() -> impl Strategy<Value = Value> {
    (
        metadata(),
        prop::collection::vec(
            prop_oneof![
                4 => (select(vec!["g", "h"]), prop::option::of(select(vec!["l1", "l2"])))
                    .prop_map(|(n, s)| json!({"name": n, "namespace": "a", "sectionName": s})),
                1 => reference(),
            ],
            0..4,
        ),
        prop::collection::vec(hostname(), 0..2),
        prop::collection::vec(
            (prop::collection::vec(grpc_match(), 0..3), prop::collection::vec(reference(), 0..3), prop::bool::weighted(0.1)),
            0..3,
        ),
    )
        .prop_map(|(mut metadata, parents, hostnames, rules)| {
            metadata["name"] = json!(format!("G-{}", metadata["name"].as_str().unwrap_or_default()));
            let rules: Vec<Value> = rules.into_iter().map(|(matches, backends, filter)| {
                let mut r = json!({"matches": matches, "backendRefs": backends});
                if filter { r["filters"] = json!([{"type": "RequestHeaderModifier", "requestHeaderModifier": {"remove": ["x"]}}]); }
                r
            }).collect();
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
                   "metadata": metadata,
                   "spec": {"parentRefs": parents, "hostnames": hostnames, "rules": rules}})
        })
}

fn pem_value() -> impl Strategy<Value = String> {
    let m = material();
    prop_oneof![
        select(vec![
            m.cert.clone(),
            m.key.clone(),
            m.ca.clone(),
            format!("{}{}", m.ca, m.cert)
        ]),
        garbage(),
        Just("-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n".to_owned()),
        Just("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".to_owned()),
    ]
}

fn data() -> impl Strategy<Value = std::collections::BTreeMap<String, String>> {
    prop::collection::btree_map(
        select(vec!["tls.crt", "tls.key", "ca.crt", "other"]).prop_map(str::to_owned),
        pem_value(),
        0..4,
    )
}

fn other_object() -> impl Strategy<Value = Value> {
    prop_oneof![
        (metadata(), data()).prop_map(|(m, d)| json!({"apiVersion": "v1", "kind": "Secret", "metadata": m, "stringData": d})),
        (metadata(), data()).prop_map(|(m, d)| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": m, "data": d})),
        (metadata(), prop::collection::vec((prop::option::of(select(vec!["http", "", "admin"])), port()), 0..3)).prop_map(|(m, ports)| {
            let ports: Vec<Value> = ports.into_iter().map(|(n, p)| {
                let mut port = json!({"port": p.clamp(i64::from(i32::MIN), i64::from(i32::MAX))});
                if let Some(n) = n { port["name"] = json!(n); }
                port
            }).collect();
            json!({"apiVersion": "v1", "kind": "Service", "metadata": m, "spec": {"ports": ports}})
        }),
        (metadata(), name(), select(vec!["IPv4", "IPv6", "FQDN", "x"]),
         prop::collection::vec((prop::option::of(select(vec!["http", "", "admin"])), prop::option::of(any::<i32>())), 0..3),
         prop::collection::vec((prop::collection::vec(select(vec!["10.0.0.1", "::1", "garbage", ""]), 0..3), prop::option::of(any::<bool>())), 0..3))
            .prop_map(|(mut m, service, address_type, ports, endpoints)| {
                m["labels"] = json!({"kubernetes.io/service-name": service});
                let ports: Vec<Value> = ports.into_iter().map(|(n, p)| json!({"name": n, "port": p})).collect();
                let endpoints: Vec<Value> = endpoints.into_iter().map(|(a, ready)| json!({"addresses": a, "conditions": {"ready": ready}})).collect();
                json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": m,
                       "addressType": address_type, "ports": ports, "endpoints": endpoints})
            }),
        (metadata(), select(vec!["gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1beta1"]),
         select(vec!["Gateway", "HTTPRoute", "GRPCRoute"]), namespace(), select(vec!["Secret", "ConfigMap", "Service"]), prop::option::of(name()))
            .prop_map(|(m, api_version, from_kind, from_ns, to_kind, to_name)| {
                let mut to = json!({"group": "", "kind": to_kind});
                if let Some(n) = to_name { to["name"] = json!(n); }
                json!({"apiVersion": api_version, "kind": "ReferenceGrant", "metadata": m,
                       "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": from_kind,
                                          "namespace": from_ns.unwrap_or_default()}],
                                "to": [to]}})
            }),
        (select(vec!["a", "b", "default"]), prop::collection::btree_map(select(vec!["team", "env"]), select(vec!["blue", "prod"]), 0..2))
            .prop_map(|(n, labels)| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n, "labels": labels}})),
        (select(vec!["portcullis", "other"]), select(vec!["portcullis.dev/gateway-controller", "x/y"]))
            .prop_map(|(n, c)| json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
                                      "metadata": {"name": n}, "spec": {"controllerName": c}})),
    ]
}

fn to_object(value: Value) -> Object {
    let kind = value["kind"].as_str().expect("kind").to_owned();
    let parse = |v: Value| v;
    match kind.as_str() {
        "Gateway" => Object::Gateway(serde_json::from_value(parse(value)).expect("Gateway")),
        "HTTPRoute" => Object::HttpRoute(serde_json::from_value(value).expect("HTTPRoute")),
        "GRPCRoute" => Object::GrpcRoute(serde_json::from_value(value).expect("GRPCRoute")),
        "Secret" => Object::Secret(serde_json::from_value(value).expect("Secret")),
        "ConfigMap" => Object::ConfigMap(serde_json::from_value(value).expect("ConfigMap")),
        "Service" => Object::Service(serde_json::from_value(value).expect("Service")),
        "EndpointSlice" => {
            Object::EndpointSlice(serde_json::from_value(value).expect("EndpointSlice"))
        }
        "Namespace" => Object::Namespace(serde_json::from_value(value).expect("Namespace")),
        "GatewayClass" => {
            Object::GatewayClass(serde_json::from_value(value).expect("GatewayClass"))
        }
        "ReferenceGrant" => Object::ReferenceGrant(StoredReferenceGrant {
            api_version: value["apiVersion"].as_str().expect("apiVersion").to_owned(),
            grant: serde_json::from_value(value).expect("ReferenceGrant"),
        }),
        other => panic!("unexpected kind {other}"),
    }
}

fn object_set() -> impl Strategy<Value = Vec<Value>> {
    (
        prop::collection::vec(gateway(), 0..4),
        prop::collection::vec(http_route(), 0..4),
        prop::collection::vec(grpc_route(), 0..3),
        prop::collection::vec(other_object(), 0..10),
    )
        .prop_map(|(mut g, r, grpc, o)| {
            g.extend(r);
            g.extend(grpc);
            g.extend(o);
            g
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn translate_never_panics_and_keeps_invariants(objects in object_set()) {
        let mut store = ObjectStore::new();
        let m = material();
        let base = vec![
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
                   "metadata": {"name": "portcullis"},
                   "spec": {"controllerName": "portcullis.dev/gateway-controller"}}),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "server", "namespace": "a"},
                   "stringData": {"tls.crt": m.cert, "tls.key": m.key}}),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ca", "namespace": "a"},
                   "data": {"ca.crt": m.ca}}),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc", "namespace": "a"},
                   "spec": {"ports": [{"name": "http", "port": 80}]}}),
        ];
        for value in base.into_iter().chain(objects) {
            store.insert(to_object(value)).expect("named objects");
        }
        let t = translate(&store, &options(Some("extra")));
        // Deterministic.
        prop_assert_eq!(&t, &translate(&store, &options(Some("extra"))));
        // Ports sorted, unique, owned by a Gateway with a status.
        let ports: Vec<u16> = t.desired.ports.iter().map(|p| p.port).collect();
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        prop_assert_eq!(&ports, &sorted);
        for p in &t.desired.ports {
            prop_assert!(p.port != 0);
            prop_assert!(t.gateway_status(&p.gateway).is_some());
            prop_assert!(!p.listeners.is_empty());
            let names: BTreeSet<&str> = p.listeners.iter().map(|l| l.name.as_str()).collect();
            prop_assert_eq!(names.len(), p.listeners.len());
            for l in &p.listeners {
                prop_assert_eq!(l.tls.is_some(), p.protocol == PortProtocol::Https);
                if matches!(p.client_validation, ClientValidation::RefuseAll { .. }) {
                    prop_assert!(l.routes.is_empty());
                } else {
                    // Every route served here is counted in attachedRoutes.
                    let status = t.gateway_status(&p.gateway).expect("status");
                    let attached = status.listeners.iter().flatten()
                        .find(|s| s.name == l.name).map(|s| s.attached_routes);
                    prop_assert_eq!(attached, Some(i32::try_from(l.routes.len()).expect("small")));
                }
                // No HTTPRoute and GRPCRoute share a hostname on a listener.
                let (grpc, http): (Vec<_>, Vec<_>) =
                    l.routes.iter().partition(|r| r.route.name.starts_with("G-"));
                for g in &grpc {
                    for h in &http {
                        let shared = g.hostnames.is_empty()
                            || h.hostnames.is_empty()
                            || g.hostnames.iter().any(|a| {
                                h.hostnames.iter().any(|b| hostname::intersect(Some(a), b).is_some())
                            });
                        prop_assert!(!shared, "{:?} and {:?} share a hostname", g, h);
                    }
                }
            }
            if p.protocol == PortProtocol::Http {
                prop_assert_eq!(&p.client_validation, &ClientValidation::NotRequested);
            }
            if let ClientValidation::Verify { trust_anchors, .. } = &p.client_validation {
                prop_assert!(!trust_anchors.is_empty());
            }
        }
        // Every condition is well formed.
        let gateway_conditions = t.gateway_statuses.iter().flat_map(|(_, s)| {
            s.conditions.iter().flatten().chain(s.listeners.iter().flatten().flat_map(|l| &l.conditions))
        });
        let route_conditions = t.route_statuses.iter().flat_map(|(_, s)| s.parents.iter().flat_map(|p| &p.conditions))
            .chain(t.grpc_route_statuses.iter().flat_map(|(_, s)| s.parents.iter().flat_map(|p| &p.conditions)));
        for c in gateway_conditions.chain(route_conditions) {
            prop_assert!(c.status == "True" || c.status == "False");
            prop_assert!(!c.reason.is_empty() && !c.type_.is_empty());
            prop_assert!(c.observed_generation.is_some());
        }
        for (_, s) in &t.route_statuses {
            prop_assert!(!s.parents.is_empty());
        }
        for (_, s) in &t.grpc_route_statuses {
            prop_assert!(!s.parents.is_empty());
        }
        prop_assert!(render_statuses(&t).is_ok());
    }
}
