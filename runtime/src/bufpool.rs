//! Per-shard (thread-local) pools of I/O buffers.
//!
//! io_uring needs a buffer for every outstanding read. Waiting for readiness first (a poll,
//! then the read) would let idle connections hold none, but costs a second operation on every
//! request; measured on a keep-alive shard that was about a fifth of its CPU per request. So
//! an idle keep-alive connection keeps one small read in flight ([`IDLE_READ_BYTES`]), and
//! bytes in motion use full-size buffers borrowed from the pool only while they move.
//! Thread-local: a shard never touches another shard's pool.

use std::cell::RefCell;

/// Size of a full buffer: one maximum TLS record (16 KiB plaintext) plus its header and AEAD
/// overhead, so one read can always hold a whole record.
pub const IO_BUFFER_BYTES: usize = 16 * 1024 + 512;

/// Size of the read an idle keep-alive connection keeps in flight: a typical request (head of
/// a few hundred bytes in one TLS record) arrives in it whole; anything larger continues in
/// full-size buffers. It is most of what an idle connection costs besides rustls' state.
pub const IDLE_READ_BYTES: usize = 4 * 1024;

/// Buffers of each size kept for reuse per shard; beyond that they are freed. Enough for the
/// connections that move bytes at the same instant on one core.
const MAX_POOLED_BUFFERS: usize = 1024;

#[derive(Default)]
struct Pools {
    io: Vec<Vec<u8>>,
    idle_read: Vec<Vec<u8>>,
}

thread_local! {
    static POOLS: RefCell<Pools> = RefCell::new(Pools::default());
}

/// An empty buffer with [`IO_BUFFER_BYTES`] capacity.
pub fn take() -> Vec<u8> {
    POOLS
        .with(|pools| pools.borrow_mut().io.pop())
        .unwrap_or_else(|| Vec::with_capacity(IO_BUFFER_BYTES))
}

/// An empty buffer with [`IDLE_READ_BYTES`] capacity.
pub fn take_idle_read() -> Vec<u8> {
    POOLS
        .with(|pools| pools.borrow_mut().idle_read.pop())
        .unwrap_or_else(|| Vec::with_capacity(IDLE_READ_BYTES))
}

/// Returns a buffer to its pool (cleared). Buffers of another capacity are dropped.
pub fn give(mut buf: Vec<u8>) {
    let capacity = buf.capacity();
    if capacity != IO_BUFFER_BYTES && capacity != IDLE_READ_BYTES {
        return;
    }
    buf.clear();
    POOLS.with(|pools| {
        let mut pools = pools.borrow_mut();
        let pool = if capacity == IO_BUFFER_BYTES {
            &mut pools.io
        } else {
            &mut pools.idle_read
        };
        if pool.len() < MAX_POOLED_BUFFERS {
            pool.push(buf);
        }
    });
}
