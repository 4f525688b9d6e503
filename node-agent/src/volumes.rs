//! Pod volumes as directories in the state dir, bind-mounted at each container's mountPath.
//!
//! [`volume_files`] is the pure part: the files of a secret, configMap, downwardAPI or
//! projected volume (with the service account tokens already fetched). The kubelet's rules:
//! all keys unless `items` lists some; an item's `mode`, else the volume's `defaultMode`, else
//! 0644; a missing object or key fails the volume unless `optional`. emptyDir is an empty
//! directory; hostPath is the host's path itself.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{
    ConfigMapProjection, DownwardAPIVolumeFile, KeyToPath, Pod, SecretProjection, Volume,
};
use thiserror::Error;

use crate::spec::{PodFacts, Sources, SpecError, field_value};

/// The API's default file mode (0644).
const DEFAULT_MODE: u32 = 0o644;
/// The kubelet's token lifetime when the projection names none.
pub const DEFAULT_TOKEN_SECONDS: i64 = 3600;

/// A volume the pod cannot have yet; the pod waits in `ContainerCreating` and it is retried.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VolumeError {
    #[error("volume {volume}: {source}")]
    Source {
        volume: String,
        #[source]
        source: SpecError,
    },
    #[error("volume {volume}: path {path:?} is not a relative path inside the volume")]
    BadPath { volume: String, path: String },
    #[error(
        "volume {volume}: the only volume types this node supports are emptyDir, hostPath, secret, configMap, downwardAPI and projected"
    )]
    Unsupported { volume: String },
    #[error("volume {volume}: no token for service account token path {path:?}")]
    MissingToken { volume: String, path: String },
}

/// One file of a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeFile {
    pub path: PathBuf,
    pub contents: Vec<u8>,
    pub mode: u32,
}

/// How a volume is provided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeContents {
    /// A directory of these files (emptyDir: none).
    Files(Vec<VolumeFile>),
    /// A path on the host.
    HostPath(PathBuf),
}

/// A service account token a projected volume wants: the TokenRequest to make.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TokenWant {
    pub volume: String,
    pub path: String,
    pub audience: Option<String>,
    pub expiration_seconds: i64,
}

/// The tokens every projected volume of the pod wants.
pub fn token_wants(pod: &Pod) -> Vec<TokenWant> {
    let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_ref());
    let mut wants = Vec::new();
    for volume in volumes.into_iter().flatten() {
        let sources = volume.projected.as_ref().and_then(|p| p.sources.as_ref());
        for source in sources.into_iter().flatten() {
            if let Some(token) = &source.service_account_token {
                wants.push(TokenWant {
                    volume: volume.name.clone(),
                    path: token.path.clone(),
                    audience: token.audience.clone().filter(|a| !a.is_empty()),
                    expiration_seconds: token.expiration_seconds.unwrap_or(DEFAULT_TOKEN_SECONDS),
                });
            }
        }
    }
    wants
}

/// The Secret and ConfigMap names the pod's volumes and containers refer to.
pub fn referenced_objects(pod: &Pod) -> (Vec<String>, Vec<String>) {
    let mut secrets = Vec::new();
    let mut maps = Vec::new();
    let Some(spec) = &pod.spec else {
        return (secrets, maps);
    };
    for volume in spec.volumes.iter().flatten() {
        if let Some(s) = &volume.secret {
            secrets.extend(s.secret_name.clone());
        }
        if let Some(c) = &volume.config_map {
            maps.push(c.name.clone());
        }
        let sources = volume.projected.as_ref().and_then(|p| p.sources.as_ref());
        for source in sources.into_iter().flatten() {
            secrets.extend(source.secret.as_ref().map(|s| s.name.clone()));
            maps.extend(source.config_map.as_ref().map(|c| c.name.clone()));
        }
    }
    for container in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        for from in container.env_from.iter().flatten() {
            secrets.extend(from.secret_ref.as_ref().map(|r| r.name.clone()));
            maps.extend(from.config_map_ref.as_ref().map(|r| r.name.clone()));
        }
        for var in container.env.iter().flatten() {
            let source = var.value_from.as_ref();
            secrets.extend(
                source
                    .and_then(|s| s.secret_key_ref.as_ref())
                    .map(|r| r.name.clone()),
            );
            maps.extend(
                source
                    .and_then(|s| s.config_map_key_ref.as_ref())
                    .map(|r| r.name.clone()),
            );
        }
    }
    secrets.sort();
    secrets.dedup();
    maps.sort();
    maps.dedup();
    (secrets, maps)
}

fn checked_path(volume: &str, path: &str) -> Result<PathBuf, VolumeError> {
    let p = Path::new(path);
    let fine = !path.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
    if fine {
        Ok(p.to_owned())
    } else {
        Err(VolumeError::BadPath {
            volume: volume.to_owned(),
            path: path.to_owned(),
        })
    }
}

fn mode_of(mode: Option<i32>, default: Option<i32>) -> u32 {
    mode.or(default)
        .and_then(|m| u32::try_from(m).ok())
        .map_or(DEFAULT_MODE, |m| m & 0o777)
}

/// Files from an object's key/value pairs (`items` picks and renames keys).
fn keyed_files(
    volume: &str,
    all: Option<BTreeMap<String, Vec<u8>>>,
    items: Option<&Vec<KeyToPath>>,
    optional: bool,
    default_mode: Option<i32>,
    missing_object: impl Fn() -> SpecError,
    missing_key: impl Fn(&str) -> SpecError,
) -> Result<Vec<VolumeFile>, VolumeError> {
    let source_error = |source| VolumeError::Source {
        volume: volume.to_owned(),
        source,
    };
    let Some(all) = all else {
        return if optional {
            Ok(Vec::new())
        } else {
            Err(source_error(missing_object()))
        };
    };
    let mut files = Vec::new();
    match items {
        Some(items) if !items.is_empty() => {
            for item in items {
                match all.get(&item.key) {
                    Some(contents) => files.push(VolumeFile {
                        path: checked_path(volume, &item.path)?,
                        contents: contents.clone(),
                        mode: mode_of(item.mode, default_mode),
                    }),
                    None if optional => {}
                    None => return Err(source_error(missing_key(&item.key))),
                }
            }
        }
        _ => {
            for (key, contents) in all {
                files.push(VolumeFile {
                    path: checked_path(volume, &key)?,
                    contents,
                    mode: mode_of(None, default_mode),
                });
            }
        }
    }
    Ok(files)
}

fn secret_data(sources: &Sources, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
    let secret = sources.secrets.get(name)?;
    let mut all: BTreeMap<String, Vec<u8>> = secret
        .string_data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect();
    all.extend(
        secret
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.0.clone())),
    );
    Some(all)
}

fn config_map_data(sources: &Sources, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
    let map = sources.config_maps.get(name)?;
    let mut all: BTreeMap<String, Vec<u8>> = map
        .binary_data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    all.extend(
        map.data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone().into_bytes())),
    );
    Some(all)
}

fn secret_files(
    volume: &str,
    sources: &Sources,
    s: &SecretProjection,
    default_mode: Option<i32>,
) -> Result<Vec<VolumeFile>, VolumeError> {
    keyed_files(
        volume,
        secret_data(sources, &s.name),
        s.items.as_ref(),
        s.optional == Some(true),
        default_mode,
        || SpecError::SecretNotFound(s.name.clone()),
        |key| SpecError::SecretKeyNotFound {
            name: s.name.clone(),
            key: key.to_owned(),
        },
    )
}

fn config_map_files(
    volume: &str,
    sources: &Sources,
    c: &ConfigMapProjection,
    default_mode: Option<i32>,
) -> Result<Vec<VolumeFile>, VolumeError> {
    keyed_files(
        volume,
        config_map_data(sources, &c.name),
        c.items.as_ref(),
        c.optional == Some(true),
        default_mode,
        || SpecError::ConfigMapNotFound(c.name.clone()),
        |key| SpecError::ConfigMapKeyNotFound {
            name: c.name.clone(),
            key: key.to_owned(),
        },
    )
}

fn downward_files(
    volume: &str,
    pod: &Pod,
    facts: &PodFacts,
    items: &[DownwardAPIVolumeFile],
    default_mode: Option<i32>,
) -> Result<Vec<VolumeFile>, VolumeError> {
    let mut files = Vec::new();
    for item in items {
        let Some(field) = &item.field_ref else {
            return Err(VolumeError::Source {
                volume: volume.to_owned(),
                source: SpecError::ResourceFieldRef(item.path.clone()),
            });
        };
        let value =
            field_value(pod, facts, &field.field_path).map_err(|source| VolumeError::Source {
                volume: volume.to_owned(),
                source,
            })?;
        files.push(VolumeFile {
            path: checked_path(volume, &item.path)?,
            contents: value.into_bytes(),
            mode: mode_of(item.mode, default_mode),
        });
    }
    Ok(files)
}

/// The contents of one volume. `tokens` holds the fetched service account tokens by
/// (volume, path).
pub fn volume_files(
    volume: &Volume,
    pod: &Pod,
    facts: &PodFacts,
    sources: &Sources,
    tokens: &BTreeMap<(String, String), String>,
) -> Result<VolumeContents, VolumeError> {
    let name = volume.name.as_str();
    if volume.empty_dir.is_some() {
        return Ok(VolumeContents::Files(Vec::new()));
    }
    if let Some(host) = &volume.host_path {
        return Ok(VolumeContents::HostPath(PathBuf::from(&host.path)));
    }
    if let Some(s) = &volume.secret {
        let projection = SecretProjection {
            name: s.secret_name.clone().unwrap_or_default(),
            items: s.items.clone(),
            optional: s.optional,
        };
        return secret_files(name, sources, &projection, s.default_mode).map(VolumeContents::Files);
    }
    if let Some(c) = &volume.config_map {
        let projection = ConfigMapProjection {
            name: c.name.clone(),
            items: c.items.clone(),
            optional: c.optional,
        };
        return config_map_files(name, sources, &projection, c.default_mode)
            .map(VolumeContents::Files);
    }
    if let Some(d) = &volume.downward_api {
        let items = d.items.as_deref().unwrap_or_default();
        return downward_files(name, pod, facts, items, d.default_mode).map(VolumeContents::Files);
    }
    if let Some(p) = &volume.projected {
        let mut files = Vec::new();
        for source in p.sources.iter().flatten() {
            if let Some(s) = &source.secret {
                files.extend(secret_files(name, sources, s, p.default_mode)?);
            }
            if let Some(c) = &source.config_map {
                files.extend(config_map_files(name, sources, c, p.default_mode)?);
            }
            if let Some(d) = &source.downward_api {
                let items = d.items.as_deref().unwrap_or_default();
                files.extend(downward_files(name, pod, facts, items, p.default_mode)?);
            }
            if let Some(t) = &source.service_account_token {
                let token = tokens
                    .get(&(name.to_owned(), t.path.clone()))
                    .ok_or_else(|| VolumeError::MissingToken {
                        volume: name.to_owned(),
                        path: t.path.clone(),
                    })?;
                files.push(VolumeFile {
                    path: checked_path(name, &t.path)?,
                    contents: token.clone().into_bytes(),
                    // The kubelet's mode for tokens without an explicit one: 0600 would keep
                    // a non-root process from reading it; it uses the defaultMode too.
                    mode: mode_of(None, p.default_mode),
                });
            }
        }
        return Ok(VolumeContents::Files(files));
    }
    Err(VolumeError::Unsupported {
        volume: name.to_owned(),
    })
}

/// Writes a volume's files under `dir` (replacing each file whole: a reader sees the old or
/// the new contents, never half).
pub fn write_files(dir: &Path, files: &[VolumeFile]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    for file in files {
        let path = dir.join(&file.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let tmp = path.with_extension("portcullis-tmp");
        std::fs::write(&tmp, &file.contents)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(file.mode))?;
        std::fs::rename(&tmp, &path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::{
        ConfigMap, ConfigMapVolumeSource, DownwardAPIProjection, EmptyDirVolumeSource,
        ObjectFieldSelector, PodSpec, ProjectedVolumeSource, Secret, SecretVolumeSource,
        ServiceAccountTokenProjection, VolumeProjection,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn pod(volumes: Vec<Volume>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("ns".into()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                volumes: Some(volumes),
                ..PodSpec::default()
            }),
            ..Pod::default()
        }
    }

    fn facts() -> PodFacts {
        PodFacts {
            node_name: "n".into(),
            host_ip: std::net::Ipv4Addr::new(10, 244, 0, 1),
            pod_ip: None,
            api_server_host: "10.244.0.1".into(),
            api_server_port: 6443,
        }
    }

    fn sources() -> Sources {
        Sources {
            secrets: BTreeMap::from([(
                "tls".into(),
                Secret {
                    data: Some(BTreeMap::from([
                        ("tls.crt".into(), ByteString(b"CERT".to_vec())),
                        ("tls.key".into(), ByteString(b"KEY".to_vec())),
                    ])),
                    ..Secret::default()
                },
            )]),
            config_maps: BTreeMap::from([(
                "kube-root-ca.crt".into(),
                ConfigMap {
                    data: Some(BTreeMap::from([("ca.crt".into(), "CA".into())])),
                    ..ConfigMap::default()
                },
            )]),
        }
    }

    fn files(contents: VolumeContents) -> Vec<VolumeFile> {
        match contents {
            VolumeContents::Files(f) => f,
            VolumeContents::HostPath(p) => panic!("unexpected host path {p:?}"),
        }
    }

    fn secret_volume(
        name: &str,
        items: Option<Vec<KeyToPath>>,
        mode: Option<i32>,
        optional: bool,
    ) -> Volume {
        Volume {
            name: "v".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(name.into()),
                items,
                default_mode: mode,
                optional: Some(optional),
            }),
            ..Volume::default()
        }
    }

    #[test]
    fn secret_volumes_write_every_key_or_the_items_with_their_modes() {
        let none = BTreeMap::new();
        let v = secret_volume("tls", None, Some(0o400), false);
        let all = files(volume_files(&v, &pod(vec![]), &facts(), &sources(), &none).unwrap());
        assert_eq!(all.len(), 2);
        assert!(all.iter().all(|f| f.mode == 0o400));
        assert_eq!(all[0].path, PathBuf::from("tls.crt"));
        assert_eq!(all[0].contents, b"CERT");

        let items = vec![KeyToPath {
            key: "tls.key".into(),
            path: "private/key.pem".into(),
            mode: Some(0o600),
        }];
        let v = secret_volume("tls", Some(items), None, false);
        let picked = files(volume_files(&v, &pod(vec![]), &facts(), &sources(), &none).unwrap());
        assert_eq!(
            picked,
            [VolumeFile {
                path: "private/key.pem".into(),
                contents: b"KEY".to_vec(),
                mode: 0o600
            }]
        );
    }

    #[test]
    fn missing_objects_fail_unless_optional_and_paths_stay_inside() {
        let none = BTreeMap::new();
        let v = secret_volume("nope", None, None, false);
        assert!(matches!(
            volume_files(&v, &pod(vec![]), &facts(), &sources(), &none),
            Err(VolumeError::Source {
                source: SpecError::SecretNotFound(_),
                ..
            })
        ));
        let v = secret_volume("nope", None, None, true);
        assert_eq!(
            volume_files(&v, &pod(vec![]), &facts(), &sources(), &none),
            Ok(VolumeContents::Files(vec![]))
        );
        let escape = vec![KeyToPath {
            key: "tls.key".into(),
            path: "../../etc/passwd".into(),
            mode: None,
        }];
        let v = secret_volume("tls", Some(escape), None, false);
        assert!(matches!(
            volume_files(&v, &pod(vec![]), &facts(), &sources(), &none),
            Err(VolumeError::BadPath { .. })
        ));
        let cm = Volume {
            name: "c".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: "kube-root-ca.crt".into(),
                items: Some(vec![KeyToPath {
                    key: "absent".into(),
                    path: "x".into(),
                    mode: None,
                }]),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        };
        assert!(matches!(
            volume_files(&cm, &pod(vec![]), &facts(), &sources(), &none),
            Err(VolumeError::Source {
                source: SpecError::ConfigMapKeyNotFound { .. },
                ..
            })
        ));
    }

    /// The volume the ServiceAccount admission plugin adds to every pod.
    fn kube_api_access() -> Volume {
        Volume {
            name: "kube-api-access".into(),
            projected: Some(ProjectedVolumeSource {
                default_mode: Some(0o644),
                sources: Some(vec![
                    VolumeProjection {
                        service_account_token: Some(ServiceAccountTokenProjection {
                            path: "token".into(),
                            expiration_seconds: Some(3607),
                            audience: None,
                        }),
                        ..VolumeProjection::default()
                    },
                    VolumeProjection {
                        config_map: Some(ConfigMapProjection {
                            name: "kube-root-ca.crt".into(),
                            items: Some(vec![KeyToPath {
                                key: "ca.crt".into(),
                                path: "ca.crt".into(),
                                mode: None,
                            }]),
                            optional: None,
                        }),
                        ..VolumeProjection::default()
                    },
                    VolumeProjection {
                        downward_api: Some(DownwardAPIProjection {
                            items: Some(vec![DownwardAPIVolumeFile {
                                path: "namespace".into(),
                                field_ref: Some(ObjectFieldSelector {
                                    field_path: "metadata.namespace".into(),
                                    api_version: Some("v1".into()),
                                }),
                                ..DownwardAPIVolumeFile::default()
                            }]),
                        }),
                        ..VolumeProjection::default()
                    },
                ]),
            }),
            ..Volume::default()
        }
    }

    #[test]
    fn the_service_account_volume_has_token_ca_and_namespace() {
        let v = kube_api_access();
        let p = pod(vec![
            v.clone(),
            Volume {
                name: "scratch".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            },
        ]);
        assert_eq!(
            token_wants(&p),
            [TokenWant {
                volume: "kube-api-access".into(),
                path: "token".into(),
                audience: None,
                expiration_seconds: 3607
            }]
        );
        let tokens = BTreeMap::from([(
            ("kube-api-access".to_owned(), "token".to_owned()),
            "JWT".to_owned(),
        )]);
        let got = files(volume_files(&v, &p, &facts(), &sources(), &tokens).unwrap());
        let by_path: BTreeMap<_, _> = got
            .iter()
            .map(|f| (f.path.to_str().unwrap(), &f.contents[..]))
            .collect();
        assert_eq!(
            by_path,
            BTreeMap::from([
                ("token", &b"JWT"[..]),
                ("ca.crt", &b"CA"[..]),
                ("namespace", &b"ns"[..])
            ])
        );
        assert!(matches!(
            volume_files(&v, &p, &facts(), &sources(), &BTreeMap::new()),
            Err(VolumeError::MissingToken { .. })
        ));
        assert_eq!(
            referenced_objects(&p),
            (vec![], vec!["kube-root-ca.crt".to_owned()])
        );
    }

    #[test]
    fn written_files_have_their_modes() {
        let dir = std::env::temp_dir().join(format!("pcl-volumes-test-{}", std::process::id()));
        let files = vec![
            VolumeFile {
                path: "a".into(),
                contents: b"1".to_vec(),
                mode: 0o600,
            },
            VolumeFile {
                path: "sub/b".into(),
                contents: b"2".to_vec(),
                mode: 0o644,
            },
        ];
        write_files(&dir, &files).unwrap();
        write_files(&dir, &files).unwrap();
        assert_eq!(std::fs::read(dir.join("sub/b")).unwrap(), b"2");
        let mode = std::fs::metadata(dir.join("a"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
