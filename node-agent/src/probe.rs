//! Startup, readiness and liveness probes, as the kubelet runs them.
//!
//! [`ContainerProbes`] is the decision, a plain function of probe results and time: which probe
//! is due when, whether the container counts as started and ready, and when a failure means
//! a restart. The thresholds work as the kubelet's: a result changes only after
//! `successThreshold` (or `failureThreshold`) equal results in a row; readiness starts as not
//! ready, liveness as alive; neither runs before the startup probe has succeeded. [`check`]
//! runs one probe: HTTP GET (2xx/3xx succeed) and TCP connect to the pod's IP from the host,
//! or a command in the container's namespaces (exit 0 succeeds).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::time::Instant;

const DEFAULT_PERIOD_SECONDS: i32 = 10;
const DEFAULT_TIMEOUT_SECONDS: i32 = 1;
const DEFAULT_SUCCESS_THRESHOLD: i32 = 1;
const DEFAULT_FAILURE_THRESHOLD: i32 = 3;
/// What the kubelet sends, so that servers that tell probes apart by it see a probe.
const PROBE_USER_AGENT: &str = "kube-probe/1.37";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    Startup,
    Readiness,
    Liveness,
}

/// How a probe runs, with the API's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSettings {
    pub action: ProbeAction,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

/// What a probe does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeAction {
    /// GET `path` on `port` of `host` (default: the pod's IP).
    Http {
        host: Option<String>,
        port: u16,
        path: String,
        headers: Vec<(String, String)>,
    },
    /// Connect to `port` of `host` (default: the pod's IP).
    Tcp { host: Option<String>, port: u16 },
    /// Run a command in the container; exit 0 succeeds.
    Exec { command: Vec<String> },
    /// A probe this node cannot run (HTTPS, gRPC, an unknown named port): it always fails,
    /// with this reason in the log.
    Unsupported(String),
}

fn seconds(value: Option<i32>, default: i32) -> Duration {
    Duration::from_secs(u64::try_from(value.unwrap_or(default)).unwrap_or(0))
}

fn threshold(value: Option<i32>, default: i32) -> u32 {
    u32::try_from(value.unwrap_or(default)).unwrap_or(1).max(1)
}

/// A container port by number or by name.
pub fn resolve_port(port: &IntOrString, container: &Container) -> Option<u16> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).ok().filter(|p| *p != 0),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

impl ProbeSettings {
    pub fn of(probe: &Probe, kind: ProbeKind, container: &Container) -> Self {
        let action = if let Some(http) = &probe.http_get {
            let scheme = http.scheme.as_deref().unwrap_or("HTTP");
            match resolve_port(&http.port, container) {
                _ if !scheme.eq_ignore_ascii_case("HTTP") => {
                    ProbeAction::Unsupported(format!("scheme {scheme}"))
                }
                Some(port) => ProbeAction::Http {
                    host: http.host.clone().filter(|h| !h.is_empty()),
                    port,
                    path: http.path.clone().unwrap_or_else(|| "/".to_owned()),
                    headers: http
                        .http_headers
                        .iter()
                        .flatten()
                        .map(|h| (h.name.clone(), h.value.clone()))
                        .collect(),
                },
                None => ProbeAction::Unsupported(format!("port {:?}", http.port)),
            }
        } else if let Some(tcp) = &probe.tcp_socket {
            match resolve_port(&tcp.port, container) {
                Some(port) => ProbeAction::Tcp {
                    host: tcp.host.clone().filter(|h| !h.is_empty()),
                    port,
                },
                None => ProbeAction::Unsupported(format!("port {:?}", tcp.port)),
            }
        } else if let Some(exec) = &probe.exec {
            ProbeAction::Exec {
                command: exec.command.clone().unwrap_or_default(),
            }
        } else {
            ProbeAction::Unsupported("no handler (gRPC is not supported)".to_owned())
        };
        // Liveness and startup probes must have a success threshold of 1 (API validation).
        let success_threshold = match kind {
            ProbeKind::Readiness => threshold(probe.success_threshold, DEFAULT_SUCCESS_THRESHOLD),
            ProbeKind::Startup | ProbeKind::Liveness => 1,
        };
        Self {
            action,
            initial_delay: seconds(probe.initial_delay_seconds, 0),
            period: seconds(probe.period_seconds, DEFAULT_PERIOD_SECONDS)
                .max(Duration::from_secs(1)),
            timeout: seconds(probe.timeout_seconds, DEFAULT_TIMEOUT_SECONDS)
                .max(Duration::from_secs(1)),
            success_threshold,
            failure_threshold: threshold(probe.failure_threshold, DEFAULT_FAILURE_THRESHOLD),
        }
    }
}

/// One probe's running result.
#[derive(Debug, Clone)]
struct Tracker {
    settings: ProbeSettings,
    /// The result as it counts (after thresholds).
    passing: bool,
    /// The last raw result and how many times in a row it came.
    last: Option<bool>,
    streak: u32,
    next_due: Instant,
}

impl Tracker {
    fn new(settings: ProbeSettings, passing: bool, first_due: Instant) -> Self {
        Self {
            settings,
            passing,
            last: None,
            streak: 0,
            next_due: first_due,
        }
    }

    fn record(&mut self, success: bool, now: Instant) {
        if self.last == Some(success) {
            self.streak = self.streak.saturating_add(1);
        } else {
            self.last = Some(success);
            self.streak = 1;
        }
        let needed = if success {
            self.settings.success_threshold
        } else {
            self.settings.failure_threshold
        };
        if self.streak >= needed {
            self.passing = success;
        }
        self.next_due = now + self.settings.period;
    }
}

/// What a probe result means for the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// Kill and (per restart policy) restart the container; the message says why.
    Restart(String),
}

/// The probes of one running container.
#[derive(Debug, Clone)]
pub struct ContainerProbes {
    startup: Option<Tracker>,
    readiness: Option<Tracker>,
    liveness: Option<Tracker>,
    started_at: Instant,
}

impl ContainerProbes {
    /// The probes of `container`, which started at `started_at`.
    pub fn new(container: &Container, started_at: Instant) -> Self {
        let tracker = |probe: &Option<Probe>, kind, passing| {
            probe.as_ref().map(|p| {
                let settings = ProbeSettings::of(p, kind, container);
                let first_due = started_at + settings.initial_delay;
                Tracker::new(settings, passing, first_due)
            })
        };
        Self {
            startup: tracker(&container.startup_probe, ProbeKind::Startup, false),
            readiness: tracker(&container.readiness_probe, ProbeKind::Readiness, false),
            liveness: tracker(&container.liveness_probe, ProbeKind::Liveness, true),
            started_at,
        }
    }

    /// Whether the startup probe (if any) has succeeded.
    pub fn started(&self) -> bool {
        self.startup.as_ref().is_none_or(|t| t.passing)
    }

    /// Whether the container counts as ready (it is running: the caller knows).
    pub fn ready(&self) -> bool {
        self.started() && self.readiness.as_ref().is_none_or(|t| t.passing)
    }

    fn tracker(&self, kind: ProbeKind) -> Option<&Tracker> {
        match kind {
            ProbeKind::Startup => self.startup.as_ref(),
            ProbeKind::Readiness => self.readiness.as_ref(),
            ProbeKind::Liveness => self.liveness.as_ref(),
        }
    }

    fn tracker_mut(&mut self, kind: ProbeKind) -> Option<&mut Tracker> {
        match kind {
            ProbeKind::Startup => self.startup.as_mut(),
            ProbeKind::Readiness => self.readiness.as_mut(),
            ProbeKind::Liveness => self.liveness.as_mut(),
        }
    }

    /// The probe to run next and when: the startup probe until it succeeds, then readiness and
    /// liveness. `None`: nothing to probe.
    pub fn next_due(&self) -> Option<(ProbeKind, Instant)> {
        let kinds: &[ProbeKind] = if self.started() {
            &[ProbeKind::Readiness, ProbeKind::Liveness]
        } else {
            &[ProbeKind::Startup]
        };
        kinds
            .iter()
            .filter_map(|kind| self.tracker(*kind).map(|t| (*kind, t.next_due)))
            .min_by_key(|(_, due)| *due)
    }

    pub fn settings(&self, kind: ProbeKind) -> Option<&ProbeSettings> {
        self.tracker(kind).map(|t| &t.settings)
    }

    /// Takes one result of the `kind` probe, run at `now`.
    pub fn record(&mut self, kind: ProbeKind, success: bool, now: Instant) -> Verdict {
        let was_started = self.started();
        let started_at = self.started_at;
        let Some(tracker) = self.tracker_mut(kind) else {
            return Verdict::Keep;
        };
        tracker.record(success, now);
        let passing = tracker.passing;
        let failures = tracker.streak;
        if !was_started && self.started() {
            // The other probes start now, or at their initial delay if that is later.
            for t in [self.readiness.as_mut(), self.liveness.as_mut()]
                .into_iter()
                .flatten()
            {
                t.next_due = (started_at + t.settings.initial_delay).max(now);
            }
        }
        match kind {
            ProbeKind::Liveness if !passing => {
                Verdict::Restart(format!("liveness probe failed {failures} times in a row"))
            }
            ProbeKind::Startup if !passing && failures >= self.startup_failure_threshold() => {
                Verdict::Restart(format!("startup probe failed {failures} times in a row"))
            }
            _ => Verdict::Keep,
        }
    }

    fn startup_failure_threshold(&self) -> u32 {
        self.startup
            .as_ref()
            .map_or(u32::MAX, |t| t.settings.failure_threshold)
    }
}

/// Runs one probe against a pod at `pod_ip`; `exec` builds the command for exec probes (in
/// the container's namespaces). Whether it succeeded; a timeout fails.
pub async fn check(
    action: &ProbeAction,
    pod_ip: Ipv4Addr,
    timeout: Duration,
    exec: impl FnOnce(&[String]) -> Option<tokio::process::Command>,
) -> bool {
    let target = |host: &Option<String>, port: u16| -> Option<SocketAddr> {
        let ip = match host {
            Some(h) => h.parse::<IpAddr>().ok()?,
            None => IpAddr::V4(pod_ip),
        };
        Some(SocketAddr::new(ip, port))
    };
    let attempt = async {
        match action {
            ProbeAction::Http {
                host,
                port,
                path,
                headers,
            } => match target(host, *port) {
                Some(address) => http_get(address, path, headers).await,
                None => false,
            },
            ProbeAction::Tcp { host, port } => match target(host, *port) {
                Some(address) => tokio::net::TcpStream::connect(address).await.is_ok(),
                None => false,
            },
            ProbeAction::Exec { command } => match exec(command) {
                Some(mut cmd) => {
                    cmd.stdin(std::process::Stdio::null())
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .kill_on_drop(true);
                    matches!(cmd.status().await, Ok(s) if s.success())
                }
                None => false,
            },
            ProbeAction::Unsupported(_) => false,
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(false)
}

async fn http_get(address: SocketAddr, path: &str, headers: &[(String, String)]) -> bool {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(address).await.ok()?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(connection);
        let mut request = hyper::Request::get(path)
            .header(hyper::header::HOST, address.to_string())
            .header(hyper::header::USER_AGENT, PROBE_USER_AGENT)
            .header(hyper::header::ACCEPT, "*/*");
        for (name, value) in headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let response = sender
            .send_request(request.body(Empty::<Bytes>::new()).ok()?)
            .await
            .ok()?;
        Some(response.status().as_u16())
    };
    matches!(exchange.await, Some(code) if (200..400).contains(&code))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{ContainerPort, HTTPGetAction, TCPSocketAction};

    use super::*;

    fn http_probe(period: i32, success: i32, failure: i32, delay: i32) -> Probe {
        Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/healthz".into()),
                port: IntOrString::String("admin".into()),
                ..HTTPGetAction::default()
            }),
            period_seconds: Some(period),
            success_threshold: Some(success),
            failure_threshold: Some(failure),
            initial_delay_seconds: Some(delay),
            ..Probe::default()
        }
    }

    fn container() -> Container {
        Container {
            ports: Some(vec![ContainerPort {
                name: Some("admin".into()),
                container_port: 9902,
                ..ContainerPort::default()
            }]),
            ..Container::default()
        }
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn settings_fill_in_defaults_and_resolve_named_ports() {
        let probe = Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(8080),
                host: None,
            }),
            ..Probe::default()
        };
        let s = ProbeSettings::of(&probe, ProbeKind::Readiness, &container());
        assert_eq!(
            s.action,
            ProbeAction::Tcp {
                host: None,
                port: 8080
            }
        );
        assert_eq!(s.period, 10 * S);
        assert_eq!(s.timeout, S);
        assert_eq!((s.success_threshold, s.failure_threshold), (1, 3));
        assert_eq!(s.initial_delay, Duration::ZERO);

        let s = ProbeSettings::of(&http_probe(5, 2, 4, 3), ProbeKind::Liveness, &container());
        assert!(
            matches!(s.action, ProbeAction::Http { port: 9902, ref path, .. } if path == "/healthz")
        );
        assert_eq!(s.success_threshold, 1, "liveness always needs one success");

        let mut unknown_port = http_probe(5, 1, 1, 0);
        unknown_port.http_get.as_mut().unwrap().port = IntOrString::String("nope".into());
        let s = ProbeSettings::of(&unknown_port, ProbeKind::Readiness, &container());
        assert!(matches!(s.action, ProbeAction::Unsupported(_)));
    }

    #[test]
    fn readiness_needs_success_threshold_and_failure_threshold_in_a_row() {
        let t0 = Instant::now();
        let c = Container {
            readiness_probe: Some(http_probe(2, 2, 3, 5)),
            ..container()
        };
        let mut probes = ContainerProbes::new(&c, t0);
        assert!(!probes.ready(), "not ready before the first success");
        assert_eq!(probes.next_due(), Some((ProbeKind::Readiness, t0 + 5 * S)));

        assert_eq!(
            probes.record(ProbeKind::Readiness, true, t0 + 5 * S),
            Verdict::Keep
        );
        assert!(!probes.ready(), "one success of two");
        assert_eq!(probes.next_due(), Some((ProbeKind::Readiness, t0 + 7 * S)));
        probes.record(ProbeKind::Readiness, true, t0 + 7 * S);
        assert!(probes.ready());

        probes.record(ProbeKind::Readiness, false, t0 + 9 * S);
        probes.record(ProbeKind::Readiness, false, t0 + 11 * S);
        assert!(probes.ready(), "two failures of three");
        probes.record(ProbeKind::Readiness, true, t0 + 13 * S);
        probes.record(ProbeKind::Readiness, false, t0 + 15 * S);
        probes.record(ProbeKind::Readiness, false, t0 + 17 * S);
        assert!(probes.ready(), "the streak starts over after a success");
        assert_eq!(
            probes.record(ProbeKind::Readiness, false, t0 + 19 * S),
            Verdict::Keep
        );
        assert!(!probes.ready());
    }

    #[test]
    fn liveness_restarts_after_failure_threshold() {
        let t0 = Instant::now();
        let c = Container {
            liveness_probe: Some(http_probe(1, 1, 2, 0)),
            ..container()
        };
        let mut probes = ContainerProbes::new(&c, t0);
        assert!(probes.ready(), "no readiness probe: ready when running");
        assert_eq!(probes.record(ProbeKind::Liveness, false, t0), Verdict::Keep);
        assert!(matches!(
            probes.record(ProbeKind::Liveness, false, t0 + S),
            Verdict::Restart(_)
        ));
    }

    #[test]
    fn startup_gates_the_other_probes_and_restarts_when_it_keeps_failing() {
        let t0 = Instant::now();
        let c = Container {
            startup_probe: Some(http_probe(1, 1, 3, 0)),
            readiness_probe: Some(http_probe(5, 1, 1, 2)),
            liveness_probe: Some(http_probe(5, 1, 1, 0)),
            ..container()
        };
        let mut probes = ContainerProbes::new(&c, t0);
        assert!(!probes.started());
        assert_eq!(probes.next_due(), Some((ProbeKind::Startup, t0)));
        probes.record(ProbeKind::Startup, false, t0);
        assert_eq!(
            probes.next_due(),
            Some((ProbeKind::Startup, t0 + S)),
            "only startup runs"
        );
        assert_eq!(
            probes.record(ProbeKind::Startup, true, t0 + S),
            Verdict::Keep
        );
        assert!(probes.started());
        assert!(!probes.ready());
        // Liveness has no initial delay: due at once; readiness at its delay (t0 + 2 s).
        assert_eq!(probes.next_due(), Some((ProbeKind::Liveness, t0 + S)));

        let mut failing = ContainerProbes::new(&c, t0);
        failing.record(ProbeKind::Startup, false, t0);
        failing.record(ProbeKind::Startup, false, t0 + S);
        assert!(matches!(
            failing.record(ProbeKind::Startup, false, t0 + 2 * S),
            Verdict::Restart(_)
        ));
    }

    #[test]
    fn no_probes_means_started_and_ready_with_nothing_due() {
        let probes = ContainerProbes::new(&container(), Instant::now());
        assert!(probes.started() && probes.ready());
        assert_eq!(probes.next_due(), None);
    }

    #[tokio::test]
    async fn http_and_tcp_checks_against_real_sockets() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 1024];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let head = String::from_utf8_lossy(&buf[..n]);
                    let status = if head.starts_with("GET /ok ") {
                        200
                    } else {
                        500
                    };
                    let _ = s
                        .write_all(
                            format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n").as_bytes(),
                        )
                        .await;
                });
            }
        });
        let lo = Ipv4Addr::LOCALHOST;
        let http = |path: &str| ProbeAction::Http {
            host: None,
            port,
            path: path.into(),
            headers: vec![],
        };
        let no_exec = |_: &[String]| None;
        assert!(check(&http("/ok"), lo, 5 * S, no_exec).await);
        assert!(!check(&http("/fail"), lo, 5 * S, no_exec).await);
        assert!(check(&ProbeAction::Tcp { host: None, port }, lo, 5 * S, no_exec).await);
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed_port = closed.local_addr().unwrap().port();
        drop(closed);
        assert!(
            !check(
                &ProbeAction::Tcp {
                    host: None,
                    port: closed_port
                },
                lo,
                5 * S,
                no_exec
            )
            .await
        );
        let exec = |argv: &[String]| {
            let mut cmd = tokio::process::Command::new(&argv[0]);
            cmd.args(&argv[1..]);
            Some(cmd)
        };
        assert!(
            check(
                &ProbeAction::Exec {
                    command: vec!["true".into()]
                },
                lo,
                5 * S,
                exec
            )
            .await
        );
        assert!(
            !check(
                &ProbeAction::Exec {
                    command: vec!["false".into()]
                },
                lo,
                5 * S,
                exec
            )
            .await
        );
    }
}
