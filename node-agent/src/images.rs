//! The image map (`--images FILE`): which local program stands in for each container image.
//!
//! There is no container runtime: an image is only a name for a program on this host. An entry
//! matches by repository, so `registry.k8s.io/gateway-api/echo-basic` covers every tag and
//! digest of it. A container whose image has no entry never starts (`ImageNotMapped`); that is
//! the pod's problem, reported in its status, never the agent's.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

/// The file as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImagesFile {
    images: Vec<ImageEntry>,
}

/// One image and the program that stands in for it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageEntry {
    /// The repository, without tag or digest.
    pub image: String,
    /// What runs when the container has no command (the image's entrypoint).
    pub program: PathBuf,
    /// A container command whose first word is this is the image's own entrypoint: the program
    /// replaces it.
    #[serde(default)]
    pub entrypoint: Option<String>,
    /// Replaces the container's args (an image whose real arguments mean nothing here).
    #[serde(default)]
    pub args: Option<Vec<String>>,
}

/// A bad `--images` file: the operator's to fix.
#[derive(Debug, Error)]
pub enum ImageMapError {
    #[error("cannot read the image map {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the image map {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("image map entry {image:?}: the image must be a repository without tag or digest")]
    NotARepository { image: String },
    #[error("image map entry {image:?}: program {program} is not an absolute path")]
    RelativeProgram { image: String, program: PathBuf },
    #[error("image map: {image:?} is listed twice")]
    Duplicate { image: String },
}

/// The parsed map.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageMap {
    entries: Vec<ImageEntry>,
}

impl ImageMap {
    pub fn from_file(path: &Path) -> Result<Self, ImageMapError> {
        let text = std::fs::read_to_string(path).map_err(|source| ImageMapError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ParseFailure::Yaml(source) => ImageMapError::Parse {
                path: path.to_owned(),
                source,
            },
            ParseFailure::Invalid(e) => e,
        })
    }

    fn parse(text: &str) -> Result<Self, ParseFailure> {
        let file: ImagesFile = serde_yaml::from_str(text).map_err(ParseFailure::Yaml)?;
        let mut seen = std::collections::BTreeSet::new();
        for entry in &file.images {
            if entry.image.is_empty() || repository(&entry.image) != entry.image {
                return Err(ParseFailure::Invalid(ImageMapError::NotARepository {
                    image: entry.image.clone(),
                }));
            }
            if !entry.program.is_absolute() {
                return Err(ParseFailure::Invalid(ImageMapError::RelativeProgram {
                    image: entry.image.clone(),
                    program: entry.program.clone(),
                }));
            }
            if !seen.insert(entry.image.as_str()) {
                return Err(ParseFailure::Invalid(ImageMapError::Duplicate {
                    image: entry.image.clone(),
                }));
            }
        }
        Ok(Self {
            entries: file.images,
        })
    }

    /// The entry for a container's image reference (`repo`, `repo:tag`, `repo@digest`,
    /// `repo:tag@digest`).
    pub fn lookup(&self, image: &str) -> Option<&ImageEntry> {
        let repo = repository(image);
        self.entries.iter().find(|e| e.image == repo)
    }
}

enum ParseFailure {
    Yaml(serde_yaml::Error),
    Invalid(ImageMapError),
}

/// The repository part of an image reference: without `@digest` and without a `:tag` after the
/// last `/` (a `:` before it is a registry port, `localhost:5000/app`).
pub fn repository(image: &str) -> &str {
    let without_digest = image.split_once('@').map_or(image, |(repo, _)| repo);
    let last_slash = without_digest.rfind('/').map_or(0, |i| i + 1);
    match without_digest[last_slash..].find(':') {
        Some(colon) => &without_digest[..last_slash + colon],
        None => without_digest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ImageMap, ImageMapError> {
        ImageMap::parse(text).map_err(|e| match e {
            ParseFailure::Yaml(source) => ImageMapError::Parse {
                path: PathBuf::from("test"),
                source,
            },
            ParseFailure::Invalid(e) => e,
        })
    }

    const CONTRACT_EXAMPLE: &str = r#"
images:
  - image: registry.k8s.io/gateway-api/echo-basic
    program: /abs/path/echo-basic
  - image: ghcr.io/portcullis-dev/portcullis
    program: /abs/path/target/debug/portcullis
    entrypoint: /portcullis
  - image: registry.k8s.io/coredns/coredns
    program: /bin/sleep
    args: ["infinity"]
"#;

    #[test]
    fn repository_strips_tag_and_digest_but_not_a_registry_port() {
        assert_eq!(repository("nginx"), "nginx");
        assert_eq!(repository("nginx:1.27"), "nginx");
        assert_eq!(repository("a.io/b/c@sha256:abcd"), "a.io/b/c");
        assert_eq!(repository("a.io/b/c:v1@sha256:abcd"), "a.io/b/c");
        assert_eq!(repository("localhost:5000/app"), "localhost:5000/app");
        assert_eq!(repository("localhost:5000/app:v2"), "localhost:5000/app");
    }

    #[test]
    fn the_contract_example_parses_and_matches_any_tag_or_digest() {
        let map = parse(CONTRACT_EXAMPLE).unwrap();
        let echo = map
            .lookup("registry.k8s.io/gateway-api/echo-basic:v20240412-v1.0.0-394-g40c666fd")
            .unwrap();
        assert_eq!(echo.program, PathBuf::from("/abs/path/echo-basic"));
        assert_eq!(echo.entrypoint, None);
        let portcullis = map
            .lookup("ghcr.io/portcullis-dev/portcullis@sha256:0123")
            .unwrap();
        assert_eq!(portcullis.entrypoint.as_deref(), Some("/portcullis"));
        let dns = map
            .lookup("registry.k8s.io/coredns/coredns:v1.12.0")
            .unwrap();
        assert_eq!(dns.args, Some(vec!["infinity".to_owned()]));
        assert!(
            map.lookup("registry.k8s.io/gateway-api/echo-advanced:v1")
                .is_none()
        );
        assert!(map.lookup("docker.io/library/nginx").is_none());
    }

    #[test]
    fn bad_files_are_errors_that_name_the_entry() {
        assert!(matches!(
            parse("images:\n  - image: a:v1\n    program: /bin/true\n"),
            Err(ImageMapError::NotARepository { image }) if image == "a:v1"
        ));
        assert!(matches!(
            parse("images:\n  - image: a\n    program: bin/true\n"),
            Err(ImageMapError::RelativeProgram { image, .. }) if image == "a"
        ));
        assert!(matches!(
            parse("images:\n  - image: a\n    program: /x\n  - image: a\n    program: /y\n"),
            Err(ImageMapError::Duplicate { image }) if image == "a"
        ));
        assert!(matches!(
            parse("images:\n  - image: a\n    programme: /x\n"),
            Err(ImageMapError::Parse { .. })
        ));
        assert!(matches!(parse("[1, 2"), Err(ImageMapError::Parse { .. })));
    }

    #[test]
    fn a_missing_file_is_a_read_error() {
        assert!(matches!(
            ImageMap::from_file(Path::new("/nonexistent/images.yaml")),
            Err(ImageMapError::Read { .. })
        ));
    }
}
