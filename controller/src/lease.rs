//! Leader election on a coordination.k8s.io/v1 Lease, as client-go does it.
//!
//! - A replica takes the Lease when it does not exist, has no holder, or has not changed for
//!   its `leaseDurationSeconds` as this replica's own clock measured it (the holder's clock and
//!   `renewTime` are not trusted: clocks differ between nodes).
//! - The holder renews every retry period. Every write carries the `resourceVersion` it read,
//!   so of two replicas racing for it exactly one wins (the other gets 409 Conflict).
//! - The holder counts itself leader until its last successful renewal, measured from when it
//!   sent that request, plus the renew deadline. The deadline is shorter than the lease
//!   duration, so a leader that cannot renew stops writing before anyone else may start.
//! - On shutdown the holder releases the Lease (empty holder), so another replica takes over
//!   at once instead of after the lease duration.
//!
//! [`next_attempt`] is the decision, a plain function of what was read and when; [`LeaseLock`]
//! does the API calls; [`run_election`] is the loop.

use std::time::Duration;

use ::kube::Api;
use ::kube::api::{PostParams, ResourceExt};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

/// HTTP 409: another replica wrote the Lease since we read it, or created it first.
const CONFLICT: u16 = 409;

/// What the election needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSettings {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

/// The parts of a Lease the election reads; two reads with equal records mean nobody renewed
/// in between.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaseRecord {
    pub holder: Option<String>,
    pub lease_duration_seconds: Option<i32>,
    pub acquire_time: Option<Timestamp>,
    pub renew_time: Option<Timestamp>,
    pub transitions: i32,
}

impl LeaseRecord {
    pub fn of(lease: &Lease) -> Self {
        let spec = lease.spec.clone().unwrap_or_default();
        Self {
            holder: spec.holder_identity.filter(|h| !h.is_empty()),
            lease_duration_seconds: spec.lease_duration_seconds,
            acquire_time: spec.acquire_time.map(|t| t.0),
            renew_time: spec.renew_time.map(|t| t.0),
            transitions: spec.lease_transitions.unwrap_or(0),
        }
    }
}

/// What to do after reading the Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// No Lease: create it, held by us.
    Create,
    /// We hold it: renew.
    Renew,
    /// Free or expired: take it (one more transition).
    TakeOver,
    /// Someone else holds it and it has not expired.
    Wait {
        holder: String,
        expires_in: Duration,
    },
}

/// The decision, given the Lease as read (`None`: it does not exist), when this replica first
/// saw that exact record, and now.
pub fn next_attempt(
    record: Option<&LeaseRecord>,
    record_seen_at: Instant,
    now: Instant,
    settings: &LeaseSettings,
) -> Attempt {
    let Some(record) = record else {
        return Attempt::Create;
    };
    let Some(holder) = record.holder.as_deref() else {
        return Attempt::TakeOver;
    };
    if holder == settings.identity {
        return Attempt::Renew;
    }
    let duration = record
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(settings.lease_duration, Duration::from_secs);
    // A duration too large to represent never expires.
    let Some(expires_at) = record_seen_at.checked_add(duration) else {
        return Attempt::Wait {
            holder: holder.to_owned(),
            expires_in: duration,
        };
    };
    if now >= expires_at {
        Attempt::TakeOver
    } else {
        Attempt::Wait {
            holder: holder.to_owned(),
            expires_in: expires_at - now,
        }
    }
}

/// The spec to write for `attempt` (Create, Renew or TakeOver).
fn spec_for(
    attempt: &Attempt,
    previous: &LeaseRecord,
    settings: &LeaseSettings,
    now: Timestamp,
) -> LeaseSpec {
    let (acquire_time, transitions) = match attempt {
        Attempt::Renew => (previous.acquire_time.unwrap_or(now), previous.transitions),
        Attempt::TakeOver => (now, previous.transitions.saturating_add(1)),
        Attempt::Create | Attempt::Wait { .. } => (now, 0),
    };
    LeaseSpec {
        holder_identity: Some(settings.identity.clone()),
        lease_duration_seconds: Some(seconds(settings.lease_duration)),
        acquire_time: Some(MicroTime(acquire_time)),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    }
}

fn seconds(duration: Duration) -> i32 {
    i32::try_from(duration.as_secs()).unwrap_or(i32::MAX)
}

/// The outcome of one try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    /// We hold the Lease (created, renewed or taken over just now).
    Held,
    /// Another replica holds it.
    HeldByOther(String),
}

/// The Lease as one replica sees it.
#[derive(Debug)]
pub struct LeaseLock {
    api: Api<Lease>,
    settings: LeaseSettings,
    /// The last record read or written, and when this replica first saw it.
    observed: Option<(LeaseRecord, Instant)>,
}

impl LeaseLock {
    pub fn new(client: ::kube::Client, settings: LeaseSettings) -> Self {
        Self {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            observed: None,
        }
    }

    pub fn settings(&self) -> &LeaseSettings {
        &self.settings
    }

    /// One read and, if due, one write.
    pub async fn try_acquire_or_renew(&mut self) -> Result<LeaseState, ::kube::Error> {
        let now = Instant::now();
        let Some(lease) = self.api.get_opt(&self.settings.name).await? else {
            return self
                .write(Attempt::Create, None, LeaseRecord::default(), now)
                .await;
        };
        let record = LeaseRecord::of(&lease);
        let seen_at = match &self.observed {
            Some((observed, at)) if *observed == record => *at,
            _ => now,
        };
        self.observed = Some((record.clone(), seen_at));
        match next_attempt(Some(&record), seen_at, now, &self.settings) {
            Attempt::Wait { holder, .. } => Ok(LeaseState::HeldByOther(holder)),
            attempt => self.write(attempt, Some(lease), record, now).await,
        }
    }

    async fn write(
        &mut self,
        attempt: Attempt,
        current: Option<Lease>,
        previous: LeaseRecord,
        now: Instant,
    ) -> Result<LeaseState, ::kube::Error> {
        let spec = spec_for(&attempt, &previous, &self.settings, Timestamp::now());
        let result = match current {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.settings.name.clone()),
                        namespace: Some(self.settings.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Some(mut lease) => {
                // The read's resourceVersion stays in metadata: the API server refuses the
                // write if anyone wrote in between.
                lease.spec = Some(spec);
                self.api
                    .replace(&self.settings.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match result {
            Ok(written) => {
                if attempt == Attempt::TakeOver || attempt == Attempt::Create {
                    info!(
                        lease = %self.settings.name,
                        namespace = %self.settings.namespace,
                        identity = %self.settings.identity,
                        previous_holder = previous.holder.as_deref().unwrap_or(""),
                        "acquired the lease"
                    );
                }
                self.observed = Some((LeaseRecord::of(&written), now));
                Ok(LeaseState::Held)
            }
            Err(::kube::Error::Api(status)) if status.code == CONFLICT => {
                Ok(LeaseState::HeldByOther(previous.holder.unwrap_or_default()))
            }
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up if we hold it: empty holder, so the others need not wait for it to
    /// expire.
    pub async fn release(&mut self) -> Result<bool, ::kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.settings.name).await? else {
            return Ok(false);
        };
        let record = LeaseRecord::of(&lease);
        if record.holder.as_deref() != Some(self.settings.identity.as_str()) {
            return Ok(false);
        }
        let now = MicroTime(Timestamp::now());
        lease.spec = Some(LeaseSpec {
            holder_identity: None,
            lease_duration_seconds: Some(1),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: Some(record.transitions),
            ..LeaseSpec::default()
        });
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                info!(lease = %lease.name_any(), "released the lease");
                Ok(true)
            }
            Err(::kube::Error::Api(status)) if status.code == CONFLICT => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Until when this replica may act as leader; `None`: it may not. Writers check it right
/// before each write.
pub type Leadership = watch::Receiver<Option<Instant>>;

/// Whether `leadership` allows writing now.
pub fn is_leader(leadership: &Leadership) -> bool {
    leadership
        .borrow()
        .is_some_and(|until| Instant::now() < until)
}

/// Runs the election until `shutdown` turns true, then releases the Lease if held.
/// `leadership` is updated after every try.
pub async fn run_election(
    mut lock: LeaseLock,
    leadership: watch::Sender<Option<Instant>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let settings = lock.settings().clone();
    // A hung request must not hold a leader past its renew deadline unnoticed: each try gets
    // at most one retry period.
    let request_timeout = settings.retry_period;
    let mut last_holder: Option<String> = None;
    loop {
        if *shutdown.borrow() {
            break;
        }
        let sent_at = Instant::now();
        let outcome = tokio::time::timeout(request_timeout, lock.try_acquire_or_renew()).await;
        let leading_until = *leadership.borrow();
        match outcome {
            Ok(Ok(LeaseState::Held)) => {
                if leading_until.is_none() {
                    info!(identity = %settings.identity, "became the leader");
                }
                leadership.send_replace(sent_at.checked_add(settings.renew_deadline));
            }
            Ok(Ok(LeaseState::HeldByOther(holder))) => {
                if leading_until.is_some() {
                    warn!(%holder, "lost the lease to another replica; stopped writing");
                    leadership.send_replace(None);
                }
                if last_holder.as_deref() != Some(holder.as_str()) {
                    info!(%holder, identity = %settings.identity, "waiting for the lease");
                    last_holder = Some(holder);
                }
            }
            Ok(Err(e)) => warn!(error = %e, "cannot read or renew the lease"),
            Err(_) => warn!(timeout = ?request_timeout, "lease request timed out"),
        }
        // Past the renew deadline without a renewal: stop leading before others may start.
        if let Some(until) = *leadership.borrow()
            && Instant::now() >= until
        {
            warn!("could not renew the lease within the renew deadline; stopped writing");
            leadership.send_replace(None);
        }
        tokio::select! {
            () = tokio::time::sleep(settings.retry_period) => {}
            _ = shutdown.changed() => {}
        }
    }
    let was_leader = leadership.borrow().is_some();
    leadership.send_replace(None);
    if was_leader {
        match tokio::time::timeout(request_timeout, lock.release()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(error = %e, "cannot release the lease; it expires on its own"),
            Err(_) => warn!("releasing the lease timed out; it expires on its own"),
        }
    }
}

/// `$POD_NAME` (unique per replica in a Deployment), else `HOSTNAME-PID` (unique per process
/// on a machine).
pub fn default_identity() -> String {
    if let Ok(pod) = std::env::var("POD_NAME")
        && !pod.is_empty()
    {
        return pod;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "portcullis".to_owned());
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(identity: &str) -> LeaseSettings {
        LeaseSettings {
            name: "l".to_owned(),
            namespace: "ns".to_owned(),
            identity: identity.to_owned(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    fn held_by(holder: &str, seconds: i32) -> LeaseRecord {
        LeaseRecord {
            holder: Some(holder.to_owned()),
            lease_duration_seconds: Some(seconds),
            transitions: 3,
            ..LeaseRecord::default()
        }
    }

    #[test]
    fn missing_or_free_leases_are_taken() {
        let now = Instant::now();
        let me = settings("a");
        assert_eq!(next_attempt(None, now, now, &me), Attempt::Create);
        let free = LeaseRecord::default();
        assert_eq!(next_attempt(Some(&free), now, now, &me), Attempt::TakeOver);
    }

    #[test]
    fn our_own_lease_is_renewed() {
        let now = Instant::now();
        assert_eq!(
            next_attempt(Some(&held_by("a", 15)), now, now, &settings("a")),
            Attempt::Renew
        );
    }

    #[test]
    fn another_holder_is_waited_for_until_the_record_is_stale_on_our_clock() {
        let seen = Instant::now();
        let record = held_by("b", 4);
        let me = settings("a");
        assert_eq!(
            next_attempt(Some(&record), seen, seen + Duration::from_secs(1), &me),
            Attempt::Wait {
                holder: "b".to_owned(),
                expires_in: Duration::from_secs(3)
            }
        );
        // A duration no clock can reach never expires.
        let forever = LeaseRecord {
            lease_duration_seconds: Some(i32::MAX),
            ..record.clone()
        };
        assert!(matches!(
            next_attempt(Some(&forever), seen, seen + Duration::from_secs(3600), &me),
            Attempt::Wait { .. }
        ));
        // The record's own duration counts, not ours.
        assert_eq!(
            next_attempt(Some(&record), seen, seen + Duration::from_secs(4), &me),
            Attempt::TakeOver
        );
        // A record without a duration falls back to ours.
        let no_duration = LeaseRecord {
            lease_duration_seconds: None,
            ..record
        };
        assert!(matches!(
            next_attempt(
                Some(&no_duration),
                seen,
                seen + Duration::from_secs(14),
                &me
            ),
            Attempt::Wait { .. }
        ));
    }

    #[test]
    fn takeovers_count_transitions_and_renewals_keep_the_acquire_time() {
        let me = settings("a");
        let acquired = Timestamp::from_second(1_000).unwrap();
        let now = Timestamp::from_second(2_000).unwrap();
        let previous = LeaseRecord {
            acquire_time: Some(acquired),
            ..held_by("a", 15)
        };
        let renewed = spec_for(&Attempt::Renew, &previous, &me, now);
        assert_eq!(renewed.acquire_time, Some(MicroTime(acquired)));
        assert_eq!(renewed.renew_time, Some(MicroTime(now)));
        assert_eq!(renewed.lease_transitions, Some(3));
        let taken = spec_for(&Attempt::TakeOver, &held_by("b", 15), &me, now);
        assert_eq!(taken.holder_identity.as_deref(), Some("a"));
        assert_eq!(taken.acquire_time, Some(MicroTime(now)));
        assert_eq!(taken.lease_transitions, Some(4));
        assert_eq!(taken.lease_duration_seconds, Some(15));
    }

    #[test]
    fn an_empty_holder_string_is_free() {
        let lease = Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some(String::new()),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        };
        assert_eq!(LeaseRecord::of(&lease).holder, None);
    }

    #[test]
    fn leadership_expires_on_its_own() {
        let (tx, rx) = watch::channel(None);
        assert!(!is_leader(&rx));
        tx.send_replace(Some(Instant::now() + Duration::from_secs(60)));
        assert!(is_leader(&rx));
        tx.send_replace(Some(Instant::now()));
        assert!(!is_leader(&rx));
    }
}
