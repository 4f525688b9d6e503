//! Kubernetes mode: the only crate that talks to an API server (kube-rs). The translation it
//! runs is `portcullis-translate`'s, the same as file mode's.
//!
//! - [`watch`]: watchers for every kind translation reads, feeding an [`portcullis_translate::ObjectStore`];
//!   bursts of events are batched before the (pure) translation runs again.
//! - [`delivery`]: each Gateway's resolved config, delivered in two Secrets that only its data
//!   plane may read; and the data plane's side (`portcullis serve --kube --gateway NS/NAME`),
//!   which watches those two Secrets and nothing else, and writes nothing.
//! - [`controller`]: `portcullis controller`: leader election, status, provisioning.
//! - [`lease`]: the coordination.k8s.io/v1 Lease lock behind the election.
//! - [`probe`]: which ports each Gateway's data-plane pods listen on (their `/readyz`), for
//!   the listeners' `Programmed` condition.
//! - [`status`]: merges translated statuses with the live objects and writes what changed
//!   with server-side apply.
//! - [`provision`]: the ServiceAccount, Deployment, Service, Role, RoleBinding and config
//!   Secrets of each Gateway.
//! - [`config`]: the controller's configuration file (`--config FILE`).
//!
//! Everything above the API calls is plain data and plain functions, tested without a server;
//! the end-to-end tests against a real API server live in `cli/tests/kube_e2e.rs`.

pub mod config;
pub mod controller;
pub mod delivery;
pub mod lease;
pub mod probe;
pub mod provision;
pub mod status;
pub mod watch;

mod admin;
mod backoff;

use thiserror::Error;

/// The field manager of every write (server-side apply and updates).
pub const FIELD_MANAGER: &str = "portcullis";

/// Errors of Kubernetes mode that end a command.
#[derive(Debug, Error)]
pub enum KubeError {
    #[error("cannot build a Kubernetes client (KUBECONFIG, ~/.kube/config or in-cluster): {0}")]
    Client(#[source] ::kube::Error),
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("cannot start the admin endpoint on {address}: {source}")]
    Admin {
        address: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error("the watcher thread stopped before it started")]
    WatcherGone,
}
