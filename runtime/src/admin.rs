//! The admin endpoint (`--admin ADDR`): plain HTTP on its own thread, off the shards.
//!
//! - `/healthz`: the process is alive.
//! - `/readyz`: every shard applied a config snapshot and listens on each of its ports, and the
//!   process is not draining (else 503, naming the ports not served and why).
//! - `/metrics`: Prometheus text format, summed over shards at scrape time.
//! - `/config`: the snapshot in force as YAML (private keys redacted), with each shard's
//!   applied generation.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use portcullis_core::compile::Snapshot;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::metrics::{self, ProcessMetrics};
use crate::shard::ShardHandles;

/// The default admin address: loopback only, since `/config` describes the whole setup.
pub const DEFAULT_ADMIN_ADDRESS: &str = "127.0.0.1:9901";

/// How long a scrape waits for a shard's counters; a shard that is stuck is left out rather
/// than hanging the scrape (Prometheus' own timeout is usually 10 s).
const SCRAPE_SHARD_TIMEOUT: Duration = Duration::from_secs(2);

/// An admin client has this long to send its request and read the answer; probes and scrapes
/// are quick, and the admin thread serves one connection at a time.
const ADMIN_IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Control-plane facts the admin endpoint reports. Written on config changes and shutdown,
/// never by the shards' connection path.
#[derive(Debug, Default)]
pub struct ControlState {
    pub draining: AtomicBool,
    pub reloads_applied: AtomicU64,
    pub reloads_rejected: AtomicU64,
}

/// What the admin thread reads.
#[derive(Debug, Clone)]
pub struct AdminContext {
    pub shards: ShardHandles,
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    pub control: Arc<ControlState>,
}

/// Binds `address` and serves the admin endpoint on a new thread.
pub fn spawn(address: SocketAddr, ctx: AdminContext) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(address)?;
    let bound = listener.local_addr()?;
    thread::Builder::new()
        .name("admin".to_owned())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => {
                        if let Err(e) = handle(stream, &ctx) {
                            warn!(error = %e, "admin request failed");
                        }
                    }
                    Err(e) => warn!(error = %e, "admin accept failed"),
                }
            }
        })?;
    info!(address = %bound, "admin endpoint listening");
    Ok(bound)
}

fn handle(stream: TcpStream, ctx: &AdminContext) -> io::Result<()> {
    stream.set_read_timeout(Some(ADMIN_IO_TIMEOUT))?;
    stream.set_write_timeout(Some(ADMIN_IO_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Read (and ignore) the headers so the client is not reset before it reads the answer.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default();
    let path = parts.next().unwrap_or_default();
    let path = path.split('?').next().unwrap_or_default();
    let (status, content_type, body) = match (method, path) {
        ("GET" | "HEAD", "/healthz") => (200, "text/plain", "ok\n".to_owned()),
        ("GET" | "HEAD", "/readyz") => readiness(ctx),
        ("GET" | "HEAD", "/metrics") => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            render_metrics(ctx),
        ),
        ("GET" | "HEAD", "/config") => config(ctx),
        ("GET" | "HEAD", _) => (404, "text/plain", "not found\n".to_owned()),
        _ => (405, "text/plain", "method not allowed\n".to_owned()),
    };
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let mut out = stream;
    write!(
        out,
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )?;
    if method != "HEAD" {
        out.write_all(body.as_bytes())?;
    }
    out.flush()
}

fn readiness(ctx: &AdminContext) -> (u16, &'static str, String) {
    if ctx.control.draining.load(Ordering::Acquire) {
        (503, "text/plain", "draining\n".to_owned())
    } else if !ctx.shards.all_applied() {
        (503, "text/plain", "waiting for configuration\n".to_owned())
    } else if let unserved = ctx.shards.unserved_ports()
        && !unserved.is_empty()
    {
        let mut body = String::new();
        for (port, why) in unserved {
            body.push_str(&format!("port {port} not served: {why}\n"));
        }
        (503, "text/plain", body)
    } else {
        (200, "text/plain", "ready\n".to_owned())
    }
}

/// The summed metrics as Prometheus text (also used by tests).
pub fn render_metrics(ctx: &AdminContext) -> String {
    let sample = ctx.shards.sample_metrics(SCRAPE_SHARD_TIMEOUT);
    let process = ProcessMetrics {
        published_generation: ctx.snapshots.borrow().generation,
        shards: ctx
            .shards
            .status
            .iter()
            .map(|s| {
                (
                    s.applied_generation.load(Ordering::Acquire),
                    s.driver().map(|d| d.as_str()),
                )
            })
            .collect(),
        reloads_applied: ctx.control.reloads_applied.load(Ordering::Relaxed),
        reloads_rejected: ctx.control.reloads_rejected.load(Ordering::Relaxed),
        draining: ctx.control.draining.load(Ordering::Acquire),
    };
    metrics::render(&sample, &process)
}

#[derive(serde::Serialize)]
struct ConfigView<'a> {
    generation: u64,
    shard_generations: Vec<u64>,
    config: &'a portcullis_core::desired::DesiredConfig,
}

fn config(ctx: &AdminContext) -> (u16, &'static str, String) {
    let snapshot = Arc::clone(&ctx.snapshots.borrow());
    let view = ConfigView {
        generation: snapshot.generation,
        shard_generations: ctx
            .shards
            .status
            .iter()
            .map(|s| s.applied_generation.load(Ordering::Acquire))
            .collect(),
        config: &snapshot.desired,
    };
    match serde_yaml::to_string(&view) {
        Ok(yaml) => (200, "application/yaml", yaml),
        Err(e) => (
            500,
            "text/plain",
            format!("cannot render the config: {e}\n"),
        ),
    }
}
