//! Publishing: desired config -> compiled snapshot -> every shard, latest value wins.
//!
//! Compiling happens here, on the control thread, so no shard ever parses a certificate or
//! builds a verifier. Each shard holds a `watch` receiver: however many changes arrive while
//! it is busy, it wakes once and applies only the newest snapshot.

use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_core::compile::{self, Snapshot};
use portcullis_core::desired::DesiredConfig;
use portcullis_core::tickets::TICKET_KEY_ROTATION_SECS;
use tokio::sync::watch;
use tracing::{info, warn};

/// Owns the sending side of the snapshot channel.
#[derive(Debug)]
pub struct Publisher {
    sender: watch::Sender<Arc<Snapshot>>,
    last_rotation: Instant,
}

impl Publisher {
    /// A publisher and the receiver to hand (cloned) to every shard. Shards start with an
    /// empty generation-0 snapshot: nothing is served until the first publish.
    pub fn new() -> (Publisher, watch::Receiver<Arc<Snapshot>>) {
        let (sender, receiver) = watch::channel(Arc::new(Snapshot::empty()));
        (
            Publisher {
                sender,
                last_rotation: Instant::now(),
            },
            receiver,
        )
    }

    pub fn current(&self) -> Arc<Snapshot> {
        Arc::clone(&self.sender.borrow())
    }

    /// Compiles and publishes `desired`, unless it equals what is already served. Returns the
    /// generation now in force.
    pub fn publish(&self, desired: DesiredConfig) -> u64 {
        let current = self.current();
        if current.generation > 0 && *current.desired == desired {
            return current.generation;
        }
        let snapshot = compile::compile(desired, Some(&current), current.generation + 1);
        for error in &snapshot.errors {
            warn!(%error, "listener left out of the snapshot");
        }
        let generation = snapshot.generation;
        info!(
            generation,
            ports = snapshot.ports.len(),
            "publishing configuration"
        );
        self.sender.send_replace(Arc::new(snapshot));
        generation
    }

    /// Rotates every listener's ticket keys when their rotation period has passed.
    pub fn rotate_ticket_keys_if_due(&mut self) {
        if self.last_rotation.elapsed() < Duration::from_secs(u64::from(TICKET_KEY_ROTATION_SECS)) {
            return;
        }
        self.last_rotation = Instant::now();
        let current = self.current();
        if current.generation == 0 {
            return;
        }
        let rotated = compile::rotate_ticket_keys(&current, current.generation + 1);
        info!(generation = rotated.generation, "rotated TLS ticket keys");
        self.sender.send_replace(Arc::new(rotated));
    }
}
