//! Helpers shared by the fuzz targets (`fuzz_targets/`).
//!
//! Inputs of the incremental parsers start with one byte that says how to cut the rest into
//! reads ([`split_input`]): the fuzzer mutates the cut points like any other byte, and the seeds
//! carry a zero byte in front of the bytes taken from the tests.
//!
//! [`tls_gateway`]: the HTTPS port the `tls_accept` target serves, compiled from manifests.

pub mod tls_gateway;

/// Longest read, by the top three bits of the pattern byte: single bytes, small and typical
/// segments, and reads around and beyond rustls' 4 KiB `read_tls` step.
const READ_CAPS: [usize; 8] = [1, 3, 16, 100, 1500, 4096, 5000, 20_000];

/// `(pattern, payload)`: the first byte of a fuzz input and the rest. Empty input: `None`.
pub fn split_input(data: &[u8]) -> Option<(u8, &[u8])> {
    data.split_first()
        .map(|(pattern, payload)| (*pattern, payload))
}

/// `payload` cut into non-empty reads whose lengths follow `pattern`, in order; together they
/// are exactly `payload`.
pub fn reads(pattern: u8, payload: &[u8]) -> Vec<&[u8]> {
    let cap = READ_CAPS[usize::from(pattern >> 5)];
    // xorshift32, seeded from the low bits (never zero).
    let mut state = u32::from(pattern & 0x1f) | 0x100;
    let mut out = Vec::new();
    let mut rest = payload;
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let len = 1 + (state as usize) % cap;
        let (read, tail) = rest.split_at(len.min(rest.len()));
        out.push(read);
        rest = tail;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cover_the_payload_exactly() {
        let payload: Vec<u8> = (0..=255u8).cycle().take(30_000).collect();
        for pattern in 0..=255u8 {
            let parts = reads(pattern, &payload);
            assert!(parts.iter().all(|p| !p.is_empty()));
            assert_eq!(parts.concat(), payload);
        }
        assert!(reads(7, &[]).is_empty());
    }
}
