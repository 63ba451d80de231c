//! Criterion benchmarks of Fisher-vector encoding and its backward pass (uncached, and
//! reusing the forward pass): batches of images
//! with 1000 descriptors each, D = 64, K = 64 and 256, improved FV (VLFeat's default
//! threshold). Throughput is in descriptors. Run with `cargo bench -p dfk --bench fisher`.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dfk::fisher::{FisherEncoder, FisherOptions};
use dfk::gmm::Gmm;

const D: usize = 64;
const PER_IMAGE: usize = 1000;
const IMAGES: usize = 8;

/// Deterministic pseudo-random values in [−0.5, 0.5).
fn noise(i: usize) -> f32 {
    ((i as f64 * 0.618_033_988_75 + 0.1).fract() - 0.5) as f32
}

/// A GMM whose components overlap enough that a few per descriptor have non-negligible
/// posteriors (the same model as the `stats` bench), and descriptors drawn near them.
fn setup(k: usize) -> (Gmm, Vec<f32>, Vec<usize>) {
    let means: Vec<f32> = (0..k * D).map(|i| 0.3 * noise(i * 7 + 3)).collect();
    let vars: Vec<f32> = (0..k * D)
        .map(|i| 0.01 + 0.01 * (noise(i * 13) + 0.5))
        .collect();
    let gmm = Gmm::new(k, D, means.clone(), vars, vec![1.0; k]).unwrap();
    let rows = IMAGES * PER_IMAGE;
    let x = (0..rows * D)
        .map(|i| means[(i / D * 11 % k) * D + i % D] + 0.1 * noise(i * 31 + 5))
        .collect();
    let offsets = (0..=IMAGES).map(|i| i * PER_IMAGE).collect();
    (gmm, x, offsets)
}

fn bench_fisher(c: &mut Criterion) {
    let mut g = c.benchmark_group("fisher");
    g.sample_size(10);
    for k in [64usize, 256] {
        let (gmm, x, offsets) = setup(k);
        let enc = FisherEncoder::new(&gmm, FisherOptions::default()).unwrap();
        let mut out = vec![0f32; IMAGES * enc.len()];
        let upstream: Vec<f32> = (0..IMAGES * enc.len()).map(noise).collect();
        g.throughput(Throughput::Elements((IMAGES * PER_IMAGE) as u64));
        g.bench_function(BenchmarkId::new("encode_batch", k), |b| {
            b.iter(|| enc.encode_batch(black_box(&x), &offsets, &mut out).unwrap())
        });
        g.bench_function(BenchmarkId::new("backward_batch", k), |b| {
            b.iter(|| {
                enc.backward_batch(black_box(&x), &offsets, &upstream)
                    .unwrap()
            })
        });
        let cache = enc.encode_batch_cached(&x, &offsets, &mut out).unwrap();
        g.bench_function(BenchmarkId::new("backward_batch_cached", k), |b| {
            b.iter(|| {
                enc.backward_batch_cached(black_box(&x), &offsets, &out, &cache, &upstream)
                    .unwrap()
            })
        });
        // The trainer's path: the forward pass stores the posteriors (reusing the memory of
        // the previous cache), the backward pass reads them.
        let mut kept = Some(cache);
        g.bench_function(BenchmarkId::new("encode_batch_keeping", k), |b| {
            b.iter(|| {
                let recycle = kept.take();
                kept = Some(
                    enc.encode_batch_keeping(
                        black_box(&x),
                        &offsets,
                        &mut out,
                        usize::MAX,
                        recycle,
                    )
                    .unwrap(),
                );
            })
        });
        let stored = enc
            .encode_batch_keeping(&x, &offsets, &mut out, usize::MAX, kept)
            .unwrap();
        assert!(stored.has_posteriors());
        g.bench_function(BenchmarkId::new("backward_batch_stored", k), |b| {
            b.iter(|| {
                enc.backward_batch_cached(black_box(&x), &offsets, &out, &stored, &upstream)
                    .unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_fisher);
criterion_main!(benches);
