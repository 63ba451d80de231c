//! What the trainer records per iteration, returned with the model and saved in its history.

use serde::{Deserialize, Serialize};

use super::theta::Displacement;

/// One iteration of the trainer (iteration 0 is the Fisher kernel with the initial GMM).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IterationRecord {
    /// 0 for the initial GMM, then 1, 2, …
    pub iteration: usize,
    /// J = Σ over tasks of the SVM primal objective at the accepted parameters.
    pub objective: f64,
    /// Euclidean norm of the gradient at the previous iterate, per group (μ, log σ, logits);
    /// over all GMMs together in per-class mode. Zero at iteration 0.
    pub grad_norm: [f64; 3],
    /// Accepted step size (mean over the GMMs whose search succeeded; 0 when none did).
    pub step: f64,
    /// Line-search evaluations (encode + SVM solves), over all GMMs.
    pub trials: usize,
    /// Number of GMMs whose line search found no decrease this iteration.
    pub failed_searches: usize,
    /// Trials rejected before their SVM solve finished, the dual bound having shown that J
    /// exceeds the acceptance threshold (counted in `trials`).
    #[serde(default)]
    pub early_rejections: usize,
    /// Accuracy (multi-class) or mAP (multi-label) on the training images.
    pub train_metric: f64,
    /// The same on the validation images, when given.
    pub val_metric: Option<f64>,
    /// The same on the test images, when given (reported only; never used for selection).
    pub test_metric: Option<f64>,
    /// How far the parameters moved from the initial GMM (mean over GMMs).
    pub displacement: Displacement,
    /// Total dual coordinate-descent epochs of the accepted SVM solves.
    pub svm_epochs: usize,
    /// Seconds encoding the training images (all trials).
    pub time_encode_s: f64,
    /// Seconds solving SVMs (all trials).
    pub time_svm_s: f64,
    /// Seconds in the backward pass (upstream vectors + FV gradient).
    pub time_backward_s: f64,
    /// Seconds encoding and scoring validation and test images.
    pub time_eval_s: f64,
    /// Wall seconds of the whole iteration.
    pub time_total_s: f64,
}

/// The record of a whole run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DeepHistory {
    /// `"accuracy"` (multi-class) or `"mAP"` (multi-label).
    pub metric: String,
    /// One record per iteration, starting with iteration 0.
    pub records: Vec<IterationRecord>,
    /// The iteration whose parameters were kept (best validation score, else the last).
    pub best_iteration: usize,
    /// Why training stopped.
    pub stop_reason: String,
}

impl DeepHistory {
    /// The history as JSON for a model file's `history` field.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}
