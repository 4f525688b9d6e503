//! One client connection from accept to close: the TLS handshake with the port's policy, the
//! client's identity (counted and, on failure, logged), then HTTP.
//!
//! A plain connection speaks HTTP/1.1, or HTTP/2 when its first bytes are the HTTP/2 preface
//! (prior knowledge, RFC 9113 §3.3: what gRPC clients send to `http://`). No HTTP/1.1 request
//! starts with the preface, so the first bytes decide; they are read once and handed to
//! whichever protocol they belong to. HTTP/1.1's `Upgrade: h2c` is not offered.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use monoio::net::TcpStream;
use portcullis_core::client_auth::{self, ClientCertFailure, PeerIdentity};
use portcullis_core::http1::ForwardedProto;
use tracing::{debug, info};

use crate::bufpool;
use crate::h2;
use crate::http;
use crate::metrics::{HandshakeOutcome, ListenerMetrics};
use crate::route::ConnInfo;
use crate::shard_state::{HandshakeInProgress, ShardContext, ShardPort};
use crate::tls::{self, ClientIo, HandshakeError, HandshakeFailure, PlainStream};
use crate::tls_poll::ReplayStream;
use crate::websocket;

/// `in_progress` counts this connection's handshake as in progress until it ends.
pub async fn serve_tls(
    tcp: TcpStream,
    peer: SocketAddr,
    port: &Rc<ShardPort>,
    ctx: &Rc<ShardContext>,
    in_progress: HandshakeInProgress,
) {
    let started = Instant::now();
    let handshake = monoio::time::timeout(
        ctx.limits.handshake_timeout,
        tls::accept(tcp, |hello| port.choose(hello)),
    )
    .await;
    drop(in_progress);
    let accepted = match handshake {
        Ok(Ok(accepted)) => accepted,
        Ok(Err(failure)) => {
            record_failure(port, ctx, peer, &failure);
            if let Some(mut refused) = failure.refused {
                refused.linger().await;
            }
            return;
        }
        Err(_) => {
            port.metrics.unlistened.handshake(HandshakeOutcome::Error);
            debug!(port = port.compiled.port, %peer, "TLS handshake timed out");
            return;
        }
    };
    let listener_metrics = listener_metrics(port, Some(accepted.listener));
    listener_metrics
        .handshake_duration
        .observe(started.elapsed());
    let mut stream = accepted.stream;
    let Some(tls) = port
        .compiled
        .listeners
        .get(accepted.listener)
        .and_then(|l| l.tls.as_ref())
    else {
        stream.close().await;
        return;
    };
    let identity = tls
        .client_auth
        .identify(stream.peer_certificates(), stream.resumed());
    let identity_headers: &[u8] = match &identity {
        PeerIdentity::Verified(client) => {
            listener_metrics.handshake(HandshakeOutcome::Ok);
            &client.identity_headers
        }
        PeerIdentity::Anonymous => {
            listener_metrics.handshake(HandshakeOutcome::Ok);
            &[]
        }
        PeerIdentity::Unverified(failure) => {
            listener_metrics.handshake(HandshakeOutcome::UnverifiedAccepted);
            // A presented certificate that did not pass is worth a line (the client may think
            // it is verified); no certificate at all is what fallback exists for.
            if *failure != ClientCertFailure::Missing
                && let Some(suppressed) = ctx.handshake_log.allow()
            {
                info!(port = port.compiled.port, %peer, reason = %failure, suppressed, "client certificate not verified; forwarding the connection as unverified");
            }
            &[]
        }
        PeerIdentity::Rejected(failure) => {
            // A resumed session whose certificate no longer passes (expired since).
            listener_metrics.handshake(outcome_of(failure));
            if let Some(suppressed) = ctx.handshake_log.allow() {
                info!(port = port.compiled.port, %peer, reason = %failure, suppressed, "resumed TLS session refused");
            }
            stream.close().await;
            return;
        }
    };
    if stream.alpn() == Some(ALPN_H2) {
        let client = match identity {
            PeerIdentity::Verified(client) => Some(client),
            _ => None,
        };
        let conn = h2::H2Conn::new(
            Rc::clone(port),
            Rc::clone(ctx),
            peer,
            ForwardedProto::Https,
            Some(accepted.listener),
            client,
        );
        match stream.into_poll_stream() {
            Ok(poll_stream) => h2::serve(poll_stream, Rc::new(conn)).await,
            Err(e) => debug!(%peer, error = %e, "cannot switch the connection to poll mode"),
        }
        return;
    }
    let info = ConnInfo {
        peer,
        proto: ForwardedProto::Https,
        sni_listener: Some(accepted.listener),
        identity_headers,
    };
    if let Some(upgraded) = http::serve(&mut stream, port, ctx, &info).await {
        match stream.into_poll_stream() {
            Ok(poll_stream) => websocket::tunnel_h1(poll_stream, upgraded, ctx, peer).await,
            Err(e) => debug!(%peer, error = %e, "cannot switch the connection to poll mode"),
        }
    }
}

/// The ALPN name of HTTP/2 over TLS.
const ALPN_H2: &[u8] = b"h2";

/// The client connection preface of HTTP/2 (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub async fn serve_plain(
    tcp: TcpStream,
    peer: SocketAddr,
    port: &Rc<ShardPort>,
    ctx: &Rc<ShardContext>,
) {
    let mut stream = PlainStream::new(tcp);
    match first_bytes(&mut stream, ctx).await {
        FirstBytes::Http1(bytes) => stream.replay(bytes),
        FirstBytes::H2Preface(bytes) => {
            let conn = h2::H2Conn::new(
                Rc::clone(port),
                Rc::clone(ctx),
                peer,
                ForwardedProto::Http,
                None,
                None,
            );
            match stream.into_poll_stream() {
                Ok(tcp) => h2::serve(ReplayStream::new(tcp, bytes), Rc::new(conn)).await,
                Err(e) => debug!(%peer, error = %e, "cannot switch the connection to poll mode"),
            }
            return;
        }
        FirstBytes::Nothing => {
            stream.close().await;
            return;
        }
    }
    let info = ConnInfo {
        peer,
        proto: ForwardedProto::Http,
        sni_listener: None,
        identity_headers: &[],
    };
    if let Some(upgraded) = http::serve(&mut stream, port, ctx, &info).await {
        match stream.into_poll_stream() {
            Ok(poll_stream) => websocket::tunnel_h1(poll_stream, upgraded, ctx, peer).await,
            Err(e) => debug!(%peer, error = %e, "cannot switch the connection to poll mode"),
        }
    }
}

/// What a plain connection's client sent first.
enum FirstBytes {
    /// The HTTP/2 preface, and whatever followed it in the same reads.
    H2Preface(Vec<u8>),
    /// Bytes that are not the preface: HTTP/1.1 (or garbage, which its parser answers).
    Http1(Vec<u8>),
    /// Nothing in time, the client left, or the shard drains; also a preface begun and not
    /// finished within the request head timeout.
    Nothing,
}

/// Reads until the client's bytes differ from the HTTP/2 preface or complete it: usually one
/// read, the one HTTP/1.1 would have made anyway. Before the first byte the connection is
/// idle as between HTTP/1.1 requests (idle timeout, drain, a small read in flight).
async fn first_bytes(stream: &mut PlainStream, ctx: &ShardContext) -> FirstBytes {
    if ctx.draining.is_fired() {
        return FirstBytes::Nothing;
    }
    let readable = monoio::time::timeout(ctx.limits.idle_timeout, async {
        monoio::select! {
            r = stream.wait_readable() => r.is_ok(),
            () = ctx.draining.wait() => false,
        }
    })
    .await;
    if readable != Ok(true) {
        return FirstBytes::Nothing;
    }
    let deadline = Instant::now() + ctx.limits.request_head_timeout;
    let mut buf = bufpool::take();
    loop {
        let wait = deadline.saturating_duration_since(Instant::now());
        match monoio::time::timeout(wait, stream.read_into(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => {
                bufpool::give(buf);
                return FirstBytes::Nothing;
            }
        }
        let seen = buf.len().min(H2_PREFACE.len());
        if buf.get(..seen) != H2_PREFACE.get(..seen) {
            return FirstBytes::Http1(buf);
        }
        if seen == H2_PREFACE.len() {
            return FirstBytes::H2Preface(buf);
        }
    }
}

fn listener_metrics(port: &ShardPort, listener: Option<usize>) -> &ListenerMetrics {
    listener
        .and_then(|i| port.listener_metrics.get(i))
        .map_or(&port.metrics.unlistened, |m| m)
}

fn outcome_of(failure: &ClientCertFailure) -> HandshakeOutcome {
    match failure {
        ClientCertFailure::Missing => HandshakeOutcome::NoClientCert,
        ClientCertFailure::Invalid(_) => HandshakeOutcome::InvalidClientCert,
        ClientCertFailure::NotVersion3 => HandshakeOutcome::X509V1ClientCert,
        ClientCertFailure::SanMismatch => HandshakeOutcome::SanMismatch,
        ClientCertFailure::HashMismatch => HandshakeOutcome::HashMismatch,
    }
}

/// Counts a failed handshake and logs it (rate-limited). The client learns nothing beyond the
/// TLS alert it already got.
fn record_failure(
    port: &ShardPort,
    ctx: &ShardContext,
    peer: SocketAddr,
    failure: &HandshakeFailure,
) {
    let (outcome, cert_failure, rejected) = match &failure.error {
        HandshakeError::Tls { error, rejected } => match client_auth::classify_error(error) {
            Some(f) => (outcome_of(&f), Some(f), rejected.as_ref()),
            None => (HandshakeOutcome::Error, None, None),
        },
        _ => (HandshakeOutcome::Error, None, None),
    };
    listener_metrics(port, failure.listener).handshake(outcome);
    // A client that connects and leaves (load-balancer TCP checks, port scans) is not news.
    if matches!(failure.error, HandshakeError::Eof | HandshakeError::Io(_)) {
        debug!(port = port.compiled.port, %peer, error = %failure.error, "TLS handshake abandoned");
        return;
    }
    let Some(suppressed) = ctx.handshake_log.allow() else {
        return;
    };
    let listener = failure
        .listener
        .and_then(|i| port.compiled.listeners.get(i))
        .map_or("", |l| l.name.as_str());
    let reason = cert_failure.map_or_else(|| failure.error.to_string(), |f| f.to_string());
    info!(
        port = port.compiled.port,
        listener,
        %peer,
        outcome = outcome.label(),
        reason,
        client_cert_subject = rejected.map_or("", |r| r.subject.as_str()),
        client_cert_sha256 = %rejected.map(|r| format!("{:?}", r.sha256)).unwrap_or_default(),
        suppressed,
        "TLS handshake failed"
    );
}
