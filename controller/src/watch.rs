//! Watchers feeding one [`ObjectStore`] (and, for the controller, the metadata of what it
//! provisioned), with bursts of events batched before the caller translates again.
//!
//! The pure part is [`WatchCache::apply`]: one watcher event in, the store updated. A watch
//! (re)start is `Init`, `InitApply`..., `InitDone`: the listed objects are buffered and replace
//! that kind's objects at `InitDone`, so objects deleted while a watch was down disappear, and a
//! half-listed kind is never translated.
//!
//! Gateway API kinds are watched at the version the cluster serves (discovery: v1, else
//! v1beta1; ReferenceGrant is v1beta1 in Gateway API v1.4 and v1 from v1.5), as untyped objects
//! converted here: an object the types cannot read is logged and left out instead of breaking
//! the whole watch. A kind whose CRD is not installed counts as present and empty, and
//! discovery is retried until it appears; an API server that cannot be asked is not taken as
//! an answer (the kind stays unsynced, so nothing is translated from a guess).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use ::kube::api::{Api, ApiResource, DynamicObject};
use ::kube::core::PartialObjectMeta;
use ::kube::runtime::WatchStreamExt;
use ::kube::runtime::watcher::{self, Event};
use ::kube::{Client, Resource};
use futures::stream::{BoxStream, SelectAll};
use futures::{StreamExt, future};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use portcullis_core::desired::ObjectRef;
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::backoff::CappedBackoff;
use portcullis_translate::store::{
    Object, ObjectKey, ObjectKind, ObjectStore, StoredReferenceGrant,
};

/// How long a burst of events may keep arriving before the translation runs: one `kubectl
/// apply` of several objects, or a watch restart, lands as one translation, and a certificate
/// rotation still reaches the data plane well within its one-second budget.
pub const BATCH_WINDOW: Duration = Duration::from_millis(100);

/// How often a Gateway API kind whose CRD is missing is looked for again.
const DISCOVERY_RETRY: Duration = Duration::from_secs(5);

/// The Gateway API group.
pub const GATEWAY_API_GROUP: &str = "gateway.networking.k8s.io";

/// Versions tried for Gateway API kinds, most preferred first.
const GATEWAY_API_VERSIONS: [&str; 3] = ["v1", "v1beta1", "v1alpha2"];

/// The label every provisioned object carries; the controller watches the objects it made
/// through it.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "portcullis";
/// Marks the Secrets that carry a Gateway's delivered config: the controller's Secret watch
/// leaves them out (they hold every certificate and key again).
pub const DELIVERED_CONFIG_LABEL: &str = "portcullis.dev/delivered-config";

/// Kinds the controller provisions and watches as metadata only (Services are in the store:
/// translation needs them anyway).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProvisionedKind {
    ServiceAccount,
    Deployment,
    /// Only ever deleted: 0.1 bound each data plane to a ClusterRole.
    ClusterRoleBinding,
    PodDisruptionBudget,
    Role,
    RoleBinding,
    /// The delivered config objects.
    Secret,
}

impl ProvisionedKind {
    /// Every kind, in the order the watches start.
    pub const ALL: [ProvisionedKind; 7] = [
        ProvisionedKind::ServiceAccount,
        ProvisionedKind::Deployment,
        ProvisionedKind::ClusterRoleBinding,
        ProvisionedKind::PodDisruptionBudget,
        ProvisionedKind::Role,
        ProvisionedKind::RoleBinding,
        ProvisionedKind::Secret,
    ];
}

impl ProvisionedKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProvisionedKind::ServiceAccount => "ServiceAccount",
            ProvisionedKind::Deployment => "Deployment",
            ProvisionedKind::ClusterRoleBinding => "ClusterRoleBinding",
            ProvisionedKind::PodDisruptionBudget => "PodDisruptionBudget",
            ProvisionedKind::Role => "Role",
            ProvisionedKind::RoleBinding => "RoleBinding",
            ProvisionedKind::Secret => "Secret",
        }
    }
}

/// The metadata of one provisioned object.
#[derive(Debug, Clone, PartialEq)]
pub struct ProvisionedObject {
    pub kind: ProvisionedKind,
    pub metadata: ObjectMeta,
}

impl ProvisionedObject {
    /// `(kind, namespace, name)`; namespace empty for cluster-scoped kinds.
    pub fn key(&self) -> ProvisionedKey {
        ProvisionedKey {
            kind: self.kind,
            object: ObjectRef::new(
                self.metadata.namespace.clone().unwrap_or_default(),
                self.metadata.name.clone().unwrap_or_default(),
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProvisionedKey {
    pub kind: ProvisionedKind,
    pub object: ObjectRef,
}

/// What one watcher feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    Store(ObjectKind),
    Provisioned(ProvisionedKind),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Store(kind) => f.write_str(kind.as_str()),
            Source::Provisioned(kind) => write!(f, "{} (provisioned)", kind.as_str()),
        }
    }
}

/// One object as a watcher delivers it (boxed: objects are large and events are moved
/// through several stream adapters).
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    Object(Box<Object>),
    /// An object the types cannot read: it is treated as absent (and logged).
    Unreadable {
        key: ObjectKey,
        error: String,
    },
    Provisioned(Box<ProvisionedObject>),
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum EntryKey {
    Store(ObjectKey),
    Provisioned(ProvisionedKey),
}

impl Entry {
    fn key(&self) -> Option<EntryKey> {
        match self {
            Entry::Object(object) => object.key().ok().map(EntryKey::Store),
            Entry::Unreadable { key, .. } => Some(EntryKey::Store(key.clone())),
            Entry::Provisioned(object) => Some(EntryKey::Provisioned(object.key())),
        }
    }
}

/// Everything the watchers delivered so far.
#[derive(Debug, Default, Clone)]
pub struct WatchCache {
    pub store: ObjectStore,
    pub provisioned: BTreeMap<ProvisionedKey, ProvisionedObject>,
    /// Objects of a (re)starting watch, until its `InitDone`.
    listing: BTreeMap<Source, Vec<Entry>>,
    /// Sources that listed everything at least once (or whose CRD is not installed).
    synced: BTreeSet<Source>,
}

impl WatchCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one watcher event; whether the cache changed.
    pub fn apply(&mut self, source: Source, event: Event<Entry>) -> bool {
        match event {
            Event::Apply(entry) => self.put(entry),
            Event::Delete(entry) => match entry.key() {
                Some(key) => self.remove(&key),
                None => false,
            },
            Event::Init => {
                self.listing.insert(source, Vec::new());
                false
            }
            Event::InitApply(entry) => {
                self.listing.entry(source).or_default().push(entry);
                false
            }
            Event::InitDone => {
                let listed = self.listing.remove(&source).unwrap_or_default();
                self.replace_all(source, listed)
            }
        }
    }

    /// A source that has nothing to list (its CRD is not installed): empty, and synced.
    pub fn mark_absent(&mut self, source: Source) -> bool {
        self.listing.remove(&source);
        let changed = self.replace_all(source, Vec::new());
        self.synced.insert(source);
        changed
    }

    /// Whether every one of `sources` listed everything at least once.
    pub fn is_synced(&self, sources: &[Source]) -> bool {
        sources.iter().all(|s| self.synced.contains(s))
    }

    fn replace_all(&mut self, source: Source, listed: Vec<Entry>) -> bool {
        self.synced.insert(source);
        let before_len = self.source_len(source);
        let mut changed = false;
        match source {
            Source::Store(kind) => {
                let mut fresh = ObjectStore::new();
                for entry in listed {
                    match entry {
                        Entry::Object(object) => {
                            if let Err(e) = fresh.insert(*object) {
                                warn!(error = %e, "watch listed an object without a name; ignored");
                            }
                        }
                        Entry::Unreadable { key, error } => log_unreadable(&key, &error),
                        Entry::Provisioned(_) => {}
                    }
                }
                changed |= take_kind(&mut self.store, fresh, kind);
            }
            Source::Provisioned(kind) => {
                let fresh: BTreeMap<ProvisionedKey, ProvisionedObject> = listed
                    .into_iter()
                    .filter_map(|entry| match entry {
                        Entry::Provisioned(object) if object.kind == kind => {
                            Some((object.key(), *object))
                        }
                        _ => None,
                    })
                    .collect();
                let old: BTreeMap<ProvisionedKey, ProvisionedObject> = self
                    .provisioned
                    .iter()
                    .filter(|(key, _)| key.kind == kind)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                if old != fresh {
                    self.provisioned.retain(|key, _| key.kind != kind);
                    self.provisioned.extend(fresh);
                    changed = true;
                }
            }
        }
        changed || before_len != self.source_len(source)
    }

    fn source_len(&self, source: Source) -> usize {
        match source {
            Source::Store(kind) => kind_len(&self.store, kind),
            Source::Provisioned(kind) => self.provisioned.keys().filter(|k| k.kind == kind).count(),
        }
    }

    fn put(&mut self, entry: Entry) -> bool {
        match entry {
            Entry::Object(object) => {
                if stored_equals(&self.store, &object) {
                    return false;
                }
                match self.store.insert(*object) {
                    Ok(_) => true,
                    Err(e) => {
                        warn!(error = %e, "watch delivered an object without a name; ignored");
                        false
                    }
                }
            }
            Entry::Unreadable { key, error } => {
                log_unreadable(&key, &error);
                self.store.remove(&key)
            }
            Entry::Provisioned(object) => {
                let key = object.key();
                if self.provisioned.get(&key) == Some(object.as_ref()) {
                    return false;
                }
                self.provisioned.insert(key, *object);
                true
            }
        }
    }

    fn remove(&mut self, key: &EntryKey) -> bool {
        match key {
            EntryKey::Store(key) => self.store.remove(key),
            EntryKey::Provisioned(key) => self.provisioned.remove(key).is_some(),
        }
    }
}

fn log_unreadable(key: &ObjectKey, error: &str) {
    warn!(object = %key, %error, "cannot read this object; it is treated as absent");
}

/// Moves `kind`'s objects from `fresh` into `store` (replacing `store`'s); whether they differ.
fn take_kind(store: &mut ObjectStore, fresh: ObjectStore, kind: ObjectKind) -> bool {
    fn swap<K: Ord, V: PartialEq>(old: &mut BTreeMap<K, V>, new: BTreeMap<K, V>) -> bool {
        let changed = *old != new;
        *old = new;
        changed
    }
    match kind {
        ObjectKind::GatewayClass => swap(&mut store.gateway_classes, fresh.gateway_classes),
        ObjectKind::Gateway => swap(&mut store.gateways, fresh.gateways),
        ObjectKind::HttpRoute => swap(&mut store.http_routes, fresh.http_routes),
        ObjectKind::GrpcRoute => swap(&mut store.grpc_routes, fresh.grpc_routes),
        ObjectKind::ReferenceGrant => swap(&mut store.reference_grants, fresh.reference_grants),
        ObjectKind::Secret => swap(&mut store.secrets, fresh.secrets),
        ObjectKind::ConfigMap => swap(&mut store.config_maps, fresh.config_maps),
        ObjectKind::Service => swap(&mut store.services, fresh.services),
        ObjectKind::EndpointSlice => swap(&mut store.endpoint_slices, fresh.endpoint_slices),
        ObjectKind::Namespace => swap(&mut store.namespaces, fresh.namespaces),
    }
}

fn kind_len(store: &ObjectStore, kind: ObjectKind) -> usize {
    match kind {
        ObjectKind::GatewayClass => store.gateway_classes.len(),
        ObjectKind::Gateway => store.gateways.len(),
        ObjectKind::HttpRoute => store.http_routes.len(),
        ObjectKind::GrpcRoute => store.grpc_routes.len(),
        ObjectKind::ReferenceGrant => store.reference_grants.len(),
        ObjectKind::Secret => store.secrets.len(),
        ObjectKind::ConfigMap => store.config_maps.len(),
        ObjectKind::Service => store.services.len(),
        ObjectKind::EndpointSlice => store.endpoint_slices.len(),
        ObjectKind::Namespace => store.namespaces.len(),
    }
}

/// Whether the store already holds exactly this object (a watch event that changes nothing
/// translation reads must not cause a translation).
fn stored_equals(store: &ObjectStore, object: &Object) -> bool {
    let Ok(key) = object.key() else {
        return false;
    };
    let at = &key.object;
    match object {
        Object::GatewayClass(o) => store.gateway_classes.get(&at.name) == Some(o),
        Object::Gateway(o) => store.gateways.get(at) == Some(o),
        Object::HttpRoute(o) => store.http_routes.get(at) == Some(o),
        Object::GrpcRoute(o) => store.grpc_routes.get(at) == Some(o),
        Object::ReferenceGrant(o) => store.reference_grants.get(at) == Some(o),
        Object::Secret(o) => store.secrets.get(at) == Some(o),
        Object::ConfigMap(o) => store.config_maps.get(at) == Some(o),
        Object::Service(o) => store.services.get(at) == Some(o),
        Object::EndpointSlice(o) => store.endpoint_slices.get(at) == Some(o),
        Object::Namespace(o) => store.namespaces.get(&at.name) == Some(o),
    }
}

/// The typed object of a Gateway API kind served as `api_version`, or why it cannot be read.
pub fn gateway_api_entry(kind: ObjectKind, api_version: &str, object: DynamicObject) -> Entry {
    let key = match ObjectKey::of(kind, &object.metadata) {
        Ok(key) => key,
        Err(e) => {
            return Entry::Unreadable {
                key: ObjectKey {
                    kind,
                    object: ObjectRef::new("", ""),
                },
                error: e.to_string(),
            };
        }
    };
    let unreadable = |error: String| Entry::Unreadable {
        key: key.clone(),
        error,
    };
    let value = match serde_json::to_value(&object) {
        Ok(value) => value,
        Err(e) => return unreadable(e.to_string()),
    };
    fn typed<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, String> {
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            format!("field `{path}`: {}", e.into_inner())
        })
    }
    let object = match kind {
        ObjectKind::GatewayClass => typed(value).map(Object::GatewayClass),
        ObjectKind::Gateway => typed(value).map(Object::Gateway),
        ObjectKind::HttpRoute => typed(value).map(Object::HttpRoute),
        ObjectKind::GrpcRoute => typed(value).map(Object::GrpcRoute),
        ObjectKind::ReferenceGrant => typed(value).map(|grant| {
            Object::ReferenceGrant(StoredReferenceGrant {
                api_version: api_version.to_owned(),
                grant,
            })
        }),
        other => Err(format!("{other} is not a Gateway API kind")),
    };
    match object {
        Ok(object) => Entry::Object(Box::new(object)),
        Err(error) => unreadable(error),
    }
}

/// The Gateway API kinds translation reads, with their `kind` names.
pub const GATEWAY_API_KINDS: [ObjectKind; 5] = [
    ObjectKind::GatewayClass,
    ObjectKind::Gateway,
    ObjectKind::HttpRoute,
    ObjectKind::GrpcRoute,
    ObjectKind::ReferenceGrant,
];

/// For each Gateway API kind, the most preferred version the cluster serves it at, given each
/// served version of the group and the kinds it serves.
pub fn choose_versions(served: &[(String, Vec<String>)]) -> BTreeMap<ObjectKind, String> {
    let mut chosen = BTreeMap::new();
    for kind in GATEWAY_API_KINDS {
        let version = GATEWAY_API_VERSIONS.iter().find(|version| {
            served.iter().any(|(v, kinds)| {
                v == *version && kinds.iter().any(|k| k.as_str() == kind.as_str())
            })
        });
        if let Some(version) = version {
            chosen.insert(kind, (*version).to_owned());
        }
    }
    chosen
}

/// What to watch.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchPlan {
    /// Gateway API kinds, discovered and watched cluster-wide.
    pub gateway_api: Vec<ObjectKind>,
    /// Core kinds, watched cluster-wide.
    pub core: Vec<ObjectKind>,
    /// Also watch the metadata of what the controller provisioned.
    pub provisioned: bool,
}

const CORE_KINDS: [ObjectKind; 5] = [
    ObjectKind::Secret,
    ObjectKind::ConfigMap,
    ObjectKind::Service,
    ObjectKind::EndpointSlice,
    ObjectKind::Namespace,
];

impl WatchPlan {
    /// The controller: every kind, every Gateway, and what it provisioned.
    pub fn controller() -> Self {
        Self {
            gateway_api: GATEWAY_API_KINDS.to_vec(),
            core: CORE_KINDS.to_vec(),
            provisioned: true,
        }
    }

    /// Every source that must be synced before translating.
    pub fn sources(&self) -> Vec<Source> {
        let mut sources: Vec<Source> = self
            .gateway_api
            .iter()
            .chain(&self.core)
            .map(|kind| Source::Store(*kind))
            .collect();
        if self.provisioned {
            sources.extend(ProvisionedKind::ALL.map(Source::Provisioned));
        }
        sources
    }
}

type WatchItem = (Source, Result<Event<Entry>, watcher::Error>);
type WatchStream = BoxStream<'static, WatchItem>;

fn map_event<K, T>(event: Event<K>, f: impl Fn(K) -> T) -> Event<T> {
    match event {
        Event::Apply(k) => Event::Apply(f(k)),
        Event::Delete(k) => Event::Delete(f(k)),
        Event::Init => Event::Init,
        Event::InitApply(k) => Event::InitApply(f(k)),
        Event::InitDone => Event::InitDone,
    }
}

fn typed_stream<K>(api: Api<K>, kind: ObjectKind) -> WatchStream
where
    K: Resource + Clone + DeserializeOwned + fmt::Debug + Send + 'static,
    Object: From<K>,
{
    typed_stream_with(api, kind, watcher::Config::default())
}

fn typed_stream_with<K>(api: Api<K>, kind: ObjectKind, config: watcher::Config) -> WatchStream
where
    K: Resource + Clone + DeserializeOwned + fmt::Debug + Send + 'static,
    Object: From<K>,
{
    let source = Source::Store(kind);
    watcher(api, config)
        .backoff(CappedBackoff::default())
        .map(move |item| {
            (
                source,
                item.map(|e| map_event(e, |k| Entry::Object(Box::new(k.into())))),
            )
        })
        .boxed()
}

fn metadata_stream<K>(api: Api<PartialObjectMeta<K>>, kind: ProvisionedKind) -> WatchStream
where
    K: Resource + Clone + DeserializeOwned + fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default,
{
    let source = Source::Provisioned(kind);
    let config =
        watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"));
    watcher(api, config)
        .backoff(CappedBackoff::default())
        .map(move |item| {
            let to_entry = |meta: PartialObjectMeta<K>| {
                Entry::Provisioned(Box::new(ProvisionedObject {
                    kind,
                    metadata: meta.metadata,
                }))
            };
            (source, item.map(|e| map_event(e, to_entry)))
        })
        .boxed()
}

fn gateway_api_stream(
    api: Api<DynamicObject>,
    config: watcher::Config,
    kind: ObjectKind,
    api_version: String,
) -> WatchStream {
    let source = Source::Store(kind);
    watcher(api, config)
        .backoff(CappedBackoff::default())
        .map(move |item| {
            let convert = |object| gateway_api_entry(kind, &api_version, object);
            (source, item.map(|e| map_event(e, convert)))
        })
        .boxed()
}

use ::kube::runtime::watcher::watcher;

/// The running watchers and what they delivered.
pub struct Watches {
    client: Client,
    plan: WatchPlan,
    sources: Vec<Source>,
    streams: SelectAll<WatchStream>,
    pub cache: WatchCache,
    /// Gateway API kinds not (yet) watched, because their CRD is missing or discovery failed.
    undiscovered: BTreeSet<ObjectKind>,
    /// The ApiResource each Gateway API kind is watched at.
    resources: BTreeMap<ObjectKind, ApiResource>,
    next_discovery: Instant,
    /// When the first unprocessed change arrived.
    dirty_since: Option<Instant>,
    /// Reported once, when every source first synced.
    announced_sync: bool,
}

impl fmt::Debug for Watches {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watches")
            .field("plan", &self.plan)
            .field("undiscovered", &self.undiscovered)
            .field("store_objects", &self.cache.store.len())
            .finish_non_exhaustive()
    }
}

impl Watches {
    /// Starts the core watchers and discovers the Gateway API kinds; the first translation can
    /// run once [`Watches::changed`] returns.
    pub async fn start(client: Client, plan: WatchPlan) -> Self {
        let mut streams: SelectAll<WatchStream> = SelectAll::new();
        for kind in &plan.core {
            let stream = match kind {
                // The delivered config objects are the controller's output, not its input:
                // they are watched as metadata below.
                ObjectKind::Secret => typed_stream_with(
                    Api::<Secret>::all(client.clone()),
                    *kind,
                    watcher::Config::default().labels(&format!("!{DELIVERED_CONFIG_LABEL}")),
                ),
                ObjectKind::ConfigMap => typed_stream(Api::<ConfigMap>::all(client.clone()), *kind),
                ObjectKind::Service => typed_stream(Api::<Service>::all(client.clone()), *kind),
                ObjectKind::EndpointSlice => {
                    typed_stream(Api::<EndpointSlice>::all(client.clone()), *kind)
                }
                ObjectKind::Namespace => typed_stream(Api::<Namespace>::all(client.clone()), *kind),
                other => {
                    warn!(kind = %other, "not a core kind; not watched");
                    continue;
                }
            };
            streams.push(stream);
        }
        if plan.provisioned {
            streams.push(metadata_stream(
                Api::<PartialObjectMeta<ServiceAccount>>::all(client.clone()),
                ProvisionedKind::ServiceAccount,
            ));
            streams.push(metadata_stream(
                Api::<PartialObjectMeta<Deployment>>::all(client.clone()),
                ProvisionedKind::Deployment,
            ));
            streams.push(metadata_stream(
                Api::<PartialObjectMeta<ClusterRoleBinding>>::all(client.clone()),
                ProvisionedKind::ClusterRoleBinding,
            ));
            streams.push(metadata_stream(
                Api::<PartialObjectMeta<PodDisruptionBudget>>::all(client.clone()),
                ProvisionedKind::PodDisruptionBudget,
            ));
            streams.push(metadata_stream(
                Api::<PartialObjectMeta<Role>>::all(client.clone()),
                ProvisionedKind::Role,
            ));
            streams.push(metadata_stream(
                Api::<PartialObjectMeta<RoleBinding>>::all(client.clone()),
                ProvisionedKind::RoleBinding,
            ));
            streams.push(metadata_stream(
                Api::<PartialObjectMeta<Secret>>::all(client.clone()),
                ProvisionedKind::Secret,
            ));
        }
        let mut watches = Self {
            client,
            sources: plan.sources(),
            undiscovered: plan.gateway_api.iter().copied().collect(),
            plan,
            streams,
            cache: WatchCache::new(),
            resources: BTreeMap::new(),
            next_discovery: Instant::now(),
            dirty_since: None,
            announced_sync: false,
        };
        watches.discover().await;
        watches
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The ApiResource a Gateway API kind is served at, once discovered.
    pub fn api_resource(&self, kind: ObjectKind) -> Option<&ApiResource> {
        self.resources.get(&kind)
    }

    pub fn is_synced(&self) -> bool {
        self.cache.is_synced(&self.sources)
    }

    /// Waits until something changed, every source is synced, and the batch window after the
    /// first change has passed. Cancel-safe: an event is applied to the cache as soon as it is
    /// received.
    pub async fn changed(&mut self) {
        loop {
            let synced = self.is_synced();
            if synced && !self.announced_sync {
                self.announced_sync = true;
                info!(objects = self.cache.store.len(), "watch caches synced");
            }
            let batch_deadline = self
                .dirty_since
                .filter(|_| synced)
                .map(|since| since + BATCH_WINDOW);
            if batch_deadline.is_some_and(|deadline| deadline <= Instant::now()) {
                self.dirty_since = None;
                return;
            }
            let discovery_due = (!self.undiscovered.is_empty()).then_some(self.next_discovery);
            let has_streams = !self.streams.is_empty();
            tokio::select! {
                item = self.streams.next(), if has_streams => {
                    if let Some((source, result)) = item {
                        self.receive(source, result);
                    }
                }
                () = sleep_until_or_forever(batch_deadline) => {}
                () = sleep_until_or_forever(discovery_due) => self.discover().await,
            }
        }
    }

    fn receive(&mut self, source: Source, result: Result<Event<Entry>, watcher::Error>) {
        match result {
            Ok(event) => {
                if self.cache.apply(source, event) {
                    self.dirty_since.get_or_insert_with(Instant::now);
                }
            }
            // The stream retries with backoff; each failure is one line.
            Err(e) => warn!(%source, error = %e, "watch failed; retrying"),
        }
    }

    /// Looks for the Gateway API kinds not watched yet and starts their watchers.
    async fn discover(&mut self) {
        self.next_discovery = Instant::now() + DISCOVERY_RETRY;
        let group = match ::kube::discovery::group(&self.client, GATEWAY_API_GROUP).await {
            Ok(group) => Some(group),
            Err(::kube::Error::Discovery(::kube::error::DiscoveryError::MissingApiGroup(_))) => {
                None
            }
            Err(e) => {
                warn!(error = %e, "cannot discover the Gateway API; retrying");
                return;
            }
        };
        let served: Vec<(String, Vec<String>)> = group
            .iter()
            .flat_map(|group| {
                group.versions().map(|version| {
                    let kinds = group
                        .versioned_resources(version)
                        .into_iter()
                        .map(|(resource, _)| resource.kind)
                        .collect();
                    (version.to_owned(), kinds)
                })
            })
            .collect();
        let chosen = choose_versions(&served);
        let undiscovered: Vec<ObjectKind> = self.undiscovered.iter().copied().collect();
        for kind in undiscovered {
            let Some(version) = chosen.get(&kind) else {
                if self.cache.mark_absent(Source::Store(kind)) {
                    self.dirty_since.get_or_insert_with(Instant::now);
                }
                debug!(%kind, "Gateway API kind not served (CRD not installed?); looking again later");
                continue;
            };
            let Some(resource) = group.as_ref().and_then(|group| {
                group
                    .versioned_resources(version)
                    .into_iter()
                    .map(|(resource, _)| resource)
                    .find(|resource| resource.kind == kind.as_str())
            }) else {
                continue;
            };
            info!(%kind, api_version = %resource.api_version, "watching");
            self.streams.push(gateway_api_stream(
                Api::<DynamicObject>::all_with(self.client.clone(), &resource),
                watcher::Config::default(),
                kind,
                resource.api_version.clone(),
            ));
            self.resources.insert(kind, resource);
            self.undiscovered.remove(&kind);
        }
    }
}

async fn sleep_until_or_forever(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use portcullis_translate::translate::{TranslateOptions, translate};

    fn meta(namespace: &str, name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_owned()),
            namespace: (!namespace.is_empty()).then(|| namespace.to_owned()),
            ..ObjectMeta::default()
        }
    }

    fn config_map(namespace: &str, name: &str, data: &str) -> Entry {
        Entry::Object(Box::new(Object::ConfigMap(ConfigMap {
            metadata: meta(namespace, name),
            data: Some(BTreeMap::from([("k".to_owned(), data.to_owned())])),
            ..ConfigMap::default()
        })))
    }

    const CM: Source = Source::Store(ObjectKind::ConfigMap);

    #[test]
    fn apply_and_delete_update_the_store() {
        let mut cache = WatchCache::new();
        assert!(cache.apply(CM, Event::Apply(config_map("a", "x", "1"))));
        assert!(
            !cache.apply(CM, Event::Apply(config_map("a", "x", "1"))),
            "same object again is no change"
        );
        assert!(cache.apply(CM, Event::Apply(config_map("a", "x", "2"))));
        assert_eq!(
            cache.store.config_maps[&ObjectRef::new("a", "x")]
                .data
                .as_ref()
                .unwrap()["k"],
            "2"
        );
        assert!(cache.apply(CM, Event::Delete(config_map("a", "x", "2"))));
        assert!(cache.store.config_maps.is_empty());
        assert!(!cache.apply(CM, Event::Delete(config_map("a", "x", "2"))));
    }

    #[test]
    fn a_relist_replaces_the_kind_and_drops_what_was_deleted_meanwhile() {
        let mut cache = WatchCache::new();
        assert!(!cache.is_synced(&[CM]));
        for event in [
            Event::Init,
            Event::InitApply(config_map("a", "x", "1")),
            Event::InitApply(config_map("a", "y", "1")),
        ] {
            assert!(!cache.apply(CM, event));
        }
        assert!(
            cache.store.config_maps.is_empty(),
            "nothing lands before InitDone"
        );
        assert!(!cache.is_synced(&[CM]));
        assert!(cache.apply(CM, Event::InitDone));
        assert!(cache.is_synced(&[CM]));
        assert_eq!(cache.store.config_maps.len(), 2);
        // Other kinds are untouched by a ConfigMap relist.
        let secret = Source::Store(ObjectKind::Secret);
        cache.apply(
            secret,
            Event::Apply(Entry::Object(Box::new(Object::Secret(Secret {
                metadata: meta("a", "s"),
                ..Secret::default()
            })))),
        );
        // The watch restarts; y was deleted while it was down.
        cache.apply(CM, Event::Init);
        cache.apply(CM, Event::InitApply(config_map("a", "x", "1")));
        assert_eq!(
            cache.store.config_maps.len(),
            2,
            "the old view stays until InitDone"
        );
        assert!(cache.apply(CM, Event::InitDone));
        assert_eq!(
            cache.store.config_maps.keys().collect::<Vec<_>>(),
            vec![&ObjectRef::new("a", "x")]
        );
        assert_eq!(cache.store.secrets.len(), 1);
        // An identical relist changes nothing.
        cache.apply(CM, Event::Init);
        cache.apply(CM, Event::InitApply(config_map("a", "x", "1")));
        assert!(!cache.apply(CM, Event::InitDone));
    }

    #[test]
    fn an_absent_crd_counts_as_synced_and_empty() {
        let mut cache = WatchCache::new();
        let grants = Source::Store(ObjectKind::ReferenceGrant);
        assert!(!cache.mark_absent(grants));
        assert!(cache.is_synced(&[grants]));
    }

    fn gateway_json(name: &str, port: i64) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"gatewayClassName": "c", "listeners": [
                {"name": "http", "port": port, "protocol": "HTTP"}]}
        }))
        .unwrap()
    }

    #[test]
    fn gateway_api_objects_are_converted_and_unreadable_ones_are_absent() {
        let entry = gateway_api_entry(
            ObjectKind::Gateway,
            "gateway.networking.k8s.io/v1",
            gateway_json("g", 80),
        );
        let Entry::Object(object) = &entry else {
            panic!("{entry:?}");
        };
        let Object::Gateway(gateway) = object.as_ref() else {
            panic!("{entry:?}");
        };
        assert_eq!(gateway.spec.listeners[0].port, 80);
        let gateways = Source::Store(ObjectKind::Gateway);
        let mut cache = WatchCache::new();
        assert!(cache.apply(gateways, Event::Apply(entry)));
        // A version the types cannot read: the stale copy must not stay in force.
        let broken: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"name": "g", "namespace": "ns"},
            "spec": {"gatewayClassName": "c", "listeners": [{"name": "l", "port": "eighty"}]}
        }))
        .unwrap();
        let entry = gateway_api_entry(ObjectKind::Gateway, "gateway.networking.k8s.io/v1", broken);
        let Entry::Unreadable { error, .. } = &entry else {
            panic!("{entry:?}");
        };
        assert!(error.contains("spec.listeners[0]"), "{error}");
        assert!(cache.apply(gateways, Event::Apply(entry)));
        assert!(cache.store.gateways.is_empty());
    }

    #[test]
    fn reference_grants_keep_the_version_they_were_served_at() {
        let grant: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "gateway.networking.k8s.io/v1beta1",
            "kind": "ReferenceGrant",
            "metadata": {"name": "r", "namespace": "ns"},
            "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "x"}],
                     "to": [{"group": "", "kind": "Secret"}]}
        }))
        .unwrap();
        let entry = gateway_api_entry(
            ObjectKind::ReferenceGrant,
            "gateway.networking.k8s.io/v1beta1",
            grant,
        );
        let Entry::Object(object) = entry else {
            panic!("{entry:?}");
        };
        let Object::ReferenceGrant(stored) = *object else {
            panic!("not a grant");
        };
        assert_eq!(stored.api_version, "gateway.networking.k8s.io/v1beta1");
    }

    #[test]
    fn versions_prefer_v1_and_fall_back_to_v1beta1() {
        let served = |list: &[(&str, &[&str])]| -> Vec<(String, Vec<String>)> {
            list.iter()
                .map(|(v, kinds)| {
                    (
                        (*v).to_owned(),
                        kinds.iter().map(|k| (*k).to_owned()).collect(),
                    )
                })
                .collect()
        };
        // Gateway API v1.4: ReferenceGrant only as v1beta1.
        let v14 = choose_versions(&served(&[
            ("v1", &["GatewayClass", "Gateway", "HTTPRoute", "GRPCRoute"]),
            (
                "v1beta1",
                &["GatewayClass", "Gateway", "HTTPRoute", "ReferenceGrant"],
            ),
        ]));
        assert_eq!(v14[&ObjectKind::Gateway], "v1");
        assert_eq!(v14[&ObjectKind::ReferenceGrant], "v1beta1");
        // v1.5 on: ReferenceGrant v1.
        let v16 = choose_versions(&served(&[
            (
                "v1",
                &["GatewayClass", "Gateway", "HTTPRoute", "ReferenceGrant"],
            ),
            ("v1beta1", &["ReferenceGrant"]),
        ]));
        assert_eq!(v16[&ObjectKind::ReferenceGrant], "v1");
        // No CRDs.
        assert!(choose_versions(&[]).is_empty());
    }

    #[test]
    fn provisioned_metadata_is_tracked_and_relisted_per_kind() {
        let deployments = Source::Provisioned(ProvisionedKind::Deployment);
        let deployment = |name: &str| {
            Entry::Provisioned(Box::new(ProvisionedObject {
                kind: ProvisionedKind::Deployment,
                metadata: meta("ns", name),
            }))
        };
        let mut cache = WatchCache::new();
        cache.apply(deployments, Event::Init);
        cache.apply(deployments, Event::InitApply(deployment("a")));
        assert!(cache.apply(deployments, Event::InitDone));
        assert!(cache.apply(deployments, Event::Apply(deployment("b"))));
        assert_eq!(cache.provisioned.len(), 2);
        assert!(cache.apply(deployments, Event::Delete(deployment("a"))));
        assert_eq!(
            cache
                .provisioned
                .keys()
                .map(|k| k.object.name.as_str())
                .collect::<Vec<_>>(),
            vec!["b"]
        );
    }

    /// The data plane's view end to end: watch events in, desired config out, including a CA
    /// rotation, a revoked ReferenceGrant, and the Gateway's deletion.
    #[test]
    fn events_drive_the_desired_config() {
        use portcullis_translate::translate::reasons;
        let gateway_source = Source::Store(ObjectKind::Gateway);
        let mut cache = WatchCache::new();
        for source in WatchPlan::controller().sources() {
            cache.mark_absent(source);
        }
        let (ca1, _) = test_certs::ca("CA one");
        let (ca2, _) = test_certs::ca("CA two");
        let (cert, key) = test_certs::server("example.com");
        cache.apply(
            Source::Store(ObjectKind::Secret),
            Event::Apply(Entry::Object(Box::new(Object::Secret(Secret {
                metadata: meta("gw", "cert"),
                type_: Some("kubernetes.io/tls".to_owned()),
                data: Some(BTreeMap::from([
                    ("tls.crt".to_owned(), ByteString(cert.into_bytes())),
                    ("tls.key".to_owned(), ByteString(key.into_bytes())),
                ])),
                ..Secret::default()
            })))),
        );
        let ca_map = |ca: &str| {
            Entry::Object(Box::new(Object::ConfigMap(ConfigMap {
                metadata: meta("cas", "ca"),
                data: Some(BTreeMap::from([("ca.crt".to_owned(), ca.to_owned())])),
                ..ConfigMap::default()
            })))
        };
        cache.apply(CM, Event::Apply(ca_map(&ca1)));
        let grant = || {
            gateway_api_entry(
                ObjectKind::ReferenceGrant,
                "gateway.networking.k8s.io/v1",
                serde_json::from_value(serde_json::json!({
                    "apiVersion": "gateway.networking.k8s.io/v1",
                    "kind": "ReferenceGrant",
                    "metadata": {"name": "r", "namespace": "cas"},
                    "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "gw"}],
                             "to": [{"group": "", "kind": "ConfigMap"}]}
                }))
                .unwrap(),
            )
        };
        let grants = Source::Store(ObjectKind::ReferenceGrant);
        cache.apply(grants, Event::Apply(grant()));
        let gateway: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"name": "g", "namespace": "gw"},
            "spec": {"gatewayClassName": "any",
                     "tls": {"frontend": {"default": {"validation": {"caCertificateRefs": [
                         {"group": "", "kind": "ConfigMap", "name": "ca", "namespace": "cas"}]}}}},
                     "listeners": [{"name": "https", "port": 8443, "protocol": "HTTPS",
                                    "tls": {"mode": "Terminate", "certificateRefs": [{"name": "cert"}]}}]}
        }))
        .unwrap();
        let gateway =
            gateway_api_entry(ObjectKind::Gateway, "gateway.networking.k8s.io/v1", gateway);
        cache.apply(gateway_source, Event::Apply(gateway.clone()));

        let desired = |cache: &WatchCache| {
            let mut options = TranslateOptions::new(portcullis_translate::check::now());
            options.extra_gateway_class = Some("any".to_owned());
            translate(&cache.store, &options)
        };
        let trust = |cache: &WatchCache| match &desired(cache).desired.ports[0].client_validation {
            portcullis_core::desired::ClientValidation::Verify { trust_anchors, .. } => {
                trust_anchors.len()
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(trust(&cache), 1);
        let first_anchor = desired(&cache).desired.ports[0].client_validation.clone();

        // CA rotation: the ConfigMap is replaced.
        assert!(cache.apply(CM, Event::Apply(ca_map(&ca2))));
        assert_ne!(
            desired(&cache).desired.ports[0].client_validation,
            first_anchor
        );

        // The grant is revoked: the port refuses every client (fail closed).
        assert!(cache.apply(grants, Event::Delete(grant())));
        let translation = desired(&cache);
        assert!(matches!(
            translation.desired.ports[0].client_validation,
            portcullis_core::desired::ClientValidation::RefuseAll { .. }
        ));
        let listener = &translation.gateway_statuses[0]
            .1
            .listeners
            .as_ref()
            .unwrap()[0];
        assert!(
            listener
                .conditions
                .iter()
                .any(|c| c.reason == reasons::REF_NOT_PERMITTED),
            "{listener:?}"
        );

        // The Gateway is deleted: nothing is served.
        assert!(cache.apply(gateway_source, Event::Delete(gateway)));
        assert!(desired(&cache).desired.ports.is_empty());
    }

    /// PEM certificates for the tests above, made with rcgen.
    mod test_certs {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

        pub fn ca(name: &str) -> (String, KeyPair) {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let cert = params.self_signed(&key).unwrap();
            (cert.pem(), key)
        }

        pub fn server(host: &str) -> (String, String) {
            let key = KeyPair::generate().unwrap();
            let params = CertificateParams::new(vec![host.to_owned()]).unwrap();
            let cert = params.self_signed(&key).unwrap();
            (cert.pem(), key.serialize_pem())
        }
    }
}
