//! The answers the gateway gives itself instead of a backend's: why, whose fault, and what the
//! client gets.
//!
//! Every such answer is a [`Rejection`], and this module is the one place that says, for each,
//! the HTTP status, the `reason` and `fault` labels of `portcullis_gateway_answers_total` and
//! the log line. Code that refuses a request names the cause, never a status number, so two
//! causes that share a status (the five 500s: a rule without backends, an invalid backend
//! reference, and three ways the shard's routing state could be out of step with its port)
//! stay apart in metrics and logs. The status each cause gets is the one the protocols and the
//! Gateway API prescribe (404 and 421 for routing, 500 for a rule whose backends are invalid,
//! 503 without endpoints); the request counters keep counting by status code as before.
//!
//! A rule's redirect ([`Redirect`]) is also the gateway's own answer, but by configuration, not
//! a refusal: it is counted by its route and status (`Reply::Redirect`), never as a rejection.
//!
//! The enum is `Copy` and carries no data: refusing a request allocates nothing beyond the
//! response it writes, and counting it is one add on the shard's own array.

use std::net::SocketAddr;

use ::http::{HeaderValue, Response, StatusCode};
use bytes::Bytes;
use h2::server::SendResponse;
use portcullis_core::filters::RedirectStatus;
use portcullis_core::http1::RequestHeadError;
use tracing::{debug, warn};

use crate::grpc;

/// Whose fault a rejection is: who has to act so that the request would succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The client sent something wrong, too much, too slowly, or left.
    Client,
    /// The route's configuration cannot serve the request.
    Config,
    /// The backend is down, empty, slow or answered wrongly.
    Backend,
    /// A bug of the gateway's own.
    Gateway,
}

impl Fault {
    /// The `fault` label.
    pub fn label(self) -> &'static str {
        match self {
            Fault::Client => "client",
            Fault::Config => "config",
            Fault::Backend => "backend",
            Fault::Gateway => "gateway",
        }
    }
}

/// Why the gateway answered a request itself (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rejection {
    /// A malformed or ambiguous request head (RFC 9112 framing, Host rules), or an h2
    /// request whose fields HTTP/1.1 cannot carry.
    BadRequest,
    /// A request body whose chunked framing is malformed.
    BadRequestBody,
    /// A WebSocket opening handshake that breaks RFC 6455 (or RFC 8441 over HTTP/2).
    BadWebSocketUpgrade,
    /// A request head beyond the size or field-count limit.
    HeadTooLarge,
    /// A request head that did not complete within the request head timeout.
    HeadTimeout,
    /// CONNECT, a transfer coding other than chunked, or an extended CONNECT for a protocol
    /// other than WebSocket: nothing the gateway implements.
    NotImplemented,
    /// No listener serves the request's host, or none of its routes' rules matches.
    NoRoute,
    /// The Host names another listener than the TLS SNI chose (the Gateway API's 421 rule).
    Misdirected,
    /// The client left before its response; counted with nginx's 499, never sent.
    ClientClosed,
    /// The rule has no backend, or all its weights are zero.
    NoBackend,
    /// The backend the weights chose is an invalid reference (a missing Service, say).
    InvalidBackend,
    /// The backend has no endpoints (a Service without ready Pods).
    NoEndpoints,
    /// Connecting failed on every endpoint tried.
    ConnectFailed,
    /// An h2c backend did not complete the HTTP/2 preface.
    H2cHandshakeFailed,
    /// The backend closed or reset the connection (or stream) before a complete response
    /// head, also after the allowed resend.
    BackendClosed,
    /// The backend's response head is malformed or too large, a 101 that does not open a
    /// WebSocket, or one an HTTP/2 stream cannot carry.
    BadResponse,
    /// No response head within the backend response timeout.
    BackendTimeout,
    /// The shard has no routing state for the rule that matched (its copy of the port is out
    /// of step with the compiled port).
    RouteStateMissing,
    /// The rule's weights chose a backend the rule does not have.
    BackendIndexMissing,
    /// The shard has no round-robin cursor for the chosen backend.
    EndpointCursorMissing,
    /// The gateway could not build its own request to the backend (the forwarded head did
    /// not read back, or no WebSocket key could be made).
    Internal,
}

/// nginx's status for a request whose client closed the connection before its response.
const CLIENT_CLOSED_REQUEST: StatusCode = match StatusCode::from_u16(499) {
    Ok(status) => status,
    Err(_) => StatusCode::BAD_REQUEST,
};

impl Rejection {
    /// Every rejection, in the order of [`Rejection::index`].
    pub const ALL: [Rejection; 21] = [
        Rejection::BadRequest,
        Rejection::BadRequestBody,
        Rejection::BadWebSocketUpgrade,
        Rejection::HeadTooLarge,
        Rejection::HeadTimeout,
        Rejection::NotImplemented,
        Rejection::NoRoute,
        Rejection::Misdirected,
        Rejection::ClientClosed,
        Rejection::NoBackend,
        Rejection::InvalidBackend,
        Rejection::NoEndpoints,
        Rejection::ConnectFailed,
        Rejection::H2cHandshakeFailed,
        Rejection::BackendClosed,
        Rejection::BadResponse,
        Rejection::BackendTimeout,
        Rejection::RouteStateMissing,
        Rejection::BackendIndexMissing,
        Rejection::EndpointCursorMissing,
        Rejection::Internal,
    ];

    /// The rejection's position in [`Rejection::ALL`] (an index into per-reason counters).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The status the client gets (and the request counters count).
    pub const fn status(self) -> StatusCode {
        match self {
            Rejection::BadRequest | Rejection::BadRequestBody | Rejection::BadWebSocketUpgrade => {
                StatusCode::BAD_REQUEST
            }
            Rejection::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Rejection::HeadTimeout => StatusCode::REQUEST_TIMEOUT,
            Rejection::NotImplemented => StatusCode::NOT_IMPLEMENTED,
            Rejection::NoRoute => StatusCode::NOT_FOUND,
            Rejection::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            Rejection::ClientClosed => CLIENT_CLOSED_REQUEST,
            Rejection::NoBackend
            | Rejection::InvalidBackend
            | Rejection::RouteStateMissing
            | Rejection::BackendIndexMissing
            | Rejection::EndpointCursorMissing
            | Rejection::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Rejection::NoEndpoints => StatusCode::SERVICE_UNAVAILABLE,
            Rejection::ConnectFailed
            | Rejection::H2cHandshakeFailed
            | Rejection::BackendClosed
            | Rejection::BadResponse => StatusCode::BAD_GATEWAY,
            Rejection::BackendTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Whose fault it is.
    pub fn fault(self) -> Fault {
        match self {
            Rejection::BadRequest
            | Rejection::BadRequestBody
            | Rejection::BadWebSocketUpgrade
            | Rejection::HeadTooLarge
            | Rejection::HeadTimeout
            | Rejection::NotImplemented
            | Rejection::NoRoute
            | Rejection::Misdirected
            | Rejection::ClientClosed => Fault::Client,
            Rejection::NoBackend | Rejection::InvalidBackend => Fault::Config,
            Rejection::NoEndpoints
            | Rejection::ConnectFailed
            | Rejection::H2cHandshakeFailed
            | Rejection::BackendClosed
            | Rejection::BadResponse
            | Rejection::BackendTimeout => Fault::Backend,
            Rejection::RouteStateMissing
            | Rejection::BackendIndexMissing
            | Rejection::EndpointCursorMissing
            | Rejection::Internal => Fault::Gateway,
        }
    }

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Rejection::BadRequest => "bad_request",
            Rejection::BadRequestBody => "bad_request_body",
            Rejection::BadWebSocketUpgrade => "bad_websocket_upgrade",
            Rejection::HeadTooLarge => "head_too_large",
            Rejection::HeadTimeout => "head_timeout",
            Rejection::NotImplemented => "not_implemented",
            Rejection::NoRoute => "no_route",
            Rejection::Misdirected => "misdirected",
            Rejection::ClientClosed => "client_closed",
            Rejection::NoBackend => "no_backend",
            Rejection::InvalidBackend => "invalid_backend",
            Rejection::NoEndpoints => "no_endpoints",
            Rejection::ConnectFailed => "connect_failed",
            Rejection::H2cHandshakeFailed => "h2c_handshake_failed",
            Rejection::BackendClosed => "backend_closed",
            Rejection::BadResponse => "bad_response",
            Rejection::BackendTimeout => "backend_timeout",
            Rejection::RouteStateMissing => "route_state_missing",
            Rejection::BackendIndexMissing => "backend_index_missing",
            Rejection::EndpointCursorMissing => "endpoint_cursor_missing",
            Rejection::Internal => "internal",
        }
    }

    /// The log line.
    pub fn message(self) -> &'static str {
        match self {
            Rejection::BadRequest => "bad request head",
            Rejection::BadRequestBody => "malformed chunked request body",
            Rejection::BadWebSocketUpgrade => "malformed WebSocket upgrade",
            Rejection::HeadTooLarge => "request head too large",
            Rejection::HeadTimeout => "request head not complete within its timeout",
            Rejection::NotImplemented => "method, transfer coding or protocol not implemented",
            Rejection::NoRoute => "no route for the request",
            Rejection::Misdirected => "Host names another listener than the TLS SNI",
            Rejection::ClientClosed => "client left before its response",
            Rejection::NoBackend => "rule has no backend with a weight",
            Rejection::InvalidBackend => "rule's backend reference is invalid",
            Rejection::NoEndpoints => "backend has no endpoints",
            Rejection::ConnectFailed => "backend connect failed on every endpoint tried",
            Rejection::H2cHandshakeFailed => "h2c backend did not complete the HTTP/2 preface",
            Rejection::BackendClosed => "backend closed before a response",
            Rejection::BadResponse => "bad response from backend",
            Rejection::BackendTimeout => "backend response timed out",
            Rejection::RouteStateMissing => "bug: no routing state for the matched rule",
            Rejection::BackendIndexMissing => "bug: weights chose a backend the rule lacks",
            Rejection::EndpointCursorMissing => "bug: no endpoint cursor for the backend",
            Rejection::Internal => "bug: could not build the request to the backend",
        }
    }

    /// What a refused request head gets (as `portcullis_core::http1` documents each cause).
    pub fn of_request_head(error: &RequestHeadError) -> Self {
        match error {
            RequestHeadError::TooLarge { .. } | RequestHeadError::TooManyHeaders { .. } => {
                Rejection::HeadTooLarge
            }
            RequestHeadError::ConnectNotSupported | RequestHeadError::UnsupportedTransferCoding => {
                Rejection::NotImplemented
            }
            RequestHeadError::Malformed(_)
            | RequestHeadError::InvalidTarget
            | RequestHeadError::MissingHost
            | RequestHeadError::MultipleHost
            | RequestHeadError::InvalidHost
            | RequestHeadError::ContentLengthWithTransferEncoding
            | RequestHeadError::InvalidContentLength
            | RequestHeadError::ConflictingContentLength
            | RequestHeadError::TransferEncodingNotChunked
            | RequestHeadError::TransferEncodingInHttp10 => Rejection::BadRequest,
        }
    }

    /// Logs the rejection: the one line each gets. A bug of ours is a warning; everything
    /// else is routine (a scanner's 404s, a backend's restart) and stays at debug level.
    pub fn log(self, shard: usize, peer: SocketAddr) {
        let (reason, fault, status) = (self.label(), self.fault().label(), self.status().as_u16());
        if self.fault() == Fault::Gateway {
            warn!(shard, %peer, reason, fault, status, "{}", self.message());
        } else {
            debug!(shard, %peer, reason, fault, status, "{}", self.message());
        }
    }

    /// The complete HTTP/1.1 answer, with a short plain-text body. `keep_alive`: whether the
    /// connection stays open after it.
    pub fn h1_response(self, keep_alive: bool) -> Vec<u8> {
        let status = self.status();
        let code = status.as_u16();
        let reason = status.canonical_reason().unwrap_or("Error");
        let body = format!("{code} {reason}\n");
        let connection = if keep_alive {
            ""
        } else {
            "connection: close\r\n"
        };
        format!(
            "HTTP/1.1 {code} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{connection}\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    /// Sends the answer on an HTTP/2 stream: to a gRPC call a gRPC status (see
    /// [`crate::grpc`]), else a short plain-text body, as HTTP/1.1's.
    pub fn send_h2(self, respond: &mut SendResponse<Bytes>, grpc: bool) {
        let status = self.status();
        if grpc && grpc::answers_as_grpc_status(status) {
            let _ = respond.send_response(grpc::trailers_only_response(status), true);
            return;
        }
        let body = format!(
            "{} {}\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("Error")
        );
        let response = Response::builder()
            .status(status)
            .header(
                ::http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain"),
            )
            .header(::http::header::CONTENT_LENGTH, body.len())
            .body(());
        let Ok(response) = response else {
            return;
        };
        if let Ok(mut send) = respond.send_response(response, false) {
            let _ = send.send_data(Bytes::from(body), true);
        }
    }
}

/// The redirect a rule's `RequestRedirect` filter answers with: the gateway's own answer by
/// configuration, not a refusal (so it is counted by its route, not as a rejection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    pub status: RedirectStatus,
    /// See [`portcullis_core::filters::RequestRedirect::location`].
    pub location: String,
}

impl Redirect {
    /// The complete HTTP/1.1 answer, without a body. `keep_alive`: whether the connection
    /// stays open after it.
    pub fn h1_response(&self, keep_alive: bool) -> Vec<u8> {
        let connection = if keep_alive {
            ""
        } else {
            "connection: close\r\n"
        };
        format!(
            "HTTP/1.1 {} {}\r\nlocation: {}\r\ncontent-length: 0\r\n{connection}\r\n",
            self.status.code(),
            self.status.reason(),
            self.location
        )
        .into_bytes()
    }

    /// Sends the answer on an HTTP/2 stream. A location no field value can carry (it is made of
    /// checked config and the request's own path, so never in practice) gets the gateway's 500.
    pub fn send_h2(&self, respond: &mut SendResponse<Bytes>) -> Reply {
        let response = StatusCode::from_u16(self.status.code())
            .map_err(drop)
            .and_then(|status| {
                let location = HeaderValue::from_str(&self.location).map_err(drop)?;
                Response::builder()
                    .status(status)
                    .header(::http::header::LOCATION, location)
                    .header(::http::header::CONTENT_LENGTH, 0)
                    .body(())
                    .map_err(drop)
            });
        match response {
            Ok(response) => {
                let _ = respond.send_response(response, true);
                Reply::Redirect(self.status)
            }
            Err(()) => {
                Rejection::Internal.send_h2(respond, false);
                Reply::Gateway(Rejection::Internal)
            }
        }
    }
}

/// What the client got for one request: the backend's response (relayed whole or in part), or
/// the gateway's own answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// The backend's status (as relayed: a WebSocket's 101 is a 200 on an HTTP/2 stream).
    Backend(u16),
    Gateway(Rejection),
    /// A rule's redirect.
    Redirect(RedirectStatus),
}

impl Reply {
    /// The status code the request counters count.
    pub fn status(self) -> u16 {
        match self {
            Reply::Backend(status) => status,
            Reply::Gateway(rejection) => rejection.status().as_u16(),
            Reply::Redirect(status) => status.code(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn every_rejection_is_listed_once_at_its_index() {
        for (i, r) in Rejection::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?}");
        }
        let labels: HashSet<_> = Rejection::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), Rejection::ALL.len(), "labels are distinct");
        let messages: HashSet<_> = Rejection::ALL.iter().map(|r| r.message()).collect();
        assert_eq!(
            messages.len(),
            Rejection::ALL.len(),
            "log lines are distinct"
        );
    }

    #[test]
    fn statuses_are_the_ones_clients_got_before() {
        for (rejection, status) in [
            (Rejection::BadRequest, 400),
            (Rejection::BadRequestBody, 400),
            (Rejection::BadWebSocketUpgrade, 400),
            (Rejection::NoRoute, 404),
            (Rejection::HeadTimeout, 408),
            (Rejection::Misdirected, 421),
            (Rejection::HeadTooLarge, 431),
            (Rejection::ClientClosed, 499),
            (Rejection::NotImplemented, 501),
            (Rejection::ConnectFailed, 502),
            (Rejection::H2cHandshakeFailed, 502),
            (Rejection::BackendClosed, 502),
            (Rejection::BadResponse, 502),
            (Rejection::NoEndpoints, 503),
            (Rejection::BackendTimeout, 504),
        ] {
            assert_eq!(rejection.status().as_u16(), status, "{rejection:?}");
        }
    }

    #[test]
    fn the_causes_of_a_500_are_told_apart_by_label_and_fault() {
        let five_hundreds: Vec<Rejection> = Rejection::ALL
            .into_iter()
            .filter(|r| r.status() == StatusCode::INTERNAL_SERVER_ERROR)
            .collect();
        assert_eq!(
            five_hundreds,
            [
                Rejection::NoBackend,
                Rejection::InvalidBackend,
                Rejection::RouteStateMissing,
                Rejection::BackendIndexMissing,
                Rejection::EndpointCursorMissing,
                Rejection::Internal,
            ]
        );
        assert_eq!(Rejection::NoBackend.fault(), Fault::Config);
        assert_eq!(Rejection::InvalidBackend.fault(), Fault::Config);
        for bug in [
            Rejection::RouteStateMissing,
            Rejection::BackendIndexMissing,
            Rejection::EndpointCursorMissing,
        ] {
            assert_eq!(bug.fault(), Fault::Gateway, "{bug:?}");
        }
        let labels: HashSet<_> = five_hundreds.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), five_hundreds.len());
    }

    #[test]
    fn request_head_errors_map_as_the_parser_documents() {
        for error in [
            RequestHeadError::TooLarge { limit: 1 },
            RequestHeadError::TooManyHeaders { limit: 1 },
            RequestHeadError::ConnectNotSupported,
            RequestHeadError::UnsupportedTransferCoding,
            RequestHeadError::MissingHost,
            RequestHeadError::InvalidContentLength,
        ] {
            assert_eq!(
                Rejection::of_request_head(&error).status().as_u16(),
                error.status(),
                "{error:?}"
            );
        }
    }

    #[test]
    fn the_h1_answer_is_a_complete_response() {
        assert_eq!(
            Rejection::NoRoute.h1_response(true),
            b"HTTP/1.1 404 Not Found\r\ncontent-type: text/plain\r\ncontent-length: 14\r\n\r\n404 Not Found\n"
        );
        assert_eq!(
            Rejection::HeadTooLarge.h1_response(false),
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain\r\ncontent-length: 36\r\nconnection: close\r\n\r\n431 Request Header Fields Too Large\n"
        );
    }

    #[test]
    fn answers_count_the_status_the_client_got() {
        assert_eq!(Reply::Backend(201).status(), 201);
        assert_eq!(Reply::Gateway(Rejection::ClientClosed).status(), 499);
        assert_eq!(Reply::Gateway(Rejection::NoEndpoints).status(), 503);
    }
}
