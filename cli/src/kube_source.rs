//! `serve --kube --gateway NS/NAME`: the control loop's config comes from the API server.
//! The controller writes this Gateway's resolved config into two Secrets; the config-watch
//! thread (`portcullis_controller::delivery`) watches them and sends each new consistent
//! config; this is the [`ConfigSource`] end of that channel. Until the first one arrives the
//! data plane serves nothing and is not ready; afterwards, whatever happens to the controller
//! or the API server, the last config stays in force.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::Duration;

use portcullis_controller::KubeError;
use portcullis_controller::delivery::{self, DesiredConfigs};
use portcullis_core::desired::{DesiredConfig, ObjectRef};
use tracing::{error, info};

use portcullis_runtime::serve::{ConfigSource, Initial, SourceUpdate};

/// While waiting for the first config (the watches listing everything), how often shutdown
/// is checked.
const INITIAL_WAIT_TICK: Duration = Duration::from_millis(250);

/// The API server as a config source.
#[derive(Debug)]
pub struct KubeSource {
    gateway: ObjectRef,
    receiver: Receiver<DesiredConfig>,
}

impl KubeSource {
    /// Builds a client (kubeconfig or in-cluster) and starts the watcher thread.
    pub fn connect(gateway: ObjectRef) -> Result<Self, KubeError> {
        let DesiredConfigs { receiver } = delivery::spawn(gateway.clone())?;
        Ok(Self { gateway, receiver })
    }

    /// From an existing channel (tests).
    #[cfg(test)]
    pub fn from_receiver(gateway: ObjectRef, receiver: Receiver<DesiredConfig>) -> Self {
        Self { gateway, receiver }
    }

    /// The newest of the queued configs (latest value wins).
    fn newest(&self, first: DesiredConfig) -> DesiredConfig {
        let mut newest = first;
        loop {
            match self.receiver.try_recv() {
                Ok(next) => newest = next,
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return newest,
            }
        }
    }
}

impl ConfigSource for KubeSource {
    fn initial(&mut self, terminate: &AtomicBool) -> Initial {
        info!(gateway = %self.gateway, "waiting for the API server's view of the Gateway");
        loop {
            if terminate.load(Ordering::Acquire) {
                return Initial::Terminated;
            }
            match self.receiver.recv_timeout(INITIAL_WAIT_TICK) {
                Ok(desired) => return Initial::Config(self.newest(desired)),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    error!("the Kubernetes watcher stopped; nothing to serve");
                    return Initial::Unavailable;
                }
            }
        }
    }

    fn next_update(&mut self, wait: Duration) -> SourceUpdate {
        match self.receiver.recv_timeout(wait) {
            Ok(desired) => SourceUpdate::Changed(self.newest(desired)),
            Err(RecvTimeoutError::Timeout) => SourceUpdate::Unchanged,
            Err(RecvTimeoutError::Disconnected) => {
                error!("the Kubernetes watcher stopped; draining and exiting");
                SourceUpdate::Lost
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::desired::DesiredPort;
    use std::sync::mpsc;

    fn config(ports: usize) -> DesiredConfig {
        let port = |n| DesiredPort {
            port: n,
            protocol: portcullis_core::desired::PortProtocol::Http,
            gateway: ObjectRef::new("ns", "g"),
            client_validation: portcullis_core::desired::ClientValidation::NotRequested,
            listeners: Vec::new(),
        };
        DesiredConfig {
            ports: (0..ports).map(|i| port(8000 + i as u16)).collect(),
        }
    }

    #[test]
    fn the_newest_queued_config_wins_and_a_lost_watcher_is_reported() {
        let (sender, receiver) = mpsc::channel();
        let mut source = KubeSource::from_receiver(ObjectRef::new("ns", "g"), receiver);
        sender.send(config(1)).unwrap();
        sender.send(config(2)).unwrap();
        let terminate = AtomicBool::new(false);
        assert_eq!(source.initial(&terminate), Initial::Config(config(2)));
        assert!(matches!(
            source.next_update(Duration::from_millis(1)),
            SourceUpdate::Unchanged
        ));
        sender.send(config(3)).unwrap();
        assert!(matches!(
            source.next_update(Duration::from_millis(1)),
            SourceUpdate::Changed(c) if c == config(3)
        ));
        drop(sender);
        assert!(matches!(
            source.next_update(Duration::from_millis(1)),
            SourceUpdate::Lost
        ));
    }

    #[test]
    fn shutdown_while_waiting_for_the_first_config() {
        let (_sender, receiver) = mpsc::channel();
        let mut source = KubeSource::from_receiver(ObjectRef::new("ns", "g"), receiver);
        let terminate = AtomicBool::new(true);
        assert_eq!(source.initial(&terminate), Initial::Terminated);
    }
}
