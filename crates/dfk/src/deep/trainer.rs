//! The alternating trainer (GMKL-style, method.md §2): encode → solve the SVMs (warm start) →
//! back-propagate the SVM objective into the GMM → Armijo step that re-encodes and re-solves.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::data::ImageSet;
use super::history::{DeepHistory, IterationRecord};
use super::line_search::{Outcome, Trial};
use super::params::{DeepParams, GmmMode};
use super::theta::{Displacement, Floors, Theta};
use crate::error::{Error, Result};
use crate::fisher::{FisherEncoder, FisherOptions, ForwardCache};
use crate::gmm::Gmm;
use crate::metrics;
use crate::npy::write_bytes_atomic;
use crate::svm::{train_one_vs_rest_below, BinarySvm, Labels, OneVsRest, OneVsRestOutcome};

/// The images the trainer sees: training images (the objective), optional validation images
/// (model selection and early stopping) and optional test images (reported only).
#[derive(Clone, Copy, Debug)]
pub struct DeepData<'a> {
    /// Images whose SVM objective is minimised.
    pub train: &'a ImageSet,
    /// Held-out images: the iterate with the best score here is kept.
    pub val: Option<&'a ImageSet>,
    /// Images scored at every iteration for the report; never used for any decision.
    pub test: Option<&'a ImageSet>,
}

/// Where the trainer saves its state after every iteration, and whether to continue from it.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// Checkpoint file (JSON, written atomically).
    pub path: PathBuf,
    /// Continue from `path` when it exists (the settings other than the stopping rules, the
    /// initial GMMs and the images must match; the file is checked whole before it is used);
    /// otherwise start afresh.
    pub resume: bool,
    /// How the caller made the initial GMMs (for `dfk deep`: the EM settings, by flag), as
    /// `(name, value)` pairs. When not empty, the checkpoint records them with the GMMs, so
    /// that a resumed run can take the GMMs from it instead of making them again
    /// ([`resume_initial_gmms`]).
    pub origin: Vec<(String, String)>,
}

/// The initial GMMs as the caller gave them, and how it made them ([`Checkpoint::origin`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Origin {
    settings: BTreeMap<String, String>,
    gmms: Vec<Gmm>,
}

impl Origin {
    fn new(cp: Option<&Checkpoint>, init: &[Gmm]) -> Option<Self> {
        let cp = cp.filter(|cp| !cp.origin.is_empty())?;
        Some(Self {
            settings: cp.origin.iter().cloned().collect(),
            gmms: init.to_vec(),
        })
    }
}

/// A trained Deep Fisher Kernel: the kept (best-validated) GMMs and their SVMs.
#[derive(Clone, Debug)]
pub struct DeepModel {
    /// Shared or per-class GMMs.
    pub mode: GmmMode,
    /// Learned GMMs: one (shared) or one per class.
    pub gmms: Vec<Gmm>,
    /// The GMMs training started from, in the same order.
    pub initial: Vec<Gmm>,
    /// SVMs matching `gmms`: one with a model per class (shared), or one per class with a
    /// single model each (per-class).
    pub svms: Vec<OneVsRest>,
    /// Fisher vector settings the SVMs were trained with.
    pub fisher: FisherOptions,
    /// Per-iteration record.
    pub history: DeepHistory,
}

impl DeepModel {
    /// Scores (`images × classes`) of the images of `set`: class c's SVM applied to the Fisher
    /// vector under its GMM.
    pub fn scores(&self, set: &ImageSet) -> Result<Vec<f32>> {
        set.validate()?;
        // The fields are public: a model of another shape is an error, not a silent zero.
        if self.gmms.is_empty() || self.gmms.len() != self.svms.len() {
            return Err(Error::Invalid(format!(
                "the model has {} GMMs and {} SVM sets: expected one SVM set per GMM, at least one",
                self.gmms.len(),
                self.svms.len()
            )));
        }
        if self.mode == GmmMode::Shared && self.gmms.len() != 1 {
            return Err(Error::Invalid(format!(
                "a shared-mode model has {} GMMs: expected 1",
                self.gmms.len()
            )));
        }
        if self.mode == GmmMode::PerClass {
            if let Some(i) = self.svms.iter().position(|s| s.models.len() != 1) {
                return Err(Error::Invalid(format!(
                    "per-class model: GMM {i}'s SVMs hold {} models: expected one (its class's)",
                    self.svms[i].models.len()
                )));
            }
        }
        if let Some(gmm) = self.gmms.first().filter(|g| g.d() != set.d) {
            return Err(Error::dim(
                "descriptor dimension of the image set (the model's GMM)",
                gmm.d(),
                set.d,
            ));
        }
        let mut groups = Vec::with_capacity(self.gmms.len());
        for (g, s) in self.gmms.iter().zip(&self.svms) {
            groups.push((g.clone(), s, tasks_of(self.mode, groups.len(), s)));
        }
        let classes = self.svms.iter().map(|s| s.models.len()).sum();
        let mut out = vec![0f32; set.len() * classes];
        for (gmm, svm, tasks) in &groups {
            let enc = FisherEncoder::new(gmm, self.fisher)?;
            let feats = encode_features(&enc, set)?;
            // The model's fields are public: an SVM of another width is an error, not a panic.
            let scores = svm.try_scores(&feats, set.len())?;
            scatter_scores(&scores, tasks, classes, &mut out);
        }
        Ok(out)
    }

    /// Accuracy (multi-class) or mAP (multi-label) on `set`.
    pub fn evaluate(&self, set: &ImageSet) -> Result<f64> {
        set.validate()?;
        let classes: usize = self.svms.iter().map(|s| s.models.len()).sum();
        if set.labels.classes() != classes {
            return Err(Error::dim(
                "classes of the image set's labels (the model's classes)",
                classes,
                set.labels.classes(),
            ));
        }
        metric(set, &self.scores(set)?)
    }
}

/// Stop reason that a resumed run with a larger budget may continue from.
const BUDGET: &str = "iteration budget reached";

/// The SVM state kept between iterations (for warm starts) and in checkpoints.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct SvmState {
    classes: usize,
    dim: usize,
    multilabel: bool,
    models: Vec<BinaryState>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct BinaryState {
    w: Vec<f32>,
    b: f32,
    alpha: Vec<f64>,
    primal: f64,
    dual: f64,
    iterations: usize,
}

impl SvmState {
    fn from_ovr(s: &OneVsRest) -> Self {
        Self {
            classes: s.classes,
            dim: s.dim,
            multilabel: s.multilabel,
            models: s
                .models
                .iter()
                .map(|m| BinaryState {
                    w: m.w.clone(),
                    b: m.b,
                    alpha: m.alpha.clone(),
                    primal: m.primal,
                    dual: m.dual,
                    iterations: m.iterations,
                })
                .collect(),
        }
    }

    fn to_ovr(&self) -> OneVsRest {
        OneVsRest {
            classes: self.classes,
            dim: self.dim,
            multilabel: self.multilabel,
            models: self
                .models
                .iter()
                .map(|m| BinarySvm {
                    w: m.w.clone(),
                    b: m.b,
                    alpha: m.alpha.clone(),
                    primal: m.primal,
                    dual: m.dual,
                    iterations: m.iterations,
                })
                .collect(),
        }
    }
}

/// One GMM being learned and the tasks (classes) whose objective it minimises.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct GroupState {
    tasks: Vec<usize>,
    init: Theta,
    theta: Theta,
    floors: Floors,
    svm: SvmState,
    objective: f64,
    /// Training scores (`images × tasks`) at `theta`.
    train_scores: Vec<f32>,
    /// First step of the next line search.
    step: f64,
    /// False once a line search found no decrease: the GMM then stays where it is.
    active: bool,
    /// The training images encoded at `theta` (by the accepted line-search trial), reused by
    /// the next backward pass; not checkpointed (a resumed run re-encodes once, identically).
    /// Kept with one GMM only: per-class mode would hold every class's N × 2KD vectors.
    #[serde(skip)]
    encoded: Option<Encoded>,
    /// The encoding before `encoded` (Fisher vectors and forward cache), whose memory the
    /// next line search's first trial reuses (writing into fresh pages of an N × 2KD
    /// allocation, and of the stored posteriors, costs time).
    #[serde(skip)]
    spare: Option<Encoded>,
}

/// Whether the encoding of the training set is kept between iterations (see
/// [`GroupState::encoded`]): with a single GMM it saves a pass, with one GMM per class it
/// would multiply the memory by the number of classes.
fn keep_encoding(groups: usize) -> bool {
    groups == 1
}

/// The memory the forward cache may use for the training images' posteriors: only worth
/// spending when the encoding is kept for the backward pass.
fn posterior_budget(keep_encoding: bool, params: &DeepParams) -> usize {
    if keep_encoding {
        params.max_posterior_bytes
    } else {
        0
    }
}

/// Fisher vectors of the training images at one θ and the encoder's forward cache.
#[derive(Clone, Debug)]
struct Encoded {
    feats: Vec<f32>,
    cache: ForwardCache,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Best {
    iteration: usize,
    metric: Option<f64>,
    thetas: Vec<Theta>,
    svms: Vec<SvmState>,
}

/// Everything needed to continue a run exactly where it stopped.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct TrainState {
    format: String,
    fingerprint: String,
    /// The settings that shaped the state, by name ([`run_settings`]); empty in checkpoints
    /// written before they were recorded (only the fingerprint is compared then).
    #[serde(default)]
    settings: BTreeMap<String, String>,
    train_images: usize,
    train_rows: usize,
    iteration: usize,
    groups: Vec<GroupState>,
    best: Best,
    history: DeepHistory,
    stop: Option<String>,
    /// The relative decrease of the objective in the latest iteration (for the stopping
    /// rules of a resumed run; absent in checkpoints written before it was recorded).
    #[serde(default)]
    last_decrease: Option<f64>,
    /// Worker threads of the run that wrote the checkpoint: the SVM solves group their
    /// classes by thread count, so a run resumed with another count is not the uninterrupted
    /// run bit for bit (absent in checkpoints written before it was recorded).
    #[serde(default)]
    threads: Option<usize>,
    /// The initial GMMs and how they were made (absent when the caller gave no origin, and in
    /// checkpoints written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    origin: Option<Origin>,
    /// CRC-32 of the checkpoint's JSON without this field ([`save_checkpoint`]; absent in
    /// checkpoints written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    checksum: Option<String>,
}

const CHECKPOINT_FORMAT: &str = "dfk-deep-checkpoint-1";

/// Time spent in each phase of an iteration.
#[derive(Default)]
struct Timers {
    encode: f64,
    svm: f64,
}

/// Trains the GMM(s) against the SVM objective (method.md §2).
///
/// Starting from `init` (one GMM; in per-class mode also one per class), iteration 0 encodes
/// the training images, solves the one-vs-rest SVMs and records the plain Fisher kernel. Each
/// further iteration, for every GMM θ:
///
/// 1. upstream g_n = Σ_c −α_{c,n} y_{c,n} w_c over the GMM's tasks (the bias does not depend
///    on θ), and ∇J(θ) = Σ_n (∂φ_θ(X_n)/∂θ)ᵀ g_n by the FV backward pass (Danskin's theorem);
/// 2. direction d from [`Theta::descent_direction`] (per-group normalised);
/// 3. Armijo line search along d, each trial re-encoding the images and re-solving the SVMs
///    warm-started from the current duals; the floors are applied to every trial point and a
///    trial with non-finite values counts as a failure.
///
/// Then the training/validation/test scores are recorded, the best-validated iterate is kept,
/// and the state is checkpointed. Stops on the iteration budget, a relative decrease below
/// `rel_tol`, `patience` iterations without validation improvement, or when no GMM can
/// decrease its objective any more.
pub fn train_deep(
    init: &[Gmm],
    data: &DeepData,
    params: &DeepParams,
    checkpoint: Option<&Checkpoint>,
) -> Result<DeepModel> {
    params.validate()?;
    let train = data.train;
    // The sets' fields are public: check them before anything indexes them.
    for (what, set) in [
        ("training", Some(train)),
        ("validation", data.val),
        ("test", data.test),
    ] {
        if let Some(set) = set {
            set.validate()
                .map_err(|e| Error::Invalid(format!("the {what} images: {e}")))?;
        }
    }
    for (what, set) in [("validation", data.val), ("test", data.test)] {
        if let Some(set) = set {
            if set.d != train.d {
                return Err(Error::dim(
                    format!("{what} descriptor dimension"),
                    train.d,
                    set.d,
                ));
            }
            if set.labels.classes() != train.labels.classes() {
                return Err(Error::dim(
                    format!("{what} classes"),
                    train.labels.classes(),
                    set.labels.classes(),
                ));
            }
        }
    }
    let classes = train.labels.classes();
    let inits = initial_gmms(init, params.mode, classes, train.d)?;
    // Every weight kept at or above the floor needs K · floor < 1 (else the floor could not
    // hold, and was silently not applied).
    if let Some(g) = inits
        .iter()
        .find(|g| g.k() as f64 * params.min_weight >= 1.0)
    {
        return Err(Error::param(
            "min_weight",
            params.min_weight,
            format!(
                "below 1/K = {} for K = {} components (K · floor < 1)",
                1.0 / g.k() as f64,
                g.k()
            ),
        ));
    }
    // Only a checkpoint records them (hashing the images costs a pass over them).
    let settings = match checkpoint {
        Some(_) => run_settings(params, &inits, data),
        None => Vec::new(),
    };

    let resumed = match checkpoint {
        Some(cp) if cp.resume && cp.path.exists() => {
            Some(load_state(&cp.path, params, &inits, data, &settings)?)
        }
        Some(cp) if !cp.resume && cp.path.exists() => {
            warn!(
                "replacing the checkpoint {} of an earlier run (--resume continues it)",
                cp.path.display()
            );
            None
        }
        Some(cp) if cp.resume => {
            warn!(
                "resume: no checkpoint at {}, so the run starts from iteration 0",
                cp.path.display()
            );
            None
        }
        _ => None,
    };
    let mut state = match resumed {
        Some(mut s) => {
            info!(
                "resuming from {} after iteration {}",
                checkpoint
                    .map(|c| c.path.display().to_string())
                    .unwrap_or_default(),
                s.iteration
            );
            // The stopping rules may differ from the run's: ask them again (the budget is
            // the loop's own test).
            s.stop = stop_rule(&s, data, params);
            let threads = rayon::current_num_threads();
            if let Some(was) = s.threads.filter(|&was| was != threads) {
                warn!(
                    "resuming with {threads} worker threads, but the checkpoint was written \
                     with {was}: the SVM solves, which group the classes by thread count, \
                     stop at other points within their tolerance, so the run continues but \
                     not bit for bit as it would have (--threads {was} continues it \
                     identically)"
                );
            }
            s.threads = Some(threads);
            if s.iteration > params.max_iter {
                warn!(
                    "the checkpoint is already at iteration {}, beyond the budget of {} \
                     iterations (--iters): the run is returned as it is, not cut back",
                    s.iteration, params.max_iter
                );
            }
            s
        }
        None => initial_state(&inits, data, params, &settings)?,
    };
    // The given GMMs passed the checks against a resumed checkpoint's, so they are its own.
    state.origin = Origin::new(checkpoint, init);
    if state.iteration == 0 {
        save_checkpoint(checkpoint, &state)?;
    }

    while state.stop.is_none() {
        if state.iteration >= params.max_iter {
            state.stop = Some(BUDGET.into());
        } else {
            iterate(&mut state, data, params)?;
        }
        save_checkpoint(checkpoint, &state)?;
    }
    let reason = state.stop.clone().unwrap_or_default();
    info!(
        "stopped after iteration {}: {reason}; keeping iteration {}",
        state.iteration, state.best.iteration
    );
    state.history.stop_reason = reason;
    state.history.best_iteration = state.best.iteration;
    let gmms = state
        .best
        .thetas
        .iter()
        .map(Theta::to_gmm)
        .collect::<Result<Vec<_>>>()?;
    Ok(DeepModel {
        mode: params.mode,
        gmms,
        initial: state
            .groups
            .iter()
            .map(|g| g.init.to_gmm())
            .collect::<Result<Vec<_>>>()?,
        svms: state.best.svms.iter().map(SvmState::to_ovr).collect(),
        fisher: params.fisher,
        history: state.history,
    })
}

/// One GMM (shared) or one per class (per-class mode; a single given GMM is copied).
fn initial_gmms(init: &[Gmm], mode: GmmMode, classes: usize, d: usize) -> Result<Vec<Gmm>> {
    if let Some(g) = init.iter().find(|g| g.d() != d) {
        return Err(Error::dim("initial GMM dimension", d, g.d()));
    }
    match (mode, init.len()) {
        (GmmMode::Shared, 1) => Ok(init.to_vec()),
        (GmmMode::PerClass, 1) => Ok(vec![init[0].clone(); classes]),
        (GmmMode::PerClass, n) if n == classes => Ok(init.to_vec()),
        (GmmMode::Shared, n) => Err(Error::dim("initial GMMs (shared mode)", 1, n)),
        (GmmMode::PerClass, n) => Err(Error::dim(
            "initial GMMs (per-class mode: 1 or one per class)",
            classes,
            n,
        )),
    }
}

/// The tasks a GMM serves: all classes (shared) or class `index` (per-class).
fn tasks_of(mode: GmmMode, index: usize, svm: &OneVsRest) -> Vec<usize> {
    match mode {
        GmmMode::Shared => (0..svm.models.len()).collect(),
        GmmMode::PerClass => vec![index],
    }
}

/// Labels of a GMM's sub-problem: the full labels, or class `c` against the rest.
fn group_labels(labels: &Labels, tasks: &[usize]) -> Labels {
    if tasks.len() == labels.classes() {
        return labels.clone();
    }
    let n = labels.n();
    let ys: Vec<Vec<f32>> = tasks.iter().map(|&c| labels.binary(c)).collect();
    Labels::MultiLabel {
        targets: (0..n)
            .flat_map(|i| ys.iter().map(move |y| y[i] > 0.0))
            .collect(),
        classes: tasks.len(),
    }
}

fn initial_state(
    inits: &[Gmm],
    data: &DeepData,
    params: &DeepParams,
    settings: &[Setting],
) -> Result<TrainState> {
    let start = Instant::now();
    let train = data.train;
    let classes = train.labels.classes();
    // Checked on the whole labels: a per-class group's one-column labels would name its
    // class 0.
    crate::svm::check_every_class_has_samples(&train.labels)?;
    let mut timers = Timers::default();
    let mut groups = Vec::with_capacity(inits.len());
    for (i, gmm) in inits.iter().enumerate() {
        let tasks: Vec<usize> = match params.mode {
            GmmMode::Shared => (0..classes).collect(),
            GmmMode::PerClass => vec![i],
        };
        let floors = Floors::relative_to(gmm, params.variance_floor, params.min_weight);
        let given = Theta::from_gmm(gmm);
        let mut theta = given.clone();
        theta.project(&floors);
        // The floors hold from iteration 0: say when they move the starting GMM, since its
        // Fisher kernel is then not the plain EM model's.
        let raised = theta
            .log_std
            .iter()
            .zip(&given.log_std)
            .filter(|(a, b)| a != b)
            .count();
        let floored = given
            .weights()
            .iter()
            .filter(|&&w| w < params.min_weight)
            .count();
        if raised + floored > 0 {
            warn!(
                "initial GMM{}: {raised} of its {} standard deviations are below the variance \
                 floor and {floored} of its {} weights below the weight floor: raised before \
                 iteration 0 (--variance-floor, --min-weight)",
                if inits.len() > 1 {
                    format!(" {i}")
                } else {
                    String::new()
                },
                given.log_std.len(),
                given.logits.len()
            );
        }
        let labels = group_labels(&train.labels, &tasks);
        let budget = posterior_budget(keep_encoding(inits.len()), params);
        let (objective, ev) = evaluate_fully(&theta, train, &labels, params, budget, &mut timers)?
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "the initial GMM {i} gives non-finite Fisher vectors or SVM objective"
                ))
            })?;
        if budget > 0 {
            let (bytes, entries) = ev.encoded.cache.posterior_size();
            if ev.encoded.cache.has_posteriors() {
                info!(
                    "stored posteriors for the backward pass: {entries} entries, {:.1} MiB",
                    bytes as f64 / f64::from(1 << 20)
                );
            } else {
                warn!(
                    "the posteriors take more than the {} MiB allowed (--posterior-cache-mb): the backward pass recomputes them",
                    budget >> 20
                );
            }
        }
        groups.push(GroupState {
            tasks,
            init: theta.clone(),
            theta,
            floors,
            svm: SvmState::from_ovr(&ev.svm),
            objective,
            train_scores: ev.scores,
            step: params.line_search.initial_step,
            active: true,
            encoded: keep_encoding(inits.len()).then_some(ev.encoded),
            spare: None,
        });
    }
    let mut record = IterationRecord {
        iteration: 0,
        objective: groups.iter().map(|g| g.objective).sum(),
        svm_epochs: groups.iter().map(|g| epochs(&g.svm)).sum(),
        time_encode_s: timers.encode,
        time_svm_s: timers.svm,
        ..IterationRecord::default()
    };
    let best = Best {
        iteration: 0,
        metric: None,
        thetas: groups.iter().map(|g| g.theta.clone()).collect(),
        svms: groups.iter().map(|g| g.svm.clone()).collect(),
    };
    let mut state = TrainState {
        format: CHECKPOINT_FORMAT.into(),
        fingerprint: params.fingerprint(),
        settings: settings
            .iter()
            .map(|s| (s.name.to_string(), s.value.clone()))
            .collect(),
        train_images: train.len(),
        train_rows: train.data.len() / train.d,
        iteration: 0,
        groups,
        best,
        history: DeepHistory {
            metric: metric_name(&train.labels).into(),
            ..DeepHistory::default()
        },
        stop: None,
        last_decrease: None,
        threads: Some(rayon::current_num_threads()),
        origin: None,
        checksum: None,
    };
    score_and_select(&mut state, data, params, &mut record)?;
    record.time_total_s = start.elapsed().as_secs_f64();
    log_record(&record);
    state.history.records.push(record);
    Ok(state)
}

/// One gradient step for every active GMM, then scoring, model selection and stopping rules.
fn iterate(state: &mut TrainState, data: &DeepData, params: &DeepParams) -> Result<()> {
    let start = Instant::now();
    let train = data.train;
    let previous: f64 = state.groups.iter().map(|g| g.objective).sum();
    let mut record = IterationRecord {
        iteration: state.iteration + 1,
        ..IterationRecord::default()
    };
    let mut timers = Timers::default();
    let mut grad_sq = [0f64; 3];
    let mut steps = Vec::new();
    let keep = keep_encoding(state.groups.len());
    for group in state.groups.iter_mut().filter(|g| g.active) {
        let labels = group_labels(&train.labels, &group.tasks);
        let encoded = match group.encoded.take() {
            Some(e) => e,
            None => {
                let t = Instant::now();
                let enc = FisherEncoder::new(&group.theta.to_gmm()?, params.fisher)?;
                let e = encode(&enc, train, None, posterior_budget(keep, params))?;
                timers.encode += t.elapsed().as_secs_f64();
                e
            }
        };
        let t = Instant::now();
        let grad = gradient(&group.theta, &group.svm, train, &labels, params, &encoded)?;
        record.time_backward_s += t.elapsed().as_secs_f64();
        // Kept until the search accepts a step: if none is accepted, θ stays and so does this.
        group.encoded = keep.then_some(encoded);
        for (s, n) in grad_sq.iter_mut().zip(grad.group_norms()) {
            *s += n * n;
        }
        let dir = group.theta.descent_direction(&grad, params.groups);
        let slope = grad.dot(&dir);
        let warm = group.svm.to_ovr();
        let (theta0, floors) = (&group.theta, &group.floors);
        let mut spare = group.spare.take();
        // The step and duals of the last finite trial: a retry warm-starts from the duals
        // interpolated between θ's and that trial's at its own step.
        let mut last: Option<(f64, Vec<Vec<f64>>)> = None;
        let mut early = 0;
        let outcome =
            params
                .line_search
                .search(group.objective, slope, group.step, |t, threshold| {
                    let mut trial = theta0.step(t, &dir);
                    trial.project(floors);
                    let buffer = spare.take();
                    let start = match &last {
                        Some((t1, alphas)) => interpolate_duals(&warm, alphas, t / t1),
                        None => warm.clone(),
                    };
                    let ev = evaluate(
                        &trial,
                        train,
                        &labels,
                        params,
                        Some(&start),
                        buffer,
                        threshold,
                        posterior_budget(keep, params),
                        &mut timers,
                    )?;
                    Ok(match ev {
                        Some(Evaluated::Value(j, e)) => {
                            last =
                                Some((t, e.svm.models.iter().map(|m| m.alpha.clone()).collect()));
                            Trial::Value(j, (trial, e))
                        }
                        Some(Evaluated::Above { bound, alphas }) => {
                            early += 1;
                            last = Some((t, alphas));
                            Trial::Above(bound)
                        }
                        None => Trial::Invalid,
                    })
                })?;
        record.early_rejections += early;
        match outcome {
            Outcome::Accepted(a) => {
                record.trials += a.trials;
                let (theta, ev) = a.payload;
                group.theta = theta;
                group.svm = SvmState::from_ovr(&ev.svm);
                group.objective = a.value;
                group.train_scores = ev.scores;
                let before = std::mem::replace(&mut group.encoded, keep.then_some(ev.encoded));
                group.spare = before;
                group.step = a.next;
                steps.push(a.step);
            }
            Outcome::Failed { trials } => {
                record.trials += trials;
                record.failed_searches += 1;
                group.active = false;
                warn!(
                    "tasks {:?}: no decrease along the gradient after {trials} trials; this GMM stays fixed",
                    group.tasks
                );
            }
        }
    }
    state.iteration += 1;
    record.grad_norm = grad_sq.map(f64::sqrt);
    record.step = if steps.is_empty() {
        0.0
    } else {
        steps.iter().sum::<f64>() / steps.len() as f64
    };
    record.objective = state.groups.iter().map(|g| g.objective).sum();
    record.svm_epochs = state.groups.iter().map(|g| epochs(&g.svm)).sum();
    record.time_encode_s = timers.encode;
    record.time_svm_s = timers.svm;
    score_and_select(state, data, params, &mut record)?;
    record.time_total_s = start.elapsed().as_secs_f64();
    log_record(&record);
    state.history.records.push(record);

    let decrease = (previous - state.groups.iter().map(|g| g.objective).sum::<f64>())
        / previous.abs().max(f64::MIN_POSITIVE);
    state.last_decrease = Some(decrease);
    state.stop = stop_rule(state, data, params);
    Ok(())
}

/// Why the run stops after the state's latest iteration under `params`' stopping rules (the
/// budget aside), if it does. A resumed run asks again with its own rules, so that a looser
/// `rel_tol` or `patience` continues a run that stopped on a stricter one.
fn stop_rule(state: &TrainState, data: &DeepData, params: &DeepParams) -> Option<String> {
    if state.iteration == 0 {
        return None;
    }
    if state.groups.iter().all(|g| !g.active) {
        return Some("no GMM can decrease its objective along the gradient".into());
    }
    if let Some(decrease) = state.last_decrease {
        if params.rel_tol > 0.0 && decrease < params.rel_tol {
            return Some(format!(
                "relative decrease {decrease:.3e} below rel_tol {}",
                params.rel_tol
            ));
        }
    }
    if data.val.is_some()
        && params.patience > 0
        && state.iteration - state.best.iteration >= params.patience
    {
        return Some(format!(
            "no validation improvement for {} iterations",
            params.patience
        ));
    }
    None
}

/// Fills the metrics and displacement of `record` and updates the best iterate (highest
/// validation score; without validation images, the latest iterate).
fn score_and_select(
    state: &mut TrainState,
    data: &DeepData,
    params: &DeepParams,
    record: &mut IterationRecord,
) -> Result<()> {
    let train = data.train;
    let classes = train.labels.classes();
    let mut scores = vec![0f32; train.len() * classes];
    for g in &state.groups {
        scatter_scores(&g.train_scores, &g.tasks, classes, &mut scores);
    }
    fn named(set: &'static str) -> impl Fn(Error) -> Error {
        move |e| Error::Invalid(format!("{set} set: {e}"))
    }
    record.train_metric = metric(train, &scores).map_err(named("training"))?;
    let t = Instant::now();
    if let Some(val) = data.val {
        let scores = set_scores(&state.groups, val, params)?;
        record.val_metric = Some(metric(val, &scores).map_err(named("validation"))?);
    }
    if let Some(test) = data.test {
        let scores = set_scores(&state.groups, test, params)?;
        record.test_metric = Some(metric(test, &scores).map_err(named("test"))?);
    }
    record.time_eval_s = t.elapsed().as_secs_f64();
    let n = state.groups.len() as f64;
    let mut disp = Displacement::default();
    for g in &state.groups {
        let m = g.theta.displacement(&g.init);
        disp.means_in_sigma += m.means_in_sigma / n;
        disp.log_variance_rms += m.log_variance_rms / n;
        disp.weight_max_abs += m.weight_max_abs / n;
    }
    record.displacement = disp;
    let better = match (record.val_metric, state.best.metric) {
        (Some(v), Some(b)) => v > b,
        (Some(_), None) => true,
        (None, _) => true,
    };
    if better {
        state.best = Best {
            iteration: record.iteration,
            metric: record.val_metric,
            thetas: state.groups.iter().map(|g| g.theta.clone()).collect(),
            svms: state.groups.iter().map(|g| g.svm.clone()).collect(),
        };
    }
    Ok(())
}

fn log_record(r: &IterationRecord) {
    info!(
        "iteration {}: J {:.6} step {:.4} trials {} |grad| μ {:.3e} s {:.3e} a {:.3e} train {:.4} val {} test {} moved μ {:.3}σ logσ² {:.3} π {:.4} time encode {:.2}s svm {:.2}s backward {:.2}s eval {:.2}s total {:.2}s",
        r.iteration,
        r.objective,
        r.step,
        r.trials,
        r.grad_norm[0],
        r.grad_norm[1],
        r.grad_norm[2],
        r.train_metric,
        r.val_metric.map_or("-".into(), |v| format!("{v:.4}")),
        r.test_metric.map_or("-".into(), |v| format!("{v:.4}")),
        r.displacement.means_in_sigma,
        r.displacement.log_variance_rms,
        r.displacement.weight_max_abs,
        r.time_encode_s,
        r.time_svm_s,
        r.time_backward_s,
        r.time_eval_s,
        r.time_total_s,
    );
}

fn epochs(s: &SvmState) -> usize {
    s.models.iter().map(|m| m.iterations).sum()
}

/// Result of evaluating J at one θ.
struct Evaluation {
    svm: OneVsRest,
    scores: Vec<f32>,
    encoded: Encoded,
}

/// What [`evaluate`] found at one θ.
enum Evaluated {
    /// J and the encoding and SVMs it came from.
    Value(f64, Evaluation),
    /// The SVM solve was stopped once the dual bound certified J ≥ `bound` > the threshold;
    /// `alphas` are the duals it had reached.
    Above { bound: f64, alphas: Vec<Vec<f64>> },
}

/// Encodes `set` under θ (into `buffer` when it has the right size) and solves the SVMs
/// (warm-started from `warm`), stopping the solve as soon as the dual bound shows that J
/// exceeds `stop_above` ([`train_one_vs_rest_below`]; +∞ never stops). `None` when θ, the
/// Fisher vectors or J are not finite.
#[allow(clippy::too_many_arguments)]
fn evaluate(
    theta: &Theta,
    set: &ImageSet,
    labels: &Labels,
    params: &DeepParams,
    warm: Option<&OneVsRest>,
    buffer: Option<Encoded>,
    stop_above: f64,
    posterior_bytes: usize,
    timers: &mut Timers,
) -> Result<Option<Evaluated>> {
    let gmm = match theta.to_gmm() {
        Ok(g) => g,
        Err(Error::NonFinite { .. } | Error::Invalid(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    let t = Instant::now();
    let enc = FisherEncoder::new(&gmm, params.fisher)?;
    let encoded = match encode(&enc, set, buffer, posterior_bytes) {
        Ok(e) => e,
        Err(Error::NonFinite { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let feats = &encoded.feats;
    timers.encode += t.elapsed().as_secs_f64();
    let t = Instant::now();
    let n = set.len();
    // The solver checks that the Fisher vectors are finite (one pass over them, not two).
    let outcome = match train_one_vs_rest_below(
        feats,
        n,
        enc.len(),
        labels,
        &params.svm,
        params.weighting,
        warm,
        stop_above,
    ) {
        Ok(o) => o,
        Err(Error::NonFinite { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    timers.svm += t.elapsed().as_secs_f64();
    let svm = match outcome {
        OneVsRestOutcome::Solved(svm) => svm,
        OneVsRestOutcome::Exceeded { bound, alphas } => {
            return Ok(Some(Evaluated::Above { bound, alphas }))
        }
    };
    let j = svm.objective();
    if !j.is_finite() {
        return Ok(None);
    }
    let scores = svm.scores(feats, n);
    Ok(Some(Evaluated::Value(
        j,
        Evaluation {
            svm,
            scores,
            encoded,
        },
    )))
}

/// [`evaluate`] from a cold start, without a threshold: `Some((J, …))`, or `None` when θ, the
/// Fisher vectors or J are not finite.
fn evaluate_fully(
    theta: &Theta,
    set: &ImageSet,
    labels: &Labels,
    params: &DeepParams,
    posterior_bytes: usize,
    timers: &mut Timers,
) -> Result<Option<(f64, Evaluation)>> {
    match evaluate(
        theta,
        set,
        labels,
        params,
        None,
        None,
        f64::INFINITY,
        posterior_bytes,
        timers,
    )? {
        Some(Evaluated::Value(j, ev)) => Ok(Some((j, ev))),
        Some(Evaluated::Above { .. }) => Err(Error::Invalid(
            "the SVM solve stopped on a dual bound without a threshold".into(),
        )),
        None => Ok(None),
    }
}

/// `warm` with each model's duals moved a fraction `r` of the way to `alphas`:
/// `α + r (α' − α)` (the solver clips them to `[0, C]`).
fn interpolate_duals(warm: &OneVsRest, alphas: &[Vec<f64>], r: f64) -> OneVsRest {
    let mut out = warm.clone();
    for (m, a1) in out.models.iter_mut().zip(alphas) {
        for (a, &b) in m.alpha.iter_mut().zip(a1) {
            *a += r * (b - *a);
        }
    }
    out
}

/// Encodes `set` with its forward cache (holding the posteriors if they fit in
/// `posterior_bytes`), reusing the memory of `buffer`, an encoding that is no longer needed
/// (its vectors when they have the right size; every value is overwritten).
fn encode(
    enc: &FisherEncoder,
    set: &ImageSet,
    buffer: Option<Encoded>,
    posterior_bytes: usize,
) -> Result<Encoded> {
    let len = set.len() * enc.len();
    let (feats, recycle) = buffer.map_or((None, None), |b| (Some(b.feats), Some(b.cache)));
    let mut feats = feats
        .filter(|b| b.len() == len)
        .unwrap_or_else(|| vec![0f32; len]);
    let cache = enc.encode_batch_keeping(
        &set.data,
        &set.offsets,
        &mut feats,
        posterior_bytes,
        recycle,
    )?;
    Ok(Encoded { feats, cache })
}

/// Fisher vectors only (validation and test scoring).
fn encode_features(enc: &FisherEncoder, set: &ImageSet) -> Result<Vec<f32>> {
    let mut feats = vec![0f32; set.len() * enc.len()];
    enc.encode_batch(&set.data, &set.offsets, &mut feats)?;
    Ok(feats)
}

/// ∇J(θ) = Σ_n (∂φ_θ(X_n)/∂θ)ᵀ g_n with g_n = Σ_c −α_{c,n} y_{c,n} w_c (Danskin's theorem:
/// the SVM solution is held fixed; the bias is not a function of θ), back-propagated through
/// the forward pass `encoded` made at θ.
fn gradient(
    theta: &Theta,
    svm: &SvmState,
    set: &ImageSet,
    labels: &Labels,
    params: &DeepParams,
    encoded: &Encoded,
) -> Result<Theta> {
    let gmm = theta.to_gmm()?;
    let enc = FisherEncoder::new(&gmm, params.fisher)?;
    let dim = enc.len();
    let n = set.len();
    let ys: Vec<Vec<f32>> = (0..svm.models.len()).map(|c| labels.binary(c)).collect();
    for m in &svm.models {
        if m.alpha.len() != n || m.w.len() < dim {
            return Err(Error::Invalid(format!(
                "SVM state does not match the training set: {} duals for {n} images, {} weights for {dim} features",
                m.alpha.len(),
                m.w.len()
            )));
        }
    }
    // Image i's upstream gradient is Σ_c coefs[i][c] · w_c, formed per image by the backward
    // pass (an images × dim matrix would be written and read once more).
    let classes = svm.models.len();
    let mut coefs = vec![0f32; n * classes];
    for (c, (m, y)) in svm.models.iter().zip(&ys).enumerate() {
        for (i, (&a, &yi)) in m.alpha.iter().zip(y).enumerate() {
            coefs[i * classes + c] = -(a * f64::from(yi)) as f32;
        }
    }
    let weights: Vec<f32> = svm
        .models
        .iter()
        .flat_map(|m| m.w[..dim].iter().copied())
        .collect();
    let g = enc.backward_batch_cached_combined(
        &set.data,
        &set.offsets,
        &encoded.feats,
        &encoded.cache,
        &coefs,
        &weights,
    )?;
    Ok(Theta {
        k: theta.k,
        d: theta.d,
        means: g.means,
        log_std: g.log_std,
        logits: g.weight_logits,
    })
}

/// Scores of `set` (`images × classes`) under every GMM and its SVMs.
fn set_scores(groups: &[GroupState], set: &ImageSet, params: &DeepParams) -> Result<Vec<f32>> {
    let classes = set.labels.classes();
    let mut out = vec![0f32; set.len() * classes];
    for g in groups {
        let enc = FisherEncoder::new(&g.theta.to_gmm()?, params.fisher)?;
        let feats = encode_features(&enc, set)?;
        let s = g.svm.to_ovr().scores(&feats, set.len());
        scatter_scores(&s, &g.tasks, classes, &mut out);
    }
    Ok(out)
}

/// Writes the columns of `part` (`images × tasks.len()`) into columns `tasks` of `out`.
fn scatter_scores(part: &[f32], tasks: &[usize], classes: usize, out: &mut [f32]) {
    for (src, dst) in part
        .chunks_exact(tasks.len())
        .zip(out.chunks_exact_mut(classes))
    {
        for (&v, &c) in src.iter().zip(tasks) {
            dst[c] = v;
        }
    }
}

/// Name of [`metric`]'s score for `labels`.
fn metric_name(labels: &Labels) -> &'static str {
    match labels {
        Labels::MultiClass { .. } => "accuracy",
        Labels::MultiLabel { .. } => "mAP",
    }
}

/// Accuracy of the arg-max class (multi-class) or mean AP (multi-label) over the classes
/// with a positive image (as `dfk eval` leaves out the others: their AP is undefined; a
/// held-out or test set may well lack a rare class), each class's AP without the images
/// flagged difficult for it (VOC's protocol). An error when no class has a positive.
fn metric(set: &ImageSet, scores: &[f32]) -> Result<f64> {
    match &set.labels {
        Labels::MultiClass { labels, classes } => {
            let pred = crate::svm::argmax_rows(scores, *classes);
            metrics::accuracy(&pred, labels)
        }
        labels @ Labels::MultiLabel { classes, .. } => {
            let n = set.len();
            let ignore = (!set.difficult.is_empty()).then_some(&set.difficult[..]);
            let mut aps = Vec::with_capacity(*classes);
            for c in 0..*classes {
                let (col, pos) = metrics::class_column(scores, labels, c, ignore);
                if pos.contains(&true) {
                    aps.push(
                        metrics::average_precision(&col, &pos)
                            .map_err(|e| Error::Invalid(format!("AP of class {c}: {e}")))?,
                    );
                }
            }
            if aps.is_empty() {
                return Err(Error::Invalid(format!(
                    "mAP of {n} images: no class has a positive image"
                )));
            }
            metrics::mean_ap(&aps)
        }
    }
}

/// Writes the state as JSON with its CRC-32 (of the same JSON without the `checksum` field)
/// as the first field.
fn save_checkpoint(cp: Option<&Checkpoint>, state: &TrainState) -> Result<()> {
    let Some(cp) = cp else { return Ok(()) };
    let body = state_json(state).map_err(|e| Error::format(&cp.path, e))?;
    // `body` is a JSON object, "{...}": the checksum goes in front of its first field.
    let mut bytes = format!("{{\"checksum\":\"{}\",", checksum(&body)).into_bytes();
    bytes.extend_from_slice(&body[1..]);
    write_bytes_atomic(&cp.path, &bytes)
}

/// The state's JSON without its checksum: what the checksum covers.
fn state_json(state: &TrainState) -> std::result::Result<Vec<u8>, String> {
    let mut state = std::borrow::Cow::Borrowed(state);
    if state.checksum.is_some() {
        state.to_mut().checksum = None;
    }
    let body = serde_json::to_vec(&state)
        .map_err(|e| format!("cannot serialise the trainer state: {e}"))?;
    if body.len() < 2 || body[0] != b'{' || body[1] == b'}' {
        return Err("the trainer state did not serialise to a JSON object".into());
    }
    Ok(body)
}

fn checksum(body: &[u8]) -> String {
    format!("crc32:{:08x}", crc32fast::hash(body))
}

/// Reads a checkpoint and checks its checksum (when it has one: earlier checkpoints do not).
fn read_state(path: &Path) -> Result<TrainState> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let state: TrainState = serde_json::from_slice(&bytes)
        .map_err(|e| Error::format(path, format!("not a dfk deep checkpoint: {e}")))?;
    if state.format != CHECKPOINT_FORMAT {
        return Err(Error::format(
            path,
            format!(
                "checkpoint format {:?}, expected {CHECKPOINT_FORMAT:?}",
                state.format
            ),
        ));
    }
    if let Some(recorded) = &state.checksum {
        // The JSON of the values read, as the writer made it: it round-trips every value
        // exactly, so any change to a value (or a damaged digit) changes the checksum.
        let computed = checksum(&state_json(&state).map_err(|e| Error::format(path, e))?);
        if *recorded != computed {
            return Err(Error::format(
                path,
                format!(
                    "the checkpoint's content does not match its checksum ({recorded} recorded, \
                     {computed} computed): it was changed or damaged after it was written; \
                     remove it to start afresh"
                ),
            ));
        }
    }
    Ok(state)
}

/// The initial GMMs recorded in the checkpoint at `path`, when it was made with the same
/// [`Checkpoint::origin`]: a resumed run can then skip making them again (for `dfk deep`, EM).
///
/// `Ok(None)` when there is no checkpoint or it records no origin (earlier checkpoints, or
/// written without one); an error, naming each setting that differs, when its origin is
/// another. The trainer still checks the whole checkpoint when it resumes.
pub fn resume_initial_gmms(path: &Path, origin: &[(String, String)]) -> Result<Option<Vec<Gmm>>> {
    if !path.exists() {
        return Ok(None);
    }
    let state = read_state(path)?;
    let Some(recorded) = state.origin else {
        return Ok(None);
    };
    let given: BTreeMap<String, String> = origin.iter().cloned().collect();
    let differ: Vec<String> = recorded
        .settings
        .keys()
        .chain(given.keys().filter(|k| !recorded.settings.contains_key(*k)))
        .filter(|k| recorded.settings.get(*k) != given.get(*k))
        .map(|k| {
            let show = |v: Option<&String>, place: &str| {
                v.map_or(format!("not {place}"), |v| format!("{v:?} {place}"))
            };
            format!(
                "{k}: {}, {}",
                show(recorded.settings.get(k), "in the checkpoint"),
                show(given.get(k), "given")
            )
        })
        .collect();
    if !differ.is_empty() {
        return Err(Error::format(
            path,
            format!(
                "the checkpoint's initial GMM was made with other settings: {}; resume with \
                 the checkpoint's settings, or remove the checkpoint to start afresh",
                differ.join("; ")
            ),
        ));
    }
    if recorded.gmms.is_empty() {
        return Err(Error::format(
            path,
            "origin.gmms is empty: expected at least one GMM",
        ));
    }
    // Deserialising checked each GMM (`Gmm::from_normalised`), keeping the recorded weights.
    Ok(Some(recorded.gmms))
}

/// One setting that shapes the trainer's state: recorded in the checkpoint, so that a resumed
/// run can name what differs.
struct Setting {
    /// Name, the key in the checkpoint's `settings`.
    name: &'static str,
    /// What sets it on the `dfk deep` command line (empty where nothing does).
    flag: &'static str,
    /// The value, as text.
    value: String,
}

/// Every setting that shapes the state: the GMMs' shapes, the labels, the images (their
/// content, by hash) and the parameters other than the stopping rules.
fn run_settings(params: &DeepParams, inits: &[Gmm], data: &DeepData) -> Vec<Setting> {
    let train = data.train;
    let mut ks: Vec<String> = inits.iter().map(|g| g.k().to_string()).collect();
    ks.dedup();
    let set = |s: Option<&ImageSet>| {
        s.map_or("none".to_string(), |s| {
            format!(
                "{} images, {} descriptors, content hash {:016x}",
                s.len(),
                s.data.len() / s.d,
                s.content_hash()
            )
        })
    };
    let mut out = vec![
        Setting {
            name: "K",
            flag: "--k or --gmm",
            value: ks.join(","),
        },
        Setting {
            name: "D",
            flag: "the descriptors: --descriptors, or --config for images",
            value: train.d.to_string(),
        },
        Setting {
            name: "labels",
            flag: "--multilabel",
            value: match train.labels {
                Labels::MultiClass { .. } => "multi-class".into(),
                Labels::MultiLabel { .. } => "multi-label".into(),
            },
        },
        Setting {
            name: "classes",
            flag: "--labels",
            value: train.labels.classes().to_string(),
        },
        Setting {
            name: "training set",
            flag: "the training data, --labels, --max-train, --val-fraction, --seed",
            value: set(Some(train)),
        },
        Setting {
            name: "validation set",
            flag: "--val-fraction, --seed",
            value: set(data.val),
        },
        Setting {
            name: "test set",
            flag: "the test data, --max-test",
            value: set(data.test),
        },
    ];
    out.extend(
        params
            .settings()
            .into_iter()
            .map(|(name, flag, value)| Setting { name, flag, value }),
    );
    out
}

fn load_state(
    path: &Path,
    params: &DeepParams,
    inits: &[Gmm],
    data: &DeepData,
    settings: &[Setting],
) -> Result<TrainState> {
    let state = read_state(path)?;
    if !state.settings.is_empty() {
        let differ: Vec<String> = settings
            .iter()
            .filter(|s| state.settings.get(s.name) != Some(&s.value))
            .map(|s| {
                let what = if s.flag.is_empty() {
                    s.name.to_string()
                } else {
                    format!("{} ({})", s.name, s.flag)
                };
                let was = state
                    .settings
                    .get(s.name)
                    .map_or("not recorded".to_string(), |v| format!("{v:?}"));
                format!("{what}: {was} in the checkpoint, {:?} given", s.value)
            })
            .collect();
        if !differ.is_empty() {
            return Err(Error::format(
                path,
                format!(
                    "the checkpoint was made with other settings: {}; resume with the checkpoint's settings, or remove the checkpoint to start afresh",
                    differ.join("; ")
                ),
            ));
        }
    }
    if state.fingerprint != params.fingerprint() {
        // Only a checkpoint without recorded settings (an earlier dfk's) gets here with a
        // difference: the list above names each changed setting otherwise.
        return Err(Error::format(
            path,
            format!(
                "the checkpoint was made with other settings, and it predates the record of \
                 each setting, so they cannot be named one by one; remove the checkpoint to \
                 start afresh, or resume with the settings of that run (in the checkpoint: \
                 {}; now: {})",
                state.fingerprint,
                params.fingerprint()
            ),
        ));
    }
    let train = data.train;
    let rows = train.data.len() / train.d;
    if state.train_images != train.len() || state.train_rows != rows {
        return Err(Error::format(
            path,
            format!(
                "the checkpoint was made on {} images / {} descriptors, expected {} / {rows}",
                state.train_images,
                state.train_rows,
                train.len()
            ),
        ));
    }
    validate_state(&state, params, inits, data).map_err(|m| Error::format(path, m))?;
    Ok(state)
}

/// Checks everything the trainer (and the model it returns) reads from a loaded state, so that
/// no index, length or value taken from a checkpoint can fail later: the error names the field
/// and what was expected.
fn validate_state(
    state: &TrainState,
    params: &DeepParams,
    inits: &[Gmm],
    data: &DeepData,
) -> std::result::Result<(), String> {
    let train = data.train;
    let n = train.len();
    let classes = train.labels.classes();
    let h = &state.history;
    let records = h.records.len();
    if state.iteration.checked_add(1) != Some(records) {
        return Err(format!(
            "history.records holds {records} records but iteration = {}: expected one record per iteration 0..={}",
            state.iteration, state.iteration
        ));
    }
    if let Some((j, r)) = h
        .records
        .iter()
        .enumerate()
        .find(|(j, r)| r.iteration != *j)
    {
        return Err(format!(
            "history.records[{j}].iteration = {}, expected {j}",
            r.iteration
        ));
    }
    let metric = metric_name(&train.labels);
    if h.metric != metric {
        return Err(format!(
            "history.metric = {:?} but the labels are scored by {metric:?}",
            h.metric
        ));
    }
    if let Some((j, r)) = h
        .records
        .iter()
        .enumerate()
        .find(|(_, r)| r.val_metric.is_some() != data.val.is_some())
    {
        return Err(format!(
            "history.records[{j}].val_metric = {:?} but {}",
            r.val_metric,
            if data.val.is_some() {
                "validation images are given"
            } else {
                "no validation images are given"
            }
        ));
    }

    let mode = match params.mode {
        GmmMode::Shared => "shared mode: one GMM for all classes",
        GmmMode::PerClass => "per-class mode: one GMM per class",
    };
    if state.groups.len() != inits.len() {
        return Err(format!(
            "groups holds {} GMMs, expected {} ({mode}, {classes} classes)",
            state.groups.len(),
            inits.len()
        ));
    }
    for (i, (g, init)) in state.groups.iter().zip(inits).enumerate() {
        let field = format!("groups[{i}]");
        let tasks = match params.mode {
            GmmMode::Shared => (0..classes).collect::<Vec<_>>(),
            GmmMode::PerClass => vec![i],
        };
        if let Some(&c) = g.tasks.iter().find(|&&c| c >= classes) {
            return Err(format!(
                "{field}.tasks = {:?}: task {c} is not a class index (0..{classes}); expected {tasks:?} ({mode})",
                g.tasks
            ));
        }
        if let Some((j, &c)) = g
            .tasks
            .iter()
            .enumerate()
            .find(|(j, c)| g.tasks[..*j].contains(c))
        {
            return Err(format!(
                "{field}.tasks = {:?}: task {c} appears more than once (at {j}); expected {tasks:?} ({mode})",
                g.tasks
            ));
        }
        if g.tasks != tasks {
            return Err(format!(
                "{field}.tasks = {:?}, expected {tasks:?} ({mode})",
                g.tasks
            ));
        }
        let (k, d) = (init.k(), init.d());
        check_theta(&format!("{field}.init"), &g.init, k, d)?;
        check_theta(&format!("{field}.theta"), &g.theta, k, d)?;
        let floors = &g.floors;
        if floors.min_log_std.len() != k * d {
            return Err(format!(
                "{field}.floors.min_log_std holds {} values, expected K × D = {}",
                floors.min_log_std.len(),
                k * d
            ));
        }
        if let Some(j) = floors.min_log_std.iter().position(|v| !v.is_finite()) {
            return Err(format!(
                "{field}.floors.min_log_std[{j}] = {:?}: expected a finite value",
                floors.min_log_std[j]
            ));
        }
        if !(floors.min_weight.is_finite() && (0.0..1.0).contains(&floors.min_weight)) {
            return Err(format!(
                "{field}.floors.min_weight = {:?}: expected a value in [0, 1)",
                floors.min_weight
            ));
        }
        let labels = group_labels(&train.labels, &g.tasks);
        check_svm(&format!("{field}.svm"), &g.svm, &labels, 2 * k * d, n)?;
        let primal = g.svm.to_ovr().objective();
        if !(g.objective.is_finite()
            && (g.objective - primal).abs() <= 1e-9 * g.objective.abs().max(1.0))
        {
            return Err(format!(
                "{field}.objective = {:?} but its SVMs' primal objectives sum to {primal:?}",
                g.objective
            ));
        }
        if g.train_scores.len() != n * g.tasks.len() {
            return Err(format!(
                "{field}.train_scores holds {} scores, expected {} ({n} training images × {} tasks)",
                g.train_scores.len(),
                n * g.tasks.len(),
                g.tasks.len()
            ));
        }
        if let Some(j) = g.train_scores.iter().position(|v| !v.is_finite()) {
            return Err(format!(
                "{field}.train_scores[{j}] = {:?}: expected a finite value",
                g.train_scores[j]
            ));
        }
        let ls = &params.line_search;
        if !(g.step >= ls.min_step && g.step <= ls.max_step) {
            return Err(format!(
                "{field}.step = {:?}: expected a value in [min_step, max_step] = [{:?}, {:?}]",
                g.step, ls.min_step, ls.max_step
            ));
        }
    }

    let best = &state.best;
    if best.iteration > state.iteration {
        return Err(format!(
            "best.iteration = {} but the checkpoint is at iteration {} (history.records holds {records} records)",
            best.iteration, state.iteration
        ));
    }
    let kept = h.records[best.iteration].val_metric;
    if best.metric != kept {
        return Err(format!(
            "best.metric = {:?} but history.records[{}].val_metric = {kept:?}",
            best.metric, best.iteration
        ));
    }
    for (what, len) in [("thetas", best.thetas.len()), ("svms", best.svms.len())] {
        if len != state.groups.len() {
            return Err(format!(
                "best.{what} holds {len} entries, expected one per GMM ({}: {mode})",
                state.groups.len()
            ));
        }
    }
    for (i, ((t, s), g)) in best
        .thetas
        .iter()
        .zip(&best.svms)
        .zip(&state.groups)
        .enumerate()
    {
        check_theta(&format!("best.thetas[{i}]"), t, g.init.k, g.init.d)?;
        let labels = group_labels(&train.labels, &g.tasks);
        check_svm(
            &format!("best.svms[{i}]"),
            s,
            &labels,
            2 * g.init.k * g.init.d,
            n,
        )?;
    }

    // Last, the values: the run must start from the given GMMs (up to rounding: the same EM
    // on another machine may differ in the last bits).
    for (i, (g, init)) in state.groups.iter().zip(inits).enumerate() {
        let floors = Floors::relative_to(init, params.variance_floor, params.min_weight);
        let mut given = Theta::from_gmm(init);
        given.project(&floors);
        let t = &g.init;
        let tol = 1e-4;
        let far = |what: &str, j: usize, a: f64, b: f64| {
            Err(format!(
                "groups[{i}].init.{what}[{j}] = {a:?} but the given initial GMM has {b:?}: the checkpoint started from another GMM (--gmm, or the EM settings --k, --gmm-iters, --gmm-restarts, --gmm-variance-floor, --gmm-sample, --gmm-posterior-threshold, --seed)"
            ))
        };
        for (j, ((&a, &b), &s)) in t
            .means
            .iter()
            .zip(&given.means)
            .zip(&given.log_std)
            .enumerate()
        {
            // In units of the given σ.
            if (a - b).abs() > tol * s.exp() {
                return far("means", j, a, b);
            }
        }
        for (what, x, y) in [
            ("log_std", &t.log_std, &given.log_std),
            ("logits", &t.logits, &given.logits),
        ] {
            for (j, (&a, &b)) in x.iter().zip(y).enumerate() {
                if (a - b).abs() > tol {
                    return far(what, j, a, b);
                }
            }
        }
    }
    Ok(())
}

/// θ at `field` has `k` components in `d` dimensions, finite values, and is a valid GMM.
fn check_theta(field: &str, t: &Theta, k: usize, d: usize) -> std::result::Result<(), String> {
    if t.k != k {
        return Err(format!(
            "{field}.k = {} but the initial GMM has K = {k} components",
            t.k
        ));
    }
    if t.d != d {
        return Err(format!(
            "{field}.d = {} but the descriptors have D = {d} dimensions",
            t.d
        ));
    }
    for (what, v, len, shape) in [
        ("means", &t.means, k * d, "K × D"),
        ("log_std", &t.log_std, k * d, "K × D"),
        ("logits", &t.logits, k, "K"),
    ] {
        if v.len() != len {
            return Err(format!(
                "{field}.{what} holds {} values, expected {shape} = {len}",
                v.len()
            ));
        }
        if let Some(j) = v.iter().position(|x| !x.is_finite()) {
            return Err(format!(
                "{field}.{what}[{j}] = {:?}: expected a finite value",
                v[j]
            ));
        }
    }
    t.to_gmm()
        .map(|_| ())
        .map_err(|e| format!("{field} is not a valid GMM: {e}"))
}

/// The SVM state at `field` has one model per task of `labels`, each with `dim` finite weights
/// and one finite dual per training image (`n`).
fn check_svm(
    field: &str,
    s: &SvmState,
    labels: &Labels,
    dim: usize,
    n: usize,
) -> std::result::Result<(), String> {
    if s.classes != labels.classes() {
        return Err(format!(
            "{field}.classes = {}, expected {} (one per task of the GMM)",
            s.classes,
            labels.classes()
        ));
    }
    let multilabel = matches!(labels, Labels::MultiLabel { .. });
    if s.multilabel != multilabel {
        return Err(format!(
            "{field}.multilabel = {}, expected {multilabel}",
            s.multilabel
        ));
    }
    if s.dim != dim {
        return Err(format!(
            "{field}.dim = {} but the Fisher vectors have 2 × K × D = {dim} values",
            s.dim
        ));
    }
    if s.models.len() != s.classes {
        return Err(format!(
            "{field}.models holds {} models, expected {} (one per task)",
            s.models.len(),
            s.classes
        ));
    }
    for (c, m) in s.models.iter().enumerate() {
        let f = format!("{field}.models[{c}]");
        if m.w.len() != dim {
            return Err(format!("{f}.w holds {} weights, expected {dim}", m.w.len()));
        }
        if m.alpha.len() != n {
            return Err(format!(
                "{f}.alpha holds {} duals, expected one per training image ({n})",
                m.alpha.len()
            ));
        }
        if let Some(j) = m.w.iter().position(|v| !v.is_finite()) {
            return Err(format!(
                "{f}.w[{j}] = {:?}: expected a finite value",
                m.w[j]
            ));
        }
        if let Some(j) = m.alpha.iter().position(|v| !v.is_finite()) {
            return Err(format!(
                "{f}.alpha[{j}] = {:?}: expected a finite value",
                m.alpha[j]
            ));
        }
        for (what, v) in [
            ("b", f64::from(m.b)),
            ("primal", m.primal),
            ("dual", m.dual),
        ] {
            if !v.is_finite() {
                return Err(format!("{f}.{what} = {v:?}: expected a finite value"));
            }
        }
    }
    Ok(())
}

/// J(θ) = Σ_c primal objective of the one-vs-rest SVMs trained (from scratch) on the Fisher
/// vectors of `set` under θ, and its gradient ∇J(θ) by back-propagation with the SVM solution
/// held fixed — the quantities [`train_deep`] works with, for one shared GMM.
pub fn objective_and_gradient(
    theta: &Theta,
    set: &ImageSet,
    params: &DeepParams,
) -> Result<(f64, Theta)> {
    if theta.d != set.d {
        return Err(Error::dim(
            "descriptor dimension of the image set (the GMM's D)",
            theta.d,
            set.d,
        ));
    }
    let mut timers = Timers::default();
    let (j, ev) = evaluate_fully(
        theta,
        set,
        &set.labels,
        params,
        posterior_budget(true, params),
        &mut timers,
    )?
    .ok_or_else(|| {
        Error::Invalid("the GMM gives non-finite Fisher vectors or SVM objective".into())
    })?;
    let g = gradient(
        theta,
        &SvmState::from_ovr(&ev.svm),
        set,
        &set.labels,
        params,
        &ev.encoded,
    )?;
    Ok((j, g))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_duals_move_part_of_the_way_to_the_last_trial() {
        let model = |alpha: Vec<f64>| BinarySvm {
            w: vec![0.5, -1.0],
            b: 0.25,
            alpha,
            primal: 3.0,
            dual: 2.0,
            iterations: 7,
        };
        let warm = OneVsRest {
            classes: 2,
            dim: 2,
            multilabel: false,
            models: vec![model(vec![0.0, 1.0, 0.5]), model(vec![2.0, 0.0, 0.0])],
        };
        let last = vec![vec![1.0, 1.0, 0.0], vec![0.0, 0.0, 2.0]];
        let out = interpolate_duals(&warm, &last, 0.25);
        assert_eq!(out.models[0].alpha, vec![0.25, 1.0, 0.375]);
        assert_eq!(out.models[1].alpha, vec![1.5, 0.0, 0.5]);
        // Only the duals change; r = 0 is the warm start itself.
        assert_eq!(
            (out.models[0].w.clone(), out.models[1].b),
            (vec![0.5, -1.0], 0.25)
        );
        assert_eq!(interpolate_duals(&warm, &last, 0.0), warm);
    }
}
