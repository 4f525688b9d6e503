//! The pure parts of `delivery-bench` (the config delivery benchmark, `loadtest/config-delivery`):
//! the endpoint addresses it writes, the markers it looks for in the data plane's `/config`,
//! and the report's percentiles.
//!
//! Addresses are in 10.0.0.0/8 and nothing ever connects to them. The base endpoints are in
//! 10.0.0.0/9 and the markers in 10.128.0.0/9, so one pass over `/config` finds every marker
//! present ([`markers_in`]) without a search per change still in flight: the bench polls
//! `/config` every few tens of milliseconds while up to a few hundred changes are pending.

use std::net::Ipv4Addr;
use std::time::Duration;

/// The port every benchmark endpoint listens on (never contacted). Distinct from the Service
/// port so that `:PORT` in `/config` appears in endpoint addresses only.
pub const ENDPOINT_PORT: u16 = 9080;

/// Services the base addresses can number (two octets of 10.0.0.0/9).
pub const MAX_SERVICES: usize = 1 << 15;
/// Endpoints per Service the base addresses can number (the last octet, without 0 and 255).
pub const MAX_ENDPOINTS_PER_SERVICE: usize = 254;
/// Changes the markers can number (the low 23 bits of 10.128.0.0/9).
pub const MAX_CHANGES: usize = 1 << 23;

const MARKER_BIT: u32 = 1 << 23;

/// Endpoint `endpoint` of Service `service`, in 10.0.0.0/9. `None` past the limits.
pub fn base_address(service: usize, endpoint: usize) -> Option<Ipv4Addr> {
    if service >= MAX_SERVICES || endpoint >= MAX_ENDPOINTS_PER_SERVICE {
        return None;
    }
    let [_, _, high, low] = (service as u32).to_be_bytes();
    Some(Ipv4Addr::new(10, high, low, endpoint as u8 + 1))
}

/// The address unique to change `change`, in 10.128.0.0/9. `None` past [`MAX_CHANGES`].
pub fn marker_address(change: usize) -> Option<Ipv4Addr> {
    if change >= MAX_CHANGES {
        return None;
    }
    let bits = (10 << 24) | MARKER_BIT | change as u32;
    Some(Ipv4Addr::from(bits))
}

/// The change whose marker `address` is; `None` for any other address.
pub fn marker_change(address: Ipv4Addr) -> Option<usize> {
    let bits = u32::from(address);
    (bits >> 24 == 10 && bits & MARKER_BIT != 0).then_some((bits & (MARKER_BIT - 1)) as usize)
}

/// Every change whose marker appears in `text` as `ADDRESS:ENDPOINT_PORT`, in one pass.
pub fn markers_in(text: &str) -> Vec<usize> {
    let suffix = format!(":{ENDPOINT_PORT}");
    let mut found = Vec::new();
    for (at, _) in text.match_indices(&suffix) {
        let head = &text[..at];
        let start = head
            .rfind(|c: char| !(c.is_ascii_digit() || c == '.'))
            .map_or(0, |i| i + 1);
        if let Ok(address) = head[start..].parse::<Ipv4Addr>()
            && let Some(change) = marker_change(address)
        {
            found.push(change);
        }
    }
    found
}

/// How many endpoint addresses (`...:ENDPOINT_PORT`) `text` holds.
pub fn endpoint_count(text: &str) -> usize {
    text.matches(&format!(":{ENDPOINT_PORT}")).count()
}

/// The nearest-rank percentile `p` (0–100) of `sorted` (ascending); `None` when empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_come_back_as_their_change_and_base_addresses_are_not_markers() {
        for change in [0, 1, 255, 256, 1000, 65_535, 65_536, MAX_CHANGES - 1] {
            let address = marker_address(change).unwrap();
            assert_eq!(address.octets()[0], 10);
            assert_eq!(marker_change(address), Some(change), "{address}");
        }
        assert_eq!(marker_address(MAX_CHANGES), None);
        for (service, endpoint) in [(0, 0), (999, 9), (MAX_SERVICES - 1, 253)] {
            let address = base_address(service, endpoint).unwrap();
            assert_eq!(marker_change(address), None, "{address}");
        }
        assert_eq!(base_address(0, 0), Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(base_address(MAX_SERVICES, 0), None);
        assert_eq!(base_address(0, MAX_ENDPOINTS_PER_SERVICE), None);
        // Distinct services and endpoints never share an address.
        assert_ne!(base_address(1, 0), base_address(0, 1));
    }

    #[test]
    fn one_pass_finds_each_marker_and_nothing_else() {
        let m = |k| marker_address(k).unwrap();
        let text = format!(
            "- {}:9080\n- \"{}:9080\"\n- {}:9080\n- {}:80\n- name: ns/svc-1:80\n- {}:9080",
            m(7),
            m(70_000),
            base_address(3, 4).unwrap(),
            m(8),
            m(0),
        );
        assert_eq!(markers_in(&text), vec![7, 70_000, 0]);
        assert_eq!(endpoint_count(&text), 4);
        // A marker that is a prefix of another is not seen in it.
        assert_eq!(markers_in(&format!("{}:9080", m(10))), vec![10]);
        assert_eq!(
            markers_in(":9080 x:9080 999.1.1.1:9080"),
            Vec::<usize>::new()
        );
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let ms = |v: u64| Duration::from_millis(v);
        let sorted: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(percentile(&sorted, 50.0), Some(ms(50)));
        assert_eq!(percentile(&sorted, 90.0), Some(ms(90)));
        assert_eq!(percentile(&sorted, 99.0), Some(ms(99)));
        assert_eq!(percentile(&sorted, 100.0), Some(ms(100)));
        assert_eq!(percentile(&sorted, 0.0), Some(ms(1)));
        assert_eq!(percentile(&[ms(5)], 50.0), Some(ms(5)));
        // Between ranks, the higher one: p95 of ten is the tenth.
        let ten: Vec<Duration> = (1..=10).map(ms).collect();
        assert_eq!(percentile(&ten, 95.0), Some(ms(10)));
        assert_eq!(percentile(&ten, 50.0), Some(ms(5)));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
