//! Which backend endpoint a request goes to: the listener by Host and SNI (the 404 and 421
//! rules), the rule by the route table (or the redirect its filter answers with), the backend
//! by the rule's weights, and the endpoint by the backend's round-robin cursor, skipping
//! ejected endpoints.
//!
//! The 421 rule follows the listener `hostname` text of the API: a Host whose best listener
//! (exact name, then the most specific wildcard, then the listener without hostname) is
//! another one than the TLS SNI chose gets 421, even when both listeners share their
//! certificate; a Host no listener of the port takes gets 404. A client that sends the same
//! name in SNI and Host (as the conformance suite does) always reaches its listener's routes.
//!
//! One module for the HTTP/1.1, HTTP/2 and WebSocket paths, so that each protocol routes a
//! request exactly as the others do. It reads the shard's routing state
//! ([`crate::shard_state`]) and sends nothing: how a refusal is answered is the caller's,
//! through the [`crate::rejection::Rejection`] it gets.

use std::cell::Cell;
use std::net::SocketAddr;

use portcullis_core::desired::{BackendProtocol, BackendTarget};
use portcullis_core::filters::RedirectSource;
use portcullis_core::http1::{ForwardedProto, RequestHead};
use portcullis_core::routing::{RouteRequest, RouteTarget};

use crate::backend::{Ejections, pick_endpoint};
use crate::rejection::{Redirect, Rejection};
use crate::shard_state::{ShardPort, TargetState};

/// What the HTTP layer knows about the connection.
#[derive(Debug)]
pub struct ConnInfo<'a> {
    pub peer: SocketAddr,
    pub proto: ForwardedProto,
    /// The listener the TLS SNI selected (`None` on plain-HTTP ports).
    pub sni_listener: Option<usize>,
    /// Pre-encoded identity header lines of a verified client certificate.
    pub identity_headers: &'a [u8],
}

/// A routing decision for one request.
pub(crate) enum Route<'p> {
    Forward {
        target: &'p RouteTarget,
        state: &'p TargetState,
    },
    /// The rule redirects (its `RequestRedirect` filter); `state` holds the route's metrics.
    Redirect {
        redirect: Redirect,
        state: &'p TargetState,
    },
    Reject(Rejection),
}

/// Picks the listener by Host (the 421 rule of spec §6) and the rule by the route table.
pub(crate) fn route<'p>(
    port: &'p ShardPort,
    head: &RequestHead,
    buf: &[u8],
    info: &ConnInfo<'_>,
) -> Route<'p> {
    let compiled = &port.compiled;
    let listener_index = match (head.host().filter(|h| !h.is_empty()), info.sni_listener) {
        // No Host (HTTP/1.0): the SNI's listener, else the catch-all.
        (None, Some(sni)) => sni,
        (None, None) => match compiled.hosts.resolve(None) {
            Some(i) => i,
            None => return Route::Reject(Rejection::NoRoute),
        },
        (Some(host), sni) => match (compiled.hosts.resolve(Some(host)), sni) {
            (None, _) => return Route::Reject(Rejection::NoRoute),
            (Some(by_host), Some(sni)) if by_host != sni => {
                return Route::Reject(Rejection::Misdirected);
            }
            (Some(by_host), _) => by_host,
        },
    };
    let Some(listener) = compiled.listeners.get(listener_index) else {
        return Route::Reject(Rejection::NoRoute);
    };
    let headers = head.headers(buf);
    let request = RouteRequest::from_head(head, buf, &headers);
    let Some(routed) = listener.routes.find_routed(&request) else {
        return Route::Reject(Rejection::NoRoute);
    };
    let Some(state) = port.routing.target(listener_index, routed.index) else {
        return Route::Reject(Rejection::RouteStateMissing);
    };
    let target = routed.target;
    match &target.filters.redirect {
        None => Route::Forward { target, state },
        Some(redirect) => {
            let source = RedirectSource {
                scheme: info.proto.into(),
                host: request.host,
                listener_port: compiled.port,
                path: request.path,
                query: request.query,
                matched_prefix: routed.matched_prefix,
            };
            Route::Redirect {
                redirect: Redirect {
                    status: redirect.status,
                    location: redirect.location(&source),
                },
                state,
            }
        }
    }
}

/// The backend a request goes to (by the rule's weights): its endpoints and its round-robin
/// cursor, or why none.
pub(crate) fn choose_backend<'p>(
    target: &'p RouteTarget,
    state: &'p TargetState,
) -> Result<(&'p [SocketAddr], &'p Cell<usize>, BackendProtocol), Rejection> {
    let Some(backend_index) = target.weights.pick(&mut state.wrr.borrow_mut()) else {
        return Err(Rejection::NoBackend);
    };
    let Some(backend) = target.backends.get(backend_index) else {
        return Err(Rejection::BackendIndexMissing);
    };
    match &backend.target {
        BackendTarget::Invalid { .. } => Err(Rejection::InvalidBackend),
        BackendTarget::Endpoints(endpoints) if endpoints.is_empty() => Err(Rejection::NoEndpoints),
        BackendTarget::Endpoints(endpoints) => {
            let cursor = state
                .endpoint_cursor
                .get(backend_index)
                .ok_or(Rejection::EndpointCursorMissing)?;
            Ok((endpoints, cursor, backend.protocol))
        }
    }
}

/// The endpoint for a request's next connect attempt, one it has not `tried` (see
/// [`pick_endpoint`]); the cursor moves past it, so that skipping an ejected endpoint does not
/// send its share to the one after it. `None` once every endpoint was tried.
pub(crate) fn next_endpoint(
    endpoints: &[SocketAddr],
    cursor: &Cell<usize>,
    tried: &[SocketAddr],
    ejections: &Ejections,
) -> Option<SocketAddr> {
    let index = pick_endpoint(endpoints, cursor.get(), tried, |e| ejections.is_ejected(e))?;
    cursor.set(index + 1);
    endpoints.get(index).copied()
}
