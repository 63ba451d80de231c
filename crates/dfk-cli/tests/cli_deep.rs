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
    // With a line on the deep training: iteration 0 against the kept one.
    let kept = h["best_iteration"].as_u64().unwrap();
    assert!(
        info.contains(&format!(
            "deep: {} iterations, kept iteration {kept} (",
            j.len() - 1
        )) && info.contains("; objective ")
            && info.contains("; test_accuracy "),
        "{info}"
    );
    // Its checkpoint is named as such when given as a model.
    fails(
        &["info", &s(&dir_file(&model, "ckpt"))],
        1,
        "it looks like a `dfk deep` checkpoint (JSON)",
    );
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
    let out = dfk(&deep_args(&s(&resumed), &["--iters", "4", "--resume"]));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    // EM's GMM comes from the checkpoint, which records EM's settings.
    assert!(
        err.contains("taken from the checkpoint") && err.contains("EM is not run again"),
        "{err}"
    );
    let b = json(&String::from_utf8_lossy(&out.stdout));
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
    // The settings are stored as JSON (they were Rust debug strings), with the command line.
    let settings = &ma.history["deep_settings"];
    assert!(settings["fisher"]["improved"].is_boolean(), "{settings}");
    let line = settings["command_line"].as_array().unwrap();
    assert!(line.iter().any(|a| a == "deep") && line.iter().any(|a| a == "--iters"));
    assert_eq!(
        objectives(&ma.history["deep"]["records"]),
        objectives(&mb.history["deep"]["records"])
    );
    // Another thread count continues the run, warning that it is not bit for bit; the
    // checkpoint then records the new count.
    let resumed_path = s(&resumed);
    let resume_with_two = |iters: &'static str| {
        let mut args = deep_args(&resumed_path, &["--iters", iters, "--resume"]);
        assert_eq!(args[..2], ["--threads", "1"]);
        args[1] = "2";
        let out = dfk(&args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{err}");
        assert_eq!(
            json(&String::from_utf8_lossy(&out.stdout))["iterations"],
            iters.parse::<u64>().unwrap()
        );
        err
    };
    let err = resume_with_two("5");
    assert!(err.contains("checkpoint was written with 1"), "{err}");
    let err = resume_with_two("6");
    assert!(!err.contains("worker threads"), "{err}");
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
    // Other EM settings are named before EM would run, and nothing is written.
    for (flags, needle) in [
        (
            &["--gmm-iters", "7"][..],
            "--gmm-iters: \"100\" in the checkpoint, \"7\" given",
        ),
        (
            &["--seed", "5"][..],
            "--seed: \"0\" in the checkpoint, \"5\" given",
        ),
    ] {
        let mut args: Vec<String> = deep_args(&s(&other), &["--iters", "5", "--resume"])
            .into_iter()
            .map(String::from)
            .collect();
        args.extend(flags.iter().map(|f| f.to_string()));
        resume_fails(
            &args,
            &other,
            &["initial GMM was made with other settings", needle],
        );
    }
    // A value changed by hand is caught by the checksum.
    let mut c = json(&std::fs::read_to_string(dir_file(&other, "ckpt")).unwrap());
    let w = &mut c["groups"][0]["svm"]["models"][0]["w"][0];
    *w = (w.as_f64().unwrap() + 0.25).into();
    std::fs::write(dir_file(&other, "ckpt"), serde_json::to_vec(&c).unwrap()).unwrap();
    let args: Vec<String> = deep_args(&s(&other), &["--iters", "5", "--resume"])
        .into_iter()
        .map(String::from)
        .collect();
    resume_fails(
        &args,
        &other,
        &["does not match its checksum", "changed or damaged"],
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
    emb(&["--step", "5"], 2, "--step 5");
    emb(&["-C", "0"], 2, "-C 0");
    emb(&["--variance-floor", "0"], 2, "--variance-floor 0");
    emb(&["--svm-eps", "0"], 2, "--svm-eps 0");
    emb(&["-k", "0"], 2, "-k");
    // The two posterior thresholds (encoder, EM) and the EM settings are named by their flags,
    // before any work (both used to say "posterior_threshold", EM's only after extraction).
    emb(
        &["--posterior-threshold", "1"],
        2,
        "--posterior-threshold 1: expected a value in [0, 1)",
    );
    emb(
        &["--gmm-posterior-threshold", "1"],
        2,
        "--gmm-posterior-threshold 1: expected a value in [0, 1)",
    );
    emb(&["--gmm-restarts", "0"], 2, "--gmm-restarts 0");
    // Subsets that leave nothing name the flag to change (they named neither, exit 1).
    let small = |extra: &[&str], needle: &str| {
        let mut a = vec![
            "--threads",
            "2",
            "deep",
            "--embedded",
            "--max-test",
            "20",
            "-k",
            "2",
            "--iters",
            "1",
            "-o",
            &m,
        ];
        a.extend_from_slice(extra);
        fails_leaving_nothing(&a, 2, needle, &model);
    };
    small(&["--max-train", "0"], "--max-train 0: expected at least 1");
    // Every class keeps one image (10 in all), and then none is left to validate on.
    small(
        &["--max-train", "3", "--val-fraction", "0.5"],
        "--val-fraction 0.5: a validation fraction of 0.5 of 10 images",
    );
    small(
        &["--max-train", "12", "--val-fraction", "0.9"],
        "--val-fraction 0.9: a validation fraction of 0.9",
    );
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
    fails_leaving_nothing(&desc, 1, "y.npy: 9 labels for the 10 images of", &model);
    npy::write_i64_vector(&y, &(0..10).map(|i| i % 2).collect::<Vec<_>>()).unwrap();
    // Test descriptors of another dimension: named by their file.
    let tx = dir.path().join("tx.npy");
    npy::write_f32_matrix(&tx, &vec![0.5; 40 * 4], 40, 4).unwrap();
    let mut with_test = desc.to_vec();
    let (tx_s, o_s, y_s) = (s(&tx), s(&o), s(&y));
    with_test.extend([
        "--test-descriptors",
        &tx_s,
        "--test-offsets",
        &o_s,
        "--test-labels",
        &y_s,
    ]);
    fails_leaving_nothing(
        &with_test,
        1,
        "tx.npy: descriptors of dimension 4, but those of --descriptors",
        &model,
    );
    let mut max_test = desc.to_vec();
    max_test.extend(["--max-test", "5"]);
    fails_leaving_nothing(&max_test, 2, "--max-test applies to a test set", &model);
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
    // `dfk fisher` encodes with one GMM: a per-class model has ten learned ones.
    let x = dir.path().join("x.npy");
    let fv = dir.path().join("fv.npy");
    dfk::npy::write_f32_matrix(&x, &vec![0.1; 4 * m.gmm.d()], 4, m.gmm.d()).unwrap();
    fails_leaving_nothing(
        &[
            "fisher",
            "--gmm",
            &s(&model),
            "--descriptors",
            &s(&x),
            "--out",
            &s(&fv),
        ],
        1,
        "a per-class deep model holds one learned GMM per class (10 of them)",
        &fv,
    );
    // `--gmm` with a per-class model continues from its learned GMMs in per-class mode (it
    // started from the model's initial GMM), and is a usage error in shared mode.
    let again = dir.path().join("again.dfk");
    let args = |extra: &[&str]| {
        let mut a = vec![
            "--threads",
            "1",
            "-q",
            "deep",
            "--embedded",
            "--max-train",
            "300",
        ];
        a.extend_from_slice(&["--val-fraction", "0.3", "--gmm", model.to_str().unwrap()]);
        a.extend_from_slice(&["--iters", "0", "-o", again.to_str().unwrap()]);
        a.extend_from_slice(extra);
        a.iter().map(|v| v.to_string()).collect::<Vec<_>>()
    };
    let shared = args(&[]);
    let shared: Vec<&str> = shared.iter().map(String::as_str).collect();
    fails_leaving_nothing(&shared, 2, "--mode per-class", &again);
    let per_class = args(&["--mode", "per-class"]);
    ok(&per_class.iter().map(String::as_str).collect::<Vec<_>>());
    let continued = ModelFile::load(&again).unwrap();
    assert_eq!(continued.class_gmms.len(), 10);
    for (a, b) in continued.class_gmms.iter().zip(&m.class_gmms) {
        let worst = a
            .means()
            .iter()
            .zip(b.means())
            .fold(0f32, |w, (x, y)| w.max((x - y).abs()));
        assert!(
            worst < 1e-5,
            "the continued run did not start from the learned GMMs"
        );
    }
}

/// Tiny descriptor files in `dir`: 12 images of 5 descriptors in 3 dimensions (pseudo-random),
/// labels `i % classes`. Returns the paths of X, offsets and labels.
fn tiny_descriptors(dir: &Path, classes: i64) -> (String, String, String) {
    let (x, o, y) = (dir.join("x.npy"), dir.join("o.npy"), dir.join("y.npy"));
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let data: Vec<f32> = (0..12 * 5 * 3)
        .map(|i| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 40) as f32 / (1u64 << 24) as f32 + 0.3 * ((i / 15) % 3) as f32
        })
        .collect();
    npy::write_f32_matrix(&x, &data, 60, 3).unwrap();
    npy::write_i64_vector(&o, &(0..=12).map(|i| i * 5).collect::<Vec<_>>()).unwrap();
    npy::write_i64_vector(&y, &(0..12).map(|i| i % classes).collect::<Vec<_>>()).unwrap();
    (s(&x), s(&o), s(&y))
}

/// An `images × classes` int64 matrix (.npy), for `--multilabel`.
fn write_i64_matrix(path: &Path, data: &[i64], rows: u64, cols: u64) {
    use npyz::WriterBuilder;
    let file = std::fs::File::create(path).unwrap();
    let mut w = npyz::WriteOptions::<i64>::new()
        .default_dtype()
        .shape(&[rows, cols])
        .writer(std::io::BufWriter::new(file))
        .begin_nd()
        .unwrap();
    w.extend(data.iter().copied()).unwrap();
    w.finish().unwrap();
}

/// `dfk deep` on the tiny descriptor files, output `model`: `extra`, then the defaults of this
/// file's tests for the flags that `extra` does not give (K = 2, half the images for
/// validation, no early stopping).
fn tiny_args(files: &(String, String, String), model: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "--threads",
        "1",
        "-q",
        "deep",
        "--descriptors",
        &files.0,
        "--offsets",
        &files.1,
        "-o",
        &s(model),
    ]
    .iter()
    .chain(extra)
    .map(|v| v.to_string())
    .collect();
    for (flag, value) in [
        ("--labels", files.2.as_str()),
        ("-k", "2"),
        ("--val-fraction", "0.5"),
        ("--patience", "0"),
        ("--rel-tol", "0"),
    ] {
        if !extra.contains(&flag) {
            a.extend([flag.to_string(), value.to_string()]);
        }
    }
    a
}

/// Resuming from the checkpoint `ckpt` (written as `<model>.ckpt`) must fail with exit status
/// 1 and an error that names the checkpoint and every one of `needles`, without a panic, and
/// write nothing: `model` keeps its contents (or stays absent) and so does the checkpoint.
fn resume_fails(args: &[String], model: &Path, needles: &[&str]) {
    let ckpt = dir_file(model, "ckpt");
    let before_ckpt = std::fs::read(&ckpt).unwrap();
    let before_model = std::fs::read(model).ok();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = dfk(&a);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "dfk {a:?}: {err}");
    assert!(!err.contains("panicked"), "dfk {a:?} panicked: {err}");
    let name = ckpt.file_name().unwrap().to_string_lossy().into_owned();
    for needle in std::iter::once(name.as_str()).chain(needles.iter().copied()) {
        assert!(err.contains(needle), "dfk {a:?}: {err:?} lacks {needle:?}");
    }
    assert_eq!(
        std::fs::read(model).ok(),
        before_model,
        "dfk {a:?} wrote the model"
    );
    assert_eq!(
        std::fs::read(&ckpt).unwrap(),
        before_ckpt,
        "dfk {a:?} wrote the checkpoint"
    );
}

/// `<path>.<ext>`, as `dfk deep` names its checkpoint.
fn dir_file(path: &Path, ext: &str) -> std::path::PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".");
    p.push(ext);
    p.into()
}

/// A checkpoint damaged in any of the ways the trainer would index, slice or unwrap is
/// rejected whole, right after loading, with an error naming the file and the field.
#[test]
fn resume_rejects_a_malformed_checkpoint_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let files = tiny_descriptors(dir.path(), 3);
    let base = dir.path().join("base.dfk");
    ok(&tiny_args(&files, &base, &["--iters", "2"])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    let good = json(&std::fs::read_to_string(dir_file(&base, "ckpt")).unwrap());
    assert_eq!(good["iteration"], 2);
    assert_eq!(good["groups"][0]["tasks"], serde_json::json!([0, 1, 2]));

    type Edit = fn(&mut Value);
    let cases: &[(&str, Edit, &[&str])] = &[
        (
            "no records",
            |c| c["history"]["records"] = serde_json::json!([]),
            &["history.records holds 0 records", "iteration = 2"],
        ),
        (
            "best iteration past the history",
            |c| c["best"]["iteration"] = 99.into(),
            &["best.iteration = 99", "iteration 2"],
        ),
        (
            "no best SVMs",
            |c| c["best"]["svms"] = serde_json::json!([]),
            &["best.svms holds 0 entries", "expected one per GMM"],
        ),
        (
            "no best GMMs",
            |c| c["best"]["thetas"] = serde_json::json!([]),
            &["best.thetas holds 0 entries", "expected one per GMM"],
        ),
        (
            "no tasks",
            |c| {
                c["stop"] = Value::Null;
                c["groups"][0]["tasks"] = serde_json::json!([]);
            },
            &["groups[0].tasks = []", "expected [0, 1, 2]"],
        ),
        (
            "a task out of range",
            |c| {
                c["stop"] = Value::Null;
                c["groups"][0]["tasks"] = serde_json::json!([0, 5]);
            },
            &["groups[0].tasks = [0, 5]", "task 5 is not a class index"],
        ),
        (
            "a task twice",
            |c| c["groups"][0]["tasks"] = serde_json::json!([0, 1, 1]),
            &["groups[0].tasks = [0, 1, 1]", "more than once"],
        ),
        (
            "no GMM",
            |c| c["groups"] = serde_json::json!([]),
            &["groups holds 0 GMMs", "expected 1"],
        ),
        (
            "short weights",
            |c| c["groups"][0]["svm"]["models"][1]["w"] = serde_json::json!([1.0]),
            &["groups[0].svm.models[1].w holds 1 weights", "expected 12"],
        ),
        (
            "no duals",
            |c| c["best"]["svms"][0]["models"][0]["alpha"] = serde_json::json!([]),
            &["best.svms[0].models[0].alpha holds 0 duals"],
        ),
        (
            "a model missing",
            |c| {
                let m = c["groups"][0]["svm"]["models"].as_array_mut().unwrap();
                m.pop();
            },
            &["groups[0].svm.models holds 2 models", "expected 3"],
        ),
        (
            "wrong SVM dimension",
            |c| c["best"]["svms"][0]["dim"] = 5.into(),
            &["best.svms[0].dim = 5", "2 × K × D = 12"],
        ),
        (
            "short training scores",
            |c| c["groups"][0]["train_scores"] = serde_json::json!([0.5]),
            &["groups[0].train_scores holds 1 scores"],
        ),
        (
            "short means",
            |c| {
                let m = c["groups"][0]["theta"]["means"].as_array_mut().unwrap();
                m.pop();
            },
            &["groups[0].theta.means holds 5 values", "K × D = 6"],
        ),
        (
            "another K",
            |c| c["best"]["thetas"][0]["k"] = 3.into(),
            &["best.thetas[0].k = 3", "K = 2"],
        ),
        (
            "overflowing variances",
            |c| c["best"]["thetas"][0]["log_std"][0] = 1e3.into(),
            &["best.thetas[0] is not a valid GMM"],
        ),
        (
            "short floors",
            |c| c["groups"][0]["floors"]["min_log_std"] = serde_json::json!([]),
            &["groups[0].floors.min_log_std holds 0 values"],
        ),
        (
            "iteration ahead of the history",
            |c| c["iteration"] = 7.into(),
            &["history.records holds 3 records but iteration = 7"],
        ),
        (
            "records out of order",
            |c| c["history"]["records"][1]["iteration"] = 5.into(),
            &["history.records[1].iteration = 5, expected 1"],
        ),
        (
            "best metric not the kept record's",
            |c| c["best"]["metric"] = 0.123.into(),
            &["best.metric = Some(0.123)", "val_metric"],
        ),
        (
            "step out of range",
            |c| c["groups"][0]["step"] = 0.into(),
            &["groups[0].step = 0", "[min_step, max_step]"],
        ),
        (
            "objective not the SVMs'",
            |c| c["groups"][0]["objective"] = 123.0.into(),
            &["groups[0].objective = 123.0", "primal"],
        ),
        (
            "another initial GMM",
            |c| {
                let v = c["groups"][0]["init"]["means"][0].as_f64().unwrap();
                c["groups"][0]["init"]["means"][0] = (v + 0.5).into();
            },
            &["groups[0].init.means[0]", "another GMM"],
        ),
        (
            "a recorded setting changed",
            |c| c["settings"]["svm.c"] = "1.0".into(),
            &["svm.c (-C/--c): \"1.0\" in the checkpoint, \"3.0\" given"],
        ),
        (
            "not a checkpoint",
            |c| *c = serde_json::json!({"format": 3}),
            &["not a dfk deep checkpoint"],
        ),
    ];
    for (i, (what, edit, needles)) in cases.iter().enumerate() {
        let model = dir.path().join(format!("case{i}.dfk"));
        let mut c = good.clone();
        edit(&mut c);
        // Without the checksum (as an earlier dfk wrote checkpoints), so that the structural
        // checks are what rejects the damage.
        if let Some(o) = c.as_object_mut() {
            o.remove("checksum");
        }
        std::fs::write(dir_file(&model, "ckpt"), serde_json::to_vec(&c).unwrap()).unwrap();
        // Half the cases with an earlier model in place, which must be left as it was.
        if i % 2 == 1 {
            std::fs::copy(&base, &model).unwrap();
        }
        eprintln!("case {i}: {what}");
        resume_fails(
            &tiny_args(&files, &model, &["--iters", "4", "--resume"]),
            &model,
            needles,
        );
        if i % 2 == 0 {
            assert!(!model.exists(), "{what}: a model was written");
        }
    }

    // The undamaged checkpoint resumes (the stopping rules may change).
    let model = dir.path().join("good.dfk");
    std::fs::copy(dir_file(&base, "ckpt"), dir_file(&model, "ckpt")).unwrap();
    ok(&tiny_args(
        &files,
        &model,
        &[
            "--iters",
            "3",
            "--resume",
            "--patience",
            "5",
            "--rel-tol",
            "1e-9",
        ],
    )
    .iter()
    .map(String::as_str)
    .collect::<Vec<_>>());
    let m = ModelFile::load(&model).unwrap();
    assert_eq!(m.history["deep"]["records"].as_array().unwrap().len(), 4);
}

/// Resuming with a setting that shapes the state changed names the setting, its flag, the
/// checkpoint's value and the given one, and writes nothing.
#[test]
fn resume_names_the_setting_that_differs() {
    let dir = tempfile::tempdir().unwrap();
    let files = tiny_descriptors(dir.path(), 3);
    let base = dir.path().join("base.dfk");
    ok(&tiny_args(&files, &base, &["--iters", "1"])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    // Multi-label targets of the same images (each image's class, every third also the next).
    let multi = dir.path().join("multi.npy");
    let mut t = vec![0i64; 12 * 3];
    for i in 0..12 {
        t[i * 3 + i % 3] = 1;
        if i % 3 == 0 {
            t[i * 3 + (i + 1) % 3] = 1;
        }
    }
    write_i64_matrix(&multi, &t, 12, 3);
    let four = dir.path().join("four.npy");
    npy::write_i64_vector(&four, &(0..12).map(|i| i % 4).collect::<Vec<_>>()).unwrap();
    let (multi, four) = (s(&multi), s(&four));

    let cases: &[(&[&str], &[&str])] = &[
        (
            &["-k", "3"],
            // Named by EM's settings, recorded with its GMM, before EM would run.
            &["-k: \"2\" in the checkpoint, \"3\" given"],
        ),
        (
            &["--labels", &multi, "--multilabel"],
            &["labels (--multilabel): \"multi-class\" in the checkpoint, \"multi-label\" given"],
        ),
        (
            &["--labels", &four],
            &["classes (--labels): \"3\" in the checkpoint, \"4\" given"],
        ),
        (
            &["--mode", "per-class"],
            &["mode (--mode): \"shared\" in the checkpoint, \"per-class\" given"],
        ),
        (
            &["-C", "10"],
            &["svm.c (-C/--c): \"3.0\" in the checkpoint, \"10.0\" given"],
        ),
        (
            &["--svm-eps", "0.01"],
            &["svm.eps (--svm-eps): \"0.05\" in the checkpoint, \"0.01\" given"],
        ),
        (
            &["--balanced"],
            &["weighting (--balanced): \"uniform\" in the checkpoint, \"balanced\" given"],
        ),
        (
            &["--sqrt-epsilon", "1e-5", "--posterior-threshold", "0"],
            &[
                "fisher.sqrt_epsilon (--sqrt-epsilon): \"1e-6\" in the checkpoint, \"1e-5\" given",
                "fisher.posterior_threshold (--posterior-threshold)",
            ],
        ),
        (
            &["--groups", "means"],
            &["groups (--groups): \"means,log-std,weights\" in the checkpoint, \"means\" given"],
        ),
        (&["--step", "0.2"], &["line_search.initial_step (--step)"]),
        (
            &["--val-fraction", "0.25"],
            &["training set", "validation set"],
        ),
        // EM's seed too: named by the checkpoint's record of EM's settings.
        (
            &["--seed", "5"],
            &["--seed: \"0\" in the checkpoint, \"5\" given"],
        ),
        (
            &["--gmm-iters", "1"],
            &["--gmm-iters: \"100\" in the checkpoint, \"1\" given"],
        ),
    ];
    for (i, (extra, needles)) in cases.iter().enumerate() {
        let model = dir.path().join(format!("case{i}.dfk"));
        std::fs::copy(dir_file(&base, "ckpt"), dir_file(&model, "ckpt")).unwrap();
        let mut e = vec!["--iters", "3", "--resume"];
        e.extend_from_slice(extra);
        let mut n = vec!["other settings"];
        n.extend_from_slice(needles);
        resume_fails(&tiny_args(&files, &model, &e), &model, &n);
        assert!(!model.exists(), "{extra:?}: a model was written");
    }
    // Descriptors of another dimension: named with the checkpoint, before EM or training.
    let wider = dir.path().join("x4.npy");
    npy::write_f32_matrix(&wider, &vec![0.25; 60 * 4], 60, 4).unwrap();
    let model = dir.path().join("wider.dfk");
    std::fs::copy(dir_file(&base, "ckpt"), dir_file(&model, "ckpt")).unwrap();
    let other_files = (s(&wider), files.1.clone(), files.2.clone());
    resume_fails(
        &tiny_args(&other_files, &model, &["--iters", "3", "--resume"]),
        &model,
        &["the checkpoint was made on descriptors of dimension 3, these have 4"],
    );
    assert!(!model.exists());
}

/// Outputs that collide with each other or with an input are refused before training.
#[test]
fn deep_outputs_must_not_collide() {
    let dir = tempfile::tempdir().unwrap();
    let files = tiny_descriptors(dir.path(), 3);
    let model = dir.path().join("m.dfk");
    let to_str = |a: &[String]| a.to_vec();
    for (extra, needle) in [
        (
            vec!["--history", model.to_str().unwrap()],
            "are the same file",
        ),
        (
            vec!["--checkpoint", files.0.as_str()],
            "is also the input --descriptors",
        ),
    ] {
        let args = to_str(&tiny_args(&files, &model, &extra));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        fails_leaving_nothing(&refs, 2, needle, &model);
    }
    let (_, before, _) = npy::read_f32_matrix(&files.0).unwrap();
    assert_eq!(before, 60, "the descriptors are intact");
    // An output folder, trailing slash and all, is named as one (not as the checkpoint that
    // would lie inside it).
    let folder = dir.path().join("out");
    std::fs::create_dir(&folder).unwrap();
    let slash = format!("{}/", folder.display());
    let args = tiny_args(&files, Path::new(&slash), &[]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    fails(&refs, 2, "is a directory, expected a file path");
    assert_eq!(std::fs::read_dir(&folder).unwrap().count(), 0);
}

/// Options that used to be ignored without a word are refused or honoured (a review's
/// findings): flags of another data source, EM flags beside --gmm, configuration tables deep
/// does not read, a weight floor no K components can keep, a cache inside the image folder,
/// and --max-test 0.
#[test]
fn options_that_would_be_ignored_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.dfk");
    let m = s(&model);
    let files = tiny_descriptors(dir.path(), 2);
    let emb = |extra: &[&str], code: i32, needle: &str| {
        let mut a = vec!["deep", "--embedded", "--max-train", "100", "-o", &m];
        a.extend_from_slice(extra);
        fails_leaving_nothing(&a, code, needle, &model);
    };
    emb(
        &[
            "--test-descriptors",
            &files.0,
            "--test-offsets",
            &files.1,
            "--test-labels",
            &files.2,
        ],
        2,
        "--descriptors",
    );
    emb(&["--labels", &files.2], 2, "--descriptors");
    emb(&["--test-labels", &files.2], 2, "--test-descriptors");
    // Images bring their own labels: the message names the image source, not a missing file.
    emb(
        &["--multilabel"],
        2,
        "the argument '--embedded' cannot be used with '--multilabel'",
    );
    emb(&["--gmm", &files.0, "-k", "4"], 2, "--gmm");
    emb(&["--gmm", &files.0, "--gmm-iters", "4"], 2, "--gmm");
    emb(&["--max-test", "0"], 2, "--max-test 0: expected at least 1");
    emb(
        &["--val-fraction", "0", "--patience", "5"],
        2,
        "--patience 5 with --val-fraction 0",
    );
    emb(
        &["--mode", "per-class", "--posterior-cache-mb", "7"],
        2,
        "--posterior-cache-mb with --mode per-class",
    );
    // Known from the flags alone: said before the data are read (this folder does not exist).
    fails_leaving_nothing(
        &[
            "deep",
            "--data",
            "/nonexistent/images",
            "-k",
            "1",
            "--groups",
            "weights",
            "-o",
            &m,
        ],
        2,
        "--groups weights with K = 1",
        &model,
    );
    let pyramid = dir.path().join("pyramid.toml");
    std::fs::write(&pyramid, "pyramid = [[1, 1], [2, 2]]\n").unwrap();
    emb(
        &["--config", &s(&pyramid)],
        2,
        &format!("--config {} asks for the spatial pyramid", s(&pyramid)),
    );
    emb(
        &["-k", "4", "--min-weight", "0.3", "--iters", "0"],
        2,
        "--min-weight 0.3",
    );
    // A device as the output has no `<output>.ckpt` beside it.
    #[cfg(unix)]
    fails(
        &[
            "deep",
            "--embedded",
            "--max-train",
            "100",
            "-o",
            "/dev/null",
        ],
        2,
        "give --checkpoint FILE",
    );
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "[svm]\nc = 100\n").unwrap();
    emb(
        &["--config", &s(&config)],
        2,
        "the [svm] table is not used by dfk deep",
    );
    std::fs::write(&config, "[gmm]\nk = 3\n").unwrap();
    emb(
        &["--config", &s(&config)],
        2,
        "the [gmm] table is not used by dfk deep",
    );
    std::fs::write(&config, "[pca]\ndims = 999\n").unwrap();
    emb(
        &["--config", &s(&config)],
        2,
        "c.toml: invalid parameter pca.dims = 999: expected at most 128",
    );
    let tiny = |extra: &[&str], needle: &str| {
        let a = tiny_args(&files, &model, extra);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        fails_leaving_nothing(&a, 2, needle, &model);
    };
    tiny(&["--config", &s(&config)], "--config");
    tiny(&["--cache", &s(dir.path())], "--cache");
    // A test class that no training image has is blamed on the test labels (a data error).
    let other = dir.path().join("three");
    std::fs::create_dir(&other).unwrap();
    let three = tiny_descriptors(&other, 3);
    let a = tiny_args(
        &files,
        &model,
        &[
            "--test-descriptors",
            &three.0,
            "--test-offsets",
            &three.1,
            "--test-labels",
            &three.2,
        ],
    );
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    fails_leaving_nothing(
        &a,
        1,
        "label 2 names a class that no training image has",
        &model,
    );
    // More components than descriptors: named by the flag, with the count that limits it.
    tiny(&["-k", "40"], "30 training descriptors left after --max-train and the validation split: -k 40: expected at most");

    // A cache folder inside an image folder would become a class: refused before any work.
    let images = dir.path().join("imgs");
    for class in ["a", "b"] {
        std::fs::create_dir_all(images.join(class)).unwrap();
    }
    let cache = images.join("cache");
    let a = [
        "deep",
        "--data",
        &s(&images),
        "--cache",
        &s(&cache),
        "-o",
        &m,
    ];
    fails_leaving_nothing(&a, 2, "lies inside the image folder", &model);
    assert!(!cache.exists());
}

/// --max-train on images subsets once (it used to subset the extracted set again, and fail
/// for many sizes), and a pipeline model as --gmm brings its PCA: the deep model's PCA is the
/// given model's, not a new fit.
#[test]
fn max_train_and_a_pipeline_gmm_with_images() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("d.dfk");
    for n in ["56", "57", "66"] {
        ok(&[
            "-q",
            "deep",
            "--embedded",
            "--max-train",
            n,
            "--max-test",
            "20",
            "--iters",
            "0",
            "-k",
            "2",
            "--val-fraction",
            "0",
            "-o",
            &s(&model),
        ]);
    }
    let base = dir.path().join("base.dfk");
    ok(&[
        "-q",
        "train",
        "--embedded",
        "--limit",
        "200",
        "--k",
        "4",
        "--pca-dims",
        "16",
        "--no-cache",
        "--out",
        &s(&base),
    ]);
    ok(&[
        "-q",
        "deep",
        "--embedded",
        "--max-train",
        "100",
        "--max-test",
        "20",
        "--gmm",
        &s(&base),
        "--iters",
        "1",
        "--val-fraction",
        "0",
        "-o",
        &s(&model),
    ]);
    let (b, d) = (
        ModelFile::load(&base).unwrap(),
        ModelFile::load(&model).unwrap(),
    );
    assert_eq!(b.pca, d.pca, "the deep model's PCA is the --gmm model's");
    assert_eq!(d.gmm.d(), b.gmm.d());
    // A GMM file holds no PCA: refused with images, naming the need.
    let gmm = import_gmm(dir.path());
    fails(
        &[
            "deep",
            "--embedded",
            "--max-train",
            "100",
            "--gmm",
            &s(&gmm),
            "-o",
            &s(&model),
        ],
        1,
        "give a pipeline model",
    );
}

/// The model stores the EM settings that fitted the initial GMM (they were the pipeline's
/// defaults whatever the flags said).
#[test]
fn the_model_records_the_em_settings_used() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.dfk");
    let files = tiny_descriptors(dir.path(), 2);
    let a = tiny_args(
        &files,
        &model,
        &[
            "--gmm-iters",
            "7",
            "--gmm-restarts",
            "2",
            "--gmm-variance-floor",
            "0.01",
            "--iters",
            "0",
        ],
    );
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    ok(&a);
    let gmm = &ModelFile::load(&model).unwrap().config["gmm"];
    assert_eq!(gmm["k"], 2);
    assert_eq!(gmm["max_iter"], 7);
    assert_eq!(gmm["restarts"], 2);
    assert_eq!(gmm["variance_floor"], 0.01);
    // Half of the 12 images (5 descriptors each) are held out for validation.
    assert_eq!(gmm["sample"], 30);
}

/// Multi-label training and test label matrices with different numbers of columns: an error
/// naming both files.
#[test]
fn multilabel_test_labels_need_the_training_classes() {
    let dir = tempfile::tempdir().unwrap();
    let files = tiny_descriptors(dir.path(), 3);
    let (three, two) = (dir.path().join("three.npy"), dir.path().join("two.npy"));
    let t3: Vec<i64> = (0..12 * 3)
        .map(|ic| i64::from(ic % 3 == (ic / 3) % 3))
        .collect();
    write_i64_matrix(&three, &t3, 12, 3);
    let t2: Vec<i64> = (0..12 * 2)
        .map(|ic| i64::from(ic % 2 == (ic / 2) % 2))
        .collect();
    write_i64_matrix(&two, &t2, 12, 2);
    let model = dir.path().join("m.dfk");
    let args = tiny_args(
        &files,
        &model,
        &[
            "--labels",
            &s(&three),
            "--multilabel",
            "--test-descriptors",
            &files.0,
            "--test-offsets",
            &files.1,
            "--test-labels",
            &s(&two),
        ],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    fails_leaving_nothing(&args, 1, "2 class columns but --labels", &model);
    fails(&args, 1, "two.npy");
}

/// Labels that would stop the run after EM are refused before it, naming the file or flag: a
/// class without training images, a test or validation part of a multi-label set without any
/// positive (no mAP).
#[test]
fn unusable_labels_are_refused_before_em() {
    let dir = tempfile::tempdir().unwrap();
    let files = tiny_descriptors(dir.path(), 3);
    let model = dir.path().join("m.dfk");
    let before_em = |args: &[String], code: i32, needles: &[&str]| {
        // Without -q: the EM's log line must not appear.
        let args: Vec<&str> = args
            .iter()
            .map(String::as_str)
            .filter(|a| *a != "-q")
            .collect();
        let o = dfk(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(code), "{err}");
        for n in needles {
            assert!(err.contains(n), "{err:?} lacks {n:?}");
        }
        assert!(!err.contains("EM: K"), "{err}");
        assert!(!model.exists());
    };
    // K = 1 has one weight, fixed at 1: learning the weights alone would learn nothing.
    let args = tiny_args(&files, &model, &["-k", "1", "--groups", "weights"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    fails_leaving_nothing(&args, 2, "--groups weights with K = 1", &model);
    // Classes 0, 1 and 3: class 2 has no image.
    let gap = dir.path().join("gap.npy");
    npy::write_i64_vector(&gap, &(0..12).map(|i| [0, 1, 3][i % 3]).collect::<Vec<_>>()).unwrap();
    before_em(
        &tiny_args(&files, &model, &["--labels", &s(&gap)]),
        1,
        &["gap.npy", "class 2 has no training sample"],
    );
    // Multi-label: the test labels have no positive.
    let multi = dir.path().join("multi.npy");
    let t: Vec<i64> = (0..12 * 3)
        .map(|ic| i64::from(ic % 3 == (ic / 3) % 3))
        .collect();
    write_i64_matrix(&multi, &t, 12, 3);
    let zeros = dir.path().join("zeros.npy");
    write_i64_matrix(&zeros, &[0; 36], 12, 3);
    let test = |labels: &Path| {
        vec![
            "--multilabel".to_string(),
            "--labels".to_string(),
            s(&multi),
            "--test-descriptors".to_string(),
            files.0.clone(),
            "--test-offsets".to_string(),
            files.1.clone(),
            "--test-labels".to_string(),
            s(labels),
        ]
    };
    let extra = test(&zeros);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    before_em(
        &tiny_args(&files, &model, &extra),
        1,
        &["--test-labels", "zeros.npy", "no test image is a positive"],
    );
    // Multi-label: one positive image per class, which the split keeps for training, so the
    // validation part has none.
    let sparse = dir.path().join("sparse.npy");
    let t: Vec<i64> = (0..12 * 3)
        .map(|ic| i64::from(ic / 3 < 3 && ic % 3 == ic / 3))
        .collect();
    write_i64_matrix(&sparse, &t, 12, 3);
    before_em(
        &tiny_args(
            &files,
            &model,
            &[
                "--multilabel",
                "--labels",
                &s(&sparse),
                "--val-fraction",
                "0.5",
            ],
        ),
        2,
        &["--val-fraction 0.5", "validation part", "--val-fraction 0"],
    );
    // The same labels train without a validation part.
    let ok_args = tiny_args(
        &files,
        &model,
        &[
            "--multilabel",
            "--labels",
            &s(&sparse),
            "--val-fraction",
            "0",
            "--iters",
            "1",
        ],
    );
    let ok_args: Vec<&str> = ok_args.iter().map(String::as_str).collect();
    ok(&ok_args);
    assert!(model.exists());
}

/// `--difficult` / `--test-difficult` read VOC difficult flags of the labels' shape; a file of
/// another shape or with other values is an error naming it, and the flags need --multilabel.
#[test]
fn difficult_flags_are_read_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let files = tiny_descriptors(dir.path(), 3);
    let multi = dir.path().join("multi.npy");
    let t: Vec<i64> = (0..12 * 3)
        .map(|ic| i64::from(ic % 3 == (ic / 3) % 3))
        .collect();
    write_i64_matrix(&multi, &t, 12, 3);
    let flags = dir.path().join("difficult.npy");
    let d: Vec<i64> = (0..12 * 3).map(|ic| i64::from(ic == 3)).collect();
    write_i64_matrix(&flags, &d, 12, 3);
    let wrong = dir.path().join("wrong.npy");
    write_i64_matrix(&wrong, &d[..24], 12, 2);
    let model = dir.path().join("m.dfk");
    let run = |flag_file: &Path, extra: &[&str]| {
        let mut e = vec!["--labels", multi.to_str().unwrap(), "--multilabel"];
        e.extend_from_slice(&["--difficult", flag_file.to_str().unwrap(), "--iters", "1"]);
        e.extend_from_slice(extra);
        tiny_args(&files, &model, &e)
    };
    let test = [
        "--test-descriptors",
        files.0.as_str(),
        "--test-offsets",
        files.1.as_str(),
        "--test-labels",
        multi.to_str().unwrap(),
        "--test-difficult",
        flags.to_str().unwrap(),
    ];
    ok(&run(&flags, &test)
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    assert!(model.is_file());
    std::fs::remove_file(&model).unwrap();
    let args = run(&wrong, &[]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    fails_leaving_nothing(&refs, 1, "wrong.npy: 12 × 2 difficult flags", &model);
    // Without --multilabel: a usage error.
    let args = tiny_args(&files, &model, &["--difficult", flags.to_str().unwrap()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    fails_leaving_nothing(&refs, 2, "--multilabel", &model);
}

/// Test labels from another `extract` run number their own classes: with a `classes.txt`
/// beside both label files they are matched to the training classes by name (they were taken
/// by index, silently scoring the wrong classes); a test class the training lacks is named.
#[test]
fn test_labels_are_matched_to_training_classes_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let files = tiny_descriptors(dir.path(), 3);
    std::fs::write(dir.path().join("classes.txt"), "a\nb\nc\n").unwrap();
    let te = dir.path().join("te");
    std::fs::create_dir_all(&te).unwrap();
    let y = npy::read_labels(&files.2).unwrap();
    // The same images, labelled in the test folder's own order c, b, a.
    let own: Vec<i64> = y.iter().map(|&l| 2 - l as i64).collect();
    npy::write_i64_vector(te.join("y.npy"), &own).unwrap();
    std::fs::write(te.join("classes.txt"), "c\nb\na\n").unwrap();
    let run = |labels: &str, model: &str| {
        let model = dir.path().join(model);
        let mut args = tiny_args(&files, &model, &["--iters", "1"]);
        args.retain(|a| a != "-q");
        args.insert(2, "--json".into());
        args.extend(
            [
                "--test-descriptors",
                &files.0,
                "--test-offsets",
                &files.1,
                "--test-labels",
                labels,
            ]
            .map(String::from),
        );
        dfk(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let same = run(&files.2, "same.dfk");
    assert!(
        same.status.success(),
        "{}",
        String::from_utf8_lossy(&same.stderr)
    );
    let renamed = run(&s(&te.join("y.npy")), "renamed.dfk");
    let err = String::from_utf8_lossy(&renamed.stderr);
    assert!(renamed.status.success(), "{err}");
    assert!(
        err.contains("matched to the training classes by name"),
        "{err}"
    );
    let (a, b) = (
        json(&String::from_utf8_lossy(&same.stdout)),
        json(&String::from_utf8_lossy(&renamed.stdout)),
    );
    assert_eq!(a["test_initial"], b["test_initial"]);
    assert_eq!(a["test_best"], b["test_best"]);
    // A test class that the training set does not have.
    std::fs::write(te.join("classes.txt"), "c\nb\nzebra\n").unwrap();
    let o = run(&s(&te.join("y.npy")), "zebra.dfk");
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("test class \"zebra\" is not a training class"),
        "{err}"
    );
}

/// `dfk fisher --gmm DEEP.dfk` encodes with the model's own Fisher vector settings (here
/// `--sqrt-epsilon 0.05`, `--posterior-threshold 0.2`), the vectors its SVMs score: it used
/// VLFeat's defaults whatever the model said.
#[test]
fn fisher_with_a_deep_model_uses_its_encoder_settings() {
    let dir = tempfile::tempdir().unwrap();
    let files = tiny_descriptors(dir.path(), 3);
    let model = dir.path().join("eps.dfk");
    ok(&tiny_args(
        &files,
        &model,
        &[
            "--iters",
            "1",
            "--sqrt-epsilon",
            "0.05",
            "--posterior-threshold",
            "0.2",
        ],
    )
    .iter()
    .map(String::as_str)
    .collect::<Vec<_>>());
    let out = dir.path().join("fv.npy");
    ok(&[
        "-q",
        "fisher",
        "--gmm",
        &s(&model),
        "--descriptors",
        &files.0,
        "--offsets",
        &files.1,
        "--out",
        &s(&out),
    ]);
    let (fv, n, len) = npy::read_f32_matrix(&out).unwrap();
    let m = ModelFile::load(&model).unwrap();
    let config: dfk::pipeline::PipelineConfig = serde_json::from_value(m.config.clone()).unwrap();
    assert_eq!(config.fisher.sqrt_epsilon, 0.05);
    let enc = dfk::fisher::FisherEncoder::new(&m.gmm, config.fisher).unwrap();
    let (x, _, _) = npy::read_f32_matrix(&files.0).unwrap();
    let offsets: Vec<usize> = (0..=12).map(|i| i * 5).collect();
    let mut want = vec![0f32; n * len];
    enc.encode_batch(&x, &offsets, &mut want).unwrap();
    assert_eq!(fv, want);
    let default = dfk::fisher::FisherEncoder::new(&m.gmm, Default::default()).unwrap();
    let mut other = vec![0f32; n * len];
    default.encode_batch(&x, &offsets, &mut other).unwrap();
    assert_ne!(fv, other, "the settings make no difference on these data");
}

/// A per-class deep model continued with `--gmm` on data whose classes come in another order:
/// each class starts from the model's GMM of the same name (they were taken by index, so
/// class `a` started from class `c`'s learned GMM).
#[test]
fn per_class_gmms_are_continued_by_class_name() {
    let dir = tempfile::tempdir().unwrap();
    let files = tiny_descriptors(dir.path(), 3);
    std::fs::write(dir.path().join("classes.txt"), "a\nb\nc\n").unwrap();
    let first = dir.path().join("first.dfk");
    let per_class = ["--mode", "per-class", "--val-fraction", "0"];
    ok(&tiny_args(
        &files,
        &first,
        &[&["--iters", "2"][..], &per_class].concat(),
    )
    .iter()
    .map(String::as_str)
    .collect::<Vec<_>>());
    let rev = dir.path().join("rev");
    std::fs::create_dir_all(&rev).unwrap();
    let y = npy::read_labels(&files.2).unwrap();
    let reversed: Vec<i64> = y.iter().map(|&l| 2 - l as i64).collect();
    npy::write_i64_vector(rev.join("y.npy"), &reversed).unwrap();
    std::fs::write(rev.join("classes.txt"), "c\nb\na\n").unwrap();
    let rev_files = (files.0.clone(), files.1.clone(), s(&rev.join("y.npy")));
    let second = dir.path().join("second.dfk");
    let mut args = tiny_args(
        &rev_files,
        &second,
        &[&["--iters", "0", "--gmm", &s(&first)][..], &per_class].concat(),
    );
    // `-k` conflicts with --gmm.
    let k = args.iter().position(|a| a == "-k").unwrap();
    args.drain(k..k + 2);
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let (a, b) = (
        ModelFile::load(&first).unwrap(),
        ModelFile::load(&second).unwrap(),
    );
    assert_eq!(b.class_names, ["c", "b", "a"]);
    for (i, j) in [(0, 2), (1, 1), (2, 0)] {
        assert_eq!(
            a.class_gmms[i].means(),
            b.class_gmms[j].means(),
            "class {}",
            a.class_names[i]
        );
    }
}

/// A model trained on descriptor files cannot score images (their dense SIFT has another
/// length): said as such before any image is read, not as a dimension mismatch deep inside.
#[test]
fn a_descriptor_model_refuses_images_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let files = tiny_descriptors(dir.path(), 3);
    let model = dir.path().join("m.dfk");
    ok(&tiny_args(&files, &model, &["--iters", "0"])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    fails(
        &[
            "predict",
            "--model",
            &s(&model),
            "--embedded",
            "--limit",
            "5",
        ],
        1,
        "the model was trained on descriptors of dimension 3, not on the 128 values of dense SIFT",
    );
}
