//! Diagonal-covariance Gaussian mixture model: the parameter struct shared by every stage, and
//! (below) fitting by EM.
//!
//! Layout: `means` and `variances` are `K × D` row-major (component `k` at `[k*D..(k+1)*D]`),
//! `weights` has `K` entries summing to one — VLFeat's layout.

use serde::{Deserialize, Serialize};

use crate::error::{all_finite, check_finite, Error, Result};

/// A diagonal-covariance GMM with `k` components in `d` dimensions. Deserialised values are
/// checked as [`Gmm::from_normalised`] checks them (a GMM is never built unchecked).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "GmmFields")]
pub struct Gmm {
    k: usize,
    d: usize,
    means: Vec<f32>,
    variances: Vec<f32>,
    weights: Vec<f32>,
}

/// The fields of a serialised [`Gmm`], checked on the way in.
#[derive(Deserialize)]
struct GmmFields {
    k: usize,
    d: usize,
    means: Vec<f32>,
    variances: Vec<f32>,
    weights: Vec<f32>,
}

impl TryFrom<GmmFields> for Gmm {
    type Error = Error;
    fn try_from(f: GmmFields) -> Result<Self> {
        Gmm::from_normalised(f.k, f.d, f.means, f.variances, f.weights)
    }
}

impl Gmm {
    /// [`Gmm::new`] for weights that already sum to one (within 1e-5, as saved weights do
    /// after their f32 roundings), kept exactly as given instead of renormalised: restores a
    /// saved GMM bit for bit. Other sums are an error.
    pub fn from_normalised(
        k: usize,
        d: usize,
        means: Vec<f32>,
        variances: Vec<f32>,
        weights: Vec<f32>,
    ) -> Result<Self> {
        let checked = Gmm::new(k, d, means, variances, weights.clone())?;
        let sum: f64 = weights.iter().map(|&w| f64::from(w)).sum();
        if (sum - 1.0).abs() > 1e-5 {
            return Err(Error::Invalid(format!(
                "GMM weights sum to {}: expected 1 (within 1e-5)",
                sum as f32
            )));
        }
        Ok(Self { weights, ..checked })
    }

    /// Builds a GMM after checking shapes, finiteness, positive variances and non-negative
    /// weights. Weights are renormalised to sum to one (they must have a positive sum).
    pub fn new(
        k: usize,
        d: usize,
        means: Vec<f32>,
        variances: Vec<f32>,
        mut weights: Vec<f32>,
    ) -> Result<Self> {
        if k == 0 {
            return Err(Error::param("k", k, "at least 1 component"));
        }
        if d == 0 {
            return Err(Error::param("d", d, "at least 1 dimension"));
        }
        let Some(kd) = k.checked_mul(d) else {
            return Err(Error::param(
                "k",
                k,
                format!("K × D ({k} × {d}) to fit in memory"),
            ));
        };
        if means.len() != kd {
            return Err(Error::dim("GMM means (K*D values)", kd, means.len()));
        }
        if variances.len() != kd {
            return Err(Error::dim(
                "GMM variances (K*D values)",
                kd,
                variances.len(),
            ));
        }
        if weights.len() != k {
            return Err(Error::dim("GMM weights (K values)", k, weights.len()));
        }
        check_finite("GMM means", &means)?;
        check_finite("GMM variances", &variances)?;
        check_finite("GMM weights", &weights)?;
        // Normal floats only: below f32::MIN_POSITIVE the precision 1/σ² is infinite.
        if let Some(i) = variances.iter().position(|&v| v < f32::MIN_POSITIVE) {
            return Err(Error::Invalid(format!(
                "GMM variance at index {i} (component {}, dimension {}) is {:e} in f32 (the \
                 precision models are stored in): variances must be positive and at least {:e}",
                i / d,
                i % d,
                variances[i],
                f32::MIN_POSITIVE
            )));
        }
        if let Some(i) = weights.iter().position(|&w| w < 0.0) {
            return Err(Error::Invalid(format!(
                "GMM weight of component {i} is {}: weights must be non-negative",
                weights[i]
            )));
        }
        let total: f64 = weights.iter().map(|&w| w as f64).sum();
        if total <= 0.0 {
            return Err(Error::Invalid("GMM weights sum to zero".into()));
        }
        for w in &mut weights {
            *w = (*w as f64 / total) as f32;
        }
        Ok(Self {
            k,
            d,
            means,
            variances,
            weights,
        })
    }

    /// Number of components.
    pub fn k(&self) -> usize {
        self.k
    }
    /// Dimension of the descriptors.
    pub fn d(&self) -> usize {
        self.d
    }
    /// Means, `K × D` row-major.
    pub fn means(&self) -> &[f32] {
        &self.means
    }
    /// Diagonal variances σ², `K × D` row-major.
    pub fn variances(&self) -> &[f32] {
        &self.variances
    }
    /// Mixture weights π, `K` values summing to one.
    pub fn weights(&self) -> &[f32] {
        &self.weights
    }
    /// Mean of component `k`.
    pub fn mean(&self, k: usize) -> &[f32] {
        &self.means[k * self.d..(k + 1) * self.d]
    }
    /// Variances of component `k`.
    pub fn variance(&self, k: usize) -> &[f32] {
        &self.variances[k * self.d..(k + 1) * self.d]
    }
    /// Length of the Fisher vector this GMM produces: `2 K D`.
    pub fn fisher_len(&self) -> usize {
        2 * self.k * self.d
    }
}

// ---------------------------------------------------------------------------------------------
// Evaluation and fitting by EM.
// ---------------------------------------------------------------------------------------------

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::sync::Mutex;

use crate::stats::{block_posteriors, EmScratch, EmStats, GmmTerms, Scratch, BLOCK};

/// Rows per parallel task. Each task's statistics are computed sequentially and the tasks are
/// merged in row order, so results do not depend on the number of threads.
const CHUNK: usize = 4 * BLOCK;

/// Rows per task of the E-step, whose per-task statistics (`K × (2D + 1)` values) are cleared
/// and merged once per task: larger tasks make that a smaller part of the work.
const E_CHUNK: usize = 8 * BLOCK;

/// Absolute lower bound on every variance, whatever the relative floor.
const MIN_VARIANCE: f64 = 1e-10;

/// Lloyd iterations of the default initialisation.
const DEFAULT_KMEANS_ITERS: usize = 20;

/// k-means seeding ([`GmmInit::KMeans`]) runs on at most this many sampled rows per component.
const SEED_ROWS_PER_COMPONENT: usize = 64;

/// A component is empty when its mass Σᵢγᵢₖ is below `EMPTY_MASS · max(1, N/K)` (VLFeat's rule).
const EMPTY_MASS: f64 = 1e-2;

/// Checks a descriptor matrix (`N × d` row-major) and returns `N`.
fn check_data(x: &[f32], d: usize) -> Result<usize> {
    let n = check_shape(x, d)?;
    let finite = x.par_chunks(1 << 16).all(all_finite);
    if finite {
        return Ok(n);
    }
    non_finite_error(x, d).map_or(Ok(n), Err)
}

/// Checks the shape of a descriptor matrix (`N × d` row-major, `N ≥ 1`) and returns `N`.
fn check_shape(x: &[f32], d: usize) -> Result<usize> {
    if d == 0 {
        return Err(Error::param("d", d, "at least 1 dimension"));
    }
    if !x.len().is_multiple_of(d) {
        return Err(Error::param(
            "descriptor matrix length",
            x.len(),
            format!("a multiple of the dimension d = {d}"),
        ));
    }
    if x.is_empty() {
        return Err(Error::Empty {
            what: "descriptor matrix".into(),
        });
    }
    Ok(x.len() / d)
}

/// Finite data whose log-likelihood is not: some descriptor's log-density overflows f32 under
/// every component (`(x − μ)²/σ²` beyond ~1e38), which leaves its posteriors undefined. The
/// error names the largest value of `x`, the usual cause.
fn check_loglik(e: &EStep, x: &[f32], d: usize) -> Result<()> {
    if e.stats.loglik.is_finite() {
        return Ok(());
    }
    Err(overflow_error(x, d, 0))
}

/// The error for finite descriptors whose log-likelihood is not (every component's scaled
/// squared distance overflows f32), naming the largest value of `x` (`N × d`, `N ≥ 1`, its
/// first row descriptor row `first` of the data).
fn overflow_error(x: &[f32], d: usize, first: usize) -> Error {
    let i = x
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
        .map_or(0, |(i, _)| i);
    Error::Invalid(format!(
        "descriptor matrix: the log-likelihood under the GMM is not finite (a descriptor's \
         squared distance to every component overflows f32); the largest value is {} at \
         descriptor row {} (dimension {}): expected values on the scale of the model",
        x[i],
        first + i / d,
        i % d
    ))
}

/// The error naming the first non-finite value of `x`, if any.
fn non_finite_error(x: &[f32], d: usize) -> Option<Error> {
    let i = x.iter().position(|v| !v.is_finite())?;
    Some(Error::NonFinite {
        what: format!(
            "descriptor row {} (dimension {}, value {})",
            i / d,
            i % d,
            x[i]
        ),
        index: i,
    })
}

/// Runs `work` on every `CHUNK`-row block of `x` in parallel (with per-thread state from
/// `init`) and hands the results to `consume` in row order.
fn ordered_chunks<S, T, I, W, C>(x: &[f32], d: usize, init: I, work: W, mut consume: C)
where
    S: Send,
    T: Send,
    I: Fn() -> S + Sync + Send,
    W: Fn(&mut S, &[f32]) -> T + Sync + Send,
    C: FnMut(T),
{
    // Several tasks per thread for load balance, at most 16 results per thread held at once
    // (each group ends in a join); the grouping does not affect the merge order.
    let threads = rayon::current_num_threads().max(1);
    let group = CHUNK * d * 16 * threads;
    let states = thread_states(threads);
    for part in x.chunks(group) {
        let parts: Vec<T> = part
            .par_chunks(CHUNK * d)
            .map(|chunk| with_thread_state(&states, &init, |state| work(state, chunk)))
            .collect();
        parts.into_iter().for_each(&mut consume);
    }
}

/// One empty state slot per worker thread, for [`with_thread_state`].
fn thread_states<S>(threads: usize) -> Vec<Mutex<Option<S>>> {
    (0..threads).map(|_| Mutex::new(None)).collect()
}

/// Runs `f` on the calling worker thread's state in `states`, made by `init` on first use and
/// kept for the whole parallel call (rayon's `map_init` would make one per split, i.e.
/// reallocate per task); a fresh state where the slot is missing or busy.
fn with_thread_state<S, R>(
    states: &[Mutex<Option<S>>],
    init: impl Fn() -> S,
    f: impl FnOnce(&mut S) -> R,
) -> R {
    let slot = rayon::current_thread_index().and_then(|i| states.get(i));
    match slot.and_then(|m| m.try_lock().ok()) {
        Some(mut state) => f(state.get_or_insert_with(init)),
        None => f(&mut init()),
    }
}

/// Writes `row - shift` for every row of `x` into `out`.
fn centre_into(x: &[f32], shift: &[f32], out: &mut [f32]) {
    for (o, r) in out
        .chunks_exact_mut(shift.len())
        .zip(x.chunks_exact(shift.len()))
    {
        for ((o, &v), &s) in o.iter_mut().zip(r).zip(shift) {
            *o = v - s;
        }
    }
}

/// The means (`K × D`, f32) of `gmm`, a model in the coordinates of `x − shift`, in those of `x`.
fn means_in_x(gmm: &Gmm, shift: &[f32]) -> Vec<f32> {
    gmm.means
        .chunks_exact(gmm.d)
        .flat_map(|m| m.iter().zip(shift).map(|(&m, &s)| m + s))
        .collect()
}

/// [`GmmTerms`] of `gmm`, a model in the coordinates of `x − shift`.
fn terms_in_x(gmm: &Gmm, shift: &[f32]) -> GmmTerms {
    GmmTerms::new(gmm).with_means_in_x(&means_in_x(gmm, shift))
}

/// The same GMM with every mean translated by `−shift`.
fn shifted(gmm: &Gmm, shift: &[f32]) -> Result<Gmm> {
    let mut means = gmm.means.clone();
    for m in means.chunks_exact_mut(gmm.d) {
        for (v, &s) in m.iter_mut().zip(shift) {
            *v -= s;
        }
    }
    Gmm::new(
        gmm.k,
        gmm.d,
        means,
        gmm.variances.clone(),
        gmm.weights.clone(),
    )
}

/// E-step statistics with the reference points they are taken about.
struct EStep {
    stats: EmStats,
    /// `K × D`: the means of the model in the coordinates of `x` (f32), the `r_k` of
    /// [`EmStats`].
    refs: Vec<f32>,
    /// Whether `x` holds a non-finite value.
    non_finite: bool,
}

impl EStep {
    /// Reference point `k`, dimension `j`, in the coordinates of `x − shift`.
    fn centred_ref(&self, k: usize, j: usize, shift: &[f32]) -> f64 {
        let d = shift.len();
        self.refs[k * d + j] as f64 - shift[j] as f64
    }
}

/// `leaf(t)` for the tasks `lo..hi`, combined by `merge` in a binary tree whose shape depends
/// only on `lo..hi` (halves, the left one the smaller), so that the result does not depend on
/// the number of threads; the halves run in parallel. Unlike groups of tasks that end in a
/// join, an idle thread steals whatever is left anywhere in the tree, so a thread that the
/// machine preempts holds up at most the task it is running; and at most about one result per
/// level and thread is held at once.
fn merge_tree<T, L, M>(lo: usize, hi: usize, leaf: &L, merge: &M) -> T
where
    T: Send,
    L: Fn(usize) -> T + Sync,
    M: Fn(T, T) -> T + Sync,
{
    if hi - lo <= 1 {
        return leaf(lo);
    }
    let mid = lo + (hi - lo) / 2;
    let (a, b) = rayon::join(
        || merge_tree(lo, mid, leaf, merge),
        || merge_tree(mid, hi, leaf, merge),
    );
    merge(a, b)
}

/// E-step over all rows of `x`: the statistics ([`EmStats`]) of `x` under `gmm`, a model in
/// the coordinates of `x − shift`, with moments about its means and posteriors below
/// `threshold` left out, merged in a binary tree over the tasks in row order whose shape
/// depends only on the number of rows ([`merge_tree`]); and whether `x` holds a non-finite value
/// (tested while the blocks are formed).
fn e_step(gmm: &Gmm, x: &[f32], shift: &[f32], threshold: f32) -> EStep {
    let (k, d) = (gmm.k, gmm.d);
    let refs = means_in_x(gmm, shift);
    let terms = GmmTerms::new(gmm).with_means_in_x(&refs);
    // Per-task statistics are recycled once merged: no allocation per task.
    let spare: Mutex<Vec<EmStats>> = Mutex::new(Vec::new());
    let scratches = thread_states(rayon::current_num_threads().max(1));
    let tasks = x.len().div_ceil(E_CHUNK * d).max(1);
    let leaf = |t: usize| {
        let chunk = &x[(t * E_CHUNK * d).min(x.len())..((t + 1) * E_CHUNK * d).min(x.len())];
        let mut st = match spare.lock().ok().and_then(|mut v| v.pop()) {
            Some(mut st) => {
                st.clear();
                st
            }
            None => EmStats::zeros(k, d),
        };
        let finite = with_thread_state(
            &scratches,
            || EmScratch::new(k, d),
            |scratch| st.accumulate(&terms, &refs, chunk, shift, threshold, scratch),
        );
        (st, !finite)
    };
    let merge = |(mut a, bad_a): (EmStats, bool), (b, bad_b): (EmStats, bool)| {
        a.merge(&b);
        if let Ok(mut v) = spare.lock() {
            v.push(b);
        }
        (a, bad_a | bad_b)
    };
    let (total, non_finite) = merge_tree(0, tasks, &leaf, &merge);
    EStep {
        stats: total,
        refs,
        non_finite,
    }
}

/// `log p(xᵢ)` of every row of `x − shift` under `terms`.
fn row_logliks(terms: &GmmTerms, x: &[f32], shift: &[f32]) -> Vec<f64> {
    let (k, d) = (terms.k(), terms.d());
    let mut out = vec![0f64; x.len() / d];
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK * d))
        .for_each_init(
            || Scratch::new(k, d),
            |scratch, (ll, chunk)| {
                for (ll, block) in ll.chunks_mut(BLOCK).zip(chunk.chunks(BLOCK * d)) {
                    let n = block.len() / d;
                    block_posteriors(terms, block, Some(shift), n, scratch);
                    ll.copy_from_slice(&scratch.row_ll[..n]);
                }
            },
        );
    out
}

/// `Σᵢ log p(xᵢ)` over the rows of `x − shift` under `terms`, summed in row order.
fn total_loglik(terms: &GmmTerms, x: &[f32], shift: &[f32]) -> f64 {
    let (k, d) = (terms.k(), terms.d());
    let mut total = 0f64;
    ordered_chunks(
        x,
        d,
        || Scratch::new(k, d),
        |scratch, chunk| {
            let mut sum = 0f64;
            for block in chunk.chunks(BLOCK * d) {
                let rows = block.len() / d;
                block_posteriors(terms, block, Some(shift), rows, scratch);
                sum += scratch.row_ll[..rows].iter().sum::<f64>();
            }
            sum
        },
        |s| total += s,
    );
    total
}

/// Mixture-weighted mean Σₖ πₖ μₖ: a centring point that keeps the f32 matrix-product form of
/// the log-densities well conditioned when the data are far from the origin.
fn model_centre(gmm: &Gmm) -> Vec<f32> {
    let mut c = vec![0f64; gmm.d];
    for (m, &w) in gmm.means.chunks_exact(gmm.d).zip(&gmm.weights) {
        for (c, &v) in c.iter_mut().zip(m) {
            *c += w as f64 * v as f64;
        }
    }
    c.into_iter().map(|v| v as f32).collect()
}

impl Gmm {
    /// Average log-likelihood `(1/N) Σᵢ log Σₖ πₖ 𝒩(xᵢ; μₖ, diag σ²ₖ)` of the rows of `x`
    /// (`N × D`, natural log, including the `−(D/2) log 2π` term), by log-sum-exp.
    pub fn log_likelihood(&self, x: &[f32]) -> Result<f64> {
        let n = check_data(x, self.d)?;
        let shift = model_centre(self);
        let terms = GmmTerms::new(&shifted(self, &shift)?).with_means_in_x(&self.means);
        let ll = total_loglik(&terms, x, &shift) / n as f64;
        if !ll.is_finite() {
            return Err(overflow_error(x, self.d, 0));
        }
        Ok(ll)
    }

    /// Posteriors `γᵢₖ = πₖ 𝒩(xᵢ; μₖ, σ²ₖ) / Σⱼ πⱼ 𝒩(xᵢ; μⱼ, σ²ⱼ)` of the rows of `x`
    /// (`N × D`), returned `N × K` row-major; each row sums to one.
    pub fn posteriors(&self, x: &[f32]) -> Result<Vec<f32>> {
        let n = check_data(x, self.d)?;
        let (k, d) = (self.k, self.d);
        let shift = model_centre(self);
        let terms = GmmTerms::new(&shifted(self, &shift)?).with_means_in_x(&self.means);
        let mut out = vec![0f32; n * k];
        out.par_chunks_mut(CHUNK * k)
            .zip(x.par_chunks(CHUNK * d))
            .for_each_init(
                || Scratch::new(k, d),
                |scratch, (post, chunk)| {
                    for (post, block) in post.chunks_mut(BLOCK * k).zip(chunk.chunks(BLOCK * d)) {
                        let rows = block.len() / d;
                        block_posteriors(&terms, block, Some(&shift), rows, scratch);
                        post.copy_from_slice(&scratch.post[..rows * k]);
                    }
                },
            );
        // Finite rows give NaN posteriors only where their log-likelihood overflows.
        if let Some(i) = out.iter().position(|v| v.is_nan()) {
            let row = i / k;
            return Err(overflow_error(&x[row * d..(row + 1) * d], d, row));
        }
        Ok(out)
    }
}

/// How [`fit_gmm`] chooses the starting model of each restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GmmInit {
    /// k-means++ seeding (D²-weighted sampling), then every (sampled) descriptor is assigned to
    /// its nearest seed and each component starts from its cluster's mean, variance and size.
    KMeansPlusPlus,
    /// k-means (the default, with 20 iterations): k-means++ seeds drawn from a random subset of
    /// at most 64·K of the sampled descriptors, then `iters` Lloyd iterations on the whole
    /// sample (an empty cluster moves to the descriptor farthest from its centre); each
    /// component starts from its cluster's mean, variance and size.
    KMeans {
        /// Number of Lloyd iterations.
        iters: usize,
    },
    /// `K` distinct random descriptors as means, the data variance for every component,
    /// uniform weights.
    Random,
}

/// Parameters of [`fit_gmm`]. Build with [`GmmParams::new`] and the builder-style setters;
/// [`GmmParams::validate`] (called by the fitting functions) rejects invalid values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GmmParams {
    /// Number of components `K`.
    pub k: usize,
    /// Maximum number of EM iterations (M-steps) per restart.
    pub max_iter: usize,
    /// Convergence: stop when `|ℓₜ − ℓₜ₋₁| ≤ tol · |ℓₜ|` for the average log-likelihood ℓ.
    pub tol: f64,
    /// Number of independent initialisations; the model with the best final likelihood is kept.
    pub restarts: usize,
    /// Seed of the random number generator (ChaCha8; restart `r` uses stream `r`).
    pub seed: u64,
    /// Relative variance floor: every σ²ₖd ≥ max(variance_floor · Var(x_d), 1e-10), where
    /// Var(x_d) is the variance of dimension `d` over the data (as VLFeat's lower bounds).
    pub variance_floor: f64,
    /// Absolute weight floor: πₖ ≥ weight_floor before the weights are renormalised.
    pub weight_floor: f64,
    /// Initialisation method.
    pub init: GmmInit,
    /// Number of randomly sampled descriptors the initialisation runs on (`None`: all).
    pub kmeans_sample: Option<usize>,
    /// M-step posterior threshold τ: posteriors below τ times the descriptor's largest
    /// posterior count as zero in the means, variances and weights (VLFeat's EM skips those
    /// below 10⁻²/K; 0 keeps every posterior). The log-likelihood always uses every
    /// posterior. See [`DEFAULT_EM_POSTERIOR_THRESHOLD`].
    pub posterior_threshold: f32,
}

/// Default [`GmmParams::posterior_threshold`]: the posterior mass left out is below
/// `K · 10⁻⁶` per descriptor, and far below it in practice (`docs/gmm.md` gives the measured
/// mass and its effect on the fitted models), while on PCA-64 descriptors at K = 256 only
/// about 4 % of the posteriors are kept, so the statistics cost a small fraction of a dense
/// product.
pub const DEFAULT_EM_POSTERIOR_THRESHOLD: f32 = 1e-6;

impl Default for GmmParams {
    fn default() -> Self {
        Self::new(16)
    }
}

impl GmmParams {
    /// Default parameters for `k` components: at most 500 iterations, tol 1e-7, one restart,
    /// seed 0, variance floor 1e-4 (relative), weight floor 1e-6, k-means initialisation
    /// (k-means++ seeds, then 20 Lloyd iterations) on at most 100 000 descriptors (or `k`,
    /// when that is more: the sample must hold at least `k`).
    ///
    /// The tolerance is tight because EM often creeps along plateaus: at 1e-6 it stops early
    /// enough to end below VLFeat's and scikit-learn's final likelihoods (`docs/gmm.md`).
    pub fn new(k: usize) -> Self {
        Self {
            k,
            max_iter: 500,
            tol: 1e-7,
            restarts: 1,
            seed: 0,
            variance_floor: 1e-4,
            weight_floor: 1e-6,
            init: GmmInit::KMeans {
                iters: DEFAULT_KMEANS_ITERS,
            },
            kmeans_sample: Some(100_000.max(k)),
            posterior_threshold: DEFAULT_EM_POSTERIOR_THRESHOLD,
        }
    }
    /// Sets [`GmmParams::max_iter`].
    pub fn max_iter(mut self, v: usize) -> Self {
        self.max_iter = v;
        self
    }
    /// Sets [`GmmParams::tol`].
    pub fn tol(mut self, v: f64) -> Self {
        self.tol = v;
        self
    }
    /// Sets [`GmmParams::restarts`].
    pub fn restarts(mut self, v: usize) -> Self {
        self.restarts = v;
        self
    }
    /// Sets [`GmmParams::seed`].
    pub fn seed(mut self, v: u64) -> Self {
        self.seed = v;
        self
    }
    /// Sets [`GmmParams::variance_floor`].
    pub fn variance_floor(mut self, v: f64) -> Self {
        self.variance_floor = v;
        self
    }
    /// Sets [`GmmParams::weight_floor`].
    pub fn weight_floor(mut self, v: f64) -> Self {
        self.weight_floor = v;
        self
    }
    /// Sets [`GmmParams::init`].
    pub fn init(mut self, v: GmmInit) -> Self {
        self.init = v;
        self
    }
    /// Sets [`GmmParams::kmeans_sample`].
    pub fn kmeans_sample(mut self, v: Option<usize>) -> Self {
        self.kmeans_sample = v;
        self
    }
    /// Sets [`GmmParams::posterior_threshold`].
    pub fn posterior_threshold(mut self, v: f32) -> Self {
        self.posterior_threshold = v;
        self
    }

    /// Checks every parameter; the error names the parameter and its valid range.
    pub fn validate(&self) -> Result<()> {
        if self.k == 0 {
            return Err(Error::param("k", self.k, "at least 1 component"));
        }
        if self.restarts == 0 {
            return Err(Error::param("restarts", self.restarts, "at least 1"));
        }
        if !(self.tol.is_finite() && self.tol >= 0.0) {
            return Err(Error::param("tol", self.tol, "a finite value >= 0"));
        }
        if !(self.variance_floor.is_finite() && self.variance_floor >= 0.0) {
            return Err(Error::param(
                "variance_floor",
                self.variance_floor,
                "a finite value >= 0 (relative to the data variance)",
            ));
        }
        if !(self.weight_floor.is_finite()
            && self.weight_floor >= 0.0
            && self.weight_floor * (self.k as f64) < 1.0)
        {
            return Err(Error::param(
                "weight_floor",
                self.weight_floor,
                format!("a value in [0, 1/k) = [0, {})", 1.0 / self.k as f64),
            ));
        }
        let t = self.posterior_threshold;
        if !(t.is_finite() && (0.0..1.0).contains(&t)) {
            return Err(Error::param("posterior_threshold", t, "a value in [0, 1)"));
        }
        if let Some(s) = self.kmeans_sample {
            if s < self.k {
                return Err(Error::param(
                    "kmeans_sample",
                    s,
                    format!("at least k = {} descriptors", self.k),
                ));
            }
        }
        Ok(())
    }
}

/// Result of [`fit_gmm`].
#[derive(Clone, Debug, PartialEq)]
pub struct GmmFit {
    /// The model of the best restart.
    pub gmm: Gmm,
    /// Average log-likelihood of the best restart before the first M-step (index 0) and after
    /// each M-step; the last entry is the likelihood of `gmm`.
    pub loglik_history: Vec<f64>,
    /// Number of EM iterations (M-steps) of the best restart.
    pub iterations: usize,
    /// Whether the best restart stopped on the tolerance rather than on `max_iter`.
    pub converged: bool,
    /// Final average log-likelihood of every restart, in order.
    pub restarts_ll: Vec<f64>,
}

/// Per-dimension mean and (population) variance of the data, in f64.
fn data_moments(x: &[f32], d: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let n = (x.len() / d) as f64;
    let mut mean = vec![0f64; d];
    ordered_chunks(
        x,
        d,
        || (),
        |_, chunk| {
            let mut s = vec![0f64; d];
            for r in chunk.chunks_exact(d) {
                for (s, &v) in s.iter_mut().zip(r) {
                    *s += v as f64;
                }
            }
            s
        },
        |s| mean.iter_mut().zip(&s).for_each(|(m, v)| *m += v),
    );
    mean.iter_mut().for_each(|m| *m /= n);
    let (mut var, mut spread) = (vec![0f64; d], vec![0f64; d]);
    ordered_chunks(
        x,
        d,
        || (),
        |_, chunk| {
            let (mut s, mut far) = (vec![0f64; d], vec![0f64; d]);
            for r in chunk.chunks_exact(d) {
                for (((s, far), &v), &m) in s.iter_mut().zip(&mut far).zip(r).zip(&mean) {
                    let dev = v as f64 - m;
                    *s += dev * dev;
                    *far = far.max(dev.abs());
                }
            }
            (s, far)
        },
        |(s, far)| {
            var.iter_mut().zip(&s).for_each(|(m, v)| *m += v);
            spread
                .iter_mut()
                .zip(&far)
                .for_each(|(m, &v)| *m = m.max(v));
        },
    );
    var.iter_mut().for_each(|v| *v /= n);
    (mean, var, spread)
}

/// The largest distance from the mean that a fit accepts in any dimension: the E-step squares
/// centred values in f32 (up to 3.4e38) and the variances are stored as f32, so 1e18 leaves a
/// factor 100 for the sums.
const MAX_SPREAD: f64 = 1e18;

/// Refuses data whose spread float32 statistics cannot hold, naming the farthest value of the
/// first such dimension (the others may lie far from a mean that one huge value pulled away).
fn check_spread(x: &[f32], d: usize, mean: &[f64], spread: &[f64]) -> Result<()> {
    let Some(j) = spread.iter().position(|&s| s > MAX_SPREAD) else {
        return Ok(());
    };
    let dev = |r: usize| (x[r * d + j] as f64 - mean[j]).abs();
    let row = (0..x.len() / d).fold(0, |best, r| if dev(r) > dev(best) { r } else { best });
    Err(Error::Invalid(format!(
        "descriptor row {row} (dimension {j}) is {:e}, {:e} from the dimension's mean: beyond \
         {MAX_SPREAD:e}, the squares overflow the float32 statistics; scale the descriptors down",
        x[row * d + j],
        dev(row)
    )))
}

/// Validates the parameters and the data of a fit and returns `N` (at least `k` rows).
fn check_fit_input(x: &[f32], d: usize, params: &GmmParams) -> Result<usize> {
    params.validate()?;
    let n = check_data(x, d)?;
    check_enough_rows(n, params.k)?;
    Ok(n)
}

/// A fit of `k` components needs at least `k` descriptors.
fn check_enough_rows(n: usize, k: usize) -> Result<()> {
    if n < k {
        return Err(Error::param(
            "k",
            k,
            format!("at most the number of descriptors N = {n}"),
        ));
    }
    Ok(())
}

/// Per-dimension data variance from E-step statistics (centred coordinates): component `k`
/// with reference point `r` contributes `s0 r + Σγδ` to `Σᵢ xᵢ` and `Σγδ² + 2r Σγδ + s0 r²`
/// to `Σᵢ xᵢ²` (the kept posteriors of a row sum to one up to the dropped mass, which the
/// division by the kept total absorbs).
fn variance_from_stats(e: &EStep, shift: &[f32]) -> Vec<f64> {
    let d = shift.len();
    let st = &e.stats;
    let mass: f64 = st.s0.iter().sum();
    let mut s1 = vec![0f64; d];
    let mut s2 = vec![0f64; d];
    for (c, (m, &s0)) in st.moments.chunks_exact(2 * d).zip(&st.s0).enumerate() {
        let (m1, m2) = m.split_at(d);
        for j in 0..d {
            let r = e.centred_ref(c, j, shift);
            s1[j] += s0 * r + m1[j];
            s2[j] += m2[j] + 2.0 * r * m1[j] + s0 * r * r;
        }
    }
    s1.iter()
        .zip(&s2)
        .map(|(&s1, &s2)| {
            let m = s1 / mass;
            (s2 / mass - m * m).max(0.0)
        })
        .collect()
}

/// What every EM iteration on one data set shares: centring shift and floors.
struct EmContext<'a> {
    x: &'a [f32],
    n: usize,
    d: usize,
    k: usize,
    /// Data mean (f32): the data are centred on it chunk by chunk, the model kept centred.
    shift: Vec<f32>,
    /// Per-dimension variance floor.
    floor: Vec<f64>,
    /// Per-dimension data variance.
    data_var: Vec<f64>,
    weight_floor: f64,
    posterior_threshold: f32,
}

impl<'a> EmContext<'a> {
    fn new(x: &'a [f32], d: usize, params: &GmmParams) -> Result<Self> {
        let n = check_fit_input(x, d, params)?;
        let (mean, data_var, spread) = data_moments(x, d);
        check_spread(x, d, &mean, &spread)?;
        if spread.iter().all(|&s| s == 0.0) && params.k > 1 {
            // Not an error (the fit is defined), but nothing a user wants: say so.
            tracing::warn!(
                "all {n} descriptors are identical: the {} components coincide at that point, \
                 and Fisher vectors of such data carry no information",
                params.k
            );
        } else if data_var.iter().all(|&v| v < MIN_VARIANCE) && params.k > 1 {
            // Every variance sits at the absolute floor: the components cannot resolve the
            // data, which EM then fits as one point.
            tracing::warn!(
                "the descriptors vary by less than the absolute variance floor {MIN_VARIANCE:e} \
                 in every dimension (largest variance {:e}): the components cannot resolve \
                 them; scale the descriptors up",
                data_var.iter().cloned().fold(0.0, f64::max)
            );
        }
        let shift = mean.iter().map(|&m| m as f32).collect();
        Ok(Self::with_moments(x, n, d, params, shift, data_var))
    }

    /// A context with a given centring shift and per-dimension data variance.
    fn with_moments(
        x: &'a [f32],
        n: usize,
        d: usize,
        params: &GmmParams,
        shift: Vec<f32>,
        data_var: Vec<f64>,
    ) -> Self {
        let floor = data_var
            .iter()
            .map(|&v| (params.variance_floor * v).max(MIN_VARIANCE))
            .collect();
        Self {
            x,
            n,
            d,
            k: params.k,
            shift,
            floor,
            data_var,
            weight_floor: params.weight_floor,
            posterior_threshold: params.posterior_threshold,
        }
    }

    /// One EM iteration on a centred model: returns the new centred model and the average
    /// log-likelihood of `gmm`.
    fn step(&self, gmm: &Gmm) -> Result<(Gmm, f64)> {
        // The data were checked when the context was made.
        let e = e_step(gmm, self.x, &self.shift, self.posterior_threshold);
        check_loglik(&e, self.x, self.d)?;
        let ll = e.stats.loglik / self.n as f64;
        Ok((self.m_step(&e)?, ll))
    }

    /// Average log-likelihood of a centred model.
    fn loglik(&self, gmm: &Gmm) -> f64 {
        total_loglik(&terms_in_x(gmm, &self.shift), self.x, &self.shift) / self.n as f64
    }

    /// M-step in f64 from moments about the reference points r (the old means):
    /// μ = r + Σγδ/s0, σ² = max(Σγδ²/s0 − (Σγδ/s0)², floor), π = max(s0/N, weight_floor)
    /// renormalised; empty components are re-seeded.
    fn m_step(&self, e: &EStep) -> Result<Gmm> {
        let st = &e.stats;
        let (k, d) = (self.k, self.d);
        let mut means = vec![0f64; k * d];
        let mut vars = vec![0f64; k * d];
        let mut weights = vec![0f64; k];
        let empty_mass = EMPTY_MASS * (self.n as f64 / k as f64).max(1.0);
        let mut empty = Vec::new();
        for c in 0..k {
            let s0 = st.s0[c];
            // Also catches a NaN mass.
            if s0.is_nan() || s0 < empty_mass {
                empty.push(c);
                continue;
            }
            let (m1, m2) = st.moments[2 * c * d..2 * (c + 1) * d].split_at(d);
            for j in 0..d {
                let shift = m1[j] / s0;
                means[c * d + j] = e.centred_ref(c, j, &self.shift) + shift;
                vars[c * d + j] = (m2[j] / s0 - shift * shift).max(self.floor[j]);
            }
            weights[c] = s0 / self.n as f64;
        }
        if !empty.is_empty() {
            self.reseed(&empty, &mut means, &mut vars, &mut weights)?;
        }
        self.build(&means, &vars, &weights)
    }

    /// Re-seeds the `empty` components at the descriptors with the lowest likelihood under the
    /// other components, with their average variance and weight 1/K.
    fn reseed(
        &self,
        empty: &[usize],
        means: &mut [f64],
        vars: &mut [f64],
        weights: &mut [f64],
    ) -> Result<()> {
        let (k, d) = (self.k, self.d);
        let live: Vec<usize> = (0..k).filter(|c| !empty.contains(c)).collect();
        if live.is_empty() {
            return Err(Error::Invalid(
                "GMM fitting: every component became empty".into(),
            ));
        }
        let pick = |v: &[f64]| -> Vec<f32> {
            live.iter()
                .flat_map(|&c| v[c * d..(c + 1) * d].iter().map(|&x| x as f32))
                .collect()
        };
        let sub = Gmm::new(
            live.len(),
            d,
            pick(means),
            pick(vars),
            live.iter()
                .map(|&c| weights[c].max(f64::MIN_POSITIVE) as f32)
                .collect(),
        )?;
        let ll = row_logliks(&terms_in_x(&sub, &self.shift), self.x, &self.shift);
        let mut order: Vec<usize> = (0..self.n).collect();
        order.sort_by(|&a, &b| ll[a].total_cmp(&ll[b]).then(a.cmp(&b)));
        let mut avg_var = vec![0f64; d];
        for &c in &live {
            for j in 0..d {
                avg_var[j] += vars[c * d + j] / live.len() as f64;
            }
        }
        for (&c, &row) in empty.iter().zip(&order) {
            for j in 0..d {
                means[c * d + j] = self.x[row * d + j] as f64 - self.shift[j] as f64;
                vars[c * d + j] = avg_var[j].max(self.floor[j]);
            }
            weights[c] = 1.0 / k as f64;
        }
        tracing::debug!(components = ?empty, "GMM: re-seeded empty components");
        Ok(())
    }

    /// A centred model from f64 parameters, applying the variance and weight floors.
    fn build(&self, means: &[f64], vars: &[f64], weights: &[f64]) -> Result<Gmm> {
        let d = self.d;
        let vars = vars
            .iter()
            .enumerate()
            .map(|(i, &v)| v.max(self.floor[i % d]) as f32)
            .collect();
        let total: f64 = weights.iter().map(|&w| w.max(self.weight_floor)).sum();
        let weights = weights
            .iter()
            .map(|&w| (w.max(self.weight_floor) / total) as f32)
            .collect();
        Gmm::new(
            self.k,
            d,
            means.iter().map(|&m| m as f32).collect(),
            vars,
            weights,
        )
    }

    /// Translates a centred model back to data coordinates.
    fn uncentre(&self, gmm: &Gmm) -> Result<Gmm> {
        let neg: Vec<f32> = self.shift.iter().map(|&s| -s).collect();
        shifted(gmm, &neg)
    }

    /// Runs EM from the centred model `gmm` until convergence or `max_iter`.
    fn run(&self, init: Gmm, params: &GmmParams) -> Result<(Gmm, Vec<f64>, usize, bool)> {
        let converged = |prev: f64, ll: f64| (ll - prev).abs() <= params.tol * ll.abs();
        // `max_iter` may be huge ("no limit"): the history grows as it goes.
        let mut history = Vec::with_capacity(params.max_iter.min(1024) + 1);
        if params.max_iter == 0 {
            history.push(self.loglik(&init));
            return Ok((init, history, 0, false));
        }
        // Each E-step gives the likelihood of the current model and the statistics of the next.
        let mut current = init;
        let (mut next, ll) = self.step(&current)?;
        history.push(ll);
        for it in 1..params.max_iter {
            current = next;
            let (n, ll) = self.step(&current)?;
            next = n;
            let prev = history[history.len() - 1];
            history.push(ll);
            if converged(prev, ll) {
                return Ok((current, history, it, true));
            }
        }
        // After the last M-step only the likelihood of the returned model is needed.
        let ll = self.loglik(&next);
        let prev = history[history.len() - 1];
        history.push(ll);
        Ok((next, history, params.max_iter, converged(prev, ll)))
    }
}

/// One EM iteration from `gmm` on the rows of `x` (`N × D`): the E-step through the shared
/// matrix-product kernel ([`crate::stats`]), then the M-step in f64 (μ = s1/s0,
/// σ² = max(s2/s0 − μ², floor), π = max(s0/N, weight_floor) renormalised, empty components
/// re-seeded). Uses `params.variance_floor` and `params.weight_floor` (the other fields must
/// be valid but are unused; `k` must equal `gmm.k()`). Returns the new model and the average
/// log-likelihood of the *old* model (as scikit-learn reports it).
pub fn em_step(gmm: &Gmm, x: &[f32], params: &GmmParams) -> Result<(Gmm, f64)> {
    if params.k != gmm.k {
        return Err(Error::param(
            "k",
            params.k,
            format!("the number of components of the GMM ({})", gmm.k),
        ));
    }
    params.validate()?;
    let n = check_shape(x, gmm.d)?;
    check_enough_rows(n, params.k)?;
    // No separate pass over the data: the model's centre is the centring point, the data
    // variance (for the floors) comes from the E-step's own statistics, and the finiteness
    // check from its centred copy (a non-finite x gives a non-finite x − shift; the full scan
    // then tells it from an overflow of the subtraction).
    let shift = model_centre(gmm);
    let centred = shifted(gmm, &shift)?;
    let e = e_step(&centred, x, &shift, params.posterior_threshold);
    if e.non_finite {
        check_data(x, gmm.d)?;
    }
    check_loglik(&e, x, gmm.d)?;
    let data_var = variance_from_stats(&e, &shift);
    let ctx = EmContext::with_moments(x, n, gmm.d, params, shift, data_var);
    let next = ctx.m_step(&e)?;
    Ok((ctx.uncentre(&next)?, e.stats.loglik / n as f64))
}

/// Fits a diagonal GMM to the rows of `x` (`N × d`) by EM: for each of `params.restarts`
/// restarts an initialisation ([`GmmInit`]) followed by EM until the relative change of the
/// average log-likelihood is at most `params.tol` or `params.max_iter` iterations; the restart
/// with the highest final likelihood is returned. Deterministic for a given seed, and
/// independent of the rayon thread count.
pub fn fit_gmm(x: &[f32], d: usize, params: &GmmParams) -> Result<GmmFit> {
    let ctx = EmContext::new(x, d, params)?;
    let mut best: Option<(Gmm, Vec<f64>, usize, bool)> = None;
    let mut restarts_ll = Vec::with_capacity(params.restarts.min(1024));
    for r in 0..params.restarts {
        let mut rng = ChaCha8Rng::seed_from_u64(params.seed);
        rng.set_stream(r as u64);
        let init = initialise(&ctx, params, &mut rng)?;
        let run = ctx.run(init, params)?;
        let ll = run.1[run.1.len() - 1];
        restarts_ll.push(ll);
        if best.as_ref().is_none_or(|b| ll > b.1[b.1.len() - 1]) {
            best = Some(run);
        }
    }
    let (gmm, loglik_history, iterations, converged) =
        best.ok_or_else(|| Error::Invalid("GMM fitting ran no restart".into()))?;
    Ok(GmmFit {
        gmm: ctx.uncentre(&gmm)?,
        loglik_history,
        iterations,
        converged,
        restarts_ll,
    })
}

/// Like [`fit_gmm`] but EM starts from `init` (one run; `params.restarts`, `init` and `seed`
/// are not used).
pub fn fit_gmm_from(x: &[f32], init: &Gmm, params: &GmmParams) -> Result<GmmFit> {
    if params.k != init.k {
        return Err(Error::param(
            "k",
            params.k,
            format!("the number of components of the initial GMM ({})", init.k),
        ));
    }
    let ctx = EmContext::new(x, init.d, params)?;
    let (gmm, loglik_history, iterations, converged) =
        ctx.run(shifted(init, &ctx.shift)?, params)?;
    let ll = loglik_history[loglik_history.len() - 1];
    Ok(GmmFit {
        gmm: ctx.uncentre(&gmm)?,
        loglik_history,
        iterations,
        converged,
        restarts_ll: vec![ll],
    })
}

// ---------------------------------------------------------------------------------------------
// Initialisation: k-means++ seeding and Lloyd iterations with matrix-product distances.
// ---------------------------------------------------------------------------------------------

/// The centred model a restart starts from.
fn initialise(ctx: &EmContext<'_>, params: &GmmParams, rng: &mut ChaCha8Rng) -> Result<Gmm> {
    let (n, d, k) = (ctx.n, ctx.d, ctx.k);
    let rows: Vec<usize> = match params.kmeans_sample {
        Some(s) if s < n => {
            let mut idx = rand::seq::index::sample(rng, n, s).into_vec();
            idx.sort_unstable();
            idx
        }
        _ => (0..n).collect(),
    };
    let mut sample = vec![0f32; rows.len() * d];
    for (out, &r) in sample.chunks_exact_mut(d).zip(&rows) {
        centre_into(&ctx.x[r * d..(r + 1) * d], &ctx.shift, out);
    }
    let m = rows.len();
    if params.init == GmmInit::Random {
        let idx = rand::seq::index::sample(rng, m, k).into_vec();
        let means: Vec<f64> = idx
            .iter()
            .flat_map(|&r| sample[r * d..(r + 1) * d].iter().map(|&v| v as f64))
            .collect();
        let vars: Vec<f64> = (0..k).flat_map(|_| ctx.data_var.iter().copied()).collect();
        return ctx.build(&means, &vars, &vec![1.0 / k as f64; k]);
    }
    let (mut centres, iters) = match params.init {
        GmmInit::KMeans { iters } => {
            // Seeding costs K passes over its rows; Lloyd's iterations on the whole sample
            // refine the seeds, so they are drawn from a subsample.
            let s = (SEED_ROWS_PER_COMPONENT * k).min(m);
            let seeds = if s < m {
                let mut idx = rand::seq::index::sample(rng, m, s).into_vec();
                idx.sort_unstable();
                let sub: Vec<f32> = idx
                    .iter()
                    .flat_map(|&r| sample[r * d..(r + 1) * d].iter().copied())
                    .collect();
                kmeans_plus_plus(&sub, d, k, rng)
            } else {
                kmeans_plus_plus(&sample, d, k, rng)
            };
            (seeds, iters)
        }
        _ => (kmeans_plus_plus(&sample, d, k, rng), 0),
    };
    let mut assign = assign_pass(&sample, d, &centres, k, iters == 0);
    for it in 0..iters {
        if !assign.update_centres(&sample, d, &mut centres) {
            // Converged: the assignment is final but the last pass skipped the squares.
            assign = assign_pass(&sample, d, &centres, k, true);
            break;
        }
        assign = assign_pass(&sample, d, &centres, k, it + 1 == iters);
    }
    // Cluster statistics; a cluster left empty keeps its centre, the data variance and 1/K.
    let mut means = vec![0f64; k * d];
    let mut vars = vec![0f64; k * d];
    let mut weights = vec![0f64; k];
    for (c, w) in weights.iter_mut().enumerate() {
        let cnt = assign.count[c];
        for j in 0..d {
            let i = c * d + j;
            if cnt > 0.0 {
                let mu = assign.sum[i] / cnt;
                means[i] = mu;
                vars[i] = assign.sumsq[i] / cnt - mu * mu;
            } else {
                means[i] = centres[i] as f64;
                vars[i] = ctx.data_var[j];
            }
        }
        *w = if cnt > 0.0 {
            cnt / m as f64
        } else {
            1.0 / k as f64
        };
    }
    ctx.build(&means, &vars, &weights)
}

/// Greedy k-means++ seeding (as scikit-learn's): the first centre uniformly at random; then at
/// each step `2 + ⌊ln K⌋` candidates drawn with probability proportional to the squared
/// distance to the nearest centre so far, keeping the one that lowers the total squared
/// distance most. Distances to the candidates are one matrix product per chunk,
/// `‖x‖² − 2 x cᵀ + ‖c‖²`.
fn kmeans_plus_plus(x: &[f32], d: usize, k: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let n = x.len() / d;
    let trials = 2 + (k as f64).ln() as usize;
    let xnorm: Vec<f32> = x
        .par_chunks(d)
        .map(|r| r.iter().map(|v| v * v).sum())
        .collect();
    let mut centres = Vec::with_capacity(k * d);
    let mut mind = vec![f32::INFINITY; n];
    let mut dist = vec![0f32; n * trials];
    let mut cumsum = vec![0f64; n];
    let mut cands = vec![rng.random_range(0..n)];
    loop {
        let l = cands.len();
        let cmat: Vec<f32> = cands
            .iter()
            .flat_map(|&c| x[c * d..(c + 1) * d].iter().copied())
            .collect();
        let cnorm: Vec<f32> = cands.iter().map(|&c| xnorm[c]).collect();
        let dist = &mut dist[..n * l];
        // Distances and, per chunk, each candidate's potential Σᵢ min(mindᵢ, ‖xᵢ − c‖²).
        let parts: Vec<Vec<f64>> = dist
            .par_chunks_mut(CHUNK * l)
            .zip(x.par_chunks(CHUNK * d))
            .zip(xnorm.par_chunks(CHUNK))
            .zip(mind.par_chunks(CHUNK))
            .map(|(((dc, xc), xn), md)| {
                let rows = xn.len();
                matmul(
                    MatMut::from_row_major_slice_mut(dc, rows, l),
                    Accum::Replace,
                    MatRef::from_row_major_slice(xc, rows, d),
                    MatRef::from_row_major_slice(&cmat, l, d).transpose(),
                    -2.0f32,
                    Par::Seq,
                );
                let mut p = vec![0f64; l];
                for ((row, &xn), &m) in dc.chunks_exact_mut(l).zip(xn).zip(md) {
                    for ((v, &cn), p) in row.iter_mut().zip(&cnorm).zip(p.iter_mut()) {
                        *v = (*v + xn + cn).max(0.0);
                        *p += v.min(m) as f64;
                    }
                }
                p
            })
            .collect();
        let mut potential = vec![0f64; l];
        for p in &parts {
            potential.iter_mut().zip(p).for_each(|(a, b)| *a += b);
        }
        let best = (0..l)
            .min_by(|&a, &b| potential[a].total_cmp(&potential[b]))
            .unwrap_or(0);
        centres.extend_from_slice(&cmat[best * d..(best + 1) * d]);
        if centres.len() == k * d {
            return centres;
        }
        mind.par_chunks_mut(CHUNK)
            .zip(dist.par_chunks(CHUNK * l))
            .for_each(|(md, dc)| {
                for (m, row) in md.iter_mut().zip(dc.chunks_exact(l)) {
                    *m = m.min(row[best]);
                }
            });
        let mut total = 0f64;
        for (s, &m) in cumsum.iter_mut().zip(&mind) {
            total += m as f64;
            *s = total;
        }
        cands = if total > 0.0 {
            (0..trials)
                .map(|_| {
                    let r = rng.random::<f64>() * total;
                    cumsum.partition_point(|&s| s <= r).min(n - 1)
                })
                .collect()
        } else {
            // Fewer distinct descriptors than components.
            vec![rng.random_range(0..n)]
        };
    }
}

/// Hard-assignment statistics of a k-means pass.
struct Assignment {
    count: Vec<f64>,
    sum: Vec<f64>,
    sumsq: Vec<f64>,
    /// Squared distance of each row to its nearest centre.
    mind: Vec<f32>,
}

impl Assignment {
    /// Lloyd update: centres to cluster means; an empty cluster takes the row farthest from its
    /// centre (distinct rows for several empties). Returns whether any centre moved.
    fn update_centres(&self, x: &[f32], d: usize, centres: &mut [f32]) -> bool {
        let k = self.count.len();
        let mut far: Vec<usize> = Vec::new();
        let mut moved = false;
        for c in 0..k {
            let new: Vec<f32> = if self.count[c] > 0.0 {
                (0..d)
                    .map(|j| (self.sum[c * d + j] / self.count[c]) as f32)
                    .collect()
            } else {
                if far.is_empty() {
                    far = (0..self.mind.len()).collect();
                    far.sort_by(|&a, &b| self.mind[b].total_cmp(&self.mind[a]).then(a.cmp(&b)));
                    far.truncate(k);
                    far.reverse();
                }
                let r = far.pop().unwrap_or(0);
                x[r * d..(r + 1) * d].to_vec()
            };
            moved |= new[..] != centres[c * d..(c + 1) * d];
            centres[c * d..(c + 1) * d].copy_from_slice(&new);
        }
        moved
    }
}

/// Assigns every row of `x` to its nearest centre using `‖x‖² − 2 x cᵀ + ‖c‖²` (one matrix
/// product per block) and accumulates the clusters' counts, sums and (when `squares`, else left
/// zero) sums of squares in f64.
fn assign_pass(x: &[f32], d: usize, centres: &[f32], k: usize, squares: bool) -> Assignment {
    let cnorm: Vec<f32> = centres
        .chunks_exact(d)
        .map(|c| c.iter().map(|v| v * v).sum())
        .collect();
    let mut out = Assignment {
        count: vec![0.0; k],
        sum: vec![0.0; k * d],
        sumsq: vec![0.0; k * d],
        mind: Vec::with_capacity(x.len() / d),
    };
    ordered_chunks(
        x,
        d,
        || vec![0f32; BLOCK * k],
        |dots, chunk| {
            let mut part = Assignment {
                count: vec![0.0; k],
                sum: vec![0.0; k * d],
                sumsq: vec![0.0; k * d],
                mind: Vec::with_capacity(chunk.len() / d),
            };
            for block in chunk.chunks(BLOCK * d) {
                let rows = block.len() / d;
                let dots = &mut dots[..rows * k];
                matmul(
                    MatMut::from_row_major_slice_mut(dots, rows, k),
                    Accum::Replace,
                    MatRef::from_row_major_slice(block, rows, d),
                    MatRef::from_row_major_slice(centres, k, d).transpose(),
                    1.0f32,
                    Par::Seq,
                );
                for (r, dr) in block.chunks_exact(d).zip(dots.chunks_exact(k)) {
                    let xn: f32 = r.iter().map(|v| v * v).sum();
                    let (mut best, mut bd) = (0, f32::INFINITY);
                    for (c, (&dot, &cn)) in dr.iter().zip(&cnorm).enumerate() {
                        let dist = cn - 2.0 * dot;
                        if dist < bd {
                            bd = dist;
                            best = c;
                        }
                    }
                    part.count[best] += 1.0;
                    let sum = &mut part.sum[best * d..(best + 1) * d];
                    sum.iter_mut().zip(r).for_each(|(s, &v)| *s += v as f64);
                    if squares {
                        let sq = &mut part.sumsq[best * d..(best + 1) * d];
                        sq.iter_mut()
                            .zip(r)
                            .for_each(|(s, &v)| *s += (v as f64).powi(2));
                    }
                    part.mind.push((bd + xn).max(0.0));
                }
            }
            part
        },
        |p| {
            out.count
                .iter_mut()
                .zip(&p.count)
                .for_each(|(a, b)| *a += b);
            out.sum.iter_mut().zip(&p.sum).for_each(|(a, b)| *a += b);
            out.sumsq
                .iter_mut()
                .zip(&p.sumsq)
                .for_each(|(a, b)| *a += b);
            out.mind.extend_from_slice(&p.mind);
        },
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn points(n: usize, d: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n * d).map(|_| rng.random_range(-5.0f32..5.0)).collect()
    }

    #[test]
    fn assignment_matches_brute_force_nearest_centre() {
        let (n, d, k) = (3000, 7, 9);
        let x = points(n, d, 1);
        let centres = points(k, d, 2);
        let a = assign_pass(&x, d, &centres, k, true);
        let mut count = vec![0f64; k];
        let mut sum = vec![0f64; k * d];
        for (i, r) in x.chunks_exact(d).enumerate() {
            let dist = |c: usize| dist2_f64(r, &centres[c * d..(c + 1) * d]);
            let best = (0..k).min_by(|&a, &b| dist(a).total_cmp(&dist(b))).unwrap();
            count[best] += 1.0;
            for j in 0..d {
                sum[best * d + j] += r[j] as f64;
            }
            assert!((a.mind[i] as f64 - dist(best)).abs() < 1e-3 * (1.0 + dist(best)));
        }
        assert_eq!(a.count, count);
        for (u, v) in a.sum.iter().zip(&sum) {
            assert!((u - v).abs() < 1e-9 * (1.0 + v.abs()));
        }
    }

    fn dist2_f64(a: &[f32], b: &[f32]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(&u, &v)| (u as f64 - v as f64).powi(2))
            .sum()
    }

    #[test]
    fn kmeans_plus_plus_picks_distinct_rows() {
        let (n, d, k) = (500, 3, 20);
        let x = points(n, d, 3);
        let c = kmeans_plus_plus(&x, d, k, &mut ChaCha8Rng::seed_from_u64(0));
        let mut rows: Vec<usize> = c
            .chunks_exact(d)
            .map(|c| x.chunks_exact(d).position(|r| r == c).expect("a data row"))
            .collect();
        rows.sort_unstable();
        rows.dedup();
        assert_eq!(rows.len(), k);
        // Fewer distinct rows than centres: no panic, every centre is that row.
        let same = [1.0f32, 2.0, 3.0].repeat(30);
        let c = kmeans_plus_plus(&same, d, 5, &mut ChaCha8Rng::seed_from_u64(0));
        assert_eq!(c, [1.0f32, 2.0, 3.0].repeat(5));
    }

    #[test]
    fn default_parameters_are_valid_for_any_k() {
        for k in [1, 16, 100_000, 100_001, 999_999] {
            let p = GmmParams::new(k);
            assert!(p.validate().is_ok(), "k = {k}");
            assert!(p.kmeans_sample.unwrap() >= k);
        }
    }

    #[test]
    fn lloyd_update_moves_empty_clusters_to_the_farthest_rows() {
        let d = 1;
        let x = [0.0f32, 0.1, 0.2, 10.0];
        // The second centre is far from everything: its cluster is empty.
        let mut centres = vec![0.0f32, 100.0];
        let a = assign_pass(&x, d, &centres, 2, true);
        assert_eq!(a.count, vec![4.0, 0.0]);
        assert!(a.update_centres(&x, d, &mut centres));
        assert_eq!(centres, vec![2.575, 10.0]);
    }
}
