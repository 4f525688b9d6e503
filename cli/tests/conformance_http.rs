//! The traffic of the upstream conformance tests of HTTPRouteQueryParamMatching,
//! HTTPRouteMethodMatching, HTTPRouteNamedRule (HTTPRouteNamedRouteRule),
//! GatewayHTTPListenerIsolation and HTTPRouteListenerPortMatching (HTTPRouteParentRefPort), v1.6.1, on real sockets: the upstream manifests with their ports
//! moved to free ones, and each upstream case (request, then the backend that must answer or
//! the status). Their statuses are checked in `translate/tests/conformance_statuses.rs`.
//!
//! Requests are sent as the suite's Go client sends them: HTTP/1.1, `Host` the gateway's
//! address unless the case names one, `Content-Length: 0` on a POST, PUT or PATCH without a
//! body.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::TcpStream;

use support::conformance::{Ports, base_gateway, fixture, infra_backends};
use support::*;

/// What a case expects: a 200 from the named backend, or the gateway's own status.
#[derive(Debug, Clone, Copy)]
enum Expect {
    Backend(&'static str),
    Status(u16),
}

use Expect::{Backend, Status};

const V1: Expect = Backend("infra-backend-v1");
const V2: Expect = Backend("infra-backend-v2");
const V3: Expect = Backend("infra-backend-v3");
const NOT_FOUND: Expect = Status(404);

/// One upstream `ExpectedResponse`.
#[derive(Debug, Clone, Copy)]
struct Case {
    method: &'static str,
    host: Option<&'static str>,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    expect: Expect,
}

const fn get(path: &'static str, expect: Expect) -> Case {
    Case {
        method: "GET",
        host: None,
        path,
        headers: &[],
        expect,
    }
}

const fn get_with(
    headers: &'static [(&'static str, &'static str)],
    path: &'static str,
    expect: Expect,
) -> Case {
    Case {
        method: "GET",
        host: None,
        path,
        headers,
        expect,
    }
}

const fn method(
    method: &'static str,
    headers: &'static [(&'static str, &'static str)],
    path: &'static str,
    expect: Expect,
) -> Case {
    Case {
        method,
        host: None,
        path,
        headers,
        expect,
    }
}

const fn host(host: &'static str, path: &'static str, expect: Expect) -> Case {
    Case {
        method: "GET",
        host: Some(host),
        path,
        headers: &[],
        expect,
    }
}

/// Sends `case` to `port` on a new connection (the suite disables keep-alive) and checks the
/// answer.
#[track_caller]
fn check(port: u16, case: &Case) {
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut http = Http::new(tcp);
    let address = format!("127.0.0.1:{port}");
    let mut request = format!(
        "{} {} HTTP/1.1\r\nHost: {}\r\n",
        case.method,
        case.path,
        case.host.unwrap_or(&address)
    );
    for (name, value) in case.headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if matches!(case.method, "POST" | "PUT" | "PATCH") {
        request.push_str("Content-Length: 0\r\n");
    }
    request.push_str("\r\n");
    http.send(request.as_bytes()).unwrap();
    let response = if case.method == "HEAD" {
        http.read_head_response()
    } else {
        http.read_response()
    }
    .unwrap_or_else(|e| panic!("{case:?}: {e}"));
    match case.expect {
        Backend(name) => {
            assert_eq!(response.status, 200, "{case:?}: {}", response.body_text());
            assert_eq!(response.body_text(), name, "{case:?}");
        }
        Status(status) => assert_eq!(response.status, status, "{case:?}"),
    }
}

/// The gateway serving `docs` (upstream manifests) with their ports moved, and the suite's
/// infra backends.
fn serve(docs: &[String], ports: &Ports) -> Gateway {
    let mut docs: Vec<String> = docs.iter().map(|d| ports.apply(d)).collect();
    docs.extend(infra_backends(ports));
    Gateway::start(desired(&docs))
}

/// A route file attached to the base Gateway `same-namespace` (one HTTP listener, port 80).
fn on_same_namespace(route_file: &str, cases: &[Case]) {
    let port = free_port();
    let ports = Ports::new(&[(80, port)]);
    let _gw = serve(
        &[base_gateway("same-namespace"), fixture(route_file)],
        &ports,
    );
    for case in cases {
        check(port, case);
    }
}

#[test]
fn httproute_query_param_matching() {
    on_same_namespace(
        "httproute-query-param-matching.yaml",
        &[
            get("/?animal=whale", V1),
            get("/?animal=dolphin", V2),
            get("/?animal=dolphin&color=blue", V3),
            get("/?ANIMAL=Whale", V3),
            get("/?animal=whale&otherparam=irrelevant", V1),
            get("/?animal=dolphin&color=yellow", V2),
            get("/?color=blue", NOT_FOUND),
            get("/?animal=dog", NOT_FOUND),
            get("/?animal=whaledolphin", NOT_FOUND),
            get("/", NOT_FOUND),
            // Combinations of query param matching with other core matches.
            get("/path1?animal=whale", V1),
            get_with(&[("version", "one")], "/?animal=whale", V2),
            get_with(&[("version", "two")], "/path2?animal=whale", V3),
            // Matches ORed together match when only one of them is used.
            get("/path3?animal=shark", V1),
            get_with(&[("version", "three")], "/path4?animal=kraken", V1),
            // Match types ANDed together do not match on a subset.
            get("/?animal=shark", NOT_FOUND),
            get("/path4?animal=kraken", NOT_FOUND),
            // Precedence.
            get("/path5?animal=hydra", V1),
            get_with(&[("version", "four")], "/?animal=hydra", V3),
        ],
    );
}

#[test]
fn httproute_method_matching() {
    on_same_namespace(
        "httproute-method-matching.yaml",
        &[
            method("POST", &[], "/", V1),
            method("GET", &[], "/", V2),
            method("HEAD", &[], "/", NOT_FOUND),
            // Combinations with core match types.
            method("GET", &[], "/path1", V1),
            method("PUT", &[("version", "one")], "/", V2),
            method("POST", &[("version", "two")], "/path2", V3),
            // Matches ORed together match when only one of them is used.
            method("PATCH", &[], "/path3", V1),
            method("DELETE", &[("version", "three")], "/path4", V1),
            // Match types ANDed together do not match on a subset.
            method("PUT", &[], "/", NOT_FOUND),
            method("DELETE", &[], "/path4", NOT_FOUND),
            // Precedence.
            method("PATCH", &[], "/path5", V1),
            method("PATCH", &[("version", "four")], "/", V2),
        ],
    );
}

/// Both Gateways of the upstream test get the same cases.
const LISTENER_ISOLATION: &[Case] = &[
    // The empty-hostname listener.
    host("bar.com", "/empty-hostname", V1),
    host("bar.com", "/wildcard-example-com", NOT_FOUND),
    host("bar.com", "/wildcard-foo-example-com", NOT_FOUND),
    host("bar.com", "/abc-foo-example-com", NOT_FOUND),
    // The wildcard-example-com listener.
    host("bar.example.com", "/empty-hostname", NOT_FOUND),
    host("bar.example.com", "/wildcard-example-com", V1),
    host("bar.example.com", "/wildcard-foo-example-com", NOT_FOUND),
    host("bar.example.com", "/abc-foo-example-com", NOT_FOUND),
    // The foo-wildcard-example-com listener.
    host("bar.foo.example.com", "/empty-hostname", NOT_FOUND),
    host("bar.foo.example.com", "/wildcard-example-com", NOT_FOUND),
    host("bar.foo.example.com", "/wildcard-foo-example-com", V1),
    host("bar.foo.example.com", "/abc-foo-example-com", NOT_FOUND),
    // The abc-foo-example-com listener.
    host("abc.foo.example.com", "/empty-hostname", NOT_FOUND),
    host("abc.foo.example.com", "/wildcard-example-com", NOT_FOUND),
    host(
        "abc.foo.example.com",
        "/wildcard-foo-example-com",
        NOT_FOUND,
    ),
    host("abc.foo.example.com", "/abc-foo-example-com", V1),
];

#[test]
fn gateway_http_listener_isolation() {
    for file in [
        "gateway-http-listener-isolation.yaml",
        "gateway-http-listener-isolation-with-hostname-intersection.yaml",
    ] {
        let port = free_port();
        let _gw = serve(&[fixture(file)], &Ports::new(&[(80, port)]));
        for case in LISTENER_ISOLATION {
            check(port, case);
        }
    }
}

#[test]
fn httproute_listener_port_matching() {
    let (p80, p8080, p8090) = (free_port(), free_port(), free_port());
    // The backends' port 8080 moves with the listeners' (both are `port: 8080` lines).
    let ports = Ports::new(&[(80, p80), (8080, p8080), (8090, p8090)]);
    let _gw = serve(&[fixture("httproute-listener-port-matching.yaml")], &ports);
    for (port, case) in [
        (p80, host("foo.com", "/", V1)),
        (p8080, host("foo.com:8080", "/", V2)),
        (p8080, host("bar.com:8080", "/", V2)),
        (p8090, host("foo.com:8090", "/", V3)),
        (p8090, host("bar.com:8090", "/", NOT_FOUND)),
    ] {
        check(port, &case);
    }
}

#[test]
fn httproute_named_rule() {
    // Upstream checks the 200 only; the backends are the ones the rules name.
    on_same_namespace(
        "httproute-named-rule.yaml",
        &[get("/named", V1), get("/unnamed", V2)],
    );
}
