//! Per-shard (thread-local) pool of I/O buffers.
//!
//! io_uring needs a buffer for every outstanding read, so a naive proxy pins a read buffer to
//! each idle keep-alive connection. Ours waits for readiness without one and borrows a buffer
//! only while bytes move, which keeps idle connections small. Thread-local: a shard never
//! touches another shard's pool.

use std::cell::RefCell;

/// Size of every pooled buffer: one maximum TLS record (16 KiB plaintext) plus its header and
/// AEAD overhead, so one read can always hold a whole record.
pub const IO_BUFFER_BYTES: usize = 16 * 1024 + 512;

/// Buffers kept for reuse per shard; beyond that they are freed. Enough for the connections
/// that move bytes at the same instant on one core.
const MAX_POOLED_BUFFERS: usize = 1024;

thread_local! {
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with [`IO_BUFFER_BYTES`] capacity.
pub fn take() -> Vec<u8> {
    POOL.with(|pool| pool.borrow_mut().pop())
        .unwrap_or_else(|| Vec::with_capacity(IO_BUFFER_BYTES))
}

/// Returns a buffer to the pool (cleared). Buffers of another capacity are dropped.
pub fn give(mut buf: Vec<u8>) {
    if buf.capacity() != IO_BUFFER_BYTES {
        return;
    }
    buf.clear();
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() < MAX_POOLED_BUFFERS {
            pool.push(buf);
        }
    });
}
