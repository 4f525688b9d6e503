//! portcullis-load: an mTLS load generator, thread-per-core like the server it loads.
//!
//! One monoio runtime per thread (io_uring, epoll when refused), each pinned to one CPU of the
//! process's affinity mask, so `taskset -c 1 portcullis-load ...` keeps the load on CPU 1. See
//! `--help` for the modes; `--json` prints a machine-readable summary on stdout.

mod cpu_use;
mod http;
mod kernel_tcp;
mod stats;
mod tls;
mod worker;

use std::io::{IsTerminal, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;

use cpu_use::{Sample, Watch};
use portcullis_loadtest::client_config::{self, KeyExchange, TlsFiles, TlsVersions};
use stats::{Latency, Progress, Stats, Summary};
use worker::{DriverChoice, Mode, Plan, ThreadPlan};

/// How often the main thread checks whether the workers finished: short enough that a
/// count-based run ends promptly, long enough to cost nothing.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// How often the progress line is printed.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// How long the main thread sleeps at a time while hold mode keeps connections until killed.
const HOLD_FOREVER_TICK: Duration = Duration::from_secs(3600);

/// Duration of a run given neither `-d` nor `-n`.
const DEFAULT_DURATION: Duration = Duration::from_secs(10);

/// Exit status when requests failed (the summary says which).
const EXIT_ERRORS: u8 = 1;
/// Exit status when the run could not start (bad arguments, unreadable certificates).
const EXIT_SETUP: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "portcullis-load",
    version,
    about = "mTLS load generator: keep-alive, handshake storms, open loop, idle connections"
)]
struct Cli {
    /// Server address, HOST:PORT.
    #[arg(long)]
    connect: String,
    /// Load mode (`--idle N` implies `hold`).
    #[arg(long, value_enum, default_value_t = Mode::Keepalive)]
    mode: Mode,
    /// TLS server name (SNI). Default: the --host value, else the host of --connect.
    #[arg(long)]
    sni: Option<String>,
    /// Host header. Default: the SNI.
    #[arg(long)]
    host: Option<String>,
    /// Request path.
    #[arg(long, default_value = "/")]
    path: String,
    /// Client certificate chain (PEM).
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long)]
    key: Option<PathBuf>,
    /// CA certificates (PEM) that must have signed the server's certificate.
    #[arg(long)]
    cacert: Option<PathBuf>,
    /// Do not check the server's certificate (as curl -k); needed when --cacert is absent.
    #[arg(long, short = 'k')]
    insecure: bool,
    /// Concurrent connections, over all threads.
    #[arg(short = 'c', long, default_value_t = 64)]
    connections: usize,
    /// How long to measure, after the warm-up (250ms, 10s, 2m).
    #[arg(short = 'd', long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// How many results (successes and failures) to record, after the warm-up.
    #[arg(short = 'n', long)]
    requests: Option<u64>,
    /// Run this long before recording anything.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    warmup: Duration,
    /// Open loop: requests per second over all connections.
    #[arg(long)]
    rate: Option<f64>,
    /// Resume sessions with the tickets the server issued (on), or always run full handshakes
    /// (off). Matters most in handshake mode, where every request is a new connection.
    #[arg(long, value_parser = parse_on_off, default_value = "on")]
    resumption: OnOff,
    /// Hold mode: open this many connections, complete one request on each, keep them idle
    /// until killed (or for -d).
    #[arg(long)]
    idle: Option<u64>,
    /// Worker threads. Default: one per CPU in the affinity mask.
    #[arg(long)]
    threads: Option<usize>,
    /// Per-request timeout (connect, handshake and response).
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    timeout: Duration,
    /// Key-exchange groups offered.
    #[arg(long, value_enum, default_value_t = KeyExchange::X25519)]
    kx: KeyExchange,
    /// TLS versions offered.
    #[arg(long = "tls", value_enum, default_value_t = TlsVersions::Tls13)]
    tls_versions: TlsVersions,
    /// Event-loop driver.
    #[arg(long, value_enum, default_value_t = DriverChoice::Auto)]
    driver: DriverChoice,
    /// Also report this local process's CPU use over the measured window (with its direct
    /// children's: nginx's workers), as `server` in the summary.
    #[arg(long, value_name = "PID")]
    watch_pid: Option<u32>,
    /// Also report how these CPUs' time went over the measured window (idle, stolen by the
    /// hypervisor, in interrupts): the server's CPU list, e.g. 0-3.
    #[arg(long, value_name = "LIST", value_parser = cpu_use::parse_cpu_list)]
    watch_cpus: Option<cpu_use::CpuList>,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// No progress line.
    #[arg(long, short = 'q')]
    quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OnOff(bool);

fn parse_on_off(s: &str) -> Result<OnOff, String> {
    match s {
        "on" => Ok(OnOff(true)),
        "off" => Ok(OnOff(false)),
        _ => Err(format!("{s:?} is not \"on\" or \"off\"")),
    }
}

/// Parses `250ms`, `10s`, `2m`, `1h`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(|| format!("{s:?} needs a unit (ms, s, m, h)"))?;
    let (number, unit) = s.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("portcullis-load: {message}");
            ExitCode::from(EXIT_SETUP)
        }
    }
}

fn resolve(connect: &str) -> Result<SocketAddr, String> {
    connect
        .to_socket_addrs()
        .map_err(|e| format!("--connect {connect:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("--connect {connect:?}: no address"))
}

/// `n` split over `parts` as evenly as possible; part `i`'s share.
fn share(n: u64, parts: usize, i: usize) -> u64 {
    let parts = parts.max(1) as u64;
    let i = i as u64;
    n / parts + u64::from(i < n % parts)
}

fn run(cli: Cli) -> Result<ExitCode, String> {
    let mode = if cli.idle.is_some() {
        Mode::Hold
    } else {
        cli.mode
    };
    if mode == Mode::OpenLoop && cli.rate.is_none_or(|r| r <= 0.0 || !r.is_finite()) {
        return Err("open-loop needs --rate R (requests per second, > 0)".to_owned());
    }
    if mode == Mode::Hold && cli.idle.is_none() {
        return Err("hold needs --idle N".to_owned());
    }
    if cli.cacert.is_none() && !cli.insecure {
        return Err("give --cacert FILE, or --insecure to skip the server check".to_owned());
    }
    let addr = resolve(&cli.connect)?;
    let connect_host = cli
        .connect
        .rsplit_once(':')
        .map_or(cli.connect.as_str(), |(h, _)| h)
        .trim_matches(['[', ']']);
    let sni = cli
        .sni
        .clone()
        .or_else(|| cli.host.clone())
        .unwrap_or_else(|| connect_host.to_owned());
    let host = cli.host.clone().unwrap_or_else(|| sni.clone());
    let server_name = client_config::server_name(&sni)?;
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let watch = Watch {
        pid: cli.watch_pid,
        cpus: cli.watch_cpus.clone(),
        own_cpus: (!cores.is_empty()).then(|| cpu_use::CpuList::new(cores.iter().map(|c| c.id))),
    };
    watch.check()?;
    let base_config = Arc::new(client_config::build(
        &TlsFiles {
            cert: cli.cert.as_deref(),
            key: cli.key.as_deref(),
            cacert: cli.cacert.as_deref(),
        },
        cli.kx,
        cli.tls_versions,
    )?);

    let threads = cli.threads.unwrap_or(cores.len()).max(1);
    let connections = cli.connections.max(1);
    // No more threads than connections: an idle thread would only pin a core.
    let threads = threads.min(connections);
    let duration = match (cli.duration, cli.requests) {
        (None, None) if mode != Mode::Hold => Some(DEFAULT_DURATION),
        (d, _) => d,
    };
    let start = Instant::now();
    let measure_from = start + cli.warmup;
    let plan = Arc::new(Plan {
        mode,
        addr,
        server_name,
        request: http::request_bytes(&cli.path, &host, mode == Mode::Handshake),
        timeout: cli.timeout,
        start,
        measure_from,
        end: if mode == Mode::Hold {
            None
        } else {
            duration.map(|d| measure_from + d)
        },
        rate: cli.rate.unwrap_or(0.0),
        total_connections: connections,
        hold_for: if mode == Mode::Hold { duration } else { None },
        driver: cli.driver,
        resumption: cli.resumption.0,
    });
    let budget = match mode {
        Mode::Hold => cli.idle,
        _ => cli.requests,
    };

    let mut progress = Vec::with_capacity(threads);
    let mut handles = Vec::with_capacity(threads);
    let mut first_connection = 0;
    for i in 0..threads {
        let thread_connections = usize::try_from(share(connections as u64, threads, i))
            .unwrap_or(1)
            .max(1);
        let p = Arc::new(Progress::default());
        progress.push(Arc::clone(&p));
        let thread_plan = ThreadPlan {
            core: if cores.is_empty() {
                None
            } else {
                cores.get(i % cores.len()).copied()
            },
            connections: thread_connections,
            first_connection,
            budget: budget.map(|b| share(b, threads, i)),
            config: Arc::clone(&base_config),
            progress: p,
        };
        first_connection += thread_connections;
        let plan = Arc::clone(&plan);
        let handle = thread::Builder::new()
            .name(format!("load-{i}"))
            .spawn(move || worker::run(plan, thread_plan))
            .map_err(|e| format!("cannot start a thread: {e}"))?;
        handles.push(handle);
    }

    let (window_start, window_end) =
        watch_progress(&cli, mode, &plan, &progress, start, budget, &watch);
    let finished = Instant::now();

    let mut total = Stats::new().map_err(|e| format!("histogram: {e}"))?;
    for handle in handles {
        match handle.join() {
            Ok(Ok(stats)) => total.merge(&stats),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("a worker thread panicked".to_owned()),
        }
    }
    let measured = match plan.end {
        Some(end) if finished >= end => end.saturating_duration_since(measure_from),
        _ => finished.saturating_duration_since(measure_from),
    };
    let seconds = measured.as_secs_f64().max(f64::MIN_POSITIVE);
    let cpu = watch.between(&window_start, &window_end);
    let summary = Summary {
        mode: format!("{mode:?}").to_lowercase(),
        target: cli.connect.clone(),
        threads,
        connections,
        rate_target: cli.rate.filter(|_| mode == Mode::OpenLoop),
        duration_s: seconds,
        requests_ok: total.ok,
        errors_total: total.error_total(),
        rate: total.ok as f64 / seconds,
        handshakes: stats::Handshakes {
            full: total.handshakes_full,
            resumed: total.handshakes_resumed,
        },
        latency_ms: Latency::of(&total.latency),
        errors: stats::group_errors(&total.errors),
        statuses: total.statuses.clone(),
        held: total.held,
        client_cpu_cores: cpu.own_cores,
        client_cpus_steal_cores: cpu.own_cpus_steal_cores,
        kernel_tcp: cpu.kernel_tcp,
        server: cpu.watched,
    };
    if cli.json {
        let json = serde_json::to_string_pretty(&summary).map_err(|e| format!("summary: {e}"))?;
        println!("{json}");
    } else {
        print!("{summary}");
    }
    Ok(if summary.errors_total > 0 {
        ExitCode::from(EXIT_ERRORS)
    } else {
        ExitCode::SUCCESS
    })
}

/// Prints the progress line every second until every worker finished; returns the CPU
/// samples taken when the measured window began and when it ended (its planned end, or the
/// workers' finish for a count-based run).
fn watch_progress(
    cli: &Cli,
    mode: Mode,
    plan: &Plan,
    progress: &[Arc<Progress>],
    start: Instant,
    budget: Option<u64>,
    watch: &Watch,
) -> (Sample, Sample) {
    let tty = std::io::stderr().is_terminal();
    let mut next_tick = start + PROGRESS_INTERVAL;
    let mut last_ok = 0u64;
    let mut window_start = None;
    let mut window_end = None;
    loop {
        let sum = |f: fn(&Progress) -> u64| progress.iter().map(|p| f(p)).sum::<u64>();
        let done = sum(|p| Progress::read(&p.done)) as usize == progress.len();
        let now = Instant::now();
        if window_start.is_none() && now >= plan.measure_from {
            window_start = Some(watch.sample());
        }
        if window_end.is_none() && plan.end.is_some_and(|end| now >= end) {
            window_end = Some(watch.sample());
        }
        if done {
            if tty && !cli.quiet {
                eprintln!();
            }
            if mode == Mode::Hold {
                let held = sum(|p| Progress::read(&p.held));
                let failed = sum(|p| Progress::read(&p.errors));
                // Scripts wait for this line before measuring the server.
                eprintln!("holding {held} idle connections ({failed} failed)");
                if plan.hold_for.is_none() {
                    // Until killed: the workers keep the connections open meanwhile.
                    loop {
                        thread::sleep(HOLD_FOREVER_TICK);
                    }
                }
            }
            let window_start = window_start.unwrap_or_else(|| watch.sample());
            let window_end = window_end.unwrap_or_else(|| watch.sample());
            return (window_start, window_end);
        }
        if now >= next_tick {
            next_tick += PROGRESS_INTERVAL;
            if !cli.quiet {
                let ok = sum(|p| Progress::read(&p.ok));
                let line = format!(
                    "[{:6.1}s]{} ok {ok} (+{}/s)  errors {}  handshakes {} full / {} resumed{}{}",
                    now.duration_since(start).as_secs_f64(),
                    if now < plan.measure_from {
                        " warmup"
                    } else {
                        ""
                    },
                    ok - last_ok,
                    sum(|p| Progress::read(&p.errors)),
                    sum(|p| Progress::read(&p.full)),
                    sum(|p| Progress::read(&p.resumed)),
                    if mode == Mode::Hold {
                        format!("  held {}", sum(|p| Progress::read(&p.held)))
                    } else {
                        String::new()
                    },
                    budget.map_or(String::new(), |b| format!("  of {b}")),
                );
                let mut err = std::io::stderr().lock();
                let _ = if tty {
                    write!(err, "\r{line}\x1b[K")
                } else {
                    writeln!(err, "{line}")
                };
                let _ = err.flush();
                last_ok = ok;
            }
        }
        thread::sleep(POLL_INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn shares_add_up() {
        for (n, parts) in [(200u64, 3usize), (1, 4), (0, 2), (10_000, 16)] {
            let total: u64 = (0..parts).map(|i| share(n, parts, i)).sum();
            assert_eq!(total, n);
        }
    }
}
