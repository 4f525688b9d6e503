//! The epoll fallback driver (what runs where io_uring is refused) serves the guide exactly as
//! io_uring does, with two shards sharing each port through `SO_REUSEPORT`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use portcullis_runtime::limits::Limits;
use portcullis_runtime::pki::{GuidePki, KeyKind};
use portcullis_runtime::shard::{Driver, DriverChoice};
use rustls::AlertDescription;
use support::backends::echo;
use support::*;

/// Connections per port: enough that both shards very likely take some (the kernel hashes
/// each connection's ports), though the test only needs every one of them served.
const CONNECTIONS_PER_PORT: usize = 8;

#[test]
fn the_guide_is_served_on_the_epoll_driver_with_two_shards() {
    let pki = GuidePki::generate(KeyKind::EcdsaP256).unwrap();
    let ports = (free_port(), free_port());
    let docs = guide_manifests(ports, &pki.ca.pem.cert, &pki.server, echo(), true);
    let gw = Gateway::start_with(
        translate_yaml(&refs(&docs), "agentgateway"),
        2,
        DriverChoice::Epoll,
        Limits::default(),
    );
    assert_eq!(gw.drivers(), vec![Some(Driver::Epoll); 2]);

    let anonymous = client_config(&pki.ca.pem.cert, None);
    let with_cert = client_config(&pki.ca.pem.cert, Some(&pki.client));
    for _ in 0..CONNECTIONS_PER_PORT {
        let refused = https_get(ports.0, "example.com", "example.com", "/get", &anonymous);
        assert_eq!(expect_alert(refused), AlertDescription::CertificateRequired);

        let tolerated = https_get(ports.1, "example.com", "example.com", "/get", &anonymous);
        assert_eq!(tolerated.unwrap().status, 200);

        for port in [ports.0, ports.1] {
            let mut http = Http::connect(port, "example.com", &with_cert).unwrap();
            for _ in 0..2 {
                let ok = http.get("example.com", "/get").unwrap();
                assert_eq!(ok.status, 200);
                assert!(ok.echoed_header("x-forwarded-client-cert").is_some());
            }
        }
    }
}
