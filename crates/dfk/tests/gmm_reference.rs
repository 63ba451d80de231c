//! The GMM fitted by `dfk::gmm` against independent references: scikit-learn's EM trajectory
//! from a common start, VLFeat's and scikit-learn's final likelihoods from their own
//! initialisations, and VLFeat's golden EM step. Fixtures: `fixtures/gmm/` (made by
//! `fixtures/gmm/make_fixtures.py` and `fixtures/gmm/vlfeat_gmm.c`).

use std::path::PathBuf;

use dfk::gmm::{em_step, fit_gmm, fit_gmm_from, Gmm, GmmParams};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/gmm")
        .join(name)
}

fn read_json(path: PathBuf) -> Value {
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).unwrap()
}

/// A float32 `N × D` `.npy` fixture.
fn read_npy(name: &str) -> (Vec<f32>, usize, usize) {
    let bytes = std::fs::read(fixture(name)).unwrap();
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape = npy.shape().to_vec();
    assert_eq!(shape.len(), 2, "{name}");
    (
        npy.into_vec::<f32>().unwrap(),
        shape[0] as usize,
        shape[1] as usize,
    )
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn f32s(v: &Value) -> Vec<f32> {
    f64s(v).into_iter().map(|x| x as f32).collect()
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-12)
}

fn assert_close(what: &str, got: &[f32], want: &[f64], rtol: f64, atol: f64) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= atol + rtol * w.abs(),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}

/// Same start as scikit-learn's `GaussianMixture(diag, reg_covar=1e-10)`, floors that do not
/// bind: the average log-likelihood after each of 10 EM steps agrees to 1e-4 relative.
#[test]
fn em_trajectory_matches_scikit_learn() {
    let fx = read_json(fixture("sklearn_traj.json"));
    let (x, n, d) = read_npy("sklearn_traj_data.npy");
    let k = fx["k"].as_u64().unwrap() as usize;
    assert_eq!((n, d), (2000, 8));
    let traj = f64s(&fx["loglik"]);
    let init = Gmm::new(
        k,
        d,
        f32s(&fx["init_means"]),
        f32s(&fx["init_variances"]),
        f32s(&fx["init_weights"]),
    )
    .unwrap();
    let params = GmmParams::new(k).variance_floor(0.0).weight_floor(0.0);

    assert!(rel(init.log_likelihood(&x).unwrap(), traj[0]) < 1e-4);
    let mut gmm = init.clone();
    for (t, &want_old) in traj[..10].iter().enumerate() {
        let (next, ll_old) = em_step(&gmm, &x, &params).unwrap();
        assert!(
            rel(ll_old, want_old) < 1e-4,
            "step {t}: {ll_old} vs {want_old}"
        );
        gmm = next;
        let ll_new = gmm.log_likelihood(&x).unwrap();
        assert!(
            rel(ll_new, traj[t + 1]) < 1e-4,
            "after step {}: {ll_new} vs {}",
            t + 1,
            traj[t + 1]
        );
    }
    assert_close("means", gmm.means(), &f64s(&fx["final_means"]), 1e-3, 1e-4);
    assert_close(
        "variances",
        gmm.variances(),
        &f64s(&fx["final_variances"]),
        1e-3,
        1e-6,
    );
    assert_close(
        "weights",
        gmm.weights(),
        &f64s(&fx["final_weights"]),
        1e-3,
        1e-6,
    );

    // The same trajectory through the fitting loop.
    let fit = fit_gmm_from(&x, &init, &params.clone().max_iter(10).tol(0.0)).unwrap();
    assert_eq!(fit.iterations, 10);
    assert!(!fit.converged);
    assert_eq!(fit.loglik_history.len(), 11);
    for (t, (&got, &want)) in fit.loglik_history.iter().zip(&traj).enumerate() {
        assert!(rel(got, want) < 1e-4, "history[{t}]: {got} vs {want}");
    }
    // em_step round-trips the model through data coordinates each step: equal to rounding.
    let means: Vec<f64> = gmm.means().iter().map(|&v| v as f64).collect();
    assert_close("fit means", fit.gmm.means(), &means, 1e-5, 1e-5);
}

/// Average log-likelihood of a diagonal GMM by direct evaluation in f64 (as the fixture script
/// evaluates the references' models).
fn avg_loglik_f64(gmm: &Gmm, x: &[f32]) -> f64 {
    let (k, d) = (gmm.k(), gmm.d());
    let mut total = 0f64;
    let mut l = vec![0f64; k];
    for row in x.chunks_exact(d) {
        for (c, l) in l.iter_mut().enumerate() {
            *l =
                (gmm.weights()[c] as f64).ln() - 0.5 * d as f64 * (2.0 * std::f64::consts::PI).ln();
            for ((&xv, &m), &v) in row.iter().zip(gmm.mean(c)).zip(gmm.variance(c)) {
                let v = v as f64;
                *l -= 0.5 * v.ln() + 0.5 * (xv as f64 - m as f64).powi(2) / v;
            }
        }
        let m = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        total += m + l.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
    }
    total / (x.len() / d) as f64
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let h = v.len() / 2;
    if v.len() % 2 == 1 {
        v[h]
    } else {
        0.5 * (v[h - 1] + v[h])
    }
}

/// With its default settings (3 restarts, as the references), fitted from its own
/// initialisation for each seed of the fixtures, dfk's final average log-likelihood is no
/// worse than VLFeat's `vl_gmm` (k-means init, 3 repetitions, 500 iterations) and
/// scikit-learn's (`n_init=3`, `max_iter=500`, `tol=1e-6`) on the same data: the median over
/// the seeds at least the references' median up to f32 rounding (1e-6 relative: dfk's model is
/// stored in f32), and no seed far below (the data have several local optima, so single seeds
/// of any method land in different ones).
#[test]
fn final_likelihood_no_worse_than_vlfeat_and_scikit_learn() {
    let fx = read_json(fixture("ll_compare.json"));
    let sets = fx["sets"].as_array().unwrap();
    assert!(sets.len() >= 2);
    for set in sets {
        let name = set["name"].as_str().unwrap();
        let (x, n, d) = read_npy(set["data"].as_str().unwrap());
        assert_eq!(
            (n, d),
            (
                set["n"].as_u64().unwrap() as usize,
                set["d"].as_u64().unwrap() as usize
            )
        );
        let k = set["k"].as_u64().unwrap() as usize;
        let vl = f64s(&set["vlfeat_ll_by_seed"]);
        let sk = f64s(&set["sklearn_ll_by_seed"]);
        assert!(vl.len() >= 5 && vl.len() == sk.len());
        let mut ours = Vec::new();
        for seed in 0..vl.len() {
            let fit = fit_gmm(&x, d, &GmmParams::new(k).restarts(3).seed(seed as u64)).unwrap();
            let ll = avg_loglik_f64(&fit.gmm, &x);
            let last = fit.loglik_history[fit.loglik_history.len() - 1];
            assert!(
                rel(last, ll) < 1e-6,
                "{name}: history end {last} vs f64 {ll}"
            );
            println!(
                "{name} seed {seed}: dfk {ll:.6} ({} iterations, restarts {:?})  VLFeat {:.6}  scikit-learn {:.6}",
                fit.iterations, fit.restarts_ll, vl[seed], sk[seed]
            );
            for (who, reference) in [("VLFeat", vl[seed]), ("scikit-learn", sk[seed])] {
                assert!(
                    ll >= reference - 1e-3 * reference.abs(),
                    "{name} seed {seed}: dfk {ll} far below {who} {reference}"
                );
            }
            ours.push(ll);
        }
        let m = median(&ours);
        println!(
            "{name} median: dfk {m:.6}  VLFeat {:.6}  scikit-learn {:.6}",
            median(&vl),
            median(&sk)
        );
        for (who, reference) in [("VLFeat", median(&vl)), ("scikit-learn", median(&sk))] {
            assert!(
                m >= reference - 1e-6 * reference.abs(),
                "{name}: dfk's median {m} below {who}'s {reference}"
            );
        }
    }
}

/// VLFeat's M-step from given posteriors, in f64: masses, means and variances skip posteriors
/// below `threshold` (VLFeat 0.9.21 uses 1e-2/K; 0 keeps all), variances as
/// Σq(x−μ_old)²/Σq − (μ_new−μ_old)², priors renormalised over the kept mass.
fn vlfeat_m_step(
    x: &[f64],
    d: usize,
    post: &[f64],
    old_means: &[f64],
    threshold: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let k = old_means.len() / d;
    let (mut mass, mut mean, mut var) = (vec![0.0; k], vec![0.0; k * d], vec![0.0; k * d]);
    for (row, q) in x.chunks_exact(d).zip(post.chunks_exact(k)) {
        for c in 0..k {
            if q[c] < threshold {
                continue;
            }
            mass[c] += q[c];
            for j in 0..d {
                mean[c * d + j] += q[c] * row[j];
                var[c * d + j] += q[c] * (row[j] - old_means[c * d + j]).powi(2);
            }
        }
    }
    for c in 0..k {
        for j in 0..d {
            mean[c * d + j] /= mass[c];
            var[c * d + j] =
                var[c * d + j] / mass[c] - (mean[c * d + j] - old_means[c * d + j]).powi(2);
        }
    }
    let total: f64 = mass.iter().sum();
    (mean, var, mass.iter().map(|m| m / total).collect())
}

/// VLFeat's golden EM step (`/work/shared/golden/golden_vlfeat.json`, copied to
/// `fixtures/gmm/golden_vlfeat.json`). VLFeat's M-step skips posteriors below 1e-2/K; dfk keeps
/// all of them (the exact EM update). Comparable, and checked: the E-step (log-likelihood,
/// posteriors), the full M-step of a component with no skipped posterior, dfk's M-step against
/// the exact update from VLFeat's own posteriors, and the log-likelihood of VLFeat's new model.
#[test]
fn em_step_matches_vlfeat_golden_where_conventions_agree() {
    let g = read_json(fixture("golden_vlfeat.json"));
    let (n, d, k) = (10, 4, 3);
    assert_eq!(g["N"].as_u64(), Some(n as u64));
    let x = f32s(&g["data"]);
    let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let old_means = f64s(&g["means"]);
    let gmm = Gmm::new(
        k,
        d,
        f32s(&g["means"]),
        f32s(&g["covariances"]),
        f32s(&g["priors"]),
    )
    .unwrap();
    let post = f64s(&g["posteriors_f64"]);

    // E-step.
    let ll0 = g["loglikelihood_f64"].as_f64().unwrap();
    assert!(rel(gmm.log_likelihood(&x).unwrap() * n as f64, ll0) < 1e-6);
    assert_close("posteriors", &gmm.posteriors(&x).unwrap(), &post, 0.0, 1e-6);

    // M-step; floors that do not bind (VLFeat's bound 1e-4 does not bind either).
    let bounds = f64s(&g["em1_covariance_lower_bounds"]);
    let (vl_means, vl_vars, vl_priors) = (
        f64s(&g["em1_means"]),
        f64s(&g["em1_covariances"]),
        f64s(&g["em1_priors"]),
    );
    assert!(vl_vars
        .iter()
        .zip(bounds.iter().cycle())
        .all(|(v, b)| v > b));
    // Threshold 0: the exact update (the default 1e-6 also passes on this case).
    let params = GmmParams::new(k)
        .variance_floor(0.0)
        .weight_floor(0.0)
        .posterior_threshold(0.0);
    let (next, ll_old) = em_step(&gmm, &x, &params).unwrap();
    assert!(rel(ll_old * n as f64, ll0) < 1e-6);

    // Our reading of VLFeat's convention reproduces its step exactly.
    let threshold = 1e-2 / k as f64;
    let (tm, tv, tp) = vlfeat_m_step(&x64, d, &post, &old_means, threshold);
    let to32 = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<_>>();
    assert_close("VLFeat-rule means", &to32(&tm), &vl_means, 1e-6, 1e-7);
    assert_close("VLFeat-rule variances", &to32(&tv), &vl_vars, 1e-6, 1e-7);
    assert_close("VLFeat-rule priors", &to32(&tp), &vl_priors, 1e-6, 1e-7);

    // dfk = the exact update (no threshold) from VLFeat's posteriors.
    let (em, ev, ep) = vlfeat_m_step(&x64, d, &post, &old_means, 0.0);
    assert_close("means vs exact update", next.means(), &em, 1e-5, 1e-6);
    assert_close(
        "variances vs exact update",
        next.variances(),
        &ev,
        1e-5,
        1e-6,
    );
    assert_close("weights vs exact update", next.weights(), &ep, 1e-5, 1e-6);

    // Component 0 has no posterior below the threshold: identical to VLFeat's step.
    for c in 0..k {
        let skipped = (0..n).any(|i| post[i * k + c] < threshold);
        assert_eq!(skipped, c != 0, "component {c}");
    }
    assert_close("component 0 mean", next.mean(0), &vl_means[..d], 1e-5, 1e-6);
    assert_close(
        "component 0 variance",
        next.variance(0),
        &vl_vars[..d],
        1e-5,
        1e-6,
    );

    // The log-likelihood VLFeat reports after its step is that of its new model.
    let vl_gmm = Gmm::new(k, d, to32(&vl_means), to32(&vl_vars), to32(&vl_priors)).unwrap();
    let ll1 = g["em1_loglikelihood"].as_f64().unwrap();
    assert!(rel(vl_gmm.log_likelihood(&x).unwrap() * n as f64, ll1) < 1e-6);
    // EM does not decrease the likelihood.
    assert!(next.log_likelihood(&x).unwrap() * n as f64 > ll0);
}
