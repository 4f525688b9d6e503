//! The controller's configuration: `portcullis controller --config FILE`, YAML or JSON.
//!
//! Every field is optional; the defaults below make a working controller. The Helm chart
//! renders this file into a ConfigMap. Kubernetes-shaped fields (`resources`, `tolerations`,
//! `affinity`, `seccompProfile`, `imagePullSecrets`, `env`, `securityContext`) take exactly the
//! Kubernetes API's JSON, so chart values pass through unchanged. The schema is documented in
//! `docs/kubernetes-mode.md`; unknown keys are refused so that a typo does not silently fall
//! back to a default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Affinity, EnvVar, LocalObjectReference, ResourceRequirements, SeccompProfile, SecurityContext,
    Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;
use thiserror::Error;

use portcullis_translate::translate::DEFAULT_CONTROLLER_NAME;

/// The data-plane image when the configuration names none: this build's version.
pub const DEFAULT_IMAGE: &str = concat!(
    "ghcr.io/portcullis-dev/portcullis:",
    env!("CARGO_PKG_VERSION")
);

/// The Lease the controllers elect a leader with.
pub const DEFAULT_LEASE_NAME: &str = "portcullis-controller";

/// The data plane's admin port inside its pod (probes, metrics).
pub const DEFAULT_ADMIN_PORT: u16 = 9901;

/// The controller's own admin endpoint (`/healthz`, `/readyz`, `/metrics`).
pub const DEFAULT_CONTROLLER_ADMIN_ADDRESS: &str = "0.0.0.0:9902";

/// Lease timing as client-go's defaults: a leader that cannot renew for 10 s stops writing;
/// the others take over 15 s after they last saw the Lease change, so the old leader has
/// stopped 5 s before anyone else starts.
const DEFAULT_LEASE_DURATION_SECONDS: u32 = 15;
const DEFAULT_RENEW_DEADLINE_SECONDS: u32 = 10;
const DEFAULT_RETRY_PERIOD_SECONDS: u32 = 2;

/// Distroless's `nonroot` user: the data plane needs no privileges beyond binding its ports.
const DEFAULT_RUN_AS_USER: i64 = 65532;

/// One whole core, requests = limits: the pod is Guaranteed, so the kubelet's static CPU
/// manager pins it to whole cores and the shard count follows the cpuset.
const DEFAULT_CPU: &str = "1";
const DEFAULT_MEMORY: &str = "256Mi";

/// Above the data plane's default 15 s drain, so that in-flight requests finish before the
/// kubelet kills the pod.
const DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS: i64 = 30;
const DEFAULT_DRAIN_TIMEOUT_SECONDS: u32 = 15;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ControllerConfig {
    /// GatewayClasses with this `spec.controllerName` are ours.
    pub controller_name: String,
    /// The controller's admin endpoint, `ADDRESS:PORT`, or `off`.
    pub admin_address: String,
    pub leader_election: LeaderElectionConfig,
    pub data_plane: DataPlaneConfig,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            controller_name: DEFAULT_CONTROLLER_NAME.to_owned(),
            admin_address: DEFAULT_CONTROLLER_ADMIN_ADDRESS.to_owned(),
            leader_election: LeaderElectionConfig::default(),
            data_plane: DataPlaneConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LeaderElectionConfig {
    /// Off: this replica writes without a Lease (only safe with one replica).
    pub enabled: bool,
    pub lease_name: String,
    /// Default: the namespace of the client (in a pod: the pod's namespace).
    pub lease_namespace: Option<String>,
    /// Default: `$POD_NAME`, else `HOSTNAME-PID`.
    pub identity: Option<String>,
    pub lease_duration_seconds: u32,
    pub renew_deadline_seconds: u32,
    pub retry_period_seconds: u32,
}

impl Default for LeaderElectionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            lease_name: DEFAULT_LEASE_NAME.to_owned(),
            lease_namespace: None,
            identity: None,
            lease_duration_seconds: DEFAULT_LEASE_DURATION_SECONDS,
            renew_deadline_seconds: DEFAULT_RENEW_DEADLINE_SECONDS,
            retry_period_seconds: DEFAULT_RETRY_PERIOD_SECONDS,
        }
    }
}

impl LeaderElectionConfig {
    pub fn lease_duration(&self) -> Duration {
        Duration::from_secs(u64::from(self.lease_duration_seconds))
    }
    pub fn renew_deadline(&self) -> Duration {
        Duration::from_secs(u64::from(self.renew_deadline_seconds))
    }
    pub fn retry_period(&self) -> Duration {
        Duration::from_secs(u64::from(self.retry_period_seconds))
    }
}

/// What the controller provisions for each Gateway.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DataPlaneConfig {
    pub image: String,
    pub image_pull_policy: String,
    pub image_pull_secrets: Vec<LocalObjectReference>,
    pub replicas: i32,
    pub resources: ResourceRequirements,
    /// Pod-level seccomp profile. containerd's `RuntimeDefault` refuses io_uring (the data
    /// plane then falls back to epoll); `Unconfined` or a `Localhost` profile allows it.
    pub seccomp_profile: SeccompProfile,
    pub run_as_user: i64,
    pub run_as_group: i64,
    /// Replaces the container securityContext the controller computes (non-root, read-only
    /// root filesystem, every capability dropped except `NET_BIND_SERVICE` when a listener
    /// port is below 1024).
    pub security_context: Option<SecurityContext>,
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
    pub affinity: Option<Affinity>,
    pub host_network: bool,
    pub pod_labels: BTreeMap<String, String>,
    pub pod_annotations: BTreeMap<String, String>,
    pub env: Vec<EnvVar>,
    /// Appended to `portcullis serve --kube --gateway NS/NAME ...`.
    pub extra_args: Vec<String>,
    /// `text` or `json`.
    pub log_format: String,
    pub admin_port: u16,
    pub drain_timeout_seconds: u32,
    pub termination_grace_period_seconds: i64,
    pub service: ServiceConfig,
    /// A PodDisruptionBudget for each Gateway's pods (node drains evict at most this many at
    /// once); none by default.
    pub pod_disruption_budget: Option<PodDisruptionBudgetConfig>,
}

impl Default for DataPlaneConfig {
    fn default() -> Self {
        let whole_core = BTreeMap::from([
            ("cpu".to_owned(), Quantity(DEFAULT_CPU.to_owned())),
            ("memory".to_owned(), Quantity(DEFAULT_MEMORY.to_owned())),
        ]);
        Self {
            image: DEFAULT_IMAGE.to_owned(),
            image_pull_policy: "IfNotPresent".to_owned(),
            image_pull_secrets: Vec::new(),
            replicas: 1,
            resources: ResourceRequirements {
                limits: Some(whole_core.clone()),
                requests: Some(whole_core),
                ..ResourceRequirements::default()
            },
            seccomp_profile: SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                localhost_profile: None,
            },
            run_as_user: DEFAULT_RUN_AS_USER,
            run_as_group: DEFAULT_RUN_AS_USER,
            security_context: None,
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            affinity: None,
            host_network: false,
            pod_labels: BTreeMap::new(),
            pod_annotations: BTreeMap::new(),
            env: Vec::new(),
            extra_args: Vec::new(),
            log_format: "json".to_owned(),
            admin_port: DEFAULT_ADMIN_PORT,
            drain_timeout_seconds: DEFAULT_DRAIN_TIMEOUT_SECONDS,
            termination_grace_period_seconds: DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS,
            service: ServiceConfig::default(),
            pod_disruption_budget: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// `LoadBalancer`, `NodePort` or `ClusterIP`.
    #[serde(rename = "type")]
    pub type_: String,
    pub annotations: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    /// `Cluster` or `Local` (LoadBalancer and NodePort only); default: the API's.
    pub external_traffic_policy: Option<String>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            type_: "LoadBalancer".to_owned(),
            annotations: BTreeMap::new(),
            labels: BTreeMap::new(),
            external_traffic_policy: None,
        }
    }
}

/// The PodDisruptionBudget of each Gateway's pods: exactly one of the two, as the API's
/// `policy/v1` (a count, or a percentage such as `"50%"`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodDisruptionBudgetConfig {
    #[serde(default)]
    pub min_available: Option<IntOrString>,
    #[serde(default)]
    pub max_unavailable: Option<IntOrString>,
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: field `{field}`: {message}")]
    Parse {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl ControllerConfig {
    /// Reads and checks a configuration file (YAML, or JSON, which is YAML too).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_text(path, &text)
    }

    /// Parses and checks configuration text; `path` only names it in errors.
    pub fn from_text(path: &Path, text: &str) -> Result<Self, ConfigError> {
        // An empty file is the defaults, as an empty values file is for Helm.
        let config: Self = if text.trim().is_empty() {
            Self::default()
        } else {
            let document = serde_yaml::Deserializer::from_str(text);
            serde_path_to_error::deserialize(document).map_err(|e| ConfigError::Parse {
                path: path.to_owned(),
                field: e.path().to_string(),
                message: e.into_inner().to_string(),
            })?
        };
        config.check().map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        Ok(config)
    }

    /// The admin address, `None` for `off`.
    pub fn admin_socket_address(&self) -> Result<Option<SocketAddr>, String> {
        if self.admin_address == "off" {
            return Ok(None);
        }
        self.admin_address.parse().map(Some).map_err(|e| {
            format!(
                "adminAddress {:?}: {e} (use ADDRESS:PORT or \"off\")",
                self.admin_address
            )
        })
    }

    /// Cross-field rules serde cannot express.
    pub fn check(&self) -> Result<(), String> {
        if self.controller_name.is_empty() {
            return Err("controllerName must not be empty".to_owned());
        }
        self.admin_socket_address()?;
        let election = &self.leader_election;
        if election.lease_name.is_empty() {
            return Err("leaderElection.leaseName must not be empty".to_owned());
        }
        if election.retry_period_seconds == 0
            || election.retry_period_seconds >= election.renew_deadline_seconds
            || election.renew_deadline_seconds >= election.lease_duration_seconds
        {
            return Err(format!(
                "leaderElection needs 0 < retryPeriodSeconds ({}) < renewDeadlineSeconds ({}) < \
                 leaseDurationSeconds ({}): a leader must give up before others may take over",
                election.retry_period_seconds,
                election.renew_deadline_seconds,
                election.lease_duration_seconds
            ));
        }
        let plane = &self.data_plane;
        if plane.image.is_empty() {
            return Err("dataPlane.image must not be empty".to_owned());
        }
        if plane.replicas < 0 {
            return Err(format!(
                "dataPlane.replicas must not be negative, got {}",
                plane.replicas
            ));
        }
        if !matches!(plane.log_format.as_str(), "text" | "json") {
            return Err(format!(
                "dataPlane.logFormat must be \"text\" or \"json\", got {:?}",
                plane.log_format
            ));
        }
        if plane.admin_port == 0 {
            return Err("dataPlane.adminPort must be 1..65535".to_owned());
        }
        if !matches!(
            plane.service.type_.as_str(),
            "LoadBalancer" | "NodePort" | "ClusterIP"
        ) {
            return Err(format!(
                "dataPlane.service.type must be LoadBalancer, NodePort or ClusterIP, got {:?}",
                plane.service.type_
            ));
        }
        if let Some(budget) = &plane.pod_disruption_budget
            && budget.min_available.is_some() == budget.max_unavailable.is_some()
        {
            return Err(
                "dataPlane.podDisruptionBudget needs exactly one of minAvailable and maxUnavailable"
                    .to_owned(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ControllerConfig, ConfigError> {
        ControllerConfig::from_text(Path::new("c.yaml"), text)
    }

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(parse("").unwrap(), ControllerConfig::default());
        assert_eq!(parse("{}").unwrap(), ControllerConfig::default());
        ControllerConfig::default().check().unwrap();
    }

    #[test]
    fn kubernetes_shaped_fields_take_the_api_json() {
        let config = parse(
            "dataPlane:\n  image: example/portcullis:1\n  replicas: 2\n  hostNetwork: true\n  \
             resources: {requests: {cpu: '4'}, limits: {cpu: '4'}}\n  \
             seccompProfile: {type: Localhost, localhostProfile: profiles/io-uring.json}\n  \
             tolerations: [{key: dedicated, operator: Equal, value: gateway, effect: NoSchedule}]\n  \
             nodeSelector: {kubernetes.io/os: linux}\n  \
             service: {type: ClusterIP, annotations: {a: b}}\n",
        )
        .unwrap();
        let plane = &config.data_plane;
        assert_eq!(plane.image, "example/portcullis:1");
        assert_eq!(plane.replicas, 2);
        assert!(plane.host_network);
        assert_eq!(plane.seccomp_profile.type_, "Localhost");
        assert_eq!(plane.tolerations[0].key.as_deref(), Some("dedicated"));
        assert_eq!(plane.service.type_, "ClusterIP");
        assert_eq!(plane.node_selector["kubernetes.io/os"], "linux");
        let requests = plane.resources.requests.as_ref().unwrap();
        assert_eq!(requests["cpu"], Quantity("4".to_owned()));
        // Untouched sections keep their defaults.
        assert_eq!(config.leader_election, LeaderElectionConfig::default());
    }

    #[test]
    fn json_is_accepted() {
        let config = parse(r#"{"leaderElection": {"leaseName": "x", "enabled": false}}"#).unwrap();
        assert_eq!(config.leader_election.lease_name, "x");
        assert!(!config.leader_election.enabled);
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_the_field() {
        let err = parse("dataPlane:\n  imagePullPolicyy: Always\n").unwrap_err();
        assert!(err.to_string().contains("dataPlane"), "{err}");
        assert!(err.to_string().contains("imagePullPolicyy"), "{err}");
        let err = parse("dataPlane:\n  replicas: two\n").unwrap_err();
        assert!(err.to_string().contains("dataPlane.replicas"), "{err}");
    }

    #[test]
    fn lease_timing_must_let_the_leader_stop_first() {
        let err = parse("leaderElection: {leaseDurationSeconds: 5, renewDeadlineSeconds: 5}\n")
            .unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { .. }), "{err}");
        parse(
            "leaderElection: {leaseDurationSeconds: 4, renewDeadlineSeconds: 3, \
             retryPeriodSeconds: 1}\n",
        )
        .unwrap();
    }

    #[test]
    fn pod_disruption_budget_takes_one_bound() {
        assert_eq!(DataPlaneConfig::default().pod_disruption_budget, None);
        let config = parse("dataPlane: {podDisruptionBudget: {maxUnavailable: 1}}").unwrap();
        assert_eq!(
            config.data_plane.pod_disruption_budget,
            Some(PodDisruptionBudgetConfig {
                min_available: None,
                max_unavailable: Some(IntOrString::Int(1)),
            })
        );
        let config = parse("dataPlane: {podDisruptionBudget: {minAvailable: '50%'}}").unwrap();
        assert_eq!(
            config
                .data_plane
                .pod_disruption_budget
                .unwrap()
                .min_available,
            Some(IntOrString::String("50%".to_owned()))
        );
        for text in [
            "dataPlane: {podDisruptionBudget: {}}",
            "dataPlane: {podDisruptionBudget: {minAvailable: 1, maxUnavailable: 1}}",
            "dataPlane: {podDisruptionBudget: {maxUnavailabel: 1}}",
        ] {
            assert!(parse(text).is_err(), "{text}");
        }
    }

    #[test]
    fn bad_values_are_refused() {
        for text in [
            "dataPlane: {service: {type: ExternalName}}",
            "dataPlane: {logFormat: xml}",
            "dataPlane: {replicas: -1}",
            "adminAddress: nowhere",
            "controllerName: ''",
        ] {
            assert!(parse(text).is_err(), "{text}");
        }
        assert_eq!(
            parse("adminAddress: 'off'")
                .unwrap()
                .admin_socket_address()
                .unwrap(),
            None
        );
    }
}
