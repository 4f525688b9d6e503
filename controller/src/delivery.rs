//! Config delivery: the controller writes each Gateway's resolved config into two Secrets in
//! the Gateway's namespace, and that Gateway's data plane (`portcullis serve --kube --gateway
//! NS/NAME`) watches those two Secrets by name and nothing else.
//!
//! Why Secrets written by the controller, rather than a streaming API that the controller
//! serves: the API server already gives what such an API would have to build. It
//! authenticates the data plane as its ServiceAccount, authorizes it with a Role that names
//! the two objects (`resourceNames`), serves the watch over TLS, and resumes it after a
//! disconnect. The controller needs no listening port, no certificate authority of its own and
//! no per-pod credentials, and a data plane keeps serving its last config whether the
//! controller or the API server is down. The price is that every change rewrites a whole
//! object, and an object holds at most 1 MiB; `portcullis_core::delivery` explains how
//! the config is split so that endpoint churn never rewrites the certificates, and
//! `docs/kubernetes-mode.md` gives the sizes.
//!
//! Each Gateway's desired config comes from the controller's one translation per round
//! (`Translation::desired_by_gateway`: every Gateway has a data plane of its own, so none
//! takes another's port). The pure parts of delivery are here (the names, [`Received`]); the
//! objects are built and applied with the other provisioned objects (`provision.rs`), and only
//! when their fingerprint changed.

use std::sync::mpsc;
use std::thread;

use ::kube::Client;
use ::kube::api::Api;
use ::kube::runtime::WatchStreamExt;
use ::kube::runtime::watcher::{self, Event};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use portcullis_core::delivery::{self, CONFIG_KEY, DeliveryError, ENDPOINTS_KEY};
use portcullis_core::desired::{DesiredConfig, ObjectRef};
use tracing::{debug, error, info, warn};

use crate::KubeError;
use crate::backoff::CappedBackoff;

/// Longest object name (DNS subdomain).
const MAX_NAME: usize = 253;

/// The Secret holding `gateway`'s config (listeners, certificates, keys, CA bundles, routes).
pub fn config_secret_name(gateway: &ObjectRef) -> String {
    secret_name(gateway, "config")
}

/// The Secret holding the endpoints of `gateway`'s backends.
pub fn endpoints_secret_name(gateway: &ObjectRef) -> String {
    secret_name(gateway, "endpoints")
}

fn secret_name(gateway: &ObjectRef, what: &str) -> String {
    let suffix = format!("-portcullis-{what}");
    let mut name = gateway.name.clone();
    // A Gateway's name is itself at most 253 characters; keep the suffix whole.
    name.truncate(MAX_NAME - suffix.len());
    name + &suffix
}

/// One of the two objects, as a data plane last saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Seen {
    /// Not yet: a new data plane waits for it, unready.
    #[default]
    Never,
    Present(Vec<u8>),
    /// It existed and was deleted: the controller withdrew the Gateway's config.
    Deleted,
}

/// What a data plane has received of its two objects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Received {
    pub config: Seen,
    pub endpoints: Seen,
}

/// What to do with what was received.
#[derive(Debug)]
pub enum Next {
    /// Serve this config.
    Serve(DesiredConfig),
    /// Keep serving what is served: an object is missing, or the pair is not consistent yet.
    Wait(&'static str),
    /// Keep serving what is served; the pair cannot be read (logged as an error).
    Refuse(DeliveryError),
}

impl Received {
    /// Decides from the two objects as last seen. Only the controller deletes the config
    /// Secret, when the Gateway is no longer its: the ports close then (in a cluster the
    /// Deployment goes too). A controller or API server that is down deletes nothing.
    pub fn next(&self) -> Next {
        match (&self.config, &self.endpoints) {
            (Seen::Deleted, _) => Next::Serve(DesiredConfig::default()),
            (Seen::Never, _) => Next::Wait("the config Secret does not exist yet"),
            (_, Seen::Never | Seen::Deleted) => {
                Next::Wait("the endpoints Secret does not exist yet")
            }
            (Seen::Present(config), Seen::Present(endpoints)) => {
                match delivery::decode(config, endpoints) {
                    Ok(desired) => Next::Serve(desired),
                    Err(DeliveryError::EndpointsBehind { .. }) => {
                        Next::Wait("the endpoints Secret is behind the config Secret")
                    }
                    Err(e) => Next::Refuse(e),
                }
            }
        }
    }

    fn seen(&mut self, which: Which) -> &mut Seen {
        match which {
            Which::Config => &mut self.config,
            Which::Endpoints => &mut self.endpoints,
        }
    }

    /// An object was applied with `data` (empty when it lacks its key).
    fn present(&mut self, which: Which, data: Vec<u8>) {
        *self.seen(which) = Seen::Present(data);
    }

    /// An object is gone: deleted if it was there.
    fn absent(&mut self, which: Which) {
        let seen = self.seen(which);
        if *seen != Seen::Never {
            *seen = Seen::Deleted;
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Which {
    Config,
    Endpoints,
}

impl Which {
    fn key(self) -> &'static str {
        match self {
            Which::Config => CONFIG_KEY,
            Which::Endpoints => ENDPOINTS_KEY,
        }
    }
}

/// The receiving end: one message per changed desired config. Disconnected only if the
/// watcher thread ends, which it does not while the receiver lives.
#[derive(Debug)]
pub struct DesiredConfigs {
    pub receiver: mpsc::Receiver<DesiredConfig>,
}

/// Connects (kubeconfig or in-cluster config) and watches `gateway`'s two config Secrets on a
/// new thread. Fails when no client can be built; an API server that is down is retried, and
/// until then the last config sent stays in force.
pub fn spawn(gateway: ObjectRef) -> Result<DesiredConfigs, KubeError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(KubeError::Runtime)?;
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), KubeError>>();
    let (sender, receiver) = mpsc::channel();
    thread::Builder::new()
        .name("config-watch".to_owned())
        .spawn(move || {
            runtime.block_on(async move {
                let client = match Client::try_default().await {
                    Ok(client) => {
                        let _ = ready_tx.send(Ok(()));
                        client
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(KubeError::Client(e)));
                        return;
                    }
                };
                watch_config(client, gateway, sender).await;
            });
        })
        .map_err(KubeError::Runtime)?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(DesiredConfigs { receiver }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(KubeError::WatcherGone),
    }
}

/// One watch per Secret, by name: the only requests the data plane's Role allows.
fn secret_events(
    api: &Api<Secret>,
    name: String,
    which: Which,
) -> futures::stream::BoxStream<'static, (Which, Result<Event<Secret>, watcher::Error>)> {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    watcher::watcher(api.clone(), config)
        .backoff(CappedBackoff::default())
        .map(move |event| (which, event))
        .boxed()
}

async fn watch_config(client: Client, gateway: ObjectRef, sender: mpsc::Sender<DesiredConfig>) {
    let config_name = config_secret_name(&gateway);
    let endpoints_name = endpoints_secret_name(&gateway);
    info!(%gateway, config = %config_name, endpoints = %endpoints_name, "watching the Gateway's config Secrets");
    let api: Api<Secret> = Api::namespaced(client, &gateway.namespace);
    let mut events = futures::stream::select(
        secret_events(&api, config_name, Which::Config),
        secret_events(&api, endpoints_name, Which::Endpoints),
    );
    let mut received = Received::default();
    // Per watch, what its current (re)list has found: an object absent from a relist was
    // deleted while the watch was down.
    let mut listing = Received::default();
    let mut last_sent: Option<DesiredConfig> = None;
    while let Some((which, event)) = events.next().await {
        let data_of = |secret: &Secret| {
            secret
                .data
                .as_ref()
                .and_then(|d| d.get(which.key()))
                .map(|bytes| bytes.0.clone())
                .unwrap_or_default()
        };
        match event {
            Ok(Event::Apply(secret)) => received.present(which, data_of(&secret)),
            Ok(Event::Delete(_)) => received.absent(which),
            Ok(Event::Init) => *listing.seen(which) = Seen::Never,
            Ok(Event::InitApply(secret)) => listing.present(which, data_of(&secret)),
            Ok(Event::InitDone) => match std::mem::take(listing.seen(which)) {
                Seen::Present(data) => received.present(which, data),
                Seen::Never | Seen::Deleted => received.absent(which),
            },
            Err(e) => {
                warn!(error = %e, "config Secret watch failed; retrying, the last config stays in force");
                continue;
            }
        }
        match received.next() {
            Next::Serve(desired) => {
                if last_sent.as_ref() == Some(&desired) {
                    continue;
                }
                info!(%gateway, ports = desired.ports.len(), "delivered config changed");
                if sender.send(desired.clone()).is_err() {
                    error!("the data plane stopped listening; watcher exits");
                    return;
                }
                last_sent = Some(desired);
            }
            Next::Wait(why) => debug!(%gateway, why, "waiting for the config Secrets"),
            Next::Refuse(e) => {
                error!(%gateway, error = %e, "delivered config not applied; the last config stays in force");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::delivery::encode;
    use portcullis_translate::manifests::{LoadedManifests, load_text};
    use portcullis_translate::store::ObjectStore;
    use portcullis_translate::translate::{TranslateOptions, translate};
    use std::collections::BTreeMap;
    use std::path::Path;

    fn store(yaml: &str) -> ObjectStore {
        let mut loaded = LoadedManifests::default();
        load_text(Path::new("t.yaml"), yaml, false, &mut loaded).unwrap();
        loaded.store
    }

    const TWO_GATEWAYS: &str = "\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: old, namespace: ns, creationTimestamp: '2020-01-01T00:00:00Z'}
spec:
  gatewayClassName: ours
  listeners: [{name: http, port: 8080, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: mine, namespace: ns, creationTimestamp: '2024-01-01T00:00:00Z'}
spec:
  gatewayClassName: ours
  listeners: [{name: http, port: 8080, protocol: HTTP}]
";

    /// Each Gateway's desired config, as the controller translates: one translation, each
    /// Gateway with a data plane of its own.
    fn desired_by_gateway(yaml: &str) -> BTreeMap<ObjectRef, DesiredConfig> {
        let mut options = TranslateOptions::new(portcullis_translate::check::now());
        options.extra_gateway_class = Some("ours".to_owned());
        options.separate_data_planes = true;
        translate(&store(yaml), &options).desired_by_gateway
    }

    #[test]
    fn each_gateway_gets_all_its_ports_even_one_another_gateway_uses() {
        let by_gateway = desired_by_gateway(TWO_GATEWAYS);
        for name in ["old", "mine"] {
            let desired = &by_gateway[&ObjectRef::new("ns", name)];
            assert_eq!(desired.ports.len(), 1, "{name}");
            // In one process the older Gateway would keep the port.
            assert_eq!(desired.ports[0].gateway, ObjectRef::new("ns", name));
        }
        assert_eq!(by_gateway.len(), 2);
    }

    #[test]
    fn names_are_the_gateways_with_a_suffix_and_fit() {
        let gateway = ObjectRef::new("ns", "web");
        assert_eq!(config_secret_name(&gateway), "web-portcullis-config");
        assert_eq!(endpoints_secret_name(&gateway), "web-portcullis-endpoints");
        let long = ObjectRef::new("ns", "g".repeat(253));
        assert_eq!(config_secret_name(&long).len(), MAX_NAME);
        assert!(endpoints_secret_name(&long).ends_with("-portcullis-endpoints"));
    }

    #[test]
    fn a_data_plane_serves_only_a_consistent_pair() {
        let desired = desired_by_gateway(TWO_GATEWAYS)[&ObjectRef::new("ns", "mine")].clone();
        let delivered = encode(&desired).unwrap();
        let mut received = Received::default();
        received.absent(Which::Config);
        assert!(matches!(received.next(), Next::Wait(_)), "never there");
        received.present(Which::Config, delivered.config.clone());
        assert!(matches!(received.next(), Next::Wait(_)));
        received.present(Which::Endpoints, delivered.endpoints.clone());
        assert!(matches!(received.next(), Next::Serve(d) if d == desired));
        received.present(Which::Endpoints, b"not json".to_vec());
        assert!(matches!(
            received.next(),
            Next::Refuse(DeliveryError::Malformed { .. })
        ));
        received.absent(Which::Endpoints);
        assert!(matches!(received.next(), Next::Wait(_)));
        // The controller withdrew the config: the ports close.
        received.absent(Which::Config);
        assert!(matches!(received.next(), Next::Serve(d) if d == DesiredConfig::default()));
    }
}
