//! Test harness for loopback integration tests: a real data plane (shards, sockets, rustls) in
//! this process, configured from manifests through the real translate and compile, blocking
//! rustls clients, and small backends.
//!
//! - [`manifests`]: YAML for Gateways, routes, Secrets, ConfigMaps and Services.
//! - [`backends`]: the echo backend and hand-written raw HTTP/1.1 backends.
//! - [`conformance`]: the upstream conformance suite's manifests and backends on loopback.
//! - here: the in-process [`Gateway`], TLS clients, and an HTTP/1.1 response reader.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod backends;
pub mod conformance;
pub mod manifests;

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portcullis_core::desired::DesiredConfig;
use portcullis_runtime::limits::Limits;
use portcullis_runtime::pki::CertKeyPem;
use portcullis_runtime::publish::Publisher;
use portcullis_runtime::shard::{DriverChoice, ShardOptions, Shards};
use portcullis_translate::manifests::{LoadedManifests, load_text};
use portcullis_translate::{TranslateOptions, translate};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    AlertDescription, ClientConfig, ClientConnection, DigitallySignedStruct, HandshakeKind,
    RootCertStore, SignatureScheme, StreamOwned, SupportedProtocolVersion,
};

#[allow(unused_imports)] // not every test file writes manifests
pub use manifests::*;

/// How long a test waits for something that should happen at once (a snapshot applied, a
/// socket accepting, a response). Not a timing assertion: only a bound so a broken build fails
/// instead of hanging.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A port for a gateway listener: nobody listens on it now, and it was never handed out
/// before in this process.
///
/// Shards bind with `SO_REUSEPORT`, so a port handed out twice (to concurrent tests, or to
/// test suites running side by side on one machine) would be bound by both gateways, which
/// would then share its connections. And a port released by a `bind(0)` probe can be taken by
/// the next `bind(0)` (a test backend) before the gateway binds it. Hence ports come from
/// below the kernel's ephemeral range, where no `bind(0)` and no outgoing connection ever
/// lands, starting at a random point and skipping ports something listens on.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let range = listener_port_range();
    let span = u64::from(range.end - range.start);
    let mut next = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    loop {
        let port = range.start + u16::try_from(next % span).unwrap();
        next = next.wrapping_add(1);
        if HANDED_OUT.lock().unwrap().contains(&port)
            || TcpListener::bind(("127.0.0.1", port)).is_err()
        {
            continue;
        }
        if HANDED_OUT.lock().unwrap().insert(port) {
            return port;
        }
    }
}

/// Up to 12,000 ports just below the kernel's ephemeral port range.
fn listener_port_range() -> std::ops::Range<u16> {
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let start = ephemeral_start.saturating_sub(12_000).max(1024);
    start..ephemeral_start.max(start + 1000)
}

/// Translates YAML documents as `portcullis serve` would (`gateway_class` served without a
/// GatewayClass object).
pub fn translate_yaml(docs: &[&str], gateway_class: &str) -> DesiredConfig {
    let mut loaded = LoadedManifests::default();
    for (i, doc) in docs.iter().enumerate() {
        load_text(Path::new(&format!("doc-{i}.yaml")), doc, false, &mut loaded).unwrap();
    }
    let mut options = TranslateOptions::new(portcullis_translate::check::now());
    options.extra_gateway_class = Some(gateway_class.to_owned());
    translate(&loaded.store, &options).desired
}

/// Translates documents of the test gateway class ([`manifests::CLASS`]).
pub fn desired(docs: &[String]) -> DesiredConfig {
    translate_yaml(&refs(docs), manifests::CLASS)
}

/// A running data plane.
pub struct Gateway {
    publisher: Publisher,
    shards: Option<Shards>,
}

impl Gateway {
    /// One shard, the default driver and limits.
    pub fn start(desired: DesiredConfig) -> Gateway {
        Self::start_with(desired, 1, DriverChoice::Auto, Limits::default())
    }

    /// One shard and the default driver, with these limits.
    pub fn start_with_limits(desired: DesiredConfig, limits: Limits) -> Gateway {
        Self::start_with(desired, 1, DriverChoice::Auto, limits)
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

    /// Every shard's metrics, summed (per-shard series kept apart).
    pub fn metrics(&self) -> portcullis_runtime::metrics::MetricsSample {
        self.shards
            .as_ref()
            .unwrap()
            .handles
            .sample_metrics(PATIENCE)
    }

    /// The Prometheus text `/metrics` would serve for the shards' metrics.
    pub fn scrape(&self) -> String {
        portcullis_runtime::metrics::render(
            &self.metrics(),
            &portcullis_runtime::metrics::ProcessMetrics::default(),
        )
    }

    pub fn wait_applied(&self, generation: u64) {
        let shards = self.shards.as_ref().unwrap();
        wait_until("every shard applies the snapshot", || {
            shards
                .status
                .iter()
                .all(|s| s.applied_generation.load(Ordering::Acquire) >= generation)
        });
    }

    /// The drivers the shards run (`None` for a shard not started yet).
    pub fn drivers(&self) -> Vec<Option<portcullis_runtime::shard::Driver>> {
        let shards = self.shards.as_ref().unwrap();
        shards.status.iter().map(|s| s.driver()).collect()
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

/// Polls `condition` until it holds; panics after [`PATIENCE`] (a bound against hangs, not a
/// timing assertion).
pub fn wait_until(what: &str, condition: impl FnMut() -> bool) {
    wait_until_within(what, PATIENCE, condition);
}

/// [`wait_until`] for a condition that takes `patience` to come about by design (a timer of
/// the gateway's own).
pub fn wait_until_within(what: &str, patience: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + patience;
    while !condition() {
        assert!(Instant::now() < deadline, "gave up waiting: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The value of `series` (name and labels, exactly as rendered) in Prometheus text; `None`
/// when the text has no such series.
pub fn series_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

/// The guide's manifests for the given ports, CA and server certificate, routing
/// `example.com` to `backend`.
pub fn guide_manifests(
    ports: (u16, u16),
    ca_pem: &str,
    server: &CertKeyPem,
    backend: std::net::SocketAddr,
    per_port: bool,
) -> Vec<String> {
    use portcullis_runtime::demo;
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

// ---------------------------------------------------------------------------------------------
// TLS clients
// ---------------------------------------------------------------------------------------------

/// How the client checks the server's certificate.
enum ServerCheck<'a> {
    /// Against these CAs (PEM) and the server name.
    Roots(&'a str),
    /// Not at all, as `curl -k` (the tests look at which certificate came instead).
    Any,
}

fn build_client(
    server: ServerCheck<'_>,
    client: Option<&CertKeyPem>,
    versions: &[&'static SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    build_client_with(
        rustls::crypto::aws_lc_rs::default_provider(),
        server,
        client,
        versions,
    )
}

fn build_client_with(
    provider: rustls::crypto::CryptoProvider,
    server: ServerCheck<'_>,
    client: Option<&CertKeyPem>,
    versions: &[&'static SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .unwrap();
    let builder = match server {
        ServerCheck::Roots(ca_pem) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
                roots.add(cert.unwrap()).unwrap();
            }
            builder.with_root_certificates(roots)
        }
        ServerCheck::Any => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert)),
    };
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

/// A rustls client config trusting `ca_pem`, presenting `client` if given (TLS 1.3 or 1.2).
pub fn client_config(ca_pem: &str, client: Option<&CertKeyPem>) -> Arc<ClientConfig> {
    build_client(ServerCheck::Roots(ca_pem), client, rustls::DEFAULT_VERSIONS)
}

/// Like [`client_config`], TLS 1.2 only.
pub fn client_config_tls12(ca_pem: &str, client: Option<&CertKeyPem>) -> Arc<ClientConfig> {
    build_client(
        ServerCheck::Roots(ca_pem),
        client,
        &[&rustls::version::TLS12],
    )
}

/// Like [`client_config`], with the key exchange groups and suites of `provider`.
pub fn client_config_with_provider(
    provider: rustls::crypto::CryptoProvider,
    ca_pem: &str,
    client: Option<&CertKeyPem>,
) -> Arc<ClientConfig> {
    build_client_with(
        provider,
        ServerCheck::Roots(ca_pem),
        client,
        rustls::DEFAULT_VERSIONS,
    )
}

/// A client that accepts any server certificate (as `curl -k`), presenting `client` if given.
pub fn any_server_client_config(client: Option<&CertKeyPem>) -> Arc<ClientConfig> {
    build_client(ServerCheck::Any, client, rustls::DEFAULT_VERSIONS)
}

/// Like [`any_server_client_config`] without a certificate, offering exactly `suites`, in
/// that order of preference.
pub fn any_server_client_offering(
    suites: &[rustls::SupportedCipherSuite],
    versions: &[&'static SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let provider = rustls::crypto::CryptoProvider {
        cipher_suites: suites.to_vec(),
        ..rustls::crypto::aws_lc_rs::default_provider()
    };
    build_client_with(provider, ServerCheck::Any, None, versions)
}

/// A client that presents `cert` but signs the handshake with `key`, which does not belong to
/// it: someone replaying a certificate they copied without its private key.
pub fn impostor_client_config(
    ca_pem: &str,
    cert: &CertKeyPem,
    key: &CertKeyPem,
) -> Arc<ClientConfig> {
    presenting_client_config(ca_pem, &cert.cert, &key.key, rustls::DEFAULT_VERSIONS)
}

/// A client presenting `client` (its certificate and key) without rustls' client-side check
/// that they match, which parses the certificate and so refuses X.509 v1 ones.
pub fn unchecked_client_config(
    ca_pem: &str,
    client: &CertKeyPem,
    versions: &[&'static SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    presenting_client_config(ca_pem, &client.cert, &client.key, versions)
}

fn presenting_client_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    versions: &[&'static SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .map(Result::unwrap)
        .collect();
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let signing_key = provider
        .key_provider
        .load_private_key(PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap())
        .unwrap();
    let certified = Arc::new(rustls::sign::CertifiedKey::new(chain, signing_key));
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(ca.unwrap()).unwrap();
    }
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_client_cert_resolver(Arc::new(PresentAlways(certified)));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

#[derive(Debug)]
struct PresentAlways(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for PresentAlways {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The same client config without the SNI extension in its ClientHello.
pub fn without_sni(config: &Arc<ClientConfig>) -> Arc<ClientConfig> {
    let mut config = (**config).clone();
    config.enable_sni = false;
    Arc::new(config)
}

#[derive(Debug)]
struct AcceptAnyServerCert;

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
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

/// The leaf certificate the server presented on `stream`.
pub fn server_leaf(stream: &TlsStream) -> CertificateDer<'static> {
    stream.conn.peer_certificates().unwrap()[0].clone()
}

/// The DER of the first certificate in `pem`.
pub fn der_of(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

/// Whether the handshake on `stream` resumed a session.
pub fn resumed(stream: &TlsStream) -> bool {
    stream.conn.handshake_kind() == Some(HandshakeKind::Resumed)
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 over any stream
// ---------------------------------------------------------------------------------------------

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

    /// The echo backend's JSON answer.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body_text()))
    }

    /// A request header as the echo backend received it (names compared case-insensitively).
    pub fn echoed_header(&self, name: &str) -> Option<String> {
        let json = self.json();
        let headers = json["headers"].as_object()?;
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str().unwrap_or_default().to_owned())
    }

    /// Whether the server said it closes the connection after this response.
    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// One HTTP/1.1 client connection: writes raw requests, reads responses, keeping bytes that
/// arrived early (a pipelined response) for the next read.
pub struct Http<S> {
    pub stream: S,
    pending: Vec<u8>,
}

impl<S: Read + Write> Http<S> {
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            pending: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Sends `request` (raw bytes) and reads one response.
    pub fn request(&mut self, request: &[u8]) -> io::Result<Response> {
        self.send(request)?;
        self.read_response()
    }

    /// `GET path` with `Host: host`.
    pub fn get(&mut self, host: &str, path: &str) -> io::Result<Response> {
        self.request(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
    }

    /// Reads more bytes into `pending`; `Ok(false)` at end of stream.
    fn fill(&mut self) -> io::Result<bool> {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => Ok(false),
            Ok(n) => {
                self.pending.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }

    fn fill_or_eof(&mut self) -> io::Result<()> {
        if self.fill()? {
            Ok(())
        } else {
            Err(io::ErrorKind::UnexpectedEof.into())
        }
    }

    /// Reads one response (Content-Length or chunked bodies, or until close). A response to
    /// HEAD must be read with [`read_head_response`](Self::read_head_response).
    pub fn read_response(&mut self) -> io::Result<Response> {
        self.read_response_to(false)
    }

    /// Reads the response to a HEAD request (no body whatever its framing headers say).
    pub fn read_head_response(&mut self) -> io::Result<Response> {
        self.read_response_to(true)
    }

    fn read_response_to(&mut self, head_request: bool) -> io::Result<Response> {
        let head_end = loop {
            if let Some(i) = find(&self.pending, b"\r\n\r\n") {
                break i + 4;
            }
            self.fill_or_eof()?;
        };
        let head = String::from_utf8_lossy(&self.pending[..head_end]).into_owned();
        self.pending.drain(..head_end);
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
        let mut response = Response {
            status,
            headers,
            body: Vec::new(),
        };
        if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
            return Ok(response);
        }
        if let Some(len) = response.header("content-length") {
            let len: usize = len.parse().map_err(io::Error::other)?;
            while self.pending.len() < len {
                self.fill_or_eof()?;
            }
            response.body = self.pending.drain(..len).collect();
        } else if response
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            response.body = self.read_chunked()?;
        } else {
            loop {
                match self.fill() {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                    Err(e) => return Err(e),
                }
            }
            response.body = std::mem::take(&mut self.pending);
        }
        Ok(response)
    }

    fn read_chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = find(&self.pending, b"\r\n") {
                    break i;
                }
                self.fill_or_eof()?;
            };
            let size_text = String::from_utf8_lossy(&self.pending[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
                .map_err(|e| io::Error::other(format!("bad chunk size {size_text:?}: {e}")))?;
            self.pending.drain(..line_end + 2);
            if size == 0 {
                // Trailer section: lines until an empty one.
                loop {
                    let end = loop {
                        if let Some(i) = find(&self.pending, b"\r\n") {
                            break i;
                        }
                        self.fill_or_eof()?;
                    };
                    self.pending.drain(..end + 2);
                    if end == 0 {
                        return Ok(body);
                    }
                }
            }
            while self.pending.len() < size + 2 {
                self.fill_or_eof()?;
            }
            body.extend_from_slice(&self.pending[..size]);
            self.pending.drain(..size + 2);
        }
    }

    /// Asserts that the server closes the connection now: nothing more arrives and the read
    /// ends (clean close or reset), instead of hanging until [`PATIENCE`] runs out.
    /// The peer ended the stream cleanly: over TLS a close_notify (a bare FIN or a reset
    /// fails this), over plain TCP a FIN.
    pub fn assert_closed_cleanly(&mut self) {
        match self.fill() {
            Ok(false) => {}
            Ok(true) => panic!(
                "expected the connection to close, got more bytes: {:?}",
                String::from_utf8_lossy(&self.pending)
            ),
            Err(e) => panic!("expected a clean close, got {e} ({:?})", e.kind()),
        }
    }

    pub fn assert_closed(&mut self) {
        match self.fill() {
            Ok(true) => panic!(
                "expected the connection to close, got more bytes: {:?}",
                String::from_utf8_lossy(&self.pending)
            ),
            Ok(false) => {}
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    io::ErrorKind::UnexpectedEof
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionAborted
                ),
                "expected the connection to close, got {e} ({:?})",
                e.kind()
            ),
        }
    }
}

impl Http<TlsStream> {
    /// A TLS connection to `port` with this SNI.
    pub fn connect(port: u16, sni: &str, config: &Arc<ClientConfig>) -> io::Result<Self> {
        Ok(Http::new(connect(port, sni, config)?))
    }
}

/// Sends `request` (raw bytes) and reads one response.
pub fn exchange<S: Read + Write>(stream: &mut S, request: &[u8]) -> io::Result<Response> {
    let mut http = Http::new(stream);
    http.request(request)
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
    Http::connect(port, sni, config)?.get(host, path)
}

/// The TLS alert a failed exchange ended with, if that is why it failed.
pub fn alert_of(err: &io::Error) -> Option<AlertDescription> {
    let inner = err.get_ref()?.downcast_ref::<rustls::Error>()?;
    match inner {
        rustls::Error::AlertReceived(alert) => Some(*alert),
        _ => None,
    }
}

/// Asserts that a request was refused at the TLS layer (never with an HTTP response) and
/// returns the alert the server sent.
pub fn expect_alert(result: io::Result<Response>) -> AlertDescription {
    match result {
        Ok(response) => panic!(
            "expected a TLS alert, got an HTTP response {}: {}",
            response.status,
            response.body_text()
        ),
        Err(err) => alert_of(&err)
            .unwrap_or_else(|| panic!("expected a TLS alert, got {err} ({:?})", err.kind())),
    }
}

/// An X.509 v1 client certificate (P-256) as `openssl x509 -req` without `-extfile` makes it,
/// issued by `issuer` (certificate and key), or by a new CA of openssl's own for `None`.
pub fn openssl_x509_v1_client(common_name: &str, issuer: Option<&CertKeyPem>) -> CertKeyPem {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl is installed (scripts/install-test-deps)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    match issuer {
        Some(ca) => {
            std::fs::write(path("ca.crt"), &ca.cert).unwrap();
            std::fs::write(path("ca.key"), &ca.key).unwrap();
        }
        None => openssl(
            &[
                &["req", "-x509"][..],
                &ec,
                &["-keyout", &path("ca.key"), "-out", &path("ca.crt")],
                &["-subj", "/CN=Openssl Tutorial CA", "-days", "30"],
            ]
            .concat(),
        ),
    }
    openssl(
        &[
            &["req"][..],
            &ec,
            &["-keyout", &path("client.key"), "-out", &path("client.csr")],
            &["-subj", &format!("/CN={common_name}")],
        ]
        .concat(),
    );
    openssl(&[
        "x509",
        "-req",
        "-in",
        &path("client.csr"),
        "-CA",
        &path("ca.crt"),
        "-CAkey",
        &path("ca.key"),
        "-CAcreateserial",
        "-days",
        "30",
        "-out",
        &path("client.crt"),
    ]);
    let cert = std::fs::read_to_string(path("client.crt")).unwrap();
    let der = der_of(&cert);
    let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert_eq!(parsed.version(), x509_parser::x509::X509Version::V1);
    CertKeyPem {
        cert,
        key: std::fs::read_to_string(path("client.key")).unwrap(),
    }
}
