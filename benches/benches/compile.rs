//! Translate + compile of 10, 1k and 10k HTTPS listeners (one port, one hostname and one route
//! each, the guide's RSA certificate): what a config change costs the control thread. Compile
//! builds a rustls `ServerConfig`, a verifier and ticket keys per listener; that is the cost
//! shown.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, SamplingMode, criterion_group, criterion_main};
use portcullis_benches::{OrExit, Pki, many_listener_manifests, object_store, translate_options};
use portcullis_core::compile::compile;
use portcullis_runtime::pki::KeyKind;
use portcullis_translate::translate;

fn compile_bench(c: &mut Criterion) {
    let pki = Pki::generate(KeyKind::Rsa2048).or_exit("certificates");
    let options = translate_options();
    let mut group = c.benchmark_group("config");
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    for n in [10usize, 1_000, 10_000] {
        let store = object_store(&many_listener_manifests(&pki, n)).or_exit("manifests");
        let desired = translate(&store, &options).desired;
        let listeners: usize = desired.ports.iter().map(|p| p.listeners.len()).sum();
        if listeners != n {
            eprintln!("expected {n} listeners, translate programmed {listeners}");
            std::process::exit(2);
        }
        group.measurement_time(Duration::from_secs(if n >= 10_000 { 20 } else { 3 }));
        group.bench_with_input(BenchmarkId::new("translate", n), &n, |b, _| {
            b.iter(|| black_box(translate(&store, &options)))
        });
        group.bench_with_input(BenchmarkId::new("compile", n), &n, |b, _| {
            b.iter(|| black_box(compile(desired.clone(), None, 1)))
        });
        group.bench_with_input(BenchmarkId::new("translate+compile", n), &n, |b, _| {
            b.iter(|| black_box(compile(translate(&store, &options).desired, None, 1)))
        });
    }
    group.finish();
}

criterion_group!(benches, compile_bench);
criterion_main!(benches);
