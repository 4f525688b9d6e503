//! Which ports each Gateway's data plane actually listens on.
//!
//! A data plane may not write to the API server (it may only read its two config Secrets), so
//! it cannot report a port it fails to listen on (held by another process, or below 1024
//! without the capability). The controller asks instead: every [`PROBE_INTERVAL`] it GETs
//! `/readyz` from the admin port of each running data-plane pod of its Gateways. That is the
//! endpoint the kubelet probes, and while a port is not served it answers 503 with one line
//! per such port and the reason. A port that any pod does not serve makes the listeners on it
//! `Programmed=False` with reason `Pending` (the data plane keeps trying every second); once
//! every pod serves it, they are programmed again.
//!
//! A pod that does not answer in [`PROBE_TIMEOUT`] tells nothing and is left out: whether it
//! runs at all is the Deployment's status, not a listener's. The parsing and merging are plain
//! functions; [`probe`] does the calls.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ::kube::Client;
use ::kube::api::{Api, ListParams};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use portcullis_core::desired::ObjectRef;
use tracing::{debug, warn};

use crate::provision::pod_selector;

/// How often the data planes are asked.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// How long one pod may take to answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The most of a `/readyz` body read: one short line per port.
const MAX_READYZ_BYTES: usize = 64 * 1024;

/// What `/readyz` answers while a port is not served: `port PORT not served: WHY`.
const UNSERVED_PREFIX: &str = "port ";
const UNSERVED_INFIX: &str = " not served: ";

/// The ports a data plane's `/readyz` body names as not served, with why. Lines of another
/// shape (waiting for configuration, draining) name no port.
pub fn unserved_ports(readyz_body: &str) -> BTreeMap<u16, String> {
    readyz_body
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(UNSERVED_PREFIX)?;
            let (port, why) = rest.split_once(UNSERVED_INFIX)?;
            Some((port.parse().ok()?, why.to_owned()))
        })
        .collect()
}

/// One Gateway's ports not served by some pod, each with the first pod's reason.
pub fn merge_reports(reports: &[(String, BTreeMap<u16, String>)]) -> BTreeMap<u16, String> {
    let mut merged = BTreeMap::new();
    for (pod, ports) in reports {
        for (port, why) in ports {
            merged
                .entry(*port)
                .or_insert_with(|| format!("pod {pod}: {why}"));
        }
    }
    merged
}

/// Asks every running data-plane pod of `gateways`; Gateways with every port served are left
/// out of the answer.
pub async fn probe(
    client: &Client,
    gateways: &[ObjectRef],
    admin_port: u16,
) -> BTreeMap<ObjectRef, BTreeMap<u16, String>> {
    let mut unserved = BTreeMap::new();
    for gateway in gateways {
        let selector: Vec<String> = pod_selector(gateway)
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let api: Api<Pod> = Api::namespaced(client.clone(), &gateway.namespace);
        let pods = match api
            .list(&ListParams::default().labels(&selector.join(",")))
            .await
        {
            Ok(pods) => pods.items,
            Err(e) => {
                warn!(%gateway, error = %e, "cannot list the data plane's pods");
                continue;
            }
        };
        let mut reports = Vec::new();
        for pod in pods {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let status = pod.status.as_ref();
            let running = status.and_then(|s| s.phase.as_deref()) == Some("Running");
            let ip = status
                .and_then(|s| s.pod_ip.as_deref())
                .and_then(|ip| ip.parse::<IpAddr>().ok());
            let (true, Some(ip)) = (running, ip) else {
                continue;
            };
            match readyz(SocketAddr::new(ip, admin_port)).await {
                Some(body) => reports.push((name, unserved_ports(&body))),
                None => debug!(%gateway, pod = %name, "no answer from the data plane's admin port"),
            }
        }
        let merged = merge_reports(&reports);
        if !merged.is_empty() {
            unserved.insert(gateway.clone(), merged);
        }
    }
    unserved
}

/// The body of `GET /readyz` at `address`, whatever the status; `None` when there is no
/// answer in time.
async fn readyz(address: SocketAddr) -> Option<String> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(address).await.ok()?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(connection);
        let request = hyper::Request::get("/readyz")
            .header(hyper::header::HOST, address.to_string())
            .body(Empty::<Bytes>::new())
            .ok()?;
        let response = sender.send_request(request).await.ok()?;
        let body = Limited::new(response.into_body(), MAX_READYZ_BYTES)
            .collect()
            .await
            .ok()?
            .to_bytes();
        Some(String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(PROBE_TIMEOUT, exchange)
        .await
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readyz_bodies_name_the_ports_not_served() {
        let body = "port 8443 not served: port 8443 is already in use by another process\n\
                    port 80 not served: permission denied (below 1024 without NET_BIND_SERVICE)\n";
        assert_eq!(
            unserved_ports(body),
            BTreeMap::from([
                (
                    80,
                    "permission denied (below 1024 without NET_BIND_SERVICE)".to_owned()
                ),
                (
                    8443,
                    "port 8443 is already in use by another process".to_owned()
                ),
            ])
        );
        for other in [
            "ready\n",
            "waiting for configuration\n",
            "draining\n",
            "",
            "port x not served: y",
        ] {
            assert!(unserved_ports(other).is_empty(), "{other:?}");
        }
    }

    #[test]
    fn a_port_any_pod_does_not_serve_is_reported_with_that_pods_reason() {
        let reports = vec![
            ("a".to_owned(), BTreeMap::new()),
            (
                "b".to_owned(),
                BTreeMap::from([(8443, "in use".to_owned())]),
            ),
            ("c".to_owned(), BTreeMap::from([(8443, "other".to_owned())])),
        ];
        assert_eq!(
            merge_reports(&reports),
            BTreeMap::from([(8443, "pod b: in use".to_owned())])
        );
        assert!(merge_reports(&[]).is_empty());
    }
}
