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

/// Integer settings beyond TOML's (64-bit signed) integers are refused before any work,
/// named by their flag and shown as integers: the model stores its configuration, which
/// `info --config` prints as TOML (it failed with "out-of-range value for u64 type").
#[test]
fn settings_beyond_toml_integers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m.dfk");
    let huge = "18446744073709551615";
    for (flag, command) in [
        ("--seed", "train"),
        ("--gmm-sample", "train"),
        ("--seed", "deep"),
        ("--gmm-iters", "deep"),
    ] {
        let mut args = vec![command, "--embedded", "-k", "2", "-o", m.to_str().unwrap()];
        if command == "train" {
            args.extend(["--limit", "20", "--no-cache"]);
        }
        args.extend([flag, huge]);
        fails_leaving_nothing(
            &args,
            2,
            &format!("{flag} {huge}: expected at most 9223372036854775807"),
            &m,
        );
    }
}

/// `bench --stage svm --write-svm DIR`: its outputs are checked before the work as every
/// command's are (they were written in place, with bare OS errors and partial files left),
/// land together, and the documented minimum `--svm-n 2` has both classes.
#[test]
fn bench_svm_data_are_written_whole_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let bench = |out: &std::path::Path| {
        vec![
            "bench".to_string(),
            "--stage".into(),
            "svm".into(),
            "--svm-n".into(),
            "2".into(),
            "--k".into(),
            "1".into(),
            "--d".into(),
            "2".into(),
            "--reps".into(),
            "1".into(),
            "--write-svm".into(),
            s(out),
        ]
    };
    let run =
        |out: &std::path::Path| dfk(&bench(out).iter().map(String::as_str).collect::<Vec<_>>());
    std::fs::write(p("afile"), b"").unwrap();
    let o = run(&p("afile"));
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--write-svm"));
    std::fs::create_dir_all(p("w/labels.f32")).unwrap();
    let o = run(&p("w"));
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--write-svm"));
    assert!(!p("w/fv.f32").exists());
    let o = run(&p("new/x"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let labels: Vec<f32> = std::fs::read(p("new/x/labels.f32"))
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(labels.len(), 2);
    assert!(
        labels.contains(&1.0) && labels.contains(&-1.0),
        "{labels:?}"
    );
    assert_eq!(
        std::fs::read_to_string(p("new/x/dims.txt")).unwrap(),
        "2 4\n"
    );
    fails(
        &["bench", "--stage", "em", "--write-svm", &s(&p("z"))],
        2,
        "only the svm stage writes its data",
    );
    fails(
        &[
            "bench", "--stage", "em", "--n", "3", "--k", "50", "--d", "1",
        ],
        2,
        "--k 50 is more than --n 3: the em stage",
    );
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
        &format!("gap.npy: class {top} has no sample"),
        &m,
    );
}

/// SIGTERM while `extract --out-dir` works: the folders it created for its outputs go again,
/// as they do when it fails (they were left empty).
#[cfg(unix)]
#[test]
fn an_interrupted_extraction_leaves_no_folders() {
    let dir = tempfile::tempdir().unwrap();
    let new = dir.path().join("new");
    let out = new.join("a");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_dfk"))
        .args([
            "-q",
            "--threads",
            "1",
            "extract",
            "--embedded",
            "--with-test",
        ])
        .args(["--no-cache", "--out-dir", &s(&out)])
        .spawn()
        .unwrap();
    // The folders are made after the PCA sample, before the sets are extracted.
    let start = std::time::Instant::now();
    while !out.join("test").exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before it could be interrupted"
        );
        assert!(start.elapsed().as_secs() < 120, "no output folder appeared");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    // SAFETY: sends a signal to the child's pid.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    assert_eq!(child.wait().unwrap().code(), Some(143));
    assert!(!new.exists(), "the folders made for the output were left");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// Ctrl-C (SIGINT), SIGTERM, SIGHUP (a closed terminal) or SIGQUIT while an output is being
/// written: exit status 128 + signal, the target untouched and no hidden temporary file left
/// in its folder.
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
    for (signal, code) in [
        (libc::SIGINT, 130),
        (libc::SIGTERM, 143),
        (libc::SIGHUP, 129),
        (libc::SIGQUIT, 131),
    ] {
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
    // Started as `nohup` starts it, with SIGHUP ignored: a hang-up leaves the run going. The
    // input is a FIFO that nobody writes, so the run waits until it is stopped.
    let fifo = dir.path().join("fifo.npy");
    let c_fifo = std::ffi::CString::new(s(&fifo)).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_fifo.as_ptr(), 0o600) }, 0);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_dfk"));
    child.args([
        "-q",
        "--threads",
        "1",
        "gmm",
        "fit",
        "--descriptors",
        &s(&fifo),
    ]);
    child.args(["--k", "2", "--out", &s(&dir.path().join("g2.dfk"))]);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut child, || {
            libc::signal(libc::SIGHUP, libc::SIG_IGN);
            Ok(())
        });
    }
    let mut child = child.spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    // SAFETY: sends a signal to the child's pid.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGHUP) },
        0
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    let after_hangup = child.try_wait().unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let code = child.wait().unwrap().code();
    assert!(
        after_hangup.is_none(),
        "an ignored SIGHUP ended the run: {after_hangup:?}"
    );
    assert_eq!(code, Some(143));
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
    // The confusion matrix (true class × predicted class) counts every image once, and the
    // classes without an image are listed (their AP is null).
    let confusion = v["confusion"].as_array().unwrap();
    assert_eq!(confusion.len(), 10);
    let total: u64 = confusion
        .iter()
        .flat_map(|row| row.as_array().unwrap())
        .map(|c| c.as_u64().unwrap())
        .sum();
    assert_eq!(total, v["images"].as_u64().unwrap());
    assert_eq!(v["class_names"].as_array().unwrap().len(), 10);
    assert_eq!(
        v["absent_classes"].as_array().unwrap().len(),
        aps.iter().filter(|a| a.is_null()).count()
    );
    // The stage timings, as the report has them.
    let stages: Vec<&str> = v["timings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["stage"].as_str().unwrap())
        .collect();
    assert!(stages.contains(&"score + metrics"), "{stages:?}");
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

/// A 32×32 binary PGM image (a format the loaders read) at `path`.
fn pgm(path: &std::path::Path, seed: u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut bytes = b"P5\n32 32\n255\n".to_vec();
    bytes.extend((0..32 * 32).map(|i: u32| (i as u8).wrapping_mul(seed | 1)));
    std::fs::write(path, bytes).unwrap();
}

/// Asserts that `file` still holds `before`.
fn unchanged(file: &std::path::Path, before: &[u8]) {
    assert_eq!(
        std::fs::read(file).unwrap(),
        before,
        "{} was changed",
        file.display()
    );
}

/// Outputs that would replace an input are refused before any work, naming both: a model
/// written over the report's own files (or the report over the model), the configuration
/// file, an image or descriptor file of the data set, and `gmm export` into its input's folder.
#[test]
fn outputs_that_would_replace_inputs_or_each_other_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    let train = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = ["train", "--embedded", "--limit", "40", "--k", "2"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let run = |args: Vec<String>, needle: &str| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fails(&args, 2, needle);
    };
    // The model as one of the report's files (the folder exists, from an earlier run), and
    // the model as the report folder.
    let report = p("report");
    std::fs::create_dir(&report).unwrap();
    for name in ["report.json", "index.html"] {
        let model = report.join(name);
        run(
            train(&["--no-cache", "--out", &s(&model), "--report", &s(&report)]),
            &format!("--report and --out are the same file ({})", model.display()),
        );
        assert!(!model.exists(), "{} was written", model.display());
    }
    let new = p("new");
    run(
        train(&["--no-cache", "--out", &s(&new), "--report", &s(&new)]),
        "lies inside --out",
    );
    assert!(!new.exists());
    // The report of `dfk eval` over its model.
    let model = report.join("index.html");
    std::fs::write(&model, b"a model").unwrap();
    fails(
        &[
            "eval",
            "--model",
            &s(&model),
            "--embedded",
            "--no-cache",
            "--report",
            &s(&report),
        ],
        2,
        "--report",
    );
    unchanged(&model, b"a model");
    assert!(!report.join("report.json").exists());
    // The configuration file.
    let config = p("c.toml");
    std::fs::write(&config, "seed = 3\n").unwrap();
    run(
        train(&["--no-cache", "--config", &s(&config), "--out", &s(&config)]),
        "is also the input --config",
    );
    unchanged(&config, b"seed = 3\n");
    // An image named in a list file, or found in a class folder.
    let mut list = String::new();
    for i in 0..6u8 {
        let class = ["a", "b"][i as usize % 2];
        pgm(&p(&format!("img/{class}/{i}.pgm")), i);
        list.push_str(&format!("img/{class}/{i}.pgm {class}\n"));
    }
    std::fs::write(p("list.txt"), list).unwrap();
    let image = p("img/a/0.pgm");
    let before = std::fs::read(&image).unwrap();
    for data in [p("list.txt"), p("img")] {
        fails(
            &[
                "train",
                "--data",
                &s(&data),
                "--k",
                "2",
                "--no-cache",
                "--out",
                &s(&image),
            ],
            2,
            "is also an image",
        );
        unchanged(&image, &before);
    }
    fails(
        &[
            "encode",
            "--model",
            &s(&config),
            "--data",
            &s(&p("list.txt")),
            "--no-cache",
            "--out",
            &s(&p("fv.npy")),
            "--labels-out",
            &s(&image),
        ],
        2,
        "--labels-out",
    );
    unchanged(&image, &before);
    assert!(!p("fv.npy").exists());
    fails(
        &[
            "deep",
            "--data",
            &s(&p("list.txt")),
            "-k",
            "2",
            "--out",
            &s(&p("d.dfk")),
            "--history",
            &s(&image),
        ],
        2,
        "--history",
    );
    unchanged(&image, &before);
    assert!(!p("d.dfk").exists());
    // A descriptor file named in a `--format npy` list.
    let desc = p("desc/0.npy");
    std::fs::create_dir_all(p("desc")).unwrap();
    for i in 0..4 {
        let rows: Vec<f32> = (0..12).map(|j| (i * 12 + j) as f32).collect();
        npy::write_f32_matrix(p(&format!("desc/{i}.npy")), &rows, 3, 4).unwrap();
    }
    std::fs::write(p("desc/list.txt"), "0.npy a\n1.npy b\n2.npy a\n3.npy b\n").unwrap();
    let before = std::fs::read(&desc).unwrap();
    fails(
        &[
            "train",
            "--data",
            &s(&p("desc/list.txt")),
            "--format",
            "npy",
            "--spatial",
            "false",
            "--k",
            "1",
            "--out",
            &s(&desc),
        ],
        2,
        "is also a descriptor file listed in --data",
    );
    unchanged(&desc, &before);
    // `gmm export` into the folder of its input, under one of the names it writes.
    let gmm = import_gmm(dir.path());
    let input = p("gx/means.npy");
    std::fs::create_dir_all(p("gx")).unwrap();
    std::fs::copy(&gmm, &input).unwrap();
    let before = std::fs::read(&input).unwrap();
    fails(
        &["gmm", "export", &s(&input), "--out-dir", &s(&p("gx"))],
        2,
        "is also the input GMM file",
    );
    unchanged(&input, &before);
    assert!(!p("gx/variances.npy").exists());
}

/// An output path that cannot be written is refused before the work, naming the flag and the
/// path, and no other output is written: a file path ending in a separator (`newd/`), a
/// directory where a file is expected, a file where a report or `--out-dir` folder goes, and a
/// directory in the place of one of a report's files.
#[test]
fn blocked_output_paths_fail_before_the_work() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    let model = p("m.dfk");
    std::fs::write(&model, b"not read: the outputs are checked first").unwrap();
    let fv = p("fv.npy");
    fails_leaving_nothing(
        &[
            "encode",
            "--model",
            &s(&model),
            "--embedded",
            "--limit",
            "20",
            "--no-cache",
            "--out",
            &s(&fv),
            "--labels-out",
            &format!("{}/", p("nd").display()),
        ],
        2,
        "--labels-out",
        &fv,
    );
    let deep = p("d.dfk");
    let history = format!("{}/", p("newd").display());
    fails_leaving_nothing(
        &[
            "deep",
            "--embedded",
            "--max-train",
            "40",
            "-k",
            "2",
            "--iters",
            "1",
            "--out",
            &s(&deep),
            "--history",
            &history,
        ],
        2,
        &format!("--history {history}: ends in a path separator"),
        &deep,
    );
    assert!(!p("d.dfk.ckpt").exists() && !p("newd").exists());
    // An existing folder given as a file: with or without the separator.
    std::fs::create_dir(p("folder")).unwrap();
    for out in [s(&p("folder")), format!("{}/", p("folder").display())] {
        fails(
            &[
                "svm",
                "train",
                "--features",
                &cli_fixture("features.npy"),
                "--labels",
                &cli_fixture("labels.npy"),
                "--out",
                &out,
            ],
            2,
            "is a directory",
        );
    }
    // `extract --with-test` writes into DIR/train and DIR/test: a file named train blocks it.
    let x = p("x");
    std::fs::create_dir(&x).unwrap();
    std::fs::write(x.join("train"), b"").unwrap();
    let train_dir = x.join("train");
    fails(
        &[
            "extract",
            "--embedded",
            "--limit",
            "20",
            "--with-test",
            "--no-cache",
            "--out-dir",
            &s(&x),
        ],
        2,
        &format!("{} exists and is not a folder", train_dir.display()),
    );
    assert!(!x.join("test").exists());
    // A report whose index.html is a folder: refused before training, no model written.
    let report = p("report");
    std::fs::create_dir_all(report.join("index.html")).unwrap();
    let out = p("trained.dfk");
    fails_leaving_nothing(
        &[
            "train",
            "--embedded",
            "--limit",
            "40",
            "--k",
            "2",
            "--no-cache",
            "--out",
            &s(&out),
            "--report",
            &s(&report),
        ],
        2,
        &format!("{}: is a directory", report.join("index.html").display()),
        &out,
    );
    assert!(!report.join("report.json").exists());
}

/// A folder written as `DIR/.` is the folder DIR (it used to pass the checks and then fail to
/// be created after the work, leaving the other outputs written); a file written as `FILE/.` is
/// refused before the work like `FILE/`; a symbolic link that leads nowhere (or into a folder
/// that does not exist) is refused before the work, not after it.
#[test]
fn dot_folders_and_dangling_links_are_checked_before_the_work() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    // A quick training run writing to `out`, with `extra` flags.
    let quick = |out: &str, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "train",
            "--embedded",
            "--limit",
            "40",
            "--threads",
            "2",
            "--resize",
            "none",
            "--gmm-iter",
            "3",
            "--pca-dims",
            "8",
            "--no-cache",
            "-q",
            "--out",
            out,
        ]
        .iter()
        .chain(extra)
        .map(|a| a.to_string())
        .collect();
        if !extra.contains(&"--k") {
            v.extend(["--k".to_string(), "2".to_string()]);
        }
        v
    };
    let run_ok = |v: Vec<String>| ok(&strs(&v));
    let run_fails = |v: Vec<String>, code: i32, needle: &str| fails(&strs(&v), code, needle);
    // A report folder and an --out-dir written with a trailing `.`: created and filled.
    let model = p("t.dfk");
    let report = format!("{}/.", p("nr").display());
    run_ok(quick(&s(&model), &["--report", &report]));
    assert!(p("nr").join("index.html").is_file() && p("nr").join("report.json").is_file());
    let out_dir = format!("{}/.", p("newg").display());
    ok(&["gmm", "export", &s(&model), "--out-dir", &out_dir]);
    assert!(p("newg").join("weights.npy").is_file());
    // A file output written as a folder: refused before training, nothing written.
    let dotted = format!("{}/.", p("new.dfk").display());
    run_fails(
        quick(&dotted, &[]),
        2,
        &format!("--out {dotted}: ends in a path separator or `.`"),
    );
    assert!(!p("new.dfk").exists());
    // With a report: neither the report folder nor the model is written.
    let nr2 = p("nr2");
    run_fails(quick(&dotted, &["--report", &s(&nr2)]), 2, "--out");
    assert!(!nr2.exists());
    // Dangling links: to a missing file, and into a missing folder.
    #[cfg(unix)]
    for (link, target) in [("dl.dfk", "nowhere.dfk"), ("dl2.dfk", "nodir/x.dfk")] {
        std::os::unix::fs::symlink(target, p(link)).unwrap();
        run_fails(
            quick(&s(&p(link)), &["--report", &s(&nr2)]),
            2,
            &format!(
                "--out {}: a symbolic link (to {target}) whose target does not exist",
                s(&p(link))
            ),
        );
        assert!(!nr2.exists() && !p(target).exists());
        fails(
            &[
                "gmm",
                "fit",
                "--descriptors",
                &cli_fixture("two_images.npy"),
                "--k",
                "2",
                "--out",
                &s(&p(link)),
            ],
            2,
            "whose target does not exist",
        );
    }
    // A link to an existing file is written through.
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink("t.dfk", p("link.dfk")).unwrap();
        let before = std::fs::read(&model).unwrap();
        run_ok(quick(&s(&p("link.dfk")), &["--seed", "1", "--k", "3"]));
        assert!(std::fs::symlink_metadata(p("link.dfk"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_ne!(std::fs::read(&model).unwrap(), before);
    }
}

/// A class folder without images is an error naming it when the data is loaded (it used to
/// fail after SIFT, GMM and Fisher vectors with "class 0 has no training sample"), and an
/// output folder inside an image folder (which would be a class folder on the next run) is
/// refused before any work.
#[test]
fn empty_class_folders_and_outputs_inside_the_data_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("imgs");
    for (i, class) in ["b", "c"].iter().enumerate() {
        pgm(&imgs.join(class).join("1.pgm"), i as u8 + 1);
    }
    std::fs::create_dir_all(imgs.join("aempty")).unwrap();
    std::fs::write(imgs.join("aempty").join("notes.txt"), b"not an image").unwrap();
    let out = dir.path().join("e.dfk");
    let quick = |extra: &[&str]| -> Vec<String> {
        [
            "train",
            "--data",
            &s(&imgs),
            "--threads",
            "2",
            "--resize",
            "none",
            "--k",
            "2",
            "--pca-dims",
            "8",
            "--no-cache",
            "-q",
            "--out",
            &s(&out),
        ]
        .iter()
        .chain(extra)
        .map(|a| a.to_string())
        .collect()
    };
    fails_leaving_nothing(
        &strs(&quick(&[])),
        1,
        &format!(
            "class folder {} (it holds no png/jpg/jpeg/bmp/pgm/ppm/pbm/pnm/jpe/jfif file",
            imgs.join("aempty").display()
        ),
        &out,
    );
    std::fs::remove_dir_all(imgs.join("aempty")).unwrap();
    let report = imgs.join("rep");
    fails_leaving_nothing(
        &strs(&quick(&["--report", &s(&report)])),
        2,
        &format!(
            "--report {} lies inside the image folder --data {}",
            report.display(),
            imgs.display()
        ),
        &out,
    );
    assert!(!report.exists());
    let x = imgs.join("b").join("x");
    fails(
        &[
            "extract",
            "--data",
            &s(&imgs),
            "--threads",
            "2",
            "--no-cache",
            "--out-dir",
            &s(&x),
        ],
        2,
        "--out-dir",
    );
    assert!(!x.exists());
    // eval too, with a model trained on the folder.
    ok(&strs(&quick(&[])));
    fails(
        &[
            "eval",
            "--model",
            &s(&out),
            "--data",
            &s(&imgs),
            "--threads",
            "2",
            "--no-cache",
            "--report",
            &s(&report),
        ],
        2,
        "lies inside the image folder",
    );
    assert!(!report.exists());
}

/// Flag values that were reported without their flag, or as data errors (exit 1): `--limit 0`
/// ("data set is empty"), a float32 flag beyond f32 (printed as `inf`), `bench` with only one
/// of `--data`/`--gmm`, too few `--data` rows for `--images`/`--per-image`, and `--k` above
/// `--n` in the init stage.
#[test]
fn small_flag_errors_name_their_flags() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("l.dfk");
    fails_leaving_nothing(
        &["train", "--embedded", "--limit", "0", "--out", &s(&out)],
        2,
        "'--limit <LIMIT>': expected at least 1 image",
        &out,
    );
    fails_leaving_nothing(
        &[
            "gmm",
            "fit",
            "--descriptors",
            &cli_fixture("two_images.npy"),
            "--k",
            "2",
            "--posterior-threshold",
            "1e40",
            "--out",
            &s(&out),
        ],
        2,
        "`1e40` is not a finite 32-bit float",
        &out,
    );
    let x = cli_fixture("two_images.npy");
    fails(
        &["--threads", "2", "bench", "--stage", "stats", "--data", &x],
        2,
        "--data without --gmm",
    );
    let prefix = dir.path().join("gp");
    let part = |name: &str| s(&dir.path().join(format!("gp_{name}.npy")));
    npy::write_f32_matrix(part("means"), &[0.0; 8], 2, 4).unwrap();
    npy::write_f32_matrix(part("variances"), &[1.0; 8], 2, 4).unwrap();
    npy::write_f32_vector(part("weights"), &[0.5, 0.5]).unwrap();
    fails(
        &[
            "--threads",
            "2",
            "bench",
            "--stage",
            "stats",
            "--data",
            &x,
            "--gmm",
            &s(&prefix),
            "--reps",
            "1",
        ],
        2,
        "(--images 200 × --per-image 1000)",
    );
    // A NaN among the rows a stage reads is named with its file in every stage (the stats
    // stage timed it before); a dimension mismatch names both files; the stages that make
    // their own data refuse the files instead of ignoring them.
    let nan = dir.path().join("nan.npy");
    let mut values = vec![0.5f32; 6 * 4];
    values[2 * 4 + 1] = f32::NAN;
    npy::write_f32_matrix(&nan, &values, 6, 4).unwrap();
    let gmm_args = ["--data", &s(&nan), "--gmm", &s(&prefix)];
    for stage in [
        &["--stage", "stats", "--images", "2", "--per-image", "3"][..],
        &["--stage", "em", "--n", "6", "--k", "2"],
    ] {
        let args = [&["bench", "--reps", "1"][..], stage, &gmm_args].concat();
        fails(&args, 1, "nan.npy");
        fails(&args, 1, "row 2");
    }
    let wide = dir.path().join("wide.npy");
    npy::write_f32_matrix(&wide, &[0.5; 6 * 3], 6, 3).unwrap();
    fails(
        &[
            "bench",
            "--stage",
            "em",
            "--n",
            "6",
            "--data",
            &s(&wide),
            "--gmm",
            &s(&prefix),
        ],
        1,
        &format!(
            "wide.npy has 3 columns, but the GMM of --gmm {} has 4",
            s(&prefix)
        ),
    );
    for stage in ["svm", "sift", "peak"] {
        fails(
            &[
                "bench",
                "--stage",
                stage,
                "--data",
                &s(&nan),
                "--gmm",
                &s(&prefix),
            ],
            2,
            "make their own data",
        );
    }
    fails(
        &[
            "--threads",
            "2",
            "bench",
            "--stage",
            "init",
            "--k",
            "200",
            "--n",
            "10",
        ],
        2,
        "--k 200 is more than --n 10",
    );
    fails(&["bench", "--reps", "0"], 2, "--reps");
}

/// Borrowed arguments for [`ok`] and [`fails`].
fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// `dfk bench` refuses sizes it cannot run (zero dimensions or components) and sizes whose
/// buffers would not fit in memory, naming the flags and the bound, instead of panicking or
/// aborting on a failed allocation.
#[test]
fn bench_sizes_are_checked_before_anything_is_allocated() {
    fails(&["bench", "--stage", "stats", "--d", "0"], 2, "--d 0");
    fails(&["bench", "--stage", "stats", "--k", "0"], 2, "--k 0");
    fails(
        &["bench", "--stage", "encode", "--images", "0"],
        2,
        "--images 0",
    );
    fails(&["bench", "--stage", "em", "--n", "0"], 2, "--n 0");
    for (stage, flag) in [
        ("svm", "--svm-n"),
        ("em", "--n"),
        ("init", "--n"),
        ("stats", "--images"),
        ("encode", "--images"),
        ("backward", "--images"),
    ] {
        fails(
            &["bench", "--stage", stage, flag, "100000000000"],
            2,
            &format!("{flag} 100000000000"),
        );
        fails(
            &["bench", "--stage", stage, flag, "100000000000"],
            2,
            "at most 32 GiB",
        );
    }
    fails(
        &[
            "bench",
            "--stage",
            "stats",
            "--images",
            &usize::MAX.to_string(),
        ],
        2,
        "at most 32 GiB",
    );
    // Measured data with fewer rows than the sizes ask for, or --data without --gmm: usage
    // errors naming the flags.
    let dir = tempfile::tempdir().unwrap();
    let (data, prefix) = (dir.path().join("x.npy"), dir.path().join("g"));
    npy::write_f32_matrix(&data, &[0.5; 3 * 2], 3, 2).unwrap();
    npy::write_f32_matrix(dir.path().join("g_means.npy"), &[0.0; 2], 1, 2).unwrap();
    npy::write_f32_matrix(dir.path().join("g_variances.npy"), &[1.0; 2], 1, 2).unwrap();
    npy::write_f32_vector(dir.path().join("g_weights.npy"), &[1.0]).unwrap();
    let (data, prefix) = (data.display().to_string(), prefix.display().to_string());
    fails(
        &[
            "bench", "--stage", "em", "--n", "10", "--data", &data, "--gmm", &prefix,
        ],
        2,
        "has 3 rows, the stage needs 10 (--n 10)",
    );
    fails(
        &["bench", "--stage", "em", "--n", "2", "--data", &data],
        2,
        "give both --data and --gmm",
    );
}

/// Settings whose value is out of range are usage errors naming the flag and the range:
/// `--k` beyond what EM's weight floor allows, a `--bias` that does not fit in a float32, a
/// `--variance-floor` above 1 (`1e300` overflowed the variances), `--resize` above 4096×4096
/// pixels (8192×8192 took about 10 GB per image) or below one descriptor, a `--gmm-sample`
/// below `--k`, `--pca-dims` above the SIFT descriptor's 128 values.
#[test]
fn out_of_range_settings_name_their_flag() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m.dfk");
    let train = |flag: &str, value: &str, needle: &str| {
        fails_leaving_nothing(
            &[
                "train",
                "--embedded",
                "--limit",
                "20",
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
    };
    train(
        "--k",
        "1000000",
        "--k 1000000: expected at most 999999 components",
    );
    train("--bias", "1e308", "--bias");
    train(
        "--variance-floor",
        "1e300",
        "--variance-floor 1e300: expected a value in [0, 1]",
    );
    train("--resize", "10000x10000", "at most 67108864 pixels");
    // Settings that could only fail after the work (on every image, or once the descriptors
    // are sampled or projected) are refused before it, naming the flags.
    train(
        "--gmm-sample",
        "3",
        "--gmm-sample 3 is less than --k 64: EM needs at least one descriptor per component",
    );
    train(
        "--resize",
        "1x1",
        "--resize 1x1: expected at least 19x19 pixels, the extent of one descriptor with the bin \
         sizes [4, 6]",
    );
    train(
        "--pca-dims",
        "1000",
        "--pca-dims 1000: expected at most the input dimension 128",
    );
    fails_leaving_nothing(
        &[
            "svm",
            "train",
            "--features",
            &cli_fixture("features.npy"),
            "--labels",
            &cli_fixture("labels.npy"),
            "--bias",
            "1e308",
            "--out",
            &s(&m),
        ],
        2,
        "--bias",
        &m,
    );
    fails_leaving_nothing(
        &[
            "gmm",
            "fit",
            "--descriptors",
            &cli_fixture("descriptors.npy"),
            "--k",
            "2",
            "--variance-floor",
            "1e300",
            "--out",
            &s(&m),
        ],
        2,
        "--variance-floor 1e300",
        &m,
    );
    // A configuration file's value is named by its key and the file.
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "[svm]\nbias = 1e39\n").unwrap();
    train("--config", &s(&config), "svm.bias = inf in");
}

/// Warnings on a stderr that is not a terminal (a log file, a pipe) carry no colour codes.
#[test]
fn warnings_are_plain_text_when_stderr_is_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let o = dfk(&[
        "train",
        "--embedded",
        "--limit",
        "40",
        "--k",
        "2",
        "--cache",
        &s(&file.join("cache")),
        "--out",
        &s(&dir.path().join("m.dfk")),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("WARN"), "{err}");
    assert!(!err.contains('\u{1b}'), "colour codes in {err:?}");
}

/// Named classes are matched to the model's by name in `encode --labels-out` as in `eval`
/// (a folder with only some of the model's classes gets the model's indices), and named data
/// beside a model whose classes are only numbered is an error in both (it was scored by
/// position).
#[test]
fn class_names_are_matched_to_the_model_or_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    let mut list = String::new();
    for (c, class) in ["ant", "bee", "cat"].iter().enumerate() {
        for i in 0..6u8 {
            let img = p(&format!("imgs/{class}/{i}.pgm"));
            pgm(&img, 17 * c as u8 + i);
            list.push_str(&format!("{} {c}\n", s(&img)));
        }
    }
    std::fs::write(p("numbers.list"), list).unwrap();
    let (named, numbered) = (p("named.dfk"), p("numbered.dfk"));
    for (data, model) in [(p("imgs"), &named), (p("numbers.list"), &numbered)] {
        ok(&[
            "-q",
            "train",
            "--data",
            &s(&data),
            "--k",
            "2",
            "--no-cache",
            "--out",
            &s(model),
        ]);
    }
    // Only bee and cat: the model's classes 1 and 2.
    for class in ["bee", "cat"] {
        copy_folder(&p(&format!("imgs/{class}")), &p(&format!("some/{class}")));
    }
    let labels = p("y.npy");
    ok(&[
        "-q",
        "encode",
        "--model",
        &s(&named),
        "--data",
        &s(&p("some")),
        "--no-cache",
        "--out",
        &s(&p("f.npy")),
        "--labels-out",
        &s(&labels),
    ]);
    assert_eq!(
        npy::read_i64_vector(&labels).unwrap(),
        [vec![1; 6], vec![2; 6]].concat()
    );
    let refused = "names its classes [ant, bee, cat] but the model";
    fails(
        &[
            "eval",
            "--model",
            &s(&numbered),
            "--data",
            &s(&p("imgs")),
            "--no-cache",
        ],
        1,
        refused,
    );
    fails_leaving_nothing(
        &[
            "encode",
            "--model",
            &s(&numbered),
            "--data",
            &s(&p("imgs")),
            "--no-cache",
            "--out",
            &s(&p("g.npy")),
            "--labels-out",
            &s(&p("z.npy")),
        ],
        1,
        refused,
        &p("g.npy"),
    );
}

fn copy_folder(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// `--out /dev/stdout` when stdout is a pipe (a link to `pipe:[…]`, which has no path) is
/// written in place, as a FIFO is; it was refused as a link to a missing file.
#[cfg(target_os = "linux")]
#[test]
fn dev_stdout_on_a_pipe_is_written_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let gmm = import_gmm(dir.path());
    let out = dfk(&[
        "-q",
        "fisher",
        "--gmm",
        &s(&gmm),
        "--descriptors",
        &cli_fixture("two_images.npy"),
        "--offsets",
        &cli_fixture("two_offsets.npy"),
        "--out",
        "/dev/stdout",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = dir.path().join("fv.npy");
    std::fs::write(&file, &out.stdout).unwrap();
    let (_, rows, cols) = npy::read_f32_matrix(&file).unwrap();
    assert_eq!((rows, cols), (2, 24));
}

/// `--json` prints one JSON document on stdout: `info --config` wraps its TOML, `predict
/// --out` prints a summary, and CSV predictions on stdout are refused.
#[test]
fn json_output_is_one_json_document() {
    let dir = tempfile::tempdir().unwrap();
    let v: serde_json::Value = serde_json::from_str(&ok(&["--json", "info", "--config"])).unwrap();
    assert!(v["toml"].as_str().unwrap().contains("[sift]"), "{v}");
    let k = v["config"]["gmm"]["k"].as_u64().unwrap();
    assert!(
        v["toml"].as_str().unwrap().contains(&format!("k = {k}")),
        "{v}"
    );
    let m = small_model(dir.path());
    let out = dir.path().join("p.csv");
    let m = s(&m);
    let predict = [
        "--json",
        "predict",
        "--model",
        &m,
        "--embedded",
        "--limit",
        "2",
        "--output-format",
        "csv",
    ];
    let v: serde_json::Value =
        serde_json::from_str(&ok(&[&predict[..], &["--out", &s(&out)]].concat())).unwrap();
    let csv = std::fs::read_to_string(&out).unwrap();
    assert!(csv.starts_with("image,label,class"));
    assert_eq!(
        v["images"].as_u64().unwrap() as usize,
        csv.lines().count() - 1
    );
    fails(&predict, 2, "--json with --output-format csv");
}

/// A configuration file with a value of the wrong type or out of range is a usage error
/// naming the file (it was exit 1 for some keys, 2 for others), and `window` takes the flag's
/// lower-case spelling too.
#[test]
fn configuration_values_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (config, m) = (dir.path().join("c.toml"), dir.path().join("m.dfk"));
    let train = |text: &str| {
        std::fs::write(&config, text).unwrap();
        dfk(&[
            "-q",
            "train",
            "--embedded",
            "--limit",
            "60",
            "--k",
            "2",
            "--no-cache",
            "--config",
            &s(&config),
            "--out",
            &s(&m),
        ])
    };
    for text in ["pyramid = [[0, 1]]\n", "[gmm]\nk = \"four\"\n"] {
        let o = train(text);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{text}: {err}");
        assert!(err.contains("c.toml: invalid configuration"), "{err}");
        assert!(!m.exists());
    }
    assert!(train("[sift]\nwindow = \"flat\"\n").status.success());
}

/// Training data with a single class is refused before any extraction, naming the data (it
/// failed after the whole pipeline with "all 3 samples of class 0 are positive").
#[test]
fn a_single_class_is_refused_before_the_work() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..3 {
        pgm(&dir.path().join(format!("imgs/only/{i}.pgm")), i);
    }
    let m = dir.path().join("m.dfk");
    let imgs = s(&dir.path().join("imgs"));
    fails_leaving_nothing(
        &["train", "--data", &imgs, "--no-cache", "--out", &s(&m)],
        1,
        "have 1 class (only): a classifier needs at least two",
        &m,
    );
    fails_leaving_nothing(
        &["deep", "--data", &imgs, "-o", &s(&m)],
        1,
        "1 class: a classifier needs at least two",
        &m,
    );
}

/// `predict` given a folder reads the images directly in it, sorted by name, as if they were
/// listed; a folder of class sub-folders points at --data, one without images is named; a
/// missing image is named as such.
#[test]
fn predict_names_what_an_image_argument_is() {
    let dir = tempfile::tempdir().unwrap();
    let m = small_model(dir.path());
    let folder = s(dir.path());
    fails(
        &["predict", "--model", &s(&m), &folder],
        1,
        &format!("{folder}: the folder holds no image"),
    );
    for (i, name) in ["b.pgm", "a.PGM", "c.pgm", ".hidden.pgm"]
        .iter()
        .enumerate()
    {
        pgm(&dir.path().join("flat").join(name), i as u8 + 1);
    }
    std::fs::write(dir.path().join("flat/notes.txt"), b"not an image").unwrap();
    std::fs::write(dir.path().join("flat/anim.gif"), b"GIF89a").unwrap();
    let flat = dir.path().join("flat");
    let listed: Vec<String> = ["a.PGM", "b.pgm", "c.pgm"]
        .iter()
        .map(|n| s(&flat.join(n)))
        .collect();
    let mut args = vec!["predict", "--model", &m.to_str().unwrap()];
    args.extend(listed.iter().map(String::as_str));
    let by_name = ok(&args);
    let by_folder = ok(&["predict", "--model", &s(&m), &s(&flat)]);
    assert_eq!(by_folder, by_name);
    let o = dfk(&["predict", "--model", &s(&m), &s(&flat)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("1 file of other image formats not read") && err.contains("anim.gif"),
        "{err}"
    );
    assert_eq!(by_folder.lines().count(), 4, "{by_folder}");
    pgm(&dir.path().join("classes/a/0.pgm"), 1);
    let classes = s(&dir.path().join("classes"));
    fails(
        &["predict", "--model", &s(&m), &classes],
        2,
        &format!("give --data {classes}"),
    );
    let missing = s(&dir.path().join("nope.png"));
    fails(
        &["predict", "--model", &s(&m), &missing],
        1,
        "nope.png: no such file: expected an image file",
    );
}

/// `--format list` given a folder, or `--format folder` given a file, says which format reads
/// what (it said only "Is a directory" / "Not a directory").
#[test]
fn a_data_format_that_does_not_fit_the_path_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("l.txt");
    std::fs::write(&list, "a.png 0\n").unwrap();
    let (d, l) = (s(dir.path()), s(&list));
    let m = s(&dir.path().join("m.dfk"));
    fails(
        &[
            "train",
            "--data",
            &d,
            "--format",
            "list",
            "--no-cache",
            "--out",
            &m,
        ],
        2,
        "is a folder, but --format list reads a list file",
    );
    fails(
        &[
            "train",
            "--data",
            &l,
            "--format",
            "folder",
            "--no-cache",
            "--out",
            &m,
        ],
        2,
        "is a file, but --format folder reads a folder of class sub-folders",
    );
}

/// What a class folder holds but the loader does not read (a nested folder, a GIF) is named in
/// a warning instead of being passed over in silence.
#[test]
fn entries_a_class_folder_does_not_read_are_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    for (class, seed) in [("a", 1), ("b", 2)] {
        for i in 0..2u8 {
            pgm(
                &dir.path().join(format!("imgs/{class}/{i}.pgm")),
                seed * 10 + i,
            );
        }
    }
    std::fs::create_dir(dir.path().join("imgs/a/more")).unwrap();
    std::fs::write(dir.path().join("imgs/b/x.gif"), b"GIF89a").unwrap();
    std::fs::write(dir.path().join("imgs/b/notes.txt"), b"-").unwrap();
    let o = dfk(&[
        "train",
        "--data",
        &s(&dir.path().join("imgs")),
        "--k",
        "2",
        "--no-cache",
        "--out",
        &s(&dir.path().join("m.dfk")),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    for entry in [
        "imgs/a: 1 entry not read",
        "imgs/b: 1 entry not read",
        "x.gif",
    ] {
        assert!(err.contains(entry), "{entry:?} not in {err}");
    }
    assert!(!err.contains("notes.txt"), "{err}");
}

/// A JPEG whose EXIF orientation says "turn it" is read as stored (its scores are those of the
/// same pixels without the tag), with one warning per run naming the first such file.
#[test]
fn an_exif_orientation_is_named_once_and_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    let m = small_model(dir.path());
    let plain = dir.path().join("plain.jpg");
    image::RgbImage::from_fn(120, 80, |x, y| {
        image::Rgb([(x * 7 + y * 13) as u8, (x * y) as u8, (x ^ y) as u8])
    })
    .save(&plain)
    .unwrap();
    let bytes = std::fs::read(&plain).unwrap();
    // APP1 "Exif": a big-endian TIFF header and one IFD entry, Orientation (0x0112) = 6.
    let mut app1 = vec![0xFF, 0xE1, 0x00, 0x22];
    app1.extend_from_slice(b"Exif\0\0MM\0\x2a\0\0\0\x08\0\x01");
    app1.extend_from_slice(&[
        0x01, 0x12, 0x00, 0x03, 0, 0, 0, 1, 0x00, 0x06, 0, 0, 0, 0, 0, 0,
    ]);
    let mut tagged = bytes[..2].to_vec();
    tagged.extend_from_slice(&app1);
    tagged.extend_from_slice(&bytes[2..]);
    let turned = dir.path().join("turned.jpg");
    std::fs::write(&turned, &tagged).unwrap();
    let out = dfk(&[
        "predict",
        "--model",
        &s(&m),
        &s(&turned),
        &s(&plain),
        &s(&turned),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(err.matches("EXIF orientation").count(), 1, "{err}");
    assert!(
        err.contains(&format!("{}: its EXIF orientation (Rotate90)", s(&turned))),
        "{err}"
    );
    let csv = String::from_utf8_lossy(&out.stdout);
    let scores: Vec<&str> = csv
        .lines()
        .skip(1)
        .map(|l| l.split_once(',').unwrap().1)
        .collect();
    assert_eq!(scores.len(), 3, "{csv}");
    assert_eq!(scores[0], scores[1], "{csv}");
    let out = dfk(&["predict", "--model", &s(&m), &s(&plain)]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("EXIF"));
}

/// A truncated JPEG decodes with the missing part filled in, as libjpeg does, but with a
/// warning naming the file; a complete one gives none.
#[test]
fn a_truncated_jpeg_is_named_in_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let m = small_model(dir.path());
    let whole = dir.path().join("whole.jpg");
    image::RgbImage::from_fn(200, 200, |x, y| {
        image::Rgb([(x * 7 + y * 13) as u8, (x * y) as u8, (x ^ y) as u8])
    })
    .save(&whole)
    .unwrap();
    let bytes = std::fs::read(&whole).unwrap();
    let cut = dir.path().join("cut.jpg");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    // A complete JPEG followed by other data (a "motion photo's" video) is no truncated one.
    let appended = dir.path().join("appended.jpg");
    let mut longer = bytes.clone();
    longer.extend((0..6000u32).map(|i| (i * 7 % 256) as u8));
    std::fs::write(&appended, &longer).unwrap();
    for (path, warned) in [(&whole, false), (&cut, true), (&appended, false)] {
        let out = dfk(&["predict", "--model", &s(&m), &s(path)]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            err.contains("end-of-image marker") && err.contains(&s(path)),
            warned,
            "{err}"
        );
    }
}

/// Messages to a standard error whose reader has gone (`dfk … 2>&1 | head -1`) are dropped and
/// the work goes on (`eprintln!` panicked: exit 101, no model); a result that cannot be
/// written to standard output is an error naming it, exit 1.
#[test]
fn a_closed_standard_error_or_output_is_no_panic() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m.dfk");
    let bin = env!("CARGO_BIN_EXE_dfk");
    let mut child = Command::new(bin)
        .args([
            "train",
            "--embedded",
            "--limit",
            "300",
            "--k",
            "2",
            "--no-cache",
        ])
        .args(["--out", &s(&m)])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Nothing reads the stage lines: the first write after this fails.
    drop(child.stderr.take());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(m.is_file());
    let mut child = Command::new(bin)
        .args(["info", &s(&m)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot write to standard output"), "{err}");
}

/// A model read from a pipe (`--model <(cat m.dfk)`) is read as far as its header says, and
/// one byte more: short or longer input is refused as in a file; a device that never ends
/// (`/dev/zero`) is refused at once instead of being read into memory without end.
#[cfg(unix)]
#[test]
fn models_from_pipes_and_devices() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let m = small_model(dir.path());
    let bytes = std::fs::read(&m).unwrap();
    let mut longer = bytes.clone();
    longer.extend_from_slice(b"GARBAGE");
    for (input, problem) in [
        (bytes.clone(), None),
        (
            bytes[..bytes.len() - 9].to_vec(),
            Some("the file ends within its arrays"),
        ),
        (longer, Some("data continue after the")),
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dfk"))
            .args([
                "predict",
                "--model",
                "/dev/stdin",
                "--embedded",
                "--limit",
                "2",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The child may stop reading early: a failed write is no failure.
        let _ = child.stdin.take().unwrap().write_all(&input);
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        match problem {
            None => {
                assert!(out.status.success(), "{err}");
                assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
            }
            Some(needle) => {
                assert_eq!(out.status.code(), Some(1), "{err}");
                assert!(err.contains(needle), "{err}");
            }
        }
    }
    // A device as the model of a command that reads it once: its zero header is named.
    let out = dfk(&[
        "predict",
        "--model",
        "/dev/zero",
        "--embedded",
        "--limit",
        "1",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("/dev/zero: a header of 0 bytes: not a model file"),
        "{err}"
    );
    // `info` reads the model twice: a device is refused as such, before reading it.
    fails(
        &["info", "/dev/zero"],
        2,
        "/dev/zero: not a regular file (a pipe or device?)",
    );
}

/// An image whose header declares more pixels than the decoder may hold is named with its
/// size and the limit; `predict` without anything to predict says so.
#[test]
fn oversized_images_and_nothing_to_predict_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let m = small_model(dir.path());
    let huge = dir.path().join("huge.pgm");
    std::fs::write(&huge, b"P5\n60000 60000\n255\n\0\0\0").unwrap();
    fails(
        &["predict", "--model", &s(&m), &s(&huge)],
        1,
        "huge.pgm: cannot decode image: a 60000x60000 image: its decoded pixels would take \
         more memory than the decoder's limit of 512 MiB",
    );
    fails(&["predict", "--model", &s(&m)], 2, "nothing to predict");
    fails(
        &["predict", "--model", &s(&m), &s(&huge), "--embedded"],
        2,
        "not both",
    );
}

/// A class that no training image has, or (multi-label) that every image has, is refused
/// before any extraction, naming the class: here the images are too small for one descriptor,
/// so reaching the extraction would give another error.
#[test]
fn untrainable_classes_are_named_before_extraction() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    for i in 0..4u8 {
        std::fs::create_dir_all(p("img")).unwrap();
        std::fs::write(
            p(&format!("img/{i}.pgm")),
            b"P5\n4 4\n255\n0123456789abcdef",
        )
        .unwrap();
    }
    let run = |list: &str, needle: &str| {
        std::fs::write(p("list.txt"), list).unwrap();
        let model = p("m.dfk");
        fails_leaving_nothing(
            &[
                "train",
                "--no-cache",
                "--data",
                &s(&p("list.txt")),
                "--out",
                &s(&model),
            ],
            1,
            needle,
            &model,
        );
    };
    // Numbered from 1: class 0 has no image.
    run(
        "img/0.pgm 1\nimg/1.pgm 2\nimg/2.pgm 1\nimg/3.pgm 2\n",
        "have no image of class 0",
    );
    // A label with a space is two labels: every image is a positive of `golden`.
    run(
        "img/0.pgm golden cat\nimg/1.pgm golden dog\nimg/2.pgm golden cat\nimg/3.pgm golden dog\n",
        "all 4 images are positives of class",
    );
    fails(
        &["train", "--no-cache", "--data", &s(&p("list.txt"))],
        1,
        "(golden)",
    );
}

/// A `train/<class>`, `test/<class>` layout given as one class-folder root points at
/// `--data ROOT/train` instead of calling the `test` folder empty.
#[test]
fn a_layout_of_splits_points_at_the_training_split() {
    let dir = tempfile::tempdir().unwrap();
    for split in ["train", "test"] {
        for (i, class) in ["a", "b"].iter().enumerate() {
            pgm(
                &dir.path().join(format!("split/{split}/{class}/0.pgm")),
                i as u8,
            );
        }
    }
    let root = s(&dir.path().join("split"));
    let m = dir.path().join("m.dfk");
    fails_leaving_nothing(
        &["train", "--data", &root, "--no-cache", "--out", &s(&m)],
        1,
        &format!("give --data {root}/train"),
        &m,
    );
}

/// A K above the number of descriptors, known only after extraction, names `--k`.
#[test]
fn too_few_descriptors_for_k_name_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..4u8 {
        let class = ["a", "b"][i as usize % 2];
        pgm(&dir.path().join(format!("img/{class}/{i}.pgm")), i);
    }
    let m = dir.path().join("m.dfk");
    fails_leaving_nothing(
        &[
            "train",
            "--data",
            &s(&dir.path().join("img")),
            "--no-cache",
            "--step",
            "1000",
            "--k",
            "64",
            "--out",
            &s(&m),
        ],
        2,
        "--k (or gmm.k) 64: expected at most the number of descriptors",
        &m,
    );
}

/// A list naming a file twice trains on it twice, with a warning that says so.
#[test]
fn a_list_naming_a_file_twice_warns() {
    let dir = tempfile::tempdir().unwrap();
    let mut list = String::new();
    for i in 0..4u8 {
        let class = ["a", "b"][i as usize % 2];
        pgm(&dir.path().join(format!("img/{i}.pgm")), i);
        list.push_str(&format!("img/{i}.pgm {class}\n"));
    }
    list.push_str("img/0.pgm b\n");
    std::fs::write(dir.path().join("list.txt"), list).unwrap();
    let m = dir.path().join("m.dfk");
    let o = dfk(&[
        "train",
        "--data",
        &s(&dir.path().join("list.txt")),
        "--no-cache",
        "--k",
        "2",
        "--out",
        &s(&m),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("1 line names a file listed before (line 5 repeats line 1)"),
        "{err}"
    );
}

/// A report folder inside a class folder that `--data` reaches through a symbolic link is
/// refused like one inside `--data` itself.
#[cfg(unix)]
#[test]
fn a_report_inside_a_linked_class_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..4u8 {
        let class = ["a", "b"][i as usize % 2];
        pgm(&dir.path().join(format!("real/{class}/{i}.pgm")), i);
    }
    let linked = dir.path().join("linked");
    std::fs::create_dir(&linked).unwrap();
    for class in ["a", "b"] {
        std::os::unix::fs::symlink(dir.path().join("real").join(class), linked.join(class))
            .unwrap();
    }
    let report = linked.join("a/report");
    let m = dir.path().join("m.dfk");
    fails_leaving_nothing(
        &[
            "train",
            "--data",
            &s(&linked),
            "--no-cache",
            "--report",
            &s(&report),
            "--out",
            &s(&m),
        ],
        2,
        "lies inside the class folder",
        &m,
    );
    assert!(!dir.path().join("real/a/report").exists());
}

/// `extract --out-dir` writes classes.txt, and removes an earlier run's when these class names
/// cannot be written as lines (so `dfk deep` does not name the classes after the other data).
#[test]
fn extract_never_leaves_another_runs_class_names() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    for (folder, classes) in [("plain", ["cat", "dog"]), ("odd", ["C#", "x #y"])] {
        for (i, class) in classes.iter().enumerate() {
            for j in 0..2u8 {
                pgm(&p(&format!("{folder}/{class}/{j}.pgm")), i as u8 * 2 + j);
            }
        }
    }
    let out = p("x");
    let extract = |folder: &str| {
        ok(&[
            "extract",
            "--data",
            &s(&p(folder)),
            "--no-cache",
            "--pca-dims",
            "0",
            "--spatial",
            "false",
            "--out-dir",
            &s(&out),
        ])
    };
    extract("plain");
    assert_eq!(
        std::fs::read_to_string(out.join("classes.txt")).unwrap(),
        "cat\ndog\n"
    );
    // `C#` reads back as itself; `x #y` would lose ` #y` as a comment.
    extract("odd");
    assert!(!out.join("classes.txt").exists());
    assert!(dfk::dataset::fits_a_class_line("C#"));
    assert!(!dfk::dataset::fits_a_class_line("x #y"));
}

/// `extract --out-dir` removes an earlier run's `positions.npy` (from a pyramid) and
/// `difficult.npy` (from multi-label data) when these data have none, so that no file beside
/// the new descriptors describes other ones.
#[test]
fn extract_never_leaves_another_runs_positions_or_difficult_flags() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x");
    let extract = |extra: &[&str]| {
        let mut a = vec![
            "-q",
            "extract",
            "--embedded",
            "--limit",
            "12",
            "--no-cache",
            "--out-dir",
        ];
        let o = s(&out);
        a.push(&o);
        a.extend_from_slice(extra);
        ok(&a)
    };
    extract(&["--pyramid", "1x1,2x2"]);
    assert!(out.join("positions.npy").exists());
    // Stand-in for an earlier multi-label run's flags.
    std::fs::write(out.join("difficult.npy"), b"earlier").unwrap();
    extract(&[]);
    assert!(!out.join("positions.npy").exists());
    assert!(!out.join("difficult.npy").exists());
    assert!(out.join("descriptors.npy").exists());
}

/// `predict --out` may not replace an image of a folder given as an image argument.
#[test]
fn predict_out_may_not_replace_an_image_of_a_folder() {
    let dir = tempfile::tempdir().unwrap();
    let m = small_model(dir.path());
    let flat = dir.path().join("flat");
    pgm(&flat.join("0.pgm"), 1);
    let before = std::fs::read(flat.join("0.pgm")).unwrap();
    fails(
        &[
            "predict",
            "--model",
            &s(&m),
            "--out",
            &s(&flat.join("0.pgm")),
            &s(&flat),
        ],
        2,
        "--out",
    );
    unchanged(&flat.join("0.pgm"), &before);
}

/// `--skip-unreadable` leaves out an image whose header cannot be read, with a warning that
/// counts it; without it the run stops naming the file; it is refused for data that are not
/// image files.
#[test]
fn skip_unreadable_leaves_out_broken_images() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..4u8 {
        let class = ["a", "b"][i as usize % 2];
        pgm(&dir.path().join(format!("img/{class}/{i}.pgm")), i);
    }
    std::fs::write(dir.path().join("img/a/broken.pgm"), b"P5\nnot a header").unwrap();
    // A header that reads, pixels cut short: found only by decoding.
    let mut cut = std::fs::read(dir.path().join("img/b/1.pgm")).unwrap();
    cut.truncate(cut.len() - 10);
    std::fs::write(dir.path().join("img/b/cut.pgm"), &cut).unwrap();
    let img = s(&dir.path().join("img"));
    let m = dir.path().join("m.dfk");
    let train = |extra: &[&str]| {
        let mut a = vec!["train", "--data", &img, "--no-cache", "--k", "2"];
        a.extend_from_slice(extra);
        a.iter().map(|v| v.to_string()).collect::<Vec<_>>()
    };
    let args = train(&["--out", m.to_str().unwrap()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    fails_leaving_nothing(&args, 1, "broken.pgm", &m);
    let args = train(&["--skip-unreadable", "--json", "--out", m.to_str().unwrap()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = dfk(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("1 unreadable image left out"), "{err}");
    assert!(
        err.contains("cut.pgm") && err.contains("1 image that cannot be decoded left out"),
        "{err}"
    );
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).unwrap();
    assert_eq!(v["images"], 4, "{v}");
    fails(
        &["train", "--embedded", "--skip-unreadable", "--no-cache"],
        2,
        "--skip-unreadable applies to image files",
    );
    // `dfk deep --data` takes it too.
    let deep = |skip: bool| {
        let mut a = vec![
            "--threads",
            "1",
            "deep",
            "--data",
            &img,
            "-k",
            "2",
            "--iters",
            "1",
            "--val-fraction",
            "0",
            "-o",
            m.to_str().unwrap(),
        ];
        if skip {
            a.push("--skip-unreadable");
        }
        dfk(&a)
    };
    std::fs::remove_file(&m).unwrap();
    let o = deep(false);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("broken.pgm"));
    assert!(!m.exists());
    let o = deep(true);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("1 unreadable image left out"), "{err}");
    assert!(
        err.contains("1 image that cannot be decoded left out"),
        "{err}"
    );
    assert!(m.exists());
    // Without the flag, the truncated image alone stops the run, named.
    std::fs::remove_file(dir.path().join("img/a/broken.pgm")).unwrap();
    std::fs::remove_file(&m).unwrap();
    let o = deep(false);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cut.pgm"));
    assert!(!m.exists());
}

/// `predict` with image arguments: `--limit` and `--skip-unreadable` apply to them, data-set
/// settings (`--format`, `--split`, `--labels`) are refused rather than ignored, a carriage
/// return in a name is quoted in the CSV, non-UTF-8 names stay distinct, a pipe is read as an
/// image and a folder given as the model is named as such.
#[test]
fn predict_reads_image_arguments_as_given() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let m = small_model(dir.path());
    pgm(&p("img/a.pgm"), 1);
    pgm(&p("img/b.pgm"), 2);
    std::fs::write(p("img/bad.pgm"), b"P5\n32 32\n255\nshort").unwrap();
    let (a, b, bad) = (s(&p("img/a.pgm")), s(&p("img/b.pgm")), s(&p("img/bad.pgm")));
    let ms = s(&m);
    let rows = |out: &str| out.lines().count() - 1;
    assert_eq!(
        rows(&ok(&[
            "-q", "predict", "--model", &ms, "--limit", "1", &a, &b
        ])),
        1
    );
    fails(&["predict", "--model", &ms, &a, &bad], 1, "bad.pgm");
    let o = dfk(&["predict", "--model", &ms, "--skip-unreadable", &a, &bad, &b]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("bad.pgm") && err.contains("1 image that cannot be decoded"));
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(rows(&out), 2, "{out}");
    for (flag, value) in [
        ("--format", "folder"),
        ("--split", "test"),
        ("--labels", "y.npy"),
    ] {
        fails(&["predict", "--model", &ms, flag, value, &a], 2, flag);
    }
    // A carriage return in a file name: quoted (it split the row in two for CSV readers).
    let cr = p("img/c\rd.pgm");
    std::fs::copy(p("img/a.pgm"), &cr).unwrap();
    let out = ok(&["-q", "predict", "--model", &ms, &s(&cr)]);
    assert!(out.contains(&format!("\"{}\",", s(&cr))), "{out:?}");
    // Two names that are not UTF-8: escaped, so they stay distinct (both printed as `�`).
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let odd = p("odd");
        std::fs::create_dir_all(&odd).unwrap();
        for byte in [0xfe_u8, 0xff] {
            let bytes = [b'x', byte, b'.', b'p', b'g', b'm'];
            let name = std::ffi::OsStr::from_bytes(&bytes);
            std::fs::copy(p("img/a.pgm"), odd.join(name)).unwrap();
        }
        let out = ok(&["-q", "predict", "--model", &ms, &s(&odd)]);
        assert!(
            out.contains("x\\xfe.pgm,") && out.contains("x\\xff.pgm,"),
            "{out}"
        );
    }
    // An image through a pipe.
    #[cfg(unix)]
    {
        use std::io::Write;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_dfk"))
            .args(["-q", "predict", "--model", &ms, "/dev/stdin"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let bytes = std::fs::read(p("img/a.pgm")).unwrap();
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(rows(&String::from_utf8_lossy(&o.stdout)), 1);
    }
    fails(
        &["predict", "--model", &s(&p("img")), &a],
        1,
        "a folder, not a model file",
    );
}

/// `extract --test-data` extracts a test set of the user's own data with the training set's
/// PCA (one `extract` per set fitted two PCAs): the training folder given as its own test set
/// gives the very same descriptors; a test set with fewer classes is labelled in the training
/// classes' indices; a class the training lacks is named.
#[test]
fn extract_test_data_shares_the_training_pca() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    for (i, class) in ["a", "b", "c"].iter().enumerate() {
        for j in 0..3u8 {
            pgm(&p(&format!("train/{class}/{j}.pgm")), i as u8 * 5 + j);
        }
    }
    pgm(&p("test/b/0.pgm"), 40);
    pgm(&p("test/c/0.pgm"), 41);
    let extract = |test: &str, out: &str| {
        dfk(&[
            "-q",
            "extract",
            "--data",
            &s(&p("train")),
            "--test-data",
            &s(&p(test)),
            "--no-cache",
            "--pca-dims",
            "8",
            "--out-dir",
            &s(&p(out)),
        ])
    };
    let o = extract("train", "same");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let read = |f: &str| std::fs::read(p(f)).unwrap();
    assert_eq!(
        read("same/train/descriptors.npy"),
        read("same/test/descriptors.npy")
    );
    let o = extract("test", "own");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        std::fs::read_to_string(p("own/test/classes.txt")).unwrap(),
        "a\nb\nc\n"
    );
    assert_eq!(npy::read_labels(p("own/test/labels.npy")).unwrap(), [1, 2]);
    pgm(&p("test/zebra/0.pgm"), 42);
    let o = extract("test", "bad");
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("the class zebra that the training data"),
        "{err}"
    );
    assert!(!p("bad").exists());
}
