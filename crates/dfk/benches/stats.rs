//! Criterion benchmarks of the shared kernel (`dfk::stats`) and its element-wise kernels
//! (`dfk::kernels`) at the shapes of encoding and EM: blocks of 256 descriptors, D = 64,
//! K = 64 and 256. Run with `cargo bench -p dfk --bench stats`.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dfk::gmm::Gmm;
use dfk::kernels::{self, SimdLevel};
use dfk::stats::{block_posteriors, EmScratch, EmStats, GmmTerms, Scratch, BLOCK};

const D: usize = 64;

/// Deterministic pseudo-random values in [−0.5, 0.5).
fn noise(i: usize) -> f32 {
    ((i as f64 * 0.618_033_988_75 + 0.1).fract() - 0.5) as f32
}

/// A GMM whose components overlap enough that a few per row have non-negligible posteriors.
fn setup(k: usize, rows: usize) -> (Gmm, Vec<f32>) {
    let means: Vec<f32> = (0..k * D).map(|i| 0.3 * noise(i * 7 + 3)).collect();
    let vars: Vec<f32> = (0..k * D)
        .map(|i| 0.01 + 0.01 * (noise(i * 13) + 0.5))
        .collect();
    let gmm = Gmm::new(k, D, means.clone(), vars, vec![1.0; k]).unwrap();
    let x = (0..rows * D)
        .map(|i| means[(i / D * 11 % k) * D + i % D] + 0.1 * noise(i * 31 + 5))
        .collect();
    (gmm, x)
}

fn bench_kernel(c: &mut Criterion) {
    let mut g = c.benchmark_group("stats");
    for k in [64usize, 256] {
        let (gmm, x) = setup(k, BLOCK);
        let terms = GmmTerms::new(&gmm);
        let mut scratch = Scratch::new(k, D);
        g.throughput(Throughput::Elements(BLOCK as u64));
        g.bench_function(BenchmarkId::new("block_posteriors", k), |b| {
            b.iter(|| block_posteriors(&terms, black_box(&x), None, BLOCK, &mut scratch))
        });
        let (_, many) = setup(k, 16 * BLOCK);
        let mut st = EmStats::zeros(k, D);
        let mut em_scratch = EmScratch::new(k, D);
        let shift = vec![0f32; D];
        g.throughput(Throughput::Elements((16 * BLOCK) as u64));
        for threshold in [1e-6f32, 0.0] {
            let id = BenchmarkId::new(format!("em_accumulate_4096_threshold_{threshold}"), k);
            g.bench_function(id, |b| {
                b.iter(|| {
                    st.clear();
                    st.accumulate(
                        &terms,
                        gmm.means(),
                        black_box(&many),
                        &shift,
                        threshold,
                        &mut em_scratch,
                    )
                })
            });
        }
    }
    g.finish();
}

fn bench_elementwise(c: &mut Criterion) {
    let mut g = c.benchmark_group("kernels");
    let row: Vec<f32> = (0..256).map(|i| -200.0 * (noise(i) + 0.5)).collect();
    g.throughput(Throughput::Elements(256));
    for level in SimdLevel::available() {
        let mut buf = row.clone();
        g.bench_function(BenchmarkId::new("softmax_256", level.name()), |b| {
            b.iter(|| {
                buf.copy_from_slice(&row);
                kernels::softmax_in_place_at(level, black_box(&mut buf))
            })
        });
        g.bench_function(BenchmarkId::new("exp_256", level.name()), |b| {
            b.iter(|| {
                buf.copy_from_slice(&row);
                kernels::exp_in_place_at(level, black_box(&mut buf))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_kernel, bench_elementwise);
criterion_main!(benches);
