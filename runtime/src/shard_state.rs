//! What a shard's connections read and update: the shard's own state ([`ShardContext`]: limits,
//! backend pools, ejections, metrics, the drain signal) and its copy of each port
//! ([`ShardPort`]: TLS configs, routing cursors, metrics handles).
//!
//! This module is the leaf the connection code stands on: `conn`, `http`, `h2`, `h2c`,
//! `websocket`, `route` and `forward` import it, and it imports none of them. The shard's
//! threads, listeners and accept loops (`shard`) sit above the connection code, which they
//! start; the state both share lives here so that the connection code never points back up
//! at them.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::sync::Arc;

use portcullis_core::compile::{CompiledPort, ShardServerConfigs};
use portcullis_core::desired::BackendTarget;
use portcullis_core::routing::WrrState;
use rustls::ServerConfig;
use rustls::server::ClientHello;

use crate::backend::{BackendPool, Ejections};
use crate::drain::DrainSignal;
use crate::h2c_pool::H2cPool;
use crate::limits::Limits;
use crate::logging::RateLimiter;
use crate::metrics::{ListenerMetrics, PortMetrics, RouteMetrics, ShardMetrics};

/// Everything a shard's connections share: per-core state only.
#[derive(Debug)]
pub struct ShardContext {
    pub index: usize,
    pub limits: Limits,
    pub backends: BackendPool,
    /// Multiplexed connections to h2c backends (see `h2c_pool`).
    pub h2c_backends: H2cPool,
    /// Endpoints this shard skips for now (passive health checking, see `backend`).
    pub ejections: Ejections,
    pub open_connections: Cell<usize>,
    /// Accepted TLS connections whose handshake has not finished (see [`HandshakeInProgress`]).
    pub handshakes_in_progress: Cell<usize>,
    pub metrics: ShardMetrics,
    /// Fired when the shard starts draining.
    pub draining: DrainSignal,
    /// Rate limit of failed-handshake log lines.
    pub handshake_log: RateLimiter,
    /// Why ports could not be listened on, as logged, so that retries do not repeat the line.
    pub(crate) listen_failures_logged: RefCell<BTreeSet<String>>,
    /// Every copy of a port this shard built that may still be in use (the current ones, and
    /// older ones open connections hold), for [`ShardContext::forget_unused_metrics`].
    pub(crate) ports_built: RefCell<Vec<Weak<ShardPort>>>,
}

impl ShardContext {
    /// Drops the metrics of ports, listeners, routes and endpoints that neither the current
    /// config nor an open connection's older copy of a port refers to any more.
    pub(crate) fn forget_unused_metrics(&self) {
        let mut ports = self.ports_built.borrow_mut();
        ports.retain(|p| p.strong_count() > 0);
        let mut endpoints_in_use = HashSet::new();
        if self.metrics.has_endpoints() {
            for port in ports.iter().filter_map(Weak::upgrade) {
                endpoints_in_use.extend(port.endpoints());
            }
        }
        self.metrics.forget_unused(&endpoints_in_use);
    }
}

/// One port as this shard serves it: the compiled port plus shard-local TLS configs.
#[derive(Debug)]
pub struct ShardPort {
    pub compiled: Arc<CompiledPort>,
    /// `server_configs[i]` belongs to `compiled.listeners[i]` (`None` on HTTP ports).
    pub server_configs: Vec<Option<ShardServerConfigs>>,
    pub routing: PortRouting,
    pub generation: u64,
    pub metrics: Rc<PortMetrics>,
    /// `listener_metrics[i]` belongs to `compiled.listeners[i]`.
    pub listener_metrics: Vec<Rc<ListenerMetrics>>,
}

impl ShardPort {
    pub(crate) fn new(
        compiled: Arc<CompiledPort>,
        generation: u64,
        metrics: &ShardMetrics,
    ) -> Self {
        let server_configs = compiled
            .listeners
            .iter()
            .map(|l| l.tls.as_ref().map(|t| t.shard_local_server_configs()))
            .collect();
        let routing = PortRouting::new(&compiled, metrics);
        let listener_metrics = compiled
            .listeners
            .iter()
            .map(|l| metrics.listener(compiled.port, &l.name))
            .collect();
        ShardPort {
            metrics: metrics.port(compiled.port),
            listener_metrics,
            compiled,
            server_configs,
            routing,
            generation,
        }
    }

    /// Every backend endpoint this port's routes can send a request to.
    fn endpoints(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.compiled
            .listeners
            .iter()
            .flat_map(|l| l.routes.targets())
            .flat_map(|t| &t.backends)
            .flat_map(|b| match &b.target {
                BackendTarget::Endpoints(endpoints) => endpoints.as_slice(),
                BackendTarget::Invalid { .. } => &[],
            })
            .copied()
    }

    /// The listener (by SNI) and its shard-local config for a ClientHello.
    pub fn choose(&self, hello: &ClientHello<'_>) -> Option<(usize, Arc<ServerConfig>)> {
        let index = self.compiled.hosts.resolve(hello.server_name())?;
        let configs = self.server_configs.get(index)?.as_ref()?;
        Some((index, Arc::clone(configs.for_client(hello.cipher_suites()))))
    }
}

/// Per-shard routing state of one port: the weighted and round-robin cursors of every route
/// target of every listener. Built with the shard's copy of the port, never shared.
#[derive(Debug)]
pub struct PortRouting {
    /// `[listener][target]`
    targets: Vec<Vec<TargetState>>,
}

#[derive(Debug)]
pub(crate) struct TargetState {
    pub(crate) wrr: RefCell<WrrState>,
    /// Round-robin cursor over each backend's endpoints.
    pub(crate) endpoint_cursor: Vec<Cell<usize>>,
    pub(crate) metrics: Rc<RouteMetrics>,
}

impl PortRouting {
    pub fn new(port: &CompiledPort, metrics: &ShardMetrics) -> Self {
        let targets = port
            .listeners
            .iter()
            .map(|l| {
                l.routes
                    .targets()
                    .iter()
                    .map(|t| TargetState {
                        wrr: RefCell::new(WrrState::default()),
                        endpoint_cursor: t.backends.iter().map(|_| Cell::new(0)).collect(),
                        metrics: metrics.route(port.port, &t.route.to_string()),
                    })
                    .collect()
            })
            .collect();
        PortRouting { targets }
    }

    /// The state of the `target`th route target of listener `listener`.
    pub(crate) fn target(&self, listener: usize, target: usize) -> Option<&TargetState> {
        self.targets.get(listener)?.get(target)
    }
}

/// Counts a TLS connection in [`ShardContext::handshakes_in_progress`] from its accept until
/// its handshake ends (or the connection is dropped before that).
#[derive(Debug)]
pub struct HandshakeInProgress(Rc<ShardContext>);

impl HandshakeInProgress {
    pub(crate) fn new(ctx: &Rc<ShardContext>) -> Self {
        ctx.handshakes_in_progress
            .set(ctx.handshakes_in_progress.get() + 1);
        HandshakeInProgress(Rc::clone(ctx))
    }
}

impl Drop for HandshakeInProgress {
    fn drop(&mut self) {
        let count = &self.0.handshakes_in_progress;
        count.set(count.get().saturating_sub(1));
    }
}
