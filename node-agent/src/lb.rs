//! Services of type LoadBalancer: an address from `--lb-cidr` as a /32 on the bridge, a TCP
//! forwarder per service port to the Service's ready endpoints, and the address in
//! `status.loadBalancer.ingress`.
//!
//! The endpoints come from EndpointSlices (label `kubernetes.io/service-name`), whoever wrote
//! them; an endpoint counts unless its `ready` condition is false (unset means ready, as
//! kube-proxy reads it). A Service that goes away, stops being a LoadBalancer or gets a
//! `loadBalancerClass` (another implementation's) loses its address and forwarders. A Service
//! that already shows an address of the range keeps it when it is free (an agent restart
//! does not renumber).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use futures::StreamExt;
use futures::stream::BoxStream;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, ResourceExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::agent::Agent;
use crate::ipam::Ipam;
use crate::net;

/// The label that ties an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A TCP port a LoadBalancer Service exposes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LbPort {
    /// The service port's name ("" when unnamed): EndpointSlice ports carry the same name.
    pub name: String,
    pub port: u16,
}

/// The ports to serve when the Service is a LoadBalancer this node implements; `None` when it
/// is not (other type, another class, being deleted).
pub fn lb_ports(service: &Service) -> Option<Vec<LbPort>> {
    let spec = service.spec.as_ref()?;
    if spec.type_.as_deref() != Some("LoadBalancer")
        || spec
            .load_balancer_class
            .as_deref()
            .is_some_and(|c| !c.is_empty())
        || service.metadata.deletion_timestamp.is_some()
    {
        return None;
    }
    let mut ports: Vec<LbPort> = spec
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| {
            Some(LbPort {
                name: p.name.clone().unwrap_or_default(),
                port: u16::try_from(p.port).ok()?,
            })
        })
        .collect();
    ports.sort();
    Some(ports)
}

/// The ready endpoints for the service port named `port_name`.
pub fn ready_endpoints<'a>(
    port_name: &str,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for slice in slices {
        if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
            continue;
        }
        let Some(port) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| {
                p.name.as_deref().unwrap_or("") == port_name
                    && p.protocol.as_deref().unwrap_or("TCP") == "TCP"
            })
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for endpoint in slice.endpoints.iter().flatten() {
            let ready = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true);
            if !ready {
                continue;
            }
            out.extend(
                endpoint
                    .addresses
                    .iter()
                    .filter_map(|a| a.parse::<IpAddr>().ok())
                    .map(|ip| SocketAddr::new(ip, port)),
            );
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The address the Service shows already, if any.
pub fn current_ingress(service: &Service) -> Option<Ipv4Addr> {
    service
        .status
        .as_ref()?
        .load_balancer
        .as_ref()?
        .ingress
        .as_ref()?
        .iter()
        .find_map(|i| i.ip.as_deref()?.parse().ok())
}

struct Active {
    ip: Ipv4Addr,
    ports: Vec<LbPort>,
    forwarders: Vec<Forwarder>,
}

struct Forwarder {
    port: LbPort,
    endpoints: watch::Sender<Vec<SocketAddr>>,
    task: JoinHandle<()>,
}

/// Boxed: events are large and moved through the merged stream.
enum Change {
    Service(Box<Event<Service>>),
    Slice(Box<Event<EndpointSlice>>),
}

struct Balancers {
    agent: Arc<Agent>,
    ipam: Ipam,
    lb_net: Ipv4Net,
    services: BTreeMap<String, Service>,
    slices: BTreeMap<String, EndpointSlice>,
    active: BTreeMap<String, Active>,
    services_relist: Option<BTreeMap<String, Service>>,
    slices_relist: Option<BTreeMap<String, EndpointSlice>>,
}

fn key_of<K: kube::Resource>(object: &K) -> String {
    format!(
        "{}/{}",
        object.namespace().unwrap_or_default(),
        object.name_any()
    )
}

fn service_of(slice: &EndpointSlice) -> Option<String> {
    let service = slice.labels().get(SERVICE_NAME_LABEL)?;
    Some(format!(
        "{}/{service}",
        slice.namespace().unwrap_or_default()
    ))
}

/// Serves LoadBalancer Services until shutdown, then removes every address.
pub async fn run(agent: Arc<Agent>, lb_net: Ipv4Net, mut shutdown: watch::Receiver<bool>) {
    let services: Api<Service> = Api::all(agent.client.clone());
    let slices: Api<EndpointSlice> = Api::all(agent.client.clone());
    let service_events = watcher(services, watcher::Config::default())
        .default_backoff()
        .map(|e| e.map(|e| Change::Service(Box::new(e))));
    let slice_events = watcher(slices, watcher::Config::default())
        .default_backoff()
        .map(|e| e.map(|e| Change::Slice(Box::new(e))));
    let mut events: BoxStream<'static, _> =
        futures::stream::select(service_events, slice_events).boxed();
    let mut balancers = Balancers {
        agent,
        ipam: Ipam::new(lb_net, []),
        lb_net,
        services: BTreeMap::new(),
        slices: BTreeMap::new(),
        active: BTreeMap::new(),
        services_relist: None,
        slices_relist: None,
    };
    loop {
        let event = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            event = events.next() => event,
        };
        match event {
            Some(Ok(change)) => balancers.change(change).await,
            Some(Err(e)) => warn!(error = %e, "Service or EndpointSlice watch failed; retrying"),
            None => break,
        }
    }
    let keys: Vec<String> = balancers.active.keys().cloned().collect();
    for key in keys {
        balancers.release(&key, false).await;
    }
}

impl Balancers {
    async fn change(&mut self, change: Change) {
        let mut touched = BTreeSet::new();
        match change {
            Change::Service(event) => match *event {
                Event::Init => self.services_relist = Some(BTreeMap::new()),
                Event::InitApply(s) => {
                    if let Some(relist) = self.services_relist.as_mut() {
                        relist.insert(key_of(&s), s);
                    }
                }
                Event::InitDone => {
                    let fresh = self.services_relist.take().unwrap_or_default();
                    touched.extend(self.services.keys().cloned());
                    touched.extend(fresh.keys().cloned());
                    self.services = fresh;
                }
                Event::Apply(s) => {
                    let key = key_of(&s);
                    touched.insert(key.clone());
                    self.services.insert(key, s);
                }
                Event::Delete(s) => {
                    let key = key_of(&s);
                    self.services.remove(&key);
                    touched.insert(key);
                }
            },
            Change::Slice(event) => match *event {
                Event::Init => self.slices_relist = Some(BTreeMap::new()),
                Event::InitApply(s) => {
                    if let Some(relist) = self.slices_relist.as_mut() {
                        relist.insert(key_of(&s), s);
                    }
                }
                Event::InitDone => {
                    let fresh = self.slices_relist.take().unwrap_or_default();
                    touched.extend(
                        self.slices
                            .values()
                            .chain(fresh.values())
                            .filter_map(service_of),
                    );
                    self.slices = fresh;
                }
                Event::Apply(s) => {
                    touched.extend(service_of(&s));
                    if let Some(old) = self.slices.insert(key_of(&s), s) {
                        touched.extend(service_of(&old));
                    }
                }
                Event::Delete(s) => {
                    touched.extend(service_of(&s));
                    self.slices.remove(&key_of(&s));
                }
            },
        }
        for key in touched {
            self.reconcile(&key).await;
        }
    }

    fn endpoints(&self, key: &str, port_name: &str) -> Vec<SocketAddr> {
        let slices = self
            .slices
            .values()
            .filter(|s| service_of(s).as_deref() == Some(key));
        ready_endpoints(port_name, slices)
    }

    async fn reconcile(&mut self, key: &str) {
        let service = self.services.get(key).cloned();
        let wanted = service.as_ref().and_then(lb_ports);
        let Some(ports) = wanted else {
            if self.active.contains_key(key) {
                self.release(key, service.is_some()).await;
            }
            return;
        };
        let Some(service) = service else { return };
        if !self.active.contains_key(key) {
            let preferred = current_ingress(&service).filter(|ip| self.lb_net.contains(ip));
            let ip = match preferred.filter(|ip| self.ipam.claim(*ip)) {
                Some(ip) => ip,
                None => match self.ipam.allocate() {
                    Ok(ip) => ip,
                    Err(e) => {
                        warn!(service = %key, error = %e, "no LoadBalancer address left");
                        return;
                    }
                },
            };
            if let Err(e) = self.agent.state.record_lb_address(ip, key) {
                warn!(service = %key, error = %e, "cannot record the LoadBalancer address");
            }
            if let Err(e) = net::add_address(&self.agent.bridge, ip).await {
                warn!(service = %key, %ip, error = %e, "cannot add the LoadBalancer address");
                self.ipam.release(ip);
                self.agent.state.forget_lb_address(ip);
                return;
            }
            info!(service = %key, %ip, "LoadBalancer address assigned");
            self.active.insert(
                key.to_owned(),
                Active {
                    ip,
                    ports: Vec::new(),
                    forwarders: Vec::new(),
                },
            );
        }
        let endpoints: Vec<(LbPort, Vec<SocketAddr>)> = ports
            .iter()
            .map(|p| (p.clone(), self.endpoints(key, &p.name)))
            .collect();
        let Some(active) = self.active.get_mut(key) else {
            return;
        };
        if active.ports != ports {
            for f in active.forwarders.drain(..) {
                f.task.abort();
            }
            for (port, eps) in &endpoints {
                let address = SocketAddr::new(IpAddr::V4(active.ip), port.port);
                let listener = match TcpListener::bind(address).await {
                    Ok(l) => l,
                    Err(e) => {
                        warn!(service = %key, %address, error = %e, "cannot listen for the LoadBalancer");
                        continue;
                    }
                };
                let (tx, rx) = watch::channel(eps.clone());
                active.forwarders.push(Forwarder {
                    port: port.clone(),
                    endpoints: tx,
                    task: tokio::spawn(forward(listener, rx)),
                });
            }
            active.ports = ports;
        }
        for f in &active.forwarders {
            if let Some((_, eps)) = endpoints.iter().find(|(p, _)| *p == f.port) {
                f.endpoints.send_if_modified(|current| {
                    let changed = current != eps;
                    if changed {
                        current.clone_from(eps);
                    }
                    changed
                });
            }
        }
        let ip = active.ip;
        if current_ingress(&service) != Some(ip) {
            let patch = serde_json::json!({
                "status": { "loadBalancer": { "ingress": [ { "ip": ip.to_string(), "ipMode": "VIP" } ] } }
            });
            self.patch_status(&service, &patch).await;
        }
    }

    async fn patch_status(&self, service: &Service, patch: &serde_json::Value) {
        let api: Api<Service> = Api::namespaced(
            self.agent.client.clone(),
            &service.namespace().unwrap_or_default(),
        );
        if let Err(e) = api
            .patch_status(
                &service.name_any(),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
        {
            warn!(service = %key_of(service), error = %e, "cannot write the LoadBalancer status");
        }
    }

    /// Stops the forwarders and removes the address; `clear_status` when the Service still
    /// exists (it stopped being ours).
    async fn release(&mut self, key: &str, clear_status: bool) {
        let Some(active) = self.active.remove(key) else {
            return;
        };
        for f in active.forwarders {
            f.task.abort();
        }
        match net::remove_address(&self.agent.bridge, active.ip).await {
            Ok(()) => {
                self.agent.state.forget_lb_address(active.ip);
                self.ipam.release(active.ip);
            }
            Err(e) => {
                warn!(service = %key, ip = %active.ip, error = %e, "cannot remove the LoadBalancer address")
            }
        }
        info!(service = %key, ip = %active.ip, "LoadBalancer address released");
        if clear_status && let Some(service) = self.services.get(key).cloned() {
            let patch = serde_json::json!({ "status": { "loadBalancer": { "ingress": null } } });
            self.patch_status(&service, &patch).await;
        }
    }
}

/// Accepts connections and pipes each to the next ready endpoint (round robin); without
/// endpoints a connection is closed at once.
async fn forward(listener: TcpListener, endpoints: watch::Receiver<Vec<SocketAddr>>) {
    let mut next = 0usize;
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        let target = {
            let eps = endpoints.borrow();
            if eps.is_empty() {
                continue;
            }
            let target = eps[next % eps.len()];
            next = next.wrapping_add(1);
            target
        };
        tokio::spawn(async move {
            if let Ok(mut outbound) = TcpStream::connect(target).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        LoadBalancerIngress, LoadBalancerStatus, ServicePort, ServiceSpec, ServiceStatus,
    };
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn service(type_: &str, class: Option<&str>) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("ns".into()),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                type_: Some(type_.into()),
                load_balancer_class: class.map(Into::into),
                ports: Some(vec![
                    ServicePort {
                        name: Some("http".into()),
                        port: 80,
                        ..ServicePort::default()
                    },
                    ServicePort {
                        name: Some("dns".into()),
                        port: 53,
                        protocol: Some("UDP".into()),
                        ..ServicePort::default()
                    },
                ]),
                ..ServiceSpec::default()
            }),
            status: None,
        }
    }

    #[test]
    fn only_load_balancers_without_a_class_are_served_and_only_tcp() {
        assert_eq!(
            lb_ports(&service("LoadBalancer", None)),
            Some(vec![LbPort {
                name: "http".into(),
                port: 80
            }])
        );
        assert_eq!(lb_ports(&service("ClusterIP", None)), None);
        assert_eq!(
            lb_ports(&service("LoadBalancer", Some("example.com/other"))),
            None
        );
    }

    fn slice(
        port_name: Option<&str>,
        port: i32,
        endpoints: &[(&str, Option<bool>)],
    ) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some("web-abc".into()),
                namespace: Some("ns".into()),
                labels: Some([(SERVICE_NAME_LABEL.to_owned(), "web".to_owned())].into()),
                ..ObjectMeta::default()
            },
            address_type: "IPv4".into(),
            endpoints: Some(
                endpoints
                    .iter()
                    .map(|(ip, ready)| Endpoint {
                        addresses: vec![(*ip).into()],
                        conditions: Some(EndpointConditions {
                            ready: *ready,
                            ..EndpointConditions::default()
                        }),
                        ..Endpoint::default()
                    })
                    .collect(),
            ),
            ports: Some(vec![EndpointPort {
                name: port_name.map(Into::into),
                port: Some(port),
                protocol: Some("TCP".into()),
                app_protocol: None,
            }]),
        }
    }

    #[test]
    fn endpoints_are_the_ready_addresses_on_the_named_port() {
        let s = slice(
            Some("http"),
            8080,
            &[
                ("10.244.0.2", Some(true)),
                ("10.244.0.3", Some(false)),
                ("10.244.0.4", None),
            ],
        );
        assert_eq!(
            ready_endpoints("http", [&s]),
            vec![
                "10.244.0.2:8080".parse::<SocketAddr>().unwrap(),
                "10.244.0.4:8080".parse().unwrap()
            ]
        );
        assert!(ready_endpoints("metrics", [&s]).is_empty());
        let unnamed = slice(None, 9000, &[("10.244.0.5", Some(true))]);
        assert_eq!(
            ready_endpoints("", [&unnamed]),
            vec!["10.244.0.5:9000".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(service_of(&s).as_deref(), Some("ns/web"));
    }

    #[test]
    fn the_current_ingress_address_is_read_back() {
        let mut s = service("LoadBalancer", None);
        assert_eq!(current_ingress(&s), None);
        s.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(vec![LoadBalancerIngress {
                    ip: Some("10.245.0.3".into()),
                    ..LoadBalancerIngress::default()
                }]),
            }),
            ..ServiceStatus::default()
        });
        assert_eq!(current_ingress(&s), Some(Ipv4Addr::new(10, 245, 0, 3)));
    }

    #[tokio::test]
    async fn the_forwarder_pipes_to_an_endpoint_and_follows_changes() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        async fn backend(reply: &'static [u8]) -> SocketAddr {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            tokio::spawn(async move {
                while let Ok((mut s, _)) = l.accept().await {
                    let _ = s.write_all(reply).await;
                }
            });
            addr
        }
        let a = backend(b"a").await;
        let b = backend(b"b").await;
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front_addr = front.local_addr().unwrap();
        let (tx, rx) = watch::channel(vec![a]);
        let task = tokio::spawn(forward(front, rx));
        let read_one = || async move {
            let mut s = TcpStream::connect(front_addr).await.unwrap();
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf).await;
            buf
        };
        assert_eq!(read_one().await, b"a");
        tx.send_replace(vec![b]);
        assert_eq!(read_one().await, b"b");
        tx.send_replace(vec![]);
        assert_eq!(read_one().await, b"", "no endpoints: closed");
        task.abort();
    }
}
