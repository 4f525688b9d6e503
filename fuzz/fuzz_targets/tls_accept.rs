//! The TLS accept path: arbitrary bytes from a client, cut into arbitrary reads, through rustls'
//! `Acceptor` (the ClientHello), the listener choice by SNI and suites, and the `ServerConnection`
//! of a compiled mutual-TLS listener (`fuzz/src/tls_gateway.rs`).
//!
//! The ClientHello is read by the runtime's own sans-IO reader (`ClientHelloReader`), and the
//! bytes after it in the same read go to the connection, as the runtime does; the rest is the
//! runtime's handshake loop without sockets, every step's output drained. Invariants: no panic,
//! no endless loop, and the same outcome whatever the reads (the bytes in one read, or cut by
//! the pattern byte).

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use portcullis_core::client_auth;
use portcullis_core::client_hello::{ClientHelloReader, HelloError, HelloProgress};
use portcullis_fuzz::tls_gateway::{Pki, TlsGateway};
use portcullis_fuzz::{reads, split_input};

static GATEWAY: LazyLock<TlsGateway> = LazyLock::new(|| {
    TlsGateway::new(&Pki {
        ca_cert: include_str!("../pki/ca.pem"),
        server_cert: include_str!("../pki/server.pem"),
        server_key: include_str!("../pki/server.key"),
    })
    .unwrap_or_else(|e| panic!("the fuzz gateway does not compile: {e}"))
});

/// Where a connection stood when the client's bytes ran out, or why it ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Still waiting for the rest of the ClientHello.
    AwaitingHello,
    /// rustls refused the bytes before a ClientHello was complete, or the ClientHello itself.
    HelloRefused(String),
    /// No listener for the SNI: `unrecognized_name`.
    UnknownServerName,
    /// The chosen config cannot serve this ClientHello.
    ConfigRefused(String),
    /// The handshake goes on; `true` once it completed.
    Running { handshake_done: bool },
    /// rustls refused to buffer more (it must process first) or the peer closed the stream.
    ReadStopped(String),
    /// The connection failed (alerts drained); the client certificate the verifier refused, if
    /// that was the failure.
    Failed { error: String, rejected: bool },
}

fuzz_target!(|data: &[u8]| {
    let Some((pattern, stream)) = split_input(data) else {
        return;
    };
    // All the bytes in one read (no read at all for none: a socket read is never empty).
    let one_read: Vec<&[u8]> = if stream.is_empty() {
        Vec::new()
    } else {
        vec![stream]
    };
    let whole = serve(&one_read);
    let split = serve(&reads(pattern, stream));
    assert_eq!(whole, split, "the reads changed the outcome");
});

fn serve(reads: &[&[u8]]) -> Outcome {
    let mut reads = reads.iter().copied();
    let mut hello = ClientHelloReader::default();
    let (accepted, mut pending) = loop {
        let Some(read) = reads.next() else {
            return Outcome::AwaitingHello;
        };
        match hello.push(read) {
            Ok(HelloProgress::NeedMore) => {}
            Ok(HelloProgress::Complete { accepted, consumed }) => {
                break (accepted, read.get(consumed..).unwrap_or_default());
            }
            Err(HelloError::Io(e)) => return Outcome::ReadStopped(e.to_string()),
            Err(HelloError::Tls { error, .. }) => {
                return Outcome::HelloRefused(format!("{error:?}"));
            }
        }
    };
    let Some((_, config)) = GATEWAY.choose(&accepted.client_hello()) else {
        return Outcome::UnknownServerName;
    };
    let mut tls = match accepted.into_connection(config) {
        Ok(tls) => tls,
        Err((error, mut alert)) => {
            let mut out = Vec::new();
            let _ = alert.write_all(&mut out);
            return Outcome::ConfigRefused(format!("{error:?}"));
        }
    };
    let mut sent = Vec::new();
    let mut plaintext = Vec::new();
    loop {
        // First what rustls already holds: bytes that came in the ClientHello's reads.
        if let Err(error) = tls.process_new_packets() {
            let rejected = client_auth::take_rejected_certificate().is_some();
            while tls.wants_write() && tls.write_tls(&mut sent).is_ok() {}
            return Outcome::Failed {
                error: format!("{error:?}"),
                rejected,
            };
        }
        // Application data needs a finished handshake, which no fuzz input can reach; drained
        // all the same, as the runtime does, so that the plaintext buffer never fills.
        let _ = std::io::Read::read_to_end(&mut tls.reader(), &mut plaintext);
        plaintext.clear();
        while tls.wants_write() && tls.write_tls(&mut sent).is_ok() {}
        sent.clear();
        if pending.is_empty() {
            match reads.next() {
                Some(read) => pending = read,
                None => {
                    return Outcome::Running {
                        handshake_done: !tls.is_handshaking(),
                    };
                }
            }
        }
        match tls.read_tls(&mut pending) {
            Ok(0) => return Outcome::ReadStopped("end of stream".to_owned()),
            Ok(_) => {}
            Err(e) => return Outcome::ReadStopped(e.to_string()),
        }
    }
}
