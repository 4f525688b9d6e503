//! Issue 7 on the real binary: the admin endpoint's metrics count exactly what happened (and
//! parse with Prometheus' own Python parser), and SIGTERM drains gracefully. Issue 17: the
//! admin endpoint serves every client at once with a deadline each, bounds request heads, and
//! keeps `/config` off the probe address.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use portcullis_runtime::pki::{GuidePki, KeyKind};
use rustls::AlertDescription;
use support::backends::{After, raw_backend};
use support::*;

/// The `portcullis serve` process under test; killed if a test fails half-way.
struct Server {
    child: Child,
    /// `--admin`: probes and metrics.
    admin: SocketAddr,
    /// `--admin-config`: `/config`.
    config_admin: SocketAddr,
    ports: (u16, u16),
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn start_server(pki: &GuidePki, backend: SocketAddr) -> Server {
    start_server_at(pki, backend, loopback(free_port()), loopback(free_port()))
}

/// A server with its probe endpoint on `admin` and `/config` on `config_admin`.
fn start_server_at(
    pki: &GuidePki,
    backend: SocketAddr,
    admin: SocketAddr,
    config_admin: SocketAddr,
) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let ports = (free_port(), free_port());
    for (i, doc) in guide_manifests(ports, &pki.ca.pem.cert, &pki.server, backend, false)
        .iter()
        .enumerate()
    {
        std::fs::write(dir.path().join(format!("{i}.yaml")), doc).unwrap();
    }
    let child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "--gateway-class", "agentgateway", "--shards", "2"])
        .args(["--bind-address", "127.0.0.1"])
        .arg("--manifests")
        .arg(dir.path())
        .args(["--admin", &admin.to_string()])
        .args(["--admin-config", &config_admin.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server {
        child,
        admin,
        config_admin,
        ports,
        _dir: dir,
    };
    wait_until("the server is ready", || {
        admin_get(server.admin, "/readyz").is_some_and(|(status, _)| status == 200)
    });
    server
}

/// A plain HTTP GET to the admin endpoint: (status, body), `None` when it cannot connect.
fn admin_get(admin: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut tcp = TcpStream::connect(admin).ok()?;
    tcp.set_read_timeout(Some(PATIENCE)).ok()?;
    write!(tcp, "GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n").ok()?;
    let mut text = String::new();
    tcp.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

/// Parses the exposition with `prometheus_client.parser` (the Prometheus project's Python
/// client) and returns every sample as `name{labels sorted} value` lines.
fn parse_with_prometheus(text: &str) -> Vec<String> {
    let script = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        print(f"{s.name}{{{labels}}} {s.value}")
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (scripts/install-test-deps installs prometheus_client)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser rejected the exposition: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn sample_value(samples: &[String], series: &str) -> f64 {
    let line = samples
        .iter()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("no sample {series}"));
    line[series.len() + 1..].parse().unwrap()
}

#[test]
fn metrics_count_one_good_and_one_certificateless_handshake_exactly() {
    let pki = GuidePki::generate(KeyKind::EcdsaP256).unwrap();
    let server = start_server(&pki, support::backends::echo());
    let port = server.ports.0;

    let good = client_config(&pki.ca.pem.cert, Some(&pki.client));
    let ok = https_get(port, "example.com", "example.com", "/get", &good).unwrap();
    assert_eq!(ok.status, 200);
    let anonymous = client_config(&pki.ca.pem.cert, None);
    let err = https_get(port, "example.com", "example.com", "/get", &anonymous).unwrap_err();
    assert_eq!(alert_of(&err), Some(AlertDescription::CertificateRequired));

    let (status, text) = admin_get(server.admin, "/metrics").unwrap();
    assert_eq!(status, 200);
    let samples = parse_with_prometheus(&text);
    let handshakes = |outcome: &str| {
        sample_value(
            &samples,
            &format!(
                "portcullis_tls_handshakes_total{{listener=\"https-{port}\",outcome=\"{outcome}\",port=\"{port}\"}}"
            ),
        )
    };
    assert_eq!(handshakes("ok"), 1.0);
    assert_eq!(handshakes("no_client_cert"), 1.0);
    for outcome in [
        "invalid_client_cert",
        "san_mismatch",
        "hash_mismatch",
        "unverified_accepted",
        "error",
    ] {
        assert_eq!(handshakes(outcome), 0.0, "{outcome}");
    }
    assert_eq!(
        sample_value(
            &samples,
            &format!(
                "portcullis_http_requests_total{{code=\"200\",port=\"{port}\",protocol=\"h1\",route=\"httpbin/httpbin-https\"}}"
            )
        ),
        1.0
    );
    assert_eq!(
        sample_value(
            &samples,
            &format!(
                "portcullis_tls_handshake_duration_seconds_count{{listener=\"https-{port}\",port=\"{port}\"}}"
            )
        ),
        1.0,
        "only completed handshakes are timed"
    );
    assert_eq!(
        sample_value(&samples, "portcullis_config_generation{}"),
        1.0
    );
    let drivers: Vec<&String> = samples
        .iter()
        .filter(|l| l.starts_with("portcullis_shard_driver{"))
        .collect();
    assert_eq!(drivers.len(), 2, "one driver line per shard: {drivers:?}");
    // Per shard, not summed: both client connections are counted once, on whichever shard the
    // kernel gave each.
    let accepted: Vec<f64> = (0..2)
        .map(|shard| {
            sample_value(
                &samples,
                &format!("portcullis_shard_connections_accepted_total{{shard=\"{shard}\"}}"),
            )
        })
        .collect();
    assert_eq!(accepted.iter().sum::<f64>(), 2.0, "{accepted:?}");

    let (status, config) = admin_get(server.config_admin, "/config").unwrap();
    assert_eq!(status, 200);
    assert!(config.contains("generation: 1"));
    assert!(config.contains("key: <redacted>"));
    assert!(!config.contains("PRIVATE KEY"));
}

/// A backend that holds every request until the test releases it.
struct HeldBackend {
    addr: SocketAddr,
    received: mpsc::Receiver<()>,
    release: mpsc::Sender<()>,
}

fn held_backend() -> HeldBackend {
    let (received_tx, received) = mpsc::channel();
    let (release, release_rx) = mpsc::channel::<()>();
    let received_tx = Mutex::new(received_tx);
    let release_rx = Arc::new(Mutex::new(release_rx));
    let addr = raw_backend(move |_req, tcp| {
        received_tx.lock().unwrap().send(()).unwrap();
        release_rx.lock().unwrap().recv().unwrap();
        tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ndone")
            .unwrap();
        After::KeepAlive
    });
    HeldBackend {
        addr,
        received,
        release,
    }
}

fn wait_for_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "the server did not exit");
        thread::sleep(Duration::from_millis(10));
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn sigterm_finishes_the_request_in_flight_refuses_new_connections_and_exits_0() {
    let pki = GuidePki::generate(KeyKind::EcdsaP256).unwrap();
    let backend = held_backend();
    let mut server = start_server(&pki, backend.addr);
    let port = server.ports.0;
    let config = client_config(&pki.ca.pem.cert, Some(&pki.client));

    let in_flight = {
        let config = Arc::clone(&config);
        thread::spawn(move || {
            let mut stream = connect(port, "example.com", &config).unwrap();
            exchange(
                &mut stream,
                b"GET /slow HTTP/1.1\r\nHost: example.com\r\n\r\n",
            )
        })
    };
    backend.received.recv_timeout(PATIENCE).unwrap();

    signal(&server.child, "TERM");
    wait_until("readiness reports draining", || {
        admin_get(server.admin, "/readyz").is_some_and(|(status, _)| status == 503)
    });
    wait_until("no new connection is accepted", || {
        TcpStream::connect(("127.0.0.1", port)).is_err()
    });

    backend.release.send(()).unwrap();
    let response = in_flight.join().unwrap().unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.body_text(), "done");
    assert_eq!(
        response.header("connection"),
        Some("close"),
        "the last response tells the client the connection ends"
    );
    let status = wait_for_exit(&mut server.child);
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_second_signal_exits_at_once() {
    let pki = GuidePki::generate(KeyKind::EcdsaP256).unwrap();
    let backend = held_backend();
    let mut server = start_server(&pki, backend.addr);
    let port = server.ports.0;
    let config = client_config(&pki.ca.pem.cert, Some(&pki.client));
    let _in_flight = thread::spawn(move || {
        let mut stream = connect(port, "example.com", &config).unwrap();
        let _ = exchange(
            &mut stream,
            b"GET /slow HTTP/1.1\r\nHost: example.com\r\n\r\n",
        );
    });
    backend.received.recv_timeout(PATIENCE).unwrap();
    signal(&server.child, "TERM");
    wait_until("draining", || {
        admin_get(server.admin, "/readyz").is_some_and(|(status, _)| status == 503)
    });
    signal(&server.child, "INT");
    let status = wait_for_exit(&mut server.child);
    assert_eq!(status.code(), Some(130), "cut short, not drained");
    drop(backend.release);
}

#[test]
fn drain_timeout_closes_connections_that_outlive_it() {
    let pki = GuidePki::generate(KeyKind::EcdsaP256).unwrap();
    let backend = held_backend();
    // Same as start_server, with a short drain timeout.
    let dir = tempfile::tempdir().unwrap();
    let ports = (free_port(), free_port());
    for (i, doc) in guide_manifests(ports, &pki.ca.pem.cert, &pki.server, backend.addr, false)
        .iter()
        .enumerate()
    {
        std::fs::write(dir.path().join(format!("{i}.yaml")), doc).unwrap();
    }
    let admin = loopback(free_port());
    let config_admin = loopback(free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "--gateway-class", "agentgateway", "--shards", "1"])
        .args(["--bind-address", "127.0.0.1", "--drain-timeout", "200ms"])
        .arg("--manifests")
        .arg(dir.path())
        .args(["--admin", &admin.to_string()])
        .args(["--admin-config", &config_admin.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut server = Server {
        child,
        admin,
        config_admin,
        ports,
        _dir: dir,
    };
    wait_until("ready", || {
        admin_get(admin, "/readyz").is_some_and(|(s, _)| s == 200)
    });
    let config = client_config(&pki.ca.pem.cert, Some(&pki.client));
    let in_flight = thread::spawn(move || {
        let mut stream = connect(ports.0, "example.com", &config).unwrap();
        exchange(
            &mut stream,
            b"GET /slow HTTP/1.1\r\nHost: example.com\r\n\r\n",
        )
    });
    backend.received.recv_timeout(PATIENCE).unwrap();
    signal(&server.child, "TERM");
    let status = wait_for_exit(&mut server.child);
    assert_eq!(status.code(), Some(0));
    assert!(
        in_flight.join().unwrap().is_err(),
        "the held request was cut when the drain timed out"
    );
    drop(backend.release);
}

/// How long a test waits for the admin endpoint to close a client that never finishes its
/// request: well past the server's deadline, only a bound against hangs.
const CLOSE_PATIENCE: Duration = Duration::from_secs(60);

/// Whether the server has closed `tcp` (end of stream or reset); `false` while it is open.
fn closed_by_server(tcp: &mut TcpStream) -> bool {
    tcp.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let closed = match tcp.read(&mut byte) {
        Ok(_) => true,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    tcp.set_nonblocking(false).unwrap();
    closed
}

#[test]
fn a_half_sent_request_does_not_hold_up_healthz() {
    let pki = GuidePki::generate(KeyKind::EcdsaP256).unwrap();
    let server = start_server(&pki, support::backends::echo());
    let mut stalled = TcpStream::connect(server.admin).unwrap();
    stalled.write_all(b"GET /hea").unwrap();

    let (status, body) = admin_get(server.admin, "/healthz").unwrap();
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    // The order, not a duration: a server that serves one connection at a time answers the
    // second client only once it has given up on (and closed) the first.
    assert!(
        !closed_by_server(&mut stalled),
        "/healthz was answered only after the half-sent request was dropped"
    );
}

#[test]
fn a_client_trickling_its_request_neither_holds_the_endpoint_nor_stays_open() {
    let pki = GuidePki::generate(KeyKind::EcdsaP256).unwrap();
    let server = start_server(&pki, support::backends::echo());
    let mut trickler = TcpStream::connect(server.admin).unwrap();
    trickler
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\nx-slow: ")
        .unwrap();
    // One more header byte a second, until the server closes the connection.
    let trickling = thread::spawn(move || {
        trickler
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        let give_up = Instant::now() + CLOSE_PATIENCE;
        let mut answer = [0u8; 512];
        while Instant::now() < give_up {
            if trickler.write_all(b"a").is_err() {
                return true;
            }
            match trickler.read(&mut answer) {
                Ok(0) => return true,
                // An error answer (a timeout status): the close follows.
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return true,
            }
        }
        false
    });

    let (status, _) = admin_get(server.admin, "/healthz").expect("/healthz answers");
    assert_eq!(status, 200);
    assert!(
        trickling.join().unwrap(),
        "the trickling client was still open after {CLOSE_PATIENCE:?}"
    );
}

#[test]
fn an_oversized_request_head_is_refused_and_the_endpoint_still_answers() {
    let pki = GuidePki::generate(KeyKind::EcdsaP256).unwrap();
    let server = start_server(&pki, support::backends::echo());
    let mut tcp = TcpStream::connect(server.admin).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    let head = format!(
        "GET /healthz HTTP/1.1\r\nHost: admin\r\nx-big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    // The server may answer and close before it has all of it.
    let _ = tcp.write_all(head.as_bytes());
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431 "),
        "answered: {answer}"
    );

    let (status, _) = admin_get(server.admin, "/healthz").unwrap();
    assert_eq!(status, 200);
}

#[test]
fn requests_with_a_body_are_refused() {
    let pki = GuidePki::generate(KeyKind::EcdsaP256).unwrap();
    let server = start_server(&pki, support::backends::echo());
    let mut tcp = TcpStream::connect(server.admin).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\ncontent-length: 5\r\n\r\nhello")
        .unwrap();
    let mut answer = String::new();
    let _ = tcp.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 413 "), "answered: {answer}");
}

#[test]
fn config_is_served_on_its_own_address_and_not_on_the_probe_address() {
    let pki = GuidePki::generate(KeyKind::EcdsaP256).unwrap();
    let server = start_server(&pki, support::backends::echo());

    let (status, _) = admin_get(server.admin, "/config").unwrap();
    assert_eq!(status, 404, "/config on the probe address");
    let (status, config) = admin_get(server.config_admin, "/config").unwrap();
    assert_eq!(status, 200);
    assert!(config.contains("generation: 1"), "{config}");
    for probe in ["/healthz", "/readyz", "/metrics"] {
        let (status, _) = admin_get(server.config_admin, probe).unwrap();
        assert_eq!(status, 404, "{probe} on the config address");
    }
}

#[test]
fn one_address_given_to_both_flags_serves_every_path() {
    let pki = GuidePki::generate(KeyKind::EcdsaP256).unwrap();
    let admin = loopback(free_port());
    let server = start_server_at(&pki, support::backends::echo(), admin, admin);
    for path in ["/healthz", "/readyz", "/metrics", "/config"] {
        let (status, _) = admin_get(server.admin, path).unwrap();
        assert_eq!(status, 200, "{path}");
    }
}
