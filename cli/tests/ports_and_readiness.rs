//! The real binary is ready only when it serves every port of its config: a port held by
//! another process, another Portcullis included, makes `/readyz` fail and name it, is served
//! once it frees up, and never shares its connections; log lines written to a pipe carry no
//! colour codes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use portcullis_runtime::pki::{GuidePki, KeyKind};
use support::backends::echo;
use support::*;

/// A `portcullis` process, killed when the test ends; its stderr goes to a file.
struct Process {
    child: Child,
    stderr: tempfile::NamedTempFile,
}

impl Process {
    fn spawn(args: &[&str]) -> Process {
        let stderr = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(stderr.reopen().unwrap())
            .spawn()
            .unwrap();
        Process { child, stderr }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.stderr.path()).unwrap()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The guide's manifests for `ports`, written to a new folder.
fn manifests(pki: &GuidePki, ports: (u16, u16)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (i, doc) in guide_manifests(ports, &pki.ca.pem.cert, &pki.server, echo(), false)
        .iter()
        .enumerate()
    {
        std::fs::write(dir.path().join(format!("{i}.yaml")), doc).unwrap();
    }
    dir
}

/// `portcullis serve` of `dir` on 127.0.0.1 with its admin endpoint on `admin`.
fn serve(dir: &Path, admin: SocketAddr) -> Process {
    Process::spawn(&[
        "serve",
        "--gateway-class",
        "agentgateway",
        "--shards",
        "2",
        "--bind-address",
        "127.0.0.1",
        "--manifests",
        dir.to_str().unwrap(),
        "--admin",
        &admin.to_string(),
    ])
}

fn admin_address() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// A plain HTTP GET to the admin endpoint: (status, body), `None` when it cannot connect.
fn admin_get(admin: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut tcp = TcpStream::connect(admin).ok()?;
    tcp.set_read_timeout(Some(PATIENCE)).ok()?;
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    tcp.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

/// Waits for `/readyz` to answer `status` (a 503 that names a port, for 503: not the one of
/// a process still starting) and returns its body.
fn wait_readyz(admin: SocketAddr, status: u16) -> String {
    let mut body = String::new();
    wait_until(&format!("/readyz answers {status}"), || {
        match admin_get(admin, "/readyz") {
            Some((s, b)) if s == status && (s != 503 || b.contains("not served")) => {
                body = b;
                true
            }
            _ => false,
        }
    });
    body
}

/// An mTLS GET on `port` with the guide's client certificate.
fn guide_get(pki: &GuidePki, port: u16) -> std::io::Result<Response> {
    let config = client_config(&pki.ca.pem.cert, Some(&pki.client));
    https_get(port, "example.com", "example.com", "/get", &config)
}

#[test]
fn a_port_held_by_another_process_is_not_ready_and_named_until_it_frees_up() {
    let pki = GuidePki::generate(KeyKind::EcdsaP256).unwrap();
    let ports = (free_port(), free_port());
    let blocker = TcpListener::bind(("127.0.0.1", ports.1)).unwrap();
    let dir = manifests(&pki, ports);
    let admin = admin_address();
    let server = serve(dir.path(), admin);

    let body = wait_readyz(admin, 503);
    assert!(
        body.contains(&format!("port {} not served", ports.1)),
        "{body}"
    );
    assert!(!body.contains(&format!("port {} ", ports.0)), "{body}");
    assert_eq!(
        guide_get(&pki, ports.0).unwrap().status,
        200,
        "the free port serves"
    );
    let log = server.log();
    assert!(log.contains("in use by another process"), "{log}");

    drop(blocker);
    wait_readyz(admin, 200);
    assert_eq!(guide_get(&pki, ports.1).unwrap().status, 200);
}

#[test]
fn logs_written_to_a_file_carry_no_colour_codes() {
    let pki = GuidePki::generate(KeyKind::EcdsaP256).unwrap();
    let dir = manifests(&pki, (free_port(), free_port()));
    let admin = admin_address();
    let server = serve(dir.path(), admin);
    wait_readyz(admin, 200);
    let log = server.log();
    assert!(log.contains("listening"), "{log}");
    assert!(!log.contains('\u{1b}'), "colour codes in the log: {log:?}");
}

#[test]
fn a_second_portcullis_on_the_same_ports_is_refused_and_takes_no_connection() {
    let pki = GuidePki::generate(KeyKind::EcdsaP256).unwrap();
    let ports = (free_port(), free_port());
    let dir = manifests(&pki, ports);
    let first_admin = admin_address();
    let _first = serve(dir.path(), first_admin);
    wait_readyz(first_admin, 200);

    // The same config with another server certificate, so connections tell the two apart.
    let other = GuidePki::generate(KeyKind::EcdsaP256).unwrap();
    let second_dir = manifests(&other, ports);
    let second_admin = admin_address();
    let second = serve(second_dir.path(), second_admin);
    let body = wait_readyz(second_admin, 503);
    for port in [ports.0, ports.1] {
        assert!(body.contains(&format!("port {port} not served")), "{body}");
    }
    assert!(second.log().contains("already in use by another process"));
    // Every connection still reaches the first one (SO_REUSEPORT would spread them).
    for _ in 0..32 {
        assert_eq!(guide_get(&pki, ports.0).unwrap().status, 200);
    }
    assert_eq!(wait_readyz(first_admin, 200), "ready\n");
}

#[test]
fn the_demo_says_which_port_it_cannot_serve() {
    let blocker = match TcpListener::bind((Ipv6Addr::UNSPECIFIED, 8444))
        .or_else(|_| TcpListener::bind(("0.0.0.0", 8444)))
    {
        Ok(listener) => listener,
        // Something else holds the port already: the demo must then say so all the same.
        Err(_) => TcpListener::bind(("127.0.0.1", 0)).unwrap(),
    };
    let dir = tempfile::tempdir().unwrap();
    let mut demo = Process::spawn(&[
        "demo",
        "--dir",
        dir.path().to_str().unwrap(),
        "--admin",
        "off",
    ]);
    let mut stdout = demo.child.stdout.take().unwrap();
    let mut printed = String::new();
    let mut chunk = [0u8; 4096];
    wait_until("the demo prints its instructions", || {
        let n = stdout.read(&mut chunk).unwrap();
        printed.push_str(&String::from_utf8_lossy(&chunk[..n]));
        n == 0 || printed.contains("Ctrl-C")
    });
    assert!(printed.contains("NOT serving port 8444"), "{printed}");
    assert!(
        !printed.contains("serving ports 8443 and 8444"),
        "{printed}"
    );
    drop(blocker);
}
