//! Properties of the SVM solver that hold for any data: weak duality and a gap that shrinks with
//! the tolerance, warm starts, reproducibility, thread-count independence, one-vs-rest on toy
//! problems, and every bad-input error.

use dfk::svm::{
    train_binary, train_one_vs_rest, train_one_vs_rest_with_costs, BinarySvm, ClassCost,
    ClassWeighting, Labels, OneVsRest, SvmParams,
};
use dfk::Error;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `n × dim` unit-norm rows; labels from a random hyperplane with 10 % flipped.
fn noisy_binary(n: usize, dim: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let w: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect();
    let mut x = Vec::with_capacity(n * dim);
    let mut y = Vec::with_capacity(n);
    for _ in 0..n {
        let row: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect();
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        let s: f32 = row.iter().zip(&w).map(|(a, b)| a * b).sum();
        let flip = rng.random_range(0.0..1.0) < 0.1;
        y.push(if (s > 0.0) != flip { 1.0 } else { -1.0 });
        x.extend(row.iter().map(|v| v / norm));
    }
    (x, y)
}

/// Three Gaussian blobs in `dim` dimensions, `per` samples each.
fn blobs(per: usize, dim: usize, seed: u64) -> (Vec<f32>, Vec<usize>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let centres: Vec<f32> = (0..3 * dim).map(|_| rng.random_range(-2.0..2.0)).collect();
    let mut x = Vec::new();
    let mut labels = Vec::new();
    for i in 0..3 * per {
        let c = i % 3;
        labels.push(c);
        x.extend((0..dim).map(|j| centres[c * dim + j] + rng.random_range(-0.7..0.7)));
    }
    (x, labels)
}

fn train(x: &[f32], y: &[f32], dim: usize, c: f64, params: &SvmParams) -> BinarySvm {
    let cost = vec![c; y.len()];
    train_binary(x, y.len(), dim, y, &cost, params, None).unwrap()
}

#[test]
fn weak_duality_and_gap_shrinks_with_eps() {
    let (x, y) = noisy_binary(300, 40, 1);
    let mut gaps = Vec::new();
    for eps in [0.5, 0.05, 1e-3, 1e-5] {
        let params = SvmParams {
            eps,
            max_iter: 10_000,
            ..SvmParams::default()
        };
        let m = train(&x, &y, 40, 2.0, &params);
        assert!(
            m.dual <= m.primal,
            "eps {eps}: dual {} > primal {}",
            m.dual,
            m.primal
        );
        assert!(m.alpha.iter().all(|&a| (0.0..=2.0).contains(&a)));
        gaps.push(m.gap() / m.primal);
    }
    assert!(
        gaps.windows(2).all(|g| g[1] <= g[0]),
        "relative gaps {gaps:?}"
    );
    assert!(
        gaps[3] < 1e-4 && gaps[0] > 10.0 * gaps[3],
        "relative gaps {gaps:?}"
    );
}

#[test]
fn warm_start_from_the_optimum_stops_within_two_epochs() {
    let (x, y) = noisy_binary(250, 30, 2);
    let params = SvmParams {
        eps: 1e-3,
        ..SvmParams::default()
    };
    let cold = train(&x, &y, 30, 1.0, &params);
    assert!(cold.iterations > 2);
    let cost = vec![1.0; y.len()];
    let warm = train_binary(&x, y.len(), 30, &y, &cost, &params, Some(&cold.alpha)).unwrap();
    assert!(warm.iterations <= 2, "{} epochs", warm.iterations);
    assert!((warm.primal - cold.primal).abs() < 1e-3 * cold.primal);
    // Warm start from another problem's solution (perturbed data) still reaches the optimum.
    let x2: Vec<f32> = x
        .iter()
        .enumerate()
        .map(|(i, v)| v * (1.0 + 0.01 * ((i % 7) as f32 - 3.0)))
        .collect();
    let cold2 = train(&x2, &y, 30, 1.0, &params);
    let warm2 = train_binary(&x2, y.len(), 30, &y, &cost, &params, Some(&cold.alpha)).unwrap();
    assert!((warm2.primal - cold2.primal).abs() < 1e-2 * cold2.primal);
    assert!(warm2.iterations < cold2.iterations);
    // Warm α above a reduced C is clipped to the new bound.
    let small = vec![0.01; y.len()];
    let clipped = train_binary(&x, y.len(), 30, &y, &small, &params, Some(&cold.alpha)).unwrap();
    assert!(clipped.alpha.iter().all(|&a| (0.0..=0.01).contains(&a)));
}

#[test]
fn same_seed_same_model_other_seed_same_optimum() {
    let (x, y) = noisy_binary(200, 25, 3);
    let params = SvmParams {
        eps: 1e-4,
        seed: 42,
        ..SvmParams::default()
    };
    let a = train(&x, &y, 25, 1.0, &params);
    let b = train(&x, &y, 25, 1.0, &params);
    assert_eq!(a, b);
    let c = train(&x, &y, 25, 1.0, &SvmParams { seed: 7, ..params });
    assert_ne!(a.alpha, c.alpha);
    assert!((a.primal - c.primal).abs() < 1e-3 * a.primal);
}

#[test]
fn shrinking_and_bias_options() {
    let (x, y) = noisy_binary(200, 20, 4);
    let params = SvmParams {
        eps: 1e-5,
        max_iter: 10_000,
        ..SvmParams::default()
    };
    let with = train(&x, &y, 20, 1.0, &params);
    let without = train(
        &x,
        &y,
        20,
        1.0,
        &SvmParams {
            shrinking: false,
            ..params
        },
    );
    assert!((with.primal - without.primal).abs() < 1e-4 * with.primal);
    let no_bias = train(
        &x,
        &y,
        20,
        1.0,
        &SvmParams {
            bias: 0.0,
            ..params
        },
    );
    assert_eq!(no_bias.b, 0.0);
    // Without the bias feature the model class is smaller: the optimum cannot be lower.
    assert!(no_bias.primal >= with.primal * (1.0 - 1e-4));
    // With bias value B the intercept is w_b·B and w_b² enters the regulariser.
    let big = train(
        &x,
        &y,
        20,
        1.0,
        &SvmParams {
            bias: 10.0,
            ..params
        },
    );
    let reg = 0.5 * big.w.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>()
        + 0.5 * (f64::from(big.b) / 10.0).powi(2);
    let loss: f64 = (0..y.len())
        .map(|i| {
            (1.0 - f64::from(y[i]) * f64::from(big.decision(&x[i * 20..(i + 1) * 20]))).max(0.0)
        })
        .sum();
    assert!((reg + loss - big.primal).abs() < 1e-4 * big.primal);
}

#[test]
fn decision_is_the_affine_score() {
    let (x, y) = noisy_binary(100, 10, 5);
    let m = train(&x, &y, 10, 1.0, &SvmParams::default());
    let row = &x[30..40];
    let expect: f32 = m.w.iter().zip(row).map(|(a, b)| a * b).sum::<f32>() + m.b;
    assert!((m.decision(row) - expect).abs() < 1e-5);
}

#[test]
fn one_vs_rest_three_blobs() {
    let (x, labels) = blobs(60, 8, 6);
    let n = labels.len();
    let l = Labels::MultiClass {
        labels: labels.clone(),
        classes: 3,
    };
    let ovr = train_one_vs_rest(
        &x,
        n,
        8,
        &l,
        &SvmParams::default(),
        ClassWeighting::Uniform,
        None,
    )
    .unwrap();
    let pred = ovr.predict(&x, n);
    let acc = dfk::metrics::accuracy(&pred, &labels).unwrap();
    assert!(acc > 0.95, "training accuracy {acc}");
    let scores = ovr.scores(&x, n);
    assert_eq!(scores.len(), n * 3);
    for i in 0..n {
        for c in 0..3 {
            let d = ovr.models[c].decision(&x[i * 8..(i + 1) * 8]);
            assert!((scores[i * 3 + c] - d).abs() < 1e-4);
        }
    }
    assert!((ovr.objective() - ovr.models.iter().map(|m| m.primal).sum::<f64>()).abs() < 1e-12);
}

#[test]
fn one_vs_rest_warm_start_and_thread_independence() {
    let (x, labels) = blobs(50, 6, 7);
    let n = labels.len();
    let l = Labels::MultiClass { labels, classes: 3 };
    let params = SvmParams {
        eps: 1e-3,
        c: 5.0,
        max_iter: 10_000,
        ..SvmParams::default()
    };
    let run = |threads: usize, params: &SvmParams, warm: Option<&OneVsRest>| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| train_one_vs_rest(&x, n, 6, &l, params, ClassWeighting::Balanced, warm))
            .unwrap()
    };
    // Classes are solved in groups sized to the thread count: another thread count may visit
    // the samples in another order, so models agree to the solver tolerance, not bit for bit;
    // the same thread count reproduces them exactly.
    let one = run(1, &params, None);
    let two = run(2, &params, None);
    assert_eq!(two, run(2, &params, None));
    for (a, b) in one.models.iter().zip(&two.models) {
        assert!(
            (a.primal - b.primal).abs() < 1e-2 * a.primal,
            "{} vs {}",
            a.primal,
            b.primal
        );
    }
    // From the optimal α (a tight solve) a solve at the working tolerance stops at once.
    let optimum = run(
        2,
        &SvmParams {
            eps: 1e-7,
            max_iter: 100_000,
            ..params
        },
        None,
    );
    let warm = run(2, &params, Some(&optimum));
    for (w, c) in warm.models.iter().zip(&optimum.models) {
        assert!(w.iterations <= 2, "{} epochs", w.iterations);
        assert!((w.primal - c.primal).abs() < 1e-6 * c.primal);
    }
    // From a solution at the same tolerance it needs a small fraction of the cold epochs.
    let again = run(2, &params, Some(&one));
    for ((w, c), o) in again.models.iter().zip(&one.models).zip(&optimum.models) {
        assert!(
            w.iterations <= c.iterations / 10 + 2,
            "{} epochs (cold: {})",
            w.iterations,
            c.iterations
        );
        assert!((w.primal - o.primal).abs() < 1e-2 * o.primal);
    }
}

#[test]
fn multilabel_scores_shape_and_per_class_costs() {
    let (x, classes_of) = blobs(40, 5, 8);
    let n = classes_of.len();
    // Class 0: blob 0; class 1: blobs 1 or 2; class 2: blob 2 (two labels per sample there).
    let mut targets = Vec::new();
    for &c in &classes_of {
        targets.extend([c == 0, c >= 1, c == 2]);
    }
    let l = Labels::MultiLabel {
        targets,
        classes: 3,
    };
    let ovr = train_one_vs_rest(
        &x,
        n,
        5,
        &l,
        &SvmParams::default(),
        ClassWeighting::Uniform,
        None,
    )
    .unwrap();
    assert!(ovr.multilabel);
    assert_eq!((ovr.classes, ovr.dim, ovr.models.len()), (3, 5, 3));
    let scores = ovr.scores(&x, n);
    assert_eq!(scores.len(), n * 3);
    let aps = dfk::metrics::per_class_ap(&scores, &l, false).unwrap();
    assert!(aps.iter().all(|&a| a > 0.95), "APs {aps:?}");
    // Explicit per-class costs: class 1 with a tiny C is a different (more regularised) model.
    let costs = [
        ClassCost {
            positive: 1.0,
            negative: 1.0,
        },
        ClassCost {
            positive: 1e-3,
            negative: 1e-3,
        },
        ClassCost {
            positive: 1.0,
            negative: 1.0,
        },
    ];
    let custom =
        train_one_vs_rest_with_costs(&x, n, 5, &l, &SvmParams::default(), &costs, None).unwrap();
    assert_eq!(custom.models[0], ovr.models[0]);
    assert!(custom.models[1].alpha.iter().all(|&a| a <= 1e-3));
    let norm = |m: &BinarySvm| m.w.iter().map(|v| v * v).sum::<f32>();
    assert!(norm(&custom.models[1]) < norm(&ovr.models[1]));
}

fn err<T: std::fmt::Debug>(r: dfk::Result<T>) -> Error {
    r.expect_err("expected an error")
}

#[test]
fn binary_bad_inputs() {
    let (x, y) = noisy_binary(20, 4, 9);
    let cost = vec![1.0; 20];
    let p = SvmParams::default();
    let t = |x: &[f32], n: usize, y: &[f32], cost: &[f64], p: &SvmParams, w: Option<&[f64]>| {
        train_binary(x, n, 4, y, cost, p, w)
    };
    assert!(matches!(
        err(t(&[], 0, &[], &[], &p, None)),
        Error::Empty { .. }
    ));
    assert!(matches!(
        err(t(&x[..79], 20, &y, &cost, &p, None)),
        Error::DimMismatch { .. }
    ));
    assert!(matches!(
        err(t(&x, 20, &y[..19], &cost, &p, None)),
        Error::DimMismatch { .. }
    ));
    assert!(matches!(
        err(t(&x, 20, &y, &cost[..19], &p, None)),
        Error::DimMismatch { .. }
    ));
    let mut bad_x = x.clone();
    bad_x[13] = f32::NAN;
    assert!(matches!(
        err(t(&bad_x, 20, &y, &cost, &p, None)),
        Error::NonFinite { index: 13, .. }
    ));
    bad_x[13] = f32::INFINITY;
    assert!(matches!(
        err(t(&bad_x, 20, &y, &cost, &p, None)),
        Error::NonFinite { .. }
    ));
    let mut bad_y = y.clone();
    bad_y[3] = 0.0;
    let e = err(t(&x, 20, &bad_y, &cost, &p, None));
    assert!(
        matches!(e, Error::Invalid(ref m) if m.contains("y[3]")),
        "{e}"
    );
    let ones = vec![1.0f32; 20];
    let e = err(t(&x, 20, &ones, &cost, &p, None));
    assert!(
        matches!(e, Error::Invalid(ref m) if m.contains("negative")),
        "{e}"
    );
    let mut bad_cost = cost.clone();
    bad_cost[2] = 0.0;
    assert!(matches!(
        err(t(&x, 20, &y, &bad_cost, &p, None)),
        Error::InvalidParameter { .. }
    ));
    bad_cost[2] = f64::NAN;
    assert!(matches!(
        err(t(&x, 20, &y, &bad_cost, &p, None)),
        Error::InvalidParameter { .. }
    ));
    let warm = vec![0.0; 19];
    assert!(matches!(
        err(t(&x, 20, &y, &cost, &p, Some(&warm))),
        Error::DimMismatch { .. }
    ));
    let mut warm = vec![0.0; 20];
    warm[5] = f64::NAN;
    assert!(matches!(
        err(t(&x, 20, &y, &cost, &p, Some(&warm))),
        Error::NonFinite { index: 5, .. }
    ));
    for bad in [
        SvmParams { c: 0.0, ..p },
        SvmParams { c: f64::NAN, ..p },
        SvmParams { eps: 0.0, ..p },
        SvmParams {
            eps: f64::INFINITY,
            ..p
        },
        SvmParams { max_iter: 0, ..p },
        SvmParams { bias: -1.0, ..p },
        SvmParams {
            bias: f32::NAN,
            ..p
        },
    ] {
        assert!(
            matches!(
                err(t(&x, 20, &y, &cost, &bad, None)),
                Error::InvalidParameter { .. }
            ),
            "{bad:?}"
        );
    }
}

#[test]
fn one_vs_rest_bad_inputs() {
    let (x, labels) = blobs(10, 4, 10);
    let n = labels.len();
    let p = SvmParams::default();
    let u = ClassWeighting::Uniform;
    let l = Labels::MultiClass {
        labels: labels.clone(),
        classes: 3,
    };
    assert!(matches!(
        err(train_one_vs_rest(&x, n - 1, 4, &l, &p, u, None)),
        Error::DimMismatch { .. }
    ));
    let short = Labels::MultiClass {
        labels: labels[..n - 1].to_vec(),
        classes: 3,
    };
    assert!(matches!(
        err(train_one_vs_rest(&x, n, 4, &short, &p, u, None)),
        Error::DimMismatch { .. }
    ));
    let out_of_range = Labels::MultiClass {
        labels: vec![3; n],
        classes: 3,
    };
    assert!(matches!(
        err(train_one_vs_rest(&x, n, 4, &out_of_range, &p, u, None)),
        Error::Invalid(_)
    ));
    // A class without samples cannot be trained against the rest.
    let missing = Labels::MultiClass {
        labels: labels.iter().map(|&c| c.min(1)).collect(),
        classes: 3,
    };
    let e = err(train_one_vs_rest(&x, n, 4, &missing, &p, u, None));
    assert!(
        matches!(e, Error::Invalid(ref m) if m.contains("class 2")),
        "{e}"
    );
    let no_classes = Labels::MultiLabel {
        targets: vec![],
        classes: 0,
    };
    assert!(matches!(
        err(train_one_vs_rest(&x, n, 4, &no_classes, &p, u, None)),
        Error::InvalidParameter { .. }
    ));
    let ragged = Labels::MultiLabel {
        targets: vec![true; 7],
        classes: 2,
    };
    assert!(matches!(
        err(train_one_vs_rest(&x, n, 4, &ragged, &p, u, None)),
        Error::Invalid(_)
    ));
    let empty = Labels::MultiClass {
        labels: vec![],
        classes: 2,
    };
    assert!(matches!(
        err(train_one_vs_rest(&[], 0, 4, &empty, &p, u, None)),
        Error::Empty { .. }
    ));
    let mut nan = x.clone();
    nan[0] = f32::NAN;
    assert!(matches!(
        err(train_one_vs_rest(&nan, n, 4, &l, &p, u, None)),
        Error::NonFinite { .. }
    ));
    assert!(matches!(
        err(train_one_vs_rest(
            &x,
            n,
            4,
            &l,
            &SvmParams { c: -1.0, ..p },
            u,
            None
        )),
        Error::InvalidParameter { .. }
    ));
    let costs = [ClassCost {
        positive: 1.0,
        negative: 1.0,
    }; 2];
    assert!(matches!(
        err(train_one_vs_rest_with_costs(&x, n, 4, &l, &p, &costs, None)),
        Error::DimMismatch { .. }
    ));
    let costs = [ClassCost {
        positive: 1.0,
        negative: 0.0,
    }; 3];
    assert!(matches!(
        err(train_one_vs_rest_with_costs(&x, n, 4, &l, &p, &costs, None)),
        Error::InvalidParameter { .. }
    ));

    let ovr = train_one_vs_rest(&x, n, 4, &l, &p, u, None).unwrap();
    // Warm start from a model of another training set or class count.
    let half = Labels::MultiClass {
        labels: labels[..15].to_vec(),
        classes: 3,
    };
    let other = train_one_vs_rest(&x[..60], 15, 4, &half, &p, u, None).unwrap();
    assert!(matches!(
        err(train_one_vs_rest(&x, n, 4, &l, &p, u, Some(&other))),
        Error::DimMismatch { .. }
    ));
    let two = Labels::MultiClass {
        labels: labels.iter().map(|&c| c.min(1)).collect(),
        classes: 2,
    };
    assert!(matches!(
        err(train_one_vs_rest(&x, n, 4, &two, &p, u, Some(&ovr))),
        Error::DimMismatch { .. }
    ));
    // Scoring: wrong sizes and inconsistent models.
    assert!(matches!(
        err(ovr.try_scores(&x[..7], 2)),
        Error::DimMismatch { .. }
    ));
    let mut broken = ovr.clone();
    broken.models[1].w.pop();
    assert!(matches!(
        err(broken.try_scores(&x, n)),
        Error::DimMismatch { .. }
    ));
    assert!(matches!(err(broken.validate()), Error::DimMismatch { .. }));
    let mut nan_model = ovr.clone();
    nan_model.models[0].w[0] = f32::NAN;
    assert!(matches!(err(nan_model.validate()), Error::NonFinite { .. }));
    assert_eq!(ovr.try_scores(&[], 0).unwrap(), Vec::<f32>::new());
}

/// Labels without classes have no per-class counts or costs (and training refuses them),
/// rather than panicking.
#[test]
fn labels_without_classes_have_no_counts() {
    let labels = Labels::MultiLabel {
        targets: vec![],
        classes: 0,
    };
    assert!(labels.positives_per_class().is_empty());
    assert!(dfk::svm::ClassWeighting::Balanced
        .costs(1.0, &labels)
        .is_empty());
    assert!(labels.validate().is_err());
}
