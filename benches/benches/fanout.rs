//! Snapshot fan-out: from `Publisher::publish` (compile included) to every shard having applied
//! the new snapshot, with 1, 2 and 4 real shards (threads with their own monoio runtimes, as
//! `portcullis serve` starts them). Target: under 100 ms median.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use portcullis_benches::{ClientPolicy, OrExit, Pki, Restrictions, desired};
use portcullis_core::desired::DesiredConfig;
use portcullis_runtime::limits::Limits;
use portcullis_runtime::pki::KeyKind;
use portcullis_runtime::publish::Publisher;
use portcullis_runtime::shard::{DriverChoice, ShardOptions, Shards};

/// Longest wait for the shards to apply one snapshot before the bench gives up (a hang, not a
/// measurement).
const GIVE_UP_AFTER: Duration = Duration::from_secs(10);

/// A config on a free loopback port, differing from its twin only by the route prefix, so
/// each publish is a real change.
fn configs(pki: &Pki, port: u16) -> [DesiredConfig; 2] {
    ["/a", "/b"].map(|prefix| {
        let mut config = desired(
            pki,
            ClientPolicy::AllowValidOnly,
            Restrictions::None,
            true,
            prefix,
        )
        .or_exit("config");
        for p in &mut config.ports {
            p.port = port;
        }
        config
    })
}

fn wait_applied(shards: &Shards, generation: u64) -> Result<(), String> {
    let deadline = Instant::now() + GIVE_UP_AFTER;
    while !shards
        .status
        .iter()
        .all(|s| s.applied_generation.load(Ordering::Acquire) >= generation)
    {
        if Instant::now() > deadline {
            return Err(format!("generation {generation} not applied"));
        }
        std::thread::yield_now();
    }
    Ok(())
}

fn fanout(c: &mut Criterion) {
    let pki = Pki::generate(KeyKind::EcdsaP256).or_exit("certificates");
    let mut group = c.benchmark_group("fanout");
    group.measurement_time(Duration::from_secs(3));
    for shard_count in [1usize, 2, 4] {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .or_exit("free port");
        let configs = configs(&pki, port);
        let (publisher, snapshots) = Publisher::new();
        let first = publisher.publish(configs[0].clone());
        let shards = Shards::start(
            vec![None; shard_count],
            ShardOptions {
                driver: DriverChoice::Auto,
                bind_address: Some(std::net::IpAddr::from([127, 0, 0, 1])),
                limits: Limits::default(),
            },
            snapshots,
        )
        .or_exit("shards");
        wait_applied(&shards, first).or_exit("first snapshot");
        let mut next = 1usize;
        group.bench_with_input(
            BenchmarkId::new("publish_to_all_applied", shard_count),
            &shard_count,
            |b, _| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let config = configs[next % 2].clone();
                        next += 1;
                        let started = Instant::now();
                        let generation = publisher.publish(config);
                        wait_applied(&shards, generation).or_exit("fan-out");
                        total += started.elapsed();
                    }
                    total
                })
            },
        );
        // Closing the snapshot channel stops the shards.
        drop(publisher);
        shards.join();
    }
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
