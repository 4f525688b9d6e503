//! Gateway API objects -> Portcullis desired config and statuses, with no API client: the
//! same code serves a folder of manifests and the controller (`portcullis-controller`).
//!
//! - [`store`]: one consistent view of the objects ([`store::ObjectStore`]), filled by the
//!   manifest loader or by a kube watcher.
//! - [`manifests`]: loads a folder as `kubectl apply -f DIR` would.
//! - [`translate`]: the pure translation, objects in, [`portcullis_core::desired::DesiredConfig`]
//!   and Gateway API statuses out.
//! - [`check`]: the `portcullis check` command.

pub mod check;
pub mod manifests;
pub mod store;
pub mod translate;

pub use store::{Object, ObjectKey, ObjectKind, ObjectStore, StoredReferenceGrant};
pub use translate::{
    DEFAULT_CONTROLLER_NAME, SUPPORTED_FEATURES, TranslateOptions, Translation, translate,
};
