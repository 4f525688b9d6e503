//! The client mix: one blocking thread per client, each running its kind's loop until told to
//! stop and recording every attempt's [`Outcome`] in the shared [`Tally`].
//!
//! No attempt is ever retried: a well-formed request that fails is counted as failed. A
//! keep-alive connection is reopened only when the gateway said it would close it
//! (`connection: close`); a new connection that fails before its request can be sent counts
//! as a failed request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use rustls::pki_types::ServerName;

use super::chaos::ChaosCounters;
use super::client::{Response, TlsConn, get_request, read_response};
use super::report::{
    AFTER_BACKEND_KILL_WINDOW_SECONDS, Incident, Kind, MAX_INCIDENTS, Outcome, ResetPoint, Tally,
};
use super::setup::SERVER_NAME;

/// The path every well-formed request asks for: the echo's JSON, through the route's
/// catch-all rule.
const WELL_FORMED_PATH: &str = "/get";

/// Requests per keep-alive connection before the client opens a new one, so that keep-alive
/// connections both outlive config changes and are opened under every config.
const REQUESTS_PER_KEEPALIVE_CONNECTION: u32 = 1000;

/// Pause after an attempt that failed before anything was sent, so that a gateway that is
/// down does not turn a client into a busy loop.
const FAILED_CONNECT_PAUSE: Duration = Duration::from_millis(100);

/// Pause between the attempts of the misbehaving kinds (resets, oversized heads, invalid
/// certificates): a steady trickle beside the well-formed load, not a flood of their own.
const MISBEHAVING_CLIENT_PAUSE: Duration = Duration::from_millis(20);

/// A slowloris client sends one byte of its head per this interval; its head is far longer
/// than the gateway's request-head timeout lets it send.
const SLOWLORIS_BYTE_INTERVAL: Duration = Duration::from_millis(250);

/// How long a mid-request-reset client waits after sending, before resetting: the gateway has
/// taken the bytes in (and forwarded what it could) by then.
const RESET_AFTER_SEND: Duration = Duration::from_millis(10);

/// Bytes of a POST body a mid-request-reset client announces (it sends half).
const RESET_BODY_BYTES: usize = 4096;

/// How far over the gateway's head limit an oversized head goes.
const OVERSIZE_MARGIN_BYTES: usize = 1024;

/// The TLS configs of the clients (resumption off: each is copied per thread when wanted).
#[derive(Debug)]
pub struct ClientConfigs {
    pub valid_tls13: ClientConfig,
    pub valid_tls12: ClientConfig,
    pub expired: [ClientConfig; 2],
    pub unknown_ca: [ClientConfig; 2],
}

/// How many clients of each kind run.
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    pub keep_alive: usize,
    pub handshake_storm: usize,
    pub slowloris: usize,
    pub mid_request_reset: usize,
    pub oversized_head: usize,
    /// Clients of each invalid-certificate kind.
    pub invalid_cert: usize,
}

/// What every client reads.
#[derive(Debug)]
pub struct Target {
    /// The gateway's two ports; clients alternate between them.
    pub ports: [SocketAddr; 2],
    pub server_name: ServerName<'static>,
    /// Connect, handshake and response timeout of every attempt.
    pub timeout: Duration,
    /// The gateway's `--max-request-head-bytes`.
    pub max_head_bytes: usize,
    /// DER of the two server certificates, to count which one new connections get.
    pub server_certs: [Vec<u8>; 2],
    pub configs: ClientConfigs,
}

/// What every client and the chaos threads write.
#[derive(Debug)]
pub struct Shared {
    pub stop: AtomicBool,
    pub tally: Tally,
    /// New connections that got server certificate 0 and 1.
    pub server_certs_seen: [AtomicU64; 2],
    pub chaos: ChaosCounters,
    started: Instant,
    /// The first unexpected outcomes.
    incidents: Mutex<Vec<Incident>>,
    unexpected_after_backend_kill: AtomicU64,
}

/// Its clock starts when it is made.
impl Default for Shared {
    fn default() -> Shared {
        Shared {
            stop: AtomicBool::new(false),
            tally: Tally::default(),
            server_certs_seen: Default::default(),
            chaos: ChaosCounters::default(),
            started: Instant::now(),
            incidents: Mutex::new(Vec::new()),
            unexpected_after_backend_kill: AtomicU64::new(0),
        }
    }
}

impl Shared {
    pub fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Counts an outcome, and keeps the first unexpected ones with their circumstances.
    pub fn record(&self, kind: Kind, outcome: &Outcome) {
        if self.tally.record(kind, outcome) {
            return;
        }
        let now_ms = self.elapsed_ms();
        let (after_backend_kill_seconds, after_rotation_seconds) = self.chaos.since_last(now_ms);
        if after_backend_kill_seconds.is_some_and(|s| s < AFTER_BACKEND_KILL_WINDOW_SECONDS) {
            self.unexpected_after_backend_kill
                .fetch_add(1, Ordering::Relaxed);
        }
        let mut incidents = self
            .incidents
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if incidents.len() < MAX_INCIDENTS {
            incidents.push(Incident {
                at_seconds: now_ms as f64 / 1000.0,
                kind,
                outcome: outcome.label(),
                after_backend_kill_seconds,
                after_rotation_seconds,
            });
        }
    }

    pub fn unexpected_after_backend_kill(&self) -> u64 {
        self.unexpected_after_backend_kill.load(Ordering::Relaxed)
    }

    pub fn incidents(&self) -> Vec<Incident> {
        self.incidents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn is_stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn saw(&self, target: &Target, conn: &TlsConn) {
        let Some(der) = conn.server_certificate() else {
            return;
        };
        for (known, seen) in target.server_certs.iter().zip(&self.server_certs_seen) {
            if known.as_slice() == der {
                seen.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Sleeps `pause` unless the run stops meanwhile (checked every tenth of a second).
    pub fn pause_for(&self, pause: Duration) {
        let step = Duration::from_millis(100);
        let mut left = pause;
        while !left.is_zero() && !self.is_stopped() {
            let nap = left.min(step);
            thread::sleep(nap);
            left -= nap;
        }
    }
}

/// Runs the mix until `shared.stop`; returns when every client stopped.
pub fn run_clients(mix: &Mix, target: &Target, shared: &Shared) {
    thread::scope(|scope| {
        let port = |i: usize| target.ports[i % target.ports.len()];
        for i in 0..mix.keep_alive {
            scope.spawn(move || keep_alive(target, shared, port(i)));
        }
        for i in 0..mix.handshake_storm {
            // Every other storm client resumes sessions; every fourth speaks TLS 1.2 (the
            // gateway then checks the client certificate inside the handshake).
            let tls12 = i % 4 == 3;
            let resume = i % 2 == 1;
            scope.spawn(move || handshake_storm(target, shared, port(i), tls12, resume));
        }
        for i in 0..mix.slowloris {
            scope.spawn(move || slowloris(target, shared, port(i)));
        }
        for i in 0..mix.mid_request_reset {
            scope.spawn(move || mid_request_reset(target, shared, port(i)));
        }
        for i in 0..mix.oversized_head {
            scope.spawn(move || oversized_head(target, shared, port(i)));
        }
        for i in 0..mix.invalid_cert {
            scope.spawn(move || {
                invalid_cert(
                    target,
                    shared,
                    port(i),
                    Kind::UnknownCaCert,
                    &target.configs.unknown_ca,
                );
            });
            scope.spawn(move || {
                invalid_cert(
                    target,
                    shared,
                    port(i + 1),
                    Kind::ExpiredCert,
                    &target.configs.expired,
                );
            });
        }
    });
}

fn connect(
    target: &Target,
    shared: &Shared,
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
) -> Result<TlsConn, Outcome> {
    let conn = TlsConn::connect(addr, config, &target.server_name, target.timeout)?;
    shared.saw(target, &conn);
    Ok(conn)
}

/// Sends a request and reads its response. When the send fails, the gateway may still have
/// answered before closing (a 431, a TLS alert): what it answered wins over the send error.
fn exchange(conn: &mut TlsConn, request: &[u8], buf: &mut Vec<u8>) -> Result<Response, Outcome> {
    let sent = conn.send(request);
    match read_response(conn, buf) {
        Ok(response) => Ok(response),
        Err(alert @ Outcome::Alert(_)) => Err(alert),
        Err(read_error) => Err(sent.err().unwrap_or(read_error)),
    }
}

fn status_or_failure(result: Result<Response, Outcome>) -> Outcome {
    match result {
        Ok(response) => Outcome::Status(response.status),
        Err(outcome) => outcome,
    }
}

fn keep_alive(target: &Target, shared: &Shared, addr: SocketAddr) {
    let kind = Kind::KeepAlive;
    let config = Arc::new(target.configs.valid_tls13.clone());
    let request = get_request(WELL_FORMED_PATH, SERVER_NAME, false);
    let mut buf = Vec::new();
    while !shared.is_stopped() {
        let mut conn = match connect(target, shared, addr, &config) {
            Ok(conn) => conn,
            Err(outcome) => {
                shared.record(kind, &outcome);
                shared.pause_for(FAILED_CONNECT_PAUSE);
                continue;
            }
        };
        buf.clear();
        for _ in 0..REQUESTS_PER_KEEPALIVE_CONNECTION {
            if shared.is_stopped() {
                break;
            }
            let result = exchange(&mut conn, &request, &mut buf);
            let reusable = matches!(
                result,
                Ok(Response {
                    status: 200,
                    reusable: true
                })
            );
            shared.record(kind, &status_or_failure(result));
            if !reusable {
                break;
            }
        }
    }
}

fn handshake_storm(target: &Target, shared: &Shared, addr: SocketAddr, tls12: bool, resume: bool) {
    let kind = Kind::HandshakeStorm;
    let base = if tls12 {
        &target.configs.valid_tls12
    } else {
        &target.configs.valid_tls13
    };
    let config = crate::client_config::with_resumption(base, resume);
    let request = get_request(WELL_FORMED_PATH, SERVER_NAME, true);
    let mut buf = Vec::new();
    while !shared.is_stopped() {
        buf.clear();
        let outcome = match connect(target, shared, addr, &config) {
            Ok(mut conn) => status_or_failure(exchange(&mut conn, &request, &mut buf)),
            Err(outcome) => {
                shared.record(kind, &outcome);
                shared.pause_for(FAILED_CONNECT_PAUSE);
                continue;
            }
        };
        shared.record(kind, &outcome);
    }
}

fn slowloris(target: &Target, shared: &Shared, addr: SocketAddr) {
    let kind = Kind::Slowloris;
    let config = Arc::new(target.configs.valid_tls13.clone());
    let head = format!(
        "GET {WELL_FORMED_PATH} HTTP/1.1\r\nhost: {SERVER_NAME}\r\nuser-agent: portcullis-soak-slowloris\r\nx-slow: {}\r\n\r\n",
        "s".repeat(64)
    );
    let mut buf = Vec::new();
    while !shared.is_stopped() {
        buf.clear();
        let mut conn = match connect(target, shared, addr, &config) {
            Ok(conn) => conn,
            Err(outcome) => {
                shared.record(kind, &outcome);
                shared.pause_for(FAILED_CONNECT_PAUSE);
                continue;
            }
        };
        let mut outcome = None;
        for byte in head.as_bytes() {
            if shared.is_stopped() {
                return; // stopped by the soak, not by the gateway: not an outcome
            }
            if let Err(send_error) = conn.send(std::slice::from_ref(byte)) {
                outcome = Some(match read_response(&mut conn, &mut buf) {
                    Ok(response) => Outcome::Status(response.status),
                    Err(_) => send_error,
                });
                break;
            }
            match conn.read_within(&mut buf, SLOWLORIS_BYTE_INTERVAL, target.timeout) {
                Ok(None) => continue,
                Ok(Some(0)) => outcome = Some(Outcome::Closed),
                Ok(Some(_)) => {
                    outcome = Some(status_or_failure(read_response(&mut conn, &mut buf)));
                }
                Err(failure) => outcome = Some(failure),
            }
            break;
        }
        // The whole head went out: the gateway let it through (whatever it answers, the
        // report counts it as not expected).
        let outcome =
            outcome.unwrap_or_else(|| status_or_failure(read_response(&mut conn, &mut buf)));
        shared.record(kind, &outcome);
    }
}

fn mid_request_reset(target: &Target, shared: &Shared, addr: SocketAddr) {
    let kind = Kind::MidRequestReset;
    let config = Arc::new(target.configs.valid_tls13.clone());
    let get = get_request(WELL_FORMED_PATH, SERVER_NAME, false);
    let mut post = format!(
        "POST /anything HTTP/1.1\r\nhost: {SERVER_NAME}\r\ncontent-length: {RESET_BODY_BYTES}\r\n\r\n"
    )
    .into_bytes();
    post.extend(std::iter::repeat_n(b'b', RESET_BODY_BYTES / 2));
    for point in ResetPoint::ALL.iter().cycle() {
        if shared.is_stopped() {
            return;
        }
        let bytes = match point {
            ResetPoint::HalfHead => get.get(..get.len() / 2).unwrap_or_default(),
            ResetPoint::HalfBody => &post,
            ResetPoint::BeforeResponse => &get,
        };
        let outcome = match connect(target, shared, addr, &config) {
            Ok(mut conn) => match conn.send(bytes) {
                Ok(()) => {
                    thread::sleep(RESET_AFTER_SEND);
                    conn.reset(*point)
                }
                Err(outcome) => outcome,
            },
            Err(outcome) => outcome,
        };
        shared.record(kind, &outcome);
        shared.pause_for(MISBEHAVING_CLIENT_PAUSE);
    }
}

fn oversized_head(target: &Target, shared: &Shared, addr: SocketAddr) {
    let kind = Kind::OversizedHead;
    let config = Arc::new(target.configs.valid_tls13.clone());
    let request = format!(
        "GET {WELL_FORMED_PATH} HTTP/1.1\r\nhost: {SERVER_NAME}\r\nx-fill: {}\r\n\r\n",
        "f".repeat(target.max_head_bytes + OVERSIZE_MARGIN_BYTES)
    )
    .into_bytes();
    let mut buf = Vec::new();
    while !shared.is_stopped() {
        buf.clear();
        let outcome = match connect(target, shared, addr, &config) {
            Ok(mut conn) => status_or_failure(exchange(&mut conn, &request, &mut buf)),
            Err(outcome) => outcome,
        };
        shared.record(kind, &outcome);
        shared.pause_for(MISBEHAVING_CLIENT_PAUSE);
    }
}

/// Alternates TLS 1.3 (the verdict comes with the first read) and TLS 1.2 (in the handshake).
fn invalid_cert(
    target: &Target,
    shared: &Shared,
    addr: SocketAddr,
    kind: Kind,
    configs: &[ClientConfig; 2],
) {
    let configs = configs.clone().map(Arc::new);
    let request = get_request(WELL_FORMED_PATH, SERVER_NAME, true);
    let mut buf = Vec::new();
    for config in configs.iter().cycle() {
        if shared.is_stopped() {
            return;
        }
        buf.clear();
        let outcome = match connect(target, shared, addr, config) {
            Ok(mut conn) => status_or_failure(exchange(&mut conn, &request, &mut buf)),
            Err(outcome) => outcome,
        };
        shared.record(kind, &outcome);
        shared.pause_for(MISBEHAVING_CLIENT_PAUSE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unexpected_outcomes_are_tied_to_the_backend_kill_before_them() {
        let shared = Shared::default();
        shared.record(Kind::KeepAlive, &Outcome::Status(502));
        // Noted a minute ahead, so that no clock reading can put the next outcome outside
        // the window.
        shared.chaos.backend_killed(shared.elapsed_ms() + 60_000);
        shared.record(Kind::HandshakeStorm, &Outcome::Closed);
        shared.record(Kind::KeepAlive, &Outcome::Status(200));
        assert_eq!(shared.unexpected_after_backend_kill(), 1);
        let incidents = shared.incidents();
        assert_eq!(incidents.len(), 2, "{incidents:?}");
        assert_eq!(incidents[0].after_backend_kill_seconds, None);
        assert_eq!(incidents[1].kind, Kind::HandshakeStorm);
        assert_eq!(incidents[1].after_backend_kill_seconds, Some(0.0));
        assert_eq!(shared.chaos.snapshot().backend_kills, 1);
    }

    #[test]
    fn only_the_first_incidents_are_kept_but_all_are_counted() {
        let shared = Shared::default();
        for _ in 0..MAX_INCIDENTS + 5 {
            shared.record(Kind::OversizedHead, &Outcome::Reset);
        }
        assert_eq!(shared.incidents().len(), MAX_INCIDENTS);
        let kinds = shared.tally.snapshot();
        assert_eq!(
            kinds[&Kind::OversizedHead].unexpected_total(),
            (MAX_INCIDENTS + 5) as u64
        );
    }
}
