//! Logging setup (text or JSON) and a shard-local rate limiter for noisy log lines.

use std::cell::Cell;
use std::io::IsTerminal;
use std::time::Instant;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber: `RUST_LOG` filters (default `info`), stderr output, with
/// colours only when stderr is a terminal (a file or a pipe gets plain text).
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // A second init (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// A token bucket for one shard's log lines: `rate` lines per second, bursts of twice that.
/// Lines over the limit are counted and the count is reported with the next line let through.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    tokens: Cell<f64>,
    last: Cell<Instant>,
    suppressed: Cell<u64>,
}

impl RateLimiter {
    pub fn new(rate: f64) -> Self {
        Self {
            rate,
            tokens: Cell::new(rate * 2.0),
            last: Cell::new(Instant::now()),
            suppressed: Cell::new(0),
        }
    }

    /// `Some(n)`: log this line, and say that `n` were suppressed before it. `None`: drop it.
    pub fn allow(&self) -> Option<u64> {
        let now = Instant::now();
        let refill = now.duration_since(self.last.get()).as_secs_f64() * self.rate;
        self.last.set(now);
        let tokens = (self.tokens.get() + refill).min(self.rate * 2.0);
        if tokens >= 1.0 {
            self.tokens.set(tokens - 1.0);
            Some(self.suppressed.replace(0))
        } else {
            self.tokens.set(tokens);
            self.suppressed.set(self.suppressed.get() + 1);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_suppresses_and_reports_the_count() {
        let limiter = RateLimiter::new(1.0);
        assert_eq!(limiter.allow(), Some(0));
        assert_eq!(limiter.allow(), Some(0));
        assert_eq!(limiter.allow(), None);
        assert_eq!(limiter.allow(), None);
        limiter.tokens.set(1.0);
        assert_eq!(limiter.allow(), Some(2));
    }
}
