//! HTTPRoute rule filters to [`RuleFilters`]: `RequestHeaderModifier`, `ResponseHeaderModifier`
//! and `RequestRedirect` (scheme, hostname, port, path, status code). Every other filter type
//! (`URLRewrite`, `RequestMirror`, `CORS`, `ExternalAuth`, `ExtensionRef`) is refused, as is a
//! filter whose values the API server would have refused (a manifest folder has none to check
//! them): each refusal is a message that makes the route `Accepted=False, reason
//! UnsupportedValue`.
//!
//! Header filters may not name a field the gateway writes itself (see
//! [`portcullis_core::filters`]); a `ReplacePrefixMatch` redirect needs its rule to have exactly
//! one match, of type `PathPrefix` (the API's rule: there is one matched prefix to replace),
//! which `routes.rs` checks with the matches.

use gateway_api::experimental::httproutes::{
    HttpRouteRulesFilters, HttpRouteRulesFiltersRequestRedirect,
    HttpRouteRulesFiltersRequestRedirectPathType, HttpRouteRulesFiltersRequestRedirectScheme,
    HttpRouteRulesFiltersType,
};
use portcullis_core::filters::{
    HeaderField, HeaderModifier, RedirectPath, RedirectScheme, RedirectStatus, RequestRedirect,
    RuleFilters,
};
use portcullis_core::hostname;
use portcullis_core::http1::{is_field_name, is_field_value, is_gateway_managed_field};

use super::matching::is_valid_hostname;

/// One rule's filters, or what in them cannot be honoured (each a message naming the field
/// under `filters`).
pub(crate) fn convert_filters(filters: &[HttpRouteRulesFilters]) -> (RuleFilters, Vec<String>) {
    let mut converted = RuleFilters::default();
    let mut problems = Vec::new();
    let mut seen: Vec<&HttpRouteRulesFiltersType> = Vec::new();
    for (index, filter) in filters.iter().enumerate() {
        let at = format!(".filters[{index}]");
        let kind = &filter.r#type;
        let once = matches!(
            kind,
            HttpRouteRulesFiltersType::RequestHeaderModifier
                | HttpRouteRulesFiltersType::ResponseHeaderModifier
                | HttpRouteRulesFiltersType::RequestRedirect
        );
        if once && seen.contains(&kind) {
            problems.push(format!("{at}: at most one {kind:?} filter per rule"));
            continue;
        }
        seen.push(kind);
        let missing = |field: &str| format!("{at}: type {kind:?} needs {field}");
        match kind {
            HttpRouteRulesFiltersType::RequestHeaderModifier => {
                match &filter.request_header_modifier {
                    Some(m) => {
                        converted.request_headers = header_modifier(
                            &format!("{at}.requestHeaderModifier"),
                            m.set.iter().flatten().map(|f| (&*f.name, &*f.value)),
                            m.add.iter().flatten().map(|f| (&*f.name, &*f.value)),
                            m.remove.iter().flatten(),
                            &mut problems,
                        );
                    }
                    None => problems.push(missing("requestHeaderModifier")),
                }
            }
            HttpRouteRulesFiltersType::ResponseHeaderModifier => {
                match &filter.response_header_modifier {
                    Some(m) => {
                        converted.response_headers = header_modifier(
                            &format!("{at}.responseHeaderModifier"),
                            m.set.iter().flatten().map(|f| (&*f.name, &*f.value)),
                            m.add.iter().flatten().map(|f| (&*f.name, &*f.value)),
                            m.remove.iter().flatten(),
                            &mut problems,
                        );
                    }
                    None => problems.push(missing("responseHeaderModifier")),
                }
            }
            HttpRouteRulesFiltersType::RequestRedirect => match &filter.request_redirect {
                Some(r) => {
                    match request_redirect(&format!("{at}.requestRedirect"), r) {
                        Ok(redirect) => converted.redirect = Some(redirect),
                        Err(problem) => problems.push(problem),
                    };
                }
                None => problems.push(missing("requestRedirect")),
            },
            HttpRouteRulesFiltersType::RequestMirror
            | HttpRouteRulesFiltersType::UrlRewrite
            | HttpRouteRulesFiltersType::ExtensionRef
            | HttpRouteRulesFiltersType::Cors
            | HttpRouteRulesFiltersType::ExternalAuth => {
                problems.push(format!("{at}: filter type {kind:?} is not supported"));
            }
        }
    }
    (converted, problems)
}

/// A header modifier whose every name and value can be written as they are.
fn header_modifier<'a>(
    at: &str,
    set: impl Iterator<Item = (&'a str, &'a str)>,
    add: impl Iterator<Item = (&'a str, &'a str)>,
    remove: impl Iterator<Item = &'a String>,
    problems: &mut Vec<String>,
) -> HeaderModifier {
    let mut check_name = |field: String, name: &str| {
        if !is_field_name(name.as_bytes()) {
            problems.push(format!("{at}.{field}: {name:?} is not a header name"));
            false
        } else if is_gateway_managed_field(name.as_bytes()) {
            problems.push(format!(
                "{at}.{field}: {name:?} is written by the gateway itself and cannot be changed by a filter"
            ));
            false
        } else {
            true
        }
    };
    let mut fields = |list: &str, pairs: &mut dyn Iterator<Item = (&'a str, &'a str)>| {
        let mut kept = Vec::new();
        let mut bad_values = Vec::new();
        for (i, (name, value)) in pairs.enumerate() {
            if !check_name(format!("{list}[{i}].name"), name) {
                continue;
            }
            if !is_field_value(value.as_bytes()) {
                bad_values.push(format!(
                    "{at}.{list}[{i}].value: {value:?} is not a valid header value"
                ));
                continue;
            }
            kept.push(HeaderField {
                name: name.to_owned(),
                value: value.to_owned(),
            });
        }
        (kept, bad_values)
    };
    let (set, bad_set) = fields("set", &mut { set });
    let (add, bad_add) = fields("add", &mut { add });
    let mut kept_remove = Vec::new();
    for (i, name) in remove.enumerate() {
        if check_name(format!("remove[{i}]"), name) {
            kept_remove.push(name.clone());
        }
    }
    problems.extend(bad_set);
    problems.extend(bad_add);
    HeaderModifier {
        set,
        add,
        remove: kept_remove,
    }
}

/// A redirect with checked values, or the message for the first that is not.
fn request_redirect(
    at: &str,
    r: &HttpRouteRulesFiltersRequestRedirect,
) -> Result<RequestRedirect, String> {
    let scheme = r.scheme.as_ref().map(|s| match s {
        HttpRouteRulesFiltersRequestRedirectScheme::Http => RedirectScheme::Http,
        HttpRouteRulesFiltersRequestRedirectScheme::Https => RedirectScheme::Https,
    });
    let hostname = match r.hostname.as_deref() {
        None => None,
        Some(raw) => {
            let name = hostname::normalize(raw);
            if !is_valid_hostname(&name) || hostname::is_wildcard(&name) {
                return Err(format!(
                    "{at}.hostname: {raw:?} is not a DNS name (wildcards are not allowed)"
                ));
            }
            Some(name)
        }
    };
    let port = match r.port {
        None => None,
        Some(port) => Some(
            u16::try_from(port)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{at}.port: {port} is not a port number"))?,
        ),
    };
    let path = match &r.path {
        None => None,
        Some(path) => Some(match path.r#type {
            HttpRouteRulesFiltersRequestRedirectPathType::ReplaceFullPath => {
                let value = path.replace_full_path.as_deref().ok_or_else(|| {
                    format!("{at}.path: type ReplaceFullPath needs replaceFullPath")
                })?;
                if !value.starts_with('/') || !is_valid_path(value) {
                    return Err(format!(
                        "{at}.path.replaceFullPath: {value:?} is not an absolute path"
                    ));
                }
                RedirectPath::ReplaceFullPath(value.to_owned())
            }
            HttpRouteRulesFiltersRequestRedirectPathType::ReplacePrefixMatch => {
                let value = path.replace_prefix_match.as_deref().ok_or_else(|| {
                    format!("{at}.path: type ReplacePrefixMatch needs replacePrefixMatch")
                })?;
                // Empty is allowed: the matched prefix is dropped.
                if !(value.is_empty() || value.starts_with('/') && is_valid_path(value)) {
                    return Err(format!(
                        "{at}.path.replacePrefixMatch: {value:?} is not an absolute path"
                    ));
                }
                RedirectPath::ReplacePrefixMatch(value.to_owned())
            }
        }),
    };
    let status = match r.status_code {
        None => RedirectStatus::default(),
        Some(code) => RedirectStatus::from_code(code).ok_or_else(|| {
            format!("{at}.statusCode: {code} is not one of 301, 302, 303, 307, 308")
        })?,
    };
    Ok(RequestRedirect {
        scheme,
        hostname,
        port,
        path,
        status,
    })
}

/// The CRD's pattern for a redirect path: `^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|[%][0-9a-fA-F]{2})+$`
/// (unreserved, sub-delims, `:`, `@`, `/` and percent-encodings: what may stand in a path as is).
fn is_valid_path(path: &str) -> bool {
    let bytes = path.as_bytes();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = |j: usize| bytes.get(j).is_some_and(u8::is_ascii_hexdigit);
            if !(hex(i + 1) && hex(i + 2)) {
                return false;
            }
            i += 3;
            continue;
        }
        if !(b.is_ascii_alphanumeric() || b"-/._~!$&'()*+,;=:@".contains(&b)) {
            return false;
        }
        i += 1;
    }
    !path.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filters(yaml: &str) -> Vec<HttpRouteRulesFilters> {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn header_modifier_and_redirect_convert() {
        let (converted, problems) = convert_filters(&filters(
            "- type: RequestHeaderModifier\n  requestHeaderModifier:\n    set: [{name: X-Set, value: a b}]\n    add: [{name: X-Add, value: c}]\n    remove: [X-Remove]\n\
             - type: RequestRedirect\n  requestRedirect: {hostname: Example.ORG., statusCode: 301, port: 8443, scheme: https, path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}\n",
        ));
        assert_eq!(problems, Vec::<String>::new());
        let field = |name: &str, value: &str| HeaderField {
            name: name.to_owned(),
            value: value.to_owned(),
        };
        assert_eq!(
            converted.request_headers,
            HeaderModifier {
                set: vec![field("X-Set", "a b")],
                add: vec![field("X-Add", "c")],
                remove: vec!["X-Remove".to_owned()],
            }
        );
        assert_eq!(
            converted.redirect,
            Some(RequestRedirect {
                scheme: Some(RedirectScheme::Https),
                hostname: Some("example.org".to_owned()),
                port: Some(8443),
                path: Some(RedirectPath::ReplacePrefixMatch("/new".to_owned())),
                status: RedirectStatus::MovedPermanently,
            })
        );
    }

    #[test]
    fn what_cannot_be_honoured_is_named() {
        let cases = [
            (
                "- type: URLRewrite\n  urlRewrite: {hostname: a}\n",
                "filter type UrlRewrite is not supported",
            ),
            (
                "- type: ResponseHeaderModifier\n  responseHeaderModifier: {set: [{name: Transfer-Encoding, value: gzip}]}\n",
                "written by the gateway",
            ),
            (
                "- type: RequestMirror\n  requestMirror: {backendRef: {name: m, port: 80}}\n",
                "filter type RequestMirror is not supported",
            ),
            ("- type: RequestRedirect\n", "needs requestRedirect"),
            (
                "- type: RequestRedirect\n  requestRedirect: {statusCode: 304}\n",
                "statusCode: 304",
            ),
            (
                "- type: RequestRedirect\n  requestRedirect: {port: 70000}\n",
                "port: 70000",
            ),
            (
                "- type: RequestRedirect\n  requestRedirect: {hostname: \"*.example.com\"}\n",
                "wildcards",
            ),
            (
                "- type: RequestRedirect\n  requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: \"no-slash\"}}\n",
                "replaceFullPath",
            ),
            (
                "- type: RequestRedirect\n  requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: \"/a b\"}}\n",
                "replaceFullPath",
            ),
            (
                "- type: RequestHeaderModifier\n  requestHeaderModifier: {set: [{name: Content-Length, value: \"0\"}]}\n",
                "written by the gateway",
            ),
            (
                "- type: RequestHeaderModifier\n  requestHeaderModifier: {remove: [Host]}\n",
                "written by the gateway",
            ),
            (
                "- type: RequestHeaderModifier\n  requestHeaderModifier: {add: [{name: X-Forwarded-Client-Cert, value: forged}]}\n",
                "written by the gateway",
            ),
            (
                "- type: RequestHeaderModifier\n  requestHeaderModifier: {add: [{name: \"bad name\", value: v}]}\n",
                "not a header name",
            ),
            (
                "- type: RequestHeaderModifier\n  requestHeaderModifier: {add: [{name: X-A, value: \"a\\r\\nX-Injected: 1\"}]}\n",
                "not a valid header value",
            ),
            (
                "- type: RequestHeaderModifier\n  requestHeaderModifier: {}\n- type: RequestHeaderModifier\n  requestHeaderModifier: {}\n",
                "at most one",
            ),
        ];
        for (yaml, expected) in cases {
            let (_, problems) = convert_filters(&filters(yaml));
            assert!(
                problems.iter().any(|p| p.contains(expected)),
                "{yaml}: {problems:?}"
            );
        }
    }

    #[test]
    fn redirect_paths() {
        for ok in ["/", "/a/b", "/a%2Fb", "/~user/x.y-z_!$&'()*+,;=:@"] {
            assert!(is_valid_path(ok), "{ok}");
        }
        for bad in ["", "/a b", "/a%2", "/a%zz", "/a?b", "/a#b"] {
            assert!(!is_valid_path(bad), "{bad}");
        }
    }
}
