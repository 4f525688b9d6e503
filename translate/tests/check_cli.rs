//! `check::run` on folders of manifests: exit codes, stdout YAML, stderr messages.

// Test-crate helpers outside #[test] fns: a failed setup step stops the test with its message.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};

use portcullis_translate::check::{EXIT_BAD_MANIFESTS, EXIT_OK, run, run_at};
use serde::Deserialize;
use support::*;

/// A fresh, empty folder for one test under Cargo's per-target temporary folder.
fn scratch_dir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("check-cli")
        .join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch folder");
    dir
}

/// The user guide's perPort step as a folder: the guide's YAML plus the Secret and ConfigMap
/// the guide's openssl and kubectl commands create, as manifests.
fn guide_folder(test: &str) -> PathBuf {
    let dir = scratch_dir(test);
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/user-guide");
    for file in ["httpbin.yaml", "httproute.yaml", "gateway-perport.yaml"] {
        std::fs::copy(fixtures.join(file), dir.join(file)).expect("copy fixture");
    }
    let ca = TestCa::new("Test CA");
    let server = ca.leaf(&["example.com", "*.example.com"]);
    let indent = |pem: &str| {
        pem.lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    let secrets = format!(
        "apiVersion: v1\nkind: Secret\ntype: kubernetes.io/tls\nmetadata:\n  name: https-cert\n  \
         namespace: agentgateway-system\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}---\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ca-cert\n  namespace: \
         agentgateway-system\ndata:\n  ca.crt: |\n{}",
        indent(&server.cert_pem),
        indent(&server.key_pem),
        indent(&ca.cert_pem),
    );
    std::fs::write(dir.join("certs.yml"), secrets).expect("write certs");
    // Not a manifest: ignored, as kubectl ignores it.
    std::fs::write(dir.join("README.md"), "# notes\n").expect("write readme");
    // Sub-folders are not read (kubectl apply -f DIR without -R).
    std::fs::create_dir_all(dir.join("nested")).expect("nested");
    std::fs::write(dir.join("nested/broken.yaml"), "kind: [").expect("write nested");
    dir
}

fn run_check(dir: &Path, class: Option<&str>) -> (u8, String, String) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let code = run_at(dir, class, fixed_now(), &mut out, &mut err);
    (
        code,
        String::from_utf8(out).expect("utf-8 stdout"),
        String::from_utf8(err).expect("utf-8 stderr"),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    #[serde(rename = "apiVersion")]
    api_version: String,
    kind: String,
    metadata: Metadata,
    status: serde_yaml::Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    name: String,
    namespace: String,
}

#[test]
fn a_guide_folder_prints_one_document_per_gateway_and_route() {
    let dir = guide_folder("guide");
    let (code, out, err) = run_check(&dir, Some("agentgateway"));
    assert_eq!(code, EXIT_OK, "{err}");
    let documents: Vec<Document> = serde_yaml::Deserializer::from_str(&out)
        .map(|d| Document::deserialize(d).expect("each document has the status shape"))
        .collect();
    let names: Vec<(&str, &str, &str)> = documents
        .iter()
        .map(|d| {
            (
                d.kind.as_str(),
                d.metadata.namespace.as_str(),
                d.metadata.name.as_str(),
            )
        })
        .collect();
    assert_eq!(
        names,
        vec![
            ("Gateway", "agentgateway-system", "mtls"),
            ("HTTPRoute", "httpbin", "httpbin-https")
        ]
    );
    assert!(
        documents
            .iter()
            .all(|d| d.api_version == "gateway.networking.k8s.io/v1")
    );
    // The typed status parses back.
    let gateway: gateway_api::experimental::gateways::GatewayStatus =
        serde_yaml::from_value(documents[0].status.clone()).expect("GatewayStatus");
    assert_condition(
        gateway_conditions(&gateway),
        "InsecureFrontendValidationMode",
        true,
        "ConfigurationChanged",
    );
    assert!(err.contains("read 8 object(s) from 4 file(s)"), "{err}");
    assert!(err.contains("apps/v1 Deployment: 1"), "{err}");
    assert!(err.contains("port 8444 HTTPS"), "{err}");
    assert!(err.contains("AllowInsecureFallback"), "{err}");
}

#[test]
fn the_real_clock_entry_point_works_too() {
    let dir = guide_folder("clock");
    let mut out = Vec::new();
    let mut err = Vec::new();
    assert_eq!(run(&dir, Some("agentgateway"), &mut out, &mut err), EXIT_OK);
    assert!(!out.is_empty());
}

#[test]
fn without_the_class_nothing_is_served_but_the_run_succeeds() {
    let dir = guide_folder("no-class");
    let (code, out, err) = run_check(&dir, None);
    assert_eq!(code, EXIT_OK);
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("gateways served: 0 (ignored, not ours: 1)"),
        "{err}"
    );
}

#[test]
fn invalid_references_are_statuses_not_failures() {
    let dir = guide_folder("invalid-refs");
    std::fs::remove_file(dir.join("certs.yml")).expect("remove certs");
    let (code, out, err) = run_check(&dir, Some("agentgateway"));
    assert_eq!(code, EXIT_OK);
    assert!(out.contains("reason: InvalidCertificateRef"), "{out}");
    assert!(out.contains("reason: NoValidCACertificate"), "{out}");
    assert!(err.contains("0/2 listener(s) programmed"), "{err}");
}

#[test]
fn a_broken_yaml_file_exits_2_naming_file_and_document() {
    let dir = guide_folder("broken");
    std::fs::write(
        dir.join("zz-broken.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: ok}\n---\nkind: [unclosed\n",
    )
    .expect("write");
    let (code, out, err) = run_check(&dir, Some("agentgateway"));
    assert_eq!(code, EXIT_BAD_MANIFESTS);
    assert!(out.is_empty());
    assert!(
        err.contains("zz-broken.yaml, document 2: not valid YAML"),
        "{err}"
    );
}

#[test]
fn a_bad_field_exits_2_naming_the_field() {
    let dir = guide_folder("bad-field");
    std::fs::write(
        dir.join("zz-bad.json"),
        r#"{"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "g"},
            "spec": {"gatewayClassName": "c", "listeners": [{"name": "l", "port": "80", "protocol": "HTTP"}]}}"#,
    )
    .expect("write");
    let (code, _, err) = run_check(&dir, None);
    assert_eq!(code, EXIT_BAD_MANIFESTS);
    assert!(
        err.contains("zz-bad.json, document 1: Gateway: field `spec.listeners[0].port`"),
        "{err}"
    );
}

#[test]
fn a_missing_folder_exits_2() {
    let dir = scratch_dir("missing").join("does-not-exist");
    let (code, out, err) = run_check(&dir, None);
    assert_eq!(code, EXIT_BAD_MANIFESTS);
    assert!(out.is_empty());
    assert!(
        err.contains("does-not-exist: no such file or folder"),
        "{err}"
    );
}

#[test]
fn a_single_file_can_be_checked() {
    let dir = guide_folder("single-file");
    let (code, out, _) = run_check(&dir.join("gateway-perport.yaml"), Some("agentgateway"));
    assert_eq!(code, EXIT_OK);
    // Without the Secret, the ConfigMap and the route: the Gateway alone, with bad refs.
    let kinds: Vec<String> = serde_yaml::Deserializer::from_str(&out)
        .map(|d| Document::deserialize(d).expect("document").kind)
        .collect();
    assert_eq!(kinds, vec!["Gateway".to_owned()], "{out}");
    assert!(out.contains("reason: InvalidCertificateRef"), "{out}");
}

#[test]
fn grpc_routes_are_reported_like_http_routes() {
    let dir = guide_folder("grpc");
    // The guide's HTTPRoute serves example.com; a younger GRPCRoute without hostnames (every
    // host) on the same listeners is refused (an HTTPRoute and a GRPCRoute may not share one).
    std::fs::write(
        dir.join("grpcroute.yaml"),
        "apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: echo, namespace: httpbin, creationTimestamp: '2030-01-01T00:00:00Z'}
spec:
  parentRefs: [{name: mtls, namespace: agentgateway-system}]
  rules: [{matches: [{method: {service: pkg.Echo}}]}]
",
    )
    .expect("write");
    let (code, out, err) = run_check(&dir, Some("agentgateway"));
    assert_eq!(code, EXIT_OK, "{err}");
    let documents: Vec<Document> = serde_yaml::Deserializer::from_str(&out)
        .map(|d| Document::deserialize(d).expect("each document has the status shape"))
        .collect();
    let kinds: Vec<&str> = documents.iter().map(|d| d.kind.as_str()).collect();
    assert_eq!(kinds, vec!["Gateway", "HTTPRoute", "GRPCRoute"]);
    let status: gateway_api::experimental::grpcroutes::GrpcRouteStatus =
        serde_yaml::from_value(documents[2].status.clone()).expect("GRPCRouteStatus");
    assert_condition(
        &status.parents[0].conditions,
        "Accepted",
        false,
        "HostnameConflict",
    );
    assert!(
        err.contains("routes: 2 with our parents, 1 parent attachment(s) accepted"),
        "{err}"
    );
    assert!(
        err.contains("GRPCRoute httpbin/echo -> mtls: Accepted=False HostnameConflict"),
        "{err}"
    );
}
