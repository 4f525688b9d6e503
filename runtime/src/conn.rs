//! One client connection from accept to close: the TLS handshake with the port's policy, the
//! client's identity, then HTTP.

use std::net::SocketAddr;

use monoio::net::TcpStream;
use portcullis_core::client_auth::{self, PeerIdentity};
use portcullis_core::http1::ForwardedProto;
use tracing::debug;

use crate::http::{self, ConnInfo};
use crate::shard::{ShardContext, ShardPort};
use crate::tls::{self, ClientIo, HandshakeError, PlainStream};

pub async fn serve_tls(tcp: TcpStream, peer: SocketAddr, port: &ShardPort, ctx: &ShardContext) {
    let handshake = monoio::time::timeout(
        ctx.limits.handshake_timeout,
        tls::accept(tcp, |sni| port.choose_by_sni(sni)),
    )
    .await;
    let accepted = match handshake {
        Ok(Ok(accepted)) => accepted,
        Ok(Err(err)) => {
            log_handshake_failure(port, peer, &err);
            return;
        }
        Err(_) => {
            debug!(port = port.compiled.port, %peer, "TLS handshake timed out");
            return;
        }
    };
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
        PeerIdentity::Verified(client) => &client.identity_headers,
        PeerIdentity::Anonymous | PeerIdentity::Unverified(_) => &[],
        PeerIdentity::Rejected(failure) => {
            debug!(port = port.compiled.port, %peer, reason = %failure, "resumed session no longer passes the client check");
            stream.close().await;
            return;
        }
    };
    let info = ConnInfo {
        peer,
        proto: ForwardedProto::Https,
        sni_listener: Some(accepted.listener),
        identity_headers,
    };
    http::serve(&mut stream, port, ctx, &info).await;
}

pub async fn serve_plain(tcp: TcpStream, peer: SocketAddr, port: &ShardPort, ctx: &ShardContext) {
    let mut stream = PlainStream::new(tcp);
    let info = ConnInfo {
        peer,
        proto: ForwardedProto::Http,
        sni_listener: None,
        identity_headers: &[],
    };
    http::serve(&mut stream, port, ctx, &info).await;
}

fn log_handshake_failure(port: &ShardPort, peer: SocketAddr, err: &HandshakeError) {
    let reason = match err {
        HandshakeError::Tls(e) => client_auth::classify_error(e).map(|f| f.to_string()),
        _ => None,
    };
    debug!(port = port.compiled.port, %peer, error = %err, client_cert = reason.as_deref().unwrap_or("-"), "TLS handshake failed");
}
