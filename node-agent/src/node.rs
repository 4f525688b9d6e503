//! The Node object and its heartbeats: registered at start (created, or its labels and pod
//! CIDR patched), then its Lease in `kube-node-lease` renewed and its status (Ready, with the
//! heartbeat time) written every [`HEARTBEAT`], as the kubelet does; the node lifecycle
//! controller marks a node whose Lease stops moving as not ready.

use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus, NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::agent::Agent;

/// How often the Lease is renewed and the status written (the kubelet's defaults).
const HEARTBEAT: Duration = Duration::from_secs(10);
/// The Lease's duration: the kubelet's 40 s.
const LEASE_DURATION_SECONDS: i32 = 40;
const LEASE_NAMESPACE: &str = "kube-node-lease";
/// Pods this node takes (the kubelet's default).
const MAX_PODS: &str = "110";
/// The version the node reports for its kubelet: the agent's.
const AGENT_VERSION: &str = concat!("portcullis-node-agent/", env!("CARGO_PKG_VERSION"));

/// What the node reports about the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    pub cpus: usize,
    pub memory_kib: u64,
    pub kernel: String,
    pub hostname: String,
    pub boot_id: String,
    pub machine_id: String,
}

impl HostFacts {
    pub fn read() -> Self {
        let read = |path: &str| {
            std::fs::read_to_string(path)
                .map(|s| s.trim().to_owned())
                .unwrap_or_default()
        };
        let memory_kib = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        Self {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_kib,
            kernel: read("/proc/sys/kernel/osrelease"),
            hostname: read("/proc/sys/kernel/hostname"),
            boot_id: read("/proc/sys/kernel/random/boot_id"),
            machine_id: read("/etc/machine-id"),
        }
    }
}

/// The Node as registered.
pub fn node_object(name: &str, pod_cidr: Ipv4Net) -> Node {
    let labels = [
        ("kubernetes.io/hostname", name),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", std::env::consts::ARCH),
    ];
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: Some(pod_cidr.to_string()),
            pod_cidrs: Some(vec![pod_cidr.to_string()]),
            ..NodeSpec::default()
        }),
        status: None,
    }
}

/// The Node's status at `now`: Ready, no pressure, the InternalIP, the host's size.
/// `since`: when the agent started.
pub fn node_status(
    host_ip: std::net::Ipv4Addr,
    host: &HostFacts,
    now: Timestamp,
    since: Timestamp,
) -> NodeStatus {
    let condition = |type_: &str, status: &str, reason: &str, message: &str| NodeCondition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        last_heartbeat_time: Some(Time(now)),
        // The statuses never change while the agent runs.
        last_transition_time: Some(Time(since)),
    };
    let resources = [
        ("cpu".to_owned(), Quantity(host.cpus.to_string())),
        (
            "memory".to_owned(),
            Quantity(format!("{}Ki", host.memory_kib)),
        ),
        ("pods".to_owned(), Quantity(MAX_PODS.to_owned())),
    ]
    .into_iter()
    .collect::<std::collections::BTreeMap<_, _>>();
    NodeStatus {
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".to_owned(),
                address: host_ip.to_string(),
            },
            NodeAddress {
                type_: "Hostname".to_owned(),
                address: host.hostname.clone(),
            },
        ]),
        capacity: Some(resources.clone()),
        allocatable: Some(resources),
        conditions: Some(vec![
            condition(
                "Ready",
                "True",
                "KubeletReady",
                "portcullis-node-agent is posting ready status",
            ),
            condition(
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "no memory pressure",
            ),
            condition(
                "DiskPressure",
                "False",
                "KubeletHasNoDiskPressure",
                "no disk pressure",
            ),
            condition(
                "PIDPressure",
                "False",
                "KubeletHasSufficientPID",
                "no PID pressure",
            ),
        ]),
        node_info: Some(NodeSystemInfo {
            architecture: std::env::consts::ARCH.to_owned(),
            boot_id: host.boot_id.clone(),
            container_runtime_version: "portcullis-node-agent://local-processes".to_owned(),
            kernel_version: host.kernel.clone(),
            kube_proxy_version: String::new(),
            kubelet_version: AGENT_VERSION.to_owned(),
            machine_id: host.machine_id.clone(),
            operating_system: "linux".to_owned(),
            os_image: "linux".to_owned(),
            system_uuid: host.machine_id.clone(),
            ..NodeSystemInfo::default()
        }),
        ..NodeStatus::default()
    }
}

/// The Lease spec renewed at `now`.
pub fn lease_spec(node: &str, now: Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(node.to_owned()),
        lease_duration_seconds: Some(LEASE_DURATION_SECONDS),
        renew_time: Some(MicroTime(now)),
        ..LeaseSpec::default()
    }
}

async fn register(agent: &Agent, pod_cidr: Ipv4Net) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(agent.client.clone());
    let node = node_object(&agent.node_name, pod_cidr);
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => info!(node = %agent.node_name, "node registered"),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let patch = serde_json::json!({ "metadata": { "labels": node.metadata.labels } });
            nodes
                .patch(
                    &agent.node_name,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await?;
            info!(node = %agent.node_name, "node exists; labels updated");
        }
        Err(e) => return Err(e),
    }
    Ok(())
}

async fn heartbeat(agent: &Agent, host: &HostFacts, since: Timestamp) -> Result<(), kube::Error> {
    let now = Timestamp::now();
    let nodes: Api<Node> = Api::all(agent.client.clone());
    let status = node_status(agent.host_ip, host, now, since);
    let patch = serde_json::json!({ "status": status });
    nodes
        .patch_status(
            &agent.node_name,
            &PatchParams::default(),
            &Patch::Strategic(&patch),
        )
        .await?;

    let leases: Api<Lease> = Api::namespaced(agent.client.clone(), LEASE_NAMESPACE);
    let spec = lease_spec(&agent.node_name, now);
    let patch = serde_json::json!({ "spec": spec });
    match leases
        .patch(
            &agent.node_name,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(agent.node_name.clone()),
                    namespace: Some(LEASE_NAMESPACE.to_owned()),
                    ..ObjectMeta::default()
                },
                spec: Some(spec),
            };
            leases
                .create(&PostParams::default(), &lease)
                .await
                .map(drop)
        }
        Err(e) => Err(e),
    }
}

/// Registers the Node and keeps it fresh until shutdown.
pub async fn run(agent: Arc<Agent>, pod_cidr: Ipv4Net, mut shutdown: watch::Receiver<bool>) {
    let host = HostFacts::read();
    let since = Timestamp::now();
    let mut registered = false;
    loop {
        if !registered {
            match register(&agent, pod_cidr).await {
                Ok(()) => registered = true,
                Err(e) => warn!(error = %e, "cannot register the node; retrying"),
            }
        }
        if registered && let Err(e) = heartbeat(&agent, &host, since).await {
            warn!(error = %e, "node heartbeat failed");
        }
        tokio::select! {
            () = tokio::time::sleep(HEARTBEAT) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> HostFacts {
        HostFacts {
            cpus: 2,
            memory_kib: 4_000_000,
            kernel: "6.1".into(),
            hostname: "h".into(),
            boot_id: "b".into(),
            machine_id: "m".into(),
        }
    }

    #[test]
    fn the_node_is_ready_with_its_address_and_size() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let status = node_status(std::net::Ipv4Addr::new(10, 244, 0, 1), &host(), now, now);
        let ready = status
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "True");
        assert_eq!(ready.last_heartbeat_time, Some(Time(now)));
        let internal = status
            .addresses
            .as_ref()
            .unwrap()
            .iter()
            .find(|a| a.type_ == "InternalIP")
            .unwrap();
        assert_eq!(internal.address, "10.244.0.1");
        let capacity = status.capacity.as_ref().unwrap();
        assert_eq!(capacity["cpu"], Quantity("2".into()));
        assert_eq!(capacity["memory"], Quantity("4000000Ki".into()));
        assert_eq!(capacity["pods"], Quantity("110".into()));
        assert_eq!(status.allocatable, status.capacity);
    }

    #[test]
    fn the_node_object_carries_its_pod_cidr_and_hostname_label() {
        let node = node_object("portcullis-node", "10.244.0.0/24".parse().unwrap());
        let spec = node.spec.unwrap();
        assert_eq!(spec.pod_cidr.as_deref(), Some("10.244.0.0/24"));
        assert_eq!(spec.pod_cidrs, Some(vec!["10.244.0.0/24".to_owned()]));
        assert_eq!(
            node.metadata.labels.unwrap()["kubernetes.io/hostname"],
            "portcullis-node"
        );
        let lease = lease_spec("portcullis-node", Timestamp::from_second(5).unwrap());
        assert_eq!(lease.holder_identity.as_deref(), Some("portcullis-node"));
        assert_eq!(lease.lease_duration_seconds, Some(40));
    }
}
