//! `dfk::pipeline`: configuration, extraction and its cache, preprocessing, a small end-to-end
//! fit, model round trip and evaluation.

use dfk::dataset::{embedded_fashion_mnist, Dataset, Descriptors};
use dfk::model::ModelFile;
use dfk::pca::Pca;
use dfk::pipeline::{
    evaluate, extract_descriptors, fit_from_descriptors, fit_pipeline, fit_preprocessed,
    fit_preprocessor, load_or_extract, Pipeline, PipelineConfig, Preprocessor, RawDescriptors,
    Silent,
};
use dfk::svm::Labels;

fn small_train(n: usize) -> Dataset {
    let (train, _) = embedded_fashion_mnist().unwrap();
    // The subset is stratified; take every class.
    let idx: Vec<usize> = (0..n).map(|i| i * (train.len() / n)).collect();
    train.subset(&idx).unwrap()
}

#[test]
fn config_round_trips_through_json_and_rejects_unknown_keys() {
    let mut cfg = PipelineConfig::default();
    cfg.gmm.k = 7;
    cfg.svm.c = 0.1 + 0.2;
    cfg.sift.resize = None;
    let v = serde_json::to_value(&cfg).unwrap();
    let back: PipelineConfig = serde_json::from_value(v).unwrap();
    assert_eq!(back, cfg);
    let partial: PipelineConfig = serde_json::from_str(r#"{"gmm": {"k": 5}}"#).unwrap();
    assert_eq!(partial.gmm.k, 5);
    assert_eq!(partial.svm, PipelineConfig::default().svm);
    assert!(serde_json::from_str::<PipelineConfig>(r#"{"gmm": {"kk": 5}}"#).is_err());
    assert!(serde_json::from_str::<PipelineConfig>(r#"{"colour": 1}"#).is_err());
    let mut bad = PipelineConfig::default();
    bad.svm.c = -1.0;
    assert!(bad.validate().unwrap_err().to_string().contains("svm.c"));
    bad = PipelineConfig::default();
    bad.gmm.k = 0;
    assert!(bad.validate().is_err());
}

#[test]
fn a_partial_sift_table_keeps_the_pipeline_defaults_and_unknown_keys_fail() {
    let defaults = PipelineConfig::default();
    // Only `step` given: bins, RootSIFT and resize stay the pipeline's (not `vl_phow`'s).
    let partial: PipelineConfig = serde_json::from_str(r#"{"sift": {"step": 8}}"#).unwrap();
    assert_eq!(partial.sift.step, 8);
    assert_eq!(partial.sift.bin_sizes, defaults.sift.bin_sizes);
    assert!(partial.sift.root_sift);
    assert_eq!(partial.sift.resize, Some((56, 56)));
    // `resize` can be turned off explicitly, and that survives a round trip.
    let off: PipelineConfig = serde_json::from_str(r#"{"sift": {"resize": "none"}}"#).unwrap();
    assert_eq!(off.sift.resize, None);
    let text = serde_json::to_string(&off).unwrap();
    assert!(text.contains(r#""resize":"none""#), "{text}");
    assert_eq!(serde_json::from_str::<PipelineConfig>(&text).unwrap(), off);
    // Model files written before stored null for no resize.
    let null: PipelineConfig = serde_json::from_str(r#"{"sift": {"resize": null}}"#).unwrap();
    assert_eq!(null.sift.resize, None);
    for bad in [
        r#"{"sift": {"bogus": 1}}"#,
        r#"{"fisher": {"bogus": 1}}"#,
        r#"{"sift": {"resize": "big"}}"#,
        r#"{"sift": {"resize": [56]}}"#,
        r#"{"sift": {"resize": [56, 56, 1]}}"#,
        r#"{"sift": 3}"#,
    ] {
        let err = serde_json::from_str::<PipelineConfig>(bad)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bogus")
                || err.contains("resize")
                || err.contains("[width, height]")
                || err.contains("table"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn extraction_is_deterministic_and_positions_are_normalised() {
    let data = small_train(20);
    let cfg = PipelineConfig::default();
    let counted = std::sync::atomic::AtomicUsize::new(0);
    let raw = extract_descriptors(&data, &cfg.sift, &|n| {
        counted.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    })
    .unwrap();
    assert_eq!(counted.into_inner(), 20);
    assert_eq!(raw.images(), 20);
    assert_eq!(raw.descriptors.dim, 128);
    assert_eq!(raw.positions.len(), 2 * raw.descriptors.rows());
    assert!(raw.positions.iter().all(|p| (-0.5..=0.5).contains(p)));
    // Every image of the same size yields the same number of descriptors.
    let per: Vec<usize> = raw
        .descriptors
        .offsets
        .windows(2)
        .map(|w| w[1] - w[0])
        .collect();
    assert!(per.iter().all(|&c| c == per[0] && c > 0));
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let again = one.install(|| extract_descriptors(&data, &cfg.sift, &|_| {}).unwrap());
    assert_eq!(again, raw);
}

#[test]
fn descriptor_cache_hits_and_misses() {
    let data = small_train(10);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = PipelineConfig::default();
    let pre = fit_preprocessor(&data, &cfg, &|_| {}).unwrap();
    let run = |d: &Dataset, cfg: &PipelineConfig, pre: &Preprocessor| {
        load_or_extract(d, &cfg.sift, pre, Some(dir.path()), &|_| {}).unwrap()
    };
    let (a, hit_a) = run(&data, &cfg, &pre);
    let (b, hit_b) = run(&data, &cfg, &pre);
    assert!(!hit_a && hit_b);
    assert_eq!(a, b);
    assert_eq!(a.dim, 32 + 2);
    // Streaming extraction equals extracting everything, then preprocessing.
    let raw = extract_descriptors(&data, &cfg.sift, &|_| {}).unwrap();
    assert_eq!(pre.apply_all(&raw).unwrap(), a);
    // Another PCA, other SIFT settings or other images miss the cache.
    let mut other_pre = pre.clone();
    other_pre.spatial = false;
    assert!(!run(&data, &cfg, &other_pre).1);
    cfg.sift.step += 1;
    let (c, hit_c) = run(&data, &cfg, &pre);
    assert!(!hit_c);
    assert_ne!(c.rows(), a.rows());
    assert!(!run(&small_train(9), &cfg, &pre).1);
}

#[test]
fn preprocessing_projects_normalises_and_appends_positions() {
    // A PCA that keeps the first two coordinates of 3-d descriptors.
    let pca = Pca::new(
        vec![0.0; 3],
        vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        vec![2.0, 1.0],
        false,
    )
    .unwrap();
    let cfg = PipelineConfig {
        l2_normalize: true,
        spatial: true,
        ..Default::default()
    };
    let pre = Preprocessor::from_parts(3, Some(pca), &cfg).unwrap();
    assert_eq!(pre.dim(), 4);
    let y = pre
        .apply(&[3.0, 4.0, 9.0, 0.0, 0.0, 1.0], &[0.1, -0.2, 0.3, 0.4])
        .unwrap();
    assert_eq!(y, vec![0.6, 0.8, 0.1, -0.2, 0.0, 0.0, 0.3, 0.4]);
    assert!(pre.apply(&[1.0, 2.0], &[0.0, 0.0]).is_err());
    assert!(pre.apply(&[1.0, 2.0, 3.0], &[0.0]).is_err());
}

#[test]
fn a_pyramid_without_position_columns_is_a_clear_error() {
    // spatial = false: the preprocessed rows carry no (x, y) for the pyramid's cells.
    let cfg = PipelineConfig {
        spatial: false,
        pyramid: Some(dfk::pyramid::SpatialPyramid::perronnin2010()),
        ..Default::default()
    };
    let pre = Preprocessor::from_parts(3, None, &cfg).unwrap();
    let desc = Descriptors::new(vec![0.5; 12], 3, vec![0, 2, 4]).unwrap();
    let labels = Labels::MultiClass {
        labels: vec![0, 1],
        classes: 2,
    };
    let err = fit_preprocessed(pre, &desc, &labels, &cfg, &Silent).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("needs descriptor positions"), "{msg}");
}

#[test]
fn evaluation_of_known_scores() {
    let labels = Labels::MultiClass {
        labels: vec![0, 1, 2, 2],
        classes: 3,
    };
    let scores = [
        0.9, 0.1, 0.0, // 0 → 0
        0.2, 0.7, 0.1, // 1 → 1
        0.1, 0.8, 0.3, // 2 → 1 (second: 2)
        0.0, 0.1, 0.5, // 2 → 2
    ];
    let names = vec!["a".to_string(), "b".into(), "c".into()];
    let e = evaluate(&scores, &labels, &names).unwrap();
    assert_eq!(e.accuracy, Some(0.75));
    assert_eq!(
        e.confusion,
        vec![vec![1, 0, 0], vec![0, 1, 0], vec![0, 1, 1]]
    );
    assert_eq!(e.top_k[0], (1, 0.75));
    assert_eq!(e.top_k[1], (2, 1.0));
    // Class 1: scores 0.1, 0.7, 0.8, 0.1 with one positive (image 1) ranked second: AP 1/2.
    assert!((e.per_class_ap[1] - 0.5).abs() < 1e-12);
    assert!((e.per_class_ap[0] - 1.0).abs() < 1e-12);
    assert!((e.per_class_ap[2] - 1.0).abs() < 1e-12);
    assert!((e.map - 2.5 / 3.0).abs() < 1e-12);
    assert_eq!(e.pr_curves.len(), 3);
    assert!(evaluate(&scores[..11], &labels, &names).is_err());
    let mut nan = scores;
    nan[4] = f32::NAN;
    assert!(evaluate(&nan, &labels, &names).is_err());
    // Without images of class 2 (a subset): its AP is undefined (NaN) and left out of the mAP,
    // the others are scored as before on the first two images.
    let subset = Labels::MultiClass {
        labels: vec![0, 1],
        classes: 3,
    };
    let e = evaluate(&scores[..6], &subset, &names).unwrap();
    assert_eq!(e.absent_classes, vec![2]);
    assert!(e.per_class_ap[2].is_nan() && e.per_class_ap[..2] == [1.0, 1.0]);
    assert_eq!((e.map, e.accuracy), (1.0, Some(1.0)));
    assert!(e.pr_curves[2].precision.is_empty() && !e.pr_curves[1].precision.is_empty());
    // No class with an image at all is an error.
    let none = Labels::MultiLabel {
        targets: vec![false; 6],
        classes: 3,
    };
    assert!(evaluate(&scores[..6], &none, &names).is_err());
}

/// Images whose descriptors cluster by class: class c's descriptors lie near 10·e_c.
fn synthetic(
    images: usize,
    classes: usize,
    per_image: usize,
    dim: usize,
) -> (RawDescriptors, Labels) {
    let mut data = Vec::new();
    let mut positions = Vec::new();
    let mut offsets = vec![0];
    let mut labels = Vec::new();
    let mut state = 12345u64;
    let mut rnd = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
    };
    for i in 0..images {
        let c = i % classes;
        labels.push(c);
        for r in 0..per_image {
            for j in 0..dim {
                let centre = if j == c { 10.0 } else { 0.0 };
                data.push(centre + rnd());
            }
            positions.push(r as f32 / per_image as f32 - 0.5);
            positions.push(rnd());
        }
        offsets.push(offsets.last().unwrap() + per_image);
    }
    (
        RawDescriptors {
            descriptors: Descriptors::new(data, dim, offsets).unwrap(),
            positions,
        },
        Labels::MultiClass { labels, classes },
    )
}

#[test]
fn fit_from_descriptors_separates_synthetic_classes_and_round_trips() {
    let (raw, labels) = synthetic(30, 3, 12, 8);
    let mut cfg = PipelineConfig::default();
    cfg.pca.dims = 4;
    cfg.gmm.k = 4;
    cfg.gmm.max_iter = 20;
    let fit = fit_from_descriptors(&raw, &labels, &cfg, &Silent).unwrap();
    assert_eq!(fit.history["train_accuracy"], 1.0);
    let p = &fit.pipeline;
    assert_eq!(p.gmm.d(), 4 + 2);
    assert_eq!(fit.train_features.len(), 30 * p.gmm.fisher_len());
    let stages: Vec<&str> = fit.timings.iter().map(|t| t.stage.as_str()).collect();
    assert_eq!(stages, ["pca", "preprocess", "gmm", "encode", "svm"]);
    assert_eq!(fit.history["timings"].as_array().unwrap().len(), 5);

    // Seeded: the same fit again gives the same model.
    let again = fit_from_descriptors(&raw, &labels, &cfg, &Silent).unwrap();
    assert_eq!(again.pipeline, fit.pipeline);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.dfk");
    let mut named = p.clone();
    named.class_names = vec!["x".into(), "y".into(), "z".into()];
    named
        .to_model(fit.history.clone())
        .unwrap()
        .save(&path)
        .unwrap();
    let model = ModelFile::load(&path).unwrap();
    let back = Pipeline::from_model(&model, &path).unwrap();
    assert_eq!(back, named);

    // A hand-built model (never saved, so never checked by `ModelFile::load`) with per-class
    // GMMs for two of the three classes is refused, naming both counts.
    let mut short = model.clone();
    short.class_gmms = vec![model.gmm.clone(); 2];
    let e = Pipeline::from_model(&short, &path).unwrap_err().to_string();
    assert!(
        e.contains("2 per-class GMMs") && e.contains("3 one-vs-rest SVMs") && e.contains("p.dfk"),
        "{e}"
    );
    short.class_gmms.push(model.gmm.clone());
    assert!(Pipeline::from_model(&short, &path).is_ok());
}

#[test]
fn fit_pipeline_on_a_few_fashion_mnist_images() {
    let data = small_train(100);
    let mut cfg = PipelineConfig::default();
    cfg.gmm.k = 8;
    cfg.gmm.max_iter = 10;
    cfg.pca.dims = 16;
    let fit = fit_pipeline(&data, &cfg, None, &Silent).unwrap();
    assert_eq!(fit.pipeline.class_names.len(), 10);
    assert_eq!(fit.pipeline.svm.classes, 10);
    // 100 images in 2·8·18 = 288 dimensions are linearly separable.
    assert!(fit.history["train_accuracy"].as_f64().unwrap() > 0.95);
    let fv = fit.pipeline.encode_dataset(&data, None, &Silent).unwrap();
    assert_eq!(fv, fit.train_features);
}

/// An image held in memory (IDX, embedded set) that yields no descriptor is named by its
/// index in the data set and the file it comes from: its size alone does not tell it from the
/// others.
#[test]
fn a_memory_image_without_descriptors_is_named_by_its_index() {
    let mut data = small_train(3);
    data.items[2].source = dfk::dataset::ImageSource::Memory {
        width: 6,
        height: 5,
        pixels: vec![128; 30],
    };
    let params = dfk::sift::DsiftParams {
        resize: None,
        ..PipelineConfig::default().sift
    };
    let err = match extract_descriptors(&data, &params, &|_| ()) {
        Ok(_) => panic!("a 6 × 5 image gave descriptors"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.starts_with("image 2 of <embedded>/train-images-idx3-ubyte.gz (memory image 6x5): ")
            && err.contains("smaller than one descriptor"),
        "{err}"
    );
}

/// The settings' names are read in lower case or capitalised alike (`info --config` writes
/// `window = "Flat"` but `weighting = "uniform"`), and `resize = "none"` in any case, as
/// `--resize none` on the command line.
#[test]
fn setting_names_are_read_in_either_case() {
    use dfk::pipeline::{PipelineConfig, Weighting};
    for (weighting, want) in [
        ("uniform", Weighting::Uniform),
        ("Uniform", Weighting::Uniform),
        ("balanced", Weighting::Balanced),
        ("Balanced", Weighting::Balanced),
    ] {
        let cfg: PipelineConfig = serde_json::from_value(serde_json::json!({
            "svm": {"weighting": weighting},
        }))
        .unwrap();
        assert_eq!(cfg.svm.weighting, want, "{weighting}");
    }
    for none in ["none", "None", "NONE"] {
        let cfg: PipelineConfig = serde_json::from_value(serde_json::json!({
            "sift": {"resize": none},
        }))
        .unwrap();
        assert_eq!(cfg.sift.resize, None, "{none}");
    }
    assert!(serde_json::from_value::<PipelineConfig>(
        serde_json::json!({"svm": {"weighting": "BALANCED!"}})
    )
    .is_err());
}

/// An invalid key of the `sift` table is named (the parser itself points at the table only),
/// with a hint when the value is TOML's nan or inf (null by then).
#[test]
fn a_bad_sift_setting_is_named() {
    use dfk::pipeline::PipelineConfig;
    for (sift, want) in [
        (serde_json::json!({"stepp": 3}), "sift.stepp: unknown field"),
        (
            serde_json::json!({"step": 2, "magnif": null}),
            "sift.magnif (nan and inf are not valid): invalid type: null",
        ),
        (
            serde_json::json!({"resize": [56]}),
            "sift.resize: invalid length 1",
        ),
    ] {
        let e = serde_json::from_value::<PipelineConfig>(serde_json::json!({ "sift": sift }))
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{e}");
    }
}

/// The PCA of a pipeline trained from extracted descriptors is the one trained from the images
/// themselves, also when `pca.sample` takes a subset of the images (it was fitted on sampled
/// rows of all images instead of the images' sample, a different PCA).
#[test]
fn descriptors_and_images_fit_the_same_pca() {
    let data = small_train(40);
    let mut cfg = PipelineConfig::default();
    cfg.pca.dims = 8;
    cfg.pca.sample = 500;
    cfg.gmm.k = 2;
    cfg.gmm.max_iter = 5;
    let from_images = fit_preprocessor(&data, &cfg, &|_| {}).unwrap();
    let raw = extract_descriptors(&data, &cfg.sift, &|_| {}).unwrap();
    assert!(
        raw.descriptors.rows() > 2 * cfg.pca.sample,
        "the sample must take a subset of the images"
    );
    let fit = fit_from_descriptors(&raw, &data.labels(), &cfg, &Silent).unwrap();
    assert_eq!(fit.pipeline.pre, from_images);
    // Without the sample taking a subset, the same too.
    cfg.pca.sample = 1_000_000;
    let fit = fit_from_descriptors(&raw, &data.labels(), &cfg, &Silent).unwrap();
    assert_eq!(
        fit.pipeline.pre,
        fit_preprocessor(&data, &cfg, &|_| {}).unwrap()
    );
}

/// A cache entry whose values were changed in place (same shape, so the structural checks
/// pass) no longer matches its checksum: it is extracted afresh and replaced, and the result is
/// the true descriptors (it was read as it was, silently changing the model). An entry
/// without a checksum (written before it was recorded) is still read.
#[test]
fn a_cache_entry_changed_in_place_is_extracted_again() {
    let data = small_train(10);
    let dir = tempfile::tempdir().unwrap();
    let cfg = PipelineConfig::default();
    let pre = fit_preprocessor(&data, &cfg, &|_| {}).unwrap();
    let run = || load_or_extract(&data, &cfg.sift, &pre, Some(dir.path()), &|_| {}).unwrap();
    let (truth, hit) = run();
    assert!(!hit);
    let entry = std::fs::read_dir(dir.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert!(entry.join("checksum.txt").is_file());
    let mut changed = truth.clone();
    changed.data[7] += 0.25;
    changed
        .save_npy(entry.join("descriptors.npy"), entry.join("offsets.npy"))
        .unwrap();
    let (again, hit) = run();
    assert!(!hit, "a changed entry was read as a hit");
    assert_eq!(again, truth);
    assert!(run().1, "the replaced entry is a hit again");
    std::fs::remove_file(entry.join("checksum.txt")).unwrap();
    assert!(run().1, "an entry without a checksum is read");
}

/// Images replaced while their descriptors are extracted (between the key's hashing and the
/// reading) are not cached under the old content's key: the next run misses and stores the
/// new images' descriptors.
#[test]
fn images_changed_during_extraction_are_not_cached() {
    let dir = tempfile::tempdir().unwrap();
    let pgm = |path: &std::path::Path, seed: u32| {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut bytes = b"P5\n40 40\n255\n".to_vec();
        bytes.extend((0..1600u32).map(|i| (i.wrapping_mul(seed * 2 + 1) % 251) as u8));
        std::fs::write(path, bytes).unwrap();
    };
    for (c, class) in ["a", "b"].iter().enumerate() {
        for j in 0..3u32 {
            pgm(
                &dir.path().join(format!("img/{class}/{j}.pgm")),
                c as u32 * 3 + j,
            );
        }
    }
    let data = dfk::dataset::load_folder(dir.path().join("img")).unwrap();
    let mut cfg = PipelineConfig::default();
    cfg.pca.dims = 0;
    let pre = fit_preprocessor(&data, &cfg, &|_| {}).unwrap();
    let cache = dir.path().join("cache");
    let changed = std::sync::Once::new();
    let replace = |_| changed.call_once(|| pgm(&dir.path().join("img/a/0.pgm"), 40));
    let (_, hit) = load_or_extract(&data, &cfg.sift, &pre, Some(&cache), &replace).unwrap();
    assert!(!hit);
    let complete = |c: &std::path::Path| {
        std::fs::read_dir(c)
            .map(|r| {
                r.flatten()
                    .any(|e| dfk::pipeline::cache_entry_complete(&e.path()))
            })
            .unwrap_or(false)
    };
    assert!(
        !complete(&cache),
        "descriptors cached under the old images' key"
    );
    let (new, hit) = load_or_extract(&data, &cfg.sift, &pre, Some(&cache), &|_| {}).unwrap();
    assert!(!hit);
    assert!(complete(&cache));
    let (again, hit) = load_or_extract(&data, &cfg.sift, &pre, Some(&cache), &|_| {}).unwrap();
    assert!(hit);
    assert_eq!(again, new);
}
