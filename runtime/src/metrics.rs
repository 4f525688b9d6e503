//! Metrics, counted per shard without sharing and summed on scrape.
//!
//! Every counter is a plain `Cell` owned by one shard: counting a handshake or a request is a
//! non-atomic add on memory no other core touches. The handles a connection increments are
//! looked up when the shard builds its copy of a port (once per config change), not per
//! connection or request. A scrape asks each shard, over its command channel, for a copy of
//! its counters ([`ShardMetrics::sample`]); the admin thread sums the copies and renders the
//! Prometheus text format. So the hot path has no atomics and no cross-core traffic; only a
//! scrape crosses cores, once per shard.
//!
//! **Series live as long as their object.** A port, listener, route or backend endpoint keeps
//! its series while the config has it, or while an open connection still serves with an older
//! config that has it (a connection keeps its copy of the port until it ends); then its series
//! leaves `/metrics` ([`ShardMetrics::forget_unused`], run on each config change and each
//! scrape). Pod IPs churn in a cluster, and a registry that kept every endpoint, route and
//! listener it ever saw would grow without bound. Counters of objects that stay are never
//! reset by a config change: the shard's new copy of a port takes over the same handles.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use crate::backend::{ConnectFailure, H2cConnectionError};
use crate::rejection::Rejection;

/// Upper bounds (seconds) of the duration histograms' buckets: from a resumed handshake on
/// loopback (~100 µs) to a stalled client or backend (10 s).
const DURATION_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 10.0,
];

/// How a TLS handshake ended, as the `outcome` label says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeOutcome {
    /// Completed; the client is verified or no certificate was asked for.
    Ok,
    /// Refused: no client certificate where one is required.
    NoClientCert,
    /// Refused: the certificate did not verify (chain, dates, usage).
    InvalidClientCert,
    /// Refused: an X.509 v1 certificate, which cannot be verified.
    X509V1ClientCert,
    /// Refused: verified, but carries none of the listener's allowed SANs.
    SanMismatch,
    /// Refused: verified, but its hash is not one of the listener's allowed hashes.
    HashMismatch,
    /// Completed in AllowInsecureFallback without a verified certificate.
    UnverifiedAccepted,
    /// Any other failure (protocol error, unknown SNI, timeout, client went away).
    Error,
}

impl HandshakeOutcome {
    const ALL: [HandshakeOutcome; 8] = [
        HandshakeOutcome::Ok,
        HandshakeOutcome::NoClientCert,
        HandshakeOutcome::InvalidClientCert,
        HandshakeOutcome::X509V1ClientCert,
        HandshakeOutcome::SanMismatch,
        HandshakeOutcome::HashMismatch,
        HandshakeOutcome::UnverifiedAccepted,
        HandshakeOutcome::Error,
    ];

    pub fn label(self) -> &'static str {
        match self {
            HandshakeOutcome::Ok => "ok",
            HandshakeOutcome::NoClientCert => "no_client_cert",
            HandshakeOutcome::InvalidClientCert => "invalid_client_cert",
            HandshakeOutcome::X509V1ClientCert => "x509_v1_client_cert",
            HandshakeOutcome::SanMismatch => "san_mismatch",
            HandshakeOutcome::HashMismatch => "hash_mismatch",
            HandshakeOutcome::UnverifiedAccepted => "unverified_accepted",
            HandshakeOutcome::Error => "error",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A duration histogram of one shard.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [Cell<u64>; DURATION_BUCKETS.len()],
    count: Cell<u64>,
    sum_seconds: Cell<f64>,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = DURATION_BUCKETS.iter().position(|b| s <= *b)
            && let Some(bucket) = self.buckets.get(i)
        {
            bucket.set(bucket.get() + 1);
        }
        self.count.set(self.count.get() + 1);
        self.sum_seconds.set(self.sum_seconds.get() + s);
    }

    fn sample(&self) -> HistogramSample {
        HistogramSample {
            buckets: self.buckets.iter().map(Cell::get).collect(),
            count: self.count.get(),
            sum_seconds: self.sum_seconds.get(),
        }
    }
}

/// Counters of one listener on one shard.
#[derive(Debug, Default)]
pub struct ListenerMetrics {
    handshakes: [Cell<u64>; HandshakeOutcome::ALL.len()],
    pub handshake_duration: Histogram,
}

impl ListenerMetrics {
    pub fn handshake(&self, outcome: HandshakeOutcome) {
        if let Some(c) = self.handshakes.get(outcome.index()) {
            c.set(c.get() + 1);
        }
    }
}

/// What a request was carried as, for the `protocol` label of request metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RequestProtocol {
    /// An HTTP/1.1 request.
    H1,
    /// A stream of an HTTP/2 connection.
    H2,
    /// A gRPC call (`content-type: application/grpc…`), over either.
    Grpc,
    /// A WebSocket opening handshake (HTTP/1.1 Upgrade or HTTP/2 extended CONNECT).
    WebSocket,
}

impl RequestProtocol {
    pub fn label(self) -> &'static str {
        match self {
            RequestProtocol::H1 => "h1",
            RequestProtocol::H2 => "h2",
            RequestProtocol::Grpc => "grpc",
            RequestProtocol::WebSocket => "websocket",
        }
    }
}

/// Counters of one route (or of requests no route took) on one port on one shard.
#[derive(Debug, Default)]
pub struct RouteMetrics {
    /// By protocol and status code; a route answers with few distinct pairs, so a short list
    /// beats a map.
    codes: RefCell<Vec<((RequestProtocol, u16), u64)>>,
    pub duration: Histogram,
}

impl RouteMetrics {
    pub fn request(&self, protocol: RequestProtocol, code: u16, took: Duration) {
        let key = (protocol, code);
        let mut codes = self.codes.borrow_mut();
        match codes.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => *n += 1,
            None => codes.push((key, 1)),
        }
        drop(codes);
        self.duration.observe(took);
    }
}

/// Counters of one port on one shard.
#[derive(Debug, Default)]
pub struct PortMetrics {
    pub active_connections: Cell<i64>,
    /// Handshakes that failed before a listener was chosen (bad ClientHello, unknown SNI).
    pub unlistened: ListenerMetrics,
    /// Requests answered without a route (400, 404, 421, 431).
    pub unrouted: RouteMetrics,
}

/// Failures and ejections of one backend endpoint (on one shard, or summed over shards).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EndpointCounters {
    /// Connects that failed other than by timing out.
    pub connect_errors: u64,
    pub connect_timeouts: u64,
    pub response_timeouts: u64,
    /// Times a shard ejected the endpoint, by [`ConnectFailure::index`].
    pub ejections: [u64; ConnectFailure::ALL.len()],
    /// Shards that skip the endpoint now (a gauge; 0 or 1 for one shard).
    pub ejected_shards: u64,
    /// h2c connections to the endpoint that failed, by [`H2cConnectionError::index`].
    pub h2_connection_errors: [u64; H2cConnectionError::ALL.len()],
}

impl EndpointCounters {
    fn add(&mut self, other: &EndpointCounters) {
        self.connect_errors += other.connect_errors;
        self.connect_timeouts += other.connect_timeouts;
        self.response_timeouts += other.response_timeouts;
        for (a, b) in self.ejections.iter_mut().zip(other.ejections) {
            *a += b;
        }
        self.ejected_shards += other.ejected_shards;
        for (a, b) in self
            .h2_connection_errors
            .iter_mut()
            .zip(other.h2_connection_errors)
        {
            *a += b;
        }
    }

    /// Failed h2c connections for this reason.
    pub fn h2_connection_errors(&self, reason: H2cConnectionError) -> u64 {
        self.h2_connection_errors
            .get(reason.index())
            .copied()
            .unwrap_or(0)
    }

    /// Ejections for this reason.
    pub fn ejections(&self, reason: ConnectFailure) -> u64 {
        self.ejections.get(reason.index()).copied().unwrap_or(0)
    }
}

/// One shard's connections over all its ports. Each client connection goes to the shard the
/// kernel's SO_REUSEPORT hash picks, so these, shard by shard, show how evenly it spread them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardConnections {
    pub accepted: u64,
    pub now: ShardGauges,
}

/// What a shard holds at the moment it is sampled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardGauges {
    /// Client connections open.
    pub open: u64,
    /// Of those, TLS connections still in their handshake.
    pub handshaking: u64,
    /// Idle keep-alive connections to backends, held for reuse.
    pub idle_backend: u64,
}

/// One shard's metrics registry. Port, listener and route entries are created when a shard
/// builds its copy of a port, which holds their handles; endpoint entries at an endpoint's
/// first failure. [`ShardMetrics::forget_unused`] drops them once no copy of a port in use
/// refers to their object (see the module docs).
#[derive(Debug, Default)]
pub struct ShardMetrics {
    connections_accepted: Cell<u64>,
    ports: RefCell<BTreeMap<u16, Rc<PortMetrics>>>,
    listeners: RefCell<BTreeMap<(u16, String), Rc<ListenerMetrics>>>,
    routes: RefCell<BTreeMap<(u16, String), Rc<RouteMetrics>>>,
    endpoints: RefCell<HashMap<SocketAddr, EndpointCounters>>,
    /// `(direction, reason)` -> count; HTTP/2 connection ends are rare events.
    h2_goaways: RefCell<BTreeMap<(&'static str, &'static str), u64>>,
    h2_stream_resets: RefCell<BTreeMap<(&'static str, &'static str), u64>>,
    /// Gateway answers by [`Rejection::index`].
    rejections: [Cell<u64>; Rejection::ALL.len()],
    /// WebSocket tunnels running now.
    websocket_open: Cell<u64>,
    /// WebSocket tunnels ended, by [`TunnelEnd::index`].
    websocket_ended: [Cell<u64>; TunnelEnd::ALL.len()],
}

/// How a WebSocket tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelEnd {
    /// Both sides closed their direction (each close was passed on).
    Closed,
    /// No byte either way for the idle timeout.
    Idle,
    /// A side failed (a reset, a TLS error, a reset h2 stream).
    Error,
    /// The drain's deadline, or the shard's shutdown, cut it.
    Cut,
}

impl TunnelEnd {
    pub const ALL: [TunnelEnd; 4] = [
        TunnelEnd::Closed,
        TunnelEnd::Idle,
        TunnelEnd::Error,
        TunnelEnd::Cut,
    ];

    pub fn label(self) -> &'static str {
        match self {
            TunnelEnd::Closed => "closed",
            TunnelEnd::Idle => "idle",
            TunnelEnd::Error => "error",
            TunnelEnd::Cut => "cut",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// How an HTTP/2 connection ended early or was told to: a GOAWAY we sent (a limit the client
/// broke, its protocol error, idleness, a drain), one the client sent, or a socket error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum H2GoAway {
    /// No stream for the idle timeout: graceful GOAWAY.
    Idle,
    /// The shard drains: graceful GOAWAY.
    Draining,
    /// The client cancelled too many of its streams (see `h2`): `ENHANCE_YOUR_CALM`.
    RapidReset,
    /// The h2 library ended the connection with this code (a client's protocol error, or one of
    /// its limits: `ENHANCE_YOUR_CALM`).
    Sent(h2::Reason),
    /// The client sent GOAWAY with this code.
    Received(h2::Reason),
    /// The socket or TLS failed under the connection.
    Io,
}

impl H2GoAway {
    /// How the h2 library's connection error reads.
    pub fn of(error: &h2::Error) -> Self {
        match (error.reason(), error.is_remote()) {
            (Some(reason), true) => H2GoAway::Received(reason),
            (Some(reason), false) => H2GoAway::Sent(reason),
            (None, _) => H2GoAway::Io,
        }
    }

    /// `(direction, reason)` labels.
    pub fn labels(self) -> (&'static str, &'static str) {
        match self {
            H2GoAway::Idle => ("sent", "idle"),
            H2GoAway::Draining => ("sent", "draining"),
            H2GoAway::RapidReset => ("sent", "rapid_reset"),
            H2GoAway::Sent(reason) => ("sent", h2_reason_label(reason)),
            H2GoAway::Received(reason) => ("received", h2_reason_label(reason)),
            H2GoAway::Io => ("none", "io_error"),
        }
    }
}

/// The HTTP/2 error code's name (RFC 9113 §7), as a label.
pub fn h2_reason_label(reason: h2::Reason) -> &'static str {
    use h2::Reason as R;
    match reason {
        R::NO_ERROR => "no_error",
        R::PROTOCOL_ERROR => "protocol_error",
        R::INTERNAL_ERROR => "internal_error",
        R::FLOW_CONTROL_ERROR => "flow_control_error",
        R::SETTINGS_TIMEOUT => "settings_timeout",
        R::STREAM_CLOSED => "stream_closed",
        R::FRAME_SIZE_ERROR => "frame_size_error",
        R::REFUSED_STREAM => "refused_stream",
        R::CANCEL => "cancel",
        R::COMPRESSION_ERROR => "compression_error",
        R::CONNECT_ERROR => "connect_error",
        R::ENHANCE_YOUR_CALM => "enhance_your_calm",
        R::INADEQUATE_SECURITY => "inadequate_security",
        R::HTTP_1_1_REQUIRED => "http_1_1_required",
        _ => "unknown",
    }
}

/// Why an HTTP/2 stream was reset: by us (and with which code), or by the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum H2StreamReset {
    /// The backend failed after the response started: `INTERNAL_ERROR`.
    BackendBroke,
    /// The client reset (cancelled) the stream before its response ended.
    ClientCancelled,
}

impl H2StreamReset {
    pub fn labels(self) -> (&'static str, &'static str) {
        match self {
            H2StreamReset::BackendBroke => ("sent", "internal_error"),
            H2StreamReset::ClientCancelled => ("received", "cancel"),
        }
    }
}

/// Which backend failure to count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendFailure {
    Connect(ConnectFailure),
    ResponseTimeout,
}

impl ShardMetrics {
    pub fn connection_accepted(&self) {
        self.connections_accepted
            .set(self.connections_accepted.get() + 1);
    }

    pub fn port(&self, port: u16) -> Rc<PortMetrics> {
        Rc::clone(self.ports.borrow_mut().entry(port).or_default())
    }

    pub fn listener(&self, port: u16, listener: &str) -> Rc<ListenerMetrics> {
        Rc::clone(
            self.listeners
                .borrow_mut()
                .entry((port, listener.to_owned()))
                .or_default(),
        )
    }

    pub fn route(&self, port: u16, route: &str) -> Rc<RouteMetrics> {
        Rc::clone(
            self.routes
                .borrow_mut()
                .entry((port, route.to_owned()))
                .or_default(),
        )
    }

    /// Backend failures are rare (and the endpoint set is open-ended), so a map is fine here.
    pub fn backend_failure(&self, endpoint: SocketAddr, failure: BackendFailure) {
        let mut endpoints = self.endpoints.borrow_mut();
        let c = endpoints.entry(endpoint).or_default();
        match failure {
            BackendFailure::Connect(ConnectFailure::TimedOut) => c.connect_timeouts += 1,
            BackendFailure::Connect(_) => c.connect_errors += 1,
            BackendFailure::ResponseTimeout => c.response_timeouts += 1,
        }
    }

    /// An h2c connection to `endpoint` failed.
    pub fn backend_h2_connection_error(&self, endpoint: SocketAddr, reason: H2cConnectionError) {
        let mut endpoints = self.endpoints.borrow_mut();
        let c = endpoints.entry(endpoint).or_default();
        if let Some(n) = c.h2_connection_errors.get_mut(reason.index()) {
            *n += 1;
        }
    }

    pub fn h2_goaway(&self, goaway: H2GoAway) {
        *self
            .h2_goaways
            .borrow_mut()
            .entry(goaway.labels())
            .or_default() += 1;
    }

    pub fn h2_stream_reset(&self, reset: H2StreamReset) {
        *self
            .h2_stream_resets
            .borrow_mut()
            .entry(reset.labels())
            .or_default() += 1;
    }

    /// A WebSocket tunnel started.
    pub fn websocket_opened(&self) {
        self.websocket_open.set(self.websocket_open.get() + 1);
    }

    /// A WebSocket tunnel ended.
    pub fn websocket_closed(&self, end: TunnelEnd) {
        self.websocket_open
            .set(self.websocket_open.get().saturating_sub(1));
        if let Some(n) = self.websocket_ended.get(end.index()) {
            n.set(n.get() + 1);
        }
    }

    /// The gateway answered a request itself (see [`Rejection`]).
    pub fn rejected(&self, rejection: Rejection) {
        if let Some(n) = self.rejections.get(rejection.index()) {
            n.set(n.get() + 1);
        }
    }

    /// The shard ejected `endpoint` because of `reason`.
    pub fn endpoint_ejected(&self, endpoint: SocketAddr, reason: ConnectFailure) {
        let mut endpoints = self.endpoints.borrow_mut();
        let c = endpoints.entry(endpoint).or_default();
        if let Some(n) = c.ejections.get_mut(reason.index()) {
            *n += 1;
        }
    }

    /// Whether any endpoint has counters (else [`forget_unused`](Self::forget_unused) needs no
    /// set of endpoints in use).
    pub fn has_endpoints(&self) -> bool {
        !self.endpoints.borrow().is_empty()
    }

    /// Drops the entries of objects that no copy of a port in use refers to: a port, listener
    /// or route entry whose handle only the registry still holds (every copy of a port holds
    /// the handles it was built with, and open connections hold their copy), and the
    /// endpoints not in `endpoints_in_use` (those of every copy of a port still held).
    pub fn forget_unused(&self, endpoints_in_use: &HashSet<SocketAddr>) {
        self.ports
            .borrow_mut()
            .retain(|_, m| Rc::strong_count(m) > 1);
        self.listeners
            .borrow_mut()
            .retain(|_, m| Rc::strong_count(m) > 1);
        self.routes
            .borrow_mut()
            .retain(|_, m| Rc::strong_count(m) > 1);
        self.endpoints
            .borrow_mut()
            .retain(|endpoint, _| endpoints_in_use.contains(endpoint));
    }

    /// A copy of every counter, to send to the admin thread; `shard` is this shard's index,
    /// `now` what it holds at this moment and `ejected` the endpoints it skips now.
    pub fn sample(&self, shard: usize, now: ShardGauges, ejected: &[SocketAddr]) -> MetricsSample {
        let mut sample = MetricsSample::default();
        sample.shards.insert(
            shard,
            ShardConnections {
                accepted: self.connections_accepted.get(),
                now,
            },
        );
        for (port, m) in self.ports.borrow().iter() {
            sample.active.insert(*port, m.active_connections.get());
            sample
                .handshakes
                .insert((*port, String::new()), listener_sample(&m.unlistened));
            sample
                .requests
                .insert((*port, String::new()), route_sample(&m.unrouted));
        }
        for (key, m) in self.listeners.borrow().iter() {
            sample.handshakes.insert(key.clone(), listener_sample(m));
        }
        for (key, m) in self.routes.borrow().iter() {
            sample.requests.insert(key.clone(), route_sample(m));
        }
        sample.h2_goaways = self.h2_goaways.borrow().clone();
        sample.h2_stream_resets = self.h2_stream_resets.borrow().clone();
        sample.rejections = self.rejections.each_ref().map(Cell::get);
        sample.websocket_open = self.websocket_open.get();
        sample.websocket_ended = self.websocket_ended.each_ref().map(Cell::get);
        for (endpoint, c) in self.endpoints.borrow().iter() {
            let mut c = *c;
            c.ejected_shards = u64::from(ejected.contains(endpoint));
            sample.endpoints.insert(*endpoint, c);
        }
        sample
    }
}

fn listener_sample(m: &ListenerMetrics) -> (Vec<u64>, HistogramSample) {
    (
        m.handshakes.iter().map(Cell::get).collect(),
        m.handshake_duration.sample(),
    )
}

fn route_sample(m: &RouteMetrics) -> (RequestCounts, HistogramSample) {
    (
        m.codes.borrow().iter().copied().collect(),
        m.duration.sample(),
    )
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistogramSample {
    buckets: Vec<u64>,
    count: u64,
    sum_seconds: f64,
}

impl HistogramSample {
    fn add(&mut self, other: &HistogramSample) {
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.count += other.count;
        self.sum_seconds += other.sum_seconds;
    }
}

/// Request counts by protocol and status code.
pub type RequestCounts = BTreeMap<(RequestProtocol, u16), u64>;

/// Plain data copied out of a shard (or summed over shards).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsSample {
    /// `(port, listener)` -> (counts by outcome, duration). Listener `""`: none chosen.
    pub handshakes: BTreeMap<(u16, String), (Vec<u64>, HistogramSample)>,
    /// `(port, route)` -> (counts by protocol and code, duration). Route `""`: answered
    /// without a route.
    pub requests: BTreeMap<(u16, String), (RequestCounts, HistogramSample)>,
    pub active: BTreeMap<u16, i64>,
    pub endpoints: BTreeMap<SocketAddr, EndpointCounters>,
    /// shard index -> its connections (kept per shard, not summed).
    pub shards: BTreeMap<usize, ShardConnections>,
    /// `(direction, reason)` -> HTTP/2 GOAWAYs and connection errors.
    pub h2_goaways: BTreeMap<(&'static str, &'static str), u64>,
    /// `(direction, reason)` -> HTTP/2 stream resets.
    pub h2_stream_resets: BTreeMap<(&'static str, &'static str), u64>,
    /// Gateway answers by [`Rejection::index`].
    pub rejections: [u64; Rejection::ALL.len()],
    /// WebSocket tunnels running.
    pub websocket_open: u64,
    /// WebSocket tunnels ended, by [`TunnelEnd::index`].
    pub websocket_ended: [u64; TunnelEnd::ALL.len()],
}

impl MetricsSample {
    /// Adds another shard's sample to this one.
    pub fn add(&mut self, other: &MetricsSample) {
        for (key, n) in &other.h2_goaways {
            *self.h2_goaways.entry(*key).or_default() += n;
        }
        for (key, n) in &other.h2_stream_resets {
            *self.h2_stream_resets.entry(*key).or_default() += n;
        }
        for (a, b) in self.rejections.iter_mut().zip(other.rejections) {
            *a += b;
        }
        self.websocket_open += other.websocket_open;
        for (a, b) in self.websocket_ended.iter_mut().zip(other.websocket_ended) {
            *a += b;
        }
        for (key, (counts, hist)) in &other.handshakes {
            let entry = self.handshakes.entry(key.clone()).or_default();
            if entry.0.len() < counts.len() {
                entry.0.resize(counts.len(), 0);
            }
            for (a, b) in entry.0.iter_mut().zip(counts) {
                *a += b;
            }
            entry.1.add(hist);
        }
        for (key, (codes, hist)) in &other.requests {
            let entry = self.requests.entry(key.clone()).or_default();
            for (code, n) in codes {
                *entry.0.entry(*code).or_default() += n;
            }
            entry.1.add(hist);
        }
        for (port, n) in &other.active {
            *self.active.entry(*port).or_default() += n;
        }
        for (endpoint, c) in &other.endpoints {
            self.endpoints.entry(*endpoint).or_default().add(c);
        }
        self.shards.extend(&other.shards);
    }

    /// The handshake count for one label set (tests and the admin summary).
    pub fn handshakes(&self, port: u16, listener: &str, outcome: HandshakeOutcome) -> u64 {
        self.handshakes
            .get(&(port, listener.to_owned()))
            .and_then(|(c, _)| c.get(outcome.index()).copied())
            .unwrap_or(0)
    }
}

/// What the control side adds to the shards' samples.
#[derive(Debug, Clone, Default)]
pub struct ProcessMetrics {
    pub published_generation: u64,
    /// Per shard: (applied generation, driver name).
    pub shards: Vec<(u64, Option<&'static str>)>,
    pub reloads_applied: u64,
    pub reloads_rejected: u64,
    pub draining: bool,
}

/// Renders the Prometheus text exposition format (version 0.0.4).
pub fn render(sample: &MetricsSample, process: &ProcessMetrics) -> String {
    let mut out = String::with_capacity(4096);
    family(
        &mut out,
        "portcullis_http2_goaways_total",
        "counter",
        "HTTP/2 connections ended by GOAWAY (sent: by us, with the limit or error as reason; received: by the client) or by a socket error.",
    );
    for ((direction, reason), n) in &sample.h2_goaways {
        let _ = writeln!(
            out,
            "portcullis_http2_goaways_total{{direction=\"{direction}\",reason=\"{reason}\"}} {n}"
        );
    }
    family(
        &mut out,
        "portcullis_websocket_tunnels_open",
        "gauge",
        "WebSocket tunnels running (after a successful upgrade, until either side ends it).",
    );
    let _ = writeln!(
        out,
        "portcullis_websocket_tunnels_open {}",
        sample.websocket_open
    );
    family(
        &mut out,
        "portcullis_websocket_tunnels_ended_total",
        "counter",
        "WebSocket tunnels ended, by reason: closed (both sides closed), idle (no byte for the idle timeout), error (a side failed, or closed its TLS connection without close_notify), cut (the drain's deadline).",
    );
    for (end, n) in TunnelEnd::ALL.iter().zip(sample.websocket_ended) {
        let _ = writeln!(
            out,
            "portcullis_websocket_tunnels_ended_total{{reason=\"{}\"}} {n}",
            end.label()
        );
    }
    family(
        &mut out,
        "portcullis_http2_stream_resets_total",
        "counter",
        "HTTP/2 streams reset, by direction (sent: by us) and reason.",
    );
    for ((direction, reason), n) in &sample.h2_stream_resets {
        let _ = writeln!(
            out,
            "portcullis_http2_stream_resets_total{{direction=\"{direction}\",reason=\"{reason}\"}} {n}"
        );
    }
    family(
        &mut out,
        "portcullis_tls_handshakes_total",
        "counter",
        "TLS handshakes by port, listener (empty: none chosen) and outcome.",
    );
    for ((port, listener), (counts, _)) in &sample.handshakes {
        for outcome in HandshakeOutcome::ALL {
            let n = counts.get(outcome.index()).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "portcullis_tls_handshakes_total{{port=\"{port}\",listener=\"{}\",outcome=\"{}\"}} {n}",
                escape(listener),
                outcome.label()
            );
        }
    }
    family(
        &mut out,
        "portcullis_tls_handshake_duration_seconds",
        "histogram",
        "Time from accept to the end of the TLS handshake.",
    );
    for ((port, listener), (_, hist)) in &sample.handshakes {
        histogram(
            &mut out,
            "portcullis_tls_handshake_duration_seconds",
            &format!("port=\"{port}\",listener=\"{}\"", escape(listener)),
            hist,
        );
    }
    family(
        &mut out,
        "portcullis_http_requests_total",
        "counter",
        "HTTP requests by port, route (namespace/name; empty: none matched), protocol (h1, h2, grpc, websocket) and status code.",
    );
    for ((port, route), (codes, _)) in &sample.requests {
        for ((protocol, code), n) in codes {
            let _ = writeln!(
                out,
                "portcullis_http_requests_total{{port=\"{port}\",route=\"{}\",protocol=\"{}\",code=\"{code}\"}} {n}",
                escape(route),
                protocol.label()
            );
        }
    }
    family(
        &mut out,
        "portcullis_gateway_answers_total",
        "counter",
        "Requests the gateway answered itself instead of a backend (client_closed: the client left first), by reason, whose fault it was (client, config, backend, gateway) and the status code portcullis_http_requests_total counts them with.",
    );
    for (rejection, n) in Rejection::ALL.iter().zip(sample.rejections) {
        let _ = writeln!(
            out,
            "portcullis_gateway_answers_total{{reason=\"{}\",fault=\"{}\",code=\"{}\"}} {n}",
            rejection.label(),
            rejection.fault().label(),
            rejection.status().as_u16()
        );
    }
    family(
        &mut out,
        "portcullis_http_request_duration_seconds",
        "histogram",
        "Time from a complete request head to the end of its response.",
    );
    for ((port, route), (_, hist)) in &sample.requests {
        histogram(
            &mut out,
            "portcullis_http_request_duration_seconds",
            &format!("port=\"{port}\",route=\"{}\"", escape(route)),
            hist,
        );
    }
    family(
        &mut out,
        "portcullis_active_connections",
        "gauge",
        "Open client connections by port.",
    );
    for (port, n) in &sample.active {
        let _ = writeln!(out, "portcullis_active_connections{{port=\"{port}\"}} {n}");
    }
    family(
        &mut out,
        "portcullis_backend_connect_errors_total",
        "counter",
        "Failed connections to backend endpoints.",
    );
    for (endpoint, c) in &sample.endpoints {
        let _ = writeln!(
            out,
            "portcullis_backend_connect_errors_total{{endpoint=\"{endpoint}\"}} {}",
            c.connect_errors
        );
    }
    family(
        &mut out,
        "portcullis_backend_timeouts_total",
        "counter",
        "Backend timeouts by endpoint and phase (connect or response).",
    );
    for (endpoint, c) in &sample.endpoints {
        let _ = writeln!(
            out,
            "portcullis_backend_timeouts_total{{endpoint=\"{endpoint}\",phase=\"connect\"}} {}",
            c.connect_timeouts
        );
        let _ = writeln!(
            out,
            "portcullis_backend_timeouts_total{{endpoint=\"{endpoint}\",phase=\"response\"}} {}",
            c.response_timeouts
        );
    }
    family(
        &mut out,
        "portcullis_backend_h2_connection_errors_total",
        "counter",
        "Failed HTTP/2 (h2c) connections to backend endpoints, by reason (endpoints that had one).",
    );
    for (endpoint, c) in &sample.endpoints {
        if c.h2_connection_errors.iter().all(|n| *n == 0) {
            continue;
        }
        for reason in H2cConnectionError::ALL {
            let _ = writeln!(
                out,
                "portcullis_backend_h2_connection_errors_total{{endpoint=\"{endpoint}\",reason=\"{}\"}} {}",
                reason.label(),
                c.h2_connection_errors(reason)
            );
        }
    }
    family(
        &mut out,
        "portcullis_backend_endpoint_ejections_total",
        "counter",
        "Times a shard ejected a backend endpoint (skipped it for --backend-ejection-time), by the connect failure that did.",
    );
    for (endpoint, c) in &sample.endpoints {
        for reason in ConnectFailure::ALL.into_iter().filter(|r| r.ejects()) {
            let _ = writeln!(
                out,
                "portcullis_backend_endpoint_ejections_total{{endpoint=\"{endpoint}\",reason=\"{}\"}} {}",
                reason.label(),
                c.ejections(reason)
            );
        }
    }
    family(
        &mut out,
        "portcullis_backend_endpoint_ejected_shards",
        "gauge",
        "Shards that skip a backend endpoint now because connecting to it failed.",
    );
    for (endpoint, c) in &sample.endpoints {
        let _ = writeln!(
            out,
            "portcullis_backend_endpoint_ejected_shards{{endpoint=\"{endpoint}\"}} {}",
            c.ejected_shards
        );
    }
    family(
        &mut out,
        "portcullis_config_generation",
        "gauge",
        "Generation of the last published configuration snapshot.",
    );
    let _ = writeln!(
        out,
        "portcullis_config_generation {}",
        process.published_generation
    );
    family(
        &mut out,
        "portcullis_shard_config_generation",
        "gauge",
        "Generation of the snapshot each shard applied.",
    );
    for (i, (generation, _)) in process.shards.iter().enumerate() {
        let _ = writeln!(
            out,
            "portcullis_shard_config_generation{{shard=\"{i}\"}} {generation}"
        );
    }
    family(
        &mut out,
        "portcullis_config_reloads_total",
        "counter",
        "Configuration reloads by outcome (rejected: the input was broken, the last good config stayed).",
    );
    let _ = writeln!(
        out,
        "portcullis_config_reloads_total{{outcome=\"applied\"}} {}",
        process.reloads_applied
    );
    let _ = writeln!(
        out,
        "portcullis_config_reloads_total{{outcome=\"rejected\"}} {}",
        process.reloads_rejected
    );
    family(
        &mut out,
        "portcullis_shard_driver",
        "gauge",
        "The event-loop driver each shard runs (1 for the driver in use).",
    );
    for (i, (_, driver)) in process.shards.iter().enumerate() {
        if let Some(driver) = driver {
            let _ = writeln!(
                out,
                "portcullis_shard_driver{{shard=\"{i}\",driver=\"{driver}\"}} 1"
            );
        }
    }
    let per_shard: [PerShardFamily; 4] = [
        (
            "portcullis_shard_connections_accepted_total",
            "counter",
            "Client connections each shard accepted, all ports together (how evenly the kernel spread them).",
            |c| c.accepted,
        ),
        (
            "portcullis_shard_open_connections",
            "gauge",
            "Client connections open on each shard, all ports together.",
            |c| c.now.open,
        ),
        (
            "portcullis_shard_handshakes_in_progress",
            "gauge",
            "TLS connections each shard accepted whose handshake has not ended.",
            |c| c.now.handshaking,
        ),
        (
            "portcullis_shard_idle_backend_connections",
            "gauge",
            "Idle keep-alive connections to backends each shard holds for reuse (closed after 4 s unused).",
            |c| c.now.idle_backend,
        ),
    ];
    for (name, kind, help, value) in per_shard {
        family(&mut out, name, kind, help);
        for (shard, c) in &sample.shards {
            let _ = writeln!(out, "{name}{{shard=\"{shard}\"}} {}", value(c));
        }
    }
    family(
        &mut out,
        "portcullis_draining",
        "gauge",
        "1 while shutting down gracefully.",
    );
    let _ = writeln!(out, "portcullis_draining {}", u8::from(process.draining));
    out
}

/// A metric family with one series per shard: name, type, help, and its value for a shard.
type PerShardFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ShardConnections) -> u64,
);

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn histogram(out: &mut String, name: &str, labels: &str, hist: &HistogramSample) {
    let mut cumulative = 0u64;
    for (bound, n) in DURATION_BUCKETS.iter().zip(&hist.buckets) {
        cumulative += n;
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", hist.count);
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", hist.sum_seconds);
    let _ = writeln!(out, "{name}_count{{{labels}}} {}", hist.count);
}

/// Label values escape `\`, `"` and newlines.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_sum_over_shards() {
        let a = ShardMetrics::default();
        let b = ShardMetrics::default();
        a.listener(443, "l").handshake(HandshakeOutcome::Ok);
        b.listener(443, "l").handshake(HandshakeOutcome::Ok);
        b.listener(443, "l")
            .handshake(HandshakeOutcome::NoClientCert);
        a.route(443, "ns/r")
            .request(RequestProtocol::H1, 200, Duration::from_millis(1));
        b.route(443, "ns/r")
            .request(RequestProtocol::H1, 200, Duration::from_millis(3));
        a.connection_accepted();
        b.connection_accepted();
        b.connection_accepted();
        let mut total = a.sample(
            0,
            ShardGauges {
                open: 1,
                handshaking: 3,
                idle_backend: 7,
            },
            &[],
        );
        total.add(&b.sample(1, ShardGauges::default(), &[]));
        assert_eq!(total.handshakes(443, "l", HandshakeOutcome::Ok), 2);
        assert_eq!(
            total.handshakes(443, "l", HandshakeOutcome::NoClientCert),
            1
        );
        let text = render(&total, &ProcessMetrics::default());
        assert!(text.contains(
            "portcullis_http_requests_total{port=\"443\",route=\"ns/r\",protocol=\"h1\",code=\"200\"} 2"
        ));
        assert!(text.contains(
            "portcullis_http_request_duration_seconds_bucket{port=\"443\",route=\"ns/r\",le=\"+Inf\"} 2"
        ));
        // Connections stay per shard: they show how evenly the kernel spread them.
        assert!(text.contains("portcullis_shard_connections_accepted_total{shard=\"0\"} 1\n"));
        assert!(text.contains("portcullis_shard_connections_accepted_total{shard=\"1\"} 2\n"));
        assert!(text.contains("portcullis_shard_open_connections{shard=\"0\"} 1\n"));
        assert!(text.contains("portcullis_shard_open_connections{shard=\"1\"} 0\n"));
        assert!(text.contains("portcullis_shard_handshakes_in_progress{shard=\"0\"} 3\n"));
        assert!(text.contains("portcullis_shard_idle_backend_connections{shard=\"0\"} 7\n"));
        assert!(text.contains("portcullis_shard_idle_backend_connections{shard=\"1\"} 0\n"));
    }

    #[test]
    fn gateway_answers_are_counted_by_reason_and_summed_over_shards() {
        let (a, b) = (ShardMetrics::default(), ShardMetrics::default());
        a.rejected(Rejection::NoBackend);
        b.rejected(Rejection::NoBackend);
        b.rejected(Rejection::InvalidBackend);
        let mut total = a.sample(0, ShardGauges::default(), &[]);
        total.add(&b.sample(1, ShardGauges::default(), &[]));
        let text = render(&total, &ProcessMetrics::default());
        // Two causes of a 500, apart.
        for (series, n) in [
            (r#"reason="no_backend",fault="config",code="500""#, 2),
            (r#"reason="invalid_backend",fault="config",code="500""#, 1),
            (
                r#"reason="route_state_missing",fault="gateway",code="500""#,
                0,
            ),
        ] {
            let line = format!("portcullis_gateway_answers_total{{{series}}} {n}");
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }

    #[test]
    fn entries_leave_once_nothing_in_use_refers_to_their_object() {
        let m = ShardMetrics::default();
        let (gone, kept): (SocketAddr, SocketAddr) = (
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        );
        let port = m.port(443);
        let listener = m.listener(443, "kept");
        let route = m.route(443, "ns/kept");
        route.request(RequestProtocol::H1, 200, Duration::ZERO);
        // Held by nothing but the registry: a copy of a port that was dropped.
        m.listener(443, "gone").handshake(HandshakeOutcome::Ok);
        m.route(443, "ns/gone")
            .request(RequestProtocol::H1, 200, Duration::ZERO);
        drop(m.port(8443));
        for endpoint in [gone, kept] {
            m.backend_failure(endpoint, BackendFailure::Connect(ConnectFailure::Refused));
            m.endpoint_ejected(endpoint, ConnectFailure::Refused);
        }

        m.forget_unused(&HashSet::from([kept]));
        let text = render(
            &m.sample(0, ShardGauges::default(), &[kept]),
            &ProcessMetrics::default(),
        );
        for series in [
            "listener=\"gone\"",
            "route=\"ns/gone\"",
            "port=\"8443\"",
            "127.0.0.1:1\"",
        ] {
            assert!(!text.contains(series), "{series} stayed:\n{text}");
        }
        assert!(text.contains(
            "portcullis_http_requests_total{port=\"443\",route=\"ns/kept\",protocol=\"h1\",code=\"200\"} 1\n"
        ));
        assert!(text.contains(
            "portcullis_backend_endpoint_ejections_total{endpoint=\"127.0.0.1:2\",reason=\"refused\"} 1\n"
        ));
        assert!(
            text.contains(
                "portcullis_backend_endpoint_ejected_shards{endpoint=\"127.0.0.1:2\"} 1\n"
            )
        );
        assert!(text.contains("portcullis_active_connections{port=\"443\"} 0\n"));
        // The new copy of a port takes over the same handles: nothing is reset.
        assert!(Rc::ptr_eq(&route, &m.route(443, "ns/kept")));
        drop((port, listener));
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_millis(2));
        h.observe(Duration::from_secs(60));
        let mut out = String::new();
        histogram(&mut out, "h", "a=\"b\"", &h.sample());
        assert!(out.contains("h_bucket{a=\"b\",le=\"0.0001\"} 1\n"));
        assert!(out.contains("h_bucket{a=\"b\",le=\"0.0025\"} 2\n"));
        assert!(out.contains("h_bucket{a=\"b\",le=\"10\"} 2\n"));
        assert!(out.contains("h_bucket{a=\"b\",le=\"+Inf\"} 3\n"));
        assert!(out.contains("h_count{a=\"b\"} 3\n"));
    }
}
