//! `dfk::model`: bit-exact round trips and a clear error for every malformed file.

use std::collections::HashMap;
use std::path::Path;

use dfk::gmm::Gmm;
use dfk::model::{self, ModelFile, FORMAT_VERSION, METADATA_KEY};
use dfk::pca::Pca;
use dfk::svm::{BinarySvm, OneVsRest};
use safetensors::tensor::{Dtype, TensorView};

/// Values that are awkward for text formats: non-terminating binary fractions, tiny and huge.
fn awkward(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let t = (i as f32 + 1.0) * 0.1 + seed as f32 * 0.37;
            (t.sin() * 3.3).exp() * 1.000_000_1
        })
        .collect()
}

fn gmm() -> Gmm {
    let (k, d) = (3, 5);
    let w = awkward(k, 7);
    Gmm::new(k, d, awkward(k * d, 1), awkward(k * d, 2), w).unwrap()
}

fn svm(dim: usize, classes: usize) -> OneVsRest {
    OneVsRest {
        classes,
        dim,
        multilabel: false,
        models: (0..classes)
            .map(|c| BinarySvm {
                w: awkward(dim, 10 + c as u32),
                b: -0.1 * c as f32,
                alpha: vec![0.0, 1.0 / 3.0, 3.0],
                primal: 1.0 / 7.0,
                dual: 1.0 / 9.0,
                iterations: 17 + c,
            })
            .collect(),
    }
}

fn pipeline() -> ModelFile {
    let (dims, d_in) = (3, 4);
    let pca = Pca::new(
        awkward(d_in, 3),
        awkward(dims * d_in, 4),
        vec![3.5, 2.25, 0.1],
        true,
    )
    .unwrap();
    ModelFile {
        pca: Some(pca),
        gmm: gmm(),
        svm: Some(svm(2 * 3 * 5, 3)),
        class_gmms: Vec::new(),
        class_names: vec!["t-shirt".into(), "trouser".into(), "ankle boot ☂".into()],
        config: serde_json::json!({"k": 3, "c": 0.1 + 0.2, "pca_dims": 3, "whiten": true}),
        history: serde_json::json!({"objective": [1.0 / 3.0, 0.123_456_789_012_345_68, 1e-300]}),
    }
}

#[test]
fn pipeline_round_trips_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.dfk"), dir.path().join("b.dfk"));
    let m = pipeline();
    m.save(&a).unwrap();
    let loaded = ModelFile::load(&a).unwrap();
    assert_eq!(loaded, m);
    loaded.save(&b).unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    // Nothing but the two files: the temporary files were renamed.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    // The GMM of a pipeline file serves the core subcommands too.
    assert_eq!(model::load_gmm(&a).unwrap(), m.gmm);
    let s = model::summarize(&a).unwrap();
    assert_eq!(s.header.kind, model::ModelKind::Pipeline);
    assert!(s
        .arrays
        .iter()
        .any(|(n, _, shape)| n == "gmm.means" && shape == &vec![3, 5]));
}

#[test]
fn svm_file_round_trips_and_pipeline_serves_its_svms() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, p) = (
        dir.path().join("s.dfk"),
        dir.path().join("t.dfk"),
        dir.path().join("p.dfk"),
    );
    let s = svm(12, 4);
    let names: Vec<String> = (0..4).map(|i| format!("c{i}")).collect();
    model::save_svm(&a, &s, &names).unwrap();
    let (back, back_names) = model::load_svm(&a).unwrap();
    assert_eq!((&back, &back_names), (&s, &names));
    model::save_svm(&b, &back, &back_names).unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert!(model::load_gmm(&a)
        .unwrap_err()
        .to_string()
        .contains("kind"));
    let m = pipeline();
    m.save(&p).unwrap();
    assert_eq!(model::load_svm(&p).unwrap().0, m.svm.unwrap());
    // SVMs whose width is not the GMM's Fisher vector length make an inconsistent pipeline.
    let mut bad = pipeline();
    bad.svm = Some(svm(7, 3));
    bad.save(&p).unwrap();
    let e = ModelFile::load(&p).unwrap_err().to_string();
    assert!(e.contains("svm.w") && e.contains("p.dfk"), "{e}");
    // Class names that do not name every SVM (one name for four) are rejected on load.
    model::save_svm(&a, &s, &names[..1]).unwrap();
    let e = model::load_svm(&a).unwrap_err().to_string();
    assert!(e.contains("class_names") && e.contains("s.dfk"), "{e}");
    let mut bad = pipeline();
    bad.class_names.push("extra".into());
    bad.save(&p).unwrap();
    let e = ModelFile::load(&p).unwrap_err().to_string();
    assert!(e.contains("class_names") && e.contains("p.dfk"), "{e}");
}

/// A per-class model (one GMM per class, Deep Fisher Kernel) round-trips, and per-class GMMs
/// that do not match the shared GMM or the SVM rows are rejected.
#[test]
fn per_class_gmms_round_trip_and_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.dfk"), dir.path().join("b.dfk"));
    let shifted = |s: u32| {
        Gmm::new(
            3,
            5,
            awkward(15, 10 + s),
            awkward(15, 20 + s),
            awkward(3, 30 + s),
        )
        .unwrap()
    };
    let mut m = pipeline();
    m.class_gmms = (0..3).map(shifted).collect();
    m.save(&a).unwrap();
    let loaded = ModelFile::load(&a).unwrap();
    assert_eq!(loaded, m);
    loaded.save(&b).unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let s = model::summarize(&a).unwrap();
    assert!(s
        .arrays
        .iter()
        .any(|(n, _, shape)| n == "class_gmm.means" && shape == &vec![3, 3, 5]));
    // Two GMMs for three SVM rows.
    let mut bad = pipeline();
    bad.class_gmms = (0..2).map(shifted).collect();
    bad.save(&a).unwrap();
    let e = ModelFile::load(&a).unwrap_err().to_string();
    assert!(
        e.contains("2 per-class GMMs (class_gmm.*) for 3 one-vs-rest SVMs") && e.contains("a.dfk"),
        "{e}"
    );
    // Per-class GMMs of another K than the shared one cannot be written.
    let mut bad = pipeline();
    bad.class_gmms =
        vec![Gmm::new(2, 5, awkward(10, 1), awkward(10, 2), awkward(2, 3)).unwrap(); 3];
    assert!(bad.save(&b).is_err());
}

#[test]
fn gmm_file_round_trips_and_is_not_a_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("g.dfk"), dir.path().join("h.dfk"));
    let g = gmm();
    model::save_gmm(&a, &g).unwrap();
    let back = model::load_gmm(&a).unwrap();
    assert_eq!(back, g);
    model::save_gmm(&b, &back).unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let e = ModelFile::load(&a).unwrap_err().to_string();
    assert!(e.contains("g.dfk") && e.contains("kind"), "{e}");
}

/// Writes a safetensors file with the given header JSON and arrays.
fn craft(path: &Path, header: Option<serde_json::Value>, arrays: &[(&str, Vec<usize>, Vec<f32>)]) {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = arrays
        .iter()
        .map(|(n, s, v)| {
            (
                n.to_string(),
                s.clone(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let meta = header.map(|h| HashMap::from([(METADATA_KEY.to_string(), h.to_string())]));
    std::fs::write(path, safetensors::serialize(views, meta).unwrap()).unwrap();
}

fn header(version: u32, kind: &str) -> serde_json::Value {
    serde_json::json!({
        "format": "dfk-model", "format_version": version, "kind": kind, "writer": "test",
        "class_names": [], "pca_whiten": null, "svm_multilabel": null,
        "config": null, "history": null
    })
}

fn gmm_arrays(var_shape: Vec<usize>, mean0: f32) -> Vec<(&'static str, Vec<usize>, Vec<f32>)> {
    let mut means = vec![0.5f32; 6];
    means[0] = mean0;
    vec![
        ("gmm.means", vec![2, 3], means),
        (
            "gmm.variances",
            var_shape.clone(),
            vec![1.0; var_shape.iter().product()],
        ),
        ("gmm.weights", vec![2], vec![0.5, 0.5]),
    ]
}

fn load_err(path: &Path) -> String {
    let e = model::load_gmm(path).unwrap_err().to_string();
    assert!(
        e.contains(&path.display().to_string()),
        "no file name in {e}"
    );
    e
}

#[test]
fn malformed_files_give_errors_naming_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);

    craft(
        &p("ok.dfk"),
        Some(header(FORMAT_VERSION, "gmm")),
        &gmm_arrays(vec![2, 3], 0.0),
    );
    assert_eq!(model::load_gmm(p("ok.dfk")).unwrap().k(), 2);

    craft(
        &p("v99.dfk"),
        Some(header(99, "gmm")),
        &gmm_arrays(vec![2, 3], 0.0),
    );
    assert!(load_err(&p("v99.dfk")).contains("format_version"));

    craft(
        &p("shape.dfk"),
        Some(header(FORMAT_VERSION, "gmm")),
        &gmm_arrays(vec![2, 4], 0.0),
    );
    // Either array may be the wrong one: both are named.
    let e = load_err(&p("shape.dfk"));
    assert!(
        e.contains("`gmm.variances` has shape [2, 4]: expected [2, 3], the K × D of `gmm.means`"),
        "{e}"
    );

    craft(
        &p("nan.dfk"),
        Some(header(FORMAT_VERSION, "gmm")),
        &gmm_arrays(vec![2, 3], f32::NAN),
    );
    assert!(load_err(&p("nan.dfk")).contains("non-finite"));

    // Weights that do not sum to 1 (another writer's file) would scale the plain Fisher
    // vectors: refused, naming the arrays and the sum.
    let mut unnormalised = gmm_arrays(vec![2, 3], 0.0);
    unnormalised[2].2 = vec![5.0, 5.0];
    craft(
        &p("weights.dfk"),
        Some(header(FORMAT_VERSION, "gmm")),
        &unnormalised,
    );
    let e = load_err(&p("weights.dfk"));
    assert!(
        e.contains("gmm.*") && e.contains("GMM weights sum to 10: expected 1"),
        "{e}"
    );

    let mut missing = gmm_arrays(vec![2, 3], 0.0);
    missing.pop();
    craft(
        &p("missing.dfk"),
        Some(header(FORMAT_VERSION, "gmm")),
        &missing,
    );
    assert!(load_err(&p("missing.dfk")).contains("gmm.weights"));

    craft(&p("plain.safetensors"), None, &gmm_arrays(vec![2, 3], 0.0));
    assert!(load_err(&p("plain.safetensors")).contains("not a dfk model"));

    craft(
        &p("kind.dfk"),
        Some(header(FORMAT_VERSION, "svm")),
        &gmm_arrays(vec![2, 3], 0.0),
    );
    assert!(load_err(&p("kind.dfk")).contains("kind"));

    let mut other = header(FORMAT_VERSION, "gmm");
    other["format"] = "something-else".into();
    craft(&p("other.dfk"), Some(other), &gmm_arrays(vec![2, 3], 0.0));
    let e = load_err(&p("other.dfk"));
    assert!(
        e.contains(r#"`format` is "something-else": expected "dfk-model""#) && !e.contains("Some("),
        "{e}"
    );
    let mut none = header(FORMAT_VERSION, "gmm");
    none.as_object_mut().unwrap().remove("format");
    craft(&p("none.dfk"), Some(none), &gmm_arrays(vec![2, 3], 0.0));
    let e = load_err(&p("none.dfk"));
    assert!(e.contains("`format` is missing"), "{e}");

    let good = std::fs::read(p("ok.dfk")).unwrap();
    std::fs::write(p("truncated.dfk"), &good[..good.len() - 3]).unwrap();
    assert!(load_err(&p("truncated.dfk")).contains("truncated"));

    std::fs::write(p("text.dfk"), b"not a model at all").unwrap();
    load_err(&p("text.dfk"));

    let e = model::load_gmm(p("absent.dfk")).unwrap_err().to_string();
    assert!(e.contains("absent.dfk"), "{e}");
}

/// An SVM file whose `svm.w` is stored features × classes is named as transposed (the error
/// used to blame `svm.b` for not matching the features).
#[test]
fn a_transposed_svm_weight_matrix_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.dfk");
    model::save_svm(&path, &svm(5, 3), &[]).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let metadata = meta.metadata().clone();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let views: Vec<(String, TensorView)> = tensors
        .tensors()
        .into_iter()
        .map(|(name, t)| {
            let shape = if name == "svm.w" {
                vec![t.shape()[1], t.shape()[0]]
            } else {
                t.shape().to_vec()
            };
            (name, TensorView::new(t.dtype(), shape, t.data()).unwrap())
        })
        .collect();
    std::fs::write(&path, safetensors::serialize(views, metadata).unwrap()).unwrap();
    let e = model::load_svm(&path).unwrap_err().to_string();
    assert!(
        e.contains("`svm.w` has shape [5, 3]") && e.contains("looks transposed"),
        "{e}"
    );
}

/// A `Gmm` deserialised from JSON is checked as `Gmm::from_normalised` checks it (it used to
/// skip every check: wrong lengths panicked later, unnormalised weights scaled the vectors),
/// and a valid one keeps its values exactly.
#[test]
fn deserialised_gmms_are_checked() {
    let parse = |text: &str| serde_json::from_str::<Gmm>(text);
    assert!(
        parse(r#"{"k":2,"d":2,"means":[0,0],"variances":[1,1,1,1],"weights":[0.5,0.5]}"#).is_err()
    );
    let e = parse(r#"{"k":2,"d":1,"means":[0,1],"variances":[1,1],"weights":[3,3]}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("GMM weights sum to 6"), "{e}");
    let g = gmm();
    let back: Gmm = parse(&serde_json::to_string(&g).unwrap()).unwrap();
    assert_eq!(back, g);
}
