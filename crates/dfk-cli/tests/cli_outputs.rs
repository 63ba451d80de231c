//! Outputs and limits checked before any work: an output that is also an input (or another
//! output), a folder that cannot take the output, and values whose cost has no bound (thread
//! counts, smoothing, resizing, label values) are refused with a message naming the flag or
//! file, and nothing is written.

mod common;
use common::*;

use dfk::npy;

#[test]
fn an_output_that_is_an_input_is_refused_and_the_input_kept() {
    let dir = tempfile::tempdir().unwrap();
    let x = dir.path().join("x.npy");
    std::fs::copy(cli_fixture("descriptors.npy"), &x).unwrap();
    let before = std::fs::read(&x).unwrap();
    fails(
        &[
            "gmm",
            "fit",
            "--descriptors",
            &s(&x),
            "--k",
            "2",
            "--out",
            &s(&x),
        ],
        2,
        "is also the input --descriptors",
    );
    // The same file through another spelling of its path.
    let other = format!("{}/./x.npy", dir.path().display());
    fails(
        &[
            "gmm",
            "fit",
            "--descriptors",
            &s(&x),
            "--k",
            "2",
            "--out",
            &other,
        ],
        2,
        "is also the input --descriptors",
    );
    let gmm = import_gmm(dir.path());
    let model = std::fs::read(&gmm).unwrap();
    fails(
        &[
            "fisher",
            "--gmm",
            &s(&gmm),
            "--descriptors",
            &s(&x),
            "--out",
            &s(&gmm),
        ],
        2,
        "is also the input --gmm",
    );
    assert_eq!(std::fs::read(&x).unwrap(), before);
    assert_eq!(std::fs::read(&gmm).unwrap(), model);
}

#[test]
fn an_unwritable_output_folder_fails_before_the_work() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("no/such/folder/g.dfk");
    fails(
        &[
            "gmm",
            "fit",
            "--descriptors",
            &cli_fixture("descriptors.npy"),
            "--k",
            "2",
            "--out",
            &s(&out),
        ],
        1,
        "--out",
    );
    // A report folder below a file: refused before training, and no model written.
    let file = dir.path().join("file.txt");
    std::fs::write(&file, b"x").unwrap();
    let model = dir.path().join("m.dfk");
    fails_leaving_nothing(
        &[
            "train",
            "--embedded",
            "--limit",
            "20",
            "--k",
            "2",
            "--no-cache",
            "--out",
            &s(&model),
            "--report",
            &s(&file.join("report")),
        ],
        2,
        "is not a folder",
        &model,
    );
    // An output that is a directory.
    fails(
        &[
            "gmm",
            "fit",
            "--descriptors",
            &cli_fixture("descriptors.npy"),
            "--k",
            "2",
            "--out",
            &s(dir.path()),
        ],
        2,
        "is a directory",
    );
}

#[test]
fn unbounded_values_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m.dfk");
    fails_leaving_nothing(
        &[
            "--threads",
            "20000",
            "gmm",
            "fit",
            "--descriptors",
            &cli_fixture("descriptors.npy"),
            "--k",
            "2",
            "--out",
            &s(&m),
        ],
        2,
        "at most 1024",
        &m,
    );
    for (flag, value, needle) in [
        ("--magnif", "1e-30", "magnif"),
        ("--resize", "100000x100000", "resize"),
    ] {
        fails_leaving_nothing(
            &[
                "train",
                "--embedded",
                "--limit",
                "20",
                "--k",
                "2",
                "--no-cache",
                flag,
                value,
                "--out",
                &s(&m),
            ],
            2,
            needle,
            &m,
        );
    }
    fails(&["bench", "--stage", "svm", "--svm-n", "0"], 2, "--svm-n");
}

#[test]
fn labels_must_be_class_indices_with_samples() {
    let dir = tempfile::tempdir().unwrap();
    let labels = npy::read_labels(cli_fixture("labels.npy")).unwrap();
    let top = *labels.iter().max().unwrap() as i64;
    let m = dir.path().join("s.dfk");
    // A huge label: refused by value (it used to size a per-class table of 2^40 entries).
    let huge = dir.path().join("huge.npy");
    let l: Vec<i64> = labels
        .iter()
        .map(|&l| if l as i64 == top { 1 << 40 } else { l as i64 })
        .collect();
    npy::write_i64_vector(&huge, &l).unwrap();
    fails_leaving_nothing(
        &[
            "svm",
            "train",
            "--features",
            &cli_fixture("features.npy"),
            "--labels",
            &s(&huge),
            "--out",
            &s(&m),
        ],
        1,
        "too large",
        &m,
    );
    // A gap in the class indices: the empty class is named as such.
    let gap = dir.path().join("gap.npy");
    let l: Vec<i64> = labels
        .iter()
        .map(|&l| if l as i64 == top { top + 2 } else { l as i64 })
        .collect();
    npy::write_i64_vector(&gap, &l).unwrap();
    fails_leaving_nothing(
        &[
            "svm",
            "train",
            "--features",
            &cli_fixture("features.npy"),
            "--labels",
            &s(&gap),
            "--out",
            &s(&m),
        ],
        1,
        &format!("class {top} has no training sample"),
        &m,
    );
}

/// Ctrl-C (SIGINT) or SIGTERM while an output is being written: exit status 128 + signal,
/// the target untouched and no hidden temporary file left in its folder.
#[cfg(unix)]
#[test]
fn an_interrupted_write_leaves_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let (d, images, per) = (32usize, 400usize, 500usize);
    let x: Vec<f32> = (0..images * per * d)
        .map(|i| ((i * 7919 % 1013) as f32 / 1013.0) - 0.5)
        .collect();
    let (xp, op, gp) = (
        dir.path().join("x.npy"),
        dir.path().join("o.npy"),
        dir.path().join("g.dfk"),
    );
    npy::write_f32_matrix(&xp, &x, images * per, d).unwrap();
    let offsets: Vec<i64> = (0..=images).map(|i| (i * per) as i64).collect();
    npy::write_i64_vector(&op, &offsets).unwrap();
    ok(&[
        "gmm",
        "fit",
        "--descriptors",
        &s(&xp),
        "--k",
        "256",
        "--max-iter",
        "1",
        "--out",
        &s(&gp),
    ]);
    let out = dir.path().join("fv.npy");
    for (signal, code) in [(libc::SIGINT, 130), (libc::SIGTERM, 143)] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_dfk"))
            .args(["-q", "--threads", "1", "fisher", "--gmm", &s(&gp)])
            .args([
                "--descriptors",
                &s(&xp),
                "--offsets",
                &s(&op),
                "--out",
                &s(&out),
            ])
            .spawn()
            .unwrap();
        let temp = || {
            std::fs::read_dir(dir.path())
                .unwrap()
                .filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().starts_with(".fv.npy.tmp-"))
        };
        // Signal once the temporary output exists (the writer makes it before encoding).
        let start = std::time::Instant::now();
        while !temp() {
            assert!(
                child.try_wait().unwrap().is_none(),
                "finished before it could be interrupted"
            );
            assert!(
                start.elapsed().as_secs() < 60,
                "no temporary output appeared"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        // SAFETY: sends a signal to the child's pid.
        assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0);
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(code), "signal {signal}");
        assert!(!temp(), "signal {signal}: a temporary file was left");
        assert!(!out.exists(), "signal {signal}: the output appeared");
    }
}

/// A subset that lacks some of the model's classes is scored: those classes' AP is null and
/// the mAP is the mean over the others.
#[test]
fn eval_scores_a_subset_without_some_classes() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m.dfk");
    ok(&[
        "-q",
        "train",
        "--embedded",
        "--limit",
        "40",
        "--k",
        "2",
        "--no-cache",
        "--out",
        &s(&m),
    ]);
    let out = ok(&[
        "--json",
        "eval",
        "--model",
        &s(&m),
        "--embedded",
        "--limit",
        "5",
        "--no-cache",
    ]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let aps = v["per_class_ap"].as_array().unwrap();
    assert_eq!(aps.len(), 10);
    let present: Vec<f64> = aps.iter().filter_map(|a| a.as_f64()).collect();
    assert!(!present.is_empty() && present.len() < 10, "{aps:?}");
    let mean = present.iter().sum::<f64>() / present.len() as f64;
    assert!((v["map"].as_f64().unwrap() - mean).abs() < 1e-12);
}

/// A damaged descriptor-cache entry is extracted afresh and replaced (same model as with the
/// intact cache), and a cache folder that cannot be written is only warned about.
#[test]
fn a_damaged_or_unwritable_cache_does_not_fail_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let train = |out: &std::path::Path, cache: &str| {
        let o = dfk(&[
            "train",
            "--embedded",
            "--limit",
            "40",
            "--k",
            "2",
            "--cache",
            cache,
            "--out",
            &s(out),
        ]);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{err}");
        err
    };
    // What was learned: everything but the history (which holds timings).
    let learned = |p: &std::path::Path| {
        let mut m = dfk::model::ModelFile::load(p).unwrap();
        m.history = serde_json::Value::Null;
        m
    };
    let (first, second, third) = (
        dir.path().join("1.dfk"),
        dir.path().join("2.dfk"),
        dir.path().join("3.dfk"),
    );
    train(&first, &s(&cache));
    let mut damaged = 0;
    for entry in std::fs::read_dir(&cache).unwrap() {
        let f = entry.unwrap().path().join("descriptors.npy");
        if f.is_file() {
            let bytes = std::fs::read(&f).unwrap();
            std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
            damaged += 1;
        }
    }
    assert!(damaged > 0, "the first run stored no cache entry");
    let err = train(&second, &s(&cache));
    assert!(err.contains("extracting afresh"), "{err}");
    assert_eq!(learned(&first), learned(&second));
    // The entries were replaced: the next run reads them without a warning.
    let err = train(&third, &s(&cache));
    assert!(!err.contains("extracting afresh"), "{err}");
    assert_eq!(learned(&first), learned(&third));
    // A cache below a file cannot be made: a warning, and the same model.
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let err = train(&third, &s(&file.join("cache")));
    assert!(
        err.contains("cannot store the descriptors in the cache"),
        "{err}"
    );
    assert_eq!(learned(&first), learned(&third));
}
