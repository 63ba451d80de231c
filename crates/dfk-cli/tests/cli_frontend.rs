//! The front end end to end on a few embedded Fashion-MNIST images: train (every flag, a TOML
//! configuration), info, eval with a report (rendered in headless Chromium when installed),
//! predict, encode, extract; and the usage and data errors with their exit codes.

mod common;
use common::*;

use std::path::Path;
use std::process::Command;

/// Small, fast settings, every pipeline flag given once.
const SMALL: [&str; 36] = [
    "--bins",
    "4,6",
    "--step",
    "4",
    "--magnif",
    "6",
    "--window",
    "flat",
    "--root-sift",
    "true",
    "--resize",
    "56x56",
    "--pca-dims",
    "16",
    "--whiten",
    "false",
    "--l2",
    "true",
    "--spatial",
    "true",
    "--k",
    "4",
    "--gmm-iter",
    "5",
    "--gmm-sample",
    "20000",
    "--variance-floor",
    "0.001",
    "--improved",
    "true",
    "--c",
    "3",
    "--svm-eps",
    "0.1",
    "--bias",
    "1",
];

/// Renders `html` in headless Chromium and returns the DOM, or `None` without Chromium.
fn chromium_dom(html: &Path) -> Option<String> {
    let chromium = Path::new("/usr/bin/chromium");
    if !chromium.exists() {
        eprintln!("notice: /usr/bin/chromium not found, report rendering not checked");
        return None;
    }
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            &format!("--user-data-dir={}", profile.path().display()),
            "--dump-dom",
            &format!("file://{}", html.display()),
        ])
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn train_info_eval_predict_encode() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.dfk");
    let report = dir.path().join("report");
    let (model_s, report_s) = (s(&model), s(&report));
    let mut args = vec![
        "--json",
        "--seed",
        "3",
        "train",
        "--embedded",
        "--limit",
        "200",
        "--no-cache",
    ];
    args.extend(SMALL);
    args.extend([
        "--weighting",
        "balanced",
        "--out",
        &model_s,
        "--report",
        &report_s,
    ]);
    let out = ok(&args);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["evaluated_on"], "test");
    assert_eq!(v["images"], 200);
    // 200 training images, 10 classes: far better than chance (10 %).
    assert!(v["accuracy"].as_f64().unwrap() > 0.4, "{v}");

    let info = ok(&["info", &s(&model)]);
    assert!(
        info.contains("kind pipeline") && info.contains("gmm.means") && info.contains("Ankle boot"),
        "{info}"
    );
    let toml = ok(&["info", &s(&model), "--config"]);
    assert!(
        toml.contains("k = 4") && toml.contains("seed = 3"),
        "{toml}"
    );
    // float32 settings as their shortest decimals (1e-6 printed as 0.0000009999999974752427),
    // which the round trip below reads back to the same values.
    assert!(
        toml.contains("clamp = 0.2\n") && toml.contains("posterior_threshold = 0.000001\n"),
        "{toml}"
    );

    // The stored configuration, used as --config, reproduces the model exactly.
    let cfg = dir.path().join("cfg.toml");
    std::fs::write(&cfg, &toml).unwrap();
    let model2 = dir.path().join("m2.dfk");
    ok(&[
        "-q",
        "train",
        "--embedded",
        "--limit",
        "200",
        "--no-cache",
        "--config",
        &s(&cfg),
        "--out",
        &s(&model2),
    ]);
    let (a, b) = (
        dfk::model::ModelFile::load(&model).unwrap(),
        dfk::model::ModelFile::load(&model2).unwrap(),
    );
    assert_eq!((&a.gmm, &a.svm, &a.config), (&b.gmm, &b.svm, &b.config));

    let html = report.join("index.html");
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(
        page.matches("<svg").count() >= 4,
        "confusion, AP, PR, timing plots"
    );
    let numbers: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("report.json")).unwrap())
            .unwrap();
    assert_eq!(numbers["evaluation"]["classes"], 10);
    if let Some(dom) = chromium_dom(&html) {
        assert!(
            dom.contains("<svg") && dom.contains("Confusion matrix") && dom.contains("Precision"),
            "{}",
            &dom[..dom.len().min(500)]
        );
    }

    let eval_report = dir.path().join("eval");
    let out = ok(&[
        "--json",
        "eval",
        "--model",
        &s(&model),
        "--embedded",
        "--limit",
        "100",
        "--no-cache",
        "--report",
        &s(&eval_report),
    ]);
    let e: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(e["images"], 100);
    assert!(eval_report.join("index.html").is_file());

    let preds = dir.path().join("p.json");
    ok(&[
        "predict",
        "--model",
        &s(&model),
        "--embedded",
        "--limit",
        "5",
        "--output-format",
        "json",
        "--out",
        &s(&preds),
    ]);
    let p: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&preds).unwrap()).unwrap();
    assert_eq!(p.as_array().unwrap().len(), 5);
    assert_eq!(p[0]["scores"].as_array().unwrap().len(), 10);
    let csv = ok(&[
        "predict",
        "--model",
        &s(&model),
        "--embedded",
        "--limit",
        "3",
    ]);
    assert_eq!(csv.lines().count(), 4, "{csv}");
    assert!(csv.starts_with("image,label,class,score:T-shirt/top"));

    let fv = dir.path().join("fv.npy");
    ok(&[
        "encode",
        "--model",
        &s(&model),
        "--embedded",
        "--limit",
        "7",
        "--test",
        "--no-cache",
        "--out",
        &s(&fv),
    ]);
    let (_, n, d) = dfk::npy::read_f32_matrix(&fv).unwrap();
    assert_eq!((n, d), (7, 2 * 4 * 18));
}

#[test]
fn extract_fills_the_cache_that_train_uses() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let out = dir.path().join("x");
    let args = |extra: &[&str]| {
        let mut a = vec![
            "--json",
            "extract",
            "--embedded",
            "--limit",
            "50",
            "--pca-dims",
            "8",
            "--cache",
            cache.to_str().unwrap(),
        ];
        a.extend_from_slice(extra);
        a.iter().map(|x| x.to_string()).collect::<Vec<_>>()
    };
    let first = ok(&args(&["--out-dir", out.to_str().unwrap()])
        .iter()
        .map(|x| x.as_str())
        .collect::<Vec<_>>());
    let v: serde_json::Value = serde_json::from_str(first.trim()).unwrap();
    assert_eq!(v["sets"][0]["cache_hit"], false);
    assert_eq!(v["sets"][0]["dim"], 10);
    let (_, rows, cols) = dfk::npy::read_f32_matrix(out.join("descriptors.npy")).unwrap();
    assert_eq!(
        (rows, cols),
        (v["sets"][0]["descriptors"].as_u64().unwrap() as usize, 10)
    );
    let second = ok(&args(&[]).iter().map(|x| x.as_str()).collect::<Vec<_>>());
    let v: serde_json::Value = serde_json::from_str(second.trim()).unwrap();
    assert_eq!(v["sets"][0]["cache_hit"], true);
}

/// With a pyramid and no (x, y) in the descriptors, `extract` fills the cache entry that
/// `train` reads (the one with positions), and writes the positions next to the descriptors.
#[test]
fn extract_with_a_pyramid_fills_the_entry_train_reads() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let out = dir.path().join("x");
    let common = [
        "--embedded",
        "--limit",
        "40",
        "--pca-dims",
        "6",
        "--spatial",
        "false",
        "--pyramid",
        "1x1,2x2",
        "--cache",
        cache.to_str().unwrap(),
    ];
    let entries = || std::fs::read_dir(&cache).unwrap().count();
    let mut extract = vec![
        "--json",
        "extract",
        "--with-test",
        "--out-dir",
        out.to_str().unwrap(),
    ];
    extract.extend_from_slice(&common);
    let v: serde_json::Value = serde_json::from_str(ok(&extract).trim()).unwrap();
    assert_eq!(v["sets"][0]["cache_hit"], false);
    assert_eq!(v["sets"][0]["dim"], 6);
    assert_eq!(entries(), 2);
    let train_dir = out.join("train");
    let (_, rows, cols) = dfk::npy::read_f32_matrix(train_dir.join("descriptors.npy")).unwrap();
    assert_eq!(cols, 6);
    let (pos, prows, pcols) = dfk::npy::read_f32_matrix(train_dir.join("positions.npy")).unwrap();
    assert_eq!((prows, pcols), (rows, 2));
    assert!(pos.iter().all(|p| (-0.5..=0.5).contains(p)));
    // The entries are named by their keys, and training (which also encodes the test set)
    // with the same settings adds no other.
    assert!(cache
        .join(v["sets"][0]["cache_key"].as_str().unwrap())
        .is_dir());
    let model = dir.path().join("m.dfk");
    let mut train = vec!["train", "--k", "2", "--out", model.to_str().unwrap()];
    train.extend_from_slice(&common);
    ok(&train);
    assert_eq!(entries(), 2);
}

#[test]
fn usage_and_data_errors() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.dfk");
    let m = s(&model);
    // Usage errors: exit 2.
    fails(&["train", "--out", &m], 2, "exactly one of");
    fails(
        &["train", "--embedded", "--data", ".", "--out", &m],
        2,
        "exactly one of",
    );
    fails(&["train", "--embedded", "--k", "0", "--out", &m], 2, "k");
    fails(
        &["train", "--embedded", "--resize", "56by56", "--out", &m],
        2,
        "resize",
    );
    fails(&["train", "--embedded", "--frobnicate"], 2, "frobnicate");
    // A limit that leaves a class out is refused before any work, naming the class.
    fails(
        &["train", "--embedded", "--limit", "20", "--out", &m],
        2,
        "hold no image of class 7 (Sneaker)",
    );
    // A configuration file's unknown keys: usage errors (exit 2) naming the file.
    let bad_cfg = dir.path().join("bad.toml");
    std::fs::write(&bad_cfg, "[gmm]\nkay = 3\n").unwrap();
    fails(
        &["train", "--embedded", "--config", &s(&bad_cfg), "--out", &m],
        2,
        &s(&bad_cfg),
    );
    for table in ["[sift]\nbogus = 1\n", "[fisher]\nbogus = 1\n"] {
        std::fs::write(&bad_cfg, table).unwrap();
        fails(
            &["train", "--embedded", "--config", &s(&bad_cfg), "--out", &m],
            2,
            "unknown field `bogus`",
        );
    }
    // Data errors: exit 1, naming the file.
    let missing = dir.path().join("missing.dfk");
    fails(
        &["eval", "--model", &s(&missing), "--embedded"],
        1,
        &s(&missing),
    );
    let not_folder = dir.path().join("nothing-here");
    fails(
        &[
            "train",
            "--data",
            &s(&not_folder),
            "--format",
            "folder",
            "--out",
            &m,
        ],
        1,
        &s(&not_folder),
    );
    // A GMM file is not a pipeline.
    let gmm = dir.path().join("g.dfk");
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/cli");
    ok(&[
        "gmm",
        "import",
        "--means",
        &s(&fixtures.join("means_f64.npy")),
        "--variances",
        &s(&fixtures.join("variances_f64.npy")),
        "--weights",
        &s(&fixtures.join("weights_f32.npy")),
        "--out",
        &s(&gmm),
    ]);
    let report = dir.path().join("r");
    fails(
        &[
            "eval",
            "--model",
            &s(&gmm),
            "--embedded",
            "--report",
            &s(&report),
        ],
        1,
        "kind",
    );
    assert!(!model.exists() && !report.exists());
}

#[test]
fn precomputed_descriptors_with_format_npy() {
    let dir = tempfile::tempdir().unwrap();
    // 30 images of 3 classes; class c's 6-d descriptors cluster near 5·e_c.
    let mut list = String::new();
    for i in 0..30 {
        let c = i % 3;
        let rows = 5 + i % 4;
        let data: Vec<f32> = (0..rows * 6)
            .map(|j| {
                let centre = if j % 6 == c { 5.0 } else { 0.0 };
                centre + ((i * 31 + j * 17) % 13) as f32 / 13.0 - 0.5
            })
            .collect();
        let name = format!("img{i}.npy");
        dfk::npy::write_f32_matrix(dir.path().join(&name), &data, rows, 6).unwrap();
        list.push_str(&format!("{name} {}\n", ["a", "b", "c"][c]));
    }
    let list_path = dir.path().join("list.txt");
    std::fs::write(&list_path, list).unwrap();
    let (l, model) = (s(&list_path), s(&dir.path().join("m.dfk")));
    let base = ["--data", &l, "--format", "npy"];
    fails(
        &[&["train"][..], &base, &["--out", &model]].concat(),
        2,
        "--spatial false",
    );
    let out = ok(&[
        &["--json", "train"][..],
        &base,
        // K = 1: the Fisher vector is the deviation from the global mean, which points to the
        // class centre (with K = 3, one component per class, the classes differ only in which
        // block is active, with random signs: not linearly separable).
        &[
            "--spatial",
            "false",
            "--pca-dims",
            "4",
            "--k",
            "1",
            "--out",
            &model,
        ],
    ]
    .concat());
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["evaluated_on"], "training");
    assert_eq!(v["accuracy"], 1.0);
    let out = ok(&[&["--json", "eval", "--model", &model][..], &base].concat());
    let e: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (e["images"].as_u64(), e["accuracy"].as_f64()),
        (Some(30), Some(1.0))
    );
    let fv = s(&dir.path().join("fv.npy"));
    ok(&[&["encode", "--model", &model][..], &base, &["--out", &fv]].concat());
    let (_, n, d) = dfk::npy::read_f32_matrix(&fv).unwrap();
    assert_eq!((n, d), (30, 2 * 4));
}

/// `eval` on a folder holding only some of the model's classes, in another order: labels are
/// matched to the model's classes by name and the absent class has no AP; a class the model
/// lacks is refused, naming both class lists.
#[test]
fn eval_maps_a_named_subset_by_class_name() {
    let dir = tempfile::tempdir().unwrap();
    // Three classes of 32×32 grey images told apart by stripes or a square.
    let write = |root: &str, class: &str, pattern: usize| {
        let folder = dir.path().join(root).join(class);
        std::fs::create_dir_all(&folder).unwrap();
        for i in 0..8 {
            let mut pgm = b"P5\n32 32\n255\n".to_vec();
            for y in 0..32usize {
                for x in 0..32usize {
                    let on = match pattern {
                        0 => x % 4 == 0,
                        1 => y % 4 == 0,
                        _ => (8..24).contains(&x) && (8..24).contains(&y),
                    };
                    pgm.push(if on {
                        250
                    } else {
                        ((x * 7 + y * 13 + i * 29) % 60) as u8
                    });
                }
            }
            std::fs::write(folder.join(format!("{i}.pgm")), pgm).unwrap();
        }
    };
    for (p, class) in ["bird", "cat", "dog"].iter().enumerate() {
        write("full", class, p);
    }
    write("sub", "dog", 2);
    write("sub", "bird", 0);
    write("other", "bird", 0);
    write("other", "emu", 1);
    let model = s(&dir.path().join("m.dfk"));
    let full = s(&dir.path().join("full"));
    ok(&[
        "-q",
        "--threads",
        "2",
        "train",
        "--data",
        &full,
        "--no-cache",
        "--k",
        "2",
        "--out",
        &model,
    ]);
    let sub = s(&dir.path().join("sub"));
    let out = ok(&[
        "--json",
        "--threads",
        "2",
        "eval",
        "--model",
        &model,
        "--data",
        &sub,
        "--no-cache",
    ]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["images"], 16, "{v}");
    let ap = v["per_class_ap"].as_array().unwrap();
    assert!(
        ap.len() == 3 && ap[0].is_number() && ap[1].is_null() && ap[2].is_number(),
        "{v}"
    );
    let other = s(&dir.path().join("other"));
    let o = dfk(&[
        "--threads",
        "2",
        "eval",
        "--model",
        &model,
        "--data",
        &other,
        "--no-cache",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("[bird, emu] but the model") && err.contains("has no class emu"),
        "{err}"
    );
}

/// `extract` on a multi-label PASCAL VOC devkit writes the images × classes 0/1 label matrix
/// that `dfk deep --multilabel` reads (it wrote each image's first label only); and it refuses
/// `.npy` descriptors, which it cannot extract from.
#[test]
fn extract_writes_multilabel_labels_as_a_matrix() {
    let dir = tempfile::tempdir().unwrap();
    let ids = ["000001", "000002", "000003"];
    // Image 0: a dog (11) and a difficult chair (8); image 1: a car (6); image 2: a person (14).
    let flag = |i: usize, c: usize| match (i, c) {
        (0, 11) | (1, 6) | (2, 14) => 1,
        (0, 8) => 0,
        _ => -1,
    };
    let root = voc_devkit(dir.path(), &ids, flag);
    let out = dir.path().join("x");
    let text = ok(&[
        "--json",
        "extract",
        "--data",
        &s(&root),
        "--format",
        "voc",
        "--split",
        "trainval",
        "--no-cache",
        "--pca-dims",
        "0",
        "--spatial",
        "false",
        "--out-dir",
        &s(&out),
    ]);
    let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(v["sets"][0]["set"], "data");
    let (labels, rows, cols) = dfk::npy::read_i64_matrix(out.join("labels.npy")).unwrap();
    assert_eq!((rows, cols), (3, 20));
    let positives: Vec<Vec<usize>> = labels
        .chunks(20)
        .map(|r| (0..20).filter(|&c| r[c] == 1).collect())
        .collect();
    // The difficult chair is a positive, as for training, and flagged in difficult.npy (for
    // `dfk deep --difficult`).
    assert_eq!(positives, [vec![8, 11], vec![6], vec![14]]);
    assert!(labels.iter().all(|&l| l == 0 || l == 1));
    let (flags, rows, cols) = dfk::npy::read_i64_matrix(out.join("difficult.npy")).unwrap();
    assert_eq!((rows, cols), (3, 20));
    let flagged: Vec<usize> = (0..60).filter(|&ic| flags[ic] == 1).collect();
    assert_eq!(flagged, [8]);

    let list = dir.path().join("list.txt");
    dfk::npy::write_f32_matrix(dir.path().join("a.npy"), &[0.5; 8], 2, 4).unwrap();
    std::fs::write(&list, "a.npy 0\n").unwrap();
    let x2 = dir.path().join("x2");
    fails_leaving_nothing(
        &[
            "extract",
            "--data",
            &s(&list),
            "--format",
            "npy",
            "--no-cache",
            "--out-dir",
            &s(&x2),
        ],
        2,
        "descriptors already",
        &x2,
    );
}

/// A PASCAL VOC devkit under `dir/VOC2007` with split `trainval`: the images `ids` (48 × 48
/// grey PGMs under `.jpg` names; the format is read from the content) and `flag(image, class)`
/// (1 present, 0 difficult, −1 absent) for each of the 20 classes.
fn voc_devkit(dir: &Path, ids: &[&str], flag: impl Fn(usize, usize) -> i32) -> std::path::PathBuf {
    let root = dir.join("VOC2007");
    let main = root.join("ImageSets/Main");
    std::fs::create_dir_all(&main).unwrap();
    std::fs::create_dir_all(root.join("JPEGImages")).unwrap();
    for (c, class) in dfk::dataset::VOC_CLASSES.iter().enumerate() {
        let text: String = (0..ids.len())
            .map(|i| format!("{} {}\n", ids[i], flag(i, c)))
            .collect();
        std::fs::write(main.join(format!("{class}_trainval.txt")), text).unwrap();
    }
    for (i, id) in ids.iter().enumerate() {
        let mut pgm = b"P5\n48 48\n255\n".to_vec();
        pgm.extend((0..48 * 48).map(|p| ((p * (i + 3) * 7 + (p / 48) * (i % 5)) % 251) as u8));
        std::fs::write(root.join(format!("JPEGImages/{id}.jpg")), pgm).unwrap();
    }
    root
}

/// On VOC data, difficult images are left out of their classes' AP in every mAP: the one
/// `train` prints, the one stored in the model's history and the one `eval` gives agree.
#[test]
fn voc_difficult_images_leave_every_map_alike() {
    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<String> = (0..40).map(|i| format!("{:06}", i + 1)).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    // Every class has positives; every third image is difficult for another class.
    let flag = |i: usize, c: usize| {
        if c == i % 20 {
            1
        } else if i.is_multiple_of(3) && c == (i + 7) % 20 {
            0
        } else {
            -1
        }
    };
    let root = voc_devkit(dir.path(), &ids, flag);
    let model = dir.path().join("m.dfk");
    let data = [
        "--data",
        &s(&root),
        "--format",
        "voc",
        "--split",
        "trainval",
    ];
    let settings = ["--no-cache", "--k", "1", "--pca-dims", "4", "--c", "0.0001"];
    let train: serde_json::Value = serde_json::from_str(
        ok(&[
            &["--json", "train"][..],
            &data,
            &settings,
            &["--out", &s(&model)],
        ]
        .concat())
        .trim(),
    )
    .unwrap();
    let eval: serde_json::Value = serde_json::from_str(
        ok(&[
            &["--json", "eval", "--model", &s(&model), "--no-cache"][..],
            &data,
        ]
        .concat())
        .trim(),
    )
    .unwrap();
    let info: serde_json::Value =
        serde_json::from_str(ok(&["--json", "info", &s(&model)]).trim()).unwrap();
    let stored = info["header"]["history"]["train_map"].as_f64().unwrap();
    let printed = train["map"].as_f64().unwrap();
    assert!(
        (eval["map"].as_f64().unwrap() - printed).abs() < 1e-12,
        "{eval} {train}"
    );
    assert!((stored - printed).abs() < 1e-12, "{stored} {printed}");

    // VOC results are compared by the 11-point AP: per class in eval's JSON, their mean as the
    // train and eval summaries' `map_voc11`, and named in the one-line summary and the report.
    let per_class: Vec<f64> = eval["per_class_ap_voc11"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(serde_json::Value::as_f64)
        .collect();
    assert_eq!(per_class.len(), 20, "{eval}");
    let mean = per_class.iter().sum::<f64>() / 20.0;
    let voc11 = eval["map_voc11"].as_f64().unwrap();
    assert!((mean - voc11).abs() < 1e-12, "{mean} {voc11}");
    assert!(
        (train["map_voc11"].as_f64().unwrap() - voc11).abs() < 1e-12,
        "{train}"
    );
    let report = dir.path().join("report");
    let text = ok(&[
        &[
            "eval",
            "--model",
            &s(&model),
            "--no-cache",
            "--report",
            &s(&report),
        ][..],
        &data,
    ]
    .concat());
    assert!(
        text.contains(&format!("(11-point VOC 2007 mAP {:.2} %)", 100.0 * voc11)),
        "{text}"
    );
    let html = std::fs::read_to_string(report.join("index.html")).unwrap();
    assert!(html.contains("<th>AP (11-point, VOC 2007)</th>"));
}

/// Writes raw (not gzipped) IDX images and labels: `n` images of `side`×`side` noise, labels
/// alternating 0 and 1.
fn write_idx(dir: &std::path::Path, prefix: &str, n: usize, side: usize) {
    let mut images = vec![0, 0, 8, 3];
    for v in [n, side, side] {
        images.extend_from_slice(&(v as u32).to_be_bytes());
    }
    let mut state = 12345u32;
    for _ in 0..n * side * side {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        images.push((state >> 24) as u8);
    }
    std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), images).unwrap();
    let mut labels = vec![0, 0, 8, 1];
    labels.extend_from_slice(&(n as u32).to_be_bytes());
    labels.extend((0..n).map(|i| (i % 2) as u8));
    std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), labels).unwrap();
}

/// `extract --with-test` writes both sets or neither: a test set that fails (images smaller
/// than one descriptor) leaves no training files and no output folder behind.
#[test]
fn extract_with_test_writes_both_sets_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("fm");
    std::fs::create_dir(&data).unwrap();
    write_idx(&data, "train", 12, 28);
    write_idx(&data, "t10k", 4, 10);
    let out = dir.path().join("x");
    let args = [
        "extract",
        "--fashion-mnist",
        data.to_str().unwrap(),
        "--with-test",
        "--resize",
        "none",
        "--pca-dims",
        "8",
        "--no-cache",
        "--out-dir",
        out.to_str().unwrap(),
    ];
    fails_leaving_nothing(&args, 1, "smaller than one descriptor", &out);
    // The image is named with its IDX file.
    fails(&args, 1, "image 0 of ");
    fails(&args, 1, "t10k-images-idx3-ubyte (memory image 10x10)");
    // With test images of the training images' size, both sets are written.
    write_idx(&data, "t10k", 4, 28);
    ok(&args);
    for set in ["train", "test"] {
        for f in [
            "descriptors.npy",
            "offsets.npy",
            "labels.npy",
            "classes.txt",
        ] {
            assert!(out.join(set).join(f).is_file(), "{set}/{f}");
        }
    }
    // The class names travel to `dfk deep` through classes.txt beside the labels.
    let names = std::fs::read_to_string(out.join("train/classes.txt")).unwrap();
    assert_eq!(names.lines().next(), Some("T-shirt/top"), "{names}");
    let set = |f: &str| s(&out.join("train").join(f));
    let model = dir.path().join("d.dfk");
    let deep = [
        "-q",
        "deep",
        "--descriptors",
        &set("descriptors.npy"),
        "--offsets",
        &set("offsets.npy"),
        "--labels",
        &set("labels.npy"),
        "-k",
        "2",
        "--iters",
        "1",
        "--val-fraction",
        "0",
        "-o",
        &s(&model),
    ];
    ok(&deep);
    let m = dfk::model::ModelFile::load(&model).unwrap();
    assert_eq!(m.class_names, ["T-shirt/top", "Trouser"]);
    // A classes.txt without a name for every class index is an error naming it.
    std::fs::write(out.join("train/classes.txt"), "a\n").unwrap();
    std::fs::remove_file(&model).unwrap();
    fails_leaving_nothing(&deep, 1, "classes.txt: 1 class name, but --labels", &model);
}

/// `extract` says when its cache could not be written: without --out-dir, where filling the
/// cache is its only output, that is an error; with it, the summary says "not cached".
#[test]
fn extract_reports_a_cache_it_could_not_write() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("fm");
    std::fs::create_dir(&data).unwrap();
    write_idx(&data, "train", 12, 28);
    write_idx(&data, "t10k", 4, 28);
    // A cache folder below a regular file cannot be created.
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let cache = file.join("sub");
    let base = [
        "extract",
        "--fashion-mnist",
        data.to_str().unwrap(),
        "--pca-dims",
        "8",
        "--cache",
        cache.to_str().unwrap(),
    ];
    fails(&base, 1, "could not be stored in the cache");
    let out = dir.path().join("x");
    let text = ok(&[&base[..], &["--out-dir", out.to_str().unwrap()]].concat());
    assert!(text.contains("not cached"), "{text}");
    assert!(out.join("descriptors.npy").is_file());
}

/// `encode --labels-out` on multi-label data writes the images × classes 0/1 matrix: an image
/// in no class is a row of zeros (it was written as class 0, like a real class-0 image).
#[test]
fn encode_writes_multilabel_labels_as_a_matrix() {
    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<String> = (0..40).map(|i| format!("{:06}", i + 1)).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    // Image i is in class i mod 20, and image 21 also in class 5; image 39 in none.
    let flag = |i: usize, c: usize| {
        if (c == i % 20 && i != 39) || (i == 21 && c == 5) {
            1
        } else {
            -1
        }
    };
    let root = voc_devkit(dir.path(), &ids, flag);
    let model = dir.path().join("m.dfk");
    let data = [
        "--data",
        &s(&root),
        "--format",
        "voc",
        "--split",
        "trainval",
    ];
    let settings = ["--no-cache", "--k", "1", "--pca-dims", "4"];
    ok(&[
        &["-q", "train"][..],
        &data,
        &settings,
        &["--out", &s(&model)],
    ]
    .concat());
    let (fv, y) = (dir.path().join("fv.npy"), dir.path().join("y.npy"));
    ok(&[
        &["-q", "encode", "--model", &s(&model), "--no-cache"][..],
        &data,
        &["--out", &s(&fv), "--labels-out", &s(&y)],
    ]
    .concat());
    let (labels, rows, cols) = dfk::npy::read_i64_matrix(&y).unwrap();
    assert_eq!((rows, cols), (40, 20));
    for i in 0..40 {
        let expected: Vec<i64> = (0..20).map(|c| i64::from(flag(i, c) == 1)).collect();
        assert_eq!(labels[i * 20..(i + 1) * 20], expected, "image {i}");
    }
    assert!(labels[39 * 20..].iter().all(|&l| l == 0));
}

/// `--cache` with descriptor files (`--format npy`), which are read and never cached, is a
/// usage error rather than silently ignored.
#[test]
fn cache_with_descriptor_files_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("list.txt");
    dfk::npy::write_f32_matrix(dir.path().join("a.npy"), &[0.5; 8], 2, 4).unwrap();
    std::fs::write(&list, "a.npy 0\n").unwrap();
    let m = dir.path().join("m.dfk");
    fails_leaving_nothing(
        &[
            "train",
            "--data",
            &s(&list),
            "--format",
            "npy",
            "--cache",
            &s(&dir.path().join("cache")),
            "--out",
            &s(&m),
        ],
        2,
        "--cache",
        &m,
    );
    assert!(!dir.path().join("cache").exists());
}

/// `extract --format voc --split trainval --test-split test`: both splits with the training
/// split's PCA (here the same images, so the same descriptors), each with its labels and
/// difficult flags.
#[test]
fn extract_voc_test_split_shares_the_training_pca() {
    let dir = tempfile::tempdir().unwrap();
    let ids = ["000001", "000002", "000003"];
    let flag = |i: usize, c: usize| match (i, c) {
        (0, 11) | (1, 6) | (2, 14) => 1,
        (0, 8) => 0,
        _ => -1,
    };
    let root = voc_devkit(dir.path(), &ids, flag);
    let main = root.join("ImageSets/Main");
    for class in dfk::dataset::VOC_CLASSES {
        std::fs::copy(
            main.join(format!("{class}_trainval.txt")),
            main.join(format!("{class}_test.txt")),
        )
        .unwrap();
    }
    let out = dir.path().join("x");
    ok(&[
        "-q",
        "extract",
        "--data",
        &s(&root),
        "--format",
        "voc",
        "--split",
        "trainval",
        "--test-split",
        "test",
        "--no-cache",
        "--pca-dims",
        "4",
        "--out-dir",
        &s(&out),
    ]);
    for f in [
        "descriptors.npy",
        "labels.npy",
        "difficult.npy",
        "classes.txt",
    ] {
        assert_eq!(
            std::fs::read(out.join("train").join(f)).unwrap(),
            std::fs::read(out.join("test").join(f)).unwrap(),
            "{f}"
        );
    }
}
