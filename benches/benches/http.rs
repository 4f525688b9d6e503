//! Per-request and per-connection HTTP costs: parsing a request head, routing it, rewriting it
//! for the backend (with and without the client-identity header), the response head's way back,
//! and building the identity header once per connection.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis_benches::{ClientPolicy, OrExit, Pki, Restrictions, ServerSide, desired};
use portcullis_core::client_identity::VerifiedClient;
use portcullis_core::http1::{
    ClientConn, ForwardExtras, ForwardedProto, HeadLimits, Version, parse_request_head,
    parse_response_head, write_forwarded_request_head, write_forwarded_response_head,
};
use portcullis_core::listener_options::ForwardClientCert;
use portcullis_core::routing::RouteRequest;
use portcullis_runtime::pki::KeyKind;

/// Room for a rewritten head with an XFCC header (an RSA client certificate, PEM,
/// percent-encoded, is about 2.5 KiB): the output buffer never grows inside the loop.
const OUT_BUFFER_BYTES: usize = 8 * 1024;

fn http(c: &mut Criterion) {
    let limits = HeadLimits::default();
    let head = portcullis_benches::REQUEST_HEAD;
    let client_ip = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));

    c.bench_function("http/parse_request_head", |b| {
        b.iter(|| parse_request_head(black_box(head), &limits))
    });

    let pki = Pki::generate(KeyKind::Rsa2048).or_exit("certificates");
    let leaf = pki.client_leaf().or_exit("client leaf").clone();
    for (label, forward) in [
        ("xfcc", ForwardClientCert::Xfcc),
        ("rfc9440", ForwardClientCert::Rfc9440),
    ] {
        c.bench_function(
            &format!("http/verified_client_per_connection/{label}"),
            |b| b.iter(|| VerifiedClient::new(black_box(&leaf), &[], forward)),
        );
    }
    let xfcc = VerifiedClient::new(&leaf, &[], ForwardClientCert::Xfcc);
    let rfc9440 = VerifiedClient::new(&leaf, &[], ForwardClientCert::Rfc9440);

    let server = ServerSide::compile(
        desired(
            &pki,
            ClientPolicy::AllowValidOnly,
            Restrictions::None,
            true,
            "/",
        )
        .or_exit("config"),
    )
    .or_exit("compile");
    let routes = server
        .snapshot
        .ports
        .first()
        .and_then(|p| p.listeners.first())
        .map(|l| l.routes.clone())
        .or_exit_none("route table");

    let mut out = Vec::with_capacity(OUT_BUFFER_BYTES);
    for (label, identity) in [
        ("no_identity", &[][..]),
        ("xfcc", xfcc.identity_headers.as_slice()),
        ("rfc9440", rfc9440.identity_headers.as_slice()),
    ] {
        c.bench_function(&format!("http/parse+route+rewrite_request/{label}"), |b| {
            b.iter(|| {
                out.clear();
                if let Ok(Some(parsed)) = parse_request_head(black_box(head), &limits) {
                    let headers = parsed.headers(head);
                    let request = RouteRequest::from_head(&parsed, head, &headers);
                    black_box(routes.find(&request));
                    let extras = ForwardExtras {
                        client_ip,
                        proto: ForwardedProto::Https,
                        identity_headers: identity,
                        request_headers: &portcullis_core::filters::NO_HEADER_CHANGES,
                    };
                    write_forwarded_request_head(&parsed, head, &extras, &mut out);
                }
                black_box(out.len())
            })
        });
    }

    let response = portcullis_benches::RESPONSE_HEAD;
    let client = ClientConn {
        version: Version::Http11,
        keep_alive: true,
    };
    c.bench_function("http/parse+rewrite_response", |b| {
        b.iter(|| {
            out.clear();
            if let Ok(Some(parsed)) = parse_response_head(black_box(response), false, &limits) {
                black_box(write_forwarded_response_head(
                    &parsed,
                    response,
                    client,
                    &portcullis_core::filters::NO_HEADER_CHANGES,
                    &mut out,
                ));
            }
            black_box(out.len())
        })
    });
}

/// `Option` counterpart of [`OrExit`].
trait OrExitNone<T> {
    fn or_exit_none(self, what: &str) -> T;
}

impl<T> OrExitNone<T> for Option<T> {
    fn or_exit_none(self, what: &str) -> T {
        self.ok_or("missing").or_exit(what)
    }
}

criterion_group!(benches, http);
criterion_main!(benches);
