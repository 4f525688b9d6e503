//! Listener `tls.options` that Portcullis understands (spec §7 and the data-plane options).
//!
//! Keys under `portcullis.dev/` are ours: an unknown one is an error, so that a typo never
//! silently weakens a listener. The client-identity keys are also accepted under the
//! `agentgateway.dev/` and `kgateway.dev/` prefixes so that manifests written for those gateways
//! work unchanged; any other key is ignored (it belongs to another implementation).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

const OUR_PREFIX: &str = "portcullis.dev/";
const ALIAS_PREFIXES: [&str; 2] = ["agentgateway.dev/", "kgateway.dev/"];

const KEY_VERIFY_SANS: &str = "verify-subject-alt-names";
const KEY_VERIFY_HASH: &str = "verify-certificate-hash";
const KEY_FORWARD_CLIENT_CERT: &str = "forward-client-cert";
const KEY_SESSION_RESUMPTION: &str = "tls-session-resumption";

/// Parsed options of one HTTPS listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerTlsOptions {
    /// TLS session resumption (tickets). On by default; `"off"` forces full handshakes.
    pub session_resumption: bool,
    pub client_identity: ClientIdentityRules,
    pub forward_client_cert: ForwardClientCert,
}

impl Default for ListenerTlsOptions {
    fn default() -> Self {
        Self {
            session_resumption: true,
            client_identity: ClientIdentityRules::default(),
            forward_client_cert: ForwardClientCert::Xfcc,
        }
    }
}

/// Extra checks on a client leaf certificate after its chain verified (spec §7).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientIdentityRules {
    /// At least one must be carried by the leaf; empty means no SAN restriction.
    pub subject_alt_names: Vec<SanPattern>,
    /// SHA-256 of the leaf DER; at least one must match; empty means no hash restriction.
    pub certificate_sha256: Vec<CertificateHash>,
}

impl ClientIdentityRules {
    pub fn is_empty(&self) -> bool {
        self.subject_alt_names.is_empty() && self.certificate_sha256.is_empty()
    }
}

/// A SAN the client leaf must carry, by type. DNS names compare case-insensitively; the
/// other types compare exactly (IP addresses by value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SanPattern {
    Dns(String),
    Uri(String),
    Ip(IpAddr),
    Email(String),
}

/// A SHA-256 certificate fingerprint.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CertificateHash(pub [u8; 32]);

impl fmt::Debug for CertificateHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// How a verified client identity reaches the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForwardClientCert {
    /// Envoy's `x-forwarded-client-cert`.
    Xfcc,
    /// RFC 9440 `Client-Cert` and `Client-Cert-Chain`.
    Rfc9440,
    /// Strip client-sent identity headers, add none.
    None,
}

/// An option that cannot be honoured; the listener is then not accepted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("tls.options[{key:?}]: {message}")]
pub struct ListenerOptionError {
    pub key: String,
    pub message: String,
}

/// Parses a listener's `tls.options`.
pub fn parse(
    options: &BTreeMap<String, String>,
) -> Result<ListenerTlsOptions, ListenerOptionError> {
    let mut parsed = ListenerTlsOptions::default();
    // Option name -> the key it was given as: the same option under two prefixes is an error
    // rather than one value silently winning.
    let mut given: BTreeMap<&str, &str> = BTreeMap::new();
    for (key, value) in options {
        let err = |message: String| ListenerOptionError {
            key: key.clone(),
            message,
        };
        let (name, ours) = if let Some(name) = key.strip_prefix(OUR_PREFIX) {
            (name, true)
        } else if let Some(name) = ALIAS_PREFIXES.iter().find_map(|p| key.strip_prefix(p)) {
            (name, false)
        } else {
            continue;
        };
        if (ours || matches!(name, KEY_VERIFY_SANS | KEY_VERIFY_HASH))
            && let Some(first) = given.insert(name, key)
        {
            return Err(err(format!("the same option as {first:?}: give it once")));
        }
        match name {
            KEY_VERIFY_SANS => {
                parsed.client_identity.subject_alt_names = parse_san_list(value).map_err(err)?
            }
            KEY_VERIFY_HASH => {
                parsed.client_identity.certificate_sha256 = parse_hash_list(value).map_err(err)?
            }
            KEY_FORWARD_CLIENT_CERT if ours => {
                parsed.forward_client_cert = match value.trim() {
                    "xfcc" => ForwardClientCert::Xfcc,
                    "rfc9440" => ForwardClientCert::Rfc9440,
                    "none" => ForwardClientCert::None,
                    other => {
                        return Err(err(format!(
                            "{other:?} is not one of \"xfcc\", \"rfc9440\", \"none\""
                        )));
                    }
                }
            }
            KEY_SESSION_RESUMPTION if ours => {
                parsed.session_resumption = match value.trim() {
                    "on" => true,
                    "off" => false,
                    other => return Err(err(format!("{other:?} is not \"on\" or \"off\""))),
                }
            }
            _ if ours => return Err(err("unknown Portcullis option".to_owned())),
            // Other keys under an alias prefix belong to that implementation.
            _ => {}
        }
    }
    Ok(parsed)
}

fn parse_san_list(value: &str) -> Result<Vec<SanPattern>, String> {
    let mut sans = Vec::new();
    for entry in value.split(',').map(str::trim) {
        if entry.is_empty() {
            return Err("empty entry in the subject alt name list".to_owned());
        }
        let san = if let Some(uri) = strip_prefix_ignore_case(entry, "URI:") {
            SanPattern::Uri(non_empty(uri, entry)?.to_owned())
        } else if let Some(ip) = strip_prefix_ignore_case(entry, "IP:") {
            SanPattern::Ip(
                ip.trim()
                    .parse()
                    .map_err(|_| format!("{entry:?} is not an IP address"))?,
            )
        } else if let Some(email) = strip_prefix_ignore_case(entry, "EMAIL:") {
            SanPattern::Email(non_empty(email, entry)?.to_owned())
        } else if let Some(dns) = strip_prefix_ignore_case(entry, "DNS:") {
            SanPattern::Dns(non_empty(dns, entry)?.to_ascii_lowercase())
        } else if entry.contains(':') {
            return Err(format!(
                "{entry:?} has an unknown type prefix (use URI:, IP:, EMAIL: or a bare DNS name)"
            ));
        } else {
            SanPattern::Dns(entry.to_ascii_lowercase())
        };
        sans.push(san);
    }
    Ok(sans)
}

fn non_empty<'a>(value: &'a str, entry: &str) -> Result<&'a str, String> {
    let value = value.trim();
    if value.is_empty() {
        Err(format!("{entry:?} has an empty value"))
    } else {
        Ok(value)
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| s.get(prefix.len()..))
        .flatten()
}

fn parse_hash_list(value: &str) -> Result<Vec<CertificateHash>, String> {
    value
        .split(',')
        .map(str::trim)
        .map(|entry| parse_sha256(entry).ok_or_else(|| {
            format!("{entry:?} is not a SHA-256 fingerprint (64 hex digits, optionally colon-separated pairs)")
        }))
        .collect()
}

/// Accepts `ab12...` (64 hex digits) or `AB:12:...` (32 colon-separated pairs), any case.
fn parse_sha256(entry: &str) -> Option<CertificateHash> {
    let hex: String = if entry.contains(':') {
        let pairs: Vec<&str> = entry.split(':').collect();
        if pairs.len() != 32 || pairs.iter().any(|p| p.len() != 2) {
            return None;
        }
        pairs.concat()
    } else {
        entry.to_owned()
    };
    // `from_str_radix` also takes a leading `+`: only hex digits are a hash.
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(CertificateHash(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_when_no_options() {
        assert_eq!(parse(&BTreeMap::new()), Ok(ListenerTlsOptions::default()));
    }

    #[test]
    fn san_list_with_types_and_whitespace() {
        let p = parse(&opts(&[(
            "portcullis.dev/verify-subject-alt-names",
            " Client.Example.com , URI:spiffe://td/ns/a/sa/b,IP:10.0.0.1 ,EMAIL:a@b.c",
        )]))
        .unwrap();
        assert_eq!(
            p.client_identity.subject_alt_names,
            vec![
                SanPattern::Dns("client.example.com".into()),
                SanPattern::Uri("spiffe://td/ns/a/sa/b".into()),
                SanPattern::Ip("10.0.0.1".parse().unwrap()),
                SanPattern::Email("a@b.c".into()),
            ]
        );
    }

    #[test]
    fn hash_in_both_forms_and_any_case() {
        let hex = "AB".repeat(32);
        let colon = vec!["ab"; 32].join(":");
        let p = parse(&opts(&[(
            "agentgateway.dev/verify-certificate-hash",
            &format!("{hex}, {colon}"),
        )]))
        .unwrap();
        assert_eq!(
            p.client_identity.certificate_sha256,
            vec![CertificateHash([0xab; 32]); 2]
        );
    }

    #[test]
    fn one_option_under_two_prefixes_is_refused() {
        let e = parse(&opts(&[
            ("agentgateway.dev/verify-subject-alt-names", "a.example"),
            ("portcullis.dev/verify-subject-alt-names", "b.example"),
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("give it once"), "{e}");
        // Other keys of another implementation's prefix are its own business.
        assert!(
            parse(&opts(&[
                ("kgateway.dev/something-else", "x"),
                ("agentgateway.dev/something-else", "y"),
            ]))
            .is_ok()
        );
    }

    #[test]
    fn bad_values_name_the_key() {
        for (k, v) in [
            ("portcullis.dev/verify-certificate-hash", "abc"),
            ("portcullis.dev/verify-certificate-hash", &"zz".repeat(32)),
            // Signs are not hex digits, though Rust's integer parser takes a leading `+`.
            ("portcullis.dev/verify-certificate-hash", &"+f".repeat(32)),
            (
                "portcullis.dev/verify-certificate-hash",
                &vec!["+f"; 32].join(":"),
            ),
            ("kgateway.dev/verify-subject-alt-names", "a.com,,b.com"),
            ("portcullis.dev/verify-subject-alt-names", "IP:not-an-ip"),
            ("portcullis.dev/verify-subject-alt-names", "FOO:bar"),
            ("portcullis.dev/forward-client-cert", "sometimes"),
            ("portcullis.dev/tls-session-resumption", "maybe"),
            ("portcullis.dev/no-such-option", "x"),
        ] {
            let e = parse(&opts(&[(k, v)])).unwrap_err();
            assert_eq!(e.key, k);
            assert!(e.to_string().contains(k), "{e}");
        }
    }

    #[test]
    fn foreign_keys_are_ignored() {
        let p = parse(&opts(&[
            ("example.com/whatever", "x"),
            ("agentgateway.dev/something-else", "y"),
        ]))
        .unwrap();
        assert_eq!(p, ListenerTlsOptions::default());
    }

    #[test]
    fn resumption_and_forwarding() {
        let p = parse(&opts(&[
            ("portcullis.dev/tls-session-resumption", "off"),
            ("portcullis.dev/forward-client-cert", "rfc9440"),
        ]))
        .unwrap();
        assert!(!p.session_resumption);
        assert_eq!(p.forward_client_cert, ForwardClientCert::Rfc9440);
    }
}
