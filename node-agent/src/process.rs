//! Signals to container processes. Each container runs as the leader of its own process
//! group, so a signal reaches what it started too.

use rustix::process::{Pid, Signal as RawSignal, kill_process, kill_process_group};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Term,
    Kill,
}

impl Signal {
    fn raw(self) -> RawSignal {
        match self {
            Self::Term => RawSignal::TERM,
            Self::Kill => RawSignal::KILL,
        }
    }
}

/// Signals one process; one that is gone already is not an error.
pub fn kill(pid: i32, signal: Signal) {
    if let Some(pid) = Pid::from_raw(pid) {
        let _ = kill_process(pid, signal.raw());
    }
}

/// Signals the process group led by `pid`.
pub fn kill_group(pid: i32, signal: Signal) {
    if let Some(pid) = Pid::from_raw(pid) {
        let _ = kill_process_group(pid, signal.raw());
    }
}
