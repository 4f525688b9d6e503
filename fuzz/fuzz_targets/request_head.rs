//! Request heads from clients: `parse_request_head` on arbitrary bytes, arriving in arbitrary
//! reads, then the head the gateway forwards.
//!
//! Invariants: no panic; the head fits in what was parsed; the runtime's loop (append a read,
//! parse the whole buffer again) decides exactly as one parse of all the bytes does, whatever the
//! reads; and the forwarded head is itself a valid request head that the backend reads as the
//! same request (method, target, host, body framing): what the gateway counts as one request is
//! what the backend counts.

#![no_main]

use std::net::{IpAddr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use portcullis_core::http1::{
    ForwardExtras, ForwardedProto, HeadLimits, MAX_HEADER_SLOTS, RequestHead, TargetForm, Version,
    parse_request_head, write_forwarded_request_head,
};
use portcullis_fuzz::{reads, split_input};

/// Most re-parses of a growing buffer per input: the loop is quadratic in the number of reads.
const MAX_PREFIX_PARSES: usize = 32;

/// Limits small enough for the fuzzer to reach both without megabyte inputs (pattern bit 4).
const SMALL_LIMITS: HeadLimits = HeadLimits {
    max_head_bytes: 512,
    max_headers: 8,
};

fuzz_target!(|data: &[u8]| {
    let Some((pattern, input)) = split_input(data) else {
        return;
    };
    let limits = if pattern & 0x10 != 0 {
        SMALL_LIMITS
    } else {
        HeadLimits::default()
    };
    let whole = parse_request_head(input, &limits);

    // The runtime's read loop, at a bounded number of read boundaries.
    let mut ends: Vec<usize> = reads(pattern, input)
        .iter()
        .scan(0, |end, read| {
            *end += read.len();
            Some(*end)
        })
        .collect();
    let step = ends.len().div_ceil(MAX_PREFIX_PARSES).max(1);
    ends = ends.into_iter().rev().step_by(step).collect();
    ends.reverse();
    for end in ends {
        match parse_request_head(&input[..end], &limits) {
            Ok(None) => continue,
            decided => {
                assert_eq!(decided, whole, "decided differently after {end} bytes");
                break;
            }
        }
    }

    if let Ok(Some(head)) = &whole {
        assert!(head.head_len <= input.len().min(limits.max_head_bytes));
        for (name, value) in head.headers(input).iter() {
            assert!(!name.is_empty());
            assert!(value.len() <= head.head_len);
        }
        check_forwarded(head, input);
    }
});

fn check_forwarded(head: &RequestHead, buf: &[u8]) {
    let extras = ForwardExtras {
        client_ip: IpAddr::V6(Ipv6Addr::LOCALHOST),
        proto: ForwardedProto::Https,
        identity_headers: b"",
        request_headers: &portcullis_core::filters::NO_HEADER_CHANGES,
    };
    let mut out = Vec::new();
    write_forwarded_request_head(head, buf, &extras, &mut out);
    // The rewrite adds a few fields and may turn bare LFs into CRLFs: room beyond the limits.
    let backend_limits = HeadLimits {
        max_head_bytes: out.len() + 1,
        max_headers: MAX_HEADER_SLOTS,
    };
    let forwarded = match parse_request_head(&out, &backend_limits) {
        Ok(Some(forwarded)) => forwarded,
        other => panic!(
            "forwarded head does not parse: {other:?}\n{}",
            String::from_utf8_lossy(&out)
        ),
    };
    assert_eq!(
        forwarded.head_len,
        out.len(),
        "bytes after the forwarded head"
    );
    assert_eq!(forwarded.version, Version::Http11);
    assert_eq!(forwarded.method(&out), head.method(buf));
    assert_eq!(forwarded.path(&out), head.path(buf));
    assert_eq!(forwarded.query(&out), head.query(buf));
    assert_eq!(forwarded.host(), head.host());
    assert_eq!(forwarded.body, head.body, "framing changed");
    assert_eq!(forwarded.is_head(), head.is_head());
    let form = match head.form {
        TargetForm::Absolute => TargetForm::Origin,
        form => form,
    };
    assert_eq!(forwarded.form, form);
}
