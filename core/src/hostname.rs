//! Gateway API hostname semantics: listener and route hostnames, wildcards, intersection and
//! specificity. Shared by `translate` (route attachment) and the data plane (SNI and Host).
//!
//! A wildcard `*.example.com` matches one or more labels in front of `example.com`
//! (`a.example.com`, `a.b.example.com`), never `example.com` itself. Names compare
//! case-insensitively; callers pass names without a port and without a trailing dot.

use std::cmp::Ordering;

/// Whether `pattern` (exact or `*.` wildcard) matches the concrete `host`.
pub fn matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            host.len() > suffix.len() + 1
                && host
                    .get(host.len() - suffix.len()..)
                    .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix))
                && host.as_bytes().get(host.len() - suffix.len() - 1) == Some(&b'.')
        }
        None => pattern.eq_ignore_ascii_case(host),
    }
}

/// The hostnames both a listener and a route accept, as the Gateway API defines it; `None`
/// when they do not intersect. A listener without a hostname accepts the route's hostname.
pub fn intersect(listener: Option<&str>, route: &str) -> Option<String> {
    let Some(listener) = listener else {
        return Some(route.to_owned());
    };
    match (is_wildcard(listener), is_wildcard(route)) {
        (false, false) => listener
            .eq_ignore_ascii_case(route)
            .then(|| route.to_owned()),
        (true, false) => matches(listener, route).then(|| route.to_owned()),
        (false, true) => matches(route, listener).then(|| listener.to_owned()),
        (true, true) => {
            // The narrower wildcard is the intersection, when one contains the other.
            let l = &listener[1..];
            let r = &route[1..];
            if ends_with_ignore_case(r, l) {
                Some(route.to_owned())
            } else if ends_with_ignore_case(l, r) {
                Some(listener.to_owned())
            } else {
                None
            }
        }
    }
}

pub fn is_wildcard(pattern: &str) -> bool {
    pattern.starts_with("*.")
}

/// Orders patterns from most to least specific for the same host: an exact name first, then
/// wildcards with more labels right of `*`, then "no hostname" (`None`).
pub fn specificity_order(a: Option<&str>, b: Option<&str>) -> Ordering {
    specificity(b).cmp(&specificity(a))
}

/// A rank where larger is more specific: exact names beat every wildcard.
fn specificity(pattern: Option<&str>) -> (u8, usize) {
    match pattern {
        None => (0, 0),
        Some(p) if is_wildcard(p) => (1, p.split('.').count() - 1),
        Some(p) => (2, p.split('.').count()),
    }
}

fn ends_with_ignore_case(s: &str, suffix: &str) -> bool {
    s.len() >= suffix.len()
        && s.get(s.len() - suffix.len()..)
            .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix))
}

/// Lower-cases a hostname and strips one trailing dot, the form every lookup uses.
pub fn normalize(host: &str) -> String {
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_matches_one_or_more_labels_but_not_the_apex() {
        assert!(matches("*.example.com", "a.example.com"));
        assert!(matches("*.example.com", "a.b.example.com"));
        assert!(matches("*.example.com", "A.EXAMPLE.com"));
        assert!(!matches("*.example.com", "example.com"));
        assert!(!matches("*.example.com", "aexample.com"));
        assert!(!matches("*.example.com", ".example.com"));
        assert!(!matches("*.example.com", "a.example.org"));
    }

    #[test]
    fn exact_matches_case_insensitively() {
        assert!(matches("example.com", "EXAMPLE.COM"));
        assert!(!matches("example.com", "a.example.com"));
    }

    #[test]
    fn intersection_follows_the_gateway_api() {
        assert_eq!(intersect(None, "a.com").as_deref(), Some("a.com"));
        assert_eq!(intersect(Some("a.com"), "a.com").as_deref(), Some("a.com"));
        assert_eq!(intersect(Some("a.com"), "b.com"), None);
        assert_eq!(
            intersect(Some("*.example.com"), "foo.example.com").as_deref(),
            Some("foo.example.com")
        );
        assert_eq!(
            intersect(Some("foo.example.com"), "*.example.com").as_deref(),
            Some("foo.example.com")
        );
        assert_eq!(
            intersect(Some("*.example.com"), "*.foo.example.com").as_deref(),
            Some("*.foo.example.com")
        );
        assert_eq!(
            intersect(Some("*.foo.example.com"), "*.example.com").as_deref(),
            Some("*.foo.example.com")
        );
        assert_eq!(intersect(Some("*.example.com"), "*.example.org"), None);
        assert_eq!(intersect(Some("*.example.com"), "example.com"), None);
    }

    #[test]
    fn exact_beats_wildcards_and_longer_wildcards_beat_shorter() {
        let mut v = vec![
            None,
            Some("*.com"),
            Some("a.b.example.com"),
            Some("*.example.com"),
            Some("*.b.example.com"),
        ];
        v.sort_by(|a, b| specificity_order(*a, *b));
        assert_eq!(
            v,
            vec![
                Some("a.b.example.com"),
                Some("*.b.example.com"),
                Some("*.example.com"),
                Some("*.com"),
                None
            ]
        );
    }
}
