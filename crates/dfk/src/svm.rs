//! L2-regularised L1-loss (hinge) linear SVMs solved in the dual by coordinate descent, and
//! one-vs-rest training for multi-class and multi-label problems.
//!
//! For labels `y_i ∈ {−1, +1}` and per-sample costs `C_i > 0` the primal problem is
//!
//! ```text
//! min_{w, w_b}  ½ (‖w‖² + w_b²) + Σ_i C_i max(0, 1 − y_i (⟨w, x_i⟩ + w_b · bias))
//! ```
//!
//! i.e. liblinear's `-s 3 -B bias`: the bias is a constant feature of value `bias` appended to
//! every sample and regularised like the other weights (the augmented matrix is never built; the
//! bias coordinate is handled separately). The decision value is `⟨w, x⟩ + b` with
//! `b = w_b · bias`. Its dual,
//!
//! ```text
//! max_{0 ≤ α_i ≤ C_i}  Σ_i α_i − ½ ‖Σ_i α_i y_i x̃_i‖²      (x̃_i = [x_i; bias])
//! ```
//!
//! is solved by the dual coordinate descent of Hsieh et al. (ICML 2008), exactly as liblinear's
//! `solve_l2r_l1l2_svc`: one pass over a random permutation per epoch, the closed-form update
//! `α_i ← clip(α_i − G_i/Q_ii, 0, C_i)` with `G_i = y_i ⟨w̃, x̃_i⟩ − 1`, shrinking of variables at a
//! bound whose projected gradient exceeds the previous epoch's extremes, and stopping when the
//! largest projected-gradient violation `PG_max − PG_min ≤ eps` — re-checked on the full set
//! after shrinking. `w̃ = Σ α_i y_i x̃_i` is kept up to date in `f64`; features stay `f32`.
//! The gradients `G_i` are computed from an `f32` copy of `w` while the rounding that adds is
//! provably below `eps / 64` (loose tolerances such as the Deep Fisher Kernel's 0.05 at
//! Fisher-vector sizes), from the `f64` `w` otherwise (tight tolerances, as in the tests
//! against liblinear).
//!
//! The inner products run in a loop compiled for the best instruction set of the CPU (runtime
//! dispatch); an epoch costs about one pass over the feature matrix, which is bound by memory
//! bandwidth at Fisher-vector sizes. One-vs-rest therefore solves its classes in groups that
//! share each epoch's random sample order: a sample is read once per epoch for the whole group
//! while each class still runs liblinear's algorithm (its own α, w, shrinking and stopping; a
//! class that has converged on its shrunk set waits for the others before its full-set
//! re-check, so that one pass over the matrix serves all of them).

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{check_finite, Error, Result};
use crate::kernels::{self, SimdLevel};

/// Training labels of a data set with `n` samples and `classes` classes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Labels {
    /// One class per sample, each `< classes`.
    MultiClass { labels: Vec<usize>, classes: usize },
    /// Any number of classes per sample: `targets` is `n × classes` row-major, `true` = positive.
    MultiLabel { targets: Vec<bool>, classes: usize },
}

impl Labels {
    /// Number of samples.
    pub fn n(&self) -> usize {
        match self {
            Labels::MultiClass { labels, .. } => labels.len(),
            Labels::MultiLabel { targets, classes } => {
                targets.len().checked_div(*classes).unwrap_or(0)
            }
        }
    }

    /// Number of classes (one-vs-rest tasks).
    pub fn classes(&self) -> usize {
        match self {
            Labels::MultiClass { classes, .. } | Labels::MultiLabel { classes, .. } => *classes,
        }
    }

    /// Whether sample `i` is a positive of class `c` (false when out of range).
    pub fn is_positive(&self, i: usize, c: usize) -> bool {
        match self {
            Labels::MultiClass { labels, .. } => labels.get(i) == Some(&c),
            Labels::MultiLabel { targets, classes } => {
                c < *classes && targets.get(i * classes + c).copied().unwrap_or(false)
            }
        }
    }

    /// `n` labels `±1` of the one-vs-rest task `c`: `+1` for the samples of class `c`, `−1` for
    /// the rest (all `−1` when `c` is out of range).
    pub fn binary(&self, c: usize) -> Vec<f32> {
        (0..self.n())
            .map(|i| if self.is_positive(i, c) { 1.0 } else { -1.0 })
            .collect()
    }

    /// Number of positive samples of each class.
    ///
    /// # Panics
    /// If the labels fail [`Labels::validate`] (more than `MAX_CLASSES` classes, a label beyond
    /// `classes`): the checked entry points ([`train_one_vs_rest`],
    /// [`check_every_class_has_samples`]) validate first.
    pub fn positives_per_class(&self) -> Vec<usize> {
        let mut counts = vec![0usize; self.classes()];
        match self {
            Labels::MultiClass { labels, .. } => {
                for &l in labels {
                    if let Some(c) = counts.get_mut(l) {
                        *c += 1;
                    }
                }
            }
            Labels::MultiLabel { targets, classes } => {
                // No classes, no counts (`chunks_exact` needs a non-zero size).
                for row in targets.chunks_exact((*classes).max(1)) {
                    for (c, &t) in counts.iter_mut().zip(row) {
                        *c += usize::from(t);
                    }
                }
            }
        }
        counts
    }

    /// Checks that there is at least one class and one sample, that every multi-class label is
    /// `< classes`, and that multi-label targets have `n × classes` entries.
    pub fn validate(&self) -> Result<()> {
        let classes = self.classes();
        if classes == 0 {
            return Err(Error::param("labels classes", 0, "at least 1 class"));
        }
        if classes > MAX_CLASSES {
            return Err(Error::param(
                "labels classes",
                classes,
                format!("at most {MAX_CLASSES} classes"),
            ));
        }
        match self {
            Labels::MultiClass { labels, .. } => {
                if let Some(i) = labels.iter().position(|&l| l >= classes) {
                    return Err(Error::Invalid(format!(
                        "label of sample {i} is {}: expected a class index < {classes}",
                        labels[i]
                    )));
                }
            }
            Labels::MultiLabel { targets, .. } => {
                if targets.len() % classes != 0 {
                    return Err(Error::Invalid(format!(
                        "multi-label targets have {} entries: expected a multiple of {classes} classes",
                        targets.len()
                    )));
                }
            }
        }
        if self.n() == 0 {
            return Err(Error::Empty {
                what: "labels".into(),
            });
        }
        Ok(())
    }
}

/// Settings of the dual coordinate-descent solver (liblinear's names in brackets).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SvmParams {
    /// Cost `C` of the hinge loss (`-c`); one-vs-rest training scales it per class/sample.
    pub c: f64,
    /// Stopping tolerance on the projected-gradient violation `PG_max − PG_min` (`-e`).
    pub eps: f64,
    /// Maximum number of epochs (passes over the active set).
    pub max_iter: usize,
    /// Value of the constant feature appended to every sample (`-B`); 0 = no bias.
    pub bias: f32,
    /// Whether to shrink variables stuck at a bound (liblinear always does).
    pub shrinking: bool,
    /// Seed of the per-epoch random permutation.
    pub seed: u64,
}

impl Default for SvmParams {
    fn default() -> Self {
        Self {
            c: 1.0,
            eps: 0.1,
            max_iter: 1000,
            bias: 1.0,
            shrinking: true,
            seed: 0,
        }
    }
}

impl SvmParams {
    /// Checks every setting; the error names the setting and its valid range.
    pub fn validate(&self) -> Result<()> {
        if !(self.c.is_finite() && self.c > 0.0) {
            return Err(Error::param("svm c", self.c, "a finite value > 0"));
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(Error::param("svm eps", self.eps, "a finite value > 0"));
        }
        if self.max_iter == 0 {
            return Err(Error::param("svm max_iter", 0, "at least 1 epoch"));
        }
        if !(self.bias.is_finite() && self.bias >= 0.0) {
            return Err(Error::param(
                "svm bias",
                self.bias,
                "a finite value ≥ 0 (0 = no bias)",
            ));
        }
        Ok(())
    }
}

/// A trained binary SVM: decision value `⟨w, x⟩ + b`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BinarySvm {
    /// Weights, one per feature.
    pub w: Vec<f32>,
    /// Intercept `w_b · bias` (the regularised bias weight times the bias feature value).
    pub b: f32,
    /// Dual variables `0 ≤ α_i ≤ C_i`, one per training sample (support vectors: `α_i > 0`).
    pub alpha: Vec<f64>,
    /// Primal objective `½(‖w‖² + w_b²) + Σ C_i max(0, 1 − y_i f(x_i))` at the solution.
    pub primal: f64,
    /// Dual objective `Σ α_i − ½(‖w‖² + w_b²)`; `dual ≤ primal`, equal at the optimum.
    pub dual: f64,
    /// Epochs run (including the final full-set check after shrinking).
    pub iterations: usize,
}

impl BinarySvm {
    /// Decision value `⟨w, row⟩ + b`, accumulated in `f64`.
    ///
    /// # Panics
    /// If `row.len() != self.w.len()`.
    pub fn decision(&self, row: &[f32]) -> f32 {
        assert_eq!(
            row.len(),
            self.w.len(),
            "BinarySvm::decision: row length differs from the number of weights"
        );
        (dot_f32(&self.w, row) + f64::from(self.b)) as f32
    }

    /// Duality gap `primal − dual` (≥ 0 up to rounding).
    pub fn gap(&self) -> f64 {
        self.primal - self.dual
    }
}

/// Trains one binary SVM on `x` (`n × dim` row-major) with labels `y ∈ {−1, +1}` and
/// per-sample costs `cost` (`C_i`, used as given: `params.c` is not applied here).
/// `warm_alpha` starts the solver from earlier dual variables (clipped to `[0, C_i]`; `w` is
/// recomputed from them), e.g. the previous solution when the features changed slightly.
///
/// Errors: `n = 0`, sizes that do not match, non-finite features, labels other than `±1`, all
/// samples in one class, costs that are not finite and positive, invalid parameters, a warm
/// start of the wrong length or with non-finite values.
pub fn train_binary(
    x: &[f32],
    n: usize,
    dim: usize,
    y: &[f32],
    cost: &[f64],
    params: &SvmParams,
    warm_alpha: Option<&[f64]>,
) -> Result<BinarySvm> {
    params.validate()?;
    check_matrix(x, n, dim)?;
    if y.len() != n {
        return Err(Error::dim("svm labels y", n, y.len()));
    }
    if let Some(i) = y.iter().position(|&v| v != 1.0 && v != -1.0) {
        return Err(Error::Invalid(format!(
            "svm label y[{i}] = {}: expected +1 or −1",
            y[i]
        )));
    }
    let positives = y.iter().filter(|&&v| v > 0.0).count();
    check_both_classes(positives, n, "the binary task")?;
    check_costs(cost, n)?;
    let alpha = initial_alpha(warm_alpha, cost, "warm-start alpha")?;
    let task = Task {
        id: 0,
        y,
        cost,
        alpha,
        start: None,
    };
    let run = Run {
        seed: params.seed,
        stop: None,
        solo_bytes: SOLO_BYTES,
    };
    let mut models = solve(x, dim, vec![task], params, &run).into_models()?;
    Ok(models.remove(0))
}

/// Most classes (one-vs-rest tasks) accepted: a label is a class index, and a stray huge one
/// would otherwise size per-class tables by it.
pub const MAX_CLASSES: usize = 1 << 20;

/// Per-class costs of one one-vs-rest task: `C` of its positive and of its negative samples.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassCost {
    /// Cost of the samples of the class.
    pub positive: f64,
    /// Cost of all other samples.
    pub negative: f64,
}

/// How the one-vs-rest tasks weight their positive and negative samples.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClassWeighting {
    /// Every sample costs `C`.
    #[default]
    Uniform,
    /// Positives and negatives carry equal total cost (scikit-learn's `class_weight="balanced"`
    /// for two classes): `C_pos = C·n/(2·n_pos)`, `C_neg = C·n/(2·n_neg)`.
    Balanced,
}

impl ClassWeighting {
    /// The costs of every class of `labels` under this weighting with base cost `c`.
    /// Classes without positives or negatives get the uniform cost (training rejects them).
    pub fn costs(self, c: f64, labels: &Labels) -> Vec<ClassCost> {
        let n = labels.n() as f64;
        labels
            .positives_per_class()
            .into_iter()
            .map(|pos| {
                let neg = labels.n().saturating_sub(pos);
                match self {
                    ClassWeighting::Balanced if pos > 0 && neg > 0 => ClassCost {
                        positive: c * n / (2.0 * pos as f64),
                        negative: c * n / (2.0 * neg as f64),
                    },
                    _ => ClassCost {
                        positive: c,
                        negative: c,
                    },
                }
            })
            .collect()
    }
}

/// One binary SVM per class, trained class-against-the-rest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OneVsRest {
    /// Number of classes (= `models.len()`).
    pub classes: usize,
    /// Feature dimension (= every `models[c].w.len()`).
    pub dim: usize,
    /// Whether the labels were multi-label (scores are read per class) or multi-class (arg-max).
    pub multilabel: bool,
    /// The binary SVM of each class.
    pub models: Vec<BinarySvm>,
}

impl OneVsRest {
    /// Checks that the model is consistent: `classes` models with `dim` finite weights each.
    pub fn validate(&self) -> Result<()> {
        if self.classes == 0 {
            return Err(Error::param(
                "one-vs-rest classes",
                0,
                "at least 1 (a model that scores nothing)",
            ));
        }
        if self.models.len() != self.classes {
            return Err(Error::dim(
                "one-vs-rest models",
                self.classes,
                self.models.len(),
            ));
        }
        for (c, m) in self.models.iter().enumerate() {
            if m.w.len() != self.dim {
                return Err(Error::dim(
                    format!("weights of class {c}"),
                    self.dim,
                    m.w.len(),
                ));
            }
            check_finite(&format!("weights of class {c}"), &m.w)?;
            check_finite(&format!("bias of class {c}"), &[m.b])?;
        }
        Ok(())
    }

    /// Decision values of `n` samples (`x` is `n × dim`) into `out` (`n × classes`):
    /// `out[i][c] = ⟨w_c, x_i⟩ + b_c`, one matrix product (`f32`, parallel over row blocks).
    pub fn scores_into(&self, x: &[f32], n: usize, out: &mut [f32]) -> Result<()> {
        self.validate()?;
        check_matrix_allow_empty(x, n, self.dim)?;
        if out.len() != n * self.classes {
            return Err(Error::dim(
                "one-vs-rest scores",
                n * self.classes,
                out.len(),
            ));
        }
        let classes = self.classes;
        if classes == 0 || n == 0 {
            return Ok(());
        }
        let mut wt = Vec::with_capacity(classes * self.dim);
        for m in &self.models {
            wt.extend_from_slice(&m.w);
        }
        let dim = self.dim;
        const ROWS: usize = 256;
        out.par_chunks_mut(ROWS * classes)
            .zip(x.par_chunks(ROWS * dim.max(1)))
            .for_each(|(o, xb)| {
                let rows = o.len() / classes;
                if dim > 0 {
                    let dst = MatMut::from_row_major_slice_mut(o, rows, classes);
                    let lhs = MatRef::from_row_major_slice(&xb[..rows * dim], rows, dim);
                    let rhs = MatRef::from_row_major_slice(&wt, classes, dim).transpose();
                    matmul(dst, Accum::Replace, lhs, rhs, 1.0f32, Par::Seq);
                } else {
                    o.fill(0.0);
                }
                for row in o.chunks_exact_mut(classes) {
                    for (s, m) in row.iter_mut().zip(&self.models) {
                        *s += m.b;
                    }
                }
            });
        Ok(())
    }

    /// An error naming the first sample and class whose score in `scores` (from `x`, `n`
    /// rows) is not finite. Finite weights and features can still overflow f32 in the product
    /// (a model file with weights near f32::MAX): an infinite or NaN score would silently
    /// decide the arg-max.
    fn check_scores(&self, x: &[f32], scores: &[f32]) -> Result<()> {
        let (classes, dim) = (self.classes, self.dim);
        if let Some(p) = scores.iter().position(|s| !s.is_finite()) {
            let (i, c) = (p / classes, p % classes);
            let w_max = self.models[c].w.iter().fold(0f32, |m, v| m.max(v.abs()));
            let x_max = x[i * dim..(i + 1) * dim]
                .iter()
                .fold(0f32, |m, v| m.max(v.abs()));
            return Err(Error::Invalid(format!(
                "the decision value of sample {i} for class {c} is {} (it overflows f32): the \
                 class's weights reach |w| = {w_max:e} and the sample's features |x| = \
                 {x_max:e}; the model's weights are out of range for these features",
                scores[p]
            )));
        }
        Ok(())
    }

    /// Checked form of [`OneVsRest::scores`]: also an error when a score overflows `f32`.
    pub fn try_scores(&self, x: &[f32], n: usize) -> Result<Vec<f32>> {
        // The samples first: `n` is the caller's, and the scores are allocated from it.
        self.validate()?;
        check_matrix_allow_empty(x, n, self.dim)?;
        let Some(cells) = n.checked_mul(self.classes) else {
            return Err(Error::param(
                "samples",
                n,
                format!("n × {} classes to fit in memory", self.classes),
            ));
        };
        let mut out = vec![0f32; cells];
        self.scores_into(x, n, &mut out)?;
        self.check_scores(x, &out)?;
        Ok(out)
    }

    /// Decision values `n × classes` of the samples `x` (`n × dim`); a score that overflows
    /// `f32` is left infinite (see [`OneVsRest::try_scores`]).
    ///
    /// # Panics
    /// If `x.len() != n · dim` or the model is inconsistent; use [`OneVsRest::try_scores`] for
    /// inputs that are not known to be valid.
    pub fn scores(&self, x: &[f32], n: usize) -> Vec<f32> {
        let mut out = vec![0f32; n * self.classes];
        match self.scores_into(x, n, &mut out) {
            Ok(()) => out,
            Err(e) => panic!("OneVsRest::scores: {e}"),
        }
    }

    /// Arg-max class of each sample (the first on ties).
    ///
    /// # Panics
    /// As [`OneVsRest::scores`].
    pub fn predict(&self, x: &[f32], n: usize) -> Vec<usize> {
        argmax_rows(&self.scores(x, n), self.classes)
    }

    /// `Σ_c` primal objective of the class SVMs (the objective the Deep Fisher Kernel lowers).
    pub fn objective(&self) -> f64 {
        self.models.iter().map(|m| m.primal).sum()
    }
}

/// Index of the largest value of each row of `scores` (`rows × classes`; the first on ties).
pub fn argmax_rows(scores: &[f32], classes: usize) -> Vec<usize> {
    if classes == 0 {
        return Vec::new();
    }
    scores
        .chunks_exact(classes)
        .map(|row| {
            let mut best = 0;
            for (c, &v) in row.iter().enumerate() {
                if v > row[best] {
                    best = c;
                }
            }
            best
        })
        .collect()
}

/// Trains one binary SVM per class of `labels` on `x` (`n × dim`) with cost `params.c` scaled
/// by `weighting`; with `warm`, each class starts from that model's α. Classes are solved in
/// groups sharing one pass over the data per epoch, the groups in parallel on the current rayon
/// pool (at least one group per thread; the group's seed derives from `params.seed`). The
/// result is reproducible for a given thread count; other thread counts visit samples in
/// another order and agree to the solver tolerance.
pub fn train_one_vs_rest(
    x: &[f32],
    n: usize,
    dim: usize,
    labels: &Labels,
    params: &SvmParams,
    weighting: ClassWeighting,
    warm: Option<&OneVsRest>,
) -> Result<OneVsRest> {
    params.validate()?;
    labels.validate()?;
    let costs = weighting.costs(params.c, labels);
    train_one_vs_rest_with_costs(x, n, dim, labels, params, &costs, warm)
}

/// How [`train_one_vs_rest_below`] ended.
#[derive(Clone, Debug, PartialEq)]
pub enum OneVsRestOutcome {
    /// Every class was solved as by [`train_one_vs_rest`] (bit for bit); the objective may
    /// still exceed the threshold.
    Solved(OneVsRest),
    /// The solve was stopped because the sum over classes of dual objectives
    /// `D_c(α_c) = Σ_i α_{c,i} − ½‖w̃_c(α_c)‖²` of feasible duals exceeded the threshold. By weak
    /// duality `Σ_c D_c(α_c) ≤ Σ_c min_w P_c(w)`, which is at most the objective the full solve
    /// would have reported ([`OneVsRest::objective`]): that objective is certainly above the
    /// threshold.
    Exceeded {
        /// Lower bound of the objective the full solve would have reported (> threshold).
        bound: f64,
        /// The dual variables of every class when the solve stopped (feasible, not optimal).
        alphas: Vec<Vec<f64>>,
    },
}

impl OneVsRestOutcome {
    /// The models when every class was solved.
    pub fn solved(self) -> Option<OneVsRest> {
        match self {
            OneVsRestOutcome::Solved(m) => Some(m),
            OneVsRestOutcome::Exceeded { .. } => None,
        }
    }
}

/// Relative safety margin of the dual bound: the bound used against a threshold is
/// `Σ_c D_c − DUAL_MARGIN · Σ_c (Σ_i α_{c,i} + ½‖w̃_c‖²)`. `D_c` is computed from the
/// incrementally updated `w̃_c` and `Σ_i α_{c,i}`, whose rounding after `m` coordinate updates is
/// at most about `m · 2⁻⁵³` relative to those magnitudes (`m` ≤ 10⁹ updates keeps that near
/// 10⁻⁷); the computed primal objective the bound is compared with has a rounding of
/// `n · 2⁻⁵³` relative to the same magnitudes. 10⁻⁶ covers both with room to spare and costs
/// nothing in practice (about 0.01 on an objective of 7,000).
const DUAL_MARGIN: f64 = 1e-6;

/// [`train_one_vs_rest`] that stops as soon as the solve certainly ends with an objective
/// ([`OneVsRest::objective`], `Σ_c` primal) above `stop_above`: after the warm start and after
/// every epoch the solver compares the sum over classes of the dual objectives of its current
/// (feasible) duals, minus a rounding margin, with `stop_above`
/// ([`OneVsRestOutcome::Exceeded`]). Weak duality makes the test exact: when it stops, the
/// full solve's objective would have been above `stop_above`; when it does not, the result is
/// bit-identical to [`train_one_vs_rest`]'s (the test only reads the solver state).
///
/// Classes solved in other groups (several threads or many classes) count with the dual value
/// of their warm start, computed in one extra pass over the samples before the groups run, so
/// that the outcome does not depend on the threads' timing. `stop_above = +∞` never stops.
/// Errors: as [`train_one_vs_rest`], and a NaN threshold.
#[allow(clippy::too_many_arguments)]
pub fn train_one_vs_rest_below(
    x: &[f32],
    n: usize,
    dim: usize,
    labels: &Labels,
    params: &SvmParams,
    weighting: ClassWeighting,
    warm: Option<&OneVsRest>,
    stop_above: f64,
) -> Result<OneVsRestOutcome> {
    if stop_above.is_nan() {
        return Err(Error::param(
            "one-vs-rest stop threshold",
            stop_above,
            "a number (+∞: never stop)",
        ));
    }
    params.validate()?;
    labels.validate()?;
    let costs = weighting.costs(params.c, labels);
    one_vs_rest(x, n, dim, labels, params, &costs, warm, stop_above)
}

/// [`train_one_vs_rest`] with explicit per-class costs (`costs[c]`, absolute: `params.c` is not
/// applied).
pub fn train_one_vs_rest_with_costs(
    x: &[f32],
    n: usize,
    dim: usize,
    labels: &Labels,
    params: &SvmParams,
    costs: &[ClassCost],
    warm: Option<&OneVsRest>,
) -> Result<OneVsRest> {
    one_vs_rest(x, n, dim, labels, params, costs, warm, f64::INFINITY)?
        .solved()
        .ok_or_else(|| Error::Invalid("the one-vs-rest solve stopped without a threshold".into()))
}

#[allow(clippy::too_many_arguments)]
fn one_vs_rest(
    x: &[f32],
    n: usize,
    dim: usize,
    labels: &Labels,
    params: &SvmParams,
    costs: &[ClassCost],
    warm: Option<&OneVsRest>,
    stop_above: f64,
) -> Result<OneVsRestOutcome> {
    params.validate()?;
    labels.validate()?;
    check_matrix(x, n, dim)?;
    if labels.n() != n {
        return Err(Error::dim("labels (samples)", n, labels.n()));
    }
    let classes = labels.classes();
    if costs.len() != classes {
        return Err(Error::dim("one-vs-rest class costs", classes, costs.len()));
    }
    for (c, cc) in costs.iter().enumerate() {
        for v in [cc.positive, cc.negative] {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::param(
                    &format!("cost of class {c}"),
                    v,
                    "a finite value > 0",
                ));
            }
        }
    }
    check_every_class_has_samples(labels)?;
    if let Some(w) = warm {
        if w.models.len() != classes {
            return Err(Error::dim(
                "warm-start one-vs-rest classes",
                classes,
                w.models.len(),
            ));
        }
        for (c, m) in w.models.iter().enumerate() {
            if m.alpha.len() != n {
                return Err(Error::dim(
                    format!("warm-start alpha of class {c}"),
                    n,
                    m.alpha.len(),
                ));
            }
        }
    }
    let ys: Vec<Vec<f32>> = (0..classes).map(|c| labels.binary(c)).collect();
    let class_costs: Vec<Vec<f64>> = ys
        .iter()
        .zip(costs)
        .map(|(y, cc)| {
            y.iter()
                .map(|&v| if v > 0.0 { cc.positive } else { cc.negative })
                .collect()
        })
        .collect();
    let alphas = (0..classes)
        .map(|c| {
            initial_alpha(
                warm.map(|w| w.models[c].alpha.as_slice()),
                &class_costs[c],
                &format!("warm-start alpha of class {c}"),
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let groups = class_groups(classes, dim, rayon::current_num_threads());
    let mut tasks: Vec<Task> = ys
        .iter()
        .zip(&class_costs)
        .zip(alphas)
        .enumerate()
        .map(|(c, ((y, cost), alpha))| Task {
            id: c as u64,
            y,
            cost,
            alpha,
            start: None,
        })
        .collect();
    let mut grouped = Vec::with_capacity(groups.len());
    for &size in groups.iter().rev() {
        grouped.push(tasks.split_off(tasks.len() - size));
    }
    grouped.reverse();
    // Each group's bound counts the other groups' classes with their warm starts' duals.
    let stops: Vec<Option<DualStop>> = if stop_above == f64::INFINITY {
        vec![None; grouped.len()]
    } else {
        let starts: Vec<(f64, f64)> = if grouped.len() == 1 {
            vec![(0.0, 0.0)]
        } else {
            // The groups' solvers start from these weights instead of computing them again.
            grouped
                .par_iter_mut()
                .map(|group| {
                    let level = SimdLevel::detect();
                    let starts = start_weights(level, x, dim, group, f64::from(params.bias));
                    group
                        .iter_mut()
                        .zip(starts)
                        .map(|(t, start)| {
                            let dual = warm_dual(t, &start);
                            t.start = Some(start);
                            dual
                        })
                        .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1))
                })
                .collect()
        };
        let (dual, scale) = starts
            .iter()
            .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
        starts
            .iter()
            .map(|own| {
                Some(DualStop {
                    threshold: stop_above,
                    others_dual: dual - own.0,
                    others_scale: scale - own.1,
                })
            })
            .collect()
    };
    let outcomes: Vec<GroupOutcome> = grouped
        .into_par_iter()
        .zip(stops)
        .enumerate()
        .map(|(g, (group, stop))| {
            let seed = params
                .seed
                .wrapping_add((g as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let run = Run {
                seed,
                stop: stop.as_ref(),
                solo_bytes: SOLO_BYTES,
            };
            solve(x, dim, group, params, &run)
        })
        .collect();
    // The largest bound certified by a group that stopped (each one alone certifies).
    let stopped = outcomes
        .iter()
        .filter_map(|o| match o {
            GroupOutcome::Stopped { bound, .. } => Some(*bound),
            GroupOutcome::Solved(..) => None,
        })
        .reduce(f64::max);
    if let Some(bound) = stopped {
        let alphas = outcomes
            .into_iter()
            .flat_map(|o| match o {
                GroupOutcome::Solved(models, _) => models.into_iter().map(|m| m.alpha).collect(),
                GroupOutcome::Stopped { alphas, .. } => alphas,
            })
            .collect();
        return Ok(OneVsRestOutcome::Exceeded { bound, alphas });
    }
    // One warning for the whole solve, not one per group (thread) or class.
    let unconverged: usize = outcomes
        .iter()
        .map(|o| match o {
            GroupOutcome::Solved(_, u) => *u,
            GroupOutcome::Stopped { .. } => 0,
        })
        .sum();
    if unconverged > 0 {
        tracing::warn!(
            "svm: {unconverged} of {classes} binary problems reached max_iter = {} epochs \
             before the projected-gradient violation fell to eps = {}",
            params.max_iter,
            params.eps
        );
    }
    let models = outcomes
        .into_iter()
        .map(GroupOutcome::into_models)
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .collect();
    Ok(OneVsRestOutcome::Solved(OneVsRest {
        classes,
        dim,
        multilabel: matches!(labels, Labels::MultiLabel { .. }),
        models,
    }))
}

/// `(D(α), Σ_i α_i + ½‖w̃‖²)` of a task's starting duals, given their weights: its dual
/// objective and the magnitude the rounding margin is relative to.
fn warm_dual(task: &Task, (w, wb): &(Vec<f64>, f64)) -> (f64, f64) {
    let sum: f64 = task.alpha.iter().sum();
    let half = 0.5 * (w.iter().map(|v| v * v).sum::<f64>() + wb * wb);
    (sum - half, sum + half)
}

/// `(w, w_b) = Σ_i α_i y_i x̃_i` of each task, summed in the order of the samples (as
/// [`axpy`] one sample at a time would), a block of rows at a time: a block is read from memory
/// once for all tasks and each `w` once per block.
fn start_weights(
    level: SimdLevel,
    x: &[f32],
    dim: usize,
    tasks: &[Task],
    bias: f64,
) -> Vec<(Vec<f64>, f64)> {
    let n = tasks.first().map_or(0, |t| t.y.len());
    let mut starts = vec![(vec![0f64; dim], 0f64); tasks.len()];
    let mut block = Vec::with_capacity(PENDING_ROWS);
    for first in (0..n).step_by(PENDING_ROWS) {
        for (t, (w, wb)) in tasks.iter().zip(&mut starts) {
            block.clear();
            for i in first..(first + PENDING_ROWS).min(n) {
                let a = t.alpha[i];
                if a != 0.0 {
                    let d = a * f64::from(t.y[i]);
                    block.push((i, d));
                    *wb += d * bias;
                }
            }
            add_rows(level, x, dim, &block, w);
        }
    }
    starts
}

/// When a solver group stops early: as soon as the dual bound of all classes (this group's
/// current duals plus the other groups' warm-start duals), less the rounding margin, exceeds
/// `threshold`.
#[derive(Clone, Copy, Debug)]
struct DualStop {
    threshold: f64,
    /// `Σ D_c` of the classes of the other groups (their warm starts).
    others_dual: f64,
    /// Their `Σ (Σ_i α_i + ½‖w̃‖²)`.
    others_scale: f64,
}

/// What one solver group produced.
enum GroupOutcome {
    /// The models, and how many of them reached `max_iter` before `eps`.
    Solved(Vec<BinarySvm>, usize),
    Stopped {
        /// Certified lower bound of the whole objective (> the threshold).
        bound: f64,
        /// The group's duals when it stopped.
        alphas: Vec<Vec<f64>>,
    },
}

impl GroupOutcome {
    fn into_models(self) -> Result<Vec<BinarySvm>> {
        match self {
            GroupOutcome::Solved(models, _) => Ok(models),
            GroupOutcome::Stopped { .. } => Err(Error::Invalid(
                "the svm solver stopped on a dual bound without a threshold".into(),
            )),
        }
    }
}

fn check_matrix(x: &[f32], n: usize, dim: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::Empty {
            what: "svm training set".into(),
        });
    }
    check_matrix_allow_empty(x, n, dim)?;
    check_finite("svm features", x)
}

fn check_matrix_allow_empty(x: &[f32], n: usize, dim: usize) -> Result<()> {
    match n.checked_mul(dim) {
        Some(len) if len == x.len() => Ok(()),
        Some(len) => Err(Error::dim("svm features (n × dim)", len, x.len())),
        None => Err(Error::param(
            "svm n × dim",
            format!("{n} × {dim}"),
            "a size that fits in memory",
        )),
    }
}

/// Why a class cannot train its one-vs-rest SVM ([`untrainable_class`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Untrainable {
    /// No sample of the class.
    NoPositive,
    /// Every sample is of the class.
    NoNegative,
}

/// The first class of `labels` without a positive or without a negative sample, if any.
pub fn untrainable_class(labels: &Labels) -> Option<(usize, Untrainable)> {
    let n = labels.n();
    labels
        .positives_per_class()
        .iter()
        .enumerate()
        .find_map(|(c, &pos)| match pos {
            0 => Some((c, Untrainable::NoPositive)),
            p if p == n => Some((c, Untrainable::NoNegative)),
            _ => None,
        })
}

/// Every class of `labels` has a positive and a negative sample (one-vs-rest needs both);
/// the error names the first class that does not.
pub fn check_every_class_has_samples(labels: &Labels) -> Result<()> {
    labels.validate()?;
    let n = labels.n();
    if let Some((c, why)) = untrainable_class(labels) {
        if why == Untrainable::NoPositive {
            // The likeliest causes, named: a gap in the class indices or a class that the
            // training subset (a limit, a validation split) left out.
            return Err(Error::Invalid(format!(
                "class {c} has no training sample (all {n} samples are negatives of its \
                 one-vs-rest task): classes are the indices 0..{} and each needs at least one \
                 sample; check the labels for a gap, or a subset or split that leaves class \
                 {c} out",
                labels.classes() - 1
            )));
        }
        check_both_classes(n, n, &format!("class {c} (one-vs-rest)"))?;
    }
    Ok(())
}

fn check_both_classes(positives: usize, n: usize, what: &str) -> Result<()> {
    if positives == 0 || positives == n {
        let (has, lacks) = if positives == 0 {
            ("negative", "positive")
        } else {
            ("positive", "negative")
        };
        return Err(Error::Invalid(format!(
            "all {n} samples of {what} are {has}: an SVM needs at least one {lacks} sample"
        )));
    }
    Ok(())
}

fn check_costs(cost: &[f64], n: usize) -> Result<()> {
    if cost.len() != n {
        return Err(Error::dim("svm per-sample costs", n, cost.len()));
    }
    if let Some(i) = cost.iter().position(|&c| !(c.is_finite() && c > 0.0)) {
        return Err(Error::param(
            &format!("svm cost[{i}]"),
            cost[i],
            "a finite value > 0",
        ));
    }
    Ok(())
}

/// Zeros, or the warm start clipped to `[0, C_i]`.
fn initial_alpha(warm: Option<&[f64]>, cost: &[f64], what: &str) -> Result<Vec<f64>> {
    match warm {
        None => Ok(vec![0.0; cost.len()]),
        Some(a) => {
            if a.len() != cost.len() {
                return Err(Error::dim(what, cost.len(), a.len()));
            }
            if let Some(index) = a.iter().position(|v| !v.is_finite()) {
                return Err(Error::NonFinite {
                    what: what.to_string(),
                    index,
                });
            }
            Ok(a.iter().zip(cost).map(|(&v, &c)| v.clamp(0.0, c)).collect())
        }
    }
}

/// Bytes of weight vectors a solver group may keep hot in cache alongside one sample.
const GROUP_WEIGHT_BYTES: usize = 768 * 1024;
/// Most tasks solved together in one pass over the data.
const MAX_GROUP: usize = 16;

/// Sizes of the consecutive class groups solved together: as few groups as keep each group's
/// `f64` weights within [`GROUP_WEIGHT_BYTES`] (at most [`MAX_GROUP`] classes), but at least one
/// per thread so all threads work; sizes differ by at most one.
fn class_groups(classes: usize, dim: usize, threads: usize) -> Vec<usize> {
    let cap = (GROUP_WEIGHT_BYTES / (8 * dim.max(1))).clamp(1, MAX_GROUP);
    let count = classes.div_ceil(cap).max(threads).min(classes).max(1);
    (0..count)
        .map(|g| classes / count + usize::from(g < classes % count))
        .collect()
}

/// One binary task of a solver group: labels, per-sample costs and starting dual variables.
struct Task<'a> {
    /// Which task of the problem this is (the class): picks its own random stream.
    id: u64,
    y: &'a [f32],
    cost: &'a [f64],
    alpha: Vec<f64>,
    /// `(w, w_b) = Σ_i α_i y_i x̃_i` of `alpha` when already computed ([`start_weights`]).
    start: Option<(Vec<f64>, f64)>,
}

/// How one solver group runs: its random seed, the optional early stop, and the size of a
/// task's active rows below which it runs its epochs alone ([`SOLO_BYTES`]).
struct Run<'a> {
    seed: u64,
    stop: Option<&'a DualStop>,
    solo_bytes: usize,
}

/// Runs the solver compiled for the best instruction set of this CPU.
fn solve(
    x: &[f32],
    dim: usize,
    tasks: Vec<Task<'_>>,
    params: &SvmParams,
    run: &Run,
) -> GroupOutcome {
    solve_at(SimdLevel::detect(), x, dim, tasks, params, run)
}

/// [`solve`] compiled for `level` (clamped to what the CPU supports). Every level runs the same
/// operations in the same order, so the results are bit-identical.
fn solve_at(
    level: SimdLevel,
    x: &[f32],
    dim: usize,
    tasks: Vec<Task<'_>>,
    params: &SvmParams,
    run: &Run,
) -> GroupOutcome {
    match level.clamp_to_cpu() {
        // SAFETY: `clamp_to_cpu` only returns levels whose features the CPU reported.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => unsafe { solve_avx512(x, dim, tasks, params, run) },
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => unsafe { solve_avx2(x, dim, tasks, params, run) },
        _ => solve_impl(SimdLevel::Scalar, x, dim, tasks, params, run),
    }
}

/// [`solve_impl`] compiled for AVX-512: the inner products and updates vectorise over 8 `f64`
/// lanes. The fixed accumulator layout keeps the results bit-identical to the other levels.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn solve_avx512(
    x: &[f32],
    dim: usize,
    tasks: Vec<Task<'_>>,
    params: &SvmParams,
    run: &Run,
) -> GroupOutcome {
    solve_impl(SimdLevel::Avx512, x, dim, tasks, params, run)
}

/// [`solve_impl`] compiled for AVX2 + FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn solve_avx2(
    x: &[f32],
    dim: usize,
    tasks: Vec<Task<'_>>,
    params: &SvmParams,
    run: &Run,
) -> GroupOutcome {
    solve_impl(SimdLevel::Avx2, x, dim, tasks, params, run)
}

/// Solver state of one task.
struct State<'a> {
    y: &'a [f32],
    cost: &'a [f64],
    alpha: Vec<f64>,
    w: Vec<f64>,
    /// While `fast`: `w` rounded to `f32` at the last sync, then updated in `f32` alongside
    /// `w` (see [`F32Budget`]).
    w32: Vec<f32>,
    /// Whether the inner products use `w32` (see [`F32Budget`]).
    fast: bool,
    /// While `fast`: a bound on how far the `f32` updates since the last sync moved `w32`
    /// from `w` rounded, and one on `‖w‖`.
    drift: f64,
    w_bound: f64,
    /// The epoch's test of whether `w32` may stand in for `w`.
    budget: F32Budget,
    /// While `fast`: updates `(i, d)` of `w += d·x_i` made to `w32` but not yet to `w`,
    /// applied in order by [`settle`] (at most [`PENDING_ROWS`]).
    pending: Vec<(usize, f64)>,
    wb: f64,
    /// `Σ_i α_i`, kept up to date by the updates (for the dual bound).
    sum_alpha: f64,
    active: Vec<bool>,
    n_active: usize,
    pg_max_old: f64,
    pg_min_old: f64,
    pg_max_new: f64,
    pg_min_new: f64,
    iterations: usize,
    running: bool,
    /// Converged on its shrunk set: skips epochs until the group's next full-set check.
    waiting: bool,
    converged: bool,
    /// The order of the task's epochs on its own ([`solo_epochs`]).
    rng: ChaCha8Rng,
}

impl State<'_> {
    /// Whether the task takes part in the current epoch.
    #[inline(always)]
    fn visiting(&self) -> bool {
        self.running && !self.waiting
    }
}

/// Dual coordinate descent (liblinear's `solve_l2r_l1l2_svc` for the L1 loss) for several tasks
/// on the same samples at once. Every task runs liblinear's algorithm unchanged: per epoch a
/// pass over its active samples in random order, shrinking with the previous epoch's
/// projected-gradient extremes, stop at `PG_max − PG_min ≤ eps` on the full set. The tasks
/// share the random order of each epoch (a uniformly random permutation of all samples,
/// restricted to each task's active ones), so each sample is read from memory once per epoch
/// for all tasks instead of once per task: the solver is bound by memory bandwidth. Once a
/// task's active rows are a shrunk set that fits in `run.solo_bytes`, it runs its epochs
/// alone ([`solo_epochs`]) until it converges on them: the union of all tasks' active rows
/// need not fit in cache, one task's do. A task that converged on its shrunk set sits out the
/// epochs until no task is left working on its shrunk set; then all of them re-check on the
/// full set in the same epoch. Inputs are validated by the callers. With `run.stop`, the group
/// returns early once its dual bound exceeds the threshold (checked after the warm start and
/// after every group epoch; see [`DualStop`]).
#[inline(always)]
fn solve_impl(
    level: SimdLevel,
    x: &[f32],
    dim: usize,
    tasks: Vec<Task<'_>>,
    params: &SvmParams,
    run: &Run,
) -> GroupOutcome {
    let (seed, stop) = (run.seed, run.stop);
    let n = tasks.first().map_or(0, |t| t.y.len());
    let row = |i: usize| &x[i * dim..(i + 1) * dim];
    let bias = f64::from(params.bias);
    let mut tasks = tasks;
    if tasks.iter().any(|t| t.start.is_none()) {
        let starts = start_weights(level, x, dim, &tasks, bias);
        for (t, start) in tasks.iter_mut().zip(starts) {
            t.start = Some(start);
        }
    }
    let mut states: Vec<State> = tasks
        .into_iter()
        .map(|t| {
            // Computed above when not given.
            let (w, wb) = t.start.unwrap_or_default();
            State {
                w,
                wb,
                y: t.y,
                cost: t.cost,
                sum_alpha: t.alpha.iter().sum(),
                alpha: t.alpha,
                w32: vec![0f32; dim],
                fast: false,
                drift: 0.0,
                w_bound: 0.0,
                budget: F32Budget::new(dim, 0.0, 0.0),
                pending: Vec::with_capacity(PENDING_ROWS),
                active: vec![true; n],
                n_active: n,
                pg_max_old: f64::INFINITY,
                pg_min_old: f64::NEG_INFINITY,
                pg_max_new: f64::NEG_INFINITY,
                pg_min_new: f64::INFINITY,
                iterations: 0,
                running: true,
                waiting: false,
                converged: false,
                rng: {
                    let mut rng = ChaCha8Rng::seed_from_u64(seed);
                    rng.set_stream(1 + t.id);
                    rng
                },
            }
        })
        .collect();
    let mut qd = Vec::with_capacity(n);
    let mut x_norm_sq_max = 0f64;
    for i in 0..n {
        let sq = sq_norm(row(i));
        x_norm_sq_max = x_norm_sq_max.max(sq);
        qd.push(sq + bias * bias);
    }
    let mut order: Vec<usize> = (0..n).collect();
    let mut visited = vec![false; n];
    let mut visits = Vec::with_capacity(n);
    let (mut here, mut dots) = (
        Vec::with_capacity(states.len()),
        Vec::with_capacity(states.len()),
    );
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    if let Some(bound) = stop.and_then(|st| exceeded(st, &states)) {
        return stopped(bound, states);
    }
    while states.iter().any(|s| s.running) {
        for i in 0..n {
            let j = rng.random_range(i..n);
            order.swap(i, j);
        }
        visited.fill(false);
        for s in states.iter_mut().filter(|s| s.visiting()) {
            begin_epoch(level, s, x, x_norm_sq_max.sqrt(), params.eps);
            for (v, &a) in visited.iter_mut().zip(&s.active) {
                *v |= a;
            }
        }
        // The samples some task visits this epoch (a visit only ever deactivates its own
        // sample, so the list is fixed at the start of the epoch).
        visits.clear();
        visits.extend(order.iter().copied().filter(|&i| visited[i]));
        for (p, &i) in visits.iter().enumerate() {
            // After shrinking, visits are scattered over the matrix: fetching the next row
            // while this one is used hides the memory latency that otherwise dominates.
            let next = visits.get(p + PREFETCH_AHEAD).map_or(&[][..], |&j| row(j));
            let xi = row(i);
            here.clear();
            here.extend((0..states.len()).filter(|&t| states[t].visiting() && states[t].active[i]));
            inner_products(level, &states, &here, xi, next, &mut dots);
            for (&t, &dot) in here.iter().zip(&dots) {
                let s = &mut states[t];
                update(level, s, x, dim, i, dot, qd[i], bias, params.shrinking);
            }
        }
        for s in states.iter_mut().filter(|s| s.visiting()) {
            end_epoch(s, params);
        }
        // A task whose shrunk set of samples fits in cache finishes that phase alone: its rows
        // then stay cached from one epoch to the next, where the group's epochs would stream
        // the union of all tasks' active rows (which need not fit) from memory every time.
        for s in states.iter_mut() {
            let rows_bytes = s.n_active * dim * std::mem::size_of::<f32>();
            if s.visiting() && s.n_active < n && rows_bytes <= run.solo_bytes {
                let x_norm_max = x_norm_sq_max.sqrt();
                solo_epochs(
                    level,
                    s,
                    x,
                    dim,
                    &qd,
                    x_norm_max,
                    params,
                    &mut visits,
                    &mut dots,
                );
            }
        }
        for s in &mut states {
            settle(level, s, x);
        }
        if let Some(bound) = stop.and_then(|st| exceeded(st, &states)) {
            return stopped(bound, states);
        }
        // The tasks that converged on their shrunk sets re-check on the full set together,
        // once no task is still working on its shrunk set: one pass over the matrix serves
        // all of them instead of one pass each.
        if states.iter().filter(|s| s.running).all(|s| s.waiting) {
            for s in states.iter_mut().filter(|s| s.running) {
                s.waiting = false;
                s.active.fill(true);
                s.n_active = n;
                s.pg_max_old = f64::INFINITY;
                s.pg_min_old = f64::NEG_INFINITY;
            }
        }
    }
    for s in &mut states {
        settle(level, s, x);
    }
    // Hinge losses in one pass over the samples for all tasks (the matrix is read once), a
    // block of rows at a time (each `w` is read once per block).
    let mut losses = vec![0f64; states.len()];
    let mut dots_block = [0f64; LOSS_ROWS];
    for first in (0..n).step_by(LOSS_ROWS) {
        let rows = LOSS_ROWS.min(n - first);
        for (s, loss) in states.iter().zip(&mut losses) {
            dot_f64_rows(level, &s.w, x, first, &mut dots_block[..rows]);
            for (i, &dot) in (first..).zip(&dots_block[..rows]) {
                let f = dot + s.wb * bias;
                *loss += s.cost[i] * (1.0 - f64::from(s.y[i]) * f).max(0.0);
            }
        }
    }
    // Counted for one warning over all groups ([`one_vs_rest`]).
    let unconverged = states.iter().filter(|s| !s.converged).count();
    let models = states
        .into_iter()
        .zip(losses)
        .map(|(s, loss)| {
            let reg = 0.5 * (s.w.iter().map(|v| v * v).sum::<f64>() + s.wb * s.wb);
            let sum_alpha: f64 = s.alpha.iter().sum();
            BinarySvm {
                w: s.w.iter().map(|&v| v as f32).collect(),
                b: (s.wb * bias) as f32,
                alpha: s.alpha,
                primal: reg + loss,
                dual: sum_alpha - reg,
                iterations: s.iterations,
            }
        })
        .collect();
    GroupOutcome::Solved(models, unconverged)
}

/// Bytes of active rows below which a task runs its epochs alone ([`solo_epochs`]): a
/// share of the last-level cache that the rows of one task per thread can keep.
const SOLO_BYTES: usize = 12 << 20;

/// Resets the epoch's projected-gradient extremes of `s` and decides whether its inner
/// products may start the epoch on the `f32` weights ([`F32Budget`]).
#[inline(always)]
fn begin_epoch(level: SimdLevel, s: &mut State, x: &[f32], x_norm_max: f64, eps: f64) {
    s.pg_max_new = f64::NEG_INFINITY;
    s.pg_min_new = f64::INFINITY;
    s.budget = F32Budget::new(s.w.len(), x_norm_max, eps);
    s.fast = true;
    sync_w32(level, s, x);
}

/// Makes `w32` the rounded `w` again (`drift` 0, `w_bound = ‖w‖`), or turns `fast` off when
/// even that is not close enough; only while `fast`.
#[inline(always)]
fn sync_w32(level: SimdLevel, s: &mut State, x: &[f32]) {
    settle(level, s, x);
    let w_norm = s.w.iter().map(|v| v * v).sum::<f64>().sqrt();
    s.fast = s.fast && s.budget.allows(w_norm, 0.0);
    if s.fast {
        for (v32, &v) in s.w32.iter_mut().zip(&s.w) {
            *v32 = v as f32;
        }
        (s.drift, s.w_bound) = (0.0, w_norm);
    }
}

/// liblinear's epochs for task `s` alone, each over its active samples in an order drawn from
/// its own random stream, until it converges on them (and waits for the group's full-set
/// check), converges or runs out of epochs. `order` and `dots` are scratch.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn solo_epochs(
    level: SimdLevel,
    s: &mut State,
    x: &[f32],
    dim: usize,
    qd: &[f64],
    x_norm_max: f64,
    params: &SvmParams,
    order: &mut Vec<usize>,
    dots: &mut Vec<f64>,
) {
    let row = |i: usize| &x[i * dim..(i + 1) * dim];
    let bias = f64::from(params.bias);
    while s.visiting() {
        begin_epoch(level, s, x, x_norm_max, params.eps);
        order.clear();
        order.extend((0..s.active.len()).filter(|&i| s.active[i]));
        for i in 0..order.len() {
            let j = s.rng.random_range(i..order.len());
            order.swap(i, j);
        }
        for (p, &i) in order.iter().enumerate() {
            let next = order.get(p + PREFETCH_AHEAD).map_or(&[][..], |&j| row(j));
            let xi = row(i);
            inner_products(level, std::slice::from_ref(s), &[0], xi, next, dots);
            update(level, s, x, dim, i, dots[0], qd[i], bias, params.shrinking);
        }
        end_epoch(s, params);
    }
}

/// The certified bound `Σ_c D_c − margin` when it exceeds the threshold of `stop` (the other
/// groups' classes counted with their warm-start duals). Costs `dim` per task: `‖w̃‖²` is
/// recomputed, `Σ α_i` is kept by the updates.
fn exceeded(stop: &DualStop, states: &[State]) -> Option<f64> {
    let (mut dual, mut scale) = (stop.others_dual, stop.others_scale);
    for s in states {
        let half = 0.5 * (s.w.iter().map(|v| v * v).sum::<f64>() + s.wb * s.wb);
        dual += s.sum_alpha - half;
        scale += s.sum_alpha + half;
    }
    let bound = dual - DUAL_MARGIN * scale;
    (bound > stop.threshold).then_some(bound)
}

fn stopped(bound: f64, states: Vec<State>) -> GroupOutcome {
    GroupOutcome::Stopped {
        bound,
        alphas: states.into_iter().map(|s| s.alpha).collect(),
    }
}

/// `⟨w_t, x⟩` of the tasks `tasks` of `states` (in that order, into `out`): [`dot_f32w`] for
/// those whose epoch is `fast`, [`dot_f64`] for the others, with the same bits. Also prefetches
/// `next` (the next sample's row, possibly empty). At AVX-512 the `fast` products of up to
/// [`FUSED_TASKS`] tasks are computed in one pass over `x`, and the prefetches are spread over
/// that pass: issued all at once they stall the pipeline once the memory system's queue is
/// full.
#[inline(always)]
fn inner_products(
    level: SimdLevel,
    states: &[State],
    tasks: &[usize],
    x: &[f32],
    next: &[f32],
    out: &mut Vec<f64>,
) {
    out.clear();
    out.resize(tasks.len(), 0.0);
    #[cfg(target_arch = "x86_64")]
    if level == SimdLevel::Avx512 {
        let mut fast = [0usize; FUSED_TASKS];
        let mut m = 0;
        let mut prefetched = next.is_empty();
        let flush = |fast: &[usize], out: &mut Vec<f64>, prefetched: &mut bool| {
            let ws: [&[f32]; FUSED_TASKS] = std::array::from_fn(|r| {
                fast.get(r).map_or(&[][..], |&p| &states[tasks[p]].w32[..])
            });
            let mut sums = [0f64; FUSED_TASKS];
            let ahead = if *prefetched { &[][..] } else { next };
            // SAFETY: the solver runs this level only on CPUs with AVX-512F.
            unsafe { dots_f32w_fused_avx512(&ws[..fast.len()], x, ahead, &mut sums) };
            *prefetched = true;
            for (&p, &v) in fast.iter().zip(&sums) {
                out[p] = v;
            }
        };
        for (p, &t) in tasks.iter().enumerate() {
            if states[t].fast {
                fast[m] = p;
                m += 1;
                if m == FUSED_TASKS {
                    flush(&fast[..m], out, &mut prefetched);
                    m = 0;
                }
            } else {
                out[p] = dot_f64(level, &states[t].w, x);
            }
        }
        if m > 0 {
            flush(&fast[..m], out, &mut prefetched);
        }
        if !prefetched {
            kernels::prefetch(next);
        }
        return;
    }
    kernels::prefetch(next);
    for (o, &t) in out.iter_mut().zip(tasks) {
        let s = &states[t];
        *o = if s.fast {
            dot_f32w(level, &s.w32, x)
        } else {
            dot_f64(level, &s.w, x)
        };
    }
}

/// One coordinate step of task `s` on its active sample `i` (or shrinking it), given
/// `dot = ⟨w, x_i⟩` ([`inner_products`]).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn update(
    level: SimdLevel,
    s: &mut State,
    x: &[f32],
    dim: usize,
    i: usize,
    dot: f64,
    qd: f64,
    bias: f64,
    shrinking: bool,
) {
    let xi = &x[i * dim..(i + 1) * dim];
    let yi = f64::from(s.y[i]);
    let g = yi * (dot + s.wb * bias) - 1.0;
    let c = s.cost[i];
    let a = s.alpha[i];
    let mut pg = 0.0;
    if a == 0.0 {
        if shrinking && g > s.pg_max_old {
            s.active[i] = false;
            s.n_active -= 1;
            return;
        }
        if g < 0.0 {
            pg = g;
        }
    } else if a == c {
        if shrinking && g < s.pg_min_old {
            s.active[i] = false;
            s.n_active -= 1;
            return;
        }
        if g > 0.0 {
            pg = g;
        }
    } else {
        pg = g;
    }
    s.pg_max_new = s.pg_max_new.max(pg);
    s.pg_min_new = s.pg_min_new.min(pg);
    if pg.abs() > 1e-12 {
        // Q_ii = 0 only for an all-zero sample without bias: the step is then ±∞ and the clip
        // puts α at the bound the gradient points to, as liblinear does.
        let new = (a - g / qd).clamp(0.0, c);
        s.alpha[i] = new;
        s.sum_alpha += new - a;
        let d = (new - a) * yi;
        if s.fast {
            // The inner products need `w32` now; `w` only at the next sync, so its updates
            // wait and are applied a block at a time (the row is still cached by then).
            axpy_f32(d as f32, xi, &mut s.w32);
            s.pending.push((i, d));
            if s.pending.len() == PENDING_ROWS {
                settle(level, s, x);
            }
            // qd ≥ ‖x_i‖².
            (s.drift, s.w_bound) = s
                .budget
                .after_update(s.drift, s.w_bound, d.abs() * qd.sqrt());
            if !s.budget.allows(s.w_bound, s.drift) {
                sync_w32(level, s, x);
            }
        } else {
            axpy(d, xi, &mut s.w);
        }
        s.wb += d * bias;
    }
}

/// liblinear's end-of-epoch test: stop, wait for the re-check on the full set, or tighten the
/// shrinking bounds.
fn end_epoch(s: &mut State, params: &SvmParams) {
    s.iterations += 1;
    if s.pg_max_new - s.pg_min_new <= params.eps {
        if s.n_active == s.active.len() {
            s.converged = true;
            s.running = false;
            return;
        }
        s.waiting = true;
    } else {
        s.pg_max_old = if s.pg_max_new <= 0.0 {
            f64::INFINITY
        } else {
            s.pg_max_new
        };
        s.pg_min_old = if s.pg_min_new >= 0.0 {
            f64::NEG_INFINITY
        } else {
            s.pg_min_new
        };
    }
    if s.iterations >= params.max_iter {
        s.running = false;
    }
}

/// How many visits ahead the solver prefetches a sample's row.
const PREFETCH_AHEAD: usize = 1;

/// Independent accumulators: enough to keep the vector units busy and let the compiler
/// vectorise the sums without reassociating them.
const LANES: usize = 16;

/// Accumulators of the solver's inner product: four AVX-512 registers (eight AVX2 ones), so
/// that the additions form independent chains instead of waiting on each other.
const DOT_LANES: usize = 32;

/// `⟨w, x⟩` with `f64` weights and `f32` features, accumulated in `f64`, at `level`. Every
/// level adds the products `w_j x_j` into accumulator `j mod 32` in order and reduces them
/// pairwise, so all levels give the same bits.
#[inline(always)]
fn dot_f64(level: SimdLevel, w: &[f64], x: &[f32]) -> f64 {
    match level {
        // SAFETY: the solver runs at a level clamped to the CPU's features.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => unsafe { dot_f64_avx512(w, x) },
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => unsafe { dot_f64_avx2(w, x) },
        _ => dot_f64_scalar(w, x),
    }
}

/// The reference definition of [`dot_f64`].
#[inline(always)]
fn dot_f64_scalar(w: &[f64], x: &[f32]) -> f64 {
    let mut acc = [0f64; DOT_LANES];
    let wc = w.chunks_exact(DOT_LANES);
    let xc = x.chunks_exact(DOT_LANES);
    let (wt, xt) = (wc.remainder(), xc.remainder());
    for (a, b) in wc.zip(xc) {
        for k in 0..DOT_LANES {
            acc[k] += a[k] * f64::from(b[k]);
        }
    }
    for (k, (a, &b)) in wt.iter().zip(xt).enumerate() {
        acc[k] += a * f64::from(b);
    }
    reduce(acc)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot_f64_avx512(w: &[f64], x: &[f32]) -> f64 {
    use std::arch::x86_64::*;
    let n = w.len().min(x.len());
    let whole = n - n % DOT_LANES;
    let mut acc = [0f64; DOT_LANES];
    // SAFETY: every load reads `DOT_LANES` elements below `whole ≤ n` of both slices.
    unsafe {
        let mut a = [_mm512_setzero_pd(); 4];
        accumulate_dot_f64_avx512(&mut a, w.as_ptr(), x.as_ptr(), 0, whole);
        for (r, v) in a.iter().enumerate() {
            _mm512_storeu_pd(acc.as_mut_ptr().add(8 * r), *v);
        }
    }
    for (k, j) in (whole..n).enumerate() {
        acc[k] += w[j] * f64::from(x[j]);
    }
    reduce(acc)
}

/// The products `w_j x_j` for `j` in `from..to` (multiples of 32) added into the four
/// accumulator registers of [`dot_f64_avx512`] (lane `j mod 32`).
///
/// # Safety
/// `w` and `x` must be valid for reads of `to` elements, and the CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn accumulate_dot_f64_avx512(
    acc: &mut [std::arch::x86_64::__m512d; 4],
    w: *const f64,
    x: *const f32,
    from: usize,
    to: usize,
) {
    use std::arch::x86_64::*;
    let mut j = from;
    while j < to {
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let o = j + 8 * r;
            // SAFETY: `o + 8 ≤ to`, within both (the caller's contract).
            let prod = unsafe {
                _mm512_mul_pd(
                    _mm512_loadu_pd(w.add(o)),
                    _mm512_cvtps_pd(_mm256_loadu_ps(x.add(o))),
                )
            };
            *acc_r = _mm512_add_pd(*acc_r, prod);
        }
        j += DOT_LANES;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_f64_avx2(w: &[f64], x: &[f32]) -> f64 {
    use std::arch::x86_64::*;
    let n = w.len().min(x.len());
    let whole = n - n % DOT_LANES;
    let mut acc = [0f64; DOT_LANES];
    // SAFETY: every load reads `DOT_LANES` elements below `whole ≤ n` of both slices.
    unsafe {
        let (wp, xp) = (w.as_ptr(), x.as_ptr());
        let mut a = [_mm256_setzero_pd(); 8];
        let mut j = 0;
        while j < whole {
            for (r, acc_r) in a.iter_mut().enumerate() {
                let o = j + 4 * r;
                let prod = _mm256_mul_pd(
                    _mm256_loadu_pd(wp.add(o)),
                    _mm256_cvtps_pd(_mm_loadu_ps(xp.add(o))),
                );
                *acc_r = _mm256_add_pd(*acc_r, prod);
            }
            j += DOT_LANES;
        }
        for (r, v) in a.iter().enumerate() {
            _mm256_storeu_pd(acc.as_mut_ptr().add(4 * r), *v);
        }
    }
    for (k, j) in (whole..n).enumerate() {
        acc[k] += w[j] * f64::from(x[j]);
    }
    reduce(acc)
}

/// Rows of the final hinge-loss pass whose products with `w` are computed together.
const LOSS_ROWS: usize = 8;

/// [`dot_f64`] of `w` with the rows `first..first + out.len()` of `x` (`w.len()` wide), into
/// `out`: the same bits, with `w` read once for all of them.
#[inline(always)]
fn dot_f64_rows(level: SimdLevel, w: &[f64], x: &[f32], first: usize, out: &mut [f64]) {
    let dim = w.len();
    match level {
        // SAFETY: the solver runs at a level clamped to the CPU's features.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 if out.len() <= LOSS_ROWS => unsafe {
            dot_f64_rows_avx512(w, x, first, out)
        },
        _ => {
            for (i, o) in (first..).zip(out.iter_mut()) {
                *o = dot_f64(level, w, &x[i * dim..(i + 1) * dim]);
            }
        }
    }
}

/// [`dot_f64_rows`] a 512-weight chunk of `w` at a time (kept in the first-level cache), each
/// row's four accumulator registers of [`dot_f64_avx512`] carried from chunk to chunk.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot_f64_rows_avx512(w: &[f64], x: &[f32], first: usize, out: &mut [f64]) {
    use std::arch::x86_64::*;
    const CHUNK: usize = 512;
    let dim = w.len();
    let whole = dim - dim % DOT_LANES;
    let rows = out.len();
    assert!(rows <= LOSS_ROWS && (first + rows) * dim <= x.len());
    let mut acc = [[_mm512_setzero_pd(); 4]; LOSS_ROWS];
    // SAFETY: the loads read `w[o..o + 8]` and `x_i[o..o + 8]` with `o + 8 ≤ whole ≤ dim`, for
    // rows `i < first + rows` of `x` (checked above).
    unsafe {
        let wp = w.as_ptr();
        let mut start = 0;
        while start < whole {
            let end = (start + CHUNK).min(whole);
            for (r, a) in acc.iter_mut().enumerate().take(rows) {
                let xp = x.as_ptr().add((first + r) * dim);
                accumulate_dot_f64_avx512(a, wp, xp, start, end);
            }
            start = end;
        }
    }
    for (r, (a, o)) in acc.iter().zip(out.iter_mut()).enumerate() {
        let xi = &x[(first + r) * dim..(first + r + 1) * dim];
        let mut lanes = [0f64; DOT_LANES];
        for (q, v) in a.iter().enumerate() {
            // SAFETY: `lanes` holds 32 values; `q < 4`.
            unsafe { _mm512_storeu_pd(lanes.as_mut_ptr().add(8 * q), *v) };
        }
        for (k, j) in (whole..dim).enumerate() {
            lanes[k] += w[j] * f64::from(xi[j]);
        }
        *o = reduce(lanes);
    }
}

/// Accumulators of [`dot_f32w`]: four AVX-512 registers (eight AVX2 ones) of `f32`.
const DOT32_LANES: usize = 64;

/// The unit roundoff of `f32`, 2⁻²⁴.
const F32_UNIT: f64 = f32::EPSILON as f64 * 0.5;

/// When the gradients `G_i` may come from the `f32` copy `w32` of `w` ([`dot_f32w`]) instead
/// of the `f64` one. Rounding `w` to `f32` and summing in `f32` change `⟨w, x_i⟩` by at most
/// about `(dim/64 + 8) · 2⁻²⁴ · Σ_j |w_j x_{ij}|`, and `Σ_j |w_j x_{ij}| ≤ ‖w‖ · x_norm_max`.
/// Between syncs `w32` is updated in `f32` ([`axpy_f32`]), which moves it from `w`
/// rounded by at most `drift`: per update `w32_j + fl(fl(d) x_j)`, rounded, is off from
/// `w32_j + d x_j` by at most `u |w32_j'| + (2u + u²) |d x_j|` (u = 2⁻²⁴), so `drift` grows
/// by `u (1 + 2u)(‖w‖ + drift) + (2u + u²) |d| ‖x_i‖` (plus the absolute error of underflow),
/// with `‖w‖ ≤ w_bound`, which grows by `|d| ‖x_i‖`. The `f32` products are used only while
/// `(dim/64 + 8) u (w_bound + drift) x_norm_max + drift · x_norm_max ≤ eps / 64`, so the
/// stopping test `PG_max − PG_min ≤ eps` and the shrinking decisions are off by at most
/// `eps / 32`; past that the solver syncs `w32` to `w` rounded, or (tight tolerances, very
/// large weights) uses the `f64` products. `w` itself is always updated in `f64`.
#[derive(Clone, Copy, Debug)]
struct F32Budget {
    /// `(dim/64 + 8) · u`.
    terms_unit: f64,
    x_norm_max: f64,
    /// `eps / 64`.
    limit: f64,
    /// Per update: `√dim · 2⁻¹²⁶`, more than the absolute error that subnormal products and
    /// sums can add.
    underflow: f64,
}

impl F32Budget {
    fn new(dim: usize, x_norm_max: f64, eps: f64) -> Self {
        let terms = (dim / DOT32_LANES + 8) as f64;
        F32Budget {
            terms_unit: terms * F32_UNIT,
            x_norm_max,
            limit: eps / 64.0,
            underflow: (dim as f64).sqrt() * f64::from(f32::MIN_POSITIVE),
        }
    }

    /// `(drift, w_bound)` after an update `w += d·x` with `|d| ‖x‖ ≤ step` (see above).
    #[inline(always)]
    fn after_update(&self, drift: f64, w_bound: f64, step: f64) -> (f64, f64) {
        let w_bound = w_bound + step;
        let drift = drift
            + F32_UNIT * (1.0 + 2.0 * F32_UNIT) * (w_bound + drift)
            + (2.0 * F32_UNIT + F32_UNIT * F32_UNIT) * step
            + self.underflow;
        (drift, w_bound)
    }

    /// Whether `w32` may stand in for `w` with `‖w‖ ≤ w_bound` and the drift `drift`.
    #[inline(always)]
    fn allows(&self, w_bound: f64, drift: f64) -> bool {
        self.terms_unit * (w_bound + drift) * self.x_norm_max + drift * self.x_norm_max
            <= self.limit
    }
}

/// Whether the `f32` products may stand in for the `f64` ones for weights `w` just rounded
/// to `f32` ([`F32Budget`] with no drift).
#[cfg(test)]
fn f32_dots_suffice(w: &[f64], x_norm_max: f64, eps: f64) -> bool {
    let w_norm = w.iter().map(|v| v * v).sum::<f64>().sqrt();
    F32Budget::new(w.len(), x_norm_max, eps).allows(w_norm, 0.0)
}

/// `⟨w, x⟩` of two `f32` vectors at `level`: products added into `f32` accumulator
/// `j mod 64` in order, the accumulators then summed pairwise in `f64`. Every level performs
/// the same roundings (multiply, then add: no fused multiply-add), so all give the same bits.
#[inline(always)]
fn dot_f32w(level: SimdLevel, w: &[f32], x: &[f32]) -> f64 {
    match level {
        // SAFETY: the solver runs at a level clamped to the CPU's features.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => unsafe { dot_f32w_avx512(w, x) },
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => unsafe { dot_f32w_avx2(w, x) },
        _ => dot_f32w_scalar(w, x),
    }
}

/// The reference definition of [`dot_f32w`].
#[inline(always)]
fn dot_f32w_scalar(w: &[f32], x: &[f32]) -> f64 {
    let mut acc = [0f32; DOT32_LANES];
    let wc = w.chunks_exact(DOT32_LANES);
    let xc = x.chunks_exact(DOT32_LANES);
    let (wt, xt) = (wc.remainder(), xc.remainder());
    for (a, b) in wc.zip(xc) {
        for k in 0..DOT32_LANES {
            acc[k] += a[k] * b[k];
        }
    }
    for (k, (&a, &b)) in wt.iter().zip(xt).enumerate() {
        acc[k] += a * b;
    }
    reduce(acc.map(f64::from))
}

/// [`dot_f32w`] at one vector width: `$vectors` accumulators of `$width` lanes, which together
/// hold the `DOT32_LANES` partial sums of the scalar definition in the same order.
macro_rules! dot_f32w_level {
    ($name:ident, $feature:literal, $width:literal, $vectors:literal,
     $zero:ident, $load:ident, $mul:ident, $add:ident, $store:ident) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feature)]
        unsafe fn $name(w: &[f32], x: &[f32]) -> f64 {
            use std::arch::x86_64::*;
            let n = w.len().min(x.len());
            let whole = n - n % DOT32_LANES;
            let mut acc = [0f32; DOT32_LANES];
            // SAFETY: every load reads `DOT32_LANES` elements below `whole ≤ n` of both slices.
            unsafe {
                let (wp, xp) = (w.as_ptr(), x.as_ptr());
                let mut a = [$zero(); $vectors];
                let mut j = 0;
                while j < whole {
                    for (r, acc_r) in a.iter_mut().enumerate() {
                        let o = j + $width * r;
                        let prod = $mul($load(wp.add(o)), $load(xp.add(o)));
                        *acc_r = $add(*acc_r, prod);
                    }
                    j += DOT32_LANES;
                }
                for (r, v) in a.iter().enumerate() {
                    $store(acc.as_mut_ptr().add($width * r), *v);
                }
            }
            for (k, j) in (whole..n).enumerate() {
                acc[k] += w[j] * x[j];
            }
            reduce(acc.map(f64::from))
        }
    };
}

dot_f32w_level!(
    dot_f32w_avx512,
    "avx512f",
    16,
    4,
    _mm512_setzero_ps,
    _mm512_loadu_ps,
    _mm512_mul_ps,
    _mm512_add_ps,
    _mm512_storeu_ps
);
dot_f32w_level!(
    dot_f32w_avx2,
    "avx2",
    8,
    8,
    _mm256_setzero_ps,
    _mm256_loadu_ps,
    _mm256_mul_ps,
    _mm256_add_ps,
    _mm256_storeu_ps
);

/// Most `fast` inner products [`dots_f32w_fused_avx512`] computes in one pass over a row:
/// four accumulators per task, plus the row's four vectors, fit the 32 AVX-512 registers.
const FUSED_TASKS: usize = 4;

/// [`dot_f32w`] of each weight vector of `ws` (at most [`FUSED_TASKS`], all as long as `x`)
/// with `x`, into `out`, reading `x` once; each result has the bits of [`dot_f32w_avx512`].
/// Prefetches `next` (any length up to `x`'s, possibly empty) a few lines per step, ahead of
/// its use by the next call.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dots_f32w_fused_avx512(ws: &[&[f32]], x: &[f32], next: &[f32], out: &mut [f64]) {
    match ws.len() {
        0 => kernels::prefetch(next),
        // SAFETY (all arms): same preconditions, checked by the callee.
        1 => unsafe { dots_f32w_fused_n::<1>(ws, x, next, out) },
        2 => unsafe { dots_f32w_fused_n::<2>(ws, x, next, out) },
        3 => unsafe { dots_f32w_fused_n::<3>(ws, x, next, out) },
        _ => unsafe { dots_f32w_fused_n::<4>(ws, x, next, out) },
    }
}

/// [`dots_f32w_fused_avx512`] for exactly `M` weight vectors.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dots_f32w_fused_n<const M: usize>(
    ws: &[&[f32]],
    x: &[f32],
    next: &[f32],
    out: &mut [f64],
) {
    use std::arch::x86_64::*;
    assert!(ws.len() >= M && out.len() >= M);
    let n = x.len();
    assert!(ws[..M].iter().all(|w| w.len() == n) && next.len() <= n);
    let whole = n - n % DOT32_LANES;
    let mut accs = [[0f32; DOT32_LANES]; M];
    // SAFETY: every load reads `DOT32_LANES` elements below `whole ≤ n` of `x` and of each
    // `ws[t]` (all of length `n`); prefetches are hints that never fault, issued only for
    // addresses inside `next`.
    unsafe {
        let xp = x.as_ptr();
        let wp: [*const f32; M] = std::array::from_fn(|t| ws[t].as_ptr());
        let mut a = [[_mm512_setzero_ps(); 4]; M];
        let mut j = 0;
        while j < whole {
            // Those of the four cache lines of `next` at this offset that start inside it.
            for line in (j..(j + DOT32_LANES).min(next.len())).step_by(16) {
                _mm_prefetch::<_MM_HINT_T0>(next.as_ptr().add(line).cast());
            }
            let xv = [
                _mm512_loadu_ps(xp.add(j)),
                _mm512_loadu_ps(xp.add(j + 16)),
                _mm512_loadu_ps(xp.add(j + 32)),
                _mm512_loadu_ps(xp.add(j + 48)),
            ];
            for (acc_t, &w) in a.iter_mut().zip(&wp) {
                for (r, (acc, &xr)) in acc_t.iter_mut().zip(&xv).enumerate() {
                    let prod = _mm512_mul_ps(_mm512_loadu_ps(w.add(j + 16 * r)), xr);
                    *acc = _mm512_add_ps(*acc, prod);
                }
            }
            j += DOT32_LANES;
        }
        for (acc, vectors) in accs.iter_mut().zip(&a) {
            for (r, v) in vectors.iter().enumerate() {
                _mm512_storeu_ps(acc.as_mut_ptr().add(16 * r), *v);
            }
        }
    }
    if whole < next.len() {
        kernels::prefetch(&next[whole..]);
    }
    for ((acc, w), o) in accs.iter_mut().zip(ws).zip(out.iter_mut()) {
        for (k, j) in (whole..n).enumerate() {
            acc[k] += w[j] * x[j];
        }
        *o = reduce(acc.map(f64::from));
    }
}

/// `⟨w, x⟩` of two `f32` vectors, accumulated in `f64`.
#[inline(always)]
fn dot_f32(w: &[f32], x: &[f32]) -> f64 {
    let mut acc = [0f64; LANES];
    let wc = w.chunks_exact(LANES);
    let xc = x.chunks_exact(LANES);
    let (wt, xt) = (wc.remainder(), xc.remainder());
    for (a, b) in wc.zip(xc) {
        for k in 0..LANES {
            acc[k] += f64::from(a[k]) * f64::from(b[k]);
        }
    }
    for (k, (&a, &b)) in wt.iter().zip(xt).enumerate() {
        acc[k] += f64::from(a) * f64::from(b);
    }
    reduce(acc)
}

/// `‖x‖²` accumulated in `f64`.
#[inline(always)]
fn sq_norm(x: &[f32]) -> f64 {
    dot_f32(x, x)
}

/// Pairwise sum of the accumulators.
#[inline(always)]
fn reduce<const L: usize>(acc: [f64; L]) -> f64 {
    crate::kernels::pairwise_sum(acc)
}

/// `w += d · x`.
#[inline(always)]
fn axpy(d: f64, x: &[f32], w: &mut [f64]) {
    for (wi, &xi) in w.iter_mut().zip(x) {
        *wi += d * f64::from(xi);
    }
}

/// `w32 += d32 · x` in `f32` (multiply, then add, each rounded: no fused multiply-add, so
/// every level gives the same bits).
#[inline(always)]
fn axpy_f32(d32: f32, x: &[f32], w32: &mut [f32]) {
    for (w32i, &xi) in w32.iter_mut().zip(x) {
        *w32i += d32 * xi;
    }
}

/// Updates of `w` that wait for one another ([`State::pending`]): enough to read and write
/// `w` once per this many updates instead of once per update (at Fisher-vector sizes `w` is
/// larger than the first-level cache, and updating it in place cost more than the rest of a
/// coordinate step), few enough that their rows are still in the core's cache when applied.
const PENDING_ROWS: usize = 8;

/// Applies the pending updates of `w` ([`State::pending`]).
#[inline(always)]
fn settle(level: SimdLevel, s: &mut State, x: &[f32]) {
    if !s.pending.is_empty() {
        add_rows(level, x, s.w.len(), &s.pending, &mut s.w);
        s.pending.clear();
    }
}

/// `w += d · x_i` for each `(i, d)` of `updates` in turn (`x_i` the rows of `x`, `dim` wide):
/// every element of `w` gets the same operations in the same order as from [`axpy`] called
/// once per update, so the same bits, but `w` is read and written once.
#[inline(always)]
fn add_rows(level: SimdLevel, x: &[f32], dim: usize, updates: &[(usize, f64)], w: &mut [f64]) {
    debug_assert_eq!(w.len(), dim);
    match level {
        // SAFETY: the solver runs at a level clamped to the CPU's features.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => unsafe { add_rows_avx512(x, dim, updates, w) },
        _ => add_rows_chunked(x, dim, updates, w),
    }
}

/// [`add_rows`] a chunk of `w` at a time (kept in the first-level cache).
#[inline(always)]
fn add_rows_chunked(x: &[f32], dim: usize, updates: &[(usize, f64)], w: &mut [f64]) {
    const CHUNK: usize = 256;
    for (c, wc) in w.chunks_mut(CHUNK).enumerate() {
        let offset = c * CHUNK;
        for &(i, d) in updates {
            let xc = &x[i * dim + offset..i * dim + offset + wc.len()];
            axpy(d, xc, wc);
        }
    }
}

/// [`add_rows`] 64 weights at a time, held in eight registers over all updates.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn add_rows_avx512(x: &[f32], dim: usize, updates: &[(usize, f64)], w: &mut [f64]) {
    use std::arch::x86_64::*;
    const WIDTH: usize = 64;
    let whole = dim - dim % WIDTH;
    assert!(w.len() >= dim && updates.iter().all(|&(i, _)| (i + 1) * dim <= x.len()));
    // SAFETY: the loads read `w[j..j + 64]` and `x_i[j..j + 64]` with `j + 64 ≤ whole ≤ dim`,
    // within `w` and row `i` of `x` (checked above).
    unsafe {
        let (wp, xp) = (w.as_mut_ptr(), x.as_ptr());
        let mut j = 0;
        while j < whole {
            let mut acc: [__m512d; 8] = std::array::from_fn(|r| _mm512_loadu_pd(wp.add(j + 8 * r)));
            for &(i, d) in updates {
                let dv = _mm512_set1_pd(d);
                let row = xp.add(i * dim + j);
                for (r, a) in acc.iter_mut().enumerate() {
                    let xv = _mm512_cvtps_pd(_mm256_loadu_ps(row.add(8 * r)));
                    *a = _mm512_add_pd(*a, _mm512_mul_pd(dv, xv));
                }
            }
            for (r, a) in acc.iter().enumerate() {
                _mm512_storeu_pd(wp.add(j + 8 * r), *a);
            }
            j += WIDTH;
        }
    }
    if whole < dim {
        for &(i, d) in updates {
            axpy(d, &x[i * dim + whole..(i + 1) * dim], &mut w[whole..dim]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_simd_level_gives_the_same_solution() {
        let (n, dim) = (60, 37);
        let x: Vec<f32> = (0..n * dim)
            .map(|i| ((i * 7919 % 101) as f32 / 50.0 - 1.0) * 0.3)
            .collect();
        let y: Vec<f32> = (0..n)
            .map(|i| if (i * 31 % 7) < 3 { 1.0 } else { -1.0 })
            .collect();
        let cost = vec![2.0; n];
        let params = SvmParams::default();
        let run = |level| {
            let task = Task {
                id: 0,
                y: &y,
                cost: &cost,
                alpha: vec![0.0; n],
                start: None,
            };
            let run = Run {
                seed: 3,
                stop: None,
                solo_bytes: SOLO_BYTES,
            };
            solve_at(level, &x, dim, vec![task], &params, &run)
                .into_models()
                .unwrap()
                .remove(0)
        };
        let reference = run(SimdLevel::Scalar);
        assert!(reference.alpha.iter().any(|&a| a > 0.0));
        // At this tolerance the epochs use the f32 inner products (and their twins).
        let w: Vec<f64> = reference.w.iter().map(|&v| f64::from(v)).collect();
        let x_norm_max = x.chunks_exact(dim).map(sq_norm).fold(0f64, f64::max).sqrt();
        assert!(f32_dots_suffice(&w, x_norm_max, params.eps));
        for level in SimdLevel::available() {
            assert_eq!(run(level), reference, "level {}", level.name());
        }
    }

    #[test]
    fn dot_matches_naive_sum() {
        let w: Vec<f64> = (0..37).map(|i| (i as f64 * 0.37).sin()).collect();
        let x: Vec<f32> = (0..37).map(|i| (i as f32 * 0.11).cos()).collect();
        let naive: f64 = w.iter().zip(&x).map(|(a, &b)| a * f64::from(b)).sum();
        for level in SimdLevel::available() {
            assert!((dot_f64(level, &w, &x) - naive).abs() < 1e-12);
        }
        // Bit-identical at every level, including a tail after whole blocks of 32.
        let w: Vec<f64> = (0..1091).map(|i| (i as f64 * 0.37).sin()).collect();
        let x: Vec<f32> = (0..1091).map(|i| (i as f32 * 0.11).cos()).collect();
        let reference = dot_f64_scalar(&w, &x);
        for level in SimdLevel::available() {
            assert_eq!(dot_f64(level, &w, &x).to_bits(), reference.to_bits());
        }
        let wf: Vec<f32> = w.iter().map(|&v| v as f32).collect();
        let naive: f64 = wf
            .iter()
            .zip(&x)
            .map(|(&a, &b)| f64::from(a) * f64::from(b))
            .sum();
        assert!((dot_f32(&wf, &x) - naive).abs() < 1e-12);
        // The f32 products: bit-identical at every level (1091 = 17 blocks of 64 and a tail).
        let reference = dot_f32w_scalar(&wf, &x);
        for level in SimdLevel::available() {
            assert_eq!(dot_f32w(level, &wf, &x).to_bits(), reference.to_bits());
        }
    }

    /// The block-wise products of the hinge-loss pass give the bits of [`dot_f64_scalar`] row
    /// by row at every level: widths with and without a tail after blocks of 32, within one
    /// 512-weight chunk and across several, and blocks of 1 to [`LOSS_ROWS`] rows.
    #[test]
    fn row_block_products_match_single_ones() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        for dim in [1usize, 31, 32, 100, 512, 1091, 4352] {
            let n = LOSS_ROWS + 3;
            let x: Vec<f32> = (0..n * dim).map(|_| rng.random::<f32>() - 0.5).collect();
            let w: Vec<f64> = (0..dim)
                .map(|_| rng.random::<f64>() * 20.0 - 10.0)
                .collect();
            let single: Vec<u64> = x
                .chunks_exact(dim)
                .map(|xi| dot_f64_scalar(&w, xi).to_bits())
                .collect();
            for level in SimdLevel::available() {
                for (first, rows) in [(0, LOSS_ROWS), (3, LOSS_ROWS), (n - 1, 1), (2, 5)] {
                    let mut out = vec![f64::NAN; rows];
                    dot_f64_rows(level, &w, &x, first, &mut out);
                    let bits: Vec<u64> = out.iter().map(|v| v.to_bits()).collect();
                    assert_eq!(
                        bits,
                        single[first..first + rows],
                        "dim {dim}, rows {first}+{rows}, level {}",
                        level.name()
                    );
                }
            }
        }
    }

    /// The fused products give the bits of [`dot_f32w`] for every task count up to
    /// [`FUSED_TASKS`], for lengths with and without whole blocks of 64 and tails, with a
    /// next row of any length to prefetch; [`inner_products`] mixes them with the `f64` ones.
    #[test]
    fn fused_products_match_single_ones() {
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        for len in [1, 15, 63, 64, 65, 130, 1091] {
            let x: Vec<f32> = (0..len).map(|_| rng.random::<f32>() - 0.5).collect();
            let ws: Vec<Vec<f32>> = (0..FUSED_TASKS)
                .map(|_| (0..len).map(|_| rng.random::<f32>() * 4.0 - 2.0).collect())
                .collect();
            let single: Vec<u64> = ws
                .iter()
                .map(|w| dot_f32w_scalar(w, &x).to_bits())
                .collect();
            for m in 0..=FUSED_TASKS {
                for next_len in [0, 1, len / 2, len] {
                    let next = vec![1f32; next_len];
                    let refs: Vec<&[f32]> = ws[..m].iter().map(|w| &w[..]).collect();
                    let mut out = [f64::NAN; FUSED_TASKS];
                    #[cfg(target_arch = "x86_64")]
                    if SimdLevel::detect() == SimdLevel::Avx512 {
                        // SAFETY: the CPU reported AVX-512F.
                        unsafe { dots_f32w_fused_avx512(&refs, &x, &next, &mut out) };
                        let got: Vec<u64> = out[..m].iter().map(|v| v.to_bits()).collect();
                        assert_eq!(got, single[..m], "len {len}, {m} tasks, next {next_len}");
                    }
                }
            }
        }
        // Through `inner_products`, at every level: six tasks (a full fused group and a
        // partial one), two of them on the f64 products.
        let (n, dim) = (4, 1091);
        let x: Vec<f32> = (0..n * dim).map(|_| rng.random::<f32>() - 0.5).collect();
        let y = vec![1f32; n];
        let cost = vec![1f64; n];
        let tasks: Vec<Task> = (0..6)
            .map(|t| Task {
                id: t,
                y: &y,
                cost: &cost,
                alpha: vec![0.0; n],
                start: None,
            })
            .collect();
        let mut states: Vec<State> = tasks
            .into_iter()
            .map(|t| State {
                y: t.y,
                cost: t.cost,
                sum_alpha: 0.0,
                alpha: t.alpha,
                w: (0..dim).map(|_| rng.random::<f64>() - 0.5).collect(),
                w32: Vec::new(),
                fast: t.id % 3 != 1,
                drift: 0.0,
                w_bound: 0.0,
                budget: F32Budget::new(dim, 1.0, 1.0),
                pending: Vec::new(),
                wb: 0.0,
                active: vec![true; n],
                n_active: n,
                pg_max_old: 0.0,
                pg_min_old: 0.0,
                pg_max_new: 0.0,
                pg_min_new: 0.0,
                iterations: 0,
                running: true,
                waiting: false,
                converged: false,
                rng: ChaCha8Rng::seed_from_u64(t.id),
            })
            .collect();
        for s in &mut states {
            s.w32 = s.w.iter().map(|&v| v as f32).collect();
        }
        let order = [5, 0, 1, 3, 4, 2];
        let (row, next) = (&x[dim..2 * dim], &x[2 * dim..3 * dim]);
        let expected: Vec<u64> = order
            .iter()
            .map(|&t| {
                let s = &states[t];
                let v = if s.fast {
                    dot_f32w_scalar(&s.w32, row)
                } else {
                    dot_f64_scalar(&s.w, row)
                };
                v.to_bits()
            })
            .collect();
        for level in SimdLevel::available() {
            let mut out = Vec::new();
            inner_products(level, &states, &order, row, next, &mut out);
            let got: Vec<u64> = out.iter().map(|v| v.to_bits()).collect();
            assert_eq!(got, expected, "level {}", level.name());
        }
    }

    /// The rounding bound that [`f32_dots_suffice`] relies on holds for the f32 products of an
    /// f64 `w`, and decides as documented.
    #[test]
    fn f32_products_stay_within_their_bound() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for dim in [7, 64, 1104, 4099] {
            for _ in 0..20 {
                let w: Vec<f64> = (0..dim).map(|_| rng.random::<f64>() * 4.0 - 2.0).collect();
                let x: Vec<f32> = (0..dim).map(|_| rng.random::<f32>() - 0.5).collect();
                let w32: Vec<f32> = w.iter().map(|&v| v as f32).collect();
                let exact: f64 = w.iter().zip(&x).map(|(a, &b)| a * f64::from(b)).sum();
                let w_norm = w.iter().map(|v| v * v).sum::<f64>().sqrt();
                let x_norm = sq_norm(&x).sqrt();
                let bound = (dim / DOT32_LANES + 8) as f64
                    * f64::from(f32::EPSILON)
                    * 0.5
                    * w_norm
                    * x_norm;
                let err = (dot_f32w(SimdLevel::detect(), &w32, &x) - exact).abs();
                assert!(err <= bound, "dim {dim}: error {err:e} > bound {bound:e}");
                // Used exactly when the bound is at most eps / 64.
                assert!(f32_dots_suffice(&w, x_norm, 64.0 * bound));
                assert!(!f32_dots_suffice(&w, x_norm, 63.0 * bound));
            }
        }
        // The deep trainer's case (K = 16, D = 34, ‖w‖ ≈ 20, unit-norm vectors, eps 0.05) uses
        // them; liblinear-style tight tolerances do not.
        let w = vec![20.0 / (1104f64).sqrt(); 1104];
        assert!(f32_dots_suffice(&w, 1.0, 0.05));
        assert!(!f32_dots_suffice(&w, 1.0, 1e-4));
    }

    /// Deferred updates applied together give every level the bits of one [`axpy`] per
    /// update in order: widths below, at and past the 64 weights of the AVX-512 block, rows
    /// repeated, and signs and magnitudes that make the order of the additions matter.
    #[test]
    fn add_rows_gives_the_bits_of_one_axpy_per_update() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for dim in [1usize, 37, 64, 200, 4352] {
            let n = 9;
            let x: Vec<f32> = (0..n * dim).map(|_| rng.random::<f32>() - 0.5).collect();
            let start: Vec<f64> = (0..dim).map(|_| rng.random::<f64>() * 1e3).collect();
            let updates: Vec<(usize, f64)> = (0..PENDING_ROWS + 3)
                .map(|u| {
                    let scale = [1e-9, 1.0, 1e6][u % 3];
                    (u * 5 % n, scale * (rng.random::<f64>() - 0.5))
                })
                .collect();
            let mut reference = start.clone();
            for &(i, d) in &updates {
                axpy(d, &x[i * dim..(i + 1) * dim], &mut reference);
            }
            let mut reassociated = start.clone();
            for j in 0..dim {
                let sum: f64 = updates
                    .iter()
                    .map(|&(i, d)| d * f64::from(x[i * dim + j]))
                    .sum();
                reassociated[j] += sum;
            }
            // With a few dozen weights some are bound to round differently in another order.
            if dim >= 37 {
                assert_ne!(reassociated, reference, "dim {dim}: the order must matter");
            }
            for level in SimdLevel::available() {
                let mut w = start.clone();
                add_rows(level, &x, dim, &updates, &mut w);
                assert_eq!(w, reference, "dim {dim}, level {}", level.name());
                let mut w = start.clone();
                add_rows(level, &x, dim, &[], &mut w);
                assert_eq!(w, start);
            }
        }
    }

    /// The drift that [`F32Budget::after_update`] tracks bounds how far the `f32` updates of
    /// [`axpy_f32`] move `w32` from `w` rounded at the sync, and the products from the
    /// drifted `w32` stay within the bound that [`F32Budget::allows`] tests. Small steps on a
    /// large `w` (the rounding of the sums dominates), then large steps (the products').
    #[test]
    fn f32_updates_stay_within_their_drift_bound() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for (dim, scale) in [(64usize, 1e-3), (1104, 1e-3), (4352, 1e-2), (4352, 1.0)] {
            let rows: Vec<f32> = (0..50 * dim).map(|_| rng.random::<f32>() - 0.5).collect();
            let mut w: Vec<f64> = (0..dim).map(|_| rng.random::<f64>() * 2.0 - 1.0).collect();
            let synced: Vec<f64> = w.clone();
            let mut w32: Vec<f32> = w.iter().map(|&v| v as f32).collect();
            let rounding: Vec<f64> = w32.iter().zip(&w).map(|(&a, b)| f64::from(a) - b).collect();
            let budget = F32Budget::new(dim, 1.0, 1.0);
            let mut drift = 0.0;
            let mut w_bound = w.iter().map(|v| v * v).sum::<f64>().sqrt();
            for t in 0..3000 {
                let x = &rows[(t % 50) * dim..][..dim];
                let d = scale * (rng.random::<f64>() * 2.0 - 1.0);
                axpy(d, x, &mut w);
                axpy_f32(d as f32, x, &mut w32);
                (drift, w_bound) = budget.after_update(drift, w_bound, d.abs() * sq_norm(x).sqrt());
            }
            // ‖(w32 − w) − (rounding at the sync)‖ ≤ drift, and ‖w‖ ≤ w_bound.
            let moved = w32
                .iter()
                .zip(&w)
                .zip(&rounding)
                .map(|((&a, b), r)| (f64::from(a) - b - r).powi(2))
                .sum::<f64>()
                .sqrt();
            assert!(
                moved <= drift,
                "dim {dim}: moved {moved:e} > drift {drift:e}"
            );
            assert!(moved > 0.0, "dim {dim}: the updates were rounded");
            assert!(w.iter().map(|v| v * v).sum::<f64>().sqrt() <= w_bound);
            assert!(w != synced);
            // The products: |⟨w32, x⟩ − ⟨w, x⟩| within the bound `allows` tests.
            let terms = (dim / DOT32_LANES + 8) as f64;
            for x in rows.chunks_exact(dim).take(10) {
                let exact: f64 = w.iter().zip(x).map(|(a, &b)| a * f64::from(b)).sum();
                let x_norm = sq_norm(x).sqrt();
                let bound = terms * F32_UNIT * (w_bound + drift) * x_norm + drift * x_norm;
                let err = (dot_f32w(SimdLevel::detect(), &w32, x) - exact).abs();
                assert!(err <= bound, "dim {dim}: error {err:e} > bound {bound:e}");
            }
        }
    }

    /// `n × dim` features and `classes` noisy labels (a quarter of them random), so that no
    /// class is separable and the duals are not trivial.
    fn noisy_classes(n: usize, dim: usize, classes: usize, seed: u64) -> (Vec<f32>, Labels) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut x = Vec::with_capacity(n * dim);
        let mut labels = Vec::with_capacity(n);
        for i in 0..n {
            let c = i % classes;
            x.extend((0..dim).map(|j| {
                let centre = if j % classes == c { 0.5 } else { 0.0 };
                centre + rng.random::<f32>() - 0.5
            }));
            labels.push(if rng.random::<f64>() < 0.25 {
                rng.random_range(0..classes)
            } else {
                c
            });
        }
        (x, Labels::MultiClass { labels, classes })
    }

    /// `Σ_c D_c(α_c)` computed directly from its definition (`w̃ = Σ α_i y_i [x_i; bias]`).
    fn dual_sum(x: &[f32], dim: usize, labels: &Labels, alphas: &[Vec<f64>], bias: f64) -> f64 {
        let mut total = 0.0;
        for (c, alpha) in alphas.iter().enumerate() {
            let y = labels.binary(c);
            let mut w = vec![0f64; dim + 1];
            for (i, &a) in alpha.iter().enumerate() {
                for (wj, &xj) in w.iter_mut().zip(&x[i * dim..(i + 1) * dim]) {
                    *wj += a * f64::from(y[i]) * f64::from(xj);
                }
                w[dim] += a * f64::from(y[i]) * bias;
            }
            total += alpha.iter().sum::<f64>() - 0.5 * w.iter().map(|v| v * v).sum::<f64>();
        }
        total
    }

    /// Running the shrunk phases alone or in the group are two orders of liblinear's
    /// epochs: both meet the stopping rule, so both reach the optimum within the tolerance
    /// (checked against a much tighter solve). With the default size the small problem's
    /// tasks run alone as soon as shrinking starts.
    #[test]
    fn tasks_alone_or_in_the_group_reach_the_same_optimum() {
        let (n, dim, classes) = (300, 24, 4);
        let (x, labels) = noisy_classes(n, dim, classes, 33);
        let solve_with = |solo_bytes: usize, eps: f64| {
            let params = SvmParams {
                c: 2.0,
                eps,
                max_iter: 100_000,
                ..SvmParams::default()
            };
            let ys: Vec<Vec<f32>> = (0..classes).map(|c| labels.binary(c)).collect();
            let cost = vec![2f64; n];
            let tasks: Vec<Task> = ys
                .iter()
                .enumerate()
                .map(|(c, y)| Task {
                    id: c as u64,
                    y,
                    cost: &cost,
                    alpha: vec![0.0; n],
                    start: None,
                })
                .collect();
            let run = Run {
                seed: 4,
                stop: None,
                solo_bytes,
            };
            solve(&x, dim, tasks, &params, &run).into_models().unwrap()
        };
        let tight = solve_with(0, 1e-6);
        let group = solve_with(0, 0.01);
        let alone = solve_with(usize::MAX, 0.01);
        let default = solve_with(SOLO_BYTES, 0.01);
        assert_eq!(default, alone);
        assert_ne!(group, alone, "the two schedules took the same path");
        for c in 0..classes {
            // The tight solve brackets the optimum between its dual and primal values.
            let (low, high) = (tight[c].dual, tight[c].primal);
            assert!(
                high - low <= 1e-5 * high,
                "class {c}: {low} .. {high}, {} epochs",
                tight[c].iterations
            );
            for (what, m) in [("group", &group[c]), ("alone", &alone[c])] {
                assert!(m.iterations > 1, "{what}, class {c}");
                // Weak duality: each side stays on its side of the optimum ...
                assert!(m.dual <= high && m.primal >= low, "{what}, class {c}");
                // ... and eps 0.01 keeps both close to it.
                let (primal_err, dual_err) = ((m.primal - low) / low, (high - m.dual) / high);
                assert!(
                    primal_err < 1e-3 && dual_err < 1e-3,
                    "{what}, class {c}: {primal_err:e}, {dual_err:e}"
                );
            }
        }
    }

    /// The early stop of [`train_one_vs_rest_below`]: its bound never exceeds the objective
    /// of the full solve (nor the optimum, approached by a much tighter solve), it stops
    /// whenever the threshold is below the dual value the full solve reaches, never when the
    /// threshold is at or above the full solve's objective (the result is then that of
    /// [`train_one_vs_rest`], bit for bit), and the duals it stops with are feasible.
    #[test]
    fn dual_bound_stops_exactly_when_the_objective_must_exceed_the_threshold() {
        let (n, dim, classes) = (160, 20, 3);
        let (x, labels) = noisy_classes(n, dim, classes, 21);
        let params = SvmParams {
            c: 2.0,
            eps: 0.05,
            ..SvmParams::default()
        };
        let uniform = ClassWeighting::Uniform;
        // One thread: the three classes form one group.
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let below = |thr: f64, warm: Option<&OneVsRest>| {
            one.install(|| {
                train_one_vs_rest_below(&x, n, dim, &labels, &params, uniform, warm, thr).unwrap()
            })
        };
        let full = one
            .install(|| train_one_vs_rest(&x, n, dim, &labels, &params, uniform, None))
            .unwrap();
        let primal = full.objective();
        let dual: f64 = full.models.iter().map(|m| m.dual).sum();
        let tight = SvmParams {
            eps: 1e-7,
            max_iter: 100_000,
            ..params
        };
        let optimum = train_one_vs_rest(&x, n, dim, &labels, &tight, uniform, None)
            .unwrap()
            .objective();
        // The loose solve leaves a real gap, so the thresholds below are distinct cases.
        assert!(primal - dual > 1e-3 * primal, "gap {}", primal - dual);
        assert!(optimum <= primal && optimum > dual);
        for thr in [primal, primal + 1.0, f64::INFINITY] {
            assert_eq!(below(thr, None), OneVsRestOutcome::Solved(full.clone()));
        }
        let mut stops = 0;
        for k in 0..=20 {
            // From far below the final dual to the final primal.
            let thr = dual - 0.5 * dual + (primal - dual + 0.5 * dual) * f64::from(k) / 20.0;
            match below(thr, None) {
                OneVsRestOutcome::Exceeded { bound, alphas } => {
                    stops += 1;
                    assert!(bound > thr && bound <= optimum, "thr {thr}: bound {bound}");
                    // The bound is the duals' value less the rounding margin.
                    let direct = dual_sum(&x, dim, &labels, &alphas, 1.0);
                    assert!(
                        bound < direct && direct - bound < 1e-5 * direct,
                        "{bound} {direct}"
                    );
                    for a in alphas.iter().flatten() {
                        assert!((0.0..=params.c).contains(a));
                    }
                }
                OneVsRestOutcome::Solved(m) => {
                    assert_eq!(m, full);
                    assert!(thr >= dual - 1e-9 * dual, "no stop at {thr} < dual {dual}");
                }
            }
        }
        assert!(stops >= 10, "{stops} stops");
        // −∞: stopped at the start (here the cold start, whose dual is 0).
        let OneVsRestOutcome::Exceeded { bound, alphas } = below(f64::NEG_INFINITY, None) else {
            panic!("no stop at −∞")
        };
        assert!(bound.abs() < 1e-12 && alphas.iter().flatten().all(|&a| a == 0.0));
        assert!(matches!(
            train_one_vs_rest_below(&x, n, dim, &labels, &params, uniform, None, f64::NAN),
            Err(Error::InvalidParameter { .. })
        ));

        // Several groups (a 2-thread pool: two groups), warm-started from the solution of
        // slightly different features: each group counts the other group's classes at their
        // warm start, so a threshold just below the warm start's dual value stops every group
        // at once, while either group alone is far below it. Deterministic.
        let shifted: Vec<f32> = x.iter().map(|v| v * 1.05).collect();
        let warm = train_one_vs_rest(&shifted, n, dim, &labels, &params, uniform, None).unwrap();
        let warm_alphas: Vec<Vec<f64>> = warm.models.iter().map(|m| m.alpha.clone()).collect();
        let start = dual_sum(&x, dim, &labels, &warm_alphas, 1.0);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        assert_eq!(pool.install(|| class_groups(classes, dim, 2)).len(), 2);
        let run = |thr: f64| {
            pool.install(|| {
                train_one_vs_rest_below(&x, n, dim, &labels, &params, uniform, Some(&warm), thr)
                    .unwrap()
            })
        };
        let thr = start - 1e-3 * start;
        let stopped = run(thr);
        let OneVsRestOutcome::Exceeded { bound, alphas } = &stopped else {
            panic!("no stop below the warm start's dual")
        };
        assert!(*bound > thr && *bound <= optimum);
        assert_eq!(alphas, &warm_alphas);
        assert_eq!(run(thr), stopped);
        let solved = pool.install(|| {
            train_one_vs_rest(&x, n, dim, &labels, &params, uniform, Some(&warm)).unwrap()
        });
        assert_eq!(run(solved.objective()), OneVsRestOutcome::Solved(solved));
    }

    #[test]
    fn overflowing_scores_are_an_error() {
        let (n, dim) = (3, 4);
        let x: Vec<f32> = vec![1.0; n * dim];
        let model = |w: f32| OneVsRest {
            classes: 2,
            dim,
            multilabel: false,
            models: (0..2)
                .map(|_| BinarySvm {
                    w: vec![w; dim],
                    b: 0.0,
                    alpha: vec![],
                    primal: 0.0,
                    dual: 0.0,
                    iterations: 0,
                })
                .collect(),
        };
        // Finite weights whose products sum past f32::MAX.
        let err = model(3e38).try_scores(&x, n).unwrap_err().to_string();
        assert!(
            err.contains("sample 0") && err.contains("overflows"),
            "{err}"
        );
        assert_eq!(model(1e30).try_scores(&x, n).unwrap()[0], 4e30);
    }

    #[test]
    fn labels_binary_and_counts() {
        let l = Labels::MultiClass {
            labels: vec![0, 2, 1, 2],
            classes: 3,
        };
        assert_eq!(l.binary(2), vec![-1.0, 1.0, -1.0, 1.0]);
        assert_eq!(l.positives_per_class(), vec![1, 1, 2]);
        let m = Labels::MultiLabel {
            targets: vec![true, false, true, true, false, false],
            classes: 2,
        };
        assert_eq!(m.n(), 3);
        assert_eq!(m.binary(1), vec![-1.0, 1.0, -1.0]);
        assert_eq!(m.positives_per_class(), vec![2, 1]);
    }

    #[test]
    fn balanced_costs() {
        let l = Labels::MultiClass {
            labels: vec![0, 1, 1, 1],
            classes: 2,
        };
        let c = ClassWeighting::Balanced.costs(2.0, &l);
        assert_eq!(c[0].positive, 2.0 * 4.0 / 2.0);
        assert_eq!(c[0].negative, 2.0 * 4.0 / 6.0);
        assert_eq!(ClassWeighting::Uniform.costs(2.0, &l)[1].positive, 2.0);
    }
}
