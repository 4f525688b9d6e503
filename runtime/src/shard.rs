//! Shards: one thread per core, each with its own monoio runtime, its own `SO_REUSEPORT`
//! listener per port and its own copy of the per-port config.
//!
//! A shard learns about configuration changes from a latest-value-wins channel (one message
//! per published snapshot) and swaps its per-port config between connections: a connection
//! keeps the `Rc<ShardPort>` it was accepted with until it ends. The state connections read
//! ([`ShardContext`], [`ShardPort`]) is [`crate::shard_state`]'s, below the connection code;
//! this module starts that code and is never imported by it.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use monoio::io::Canceller;
use monoio::net::{TcpListener, TcpStream};
use portcullis_core::compile::Snapshot;
use portcullis_core::desired::PortProtocol;
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use crate::backend::{BackendPool, Ejections, STALE_SWEEP_INTERVAL};
use crate::conn;
use crate::drain::DrainSignal;
use crate::h2c_pool::H2cPool;
use crate::limits::Limits;
use crate::logging::RateLimiter;
use crate::metrics::{MetricsSample, PortMetrics, ShardGauges, ShardMetrics};
use crate::shard_state::{HandshakeInProgress, ShardContext, ShardPort};
use crate::sockets::{ListenError, PortClaims, accept_waiting};

/// io_uring submission queue entries per shard: room for one in-flight operation per busy
/// connection in a burst without the queue filling.
const IO_URING_ENTRIES: u32 = 4096;

/// The accept loop takes the connections already waiting in the listener's queue, beyond the
/// one its accept operation returned, while fewer than this many handshakes are in progress
/// on the shard. A busy shard runs the accept loop once per turn of its run queue: taking one
/// connection per turn, a shard serving 1024 busy keep-alive connections admitted new clients
/// at the pace of its turns, 77–480 a second on the 2-CPU machine depending on how long the
/// turns ran, and a burst of them waited up to most of a second for their handshakes. Taking
/// every waiting one put up to 64 handshakes in progress under the compare's full-handshake
/// load; their steps then waited long enough for the clients' tail-loss probes to fire (about
/// 1000 spurious retransmissions per 8 s), the shard idled 4% and its handshake rate fell
/// 11–22%. At 16 neither shows (BENCHMARKS.md, "Many keep-alive clients on one shard").
const BATCH_ACCEPT_HANDSHAKE_LIMIT: usize = 16;

/// Pause after an accept error such as EMFILE before accepting again, so a full file table
/// does not spin a core.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(10);

/// While draining, how often a shard checks whether its last connection closed. Only runs
/// during shutdown.
const DRAIN_CHECK_INTERVAL: Duration = Duration::from_millis(10);

/// How often a shard tries again to listen on a port of its config it could not listen on (the
/// port was in use, say): the port is served soon after it frees up.
const LISTEN_RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// Failed-handshake log lines per second per shard (with a burst of twice that): a handshake
/// storm from a misconfigured client must not flood the log or cost the shard its CPU.
const HANDSHAKE_FAILURE_LOG_RATE: f64 = 10.0;

/// Which event-loop driver to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DriverChoice {
    /// io_uring when the kernel (and seccomp) allow it, else epoll.
    Auto,
    IoUring,
    Epoll,
}

/// The driver a shard actually runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    IoUring,
    Epoll,
}

impl Driver {
    pub fn as_str(self) -> &'static str {
        match self {
            Driver::IoUring => "io_uring",
            Driver::Epoll => "epoll",
        }
    }
}

/// What the control side can read about a shard: written by the shard only when its config
/// changes, never per connection.
#[derive(Debug, Default)]
pub struct ShardStatus {
    /// Generation of the last applied snapshot (0: none yet).
    pub applied_generation: AtomicU64,
    /// 0 until started, then 1 = io_uring, 2 = epoll.
    driver: AtomicU8,
    /// Ports of the applied config this shard does not listen on, and why.
    unserved_ports: Mutex<BTreeMap<u16, String>>,
}

impl ShardStatus {
    pub fn driver(&self) -> Option<Driver> {
        match self.driver.load(Ordering::Acquire) {
            1 => Some(Driver::IoUring),
            2 => Some(Driver::Epoll),
            _ => None,
        }
    }

    /// Ports of the applied config this shard does not listen on, and why.
    pub fn unserved_ports(&self) -> BTreeMap<u16, String> {
        self.unserved_ports
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_unserved_ports(&self, ports: BTreeMap<u16, String>) {
        *self
            .unserved_ports
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = ports;
    }

    fn set_driver(&self, d: Driver) {
        let v = match d {
            Driver::IoUring => 1,
            Driver::Epoll => 2,
        };
        self.driver.store(v, Ordering::Release);
    }
}

/// How shards are started.
#[derive(Debug, Clone)]
pub struct ShardOptions {
    pub driver: DriverChoice,
    /// `None`: all addresses (dual-stack `[::]`, or `0.0.0.0` without IPv6).
    pub bind_address: Option<IpAddr>,
    pub limits: Limits,
}

/// A request from the control side to one shard (never on the connection path).
#[derive(Debug)]
pub enum ShardCommand {
    /// Send a copy of the shard's metrics.
    SampleMetrics(std::sync::mpsc::Sender<MetricsSample>),
    /// Stop accepting, close idle connections, let in-flight requests finish, then stop by
    /// `deadline` whatever is still open.
    Drain { deadline: Instant },
}

/// What the control side (admin endpoint, signal handling) holds to talk to the shards.
#[derive(Debug, Clone)]
pub struct ShardHandles {
    pub status: Vec<Arc<ShardStatus>>,
    commands: Vec<mpsc::UnboundedSender<ShardCommand>>,
}

impl ShardHandles {
    /// Every shard's metrics, summed. A shard that does not answer within `timeout` (busy or
    /// stopped) is left out rather than blocking the scrape.
    pub fn sample_metrics(&self, timeout: Duration) -> MetricsSample {
        let (reply, replies) = std::sync::mpsc::channel();
        let asked = self
            .commands
            .iter()
            .filter(|c| c.send(ShardCommand::SampleMetrics(reply.clone())).is_ok())
            .count();
        drop(reply);
        let deadline = Instant::now() + timeout;
        let mut total = MetricsSample::default();
        for _ in 0..asked {
            match replies.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(sample) => total.add(&sample),
                Err(_) => break,
            }
        }
        total
    }

    /// Starts a graceful drain on every shard.
    pub fn drain(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for c in &self.commands {
            let _ = c.send(ShardCommand::Drain { deadline });
        }
    }

    /// The ports of the applied config some shard does not listen on, and why.
    pub fn unserved_ports(&self) -> BTreeMap<u16, String> {
        let mut all = BTreeMap::new();
        for shard in &self.status {
            all.extend(shard.unserved_ports());
        }
        all
    }

    /// Whether every shard applied a snapshot (generation >= 1).
    pub fn all_applied(&self) -> bool {
        self.status
            .iter()
            .all(|s| s.applied_generation.load(Ordering::Acquire) > 0)
    }
}

/// A running set of shards.
#[derive(Debug)]
pub struct Shards {
    pub status: Vec<Arc<ShardStatus>>,
    pub handles: ShardHandles,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Shards {
    /// Starts one shard per entry of `cores` (`None`: not pinned).
    pub fn start(
        cores: Vec<Option<core_affinity::CoreId>>,
        options: ShardOptions,
        snapshots: watch::Receiver<Arc<Snapshot>>,
    ) -> io::Result<Shards> {
        let mut status = Vec::new();
        let mut commands = Vec::new();
        let mut threads = Vec::new();
        let claims = Arc::new(PortClaims::default());
        for (index, core) in cores.into_iter().enumerate() {
            let shard_status = Arc::new(ShardStatus::default());
            status.push(Arc::clone(&shard_status));
            let (command_sender, command_receiver) = mpsc::unbounded_channel();
            commands.push(command_sender);
            let options = options.clone();
            let snapshots = snapshots.clone();
            let claims = Arc::clone(&claims);
            let thread = thread::Builder::new()
                .name(format!("shard-{index}"))
                .spawn(move || {
                    let shard = Shard {
                        index,
                        options,
                        snapshots,
                        commands: command_receiver,
                        status: shard_status,
                        claims,
                    };
                    run_shard(core, shard)
                })?;
            threads.push(thread);
        }
        Ok(Shards {
            handles: ShardHandles {
                status: status.clone(),
                commands,
            },
            status,
            threads,
        })
    }

    /// Waits for every shard to stop (after a drain, or when the snapshot sender is dropped).
    pub fn join(self) {
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// The CPUs in this process's affinity mask, so `taskset` and cgroup cpusets decide the shard
/// count. Falls back to unpinned shards when the mask cannot be read.
pub fn cores_from_affinity(override_count: Option<usize>) -> Vec<Option<core_affinity::CoreId>> {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    match (override_count, cores.is_empty()) {
        (Some(n), true) => vec![None; n.max(1)],
        (Some(n), false) => (0..n.max(1))
            .map(|i| cores.get(i % cores.len()).copied())
            .collect(),
        (None, true) => vec![None],
        (None, false) => cores.into_iter().map(Some).collect(),
    }
}

/// What one shard thread runs with.
struct Shard {
    index: usize,
    options: ShardOptions,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    commands: mpsc::UnboundedReceiver<ShardCommand>,
    status: Arc<ShardStatus>,
    claims: Arc<PortClaims>,
}

fn run_shard(core: Option<core_affinity::CoreId>, shard: Shard) {
    let index = shard.index;
    let options = shard.options.clone();
    let status = Arc::clone(&shard.status);
    if let Some(core) = core
        && !core_affinity::set_for_current(core)
    {
        warn!(
            shard = index,
            core = core.id,
            "could not pin shard to its core"
        );
    }
    let use_uring = match options.driver {
        DriverChoice::Epoll => false,
        DriverChoice::IoUring => true,
        DriverChoice::Auto => monoio::utils::detect_uring(),
    };
    if use_uring {
        let build = |setup: io_uring::Builder| {
            monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .with_entries(IO_URING_ENTRIES)
                .uring_builder(setup)
                .enable_timer()
                .build()
        };
        // Kernels before 6.1 refuse the deferred task-run flags: then a plain ring.
        let built = build(shard_ring_setup()).or_else(|e| {
            debug!(shard = index, error = %e, "deferred task-run refused; plain io_uring");
            build(io_uring::IoUring::builder())
        });
        match built {
            Ok(mut rt) => {
                status.set_driver(Driver::IoUring);
                info!(shard = index, driver = "io_uring", core = ?core.map(|c| c.id), "shard started");
                rt.block_on(shard_main(shard));
                return;
            }
            Err(e) if options.driver == DriverChoice::Auto => {
                warn!(shard = index, error = %e, "io_uring refused; falling back to epoll");
            }
            Err(e) => {
                error!(shard = index, error = %e, "io_uring refused and --driver io-uring was given");
                return;
            }
        }
    }
    match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
    {
        Ok(mut rt) => {
            status.set_driver(Driver::Epoll);
            info!(shard = index, driver = "epoll", core = ?core.map(|c| c.id), "shard started");
            rt.block_on(shard_main(shard));
        }
        Err(e) => error!(shard = index, error = %e, "cannot build the epoll runtime"),
    }
}

/// The shard's ring is submitted to only by its own thread, so completions can wait until the
/// shard asks for them (`DEFER_TASKRUN`): the kernel then finishes receives and accepts in
/// batches when the shard runs out of work, instead of interrupting it (an IPI and a task-work
/// run in the middle of a handshake's arithmetic) each time a peer's packet completes one.
/// Completions then arrive only when monoio parks, which it does whenever no task is ready:
/// no task of a shard may wake itself in a loop (none does).
fn shard_ring_setup() -> io_uring::Builder {
    let mut setup = io_uring::IoUring::builder();
    setup.setup_single_issuer().setup_defer_taskrun();
    setup
}

/// A port this shard listens on: its current config and the handle that stops its accept loop.
struct PortSlot {
    current: RefCell<Rc<ShardPort>>,
    stop: RefCell<Option<Canceller>>,
    /// The accept loop; it owns the listening socket.
    accepting: RefCell<Option<monoio::task::JoinHandle<()>>>,
}

async fn shard_main(shard: Shard) {
    let Shard {
        index,
        options,
        mut snapshots,
        mut commands,
        status,
        claims,
    } = shard;
    let ctx = Rc::new(ShardContext {
        index,
        limits: options.limits.clone(),
        backends: BackendPool::default(),
        h2c_backends: H2cPool::default(),
        ejections: Ejections::new(options.limits.backend_ejection_time),
        open_connections: Cell::new(0),
        handshakes_in_progress: Cell::new(0),
        metrics: ShardMetrics::default(),
        draining: DrainSignal::default(),
        handshake_log: RateLimiter::new(HANDSHAKE_FAILURE_LOG_RATE),
        listen_failures_logged: RefCell::default(),
        ports_built: RefCell::default(),
    });
    monoio::spawn(close_stale_backend_connections(Rc::clone(&ctx)));
    let mut ports: HashMap<u16, Rc<PortSlot>> = HashMap::new();
    let mut unserved = BTreeMap::new();
    let mut apply = Some(Apply::Snapshot);
    let drain_deadline = loop {
        if let Some(scope) = apply {
            let snapshot = Arc::clone(&snapshots.borrow_and_update());
            let listening = Listening {
                options: &options,
                claims: &claims,
            };
            let now_unserved = apply_snapshot(&ctx, listening, &mut ports, &snapshot, scope);
            if now_unserved != unserved {
                status.set_unserved_ports(now_unserved.clone());
                unserved = now_unserved;
            }
            status
                .applied_generation
                .store(snapshot.generation, Ordering::Release);
        }
        let retry_listening = async {
            if unserved.is_empty() {
                std::future::pending::<()>().await;
            }
            monoio::time::sleep(LISTEN_RETRY_INTERVAL).await;
        };
        monoio::select! {
            () = retry_listening => {
                apply = Some(Apply::UnservedPorts);
            }
            changed = snapshots.changed() => {
                if changed.is_err() {
                    break None; // the control side is gone: stop now
                }
                apply = Some(Apply::Snapshot);
            }
            command = commands.recv() => {
                apply = None;
                match command {
                    Some(ShardCommand::SampleMetrics(reply)) => {
                        ctx.forget_unused_metrics();
                        let _ = reply.send(ctx.metrics.sample(
                            ctx.index,
                            ShardGauges {
                                open: ctx.open_connections.get() as u64,
                                handshaking: ctx.handshakes_in_progress.get() as u64,
                                idle_backend: ctx.backends.idle_count() as u64,
                            },
                            &ctx.ejections.ejected_now(),
                        ));
                    }
                    Some(ShardCommand::Drain { deadline }) => break Some(deadline),
                    None => break None,
                }
            }
        }
    };
    // Draining first, so that no response written from here on promises a keep-alive.
    ctx.draining.fire();
    // Then close every listening socket: with io_uring, a socket whose accept is still in
    // flight stays open (and keeps taking connections) until that accept is cancelled, and a
    // runtime dropped with the close still queued would leak it.
    let slots: Vec<Rc<PortSlot>> = ports.drain().map(|(_, slot)| slot).collect();
    for slot in &slots {
        stop_accepting(slot);
    }
    for slot in &slots {
        let accepting = slot.accepting.borrow_mut().take();
        if let Some(accepting) = accepting {
            accepting.await;
        }
    }
    // Let the driver submit the queued closes.
    monoio::time::sleep(Duration::ZERO).await;
    if let Some(deadline) = drain_deadline {
        while ctx.open_connections.get() > 0 && Instant::now() < deadline {
            monoio::time::sleep(DRAIN_CHECK_INTERVAL).await;
        }
        if ctx.open_connections.get() > 0 {
            warn!(
                shard = index,
                open = ctx.open_connections.get(),
                "drain timeout: closing the remaining connections"
            );
        }
    }
    debug!(shard = index, "shard stopped");
}

/// Closes the shard's idle backend connections once they are too old to reuse, and forgets
/// ended ejections, for as long as the shard runs.
async fn close_stale_backend_connections(ctx: Rc<ShardContext>) {
    loop {
        monoio::time::sleep(STALE_SWEEP_INTERVAL).await;
        ctx.backends.close_stale();
        ctx.h2c_backends.close_stale(&ctx.metrics);
        ctx.ejections.forget_ended();
    }
}

/// What a shard needs to open listeners.
#[derive(Clone, Copy)]
struct Listening<'a> {
    options: &'a ShardOptions,
    claims: &'a Arc<PortClaims>,
}

/// What an apply does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Apply {
    /// A new snapshot: swap every port's config, open new ports, close removed ones.
    Snapshot,
    /// The same snapshot: only try again the ports not listened on yet.
    UnservedPorts,
}

/// Swaps in the snapshot's ports, opens listeners for new ones and closes removed ones (or,
/// for [`Apply::UnservedPorts`], only opens the missing ones); returns the ports it could not
/// listen on, and why.
fn apply_snapshot(
    ctx: &Rc<ShardContext>,
    listening: Listening<'_>,
    ports: &mut HashMap<u16, Rc<PortSlot>>,
    snapshot: &Snapshot,
    scope: Apply,
) -> BTreeMap<u16, String> {
    let mut unserved = BTreeMap::new();
    for compiled in &snapshot.ports {
        let slot = ports.get(&compiled.port).cloned();
        if slot.is_some() && scope == Apply::UnservedPorts {
            continue;
        }
        let port = Rc::new(ShardPort::new(
            Arc::clone(compiled),
            snapshot.generation,
            &ctx.metrics,
        ));
        ctx.ports_built.borrow_mut().push(Rc::downgrade(&port));
        if let Some(slot) = slot {
            *slot.current.borrow_mut() = port;
            continue;
        }
        match open_port(ctx, listening, compiled.port, port) {
            Ok(slot) => {
                ports.insert(compiled.port, slot);
                if ctx.index == 0 {
                    info!(port = compiled.port, "listening");
                }
            }
            Err(e) => {
                // Logged once per shard and cause, not on every retry.
                if !ctx.listen_failures_logged.borrow().contains(&e.to_string()) {
                    error!(
                        shard = ctx.index,
                        port = compiled.port,
                        error = %e,
                        "cannot listen on port; not ready until it is served, other ports are unaffected"
                    );
                }
                ctx.listen_failures_logged
                    .borrow_mut()
                    .insert(e.to_string());
                unserved.insert(compiled.port, e.to_string());
            }
        }
    }
    ports.retain(|port, slot| {
        let keep = snapshot.port(*port).is_some();
        if !keep {
            stop_accepting(slot);
            if ctx.index == 0 {
                info!(
                    port,
                    "port removed: stopped accepting, draining its connections"
                );
            }
        }
        keep
    });
    ctx.listen_failures_logged
        .borrow_mut()
        .retain(|logged| unserved.values().any(|why| why == logged));
    // The copies of ports replaced above are gone unless a connection holds them.
    ctx.forget_unused_metrics();
    unserved
}

/// Listens on `port` and starts its accept loop.
fn open_port(
    ctx: &Rc<ShardContext>,
    listening: Listening<'_>,
    port: u16,
    config: Rc<ShardPort>,
) -> Result<Rc<PortSlot>, ListenError> {
    let std_listener = listening
        .claims
        .listen(port, listening.options.bind_address)?;
    let listener = match TcpListener::from_std(std_listener) {
        Ok(listener) => listener,
        Err(source) => {
            listening.claims.release(port);
            return Err(ListenError::Bind { port, source });
        }
    };
    let canceller = Canceller::new();
    let slot = Rc::new(PortSlot {
        current: RefCell::new(config),
        stop: RefCell::new(None),
        accepting: RefCell::new(None),
    });
    let claims = Arc::clone(listening.claims);
    let accept = accept_loop(
        listener,
        canceller.handle(),
        Rc::clone(&slot),
        Rc::clone(ctx),
    );
    let accepting = monoio::spawn(async move {
        accept.await;
        // The listener was closed with the loop.
        claims.release(port);
    });
    *slot.stop.borrow_mut() = Some(canceller);
    *slot.accepting.borrow_mut() = Some(accepting);
    Ok(slot)
}

fn stop_accepting(slot: &PortSlot) {
    if let Some(canceller) = slot.stop.borrow_mut().take() {
        drop(canceller.cancel());
    }
}

async fn accept_loop(
    listener: TcpListener,
    stop: monoio::io::CancelHandle,
    slot: Rc<PortSlot>,
    ctx: Rc<ShardContext>,
) {
    loop {
        match listener.cancelable_accept(stop.clone()).await {
            Ok((tcp, peer)) => {
                if !admit(tcp, peer, &slot, &ctx) {
                    break;
                }
                // Then what else waits in the queue, without a turn for each, while the shard
                // has few handshakes in progress.
                while ctx.handshakes_in_progress.get() < BATCH_ACCEPT_HANDSHAKE_LIMIT {
                    match accept_waiting(&listener) {
                        Ok(Some((tcp, peer))) => {
                            if !admit(tcp, peer, &slot, &ctx) {
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            warn!(shard = ctx.index, error = %e, "accept failed");
                            break;
                        }
                    }
                }
            }
            Err(_) if slot.stop.borrow().is_none() => break,
            Err(e) => {
                warn!(shard = ctx.index, error = %e, "accept failed");
                monoio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
            }
        }
    }
}

/// Starts serving an accepted connection, or closes it at the connection limit; `false` when
/// the port was removed meanwhile (the accept loop ends).
fn admit(tcp: TcpStream, peer: SocketAddr, slot: &Rc<PortSlot>, ctx: &Rc<ShardContext>) -> bool {
    // Dual-stack sockets report IPv4 clients as ::ffff:a.b.c.d.
    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
    if slot.stop.borrow().is_none() {
        return false;
    }
    if ctx.open_connections.get() >= ctx.limits.max_connections_per_shard {
        debug!(
            shard = ctx.index,
            "connection limit reached; closing new connection"
        );
        return true;
    }
    let port = Rc::clone(&slot.current.borrow());
    let handshake = match port.compiled.protocol {
        PortProtocol::Https => Some(HandshakeInProgress::new(ctx)),
        PortProtocol::Http => None,
    };
    monoio::spawn(serve(tcp, peer, port, Rc::clone(ctx), handshake));
    true
}

async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    port: Rc<ShardPort>,
    ctx: Rc<ShardContext>,
    handshake: Option<HandshakeInProgress>,
) {
    let _guard = ConnectionGuard::new(&ctx, &port.metrics);
    // `handshake` is there exactly for HTTPS ports (see `admit`).
    match handshake {
        Some(in_progress) => conn::serve_tls(tcp, peer, &port, &ctx, in_progress).await,
        None => conn::serve_plain(tcp, peer, &port, &ctx).await,
    }
}

/// Counts a shard's accepted and open connections and a port's open ones (`Cell`s: per core,
/// never shared).
struct ConnectionGuard<'a> {
    ctx: &'a ShardContext,
    port: &'a PortMetrics,
}

impl<'a> ConnectionGuard<'a> {
    fn new(ctx: &'a ShardContext, port: &'a PortMetrics) -> Self {
        ctx.metrics.connection_accepted();
        ctx.open_connections.set(ctx.open_connections.get() + 1);
        port.active_connections
            .set(port.active_connections.get() + 1);
        Self { ctx, port }
    }
}

impl Drop for ConnectionGuard<'_> {
    fn drop(&mut self) {
        self.ctx
            .open_connections
            .set(self.ctx.open_connections.get().saturating_sub(1));
        self.port
            .active_connections
            .set(self.port.active_connections.get() - 1);
    }
}
