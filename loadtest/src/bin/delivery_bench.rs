//! delivery-bench: the config delivery benchmark of Kubernetes mode, run by
//! `loadtest/config-delivery` against a real API server (`KUBECONFIG`), a running
//! `portcullis controller` and a `portcullis serve --kube` data plane.
//!
//! - `setup` writes, in a namespace of its own, a GatewayClass, a Gateway with one HTTP
//!   listener, N HTTPRoutes (each its own hostname and backend Service) and per Service one
//!   EndpointSlice of M endpoints (server-side apply; addresses in 10.0.0.0/8, never contacted).
//! - `run` waits until the data plane's `/config` holds every route and endpoint and every route
//!   has its status, then sends C endpoint changes at a fixed rate: change k rewrites the
//!   EndpointSlice of Service k mod N so that one address becomes a marker unique to k. It polls
//!   `/metrics` for the generations and, when every shard applied a new one, reads `/config`
//!   (rendering it costs the data plane tens of milliseconds, so not at every poll): a marker is
//!   seen at the first poll where its generation is applied on every shard; delay = that poll's
//!   time − the change's send time, so the poll interval bounds the resolution. A watch on the
//!   Gateway's two delivery Secrets counts their writes and the bytes of each. Last, one route
//!   change (a path) shows which objects a route edit rewrites.
//!
//! Two commands rather than one because the data plane can only start between them: it runs as
//! the ServiceAccount that the controller provisions for the Gateway that `setup` creates.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, WatchEvent,
    WatchParams,
};
use kube::{Client, ResourceExt};
use portcullis_loadtest::delivery::{
    ENDPOINT_PORT, MAX_CHANGES, MAX_ENDPOINTS_PER_SERVICE, MAX_SERVICES, base_address,
    endpoint_count, marker_address, markers_in, percentile,
};
use serde_json::{Value, json};
use thiserror::Error;

/// The field manager of everything the bench applies.
const FIELD_MANAGER: &str = "portcullis-delivery-bench";
/// The Service port the routes name (the endpoints listen on [`ENDPOINT_PORT`]).
const SERVICE_PORT: u16 = 80;
/// The route hostnames' common suffix; counting it in `/config` counts the routes.
const HOST_SUFFIX: &str = ".bench.test";
/// The path the route change sets on the first route.
const CHANGED_PATH: &str = "/bench-route-change";
/// Objects `setup` writes at once (the API server takes them in parallel).
const SETUP_CONCURRENCY: usize = 16;
/// How long after the last change (or the route change) Secret writes are still counted:
/// the controller's batch window plus a reconcile, with margin.
const SETTLE: Duration = Duration::from_secs(2);
/// Pause between the lists that wait for the route statuses.
const STATUS_POLL: Duration = Duration::from_millis(500);
/// How long `/config` may take to answer.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);
/// A watch on the Secrets ends after this and is resumed from its last resource version.
const WATCH_TIMEOUT_SECONDS: u32 = 290;
const EXIT_FAILED: u8 = 1;

/// What went wrong, by whose fault.
#[derive(Debug, Error)]
enum BenchError {
    /// The API server refused or could not be reached.
    #[error("API server: {what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: Box<kube::Error>,
    },
    /// The data plane's admin endpoint did not answer as expected.
    #[error("data plane /config at {address}: {reason}")]
    DataPlane { address: SocketAddr, reason: String },
    /// Something did not happen within the patience.
    #[error("timed out after {patience:?} waiting for {what}")]
    Timeout { what: String, patience: Duration },
    /// The options ask for more than the bench can number.
    #[error("bad options: {0}")]
    Options(String),
    /// The report could not be written.
    #[error("cannot write {path}: {source}")]
    Report {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> BenchError {
    let what = what.into();
    move |source| BenchError::Kube {
        what,
        source: Box::new(source),
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "delivery-bench",
    about = "Config delivery benchmark (Kubernetes mode): delay from an endpoint change to every shard, and the bytes delivered"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the namespace, GatewayClass, Gateway, Services, EndpointSlices and HTTPRoutes.
    Setup(SetupArgs),
    /// Wait for the data plane, drive the changes and report.
    Run(RunArgs),
}

#[derive(Debug, Clone, Args)]
struct Shape {
    /// The namespace of every benchmark object.
    #[arg(long, default_value = "delivery-bench")]
    namespace: String,
    /// The Gateway's name.
    #[arg(long, default_value = "bench")]
    gateway: String,
    /// HTTPRoutes, one Service each.
    #[arg(long, default_value_t = 1000)]
    routes: usize,
    /// Endpoints per Service (one EndpointSlice).
    #[arg(long, default_value_t = 10)]
    endpoints_per_route: usize,
}

#[derive(Debug, Args)]
struct SetupArgs {
    #[command(flatten)]
    shape: Shape,
    /// The GatewayClass to create and use.
    #[arg(long, default_value = "portcullis")]
    gateway_class: String,
    /// Its controllerName (the controller's `controllerName`).
    #[arg(long, default_value = "portcullis.dev/gateway-controller")]
    controller_name: String,
    /// The Gateway's HTTP listener port (the data plane binds it).
    #[arg(long, default_value_t = 18080)]
    listener_port: u16,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    shape: Shape,
    /// The data plane's `--admin` address (`/metrics`: the generations).
    #[arg(long)]
    admin: SocketAddr,
    /// The data plane's `--admin-config` address (`/config`: the markers).
    #[arg(long)]
    admin_config: SocketAddr,
    /// Endpoint changes to send.
    #[arg(long, default_value_t = 1000)]
    changes: usize,
    /// Changes per second.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Pause between `/metrics` polls, in milliseconds (bounds the delay's resolution).
    #[arg(long, default_value_t = 50)]
    poll_ms: u64,
    /// How long to wait for the setup to reach the data plane, and for changes after the last
    /// one is sent, in seconds.
    #[arg(long, default_value_t = 300)]
    patience_s: u64,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

impl Shape {
    fn check(&self) -> Result<(), BenchError> {
        if self.routes == 0 || self.routes > MAX_SERVICES {
            return Err(BenchError::Options(format!(
                "--routes must be 1..={MAX_SERVICES}"
            )));
        }
        if self.endpoints_per_route == 0 || self.endpoints_per_route > MAX_ENDPOINTS_PER_SERVICE {
            return Err(BenchError::Options(format!(
                "--endpoints-per-route must be 1..={MAX_ENDPOINTS_PER_SERVICE}"
            )));
        }
        Ok(())
    }
}

fn service_name(i: usize) -> String {
    format!("svc-{i}")
}

fn resource(group: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, "v1", kind), plural)
}

fn gateway_api(kind: &str, plural: &str) -> ApiResource {
    resource("gateway.networking.k8s.io", kind, plural)
}

fn apply() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

fn slice_endpoints(addresses: &[String]) -> Value {
    Value::Array(
        addresses
            .iter()
            .map(|a| json!({"addresses": [a], "conditions": {"ready": true}}))
            .collect(),
    )
}

fn base_addresses(service: usize, per_service: usize) -> Vec<String> {
    (0..per_service)
        .filter_map(|e| base_address(service, e).map(|a| a.to_string()))
        .collect()
}

fn route(namespace: &str, gateway: &str, i: usize, path: &str) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": format!("r-{i}"), "namespace": namespace},
        "spec": {
            "parentRefs": [{"name": gateway}],
            "hostnames": [format!("r{i}{HOST_SUFFIX}")],
            "rules": [{
                "matches": [{"path": {"type": "PathPrefix", "value": path}}],
                "backendRefs": [{"name": service_name(i), "port": SERVICE_PORT}],
            }],
        },
    })
}

async fn setup(client: Client, args: SetupArgs) -> Result<(), BenchError> {
    let shape = &args.shape;
    shape.check()?;
    let ns = shape.namespace.as_str();
    let started = Instant::now();
    Api::<Namespace>::all(client.clone())
        .patch(
            ns,
            &apply(),
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
            ),
        )
        .await
        .map_err(kube_err("apply the namespace"))?;
    let class = gateway_api("GatewayClass", "gatewayclasses");
    Api::<DynamicObject>::all_with(client.clone(), &class)
        .patch(
            &args.gateway_class,
            &apply(),
            &Patch::Apply(json!({
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "GatewayClass",
                "metadata": {"name": args.gateway_class},
                "spec": {"controllerName": args.controller_name},
            })),
        )
        .await
        .map_err(kube_err("apply the GatewayClass"))?;
    let gateways = gateway_api("Gateway", "gateways");
    Api::<DynamicObject>::namespaced_with(client.clone(), ns, &gateways)
        .patch(
            &shape.gateway,
            &apply(),
            &Patch::Apply(json!({
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "Gateway",
                "metadata": {"name": shape.gateway, "namespace": ns},
                "spec": {
                    "gatewayClassName": args.gateway_class,
                    "listeners": [{
                        "name": "http",
                        "protocol": "HTTP",
                        "port": args.listener_port,
                        "allowedRoutes": {"namespaces": {"from": "Same"}},
                    }],
                },
            })),
        )
        .await
        .map_err(kube_err("apply the Gateway"))?;

    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let routes = gateway_api("HTTPRoute", "httproutes");
    let routes: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &routes);
    stream::iter(0..shape.routes)
        .map(|i| {
            let (services, slices, routes) = (&services, &slices, &routes);
            async move {
                let name = service_name(i);
                services
                    .patch(
                        &name,
                        &apply(),
                        &Patch::Apply(json!({
                            "apiVersion": "v1",
                            "kind": "Service",
                            "metadata": {"name": name, "namespace": ns},
                            // Headless: the test API server's Service IP range is far
                            // smaller than a thousand, and nothing here uses a cluster IP.
                            "spec": {"clusterIP": "None", "ports": [{
                                "name": "http",
                                "port": SERVICE_PORT,
                                "targetPort": ENDPOINT_PORT,
                            }]},
                        })),
                    )
                    .await
                    .map_err(kube_err(format!("apply Service {name}")))?;
                let addresses = base_addresses(i, shape.endpoints_per_route);
                slices
                    .patch(
                        &name,
                        &apply(),
                        &Patch::Apply(json!({
                            "apiVersion": "discovery.k8s.io/v1",
                            "kind": "EndpointSlice",
                            "metadata": {
                                "name": name,
                                "namespace": ns,
                                "labels": {"kubernetes.io/service-name": name},
                            },
                            "addressType": "IPv4",
                            "ports": [{"name": "http", "port": ENDPOINT_PORT, "protocol": "TCP"}],
                            "endpoints": slice_endpoints(&addresses),
                        })),
                    )
                    .await
                    .map_err(kube_err(format!("apply EndpointSlice {name}")))?;
                routes
                    .patch(
                        &format!("r-{i}"),
                        &apply(),
                        &Patch::Apply(route(ns, &shape.gateway, i, "/")),
                    )
                    .await
                    .map_err(kube_err(format!("apply HTTPRoute r-{i}")))?;
                Ok::<(), BenchError>(())
            }
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    println!(
        "setup: namespace {ns}, Gateway {}, {} routes, {} endpoints in {:.1} s",
        shape.gateway,
        shape.routes,
        shape.routes * shape.endpoints_per_route,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// One read of the data plane's `/config`.
#[derive(Debug)]
struct ConfigPoll {
    generation: u64,
    shard_generations: Vec<u64>,
    text: String,
}

impl ConfigPoll {
    /// Every shard applied the published generation.
    fn applied(&self) -> bool {
        !self.shard_generations.is_empty()
            && self.shard_generations.iter().all(|g| *g == self.generation)
    }
}

/// `GET path` on an admin address; the body of a 200.
fn admin_get(address: SocketAddr, path: &str) -> Result<String, BenchError> {
    let fail = |reason: String| BenchError::DataPlane { address, reason };
    let mut stream = TcpStream::connect_timeout(&address, ADMIN_TIMEOUT)
        .map_err(|e| fail(format!("connect: {e}")))?;
    stream
        .set_read_timeout(Some(ADMIN_TIMEOUT))
        .map_err(|e| fail(e.to_string()))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| fail(format!("send: {e}")))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| fail(format!("read: {e}")))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| fail("no end of head".to_owned()))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(fail(head.lines().next().unwrap_or_default().to_owned()));
    }
    Ok(body.to_owned())
}

/// The published generation and every shard's applied one, from `/metrics` (far cheaper for
/// the data plane to answer than `/config`, which renders the whole config).
fn fetch_generations(address: SocketAddr) -> Result<(u64, Vec<u64>), BenchError> {
    let body = admin_get(address, "/metrics")?;
    let mut published = None;
    let mut shards = Vec::new();
    for line in body.lines() {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        if name == "portcullis_config_generation" {
            published = value.parse().ok();
        } else if name.starts_with("portcullis_shard_config_generation{") {
            shards.extend(value.parse::<u64>().ok());
        }
    }
    let published = published.ok_or_else(|| BenchError::DataPlane {
        address,
        reason: "no portcullis_config_generation in /metrics".to_owned(),
    })?;
    Ok((published, shards))
}

/// `GET /config` (YAML whose first keys are `generation` and `shard_generations`).
fn fetch_config(address: SocketAddr) -> Result<ConfigPoll, BenchError> {
    let fail = |reason: String| BenchError::DataPlane { address, reason };
    let body = admin_get(address, "/config")?;
    let mut generation = None;
    let mut shard_generations = Vec::new();
    let mut in_shards = false;
    for line in body.lines() {
        if let Some(value) = line.strip_prefix("generation: ") {
            generation = value.trim().parse().ok();
        } else if line.starts_with("shard_generations:") {
            in_shards = true;
        } else if in_shards && let Some(value) = line.strip_prefix("- ") {
            shard_generations.extend(value.trim().parse::<u64>().ok());
        } else if in_shards {
            break;
        }
    }
    Ok(ConfigPoll {
        generation: generation.ok_or_else(|| fail("no generation".to_owned()))?,
        shard_generations,
        text: body,
    })
}

/// One write of a delivery Secret, as the watch delivered it.
#[derive(Debug, Clone)]
struct SecretWrite {
    at: Instant,
    name: String,
    /// The size of its one data value (the delivered config or endpoints).
    data_bytes: usize,
    /// The size of the whole object as JSON (what a watcher receives, metadata and base64
    /// included).
    object_bytes: usize,
}

fn record_write(secret: &Secret, names: &[String; 2], writes: &Mutex<Vec<SecretWrite>>) {
    let name = secret.name_any();
    if !names.contains(&name) {
        return;
    }
    let data_bytes = secret
        .data
        .iter()
        .flat_map(|d| d.values())
        .map(|v| v.0.len())
        .sum();
    let object_bytes = serde_json::to_vec(secret).map_or(0, |v| v.len());
    lock(writes).push(SecretWrite {
        at: Instant::now(),
        name,
        data_bytes,
        object_bytes,
    });
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Watches the namespace's Secrets from `version` on, recording writes of `names`.
async fn watch_secrets(
    api: Api<Secret>,
    names: [String; 2],
    mut version: String,
    writes: Arc<Mutex<Vec<SecretWrite>>>,
) -> Result<(), BenchError> {
    loop {
        let params = WatchParams::default().timeout(WATCH_TIMEOUT_SECONDS);
        let mut events = api
            .watch(&params, &version)
            .await
            .map_err(kube_err("watch the delivery Secrets"))?
            .boxed();
        while let Some(event) = events.next().await {
            match event.map_err(kube_err("watch the delivery Secrets"))? {
                WatchEvent::Added(s) | WatchEvent::Modified(s) | WatchEvent::Deleted(s) => {
                    version = s.resource_version().unwrap_or_default();
                    record_write(&s, &names, &writes);
                }
                WatchEvent::Bookmark(b) => version = b.metadata.resource_version,
                WatchEvent::Error(e) => {
                    return Err(BenchError::Kube {
                        what: "watch the delivery Secrets".to_owned(),
                        source: Box::new(kube::Error::Api(e)),
                    });
                }
            }
        }
    }
}

/// Polls `/config` until `done` holds for a poll whose shards all applied its generation.
async fn wait_config(
    address: SocketAddr,
    what: &str,
    patience: Duration,
    poll: Duration,
    done: impl Fn(&ConfigPoll) -> bool,
) -> Result<ConfigPoll, BenchError> {
    let deadline = Instant::now() + patience;
    loop {
        let last = tokio::task::block_in_place(|| fetch_config(address));
        match last {
            Ok(c) if c.applied() && done(&c) => return Ok(c),
            _ if Instant::now() >= deadline => {
                return Err(BenchError::Timeout {
                    what: what.to_owned(),
                    patience,
                });
            }
            _ => tokio::time::sleep(poll).await,
        }
    }
}

/// What the poller saw: per change, the first time its marker was present with every shard
/// applied; and how long the polls took.
#[derive(Debug, Default)]
struct Seen {
    at: Vec<Option<Instant>>,
    count: usize,
    polls: usize,
    poll_errors: usize,
    config_reads: usize,
    config_read_time: Duration,
    generations: Option<(u64, u64)>,
}

/// Polls `/metrics` every `interval`; when every shard has applied a generation not read yet,
/// reads `/config` and takes each marker in it as seen at that `/metrics` poll (or at the
/// `/config` read, if the config moved on in between).
fn poll_markers(
    admin: SocketAddr,
    admin_config: SocketAddr,
    interval: Duration,
    seen: &Mutex<Seen>,
    stop: &std::sync::atomic::AtomicBool,
) {
    use std::sync::atomic::Ordering;
    let mut read = None;
    while !stop.load(Ordering::Acquire) {
        let polled = Instant::now();
        let result = fetch_generations(admin).and_then(|(published, shards)| {
            let applied = !shards.is_empty() && shards.iter().all(|g| *g == published);
            if !applied || read == Some(published) {
                return Ok(None);
            }
            let fetched = Instant::now();
            let config = fetch_config(admin_config)?;
            let at = if config.generation == published {
                polled
            } else {
                fetched
            };
            Ok(Some((at, fetched.elapsed(), config)))
        });
        let mut seen = lock(seen);
        seen.polls += 1;
        match result {
            Ok(Some((at, took, config))) => {
                seen.config_reads += 1;
                seen.config_read_time += took;
                let first = seen.generations.map_or(config.generation, |g| g.0);
                seen.generations = Some((first, config.generation));
                if config.applied() {
                    read = Some(config.generation);
                    for change in markers_in(&config.text) {
                        if let Some(slot @ None) = seen.at.get_mut(change) {
                            *slot = Some(at);
                            seen.count += 1;
                        }
                    }
                }
            }
            Ok(None) => {}
            Err(_) => seen.poll_errors += 1,
        }
        drop(seen);
        std::thread::sleep(interval.saturating_sub(polled.elapsed()));
    }
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

async fn run(client: Client, args: RunArgs) -> Result<bool, BenchError> {
    let shape = &args.shape;
    shape.check()?;
    if args.changes > MAX_CHANGES || args.rate <= 0.0 {
        return Err(BenchError::Options(format!(
            "--changes must be at most {MAX_CHANGES} and --rate positive"
        )));
    }
    let ns = shape.namespace.as_str();
    let poll = Duration::from_millis(args.poll_ms);
    let patience = Duration::from_secs(args.patience_s);
    let names = [
        format!("{}-portcullis-config", shape.gateway),
        format!("{}-portcullis-endpoints", shape.gateway),
    ];

    // The Secrets' writes, from now on.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let listed = secrets
        .list(&ListParams::default())
        .await
        .map_err(kube_err("list the Secrets"))?;
    let version = listed.metadata.resource_version.unwrap_or_default();
    let writes = Arc::new(Mutex::new(Vec::new()));
    // What is there already counts as the first write of each (for the sizes), never as a
    // write of the run.
    for secret in &listed.items {
        record_write(secret, &names, &writes);
    }
    let watcher = tokio::spawn(watch_secrets(
        secrets,
        names.clone(),
        version,
        Arc::clone(&writes),
    ));

    let endpoints = shape.routes * shape.endpoints_per_route;
    let waited = Instant::now();
    let ready = wait_config(
        args.admin_config,
        "the data plane to hold every route and endpoint",
        patience,
        poll,
        |c| {
            endpoint_count(&c.text) == endpoints
                && c.text.matches(HOST_SUFFIX).count() >= shape.routes
        },
    )
    .await?;
    // The controller writes every route's status after the setup (a thousand requests): the
    // changes start once it is done, so that they measure delivery rather than that backlog.
    let routes_api = gateway_api("HTTPRoute", "httproutes");
    let routes_api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &routes_api);
    let deadline = Instant::now() + patience;
    loop {
        let listed = routes_api
            .list(&ListParams::default())
            .await
            .map_err(kube_err("list the HTTPRoutes"))?;
        let with_status = listed
            .items
            .iter()
            .filter(|r| {
                r.data["status"]["parents"]
                    .as_array()
                    .is_some_and(|p| !p.is_empty())
            })
            .count();
        if with_status >= shape.routes {
            break;
        }
        if Instant::now() >= deadline {
            return Err(BenchError::Timeout {
                what: format!(
                    "every HTTPRoute's status ({with_status} of {})",
                    shape.routes
                ),
                patience,
            });
        }
        tokio::time::sleep(STATUS_POLL).await;
    }
    tokio::time::sleep(SETTLE).await;
    println!(
        "data plane ready: generation {}, {} shard(s), /config {} bytes (waited {:.1} s)",
        ready.generation,
        ready.shard_generations.len(),
        ready.text.len(),
        waited.elapsed().as_secs_f64()
    );

    // Endpoint changes at a fixed rate, /config polled on a thread of its own.
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let mut state: Vec<Vec<String>> = (0..shape.routes)
        .map(|i| base_addresses(i, shape.endpoints_per_route))
        .collect();
    let seen = Arc::new(Mutex::new(Seen {
        at: vec![None; args.changes],
        ..Seen::default()
    }));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
        let (admin, admin_config) = (args.admin, args.admin_config);
        std::thread::spawn(move || poll_markers(admin, admin_config, poll, &seen, &stop))
    };
    let writes_before = lock(&writes).len();
    let mut sent_at = Vec::with_capacity(args.changes);
    let mut in_flight = Vec::with_capacity(args.changes);
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let run_started = Instant::now();
    for k in 0..args.changes {
        ticks.tick().await;
        let service = k % shape.routes;
        let slot = (k / shape.routes) % shape.endpoints_per_route;
        state[service][slot] = marker_address(k).map(|a| a.to_string()).unwrap_or_default();
        let patch = json!({"endpoints": slice_endpoints(&state[service])});
        let slices = slices.clone();
        sent_at.push(Instant::now());
        in_flight.push(tokio::spawn(async move {
            let name = service_name(service);
            slices
                .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .map(|_| Instant::now())
        }));
    }
    let send_time = run_started.elapsed();
    let mut patch_errors = 0;
    let mut acked_at = Vec::with_capacity(args.changes);
    for task in in_flight {
        match task.await {
            Ok(Ok(at)) => acked_at.push(Some(at)),
            Ok(Err(e)) => {
                patch_errors += 1;
                acked_at.push(None);
                eprintln!("patch failed: {e}");
            }
            Err(e) => {
                patch_errors += 1;
                acked_at.push(None);
                eprintln!("patch task failed: {e}");
            }
        }
    }
    let last_sent = Instant::now();
    while lock(&seen).count < args.changes - patch_errors && last_sent.elapsed() < patience {
        tokio::time::sleep(poll).await;
    }
    tokio::time::sleep(SETTLE).await;
    let run_writes: Vec<SecretWrite> = lock(&writes)[writes_before..].to_vec();

    // One route change: which objects it rewrites.
    let routes = gateway_api("HTTPRoute", "httproutes");
    let route_changed = Instant::now();
    Api::<DynamicObject>::namespaced_with(client.clone(), ns, &routes)
        .patch(
            "r-0",
            &apply(),
            &Patch::Apply(route(ns, &shape.gateway, 0, CHANGED_PATH)),
        )
        .await
        .map_err(kube_err("apply the route change"))?;
    let route_writes_before = lock(&writes).len();
    let route_result = wait_config(
        args.admin_config,
        "the route change to reach the data plane",
        patience,
        poll,
        |c| c.text.contains(CHANGED_PATH),
    )
    .await;
    let route_delay = route_changed.elapsed();
    tokio::time::sleep(SETTLE).await;
    stop.store(true, std::sync::atomic::Ordering::Release);
    let _ = poller.join();
    watcher.abort();
    let route_writes: Vec<SecretWrite> = lock(&writes)[route_writes_before..]
        .iter()
        .filter(|w| w.at >= route_changed)
        .cloned()
        .collect();
    route_result?;

    // The report.
    let seen = lock(&seen);
    let mut delays: Vec<Duration> = seen
        .at
        .iter()
        .zip(&sent_at)
        .filter_map(|(seen, sent)| seen.map(|s| s.saturating_duration_since(*sent)))
        .collect();
    delays.sort();
    let mut acks: Vec<Duration> = acked_at
        .iter()
        .zip(&sent_at)
        .filter_map(|(a, s)| a.map(|a| a - *s))
        .collect();
    acks.sort();
    let pct = |sorted: &[Duration], p| percentile(sorted, p).map(millis);
    let by_name = |list: &[SecretWrite]| {
        let mut summary: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
        for w in list {
            let entry = summary.entry(w.name.clone()).or_default();
            entry.0 += 1;
            entry.1 += w.data_bytes;
            entry.2 += w.object_bytes;
        }
        summary
    };
    let run_summary = by_name(&run_writes);
    let route_summary = by_name(&route_writes);
    let total_data: usize = run_writes.iter().map(|w| w.data_bytes).sum();
    let total_objects: usize = run_writes.iter().map(|w| w.object_bytes).sum();
    let last_size = |name: &str| {
        lock(&writes)
            .iter()
            .rev()
            .find(|w| w.name == name)
            .map(|w| w.data_bytes)
    };
    let changes = args.changes as f64;
    let summary_json = |s: &BTreeMap<String, (usize, usize, usize)>| {
        s.iter()
            .map(|(name, (n, data, object))| {
                (
                    name.clone(),
                    json!({"writes": n, "data_bytes": data, "object_bytes": object}),
                )
            })
            .collect::<serde_json::Map<_, _>>()
    };
    let report = json!({
        "routes": shape.routes,
        "endpoints": endpoints,
        "rate_per_s": args.rate,
        "changes_sent": args.changes - patch_errors,
        "patch_errors": patch_errors,
        "send_seconds": send_time.as_secs_f64(),
        "changes_seen": seen.count,
        "poll_interval_ms": args.poll_ms,
        "delay_ms": {
            "median": pct(&delays, 50.0),
            "p90": pct(&delays, 90.0),
            "p99": pct(&delays, 99.0),
            "max": pct(&delays, 100.0),
        },
        "delays_ms_by_change": seen
            .at
            .iter()
            .zip(&sent_at)
            .map(|(seen, sent)| seen.map(|s| millis(s.saturating_duration_since(*sent))))
            .collect::<Vec<_>>(),
        "patch_ack_ms": {"median": pct(&acks, 50.0), "p99": pct(&acks, 99.0)},
        "polls": seen.polls,
        "poll_errors": seen.poll_errors,
        "config_reads": seen.config_reads,
        "config_read_mean_ms": (seen.config_reads > 0)
            .then(|| millis(seen.config_read_time / seen.config_reads as u32)),
        "generations": seen.generations.map(|(a, b)| b - a),
        "writes": run_writes.len(),
        "writes_per_change": run_writes.len() as f64 / changes,
        "writes_by_secret": summary_json(&run_summary),
        "data_bytes_per_write": (!run_writes.is_empty()).then(|| total_data / run_writes.len()),
        "data_bytes_per_change": total_data as f64 / changes,
        "object_bytes_per_change": total_objects as f64 / changes,
        "config_secret_bytes": last_size(&names[0]),
        "endpoints_secret_bytes": last_size(&names[1]),
        "route_change": {
            "delay_ms": millis(route_delay),
            "writes_by_secret": summary_json(&route_summary),
        },
    });
    print_report(&report);
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report).unwrap_or_default();
        std::fs::write(path, text + "\n").map_err(|source| BenchError::Report {
            path: path.clone(),
            source,
        })?;
    }
    Ok(seen.count == args.changes && patch_errors == 0)
}

fn print_report(r: &Value) {
    let mut out = String::new();
    let d = &r["delay_ms"];
    let _ = writeln!(
        out,
        "== config delivery: {} routes, {} endpoints, {} changes at {}/s (sent in {:.1} s)",
        r["routes"],
        r["endpoints"],
        r["changes_sent"],
        r["rate_per_s"],
        r["send_seconds"].as_f64().unwrap_or(0.0)
    );
    let _ = writeln!(
        out,
        "changes seen on every shard: {} (patch errors {}); delay ms (poll every {} ms): median {} p90 {} p99 {} max {}",
        r["changes_seen"],
        r["patch_errors"],
        r["poll_interval_ms"],
        d["median"],
        d["p90"],
        d["p99"],
        d["max"]
    );
    let _ = writeln!(
        out,
        "API server patch ack ms: median {} p99 {}; /metrics polls {} (errors {}); /config reads {} (mean {} ms); generations {}",
        r["patch_ack_ms"]["median"],
        r["patch_ack_ms"]["p99"],
        r["polls"],
        r["poll_errors"],
        r["config_reads"],
        r["config_read_mean_ms"],
        r["generations"]
    );
    let _ = writeln!(
        out,
        "Secret writes: {} ({:.3} per change) {}; data bytes per write {}, per change {:.0}; object bytes per change {:.0}",
        r["writes"],
        r["writes_per_change"].as_f64().unwrap_or(0.0),
        r["writes_by_secret"],
        r["data_bytes_per_write"],
        r["data_bytes_per_change"].as_f64().unwrap_or(0.0),
        r["object_bytes_per_change"].as_f64().unwrap_or(0.0)
    );
    let _ = writeln!(
        out,
        "config Secret {} bytes, endpoints Secret {} bytes",
        r["config_secret_bytes"], r["endpoints_secret_bytes"]
    );
    let _ = writeln!(
        out,
        "one route change: on every shard after {} ms; rewrote {}",
        r["route_change"]["delay_ms"], r["route_change"]["writes_by_secret"]
    );
    print!("{out}");
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = async {
        let client = Client::try_default()
            .await
            .map_err(kube_err("load the kubeconfig"))?;
        match cli.command {
            Command::Setup(args) => setup(client, args).await.map(|()| true),
            Command::Run(args) => run(client, args).await,
        }
    }
    .await;
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("delivery-bench: not every change reached the data plane");
            ExitCode::from(EXIT_FAILED)
        }
        Err(e) => {
            eprintln!("delivery-bench: {e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}
