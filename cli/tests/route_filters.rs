//! HTTPRoute filters on real sockets, with rules shaped like the upstream conformance suite's
//! (v1.6.1 `httproute-request-header-modifier.yaml`, `httproute-redirect-host-and-status.yaml`,
//! and the Extended `httproute-redirect-{scheme,port,path}.yaml`), checked as the suite checks
//! them: the header fields the backend received (repeated fields joined with `,`, names
//! compared case-insensitively, removed ones absent), and a redirect's status and `Location`.
//! Each over HTTP/1.1 and over HTTP/2 (h2c with prior knowledge, curl), which share one
//! implementation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::Command;

use support::backends::{After, raw_backend};
use support::*;

/// The rules of the suite's `request-header-modifier` HTTPRoute, then those of its
/// `redirect-host-and-status`, `redirect-scheme`, `redirect-port` and `redirect-path` ones.
const RULES: &str = "  - matches: [{path: {type: PathPrefix, value: /set}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: X-Header-Set, value: set-overwrites-values}]
    backendRefs: [{name: backend, port: 8000}]
  - matches: [{path: {type: PathPrefix, value: /add}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        add: [{name: X-Header-Add, value: add-appends-values}]
    backendRefs: [{name: backend, port: 8000}]
  - matches: [{path: {type: PathPrefix, value: /remove}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        remove: [X-Header-Remove]
    backendRefs: [{name: backend, port: 8000}]
  - matches: [{path: {type: PathPrefix, value: /multiple}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set:
        - {name: X-Header-Set-1, value: header-set-1}
        - {name: X-Header-Set-2, value: header-set-2}
        add:
        - {name: X-Header-Add-1, value: header-add-1}
        - {name: X-Header-Add-2, value: header-add-2}
        - {name: X-Header-Add-3, value: header-add-3}
        remove: [X-Header-Remove-1, X-Header-Remove-2]
    backendRefs: [{name: backend, port: 8000}]
  - matches: [{path: {type: PathPrefix, value: /case-insensitivity}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: X-Header-Set, value: header-set}]
        add: [{name: X-Header-Add, value: header-add}]
        remove: [X-Header-Remove]
    backendRefs: [{name: backend, port: 8000}]
  - matches: [{path: {type: PathPrefix, value: /hostname-redirect}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {hostname: example.org}
  - matches: [{path: {type: PathPrefix, value: /host-and-status}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {statusCode: 301, hostname: example.org}
  - matches: [{path: {type: PathPrefix, value: /scheme}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {scheme: https}
  - matches: [{path: {type: PathPrefix, value: /port}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {port: 8083}
  - matches: [{path: {type: PathPrefix, value: /original-prefix}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}}
  - matches: [{path: {type: PathPrefix, value: /full}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /full-path-replacement}}
";

/// The host the tests send (it resolves to 127.0.0.1 for curl).
const HOST: &str = "gw.example";

/// A gateway with one plain HTTP listener and the suite's rules, to a backend that answers
/// every request with the head it received as the body.
struct Fixture {
    port: u16,
    _gateway: Gateway,
}

fn fixture() -> Fixture {
    let port = free_port();
    let docs = vec![
        GatewayYaml::new().listener(http("http", port)).yaml(),
        route("filters", &[], RULES),
        service("backend", echo_head_backend()),
    ];
    Fixture {
        port,
        _gateway: Gateway::start(desired(&docs)),
    }
}

/// A keep-alive backend whose answer's body is the request head it received.
fn echo_head_backend() -> SocketAddr {
    raw_backend(|request, tcp| {
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{}",
            request.head.len(),
            request.head
        );
        match tcp.write_all(response.as_bytes()) {
            Ok(()) => After::KeepAlive,
            Err(_) => After::Close,
        }
    })
}

/// The values of every field named `name` in a received head, joined with `,` as the suite
/// (Go's `http.Header`) joins them; `None` when there is none.
fn received(head: &str, name: &str) -> Option<String> {
    let values: Vec<&str> = head
        .split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

/// One case of the suite's `HTTPRouteRequestHeaderModifier`: the request's path and headers,
/// the fields the backend must see, and those it must not.
struct HeaderCase {
    path: &'static str,
    sent: &'static [(&'static str, &'static str)],
    expected: &'static [(&'static str, &'static str)],
    absent: &'static [&'static str],
}

const HEADER_CASES: [HeaderCase; 7] = [
    HeaderCase {
        path: "/set",
        sent: &[("Some-Other-Header", "val")],
        expected: &[
            ("Some-Other-Header", "val"),
            ("X-Header-Set", "set-overwrites-values"),
        ],
        absent: &[],
    },
    HeaderCase {
        path: "/set",
        sent: &[
            ("Some-Other-Header", "val"),
            ("X-Header-Set", "some-other-value"),
        ],
        expected: &[
            ("Some-Other-Header", "val"),
            ("X-Header-Set", "set-overwrites-values"),
        ],
        absent: &[],
    },
    HeaderCase {
        path: "/add",
        sent: &[("Some-Other-Header", "val")],
        expected: &[
            ("Some-Other-Header", "val"),
            ("X-Header-Add", "add-appends-values"),
        ],
        absent: &[],
    },
    HeaderCase {
        path: "/add",
        sent: &[
            ("Some-Other-Header", "val"),
            ("X-Header-Add", "some-other-value"),
        ],
        expected: &[
            ("Some-Other-Header", "val"),
            ("X-Header-Add", "some-other-value,add-appends-values"),
        ],
        absent: &[],
    },
    HeaderCase {
        path: "/remove",
        sent: &[("X-Header-Remove", "val")],
        expected: &[],
        absent: &["X-Header-Remove"],
    },
    HeaderCase {
        path: "/multiple",
        sent: &[
            ("X-Header-Set-2", "set-val-2"),
            ("X-Header-Add-2", "add-val-2"),
            ("X-Header-Remove-2", "remove-val-2"),
            ("Another-Header", "another-header-val"),
        ],
        expected: &[
            ("X-Header-Set-1", "header-set-1"),
            ("X-Header-Set-2", "header-set-2"),
            ("X-Header-Add-1", "header-add-1"),
            ("X-Header-Add-2", "add-val-2,header-add-2"),
            ("X-Header-Add-3", "header-add-3"),
            ("Another-Header", "another-header-val"),
        ],
        absent: &["X-Header-Remove-1", "X-Header-Remove-2"],
    },
    HeaderCase {
        path: "/case-insensitivity",
        sent: &[
            ("x-header-set", "original-val-set"),
            ("x-header-add", "original-val-add"),
            ("x-header-remove", "original-val-remove"),
            ("Another-Header", "another-header-val"),
        ],
        expected: &[
            ("X-Header-Set", "header-set"),
            ("X-Header-Add", "original-val-add,header-add"),
            ("Another-Header", "another-header-val"),
        ],
        absent: &["x-header-remove", "X-Header-Remove"],
    },
];

fn check_received(case: &HeaderCase, head: &str, how: &str) {
    assert!(
        head.starts_with(&format!("GET {} HTTP/1.1\r\n", case.path)),
        "{how}: {head}"
    );
    for (name, value) in case.expected {
        assert_eq!(
            received(head, name).as_deref(),
            Some(*value),
            "{how} {}: {name} in {head}",
            case.path
        );
    }
    for name in case.absent {
        assert_eq!(
            received(head, name),
            None,
            "{how} {}: {name} in {head}",
            case.path
        );
    }
}

impl Fixture {
    fn connect(&self) -> Http<TcpStream> {
        let tcp = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        tcp.set_read_timeout(Some(PATIENCE)).unwrap();
        Http::new(tcp)
    }

    /// `curl --http2-prior-knowledge` with `args`, the test host resolving to 127.0.0.1; its
    /// stdout.
    fn curl_h2(&self, args: &[&str]) -> String {
        let out = Command::new("curl")
            .args(["-sS", "--http2-prior-knowledge", "--max-time", "30"])
            .args(["--resolve", &format!("{HOST}:{}:127.0.0.1", self.port)])
            .args(args)
            .output()
            .expect("curl is installed (scripts/install-test-deps)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{HOST}:{}{path}", self.port)
    }
}

#[test]
fn request_header_modifier_over_http1_as_the_conformance_suite_checks_it() {
    let f = fixture();
    let mut http = f.connect();
    for case in &HEADER_CASES {
        let mut request = format!("GET {} HTTP/1.1\r\nHost: {HOST}\r\n", case.path);
        for (name, value) in case.sent {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        let response = http.request(request.as_bytes()).unwrap();
        assert_eq!(response.status, 200, "{}", case.path);
        check_received(case, &response.body_text(), "HTTP/1.1");
    }
}

#[test]
fn request_header_modifier_over_http2_as_the_conformance_suite_checks_it() {
    let f = fixture();
    for case in &HEADER_CASES {
        let mut args: Vec<String> = vec!["-w".into(), "\n%{http_code} %{http_version}".into()];
        for (name, value) in case.sent {
            args.push("-H".into());
            args.push(format!("{name}: {value}"));
        }
        args.push(f.url(case.path));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = f.curl_h2(&args);
        let (head, trailer) = out.rsplit_once('\n').unwrap();
        assert_eq!(trailer, "200 2", "{}: {out}", case.path);
        check_received(case, head, "HTTP/2");
    }
}

/// The redirect cases: request path, status, `Location` (`{port}`: the listener's port).
const REDIRECT_CASES: [(&str, u16, &str); 8] = [
    // Core: hostname and status code (the listener's port stays, it is not 80).
    (
        "/hostname-redirect",
        302,
        "http://example.org:{port}/hostname-redirect",
    ),
    (
        "/host-and-status",
        301,
        "http://example.org:{port}/host-and-status",
    ),
    // The query is kept.
    (
        "/hostname-redirect?a=1&b",
        302,
        "http://example.org:{port}/hostname-redirect?a=1&b",
    ),
    // Extended: scheme (its well-known port, left out), port, path.
    ("/scheme", 302, "https://gw.example/scheme"),
    ("/port", 302, "http://gw.example:8083/port"),
    (
        "/original-prefix/lemon",
        302,
        "http://gw.example:{port}/replacement-prefix/lemon",
    ),
    (
        "/original-prefix",
        302,
        "http://gw.example:{port}/replacement-prefix",
    ),
    (
        "/full/path/original",
        302,
        "http://gw.example:{port}/full-path-replacement",
    ),
];

#[test]
fn request_redirect_over_http1_answers_status_and_location_and_keeps_the_connection() {
    let f = fixture();
    let mut http = f.connect();
    for (path, status, location) in REDIRECT_CASES {
        let response = http.get(&format!("{HOST}:{}", f.port), path).unwrap();
        let location = location.replace("{port}", &f.port.to_string());
        assert_eq!(response.status, status, "{path}");
        assert_eq!(
            response.header("location"),
            Some(location.as_str()),
            "{path}"
        );
        assert!(!response.closes(), "{path}");
    }
    // The connection still carries a forwarded request.
    let forwarded = http.get(HOST, "/set").unwrap();
    assert_eq!(forwarded.status, 200);
}

#[test]
fn request_redirect_over_http2_answers_status_and_location() {
    let f = fixture();
    for (path, status, location) in REDIRECT_CASES {
        let out = f.curl_h2(&[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version} %{redirect_url}",
            &f.url(path),
        ]);
        let location = location.replace("{port}", &f.port.to_string());
        assert_eq!(out, format!("{status} 2 {location}"), "{path}");
    }
}

/// The rules of the suite's (Extended) `response-header-modifier` HTTPRoute, to `backend`.
const RESPONSE_RULES: &str = "  - matches: [{path: {type: PathPrefix, value: /set}}]
    filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        set: [{name: X-Header-Set, value: set-overwrites-values}]
    backendRefs: [{name: backend, port: 8000}]
  - matches: [{path: {type: PathPrefix, value: /add}}]
    filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        add: [{name: X-Header-Add, value: add-appends-values}]
    backendRefs: [{name: backend, port: 8000}]
  - matches: [{path: {type: PathPrefix, value: /remove}}]
    filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        remove: [X-Header-Remove]
    backendRefs: [{name: backend, port: 8000}]
  - matches: [{path: {type: PathPrefix, value: /multiple}}]
    filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        set:
        - {name: X-Header-Set-1, value: header-set-1}
        - {name: X-Header-Set-2, value: header-set-2}
        add:
        - {name: X-Header-Add-1, value: header-add-1}
        - {name: X-Header-Add-2, value: header-add-2}
        - {name: X-Header-Add-3, value: header-add-3}
        remove: [X-Header-Remove-1, X-Header-Remove-2]
    backendRefs: [{name: backend, port: 8000}]
";

/// The header the suite's echo backend takes its response fields from: `name:value,...`.
const ECHO_SET_HEADER: &str = "X-Echo-Set-Header";

/// One case of the suite's `HTTPRouteResponseHeaderModifier`: the path, the fields the backend
/// answers with, the fields the client must get, and those it must not.
struct ResponseCase {
    path: &'static str,
    backend_sets: &'static str,
    expected: &'static [(&'static str, &'static str)],
    absent: &'static [&'static str],
}

const RESPONSE_CASES: [ResponseCase; 4] = [
    ResponseCase {
        path: "/set",
        backend_sets: "X-Header-Set:some-other-value",
        expected: &[("X-Header-Set", "set-overwrites-values")],
        absent: &[],
    },
    ResponseCase {
        path: "/add",
        backend_sets: "X-Header-Add:some-other-value",
        expected: &[("X-Header-Add", "some-other-value,add-appends-values")],
        absent: &[],
    },
    ResponseCase {
        path: "/remove",
        backend_sets: "X-Header-Remove:val",
        expected: &[],
        absent: &["X-Header-Remove"],
    },
    ResponseCase {
        path: "/multiple",
        backend_sets: "X-Header-Set-2:set-val-2,X-Header-Add-2:add-val-2,\
            X-Header-Remove-2:remove-val-2,Another-Header:another-header-val",
        expected: &[
            ("X-Header-Set-1", "header-set-1"),
            ("X-Header-Set-2", "header-set-2"),
            ("X-Header-Add-1", "header-add-1"),
            ("X-Header-Add-2", "add-val-2,header-add-2"),
            ("X-Header-Add-3", "header-add-3"),
            ("Another-Header", "another-header-val"),
        ],
        absent: &["X-Header-Remove-1", "X-Header-Remove-2"],
    },
];

/// `name:value,...` as field pairs.
fn echo_set_fields(value: &str) -> Vec<(String, String)> {
    value
        .split(',')
        .filter_map(|pair| pair.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// A keep-alive HTTP/1.1 backend answering with the fields `X-Echo-Set-Header` asks for.
fn echo_set_backend() -> SocketAddr {
    raw_backend(|request, tcp| {
        let mut response = String::from("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n");
        for (name, value) in
            echo_set_fields(&received(&request.head, ECHO_SET_HEADER).unwrap_or_default())
        {
            response.push_str(&format!("{name}: {value}\r\n"));
        }
        response.push_str("\r\nok");
        match tcp.write_all(response.as_bytes()) {
            Ok(()) => After::KeepAlive,
            Err(_) => After::Close,
        }
    })
}

/// An h2c (prior knowledge) backend answering with the fields `X-Echo-Set-Header` asks for,
/// on its own tokio runtime, which lives as long as the test.
fn echo_set_h2c_backend() -> (SocketAddr, tokio::runtime::Runtime) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    runtime.spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                while let Some(Ok((request, mut respond))) = conn.accept().await {
                    let asked = request
                        .headers()
                        .get(ECHO_SET_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    let mut response = http::Response::builder().status(200);
                    for (name, value) in echo_set_fields(&asked) {
                        response = response.header(name, value);
                    }
                    if let Ok(mut send) = respond.send_response(response.body(()).unwrap(), false) {
                        let _ = send.send_data(bytes::Bytes::from_static(b"ok"), true);
                    }
                }
            });
        }
    });
    (addr, runtime)
}

/// A gateway with one plain HTTP listener and the suite's response rules to `backend_yaml`
/// (the Service `backend`).
fn response_fixture(backend_yaml: String) -> Fixture {
    let port = free_port();
    let docs = vec![
        GatewayYaml::new().listener(http("http", port)).yaml(),
        route("filters", &[], RESPONSE_RULES),
        backend_yaml,
    ];
    Fixture {
        port,
        _gateway: Gateway::start(desired(&docs)),
    }
}

/// The Service `backend` on `addr`, its port speaking h2c.
fn h2c_service(addr: SocketAddr) -> String {
    let yaml = service("backend", addr).replace(
        "    targetPort:",
        "    appProtocol: kubernetes.io/h2c\n    targetPort:",
    );
    assert!(yaml.contains("appProtocol"), "{yaml}");
    yaml
}

/// The values of every field named `name` among `fields`, joined with `,`.
fn joined(fields: &[(String, String)], name: &str) -> Option<String> {
    let values: Vec<&str> = fields
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

fn check_response(case: &ResponseCase, fields: &[(String, String)], how: &str) {
    for (name, value) in case.expected {
        assert_eq!(
            joined(fields, name).as_deref(),
            Some(*value),
            "{how} {}: {name} in {fields:?}",
            case.path
        );
    }
    for name in case.absent {
        assert_eq!(joined(fields, name), None, "{how} {}: {name}", case.path);
    }
}

/// Every case, over HTTP/1.1 and over HTTP/2 (curl, h2c), on `f`.
fn check_response_cases(f: &Fixture, backend: &str) {
    let mut http = f.connect();
    for case in &RESPONSE_CASES {
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {HOST}\r\n{ECHO_SET_HEADER}: {}\r\n\r\n",
            case.path, case.backend_sets
        );
        let response = http.request(request.as_bytes()).unwrap();
        assert_eq!(response.status, 200, "{}", case.path);
        assert_eq!(response.body_text(), "ok", "{}", case.path);
        check_response(case, &response.headers, &format!("HTTP/1.1 to {backend}"));

        let out = f.curl_h2(&[
            "-o",
            "/dev/null",
            "-D",
            "-",
            "-H",
            &format!("{ECHO_SET_HEADER}: {}", case.backend_sets),
            &f.url(case.path),
        ]);
        let mut lines = out.split("\r\n");
        assert_eq!(lines.next(), Some("HTTP/2 200 "), "{}: {out}", case.path);
        let fields: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect();
        check_response(case, &fields, &format!("HTTP/2 to {backend}"));
    }
}

#[test]
fn response_header_modifier_from_an_http1_backend_as_the_conformance_suite_checks_it() {
    let f = response_fixture(service("backend", echo_set_backend()));
    check_response_cases(&f, "an HTTP/1.1 backend");
}

#[test]
fn response_header_modifier_from_an_h2c_backend_as_the_conformance_suite_checks_it() {
    let (addr, _runtime) = echo_set_h2c_backend();
    let f = response_fixture(h2c_service(addr));
    check_response_cases(&f, "an h2c backend");
}
