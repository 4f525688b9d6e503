//! A completed TLS connection as tokio's `AsyncRead`/`AsyncWrite`, for protocol libraries that
//! poll (the `h2` crate). The handshake is ours ([`crate::tls`]); afterwards an h2 connection
//! moves its socket to monoio's poll mode and its rustls session here.
//!
//! Why not tokio-rustls: it runs its own handshake and cannot take over a session another
//! driver completed (with the ciphertext already read past the handshake). The rest is the
//! same few rules it follows: plaintext first, then buffered ciphertext, then the socket;
//! writes are encrypted as they come and sent as far as the socket takes them.
//!
//! The wrappers that the h2 server shares with plain connections (h2c with prior knowledge)
//! live here too: [`SharedPollStream`] and [`ReplayStream`].

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use monoio::net::tcp::stream_poll::TcpStreamPoll;
use rustls::ServerConnection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A server TLS session over a socket in poll mode.
#[derive(Debug)]
pub struct TlsPollStream {
    tcp: TcpStreamPoll,
    tls: ServerConnection,
    /// Ciphertext read before the switch (with the handshake's last flight); `rx[rx_pos..]`
    /// is not yet handed to rustls.
    rx: Vec<u8>,
    rx_pos: usize,
    close_notify_sent: bool,
}

impl TlsPollStream {
    /// `rx`: ciphertext already read from `tcp` that rustls has not seen.
    pub fn new(tcp: TcpStreamPoll, tls: ServerConnection, rx: Vec<u8>) -> Self {
        Self {
            tcp,
            tls,
            rx,
            rx_pos: 0,
            close_notify_sent: false,
        }
    }

    /// The TLS session (ALPN, peer certificates).
    pub fn session(&self) -> &ServerConnection {
        &self.tls
    }

    /// Sends queued ciphertext as far as the socket takes it: `Ready(Ok(()))` once none is
    /// left.
    fn poll_send_ciphertext(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.tls.wants_write() {
            let mut socket = SyncSocket {
                tcp: &mut self.tcp,
                cx,
            };
            match self.tls.write_tls(&mut socket) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Processes what rustls buffered; a protocol error sends its alert (best effort).
    fn process(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if let Err(error) = self.tls.process_new_packets() {
            let _ = self.poll_send_ciphertext(cx);
            return Err(io::Error::new(io::ErrorKind::InvalidData, error));
        }
        Ok(())
    }
}

impl AsyncRead for TlsPollStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match this.tls.reader().read(buf.initialize_unfilled()) {
                Ok(n) => {
                    // 0: the client's close_notify, a clean end of stream.
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            if this.rx_pos < this.rx.len() {
                let mut pending = &this.rx[this.rx_pos..];
                let before = pending.len();
                this.tls.read_tls(&mut pending)?;
                this.rx_pos += before - pending.len();
                if this.rx_pos >= this.rx.len() {
                    this.rx = Vec::new();
                    this.rx_pos = 0;
                }
                this.process(cx)?;
                continue;
            }
            let mut socket = SyncSocket {
                tcp: &mut this.tcp,
                cx,
            };
            match this.tls.read_tls(&mut socket) {
                // End of stream: rustls now reports it from `reader()` (clean or not).
                Ok(_) => this.process(cx)?,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
            // Answers rustls owes the client (a key update), best effort.
            if this.tls.wants_write() {
                let _ = this.poll_send_ciphertext(cx);
            }
        }
    }
}

impl AsyncWrite for TlsPollStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut taken = 0;
        while taken < buf.len() {
            taken += this.tls.writer().write(&buf[taken..])?;
            match this.poll_send_ciphertext(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending if taken == 0 => return Poll::Pending,
                Poll::Pending => break,
            }
        }
        Poll::Ready(Ok(taken))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.tls.writer().flush()?;
        std::task::ready!(this.poll_send_ciphertext(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_notify_sent {
            this.tls.send_close_notify();
            this.close_notify_sent = true;
        }
        std::task::ready!(this.poll_send_ciphertext(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

/// A poll-mode stream (a [`TlsPollStream`], or a plain socket) that a protocol library drives
/// while the connection's owner keeps a handle: once the library is done with it (say, after
/// a GOAWAY), the owner still closes it politely ([`SharedPollStream::linger`]). One shard
/// thread, short borrows in each poll.
#[derive(Debug)]
pub struct SharedPollStream<S>(Rc<RefCell<S>>);

impl<S> Clone for SharedPollStream<S> {
    fn clone(&self) -> Self {
        Self(Rc::clone(&self.0))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> SharedPollStream<S> {
    pub fn new(stream: S) -> Self {
        Self(Rc::new(RefCell::new(stream)))
    }

    /// Ends the connection as a client expects to see it end: close_notify (over TLS) and FIN,
    /// then what the client still sends is read and dropped until it closes too, for at most
    /// `patience`. Closing with unread bytes would make the kernel send a reset, and a reset
    /// destroys what the client had not read yet: the GOAWAY that says why.
    pub async fn linger(self, patience: std::time::Duration) {
        let mut stream = self;
        let _ = monoio::time::timeout(patience, async {
            if tokio::io::AsyncWriteExt::shutdown(&mut stream)
                .await
                .is_err()
            {
                return;
            }
            let mut sink = [0u8; 4096];
            while let Ok(n) = tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SharedPollStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SharedPollStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_shutdown(cx)
    }
}

/// A poll-mode stream whose first reads return bytes already read from it (the client's
/// first bytes, read to tell HTTP/2 with prior knowledge from HTTP/1.1); writes go straight
/// through.
#[derive(Debug)]
pub struct ReplayStream<S> {
    inner: S,
    /// `replay[replay_pos..]` is not yet returned.
    replay: Vec<u8>,
    replay_pos: usize,
}

impl<S> ReplayStream<S> {
    pub fn new(inner: S, replay: Vec<u8>) -> Self {
        Self {
            inner,
            replay,
            replay_pos: 0,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReplayStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let pending = this.replay.get(this.replay_pos..).unwrap_or_default();
        if pending.is_empty() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let n = pending.len().min(buf.remaining());
        buf.put_slice(pending.get(..n).unwrap_or_default());
        this.replay_pos += n;
        if this.replay_pos >= this.replay.len() {
            crate::bufpool::give(std::mem::take(&mut this.replay));
            this.replay_pos = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReplayStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The socket as `Read`/`Write` for rustls: a poll that is not ready is `WouldBlock`.
struct SyncSocket<'a, 'b> {
    tcp: &'a mut TcpStreamPoll,
    cx: &'a mut Context<'b>,
}

impl Read for SyncSocket<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut read_buf = ReadBuf::new(buf);
        match Pin::new(&mut *self.tcp).poll_read(self.cx, &mut read_buf) {
            Poll::Ready(Ok(())) => Ok(read_buf.filled().len()),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for SyncSocket<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.tcp).poll_write(self.cx, buf) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match Pin::new(&mut *self.tcp).poll_write_vectored(self.cx, bufs) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
