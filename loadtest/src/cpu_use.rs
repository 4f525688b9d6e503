//! CPU use over the measured window, read from `/proc` at its two ends: this process's, and,
//! when asked (`--watch-pid`, `--watch-cpus`), a local server's and its CPUs'. The kernel's
//! TCP trouble counters are read at the same two moments.
//!
//! A script that read the server's CPU time itself, before starting the load generator and
//! after it exits, would also count the load generator's start, warm-up end and shutdown;
//! during those the server idles, so its CPU per request came out a few percent low, and more
//! so with many shards. Reading at the window's own ends removes that.

use std::fs;
use std::time::Instant;

use serde::Serialize;

use crate::kernel_tcp::TcpCounters;

/// Clock ticks per second of `/proc` CPU times (USER_HZ, fixed at 100 by the Linux ABI on
/// x86-64 and arm64).
const USER_HZ: f64 = 100.0;

/// What to read besides this process.
#[derive(Debug, Clone, Default)]
pub struct Watch {
    /// A process whose CPU time (with its direct children's: nginx's workers) is reported.
    pub pid: Option<u32>,
    /// CPUs whose idle, steal and interrupt time is reported (the server's CPU set).
    pub cpus: Option<CpuList>,
    /// This process's own CPUs (its affinity mask), whose hypervisor steal is reported: a
    /// load generator that lost CPU to the host measured the host.
    pub own_cpus: Option<CpuList>,
}

/// A set of CPU numbers, sorted, each once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuList(pub Vec<usize>);

impl CpuList {
    /// The set of `cpus`, in any order and with repeats.
    pub fn new(cpus: impl IntoIterator<Item = usize>) -> Self {
        let mut cpus: Vec<usize> = cpus.into_iter().collect();
        cpus.sort_unstable();
        cpus.dedup();
        CpuList(cpus)
    }
}

/// One reading of everything watched.
#[derive(Debug, Clone)]
pub struct Sample {
    at: Instant,
    own_ticks: Option<u64>,
    watched_ticks: Option<u64>,
    cpu_set: Option<CpuSetTicks>,
    own_cpu_set: Option<CpuSetTicks>,
    tcp: Option<TcpCounters>,
}

/// Ticks a set of CPUs spent idle (idle + iowait), stolen by the hypervisor, and in hardware
/// and soft interrupts, summed over the set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuSetTicks {
    pub idle: u64,
    pub steal: u64,
    pub interrupts: u64,
}

/// The window's CPU use, in cores (CPU seconds per second of the window).
#[derive(Debug, Default)]
pub struct WindowUse {
    pub own_cores: Option<f64>,
    /// Of this process's own CPUs: cores stolen by the hypervisor.
    pub own_cpus_steal_cores: Option<f64>,
    pub watched: Option<WatchedUse>,
    pub kernel_tcp: Option<TcpCounters>,
}

/// The watched process and CPU set over the window (`server` in the JSON summary).
#[derive(Debug, Serialize)]
pub struct WatchedUse {
    pub pid: Option<u32>,
    /// User + system CPU of the process and its children, in cores.
    pub cpu_cores: Option<f64>,
    /// The watched CPUs, as given.
    pub cpus: Option<String>,
    /// Of the watched CPUs: cores idle, stolen by the hypervisor, and in interrupts. Where a
    /// server used less than its CPUs, this says where the rest went.
    pub cpus_idle_cores: Option<f64>,
    pub cpus_steal_cores: Option<f64>,
    pub cpus_interrupt_cores: Option<f64>,
}

impl Watch {
    /// Checks that what is watched can be read now, so a typo fails before the run.
    pub fn check(&self) -> Result<(), String> {
        if let Some(pid) = self.pid {
            process_ticks(&format!("/proc/{pid}/stat"))
                .ok_or_else(|| format!("--watch-pid {pid}: no such process readable in /proc"))?;
        }
        if let Some(cpus) = &self.cpus {
            let stat = fs::read_to_string("/proc/stat").map_err(|e| format!("/proc/stat: {e}"))?;
            cpu_set_ticks(&stat, &cpus.0)?;
        }
        Ok(())
    }

    pub fn sample(&self) -> Sample {
        let stat = fs::read_to_string("/proc/stat").ok();
        let set = |cpus: &Option<CpuList>| cpu_set_ticks(stat.as_deref()?, &cpus.as_ref()?.0).ok();
        Sample {
            at: Instant::now(),
            own_ticks: process_ticks("/proc/self/stat"),
            watched_ticks: self.pid.and_then(process_tree_ticks),
            cpu_set: set(&self.cpus),
            own_cpu_set: set(&self.own_cpus),
            tcp: TcpCounters::read(),
        }
    }

    /// CPU use between two samples, in cores.
    pub fn between(&self, start: &Sample, end: &Sample) -> WindowUse {
        let seconds = end.at.duration_since(start.at).as_secs_f64();
        if seconds <= 0.0 {
            return WindowUse::default();
        }
        let cores =
            |a: Option<u64>, b: Option<u64>| Some(b?.saturating_sub(a?) as f64 / USER_HZ / seconds);
        let set = |f: fn(&CpuSetTicks) -> u64| {
            cores(start.cpu_set.as_ref().map(f), end.cpu_set.as_ref().map(f))
        };
        let watched = (self.pid.is_some() || self.cpus.is_some()).then(|| WatchedUse {
            pid: self.pid,
            cpu_cores: cores(start.watched_ticks, end.watched_ticks),
            cpus: self.cpus.as_ref().map(|c| format_cpu_list(&c.0)),
            cpus_idle_cores: set(|t| t.idle),
            cpus_steal_cores: set(|t| t.steal),
            cpus_interrupt_cores: set(|t| t.interrupts),
        });
        WindowUse {
            own_cores: cores(start.own_ticks, end.own_ticks),
            own_cpus_steal_cores: cores(
                start.own_cpu_set.map(|t| t.steal),
                end.own_cpu_set.map(|t| t.steal),
            ),
            watched,
            kernel_tcp: start.tcp.zip(end.tcp).map(|(a, b)| b.since(&a)),
        }
    }
}

/// Parses a taskset-style CPU list: `0`, `0-3`, `0,2,4-7`.
pub fn parse_cpu_list(s: &str) -> Result<CpuList, String> {
    let mut cpus = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        let number = |n: &str| {
            n.trim()
                .parse::<usize>()
                .map_err(|_| format!("{s:?}: {n:?} is not a CPU number"))
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (number(a)?, number(b)?);
                if a > b {
                    return Err(format!("{s:?}: range {part} runs backwards"));
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(number(part)?),
        }
    }
    Ok(CpuList::new(cpus))
}

fn format_cpu_list(cpus: &[usize]) -> String {
    cpus.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The fields of a `/proc/PID/stat` line after the command name (which may hold spaces and
/// parentheses, so the split is at the last ')'): `(ppid, utime + stime)`.
fn parse_process_stat(stat: &str) -> Option<(u32, u64)> {
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // Whole-line fields 4 (ppid), 14 (utime) and 15 (stime): 1, 11 and 12 after the ')'.
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

/// User + system ticks of the process whose stat file is `path`.
fn process_ticks(path: &str) -> Option<u64> {
    parse_process_stat(&fs::read_to_string(path).ok()?).map(|(_, ticks)| ticks)
}

/// User + system ticks of `pid` and of its direct children (nginx's and HAProxy's workers
/// are children of their master).
fn process_tree_ticks(pid: u32) -> Option<u64> {
    let own = process_ticks(&format!("/proc/{pid}/stat"))?;
    let children: u64 = fs::read_dir("/proc")
        .ok()?
        .filter_map(|entry| {
            let name = entry.ok()?.file_name();
            let child: u32 = name.to_str()?.parse().ok()?;
            let text = fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
            let (ppid, ticks) = parse_process_stat(&text)?;
            (ppid == pid).then_some(ticks)
        })
        .sum();
    Some(own + children)
}

/// Sums the idle, steal and interrupt ticks of `cpus` from the text of `/proc/stat`; every
/// CPU asked for must be there.
fn cpu_set_ticks(proc_stat: &str, cpus: &[usize]) -> Result<CpuSetTicks, String> {
    let mut total = CpuSetTicks::default();
    let mut found = 0;
    for line in proc_stat.lines() {
        let mut fields = line.split_whitespace();
        let Some(cpu) = fields
            .next()
            .and_then(|name| name.strip_prefix("cpu"))
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        if !cpus.contains(&cpu) {
            continue;
        }
        // user nice system idle iowait irq softirq steal ...
        let ticks: Vec<u64> = fields.map(|f| f.parse().unwrap_or(0)).collect();
        let at = |i: usize| ticks.get(i).copied().unwrap_or(0);
        total.idle += at(3) + at(4);
        total.interrupts += at(5) + at(6);
        total.steal += at(7);
        found += 1;
    }
    if found != cpus.len() {
        return Err(format!(
            "--watch-cpus {}: not every CPU is online in /proc/stat",
            format_cpu_list(cpus)
        ));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0"), Ok(CpuList(vec![0])));
        assert_eq!(parse_cpu_list("0-3"), Ok(CpuList(vec![0, 1, 2, 3])));
        assert_eq!(parse_cpu_list("4-5,0, 2"), Ok(CpuList(vec![0, 2, 4, 5])));
        assert_eq!(parse_cpu_list("1,1-2"), Ok(CpuList(vec![1, 2])));
        assert!(parse_cpu_list("").is_err());
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("a").is_err());
        assert!(parse_cpu_list("1-").is_err());
    }

    #[test]
    fn process_stat_with_a_command_name_holding_spaces_and_parentheses() {
        let line = "4242 (nginx: worker (x) ) S 4200 4200 4200 0 -1 4194624 10 0 0 0 \
                    150 25 0 0 20 0 1 0 100 1000 50";
        assert_eq!(parse_process_stat(line), Some((4200, 175)));
        assert_eq!(parse_process_stat("4242 (short) S 1"), None);
        assert_eq!(parse_process_stat("no parenthesis"), None);
    }

    const PROC_STAT: &str = "\
cpu  100 0 200 3000 40 5 6 7 0 0
cpu0 10 0 20 300 4 1 2 3 0 0
cpu1 20 0 30 400 5 10 20 30 0 0
cpu2 30 0 40 500 6 100 200 300 0 0
intr 12345 0 0
ctxt 999
";

    #[test]
    fn cpu_set_sums_only_the_cpus_asked_for() {
        assert_eq!(
            cpu_set_ticks(PROC_STAT, &[0, 2]),
            Ok(CpuSetTicks {
                idle: 304 + 506,
                steal: 3 + 300,
                interrupts: 3 + 300,
            })
        );
        // The aggregate `cpu` line is not CPU 0's.
        assert_eq!(cpu_set_ticks(PROC_STAT, &[1]).map(|t| t.idle), Ok(405));
    }

    #[test]
    fn cpu_set_with_a_missing_cpu_is_an_error() {
        let err = cpu_set_ticks(PROC_STAT, &[2, 3]).unwrap_err();
        assert!(err.contains("--watch-cpus 2,3"), "{err}");
    }

    #[test]
    fn this_process_is_read() {
        let watch = Watch {
            pid: Some(std::process::id()),
            cpus: Some(CpuList(vec![0])),
            own_cpus: Some(CpuList(vec![0])),
        };
        watch.check().unwrap();
        let sample = watch.sample();
        assert!(sample.own_ticks.is_some());
        assert!(sample.watched_ticks.is_some());
        assert!(sample.cpu_set.is_some());
        assert!(sample.own_cpu_set.is_some());
        assert!(sample.tcp.is_some());
    }
}
