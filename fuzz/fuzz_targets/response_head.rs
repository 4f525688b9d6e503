//! Response heads from backends: `parse_response_head` on arbitrary bytes, arriving in
//! arbitrary reads, then the head the gateway writes to HTTP/1.1 and HTTP/1.0 clients.
//!
//! Invariants: no panic; the head fits in what was parsed; re-parsing a growing buffer decides
//! exactly as one parse of all the bytes does; a bodiless response (HEAD, 1xx, 204, 304) has no
//! body; the head written to an HTTP/1.1 client is a valid response head with the same status and
//! the same body framing, so the client reads the body the gateway forwards and no more.

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_core::http1::{
    ClientBody, ClientConn, HeadLimits, MAX_HEADER_SLOTS, ResponseBody, ResponseHead, Version,
    parse_response_head, write_forwarded_response_head,
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
    // Whether the request was HEAD: the low pattern bit.
    let request_is_head = pattern & 1 != 0;
    let whole = parse_response_head(input, request_is_head, &limits);

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
        match parse_response_head(&input[..end], request_is_head, &limits) {
            Ok(None) => continue,
            decided => {
                assert_eq!(decided, whole, "decided differently after {end} bytes");
                break;
            }
        }
    }

    let Ok(Some(head)) = &whole else {
        return;
    };
    assert!(head.head_len <= input.len().min(limits.max_head_bytes));
    assert!((100..=599).contains(&head.status) && head.status != 101);
    if request_is_head || head.is_informational || head.status == 204 || head.status == 304 {
        assert_eq!(head.body, ResponseBody::None);
    }
    if head.body == ResponseBody::CloseDelimited {
        assert!(!head.backend_keep_alive);
    }
    check_forwarded(head, input, request_is_head);
});

fn check_forwarded(head: &ResponseHead, buf: &[u8], request_is_head: bool) {
    for (version, keep_alive) in [
        (Version::Http11, true),
        (Version::Http11, false),
        (Version::Http10, true),
    ] {
        let client = ClientConn {
            version,
            keep_alive,
        };
        let mut out = Vec::new();
        let plan = write_forwarded_response_head(
            head,
            buf,
            client,
            &portcullis_core::filters::NO_HEADER_CHANGES,
            &mut out,
        );
        if matches!(plan.body, ClientBody::Dechunk | ClientBody::UntilClose) {
            assert!(!plan.keep_alive);
        }
        if head.is_informational && version == Version::Http10 {
            assert!(out.is_empty(), "1xx written to an HTTP/1.0 client");
            continue;
        }
        let client_limits = HeadLimits {
            max_head_bytes: out.len() + 1,
            max_headers: MAX_HEADER_SLOTS,
        };
        let written = match parse_response_head(&out, request_is_head, &client_limits) {
            Ok(Some(written)) => written,
            other => panic!(
                "written head does not parse: {other:?}\n{}",
                String::from_utf8_lossy(&out)
            ),
        };
        assert_eq!(written.head_len, out.len(), "bytes after the written head");
        assert_eq!(written.status, head.status);
        assert_eq!(written.content_length, head.content_length);
        if version == Version::Http11 && plan.keep_alive {
            // The client delimits the body as the gateway forwards it.
            let expected = match plan.body {
                ClientBody::None => ResponseBody::None,
                ClientBody::ContentLength(n) => ResponseBody::ContentLength(n),
                ClientBody::Chunked => ResponseBody::Chunked,
                ClientBody::Dechunk | ClientBody::UntilClose => unreachable!("closes"),
            };
            assert_eq!(written.body, expected, "{}", String::from_utf8_lossy(&out));
        }
    }
}
