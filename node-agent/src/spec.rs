//! What a container runs: its environment and its command line, from the pod spec, the image
//! map and the Secrets and ConfigMaps it refers to. Pure: the objects are fetched before.
//!
//! The environment follows the kubelet: the `kubernetes` Service's variables and `HOSTNAME`
//! first, then `envFrom` in order, then `env` in order (later definitions win). Each `env`
//! value may use `$(VAR)` of the variables defined before it; command and args may use all.
//! The command line follows the API's command/args rules with the image map standing in for
//! the image: the program is the entrypoint, the entry's `args` (when set) the image's args.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use thiserror::Error;

use crate::expand::expand;
use crate::images::ImageEntry;

/// Where processes look for programs given by name.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A container the pod's spec does not let us start; the pod's fault. Reported as the
/// container's `CreateContainerConfigError` and retried (the object may appear).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SpecError {
    #[error("secret {0:?} not found")]
    SecretNotFound(String),
    #[error("couldn't find key {key} in Secret {name}")]
    SecretKeyNotFound { name: String, key: String },
    #[error("configmap {0:?} not found")]
    ConfigMapNotFound(String),
    #[error("couldn't find key {key} in ConfigMap {name}")]
    ConfigMapKeyNotFound { name: String, key: String },
    #[error("the value of key {key} in Secret {name} is not UTF-8")]
    NotUtf8 { name: String, key: String },
    #[error("unsupported fieldRef path {0:?}")]
    UnsupportedFieldPath(String),
    #[error("env {0}: resourceFieldRef is not supported by this node")]
    ResourceFieldRef(String),
}

/// The Secrets and ConfigMaps of the pod's namespace that exist, by name.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub secrets: BTreeMap<String, Secret>,
    pub config_maps: BTreeMap<String, ConfigMap>,
}

impl Sources {
    pub fn secret_value(&self, name: &str, key: &str) -> Result<Option<Vec<u8>>, SpecError> {
        let secret = self
            .secrets
            .get(name)
            .ok_or_else(|| SpecError::SecretNotFound(name.to_owned()))?;
        let from_data = secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|v| v.0.clone());
        let from_string_data = secret
            .string_data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|v| v.clone().into_bytes());
        Ok(from_data.or(from_string_data))
    }

    pub fn config_map_value(&self, name: &str, key: &str) -> Result<Option<Vec<u8>>, SpecError> {
        let map = self
            .config_maps
            .get(name)
            .ok_or_else(|| SpecError::ConfigMapNotFound(name.to_owned()))?;
        let text = map
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|v| v.clone().into_bytes());
        let binary = map
            .binary_data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|v| v.0.clone());
        Ok(text.or(binary))
    }
}

/// What the node knows of a pod beyond its object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFacts {
    pub node_name: String,
    pub host_ip: Ipv4Addr,
    pub pod_ip: Option<Ipv4Addr>,
    /// The API server as pods reach it (`KUBERNETES_SERVICE_HOST` / `_PORT`).
    pub api_server_host: String,
    pub api_server_port: u16,
}

/// The value of a downward-API `fieldRef` (env and volumes).
pub fn field_value(pod: &Pod, facts: &PodFacts, path: &str) -> Result<String, SpecError> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let map_entry = |map: Option<&BTreeMap<String, String>>, prefix: &str| {
        let key = path
            .strip_prefix(prefix)?
            .strip_suffix("']")?
            .strip_prefix("['")?;
        Some(map.and_then(|m| m.get(key)).cloned().unwrap_or_default())
    };
    let value = match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" => format_map(meta.labels.as_ref()),
        "metadata.annotations" => format_map(meta.annotations.as_ref()),
        "spec.nodeName" => facts.node_name.clone(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".to_owned()),
        "status.hostIP" | "status.hostIPs" => facts.host_ip.to_string(),
        "status.podIP" | "status.podIPs" => {
            facts.pod_ip.map(|ip| ip.to_string()).unwrap_or_default()
        }
        _ => map_entry(meta.labels.as_ref(), "metadata.labels")
            .or_else(|| map_entry(meta.annotations.as_ref(), "metadata.annotations"))
            .ok_or_else(|| SpecError::UnsupportedFieldPath(path.to_owned()))?,
    };
    Ok(value)
}

/// `key="value"` lines, as the downward API writes label and annotation maps.
fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v:?}\n"))
        .collect()
}

/// The container's environment, in definition order, without duplicates.
pub fn environment(
    pod: &Pod,
    container: &Container,
    facts: &PodFacts,
    sources: &Sources,
) -> Result<Vec<(String, String)>, SpecError> {
    let mut env = EnvList::default();
    let host = &facts.api_server_host;
    let port = facts.api_server_port;
    env.set("PATH", DEFAULT_PATH.to_owned());
    env.set("HOSTNAME", pod.metadata.name.clone().unwrap_or_default());
    env.set("KUBERNETES_SERVICE_HOST", host.clone());
    env.set("KUBERNETES_SERVICE_PORT", port.to_string());
    env.set("KUBERNETES_SERVICE_PORT_HTTPS", port.to_string());
    env.set("KUBERNETES_PORT", format!("tcp://{host}:{port}"));

    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.as_deref().unwrap_or("");
        let pairs: Vec<(String, Vec<u8>)> = if let Some(r) = &from.config_map_ref {
            match sources.config_maps.get(&r.name) {
                Some(map) => {
                    let text = map
                        .data
                        .iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), v.clone().into_bytes()));
                    let binary = map
                        .binary_data
                        .iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), v.0.clone()));
                    text.chain(binary).collect()
                }
                None if r.optional == Some(true) => Vec::new(),
                None => return Err(SpecError::ConfigMapNotFound(r.name.clone())),
            }
        } else if let Some(r) = &from.secret_ref {
            match sources.secrets.get(&r.name) {
                Some(secret) => secret
                    .data
                    .iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.0.clone()))
                    .collect(),
                None if r.optional == Some(true) => Vec::new(),
                None => return Err(SpecError::SecretNotFound(r.name.clone())),
            }
        } else {
            Vec::new()
        };
        for (key, value) in pairs {
            env.set(
                &format!("{prefix}{key}"),
                String::from_utf8_lossy(&value).into_owned(),
            );
        }
    }

    for var in container.env.iter().flatten() {
        let value = if let Some(source) = &var.value_from {
            if let Some(field) = &source.field_ref {
                Some(field_value(pod, facts, &field.field_path)?)
            } else if let Some(key) = &source.secret_key_ref {
                match sources.secret_value(&key.name, &key.key) {
                    Ok(Some(bytes)) => {
                        Some(String::from_utf8(bytes).map_err(|_| SpecError::NotUtf8 {
                            name: key.name.clone(),
                            key: key.key.clone(),
                        })?)
                    }
                    Ok(None) if key.optional == Some(true) => None,
                    Ok(None) => {
                        return Err(SpecError::SecretKeyNotFound {
                            name: key.name.clone(),
                            key: key.key.clone(),
                        });
                    }
                    Err(_) if key.optional == Some(true) => None,
                    Err(e) => return Err(e),
                }
            } else if let Some(key) = &source.config_map_key_ref {
                match sources.config_map_value(&key.name, &key.key) {
                    Ok(Some(bytes)) => Some(String::from_utf8_lossy(&bytes).into_owned()),
                    Ok(None) if key.optional == Some(true) => None,
                    Ok(None) => {
                        return Err(SpecError::ConfigMapKeyNotFound {
                            name: key.name.clone(),
                            key: key.key.clone(),
                        });
                    }
                    Err(_) if key.optional == Some(true) => None,
                    Err(e) => return Err(e),
                }
            } else {
                return Err(SpecError::ResourceFieldRef(var.name.clone()));
            }
        } else {
            let raw = var.value.as_deref().unwrap_or("");
            Some(expand(raw, |name| env.get(name)))
        };
        if let Some(value) = value {
            env.set(&var.name, value);
        }
    }
    Ok(env.0)
}

/// Variables in definition order; a redefinition replaces the value in place.
#[derive(Debug, Default)]
struct EnvList(Vec<(String, String)>);

impl EnvList {
    fn set(&mut self, name: &str, value: String) {
        match self.0.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name.to_owned(), value)),
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The command line: the API's rules with the image entry as the image.
/// - no command: the program, then the args (the container's, else the entry's);
/// - a command: as given (a first word equal to the entry's entrypoint is the program), then
///   the args;
///
/// and the entry's `args`, when set, replace the container's. `$(VAR)` expands from `env`.
pub fn command_line(
    container: &Container,
    entry: &ImageEntry,
    env: &[(String, String)],
) -> Vec<String> {
    let lookup = |name: &str| env.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    let program = entry.program.to_string_lossy().into_owned();
    let args: Vec<String> = match &entry.args {
        Some(args) => args.clone(),
        None => container
            .args
            .iter()
            .flatten()
            .map(|a| expand(a, lookup))
            .collect(),
    };
    let mut argv = Vec::new();
    match container.command.as_deref() {
        None | Some([]) => argv.push(program),
        Some([first, rest @ ..]) => {
            if entry.entrypoint.as_deref() == Some(first.as_str()) {
                argv.push(program);
            } else {
                argv.push(expand(first, lookup));
            }
            argv.extend(rest.iter().map(|c| expand(c, lookup)));
        }
    }
    argv.extend(args);
    argv
}

#[cfg(test)]
mod tests {
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::{
        ConfigMapEnvSource, ConfigMapKeySelector, EnvFromSource, EnvVar, EnvVarSource,
        ObjectFieldSelector, PodSpec, SecretKeySelector,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web-1".into()),
                namespace: Some("shop".into()),
                uid: Some("0123abcd-uid".into()),
                labels: Some(BTreeMap::from([("app".into(), "web".into())])),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                service_account_name: Some("web-sa".into()),
                ..PodSpec::default()
            }),
            ..Pod::default()
        }
    }

    fn facts() -> PodFacts {
        PodFacts {
            node_name: "portcullis-node".into(),
            host_ip: Ipv4Addr::new(10, 244, 0, 1),
            pod_ip: Some(Ipv4Addr::new(10, 244, 0, 7)),
            api_server_host: "10.244.0.1".into(),
            api_server_port: 6443,
        }
    }

    fn value(name: &str, value: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: Some(value.into()),
            value_from: None,
        }
    }

    fn from(name: &str, source: EnvVarSource) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: None,
            value_from: Some(source),
        }
    }

    fn field(name: &str, path: &str) -> EnvVar {
        from(
            name,
            EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: path.into(),
                    api_version: None,
                }),
                ..EnvVarSource::default()
            },
        )
    }

    fn secret_key(name: &str, secret: &str, key: &str, optional: bool) -> EnvVar {
        from(
            name,
            EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.into(),
                    key: key.into(),
                    optional: Some(optional),
                }),
                ..EnvVarSource::default()
            },
        )
    }

    fn sources() -> Sources {
        let secret = Secret {
            data: Some(BTreeMap::from([(
                "password".into(),
                ByteString(b"hunter2".to_vec()),
            )])),
            ..Secret::default()
        };
        let map = ConfigMap {
            data: Some(BTreeMap::from([
                ("mode".into(), "fast".into()),
                ("level".into(), "3".into()),
            ])),
            ..ConfigMap::default()
        };
        Sources {
            secrets: BTreeMap::from([("db".into(), secret)]),
            config_maps: BTreeMap::from([("settings".into(), map)]),
        }
    }

    fn get<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
        env.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn field_refs_secrets_config_maps_and_service_variables() {
        let container = Container {
            env: Some(vec![
                field("POD_NAME", "metadata.name"),
                field("POD_NAMESPACE", "metadata.namespace"),
                field("POD_UID", "metadata.uid"),
                field("POD_IP", "status.podIP"),
                field("HOST_IP", "status.hostIP"),
                field("NODE", "spec.nodeName"),
                field("SA", "spec.serviceAccountName"),
                field("APP", "metadata.labels['app']"),
                secret_key("PASSWORD", "db", "password", false),
                from(
                    "MODE",
                    EnvVarSource {
                        config_map_key_ref: Some(ConfigMapKeySelector {
                            name: "settings".into(),
                            key: "mode".into(),
                            optional: None,
                        }),
                        ..EnvVarSource::default()
                    },
                ),
            ]),
            ..Container::default()
        };
        let env = environment(&pod(), &container, &facts(), &sources()).unwrap();
        assert_eq!(get(&env, "POD_NAME"), Some("web-1"));
        assert_eq!(get(&env, "POD_NAMESPACE"), Some("shop"));
        assert_eq!(get(&env, "POD_UID"), Some("0123abcd-uid"));
        assert_eq!(get(&env, "POD_IP"), Some("10.244.0.7"));
        assert_eq!(get(&env, "HOST_IP"), Some("10.244.0.1"));
        assert_eq!(get(&env, "NODE"), Some("portcullis-node"));
        assert_eq!(get(&env, "SA"), Some("web-sa"));
        assert_eq!(get(&env, "APP"), Some("web"));
        assert_eq!(get(&env, "PASSWORD"), Some("hunter2"));
        assert_eq!(get(&env, "MODE"), Some("fast"));
        assert_eq!(get(&env, "KUBERNETES_SERVICE_HOST"), Some("10.244.0.1"));
        assert_eq!(get(&env, "KUBERNETES_SERVICE_PORT"), Some("6443"));
        assert_eq!(get(&env, "HOSTNAME"), Some("web-1"));
    }

    #[test]
    fn values_expand_earlier_variables_and_later_definitions_win() {
        let container = Container {
            env_from: Some(vec![EnvFromSource {
                config_map_ref: Some(ConfigMapEnvSource {
                    name: "settings".into(),
                    optional: None,
                }),
                prefix: Some("CFG_".into()),
                secret_ref: None,
            }]),
            env: Some(vec![
                value(
                    "URL",
                    "https://$(KUBERNETES_SERVICE_HOST):$(KUBERNETES_SERVICE_PORT)",
                ),
                value("LATER", "$(DEFINED_AFTER)"),
                value("DEFINED_AFTER", "x"),
                value("CFG_mode", "slow"),
                value("ESCAPED", "$$(URL)"),
            ]),
            ..Container::default()
        };
        let env = environment(&pod(), &container, &facts(), &sources()).unwrap();
        assert_eq!(get(&env, "URL"), Some("https://10.244.0.1:6443"));
        assert_eq!(get(&env, "LATER"), Some("$(DEFINED_AFTER)"));
        assert_eq!(get(&env, "CFG_level"), Some("3"));
        assert_eq!(get(&env, "CFG_mode"), Some("slow"));
        assert_eq!(get(&env, "ESCAPED"), Some("$(URL)"));
        assert_eq!(env.iter().filter(|(n, _)| n == "CFG_mode").count(), 1);
    }

    #[test]
    fn missing_references_fail_unless_optional() {
        let missing = |var: EnvVar| {
            let container = Container {
                env: Some(vec![var]),
                ..Container::default()
            };
            environment(&pod(), &container, &facts(), &sources())
        };
        assert_eq!(
            missing(secret_key("X", "nope", "k", false)),
            Err(SpecError::SecretNotFound("nope".into()))
        );
        assert_eq!(
            missing(secret_key("X", "db", "user", false)),
            Err(SpecError::SecretKeyNotFound {
                name: "db".into(),
                key: "user".into()
            })
        );
        let env = missing(secret_key("X", "nope", "k", true)).unwrap();
        assert_eq!(get(&env, "X"), None);
        assert_eq!(
            missing(field("X", "spec.containers")),
            Err(SpecError::UnsupportedFieldPath("spec.containers".into()))
        );
    }

    fn entry(entrypoint: Option<&str>, args: Option<&[&str]>) -> ImageEntry {
        ImageEntry {
            image: "img".into(),
            program: "/opt/prog".into(),
            entrypoint: entrypoint.map(Into::into),
            args: args.map(|a| a.iter().map(|s| (*s).to_owned()).collect()),
        }
    }

    fn container(command: Option<&[&str]>, args: Option<&[&str]>) -> Container {
        let owned = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
        Container {
            command: command.map(owned),
            args: args.map(owned),
            ..Container::default()
        }
    }

    #[test]
    fn command_and_args_follow_the_api_rules() {
        let env = vec![("PORT".to_owned(), "8080".to_owned())];
        // Neither: the image's entrypoint (the program) alone.
        assert_eq!(
            command_line(&container(None, None), &entry(None, None), &env),
            ["/opt/prog"]
        );
        // Args only: appended to the entrypoint, expanded.
        assert_eq!(
            command_line(
                &container(None, Some(&["--port", "$(PORT)"])),
                &entry(None, None),
                &env
            ),
            ["/opt/prog", "--port", "8080"]
        );
        // A command: runs as given, args after it.
        assert_eq!(
            command_line(
                &container(Some(&["sh", "-c", "echo $(PORT)"]), Some(&["x"])),
                &entry(None, None),
                &env
            ),
            ["sh", "-c", "echo 8080", "x"]
        );
        // The image's own entrypoint as command[0]: the program replaces it.
        assert_eq!(
            command_line(
                &container(Some(&["/portcullis", "serve"]), Some(&["--kube"])),
                &entry(Some("/portcullis"), None),
                &env
            ),
            ["/opt/prog", "serve", "--kube"]
        );
        // The entry's args replace the container's.
        assert_eq!(
            command_line(
                &container(None, Some(&["-conf", "/etc/coredns/Corefile"])),
                &entry(None, Some(&["infinity"])),
                &env
            ),
            ["/opt/prog", "infinity"]
        );
    }
}
