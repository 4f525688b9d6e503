//! Harness for the Kubernetes-mode end-to-end tests: a real API server (from
//! `scripts/test-apiserver`, found through `KUBECONFIG`), the kubectl built with it, the real
//! `portcullis` binary (controller, data plane, echo backend), openssl and curl.
//!
//! Nothing here skips: without a reachable API server every test fails with instructions.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long the tests wait for something the controller or the data plane should do within a
/// second or two (statuses, provisioning, a config change on new handshakes). Only a bound so
/// that a broken build fails instead of hanging; the times are measured and printed.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Pause between polls.
const POLL: Duration = Duration::from_millis(50);

/// Lease timing for the tests: takeover within seconds rather than client-go's 15 s.
pub const LEASE_DURATION_SECONDS: u32 = 4;
pub const RENEW_DEADLINE_SECONDS: u32 = 3;
pub const RETRY_PERIOD_SECONDS: u32 = 1;

/// Which Gateway API release's CRDs the tests install: `v1.4.0` (experimental channel, as the
/// guide installs; the default) or `v1.6.1` (standard channel). `scripts/test` runs the tests
/// once per release, each on an empty API server.
pub const RELEASE_ENV: &str = "PORTCULLIS_E2E_GATEWAY_API";

/// The tests share one API server: one at a time.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// A folder for one test's files, emptied first.
pub fn work_dir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("kube-e2e")
        .join(test);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// Polls `check` until it returns `Ok`, or panics with its last error after `timeout`.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) => {
                if Instant::now() >= deadline {
                    panic!("timed out after {timeout:?} waiting for {what}: {last}");
                }
            }
        }
        thread::sleep(POLL);
    }
}

/// kubectl against the test API server.
#[derive(Debug, Clone)]
pub struct Kube {
    pub kubectl: PathBuf,
    pub kubeconfig: PathBuf,
}

impl Kube {
    /// `KUBECONFIG` (required) and `KUBECTL` (default: `bin/kubectl` next to the kubeconfig,
    /// as `scripts/test-apiserver` lays it out, else `kubectl` on PATH). Fails unless the API
    /// server answers `/readyz`.
    pub fn from_env() -> Kube {
        let hint = "start the test API server and export its kubeconfig: \
                    scripts/test-apiserver up && eval \"$(scripts/test-apiserver env)\"";
        let kubeconfig = std::env::var_os("KUBECONFIG")
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("KUBECONFIG is not set: {hint}"));
        assert!(
            kubeconfig.is_file(),
            "KUBECONFIG={} does not exist: {hint}",
            kubeconfig.display()
        );
        let kubectl = std::env::var_os("KUBECTL")
            .map(PathBuf::from)
            .or_else(|| {
                let next_to = kubeconfig.parent()?.join("bin/kubectl");
                next_to.is_file().then_some(next_to)
            })
            .unwrap_or_else(|| PathBuf::from("kubectl"));
        let kube = Kube {
            kubectl,
            kubeconfig,
        };
        let ready = kube.run(&["get", "--raw", "/readyz"], None);
        assert!(
            ready.status.success() && String::from_utf8_lossy(&ready.stdout).trim() == "ok",
            "the API server in {} is not ready ({}): {hint}",
            kube.kubeconfig.display(),
            String::from_utf8_lossy(&ready.stderr).trim()
        );
        kube
    }

    /// This API server's kubeconfig, acting as `user` (for example a ServiceAccount's
    /// `system:serviceaccount:NS:NAME`), written into `dir`.
    pub fn impersonating(&self, dir: &Path, user: &str) -> Kube {
        let mut config: Value =
            serde_json::from_str(&self.ok(&["config", "view", "--raw", "-o", "json"])).unwrap();
        for entry in config["users"].as_array_mut().unwrap() {
            entry["user"]["as"] = Value::from(user);
        }
        let kubeconfig = dir.join(format!("{}.kubeconfig", user.replace(':', "-")));
        fs::write(&kubeconfig, config.to_string()).unwrap();
        Kube {
            kubectl: self.kubectl.clone(),
            kubeconfig,
        }
    }

    /// `kubectl auth can-i ARGS` as `user`.
    pub fn can_i(&self, user: &str, args: &[&str]) -> bool {
        let mut all = vec!["auth", "can-i", "--as", user];
        all.extend_from_slice(args);
        let out = self.run(&all, None);
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    }

    pub fn command(&self) -> Command {
        let mut command = Command::new(&self.kubectl);
        command.env("KUBECONFIG", &self.kubeconfig);
        command
    }

    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut command = self.command();
        command
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.kubectl.display()));
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        child.wait_with_output().unwrap()
    }

    /// Runs kubectl; panics with its stderr if it fails. Returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        self.ok_with(args, None)
    }

    pub fn ok_with(&self, args: &[&str], stdin: Option<&str>) -> String {
        let output = self.run(args, stdin);
        assert!(
            output.status.success(),
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `kubectl apply -f -`, as the guide does.
    pub fn apply(&self, yaml: &str) -> String {
        self.ok_with(&["apply", "-f", "-"], Some(yaml))
    }

    /// The object as JSON, `None` if it does not exist.
    pub fn get(&self, kind: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        let mut args = vec!["get", kind, name, "-o", "json"];
        if let Some(namespace) = namespace {
            args.extend(["-n", namespace]);
        }
        let output = self.run(&args, None);
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                stderr.contains("NotFound") || stderr.contains("not found"),
                "kubectl {} failed: {stderr}",
                args.join(" ")
            );
            return None;
        }
        Some(serde_json::from_slice(&output.stdout).unwrap())
    }

    /// The objects of `kind` matching `selector` in every namespace.
    pub fn list(&self, kind: &str, selector: &str) -> Vec<Value> {
        let out = self.ok(&["get", kind, "-A", "-l", selector, "-o", "json"]);
        let list: Value = serde_json::from_str(&out).unwrap();
        list["items"].as_array().cloned().unwrap_or_default()
    }

    pub fn ensure_namespace(&self, name: &str) {
        self.apply(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}}}\n"
        ));
    }

    /// The Gateway API release whose CRDs are installed, if any.
    pub fn installed_gateway_api(&self) -> Option<String> {
        let crd = self.get("crd", None, "gateways.gateway.networking.k8s.io")?;
        crd["metadata"]["annotations"]["gateway.networking.k8s.io/bundle-version"]
            .as_str()
            .map(str::to_owned)
    }

    /// Installs one Gateway API CRD bundle the way the guide does (`kubectl apply
    /// --server-side`). Another release's CRDs cannot be swapped in place (stored versions
    /// differ, and deleting CRDs on this API server takes minutes: its CRD finalizer backs off
    /// while the deleted CRD's watch cache re-initializes), so a server holding another
    /// release is refused with instructions.
    pub fn install_gateway_api(&self, bundle: &Path, version: &str) {
        if let Some(installed) = self.installed_gateway_api() {
            assert_eq!(
                installed, version,
                "this API server has the Gateway API {installed} CRDs and the test wants \
                 {version}: start from an empty server (scripts/test-apiserver down && \
                 scripts/test-apiserver up) or set {RELEASE_ENV}={installed}"
            );
        }
        self.ok(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            bundle.to_str().unwrap(),
        ]);
        self.ok(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/gateways.gateway.networking.k8s.io",
            "crd/httproutes.gateway.networking.k8s.io",
            "crd/grpcroutes.gateway.networking.k8s.io",
            "crd/gatewayclasses.gateway.networking.k8s.io",
            "crd/referencegrants.gateway.networking.k8s.io",
        ]);
    }

    /// Deletes what earlier runs may have left: Gateway API objects (if the CRDs are there),
    /// what the controller provisions (there is no garbage collector on the test API server),
    /// and the objects the tests create by name.
    pub fn clean_slate(&self) {
        if self.installed_gateway_api().is_some() {
            for kind in [
                "gateways.gateway.networking.k8s.io",
                "httproutes.gateway.networking.k8s.io",
                "grpcroutes.gateway.networking.k8s.io",
                "referencegrants.gateway.networking.k8s.io",
            ] {
                self.ok(&[
                    "delete",
                    kind,
                    "--all",
                    "-A",
                    "--ignore-not-found",
                    "--wait=true",
                ]);
            }
            self.ok(&[
                "delete",
                "gatewayclasses.gateway.networking.k8s.io",
                "--all",
                "--ignore-not-found",
            ]);
        }
        self.ok(&[
            "delete",
            "deployments,services,serviceaccounts,roles,rolebindings,secrets",
            "-A",
            "-l",
            "app.kubernetes.io/managed-by=portcullis",
            "--ignore-not-found",
        ]);
        // Stand-ins for data-plane pods (no kubelet runs them here).
        self.ok(&[
            "delete",
            "pods",
            "-A",
            "-l",
            "app.kubernetes.io/name=portcullis-gateway",
            "--ignore-not-found",
        ]);
        self.ok(&[
            "delete",
            "clusterrolebindings",
            "-l",
            "app.kubernetes.io/managed-by=portcullis",
            "--ignore-not-found",
        ]);
        for (kind, ns, name) in [
            ("secret", "agentgateway-system", "https-cert"),
            ("configmap", "agentgateway-system", "ca-cert"),
            ("secret", "gateway-conformance-web-backend", "certificate"),
            (
                "secret",
                "gateway-conformance-infra",
                "tls-validity-checks-certificate",
            ),
            ("service", "httpbin", "httpbin"),
            ("endpointslice", "httpbin", "httpbin-local"),
        ] {
            self.ok(&["delete", kind, name, "-n", ns, "--ignore-not-found"]);
        }
    }
}

/// The condition `type_` of a condition list, as `(status, reason)`.
pub fn condition(conditions: &Value, type_: &str) -> Option<(String, String)> {
    conditions.as_array()?.iter().find_map(|c| {
        (c["type"] == type_).then(|| {
            (
                c["status"].as_str().unwrap_or_default().to_owned(),
                c["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
    })
}

/// Every condition of a list, as `type=status reason`.
pub fn describe_conditions(conditions: &Value) -> String {
    conditions
        .as_array()
        .map(|list| {
            list.iter()
                .map(|c| format!("{}={} {}", c["type"], c["status"], c["reason"]))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_else(|| "none".to_owned())
}

/// A process this test started; stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct Process {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

/// How long a stopped process may take to exit after SIGTERM (the data plane drains).
const STOP_GRACE: Duration = Duration::from_secs(10);

impl Process {
    /// Starts `portcullis ARGS` with stdout and stderr in `dir/NAME.log`.
    pub fn portcullis(name: &str, dir: &Path, kube: &Kube, args: &[&str]) -> Process {
        let log = dir.join(format!("{name}.log"));
        let out = fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(args)
            .env("KUBECONFIG", &kube.kubeconfig)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap();
        Process {
            name: name.to_owned(),
            child: Some(child),
            log,
        }
    }

    /// `portcullis serve --kube --gateway GATEWAY`, as the provisioned pod runs it, with its
    /// probes on `127.0.0.1:admin_port` (and `/config` off: another data plane on this host
    /// may hold the default port), one shard, and `extra` arguments.
    pub fn data_plane(
        name: &str,
        dir: &Path,
        kube: &Kube,
        gateway: &str,
        admin_port: u16,
        extra: &[&str],
    ) -> Process {
        let admin = format!("127.0.0.1:{admin_port}");
        let mut args = vec![
            "serve",
            "--kube",
            "--gateway",
            gateway,
            "--admin",
            &admin,
            "--admin-config",
            "off",
            "--shards",
            "1",
        ];
        args.extend_from_slice(extra);
        Process::portcullis(name, dir, kube, &args)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or_default()
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails the test if the process exited.
    pub fn assert_running(&mut self) {
        if let Some(child) = self.child.as_mut()
            && let Some(status) = child.try_wait().unwrap()
        {
            panic!(
                "{} exited ({status}); its log:\n{}",
                self.name,
                self.log_text()
            );
        }
    }

    /// SIGKILL: no cleanup at all (a crashed or partitioned replica).
    pub fn kill_hard(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for the exit (SIGKILL after a grace period); the exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            thread::sleep(POLL);
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A controller configuration for tests: admin endpoint on loopback, a short Lease.
pub fn controller_config(dir: &Path, identity: &str, lease: &str, admin_port: u16) -> PathBuf {
    controller_config_with(dir, identity, lease, admin_port, "")
}

/// [`controller_config`] with more `dataPlane` keys (`extra`: lines indented by two spaces).
pub fn controller_config_with(
    dir: &Path,
    identity: &str,
    lease: &str,
    admin_port: u16,
    extra: &str,
) -> PathBuf {
    let path = dir.join(format!("controller-{identity}.yaml"));
    fs::write(
        &path,
        format!(
            "adminAddress: 127.0.0.1:{admin_port}\n\
             leaderElection:\n  leaseName: {lease}\n  leaseNamespace: portcullis-system\n  \
             identity: {identity}\n  leaseDurationSeconds: {LEASE_DURATION_SECONDS}\n  \
             renewDeadlineSeconds: {RENEW_DEADLINE_SECONDS}\n  \
             retryPeriodSeconds: {RETRY_PERIOD_SECONDS}\n\
             dataPlane:\n  image: portcullis:e2e\n{extra}"
        ),
    )
    .unwrap();
    path
}

/// A small HTTP GET on loopback (the admin endpoints); `None` if nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::Read;
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// One sample of a Prometheus text metric without labels.
pub fn metric(port: u16, name: &str) -> Option<f64> {
    let (_, body) = http_get(port, "/metrics")?;
    body.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// A non-loopback IPv4 address of this machine: EndpointSlice validation refuses loopback
/// addresses, so the echo backend listens here.
pub fn host_ip() -> Ipv4Addr {
    let output = Command::new("hostname").arg("-I").output();
    let listed = output
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let from_hostname = listed
        .split_whitespace()
        .find_map(|word| match word.parse() {
            Ok(IpAddr::V4(ip)) if !ip.is_loopback() && !ip.is_link_local() => Some(ip),
            _ => None,
        });
    // Without `hostname -I`: the source address of a route to a documentation address.
    from_hostname
        .or_else(|| {
            let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
            socket.connect("192.0.2.1:9").ok()?;
            match socket.local_addr().ok()?.ip() {
                IpAddr::V4(ip) if !ip.is_loopback() => Some(ip),
                _ => None,
            }
        })
        .unwrap_or_else(|| {
            panic!(
                "this machine has no non-loopback IPv4 address; the EndpointSlice of the \
                 echo backend needs one (loopback addresses are refused by the API server)"
            )
        })
}

/// What curl did.
#[derive(Debug)]
pub struct Curl {
    pub exit: i32,
    pub http_code: String,
    pub body: String,
    pub stderr: String,
}

impl Curl {
    pub fn ok(&self) -> bool {
        self.exit == 0 && self.http_code == "200"
    }
}

/// The guide's localhost curl command on `port`, run in `certs`; with `client` (cert, key) it
/// adds `--cert --key --cacert ca-cert.pem` as the guide does.
pub fn guide_curl(certs: &Path, port: u16, client: Option<(&str, &str)>) -> Curl {
    let mut command = Command::new("curl");
    command
        .current_dir(certs)
        .args(["-sS", "-k", &format!("https://localhost:{port}/get")])
        .args(["--resolve", &format!("example.com:{port}:127.0.0.1")])
        .args(["-H", "Host: example.com"])
        .args(["--max-time", "10", "-w", "\n%{http_code}"]);
    if let Some((cert, key)) = client {
        command.args(["--cert", cert, "--key", key, "--cacert", "ca-cert.pem"]);
    }
    let output = command.output().expect("curl");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, http_code) = stdout
        .rsplit_once('\n')
        .map(|(b, c)| (b.to_owned(), c.to_owned()))
        .unwrap_or_else(|| (String::new(), stdout.clone()));
    Curl {
        exit: output.status.code().unwrap_or(-1),
        http_code,
        body,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs a bash script (the guide's openssl commands use `<(...)`) in `dir`.
pub fn bash(dir: &Path, script: &str) {
    let output = Command::new("bash")
        .current_dir(dir)
        .args(["-euo", "pipefail", "-c", script])
        .output()
        .expect("bash");
    assert!(
        output.status.success(),
        "script failed:\n{script}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The guide's "Create TLS certificates" steps, verbatim, in `dir/example_certs`.
pub fn guide_certificates(dir: &Path) -> PathBuf {
    let certs = dir.join("example_certs");
    fs::create_dir_all(&certs).unwrap();
    bash(
        &certs,
        r#"
openssl genrsa -out ca-key.pem 2048
openssl req -new -x509 -days 365 -key ca-key.pem -out ca-cert.pem \
  -subj "/CN=Test CA/O=Test Org"
openssl genrsa -out server-key.pem 2048
openssl req -new -key server-key.pem -out server.csr \
  -subj "/CN=example.com/O=Test Org"
openssl x509 -req -days 365 -in server.csr -CA ca-cert.pem -CAkey ca-key.pem \
  -CAcreateserial -out server-cert.pem \
  -extensions v3_req -extfile <(echo "[v3_req]"; echo "subjectAltName=DNS:example.com,DNS:*.example.com")
openssl genrsa -out client-key.pem 2048
openssl req -new -key client-key.pem -out client.csr \
  -subj "/CN=client.example.com/O=Test Org"
openssl x509 -req -days 365 -in client.csr -CA ca-cert.pem -CAkey ca-key.pem \
  -CAcreateserial -out client-cert.pem \
  -extensions v3_req -extfile <(echo "[v3_req]"; echo "subjectAltName=DNS:example.com,DNS:*.example.com")
"#,
    );
    certs
}

/// A second CA and a client certificate it signs (the same commands, other names), for the
/// CA rotation.
pub fn rotated_ca(certs: &Path) {
    bash(
        certs,
        r#"
openssl genrsa -out ca2-key.pem 2048
openssl req -new -x509 -days 365 -key ca2-key.pem -out ca2-cert.pem \
  -subj "/CN=Test CA 2/O=Test Org"
openssl genrsa -out client2-key.pem 2048
openssl req -new -key client2-key.pem -out client2.csr \
  -subj "/CN=client2.example.com/O=Test Org"
openssl x509 -req -days 365 -in client2.csr -CA ca2-cert.pem -CAkey ca2-key.pem \
  -CAcreateserial -out client2-cert.pem \
  -extensions v3_req -extfile <(echo "[v3_req]"; echo "subjectAltName=DNS:example.com,DNS:*.example.com")
"#,
    );
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub fn listening(port: u16) -> bool {
    TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(1),
    )
    .is_ok()
}
