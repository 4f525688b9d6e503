//! The processes under test: `portcullis serve` and the `portcullis echo` backends, as child
//! processes (killed when dropped, so that a failed soak leaves nothing running), and what the
//! soak reads about the gateway: `/proc` (resident memory, open file descriptors) and the
//! admin endpoint's `/metrics`.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How often a wait for something (a port, readiness, a gauge) checks again.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// An admin request has this long; the admin endpoint answers in milliseconds.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A child process that is killed when dropped.
#[derive(Debug)]
pub struct Process {
    child: Child,
    pub name: String,
}

impl Process {
    fn spawn(name: String, command: &mut Command, log: &Path) -> io::Result<Process> {
        let log = File::options().create(true).append(true).open(log)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        Ok(Process { child, name })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) -> io::Result<()> {
        self.child.kill()?;
        self.child.wait().map(drop)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// `portcullis echo --listen ADDR`, waited for until it accepts connections.
pub fn start_echo(
    binary: &Path,
    listen: SocketAddr,
    log: &Path,
    patience: Duration,
) -> io::Result<Process> {
    let mut process = Process::spawn(
        format!("echo {listen}"),
        Command::new(binary)
            .arg("echo")
            .arg("--listen")
            .arg(listen.to_string()),
        log,
    )?;
    let deadline = Instant::now() + patience;
    loop {
        if TcpStream::connect_timeout(&listen, POLL_INTERVAL).is_ok() {
            return Ok(process);
        }
        if !process.running() || Instant::now() >= deadline {
            return Err(io::Error::other(format!(
                "echo backend on {listen} did not start listening (see {})",
                log.display()
            )));
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// How the gateway is started.
#[derive(Debug, Clone)]
pub struct GatewayCommand {
    pub binary: PathBuf,
    pub manifests: PathBuf,
    pub gateway_class: String,
    pub admin: SocketAddr,
    /// Further flags (timeouts, limits).
    pub flags: Vec<String>,
    pub log: PathBuf,
}

/// `portcullis serve --manifests DIR`, waited for until `/readyz` answers 200.
pub fn start_gateway(command: &GatewayCommand, patience: Duration) -> io::Result<Process> {
    let mut process = Process::spawn(
        "portcullis serve".to_owned(),
        Command::new(&command.binary)
            .arg("serve")
            .arg("--manifests")
            .arg(&command.manifests)
            .arg("--gateway-class")
            .arg(&command.gateway_class)
            .arg("--admin")
            .arg(command.admin.to_string())
            .args(&command.flags),
        &command.log,
    )?;
    let deadline = Instant::now() + patience;
    loop {
        if matches!(admin_get(command.admin, "/readyz"), Ok((200, _))) {
            return Ok(process);
        }
        if !process.running() || Instant::now() >= deadline {
            return Err(io::Error::other(format!(
                "the gateway did not become ready (see {})",
                command.log.display()
            )));
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// `GET path` on the admin endpoint: the status and the body.
pub fn admin_get(admin: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let mut tcp = TcpStream::connect_timeout(&admin, ADMIN_TIMEOUT)?;
    tcp.set_read_timeout(Some(ADMIN_TIMEOUT))?;
    tcp.set_write_timeout(Some(ADMIN_TIMEOUT))?;
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nhost: {admin}\r\nconnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    tcp.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("admin {path}: no status line")))?;
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_owned();
    Ok((status, body))
}

/// The sum of a metric's samples over all its label sets (0 when absent).
pub fn metric_sum(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let value = match rest.as_bytes().first() {
                Some(b'{') => rest.rsplit_once('}')?.1,
                Some(b' ') => rest,
                _ => return None,
            };
            value.trim().parse::<f64>().ok()
        })
        .sum()
}

/// A value the soak reads from `/metrics`.
#[derive(Debug, Clone, Copy)]
pub struct Gauges {
    /// Client connections open, over all shards.
    pub open_connections: u64,
    pub handshakes_in_progress: u64,
    /// Idle pooled connections to backends.
    pub idle_backend_connections: u64,
    pub reloads_applied: u64,
    pub reloads_rejected: u64,
}

pub fn read_gauges(admin: SocketAddr) -> io::Result<Gauges> {
    let (_, metrics) = admin_get(admin, "/metrics")?;
    // Counts are integers; the text format writes them as such.
    let count = |name: &str| metric_sum(&metrics, name) as u64;
    let reloads = |outcome: &str| {
        metric_sum(
            &metrics,
            &format!("portcullis_config_reloads_total{{outcome=\"{outcome}\"}}"),
        ) as u64
    };
    Ok(Gauges {
        open_connections: count("portcullis_shard_open_connections"),
        handshakes_in_progress: count("portcullis_shard_handshakes_in_progress"),
        idle_backend_connections: count("portcullis_shard_idle_backend_connections"),
        reloads_applied: reloads("applied"),
        reloads_rejected: reloads("rejected"),
    })
}

/// Waits (at most `patience`) until the gateway holds no client connection, no handshake and
/// no idle backend connection (those close after the pool's reuse age), so that a sample
/// counts only what the gateway keeps for good. Returns the last gauges read.
pub fn wait_until_settled(admin: SocketAddr, patience: Duration) -> io::Result<Gauges> {
    let deadline = Instant::now() + patience;
    loop {
        let gauges = read_gauges(admin)?;
        let settled = gauges.open_connections == 0
            && gauges.handshakes_in_progress == 0
            && gauges.idle_backend_connections == 0;
        if settled || Instant::now() >= deadline {
            return Ok(gauges);
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// Resident memory of a process (`VmRSS` of /proc/PID/status).
pub fn rss_bytes(pid: u32) -> io::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| {
            let kib = line.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?;
            kib.trim().parse::<u64>().ok()
        })
        .map(|kib| kib * 1024)
        .ok_or_else(|| io::Error::other(format!("/proc/{pid}/status has no VmRSS")))
}

/// Open file descriptors of a process (entries of /proc/PID/fd).
pub fn open_fds(pid: u32) -> io::Result<u64> {
    Ok(fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64)
}

/// Counts of what the gateway logged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogCounts {
    pub panics: u64,
    pub errors: u64,
    pub warnings: u64,
}

/// Counts panics and ERROR and WARN lines in a text-format log.
pub fn count_log(text: &str) -> LogCounts {
    let mut counts = LogCounts::default();
    for line in text.lines() {
        if line.contains("panicked at") {
            counts.panics += 1;
        } else if line.contains(" ERROR ") {
            counts.errors += 1;
        } else if line.contains(" WARN ") {
            counts.warnings += 1;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sums_add_label_sets_and_skip_other_names() {
        let text = "# TYPE portcullis_shard_open_connections gauge\n\
                    portcullis_shard_open_connections{shard=\"0\"} 3\n\
                    portcullis_shard_open_connections{shard=\"1\"} 4\n\
                    portcullis_shard_open_connections_total 100\n\
                    portcullis_config_generation 7\n\
                    portcullis_config_reloads_total{outcome=\"applied\"} 5\n\
                    portcullis_config_reloads_total{outcome=\"rejected\"} 0\n";
        assert_eq!(metric_sum(text, "portcullis_shard_open_connections"), 7.0);
        assert_eq!(metric_sum(text, "portcullis_config_generation"), 7.0);
        assert_eq!(
            metric_sum(text, "portcullis_config_reloads_total{outcome=\"applied\"}"),
            5.0
        );
        assert_eq!(metric_sum(text, "portcullis_missing"), 0.0);
    }

    #[test]
    fn log_lines_are_counted_by_level() {
        let log = "2026-01-01T00:00:00Z  INFO portcullis: listening\n\
                   2026-01-01T00:00:01Z  WARN portcullis: accept failed\n\
                   2026-01-01T00:00:02Z ERROR portcullis: manifests not applied\n\
                   thread 'shard-0' panicked at runtime/src/http.rs:1:1:\n";
        assert_eq!(
            count_log(log),
            LogCounts {
                panics: 1,
                errors: 1,
                warnings: 1
            }
        );
    }

    #[test]
    fn this_process_has_memory_and_descriptors() {
        let pid = std::process::id();
        assert!(rss_bytes(pid).unwrap() > 0);
        // stdin, stdout, stderr at least.
        assert!(open_fds(pid).unwrap() >= 3);
        assert!(rss_bytes(u32::MAX).is_err());
    }
}
