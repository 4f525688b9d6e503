//! What the client gets when the backend side fails: 502 (nothing answers), 503 (no ready
//! endpoint), 500 (the backendRef resolves to nothing), 504 (no answer in time), a closed
//! connection (the backend died mid-response); weighted backendRefs; and endpoints that are
//! down: a retry goes to another endpoint, and the shard skips a failed one for a while.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use portcullis_runtime::limits::Limits;
use portcullis_runtime::pki::{GuidePki, KeyKind};
use support::backends::{
    After, black_hole_on, dead_endpoint, named_backend, named_backend_on, raw_backend,
    silent_backend,
};
use support::*;

/// How long the gateway waits for a backend's response head in the 504 test: short, so the
/// test is quick (the test checks the status, not the time).
const SHORT_RESPONSE_TIMEOUT: Duration = Duration::from_millis(300);

/// A connect timeout no request in these tests may wait for: longer than the clients' own
/// read timeout ([`PATIENCE`]), so a request that waits for it fails.
const LONG_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A connect timeout for a black-holed endpoint, which the first request to it must wait out
/// (nothing tells a black hole from a slow endpoint sooner): short enough for that request to
/// complete within the client's patience, long enough that a busy machine never stalls a
/// loopback connect to the live endpoint this long.
const SHORT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// An ejection that outlasts the test, so the failed endpoint is not tried again meanwhile.
const LONG_EJECTION: Duration = Duration::from_secs(600);

/// Clients sending requests at once, and requests each sends, in the tests with a dead
/// endpoint.
const CLIENTS: usize = 8;
const REQUESTS_PER_CLIENT: usize = 25;

/// One HTTPS port, no client validation, one route (all hosts) whose single rule is `rule`,
/// with `extra` documents (Services).
fn gateway_with(rule: &str, extra: Vec<String>, limits: Limits) -> (Gateway, u16) {
    let pki = GuidePki::generate(KeyKind::EcdsaP256).unwrap();
    let port = free_port();
    let mut docs = vec![
        GatewayYaml::new()
            .listener(https("https", port, "server-cert"))
            .yaml(),
        route("all", &[], rule),
        server_secret("server-cert", &pki.server),
    ];
    docs.extend(extra);
    (Gateway::start_with_limits(desired(&docs), limits), port)
}

fn service_at(backend: SocketAddr) -> (Gateway, u16) {
    gateway_with(
        &rule_to("backend"),
        vec![service("backend", backend)],
        Limits::default(),
    )
}

fn client(port: u16) -> Http<TlsStream> {
    Http::connect(port, "example.com", &any_server_client_config(None)).unwrap()
}

#[test]
fn a_backend_nobody_listens_on_gets_502() {
    let (_gw, port) = service_at(dead_endpoint());
    let response = client(port).get("example.com", "/").unwrap();
    assert_eq!(response.status, 502);
}

#[test]
fn a_service_without_ready_endpoints_gets_503() {
    let (_gw, port) = gateway_with(
        &rule_to("backend"),
        vec![service_not_ready("backend", named_backend("never used"))],
        Limits::default(),
    );
    let mut http = client(port);
    let response = http.get("example.com", "/").unwrap();
    assert_eq!(response.status, 503);
    // Nothing was read from the client beyond the head: the connection stays usable.
    assert_eq!(http.get("example.com", "/").unwrap().status, 503);
}

#[test]
fn a_backend_ref_to_a_missing_service_gets_500() {
    let (_gw, port) = gateway_with(&rule_to("no-such-service"), vec![], Limits::default());
    let response = client(port).get("example.com", "/").unwrap();
    assert_eq!(response.status, 500);
}

#[test]
fn a_rule_without_a_weighted_backend_and_an_invalid_backend_are_500s_told_apart() {
    let rules = [
        rule_with_matches(
            "    - path: {type: Exact, value: /zero}\n",
            &[("drained", 0)],
        ),
        rule_with_matches(
            "    - path: {type: Exact, value: /missing}\n",
            &[("no-such-service", 1)],
        ),
    ]
    .concat();
    let (gw, port) = gateway_with(
        &rules,
        vec![service("drained", named_backend("drained"))],
        Limits::default(),
    );
    let mut http = client(port);
    assert_eq!(http.get("example.com", "/zero").unwrap().status, 500);
    assert_eq!(http.get("example.com", "/missing").unwrap().status, 500);
    for reason in ["no_backend", "invalid_backend"] {
        let series = format!(
            "portcullis_gateway_answers_total{{reason=\"{reason}\",fault=\"config\",code=\"500\"}}"
        );
        wait_until(&series, || series_value(&gw.scrape(), &series) == Some(1.0));
    }
}

#[test]
fn a_backend_that_never_answers_gets_504() {
    let limits = Limits {
        backend_response_timeout: SHORT_RESPONSE_TIMEOUT,
        ..Limits::default()
    };
    let (_gw, port) = gateway_with(
        &rule_to("backend"),
        vec![service("backend", silent_backend())],
        limits,
    );
    let response = client(port).get("example.com", "/").unwrap();
    assert_eq!(response.status, 504);
}

#[test]
fn a_backend_that_dies_mid_response_closes_the_client_connection() {
    let truncating = raw_backend(|_, tcp| {
        let _ = tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nonly the start");
        After::Close
    });
    let (_gw, port) = service_at(truncating);
    let mut http = client(port);
    let err = http.get("example.com", "/").unwrap_err();
    // The client learns the body is short when the connection ends (not by a timeout).
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{err}");
}

#[test]
fn a_chunked_response_cut_short_closes_the_client_connection() {
    let truncating = raw_backend(|_, tcp| {
        let _ =
            tcp.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n");
        After::Close
    });
    let (_gw, port) = service_at(truncating);
    let err = client(port).get("example.com", "/").unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{err}");
}

#[test]
fn a_malformed_response_head_gets_502() {
    let garbage = raw_backend(|_, tcp| {
        let _ = tcp.write_all(b"NOT HTTP AT ALL\r\n\r\n");
        After::Close
    });
    let (_gw, port) = service_at(garbage);
    let response = client(port).get("example.com", "/").unwrap();
    assert_eq!(response.status, 502);
}

#[test]
fn weighted_backend_refs_split_requests_by_weight() {
    let (_gw, port) = gateway_with(
        &rule_with_matches("", &[("heavy", 3), ("light", 1)]),
        vec![
            service("heavy", named_backend("heavy")),
            service("light", named_backend("light")),
        ],
        Limits::default(),
    );
    let mut http = client(port);
    let mut answers = Vec::new();
    for _ in 0..8 {
        let response = http.get("example.com", "/").unwrap();
        assert_eq!(response.status, 200);
        answers.push(response.body_text());
    }
    let heavy = answers.iter().filter(|a| *a == "heavy").count();
    let light = answers.iter().filter(|a| *a == "light").count();
    // One shard, smooth weighted round-robin: exactly 3:1, interleaved.
    assert_eq!((heavy, light), (6, 2), "{answers:?}");
}

#[test]
fn a_zero_weight_backend_gets_nothing() {
    let (_gw, port) = gateway_with(
        &rule_with_matches("", &[("live", 1), ("drained", 0)]),
        vec![
            service("live", named_backend("live")),
            service("drained", named_backend("drained")),
        ],
        Limits::default(),
    );
    let mut http = client(port);
    for _ in 0..4 {
        assert_eq!(http.get("example.com", "/").unwrap().body_text(), "live");
    }
}

#[test]
fn a_dead_endpoint_is_retried_on_the_next_ready_one() {
    let (down, alive) = one_down_one_alive();
    let (_gw, port) = gateway_with(
        &rule_to("backend"),
        vec![service_with_endpoints("backend", &[down, alive])],
        Limits::default(),
    );
    let mut http = client(port);
    for _ in 0..4 {
        let response = http.get("example.com", "/").unwrap();
        assert_eq!(
            (response.status, response.body_text().as_str()),
            (200, "alive")
        );
    }
}

/// A backend that answers one request per connection and then closes it, without saying
/// `Connection: close` (as a backend whose keep-alive timeout just expired does). Each close
/// is reported on `closed` once the socket is shut.
fn closes_after_each_response() -> (SocketAddr, std::sync::mpsc::Receiver<()>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let addr = raw_backend(move |request, tcp| {
        let body = format!("{} bytes", request.body.len());
        let _ = write!(
            tcp,
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let _ = tcp.shutdown(std::net::Shutdown::Both);
        let _ = tx.lock().unwrap().send(());
        After::Close
    });
    (addr, rx)
}

#[test]
fn a_request_without_body_is_retried_once_when_its_pooled_connection_turns_out_closed() {
    let (backend, closed) = closes_after_each_response();
    let (_gw, port) = service_at(backend);
    let mut http = client(port);
    for path in ["/first", "/second", "/third"] {
        let response = http.get("example.com", path).unwrap();
        assert_eq!(response.status, 200, "{path}: {}", response.body_text());
        closed.recv_timeout(PATIENCE).unwrap();
    }
}

#[test]
fn a_pooled_connection_the_backend_closed_meanwhile_is_not_used_for_a_request_with_a_body() {
    let (backend, closed) = closes_after_each_response();
    let (_gw, port) = service_at(backend);
    let mut http = client(port);
    for request in [
        "GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n\r\nhello",
        "POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    ] {
        assert_eq!(
            http.request(request.as_bytes()).unwrap().status,
            200,
            "{request:?}"
        );
        closed.recv_timeout(PATIENCE).unwrap();
    }
}

/// Two endpoints of one Service, on the same port number as EndpointSlices list them: `down`
/// on 127.0.0.1 (the caller makes it refuse or black-hole) and one answering `alive` on
/// 127.0.0.2.
fn one_down_one_alive() -> (SocketAddr, SocketAddr) {
    let port_number = free_port();
    let down = SocketAddr::from(([127, 0, 0, 1], port_number));
    let alive = named_backend_on(SocketAddr::from(([127, 0, 0, 2], port_number)), "alive");
    (down, alive)
}

/// Requests one after another, then from [`CLIENTS`] clients at once: every one is answered
/// by the live endpoint.
fn every_request_reaches_the_live_endpoint(port: u16) {
    let mut http = client(port);
    for i in 0..REQUESTS_PER_CLIENT {
        let response = http.get("example.com", "/").unwrap();
        assert_eq!(
            (response.status, response.body_text().as_str()),
            (200, "alive"),
            "sequential request {i}"
        );
    }
    let config = any_server_client_config(None);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let config = Arc::clone(&config);
            thread::spawn(move || {
                for i in 0..REQUESTS_PER_CLIENT {
                    // Half of them on a new connection each time.
                    let response = if c % 2 == 0 {
                        https_get(port, "example.com", "example.com", "/", &config)
                    } else {
                        Http::connect(port, "example.com", &config)
                            .and_then(|mut http| http.get("example.com", "/"))
                    }
                    .unwrap_or_else(|e| panic!("client {c}, request {i}: {e}"));
                    assert_eq!(
                        (response.status, response.body_text().as_str()),
                        (200, "alive"),
                        "client {c}, request {i}"
                    );
                }
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
}

fn endpoint_series(text: &str, family: &str, endpoint: SocketAddr, extra: &str) -> f64 {
    let series = format!("{family}{{endpoint=\"{endpoint}\"{extra}}}");
    series_value(text, &series).unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

#[test]
fn a_refused_endpoint_is_tried_once_then_skipped_and_no_request_fails_or_waits() {
    let (down, alive) = one_down_one_alive();
    let limits = Limits {
        backend_connect_timeout: LONG_CONNECT_TIMEOUT,
        backend_ejection_time: LONG_EJECTION,
        ..Limits::default()
    };
    let (gw, port) = gateway_with(
        &rule_to("backend"),
        vec![service_with_endpoints("backend", &[down, alive])],
        limits,
    );
    every_request_reaches_the_live_endpoint(port);
    let text = gw.scrape();
    let failures = |family, extra| endpoint_series(&text, family, down, extra);
    assert_eq!(
        failures("portcullis_backend_connect_errors_total", ""),
        1.0,
        "one connect to the refusing endpoint, then it was skipped"
    );
    assert_eq!(
        failures(
            "portcullis_backend_endpoint_ejections_total",
            ",reason=\"refused\""
        ),
        1.0
    );
    assert_eq!(
        failures("portcullis_backend_endpoint_ejected_shards", ""),
        1.0
    );
}

#[test]
fn a_black_holed_endpoint_costs_one_connect_timeout_then_is_skipped() {
    let (down, alive) = one_down_one_alive();
    let black_hole = black_hole_on(down);
    let limits = Limits {
        backend_connect_timeout: SHORT_CONNECT_TIMEOUT,
        backend_ejection_time: LONG_EJECTION,
        ..Limits::default()
    };
    let (gw, port) = gateway_with(
        &rule_to("backend"),
        vec![service_with_endpoints("backend", &[black_hole.addr, alive])],
        limits,
    );
    every_request_reaches_the_live_endpoint(port);
    let text = gw.scrape();
    assert_eq!(
        endpoint_series(
            &text,
            "portcullis_backend_timeouts_total",
            down,
            ",phase=\"connect\""
        ),
        1.0,
        "only the first request to the black hole waited for the connect timeout"
    );
    assert_eq!(
        endpoint_series(
            &text,
            "portcullis_backend_endpoint_ejections_total",
            down,
            ",reason=\"timed_out\""
        ),
        1.0
    );
}

#[test]
fn a_backend_whose_only_endpoint_is_ejected_still_gets_requests() {
    let endpoint = dead_endpoint();
    let limits = Limits {
        backend_ejection_time: LONG_EJECTION,
        ..Limits::default()
    };
    let (gw, port) = gateway_with(
        &rule_to("backend"),
        vec![service("backend", endpoint)],
        limits,
    );
    assert_eq!(client(port).get("example.com", "/").unwrap().status, 502);
    let ejections = |text: &str| {
        endpoint_series(
            text,
            "portcullis_backend_endpoint_ejections_total",
            endpoint,
            ",reason=\"refused\"",
        )
    };
    assert_eq!(ejections(&gw.scrape()), 1.0);

    // Back up while still ejected: with no other endpoint left, it is tried anyway.
    named_backend_on(endpoint, "back");
    let response = client(port).get("example.com", "/").unwrap();
    assert_eq!(
        (response.status, response.body_text().as_str()),
        (200, "back")
    );
    let text = gw.scrape();
    assert_eq!(
        endpoint_series(
            &text,
            "portcullis_backend_endpoint_ejected_shards",
            endpoint,
            ""
        ),
        0.0,
        "the ejection ends when a connect succeeds"
    );
    assert_eq!(ejections(&text), 1.0);
}

#[test]
fn an_ejected_endpoint_gets_requests_again_once_its_ejection_ends() {
    let (down, alive) = one_down_one_alive();
    let limits = Limits {
        backend_ejection_time: Duration::from_millis(200),
        ..Limits::default()
    };
    let (gw, port) = gateway_with(
        &rule_to("backend"),
        vec![service_with_endpoints("backend", &[down, alive])],
        limits,
    );
    let mut http = client(port);
    wait_until("the refusing endpoint is ejected", || {
        assert_eq!(http.get("example.com", "/").unwrap().body_text(), "alive");
        series_value(
            &gw.scrape(),
            &format!(
                "portcullis_backend_endpoint_ejections_total{{endpoint=\"{down}\",reason=\"refused\"}}"
            ),
        )
        .is_some_and(|n| n >= 1.0)
    });
    named_backend_on(down, "revived");
    wait_until("the revived endpoint answers again", || {
        http.get("example.com", "/").unwrap().body_text() == "revived"
    });
}

#[test]
fn a_dead_endpoint_does_not_shift_requests_between_weighted_backends() {
    let (down, alive) = one_down_one_alive();
    let limits = Limits {
        backend_ejection_time: Duration::ZERO,
        ..Limits::default()
    };
    let heavy = service_with_endpoints("heavy", &[down, alive]);
    let (_gw, port) = gateway_with(
        &rule_with_matches("", &[("heavy", 3), ("light", 1)]),
        vec![heavy, service("light", named_backend("light"))],
        limits,
    );
    let mut http = client(port);
    let mut answers = Vec::new();
    for _ in 0..16 {
        let response = http.get("example.com", "/").unwrap();
        assert_eq!(response.status, 200);
        answers.push(response.body_text());
    }
    let light = answers.iter().filter(|a| *a == "light").count();
    // A connect retry stays in the backend the weights chose: still exactly 3:1.
    assert_eq!(light, 4, "{answers:?}");
}

/// Two endpoints of one Service: one answering `alive` on 127.0.0.2, and on 127.0.0.1 one that
/// reads each request and resets the connection without a byte of answer (a backend killed with
/// requests in flight).
fn one_rude_one_alive() -> SocketAddr {
    let port_number = free_port();
    let alive = named_backend_on(SocketAddr::from(([127, 0, 0, 2], port_number)), "alive");
    support::backends::raw_backend_on(SocketAddr::from(([127, 0, 0, 1], port_number)), |_, tcp| {
        let _ = socket2::SockRef::from(&*tcp).set_linger(Some(Duration::ZERO));
        After::Close
    });
    alive
}

#[test]
fn an_idempotent_request_whose_endpoint_resets_unanswered_goes_to_another_endpoint() {
    let alive = one_rude_one_alive();
    let rude = SocketAddr::from(([127, 0, 0, 1], alive.port()));
    let (_gw, port) = gateway_with(
        &rule_to("backend"),
        vec![service_with_endpoints("backend", &[rude, alive])],
        Limits::default(),
    );
    for i in 0..20 {
        let response = https_get(
            port,
            "example.com",
            "example.com",
            "/",
            &any_server_client_config(None),
        )
        .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(
            (response.status, response.body_text().as_str()),
            (200, "alive"),
            "request {i}"
        );
    }
    // A POST may have had its effect: it is not sent twice, so some get 502.
    let statuses: Vec<u16> = (0..20)
        .map(|_| {
            let mut http = client(port);
            http.request(b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 0\r\n\r\n")
                .unwrap()
                .status
        })
        .collect();
    assert!(statuses.contains(&502), "{statuses:?}");
    assert!(statuses.contains(&200), "{statuses:?}");
}
