//! SNI (and Host) resolution with 10, 1k and 10k listener hostnames on one port: an exact
//! name, a wildcard match, and a name no listener has (catch-all).

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use portcullis_benches::hostnames;
use portcullis_core::sni::HostResolver;

fn sni(c: &mut Criterion) {
    let mut group = c.benchmark_group("sni");
    for n in [10usize, 1_000, 10_000] {
        let names = hostnames(n);
        let resolver = HostResolver::new(names.iter().map(Option::as_deref));
        // Names present whatever n is: listener 0 is exact, listener 9 a wildcard.
        let exact = "h0.example.com";
        let wildcard = "api.w9.example.com";
        let miss = "nothing.example.org";
        for (label, name) in [("exact", exact), ("wildcard", wildcard), ("miss", miss)] {
            group.bench_with_input(BenchmarkId::new(label, n), &name, |b, name| {
                b.iter(|| resolver.resolve(black_box(Some(name))))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, sni);
criterion_main!(benches);
