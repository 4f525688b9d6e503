//! Status writing: the translated statuses, merged with the live objects, written with
//! server-side apply (field manager [`crate::FIELD_MANAGER`]) only when they differ.
//!
//! Translation is pure and stamps every condition with the same `now`; here:
//! - a condition whose `status` did not change keeps the live `lastTransitionTime`;
//! - nothing is written when the merged status equals the live one in every field we write,
//!   so status converges and then stays put (no write loops);
//! - a route's `status.parents` (HTTPRoute and GRPCRoute alike) is an atomic list in the CRD
//!   (not a map), so server-side apply would replace other controllers' entries: the list
//!   written is the live list with only our controller's entries replaced, sent with the live `resourceVersion` so that a
//!   concurrent write by another controller makes ours fail (409) and be redone from fresh
//!   data rather than lose theirs. Our entries on routes that no longer reference one of our
//!   Gateways are removed;
//! - a Gateway or GatewayClass that stops being ours (its class or the class's controllerName
//!   changed) gets an empty status applied by our field manager: server-side apply then
//!   removes every field we had set that no other manager also owns, so stale `Accepted` /
//!   `Programmed` conditions of ours do not linger on an object another controller serves;
//! - our own write reaches the watch cache a moment later: until the object's
//!   `resourceVersion` moves, the status we wrote stands in for the live one, so a
//!   translation in between neither rewrites it nor restamps its transition times.
//!
//! [`plan_status_writes`] is the plain-data part; [`StatusWriter::write`] does the calls.

use std::collections::{BTreeMap, BTreeSet};

use ::kube::Client;
use ::kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use futures::StreamExt;
use gateway_api::experimental::gatewayclasses::GatewayClassStatus;
use gateway_api::experimental::gateways::{GatewayStatus, GatewayStatusListeners};
use gateway_api::experimental::grpcroutes::{
    GrpcRouteStatus, GrpcRouteStatusParents, GrpcRouteStatusParentsParentRef,
};
use gateway_api::experimental::httproutes::{
    HttpRouteStatus, HttpRouteStatusParents, HttpRouteStatusParentsParentRef,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta};
use portcullis_core::desired::ObjectRef;
use serde_json::json;
use tracing::{debug, info, warn};

use crate::FIELD_MANAGER;
use crate::lease::{Leadership, is_leader};
use portcullis_translate::store::{ObjectKey, ObjectKind, ObjectStore};
use portcullis_translate::translate::{Translation, types};

/// Condition types this controller writes on each object, so may remove again.
const GATEWAY_CLASS_CONDITIONS: [&str; 1] = [types::ACCEPTED];
const GATEWAY_CONDITIONS: [&str; 3] = [
    types::ACCEPTED,
    types::PROGRAMMED,
    types::INSECURE_FRONTEND_VALIDATION_MODE,
];
const LISTENER_CONDITIONS: [&str; 4] = [
    types::ACCEPTED,
    types::PROGRAMMED,
    types::RESOLVED_REFS,
    types::CONFLICTED,
];
const ROUTE_CONDITIONS: [&str; 2] = [types::ACCEPTED, types::RESOLVED_REFS];

/// A status as written.
#[derive(Debug, Clone, PartialEq)]
pub enum StatusBody {
    GatewayClass(GatewayClassStatus),
    Gateway(GatewayStatus),
    HttpRoute(HttpRouteStatus),
    GrpcRoute(GrpcRouteStatus),
}

/// One status to write.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusWrite {
    pub target: ObjectKey,
    /// The live object's `resourceVersion` the status was computed from.
    pub resource_version: Option<String>,
    pub status: StatusBody,
}

/// What this writer wrote and has not yet seen come back through the watch: by object, the
/// `resourceVersion` it was computed from and the status written.
pub type WrittenMemo = BTreeMap<ObjectKey, (Option<String>, StatusBody)>;

/// Keeps `lastTransitionTime` of every desired condition whose type is live with the same
/// `status`.
pub fn keep_transition_times(desired: &mut [Condition], live: &[Condition]) {
    for condition in desired {
        if let Some(previous) = live.iter().find(|c| c.type_ == condition.type_)
            && previous.status == condition.status
        {
            condition.last_transition_time = previous.last_transition_time.clone();
        }
    }
}

/// Whether `live` differs from `desired` in a condition we write: one of `desired`, or one of
/// `managed` that `desired` no longer has. Order does not matter (a list-map keyed by type).
fn conditions_differ(desired: &[Condition], live: &[Condition], managed: &[&str]) -> bool {
    let relevant = |c: &&Condition| {
        managed.contains(&c.type_.as_str()) || desired.iter().any(|d| d.type_ == c.type_)
    };
    let live: BTreeMap<&str, &Condition> = live
        .iter()
        .filter(relevant)
        .map(|c| (c.type_.as_str(), c))
        .collect();
    let desired_map: BTreeMap<&str, &Condition> =
        desired.iter().map(|c| (c.type_.as_str(), c)).collect();
    live != desired_map
}

pub fn merge_gateway_class_status(desired: &mut GatewayClassStatus, live: &GatewayClassStatus) {
    if let Some(conditions) = desired.conditions.as_mut() {
        keep_transition_times(conditions, live.conditions.as_deref().unwrap_or_default());
    }
}

/// The conditions we write, and `supportedFeatures`: the conformance suite reads the features
/// from the class, so a class written by an earlier version must get the current list.
pub fn gateway_class_status_differs(
    desired: &GatewayClassStatus,
    live: &GatewayClassStatus,
) -> bool {
    desired.supported_features != live.supported_features
        || conditions_differ(
            desired.conditions.as_deref().unwrap_or_default(),
            live.conditions.as_deref().unwrap_or_default(),
            &GATEWAY_CLASS_CONDITIONS,
        )
}

pub fn merge_gateway_status(desired: &mut GatewayStatus, live: &GatewayStatus) {
    if let Some(conditions) = desired.conditions.as_mut() {
        keep_transition_times(conditions, live.conditions.as_deref().unwrap_or_default());
    }
    let live_listeners = live.listeners.as_deref().unwrap_or_default();
    for listener in desired.listeners.iter_mut().flatten() {
        if let Some(previous) = live_listeners.iter().find(|l| l.name == listener.name) {
            keep_transition_times(&mut listener.conditions, &previous.conditions);
        }
    }
}

pub fn gateway_status_differs(desired: &GatewayStatus, live: &GatewayStatus) -> bool {
    if conditions_differ(
        desired.conditions.as_deref().unwrap_or_default(),
        live.conditions.as_deref().unwrap_or_default(),
        &GATEWAY_CONDITIONS,
    ) {
        return true;
    }
    if desired.addresses.as_deref().unwrap_or_default()
        != live.addresses.as_deref().unwrap_or_default()
    {
        return true;
    }
    let by_name =
        |listeners: &[GatewayStatusListeners]| -> BTreeMap<String, GatewayStatusListeners> {
            listeners
                .iter()
                .map(|l| (l.name.clone(), l.clone()))
                .collect()
        };
    let desired_listeners = by_name(desired.listeners.as_deref().unwrap_or_default());
    let live_listeners = by_name(live.listeners.as_deref().unwrap_or_default());
    if desired_listeners.len() != live_listeners.len() {
        return true;
    }
    desired_listeners.iter().any(|(name, want)| {
        live_listeners.get(name).is_none_or(|have| {
            want.attached_routes != have.attached_routes
                || want.supported_kinds != have.supported_kinds
                || conditions_differ(&want.conditions, &have.conditions, &LISTENER_CONDITIONS)
        })
    })
}

/// A route's `status.parents` entry: the API's one `RouteParentStatus`, which the generated
/// types repeat per route kind.
pub trait RouteParentStatus: Clone {
    type ParentRef: PartialEq;
    fn controller_name(&self) -> &str;
    fn parent_ref(&self) -> &Self::ParentRef;
    fn conditions(&self) -> &[Condition];
    fn conditions_mut(&mut self) -> &mut Vec<Condition>;
}

macro_rules! route_parent_status {
    ($parents:ty, $parent_ref:ty) => {
        impl RouteParentStatus for $parents {
            type ParentRef = $parent_ref;
            fn controller_name(&self) -> &str {
                &self.controller_name
            }
            fn parent_ref(&self) -> &Self::ParentRef {
                &self.parent_ref
            }
            fn conditions(&self) -> &[Condition] {
                &self.conditions
            }
            fn conditions_mut(&mut self) -> &mut Vec<Condition> {
                &mut self.conditions
            }
        }
    };
}
route_parent_status!(HttpRouteStatusParents, HttpRouteStatusParentsParentRef);
route_parent_status!(GrpcRouteStatusParents, GrpcRouteStatusParentsParentRef);

/// The `status.parents` to write on a route: the live list with our controller's entries
/// replaced by `ours` (transition times kept); `None` when that changes nothing.
pub fn route_parents_to_write<P: RouteParentStatus>(
    ours: &[P],
    live: &[P],
    controller_name: &str,
) -> Option<Vec<P>> {
    let live_ours: Vec<&P> = live
        .iter()
        .filter(|p| p.controller_name() == controller_name)
        .collect();
    let mut merged: Vec<P> = ours.to_vec();
    for parent in &mut merged {
        if let Some(previous) = live_ours
            .iter()
            .find(|p| p.parent_ref() == parent.parent_ref())
        {
            keep_transition_times(parent.conditions_mut(), previous.conditions());
        }
    }
    let unchanged = merged.len() == live_ours.len()
        && merged.iter().all(|want| {
            live_ours.iter().any(|have| {
                have.parent_ref() == want.parent_ref()
                    && !conditions_differ(want.conditions(), have.conditions(), &ROUTE_CONDITIONS)
            })
        });
    if unchanged {
        return None;
    }
    let mut parents: Vec<P> = live
        .iter()
        .filter(|p| p.controller_name() != controller_name)
        .cloned()
        .collect();
    parents.extend(merged);
    Some(parents)
}

/// The live status to merge with and compare against: what we wrote, while the watch has
/// not delivered a newer version of the object; else the object's own.
fn effective<'a, T>(
    memo: &'a WrittenMemo,
    key: &ObjectKey,
    resource_version: &Option<String>,
    live: &'a T,
    pick: impl Fn(&'a StatusBody) -> Option<&'a T>,
) -> &'a T {
    match memo.get(key) {
        Some((written_from, body)) if written_from == resource_version => {
            pick(body).unwrap_or(live)
        }
        _ => live,
    }
}

/// Every status write needed to bring the live objects of `store` to `translation`.
pub fn plan_status_writes(
    store: &ObjectStore,
    translation: &Translation,
    controller_name: &str,
    memo: &WrittenMemo,
) -> Vec<StatusWrite> {
    let mut writes = Vec::new();
    let empty_class = GatewayClassStatus::default();
    for (name, desired) in &translation.gateway_class_statuses {
        let Some(class) = store.gateway_classes.get(name) else {
            continue;
        };
        let key = ObjectKey {
            kind: ObjectKind::GatewayClass,
            object: ObjectRef::new("", name.as_str()),
        };
        let version = class.metadata.resource_version.clone();
        let live = effective(
            memo,
            &key,
            &version,
            class.status.as_ref().unwrap_or(&empty_class),
            |b| match b {
                StatusBody::GatewayClass(s) => Some(s),
                _ => None,
            },
        );
        let mut merged = desired.clone();
        merge_gateway_class_status(&mut merged, live);
        if gateway_class_status_differs(&merged, live) {
            writes.push(StatusWrite {
                target: key,
                resource_version: version,
                status: StatusBody::GatewayClass(merged),
            });
        }
    }
    let empty_gateway = GatewayStatus::default();
    for (at, desired) in &translation.gateway_statuses {
        let Some(gateway) = store.gateways.get(at) else {
            continue;
        };
        let key = ObjectKey {
            kind: ObjectKind::Gateway,
            object: at.clone(),
        };
        let version = gateway.metadata.resource_version.clone();
        let live = effective(
            memo,
            &key,
            &version,
            gateway.status.as_ref().unwrap_or(&empty_gateway),
            |b| match b {
                StatusBody::Gateway(s) => Some(s),
                _ => None,
            },
        );
        let mut merged = desired.clone();
        merge_gateway_status(&mut merged, live);
        if gateway_status_differs(&merged, live) {
            writes.push(StatusWrite {
                target: key,
                resource_version: version,
                status: StatusBody::Gateway(merged),
            });
        }
    }
    release_foreign_statuses(store, translation, memo, &mut writes);
    let route_writes = RouteWrites {
        memo,
        controller_name,
    };
    route_writes.plan(
        ObjectKind::HttpRoute,
        store
            .http_routes
            .iter()
            .map(|(at, r)| (at, &r.metadata, r.status.as_ref().map(|s| &s.parents[..]))),
        &translation.route_statuses,
        |s| &s.parents,
        |b| match b {
            StatusBody::HttpRoute(s) => Some(&s.parents),
            _ => None,
        },
        |parents| StatusBody::HttpRoute(HttpRouteStatus { parents }),
        &mut writes,
    );
    route_writes.plan(
        ObjectKind::GrpcRoute,
        store
            .grpc_routes
            .iter()
            .map(|(at, r)| (at, &r.metadata, r.status.as_ref().map(|s| &s.parents[..]))),
        &translation.grpc_route_statuses,
        |s| &s.parents,
        |b| match b {
            StatusBody::GrpcRoute(s) => Some(&s.parents),
            _ => None,
        },
        |parents| StatusBody::GrpcRoute(GrpcRouteStatus { parents }),
        &mut writes,
    );
    writes
}

/// Route status writes, the same for every route kind.
struct RouteWrites<'a> {
    memo: &'a WrittenMemo,
    controller_name: &'a str,
}

impl RouteWrites<'_> {
    /// Plans the writes for the live routes of `kind` (`(key, metadata, live parents)`), given
    /// the translated statuses: `parents_of` reads a status's parents, `written_parents` those
    /// of a memo entry, `body` wraps the parents to write.
    #[allow(clippy::too_many_arguments)] // two call sites, one per kind; each argument differs
    fn plan<'s, S, P: RouteParentStatus + 's>(
        &self,
        kind: ObjectKind,
        live_routes: impl Iterator<Item = (&'s ObjectRef, &'s ObjectMeta, Option<&'s [P]>)>,
        desired: &[(ObjectRef, S)],
        parents_of: impl Fn(&S) -> &Vec<P>,
        written_parents: impl Fn(&StatusBody) -> Option<&Vec<P>>,
        body: impl Fn(Vec<P>) -> StatusBody,
        writes: &mut Vec<StatusWrite>,
    ) {
        let desired: BTreeMap<&ObjectRef, &[P]> = desired
            .iter()
            .map(|(k, s)| (k, parents_of(s).as_slice()))
            .collect();
        for (at, metadata, live_parents) in live_routes {
            let key = ObjectKey {
                kind,
                object: at.clone(),
            };
            let version = metadata.resource_version.clone();
            let live: &[P] = match self.memo.get(&key) {
                Some((written_from, written)) if *written_from == version => {
                    written_parents(written).map_or(live_parents.unwrap_or_default(), Vec::as_slice)
                }
                _ => live_parents.unwrap_or_default(),
            };
            // A route that no longer references one of our Gateways loses our entries.
            let ours = desired.get(at).copied().unwrap_or_default();
            if let Some(parents) = route_parents_to_write(ours, live, self.controller_name) {
                writes.push(StatusWrite {
                    target: key,
                    resource_version: version,
                    status: body(parents),
                });
            }
        }
    }
}

/// Empty status applies for the GatewayClasses and Gateways that are no longer ours but still
/// carry status fields our field manager set (see the module documentation).
fn release_foreign_statuses(
    store: &ObjectStore,
    translation: &Translation,
    memo: &WrittenMemo,
    writes: &mut Vec<StatusWrite>,
) {
    let ours_classes: BTreeSet<&str> = translation
        .gateway_class_statuses
        .iter()
        .map(|(name, _)| name.as_str())
        .collect();
    let ours_gateways: BTreeSet<&ObjectRef> = translation
        .gateway_statuses
        .iter()
        .map(|(key, _)| key)
        .collect();
    let classes = store
        .gateway_classes
        .iter()
        .filter(|(name, _)| !ours_classes.contains(name.as_str()))
        .map(|(name, class)| {
            (
                ObjectKey {
                    kind: ObjectKind::GatewayClass,
                    object: ObjectRef::new("", name.as_str()),
                },
                &class.metadata,
                StatusBody::GatewayClass(GatewayClassStatus::default()),
            )
        });
    let gateways = store
        .gateways
        .iter()
        .filter(|(key, _)| !ours_gateways.contains(key))
        .map(|(key, gateway)| {
            (
                ObjectKey {
                    kind: ObjectKind::Gateway,
                    object: key.clone(),
                },
                &gateway.metadata,
                StatusBody::Gateway(GatewayStatus::default()),
            )
        });
    for (target, metadata, empty) in classes.chain(gateways) {
        if !status_fields_managed_by_us(metadata) {
            continue;
        }
        let resource_version = metadata.resource_version.clone();
        // Released already; the watch has not delivered the result yet.
        if memo.get(&target) == Some(&(resource_version.clone(), empty.clone())) {
            continue;
        }
        writes.push(StatusWrite {
            target,
            resource_version,
            status: empty,
        });
    }
}

/// Whether our field manager owns fields of the object's status subresource.
fn status_fields_managed_by_us(metadata: &ObjectMeta) -> bool {
    metadata.managed_fields.iter().flatten().any(|entry| {
        entry.manager.as_deref() == Some(FIELD_MANAGER)
            && entry.subresource.as_deref() == Some("status")
            && entry
                .fields_v1
                .as_ref()
                .is_some_and(|fields| fields.0.as_object().is_some_and(|f| !f.is_empty()))
    })
}

/// Counts of one round of writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteReport {
    pub written: usize,
    pub failed: usize,
}

/// Status writes sent at once. Each is one small PATCH; the API server handles many
/// concurrently, and a bound keeps a burst of a thousand routes from opening a thousand
/// requests.
const STATUS_WRITES_IN_FLIGHT: usize = 16;

/// Writes statuses; remembers what it wrote (see the module documentation).
#[derive(Debug, Default)]
pub struct StatusWriter {
    memo: WrittenMemo,
}

impl StatusWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Plans and performs the writes; stops early if leadership ends.
    pub async fn write(
        &mut self,
        client: &Client,
        resources: &BTreeMap<ObjectKind, ApiResource>,
        store: &ObjectStore,
        translation: &Translation,
        controller_name: &str,
        leadership: &Leadership,
    ) -> WriteReport {
        self.forget_gone(store);
        let mut report = WriteReport::default();
        let writes = plan_status_writes(store, translation, controller_name, &self.memo);
        // Several writes in flight: a thousand route statuses one round trip at a time would
        // hold up the next reconcile (and the config delivery in it) for seconds.
        let mut results = futures::stream::iter(writes)
            .map(|write| async move {
                // Leadership is checked as each write starts, as when they ran one by one.
                if !is_leader(leadership) {
                    return None;
                }
                let resource = resources.get(&write.target.kind)?;
                let result = apply_status(client, resource, &write).await;
                Some((write, result))
            })
            .buffer_unordered(STATUS_WRITES_IN_FLIGHT);
        while let Some(done) = results.next().await {
            let Some((write, result)) = done else {
                continue;
            };
            match result {
                Ok(()) => {
                    info!(object = %write.target, "status written");
                    report.written += 1;
                    self.memo.insert(
                        write.target.clone(),
                        (write.resource_version.clone(), write.status.clone()),
                    );
                }
                Err(::kube::Error::Api(status)) if status.code == 409 || status.code == 404 => {
                    // Changed or deleted since it was read: the watch brings the new version
                    // and the next round writes from it.
                    debug!(object = %write.target, reason = %status.message, "status write raced; redone from fresh data");
                    report.failed += 1;
                }
                Err(e) => {
                    warn!(object = %write.target, error = %e, "cannot write status");
                    report.failed += 1;
                }
            }
        }
        report
    }

    fn forget_gone(&mut self, store: &ObjectStore) {
        let present: BTreeSet<ObjectKey> = self
            .memo
            .keys()
            .filter(|key| match key.kind {
                ObjectKind::GatewayClass => store.gateway_classes.contains_key(&key.object.name),
                ObjectKind::Gateway => store.gateways.contains_key(&key.object),
                ObjectKind::HttpRoute => store.http_routes.contains_key(&key.object),
                ObjectKind::GrpcRoute => store.grpc_routes.contains_key(&key.object),
                _ => false,
            })
            .cloned()
            .collect();
        self.memo.retain(|key, _| present.contains(key));
    }
}

/// The server-side apply body of one status write.
pub fn status_apply_body(
    resource: &ApiResource,
    write: &StatusWrite,
) -> Result<serde_json::Value, serde_json::Error> {
    let status = match &write.status {
        StatusBody::GatewayClass(s) => serde_json::to_value(s)?,
        StatusBody::Gateway(s) => serde_json::to_value(s)?,
        StatusBody::HttpRoute(s) => serde_json::to_value(s)?,
        StatusBody::GrpcRoute(s) => serde_json::to_value(s)?,
    };
    let mut metadata = json!({ "name": write.target.object.name });
    if write.target.kind.is_namespaced() {
        metadata["namespace"] = json!(write.target.object.namespace);
    }
    // Routes: the parents list is replaced whole, so it must be based on the latest version.
    if matches!(
        write.target.kind,
        ObjectKind::HttpRoute | ObjectKind::GrpcRoute
    ) && let Some(version) = &write.resource_version
    {
        metadata["resourceVersion"] = json!(version);
    }
    Ok(json!({
        "apiVersion": resource.api_version,
        "kind": resource.kind,
        "metadata": metadata,
        "status": status,
    }))
}

async fn apply_status(
    client: &Client,
    resource: &ApiResource,
    write: &StatusWrite,
) -> Result<(), ::kube::Error> {
    let body = status_apply_body(resource, write).map_err(::kube::Error::SerdeError)?;
    let api: Api<DynamicObject> = if write.target.kind.is_namespaced() {
        Api::namespaced_with(client.clone(), &write.target.object.namespace, resource)
    } else {
        Api::all_with(client.clone(), resource)
    };
    api.patch_status(
        &write.target.object.name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_api::experimental::httproutes::HttpRouteStatusParentsParentRef;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry, Time};
    use k8s_openapi::jiff::Timestamp;
    use portcullis_translate::manifests::{LoadedManifests, load_text};
    use portcullis_translate::translate::{TranslateOptions, translate};
    use std::path::Path;

    const OURS: &str = "portcullis.dev/gateway-controller";

    fn at(second: i64) -> Time {
        Time(Timestamp::from_second(second).unwrap())
    }

    fn condition(type_: &str, status: &str, reason: &str, second: i64) -> Condition {
        Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message: String::new(),
            observed_generation: Some(1),
            last_transition_time: at(second),
        }
    }

    #[test]
    fn transition_times_move_only_with_the_status() {
        let live = vec![
            condition("Accepted", "True", "Accepted", 100),
            condition("Programmed", "False", "Invalid", 100),
        ];
        let mut desired = vec![
            condition("Accepted", "True", "Accepted", 200),
            condition("Programmed", "True", "Programmed", 200),
            condition("ResolvedRefs", "True", "ResolvedRefs", 200),
        ];
        keep_transition_times(&mut desired, &live);
        assert_eq!(desired[0].last_transition_time, at(100));
        assert_eq!(desired[1].last_transition_time, at(200));
        assert_eq!(desired[2].last_transition_time, at(200));
    }

    #[test]
    fn condition_comparison_ignores_order_and_foreign_types_but_not_dropped_ones() {
        let a = condition("Accepted", "True", "Accepted", 1);
        let p = condition("Programmed", "True", "Programmed", 1);
        let insecure = condition(
            "InsecureFrontendValidationMode",
            "True",
            "ConfigurationChanged",
            1,
        );
        let foreign = condition("example.com/Custom", "True", "Whatever", 1);
        let desired = [a.clone(), p.clone()];
        assert!(!conditions_differ(
            &desired,
            &[p.clone(), a.clone()],
            &GATEWAY_CONDITIONS
        ));
        assert!(!conditions_differ(
            &desired,
            &[a.clone(), p.clone(), foreign],
            &GATEWAY_CONDITIONS
        ));
        assert!(conditions_differ(
            &desired,
            &[a.clone(), p.clone(), insecure],
            &GATEWAY_CONDITIONS
        ));
        assert!(conditions_differ(&desired, &[a], &GATEWAY_CONDITIONS));
    }

    fn parent(
        controller: &str,
        gateway: &str,
        accepted: &str,
        second: i64,
    ) -> HttpRouteStatusParents {
        HttpRouteStatusParents {
            controller_name: controller.to_owned(),
            parent_ref: HttpRouteStatusParentsParentRef {
                name: gateway.to_owned(),
                ..HttpRouteStatusParentsParentRef::default()
            },
            conditions: vec![condition("Accepted", accepted, "Accepted", second)],
        }
    }

    #[test]
    fn route_parents_of_other_controllers_are_kept() {
        let theirs = parent("example.com/other", "theirs", "True", 50);
        let live = vec![theirs.clone(), parent(OURS, "mine", "True", 100)];
        // Same status, new stamp: nothing to write.
        assert_eq!(
            route_parents_to_write(&[parent(OURS, "mine", "True", 200)], &live, OURS),
            None
        );
        // Our entry changes: theirs stays untouched, ours gets the new time.
        let written =
            route_parents_to_write(&[parent(OURS, "mine", "False", 200)], &live, OURS).unwrap();
        assert_eq!(written.len(), 2);
        assert_eq!(written[0], theirs);
        assert_eq!(written[1].conditions[0].status, "False");
        assert_eq!(written[1].conditions[0].last_transition_time, at(200));
        // The route left our Gateways: our entry goes, theirs stays.
        assert_eq!(
            route_parents_to_write(&[], &live, OURS),
            Some(vec![theirs.clone()])
        );
        assert_eq!(route_parents_to_write(&[], &[theirs], OURS), None);
    }

    const GUIDE: &str = "\
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: portcullis, resourceVersion: '1'}
spec: {controllerName: portcullis.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: g, namespace: ns, resourceVersion: '2', generation: 1}
spec:
  gatewayClassName: portcullis
  listeners: [{name: http, port: 8080, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: ns, resourceVersion: '3', generation: 1}
spec:
  parentRefs: [{name: g}]
  rules: [{}]
";

    fn store() -> ObjectStore {
        let mut loaded = LoadedManifests::default();
        load_text(Path::new("t.yaml"), GUIDE, false, &mut loaded).unwrap();
        loaded.store
    }

    fn translation(store: &ObjectStore, second: i64) -> Translation {
        translate(store, &TranslateOptions::new(at(second)))
    }

    /// Applies planned writes to the store as the API server would: a new resourceVersion,
    /// and our field manager's status entry in managedFields while we set any field.
    fn apply_writes(store: &mut ObjectStore, writes: &[StatusWrite]) {
        for write in writes {
            let version = Some(format!(
                "{}0",
                write.resource_version.clone().unwrap_or_default()
            ));
            let fields = match &write.status {
                StatusBody::GatewayClass(s) => serde_json::to_value(s),
                StatusBody::Gateway(s) => serde_json::to_value(s),
                StatusBody::HttpRoute(s) => serde_json::to_value(s),
                StatusBody::GrpcRoute(s) => serde_json::to_value(s),
            }
            .unwrap();
            let metadata = match &write.status {
                StatusBody::GatewayClass(s) => {
                    let class = store
                        .gateway_classes
                        .get_mut(&write.target.object.name)
                        .unwrap();
                    class.status = Some(s.clone());
                    &mut class.metadata
                }
                StatusBody::Gateway(s) => {
                    let gateway = store.gateways.get_mut(&write.target.object).unwrap();
                    gateway.status = Some(s.clone());
                    &mut gateway.metadata
                }
                StatusBody::HttpRoute(s) => {
                    let route = store.http_routes.get_mut(&write.target.object).unwrap();
                    route.status = Some(s.clone());
                    &mut route.metadata
                }
                StatusBody::GrpcRoute(s) => {
                    let route = store.grpc_routes.get_mut(&write.target.object).unwrap();
                    route.status = Some(s.clone());
                    &mut route.metadata
                }
            };
            metadata.resource_version = version;
            let managed = metadata.managed_fields.get_or_insert_with(Vec::new);
            managed.retain(|m| m.manager.as_deref() != Some(FIELD_MANAGER));
            if fields.as_object().is_some_and(|f| !f.is_empty()) {
                managed.push(ManagedFieldsEntry {
                    manager: Some(FIELD_MANAGER.to_owned()),
                    operation: Some("Apply".to_owned()),
                    subresource: Some("status".to_owned()),
                    fields_v1: Some(FieldsV1(json!({ "f:status": {} }))),
                    ..ManagedFieldsEntry::default()
                });
            }
        }
    }

    #[test]
    fn a_gateway_or_class_no_longer_ours_gets_our_status_fields_released_once() {
        let mut store = store();
        let memo = WrittenMemo::new();
        let first = plan_status_writes(&store, &translation(&store, 100), OURS, &memo);
        apply_writes(&mut store, &first);
        let gateway_key = store.gateways.keys().next().unwrap().clone();
        store
            .gateways
            .get_mut(&gateway_key)
            .unwrap()
            .spec
            .gateway_class_name = "someone-else".to_owned();
        let class_name = store.gateway_classes.keys().next().unwrap().clone();
        store
            .gateway_classes
            .get_mut(&class_name)
            .unwrap()
            .spec
            .controller_name = "example.com/another-controller".to_owned();

        let release = plan_status_writes(&store, &translation(&store, 200), OURS, &memo);
        let released: Vec<(ObjectKind, &StatusBody)> =
            release.iter().map(|w| (w.target.kind, &w.status)).collect();
        assert_eq!(
            released,
            vec![
                (
                    ObjectKind::GatewayClass,
                    &StatusBody::GatewayClass(GatewayClassStatus::default())
                ),
                (
                    ObjectKind::Gateway,
                    &StatusBody::Gateway(GatewayStatus::default())
                ),
                // The route's parent entry for that Gateway goes too.
                (
                    ObjectKind::HttpRoute,
                    &StatusBody::HttpRoute(HttpRouteStatus {
                        parents: Vec::new()
                    })
                ),
            ]
        );
        // The empty apply is the whole body: no field of ours survives it.
        let gateway_write = release.get(1).unwrap();
        let resource = ApiResource::erase::<gateway_api::experimental::gateways::Gateway>(&());
        let body = status_apply_body(&resource, gateway_write).unwrap();
        assert_eq!(body["status"], json!({}));

        // Written but not yet seen back: not repeated.
        let mut pending = WrittenMemo::new();
        for write in &release {
            pending.insert(
                write.target.clone(),
                (write.resource_version.clone(), write.status.clone()),
            );
        }
        let again = plan_status_writes(&store, &translation(&store, 201), OURS, &pending);
        assert!(
            again.iter().all(|w| w.target.kind == ObjectKind::HttpRoute),
            "{again:?}"
        );

        // Seen back (our manager owns nothing now): nothing more to write, ever.
        apply_writes(&mut store, &release);
        for second in [300, 10_000] {
            assert_eq!(
                plan_status_writes(&store, &translation(&store, second), OURS, &memo),
                Vec::new()
            );
        }
    }

    #[test]
    fn statuses_converge_and_stay_put() {
        let mut store = store();
        let memo = WrittenMemo::new();
        let first = plan_status_writes(&store, &translation(&store, 100), OURS, &memo);
        let kinds: Vec<ObjectKind> = first.iter().map(|w| w.target.kind).collect();
        assert_eq!(
            kinds,
            vec![
                ObjectKind::GatewayClass,
                ObjectKind::Gateway,
                ObjectKind::HttpRoute
            ]
        );
        apply_writes(&mut store, &first);
        // Later translations stamp a later time; nothing changed, so nothing is written.
        for second in [101, 500, 10_000] {
            assert_eq!(
                plan_status_writes(&store, &translation(&store, second), OURS, &memo),
                Vec::new()
            );
        }
    }

    #[test]
    fn a_class_without_the_supported_features_gets_them_once() {
        let mut store = store();
        let memo = WrittenMemo::new();
        let first = plan_status_writes(&store, &translation(&store, 100), OURS, &memo);
        apply_writes(&mut store, &first);
        // As an earlier version wrote it: the same conditions, no features.
        let class = store.gateway_classes.values_mut().next().unwrap();
        class.status.as_mut().unwrap().supported_features = None;

        let writes = plan_status_writes(&store, &translation(&store, 200), OURS, &memo);
        let [write] = writes.as_slice() else {
            panic!("one write expected: {writes:?}")
        };
        let StatusBody::GatewayClass(status) = &write.status else {
            panic!("a class write expected: {write:?}")
        };
        let features: Vec<&str> = status
            .supported_features
            .iter()
            .flatten()
            .map(|f| f.name.as_str())
            .collect();
        assert_eq!(features, portcullis_translate::SUPPORTED_FEATURES);
        // The unchanged condition keeps its transition time.
        assert_eq!(
            status.conditions.as_deref().unwrap()[0].last_transition_time,
            at(100)
        );
        apply_writes(&mut store, &writes);
        assert_eq!(
            plan_status_writes(&store, &translation(&store, 300), OURS, &memo),
            Vec::new()
        );
    }

    #[test]
    fn a_write_not_yet_seen_by_the_watch_is_not_repeated() {
        let store = store();
        let mut memo = WrittenMemo::new();
        let first = plan_status_writes(&store, &translation(&store, 100), OURS, &memo);
        for write in &first {
            memo.insert(
                write.target.clone(),
                (write.resource_version.clone(), write.status.clone()),
            );
        }
        // The store still holds the old versions (the watch is behind).
        assert_eq!(
            plan_status_writes(&store, &translation(&store, 101), OURS, &memo),
            Vec::new()
        );
    }

    #[test]
    fn a_real_change_keeps_unchanged_transition_times() {
        let mut store = store();
        let memo = WrittenMemo::new();
        let first = plan_status_writes(&store, &translation(&store, 100), OURS, &memo);
        apply_writes(&mut store, &first);
        // The route now points at a listener that does not exist.
        let route = store
            .http_routes
            .get_mut(&ObjectRef::new("ns", "r"))
            .unwrap();
        route.spec.parent_refs.as_mut().unwrap()[0].section_name = Some("nope".to_owned());
        route.metadata.generation = Some(2);
        let writes = plan_status_writes(&store, &translation(&store, 200), OURS, &memo);
        assert_eq!(writes.len(), 2, "{writes:?}");
        let StatusBody::HttpRoute(route_status) = &writes[1].status else {
            panic!("{writes:?}");
        };
        let accepted = &route_status.parents[0].conditions[0];
        assert_eq!(
            (
                accepted.status.as_str(),
                accepted.last_transition_time.clone()
            ),
            ("False", at(200))
        );
        let StatusBody::Gateway(gateway_status) = &writes[0].status else {
            panic!("{writes:?}");
        };
        // attachedRoutes went to 0; the conditions did not flip, so their times stay.
        let listener = &gateway_status.listeners.as_ref().unwrap()[0];
        assert_eq!(listener.attached_routes, 0);
        assert!(
            listener
                .conditions
                .iter()
                .all(|c| c.last_transition_time == at(100))
        );
    }

    const GRPC: &str = "\
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: portcullis, resourceVersion: '1'}
spec: {controllerName: portcullis.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: g, namespace: ns, resourceVersion: '2', generation: 1}
spec:
  gatewayClassName: portcullis
  listeners: [{name: http, port: 8080, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: rpc, namespace: ns, resourceVersion: '4', generation: 1}
spec:
  parentRefs: [{name: g}]
  rules: [{matches: [{method: {service: pkg.Echo}}]}]
status:
  parents:
  - controllerName: example.com/other
    parentRef: {name: elsewhere}
    conditions: []
";

    #[test]
    fn grpc_route_statuses_are_written_keep_other_controllers_and_converge() {
        let mut loaded = LoadedManifests::default();
        load_text(Path::new("t.yaml"), GRPC, false, &mut loaded).unwrap();
        let mut store = loaded.store;
        let memo = WrittenMemo::new();
        let first = plan_status_writes(&store, &translation(&store, 100), OURS, &memo);
        let kinds: Vec<ObjectKind> = first.iter().map(|w| w.target.kind).collect();
        assert_eq!(
            kinds,
            vec![
                ObjectKind::GatewayClass,
                ObjectKind::Gateway,
                ObjectKind::GrpcRoute
            ]
        );
        let StatusBody::GrpcRoute(route) = &first[2].status else {
            panic!("{first:?}");
        };
        assert_eq!(route.parents.len(), 2);
        assert_eq!(route.parents[0].controller_name, "example.com/other");
        assert_eq!(route.parents[1].controller_name, OURS);
        assert_eq!(route.parents[1].conditions[0].status, "True");
        let resource = ApiResource::erase::<gateway_api::experimental::grpcroutes::GrpcRoute>(&());
        let body = status_apply_body(&resource, &first[2]).unwrap();
        assert_eq!(body["kind"], "GRPCRoute");
        assert_eq!(
            body["metadata"],
            json!({"name": "rpc", "namespace": "ns", "resourceVersion": "4"})
        );
        apply_writes(&mut store, &first);
        for second in [101, 10_000] {
            assert_eq!(
                plan_status_writes(&store, &translation(&store, second), OURS, &memo),
                Vec::new()
            );
        }
        // The route leaves our Gateway: our entry goes, the other controller's stays.
        let route = store
            .grpc_routes
            .get_mut(&ObjectRef::new("ns", "rpc"))
            .unwrap();
        route.spec.parent_refs = None;
        let writes = plan_status_writes(&store, &translation(&store, 200), OURS, &memo);
        let last = writes.last().unwrap();
        assert_eq!(last.target.kind, ObjectKind::GrpcRoute);
        let StatusBody::GrpcRoute(route) = &last.status else {
            panic!("{writes:?}");
        };
        assert_eq!(route.parents.len(), 1);
        assert_eq!(route.parents[0].controller_name, "example.com/other");
    }

    #[test]
    fn apply_bodies_carry_type_identity_and_for_routes_the_version() {
        let store = store();
        let writes =
            plan_status_writes(&store, &translation(&store, 100), OURS, &WrittenMemo::new());
        let resource = |kind: &str| ApiResource {
            group: "gateway.networking.k8s.io".to_owned(),
            version: "v1".to_owned(),
            api_version: "gateway.networking.k8s.io/v1".to_owned(),
            kind: kind.to_owned(),
            plural: String::new(),
        };
        let class = status_apply_body(&resource("GatewayClass"), &writes[0]).unwrap();
        assert_eq!(class["metadata"], json!({"name": "portcullis"}));
        let route = status_apply_body(&resource("HTTPRoute"), &writes[2]).unwrap();
        assert_eq!(
            route["metadata"],
            json!({"name": "r", "namespace": "ns", "resourceVersion": "3"})
        );
        assert_eq!(route["kind"], "HTTPRoute");
        assert_eq!(route["status"]["parents"][0]["controllerName"], OURS);
    }
}
