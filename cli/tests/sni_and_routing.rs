//! Spec §6 on real sockets: the server certificate chosen by SNI, the Host header against the
//! SNI's listener (404, 421), and the HTTPRoute matches of real requests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io;
use std::sync::Arc;

use portcullis_runtime::pki::{Authority, CertKeyPem, KeyKind};
use rustls::{AlertDescription, ClientConfig};
use support::backends::{echo, named_backend};
use support::*;

/// Three server certificates with distinct names, one per listener.
struct ServerCerts {
    exact: CertKeyPem,
    wildcard: CertKeyPem,
    catch_all: CertKeyPem,
}

fn server_certs() -> ServerCerts {
    let ca = Authority::new("Server CA", KeyKind::EcdsaP256).unwrap();
    ServerCerts {
        exact: ca
            .issue("exact.example.com", &["exact.example.com"])
            .unwrap(),
        wildcard: ca.issue("wildcard", &["*.example.com"]).unwrap(),
        catch_all: ca.issue("catch-all", &["catch-all.test"]).unwrap(),
    }
}

/// Port `with_catch_all`: listeners `exact.example.com`, `*.example.com` and one without a
/// hostname, each with its own certificate; port `without_catch_all`: the first two only. No
/// client validation.
struct SniPorts {
    _gateway: Gateway,
    with_catch_all: u16,
    without_catch_all: u16,
}

fn sni_ports(certs: &ServerCerts) -> SniPorts {
    let (with_catch_all, without_catch_all) = (free_port(), free_port());
    let gateway = GatewayYaml::new()
        .listener(https("exact", with_catch_all, "exact").hostname("exact.example.com"))
        .listener(https("wildcard", with_catch_all, "wildcard").hostname("*.example.com"))
        .listener(https("catch-all", with_catch_all, "catch-all"))
        .listener(https("exact-2", without_catch_all, "exact").hostname("exact.example.com"))
        .listener(https("wildcard-2", without_catch_all, "wildcard").hostname("*.example.com"));
    let docs = vec![
        gateway.yaml(),
        route("echo", &[], &rule_to("echo")),
        server_secret("exact", &certs.exact),
        server_secret("wildcard", &certs.wildcard),
        server_secret("catch-all", &certs.catch_all),
        service("echo", echo()),
    ];
    SniPorts {
        _gateway: Gateway::start(desired(&docs)),
        with_catch_all,
        without_catch_all,
    }
}

/// The certificate the server presents for `sni` (`None`: no SNI extension at all).
fn served_cert(
    port: u16,
    sni: Option<&str>,
) -> io::Result<rustls::pki_types::CertificateDer<'static>> {
    let any = any_server_client_config(None);
    let stream = match sni {
        Some(name) => connect(port, name, &any)?,
        None => connect(port, "ignored.invalid", &without_sni(&any))?,
    };
    Ok(server_leaf(&stream))
}

#[test]
fn sni_picks_the_exact_hostname_then_the_wildcard_then_the_listener_without_hostname() {
    let certs = server_certs();
    let ports = sni_ports(&certs);
    let port = ports.with_catch_all;
    let cases = [
        ("exact.example.com", &certs.exact),
        ("EXACT.example.com", &certs.exact),
        ("www.example.com", &certs.wildcard),
        ("deep.www.example.com", &certs.wildcard),
        ("example.com", &certs.catch_all),
        ("unrelated.test", &certs.catch_all),
    ];
    for (sni, expected) in cases {
        let served = served_cert(port, Some(sni)).unwrap_or_else(|e| panic!("{sni}: {e}"));
        assert_eq!(served, der_of(&expected.cert), "SNI {sni}");
    }
}

#[test]
fn a_client_without_sni_gets_the_listener_without_hostname() {
    let certs = server_certs();
    let ports = sni_ports(&certs);
    let served = served_cert(ports.with_catch_all, None).unwrap();
    assert_eq!(served, der_of(&certs.catch_all.cert));
}

#[test]
fn a_name_no_listener_takes_is_refused_with_unrecognized_name() {
    let certs = server_certs();
    let ports = sni_ports(&certs);
    let port = ports.without_catch_all;
    // The listeners that exist still serve.
    assert_eq!(
        served_cert(port, Some("www.example.com")).unwrap(),
        der_of(&certs.wildcard.cert)
    );
    for sni in [Some("unrelated.test"), Some("example.com"), None] {
        let err = served_cert(port, sni).unwrap_err();
        assert_eq!(
            alert_of(&err),
            Some(AlertDescription::UnrecognisedName),
            "SNI {sni:?}: {err}"
        );
    }
}

/// Port with listeners `a.example.com` and `*.example.com` (no catch-all), routed to
/// backends that answer `a` and `wildcard`.
fn host_port() -> (Gateway, u16) {
    let certs = server_certs();
    let port = free_port();
    let gateway = GatewayYaml::new()
        .listener(https("a", port, "wildcard").hostname("a.example.com"))
        .listener(https("wildcard", port, "wildcard").hostname("*.example.com"));
    let docs = vec![
        gateway.yaml(),
        route("to-a", &["a.example.com"], &rule_to("a")),
        route("to-wildcard", &["*.example.com"], &rule_to("wildcard")),
        server_secret("wildcard", &certs.wildcard),
        service("a", named_backend("a")),
        service("wildcard", named_backend("wildcard")),
    ];
    (Gateway::start(desired(&docs)), port)
}

fn get(port: u16, sni: &str, host: &str, path: &str) -> Response {
    let any: Arc<ClientConfig> = any_server_client_config(None);
    https_get(port, sni, host, path, &any).unwrap_or_else(|e| panic!("{sni}/{host}: {e}"))
}

#[test]
fn routing_follows_the_host_header_with_its_port_stripped() {
    let (_gw, port) = host_port();
    let cases = [
        ("a.example.com", "a.example.com", "a"),
        ("a.example.com", &format!("a.example.com:{port}"), "a"),
        ("a.example.com", "A.Example.COM", "a"),
        ("a.example.com", "a.example.com.", "a"),
        ("www.example.com", "www.example.com", "wildcard"),
        (
            "www.example.com",
            &format!("www.example.com:{port}"),
            "wildcard",
        ),
    ];
    for (sni, host, backend) in cases {
        let response = get(port, sni, host, "/");
        assert_eq!(response.status, 200, "{sni}/{host}");
        assert_eq!(response.body_text(), backend, "{sni}/{host}");
    }
}

#[test]
fn a_host_whose_best_listener_is_not_the_sni_listener_gets_421() {
    let (_gw, port) = host_port();
    for (sni, host) in [
        ("www.example.com", "a.example.com"),
        ("a.example.com", "www.example.com"),
        ("a.example.com", "b.example.com:443"),
    ] {
        let response = get(port, sni, host, "/");
        assert_eq!(response.status, 421, "SNI {sni}, Host {host}");
    }
}

#[test]
fn a_host_no_listener_of_the_port_takes_gets_404() {
    let (_gw, port) = host_port();
    for host in ["unrelated.test", "example.com"] {
        let response = get(port, "a.example.com", host, "/");
        assert_eq!(response.status, 404, "Host {host}");
    }
}

#[test]
fn a_421_or_404_leaves_the_connection_usable() {
    let (_gw, port) = host_port();
    let any = any_server_client_config(None);
    let mut http = Http::connect(port, "a.example.com", &any).unwrap();
    assert_eq!(http.get("www.example.com", "/").unwrap().status, 421);
    assert_eq!(http.get("unrelated.test", "/").unwrap().status, 404);
    let ok = http.get("a.example.com", "/").unwrap();
    assert_eq!((ok.status, ok.body_text().as_str()), (200, "a"));
}

#[test]
fn an_absolute_form_target_is_routed_by_its_authority() {
    let (_gw, port) = host_port();
    let any = any_server_client_config(None);
    let mut http = Http::connect(port, "a.example.com", &any).unwrap();
    let ok = http
        .request(b"GET https://a.example.com/ HTTP/1.1\r\nHost: www.example.com\r\n\r\n")
        .unwrap();
    assert_eq!((ok.status, ok.body_text().as_str()), (200, "a"));
    let misdirected = http
        .request(b"GET https://www.example.com/ HTTP/1.1\r\nHost: a.example.com\r\n\r\n")
        .unwrap();
    assert_eq!(misdirected.status, 421);
}

#[test]
fn a_rejected_request_with_a_body_closes_the_connection() {
    let (_gw, port) = host_port();
    let any = any_server_client_config(None);
    let mut http = Http::connect(port, "a.example.com", &any).unwrap();
    let response = http
        .request(b"POST / HTTP/1.1\r\nHost: www.example.com\r\nContent-Length: 5\r\n\r\nhello")
        .unwrap();
    assert_eq!(response.status, 421);
    assert!(
        response.closes(),
        "the unread body would be taken for the next request"
    );
    http.assert_closed();
}

/// One listener without hostname; a route for `api.example.com` with one rule per kind of
/// match, each to a backend named after it.
fn matches_port() -> (Gateway, u16) {
    let certs = server_certs();
    let port = free_port();
    let rules = [
        rule_with_matches(
            "    - path: {type: Exact, value: /exact}\n",
            &[("exact", 1)],
        ),
        rule_with_matches(
            "    - path: {type: PathPrefix, value: /prefix}\n",
            &[("prefix", 1)],
        ),
        rule_with_matches(
            "    - path: {type: PathPrefix, value: /h}\n      headers: [{name: X-Env, value: prod}]\n",
            &[("header", 1)],
        ),
        rule_with_matches(
            "    - path: {type: PathPrefix, value: /m}\n      method: POST\n",
            &[("method", 1)],
        ),
        rule_with_matches(
            "    - path: {type: PathPrefix, value: /q}\n      queryParams: [{name: v, value: \"2\"}]\n",
            &[("query", 1)],
        ),
    ]
    .concat();
    let docs = vec![
        GatewayYaml::new()
            .listener(https("https", port, "catch-all"))
            .yaml(),
        route("api", &["api.example.com"], &rules),
        server_secret("catch-all", &certs.catch_all),
        service("exact", named_backend("exact")),
        service("prefix", named_backend("prefix")),
        service("header", named_backend("header")),
        service("method", named_backend("method")),
        service("query", named_backend("query")),
    ];
    (Gateway::start(desired(&docs)), port)
}

#[test]
fn path_header_method_and_query_matches_select_their_rule_and_anything_else_gets_404() {
    let (_gw, port) = matches_port();
    let any = any_server_client_config(None);
    let mut http = Http::connect(port, "api.example.com", &any).unwrap();
    let mut send = |request: &str| {
        let request = request.replace('\n', "\r\n");
        let response = http.request(request.as_bytes()).unwrap();
        match response.status {
            200 => response.body_text(),
            status => status.to_string(),
        }
    };
    let host = "Host: api.example.com\n";
    let cases = [
        (format!("GET /exact HTTP/1.1\n{host}\n"), "exact"),
        (format!("GET /exact?x=1 HTTP/1.1\n{host}\n"), "exact"),
        (format!("GET /exact/more HTTP/1.1\n{host}\n"), "404"),
        (format!("GET /prefix HTTP/1.1\n{host}\n"), "prefix"),
        (format!("GET /prefix/deeper HTTP/1.1\n{host}\n"), "prefix"),
        (format!("GET /prefixed HTTP/1.1\n{host}\n"), "404"),
        (format!("GET /h HTTP/1.1\n{host}x-env: prod\n\n"), "header"),
        (format!("GET /h HTTP/1.1\n{host}X-Env: dev\n\n"), "404"),
        (format!("GET /h HTTP/1.1\n{host}\n"), "404"),
        (
            format!("POST /m HTTP/1.1\n{host}Content-Length: 0\n\n"),
            "method",
        ),
        (format!("GET /m HTTP/1.1\n{host}\n"), "404"),
        (format!("GET /q?a=1&v=2 HTTP/1.1\n{host}\n"), "query"),
        (format!("GET /q?v=1 HTTP/1.1\n{host}\n"), "404"),
        (format!("GET /q HTTP/1.1\n{host}\n"), "404"),
        (
            "GET /exact HTTP/1.1\nHost: www.example.com\n\n".to_owned(),
            "404",
        ),
    ];
    for (request, expected) in cases {
        assert_eq!(send(&request), expected, "{request:?}");
    }
}
