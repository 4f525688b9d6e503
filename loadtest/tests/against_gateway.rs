//! `portcullis-load` (the real binary) against the real data plane, started in this process as
//! `cli/tests/support` does: manifests -> translate -> compile -> shards on loopback, the
//! echo backend behind them. Short count-based runs; the assertions are on counts and error
//! classes, never on speed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use portcullis_runtime::demo;
use portcullis_runtime::limits::Limits;
use portcullis_runtime::pki::{GuidePki, KeyKind};
use portcullis_runtime::publish::Publisher;
use portcullis_runtime::shard::{DriverChoice, ShardOptions, Shards};
use portcullis_translate::manifests::{LoadedManifests, load_text};
use portcullis_translate::{TranslateOptions, translate};
use serde_json::Value;

/// A bound so a broken build fails instead of hanging; not a timing assertion.
const PATIENCE: Duration = Duration::from_secs(20);

/// The running gateway every test loads.
struct Fixture {
    dir: PathBuf,
    /// Resumption on (the default).
    port: u16,
    /// Listener option `portcullis.dev/tls-session-resumption: "off"`.
    port_no_resumption: u16,
    _publisher: Publisher,
    _shards: Shards,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(start_gateway)
}

fn start_gateway() -> Fixture {
    // ECDSA keys: generating RSA ones in a debug build takes seconds; the client code does
    // not depend on the key type.
    let pki = GuidePki::generate(KeyKind::EcdsaP256).unwrap();
    let dir = std::env::temp_dir().join(format!("portcullis-load-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, pem) in [
        ("ca-cert.pem", &pki.ca.pem.cert),
        ("client-cert.pem", &pki.client.cert),
        ("client-key.pem", &pki.client.key),
    ] {
        std::fs::write(dir.join(name), pem).unwrap();
    }
    let backend = portcullis_runtime::echo::spawn(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let (port, port_no_resumption) = (free_port(), free_port());
    let gateway = demo::GUIDE_GATEWAY
        .replace(
            "    port: 8444\n    tls:\n      mode: Terminate\n",
            "    port: 8444\n    tls:\n      mode: Terminate\n      options:\n        portcullis.dev/tls-session-resumption: \"off\"\n",
        )
        .replace("8443", &port.to_string())
        .replace("8444", &port_no_resumption.to_string());
    let docs = [
        gateway,
        demo::GUIDE_ROUTE.to_owned(),
        demo::tls_secret(
            "agentgateway-system",
            "https-cert",
            &pki.server.cert,
            &pki.server.key,
        ),
        demo::ca_config_map("agentgateway-system", "ca-cert", &pki.ca.pem.cert),
        demo::service_with_endpoint("httpbin", "httpbin", 8000, backend),
    ];
    let mut loaded = LoadedManifests::default();
    for (i, doc) in docs.iter().enumerate() {
        load_text(Path::new(&format!("doc-{i}.yaml")), doc, false, &mut loaded).unwrap();
    }
    let mut options = TranslateOptions::new(portcullis_translate::check::now());
    options.extra_gateway_class = Some(demo::GUIDE_GATEWAY_CLASS.to_owned());
    let desired = translate(&loaded.store, &options).desired;
    assert_eq!(desired.ports.len(), 2, "both guide ports are programmed");

    let (publisher, snapshots) = Publisher::new();
    let generation = publisher.publish(desired);
    let shards = Shards::start(
        vec![None],
        ShardOptions {
            driver: DriverChoice::Auto,
            bind_address: Some("127.0.0.1".parse().unwrap()),
            limits: Limits::default(),
        },
        snapshots,
    )
    .unwrap();
    let deadline = Instant::now() + PATIENCE;
    while !shards
        .status
        .iter()
        .all(|s| s.applied_generation.load(Ordering::Acquire) >= generation)
    {
        assert!(Instant::now() < deadline, "shards never applied the config");
        std::thread::sleep(Duration::from_millis(5));
    }
    Fixture {
        dir,
        port,
        port_no_resumption,
        _publisher: publisher,
        _shards: shards,
    }
}

/// A finished `portcullis-load --json` run.
struct Run {
    output: Output,
    json: Value,
}

impl Run {
    fn u64(&self, pointer: &str) -> u64 {
        self.json
            .pointer(pointer)
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("{pointer} missing in {}", self.json))
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
}

/// Runs the load generator against `port` with the fixture's files; `with_cert`: present the
/// client certificate.
fn load(port: u16, with_cert: bool, args: &[&str]) -> Run {
    let f = fixture();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis-load"));
    cmd.arg("--connect")
        .arg(format!("127.0.0.1:{port}"))
        .args(["--json", "--quiet", "--timeout", "10s"])
        .arg("--cacert")
        .arg(f.dir.join("ca-cert.pem"));
    if !args.contains(&"--sni") {
        cmd.args(["--sni", "example.com"]);
    }
    if with_cert {
        cmd.arg("--cert")
            .arg(f.dir.join("client-cert.pem"))
            .arg("--key")
            .arg(f.dir.join("client-key.pem"));
    }
    let output = cmd.args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let json: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON summary ({e}): stdout {stdout:?}, stderr {:?}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    Run { output, json }
}

#[test]
fn keepalive_records_exactly_the_requested_count() {
    let f = fixture();
    let run = load(
        f.port,
        true,
        &["-n", "200", "-c", "4", "--threads", "2", "--path", "/get"],
    );
    assert_eq!(run.u64("/requests_ok"), 200, "{}", run.json);
    assert_eq!(run.u64("/errors_total"), 0);
    assert_eq!(run.u64("/statuses/200"), 200);
    let handshakes = run.u64("/handshakes/full") + run.u64("/handshakes/resumed");
    assert!(
        (1..=4).contains(&handshakes),
        "one handshake per connection: {}",
        run.json
    );
    assert!(run.output.status.success());
}

#[test]
fn missing_client_certificate_is_counted_as_its_tls_alert() {
    let f = fixture();
    let run = load(f.port, false, &["-n", "200", "-c", "4"]);
    assert_eq!(run.u64("/requests_ok"), 0);
    assert_eq!(run.u64("/errors_total"), 200);
    assert_eq!(
        run.u64("/errors/tls_alert/certificate_required"),
        200,
        "{}",
        run.json
    );
    assert_eq!(run.output.status.code(), Some(1), "errors exit 1");
}

#[test]
fn error_statuses_are_counted_by_status() {
    let f = fixture();
    let run = load(
        f.port,
        true,
        &["-n", "200", "-c", "4", "--path", "/status/404"],
    );
    assert_eq!(run.u64("/errors/http_status/404"), 200, "{}", run.json);
    assert_eq!(run.u64("/statuses/404"), 200);
    assert_eq!(run.u64("/requests_ok"), 0);
}

#[test]
fn handshake_mode_with_resumption_resumes() {
    let f = fixture();
    let run = load(
        f.port,
        true,
        &[
            "--mode",
            "handshake",
            "-n",
            "200",
            "-c",
            "4",
            "--resumption",
            "on",
        ],
    );
    assert_eq!(run.u64("/requests_ok"), 200, "{}", run.json);
    assert_eq!(
        run.u64("/handshakes/full") + run.u64("/handshakes/resumed"),
        200,
        "one handshake per request"
    );
    assert!(run.u64("/handshakes/resumed") > 0, "{}", run.json);
}

#[test]
fn handshake_mode_without_client_resumption_never_resumes() {
    let f = fixture();
    let run = load(
        f.port,
        true,
        &[
            "--mode",
            "handshake",
            "-n",
            "200",
            "-c",
            "4",
            "--resumption",
            "off",
        ],
    );
    assert_eq!(run.u64("/requests_ok"), 200, "{}", run.json);
    assert_eq!(run.u64("/handshakes/full"), 200);
    assert_eq!(run.u64("/handshakes/resumed"), 0);
}

#[test]
fn listener_with_resumption_off_never_resumes() {
    let f = fixture();
    let run = load(
        f.port_no_resumption,
        true,
        &[
            "--mode",
            "handshake",
            "-n",
            "200",
            "-c",
            "4",
            "--resumption",
            "on",
        ],
    );
    assert_eq!(run.u64("/requests_ok"), 200, "{}", run.json);
    assert_eq!(run.u64("/handshakes/full"), 200);
    assert_eq!(run.u64("/handshakes/resumed"), 0);
}

#[test]
fn open_loop_sends_the_requested_count() {
    let f = fixture();
    let run = load(
        f.port,
        true,
        &[
            "--mode",
            "open-loop",
            "--rate",
            "400",
            "-n",
            "100",
            "-c",
            "4",
            "--threads",
            "2",
        ],
    );
    assert_eq!(run.u64("/requests_ok"), 100, "{}", run.json);
    assert_eq!(run.u64("/errors_total"), 0);
    assert_eq!(run.json["rate_target"].as_f64(), Some(400.0));
}

#[test]
fn open_loop_needs_a_rate() {
    let output = Command::new(env!("CARGO_BIN_EXE_portcullis-load"))
        .args(["--connect", "127.0.0.1:1", "-k", "--mode", "open-loop"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--rate"));
}

#[test]
fn hold_mode_keeps_connections_open() {
    let f = fixture();
    let run = load(f.port, true, &["--idle", "20", "-c", "4", "-d", "300ms"]);
    assert_eq!(run.u64("/held"), 20, "{}", run.json);
    assert_eq!(run.u64("/requests_ok"), 20);
    assert!(
        run.stderr().contains("holding 20 idle connections"),
        "{}",
        run.stderr()
    );
}

#[test]
fn wrong_server_name_is_a_local_tls_error() {
    let f = fixture();
    let run = load(
        f.port,
        true,
        &["-n", "10", "-c", "2", "--sni", "example.org"],
    );
    assert_eq!(run.u64("/errors_total"), 10);
    let tls = run.json["errors"]["tls"].as_object().unwrap();
    assert!(
        tls.keys().all(|k| k.starts_with("invalid_certificate")),
        "{}",
        run.json
    );
}

#[test]
fn refused_connections_are_connect_errors() {
    let port = free_port();
    let run = load(port, true, &["-n", "5", "-c", "1"]);
    assert_eq!(
        run.u64("/errors/connect/connection_refused"),
        5,
        "{}",
        run.json
    );
}

#[test]
fn epoll_driver_and_tls12_work_too() {
    let f = fixture();
    let run = load(
        f.port,
        true,
        &["-n", "50", "-c", "2", "--driver", "epoll", "--tls", "1.2"],
    );
    assert_eq!(run.u64("/requests_ok"), 50, "{}", run.json);
    assert_eq!(run.u64("/errors_total"), 0);
}

#[test]
fn the_watched_server_and_its_cpus_are_reported_over_the_window() {
    let f = fixture();
    // This test process runs the gateway's shards, so it is the server to watch.
    let pid = std::process::id().to_string();
    let run = load(
        f.port,
        true,
        &[
            "--mode",
            "handshake",
            "--resumption",
            "off",
            "-n",
            "100",
            "-c",
            "4",
            "--watch-pid",
            &pid,
            "--watch-cpus",
            "0",
        ],
    );
    assert_eq!(run.u64("/requests_ok"), 100, "{}", run.json);
    let server = &run.json["server"];
    assert_eq!(server["pid"].as_u64(), Some(u64::from(std::process::id())));
    assert_eq!(server["cpus"].as_str(), Some("0"));
    // A hundred full handshakes took the server some CPU; the CPU set's readings are there.
    assert!(
        server["cpu_cores"].as_f64().is_some_and(|c| c > 0.0),
        "{}",
        run.json
    );
    for field in [
        "cpus_idle_cores",
        "cpus_steal_cores",
        "cpus_interrupt_cores",
    ] {
        assert!(
            server[field].as_f64().is_some_and(|c| c >= 0.0),
            "{field}: {}",
            run.json
        );
    }
}

#[test]
fn a_run_without_watching_has_no_server_section() {
    let f = fixture();
    let run = load(f.port, true, &["-n", "10", "-c", "1"]);
    assert!(run.json.get("server").is_none(), "{}", run.json);
}

#[test]
fn every_run_reports_the_kernels_tcp_counters_over_its_window() {
    let f = fixture();
    let run = load(f.port, true, &["-n", "10", "-c", "1"]);
    let tcp = &run.json["kernel_tcp"];
    for field in [
        "retransmitted_segments",
        "retransmission_timeouts",
        "syn_retransmits",
        "listen_overflows",
        "backlog_drops",
    ] {
        assert!(tcp[field].is_u64(), "{field}: {}", run.json);
    }
}

#[test]
fn unreadable_watch_targets_fail_before_the_run() {
    for (args, expected) in [
        (["--watch-pid", "0"], "--watch-pid 0"),
        (["--watch-cpus", "100000"], "--watch-cpus 100000"),
        (["--watch-cpus", "3-1"], "runs backwards"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_portcullis-load"))
            .args(["--connect", "127.0.0.1:1", "-k", "-n", "1"])
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
