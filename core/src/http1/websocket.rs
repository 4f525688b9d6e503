//! WebSocket opening handshakes (RFC 6455 §4) as a gateway sees them: which requests ask for
//! a WebSocket, the head forwarded to the backend, and the checks on the backend's `101`.
//!
//! - A request asks for a WebSocket when an `Upgrade` field names `websocket` and a
//!   `Connection` field names `upgrade` (RFC 9110 §7.8: `Upgrade` means nothing unless it is
//!   listed in `Connection`). Any other `Upgrade` (`h2c`, say) is not ours to honour: it is
//!   dropped with the other hop-by-hop fields and the request goes on as a plain one.
//! - Such a request must be what RFC 6455 §4.1 says a client sends: `GET`, HTTP/1.1, no body,
//!   one `Sec-WebSocket-Key` of 16 random bytes in base64, a `Sec-WebSocket-Version`. Anything
//!   else is refused here with 400, before a backend sees it: a proxied upgrade that cannot
//!   succeed would otherwise leave its body or its bytes in a tunnel nobody framed. The
//!   version itself is the backend's to accept (it answers 426 with the versions it speaks).
//! - The backend's `101` must switch to `websocket` and carry the `Sec-WebSocket-Accept` that
//!   matches the key sent; otherwise the exchange is the backend's fault (502), since a client
//!   would fail the connection anyway and a tunnel to an unknown protocol is not one we open.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use thiserror::Error;

use super::fields::{Field, classify, list_elements};
use super::forward::{ForwardExtras, write_forwarded_request_head};
use super::{RequestBody, RequestHead, ResponseHead, Version};

/// The GUID RFC 6455 §1.3 appends to the key before hashing it into the accept value.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Bytes of randomness in a `Sec-WebSocket-Key` (RFC 6455 §4.1).
const KEY_BYTES: usize = 16;

/// The field that carries the client's nonce.
pub const SEC_WEBSOCKET_KEY: &str = "sec-websocket-key";
/// The field that carries the server's proof it read the key.
pub const SEC_WEBSOCKET_ACCEPT: &str = "sec-websocket-accept";
const SEC_WEBSOCKET_VERSION: &str = "sec-websocket-version";

/// Why a WebSocket opening handshake was refused before it reached a backend: the client's
/// fault, always 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum WebSocketRequestError {
    #[error("WebSocket upgrade with a method other than GET")]
    NotGet,
    #[error("WebSocket upgrade over HTTP/1.0")]
    Http10,
    #[error("WebSocket upgrade with a request body")]
    HasBody,
    #[error("WebSocket upgrade without exactly one Sec-WebSocket-Key")]
    MissingKey,
    #[error("Sec-WebSocket-Key is not 16 bytes in base64")]
    InvalidKey,
    #[error("WebSocket upgrade without Sec-WebSocket-Version")]
    MissingVersion,
}

impl WebSocketRequestError {
    /// What the client gets.
    pub fn status(&self) -> u16 {
        400
    }
}

/// Why a backend's `101` does not open a WebSocket: the backend's fault, always 502.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SwitchingProtocolsError {
    #[error("101 without Upgrade: websocket")]
    NotWebSocket,
    #[error("101 without Connection: upgrade")]
    NoConnectionUpgrade,
    #[error("101 whose Sec-WebSocket-Accept does not match the key")]
    AcceptMismatch,
}

/// Whether the request asks for a WebSocket (see the module doc). `Ok(false)`: it does not, and
/// any `Upgrade` it carries is dropped when forwarded. `Err`: it does but is malformed.
pub fn websocket_upgrade(head: &RequestHead, buf: &[u8]) -> Result<bool, WebSocketRequestError> {
    // Found by the parser's own pass: most requests end here without a second look.
    if !head.connection_upgrade {
        return Ok(false);
    }
    let mut wants_websocket = false;
    let mut keys = 0usize;
    let mut key_valid = false;
    let mut has_version = false;
    for (name, value) in head.headers(buf).iter() {
        match name.len() {
            7 if name.eq_ignore_ascii_case(b"upgrade") => {
                wants_websocket |= list_elements(value).any(names_websocket);
            }
            17 if name.eq_ignore_ascii_case(SEC_WEBSOCKET_KEY.as_bytes()) => {
                keys += 1;
                key_valid = is_valid_key(value);
            }
            21 if name.eq_ignore_ascii_case(SEC_WEBSOCKET_VERSION.as_bytes()) => {
                has_version = !value.is_empty();
            }
            _ => {}
        }
    }
    if !wants_websocket {
        return Ok(false);
    }
    if head.method(buf) != "GET" {
        return Err(WebSocketRequestError::NotGet);
    }
    if head.version != Version::Http11 {
        return Err(WebSocketRequestError::Http10);
    }
    if head.body != RequestBody::None {
        return Err(WebSocketRequestError::HasBody);
    }
    if keys != 1 {
        return Err(WebSocketRequestError::MissingKey);
    }
    if !key_valid {
        return Err(WebSocketRequestError::InvalidKey);
    }
    if !has_version {
        return Err(WebSocketRequestError::MissingVersion);
    }
    Ok(true)
}

/// `websocket`, optionally with a version (`websocket/13`), case-insensitive (RFC 9110 §7.8).
fn names_websocket(protocol: &[u8]) -> bool {
    let name = protocol.split(|b| *b == b'/').next().unwrap_or_default();
    name.eq_ignore_ascii_case(b"websocket")
}

fn is_valid_key(value: &[u8]) -> bool {
    BASE64
        .decode(value)
        .is_ok_and(|nonce| nonce.len() == KEY_BYTES)
}

/// Writes the head of a WebSocket opening handshake for the backend: the forwarded head of
/// [`write_forwarded_request_head`] (identity headers added, client copies dropped, the
/// `Sec-WebSocket-*` fields kept) with the upgrade asked for again, as the hop-by-hop
/// `Upgrade` and `Connection` of this hop.
pub fn write_websocket_request_head(
    head: &RequestHead,
    buf: &[u8],
    extra: &ForwardExtras<'_>,
    out: &mut Vec<u8>,
) {
    write_forwarded_request_head(head, buf, extra, out);
    // The forwarded head ends with its blank line; the upgrade fields go before it.
    if out.ends_with(b"\r\n\r\n") {
        out.truncate(out.len() - 2);
    }
    out.extend_from_slice(b"Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
}

/// The `Sec-WebSocket-Accept` value for a key (RFC 6455 §4.2.2): base64 of the SHA-1 of the key
/// and the GUID.
pub fn accept_key(key: &[u8]) -> String {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY);
    context.update(key);
    context.update(ACCEPT_GUID);
    BASE64.encode(context.finish().as_ref())
}

/// A fresh `Sec-WebSocket-Key` (for a handshake the gateway makes on a client's behalf, as
/// for HTTP/2's extended CONNECT); `None` if the system's random source failed.
pub fn generate_key() -> Option<String> {
    let mut nonce = [0u8; KEY_BYTES];
    aws_lc_rs::rand::fill(&mut nonce).ok()?;
    Some(BASE64.encode(nonce))
}

/// Checks a backend's `101` to a handshake sent with `key` (see the module doc).
pub fn check_switching_protocols(
    head: &ResponseHead,
    buf: &[u8],
    key: &[u8],
) -> Result<(), SwitchingProtocolsError> {
    let mut websocket = false;
    let mut connection_upgrade = false;
    let mut accept_matches = false;
    let expected = accept_key(key);
    for (name, value) in head.headers(buf).iter() {
        if name.eq_ignore_ascii_case(b"upgrade") {
            websocket |= list_elements(value).any(names_websocket);
        } else if classify(name) == Field::Connection {
            connection_upgrade |= list_elements(value).any(|o| o.eq_ignore_ascii_case(b"upgrade"));
        } else if name.eq_ignore_ascii_case(SEC_WEBSOCKET_ACCEPT.as_bytes()) {
            accept_matches = value == expected.as_bytes();
        }
    }
    if !websocket {
        return Err(SwitchingProtocolsError::NotWebSocket);
    }
    if !connection_upgrade {
        return Err(SwitchingProtocolsError::NoConnectionUpgrade);
    }
    if !accept_matches {
        return Err(SwitchingProtocolsError::AcceptMismatch);
    }
    Ok(())
}

/// Writes the backend's `101` for an HTTP/1.1 client: its fields except the hop-by-hop and
/// framing ones, then this hop's `Upgrade: websocket` and `Connection: Upgrade`.
pub fn write_switching_protocols_head(head: &ResponseHead, buf: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\n");
    for (name, value) in head.headers(buf).iter() {
        match classify(name) {
            Field::Connection
            | Field::HopByHop
            | Field::ContentLength
            | Field::TransferEncoding => {}
            Field::Host
            | Field::Expect
            | Field::XForwardedFor
            | Field::XForwardedProto
            | Field::Identity
            | Field::Other => {
                out.extend_from_slice(name);
                out.extend_from_slice(b": ");
                out.extend_from_slice(value);
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    out.extend_from_slice(b"Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::super::{
        ForwardedProto, HeadLimits, parse_request_head, parse_upgrade_response_head,
    };
    use super::*;

    /// RFC 6455 §1.3's example key.
    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn upgrade_of(request: &str) -> Result<bool, WebSocketRequestError> {
        let head = parse_request_head(request.as_bytes(), &HeadLimits::default())
            .unwrap()
            .unwrap();
        websocket_upgrade(&head, request.as_bytes())
    }

    #[test]
    fn accept_key_is_rfc_6455s_example() {
        assert_eq!(accept_key(KEY.as_bytes()), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let generated = generate_key().unwrap();
        assert!(is_valid_key(generated.as_bytes()));
        assert_ne!(generate_key().unwrap(), generated);
    }

    #[test]
    fn which_requests_ask_for_a_websocket() {
        use WebSocketRequestError as E;
        let base = format!(
            "Host: a\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"
        );
        let cases: Vec<(String, Result<bool, E>)> = vec![
            (format!("GET / HTTP/1.1\r\n{base}\r\n"), Ok(true)),
            (
                format!("GET / HTTP/1.1\r\n{base}Upgrade: h2c\r\n\r\n"),
                Ok(true),
            ),
            // Not an upgrade to a WebSocket: forwarded as a plain request.
            ("GET / HTTP/1.1\r\nHost: a\r\n\r\n".into(), Ok(false)),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n".into(),
                Ok(false),
            ),
            (
                format!(
                    "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nSec-WebSocket-Key: {KEY}\r\n\r\n"
                ),
                Ok(false),
            ),
            // Malformed upgrades.
            (format!("POST / HTTP/1.1\r\n{base}\r\n"), Err(E::NotGet)),
            (format!("GET / HTTP/1.0\r\n{base}\r\n"), Err(E::Http10)),
            (
                format!("GET / HTTP/1.1\r\n{base}Content-Length: 3\r\n\r\n"),
                Err(E::HasBody),
            ),
            (
                format!("GET / HTTP/1.1\r\n{base}Transfer-Encoding: chunked\r\n\r\n"),
                Err(E::HasBody),
            ),
            (
                format!("GET / HTTP/1.1\r\n{base}Sec-WebSocket-Key: {KEY}\r\n\r\n"),
                Err(E::MissingKey),
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\
                 Sec-WebSocket-Version: 13\r\n\r\n"
                    .into(),
                Err(E::MissingKey),
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\
                 Sec-WebSocket-Key: c2hvcnQ=\r\nSec-WebSocket-Version: 13\r\n\r\n"
                    .into(),
                Err(E::InvalidKey),
            ),
            (
                format!(
                    "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\
                     Sec-WebSocket-Key: {KEY}\r\n\r\n"
                ),
                Err(E::MissingVersion),
            ),
        ];
        for (request, expected) in cases {
            assert_eq!(upgrade_of(&request), expected, "{request:?}");
        }
    }

    #[test]
    fn the_forwarded_handshake_asks_for_the_upgrade_again_with_our_identity() {
        let request = format!(
            "GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: chat\r\nX-Forwarded-Client-Cert: forged\r\n\r\n"
        );
        let head = parse_request_head(request.as_bytes(), &HeadLimits::default())
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        write_websocket_request_head(
            &head,
            request.as_bytes(),
            &ForwardExtras {
                client_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
                proto: ForwardedProto::Https,
                identity_headers: b"X-Forwarded-Client-Cert: Hash=ours\r\n",
                request_headers: &crate::filters::NO_HEADER_CHANGES,
            },
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!(
                "GET /chat HTTP/1.1\r\nHost: a\r\nSec-WebSocket-Key: {KEY}\r\n\
                 Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat\r\n\
                 X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: https\r\n\
                 X-Forwarded-Client-Cert: Hash=ours\r\n\
                 Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
            )
        );
    }

    fn switching(response: &str) -> Result<(), SwitchingProtocolsError> {
        let head = parse_upgrade_response_head(response.as_bytes(), &HeadLimits::default())
            .unwrap()
            .unwrap();
        assert_eq!(head.status, 101);
        assert!(!head.backend_keep_alive && !head.is_informational);
        check_switching_protocols(&head, response.as_bytes(), KEY.as_bytes())
    }

    #[test]
    fn a_101_must_switch_to_websocket_with_the_matching_accept() {
        use SwitchingProtocolsError as E;
        let accept = "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n";
        assert_eq!(
            switching(&format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{accept}\r\n"
            )),
            Ok(())
        );
        assert_eq!(
            switching(&format!(
                "HTTP/1.1 101 X\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n{accept}\r\n"
            )),
            Err(E::NotWebSocket)
        );
        assert_eq!(
            switching(&format!(
                "HTTP/1.1 101 X\r\nUpgrade: websocket\r\n{accept}\r\n"
            )),
            Err(E::NoConnectionUpgrade)
        );
        assert_eq!(
            switching(
                "HTTP/1.1 101 X\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\
                 Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n"
            ),
            Err(E::AcceptMismatch)
        );
    }

    #[test]
    fn the_relayed_101_keeps_the_backends_fields_but_not_its_hop_by_hop_ones() {
        let response = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                        Connection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\
                        Sec-WebSocket-Protocol: chat\r\nContent-Length: 0\r\n\r\n";
        let head = parse_upgrade_response_head(response.as_bytes(), &HeadLimits::default())
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        write_switching_protocols_head(&head, response.as_bytes(), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: x\r\n\
             Sec-WebSocket-Protocol: chat\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        );
    }
}
