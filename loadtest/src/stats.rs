//! What a run measured: per-thread counters and latency histograms, merged at the end, the
//! error classes, the live progress counters and the final summary (text or JSON).

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies are recorded in microseconds: finer than any network round trip worth reporting.
const LATENCY_UNIT_PER_SEC: f64 = 1_000_000.0;

/// Largest latency the histogram holds (longer ones are clamped to it): one hour, far beyond
/// any request timeout.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Significant decimal digits the histogram keeps: 3 gives 0.1% precision at every magnitude.
const HISTOGRAM_SIGFIGS: u8 = 3;

/// Why one request (or the connection it needed) failed.
#[derive(Debug)]
pub enum Failure {
    /// The TCP connect failed.
    Connect(io::ErrorKind),
    /// TLS failed: an alert from the server, or our own check (server certificate, protocol).
    Tls(rustls::Error),
    /// The server answered with an error status (4xx, 5xx).
    Http(u16),
    /// No complete response within `--timeout`.
    Timeout,
    /// The connection ended before a complete response.
    Closed,
    /// A socket error after connecting.
    Io(io::ErrorKind),
    /// A response this client cannot parse.
    BadResponse(String),
}

/// The error classes of the summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// A TLS alert the server sent, by its RFC 8446 name (`certificate_required`).
    TlsAlert,
    /// A TLS failure on our side (`invalid_certificate`, `peer_misbehaved`...).
    Tls,
    HttpStatus,
    Connect,
    Timeout,
    Other,
}

impl Failure {
    /// The class and the detail the summary counts this failure under.
    pub fn class(&self) -> (ErrorClass, String) {
        match self {
            Failure::Tls(rustls::Error::AlertReceived(alert)) => {
                (ErrorClass::TlsAlert, snake_case(&format!("{alert:?}")))
            }
            Failure::Tls(rustls::Error::InvalidCertificate(e)) => (
                ErrorClass::Tls,
                format!("invalid_certificate:{}", snake_case(&format!("{e:?}"))),
            ),
            Failure::Tls(e) => (ErrorClass::Tls, tls_error_name(e)),
            Failure::Http(status) => (ErrorClass::HttpStatus, status.to_string()),
            Failure::Connect(kind) => (ErrorClass::Connect, snake_case(&format!("{kind:?}"))),
            Failure::Timeout => (ErrorClass::Timeout, "request".to_owned()),
            Failure::Closed => (ErrorClass::Other, "closed_early".to_owned()),
            Failure::Io(kind) => (ErrorClass::Other, snake_case(&format!("{kind:?}"))),
            Failure::BadResponse(why) => (ErrorClass::Other, format!("bad_response:{why}")),
        }
    }
}

/// The variant name of a rustls error, without its payload (`peer_misbehaved`).
fn tls_error_name(e: &rustls::Error) -> String {
    let debug = format!("{e:?}");
    let name = debug
        .split(|c: char| !c.is_ascii_alphanumeric())
        .next()
        .unwrap_or_default();
    snake_case(name)
}

/// `CertificateRequired` -> `certificate_required`; `Unknown(42)` -> `unknown_42`.
pub fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 && !out.ends_with('_') {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('_') && !out.is_empty() {
            out.push('_');
        }
    }
    out.trim_end_matches('_').to_owned()
}

/// Live counters of one worker thread, read by the progress line once a second. Each is
/// written by its own thread only (no contention); aligned so two threads' counters never
/// share a cache line.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Progress {
    pub ok: AtomicU64,
    pub errors: AtomicU64,
    pub resumed: AtomicU64,
    pub full: AtomicU64,
    /// Hold mode: connections open and idle.
    pub held: AtomicU64,
    /// The thread finished its share of the work.
    pub done: AtomicU64,
}

impl Progress {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn read(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// What one worker thread measured (after the warm-up).
#[derive(Debug)]
pub struct Stats {
    pub ok: u64,
    pub latency: Histogram<u64>,
    pub errors: BTreeMap<(ErrorClass, String), u64>,
    pub statuses: BTreeMap<u16, u64>,
    pub handshakes_full: u64,
    pub handshakes_resumed: u64,
    pub held: u64,
}

impl Stats {
    pub fn new() -> Result<Self, hdrhistogram::CreationError> {
        Ok(Self {
            ok: 0,
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_US, HISTOGRAM_SIGFIGS)?,
            errors: BTreeMap::new(),
            statuses: BTreeMap::new(),
            handshakes_full: 0,
            handshakes_resumed: 0,
            held: 0,
        })
    }

    pub fn record_ok(&mut self, status: u16, latency: Duration) {
        self.ok += 1;
        *self.statuses.entry(status).or_default() += 1;
        let us = u64::try_from(latency.as_micros()).unwrap_or(MAX_LATENCY_US);
        self.latency.saturating_record(us.clamp(1, MAX_LATENCY_US));
    }

    pub fn record_failure(&mut self, failure: &Failure) {
        if let Failure::Http(status) = failure {
            *self.statuses.entry(*status).or_default() += 1;
        }
        *self.errors.entry(failure.class()).or_default() += 1;
    }

    pub fn record_handshake(&mut self, resumed: bool) {
        if resumed {
            self.handshakes_resumed += 1;
        } else {
            self.handshakes_full += 1;
        }
    }

    pub fn merge(&mut self, other: &Stats) {
        self.ok += other.ok;
        let _ = self.latency.add(&other.latency);
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.statuses {
            *self.statuses.entry(*k).or_default() += v;
        }
        self.handshakes_full += other.handshakes_full;
        self.handshakes_resumed += other.handshakes_resumed;
        self.held += other.held;
    }

    pub fn error_total(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// The machine-readable summary (`--json`), also the source of the text one.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub mode: String,
    pub target: String,
    pub threads: usize,
    pub connections: usize,
    /// Requests per second asked for (open loop).
    pub rate_target: Option<f64>,
    /// Seconds measured (warm-up excluded).
    pub duration_s: f64,
    pub requests_ok: u64,
    pub errors_total: u64,
    /// Successful requests per second.
    pub rate: f64,
    pub handshakes: Handshakes,
    pub latency_ms: Latency,
    /// Error counts: class -> detail -> count.
    pub errors: BTreeMap<ErrorClass, BTreeMap<String, u64>>,
    pub statuses: BTreeMap<u16, u64>,
    /// Hold mode: connections opened and held idle.
    pub held: u64,
    /// CPU the load generator used, in cores (user + system); near `threads` means the load
    /// generator, not the server, may be the bottleneck.
    pub client_cpu_cores: Option<f64>,
    /// Of the load generator's CPUs: cores the hypervisor took during the run (a VM's steal).
    /// Well above zero means the host, not the server, may have set the pace.
    pub client_cpus_steal_cores: Option<f64>,
    /// The kernel's TCP retransmissions, timeouts and drops over the same window, machine-wide.
    pub kernel_tcp: Option<crate::kernel_tcp::TcpCounters>,
    /// `--watch-pid` / `--watch-cpus`: the server's CPU use over the same window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<crate::cpu_use::WatchedUse>,
}

#[derive(Debug, Serialize)]
pub struct Handshakes {
    pub full: u64,
    pub resumed: u64,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

fn ms(us: u64) -> f64 {
    us as f64 * 1000.0 / LATENCY_UNIT_PER_SEC
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Latency {
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                p999: 0.0,
                max: 0.0,
                mean: 0.0,
            };
        }
        Latency {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() * 1000.0 / LATENCY_UNIT_PER_SEC,
        }
    }
}

/// Groups `(class, detail) -> count` by class.
pub fn group_errors(
    errors: &BTreeMap<(ErrorClass, String), u64>,
) -> BTreeMap<ErrorClass, BTreeMap<String, u64>> {
    let mut out: BTreeMap<ErrorClass, BTreeMap<String, u64>> = BTreeMap::new();
    for ((class, detail), n) in errors {
        *out.entry(*class)
            .or_default()
            .entry(detail.clone())
            .or_default() += n;
    }
    out
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "portcullis-load {} -> {}: {} threads, {} connections, {:.2} s measured",
            self.mode, self.target, self.threads, self.connections, self.duration_s
        )?;
        if let Some(rate) = self.rate_target {
            writeln!(f, "  target rate   {rate:.1} req/s")?;
        }
        writeln!(
            f,
            "  requests      {} ok, {} errors, {:.1} req/s",
            self.requests_ok, self.errors_total, self.rate
        )?;
        writeln!(
            f,
            "  handshakes    {} full, {} resumed",
            self.handshakes.full, self.handshakes.resumed
        )?;
        if self.held > 0 {
            writeln!(f, "  held idle     {} connections", self.held)?;
        }
        let l = &self.latency_ms;
        writeln!(
            f,
            "  latency (ms)  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3}",
            l.p50, l.p90, l.p99, l.p999, l.max, l.mean
        )?;
        let mut statuses = String::new();
        for (status, n) in &self.statuses {
            let _ = write!(statuses, " {status}: {n}");
        }
        if !statuses.is_empty() {
            writeln!(f, "  statuses     {statuses}")?;
        }
        for (class, details) in &self.errors {
            for (detail, n) in details {
                writeln!(f, "  error         {}: {detail}: {n}", class_name(*class))?;
            }
        }
        if let Some(cpu) = self.client_cpu_cores {
            writeln!(f, "  client cpu    {cpu:.2} cores")?;
        }
        if let Some(steal) = self.client_cpus_steal_cores.filter(|s| *s > 0.0) {
            writeln!(
                f,
                "  client cpus   stolen by the hypervisor {steal:.2} cores"
            )?;
        }
        if let Some(tcp) = self.kernel_tcp.filter(|t| !t.is_zero()) {
            writeln!(
                f,
                "  kernel tcp    {} segments retransmitted, {} retransmission timeouts, {} SYN retransmits, {} listen overflows, {} backlog drops (machine-wide)",
                tcp.retransmitted_segments,
                tcp.retransmission_timeouts,
                tcp.syn_retransmits,
                tcp.listen_overflows,
                tcp.backlog_drops
            )?;
        }
        if let Some(server) = &self.server {
            if let (Some(pid), Some(cpu)) = (server.pid, server.cpu_cores) {
                writeln!(f, "  server cpu    {cpu:.2} cores (pid {pid})")?;
            }
            if let (Some(cpus), Some(idle), Some(steal), Some(irq)) = (
                &server.cpus,
                server.cpus_idle_cores,
                server.cpus_steal_cores,
                server.cpus_interrupt_cores,
            ) {
                writeln!(
                    f,
                    "  server cpus   {cpus}: idle {idle:.2}, stolen {steal:.2}, interrupts {irq:.2} cores"
                )?;
            }
        }
        Ok(())
    }
}

fn class_name(class: ErrorClass) -> &'static str {
    match class {
        ErrorClass::TlsAlert => "tls_alert",
        ErrorClass::Tls => "tls",
        ErrorClass::HttpStatus => "http_status",
        ErrorClass::Connect => "connect",
        ErrorClass::Timeout => "timeout",
        ErrorClass::Other => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_names_are_rfc_style() {
        assert_eq!(snake_case("CertificateRequired"), "certificate_required");
        assert_eq!(snake_case("BadCertificate"), "bad_certificate");
        assert_eq!(snake_case("Unknown(42)"), "unknown_42");
        assert_eq!(snake_case("ConnectionRefused"), "connection_refused");
    }

    #[test]
    fn failures_are_classified() {
        let alert = Failure::Tls(rustls::Error::AlertReceived(
            rustls::AlertDescription::CertificateRequired,
        ));
        assert_eq!(
            alert.class(),
            (ErrorClass::TlsAlert, "certificate_required".to_owned())
        );
        assert_eq!(
            Failure::Http(404).class(),
            (ErrorClass::HttpStatus, "404".to_owned())
        );
        assert_eq!(
            Failure::Connect(io::ErrorKind::ConnectionRefused).class().0,
            ErrorClass::Connect
        );
        assert_eq!(
            Failure::Tls(rustls::Error::HandshakeNotComplete).class(),
            (ErrorClass::Tls, "handshake_not_complete".to_owned())
        );
    }

    #[test]
    fn merge_adds_everything() {
        let mut a = Stats::new().unwrap();
        let mut b = Stats::new().unwrap();
        a.record_ok(200, Duration::from_millis(1));
        b.record_ok(200, Duration::from_millis(3));
        b.record_failure(&Failure::Http(404));
        b.record_handshake(true);
        a.merge(&b);
        assert_eq!(a.ok, 2);
        assert_eq!(a.latency.len(), 2);
        assert_eq!(a.statuses[&200], 2);
        assert_eq!(a.statuses[&404], 1);
        assert_eq!(a.error_total(), 1);
        assert_eq!(a.handshakes_resumed, 1);
    }
}
