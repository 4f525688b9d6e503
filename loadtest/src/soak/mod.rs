//! The soak (`portcullis-soak`, run by `scripts/soak`): the real `portcullis serve` under a
//! mixed load for a long time while its configuration and its backends change, and a report
//! of what was lost. The answer must be: nothing.
//!
//! Decisions:
//! - **Real processes.** The gateway and the two echo backends are child processes started
//!   from the built binaries, configured through a watched folder of manifests, exactly as a
//!   user runs them; the soak reads the gateway from outside only (`/proc`, `/metrics`).
//! - **Blocking clients on threads.** A soak looks for losses and leaks, not throughput; one
//!   thread per client makes each kind's behaviour (a byte every 250 ms, a reset after half a
//!   body) plain code. The kinds, and what each expects, are in [`report::Kind`].
//! - **Every attempt counts, none is retried.** A failed well-formed request stays failed; the
//!   run fails on one.
//! - **Chaos all the time.** From the first request to the last, the server certificate, the
//!   CA bundle and the routes rotate every few seconds and an echo backend is killed
//!   (SIGKILL) and restarted. Every state keeps the well-formed clients valid (their CA stays
//!   in the bundle, their path stays routed, one backend is always up), so every failure of
//!   theirs is the gateway's.
//! - **Samples at rest.** Memory and file descriptors are sampled twice, after a warm-up that
//!   ran the whole mix and after the load, each time once the gateway holds no client
//!   connection and no idle backend connection (bounded wait): what remains is what the
//!   gateway keeps for good, so the descriptors must match exactly and memory may grow only
//!   within [`report::RSS_GROWTH_ALLOWANCE_BYTES`] and a percentage.

pub mod chaos;
pub mod client;
pub mod load;
pub mod processes;
pub mod report;
pub mod setup;

use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use portcullis_runtime::demo::GUIDE_GATEWAY_CLASS;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::client_config::{self, KeyExchange, TlsFiles, TlsVersions};
use chaos::{Backends, free_ports_outside_ephemeral_range};
use client::{TlsConn, get_request, read_response};
use load::{ClientConfigs, Mix, Shared, Target};
use processes::{GatewayCommand, Process, read_gauges, wait_until_settled};
use report::{GatewayFacts, Load, ProcessSample, Report};
use setup::{ClientFiles, Manifests, SERVER_NAME, SoakPki};

/// The gateway's `--max-request-head-bytes` in the soak; the oversized heads exceed it.
pub const MAX_REQUEST_HEAD_BYTES: usize = 16 * 1024;

/// How long the gateway and the backends have to start, and the first request to pass.
const STARTUP_PATIENCE: Duration = Duration::from_secs(30);

/// How long the gateway has to close every connection after the clients stopped: its idle
/// backend connections close within two of the pool's 4-second sweeps.
const SETTLE_PATIENCE: Duration = Duration::from_secs(30);

/// File-descriptor samples per measurement, a fifth of a second apart; the smallest counts.
/// The gateway opens its manifest folder four times a second, and the admin connection of
/// the scrape before may still be closing: a descriptor that leaked is in every sample.
const FD_SAMPLES: usize = 5;
const FD_SAMPLE_GAP: Duration = Duration::from_millis(200);

/// Exit status when a second SIGINT or SIGTERM ends the soak at once (the first one stops it
/// and its child processes).
const EXIT_INTERRUPTED: i32 = 130;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `portcullis` binary.
    pub portcullis: PathBuf,
    /// Load after the warm-up.
    pub duration: Duration,
    pub warmup: Duration,
    pub rotate_every: Duration,
    pub backend_kill_every: Duration,
    pub backend_down_for: Duration,
    /// The gateway's `--request-head-timeout`: the slowloris clients cycle at this pace.
    pub request_head_timeout: Duration,
    /// Connect, handshake and response timeout of every client attempt.
    pub client_timeout: Duration,
    pub mix: Mix,
    pub progress_every: Duration,
    /// The work folder (certificates, manifests, logs); a temporary one when `None`.
    pub work_dir: Option<PathBuf>,
}

/// Why the soak could not run (as opposed to what it found).
#[derive(Debug, thiserror::Error)]
pub enum SoakError {
    #[error("cannot generate certificates: {0}")]
    Certificates(String),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("client TLS configuration: {0}")]
    ClientConfig(String),
    #[error("the first request through the gateway did not succeed: {0} (see {1})")]
    FirstRequest(String, PathBuf),
    #[error("interrupted (SIGINT or SIGTERM); the gateway and the backends were stopped")]
    Interrupted,
}

fn io_context(what: impl Into<String>) -> impl FnOnce(io::Error) -> SoakError {
    let what = what.into();
    move |source| SoakError::Io { what, source }
}

/// The soak's result and where its files are (kept when it failed).
#[derive(Debug)]
pub struct Outcome {
    pub report: Report,
    pub work_dir: PathBuf,
}

/// The first SIGINT or SIGTERM sets the returned flag (the soak then stops and kills its child
/// processes); a second one exits at once.
fn stop_on_signals() -> io::Result<Arc<AtomicBool>> {
    let interrupted = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        // Registered first, so it sees the flag as it was before this signal set it.
        signal_hook::flag::register_conditional_shutdown(
            signal,
            EXIT_INTERRUPTED,
            Arc::clone(&interrupted),
        )?;
        signal_hook::flag::register(signal, Arc::clone(&interrupted))?;
    }
    Ok(interrupted)
}

/// Runs the soak.
pub fn run(options: &Options) -> Result<Outcome, SoakError> {
    let interrupted = stop_on_signals().map_err(io_context("signal handlers"))?;
    let (work_dir, temp) = match &options.work_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(io_context(dir.display().to_string()))?;
            (dir.clone(), None)
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix("portcullis-soak.")
                .tempdir()
                .map_err(io_context("temporary folder"))?;
            (temp.path().to_owned(), Some(temp))
        }
    };
    eprintln!("soak: work folder {}", work_dir.display());
    let report = soak_in(options, &work_dir, &interrupted)?;
    if report.passed
        && let Some(temp) = temp
    {
        let _ = temp.close();
    } else if let Some(temp) = temp {
        // Kept for the logs.
        let _ = temp.keep();
    }
    Ok(Outcome { report, work_dir })
}

fn soak_in(options: &Options, dir: &Path, interrupted: &AtomicBool) -> Result<Report, SoakError> {
    let pki = SoakPki::generate().map_err(SoakError::Certificates)?;
    let (server_ca, client_files) =
        setup::write_client_files(&dir.join("pki"), &pki).map_err(io_context("client files"))?;
    let [
        gateway_port,
        second_gateway_port,
        admin_port,
        backend_port,
        second_backend_port,
    ] = free_ports_outside_ephemeral_range().map_err(io_context("free ports"))?;
    let ports = [gateway_port, second_gateway_port];
    let loopback = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let admin = loopback(admin_port);
    let mut backends = Backends::start(
        &options.portcullis,
        dir,
        &[loopback(backend_port), loopback(second_backend_port)],
    )
    .map_err(io_context("echo backends"))?;
    let manifests = Manifests::create(&dir.join("manifests"), ports, &backends.addrs, &pki)
        .map_err(io_context("manifests"))?;
    let gateway_command = GatewayCommand {
        binary: options.portcullis.clone(),
        manifests: manifests.dir().to_owned(),
        gateway_class: GUIDE_GATEWAY_CLASS.to_owned(),
        admin,
        flags: vec![
            "--bind-address".to_owned(),
            "127.0.0.1".to_owned(),
            "--request-head-timeout".to_owned(),
            format!("{}ms", options.request_head_timeout.as_millis()),
            "--max-request-head-bytes".to_owned(),
            MAX_REQUEST_HEAD_BYTES.to_string(),
        ],
        log: dir.join("gateway.log"),
    };
    let mut gateway = processes::start_gateway(&gateway_command, STARTUP_PATIENCE)
        .map_err(io_context("gateway"))?;
    eprintln!(
        "soak: gateway pid {} on 127.0.0.1:{} and :{}, admin {admin}; echo backends {:?}",
        gateway.pid(),
        ports[0],
        ports[1],
        backends.addrs
    );

    let target = Target {
        ports: ports.map(loopback),
        server_name: client_config::server_name(SERVER_NAME).map_err(SoakError::ClientConfig)?,
        timeout: options.client_timeout,
        max_head_bytes: MAX_REQUEST_HEAD_BYTES,
        server_certs: pki
            .server_certs
            .each_ref()
            .map(|c| certificate_der(&c.cert)),
        configs: client_configs(&server_ca, &client_files)?,
    };
    first_request(&target, &gateway_command.log)?;

    let shared = Shared::default();
    let rotation_step = AtomicU64::new(0);
    let mut phase = |name: &str, duration: Duration, gateway: &mut Process| {
        run_phase(
            name,
            duration,
            options,
            Phase {
                target: &target,
                shared: &shared,
                manifests: &manifests,
                pki: &pki,
                rotation_step: &rotation_step,
                interrupted,
            },
            &mut backends,
            gateway,
        )
    };
    phase("warm-up", options.warmup, &mut gateway)?;
    let start = sample(&mut gateway, admin)?;
    eprintln!(
        "soak: start sample: RSS {}, {} open file descriptors",
        report::Mib(start.rss_bytes),
        start.open_fds
    );
    phase("load", options.duration, &mut gateway)?;
    let load_seconds = shared.elapsed_ms() as f64 / 1000.0;
    let end = sample(&mut gateway, admin)?;
    let still_running = gateway.running();
    let gauges = read_gauges(admin).ok();
    drop(gateway);
    let log = std::fs::read_to_string(&gateway_command.log).unwrap_or_default();
    let log_counts = processes::count_log(&log);
    let seen = &shared.server_certs_seen;
    let facts = GatewayFacts {
        config_reloads_applied: gauges.map_or(0, |g| g.reloads_applied),
        config_reloads_rejected: gauges.map_or(0, |g| g.reloads_rejected),
        server_certs_seen: [
            seen[0].load(Ordering::Relaxed),
            seen[1].load(Ordering::Relaxed),
        ],
        still_running,
        log_panics: log_counts.panics,
        log_errors: log_counts.errors,
        log_warnings: log_counts.warnings,
    };
    let load = Load {
        seconds: load_seconds,
        warmup_seconds: options.warmup.as_secs_f64(),
        kinds: shared.tally.snapshot(),
        chaos: shared.chaos.snapshot(),
        incidents: shared.incidents(),
        unexpected_after_backend_kill: shared.unexpected_after_backend_kill(),
    };
    Ok(Report::new(load, facts, start, end))
}

fn certificate_der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|der| der.to_vec())
        .unwrap_or_default()
}

fn client_configs(server_ca: &Path, files: &[ClientFiles; 3]) -> Result<ClientConfigs, SoakError> {
    let build = |files: &ClientFiles, versions: TlsVersions| {
        client_config::build(
            &TlsFiles {
                cert: Some(&files.cert),
                key: Some(&files.key),
                cacert: Some(server_ca),
            },
            KeyExchange::X25519,
            versions,
        )
        .map_err(SoakError::ClientConfig)
    };
    let [valid, expired, unknown_ca] = files;
    Ok(ClientConfigs {
        valid_tls13: build(valid, TlsVersions::Tls13)?,
        valid_tls12: build(valid, TlsVersions::Tls12)?,
        expired: [
            build(expired, TlsVersions::Tls13)?,
            build(expired, TlsVersions::Tls12)?,
        ],
        unknown_ca: [
            build(unknown_ca, TlsVersions::Tls13)?,
            build(unknown_ca, TlsVersions::Tls12)?,
        ],
    })
}

/// Waits (bounded) for one well-formed request to pass: the config is applied and the
/// backends are reachable before any load is counted.
fn first_request(target: &Target, log: &Path) -> Result<(), SoakError> {
    let config = Arc::new(target.configs.valid_tls13.clone());
    let request = get_request("/get", SERVER_NAME, true);
    let deadline = Instant::now() + STARTUP_PATIENCE;
    loop {
        let attempt = TlsConn::connect(
            target.ports[0],
            &config,
            &target.server_name,
            target.timeout,
        )
        .and_then(|mut conn| {
            conn.send(&request)?;
            read_response(&mut conn, &mut Vec::new())
        });
        let last = match attempt {
            Ok(response) if response.status == 200 => return Ok(()),
            Ok(response) => format!("status {}", response.status),
            Err(outcome) => outcome.label(),
        };
        if Instant::now() >= deadline {
            return Err(SoakError::FirstRequest(last, log.to_owned()));
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// What every phase shares.
#[derive(Clone, Copy)]
struct Phase<'a> {
    target: &'a Target,
    shared: &'a Shared,
    manifests: &'a Manifests,
    pki: &'a SoakPki,
    rotation_step: &'a AtomicU64,
    interrupted: &'a AtomicBool,
}

/// Runs the clients, the rotations and the backend kills for `duration` (less if the gateway
/// exits or the soak is interrupted), then stops them all and waits for them.
fn run_phase(
    name: &str,
    duration: Duration,
    options: &Options,
    phase: Phase<'_>,
    backends: &mut Backends,
    gateway: &mut Process,
) -> Result<(), SoakError> {
    let Phase {
        target,
        shared,
        manifests,
        pki,
        rotation_step,
        interrupted,
    } = phase;
    shared.stop.store(false, Ordering::Relaxed);
    eprintln!("soak: {name} for {:.0} s", duration.as_secs_f64());
    let started = Instant::now();
    let (rotated, restarted) = thread::scope(|scope| {
        let clients = scope.spawn(|| load::run_clients(&options.mix, target, shared));
        let rotation = scope
            .spawn(|| chaos::rotate(manifests, pki, options.rotate_every, shared, rotation_step));
        let kills = scope.spawn(|| {
            backends.kill_and_restart(options.backend_kill_every, options.backend_down_for, shared)
        });
        let deadline = started + duration;
        let mut next_progress = started + options.progress_every;
        while Instant::now() < deadline && gateway.running() && !interrupted.load(Ordering::Relaxed)
        {
            thread::sleep(Duration::from_millis(100));
            if Instant::now() >= next_progress {
                next_progress += options.progress_every;
                progress(name, started, duration, shared);
            }
        }
        shared.stop.store(true, Ordering::Relaxed);
        let _ = clients.join();
        (
            rotation.join().unwrap_or(Ok(())),
            kills.join().unwrap_or(Ok(())),
        )
    });
    rotated.map_err(io_context("rotating the manifests"))?;
    restarted.map_err(io_context("restarting an echo backend"))?;
    if interrupted.load(Ordering::Relaxed) {
        return Err(SoakError::Interrupted);
    }
    progress(name, started, duration, shared);
    Ok(())
}

fn progress(name: &str, started: Instant, duration: Duration, shared: &Shared) {
    let kinds = shared.tally.snapshot();
    let sent: u64 = kinds.values().map(|c| c.sent).sum();
    let unexpected: u64 = kinds.values().map(|c| c.unexpected_total()).sum();
    let chaos = shared.chaos.snapshot();
    eprintln!(
        "soak: [{name} {:>5.0}/{:.0} s] attempts {sent}, unexpected {unexpected} (well-formed failed {}); rotations {}, backend kills {}",
        started.elapsed().as_secs_f64(),
        duration.as_secs_f64(),
        report::well_formed_failures(&kinds),
        chaos.server_cert_rotations,
        chaos.backend_kills,
    );
    let _ = io::stderr().flush();
}

/// Waits for the gateway to settle, then samples its memory and descriptors.
fn sample(gateway: &mut Process, admin: SocketAddr) -> Result<ProcessSample, SoakError> {
    let gauges =
        wait_until_settled(admin, SETTLE_PATIENCE).map_err(io_context("gateway /metrics"))?;
    let pid = gateway.pid();
    let mut open_fds = u64::MAX;
    for i in 0..FD_SAMPLES {
        if i > 0 {
            thread::sleep(FD_SAMPLE_GAP);
        }
        let fds = processes::open_fds(pid).map_err(io_context("gateway /proc/PID/fd"))?;
        open_fds = open_fds.min(fds);
    }
    let rss_bytes = processes::rss_bytes(pid).map_err(io_context("gateway /proc/PID/status"))?;
    Ok(ProcessSample {
        rss_bytes,
        open_fds,
        open_connections: gauges.open_connections,
    })
}
