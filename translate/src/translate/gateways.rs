//! One Gateway's listeners: validation, conflicts, server certificates, the per-port
//! client-validation policy (spec §2, §4), and their status (spec §5).

use std::collections::{BTreeMap, HashMap};

use gateway_api::experimental::gateways::{
    Gateway, GatewayListeners, GatewayListenersAllowedRoutesNamespacesFrom,
    GatewayListenersTlsMode, GatewayStatusListeners, GatewayStatusListenersSupportedKinds,
    GatewayTlsFrontendDefaultValidation, GatewayTlsFrontendDefaultValidationMode,
    GatewayTlsFrontendPerPortTlsValidation, GatewayTlsFrontendPerPortTlsValidationMode,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use portcullis_core::desired::{
    CaCertificate, ClientValidation, DesiredRoute, ObjectRef, PortProtocol, ServerCertificate,
    ValidationMode,
};
use portcullis_core::hostname;
use portcullis_core::listener_options::{self, ListenerTlsOptions};

use super::conditions::{ConditionStamp, Problem, join_messages, reasons, types};
use super::matching::{is_valid_hostname, namespace_labels, selector_matches};
use super::refs::{
    CaRef, CertificateRef, GATEWAY_GROUP, ServerCertificates, describe, resolve_ca_ref,
    resolve_certificate_ref,
};
use super::routes::RouteKind;
use crate::store::ObjectStore;

/// The route kinds HTTP and HTTPS listeners serve, in `supportedKinds` order.
const SERVED_ROUTE_KINDS: [RouteKind; 2] = [RouteKind::Http, RouteKind::Grpc];

/// Creation order, for "the older one wins" decisions: creationTimestamp (objects without
/// one first, as in a manifest folder), then `namespace/name`.
pub(crate) type Age<'s> = (Option<&'s Time>, &'s ObjectRef);

/// A route as attached to one listener.
#[derive(Debug, Clone)]
pub(crate) struct AttachedRoute<'s> {
    pub age: Age<'s>,
    pub kind: RouteKind,
    pub route: DesiredRoute,
}

#[derive(Debug)]
pub(crate) struct ListenerState<'s> {
    pub spec: &'s GatewayListeners,
    /// `None` when out of 1..=65535.
    pub port: Option<u16>,
    /// `None` for protocols Portcullis does not serve.
    pub protocol: Option<PortProtocol>,
    /// Normalized; `None` for "any host".
    pub hostname: Option<String>,
    pub supported_kinds: Vec<GatewayStatusListenersSupportedKinds>,
    /// `Conflicted=True` (also recorded in `accept_problems`).
    pub conflict: Option<Problem>,
    /// `Accepted=False`.
    pub accept_problems: Vec<Problem>,
    /// `ResolvedRefs=False`.
    pub ref_problems: Vec<Problem>,
    /// A ref problem that keeps the listener from being programmed (its certificate, or no
    /// route kind it could serve); CA problems alone never do unless all CA refs are invalid.
    pub blocking_ref_problem: bool,
    /// Every CA ref of this HTTPS listener's port policy is invalid: the port refuses all.
    /// Holds the refusal's reason, naming the refs.
    pub ca_refused: Option<String>,
    pub certificate: Option<ServerCertificate>,
    pub tls_options: Option<ListenerTlsOptions>,
    pub routes: Vec<AttachedRoute<'s>>,
    /// Why the whole Gateway is not accepted (`Accepted=False` on the Gateway): none of its
    /// listeners is served, whatever their own state.
    pub gateway_rejection: Option<Problem>,
}

impl ListenerState<'_> {
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Valid in itself (before references): such a listener claims its port.
    pub fn structurally_valid(&self) -> bool {
        self.accept_problems.is_empty() && self.port.is_some() && self.protocol.is_some()
    }

    pub fn accepted(&self) -> bool {
        self.structurally_valid() && self.ca_refused.is_none()
    }

    pub fn programmed(&self) -> bool {
        self.accepted() && !self.blocking_ref_problem && self.gateway_rejection.is_none()
    }

    /// Takes its port: valid in itself, on a Gateway that is accepted.
    pub fn claims_port(&self) -> bool {
        self.structurally_valid() && self.gateway_rejection.is_none()
    }

    /// Why the data plane does not listen on this listener's port, when it reported so.
    pub fn unserved_reason<'u>(
        &self,
        unserved: Option<&'u BTreeMap<u16, String>>,
    ) -> Option<&'u str> {
        let port = self.port?;
        unserved?.get(&port).map(String::as_str)
    }

    /// Would be programmed but for its port's CA refs all being invalid: kept on the port so
    /// that the port fails closed (spec §4).
    pub fn refused_for_ca(&self) -> bool {
        self.claims_port() && !self.blocking_ref_problem && self.ca_refused.is_some()
    }

    /// Whether routes of `kind` from `route_namespace` may attach, by `allowedRoutes` (spec
    /// default: same namespace) and kinds.
    pub fn admits(
        &self,
        store: &ObjectStore,
        gateway_namespace: &str,
        kind: RouteKind,
        route_namespace: &str,
    ) -> bool {
        if !self.supported_kinds.iter().any(|k| k.kind == kind.as_str()) {
            return false;
        }
        let namespaces = self
            .spec
            .allowed_routes
            .as_ref()
            .and_then(|a| a.namespaces.as_ref());
        let from = namespaces.and_then(|n| n.from.as_ref());
        match from {
            None | Some(GatewayListenersAllowedRoutesNamespacesFrom::Same) => {
                route_namespace == gateway_namespace
            }
            Some(GatewayListenersAllowedRoutesNamespacesFrom::All) => true,
            // A Selector without a selector cannot match (the API server refuses it).
            Some(GatewayListenersAllowedRoutesNamespacesFrom::Selector) => namespaces
                .and_then(|n| n.selector.as_ref())
                .is_some_and(|s| selector_matches(s, &namespace_labels(store, route_namespace))),
        }
    }
}

/// The client-validation policy of one port and the problems of its CA refs.
#[derive(Debug, Clone)]
pub(crate) struct PortPolicy {
    pub validation: ClientValidation,
    pub problems: Vec<Problem>,
}

#[derive(Debug)]
pub(crate) struct GatewayState<'s> {
    pub key: &'s ObjectRef,
    pub gateway: &'s Gateway,
    pub observed_generation: i64,
    /// One per distinct listener name, in spec order.
    pub listeners: Vec<ListenerState<'s>>,
    /// Listener name -> index in `listeners` (routes' `sectionName`s are looked up by name).
    pub listener_index: HashMap<&'s str, usize>,
    /// Listener names given more than once; only the first is used.
    pub duplicate_names: Vec<String>,
    /// HTTPS ports only.
    pub port_policies: BTreeMap<u16, PortPolicy>,
    /// Where AllowInsecureFallback is configured: `default`, `perPort 8444`.
    pub insecure_fallback: Vec<String>,
    /// Why the Gateway is not accepted as a whole; its listeners are then not served.
    pub rejection: Option<Problem>,
}

impl<'s> GatewayState<'s> {
    pub fn age(&self) -> Age<'s> {
        (self.gateway.metadata.creation_timestamp.as_ref(), self.key)
    }

    pub fn namespace(&self) -> &str {
        &self.key.namespace
    }

    /// Validates the listeners and resolves their certificates; ports, conflicts with other
    /// Gateways and CA policies come later.
    pub fn new(
        store: &ObjectStore,
        certificates: &mut ServerCertificates,
        key: &'s ObjectRef,
        gateway: &'s Gateway,
    ) -> Self {
        let mut listeners: Vec<ListenerState<'s>> = Vec::new();
        let mut listener_index = HashMap::new();
        let mut duplicate_names = Vec::new();
        for spec in &gateway.spec.listeners {
            if listener_index.contains_key(spec.name.as_str()) {
                duplicate_names.push(spec.name.clone());
                continue;
            }
            listener_index.insert(spec.name.as_str(), listeners.len());
            listeners.push(validate_listener(store, certificates, &key.namespace, spec));
        }
        mark_conflicts(&mut listeners);
        let rejection = invalid_parameters(gateway, &key.namespace);
        for listener in &mut listeners {
            listener.gateway_rejection.clone_from(&rejection);
        }
        Self {
            key,
            gateway,
            observed_generation: gateway.metadata.generation.unwrap_or(1),
            listeners,
            listener_index,
            duplicate_names,
            port_policies: BTreeMap::new(),
            insecure_fallback: insecure_fallback(gateway),
            rejection,
        }
    }

    /// Resolves the client-validation policy of every HTTPS port and marks its listeners.
    pub fn resolve_port_policies(&mut self, store: &ObjectStore) {
        let frontend = self
            .gateway
            .spec
            .tls
            .as_ref()
            .and_then(|t| t.frontend.as_ref());
        let mut https_ports: Vec<u16> = self
            .listeners
            .iter()
            .filter(|l| l.protocol == Some(PortProtocol::Https))
            .filter_map(|l| l.port)
            .collect();
        https_ports.sort_unstable();
        https_ports.dedup();
        let mut default_policy: Option<PortPolicy> = None;
        for port in https_ports {
            let policy = match frontend {
                None => not_requested(),
                Some(frontend) => {
                    // The first perPort entry for this port replaces the default (spec §2).
                    let per_port = frontend
                        .per_port
                        .iter()
                        .flatten()
                        .find(|p| i32::from(port) == p.port);
                    match per_port {
                        Some(entry) => match &entry.tls.validation {
                            None => not_requested(),
                            Some(v) => resolve_policy(
                                store,
                                &self.key.namespace,
                                &format!("perPort {port}"),
                                &FrontendValidation::from_per_port(v),
                            ),
                        },
                        None => default_policy
                            .get_or_insert_with(|| match &frontend.default.validation {
                                None => not_requested(),
                                Some(v) => resolve_policy(
                                    store,
                                    &self.key.namespace,
                                    "default",
                                    &FrontendValidation::from_default(v),
                                ),
                            })
                            .clone(),
                    }
                }
            };
            for listener in &mut self.listeners {
                if listener.port == Some(port) && listener.protocol == Some(PortProtocol::Https) {
                    listener
                        .ref_problems
                        .extend(policy.problems.iter().cloned());
                    listener.ca_refused = match &policy.validation {
                        ClientValidation::RefuseAll { reason } => Some(reason.clone()),
                        ClientValidation::NotRequested | ClientValidation::Verify { .. } => None,
                    };
                    // Fail closed: client-identity rules with no CA to verify against would
                    // silently check nothing.
                    let restricts_clients = listener
                        .tls_options
                        .as_ref()
                        .is_some_and(|o| !o.client_identity.is_empty());
                    if restricts_clients
                        && matches!(policy.validation, ClientValidation::NotRequested)
                    {
                        listener.accept_problems.push(Problem::new(
                            reasons::UNSUPPORTED_VALUE,
                            format!(
                                "tls.options restrict client certificates (verify-subject-alt-names / verify-certificate-hash), but no spec.tls.frontend validation covers port {port}, so nothing would verify them"
                            ),
                        ));
                    }
                }
            }
            self.port_policies.insert(port, policy);
        }
    }

    /// `unserved`: the ports the Gateway's data plane reported it cannot listen on.
    pub fn listener_statuses(
        &self,
        now: &Time,
        unserved: Option<&BTreeMap<u16, String>>,
    ) -> Vec<GatewayStatusListeners> {
        let stamp = ConditionStamp {
            observed_generation: self.observed_generation,
            now,
        };
        self.listeners
            .iter()
            .map(|l| listener_status(&stamp, l, l.unserved_reason(unserved)))
            .collect()
    }
}

fn not_requested() -> PortPolicy {
    PortPolicy {
        validation: ClientValidation::NotRequested,
        problems: Vec::new(),
    }
}

/// `tls.frontend.default.validation` or a `perPort[].tls.validation` (two identical API
/// types), with the API default mode applied.
struct FrontendValidation<'a> {
    mode: ValidationMode,
    refs: Vec<CaRef<'a>>,
}

impl<'a> FrontendValidation<'a> {
    fn from_default(v: &'a GatewayTlsFrontendDefaultValidation) -> Self {
        Self {
            mode: match v.mode {
                Some(GatewayTlsFrontendDefaultValidationMode::AllowInsecureFallback) => {
                    ValidationMode::AllowInsecureFallback
                }
                Some(GatewayTlsFrontendDefaultValidationMode::AllowValidOnly) | None => {
                    ValidationMode::AllowValidOnly
                }
            },
            refs: v
                .ca_certificate_refs
                .iter()
                .map(|r| CaRef {
                    group: &r.group,
                    kind: &r.kind,
                    name: &r.name,
                    namespace: r.namespace.as_deref(),
                })
                .collect(),
        }
    }

    fn from_per_port(v: &'a GatewayTlsFrontendPerPortTlsValidation) -> Self {
        Self {
            mode: match v.mode {
                Some(GatewayTlsFrontendPerPortTlsValidationMode::AllowInsecureFallback) => {
                    ValidationMode::AllowInsecureFallback
                }
                Some(GatewayTlsFrontendPerPortTlsValidationMode::AllowValidOnly) | None => {
                    ValidationMode::AllowValidOnly
                }
            },
            refs: v
                .ca_certificate_refs
                .iter()
                .map(|r| CaRef {
                    group: &r.group,
                    kind: &r.kind,
                    name: &r.name,
                    namespace: r.namespace.as_deref(),
                })
                .collect(),
        }
    }
}

/// The union of the valid CA refs (spec §4); `RefuseAll` when none is valid, including when
/// the list is empty, so that a port never silently serves without mutual TLS.
fn resolve_policy(
    store: &ObjectStore,
    gateway_namespace: &str,
    source: &str,
    validation: &FrontendValidation<'_>,
) -> PortPolicy {
    let mut trust_anchors: Vec<CaCertificate> = Vec::new();
    let mut problems = Vec::new();
    for reference in &validation.refs {
        match resolve_ca_ref(store, gateway_namespace, *reference) {
            Ok(anchors) => {
                for anchor in anchors {
                    // The same certificate reached through two refs is one trust anchor.
                    if !trust_anchors.iter().any(|a| a.der == anchor.der) {
                        trust_anchors.push(anchor);
                    }
                }
            }
            Err(problem) => problems.push(problem),
        }
    }
    let validation = if trust_anchors.is_empty() {
        if validation.refs.is_empty() {
            problems.push(Problem::new(
                reasons::INVALID_CA_CERTIFICATE_REF,
                format!("tls.frontend {source}: caCertificateRefs is empty"),
            ));
        }
        ClientValidation::RefuseAll {
            reason: format!(
                "every CA certificate reference of tls.frontend {source} is invalid: {}",
                join_messages(&problems)
            ),
        }
    } else {
        ClientValidation::Verify {
            mode: validation.mode,
            trust_anchors,
        }
    };
    PortPolicy {
        validation,
        problems,
    }
}

/// `spec.infrastructure.parametersRef`: Portcullis takes no Gateway parameters, so any
/// reference is of a kind it does not support, and the API asks that such a Gateway be
/// rejected (`Accepted=False, InvalidParameters`) rather than served without them.
fn invalid_parameters(gateway: &Gateway, namespace: &str) -> Option<Problem> {
    let reference = gateway
        .spec
        .infrastructure
        .as_ref()?
        .parameters_ref
        .as_ref()?;
    Some(Problem::new(
        reasons::INVALID_PARAMETERS,
        format!(
            "infrastructure.parametersRef {}: Portcullis takes no Gateway parameters",
            describe(
                &reference.group,
                &reference.kind,
                namespace,
                &reference.name
            )
        ),
    ))
}

/// Where `AllowInsecureFallback` is configured, whether or not a port uses it.
fn insecure_fallback(gateway: &Gateway) -> Vec<String> {
    let Some(frontend) = gateway.spec.tls.as_ref().and_then(|t| t.frontend.as_ref()) else {
        return Vec::new();
    };
    let mut places = Vec::new();
    if frontend.default.validation.as_ref().is_some_and(|v| {
        v.mode == Some(GatewayTlsFrontendDefaultValidationMode::AllowInsecureFallback)
    }) {
        places.push("default".to_owned());
    }
    for entry in frontend.per_port.iter().flatten() {
        if entry.tls.validation.as_ref().is_some_and(|v| {
            v.mode == Some(GatewayTlsFrontendPerPortTlsValidationMode::AllowInsecureFallback)
        }) {
            places.push(format!("perPort {}", entry.port));
        }
    }
    places
}

fn validate_listener<'s>(
    store: &ObjectStore,
    certificates: &mut ServerCertificates,
    gateway_namespace: &str,
    spec: &'s GatewayListeners,
) -> ListenerState<'s> {
    let mut state = ListenerState {
        spec,
        port: u16::try_from(spec.port).ok().filter(|p| *p != 0),
        protocol: match spec.protocol.as_str() {
            "HTTP" => Some(PortProtocol::Http),
            "HTTPS" => Some(PortProtocol::Https),
            _ => None,
        },
        hostname: None,
        supported_kinds: Vec::new(),
        conflict: None,
        accept_problems: Vec::new(),
        ref_problems: Vec::new(),
        blocking_ref_problem: false,
        ca_refused: None,
        certificate: None,
        tls_options: None,
        routes: Vec::new(),
        gateway_rejection: None,
    };
    if state.protocol.is_none() {
        state.accept_problems.push(Problem::new(
            reasons::UNSUPPORTED_PROTOCOL,
            format!(
                "protocol {:?} is not supported (Portcullis serves HTTP and HTTPS)",
                spec.protocol
            ),
        ));
    }
    if state.port.is_none() {
        state.accept_problems.push(Problem::new(
            reasons::PORT_UNAVAILABLE,
            format!("port {} is not in 1..65535", spec.port),
        ));
    }
    if let Some(raw) = spec.hostname.as_deref().filter(|h| !h.is_empty()) {
        let name = hostname::normalize(raw);
        if is_valid_hostname(&name) {
            state.hostname = Some(name);
        } else {
            state.accept_problems.push(Problem::new(
                reasons::UNSUPPORTED_VALUE,
                format!("hostname {raw:?} is not a valid DNS name or wildcard"),
            ));
        }
    }
    if state.protocol.is_some() {
        route_kinds(&mut state);
    }
    if state.protocol == Some(PortProtocol::Https) {
        listener_tls(store, certificates, gateway_namespace, &mut state);
    }
    state
}

/// `supportedKinds` from `allowedRoutes.kinds`: HTTPRoute and GRPCRoute are served (both
/// when no kinds are given); others are `ResolvedRefs=False, InvalidRouteKinds`, and a
/// listener left with no kind is not programmed.
fn route_kinds(state: &mut ListenerState<'_>) {
    let supported = |kind: RouteKind| GatewayStatusListenersSupportedKinds {
        group: Some(GATEWAY_GROUP.to_owned()),
        kind: kind.as_str().to_owned(),
    };
    let requested = state
        .spec
        .allowed_routes
        .as_ref()
        .and_then(|a| a.kinds.as_ref())
        .filter(|k| !k.is_empty());
    let Some(requested) = requested else {
        state.supported_kinds = SERVED_ROUTE_KINDS.map(supported).to_vec();
        return;
    };
    let mut invalid = Vec::new();
    for kind in requested {
        let group = kind.group.as_deref().unwrap_or(GATEWAY_GROUP);
        let served = SERVED_ROUTE_KINDS
            .into_iter()
            .find(|k| group == GATEWAY_GROUP && kind.kind == k.as_str());
        match served {
            Some(k) => {
                if !state.supported_kinds.iter().any(|s| s.kind == k.as_str()) {
                    state.supported_kinds.push(supported(k));
                }
            }
            None => invalid.push(format!("{group}/{}", kind.kind)),
        }
    }
    if !invalid.is_empty() {
        let served: Vec<String> = SERVED_ROUTE_KINDS
            .iter()
            .map(|k| format!("{GATEWAY_GROUP}/{}", k.as_str()))
            .collect();
        state.ref_problems.push(Problem::new(
            reasons::INVALID_ROUTE_KINDS,
            format!(
                "allowedRoutes.kinds {} not supported (only {})",
                invalid.join(", "),
                served.join(" and ")
            ),
        ));
        if state.supported_kinds.is_empty() {
            state.blocking_ref_problem = true;
        }
    }
}

/// TLS of an HTTPS listener: mode, options, and its server certificate (spec §6). Only the
/// first certificateRef is served (DesiredListener holds one certificate); every ref must
/// resolve, so that a broken second certificate is not silently ignored.
fn listener_tls(
    store: &ObjectStore,
    certificates: &mut ServerCertificates,
    gateway_namespace: &str,
    state: &mut ListenerState<'_>,
) {
    let Some(tls) = &state.spec.tls else {
        state.ref_problems.push(Problem::new(
            reasons::INVALID_CERTIFICATE_REF,
            "HTTPS listener has no tls.certificateRefs",
        ));
        state.blocking_ref_problem = true;
        return;
    };
    if tls.mode == Some(GatewayListenersTlsMode::Passthrough) {
        state.accept_problems.push(Problem::new(
            reasons::UNSUPPORTED_VALUE,
            "tls.mode Passthrough is not supported for protocol HTTPS (only Terminate)",
        ));
        return;
    }
    match listener_options::parse(&tls.options.clone().unwrap_or_default()) {
        Ok(options) => state.tls_options = Some(options),
        Err(e) => state
            .accept_problems
            .push(Problem::new(reasons::UNSUPPORTED_VALUE, e.to_string())),
    }
    let refs = tls.certificate_refs.as_deref().unwrap_or_default();
    if refs.is_empty() {
        state.ref_problems.push(Problem::new(
            reasons::INVALID_CERTIFICATE_REF,
            "HTTPS listener has no tls.certificateRefs",
        ));
        state.blocking_ref_problem = true;
        return;
    }
    let mut resolved = Vec::new();
    for r in refs {
        let reference = CertificateRef {
            group: r.group.as_deref().unwrap_or(""),
            kind: r.kind.as_deref().unwrap_or("Secret"),
            name: &r.name,
            namespace: r.namespace.as_deref(),
        };
        match resolve_certificate_ref(store, certificates, gateway_namespace, reference) {
            Ok(certificate) => resolved.push(certificate),
            Err(problem) => {
                state.ref_problems.push(problem);
                state.blocking_ref_problem = true;
            }
        }
    }
    if !state.blocking_ref_problem {
        state.certificate = resolved.into_iter().next();
    }
}

/// Listeners that cannot share a port (Gateway API listener compatibility): HTTP and HTTPS on
/// one port are `ProtocolConflict`; two listeners with the same port, protocol and hostname are
/// `HostnameConflict`. Every listener of a conflicting set is marked, none is served. Listeners
/// already refused on their own (bad hostname, options, TLS mode) take no part, so that an
/// unservable listener never knocks out a valid one.
fn mark_conflicts(listeners: &mut [ListenerState<'_>]) {
    let mut by_port: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
    for (i, l) in listeners.iter().enumerate() {
        if !l.accept_problems.is_empty() {
            continue;
        }
        if let (Some(port), Some(_)) = (l.port, l.protocol) {
            by_port.entry(port).or_default().push(i);
        }
    }
    for (port, indexes) in by_port {
        let protocols: Vec<PortProtocol> = indexes
            .iter()
            .filter_map(|i| listeners.get(*i).and_then(|l| l.protocol))
            .collect();
        let mixed =
            protocols.contains(&PortProtocol::Http) && protocols.contains(&PortProtocol::Https);
        // Listeners of this port by hostname: a hostname conflict is a group of two or more.
        let mut by_hostname: HashMap<Option<&str>, Vec<usize>> = HashMap::new();
        for &i in &indexes {
            if let Some(listener) = listeners.get(i) {
                by_hostname
                    .entry(listener.hostname.as_deref())
                    .or_default()
                    .push(i);
            }
        }
        let mut conflicts: Vec<(usize, Problem)> = Vec::new();
        for &i in &indexes {
            let Some(listener) = listeners.get(i) else {
                continue;
            };
            let conflict = if mixed {
                Some(Problem::new(
                    reasons::PROTOCOL_CONFLICT,
                    format!("port {port} is used by both HTTP and HTTPS listeners"),
                ))
            } else {
                let group = by_hostname
                    .get(&listener.hostname.as_deref())
                    .map_or(&[][..], Vec::as_slice);
                let same: Vec<&str> = group
                    .iter()
                    .filter(|j| **j != i)
                    .filter_map(|j| listeners.get(*j))
                    .map(|other| other.name())
                    .collect();
                (!same.is_empty()).then(|| {
                    Problem::new(
                        reasons::HOSTNAME_CONFLICT,
                        format!(
                            "listener(s) {} use the same port {port}, protocol and hostname {}",
                            same.join(", "),
                            listener.hostname.as_deref().unwrap_or("(any)")
                        ),
                    )
                })
            };
            if let Some(conflict) = conflict {
                conflicts.push((i, conflict));
            }
        }
        for (i, conflict) in conflicts {
            if let Some(listener) = listeners.get_mut(i) {
                listener.accept_problems.push(conflict.clone());
                listener.conflict = Some(conflict);
            }
        }
    }
}

fn listener_status(
    stamp: &ConditionStamp<'_>,
    l: &ListenerState<'_>,
    unserved: Option<&str>,
) -> GatewayStatusListeners {
    let mut accept_problems = l.accept_problems.clone();
    if let Some(reason) = &l.ca_refused {
        accept_problems.push(Problem::new(
            reasons::NO_VALID_CA_CERTIFICATE,
            format!("the port refuses every TLS client: {reason}"),
        ));
    }
    let mut conditions = vec![stamp.summarize(
        types::ACCEPTED,
        &accept_problems,
        reasons::ACCEPTED,
        "Listener is accepted",
    )];
    conditions.push(if let (true, Some(why)) = (l.programmed(), unserved) {
        stamp.condition(
            types::PROGRAMMED,
            false,
            reasons::PENDING,
            format!(
                "the data plane does not listen on port {} yet: {why}",
                l.port.unwrap_or_default()
            ),
        )
    } else if l.programmed() {
        stamp.condition(
            types::PROGRAMMED,
            true,
            reasons::PROGRAMMED,
            "Listener is programmed",
        )
    } else {
        let mut why: Vec<Problem> = l.gateway_rejection.iter().cloned().collect();
        why.extend(accept_problems.iter().cloned());
        why.extend(l.ref_problems.iter().cloned());
        stamp.condition(
            types::PROGRAMMED,
            false,
            reasons::INVALID,
            format!("Listener is not programmed: {}", join_messages(&why)),
        )
    });
    conditions.push(stamp.summarize(
        types::RESOLVED_REFS,
        &l.ref_problems,
        reasons::RESOLVED_REFS,
        "All references are resolved",
    ));
    if let Some(conflict) = &l.conflict {
        conditions.push(stamp.condition(
            types::CONFLICTED,
            true,
            conflict.reason,
            conflict.message.clone(),
        ));
    }
    GatewayStatusListeners {
        attached_routes: i32::try_from(l.routes.len()).unwrap_or(i32::MAX),
        conditions,
        name: l.spec.name.clone(),
        supported_kinds: Some(l.supported_kinds.clone()),
    }
}
