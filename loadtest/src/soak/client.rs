//! A blocking TLS client: rustls driven by hand over a `std` socket (not `StreamOwned`, which
//! writes what it has queued before every read: after the gateway refused a write, the answer
//! it sent before closing could then not be read). Every error becomes the [`Outcome`] the
//! report counts.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use portcullis_core::http1::{
    ChunkedDecoder, ContentLengthBody, HeadLimits, ResponseBody, parse_response_head,
};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};

use super::report::{Outcome, ResetPoint};

/// Plaintext read at a time.
const READ_CHUNK_BYTES: usize = 16 * 1024;

/// One TLS connection to the gateway.
#[derive(Debug)]
pub struct TlsConn {
    tcp: TcpStream,
    tls: ClientConnection,
}

impl TlsConn {
    /// Connects and runs the handshake as far as the client can alone. In TLS 1.3 the
    /// gateway's verdict on the client certificate arrives with the first read; in TLS 1.2 it
    /// ends the handshake here.
    pub fn connect(
        addr: SocketAddr,
        config: &Arc<ClientConfig>,
        name: &ServerName<'static>,
        timeout: Duration,
    ) -> Result<TlsConn, Outcome> {
        let tcp =
            TcpStream::connect_timeout(&addr, timeout).map_err(|e| Outcome::Connect(e.kind()))?;
        let _ = tcp.set_nodelay(true);
        tcp.set_read_timeout(Some(timeout)).map_err(io_outcome)?;
        tcp.set_write_timeout(Some(timeout)).map_err(io_outcome)?;
        let tls = ClientConnection::new(Arc::clone(config), name.clone())
            .map_err(|e| Outcome::Tls(e.to_string()))?;
        let mut conn = TlsConn { tcp, tls };
        while conn.tls.is_handshaking() {
            if conn.tls.wants_write() {
                conn.flush()?;
            } else if conn.read_tls()? == 0 {
                return Err(Outcome::Closed);
            }
        }
        conn.flush()?;
        Ok(conn)
    }

    /// The DER of the gateway's certificate.
    pub fn server_certificate(&self) -> Option<&[u8]> {
        self.tls
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|cert| cert.as_ref())
    }

    /// Sends `bytes` (one TLS record per 16 KiB).
    pub fn send(&mut self, bytes: &[u8]) -> Result<(), Outcome> {
        self.tls.writer().write_all(bytes).map_err(io_outcome)?;
        self.flush()
    }

    fn flush(&mut self) -> Result<(), Outcome> {
        while self.tls.wants_write() {
            self.tls.write_tls(&mut self.tcp).map_err(io_outcome)?;
        }
        Ok(())
    }

    /// Appends plaintext to `buf`; `Ok(0)` when the gateway closed the connection.
    pub fn read(&mut self, buf: &mut Vec<u8>) -> Result<usize, Outcome> {
        let mut chunk = [0u8; READ_CHUNK_BYTES];
        loop {
            match self.tls.reader().read(&mut chunk) {
                Ok(n) => {
                    buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The transport ended without close_notify: closed all the same.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(io_outcome(e)),
            }
            self.read_tls()?;
        }
    }

    /// Like [`read`](Self::read), waiting at most `wait`: `None` when nothing came.
    pub fn read_within(
        &mut self,
        buf: &mut Vec<u8>,
        wait: Duration,
        then: Duration,
    ) -> Result<Option<usize>, Outcome> {
        self.tcp.set_read_timeout(Some(wait)).map_err(io_outcome)?;
        let read = self.read(buf);
        self.tcp.set_read_timeout(Some(then)).map_err(io_outcome)?;
        match read {
            Ok(n) => Ok(Some(n)),
            Err(Outcome::TimedOut) => Ok(None),
            Err(other) => Err(other),
        }
    }

    /// Reads ciphertext from the socket into rustls and processes it; 0 at end of stream.
    fn read_tls(&mut self) -> Result<usize, Outcome> {
        let n = self.tls.read_tls(&mut self.tcp).map_err(io_outcome)?;
        match self.tls.process_new_packets() {
            Ok(_) => Ok(n),
            Err(rustls::Error::AlertReceived(alert)) => Err(Outcome::Alert(alert)),
            Err(e) => Err(Outcome::Tls(e.to_string())),
        }
    }

    /// Resets the connection (SO_LINGER 0, then close): what a client that crashes or is
    /// killed mid-request does to the gateway.
    pub fn reset(self, after: ResetPoint) -> Outcome {
        match socket2::SockRef::from(&self.tcp).set_linger(Some(Duration::ZERO)) {
            Ok(()) => Outcome::ResetSent(after),
            Err(e) => io_outcome(e),
        }
    }
}

fn io_outcome(e: io::Error) -> Outcome {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Outcome::TimedOut,
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => Outcome::Reset,
        io::ErrorKind::UnexpectedEof => Outcome::Closed,
        kind => Outcome::Io(kind),
    }
}

/// A GET request for `path` on `host`.
pub fn get_request(path: &str, host: &str, close: bool) -> Vec<u8> {
    let connection = if close { "connection: close\r\n" } else { "" };
    format!(
        "GET {path} HTTP/1.1\r\nhost: {host}\r\nuser-agent: portcullis-soak\r\n{connection}\r\n"
    )
    .into_bytes()
}

/// A complete response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// The connection can carry another request.
    pub reusable: bool,
}

/// Reads one final response (1xx skipped) into and out of `buf`; bytes after it stay.
pub fn read_response(conn: &mut TlsConn, buf: &mut Vec<u8>) -> Result<Response, Outcome> {
    let limits = HeadLimits::default();
    let head = loop {
        match parse_response_head(buf, false, &limits) {
            Ok(Some(head)) if head.is_informational => {
                buf.drain(..head.head_len.min(buf.len()));
                continue;
            }
            Ok(Some(head)) => break head,
            Ok(None) => {}
            Err(e) => return Err(Outcome::BadResponse(e.to_string())),
        }
        if conn.read(buf)? == 0 {
            return Err(Outcome::Closed);
        }
    };
    buf.drain(..head.head_len.min(buf.len()));
    let reusable = head.backend_keep_alive;
    match head.body {
        ResponseBody::None => {}
        ResponseBody::ContentLength(length) => {
            let mut body = ContentLengthBody::new(length);
            loop {
                let progress = body.advance(buf);
                buf.drain(..progress.consumed.min(buf.len()));
                if progress.done {
                    break;
                }
                if conn.read(buf)? == 0 {
                    return Err(Outcome::Closed);
                }
            }
        }
        ResponseBody::Chunked => {
            let mut body = ChunkedDecoder::new();
            loop {
                let progress = body
                    .advance(buf)
                    .map_err(|e| Outcome::BadResponse(e.to_string()))?;
                buf.drain(..progress.consumed.min(buf.len()));
                if progress.done {
                    break;
                }
                if conn.read(buf)? == 0 {
                    return Err(Outcome::Closed);
                }
            }
        }
        ResponseBody::CloseDelimited => {
            buf.clear();
            while conn.read(buf)? > 0 {
                buf.clear();
            }
            return Ok(Response {
                status: head.status,
                reusable: false,
            });
        }
    }
    Ok(Response {
        status: head.status,
        reusable,
    })
}
