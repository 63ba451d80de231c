//! `--pyramid` and the `pyramid` configuration key end to end: training with a spatial pyramid
//! (with and without `--spatial`), the key stored in the model, flag/TOML precedence, and the
//! usage and configuration errors.

mod common;
use common::*;

/// Shape of a .npy file (version 1 header).
fn read_npy_shape(path: &str) -> Vec<usize> {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + len]).unwrap();
    let shape = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    shape
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| t.parse().unwrap())
        .collect()
}

/// Small, fast settings on 200 embedded training and 200 test images.
const SMALL: [&str; 9] = [
    "--embedded",
    "--limit",
    "200",
    "--pca-dims",
    "8",
    "--k",
    "4",
    "--no-cache",
    "--json",
];

#[test]
fn train_with_a_pyramid_stores_it_in_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let model = s(&dir.path().join("m.dfk"));
    for spatial in ["true", "false"] {
        let out = ok(&[
            &["train"][..],
            &SMALL,
            &[
                "--pyramid",
                "1x1,2x2,3x1",
                "--spatial",
                spatial,
                "--out",
                &model,
            ],
        ]
        .concat());
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["evaluated_on"], "test");
        let acc = v["accuracy"].as_f64().unwrap();
        assert!(acc > 0.5, "spatial {spatial}: accuracy {acc}");
        let config = ok(&["info", &model, "--config"]);
        assert!(
            config.contains("pyramid = [[1, 1], [2, 2], [3, 1]]"),
            "{config}"
        );
        assert!(config.contains(&format!("spatial = {spatial}")));
        // The model applies with its pyramid: eval on the same test images reproduces the
        // accuracy training reported, and encode writes cells · 2KD columns (8 cells here).
        let eval = ok(&[
            "eval",
            "--model",
            &model,
            "--embedded",
            "--limit",
            "200",
            "--json",
        ]);
        let e: serde_json::Value = serde_json::from_str(eval.trim()).unwrap();
        assert_eq!(e["accuracy"].as_f64().unwrap(), acc, "spatial {spatial}");
        let fv = s(&dir.path().join("fv.npy"));
        ok(&[
            "encode",
            "--model",
            &model,
            "--embedded",
            "--limit",
            "3",
            "--out",
            &fv,
        ]);
        let d = if spatial == "true" { 10 } else { 8 };
        assert_eq!(
            read_npy_shape(&fv),
            vec![3, 8 * 2 * 4 * d],
            "spatial {spatial}"
        );
    }
}

#[test]
fn pyramid_from_toml_and_flag_precedence() {
    let dir = tempfile::tempdir().unwrap();
    let (toml, model) = (dir.path().join("c.toml"), s(&dir.path().join("m.dfk")));
    std::fs::write(&toml, "pyramid = [[2, 2]]\nspatial = false\n").unwrap();
    let toml = s(&toml);
    let base = [
        &["train"][..],
        &SMALL,
        &["--config", &toml, "--out", &model],
    ]
    .concat();
    ok(&base);
    let config = ok(&["info", &model, "--config"]);
    assert!(config.contains("pyramid = [[2, 2]]"), "{config}");
    // The flag overrides the file; `none` removes the pyramid.
    ok(&[&base[..], &["--pyramid", "none"]].concat());
    let config = ok(&["info", &model, "--config"]);
    assert!(!config.contains("pyramid"), "{config}");
    // Without a pyramid the configuration has no `pyramid` key at all.
    assert!(!ok(&["info", "--config"]).contains("pyramid"));
}

#[test]
fn invalid_pyramids_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.dfk");
    let (model_arg, toml) = (s(&model), dir.path().join("bad.toml"));
    let toml_arg = s(&toml);
    let base = [&["train"][..], &SMALL, &["--out", &model_arg]].concat();
    let with = |extra: &[&'static str]| [&base[..], extra].concat();
    fails(
        &with(&["--pyramid", "0x1"]),
        2,
        "rows and columns in 1..=16",
    );
    fails(&with(&["--pyramid", "2by2"]), 2, "ROWSxCOLS");
    fails(&with(&["--pyramid", "8x8,1x1"]), 2, "at most 64 cells");
    let config = [&base[..], &["--config", &toml_arg]].concat();
    std::fs::write(&toml, "pyramid = [[1, 0]]\n").unwrap();
    fails(&config, 2, "pyramid level");
    std::fs::write(&toml, "pyramid = []\n").unwrap();
    fails(&config, 2, "at least one level");
    assert!(!model.exists());
}

#[test]
fn precomputed_descriptors_cannot_use_a_pyramid() {
    let dir = tempfile::tempdir().unwrap();
    let mut list = String::new();
    // Ten classes, as many as the embedded data's, so eval gets past its class check.
    for i in 0..10 {
        let data: Vec<f32> = (0..5 * 4).map(|j| ((i * 7 + j * 3) % 11) as f32).collect();
        let name = format!("img{i}.npy");
        dfk::npy::write_f32_matrix(dir.path().join(&name), &data, 5, 4).unwrap();
        list.push_str(&format!("{name} {i}\n"));
    }
    let list_path = dir.path().join("list.txt");
    std::fs::write(&list_path, list).unwrap();
    let model = dir.path().join("m.dfk");
    fails(
        &[
            "train",
            "--data",
            &s(&list_path),
            "--format",
            "npy",
            "--spatial",
            "false",
            "--pyramid",
            "2x2",
            "--out",
            &s(&model),
        ],
        2,
        "a spatial pyramid needs them",
    );
    assert!(!model.exists());
    // A pyramid model (trained on images) refuses them too, in every command that encodes.
    ok(&[
        &["train"][..],
        &SMALL,
        &["--pyramid", "2x2", "--out", &s(&model)],
    ]
    .concat());
    let data = ["--data", &s(&list_path), "--format", "npy"];
    let fv = dir.path().join("fv.npy");
    for cmd in [
        &["predict", "--model", &s(&model)][..],
        &["eval", "--model", &s(&model)][..],
        &["encode", "--model", &s(&model), "--out", &s(&fv)][..],
    ] {
        fails(&[cmd, &data[..]].concat(), 2, "encodes a spatial pyramid");
    }
    assert!(!fv.exists());
    // So does a model that appends each descriptor's (x, y) (the image default), with a
    // usage error rather than a complaint about the placeholder positions.
    let plain = dir.path().join("plain.dfk");
    ok(&[&["train"][..], &SMALL, &["--out", &s(&plain)]].concat());
    for cmd in [
        &["predict", "--model", &s(&plain)][..],
        &["eval", "--model", &s(&plain)][..],
        &["encode", "--model", &s(&plain), "--out", &s(&fv)][..],
    ] {
        fails(&[cmd, &data[..]].concat(), 2, "(spatial = true)");
    }
    assert!(!fv.exists());
}
