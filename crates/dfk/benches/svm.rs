//! Criterion benches of the L1-loss SVM dual coordinate descent at the Deep Fisher Kernel's
//! scale: 2000 dense unit-norm samples of dimension 16 384 (a K = 128, D = 64 Fisher vector),
//! labels from a random hyperplane with 10 % flipped, C = 5, eps = 0.01, bias 1. Measures a
//! cold solve and a warm start from the solution for slightly perturbed features (what each
//! Deep Fisher Kernel line-search trial does), and a 10-class one-vs-rest solve.
//!
//! `cargo bench -p dfk --bench svm`
//!
//! With `DFK_SVM_BENCH_LIBSVM=<path>` the bench first writes its data set in libsvm text format
//! there (for `fixtures/svm/compare_liblinear.sh`, which times liblinear on the same problem).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use dfk::svm::{train_binary, train_one_vs_rest, ClassWeighting, Labels, SvmParams};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::io::Write;

const N: usize = 2000;
const DIM: usize = 16_384;

/// Unit-norm rows with uniform entries, labels `sign(⟨w*, x⟩)` with 10 % flipped.
fn data(seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let w: Vec<f32> = (0..DIM).map(|_| rng.random_range(-1.0..1.0)).collect();
    let mut x = vec![0f32; N * DIM];
    let mut y = Vec::with_capacity(N);
    for row in x.chunks_exact_mut(DIM) {
        row.iter_mut()
            .for_each(|v| *v = rng.random_range(-1.0f32..1.0));
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        row.iter_mut().for_each(|v| *v /= norm);
        let s: f32 = row.iter().zip(&w).map(|(a, b)| a * b).sum();
        let flip = rng.random_range(0.0..1.0) < 0.1;
        y.push(if (s > 0.0) != flip { 1.0 } else { -1.0 });
    }
    (x, y)
}

/// Writes `x`, `y` in libsvm format; values as the shortest decimal that reads back as the same
/// `f64`, i.e. exactly the `f32` features.
fn write_libsvm(path: &str, x: &[f32], y: &[f32]) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for (row, &label) in x.chunks_exact(DIM).zip(y) {
        write!(f, "{}", label as i32)?;
        for (j, &v) in row.iter().enumerate() {
            if v != 0.0 {
                write!(f, " {}:{}", j + 1, f64::from(v))?;
            }
        }
        writeln!(f)?;
    }
    f.flush()
}

fn bench(c: &mut Criterion) {
    let (x, y) = data(0);
    if let Ok(path) = std::env::var("DFK_SVM_BENCH_LIBSVM") {
        write_libsvm(&path, &x, &y).expect("write the libsvm file");
        eprintln!("wrote {path}");
    }
    let cost = vec![5.0; N];
    let params = SvmParams {
        c: 5.0,
        eps: 0.01,
        ..SvmParams::default()
    };
    let cold = train_binary(&x, N, DIM, &y, &cost, &params, None).expect("cold solve");
    eprintln!(
        "cold solve: {} epochs, primal {:.6}, dual {:.6}",
        cold.iterations, cold.primal, cold.dual
    );
    // Features moved by ~1 % (a small GMM step), then warm-started from the old α.
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let moved: Vec<f32> = x
        .iter()
        .map(|v| v * (1.0 + rng.random_range(-0.02f32..0.02)))
        .collect();
    let warm =
        train_binary(&moved, N, DIM, &y, &cost, &params, Some(&cold.alpha)).expect("warm solve");
    eprintln!(
        "warm solve after a 1 % feature change: {} epochs",
        warm.iterations
    );

    let mut group = c.benchmark_group("svm");
    group.sample_size(10);
    group.bench_function(
        BenchmarkId::new("cold", format!("n{N}_d{DIM}_C5_eps0.01")),
        |b| b.iter(|| train_binary(&x, N, DIM, &y, &cost, &params, None).expect("solve")),
    );
    group.bench_function(
        BenchmarkId::new("warm", format!("n{N}_d{DIM}_C5_eps0.01")),
        |b| {
            b.iter(|| {
                train_binary(&moved, N, DIM, &y, &cost, &params, Some(&cold.alpha)).expect("solve")
            })
        },
    );
    // Ten classes: the arg-max of ten random linear functions of the features.
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let proj: Vec<f32> = (0..10 * DIM).map(|_| rng.random_range(-1.0..1.0)).collect();
    let labels = Labels::MultiClass {
        labels: x
            .chunks_exact(DIM)
            .map(|row| {
                let s: Vec<f32> = proj
                    .chunks_exact(DIM)
                    .map(|p| p.iter().zip(row).map(|(a, b)| a * b).sum())
                    .collect();
                (0..10).fold(0, |b, c| if s[c] > s[b] { c } else { b })
            })
            .collect(),
        classes: 10,
    };
    let ovr = train_one_vs_rest(&x, N, DIM, &labels, &params, ClassWeighting::Uniform, None)
        .expect("one-vs-rest");
    eprintln!(
        "one-vs-rest, 10 classes, {} threads: epochs per class {:?}",
        rayon::current_num_threads(),
        ovr.models.iter().map(|m| m.iterations).collect::<Vec<_>>()
    );
    group.bench_function(
        BenchmarkId::new("one_vs_rest_10", format!("n{N}_d{DIM}_C5_eps0.01")),
        |b| {
            b.iter(|| {
                train_one_vs_rest(&x, N, DIM, &labels, &params, ClassWeighting::Uniform, None)
                    .expect("solve")
            })
        },
    );
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
