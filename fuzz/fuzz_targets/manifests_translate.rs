//! Manifests: arbitrary text read as a multi-document YAML file (`manifests::load_text`), the
//! objects translated (`translate`) and the desired config compiled (`compile`), as
//! `portcullis serve --manifests` does on every change of the folder.
//!
//! Invariants: no panic at any stage; translate is deterministic and (one process serving every
//! Gateway) keeps the desired config's invariants (those of
//! translate/tests/translate_never_panics.rs, which generates object sets where this target
//! mutates text); statuses render; compile accounts for every listener (built, or reported as an
//! error) and resolves each built listener's own hostname to a listener of that hostname.

#![no_main]

use std::collections::BTreeSet;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use portcullis_translate::check::{self, render_statuses};
use portcullis_translate::manifests::{LoadedManifests, load_text};
use portcullis_translate::{TranslateOptions, Translation, translate};
use portcullis_core::compile::compile;
use portcullis_core::desired::{ClientValidation, PortProtocol};
use portcullis_core::hostname;

/// The user guide's `gatewayClassName`, served as `portcullis check --gateway-class` would.
const GUIDE_GATEWAY_CLASS: &str = "agentgateway";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut loaded = LoadedManifests::default();
    // A document that cannot be read stops the load; the objects before it still count, which
    // only widens what translate sees.
    let _ = load_text(Path::new("fuzz.yaml"), text, false, &mut loaded);

    let mut options = TranslateOptions::new(check::now());
    options.extra_gateway_class = Some(GUIDE_GATEWAY_CLASS.to_owned());
    // Kubernetes mode (a data plane per Gateway, so no port conflicts between Gateways): the
    // controller splits this per Gateway, so only determinism and rendering apply.
    let mut kube_options = options.clone();
    kube_options.separate_data_planes = true;
    let kube = translate(&loaded.store, &kube_options);
    assert_eq!(
        kube,
        translate(&loaded.store, &kube_options),
        "not deterministic"
    );
    assert!(render_statuses(&kube).is_ok());

    // File mode: what `serve --manifests` compiles.
    let translation = translate(&loaded.store, &options);
    assert_eq!(
        translation,
        translate(&loaded.store, &options),
        "not deterministic"
    );
    check_translation(&translation);
    let desired = translation.desired;
    let snapshot = compile(desired.clone(), None, 1);
    assert_eq!(snapshot.ports.len(), desired.ports.len());
    for (compiled, port) in snapshot.ports.iter().zip(&desired.ports) {
        assert_eq!(compiled.port, port.port);
        let errors = snapshot
            .errors
            .iter()
            .filter(|e| e.port == port.port)
            .count();
        assert_eq!(
            compiled.listeners.len() + errors,
            port.listeners.len(),
            "listeners lost without an error"
        );
        for listener in &compiled.listeners {
            assert_eq!(
                listener.tls.is_some(),
                compiled.protocol == PortProtocol::Https
            );
            let Some(name) = listener.hostname.as_deref() else {
                continue;
            };
            if name.starts_with("*.") {
                continue;
            }
            let found = compiled
                .hosts
                .resolve(Some(&hostname::normalize(name)))
                .and_then(|i| compiled.listeners.get(i))
                .and_then(|l| l.hostname.as_deref());
            assert_eq!(found, Some(name), "a listener's own hostname is not its");
        }
    }
});

/// The desired config's invariants, as in translate_never_panics.rs.
fn check_translation(t: &Translation) {
    let ports: Vec<u16> = t.desired.ports.iter().map(|p| p.port).collect();
    let mut sorted = ports.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(ports, sorted, "ports not sorted and unique");
    for p in &t.desired.ports {
        assert_ne!(p.port, 0);
        let status = t
            .gateway_status(&p.gateway)
            .expect("a served port's Gateway has a status");
        assert!(!p.listeners.is_empty());
        let names: BTreeSet<&str> = p.listeners.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names.len(), p.listeners.len(), "listener names repeat");
        for l in &p.listeners {
            assert_eq!(l.tls.is_some(), p.protocol == PortProtocol::Https);
            if matches!(p.client_validation, ClientValidation::RefuseAll { .. }) {
                assert!(l.routes.is_empty());
            } else {
                let attached = status
                    .listeners
                    .iter()
                    .flatten()
                    .find(|s| s.name == l.name)
                    .map(|s| s.attached_routes);
                assert_eq!(attached, i32::try_from(l.routes.len()).ok());
            }
        }
        if p.protocol == PortProtocol::Http {
            assert_eq!(p.client_validation, ClientValidation::NotRequested);
        }
        if let ClientValidation::Verify { trust_anchors, .. } = &p.client_validation {
            assert!(!trust_anchors.is_empty());
        }
    }
    let gateway_conditions = t.gateway_statuses.iter().flat_map(|(_, s)| {
        s.conditions
            .iter()
            .flatten()
            .chain(s.listeners.iter().flatten().flat_map(|l| &l.conditions))
    });
    let route_conditions = t
        .route_statuses
        .iter()
        .flat_map(|(_, s)| s.parents.iter().flat_map(|p| &p.conditions));
    for c in gateway_conditions.chain(route_conditions) {
        assert!(c.status == "True" || c.status == "False");
        assert!(!c.reason.is_empty() && !c.type_.is_empty());
        assert!(c.observed_generation.is_some());
    }
    for (_, s) in &t.route_statuses {
        assert!(!s.parents.is_empty());
    }
    assert!(render_statuses(t).is_ok());
}
