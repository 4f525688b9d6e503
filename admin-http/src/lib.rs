//! The HTTP server behind the admin endpoints of the data plane (`portcullis serve`) and of the
//! controller (`portcullis controller`): probes, metrics and the data plane's `/config`.
//!
//! hyper's HTTP/1 server does the protocol, so this module only sets the limits an endpoint
//! that anything on the network can reach needs (in Kubernetes the probe port listens on the
//! pod address, so every pod in the cluster is a client):
//!
//! - Every connection is its own task: a slow or stalled client never delays another.
//! - A client has [`HEAD_READ_TIMEOUT`] to send its request head (hyper's header read timeout,
//!   which runs from the connection's start, whatever arrives meanwhile), and the whole
//!   connection ends at [`CONNECTION_DEADLINE`], answered or not.
//! - A request head larger than [`MAX_REQUEST_HEAD_BYTES`] is answered 431 by hyper.
//! - GET and HEAD only (405 otherwise), and no request body (413): probes and scrapes send
//!   neither, so refusing them keeps the server from reading anything unbounded.
//! - One request per connection (no keep-alive): kubelet probes open a connection each time,
//!   and a connection that cannot outlive its deadline needs no idle timeout.
//! - At most [`MAX_CONNECTIONS`] at once; beyond that new connections wait in the listen
//!   backlog until one ends (each ends by its deadline), so that a flood of clients cannot
//!   take the file descriptors the data plane's shards need.
//!
//! [`Routes::reply`] may block: the data plane's `/metrics` waits up to a couple of seconds
//! for its shards. Replies are therefore computed on tokio's blocking pool, so that one slow
//! scrape does not hold `/healthz` on the data plane's one-thread runtime.
//!
//! Why a crate of its own: the data plane (`portcullis-runtime`) and the controller
//! (`portcullis-controller`) both serve an admin endpoint, neither may depend on the other,
//! and the core has no IO.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

pub use hyper::StatusCode;

/// How long a client has, from connecting, to send its request head. Probes and scrapes send
/// theirs in one packet.
pub const HEAD_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// When a connection ends, answered or not: the head, the reply (the data plane's scrape waits
/// up to 2 s for its shards) and writing it. Below Prometheus' default 10 s scrape timeout.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(8);

/// The largest request head (request line and headers) accepted: a probe or a scrape sends a
/// few hundred bytes. hyper's smallest read buffer is this size too.
pub const MAX_REQUEST_HEAD_BYTES: usize = 8 * 1024;

/// Connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 256;

/// After a failed accept (out of file descriptors, typically), wait this long before the next
/// one rather than spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Plain text, for probes and errors.
pub const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

/// Prometheus' text exposition format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One answer of an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: String,
}

impl Reply {
    /// A plain-text reply.
    pub fn text(status: StatusCode, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: TEXT_PLAIN,
            body: body.into(),
        }
    }
}

/// What one admin listener serves.
pub trait Routes: Send + Sync + 'static {
    /// The reply to a GET or HEAD of `path` (without the query), `None` when nothing is there.
    /// May block (it runs on the blocking pool).
    fn reply(&self, path: &str) -> Option<Reply>;
}

/// Requests the server refuses by itself, before any route sees them: all the client's doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// Anything but GET or HEAD.
    Method,
    /// A request with a body.
    Body,
    /// No route for the path.
    NotFound,
}

impl Refusal {
    fn reply(self) -> Reply {
        match self {
            Refusal::Method => Reply::text(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed: GET or HEAD\n",
            ),
            Refusal::Body => Reply::text(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request bodies are not accepted\n",
            ),
            Refusal::NotFound => Reply::text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

/// Binds `address` for [`spawn_thread`] (binding first, so the caller reports a taken port).
pub fn bind(address: SocketAddr) -> io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(address)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Serves each listener with its routes on a new thread named `name`, on a one-thread tokio
/// runtime of its own (the data plane keeps its shards' threads free of admin traffic).
pub fn spawn_thread(
    name: &str,
    endpoints: Vec<(std::net::TcpListener, Arc<dyn Routes>)>,
) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    // Registered with the runtime here, so that the caller hears of a failure.
    let endpoints = {
        let _runtime = runtime.enter();
        endpoints
            .into_iter()
            .map(|(listener, routes)| Ok((TcpListener::from_std(listener)?, routes)))
            .collect::<io::Result<Vec<_>>>()?
    };
    thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            runtime.block_on(async move {
                let mut servers = tokio::task::JoinSet::new();
                for (listener, routes) in endpoints {
                    servers.spawn(serve(listener, routes));
                }
                while servers.join_next().await.is_some() {}
            });
        })?;
    Ok(())
}

/// Accepts and serves connections on `listener` until the runtime stops.
pub async fn serve(listener: TcpListener, routes: Arc<dyn Routes>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return; // never closed
        };
        match listener.accept().await {
            Ok((stream, peer)) => {
                let routes = Arc::clone(&routes);
                tokio::spawn(async move {
                    serve_connection(stream, peer, routes).await;
                    drop(slot);
                });
            }
            Err(e) => {
                warn!(error = %e, "admin accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

async fn serve_connection(stream: TcpStream, peer: SocketAddr, routes: Arc<dyn Routes>) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEAD_READ_TIMEOUT)
        .max_header_size(MAX_REQUEST_HEAD_BYTES)
        .keep_alive(false);
    let connection = http.serve_connection(
        TokioIo::new(stream),
        service_fn(move |request| answer(Arc::clone(&routes), request)),
    );
    // Errors here are the client's (a bad or late head, a reset): worth a debug line only.
    match tokio::time::timeout(CONNECTION_DEADLINE, connection).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(%peer, error = %e, "admin connection failed"),
        Err(_) => debug!(%peer, "admin connection cut at its deadline"),
    }
}

async fn answer(
    routes: Arc<dyn Routes>,
    request: Request<Incoming>,
) -> Result<Response<String>, Infallible> {
    let reply = if !matches!(*request.method(), Method::GET | Method::HEAD) {
        Refusal::Method.reply()
    } else if !request.body().is_end_stream() {
        Refusal::Body.reply()
    } else {
        let path = request.uri().path().to_owned();
        match tokio::task::spawn_blocking(move || routes.reply(&path)).await {
            Ok(Some(reply)) => reply,
            Ok(None) => Refusal::NotFound.reply(),
            Err(e) => {
                warn!(error = %e, "admin route failed");
                Reply::text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
            }
        }
    };
    let mut response = Response::new(reply.body);
    *response.status_mut() = reply.status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(reply.content_type));
    if reply.status == StatusCode::METHOD_NOT_ALLOWED {
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    Ok(response)
}
