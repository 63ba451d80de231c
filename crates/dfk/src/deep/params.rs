//! Settings of the Deep Fisher Kernel trainer.

use serde::{Deserialize, Serialize};

use super::line_search::LineSearch;
use super::theta::ParamGroups;
use crate::error::{Error, Result};
use crate::fisher::FisherOptions;
use crate::svm::{ClassWeighting, SvmParams};

/// Whether all one-vs-rest tasks share one GMM or each class has its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum GmmMode {
    /// One GMM minimising Σ_c J_c(θ); one encoding per image serves every task.
    #[default]
    Shared,
    /// One GMM per class c minimising its own J_c(θ_c); class c's score is its SVM applied to
    /// the Fisher vector under θ_c. Costs one encoding per class.
    PerClass,
}

/// Settings of [`super::train_deep`]. Defaults follow method.md §5.
#[derive(Clone, Debug, PartialEq)]
pub struct DeepParams {
    /// Shared or per-class GMMs.
    pub mode: GmmMode,
    /// Iteration budget (gradient steps); 0 trains the plain Fisher kernel only.
    pub max_iter: usize,
    /// Stop when the objective's relative decrease (J_prev − J)/|J_prev| falls below this
    /// (0 = never).
    pub rel_tol: f64,
    /// Stop after this many iterations without a better validation score (0 = never).
    pub patience: usize,
    /// Which parameter groups move.
    pub groups: ParamGroups,
    /// Step-size rule.
    pub line_search: LineSearch,
    /// σ²_kd ≥ `variance_floor` × (initial σ² of dimension d averaged over components).
    pub variance_floor: f64,
    /// π_k ≥ `min_weight`.
    pub min_weight: f64,
    /// Fisher vector settings. `sqrt_epsilon` > 0 bounds the derivative of the signed square
    /// root; the same ε is used by the forward pass, so the objective and gradient agree.
    pub fisher: FisherOptions,
    /// SVM settings (C, tolerance, bias).
    pub svm: SvmParams,
    /// Per-class cost weighting of the one-vs-rest SVMs.
    pub weighting: ClassWeighting,
    /// Memory (bytes) the training images' posteriors may take when the encoding is kept for
    /// the backward pass (shared GMM), counted as 12 bytes per stored posterior (the buffers'
    /// spare capacity can add up to as much again; the trainer holds two encodings at a time,
    /// the current θ's and a line-search trial's): within it, the backward pass reads them
    /// instead of recomputing them (about 0.3 of an encoding pass less per iteration on the
    /// Fashion-MNIST benchmark). 0 = always recompute. The gradient differs between the two at
    /// the 1e-8 level (relative to its largest entry), so a resumed run reproduces its original
    /// only with the same setting; it is not checked on resume.
    pub max_posterior_bytes: usize,
}

impl Default for DeepParams {
    fn default() -> Self {
        Self {
            mode: GmmMode::Shared,
            max_iter: 10,
            rel_tol: 1e-4,
            patience: 3,
            groups: ParamGroups::default(),
            line_search: LineSearch::default(),
            variance_floor: 1e-3,
            min_weight: 1e-4,
            fisher: FisherOptions {
                sqrt_epsilon: 1e-6,
                ..FisherOptions::default()
            },
            svm: SvmParams {
                c: 3.0,
                eps: 0.05,
                ..SvmParams::default()
            },
            weighting: ClassWeighting::Uniform,
            max_posterior_bytes: 2 << 30,
        }
    }
}

impl DeepParams {
    /// Checks every setting; the error names the setting and its valid range.
    pub fn validate(&self) -> Result<()> {
        self.line_search.validate()?;
        if !(self.rel_tol.is_finite() && self.rel_tol >= 0.0) {
            return Err(Error::param("rel_tol", self.rel_tol, "a finite value >= 0"));
        }
        if !(self.variance_floor.is_finite() && self.variance_floor > 0.0) {
            return Err(Error::param(
                "variance_floor",
                self.variance_floor,
                "a finite value > 0 (relative to the initial variances)",
            ));
        }
        if !(self.min_weight.is_finite() && self.min_weight >= 0.0 && self.min_weight < 1.0) {
            return Err(Error::param(
                "min_weight",
                self.min_weight,
                "a value in [0, 1)",
            ));
        }
        let eps = self.fisher.sqrt_epsilon;
        if !(eps.is_finite() && eps >= 0.0) {
            return Err(Error::param("sqrt_epsilon", eps, "a finite value >= 0"));
        }
        if !(self.svm.c.is_finite() && self.svm.c > 0.0) {
            return Err(Error::param("svm C", self.svm.c, "a finite value > 0"));
        }
        if !self.groups.means && !self.groups.log_std && !self.groups.weights {
            return Err(Error::param(
                "parameter groups",
                "none",
                "at least one of means, log-std, weights",
            ));
        }
        Ok(())
    }

    /// The settings that must not change when a run is resumed (everything except the
    /// stopping rules and the posterior memory), one by one: name, the `dfk deep` flag that sets
    /// it (empty where none does) and its value as text. [`Self::fingerprint`] holds them all.
    pub(crate) fn settings(&self) -> Vec<(&'static str, &'static str, String)> {
        let ls = &self.line_search;
        let (f, s) = (&self.fisher, &self.svm);
        let groups = [
            (self.groups.means, "means"),
            (self.groups.log_std, "log-std"),
            (self.groups.weights, "weights"),
        ]
        .iter()
        .filter(|g| g.0)
        .map(|g| g.1)
        .collect::<Vec<_>>()
        .join(",");
        vec![
            (
                "mode",
                "--mode",
                match self.mode {
                    GmmMode::Shared => "shared".into(),
                    GmmMode::PerClass => "per-class".into(),
                },
            ),
            ("groups", "--groups", groups),
            ("line_search.c1", "--armijo-c1", format!("{:?}", ls.c1)),
            (
                "line_search.initial_step",
                "--step",
                format!("{:?}", ls.initial_step),
            ),
            (
                "line_search.max_step",
                "--max-step",
                format!("{:?}", ls.max_step),
            ),
            (
                "line_search.min_step",
                "--min-step",
                format!("{:?}", ls.min_step),
            ),
            ("line_search.shrink", "", format!("{:?}", ls.shrink)),
            ("line_search.grow", "", format!("{:?}", ls.grow)),
            (
                "line_search.adaptive",
                "--plain-backtracking",
                ls.adaptive.to_string(),
            ),
            (
                "line_search.early_rejection",
                "",
                ls.early_rejection.to_string(),
            ),
            (
                "variance_floor",
                "--variance-floor",
                format!("{:?}", self.variance_floor),
            ),
            (
                "min_weight",
                "--min-weight",
                format!("{:?}", self.min_weight),
            ),
            ("fisher.improved", "", f.improved.to_string()),
            ("fisher.power", "", format!("{:?}", f.power)),
            ("fisher.l2", "", f.l2.to_string()),
            (
                "fisher.posterior_threshold",
                "--posterior-threshold",
                format!("{:?}", f.posterior_threshold),
            ),
            (
                "fisher.sqrt_epsilon",
                "--sqrt-epsilon",
                format!("{:?}", f.sqrt_epsilon),
            ),
            ("svm.c", "-C/--c", format!("{:?}", s.c)),
            ("svm.eps", "--svm-eps", format!("{:?}", s.eps)),
            ("svm.max_iter", "--svm-max-iter", s.max_iter.to_string()),
            ("svm.bias", "--bias", format!("{:?}", s.bias)),
            ("svm.shrinking", "", s.shrinking.to_string()),
            ("svm.seed", "", s.seed.to_string()),
            (
                "weighting",
                "--balanced",
                format!("{:?}", self.weighting).to_lowercase(),
            ),
        ]
    }

    /// The settings that must not change when a run is resumed (everything except the
    /// stopping rules), as text.
    pub(crate) fn fingerprint(&self) -> String {
        format!(
            "{:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?}",
            self.mode,
            self.groups,
            self.line_search,
            self.variance_floor,
            self.min_weight,
            self.fisher,
            self.svm,
            self.weighting
        )
    }
}
