//! The admin endpoints, served off the shards on a thread of their own by the shared admin
//! server (`portcullis_admin_http`: concurrent connections, a deadline each, bounded heads).
//!
//! - `--admin ADDR` (default `127.0.0.1:9901`), the probe address:
//!   - `/healthz`: the process is alive.
//!   - `/readyz`: every shard applied a config snapshot and listens on each of its ports,
//!     and the process is not draining (else 503, naming the ports not served and why).
//!   - `/metrics`: Prometheus text format, summed over shards at scrape time.
//! - `--admin-config ADDR` (default `127.0.0.1:9903`), the config address:
//!   - `/config`: the snapshot in force as YAML (private keys redacted), with each shard's
//!     applied generation.
//!
//! Two addresses because they face different clients: in Kubernetes the probe address is the
//! pod address (the kubelet and Prometheus must reach it, and so can every other pod), while
//! `/config` describes the whole setup and stays on loopback (`kubectl port-forward` reaches
//! it). Giving both flags the same address serves all four paths there: a deliberate choice,
//! never a default. The config default's port is not the controller's admin port (9902), so
//! the defaults of the two commands never clash on one host.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use portcullis_admin_http::{PROMETHEUS_TEXT, Reply, Routes, StatusCode};
use portcullis_core::compile::Snapshot;
use thiserror::Error;
use tokio::sync::watch;
use tracing::info;

use crate::metrics::{self, ProcessMetrics};
use crate::shard::ShardHandles;

/// The default probe address (`--admin`): loopback; Kubernetes pods get their pod address.
pub const DEFAULT_ADMIN_ADDRESS: &str = "127.0.0.1:9901";

/// The `/config` address when the probes are not on loopback (`--admin-config`): loopback,
/// since `/config` describes the whole setup.
pub const DEFAULT_ADMIN_CONFIG_ADDRESS: &str = "127.0.0.1:9903";

/// Where `/config` is served when `--admin-config` is not given: with the probes when they
/// listen on loopback (one port, as on a workstation), else on
/// [`DEFAULT_ADMIN_CONFIG_ADDRESS`]; nowhere when the admin endpoint is off.
pub fn default_config_address(probes: Option<SocketAddr>) -> Option<SocketAddr> {
    let probes = probes?;
    if probes.ip().is_loopback() {
        return Some(probes);
    }
    DEFAULT_ADMIN_CONFIG_ADDRESS.parse().ok()
}

/// How long a scrape waits for a shard's counters; a shard that is stuck is left out rather
/// than hanging the scrape (the admin server's connection deadline is longer).
const SCRAPE_SHARD_TIMEOUT: Duration = Duration::from_secs(2);

/// `/config` is YAML.
const YAML: &str = "application/yaml";

/// Control-plane facts the admin endpoint reports. Written on config changes and shutdown,
/// never by the shards' connection path.
#[derive(Debug, Default)]
pub struct ControlState {
    pub draining: AtomicBool,
    pub reloads_applied: AtomicU64,
    pub reloads_rejected: AtomicU64,
}

/// What the admin thread reads.
#[derive(Debug, Clone)]
pub struct AdminContext {
    pub shards: ShardHandles,
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    pub control: Arc<ControlState>,
}

/// Where the admin endpoints listen; `None`: not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminAddresses {
    /// `/healthz`, `/readyz`, `/metrics`.
    pub probes: Option<SocketAddr>,
    /// `/config`.
    pub config: Option<SocketAddr>,
}

/// Why the admin endpoints did not start: the operator's address, or the host.
#[derive(Debug, Error)]
pub enum AdminError {
    #[error("cannot listen on the admin address {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: io::Error,
    },
    #[error("cannot start the admin thread: {0}")]
    Thread(io::Error),
}

/// Which paths one listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Served {
    Probes,
    Config,
    /// The operator gave both flags the same address.
    Both,
}

impl Served {
    fn probes(self) -> bool {
        matches!(self, Served::Probes | Served::Both)
    }
    fn config(self) -> bool {
        matches!(self, Served::Config | Served::Both)
    }
}

/// The data plane's routes on one listener.
#[derive(Debug)]
struct DataPlaneRoutes {
    ctx: AdminContext,
    served: Served,
}

impl Routes for DataPlaneRoutes {
    fn reply(&self, path: &str) -> Option<Reply> {
        let (probes, config) = (self.served.probes(), self.served.config());
        match path {
            "/healthz" if probes => Some(Reply::text(StatusCode::OK, "ok\n")),
            "/readyz" if probes => {
                let (status, body) = readiness(&self.ctx);
                Some(Reply::text(status, body))
            }
            "/metrics" if probes => Some(Reply {
                status: StatusCode::OK,
                content_type: PROMETHEUS_TEXT,
                body: render_metrics(&self.ctx),
            }),
            "/config" if config => Some(config_reply(&self.ctx)),
            _ => None,
        }
    }
}

/// Binds the admin addresses and serves them on a new thread, off the shards; returns the
/// addresses bound (port 0 resolved).
pub fn spawn(addresses: AdminAddresses, ctx: AdminContext) -> Result<AdminAddresses, AdminError> {
    let plan: Vec<(SocketAddr, Served)> = match (addresses.probes, addresses.config) {
        (Some(probes), Some(config)) if probes == config => vec![(probes, Served::Both)],
        (probes, config) => probes
            .map(|a| (a, Served::Probes))
            .into_iter()
            .chain(config.map(|a| (a, Served::Config)))
            .collect(),
    };
    let mut bound = AdminAddresses {
        probes: None,
        config: None,
    };
    let mut endpoints: Vec<(std::net::TcpListener, Arc<dyn Routes>)> = Vec::new();
    for (address, served) in plan {
        let listener = portcullis_admin_http::bind(address)
            .map_err(|source| AdminError::Bind { address, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| AdminError::Bind { address, source })?;
        if served.probes() {
            bound.probes = Some(local);
            info!(address = %local, "admin endpoint (/healthz, /readyz, /metrics) listening");
        }
        if served.config() {
            bound.config = Some(local);
            info!(address = %local, "admin endpoint (/config) listening");
        }
        let routes = DataPlaneRoutes {
            ctx: ctx.clone(),
            served,
        };
        endpoints.push((listener, Arc::new(routes)));
    }
    if !endpoints.is_empty() {
        portcullis_admin_http::spawn_thread("admin", endpoints).map_err(AdminError::Thread)?;
    }
    Ok(bound)
}

/// `/readyz`: the answer and why.
fn readiness(ctx: &AdminContext) -> (StatusCode, String) {
    if ctx.control.draining.load(Ordering::Acquire) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n".to_owned())
    } else if !ctx.shards.all_applied() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for configuration\n".to_owned(),
        )
    } else if let unserved = ctx.shards.unserved_ports()
        && !unserved.is_empty()
    {
        let mut body = String::new();
        for (port, why) in unserved {
            body.push_str(&format!("port {port} not served: {why}\n"));
        }
        (StatusCode::SERVICE_UNAVAILABLE, body)
    } else {
        (StatusCode::OK, "ready\n".to_owned())
    }
}

/// The summed metrics as Prometheus text (also used by tests).
pub fn render_metrics(ctx: &AdminContext) -> String {
    let sample = ctx.shards.sample_metrics(SCRAPE_SHARD_TIMEOUT);
    let process = ProcessMetrics {
        published_generation: ctx.snapshots.borrow().generation,
        shards: ctx
            .shards
            .status
            .iter()
            .map(|s| {
                (
                    s.applied_generation.load(Ordering::Acquire),
                    s.driver().map(|d| d.as_str()),
                )
            })
            .collect(),
        reloads_applied: ctx.control.reloads_applied.load(Ordering::Relaxed),
        reloads_rejected: ctx.control.reloads_rejected.load(Ordering::Relaxed),
        draining: ctx.control.draining.load(Ordering::Acquire),
    };
    metrics::render(&sample, &process)
}

#[derive(serde::Serialize)]
struct ConfigView<'a> {
    generation: u64,
    shard_generations: Vec<u64>,
    config: &'a portcullis_core::desired::DesiredConfig,
}

fn config_reply(ctx: &AdminContext) -> Reply {
    let snapshot = Arc::clone(&ctx.snapshots.borrow());
    let view = ConfigView {
        generation: snapshot.generation,
        shard_generations: ctx
            .shards
            .status
            .iter()
            .map(|s| s.applied_generation.load(Ordering::Acquire))
            .collect(),
        config: &snapshot.desired,
    };
    match serde_yaml::to_string(&view) {
        Ok(yaml) => Reply {
            status: StatusCode::OK,
            content_type: YAML,
            body: yaml,
        },
        Err(e) => Reply::text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot render the config: {e}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(text: &str) -> Option<SocketAddr> {
        text.parse().ok()
    }

    #[test]
    fn config_is_served_with_loopback_probes_and_apart_from_pod_address_probes() {
        let local = address("127.0.0.1:9901");
        assert_eq!(default_config_address(local), local);
        let pod = address("0.0.0.0:9901");
        assert_eq!(
            default_config_address(pod),
            address(DEFAULT_ADMIN_CONFIG_ADDRESS)
        );
        assert_eq!(default_config_address(None), None);
    }
}
