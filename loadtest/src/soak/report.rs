//! The soak's counts and its verdict: what each client kind sent and what came back, sorted
//! into the outcomes its kind expects and the ones it does not; what was rotated and killed;
//! the gateway's memory and file descriptors; and the checks that decide the exit status.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::sync::{Mutex, PoisonError};

use rustls::AlertDescription;
use serde::Serialize;

/// How much the gateway's resident memory may grow between the two samples: a fixed
/// allowance plus a share of where it started. Both samples are taken with no connection
/// open, after a warm-up ran the whole mix, so per-connection memory is not in either; what
/// remains legitimately is allocator slack (glibc keeps freed memory in its per-thread arenas)
/// and bounded pools still filling (the shards' buffer pools). A leak of 10 bytes per request
/// over a 30-minute run (millions of requests) exceeds it.
pub const RSS_GROWTH_ALLOWANCE_BYTES: u64 = 8 * 1024 * 1024;
/// See [`RSS_GROWTH_ALLOWANCE_BYTES`]: the proportional part, in percent of the start.
pub const RSS_GROWTH_ALLOWANCE_PERCENT: u64 = 10;

/// The most resident memory the end sample may show for a given start sample.
pub fn rss_limit(start_bytes: u64) -> u64 {
    start_bytes + RSS_GROWTH_ALLOWANCE_BYTES + start_bytes * RSS_GROWTH_ALLOWANCE_PERCENT / 100
}

/// The client kinds of the mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Many requests per connection, valid certificate.
    KeepAlive,
    /// A new connection (full or resumed handshake) per request, valid certificate.
    HandshakeStorm,
    /// Sends its request head a byte at a time, slower than the request-head timeout.
    Slowloris,
    /// Sends part of a request, then resets the connection.
    MidRequestReset,
    /// A request head larger than the gateway accepts.
    OversizedHead,
    /// A client certificate from a CA the gateway does not trust.
    UnknownCaCert,
    /// A client certificate from the trusted CA, expired.
    ExpiredCert,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::KeepAlive,
        Kind::HandshakeStorm,
        Kind::Slowloris,
        Kind::MidRequestReset,
        Kind::OversizedHead,
        Kind::UnknownCaCert,
        Kind::ExpiredCert,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Kind::KeepAlive => "keep-alive",
            Kind::HandshakeStorm => "handshake-storm",
            Kind::Slowloris => "slowloris",
            Kind::MidRequestReset => "mid-request-reset",
            Kind::OversizedHead => "oversized-head",
            Kind::UnknownCaCert => "unknown-ca-cert",
            Kind::ExpiredCert => "expired-cert",
        }
    }

    /// Well-formed requests with valid certificates: not one of them may fail.
    pub fn is_well_formed(self) -> bool {
        matches!(self, Kind::KeepAlive | Kind::HandshakeStorm)
    }

    fn index(self) -> usize {
        self as usize
    }

    /// Whether `outcome` is what a client of this kind should get from a healthy gateway.
    pub fn expects(self, outcome: &Outcome) -> bool {
        match self {
            Kind::KeepAlive | Kind::HandshakeStorm => *outcome == Outcome::Status(200),
            // The request-head timeout: 408 and close. When one of the client's bytes is in
            // flight as the gateway closes, the kernel turns the close into a reset.
            Kind::Slowloris => matches!(
                outcome,
                Outcome::Status(408) | Outcome::Closed | Outcome::Reset
            ),
            Kind::MidRequestReset => matches!(outcome, Outcome::ResetSent(_)),
            Kind::OversizedHead => *outcome == Outcome::Status(431),
            Kind::UnknownCaCert => *outcome == Outcome::Alert(AlertDescription::UnknownCA),
            Kind::ExpiredCert => *outcome == Outcome::Alert(AlertDescription::CertificateExpired),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Where a mid-request-reset client stopped before resetting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetPoint {
    /// Half of a request head.
    HalfHead,
    /// A whole POST head and half of its body.
    HalfBody,
    /// A whole request, before its response.
    BeforeResponse,
}

impl ResetPoint {
    pub const ALL: [ResetPoint; 3] = [
        ResetPoint::HalfHead,
        ResetPoint::HalfBody,
        ResetPoint::BeforeResponse,
    ];

    fn label(self) -> &'static str {
        match self {
            ResetPoint::HalfHead => "half a head",
            ResetPoint::HalfBody => "half a body",
            ResetPoint::BeforeResponse => "a whole request",
        }
    }
}

/// What one attempt of a client ended with, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A complete response with this status.
    Status(u16),
    /// The gateway sent this TLS alert.
    Alert(AlertDescription),
    /// The gateway closed the connection before a complete response.
    Closed,
    /// The gateway (its kernel) reset the connection before a complete response.
    Reset,
    /// No complete response within the client's timeout.
    TimedOut,
    /// The client reset the connection on purpose, after sending this much.
    ResetSent(ResetPoint),
    /// The TCP connect to the gateway failed.
    Connect(io::ErrorKind),
    /// TLS failed on the client's side (the gateway's certificate did not verify, say).
    Tls(String),
    /// A response the client could not parse.
    BadResponse(String),
    /// Another socket error.
    Io(io::ErrorKind),
}

impl Outcome {
    /// The key the report counts this outcome under.
    pub fn label(&self) -> String {
        match self {
            Outcome::Status(status) => format!("status {status}"),
            Outcome::Alert(alert) => format!("TLS alert {alert:?}"),
            Outcome::Closed => "closed by the gateway".to_owned(),
            Outcome::Reset => "reset by the gateway".to_owned(),
            Outcome::TimedOut => "timed out".to_owned(),
            Outcome::ResetSent(point) => format!("reset after {}", point.label()),
            Outcome::Connect(kind) => format!("connect failed: {kind}"),
            Outcome::Tls(error) => format!("TLS error: {error}"),
            Outcome::BadResponse(error) => format!("bad response: {error}"),
            Outcome::Io(kind) => format!("socket error: {kind}"),
        }
    }
}

/// What one client kind sent and got back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KindCounts {
    /// Attempts: requests for the well-formed kinds, connections for the others.
    pub sent: u64,
    /// Outcomes the kind expects, by label.
    pub expected: BTreeMap<String, u64>,
    /// Outcomes it does not, by label.
    pub unexpected: BTreeMap<String, u64>,
}

impl KindCounts {
    pub fn record(&mut self, kind: Kind, outcome: &Outcome) {
        self.sent += 1;
        let counts = if kind.expects(outcome) {
            &mut self.expected
        } else {
            &mut self.unexpected
        };
        *counts.entry(outcome.label()).or_default() += 1;
    }

    pub fn expected_total(&self) -> u64 {
        self.expected.values().sum()
    }

    pub fn unexpected_total(&self) -> u64 {
        self.unexpected.values().sum()
    }
}

/// The live counts every client thread records into (one lock per kind: a few thousand
/// outcomes a second contend for nothing).
#[derive(Debug, Default)]
pub struct Tally {
    kinds: [Mutex<KindCounts>; Kind::ALL.len()],
}

impl Tally {
    /// Counts an outcome; whether the kind expected it.
    pub fn record(&self, kind: Kind, outcome: &Outcome) -> bool {
        if let Some(counts) = self.kinds.get(kind.index()) {
            counts
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .record(kind, outcome);
        }
        kind.expects(outcome)
    }

    pub fn snapshot(&self) -> BTreeMap<Kind, KindCounts> {
        Kind::ALL
            .iter()
            .zip(&self.kinds)
            .map(|(kind, counts)| {
                (
                    *kind,
                    counts
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .clone(),
                )
            })
            .collect()
    }
}

/// Failures of well-formed requests with valid certificates.
pub fn well_formed_failures(kinds: &BTreeMap<Kind, KindCounts>) -> u64 {
    kinds
        .iter()
        .filter(|(kind, _)| kind.is_well_formed())
        .map(|(_, counts)| counts.unexpected_total())
        .sum()
}

/// What the soak changed under the load.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Chaos {
    pub server_cert_rotations: u64,
    pub ca_bundle_rotations: u64,
    pub route_rotations: u64,
    pub backend_kills: u64,
    pub backend_restarts: u64,
}

/// An unexpected outcome, with when it happened and what had changed shortly before: enough
/// to tell a failure that follows a backend kill from one that follows a rotation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Incident {
    /// Since the soak's load started.
    pub at_seconds: f64,
    pub kind: Kind,
    pub outcome: String,
    /// Since the last backend was killed (none yet: `None`).
    pub after_backend_kill_seconds: Option<f64>,
    /// Since the manifests last changed.
    pub after_rotation_seconds: Option<f64>,
}

/// Incidents the report lists (the counts cover them all).
pub const MAX_INCIDENTS: usize = 20;

/// An unexpected outcome less than this long after a backend kill is counted as following
/// it: a request in flight to the killed backend is answered within milliseconds.
pub const AFTER_BACKEND_KILL_WINDOW_SECONDS: f64 = 1.0;

impl fmt::Display for Incident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "at {:.3} s, {}: {}",
            self.at_seconds, self.kind, self.outcome
        )?;
        let since = |s: Option<f64>| s.map_or("-".to_owned(), |s| format!("{s:.3} s"));
        write!(
            f,
            " (after the last backend kill: {}, after the last rotation: {})",
            since(self.after_backend_kill_seconds),
            since(self.after_rotation_seconds)
        )
    }
}

/// What the clients did and what changed under them.
#[derive(Debug, Clone, Serialize)]
pub struct Load {
    /// Seconds of load, warm-up included (its counts are in the totals too).
    pub seconds: f64,
    pub warmup_seconds: f64,
    pub kinds: BTreeMap<Kind, KindCounts>,
    pub chaos: Chaos,
    /// The first [`MAX_INCIDENTS`] unexpected outcomes.
    pub incidents: Vec<Incident>,
    /// Unexpected outcomes (all kinds) less than [`AFTER_BACKEND_KILL_WINDOW_SECONDS`] after a
    /// backend kill.
    pub unexpected_after_backend_kill: u64,
}

/// One sample of the gateway process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ProcessSample {
    pub rss_bytes: u64,
    pub open_fds: u64,
    /// Client connections the gateway still counted as open when the sample was taken (the
    /// samples wait for zero, within a bound).
    pub open_connections: u64,
}

/// What the gateway's own counters and log said.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GatewayFacts {
    pub config_reloads_applied: u64,
    pub config_reloads_rejected: u64,
    /// New connections that got each of the two server certificates.
    pub server_certs_seen: [u64; 2],
    pub still_running: bool,
    pub log_panics: u64,
    pub log_errors: u64,
    pub log_warnings: u64,
}

/// Why a soak failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    WellFormedFailed(u64),
    /// A kind sent nothing, so the run did not test it.
    KindNotExercised(Kind),
    /// Nothing was rotated or killed, so the run did not test rotation.
    NoChaos,
    /// The soak wrote manifests the gateway refused: it did not rotate what it meant to.
    ReloadsRejected(u64),
    /// The gateway never served one of the two server certificates: the rotation did not apply.
    ServerCertNotRotated,
    FdsChanged {
        start: u64,
        end: u64,
    },
    RssGrew {
        start: u64,
        end: u64,
        limit: u64,
    },
    /// Client connections still open at a sample, after the soak's clients closed them all.
    ConnectionsLeft {
        open: u64,
    },
    GatewayExited,
    GatewayPanicked(u64),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::WellFormedFailed(n) => write!(
                f,
                "{n} well-formed requests with valid certificates failed (must be 0)"
            ),
            Problem::KindNotExercised(kind) => write!(f, "no {kind} client ran"),
            Problem::NoChaos => f.write_str("nothing was rotated or killed"),
            Problem::ReloadsRejected(n) => write!(f, "the gateway rejected {n} manifest changes"),
            Problem::ServerCertNotRotated => {
                f.write_str("new connections did not see both server certificates")
            }
            Problem::FdsChanged { start, end } => {
                write!(f, "open file descriptors went from {start} to {end}")
            }
            Problem::RssGrew { start, end, limit } => write!(
                f,
                "resident memory grew from {} to {} (limit {})",
                Mib(*start),
                Mib(*end),
                Mib(*limit)
            ),
            Problem::ConnectionsLeft { open } => write!(
                f,
                "the gateway still counted {open} open client connections after the clients closed theirs"
            ),
            Problem::GatewayExited => f.write_str("the gateway exited during the soak"),
            Problem::GatewayPanicked(n) => write!(f, "the gateway's log shows {n} panics"),
        }
    }
}

/// Bytes, printed in MiB.
#[derive(Debug, Clone, Copy)]
pub struct Mib(pub u64);

impl fmt::Display for Mib {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.1} MiB", self.0 as f64 / (1024.0 * 1024.0))
    }
}

/// The whole soak.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub load: Load,
    pub well_formed_failed: u64,
    pub gateway: GatewayFacts,
    /// After the warm-up, with no connection open.
    pub start: ProcessSample,
    /// After the load, with no connection open.
    pub end: ProcessSample,
    pub rss_limit_bytes: u64,
    pub passed: bool,
    pub problems: Vec<String>,
}

impl Report {
    pub fn new(
        load: Load,
        gateway: GatewayFacts,
        start: ProcessSample,
        end: ProcessSample,
    ) -> Report {
        let mut report = Report {
            well_formed_failed: well_formed_failures(&load.kinds),
            load,
            gateway,
            start,
            end,
            rss_limit_bytes: rss_limit(start.rss_bytes),
            passed: false,
            problems: Vec::new(),
        };
        let problems = report.find_problems();
        report.passed = problems.is_empty();
        report.problems = problems.iter().map(Problem::to_string).collect();
        report
    }

    /// Every check the soak makes; none: it passed.
    pub fn find_problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.well_formed_failed > 0 {
            problems.push(Problem::WellFormedFailed(self.well_formed_failed));
        }
        for kind in Kind::ALL {
            if self.load.kinds.get(&kind).is_none_or(|c| c.sent == 0) {
                problems.push(Problem::KindNotExercised(kind));
            }
        }
        if self.load.chaos == Chaos::default() {
            problems.push(Problem::NoChaos);
        }
        if self.gateway.config_reloads_rejected > 0 {
            problems.push(Problem::ReloadsRejected(
                self.gateway.config_reloads_rejected,
            ));
        }
        if self.load.chaos.server_cert_rotations > 0 && self.gateway.server_certs_seen.contains(&0)
        {
            problems.push(Problem::ServerCertNotRotated);
        }
        for sample in [self.start, self.end] {
            if sample.open_connections > 0 {
                problems.push(Problem::ConnectionsLeft {
                    open: sample.open_connections,
                });
            }
        }
        if self.end.open_fds != self.start.open_fds {
            problems.push(Problem::FdsChanged {
                start: self.start.open_fds,
                end: self.end.open_fds,
            });
        }
        if self.end.rss_bytes > self.rss_limit_bytes {
            problems.push(Problem::RssGrew {
                start: self.start.rss_bytes,
                end: self.end.rss_bytes,
                limit: self.rss_limit_bytes,
            });
        }
        if !self.gateway.still_running {
            problems.push(Problem::GatewayExited);
        }
        if self.gateway.log_panics > 0 {
            problems.push(Problem::GatewayPanicked(self.gateway.log_panics));
        }
        problems
    }
}

fn breakdown(counts: &BTreeMap<String, u64>) -> String {
    counts
        .iter()
        .map(|(label, n)| format!("{label} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Portcullis soak: {:.0} s of load ({:.0} s of it warm-up)",
            self.load.seconds, self.load.warmup_seconds
        )?;
        writeln!(
            f,
            "{:<18} {:>10} {:>10} {:>10}",
            "client kind", "sent", "expected", "unexpected"
        )?;
        for (kind, counts) in &self.load.kinds {
            writeln!(
                f,
                "{:<18} {:>10} {:>10} {:>10}",
                kind.label(),
                counts.sent,
                counts.expected_total(),
                counts.unexpected_total()
            )?;
            if !counts.expected.is_empty() {
                writeln!(f, "    expected:   {}", breakdown(&counts.expected))?;
            }
            if !counts.unexpected.is_empty() {
                writeln!(f, "    UNEXPECTED: {}", breakdown(&counts.unexpected))?;
            }
        }
        writeln!(
            f,
            "well-formed requests with valid certificates failed: {}",
            self.well_formed_failed
        )?;
        let unexpected: u64 = self
            .load
            .kinds
            .values()
            .map(KindCounts::unexpected_total)
            .sum();
        if unexpected > 0 {
            writeln!(
                f,
                "unexpected outcomes less than {AFTER_BACKEND_KILL_WINDOW_SECONDS} s after a backend kill: {} of {unexpected}",
                self.load.unexpected_after_backend_kill
            )?;
        }
        if !self.load.incidents.is_empty() {
            writeln!(f, "first unexpected outcomes:")?;
            for incident in &self.load.incidents {
                writeln!(f, "  {incident}")?;
            }
        }
        let c = &self.load.chaos;
        writeln!(
            f,
            "rotated: server certificate {}, CA bundle {}, routes {}; backends killed {}, restarted {}",
            c.server_cert_rotations,
            c.ca_bundle_rotations,
            c.route_rotations,
            c.backend_kills,
            c.backend_restarts
        )?;
        let g = &self.gateway;
        writeln!(
            f,
            "gateway: config reloads applied {}, rejected {}; new connections got server certificate 1: {}, 2: {}",
            g.config_reloads_applied,
            g.config_reloads_rejected,
            g.server_certs_seen[0],
            g.server_certs_seen[1]
        )?;
        writeln!(
            f,
            "gateway RSS: start {}, end {} (limit {}: start + {} + {}%)",
            Mib(self.start.rss_bytes),
            Mib(self.end.rss_bytes),
            Mib(self.rss_limit_bytes),
            Mib(RSS_GROWTH_ALLOWANCE_BYTES),
            RSS_GROWTH_ALLOWANCE_PERCENT
        )?;
        writeln!(
            f,
            "gateway open file descriptors: start {}, end {}",
            self.start.open_fds, self.end.open_fds
        )?;
        writeln!(
            f,
            "gateway log: {} panics, {} errors, {} warnings; {}",
            g.log_panics,
            g.log_errors,
            g.log_warnings,
            if g.still_running {
                "running at the end"
            } else {
                "NOT running at the end"
            }
        )?;
        if self.passed {
            writeln!(f, "verdict: PASS")
        } else {
            writeln!(f, "verdict: FAIL")?;
            for problem in &self.problems {
                writeln!(f, "  - {problem}")?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn counts(kind: Kind, outcomes: &[Outcome]) -> KindCounts {
        let mut counts = KindCounts::default();
        for outcome in outcomes {
            counts.record(kind, outcome);
        }
        counts
    }

    /// A run where every kind got what it expects and nothing leaked.
    fn clean_report() -> Report {
        let kinds = Kind::ALL
            .into_iter()
            .map(|kind| {
                let outcome = match kind {
                    Kind::KeepAlive | Kind::HandshakeStorm => Outcome::Status(200),
                    Kind::Slowloris => Outcome::Status(408),
                    Kind::MidRequestReset => Outcome::ResetSent(ResetPoint::HalfBody),
                    Kind::OversizedHead => Outcome::Status(431),
                    Kind::UnknownCaCert => Outcome::Alert(AlertDescription::UnknownCA),
                    Kind::ExpiredCert => Outcome::Alert(AlertDescription::CertificateExpired),
                };
                (kind, counts(kind, &[outcome]))
            })
            .collect();
        let sample = ProcessSample {
            rss_bytes: 20 * MIB,
            open_fds: 30,
            open_connections: 0,
        };
        Report::new(
            Load {
                seconds: 60.0,
                warmup_seconds: 10.0,
                kinds,
                chaos: Chaos {
                    server_cert_rotations: 1,
                    ..Chaos::default()
                },
                incidents: Vec::new(),
                unexpected_after_backend_kill: 0,
            },
            GatewayFacts {
                server_certs_seen: [5, 6],
                still_running: true,
                ..GatewayFacts::default()
            },
            sample,
            sample,
        )
    }

    #[test]
    fn outcomes_are_sorted_by_what_each_kind_expects() {
        let c = counts(
            Kind::KeepAlive,
            &[
                Outcome::Status(200),
                Outcome::Status(200),
                Outcome::Status(502),
                Outcome::Closed,
            ],
        );
        assert_eq!(c.sent, 4);
        assert_eq!(c.expected_total(), 2);
        assert_eq!(c.unexpected.get("status 502"), Some(&1));
        assert_eq!(c.unexpected.get("closed by the gateway"), Some(&1));

        // A 200 is what a slowloris client must never get; a close is what it must.
        let c = counts(Kind::Slowloris, &[Outcome::Status(200), Outcome::Closed]);
        assert_eq!(c.unexpected.get("status 200"), Some(&1));
        assert_eq!(c.expected.get("closed by the gateway"), Some(&1));

        // An expired certificate must be refused as expired, not merely refused.
        let c = counts(
            Kind::ExpiredCert,
            &[
                Outcome::Alert(AlertDescription::CertificateExpired),
                Outcome::Alert(AlertDescription::UnknownCA),
            ],
        );
        assert_eq!(c.expected_total(), 1);
        assert_eq!(c.unexpected.get("TLS alert UnknownCA"), Some(&1));
        assert!(!Kind::OversizedHead.expects(&Outcome::Reset));
    }

    #[test]
    fn the_tally_counts_each_kind_apart() {
        let tally = Tally::default();
        assert!(tally.record(Kind::KeepAlive, &Outcome::Status(200)));
        assert!(!tally.record(Kind::HandshakeStorm, &Outcome::TimedOut));
        tally.record(
            Kind::MidRequestReset,
            &Outcome::ResetSent(ResetPoint::HalfHead),
        );
        let kinds = tally.snapshot();
        assert_eq!(kinds.len(), Kind::ALL.len());
        assert_eq!(kinds[&Kind::KeepAlive].expected_total(), 1);
        assert_eq!(kinds[&Kind::HandshakeStorm].unexpected_total(), 1);
        assert_eq!(kinds[&Kind::MidRequestReset].expected_total(), 1);
        assert_eq!(kinds[&Kind::Slowloris].sent, 0);
        // Only the well-formed kinds' unexpected outcomes are well-formed failures.
        tally.record(Kind::OversizedHead, &Outcome::Status(200));
        assert_eq!(well_formed_failures(&tally.snapshot()), 1);
    }

    #[test]
    fn a_clean_run_passes() {
        let report = clean_report();
        assert_eq!(report.find_problems(), vec![]);
        assert!(report.passed);
        assert!(report.to_string().contains("verdict: PASS"));
    }

    #[test]
    fn one_failed_well_formed_request_fails_the_run() {
        let mut report = clean_report();
        report
            .load
            .kinds
            .get_mut(&Kind::HandshakeStorm)
            .unwrap()
            .record(Kind::HandshakeStorm, &Outcome::Status(502));
        report.load.incidents.push(Incident {
            at_seconds: 12.5,
            kind: Kind::HandshakeStorm,
            outcome: Outcome::Status(502).label(),
            after_backend_kill_seconds: Some(0.004),
            after_rotation_seconds: None,
        });
        report.load.unexpected_after_backend_kill = 1;
        let report = Report::new(report.load, report.gateway, report.start, report.end);
        assert_eq!(report.well_formed_failed, 1);
        assert_eq!(report.find_problems(), vec![Problem::WellFormedFailed(1)]);
        assert!(!report.passed);
        let text = report.to_string();
        assert!(text.contains("UNEXPECTED: status 502 1"), "{text}");
        assert!(
            text.contains("unexpected outcomes less than 1 s after a backend kill: 1 of 1"),
            "{text}"
        );
        assert!(
            text.contains("at 12.500 s, handshake-storm: status 502 (after the last backend kill: 0.004 s, after the last rotation: -)"),
            "{text}"
        );
    }

    #[test]
    fn misbehaving_clients_failing_their_way_do_not_fail_the_run_but_others_do() {
        let mut report = clean_report();
        // An oversized head answered 200 is unexpected, but not a well-formed failure.
        report
            .load
            .kinds
            .get_mut(&Kind::OversizedHead)
            .unwrap()
            .record(Kind::OversizedHead, &Outcome::Status(200));
        assert_eq!(well_formed_failures(&report.load.kinds), 0);
        report.load.kinds.remove(&Kind::Slowloris);
        assert_eq!(
            report.find_problems(),
            vec![Problem::KindNotExercised(Kind::Slowloris)]
        );
    }

    #[test]
    fn one_more_file_descriptor_fails_the_run() {
        let mut report = clean_report();
        report.end.open_fds = report.start.open_fds + 1;
        assert_eq!(
            report.find_problems(),
            vec![Problem::FdsChanged { start: 30, end: 31 }]
        );
        report.end.open_fds = report.start.open_fds - 1;
        assert_eq!(report.find_problems().len(), 1);
    }

    #[test]
    fn memory_may_grow_within_the_bound_only() {
        let start = 20 * MIB;
        let limit = rss_limit(start);
        assert_eq!(limit, start + RSS_GROWTH_ALLOWANCE_BYTES + 2 * MIB);
        let mut report = clean_report();
        report.end.rss_bytes = limit;
        assert_eq!(report.find_problems(), vec![]);
        report.end.rss_bytes = limit + 1;
        assert_eq!(
            report.find_problems(),
            vec![Problem::RssGrew {
                start,
                end: limit + 1,
                limit
            }]
        );
    }

    #[test]
    fn the_gateway_itself_must_survive_and_settle() {
        let mut report = clean_report();
        report.gateway.still_running = false;
        report.gateway.log_panics = 2;
        report.gateway.config_reloads_rejected = 1;
        report.gateway.server_certs_seen = [7, 0];
        report.end.open_connections = 3;
        report.load.chaos = Chaos::default();
        assert_eq!(
            report.find_problems(),
            vec![
                Problem::NoChaos,
                Problem::ReloadsRejected(1),
                Problem::ConnectionsLeft { open: 3 },
                Problem::GatewayExited,
                Problem::GatewayPanicked(2),
            ]
        );
        report.load.chaos.server_cert_rotations = 4;
        assert!(
            report
                .find_problems()
                .contains(&Problem::ServerCertNotRotated)
        );
    }

    #[test]
    fn the_json_report_names_kinds_and_outcomes() {
        let json = serde_json::to_value(clean_report()).unwrap();
        assert_eq!(json["kinds"]["keep-alive"]["expected"]["status 200"], 1);
        assert_eq!(json["passed"], true);
    }
}
