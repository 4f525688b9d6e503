//! Running the data plane: the control loop on the calling thread, shards on their own, the
//! admin endpoint on another, and a graceful drain on SIGTERM/SIGINT. One loop for every
//! config source ([`ConfigSource`]): a folder of manifests, or the API server (`serve --kube`).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use portcullis_core::desired::DesiredConfig;
use tracing::{error, info};

use crate::admin::{self, AdminAddresses, AdminContext, ControlState};
use crate::publish::Publisher;
use crate::shard::{self, ShardOptions, Shards};

/// How long the control loop waits for a config change before it checks for shutdown and
/// ticket-key rotation again. A source that polls (a folder of manifests) polls at this
/// interval; four times a second keeps a reload well within the one second promised for new
/// handshakes. A pushing source answers as soon as a change arrives.
pub const CONTROL_LOOP_WAIT: Duration = Duration::from_millis(250);

/// How long the control loop waits for every shard to apply the first configuration before it
/// reports which ports are served; shards apply it as they start, in milliseconds.
const FIRST_APPLY_PATIENCE: Duration = Duration::from_secs(10);

/// How often the control loop looks whether every shard applied the first configuration.
const FIRST_APPLY_CHECK_INTERVAL: Duration = Duration::from_millis(5);

/// Exit status after a second SIGTERM/SIGINT cut a drain short (as a shell reports SIGINT).
const EXIT_INTERRUPTED: i32 = 130;

/// Default `--drain-timeout`: long enough for typical in-flight requests, and below
/// Kubernetes' default 30 s termination grace period.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

/// Process-level options of a serving command.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub shard_count: Option<usize>,
    pub shard: ShardOptions,
    /// The admin endpoints' addresses (probes and `/config`).
    pub admin: AdminAddresses,
    pub drain_timeout: Duration,
}

/// What the control loop heard from its config source.
#[derive(Debug)]
pub enum SourceUpdate {
    /// Nothing changed.
    Unchanged,
    /// A new desired config.
    Changed(DesiredConfig),
    /// A change that cannot be applied (already logged); the last good config stays.
    Rejected,
    /// The source stopped for good (already logged): serving stale config forever would hide
    /// it, so the process drains and exits with a failure status.
    Lost,
}

/// How waiting for the first configuration ended.
#[derive(Debug, PartialEq)]
pub enum Initial {
    Config(DesiredConfig),
    /// Shutdown was asked for while waiting.
    Terminated,
    /// Nothing to serve (already logged).
    Unavailable,
}

/// Where the control loop takes its configuration from: a folder of manifests, or the API
/// server (`serve --kube`).
pub trait ConfigSource {
    /// The first configuration; `terminate` turns true on SIGTERM/SIGINT.
    fn initial(&mut self, terminate: &AtomicBool) -> Initial;

    /// Waits at most `wait` for a change.
    fn next_update(&mut self, wait: Duration) -> SourceUpdate;
}

/// Which ports of the first configuration the shards listen on, once they applied it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortsReport {
    pub served: Vec<u16>,
    /// Port -> why it is not served.
    pub unserved: BTreeMap<u16, String>,
}

impl PortsReport {
    /// Logs the served ports, and each port not served with its reason.
    pub fn log(&self) {
        info!(ports = ?self.served, "serving");
        for (port, why) in &self.unserved {
            error!(port, reason = %why, "not serving port: not ready until it is");
        }
    }
}

/// Exit status when the first configuration cannot be had.
const EXIT_NOTHING_TO_SERVE: u8 = 2;

/// Serves `source` until SIGTERM/SIGINT, then drains. The first configuration must be had
/// (there is no last good configuration to fall back to); later broken changes keep the last
/// good one.
pub fn serve(source: impl ConfigSource, options: ServeOptions) -> ExitCode {
    serve_with(source, options, |report| report.log())
}

/// [`serve`], handing the [`PortsReport`] of the first configuration to `on_serving` (the demo
/// prints what to try).
pub fn serve_with(
    mut source: impl ConfigSource,
    options: ServeOptions,
    on_serving: impl FnOnce(&PortsReport),
) -> ExitCode {
    let terminate = match install_signal_handlers() {
        Ok(flag) => flag,
        Err(e) => {
            error!(error = %e, "cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    let control = Arc::new(ControlState::default());
    let (mut publisher, snapshots) = Publisher::new();
    // Shards and the admin endpoint start before the first configuration: until it arrives
    // (from an API server that may be slow or down) the process is alive (`/healthz`) and not
    // ready (`/readyz`), and listens on no port.
    let cores = shard::cores_from_affinity(options.shard_count);
    info!(shards = cores.len(), "starting shards");
    let shards = match Shards::start(cores, options.shard.clone(), snapshots.clone()) {
        Ok(shards) => shards,
        Err(e) => {
            error!(error = %e, "cannot start shards");
            return ExitCode::FAILURE;
        }
    };
    let ctx = AdminContext {
        shards: shards.handles.clone(),
        snapshots: snapshots.clone(),
        control: Arc::clone(&control),
    };
    if let Err(e) = admin::spawn(options.admin, ctx) {
        error!(error = %e, "cannot start the admin endpoint");
        return ExitCode::FAILURE;
    }
    let without_config = match source.initial(&terminate) {
        Initial::Config(desired) => {
            publisher.publish(desired);
            control.reloads_applied.fetch_add(1, Ordering::Relaxed);
            None
        }
        Initial::Terminated => Some(ExitCode::SUCCESS),
        Initial::Unavailable => Some(ExitCode::from(EXIT_NOTHING_TO_SERVE)),
    };
    if let Some(code) = without_config {
        control.draining.store(true, Ordering::Release);
        shards.handles.drain(Duration::ZERO);
        shards.join();
        return code;
    }
    on_serving(&first_ports_report(&shards, &snapshots));
    let mut lost = false;
    while !terminate.load(Ordering::Acquire) {
        match source.next_update(CONTROL_LOOP_WAIT) {
            SourceUpdate::Changed(desired) => {
                publisher.publish(desired);
                control.reloads_applied.fetch_add(1, Ordering::Relaxed);
            }
            SourceUpdate::Rejected => {
                control.reloads_rejected.fetch_add(1, Ordering::Relaxed);
            }
            SourceUpdate::Unchanged => {}
            SourceUpdate::Lost => {
                lost = true;
                break;
            }
        }
        publisher.rotate_ticket_keys_if_due();
    }
    info!(
        timeout = ?options.drain_timeout,
        "shutting down: not ready, no new connections, finishing in-flight requests"
    );
    control.draining.store(true, Ordering::Release);
    shards.handles.drain(options.drain_timeout);
    shards.join();
    info!("drained; exiting");
    if lost {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Waits (a bounded time) for every shard to apply the first configuration, then says which of
/// its ports they listen on.
fn first_ports_report(
    shards: &Shards,
    snapshots: &tokio::sync::watch::Receiver<Arc<portcullis_core::compile::Snapshot>>,
) -> PortsReport {
    let deadline = Instant::now() + FIRST_APPLY_PATIENCE;
    while !shards.handles.all_applied() && Instant::now() < deadline {
        std::thread::sleep(FIRST_APPLY_CHECK_INTERVAL);
    }
    let unserved = shards.handles.unserved_ports();
    let served = snapshots
        .borrow()
        .ports
        .iter()
        .map(|p| p.port)
        .filter(|port| !unserved.contains_key(port))
        .collect();
    PortsReport { served, unserved }
}

/// The first SIGTERM or SIGINT sets the returned flag; a second one exits at once.
fn install_signal_handlers() -> std::io::Result<Arc<AtomicBool>> {
    let terminate = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        // Registered first, so it sees the flag as it was before this signal set it.
        signal_hook::flag::register_conditional_shutdown(
            signal,
            EXIT_INTERRUPTED,
            Arc::clone(&terminate),
        )?;
        signal_hook::flag::register(signal, Arc::clone(&terminate))?;
    }
    Ok(terminate)
}
