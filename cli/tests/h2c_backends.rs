//! h2c backends (Service ports with `appProtocol: kubernetes.io/h2c`) on real sockets: a real
//! gRPC server (tonic's health and reflection services) behind the gateway, called by a real
//! gRPC client (tonic, over mTLS with the guide's client certificate, and over plain h2c to an
//! HTTP listener), by `curl --http2`, and by an HTTP/1.1 client with a chunked body.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use portcullis_runtime::metrics::RequestProtocol;
use portcullis_runtime::pki::{GuidePki, KeyKind};
use support::*;
use tokio::runtime::Runtime;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server};
use tonic::{Code, Request};
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus as WireStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::server::HealthReporter;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

/// The service name the backend's health service reports on.
const SERVICE: &str = "portcullis.test";

/// The Service `name` on `backend`, whose port speaks h2c.
fn h2c_service(name: &str, backend: SocketAddr) -> String {
    let yaml = service(name, backend).replace(
        "    targetPort:",
        "    appProtocol: kubernetes.io/h2c\n    targetPort:",
    );
    assert!(yaml.contains("appProtocol"), "{yaml}");
    yaml
}

/// A tonic server (health and reflection) on its own runtime, counting the connections it
/// accepts and recording the `x-forwarded-client-cert` values requests carried.
struct GrpcBackend {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    xfcc: Arc<Mutex<Vec<Vec<String>>>>,
    reporter: HealthReporter,
    /// Starts the server's graceful shutdown (GOAWAY on every connection).
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// The server's task: done when the shutdown finished (every connection closed).
    served: Option<tokio::task::JoinHandle<()>>,
    runtime: Option<Runtime>,
}

impl GrpcBackend {
    /// On `addr` (port 0: any).
    fn start(addr: SocketAddr) -> GrpcBackend {
        Self::start_with(addr, None)
    }

    /// On `addr`, allowing at most `max_streams` concurrent streams per connection.
    fn start_with(addr: SocketAddr, max_streams: Option<u32>) -> GrpcBackend {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let xfcc = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (addr, reporter, served) = runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
            let addr = listener.local_addr().unwrap();
            let counted = Arc::clone(&connections);
            let incoming = tokio_stream::StreamExt::map(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                move |c| {
                    counted.fetch_add(1, Ordering::SeqCst);
                    c
                },
            );
            let (reporter, health) = tonic_health::server::health_reporter();
            reporter
                .set_service_status(SERVICE, ServingStatus::Serving)
                .await;
            let seen = Arc::clone(&xfcc);
            let health = tonic::service::interceptor::InterceptedService::new(
                health,
                move |request: Request<()>| {
                    let values = request
                        .metadata()
                        .get_all("x-forwarded-client-cert")
                        .iter()
                        .map(|v| v.to_str().unwrap().to_owned())
                        .collect();
                    seen.lock().unwrap().push(values);
                    Ok(request)
                },
            );
            let reflection = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .build_v1()
                .unwrap();
            let served = tokio::spawn(async move {
                Server::builder()
                    .max_concurrent_streams(max_streams)
                    .add_service(health)
                    .add_service(reflection)
                    .serve_with_incoming_shutdown(incoming, async {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
            (addr, reporter, served)
        });
        GrpcBackend {
            addr,
            connections,
            xfcc,
            reporter,
            stop: Some(stop),
            served: Some(served),
            runtime: Some(runtime),
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Shuts the server down as a rolling update does: GOAWAY, then it waits until the
    /// connections are closed (the gateway must close its idle one).
    fn stop_gracefully(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let served = self.served.take().unwrap();
        let runtime = self.runtime.take().unwrap();
        runtime
            .block_on(async { tokio::time::timeout(PATIENCE, served).await })
            .expect("the gateway closed its connection after the backend's GOAWAY")
            .unwrap();
        runtime.shutdown_timeout(PATIENCE);
    }

    /// Ends the server at once, as a killed process: every task and socket of the backend
    /// goes away, without GOAWAY.
    fn kill(mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(PATIENCE);
        }
    }
}

/// A gateway on one HTTPS port requiring the guide's client certificate, one catch-all
/// listener, and routes by host: `grpc.example.com` to the h2c backend, `empty.example.com`
/// to an h2c Service with no ready endpoint; other hosts have no route.
struct Fixture {
    pki: GuidePki,
    port: u16,
    dir: tempfile::TempDir,
    gateway: Gateway,
}

fn fixture(backend: SocketAddr) -> Fixture {
    let pki = GuidePki::generate(KeyKind::EcdsaP256).unwrap();
    let port = free_port();
    let docs = vec![
        GatewayYaml::new()
            .per_port(port, valid_only(&["ca"]))
            .listener(https("grpc", port, "server-cert"))
            .yaml(),
        route("grpc", &["grpc.example.com"], &rule_to("health")),
        route("empty", &["empty.example.com"], &rule_to("empty")),
        server_secret("server-cert", &pki.server),
        ca_config_map("ca", &pki.ca.pem.cert),
        h2c_service("health", backend),
        service_not_ready("empty", backend).replace(
            "    targetPort:",
            "    appProtocol: kubernetes.io/h2c\n    targetPort:",
        ),
    ];
    let gateway = Gateway::start(desired(&docs));
    let dir = tempfile::tempdir().unwrap();
    for (name, pem) in [
        ("ca.pem", &pki.ca.pem.cert),
        ("client.pem", &pki.client.cert),
        ("client.key", &pki.client.key),
    ] {
        std::fs::write(dir.path().join(name), pem).unwrap();
    }
    Fixture {
        pki,
        port,
        dir,
        gateway,
    }
}

impl Fixture {
    /// A tonic channel to the gateway over mTLS with the guide's client certificate, its
    /// requests for `host`.
    async fn channel(&self, host: &str) -> Channel {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.pki.ca.pem.cert))
            .identity(Identity::from_pem(
                &self.pki.client.cert,
                &self.pki.client.key,
            ))
            .domain_name(host);
        Endpoint::from_shared(format!("https://127.0.0.1:{}", self.port))
            .unwrap()
            .origin(format!("https://{host}:{}", self.port).parse().unwrap())
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    fn grpc_requests(&self) -> u64 {
        self.gateway
            .metrics()
            .requests
            .iter()
            .filter(|(key, _)| key.1.ends_with("grpc"))
            .flat_map(|(_, (codes, _))| codes.iter())
            .filter(|((protocol, _), _)| *protocol == RequestProtocol::Grpc)
            .map(|(_, n)| n)
            .sum()
    }
}

fn check(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.to_owned(),
    }
}

#[test]
fn unary_and_server_streaming_grpc_calls_reach_an_h2c_backend_with_their_trailers() {
    let backend = GrpcBackend::start("127.0.0.1:0".parse().unwrap());
    let f = fixture(backend.addr);
    let rt = Runtime::new().unwrap();
    rt.block_on(async {
        let mut client = HealthClient::new(f.channel("grpc.example.com").await);

        // Unary, with a spoofed identity header the gateway must replace.
        let mut request = Request::new(check(SERVICE));
        request
            .metadata_mut()
            .insert("x-forwarded-client-cert", "Hash=spoofed".parse().unwrap());
        let response = client.check(request).await.unwrap().into_inner();
        assert_eq!(response.status, WireStatus::Serving as i32);
        let seen = backend.xfcc.lock().unwrap().last().cloned().unwrap();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert!(seen[0].contains("client.example.com"), "{seen:?}");
        assert!(!seen[0].contains("spoofed"));

        // A non-zero grpc-status and its message travel in the backend's trailers.
        let error = client.check(check("no.such.Service")).await.unwrap_err();
        assert_eq!(error.code(), Code::NotFound, "{error:?}");
        assert!(error.message().contains("not registered"), "{error:?}");

        // Server streaming: the watch's first message, then one per change.
        let mut watch = client.watch(check(SERVICE)).await.unwrap().into_inner();
        let first = watch.message().await.unwrap().unwrap();
        assert_eq!(first.status, WireStatus::Serving as i32);
        backend
            .reporter
            .set_service_status(SERVICE, ServingStatus::NotServing)
            .await;
        let second = watch.message().await.unwrap().unwrap();
        assert_eq!(second.status, WireStatus::NotServing as i32);
    });
    assert!(f.grpc_requests() >= 2, "route metrics count gRPC calls");
}

#[test]
fn a_grpc_client_over_plain_h2c_reaches_the_h2c_backend_through_an_http_listener() {
    // GRPCRoute on an HTTP listener: the client speaks HTTP/2 with prior knowledge.
    let backend = GrpcBackend::start("127.0.0.1:0".parse().unwrap());
    let port = free_port();
    let docs = vec![
        GatewayYaml::new().listener(http("plain", port)).yaml(),
        route("grpc", &["grpc.example.com"], &rule_to("health")),
        h2c_service("health", backend.addr),
    ];
    let _gateway = Gateway::start(desired(&docs));
    let rt = Runtime::new().unwrap();
    rt.block_on(async {
        let channel = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .origin(format!("http://grpc.example.com:{port}").parse().unwrap())
            .connect()
            .await
            .unwrap();
        let mut client = HealthClient::new(channel);
        let mut request = Request::new(check(SERVICE));
        request
            .metadata_mut()
            .insert("x-forwarded-client-cert", "Hash=spoofed".parse().unwrap());
        let response = client.check(request).await.unwrap().into_inner();
        assert_eq!(response.status, WireStatus::Serving as i32);
        let seen = backend.xfcc.lock().unwrap().last().cloned().unwrap();
        assert!(seen.is_empty(), "no identity on a plain port: {seen:?}");

        let error = client.check(check("no.such.Service")).await.unwrap_err();
        assert_eq!(error.code(), Code::NotFound, "{error:?}");
    });
}

#[test]
fn bidirectional_streaming_interleaves_requests_and_responses() {
    let backend = GrpcBackend::start("127.0.0.1:0".parse().unwrap());
    let f = fixture(backend.addr);
    let rt = Runtime::new().unwrap();
    rt.block_on(async {
        let mut client = ServerReflectionClient::new(f.channel("grpc.example.com").await);
        let (requests, outgoing) = tokio::sync::mpsc::channel(4);
        let list = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        requests.send(list.clone()).await.unwrap();
        let mut responses = client
            .server_reflection_info(tokio_stream::wrappers::ReceiverStream::new(outgoing))
            .await
            .unwrap()
            .into_inner();
        // Each answer comes while the request stream stays open: the gateway relays both
        // directions at once.
        for _ in 0..3 {
            let answer = responses.message().await.unwrap().unwrap();
            let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
                panic!("{answer:?}");
            };
            assert!(
                list.service
                    .iter()
                    .any(|s| s.name == "grpc.health.v1.Health"),
                "{list:?}"
            );
            requests.send(list_request()).await.unwrap();
        }
        drop(requests);
        responses.message().await.unwrap().unwrap();
        assert!(responses.message().await.unwrap().is_none(), "ends with OK");
    });
}

fn list_request() -> ServerReflectionRequest {
    ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    }
}

#[test]
fn the_gateway_answers_grpc_calls_with_grpc_statuses() {
    let backend = GrpcBackend::start("127.0.0.1:0".parse().unwrap());
    let f = fixture(backend.addr);
    let rt = Runtime::new().unwrap();
    rt.block_on(async {
        let mut no_route = HealthClient::new(f.channel("nothing.example.com").await);
        let error = no_route.check(check(SERVICE)).await.unwrap_err();
        assert_eq!(error.code(), Code::Unimplemented, "{error:?}");
        // The gateway's own gRPC status, not one the client made up from an HTTP 404.
        assert_eq!(
            error.message(),
            "gateway answered 404 Not Found",
            "{error:?}"
        );

        let mut no_endpoint = HealthClient::new(f.channel("empty.example.com").await);
        let error = no_endpoint.check(check(SERVICE)).await.unwrap_err();
        assert_eq!(error.code(), Code::Unavailable, "{error:?}");
        assert_eq!(
            error.message(),
            "gateway answered 503 Service Unavailable",
            "{error:?}"
        );
    });
    assert_eq!(backend.connections(), 0);
}

/// A gRPC frame: uncompressed, with its length.
fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut frame = vec![0];
    frame.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(message);
    frame
}

/// `HealthCheckResponse { status: SERVING }` as a gRPC frame.
fn serving_frame() -> Vec<u8> {
    grpc_frame(&[0x08, WireStatus::Serving as u8])
}

#[test]
fn an_http1_client_with_a_chunked_body_gets_the_h2c_backends_trailers_as_chunked_trailers() {
    let backend = GrpcBackend::start("127.0.0.1:0".parse().unwrap());
    let f = fixture(backend.addr);
    let config = client_config(&f.pki.ca.pem.cert, Some(&f.pki.client));
    let mut tls = connect(f.port, "grpc.example.com", &config).unwrap();
    // `HealthCheckRequest { service: SERVICE }`, in two chunks.
    let mut message = vec![0x0a, u8::try_from(SERVICE.len()).unwrap()];
    message.extend_from_slice(SERVICE.as_bytes());
    let frame = grpc_frame(&message);
    let (a, b) = frame.split_at(3);
    let mut request = b"POST /grpc.health.v1.Health/Check HTTP/1.1\r\nHost: grpc.example.com\r\n\
content-type: application/grpc\r\nte: trailers\r\ntransfer-encoding: chunked\r\n\
connection: close\r\n\r\n"
        .to_vec();
    for chunk in [a, b] {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    tls.write_all(&request).unwrap();
    let mut raw = Vec::new();
    let _ = tls.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{text:?}");
    assert!(head.contains("transfer-encoding: chunked"), "{text:?}");
    assert!(head.contains("content-type: application/grpc"), "{text:?}");
    let expected = serving_frame();
    let mut chunk = format!("{:x}\r\n", expected.len()).into_bytes();
    chunk.extend_from_slice(&expected);
    chunk.extend_from_slice(b"\r\n0\r\ngrpc-status: 0\r\n");
    assert!(
        body.as_bytes().starts_with(&chunk),
        "chunked body with the grpc-status trailer: {body:?}"
    );
    assert!(body.ends_with("\r\n\r\n"), "{body:?}");
    assert_eq!(backend.connections(), 1);
    assert_eq!(
        f.grpc_requests(),
        1,
        "counted as gRPC from an HTTP/1.1 client too"
    );
}

#[test]
fn curl_over_h2_reaches_an_h2c_backend() {
    let backend = GrpcBackend::start("127.0.0.1:0".parse().unwrap());
    let f = fixture(backend.addr);
    let dir = f.dir.path();
    std::fs::write(dir.join("request"), grpc_frame(&[])).unwrap();
    let out = Command::new("curl")
        .args(["-sS", "--http2", "--max-time", "20"])
        .arg("--cacert")
        .arg(dir.join("ca.pem"))
        .arg("--cert")
        .arg(dir.join("client.pem"))
        .arg("--key")
        .arg(dir.join("client.key"))
        .args([
            "--resolve",
            &format!("grpc.example.com:{}:127.0.0.1", f.port),
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "--data-binary",
        ])
        .arg(format!("@{}", dir.join("request").display()))
        .arg("-o")
        .arg(dir.join("response"))
        .args(["-w", "%{http_code} %{http_version}"])
        .arg(format!(
            "https://grpc.example.com:{}/grpc.health.v1.Health/Check",
            f.port
        ))
        .output()
        .expect("curl is installed (scripts/install-test-deps)");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200 2");
    assert_eq!(
        std::fs::read(dir.join("response")).unwrap(),
        serving_frame()
    );
    assert_eq!(f.grpc_requests(), 1);
}

#[test]
fn concurrent_calls_share_one_backend_connection() {
    let backend = GrpcBackend::start("127.0.0.1:0".parse().unwrap());
    let f = fixture(backend.addr);
    let rt = Runtime::new().unwrap();
    const CALLS: usize = 20;
    rt.block_on(async {
        let channel = f.channel("grpc.example.com").await;
        let calls: Vec<_> = (0..CALLS)
            .map(|_| {
                let mut client = HealthClient::new(channel.clone());
                tokio::spawn(async move { client.check(check(SERVICE)).await })
            })
            .collect();
        for call in calls {
            let response = call.await.unwrap().unwrap().into_inner();
            assert_eq!(response.status, WireStatus::Serving as i32);
        }
    });
    assert_eq!(
        backend.connections(),
        1,
        "{CALLS} concurrent calls on one shard are streams of one connection"
    );
}

#[test]
fn after_the_backend_goes_away_the_next_call_gets_a_fresh_connection() {
    let first = GrpcBackend::start("127.0.0.1:0".parse().unwrap());
    let addr = first.addr;
    let f = fixture(addr);
    let rt = Runtime::new().unwrap();
    let mut client = rt.block_on(async {
        let mut client = HealthClient::new(f.channel("grpc.example.com").await);
        client.check(check(SERVICE)).await.unwrap();
        client.check(check(SERVICE)).await.unwrap();
        client
    });
    assert_eq!(first.connections(), 1);
    first.kill();
    let second = GrpcBackend::start(addr);
    let response = rt
        .block_on(client.check(check(SERVICE)))
        .unwrap()
        .into_inner();
    assert_eq!(response.status, WireStatus::Serving as i32);
    assert_eq!(second.connections(), 1);
}

#[test]
fn a_connection_at_the_backends_stream_limit_makes_the_next_stream_open_another() {
    let backend = GrpcBackend::start_with("127.0.0.1:0".parse().unwrap(), Some(2));
    let f = fixture(backend.addr);
    let rt = Runtime::new().unwrap();
    rt.block_on(async {
        let channel = f.channel("grpc.example.com").await;
        // Watches stay open: each holds its stream on the backend connection.
        let mut watches = Vec::new();
        for _ in 0..5 {
            let mut client = HealthClient::new(channel.clone());
            // Bounded: a stream queued behind a full connection would never be answered.
            let first = tokio::time::timeout(PATIENCE, async {
                let mut watch = client.watch(check(SERVICE)).await.unwrap().into_inner();
                let first = watch.message().await.unwrap().unwrap();
                (watch, first)
            })
            .await;
            let (watch, first) = first.expect("every watch gets its first message");
            assert_eq!(first.status, WireStatus::Serving as i32);
            watches.push(watch);
        }
    });
    assert_eq!(backend.connections(), 3, "5 streams at 2 per connection");
}

#[test]
fn a_backend_that_does_not_speak_h2_is_a_counted_connection_error_and_unavailable() {
    let f = fixture(support::backends::echo());
    let rt = Runtime::new().unwrap();
    rt.block_on(async {
        let mut client = HealthClient::new(f.channel("grpc.example.com").await);
        let error = client.check(check(SERVICE)).await.unwrap_err();
        assert_eq!(error.code(), Code::Unavailable, "{error:?}");
        assert_eq!(error.message(), "gateway answered 502 Bad Gateway");
    });
    wait_until("the failed h2c connection is counted", || {
        f.gateway
            .scrape()
            .lines()
            .filter(|l| l.starts_with("portcullis_backend_h2_connection_errors_total{"))
            .any(|l| !l.ends_with(" 0"))
    });
}

#[test]
fn after_the_backends_goaway_the_connection_closes_and_the_next_call_gets_a_fresh_one() {
    let first = GrpcBackend::start("127.0.0.1:0".parse().unwrap());
    let addr = first.addr;
    let f = fixture(addr);
    let rt = Runtime::new().unwrap();
    let mut client = rt.block_on(async {
        let mut client = HealthClient::new(f.channel("grpc.example.com").await);
        client.check(check(SERVICE)).await.unwrap();
        client
    });
    assert_eq!(first.connections(), 1);
    first.stop_gracefully();
    let second = GrpcBackend::start(addr);
    let response = rt
        .block_on(client.check(check(SERVICE)))
        .unwrap()
        .into_inner();
    assert_eq!(response.status, WireStatus::Serving as i32);
    assert_eq!(second.connections(), 1);
}
