//! What the agent made on this host, recorded in the state dir before it is made, so that a
//! crashed agent's leftovers can be removed (`portcullis-node-agent cleanup`, and every start).
//!
//! Layout of `--state-dir`:
//! - `pods/<uid>/network.json`: the pod's namespace and veth ([`NetworkRecord`]);
//! - `pods/<uid>/volumes/<name>/`: the pod's volume contents;
//! - `lb/<address>`: a LoadBalancer address on the bridge (the file holds the Service);
//! - `mountpoints`: directories and files created on the host as bind-mount targets, one a
//!   line, removed only when no pod runs (pods share them: every pod mounts its service
//!   account token at the same path);
//! - `logs/<namespace>_<pod>_<uid>/<container>.log`: container output, kept.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tracing::warn;

use crate::net;

#[derive(Debug, Error)]
pub enum StateError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn write_error(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Write {
        path: path.to_owned(),
        source,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    pub netns: String,
    pub host_veth: String,
}

/// The state dir's paths.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.root.join("pods").join(uid)
    }

    pub fn volume_dir(&self, uid: &str, volume: &str) -> PathBuf {
        self.pod_dir(uid).join("volumes").join(volume)
    }

    pub fn log_dir(&self, namespace: &str, name: &str, uid: &str) -> PathBuf {
        self.root
            .join("logs")
            .join(format!("{namespace}_{name}_{uid}"))
    }

    fn lb_dir(&self) -> PathBuf {
        self.root.join("lb")
    }

    fn mountpoints_file(&self) -> PathBuf {
        self.root.join("mountpoints")
    }

    pub fn record_network(&self, uid: &str, record: &NetworkRecord) -> Result<(), StateError> {
        let dir = self.pod_dir(uid);
        std::fs::create_dir_all(&dir).map_err(write_error(&dir))?;
        let path = dir.join("network.json");
        let json = serde_json::to_vec(record).unwrap_or_default();
        std::fs::write(&path, json).map_err(write_error(&path))
    }

    /// Removes what a pod left in the state dir (its logs stay).
    pub fn forget_pod(&self, uid: &str) {
        let dir = self.pod_dir(uid);
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warn!(dir = %dir.display(), error = %e, "cannot remove a pod's state");
        }
    }

    pub fn record_lb_address(&self, address: Ipv4Addr, service: &str) -> Result<(), StateError> {
        let dir = self.lb_dir();
        std::fs::create_dir_all(&dir).map_err(write_error(&dir))?;
        let path = dir.join(address.to_string());
        std::fs::write(&path, service).map_err(write_error(&path))
    }

    pub fn forget_lb_address(&self, address: Ipv4Addr) {
        let _ = std::fs::remove_file(self.lb_dir().join(address.to_string()));
    }

    /// Records a mountpoint about to be created.
    pub fn record_mountpoint(&self, path: &Path) -> Result<(), StateError> {
        let file = self.mountpoints_file();
        std::fs::create_dir_all(&self.root).map_err(write_error(&self.root))?;
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&file)
            .map_err(write_error(&file))?;
        writeln!(out, "{}", path.display()).map_err(write_error(&file))
    }

    /// Removes the recorded mountpoints, newest (deepest) first; one still in use or not
    /// empty stays.
    pub fn remove_mountpoints(&self) {
        let file = self.mountpoints_file();
        let Ok(text) = std::fs::read_to_string(&file) else {
            return;
        };
        for line in text.lines().rev() {
            let path = Path::new(line);
            let removed = match std::fs::symlink_metadata(path) {
                Ok(m) if m.is_dir() => std::fs::remove_dir(path),
                Ok(m) if m.is_file() && m.len() == 0 => std::fs::remove_file(path),
                _ => Ok(()),
            };
            if let Err(e) = removed {
                warn!(path = %path.display(), error = %e, "cannot remove a mountpoint the agent created");
            }
        }
        let _ = std::fs::remove_file(&file);
    }

    /// Removes every pod network, LoadBalancer address and mountpoint recorded here: the
    /// leftovers of an agent that did not stop cleanly. Idempotent.
    pub async fn cleanup(&self, bridge: &str) -> Result<(), net::NetError> {
        let mut first_error = None;
        if let Ok(pods) = std::fs::read_dir(self.root.join("pods")) {
            for pod in pods.flatten() {
                let record = std::fs::read(pod.path().join("network.json"))
                    .ok()
                    .and_then(|b| serde_json::from_slice::<NetworkRecord>(&b).ok());
                if let Some(record) = record
                    && let Err(e) = net::teardown_pod(&record.netns, &record.host_veth).await
                {
                    warn!(netns = %record.netns, error = %e, "cannot remove a pod network");
                    first_error.get_or_insert(e);
                    continue;
                }
                let _ = std::fs::remove_dir_all(pod.path());
            }
        }
        if let Ok(addresses) = std::fs::read_dir(self.lb_dir()) {
            for entry in addresses.flatten() {
                let Some(address) = entry
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<Ipv4Addr>().ok())
                else {
                    continue;
                };
                match net::remove_address(bridge, address).await {
                    Ok(()) => {
                        let _ = std::fs::remove_file(entry.path());
                    }
                    Err(e) => {
                        warn!(%address, error = %e, "cannot remove a LoadBalancer address");
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
        self.remove_mountpoints();
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
