//! TLS session resumption can never skip a client check (spec §3): sessions resume on the
//! port and policy that issued them, and nowhere else; a policy change ends them; the listener
//! option turns resumption off.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io;
use std::sync::Arc;

use portcullis_runtime::limits::Limits;
use portcullis_runtime::pki::{Authority, GuidePki, KeyKind};
use portcullis_runtime::shard::DriverChoice;
use rustls::{AlertDescription, ClientConfig};
use support::backends::echo;
use support::*;

const RESUMPTION_OPTION: &str = "portcullis.dev/tls-session-resumption";

/// The guide's PKI, a second CA, and the echo backend every variant routes to.
struct Fixture {
    pki: GuidePki,
    other_ca: Authority,
    echo: std::net::SocketAddr,
    ports: (u16, u16),
}

impl Fixture {
    fn new() -> Self {
        Fixture {
            pki: GuidePki::generate(KeyKind::EcdsaP256).unwrap(),
            other_ca: Authority::new("Other CA", KeyKind::EcdsaP256).unwrap(),
            echo: echo(),
            ports: (free_port(), free_port()),
        }
    }

    /// Both ports with `validation` (the default) and listeners built by `listener`, a route
    /// with `path_prefix`, ConfigMaps `ca` (the guide's CA), `other` and `both`.
    fn config(
        &self,
        validation: Validation,
        listener: impl Fn(Listener) -> Listener,
        path_prefix: &str,
    ) -> portcullis_core::desired::DesiredConfig {
        let both = format!("{}{}", self.pki.ca.pem.cert, self.other_ca.pem.cert);
        desired(&[
            GatewayYaml::new()
                .default_validation(validation)
                .listener(listener(https("a", self.ports.0, "server-cert")))
                .listener(listener(https("b", self.ports.1, "server-cert")))
                .yaml(),
            route(
                "echo",
                &["example.com"],
                &rule_with_matches(
                    &format!("    - path: {{type: PathPrefix, value: {path_prefix}}}\n"),
                    &[("echo", 1)],
                ),
            ),
            server_secret("server-cert", &self.pki.server),
            ca_config_map("ca", &self.pki.ca.pem.cert),
            ca_config_map("other", &self.other_ca.pem.cert),
            ca_config_map("both", &both),
            service("echo", self.echo),
        ])
    }

    /// AllowValidOnly on the guide's CA, resumption on.
    fn base(&self) -> portcullis_core::desired::DesiredConfig {
        self.config(valid_only(&["ca"]), |l| l, "/")
    }

    /// One client identity whose session cache spans its connections.
    fn client(&self) -> Arc<ClientConfig> {
        client_config(&self.pki.ca.pem.cert, Some(&self.pki.client))
    }
}

/// A request on a new connection: whether its handshake resumed, and the response.
fn visit(port: u16, config: &Arc<ClientConfig>) -> io::Result<(bool, Response)> {
    let mut http = Http::connect(port, "example.com", config)?;
    let response = http.get("example.com", "/get")?;
    Ok((resumed(&http.stream), response))
}

fn resumes(port: u16, config: &Arc<ClientConfig>) -> bool {
    let (resumed, response) = visit(port, config).unwrap();
    assert_eq!(response.status, 200, "{}", response.body_text());
    resumed
}

#[test]
fn a_second_connection_resumes_and_still_carries_the_verified_identity() {
    let f = Fixture::new();
    let _gw = Gateway::start(f.base());
    let client = f.client();
    assert!(!resumes(f.ports.0, &client), "the first handshake is full");
    let (resumed, response) = visit(f.ports.0, &client).unwrap();
    assert!(resumed, "the second handshake resumes");
    let xfcc = response.echoed_header("x-forwarded-client-cert").unwrap();
    assert!(xfcc.contains("client.example.com"), "{xfcc}");
}

#[test]
fn a_config_change_that_leaves_the_port_policy_alone_keeps_sessions_resumable() {
    let f = Fixture::new();
    let gw = Gateway::start(f.base());
    let client = f.client();
    assert!(!resumes(f.ports.0, &client));
    gw.publish(f.config(valid_only(&["ca"]), |l| l, "/get"));
    assert!(resumes(f.ports.0, &client));
}

#[test]
fn changing_the_ports_ca_bundle_ends_its_sessions() {
    let f = Fixture::new();
    let gw = Gateway::start(f.base());
    let client = f.client();
    assert!(!resumes(f.ports.0, &client));
    // Still trusted (the bundle holds its CA), but the session belongs to the old policy.
    gw.publish(f.config(valid_only(&["both"]), |l| l, "/"));
    assert!(!resumes(f.ports.0, &client));
    assert!(
        resumes(f.ports.0, &client),
        "the new policy issues new sessions"
    );
}

#[test]
fn changing_the_ports_mode_ends_its_sessions() {
    let f = Fixture::new();
    let gw = Gateway::start(f.base());
    let client = f.client();
    assert!(!resumes(f.ports.0, &client));
    gw.publish(f.config(insecure_fallback(&["ca"]), |l| l, "/"));
    assert!(!resumes(f.ports.0, &client));
}

#[test]
fn a_session_cannot_bring_back_a_client_whose_ca_is_no_longer_trusted() {
    let f = Fixture::new();
    let gw = Gateway::start(f.base());
    let client = f.client();
    assert!(!resumes(f.ports.0, &client));
    gw.publish(f.config(valid_only(&["other"]), |l| l, "/"));
    let refused = visit(f.ports.0, &client).map(|(_, response)| response);
    assert_eq!(expect_alert(refused), AlertDescription::UnknownCA);
}

#[test]
fn a_session_from_one_port_never_resumes_on_another() {
    let f = Fixture::new();
    let _gw = Gateway::start(f.base());
    let client = f.client();
    assert!(!resumes(f.ports.0, &client));
    // The client offers port a's session (same server name) to port b.
    assert!(!resumes(f.ports.1, &client));
    assert!(resumes(f.ports.1, &client), "b resumes its own sessions");
}

#[test]
fn the_resumption_option_off_makes_every_handshake_full() {
    let f = Fixture::new();
    let _gw = Gateway::start(f.config(
        valid_only(&["ca"]),
        |l| l.option(RESUMPTION_OPTION, "off"),
        "/",
    ));
    let client = f.client();
    for _ in 0..3 {
        assert!(!resumes(f.ports.0, &client));
    }
}

#[test]
fn tls12_sessions_are_bound_to_the_policy_too() {
    let f = Fixture::new();
    let gw = Gateway::start(f.base());
    let client = client_config_tls12(&f.pki.ca.pem.cert, Some(&f.pki.client));
    assert!(!resumes(f.ports.0, &client));
    assert!(resumes(f.ports.0, &client), "TLS 1.2 resumes by ticket");
    gw.publish(f.config(valid_only(&["both"]), |l| l, "/"));
    assert!(!resumes(f.ports.0, &client));
}

#[test]
fn sessions_resume_whichever_shard_takes_the_connection() {
    let f = Fixture::new();
    let _gw = Gateway::start_with(f.base(), 2, DriverChoice::Auto, Limits::default());
    let client = f.client();
    assert!(!resumes(f.ports.0, &client));
    // SO_REUSEPORT spreads these over both shards; every one resumes the previous session.
    for _ in 0..8 {
        assert!(resumes(f.ports.0, &client));
    }
}

#[test]
fn a_session_whose_certificate_expired_since_resumes_without_its_identity_or_not_at_all() {
    let f = Fixture::new();
    let (strict, fallback) = f.ports;
    let _gw = Gateway::start(desired(&[
        GatewayYaml::new()
            .default_validation(valid_only(&["ca"]))
            .per_port(fallback, insecure_fallback(&["ca"]))
            .listener(https("strict", strict, "server-cert"))
            .listener(https("fallback", fallback, "server-cert"))
            .yaml(),
        route("echo", &["example.com"], &rule_to("echo")),
        server_secret("server-cert", &f.pki.server),
        ca_config_map("ca", &f.pki.ca.pem.cert),
        service("echo", f.echo),
    ]));
    // Long enough for the first handshakes on a busy machine, short enough to wait for.
    let expires = time::OffsetDateTime::now_utc() + time::Duration::seconds(4);
    let short_lived = f
        .pki
        .ca
        .issue_with("short-lived", &["short-lived.example.com"], |p| {
            p.not_after = expires;
        })
        .unwrap();
    // One client (one session cache) per port.
    let to_strict = client_config(&f.pki.ca.pem.cert, Some(&short_lived));
    let to_fallback = client_config(&f.pki.ca.pem.cert, Some(&short_lived));
    for (port, client) in [(strict, &to_strict), (fallback, &to_fallback)] {
        let (resumed, response) = visit(port, client).unwrap();
        assert!(!resumed);
        assert!(response.echoed_header("x-forwarded-client-cert").is_some());
    }
    // Not a timing assertion: the precondition is a certificate that has expired.
    wait_until("the client certificate expires", || {
        time::OffsetDateTime::now_utc() > expires + time::Duration::seconds(1)
    });

    // AllowValidOnly: the resumed session is closed before any HTTP exchange (close_notify:
    // rustls cannot send an alert once the resumed handshake completed).
    match visit(strict, &to_strict) {
        Ok((resumed, response)) => panic!(
            "served an expired certificate's session (resumed: {resumed}): {}",
            response.status
        ),
        Err(e) => assert!(
            alert_of(&e).is_some() || e.kind() == io::ErrorKind::UnexpectedEof,
            "{e}"
        ),
    }
    // AllowInsecureFallback: served, the expired certificate no longer an identity.
    let (resumed, response) = visit(fallback, &to_fallback).unwrap();
    assert!(resumed);
    assert_eq!(response.status, 200);
    assert_eq!(response.echoed_header("x-forwarded-client-cert"), None);
}
