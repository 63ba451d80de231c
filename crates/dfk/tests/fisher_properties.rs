//! Property tests of the Fisher vector (small random sizes): unit norm, invariance to the
//! order of descriptors, permuting components permutes the blocks, thread-count independence.

mod fisher_support;

use dfk::fisher::{FisherEncoder, FisherOptions};
use dfk::gmm::Gmm;
use fisher_support::{errors, forward, random_case, to_f64, Params, RefOptions, Rng};
use proptest::prelude::*;

fn case(seed: u64, k: usize, d: usize, n: usize) -> (Gmm, Vec<f32>) {
    random_case(&mut Rng(seed), k, d, n, 0.8, 0.6)
}

fn encode(gmm: &Gmm, x: &[f32], o: FisherOptions) -> Vec<f32> {
    let enc = FisherEncoder::new(gmm, o).unwrap();
    let mut out = vec![0f32; enc.len()];
    enc.encode(x, &mut out, &mut enc.scratch()).unwrap();
    out
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn improved_vectors_have_unit_norm(seed in 0u64..1000, k in 1usize..6, d in 1usize..6, n in 1usize..40) {
        let (gmm, x) = case(seed, k, d, n);
        let phi = encode(&gmm, &x, FisherOptions::default());
        let norm = phi.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
        prop_assert!((norm - 1.0).abs() < 1e-6, "norm {}", norm);
    }

    #[test]
    fn descriptor_order_does_not_matter(seed in 0u64..1000, k in 1usize..6, d in 1usize..6, n in 2usize..300, rot in 1usize..300) {
        let (gmm, x) = case(seed, k, d, n);
        let mut y = x.clone();
        // Reverse, then rotate: a permutation that moves rows across blocks of 256.
        let rows: Vec<&[f32]> = x.chunks(d).rev().collect();
        let r = rot % n;
        y.clear();
        for i in 0..n {
            y.extend_from_slice(rows[(i + r) % n]);
        }
        for o in [FisherOptions::default(), FisherOptions::plain()] {
            let a = encode(&gmm, &x, o);
            let b = encode(&gmm, &y, o);
            let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
            prop_assert!(max_diff(&a, &b) <= 1e-6 * scale.max(1.0), "diff {}", max_diff(&a, &b));
        }
    }

    #[test]
    fn permuting_components_permutes_blocks(seed in 0u64..1000, k in 2usize..6, d in 1usize..5, n in 1usize..40, shift in 1usize..5) {
        let (gmm, x) = case(seed, k, d, n);
        let perm: Vec<usize> = (0..k).map(|c| (c + shift) % k).collect();
        let pick = |v: &[f32], w: usize| -> Vec<f32> {
            perm.iter().flat_map(|&c| v[c * w..(c + 1) * w].to_vec()).collect()
        };
        let permuted = Gmm::new(k, d, pick(gmm.means(), d), pick(gmm.variances(), d), pick(gmm.weights(), 1)).unwrap();
        let a = encode(&gmm, &x, FisherOptions::default());
        let b = encode(&permuted, &x, FisherOptions::default());
        let kd = k * d;
        for (new, &old) in perm.iter().enumerate() {
            for j in 0..d {
                prop_assert!((b[new * d + j] - a[old * d + j]).abs() <= 1e-6);
                prop_assert!((b[kd + new * d + j] - a[kd + old * d + j]).abs() <= 1e-6);
            }
        }
    }
}

#[test]
fn thread_count_does_not_change_results() {
    let (k, d) = (5, 4);
    let (gmm, x) = case(99, k, d, 900);
    let offsets: Vec<usize> = (0..=30).map(|i| i * 30).collect();
    let enc = FisherEncoder::new(&gmm, FisherOptions::default()).unwrap();
    let len = enc.len();
    let grads: Vec<f32> = (0..30 * len)
        .map(|i| ((i * 7919) % 13) as f32 - 6.0)
        .collect();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut out = vec![0f32; 30 * len];
            enc.encode_batch(&x, &offsets, &mut out).unwrap();
            (out, enc.backward_batch(&x, &offsets, &grads).unwrap())
        })
    };
    let (f1, g1) = run(1);
    let (f2, g2) = run(2);
    let (f3, g3) = run(3);
    assert!(max_diff(&f1, &f2) <= 1e-7 && max_diff(&f1, &f3) <= 1e-7);
    // Fixed chunking and merge order: identical sums.
    assert_eq!(g1, g2);
    assert_eq!(g1, g3);
    // And the batch equals image-by-image encoding.
    let mut scratch = enc.scratch();
    let mut one = vec![0f32; len];
    for i in 0..30 {
        enc.encode(
            &x[offsets[i] * d..offsets[i + 1] * d],
            &mut one,
            &mut scratch,
        )
        .unwrap();
        assert_eq!(&f1[i * len..(i + 1) * len], &one[..]);
    }
}

#[test]
fn a_descriptor_far_outside_the_mixture_is_weighed_by_its_exact_posteriors() {
    // Values whose squares swamp the f32 log-density sums: such a row used to get NaN
    // posteriors from the GEMM's normaliser and drop out of the vector without a word.
    let (gmm, x) = case(11, 4, 3, 300);
    let o = FisherOptions::default();
    let (th, ro) = (Params::of(&gmm), RefOptions::of(&o));
    for big in [1e8f32, 1e15, -1e30] {
        let mut y = x.clone();
        y[5 * 3 + 1] = big;
        let got = encode(&gmm, &y, o);
        let want = forward(&to_f64(&y), &th, &ro).phi;
        let (_, rel) = errors(&to_f64(&got), &want);
        assert!(rel < 1e-4, "{big}: relative error {rel:e}");
    }
}

/// A component far narrower than the data's spread (σ² = 10⁻⁶ at |μ| ≈ 100, as a GMM from
/// elsewhere with a small variance floor has after collapsing onto repeated rows): the
/// expanded f32 product loses hundreds of nats on it, so its log-densities are formed
/// directly. Fisher vectors, log-likelihood and posteriors agree with the f64 definition.
#[test]
fn a_narrow_component_far_from_the_centre_is_exact() {
    let (k, d) = (3, 8);
    let mut rng = Rng(7);
    let mut means = Vec::new();
    for _ in 0..2 * d {
        means.push((100.0 * rng.normal()) as f32);
    }
    let narrow: Vec<f32> = (0..d).map(|j| 100.0 + j as f32).collect();
    means.extend_from_slice(&narrow);
    let mut variances = vec![1e4f32; 2 * d];
    variances.extend(std::iter::repeat_n(1e-6f32, d));
    let gmm = Gmm::new(k, d, means, variances, vec![0.4, 0.4, 0.2]).unwrap();
    // 10 of 40 descriptors within about one σ of the narrow component, the rest spread.
    let mut x = Vec::new();
    for i in 0..40 {
        for (j, &m) in narrow.iter().enumerate() {
            x.push(if i % 4 == 0 {
                m + (1e-3 * rng.normal()) as f32
            } else {
                (100.0 * rng.normal()) as f32 + j as f32
            });
        }
    }
    let o = FisherOptions::default();
    let want = forward(&to_f64(&x), &Params::of(&gmm), &RefOptions::of(&o)).phi;
    let got = encode(&gmm, &x, o);
    let (abs, _) = errors(&to_f64(&got), &want);
    assert!(abs < 1e-4, "Fisher vector off by {abs}");
    // Log-likelihood and posteriors by the definition, in f64.
    let mut total = 0.0;
    let mut post = Vec::new();
    for row in x.chunks(d) {
        let l: Vec<f64> = (0..k)
            .map(|c| {
                let mut l = (gmm.weights()[c] as f64).ln();
                for ((&xv, &m), &v) in row.iter().zip(gmm.mean(c)).zip(gmm.variance(c)) {
                    let (v, z) = (v as f64, xv as f64 - m as f64);
                    l -= 0.5 * (2.0 * std::f64::consts::PI * v).ln() + 0.5 * z * z / v;
                }
                l
            })
            .collect();
        let m = l.iter().cloned().fold(f64::MIN, f64::max);
        let lse = m + l.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        total += lse;
        post.extend(l.iter().map(|v| (v - lse).exp()));
    }
    let ll = gmm.log_likelihood(&x).unwrap();
    let want_ll = total / 40.0;
    assert!(
        (ll - want_ll).abs() < 1e-3 * want_ll.abs().max(1.0),
        "log-likelihood {ll} against {want_ll}"
    );
    let got_post = gmm.posteriors(&x).unwrap();
    let (abs, _) = errors(&to_f64(&got_post), &post);
    assert!(abs < 1e-4, "posteriors off by {abs}");
}
