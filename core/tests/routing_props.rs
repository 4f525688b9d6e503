//! Property tests of the route table against a brute-force model of the Gateway API rules.

use std::cmp::Reverse;

use portcullis_core::desired::{
    BackendProtocol, BackendTarget, DesiredBackend, DesiredRoute, DesiredRule, HeaderMatch,
    ObjectRef, PathMatch, QueryParamMatch, RouteMatch,
};
use portcullis_core::filters::RuleFilters;
use portcullis_core::hostname;
use portcullis_core::routing::{HeaderPairs, RouteRequest, RouteTable, WeightedBackends, WrrState};
use proptest::prelude::*;

const HOSTNAMES: &[&str] = &["a.com", "b.a.com", "*.a.com", "*.b.a.com", "C.com", "*.com"];
const HOSTS: &[&str] = &[
    "a.com",
    "b.a.com",
    "x.b.a.com",
    "y.a.com",
    "c.com",
    "d.com",
    "",
];
const PATHS: &[&str] = &["/", "/a", "/a/", "/a/b", "/ab", "/a/b/c", "/b", "*", ""];
/// Request paths: the first paths of [`PATHS`] and gRPC-shaped ones (`/<service>/<method>`).
const REQUEST_PATHS: &[&str] = &[
    "/", "/a", "/a/", "/a/b", "/ab", "/a/b/c", "/b", "*", "/a.S/M", "/b/M", "/a.S/b", "//M",
];
const GRPC_SERVICES: &[&str] = &["a", "a.S", "b"];
const GRPC_METHODS: &[&str] = &["b", "M"];
const METHODS: &[&str] = &["GET", "POST", "get"];
const HEADER_NAMES: &[&str] = &["x-a", "X-A", "x-b"];
const VALUES: &[&str] = &["1", "2", ""];
const QUERIES: &[&str] = &["", "q=1", "q=2&r=1", "r=1&q=1", "q", "q=1&q=2", "q=&r=2"];

fn path_match() -> impl Strategy<Value = PathMatch> {
    prop_oneof![
        prop::sample::select(PATHS).prop_map(|p| PathMatch::Exact(p.to_owned())),
        prop::sample::select(PATHS).prop_map(|p| PathMatch::Prefix(p.to_owned())),
        (
            prop::option::of(prop::sample::select(GRPC_SERVICES)),
            prop::option::of(prop::sample::select(GRPC_METHODS)),
        )
            .prop_map(|(service, method)| PathMatch::Grpc {
                service: service.map(str::to_owned),
                method: method.map(str::to_owned),
            }),
    ]
}

fn route_match() -> impl Strategy<Value = RouteMatch> {
    (
        path_match(),
        prop::option::of(prop::sample::select(&METHODS[..2])),
        prop::collection::vec(
            (
                prop::sample::select(HEADER_NAMES),
                prop::sample::select(VALUES),
            ),
            0..3,
        ),
        prop::collection::vec(
            (
                prop::sample::select(&["q", "r"][..]),
                prop::sample::select(VALUES),
            ),
            0..3,
        ),
    )
        .prop_map(|(path, method, headers, query)| RouteMatch {
            path,
            method: method.map(str::to_owned),
            headers: headers
                .into_iter()
                .map(|(n, v)| HeaderMatch {
                    name: n.to_owned(),
                    value: v.to_owned(),
                })
                .collect(),
            query_params: query
                .into_iter()
                .map(|(n, v)| QueryParamMatch {
                    name: n.to_owned(),
                    value: v.to_owned(),
                })
                .collect(),
        })
}

fn routes() -> impl Strategy<Value = Vec<DesiredRoute>> {
    prop::collection::vec(
        (
            prop::collection::vec(prop::sample::select(HOSTNAMES), 0..3),
            prop::collection::vec(
                (
                    prop::collection::vec(route_match(), 0..3),
                    prop::collection::vec(0u32..4, 0..3),
                ),
                0..4,
            ),
        ),
        0..5,
    )
    .prop_map(|routes| {
        routes
            .into_iter()
            .enumerate()
            .map(|(i, (hostnames, rules))| DesiredRoute {
                route: ObjectRef::new("ns", format!("r{i}")),
                hostnames: hostnames.into_iter().map(str::to_owned).collect(),
                rules: rules
                    .into_iter()
                    .map(|(matches, weights)| DesiredRule {
                        matches,
                        filters: RuleFilters::default(),
                        backends: weights
                            .into_iter()
                            .enumerate()
                            .map(|(j, weight)| DesiredBackend {
                                name: format!("b{j}"),
                                weight,
                                protocol: BackendProtocol::Http1,
                                target: BackendTarget::Endpoints(Vec::new()),
                            })
                            .collect(),
                    })
                    .collect(),
            })
            .collect()
    })
}

#[derive(Debug, Clone)]
struct Req {
    host: &'static str,
    method: &'static str,
    path: &'static str,
    query: Option<&'static str>,
    headers: Vec<(&'static str, &'static str)>,
}

fn request() -> impl Strategy<Value = Req> {
    (
        prop::sample::select(HOSTS),
        prop::sample::select(METHODS),
        prop::sample::select(REQUEST_PATHS),
        prop::option::of(prop::sample::select(QUERIES)),
        prop::collection::vec(
            (
                prop::sample::select(HEADER_NAMES),
                prop::sample::select(VALUES),
            ),
            0..3,
        ),
    )
        .prop_map(|(host, method, path, query, headers)| Req {
            host,
            method,
            path,
            query,
            headers,
        })
}

/// The model: written from the Gateway API text, as directly as possible.
fn model(routes: &[DesiredRoute], req: &Req) -> Option<(String, usize)> {
    // Host: the most specific hostname (or "none") that matches.
    let mut patterns: Vec<Option<String>> = Vec::new();
    for r in routes {
        if r.hostnames.is_empty() {
            patterns.push(None);
        }
        for h in &r.hostnames {
            patterns.push(Some(hostname::normalize(h)));
        }
    }
    let best = patterns
        .iter()
        .filter(|p| p.as_deref().is_none_or(|p| hostname::matches(p, req.host)))
        .min_by(|a, b| hostname::specificity_order(a.as_deref(), b.as_deref()))?
        .clone();
    let in_group = |r: &DesiredRoute| match &best {
        None => r.hostnames.is_empty(),
        Some(p) => r.hostnames.iter().any(|h| hostname::normalize(h) == *p),
    };
    let mut candidates = Vec::new();
    for (ri, r) in routes.iter().enumerate().filter(|(_, r)| in_group(r)) {
        for (rule_i, rule) in r.rules.iter().enumerate() {
            let default = vec![RouteMatch::default()];
            let matches = if rule.matches.is_empty() {
                &default
            } else {
                &rule.matches
            };
            for (mi, m) in matches.iter().enumerate() {
                if !model_matches(m, req) {
                    continue;
                }
                let (is_exact, len) = match &m.path {
                    PathMatch::Exact(p) => (true, p.chars().count()),
                    PathMatch::Prefix(p) => (false, p.trim_end_matches('/').chars().count()),
                    PathMatch::Grpc { .. } => (false, 0),
                };
                // GRPCRoute: characters of the matched service, then of the matched method.
                let (service_len, method_len) = match &m.path {
                    PathMatch::Grpc { service, method } => (
                        service.as_deref().map_or(0, |s| s.chars().count()),
                        method.as_deref().map_or(0, |s| s.chars().count()),
                    ),
                    _ => (0, 0),
                };
                let headers = unique(m.headers.iter().map(|h| h.name.to_ascii_lowercase()));
                let query = unique(m.query_params.iter().map(|q| q.name.clone()));
                let key = (
                    Reverse(is_exact),
                    Reverse(len),
                    Reverse(service_len),
                    Reverse(method_len),
                    Reverse(m.method.is_some()),
                    Reverse(headers),
                    Reverse(query),
                    ri,
                    rule_i,
                    mi,
                );
                candidates.push((key, (r.route.name.clone(), rule_i)));
            }
        }
    }
    candidates
        .into_iter()
        .min_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, t)| t)
}

fn unique(names: impl Iterator<Item = String>) -> usize {
    let mut seen: Vec<String> = Vec::new();
    for n in names {
        if !seen.contains(&n) {
            seen.push(n);
        }
    }
    seen.len()
}

fn model_matches(m: &RouteMatch, req: &Req) -> bool {
    let path_ok = match &m.path {
        PathMatch::Exact(p) => req.path == p,
        PathMatch::Prefix(p) => {
            let p = p.trim_end_matches('/');
            p.is_empty() || req.path == p || req.path.starts_with(&format!("{p}/"))
        }
        PathMatch::Grpc { service, method } => {
            let parts: Vec<&str> = req.path.split('/').collect();
            parts.len() == 3
                && parts[0].is_empty()
                && !parts[1].is_empty()
                && !parts[2].is_empty()
                && service.as_deref().is_none_or(|s| s == parts[1])
                && method.as_deref().is_none_or(|m| m == parts[2])
        }
    };
    let mut seen_headers: Vec<String> = Vec::new();
    let headers_ok = m.headers.iter().all(|h| {
        let name = h.name.to_ascii_lowercase();
        if seen_headers.contains(&name) {
            return true;
        }
        seen_headers.push(name.clone());
        req.headers
            .iter()
            .find(|(n, _)| n.to_ascii_lowercase() == name)
            .is_some_and(|(_, v)| *v == h.value)
    });
    let mut seen_query: Vec<&str> = Vec::new();
    let query_ok = m.query_params.iter().all(|q| {
        if seen_query.contains(&q.name.as_str()) {
            return true;
        }
        seen_query.push(&q.name);
        let first = req.query.and_then(|query| {
            query
                .split('&')
                .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
                .find(|(n, _)| *n == q.name)
                .map(|(_, v)| v)
        });
        first == Some(q.value.as_str())
    });
    path_ok && m.method.as_deref().is_none_or(|x| x == req.method) && headers_ok && query_ok
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn table_agrees_with_the_model(routes in routes(), reqs in prop::collection::vec(request(), 1..8)) {
        let table = RouteTable::new(&routes);
        for req in &reqs {
            let headers = HeaderPairs(&req.headers);
            let found = table.find(&RouteRequest {
                host: req.host,
                method: req.method,
                path: req.path,
                query: req.query,
                headers: &headers,
            });
            let got = found.map(|t| (t.route.name.clone(), t.rule_index));
            prop_assert_eq!(got, model(&routes, req), "{:?}", req);
        }
    }

    #[test]
    fn arbitrary_strings_never_panic(
        hostnames in prop::collection::vec(".{0,12}", 0..4),
        path in ".{0,12}",
        path_kind in 0u8..3,
        host in ".{0,12}",
        req_path in ".{0,12}",
        query in prop::option::of(".{0,12}"),
        header in (".{0,6}", ".{0,6}"),
    ) {
        let m = RouteMatch {
            path: match path_kind {
                0 => PathMatch::Exact(path),
                1 => PathMatch::Prefix(path),
                _ => PathMatch::Grpc { service: Some(path.clone()), method: Some(path) },
            },
            method: None,
            headers: vec![HeaderMatch { name: header.0.clone(), value: header.1.clone() }],
            query_params: vec![QueryParamMatch { name: header.0.clone(), value: header.1.clone() }],
        };
        let routes = vec![DesiredRoute {
            route: ObjectRef::new("ns", "r"),
            hostnames,
            rules: vec![DesiredRule { matches: vec![m], filters: RuleFilters::default(), backends: vec![] }],
        }];
        let table = RouteTable::new(&routes);
        let pairs = [(header.0.as_str(), header.1.as_str())];
        let headers = HeaderPairs(&pairs);
        let _ = table.find(&RouteRequest {
            host: &host,
            method: "GET",
            path: &req_path,
            query: query.as_deref(),
            headers: &headers,
        });
    }

    /// Over any whole number of cycles each backend is picked exactly weight times per cycle,
    /// and a zero weight never.
    #[test]
    fn wrr_is_exact_over_cycles(weights in prop::collection::vec(0u32..20, 0..8), cycles in 1usize..4) {
        let wrr = WeightedBackends::new(&weights);
        let mut state = WrrState::default();
        let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
        if total == 0 {
            prop_assert_eq!(wrr.pick(&mut state), None);
            return Ok(());
        }
        let mut counts = vec![0u64; weights.len()];
        for _ in 0..(total as usize * cycles) {
            let i = wrr.pick(&mut state).unwrap();
            counts[i] += 1;
        }
        for (c, w) in counts.iter().zip(&weights) {
            prop_assert_eq!(*c, u64::from(*w) * cycles as u64);
        }
    }

    #[test]
    fn wrr_never_panics_on_huge_weights(weights in prop::collection::vec(any::<u32>(), 0..8), n in 0usize..64) {
        let wrr = WeightedBackends::new(&weights);
        let mut state = WrrState::default();
        for _ in 0..n {
            if let Some(i) = wrr.pick(&mut state) {
                prop_assert!(weights[i] > 0);
            }
        }
    }
}
