//! The kubelet's container restart back-off: 10 s after the first exit, doubling up to 5 min;
//! a container that ran 10 min before it exited starts over at 10 s.

use std::time::Duration;

/// Wait before the first restart.
pub const INITIAL_RESTART_DELAY: Duration = Duration::from_secs(10);
/// Longest wait between restarts.
pub const MAX_RESTART_DELAY: Duration = Duration::from_secs(300);
/// A run this long means the container recovered: the back-off starts over.
pub const RESET_AFTER_RUNNING: Duration = Duration::from_secs(600);

/// The wait before the next start, given the previous wait (`None`: never restarted) and how
/// long the container ran this time.
pub fn restart_delay(previous: Option<Duration>, ran_for: Duration) -> Duration {
    match previous {
        Some(previous) if ran_for < RESET_AFTER_RUNNING => {
            previous.saturating_mul(2).min(MAX_RESTART_DELAY)
        }
        _ => INITIAL_RESTART_DELAY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_ten_seconds_to_five_minutes() {
        let short = Duration::from_secs(1);
        let mut delay = None;
        let mut seen = Vec::new();
        for _ in 0..7 {
            let next = restart_delay(delay, short);
            seen.push(next.as_secs());
            delay = Some(next);
        }
        assert_eq!(seen, [10, 20, 40, 80, 160, 300, 300]);
    }

    #[test]
    fn ten_minutes_of_running_resets_it() {
        let previous = Some(MAX_RESTART_DELAY);
        assert_eq!(
            restart_delay(previous, Duration::from_secs(599)),
            MAX_RESTART_DELAY
        );
        assert_eq!(
            restart_delay(previous, RESET_AFTER_RUNNING),
            INITIAL_RESTART_DELAY
        );
    }
}
