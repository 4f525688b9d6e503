//! Loads a folder of manifests the way `kubectl apply -f DIR` takes them.
//!
//! - Every `.yaml`, `.yml` and `.json` file directly in DIR, in file-name order. Like
//!   `kubectl apply -f DIR` without `-R`, sub-folders are not read. DIR may also be one file.
//! - Multi-document YAML; empty documents are skipped; YAML merge keys (`<<`) are applied.
//!   JSON files may hold one object or several concatenated ones.
//! - `kind: List` objects contribute their `items`.
//! - Kinds translation does not use (Deployment, CustomResourceDefinition, TLSRoute, ...) are
//!   counted and skipped. Gateway, GatewayClass and HTTPRoute are read as `v1` or `v1beta1`;
//!   ReferenceGrant as `v1beta1`, `v1` or `v1alpha2` (the shapes are identical).
//! - A namespaced object without `metadata.namespace` is put in `default`.
//!
//! A file that cannot be read or parsed is an error naming the file, the document (1-based,
//! counting every `---` document of the file), the `items` index inside a List and the field
//! path (`spec.listeners[0].port`).

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_yaml::Value;
use thiserror::Error;

use crate::store::{Object, ObjectStore, StoreError, StoredReferenceGrant};

const MANIFEST_EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

/// What a folder of manifests held.
#[derive(Debug, Clone, Default)]
pub struct LoadedManifests {
    pub store: ObjectStore,
    /// The files read, in the order they were read.
    pub files: Vec<PathBuf>,
    /// Objects put in the store (a later object with the same kind and key replaces an
    /// earlier one, as `kubectl apply` would).
    pub objects: usize,
    /// Objects of kinds translation does not use, by `apiVersion kind`.
    pub skipped: BTreeMap<String, usize>,
}

/// A manifest that cannot be read; says where.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub struct ManifestError {
    pub path: PathBuf,
    /// 1-based document number within the file.
    pub document: Option<usize>,
    /// 0-based index in the `items` of a `kind: List`.
    pub item: Option<usize>,
    pub problem: Box<ManifestProblem>,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(document) = self.document {
            write!(f, ", document {document}")?;
        }
        if let Some(item) = self.item {
            write!(f, ", items[{item}]")?;
        }
        write!(f, ": {}", self.problem)
    }
}

/// Why a manifest cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ManifestProblem {
    #[error("no such file or folder")]
    NotFound,
    #[error("cannot read: {0}")]
    Io(String),
    #[error("not valid UTF-8")]
    NotUtf8,
    #[error("not valid {format}: {message}")]
    Syntax {
        format: &'static str,
        message: String,
    },
    #[error("a manifest must be a mapping with apiVersion and kind")]
    NotAnObject,
    #[error("field `{field}` is missing or not a string")]
    MissingField { field: &'static str },
    #[error("{kind}: field `{field}`: {message}")]
    Field {
        kind: String,
        field: String,
        message: String,
    },
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// Reads every manifest of `path` (a folder, or one file) into a store.
pub fn load(path: &Path) -> Result<LoadedManifests, ManifestError> {
    let at = |problem| ManifestError {
        path: path.to_owned(),
        document: None,
        item: None,
        problem: Box::new(problem),
    };
    let metadata = fs::metadata(path).map_err(|e| {
        at(if e.kind() == std::io::ErrorKind::NotFound {
            ManifestProblem::NotFound
        } else {
            ManifestProblem::Io(e.to_string())
        })
    })?;
    if metadata.is_dir() {
        let files = manifest_files(path).map_err(|e| at(ManifestProblem::Io(e.to_string())))?;
        load_listed(files)
    } else {
        let mut loaded = LoadedManifests::default();
        load_file(path, &mut loaded)?;
        loaded.files.push(path.to_owned());
        Ok(loaded)
    }
}

/// Reads the files a folder listing found. One removed between the listing and its read
/// (an editor replacing it, `kubectl`-style tooling rewriting the folder) is read as absent,
/// as the next listing will say: the rest still makes a whole config.
fn load_listed(files: Vec<PathBuf>) -> Result<LoadedManifests, ManifestError> {
    let mut loaded = LoadedManifests::default();
    for file in files {
        match load_file(&file, &mut loaded) {
            Err(e) if *e.problem == ManifestProblem::NotFound => continue,
            other => other?,
        }
        loaded.files.push(file);
    }
    Ok(loaded)
}

/// The manifest files directly in `dir` (`.yaml`, `.yml`, `.json`), sorted by name: what
/// [`load`] reads, and what a watcher of the folder should look at.
pub fn manifest_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let is_manifest = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| MANIFEST_EXTENSIONS.contains(&e));
        if is_manifest && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Reads one file's objects into `loaded`.
pub fn load_file(path: &Path, loaded: &mut LoadedManifests) -> Result<(), ManifestError> {
    let bytes = fs::read(path).map_err(|e| ManifestError {
        path: path.to_owned(),
        document: None,
        item: None,
        problem: Box::new(if e.kind() == std::io::ErrorKind::NotFound {
            ManifestProblem::NotFound
        } else {
            ManifestProblem::Io(e.to_string())
        }),
    })?;
    let text = String::from_utf8(bytes).map_err(|_| ManifestError {
        path: path.to_owned(),
        document: None,
        item: None,
        problem: Box::new(ManifestProblem::NotUtf8),
    })?;
    let is_json = path.extension().and_then(|e| e.to_str()) == Some("json");
    load_text(path, &text, is_json, loaded)
}

/// Reads the objects of one file's text; `path` is only used in errors.
pub fn load_text(
    path: &Path,
    text: &str,
    is_json: bool,
    loaded: &mut LoadedManifests,
) -> Result<(), ManifestError> {
    let documents = if is_json {
        json_documents(text)
    } else {
        yaml_documents(text)
    };
    for (index, document) in documents.into_iter().enumerate() {
        let number = index + 1;
        let err = |item, problem| ManifestError {
            path: path.to_owned(),
            document: Some(number),
            item,
            problem: Box::new(problem),
        };
        let value = document.map_err(|problem| err(None, problem))?;
        if value.is_null() {
            continue;
        }
        add_value(value, loaded).map_err(|(item, problem)| err(item, problem))?;
    }
    Ok(())
}

fn yaml_documents(text: &str) -> Vec<Result<Value, ManifestProblem>> {
    let mut documents = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        match Value::deserialize(document) {
            Ok(mut value) => {
                // `<<` merge keys: kubectl's YAML reader applies them.
                let merged = value.apply_merge();
                documents.push(merged.map(|()| value).map_err(yaml_syntax));
            }
            Err(e) => {
                // The parser cannot resynchronise after a syntax error: stop at the first one.
                documents.push(Err(yaml_syntax(e)));
                break;
            }
        }
    }
    documents
}

fn yaml_syntax(e: serde_yaml::Error) -> ManifestProblem {
    ManifestProblem::Syntax {
        format: "YAML",
        message: e.to_string(),
    }
}

fn json_documents(text: &str) -> Vec<Result<Value, ManifestProblem>> {
    let mut documents = Vec::new();
    for document in serde_json::Deserializer::from_str(text).into_iter::<serde_json::Value>() {
        let value = document
            .map_err(|e| ManifestProblem::Syntax {
                format: "JSON",
                message: e.to_string(),
            })
            .and_then(|json| {
                serde_yaml::to_value(json).map_err(|e| ManifestProblem::Syntax {
                    format: "JSON",
                    message: e.to_string(),
                })
            });
        let failed = value.is_err();
        documents.push(value);
        if failed {
            break;
        }
    }
    documents
}

/// Adds one top-level object (or the items of a List). The error carries the `items` index.
fn add_value(
    value: Value,
    loaded: &mut LoadedManifests,
) -> Result<(), (Option<usize>, ManifestProblem)> {
    let (api_version, kind) = type_meta(&value).map_err(|p| (None, p))?;
    if api_version == "v1" && kind == "List" {
        let items = match value.get("items") {
            None | Some(Value::Null) => return Ok(()),
            Some(Value::Sequence(items)) => items.clone(),
            Some(_) => {
                return Err((
                    None,
                    ManifestProblem::Field {
                        kind: "List".to_owned(),
                        field: "items".to_owned(),
                        message: "must be a list".to_owned(),
                    },
                ));
            }
        };
        for (i, item) in items.into_iter().enumerate() {
            add_object(item, loaded).map_err(|p| (Some(i), p))?;
        }
        return Ok(());
    }
    add_object(value, loaded).map_err(|p| (None, p))
}

fn add_object(value: Value, loaded: &mut LoadedManifests) -> Result<(), ManifestProblem> {
    let (api_version, kind) = type_meta(&value)?;
    let Some(object) = typed_object(&api_version, &kind, value)? else {
        *loaded
            .skipped
            .entry(format!("{api_version} {kind}"))
            .or_default() += 1;
        return Ok(());
    };
    loaded.store.insert(object)?;
    loaded.objects += 1;
    Ok(())
}

fn type_meta(value: &Value) -> Result<(String, String), ManifestProblem> {
    if !value.is_mapping() {
        return Err(ManifestProblem::NotAnObject);
    }
    let field = |field: &'static str| {
        value
            .get(field)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .ok_or(ManifestProblem::MissingField { field })
    };
    Ok((field("apiVersion")?, field("kind")?))
}

const GATEWAY_API_VERSIONS: [&str; 2] = [
    "gateway.networking.k8s.io/v1",
    "gateway.networking.k8s.io/v1beta1",
];
/// GRPCRoute is read as Gateway API v1 serves it (Standard channel since v1.1).
const GRPC_ROUTE_VERSION: &str = "gateway.networking.k8s.io/v1";
const REFERENCE_GRANT_VERSIONS: [&str; 3] = [
    "gateway.networking.k8s.io/v1",
    "gateway.networking.k8s.io/v1beta1",
    "gateway.networking.k8s.io/v1alpha2",
];

/// The typed object for `apiVersion`/`kind`, or `None` for a kind translation does not use.
fn typed_object(
    api_version: &str,
    kind: &str,
    value: Value,
) -> Result<Option<Object>, ManifestProblem> {
    let gateway_api = GATEWAY_API_VERSIONS.contains(&api_version);
    let object = match (api_version, kind) {
        (_, "GatewayClass") if gateway_api => Object::GatewayClass(typed(kind, value)?),
        (_, "Gateway") if gateway_api => Object::Gateway(typed(kind, value)?),
        (_, "HTTPRoute") if gateway_api => Object::HttpRoute(typed(kind, value)?),
        (GRPC_ROUTE_VERSION, "GRPCRoute") => Object::GrpcRoute(typed(kind, value)?),
        (_, "ReferenceGrant") if REFERENCE_GRANT_VERSIONS.contains(&api_version) => {
            Object::ReferenceGrant(StoredReferenceGrant {
                api_version: api_version.to_owned(),
                grant: typed(kind, value)?,
            })
        }
        ("v1", "Secret") => Object::Secret(typed(kind, value)?),
        ("v1", "ConfigMap") => Object::ConfigMap(typed(kind, value)?),
        ("v1", "Service") => Object::Service(typed(kind, value)?),
        ("v1", "Namespace") => Object::Namespace(typed(kind, value)?),
        ("discovery.k8s.io/v1", "EndpointSlice") => Object::EndpointSlice(typed(kind, value)?),
        _ => return Ok(None),
    };
    Ok(Some(object))
}

/// Deserializes with the failing field's path in the error.
fn typed<T: DeserializeOwned>(kind: &str, value: Value) -> Result<T, ManifestProblem> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        ManifestProblem::Field {
            kind: kind.to_owned(),
            field,
            message: e.into_inner().to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::desired::ObjectRef;

    #[test]
    fn a_listed_file_removed_before_its_read_is_read_as_absent() {
        let dir = std::env::temp_dir().join(format!("portcullis-vanish-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let kept = dir.join("a.yaml");
        fs::write(
            &kept,
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ca, namespace: ns}\ndata: {}\n",
        )
        .unwrap();
        let gone = dir.join("b.yaml");
        let loaded = load_listed(vec![kept.clone(), gone]).unwrap();
        assert_eq!(loaded.files, vec![kept]);
        assert_eq!(loaded.objects, 1);
        // Named on its own, a missing file is still an error.
        assert!(load(&dir.join("c.yaml")).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    fn load_str(text: &str) -> Result<LoadedManifests, ManifestError> {
        let mut loaded = LoadedManifests::default();
        load_text(Path::new("m.yaml"), text, false, &mut loaded)?;
        Ok(loaded)
    }

    #[test]
    fn multi_document_yaml_with_empty_documents_and_unknown_kinds() {
        let loaded = load_str(
            "---\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: s}\n---\n\
             apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n",
        )
        .unwrap();
        assert_eq!(loaded.objects, 1);
        assert!(
            loaded
                .store
                .secrets
                .contains_key(&ObjectRef::new("default", "s"))
        );
        assert_eq!(loaded.skipped.get("apps/v1 Deployment"), Some(&1));
    }

    #[test]
    fn list_items_are_read() {
        let loaded = load_str(
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  \
             metadata: {name: a, namespace: x}\n- apiVersion: v1\n  kind: Namespace\n  \
             metadata: {name: x}\n",
        )
        .unwrap();
        assert_eq!(loaded.objects, 2);
        assert!(
            loaded
                .store
                .config_maps
                .contains_key(&ObjectRef::new("x", "a"))
        );
        assert!(loaded.store.namespaces.contains_key("x"));
    }

    #[test]
    fn gateways_are_read_as_v1beta1_too() {
        let loaded = load_str(
            "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: Gateway\nmetadata: {name: g}\n\
             spec: {gatewayClassName: c, listeners: [{name: l, port: 80, protocol: HTTP}]}\n",
        )
        .unwrap();
        assert!(
            loaded
                .store
                .gateways
                .contains_key(&ObjectRef::new("default", "g"))
        );
    }

    #[test]
    fn field_errors_name_document_and_field() {
        let err = load_str(
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: g}\n\
             spec: {gatewayClassName: c, listeners: [{name: l, port: eighty, protocol: HTTP}]}\n",
        )
        .unwrap_err();
        assert_eq!(err.document, Some(2));
        let message = err.to_string();
        assert!(message.starts_with("m.yaml, document 2: Gateway: field `spec.listeners[0].port`"));
    }

    #[test]
    fn list_item_errors_name_the_item() {
        let err = load_str(
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Secret\n  \
             metadata: {name: a}\n- apiVersion: v1\n  kind: Service\n  metadata: {name: b}\n  \
             spec: {ports: [{port: x}]}\n",
        )
        .unwrap_err();
        assert_eq!((err.document, err.item), (Some(1), Some(1)));
        assert!(err.to_string().contains("spec.ports[0].port"), "{err}");
    }

    #[test]
    fn syntax_errors_name_the_document() {
        let err = load_str("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n---\nkind: [\n")
            .unwrap_err();
        assert_eq!(err.document, Some(2));
        assert!(matches!(*err.problem, ManifestProblem::Syntax { .. }));
    }

    #[test]
    fn objects_without_kind_or_name_are_errors() {
        let err = load_str("apiVersion: v1\nmetadata: {name: s}\n").unwrap_err();
        assert_eq!(
            *err.problem,
            ManifestProblem::MissingField { field: "kind" }
        );
        let err = load_str("apiVersion: v1\nkind: Secret\nmetadata: {}\n").unwrap_err();
        assert!(matches!(*err.problem, ManifestProblem::Store(_)));
        let err = load_str("- a\n- b\n").unwrap_err();
        assert_eq!(*err.problem, ManifestProblem::NotAnObject);
    }

    #[test]
    fn json_streams_are_read() {
        let mut loaded = LoadedManifests::default();
        load_text(
            Path::new("m.json"),
            "{\"apiVersion\":\"v1\",\"kind\":\"Secret\",\"metadata\":{\"name\":\"a\"}}\n\
             {\"apiVersion\":\"v1\",\"kind\":\"Secret\",\"metadata\":{\"name\":\"b\"}}",
            true,
            &mut loaded,
        )
        .unwrap();
        assert_eq!(loaded.store.secrets.len(), 2);
    }

    #[test]
    fn merge_keys_are_applied() {
        let loaded = load_str(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  labels:\n    \
             <<: {team: x}\n    app: y\n",
        )
        .unwrap();
        let labels = loaded.store.config_maps[&ObjectRef::new("default", "a")]
            .metadata
            .labels
            .clone()
            .unwrap_or_default();
        assert_eq!(labels.get("team").map(String::as_str), Some("x"));
        assert_eq!(labels.get("app").map(String::as_str), Some("y"));
    }
}
