//! The per-listener route table: which HTTPRoute or GRPCRoute rule serves a request, and the
//! weighted choice among its backends.
//!
//! Built once per config snapshot from the listener's [`DesiredRoute`]s (in Gateway API
//! tie-break order: oldest first, then `namespace/name`); [`RouteTable::find`] allocates nothing.
//!
//! # Semantics (Gateway API HTTPRoute)
//! 1. **Host first.** Among all route hostnames that match the request host, the most specific
//!    wins: an exact name, then the wildcard with the most labels, then routes without hostnames
//!    (which take every host of the listener). Only the routes carrying that hostname compete in
//!    step 2.
//! 2. **No fall-through.** When no rule of the winning hostname group matches, the answer is "no
//!    route" (404) even if a less specific group would have matched: these are Envoy's
//!    virtual-host semantics, which most Gateway API implementations share, and they keep a
//!    team owning `a.example.com` from getting traffic that leaks out of `*.example.com`'s
//!    routes, and vice versa.
//! 3. **Match precedence** across all rules of the group's routes: an `Exact` path before a
//!    `Prefix`; the longer path (in characters, a prefix's trailing `/` not counted); a method
//!    match; more header matches; more query-parameter matches; then the route's position in the
//!    listener's list, the rule's position in the route, the match's position in the rule.
//!    GRPCRoute matches ([`PathMatch::Grpc`]) rank by the GRPCRoute criteria instead of path
//!    type and length: more characters in the matched service, then in the matched method,
//!    then more header matches, then the same route, rule and match order. Path type and length
//!    come first, so if both kinds shared a hostname HTTPRoute path matches would rank above
//!    gRPC ones; translation never lets them share one (the GRPCRoute/HTTPRoute hostname rule).
//!
//! Matching details:
//! - Paths are compared raw (no percent-decoding or dot-segment normalization: the backend gets
//!   the same raw path that was routed on), case-sensitively. A prefix matches element-wise: `/foo`
//!   matches `/foo`, `/foo/` and `/foo/bar`, not `/foobar`; a trailing `/` in the prefix is
//!   ignored, and `/` matches every path. A rule without matches is one `Prefix /` match.
//! - A gRPC method match takes paths of the form `/<service>/<method>` (both non-empty, the
//!   method without `/`); the service and method given compare exactly (case-sensitively), a
//!   part not given takes any name. `/pkg.Svc/Get?x` is not a gRPC path and matches nothing.
//! - Methods compare exactly (methods are case-sensitive).
//! - Header names compare ASCII case-insensitively, values exactly; the request's first field
//!   line of that name is the one compared (a repeated field is not joined). When one match lists
//!   the same name twice, only the first entry counts (as the API requires).
//! - Query parameters: the raw query is split on `&`, each pair at its first `=` (a pair without
//!   `=` has an empty value); names and values compare exactly, without percent-decoding; the
//!   first occurrence of a name in the request is the one compared. Repeated names in one match:
//!   the first entry counts.
//! - The request host must be normalized (lower case, no port, no trailing dot), as
//!   [`crate::http1::RequestHead::host`] returns it; an empty host matches only routes without
//!   hostnames.

use std::cmp::Ordering;
use std::collections::HashMap;

use crate::desired::{DesiredBackend, DesiredRoute, ObjectRef, PathMatch, RouteMatch};
use crate::filters::RuleFilters;
use crate::hostname;
use crate::http1::{Headers, RequestHead};

/// Read access to the request's header fields, so the caller can hand over a parsed head without
/// building anything.
pub trait HeaderLookup {
    /// The value of the first field named `name` (compare ASCII case-insensitively), with
    /// surrounding whitespace removed.
    fn first_value(&self, name: &str) -> Option<&[u8]>;
}

impl HeaderLookup for Headers<'_> {
    fn first_value(&self, name: &str) -> Option<&[u8]> {
        self.get(name)
    }
}

/// Header pairs as plain strings (tests, synthetic requests).
#[derive(Debug, Clone, Copy)]
pub struct HeaderPairs<'a>(pub &'a [(&'a str, &'a str)]);

impl HeaderLookup for HeaderPairs<'_> {
    fn first_value(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_bytes())
    }
}

/// What routing looks at in a request.
#[derive(Clone, Copy)]
pub struct RouteRequest<'a> {
    /// Normalized host, no port; empty when the request has none.
    pub host: &'a str,
    pub method: &'a str,
    /// The path, without the query.
    pub path: &'a str,
    /// The raw query, without `?`.
    pub query: Option<&'a str>,
    pub headers: &'a dyn HeaderLookup,
}

impl std::fmt::Debug for RouteRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteRequest")
            .field("host", &self.host)
            .field("method", &self.method)
            .field("path", &self.path)
            .field("query", &self.query)
            .finish_non_exhaustive()
    }
}

impl<'a> RouteRequest<'a> {
    /// The routing view of a parsed request head; `headers` is `head.headers(buf)`.
    pub fn from_head(head: &'a RequestHead, buf: &'a [u8], headers: &'a Headers<'a>) -> Self {
        Self {
            host: head.host().unwrap_or_default(),
            method: head.method(buf),
            path: head.path(buf),
            query: head.query(buf),
            headers,
        }
    }
}

/// A rule that a request was routed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTarget {
    pub route: ObjectRef,
    /// The rule's index in the route.
    pub rule_index: usize,
    /// Empty: answer 500 (no backend configured or resolvable, as the API requires).
    pub backends: Vec<DesiredBackend>,
    /// The weighted choice among `backends` (same indices).
    pub weights: WeightedBackends,
    /// The rule's filters (header changes, a redirect).
    pub filters: RuleFilters,
}

/// The rule a request was routed to, and by which match.
#[derive(Debug, Clone, Copy)]
pub struct Routed<'t> {
    /// The target's index in [`RouteTable::targets`].
    pub index: usize,
    pub target: &'t RouteTarget,
    /// The path of the `PathPrefix` match that took the request, without its trailing `/`
    /// (empty for `/`); `None` for an `Exact` or gRPC match. A redirect's
    /// `ReplacePrefixMatch` replaces it.
    pub matched_prefix: Option<&'t str>,
}

/// The route table of one listener.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    targets: Vec<RouteTarget>,
    groups: Vec<Vec<Entry>>,
    /// Exact hostname -> group.
    exact: HashMap<String, usize>,
    /// Wildcard hostnames, most specific first.
    wildcards: Vec<(String, usize)>,
    /// The group of routes without hostnames.
    any: Option<usize>,
}

#[derive(Debug, Clone)]
struct Entry {
    path: PathRule,
    /// Characters of the path (a prefix without its trailing `/`); 0 for gRPC matches.
    path_chars: usize,
    /// Characters of a gRPC match's service and method (0 when not given, and for paths).
    grpc_service_chars: usize,
    grpc_method_chars: usize,
    method: Option<Box<str>>,
    /// Lower-cased names, first entry per name.
    headers: Box<[(Box<str>, Box<str>)]>,
    /// First entry per name.
    query: Box<[(Box<str>, Box<str>)]>,
    route_index: usize,
    rule_index: usize,
    match_index: usize,
    target: usize,
}

#[derive(Debug, Clone)]
enum PathRule {
    Exact(Box<str>),
    /// Without trailing `/`; empty for `/`.
    Prefix(Box<str>),
    Grpc {
        service: Option<Box<str>>,
        method: Option<Box<str>>,
    },
}

impl RouteTable {
    pub fn new(routes: &[DesiredRoute]) -> RouteTable {
        let mut table = RouteTable::default();
        let mut group_of: HashMap<Option<String>, usize> = HashMap::new();
        for (route_index, route) in routes.iter().enumerate() {
            let first_target = table.targets.len();
            for (rule_index, rule) in route.rules.iter().enumerate() {
                table.targets.push(RouteTarget {
                    route: route.route.clone(),
                    rule_index,
                    backends: rule.backends.clone(),
                    weights: WeightedBackends::from_backends(&rule.backends),
                    filters: rule.filters.clone(),
                });
            }
            let mut patterns: Vec<Option<String>> = Vec::new();
            if route.hostnames.is_empty() {
                patterns.push(None);
            }
            for h in &route.hostnames {
                let p = Some(hostname::normalize(h));
                if !patterns.contains(&p) {
                    patterns.push(p);
                }
            }
            for pattern in patterns {
                let next = table.groups.len();
                let g = *group_of.entry(pattern).or_insert(next);
                if g == next {
                    table.groups.push(Vec::new());
                }
                let Some(group) = table.groups.get_mut(g) else {
                    continue;
                };
                for (rule_index, rule) in route.rules.iter().enumerate() {
                    let target = first_target.saturating_add(rule_index);
                    if rule.matches.is_empty() {
                        group.push(Entry::new(
                            &RouteMatch::default(),
                            route_index,
                            rule_index,
                            0,
                            target,
                        ));
                    }
                    for (match_index, m) in rule.matches.iter().enumerate() {
                        group.push(Entry::new(m, route_index, rule_index, match_index, target));
                    }
                }
            }
        }
        for group in &mut table.groups {
            group.sort_by(Entry::precedence);
        }
        for (pattern, g) in group_of {
            match pattern {
                None => table.any = Some(g),
                Some(p) if hostname::is_wildcard(&p) => table.wildcards.push((p, g)),
                Some(p) => {
                    table.exact.insert(p, g);
                }
            }
        }
        table.wildcards.sort_by(|(a, _), (b, _)| {
            hostname::specificity_order(Some(a), Some(b)).then_with(|| a.cmp(b))
        });
        table
    }

    /// The rule serving `req`, or `None` (404).
    pub fn find(&self, req: &RouteRequest<'_>) -> Option<&RouteTarget> {
        self.find_indexed(req).map(|(_, target)| target)
    }

    /// Like [`find`](Self::find), with the target's index in [`targets`](Self::targets), so the
    /// runtime can keep per-target state (weighted round-robin cursors) in a plain `Vec`.
    pub fn find_indexed(&self, req: &RouteRequest<'_>) -> Option<(usize, &RouteTarget)> {
        self.find_routed(req).map(|r| (r.index, r.target))
    }

    /// Like [`find_indexed`](Self::find_indexed), with the match that took the request.
    pub fn find_routed(&self, req: &RouteRequest<'_>) -> Option<Routed<'_>> {
        let group = self
            .exact
            .get(req.host)
            .or_else(|| {
                self.wildcards
                    .iter()
                    .find(|(p, _)| hostname::matches(p, req.host))
                    .map(|(_, g)| g)
            })
            .or(self.any.as_ref())?;
        self.groups
            .get(*group)?
            .iter()
            .find(|e| e.matches(req))
            .and_then(|e| {
                let target = self.targets.get(e.target)?;
                let matched_prefix = match &e.path {
                    PathRule::Prefix(prefix) => Some(&**prefix),
                    PathRule::Exact(_) | PathRule::Grpc { .. } => None,
                };
                Some(Routed {
                    index: e.target,
                    target,
                    matched_prefix,
                })
            })
    }

    /// Every rule of the table, in route then rule order (for per-target state in the runtime).
    pub fn targets(&self) -> &[RouteTarget] {
        &self.targets
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }
}

impl Entry {
    fn new(
        m: &RouteMatch,
        route_index: usize,
        rule_index: usize,
        match_index: usize,
        target: usize,
    ) -> Entry {
        let (path, path_chars) = match &m.path {
            PathMatch::Exact(p) => (PathRule::Exact(p.as_str().into()), p.chars().count()),
            PathMatch::Prefix(p) => {
                let trimmed = p.trim_end_matches('/');
                (PathRule::Prefix(trimmed.into()), trimmed.chars().count())
            }
            PathMatch::Grpc { service, method } => (
                PathRule::Grpc {
                    service: service.as_deref().map(Into::into),
                    method: method.as_deref().map(Into::into),
                },
                0,
            ),
        };
        let chars = |part: &Option<String>| part.as_deref().map_or(0, |p| p.chars().count());
        let (grpc_service_chars, grpc_method_chars) = match &m.path {
            PathMatch::Grpc { service, method } => (chars(service), chars(method)),
            PathMatch::Exact(_) | PathMatch::Prefix(_) => (0, 0),
        };
        let mut headers: Vec<(Box<str>, Box<str>)> = Vec::new();
        for h in &m.headers {
            let name = h.name.to_ascii_lowercase();
            if !headers.iter().any(|(n, _)| **n == *name) {
                headers.push((name.into(), h.value.as_str().into()));
            }
        }
        let mut query: Vec<(Box<str>, Box<str>)> = Vec::new();
        for q in &m.query_params {
            if !query.iter().any(|(n, _)| **n == *q.name) {
                query.push((q.name.as_str().into(), q.value.as_str().into()));
            }
        }
        Entry {
            path,
            path_chars,
            grpc_service_chars,
            grpc_method_chars,
            method: m.method.as_deref().map(Into::into),
            headers: headers.into(),
            query: query.into(),
            route_index,
            rule_index,
            match_index,
            target,
        }
    }

    /// Orders entries from the highest precedence to the lowest.
    fn precedence(a: &Entry, b: &Entry) -> Ordering {
        let exact = |e: &Entry| matches!(e.path, PathRule::Exact(_));
        exact(b)
            .cmp(&exact(a))
            .then_with(|| b.path_chars.cmp(&a.path_chars))
            .then_with(|| b.grpc_service_chars.cmp(&a.grpc_service_chars))
            .then_with(|| b.grpc_method_chars.cmp(&a.grpc_method_chars))
            .then_with(|| b.method.is_some().cmp(&a.method.is_some()))
            .then_with(|| b.headers.len().cmp(&a.headers.len()))
            .then_with(|| b.query.len().cmp(&a.query.len()))
            .then_with(|| a.route_index.cmp(&b.route_index))
            .then_with(|| a.rule_index.cmp(&b.rule_index))
            .then_with(|| a.match_index.cmp(&b.match_index))
    }

    fn matches(&self, req: &RouteRequest<'_>) -> bool {
        let path_ok = match &self.path {
            PathRule::Exact(p) => req.path == &**p,
            PathRule::Prefix(p) => req
                .path
                .strip_prefix(&**p)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || p.is_empty()),
            PathRule::Grpc { service, method } => {
                grpc_path_matches(req.path, service.as_deref(), method.as_deref())
            }
        };
        path_ok
            && self.method.as_deref().is_none_or(|m| m == req.method)
            && self
                .headers
                .iter()
                .all(|(name, value)| req.headers.first_value(name) == Some(value.as_bytes()))
            && self
                .query
                .iter()
                .all(|(name, value)| query_value(req.query, name) == Some(&**value))
    }
}

/// Whether `path` is `/<service>/<method>` with the given parts (`None`: any).
fn grpc_path_matches(path: &str, service: Option<&str>, method: Option<&str>) -> bool {
    let Some((s, m)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
        return false;
    };
    !s.is_empty()
        && !m.is_empty()
        && !m.contains('/')
        && service.is_none_or(|want| want == s)
        && method.is_none_or(|want| want == m)
}

/// The value of the first `name` parameter in a raw query.
fn query_value<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?.split('&').find_map(|pair| {
        let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
        (n == name).then_some(v)
    })
}

/// Smooth weighted round-robin over a rule's backends (nginx's algorithm): over every cycle of
/// `total weight` picks each backend is chosen exactly `weight` times, and the picks are spread
/// out (weights 5, 1, 1 give a a b a c a a). Weight 0 is never picked.
///
/// The table holds the weights; the mutable [`WrrState`] lives in the runtime, one per shard and
/// target, so nothing is shared between cores.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WeightedBackends {
    weights: Box<[u32]>,
    total: u64,
}

/// The running state of one [`WeightedBackends`] picker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WrrState {
    current: Vec<i64>,
}

impl WeightedBackends {
    pub fn new(weights: &[u32]) -> Self {
        Self {
            weights: weights.into(),
            total: weights.iter().map(|w| u64::from(*w)).sum(),
        }
    }

    pub fn from_backends(backends: &[DesiredBackend]) -> Self {
        let weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
        Self::new(&weights)
    }

    pub fn len(&self) -> usize {
        self.weights.len()
    }

    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }

    pub fn total_weight(&self) -> u64 {
        self.total
    }

    /// The index of the next backend, or `None` when every weight is zero (or there are none).
    /// A state from a different picker (another length) is reset first.
    pub fn pick(&self, state: &mut WrrState) -> Option<usize> {
        if self.total == 0 {
            return None;
        }
        if state.current.len() != self.weights.len() {
            state.current.clear();
            state.current.resize(self.weights.len(), 0);
        }
        let total = i64::try_from(self.total).unwrap_or(i64::MAX);
        let mut best: Option<(usize, i64)> = None;
        for (i, (w, cur)) in self
            .weights
            .iter()
            .zip(state.current.iter_mut())
            .enumerate()
        {
            if *w == 0 {
                continue;
            }
            *cur = cur.saturating_add(i64::from(*w));
            if best.is_none_or(|(_, b)| *cur > b) {
                best = Some((i, *cur));
            }
        }
        let (i, _) = best?;
        if let Some(cur) = state.current.get_mut(i) {
            *cur = cur.saturating_sub(total);
        }
        Some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{
        BackendProtocol, BackendTarget, DesiredRule, HeaderMatch, QueryParamMatch,
    };

    fn backend(name: &str, weight: u32) -> DesiredBackend {
        DesiredBackend {
            name: name.to_owned(),
            weight,
            protocol: BackendProtocol::Http1,
            target: BackendTarget::Endpoints(Vec::new()),
        }
    }

    fn rule(matches: Vec<RouteMatch>, backend_name: &str) -> DesiredRule {
        DesiredRule {
            matches,
            filters: RuleFilters::default(),
            backends: vec![backend(backend_name, 1)],
        }
    }

    fn route(name: &str, hostnames: &[&str], rules: Vec<DesiredRule>) -> DesiredRoute {
        DesiredRoute {
            route: ObjectRef::new("ns", name),
            hostnames: hostnames.iter().map(|h| (*h).to_owned()).collect(),
            rules,
        }
    }

    fn prefix(p: &str) -> RouteMatch {
        RouteMatch {
            path: PathMatch::Prefix(p.to_owned()),
            ..RouteMatch::default()
        }
    }

    fn exact(p: &str) -> RouteMatch {
        RouteMatch {
            path: PathMatch::Exact(p.to_owned()),
            ..RouteMatch::default()
        }
    }

    fn grpc(service: Option<&str>, method: Option<&str>) -> RouteMatch {
        RouteMatch {
            path: PathMatch::Grpc {
                service: service.map(str::to_owned),
                method: method.map(str::to_owned),
            },
            ..RouteMatch::default()
        }
    }

    fn with_method(mut m: RouteMatch, method: &str) -> RouteMatch {
        m.method = Some(method.to_owned());
        m
    }

    fn with_header(mut m: RouteMatch, name: &str, value: &str) -> RouteMatch {
        m.headers.push(HeaderMatch {
            name: name.to_owned(),
            value: value.to_owned(),
        });
        m
    }

    fn with_query(mut m: RouteMatch, name: &str, value: &str) -> RouteMatch {
        m.query_params.push(QueryParamMatch {
            name: name.to_owned(),
            value: value.to_owned(),
        });
        m
    }

    /// The backend name of the rule routed to.
    fn route_to(
        table: &RouteTable,
        host: &str,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
    ) -> Option<String> {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let headers = HeaderPairs(headers);
        let req = RouteRequest {
            host,
            method,
            path,
            query,
            headers: &headers,
        };
        table.find(&req).map(|t| {
            t.backends
                .first()
                .map(|b| b.name.clone())
                .unwrap_or_default()
        })
    }

    fn get(table: &RouteTable, host: &str, target: &str) -> Option<String> {
        route_to(table, host, "GET", target, &[])
    }

    #[test]
    fn prefix_matching_is_element_wise() {
        let table = RouteTable::new(&[route(
            "r",
            &[],
            vec![
                rule(vec![prefix("/foo")], "foo"),
                rule(vec![prefix("/bar/")], "bar"),
            ],
        )]);
        assert_eq!(get(&table, "a", "/foo").as_deref(), Some("foo"));
        assert_eq!(get(&table, "a", "/foo/").as_deref(), Some("foo"));
        assert_eq!(get(&table, "a", "/foo/x/y").as_deref(), Some("foo"));
        assert_eq!(get(&table, "a", "/foobar"), None);
        assert_eq!(get(&table, "a", "/Foo"), None);
        assert_eq!(get(&table, "a", "/bar").as_deref(), Some("bar"));
        assert_eq!(get(&table, "a", "/bar/x").as_deref(), Some("bar"));
        assert_eq!(get(&table, "a", "/barx"), None);
        assert_eq!(get(&table, "a", "/"), None);
    }

    #[test]
    fn root_prefix_and_empty_matches_take_everything() {
        for rules in [
            vec![rule(vec![prefix("/")], "all")],
            vec![rule(vec![], "all")],
        ] {
            let table = RouteTable::new(&[route("r", &[], rules)]);
            for target in ["/", "/x", "/x/y?z=1", "*"] {
                assert_eq!(get(&table, "h", target).as_deref(), Some("all"), "{target}");
            }
        }
    }

    #[test]
    fn exact_matching() {
        let table = RouteTable::new(&[route("r", &[], vec![rule(vec![exact("/a/b")], "x")])]);
        assert_eq!(get(&table, "h", "/a/b?q").as_deref(), Some("x"));
        assert_eq!(get(&table, "h", "/a/b/"), None);
        assert_eq!(get(&table, "h", "/a"), None);
        assert_eq!(get(&table, "h", "/a/bc"), None);
    }

    #[test]
    fn exact_beats_prefix_whatever_the_order() {
        let table = RouteTable::new(&[
            route("old", &[], vec![rule(vec![prefix("/a/b")], "prefix")]),
            route("new", &[], vec![rule(vec![exact("/a/b")], "exact")]),
        ]);
        assert_eq!(get(&table, "h", "/a/b").as_deref(), Some("exact"));
        assert_eq!(get(&table, "h", "/a/b/c").as_deref(), Some("prefix"));
    }

    #[test]
    fn longest_prefix_wins() {
        let table = RouteTable::new(&[route(
            "r",
            &[],
            vec![
                rule(vec![prefix("/")], "root"),
                rule(vec![prefix("/a")], "a"),
                rule(vec![prefix("/a/b/")], "ab"),
            ],
        )]);
        assert_eq!(get(&table, "h", "/a/b/c").as_deref(), Some("ab"));
        assert_eq!(get(&table, "h", "/a/bc").as_deref(), Some("a"));
        assert_eq!(get(&table, "h", "/b").as_deref(), Some("root"));
        // Length is counted in characters, not bytes.
        let table = RouteTable::new(&[route(
            "r",
            &[],
            vec![
                rule(vec![prefix("/éé")], "two"),
                rule(vec![prefix("/abc")], "three"),
            ],
        )]);
        let entries = table.groups.first().unwrap();
        assert_eq!(entries.first().unwrap().path_chars, 4);
    }

    #[test]
    fn method_match_beats_none() {
        let table = RouteTable::new(&[route(
            "r",
            &[],
            vec![
                rule(vec![prefix("/a")], "any"),
                rule(vec![with_method(prefix("/a"), "POST")], "post"),
            ],
        )]);
        assert_eq!(
            route_to(&table, "h", "POST", "/a", &[]).as_deref(),
            Some("post")
        );
        assert_eq!(
            route_to(&table, "h", "GET", "/a", &[]).as_deref(),
            Some("any")
        );
        assert_eq!(
            route_to(&table, "h", "post", "/a", &[]).as_deref(),
            Some("any")
        );
    }

    #[test]
    fn more_headers_beat_fewer() {
        let one = with_header(prefix("/"), "X-A", "1");
        let two = with_header(with_header(prefix("/"), "x-a", "1"), "X-B", "2");
        let table = RouteTable::new(&[route(
            "r",
            &[],
            vec![
                rule(vec![prefix("/")], "none"),
                rule(vec![one], "one"),
                rule(vec![two], "two"),
            ],
        )]);
        let req = |h: &[(&str, &str)]| route_to(&table, "h", "GET", "/", h);
        assert_eq!(req(&[("x-a", "1"), ("X-b", "2")]).as_deref(), Some("two"));
        assert_eq!(req(&[("X-A", "1")]).as_deref(), Some("one"));
        assert_eq!(req(&[("X-A", "2")]).as_deref(), Some("none"));
        // Values are exact.
        assert_eq!(req(&[("X-A", "1 ")]).as_deref(), Some("none"));
        // The first field line of a name is the one compared.
        assert_eq!(req(&[("X-A", "0"), ("X-A", "1")]).as_deref(), Some("none"));
    }

    #[test]
    fn more_query_params_beat_fewer() {
        let one = with_query(prefix("/"), "a", "1");
        let two = with_query(with_query(prefix("/"), "a", "1"), "b", "2");
        let table = RouteTable::new(&[route(
            "r",
            &[],
            vec![
                rule(vec![prefix("/")], "none"),
                rule(vec![one], "one"),
                rule(vec![two], "two"),
            ],
        )]);
        assert_eq!(get(&table, "h", "/?b=2&a=1").as_deref(), Some("two"));
        assert_eq!(get(&table, "h", "/?a=1").as_deref(), Some("one"));
        assert_eq!(get(&table, "h", "/?A=1").as_deref(), Some("none"));
        assert_eq!(get(&table, "h", "/?a=1%20").as_deref(), Some("none"));
        assert_eq!(get(&table, "h", "/?a=2&a=1").as_deref(), Some("none"));
        assert_eq!(get(&table, "h", "/?x&a=1&b=2=3").as_deref(), Some("one"));
        assert_eq!(get(&table, "h", "/").as_deref(), Some("none"));
    }

    #[test]
    fn criteria_apply_in_order() {
        // Path length beats method; method beats headers; headers beat query params.
        let table = RouteTable::new(&[route(
            "r",
            &[],
            vec![
                rule(vec![with_method(prefix("/a"), "GET")], "method"),
                rule(vec![prefix("/a/b")], "longer"),
                rule(
                    vec![with_query(
                        with_query(with_header(prefix("/a"), "h", "1"), "q", "1"),
                        "r",
                        "1",
                    )],
                    "header",
                ),
                rule(
                    vec![with_header(with_method(prefix("/a"), "GET"), "h", "1")],
                    "method+header",
                ),
                rule(
                    vec![with_query(with_query(prefix("/a"), "q", "1"), "r", "1")],
                    "query",
                ),
            ],
        )]);
        let req = |target, h: &[(&str, &str)]| route_to(&table, "h", "GET", target, h);
        assert_eq!(req("/a/b", &[("h", "1")]).as_deref(), Some("longer"));
        assert_eq!(req("/a", &[("h", "1")]).as_deref(), Some("method+header"));
        assert_eq!(req("/a", &[]).as_deref(), Some("method"));
        assert_eq!(
            route_to(&table, "h", "PUT", "/a?q=1&r=1", &[("h", "1")]).as_deref(),
            Some("header")
        );
        assert_eq!(
            route_to(&table, "h", "PUT", "/a?q=1&r=1", &[]).as_deref(),
            Some("query")
        );
    }

    #[test]
    fn ties_go_to_route_then_rule_then_match_order() {
        let table = RouteTable::new(&[
            route(
                "first",
                &[],
                vec![
                    rule(vec![prefix("/x")], "first-0"),
                    rule(vec![prefix("/x")], "first-1"),
                ],
            ),
            route("second", &[], vec![rule(vec![prefix("/x")], "second")]),
        ]);
        assert_eq!(get(&table, "h", "/x").as_deref(), Some("first-0"));
        let t = RouteTable::new(&[route(
            "r",
            &[],
            vec![
                rule(vec![prefix("/y"), prefix("/x")], "r0"),
                rule(vec![prefix("/x")], "r1"),
            ],
        )]);
        let found = t
            .find(&RouteRequest {
                host: "h",
                method: "GET",
                path: "/x",
                query: None,
                headers: &HeaderPairs(&[]),
            })
            .unwrap();
        assert_eq!(found.rule_index, 0);
        assert_eq!(found.route, ObjectRef::new("ns", "r"));
    }

    #[test]
    fn grpc_matches_take_service_and_method_paths() {
        let table = RouteTable::new(&[route(
            "r",
            &[],
            vec![
                rule(vec![grpc(Some("pkg.Echo"), Some("Say"))], "both"),
                rule(vec![grpc(Some("pkg.Other"), None)], "service"),
                rule(vec![grpc(None, Some("Ping"))], "method"),
            ],
        )]);
        let post = |path| route_to(&table, "h", "POST", path, &[]);
        assert_eq!(post("/pkg.Echo/Say").as_deref(), Some("both"));
        assert_eq!(post("/pkg.Echo/Shout"), None);
        assert_eq!(post("/pkg.Other/Say").as_deref(), Some("service"));
        assert_eq!(post("/pkg.Other/Anything").as_deref(), Some("service"));
        assert_eq!(post("/pkg.Echo/Ping").as_deref(), Some("method"));
        assert_eq!(post("/x.Y/Ping").as_deref(), Some("method"));
        // Only `/<service>/<method>` is a gRPC path; names compare exactly.
        for not_grpc in [
            "/pkg.Other",
            "/pkg.Other/",
            "/pkg.Other/A/B",
            "//Ping",
            "/Ping",
            "/pkg.echo/Say",
            "/pkg.Echo/say",
            "pkg.Echo/Say",
            "/",
        ] {
            assert_eq!(post(not_grpc), None, "{not_grpc}");
        }
    }

    #[test]
    fn grpc_precedence_is_service_then_method_characters_then_headers() {
        let table = RouteTable::new(&[
            route(
                "old",
                &[],
                vec![
                    rule(vec![], "default"),
                    rule(vec![with_header(prefix("/"), "x-a", "1")], "header-only"),
                    rule(vec![grpc(None, Some("AVeryLongMethodName"))], "method"),
                    rule(vec![grpc(Some("a.Svc"), None)], "service"),
                    rule(vec![grpc(Some("a.Svc"), Some("Get"))], "service+method"),
                ],
            ),
            route(
                "new",
                &[],
                vec![
                    rule(vec![grpc(Some("a.Svc"), Some("Put"))], "new-put"),
                    rule(
                        vec![with_header(grpc(Some("a.Svc"), Some("Get")), "x-a", "1")],
                        "service+method+header",
                    ),
                    rule(vec![grpc(Some("a.Svc"), Some("Put"))], "new-put-again"),
                ],
            ),
            route(
                "newer",
                &[],
                vec![rule(vec![grpc(Some("a.Svc"), Some("Put"))], "newer-put")],
            ),
        ]);
        let req = |path, h: &[(&str, &str)]| route_to(&table, "h", "POST", path, h);
        // More service characters beat more method characters.
        assert_eq!(
            req("/a.Svc/AVeryLongMethodName", &[]).as_deref(),
            Some("service")
        );
        assert_eq!(
            req("/b.Svc/AVeryLongMethodName", &[]).as_deref(),
            Some("method")
        );
        // Same service: the method match wins; then header matches.
        assert_eq!(req("/a.Svc/Get", &[]).as_deref(), Some("service+method"));
        assert_eq!(
            req("/a.Svc/Get", &[("x-a", "1")]).as_deref(),
            Some("service+method+header")
        );
        assert_eq!(req("/a.Svc/Other", &[]).as_deref(), Some("service"));
        // A header-only match (no method) ranks below any service or method match.
        assert_eq!(
            req("/a.Svc/Other", &[("x-a", "1")]).as_deref(),
            Some("service")
        );
        assert_eq!(
            req("/b.Svc/Other", &[("x-a", "1")]).as_deref(),
            Some("header-only")
        );
        assert_eq!(req("/b.Svc/Other", &[]).as_deref(), Some("default"));
        // Ties: the route first in the listener's order, then the rule first in the route.
        assert_eq!(req("/a.Svc/Put", &[]).as_deref(), Some("new-put"));
    }

    #[test]
    fn hostname_specificity() {
        let table = RouteTable::new(&[
            route("any", &[], vec![rule(vec![], "any")]),
            route("wide", &["*.example.com"], vec![rule(vec![], "wide")]),
            route("narrow", &["*.a.example.com"], vec![rule(vec![], "narrow")]),
            route(
                "exact",
                &["b.a.example.com", "Other.Example."],
                vec![rule(vec![], "exact")],
            ),
        ]);
        assert_eq!(
            get(&table, "b.a.example.com", "/").as_deref(),
            Some("exact")
        );
        assert_eq!(get(&table, "other.example", "/").as_deref(), Some("exact"));
        assert_eq!(
            get(&table, "c.a.example.com", "/").as_deref(),
            Some("narrow")
        );
        assert_eq!(
            get(&table, "x.y.a.example.com", "/").as_deref(),
            Some("narrow")
        );
        assert_eq!(get(&table, "a.example.com", "/").as_deref(), Some("wide"));
        assert_eq!(get(&table, "example.com", "/").as_deref(), Some("any"));
        assert_eq!(get(&table, "", "/").as_deref(), Some("any"));
        let no_any = RouteTable::new(&[route(
            "wide",
            &["*.example.com"],
            vec![rule(vec![], "wide")],
        )]);
        assert_eq!(get(&no_any, "example.com", "/"), None);
        assert_eq!(get(&no_any, "", "/"), None);
    }

    #[test]
    fn no_fall_through_to_a_less_specific_hostname() {
        let table = RouteTable::new(&[
            route("any", &[], vec![rule(vec![prefix("/")], "any")]),
            route(
                "wide",
                &["*.example.com"],
                vec![rule(vec![prefix("/")], "wide")],
            ),
            route(
                "exact",
                &["a.example.com"],
                vec![rule(vec![prefix("/api")], "exact")],
            ),
        ]);
        assert_eq!(
            get(&table, "a.example.com", "/api/x").as_deref(),
            Some("exact")
        );
        assert_eq!(get(&table, "a.example.com", "/other"), None);
        assert_eq!(
            get(&table, "b.example.com", "/other").as_deref(),
            Some("wide")
        );
    }

    #[test]
    fn routes_sharing_a_hostname_compete_together() {
        let table = RouteTable::new(&[
            route("r1", &["a.com"], vec![rule(vec![prefix("/")], "r1")]),
            route(
                "r2",
                &["b.com", "a.com"],
                vec![rule(vec![prefix("/x")], "r2")],
            ),
        ]);
        assert_eq!(get(&table, "a.com", "/x").as_deref(), Some("r2"));
        assert_eq!(get(&table, "a.com", "/y").as_deref(), Some("r1"));
        assert_eq!(get(&table, "b.com", "/y"), None);
    }

    #[test]
    fn the_match_that_took_the_request_is_told() {
        let table = RouteTable::new(&[route(
            "r",
            &[],
            vec![rule(vec![exact("/e"), prefix("/p/"), prefix("/")], "x")],
        )]);
        let matched = |path: &str| {
            let headers = HeaderPairs(&[]);
            let request = RouteRequest {
                host: "h",
                method: "GET",
                path,
                query: None,
                headers: &headers,
            };
            table.find_routed(&request).map(|r| r.matched_prefix)
        };
        assert_eq!(matched("/e"), Some(None));
        assert_eq!(matched("/p/x"), Some(Some("/p")));
        assert_eq!(matched("/p"), Some(Some("/p")));
        assert_eq!(matched("/other"), Some(Some("")));
    }

    #[test]
    fn duplicate_match_entries_only_first_counts() {
        let m = with_header(with_header(prefix("/"), "X-A", "1"), "x-a", "2");
        let q = with_query(with_query(prefix("/q"), "a", "1"), "a", "2");
        let table = RouteTable::new(&[route("r", &[], vec![rule(vec![m, q], "x")])]);
        assert_eq!(
            route_to(&table, "h", "GET", "/", &[("x-a", "1")]).as_deref(),
            Some("x")
        );
        assert_eq!(route_to(&table, "h", "GET", "/", &[("x-a", "2")]), None);
        assert_eq!(get(&table, "h", "/q?a=1").as_deref(), Some("x"));
    }

    #[test]
    fn empty_table_and_rules_without_backends() {
        assert_eq!(get(&RouteTable::new(&[]), "h", "/"), None);
        let table = RouteTable::new(&[route(
            "r",
            &[],
            vec![DesiredRule {
                matches: vec![],
                filters: RuleFilters::default(),
                backends: vec![],
            }],
        )]);
        let headers = HeaderPairs(&[]);
        let t = table
            .find(&RouteRequest {
                host: "h",
                method: "GET",
                path: "/",
                query: None,
                headers: &headers,
            })
            .unwrap();
        assert!(t.backends.is_empty());
        assert_eq!(t.weights.pick(&mut WrrState::default()), None);
        assert_eq!(table.targets().len(), 1);
    }

    #[test]
    fn from_a_parsed_head() {
        use crate::http1::{HeadLimits, parse_request_head};
        let table = RouteTable::new(&[route(
            "r",
            &["api.example.com"],
            vec![rule(
                vec![with_query(
                    with_header(with_method(prefix("/v1"), "POST"), "X-Env", "prod"),
                    "k",
                    "v",
                )],
                "api",
            )],
        )]);
        let buf =
            b"POST /v1/items?k=v HTTP/1.1\r\nHost: API.example.com:8443\r\nx-env: prod\r\n\r\n";
        let head = parse_request_head(buf, &HeadLimits::default())
            .unwrap()
            .unwrap();
        let headers = head.headers(buf);
        let req = RouteRequest::from_head(&head, buf, &headers);
        let found = table.find(&req).unwrap();
        assert_eq!(found.backends.first().unwrap().name, "api");
    }

    fn sequence(weights: &[u32], n: usize) -> Vec<Option<usize>> {
        let wrr = WeightedBackends::new(weights);
        let mut state = WrrState::default();
        (0..n).map(|_| wrr.pick(&mut state)).collect()
    }

    #[test]
    fn smooth_wrr_sequence() {
        let got: String = sequence(&[5, 1, 1], 14)
            .into_iter()
            .map(|i| char::from(b'a' + u8::try_from(i.unwrap()).unwrap()))
            .collect();
        assert_eq!(got, "aabacaaaabacaa");
    }

    #[test]
    fn wrr_distribution_is_exact_over_a_cycle() {
        for weights in [
            &[1u32, 1, 1][..],
            &[3, 0, 2],
            &[0, 7],
            &[10, 1],
            &[2, 3, 5, 0, 1],
        ] {
            let total: u32 = weights.iter().sum();
            let picks = sequence(weights, usize::try_from(total * 3).unwrap());
            for (i, w) in weights.iter().enumerate() {
                let count = picks.iter().filter(|p| **p == Some(i)).count();
                assert_eq!(count, usize::try_from(w * 3).unwrap(), "{weights:?} {i}");
            }
        }
    }

    #[test]
    fn wrr_edge_cases() {
        assert_eq!(sequence(&[], 2), vec![None, None]);
        assert_eq!(sequence(&[0, 0], 2), vec![None, None]);
        assert_eq!(sequence(&[0, 1], 3), vec![Some(1); 3]);
        assert_eq!(sequence(&[u32::MAX, u32::MAX, 1], 4).len(), 4);
        // A state from another picker is reset, not misused.
        let mut state = WrrState::default();
        WeightedBackends::new(&[1, 2, 3, 4]).pick(&mut state);
        assert_eq!(WeightedBackends::new(&[0, 1]).pick(&mut state), Some(1));
    }
}
