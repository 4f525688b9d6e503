//! A pod's status from what the node knows of its containers: phase, conditions, IPs and
//! container statuses, by the kubelet's rules. Pure; the pod worker writes the result when it
//! differs from what it wrote last.
//!
//! Phase: `Pending` while a container waits that never ran; `Running` while one runs or will
//! be restarted; `Succeeded` when all exited 0 and none restarts; `Failed` when all exited, one
//! did not exit 0, and none restarts. A condition keeps its `lastTransitionTime` while its
//! status stays the same.

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// A container's state as the node tracks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: Timestamp,
    },
    Terminated {
        exit_code: i32,
        signal: Option<i32>,
        reason: String,
        message: Option<String>,
        started_at: Timestamp,
        finished_at: Timestamp,
    },
}

impl RunState {
    pub fn waiting(reason: &str, message: Option<String>) -> Self {
        Self::Waiting {
            reason: reason.to_owned(),
            message,
        }
    }

    fn to_api(&self) -> ContainerState {
        match self {
            Self::Waiting { reason, message } => ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.clone()),
                    message: message.clone(),
                }),
                ..ContainerState::default()
            },
            Self::Running { started_at } => ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(Time(*started_at)),
                }),
                ..ContainerState::default()
            },
            Self::Terminated {
                exit_code,
                signal,
                reason,
                message,
                started_at,
                finished_at,
            } => ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: *exit_code,
                    signal: *signal,
                    reason: Some(reason.clone()),
                    message: message.clone(),
                    started_at: Some(Time(*started_at)),
                    finished_at: Some(Time(*finished_at)),
                    container_id: None,
                }),
                ..ContainerState::default()
            },
        }
    }
}

/// What the pod worker knows of one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerView {
    pub name: String,
    pub image: String,
    pub state: RunState,
    /// The last run's end, once it has ended and been restarted (or is about to be).
    pub last_terminated: Option<RunState>,
    pub restart_count: i32,
    pub ready: bool,
    pub started: bool,
    /// Whether the restart policy lets this container run again after it ended.
    pub will_restart: bool,
}

/// Everything the status is made of.
#[derive(Debug, Clone)]
pub struct PodView<'a> {
    pub containers: &'a [ContainerView],
    pub pod_ip: Option<Ipv4Addr>,
    pub host_ip: Ipv4Addr,
    pub start_time: Timestamp,
    /// The conditions as the API server has them (for transition times).
    pub previous: Option<&'a PodStatus>,
    pub now: Timestamp,
}

pub const PHASE_PENDING: &str = "Pending";
pub const PHASE_RUNNING: &str = "Running";
pub const PHASE_SUCCEEDED: &str = "Succeeded";
pub const PHASE_FAILED: &str = "Failed";

/// The phase by the kubelet's rules (see the module docs).
pub fn phase(containers: &[ContainerView]) -> &'static str {
    let mut waiting = 0;
    let mut running = 0;
    let mut stopped = 0;
    let mut succeeded = 0;
    let mut restarting = 0;
    for c in containers {
        match &c.state {
            RunState::Running { .. } => running += 1,
            RunState::Waiting { .. } if c.last_terminated.is_some() => {
                stopped += 1;
                restarting += 1;
            }
            RunState::Waiting { .. } => waiting += 1,
            RunState::Terminated { exit_code, .. } => {
                stopped += 1;
                if *exit_code == 0 {
                    succeeded += 1;
                }
                if c.will_restart {
                    restarting += 1;
                }
            }
        }
    }
    if waiting > 0 || containers.is_empty() {
        PHASE_PENDING
    } else if running > 0 || restarting > 0 {
        PHASE_RUNNING
    } else if stopped == succeeded {
        PHASE_SUCCEEDED
    } else {
        PHASE_FAILED
    }
}

fn condition(
    previous: Option<&PodStatus>,
    now: Timestamp,
    type_: &str,
    status: bool,
    reason: Option<&str>,
    message: Option<String>,
) -> PodCondition {
    let status = if status { "True" } else { "False" }.to_owned();
    let old = previous
        .and_then(|p| p.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == type_));
    let last_transition_time = match old {
        Some(old) if old.status == status => old.last_transition_time.clone(),
        _ => Some(Time(now)),
    };
    PodCondition {
        type_: type_.to_owned(),
        status,
        reason: reason.map(str::to_owned),
        message,
        last_transition_time,
        last_probe_time: None,
        observed_generation: None,
    }
}

/// The pod's status.
pub fn pod_status(view: &PodView<'_>) -> PodStatus {
    let phase = phase(view.containers);
    let completed = phase == PHASE_SUCCEEDED || phase == PHASE_FAILED;
    let unready: Vec<&str> = view
        .containers
        .iter()
        .filter(|c| !c.ready)
        .map(|c| c.name.as_str())
        .collect();
    let all_ready = unready.is_empty() && !completed;
    let (reason, message) = if completed {
        (Some("PodCompleted"), None)
    } else if all_ready {
        (None, None)
    } else {
        (
            Some("ContainersNotReady"),
            Some(format!(
                "containers with unready status: [{}]",
                unready.join(" ")
            )),
        )
    };
    let previous = view.previous;
    let now = view.now;
    let conditions = vec![
        condition(previous, now, "PodScheduled", true, None, None),
        condition(previous, now, "Initialized", true, None, None),
        condition(
            previous,
            now,
            "ContainersReady",
            all_ready,
            reason,
            message.clone(),
        ),
        condition(previous, now, "Ready", all_ready, reason, message),
    ];
    let container_statuses = view
        .containers
        .iter()
        .map(|c| ContainerStatus {
            name: c.name.clone(),
            image: c.image.clone(),
            image_id: String::new(),
            ready: c.ready,
            started: Some(c.started),
            restart_count: c.restart_count,
            state: Some(c.state.to_api()),
            last_state: Some(
                c.last_terminated
                    .as_ref()
                    .map(RunState::to_api)
                    .unwrap_or_default(),
            ),
            ..ContainerStatus::default()
        })
        .collect();
    let host_ip = view.host_ip.to_string();
    let pod_ip = view.pod_ip.map(|ip| ip.to_string());
    PodStatus {
        phase: Some(phase.to_owned()),
        conditions: Some(conditions),
        host_ip: Some(host_ip.clone()),
        host_ips: Some(vec![HostIP { ip: host_ip }]),
        pod_ip: pod_ip.clone(),
        pod_ips: pod_ip.map(|ip| vec![PodIP { ip }]),
        start_time: Some(Time(view.start_time)),
        container_statuses: Some(container_statuses),
        ..PodStatus::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn view(name: &str, state: RunState, ready: bool) -> ContainerView {
        ContainerView {
            name: name.into(),
            image: "img:v1".into(),
            state,
            last_terminated: None,
            restart_count: 0,
            ready,
            started: ready,
            will_restart: true,
        }
    }

    fn running() -> RunState {
        RunState::Running { started_at: ts(1) }
    }

    fn exited(code: i32) -> RunState {
        RunState::Terminated {
            exit_code: code,
            signal: None,
            reason: if code == 0 { "Completed" } else { "Error" }.into(),
            message: None,
            started_at: ts(1),
            finished_at: ts(2),
        }
    }

    fn status(containers: &[ContainerView], previous: Option<&PodStatus>, now: i64) -> PodStatus {
        pod_status(&PodView {
            containers,
            pod_ip: Some(Ipv4Addr::new(10, 244, 0, 2)),
            host_ip: Ipv4Addr::new(10, 244, 0, 1),
            start_time: ts(0),
            previous,
            now: ts(now),
        })
    }

    fn cond<'a>(s: &'a PodStatus, t: &str) -> &'a PodCondition {
        s.conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == t)
            .unwrap()
    }

    #[test]
    fn phases() {
        let creating = view("a", RunState::waiting("ContainerCreating", None), false);
        let not_mapped = view("b", RunState::waiting("ImageNotMapped", None), false);
        assert_eq!(phase(std::slice::from_ref(&creating)), PHASE_PENDING);
        assert_eq!(
            phase(&[view("a", running(), true), not_mapped]),
            PHASE_PENDING
        );
        assert_eq!(phase(&[view("a", running(), true)]), PHASE_RUNNING);

        let mut backing_off = view("a", RunState::waiting("CrashLoopBackOff", None), false);
        backing_off.last_terminated = Some(exited(1));
        assert_eq!(phase(&[backing_off]), PHASE_RUNNING);

        let mut done = view("a", exited(0), false);
        done.will_restart = false;
        let mut failed = view("b", exited(2), false);
        failed.will_restart = false;
        assert_eq!(phase(&[done.clone()]), PHASE_SUCCEEDED);
        assert_eq!(phase(&[done.clone(), failed]), PHASE_FAILED);
        let restarting = view("b", exited(2), false);
        assert_eq!(phase(&[done, restarting]), PHASE_RUNNING);
    }

    #[test]
    fn ready_conditions_name_the_unready_containers() {
        let s = status(
            &[view("a", running(), true), view("b", running(), false)],
            None,
            5,
        );
        assert_eq!(s.phase.as_deref(), Some(PHASE_RUNNING));
        assert_eq!(cond(&s, "PodScheduled").status, "True");
        assert_eq!(cond(&s, "Initialized").status, "True");
        let ready = cond(&s, "Ready");
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason.as_deref(), Some("ContainersNotReady"));
        assert_eq!(
            ready.message.as_deref(),
            Some("containers with unready status: [b]")
        );
        assert_eq!(cond(&s, "ContainersReady").status, "False");
        assert_eq!(s.pod_ip.as_deref(), Some("10.244.0.2"));
        assert_eq!(s.host_ip.as_deref(), Some("10.244.0.1"));
        let statuses = s.container_statuses.as_ref().unwrap();
        assert_eq!(statuses.len(), 2);
        assert!(statuses[0].ready && !statuses[1].ready);
        assert!(statuses[0].state.as_ref().unwrap().running.is_some());

        let all = status(&[view("a", running(), true)], None, 5);
        assert_eq!(cond(&all, "Ready").status, "True");
        assert_eq!(cond(&all, "Ready").reason, None);
    }

    #[test]
    fn transition_times_move_only_when_the_status_changes() {
        let unready = status(&[view("a", running(), false)], None, 5);
        let still = status(&[view("a", running(), false)], Some(&unready), 9);
        assert_eq!(
            still, unready,
            "nothing changed: the same status, nothing to write"
        );
        let ready = status(&[view("a", running(), true)], Some(&still), 12);
        assert_eq!(
            cond(&ready, "Ready").last_transition_time,
            Some(Time(ts(12)))
        );
        assert_eq!(
            cond(&ready, "PodScheduled").last_transition_time,
            Some(Time(ts(5))),
            "unchanged conditions keep their time"
        );
    }

    #[test]
    fn restarts_show_the_last_termination() {
        let mut c = view("a", running(), true);
        c.restart_count = 2;
        c.last_terminated = Some(exited(137));
        let s = status(&[c], None, 5);
        let cs = &s.container_statuses.as_ref().unwrap()[0];
        assert_eq!(cs.restart_count, 2);
        let last = cs.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!(last.exit_code, 137);
    }

    #[test]
    fn a_completed_pod_is_not_ready() {
        let mut done = view("a", exited(0), false);
        done.will_restart = false;
        let s = status(&[done], None, 5);
        assert_eq!(s.phase.as_deref(), Some(PHASE_SUCCEEDED));
        assert_eq!(cond(&s, "Ready").status, "False");
        assert_eq!(cond(&s, "Ready").reason.as_deref(), Some("PodCompleted"));
    }
}
