//! One pod on this node, from its network to its deletion.
//!
//! A worker per pod: it sets up the network namespace and the volumes (retrying while a
//! Secret or ConfigMap is missing, as the kubelet does), starts a supervisor per container,
//! turns the containers' views into the pod's status (written only when it changed), refreshes
//! the volumes (service account tokens before they expire), and on deletion stops the
//! containers with the grace period, tears the network down and deletes the pod (grace 0,
//! with the pod's UID as precondition, as the kubelet does).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, PodStatus, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::agent::Agent;
use crate::container::{self, Bind, ContainerTask, Launch};
use crate::net::{self, PodNetwork};
use crate::spec::{PodFacts, Sources};
use crate::state::NetworkRecord;
use crate::status::{self, ContainerView, PodView, RunState};
use crate::volumes::{self, VolumeContents, VolumeError, token_wants};

/// Wait before setting up a pod again after a failure (missing Secret, network error).
const SETUP_RETRY: Duration = Duration::from_secs(3);
/// How often Secret, ConfigMap and downward-API volumes are rewritten from the API.
const VOLUME_RESYNC: Duration = Duration::from_secs(60);
/// Wait before writing a status again after the write failed.
const STATUS_RETRY: Duration = Duration::from_secs(2);
/// The longest a container may take to stop when the agent itself stops.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Tries at deleting a stopped pod from the API before giving up (the next watch event
/// of the pod starts over).
const DELETE_ATTEMPTS: u32 = 5;
/// A token is refreshed when this share of its lifetime has passed (the kubelet's 80 %).
const TOKEN_REFRESH_PERCENT: u32 = 80;

/// Why a worker is told to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerStop {
    Run,
    /// The pod no longer exists in the API (deleted with grace 0 by someone else).
    Gone,
    /// The agent stops: stop everything, leave the API object alone.
    Shutdown,
}

/// A pod could not be set up (yet).
#[derive(Debug, Error)]
pub enum SetupError {
    #[error("reading {what}: {source}")]
    Api {
        what: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error("writing volume {volume}: {source}")]
    WriteVolume {
        volume: String,
        #[source]
        source: std::io::Error,
    },
    #[error("container {container}: volumeMount {mount} has no volume of that name")]
    NoSuchVolume { container: String, mount: String },
    #[error(transparent)]
    Network(#[from] net::NetError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Ipam(#[from] crate::ipam::IpamError),
    #[error("creating mountpoint {path}: {source}")]
    Mountpoint {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The Secrets and ConfigMaps the pod refers to that exist.
pub async fn fetch_sources(client: &kube::Client, pod: &Pod) -> Result<Sources, SetupError> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let (secrets, maps) = volumes::referenced_objects(pod);
    let mut sources = Sources::default();
    let secret_api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    for name in secrets {
        let found = secret_api
            .get_opt(&name)
            .await
            .map_err(|source| SetupError::Api {
                what: format!("Secret {namespace}/{name}"),
                source: Box::new(source),
            })?;
        if let Some(secret) = found {
            sources.secrets.insert(name, secret);
        }
    }
    let map_api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    for name in maps {
        let found = map_api
            .get_opt(&name)
            .await
            .map_err(|source| SetupError::Api {
                what: format!("ConfigMap {namespace}/{name}"),
                source: Box::new(source),
            })?;
        if let Some(map) = found {
            sources.config_maps.insert(name, map);
        }
    }
    Ok(sources)
}

/// Waits until the worker is told to stop, and says why.
async fn stopped(stop: &mut watch::Receiver<WorkerStop>) -> WorkerStop {
    stop.wait_for(|s| *s != WorkerStop::Run)
        .await
        .map_or(WorkerStop::Gone, |s| *s)
}

/// The strategic merge patch that writes `status`: conditions merge by type (others' stay),
/// the IP lists are replaced whole (merged by IP, an old address would stay next to the new
/// one, which the API server rejects).
pub fn status_patch(status: &PodStatus) -> serde_json::Value {
    let mut value = serde_json::to_value(status).unwrap_or_default();
    for list in ["podIPs", "hostIPs"] {
        if let Some(serde_json::Value::Array(items)) = value.get_mut(list) {
            items.push(serde_json::json!({ "$patch": "replace" }));
        }
    }
    serde_json::json!({ "status": value })
}

pub fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// Runs one pod until it is deleted or the agent stops.
pub async fn run(
    agent: Arc<Agent>,
    mut pod_rx: watch::Receiver<Pod>,
    mut stop_rx: watch::Receiver<WorkerStop>,
) {
    let pod = pod_rx.borrow_and_update().clone();
    let mut worker = Worker::new(agent, pod);
    info!(pod = %worker.key, "pod assigned to this node");
    if is_terminating(&worker.pod) {
        // Nothing of it runs here (the agent restarted during its deletion).
        worker.delete_from_api().await;
        return;
    }
    let reason = worker.run(&mut pod_rx, &mut stop_rx).await;
    worker.finish(reason).await;
}

/// Why the running phase ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EndReason {
    Deleted,
    Stop(WorkerStop),
}

struct Worker {
    agent: Arc<Agent>,
    pod: Pod,
    key: String,
    uid: String,
    network: Option<PodNetwork>,
    pod_ip: Option<Ipv4Addr>,
    start_time: Timestamp,
    views: Vec<ContainerView>,
    last_written: Option<PodStatus>,
    status_dirty: bool,
    volume_paths: BTreeMap<String, PathBuf>,
    refresh_at: Option<Instant>,
    containers: JoinSet<()>,
    container_stop: Option<watch::Sender<Option<Duration>>>,
}

impl Worker {
    fn new(agent: Arc<Agent>, pod: Pod) -> Self {
        let key = format!(
            "{}/{}",
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            pod.metadata.name.as_deref().unwrap_or_default()
        );
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let views = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .map(|c| ContainerView {
                name: c.name.clone(),
                image: c.image.clone().unwrap_or_default(),
                state: RunState::waiting("ContainerCreating", None),
                last_terminated: None,
                restart_count: 0,
                ready: false,
                started: false,
                will_restart: true,
            })
            .collect();
        let start_time = pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .map_or_else(Timestamp::now, |t| t.0);
        Self {
            agent,
            pod,
            key,
            uid,
            network: None,
            pod_ip: None,
            start_time,
            views,
            last_written: None,
            status_dirty: true,
            volume_paths: BTreeMap::new(),
            refresh_at: None,
            containers: JoinSet::new(),
            container_stop: None,
        }
    }

    fn host_network(&self) -> bool {
        self.pod.spec.as_ref().and_then(|s| s.host_network) == Some(true)
    }

    fn facts(&self) -> PodFacts {
        PodFacts {
            node_name: self.agent.node_name.clone(),
            host_ip: self.agent.host_ip,
            pod_ip: self.pod_ip,
            api_server_host: self.agent.api_server_host.clone(),
            api_server_port: self.agent.api_server_port,
        }
    }

    /// Sets up, starts the containers, and runs until deletion or a stop.
    async fn run(
        &mut self,
        pod_rx: &mut watch::Receiver<Pod>,
        stop_rx: &mut watch::Receiver<WorkerStop>,
    ) -> EndReason {
        // Setup, retried until it works.
        loop {
            match self.setup().await {
                Ok(()) => break,
                Err(e) => {
                    warn!(pod = %self.key, error = %e, "cannot set up the pod yet");
                    for view in &mut self.views {
                        view.state = RunState::waiting("ContainerCreating", Some(e.to_string()));
                    }
                    self.status_dirty = true;
                    self.write_status().await;
                }
            }
            let retry = tokio::time::sleep(SETUP_RETRY);
            tokio::pin!(retry);
            loop {
                tokio::select! {
                    () = &mut retry => break,
                    changed = pod_rx.changed() => {
                        if changed.is_err() {
                            return EndReason::Stop(WorkerStop::Gone);
                        }
                        self.pod = pod_rx.borrow_and_update().clone();
                        if is_terminating(&self.pod) {
                            return EndReason::Deleted;
                        }
                    }
                    stop = stopped(stop_rx) => return EndReason::Stop(stop),
                }
            }
        }

        let (updates_tx, mut updates_rx) = mpsc::unbounded_channel();
        let (stop_tx, container_stop_rx) = watch::channel(None);
        self.container_stop = Some(stop_tx);
        self.start_containers(&updates_tx, &container_stop_rx);
        drop(updates_tx);
        self.write_status().await;

        loop {
            let refresh_at = self.refresh_at;
            let retry_status = self.status_dirty;
            tokio::select! {
                Some((index, view)) = updates_rx.recv() => {
                    if let Some(slot) = self.views.get_mut(index) {
                        *slot = view;
                    }
                    // Take whatever else arrived before writing once.
                    while let Ok((index, view)) = updates_rx.try_recv() {
                        if let Some(slot) = self.views.get_mut(index) {
                            *slot = view;
                        }
                    }
                    self.status_dirty = true;
                    self.write_status().await;
                }
                changed = pod_rx.changed() => {
                    if changed.is_err() {
                        return EndReason::Stop(WorkerStop::Gone);
                    }
                    self.pod = pod_rx.borrow_and_update().clone();
                    if is_terminating(&self.pod) {
                        return EndReason::Deleted;
                    }
                }
                stop = stopped(stop_rx) => return EndReason::Stop(stop),
                () = async {
                    match refresh_at {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {
                    if let Err(e) = self.write_volumes().await {
                        warn!(pod = %self.key, error = %e, "cannot refresh the pod's volumes");
                        self.refresh_at = Some(Instant::now() + SETUP_RETRY);
                    }
                }
                () = tokio::time::sleep(STATUS_RETRY), if retry_status => self.write_status().await,
            }
        }
    }

    async fn setup(&mut self) -> Result<(), SetupError> {
        if self.network.is_none() && self.pod_ip.is_none() {
            if self.host_network() {
                self.pod_ip = Some(self.agent.host_ip);
            } else {
                // The address it had (the agent restarted), else the lowest free one.
                let previous = self
                    .pod
                    .status
                    .as_ref()
                    .and_then(|s| s.pod_ip.as_deref())
                    .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
                    .filter(|ip| self.agent.claim_pod_ip(*ip));
                let ip = match previous {
                    Some(ip) => ip,
                    None => self.agent.allocate_pod_ip()?,
                };
                let network = PodNetwork {
                    netns: net::netns_name(&self.uid),
                    host_veth: net::host_veth_name(&self.uid),
                    ip,
                    prefix_len: self.agent.pod_net.prefix_len(),
                    gateway: self.agent.host_ip,
                };
                // Recorded first: a crash from here on leaves something `cleanup` finds.
                self.agent.state.record_network(
                    &self.uid,
                    &NetworkRecord {
                        netns: network.netns.clone(),
                        host_veth: network.host_veth.clone(),
                    },
                )?;
                // Leftovers of an earlier run of this pod (an agent that crashed).
                net::teardown_pod(&network.netns, &network.host_veth).await?;
                if let Err(e) = net::setup_pod(&network, &self.agent.bridge).await {
                    let _ = net::teardown_pod(&network.netns, &network.host_veth).await;
                    self.agent.release_pod_ip(ip);
                    return Err(e.into());
                }
                info!(pod = %self.key, %ip, netns = %network.netns, "pod network ready");
                self.pod_ip = Some(ip);
                self.network = Some(network);
            }
        }
        self.write_volumes().await
    }

    /// Writes every volume's files (again); the next refresh is due before the first token
    /// expires, and at least every [`VOLUME_RESYNC`].
    async fn write_volumes(&mut self) -> Result<(), SetupError> {
        let sources = fetch_sources(&self.agent.client, &self.pod).await?;
        let (tokens, token_refresh) = self.request_tokens().await?;
        let facts = self.facts();
        let volumes = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.clone())
            .unwrap_or_default();
        let mut paths = BTreeMap::new();
        for volume in &volumes {
            let contents = volumes::volume_files(volume, &self.pod, &facts, &sources, &tokens)?;
            let path = match contents {
                VolumeContents::HostPath(path) => path,
                VolumeContents::Files(files) => {
                    let dir = self.agent.state.volume_dir(&self.uid, &volume.name);
                    volumes::write_files(&dir, &files).map_err(|source| {
                        SetupError::WriteVolume {
                            volume: volume.name.clone(),
                            source,
                        }
                    })?;
                    dir
                }
            };
            paths.insert(volume.name.clone(), path);
        }
        self.volume_paths = paths;
        let resync = Instant::now() + VOLUME_RESYNC;
        self.refresh_at = Some(token_refresh.map_or(resync, |t| t.min(resync)));
        Ok(())
    }

    /// A TokenRequest per projected token, bound to this pod; and when to refresh them.
    async fn request_tokens(
        &self,
    ) -> Result<(BTreeMap<(String, String), String>, Option<Instant>), SetupError> {
        let namespace = self.pod.metadata.namespace.as_deref().unwrap_or("default");
        let account = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".to_owned());
        let api: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(self.agent.client.clone(), namespace);
        let mut tokens = BTreeMap::new();
        let mut refresh: Option<Instant> = None;
        for want in token_wants(&self.pod) {
            let request = TokenRequest {
                spec: Some(TokenRequestSpec {
                    audiences: Some(want.audience.clone().into_iter().collect()),
                    expiration_seconds: Some(want.expiration_seconds),
                    bound_object_ref: Some(BoundObjectReference {
                        api_version: Some("v1".to_owned()),
                        kind: Some("Pod".to_owned()),
                        name: self.pod.metadata.name.clone(),
                        uid: Some(self.uid.clone()),
                    }),
                }),
                ..TokenRequest::default()
            };
            let issued: TokenRequest = api
                .create_subresource("token", &account, &PostParams::default(), &request)
                .await
                .map_err(|source| SetupError::Api {
                    what: format!("a token for ServiceAccount {namespace}/{account}"),
                    source: Box::new(source),
                })?;
            let Some(status) = issued.status else {
                continue;
            };
            let Some(token) = status.token else {
                continue;
            };
            let lifetime = status.expiration_timestamp.map_or(Duration::ZERO, |t| {
                t.0.duration_since(Timestamp::now())
                    .try_into()
                    .unwrap_or(Duration::ZERO)
            });
            let due = Instant::now() + lifetime * TOKEN_REFRESH_PERCENT / 100;
            refresh = Some(refresh.map_or(due, |r| r.min(due)));
            tokens.insert((want.volume, want.path), token);
        }
        Ok((tokens, refresh))
    }

    /// Where each container's volumes go, creating missing mountpoints on the host.
    fn binds(
        &self,
        container: &k8s_openapi::api::core::v1::Container,
    ) -> Result<Vec<Bind>, SetupError> {
        let mut binds = Vec::new();
        for mount in container.volume_mounts.iter().flatten() {
            let source =
                self.volume_paths
                    .get(&mount.name)
                    .ok_or_else(|| SetupError::NoSuchVolume {
                        container: container.name.clone(),
                        mount: mount.name.clone(),
                    })?;
            let source = match mount.sub_path.as_deref().filter(|p| !p.is_empty()) {
                Some(sub) => source.join(sub),
                None => source.clone(),
            };
            let target = PathBuf::from(&mount.mount_path);
            self.agent
                .ensure_mountpoint(&target, source.is_file())
                .map_err(|source| SetupError::Mountpoint {
                    path: target.clone(),
                    source,
                })?;
            binds.push(Bind {
                source,
                target,
                read_only: mount.read_only == Some(true),
            });
        }
        Ok(binds)
    }

    fn start_containers(
        &mut self,
        updates: &mpsc::UnboundedSender<(usize, ContainerView)>,
        stop: &watch::Receiver<Option<Duration>>,
    ) {
        let pod = Arc::new(self.pod.clone());
        let containers = self
            .pod
            .spec
            .as_ref()
            .map(|s| s.containers.clone())
            .unwrap_or_default();
        let namespace = self.pod.metadata.namespace.clone().unwrap_or_default();
        let name = self.pod.metadata.name.clone().unwrap_or_default();
        let log_dir = self.agent.state.log_dir(&namespace, &name, &self.uid);
        for (index, container) in containers.into_iter().enumerate() {
            let binds = match self.binds(&container) {
                Ok(binds) => binds,
                Err(e) => {
                    warn!(pod = %self.key, container = %container.name, error = %e, "cannot mount the container's volumes");
                    if let Some(view) = self.views.get_mut(index) {
                        view.state =
                            RunState::waiting("CreateContainerConfigError", Some(e.to_string()));
                    }
                    continue;
                }
            };
            let launch = Launch {
                netns: self.network.as_ref().map(|n| n.netns.clone()),
                binds,
                working_dir: container.working_dir.clone().filter(|d| !d.is_empty()),
                log_path: log_dir.join(format!("{}.log", container.name)),
            };
            let task = ContainerTask {
                index,
                container,
                pod: pod.clone(),
                facts: self.facts(),
                launch,
                probe_ip: self.pod_ip.unwrap_or(self.agent.host_ip),
            };
            self.containers.spawn(container::supervise(
                self.agent.clone(),
                task,
                updates.clone(),
                stop.clone(),
            ));
        }
    }

    /// Writes the status when it differs from the last one written.
    async fn write_status(&mut self) {
        let status = status::pod_status(&PodView {
            containers: &self.views,
            pod_ip: self.pod_ip,
            host_ip: self.agent.host_ip,
            start_time: self.start_time,
            previous: self.last_written.as_ref().or(self.pod.status.as_ref()),
            now: Timestamp::now(),
        });
        if self.last_written.as_ref() == Some(&status) {
            self.status_dirty = false;
            return;
        }
        let api: Api<Pod> = Api::namespaced(
            self.agent.client.clone(),
            self.pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        let name = self.pod.metadata.name.clone().unwrap_or_default();
        let patch = status_patch(&status);
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
        {
            Ok(_) => {
                self.last_written = Some(status);
                self.status_dirty = false;
            }
            Err(e) => {
                warn!(pod = %self.key, error = %e, "cannot write the pod's status");
                self.status_dirty = true;
            }
        }
    }

    /// Stops the containers, tears the network down, and (after a deletion) deletes the pod.
    async fn finish(mut self, reason: EndReason) {
        let grace = match reason {
            EndReason::Deleted => container::grace_period(&self.pod),
            EndReason::Stop(_) => container::grace_period(&self.pod).min(SHUTDOWN_GRACE),
        };
        info!(pod = %self.key, ?reason, ?grace, "stopping the pod");
        if let Some(stop) = &self.container_stop {
            let _ = stop.send(Some(grace));
        }
        while self.containers.join_next().await.is_some() {}
        if let Some(network) = self.network.take() {
            if let Err(e) = net::teardown_pod(&network.netns, &network.host_veth).await {
                warn!(pod = %self.key, error = %e, "cannot tear down the pod network");
            } else {
                self.agent.release_pod_ip(network.ip);
                self.agent.state.forget_pod(&self.uid);
            }
        } else {
            self.agent.state.forget_pod(&self.uid);
        }
        if reason == EndReason::Deleted {
            self.delete_from_api().await;
        }
    }

    /// Deletes the pod for good: grace 0, only this incarnation (UID precondition).
    async fn delete_from_api(&self) {
        let api: Api<Pod> = Api::namespaced(
            self.agent.client.clone(),
            self.pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        let name = self.pod.metadata.name.clone().unwrap_or_default();
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        for attempt in 1..=DELETE_ATTEMPTS {
            match api.delete(&name, &params).await {
                Ok(_) => {
                    info!(pod = %self.key, "pod deleted");
                    return;
                }
                // Gone already, or another pod of the same name by now.
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => return,
                Err(e) => {
                    warn!(pod = %self.key, error = %e, attempt, "cannot delete the pod");
                    tokio::time::sleep(SETUP_RETRY).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::PodIP;

    use super::*;

    #[test]
    fn the_status_patch_replaces_the_ip_lists() {
        let status = PodStatus {
            pod_ip: Some("10.244.0.3".into()),
            pod_ips: Some(vec![PodIP {
                ip: "10.244.0.3".into(),
            }]),
            ..PodStatus::default()
        };
        let patch = status_patch(&status);
        assert_eq!(
            patch["status"]["podIPs"],
            serde_json::json!([{ "ip": "10.244.0.3" }, { "$patch": "replace" }])
        );
        assert_eq!(patch["status"]["podIP"], "10.244.0.3");
        assert!(patch["status"].get("conditions").is_none());
    }
}
