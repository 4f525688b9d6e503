//! The controller's admin endpoint: `/healthz` (alive), `/readyz` (watch caches synced),
//! `/metrics` (Prometheus text: leadership and write counters). Plain HTTP/1.0-style, one
//! request per connection: it serves probes and scrapes, nothing else.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tracing::{info, warn};

/// A client has this long to send its request line and read the answer.
const ADMIN_IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest request head read; probes and scrapes send a few hundred bytes.
const MAX_HEAD_LINES: usize = 100;

/// What the controller reports. Written by the control task, read by scrapes.
#[derive(Debug, Default)]
pub struct ControllerMetrics {
    pub leader: AtomicBool,
    pub synced: AtomicBool,
    pub reconciles: AtomicU64,
    pub status_writes: AtomicU64,
    pub objects_applied: AtomicU64,
    pub objects_deleted: AtomicU64,
    pub write_failures: AtomicU64,
}

impl ControllerMetrics {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let gauge = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
            );
        };
        let counter = |out: &mut String, name: &str, help: &str, value: &AtomicU64| {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
                value.load(Ordering::Relaxed)
            );
        };
        gauge(
            &mut out,
            "portcullis_controller_leader",
            "1 while this replica holds the lease and writes.",
            u64::from(self.leader.load(Ordering::Relaxed)),
        );
        gauge(
            &mut out,
            "portcullis_controller_synced",
            "1 once every watch listed everything.",
            u64::from(self.synced.load(Ordering::Relaxed)),
        );
        counter(
            &mut out,
            "portcullis_controller_reconciles_total",
            "Translations acted on as leader.",
            &self.reconciles,
        );
        counter(
            &mut out,
            "portcullis_controller_status_writes_total",
            "Status subresources written.",
            &self.status_writes,
        );
        counter(
            &mut out,
            "portcullis_controller_objects_applied_total",
            "Provisioned objects created or updated.",
            &self.objects_applied,
        );
        counter(
            &mut out,
            "portcullis_controller_objects_deleted_total",
            "Provisioned objects deleted.",
            &self.objects_deleted,
        );
        counter(
            &mut out,
            "portcullis_controller_write_failures_total",
            "Writes that failed (retried).",
            &self.write_failures,
        );
        out
    }
}

/// Binds `address` and serves on the current tokio runtime.
pub async fn spawn(
    address: SocketAddr,
    metrics: Arc<ControllerMetrics>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    info!(address = %bound, "controller admin endpoint listening");
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let metrics = Arc::clone(&metrics);
                    tokio::spawn(async move {
                        if tokio::time::timeout(ADMIN_IO_TIMEOUT, handle(stream, &metrics))
                            .await
                            .is_err()
                        {
                            warn!("admin request timed out");
                        }
                    });
                }
                Err(e) => warn!(error = %e, "admin accept failed"),
            }
        }
    });
    Ok(bound)
}

async fn handle(stream: TcpStream, metrics: &ControllerMetrics) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).await.is_err() {
        return;
    }
    // Read the rest of the head so the client is not reset before it reads the answer.
    let mut line = String::new();
    for _ in 0..MAX_HEAD_LINES {
        line.clear();
        match reader.read_line(&mut line).await {
            Ok(n) if n > 2 => {}
            _ => break,
        }
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default();
    let path = parts
        .next()
        .unwrap_or_default()
        .split('?')
        .next()
        .unwrap_or_default();
    let (status, body) = match (method, path) {
        ("GET" | "HEAD", "/healthz") => ("200 OK", "ok\n".to_owned()),
        ("GET" | "HEAD", "/readyz") => {
            if metrics.synced.load(Ordering::Relaxed) {
                ("200 OK", "ready\n".to_owned())
            } else {
                (
                    "503 Service Unavailable",
                    "waiting for the watch caches\n".to_owned(),
                )
            }
        }
        ("GET" | "HEAD", "/metrics") => ("200 OK", metrics.render()),
        ("GET" | "HEAD", _) => ("404 Not Found", "not found\n".to_owned()),
        _ => ("405 Method Not Allowed", "method not allowed\n".to_owned()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = write.write_all(head.as_bytes()).await;
    if method != "HEAD" {
        let _ = write.write_all(body.as_bytes()).await;
    }
    let _ = write.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_as_prometheus_text() {
        let metrics = ControllerMetrics::default();
        metrics.leader.store(true, Ordering::Relaxed);
        metrics.status_writes.fetch_add(3, Ordering::Relaxed);
        let text = metrics.render();
        assert!(
            text.contains("\nportcullis_controller_leader 1\n"),
            "{text}"
        );
        assert!(
            text.contains("\nportcullis_controller_status_writes_total 3\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE portcullis_controller_synced gauge"),
            "{text}"
        );
    }
}
