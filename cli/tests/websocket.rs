//! WebSocket through the gateway on real sockets: a tungstenite echo server as the backend,
//! tungstenite clients over rustls with the guide's client certificate, over HTTP/1.1
//! (`Upgrade: websocket`) and over HTTP/2 (extended CONNECT, an `h2` crate client).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use portcullis_runtime::limits::Limits;
use portcullis_runtime::metrics::{RequestProtocol, TunnelEnd};
use portcullis_runtime::pki::{GuidePki, KeyKind};
use support::backends::{RawRequest, echo, raw_backend};
use support::*;
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::server::{Request as WsRequest, Response as WsResponse};
use tungstenite::protocol::Role;
use tungstenite::{Message, WebSocket};

/// A gateway on one HTTPS port that requires a certificate from the guide's CA, one listener
/// (`ws.example.com`) routing everything to `backend`.
struct Fixture {
    pki: GuidePki,
    port: u16,
    gateway: Gateway,
}

fn fixture(backend: SocketAddr, limits: Limits) -> Fixture {
    let pki = GuidePki::generate(KeyKind::EcdsaP256).unwrap();
    let port = free_port();
    let docs = vec![
        GatewayYaml::new()
            .per_port(port, valid_only(&["ca"]))
            .listener(https("ws", port, "server-cert").hostname("ws.example.com"))
            .yaml(),
        route("ws", &[], &rule_to("ws")),
        server_secret("server-cert", &pki.server),
        ca_config_map("ca", &pki.ca.pem.cert),
        service("ws", backend),
    ];
    let gateway = Gateway::start_with_limits(desired(&docs), limits);
    Fixture { pki, port, gateway }
}

/// The header fields of every opening handshake a [`ws_echo`] backend accepted.
type Seen = Arc<Mutex<Vec<Vec<(String, String)>>>>;

/// A tungstenite WebSocket server that echoes every text and binary message, records the
/// handshake's fields, and accepts the `chat` subprotocol when offered.
fn ws_echo() -> (SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let record = Arc::clone(&seen);
    thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { return };
            let record = Arc::clone(&record);
            thread::spawn(move || {
                // The error type is tungstenite's (its refusal response), not ours to box.
                #[allow(clippy::result_large_err)]
                let callback = |request: &WsRequest, mut response: WsResponse| {
                    let fields = request
                        .headers()
                        .iter()
                        .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
                        .collect();
                    record.lock().unwrap().push(fields);
                    if request.headers().get("sec-websocket-protocol").is_some() {
                        response
                            .headers_mut()
                            .insert("sec-websocket-protocol", "chat".parse().unwrap());
                    }
                    Ok(response)
                };
                let Ok(mut ws) = tungstenite::accept_hdr(tcp, callback) else {
                    return;
                };
                while let Ok(message) = ws.read() {
                    if (message.is_text() || message.is_binary()) && ws.send(message).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// A TLS connection to the gateway with the guide's client certificate (ALPN `http/1.1`).
fn tls(f: &Fixture) -> TlsStream {
    let config = client_config(&f.pki.ca.pem.cert, Some(&f.pki.client));
    connect(f.port, "ws.example.com", &config).unwrap()
}

/// A WebSocket client over HTTP/1.1 through the gateway, with `extra` handshake fields.
fn ws_client(
    f: &Fixture,
    extra: &[(&'static str, &str)],
) -> Result<WebSocket<TlsStream>, tungstenite::Error> {
    let mut request = format!("wss://ws.example.com:{}/chat", f.port)
        .into_client_request()
        .unwrap();
    for (name, value) in extra {
        request.headers_mut().append(*name, value.parse().unwrap());
    }
    match tungstenite::client::client(request, tls(f)) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(e)) => Err(e),
        Err(tungstenite::HandshakeError::Interrupted(_)) => panic!("blocking handshake"),
    }
}

/// `(tunnels open, tunnels ended for this reason)`.
fn tunnels(f: &Fixture, end: TunnelEnd) -> (u64, u64) {
    let sample = f.gateway.metrics();
    (sample.websocket_open, sample.websocket_ended[end.index()])
}

/// Requests of `protocol` the gateway answered with `status`, over all routes.
fn requests(f: &Fixture, protocol: RequestProtocol, status: u16) -> u64 {
    f.gateway
        .metrics()
        .requests
        .values()
        .map(|(codes, _)| codes.get(&(protocol, status)).copied().unwrap_or(0))
        .sum()
}

#[test]
fn text_and_binary_messages_echo_through_the_gateway_over_http1() {
    let (backend, _) = ws_echo();
    let f = fixture(backend, Limits::default());
    let mut ws = ws_client(&f, &[]).unwrap();
    ws.send(Message::text("hello through the gate")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("hello through the gate"));
    // Larger than any single read or TLS record: the tunnel streams it in pieces.
    let binary: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(binary.clone())).unwrap();
    assert_eq!(ws.read().unwrap(), Message::binary(binary));
    assert_eq!(tunnels(&f, TunnelEnd::Closed), (1, 0), "one tunnel open");
    ws.close(None).unwrap();
    wait_until("the handshake counted as websocket 101", || {
        requests(&f, RequestProtocol::WebSocket, 101) == 1
    });
    // The backend answers the close; the client then ends its TLS connection cleanly, and
    // both sides have closed their direction. (A client that just drops the socket, without
    // TLS close_notify, counts as `error`: its stream was cut.)
    while ws.read().is_ok() {}
    let stream = ws.get_mut();
    stream.conn.send_close_notify();
    let _ = stream.flush();
    wait_until("the tunnel counted as closed", || {
        tunnels(&f, TunnelEnd::Closed) == (0, 1)
    });
    assert!(
        f.gateway
            .scrape()
            .contains("portcullis_websocket_tunnels_ended_total{reason=\"closed\"} 1")
    );
}

#[test]
fn the_backend_sees_our_identity_headers_not_the_clients_and_the_subprotocol_passes() {
    let (backend, seen) = ws_echo();
    let f = fixture(backend, Limits::default());
    let mut ws = ws_client(
        &f,
        &[
            ("x-forwarded-client-cert", "Hash=spoofed"),
            ("client-cert", ":c3Bvb2Y=:"),
            ("sec-websocket-protocol", "chat"),
        ],
    )
    .unwrap();
    ws.send(Message::text("ping")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("ping"));
    let handshakes = seen.lock().unwrap().clone();
    assert_eq!(handshakes.len(), 1);
    let fields = &handshakes[0];
    let xfcc: Vec<&str> = fields
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("x-forwarded-client-cert"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(xfcc.len(), 1, "{fields:?}");
    assert!(xfcc[0].contains("client.example.com"), "{}", xfcc[0]);
    assert!(
        fields
            .iter()
            .all(|(_, v)| !v.contains("spoofed") && !v.contains("c3Bvb2Y")),
        "{fields:?}"
    );
    let protocol = fields
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-protocol"));
    assert_eq!(protocol.map(|(_, v)| v.as_str()), Some("chat"));
}

#[test]
fn a_backend_that_refuses_the_upgrade_gives_the_client_its_response() {
    let received: Arc<Mutex<Vec<RawRequest>>> = Arc::default();
    let record = Arc::clone(&received);
    let backend = raw_backend(move |request, tcp| {
        record.lock().unwrap().push(request.clone());
        let _ = tcp.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 10\r\n\r\nno socket\n");
        support::backends::After::Close
    });
    let f = fixture(backend, Limits::default());
    match ws_client(&f, &[]) {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403);
            assert_eq!(response.body().as_deref(), Some(&b"no socket\n"[..]));
        }
        Err(e) => panic!("expected the backend's 403, got {e}"),
        Ok(_) => panic!("expected the backend's 403, got a WebSocket"),
    }
    // The backend was asked for the upgrade (and refused it).
    let head = received.lock().unwrap()[0].head.to_ascii_lowercase();
    assert!(head.contains("upgrade: websocket\r\n"), "{head}");
    assert!(head.contains("connection: upgrade\r\n"), "{head}");
    assert!(head.contains("sec-websocket-key: "), "{head}");
    wait_until("the refused handshake counted as websocket 403", || {
        requests(&f, RequestProtocol::WebSocket, 403) == 1
    });
}

#[test]
fn a_malformed_upgrade_gets_400_without_reaching_the_backend() {
    let f = fixture(echo(), Limits::default());
    let upgrade = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n";
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    for request in [
        // A body with the upgrade.
        format!(
            "GET /get HTTP/1.1\r\nHost: ws.example.com\r\n{upgrade}{key}Content-Length: 3\r\n\r\nabc"
        ),
        // No key.
        format!("GET /get HTTP/1.1\r\nHost: ws.example.com\r\n{upgrade}\r\n"),
        // Not a GET.
        format!("POST /get HTTP/1.1\r\nHost: ws.example.com\r\n{upgrade}{key}\r\n"),
    ] {
        let mut http = Http::new(tls(&f));
        let response = http.request(request.as_bytes()).unwrap();
        assert_eq!(response.status, 400, "{request}");
        assert!(response.closes(), "{request}");
    }
}

#[test]
fn an_idle_tunnel_is_closed() {
    let (backend, _) = ws_echo();
    let limits = Limits {
        websocket_idle_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let f = fixture(backend, limits);
    let mut ws = ws_client(&f, &[]).unwrap();
    ws.send(Message::text("one")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("one"));
    // Nothing more either way: the gateway closes the tunnel (the socket's read timeout,
    // PATIENCE, only bounds the wait).
    match ws.read() {
        Err(tungstenite::Error::Io(e))
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            panic!("the tunnel stayed open: {e}")
        }
        Err(_) => {}
        Ok(message) => panic!("unexpected {message:?}"),
    }
    wait_until("the tunnel counted as idle", || {
        tunnels(&f, TunnelEnd::Idle) == (0, 1)
    });
}

#[test]
fn a_plain_http_listener_tunnels_too() {
    let (backend, seen) = ws_echo();
    let port = free_port();
    let docs = vec![
        GatewayYaml::new().listener(http("plain", port)).yaml(),
        route("ws", &[], &rule_to("ws")),
        service("ws", backend),
    ];
    let _gateway = Gateway::start(desired(&docs));
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    let (mut ws, _) =
        tungstenite::client::client(format!("ws://ws.example.com:{port}/chat"), tcp).unwrap();
    ws.send(Message::text("in the clear")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("in the clear"));
    ws.close(None).unwrap();
    let fields = seen.lock().unwrap()[0].clone();
    assert!(
        fields
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case("x-forwarded-proto") && v == "http"),
        "{fields:?}"
    );
}

#[test]
fn a_drain_ends_open_tunnels_at_its_deadline_and_the_process_exits() {
    let (backend, _) = ws_echo();
    let pki = GuidePki::generate(KeyKind::EcdsaP256).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ports = (free_port(), free_port());
    for (i, doc) in guide_manifests(ports, &pki.ca.pem.cert, &pki.server, backend, false)
        .iter()
        .enumerate()
    {
        std::fs::write(dir.path().join(format!("{i}.yaml")), doc).unwrap();
    }
    let mut server = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "--gateway-class", "agentgateway", "--shards", "1"])
        .args(["--bind-address", "127.0.0.1", "--drain-timeout", "300ms"])
        .args(["--admin", "off", "--admin-config", "off"])
        .arg("--manifests")
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let config = client_config(&pki.ca.pem.cert, Some(&pki.client));
    wait_until("the gateway serves", || {
        connect(ports.0, "example.com", &config).is_ok()
    });
    let request = format!("wss://example.com:{}/chat", ports.0);
    let tls = connect(ports.0, "example.com", &config).unwrap();
    let (mut ws, _) = tungstenite::client::client(request, tls).unwrap();
    ws.send(Message::text("before the drain")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("before the drain"));

    let killed = std::process::Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    wait_until("the gateway exits after its drain deadline", || {
        server.try_wait().unwrap().is_some()
    });
    assert_eq!(server.wait().unwrap().code(), Some(0));
    // The tunnel ended with it (the socket's read timeout, PATIENCE, only bounds the wait).
    match ws.read() {
        Err(tungstenite::Error::Io(e))
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            panic!("the tunnel outlived the gateway: {e}")
        }
        Err(_) => {}
        Ok(message) => panic!("unexpected {message:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 extended CONNECT (RFC 8441)
// ---------------------------------------------------------------------------------------------

/// Bytes between a tungstenite client (framing, masking) and the h2 stream that carries them.
#[derive(Default)]
struct Pipe {
    incoming: VecDeque<u8>,
    outgoing: Vec<u8>,
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.incoming.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.incoming.read(buf)
    }
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.outgoing.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Runs `test` on a current-thread tokio runtime with an HTTP/2 client connected to the
/// gateway (the guide's client certificate, ALPN `h2`).
fn with_h2_client<F, T>(f: &Fixture, test: F) -> T
where
    F: AsyncFnOnce(h2::client::SendRequest<bytes::Bytes>) -> T,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", f.port))
            .await
            .unwrap();
        let mut config = (*client_config(&f.pki.ca.pem.cert, Some(&f.pki.client))).clone();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let name = rustls::pki_types::ServerName::try_from("ws.example.com").unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .unwrap();
        let (client, connection) = h2::client::handshake(tls).await.unwrap();
        tokio::spawn(async move {
            let _ = connection.await;
        });
        // The server's SETTINGS (extended CONNECT among them) arrive with its first frames.
        let mut client = client.ready().await.unwrap();
        for _ in 0..100 {
            if client.is_extended_connect_protocol_enabled() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            client = client.ready().await.unwrap();
        }
        tokio::time::timeout(PATIENCE, test(client)).await.unwrap()
    })
}

fn connect_request(f: &Fixture, protocol: Option<&'static str>) -> ::http::Request<()> {
    let uri = match protocol {
        Some(_) => format!("https://ws.example.com:{}/chat", f.port),
        None => format!("ws.example.com:{}", f.port),
    };
    let mut request = ::http::Request::builder()
        .method(::http::Method::CONNECT)
        .uri(uri)
        .header("sec-websocket-version", "13")
        .header("sec-websocket-protocol", "chat")
        .body(())
        .unwrap();
    if let Some(protocol) = protocol {
        request
            .extensions_mut()
            .insert(h2::ext::Protocol::from_static(protocol));
    }
    request
}

/// Sends `message` on the stream as a tungstenite client frames it and reads the echo.
async fn echo_over_h2(
    ws: &mut WebSocket<Pipe>,
    send: &mut h2::SendStream<bytes::Bytes>,
    recv: &mut h2::RecvStream,
    message: Message,
) -> Message {
    ws.send(message).unwrap();
    let frame = std::mem::take(&mut ws.get_mut().outgoing);
    send.send_data(frame.into(), false).unwrap();
    loop {
        match ws.read() {
            Ok(message) => return message,
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("{e}"),
        }
        let data = recv.data().await.expect("stream open").unwrap();
        recv.flow_control().release_capacity(data.len()).unwrap();
        ws.get_mut().incoming.extend(data);
    }
}

#[test]
fn websocket_over_h2_extended_connect_echoes_and_ends_with_the_stream() {
    let (backend, seen) = ws_echo();
    let f = fixture(backend, Limits::default());
    with_h2_client(&f, async |mut client| {
        assert!(client.is_extended_connect_protocol_enabled());
        let (response, mut send) = client
            .send_request(connect_request(&f, Some("websocket")), false)
            .unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["sec-websocket-protocol"], "chat");
        let mut recv = response.into_body();
        let mut ws = WebSocket::from_raw_socket(Pipe::default(), Role::Client, None);
        let text = Message::text("over h2");
        assert_eq!(
            echo_over_h2(&mut ws, &mut send, &mut recv, text.clone()).await,
            text
        );
        // Beyond the stream's initial windows: flow control both ways.
        let binary = Message::binary((0..300_000u32).map(|i| (i % 253) as u8).collect::<Vec<_>>());
        assert_eq!(
            echo_over_h2(&mut ws, &mut send, &mut recv, binary.clone()).await,
            binary
        );
        // Our END_STREAM half-closes the backend connection; the backend then closes, and the
        // stream ends.
        send.send_data(bytes::Bytes::new(), true).unwrap();
        while let Some(data) = recv.data().await {
            data.unwrap();
        }
    });
    let fields = seen.lock().unwrap()[0].clone();
    let get = |name: &str| {
        fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    assert!(
        get("x-forwarded-client-cert")
            .unwrap()
            .contains("client.example.com")
    );
    assert_eq!(get("sec-websocket-version").as_deref(), Some("13"));
    wait_until("the stream counted as websocket 200", || {
        requests(&f, RequestProtocol::WebSocket, 200) == 1
    });
}

#[test]
fn extended_connect_is_advertised_and_other_connects_are_refused() {
    let (backend, seen) = ws_echo();
    let f = fixture(backend, Limits::default());
    with_h2_client(&f, async |mut client| {
        assert!(
            client.is_extended_connect_protocol_enabled(),
            "SETTINGS_ENABLE_CONNECT_PROTOCOL"
        );
        for protocol in [None, Some("connect-udp")] {
            let (response, _send) = client
                .send_request(connect_request(&f, protocol), false)
                .unwrap();
            let response = response.await.unwrap();
            assert_eq!(response.status(), 501, "{protocol:?}");
        }
    });
    assert!(seen.lock().unwrap().is_empty());
}
