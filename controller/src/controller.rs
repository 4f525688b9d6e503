//! `portcullis controller`: watches everything translation reads, and while it holds the
//! Lease, provisions each of its Gateways and writes statuses.
//!
//! Every replica keeps its watch caches warm; only the leader writes (each write checks the
//! leadership first). A round runs after each batch of changes, when this replica becomes
//! leader, and again after [`RETRY_AFTER_FAILURE`] when a write failed. Statuses and objects
//! that already match cost no request, so an idle cluster sees no writes.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ::kube::Client;
use ::kube::api::ApiResource;
use futures::future;
use portcullis_core::delivery::{self, Delivered};
use portcullis_core::desired::ObjectRef;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::KubeError;
use crate::admin::{self, ControllerMetrics};
use crate::config::ControllerConfig;
use crate::lease::{self, Leadership, LeaseLock, LeaseSettings, is_leader};
use crate::probe;
use crate::provision::{self, GatewayInfo};
use crate::status::StatusWriter;
use crate::watch::{GATEWAY_API_GROUP, GATEWAY_API_KINDS, WatchPlan, Watches};
use portcullis_translate::store::{ObjectKind, ObjectStore};
use portcullis_translate::translate::{TranslateOptions, translate};

/// After a failed write (a conflict, the API server briefly away), the next round runs this
/// much later even if nothing else changes.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(2);

/// On shutdown, how long releasing the Lease may take before the process exits anyway (the
/// Lease then simply expires).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// `apiVersion` of owner references when discovery has not found Gateways yet.
const DEFAULT_GATEWAY_API_VERSION: &str = "gateway.networking.k8s.io/v1";

/// Exit status for a configuration file that cannot be used.
pub const EXIT_BAD_CONFIG: u8 = 2;
pub const EXIT_FAILURE: u8 = 1;

/// Reads `config_path` (defaults when `None`) and runs the controller until SIGTERM/SIGINT.
/// Returns the process exit status.
pub fn main(config_path: Option<&Path>) -> u8 {
    let config = match config_path {
        Some(path) => match ControllerConfig::from_file(path) {
            Ok(config) => config,
            Err(e) => {
                error!(error = %e, "cannot use the controller configuration");
                return EXIT_BAD_CONFIG;
            }
        },
        None => ControllerConfig::default(),
    };
    match run(config) {
        Ok(()) => 0,
        Err(e) => {
            error!(error = %e, "controller failed");
            EXIT_FAILURE
        }
    }
}

/// Runs the controller on a new tokio runtime until SIGTERM/SIGINT.
pub fn run(config: ControllerConfig) -> Result<(), KubeError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        // The control loop is one task; a second thread keeps lease renewals and the admin
        // endpoint responsive while it waits on the API server.
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(KubeError::Runtime)?;
    runtime.block_on(run_async(config))
}

async fn run_async(config: ControllerConfig) -> Result<(), KubeError> {
    let client = Client::try_default().await.map_err(KubeError::Client)?;
    let (shutdown_tx, shutdown) = watch::channel(false);
    spawn_signal_listener(shutdown_tx)?;

    let metrics = Arc::new(ControllerMetrics::default());
    let admin_address = config.admin_socket_address().map_err(|message| {
        KubeError::Config(crate::config::ConfigError::Invalid {
            path: "adminAddress".into(),
            message,
        })
    })?;
    if let Some(address) = admin_address {
        admin::spawn(address, Arc::clone(&metrics))
            .await
            .map_err(|source| KubeError::Admin { address, source })?;
    }

    let (leadership_tx, leadership) = watch::channel(None);
    let election = if config.leader_election.enabled {
        let settings = lease_settings(&config, &client);
        info!(
            lease = %settings.name,
            namespace = %settings.namespace,
            identity = %settings.identity,
            "leader election"
        );
        let lock = LeaseLock::new(client.clone(), settings);
        Some(tokio::spawn(lease::run_election(
            lock,
            leadership_tx,
            shutdown.clone(),
        )))
    } else {
        warn!("leader election is off: this replica writes unconditionally");
        leadership_tx.send_replace(Instant::now().checked_add(FOREVER));
        // Keep the sender alive so the receiver never reports it closed.
        tokio::spawn(async move {
            let _keep = leadership_tx;
            future::pending::<()>().await;
        });
        None
    };

    let mut controller = Controller {
        client: client.clone(),
        watches: Watches::start(client, WatchPlan::controller()).await,
        config,
        status: StatusWriter::new(),
        metrics,
        leadership,
        unserved: BTreeMap::new(),
    };
    controller.run(shutdown).await;

    if let Some(election) = election {
        // The election loop sees the shutdown too and releases the Lease.
        if tokio::time::timeout(SHUTDOWN_GRACE, election)
            .await
            .is_err()
        {
            warn!("the lease was not released in time; it expires on its own");
        }
    }
    info!("controller stopped");
    Ok(())
}

/// Stands in for "no deadline" when election is off (an `Instant` cannot be infinite).
const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

fn lease_settings(config: &ControllerConfig, client: &Client) -> LeaseSettings {
    let election = &config.leader_election;
    LeaseSettings {
        name: election.lease_name.clone(),
        namespace: election
            .lease_namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned()),
        identity: election
            .identity
            .clone()
            .unwrap_or_else(lease::default_identity),
        lease_duration: election.lease_duration(),
        renew_deadline: election.renew_deadline(),
        retry_period: election.retry_period(),
    }
}

fn spawn_signal_listener(shutdown: watch::Sender<bool>) -> Result<(), KubeError> {
    let mut terminate = signal(SignalKind::terminate()).map_err(KubeError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(KubeError::Signals)?;
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        info!("shutting down: releasing the lease");
        shutdown.send_replace(true);
        // A second signal does not wait for the release.
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        std::process::exit(130);
    });
    Ok(())
}

struct Controller {
    client: Client,
    watches: Watches,
    config: ControllerConfig,
    status: StatusWriter,
    metrics: Arc<ControllerMetrics>,
    leadership: Leadership,
    /// What the last probe of the data planes found (`probe.rs`).
    unserved: BTreeMap<ObjectRef, BTreeMap<u16, String>>,
}

impl Controller {
    async fn run(&mut self, mut shutdown: watch::Receiver<bool>) {
        let mut was_leader = false;
        let mut retry_at: Option<Instant> = None;
        let mut next_probe = Instant::now() + probe::PROBE_INTERVAL;
        loop {
            tokio::select! {
                () = self.watches.changed() => {}
                () = tokio::time::sleep_until(next_probe) => {
                    next_probe = Instant::now() + probe::PROBE_INTERVAL;
                    if !self.watches.is_synced() || !is_leader(&self.leadership) {
                        continue;
                    }
                    let ours = our_gateways(&self.watches.cache.store, &self.config.controller_name);
                    let found =
                        probe::probe(&self.client, &ours, self.config.data_plane.admin_port).await;
                    if found == self.unserved {
                        continue;
                    }
                    info!(?found, "ports the data planes do not serve changed");
                    self.unserved = found;
                }
                changed = self.leadership.changed() => {
                    if changed.is_err() {
                        // The election ended (shutdown): nothing more to write.
                        break;
                    }
                    let leader = is_leader(&self.leadership);
                    self.metrics.leader.store(leader, Ordering::Relaxed);
                    if leader == was_leader {
                        continue;
                    }
                    was_leader = leader;
                    if !leader {
                        continue;
                    }
                    // A new term: everything is re-checked below.
                }
                () = sleep_until_or_forever(retry_at) => {}
                _ = shutdown.changed() => break,
            }
            let synced = self.watches.is_synced();
            self.metrics.synced.store(synced, Ordering::Relaxed);
            if !synced || !is_leader(&self.leadership) {
                continue;
            }
            let failures = self.reconcile().await;
            retry_at = (failures > 0).then(|| Instant::now() + RETRY_AFTER_FAILURE);
        }
        self.metrics.leader.store(false, Ordering::Relaxed);
    }

    /// One round: translate, provision (with each Gateway's delivered config), then write
    /// statuses. Returns the number of failed writes.
    async fn reconcile(&mut self) -> usize {
        self.metrics.reconciles.fetch_add(1, Ordering::Relaxed);
        let mut failures = 0;
        let store = &self.watches.cache.store;
        let gateway_api_version = self
            .watches
            .api_resource(ObjectKind::Gateway)
            .map_or(DEFAULT_GATEWAY_API_VERSION, |r| r.api_version.as_str());
        let ours = our_gateways(store, &self.config.controller_name);
        let mut infos: Vec<GatewayInfo<'_>> = ours
            .iter()
            .filter_map(|key| {
                Some(GatewayInfo {
                    key,
                    gateway: store.gateways.get(key)?,
                    api_version: gateway_api_version,
                    delivered: None,
                })
            })
            .collect();

        // One translation gives the statuses and, each Gateway having a data plane of its
        // own, every Gateway's desired config.
        let mut options = TranslateOptions::new(portcullis_translate::check::now());
        options.controller_name = self.config.controller_name.clone();
        options.gateway_addresses = provision::gateway_addresses(store, &infos);
        options.separate_data_planes = true;
        options.unserved_ports = self.unserved.clone();
        let translation = translate(store, &options);
        let delivered: BTreeMap<&ObjectRef, Delivered> = ours
            .iter()
            .filter_map(|key| {
                let desired = translation.desired_by_gateway.get(key)?;
                match delivery::encode(desired) {
                    Ok(delivered) => Some((key, delivered)),
                    Err(e) => {
                        error!(gateway = %key, error = %e, "config not delivered; its data plane keeps the last one");
                        failures += 1;
                        None
                    }
                }
            })
            .collect();
        for info in &mut infos {
            info.delivered = delivered.get(info.key);
        }

        let plan =
            provision::plan_provisioning(&self.watches.cache, &infos, &self.config.data_plane);
        let leadership = self.leadership.clone();
        let provisioned = provision::execute(&self.client, plan, || is_leader(&leadership)).await;
        self.metrics
            .objects_applied
            .fetch_add(count(provisioned.applied), Ordering::Relaxed);
        self.metrics
            .objects_deleted
            .fetch_add(count(provisioned.deleted), Ordering::Relaxed);
        failures += provisioned.failed;

        let resources: BTreeMap<ObjectKind, ApiResource> = GATEWAY_API_KINDS
            .iter()
            .filter_map(|kind| Some((*kind, self.watches.api_resource(*kind)?.clone())))
            .collect();
        let written = self
            .status
            .write(
                &self.client,
                &resources,
                store,
                &translation,
                &self.config.controller_name,
                &self.leadership,
            )
            .await;
        self.metrics
            .status_writes
            .fetch_add(count(written.written), Ordering::Relaxed);
        failures += written.failed;
        self.metrics
            .write_failures
            .fetch_add(count(failures), Ordering::Relaxed);
        if provisioned.applied + provisioned.deleted + written.written > 0 || failures > 0 {
            info!(
                gateways = infos.len(),
                applied = provisioned.applied,
                deleted = provisioned.deleted,
                statuses = written.written,
                failures,
                group = GATEWAY_API_GROUP,
                "reconciled"
            );
        }
        failures
    }
}

fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Gateways whose GatewayClass names our controller.
pub fn our_gateways(store: &ObjectStore, controller_name: &str) -> Vec<ObjectRef> {
    store
        .gateways
        .iter()
        .filter(|(_, gateway)| {
            store
                .gateway_classes
                .get(&gateway.spec.gateway_class_name)
                .is_some_and(|class| class.spec.controller_name == controller_name)
        })
        .map(|(key, _)| key.clone())
        .collect()
}

async fn sleep_until_or_forever(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_translate::manifests::{LoadedManifests, load_text};
    use portcullis_translate::translate::reasons;

    /// Each Gateway gets its own Deployment and Service: two Gateways on one port are fine.
    #[test]
    fn gateways_do_not_compete_for_ports_in_kube_mode() {
        let mut loaded = LoadedManifests::default();
        let gateway = |name: &str| {
            format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
                 metadata: {{name: {name}, namespace: n}}\n\
                 spec: {{gatewayClassName: ours, listeners: [{{name: l, port: 80, protocol: HTTP}}]}}\n---\n"
            )
        };
        let text = format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: ours}}\n\
             spec: {{controllerName: portcullis.dev/gateway-controller}}\n---\n{}{}",
            gateway("a"),
            gateway("b")
        );
        load_text(Path::new("t.yaml"), &text, false, &mut loaded).unwrap();
        let mut options = TranslateOptions::new(portcullis_translate::check::now());
        let unavailable = |options: &TranslateOptions| {
            translate(&loaded.store, options)
                .gateway_statuses
                .iter()
                .flat_map(|(_, s)| s.listeners.clone().unwrap_or_default())
                .flat_map(|l| l.conditions)
                .filter(|c| c.reason == reasons::PORT_UNAVAILABLE)
                .count()
        };
        assert_eq!(
            unavailable(&options),
            1,
            "file mode: one process, one owner"
        );
        options.separate_data_planes = true;
        assert_eq!(unavailable(&options), 0);
    }

    #[test]
    fn only_gateways_of_our_classes_are_ours() {
        let mut loaded = LoadedManifests::default();
        load_text(
            Path::new("t.yaml"),
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: ours}\n\
             spec: {controllerName: portcullis.dev/gateway-controller}\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: theirs}\n\
             spec: {controllerName: example.com/other}\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: a, namespace: n}\n\
             spec: {gatewayClassName: ours, listeners: [{name: l, port: 80, protocol: HTTP}]}\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: b, namespace: n}\n\
             spec: {gatewayClassName: theirs, listeners: [{name: l, port: 80, protocol: HTTP}]}\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: c, namespace: n}\n\
             spec: {gatewayClassName: missing, listeners: [{name: l, port: 80, protocol: HTTP}]}\n",
            false,
            &mut loaded,
        )
        .unwrap();
        assert_eq!(
            our_gateways(&loaded.store, "portcullis.dev/gateway-controller"),
            vec![ObjectRef::new("n", "a")]
        );
    }
}
