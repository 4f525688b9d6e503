//! h2c backend connections: HTTP/2 over cleartext TCP (prior knowledge) to Service ports whose
//! `appProtocol` is `kubernetes.io/h2c`, and to GRPCRoute backends. What goes over a stream
//! is the `h2c` module's.
//!
//! - **One pool per shard.** Each shard keeps its own multiplexed connections per endpoint,
//!   driven by a task on that shard (the `h2` crate's client over a monoio socket in poll
//!   mode): no lock, no hand-off between cores, as for HTTP/1.1 backends. A busy endpoint
//!   costs one connection per shard instead of one per request.
//! - **Streams per connection.** A stream goes to the first connection with room: fewer open
//!   streams than the peer's `SETTINGS_MAX_CONCURRENT_STREAMS` and than
//!   [`MAX_STREAMS_PER_CONNECTION`]. When none has room one request connects while the others
//!   of that endpoint wait for it, so that a burst shares the new connection instead of
//!   opening one each.
//! - **Connecting** is [`crate::backend::BackendPool::connect`]'s (timeout, failure kinds,
//!   ejection, the next endpoint after a failure: `forward::BackendAttempts`); the h2
//!   preface must complete within the connect timeout too.
//! - **Ending.** A connection the backend sent GOAWAY on, or that failed, takes no new
//!   streams and leaves the pool; a stream whose request could not be sent on a pooled
//!   connection is sent once more on a new one. Connections without streams close after
//!   [`crate::backend::MAX_IDLE_REUSE_AGE`], as idle HTTP/1.1 connections do.
//! - **Known limit.** A connection's first streams are sent before the backend's SETTINGS
//!   arrive, so a burst in that first round trip may exceed a backend limit below
//!   [`MAX_STREAMS_PER_CONNECTION`]; h2 queues the excess until streams end (unary calls end
//!   at once; long-lived streams would hold them).
//!
//! The pool is shard state (`shard_state::ShardContext` holds it), so it knows nothing
//! of requests: it imports no connection or forwarding module.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use tokio::sync::Notify;
use tracing::debug;

use crate::backend::{BackendPool, ConnectError, H2cConnectionError, MAX_IDLE_REUSE_AGE};
use crate::metrics::ShardMetrics;

/// Streams we open on one backend connection at most, even when the backend allows more: a
/// connection's streams share one TCP window and one shard's turn at its socket.
pub const MAX_STREAMS_PER_CONNECTION: usize = 100;

/// Flow-control window of each backend stream: how much response body a backend may send
/// ahead of the client taking it.
const STREAM_WINDOW_BYTES: u32 = 256 * 1024;

/// Flow-control window of a backend connection: a few streams' worth, bounding what one
/// connection may have buffered in the shard.
const CONNECTION_WINDOW_BYTES: u32 = 1024 * 1024;

/// Largest response header list accepted from a backend (as an HTTP/1.1 backend's head).
const MAX_HEADER_LIST_BYTES: u32 = 64 * 1024;

/// Request bytes buffered per stream before we wait for the backend's window.
const MAX_SEND_BUFFER_BYTES: usize = 256 * 1024;

/// What a connection's driving task reports to the pool.
#[derive(Debug, Default)]
struct ConnectionState {
    /// The connection takes no new streams (it ended, or a request could not be sent on it).
    ended: Cell<bool>,
    /// How it failed, if it did; counted once, by the pool, when it drops the connection.
    failure: Cell<Option<H2cConnectionError>>,
}

#[derive(Debug)]
struct Connection {
    send: SendRequest<Bytes>,
    state: Rc<ConnectionState>,
    open_streams: Cell<usize>,
    idle_since: Cell<Instant>,
}

impl Connection {
    fn has_room(&self) -> bool {
        !self.state.ended.get()
            && self.open_streams.get()
                < MAX_STREAMS_PER_CONNECTION.min(self.send.current_max_send_streams())
    }
}

#[derive(Debug, Default)]
struct EndpointConnections {
    connections: Vec<Rc<Connection>>,
    /// Set while a request connects; the others wait for it instead of connecting too.
    connecting: Option<Rc<Notify>>,
}

/// This shard's h2c backend connections, by endpoint.
#[derive(Debug, Default)]
pub struct H2cPool {
    endpoints: RefCell<HashMap<SocketAddr, EndpointConnections>>,
}

/// A stream's place on a connection, held while the exchange lasts.
#[derive(Debug)]
pub struct H2cStream {
    connection: Rc<Connection>,
    pub endpoint: SocketAddr,
    /// The connection carried streams before (a failure to send on it makes a retry safe).
    pub reused: bool,
}

impl H2cStream {
    /// A handle that sends requests on the stream's connection.
    pub(crate) fn sender(&self) -> SendRequest<Bytes> {
        self.connection.send.clone()
    }

    /// The connection takes no new streams (a request could not be sent on it).
    pub(crate) fn end_connection(&self) {
        self.connection.state.ended.set(true);
    }
}

impl Drop for H2cStream {
    fn drop(&mut self) {
        let open = self.connection.open_streams.get().saturating_sub(1);
        self.connection.open_streams.set(open);
        if open == 0 {
            self.connection.idle_since.set(Instant::now());
        }
    }
}

/// Why no stream could be had.
#[derive(Debug, thiserror::Error)]
pub enum H2cConnectError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("HTTP/2 preface with {0} failed")]
    Handshake(SocketAddr),
}

/// Clears an endpoint's `connecting` mark and wakes its waiters, also when the connecting
/// request is dropped half-way (its client left).
struct ConnectingGuard<'a> {
    pool: &'a H2cPool,
    endpoint: SocketAddr,
    notify: Rc<Notify>,
}

impl Drop for ConnectingGuard<'_> {
    fn drop(&mut self) {
        if let Some(e) = self.pool.endpoints.borrow_mut().get_mut(&self.endpoint) {
            e.connecting = None;
        }
        self.notify.notify_waiters();
    }
}

impl H2cPool {
    /// A stream on a connection to `endpoint` with room, or on a new one (`fresh`: always a
    /// new one).
    pub async fn stream(
        &self,
        endpoint: SocketAddr,
        connect_timeout: Duration,
        fresh: bool,
        tcp_pool: &BackendPool,
        metrics: &ShardMetrics,
    ) -> Result<H2cStream, H2cConnectError> {
        loop {
            let wait = {
                let mut endpoints = self.endpoints.borrow_mut();
                let entry = endpoints.entry(endpoint).or_default();
                forget_ended(entry, endpoint, metrics);
                if !fresh && let Some(c) = entry.connections.iter().find(|c| c.has_room()) {
                    return Ok(open_stream(c, endpoint, true));
                }
                match &entry.connecting {
                    Some(notify) if !fresh => Some(Rc::clone(notify)),
                    _ => None,
                }
            };
            match wait {
                Some(notify) => {
                    // Registered before the await: a wake-up cannot be missed (one thread).
                    // The connect and the preface each take at most `connect_timeout`.
                    let _ = monoio::time::timeout(connect_timeout * 2, notify.notified()).await;
                }
                None => {
                    return self
                        .connect(endpoint, connect_timeout, tcp_pool, metrics)
                        .await;
                }
            }
        }
    }

    async fn connect(
        &self,
        endpoint: SocketAddr,
        connect_timeout: Duration,
        tcp_pool: &BackendPool,
        metrics: &ShardMetrics,
    ) -> Result<H2cStream, H2cConnectError> {
        let notify = Rc::new(Notify::new());
        self.endpoints
            .borrow_mut()
            .entry(endpoint)
            .or_default()
            .connecting = Some(Rc::clone(&notify));
        let _guard = ConnectingGuard {
            pool: self,
            endpoint,
            notify,
        };
        let tcp = tcp_pool.connect(endpoint, connect_timeout).await?.tcp;
        let handshake_failed = || {
            metrics.backend_h2_connection_error(endpoint, H2cConnectionError::Handshake);
            H2cConnectError::Handshake(endpoint)
        };
        let tcp = tcp.try_into_poll_io().map_err(|_| handshake_failed())?;
        let handshake = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
            .max_header_list_size(MAX_HEADER_LIST_BYTES)
            .max_send_buffer_size(MAX_SEND_BUFFER_BYTES)
            .enable_push(false)
            .handshake::<_, Bytes>(tcp);
        let (send, driver) = match monoio::time::timeout(connect_timeout, handshake).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => {
                debug!(%endpoint, error = %e, "h2c preface failed");
                return Err(handshake_failed());
            }
            Err(_) => return Err(handshake_failed()),
        };
        let state = Rc::new(ConnectionState::default());
        let task_state = Rc::clone(&state);
        monoio::spawn(async move {
            if let Err(e) = driver.await {
                debug!(%endpoint, error = %e, "h2c backend connection failed");
                task_state.failure.set(Some(H2cConnectionError::of(&e)));
            }
            task_state.ended.set(true);
        });
        let connection = Rc::new(Connection {
            send,
            state,
            open_streams: Cell::new(0),
            idle_since: Cell::new(Instant::now()),
        });
        let stream = open_stream(&connection, endpoint, false);
        self.endpoints
            .borrow_mut()
            .entry(endpoint)
            .or_default()
            .connections
            .push(connection);
        Ok(stream)
    }

    /// Closes connections idle for [`MAX_IDLE_REUSE_AGE`] (dropping our handle ends the
    /// connection: the h2 client closes once no handle and no stream is left) and forgets
    /// ended ones (the shard calls this every [`crate::backend::STALE_SWEEP_INTERVAL`]).
    pub fn close_stale(&self, metrics: &ShardMetrics) {
        let now = Instant::now();
        self.endpoints.borrow_mut().retain(|endpoint, entry| {
            forget_ended(entry, *endpoint, metrics);
            entry.connections.retain(|c| {
                c.open_streams.get() > 0
                    || now.saturating_duration_since(c.idle_since.get()) < MAX_IDLE_REUSE_AGE
            });
            !entry.connections.is_empty() || entry.connecting.is_some()
        });
    }

    /// Connections held now, over all endpoints.
    pub fn connection_count(&self) -> usize {
        self.endpoints
            .borrow()
            .values()
            .map(|e| e.connections.len())
            .sum()
    }
}

fn open_stream(connection: &Rc<Connection>, endpoint: SocketAddr, reused: bool) -> H2cStream {
    connection
        .open_streams
        .set(connection.open_streams.get() + 1);
    H2cStream {
        connection: Rc::clone(connection),
        endpoint,
        reused,
    }
}

/// Drops the endpoint's ended connections, counting those that failed.
fn forget_ended(entry: &mut EndpointConnections, endpoint: SocketAddr, metrics: &ShardMetrics) {
    entry.connections.retain(|c| {
        if !c.state.ended.get() {
            return true;
        }
        if let Some(failure) = c.state.failure.take() {
            metrics.backend_h2_connection_error(endpoint, failure);
        }
        false
    });
}
