//! Running the data plane from a folder of manifests: the control loop on the calling thread,
//! shards on their own, the admin endpoint on another, and a graceful drain on SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tracing::{error, info};

use crate::admin::{self, AdminContext, ControlState};
use crate::manifest_source::{ManifestSource, POLL_INTERVAL};
use crate::publish::Publisher;
use crate::shard::{self, ShardOptions, Shards};

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
    /// `None`: no admin endpoint.
    pub admin: Option<SocketAddr>,
    pub drain_timeout: Duration,
}

/// Serves `source` until SIGTERM/SIGINT, then drains. The first load must succeed (there is
/// no last good configuration to fall back to); later broken edits keep the last good one.
pub fn serve_manifests(mut source: ManifestSource, options: ServeOptions) -> ExitCode {
    let terminate = match install_signal_handlers() {
        Ok(flag) => flag,
        Err(e) => {
            error!(error = %e, "cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    let control = Arc::new(ControlState::default());
    let (mut publisher, snapshots) = Publisher::new();
    match source.poll() {
        Some(Ok(desired)) => {
            publisher.publish(desired);
            control.reloads_applied.fetch_add(1, Ordering::Relaxed);
        }
        _ => {
            error!("the manifests could not be loaded; nothing to serve");
            return ExitCode::from(2);
        }
    }
    let cores = shard::cores_from_affinity(options.shard_count);
    info!(shards = cores.len(), "starting shards");
    let shards = match Shards::start(cores, options.shard.clone(), snapshots.clone()) {
        Ok(shards) => shards,
        Err(e) => {
            error!(error = %e, "cannot start shards");
            return ExitCode::FAILURE;
        }
    };
    if let Some(address) = options.admin {
        let ctx = AdminContext {
            shards: shards.handles.clone(),
            snapshots,
            control: Arc::clone(&control),
        };
        if let Err(e) = admin::spawn(address, ctx) {
            error!(error = %e, %address, "cannot start the admin endpoint");
            return ExitCode::FAILURE;
        }
    }
    while !terminate.load(Ordering::Acquire) {
        std::thread::sleep(POLL_INTERVAL);
        match source.poll() {
            Some(Ok(desired)) => {
                publisher.publish(desired);
                control.reloads_applied.fetch_add(1, Ordering::Relaxed);
            }
            Some(Err(_)) => {
                control.reloads_rejected.fetch_add(1, Ordering::Relaxed);
            }
            None => {}
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
    ExitCode::SUCCESS
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
