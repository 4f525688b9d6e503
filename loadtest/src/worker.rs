//! One worker thread: its own monoio runtime (io_uring, or epoll when refused), pinned to one
//! CPU of the affinity mask, running its share of the connections. Threads share nothing but
//! the read-only plan and their own progress counters.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use rustls::pki_types::ServerName;

use crate::http;
use crate::stats::{Failure, Progress, Stats};
use crate::tls::TlsClient;
use portcullis_loadtest::client_config;

/// io_uring submission queue entries per thread: room for one operation per connection of a
/// large run (hold mode opens thousands) without the queue filling.
const IO_URING_ENTRIES: u32 = 4096;

/// Pause after a failed connect before the next try, so a server that is down does not turn
/// the load generator into a busy loop of refused connects.
const CONNECT_ERROR_BACKOFF: Duration = Duration::from_millis(10);

/// Initial capacity of a connection's plaintext buffer: a typical response head and a small
/// body fit, larger ones grow it once.
const PLAINTEXT_BUFFER_BYTES: usize = 4 * 1024;

/// How long hold mode sleeps at a time while it keeps connections open.
const HOLD_TICK: Duration = Duration::from_secs(3600);

/// What the run does with each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// `-c` connections, each issuing requests back to back.
    Keepalive,
    /// A new TLS connection per request (the response closes it).
    Handshake,
    /// Requests at a fixed total `--rate` over `-c` keep-alive connections; latency counts from
    /// the intended send time.
    OpenLoop,
    /// Open `--idle N` connections, one request on each, then keep them open and idle.
    Hold,
}

/// Which event-loop driver the threads run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DriverChoice {
    /// io_uring, falling back to epoll when the kernel refuses it.
    Auto,
    IoUring,
    Epoll,
}

/// The read-only plan every thread follows.
#[derive(Debug)]
pub struct Plan {
    pub mode: Mode,
    pub addr: SocketAddr,
    pub server_name: ServerName<'static>,
    pub request: Vec<u8>,
    pub timeout: Duration,
    /// When the run (warm-up included) started: the open-loop schedule starts here.
    pub start: Instant,
    /// Results that complete before this are not recorded.
    pub measure_from: Instant,
    /// No request starts at or after this (duration runs).
    pub end: Option<Instant>,
    /// Open loop: total requests per second over all connections.
    pub rate: f64,
    pub total_connections: usize,
    /// Hold mode: how long to keep the connections (`None`: until killed).
    pub hold_for: Option<Duration>,
    pub driver: DriverChoice,
    /// Resume sessions with the server's tickets.
    pub resumption: bool,
}

/// One thread's share.
#[derive(Debug)]
pub struct ThreadPlan {
    pub core: Option<core_affinity::CoreId>,
    pub connections: usize,
    /// Global index of this thread's first connection (spreads open-loop send times).
    pub first_connection: usize,
    /// Requests to record (count runs), or connections to hold (hold mode).
    pub budget: Option<u64>,
    /// The shared client config; each connection task makes its own copy with its own session
    /// store.
    pub config: Arc<ClientConfig>,
    pub progress: Arc<Progress>,
}

/// Runs one thread's share to completion and returns what it measured.
pub fn run(plan: Arc<Plan>, thread: ThreadPlan) -> Result<Stats, String> {
    if let Some(core) = thread.core {
        // Best effort: an unpinned thread still works, it only measures less reproducibly.
        let _ = core_affinity::set_for_current(core);
    }
    let driver = plan.driver;
    let stats = block_on(driver, move || thread_main(plan, thread))??;
    Ok(stats)
}

fn block_on<F, Fut, T>(driver: DriverChoice, make: F) -> Result<T, String>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = T>,
{
    let uring = match driver {
        DriverChoice::Auto => monoio::utils::detect_uring(),
        DriverChoice::IoUring => true,
        DriverChoice::Epoll => false,
    };
    if uring {
        match monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .with_entries(IO_URING_ENTRIES)
            .enable_timer()
            .build()
        {
            Ok(mut rt) => return Ok(rt.block_on(make())),
            Err(e) if driver == DriverChoice::IoUring => return Err(format!("io_uring: {e}")),
            Err(_) => {} // refused (old kernel, seccomp): epoll below
        }
    }
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .map_err(|e| format!("epoll runtime: {e}"))?;
    Ok(rt.block_on(make()))
}

/// A successful request.
#[derive(Debug, Clone, Copy)]
struct Done {
    status: u16,
    /// The request opened its connection: whether that handshake resumed a session.
    handshake: Option<bool>,
}

/// Per-thread state shared by the thread's connection tasks (single-threaded: `Rc`/`Cell`).
struct Worker {
    plan: Arc<Plan>,
    config: Arc<ClientConfig>,
    progress: Arc<Progress>,
    stats: RefCell<Stats>,
    /// Results still to record (count runs).
    budget: Cell<Option<u64>>,
    /// Hold mode: connections still to open.
    to_open: Cell<u64>,
    held: RefCell<Vec<TlsClient>>,
}

impl Worker {
    /// Whether a connection should start another request now.
    fn more(&self) -> bool {
        if self.budget.get() == Some(0) {
            return false;
        }
        self.plan.end.is_none_or(|end| Instant::now() < end)
    }

    /// Whether a result that completes now is recorded, consuming the budget if so.
    fn take_slot(&self) -> bool {
        let now = Instant::now();
        if now < self.plan.measure_from || self.plan.end.is_some_and(|end| now > end) {
            return false;
        }
        match self.budget.get() {
            Some(0) => false,
            Some(n) => {
                self.budget.set(Some(n - 1));
                true
            }
            None => true,
        }
    }

    /// Records a success; `handshake`: the request ran on a connection it opened, which
    /// resumed a session (`Some(true)`) or not.
    fn ok(&self, done: Done, latency: Duration) {
        Progress::bump(&self.progress.ok);
        if let Some(resumed) = done.handshake {
            Progress::bump(if resumed {
                &self.progress.resumed
            } else {
                &self.progress.full
            });
        }
        if self.take_slot() {
            let mut stats = self.stats.borrow_mut();
            stats.record_ok(done.status, latency);
            if let Some(resumed) = done.handshake {
                stats.record_handshake(resumed);
            }
        }
    }

    fn failed(&self, failure: &Failure) {
        Progress::bump(&self.progress.errors);
        if self.take_slot() {
            self.stats.borrow_mut().record_failure(failure);
        }
    }

    /// The client config of one connection task. With resumption, its own session store:
    /// rustls keeps a few TLS 1.3 tickets per server name in a store, so a store shared by
    /// many concurrent connections runs dry and they fall back to full handshakes; one store
    /// per task always holds the ticket of its previous connection.
    fn task_config(&self) -> Arc<ClientConfig> {
        client_config::with_resumption(&self.config, self.plan.resumption)
    }

    /// One request on `conn` (connecting first when there is none), with the timeout.
    /// `conn` is left `None` when the connection cannot be reused.
    async fn request_on(
        &self,
        config: &Arc<ClientConfig>,
        conn: &mut Option<TlsClient>,
        buf: &mut Vec<u8>,
    ) -> Result<Done, Failure> {
        let mut fresh = false;
        let attempt = async {
            if conn.is_none() {
                buf.clear();
                *conn =
                    Some(TlsClient::connect(self.plan.addr, config, &self.plan.server_name).await?);
                fresh = true;
            }
            match conn.as_mut() {
                Some(c) => http::exchange(c, &self.plan.request, buf).await,
                None => Err(Failure::Closed),
            }
        };
        let result = match monoio::time::timeout(self.plan.timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(Failure::Timeout),
        };
        match result {
            Ok(response) => {
                // A handshake counts once the server accepted it: in TLS 1.3 its verdict on
                // our certificate arrives with the first response.
                let handshake = if fresh {
                    conn.as_ref().map(TlsClient::resumed)
                } else {
                    None
                };
                if !response.reusable {
                    *conn = None;
                }
                if response.status >= 400 {
                    Err(Failure::Http(response.status))
                } else {
                    Ok(Done {
                        status: response.status,
                        handshake,
                    })
                }
            }
            Err(failure) => {
                *conn = None;
                Err(failure)
            }
        }
    }
}

async fn thread_main(plan: Arc<Plan>, thread: ThreadPlan) -> Result<Stats, String> {
    let stats = Stats::new().map_err(|e| format!("histogram: {e}"))?;
    let worker = Rc::new(Worker {
        plan: Arc::clone(&plan),
        config: thread.config,
        progress: Arc::clone(&thread.progress),
        stats: RefCell::new(stats),
        // Hold mode's budget counts connections to open, not results.
        budget: Cell::new(thread.budget.filter(|_| plan.mode != Mode::Hold)),
        to_open: Cell::new(
            thread
                .budget
                .filter(|_| plan.mode == Mode::Hold)
                .unwrap_or(0),
        ),
        held: RefCell::new(Vec::new()),
    });
    let mut tasks = Vec::with_capacity(thread.connections);
    for i in 0..thread.connections {
        let worker = Rc::clone(&worker);
        let index = thread.first_connection + i;
        tasks.push(monoio::spawn(async move {
            match worker.plan.mode {
                Mode::Keepalive => keepalive(&worker).await,
                Mode::Handshake => handshake(&worker).await,
                Mode::OpenLoop => open_loop(&worker, index).await,
                Mode::Hold => hold(&worker).await,
            }
        }));
    }
    for task in tasks {
        task.await;
    }
    if plan.mode == Mode::Hold {
        let held = worker.held.borrow().len() as u64;
        worker.stats.borrow_mut().held = held;
    }
    Progress::bump(&thread.progress.done);
    if plan.mode == Mode::Hold {
        // The connections stay open (and idle) for as long as asked, or until killed.
        match plan.hold_for {
            Some(d) => monoio::time::sleep(d).await,
            None => loop {
                monoio::time::sleep(HOLD_TICK).await;
            },
        }
        let held = std::mem::take(&mut *worker.held.borrow_mut());
        drop(held);
    }
    let stats = std::mem::replace(
        &mut *worker.stats.borrow_mut(),
        Stats::new().map_err(|e| format!("histogram: {e}"))?,
    );
    Ok(stats)
}

async fn backoff_after(failure: &Failure) {
    if matches!(failure, Failure::Connect(_)) {
        monoio::time::sleep(CONNECT_ERROR_BACKOFF).await;
    }
}

async fn keepalive(worker: &Worker) {
    let config = worker.task_config();
    let mut conn = None;
    let mut buf = Vec::with_capacity(PLAINTEXT_BUFFER_BYTES);
    while worker.more() {
        let started = Instant::now();
        match worker.request_on(&config, &mut conn, &mut buf).await {
            Ok(done) => worker.ok(done, started.elapsed()),
            Err(failure) => {
                worker.failed(&failure);
                backoff_after(&failure).await;
            }
        }
    }
}

async fn handshake(worker: &Worker) {
    let config = worker.task_config();
    let mut buf = Vec::with_capacity(PLAINTEXT_BUFFER_BYTES);
    while worker.more() {
        let started = Instant::now();
        let mut conn = None;
        match worker.request_on(&config, &mut conn, &mut buf).await {
            Ok(done) => worker.ok(done, started.elapsed()),
            Err(failure) => {
                worker.failed(&failure);
                backoff_after(&failure).await;
            }
        }
        if let Some(c) = conn {
            c.close().await;
        }
    }
}

/// Connection `index` of `total` sends its k-th request at `start + (index / total + k) *
/// interval`, where `interval = total / rate`: the sends of all connections interleave evenly.
/// A request that cannot start on time (the previous one is still out) starts late, and its
/// latency still counts from the intended time, so queueing shows in the percentiles.
async fn open_loop(worker: &Worker, index: usize) {
    let plan = &worker.plan;
    if plan.rate <= 0.0 || plan.total_connections == 0 {
        return;
    }
    let interval = plan.total_connections as f64 / plan.rate;
    let offset = interval * index as f64 / plan.total_connections as f64;
    let config = worker.task_config();
    let mut conn = None;
    let mut buf = Vec::with_capacity(PLAINTEXT_BUFFER_BYTES);
    let mut k: u64 = 0;
    while worker.more() {
        let intended = plan.start + Duration::from_secs_f64(offset + interval * k as f64);
        k += 1;
        if plan.end.is_some_and(|end| intended >= end) {
            break;
        }
        let now = Instant::now();
        if intended > now {
            monoio::time::sleep(intended - now).await;
        }
        match worker.request_on(&config, &mut conn, &mut buf).await {
            Ok(done) => worker.ok(done, intended.elapsed()),
            Err(failure) => {
                worker.failed(&failure);
                backoff_after(&failure).await;
            }
        }
    }
}

async fn hold(worker: &Worker) {
    let config = worker.task_config();
    let mut buf = Vec::with_capacity(PLAINTEXT_BUFFER_BYTES);
    loop {
        match worker.to_open.get() {
            0 => break,
            n => worker.to_open.set(n - 1),
        }
        let started = Instant::now();
        let mut conn = None;
        match worker.request_on(&config, &mut conn, &mut buf).await {
            Ok(done) => {
                worker.ok(done, started.elapsed());
                if let Some(mut c) = conn {
                    c.release_buffers();
                    worker.held.borrow_mut().push(c);
                    Progress::bump(&worker.progress.held);
                }
            }
            Err(failure) => {
                worker.failed(&failure);
                backoff_after(&failure).await;
            }
        }
    }
}
