//! Deep Fisher Kernel trainer: the gradient of the whole SVM objective against finite
//! differences (SVM re-solved at every perturbed θ), monotone decrease under the line search,
//! exact resumption from a checkpoint, and bad input.

use dfk::deep::{
    objective_and_gradient, resume_initial_gmms, train_deep, Checkpoint, DeepData, DeepModel,
    DeepParams, GmmMode, ImageSet, Theta,
};
use dfk::fisher::FisherOptions;
use dfk::gmm::Gmm;
use dfk::svm::{Labels, SvmParams};
use dfk::Error;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `n` images of `per` descriptors in `d` dimensions; class c's descriptors are drawn around
/// shifted centres, with a fraction of label noise so the SVM problem is not separable.
fn synthetic(n: usize, per: usize, d: usize, classes: usize, seed: u64) -> ImageSet {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut data = Vec::with_capacity(n * per * d);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let c = i % classes;
        for _ in 0..per {
            for j in 0..d {
                let centre = if j % classes == c { 0.6 } else { 0.0 };
                let v: f64 = rng.random::<f64>() + rng.random::<f64>() + rng.random::<f64>() - 1.5;
                data.push((centre + v) as f32);
            }
        }
        let noisy = rng.random::<f64>() < 0.15;
        labels.push(if noisy { (c + 1) % classes } else { c });
    }
    ImageSet::new(
        data,
        d,
        (0..=n).map(|i| i * per).collect(),
        Labels::MultiClass { labels, classes },
    )
    .unwrap()
}

fn gmm(k: usize, d: usize, seed: u64) -> Gmm {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let means = (0..k * d).map(|_| rng.random::<f32>() - 0.5).collect();
    let vars = (0..k * d)
        .map(|_| 0.3 + 0.4 * rng.random::<f32>())
        .collect();
    let weights = (0..k).map(|_| 0.5 + rng.random::<f32>()).collect();
    Gmm::new(k, d, means, vars, weights).unwrap()
}

fn fd_params() -> DeepParams {
    DeepParams {
        fisher: FisherOptions {
            sqrt_epsilon: 1e-4,
            posterior_threshold: 0.0,
            ..FisherOptions::default()
        },
        svm: SvmParams {
            c: 0.7,
            eps: 1e-9,
            max_iter: 100_000,
            ..SvmParams::default()
        },
        ..DeepParams::default()
    }
}

/// Central finite differences of J(θ) (SVM solved from scratch at every point) against the
/// back-propagated gradient, entry by entry, for means, log σ and weight logits.
#[test]
fn svm_objective_gradient_matches_finite_differences() {
    let set = synthetic(16, 12, 3, 2, 1);
    let params = fd_params();
    let theta = Theta::from_gmm(&gmm(2, 3, 2));
    let (j0, grad) = objective_and_gradient(&theta, &set, &params).unwrap();
    assert!(j0.is_finite() && j0 > 0.0);
    let j = |t: &Theta| objective_and_gradient(t, &set, &params).unwrap().0;
    let h = 1e-3;
    let mut worst = 0f64;
    let scale = grad
        .means
        .iter()
        .chain(&grad.log_std)
        .chain(&grad.logits)
        .fold(0f64, |m, v| m.max(v.abs()));
    assert!(scale > 1e-3, "gradient vanishes: {scale}");
    for group in 0..3 {
        let len = [theta.means.len(), theta.log_std.len(), theta.logits.len()][group];
        for i in 0..len {
            let bump = |delta: f64| {
                let mut t = theta.clone();
                match group {
                    0 => t.means[i] += delta,
                    1 => t.log_std[i] += delta,
                    _ => t.logits[i] += delta,
                }
                t
            };
            let fd = (j(&bump(h)) - j(&bump(-h))) / (2.0 * h);
            let an = [&grad.means, &grad.log_std, &grad.logits][group][i];
            let err = (fd - an).abs() / scale;
            worst = worst.max(err);
            assert!(
                err < 5e-3,
                "group {group} entry {i}: finite difference {fd}, back-propagated {an}"
            );
        }
    }
    eprintln!("worst relative error {worst:.2e} (gradient scale {scale:.3e}, J = {j0:.6})");
}

fn train_params(iters: usize) -> DeepParams {
    DeepParams {
        max_iter: iters,
        rel_tol: 0.0,
        patience: 0,
        svm: SvmParams {
            c: 1.0,
            eps: 1e-3,
            ..SvmParams::default()
        },
        ..DeepParams::default()
    }
}

#[test]
fn objective_decreases_monotonically_under_the_line_search() {
    let set = synthetic(60, 20, 4, 3, 3);
    let data = DeepData {
        train: &set,
        val: None,
        test: None,
    };
    let model = train_deep(&[gmm(3, 4, 4)], &data, &train_params(6), None).unwrap();
    let j: Vec<f64> = model.history.records.iter().map(|r| r.objective).collect();
    assert!(j.len() >= 3, "too few iterations: {j:?}");
    for w in j.windows(2) {
        assert!(w[1] <= w[0], "objective increased: {j:?}");
    }
    assert!(
        j[j.len() - 1] < 0.99 * j[0],
        "objective barely moved: {j:?}"
    );
    // Armijo: each accepted step decreased J by at least c₁ t |⟨∇J, d⟩| > 0.
    for r in &model.history.records[1..] {
        if r.failed_searches == 0 {
            assert!(r.step > 0.0 && r.trials >= 1);
        }
    }
    let moved = model.history.records.last().unwrap().displacement;
    assert!(moved.means_in_sigma > 0.0 && moved.log_variance_rms > 0.0);
}

#[test]
fn per_class_mode_decreases_every_class_objective() {
    let set = synthetic(45, 15, 4, 3, 5);
    let data = DeepData {
        train: &set,
        val: None,
        test: None,
    };
    let params = DeepParams {
        mode: GmmMode::PerClass,
        ..train_params(3)
    };
    let model = train_deep(&[gmm(2, 4, 6)], &data, &params, None).unwrap();
    assert_eq!(model.gmms.len(), 3);
    assert_eq!(model.svms.len(), 3);
    let j: Vec<f64> = model.history.records.iter().map(|r| r.objective).collect();
    for w in j.windows(2) {
        assert!(w[1] <= w[0], "objective increased: {j:?}");
    }
    assert!(
        model.gmms[0] != model.gmms[1],
        "per-class GMMs did not separate"
    );
    let scores = model.scores(&set).unwrap();
    assert_eq!(scores.len(), 45 * 3);
    assert!(scores.iter().all(|v| v.is_finite()));
}

#[test]
fn resumed_run_matches_an_uninterrupted_one() {
    let set = synthetic(40, 15, 3, 2, 7);
    let val = synthetic(20, 15, 3, 2, 8);
    let data = DeepData {
        train: &set,
        val: Some(&val),
        test: None,
    };
    let dir = tempfile::tempdir().unwrap();
    let init = [gmm(3, 3, 9)];
    let straight = train_deep(&init, &data, &train_params(4), None).unwrap();
    let cp = Checkpoint {
        path: dir.path().join("run.ckpt"),
        resume: true,
        origin: Vec::new(),
    };
    let first = train_deep(&init, &data, &train_params(2), Some(&cp)).unwrap();
    assert_eq!(first.history.records.len(), 3);
    let resumed = train_deep(&init, &data, &train_params(4), Some(&cp)).unwrap();
    assert_eq!(resumed.history.records.len(), 5);
    let obj = |m: &DeepModel| {
        m.history
            .records
            .iter()
            .map(|r| (r.objective, r.step, r.val_metric))
            .collect::<Vec<_>>()
    };
    assert_eq!(obj(&straight), obj(&resumed));
    assert_eq!(straight.gmms, resumed.gmms);
    assert_eq!(
        straight.history.best_iteration,
        resumed.history.best_iteration
    );
    for (a, b) in straight.svms.iter().zip(&resumed.svms) {
        for (ma, mb) in a.models.iter().zip(&b.models) {
            assert_eq!(ma.w, mb.w);
            assert_eq!(ma.alpha, mb.alpha);
        }
    }
}

/// A run that stopped on its relative-decrease rule continues when resumed with a looser one
/// (the stopping rules are the resumed run's), and then matches a run made with the looser
/// rule from the start; resumed with the same rule it stays stopped.
#[test]
fn resuming_with_looser_stopping_rules_continues_the_run() {
    let set = synthetic(40, 15, 3, 2, 7);
    let data = DeepData {
        train: &set,
        val: None,
        test: None,
    };
    let dir = tempfile::tempdir().unwrap();
    let init = [gmm(3, 3, 9)];
    let cp = Checkpoint {
        path: dir.path().join("run.ckpt"),
        resume: true,
        origin: Vec::new(),
    };
    let strict = DeepParams {
        rel_tol: 0.5,
        ..train_params(4)
    };
    let first = train_deep(&init, &data, &strict, Some(&cp)).unwrap();
    assert_eq!(
        first.history.records.len(),
        2,
        "{}",
        first.history.stop_reason
    );
    assert!(first.history.stop_reason.contains("rel_tol 0.5"));
    let again = train_deep(&init, &data, &strict, Some(&cp)).unwrap();
    assert_eq!(again.history.records.len(), 2);
    let resumed = train_deep(&init, &data, &train_params(4), Some(&cp)).unwrap();
    assert_eq!(resumed.history.records.len(), 5);
    let straight = train_deep(&init, &data, &train_params(4), None).unwrap();
    assert_eq!(straight.gmms, resumed.gmms);
}

/// The same run in a 1-thread and a 2-thread rayon pool. The encoder and backward pass sum in
/// a fixed order (bit-identical gradients for the same θ); the one-vs-rest solver visits
/// samples in an order that depends on the thread count, so its solutions agree to its
/// tolerance — a tight one here, so that the whole runs agree closely. The backward pass drops
/// posteriors below a cutoff from two of its sums, so the gradient is not exactly continuous in
/// θ: the solver's ~1e-11 differences can move a later J by ~1e-8 (observed 1.7e-8).
#[test]
fn results_do_not_depend_on_the_thread_count() {
    let set = synthetic(48, 15, 3, 3, 15);
    let val = synthetic(24, 15, 3, 3, 16);
    let data = DeepData {
        train: &set,
        val: Some(&val),
        test: None,
    };
    let init = [gmm(3, 3, 17)];
    let mut params = train_params(4);
    params.svm.eps = 1e-9;
    params.svm.max_iter = 1_000_000;
    let run = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| train_deep(&init, &data, &params, None).unwrap())
    };
    let (one, two) = (run(1), run(2));
    assert_eq!(one.history.records.len(), two.history.records.len());
    assert!(one.history.records.len() >= 3);
    for (a, b) in one.history.records.iter().zip(&two.history.records) {
        let rel = (a.objective - b.objective).abs() / a.objective.abs();
        assert!(
            rel < 1e-7,
            "iteration {}: J {} vs {}",
            a.iteration,
            a.objective,
            b.objective
        );
        assert_eq!((a.trials, a.val_metric), (b.trials, b.val_metric));
        assert!(
            // The step comes from the quadratic through J values: J's rounding differences
            // reach it amplified by J / (J(θ) − J(θ + t d)).
            (a.step - b.step).abs() <= 1e-4 * a.step.abs(),
            "steps {} vs {}",
            a.step,
            b.step
        );
    }
    assert_eq!(one.history.best_iteration, two.history.best_iteration);
    for (ga, gb) in one.gmms.iter().zip(&two.gmms) {
        for (x, y) in ga.means().iter().zip(gb.means()) {
            assert!((x - y).abs() < 1e-5, "means {x} vs {y}");
        }
        for (x, y) in ga.variances().iter().zip(gb.variances()) {
            assert!((x - y).abs() < 1e-5 * x.abs(), "variances {x} vs {y}");
        }
    }
    let worst = one
        .history
        .records
        .iter()
        .zip(&two.history.records)
        .map(|(a, b)| (a.objective - b.objective).abs() / a.objective.abs())
        .fold(0f64, f64::max);
    eprintln!("largest relative objective difference between 1 and 2 threads: {worst:.2e}");
}

/// Early rejection by the SVM dual bound changes no decision: the same run with it off (the
/// evaluation is offered no threshold) makes the same trials, accepts the same steps and
/// reaches the same objectives, in shared and in per-class mode. Plain backtracking (grow
/// 1.5×, halve) rejects often and retries at a step that does not depend on J either way; the
/// SVMs are solved tightly because a retry after an early rejection warm-starts from the
/// stopped solve's duals instead of the full solve's, so the retry's solution agrees to the
/// solver tolerance, not bit for bit.
/// The trainer's backward pass reads the posteriors stored by the forward pass when they fit in
/// `max_posterior_bytes`, and recomputes them otherwise: two computations of one gradient.
#[test]
fn stored_posteriors_give_the_recomputed_gradient() {
    let set = synthetic(40, 300, 4, 3, 5);
    // Tight components: many posteriors below VLFeat's threshold.
    let g = gmm(5, 4, 6);
    let tight: Vec<f32> = g.variances().iter().map(|v| 0.03 * v).collect();
    let g = Gmm::new(5, 4, g.means().to_vec(), tight, g.weights().to_vec()).unwrap();
    let theta = Theta::from_gmm(&g);
    // VLFeat's threshold: skipped posteriors, which the two passes sum differently (with
    // threshold 0 every posterior is kept and both give the same bits).
    let mut stored = fd_params();
    stored.fisher.posterior_threshold = 1e-6;
    assert!(stored.max_posterior_bytes > 0);
    let recomputed = DeepParams {
        max_posterior_bytes: 0,
        ..stored.clone()
    };
    let (ja, a) = objective_and_gradient(&theta, &set, &stored).unwrap();
    let (jb, b) = objective_and_gradient(&theta, &set, &recomputed).unwrap();
    assert_eq!(ja, jb, "the objective does not depend on the backward pass");
    let all = |t: &Theta| -> Vec<f64> {
        t.means
            .iter()
            .chain(&t.log_std)
            .chain(&t.logits)
            .copied()
            .collect()
    };
    let (a, b) = (all(&a), all(&b));
    // Different sums (stored γ, dropped entries below 1e-9): not the same bits...
    assert_ne!(a, b, "both runs took the same path");
    // ...but the same gradient.
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs()));
    let worst = a
        .iter()
        .zip(&b)
        .fold(0f64, |m, (x, y)| m.max((x - y).abs()));
    assert!(
        worst <= 1e-6 * scale,
        "max difference {worst:e}, scale {scale:e}"
    );
    eprintln!(
        "stored vs recomputed posteriors: max difference {:.1e} of the largest entry",
        worst / scale
    );
}

#[test]
fn early_rejection_changes_no_decision() {
    let set = synthetic(48, 15, 3, 3, 25);
    let data = DeepData {
        train: &set,
        val: None,
        test: None,
    };
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    for mode in [GmmMode::Shared, GmmMode::PerClass] {
        let mut params = DeepParams {
            mode,
            ..train_params(6)
        };
        params.svm.eps = 1e-9;
        params.svm.max_iter = 1_000_000;
        params.line_search.adaptive = false;
        let run = |early_rejection: bool| {
            let mut p = params.clone();
            p.line_search.early_rejection = early_rejection;
            one.install(|| train_deep(&[gmm(3, 3, 26)], &data, &p, None).unwrap())
        };
        let (on, off) = (run(true), run(false));
        let early =
            |m: &DeepModel| -> usize { m.history.records.iter().map(|r| r.early_rejections).sum() };
        assert!(early(&on) >= 2, "{mode:?}: {} early rejections", early(&on));
        assert_eq!(early(&off), 0);
        assert_eq!(on.history.records.len(), off.history.records.len());
        let (mut rejected, mut worst) = (0, 0f64);
        for (a, b) in on.history.records.iter().zip(&off.history.records) {
            assert_eq!(
                (a.trials, a.failed_searches, a.step),
                (b.trials, b.failed_searches, b.step),
                "{mode:?}, iteration {}",
                a.iteration
            );
            let rel = (a.objective - b.objective).abs() / b.objective.abs();
            assert!(rel < 1e-7, "{mode:?}: J {} vs {}", a.objective, b.objective);
            worst = worst.max(rel);
            rejected += b.trials.saturating_sub(1);
        }
        assert!(early(&on) <= rejected);
        eprintln!(
            "{mode:?}: {} of {rejected} rejected trials stopped early; objectives within {worst:.1e}",
            early(&on)
        );
    }
}

#[test]
fn resume_rejects_other_settings_and_corrupt_files() {
    let set = synthetic(20, 10, 3, 2, 10);
    let data = DeepData {
        train: &set,
        val: None,
        test: None,
    };
    let dir = tempfile::tempdir().unwrap();
    let cp = Checkpoint {
        path: dir.path().join("run.ckpt"),
        resume: true,
        origin: Vec::new(),
    };
    let init = [gmm(2, 3, 11)];
    train_deep(&init, &data, &train_params(1), Some(&cp)).unwrap();
    let mut other = train_params(2);
    other.svm.c = 5.0;
    assert!(matches!(
        train_deep(&init, &data, &other, Some(&cp)),
        Err(Error::Format { .. })
    ));
    let smaller = synthetic(10, 10, 3, 2, 10);
    let small_data = DeepData {
        train: &smaller,
        ..data
    };
    assert!(matches!(
        train_deep(&init, &small_data, &train_params(2), Some(&cp)),
        Err(Error::Format { .. })
    ));
    std::fs::write(&cp.path, b"{\"format\": 3").unwrap();
    assert!(matches!(
        train_deep(&init, &data, &train_params(2), Some(&cp)),
        Err(Error::Format { .. })
    ));
}

/// The message of a [`Error::Format`] about `path`; panics on anything else.
fn format_message(r: Result<DeepModel, Error>, path: &std::path::Path) -> String {
    match r {
        Err(Error::Format { path: p, message }) => {
            assert_eq!(p, path);
            message
        }
        Err(e) => panic!("expected a format error about {}, got {e}", path.display()),
        Ok(_) => panic!("a malformed checkpoint was accepted"),
    }
}

/// A checkpoint whose structure does not fit the run (lengths, indices, shapes, values the
/// trainer indexes or unwraps) is rejected whole on loading, naming the field, and left as it
/// was; in both modes.
#[test]
fn resume_rejects_a_malformed_checkpoint() {
    let set = synthetic(24, 8, 3, 3, 30);
    let val = synthetic(12, 8, 3, 3, 31);
    let data = DeepData {
        train: &set,
        val: Some(&val),
        test: None,
    };
    let init = [gmm(2, 3, 32)];
    let dir = tempfile::tempdir().unwrap();
    for mode in [GmmMode::Shared, GmmMode::PerClass] {
        let params = |iters| DeepParams {
            mode,
            ..train_params(iters)
        };
        let cp = Checkpoint {
            path: dir.path().join(format!("{mode:?}.ckpt")),
            resume: true,
            origin: Vec::new(),
        };
        train_deep(&init, &data, &params(1), Some(&cp)).unwrap();
        let good: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&cp.path).unwrap()).unwrap();
        type Edit = fn(&mut serde_json::Value);
        let cases: [(Edit, &str); 12] = [
            (
                |c| c["history"]["records"] = serde_json::json!([]),
                "history.records holds 0 records",
            ),
            (
                |c| c["best"]["iteration"] = 99.into(),
                "best.iteration = 99",
            ),
            (|c| c["best"]["svms"] = serde_json::json!([]), "best.svms"),
            (
                |c| c["best"]["thetas"] = serde_json::json!([]),
                "best.thetas",
            ),
            (
                |c| {
                    c["stop"] = serde_json::Value::Null;
                    c["groups"][0]["tasks"] = serde_json::json!([]);
                },
                "groups[0].tasks = []",
            ),
            (
                |c| c["groups"][0]["tasks"] = serde_json::json!([0, 5]),
                "task 5 is not a class index",
            ),
            (
                |c| {
                    let last = c["groups"].as_array().unwrap().len() - 1;
                    c["groups"][last]["tasks"] = serde_json::json!([0]);
                },
                "].tasks = [0]",
            ),
            (
                |c| c["groups"][0]["svm"]["models"][0]["alpha"] = serde_json::json!([1.0]),
                "groups[0].svm.models[0].alpha holds 1 duals",
            ),
            (
                |c| c["groups"][0]["train_scores"] = serde_json::json!([]),
                "groups[0].train_scores holds 0 scores",
            ),
            (
                |c| c["best"]["thetas"][0]["logits"] = serde_json::json!([0.0]),
                "best.thetas[0].logits holds 1 values",
            ),
            (
                |c| c["groups"][0]["floors"]["min_weight"] = 2.0.into(),
                "groups[0].floors.min_weight = 2.0",
            ),
            (
                |c| c["best"]["metric"] = serde_json::Value::Null,
                "best.metric = None",
            ),
        ];
        for (edit, needle) in cases {
            let mut c = good.clone();
            edit(&mut c);
            // Without its checksum (as an earlier dfk wrote them), so that the structural
            // checks are what rejects it.
            c.as_object_mut().unwrap().remove("checksum").unwrap();
            let bytes = serde_json::to_vec(&c).unwrap();
            std::fs::write(&cp.path, &bytes).unwrap();
            let message = format_message(train_deep(&init, &data, &params(3), Some(&cp)), &cp.path);
            assert!(
                message.contains(needle),
                "{mode:?}: {message:?} lacks {needle:?}"
            );
            assert_eq!(
                std::fs::read(&cp.path).unwrap(),
                bytes,
                "{mode:?}: {needle}"
            );
        }
        // The checkpoint itself is fine.
        std::fs::write(&cp.path, serde_json::to_vec(&good).unwrap()).unwrap();
        let resumed = train_deep(&init, &data, &params(2), Some(&cp)).unwrap();
        assert_eq!(resumed.history.records.len(), 3);
    }
}

/// Resuming with other images, labels or initial GMMs fails with a message naming the
/// setting; a checkpoint from before the settings were recorded still resumes exactly.
#[test]
fn resume_names_changed_data_and_initial_gmms() {
    let set = synthetic(20, 10, 3, 2, 40);
    let val = synthetic(10, 10, 3, 2, 41);
    let data = DeepData {
        train: &set,
        val: None,
        test: None,
    };
    let dir = tempfile::tempdir().unwrap();
    let cp = Checkpoint {
        path: dir.path().join("run.ckpt"),
        resume: true,
        origin: Vec::new(),
    };
    let init = [gmm(2, 3, 42)];
    train_deep(&init, &data, &train_params(1), Some(&cp)).unwrap();
    let saved = std::fs::read(&cp.path).unwrap();
    let fails = |init: &[Gmm], data: &DeepData, needles: &[&str]| {
        let message = format_message(
            train_deep(init, data, &train_params(2), Some(&cp)),
            &cp.path,
        );
        for needle in needles {
            assert!(message.contains(needle), "{message:?} lacks {needle:?}");
        }
        assert_eq!(std::fs::read(&cp.path).unwrap(), saved);
    };
    fails(
        &[gmm(3, 3, 42)],
        &data,
        &[
            "other settings",
            "K (--k or --gmm): \"2\" in the checkpoint, \"3\" given",
        ],
    );
    fails(&[gmm(2, 3, 43)], &data, &["groups[0].init.", "another GMM"]);
    fails(
        &init,
        &DeepData {
            val: Some(&val),
            ..data
        },
        &["validation set (--val-fraction, --seed): \"none\" in the checkpoint"],
    );
    // The same images with other labels: the same sizes, another content.
    let mut relabelled = set.clone();
    if let Labels::MultiClass { labels, .. } = &mut relabelled.labels {
        labels.swap(0, 1);
    }
    fails(
        &init,
        &DeepData {
            train: &relabelled,
            ..data
        },
        &["training set"],
    );
    let Labels::MultiClass { labels, classes } = &set.labels else {
        unreachable!()
    };
    let mut targets = vec![false; labels.len() * classes];
    for (i, &c) in labels.iter().enumerate() {
        targets[i * classes + c] = true;
    }
    let multi = ImageSet::new(
        set.data.clone(),
        set.d,
        set.offsets.clone(),
        Labels::MultiLabel {
            targets,
            classes: *classes,
        },
    )
    .unwrap();
    fails(
        &init,
        &DeepData {
            train: &multi,
            ..data
        },
        &["labels (--multilabel): \"multi-class\" in the checkpoint, \"multi-label\" given"],
    );

    // A checkpoint without recorded settings (an older one) is checked by its fingerprint and
    // structure, and resumes exactly.
    let mut old: serde_json::Value = serde_json::from_slice(&saved).unwrap();
    for key in ["settings", "checksum"] {
        old.as_object_mut().unwrap().remove(key).unwrap();
    }
    std::fs::write(&cp.path, serde_json::to_vec(&old).unwrap()).unwrap();
    let resumed = train_deep(&init, &data, &train_params(3), Some(&cp)).unwrap();
    let straight = train_deep(&init, &data, &train_params(3), None).unwrap();
    assert_eq!(resumed.gmms, straight.gmms);
    assert_eq!(resumed.history.records.len(), 4);
    // Without the settings, another K is still caught, by the shapes.
    std::fs::write(&cp.path, serde_json::to_vec(&old).unwrap()).unwrap();
    let message = format_message(
        train_deep(&[gmm(3, 3, 42)], &data, &train_params(3), Some(&cp)),
        &cp.path,
    );
    assert!(message.contains("groups[0].init.k = 2"), "{message}");
    // And another setting by the fingerprint, saying why it cannot be named.
    std::fs::write(&cp.path, serde_json::to_vec(&old).unwrap()).unwrap();
    let mut other_c = train_params(3);
    other_c.svm.c = 2.0;
    let message = format_message(train_deep(&init, &data, &other_c, Some(&cp)), &cp.path);
    assert!(
        message.contains("other settings") && message.contains("predates the record"),
        "{message}"
    );
}

/// The checkpoint's checksum covers every value: one changed value (here a dual, which no
/// structural check could catch) is refused and the file left as it was, while the file
/// rewritten with other formatting and key order, values unchanged, still resumes.
#[test]
fn checkpoint_checksum_catches_a_changed_value() {
    let set = synthetic(20, 10, 3, 2, 50);
    let data = DeepData {
        train: &set,
        val: None,
        test: None,
    };
    let dir = tempfile::tempdir().unwrap();
    let cp = Checkpoint {
        path: dir.path().join("run.ckpt"),
        resume: true,
        origin: Vec::new(),
    };
    let init = [gmm(2, 3, 51)];
    train_deep(&init, &data, &train_params(1), Some(&cp)).unwrap();
    let saved = std::fs::read(&cp.path).unwrap();
    assert!(saved.starts_with(b"{\"checksum\":\"crc32:"));
    let good: serde_json::Value = serde_json::from_slice(&saved).unwrap();

    let mut edited = good.clone();
    let alpha = &mut edited["groups"][0]["svm"]["models"][0]["alpha"][0];
    *alpha = (alpha.as_f64().unwrap() * 0.5 + 1e-3).into();
    let bytes = serde_json::to_vec(&edited).unwrap();
    std::fs::write(&cp.path, &bytes).unwrap();
    let message = format_message(
        train_deep(&init, &data, &train_params(2), Some(&cp)),
        &cp.path,
    );
    assert!(message.contains("does not match its checksum"), "{message}");
    assert_eq!(std::fs::read(&cp.path).unwrap(), bytes);

    // Pretty-printed, keys sorted (serde_json's map): the same values, so the same checksum.
    std::fs::write(&cp.path, serde_json::to_vec_pretty(&good).unwrap()).unwrap();
    let resumed = train_deep(&init, &data, &train_params(2), Some(&cp)).unwrap();
    let straight = train_deep(&init, &data, &train_params(2), None).unwrap();
    assert_eq!(resumed.gmms, straight.gmms);
}

/// A checkpoint written with an origin gives back its initial GMMs, bit for bit, to a caller
/// with the same origin; another origin is refused naming each difference; a checkpoint
/// without one (or none at all) gives nothing.
#[test]
fn checkpoint_returns_its_initial_gmms_for_the_same_origin() {
    let set = synthetic(20, 10, 3, 2, 60);
    let data = DeepData {
        train: &set,
        val: None,
        test: None,
    };
    let dir = tempfile::tempdir().unwrap();
    let origin = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let path = dir.path().join("run.ckpt");
    assert!(resume_initial_gmms(&path, &origin(&[("em", "a")]))
        .unwrap()
        .is_none());
    let cp = Checkpoint {
        path: path.clone(),
        resume: true,
        origin: origin(&[("em", "a"), ("seed", "3")]),
    };
    let init = [gmm(2, 3, 61)];
    train_deep(&init, &data, &train_params(1), Some(&cp)).unwrap();
    let got = resume_initial_gmms(&path, &cp.origin).unwrap().unwrap();
    assert_eq!(got, init.to_vec());
    // Resuming records the origin again.
    train_deep(&got, &data, &train_params(2), Some(&cp)).unwrap();
    assert_eq!(
        resume_initial_gmms(&path, &cp.origin).unwrap().unwrap(),
        init.to_vec()
    );

    let refused =
        |given: &[(&str, &str)], needles: &[&str]| match resume_initial_gmms(&path, &origin(given))
        {
            Err(Error::Format { path: p, message }) => {
                assert_eq!(p, path);
                for needle in needles {
                    assert!(message.contains(needle), "{message:?} lacks {needle:?}");
                }
            }
            other => panic!("expected a format error, got {other:?}"),
        };
    refused(
        &[("em", "b"), ("seed", "3")],
        &["em: \"a\" in the checkpoint, \"b\" given"],
    );
    refused(
        &[("em", "a"), ("seed", "3"), ("k", "2")],
        &["k: not in the checkpoint, \"2\" given"],
    );
    refused(
        &[("em", "a")],
        &["seed: \"3\" in the checkpoint, not given"],
    );

    // Written without an origin: nothing to take.
    let plain = Checkpoint {
        path: dir.path().join("plain.ckpt"),
        resume: true,
        origin: Vec::new(),
    };
    train_deep(&init, &data, &train_params(1), Some(&plain)).unwrap();
    assert!(resume_initial_gmms(&plain.path, &cp.origin)
        .unwrap()
        .is_none());
}

#[test]
fn bad_input_is_rejected() {
    let labels = || Labels::MultiClass {
        labels: vec![0, 1],
        classes: 2,
    };
    let data = vec![0f32; 8];
    assert!(matches!(
        ImageSet::new(data.clone(), 2, vec![1, 2, 4], labels()),
        Err(Error::InvalidParameter { .. })
    ));
    assert!(matches!(
        ImageSet::new(data.clone(), 2, vec![0, 0, 4], labels()),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        ImageSet::new(data.clone(), 2, vec![0, 2, 3], labels()),
        Err(Error::DimMismatch { .. })
    ));
    assert!(matches!(
        ImageSet::new(data.clone(), 2, vec![0, 1, 2, 4], labels()),
        Err(Error::DimMismatch { .. })
    ));
    let mut nan = data.clone();
    nan[5] = f32::NAN;
    assert!(matches!(
        ImageSet::new(nan, 2, vec![0, 2, 4], labels()),
        Err(Error::NonFinite { .. })
    ));
    let set = synthetic(10, 5, 3, 2, 12);
    assert!(matches!(
        set.split_holdout(1.0, 0),
        Err(Error::InvalidParameter { .. })
    ));
    // A class of one image stays in training at any fraction (at 0.5 it rounded to the
    // validation side and left training without the class).
    let Labels::MultiClass { labels: base, .. } = &set.labels else {
        unreachable!()
    };
    let mut rare = base.clone();
    rare[7] = 2;
    let with_rare = ImageSet::new(
        set.data.clone(),
        set.d,
        set.offsets.clone(),
        Labels::MultiClass {
            labels: rare,
            classes: 3,
        },
    )
    .unwrap();
    for fraction in [0.5, 0.9] {
        let (kept, _) = with_rare.split_holdout(fraction, 0).unwrap();
        assert_eq!(
            kept.labels.positives_per_class()[2],
            1,
            "fraction {fraction}"
        );
    }
    // Multi-label: class 1 only ever appears beside class 0 (a review's case, 12 images:
    // {0} × 5, {0, 1}, {2} × 6); every seed keeps it in training.
    let targets: Vec<bool> = (0..12).flat_map(|i| [i < 6, i == 5, i >= 6]).collect();
    let twelve = synthetic(12, 5, 3, 2, 7);
    let multi = ImageSet::new(
        twelve.data,
        twelve.d,
        twelve.offsets,
        Labels::MultiLabel {
            targets,
            classes: 3,
        },
    )
    .unwrap();
    for seed in 0..8 {
        let (kept, _) = multi.split_holdout(0.5, seed).unwrap();
        let per_class = kept.labels.positives_per_class();
        assert!(
            per_class.iter().all(|&p| p > 0),
            "seed {seed}: {per_class:?}"
        );
    }
    let data = DeepData {
        train: &set,
        val: None,
        test: None,
    };
    // GMM of the wrong dimension; two GMMs in shared mode; invalid settings.
    assert!(matches!(
        train_deep(&[gmm(2, 4, 0)], &data, &train_params(1), None),
        Err(Error::DimMismatch { .. })
    ));
    assert!(matches!(
        train_deep(&[gmm(2, 3, 0), gmm(2, 3, 1)], &data, &train_params(1), None),
        Err(Error::DimMismatch { .. })
    ));
    for bad in [
        DeepParams {
            variance_floor: 0.0,
            ..train_params(1)
        },
        DeepParams {
            min_weight: 1.0,
            ..train_params(1)
        },
        DeepParams {
            rel_tol: -1.0,
            ..train_params(1)
        },
    ] {
        assert!(matches!(
            train_deep(&[gmm(2, 3, 0)], &data, &bad, None),
            Err(Error::InvalidParameter { .. })
        ));
    }
}

#[test]
fn multilabel_training_decreases_the_objective_and_reports_map() {
    let base = synthetic(48, 12, 4, 3, 13);
    // Label sets: each image's class plus, for every third image, the next class.
    let Labels::MultiClass { labels, classes } = &base.labels else {
        unreachable!()
    };
    let mut targets = vec![false; labels.len() * classes];
    for (i, &c) in labels.iter().enumerate() {
        targets[i * classes + c] = true;
        if i % 3 == 0 {
            targets[i * classes + (c + 1) % classes] = true;
        }
    }
    let set = ImageSet::new(
        base.data.clone(),
        base.d,
        base.offsets.clone(),
        Labels::MultiLabel {
            targets,
            classes: *classes,
        },
    )
    .unwrap();
    let data = DeepData {
        train: &set,
        val: Some(&set),
        test: None,
    };
    let model = train_deep(&[gmm(2, 4, 14)], &data, &train_params(3), None).unwrap();
    assert_eq!(model.history.metric, "mAP");
    let j: Vec<f64> = model.history.records.iter().map(|r| r.objective).collect();
    assert!(
        j.windows(2).all(|w| w[1] <= w[0]),
        "objective increased: {j:?}"
    );
    assert!(j[j.len() - 1] < j[0]);
    for r in &model.history.records {
        assert!(r.train_metric > 0.0 && r.train_metric <= 1.0);
        assert_eq!(r.val_metric, Some(r.train_metric));
    }
    assert!(model.svms[0].multilabel);
}

/// The images of `synthetic(48, 12, 4, 3, 13)` with one-hot multi-label targets (each image a
/// positive of its class only), and those targets.
fn one_hot_multilabel() -> (ImageSet, Vec<bool>, usize) {
    let base = synthetic(48, 12, 4, 3, 13);
    let Labels::MultiClass { labels, classes } = &base.labels else {
        unreachable!()
    };
    let classes = *classes;
    let targets: Vec<bool> = (0..labels.len() * classes)
        .map(|ic| labels[ic / classes] == ic % classes)
        .collect();
    let set = ImageSet::new(
        base.data.clone(),
        base.d,
        base.offsets.clone(),
        Labels::MultiLabel {
            targets: targets.clone(),
            classes,
        },
    )
    .unwrap();
    (set, targets, classes)
}

/// A multi-label test set in which a class has no positive image(a rare class of a small
/// held-out set) does not stop training: its mAP is over the classes that have one, as `dfk
/// eval` computes it.
#[test]
fn a_test_class_without_positives_is_left_out_of_the_map() {
    let (train, targets, classes) = one_hot_multilabel();
    // The test set: the same images, with no positive of the last class.
    let test_targets: Vec<bool> = targets
        .iter()
        .enumerate()
        .map(|(ic, &t)| t && ic % classes != classes - 1)
        .collect();
    let mut test = train.clone();
    test.labels = Labels::MultiLabel {
        targets: test_targets.clone(),
        classes,
    };
    let data = DeepData {
        train: &train,
        val: None,
        test: Some(&test),
    };
    let model = train_deep(&[gmm(2, 4, 14)], &data, &train_params(2), None).unwrap();
    let scores = model.scores(&test).unwrap();
    let want: f64 = (0..classes - 1)
        .map(|c| {
            let col: Vec<f32> = scores.iter().skip(c).step_by(classes).copied().collect();
            let pos: Vec<bool> = test_targets
                .iter()
                .skip(c)
                .step_by(classes)
                .copied()
                .collect();
            dfk::metrics::average_precision(&col, &pos).unwrap()
        })
        .sum::<f64>()
        / (classes - 1) as f64;
    let got = model.evaluate(&test).unwrap();
    assert!((got - want).abs() < 1e-12, "{got} against {want}");
    let last = model.history.records.last().unwrap();
    assert!(last.test_metric.is_some_and(|m| m > 0.0 && m <= 1.0));
}

/// VOC "difficult" flags: a flagged image is left out of its class's AP in the trainer's
/// mAPs (and in `DeepModel::evaluate`), but trains as a positive; subsets keep the flags.
#[test]
fn difficult_images_are_left_out_of_their_class_ap() {
    let (set, targets, classes) = one_hot_multilabel();
    let images = set.len();
    // Every third positive of class 0 is difficult.
    let difficult: Vec<bool> = (0..images * classes)
        .map(|ic| ic % classes == 0 && targets[ic] && (ic / classes) % 3 == 0)
        .collect();
    let flagged = set.clone().with_difficult(difficult.clone()).unwrap();
    let data = DeepData {
        train: &flagged,
        val: None,
        test: Some(&flagged),
    };
    let model = train_deep(&[gmm(2, 4, 14)], &data, &train_params(1), None).unwrap();
    let scores = model.scores(&flagged).unwrap();
    let want: f64 = (0..classes)
        .map(|c| {
            let keep: Vec<usize> = (0..images)
                .filter(|&i| !difficult[i * classes + c])
                .collect();
            let col: Vec<f32> = keep.iter().map(|&i| scores[i * classes + c]).collect();
            let pos: Vec<bool> = keep.iter().map(|&i| targets[i * classes + c]).collect();
            dfk::metrics::average_precision(&col, &pos).unwrap()
        })
        .sum::<f64>()
        / classes as f64;
    let got = model.evaluate(&flagged).unwrap();
    assert!((got - want).abs() < 1e-12, "{got} against {want}");
    let last = model.history.records.last().unwrap();
    assert_eq!(last.test_metric, Some(got));
    // Without the flags the same model scores differently (the flagged images count).
    assert_ne!(model.evaluate(&set).unwrap(), got);
    // Subsets and splits carry the flags; flags need multi-label labels of their shape.
    let sub = flagged.subset(&[3, 0]).unwrap();
    assert_eq!(
        sub.difficult[..classes],
        difficult[3 * classes..4 * classes]
    );
    assert_eq!(sub.difficult[classes..], difficult[..classes]);
    assert!(set.clone().with_difficult(vec![true; 5]).is_err());
    // Flags all zero are no flags (the same set, the same checkpoint hash).
    let zeros = set
        .clone()
        .with_difficult(vec![false; images * classes])
        .unwrap();
    assert_eq!(zeros, set);
    let single = synthetic(48, 12, 4, 3, 13);
    assert!(single.with_difficult(difficult).is_err());
}

/// A class without training images is named by its index in both modes (per-class mode
/// solved each class as a one-column task and named it class 0).
#[test]
fn a_class_without_training_images_is_named_in_both_modes() {
    let base = synthetic(24, 8, 4, 3, 5);
    let Labels::MultiClass { labels, .. } = &base.labels else {
        unreachable!()
    };
    // Class 2 of 4 has no image: a gap in the indices.
    let gap: Vec<usize> = labels.iter().map(|&l| if l == 2 { 3 } else { l }).collect();
    let set = ImageSet::new(
        base.data.clone(),
        base.d,
        base.offsets.clone(),
        Labels::MultiClass {
            labels: gap,
            classes: 4,
        },
    )
    .unwrap();
    let data = DeepData {
        train: &set,
        val: None,
        test: None,
    };
    for mode in [GmmMode::Shared, GmmMode::PerClass] {
        let params = DeepParams {
            mode,
            ..train_params(1)
        };
        let err = train_deep(&[gmm(2, 4, 14)], &data, &params, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("class 2 has no training sample"),
            "{mode:?}: {err}"
        );
    }
}

/// Image sets whose labels or shape do not fit are errors, not panics or silent misreadings.
#[test]
fn image_sets_that_do_not_fit_the_model_are_refused() {
    // A label beyond the classes: refused when the set is made (the hold-out split and the
    // SVMs index per-class tables by it).
    let bad = ImageSet::new(
        vec![0.5; 16],
        2,
        vec![0, 2, 4, 6, 8],
        Labels::MultiClass {
            labels: vec![0, 5, 0, 1],
            classes: 2,
        },
    );
    assert!(
        matches!(&bad, Err(e) if e.to_string().contains("label of sample 1 is 5")),
        "{bad:?}"
    );

    let set = synthetic(30, 10, 4, 3, 11);
    let data = DeepData {
        train: &set,
        val: None,
        test: None,
    };
    let model = train_deep(&[gmm(2, 4, 12)], &data, &train_params(1), None).unwrap();
    assert!(model.evaluate(&set).unwrap() > 0.0);
    // The same values read as 2-d descriptors: another dimension than the model's GMM.
    let as_2d = ImageSet::new(
        set.data.clone(),
        2,
        (0..=30).map(|i| i * 20).collect(),
        set.labels.clone(),
    )
    .unwrap();
    for r in [model.scores(&as_2d).map(|_| 0.0), model.evaluate(&as_2d)] {
        assert!(
            matches!(
                &r,
                Err(Error::DimMismatch {
                    expected: 4,
                    got: 2,
                    ..
                })
            ),
            "{r:?}"
        );
    }
    // Two classes against the model's three.
    let two = synthetic(30, 10, 4, 2, 13);
    let r = model.evaluate(&two);
    assert!(
        matches!(&r, Err(Error::DimMismatch { what, expected: 3, got: 2 }) if what.contains("classes")),
        "{r:?}"
    );
}
