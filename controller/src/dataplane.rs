//! `portcullis serve --kube --gateway NS/NAME`: the desired config of one Gateway, from the API
//! server, for the data plane's control loop.
//!
//! The watchers run on their own thread with a single-threaded tokio runtime (the data plane's
//! shards run monoio, and its control loop is synchronous); each new desired config is sent
//! over a channel. The data plane writes nothing to the API server.

use std::sync::mpsc;
use std::thread;

use ::kube::Client;
use portcullis_core::desired::{DesiredConfig, ObjectRef};
use tracing::{error, info};

use crate::KubeError;
use crate::watch::{WatchPlan, Watches};
use portcullis_translate::store::ObjectStore;
use portcullis_translate::translate::{TranslateOptions, translate};

/// The receiving end: one message per changed desired config, the first once every watch
/// listed everything. Disconnected only if the watcher thread ends, which it does not while
/// the receiver lives.
#[derive(Debug)]
pub struct DesiredConfigs {
    pub receiver: mpsc::Receiver<DesiredConfig>,
}

/// Connects (kubeconfig or in-cluster config) and starts watching `gateway`'s world on a new
/// thread. Fails when no client can be built; an API server that is down is retried.
pub fn spawn(gateway: ObjectRef) -> Result<DesiredConfigs, KubeError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(KubeError::Runtime)?;
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), KubeError>>();
    let (sender, receiver) = mpsc::channel();
    thread::Builder::new()
        .name("kube-watch".to_owned())
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
                watch_gateway(client, gateway, sender).await;
            });
        })
        .map_err(KubeError::Runtime)?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(DesiredConfigs { receiver }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(KubeError::WatcherGone),
    }
}

async fn watch_gateway(client: Client, gateway: ObjectRef, sender: mpsc::Sender<DesiredConfig>) {
    info!(%gateway, "watching the Gateway and the objects it references");
    let mut watches = Watches::start(client, WatchPlan::data_plane(gateway.clone())).await;
    let mut last_sent: Option<DesiredConfig> = None;
    loop {
        watches.changed().await;
        let desired = desired_config(&watches.cache.store, &gateway);
        if last_sent.as_ref() == Some(&desired) {
            continue;
        }
        info!(
            %gateway,
            present = watches.cache.store.gateways.contains_key(&gateway),
            ports = desired.ports.len(),
            "desired config changed"
        );
        if sender.send(desired.clone()).is_err() {
            error!("the data plane stopped listening; watcher exits");
            return;
        }
        last_sent = Some(desired);
    }
}

/// The desired config of `gateway` alone: served whatever its class (the controller decided
/// this data plane exists), empty when the Gateway does not exist (its ports close).
pub fn desired_config(store: &ObjectStore, gateway: &ObjectRef) -> DesiredConfig {
    let Some(object) = store.gateways.get(gateway) else {
        return DesiredConfig::default();
    };
    let mut options = TranslateOptions::new(portcullis_translate::check::now());
    options.extra_gateway_class = Some(object.spec.gateway_class_name.clone());
    if store.gateways.len() == 1 {
        return translate(store, &options).desired;
    }
    // The watch selects this one Gateway; should others be present, leave them out so that
    // they cannot take its ports.
    let mut alone = store.clone();
    alone.gateways.retain(|key, _| key == gateway);
    translate(&alone, &options).desired
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_translate::manifests::{LoadedManifests, load_text};
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
  gatewayClassName: other
  listeners: [{name: http, port: 8080, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: mine, namespace: ns, creationTimestamp: '2024-01-01T00:00:00Z'}
spec:
  gatewayClassName: whatever
  listeners: [{name: http, port: 8080, protocol: HTTP}]
";

    #[test]
    fn serves_its_gateway_whatever_the_class_and_alone() {
        let store = store(TWO_GATEWAYS);
        let mine = ObjectRef::new("ns", "mine");
        let desired = desired_config(&store, &mine);
        assert_eq!(desired.ports.len(), 1);
        // The older Gateway would have won the port in a shared translation.
        assert_eq!(desired.ports[0].gateway, mine);
    }

    #[test]
    fn a_missing_gateway_serves_nothing() {
        let store = store(TWO_GATEWAYS);
        assert_eq!(
            desired_config(&store, &ObjectRef::new("ns", "gone")),
            DesiredConfig::default()
        );
    }
}
