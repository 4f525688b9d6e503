//! Chunked bodies: `ChunkedDecoder` on arbitrary bytes, fed whole and in arbitrary reads.
//!
//! Invariants: no panic; consumed <= input; the chunk data handed out is never more than what
//! was consumed; the reads give the same answer, the same consumed count and the same data as
//! one call with all the bytes (the decoder holds no data, only its place in the framing); a
//! finished body ends exactly where the decoder said, whatever follows it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_core::http1::{ChunkProgress, ChunkedDecoder, ChunkedError};
use portcullis_fuzz::{reads, split_input};

fuzz_target!(|data: &[u8]| {
    let Some((pattern, input)) = split_input(data) else {
        return;
    };

    let mut whole_data = Vec::new();
    let whole = ChunkedDecoder::new().advance_with(input, |d| whole_data.extend_from_slice(d));
    if let Ok(progress) = whole {
        assert!(progress.consumed <= input.len());
        assert!(whole_data.len() <= progress.consumed);
        assert!(progress.done || progress.consumed == input.len());
    }

    let (split, split_data) = feed_in_reads(pattern, input);
    assert_eq!(split, whole, "reads decided differently");
    if whole.is_ok() {
        assert_eq!(split_data, whole_data, "reads handed out different data");
    }

    // A finished body: its bytes alone are a finished body, and nothing after them was read.
    if let Ok(ChunkProgress {
        consumed,
        done: true,
    }) = whole
    {
        let mut decoder = ChunkedDecoder::new();
        assert_eq!(
            decoder.advance(&input[..consumed]),
            Ok(ChunkProgress {
                consumed,
                done: true
            })
        );
        assert!(decoder.is_done());
        assert_eq!(
            decoder.advance(b"0\r\n\r\n"),
            Ok(ChunkProgress {
                consumed: 0,
                done: true
            })
        );
    }
});

/// The proxy's loop: each read is offered to the decoder until the body is done or fails.
fn feed_in_reads(pattern: u8, input: &[u8]) -> (Result<ChunkProgress, ChunkedError>, Vec<u8>) {
    let mut decoder = ChunkedDecoder::new();
    let mut data = Vec::new();
    let mut consumed = 0;
    for read in reads(pattern, input) {
        match decoder.advance_with(read, |d| data.extend_from_slice(d)) {
            Ok(progress) => {
                assert!(progress.consumed <= read.len());
                consumed += progress.consumed;
                if progress.done {
                    return (
                        Ok(ChunkProgress {
                            consumed,
                            done: true,
                        }),
                        data,
                    );
                }
                assert_eq!(progress.consumed, read.len(), "unfinished body left bytes");
            }
            Err(e) => {
                // Errors are sticky.
                assert_eq!(decoder.advance(b"0\r\n\r\n"), Err(e));
                return (Err(e), data);
            }
        }
    }
    (
        Ok(ChunkProgress {
            consumed,
            done: false,
        }),
        data,
    )
}
