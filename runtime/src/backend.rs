//! Per-shard keep-alive pools of backend connections, endpoint choice, and passive health
//! checking.
//!
//! Each shard keeps its own idle connections, its own round-robin cursors and its own list of
//! ejected endpoints; nothing here is shared with another core.
//!
//! **Passive health checking.** An endpoint whose connect was refused, timed out or found no
//! route is ejected: the shard that saw it fail skips it for `--backend-ejection-time`, then
//! tries it again (Envoy's outlier detection, reduced to its connect-failure case). Only
//! failures that are the endpoint's fault eject it ([`ConnectFailure::ejects`]): running out
//! of file descriptors here says nothing about the endpoint. Other shards learn on their own
//! first failure, so a dead endpoint costs each shard one failed connect per ejection time,
//! and shards share nothing on the connection path.
//!
//! **Choice among endpoints** ([`pick_endpoint`]). A request's connect attempts go to
//! endpoints of the one backend its weights chose, each to one it has not tried yet, skipping
//! ejected ones. When every endpoint it has not tried is ejected it still tries one of them
//! (Envoy's panic mode): a backend whose endpoints all failed lately then serves again as
//! soon as one recovers, instead of answering 502 to everyone for the rest of the ejection
//! time on the strength of old failures.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use crate::sockets::quiet_and_open;

/// An idle connection older than this is closed instead of reused. Many servers drop idle
/// keep-alive connections after 5 to 60 seconds; reusing one they are closing races with
/// their FIN, so we stay under the common short setting.
///
/// This age, not a count, bounds the pool: it keeps every connection a burst of concurrent
/// requests needed, so the next burst finds them (it can never hold more than were in use at
/// once), and [`BackendPool::close_stale`] closes them once they were idle this long. A cap on
/// the count made every request beyond it connect anew and close again: with 1024 keep-alive
/// clients on one shard against a cap of 64, that was a backend connection per request, the
/// backend's accept queue overflowing, SYNs sent again after a second (p99 1.05 s), and on a
/// busy gateway its ephemeral ports held in TIME_WAIT.
pub(crate) const MAX_IDLE_REUSE_AGE: Duration = Duration::from_secs(4);

/// How often a shard closes the idle connections too old to reuse, so that a burst's
/// connections are closed within about twice [`MAX_IDLE_REUSE_AGE`] after it, even when no
/// further request comes to that backend.
pub const STALE_SWEEP_INTERVAL: Duration = MAX_IDLE_REUSE_AGE;

#[derive(Debug)]
struct IdleConnection {
    tcp: TcpStream,
    since: Instant,
}

/// This shard's idle backend connections, by endpoint.
#[derive(Debug, Default)]
pub struct BackendPool {
    idle: RefCell<HashMap<SocketAddr, Vec<IdleConnection>>>,
}

/// A connection to a backend, and whether it came from the pool (a reused connection may have
/// been closed by the backend meanwhile, which makes one retry safe).
#[derive(Debug)]
pub struct BackendConnection {
    pub tcp: TcpStream,
    pub endpoint: SocketAddr,
    pub reused: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {0} timed out")]
    Timeout(SocketAddr),
    #[error("connect to {0}: {1}")]
    Io(SocketAddr, io::Error),
}

impl ConnectError {
    /// Why it failed, as the metrics and the log say it.
    pub fn failure(&self) -> ConnectFailure {
        match self {
            ConnectError::Timeout(_) => ConnectFailure::TimedOut,
            ConnectError::Io(_, e) => match e.kind() {
                io::ErrorKind::ConnectionRefused => ConnectFailure::Refused,
                // The kernel's own SYN retries ran out before our timeout did.
                io::ErrorKind::TimedOut => ConnectFailure::TimedOut,
                io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
                    ConnectFailure::Unreachable
                }
                _ => ConnectFailure::Local,
            },
        }
    }
}

/// Why a connect to a backend endpoint failed, and so whether the endpoint is to blame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// Nothing listens there (the endpoint answered with a reset): a pod that is gone, or not
    /// serving yet.
    Refused,
    /// No answer within the connect timeout: a black-holed address, or a host too busy to
    /// answer.
    TimedOut,
    /// The network has no way to the address (no route, no host answering on the link).
    Unreachable,
    /// Failed on this side (no file descriptor, no local port left): not the endpoint's fault.
    Local,
}

impl ConnectFailure {
    pub const ALL: [ConnectFailure; 4] = [
        ConnectFailure::Refused,
        ConnectFailure::TimedOut,
        ConnectFailure::Unreachable,
        ConnectFailure::Local,
    ];

    /// The `reason` label and log field.
    pub fn label(self) -> &'static str {
        match self {
            ConnectFailure::Refused => "refused",
            ConnectFailure::TimedOut => "timed_out",
            ConnectFailure::Unreachable => "unreachable",
            ConnectFailure::Local => "local",
        }
    }

    /// Whether the endpoint is to blame, and so ejected.
    pub fn ejects(self) -> bool {
        !matches!(self, ConnectFailure::Local)
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// The endpoints this shard skips for now, each with the moment its ejection ends. Nearly
/// always empty, so checking a pick costs one `is_empty`.
#[derive(Debug)]
pub struct Ejections {
    /// How long an ejection lasts; zero turns ejection off.
    duration: Duration,
    until: RefCell<HashMap<SocketAddr, Instant>>,
}

impl Ejections {
    pub fn new(duration: Duration) -> Self {
        Ejections {
            duration,
            until: RefCell::default(),
        }
    }

    pub fn is_ejected(&self, endpoint: SocketAddr) -> bool {
        let until = self.until.borrow();
        !until.is_empty()
            && until
                .get(&endpoint)
                .is_some_and(|end| Instant::now() < *end)
    }

    /// Ejects `endpoint` from now on. `true` when it was not ejected yet (an ejection to count
    /// and log); `false` when this only extends one (a panic-mode attempt failed again).
    pub fn eject(&self, endpoint: SocketAddr) -> bool {
        if self.duration.is_zero() {
            return false;
        }
        let now = Instant::now();
        // The duration is bounded when parsed (`limits::MAX_BACKEND_EJECTION_TIME`).
        let end = now.checked_add(self.duration).unwrap_or(now);
        match self.until.borrow_mut().insert(endpoint, end) {
            Some(previous_end) => previous_end <= now,
            None => true,
        }
    }

    /// Ends the ejection of an endpoint that just accepted a new connection.
    pub fn restore(&self, endpoint: SocketAddr) {
        let mut until = self.until.borrow_mut();
        if !until.is_empty() {
            until.remove(&endpoint);
        }
    }

    /// Forgets ejections that ended, so that endpoints gone from the config leave no trace
    /// (the shard calls this every [`STALE_SWEEP_INTERVAL`]).
    pub fn forget_ended(&self) {
        let now = Instant::now();
        self.until.borrow_mut().retain(|_, end| now < *end);
    }

    /// The endpoints ejected now.
    pub fn ejected_now(&self) -> Vec<SocketAddr> {
        let now = Instant::now();
        self.until
            .borrow()
            .iter()
            .filter(|(_, end)| now < **end)
            .map(|(endpoint, _)| *endpoint)
            .collect()
    }
}

/// The index of the endpoint for a connect attempt: in round-robin order from `start`, the
/// first that this request has not `tried` and that is not ejected; when every one it has not
/// tried is ejected, the first of those all the same (panic mode, see the module docs).
/// `None` when it tried them all.
pub fn pick_endpoint(
    endpoints: &[SocketAddr],
    start: usize,
    tried: &[SocketAddr],
    is_ejected: impl Fn(SocketAddr) -> bool,
) -> Option<usize> {
    let count = endpoints.len();
    if count == 0 {
        return None;
    }
    let start = start % count;
    let mut ejected_untried = None;
    for offset in 0..count {
        let index = (start + offset) % count;
        let Some(&endpoint) = endpoints.get(index) else {
            continue;
        };
        if tried.contains(&endpoint) {
            continue;
        }
        if !is_ejected(endpoint) {
            return Some(index);
        }
        ejected_untried.get_or_insert(index);
    }
    ejected_untried
}

impl BackendPool {
    /// A pooled connection to `endpoint` if a fresh one is idle, else a new one.
    ///
    /// `probe_idle`: check that a pooled connection is still open before handing it out (one
    /// extra non-blocking `recv`). Needed for requests that cannot be replayed once sent (they
    /// carry a body); a bodiless request is simply retried on a new connection instead.
    pub async fn get(
        &self,
        endpoint: SocketAddr,
        connect_timeout: Duration,
        probe_idle: bool,
    ) -> Result<BackendConnection, ConnectError> {
        if let Some(tcp) = self.take_idle(endpoint, probe_idle) {
            return Ok(BackendConnection {
                tcp,
                endpoint,
                reused: true,
            });
        }
        self.connect(endpoint, connect_timeout).await
    }

    /// Always a new connection (the retry after a reused one failed).
    pub async fn connect(
        &self,
        endpoint: SocketAddr,
        connect_timeout: Duration,
    ) -> Result<BackendConnection, ConnectError> {
        let tcp = monoio::time::timeout(connect_timeout, TcpStream::connect_addr(endpoint))
            .await
            .map_err(|_| ConnectError::Timeout(endpoint))?
            .map_err(|e| ConnectError::Io(endpoint, e))?;
        // Request heads and small bodies go out in one write; Nagle would only add latency.
        let _ = tcp.set_nodelay(true);
        Ok(BackendConnection {
            tcp,
            endpoint,
            reused: false,
        })
    }

    fn take_idle(&self, endpoint: SocketAddr, probe: bool) -> Option<TcpStream> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&endpoint)?;
        let now = Instant::now();
        while let Some(conn) = list.pop() {
            if now.saturating_duration_since(conn.since) < MAX_IDLE_REUSE_AGE
                && (!probe || quiet_and_open(&conn.tcp))
            {
                return Some(conn.tcp);
            }
        }
        None
    }

    /// Returns a connection whose last response was read completely and that the backend
    /// keeps alive.
    pub fn put(&self, conn: BackendConnection) {
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(conn.endpoint).or_default();
        // One clock read per call, not one per idle connection (that was a clock read per
        // pooled connection on every request: 6% of a keep-alive shard's CPU in a profile).
        let now = Instant::now();
        drop_stale(list, now);
        list.push(IdleConnection {
            tcp: conn.tcp,
            since: now,
        });
    }

    /// Closes every idle connection too old to reuse, and forgets endpoints left with none
    /// (the shard calls this every [`STALE_SWEEP_INTERVAL`]).
    pub fn close_stale(&self) {
        let now = Instant::now();
        self.idle.borrow_mut().retain(|_, list| {
            drop_stale(list, now);
            !list.is_empty()
        });
    }

    /// Idle connections held now, over all endpoints.
    pub fn idle_count(&self) -> usize {
        self.idle.borrow().values().map(Vec::len).sum()
    }
}

/// Drops the connections of `list` idle for [`MAX_IDLE_REUSE_AGE`] or longer. The list is in
/// `since` order (pushed at the end, taken from the end), so they are a prefix.
fn drop_stale(list: &mut Vec<IdleConnection>, now: Instant) {
    let stale = list
        .iter()
        .position(|c| now.saturating_duration_since(c.since) < MAX_IDLE_REUSE_AGE)
        .unwrap_or(list.len());
    list.drain(..stale);
}

/// Why a backend h2 connection failed (the `reason` label of
/// `portcullis_backend_h2_connection_errors_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum H2cConnectionError {
    /// The backend did not complete the HTTP/2 preface (it speaks HTTP/1.1, say).
    Handshake,
    /// The backend sent GOAWAY with an error code.
    GoAway,
    /// The backend broke the protocol (we sent GOAWAY).
    Protocol,
    /// The connection broke (reset, closed in the middle).
    Io,
}

impl H2cConnectionError {
    pub const ALL: [H2cConnectionError; 4] = [
        H2cConnectionError::Handshake,
        H2cConnectionError::GoAway,
        H2cConnectionError::Protocol,
        H2cConnectionError::Io,
    ];

    pub fn label(self) -> &'static str {
        match self {
            H2cConnectionError::Handshake => "handshake",
            H2cConnectionError::GoAway => "goaway",
            H2cConnectionError::Protocol => "protocol",
            H2cConnectionError::Io => "io",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    pub(crate) fn of(error: &h2::Error) -> Self {
        if error.is_io() {
            H2cConnectionError::Io
        } else if error.is_go_away() && error.is_remote() {
            H2cConnectionError::GoAway
        } else {
            H2cConnectionError::Protocol
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(n: u8) -> Vec<SocketAddr> {
        (1..=n)
            .map(|i| SocketAddr::from(([127, 0, 0, i], 80)))
            .collect()
    }

    #[test]
    fn without_failures_the_pick_is_plain_round_robin() {
        let e = endpoints(3);
        let picks: Vec<_> = (0..5)
            .map(|start| pick_endpoint(&e, start, &[], |_| false))
            .collect();
        assert_eq!(picks, [Some(0), Some(1), Some(2), Some(0), Some(1)]);
    }

    #[test]
    fn a_retry_never_goes_back_to_an_endpoint_the_request_tried() {
        let e = endpoints(3);
        // Whatever the cursor says (other requests move it between this one's attempts).
        for start in 0..6 {
            assert_eq!(pick_endpoint(&e, start, &[e[0], e[2]], |_| false), Some(1));
            assert_eq!(pick_endpoint(&e, start, &e, |_| false), None);
        }
    }

    #[test]
    fn ejected_endpoints_are_skipped_unless_only_ejected_ones_are_left() {
        let e = endpoints(3);
        let ejected = |a: SocketAddr| a == e[0] || a == e[1];
        assert_eq!(pick_endpoint(&e, 0, &[], ejected), Some(2));
        assert_eq!(pick_endpoint(&e, 1, &[], ejected), Some(2));
        // Panic mode: nothing healthy left untried, so the first ejected one untried.
        assert_eq!(pick_endpoint(&e, 0, &[e[2]], ejected), Some(0));
        assert_eq!(pick_endpoint(&e, 1, &[e[2]], ejected), Some(1));
        assert_eq!(pick_endpoint(&[], 0, &[], |_| false), None);
    }

    #[test]
    fn an_ejection_is_counted_once_and_ends() {
        let e = endpoints(2);
        let ejections = Ejections::new(Duration::from_secs(60));
        assert!(ejections.eject(e[0]), "a new ejection");
        assert!(!ejections.eject(e[0]), "extended, not a second ejection");
        assert!(ejections.is_ejected(e[0]));
        assert!(!ejections.is_ejected(e[1]));
        assert_eq!(ejections.ejected_now(), [e[0]]);
        ejections.restore(e[0]);
        assert!(!ejections.is_ejected(e[0]));

        let ended = Ejections::new(Duration::from_nanos(1));
        assert!(ended.eject(e[0]));
        std::thread::sleep(Duration::from_millis(1));
        assert!(!ended.is_ejected(e[0]));
        assert!(ended.eject(e[0]), "ejected again after the first one ended");
        std::thread::sleep(Duration::from_millis(1));
        ended.forget_ended();
        assert!(ended.until.borrow().is_empty());

        let off = Ejections::new(Duration::ZERO);
        assert!(!off.eject(e[0]));
        assert!(!off.is_ejected(e[0]));
    }

    #[test]
    fn only_failures_of_the_endpoint_eject_it() {
        let addr = endpoints(1)[0];
        let io = |kind: io::ErrorKind| ConnectError::Io(addr, kind.into()).failure();
        assert_eq!(
            io(io::ErrorKind::ConnectionRefused),
            ConnectFailure::Refused
        );
        assert_eq!(
            io(io::ErrorKind::HostUnreachable),
            ConnectFailure::Unreachable
        );
        assert_eq!(
            ConnectError::Timeout(addr).failure(),
            ConnectFailure::TimedOut
        );
        assert_eq!(io(io::ErrorKind::OutOfMemory), ConnectFailure::Local);
        assert!(!ConnectFailure::Local.ejects());
        assert!(ConnectFailure::Refused.ejects() && ConnectFailure::TimedOut.ejects());
    }
}
