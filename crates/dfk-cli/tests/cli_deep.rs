//! `dfk deep` end to end on small data: the model it writes is accepted by `dfk eval`,
//! `dfk predict` and `dfk info` and reproduces the trainer's own test accuracy, the history and
//! the evaluation report hold the objective curve, `--resume` continues exactly, and bad flags or
//! inputs fail with a message and a non-zero exit status without writing a model.

use std::path::Path;

mod common;
use common::*;

use dfk::model::ModelFile;
use dfk::npy;
use serde_json::Value;

fn json(text: &str) -> Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// A small run on the embedded Fashion-MNIST subset (its 1,000 test images are scored).
fn deep_args<'a>(model: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "--threads",
        "1",
        "--json",
        "deep",
        "--embedded",
        "--max-train",
        "300",
        "--val-fraction",
        "0.3",
        "-k",
        "2",
        "--patience",
        "0",
        "--rel-tol",
        "0",
        "--out", // as in `dfk train`; `-o` below
        model,
    ];
    a.extend_from_slice(extra);
    a
}

fn objectives(records: &Value) -> Vec<f64> {
    records
        .as_array()
        .expect("records")
        .iter()
        .map(|r| r["objective"].as_f64().expect("objective"))
        .collect()
}

/// `dfk eval` of `model` on the 1000 embedded test images gives the test accuracy the trainer
/// reported (`summary["test_best"]`) for the kept iteration.
fn eval_reproduces_the_trainer(model: &Path, summary: &Value) {
    let e = json(&ok(&[
        "--json",
        "eval",
        "--model",
        &s(model),
        "--embedded",
        "--no-cache",
    ]));
    assert_eq!(e["images"], 1000);
    let trainer = summary["test_best"].as_f64().unwrap();
    assert!(
        (e["accuracy"].as_f64().unwrap() - trainer).abs() < 1e-12,
        "eval {} vs trainer {trainer}",
        e["accuracy"]
    );
}

#[test]
fn deep_model_works_with_eval_predict_and_info() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("deep.dfk");
    let history = dir.path().join("history.json");
    let summary = json(&ok(&deep_args(
        &s(&model),
        &["--iters", "3", "--history", &s(&history)],
    )));
    assert_eq!(summary["iterations"], 3);

    // The objective curve: the history file and the model's history agree, J never rises
    // (Armijo line search) and has fallen by the end.
    let h = json(&std::fs::read_to_string(&history).unwrap());
    let j = objectives(&h["records"]);
    assert_eq!(j.len(), 4, "{j:?}");
    assert!(j.windows(2).all(|w| w[1] <= w[0]), "objective rose: {j:?}");
    assert!(j[3] < j[0], "objective did not decrease: {j:?}");
    assert_eq!(summary["objective_initial"].as_f64(), Some(j[0]));

    // The model: finite, the learned GMM moved away from the EM one, the history included.
    let m = ModelFile::load(&model).unwrap();
    assert_eq!(objectives(&m.history["deep"]["records"]), j);
    let svm = m.svm.as_ref().expect("a shared-mode model holds its SVMs");
    assert_eq!(svm.classes, 10);
    assert!(m.gmm.means().iter().all(|v| v.is_finite()));
    assert!(m.gmm.variances().iter().all(|v| v.is_finite() && *v > 0.0));
    assert!(svm.models.iter().all(|b| b.w.iter().all(|v| v.is_finite())));
    let initial: Vec<f64> = m.history["initial_gmm"]["means"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let best = summary["best_iteration"].as_u64().unwrap();
    let moved = m
        .gmm
        .means()
        .iter()
        .zip(&initial)
        .any(|(&a, &b)| a as f64 != b);
    assert_eq!(moved, best > 0, "kept iteration {best}");

    // `dfk eval` on the same test images reproduces the trainer's test accuracy at the kept
    // iteration (same pipeline, GMM and SVMs).
    eval_reproduces_the_trainer(&model, &summary);

    // `dfk predict`: one row per test image, ten finite scores, the label is their arg-max.
    let p = json(&ok(&[
        "--json",
        "predict",
        "--model",
        &s(&model),
        "--embedded",
    ]));
    let rows = p.as_array().unwrap();
    assert_eq!(rows.len(), 1000);
    for r in rows {
        let scores: Vec<f64> = r["scores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(scores.len(), 10);
        let top = scores
            .iter()
            .enumerate()
            .fold(
                (0, f64::NEG_INFINITY),
                |b, (i, &v)| if v > b.1 { (i, v) } else { b },
            );
        assert_eq!(r["label"].as_u64(), Some(top.0 as u64));
    }

    // `dfk info` describes it.
    let info = ok(&["info", &s(&model)]);
    assert!(info.contains("kind pipeline"), "{info}");
    assert!(info.contains("gmm.means"), "{info}");
    // The image data set's class names, not numbers.
    assert!(
        info.contains("classes (10): T-shirt/top, Trouser,"),
        "{info}"
    );

    // The evaluation report plots the Deep Fisher Kernel objective curve.
    let report = dir.path().join("report");
    ok(&[
        "eval",
        "--model",
        &s(&model),
        "--embedded",
        "--no-cache",
        "--report",
        &s(&report),
    ]);
    let html = std::fs::read_to_string(report.join("index.html")).unwrap();
    assert!(html.contains("Deep Fisher Kernel: SVM objective"));
    let rj = json(&std::fs::read_to_string(report.join("report.json")).unwrap());
    assert_eq!(objectives(&rj["history"]["deep"]["records"]), j);
}

#[test]
fn resume_continues_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let straight = dir.path().join("straight.dfk");
    let resumed = dir.path().join("resumed.dfk");
    let a = json(&ok(&deep_args(&s(&straight), &["--iters", "4"])));
    let first = json(&ok(&deep_args(&s(&resumed), &["--iters", "2"])));
    assert_eq!(first["iterations"], 2);
    let b = json(&ok(&deep_args(&s(&resumed), &["--iters", "4", "--resume"])));
    assert_eq!(b["iterations"], 4);
    for key in [
        "objective_initial",
        "objective_best",
        "best_iteration",
        "val_best",
        "test_best",
    ] {
        assert_eq!(a[key], b[key], "{key}");
    }
    let (ma, mb) = (
        ModelFile::load(&straight).unwrap(),
        ModelFile::load(&resumed).unwrap(),
    );
    assert_eq!(ma.gmm, mb.gmm);
    assert_eq!(ma.svm, mb.svm);
    assert_eq!(
        objectives(&ma.history["deep"]["records"]),
        objectives(&mb.history["deep"]["records"])
    );
    // Other settings cannot resume this checkpoint.
    let other = dir.path().join("other.dfk");
    std::fs::copy(
        dir.path().join("resumed.dfk.ckpt"),
        dir.path().join("other.dfk.ckpt"),
    )
    .unwrap();
    fails_leaving_nothing(
        &deep_args(&s(&other), &["--iters", "5", "--resume", "-C", "10"]),
        1,
        "other settings",
        &other,
    );
}

/// `--posterior-cache-mb 0` makes the backward pass recompute the posteriors that the default
/// run stores: the same training up to the gradient's rounding.
#[test]
fn stored_and_recomputed_posteriors_train_alike() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.dfk"), dir.path().join("b.dfk"));
    let stored = json(&ok(&deep_args(&s(&a), &["--iters", "3"])));
    let recomputed = json(&ok(&deep_args(
        &s(&b),
        &["--iters", "3", "--posterior-cache-mb", "0"],
    )));
    assert_eq!(stored["objective_initial"], recomputed["objective_initial"]);
    let (ma, mb) = (ModelFile::load(&a).unwrap(), ModelFile::load(&b).unwrap());
    let (ja, jb) = (
        objectives(&ma.history["deep"]["records"]),
        objectives(&mb.history["deep"]["records"]),
    );
    assert_eq!(ja.len(), jb.len());
    for (x, y) in ja.iter().zip(&jb) {
        assert!(
            (x - y).abs() <= 1e-6 * y.abs(),
            "objectives {ja:?} against {jb:?}"
        );
    }
}

#[test]
fn bad_flags_and_inputs_fail_without_writing_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.dfk");
    let m = s(&model);
    let emb = |extra: &[&str], code: i32, needle: &str| {
        let mut a = vec!["deep", "--embedded", "--max-train", "100", "-o", &m];
        a.extend_from_slice(extra);
        fails_leaving_nothing(&a, code, needle, &model);
    };
    emb(&["--groups", "means,colour"], 2, "--groups");
    emb(&["--val-fraction", "1.5"], 2, "--val-fraction");
    emb(&["--mode", "tree"], 2, "--mode");
    emb(&["--step", "5"], 1, "initial_step");
    emb(&["-C", "0"], 1, "svm C");
    emb(&["--variance-floor", "0"], 1, "variance_floor");
    emb(&["-k", "0"], 2, "-k");
    emb(&["--data", "/nonexistent"], 2, "exactly one of");
    emb(&["--gmm", "/nonexistent/g.dfk"], 1, "/nonexistent/g.dfk");
    fails_leaving_nothing(&["deep", "-o", &m], 2, "exactly one of", &model);

    // Descriptor files: a NaN, offsets that do not cover the rows, a label per image missing.
    let x = dir.path().join("x.npy");
    let o = dir.path().join("o.npy");
    let y = dir.path().join("y.npy");
    let mut data: Vec<f32> = (0..40 * 3).map(|i| ((i * 7) % 11) as f32 / 11.0).collect();
    npy::write_f32_matrix(&x, &data, 40, 3).unwrap();
    npy::write_i64_vector(&o, &(0..=10).map(|i| i * 4).collect::<Vec<_>>()).unwrap();
    npy::write_i64_vector(&y, &(0..9).map(|i| i % 2).collect::<Vec<_>>()).unwrap();
    let desc = [
        "deep",
        "--descriptors",
        &s(&x),
        "--offsets",
        &s(&o),
        "--labels",
        &s(&y),
        "-k",
        "2",
        "-o",
        &m,
    ];
    fails_leaving_nothing(&desc, 1, "labels", &model);
    npy::write_i64_vector(&y, &(0..10).map(|i| i % 2).collect::<Vec<_>>()).unwrap();
    npy::write_i64_vector(&o, &(0..=9).map(|i| i * 4).collect::<Vec<_>>()).unwrap();
    fails_leaving_nothing(&desc, 1, "o.npy", &model);
    npy::write_i64_vector(&o, &(0..=10).map(|i| i * 4).collect::<Vec<_>>()).unwrap();
    data[17] = f32::NAN;
    npy::write_f32_matrix(&x, &data, 40, 3).unwrap();
    fails_leaving_nothing(&desc, 1, "x.npy", &model);
    assert!(!dir.path().join("m.dfk.ckpt").exists());
}

/// Per-class mode (one GMM per class): the model file holds the ten GMMs next to the SVMs, and
/// `dfk eval`/`dfk predict` score class c under class c's GMM, reproducing the trainer.
#[test]
fn per_class_model_works_with_eval_and_predict() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("pc.dfk");
    let summary = json(&ok(&deep_args(
        &s(&model),
        &["--iters", "2", "--mode", "per-class"],
    )));
    let m = ModelFile::load(&model).unwrap();
    assert_eq!(m.class_gmms.len(), 10);
    assert!(m.class_gmms.iter().any(|g| g != &m.gmm), "no GMM moved");
    eval_reproduces_the_trainer(&model, &summary);
    let p = json(&ok(&[
        "--json",
        "predict",
        "--model",
        &s(&model),
        "--embedded",
    ]));
    assert_eq!(p.as_array().unwrap().len(), 1000);
    let info = ok(&["info", &s(&model)]);
    assert!(info.contains("class_gmm.means"), "{info}");
}
