//! Field-value helpers shared by the request and response sides: list syntax, framing fields,
//! connection options and the classification of field names.

/// Header fields this module treats specially, recognized by name (ASCII case-insensitive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    Expect,
    /// Hop-by-hop fields other than `Connection` and `Transfer-Encoding`: `Keep-Alive`,
    /// `Proxy-Connection`, `TE`, `Trailer`, `Upgrade` (RFC 9110 §7.6.1 and common practice).
    HopByHop,
    XForwardedFor,
    XForwardedProto,
    /// Client identity headers only the gateway may set: `X-Forwarded-Client-Cert`,
    /// `Client-Cert`, `Client-Cert-Chain` (RFC 9440).
    Identity,
    Other,
}

const NAMED_FIELDS: [(&str, Field); 14] = [
    ("host", Field::Host),
    ("content-length", Field::ContentLength),
    ("transfer-encoding", Field::TransferEncoding),
    ("connection", Field::Connection),
    ("expect", Field::Expect),
    ("keep-alive", Field::HopByHop),
    ("proxy-connection", Field::HopByHop),
    ("te", Field::HopByHop),
    ("trailer", Field::HopByHop),
    ("upgrade", Field::HopByHop),
    ("x-forwarded-for", Field::XForwardedFor),
    ("x-forwarded-proto", Field::XForwardedProto),
    ("x-forwarded-client-cert", Field::Identity),
    ("client-cert", Field::Identity),
];

const CLIENT_CERT_CHAIN: &str = "client-cert-chain";

pub(crate) fn classify(name: &[u8]) -> Field {
    if name.eq_ignore_ascii_case(CLIENT_CERT_CHAIN.as_bytes()) {
        return Field::Identity;
    }
    NAMED_FIELDS
        .iter()
        .find(|(n, _)| n.len() == name.len() && name.eq_ignore_ascii_case(n.as_bytes()))
        .map_or(Field::Other, |(_, f)| *f)
}

/// Removes optional whitespace (SP, HTAB) on both sides.
pub(crate) fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !is_ows(*b)).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !is_ows(*b)).map_or(start, |p| p + 1);
    v.get(start..end).unwrap_or_default()
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// The elements of a comma-separated list field value, trimmed, empty elements skipped (RFC 9110
/// §5.6.1: a recipient must ignore a reasonable number of empty list elements).
pub(crate) fn list_elements(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|b| *b == b',')
        .map(trim_ows)
        .filter(|e| !e.is_empty())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LengthError {
    Invalid,
    Conflicting,
}

/// Folds one `Content-Length` field value into the length seen so far. Each list element must be
/// 1*DIGIT fitting `u64`; all elements of all fields must agree.
pub(crate) fn fold_content_length(seen: Option<u64>, value: &[u8]) -> Result<u64, LengthError> {
    let mut current = seen;
    let mut any = false;
    for element in list_elements(value) {
        any = true;
        let n = parse_decimal(element).ok_or(LengthError::Invalid)?;
        match current {
            Some(prev) if prev != n => return Err(LengthError::Conflicting),
            _ => current = Some(n),
        }
    }
    if !any {
        return Err(LengthError::Invalid);
    }
    current.ok_or(LengthError::Invalid)
}

fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, b| {
        if b.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

/// What the `Transfer-Encoding` fields of a message say, element by element, across all of its
/// field lines in order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CodingScan {
    /// At least one `Transfer-Encoding` field line was present.
    pub present: bool,
    /// The number of non-empty codings.
    pub codings: usize,
    pub last_is_chunked: bool,
    /// `chunked` appeared before the final coding (applied twice, or not last).
    pub chunked_not_final: bool,
    /// A coding other than `chunked` appeared before the final coding.
    pub other_not_final: bool,
}

impl CodingScan {
    pub(crate) fn push_field(&mut self, value: &[u8]) {
        self.present = true;
        for coding in list_elements(value) {
            if self.codings > 0 {
                if self.last_is_chunked {
                    self.chunked_not_final = true;
                } else {
                    self.other_not_final = true;
                }
            }
            self.codings = self.codings.saturating_add(1);
            self.last_is_chunked = coding.eq_ignore_ascii_case(b"chunked");
        }
    }
}

/// Connection options of a message (RFC 9112 §9.3, §9.6).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ConnectionOptions {
    pub close: bool,
    pub keep_alive: bool,
    /// The `upgrade` option: the only requests that can be a WebSocket handshake.
    pub upgrade: bool,
}

impl ConnectionOptions {
    pub(crate) fn push_field(&mut self, value: &[u8]) {
        for option in list_elements(value) {
            if option.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if option.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if option.eq_ignore_ascii_case(b"upgrade") {
                self.upgrade = true;
            }
        }
    }

    /// Whether the connection persists after this message (RFC 9112 §9.3).
    pub(crate) fn persistent(&self, version: super::Version) -> bool {
        match version {
            super::Version::Http11 => !self.close,
            super::Version::Http10 => self.keep_alive && !self.close,
        }
    }
}

/// tchar (RFC 9110 §5.6.2).
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A field-value byte other than whitespace: VCHAR or obs-text (RFC 9110 §5.5).
pub(crate) fn is_field_vchar(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) || b >= 0x80
}

/// Whether `name` is a field name (RFC 9110 §5.1: a non-empty token).
pub fn is_field_name(name: &[u8]) -> bool {
    !name.is_empty() && name.iter().all(|b| is_tchar(*b))
}

/// Whether `value` can be sent as a field value as is (RFC 9110 §5.5): visible characters
/// and obs-text, with spaces or tabs only between them.
pub fn is_field_value(value: &[u8]) -> bool {
    value == trim_ows(value)
        && value
            .iter()
            .all(|b| is_field_vchar(*b) || *b == b' ' || *b == b'\t')
}

/// Whether the gateway writes fields of this name itself when it forwards a message (framing,
/// `Host`, hop-by-hop and connection options, `X-Forwarded-*`, client identity), so that a
/// route's header filter must not: it would break the framing or forge what the gateway
/// vouches for.
pub fn is_gateway_managed_field(name: &[u8]) -> bool {
    classify(name) != Field::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_ows_only() {
        assert_eq!(trim_ows(b"  a b\t "), b"a b");
        assert_eq!(trim_ows(b" \t "), b"");
        assert_eq!(trim_ows(b""), b"");
        assert_eq!(trim_ows(b"x"), b"x");
    }

    #[test]
    fn list_elements_skip_empty_ones() {
        let v: Vec<&[u8]> = list_elements(b" ,a, ,b ,,").collect();
        assert_eq!(v, vec![&b"a"[..], &b"b"[..]]);
    }

    #[test]
    fn classify_is_case_insensitive() {
        assert_eq!(classify(b"HOST"), Field::Host);
        assert_eq!(classify(b"Content-Length"), Field::ContentLength);
        assert_eq!(classify(b"client-cert-chain"), Field::Identity);
        assert_eq!(classify(b"Client-Cert"), Field::Identity);
        assert_eq!(classify(b"TE"), Field::HopByHop);
        assert_eq!(classify(b"tee"), Field::Other);
        assert_eq!(classify(b""), Field::Other);
    }

    #[test]
    fn content_length_folding() {
        assert_eq!(fold_content_length(None, b"0"), Ok(0));
        assert_eq!(fold_content_length(None, b"007"), Ok(7));
        assert_eq!(fold_content_length(None, b"5, 5"), Ok(5));
        assert_eq!(fold_content_length(Some(5), b"5"), Ok(5));
        assert_eq!(
            fold_content_length(Some(5), b"6"),
            Err(LengthError::Conflicting)
        );
        assert_eq!(
            fold_content_length(None, b"5, 6"),
            Err(LengthError::Conflicting)
        );
        for bad in [
            &b""[..],
            b",",
            b"+5",
            b"-5",
            b"5 5",
            b"0x5",
            b"5.0",
            b"18446744073709551616",
            b"99999999999999999999999",
        ] {
            assert_eq!(
                fold_content_length(None, bad),
                Err(LengthError::Invalid),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            fold_content_length(None, b"18446744073709551615"),
            Ok(u64::MAX)
        );
    }

    #[test]
    fn coding_scan() {
        let scan = |fields: &[&[u8]]| {
            let mut s = CodingScan::default();
            for f in fields {
                s.push_field(f);
            }
            s
        };
        let s = scan(&[b"chunked"]);
        assert!(s.last_is_chunked && !s.chunked_not_final && !s.other_not_final);
        let s = scan(&[b"gzip", b"Chunked"]);
        assert!(s.last_is_chunked && s.other_not_final);
        let s = scan(&[b"chunked, chunked"]);
        assert!(s.last_is_chunked && s.chunked_not_final);
        let s = scan(&[b"chunked, gzip"]);
        assert!(!s.last_is_chunked && s.chunked_not_final);
        let s = scan(&[b" , "]);
        assert!(s.present && s.codings == 0);
    }
}
