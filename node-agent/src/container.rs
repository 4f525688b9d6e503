//! One container: a local process in the pod's network namespace, its probes, and its
//! restarts.
//!
//! The process is started as `ip netns exec <netns> <agent> run-in-pod ...`: `ip netns exec`
//! enters the namespace in a private mount namespace, where `run-in-pod` bind-mounts the
//! volumes at their mountPaths and then execs the program (the pid stays the same: it is the
//! process group leader the agent signals). Output goes to a log file in the state dir.
//!
//! The supervisor reports every change of the container's view to the pod worker; the
//! decisions (probe results, restart back-off) are the pure functions of [`crate::probe`] and
//! [`crate::backoff`].

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::agent::Agent;
use crate::backoff::restart_delay;
use crate::probe::{self, ContainerProbes, Verdict};
use crate::process::{self, Signal};
use crate::spec::{self, PodFacts};
use crate::status::{ContainerView, RunState};

/// How long to wait before trying again to start a container whose spec refers to objects
/// that do not exist (yet).
const CONFIG_RETRY: Duration = Duration::from_secs(3);
/// Exit code of `run-in-pod` when it cannot set up the container (a bind mount failed, the
/// program does not exist): the shell's "command not found".
pub const SETUP_FAILED_EXIT: i32 = 127;

/// A volume bind-mounted into a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bind {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

/// Where and how a container's processes run.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The pod's network namespace; `None` for hostNetwork pods.
    pub netns: Option<String>,
    pub binds: Vec<Bind>,
    pub working_dir: Option<String>,
    pub log_path: PathBuf,
}

impl Launch {
    /// The command that runs `argv` in the container's namespaces with `env` (nothing else of
    /// the agent's environment).
    pub fn command(&self, agent_exe: &Path, argv: &[String], env: &[(String, String)]) -> Command {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]);
                c
            }
            None => {
                // The host's network, but still a mount namespace of its own for the volumes.
                let mut c = Command::new("unshare");
                c.args(["--mount", "--propagation", "slave"]);
                c
            }
        };
        cmd.arg(agent_exe).arg("run-in-pod");
        cmd.arg("--binds")
            .arg(serde_json::to_string(&self.binds).unwrap_or_else(|_| "[]".to_owned()));
        if let Some(dir) = &self.working_dir {
            cmd.arg("--workdir").arg(dir);
        }
        cmd.arg("--").args(argv);
        cmd.env_clear().envs(env.iter().map(|(k, v)| (k, v)));
        // `ip` itself is found with the agent's PATH.
        if let Ok(path) = std::env::var("PATH") {
            cmd.env("PATH", path);
        }
        if let Some((_, path)) = env.iter().find(|(k, _)| k == "PATH") {
            cmd.env("PATH", path);
        }
        cmd
    }
}

/// What the supervisor needs to know about its container and pod.
#[derive(Debug, Clone)]
pub struct ContainerTask {
    pub index: usize,
    pub container: Container,
    pub pod: Arc<Pod>,
    pub facts: PodFacts,
    pub launch: Launch,
    pub probe_ip: Ipv4Addr,
}

/// The pod's restart policy for one container's exit.
fn restarts(pod: &Pod, exit_code: i32) -> bool {
    match pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) {
        Some("Never") => false,
        Some("OnFailure") => exit_code != 0,
        _ => true,
    }
}

/// The grace period for stopping this pod's containers.
pub fn grace_period(pod: &Pod) -> Duration {
    let seconds = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(30);
    Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
}

/// How a run ended.
enum Ended {
    Exited(ExitStatus),
    /// Killed for a failed liveness or startup probe.
    Killed(ExitStatus, String),
    /// Stopped because the pod stops.
    Stopped,
}

/// SIGTERM to the container's process group, SIGKILL after `grace`; waits for the exit.
pub async fn stop_child(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) else {
        return child.wait().await.ok();
    };
    process::kill_group(pid, Signal::Term);
    let status = match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status.ok(),
        Err(_) => {
            process::kill_group(pid, Signal::Kill);
            child.wait().await.ok()
        }
    };
    // What the program started and left behind in its group.
    process::kill_group(pid, Signal::Kill);
    status
}

fn exit_code(status: &ExitStatus) -> (i32, Option<i32>) {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => (code, None),
        (None, Some(signal)) => (128 + signal, Some(signal)),
        (None, None) => (-1, None),
    }
}

/// Runs the container until `stop` says so (with the grace period it carries), reporting
/// every change of its view as `(index, view)`.
pub async fn supervise(
    agent: Arc<Agent>,
    task: ContainerTask,
    updates: mpsc::UnboundedSender<(usize, ContainerView)>,
    mut stop: watch::Receiver<Option<Duration>>,
) {
    let container = &task.container;
    let image = container.image.clone().unwrap_or_default();
    let mut view = ContainerView {
        name: container.name.clone(),
        image: image.clone(),
        state: RunState::waiting("ContainerCreating", None),
        last_terminated: None,
        restart_count: 0,
        ready: false,
        started: false,
        will_restart: true,
    };
    let report = |view: &ContainerView| {
        let _ = updates.send((task.index, view.clone()));
    };
    let stopped = |stop: &watch::Receiver<Option<Duration>>| stop.borrow().is_some();
    let mut delay = None;
    let pod_key = format!(
        "{}/{}",
        task.pod.metadata.namespace.as_deref().unwrap_or_default(),
        task.pod.metadata.name.as_deref().unwrap_or_default()
    );

    loop {
        if stopped(&stop) {
            return;
        }
        let Some(entry) = agent.images.lookup(&image) else {
            view.state = RunState::waiting(
                "ImageNotMapped",
                Some(format!("image {image:?} is not in the node's image map")),
            );
            view.will_restart = false;
            report(&view);
            warn!(pod = %pod_key, container = %container.name, %image, "image not in the image map");
            stop_requested(&mut stop).await;
            return;
        };
        let env = match crate::pod::fetch_sources(&agent.client, &task.pod).await {
            Ok(sources) => spec::environment(&task.pod, container, &task.facts, &sources)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let env = match env {
            Ok(env) => env,
            Err(message) => {
                view.state = RunState::waiting("CreateContainerConfigError", Some(message));
                report(&view);
                if wait_or_stop(&mut stop, CONFIG_RETRY).await {
                    return;
                }
                continue;
            }
        };
        let argv = spec::command_line(container, entry, &env);
        let child = open_log(&task.launch.log_path).and_then(|(out, err)| {
            let mut cmd = task.launch.command(&agent.exe, &argv, &env);
            cmd.stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .process_group(0)
                .kill_on_drop(true);
            cmd.spawn()
        });
        let mut child = match child {
            Ok(child) => child,
            Err(e) => {
                view.state = RunState::waiting("RunContainerError", Some(e.to_string()));
                report(&view);
                if wait_or_stop(&mut stop, CONFIG_RETRY).await {
                    return;
                }
                continue;
            }
        };
        info!(pod = %pod_key, container = %container.name, ?argv, "container started");
        let started_wall = Timestamp::now();
        let started_at = Instant::now();
        let mut probes = ContainerProbes::new(container, started_at);
        view.state = RunState::Running {
            started_at: started_wall,
        };
        view.started = probes.started();
        view.ready = probes.ready();
        report(&view);

        let ended = loop {
            let due = probes.next_due();
            tokio::select! {
                status = child.wait() => match status {
                    Ok(status) => break Ended::Exited(status),
                    Err(e) => {
                        warn!(pod = %pod_key, container = %container.name, error = %e, "cannot wait for the container");
                        break Ended::Exited(std::os::unix::process::ExitStatusExt::from_raw(-1));
                    }
                },
                () = async {
                    match due {
                        Some((_, at)) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {
                    let Some((kind, _)) = due else { continue };
                    let Some(settings) = probes.settings(kind).cloned() else { continue };
                    let exec = |command: &[String]| Some(task.launch.command(&agent.exe, command, &env));
                    let ok = probe::check(&settings.action, task.probe_ip, settings.timeout, exec).await;
                    if !ok {
                        info!(pod = %pod_key, container = %container.name, ?kind, action = ?settings.action, "probe failed");
                    }
                    let verdict = probes.record(kind, ok, Instant::now());
                    let (started, ready) = (probes.started(), probes.ready());
                    if (started, ready) != (view.started, view.ready) {
                        view.started = started;
                        view.ready = ready;
                        report(&view);
                    }
                    if let Verdict::Restart(why) = verdict {
                        info!(pod = %pod_key, container = %container.name, %why, "killing the container");
                        let status = stop_child(&mut child, grace_period(&task.pod)).await;
                        let status = status.unwrap_or_else(|| std::os::unix::process::ExitStatusExt::from_raw(9));
                        break Ended::Killed(status, why);
                    }
                },
                grace = stop_requested(&mut stop) => {
                    stop_child(&mut child, grace).await;
                    break Ended::Stopped;
                }
            }
        };
        let ran_for = started_at.elapsed();
        let (status, message) = match ended {
            Ended::Stopped => return,
            Ended::Exited(status) => (status, None),
            Ended::Killed(status, why) => (status, Some(why)),
        };
        let (code, signal) = exit_code(&status);
        let terminated = RunState::Terminated {
            exit_code: code,
            signal,
            reason: if code == 0 { "Completed" } else { "Error" }.to_owned(),
            message,
            started_at: started_wall,
            finished_at: Timestamp::now(),
        };
        info!(pod = %pod_key, container = %container.name, exit_code = code, "container ended");
        view.ready = false;
        if !restarts(&task.pod, code) {
            view.state = terminated;
            view.will_restart = false;
            report(&view);
            stop_requested(&mut stop).await;
            return;
        }
        let wait = restart_delay(delay, ran_for);
        delay = Some(wait);
        view.last_terminated = Some(terminated);
        view.state = RunState::waiting(
            "CrashLoopBackOff",
            Some(format!(
                "back-off {}s restarting failed container={} pod={pod_key}",
                wait.as_secs(),
                container.name
            )),
        );
        report(&view);
        if wait_or_stop(&mut stop, wait).await {
            return;
        }
        view.restart_count += 1;
    }
}

/// Waits for the stop; the grace period it gives (none when the pod worker is gone).
async fn stop_requested(stop: &mut watch::Receiver<Option<Duration>>) -> Duration {
    stop.wait_for(Option::is_some)
        .await
        .map_or(Duration::ZERO, |r| r.unwrap_or_default())
}

/// Waits `duration`; whether the stop came first.
async fn wait_or_stop(stop: &mut watch::Receiver<Option<Duration>>, duration: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(duration) => false,
        _ = stop_requested(stop) => true,
    }
}

fn open_log(path: &Path) -> std::io::Result<(std::fs::File, std::fs::File)> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let err = out.try_clone()?;
    Ok((out, err))
}

/// The `run-in-pod` side, inside the pod's namespaces: bind-mount the volumes, change to the
/// working dir, exec the program. Returns only on failure.
pub fn run_in_pod(binds: &[Bind], working_dir: Option<&Path>, argv: &[String]) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    for bind in binds {
        let mut mount = std::process::Command::new("mount");
        mount.arg("--bind").arg(&bind.source).arg(&bind.target);
        if let Err(e) = run_quiet(&mut mount) {
            return e;
        }
        if bind.read_only {
            let mut remount = std::process::Command::new("mount");
            remount.args(["-o", "remount,bind,ro"]).arg(&bind.target);
            if let Err(e) = run_quiet(&mut remount) {
                return e;
            }
        }
    }
    if let Some(dir) = working_dir
        && let Err(e) = std::env::set_current_dir(dir)
    {
        return e;
    }
    let Some((program, args)) = argv.split_first() else {
        return std::io::Error::other("no command to run");
    };
    std::process::Command::new(program).args(args).exec()
}

fn run_quiet(cmd: &mut std::process::Command) -> std::io::Result<()> {
    let output = cmd.output()?;
    if output.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::PodSpec;

    use super::*;

    fn pod(policy: Option<&str>) -> Pod {
        Pod {
            spec: Some(PodSpec {
                restart_policy: policy.map(Into::into),
                termination_grace_period_seconds: Some(7),
                ..PodSpec::default()
            }),
            ..Pod::default()
        }
    }

    #[test]
    fn restart_policies() {
        assert!(restarts(&pod(None), 0));
        assert!(restarts(&pod(Some("Always")), 0));
        assert!(restarts(&pod(Some("OnFailure")), 1));
        assert!(!restarts(&pod(Some("OnFailure")), 0));
        assert!(!restarts(&pod(Some("Never")), 1));
    }

    #[test]
    fn the_deletion_grace_period_wins_over_the_spec() {
        let mut p = pod(None);
        assert_eq!(grace_period(&p), Duration::from_secs(7));
        p.metadata.deletion_grace_period_seconds = Some(2);
        assert_eq!(grace_period(&p), Duration::from_secs(2));
        assert_eq!(grace_period(&Pod::default()), Duration::from_secs(30));
    }
}
