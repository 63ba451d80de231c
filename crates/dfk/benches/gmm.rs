//! Criterion benches of GMM fitting: one EM iteration (E-step through the shared matrix-product
//! kernel + M-step) and the initialisations (k-means++ alone, the default k-means), at
//! N = 20 000, D = 64, K = 64.
//! Throughput is reported in descriptors (elements) per second.
//!
//! `cargo bench -p dfk --bench gmm`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dfk::gmm::{em_step, fit_gmm, GmmInit, GmmParams};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const N: usize = 20_000;
const D: usize = 64;
const K: usize = 64;

/// Descriptors from a random 64-component mixture (uniform noise around random centres).
fn data() -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let centres: Vec<f32> = (0..K * D).map(|_| rng.random_range(-3.0..3.0)).collect();
    let mut x = Vec::with_capacity(N * D);
    for _ in 0..N {
        let c = rng.random_range(0..K);
        for j in 0..D {
            x.push(centres[c * D + j] + rng.random_range(-1.0f32..1.0));
        }
    }
    x
}

fn bench(c: &mut Criterion) {
    let x = data();
    let params = GmmParams::new(K).max_iter(0);
    let start = fit_gmm(&x, D, &params).expect("initial model").gmm;

    let mut group = c.benchmark_group("gmm");
    group.throughput(Throughput::Elements(N as u64));
    group.sample_size(10);
    group.bench_function(
        BenchmarkId::new("em_step", format!("N{N}_D{D}_K{K}")),
        |b| b.iter(|| em_step(&start, &x, &params).expect("EM step")),
    );
    for (name, init) in [
        ("init_kmeans++", GmmInit::KMeansPlusPlus),
        ("init_default_kmeans20", GmmParams::new(K).init),
    ] {
        let p = params.clone().init(init);
        group.bench_function(BenchmarkId::new(name, format!("N{N}_D{D}_K{K}")), |b| {
            b.iter(|| fit_gmm(&x, D, &p).expect("initialisation"))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
