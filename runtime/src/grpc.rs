//! gRPC statuses for the answers the gateway gives itself.
//!
//! The gateway's answers are the `rejection` module's; this module turns their HTTP status into
//! a gRPC one, and knows nothing else of them. A gRPC client reads the call's outcome from the
//! `grpc-status` trailer, not from the HTTP status: a plain `503` reaches its application as a
//! transport error with a synthesized status, whose code each gRPC library guesses on its own.
//! So when the gateway answers a gRPC call itself (no route, no backend, no endpoint, a failed
//! connect, a timeout), it answers as a gRPC server would: HTTP 200, `content-type:
//! application/grpc`, and a trailers-only response carrying the status (gRPC's "HTTP/2
//! protocol" document). The code comes from gRPC's own table of HTTP statuses to gRPC codes
//! (`doc/http-grpc-status-mapping.md`), so that clients see what they would see from a
//! gRPC-aware proxy. `421 Misdirected Request` stays an HTTP 421: it tells the client to
//! retry on another connection, which gRPC libraries do on the HTTP status.

use ::http::{HeaderValue, Response, StatusCode};

/// The gRPC status codes the gateway's own answers use (gRPC's `StatusCode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcCode {
    Unknown = 2,
    PermissionDenied = 7,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    Unauthenticated = 16,
}

impl GrpcCode {
    /// gRPC's mapping of an HTTP status a client got instead of a gRPC response.
    pub fn from_http(status: StatusCode) -> Self {
        match status {
            StatusCode::BAD_REQUEST => GrpcCode::Internal,
            StatusCode::UNAUTHORIZED => GrpcCode::Unauthenticated,
            StatusCode::FORBIDDEN => GrpcCode::PermissionDenied,
            StatusCode::NOT_FOUND => GrpcCode::Unimplemented,
            StatusCode::TOO_MANY_REQUESTS
            | StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT => GrpcCode::Unavailable,
            _ => GrpcCode::Unknown,
        }
    }

    /// The `grpc-status` value.
    pub fn value(self) -> HeaderValue {
        HeaderValue::from(self as u16)
    }
}

/// Whether the gateway's answer `status` to a gRPC call goes out as a gRPC status (every
/// status but 421, see the module docs).
pub fn answers_as_grpc_status(status: StatusCode) -> bool {
    status != StatusCode::MISDIRECTED_REQUEST
}

/// The trailers-only response that carries the gateway's answer `status` as a gRPC status.
/// The message is the HTTP status and its reason (ASCII, so it needs no percent-encoding).
pub fn trailers_only_response(status: StatusCode) -> Response<()> {
    let code = GrpcCode::from_http(status);
    let reason = status.canonical_reason().unwrap_or("Error");
    let message = format!("gateway answered {} {reason}", status.as_u16());
    let mut response = Response::new(());
    let headers = response.headers_mut();
    headers.insert(
        ::http::header::CONTENT_TYPE,
        HeaderValue::from_static(CONTENT_TYPE),
    );
    headers.insert(GRPC_STATUS, code.value());
    if let Ok(message) = HeaderValue::from_str(&message) {
        headers.insert(GRPC_MESSAGE, message);
    }
    response
}

/// A gRPC call's content type (alone, or with a `+format` or `;params` suffix).
pub const CONTENT_TYPE: &str = "application/grpc";
pub const GRPC_STATUS: &str = "grpc-status";
pub const GRPC_MESSAGE: &str = "grpc-message";

/// A gRPC call: its content type is `application/grpc`, alone or with a `+format` or `;params`
/// suffix.
pub fn is_grpc_content_type(value: &[u8]) -> bool {
    let grpc = CONTENT_TYPE.as_bytes();
    value
        .get(..grpc.len())
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case(grpc))
        && matches!(value.get(grpc.len()), None | Some(b'+' | b';'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_statuses_map_to_grpc_codes_as_grpc_documents() {
        for (http, grpc) in [
            (400, 13),
            (401, 16),
            (403, 7),
            (404, 12),
            (429, 14),
            (502, 14),
            (503, 14),
            (504, 14),
            (500, 2),
            (408, 2),
        ] {
            let status = StatusCode::from_u16(http).unwrap();
            assert_eq!(GrpcCode::from_http(status) as u16, grpc, "HTTP {http}");
        }
        assert!(!answers_as_grpc_status(StatusCode::MISDIRECTED_REQUEST));
        assert!(answers_as_grpc_status(StatusCode::SERVICE_UNAVAILABLE));
    }

    #[test]
    fn the_answer_is_a_trailers_only_grpc_response() {
        let response = trailers_only_response(StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers();
        assert_eq!(headers[::http::header::CONTENT_TYPE], CONTENT_TYPE);
        assert_eq!(headers[GRPC_STATUS], "14");
        assert_eq!(
            headers[GRPC_MESSAGE],
            "gateway answered 503 Service Unavailable"
        );
    }

    #[test]
    fn grpc_content_types_are_recognized() {
        assert!(is_grpc_content_type(b"application/grpc"));
        assert!(is_grpc_content_type(b"application/grpc+proto"));
        assert!(is_grpc_content_type(b"Application/GRPC;charset=utf-8"));
        assert!(!is_grpc_content_type(b"application/grpc-web"));
        assert!(!is_grpc_content_type(b"application/json"));
    }
}
