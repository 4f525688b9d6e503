//! In-memory mTLS handshakes through the real compile output (verifier, ticketer, identity):
//! no sockets, a rustls client and the shard's `ServerConfig` exchanging records in memory.
//!
//! `server/...` counts only the server's work (ClientHello through the `Acceptor`, the
//! handshake, the post-handshake identity check): the ceiling a one-core shard's socket
//! handshake rate is held against. `pair/...` counts client and server together. Both count
//! the thread's CPU time (`ThreadCpuTime`), so a bench sharing its CPU still measures only
//! its own work.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis_benches::{
    ClientPolicy, OrExit, Pki, Restrictions, ServerSide, client_config, desired, handshake,
};
use portcullis_runtime::pki::KeyKind;

/// Which share of a handshake a bench counts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Share {
    Server,
    Pair,
}

fn bench_one(
    c: &mut Criterion,
    pki: &Pki,
    policy: ClientPolicy,
    restrictions: Restrictions,
    resumed: bool,
    share: Share,
) {
    let name = format!(
        "handshake/{}/{}/{}/{}/{}",
        if share == Share::Server {
            "server"
        } else {
            "pair"
        },
        pki.label(),
        policy.label(),
        restrictions.label(),
        if resumed { "resumed" } else { "full" },
    );
    let server =
        ServerSide::compile(desired(pki, policy, restrictions, resumed, "/").or_exit(&name))
            .or_exit(&name);
    let client = client_config(pki, policy != ClientPolicy::NoClientAuth, resumed).or_exit(&name);
    // Prime the session store, and check the setup: a resumed bench must resume, a full one
    // must not.
    for _ in 0..2 {
        handshake(&client, &server).or_exit(&name);
    }
    let probe = handshake(&client, &server).or_exit(&name);
    if probe.resumed != resumed {
        eprintln!("{name}: expected resumed={resumed}, got {}", probe.resumed);
        std::process::exit(2);
    }
    c.bench_function(&name, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let cost = handshake(&client, &server).or_exit(&name);
                total += match share {
                    Share::Server => cost.server,
                    Share::Pair => cost.total,
                };
            }
            total
        })
    });
}

fn handshakes(c: &mut Criterion) {
    for kind in [KeyKind::Rsa2048, KeyKind::EcdsaP256] {
        let pki = Pki::generate(kind).or_exit("certificates");
        for policy in ClientPolicy::ALL {
            for resumed in [false, true] {
                bench_one(c, &pki, policy, Restrictions::None, resumed, Share::Server);
            }
        }
        valid_only_full_and_resumed(c, &pki, Share::Pair);
        // Issue 5: what the listener's SAN and hash restrictions add to a handshake.
        for policy in [
            ClientPolicy::AllowValidOnly,
            ClientPolicy::AllowInsecureFallback,
        ] {
            for restrictions in [
                Restrictions::San,
                Restrictions::Hash,
                Restrictions::SanAndHash,
            ] {
                bench_one(c, &pki, policy, restrictions, false, Share::Server);
            }
        }
    }
    // What `loadtest/compare` runs by default (the guide's RSA-2048 CA and server key, a P-256
    // client key so that one load CPU can saturate one server CPU): the ceiling its socket
    // handshakes are held against.
    let pki =
        Pki::generate_with_client_key(KeyKind::Rsa2048, KeyKind::EcdsaP256).or_exit("certificates");
    valid_only_full_and_resumed(c, &pki, Share::Server);
}

/// `AllowValidOnly` without restrictions, full and resumed.
fn valid_only_full_and_resumed(c: &mut Criterion, pki: &Pki, share: Share) {
    for resumed in [false, true] {
        bench_one(
            c,
            pki,
            ClientPolicy::AllowValidOnly,
            Restrictions::None,
            resumed,
            share,
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = handshakes
}
criterion_main!(benches);
