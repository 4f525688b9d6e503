//! Test harness for loopback integration tests: a real data plane (shards, sockets, rustls) in
//! this process, configured from manifests through the real translate and compile, and a
//! blocking rustls client.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use portcullis_controller_shim::manifests::{LoadedManifests, load_text};
use portcullis_controller_shim::{TranslateOptions, translate};
use portcullis_core::desired::DesiredConfig;
use portcullis_runtime::demo;
use portcullis_runtime::limits::Limits;
use portcullis_runtime::pki::CertKeyPem;
use portcullis_runtime::publish::Publisher;
use portcullis_runtime::shard::{DriverChoice, ShardOptions, Shards};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// How long a test waits for something that should happen at once (a snapshot applied, a
/// socket accepting). Not a timing assertion: only a bound so a broken build fails instead of
/// hanging.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A port nobody listens on right now (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Translates YAML documents as `portcullis serve` would (`gateway_class` served without a
/// GatewayClass object).
pub fn translate_yaml(docs: &[&str], gateway_class: &str) -> DesiredConfig {
    let mut loaded = LoadedManifests::default();
    for (i, doc) in docs.iter().enumerate() {
        load_text(Path::new(&format!("doc-{i}.yaml")), doc, false, &mut loaded).unwrap();
    }
    let mut options = TranslateOptions::new(portcullis_controller_shim::check::now());
    options.extra_gateway_class = Some(gateway_class.to_owned());
    translate(&loaded.store, &options).desired
}

/// A running data plane.
pub struct Gateway {
    publisher: Publisher,
    shards: Option<Shards>,
}

impl Gateway {
    pub fn start(desired: DesiredConfig) -> Gateway {
        Self::start_with(desired, 1, DriverChoice::Auto, Limits::default())
    }

    pub fn start_with(
        desired: DesiredConfig,
        shard_count: usize,
        driver: DriverChoice,
        limits: Limits,
    ) -> Gateway {
        let (publisher, snapshots) = Publisher::new();
        let generation = publisher.publish(desired);
        let shards = Shards::start(
            vec![None; shard_count],
            ShardOptions {
                driver,
                bind_address: Some("127.0.0.1".parse().unwrap()),
                limits,
            },
            snapshots,
        )
        .unwrap();
        let gw = Gateway {
            publisher,
            shards: Some(shards),
        };
        gw.wait_applied(generation);
        gw
    }

    /// Publishes a new config and waits until every shard applied it.
    pub fn publish(&self, desired: DesiredConfig) -> u64 {
        let generation = self.publisher.publish(desired);
        self.wait_applied(generation);
        generation
    }

    pub fn wait_applied(&self, generation: u64) {
        let deadline = Instant::now() + PATIENCE;
        let shards = self.shards.as_ref().unwrap();
        while shards
            .status
            .iter()
            .any(|s| s.applied_generation.load(Ordering::Acquire) < generation)
        {
            assert!(
                Instant::now() < deadline,
                "shards did not apply generation {generation}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        // Dropping the publisher closes the snapshot channel: shards stop and exit.
        let (replacement, _) = Publisher::new();
        drop(std::mem::replace(&mut self.publisher, replacement));
        if let Some(shards) = self.shards.take() {
            shards.join();
        }
    }
}

/// The guide's manifests for the given ports, CA and server certificate, routing
/// `example.com` to `backend`.
pub fn guide_manifests(
    ports: (u16, u16),
    ca_pem: &str,
    server: &CertKeyPem,
    backend: SocketAddr,
    per_port: bool,
) -> Vec<String> {
    let gateway = if per_port {
        demo::guide_gateway_per_port()
    } else {
        demo::GUIDE_GATEWAY.to_owned()
    };
    let gateway = gateway
        .replace("8443", &ports.0.to_string())
        .replace("8444", &ports.1.to_string());
    vec![
        gateway,
        demo::GUIDE_ROUTE.to_owned(),
        demo::tls_secret(
            "agentgateway-system",
            "https-cert",
            &server.cert,
            &server.key,
        ),
        demo::ca_config_map("agentgateway-system", "ca-cert", ca_pem),
        demo::service_with_endpoint("httpbin", "httpbin", 8000, backend),
    ]
}

pub fn refs(docs: &[String]) -> Vec<&str> {
    docs.iter().map(String::as_str).collect()
}

/// A rustls client config trusting `ca_pem`, presenting `client` if given.
pub fn client_config(ca_pem: &str, client: Option<&CertKeyPem>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = ClientConfig::builder().with_root_certificates(roots);
    let mut config = match client {
        Some(c) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(c.cert.as_bytes())
                    .map(Result::unwrap)
                    .collect();
            let key = PrivateKeyDer::from_pem_slice(c.key.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// Connects and completes the handshake (TLS 1.3: the server's verdict on the client
/// certificate arrives with the first read, so the caller sends a request to see it).
pub fn connect(port: u16, sni: &str, config: &Arc<ClientConfig>) -> io::Result<TlsStream> {
    let tcp = TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(PATIENCE))?;
    let name = ServerName::try_from(sni.to_owned()).map_err(io::Error::other)?;
    let conn = ClientConnection::new(Arc::clone(config), name).map_err(io::Error::other)?;
    let mut stream = StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

/// A parsed HTTP/1.1 response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `request` (raw bytes) and reads one response (Content-Length or chunked bodies, or
/// until close).
pub fn exchange<S: Read + Write>(stream: &mut S, request: &[u8]) -> io::Result<Response> {
    stream.write_all(request)?;
    stream.flush()?;
    read_response(stream)
}

pub fn read_response<S: Read>(stream: &mut S) -> io::Result<Response> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line {status_line:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = buf[head_end..].to_vec();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    if status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok(Response {
            status,
            headers,
            body: Vec::new(),
        });
    }
    if let Some(len) = header("content-length") {
        let len: usize = len.parse().map_err(io::Error::other)?;
        while body.len() < len {
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            body.extend_from_slice(&chunk[..n]);
        }
        body.truncate(len);
    } else if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            if find(&body, b"0\r\n\r\n").is_some_and(|i| i == 0 || body[..i].ends_with(b"\r\n")) {
                break;
            }
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            body.extend_from_slice(&chunk[..n]);
        }
        body = dechunk(&body);
    } else {
        loop {
            match stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => body.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = find(data, b"\r\n") {
        let size_text = String::from_utf8_lossy(&data[..i]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        out.extend_from_slice(&data[i + 2..i + 2 + size]);
        data = &data[i + 2 + size + 2..];
    }
    out
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `GET path` with `Host: host` over a fresh TLS connection.
pub fn https_get(
    port: u16,
    sni: &str,
    host: &str,
    path: &str,
    config: &Arc<ClientConfig>,
) -> io::Result<Response> {
    let mut stream = connect(port, sni, config)?;
    exchange(
        &mut stream,
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
    )
}

/// The TLS alert a failed exchange ended with, if that is why it failed.
pub fn alert_of(err: &io::Error) -> Option<rustls::AlertDescription> {
    let inner = err.get_ref()?.downcast_ref::<rustls::Error>()?;
    match inner {
        rustls::Error::AlertReceived(alert) => Some(*alert),
        _ => None,
    }
}
