//! Running the data plane from a folder of manifests: the control loop on the calling thread,
//! shards on their own.

use std::process::ExitCode;

use tracing::{error, info};

use crate::manifest_source::{ManifestSource, POLL_INTERVAL};
use crate::publish::Publisher;
use crate::shard::{self, ShardOptions, Shards};

/// Serves `source` until the process ends. The first load must succeed (there is no last good
/// configuration to fall back to); later broken edits keep the last good one.
pub fn serve_manifests(
    mut source: ManifestSource,
    shard_count: Option<usize>,
    options: ShardOptions,
) -> ExitCode {
    let (mut publisher, snapshots) = Publisher::new();
    match source.poll() {
        Some(desired) => {
            publisher.publish(desired);
        }
        None => {
            error!("the manifests could not be loaded; nothing to serve");
            return ExitCode::from(2);
        }
    }
    let cores = shard::cores_from_affinity(shard_count);
    info!(shards = cores.len(), "starting shards");
    let _shards = match Shards::start(cores, options, snapshots) {
        Ok(shards) => shards,
        Err(e) => {
            error!(error = %e, "cannot start shards");
            return ExitCode::FAILURE;
        }
    };
    loop {
        std::thread::sleep(POLL_INTERVAL);
        if let Some(desired) = source.poll() {
            publisher.publish(desired);
        }
        publisher.rotate_ticket_keys_if_due();
    }
}
