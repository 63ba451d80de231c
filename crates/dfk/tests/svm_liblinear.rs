//! The dual coordinate-descent SVM against liblinear (`liblinear-train -s 3 -B 1 -e 1e-6`):
//! fixtures made by `fixtures/svm/make_fixtures.py` (data as `.npy`, liblinear's weights, its
//! primal objective computed in numpy, its decision values and predictions).

use dfk::svm::{train_binary, train_one_vs_rest, ClassWeighting, Labels, SvmParams};
use serde_json::Value;

struct Fixture {
    x: Vec<f32>,
    n: usize,
    dim: usize,
    json: Value,
}

fn load(name: &str) -> Fixture {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/svm/");
    let (x, n, dim) = dfk::npy::read_f32_matrix(format!("{dir}{name}.npy")).expect("read data");
    let json = serde_json::from_str(
        &std::fs::read_to_string(format!("{dir}{name}.json")).expect("read json"),
    )
    .expect("parse json");
    Fixture { x, n, dim, json }
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn tight() -> SvmParams {
    SvmParams {
        eps: 1e-6,
        max_iter: 20_000,
        ..SvmParams::default()
    }
}

/// Checks objective, weights and predictions of one binary model against liblinear's.
fn check_against_liblinear(name: &str, fx: &Fixture, svm: &dfk::svm::BinarySvm) {
    let reference = fx.json["primal"].as_f64().unwrap();
    let rel = (svm.primal - reference).abs() / reference;
    assert!(
        rel < 1e-3,
        "{name}: primal {} vs liblinear {reference} (relative {rel:e})",
        svm.primal
    );
    // Both solutions are near the unique optimum: the objectives agree far better than 1e-3.
    assert!(rel < 1e-5, "{name}: relative primal difference {rel:e}");
    assert!(svm.dual <= svm.primal + 1e-9 * svm.primal.abs());

    let w_ref = f64s(&fx.json["w"]);
    let b_ref = fx.json["b"].as_f64().unwrap();
    let diff: f64 = svm
        .w
        .iter()
        .zip(&w_ref)
        .map(|(&a, b)| (f64::from(a) - b).powi(2))
        .sum::<f64>()
        + (f64::from(svm.b) - b_ref).powi(2);
    let norm: f64 = w_ref.iter().map(|v| v * v).sum::<f64>() + b_ref * b_ref;
    let wrel = (diff / norm).sqrt();
    assert!(
        wrel < 1e-2,
        "{name}: ‖w − w_liblinear‖/‖w_liblinear‖ = {wrel:e}"
    );

    let scores = f64s(&fx.json["scores"]);
    let mut disagree = 0;
    for (i, &s_ref) in scores.iter().enumerate() {
        let s = svm.decision(&fx.x[i * fx.dim..(i + 1) * fx.dim]);
        if (s > 0.0) != (s_ref > 0.0) {
            assert!(
                s_ref.abs() < 1e-3,
                "{name}: sample {i} predicted differently with liblinear score {s_ref}, ours {s}"
            );
            disagree += 1;
        }
    }
    eprintln!(
        "{name}: primal {} (liblinear {reference}, relative {rel:.2e}), relative w difference {wrel:.2e}, {disagree} predictions differ, {} epochs",
        svm.primal, svm.iterations
    );
    assert!(
        disagree * 100 <= fx.n,
        "{name}: {disagree} of {} predictions differ",
        fx.n
    );
}

fn binary_labels(fx: &Fixture) -> Vec<f32> {
    fx.json["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap() as f32)
        .collect()
}

#[test]
fn binary_matches_liblinear() {
    for name in ["separable", "noisy", "imbalanced"] {
        let fx = load(name);
        let y = binary_labels(&fx);
        let (cp, cn) = (
            fx.json["cost_positive"].as_f64().unwrap(),
            fx.json["cost_negative"].as_f64().unwrap(),
        );
        let cost: Vec<f64> = y.iter().map(|&v| if v > 0.0 { cp } else { cn }).collect();
        let svm = train_binary(&fx.x, fx.n, fx.dim, &y, &cost, &tight(), None).unwrap();
        assert!(svm.iterations < 20_000, "{name}: did not converge");
        check_against_liblinear(name, &fx, &svm);
    }
}

#[test]
fn balanced_weighting_matches_liblinear_class_weights() {
    // The imbalanced set was solved by liblinear with -w1 n/(2 n_pos) -w-1 n/(2 n_neg).
    let fx = load("imbalanced");
    let y = binary_labels(&fx);
    let labels = Labels::MultiClass {
        labels: y.iter().map(|&v| usize::from(v > 0.0)).collect(),
        classes: 2,
    };
    let params = SvmParams {
        c: fx.json["c"].as_f64().unwrap(),
        ..tight()
    };
    let ovr = train_one_vs_rest(
        &fx.x,
        fx.n,
        fx.dim,
        &labels,
        &params,
        ClassWeighting::Balanced,
        None,
    )
    .unwrap();
    check_against_liblinear("imbalanced (balanced one-vs-rest)", &fx, &ovr.models[1]);
    // Uniform weighting solves a different problem: its objective differs.
    let uniform = train_one_vs_rest(
        &fx.x,
        fx.n,
        fx.dim,
        &labels,
        &params,
        ClassWeighting::Uniform,
        None,
    )
    .unwrap();
    let reference = fx.json["primal"].as_f64().unwrap();
    assert!((uniform.models[1].primal - reference).abs() / reference > 1e-2);
}

#[test]
fn one_vs_rest_matches_liblinear_per_class() {
    let fx = load("multiclass");
    let labels = Labels::MultiClass {
        labels: fx.json["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect(),
        classes: 3,
    };
    let ovr = train_one_vs_rest(
        &fx.x,
        fx.n,
        fx.dim,
        &labels,
        &tight(),
        ClassWeighting::Uniform,
        None,
    )
    .unwrap();
    assert_eq!((ovr.classes, ovr.dim, ovr.multilabel), (3, fx.dim, false));
    let primals = f64s(&fx.json["primal"]);
    for (c, (m, p)) in ovr.models.iter().zip(&primals).enumerate() {
        let rel = (m.primal - p).abs() / p;
        assert!(
            rel < 1e-3,
            "class {c}: primal {} vs liblinear {p}",
            m.primal
        );
    }
    let expected: Vec<usize> = fx.json["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(ovr.predict(&fx.x, fx.n), expected);
    assert!((ovr.objective() - primals.iter().sum::<f64>()).abs() < 1e-3 * ovr.objective());
}
