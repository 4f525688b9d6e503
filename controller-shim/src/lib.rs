//! Gateway API objects -> Portcullis desired config and statuses.
//!
//! - [`store`]: one consistent view of the objects ([`store::ObjectStore`]), filled by the
//!   manifest loader or by a kube watcher.
//! - [`manifests`]: loads a folder as `kubectl apply -f DIR` would.
//! - [`translate`]: the pure translation, objects in, [`portcullis_core::desired::DesiredConfig`]
//!   and Gateway API statuses out.
//! - [`check`]: the `portcullis check` command.
//! - [`kube`]: Kubernetes mode (the only module using kube-rs): watchers, the controller
//!   (`portcullis controller`), and the data plane's watcher (`portcullis serve --kube`).

pub mod check;
pub mod kube;
pub mod manifests;
pub mod store;
pub mod translate;

pub use store::{Object, ObjectKey, ObjectKind, ObjectStore, StoredReferenceGrant};
pub use translate::{DEFAULT_CONTROLLER_NAME, TranslateOptions, Translation, translate};
