//! HTTPRoute and GRPCRoute rules to desired rules: matches, backends resolved through Services
//! to the ready endpoints of their EndpointSlices.
//!
//! What Portcullis does not implement is refused, not ignored, when ignoring it would change
//! what a request gets: the filters it does not implement (rewrites, mirrors..., see
//! [`super::filters`]; every GRPCRoute filter) and `RegularExpression` matches make the route
//! `Accepted=False, reason UnsupportedValue` on every parent. `timeouts`, `retry` and
//! `sessionPersistence` are best-effort knobs and are ignored.
//!
//! GRPCRoute: a method match becomes [`PathMatch::Grpc`] (service and/or method, `Exact`); a
//! match without one takes every request, as the API's default. Every backend of a GRPCRoute
//! is spoken to in h2c whatever its Service port's `appProtocol`: gRPC needs HTTP/2, and a
//! GRPCRoute's backendRef says the backend speaks gRPC.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use gateway_api::experimental::grpcroutes::{
    GrpcRouteRules, GrpcRouteRulesBackendRefs, GrpcRouteRulesMatches,
    GrpcRouteRulesMatchesHeadersType, GrpcRouteRulesMatchesMethodType,
};
use gateway_api::experimental::httproutes::{
    HttpRouteRules, HttpRouteRulesBackendRefs, HttpRouteRulesMatches,
    HttpRouteRulesMatchesHeadersType, HttpRouteRulesMatchesMethod, HttpRouteRulesMatchesPathType,
    HttpRouteRulesMatchesQueryParamsType,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use portcullis_core::desired::{
    BackendProtocol, BackendTarget, DesiredBackend, DesiredRule, HeaderMatch, ObjectRef, PathMatch,
    QueryParamMatch, RouteMatch,
};
use portcullis_core::filters::{RedirectPath, RuleFilters};
use portcullis_core::hostname;

use super::conditions::{Problem, reasons};
use super::filters::convert_filters;
use super::matching::is_valid_hostname;
use super::refs::{CORE_GROUP, GATEWAY_GROUP, Referent, Referrer, describe, require_grant};
use crate::store::ObjectStore;

/// The label that ties an EndpointSlice to its Service.
pub(crate) const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A backendRef's weight when it names none.
const DEFAULT_BACKEND_WEIGHT: u32 = 1;

/// The route kinds Portcullis serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum RouteKind {
    Http,
    Grpc,
}

impl RouteKind {
    /// The Kubernetes `kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
        }
    }
}

/// One backendRef of either route kind (the API's `BackendRef` fields that matter here).
#[derive(Debug, Clone, Copy)]
struct BackendRef<'a> {
    group: Option<&'a str>,
    kind: Option<&'a str>,
    namespace: Option<&'a str>,
    name: &'a str,
    port: Option<i32>,
    weight: Option<i32>,
    /// backendRef-level filters are not implemented: the route is refused for them.
    has_filters: bool,
}

impl<'a> From<&'a HttpRouteRulesBackendRefs> for BackendRef<'a> {
    fn from(r: &'a HttpRouteRulesBackendRefs) -> Self {
        Self {
            group: r.group.as_deref(),
            kind: r.kind.as_deref(),
            namespace: r.namespace.as_deref(),
            name: &r.name,
            port: r.port,
            weight: r.weight,
            has_filters: r.filters.as_ref().is_some_and(|f| !f.is_empty()),
        }
    }
}

impl<'a> From<&'a GrpcRouteRulesBackendRefs> for BackendRef<'a> {
    fn from(r: &'a GrpcRouteRulesBackendRefs) -> Self {
        Self {
            group: r.group.as_deref(),
            kind: r.kind.as_deref(),
            namespace: r.namespace.as_deref(),
            name: &r.name,
            port: r.port,
            weight: r.weight,
            has_filters: r.filters.as_ref().is_some_and(|f| !f.is_empty()),
        }
    }
}

/// EndpointSlices by the Service they belong to.
pub(crate) type SlicesByService<'s> = BTreeMap<ObjectRef, Vec<&'s EndpointSlice>>;

pub(crate) fn index_endpoint_slices(store: &ObjectStore) -> SlicesByService<'_> {
    let mut index: SlicesByService<'_> = BTreeMap::new();
    for (key, slice) in &store.endpoint_slices {
        let service = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL));
        if let Some(service) = service {
            index
                .entry(ObjectRef::new(key.namespace.clone(), service.clone()))
                .or_default()
                .push(slice);
        }
    }
    index
}

/// Everything about a route that does not depend on which listener it attaches to.
#[derive(Debug)]
pub(crate) struct PreparedRoute {
    /// Valid, normalized `spec.hostnames`.
    pub hostnames: Vec<String>,
    pub rules: Vec<DesiredRule>,
    /// Features Portcullis does not implement: `Accepted=False, reason UnsupportedValue`.
    pub unsupported: Vec<Problem>,
    /// backendRefs that did not resolve: `ResolvedRefs=False`.
    pub unresolved: Vec<Problem>,
}

/// A route of either kind: its valid hostnames, then each rule (see [`prepare_rule`]).
pub(crate) fn prepare_route<'a>(
    store: &ObjectStore,
    slices: &SlicesByService<'_>,
    route_kind: RouteKind,
    key: &ObjectRef,
    hostnames: Option<&[String]>,
    rules: impl Iterator<Item = RuleParts<'a>>,
) -> PreparedRoute {
    let mut prepared = prepared_hostnames(hostnames);
    for (rule_index, rule) in rules.enumerate() {
        let rule = prepare_rule(
            store,
            slices,
            route_kind,
            key,
            rule_index,
            rule,
            &mut prepared,
        );
        prepared.rules.push(rule);
    }
    prepared
}

/// A prepared route with its valid `spec.hostnames` and no rules yet.
fn prepared_hostnames(hostnames: Option<&[String]>) -> PreparedRoute {
    let mut prepared = PreparedRoute {
        hostnames: Vec::new(),
        rules: Vec::new(),
        unsupported: Vec::new(),
        unresolved: Vec::new(),
    };
    for raw in hostnames.into_iter().flatten() {
        let name = hostname::normalize(raw);
        if is_valid_hostname(&name) {
            if !prepared.hostnames.contains(&name) {
                prepared.hostnames.push(name);
            }
        } else {
            prepared.unsupported.push(Problem::new(
                reasons::UNSUPPORTED_VALUE,
                format!("hostname {raw:?} is not a valid DNS name or wildcard"),
            ));
        }
    }
    prepared
}

/// What a rule of either kind says, read into the parts both kinds share.
pub(crate) struct RuleParts<'a> {
    filters: RuleFilters,
    /// Why filters cannot be honoured (each a field suffix and message).
    filter_problems: Vec<String>,
    /// Each match, converted, or why it cannot be honoured (a field suffix and message).
    matches: Vec<Result<RouteMatch, String>>,
    backend_refs: Vec<BackendRef<'a>>,
}

impl<'a> From<&'a HttpRouteRules> for RuleParts<'a> {
    fn from(rule: &'a HttpRouteRules) -> Self {
        let (filters, filter_problems) = convert_filters(rule.filters.as_deref().unwrap_or(&[]));
        Self {
            filters,
            filter_problems,
            matches: rule.matches.iter().flatten().map(convert_match).collect(),
            backend_refs: rule.backend_refs.iter().flatten().map(Into::into).collect(),
        }
    }
}

impl<'a> From<&'a GrpcRouteRules> for RuleParts<'a> {
    fn from(rule: &'a GrpcRouteRules) -> Self {
        Self {
            filters: RuleFilters::default(),
            filter_problems: (rule.filters.iter().flatten())
                .map(|f| format!(".filters: filter type {:?} is not supported", f.r#type))
                .collect(),
            matches: (rule.matches.iter().flatten())
                .map(convert_grpc_match)
                .collect(),
            backend_refs: rule.backend_refs.iter().flatten().map(Into::into).collect(),
        }
    }
}

/// One rule of either kind: what it uses that is not implemented goes to `unsupported`, its
/// backendRefs that do not resolve to `unresolved`.
fn prepare_rule(
    store: &ObjectStore,
    slices: &SlicesByService<'_>,
    route_kind: RouteKind,
    key: &ObjectRef,
    rule_index: usize,
    rule: RuleParts<'_>,
    prepared: &mut PreparedRoute,
) -> DesiredRule {
    let at = format!("rules[{rule_index}]");
    let unsupported = |message: String| Problem::new(reasons::UNSUPPORTED_VALUE, message);
    for problem in rule.filter_problems {
        prepared
            .unsupported
            .push(unsupported(format!("{at}{problem}")));
    }
    let mut matches = Vec::new();
    for (match_index, m) in rule.matches.into_iter().enumerate() {
        match m {
            Ok(converted) => matches.push(converted),
            Err(message) => prepared
                .unsupported
                .push(unsupported(format!("{at}.matches[{match_index}]{message}"))),
        }
    }
    if let Some(redirect) = &rule.filters.redirect {
        // The API's rules (CEL in the CRD; a manifest folder has no API server to apply them).
        if !rule.backend_refs.is_empty() {
            prepared.unsupported.push(unsupported(format!(
                "{at}: a RequestRedirect filter cannot be used together with backendRefs"
            )));
        }
        // No matches is the API's one default `PathPrefix /` match.
        if matches!(redirect.path, Some(RedirectPath::ReplacePrefixMatch(_)))
            && (matches.len() > 1
                || matches
                    .iter()
                    .any(|m| !matches!(m.path, PathMatch::Prefix(_))))
        {
            prepared.unsupported.push(unsupported(format!(
                "{at}: a ReplacePrefixMatch redirect needs exactly one match, of type PathPrefix"
            )));
        }
    }
    let mut backends = Vec::new();
    for (backend_index, backend_ref) in rule.backend_refs.into_iter().enumerate() {
        if backend_ref.has_filters {
            prepared.unsupported.push(unsupported(format!(
                "{at}.backendRefs[{backend_index}].filters are not supported"
            )));
        }
        let (backend, problem) =
            resolve_backend(store, slices, route_kind, &key.namespace, backend_ref);
        if let Some(problem) = problem {
            prepared.unresolved.push(problem);
        }
        backends.push(backend);
    }
    DesiredRule {
        matches,
        filters: rule.filters,
        backends,
    }
}

/// One GRPCRoute match, or the reason (as a field suffix and message) it cannot be honoured.
fn convert_grpc_match(m: &GrpcRouteRulesMatches) -> Result<RouteMatch, String> {
    let mut converted = RouteMatch::default();
    if let Some(method) = &m.method {
        if method.r#type == Some(GrpcRouteRulesMatchesMethodType::RegularExpression) {
            return Err(".method: type RegularExpression is not supported".to_owned());
        }
        // The API: an empty value is the same as none.
        let service = method.service.as_deref().filter(|s| !s.is_empty());
        let name = method.method.as_deref().filter(|m| !m.is_empty());
        if service.is_none() && name.is_none() {
            return Err(".method: one or both of service and method must be given".to_owned());
        }
        if let Some(service) = service.filter(|s| !is_grpc_service_name(s)) {
            return Err(format!(
                ".method.service: {service:?} is not a gRPC service name"
            ));
        }
        if let Some(name) = name.filter(|m| !is_grpc_identifier(m)) {
            return Err(format!(
                ".method.method: {name:?} is not a gRPC method name"
            ));
        }
        converted.path = PathMatch::Grpc {
            service: service.map(str::to_owned),
            method: name.map(str::to_owned),
        };
    }
    for (i, header) in m.headers.iter().flatten().enumerate() {
        if header.r#type == Some(GrpcRouteRulesMatchesHeadersType::RegularExpression) {
            return Err(format!(
                ".headers[{i}]: type RegularExpression is not supported"
            ));
        }
        converted.headers.push(HeaderMatch {
            name: header.name.clone(),
            value: header.value.clone(),
        });
    }
    Ok(converted)
}

/// The CRD's pattern for an `Exact` service: `^(?i)\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*$`.
/// (The API server checks it; a manifest folder has no API server.)
fn is_grpc_service_name(service: &str) -> bool {
    let service = service.strip_prefix('.').unwrap_or(service);
    service.split('.').all(is_grpc_identifier)
}

/// The CRD's pattern for an `Exact` method, and each label of a service: `^[A-Za-z_][A-Za-z_0-9]*$`.
fn is_grpc_identifier(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// One match, or the reason (as a field suffix and message) it cannot be honoured.
fn convert_match(m: &HttpRouteRulesMatches) -> Result<RouteMatch, String> {
    let mut converted = RouteMatch::default();
    if let Some(path) = &m.path {
        let value = path.value.clone().unwrap_or_else(|| "/".to_owned());
        if !value.starts_with('/') {
            return Err(format!(".path: value {value:?} must start with \"/\""));
        }
        converted.path = match path.r#type {
            None | Some(HttpRouteRulesMatchesPathType::PathPrefix) => PathMatch::Prefix(value),
            Some(HttpRouteRulesMatchesPathType::Exact) => PathMatch::Exact(value),
            Some(HttpRouteRulesMatchesPathType::RegularExpression) => {
                return Err(".path: type RegularExpression is not supported".to_owned());
            }
        };
    }
    converted.method = m
        .method
        .as_ref()
        .map(|method| method_name(method).to_owned());
    for (i, header) in m.headers.iter().flatten().enumerate() {
        if header.r#type == Some(HttpRouteRulesMatchesHeadersType::RegularExpression) {
            return Err(format!(
                ".headers[{i}]: type RegularExpression is not supported"
            ));
        }
        converted.headers.push(HeaderMatch {
            name: header.name.clone(),
            value: header.value.clone(),
        });
    }
    for (i, param) in m.query_params.iter().flatten().enumerate() {
        if param.r#type == Some(HttpRouteRulesMatchesQueryParamsType::RegularExpression) {
            return Err(format!(
                ".queryParams[{i}]: type RegularExpression is not supported"
            ));
        }
        converted.query_params.push(QueryParamMatch {
            name: param.name.clone(),
            value: param.value.clone(),
        });
    }
    Ok(converted)
}

fn method_name(method: &HttpRouteRulesMatchesMethod) -> &'static str {
    match method {
        HttpRouteRulesMatchesMethod::Get => "GET",
        HttpRouteRulesMatchesMethod::Head => "HEAD",
        HttpRouteRulesMatchesMethod::Post => "POST",
        HttpRouteRulesMatchesMethod::Put => "PUT",
        HttpRouteRulesMatchesMethod::Delete => "DELETE",
        HttpRouteRulesMatchesMethod::Connect => "CONNECT",
        HttpRouteRulesMatchesMethod::Options => "OPTIONS",
        HttpRouteRulesMatchesMethod::Trace => "TRACE",
        HttpRouteRulesMatchesMethod::Patch => "PATCH",
    }
}

/// The Service port `appProtocol` (a Kubernetes standard name) of HTTP/2 over cleartext.
const H2C_APP_PROTOCOL: &str = "kubernetes.io/h2c";

/// Resolves one backendRef of a route of `route_kind` in `route_namespace`. An unresolvable ref
/// still yields a backend (with [`BackendTarget::Invalid`], so that its share of traffic gets
/// the API's error answer) and the problem for `ResolvedRefs`.
fn resolve_backend(
    store: &ObjectStore,
    slices: &SlicesByService<'_>,
    route_kind: RouteKind,
    route_namespace: &str,
    backend_ref: BackendRef<'_>,
) -> (DesiredBackend, Option<Problem>) {
    let group = backend_ref.group.unwrap_or(CORE_GROUP);
    let kind = backend_ref.kind.unwrap_or("Service");
    let namespace = backend_ref.namespace.unwrap_or(route_namespace);
    let name = backend_ref.name;
    let port_text = backend_ref
        .port
        .map_or_else(|| "?".to_owned(), |p| p.to_string());
    let weight = backend_ref
        .weight
        .map_or(DEFAULT_BACKEND_WEIGHT, |w| u32::try_from(w).unwrap_or(0));
    let backend = |(protocol, target)| DesiredBackend {
        name: format!("{namespace}/{name}:{port_text}"),
        weight,
        protocol: match route_kind {
            RouteKind::Grpc => BackendProtocol::H2c,
            RouteKind::Http => protocol,
        },
        target,
    };
    match resolve_endpoints(
        store,
        slices,
        Referrer {
            group: GATEWAY_GROUP,
            kind: route_kind.as_str(),
            namespace: route_namespace,
        },
        group,
        kind,
        namespace,
        name,
        backend_ref.port,
    ) {
        Ok((protocol, endpoints)) => (
            backend((protocol, BackendTarget::Endpoints(endpoints))),
            None,
        ),
        Err(problem) => (
            backend((
                BackendProtocol::Http1,
                BackendTarget::Invalid {
                    reason: problem.message.clone(),
                },
            )),
            Some(problem),
        ),
    }
}

#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename the fields
fn resolve_endpoints(
    store: &ObjectStore,
    slices: &SlicesByService<'_>,
    from: Referrer<'_>,
    group: &str,
    kind: &str,
    namespace: &str,
    name: &str,
    port: Option<i32>,
) -> Result<(BackendProtocol, Vec<SocketAddr>), Problem> {
    let what = format!("backendRef {}", describe(group, kind, namespace, name));
    if group != CORE_GROUP || kind != "Service" {
        return Err(Problem::new(
            reasons::INVALID_KIND,
            format!("{what}: only kind Service in the core group (\"\") is supported"),
        ));
    }
    let to = Referent {
        group,
        kind,
        namespace,
        name,
    };
    require_grant(store, from, to, &what)?;
    let not_found = |message: String| Problem::new(reasons::BACKEND_NOT_FOUND, message);
    let service_key = ObjectRef::new(namespace, name);
    let service = store
        .services
        .get(&service_key)
        .ok_or_else(|| not_found(format!("{what}: not found")))?;
    let port = port.ok_or_else(|| not_found(format!("{what}: port is required for a Service")))?;
    let service_port = service
        .spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .find(|p| p.port == port)
        .ok_or_else(|| not_found(format!("{what}: the Service has no port {port}")))?;
    let protocol = match service_port.app_protocol.as_deref() {
        Some(H2C_APP_PROTOCOL) => BackendProtocol::H2c,
        _ => BackendProtocol::Http1,
    };
    let port_name = service_port.name.as_deref().unwrap_or_default();
    let mut endpoints = BTreeSet::new();
    for slice in slices.get(&service_key).into_iter().flatten() {
        if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
            continue;
        }
        // EndpointSlice ports carry the target port, matched to the Service port by name.
        let Some(target_port) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref().unwrap_or_default() == port_name)
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for endpoint in slice.endpoints.iter().flatten() {
            let ready = endpoint.conditions.as_ref().and_then(|c| c.ready) != Some(false);
            if !ready {
                continue;
            }
            for address in &endpoint.addresses {
                if let Ok(ip) = address.parse::<IpAddr>() {
                    endpoints.insert(SocketAddr::new(ip, target_port));
                }
            }
        }
    }
    Ok((protocol, endpoints.into_iter().collect()))
}
