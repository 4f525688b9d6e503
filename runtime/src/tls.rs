//! rustls over monoio: the server side of one TLS connection, and the handshake that picks the
//! listener's `ServerConfig` by SNI.
//!
//! Why not monoio-rustls: its acceptor takes one fixed `ServerConfig` (no choice by SNI through
//! rustls' `Acceptor`), it hides the session (no peer certificate, no handshake kind), and its
//! `unsafe_io` mode makes dropping a read or write future undefined behaviour, which every
//! timeout does. This is a thin sans-IO driver instead: rustls owns the protocol, we move
//! bytes with owned monoio buffers, and any future may be dropped at any await.

use std::io::{self, BufRead, Write};
use std::sync::Arc;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use portcullis_core::client_auth::{self, RejectedCertificate};
use rustls::pki_types::CertificateDer;
use rustls::server::{Acceptor, ClientHello, ServerConnection};
use rustls::{HandshakeKind, ServerConfig};

use crate::bufpool;

/// A fatal `unrecognized_name` alert (RFC 6066): the SNI names no listener on this port.
const ALERT_UNRECOGNIZED_NAME: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 112];

/// What the client side of a connection looks like to the HTTP layer: plaintext in, plaintext
/// out, with writes queued until `flush` so a response head and its first body bytes leave
/// in one TLS record and one syscall.
#[allow(async_fn_in_trait)] // shards are single-threaded: these futures are never sent
pub trait ClientIo {
    /// Appends received plaintext to `dst`; `Ok(0)` at end of stream.
    async fn read_into(&mut self, dst: &mut Vec<u8>) -> io::Result<usize>;
    /// Queues plaintext for the client.
    fn queue(&mut self, data: &[u8]) -> io::Result<()>;
    /// Sends everything queued.
    async fn flush(&mut self) -> io::Result<()>;
    /// Waits until the client sends more (idle keep-alive), with at most a small buffer in
    /// flight meanwhile.
    async fn wait_readable(&mut self) -> io::Result<()>;
    /// Queues the end of the stream (TLS close_notify) behind what is queued, so that a last
    /// response and its close leave in one write; nothing may be queued after it.
    fn queue_close(&mut self);
    /// Ends the connection politely (TLS close_notify, then FIN).
    async fn close(&mut self);
}

/// Reads into the spare capacity of `buf` (appending); returns the buffer and the count.
pub async fn read_append(tcp: &mut TcpStream, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
    if buf.len() == buf.capacity() {
        buf.reserve(bufpool::IO_BUFFER_BYTES);
    }
    let len = buf.len();
    let cap = buf.capacity();
    let (res, slice) = tcp.read(buf.slice_mut(len..cap)).await;
    (res, slice.into_inner())
}

/// A plain TCP client connection (HTTP listeners).
#[derive(Debug)]
pub struct PlainStream {
    tcp: TcpStream,
    tx: Vec<u8>,
}

impl PlainStream {
    pub fn new(tcp: TcpStream) -> Self {
        Self {
            tcp,
            tx: Vec::new(),
        }
    }
}

impl ClientIo for PlainStream {
    async fn read_into(&mut self, dst: &mut Vec<u8>) -> io::Result<usize> {
        let (res, buf) = read_append(&mut self.tcp, std::mem::take(dst)).await;
        *dst = buf;
        res
    }

    fn queue(&mut self, data: &[u8]) -> io::Result<()> {
        if self.tx.capacity() == 0 {
            self.tx = bufpool::take();
        }
        self.tx.extend_from_slice(data);
        Ok(())
    }

    async fn flush(&mut self) -> io::Result<()> {
        if self.tx.is_empty() {
            return Ok(());
        }
        let (res, buf) = self.tcp.write_all(std::mem::take(&mut self.tx)).await;
        bufpool::give(buf);
        res.map(drop)
    }

    async fn wait_readable(&mut self) -> io::Result<()> {
        self.tcp.readable(false).await
    }

    fn queue_close(&mut self) {
        // Plain TCP ends with the FIN that `close` sends.
    }

    async fn close(&mut self) {
        let _ = self.flush().await;
        let _ = self.tcp.shutdown().await;
    }
}

/// Why a TLS handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("connection closed during the handshake")]
    Eof,
    #[error("socket error during the handshake: {0}")]
    Io(#[from] io::Error),
    #[error("no listener for server name {0:?}")]
    UnknownServerName(Option<String>),
    #[error("TLS: {error}")]
    Tls {
        error: rustls::Error,
        /// The client certificate the verifier refused, when that was the failure.
        rejected: Option<RejectedCertificate>,
    },
}

impl HandshakeError {
    fn tls(error: rustls::Error) -> Self {
        HandshakeError::Tls {
            error,
            rejected: None,
        }
    }
}

/// A completed server-side TLS connection.
#[derive(Debug)]
pub struct TlsStream {
    tcp: TcpStream,
    tls: ServerConnection,
    /// Ciphertext read from the socket; `rx[rx_pos..]` is not yet handed to rustls.
    rx: Vec<u8>,
    rx_pos: usize,
    tx: Vec<u8>,
}

/// The handshake's result: the stream and which listener the SNI selected.
#[derive(Debug)]
pub struct Accepted {
    pub stream: TlsStream,
    pub listener: usize,
    pub server_name: Option<String>,
}

/// A failed handshake, and the listener the SNI had selected when it failed after that.
#[derive(Debug)]
pub struct HandshakeFailure {
    pub listener: Option<usize>,
    pub error: HandshakeError,
}

/// Runs the server handshake. `choose` maps the ClientHello (its SNI, its suites) to a listener
/// index and its config; `None` refuses the connection with `unrecognized_name`.
pub async fn accept(
    tcp: TcpStream,
    choose: impl FnOnce(&ClientHello<'_>) -> Option<(usize, Arc<ServerConfig>)>,
) -> Result<Accepted, HandshakeFailure> {
    let mut chosen = None;
    accept_inner(tcp, choose, &mut chosen)
        .await
        .map_err(|error| HandshakeFailure {
            listener: chosen,
            error,
        })
}

async fn accept_inner(
    mut tcp: TcpStream,
    choose: impl FnOnce(&ClientHello<'_>) -> Option<(usize, Arc<ServerConfig>)>,
    chosen: &mut Option<usize>,
) -> Result<Accepted, HandshakeError> {
    let mut acceptor = Acceptor::default();
    let mut rx = bufpool::take();
    let accepted = loop {
        let (res, buf) = tcp.read(rx).await;
        rx = buf;
        if res? == 0 {
            bufpool::give(rx);
            return Err(HandshakeError::Eof);
        }
        acceptor.read_tls(&mut rx.as_slice())?;
        match acceptor.accept() {
            Ok(Some(accepted)) => break accepted,
            Ok(None) => continue,
            Err((err, mut alert)) => {
                let mut out = Vec::new();
                let _ = alert.write_all(&mut out);
                let _ = tcp.write_all(out).await;
                bufpool::give(rx);
                return Err(HandshakeError::tls(err));
            }
        }
    };
    let hello = accepted.client_hello();
    let server_name = hello.server_name().map(str::to_owned);
    let Some((listener, config)) = choose(&hello) else {
        let _ = tcp.write_all(ALERT_UNRECOGNIZED_NAME.to_vec()).await;
        bufpool::give(rx);
        return Err(HandshakeError::UnknownServerName(server_name));
    };
    *chosen = Some(listener);
    let tls = match accepted.into_connection(config) {
        Ok(tls) => tls,
        Err((err, mut alert)) => {
            let mut out = Vec::new();
            let _ = alert.write_all(&mut out);
            let _ = tcp.write_all(out).await;
            bufpool::give(rx);
            return Err(HandshakeError::tls(err));
        }
    };
    rx.clear();
    let mut stream = TlsStream {
        tcp,
        tls,
        rx,
        rx_pos: 0,
        tx: Vec::new(),
    };
    stream.complete_handshake().await?;
    Ok(Accepted {
        stream,
        listener,
        server_name,
    })
}

impl TlsStream {
    async fn complete_handshake(&mut self) -> Result<(), HandshakeError> {
        loop {
            self.flush_tls().await?;
            if !self.tls.is_handshaking() {
                self.release_idle_buffers();
                return Ok(());
            }
            if self.rx_pos >= self.rx.len() && !self.fill_rx().await? {
                return Err(HandshakeError::Eof);
            }
            self.feed_rx().await.map_err(|e| match e {
                FeedError::Tls { error, rejected } => HandshakeError::Tls { error, rejected },
                FeedError::Io(e) => HandshakeError::Io(e),
            })?;
        }
    }

    /// The client's certificate chain (restored from the ticket on a resumed session).
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.tls.peer_certificates()
    }

    pub fn resumed(&self) -> bool {
        self.tls.handshake_kind() == Some(HandshakeKind::Resumed)
    }

    /// Reads one socket read's worth of ciphertext; `false` at EOF.
    async fn fill_rx(&mut self) -> io::Result<bool> {
        let mut rx = std::mem::take(&mut self.rx);
        if rx.capacity() < bufpool::IO_BUFFER_BYTES {
            // Bytes are moving: a full-size buffer (the idle one is small).
            bufpool::give(rx);
            rx = bufpool::take();
        }
        rx.clear();
        self.rx_pos = 0;
        let (res, buf) = self.tcp.read(rx).await;
        self.rx = buf;
        Ok(res? > 0)
    }

    /// Hands buffered ciphertext to rustls and processes it; sends whatever rustls answers
    /// (alerts included, so a rejected client learns why at the TLS layer).
    async fn feed_rx(&mut self) -> Result<(), FeedError> {
        let mut pending = self.rx.get(self.rx_pos..).unwrap_or_default();
        let before = pending.len();
        let fed = self.tls.read_tls(&mut pending);
        self.rx_pos += before - pending.len();
        fed.map_err(FeedError::Io)?;
        match self.tls.process_new_packets() {
            Ok(_) => Ok(()),
            Err(error) => {
                // Read before the next await: another connection's handshake may run then.
                let rejected = client_auth::take_rejected_certificate();
                let _ = self.flush_tls().await;
                Err(FeedError::Tls { error, rejected })
            }
        }
    }

    async fn flush_tls(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            let mut tx = std::mem::take(&mut self.tx);
            if tx.capacity() == 0 {
                tx = bufpool::take();
            }
            self.tls.write_tls(&mut tx)?;
            let (res, mut buf) = self.tcp.write_all(tx).await;
            buf.clear();
            self.tx = buf;
            res?;
        }
        bufpool::give(std::mem::take(&mut self.tx));
        Ok(())
    }

    /// Returns the read buffer to the shard pool once everything in it was processed.
    fn release_idle_buffers(&mut self) {
        if self.rx_pos >= self.rx.len() && self.rx.capacity() > 0 {
            bufpool::give(std::mem::take(&mut self.rx));
            self.rx_pos = 0;
        }
    }

    /// Moves decrypted plaintext into `dst`; `None` when rustls holds none.
    fn drain_plaintext(&mut self, dst: &mut Vec<u8>) -> io::Result<Option<usize>> {
        let mut reader = self.tls.reader();
        match reader.fill_buf() {
            Ok([]) => Ok(Some(0)), // close_notify received: clean end of stream
            Ok(chunk) => {
                let n = chunk.len();
                dst.extend_from_slice(chunk);
                reader.consume(n);
                Ok(Some(n))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }
}

enum FeedError {
    Io(io::Error),
    Tls {
        error: rustls::Error,
        rejected: Option<RejectedCertificate>,
    },
}

impl ClientIo for TlsStream {
    async fn read_into(&mut self, dst: &mut Vec<u8>) -> io::Result<usize> {
        loop {
            if let Some(n) = self.drain_plaintext(dst)? {
                self.release_idle_buffers();
                return Ok(n);
            }
            if self.rx_pos >= self.rx.len() && !self.fill_rx().await? {
                self.release_idle_buffers();
                return Ok(0);
            }
            self.feed_rx().await.map_err(|e| match e {
                FeedError::Io(e) => e,
                FeedError::Tls { error, .. } => io::Error::new(io::ErrorKind::InvalidData, error),
            })?;
        }
    }

    fn queue(&mut self, data: &[u8]) -> io::Result<()> {
        self.tls.writer().write_all(data)
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.flush_tls().await
    }

    async fn wait_readable(&mut self) -> io::Result<()> {
        // Bytes may already be here: unprocessed ciphertext, or plaintext rustls decrypted
        // along with the handshake's last flight (the first request often arrives with it).
        if self.rx_pos < self.rx.len() || self.tls_has_plaintext() {
            return Ok(());
        }
        // Read right away with a small buffer rather than poll for readiness and then read:
        // one operation per request instead of two (see `bufpool`). End of stream leaves `rx`
        // empty; the next `read_into` sees it again and reports it.
        self.release_idle_buffers();
        let (res, buf) = self.tcp.read(bufpool::take_idle_read()).await;
        self.rx = buf;
        self.rx_pos = 0;
        res.map(drop)
    }

    fn queue_close(&mut self) {
        self.tls.send_close_notify();
    }

    async fn close(&mut self) {
        // Does nothing more if `queue_close` already queued it.
        self.tls.send_close_notify();
        let _ = self.flush_tls().await;
        let _ = self.tcp.shutdown().await;
        self.release_idle_buffers();
    }
}

impl TlsStream {
    fn tls_has_plaintext(&mut self) -> bool {
        matches!(self.tls.reader().fill_buf(), Ok(chunk) if !chunk.is_empty())
    }
}

impl Drop for TlsStream {
    fn drop(&mut self) {
        bufpool::give(std::mem::take(&mut self.rx));
        bufpool::give(std::mem::take(&mut self.tx));
    }
}
