//! The traffic of the upstream conformance tests HTTPRouteBackendProtocolH2C and
//! HTTPRouteBackendProtocolWebSocket (v1.6.1), on real sockets: the base Gateway
//! `same-namespace` (port moved to a free one), the upstream routes, and the base manifests'
//! Service `infra-backend-v1` as written there (port 8080 HTTP, 8081 `kubernetes.io/h2c`, 8082
//! `kubernetes.io/ws`), its EndpointSlice pointing each named port at a backend on loopback.
//!
//! - H2C: an HTTP/2 prior-knowledge request to the HTTP listener reaches the backend over h2c
//!   and gets its 200.
//! - WebSocket: a text and a binary message come back from the backend's echo.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;

use support::backends::named_backend;
use support::conformance::{
    Ports, base_gateway, base_service, endpoint_slice, fixture, h2c_named_backend,
};
use support::*;
use tungstenite::Message;

const BACKEND: &str = "infra-backend-v1";

/// A WebSocket echo server (text and binary messages).
fn websocket_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { return };
            thread::spawn(move || {
                let Ok(mut ws) = tungstenite::accept(tcp) else {
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
    addr
}

/// The base Gateway on a free port with `route_file`, and `infra-backend-v1`'s ports at
/// `backends` (first, second, third); the listener's port.
fn serve(route_file: &str, backends: [SocketAddr; 3]) -> (Gateway, u16) {
    let port = free_port();
    let ports = Ports::new(&[(80, port)]);
    let docs = vec![
        ports.apply(&base_gateway("same-namespace")),
        fixture(route_file),
        base_service(BACKEND),
        endpoint_slice(
            BACKEND,
            &[
                (Some("first-port"), backends[0].port()),
                (Some("second-port"), backends[1].port()),
                (Some("third-port"), backends[2].port()),
            ],
        ),
    ];
    (Gateway::start(desired(&docs)), port)
}

#[test]
fn httproute_backend_protocol_h2c() {
    let http1 = named_backend("not the h2c port");
    let (_gw, port) = serve(
        "httproute-backend-protocol-h2c.yaml",
        [http1, h2c_named_backend(BACKEND), http1],
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (status, body) = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(connection);
        let mut client = client.ready().await.unwrap();
        let request = http::Request::get(format!("http://127.0.0.1:{port}/"))
            .body(())
            .unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        let response = response.await.unwrap();
        let status = response.status().as_u16();
        let mut body = response.into_body();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            body.flow_control().release_capacity(chunk.len()).unwrap();
            bytes.extend_from_slice(&chunk);
        }
        (status, String::from_utf8(bytes).unwrap())
    });
    assert_eq!((status, body.as_str()), (200, BACKEND));
}

#[test]
fn httproute_backend_protocol_websocket() {
    let http1 = named_backend("not the WebSocket port");
    let (_gw, port) = serve(
        "httproute-backend-protocol-websocket.yaml",
        [http1, h2c_named_backend(BACKEND), websocket_echo()],
    );
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut request = tungstenite::client::IntoClientRequest::into_client_request(format!(
        "ws://127.0.0.1:{port}/ws"
    ))
    .unwrap();
    request
        .headers_mut()
        .insert("origin", "ws://gateway/websocket".parse().unwrap());
    let (mut ws, _) = tungstenite::client::client(request, tcp).unwrap();
    ws.send(Message::text("Websocket Support!")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("Websocket Support!"));
    let binary = vec![1_u8, 2, 3, 4, 5, 6, 7];
    ws.send(Message::binary(binary.clone())).unwrap();
    assert_eq!(ws.read().unwrap(), Message::binary(binary));
    ws.close(None).unwrap();
}
