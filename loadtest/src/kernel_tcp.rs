//! The kernel's TCP trouble counters over the measured window, read from `/proc/net` at its
//! two ends (system-wide: every socket of this network namespace, server and load generator
//! alike on one machine).
//!
//! A handshake storm that loses a segment waits for a retransmission timeout (200 ms at
//! least), and a lost SYN for a second: a few of those stall connections long enough to leave
//! a server idle and stretch the latency's tail, and nothing in the request counts shows it.
//! On loopback a segment is lost when a CPU's input backlog overflows (`netdev_max_backlog`).

use std::collections::HashMap;
use std::fs;

use serde::Serialize;

/// Counts over a window (or since boot, for one reading).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TcpCounters {
    /// Segments sent again (`Tcp: RetransSegs`), for any reason.
    pub retransmitted_segments: u64,
    /// Retransmission timeouts that fired (`TcpExt: TCPTimeouts`): each is a connection that
    /// waited at least the minimum RTO.
    pub retransmission_timeouts: u64,
    /// SYNs sent again (`TcpExt: TCPSynRetrans`): each is a connect that waited a second.
    pub syn_retransmits: u64,
    /// Connections a full accept queue turned away (`TcpExt: ListenOverflows`).
    pub listen_overflows: u64,
    /// Packets dropped because a CPU's input backlog was full (`/proc/net/softnet_stat`,
    /// second column, summed over CPUs).
    pub backlog_drops: u64,
}

impl TcpCounters {
    /// Reads the counters now; `None` where `/proc/net` is not readable.
    pub fn read() -> Option<Self> {
        let snmp = fs::read_to_string("/proc/net/snmp").ok()?;
        let netstat = fs::read_to_string("/proc/net/netstat").ok()?;
        let softnet = fs::read_to_string("/proc/net/softnet_stat").ok()?;
        Self::parse(&snmp, &netstat, &softnet)
    }

    fn parse(snmp: &str, netstat: &str, softnet: &str) -> Option<Self> {
        let tcp = snmp_table(snmp, "Tcp")?;
        let ext = snmp_table(netstat, "TcpExt")?;
        Some(TcpCounters {
            retransmitted_segments: *tcp.get("RetransSegs")?,
            retransmission_timeouts: *ext.get("TCPTimeouts")?,
            syn_retransmits: ext.get("TCPSynRetrans").copied().unwrap_or(0),
            listen_overflows: *ext.get("ListenOverflows")?,
            backlog_drops: softnet_drops(softnet)?,
        })
    }

    /// The counts between an earlier reading and this one.
    pub fn since(&self, earlier: &Self) -> Self {
        TcpCounters {
            retransmitted_segments: self
                .retransmitted_segments
                .saturating_sub(earlier.retransmitted_segments),
            retransmission_timeouts: self
                .retransmission_timeouts
                .saturating_sub(earlier.retransmission_timeouts),
            syn_retransmits: self.syn_retransmits.saturating_sub(earlier.syn_retransmits),
            listen_overflows: self
                .listen_overflows
                .saturating_sub(earlier.listen_overflows),
            backlog_drops: self.backlog_drops.saturating_sub(earlier.backlog_drops),
        }
    }

    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }
}

/// One table of `/proc/net/snmp` or `/proc/net/netstat`: a line `Name: field field ...`
/// followed by a line `Name: value value ...`.
fn snmp_table<'a>(text: &'a str, name: &str) -> Option<HashMap<&'a str, u64>> {
    let prefix = format!("{name}:");
    let mut lines = text.lines().filter(|l| {
        l.split_whitespace()
            .next()
            .is_some_and(|first| first == prefix)
    });
    let fields = lines.next()?.split_whitespace().skip(1);
    let values = lines.next()?.split_whitespace().skip(1);
    // Values that do not parse as unsigned (Tcp: MaxConn is -1) are left out.
    Some(
        fields
            .zip(values)
            .filter_map(|(f, v)| Some((f, v.parse().ok()?)))
            .collect(),
    )
}

/// The dropped-packet column of `/proc/net/softnet_stat` (one line per CPU, hexadecimal
/// columns; the second is the drops), summed.
fn softnet_drops(text: &str) -> Option<u64> {
    text.lines()
        .map(|line| u64::from_str_radix(line.split_whitespace().nth(1)?, 16).ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SNMP: &str = "\
Ip: Forwarding DefaultTTL InReceives
Ip: 1 64 1000
Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens RetransSegs InErrs
Tcp: 1 200 120000 -1 500 19659 0
Udp: InDatagrams NoPorts
Udp: 5 0
";
    const NETSTAT: &str = "\
TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPTimeouts TCPSynRetrans
TcpExt: 0 3 3 131 123
IpExt: InNoRoutes InTruncatedPkts
IpExt: 0 0
";
    const SOFTNET: &str = "\
00a1b2c3 00000000 00000001 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000
00d4e5f6 000030bf 00000002 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000001
";

    #[test]
    fn reads_the_counters_from_the_three_files() {
        assert_eq!(
            TcpCounters::parse(SNMP, NETSTAT, SOFTNET),
            Some(TcpCounters {
                retransmitted_segments: 19659,
                retransmission_timeouts: 131,
                syn_retransmits: 123,
                listen_overflows: 3,
                backlog_drops: 0x30bf,
            })
        );
    }

    #[test]
    fn a_missing_table_or_field_is_no_reading() {
        assert_eq!(TcpCounters::parse("Ip: A\nIp: 1\n", NETSTAT, SOFTNET), None);
        assert_eq!(
            TcpCounters::parse(SNMP, "TcpExt: TCPTimeouts\nTcpExt: 1\n", SOFTNET),
            None
        );
        assert_eq!(TcpCounters::parse(SNMP, NETSTAT, "zz 0g\n"), None);
    }

    #[test]
    fn the_window_is_the_difference_and_never_negative() {
        let earlier = TcpCounters {
            retransmitted_segments: 10,
            retransmission_timeouts: 2,
            syn_retransmits: 1,
            listen_overflows: 0,
            backlog_drops: 5,
        };
        let later = TcpCounters {
            retransmitted_segments: 15,
            backlog_drops: 4,
            ..earlier
        };
        let window = later.since(&earlier);
        assert_eq!(window.retransmitted_segments, 5);
        assert_eq!(window.backlog_drops, 0);
        assert!(!window.is_zero());
        assert!(earlier.since(&earlier).is_zero());
    }

    #[test]
    fn this_machine_is_read() {
        assert!(TcpCounters::read().is_some());
    }
}
