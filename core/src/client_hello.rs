//! The first step of a TLS server connection, without IO: reading the client's ClientHello,
//! which says (by SNI and offered suites) which listener's `ServerConfig` serves the rest.

use std::io;

use rustls::server::Acceptor;

/// Reads a ClientHello from ciphertext that arrives in pieces of any size: the sans-IO first
/// step of accepting a connection, before the listener (and so the `ServerConfig`) is known.
///
/// rustls' `Acceptor::read_tls` takes at most 4 KiB per call, while one socket read can hold a
/// whole hello of up to 16 KiB (a post-quantum key share plus a resumption ticket that carries
/// a client chain passes 4 KiB) and the bytes behind it. So each piece is fed in a loop, the
/// hello is tried after each step, and feeding stops as soon as it is complete: the bytes not
/// fed then belong to the connection, which rustls continues with what it already buffered.
#[derive(Default)]
pub struct ClientHelloReader {
    acceptor: Acceptor,
}

impl std::fmt::Debug for ClientHelloReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientHelloReader").finish_non_exhaustive()
    }
}

/// Where reading the ClientHello stands after a piece of input.
// Returned once per connection and moved straight on: a box would be an allocation per
// handshake for nothing.
#[allow(clippy::large_enum_variant)]
pub enum HelloProgress {
    /// Not complete yet; the whole piece was taken.
    NeedMore,
    /// Complete: the first `consumed` bytes of the piece went to rustls, the rest is the
    /// connection's to process next.
    Complete {
        accepted: rustls::server::Accepted,
        consumed: usize,
    },
}

impl std::fmt::Debug for HelloProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HelloProgress::NeedMore => f.write_str("NeedMore"),
            HelloProgress::Complete { consumed, .. } => f
                .debug_struct("Complete")
                .field("consumed", consumed)
                .finish_non_exhaustive(),
        }
    }
}

/// Why the first flight was refused.
#[derive(Debug)]
pub enum HelloError {
    /// rustls could not buffer the input (a message over its size limit).
    Io(io::Error),
    /// Not a ClientHello rustls accepts; `alert` is the TLS alert to send the client.
    Tls {
        error: rustls::Error,
        alert: Vec<u8>,
    },
}

impl ClientHelloReader {
    /// Takes the next piece of the client's first flight.
    pub fn push(&mut self, input: &[u8]) -> Result<HelloProgress, HelloError> {
        let mut rest = input;
        while !rest.is_empty() {
            let fed = self.acceptor.read_tls(&mut rest).map_err(HelloError::Io)?;
            match self.acceptor.accept() {
                Ok(Some(accepted)) => {
                    return Ok(HelloProgress::Complete {
                        accepted,
                        consumed: input.len() - rest.len(),
                    });
                }
                Ok(None) if fed == 0 => {
                    // Not taken and not complete: rustls' buffer is full of a message it
                    // cannot finish; a loop would never end.
                    return Err(HelloError::Io(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "ClientHello larger than rustls accepts",
                    )));
                }
                Ok(None) => {}
                Err((error, mut alert)) => {
                    let mut out = Vec::new();
                    let _ = alert.write_all(&mut out);
                    return Err(HelloError::Tls { error, alert: out });
                }
            }
        }
        Ok(HelloProgress::NeedMore)
    }
}
