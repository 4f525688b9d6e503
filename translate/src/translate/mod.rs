//! `translate`: Gateway API objects in, desired config and statuses out. Pure: no clock (the
//! caller passes `now`), no IO, deterministic for a given store and options.
//!
//! Order of work:
//! 1. our Gateways: GatewayClass `controllerName` is ours, or `gatewayClassName` is the extra
//!    class the caller names;
//! 2. each Gateway's listeners are validated on their own (protocol, port, hostname, TLS mode
//!    and options, route kinds, certificates) and against each other (conflicts); a Gateway
//!    with an `infrastructure.parametersRef` is not accepted (`InvalidParameters`: Portcullis
//!    takes no Gateway parameters) and none of its listeners is served;
//! 3. ports are claimed across Gateways, oldest first: one process serves every Gateway, so two
//!    Gateways cannot share a port, and the younger one's listeners get `PortUnavailable`.
//!    Only structurally valid listeners claim ports; references (Secrets, CAs) do not decide
//!    who owns a port, so that a Secret briefly missing never moves a port to another Gateway;
//! 4. each HTTPS port's client-validation policy (perPort entry, else default);
//! 5. HTTPRoutes and GRPCRoutes attach to listeners (parentRef, allowedRoutes, hostname
//!    intersection), oldest first; a route whose hostnames intersect those of a route of the
//!    other kind already on a listener is not attached there (`Accepted=False,
//!    HostnameConflict` when no listener of the parentRef takes it), as the GRPCRoute API
//!    requires: exactly one of the two is accepted, the older (then the first by
//!    `namespace/name`);
//! 6. statuses, and the desired config of what is programmed.

mod conditions;
mod filters;
mod gateways;
mod matching;
mod refs;
mod routes;

use std::collections::BTreeMap;

use gateway_api::experimental::gatewayclasses::{
    GatewayClassStatus, GatewayClassStatusSupportedFeatures,
};
use gateway_api::experimental::gateways::{GatewayStatus, GatewayStatusAddresses};
use gateway_api::experimental::grpcroutes::{
    GrpcRoute, GrpcRouteParentRefs, GrpcRouteStatus, GrpcRouteStatusParents,
    GrpcRouteStatusParentsParentRef,
};
use gateway_api::experimental::httproutes::{
    HttpRoute, HttpRouteParentRefs, HttpRouteStatus, HttpRouteStatusParents,
    HttpRouteStatusParentsParentRef,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use portcullis_core::desired::{
    ClientValidation, DesiredConfig, DesiredListener, DesiredPort, DesiredRoute, ListenerTls,
    ObjectRef, PortProtocol,
};
use portcullis_core::hostname;

pub use conditions::{reasons, types};

use conditions::{ConditionStamp, Problem, join_messages};
use gateways::{AttachedRoute, GatewayState, ListenerState};
use matching::hostnames_on_listener;
use refs::{GATEWAY_GROUP, ServerCertificates};
use routes::{PreparedRoute, RouteKind, SlicesByService, index_endpoint_slices, prepare_route};

use crate::store::ObjectStore;

/// The `controllerName` Portcullis answers to by default.
pub const DEFAULT_CONTROLLER_NAME: &str = "portcullis.dev/gateway-controller";

/// `status.supportedFeatures` of our GatewayClasses (sorted by bytes, as the API requires). The
/// conformance suite reads them to choose which tests to run, so a feature is listed once the
/// upstream conformance tests of it pass against Portcullis (`scripts/conformance`, which CI runs
/// with exactly this list), not when part of it works: the Core features of profiles GATEWAY-HTTP
/// and GATEWAY-GRPC, and the Extended features whose every upstream test (v1.6.1) passes.
pub const SUPPORTED_FEATURES: [&str; 24] = [
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
];

/// The default `type` of a Gateway address.
const IP_ADDRESS_TYPE: &str = "IPAddress";

/// What `translate` needs besides the objects.
#[derive(Debug, Clone, PartialEq)]
pub struct TranslateOptions {
    /// GatewayClasses with this `spec.controllerName` are ours.
    pub controller_name: String,
    /// Gateways of this `gatewayClassName` are ours too, with or without a GatewayClass object
    /// (`--gateway-class`).
    pub extra_gateway_class: Option<String>,
    /// `lastTransitionTime` of every condition written.
    pub now: Time,
    /// `status.addresses` per Gateway, as the caller knows them (kube mode: the provisioned
    /// Service's addresses). A Gateway not in the map reports its `spec.addresses`, if any.
    pub gateway_addresses: BTreeMap<ObjectRef, Vec<GatewayStatusAddresses>>,
    /// Each Gateway is served by its own data plane at its own address (kube mode: a
    /// Deployment and Service per Gateway), so Gateways never compete for a port and no
    /// listener gets `PortUnavailable` because of another Gateway. Off (file mode): one
    /// process serves every Gateway and the oldest keeps a contested port.
    pub separate_data_planes: bool,
    /// Ports a Gateway's data plane reported it cannot listen on, with why (kube mode: the
    /// controller asks each data-plane pod). Their listeners are `Programmed=False` with reason
    /// `Pending` until they are served; what the data plane is given does not change.
    pub unserved_ports: BTreeMap<ObjectRef, BTreeMap<u16, String>>,
}

impl TranslateOptions {
    /// The default controller name, no extra class, no known addresses.
    pub fn new(now: Time) -> Self {
        Self {
            controller_name: DEFAULT_CONTROLLER_NAME.to_owned(),
            extra_gateway_class: None,
            now,
            gateway_addresses: BTreeMap::new(),
            separate_data_planes: false,
            unserved_ports: BTreeMap::new(),
        }
    }
}

/// The result of one translation.
#[derive(Debug, Clone, PartialEq)]
pub struct Translation {
    /// What the data plane should serve.
    pub desired: DesiredConfig,
    /// Status of every GatewayClass whose `controllerName` is ours, by name.
    pub gateway_class_statuses: Vec<(String, GatewayClassStatus)>,
    /// Status of every Gateway we serve, by `namespace/name`.
    pub gateway_statuses: Vec<(ObjectRef, GatewayStatus)>,
    /// Status of every HttpRoute with at least one parentRef to a Gateway we serve. Only our
    /// parents are listed: a status writer must keep other controllers' entries.
    pub route_statuses: Vec<(ObjectRef, HttpRouteStatus)>,
    /// The same for every GRPCRoute.
    pub grpc_route_statuses: Vec<(ObjectRef, GrpcRouteStatus)>,
    /// With [`TranslateOptions::separate_data_planes`]: each Gateway's own desired config,
    /// every port of its own (what its data plane serves), by `namespace/name`. Empty otherwise.
    pub desired_by_gateway: BTreeMap<ObjectRef, DesiredConfig>,
}

impl Translation {
    pub fn gateway_status(&self, gateway: &ObjectRef) -> Option<&GatewayStatus> {
        self.gateway_statuses
            .iter()
            .find(|(key, _)| key == gateway)
            .map(|(_, status)| status)
    }

    pub fn route_status(&self, route: &ObjectRef) -> Option<&HttpRouteStatus> {
        self.route_statuses
            .iter()
            .find(|(key, _)| key == route)
            .map(|(_, status)| status)
    }

    pub fn grpc_route_status(&self, route: &ObjectRef) -> Option<&GrpcRouteStatus> {
        self.grpc_route_statuses
            .iter()
            .find(|(key, _)| key == route)
            .map(|(_, status)| status)
    }
}

/// Translates every object of `store` (see the module documentation).
pub fn translate(store: &ObjectStore, options: &TranslateOptions) -> Translation {
    let mut certificates = ServerCertificates::default();
    let mut gateways: Vec<GatewayState<'_>> = store
        .gateways
        .iter()
        .filter(|(_, gateway)| is_ours(store, options, &gateway.spec.gateway_class_name))
        .map(|(key, gateway)| GatewayState::new(store, &mut certificates, key, gateway))
        .collect();
    gateways.sort_by(|a, b| a.age().cmp(&b.age()));

    let port_owners = claim_ports(&mut gateways, options.separate_data_planes);
    for gateway in &mut gateways {
        gateway.resolve_port_policies(store);
    }

    let (route_statuses, grpc_route_statuses) = attach_routes(store, options, &mut gateways);

    let desired = desired_config(&gateways, &port_owners);
    let desired_by_gateway = if options.separate_data_planes {
        gateways
            .iter()
            .map(|g| (g.key.clone(), gateway_desired_config(g)))
            .collect()
    } else {
        BTreeMap::new()
    };
    let mut gateway_statuses: Vec<(ObjectRef, GatewayStatus)> = gateways
        .iter()
        .map(|g| (g.key.clone(), gateway_status(g, options)))
        .collect();
    gateway_statuses.sort_by(|a, b| a.0.cmp(&b.0));

    Translation {
        desired,
        gateway_class_statuses: gateway_class_statuses(store, options),
        gateway_statuses,
        route_statuses,
        grpc_route_statuses,
        desired_by_gateway,
    }
}

fn is_ours(store: &ObjectStore, options: &TranslateOptions, class_name: &str) -> bool {
    options.extra_gateway_class.as_deref() == Some(class_name)
        || store
            .gateway_classes
            .get(class_name)
            .is_some_and(|class| class.spec.controller_name == options.controller_name)
}

fn gateway_class_statuses(
    store: &ObjectStore,
    options: &TranslateOptions,
) -> Vec<(String, GatewayClassStatus)> {
    store
        .gateway_classes
        .iter()
        .filter(|(_, class)| class.spec.controller_name == options.controller_name)
        .map(|(name, class)| {
            let stamp = ConditionStamp {
                observed_generation: class.metadata.generation.unwrap_or(1),
                now: &options.now,
            };
            let status = GatewayClassStatus {
                conditions: Some(vec![stamp.condition(
                    types::ACCEPTED,
                    true,
                    reasons::GATEWAY_CLASS_ACCEPTED,
                    format!("Handled by {}", options.controller_name),
                )]),
                supported_features: Some(
                    SUPPORTED_FEATURES
                        .iter()
                        .map(|name| GatewayClassStatusSupportedFeatures {
                            name: (*name).to_owned(),
                        })
                        .collect(),
                ),
            };
            (name.clone(), status)
        })
        .collect()
}

/// Gives each port to the oldest Gateway with a structurally valid listener on it; the
/// younger Gateways' listeners on that port get `Accepted=False, PortUnavailable`, unless
/// every Gateway has its own data plane (`separate`).
fn claim_ports(gateways: &mut [GatewayState<'_>], separate: bool) -> BTreeMap<u16, ObjectRef> {
    let mut owners: BTreeMap<u16, ObjectRef> = BTreeMap::new();
    for gateway in gateways.iter_mut() {
        let key = gateway.key.clone();
        for port in listener_ports(gateway) {
            let owner = owners.entry(port).or_insert_with(|| key.clone()).clone();
            if owner == key || separate {
                continue;
            }
            for listener in &mut gateway.listeners {
                if listener.port == Some(port) && listener.structurally_valid() {
                    listener.accept_problems.push(Problem::new(
                        reasons::PORT_UNAVAILABLE,
                        format!("port {port} is already used by Gateway {owner}"),
                    ));
                }
            }
        }
    }
    owners
}

/// A route of either kind, as attachment reads it.
#[derive(Debug, Clone, Copy)]
enum RouteObject<'s> {
    Http(&'s HttpRoute),
    Grpc(&'s GrpcRoute),
}

impl<'s> RouteObject<'s> {
    fn kind(self) -> RouteKind {
        match self {
            RouteObject::Http(_) => RouteKind::Http,
            RouteObject::Grpc(_) => RouteKind::Grpc,
        }
    }

    fn metadata(self) -> &'s ObjectMeta {
        match self {
            RouteObject::Http(r) => &r.metadata,
            RouteObject::Grpc(r) => &r.metadata,
        }
    }

    fn parent_refs(self) -> Vec<ParentRef<'s>> {
        match self {
            RouteObject::Http(r) => r
                .spec
                .parent_refs
                .iter()
                .flatten()
                .map(Into::into)
                .collect(),
            RouteObject::Grpc(r) => r
                .spec
                .parent_refs
                .iter()
                .flatten()
                .map(Into::into)
                .collect(),
        }
    }

    fn prepare(
        self,
        store: &ObjectStore,
        slices: &SlicesByService<'_>,
        key: &ObjectRef,
    ) -> PreparedRoute {
        match self {
            RouteObject::Http(r) => prepare_route(
                store,
                slices,
                RouteKind::Http,
                key,
                r.spec.hostnames.as_deref(),
                r.spec.rules.iter().flatten().map(Into::into),
            ),
            RouteObject::Grpc(r) => prepare_route(
                store,
                slices,
                RouteKind::Grpc,
                key,
                r.spec.hostnames.as_deref(),
                r.spec.rules.iter().flatten().map(Into::into),
            ),
        }
    }
}

/// A parentRef of either route kind (the API's `ParentReference`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ParentRef<'r> {
    group: Option<&'r str>,
    kind: Option<&'r str>,
    name: &'r str,
    namespace: Option<&'r str>,
    port: Option<i32>,
    section_name: Option<&'r str>,
}

impl<'r> From<&'r HttpRouteParentRefs> for ParentRef<'r> {
    fn from(p: &'r HttpRouteParentRefs) -> Self {
        Self {
            group: p.group.as_deref(),
            kind: p.kind.as_deref(),
            name: &p.name,
            namespace: p.namespace.as_deref(),
            port: p.port,
            section_name: p.section_name.as_deref(),
        }
    }
}

impl<'r> From<&'r GrpcRouteParentRefs> for ParentRef<'r> {
    fn from(p: &'r GrpcRouteParentRefs) -> Self {
        Self {
            group: p.group.as_deref(),
            kind: p.kind.as_deref(),
            name: &p.name,
            namespace: p.namespace.as_deref(),
            port: p.port,
            section_name: p.section_name.as_deref(),
        }
    }
}

impl ParentRef<'_> {
    /// The group as the API server stores it (defaulted).
    fn group_or_default(&self) -> String {
        self.group.unwrap_or(GATEWAY_GROUP).to_owned()
    }

    /// The kind as the API server stores it (defaulted).
    fn kind_or_default(&self) -> String {
        self.kind.unwrap_or("Gateway").to_owned()
    }
}

/// The statuses of one route: each of our parentRefs with its conditions.
type ParentConditions<'s> = Vec<(ParentRef<'s>, Vec<Condition>)>;

/// Attaches every route to the listeners that take it, oldest first, and returns the routes'
/// statuses: HTTPRoutes', then GRPCRoutes'.
#[allow(clippy::type_complexity)] // two plain lists; a struct would only rename them
fn attach_routes<'s>(
    store: &'s ObjectStore,
    options: &TranslateOptions,
    gateways: &mut [GatewayState<'s>],
) -> (
    Vec<(ObjectRef, HttpRouteStatus)>,
    Vec<(ObjectRef, GrpcRouteStatus)>,
) {
    let slices = index_endpoint_slices(store);
    let mut routes: Vec<(&ObjectRef, RouteObject<'_>)> = store
        .http_routes
        .iter()
        .map(|(key, route)| (key, RouteObject::Http(route)))
        .chain(
            store
                .grpc_routes
                .iter()
                .map(|(key, route)| (key, RouteObject::Grpc(route))),
        )
        .collect();
    // Oldest first: the older of an HTTPRoute and a GRPCRoute sharing a hostname keeps it.
    routes.sort_by_key(|(key, route)| {
        (
            route.metadata().creation_timestamp.as_ref(),
            *key,
            route.kind(),
        )
    });
    let mut http_statuses = Vec::new();
    let mut grpc_statuses = Vec::new();
    for (key, route) in routes {
        let parents = our_parent_refs(route, key, gateways);
        if parents.is_empty() {
            continue;
        }
        let prepared = route.prepare(store, &slices, key);
        let stamp = ConditionStamp {
            observed_generation: route.metadata().generation.unwrap_or(1),
            now: &options.now,
        };
        let age = (route.metadata().creation_timestamp.as_ref(), key);
        let mut parent_conditions: ParentConditions<'_> = Vec::new();
        for (parent_ref, gateway_index) in parents {
            let Some(gateway) = gateways.get_mut(gateway_index) else {
                continue;
            };
            let attaching = Attaching {
                kind: route.kind(),
                key,
                age,
                prepared: &prepared,
            };
            let accepted = attach_to_gateway(store, &attaching, &parent_ref, gateway);
            parent_conditions.push((parent_ref, route_conditions(&stamp, &accepted, &prepared)));
        }
        let controller_name = &options.controller_name;
        match route.kind() {
            RouteKind::Http => http_statuses.push((
                key.clone(),
                HttpRouteStatus {
                    parents: parent_conditions
                        .into_iter()
                        .map(|(p, conditions)| HttpRouteStatusParents {
                            conditions,
                            controller_name: controller_name.clone(),
                            parent_ref: HttpRouteStatusParentsParentRef {
                                group: Some(p.group_or_default()),
                                kind: Some(p.kind_or_default()),
                                name: p.name.to_owned(),
                                namespace: p.namespace.map(str::to_owned),
                                port: p.port,
                                section_name: p.section_name.map(str::to_owned),
                            },
                        })
                        .collect(),
                },
            )),
            RouteKind::Grpc => grpc_statuses.push((
                key.clone(),
                GrpcRouteStatus {
                    parents: parent_conditions
                        .into_iter()
                        .map(|(p, conditions)| GrpcRouteStatusParents {
                            conditions,
                            controller_name: controller_name.clone(),
                            parent_ref: GrpcRouteStatusParentsParentRef {
                                group: Some(p.group_or_default()),
                                kind: Some(p.kind_or_default()),
                                name: p.name.to_owned(),
                                namespace: p.namespace.map(str::to_owned),
                                port: p.port,
                                section_name: p.section_name.map(str::to_owned),
                            },
                        })
                        .collect(),
                },
            )),
        }
    }
    http_statuses.sort_by(|a, b| a.0.cmp(&b.0));
    grpc_statuses.sort_by(|a, b| a.0.cmp(&b.0));
    (http_statuses, grpc_statuses)
}

/// The route's distinct parentRefs that name one of our Gateways, with its index.
fn our_parent_refs<'r>(
    route: RouteObject<'r>,
    key: &ObjectRef,
    gateways: &[GatewayState<'_>],
) -> Vec<(ParentRef<'r>, usize)> {
    let mut parents: Vec<(ParentRef<'r>, usize)> = Vec::new();
    for parent_ref in route.parent_refs() {
        let group = parent_ref.group.unwrap_or(GATEWAY_GROUP);
        let kind = parent_ref.kind.unwrap_or("Gateway");
        if group != GATEWAY_GROUP || kind != "Gateway" {
            continue;
        }
        let gateway = ObjectRef::new(
            parent_ref.namespace.unwrap_or(&key.namespace),
            parent_ref.name,
        );
        let Some(index) = gateways.iter().position(|g| *g.key == gateway) else {
            continue;
        };
        if !parents.iter().any(|(p, _)| *p == parent_ref) {
            parents.push((parent_ref, index));
        }
    }
    parents
}

/// The route being attached.
struct Attaching<'a, 's> {
    kind: RouteKind,
    key: &'s ObjectRef,
    age: gateways::Age<'s>,
    prepared: &'a PreparedRoute,
}

/// Attaches the route to the listeners of `gateway` that its parentRef selects; `Ok(())` when
/// it attached to at least one, else why not.
fn attach_to_gateway<'s>(
    store: &ObjectStore,
    route: &Attaching<'_, 's>,
    parent_ref: &ParentRef<'_>,
    gateway: &mut GatewayState<'s>,
) -> Result<(), Problem> {
    let key = route.key;
    let prepared = route.prepared;
    let gateway_namespace = gateway.namespace().to_owned();
    let gateway_key = gateway.key.clone();
    // By name through the index: a Gateway with a route per listener stays linear.
    let candidates: Vec<usize> = match parent_ref.section_name {
        Some(section) => gateway
            .listener_index
            .get(section)
            .copied()
            .into_iter()
            .collect(),
        None => (0..gateway.listeners.len()).collect(),
    };
    let selected: Vec<usize> = candidates
        .into_iter()
        .filter(|i| {
            gateway.listeners.get(*i).is_some_and(|l| {
                parent_ref
                    .port
                    .is_none_or(|port| l.port.is_some_and(|p| i32::from(p) == port))
            })
        })
        .collect();
    if selected.is_empty() {
        return Err(Problem::new(
            reasons::NO_MATCHING_PARENT,
            format!(
                "Gateway {gateway_key} has no listener{}{}",
                parent_ref
                    .section_name
                    .map_or(String::new(), |s| format!(" named {s:?}")),
                parent_ref
                    .port
                    .map_or(String::new(), |p| format!(" on port {p}")),
            ),
        ));
    }
    let allowed: Vec<usize> = selected
        .into_iter()
        .filter(|i| {
            gateway
                .listeners
                .get(*i)
                .is_some_and(|l| l.admits(store, &gateway_namespace, route.kind, &key.namespace))
        })
        .collect();
    if allowed.is_empty() {
        return Err(Problem::new(
            reasons::NOT_ALLOWED_BY_LISTENERS,
            format!(
                "no selected listener of Gateway {gateway_key} allows {}s from namespace {}",
                route.kind.as_str(),
                key.namespace
            ),
        ));
    }
    let taking: Vec<(usize, Vec<String>)> = allowed
        .into_iter()
        .filter_map(|i| {
            let listener = gateway.listeners.get(i)?;
            hostnames_on_listener(listener.hostname.as_deref(), &prepared.hostnames)
                .map(|hostnames| (i, hostnames))
        })
        .collect();
    if taking.is_empty() {
        return Err(Problem::new(
            reasons::NO_MATCHING_LISTENER_HOSTNAME,
            format!(
                "no hostname of the route ({}) intersects a selected listener hostname of \
                 Gateway {gateway_key}",
                prepared.hostnames.join(", ")
            ),
        ));
    }
    if let Some(first) = prepared.unsupported.first() {
        return Err(Problem::new(
            first.reason,
            join_messages(&prepared.unsupported),
        ));
    }
    let mut conflicts = Vec::new();
    let mut attached = 0;
    for (i, hostnames) in taking {
        let Some(listener) = gateway.listeners.get_mut(i) else {
            continue;
        };
        // A route reaching one listener through two parentRefs attaches once.
        if listener
            .routes
            .iter()
            .any(|r| r.kind == route.kind && r.route.route == *key)
        {
            attached += 1;
            continue;
        }
        // Routes attach oldest first, so a route of the other kind already here is the older.
        let other_kind = listener
            .routes
            .iter()
            .find(|r| r.kind != route.kind && hostnames_intersect(&r.route.hostnames, &hostnames));
        if let Some(other) = other_kind {
            conflicts.push(format!(
                "listener {} already serves {} {} on an intersecting hostname",
                listener.name(),
                other.kind.as_str(),
                other.route.route
            ));
            continue;
        }
        listener.routes.push(AttachedRoute {
            age: route.age,
            kind: route.kind,
            route: DesiredRoute {
                route: key.clone(),
                hostnames,
                rules: prepared.rules.clone(),
            },
        });
        attached += 1;
    }
    if attached == 0 {
        return Err(Problem::new(
            reasons::HOSTNAME_CONFLICT,
            format!(
                "Gateway {gateway_key}: {} (an HTTPRoute and a GRPCRoute may not share a \
                 hostname on a listener; the older route keeps it)",
                conflicts.join("; ")
            ),
        ));
    }
    Ok(())
}

/// Whether two routes' hostnames on one listener share a host; empty means every host of the
/// listener.
fn hostnames_intersect(a: &[String], b: &[String]) -> bool {
    a.is_empty()
        || b.is_empty()
        || a.iter()
            .any(|x| b.iter().any(|y| hostname::intersect(Some(x), y).is_some()))
}

fn route_conditions(
    stamp: &ConditionStamp<'_>,
    accepted: &Result<(), Problem>,
    prepared: &PreparedRoute,
) -> Vec<Condition> {
    let accepted = match accepted {
        Ok(()) => stamp.condition(
            types::ACCEPTED,
            true,
            reasons::ACCEPTED,
            "Route is accepted",
        ),
        Err(problem) => stamp.condition(
            types::ACCEPTED,
            false,
            problem.reason,
            problem.message.clone(),
        ),
    };
    let resolved = stamp.summarize(
        types::RESOLVED_REFS,
        &prepared.unresolved,
        reasons::RESOLVED_REFS,
        "All backendRefs are resolved",
    );
    vec![accepted, resolved]
}

fn gateway_status(gateway: &GatewayState<'_>, options: &TranslateOptions) -> GatewayStatus {
    let stamp = ConditionStamp {
        observed_generation: gateway.observed_generation,
        now: &options.now,
    };
    let listeners = &gateway.listeners;
    let mut not_accepted: Vec<String> = listeners
        .iter()
        .filter(|l| !l.accepted())
        .map(|l| l.name().to_owned())
        .collect();
    not_accepted.extend(
        gateway
            .duplicate_names
            .iter()
            .map(|n| format!("{n} (duplicate name, ignored)")),
    );
    let accepted_count = listeners.iter().filter(|l| l.accepted()).count();
    let accepted = if let Some(rejection) = &gateway.rejection {
        stamp.condition(
            types::ACCEPTED,
            false,
            rejection.reason,
            rejection.message.clone(),
        )
    } else if not_accepted.is_empty() {
        stamp.condition(
            types::ACCEPTED,
            true,
            reasons::ACCEPTED,
            "Gateway is accepted",
        )
    } else {
        stamp.condition(
            types::ACCEPTED,
            accepted_count > 0,
            reasons::LISTENERS_NOT_VALID,
            format!("listeners not accepted: {}", not_accepted.join(", ")),
        )
    };
    let unserved = options.unserved_ports.get(gateway.key);
    let programmed_count = listeners
        .iter()
        .filter(|l| l.programmed() && l.unserved_reason(unserved).is_none())
        .count();
    let programmed = if programmed_count > 0 {
        stamp.condition(
            types::PROGRAMMED,
            true,
            reasons::PROGRAMMED,
            format!(
                "{programmed_count} of {} listeners programmed",
                listeners.len()
            ),
        )
    } else {
        stamp.condition(
            types::PROGRAMMED,
            false,
            reasons::INVALID,
            gateway.rejection.as_ref().map_or_else(
                || "no listener is programmed".to_owned(),
                |r| format!("the Gateway is not accepted: {}", r.message),
            ),
        )
    };
    let mut conditions = vec![accepted, programmed];
    if !gateway.insecure_fallback.is_empty() {
        conditions.push(stamp.condition(
            types::INSECURE_FRONTEND_VALIDATION_MODE,
            true,
            reasons::CONFIGURATION_CHANGED,
            format!(
                "client certificate validation mode AllowInsecureFallback is set in tls.frontend \
                 {}: clients without a valid certificate are let in",
                gateway.insecure_fallback.join(", ")
            ),
        ));
    }
    GatewayStatus {
        addresses: status_addresses(gateway, options),
        attached_listener_sets: None,
        conditions: Some(conditions),
        listeners: Some(gateway.listener_statuses(&options.now, unserved)),
    }
}

/// The caller's addresses for this Gateway, else its `spec.addresses`; set whatever the
/// listeners' state.
fn status_addresses(
    gateway: &GatewayState<'_>,
    options: &TranslateOptions,
) -> Option<Vec<GatewayStatusAddresses>> {
    if let Some(addresses) = options.gateway_addresses.get(gateway.key) {
        return Some(addresses.clone());
    }
    let requested: Vec<GatewayStatusAddresses> = gateway
        .gateway
        .spec
        .addresses
        .iter()
        .flatten()
        .filter_map(|a| {
            let value = a.value.as_deref().filter(|v| !v.is_empty())?;
            Some(GatewayStatusAddresses {
                r#type: Some(
                    a.r#type
                        .clone()
                        .unwrap_or_else(|| IP_ADDRESS_TYPE.to_owned()),
                ),
                value: value.to_owned(),
            })
        })
        .collect();
    (!requested.is_empty()).then_some(requested)
}

/// The programmed part of every Gateway, one entry per owned port, sorted by port.
fn desired_config(
    gateways: &[GatewayState<'_>],
    port_owners: &BTreeMap<u16, ObjectRef>,
) -> DesiredConfig {
    let mut ports = Vec::new();
    for (port, owner) in port_owners {
        let Some(gateway) = gateways.iter().find(|g| g.key == owner) else {
            continue;
        };
        if let Some(desired) = desired_port(gateway, *port) {
            ports.push(desired);
        }
    }
    DesiredConfig { ports }
}

/// The distinct ports of a Gateway's structurally valid listeners, sorted.
fn listener_ports(gateway: &GatewayState<'_>) -> Vec<u16> {
    let mut ports: Vec<u16> = gateway
        .listeners
        .iter()
        .filter(|l| l.claims_port())
        .filter_map(|l| l.port)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// One Gateway's ports, all its own: it has a data plane of its own (kube mode).
fn gateway_desired_config(gateway: &GatewayState<'_>) -> DesiredConfig {
    DesiredConfig {
        ports: listener_ports(gateway)
            .into_iter()
            .filter_map(|port| desired_port(gateway, port))
            .collect(),
    }
}

fn desired_port(gateway: &GatewayState<'_>, port: u16) -> Option<DesiredPort> {
    let https_policy = gateway.port_policies.get(&port);
    let refuse_all =
        https_policy.is_some_and(|p| matches!(p.validation, ClientValidation::RefuseAll { .. }));
    // The served listeners decide the protocol: a refused listener of the other protocol may
    // sit on the same port without conflicting.
    let served: Vec<&ListenerState<'_>> = gateway
        .listeners
        .iter()
        .filter(|l| l.port == Some(port))
        .filter(|l| {
            if refuse_all && l.protocol == Some(PortProtocol::Https) {
                l.refused_for_ca()
            } else {
                l.programmed()
            }
        })
        .collect();
    let protocol = served.first().and_then(|l| l.protocol)?;
    let client_validation = match protocol {
        PortProtocol::Http => ClientValidation::NotRequested,
        PortProtocol::Https => {
            https_policy.map_or(ClientValidation::NotRequested, |p| p.validation.clone())
        }
    };
    let refuse_all = refuse_all && protocol == PortProtocol::Https;
    let listeners: Vec<DesiredListener> = served
        .into_iter()
        .filter(|l| l.protocol == Some(protocol))
        .filter_map(|l| desired_listener(l, refuse_all))
        .collect();
    if listeners.is_empty() {
        return None;
    }
    Some(DesiredPort {
        port,
        protocol,
        gateway: gateway.key.clone(),
        client_validation,
        listeners,
    })
}

/// A programmed listener; on a port that refuses all clients its routes are left out, so that
/// nothing could be served there even if the refusal were not enforced.
fn desired_listener(l: &ListenerState<'_>, refuse_all: bool) -> Option<DesiredListener> {
    let tls = match l.protocol? {
        PortProtocol::Http => None,
        PortProtocol::Https => Some(ListenerTls {
            certificate: l.certificate.clone()?,
            options: l.tls_options.clone().unwrap_or_default(),
        }),
    };
    let mut attached: Vec<&AttachedRoute<'_>> = l.routes.iter().collect();
    attached.sort_by(|a, b| a.age.cmp(&b.age));
    let routes = if refuse_all {
        Vec::new()
    } else {
        attached.into_iter().map(|a| a.route.clone()).collect()
    };
    Some(DesiredListener {
        name: l.name().to_owned(),
        hostname: l.hostname.clone(),
        tls,
        routes,
    })
}
