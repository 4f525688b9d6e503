//! What the controller creates for each of its Gateways, in the Gateway's namespace, all
//! owned by the Gateway: a ServiceAccount, a Deployment running `portcullis serve --kube
//! --gateway NS/NAME`, a Service exposing the listener ports, (when configured) a
//! PodDisruptionBudget for the Deployment's pods, the two Secrets that deliver the Gateway's
//! resolved config (`crate::delivery`), and a Role and RoleBinding that let the ServiceAccount
//! get, list and watch those two Secrets by name, and nothing else. The data plane has no
//! cluster-wide permission. ClusterRoleBindings that an earlier release made are deleted.
//!
//! Every object carries the `app.kubernetes.io/managed-by: portcullis` label (the controller
//! watches what it made through it), the `portcullis.dev/gateway: NS/NAME` annotation (which
//! Gateway it belongs to), and `portcullis.dev/config-hash`, a fingerprint of the object as
//! built: it is (re)applied only when that differs from the live object's, so an unchanged
//! Gateway costs no writes. Objects whose Gateway is gone (or no longer ours) are deleted by
//! the controller itself: owner references make the garbage collector do it in a real
//! cluster, but a test API server has no garbage collector.
//!
//! A delivered config Secret is never written over a Secret of that name that is not ours
//! (the plan reports it as a conflict): server-side apply with force would take it over.
//!
//! The builders and [`plan_provisioning`] are plain functions; [`execute`] does the calls.

use std::collections::{BTreeMap, BTreeSet};

use ::kube::Client;
use ::kube::api::{Api, DeleteParams, Patch, PatchParams};
use gateway_api::experimental::gateways::{Gateway, GatewayStatusAddresses};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, Secret,
    SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{
    ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use portcullis_core::delivery::{CONFIG_KEY, Delivered, ENDPOINTS_KEY};
use portcullis_core::desired::ObjectRef;
use serde::Serialize;
use tracing::{info, warn};

use crate::FIELD_MANAGER;
use crate::config::DataPlaneConfig;
use crate::delivery::{config_secret_name, endpoints_secret_name};
use crate::watch::{
    DELIVERED_CONFIG_LABEL, MANAGED_BY_LABEL, MANAGED_BY_VALUE, ProvisionedKind, WatchCache,
};
use portcullis_translate::store::ObjectStore;

/// Which Gateway an object belongs to, as `NS/NAME` (annotations have no length limit).
pub const GATEWAY_ANNOTATION: &str = "portcullis.dev/gateway";
/// Fingerprint of the object as built, without this annotation.
pub const CONFIG_HASH_ANNOTATION: &str = "portcullis.dev/config-hash";
/// The Gateway API's well-known label for a Gateway's generated objects.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
pub const GATEWAY_NAMESPACE_LABEL: &str = "portcullis.dev/gateway-namespace";
const APP_NAME_LABEL: &str = "app.kubernetes.io/name";
const APP_NAME_VALUE: &str = "portcullis-gateway";

/// The data plane's container.
const CONTAINER_NAME: &str = "portcullis";
const ADMIN_PORT_NAME: &str = "admin";

/// Readiness is checked often so that a pod leaves the Service quickly while draining (its
/// `/readyz` turns 503 at once).
const READINESS_PERIOD_SECONDS: i32 = 2;
/// Liveness only catches a wedged process; a slow scrape must not restart it.
const LIVENESS_PERIOD_SECONDS: i32 = 10;
const PROBE_FAILURE_THRESHOLD: i32 = 3;

/// Listener ports below this need `NET_BIND_SERVICE`.
const FIRST_UNPRIVILEGED_PORT: i32 = 1024;

/// Longest Kubernetes label value.
const MAX_LABEL_VALUE: usize = 63;

/// The Gateway and the facts the builders need about it.
#[derive(Debug, Clone, Copy)]
pub struct GatewayInfo<'a> {
    pub key: &'a ObjectRef,
    pub gateway: &'a Gateway,
    /// The `apiVersion` Gateways are served at, for owner references.
    pub api_version: &'a str,
    /// Its resolved config, encoded; `None` when it cannot be (too large: the Secrets in
    /// place are left as they are).
    pub delivered: Option<&'a Delivered>,
}

/// Everything provisioned for one Gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayObjects {
    pub service_account: ServiceAccount,
    pub deployment: Deployment,
    /// `None` when the Gateway has no listener port (a Service needs one).
    pub service: Option<Service>,
    /// Lets the ServiceAccount read the two config Secrets.
    pub role: Role,
    pub role_binding: RoleBinding,
    /// The endpoints Secret, then the config Secret (the order they are written in: a data
    /// plane waits for the endpoints a new config names); empty when `delivered` is `None`.
    pub config_secrets: Vec<Secret>,
    /// `None` unless the configuration asks for one.
    pub pod_disruption_budget: Option<PodDisruptionBudget>,
}

/// A label value for `value`: itself if it fits, else a prefix and a fingerprint.
pub fn label_value(value: &str) -> String {
    if value.len() <= MAX_LABEL_VALUE {
        return value.to_owned();
    }
    let hash = fingerprint_bytes(value.as_bytes());
    let prefix: String = value
        .chars()
        .take(MAX_LABEL_VALUE - 1 - hash.len())
        .collect();
    let prefix = prefix.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    format!("{prefix}-{hash}")
}

/// FNV-1a, 64 bits, as 16 hex digits: stable across runs and builds, enough to tell two
/// versions of one object apart (it is not a security boundary).
fn fingerprint_bytes(bytes: &[u8]) -> String {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = bytes
        .iter()
        .fold(OFFSET, |h, b| (h ^ u64::from(*b)).wrapping_mul(PRIME));
    format!("{hash:016x}")
}

/// The fingerprint of an object's JSON.
pub fn fingerprint(object: &impl Serialize) -> String {
    match serde_json::to_vec(object) {
        Ok(bytes) => fingerprint_bytes(&bytes),
        // Not reachable for Kubernetes types; an empty hash simply forces an apply.
        Err(_) => String::new(),
    }
}

/// Labels every object of a Gateway carries.
fn common_labels(key: &ObjectRef) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY_VALUE.to_owned()),
        (APP_NAME_LABEL.to_owned(), APP_NAME_VALUE.to_owned()),
        (GATEWAY_NAME_LABEL.to_owned(), label_value(&key.name)),
        (
            GATEWAY_NAMESPACE_LABEL.to_owned(),
            label_value(&key.namespace),
        ),
    ])
}

/// The Deployment's pod selector (immutable once created, so it never changes shape).
pub fn pod_selector(key: &ObjectRef) -> BTreeMap<String, String> {
    BTreeMap::from([
        (APP_NAME_LABEL.to_owned(), APP_NAME_VALUE.to_owned()),
        (GATEWAY_NAME_LABEL.to_owned(), label_value(&key.name)),
    ])
}

fn owner_reference(info: &GatewayInfo<'_>) -> Option<Vec<OwnerReference>> {
    let uid = info.gateway.metadata.uid.clone()?;
    Some(vec![OwnerReference {
        api_version: info.api_version.to_owned(),
        kind: "Gateway".to_owned(),
        name: info.key.name.clone(),
        uid,
        controller: Some(true),
        block_owner_deletion: Some(true),
    }])
}

fn metadata(
    info: &GatewayInfo<'_>,
    name: String,
    namespaced: bool,
    extra_labels: &BTreeMap<String, String>,
    extra_annotations: &BTreeMap<String, String>,
) -> ObjectMeta {
    let mut labels = extra_labels.clone();
    labels.extend(common_labels(info.key));
    let mut annotations = extra_annotations.clone();
    annotations.insert(GATEWAY_ANNOTATION.to_owned(), info.key.to_string());
    ObjectMeta {
        name: Some(name),
        namespace: namespaced.then(|| info.key.namespace.clone()),
        labels: Some(labels),
        annotations: Some(annotations),
        owner_references: if namespaced {
            owner_reference(info)
        } else {
            None
        },
        ..ObjectMeta::default()
    }
}

/// Stamps the config-hash annotation (computed without it).
fn stamp_hash<T: Serialize>(object: &mut T, meta: impl Fn(&mut T) -> &mut ObjectMeta) {
    let hash = fingerprint(&*object);
    meta(object)
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(CONFIG_HASH_ANNOTATION.to_owned(), hash);
}

/// The Gateway's distinct listener ports, sorted.
pub fn listener_ports(gateway: &Gateway) -> Vec<i32> {
    let ports: BTreeSet<i32> = gateway
        .spec
        .listeners
        .iter()
        .map(|l| l.port)
        .filter(|p| (1..=65535).contains(p))
        .collect();
    ports.into_iter().collect()
}

fn port_name(port: i32) -> String {
    format!("tcp-{port}")
}

/// Builds every object of one Gateway.
pub fn gateway_objects(info: &GatewayInfo<'_>, config: &DataPlaneConfig) -> GatewayObjects {
    let ports = listener_ports(info.gateway);
    let name = info.key.name.clone();
    let none = BTreeMap::new();

    let mut service_account = ServiceAccount {
        metadata: metadata(info, name.clone(), true, &none, &none),
        ..ServiceAccount::default()
    };
    stamp_hash(&mut service_account, |o| &mut o.metadata);

    let mut deployment = deployment(info, config, &ports);
    stamp_hash(&mut deployment, |o| &mut o.metadata);

    let service = (!ports.is_empty()).then(|| {
        let mut service = Service {
            metadata: metadata(
                info,
                name.clone(),
                true,
                &config.service.labels,
                &config.service.annotations,
            ),
            spec: Some(ServiceSpec {
                type_: Some(config.service.type_.clone()),
                selector: Some(pod_selector(info.key)),
                external_traffic_policy: config.service.external_traffic_policy.clone(),
                ports: Some(
                    ports
                        .iter()
                        .map(|port| ServicePort {
                            name: Some(port_name(*port)),
                            port: *port,
                            target_port: Some(IntOrString::Int(*port)),
                            protocol: Some("TCP".to_owned()),
                            ..ServicePort::default()
                        })
                        .collect(),
                ),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        };
        stamp_hash(&mut service, |o| &mut o.metadata);
        service
    });

    let secret_names = [
        config_secret_name(info.key),
        endpoints_secret_name(info.key),
    ];
    let mut role = Role {
        metadata: metadata(info, name.clone(), true, &none, &none),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["secrets".to_owned()]),
            resource_names: Some(secret_names.to_vec()),
            verbs: vec!["get".to_owned(), "list".to_owned(), "watch".to_owned()],
            ..PolicyRule::default()
        }]),
    };
    stamp_hash(&mut role, |o| &mut o.metadata);

    let mut role_binding = RoleBinding {
        metadata: metadata(info, name.clone(), true, &none, &none),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".to_owned()),
            kind: "Role".to_owned(),
            name: name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_owned(),
            name,
            namespace: Some(info.key.namespace.clone()),
            api_group: None,
        }]),
    };
    stamp_hash(&mut role_binding, |o| &mut o.metadata);

    let delivered_labels = BTreeMap::from([(DELIVERED_CONFIG_LABEL.to_owned(), "true".to_owned())]);
    let config_secrets = info
        .delivered
        .map(|delivered| {
            let [config_name, endpoints_name] = secret_names;
            [
                (endpoints_name, ENDPOINTS_KEY, &delivered.endpoints),
                (config_name, CONFIG_KEY, &delivered.config),
            ]
            .map(|(name, key, bytes)| {
                let mut secret = Secret {
                    metadata: metadata(info, name, true, &delivered_labels, &none),
                    type_: Some("Opaque".to_owned()),
                    data: Some(BTreeMap::from([(
                        key.to_owned(),
                        ByteString(bytes.clone()),
                    )])),
                    ..Secret::default()
                };
                stamp_hash(&mut secret, |o| &mut o.metadata);
                secret
            })
            .to_vec()
        })
        .unwrap_or_default();

    let pod_disruption_budget = config.pod_disruption_budget.as_ref().map(|budget| {
        let mut pdb = PodDisruptionBudget {
            metadata: metadata(info, info.key.name.clone(), true, &none, &none),
            spec: Some(PodDisruptionBudgetSpec {
                selector: Some(LabelSelector {
                    match_labels: Some(pod_selector(info.key)),
                    match_expressions: None,
                }),
                min_available: budget.min_available.clone(),
                max_unavailable: budget.max_unavailable.clone(),
                ..PodDisruptionBudgetSpec::default()
            }),
            status: None,
        };
        stamp_hash(&mut pdb, |o| &mut o.metadata);
        pdb
    });

    GatewayObjects {
        service_account,
        deployment,
        service,
        role,
        role_binding,
        config_secrets,
        pod_disruption_budget,
    }
}

fn deployment(info: &GatewayInfo<'_>, config: &DataPlaneConfig, ports: &[i32]) -> Deployment {
    let mut args = vec![
        "--log-format".to_owned(),
        config.log_format.clone(),
        "serve".to_owned(),
        "--kube".to_owned(),
        "--gateway".to_owned(),
        info.key.to_string(),
        // Probes come from the kubelet, outside the pod's loopback; `/config` stays on the
        // loopback (the `--admin-config` default), out of other pods' reach.
        "--admin".to_owned(),
        format!("0.0.0.0:{}", config.admin_port),
        "--drain-timeout".to_owned(),
        format!("{}s", config.drain_timeout_seconds),
    ];
    args.extend(config.extra_args.iter().cloned());

    let mut container_ports: Vec<ContainerPort> = ports
        .iter()
        .map(|port| ContainerPort {
            name: Some(port_name(*port)),
            container_port: *port,
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        })
        .collect();
    container_ports.push(ContainerPort {
        name: Some(ADMIN_PORT_NAME.to_owned()),
        container_port: i32::from(config.admin_port),
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    });

    let probe = |path: &str, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String(ADMIN_PORT_NAME.to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(PROBE_FAILURE_THRESHOLD),
        ..Probe::default()
    };

    let needs_low_ports = ports.iter().any(|p| *p < FIRST_UNPRIVILEGED_PORT);
    let security_context = config.security_context.clone().unwrap_or(SecurityContext {
        run_as_non_root: Some(true),
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: needs_low_ports.then(|| vec!["NET_BIND_SERVICE".to_owned()]),
        }),
        ..SecurityContext::default()
    });

    let field_env = |name: &str, path: &str| EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_owned(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
        value: None,
    };
    let mut env = vec![
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
    ];
    env.extend(config.env.iter().cloned());

    let container = Container {
        name: CONTAINER_NAME.to_owned(),
        image: Some(config.image.clone()),
        image_pull_policy: Some(config.image_pull_policy.clone()),
        args: Some(args),
        ports: Some(container_ports),
        env: Some(env),
        readiness_probe: Some(probe("/readyz", READINESS_PERIOD_SECONDS)),
        liveness_probe: Some(probe("/healthz", LIVENESS_PERIOD_SECONDS)),
        resources: Some(config.resources.clone()),
        security_context: Some(security_context),
        ..Container::default()
    };

    let mut pod_labels = config.pod_labels.clone();
    pod_labels.extend(common_labels(info.key));
    let non_empty = |map: &BTreeMap<String, String>| (!map.is_empty()).then(|| map.clone());
    let pod = PodSpec {
        service_account_name: Some(info.key.name.clone()),
        automount_service_account_token: Some(true),
        containers: vec![container],
        host_network: config.host_network.then_some(true),
        // With the host's network the pod still resolves cluster names.
        dns_policy: config
            .host_network
            .then(|| "ClusterFirstWithHostNet".to_owned()),
        node_selector: non_empty(&config.node_selector),
        tolerations: (!config.tolerations.is_empty()).then(|| config.tolerations.clone()),
        affinity: config.affinity.clone(),
        image_pull_secrets: (!config.image_pull_secrets.is_empty())
            .then(|| config.image_pull_secrets.clone()),
        termination_grace_period_seconds: Some(config.termination_grace_period_seconds),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(config.run_as_user),
            run_as_group: Some(config.run_as_group),
            seccomp_profile: Some(config.seccomp_profile.clone()),
            ..PodSecurityContext::default()
        }),
        ..PodSpec::default()
    };

    // Two pods on one host network cannot both bind the listener ports: replace, never surge.
    let strategy = config.host_network.then(|| DeploymentStrategy {
        type_: Some("RollingUpdate".to_owned()),
        rolling_update: Some(RollingUpdateDeployment {
            max_surge: Some(IntOrString::Int(0)),
            max_unavailable: Some(IntOrString::Int(1)),
        }),
    });

    let none = BTreeMap::new();
    Deployment {
        metadata: metadata(info, info.key.name.clone(), true, &none, &none),
        spec: Some(DeploymentSpec {
            replicas: Some(config.replicas),
            selector: LabelSelector {
                match_labels: Some(pod_selector(info.key)),
                match_expressions: None,
            },
            strategy,
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: non_empty(&config.pod_annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

/// A provisioned object, named.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ProvisionedRef {
    ServiceAccount(ObjectRef),
    Deployment(ObjectRef),
    Service(ObjectRef),
    /// Only ever deleted (see the module docs).
    ClusterRoleBinding(String),
    PodDisruptionBudget(ObjectRef),
    Role(ObjectRef),
    RoleBinding(ObjectRef),
    Secret(ObjectRef),
}

impl std::fmt::Display for ProvisionedRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProvisionedRef::ServiceAccount(at) => write!(f, "ServiceAccount {at}"),
            ProvisionedRef::Deployment(at) => write!(f, "Deployment {at}"),
            ProvisionedRef::Service(at) => write!(f, "Service {at}"),
            ProvisionedRef::ClusterRoleBinding(name) => write!(f, "ClusterRoleBinding {name}"),
            ProvisionedRef::PodDisruptionBudget(at) => write!(f, "PodDisruptionBudget {at}"),
            ProvisionedRef::Role(at) => write!(f, "Role {at}"),
            ProvisionedRef::RoleBinding(at) => write!(f, "RoleBinding {at}"),
            ProvisionedRef::Secret(at) => write!(f, "Secret {at}"),
        }
    }
}

/// One object to apply.
#[derive(Debug, Clone, PartialEq)]
pub enum Apply {
    ServiceAccount(ServiceAccount),
    Deployment(Box<Deployment>),
    Service(Box<Service>),
    PodDisruptionBudget(Box<PodDisruptionBudget>),
    Role(Role),
    RoleBinding(RoleBinding),
    Secret(Box<Secret>),
}

impl Apply {
    pub fn target(&self) -> ProvisionedRef {
        let at = |m: &ObjectMeta| {
            ObjectRef::new(
                m.namespace.clone().unwrap_or_default(),
                m.name.clone().unwrap_or_default(),
            )
        };
        match self {
            Apply::ServiceAccount(o) => ProvisionedRef::ServiceAccount(at(&o.metadata)),
            Apply::Deployment(o) => ProvisionedRef::Deployment(at(&o.metadata)),
            Apply::Service(o) => ProvisionedRef::Service(at(&o.metadata)),
            Apply::PodDisruptionBudget(o) => ProvisionedRef::PodDisruptionBudget(at(&o.metadata)),
            Apply::Role(o) => ProvisionedRef::Role(at(&o.metadata)),
            Apply::RoleBinding(o) => ProvisionedRef::RoleBinding(at(&o.metadata)),
            Apply::Secret(o) => ProvisionedRef::Secret(at(&o.metadata)),
        }
    }
}

/// The writes that bring the cluster to what our Gateways need.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProvisionPlan {
    pub apply: Vec<Apply>,
    pub delete: Vec<ProvisionedRef>,
    /// Objects not written: something not ours already has the name.
    pub conflicts: Vec<ProvisionedRef>,
}

fn hash_of(meta: &ObjectMeta) -> Option<&str> {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(CONFIG_HASH_ANNOTATION))
        .map(String::as_str)
}

fn gateway_of(meta: &ObjectMeta) -> Option<&str> {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(GATEWAY_ANNOTATION))
        .map(String::as_str)
}

fn is_managed(meta: &ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .is_some_and(|v| v == MANAGED_BY_VALUE)
}

/// Compares what `gateways` need with what the caches hold.
pub fn plan_provisioning(
    cache: &WatchCache,
    gateways: &[GatewayInfo<'_>],
    config: &DataPlaneConfig,
) -> ProvisionPlan {
    let mut plan = ProvisionPlan::default();
    let live_hash = |kind: ProvisionedKind, namespace: &str, name: &str| -> Option<String> {
        cache
            .provisioned
            .iter()
            .find(|(key, _)| {
                key.kind == kind && key.object.namespace == namespace && key.object.name == name
            })
            .and_then(|(_, o)| hash_of(&o.metadata).map(str::to_owned))
    };
    let mut wanted: BTreeSet<ProvisionedRef> = BTreeSet::new();
    for info in gateways {
        let objects = gateway_objects(info, config);
        let ns = info.key.namespace.as_str();
        let name = info.key.name.as_str();
        let needs = |kind, namespace: &str, name: &str, meta: &ObjectMeta| {
            live_hash(kind, namespace, name).as_deref() != hash_of(meta)
        };
        if needs(
            ProvisionedKind::ServiceAccount,
            ns,
            name,
            &objects.service_account.metadata,
        ) {
            plan.apply
                .push(Apply::ServiceAccount(objects.service_account));
        }
        if let Some(service) = objects.service {
            let live = cache
                .store
                .services
                .get(info.key)
                .and_then(|s| hash_of(&s.metadata));
            if live != hash_of(&service.metadata) {
                plan.apply.push(Apply::Service(Box::new(service)));
            }
            wanted.insert(ProvisionedRef::Service(info.key.clone()));
        }
        if needs(ProvisionedKind::Role, ns, name, &objects.role.metadata) {
            plan.apply.push(Apply::Role(objects.role));
        }
        if needs(
            ProvisionedKind::RoleBinding,
            ns,
            name,
            &objects.role_binding.metadata,
        ) {
            plan.apply.push(Apply::RoleBinding(objects.role_binding));
        }
        for secret_name in [
            config_secret_name(info.key),
            endpoints_secret_name(info.key),
        ] {
            let at = ObjectRef::new(ns, secret_name);
            // The Secret watch sees only Secrets that are not delivered configs.
            if cache.store.secrets.contains_key(&at) {
                plan.conflicts.push(ProvisionedRef::Secret(at));
                continue;
            }
            wanted.insert(ProvisionedRef::Secret(at));
        }
        for secret in objects.config_secrets {
            let meta = &secret.metadata;
            let secret_name = meta.name.as_deref().unwrap_or_default();
            let at = ObjectRef::new(ns, secret_name);
            if wanted.contains(&ProvisionedRef::Secret(at))
                && needs(ProvisionedKind::Secret, ns, secret_name, meta)
            {
                plan.apply.push(Apply::Secret(Box::new(secret)));
            }
        }
        // The pods last: a data plane that starts before its RoleBinding and config Secrets
        // exist has its first reads forbidden (a new pod starts within a second).
        if needs(
            ProvisionedKind::Deployment,
            ns,
            name,
            &objects.deployment.metadata,
        ) {
            plan.apply
                .push(Apply::Deployment(Box::new(objects.deployment)));
        }
        if let Some(pdb) = objects.pod_disruption_budget {
            if needs(
                ProvisionedKind::PodDisruptionBudget,
                ns,
                name,
                &pdb.metadata,
            ) {
                plan.apply.push(Apply::PodDisruptionBudget(Box::new(pdb)));
            }
            wanted.insert(ProvisionedRef::PodDisruptionBudget(info.key.clone()));
        }
        wanted.insert(ProvisionedRef::ServiceAccount(info.key.clone()));
        wanted.insert(ProvisionedRef::Deployment(info.key.clone()));
        wanted.insert(ProvisionedRef::Role(info.key.clone()));
        wanted.insert(ProvisionedRef::RoleBinding(info.key.clone()));
    }
    // Ours (label and annotation) but not wanted: its Gateway is gone or no longer ours.
    for (key, object) in &cache.provisioned {
        if gateway_of(&object.metadata).is_none() {
            continue;
        }
        let named = match key.kind {
            ProvisionedKind::ServiceAccount => ProvisionedRef::ServiceAccount(key.object.clone()),
            ProvisionedKind::Deployment => ProvisionedRef::Deployment(key.object.clone()),
            ProvisionedKind::ClusterRoleBinding => {
                ProvisionedRef::ClusterRoleBinding(key.object.name.clone())
            }
            ProvisionedKind::PodDisruptionBudget => {
                ProvisionedRef::PodDisruptionBudget(key.object.clone())
            }
            ProvisionedKind::Role => ProvisionedRef::Role(key.object.clone()),
            ProvisionedKind::RoleBinding => ProvisionedRef::RoleBinding(key.object.clone()),
            ProvisionedKind::Secret => ProvisionedRef::Secret(key.object.clone()),
        };
        if !wanted.contains(&named) {
            plan.delete.push(named);
        }
    }
    for (at, service) in &cache.store.services {
        if is_managed(&service.metadata) && gateway_of(&service.metadata).is_some() {
            let named = ProvisionedRef::Service(at.clone());
            if !wanted.contains(&named) {
                plan.delete.push(named);
            }
        }
    }
    plan.delete.sort();
    plan
}

/// `status.addresses` of each Gateway from its provisioned Service: the load balancer's
/// ingress addresses once assigned, else the cluster IP. Gateways without one are left out
/// (translation then reports their `spec.addresses`).
pub fn gateway_addresses(
    store: &ObjectStore,
    gateways: &[GatewayInfo<'_>],
) -> BTreeMap<ObjectRef, Vec<GatewayStatusAddresses>> {
    let mut addresses = BTreeMap::new();
    for info in gateways {
        let Some(service) = store.services.get(info.key) else {
            continue;
        };
        if !is_managed(&service.metadata) {
            continue;
        }
        let mut found: Vec<GatewayStatusAddresses> = service
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|ingress| {
                if let Some(ip) = ingress.ip.as_deref().filter(|ip| !ip.is_empty()) {
                    Some(address("IPAddress", ip))
                } else {
                    ingress
                        .hostname
                        .as_deref()
                        .filter(|h| !h.is_empty())
                        .map(|h| address("Hostname", h))
                }
            })
            .collect();
        if found.is_empty() {
            let spec = service.spec.as_ref();
            let cluster_ips = spec
                .and_then(|s| s.cluster_ips.clone())
                .or_else(|| spec.and_then(|s| s.cluster_ip.clone()).map(|ip| vec![ip]))
                .unwrap_or_default();
            found = cluster_ips
                .iter()
                .filter(|ip| !ip.is_empty() && ip.as_str() != "None")
                .map(|ip| address("IPAddress", ip))
                .collect();
        }
        if !found.is_empty() {
            addresses.insert(info.key.clone(), found);
        }
    }
    addresses
}

fn address(type_: &str, value: &str) -> GatewayStatusAddresses {
    GatewayStatusAddresses {
        r#type: Some(type_.to_owned()),
        value: value.to_owned(),
    }
}

/// Counts of one round of provisioning.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProvisionReport {
    pub applied: usize,
    pub deleted: usize,
    pub failed: usize,
}

const NOT_FOUND: u16 = 404;

/// Performs `plan`; `still_leader` is asked before each write.
pub async fn execute(
    client: &Client,
    plan: ProvisionPlan,
    still_leader: impl Fn() -> bool,
) -> ProvisionReport {
    let mut report = ProvisionReport::default();
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for conflict in &plan.conflicts {
        warn!(object = %conflict, "not written: an object of that name exists and is not ours; rename or delete it");
        report.failed += 1;
    }
    for apply in plan.apply {
        if !still_leader() {
            return report;
        }
        let target = apply.target();
        let result = match &apply {
            Apply::ServiceAccount(o) => {
                apply_namespaced::<ServiceAccount>(client, &o.metadata, o, &params).await
            }
            Apply::Deployment(o) => {
                apply_namespaced::<Deployment>(client, &o.metadata, o.as_ref(), &params).await
            }
            Apply::Service(o) => {
                apply_namespaced::<Service>(client, &o.metadata, o.as_ref(), &params).await
            }
            Apply::PodDisruptionBudget(o) => {
                apply_namespaced::<PodDisruptionBudget>(client, &o.metadata, o.as_ref(), &params)
                    .await
            }
            Apply::Role(o) => apply_namespaced::<Role>(client, &o.metadata, o, &params).await,
            Apply::RoleBinding(o) => {
                apply_namespaced::<RoleBinding>(client, &o.metadata, o, &params).await
            }
            Apply::Secret(o) => {
                apply_namespaced::<Secret>(client, &o.metadata, o.as_ref(), &params).await
            }
        };
        match result {
            Ok(()) => {
                info!(object = %target, "applied");
                report.applied += 1;
            }
            Err(e) => {
                warn!(object = %target, error = %e, "cannot apply");
                report.failed += 1;
            }
        }
    }
    for target in plan.delete {
        if !still_leader() {
            return report;
        }
        match delete(client, &target).await {
            Ok(()) => {
                info!(object = %target, "deleted: its Gateway is gone or no longer ours");
                report.deleted += 1;
            }
            Err(::kube::Error::Api(status)) if status.code == NOT_FOUND => {}
            Err(e) => {
                warn!(object = %target, error = %e, "cannot delete");
                report.failed += 1;
            }
        }
    }
    report
}

async fn apply_namespaced<K>(
    client: &Client,
    meta: &ObjectMeta,
    object: &K,
    params: &PatchParams,
) -> Result<(), ::kube::Error>
where
    K: ::kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + Serialize
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(
        client.clone(),
        meta.namespace.as_deref().unwrap_or_default(),
    );
    let name = meta.name.clone().unwrap_or_default();
    api.patch(&name, params, &Patch::Apply(object))
        .await
        .map(|_| ())
}

async fn delete(client: &Client, target: &ProvisionedRef) -> Result<(), ::kube::Error> {
    let params = DeleteParams::background();
    match target {
        ProvisionedRef::ServiceAccount(at) => {
            Api::<ServiceAccount>::namespaced(client.clone(), &at.namespace)
                .delete(&at.name, &params)
                .await
                .map(|_| ())
        }
        ProvisionedRef::Deployment(at) => {
            Api::<Deployment>::namespaced(client.clone(), &at.namespace)
                .delete(&at.name, &params)
                .await
                .map(|_| ())
        }
        ProvisionedRef::Service(at) => Api::<Service>::namespaced(client.clone(), &at.namespace)
            .delete(&at.name, &params)
            .await
            .map(|_| ()),
        ProvisionedRef::ClusterRoleBinding(name) => Api::<ClusterRoleBinding>::all(client.clone())
            .delete(name, &params)
            .await
            .map(|_| ()),
        ProvisionedRef::PodDisruptionBudget(at) => {
            Api::<PodDisruptionBudget>::namespaced(client.clone(), &at.namespace)
                .delete(&at.name, &params)
                .await
                .map(|_| ())
        }
        ProvisionedRef::Role(at) => Api::<Role>::namespaced(client.clone(), &at.namespace)
            .delete(&at.name, &params)
            .await
            .map(|_| ()),
        ProvisionedRef::RoleBinding(at) => {
            Api::<RoleBinding>::namespaced(client.clone(), &at.namespace)
                .delete(&at.name, &params)
                .await
                .map(|_| ())
        }
        ProvisionedRef::Secret(at) => Api::<Secret>::namespaced(client.clone(), &at.namespace)
            .delete(&at.name, &params)
            .await
            .map(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::{ProvisionedKey, ProvisionedObject};
    use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, ServiceStatus};
    use portcullis_translate::manifests::{LoadedManifests, load_text};
    use std::path::Path;

    const GATEWAY: &str = "\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: mtls, namespace: agentgateway-system, uid: 1234-abcd}
spec:
  gatewayClassName: portcullis
  listeners:
  - {name: https-8443, port: 8443, protocol: HTTPS}
  - {name: https-8444, port: 8444, protocol: HTTPS}
  - {name: again-8444, port: 8444, protocol: HTTPS, hostname: a.example.com}
";

    fn gateway(yaml: &str) -> (ObjectRef, Gateway) {
        let mut loaded = LoadedManifests::default();
        load_text(Path::new("g.yaml"), yaml, false, &mut loaded).unwrap();
        loaded.store.gateways.into_iter().next().unwrap()
    }

    fn info<'a>(key: &'a ObjectRef, gateway: &'a Gateway) -> GatewayInfo<'a> {
        GatewayInfo {
            key,
            gateway,
            api_version: "gateway.networking.k8s.io/v1",
            delivered: None,
        }
    }

    #[test]
    fn objects_are_named_after_the_gateway_owned_by_it_and_expose_its_ports() {
        let (key, gw) = gateway(GATEWAY);
        let objects = gateway_objects(&info(&key, &gw), &DataPlaneConfig::default());
        let deployment = &objects.deployment;
        assert_eq!(deployment.metadata.name.as_deref(), Some("mtls"));
        assert_eq!(
            deployment.metadata.namespace.as_deref(),
            Some("agentgateway-system")
        );
        let owner = &deployment.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (
                owner.kind.as_str(),
                owner.uid.as_str(),
                owner.controller,
                owner.block_owner_deletion
            ),
            ("Gateway", "1234-abcd", Some(true), Some(true))
        );
        let pod = deployment
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap();
        let container = &pod.containers[0];
        let args = container.args.as_ref().unwrap().join(" ");
        assert!(
            args.contains("serve --kube --gateway agentgateway-system/mtls --admin 0.0.0.0:9901"),
            "{args}"
        );
        let ports: Vec<i32> = container
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| p.container_port)
            .collect();
        assert_eq!(ports, vec![8443, 8444, 9901]);
        assert_eq!(
            container
                .readiness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .as_deref(),
            Some("/readyz")
        );
        assert_eq!(pod.service_account_name.as_deref(), Some("mtls"));
        let security = container.security_context.as_ref().unwrap();
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(
            security.capabilities.as_ref().unwrap().add,
            None,
            "no port below 1024"
        );

        let service = objects.service.as_ref().unwrap();
        let spec = service.spec.as_ref().unwrap();
        assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
        let service_ports: Vec<i32> = spec
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| p.port)
            .collect();
        assert_eq!(service_ports, vec![8443, 8444]);
        // The Service selects the Deployment's pods.
        let template_labels = deployment
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .as_ref()
            .unwrap();
        for (k, v) in spec.selector.as_ref().unwrap() {
            assert_eq!(template_labels.get(k), Some(v));
        }
        let binding = &objects.role_binding;
        assert_eq!(
            (
                binding.role_ref.kind.as_str(),
                binding.role_ref.name.as_str()
            ),
            ("Role", "mtls")
        );
        let subject = &binding.subjects.as_ref().unwrap()[0];
        assert_eq!(
            (subject.name.as_str(), subject.namespace.as_deref()),
            ("mtls", Some("agentgateway-system"))
        );
        assert!(binding.metadata.owner_references.is_some());
        assert_eq!(
            binding.metadata.annotations.as_ref().unwrap()[GATEWAY_ANNOTATION],
            "agentgateway-system/mtls"
        );
    }

    /// The data plane may read its two config Secrets, by name, and nothing else.
    #[test]
    fn the_data_plane_role_reads_only_its_config_secrets() {
        let (key, gw) = gateway(GATEWAY);
        let role = gateway_objects(&info(&key, &gw), &DataPlaneConfig::default()).role;
        assert_eq!(
            role.metadata.namespace.as_deref(),
            Some("agentgateway-system")
        );
        let rules = role.rules.unwrap();
        assert_eq!(rules.len(), 1);
        let rule = &rules[0];
        assert_eq!(rule.api_groups, Some(vec![String::new()]));
        assert_eq!(rule.resources, Some(vec!["secrets".to_owned()]));
        assert_eq!(
            rule.resource_names,
            Some(vec![
                "mtls-portcullis-config".to_owned(),
                "mtls-portcullis-endpoints".to_owned()
            ])
        );
        assert_eq!(rule.verbs, vec!["get", "list", "watch"]);
    }

    #[test]
    fn configuration_reaches_the_pod_template() {
        let (key, gw) = gateway(&GATEWAY.replace("port: 8443", "port: 443"));
        let config: DataPlaneConfig = serde_yaml::from_str(
            "image: example/p:2\nreplicas: 3\nhostNetwork: true\n\
             seccompProfile: {type: Unconfined}\n\
             nodeSelector: {pool: edge}\n\
             tolerations: [{key: edge, operator: Exists}]\n\
             service: {type: NodePort, annotations: {lb: internal}}\n",
        )
        .unwrap();
        let objects = gateway_objects(&info(&key, &gw), &config);
        let spec = objects.deployment.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(3));
        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.host_network, Some(true));
        assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
        assert_eq!(
            spec.strategy
                .as_ref()
                .unwrap()
                .rolling_update
                .as_ref()
                .unwrap()
                .max_surge,
            Some(IntOrString::Int(0))
        );
        assert_eq!(pod.node_selector.as_ref().unwrap()["pool"], "edge");
        assert_eq!(
            pod.security_context
                .as_ref()
                .unwrap()
                .seccomp_profile
                .as_ref()
                .unwrap()
                .type_,
            "Unconfined"
        );
        let container = &pod.containers[0];
        assert_eq!(container.image.as_deref(), Some("example/p:2"));
        assert_eq!(
            container
                .security_context
                .as_ref()
                .unwrap()
                .capabilities
                .as_ref()
                .unwrap()
                .add,
            Some(vec!["NET_BIND_SERVICE".to_owned()])
        );
        let service = objects.service.unwrap();
        assert_eq!(service.spec.unwrap().type_.as_deref(), Some("NodePort"));
        assert_eq!(service.metadata.annotations.unwrap()["lb"], "internal");
    }

    #[test]
    fn long_names_give_valid_labels() {
        let long = "a".repeat(200);
        let value = label_value(&long);
        assert!(value.len() <= MAX_LABEL_VALUE);
        assert_ne!(label_value(&long), label_value(&"a".repeat(201)));
        assert_eq!(label_value("short"), "short");
    }

    fn provisioned(
        kind: ProvisionedKind,
        meta: &ObjectMeta,
    ) -> (ProvisionedKey, ProvisionedObject) {
        let object = ProvisionedObject {
            kind,
            metadata: meta.clone(),
        };
        (object.key(), object)
    }

    /// The cache after the API server accepted `plan`'s applies.
    fn after(cache: &mut WatchCache, plan: &ProvisionPlan) {
        for apply in &plan.apply {
            match apply {
                Apply::ServiceAccount(o) => {
                    let (k, v) = provisioned(ProvisionedKind::ServiceAccount, &o.metadata);
                    cache.provisioned.insert(k, v);
                }
                Apply::Deployment(o) => {
                    let (k, v) = provisioned(ProvisionedKind::Deployment, &o.metadata);
                    cache.provisioned.insert(k, v);
                }
                Apply::Role(o) => {
                    let (k, v) = provisioned(ProvisionedKind::Role, &o.metadata);
                    cache.provisioned.insert(k, v);
                }
                Apply::RoleBinding(o) => {
                    let (k, v) = provisioned(ProvisionedKind::RoleBinding, &o.metadata);
                    cache.provisioned.insert(k, v);
                }
                Apply::Secret(o) => {
                    let (k, v) = provisioned(ProvisionedKind::Secret, &o.metadata);
                    cache.provisioned.insert(k, v);
                }
                Apply::Service(o) => {
                    cache.store.insert(o.as_ref().clone()).unwrap();
                }
                Apply::PodDisruptionBudget(o) => {
                    let (k, v) = provisioned(ProvisionedKind::PodDisruptionBudget, &o.metadata);
                    cache.provisioned.insert(k, v);
                }
            }
        }
    }

    fn delivered(endpoints: &[&str]) -> Delivered {
        use portcullis_core::desired::{
            BackendProtocol, BackendTarget, DesiredBackend, DesiredConfig, DesiredListener,
            DesiredPort, DesiredRoute, DesiredRule, PortProtocol,
        };
        portcullis_core::delivery::encode(&DesiredConfig {
            ports: vec![DesiredPort {
                port: 8080,
                protocol: PortProtocol::Http,
                gateway: ObjectRef::new("agentgateway-system", "mtls"),
                client_validation: portcullis_core::desired::ClientValidation::NotRequested,
                listeners: vec![DesiredListener {
                    name: "http".to_owned(),
                    hostname: None,
                    tls: None,
                    routes: vec![DesiredRoute {
                        route: ObjectRef::new("apps", "web"),
                        hostnames: Vec::new(),
                        rules: vec![DesiredRule {
                            matches: Vec::new(),
                            filters: Default::default(),
                            backends: vec![DesiredBackend {
                                name: "apps/web:80".to_owned(),
                                weight: 1,
                                protocol: BackendProtocol::Http1,
                                target: BackendTarget::Endpoints(
                                    endpoints.iter().map(|e| e.parse().unwrap()).collect(),
                                ),
                            }],
                        }],
                    }],
                }],
            }],
        })
        .unwrap()
    }

    fn targets(plan: &ProvisionPlan) -> Vec<String> {
        plan.apply.iter().map(|a| a.target().to_string()).collect()
    }

    #[test]
    fn provisioning_applies_once_reapplies_on_change_and_cleans_up() {
        let (key, gw) = gateway(GATEWAY);
        let config = DataPlaneConfig::default();
        let mut cache = WatchCache::new();
        let config_v1 = delivered(&["10.0.0.1:80"]);
        let with = |gw, delivered| GatewayInfo {
            delivered: Some(delivered),
            ..info(&key, gw)
        };
        let first = plan_provisioning(&cache, &[with(&gw, &config_v1)], &config);
        assert_eq!(
            targets(&first),
            vec![
                "ServiceAccount agentgateway-system/mtls",
                "Service agentgateway-system/mtls",
                "Role agentgateway-system/mtls",
                "RoleBinding agentgateway-system/mtls",
                // The endpoints first: a data plane waits for the endpoints a config names.
                "Secret agentgateway-system/mtls-portcullis-endpoints",
                "Secret agentgateway-system/mtls-portcullis-config",
                // Its pods start once they may read their config and it is there.
                "Deployment agentgateway-system/mtls",
            ]
        );
        assert!(first.delete.is_empty());
        after(&mut cache, &first);
        assert_eq!(
            plan_provisioning(&cache, &[with(&gw, &config_v1)], &config),
            ProvisionPlan::default(),
            "nothing changed, nothing written"
        );
        // New endpoints rewrite the endpoints Secret alone.
        let config_v2 = delivered(&["10.0.0.1:80", "10.0.0.2:80"]);
        let plan = plan_provisioning(&cache, &[with(&gw, &config_v2)], &config);
        assert_eq!(
            targets(&plan),
            vec!["Secret agentgateway-system/mtls-portcullis-endpoints"]
        );
        // A config that cannot be delivered leaves the Secrets in place.
        let plan = plan_provisioning(&cache, &[info(&key, &gw)], &config);
        assert_eq!(plan, ProvisionPlan::default());
        // A new listener port changes the Deployment and the Service only.
        let (key, bigger) = gateway(&format!(
            "{GATEWAY}  - {{name: more, port: 9443, protocol: HTTPS}}\n"
        ));
        let plan = plan_provisioning(&cache, &[info(&key, &bigger)], &config);
        assert_eq!(
            targets(&plan),
            vec![
                "Service agentgateway-system/mtls",
                "Deployment agentgateway-system/mtls"
            ]
        );
        // The Gateway is gone: everything it had goes, and so does a binding 0.1 made.
        let legacy = ObjectMeta {
            name: Some("portcullis-dataplane-agentgateway-system-mtls".to_owned()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.to_owned(),
                MANAGED_BY_VALUE.to_owned(),
            )])),
            annotations: Some(BTreeMap::from([(
                GATEWAY_ANNOTATION.to_owned(),
                "agentgateway-system/mtls".to_owned(),
            )])),
            ..ObjectMeta::default()
        };
        let (k, v) = provisioned(ProvisionedKind::ClusterRoleBinding, &legacy);
        cache.provisioned.insert(k, v);
        assert_eq!(
            plan_provisioning(&cache, &[with(&gw, &config_v1)], &config).delete,
            vec![ProvisionedRef::ClusterRoleBinding(
                "portcullis-dataplane-agentgateway-system-mtls".to_owned()
            )],
            "0.1's ClusterRoleBinding goes while the Gateway stays"
        );
        let plan = plan_provisioning(&cache, &[], &config);
        assert!(plan.apply.is_empty());
        let deleted: Vec<String> = plan.delete.iter().map(ToString::to_string).collect();
        assert_eq!(
            deleted,
            vec![
                "ServiceAccount agentgateway-system/mtls",
                "Deployment agentgateway-system/mtls",
                "Service agentgateway-system/mtls",
                "ClusterRoleBinding portcullis-dataplane-agentgateway-system-mtls",
                "Role agentgateway-system/mtls",
                "RoleBinding agentgateway-system/mtls",
                "Secret agentgateway-system/mtls-portcullis-config",
                "Secret agentgateway-system/mtls-portcullis-endpoints",
            ]
        );
    }

    #[test]
    fn a_secret_that_is_not_ours_is_never_overwritten() {
        let (key, gw) = gateway(GATEWAY);
        let mut cache = WatchCache::new();
        cache
            .store
            .insert(Secret {
                metadata: ObjectMeta {
                    name: Some("mtls-portcullis-config".to_owned()),
                    namespace: Some("agentgateway-system".to_owned()),
                    ..ObjectMeta::default()
                },
                ..Secret::default()
            })
            .unwrap();
        let config_v1 = delivered(&["10.0.0.1:80"]);
        let info = GatewayInfo {
            delivered: Some(&config_v1),
            ..info(&key, &gw)
        };
        let plan = plan_provisioning(&cache, &[info], &DataPlaneConfig::default());
        assert_eq!(
            plan.conflicts,
            vec![ProvisionedRef::Secret(ObjectRef::new(
                "agentgateway-system",
                "mtls-portcullis-config"
            ))]
        );
        assert!(
            targets(&plan)
                .contains(&"Secret agentgateway-system/mtls-portcullis-endpoints".to_owned())
        );
        assert!(
            !targets(&plan)
                .contains(&"Secret agentgateway-system/mtls-portcullis-config".to_owned())
        );
    }

    #[test]
    fn a_configured_pod_disruption_budget_covers_the_gateway_pods_and_goes_when_unconfigured() {
        let (key, gw) = gateway(GATEWAY);
        let mut config = DataPlaneConfig::default();
        assert_eq!(
            gateway_objects(&info(&key, &gw), &config).pod_disruption_budget,
            None,
            "none by default"
        );
        config.pod_disruption_budget = Some(crate::config::PodDisruptionBudgetConfig {
            min_available: None,
            max_unavailable: Some(IntOrString::Int(1)),
        });
        let objects = gateway_objects(&info(&key, &gw), &config);
        let pdb = objects.pod_disruption_budget.unwrap();
        assert_eq!(pdb.metadata.name.as_deref(), Some("mtls"));
        assert_eq!(
            pdb.metadata.namespace.as_deref(),
            Some("agentgateway-system")
        );
        assert_eq!(
            pdb.metadata.owner_references.as_ref().unwrap()[0].kind,
            "Gateway"
        );
        let spec = pdb.spec.as_ref().unwrap();
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(spec.min_available, None);
        // It selects exactly the Deployment's pods.
        let deployment = objects.deployment.spec.unwrap();
        assert_eq!(
            spec.selector.as_ref().unwrap().match_labels,
            deployment.selector.match_labels
        );

        let mut cache = WatchCache::new();
        let first = plan_provisioning(&cache, &[info(&key, &gw)], &config);
        assert!(
            first
                .apply
                .iter()
                .any(|a| a.target().to_string() == "PodDisruptionBudget agentgateway-system/mtls")
        );
        after(&mut cache, &first);
        assert_eq!(
            plan_provisioning(&cache, &[info(&key, &gw)], &config),
            ProvisionPlan::default()
        );
        // Turned off in the configuration: the budget goes, nothing else changes.
        config.pod_disruption_budget = None;
        let plan = plan_provisioning(&cache, &[info(&key, &gw)], &config);
        assert!(plan.apply.is_empty());
        let deleted: Vec<String> = plan.delete.iter().map(ToString::to_string).collect();
        assert_eq!(
            deleted,
            vec!["PodDisruptionBudget agentgateway-system/mtls"]
        );
    }

    #[test]
    fn services_not_made_by_us_are_never_deleted_or_used_for_addresses() {
        let (key, gw) = gateway(GATEWAY);
        let mut cache = WatchCache::new();
        let mut user_service = Service {
            metadata: ObjectMeta {
                name: Some("mtls".to_owned()),
                namespace: Some("agentgateway-system".to_owned()),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some("10.0.0.9".to_owned()),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        };
        cache.store.insert(user_service.clone()).unwrap();
        let plan = plan_provisioning(&cache, &[], &DataPlaneConfig::default());
        assert!(plan.delete.is_empty());
        assert!(gateway_addresses(&cache.store, &[info(&key, &gw)]).is_empty());
        // Ours: the cluster IP until a load balancer reports in.
        user_service.metadata.labels = Some(BTreeMap::from([(
            MANAGED_BY_LABEL.to_owned(),
            MANAGED_BY_VALUE.to_owned(),
        )]));
        cache.store.insert(user_service.clone()).unwrap();
        let addresses = gateway_addresses(&cache.store, &[info(&key, &gw)]);
        assert_eq!(addresses[&key], vec![address("IPAddress", "10.0.0.9")]);
        user_service.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(vec![LoadBalancerIngress {
                    hostname: Some("lb.example.com".to_owned()),
                    ..LoadBalancerIngress::default()
                }]),
            }),
            conditions: None,
        });
        cache.store.insert(user_service).unwrap();
        let addresses = gateway_addresses(&cache.store, &[info(&key, &gw)]);
        assert_eq!(addresses[&key], vec![address("Hostname", "lb.example.com")]);
    }
}
