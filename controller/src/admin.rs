//! The controller's admin endpoint: `/healthz` (alive), `/readyz` (watch caches synced),
//! `/metrics` (Prometheus text: leadership and write counters), served by the shared admin
//! server (`portcullis_admin_http`: concurrent connections, a deadline each, bounded heads)
//! on the controller's runtime.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use portcullis_admin_http::{PROMETHEUS_TEXT, Reply, Routes, StatusCode};
use tokio::net::TcpListener;
use tracing::info;

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

impl Routes for ControllerMetrics {
    fn reply(&self, path: &str) -> Option<Reply> {
        match path {
            "/healthz" => Some(Reply::text(StatusCode::OK, "ok\n")),
            "/readyz" if self.synced.load(Ordering::Relaxed) => {
                Some(Reply::text(StatusCode::OK, "ready\n"))
            }
            "/readyz" => Some(Reply::text(
                StatusCode::SERVICE_UNAVAILABLE,
                "waiting for the watch caches\n",
            )),
            "/metrics" => Some(Reply {
                status: StatusCode::OK,
                content_type: PROMETHEUS_TEXT,
                body: self.render(),
            }),
            _ => None,
        }
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
    tokio::spawn(portcullis_admin_http::serve(listener, metrics));
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// A bound against hangs, not a timing assertion.
    const PATIENCE: Duration = Duration::from_secs(10);

    /// Sends `request` and reads the answer to the end (what arrived before an error).
    async fn exchange(admin: SocketAddr, request: &[u8]) -> String {
        let mut tcp = TcpStream::connect(admin).await.expect("connect");
        // The server may answer and close before it has all of the request.
        let _ = tcp.write_all(request).await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut answer)).await;
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[tokio::test]
    async fn an_oversized_request_head_is_refused_and_probes_still_answer() {
        let metrics = Arc::new(ControllerMetrics::default());
        let admin = spawn(SocketAddr::from(([127, 0, 0, 1], 0)), metrics)
            .await
            .expect("admin endpoint");
        let oversized = format!(
            "GET /healthz HTTP/1.1\r\nHost: admin\r\nx-big: {}\r\n\r\n",
            "a".repeat(1024 * 1024)
        );
        let answer = exchange(admin, oversized.as_bytes()).await;
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 431 "),
            "answered: {answer}"
        );
        let answer = exchange(admin, b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 200 "), "answered: {answer}");
    }

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
