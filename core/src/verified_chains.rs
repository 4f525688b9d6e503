//! A shard's memory of client certificate chains that passed a listener's chain check, so that
//! a client reconnecting with the same chain is not put through path building and the chain's
//! signature checks again (with the guide's RSA-2048 CA that is one RSA verification plus
//! parsing, about 5% of the server's CPU per full mTLS handshake; see BENCHMARKS.md).
//!
//! What makes skipping the check sound:
//! - An entry is keyed by the policy that verified it ([`PolicyId`]: one per compiled client
//!   policy, so a new CA bundle or a reload never reuses an old verdict) and by the SHA-256 of
//!   the exact certificates the client presented, in order.
//! - An entry holds the window in which every presented certificate is within its own
//!   validity; outside it the entry is not used and the full check runs.
//! - Only successes are remembered. A chain that failed is checked in full every time.
//! - Proof that the client holds the certificate's key (its CertificateVerify signature) is
//!   not part of this: rustls checks it in every handshake.
//! - Portcullis checks no revocation lists, so no revocation state can go stale here.
//!
//! The same memory keeps the identity headers built for a verified chain ([`identity_of`]):
//! they are a pure function of the chain bytes and the listener's forwarding mode (part of the
//! policy), and building them (X.509 parsing, the URL-encoded PEM of XFCC) is most of what a
//! connection costs after its handshake.
//!
//! Per thread: a shard runs on one thread, so each shard has its own memory, without a lock
//! and without touching another core's cache lines.
//!
//! Its limit: a chain is remembered when it passes, before the handshake proves the client
//! holds the key, and anyone with a copy of a valid chain can append certificates that path
//! building ignores. Such a client can keep the memory churning (each 1024 new chains empty
//! it); that costs only the saving, never a check: the worst case is the full check on every
//! handshake, as without this memory.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use std::sync::Arc;

use aws_lc_rs::digest;
use rustls::pki_types::{CertificateDer, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::client_identity::VerifiedClient;

/// Chains remembered per thread. A gateway's clients are a bounded set of workloads, each with
/// one certificate at a time; 1024 covers them with room for rotations, at about 100 bytes an
/// entry plus its identity headers (about 2.5 KiB with XFCC): at most ~2.6 MiB per shard. When
/// full, the memory is emptied and refilled from the handshakes that follow.
const ENTRIES_PER_THREAD: usize = 1024;

/// One compiled client policy (trust anchors and everything else its chain check depends on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PolicyId(u64);

impl PolicyId {
    /// A policy id never handed out before in this process.
    pub fn fresh() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        PolicyId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// The SHA-256 of a presented chain: each certificate's length, then its bytes, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ChainHash([u8; 32]);

impl ChainHash {
    fn of(end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>]) -> Self {
        let mut context = digest::Context::new(&digest::SHA256);
        for der in std::iter::once(end_entity).chain(intermediates) {
            // The length prefix keeps two different chains from hashing the same bytes.
            context.update(&(der.len() as u64).to_be_bytes());
            context.update(der);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(context.finish().as_ref());
        ChainHash(out)
    }
}

/// Seconds since the epoch within which every presented certificate is valid (inclusive, as
/// RFC 5280 defines notBefore and notAfter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ValidWindow {
    not_before: u64,
    not_after: u64,
}

impl ValidWindow {
    /// The intersection of the certificates' validity periods; `None` when one does not parse
    /// or dates before the epoch.
    fn of(end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>]) -> Option<Self> {
        let mut window = ValidWindow {
            not_before: 0,
            not_after: u64::MAX,
        };
        for der in std::iter::once(end_entity).chain(intermediates) {
            let (_, cert) = X509Certificate::from_der(der).ok()?;
            let validity = cert.validity();
            let not_before = u64::try_from(validity.not_before.timestamp()).ok()?;
            let not_after = u64::try_from(validity.not_after.timestamp()).ok()?;
            window.not_before = window.not_before.max(not_before);
            window.not_after = window.not_after.min(not_after);
        }
        Some(window)
    }

    fn contains(&self, now: UnixTime) -> bool {
        (self.not_before..=self.not_after).contains(&now.as_secs())
    }
}

/// What this thread knows of one chain under one policy.
#[derive(Debug, Default)]
struct Remembered {
    /// Set when the chain passed the chain check.
    valid: Option<ValidWindow>,
    identity: Option<Arc<VerifiedClient>>,
}

thread_local! {
    static VERIFIED: RefCell<HashMap<(PolicyId, ChainHash), Remembered>> =
        RefCell::new(HashMap::new());
}

/// Updates the entry for `key`, making room first when the memory is full.
fn remember(key: (PolicyId, ChainHash), update: impl FnOnce(&mut Remembered)) {
    VERIFIED.with(|verified| {
        let mut verified = verified.borrow_mut();
        if verified.len() >= ENTRIES_PER_THREAD && !verified.contains_key(&key) {
            verified.clear();
        }
        update(verified.entry(key).or_default());
    });
}

/// Runs `check` on the chain unless this thread saw it pass under `policy` and every presented
/// certificate is still within its validity at `now`. A passing check is remembered.
pub fn check_once<E>(
    policy: PolicyId,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    check: impl FnOnce() -> Result<(), E>,
) -> Result<(), E> {
    let key = (policy, ChainHash::of(end_entity, intermediates));
    let remembered = VERIFIED.with(|verified| verified.borrow().get(&key).and_then(|r| r.valid));
    if remembered.is_some_and(|window| window.contains(now)) {
        return Ok(());
    }
    check()?;
    // A chain whose presented extras (an unused intermediate, say) are out of date passed, but
    // is not remembered: its window does not hold now.
    if let Some(window) = ValidWindow::of(end_entity, intermediates).filter(|w| w.contains(now)) {
        remember(key, |r| r.valid = Some(window));
    }
    Ok(())
}

/// The identity headers of a chain under `policy`: built by `build` the first time this thread
/// sees the chain under the policy, shared after that. Callers ask only for chains that passed.
pub fn identity_of(
    policy: PolicyId,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    build: impl FnOnce() -> VerifiedClient,
) -> Arc<VerifiedClient> {
    let key = (policy, ChainHash::of(end_entity, intermediates));
    let known =
        VERIFIED.with(|verified| verified.borrow().get(&key).and_then(|r| r.identity.clone()));
    if let Some(identity) = known {
        return identity;
    }
    let identity = Arc::new(build());
    remember(key, |r| r.identity = Some(Arc::clone(&identity)));
    identity
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::cell::Cell;
    use std::time::Duration;

    use rcgen::{CertificateParams, KeyPair};

    use super::*;
    use crate::listener_options::ForwardClientCert;

    /// A self-signed certificate valid from `not_before` to `not_after` (seconds since epoch).
    fn cert(not_before: u64, not_after: u64) -> CertificateDer<'static> {
        let mut params = CertificateParams::new(vec!["client.example".to_owned()]).unwrap();
        params.not_before = time::OffsetDateTime::from_unix_timestamp(not_before as i64).unwrap();
        params.not_after = time::OffsetDateTime::from_unix_timestamp(not_after as i64).unwrap();
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    fn at(secs: u64) -> UnixTime {
        UnixTime::since_unix_epoch(Duration::from_secs(secs))
    }

    /// Runs `check_once` with a check that counts its runs and returns `outcome`.
    fn counted(
        runs: &Cell<u32>,
        policy: PolicyId,
        chain: &[CertificateDer<'static>],
        now: UnixTime,
        outcome: Result<(), &'static str>,
    ) -> Result<(), &'static str> {
        check_once(policy, &chain[0], &chain[1..], now, || {
            runs.set(runs.get() + 1);
            outcome
        })
    }

    const DAY: u64 = 86_400;
    const T0: u64 = 1_800_000_000;

    #[test]
    fn a_chain_that_passed_is_not_checked_again_under_the_same_policy() {
        let policy = PolicyId::fresh();
        let chain = [cert(T0 - DAY, T0 + DAY), cert(T0 - 2 * DAY, T0 + 2 * DAY)];
        let runs = Cell::new(0);
        assert_eq!(counted(&runs, policy, &chain, at(T0), Ok(())), Ok(()));
        assert_eq!(counted(&runs, policy, &chain, at(T0 + 60), Ok(())), Ok(()));
        assert_eq!(runs.get(), 1);
    }

    #[test]
    fn another_policy_checks_again() {
        let chain = [cert(T0 - DAY, T0 + DAY)];
        let runs = Cell::new(0);
        let (first, second) = (PolicyId::fresh(), PolicyId::fresh());
        assert_eq!(counted(&runs, first, &chain, at(T0), Ok(())), Ok(()));
        assert_eq!(
            counted(&runs, second, &chain, at(T0), Err("bad")),
            Err("bad")
        );
        assert_eq!(runs.get(), 2);
    }

    #[test]
    fn another_chain_checks_again_even_with_the_same_leaf() {
        let policy = PolicyId::fresh();
        let leaf = cert(T0 - DAY, T0 + DAY);
        let with_intermediate = [leaf.clone(), cert(T0 - DAY, T0 + DAY)];
        let runs = Cell::new(0);
        assert_eq!(counted(&runs, policy, &[leaf], at(T0), Ok(())), Ok(()));
        assert_eq!(
            counted(&runs, policy, &with_intermediate, at(T0), Err("bad")),
            Err("bad")
        );
        assert_eq!(runs.get(), 2);
    }

    #[test]
    fn failures_are_not_remembered() {
        let policy = PolicyId::fresh();
        let chain = [cert(T0 - DAY, T0 + DAY)];
        let runs = Cell::new(0);
        assert_eq!(
            counted(&runs, policy, &chain, at(T0), Err("bad")),
            Err("bad")
        );
        assert_eq!(
            counted(&runs, policy, &chain, at(T0), Err("bad")),
            Err("bad")
        );
        assert_eq!(runs.get(), 2);
    }

    #[test]
    fn a_remembered_chain_is_checked_again_once_any_certificate_expired() {
        let policy = PolicyId::fresh();
        // The intermediate expires first: the window ends with it.
        let chain = [cert(T0 - DAY, T0 + 2 * DAY), cert(T0 - DAY, T0 + DAY)];
        let runs = Cell::new(0);
        assert_eq!(counted(&runs, policy, &chain, at(T0), Ok(())), Ok(()));
        assert_eq!(counted(&runs, policy, &chain, at(T0 + DAY), Ok(())), Ok(()));
        assert_eq!(runs.get(), 1);
        assert_eq!(
            counted(&runs, policy, &chain, at(T0 + DAY + 1), Err("expired")),
            Err("expired")
        );
        assert_eq!(runs.get(), 2);
    }

    #[test]
    fn a_remembered_chain_is_checked_again_before_its_validity_starts() {
        let policy = PolicyId::fresh();
        let chain = [cert(T0 - DAY, T0 + DAY)];
        let runs = Cell::new(0);
        assert_eq!(counted(&runs, policy, &chain, at(T0), Ok(())), Ok(()));
        // A clock stepped back to before notBefore.
        assert_eq!(
            counted(
                &runs,
                policy,
                &chain,
                at(T0 - 2 * DAY),
                Err("not yet valid")
            ),
            Err("not yet valid")
        );
        assert_eq!(runs.get(), 2);
    }

    #[test]
    fn a_chain_with_an_expired_extra_certificate_is_never_remembered() {
        let policy = PolicyId::fresh();
        let chain = [cert(T0 - DAY, T0 + DAY), cert(T0 - 3 * DAY, T0 - 2 * DAY)];
        let runs = Cell::new(0);
        assert_eq!(counted(&runs, policy, &chain, at(T0), Ok(())), Ok(()));
        assert_eq!(counted(&runs, policy, &chain, at(T0), Ok(())), Ok(()));
        assert_eq!(runs.get(), 2);
    }

    #[test]
    fn identities_are_built_once_per_chain_and_policy() {
        let policy = PolicyId::fresh();
        let leaf = cert(T0 - DAY, T0 + DAY);
        let other = cert(T0 - DAY, T0 + DAY);
        let builds = Cell::new(0);
        let build = |der: &CertificateDer<'_>| {
            builds.set(builds.get() + 1);
            VerifiedClient::new(der, &[], ForwardClientCert::Xfcc)
        };
        let first = identity_of(policy, &leaf, &[], || build(&leaf));
        let again = identity_of(policy, &leaf, &[], || build(&leaf));
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(builds.get(), 1);
        // Another chain, and the same chain under another policy (another forwarding mode,
        // say), are built anew.
        let second = identity_of(policy, &other, &[], || build(&other));
        assert_ne!(first.sha256, second.sha256);
        identity_of(PolicyId::fresh(), &leaf, &[], || build(&leaf));
        assert_eq!(builds.get(), 3);
    }

    #[test]
    fn a_remembered_identity_does_not_stand_for_a_chain_check() {
        let policy = PolicyId::fresh();
        let chain = [cert(T0 - DAY, T0 + DAY)];
        identity_of(policy, &chain[0], &[], || {
            VerifiedClient::new(&chain[0], &[], ForwardClientCert::Xfcc)
        });
        let runs = Cell::new(0);
        assert_eq!(
            counted(&runs, policy, &chain, at(T0), Err("bad")),
            Err("bad")
        );
        assert_eq!(runs.get(), 1);
    }

    #[test]
    fn the_memory_is_bounded() {
        let policy = PolicyId::fresh();
        let chain = [cert(T0 - DAY, T0 + DAY)];
        let runs = Cell::new(0);
        assert_eq!(counted(&runs, policy, &chain, at(T0), Ok(())), Ok(()));
        // Fill the rest of this thread's memory with other chains (as other policies).
        for _ in 0..ENTRIES_PER_THREAD {
            check_once(PolicyId::fresh(), &chain[0], &[], at(T0), || {
                Ok::<(), ()>(())
            })
            .unwrap();
        }
        assert!(VERIFIED.with(|v| v.borrow().len()) <= ENTRIES_PER_THREAD);
        // The first entry went with the clearing: checked again.
        assert_eq!(counted(&runs, policy, &chain, at(T0), Ok(())), Ok(()));
        assert_eq!(runs.get(), 2);
    }
}
