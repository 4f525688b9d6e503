//! On the real binary: the series of a port, listener, route and backend endpoint leave
//! `/metrics` once a config change removed them (and no connection uses them), while the
//! series of what stayed keep their counts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use portcullis_runtime::pki::{GuidePki, KeyKind};
use support::backends::named_backend_on;
use support::*;

/// `portcullis serve` watching one manifest file; killed when dropped.
struct Server {
    child: Child,
    admin: SocketAddr,
    dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Two shards serving `docs` from a watched folder.
    fn start(docs: &[String]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("manifests")).unwrap();
        write_atomically(dir.path(), docs);
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["serve", "--gateway-class", CLASS, "--shards", "2"])
            .args(["--bind-address", "127.0.0.1"])
            .arg("--manifests")
            .arg(dir.path().join("manifests"))
            .args(["--admin", &admin.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = Server { child, admin, dir };
        server.wait_applied(1);
        server
    }

    /// Replaces the manifests and waits until both shards applied them as `generation`.
    fn publish(&self, docs: &[String], generation: u64) {
        write_atomically(self.dir.path(), docs);
        self.wait_applied(generation);
    }

    fn wait_applied(&self, generation: u64) {
        wait_until("both shards apply the manifests", || {
            self.scrape().is_some_and(|text| {
                (0..2).all(|shard| {
                    series_value(
                        &text,
                        &format!("portcullis_shard_config_generation{{shard=\"{shard}\"}}"),
                    ) == Some(generation as f64)
                })
            })
        });
    }

    /// `GET /metrics`; `None` while the admin endpoint does not answer.
    fn scrape(&self) -> Option<String> {
        let mut tcp = TcpStream::connect(self.admin).ok()?;
        tcp.set_read_timeout(Some(PATIENCE)).ok()?;
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\n\r\n")
            .ok()?;
        let mut text = String::new();
        tcp.read_to_string(&mut text).ok()?;
        Some(text.split_once("\r\n\r\n")?.1.to_owned())
    }
}

/// Writes `docs` as the only file of `dir/manifests`, by a rename, so that the watcher never
/// reads half of them.
fn write_atomically(dir: &Path, docs: &[String]) {
    let staged = dir.join("staged.yaml");
    std::fs::write(&staged, docs.join("\n---\n")).unwrap();
    std::fs::rename(&staged, dir.join("manifests/all.yaml")).unwrap();
}

/// A request on a new connection (closed right after), with SNI and Host `host`.
fn get(port: u16, host: &str) -> Response {
    let config = any_server_client_config(None);
    https_get(port, host, host, "/", &config).unwrap()
}

#[test]
fn series_of_removed_objects_leave_metrics_and_the_others_keep_their_counts() {
    let pki = GuidePki::generate(KeyKind::EcdsaP256).unwrap();
    let (kept_port, removed_port) = (free_port(), free_port());
    let endpoint_port = free_port();
    // `backend` has a live endpoint and one nobody listens on (its failures make series).
    let live = named_backend_on(SocketAddr::from(([127, 0, 0, 2], endpoint_port)), "live");
    let removed_endpoint = SocketAddr::from(([127, 0, 0, 1], endpoint_port));
    let config = |listeners: Vec<Listener>, routes: &[&str], endpoints: &[SocketAddr]| {
        let mut gateway = GatewayYaml::new();
        for listener in listeners {
            gateway = gateway.listener(listener);
        }
        let mut docs = vec![
            gateway.yaml(),
            server_secret("server-cert", &pki.server),
            service_with_endpoints("backend", endpoints),
        ];
        for name in routes {
            docs.push(route(
                name,
                &[&format!("{name}.example.com")],
                &rule_to("backend"),
            ));
        }
        docs
    };
    let kept_listener = || https("kept", kept_port, "server-cert").hostname("kept.example.com");
    let server = Server::start(&config(
        vec![
            kept_listener(),
            https("gone", kept_port, "server-cert").hostname("gone.example.com"),
            https("other", removed_port, "server-cert"),
        ],
        &["kept", "gone"],
        &[removed_endpoint, live],
    ));

    // Traffic for every object, until a connect to the dead endpoint failed on some shard.
    let mut kept_requests = 0.0;
    wait_until("a connect to the dead endpoint fails", || {
        assert_eq!(get(kept_port, "kept.example.com").body_text(), "live");
        kept_requests += 1.0;
        server.scrape().unwrap().contains(&format!(
            "portcullis_backend_connect_errors_total{{endpoint=\"{removed_endpoint}\"}}"
        ))
    });
    let mut open_on_gone = Http::connect(
        kept_port,
        "gone.example.com",
        &any_server_client_config(None),
    )
    .unwrap();
    assert_eq!(
        open_on_gone.get("gone.example.com", "/").unwrap().status,
        200
    );
    assert_eq!(get(removed_port, "kept.example.com").status, 200);

    let kept_handshakes = format!(
        "portcullis_tls_handshakes_total{{port=\"{kept_port}\",listener=\"kept\",outcome=\"ok\"}}"
    );
    let kept_route = format!(
        "portcullis_http_requests_total{{port=\"{kept_port}\",route=\"tests/kept\",protocol=\"h1\",code=\"200\"}}"
    );
    let before = server.scrape().unwrap();
    assert_eq!(series_value(&before, &kept_handshakes), Some(kept_requests));
    assert_eq!(series_value(&before, &kept_route), Some(kept_requests));
    let gone = [
        "listener=\"gone\"".to_owned(),
        "route=\"tests/gone\"".to_owned(),
        format!("port=\"{removed_port}\""),
        format!("endpoint=\"{removed_endpoint}\""),
    ];
    for series in &gone {
        assert!(
            before.contains(series.as_str()),
            "{series} before the change"
        );
    }

    // Remove a listener, a route, a port and an endpoint.
    server.publish(&config(vec![kept_listener()], &["kept"], &[live]), 2);
    // A connection open since before keeps its config, and the series it counts in.
    assert_eq!(
        open_on_gone.get("gone.example.com", "/").unwrap().status,
        200
    );
    let gone_route = format!(
        "portcullis_http_requests_total{{port=\"{kept_port}\",route=\"tests/gone\",protocol=\"h1\",code=\"200\"}}"
    );
    assert_eq!(
        series_value(&server.scrape().unwrap(), &gone_route),
        Some(2.0)
    );
    drop(open_on_gone);
    wait_until("the removed objects' series leave /metrics", || {
        let text = server.scrape().unwrap();
        gone.iter().all(|series| !text.contains(series.as_str()))
    });
    let after = server.scrape().unwrap();
    assert_eq!(series_value(&after, &kept_handshakes), Some(kept_requests));
    assert_eq!(series_value(&after, &kept_route), Some(kept_requests));

    // And they go on counting.
    assert_eq!(get(kept_port, "kept.example.com").body_text(), "live");
    let later = server.scrape().unwrap();
    assert_eq!(
        series_value(&later, &kept_handshakes),
        Some(kept_requests + 1.0)
    );
    assert_eq!(series_value(&later, &kept_route), Some(kept_requests + 1.0));
}
