//! Evaluation metrics: accuracy, top-k accuracy, confusion matrix, precision–recall curves,
//! average precision (area under the PR curve as scikit-learn's `average_precision_score`, and
//! PASCAL VOC 2007's 11-point interpolated AP), per-class AP and mAP.
//!
//! Ranking metrics treat tied scores as scikit-learn does: the precision–recall curve has one
//! point per distinct score value (all samples with that score enter together), so the results
//! do not depend on the order of tied samples. Ties between the classes of one sample (top-k
//! accuracy) rank the lower class index first, as the predicted class does.

use crate::error::{check_finite, Error, Result};
use crate::svm::Labels;

fn check_pair_len(what: &str, a: usize, b: usize) -> Result<()> {
    if a == 0 {
        return Err(Error::Empty {
            what: what.to_string(),
        });
    }
    if a != b {
        return Err(Error::dim(what, a, b));
    }
    Ok(())
}

/// Fraction of samples with `pred[i] == truth[i]`.
pub fn accuracy(pred: &[usize], truth: &[usize]) -> Result<f64> {
    check_pair_len("accuracy: predictions vs truth", truth.len(), pred.len())?;
    let hits = pred.iter().zip(truth).filter(|(p, t)| p == t).count();
    Ok(hits as f64 / truth.len() as f64)
}

/// Fraction of samples whose true class is among the `k` highest scores of its row
/// (`scores` is `n × classes`). Tied scores rank the lower class index first, as the
/// prediction of [`crate::svm::argmax_rows`] does, so that top-1 accuracy is the accuracy of the
/// predictions: a sample is a hit when fewer than `k` classes score higher than its true class
/// or tie with it at a lower index. (scikit-learn's `top_k_accuracy_score` ranks tied classes by
/// the higher index first.)
pub fn top_k_accuracy(scores: &[f32], classes: usize, truth: &[usize], k: usize) -> Result<f64> {
    if classes == 0 {
        return Err(Error::param("top-k classes", 0, "at least 1"));
    }
    if k == 0 || k > classes {
        return Err(Error::param("top-k k", k, format!("1..={classes}")));
    }
    check_pair_len(
        "top-k scores (n × classes)",
        truth.len().saturating_mul(classes),
        scores.len(),
    )?;
    check_finite("top-k scores", scores)?;
    let mut hits = 0usize;
    for (i, (row, &t)) in scores.chunks_exact(classes).zip(truth).enumerate() {
        let Some(&st) = row.get(t) else {
            return Err(Error::Invalid(format!(
                "top-k truth[{i}] = {t}: expected a class index < {classes}"
            )));
        };
        let ahead = row
            .iter()
            .enumerate()
            .filter(|&(j, &s)| s > st || (s == st && j < t))
            .count();
        if ahead < k {
            hits += 1;
        }
    }
    Ok(hits as f64 / truth.len() as f64)
}

/// Largest class count of [`confusion_matrix`]: its table of 2²⁸ counts is 2 GB.
pub const MAX_CONFUSION_CLASSES: usize = 1 << 14;

/// `classes × classes` counts, row-major, row = true class, column = predicted class.
pub fn confusion_matrix(pred: &[usize], truth: &[usize], classes: usize) -> Result<Vec<usize>> {
    check_pair_len(
        "confusion matrix: predictions vs truth",
        truth.len(),
        pred.len(),
    )?;
    if classes > MAX_CONFUSION_CLASSES {
        return Err(Error::param(
            "confusion matrix classes",
            classes,
            format!("at most {MAX_CONFUSION_CLASSES} (a classes × classes table)"),
        ));
    }
    let mut m = vec![0usize; classes * classes];
    for (i, (&p, &t)) in pred.iter().zip(truth).enumerate() {
        if p >= classes || t >= classes {
            return Err(Error::Invalid(format!(
                "confusion matrix sample {i}: prediction {p} / truth {t}, expected class indices < {classes}"
            )));
        }
        m[t * classes + p] += 1;
    }
    Ok(m)
}

/// Cumulative (true positives, false positives) at each distinct score, thresholds decreasing.
fn ranked_counts(scores: &[f32], positives: &[bool]) -> Result<Vec<(usize, usize)>> {
    check_pair_len(
        "ranking: scores vs positives",
        positives.len(),
        scores.len(),
    )?;
    check_finite("ranking scores", scores)?;
    let total_pos = positives.iter().filter(|&&p| p).count();
    if total_pos == 0 {
        return Err(Error::Invalid(
            "average precision is undefined: no positive samples".into(),
        ));
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut points = Vec::new();
    let (mut tp, mut fp) = (0usize, 0usize);
    for (r, &i) in order.iter().enumerate() {
        if positives[i] {
            tp += 1;
        } else {
            fp += 1;
        }
        let last_of_tie = order
            .get(r + 1)
            .is_none_or(|&next| scores[next] != scores[i]);
        if last_of_tie {
            points.push((tp, fp));
        }
    }
    Ok(points)
}

/// Precision–recall curve with scikit-learn's `precision_recall_curve` layout: one point per
/// distinct score in order of increasing threshold (recall non-increasing), then the end point
/// `(precision 1, recall 0)`. Returns `(precision, recall)`.
pub fn precision_recall_curve(scores: &[f32], positives: &[bool]) -> Result<(Vec<f64>, Vec<f64>)> {
    let points = ranked_counts(scores, positives)?;
    let total_pos = points.last().map_or(0, |p| p.0) as f64;
    let mut precision: Vec<f64> = points
        .iter()
        .rev()
        .map(|&(tp, fp)| tp as f64 / (tp + fp) as f64)
        .collect();
    let mut recall: Vec<f64> = points
        .iter()
        .rev()
        .map(|&(tp, _)| tp as f64 / total_pos)
        .collect();
    precision.push(1.0);
    recall.push(0.0);
    Ok((precision, recall))
}

/// The scores of class `class` (`scores` is `images × classes`) and whether each image is a
/// positive of it, over the images not left out of it by `ignore` (`images × classes`, true
/// to leave out: VOC's "difficult" images), in image order.
///
/// `class` must be below `labels.classes()`, and `scores` and `ignore` must hold `images ×
/// classes` values (the callers, evaluation and the deep trainer, check them first).
///
/// # Panics
/// If `scores` or `ignore` is shorter than that (index out of range).
pub fn class_column(
    scores: &[f32],
    labels: &Labels,
    class: usize,
    ignore: Option<&[bool]>,
) -> (Vec<f32>, Vec<bool>) {
    let (n, c) = (labels.n(), labels.classes());
    (0..n)
        .filter(|&i| ignore.is_none_or(|m| !m[i * c + class]))
        .map(|i| (scores[i * c + class], labels.is_positive(i, class)))
        .unzip()
}

/// Average precision as the step-wise area under the PR curve,
/// `AP = Σ_k (R_k − R_{k−1}) P_k` over distinct thresholds (scikit-learn's
/// `average_precision_score`). Errors on empty or mismatched inputs, non-finite scores, or no
/// positive sample.
pub fn average_precision(scores: &[f32], positives: &[bool]) -> Result<f64> {
    let points = ranked_counts(scores, positives)?;
    let total_pos = points.last().map_or(0, |p| p.0) as f64;
    let mut ap = 0.0;
    let mut prev_recall = 0.0;
    for &(tp, fp) in &points {
        let recall = tp as f64 / total_pos;
        ap += (recall - prev_recall) * (tp as f64 / (tp + fp) as f64);
        prev_recall = recall;
    }
    Ok(ap)
}

/// PASCAL VOC 2007 11-point interpolated average precision: for `t = 0, 0.1, …, 1`, `p(t)` =
/// the largest precision at recall `≥ t` (0 if none), `AP = Σ p(t) / 11`. Precision and recall
/// are taken at distinct score thresholds (see the module notes on ties); without ties this is
/// the VOC development kit's value (`VOCevalcls.m`), including its thresholds: MATLAB's
/// `0:0.1:1` computes them as `k·0.1` for the first half and `1 − (10 − k)·0.1` for the second,
/// so its third one is `3·0.1 = 0.30000000000000004` and a recall of exactly 3/10 does not
/// reach it (the others equal `k/10`).
pub fn average_precision_voc11(scores: &[f32], positives: &[bool]) -> Result<f64> {
    let points = ranked_counts(scores, positives)?;
    let total_pos = points.last().map_or(0, |p| p.0);
    let mut sum = 0.0;
    for k in 0..=10u32 {
        let t = if k < 5 {
            f64::from(k) * 0.1
        } else {
            1.0 - f64::from(10 - k) * 0.1
        };
        let p = points
            .iter()
            .filter(|&&(tp, _)| tp as f64 / total_pos as f64 >= t)
            .map(|&(tp, fp)| tp as f64 / (tp + fp) as f64)
            .fold(0.0, f64::max);
        sum += p;
    }
    Ok(sum / 11.0)
}

/// AP of every class from `scores` (`n × classes`): positives are the samples of the class
/// (multi-class) or those with a true target (multi-label). `voc11` selects
/// [`average_precision_voc11`] instead of [`average_precision`].
pub fn per_class_ap(scores: &[f32], labels: &Labels, voc11: bool) -> Result<Vec<f64>> {
    labels.validate()?;
    let (n, classes) = (labels.n(), labels.classes());
    check_pair_len(
        "per-class AP scores (n × classes)",
        n * classes,
        scores.len(),
    )?;
    (0..classes)
        .map(|c| {
            let col: Vec<f32> = scores.iter().skip(c).step_by(classes).copied().collect();
            let pos: Vec<bool> = (0..n).map(|i| labels.is_positive(i, c)).collect();
            let ap = if voc11 {
                average_precision_voc11(&col, &pos)
            } else {
                average_precision(&col, &pos)
            };
            ap.map_err(|e| Error::Invalid(format!("AP of class {c}: {e}")))
        })
        .collect()
}

/// Mean of the per-class APs (mAP).
pub fn mean_ap(aps: &[f64]) -> Result<f64> {
    if aps.is_empty() {
        return Err(Error::Empty {
            what: "per-class AP list".into(),
        });
    }
    if let Some(index) = aps.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFinite {
            what: "per-class AP".into(),
            index,
        });
    }
    Ok(aps.iter().sum::<f64>() / aps.len() as f64)
}
