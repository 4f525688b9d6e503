//! Live reload on real sockets: a published config reaches new connections while established
//! ones keep the config they started with and are never dropped; ports come and go.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::{SocketAddr, TcpStream};

use portcullis_core::desired::DesiredConfig;
use portcullis_runtime::pki::{GuidePki, KeyKind};
use rustls::AlertDescription;
use support::backends::named_backend;
use support::*;

struct Fixture {
    pki: GuidePki,
    v1: SocketAddr,
    v2: SocketAddr,
}

impl Fixture {
    fn new() -> Self {
        Fixture {
            pki: GuidePki::generate(KeyKind::EcdsaP256).unwrap(),
            v1: named_backend("v1"),
            v2: named_backend("v2"),
        }
    }

    /// HTTPS `ports` with `validation`, example.com routed to the Service `backend` (`v1` or
    /// `v2`).
    fn config(&self, ports: &[u16], validation: Validation, backend: &str) -> DesiredConfig {
        let mut gateway = GatewayYaml::new().default_validation(validation);
        for port in ports {
            gateway = gateway.listener(https(&format!("https-{port}"), *port, "server-cert"));
        }
        desired(&[
            gateway.yaml(),
            route("r", &["example.com"], &rule_to(backend)),
            server_secret("server-cert", &self.pki.server),
            ca_config_map("ca", &self.pki.ca.pem.cert),
            service("v1", self.v1),
            service("v2", self.v2),
        ])
    }

    fn anonymous(&self) -> std::sync::Arc<rustls::ClientConfig> {
        client_config(&self.pki.ca.pem.cert, None)
    }

    fn open(&self, port: u16) -> Http<TlsStream> {
        Http::connect(port, "example.com", &self.anonymous()).unwrap()
    }
}

fn body_of(http: &mut Http<TlsStream>) -> String {
    let response = http.get("example.com", "/").unwrap();
    assert_eq!(response.status, 200, "{}", response.body_text());
    response.body_text()
}

#[test]
fn an_open_connection_keeps_its_routes_while_new_connections_get_the_new_ones() {
    let f = Fixture::new();
    let port = free_port();
    let gw = Gateway::start(f.config(&[port], insecure_fallback(&["ca"]), "v1"));
    let mut open = f.open(port);
    assert_eq!(body_of(&mut open), "v1");

    gw.publish(f.config(&[port], insecure_fallback(&["ca"]), "v2"));
    assert_eq!(body_of(&mut f.open(port)), "v2", "a new connection");
    assert_eq!(body_of(&mut open), "v1", "the open connection, not dropped");
}

#[test]
fn a_tightened_policy_applies_to_new_handshakes_without_dropping_open_connections() {
    let f = Fixture::new();
    let port = free_port();
    let gw = Gateway::start(f.config(&[port], insecure_fallback(&["ca"]), "v1"));
    let mut open = f.open(port);
    assert_eq!(body_of(&mut open), "v1");

    gw.publish(f.config(&[port], valid_only(&["ca"]), "v1"));
    let refused = https_get(port, "example.com", "example.com", "/", &f.anonymous());
    assert_eq!(expect_alert(refused), AlertDescription::CertificateRequired);
    assert_eq!(body_of(&mut open), "v1", "established before the change");
}

#[test]
fn a_removed_port_stops_accepting_while_its_open_connection_completes_its_next_request() {
    let f = Fixture::new();
    let (kept, removed) = (free_port(), free_port());
    let gw = Gateway::start(f.config(&[kept, removed], insecure_fallback(&["ca"]), "v1"));
    let mut open = f.open(removed);
    assert_eq!(body_of(&mut open), "v1");

    gw.publish(f.config(&[kept], insecure_fallback(&["ca"]), "v1"));
    wait_until("the removed port refuses connections", || {
        TcpStream::connect(("127.0.0.1", removed)).is_err()
    });
    assert_eq!(
        body_of(&mut open),
        "v1",
        "the drained connection still serves"
    );
    assert_eq!(body_of(&mut f.open(kept)), "v1", "the kept port serves");
}

#[test]
fn a_port_added_later_starts_accepting_and_a_removed_one_can_come_back() {
    let f = Fixture::new();
    let (first, later) = (free_port(), free_port());
    let gw = Gateway::start(f.config(&[first], insecure_fallback(&["ca"]), "v1"));
    assert!(TcpStream::connect(("127.0.0.1", later)).is_err());

    gw.publish(f.config(&[first, later], insecure_fallback(&["ca"]), "v1"));
    assert_eq!(body_of(&mut f.open(later)), "v1");

    gw.publish(f.config(&[first], insecure_fallback(&["ca"]), "v1"));
    wait_until("the port is gone", || {
        TcpStream::connect(("127.0.0.1", later)).is_err()
    });
    gw.publish(f.config(&[first, later], insecure_fallback(&["ca"]), "v2"));
    assert_eq!(body_of(&mut f.open(later)), "v2");
}
