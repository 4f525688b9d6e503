//! The watchers' retry policy.

use std::time::Duration;

use ::kube::runtime::utils::Backoff;

/// First retry after a watch or list error.
const FIRST_RETRY: Duration = Duration::from_millis(500);

/// Longest wait between retries. kube's default is 30 s; 5 s bounds how long a CRD installed
/// after the start (its watch fails with 404 until then) or an API server that comes back
/// stays unnoticed, at the cost of one request per 5 s per failing watch.
const MAX_RETRY: Duration = Duration::from_secs(5);

/// Doubling from [`FIRST_RETRY`] up to [`MAX_RETRY`]; the watcher resets it after a success.
#[derive(Debug, Clone)]
pub(crate) struct CappedBackoff {
    next: Duration,
}

impl Default for CappedBackoff {
    fn default() -> Self {
        Self { next: FIRST_RETRY }
    }
}

impl Iterator for CappedBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let current = self.next;
        self.next = current.saturating_mul(2).min(MAX_RETRY);
        Some(current)
    }
}

impl Backoff for CappedBackoff {
    fn reset(&mut self) {
        self.next = FIRST_RETRY;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut backoff = CappedBackoff::default();
        let waits: Vec<Duration> = backoff.by_ref().take(6).collect();
        assert_eq!(waits[0], FIRST_RETRY);
        assert_eq!(waits[1], FIRST_RETRY * 2);
        assert_eq!(*waits.last().unwrap(), MAX_RETRY);
        backoff.reset();
        assert_eq!(backoff.next(), Some(FIRST_RETRY));
    }
}
