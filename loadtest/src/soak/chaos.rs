//! What changes under the load: the rotations of the manifests, and the echo backend that is
//! killed and restarted.

use std::fs;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::load::Shared;
use super::processes::{Process, start_echo};
use super::report::Chaos;
use super::setup::{Manifests, SoakPki};

/// How long a restarted echo backend has to listen again.
const BACKEND_RESTART_PATIENCE: Duration = Duration::from_secs(10);

/// Where the soak picks its ports when the ephemeral range cannot be read: Linux's default.
const DEFAULT_EPHEMERAL_PORTS: (u16, u16) = (32768, 60999);
/// The lowest port the soak picks.
const LOWEST_PORT: u16 = 10000;

/// `N` free ports on 127.0.0.1 outside the kernel's ephemeral range (each held until all are
/// found, so they differ). A backend's port is free while it is down: were it in the range, an
/// outgoing connection of the load could take it as its source port, and the backend could
/// not listen there again.
pub fn free_ports_outside_ephemeral_range<const N: usize>() -> io::Result<[u16; N]> {
    let (low, high) = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| {
            let mut ports = range.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((ports.next()??, ports.next()??))
        })
        .unwrap_or(DEFAULT_EPHEMERAL_PORTS);
    let candidates: Vec<u16> = (LOWEST_PORT..=u16::MAX)
        .filter(|p| *p < low || *p > high)
        .collect();
    // Start somewhere that depends on the process, so two soaks on one machine do not race
    // for the same ports.
    let start = std::process::id() as usize * 7919 % candidates.len().max(1);
    let held: Vec<TcpListener> = candidates
        .iter()
        .cycle()
        .skip(start)
        .take(candidates.len())
        .filter_map(|port| TcpListener::bind(("127.0.0.1", *port)).ok())
        .take(N)
        .collect();
    let ports: Vec<u16> = held
        .iter()
        .filter_map(|l| l.local_addr().ok().map(|a| a.port()))
        .collect();
    ports
        .try_into()
        .map_err(|_| io::Error::other("not enough free ports outside the ephemeral range"))
}

/// The counters behind [`Chaos`], and when the last change of each sort happened.
#[derive(Debug)]
pub struct ChaosCounters {
    server_cert_rotations: AtomicU64,
    ca_bundle_rotations: AtomicU64,
    route_rotations: AtomicU64,
    backend_kills: AtomicU64,
    backend_restarts: AtomicU64,
    /// Milliseconds since the load started; [`NEVER`] before the first.
    last_backend_kill_ms: AtomicU64,
    last_rotation_ms: AtomicU64,
}

/// "Not yet", in the `last_*_ms` fields.
const NEVER: u64 = u64::MAX;

impl Default for ChaosCounters {
    fn default() -> Self {
        ChaosCounters {
            server_cert_rotations: AtomicU64::new(0),
            ca_bundle_rotations: AtomicU64::new(0),
            route_rotations: AtomicU64::new(0),
            backend_kills: AtomicU64::new(0),
            backend_restarts: AtomicU64::new(0),
            last_backend_kill_ms: AtomicU64::new(NEVER),
            last_rotation_ms: AtomicU64::new(NEVER),
        }
    }
}

impl ChaosCounters {
    /// A backend is being killed, `at_ms` after the load started.
    pub fn backend_killed(&self, at_ms: u64) {
        self.last_backend_kill_ms.store(at_ms, Ordering::Relaxed);
        self.backend_kills.fetch_add(1, Ordering::Relaxed);
    }

    /// Seconds from the last backend kill and the last rotation to `now_ms`.
    pub fn since_last(&self, now_ms: u64) -> (Option<f64>, Option<f64>) {
        let since = |last: &AtomicU64| match last.load(Ordering::Relaxed) {
            NEVER => None,
            at => Some(now_ms.saturating_sub(at) as f64 / 1000.0),
        };
        (
            since(&self.last_backend_kill_ms),
            since(&self.last_rotation_ms),
        )
    }

    pub fn snapshot(&self) -> Chaos {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Chaos {
            server_cert_rotations: read(&self.server_cert_rotations),
            ca_bundle_rotations: read(&self.ca_bundle_rotations),
            route_rotations: read(&self.route_rotations),
            backend_kills: read(&self.backend_kills),
            backend_restarts: read(&self.backend_restarts),
        }
    }
}

/// Every `every`, switches the server certificate, the CA bundle (client CA alone, or with
/// the extra CA) and the routes (extra rule and route, or not), until the run stops.
pub fn rotate(
    manifests: &Manifests,
    pki: &SoakPki,
    every: Duration,
    shared: &Shared,
    step: &AtomicU64,
) -> io::Result<()> {
    let counters = &shared.chaos;
    loop {
        shared.pause_for(every);
        if shared.is_stopped() {
            return Ok(());
        }
        let n = step.fetch_add(1, Ordering::Relaxed) + 1;
        counters
            .last_rotation_ms
            .store(shared.elapsed_ms(), Ordering::Relaxed);
        manifests.set_server_cert(pki, n as usize)?;
        counters
            .server_cert_rotations
            .fetch_add(1, Ordering::Relaxed);
        manifests.set_ca_bundle(pki, n % 2 == 1)?;
        counters.ca_bundle_rotations.fetch_add(1, Ordering::Relaxed);
        manifests.set_extra_routes(n % 2 == 1)?;
        counters.route_rotations.fetch_add(1, Ordering::Relaxed);
    }
}

/// The echo backends: the endpoints of the one Service.
#[derive(Debug)]
pub struct Backends {
    binary: PathBuf,
    log_dir: PathBuf,
    pub addrs: Vec<SocketAddr>,
    processes: Vec<Process>,
    /// The backend killed next.
    next: usize,
}

impl Backends {
    pub fn start(binary: &Path, log_dir: &Path, addrs: &[SocketAddr]) -> io::Result<Backends> {
        let mut backends = Backends {
            binary: binary.to_owned(),
            log_dir: log_dir.to_owned(),
            addrs: addrs.to_vec(),
            processes: Vec::new(),
            next: 0,
        };
        for (i, addr) in addrs.iter().enumerate() {
            backends.processes.push(backends.spawn(i, *addr)?);
        }
        Ok(backends)
    }

    fn spawn(&self, index: usize, addr: SocketAddr) -> io::Result<Process> {
        start_echo(
            &self.binary,
            addr,
            &self.log_dir.join(format!("echo-{index}.log")),
            BACKEND_RESTART_PATIENCE,
        )
    }

    /// Every `every`, kills one backend (SIGKILL: its connections die with it, as a crashed
    /// pod's do) and restarts it on the same address `down_for` later; the next kill takes
    /// the other one, so at most one is ever down. Returns with every backend running.
    pub fn kill_and_restart(
        &mut self,
        every: Duration,
        down_for: Duration,
        shared: &Shared,
    ) -> io::Result<()> {
        let counters = &shared.chaos;
        loop {
            shared.pause_for(every.saturating_sub(down_for));
            if shared.is_stopped() {
                return Ok(());
            }
            let index = self.next;
            self.next = (self.next + 1) % self.processes.len();
            if let Some(process) = self.processes.get_mut(index) {
                counters.backend_killed(shared.elapsed_ms());
                process.kill()?;
            }
            // Restarted even when the run stops meanwhile: the samples after it need both.
            shared.pause_for(down_for);
            if let Some(addr) = self.addrs.get(index).copied() {
                let process = self.spawn(index, addr)?;
                if let Some(slot) = self.processes.get_mut(index) {
                    *slot = process;
                }
                counters.backend_restarts.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
