//! The cached backward pass (`encode_batch_cached` + `backward_batch_cached`), with and without
//! the stored posteriors of `encode_batch_keeping`, against the uncached `backward_batch`, the
//! scalar f64 reference backward of `fisher_support`, finite differences of the scalar f64
//! forward pass, and its error paths.

mod fisher_support;

use dfk::fisher::{FisherEncoder, FisherOptions, GmmGradient};
use dfk::gmm::Gmm;
use dfk::Error;
use fisher_support::{backward, errors, forward, random_case, to_f64, Params, RefOptions, Rng};

fn options(improved: bool, eps: f32, threshold: f32) -> FisherOptions {
    FisherOptions {
        improved,
        l2: improved,
        sqrt_epsilon: eps,
        posterior_threshold: threshold,
        ..FisherOptions::default()
    }
}

fn check(name: &str, got: &[f64], want: &[f64], tol: f64) {
    let (abs, rel) = errors(got, want);
    println!("{name}: max abs {abs:.2e} rel {rel:.2e}");
    assert!(rel <= tol, "{name}: relative error {rel:e} > {tol:e}");
}

fn check_grad(name: &str, got: &GmmGradient, want: &GmmGradient, tol: f64) {
    check(&format!("{name} means"), &got.means, &want.means, tol);
    check(&format!("{name} log-std"), &got.log_std, &want.log_std, tol);
    check(
        &format!("{name} logits"),
        &got.weight_logits,
        &want.weight_logits,
        tol,
    );
}

/// Encodes with the cache, then the cached backward pass.
fn cached(enc: &FisherEncoder, x: &[f32], offsets: &[usize], g: &[f32]) -> GmmGradient {
    let mut fv = vec![0f32; (offsets.len() - 1) * enc.len()];
    let cache = enc.encode_batch_cached(x, offsets, &mut fv).unwrap();
    assert!(!cache.has_posteriors());
    enc.backward_batch_cached(x, offsets, &fv, &cache, g)
        .unwrap()
}

/// Encodes keeping the posteriors, then the cached backward pass reading them.
fn kept(enc: &FisherEncoder, x: &[f32], offsets: &[usize], g: &[f32]) -> GmmGradient {
    let mut fv = vec![0f32; (offsets.len() - 1) * enc.len()];
    let cache = enc
        .encode_batch_keeping(x, offsets, &mut fv, usize::MAX, None)
        .unwrap();
    assert!(cache.has_posteriors());
    let mut plain = vec![0f32; fv.len()];
    enc.encode_batch(x, offsets, &mut plain).unwrap();
    assert_eq!(fv, plain, "keeping the posteriors changed the vectors");
    enc.backward_batch_cached(x, offsets, &fv, &cache, g)
        .unwrap()
}

/// Both cached passes: (name, gradient).
fn both(
    enc: &FisherEncoder,
    x: &[f32],
    offsets: &[usize],
    g: &[f32],
) -> [(&'static str, GmmGradient); 2] {
    [
        ("recomputed", cached(enc, x, offsets, g)),
        ("stored posteriors", kept(enc, x, offsets, g)),
    ]
}

#[test]
fn cached_encoding_is_the_plain_encoding() {
    let mut rng = Rng(17);
    let (gmm, x) = random_case(&mut rng, 7, 5, 300, 1.0, 0.4);
    let offsets = [0usize, 1, 120, 300];
    let enc = FisherEncoder::new(&gmm, FisherOptions::default()).unwrap();
    let mut a = vec![0f32; 3 * enc.len()];
    let mut b = a.clone();
    enc.encode_batch(&x, &offsets, &mut a).unwrap();
    let cache = enc.encode_batch_cached(&x, &offsets, &mut b).unwrap();
    assert_eq!(a, b);
    assert_eq!(cache.images(), 3);
}

#[test]
fn cached_backward_matches_uncached_and_reference() {
    let mut rng = Rng(23);
    // Tight components (many skipped posteriors), images of 1 to 600 rows (several blocks),
    // and a component below the prior floor.
    for (k, d, tiny) in [(6, 5, false), (9, 7, true)] {
        let (gmm, x) = random_case(&mut rng, k, d, 900, 1.0, 0.3);
        let gmm = if tiny {
            let mut w = gmm.weights().to_vec();
            w[2] = 1e-7;
            Gmm::new(k, d, gmm.means().to_vec(), gmm.variances().to_vec(), w).unwrap()
        } else {
            gmm
        };
        let offsets = [0usize, 1, 40, 640, 900];
        let len = 2 * k * d;
        let mut g: Vec<f32> = (0..4 * len).map(|_| rng.normal() as f32).collect();
        g[len..2 * len].fill(0.0);
        for o in [
            FisherOptions::default(),
            FisherOptions::plain(),
            options(true, 1e-3, 1e-6),
            options(true, 0.0, 0.05),
            options(true, 0.0, 0.0),
            FisherOptions {
                power: 0.3,
                ..FisherOptions::default()
            },
            FisherOptions {
                l2: false,
                ..FisherOptions::default()
            },
        ] {
            let enc = FisherEncoder::new(&gmm, o).unwrap();
            for (path, got) in both(&enc, &x, &offsets, &g) {
                let tag = format!("K={k} D={d} {o:?} {path}");
                // Against the uncached pass: φ is restored from f32, so f32-level agreement.
                let want = enc.backward_batch(&x, &offsets, &g).unwrap();
                check_grad(&format!("{tag} vs uncached"), &got, &want, 2e-6);
                // Against the scalar f64 reference, image by image.
                let mut reference = GmmGradient::zeros(k, d);
                for i in [0usize, 2, 3] {
                    let xi = to_f64(&x[offsets[i] * d..offsets[i + 1] * d]);
                    let gi = to_f64(&g[i * len..(i + 1) * len]);
                    let (m, s, a) = backward(&xi, &Params::of(&gmm), &RefOptions::of(&o), &gi);
                    let part = GmmGradient {
                        k,
                        d,
                        means: m,
                        log_std: s,
                        weight_logits: a,
                    };
                    reference.merge(&part);
                }
                check_grad(&format!("{tag} vs reference"), &got, &reference, 1e-5);
            }
        }
    }
}

/// Pairs of overlapping components thousands of standard deviations from the GMM's centre:
/// the GEMM log-densities are off by more than a factor 2 in γ, so rows go through the
/// row-by-row refinement, and their two posteriors of similar size make B non-zero there
/// (with a single γ = 1, B = γ (A − s) vanishes). The stored posteriors must hold those rows.
#[test]
fn stored_posteriors_cover_rows_refined_one_by_one() {
    let mut rng = Rng(43);
    let (half, d) = (3, 8);
    let k = 2 * half;
    let (far, _) = random_case(&mut rng, half, d, 1, 3000.0, 1.0);
    let mut means = far.means().to_vec();
    means.extend(far.means().iter().map(|&m| m + 0.7 * rng.normal() as f32));
    let mut vars = far.variances().to_vec();
    vars.extend_from_slice(far.variances());
    let gmm = Gmm::new(k, d, means.clone(), vars.clone(), vec![1.0 / k as f32; k]).unwrap();
    let x: Vec<f32> = (0..600)
        .flat_map(|i| {
            let c = i % k;
            (0..d)
                .map(|j| means[c * d + j] + vars[c * d + j].sqrt() * rng.normal() as f32)
                .collect::<Vec<_>>()
        })
        .collect();
    let offsets = [0usize, 300, 600];
    let len = 2 * k * d;
    let g: Vec<f32> = (0..2 * len).map(|_| rng.normal() as f32).collect();
    for o in [FisherOptions::default(), options(true, 1e-3, 1e-4)] {
        let enc = FisherEncoder::new(&gmm, o).unwrap();
        let want = enc.backward_batch(&x, &offsets, &g).unwrap();
        for (path, got) in both(&enc, &x, &offsets, &g) {
            check_grad(&format!("far {o:?} {path}"), &got, &want, 2e-6);
        }
    }
}

#[test]
fn stored_posteriors_respect_their_memory_limit() {
    let mut rng = Rng(47);
    let (k, d) = (5, 4);
    let (gmm, x) = random_case(&mut rng, k, d, 400, 1.0, 0.4);
    let offsets: Vec<usize> = (0..=8).map(|i| i * 50).collect();
    let enc = FisherEncoder::new(&gmm, FisherOptions::default()).unwrap();
    let mut fv = vec![0f32; 8 * enc.len()];
    let full = enc
        .encode_batch_keeping(&x, &offsets, &mut fv, usize::MAX, None)
        .unwrap();
    let (bytes, entries) = full.posterior_size();
    assert!(
        entries >= 400 && bytes >= 12 * entries,
        "{bytes} bytes, {entries} entries"
    );
    let at = enc
        .encode_batch_keeping(&x, &offsets, &mut fv, bytes, None)
        .unwrap();
    assert_eq!(at.posterior_size(), (bytes, entries));
    assert_eq!(at, full);
    // Reusing the memory of a cache made from other data (more images) changes nothing.
    let (_, y) = random_case(&mut rng, k, d, 500, 1.0, 0.4);
    let more: Vec<usize> = (0..=20).map(|i| i * 25).collect();
    let mut fv_more = vec![0f32; 20 * enc.len()];
    let other = enc
        .encode_batch_keeping(&y, &more, &mut fv_more, usize::MAX, None)
        .unwrap();
    let again = enc
        .encode_batch_keeping(&x, &offsets, &mut fv, usize::MAX, Some(other))
        .unwrap();
    assert_eq!(again, full);
    for threads in [1, 3] {
        let below = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| enc.encode_batch_keeping(&x, &offsets, &mut fv, bytes - 1, None))
            .unwrap();
        assert!(!below.has_posteriors());
        assert_eq!(below.posterior_size(), (0, 0));
    }
    let none = enc
        .encode_batch_keeping(&x, &offsets, &mut fv, 0, None)
        .unwrap();
    assert!(!none.has_posteriors());
}

#[test]
fn cached_backward_matches_finite_differences() {
    let mut rng = Rng(29);
    let (k, d) = (3, 4);
    let (gmm, x) = random_case(&mut rng, k, d, 60, 0.8, 0.7);
    let offsets = [0usize, 25, 60];
    let len = 2 * k * d;
    let g: Vec<f32> = (0..2 * len).map(|_| rng.normal() as f32).collect();
    for o in [
        options(true, 0.0, 0.0),
        options(true, 1e-3, 0.0),
        FisherOptions::plain(),
    ] {
        let enc = FisherEncoder::new(&gmm, o).unwrap();
        let (th, ro) = (Params::of(&gmm), RefOptions::of(&o));
        let f = |t: &Params| -> f64 {
            (0..2)
                .map(|i| {
                    let xi = to_f64(&x[offsets[i] * d..offsets[i + 1] * d]);
                    forward(&xi, t, &ro)
                        .phi
                        .iter()
                        .zip(&g[i * len..(i + 1) * len])
                        .map(|(a, &b)| a * b as f64)
                        .sum::<f64>()
                })
                .sum()
        };
        let h = 1e-6;
        let diff = |which: usize, i: usize| {
            let (mut tp, mut tm) = (th.clone(), th.clone());
            let (p, m) = match which {
                0 => (&mut tp.mu[i], &mut tm.mu[i]),
                1 => (&mut tp.s[i], &mut tm.s[i]),
                _ => (&mut tp.a[i], &mut tm.a[i]),
            };
            *p += h;
            *m -= h;
            (f(&tp) - f(&tm)) / (2.0 * h)
        };
        let nm: Vec<f64> = (0..k * d).map(|i| diff(0, i)).collect();
        let ns: Vec<f64> = (0..k * d).map(|i| diff(1, i)).collect();
        let na: Vec<f64> = (0..k).map(|i| diff(2, i)).collect();
        for (path, got) in both(&enc, &x, &offsets, &g) {
            let tag = format!("{o:?} {path}");
            check(&format!("{tag} means"), &got.means, &nm, 2e-5);
            check(&format!("{tag} log-std"), &got.log_std, &ns, 2e-5);
            check(&format!("{tag} logits"), &got.weight_logits, &na, 2e-5);
        }
    }
}

#[test]
fn cached_backward_does_not_depend_on_the_thread_count() {
    let mut rng = Rng(31);
    let (k, d) = (8, 6);
    let (gmm, x) = random_case(&mut rng, k, d, 2000, 1.0, 0.4);
    let offsets: Vec<usize> = (0..=100).map(|i| i * 20).collect();
    let g: Vec<f32> = (0..100 * 2 * k * d).map(|_| rng.normal() as f32).collect();
    let enc = FisherEncoder::new(&gmm, FisherOptions::default()).unwrap();
    let run = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| both(&enc, &x, &offsets, &g))
    };
    let one = run(1);
    assert_eq!(one, run(3));
    assert_eq!(one, run(2));
}

#[test]
fn mismatched_cache_or_vectors_are_errors() {
    let mut rng = Rng(37);
    let (k, d) = (3, 2);
    let (gmm, x) = random_case(&mut rng, k, d, 30, 1.0, 0.5);
    let enc = FisherEncoder::new(&gmm, FisherOptions::default()).unwrap();
    let len = enc.len();
    let offsets = [0usize, 10, 30];
    let mut fv = vec![0f32; 2 * len];
    let cache = enc.encode_batch_cached(&x, &offsets, &mut fv).unwrap();
    let g = vec![0.5f32; 2 * len];
    // Wrong output size when encoding.
    let err = enc
        .encode_batch_cached(&x, &offsets, &mut fv[..len])
        .unwrap_err();
    assert!(matches!(err, Error::DimMismatch { .. }), "{err}");
    // Cache of another image count.
    let err = enc
        .backward_batch_cached(&x, &[0, 10], &fv[..len], &cache, &g[..len])
        .unwrap_err();
    assert!(matches!(err, Error::DimMismatch { .. }), "{err}");
    // Same image count, other image sizes.
    let err = enc
        .backward_batch_cached(&x, &[0, 15, 30], &fv, &cache, &g)
        .unwrap_err();
    assert!(err.to_string().contains("image 0"), "{err}");
    // Encoded vectors of the wrong length.
    let err = enc
        .backward_batch_cached(&x, &offsets, &fv[..len + 1], &cache, &g)
        .unwrap_err();
    assert!(matches!(err, Error::DimMismatch { .. }), "{err}");
    // Upstream gradients of the wrong length.
    let err = enc
        .backward_batch_cached(&x, &offsets, &fv, &cache, &g[1..])
        .unwrap_err();
    assert!(matches!(err, Error::DimMismatch { .. }), "{err}");
    // A cache from an encoder with another K.
    let (gmm4, x4) = random_case(&mut rng, 4, d, 30, 1.0, 0.5);
    let enc4 = FisherEncoder::new(&gmm4, FisherOptions::default()).unwrap();
    let mut fv4 = vec![0f32; 2 * enc4.len()];
    let cache4 = enc4.encode_batch_cached(&x4, &offsets, &mut fv4).unwrap();
    let err = enc
        .backward_batch_cached(&x, &offsets, &fv, &cache4, &g)
        .unwrap_err();
    assert!(err.to_string().contains("K = 4"), "{err}");
    // Non-finite encoded vector or upstream gradient, named by image.
    let mut bad = fv.clone();
    bad[len + 3] = f32::NAN;
    let err = enc
        .backward_batch_cached(&x, &offsets, &bad, &cache, &g)
        .unwrap_err();
    assert!(matches!(err, Error::NonFinite { .. }), "{err}");
    assert!(err.to_string().contains("image 1"), "{err}");
    let mut bad_g = g.clone();
    bad_g[2] = f32::INFINITY;
    let err = enc
        .backward_batch_cached(&x, &offsets, &fv, &cache, &bad_g)
        .unwrap_err();
    assert!(matches!(err, Error::NonFinite { .. }), "{err}");
}

#[test]
fn every_simd_level_gives_the_same_vectors_and_gradients() {
    use dfk::kernels::SimdLevel;
    let mut rng = Rng(41);
    let (k, d) = (7, 19);
    let (gmm, x) = random_case(&mut rng, k, d, 700, 1.0, 0.4);
    let offsets = [0usize, 300, 301, 700];
    let len = 2 * k * d;
    let g: Vec<f32> = (0..3 * len).map(|_| rng.normal() as f32).collect();
    for o in [FisherOptions::default(), options(true, 1e-3, 0.0)] {
        let run = |level: SimdLevel, keep: usize| {
            let enc = FisherEncoder::new(&gmm, o).unwrap().with_level(level);
            let mut fv = vec![0f32; 3 * len];
            let cache = enc
                .encode_batch_keeping(&x, &offsets, &mut fv, keep, None)
                .unwrap();
            let grad = enc
                .backward_batch_cached(&x, &offsets, &fv, &cache, &g)
                .unwrap();
            (to_f64(&fv), grad)
        };
        for keep in [0, usize::MAX] {
            let (fv0, grad0) = run(SimdLevel::Scalar, keep);
            for level in SimdLevel::available() {
                let (fv, grad) = run(level, keep);
                // The softmax's exp differs by a few ulps between levels; the rest is identical.
                check(&format!("{level:?} {o:?} {keep} vectors"), &fv, &fv0, 1e-6);
                check_grad(&format!("{level:?} {o:?} {keep}"), &grad, &grad0, 1e-6);
            }
        }
    }
}
