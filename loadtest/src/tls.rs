//! rustls over monoio, client side: a thin sans-IO driver, the mirror image of the server's
//! `runtime/src/tls.rs` (which is server-only: it picks a `ServerConfig` by SNI through rustls'
//! `Acceptor`). rustls owns the protocol; this moves ciphertext between it and an owned monoio
//! buffer, so any future here may be dropped at any await (the per-request timeout does).

use std::io::{self, BufRead, Write};
use std::net::SocketAddr;
use std::sync::Arc;

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, HandshakeKind};

use crate::stats::Failure;

/// Ciphertext read buffer: one maximum TLS record (16 KiB plaintext) plus header and AEAD
/// overhead, so one socket read can always hold a whole record, as the server's pool does.
pub const RECORD_BUFFER_BYTES: usize = 16 * 1024 + 512;

/// One client TLS connection.
#[derive(Debug)]
pub struct TlsClient {
    tcp: TcpStream,
    tls: ClientConnection,
    /// Ciphertext read from the socket; `rx[rx_pos..]` is not yet handed to rustls.
    rx: Vec<u8>,
    rx_pos: usize,
    tx: Vec<u8>,
    /// The transport reached end of stream (and rustls was told).
    eof: bool,
}

impl TlsClient {
    /// Connects and runs the handshake until rustls has nothing more to wait for. In TLS 1.3
    /// the client's last flight (its certificate, `Finished`) is queued, not sent: it leaves
    /// with the first request, and the server's verdict on the client certificate arrives with
    /// the first read.
    pub async fn connect(
        addr: SocketAddr,
        config: &Arc<ClientConfig>,
        name: &ServerName<'static>,
    ) -> Result<Self, Failure> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| Failure::Connect(e.kind()))?;
        // Requests are small writes that must leave at once: Nagle would add a round trip.
        let _ = tcp.set_nodelay(true);
        let tls = ClientConnection::new(Arc::clone(config), name.clone()).map_err(Failure::Tls)?;
        let mut client = TlsClient {
            tcp,
            tls,
            rx: Vec::with_capacity(RECORD_BUFFER_BYTES),
            rx_pos: 0,
            tx: Vec::new(),
            eof: false,
        };
        client.flush().await?; // the ClientHello
        while client.tls.is_handshaking() {
            if !client.read_and_process().await? {
                return Err(Failure::Closed);
            }
        }
        Ok(client)
    }

    /// Whether the handshake resumed a session.
    pub fn resumed(&self) -> bool {
        self.tls.handshake_kind() == Some(HandshakeKind::Resumed)
    }

    /// Queues plaintext; [`flush`](Self::flush) sends it.
    pub fn queue(&mut self, data: &[u8]) -> Result<(), Failure> {
        self.tls
            .writer()
            .write_all(data)
            .map_err(|e| Failure::Io(e.kind()))
    }

    /// Sends everything rustls has to send (handshake messages, records, alerts).
    pub async fn flush(&mut self) -> Result<(), Failure> {
        while self.tls.wants_write() {
            let mut tx = std::mem::take(&mut self.tx);
            tx.clear();
            self.tls
                .write_tls(&mut tx)
                .map_err(|e| Failure::Io(e.kind()))?;
            let (res, buf) = self.tcp.write_all(tx).await;
            self.tx = buf;
            res.map_err(|e| Failure::Io(e.kind()))?;
        }
        Ok(())
    }

    /// Appends received plaintext to `dst`; `Ok(0)` at end of stream (close_notify, or the
    /// transport closed).
    pub async fn read_plain(&mut self, dst: &mut Vec<u8>) -> Result<usize, Failure> {
        loop {
            let mut reader = self.tls.reader();
            match reader.fill_buf() {
                Ok([]) => return Ok(0),
                Ok(chunk) => {
                    let n = chunk.len();
                    dst.extend_from_slice(chunk);
                    reader.consume(n);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(Failure::Io(e.kind())),
            }
            if self.eof {
                return Ok(0);
            }
            self.read_and_process().await?;
        }
    }

    /// Feeds rustls buffered ciphertext, reading from the socket when none is left, and sends
    /// whatever rustls answers. `false` when the transport ended.
    async fn read_and_process(&mut self) -> Result<bool, Failure> {
        if self.rx_pos >= self.rx.len() {
            let mut rx = std::mem::take(&mut self.rx);
            if rx.capacity() == 0 {
                rx.reserve(RECORD_BUFFER_BYTES);
            }
            rx.clear();
            self.rx_pos = 0;
            let (res, buf) = self.tcp.read(rx).await;
            self.rx = buf;
            let n = res.map_err(|e| Failure::Io(e.kind()))?;
            if n == 0 {
                self.eof = true;
                // Tells rustls the transport ended, so a missing close_notify is noticed.
                let _ = self.tls.read_tls(&mut io::empty());
                return Ok(false);
            }
        }
        let mut pending = self.rx.get(self.rx_pos..).unwrap_or_default();
        let before = pending.len();
        let fed = self.tls.read_tls(&mut pending);
        self.rx_pos += before - pending.len();
        fed.map_err(|e| Failure::Io(e.kind()))?;
        if let Err(error) = self.tls.process_new_packets() {
            // Sends our alert, if rustls has one, before giving up.
            let _ = self.flush().await;
            return Err(Failure::Tls(error));
        }
        // While handshaking the server waits for our flight; once done, whatever rustls has
        // queued (our last flight) leaves with the next request, in the same write.
        if self.tls.is_handshaking() {
            self.flush().await?;
        }
        Ok(true)
    }

    /// Frees the read and write buffers while the connection sits idle (hold mode).
    pub fn release_buffers(&mut self) {
        if self.rx_pos >= self.rx.len() {
            self.rx = Vec::new();
            self.rx_pos = 0;
        }
        self.tx = Vec::new();
    }

    /// Ends the connection politely: close_notify, then FIN.
    pub async fn close(mut self) {
        self.tls.send_close_notify();
        let _ = self.flush().await;
        let _ = self.tcp.shutdown().await;
    }
}
