//! `dfk::gmm` on degenerate and invalid input, determinism, thread-count independence, and the
//! matrix-product E-step against a plain scalar f64 evaluation.

use dfk::gmm::{em_step, fit_gmm, fit_gmm_from, Gmm, GmmInit, GmmParams};
use dfk::Error;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let (u, v) = (rng.random::<f64>().max(1e-300), rng.random::<f64>());
    (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
}

/// `n` rows from a random `k`-component diagonal mixture in `d` dimensions, shifted by `offset`.
fn mixture(n: usize, d: usize, k: usize, offset: f64, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let centres: Vec<f64> = (0..k * d).map(|_| 4.0 * normal(&mut rng)).collect();
    let scales: Vec<f64> = (0..k * d).map(|_| rng.random_range(0.3..1.5)).collect();
    let mut x = Vec::with_capacity(n * d);
    for _ in 0..n {
        let c = rng.random_range(0..k);
        for j in 0..d {
            x.push((offset + centres[c * d + j] + scales[c * d + j] * normal(&mut rng)) as f32);
        }
    }
    x
}

/// Per-row log p(x) and posteriors by direct evaluation in f64.
fn reference(gmm: &Gmm, x: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let (k, d) = (gmm.k(), gmm.d());
    let (mut lls, mut post) = (Vec::new(), Vec::new());
    for row in x.chunks_exact(d) {
        let l: Vec<f64> = (0..k)
            .map(|c| {
                let mut l = (gmm.weights()[c] as f64).ln()
                    - 0.5 * d as f64 * (2.0 * std::f64::consts::PI).ln();
                for ((&xv, &m), &v) in row.iter().zip(gmm.mean(c)).zip(gmm.variance(c)) {
                    let v = v as f64;
                    l -= 0.5 * v.ln() + 0.5 * (xv as f64 - m as f64).powi(2) / v;
                }
                l
            })
            .collect();
        let m = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let ll = m + l.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        lls.push(ll);
        post.extend(l.iter().map(|v| (v - ll).exp()));
    }
    (lls, post)
}

fn data_variance(x: &[f32], d: usize) -> Vec<f64> {
    let n = (x.len() / d) as f64;
    (0..d)
        .map(|j| {
            let m = x.iter().skip(j).step_by(d).map(|&v| v as f64).sum::<f64>() / n;
            x.iter()
                .skip(j)
                .step_by(d)
                .map(|&v| (v as f64 - m).powi(2))
                .sum::<f64>()
                / n
        })
        .collect()
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-12)
}

fn all_finite(g: &Gmm) -> bool {
    g.means()
        .iter()
        .chain(g.variances())
        .chain(g.weights())
        .all(|v| v.is_finite())
}

#[test]
fn log_likelihood_and_posteriors_match_scalar_reference_far_from_origin() {
    let (d, k) = (6, 4);
    let x = mixture(3000, d, k, 1000.0, 1);
    let fit = fit_gmm(&x, d, &GmmParams::new(k).max_iter(20)).unwrap();
    let (lls, post) = reference(&fit.gmm, &x);
    let want = lls.iter().sum::<f64>() / lls.len() as f64;
    let got = fit.gmm.log_likelihood(&x).unwrap();
    assert!(rel(got, want) < 1e-5, "{got} vs {want}");
    let p = fit.gmm.posteriors(&x).unwrap();
    assert_eq!(p.len(), 3000 * k);
    for (i, (&a, &b)) in p.iter().zip(&post).enumerate() {
        assert!((a as f64 - b).abs() < 1e-4, "posterior {i}: {a} vs {b}");
    }
    for row in p.chunks_exact(k) {
        assert!((row.iter().map(|&v| v as f64).sum::<f64>() - 1.0).abs() < 1e-5);
    }
}

#[test]
fn em_step_matches_scalar_f64_em() {
    let (d, k, n) = (5, 3, 1500);
    let x = mixture(n, d, k, 3.0, 2);
    let start = Gmm::new(
        k,
        d,
        x[..k * d].to_vec(),
        vec![2.0; k * d],
        vec![0.2, 0.3, 0.5],
    )
    .unwrap();
    let (next, ll_old) = em_step(&start, &x, &GmmParams::new(k)).unwrap();
    let (lls, post) = reference(&start, &x);
    assert!(rel(ll_old, lls.iter().sum::<f64>() / n as f64) < 1e-6);
    for c in 0..k {
        let s0: f64 = (0..n).map(|i| post[i * k + c]).sum();
        assert!(rel(next.weights()[c] as f64, s0 / n as f64) < 1e-5);
        for j in 0..d {
            let mu = (0..n)
                .map(|i| post[i * k + c] * x[i * d + j] as f64)
                .sum::<f64>()
                / s0;
            let var = (0..n)
                .map(|i| post[i * k + c] * (x[i * d + j] as f64 - mu).powi(2))
                .sum::<f64>()
                / s0;
            assert!(
                (next.mean(c)[j] as f64 - mu).abs() < 1e-4 * (1.0 + mu.abs()),
                "mean {c} {j}"
            );
            assert!(
                rel(next.variance(c)[j] as f64, var) < 1e-4,
                "variance {c} {j}"
            );
        }
    }
}

/// The M-step of `em_step` with posterior threshold `tau` computed directly in f64: posteriors
/// below `tau` times their row's largest count as zero. Returns (weights, means, variances).
fn truncated_m_step(gmm: &Gmm, x: &[f32], tau: f64) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (k, d, n) = (gmm.k(), gmm.d(), x.len() / gmm.d());
    let (_, post) = reference(gmm, x);
    let (mut s0, mut s1, mut s2) = (vec![0f64; k], vec![0f64; k * d], vec![0f64; k * d]);
    for (i, g) in post.chunks_exact(k).enumerate() {
        let max = g.iter().cloned().fold(0.0, f64::max);
        for c in (0..k).filter(|&c| g[c] >= tau * max) {
            s0[c] += g[c];
            for j in 0..d {
                let v = x[i * d + j] as f64;
                s1[c * d + j] += g[c] * v;
                s2[c * d + j] += g[c] * v * v;
            }
        }
    }
    let total: f64 = s0.iter().sum();
    let means: Vec<f64> = (0..k * d).map(|i| s1[i] / s0[i / d]).collect();
    let vars = (0..k * d)
        .map(|i| s2[i] / s0[i / d] - means[i] * means[i])
        .collect();
    assert!(total <= n as f64 + 1e-9);
    (s0.iter().map(|s| s / total).collect(), means, vars)
}

/// The posterior threshold leaves out exactly the posteriors below it (a coarse threshold,
/// checked against a direct truncated M-step, and visibly different from keeping all), and 0
/// keeps them all.
#[test]
#[allow(clippy::needless_range_loop)] // index loops mirror the formulas being checked
fn em_step_posterior_threshold_drops_only_the_posteriors_below_it() {
    let (d, k, n) = (5, 4, 2000);
    let x = mixture(n, d, k, 3.0, 7);
    let start = Gmm::new(
        k,
        d,
        x[..k * d].to_vec(),
        vec![6.0; k * d],
        vec![0.2, 0.3, 0.4, 0.1],
    )
    .unwrap();
    let step = |tau: f32| {
        em_step(&start, &x, &GmmParams::new(k).posterior_threshold(tau))
            .unwrap()
            .0
    };
    let mut moved = 0f64;
    for tau in [0.0f32, 0.05] {
        let got = step(tau);
        let (w, m, v) = truncated_m_step(&start, &x, tau as f64);
        let (_, m_all, _) = truncated_m_step(&start, &x, 0.0);
        for c in 0..k {
            assert!(
                rel(got.weights()[c] as f64, w[c]) < 1e-4,
                "τ {tau} weight {c}"
            );
            for j in 0..d {
                let i = c * d + j;
                let (gm, gv) = (got.mean(c)[j] as f64, got.variance(c)[j] as f64);
                assert!(
                    (gm - m[i]).abs() < 1e-4 * (1.0 + m[i].abs()),
                    "τ {tau} mean {i}"
                );
                assert!(rel(gv, v[i]) < 1e-4, "τ {tau} variance {i}");
                moved = moved.max((m[i] - m_all[i]).abs() / (1.0 + m_all[i].abs()));
            }
        }
    }
    assert!(
        moved > 1e-3,
        "the coarse threshold must change the update ({moved})"
    );
    // The default leaves out a negligible mass here: the update agrees with keeping all.
    let (def, all) = (step(dfk::gmm::DEFAULT_EM_POSTERIOR_THRESHOLD), step(0.0));
    for (a, b) in def.means().iter().zip(all.means()) {
        assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
    }
    for bad in [-1e-3f32, 1.0, f32::NAN] {
        let err = em_step(&start, &x, &GmmParams::new(k).posterior_threshold(bad)).unwrap_err();
        assert!(
            err.to_string().contains("posterior_threshold"),
            "{bad}: {err}"
        );
    }
}

/// `em_step` takes the data variance for its floors from the E-step statistics (no separate
/// pass): a component sitting on a duplicated point must land on `1e-4 · Var(x_d)` computed
/// directly, also far from the origin and from a model that explains the data badly.
#[test]
fn em_step_floors_at_the_data_variance() {
    let d = 4;
    let mut x = mixture(1200, d, 3, 500.0, 4);
    let dup: Vec<f32> = x[..d].to_vec();
    for row in x.chunks_exact_mut(d).step_by(4) {
        row.copy_from_slice(&dup);
    }
    let floor: Vec<f64> = data_variance(&x, d).iter().map(|v| 1e-4 * v).collect();
    // Component 0 on the point, narrow; the others broad and off-centre.
    let mut means = dup.clone();
    means.extend(x[d..3 * d].iter().map(|v| v + 3.0));
    let mut vars = vec![1e-3f32; d];
    vars.extend(vec![50.0f32; 2 * d]);
    let mut g = Gmm::new(3, d, means, vars, vec![0.3, 0.3, 0.4]).unwrap();
    for _ in 0..3 {
        g = em_step(&g, &x, &GmmParams::new(3)).unwrap().0;
    }
    for (&v, &f) in g.variance(0).iter().zip(&floor) {
        assert!(rel(v as f64, f) < 1e-5, "variance {v} vs floor {f}");
    }
    assert!((g.weights()[0] - 0.25).abs() < 1e-3);
}

#[test]
fn duplicated_points_collapse_onto_the_variance_floor_and_stay_finite() {
    let d = 4;
    let mut x = mixture(1200, d, 3, 0.0, 3);
    let dup = [0.5f32, -1.0, 2.0, 0.25];
    for row in x.chunks_exact_mut(d).step_by(3) {
        row.copy_from_slice(&dup);
    }
    let fit = fit_gmm(&x, d, &GmmParams::new(4).restarts(2)).unwrap();
    let g = &fit.gmm;
    assert!(all_finite(g) && fit.loglik_history.iter().all(|v| v.is_finite()));
    let floor: Vec<f64> = data_variance(&x, d).iter().map(|v| 1e-4 * v).collect();
    let c = (0..4)
        .min_by(|&a, &b| {
            let da: f32 = g.mean(a).iter().zip(&dup).map(|(u, v)| (u - v).abs()).sum();
            let db: f32 = g.mean(b).iter().zip(&dup).map(|(u, v)| (u - v).abs()).sum();
            da.total_cmp(&db)
        })
        .unwrap();
    for j in 0..d {
        assert!(
            (g.mean(c)[j] - dup[j]).abs() < 1e-4,
            "collapsed mean {:?}",
            g.mean(c)
        );
        let v = g.variance(c)[j] as f64;
        assert!(
            v >= floor[j] * (1.0 - 1e-6) && v <= floor[j] * 1.01,
            "variance {v} vs floor {}",
            floor[j]
        );
    }
    // A third of the data sit on one point whose density is bounded only by the floor.
    assert!((g.weights()[c] - 1.0 / 3.0).abs() < 0.01);
    // All rows identical: every component sits on the point at the absolute floor.
    let same = dup.repeat(50);
    let fit = fit_gmm(&same, d, &GmmParams::new(3)).unwrap();
    assert!(all_finite(&fit.gmm));
    assert!(fit.gmm.variances().iter().all(|&v| v > 0.0 && v < 1e-9));
    assert!(fit.gmm.log_likelihood(&same).unwrap().is_finite());
}

#[test]
fn empty_component_is_reseeded_at_the_worst_explained_descriptor() {
    let d = 3;
    let x = mixture(900, d, 2, 0.0, 4);
    let far = vec![1e3f32; d];
    let means = [&x[..d], &x[d..2 * d], &far[..]].concat();
    let start = Gmm::new(3, d, means, vec![1.0; 3 * d], vec![0.4, 0.4, 0.2]).unwrap();
    let (next, ll) = em_step(&start, &x, &GmmParams::new(3)).unwrap();
    assert!(ll.is_finite() && all_finite(&next));
    // The re-seeded mean is a data row: the one least likely under the two live components.
    let live = em_step(
        &Gmm::new(
            2,
            d,
            [&x[..d], &x[d..2 * d]].concat(),
            vec![1.0; 2 * d],
            vec![0.5, 0.5],
        )
        .unwrap(),
        &x,
        &GmmParams::new(2),
    )
    .unwrap()
    .0;
    let (lls, _) = reference(&live, &x);
    let worst = (0..900).min_by(|&a, &b| lls[a].total_cmp(&lls[b])).unwrap();
    for j in 0..d {
        assert!(
            (next.mean(2)[j] - x[worst * d + j]).abs() < 1e-3,
            "{:?}",
            next.mean(2)
        );
    }
    assert!(next.weights()[2] > 0.1);
    // EM from there uses all three components.
    let fit = fit_gmm_from(&x, &start, &GmmParams::new(3).max_iter(50)).unwrap();
    let post = fit.gmm.posteriors(&x).unwrap();
    for c in 0..3 {
        let mass: f64 = post.iter().skip(c).step_by(3).map(|&v| v as f64).sum();
        assert!(mass > 1.0, "component {c} mass {mass}");
    }
}

#[test]
fn one_component_is_the_sample_mean_and_variance() {
    let d = 5;
    let x = mixture(2000, d, 3, 10.0, 5);
    let fit = fit_gmm(&x, d, &GmmParams::new(1)).unwrap();
    assert!(fit.converged && fit.iterations <= 2);
    assert_eq!(fit.gmm.weights(), &[1.0]);
    let var = data_variance(&x, d);
    for (j, &v) in var.iter().enumerate() {
        let m = x.iter().skip(j).step_by(d).map(|&v| v as f64).sum::<f64>() / 2000.0;
        assert!((fit.gmm.mean(0)[j] as f64 - m).abs() < 1e-4 * m.abs());
        assert!(rel(fit.gmm.variance(0)[j] as f64, v) < 1e-4);
    }
}

#[test]
fn one_dimension_recovers_two_gaussians() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let x: Vec<f32> = (0..4000)
        .map(|i| if i % 4 == 0 { -3.0 + 0.5 * normal(&mut rng) } else { 2.0 + normal(&mut rng) } as f32)
        .collect();
    let fit = fit_gmm(&x, 1, &GmmParams::new(2).restarts(2)).unwrap();
    let g = &fit.gmm;
    let (a, b) = if g.means()[0] < g.means()[1] {
        (0, 1)
    } else {
        (1, 0)
    };
    assert!((g.means()[a] + 3.0).abs() < 0.05 && (g.means()[b] - 2.0).abs() < 0.05);
    assert!((g.variances()[a] - 0.25).abs() < 0.03 && (g.variances()[b] - 1.0).abs() < 0.08);
    assert!((g.weights()[a] - 0.25).abs() < 0.02);
}

#[test]
fn as_many_components_as_descriptors() {
    let x: Vec<f32> = vec![0.0, 0.0, 5.0, 0.0, 0.0, 5.0, 5.0, 5.0, 2.5, 9.0];
    let fit = fit_gmm(&x, 2, &GmmParams::new(5)).unwrap();
    assert!(all_finite(&fit.gmm));
    assert!(fit.gmm.log_likelihood(&x).unwrap().is_finite());
    // Every descriptor ends up as the mean of its own component.
    for row in x.chunks_exact(2) {
        assert!((0..5).any(|c| fit
            .gmm
            .mean(c)
            .iter()
            .zip(row)
            .all(|(a, b)| (a - b).abs() < 1e-3)));
    }
}

#[test]
fn restarts_keep_the_best_likelihood() {
    let d = 4;
    let x = mixture(3000, d, 6, 0.0, 7);
    let params = GmmParams::new(6).seed(3).max_iter(60);
    let one = fit_gmm(&x, d, &params).unwrap();
    let four = fit_gmm(&x, d, &params.clone().restarts(4)).unwrap();
    assert_eq!(four.restarts_ll.len(), 4);
    // Restart 0 is the single run.
    assert_eq!(four.restarts_ll[0], one.restarts_ll[0]);
    let best = four
        .restarts_ll
        .iter()
        .cloned()
        .fold(f64::NEG_INFINITY, f64::max);
    assert_eq!(*four.loglik_history.last().unwrap(), best);
    assert!(rel(four.gmm.log_likelihood(&x).unwrap(), best) < 1e-6);
    assert!(best >= one.restarts_ll[0]);
    // The restarts differ (distinct random streams).
    assert!(four.restarts_ll.windows(2).any(|w| w[0] != w[1]));
}

#[test]
fn same_seed_gives_identical_fits() {
    let d = 3;
    let x = mixture(2500, d, 5, 0.0, 8);
    let params = GmmParams::new(5).seed(42).restarts(2);
    let a = fit_gmm(&x, d, &params).unwrap();
    let b = fit_gmm(&x, d, &params).unwrap();
    assert_eq!(a, b);
    // Another seed gives other seeds (k-means itself may well converge to the same partition).
    let pp = params.clone().init(GmmInit::KMeansPlusPlus).max_iter(0);
    let c = fit_gmm(&x, d, &pp).unwrap();
    let e = fit_gmm(&x, d, &pp.clone().seed(43)).unwrap();
    assert_ne!(c.restarts_ll, e.restarts_ll);
}

#[test]
fn thread_count_does_not_change_the_fit() {
    let d = 8;
    let x = mixture(12_000, d, 6, 1.0, 9);
    let params = GmmParams::new(6)
        .seed(1)
        .max_iter(30)
        .init(GmmInit::KMeans { iters: 5 });
    let run = |threads| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| fit_gmm(&x, d, &params).unwrap())
    };
    let (a, b) = (run(1), run(2));
    // Chunks are merged in row order whatever the pool: in fact identical, not just close.
    assert_eq!(a, b);
    assert_eq!(a.iterations, b.iterations);
    assert!(
        rel(
            *a.loglik_history.last().unwrap(),
            *b.loglik_history.last().unwrap()
        ) < 1e-5
    );
    for (u, v) in [
        (a.gmm.means(), b.gmm.means()),
        (a.gmm.variances(), b.gmm.variances()),
        (a.gmm.weights(), b.gmm.weights()),
    ] {
        for (&p, &q) in u.iter().zip(v) {
            assert!((p - q).abs() as f64 <= 1e-5 * (1.0 + q.abs() as f64));
        }
    }
    let post1 = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(|| a.gmm.posteriors(&x).unwrap());
    assert_eq!(post1, a.gmm.posteriors(&x).unwrap());
}

#[test]
fn every_initialisation_gives_a_monotone_em() {
    let d = 6;
    let x = mixture(5000, d, 5, -2.0, 10);
    for init in [
        GmmInit::KMeansPlusPlus,
        GmmInit::KMeans { iters: 10 },
        GmmInit::Random,
    ] {
        for sample in [None, Some(400)] {
            let params = GmmParams::new(5)
                .init(init)
                .kmeans_sample(sample)
                .max_iter(40);
            let fit = fit_gmm(&x, d, &params).unwrap();
            assert!(all_finite(&fit.gmm), "{init:?}");
            for w in fit.loglik_history.windows(2) {
                assert!(
                    w[1] >= w[0] - 1e-6 * w[0].abs(),
                    "{init:?} {sample:?}: {:?}",
                    fit.loglik_history
                );
            }
        }
    }
}

/// The default k-means initialisation (seeds from a subsample of 64·K rows, then Lloyd on the
/// whole sample) starts from a better model than k-means++ alone, and is reproducible.
#[test]
fn kmeans_initialisation_improves_on_kmeans_plus_plus() {
    let (d, k) = (8, 32);
    // 32 · 64 = 2048 seeding rows out of 6000: the subsample path.
    let x = mixture(6000, d, k, 10.0, 12);
    let init = |i: GmmInit, seed: u64| {
        let p = GmmParams::new(k).init(i).max_iter(0).seed(seed);
        fit_gmm(&x, d, &p).unwrap().loglik_history[0]
    };
    let km = GmmParams::new(k).init;
    assert_eq!(km, GmmInit::KMeans { iters: 20 });
    for seed in 0..3 {
        let (a, b) = (init(km, seed), init(GmmInit::KMeansPlusPlus, seed));
        assert!(a > b, "seed {seed}: k-means {a} vs k-means++ {b}");
        assert_eq!(a, init(km, seed));
    }
}

#[test]
fn max_iter_zero_returns_the_initialisation() {
    let x = mixture(500, 2, 2, 0.0, 11);
    let fit = fit_gmm(&x, 2, &GmmParams::new(2).max_iter(0)).unwrap();
    assert_eq!((fit.iterations, fit.loglik_history.len()), (0, 1));
    assert!(rel(fit.gmm.log_likelihood(&x).unwrap(), fit.loglik_history[0]) < 1e-6);
}

fn expect_param(r: dfk::Result<impl std::fmt::Debug>, name: &str) {
    match r {
        Err(Error::InvalidParameter { name: n, .. }) => assert_eq!(n, name),
        other => panic!("expected invalid parameter {name}, got {other:?}"),
    }
}

#[test]
fn bad_input_is_rejected_with_a_clear_error() {
    let x = mixture(100, 4, 2, 0.0, 12);
    let p = GmmParams::new(2);
    let mut bad = x.clone();
    bad[4 * 7 + 2] = f32::NAN;
    let err = fit_gmm(&bad, 4, &p).unwrap_err();
    assert!(matches!(err, Error::NonFinite { index: 30, .. }));
    assert!(err.to_string().contains("row 7"), "{err}");
    bad[30] = f32::INFINITY;
    assert!(matches!(fit_gmm(&bad, 4, &p), Err(Error::NonFinite { .. })));
    let gmm = fit_gmm(&x, 4, &p).unwrap().gmm;
    assert!(matches!(
        gmm.log_likelihood(&bad),
        Err(Error::NonFinite { .. })
    ));
    assert!(matches!(gmm.posteriors(&bad), Err(Error::NonFinite { .. })));
    assert!(matches!(
        em_step(&gmm, &bad, &p),
        Err(Error::NonFinite { index: 30, .. })
    ));
    // em_step finds it during its E-step: also a NaN, in a later chunk than the first.
    let mut nan = x.repeat(40);
    nan[4 * 1500 + 2] = f32::NAN;
    assert!(matches!(
        em_step(&gmm, &nan, &p),
        Err(Error::NonFinite { index: 6002, .. })
    ));

    // Finite but so large that every component's log-density overflows f32: named, not a NaN
    // log-likelihood.
    let mut huge = x.clone();
    huge[4 * 9 + 1] = 1e20;
    // (A fit refuses it before any EM, by its distance from the mean.)
    for (err, why) in [
        (em_step(&gmm, &huge, &p).unwrap_err(), "not finite"),
        (fit_gmm(&huge, 4, &p).unwrap_err(), "scale the descriptors"),
        (gmm.log_likelihood(&huge).unwrap_err(), "not finite"),
        (gmm.posteriors(&huge).unwrap_err(), "not finite"),
    ] {
        assert!(matches!(err, Error::Invalid(_)), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("row 9") && msg.contains(why), "{msg}");
    }

    expect_param(fit_gmm(&x, 0, &p), "d");
    expect_param(fit_gmm(&x[..10], 4, &p), "descriptor matrix length");
    expect_param(gmm.log_likelihood(&x[..10]), "descriptor matrix length");
    expect_param(gmm.posteriors(&x[..6]), "descriptor matrix length");
    assert!(matches!(fit_gmm(&[], 4, &p), Err(Error::Empty { .. })));
    assert!(matches!(gmm.log_likelihood(&[]), Err(Error::Empty { .. })));
    expect_param(fit_gmm(&x[..8], 4, &GmmParams::new(3)), "k");
    expect_param(fit_gmm(&x, 4, &GmmParams::new(0)), "k");
    expect_param(em_step(&gmm, &x, &GmmParams::new(3)), "k");
    expect_param(fit_gmm_from(&x, &gmm, &GmmParams::new(3)), "k");
}

#[test]
fn invalid_parameters_are_named() {
    let x = mixture(100, 2, 2, 0.0, 13);
    let k4 = GmmParams::new(4);
    for (params, name) in [
        (GmmParams::new(0), "k"),
        (k4.clone().restarts(0), "restarts"),
        (k4.clone().tol(-1.0), "tol"),
        (k4.clone().tol(f64::NAN), "tol"),
        (k4.clone().variance_floor(-1e-3), "variance_floor"),
        (k4.clone().variance_floor(f64::INFINITY), "variance_floor"),
        (k4.clone().weight_floor(0.25), "weight_floor"),
        (k4.clone().weight_floor(-0.1), "weight_floor"),
        (k4.clone().kmeans_sample(Some(3)), "kmeans_sample"),
    ] {
        expect_param(params.validate(), name);
        expect_param(fit_gmm(&x, 2, &params), name);
    }
    assert!(GmmParams::default().validate().is_ok());
    assert_eq!(GmmParams::default().k, 16);
}

#[test]
fn gmm_construction_rejects_invalid_parameters() {
    let ok = |k: usize, d: usize| Gmm::new(k, d, vec![0.0; k * d], vec![1.0; k * d], vec![1.0; k]);
    assert!(ok(2, 3).is_ok());
    expect_param(ok(0, 3), "k");
    expect_param(ok(2, 0), "d");
    let dim = |r: dfk::Result<Gmm>| assert!(matches!(r, Err(Error::DimMismatch { .. })), "{r:?}");
    dim(Gmm::new(2, 2, vec![0.0; 3], vec![1.0; 4], vec![0.5; 2]));
    dim(Gmm::new(2, 2, vec![0.0; 4], vec![1.0; 5], vec![0.5; 2]));
    dim(Gmm::new(2, 2, vec![0.0; 4], vec![1.0; 4], vec![0.5; 3]));
    let nonfinite = Gmm::new(1, 2, vec![0.0, f32::NAN], vec![1.0; 2], vec![1.0]);
    assert!(matches!(nonfinite, Err(Error::NonFinite { index: 1, .. })));
    let invalid = |r: dfk::Result<Gmm>| assert!(matches!(r, Err(Error::Invalid(_))), "{r:?}");
    invalid(Gmm::new(1, 2, vec![0.0; 2], vec![1.0, 0.0], vec![1.0]));
    // A subnormal variance (1/σ² = ∞) is rejected, the smallest normal one accepted.
    invalid(Gmm::new(1, 2, vec![0.0; 2], vec![1.0, 1e-45], vec![1.0]));
    assert!(Gmm::new(1, 1, vec![0.0], vec![f32::MIN_POSITIVE], vec![1.0]).is_ok());
    invalid(Gmm::new(2, 1, vec![0.0; 2], vec![1.0; 2], vec![1.5, -0.5]));
    invalid(Gmm::new(2, 1, vec![0.0; 2], vec![1.0; 2], vec![0.0, 0.0]));
    // Weights are renormalised.
    let g = Gmm::new(2, 1, vec![0.0; 2], vec![1.0; 2], vec![1.0, 3.0]).unwrap();
    assert_eq!(g.weights(), &[0.25, 0.75]);
    assert_eq!(g.fisher_len(), 4);
}

#[test]
fn params_deserialise_with_defaults() {
    let p: GmmParams =
        serde_json::from_str(r#"{"k": 8, "init": {"KMeans": {"iters": 5}}}"#).unwrap();
    assert_eq!(p, GmmParams::new(8).init(GmmInit::KMeans { iters: 5 }));
}

#[test]
fn values_too_far_for_float32_statistics_are_named_and_large_ones_fit() {
    let d = 3;
    let mut x = mixture(400, d, 2, 0.0, 5);
    // 1e15: squares of 1e30 still fit float32; the fit is finite.
    x[123 * d + 1] = 1e15;
    let fit = fit_gmm(&x, d, &GmmParams::new(2).max_iter(5)).unwrap();
    assert!(fit.gmm.variances().iter().all(|v| v.is_finite()));
    assert!(fit.gmm.means().iter().all(|v| v.is_finite()));
    // 1e25 is refused before any EM, naming that value's row and dimension.
    x[321 * d + 2] = -1e25;
    let err = fit_gmm(&x, d, &GmmParams::new(2)).unwrap_err().to_string();
    assert!(
        err.contains("row 321 (dimension 2)") && err.contains("scale the descriptors"),
        "{err}"
    );
}

/// With no relative variance floor, a component collapses onto 300 repeated rows far from the
/// data's centre (σ² at the absolute floor): EM's reported log-likelihood, the model's
/// `log_likelihood` and its posteriors still agree with the f64 definition (the expanded f32
/// product alone was off by nats there).
#[test]
fn a_collapsed_component_keeps_the_likelihood_exact() {
    let d = 4;
    let mut x = mixture(2000, d, 3, 50.0, 11);
    let repeated: Vec<f32> = (0..d).map(|j| 80.0 + j as f32 * 0.37).collect();
    for _ in 0..300 {
        x.extend_from_slice(&repeated);
    }
    let fit = fit_gmm(&x, d, &GmmParams::new(8).variance_floor(0.0).seed(3)).unwrap();
    let gmm = &fit.gmm;
    let smallest = gmm
        .variances()
        .iter()
        .cloned()
        .fold(f32::INFINITY, f32::min);
    assert!(
        smallest < 1e-8,
        "no component collapsed: smallest variance {smallest}"
    );
    let (lls, post) = reference(gmm, &x);
    let want = lls.iter().sum::<f64>() / lls.len() as f64;
    let reported = *fit.loglik_history.last().unwrap();
    let direct = gmm.log_likelihood(&x).unwrap();
    for (what, got) in [("EM's", reported), ("log_likelihood's", direct)] {
        assert!(
            (got - want).abs() < 1e-4 * want.abs().max(1.0),
            "{what} log-likelihood {got} against {want}"
        );
    }
    let got = gmm.posteriors(&x).unwrap();
    let worst = got
        .iter()
        .zip(&post)
        .fold(0f64, |m, (&a, &b)| m.max((a as f64 - b).abs()));
    assert!(worst < 1e-4, "posteriors off by {worst}");
}
