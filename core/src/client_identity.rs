//! The verified client's identity: the listener's SAN and hash rules (spec §7), and the headers
//! that carry the identity to the backend (Envoy's `x-forwarded-client-cert`, or RFC 9440's
//! `Client-Cert` / `Client-Cert-Chain`).
//!
//! The identity headers are encoded once per connection, when the handshake verified a
//! certificate; connections without one pay nothing.

use std::fmt::Write as _;
use std::net::IpAddr;

use aws_lc_rs::digest;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rustls::pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate, X509Name};

use crate::listener_options::{
    CertificateHash, ClientIdentityRules, ForwardClientCert, SanPattern,
};

/// Header names the gateway alone may set; any client-sent copy is dropped before forwarding.
pub const IDENTITY_HEADER_NAMES: [&str; 3] = [
    "x-forwarded-client-cert",
    "client-cert",
    "client-cert-chain",
];

/// Why a certificate that chains correctly still does not pass the listener's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdentityMismatch {
    #[error("the certificate carries none of the allowed subject alt names")]
    SubjectAltName,
    #[error("the certificate's SHA-256 hash is not allowed")]
    Hash,
    #[error("the certificate cannot be parsed")]
    Unparsable,
}

/// Checks the listener's rules against the client leaf (after chain verification).
pub fn check_rules(
    rules: &ClientIdentityRules,
    leaf: &CertificateDer<'_>,
) -> Result<(), IdentityMismatch> {
    if !rules.certificate_sha256.is_empty() {
        let hash = sha256(leaf);
        if !rules.certificate_sha256.contains(&hash) {
            return Err(IdentityMismatch::Hash);
        }
    }
    if !rules.subject_alt_names.is_empty() {
        let (_, cert) =
            X509Certificate::from_der(leaf).map_err(|_| IdentityMismatch::Unparsable)?;
        let sans = subject_alt_names(&cert)?;
        let allowed = sans.iter().any(|san| {
            rules
                .subject_alt_names
                .iter()
                .any(|pattern| san_matches(pattern, san))
        });
        if !allowed {
            return Err(IdentityMismatch::SubjectAltName);
        }
    }
    Ok(())
}

pub fn sha256(der: &[u8]) -> CertificateHash {
    let d = digest::digest(&digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    CertificateHash(out)
}

fn subject_alt_names<'a>(
    cert: &'a X509Certificate<'a>,
) -> Result<Vec<&'a GeneralName<'a>>, IdentityMismatch> {
    Ok(cert
        .subject_alternative_name()
        .map_err(|_| IdentityMismatch::Unparsable)?
        .map(|ext| ext.value.general_names.iter().collect())
        .unwrap_or_default())
}

fn san_matches(pattern: &SanPattern, san: &GeneralName<'_>) -> bool {
    match (pattern, san) {
        (SanPattern::Dns(want), GeneralName::DNSName(have)) => want.eq_ignore_ascii_case(have),
        (SanPattern::Uri(want), GeneralName::URI(have)) => want == have,
        (SanPattern::Email(want), GeneralName::RFC822Name(have)) => want == have,
        (SanPattern::Ip(want), GeneralName::IPAddress(bytes)) => ip_from_san(bytes) == Some(*want),
        _ => false,
    }
}

fn ip_from_san(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

/// The subject of a certificate in RFC 4514 form, `None` when it does not parse.
pub fn subject_of(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(rfc4514_name(cert.subject()))
}

/// A client whose certificate verified, with its identity headers already encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedClient {
    pub sha256: CertificateHash,
    /// `Name: value\r\n` lines to append to every forwarded request (may be empty).
    pub identity_headers: Vec<u8>,
}

impl VerifiedClient {
    pub fn new(
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        forward: ForwardClientCert,
    ) -> Self {
        let sha256 = sha256(leaf);
        let identity_headers = match forward {
            ForwardClientCert::None => Vec::new(),
            ForwardClientCert::Xfcc => xfcc_header(leaf, &sha256),
            ForwardClientCert::Rfc9440 => rfc9440_headers(leaf, intermediates),
        };
        Self {
            sha256,
            identity_headers,
        }
    }
}

/// `x-forwarded-client-cert: Hash=..;Cert="..";Subject="..";URI=..;DNS=..` as Envoy writes it.
fn xfcc_header(leaf: &CertificateDer<'_>, hash: &CertificateHash) -> Vec<u8> {
    let mut value = format!("Hash={hash:?};Cert=\"{}\"", url_encode(&pem_encode(leaf)));
    if let Ok((_, cert)) = X509Certificate::from_der(leaf) {
        let _ = write!(
            value,
            ";Subject=\"{}\"",
            quote_escape(&rfc4514_name(cert.subject()))
        );
        for san in subject_alt_names(&cert).unwrap_or_default() {
            match san {
                GeneralName::URI(uri) => {
                    let _ = write!(value, ";URI={}", xfcc_value(uri));
                }
                GeneralName::DNSName(dns) => {
                    let _ = write!(value, ";DNS={}", xfcc_value(dns));
                }
                _ => {}
            }
        }
    }
    header_line("x-forwarded-client-cert", &value)
}

/// RFC 9440: `Client-Cert: :<base64 DER>:` and, with intermediates, `Client-Cert-Chain`.
fn rfc9440_headers(leaf: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>]) -> Vec<u8> {
    let mut out = header_line("client-cert", &format!(":{}:", BASE64.encode(leaf)));
    if !intermediates.is_empty() {
        let chain: Vec<String> = intermediates
            .iter()
            .map(|c| format!(":{}:", BASE64.encode(c)))
            .collect();
        out.extend_from_slice(&header_line("client-cert-chain", &chain.join(", ")));
    }
    out
}

fn header_line(name: &str, value: &str) -> Vec<u8> {
    let mut line = Vec::with_capacity(name.len() + value.len() + 4);
    line.extend_from_slice(name.as_bytes());
    line.extend_from_slice(b": ");
    // Header values must not carry CR, LF or NUL (certificate strings are attacker-chosen).
    line.extend(value.bytes().map(|b| {
        if matches!(b, b'\r' | b'\n' | 0) {
            b' '
        } else {
            b
        }
    }));
    line.extend_from_slice(b"\r\n");
    line
}

fn pem_encode(der: &[u8]) -> String {
    const PEM_LINE_LEN: usize = 64;
    let b64 = BASE64.encode(der);
    let mut pem = String::with_capacity(b64.len() + b64.len() / PEM_LINE_LEN + 64);
    pem.push_str("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(PEM_LINE_LEN) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// Percent-encodes everything but RFC 3986 unreserved characters. Runs once per connection
/// over a whole PEM certificate, so it pushes bytes directly rather than formatting each one.
fn url_encode(s: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len() + s.len() / 8);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
    out
}

/// XFCC values with `,`, `;`, `=` or `"` are quoted, with `"` escaped.
fn xfcc_value(s: &str) -> String {
    if s.contains([',', ';', '=', '"']) {
        format!("\"{}\"", quote_escape(s))
    } else {
        s.to_owned()
    }
}

fn quote_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The subject as RFC 4514 writes it (last RDN first), the form Envoy uses.
fn rfc4514_name(name: &X509Name<'_>) -> String {
    let registry = x509_parser::objects::oid_registry();
    let rdns: Vec<String> = name
        .iter_rdn()
        .map(|rdn| {
            rdn.iter()
                .map(|attr| {
                    let key = x509_parser::objects::oid2abbrev(attr.attr_type(), registry)
                        .map(str::to_owned)
                        .unwrap_or_else(|_| attr.attr_type().to_id_string());
                    let value = match attr.as_str() {
                        Ok(s) => rfc4514_escape(s),
                        Err(_) => {
                            let mut hex = String::from("#");
                            for b in attr.as_slice() {
                                let _ = write!(hex, "{b:02x}");
                            }
                            hex
                        }
                    };
                    format!("{key}={value}")
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

fn rfc4514_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let last = s.chars().count().saturating_sub(1);
    for (i, c) in s.chars().enumerate() {
        let special = matches!(c, '"' | '+' | ',' | ';' | '<' | '>' | '\\')
            || (i == 0 && matches!(c, ' ' | '#'))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_encoding_keeps_unreserved() {
        assert_eq!(url_encode("a-b_c.d~e f/+\n"), "a-b_c.d~e%20f%2F%2B%0A");
    }

    #[test]
    fn xfcc_values_are_quoted_when_needed() {
        assert_eq!(xfcc_value("spiffe://td/ns/a"), "spiffe://td/ns/a");
        assert_eq!(xfcc_value("a,b"), "\"a,b\"");
        assert_eq!(xfcc_value("a\"b"), "\"a\\\"b\"");
    }

    #[test]
    fn header_values_cannot_inject_lines() {
        assert_eq!(header_line("x", "a\r\nb: c"), b"x: a  b: c\r\n");
    }

    #[test]
    fn rfc4514_escapes_specials() {
        assert_eq!(rfc4514_escape("a,b+c"), "a\\,b\\+c");
        assert_eq!(rfc4514_escape(" #x "), "\\ #x\\ ");
    }

    #[test]
    fn ip_sans_compare_by_value() {
        assert_eq!(
            ip_from_san(&[10, 0, 0, 1]),
            Some("10.0.0.1".parse().unwrap())
        );
        assert_eq!(ip_from_san(&[1, 2, 3]), None);
    }
}
