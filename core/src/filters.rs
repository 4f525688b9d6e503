//! What an HTTPRoute rule's filters do to a request it matched, as pure data and pure
//! rewriting: header changes on the request forwarded to the backend and on the response
//! relayed to the client, or the redirect the gateway answers instead of forwarding.
//!
//! # Decisions
//! - **Header modifiers** (`RequestHeaderModifier`, `ResponseHeaderModifier`): the received
//!   fields named in `set` or `remove` are dropped (every field line of the name, names
//!   compared ASCII case-insensitively), then each `set` field is written, then each `add`
//!   field is appended as a field line of its own, after the received lines of that name
//!   (a recipient joins them with `,`, which is the API's "append"). So `remove` applies to
//!   what was received, never to what the filter writes, as Envoy orders it.
//! - A filter may not name a field the gateway writes itself ([`is_gateway_managed_field`]):
//!   framing, `Host`, hop-by-hop fields, `X-Forwarded-For`/`-Proto` and the client-identity
//!   fields. Changing them would break the framing the gateway vouches for, or forge what it
//!   attests; translation refuses such a filter (the route is not accepted).
//! - **Redirects** (`RequestRedirect`): `Location` is an absolute URI. The scheme is the
//!   filter's, else the request's. The host is the filter's `hostname`, else the request's
//!   host without its port. The port is the filter's, else the well-known port of the
//!   filter's scheme, else the listener's port (the API's rules); it is left out when it is
//!   the scheme's well-known one (80 for `http`, 443 for `https`), as the API asks. The path
//!   is the request's, the filter's full path, or the request's with the matched prefix
//!   replaced (element-wise, see [`RedirectPath`]); the query is kept. A request without any
//!   host (HTTP/1.0 without `Host`) to a filter without `hostname` gets only the path and
//!   query: without a host no absolute URI can be made, and a relative one is valid
//!   (RFC 9110 §10.2.2).
//!
//! [`is_gateway_managed_field`]: crate::http1::is_gateway_managed_field

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::http1::ForwardedProto;

/// Everything a rule's filters ask for. The default does nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleFilters {
    /// Applied to the request forwarded to the backend.
    pub request_headers: HeaderModifier,
    /// Applied to the final (not 1xx) response relayed to the client.
    pub response_headers: HeaderModifier,
    /// Set: the gateway answers every request of the rule with this redirect (the API forbids
    /// backends on such a rule).
    pub redirect: Option<RequestRedirect>,
}

/// Changes to the header fields of a message (see the module docs for the order).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderModifier {
    /// Replace every field of the name with one of this value.
    pub set: Vec<HeaderField>,
    /// Append a field line of this name and value.
    pub add: Vec<HeaderField>,
    /// Drop every field of these names.
    pub remove: Vec<String>,
}

/// One field a header modifier writes. Translation checked that the name is a token the
/// gateway does not manage and that the value is a valid field value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderField {
    pub name: String,
    pub value: String,
}

/// A modifier that changes nothing, for a request no rule's filter applies to.
pub static NO_HEADER_CHANGES: HeaderModifier = HeaderModifier {
    set: Vec::new(),
    add: Vec::new(),
    remove: Vec::new(),
};

impl HeaderModifier {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// Whether a received field named `name` is dropped (`set` replaces it, `remove` drops it).
    pub fn drops(&self, name: &[u8]) -> bool {
        self.set
            .iter()
            .any(|f| f.name.as_bytes().eq_ignore_ascii_case(name))
            || self
                .remove
                .iter()
                .any(|r| r.as_bytes().eq_ignore_ascii_case(name))
    }

    /// The fields to write after the received ones that are kept: `set`'s, then `add`'s.
    pub fn written(&self) -> impl Iterator<Item = &HeaderField> {
        self.set.iter().chain(&self.add)
    }
}

/// The API's `RequestRedirect` filter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRedirect {
    /// `None`: the request's scheme.
    pub scheme: Option<RedirectScheme>,
    /// `None`: the request's host.
    pub hostname: Option<String>,
    /// `None`: derived (see the module docs).
    pub port: Option<u16>,
    /// `None`: the request's path.
    pub path: Option<RedirectPath>,
    pub status: RedirectStatus,
}

/// The schemes a redirect may name (the API's enum).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RedirectScheme {
    Http,
    Https,
}

impl RedirectScheme {
    pub fn as_str(self) -> &'static str {
        match self {
            RedirectScheme::Http => "http",
            RedirectScheme::Https => "https",
        }
    }

    /// The scheme's well-known port (RFC 9110 §4.2).
    pub fn default_port(self) -> u16 {
        match self {
            RedirectScheme::Http => 80,
            RedirectScheme::Https => 443,
        }
    }
}

impl From<ForwardedProto> for RedirectScheme {
    fn from(proto: ForwardedProto) -> Self {
        match proto {
            ForwardedProto::Http => RedirectScheme::Http,
            ForwardedProto::Https => RedirectScheme::Https,
        }
    }
}

/// How a redirect changes the path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RedirectPath {
    /// The whole path becomes this.
    ReplaceFullPath(String),
    /// The part of the path the rule's `PathPrefix` match took is replaced by this, element-wise
    /// (trailing `/`s of both ignored): prefix `/foo`, replacement `/xyz` turns `/foo/bar` into
    /// `/xyz/bar` and `/foo` into `/xyz`; an empty replacement (or `/`) turns `/foo/bar` into
    /// `/bar` and `/foo` into `/`. Translation allows it only on a rule with exactly one match,
    /// a path prefix, as the API does.
    ReplacePrefixMatch(String),
}

/// The redirect status codes the API allows (301 and 302 are Core, the others Extended).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RedirectStatus {
    /// 301
    MovedPermanently,
    /// 302, the API's default.
    #[default]
    Found,
    /// 303
    SeeOther,
    /// 307
    TemporaryRedirect,
    /// 308
    PermanentRedirect,
}

impl RedirectStatus {
    /// The status for a `statusCode` of the API, or `None` for one it does not allow.
    pub fn from_code(code: i64) -> Option<Self> {
        [
            RedirectStatus::MovedPermanently,
            RedirectStatus::Found,
            RedirectStatus::SeeOther,
            RedirectStatus::TemporaryRedirect,
            RedirectStatus::PermanentRedirect,
        ]
        .into_iter()
        .find(|s| i64::from(s.code()) == code)
    }

    pub fn code(self) -> u16 {
        match self {
            RedirectStatus::MovedPermanently => 301,
            RedirectStatus::Found => 302,
            RedirectStatus::SeeOther => 303,
            RedirectStatus::TemporaryRedirect => 307,
            RedirectStatus::PermanentRedirect => 308,
        }
    }

    /// The standard reason phrase (RFC 9110 §15.4).
    pub fn reason(self) -> &'static str {
        match self {
            RedirectStatus::MovedPermanently => "Moved Permanently",
            RedirectStatus::Found => "Found",
            RedirectStatus::SeeOther => "See Other",
            RedirectStatus::TemporaryRedirect => "Temporary Redirect",
            RedirectStatus::PermanentRedirect => "Permanent Redirect",
        }
    }
}

/// What a redirect takes from the request and the listener.
#[derive(Debug, Clone, Copy)]
pub struct RedirectSource<'a> {
    pub scheme: RedirectScheme,
    /// Normalized host without port (an IPv6 literal without brackets); empty when none.
    pub host: &'a str,
    /// The port of the listener that took the request.
    pub listener_port: u16,
    /// The raw path, without the query.
    pub path: &'a str,
    /// The raw query, without `?`.
    pub query: Option<&'a str>,
    /// The path prefix of the `PathPrefix` match that selected the rule, without its trailing
    /// `/` (empty for `/`); `None` when another kind of match did.
    pub matched_prefix: Option<&'a str>,
}

impl RequestRedirect {
    /// The `Location` value for a request (see the module docs).
    pub fn location(&self, source: &RedirectSource<'_>) -> String {
        let host = self.hostname.as_deref().unwrap_or(source.host);
        let mut location = String::new();
        if !host.is_empty() {
            let scheme = self.scheme.unwrap_or(source.scheme);
            let port = self
                .port
                .or(self.scheme.map(RedirectScheme::default_port))
                .unwrap_or(source.listener_port);
            location.push_str(scheme.as_str());
            location.push_str("://");
            if host.contains(':') {
                let _ = write!(location, "[{host}]");
            } else {
                location.push_str(host);
            }
            if port != scheme.default_port() {
                let _ = write!(location, ":{port}");
            }
        }
        match &self.path {
            None => location.push_str(source.path),
            Some(RedirectPath::ReplaceFullPath(path)) => location.push_str(path),
            Some(RedirectPath::ReplacePrefixMatch(replacement)) => {
                let prefix = source.matched_prefix.unwrap_or_default();
                let rest = source.path.strip_prefix(prefix).unwrap_or(source.path);
                let replacement = replacement.trim_end_matches('/');
                location.push_str(replacement);
                if rest.is_empty() {
                    if replacement.is_empty() {
                        location.push('/');
                    }
                } else {
                    // The prefix matched element-wise, so `rest` starts with `/` (a path that
                    // does not, as `*`, keeps an element boundary all the same).
                    if !rest.starts_with('/') {
                        location.push('/');
                    }
                    location.push_str(rest);
                }
            }
        }
        if let Some(query) = source.query {
            location.push('?');
            location.push_str(query);
        }
        location
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source<'a>(path: &'a str, matched_prefix: Option<&'a str>) -> RedirectSource<'a> {
        RedirectSource {
            scheme: RedirectScheme::Http,
            host: "gw.example",
            listener_port: 80,
            path,
            query: None,
            matched_prefix,
        }
    }

    fn redirect() -> RequestRedirect {
        RequestRedirect {
            scheme: None,
            hostname: None,
            port: None,
            path: None,
            status: RedirectStatus::Found,
        }
    }

    #[test]
    fn hostname_only_keeps_scheme_path_and_query_and_leaves_out_port_80() {
        let r = RequestRedirect {
            hostname: Some("example.org".to_owned()),
            ..redirect()
        };
        let mut s = source("/hostname-redirect", Some("/hostname-redirect"));
        assert_eq!(r.location(&s), "http://example.org/hostname-redirect");
        s.query = Some("a=1&b");
        assert_eq!(r.location(&s), "http://example.org/hostname-redirect?a=1&b");
    }

    #[test]
    fn port_is_the_filters_then_the_schemes_then_the_listeners() {
        let mut s = source("/p", None);
        s.listener_port = 8080;
        assert_eq!(redirect().location(&s), "http://gw.example:8080/p");
        let https = RequestRedirect {
            scheme: Some(RedirectScheme::Https),
            ..redirect()
        };
        assert_eq!(https.location(&s), "https://gw.example/p");
        let port = RequestRedirect {
            port: Some(8083),
            ..https.clone()
        };
        assert_eq!(port.location(&s), "https://gw.example:8083/p");
        let port_443 = RequestRedirect {
            port: Some(443),
            ..https
        };
        assert_eq!(port_443.location(&s), "https://gw.example/p");
        // https listener, no scheme: the listener's port, left out when it is 443.
        s.scheme = RedirectScheme::Https;
        s.listener_port = 443;
        assert_eq!(redirect().location(&s), "https://gw.example/p");
        let to_http = RequestRedirect {
            scheme: Some(RedirectScheme::Http),
            ..redirect()
        };
        assert_eq!(to_http.location(&s), "http://gw.example/p");
    }

    #[test]
    fn ipv6_hosts_get_brackets() {
        let mut s = source("/", None);
        s.host = "::1";
        s.listener_port = 8080;
        assert_eq!(redirect().location(&s), "http://[::1]:8080/");
    }

    #[test]
    fn without_any_host_only_path_and_query_are_given() {
        let mut s = source("/x", None);
        s.host = "";
        s.query = Some("q");
        assert_eq!(redirect().location(&s), "/x?q");
    }

    #[test]
    fn full_path_replacement() {
        let r = RequestRedirect {
            path: Some(RedirectPath::ReplaceFullPath(
                "/full-path-replacement".to_owned(),
            )),
            ..redirect()
        };
        assert_eq!(
            r.location(&source("/full/path/original", Some("/full"))),
            "http://gw.example/full-path-replacement"
        );
    }

    #[test]
    fn prefix_replacement_follows_the_apis_table() {
        // (request path, matched prefix as the route table keeps it, replacement, result)
        let table = [
            ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
            ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
            ("/foo", "/foo", "/xyz", "/xyz"),
            ("/foo/", "/foo", "/xyz", "/xyz/"),
            ("/foo/bar", "/foo", "", "/bar"),
            ("/foo/", "/foo", "", "/"),
            ("/foo", "/foo", "", "/"),
            ("/foo/", "/foo", "/", "/"),
            ("/foo", "/foo", "/", "/"),
            (
                "/original-prefix/lemon",
                "/original-prefix",
                "/replacement-prefix",
                "/replacement-prefix/lemon",
            ),
            (
                "/path-and-host",
                "/path-and-host",
                "/replacement-prefix",
                "/replacement-prefix",
            ),
            // Prefix `/` (kept as empty): everything is the rest.
            ("/a/b", "", "/xyz", "/xyz/a/b"),
            ("/", "", "/xyz", "/xyz/"),
            ("/", "", "/", "/"),
        ];
        for (path, prefix, replacement, expected) in table {
            let r = RequestRedirect {
                path: Some(RedirectPath::ReplacePrefixMatch(replacement.to_owned())),
                ..redirect()
            };
            assert_eq!(
                r.location(&source(path, Some(prefix))),
                format!("http://gw.example{expected}"),
                "{path} {prefix} {replacement}"
            );
        }
    }

    #[test]
    fn status_codes() {
        for code in [301, 302, 303, 307, 308] {
            let status = RedirectStatus::from_code(code).unwrap();
            assert_eq!(i64::from(status.code()), code);
        }
        for code in [200, 300, 304, 0, -301, 3010] {
            assert_eq!(RedirectStatus::from_code(code), None);
        }
        assert_eq!(RedirectStatus::default().code(), 302);
    }

    #[test]
    fn set_and_remove_drop_received_fields_case_insensitively() {
        let m = HeaderModifier {
            set: vec![HeaderField {
                name: "X-Header-Set".to_owned(),
                value: "v".to_owned(),
            }],
            add: vec![HeaderField {
                name: "X-Header-Add".to_owned(),
                value: "a".to_owned(),
            }],
            remove: vec!["X-Header-Remove".to_owned()],
        };
        assert!(m.drops(b"x-header-set"));
        assert!(m.drops(b"X-HEADER-REMOVE"));
        assert!(!m.drops(b"x-header-add"));
        assert!(!m.drops(b"x-header-set-2"));
        let written: Vec<&str> = m.written().map(|f| f.name.as_str()).collect();
        assert_eq!(written, ["X-Header-Set", "X-Header-Add"]);
        assert!(HeaderModifier::default().is_empty());
    }
}
