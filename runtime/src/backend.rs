//! Per-shard keep-alive pools of backend connections, and endpoint choice.
//!
//! Each shard keeps its own idle connections and its own round-robin cursors; nothing here is
//! shared with another core.

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
const MAX_IDLE_REUSE_AGE: Duration = Duration::from_secs(4);

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
