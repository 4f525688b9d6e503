//! Limits and timeouts of the data plane, each with its default and the reason for it.

use std::time::Duration;

use clap::Args;

/// Time for a client to complete the TLS handshake after connecting. Ten seconds covers slow
/// mobile links and stops idle or stalled sockets from holding handshake state longer.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time to receive a whole request head once its first byte arrived (slowloris guard).
pub const DEFAULT_REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a keep-alive connection may sit idle between requests, and the longest pause
/// while a request body streams in. Matches common load-balancer idle timeouts (60 s).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest request head (request line and headers). Larger gets 431. 32 KiB fits every
/// header set browsers and API clients send, including large cookies and JWTs.
pub const DEFAULT_MAX_REQUEST_HEAD_BYTES: usize = 32 * 1024;
/// Time to establish a TCP connection to a backend endpoint before trying 502.
pub const DEFAULT_BACKEND_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for a backend to start its response (and the longest pause inside it); then 504.
pub const DEFAULT_BACKEND_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a shard skips a backend endpoint after connecting to it was refused or timed out
/// (passive health checking, see `backend`). Ten seconds covers the usual time for a pod that
/// went away to leave its EndpointSlice, and brings a restarted one back soon after.
pub const DEFAULT_BACKEND_EJECTION_TIME: Duration = Duration::from_secs(10);
/// Longest accepted `--backend-ejection-time`: an endpoint that must be skipped for longer is
/// better taken out of its Service (and beyond this the clock arithmetic could overflow).
pub const MAX_BACKEND_EJECTION_TIME: Duration = Duration::from_secs(3600);
/// How long a WebSocket tunnel may carry no byte in either direction before both of its
/// connections are closed. WebSocket clients and servers keep their connections alive with
/// pings, commonly every 30 to 60 seconds; five minutes tolerates a few missed ones and still
/// frees the backend connection of a tunnel both sides abandoned.
pub const DEFAULT_WEBSOCKET_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Connections one shard serves at once; more are closed on accept. Bounds memory per core
/// (about 64 MiB of connection state per shard at the default).
pub const DEFAULT_MAX_CONNECTIONS_PER_SHARD: usize = 16 * 1024;

/// The limits as configured; one copy per shard.
#[derive(Debug, Clone, Args)]
pub struct Limits {
    /// TLS handshake timeout.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub handshake_timeout: Duration,
    /// Request-head read timeout (from the first byte of a request to the end of its head).
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub request_head_timeout: Duration,
    /// Idle keep-alive timeout between requests (also the longest pause in a request body).
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub idle_timeout: Duration,
    /// Largest request head in bytes; larger gets 431.
    #[arg(long, default_value_t = DEFAULT_MAX_REQUEST_HEAD_BYTES)]
    pub max_request_head_bytes: usize,
    /// Backend connect timeout.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub backend_connect_timeout: Duration,
    /// Backend response timeout (to the response head, and the longest pause in its body).
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub backend_response_timeout: Duration,
    /// How long a shard skips a backend endpoint whose connect was refused or timed out
    /// (`0s`: never skip one).
    #[arg(long, value_parser = parse_ejection_time, default_value = "10s")]
    pub backend_ejection_time: Duration,
    /// Idle timeout of a WebSocket tunnel (no byte either way).
    #[arg(long, value_parser = parse_duration, default_value = "5m")]
    pub websocket_idle_timeout: Duration,
    /// Maximum concurrent connections per shard.
    #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS_PER_SHARD)]
    pub max_connections_per_shard: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            request_head_timeout: DEFAULT_REQUEST_HEAD_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_request_head_bytes: DEFAULT_MAX_REQUEST_HEAD_BYTES,
            backend_connect_timeout: DEFAULT_BACKEND_CONNECT_TIMEOUT,
            backend_response_timeout: DEFAULT_BACKEND_RESPONSE_TIMEOUT,
            backend_ejection_time: DEFAULT_BACKEND_EJECTION_TIME,
            websocket_idle_timeout: DEFAULT_WEBSOCKET_IDLE_TIMEOUT,
            max_connections_per_shard: DEFAULT_MAX_CONNECTIONS_PER_SHARD,
        }
    }
}

/// Parses `250ms`, `10s`, `2m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?} needs a unit (ms, s, m, h)"))?;
    let (number, unit) = s.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
        "h" => Ok(Duration::from_secs(n.saturating_mul(3600))),
        _ => Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h)")),
    }
}

/// Parses `--backend-ejection-time`: a duration up to [`MAX_BACKEND_EJECTION_TIME`].
fn parse_ejection_time(s: &str) -> Result<Duration, String> {
    let duration = parse_duration(s)?;
    if duration > MAX_BACKEND_EJECTION_TIME {
        return Err(format!(
            "{s:?} is longer than the longest ejection, {}s",
            MAX_BACKEND_EJECTION_TIME.as_secs()
        ));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("5d").is_err());
        assert_eq!(parse_ejection_time("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_ejection_time("1h"), Ok(MAX_BACKEND_EJECTION_TIME));
        assert!(parse_ejection_time("61m").is_err());
    }
}
