//! The library's public functions return errors, not panics (or aborts, or endless loops), for
//! arguments a caller can plausibly pass: values built by hand through public fields, sizes
//! that overflow, another object's scratch. Each case here panicked, aborted or hung before.

use dfk::dataset::{Dataset, Descriptors, ImageSource, Item};
use dfk::deep::{LineSearch, Trial};
use dfk::fisher::{FisherEncoder, FisherOptions, GmmGradient};
use dfk::gmm::{fit_gmm, Gmm, GmmParams};
use dfk::pca::Pca;
use dfk::pipeline::{encode_all, Preprocessor, RawDescriptors};
use dfk::svm::{train_one_vs_rest, ClassWeighting, Labels, SvmParams};

fn gmm(k: usize, d: usize) -> Gmm {
    let means = (0..k * d).map(|i| (i % 7) as f32 * 0.3).collect();
    Gmm::new(k, d, means, vec![1.0; k * d], vec![1.0 / k as f32; k]).unwrap()
}

/// Descriptors whose offsets run past their rows (the fields are public).
#[test]
fn inconsistent_descriptors_are_errors() {
    let desc = Descriptors {
        data: vec![0.5; 2 * 4],
        dim: 4,
        offsets: vec![0, 5],
    };
    let e = encode_all(&gmm(2, 4), FisherOptions::default(), &desc, &|_| {}).unwrap_err();
    assert!(e.to_string().contains("descriptor offsets"), "{e}");
    let pre = Preprocessor {
        d_in: 4,
        pca: None,
        l2: true,
        spatial: false,
    };
    let raw = |desc: Descriptors, positions: Vec<f32>| RawDescriptors {
        descriptors: desc,
        positions,
    };
    assert!(pre.apply_all(&raw(desc.clone(), Vec::new())).is_err());
    // Without `spatial`, descriptors without positions are fine.
    let ok = Descriptors::new(vec![0.5; 3 * 4], 4, vec![0, 1, 3]).unwrap();
    assert_eq!(
        pre.apply_all(&raw(ok.clone(), Vec::new())).unwrap().rows(),
        3
    );
    let spatial = Preprocessor {
        spatial: true,
        ..pre.clone()
    };
    let e = spatial.apply_all(&raw(ok, Vec::new())).unwrap_err();
    assert!(e.to_string().contains("positions"), "{e}");
    let no_input = Preprocessor { d_in: 0, ..pre };
    assert!(no_input.apply(&[], &[]).is_err());
}

/// A hand-built projection that is not dims × D_in.
#[test]
fn an_inconsistent_pca_is_an_error() {
    let pca = Pca {
        mean: vec![0.0; 3],
        components: vec![1.0; 2],
        eigenvalues: vec![1.0; 2],
        whiten: false,
    };
    let e = pca.transform(&[1.0, 2.0, 3.0]).unwrap_err();
    assert!(e.to_string().contains("PCA components"), "{e}");
}

/// Another encoder's scratch, and a gradient accumulator with a short array.
#[test]
fn encoder_scratch_and_gradient_shapes_are_checked() {
    let (small, large) = (
        FisherEncoder::new(&gmm(2, 3), FisherOptions::default()).unwrap(),
        FisherEncoder::new(&gmm(4, 3), FisherOptions::default()).unwrap(),
    );
    let x = vec![0.25f32; 5 * 3];
    for (enc, other) in [(&small, &large), (&large, &small)] {
        let mut out = vec![0.0; enc.len()];
        let e = enc.encode(&x, &mut out, &mut other.scratch()).unwrap_err();
        assert!(e.to_string().contains("own scratch()"), "{e}");
        enc.encode(&x, &mut out, &mut enc.scratch()).unwrap();
    }
    let mut grad = GmmGradient {
        log_std: Vec::new(),
        ..GmmGradient::zeros(2, 3)
    };
    let upstream = vec![0.1f32; small.len()];
    let e = small
        .backward(&x, &upstream, &mut grad, &mut small.scratch())
        .unwrap_err();
    assert!(
        e.to_string().contains("gradient accumulator log-std"),
        "{e}"
    );
}

/// Sizes whose products overflow, and an iteration budget meaning "no limit".
#[test]
fn overflowing_sizes_are_errors() {
    assert!(Gmm::new(1 << 62, 4, Vec::new(), Vec::new(), Vec::new()).is_err());
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.npy");
    assert!(dfk::npy::write_f32_matrix(&p, &[], 1 << 62, 4).is_err());
    assert!(dfk::npy::F32MatrixWriter::create(&p, 3, 0).is_err());
    let image = ImageSource::Memory {
        width: 1 << 33,
        height: 1 << 33,
        pixels: Vec::new(),
    };
    assert!(image.decode_u8().is_err());
    // Ten points in two clusters: EM converges long before any budget.
    let x: Vec<f32> = (0..20)
        .map(|i| {
            if i < 10 {
                i as f32 * 0.01
            } else {
                5.0 + i as f32 * 0.01
            }
        })
        .collect();
    let fit = fit_gmm(&x, 1, &GmmParams::new(2).max_iter(usize::MAX)).unwrap();
    assert!(fit.loglik_history.len() < 1000);
}

/// Scores of more samples than the features hold are an error before anything is allocated.
#[test]
fn svm_scores_check_the_samples_first() {
    let x = [0.0f32, 1.0, 1.0, 0.0, 0.1, 0.9, 0.9, 0.1];
    let labels = Labels::MultiClass {
        labels: vec![0, 1, 0, 1],
        classes: 2,
    };
    let svm = train_one_vs_rest(
        &x,
        4,
        2,
        &labels,
        &SvmParams::default(),
        ClassWeighting::Uniform,
        None,
    )
    .unwrap();
    assert!(svm.try_scores(&x, 1 << 40).is_err());
    assert!(svm.try_scores(&x, usize::MAX / 2).is_err());
    assert_eq!(svm.try_scores(&x, 4).unwrap().len(), 8);
}

/// Line-search constants outside their ranges: an error, not a clamp panic or an endless loop.
#[test]
fn line_search_constants_are_checked() {
    let bad = [
        LineSearch {
            min_step: 0.0,
            ..LineSearch::default()
        },
        LineSearch {
            shrink: 1.0,
            ..LineSearch::default()
        },
        LineSearch {
            min_step: 2.0,
            max_step: 1.0,
            ..LineSearch::default()
        },
        LineSearch {
            min_step: f64::NAN,
            ..LineSearch::default()
        },
    ];
    for ls in bad {
        let r = ls.search(1.0, -1.0, 0.1, |_, _| Ok(Trial::<()>::Invalid));
        assert!(r.is_err(), "{ls:?}");
        // The step rules clamp without panicking.
        let _ = ls.next_step(0.5, 1);
    }
}

/// A multi-label item whose label names no class is left out, not an index panic.
#[test]
fn labels_beyond_the_classes_do_not_panic() {
    let data = Dataset {
        class_names: vec!["a".into(), "b".into()],
        items: vec![Item {
            source: ImageSource::Memory {
                width: 1,
                height: 1,
                pixels: vec![0],
            },
            labels: vec![1, 5],
            difficult: Vec::new(),
        }],
        multilabel: true,
        origin: None,
    };
    match data.labels() {
        Labels::MultiLabel { targets, classes } => {
            assert_eq!((targets, classes), (vec![false, true], 2))
        }
        other => panic!("{other:?}"),
    }
}

/// The objective of a GMM of another dimension than the image set's descriptors.
#[test]
fn the_deep_objective_checks_the_dimension() {
    use dfk::deep::{objective_and_gradient, DeepParams, ImageSet, Theta};
    let data: Vec<f32> = (0..4 * 3 * 3).map(|i| (i % 5) as f32 * 0.2).collect();
    let labels = Labels::MultiClass {
        labels: vec![0, 1, 0, 1],
        classes: 2,
    };
    let set = ImageSet::new(data, 3, vec![0, 3, 6, 9, 12], labels).unwrap();
    let e = objective_and_gradient(&Theta::zeros(2, 1), &set, &DeepParams::default()).unwrap_err();
    assert!(e.to_string().contains("descriptor dimension"), "{e}");
    assert!(
        objective_and_gradient(&Theta::from_gmm(&gmm(2, 3)), &set, &DeepParams::default()).is_ok()
    );
}

/// A PCA of more input dimensions than its covariance can reasonably hold is refused before
/// anything is allocated (a failed allocation aborted the process); the limit itself fits.
#[test]
fn pca_input_dimensions_are_bounded() {
    use dfk::pca::{fit_pca, PcaParams, MAX_PCA_INPUT};
    let d = MAX_PCA_INPUT + 1;
    let e = fit_pca(&vec![0.5; 2 * d], d, &PcaParams::new(1)).unwrap_err();
    assert!(e.to_string().contains("at most 16384"), "{e}");
    let x: Vec<f32> = (0..3 * 40).map(|i| (i % 11) as f32).collect();
    assert_eq!(fit_pca(&x, 40, &PcaParams::new(2)).unwrap().dims(), 2);
}

/// Image sets, models and labels edited through their public fields are errors in the
/// functions that take them (each case panicked or gave a silent wrong result before).
#[test]
fn edited_sets_models_and_labels_are_errors() {
    use dfk::deep::{train_deep, DeepData, DeepParams, ImageSet};
    use dfk::svm::{BinarySvm, OneVsRest};
    // Four one-descriptor images of two classes.
    let four = || {
        ImageSet::new(
            vec![0.0, 1.0, 2.0, 3.0],
            1,
            vec![0, 1, 2, 3, 4],
            Labels::MultiClass {
                labels: vec![0, 1, 0, 1],
                classes: 2,
            },
        )
        .unwrap()
    };
    // An image set with a label beyond its classes.
    let mut set = four();
    set.labels = Labels::MultiClass {
        labels: vec![0, 1, 5, 1],
        classes: 2,
    };
    assert!(set.split_holdout(0.5, 0).is_err());
    assert!(set.subset(&[0, 1]).is_err());
    let data = DeepData {
        train: &set,
        val: None,
        test: None,
    };
    let e = train_deep(&[gmm(1, 1)], &data, &DeepParams::default(), None).unwrap_err();
    assert!(e.to_string().contains("the training images"), "{e}");
    // Difficult flags of the wrong length.
    let mut ml = ImageSet::new(
        vec![0.0, 1.0],
        1,
        vec![0, 1, 2],
        Labels::MultiLabel {
            targets: vec![true, false, false, true],
            classes: 2,
        },
    )
    .unwrap();
    ml.difficult = vec![true];
    assert!(ml.validate().is_err());
    // A weight floor that cannot hold for K = 2 (it was silently not applied).
    let two = four();
    let params = DeepParams {
        max_iter: 1,
        min_weight: 0.6,
        ..DeepParams::default()
    };
    let data = DeepData {
        train: &two,
        val: None,
        test: None,
    };
    let e = train_deep(&[gmm(2, 1)], &data, &params, None).unwrap_err();
    assert!(e.to_string().contains("min_weight"), "{e}");
    // Labels with an absurd class count.
    let huge = Labels::MultiClass {
        labels: vec![0, 1],
        classes: 1 << 62,
    };
    assert!(dfk::svm::check_every_class_has_samples(&huge).is_err());
    let huge = Labels::MultiClass {
        labels: vec![0, 1],
        classes: 1 << 63,
    };
    assert!(dfk::pipeline::evaluate(&[], &huge, &[]).is_err());
    // A model of no classes, and samples whose scores would overflow the allocation.
    let none = OneVsRest {
        classes: 0,
        dim: 2,
        multilabel: false,
        models: Vec::new(),
    };
    assert!(none.try_scores(&[0.0; 6], 3).is_err());
    let flat = OneVsRest {
        classes: 2,
        dim: 0,
        multilabel: false,
        models: vec![
            BinarySvm {
                w: Vec::new(),
                b: 0.0,
                alpha: Vec::new(),
                primal: 0.0,
                dual: 0.0,
                iterations: 0,
            };
            2
        ],
    };
    assert!(flat.try_scores(&[], 1 << 63).is_err());
}
