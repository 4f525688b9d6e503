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
use portcullis_core::client_hello::{ClientHelloReader, HelloError, HelloProgress};
use rustls::pki_types::CertificateDer;
use rustls::server::{ClientHello, ServerConnection};
use rustls::{HandshakeKind, ServerConfig};

use crate::bufpool;

/// After a handshake we refused with an alert, how long the connection keeps reading (and
/// dropping) what the client still sends, and how much. A TLS 1.3 client learns that its
/// certificate was refused only after its last flight, and often sends its first request
/// (an HTTP/2 client, its preface) before reading: closing with those bytes unread makes the
/// kernel reset the connection, and the reset destroys the alert that says why.
const REFUSED_HANDSHAKE_LINGER: std::time::Duration = std::time::Duration::from_secs(1);
const REFUSED_HANDSHAKE_LINGER_BYTES: usize = 64 * 1024;

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
    /// Bytes read before the HTTP/1.1 parser took over (while telling HTTP/2 with prior
    /// knowledge apart); the first `read_into` returns them.
    pre_read: Vec<u8>,
}

impl PlainStream {
    pub fn new(tcp: TcpStream) -> Self {
        Self {
            tcp,
            tx: Vec::new(),
            pre_read: Vec::new(),
        }
    }

    /// Gives `bytes`, already read from the socket, to the next `read_into`.
    pub fn replay(&mut self, bytes: Vec<u8>) {
        bufpool::give(std::mem::replace(&mut self.pre_read, bytes));
    }
}

impl PlainStream {
    /// The connection as a poll-mode stream (for a WebSocket tunnel); nothing may be queued.
    pub fn into_poll_stream(self) -> io::Result<monoio::net::tcp::stream_poll::TcpStreamPoll> {
        bufpool::give(self.tx);
        bufpool::give(self.pre_read);
        self.tcp.try_into_poll_io().map_err(|(e, _)| e)
    }
}

impl ClientIo for PlainStream {
    async fn read_into(&mut self, dst: &mut Vec<u8>) -> io::Result<usize> {
        if !self.pre_read.is_empty() {
            let n = self.pre_read.len();
            if dst.is_empty() {
                bufpool::give(std::mem::replace(dst, std::mem::take(&mut self.pre_read)));
            } else {
                dst.extend_from_slice(&self.pre_read);
                bufpool::give(std::mem::take(&mut self.pre_read));
            }
            return Ok(n);
        }
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
        if !self.pre_read.is_empty() {
            return Ok(());
        }
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
    bufs: StreamBuffers,
}

/// The connection's shard-pool buffers, given back when it ends.
#[derive(Debug, Default)]
struct StreamBuffers {
    /// Ciphertext read from the socket; `rx[rx_pos..]` is not yet handed to rustls.
    rx: Vec<u8>,
    rx_pos: usize,
    tx: Vec<u8>,
}

impl Drop for StreamBuffers {
    fn drop(&mut self) {
        bufpool::give(std::mem::take(&mut self.rx));
        bufpool::give(std::mem::take(&mut self.tx));
    }
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
    /// The connection, when we refused it with an alert: to [`TlsStream::linger`] on once
    /// the failure is counted.
    pub refused: Option<TlsStream>,
}

/// Runs the server handshake. `choose` maps the ClientHello (its SNI, its suites) to a listener
/// index and its config; `None` refuses the connection with `unrecognized_name`.
pub async fn accept(
    tcp: TcpStream,
    choose: impl FnOnce(&ClientHello<'_>) -> Option<(usize, Arc<ServerConfig>)>,
) -> Result<Accepted, HandshakeFailure> {
    let mut chosen = None;
    let mut refused = None;
    accept_inner(tcp, choose, &mut chosen, &mut refused)
        .await
        .map_err(|error| HandshakeFailure {
            listener: chosen,
            error,
            refused,
        })
}

async fn accept_inner(
    mut tcp: TcpStream,
    choose: impl FnOnce(&ClientHello<'_>) -> Option<(usize, Arc<ServerConfig>)>,
    chosen: &mut Option<usize>,
    refused: &mut Option<TlsStream>,
) -> Result<Accepted, HandshakeError> {
    let mut reader = ClientHelloReader::default();
    let mut rx = bufpool::take();
    let (accepted, consumed) = loop {
        let (res, buf) = tcp.read(rx).await;
        rx = buf;
        if res? == 0 {
            bufpool::give(rx);
            return Err(HandshakeError::Eof);
        }
        match reader.push(&rx) {
            Ok(HelloProgress::NeedMore) => continue,
            Ok(HelloProgress::Complete { accepted, consumed }) => break (accepted, consumed),
            Err(HelloError::Io(e)) => {
                bufpool::give(rx);
                return Err(HandshakeError::Io(e));
            }
            Err(HelloError::Tls { error, alert }) => {
                let _ = tcp.write_all(alert).await;
                bufpool::give(rx);
                return Err(HandshakeError::tls(error));
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
    // What followed the hello in the last read belongs to the connection.
    let mut stream = TlsStream {
        tcp,
        tls,
        bufs: StreamBuffers {
            rx,
            rx_pos: consumed,
            tx: Vec::new(),
        },
    };
    if let Err(e) = stream.complete_handshake().await {
        if matches!(e, HandshakeError::Tls { .. }) {
            *refused = Some(stream);
        }
        return Err(e);
    }
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
            if self.bufs.rx_pos >= self.bufs.rx.len() && !self.fill_rx().await? {
                return Err(HandshakeError::Eof);
            }
            self.feed_rx().await.map_err(|e| match e {
                FeedError::Tls { error, rejected } => HandshakeError::Tls { error, rejected },
                FeedError::Io(e) => HandshakeError::Io(e),
            })?;
        }
    }

    /// Ends a refused connection once its alert went out: FIN, then the client's bytes are read
    /// and dropped until it closes (see [`REFUSED_HANDSHAKE_LINGER`]).
    pub async fn linger(&mut self) {
        let _ = self.tcp.shutdown().await;
        let _ = monoio::time::timeout(REFUSED_HANDSHAKE_LINGER, async {
            let mut drained = 0;
            let mut buf = bufpool::take_idle_read();
            while drained < REFUSED_HANDSHAKE_LINGER_BYTES {
                let (res, back) = self.tcp.read(buf).await;
                buf = back;
                match res {
                    Ok(n) if n > 0 => drained += n,
                    _ => break,
                }
            }
            bufpool::give(buf);
        })
        .await;
    }

    /// The client's certificate chain (restored from the ticket on a resumed session).
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.tls.peer_certificates()
    }

    /// The protocol the client and we agreed on by ALPN, if any.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.tls.alpn_protocol()
    }

    pub fn resumed(&self) -> bool {
        self.tls.handshake_kind() == Some(HandshakeKind::Resumed)
    }

    /// Reads one socket read's worth of ciphertext; `false` at EOF.
    async fn fill_rx(&mut self) -> io::Result<bool> {
        let mut rx = std::mem::take(&mut self.bufs.rx);
        if rx.capacity() < bufpool::IO_BUFFER_BYTES {
            // Bytes are moving: a full-size buffer (the idle one is small).
            bufpool::give(rx);
            rx = bufpool::take();
        }
        rx.clear();
        self.bufs.rx_pos = 0;
        let (res, buf) = self.tcp.read(rx).await;
        self.bufs.rx = buf;
        Ok(res? > 0)
    }

    /// Hands buffered ciphertext to rustls and processes it; sends whatever rustls answers
    /// (alerts included, so a rejected client learns why at the TLS layer).
    async fn feed_rx(&mut self) -> Result<(), FeedError> {
        let mut pending = self.bufs.rx.get(self.bufs.rx_pos..).unwrap_or_default();
        let before = pending.len();
        let fed = self.tls.read_tls(&mut pending);
        self.bufs.rx_pos += before - pending.len();
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
            let mut tx = std::mem::take(&mut self.bufs.tx);
            if tx.capacity() == 0 {
                tx = bufpool::take();
            }
            self.tls.write_tls(&mut tx)?;
            let (res, mut buf) = self.tcp.write_all(tx).await;
            buf.clear();
            self.bufs.tx = buf;
            res?;
        }
        bufpool::give(std::mem::take(&mut self.bufs.tx));
        Ok(())
    }

    /// Returns the read buffer to the shard pool once everything in it was processed.
    fn release_idle_buffers(&mut self) {
        if self.bufs.rx_pos >= self.bufs.rx.len() && self.bufs.rx.capacity() > 0 {
            bufpool::give(std::mem::take(&mut self.bufs.rx));
            self.bufs.rx_pos = 0;
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
            if self.bufs.rx_pos >= self.bufs.rx.len() && !self.fill_rx().await? {
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
        if self.bufs.rx_pos < self.bufs.rx.len() || self.tls_has_plaintext() {
            return Ok(());
        }
        // Read right away with a small buffer rather than poll for readiness and then read:
        // one operation per request instead of two (see `bufpool`). End of stream leaves `rx`
        // empty; the next `read_into` sees it again and reports it.
        self.release_idle_buffers();
        let (res, buf) = self.tcp.read(bufpool::take_idle_read()).await;
        self.bufs.rx = buf;
        self.bufs.rx_pos = 0;
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

impl TlsStream {
    /// The connection as a poll-mode stream (for HTTP/2), with the ciphertext already read.
    pub fn into_poll_stream(self) -> io::Result<crate::tls_poll::TlsPollStream> {
        let TlsStream { tcp, tls, bufs } = self;
        let tcp = tcp.try_into_poll_io().map_err(|(e, _)| e)?;
        // The unread rest moves with the session; the pool buffer goes back with `bufs`.
        let unread = bufs.rx.get(bufs.rx_pos..).unwrap_or_default().to_vec();
        Ok(crate::tls_poll::TlsPollStream::new(tcp, tls, unread))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{PrivateKeyDer, ServerName};
    use rustls::{ClientConfig, ClientConnection, RootCertStore};

    use crate::pki::{GuidePki, KeyKind};

    /// A server for `example.com` and a client trusting it whose first flight is padded with
    /// filler ALPN names (`http/1.1` last, so the handshake still agrees) to about
    /// `hello_bytes`.
    fn configs(pki: &GuidePki, hello_bytes: usize) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(pki.server.cert.as_bytes())
                .map(Result::unwrap)
                .collect();
        let key = PrivateKeyDer::from_pem_slice(pki.server.key.as_bytes()).unwrap();
        let mut server = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(pki.ca.pem.cert.as_bytes()).unwrap())
            .unwrap();
        let mut client = ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = filler_alpn(hello_bytes);
        (Arc::new(server), Arc::new(client))
    }

    /// ALPN names adding about `bytes` to a ClientHello, then `http/1.1`.
    fn filler_alpn(bytes: usize) -> Vec<Vec<u8>> {
        let mut names: Vec<Vec<u8>> = (0..bytes / 201)
            .map(|i| format!("x-filler-{i:03}-{}", "p".repeat(186)).into_bytes())
            .collect();
        names.push(b"http/1.1".to_vec());
        names
    }

    /// Hands `input` to the server connection, all of it.
    fn feed(server: &mut ServerConnection, mut input: &[u8]) {
        while !input.is_empty() {
            server.read_tls(&mut input).unwrap();
            server.process_new_packets().unwrap();
        }
    }

    fn pump(from: &mut impl FnMut(&mut Vec<u8>) -> usize) -> Vec<u8> {
        let mut out = Vec::new();
        while from(&mut out) > 0 {}
        out
    }

    /// The client's first flight arrives in pieces of `piece` bytes; the server reads the hello
    /// with [`ClientHelloReader`], and the handshake must then complete in memory. Returns the
    /// size of the first flight.
    fn handshake_with_pieces(pki: &GuidePki, hello_bytes: usize, piece: usize) -> usize {
        let (server_config, client_config) = configs(pki, hello_bytes);
        let mut client =
            ClientConnection::new(client_config, ServerName::try_from("example.com").unwrap())
                .unwrap();
        let first_flight = pump(&mut |out| client.write_tls(out).unwrap());
        let mut reader = ClientHelloReader::default();
        let mut server = None;
        for chunk in first_flight.chunks(piece) {
            match &mut server {
                Some(server) => feed(server, chunk),
                None => match reader.push(chunk).unwrap() {
                    HelloProgress::NeedMore => {}
                    HelloProgress::Complete { accepted, consumed } => {
                        assert!(consumed <= chunk.len());
                        let mut conn = accepted
                            .into_connection(Arc::clone(&server_config))
                            .unwrap();
                        feed(&mut conn, &chunk[consumed..]);
                        server = Some(conn);
                    }
                },
            }
        }
        let mut server = server.expect("the whole first flight was sent: the hello is complete");
        while server.is_handshaking() || client.is_handshaking() {
            let to_client = pump(&mut |out| server.write_tls(out).unwrap());
            let mut rest = to_client.as_slice();
            while !rest.is_empty() {
                client.read_tls(&mut rest).unwrap();
                client.process_new_packets().unwrap();
            }
            let to_server = pump(&mut |out| client.write_tls(out).unwrap());
            feed(&mut server, &to_server);
        }
        assert_eq!(server.alpn_protocol(), Some(&b"http/1.1"[..]));
        first_flight.len()
    }

    #[test]
    fn client_hellos_of_4_to_16_kib_complete_in_any_pieces() {
        let pki = GuidePki::generate(KeyKind::EcdsaP256).unwrap();
        for hello_bytes in [0, 3_000, 4_085, 4_385, 8_000, 12_000, 15_500] {
            for piece in [1, 7, 100, 1_000, 4_095, 4_096, 4_097, 9_000, usize::MAX] {
                let sent = handshake_with_pieces(&pki, hello_bytes, piece);
                assert!(sent >= hello_bytes, "padding reached {sent} bytes");
            }
        }
    }

    #[test]
    fn garbage_is_refused_with_an_alert_and_never_loops() {
        let mut reader = ClientHelloReader::default();
        match reader.push(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n") {
            Err(HelloError::Tls { alert, .. }) => assert_eq!(alert.first(), Some(&0x15)),
            other => panic!("{other:?}"),
        }
        // A handshake record header announcing more than rustls buffers, then filler.
        let mut reader = ClientHelloReader::default();
        let mut oversized = vec![0x16, 0x03, 0x01, 0xff, 0xff];
        oversized.resize(70_000, 0x01);
        assert!(reader.push(&oversized).is_err());
    }
}
