//! The agent: the Node, the watches, a worker per pod, the LoadBalancer forwarders, and a
//! clean stop.
//!
//! - Pods with an empty `spec.nodeName` are bound to this node (there is no scheduler).
//! - Pods with `spec.nodeName` = this node each get a worker ([`crate::pod`]), fed the pod's
//!   latest version; a pod that disappears from the API (deleted with grace 0 by someone else,
//!   or missing from a relist) stops its worker at once.
//! - On SIGTERM/SIGINT every pod is stopped and everything made on the host is removed; the
//!   pods stay in the API (a restarted agent runs them again).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Binding, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client};
use thiserror::Error;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::images::{ImageMap, ImageMapError};
use crate::ipam::{Ipam, IpamError};
use crate::pod::{self, WorkerStop};
use crate::state::StateDir;
use crate::{lb, node};

/// Errors that end the agent: all of them the operator's to fix.
#[derive(Debug, Error)]
pub enum AgentError {
    #[error("cannot read the kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("cannot build a Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error(transparent)]
    Images(#[from] ImageMapError),
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error("cannot find the agent's own executable: {0}")]
    Exe(#[source] std::io::Error),
    #[error("cannot remove the leftovers of an earlier run: {0}")]
    Cleanup(#[source] crate::net::NetError),
}

/// The agent's settings (the command line).
#[derive(Debug, Clone)]
pub struct Settings {
    pub kubeconfig: PathBuf,
    pub node_name: String,
    pub bridge: String,
    pub pod_cidr: Ipv4Net,
    pub lb_cidr: Ipv4Net,
    pub images: PathBuf,
    pub state_dir: PathBuf,
    pub api_server_host: String,
    pub api_server_port: u16,
}

/// What every part of the agent shares.
pub struct Agent {
    pub client: Client,
    pub node_name: String,
    pub bridge: String,
    pub pod_net: Ipv4Net,
    /// The bridge's address: the pods' gateway and the node's InternalIP.
    pub host_ip: Ipv4Addr,
    pub images: ImageMap,
    pub state: StateDir,
    pub api_server_host: String,
    pub api_server_port: u16,
    /// This binary, which runs inside each pod first (`run-in-pod`).
    pub exe: PathBuf,
    pod_ips: Mutex<Ipam>,
    /// Serializes the creation of mountpoints on the host (pods share them).
    mountpoints: Mutex<()>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("node_name", &self.node_name)
            .field("bridge", &self.bridge)
            .field("pod_net", &self.pod_net)
            .finish_non_exhaustive()
    }
}

impl Agent {
    pub fn allocate_pod_ip(&self) -> Result<Ipv4Addr, IpamError> {
        self.pod_ips
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .allocate()
    }

    /// Takes `ip` for a pod when it is a free pod address.
    pub fn claim_pod_ip(&self, ip: Ipv4Addr) -> bool {
        self.pod_ips
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .claim(ip)
    }

    pub fn release_pod_ip(&self, ip: Ipv4Addr) {
        self.pod_ips
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .release(ip);
    }

    /// Creates `target` (a directory, or an empty file when the source is a file) and its
    /// missing parents on the host, recording each before it is created.
    pub fn ensure_mountpoint(&self, target: &Path, file: bool) -> std::io::Result<()> {
        let _guard = self.mountpoints.lock().unwrap_or_else(|e| e.into_inner());
        let mut missing = Vec::new();
        let mut current = Some(target);
        while let Some(path) = current {
            if path.exists() {
                break;
            }
            missing.push(path);
            current = path.parent();
        }
        for path in missing.into_iter().rev() {
            self.state
                .record_mountpoint(path)
                .map_err(std::io::Error::other)?;
            if file && path == target {
                std::fs::File::create(path)?;
            } else {
                std::fs::create_dir(path)?;
            }
        }
        Ok(())
    }
}

/// Whether the pod waits for a node (and this agent should bind it).
pub fn needs_binding(pod: &Pod) -> bool {
    let unassigned = pod
        .spec
        .as_ref()
        .is_some_and(|s| s.node_name.as_deref().unwrap_or("").is_empty());
    let finished = matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    unassigned && !pod::is_terminating(pod) && !finished
}

/// The Binding that assigns `pod` to `node`.
pub fn binding(pod: &Pod, node: &str) -> Binding {
    Binding {
        metadata: ObjectMeta {
            name: pod.metadata.name.clone(),
            namespace: pod.metadata.namespace.clone(),
            uid: pod.metadata.uid.clone(),
            ..ObjectMeta::default()
        },
        target: ObjectReference {
            api_version: Some("v1".to_owned()),
            kind: Some("Node".to_owned()),
            name: Some(node.to_owned()),
            ..ObjectReference::default()
        },
    }
}

async fn client(path: &Path) -> Result<Client, AgentError> {
    let kubeconfig = Kubeconfig::read_from(path).map_err(|source| AgentError::Kubeconfig {
        path: path.to_owned(),
        source,
    })?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|source| AgentError::Kubeconfig {
            path: path.to_owned(),
            source,
        })?;
    Client::try_from(config).map_err(AgentError::Client)
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(settings: Settings) -> Result<(), AgentError> {
    let images = ImageMap::from_file(&settings.images)?;
    let client = client(&settings.kubeconfig).await?;
    let state = StateDir::new(settings.state_dir.clone());
    state
        .cleanup(&settings.bridge)
        .await
        .map_err(AgentError::Cleanup)?;
    let host_ip = Ipam::gateway(settings.pod_cidr);
    let agent = Arc::new(Agent {
        client,
        node_name: settings.node_name.clone(),
        bridge: settings.bridge.clone(),
        pod_net: settings.pod_cidr,
        host_ip,
        images,
        state,
        api_server_host: settings.api_server_host.clone(),
        api_server_port: settings.api_server_port,
        exe: std::env::current_exe().map_err(AgentError::Exe)?,
        pod_ips: Mutex::new(Ipam::new(settings.pod_cidr, [host_ip])),
        mountpoints: Mutex::new(()),
    });

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut terminate = signal(SignalKind::terminate()).map_err(AgentError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(AgentError::Signals)?;
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        info!("shutting down: stopping every pod");
        shutdown_tx.send_replace(true);
    });

    let node_task = tokio::spawn(node::run(
        agent.clone(),
        settings.pod_cidr,
        shutdown_rx.clone(),
    ));
    let binder = tokio::spawn(bind_pods(agent.clone(), shutdown_rx.clone()));
    let lb_task = tokio::spawn(lb::run(
        agent.clone(),
        settings.lb_cidr,
        shutdown_rx.clone(),
    ));
    let workers = run_pods(agent.clone(), shutdown_rx).await;

    info!(pods = workers.len(), "stopping the pods");
    for handle in workers.values() {
        handle.stop.send_replace(WorkerStop::Shutdown);
    }
    for (_, handle) in workers {
        let _ = handle.join.await;
    }
    let _ = lb_task.await;
    binder.abort();
    node_task.abort();
    agent.state.remove_mountpoints();
    info!("stopped");
    Ok(())
}

struct WorkerHandle {
    pod: watch::Sender<Pod>,
    stop: watch::Sender<WorkerStop>,
    join: JoinHandle<()>,
}

/// Watches this node's pods and keeps a worker per pod until shutdown; returns the workers
/// still there.
async fn run_pods(
    agent: Arc<Agent>,
    mut shutdown: watch::Receiver<bool>,
) -> BTreeMap<String, WorkerHandle> {
    let api: Api<Pod> = Api::all(agent.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", agent.node_name));
    let mut events = watcher(api, config).default_backoff().boxed();
    let mut workers: BTreeMap<String, WorkerHandle> = BTreeMap::new();
    let mut relisted: Option<BTreeSet<String>> = None;
    loop {
        let event = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return workers,
            event = events.next() => event,
        };
        // Workers that ended (their pod was deleted) make room for a new pod of that UID.
        workers.retain(|_, w| !w.join.is_finished());
        let event = match event {
            Some(Ok(event)) => event,
            Some(Err(e)) => {
                warn!(error = %e, "pod watch failed; retrying");
                continue;
            }
            None => return workers,
        };
        match event {
            Event::Init => relisted = Some(BTreeSet::new()),
            Event::InitApply(pod) => {
                if let (Some(seen), Some(uid)) = (relisted.as_mut(), pod.metadata.uid.clone()) {
                    seen.insert(uid);
                }
                apply(&agent, &mut workers, pod);
            }
            Event::InitDone => {
                if let Some(seen) = relisted.take() {
                    for (uid, worker) in &workers {
                        if !seen.contains(uid) {
                            worker.stop.send_replace(WorkerStop::Gone);
                        }
                    }
                }
            }
            Event::Apply(pod) => apply(&agent, &mut workers, pod),
            Event::Delete(pod) => {
                if let Some(worker) = pod.metadata.uid.as_ref().and_then(|uid| workers.get(uid)) {
                    worker.stop.send_replace(WorkerStop::Gone);
                }
            }
        }
    }
}

fn apply(agent: &Arc<Agent>, workers: &mut BTreeMap<String, WorkerHandle>, pod: Pod) {
    let Some(uid) = pod.metadata.uid.clone() else {
        return;
    };
    if let Some(worker) = workers.get(&uid) {
        worker.pod.send_replace(pod);
        return;
    }
    let (pod_tx, pod_rx) = watch::channel(pod);
    let (stop_tx, stop_rx) = watch::channel(WorkerStop::Run);
    let join = tokio::spawn(pod::run(agent.clone(), pod_rx, stop_rx));
    workers.insert(
        uid,
        WorkerHandle {
            pod: pod_tx,
            stop: stop_tx,
            join,
        },
    );
}

/// Binds every pod without a node to this one.
async fn bind_pods(agent: Arc<Agent>, mut shutdown: watch::Receiver<bool>) {
    let api: Api<Pod> = Api::all(agent.client.clone());
    let config = watcher::Config::default().fields("spec.nodeName=");
    let mut events = watcher(api, config)
        .default_backoff()
        .applied_objects()
        .boxed();
    loop {
        let pod = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            pod = events.next() => match pod {
                Some(Ok(pod)) => pod,
                Some(Err(e)) => {
                    warn!(error = %e, "watch of unscheduled pods failed; retrying");
                    continue;
                }
                None => return,
            },
        };
        if !needs_binding(&pod) {
            continue;
        }
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let pods: Api<Pod> = Api::namespaced(agent.client.clone(), &namespace);
        let result: Result<serde_json::Value, _> = pods
            .create_subresource(
                "binding",
                &name,
                &PostParams::default(),
                &binding(&pod, &agent.node_name),
            )
            .await;
        match result {
            Ok(_) => info!(pod = %format!("{namespace}/{name}"), node = %agent.node_name, "bound"),
            // Bound already (an earlier event of the same pod), or gone.
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {}
            Err(e) => {
                warn!(pod = %format!("{namespace}/{name}"), error = %e, "cannot bind the pod")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    fn pod(node: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("ns".into()),
                uid: Some("u-1".into()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: node.map(Into::into),
                ..PodSpec::default()
            }),
            ..Pod::default()
        }
    }

    #[test]
    fn only_live_unassigned_pods_are_bound() {
        assert!(needs_binding(&pod(None)));
        assert!(needs_binding(&pod(Some(""))));
        assert!(!needs_binding(&pod(Some("other-node"))));
        let mut deleting = pod(None);
        deleting.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        assert!(!needs_binding(&deleting));
        let mut done = pod(None);
        done.status = Some(PodStatus {
            phase: Some("Succeeded".into()),
            ..PodStatus::default()
        });
        assert!(!needs_binding(&done));
    }

    #[test]
    fn the_binding_names_the_pod_and_the_node() {
        let b = binding(&pod(None), "portcullis-node");
        assert_eq!(b.metadata.name.as_deref(), Some("p"));
        assert_eq!(b.metadata.uid.as_deref(), Some("u-1"));
        assert_eq!(b.target.kind.as_deref(), Some("Node"));
        assert_eq!(b.target.name.as_deref(), Some("portcullis-node"));
    }
}
