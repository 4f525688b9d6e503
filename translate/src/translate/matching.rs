//! Small predicates: hostname syntax, namespace label selectors, route-to-listener hostname
//! intersection (the semantics themselves live in `portcullis_core::hostname`).

use std::collections::BTreeMap;

use gateway_api::experimental::gateways::GatewayListenersAllowedRoutesNamespacesSelector;
use portcullis_core::hostname;

use crate::store::ObjectStore;

/// The label every namespace carries with its own name (Kubernetes sets it since v1.22).
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

const MAX_HOSTNAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// Whether `name` is a hostname the Gateway API accepts for listeners and routes: RFC 1123
/// labels, optionally prefixed by `*.` (the CRD's pattern). Expects a normalized name.
pub(crate) fn is_valid_hostname(name: &str) -> bool {
    let rest = name.strip_prefix("*.").unwrap_or(name);
    !rest.is_empty()
        && name.len() <= MAX_HOSTNAME_LEN
        && rest.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= MAX_LABEL_LEN
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// The labels of `namespace`, including `kubernetes.io/metadata.name` even when the store has
/// no Namespace object for it (a manifest folder often has none).
pub(crate) fn namespace_labels(store: &ObjectStore, namespace: &str) -> BTreeMap<String, String> {
    let mut labels = store
        .namespaces
        .get(namespace)
        .and_then(|ns| ns.metadata.labels.clone())
        .unwrap_or_default();
    labels.insert(NAMESPACE_NAME_LABEL.to_owned(), namespace.to_owned());
    labels
}

/// Kubernetes label-selector semantics: every `matchLabels` entry and every `matchExpressions`
/// requirement must hold; an empty selector matches everything; an unknown operator matches
/// nothing (the API server would have refused it).
pub(crate) fn selector_matches(
    selector: &GatewayListenersAllowedRoutesNamespacesSelector,
    labels: &BTreeMap<String, String>,
) -> bool {
    let labels_match = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions_match = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    labels_match && expressions_match
}

/// The route hostnames a listener takes: `Some(empty)` when the route names none (it takes
/// every host the listener accepts), `None` when none of them intersect the listener's.
pub(crate) fn hostnames_on_listener(
    listener_hostname: Option<&str>,
    route_hostnames: &[String],
) -> Option<Vec<String>> {
    if route_hostnames.is_empty() {
        return Some(Vec::new());
    }
    let mut taken: Vec<String> = Vec::new();
    for route_hostname in route_hostnames {
        if let Some(h) = hostname::intersect(listener_hostname, route_hostname)
            && !taken.contains(&h)
        {
            taken.push(h);
        }
    }
    (!taken.is_empty()).then_some(taken)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_api::experimental::gateways::GatewayListenersAllowedRoutesNamespacesSelectorMatchExpressions as Expr;

    #[test]
    fn hostname_syntax() {
        for ok in ["a", "example.com", "*.example.com", "a-b.c0", "x.y.z"] {
            assert!(is_valid_hostname(ok), "{ok}");
        }
        for bad in [
            "", "*", "*.", "a..b", "-a.com", "a-.com", "a_b.com", "*.*.com", "a.*.com",
        ] {
            assert!(!is_valid_hostname(bad), "{bad}");
        }
        assert!(!is_valid_hostname(&"a".repeat(64)));
    }

    #[test]
    fn selectors() {
        let labels: BTreeMap<String, String> =
            [("team".to_owned(), "a".to_owned())].into_iter().collect();
        let selector = |labels: Option<Vec<(&str, &str)>>, exprs: Option<Vec<Expr>>| {
            GatewayListenersAllowedRoutesNamespacesSelector {
                match_labels: labels.map(|l| {
                    l.into_iter()
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect()
                }),
                match_expressions: exprs,
            }
        };
        let expr = |key: &str, operator: &str, values: &[&str]| Expr {
            key: key.to_owned(),
            operator: operator.to_owned(),
            values: Some(values.iter().map(|v| (*v).to_owned()).collect()),
        };
        assert!(selector_matches(&selector(None, None), &labels));
        assert!(selector_matches(
            &selector(Some(vec![("team", "a")]), None),
            &labels
        ));
        assert!(!selector_matches(
            &selector(Some(vec![("team", "b")]), None),
            &labels
        ));
        assert!(selector_matches(
            &selector(None, Some(vec![expr("team", "In", &["a", "b"])])),
            &labels
        ));
        assert!(!selector_matches(
            &selector(None, Some(vec![expr("team", "NotIn", &["a"])])),
            &labels
        ));
        assert!(selector_matches(
            &selector(None, Some(vec![expr("x", "DoesNotExist", &[])])),
            &labels
        ));
        assert!(selector_matches(
            &selector(None, Some(vec![expr("team", "Exists", &[])])),
            &labels
        ));
        assert!(!selector_matches(
            &selector(None, Some(vec![expr("team", "Bogus", &[])])),
            &labels
        ));
    }

    #[test]
    fn route_hostnames_on_listeners() {
        let route = vec!["a.example.com".to_owned(), "*.example.com".to_owned()];
        assert_eq!(
            hostnames_on_listener(Some("a.example.com"), &route),
            Some(vec!["a.example.com".to_owned()])
        );
        assert_eq!(hostnames_on_listener(Some("b.example.org"), &route), None);
        assert_eq!(hostnames_on_listener(None, &route), Some(route.clone()));
        assert_eq!(hostnames_on_listener(Some("x.com"), &[]), Some(vec![]));
    }
}
