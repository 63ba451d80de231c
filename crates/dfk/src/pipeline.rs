//! The image classification pipeline around the Fisher vector (being assembled): progress
//! reporting, stage timings and evaluation results.

use serde::{Deserialize, Serialize};

/// Reports the progress of long stages. `start` opens a stage of `total` steps, `advance`
/// adds finished steps (called from worker threads), `finish` closes the stage.
pub trait Progress: Sync {
    /// A stage named `stage` with `total` steps begins.
    fn start(&self, stage: &str, total: usize);
    /// `n` more steps of the current stage are done.
    fn advance(&self, n: usize);
    /// The current stage is over.
    fn finish(&self);
}

/// A [`Progress`] that reports nothing.
pub struct Silent;

impl Progress for Silent {
    fn start(&self, _stage: &str, _total: usize) {}
    fn advance(&self, _n: usize) {}
    fn finish(&self) {}
}

/// Wall-clock time of one pipeline stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageTime {
    /// Stage name.
    pub stage: String,
    /// Seconds.
    pub seconds: f64,
}

/// A precision–recall curve.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrCurve {
    /// Precision at each threshold.
    pub precision: Vec<f64>,
    /// Recall at each threshold.
    pub recall: Vec<f64>,
}

/// Metrics of a set of scores against labels; serialisable for reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Number of images.
    pub images: usize,
    /// Number of classes.
    pub classes: usize,
    /// Class names (may be empty).
    pub class_names: Vec<String>,
    /// Whether the labels are multi-label.
    pub multilabel: bool,
    /// Top-1 accuracy (single-label only).
    pub accuracy: Option<f64>,
    /// Top-k accuracies `(k, accuracy)` for k = 1, 2, 5 (single-label only).
    pub top_k: Vec<(usize, f64)>,
    /// Average precision per class (area under the PR curve, as scikit-learn).
    pub per_class_ap: Vec<f64>,
    /// Mean of `per_class_ap`.
    pub map: f64,
    /// Mean 11-point interpolated AP (PASCAL VOC 2007).
    pub map_voc11: f64,
    /// Confusion matrix, `classes × classes`, row = true class (single-label only).
    pub confusion: Vec<Vec<usize>>,
    /// One precision–recall curve per class, thinned to at most 200 points.
    pub pr_curves: Vec<PrCurve>,
}
