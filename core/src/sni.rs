//! Picking a port's listener for a name (spec §6): the SNI of a ClientHello, and the Host of a
//! request (for the 421 rule). Exact hostname first, then the most specific wildcard, then the
//! listener without a hostname; no name at all: the listener without a hostname.
//!
//! Lookups are hash probes, one per label of the name, so a port with ten thousand hostnames
//! resolves as fast as one with ten.

use std::collections::HashMap;

use crate::hostname;

#[derive(Debug, Clone, Default)]
pub struct HostResolver {
    exact: HashMap<String, usize>,
    /// Keyed by what follows `*.`, e.g. `example.com` for `*.example.com`.
    wildcard: HashMap<String, usize>,
    catch_all: Option<usize>,
}

impl HostResolver {
    /// `hostnames[i]` is listener `i`'s hostname. When two listeners claim the same name the
    /// first keeps it (translate already reported the conflict).
    pub fn new<'a>(hostnames: impl IntoIterator<Item = Option<&'a str>>) -> Self {
        let mut resolver = HostResolver::default();
        for (index, name) in hostnames.into_iter().enumerate() {
            match name.map(hostname::normalize) {
                None => {
                    resolver.catch_all.get_or_insert(index);
                }
                Some(name) => match name.strip_prefix("*.") {
                    Some(suffix) => {
                        resolver.wildcard.entry(suffix.to_owned()).or_insert(index);
                    }
                    None => {
                        resolver.exact.entry(name).or_insert(index);
                    }
                },
            }
        }
        resolver
    }

    /// The listener for `name` (lower-case, no trailing dot, no port), or for a client that
    /// sent no name.
    pub fn resolve(&self, name: Option<&str>) -> Option<usize> {
        let Some(name) = name else {
            return self.catch_all;
        };
        if let Some(&i) = self.exact.get(name) {
            return Some(i);
        }
        if !self.wildcard.is_empty() {
            // Longest suffix first: the most specific wildcard wins. The first label is never
            // a suffix, so `*.example.com` does not match `example.com`.
            let mut rest = name;
            while let Some(dot) = rest.find('.') {
                rest = rest.get(dot + 1..).unwrap_or_default();
                if let Some(&i) = self.wildcard.get(rest) {
                    return Some(i);
                }
            }
        }
        self.catch_all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_then_most_specific_wildcard_then_catch_all() {
        let r = HostResolver::new([
            Some("*.example.com"),
            Some("a.example.com"),
            Some("*.b.example.com"),
            None,
        ]);
        assert_eq!(r.resolve(Some("a.example.com")), Some(1));
        assert_eq!(r.resolve(Some("x.b.example.com")), Some(2));
        assert_eq!(r.resolve(Some("x.y.b.example.com")), Some(2));
        assert_eq!(r.resolve(Some("z.example.com")), Some(0));
        assert_eq!(r.resolve(Some("example.com")), Some(3));
        assert_eq!(r.resolve(Some("other.org")), Some(3));
        assert_eq!(r.resolve(None), Some(3));
    }

    #[test]
    fn no_catch_all_refuses_unknown_names() {
        let r = HostResolver::new([Some("example.com"), Some("*.example.com")]);
        assert_eq!(r.resolve(None), None);
        assert_eq!(r.resolve(Some("example.org")), None);
        assert_eq!(r.resolve(Some("example.com")), Some(0));
        assert_eq!(r.resolve(Some("www.example.com")), Some(1));
        assert_eq!(r.resolve(Some("")), None);
        assert_eq!(r.resolve(Some(".")), None);
    }

    #[test]
    fn configured_names_are_normalized() {
        let r = HostResolver::new([Some("Example.COM.")]);
        assert_eq!(r.resolve(Some("example.com")), Some(0));
    }
}
