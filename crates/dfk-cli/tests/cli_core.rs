//! The core subcommands end to end (`dfk gmm`, `dfk fisher`, `dfk svm`) on `.npy` fixtures
//! (`fixtures/cli/make_fixtures.py`; expected Fisher vectors are VLFeat 0.9.21's), and every
//! malformed-input path: non-zero exit, a message naming the file, no output left behind.

mod common;
use common::*;

use dfk::npy;

#[test]
fn gmm_import_export_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let gmm = import_gmm(dir.path());
    let out = dir.path().join("exported");
    ok(&["gmm", "export", &s(&gmm), "--out-dir", &s(&out)]);
    for (name, src) in [
        ("means.npy", "means_f64.npy"),
        ("variances.npy", "variances_f64.npy"),
    ] {
        let (got, r, c) = npy::read_f32_matrix(out.join(name)).unwrap();
        let (want, r2, c2) = npy::read_f32_matrix(cli_fixture(src)).unwrap();
        assert_eq!((r, c), (r2, c2));
        assert_eq!(got, want, "{name}");
    }
    let w = npy::read_f32_vector(out.join("weights.npy")).unwrap();
    let want = npy::read_f32_vector(cli_fixture("weights_f32.npy")).unwrap();
    for (a, b) in w.iter().zip(&want) {
        assert!((a - b).abs() <= 1e-6 * b.abs().max(1e-3), "{a} vs {b}");
    }
    // Importing the export gives the same model file, byte for byte.
    let again = dir.path().join("again.dfk");
    ok(&[
        "gmm",
        "import",
        "--means",
        &s(&out.join("means.npy")),
        "--variances",
        &s(&out.join("variances.npy")),
        "--weights",
        &s(&out.join("weights.npy")),
        "--out",
        &s(&again),
    ]);
    assert_eq!(std::fs::read(&gmm).unwrap(), std::fs::read(&again).unwrap());
}

fn assert_close(got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len());
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!((a - b).abs() <= tol, "entry {i}: {a} vs VLFeat {b}");
    }
}

#[test]
fn fisher_matches_vlfeat_on_npy_input() {
    let dir = tempfile::tempdir().unwrap();
    let gmm = import_gmm(dir.path());
    let (improved, _, _) = npy::read_f32_matrix(cli_fixture("fv_improved_vlfeat.npy")).unwrap();
    let (raw, _, _) = npy::read_f32_matrix(cli_fixture("fv_raw_vlfeat.npy")).unwrap();

    let one = dir.path().join("one.npy");
    ok(&[
        "fisher",
        "--gmm",
        &s(&gmm),
        "--descriptors",
        &cli_fixture("descriptors.npy"),
        "--out",
        &s(&one),
    ]);
    let (fv, n, len) = npy::read_f32_matrix(&one).unwrap();
    assert_eq!((n, len), (1, 24));
    assert_close(&fv, &improved, 1e-5);

    let two = dir.path().join("two.npy");
    ok(&[
        "fisher",
        "--gmm",
        &s(&gmm),
        "--descriptors",
        &cli_fixture("two_images.npy"),
        "--offsets",
        &cli_fixture("two_offsets.npy"),
        "--out",
        &s(&two),
    ]);
    let (fv, n, _) = npy::read_f32_matrix(&two).unwrap();
    assert_eq!(n, 2);
    assert_close(&fv[..24], &improved, 1e-5);
    assert_close(&fv[24..], &improved, 1e-5);

    let plain = dir.path().join("plain.npy");
    ok(&[
        "fisher",
        "--gmm",
        &s(&gmm),
        "--descriptors",
        &cli_fixture("descriptors.npy"),
        "--plain",
        "--out",
        &s(&plain),
    ]);
    let (fv, _, _) = npy::read_f32_matrix(&plain).unwrap();
    assert_close(&fv, &raw, 1e-5);
}

#[test]
fn svm_train_and_predict() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("svm.dfk");
    let json = ok(&[
        "--json",
        "svm",
        "train",
        "--features",
        &cli_fixture("features.npy"),
        "--labels",
        &cli_fixture("labels.npy"),
        "--c",
        "1",
        "--out",
        &s(&model),
    ]);
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["classes"], 3);
    for (flag, value) in [("--c", "inf"), ("--c", "0"), ("--eps", "-1")] {
        fails(
            &[
                "svm",
                "train",
                "--features",
                &cli_fixture("features.npy"),
                "--labels",
                &cli_fixture("labels.npy"),
                &format!("{flag}={value}"),
                "--out",
                &s(&dir.path().join("never.dfk")),
            ],
            2,
            &format!("{flag} {value}: expected a finite number > 0"),
        );
    }
    // A negative value as the next argument reaches the same check (it used to read as an
    // unknown flag `-1`, and `-0.5` as the flag `-0`).
    for (flag, value, shown) in [
        ("--c", "-1", "-1"),
        ("--eps", "-0.5", "-0.5"),
        ("--c", "-1e-3", "-0.001"),
        ("--c", "-inf", "-inf"),
    ] {
        fails(
            &[
                "svm",
                "train",
                "--features",
                &cli_fixture("features.npy"),
                "--labels",
                &cli_fixture("labels.npy"),
                flag,
                value,
                "--out",
                &s(&dir.path().join("never.dfk")),
            ],
            2,
            &format!("{flag} {shown}: expected a finite number > 0"),
        );
    }
    // A float flag followed by something that is not a number: an invalid value of that flag.
    fails(
        &[
            "svm",
            "train",
            "--features",
            &cli_fixture("features.npy"),
            "--labels",
            &cli_fixture("labels.npy"),
            "--c",
            "-q",
            "--out",
            &s(&dir.path().join("never.dfk")),
        ],
        2,
        "invalid value '-q' for '--c <C>'",
    );
    // A label matrix of the wrong shape is named by its shape (60 feature rows).
    let labels = npy::read_labels(cli_fixture("labels.npy")).unwrap();
    let onehot = |rows: usize| -> Vec<i64> {
        (0..rows * 3)
            .map(|i| i64::from(labels[i / 3] == i % 3))
            .collect()
    };
    for (name, data, shape, needle) in [
        (
            "short.npy",
            onehot(50),
            (50, 3),
            "short.npy: shape [50, 3]: 50 rows but",
        ),
        ("wide.npy", vec![0i64; 3 * 60], (3, 60), "(transposed?)"),
        ("two.npy", vec![2i64; 60 * 3], (60, 3), "holds the value 2"),
    ] {
        let path = dir.path().join(name);
        let mut files = npy::FileGroup::new();
        files.i64_matrix(&path, &data, shape.0, shape.1).unwrap();
        files.commit().unwrap();
        fails(
            &[
                "svm",
                "train",
                "--features",
                &cli_fixture("features.npy"),
                "--labels",
                &s(&path),
                "--out",
                &s(&dir.path().join("never.dfk")),
            ],
            1,
            needle,
        );
    }
    let scores = dir.path().join("scores.npy");
    ok(&[
        "svm",
        "predict",
        &s(&model),
        "--features",
        &cli_fixture("features.npy"),
        "--out",
        &s(&scores),
    ]);
    let (sc, n, c) = npy::read_f32_matrix(&scores).unwrap();
    assert_eq!((n, c), (60, 3));
    // One feature vector saved as a 1-D array: the error says how it was read.
    let (features, _, dim) = npy::read_f32_matrix(cli_fixture("features.npy")).unwrap();
    let one = dir.path().join("one.npy");
    npy::write_f32_vector(&one, &features[..dim]).unwrap();
    fails(
        &[
            "svm",
            "predict",
            &s(&model),
            "--features",
            &s(&one),
            "--out",
            &s(&dir.path().join("never.npy")),
        ],
        1,
        &format!(
            "features have 1 column but the SVMs in {} expect {dim} (the file holds a 1-D array \
             of {dim} values, read as {dim} rows × 1 column: one feature vector is a 1 × {dim} \
             matrix)",
            s(&model)
        ),
    );
    for i in 0..n {
        let row = &sc[i * c..(i + 1) * c];
        let best = (0..c).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
        assert_eq!(best, labels[i], "sample {i}: scores {row:?}");
        // Separable blobs: the true class's SVM is positive, the others negative.
        assert!(row[labels[i]] > 0.0 && row.iter().filter(|&&v| v > 0.0).count() == 1);
    }
}

#[test]
fn malformed_inputs_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let gmm = import_gmm(dir.path());
    let out = dir.path().join("out.npy");
    let o = s(&out);
    let g = s(&gmm);
    for (bad, needle) in [
        ("descriptors_int.npy", "not a float type"),
        ("descriptors_rank3.npy", "rank 3"),
        ("descriptors_truncated.npy", "truncated"),
        ("descriptors_nan.npy", "row 3, column 2"),
        ("descriptors_d5.npy", "dimension 4"),
        ("missing.npy", "missing.npy"),
    ] {
        let path = cli_fixture(bad);
        fails_leaving_nothing(
            &["fisher", "--gmm", &g, "--descriptors", &path, "--out", &o],
            1,
            &path,
            &out,
        );
        fails_leaving_nothing(
            &["fisher", "--gmm", &g, "--descriptors", &path, "--out", &o],
            1,
            needle,
            &out,
        );
    }
    let inputs = tempfile::tempdir().unwrap();
    let fisher_fails = |x: &std::path::Path, needle: &str| {
        let args = ["fisher", "--gmm", &g, "--descriptors", &s(x), "--out", &o];
        fails_leaving_nothing(&args, 1, needle, &out);
    };
    // No rows and no offsets: one image without descriptors, said without naming offsets.
    let empty = inputs.path().join("empty.npy");
    npy::write_f32_matrix(&empty, &[], 0, 4).unwrap();
    fisher_fails(
        &empty,
        "empty.npy: the array has no rows: without --offsets it is one image",
    );
    // A 1-D array reads as one column: the message says so.
    let flat = inputs.path().join("flat.npy");
    npy::write_f32_vector(&flat, &[0.5; 8]).unwrap();
    fisher_fails(&flat, "descriptors have 1 column but the GMM in");
    fisher_fails(
        &flat,
        "(the file holds a 1-D array of 8 values, read as 8 rows × 1 column: descriptors are an \
         N × D matrix)",
    );
    // A true N × 1 matrix gets no such note.
    let column = inputs.path().join("column.npy");
    npy::write_f32_matrix(&column, &[0.5; 8], 8, 1).unwrap();
    let args = [
        "fisher",
        "--gmm",
        &g,
        "--descriptors",
        &s(&column),
        "--out",
        &o,
    ];
    let err = String::from_utf8_lossy(&dfk(&args).stderr).into_owned();
    assert!(
        err.contains("descriptors have 1 column") && !err.contains("1-D array"),
        "{err}"
    );
    // The descriptors are read in batches from their place in the file: a pipe or device is
    // refused as such (it used to fail with "Illegal seek").
    fisher_fails(
        std::path::Path::new("/dev/zero"),
        "/dev/zero: not a regular file (a pipe or device?)",
    );
    for bad in ["offsets_decreasing.npy", "offsets_out_of_range.npy"] {
        let path = cli_fixture(bad);
        fails_leaving_nothing(
            &[
                "fisher",
                "--gmm",
                &g,
                "--descriptors",
                &cli_fixture("two_images.npy"),
                "--offsets",
                &path,
                "--out",
                &o,
            ],
            1,
            &path,
            &out,
        );
    }
    // A model file of the wrong kind, and a file that is no model at all.
    let svm = dir.path().join("svm.dfk");
    ok(&[
        "svm",
        "train",
        "--features",
        &cli_fixture("features.npy"),
        "--labels",
        &cli_fixture("labels.npy"),
        "--out",
        &s(&svm),
    ]);
    fails_leaving_nothing(
        &[
            "fisher",
            "--gmm",
            &s(&svm),
            "--descriptors",
            &cli_fixture("descriptors.npy"),
            "--out",
            &o,
        ],
        1,
        "kind",
        &out,
    );
    let not_model = cli_fixture("descriptors.npy");
    fails_leaving_nothing(
        &[
            "fisher",
            "--gmm",
            &not_model,
            "--descriptors",
            &cli_fixture("descriptors.npy"),
            "--out",
            &o,
        ],
        1,
        &not_model,
        &out,
    );
    fails_leaving_nothing(
        &[
            "svm",
            "predict",
            &g,
            "--features",
            &cli_fixture("features.npy"),
            "--out",
            &o,
        ],
        1,
        &g,
        &out,
    );
    // SVM inputs.
    let m = dir.path().join("m.dfk");
    for (labels, needle) in [
        ("labels_short.npy", "50 labels"),
        ("labels_negative.npy", "negative"),
    ] {
        let path = cli_fixture(labels);
        fails_leaving_nothing(
            &[
                "svm",
                "train",
                "--features",
                &cli_fixture("features.npy"),
                "--labels",
                &path,
                "--out",
                &s(&m),
            ],
            1,
            &path,
            &m,
        );
        fails_leaving_nothing(
            &[
                "svm",
                "train",
                "--features",
                &cli_fixture("features.npy"),
                "--labels",
                &path,
                "--out",
                &s(&m),
            ],
            1,
            needle,
            &m,
        );
    }
    fails_leaving_nothing(
        &[
            "svm",
            "predict",
            &s(&svm),
            "--features",
            &cli_fixture("descriptors.npy"),
            "--out",
            &o,
        ],
        1,
        "expect 6",
        &out,
    );
    // GMM import with mismatched shapes.
    fails_leaving_nothing(
        &[
            "gmm",
            "import",
            "--means",
            &cli_fixture("means_f64.npy"),
            "--variances",
            &cli_fixture("descriptors.npy"),
            "--weights",
            &cli_fixture("weights_f32.npy"),
            "--out",
            &s(&m),
        ],
        1,
        &cli_fixture("descriptors.npy"),
        &m,
    );
    // Usage errors exit with 2.
    fails_leaving_nothing(
        &["fisher", "--gmm", &g, "--out", &o],
        2,
        "--descriptors",
        &out,
    );
    fails_leaving_nothing(
        &[
            "gmm",
            "fit",
            "--descriptors",
            &cli_fixture("descriptors.npy"),
            "--k",
            "0",
            "--out",
            &s(&m),
        ],
        2,
        "--k",
        &m,
    );
    // An EM posterior threshold outside [0, 1) is a usage error naming the flag.
    fails_leaving_nothing(
        &[
            "gmm",
            "fit",
            "--descriptors",
            &cli_fixture("descriptors.npy"),
            "--k",
            "2",
            "--posterior-threshold",
            "1.5",
            "--out",
            &s(&m),
        ],
        2,
        "--posterior-threshold 1.5",
        &m,
    );
    // Nothing but the inputs and models made above is left in the folder.
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, vec!["g.dfk", "svm.dfk"]);
}

#[test]
fn gmm_fit_writes_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("fit.dfk");
    let out = ok(&[
        "--json",
        "gmm",
        "fit",
        "--descriptors",
        &cli_fixture("features.npy"),
        "--k",
        "3",
        "--seed",
        "1",
        "--out",
        &s(&m),
    ]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["k"], 3);
    let g = dfk::model::load_gmm(&m).unwrap();
    assert_eq!((g.k(), g.d()), (3, 6));
    // The three blobs are found: every mean is near one of the centres (4 e_c).
    for k in 0..3 {
        let mean = g.mean(k);
        let c = (0..3).max_by(|&a, &b| mean[a].total_cmp(&mean[b])).unwrap();
        assert!((mean[c] - 4.0).abs() < 0.5, "component {k}: {mean:?}");
    }
}

/// One-vs-rest SVMs for `classes` classes whose `dim` weights are all `w` (no bias, no duals).
fn uniform_svm(classes: usize, dim: usize, w: f32) -> dfk::svm::OneVsRest {
    dfk::svm::OneVsRest {
        classes,
        dim,
        multilabel: false,
        models: (0..classes)
            .map(|_| dfk::svm::BinarySvm {
                w: vec![w; dim],
                b: 0.0,
                alpha: vec![],
                primal: 0.0,
                dual: 0.0,
                iterations: 0,
            })
            .collect(),
    }
}

/// A model file whose finite weights overflow f32 in the scores is refused by `svm predict`,
/// naming the file and the sample, and writes nothing.
#[test]
fn svm_predict_refuses_scores_that_overflow() {
    let dir = tempfile::tempdir().unwrap();
    let model = |w: f32| uniform_svm(2, 6, w);
    let (big, small) = (dir.path().join("big.dfk"), dir.path().join("small.dfk"));
    dfk::model::save_svm(&big, &model(3e38), &[]).unwrap();
    dfk::model::save_svm(&small, &model(1.0), &[]).unwrap();
    let out = dir.path().join("scores.npy");
    let args = |m: &std::path::Path| {
        [
            "svm".to_string(),
            "predict".into(),
            s(m),
            "--features".into(),
            cli_fixture("features.npy"),
            "--out".into(),
            s(&out),
        ]
    };
    let a = args(&big);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    fails_leaving_nothing(&a, 1, "overflows f32", &out);
    fails_leaving_nothing(&a, 1, &s(&big), &out);
    let a = args(&small);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    ok(&a);
    assert!(out.exists());
}

/// `info` loads the file as the commands that use it do: an inconsistent model is shown, with
/// the problem, and exits 1; a sound one exits 0.
#[test]
fn info_reports_a_model_that_does_not_load() {
    let dir = tempfile::tempdir().unwrap();
    let svm = uniform_svm(2, 3, 0.5);
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let (good, bad) = (dir.path().join("good.dfk"), dir.path().join("bad.dfk"));
    dfk::model::save_svm(&good, &svm, &names(&["a", "b"])).unwrap();
    dfk::model::save_svm(&bad, &svm, &names(&["a", "b", "c"])).unwrap();
    let out = ok(&["info", &s(&good)]);
    assert!(
        out.contains("classes (2): a, b") && !out.contains("problem"),
        "{out}"
    );
    let o = dfk(&["info", &s(&bad)]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stdout.contains("classes (3): a, b, c"), "{stdout}");
    assert!(
        stdout.contains("problem: the file does not load"),
        "{stdout}"
    );
    assert!(stderr.contains("3 names but the file holds 2"), "{stderr}");
    // An SVM model has no pipeline configuration to print.
    fails(
        &["info", &s(&good), "--config"],
        1,
        "a svm model holds no pipeline configuration",
    );
}

/// Identical descriptors fit (every component on that point) but with a warning.
#[test]
fn identical_descriptors_fit_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let (x, g) = (dir.path().join("x.npy"), dir.path().join("g.dfk"));
    // Identical descriptors, then distinct ones at a scale below the absolute variance floor.
    let tiny: Vec<f32> = (0..50 * 4).map(|i| (i % 7) as f32 * 1e-20).collect();
    for (data, warning) in [
        (vec![0.25; 50 * 4], "all 50 descriptors are identical"),
        (tiny, "absolute variance floor"),
    ] {
        dfk::npy::write_f32_matrix(&x, &data, 50, 4).unwrap();
        let o = dfk(&[
            "gmm",
            "fit",
            "--descriptors",
            &s(&x),
            "--k",
            "3",
            "--out",
            &s(&g),
        ]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(0), "{stderr}");
        assert!(stderr.contains(warning), "{stderr}");
        assert!(g.exists());
    }
}

/// A pipeline model whose stored encoding settings are invalid (edited, or written by another
/// tool) is reported on loading, by `info` and before `predict` reads any image.
#[test]
fn invalid_stored_settings_are_reported_on_loading() {
    let dir = tempfile::tempdir().unwrap();
    let m = small_model(dir.path());
    let mut model = dfk::model::ModelFile::load(&m).unwrap();
    model.config["sift"]["step"] = serde_json::json!(0);
    model.save(&m).unwrap();
    let o = dfk(&["info", &s(&m)]);
    assert_eq!(o.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("problem: the file does not load")
            && stdout.contains("stored configuration"),
        "{stdout}"
    );
    fails(
        &["predict", "--model", &s(&m), "--embedded", "--limit", "1"],
        1,
        "stored configuration",
    );
    // `fisher` uses the file's GMM only, but a damaged file is no GMM to trust.
    let x = dir.path().join("x.npy");
    dfk::npy::write_f32_matrix(&x, &[0.1; 4 * 34], 4, 34).unwrap();
    fails(
        &[
            "fisher",
            "--gmm",
            &s(&m),
            "--descriptors",
            &s(&x),
            "--out",
            &s(&dir.path().join("f.npy")),
        ],
        1,
        "stored configuration",
    );
    // Nor are such settings printed as a configuration to train with.
    let o = dfk(&["info", &s(&m), "--config"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("its configuration is not printed"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Stored settings that do not describe the arrays (an edited K or PCA size) and class names
/// listed twice are reported on loading, as `train` would refuse them.
#[test]
fn stored_settings_must_match_the_arrays() {
    let dir = tempfile::tempdir().unwrap();
    let m = small_model(dir.path());
    type Edit = fn(&mut dfk::model::ModelFile);
    let edits: [(&str, Edit); 4] = [
        ("gmm.k = 5 but gmm.means holds K = 2", |f| {
            f.config["gmm"]["k"] = serde_json::json!(5)
        }),
        // The header's pca_whiten is what runs; the configuration must say the same.
        (
            "pca.whiten = true but the file's PCA (header field pca_whiten) is not whitened",
            |f| {
                assert_eq!(f.config["pca"]["whiten"], false);
                f.config["pca"]["whiten"] = serde_json::json!(true)
            },
        ),
        ("pca.dims = 16 but the file holds a PCA to", |f| {
            f.config["pca"]["dims"] = serde_json::json!(16)
        }),
        ("class_names lists 'a' twice", |f| {
            f.class_names = vec!["a".to_string(); f.class_names.len()]
        }),
    ];
    for (needle, edit) in edits {
        let edited = dir.path().join("edited.dfk");
        let mut model = dfk::model::ModelFile::load(&m).unwrap();
        edit(&mut model);
        model.save(&edited).unwrap();
        fails(&["info", &s(&edited)], 1, needle);
        fails(
            &[
                "predict",
                "--model",
                &s(&edited),
                "--embedded",
                "--limit",
                "1",
            ],
            1,
            needle,
        );
    }
    ok(&["info", &s(&m)]);
}

/// A float 0/1 label matrix is reported by its dtype (integers expected), not as a matrix
/// that should have been a vector.
#[test]
fn float_label_matrices_are_named_by_their_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let (x, y) = (dir.path().join("x.npy"), dir.path().join("y.npy"));
    npy::write_f32_matrix(&x, &[0.5; 6 * 4], 6, 4).unwrap();
    let eye: Vec<f32> = (0..6 * 3).map(|i| f32::from(i / 3 % 3 == i % 3)).collect();
    npy::write_f32_matrix(&y, &eye, 6, 3).unwrap();
    let out = dir.path().join("s.dfk");
    fails_leaving_nothing(
        &[
            "svm",
            "train",
            "--features",
            &s(&x),
            "--labels",
            &s(&y),
            "--out",
            &s(&out),
        ],
        1,
        "is not an integer type",
        &out,
    );
}

/// `svm train` names the labels file for a class without samples (a gap in the class indices,
/// an all-zero column), and refuses features without columns and a label matrix without
/// columns, before any training.
#[test]
fn svm_train_refuses_classes_without_samples_and_empty_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| s(&dir.path().join(name));
    let x: Vec<f32> = (0..6 * 3).map(|i| (i % 5) as f32 * 0.3).collect();
    dfk::npy::write_f32_matrix(p("x.npy"), &x, 6, 3).unwrap();
    dfk::npy::write_f32_matrix(p("x0.npy"), &[], 6, 0).unwrap();
    dfk::npy::write_i64_vector(p("gap.npy"), &[0, 0, 2, 2, 0, 2]).unwrap();
    dfk::npy::write_i64_vector(p("ok.npy"), &[0, 0, 1, 1, 0, 1]).unwrap();
    let mut group = dfk::npy::FileGroup::new();
    // Column 1 has no positive.
    group
        .i64_matrix(
            p("zero_col.npy"),
            &[1, 0, 0, 1, 0, 1, 0, 0, 1, 1, 0, 0, 1, 0, 1, 0, 0, 1],
            6,
            3,
        )
        .unwrap();
    group.i64_matrix(p("no_cols.npy"), &[], 6, 0).unwrap();
    group.commit().unwrap();
    let out = dir.path().join("m.dfk");
    let train = |x: &str, y: &str| {
        [
            "svm".to_string(),
            "train".into(),
            "--features".into(),
            p(x),
            "--labels".into(),
            p(y),
            "--out".into(),
            s(&out),
        ]
    };
    for (x, y, needles) in [
        (
            "x.npy",
            "gap.npy",
            &["gap.npy", "class 1 has no sample"][..],
        ),
        (
            "x.npy",
            "zero_col.npy",
            &["zero_col.npy", "class 1 has no sample"],
        ),
        (
            "x.npy",
            "no_cols.npy",
            &["no_cols.npy", "shape [6, 0]: no class columns"],
        ),
        ("x0.npy", "ok.npy", &["x0.npy", "0 columns"]),
    ] {
        let args = train(x, y);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        for needle in needles {
            fails_leaving_nothing(&args, 1, needle, &out);
        }
    }
    let args = train("x.npy", "ok.npy");
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.exists());
}

/// Numbered data (IDX labels) beside a model with named classes is read by index, and a
/// warning says which index is which class.
#[test]
fn numbered_data_beside_a_named_model_warns_of_the_index_order() {
    let dir = tempfile::tempdir().unwrap();
    let model = small_model(dir.path());
    let subset = |f: &str| {
        s(&std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../data/fashion-mnist-subset")
            .join(f))
    };
    let out = dfk(&[
        "eval",
        "--model",
        &s(&model),
        "--data",
        &subset("t10k-images-idx3-ubyte.gz"),
        "--format",
        "idx",
        "--labels",
        &subset("t10k-labels-idx1-ubyte.gz"),
        "--no-cache",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("numbers its classes") && err.contains("0 = T-shirt/top, 1 = Trouser"),
        "{err}"
    );
    // The embedded set names its classes as the model does: no warning.
    let out = dfk(&["eval", "--model", &s(&model), "--embedded", "--no-cache"]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("numbers its classes"));
}

/// Problems that reach `--max-iter` are reported in one warning for the whole solve, whatever
/// the number of threads (each thread's group of classes printed its own, one line per class
/// before that).
#[test]
fn svm_max_iter_is_one_warning() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.dfk");
    for threads in ["1", "2"] {
        let o = dfk(&[
            "--threads",
            threads,
            "svm",
            "train",
            "--features",
            &cli_fixture("features.npy"),
            "--labels",
            &cli_fixture("labels.npy"),
            "--max-iter",
            "1",
            "--eps",
            "1e-9",
            "--out",
            &s(&out),
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{err}");
        assert_eq!(err.matches("reached max_iter").count(), 1, "{err}");
    }
}

/// `fisher --gmm` takes the GMM of a pipeline model without SVMs (nothing to classify with,
/// but a GMM to encode with), as it did before it checked pipeline models whole.
#[test]
fn fisher_takes_a_pipeline_model_without_svms() {
    let dir = tempfile::tempdir().unwrap();
    let m = small_model(dir.path());
    let mut model = dfk::model::ModelFile::load(&m).unwrap();
    model.svm = None;
    let bare = dir.path().join("bare.dfk");
    model.save(&bare).unwrap();
    let d = model.gmm.d();
    let x = dir.path().join("x.npy");
    npy::write_f32_matrix(&x, &vec![0.1; 3 * d], 3, d).unwrap();
    let fv = dir.path().join("fv.npy");
    ok(&[
        "fisher",
        "--gmm",
        &s(&bare),
        "--descriptors",
        &s(&x),
        "--out",
        &s(&fv),
    ]);
    let (_, rows, cols) = npy::read_f32_matrix(&fv).unwrap();
    assert_eq!((rows, cols), (1, model.gmm.fisher_len()));
}

/// A model given through a pipe: `eval --report`, which used to read the model twice (and
/// failed after all its work, calling the pipe's end a damaged file), reads it once; `info`
/// and `deep --gmm`, which read it more than once, refuse a pipe before any work, saying so.
#[test]
#[cfg(unix)]
fn models_given_through_a_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let model = small_model(dir.path());
    let fifo = dir.path().join("model.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    // Nothing writes to the pipe: these must refuse it without opening it.
    fails(
        &["info", &s(&fifo)],
        2,
        "not a regular file (a pipe or device?): `dfk info` reads it twice",
    );
    fails(
        &[
            "deep",
            "--embedded",
            "--max-train",
            "40",
            "--gmm",
            &s(&fifo),
            "-o",
            &s(&dir.path().join("d.dfk")),
        ],
        2,
        "--gmm",
    );
    assert!(!dir.path().join("d.dfk").exists());

    let bytes = std::fs::read(&model).unwrap();
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::write(&fifo, bytes).unwrap())
    };
    let report = dir.path().join("report");
    ok(&[
        "-q",
        "eval",
        "--model",
        &s(&fifo),
        "--embedded",
        "--limit",
        "10",
        "--no-cache",
        "--report",
        &s(&report),
    ]);
    writer.join().unwrap();
    assert!(report.join("index.html").exists());
}
