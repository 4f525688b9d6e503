//! File mode: a folder of manifests, watched. A changed, added or removed file is re-read,
//! translated and published; a broken file is reported with its file, document and field, and
//! the last good configuration stays in force.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, SystemTime};

use portcullis_core::desired::DesiredConfig;
use portcullis_runtime::serve::{ConfigSource, Initial, SourceUpdate};
use portcullis_translate::{TranslateOptions, manifests, translate};
use tracing::{error, info};

/// What identifies a file's version without reading it: an edit in place changes the length
/// or modification time; a rename-over (as editors save) changes the inode.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    path: PathBuf,
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

/// Watches one folder.
#[derive(Debug)]
pub struct ManifestSource {
    dir: PathBuf,
    gateway_class: Option<String>,
    stamps: Option<Vec<FileStamp>>,
}

impl ManifestSource {
    pub fn new(dir: PathBuf, gateway_class: Option<String>) -> Self {
        Self {
            dir,
            gateway_class,
            stamps: None,
        }
    }

    /// `None` when nothing changed since the last call; else the new desired config, or why
    /// the folder cannot be read (already logged: the caller keeps the last good config).
    pub fn poll(&mut self) -> Option<Result<DesiredConfig, String>> {
        let stamps = stamp_dir(&self.dir);
        if self.stamps.as_ref() == Some(&stamps) {
            return None;
        }
        self.stamps = Some(stamps);
        let loaded = self.load();
        if let Err(message) = &loaded {
            error!(dir = %self.dir.display(), error = %message, "manifests not applied; the last good configuration stays in force");
        }
        Some(loaded)
    }

    /// Reads and translates the folder now.
    pub fn load(&self) -> Result<DesiredConfig, String> {
        let loaded = manifests::load(&self.dir).map_err(|e| e.to_string())?;
        let mut options = TranslateOptions::new(portcullis_translate::check::now());
        options.extra_gateway_class = self.gateway_class.clone();
        let translation = translate(&loaded.store, &options);
        info!(
            files = loaded.files.len(),
            objects = loaded.objects,
            gateways = translation.gateway_statuses.len(),
            http_routes = translation.route_statuses.len(),
            grpc_routes = translation.grpc_route_statuses.len(),
            ports = translation.desired.ports.len(),
            "manifests translated"
        );
        Ok(translation.desired)
    }
}

/// Stamps of the files [`manifests::load`] would read (other files, such as a log written
/// next to the manifests, never trigger a reload).
fn stamp_dir(dir: &Path) -> Vec<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    manifests::manifest_files(dir)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|path| {
            let meta = std::fs::metadata(&path).ok()?;
            Some(FileStamp {
                len: meta.len(),
                modified: meta.modified().ok(),
                inode: meta.ino(),
                path,
            })
        })
        .collect()
}

/// File mode: the folder is polled every `wait`.
impl ConfigSource for ManifestSource {
    fn initial(&mut self, _terminate: &AtomicBool) -> Initial {
        match self.poll() {
            Some(Ok(desired)) => Initial::Config(desired),
            _ => {
                error!("the manifests could not be loaded; nothing to serve");
                Initial::Unavailable
            }
        }
    }

    fn next_update(&mut self, wait: Duration) -> SourceUpdate {
        std::thread::sleep(wait);
        match self.poll() {
            Some(Ok(desired)) => SourceUpdate::Changed(desired),
            Some(Err(_)) => SourceUpdate::Rejected,
            None => SourceUpdate::Unchanged,
        }
    }
}
