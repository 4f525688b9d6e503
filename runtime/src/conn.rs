//! One client connection from accept to close: the TLS handshake with the port's policy, the
//! client's identity (counted and, on failure, logged), then HTTP.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use monoio::net::TcpStream;
use portcullis_core::client_auth::{self, ClientCertFailure, PeerIdentity};
use portcullis_core::http1::ForwardedProto;
use tracing::{debug, info};

use crate::h2;
use crate::http::{self, ConnInfo};
use crate::metrics::{HandshakeOutcome, ListenerMetrics};
use crate::shard::{HandshakeInProgress, ShardContext, ShardPort};
use crate::tls::{self, ClientIo, HandshakeError, HandshakeFailure, PlainStream};
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
            accepted.listener,
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

pub async fn serve_plain(tcp: TcpStream, peer: SocketAddr, port: &ShardPort, ctx: &ShardContext) {
    let mut stream = PlainStream::new(tcp);
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
