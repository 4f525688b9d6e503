//! The routing of the upstream conformance tests of profile GATEWAY-GRPC's Core (v1.6.1) on
//! real sockets: GRPCExactMethodMatching, GRPCRouteHeaderMatching,
//! GRPCRouteListenerHostnameMatching and GRPCRouteWeight, and GRPCRouteNamedRule
//! (GRPCRouteNamedRouteRule), on the upstream manifests (ports
//! moved to free ones) and the base manifests' Services `grpc-infra-backend-v1` to `-v3` as
//! written there (port 8080, `appProtocol: kubernetes.io/h2c`).
//!
//! Calls go as the suite's gRPC client sends them over plain HTTP/2 (prior knowledge): `POST`
//! to `/gateway_api_conformance.echo_basic.grpcecho.GrpcEcho/<method>`, `content-type:
//! application/grpc`, the metadata as lower-case header fields, `:authority` the gateway's
//! address unless the case names one, an empty message as the body. The backends stand for the
//! suite's gRPC echo servers as far as routing goes: each answers every call with its name. A
//! call that no route takes must get the gRPC status `UNIMPLEMENTED` (12) from the gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;

use support::conformance::{
    Ports, base_gateway, base_service, endpoint_slice, fixture, h2c_named_backend,
};
use support::*;

const SERVICE: &str = "gateway_api_conformance.echo_basic.grpcecho.GrpcEcho";
const BACKENDS: [&str; 3] = [
    "grpc-infra-backend-v1",
    "grpc-infra-backend-v2",
    "grpc-infra-backend-v3",
];
/// `UNIMPLEMENTED`, what the suite expects for a call no route takes.
const UNIMPLEMENTED: &str = "12";
/// The upstream weight test's number of calls per try (`utils/weight`).
const WEIGHT_CALLS: usize = 500;
/// The upstream weight test's tolerance: each backend's share within 5 points of its weight.
const WEIGHT_TOLERANCE: f64 = 0.05;

/// What a call got: a backend's answer, or the gateway's own gRPC status.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Backend(String),
    GrpcStatus(String),
}

fn backend(name: &str) -> Outcome {
    Outcome::Backend(name.to_owned())
}

fn unimplemented() -> Outcome {
    Outcome::GrpcStatus(UNIMPLEMENTED.to_owned())
}

/// One call: the method, the authority (None: the gateway's address), the metadata.
struct Call<'a> {
    method: &'a str,
    authority: Option<&'a str>,
    metadata: &'a [(&'a str, &'a str)],
}

/// A call of `method` with no authority override and no metadata.
const fn method(method: &'static str) -> Call<'static> {
    Call {
        method,
        authority: None,
        metadata: &[],
    }
}

const fn echo(metadata: &'static [(&'static str, &'static str)]) -> Call<'static> {
    Call {
        method: "Echo",
        authority: None,
        metadata,
    }
}

const fn to(authority: &'static str) -> Call<'static> {
    Call {
        method: "Echo",
        authority: Some(authority),
        metadata: &[],
    }
}

/// The gateway serving `docs` (their ports moved) and the three gRPC backend Services.
fn serve(docs: &[String], ports: &Ports) -> Gateway {
    let mut all: Vec<String> = docs.iter().map(|d| ports.apply(d)).collect();
    for name in BACKENDS {
        all.push(base_service(name));
        all.push(endpoint_slice(
            name,
            &[(None, h2c_named_backend(name).port())],
        ));
    }
    Gateway::start(desired(&all))
}

/// Makes `calls` to `port`, each on its own connection, and returns what each got.
fn make_calls(port: u16, calls: &[Call<'_>]) -> Vec<Outcome> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut outcomes = Vec::new();
        for call in calls {
            let outcome = tokio::time::timeout(PATIENCE, one_call(port, call))
                .await
                .unwrap();
            outcomes.push(outcome);
        }
        outcomes
    })
}

async fn one_call(port: u16, call: &Call<'_>) -> Outcome {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.unwrap();
    let address = format!("127.0.0.1:{port}");
    let mut request = http::Request::post(format!(
        "http://{}/{SERVICE}/{}",
        call.authority.unwrap_or(&address),
        call.method
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers");
    for (name, value) in call.metadata {
        request = request.header(name.to_ascii_lowercase(), *value);
    }
    let (response, mut body) = client
        .send_request(request.body(()).unwrap(), false)
        .unwrap();
    // An empty EchoRequest: uncompressed, length 0.
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .unwrap();
    let response = response.await.unwrap();
    let status = response.status().as_u16();
    let grpc_status = response
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_owned());
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        body.flow_control().release_capacity(chunk.len()).unwrap();
        bytes.extend_from_slice(&chunk);
    }
    let trailer_status = body
        .trailers()
        .await
        .unwrap()
        .and_then(|t| t.get("grpc-status").map(|v| v.to_str().unwrap().to_owned()));
    match grpc_status.or(trailer_status) {
        Some(code) => Outcome::GrpcStatus(code),
        None => {
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
            Outcome::Backend(String::from_utf8(bytes).unwrap())
        }
    }
}

#[track_caller]
fn check(port: u16, cases: &[(Call<'_>, Outcome)]) {
    let calls: Vec<Call<'_>> = cases
        .iter()
        .map(|(c, _)| Call {
            method: c.method,
            authority: c.authority,
            metadata: c.metadata,
        })
        .collect();
    let got = make_calls(port, &calls);
    for ((call, want), got) in cases.iter().zip(got) {
        assert_eq!(
            got, *want,
            "{} authority {:?} metadata {:?}",
            call.method, call.authority, call.metadata
        );
    }
}

/// The base Gateway `same-namespace` on a free port with `route_file`; its port.
fn on_same_namespace(route_file: &str) -> (Gateway, u16) {
    let port = free_port();
    let ports = Ports::new(&[(80, port)]);
    let gw = serve(
        &[base_gateway("same-namespace"), fixture(route_file)],
        &ports,
    );
    (gw, port)
}

#[test]
fn grpc_exact_method_matching() {
    let (_gw, port) = on_same_namespace("grpcroute-exact-method-matching.yaml");
    check(
        port,
        &[
            (method("Echo"), backend(BACKENDS[0])),
            (method("EchoTwo"), backend(BACKENDS[1])),
            (method("EchoThree"), unimplemented()),
        ],
    );
}

#[test]
fn grpcroute_header_matching() {
    let (_gw, port) = on_same_namespace("grpcroute-header-matching.yaml");
    let (v1, v2) = (backend(BACKENDS[0]), backend(BACKENDS[1]));
    check(
        port,
        &[
            (echo(&[("Version", "one")]), v1.clone()),
            (echo(&[("Version", "two")]), v2.clone()),
            (echo(&[("Version", "two"), ("Color", "orange")]), v1.clone()),
            (echo(&[("Version", "two"), ("Color", "blue")]), v2.clone()),
            (echo(&[("Color", "orange")]), unimplemented()),
            (echo(&[("Some-Other-Header", "one")]), unimplemented()),
            (echo(&[("Color", "blue")]), v1.clone()),
            (echo(&[("Color", "green")]), v1),
            (echo(&[("Color", "red")]), v2.clone()),
            (echo(&[("Color", "yellow")]), v2),
            (echo(&[("Color", "purple")]), unimplemented()),
        ],
    );
}

#[test]
fn grpcroute_listener_hostname_matching() {
    let port = free_port();
    let _gw = serve(
        &[fixture("grpcroute-listener-hostname-matching.yaml")],
        &Ports::new(&[(80, port)]),
    );
    let (v1, v2, v3) = (
        backend(BACKENDS[0]),
        backend(BACKENDS[1]),
        backend(BACKENDS[2]),
    );
    check(
        port,
        &[
            (to("bar.com"), v1),
            (to("foo.bar.com"), v2),
            (to("baz.bar.com"), v3.clone()),
            (to("boo.bar.com"), v3.clone()),
            (to("multiple.prefixes.bar.com"), v3.clone()),
            (to("multiple.prefixes.foo.com"), v3),
            (to("foo.com"), unimplemented()),
            (to("no.matching.host"), unimplemented()),
        ],
    );
}

#[test]
fn grpcroute_weight() {
    let (_gw, port) = on_same_namespace("grpcroute-weight.yaml");
    let calls: Vec<Call<'_>> = (0..WEIGHT_CALLS).map(|_| echo(&[])).collect();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for outcome in make_calls(port, &calls) {
        let Outcome::Backend(name) = outcome else {
            panic!("expected OK from a backend, got {outcome:?}");
        };
        *counts.entry(name).or_default() += 1;
    }
    for (name, weight) in BACKENDS.iter().zip([0.7, 0.3, 0.0]) {
        let count = counts.get(*name).copied().unwrap_or_default();
        #[allow(clippy::cast_precision_loss)] // counts of at most 500
        let share = count as f64 / WEIGHT_CALLS as f64;
        if weight == 0.0 {
            assert_eq!(count, 0, "{name}: {counts:?}");
        } else {
            assert!(
                (share - weight).abs() <= WEIGHT_TOLERANCE,
                "{name}: share {share}, weight {weight}: {counts:?}"
            );
        }
    }
}

#[test]
fn grpcroute_named_rule() {
    let (_gw, port) = on_same_namespace("grpcroute-named-rule.yaml");
    check(
        port,
        &[
            (method("Echo"), backend(BACKENDS[0])),
            (method("EchoTwo"), backend(BACKENDS[1])),
        ],
    );
}
