//! `dfk bench`: throughput of the hot stages on this machine, in descriptors/s and GFLOP/s
//! (8·K·D flops per descriptor for encoding and EM, as `docs/performance.md` counts them), with
//! the fraction of the machine's FMA peak measured at the dispatched SIMD level.
//!
//! Data are synthetic (seeded, PCA-like unit-norm descriptors drawn from a mixture, and that
//! mixture as the GMM) unless `--data`/`--gmm` give `.npy` files, which is how the comparison
//! harness in `bench/` feeds every implementation the same workload.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use rayon::prelude::*;
use serde_json::json;

use dfk::fisher::{FisherEncoder, FisherOptions};
use dfk::gmm::{Gmm, GmmParams};
use dfk::kernels::{self, SimdLevel};
use dfk::sift::{dense_sift_with, DsiftParams, DsiftScratch, GrayImage};
use dfk::stats::{self, EmScratch, EmStats, GmmTerms, Scratch};
use dfk::svm::{train_binary, SvmParams};

use crate::util::usage;
use crate::Global;

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Stage {
    /// FMA throughput of all worker threads at the dispatched SIMD level.
    Peak,
    /// The E-step kernel alone: log-likelihoods + EM statistics of every descriptor (images ×
    /// per-image, parallel over images), at `--threshold`.
    Stats,
    /// Improved Fisher vectors of `--images` images of `--per-image` descriptors
    /// (`FisherEncoder::encode_batch`).
    Encode,
    /// Backward pass reusing the forward pass (`FisherEncoder::backward_batch_cached`)
    /// against that forward pass (`encode_batch_cached`) on the same images, alternating; the
    /// same with the posteriors stored by the forward pass (`encode_batch_keeping`);
    /// reports both, their ratio, and one run of the uncached `backward_batch`.
    Backward,
    /// One EM iteration (`dfk::gmm::em_step`) on `--n` descriptors.
    Em,
    /// GMM initialisation: `fit_gmm` with one EM iteration, minus one `em_step`.
    Init,
    /// Accuracy of the f32 matrix-product log-densities against direct f64 evaluation.
    Accuracy,
    /// Dense SIFT of a synthetic 640×480 image: bins 4/6/8/10 step 4, and one scale (bin 8,
    /// no smoothing, like `vl_dsift`); pixels/s on one thread.
    Sift,
    /// Binary L1-loss SVM (C = 5, bias 1) on improved Fisher vectors of synthetic images
    /// (`--svm-n` × 2·K·D, default K = 128 → 16384 dimensions), for several tolerances.
    Svm,
}

/// `dfk bench` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Stage to measure.
    #[arg(long, value_enum, default_value = "stats")]
    pub stage: Stage,
    /// Descriptor dimension (synthetic data).
    #[arg(long, default_value_t = 64)]
    pub d: usize,
    /// GMM components (synthetic data).
    #[arg(long, short = 'k', default_value_t = 256)]
    pub k: usize,
    /// Images (stats/encode stages).
    #[arg(long, default_value_t = 200)]
    pub images: usize,
    /// Descriptors per image (stats/encode stages).
    #[arg(long, default_value_t = 1000)]
    pub per_image: usize,
    /// Descriptors (em/init stages).
    #[arg(long, default_value_t = 50_000)]
    pub n: usize,
    /// Timed repetitions (the median is reported), at least 1.
    #[arg(long, default_value_t = 3, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub reps: usize,
    /// Descriptors as an `.npy` matrix (rows × D) instead of synthetic data.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// GMM as three `.npy` files `<prefix>_means.npy`, `_variances.npy`, `_weights.npy`.
    #[arg(long)]
    pub gmm: Option<PathBuf>,
    /// SIMD level for the element-wise kernels and the peak probe (default: best available).
    #[arg(long, value_enum)]
    pub simd: Option<Level>,
    /// Seed of the synthetic data.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stats stage: posterior threshold of the statistics (`GmmParams::posterior_threshold`).
    #[arg(long, default_value_t = dfk::gmm::DEFAULT_EM_POSTERIOR_THRESHOLD)]
    pub threshold: f32,
    /// Training vectors of the svm stage.
    #[arg(long, default_value_t = 2000)]
    pub svm_n: usize,
    /// Write the svm stage's vectors and labels (`fv.f32`, `labels.f32`, `dims.txt`) here.
    #[arg(long)]
    pub write_svm: Option<PathBuf>,
    /// Within-cluster noise of the synthetic data, relative to the spread of the centres
    /// (larger: more overlap, denser posteriors).
    #[arg(long, default_value_t = 1.5)]
    pub noise: f64,
}

/// `--simd` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Level {
    Scalar,
    Avx2,
    Avx512,
}

impl From<Level> for SimdLevel {
    fn from(l: Level) -> Self {
        match l {
            Level::Scalar => SimdLevel::Scalar,
            Level::Avx2 => SimdLevel::Avx2,
            Level::Avx512 => SimdLevel::Avx512,
        }
    }
}

/// Synthetic PCA-like data: `k` cluster centres with per-dimension spread decaying like PCA
/// eigenvalues, points = centre + noise, rows L2-normalised; the GMM is the clusters' own
/// weights, means and (floored) variances, as a fitted model would be.
pub fn synthetic(
    n: usize,
    d: usize,
    k: usize,
    noise: f64,
    seed: u64,
) -> anyhow::Result<(Vec<f32>, Gmm)> {
    let mut rng = SplitMix(seed);
    let spread: Vec<f64> = (0..d)
        .map(|j| 1.0 / (1.0 + j as f64 / 4.0).sqrt())
        .collect();
    let normal = |rng: &mut SplitMix| -> f64 {
        // Box–Muller.
        let u = rng.uniform().max(1e-300);
        let v = rng.uniform();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    };
    let centres: Vec<f64> = (0..k * d)
        .map(|i| normal(&mut rng) * spread[i % d])
        .collect();
    let mut x = vec![0f32; n * d];
    let mut label = vec![0usize; n];
    for (i, row) in x.chunks_exact_mut(d).enumerate() {
        let c = (rng.next() % k as u64) as usize;
        label[i] = c;
        let mut v: Vec<f64> = (0..d)
            .map(|j| centres[c * d + j] + noise * spread[j] * normal(&mut rng))
            .collect();
        let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt().max(1e-12);
        v.iter_mut().for_each(|a| *a /= norm);
        row.iter_mut().zip(&v).for_each(|(r, &a)| *r = a as f32);
    }
    let (mut cnt, mut s1, mut s2) = (vec![0f64; k], vec![0f64; k * d], vec![0f64; k * d]);
    for (row, &c) in x.chunks_exact(d).zip(&label) {
        cnt[c] += 1.0;
        for (j, &v) in row.iter().enumerate() {
            s1[c * d + j] += v as f64;
            s2[c * d + j] += (v as f64).powi(2);
        }
    }
    let mut means = vec![0f32; k * d];
    let mut vars = vec![0f32; k * d];
    for c in 0..k {
        let m = cnt[c].max(1.0);
        for j in 0..d {
            let mu = s1[c * d + j] / m;
            means[c * d + j] = mu as f32;
            vars[c * d + j] = (s2[c * d + j] / m - mu * mu).max(1e-5) as f32;
        }
    }
    let weights = cnt.iter().map(|&c| (c + 1.0) as f32).collect();
    Ok((x, Gmm::new(k, d, means, vars, weights)?))
}

/// SplitMix64: a tiny seeded generator, enough for synthetic benchmark data.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn load_gmm(prefix: &std::path::Path) -> anyhow::Result<Gmm> {
    let file = |suffix: &str| PathBuf::from(format!("{}_{suffix}.npy", prefix.display()));
    let (means, k, d) = dfk::npy::read_f32_matrix(file("means"))?;
    let (vars, kv, dv) = dfk::npy::read_f32_matrix(file("variances"))?;
    if (kv, dv) != (k, d) {
        bail!("GMM variances are {kv}×{dv}, means {k}×{d}");
    }
    let weights = dfk::npy::read_f32_vector(file("weights"))?;
    Ok(Gmm::new(k, d, means, vars, weights)?)
}

/// The flags that set how many descriptor rows the stage reads.
fn rows_flags(args: &Args) -> String {
    match args.stage {
        Stage::Stats | Stage::Encode | Stage::Backward => {
            format!("--images {} × --per-image {}", args.images, args.per_image)
        }
        Stage::Accuracy => format!("--n {}, at most 2048", args.n),
        _ => format!("--n {}", args.n),
    }
}

/// The workload: descriptors (`rows × D`) and the GMM.
fn workload(args: &Args, rows: usize) -> anyhow::Result<(Vec<f32>, Gmm)> {
    match (&args.data, &args.gmm) {
        (Some(data), Some(prefix)) => {
            let gmm = load_gmm(prefix).context("loading --gmm")?;
            let (x, r, d) = dfk::npy::read_f32_matrix(data)?;
            if d != gmm.d() {
                bail!(
                    "--data {} has {d} columns, but the GMM of --gmm {} has {} dimensions",
                    data.display(),
                    prefix.display(),
                    gmm.d()
                );
            }
            if r < rows {
                // The sizes asked for are the flags': a usage error, like a size out of range.
                return usage(format!(
                    "--data {} has {r} rows, the stage needs {rows} ({}): lower them or give \
                     more rows",
                    data.display(),
                    rows_flags(args)
                ));
            }
            // Every stage reads these rows: a NaN or infinity among them is named here (the
            // stats stage does not check its input itself).
            let x = x[..rows * d].to_vec();
            dfk::npy::require_finite(data, &x, d)?;
            Ok((x, gmm))
        }
        (None, None) => synthetic(rows, args.d, args.k, args.noise, args.seed),
        _ => usage("give both --data and --gmm, or neither"),
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Times `f` `reps` times (after one warm-up run) and returns the times in seconds.
fn time_reps(reps: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<Vec<f64>> {
    f()?;
    (0..reps.max(1))
        .map(|_| {
            let t = Instant::now();
            f()?;
            Ok(t.elapsed().as_secs_f64())
        })
        .collect()
}

/// FMA peak of the current pool: every worker runs the probe at once (about 50 ms at
/// ~100 GFLOP/s per thread); the best of five trials, since other load only lowers it.
pub fn measure_peak(level: SimdLevel) -> f64 {
    let threads = rayon::current_num_threads();
    let iters = 200_000_000 / level.lanes() as u64;
    (0..5)
        .map(|_| {
            let t = Instant::now();
            let flops: u64 = (0..threads)
                .into_par_iter()
                .map(|_| kernels::fma_probe(level, iters))
                .sum();
            flops as f64 / t.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}

/// EM statistics ([`EmStats::accumulate`], about the means, posteriors below `threshold`
/// times each row's largest left out) of every image (rows `i·per..(i+1)·per`), parallel over
/// images, one scratch per worker; returns the total log-likelihood.
fn stats_pass(gmm: &Gmm, terms: &GmmTerms, x: &[f32], per: usize, threshold: f32) -> f64 {
    let (k, d) = (terms.k(), terms.d());
    let shift = vec![0f32; d];
    x.par_chunks(per * d)
        .map_init(
            || (EmScratch::new(k, d), EmStats::zeros(k, d)),
            |(scratch, st), img| {
                st.clear();
                st.accumulate(terms, gmm.means(), img, &shift, threshold, scratch);
                st.loglik
            },
        )
        .sum()
}

/// Posterior density of a sample: fraction of posteriors that are non-zero and ≥ 1e-6.
fn density(terms: &GmmTerms, x: &[f32]) -> (f64, f64) {
    let (k, d) = (terms.k(), terms.d());
    let mut scratch = Scratch::new(k, d);
    let rows = (x.len() / d).min(4 * stats::BLOCK);
    let (mut nz, mut big) = (0usize, 0usize);
    for block in x[..rows * d].chunks(stats::BLOCK * d) {
        let n = block.len() / d;
        stats::block_posteriors(terms, block, None, n, &mut scratch);
        nz += scratch.post[..n * k].iter().filter(|&&g| g != 0.0).count();
        big += scratch.post[..n * k].iter().filter(|&&g| g >= 1e-6).count();
    }
    let tot = (rows * k) as f64;
    (nz as f64 / tot, big as f64 / tot)
}

/// Largest errors of the f32 GEMM-form log-likelihoods and posteriors against f64 direct
/// evaluation `log πₖ − ½Σ log 2πσ² − ½Σ (x−μ)²/σ²`.
fn accuracy(terms: &GmmTerms, gmm: &Gmm, x: &[f32]) -> (f64, f64, f64) {
    let (k, d) = (gmm.k(), gmm.d());
    let mut scratch = Scratch::new(k, d);
    let rows = (x.len() / d).min(2048);
    let (mut ll_err, mut post_err, mut ll_rel) = (0f64, 0f64, 0f64);
    let mut l = vec![0f64; k];
    for block in x[..rows * d].chunks(stats::BLOCK * d) {
        let n = block.len() / d;
        stats::block_posteriors(terms, block, None, n, &mut scratch);
        for (i, row) in block.chunks_exact(d).enumerate() {
            for (c, lc) in l.iter_mut().enumerate() {
                let (m, v) = (gmm.mean(c), gmm.variance(c));
                let mut s = (gmm.weights()[c] as f64).ln();
                for j in 0..d {
                    let z = row[j] as f64 - m[j] as f64;
                    let var = v[j] as f64;
                    s -= 0.5 * (std::f64::consts::TAU * var).ln() + 0.5 * z * z / var;
                }
                *lc = s;
            }
            let mx = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = mx + l.iter().map(|v| (v - mx).exp()).sum::<f64>().ln();
            let e = (scratch.row_ll[i] - lse).abs();
            ll_err = ll_err.max(e);
            ll_rel = ll_rel.max(e / lse.abs().max(1.0));
            for (c, lc) in l.iter().enumerate() {
                let g = (lc - lse).exp();
                post_err = post_err.max((scratch.post[i * k + c] as f64 - g).abs());
            }
        }
    }
    (ll_err, ll_rel, post_err)
}

/// Most memory the buffers of one stage may take (32 GiB): a size beyond it is a typo, refused
/// with the flags to lower instead of aborting on a failed allocation.
const MAX_BUFFER_BYTES: u128 = 32 << 30;

/// Checks the sizes before anything is allocated: the synthetic dimension and components are
/// positive, the stage has something to measure, and its main buffers (descriptors, Fisher
/// vectors, posteriors) fit in [`MAX_BUFFER_BYTES`].
fn check_sizes(args: &Args) -> anyhow::Result<()> {
    use crate::util::usage;
    if args.data.is_some() != args.gmm.is_some() {
        return usage(if args.data.is_some() {
            "--data without --gmm: give both --data and --gmm, or neither"
        } else {
            "--gmm without --data: give both --data and --gmm, or neither"
        });
    }
    // The svm, sift and peak stages make their own data: files given to them would be ignored.
    if args.data.is_some() && matches!(args.stage, Stage::Svm | Stage::Sift | Stage::Peak) {
        return usage(
            "--data/--gmm are descriptors and a GMM for the stats, encode, backward, em, init \
             and accuracy stages; the svm, sift and peak stages make their own data",
        );
    }
    let synthetic = args.data.is_none();
    // EM's initialisation needs at least one descriptor per component.
    if synthetic && matches!(args.stage, Stage::Init | Stage::Em) && args.n > 0 && args.k > args.n {
        let stage = format!("{:?}", args.stage).to_lowercase();
        return usage(format!(
            "--k {} is more than --n {}: the {stage} stage fits K components on N descriptors, \
             so it needs --n at least --k",
            args.k, args.n
        ));
    }
    if synthetic {
        for (flag, v) in [("--d", args.d), ("--k", args.k)] {
            if v == 0 {
                return usage(format!("{flag} 0: expected at least 1"));
            }
        }
    }
    if !(args.noise.is_finite() && args.noise >= 0.0) {
        return usage(format!(
            "--noise {}: expected a finite value >= 0",
            args.noise
        ));
    }
    // (the sizes, with their flags, and the f32 values held), in u128 so that no product
    // overflows.
    let (d, k) = if synthetic {
        (args.d as u128, args.k as u128)
    } else {
        (1, 0)
    };
    let dk = if synthetic {
        format!(", --d {}, --k {}", args.d, args.k)
    } else {
        String::new()
    };
    let (sizes, values): (String, u128) = match args.stage {
        Stage::Peak | Stage::Sift => return Ok(()),
        Stage::Stats | Stage::Encode | Stage::Backward => {
            for (flag, v) in [("--images", args.images), ("--per-image", args.per_image)] {
                if v == 0 {
                    return usage(format!("{flag} 0: expected at least 1"));
                }
            }
            let rows = args.images as u128 * args.per_image as u128;
            // The descriptors; encoding adds the vectors (the backward stage two of them).
            let vectors = match args.stage {
                Stage::Stats => 0,
                Stage::Encode => 1,
                _ => 2,
            };
            let fv = if synthetic { 2 * k * d } else { 0 };
            (
                format!(
                    "--images {}, --per-image {}{dk}",
                    args.images, args.per_image
                ),
                rows * d + vectors * args.images as u128 * fv,
            )
        }
        Stage::Em | Stage::Init | Stage::Accuracy => {
            if args.n == 0 {
                return usage("--n 0: expected at least 1 descriptor");
            }
            let n = match args.stage {
                Stage::Accuracy => args.n.min(2048),
                _ => args.n,
            } as u128;
            // The descriptors and one posterior per descriptor and component.
            (format!("--n {}{dk}", args.n), n * d + n * k)
        }
        Stage::Svm => {
            if args.svm_n < 2 {
                return usage(format!(
                    "--svm-n {}: the svm stage needs at least 2 training vectors",
                    args.svm_n
                ));
            }
            // 100 descriptors per vector, and the vectors (K capped at 128).
            let n = args.svm_n as u128;
            (
                format!("--svm-n {}{dk}", args.svm_n),
                n * 100 * d + n * 2 * k.min(128) * d,
            )
        }
    };
    // The synthetic GMM and its cluster centres.
    let bytes = (values + 4 * k * d).saturating_mul(4);
    if bytes > MAX_BUFFER_BYTES {
        let stage = format!("{:?}", args.stage).to_lowercase();
        return usage(format!(
            "{sizes}: the {stage} stage would allocate {:.1} GiB for its data; at most {} GiB \
             is accepted (lower these sizes)",
            bytes as f64 / (1u64 << 30) as f64,
            MAX_BUFFER_BYTES >> 30
        ));
    }
    Ok(())
}

/// The files `--write-svm DIR` writes.
fn svm_files(dir: &std::path::Path) -> [PathBuf; 3] {
    ["fv.f32", "labels.f32", "dims.txt"].map(|f| dir.join(f))
}

pub fn run(args: Args, g: &Global) -> anyhow::Result<()> {
    check_sizes(&args)?;
    if let Some(dir) = &args.write_svm {
        if args.stage != Stage::Svm {
            return crate::util::usage(format!(
                "--write-svm {}: only the svm stage writes its data (--stage svm)",
                dir.display()
            ));
        }
        // Checked before the work, as every command's outputs are.
        let files = svm_files(dir);
        let outputs: Vec<(&str, &std::path::Path)> =
            files.iter().map(|f| ("--write-svm", f.as_path())).collect();
        crate::util::check_outputs_in_folders(&[], &outputs, &[])?;
    }
    if !(args.threshold.is_finite() && (0.0..1.0).contains(&args.threshold)) {
        return crate::util::usage(format!(
            "--threshold {}: expected a posterior threshold in [0, 1)",
            args.threshold
        ));
    }
    let level = args
        .simd
        .map(SimdLevel::from)
        .unwrap_or_else(SimdLevel::detect);
    let level = level.clamp_to_cpu();
    let threads = rayon::current_num_threads();
    let mut report = json!({
        "stage": format!("{:?}", args.stage).to_lowercase(),
        "threads": threads,
        "simd": level.name(),
    });
    let peak = measure_peak(level);
    report["peak_gflops"] = json!(peak);
    let flops_per_desc = |gmm: &Gmm| 8.0 * gmm.k() as f64 * gmm.d() as f64;
    match args.stage {
        Stage::Peak => {}
        Stage::Stats => {
            let rows = args.images * args.per_image;
            let (x, gmm) = workload(&args, rows)?;
            let terms = GmmTerms::new(&gmm).with_level(level);
            let mut times = time_reps(args.reps, || {
                std::hint::black_box(stats_pass(&gmm, &terms, &x, args.per_image, args.threshold));
                Ok(())
            })?;
            let (nz, big) = density(&terms, &x);
            report["nonzero_posteriors"] = json!(nz);
            report["posteriors_ge_1e-6"] = json!(big);
            throughput(
                &mut report,
                &mut times,
                rows,
                flops_per_desc(&gmm),
                peak,
                &gmm,
            );
        }
        Stage::Encode => {
            let rows = args.images * args.per_image;
            let (x, gmm) = workload(&args, rows)?;
            let enc = FisherEncoder::new(&gmm, FisherOptions::default())?;
            let offsets: Vec<usize> = (0..=args.images).map(|i| i * args.per_image).collect();
            let mut out = vec![0f32; args.images * enc.len()];
            let mut times = time_reps(args.reps, || {
                enc.encode_batch(&x, &offsets, &mut out)?;
                Ok(())
            })?;
            let terms = GmmTerms::new(&gmm).with_level(level);
            let (nz, big) = density(&terms, &x);
            report["nonzero_posteriors"] = json!(nz);
            report["posteriors_ge_1e-6"] = json!(big);
            throughput(
                &mut report,
                &mut times,
                rows,
                flops_per_desc(&gmm),
                peak,
                &gmm,
            );
        }
        Stage::Backward => {
            let rows = args.images * args.per_image;
            let (x, gmm) = workload(&args, rows)?;
            let enc = FisherEncoder::new(&gmm, FisherOptions::default())?;
            let offsets: Vec<usize> = (0..=args.images).map(|i| i * args.per_image).collect();
            let mut fv = vec![0f32; args.images * enc.len()];
            let mut cache = enc.encode_batch_cached(&x, &offsets, &mut fv)?;
            // Upstream gradient: the vectors themselves (any non-zero vector costs the same).
            let upstream = fv.clone();
            std::hint::black_box(enc.backward_batch_cached(&x, &offsets, &fv, &cache, &upstream)?);
            // Forward (encode_batch_cached) and cached backward alternate, rep by rep, then the
            // same with the posteriors stored by the forward pass (the trainer's path).
            let (mut fwd, mut bwd) = (Vec::new(), Vec::new());
            let (mut fwd_keep, mut bwd_keep) = (Vec::new(), Vec::new());
            let mut stored = (0, 0);
            let mut kept: Option<dfk::fisher::ForwardCache> = None;
            for _ in 0..args.reps.max(1) {
                let t = Instant::now();
                cache = enc.encode_batch_cached(&x, &offsets, &mut fv)?;
                fwd.push(t.elapsed().as_secs_f64());
                let t = Instant::now();
                std::hint::black_box(
                    enc.backward_batch_cached(&x, &offsets, &fv, &cache, &upstream)?,
                );
                bwd.push(t.elapsed().as_secs_f64());
                // The trainer hands the cache it is done with back for its memory.
                let recycle = kept.take();
                let t = Instant::now();
                let with = enc.encode_batch_keeping(&x, &offsets, &mut fv, usize::MAX, recycle)?;
                fwd_keep.push(t.elapsed().as_secs_f64());
                let t = Instant::now();
                std::hint::black_box(
                    enc.backward_batch_cached(&x, &offsets, &fv, &with, &upstream)?,
                );
                bwd_keep.push(t.elapsed().as_secs_f64());
                stored = with.posterior_size();
                kept = Some(with);
            }
            // The uncached pass (forward inside, per image), once, for comparison.
            let t = Instant::now();
            std::hint::black_box(enc.backward_batch(&x, &offsets, &upstream)?);
            let tu = t.elapsed().as_secs_f64();
            let (tf, tb) = (median(&mut fwd), median(&mut bwd));
            let (tfk, tbk) = (median(&mut fwd_keep), median(&mut bwd_keep));
            report["k"] = json!(gmm.k());
            report["d"] = json!(gmm.d());
            report["descriptors"] = json!(rows);
            report["forward_s"] = json!(tf);
            report["forward_times_s"] = json!(fwd);
            report["backward_cached_s"] = json!(tb);
            report["backward_cached_times_s"] = json!(bwd);
            report["backward_over_forward"] = json!(tb / tf);
            report["backward_desc_per_s"] = json!(rows as f64 / tb);
            report["forward_keeping_s"] = json!(tfk);
            report["forward_keeping_times_s"] = json!(fwd_keep);
            report["backward_stored_s"] = json!(tbk);
            report["backward_stored_times_s"] = json!(bwd_keep);
            report["stored_posteriors"] = json!(stored.1);
            report["stored_posterior_bytes"] = json!(stored.0);
            report["keeping_over_forward"] = json!(tfk / tf);
            report["backward_stored_over_forward"] = json!(tbk / tf);
            report["round_trip_stored_over_recomputed"] = json!((tfk + tbk) / (tf + tb));
            report["backward_uncached_s"] = json!(tu);
            report["uncached_over_forward"] = json!(tu / tf);
        }
        Stage::Sift => {
            let (w, h) = (640usize, 480usize);
            // Smooth structure plus texture, deterministic.
            let pixels: Vec<f32> = (0..w * h)
                .map(|i| {
                    let (x, y) = ((i % w) as f32, (i / w) as f32);
                    let v = 0.5
                        + 0.25 * (x * 0.031).sin() * (y * 0.023).cos()
                        + 0.2 * ((x * 0.71 + y * 1.37).sin() * (x * 0.13 - y * 0.29).cos());
                    v.clamp(0.0, 1.0)
                })
                .collect();
            let image = GrayImage::new(w, h, pixels)?;
            let multi = DsiftParams::default();
            let single = DsiftParams {
                bin_sizes: vec![8],
                smooth: false,
                ..DsiftParams::default()
            };
            // Steady state, as when extracting a data set: scratch and output buffers are
            // reused across images (one untimed warm-up call), and VLFeat's harness reuses
            // its filters likewise.
            let (mut scratch, mut descriptors, mut keypoints) =
                (DsiftScratch::new(), Vec::new(), Vec::new());
            for (name, params) in [("four_scales", &multi), ("bin8", &single)] {
                let mut once = || {
                    dense_sift_with(
                        &image,
                        params,
                        &mut scratch,
                        &mut descriptors,
                        &mut keypoints,
                    )
                };
                once()?;
                let mut times = time_reps(args.reps, || Ok(once()?))?;
                let count = keypoints.len();
                let t = median(&mut times);
                report[name] = json!({
                    "median_s": t,
                    "times_s": times,
                    "descriptors": count,
                    "pixels_per_s": (w * h) as f64 / t,
                    "descriptors_per_s": count as f64 / t,
                });
            }
        }
        Stage::Svm => svm_stage(&args, &mut report)?,
        Stage::Em => {
            let (x, gmm) = workload(&args, args.n)?;
            let params = GmmParams::new(gmm.k());
            let mut ll = 0.0;
            let mut times = time_reps(args.reps, || {
                ll = dfk::gmm::em_step(&gmm, &x, &params)?.1;
                Ok(())
            })?;
            let terms = GmmTerms::new(&gmm).with_level(level);
            let (nz, big) = density(&terms, &x);
            report["nonzero_posteriors"] = json!(nz);
            report["posteriors_ge_1e-6"] = json!(big);
            report["loglik"] = json!(ll);
            throughput(
                &mut report,
                &mut times,
                args.n,
                flops_per_desc(&gmm),
                peak,
                &gmm,
            );
        }
        Stage::Init => {
            let (x, gmm) = workload(&args, args.n)?;
            if gmm.k() > args.n {
                bail!(
                    "--gmm has K = {} components, more than --n {}: the init stage fits K \
                     components on N descriptors, so it needs --n at least K",
                    gmm.k(),
                    args.n
                );
            }
            let params = GmmParams::new(gmm.k()).max_iter(1);
            let (mut init_ll, mut fit_ll) = (0.0, 0.0);
            let mut fit = time_reps(args.reps, || {
                let f = dfk::gmm::fit_gmm(&x, gmm.d(), &params)?;
                init_ll = f.loglik_history.first().copied().unwrap_or(f64::NAN);
                fit_ll = f.loglik_history.last().copied().unwrap_or(f64::NAN);
                Ok(())
            })?;
            let mut step = time_reps(args.reps, || {
                dfk::gmm::em_step(&gmm, &x, &params)?;
                Ok(())
            })?;
            let (tf, ts) = (median(&mut fit), median(&mut step));
            report["k"] = json!(gmm.k());
            report["descriptors"] = json!(args.n);
            report["fit_1iter_s"] = json!(tf);
            report["em_step_s"] = json!(ts);
            report["init_s"] = json!(tf - ts);
            report["loglik_init"] = json!(init_ll);
            report["loglik_after_1_iter"] = json!(fit_ll);
        }
        Stage::Accuracy => {
            let (x, gmm) = workload(&args, args.n.min(2048))?;
            let terms = GmmTerms::new(&gmm).with_level(level);
            let (abs, rel, post) = accuracy(&terms, &gmm, &x);
            report["k"] = json!(gmm.k());
            report["d"] = json!(gmm.d());
            report["max_abs_loglik_error"] = json!(abs);
            report["max_rel_loglik_error"] = json!(rel);
            report["max_abs_posterior_error"] = json!(post);
        }
    }
    if g.json {
        crate::util::out(format_args!("{report}\n"))?;
    } else {
        for (key, v) in report.as_object().into_iter().flatten() {
            crate::util::out(format_args!("{key:>24}: {v}\n"))?;
        }
    }
    Ok(())
}

/// Improved Fisher vectors of `n` synthetic images (100 descriptors each, K = `--k` capped at
/// 128) with labels from a random hyperplane plus 10 % flipped: a realistic, non-separable task.
fn svm_data(args: &Args) -> anyhow::Result<(Vec<f32>, Vec<f32>, usize)> {
    let per = 100;
    let (x, gmm) = synthetic(
        args.svm_n * per,
        args.d,
        args.k.min(128),
        args.noise,
        args.seed,
    )?;
    let enc = FisherEncoder::new(&gmm, FisherOptions::default())?;
    let dim = enc.len();
    let offsets: Vec<usize> = (0..=args.svm_n).map(|i| i * per).collect();
    let mut fv = vec![0f32; args.svm_n * dim];
    enc.encode_batch(&x, &offsets, &mut fv)?;
    let mut rng = SplitMix(args.seed ^ 0x5eed);
    let dir: Vec<f32> = (0..dim).map(|_| rng.uniform() as f32 - 0.5).collect();
    let scores: Vec<f32> = fv
        .chunks_exact(dim)
        .map(|r| r.iter().zip(&dir).map(|(a, b)| a * b).sum())
        .collect();
    let mut sorted = scores.clone();
    sorted.sort_by(f32::total_cmp);
    let mid = sorted[sorted.len() / 2];
    let mut y: Vec<f32> = scores
        .iter()
        .map(|&s| {
            let flip = rng.uniform() < 0.1;
            if (s > mid) != flip {
                1.0
            } else {
                -1.0
            }
        })
        .collect();
    // Both classes, however few the vectors (with 2 the median is the larger score, so
    // none lies above it): the highest score positive, the lowest negative.
    if y.iter().all(|&v| v == y[0]) {
        let order = |a: &usize, b: &usize| scores[*a].total_cmp(&scores[*b]);
        let top = (0..scores.len()).max_by(order).unwrap_or(0);
        let bottom = (0..scores.len()).min_by(order).unwrap_or(0);
        y[top] = 1.0;
        y[bottom] = -1.0;
    }
    Ok((fv, y, dim))
}

fn svm_stage(args: &Args, report: &mut serde_json::Value) -> anyhow::Result<()> {
    let (fv, y, dim) = svm_data(args)?;
    let n = args.svm_n;
    if let Some(dir) = &args.write_svm {
        // All three files or none, and a folder made for them goes again on failure.
        let created = crate::util::create_output_dir("--write-svm", dir)?;
        let bytes = |v: &[f32]| v.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>();
        let [fv_file, labels_file, dims_file] = svm_files(dir);
        let mut files = dfk::npy::FileGroup::new();
        files.bytes(fv_file, &bytes(&fv))?;
        files.bytes(labels_file, &bytes(&y))?;
        files.bytes(dims_file, format!("{n} {dim}\n").as_bytes())?;
        files.commit()?;
        created.keep();
    }
    let cost = vec![5.0f64; n];
    let mut runs = Vec::new();
    for eps in [0.1, 0.03, 0.01] {
        let params = SvmParams {
            c: 5.0,
            eps,
            ..SvmParams::default()
        };
        let mut model = None;
        let mut times = time_reps(args.reps, || {
            model = Some(train_binary(&fv, n, dim, &y, &cost, &params, None)?);
            Ok(())
        })?;
        let m = model.context("no SVM trained")?;
        runs.push(json!({
            "eps": eps,
            "median_s": median(&mut times),
            "times_s": times,
            "primal": m.primal,
            "dual": m.dual,
            "epochs": m.iterations,
        }));
    }
    report["n"] = json!(n);
    report["dim"] = json!(dim);
    report["c"] = json!(5.0);
    report["runs"] = json!(runs);
    Ok(())
}

fn throughput(
    report: &mut serde_json::Value,
    times: &mut [f64],
    rows: usize,
    flops: f64,
    peak: f64,
    gmm: &Gmm,
) {
    let lo = times.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = times.iter().cloned().fold(0.0, f64::max);
    let t = median(times);
    let rate = rows as f64 / t;
    report["k"] = json!(gmm.k());
    report["d"] = json!(gmm.d());
    report["descriptors"] = json!(rows);
    report["times_s"] = json!(times);
    report["median_s"] = json!(t);
    report["min_s"] = json!(lo);
    report["max_s"] = json!(hi);
    report["desc_per_s"] = json!(rate);
    report["gflops"] = json!(rate * flops / 1e9);
    report["fraction_of_peak"] = json!(rate * flops / 1e9 / peak);
}
