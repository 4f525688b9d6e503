//! One consistent view of every Kubernetes object the translation reads.
//!
//! Plain `BTreeMap`s keyed by `namespace/name` (or by name for cluster-scoped kinds), so that
//! iteration, and therefore translation, is deterministic. The manifest loader fills it from a
//! folder; a kube watcher fills the same store by [`ObjectStore::insert`] and
//! [`ObjectStore::remove`] on every watch event.

use std::collections::BTreeMap;
use std::fmt;

use gateway_api::experimental::gatewayclasses::GatewayClass;
use gateway_api::experimental::gateways::Gateway;
use gateway_api::experimental::grpcroutes::GrpcRoute;
use gateway_api::experimental::httproutes::HttpRoute;
use gateway_api::experimental::referencegrants::ReferenceGrant;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use portcullis_core::desired::ObjectRef;
use thiserror::Error;

/// The namespace `kubectl apply` puts a namespaced object in when its manifest names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// A ReferenceGrant and the API version it was served as. v1beta1 (Gateway API v1.4) and v1
/// (from v1.5) have the same shape, so both are stored as one type; the version is kept for
/// messages and for writing back.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredReferenceGrant {
    pub api_version: String,
    pub grant: ReferenceGrant,
}

/// Every kind the store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    GatewayClass,
    Gateway,
    HttpRoute,
    GrpcRoute,
    ReferenceGrant,
    Secret,
    ConfigMap,
    Service,
    EndpointSlice,
    Namespace,
}

impl ObjectKind {
    /// The Kubernetes `kind` string.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::GatewayClass => "GatewayClass",
            ObjectKind::Gateway => "Gateway",
            ObjectKind::HttpRoute => "HTTPRoute",
            ObjectKind::GrpcRoute => "GRPCRoute",
            ObjectKind::ReferenceGrant => "ReferenceGrant",
            ObjectKind::Secret => "Secret",
            ObjectKind::ConfigMap => "ConfigMap",
            ObjectKind::Service => "Service",
            ObjectKind::EndpointSlice => "EndpointSlice",
            ObjectKind::Namespace => "Namespace",
        }
    }

    /// Cluster-scoped kinds are keyed by name alone.
    pub fn is_namespaced(self) -> bool {
        !matches!(self, ObjectKind::GatewayClass | ObjectKind::Namespace)
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One object of a kind the store holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    GatewayClass(GatewayClass),
    Gateway(Gateway),
    HttpRoute(HttpRoute),
    GrpcRoute(GrpcRoute),
    ReferenceGrant(StoredReferenceGrant),
    Secret(Secret),
    ConfigMap(ConfigMap),
    Service(Service),
    EndpointSlice(EndpointSlice),
    Namespace(Namespace),
}

impl Object {
    pub fn kind(&self) -> ObjectKind {
        match self {
            Object::GatewayClass(_) => ObjectKind::GatewayClass,
            Object::Gateway(_) => ObjectKind::Gateway,
            Object::HttpRoute(_) => ObjectKind::HttpRoute,
            Object::GrpcRoute(_) => ObjectKind::GrpcRoute,
            Object::ReferenceGrant(_) => ObjectKind::ReferenceGrant,
            Object::Secret(_) => ObjectKind::Secret,
            Object::ConfigMap(_) => ObjectKind::ConfigMap,
            Object::Service(_) => ObjectKind::Service,
            Object::EndpointSlice(_) => ObjectKind::EndpointSlice,
            Object::Namespace(_) => ObjectKind::Namespace,
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::GatewayClass(o) => &o.metadata,
            Object::Gateway(o) => &o.metadata,
            Object::HttpRoute(o) => &o.metadata,
            Object::GrpcRoute(o) => &o.metadata,
            Object::ReferenceGrant(o) => &o.grant.metadata,
            Object::Secret(o) => &o.metadata,
            Object::ConfigMap(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::Namespace(o) => &o.metadata,
        }
    }

    /// The key the store files this object under.
    pub fn key(&self) -> Result<ObjectKey, StoreError> {
        ObjectKey::of(self.kind(), self.metadata())
    }
}

macro_rules! object_from {
    ($variant:ident, $ty:ty) => {
        impl From<$ty> for Object {
            fn from(o: $ty) -> Self {
                Object::$variant(o)
            }
        }
    };
}
object_from!(GatewayClass, GatewayClass);
object_from!(Gateway, Gateway);
object_from!(HttpRoute, HttpRoute);
object_from!(GrpcRoute, GrpcRoute);
object_from!(ReferenceGrant, StoredReferenceGrant);
object_from!(Secret, Secret);
object_from!(ConfigMap, ConfigMap);
object_from!(Service, Service);
object_from!(EndpointSlice, EndpointSlice);
object_from!(Namespace, Namespace);

/// Where an object lives in the store: its kind, and `namespace/name` (namespace empty for
/// cluster-scoped kinds).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: ObjectKind,
    pub object: ObjectRef,
}

impl ObjectKey {
    /// The key of an object of `kind` with `metadata`; a namespaced object without a namespace
    /// is in [`DEFAULT_NAMESPACE`], as `kubectl apply` would put it.
    pub fn of(kind: ObjectKind, metadata: &ObjectMeta) -> Result<Self, StoreError> {
        let name = metadata
            .name
            .as_deref()
            .filter(|n| !n.is_empty())
            .ok_or(StoreError::MissingName { kind })?;
        let namespace = if kind.is_namespaced() {
            metadata
                .namespace
                .as_deref()
                .filter(|n| !n.is_empty())
                .unwrap_or(DEFAULT_NAMESPACE)
        } else {
            ""
        };
        Ok(Self {
            kind,
            object: ObjectRef::new(namespace, name),
        })
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind.is_namespaced() {
            write!(f, "{} {}", self.kind, self.object)
        } else {
            write!(f, "{} {}", self.kind, self.object.name)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StoreError {
    #[error("{kind} has no metadata.name")]
    MissingName { kind: ObjectKind },
}

/// Every object translation reads. Cluster-scoped kinds are keyed by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ObjectStore {
    pub gateway_classes: BTreeMap<String, GatewayClass>,
    pub gateways: BTreeMap<ObjectRef, Gateway>,
    pub http_routes: BTreeMap<ObjectRef, HttpRoute>,
    pub grpc_routes: BTreeMap<ObjectRef, GrpcRoute>,
    pub reference_grants: BTreeMap<ObjectRef, StoredReferenceGrant>,
    pub secrets: BTreeMap<ObjectRef, Secret>,
    pub config_maps: BTreeMap<ObjectRef, ConfigMap>,
    pub services: BTreeMap<ObjectRef, Service>,
    pub endpoint_slices: BTreeMap<ObjectRef, EndpointSlice>,
    pub namespaces: BTreeMap<String, Namespace>,
}

impl ObjectStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces an object (a later manifest, or a watch update, wins). A namespaced
    /// object without a namespace gets [`DEFAULT_NAMESPACE`] written into its metadata too, so
    /// that translation sees the same namespace as the key.
    pub fn insert(&mut self, object: impl Into<Object>) -> Result<ObjectKey, StoreError> {
        let mut object = object.into();
        let key = object.key()?;
        if key.kind.is_namespaced() {
            set_namespace(&mut object, &key.object.namespace);
        }
        let at = key.object.clone();
        match object {
            Object::GatewayClass(o) => {
                self.gateway_classes.insert(at.name, o);
            }
            Object::Gateway(o) => {
                self.gateways.insert(at, o);
            }
            Object::HttpRoute(o) => {
                self.http_routes.insert(at, o);
            }
            Object::GrpcRoute(o) => {
                self.grpc_routes.insert(at, o);
            }
            Object::ReferenceGrant(o) => {
                self.reference_grants.insert(at, o);
            }
            Object::Secret(o) => {
                self.secrets.insert(at, o);
            }
            Object::ConfigMap(o) => {
                self.config_maps.insert(at, o);
            }
            Object::Service(o) => {
                self.services.insert(at, o);
            }
            Object::EndpointSlice(o) => {
                self.endpoint_slices.insert(at, o);
            }
            Object::Namespace(o) => {
                self.namespaces.insert(at.name, o);
            }
        }
        Ok(key)
    }

    /// Removes the object at `key`; whether there was one.
    pub fn remove(&mut self, key: &ObjectKey) -> bool {
        let at = &key.object;
        match key.kind {
            ObjectKind::GatewayClass => self.gateway_classes.remove(&at.name).is_some(),
            ObjectKind::Gateway => self.gateways.remove(at).is_some(),
            ObjectKind::HttpRoute => self.http_routes.remove(at).is_some(),
            ObjectKind::GrpcRoute => self.grpc_routes.remove(at).is_some(),
            ObjectKind::ReferenceGrant => self.reference_grants.remove(at).is_some(),
            ObjectKind::Secret => self.secrets.remove(at).is_some(),
            ObjectKind::ConfigMap => self.config_maps.remove(at).is_some(),
            ObjectKind::Service => self.services.remove(at).is_some(),
            ObjectKind::EndpointSlice => self.endpoint_slices.remove(at).is_some(),
            ObjectKind::Namespace => self.namespaces.remove(&at.name).is_some(),
        }
    }

    /// Removes the stored object with the same kind and key as `object` (a watch delete).
    pub fn remove_object(&mut self, object: &Object) -> Result<bool, StoreError> {
        Ok(self.remove(&object.key()?))
    }

    /// How many objects the store holds.
    pub fn len(&self) -> usize {
        self.gateway_classes.len()
            + self.gateways.len()
            + self.http_routes.len()
            + self.grpc_routes.len()
            + self.reference_grants.len()
            + self.secrets.len()
            + self.config_maps.len()
            + self.services.len()
            + self.endpoint_slices.len()
            + self.namespaces.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn set_namespace(object: &mut Object, namespace: &str) {
    let metadata = match object {
        Object::Gateway(o) => &mut o.metadata,
        Object::HttpRoute(o) => &mut o.metadata,
        Object::GrpcRoute(o) => &mut o.metadata,
        Object::ReferenceGrant(o) => &mut o.grant.metadata,
        Object::Secret(o) => &mut o.metadata,
        Object::ConfigMap(o) => &mut o.metadata,
        Object::Service(o) => &mut o.metadata,
        Object::EndpointSlice(o) => &mut o.metadata,
        Object::GatewayClass(_) | Object::Namespace(_) => return,
    };
    metadata.namespace = Some(namespace.to_owned());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(namespace: Option<&str>, name: &str) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: namespace.map(str::to_owned),
                ..ObjectMeta::default()
            },
            ..Secret::default()
        }
    }

    #[test]
    fn namespaced_objects_without_a_namespace_land_in_default() {
        let mut store = ObjectStore::new();
        let key = store.insert(secret(None, "s")).unwrap();
        assert_eq!(key.object, ObjectRef::new("default", "s"));
        let stored = &store.secrets[&ObjectRef::new("default", "s")];
        assert_eq!(stored.metadata.namespace.as_deref(), Some("default"));
    }

    #[test]
    fn insert_replaces_and_remove_deletes() {
        let mut store = ObjectStore::new();
        store.insert(secret(Some("a"), "s")).unwrap();
        store.insert(secret(Some("a"), "s")).unwrap();
        assert_eq!(store.len(), 1);
        let object = Object::from(secret(Some("a"), "s"));
        assert!(store.remove_object(&object).unwrap());
        assert!(!store.remove_object(&object).unwrap());
        assert!(store.is_empty());
    }

    #[test]
    fn objects_without_a_name_are_refused() {
        let mut store = ObjectStore::new();
        let err = store.insert(secret(Some("a"), "")).unwrap_err();
        assert_eq!(
            err,
            StoreError::MissingName {
                kind: ObjectKind::Secret
            }
        );
    }

    #[test]
    fn cluster_scoped_kinds_are_keyed_by_name() {
        let mut store = ObjectStore::new();
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some("n".to_owned()),
                namespace: Some("ignored".to_owned()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        let key = store.insert(ns).unwrap();
        assert_eq!(key.to_string(), "Namespace n");
        assert!(store.namespaces.contains_key("n"));
    }
}
