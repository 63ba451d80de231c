//! Metrics against scikit-learn and a numpy VOC 2007 11-point AP
//! (`fixtures/metrics/make_fixtures.py` → `fixtures/metrics/metrics.json`), and every error path.

use dfk::metrics::{
    accuracy, average_precision, average_precision_voc11, confusion_matrix, mean_ap, per_class_ap,
    precision_recall_curve, top_k_accuracy, MAX_CONFUSION_CLASSES,
};
use dfk::svm::Labels;
use dfk::Error;
use serde_json::Value;

fn fixture() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/metrics/metrics.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("read metrics.json"))
        .expect("parse metrics.json")
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

fn bools(v: &Value) -> Vec<bool> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_bool().unwrap())
        .collect()
}

fn close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() < 1e-12, "{what}: got {a}, expected {b}");
}

#[test]
fn binary_ap_matches_sklearn_and_voc11_reference() {
    let fx = fixture();
    for case in fx["binary"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let scores = f32s(&case["scores"]);
        let pos = bools(&case["positives"]);
        close(
            average_precision(&scores, &pos).unwrap(),
            case["ap"].as_f64().unwrap(),
            &format!("{name}: AP"),
        );
        close(
            average_precision_voc11(&scores, &pos).unwrap(),
            case["ap_voc11"].as_f64().unwrap(),
            &format!("{name}: VOC11 AP"),
        );
        let (p, r) = precision_recall_curve(&scores, &pos).unwrap();
        let (pe, re) = (f64s(&case["precision"]), f64s(&case["recall"]));
        assert_eq!(p.len(), pe.len(), "{name}: PR curve length");
        for (k, ((a, b), (c, d))) in p.iter().zip(&pe).zip(r.iter().zip(&re)).enumerate() {
            close(*a, *b, &format!("{name}: precision[{k}]"));
            close(*c, *d, &format!("{name}: recall[{k}]"));
        }
    }
}

#[test]
fn ap_does_not_depend_on_the_order_of_tied_samples() {
    let scores = [1.0f32, 0.5, 0.5, 0.5, 0.2];
    let a = average_precision(&scores, &[false, true, false, false, true]).unwrap();
    let b = average_precision(&scores, &[false, false, false, true, true]).unwrap();
    assert_eq!(a, b);
}

#[test]
fn multiclass_metrics_match_sklearn() {
    let fx = &fixture()["multiclass"];
    let (n, classes) = (
        fx["n"].as_u64().unwrap() as usize,
        fx["classes"].as_u64().unwrap() as usize,
    );
    let truth = usizes(&fx["truth"]);
    let labels = Labels::MultiClass {
        labels: truth.clone(),
        classes,
    };
    let scores = f32s(&fx["scores"]);
    assert_eq!(scores.len(), n * classes);
    for (voc, key, map_key) in [(false, "ap", "map"), (true, "ap_voc11", "map_voc11")] {
        let aps = per_class_ap(&scores, &labels, voc).unwrap();
        for (c, (a, e)) in aps.iter().zip(f64s(&fx[key])).enumerate() {
            close(*a, e, &format!("{key} of class {c}"));
        }
        close(
            mean_ap(&aps).unwrap(),
            fx[map_key].as_f64().unwrap(),
            map_key,
        );
    }
    let tie_free = f32s(&fx["tie_free_scores"]);
    let pred = usizes(&fx["pred"]);
    assert_eq!(dfk::svm::argmax_rows(&tie_free, classes), pred);
    close(
        accuracy(&pred, &truth).unwrap(),
        fx["accuracy"].as_f64().unwrap(),
        "accuracy",
    );
    for k in 1..=3 {
        close(
            top_k_accuracy(&tie_free, classes, &truth, k).unwrap(),
            fx["top_k"][k.to_string()].as_f64().unwrap(),
            &format!("top-{k} accuracy"),
        );
    }
    close(
        top_k_accuracy(&tie_free, classes, &truth, classes).unwrap(),
        1.0,
        "top-C",
    );
    assert_eq!(
        confusion_matrix(&pred, &truth, classes).unwrap(),
        usizes(&fx["confusion"])
    );
}

#[test]
fn multilabel_ap_matches_sklearn() {
    let fx = &fixture()["multilabel"];
    let classes = fx["classes"].as_u64().unwrap() as usize;
    let labels = Labels::MultiLabel {
        targets: bools(&fx["targets"]),
        classes,
    };
    let scores = f32s(&fx["scores"]);
    for (voc, key) in [(false, "ap"), (true, "ap_voc11")] {
        let aps = per_class_ap(&scores, &labels, voc).unwrap();
        for (c, (a, e)) in aps.iter().zip(f64s(&fx[key])).enumerate() {
            close(*a, e, &format!("multi-label {key} of class {c}"));
        }
    }
    // The evaluation that `dfk eval` and the reports print carries both APs per class.
    let e = dfk::pipeline::evaluate(&scores, &labels, &[]).unwrap();
    for (key, aps) in [("ap", &e.per_class_ap), ("ap_voc11", &e.per_class_ap_voc11)] {
        assert_eq!(aps.len(), classes);
        for (c, (a, want)) in aps.iter().zip(f64s(&fx[key])).enumerate() {
            close(*a, want, &format!("evaluation's {key} of class {c}"));
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    close(e.map_voc11, mean(&f64s(&fx["ap_voc11"])), "map_voc11");
    close(e.map, mean(&f64s(&fx["ap"])), "map");
}

/// An evaluation serialised to JSON (as in a report) reads back, the undefined AP of a class
/// without samples (NaN, written as null) included.
#[test]
fn evaluation_with_an_absent_class_reads_back_from_json() {
    let labels = Labels::MultiClass {
        labels: vec![0, 1, 0, 1],
        classes: 3,
    };
    let scores = [
        0.9f32, 0.1, 0.0, 0.2, 0.7, 0.1, 0.6, 0.3, 0.1, 0.4, 0.5, 0.1,
    ];
    let e = dfk::pipeline::evaluate(&scores, &labels, &[]).unwrap();
    assert_eq!(e.absent_classes, [2]);
    let text = serde_json::to_string(&e).unwrap();
    assert!(text.contains("null"), "{text}");
    let back: dfk::pipeline::Evaluation = serde_json::from_str(&text).unwrap();
    assert!(back.per_class_ap[2].is_nan() && back.per_class_ap_voc11[2].is_nan());
    assert_eq!(back.per_class_ap[..2], e.per_class_ap[..2]);
    assert_eq!(back.per_class_ap_voc11[..2], e.per_class_ap_voc11[..2]);
    assert_eq!((back.map, back.map_voc11), (e.map, e.map_voc11));
}

/// Tied classes rank the lower index first, as the predicted class does: top-1 accuracy is the
/// accuracy of the predictions, and top-k agrees with ranks from a stable sort.
#[test]
fn top_k_ranks_tied_classes_by_index_as_the_prediction_does() {
    // Row 0: the true class 1 ties with class 0 for the top score; row 1: the true class 0 is
    // second.
    let scores = [0.5f32, 0.5, 0.1, 0.2, 0.9, 0.1];
    let truth = [1, 0];
    assert_eq!(top_k_accuracy(&scores, 3, &truth, 1).unwrap(), 0.0);
    assert_eq!(top_k_accuracy(&scores, 3, &truth, 2).unwrap(), 1.0);

    // Scores from three values, so most rows have ties.
    let (n, classes) = (200, 5);
    let mut state = 12345u64;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as usize
    };
    let scores: Vec<f32> = (0..n * classes).map(|_| (next() % 3) as f32).collect();
    let truth: Vec<usize> = (0..n).map(|_| next() % classes).collect();
    let pred = dfk::svm::argmax_rows(&scores, classes);
    assert_eq!(
        top_k_accuracy(&scores, classes, &truth, 1).unwrap(),
        accuracy(&pred, &truth).unwrap()
    );
    for k in 1..=classes {
        let hits = scores
            .chunks_exact(classes)
            .zip(&truth)
            .filter(|(row, &t)| {
                let mut order: Vec<usize> = (0..classes).collect();
                // Stable: equal scores keep the index order.
                order.sort_by(|&a, &b| row[b].partial_cmp(&row[a]).unwrap());
                order[..k].contains(&t)
            })
            .count();
        assert_eq!(
            top_k_accuracy(&scores, classes, &truth, k).unwrap(),
            hits as f64 / n as f64,
            "k = {k}"
        );
    }
}

fn is_empty(e: Error) -> bool {
    matches!(e, Error::Empty { .. })
}

fn is_dim(e: Error) -> bool {
    matches!(e, Error::DimMismatch { .. })
}

#[test]
fn bad_inputs_are_errors() {
    assert!(is_empty(accuracy(&[], &[]).unwrap_err()));
    assert!(is_dim(accuracy(&[0, 1], &[0]).unwrap_err()));
    assert!(is_empty(confusion_matrix(&[], &[], 2).unwrap_err()));
    assert!(is_dim(confusion_matrix(&[0], &[0, 1], 2).unwrap_err()));
    assert!(matches!(
        confusion_matrix(&[0, 2], &[0, 1], 2).unwrap_err(),
        Error::Invalid(_)
    ));
    // A class count whose table cannot be held (2³² wrapped its size to 0 before) is refused.
    for classes in [MAX_CONFUSION_CLASSES + 1, 1 << 32] {
        assert!(matches!(
            confusion_matrix(&[0], &[0], classes).unwrap_err(),
            Error::InvalidParameter { .. }
        ));
    }
    assert_eq!(
        confusion_matrix(&[1], &[0], MAX_CONFUSION_CLASSES).unwrap()[1],
        1
    );

    assert!(is_empty(average_precision(&[], &[]).unwrap_err()));
    assert!(is_dim(average_precision(&[0.1, 0.2], &[true]).unwrap_err()));
    assert!(matches!(
        average_precision(&[0.1, f32::NAN], &[true, false]).unwrap_err(),
        Error::NonFinite { index: 1, .. }
    ));
    assert!(matches!(
        average_precision(&[0.1, 0.2], &[false, false]).unwrap_err(),
        Error::Invalid(_)
    ));
    assert!(is_empty(average_precision_voc11(&[], &[]).unwrap_err()));
    assert!(is_dim(
        average_precision_voc11(&[0.1], &[true, false]).unwrap_err()
    ));
    assert!(matches!(
        average_precision_voc11(&[0.3], &[false]).unwrap_err(),
        Error::Invalid(_)
    ));
    assert!(is_empty(precision_recall_curve(&[], &[]).unwrap_err()));
    assert!(is_dim(
        precision_recall_curve(&[0.1], &[true, true]).unwrap_err()
    ));

    assert!(is_empty(mean_ap(&[]).unwrap_err()));
    assert!(matches!(
        mean_ap(&[0.5, f64::NAN]).unwrap_err(),
        Error::NonFinite { index: 1, .. }
    ));

    let scores = [0.1f32, 0.9, 0.8, 0.2];
    assert!(matches!(
        top_k_accuracy(&scores, 2, &[0, 1], 0).unwrap_err(),
        Error::InvalidParameter { .. }
    ));
    assert!(matches!(
        top_k_accuracy(&scores, 2, &[0, 1], 3).unwrap_err(),
        Error::InvalidParameter { .. }
    ));
    assert!(matches!(
        top_k_accuracy(&scores, 0, &[0, 1], 1).unwrap_err(),
        Error::InvalidParameter { .. }
    ));
    assert!(is_dim(
        top_k_accuracy(&scores, 2, &[0, 1, 1], 1).unwrap_err()
    ));
    assert!(is_empty(top_k_accuracy(&[], 2, &[], 1).unwrap_err()));
    assert!(matches!(
        top_k_accuracy(&scores, 2, &[0, 2], 1).unwrap_err(),
        Error::Invalid(_)
    ));
    assert!(matches!(
        top_k_accuracy(&[0.1, f32::INFINITY], 2, &[0], 1).unwrap_err(),
        Error::NonFinite { .. }
    ));

    let labels = Labels::MultiClass {
        labels: vec![0, 1, 1],
        classes: 2,
    };
    assert!(is_dim(per_class_ap(&[0.0; 5], &labels, false).unwrap_err()));
    // Class 2 has no positives: its AP is undefined.
    let three = Labels::MultiClass {
        labels: vec![0, 1, 1],
        classes: 3,
    };
    assert!(matches!(
        per_class_ap(&[0.0; 9], &three, false).unwrap_err(),
        Error::Invalid(_)
    ));
    let bad = Labels::MultiClass {
        labels: vec![0, 5],
        classes: 2,
    };
    assert!(matches!(
        per_class_ap(&[0.0; 4], &bad, true).unwrap_err(),
        Error::Invalid(_)
    ));
    let empty = Labels::MultiLabel {
        targets: vec![],
        classes: 2,
    };
    assert!(is_empty(per_class_ap(&[], &empty, false).unwrap_err()));
}

/// VOC's protocol leaves a "difficult" image out of its class's AP. Hand-computed case:
/// scores 0.9, 0.8, 0.7, 0.6 with positives T, T, F, T: AP = (1/1 + 2/2 + 3/4) / 3 over all
/// images; without image 0 (difficult), the ranking T, F, T gives (1/1 + 2/3) / 2.
#[test]
fn difficult_images_are_left_out_of_their_class_ap() {
    use dfk::pipeline::{evaluate, evaluate_ignoring};
    // Class 1 is positive where class 0 is not, so both have positives.
    let pos = [true, true, false, true];
    let targets: Vec<bool> = pos.iter().flat_map(|&p| [p, !p]).collect();
    let labels = Labels::MultiLabel {
        targets,
        classes: 2,
    };
    let scores: Vec<f32> = [0.9f32, 0.8, 0.7, 0.6]
        .iter()
        .flat_map(|&s| [s, 1.0 - s])
        .collect();
    let names = ["a".to_string(), "b".to_string()];
    let all = evaluate(&scores, &labels, &names).unwrap();
    assert!((all.per_class_ap[0] - 2.75 / 3.0).abs() < 1e-12);
    // Image 0 difficult for class 0 only: class 1's AP is unchanged.
    let mut ignore = vec![false; 8];
    ignore[0] = true;
    let voc = evaluate_ignoring(&scores, &labels, &names, Some(&ignore)).unwrap();
    assert!((voc.per_class_ap[0] - (1.0 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
    assert_eq!(voc.per_class_ap[1], all.per_class_ap[1]);
    // Every positive of a class difficult: the class is absent, not an AP of 0.
    let ignore: Vec<bool> = pos.iter().flat_map(|&p| [p, false]).collect();
    let none = evaluate_ignoring(&scores, &labels, &names, Some(&ignore)).unwrap();
    assert_eq!(none.absent_classes, [0]);
    // A mask of the wrong shape is an error.
    assert!(evaluate_ignoring(&scores, &labels, &names, Some(&[false; 3])).is_err());
}
