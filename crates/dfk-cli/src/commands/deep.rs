//! `dfk deep`: Deep Fisher Kernel training — the GMM learned jointly with the one-vs-rest SVMs
//! by gradient descent on the SVM objective, starting from an EM fit (the plain Fisher kernel,
//! recorded as iteration 0).

use std::path::{Path, PathBuf};

use anyhow::Context;
use dfk::dataset::{self, Dataset};
use dfk::deep::{
    train_deep, Checkpoint, DeepData, DeepModel, DeepParams, GmmMode, ImageSet, LineSearch,
    ParamGroups,
};
use dfk::fisher::FisherOptions;
use dfk::gmm::{fit_gmm, Gmm, GmmParams};
use dfk::model::{load_gmm, ModelFile};
use dfk::npy;
use dfk::pca::Pca;
use dfk::pipeline::{
    fit_preprocessor, load_or_extract, PcaConfig, PipelineConfig, SvmConfig, Weighting,
};
use dfk::svm::{ClassWeighting, Labels, OneVsRest, SvmParams};
use serde_json::json;

use crate::util::{as_flag_error, check_not_data, check_outputs, emit, usage};
use crate::Global;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// One GMM for all classes, minimising Σ_c J_c.
    Shared,
    /// One GMM per class, each minimising its class's J_c.
    PerClass,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Training descriptors, `rows × D` (.npy, f32 or f64), instead of images.
    #[arg(long, value_name = "X.npy", requires_all = ["offsets", "labels"], help_heading = "Data")]
    pub descriptors: Option<PathBuf>,
    /// Row offsets of the training images (.npy int64, images + 1 entries).
    #[arg(
        long,
        value_name = "O.npy",
        requires = "descriptors",
        help_heading = "Data"
    )]
    pub offsets: Option<PathBuf>,
    /// Training labels (.npy int: one class per image, or `images × classes` 0/1 with
    /// `--multilabel`).
    #[arg(
        long,
        value_name = "Y.npy",
        requires = "descriptors",
        help_heading = "Data"
    )]
    pub labels: Option<PathBuf>,
    /// Images instead of descriptors: a folder with the four Fashion-MNIST IDX files (training
    /// and test sets).
    #[arg(long, value_name = "DIR", help_heading = "Data")]
    pub fashion_mnist: Option<PathBuf>,
    /// Images: the embedded Fashion-MNIST subset (training and test sets).
    #[arg(long, help_heading = "Data")]
    pub embedded: bool,
    /// Images: a folder of class sub-folders or a list file (`path label ...` per line).
    #[arg(long, value_name = "PATH", help_heading = "Data")]
    pub data: Option<PathBuf>,
    /// With --data: leave out image files that are missing, whose header cannot be read or
    /// whose pixels do not decode (a warning counts them) instead of stopping at the first.
    #[arg(long, requires = "data", help_heading = "Data")]
    pub skip_unreadable: bool,
    /// Pipeline configuration (TOML) for images: dense SIFT, PCA, L2, (x, y); default: the
    /// pipeline's defaults (`dfk train`).
    #[arg(
        long,
        value_name = "FILE.toml",
        conflicts_with = "descriptors",
        help_heading = "Data"
    )]
    pub config: Option<PathBuf>,
    /// Descriptor cache folder for images (none: extract afresh).
    #[arg(
        long,
        value_name = "DIR",
        conflicts_with = "descriptors",
        help_heading = "Data"
    )]
    pub cache: Option<PathBuf>,
    /// Test descriptors, scored at every iteration for the report (never used for decisions).
    /// They must be in the training descriptors' space: extract both sets in one run
    /// (`dfk extract --test-data`, `--test-split` or `--with-test`), which fits one PCA.
    #[arg(
        long,
        value_name = "X.npy",
        requires_all = ["test_offsets", "test_labels", "descriptors"]
    )]
    pub test_descriptors: Option<PathBuf>,
    /// Row offsets of the test images.
    #[arg(long, value_name = "O.npy", requires = "test_descriptors")]
    pub test_offsets: Option<PathBuf>,
    /// Test labels.
    #[arg(long, value_name = "Y.npy", requires = "test_descriptors")]
    pub test_labels: Option<PathBuf>,
    /// VOC "difficult" flags of the training images (`images × classes` 0/1, as `dfk extract`
    /// writes them for a VOC devkit): such an image trains as a positive of the class but is
    /// left out of the class's AP in the training and validation mAPs. `--multilabel` only.
    #[arg(long, value_name = "D.npy", requires = "multilabel")]
    pub difficult: Option<PathBuf>,
    /// VOC "difficult" flags of the test images, left out of the test mAP's class APs.
    #[arg(long, value_name = "D.npy", requires_all = ["multilabel", "test_descriptors"])]
    pub test_difficult: Option<PathBuf>,
    /// Labels are an `images × classes` 0/1 matrix (multi-label, scored by mAP); descriptor
    /// files only (the labels of images come with their data set).
    #[arg(
        long,
        requires = "descriptors",
        conflicts_with_all = ["embedded", "fashion_mnist", "data"]
    )]
    pub multilabel: bool,
    /// Use about this many training images, before the validation split: each class keeps
    /// its share of N, rounded, and at least one image (stratified, seeded).
    #[arg(long, value_name = "N")]
    pub max_train: Option<usize>,
    /// Use only the first N test images.
    #[arg(long, value_name = "N")]
    pub max_test: Option<usize>,
    /// Fraction of the training images held out for validation (model selection, early
    /// stopping); 0 = none (the last iterate is kept).
    #[arg(long, default_value_t = 0.5)]
    pub val_fraction: f64,

    /// Start from this GMM file (model file of kind gmm or pipeline; with images a pipeline,
    /// whose SIFT settings and PCA are used) instead of fitting by EM; a per-class deep
    /// model's learned GMMs with `--mode per-class`, matched to the classes by name.
    #[arg(long, value_name = "FILE")]
    pub gmm: Option<PathBuf>,
    /// Number of GMM components K (EM initialisation).
    #[arg(long, short = 'k', default_value_t = 16, conflicts_with = "gmm")]
    pub k: usize,
    /// EM iterations.
    #[arg(long, default_value_t = 100, conflicts_with = "gmm")]
    pub gmm_iters: usize,
    /// EM restarts.
    #[arg(long, default_value_t = 1, conflicts_with = "gmm")]
    pub gmm_restarts: usize,
    /// EM variance floor, relative to each dimension's data variance (0 to 1).
    #[arg(long, default_value_t = 1e-3, conflicts_with = "gmm")]
    pub gmm_variance_floor: f64,
    /// Descriptors sampled for EM's k-means initialisation (k-means++ seeding, then Lloyd
    /// iterations) (at least K: a smaller
    /// value samples K).
    #[arg(long, default_value_t = 100_000, conflicts_with = "gmm")]
    pub gmm_sample: usize,
    /// EM's M-step posterior threshold: posteriors below this times a descriptor's largest
    /// one are left out of the means, variances and weights (0: keep all).
    #[arg(long, default_value_t = dfk::gmm::DEFAULT_EM_POSTERIOR_THRESHOLD, value_parser = crate::options::parse_f32, conflicts_with = "gmm")]
    pub gmm_posterior_threshold: f32,

    /// Shared GMM or one GMM per class.
    #[arg(long, value_enum, default_value_t = Mode::Shared)]
    pub mode: Mode,
    /// Iteration budget (0 = plain Fisher kernel only).
    #[arg(long, default_value_t = 10)]
    pub iters: usize,
    /// Stop when the relative decrease of the objective is below this (0 = never).
    #[arg(long, default_value_t = 1e-4)]
    pub rel_tol: f64,
    /// Stop after this many iterations without a better validation score (0 = never).
    #[arg(long, default_value_t = 3)]
    pub patience: usize,
    /// Parameter groups to learn (comma-separated: means, log-std, weights).
    #[arg(long, value_delimiter = ',', default_value = "means,log-std,weights")]
    pub groups: Vec<String>,
    /// First line-search step.
    #[arg(long, default_value_t = 0.1)]
    pub step: f64,
    /// Largest step.
    #[arg(long, default_value_t = 1.0)]
    pub max_step: f64,
    /// Smallest step before the line search gives up.
    #[arg(long, default_value_t = 1e-4)]
    pub min_step: f64,
    /// Plain backtracking: halve a rejected step and always start the next search at 1.5× the
    /// accepted one (default: retry at the quadratic interpolant's minimiser, and start the
    /// next search at the minimiser of the quadratic through the accepted step, within
    /// [t, 1.5 t]).
    #[arg(long)]
    pub plain_backtracking: bool,
    /// Armijo constant c1.
    #[arg(long, default_value_t = 1e-4)]
    pub armijo_c1: f64,
    /// Variance floor from the initial GMM on, relative to its variances (above 0, at most 1).
    #[arg(long, default_value_t = 1e-3)]
    pub variance_floor: f64,
    /// Weight floor from the initial GMM on (K times it must be below 1).
    #[arg(long, default_value_t = 1e-4)]
    pub min_weight: f64,
    /// ε of the smoothed signed square root sign(Φ)(√(|Φ|+ε) − √ε).
    #[arg(long, default_value_t = 1e-6, value_parser = crate::options::parse_f32)]
    pub sqrt_epsilon: f32,
    /// Posterior threshold of the encoder (0 = dense).
    #[arg(long, default_value_t = 1e-6, value_parser = crate::options::parse_f32)]
    pub posterior_threshold: f32,
    /// Memory (MiB) for the training images' posteriors, kept from each encoding for the
    /// backward pass instead of recomputing them (shared GMM only; 0 = always recompute; the
    /// trainer holds two encodings at a time). Resume with the same value to reproduce a run
    /// exactly.
    #[arg(long, default_value_t = 2048)]
    pub posterior_cache_mb: usize,

    /// SVM cost C.
    #[arg(long, short = 'C', default_value_t = 3.0)]
    pub c: f64,
    /// SVM stopping tolerance (projected gradient).
    #[arg(long, default_value_t = 0.05)]
    pub svm_eps: f64,
    /// SVM epoch limit.
    #[arg(long, default_value_t = 1000)]
    pub svm_max_iter: usize,
    /// SVM bias feature value (0 = no bias).
    #[arg(long, default_value_t = 1.0, value_parser = crate::options::parse_f32)]
    pub bias: f32,
    /// Weight each one-vs-rest task's costs by inverse class frequency.
    #[arg(long)]
    pub balanced: bool,

    /// Output model file (`--out` is accepted too, as in `dfk train`): the learned GMM
    /// (per-class mode: one per class, and the initial GMM), the SVMs and the history;
    /// `dfk eval`/`dfk predict` use it.
    #[arg(long, short, alias = "out", default_value = "deep.dfk")]
    pub output: PathBuf,
    /// Checkpoint file, written every iteration (default: `<output>.ckpt`).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Continue from the checkpoint if it exists. Every setting other than the stopping rules
    /// (--iters, --rel-tol, --patience) and --posterior-cache-mb must be the one it was written
    /// with, and the data the same; the checkpoint is checked whole (and against its
    /// checksum) before it is used. EM is not run again: its GMM is in the checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Also write the history as JSON here.
    #[arg(long, value_name = "FILE")]
    pub history: Option<PathBuf>,
}

fn read_set(x: &Path, o: &Path, y: &Path, multilabel: bool) -> anyhow::Result<ImageSet> {
    let (data, rows, d) = npy::read_f32_matrix(x)?;
    let offsets = npy::read_usize_offsets(o, rows)?;
    let labels = if multilabel {
        let (t, n, c) = npy::read_i64_matrix(y)?;
        if let Some(v) = t.iter().find(|&&v| v != 0 && v != 1) {
            anyhow::bail!(
                "{}: multi-label targets must be 0 or 1, found {v}",
                y.display()
            );
        }
        Labels::MultiLabel {
            targets: t.iter().map(|&v| v == 1).collect(),
            classes: if n == 0 { 0 } else { c },
        }
    } else {
        let l = npy::read_labels(y)?;
        let classes = l.iter().max().map_or(0, |m| m + 1);
        Labels::MultiClass { labels: l, classes }
    };
    let images = offsets.len().saturating_sub(1);
    if labels.n() != images && offsets.len() >= 2 {
        anyhow::bail!(
            "{}: {} labels for the {images} images of {}: expected one per image",
            y.display(),
            labels.n(),
            o.display()
        );
    }
    ImageSet::new(data, d, offsets, labels).with_context(|| format!("images of {}", x.display()))
}

/// The test set with its labels in the training classes' indices: its class `i` is the
/// training class of the same name, when both label files have a `classes.txt` beside them
/// (a test folder extracted on its own numbers only its own classes). Without names on both
/// sides the indices are taken as they are (with a warning when only one side has names).
fn test_in_training_classes(
    test: ImageSet,
    train_names: Option<&[String]>,
    test_names: Option<&[String]>,
    y: &Path,
    ty: &Path,
) -> anyhow::Result<ImageSet> {
    let beside = |p: &Path| p.parent().unwrap_or(Path::new("")).join("classes.txt");
    let (train_names, test_names) = match (train_names, test_names) {
        (Some(a), Some(b)) => (a, b),
        (None, None) => return Ok(test),
        (a, _) => {
            let (with, without) = if a.is_some() { (y, ty) } else { (ty, y) };
            tracing::warn!(
                "{} names the classes but {} has no classes.txt beside it: the test labels are \
                 taken as the training class indices",
                beside(with).display(),
                without.display()
            );
            return Ok(test);
        }
    };
    if train_names == test_names {
        return Ok(test);
    }
    let used = test.labels.classes();
    if test_names.len() < used {
        anyhow::bail!(
            "{}: {} class names, but --test-labels {} has {used} classes: expected a name for \
             every class index",
            beside(ty).display(),
            test_names.len(),
            ty.display()
        );
    }
    let to_train: Vec<usize> = test_names[..used]
        .iter()
        .map(|name| {
            train_names.iter().position(|n| n == name).with_context(|| {
                format!(
                    "{}: test class {name:?} is not a training class ({} lists {})",
                    beside(ty).display(),
                    beside(y).display(),
                    train_names.join(", ")
                )
            })
        })
        .collect::<anyhow::Result<_>>()?;
    tracing::info!(
        "test classes matched to the training classes by name ({} → {})",
        beside(ty).display(),
        beside(y).display()
    );
    let classes = train_names.len();
    let moved = |values: &[bool], rows: usize| -> Vec<bool> {
        let mut out = vec![false; rows * classes];
        for r in 0..rows {
            for (c, &t) in to_train.iter().enumerate() {
                out[r * classes + t] = values[r * used + c];
            }
        }
        out
    };
    let n = test.len();
    let labels = match &test.labels {
        Labels::MultiClass { labels, .. } => Labels::MultiClass {
            labels: labels.iter().map(|&l| to_train[l]).collect(),
            classes,
        },
        Labels::MultiLabel { targets, .. } => Labels::MultiLabel {
            targets: moved(targets, n),
            classes,
        },
    };
    let difficult = if test.difficult.is_empty() {
        Vec::new()
    } else {
        moved(&test.difficult, n)
    };
    let remapped = ImageSet::new(test.data, test.d, test.offsets, labels)
        .with_context(|| format!("images of --test-labels {}", ty.display()))?;
    Ok(if difficult.is_empty() {
        remapped
    } else {
        remapped.with_difficult(difficult)?
    })
}

/// `set` with the VOC difficult flags of `path` (an `images × classes` 0/1 matrix of the
/// labels' shape), when given.
fn with_difficult(set: ImageSet, path: Option<&Path>, labels: &Path) -> anyhow::Result<ImageSet> {
    let Some(path) = path else { return Ok(set) };
    let (flags, n, c) = npy::read_i64_matrix(path)?;
    if (n, c) != (set.len(), set.labels.classes()) {
        anyhow::bail!(
            "{}: {n} × {c} difficult flags, but {} holds {} images × {} classes: expected the \
             labels' shape",
            path.display(),
            labels.display(),
            set.len(),
            set.labels.classes()
        );
    }
    if let Some(v) = flags.iter().find(|&&v| v != 0 && v != 1) {
        anyhow::bail!(
            "{}: difficult flags must be 0 or 1, found {v}",
            path.display()
        );
    }
    Ok(set.with_difficult(flags.iter().map(|&v| v == 1).collect())?)
}

/// Gives multi-class labels of two sets the same number of classes.
fn align_classes(a: &mut ImageSet, b: &mut ImageSet) {
    if let (Labels::MultiClass { classes: ca, .. }, Labels::MultiClass { classes: cb, .. }) =
        (&mut a.labels, &mut b.labels)
    {
        let c = (*ca).max(*cb);
        *ca = c;
        *cb = c;
    }
}

/// A stratified, seeded subset of about `n` images: each class keeps its share, rounded, and
/// at least one image. The split keeps a class whole rather than drop it, so it fails only
/// when nothing rounds away: then the subset is the whole set.
fn limit(set: ImageSet, n: usize, seed: u64) -> ImageSet {
    if n >= set.len() {
        return set;
    }
    let fraction = 1.0 - n as f64 / set.len() as f64;
    match set.split_holdout(fraction, seed) {
        Ok((kept, _)) => kept,
        Err(_) => set,
    }
}

/// Refuses, before EM (minutes on a large set), labels that would stop the run after it: a
/// class without training samples, or without negatives, cannot train its SVM; a multi-label
/// set in which no class has a positive that is not flagged difficult has no mAP, the score of
/// the training, validation and test sets.
fn check_sets_before_em(
    a: &Args,
    train: &ImageSet,
    val: Option<&ImageSet>,
    test: Option<&ImageSet>,
) -> anyhow::Result<()> {
    let named = |flag: &str, path: &Option<PathBuf>, images: &str| match path {
        Some(p) => format!("{flag} {}", p.display()),
        None => images.to_string(),
    };
    let labels = named("--labels", &a.labels, "the training images");
    dfk::svm::check_every_class_has_samples(&train.labels).map_err(|e| {
        let split = if val.is_some() {
            " (after the validation split)"
        } else {
            ""
        };
        anyhow::anyhow!("{labels}: training set{split}: {e}")
    })?;
    let difficult = |flag: &str, set: &ImageSet| {
        if set.difficult.is_empty() {
            String::new()
        } else {
            format!(" that {flag} does not flag difficult")
        }
    };
    if !has_scored_positive(train) {
        anyhow::bail!(
            "{labels}: no training image is a positive of a class{}: the training mAP is \
             undefined",
            difficult("--difficult", train)
        );
    }
    if let Some(v) = val.filter(|v| !has_scored_positive(v)) {
        return usage(format!(
            "--val-fraction {}: no image of the validation part ({} images) is a positive of a \
             class{}: its mAP, which selects the kept iterate, is undefined; give more training \
             images or --val-fraction 0",
            crate::options::tidy_number(&a.val_fraction.to_string()),
            v.len(),
            difficult("--difficult", v)
        ));
    }
    if let Some(t) = test.filter(|t| !has_scored_positive(t)) {
        anyhow::bail!(
            "{}: no test image is a positive of a class{}: the test mAP is undefined",
            named("--test-labels", &a.test_labels, "the test images"),
            difficult("--test-difficult", t)
        );
    }
    Ok(())
}

/// Whether a set has a score: always for single-label sets (accuracy); for multi-label ones
/// (mAP over the classes with a positive), some class needs a positive image not flagged
/// difficult for it.
fn has_scored_positive(set: &ImageSet) -> bool {
    match &set.labels {
        Labels::MultiClass { .. } => true,
        labels @ Labels::MultiLabel { classes, .. } => (0..set.len()).any(|i| {
            (0..*classes).any(|c| {
                labels.is_positive(i, c) && !set.difficult.get(i * classes + c).is_some_and(|&d| d)
            })
        }),
    }
}

fn params(a: &Args) -> anyhow::Result<DeepParams> {
    let mut groups = ParamGroups {
        means: false,
        log_std: false,
        weights: false,
    };
    for g in &a.groups {
        match g.as_str() {
            "means" => groups.means = true,
            "log-std" => groups.log_std = true,
            "weights" => groups.weights = true,
            other => {
                return usage(format!(
                    "--groups: unknown group {other:?}; expected means, log-std or weights"
                ))
            }
        }
    }
    Ok(DeepParams {
        mode: match a.mode {
            Mode::Shared => GmmMode::Shared,
            Mode::PerClass => GmmMode::PerClass,
        },
        max_iter: a.iters,
        rel_tol: a.rel_tol,
        patience: a.patience,
        groups,
        line_search: LineSearch {
            c1: a.armijo_c1,
            initial_step: a.step,
            max_step: a.max_step,
            min_step: a.min_step,
            adaptive: !a.plain_backtracking,
            ..LineSearch::default()
        },
        variance_floor: a.variance_floor,
        min_weight: a.min_weight,
        fisher: FisherOptions {
            sqrt_epsilon: a.sqrt_epsilon,
            posterior_threshold: a.posterior_threshold,
            ..FisherOptions::default()
        },
        svm: SvmParams {
            c: a.c,
            eps: a.svm_eps,
            max_iter: a.svm_max_iter,
            bias: a.bias,
            seed: 0,
            ..SvmParams::default()
        },
        weighting: if a.balanced {
            ClassWeighting::Balanced
        } else {
            ClassWeighting::Uniform
        },
        max_posterior_bytes: a.posterior_cache_mb.saturating_mul(1 << 20),
    })
}

/// The EM settings of the initial GMM (without `--gmm`).
fn em_params(a: &Args, seed: u64) -> GmmParams {
    GmmParams::new(a.k)
        .max_iter(a.gmm_iters)
        .restarts(a.gmm_restarts)
        .variance_floor(a.gmm_variance_floor)
        .posterior_threshold(a.gmm_posterior_threshold)
        .seed(seed)
        .kmeans_sample(Some(a.gmm_sample.max(a.k)))
}

/// The settings that make EM's initial GMM, by flag, recorded in the checkpoint
/// ([`Checkpoint::origin`]); none with `--gmm` (loading it is cheap, and the trainer compares
/// it with the checkpoint's).
fn em_origin(a: &Args, seed: u64) -> Vec<(String, String)> {
    if a.gmm.is_some() {
        return Vec::new();
    }
    let p = em_params(a, seed);
    [
        ("-k", p.k.to_string()),
        ("--gmm-iters", p.max_iter.to_string()),
        ("--gmm-restarts", p.restarts.to_string()),
        ("--gmm-variance-floor", p.variance_floor.to_string()),
        (
            "--gmm-posterior-threshold",
            p.posterior_threshold.to_string(),
        ),
        // The flag's value, not the sample it makes (which depends on the rows, so that
        // other data would be named as another --gmm-sample; the trainer names the data).
        ("--gmm-sample", a.gmm_sample.to_string()),
        ("--seed", seed.to_string()),
        // The rest of EM's settings are fixed by this build; recorded so that a build with
        // other defaults does not take a GMM that it would not have made.
        (
            "em (fixed)",
            format!("{:?} tol {} weight floor {}", p.init, p.tol, p.weight_floor),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The flags of the EM settings, by the library's parameter names.
const EM_FLAGS: &[(&str, &str)] = &[
    ("k", "-k"),
    ("restarts", "--gmm-restarts"),
    ("variance_floor", "--gmm-variance-floor"),
    ("posterior_threshold", "--gmm-posterior-threshold"),
    ("kmeans_sample", "--gmm-sample"),
];

/// The flags of the encoder's settings, by the library's parameter names.
const FISHER_FLAGS: &[(&str, &str)] = &[
    ("posterior_threshold", "--posterior-threshold"),
    ("sqrt_epsilon", "--sqrt-epsilon"),
];

/// The per-class GMMs of the per-class deep model `path` in the order of the training
/// classes `names`, matched by name when both have names (a data set whose classes come in
/// another order, or numbered another way, would otherwise start each class from another
/// class's GMM); by index when either side has none.
fn by_class_name(
    class_gmms: Vec<Gmm>,
    path: &Path,
    names: Option<&[String]>,
) -> anyhow::Result<Vec<Gmm>> {
    let model_names = dfk::model::summarize(path)?.header.class_names;
    let Some(names) = names.filter(|n| !n.is_empty()) else {
        return Ok(class_gmms);
    };
    if model_names.is_empty() || model_names == names {
        return Ok(class_gmms);
    }
    let order: Vec<usize> = names
        .iter()
        .map(|name| {
            model_names.iter().position(|m| m == name).with_context(|| {
                format!(
                    "--gmm {}: the model has no class {name:?} (its classes: {}), so no learned \
                     GMM to start that class from",
                    path.display(),
                    model_names.join(", ")
                )
            })
        })
        .collect::<anyhow::Result<_>>()?;
    if order.iter().any(|&i| i >= class_gmms.len()) {
        anyhow::bail!(
            "--gmm {}: {} class names but {} per-class GMMs",
            path.display(),
            model_names.len(),
            class_gmms.len()
        );
    }
    tracing::info!(
        "--gmm {}: its per-class GMMs matched to the training classes by name",
        path.display()
    );
    Ok(order.iter().map(|&i| class_gmms[i].clone()).collect())
}

/// The starting GMM, and the per-class ones of a per-class deep model given to `--gmm` in
/// per-class mode (empty otherwise).
fn initial_gmm(a: &Args, train: &ImageSet, seed: u64) -> anyhow::Result<(Gmm, Vec<Gmm>)> {
    if let Some(path) = &a.gmm {
        let gmm = load_gmm(path)?;
        if gmm.d() != train.d {
            anyhow::bail!(
                "{}: the GMM has dimension {} but the training descriptors have {} columns",
                path.display(),
                gmm.d(),
                train.d
            );
        }
        let class_gmms = dfk::model::load_class_gmms(path)?;
        if class_gmms.is_empty() {
            return Ok((gmm, class_gmms));
        }
        let classes = train.labels.classes();
        // Shared mode with such a model was refused before the data were read.
        if class_gmms.len() != classes {
            anyhow::bail!(
                "{}: the model holds {} per-class GMMs but the training labels have {} classes",
                path.display(),
                class_gmms.len(),
                classes
            );
        }
        return Ok((gmm, class_gmms));
    }
    let p = em_params(a, seed);
    let t = std::time::Instant::now();
    let fit = fit_gmm(&train.data, train.d, &p)
        .map_err(|e| as_flag_error(e, EM_FLAGS))
        .with_context(|| {
            format!(
                "EM initialisation on the {} training descriptors left after --max-train and \
                 the validation split",
                train.data.len() / train.d.max(1)
            )
        })?;
    tracing::info!(
        "EM: K = {}, {} iterations, log-likelihood {:.4}, {:.1}s",
        a.k,
        fit.iterations,
        fit.loglik_history.last().copied().unwrap_or(f64::NAN),
        t.elapsed().as_secs_f64()
    );
    Ok((fit.gmm, Vec::new()))
}

pub fn run(a: Args, g: &Global) -> anyhow::Result<()> {
    let config_file = match &a.config {
        Some(path) => Some(load_deep_config(path)?),
        None => None,
    };
    // The configuration file's seed, unless --seed is given (as in `dfk train`).
    let seed = match &config_file {
        Some(c) if !crate::util::seed_given() => c.seed,
        _ => g.seed,
    };
    // The model stores these in its configuration, which `info --config` prints as TOML,
    // whose integers are 64-bit signed.
    for (flag, value) in [
        ("--seed", seed),
        ("--gmm-iters", a.gmm_iters as u64),
        ("--svm-max-iter", a.svm_max_iter as u64),
    ] {
        if value > i64::MAX as u64 {
            return usage(format!(
                "{flag} {value}: expected at most {} (the configuration is stored as TOML, \
                 whose integers are 64-bit signed)",
                i64::MAX
            ));
        }
    }
    let p = params(&a)?;
    p.validate().map_err(|e| {
        as_flag_error(
            e,
            &[
                ("rel_tol", "--rel-tol"),
                ("sqrt_epsilon", "--sqrt-epsilon"),
                ("svm C", "-C"),
                ("svm eps", "--svm-eps"),
                ("svm max_iter", "--svm-max-iter"),
                ("svm bias", "--bias"),
                ("c1", "--armijo-c1"),
                ("initial_step", "--step"),
                ("min_step", "--min-step"),
                ("max_step", "--max-step"),
                ("variance_floor", "--variance-floor"),
                ("min_weight", "--min-weight"),
                ("posterior_threshold", "--posterior-threshold"),
            ],
        )
    })?;
    p.svm.validate().map_err(|e| as_flag_error(e, SVM_FLAGS))?;
    p.fisher
        .validate()
        .map_err(|e| as_flag_error(e, FISHER_FLAGS))?;
    if a.gmm.is_none() && a.k == 0 {
        return usage("-k 0: the GMM needs at least 1 component");
    }
    if a.gmm.is_none() && a.k as f64 * a.min_weight >= 1.0 {
        // Known before any work when EM fits the GMM (with --gmm, once it is loaded).
        return usage(format!(
            "--min-weight {}: {} components cannot all keep that weight (K · floor must be \
             below 1)",
            a.min_weight, a.k
        ));
    }
    crate::options::check_variance_floor("--gmm-variance-floor", a.gmm_variance_floor)?;
    if a.gmm.is_none() {
        let em = GmmParams::new(a.k);
        if let Some(expected) = crate::options::k_beyond_weight_floor(a.k, em.weight_floor) {
            return usage(format!("-k {}: expected {expected}", a.k));
        }
        em_params(&a, g.seed)
            .validate()
            .map_err(|e| as_flag_error(e, EM_FLAGS))?;
    }
    if a.max_train == Some(0) {
        return usage("--max-train 0: expected at least 1 image (leave it out to use them all)");
    }
    if a.max_test == Some(0) {
        return usage("--max-test 0: expected at least 1 image (leave it out to use them all)");
    }
    if !(a.variance_floor > 0.0 && a.variance_floor <= 1.0) {
        return usage(format!(
            "--variance-floor {}: expected a value in (0, 1] (relative to the initial \
             variances)",
            crate::options::tidy_number(&a.variance_floor.to_string())
        ));
    }
    // Options that could not act: refused rather than silently ignored.
    if a.val_fraction == 0.0 && a.patience > 0 && crate::util::flag_given("--patience") {
        return usage(format!(
            "--patience {} with --val-fraction 0: patience counts iterations without a better \
             validation score, and there is no validation part; give --val-fraction, or leave \
             --patience out",
            a.patience
        ));
    }
    if matches!(a.mode, Mode::PerClass) && crate::util::flag_given("--posterior-cache-mb") {
        return usage(
            "--posterior-cache-mb with --mode per-class: the posteriors are stored for a shared \
             GMM only (per-class mode would keep one encoding per class); leave it out",
        );
    }
    if !(0.0..1.0).contains(&a.val_fraction) {
        return usage(format!(
            "--val-fraction {}: expected a value in [0, 1)",
            crate::options::tidy_number(&a.val_fraction.to_string())
        ));
    }
    check_deep_outputs(&a)?;
    if let Some(path) = &a.gmm {
        crate::util::require_file_on_disk(
            "--gmm",
            path,
            "`dfk deep` reads the model more than once (its GMM, its per-class GMMs, with \
             images its PCA)",
        )?;
    }
    // What the starting GMM forbids, known before the data are read (and extracted).
    let start_k = match &a.gmm {
        Some(path) => {
            if !matches!(a.mode, Mode::PerClass) && !dfk::model::load_class_gmms(path)?.is_empty() {
                return usage(format!(
                    "--gmm {}: the model holds one learned GMM per class (a per-class deep \
                     model); continue it with --mode per-class, or give a model with one GMM",
                    path.display()
                ));
            }
            load_gmm(path)?.k()
        }
        None => a.k,
    };
    if start_k == 1 && a.groups.iter().all(|g| g == "weights") {
        return usage(
            "--groups weights with K = 1: the one component's weight is 1 whatever its logit, \
             so nothing would be learned; add means or log-std",
        );
    }
    let cache = checked_cache(&a)?;
    let has_test = a.fashion_mnist.is_some() || a.embedded || a.test_descriptors.is_some();
    if a.max_test.is_some() && !has_test {
        return usage(
            "--max-test applies to a test set, and these data have none (give --test-descriptors \
             with --descriptors, or use --fashion-mnist / --embedded)",
        );
    }
    let Sets {
        train: mut all,
        mut test,
        pca,
        mut config,
        class_names,
    } = load_sets(&a, config_file, cache.as_deref(), seed)?;
    if let Labels::MultiClass { classes, .. } = &all.labels {
        if *classes < 2 {
            let source = match &a.labels {
                Some(y) => format!("--labels {}", y.display()),
                None => "the training images".to_string(),
            };
            anyhow::bail!(
                "{source}: {classes} class{}: a classifier needs at least two",
                if *classes == 1 { "" } else { "es" }
            );
        }
    }
    if let Some(t) = test.as_mut() {
        if let (Labels::MultiClass { classes: ct, .. }, Labels::MultiClass { classes: ca, .. }) =
            (&t.labels, &all.labels)
        {
            if ct > ca {
                let source = match &a.test_labels {
                    Some(y) => format!("--test-labels {}", y.display()),
                    None => "the test images".to_string(),
                };
                anyhow::bail!(
                    "{source}: label {} names a class that no training image has (the training \
                     labels are 0..{}): every test class needs training samples",
                    ct - 1,
                    ca - 1
                );
            }
        }
        if let (Labels::MultiLabel { classes: ct, .. }, Labels::MultiLabel { classes: ca, .. }) =
            (&t.labels, &all.labels)
        {
            if ct != ca {
                let name = |flag: &str, path: &Option<PathBuf>| match path {
                    Some(y) => format!("{flag} {}", y.display()),
                    None => flag.to_string(),
                };
                anyhow::bail!(
                    "{}: {ct} class columns but {} has {ca}: the test label matrix needs one \
                     column per training class, in the same order",
                    name("--test-labels", &a.test_labels),
                    name("--labels", &a.labels)
                );
            }
        }
        align_classes(&mut all, t);
    }
    let (train, val) = if a.val_fraction > 0.0 {
        let (t, v) = all.split_holdout(a.val_fraction, seed).map_err(|e| {
            crate::util::UsageError(format!(
                "--val-fraction {}: {e}: give more training images{} or another \
                 --val-fraction (0 for no validation part)",
                crate::options::tidy_number(&a.val_fraction.to_string()),
                if a.max_train.is_some() {
                    " (--max-train)"
                } else {
                    ""
                }
            ))
        })?;
        // The split copies the descriptors: free the full set (1 GB for Fashion-MNIST's 60k).
        drop(all);
        (t, Some(v))
    } else {
        (all, None)
    };
    check_sets_before_em(&a, &train, val.as_ref(), test.as_ref())?;
    tracing::info!(
        "{} training, {} validation, {} test images; D = {}",
        train.len(),
        val.as_ref().map_or(0, |v| v.len()),
        test.as_ref().map_or(0, |t| t.len()),
        train.d
    );
    let checkpoint = Checkpoint {
        path: a
            .checkpoint
            .clone()
            .unwrap_or_else(|| sibling(&a.output, "ckpt")),
        resume: a.resume,
        origin: em_origin(&a, seed),
    };
    // A resumed run takes EM's GMM from its checkpoint when EM's settings are the same.
    let from_checkpoint = match a.resume && !checkpoint.origin.is_empty() {
        true => dfk::deep::resume_initial_gmms(&checkpoint.path, &checkpoint.origin)?,
        false => None,
    };
    let from_checkpoint = from_checkpoint.and_then(|g| g.into_iter().next());
    if let Some(gmm) = &from_checkpoint {
        // Said here, naming the checkpoint: the trainer would only see a GMM of another D.
        if gmm.d() != train.d {
            anyhow::bail!(
                "{}: the checkpoint was made on descriptors of dimension {}, these have {} (the \
                 descriptors: --descriptors, or --config for images); resume with the \
                 checkpoint's data and settings, or remove it to start afresh",
                checkpoint.path.display(),
                gmm.d(),
                train.d
            );
        }
    }
    let (gmm, class_gmms) = match from_checkpoint {
        Some(gmm) => {
            tracing::info!(
                "initial GMM (K = {}) taken from the checkpoint {}, made by EM with the same \
                 settings: EM is not run again",
                gmm.k(),
                checkpoint.path.display()
            );
            (gmm, Vec::new())
        }
        None => initial_gmm(&a, &train, seed)?,
    };
    let class_gmms = match (&a.gmm, class_gmms.is_empty()) {
        (Some(path), false) => by_class_name(class_gmms, path, class_names.as_deref())?,
        _ => class_gmms,
    };
    if gmm.k() as f64 * a.min_weight >= 1.0 {
        return usage(format!(
            "--min-weight {}: {} components cannot all keep that weight (K · floor must be \
             below 1)",
            a.min_weight,
            gmm.k()
        ));
    }
    let data = DeepData {
        train: &train,
        val: val.as_ref(),
        test: test.as_ref(),
    };
    let inits = if class_gmms.is_empty() {
        std::slice::from_ref(&gmm)
    } else {
        &class_gmms[..]
    };
    let model = train_deep(inits, &data, &p, Some(&checkpoint))?;
    let h = &model.history;
    // The trainer checks a resumed checkpoint whole, so these cannot fail; but nothing is
    // indexed blindly, and nothing is written before they are known.
    let first = h
        .records
        .first()
        .context("the trainer returned an empty history")?;
    let best = h.records.get(h.best_iteration).with_context(|| {
        format!(
            "the trainer kept iteration {} of a history of {} records",
            h.best_iteration,
            h.records.len()
        )
    })?;
    config.fisher = p.fisher;
    config.svm = SvmConfig {
        c: a.c,
        eps: a.svm_eps,
        max_iter: a.svm_max_iter,
        bias: a.bias,
        weighting: if a.balanced {
            Weighting::Balanced
        } else {
            Weighting::Uniform
        },
    };
    config.gmm.k = gmm.k();
    if a.gmm.is_none() {
        // The EM settings that fitted the initial GMM, not the pipeline's defaults.
        let em = em_params(&a, seed);
        config.gmm.max_iter = em.max_iter;
        config.gmm.tol = em.tol;
        config.gmm.restarts = em.restarts;
        config.gmm.variance_floor = em.variance_floor;
        config.gmm.weight_floor = em.weight_floor;
        config.gmm.posterior_threshold = em.posterior_threshold;
        // EM ran on every training descriptor (--gmm-sample bounds only its k-means start).
        config.gmm.sample = train.data.len() / train.d.max(1);
        match em.init {
            dfk::gmm::GmmInit::KMeans { iters } => config.gmm.kmeans_iters = iters,
            dfk::gmm::GmmInit::KMeansPlusPlus => config.gmm.kmeans_iters = 0,
            _ => {}
        }
    }
    config.seed = seed;
    // Multi-label from the data's labels (a list file's several labels per image, or
    // --multilabel descriptor labels), as the shared mode's SVMs record it.
    let multilabel = matches!(train.labels, Labels::MultiLabel { .. });
    save_model(&a, multilabel, &model, &gmm, pca, &config, class_names)?;
    let summary = json!({
        "metric": h.metric,
        "iterations": h.records.len() - 1,
        "best_iteration": h.best_iteration,
        "stop_reason": h.stop_reason,
        "objective_initial": first.objective,
        "objective_best": best.objective,
        "val_initial": first.val_metric,
        "val_best": best.val_metric,
        "test_initial": first.test_metric,
        "test_best": best.test_metric,
        "output": a.output,
    });
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.2}%", 100.0 * v));
    emit(
        g,
        &summary,
        &format!(
            "{}: Fisher kernel (iteration 0) → Deep Fisher Kernel (iteration {}): objective {:.4} → {:.4}, validation {} → {}, test {} → {} ({}); model written to {}",
            h.metric,
            h.best_iteration,
            first.objective,
            best.objective,
            fmt(first.val_metric),
            fmt(best.val_metric),
            fmt(first.test_metric),
            fmt(best.test_metric),
            h.stop_reason,
            a.output.display()
        ),
    )?;
    Ok(())
}

/// The pipeline configuration and preprocessor (PCA) of the model file given as `--gmm` with
/// image data: the images must go through the PCA its GMM was fitted under, so a GMM file
/// without one (kind gmm), or another configuration (`--config`), is refused.
fn model_pipeline(
    path: &Path,
    config: Option<&Path>,
) -> anyhow::Result<(PipelineConfig, dfk::pipeline::Preprocessor)> {
    if let Some(c) = config {
        return usage(format!(
            "--config {}: with --gmm {} and images, the model's own pipeline configuration (dense \
             SIFT, PCA) is used: leave --config out",
            c.display(),
            path.display()
        ));
    }
    let model = ModelFile::load(path).with_context(|| {
        format!(
            "--gmm {}: with images, the GMM must come with the PCA it was fitted under: give a \
             pipeline model (dfk train --out, dfk deep -o)",
            path.display()
        )
    })?;
    let config: PipelineConfig = serde_json::from_value(model.config.clone())
        .with_context(|| format!("{}: header field `config`", path.display()))?;
    let d_in = model
        .pca
        .as_ref()
        .map_or(dfk::sift::DESCRIPTOR_LEN, |p| p.d_in());
    let pre = dfk::pipeline::Preprocessor::from_parts(d_in, model.pca.clone(), &config)
        .with_context(|| format!("{}: its PCA and configuration", path.display()))?;
    Ok((config, pre))
}

/// Reads `--config`, refusing the tables `dfk deep` does not take from it: its GMM, encoder
/// and SVM settings are flags, and a table that would be silently ignored is an error.
fn load_deep_config(path: &Path) -> anyhow::Result<PipelineConfig> {
    let text = crate::options::read_toml(path)?;
    let config = crate::options::parse_toml(path, &text)?;
    // Values wrong in the file are the user's to fix, named with it, before any work.
    let checked = config.validate().and_then(|()| {
        if config.pca.dims > dfk::sift::DESCRIPTOR_LEN {
            Err(dfk::Error::param(
                "pca.dims",
                config.pca.dims,
                format!(
                    "at most {} (the SIFT descriptor length)",
                    dfk::sift::DESCRIPTOR_LEN
                ),
            ))
        } else {
            Ok(())
        }
    });
    if let Err(e) = checked {
        return usage(format!("--config {}: {e}", path.display()));
    }
    if let Ok(table) = text.parse::<toml::Table>() {
        for (key, flags) in [
            ("gmm", "-k and the --gmm-* flags"),
            ("fisher", "--sqrt-epsilon and --posterior-threshold"),
            (
                "svm",
                "-C, --svm-eps, --svm-max-iter, --bias and --balanced",
            ),
        ] {
            if table.contains_key(key) {
                return usage(format!(
                    "--config {}: the [{key}] table is not used by dfk deep, which takes these \
                     settings from {flags}: remove it",
                    path.display()
                ));
            }
        }
    }
    Ok(config)
}

/// `--cache`, checked as `dfk train` checks it: a folder (created when missing), not a file,
/// and not inside an image folder given as `--data`, whose sub-folders are read as classes.
fn checked_cache(a: &Args) -> anyhow::Result<Option<PathBuf>> {
    let Some(dir) = &a.cache else {
        return Ok(None);
    };
    if std::fs::metadata(dir).is_ok_and(|m| !m.is_dir()) {
        return usage(format!(
            "--cache {}: exists and is not a folder: give a folder path (created when missing)",
            dir.display()
        ));
    }
    if let Some(root) = a.data.as_deref().filter(|p| p.is_dir()) {
        crate::util::check_outside_image_folder("--cache", dir, root)?;
    }
    Ok(Some(crate::util::folder_path(dir)))
}

/// The flags of the SVM settings, by the library's names for them.
const SVM_FLAGS: &[(&str, &str)] = &[
    ("svm c", "-C"),
    ("svm eps", "--svm-eps"),
    ("svm max_iter", "--svm-max-iter"),
    ("svm bias", "--bias"),
];

/// The model, checkpoint and history paths, checked before any work against each other and
/// the inputs ([`check_outputs`]). A checkpoint that is resumed from is an input as well as an
/// output, so only its folder is checked.
fn check_deep_outputs(a: &Args) -> anyhow::Result<()> {
    if a.checkpoint.is_none() && is_device(&a.output) {
        return usage(format!(
            "--output {} is not a file, so the checkpoint cannot go beside it as \
             `<output>.ckpt`: give --checkpoint FILE",
            a.output.display()
        ));
    }
    let paths = output_paths(a);
    let outputs: Vec<(&str, &Path)> = paths.iter().map(|(f, p)| (*f, p.as_path())).collect();
    let named = [
        ("--descriptors", &a.descriptors),
        ("--offsets", &a.offsets),
        ("--labels", &a.labels),
        ("--fashion-mnist", &a.fashion_mnist),
        ("--data", &a.data),
        ("--config", &a.config),
        ("--test-descriptors", &a.test_descriptors),
        ("--test-offsets", &a.test_offsets),
        ("--test-labels", &a.test_labels),
        ("--difficult", &a.difficult),
        ("--test-difficult", &a.test_difficult),
        ("--gmm", &a.gmm),
    ];
    let inputs: Vec<(&str, &Path)> = named
        .iter()
        .filter_map(|(flag, p)| p.as_deref().map(|p| (*flag, p)))
        .collect();
    check_outputs(&outputs, &inputs)?;
    // The images of a list file are inputs too (those of a folder are checked once listed).
    if let Some(list) = a.data.as_deref().filter(|p| p.is_file()) {
        let files = dataset::list_paths(list).unwrap_or_default();
        check_not_data(
            &outputs,
            &format!("an image listed in --data {}", list.display()),
            files.iter().map(PathBuf::as_path),
        )?;
    }
    Ok(())
}

/// The files `dfk deep` writes, with their flags: the model, the checkpoint and the history.
fn output_paths(a: &Args) -> Vec<(&'static str, PathBuf)> {
    let checkpoint = a
        .checkpoint
        .clone()
        .unwrap_or_else(|| sibling(&a.output, "ckpt"));
    let mut outputs = vec![("--output", a.output.clone()), ("--checkpoint", checkpoint)];
    if let Some(h) = &a.history {
        outputs.push(("--history", h.clone()));
    }
    outputs
}

/// Whether `path` is a device, FIFO or socket (such as `/dev/null`).
fn is_device(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir())
}

/// `<path>.<ext>` (appended, so `model.dfk` gives `model.dfk.ckpt`).
fn sibling(path: &Path, ext: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

fn save_model(
    a: &Args,
    multilabel: bool,
    model: &DeepModel,
    init: &Gmm,
    pca: Option<Pca>,
    config: &PipelineConfig,
    class_names: Option<Vec<String>>,
) -> anyhow::Result<()> {
    let classes = model.svms.iter().map(|s| s.models.len()).sum::<usize>();
    let (Some(svm0), Some(gmm0)) = (model.svms.first(), model.gmms.first()) else {
        anyhow::bail!(
            "the trainer returned {} GMMs and {} SVMs: nothing to save",
            model.gmms.len(),
            model.svms.len()
        );
    };
    let names: Vec<String> = match class_names {
        Some(n) if n.len() == classes => n,
        _ => (0..classes).map(|c| c.to_string()).collect(),
    };
    let (svm, class_gmms) = match model.mode {
        GmmMode::Shared => (svm0.clone(), Vec::new()),
        // Class c's single binary SVM becomes row c; it scores the FV under class c's GMM.
        GmmMode::PerClass => (
            OneVsRest {
                classes,
                dim: gmm0.fisher_len(),
                multilabel,
                models: model
                    .svms
                    .iter()
                    .flat_map(|s| s.models.iter().cloned())
                    .collect(),
            },
            model.gmms.clone(),
        ),
    };
    let file = ModelFile {
        pca,
        gmm: match model.mode {
            GmmMode::Shared => gmm0.clone(),
            GmmMode::PerClass => init.clone(),
        },
        svm: Some(svm),
        class_gmms,
        class_names: names,
        config: serde_json::to_value(config)?,
        history: json!({
            "deep": model.history.to_json(),
            // As JSON values, and the command line as given (its flags are the settings).
            "deep_settings": {
                "mode": serde_json::to_value(model.mode)?,
                "fisher": serde_json::to_value(model.fisher)?,
                "command_line": std::env::args_os()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect::<Vec<_>>(),
            },
            "initial_gmm": {
                "means": init.means(),
                "variances": init.variances(),
                "weights": init.weights(),
            },
        }),
    };
    // The model and `--history` land together or not at all: never a new model beside the
    // history of an earlier run.
    let mut files = npy::FileGroup::new();
    file.stage(&a.output, &mut files)?;
    if let Some(h) = &a.history {
        files.bytes(h, &serde_json::to_vec_pretty(&model.history)?)?;
    }
    files.commit()?;
    Ok(())
}

/// Descriptors of a data set through the pipeline's extraction and preprocessing.
fn extract(
    ds: &Dataset,
    config: &PipelineConfig,
    pre: &dfk::pipeline::Preprocessor,
    cache: Option<&Path>,
) -> anyhow::Result<ImageSet> {
    let (desc, _) = load_or_extract(ds, &config.sift, pre, cache, &|_| {})?;
    Ok(ImageSet::new(
        desc.data,
        desc.dim,
        desc.offsets,
        ds.labels(),
    )?)
}

/// The training and optional test images from exactly one source, the PCA of the image
/// pipeline (if any) and the pipeline configuration to store with the model.
/// What `dfk deep` trains and tests on.
struct Sets {
    train: ImageSet,
    test: Option<ImageSet>,
    /// The PCA of the image pipeline (none for descriptor files).
    pca: Option<Pca>,
    config: PipelineConfig,
    /// The image data set's class names; descriptor files have numbered classes only.
    class_names: Option<Vec<String>>,
}

fn load_sets(
    a: &Args,
    config_file: Option<PipelineConfig>,
    cache: Option<&Path>,
    seed: u64,
) -> anyhow::Result<Sets> {
    let sources = [
        a.descriptors.is_some(),
        a.fashion_mnist.is_some(),
        a.embedded,
        a.data.is_some(),
    ];
    if sources.iter().filter(|&&b| b).count() != 1 {
        return usage("give exactly one of --descriptors, --fashion-mnist, --embedded, --data");
    }
    if let (Some(x), Some(o), Some(y)) = (&a.descriptors, &a.offsets, &a.labels) {
        let mut train =
            with_difficult(read_set(x, o, y, a.multilabel)?, a.difficult.as_deref(), y)?;
        if let Some(n) = a.max_train {
            train = limit(train, n, seed);
        }
        let test = match (&a.test_descriptors, &a.test_offsets, &a.test_labels) {
            (Some(tx), Some(o), Some(y)) => {
                let test = with_difficult(
                    read_set(tx, o, y, a.multilabel)?,
                    a.test_difficult.as_deref(),
                    y,
                )?;
                if test.d != train.d {
                    anyhow::bail!(
                        "{}: descriptors of dimension {}, but those of --descriptors {} have {}",
                        tx.display(),
                        test.d,
                        x.display(),
                        train.d
                    );
                }
                match a.max_test {
                    Some(n) if n < test.len() => Some(test.subset(&(0..n).collect::<Vec<_>>())?),
                    _ => Some(test),
                }
            }
            _ => None,
        };
        // Class names, as for list files, from a `classes.txt` beside the labels (`dfk
        // extract` writes one), so that `dfk eval` can match class folders by name.
        // Labels index the names; a subset may not reach the last ones.
        let exact = matches!(train.labels, Labels::MultiLabel { .. });
        let all_names = dataset::classes_beside(y)?;
        // Test labels from another `extract` run number their own classes: matched by name.
        let test = match (test, &a.test_labels) {
            (Some(t), Some(ty)) => Some(test_in_training_classes(
                t,
                all_names.as_deref(),
                dataset::classes_beside(ty)?.as_deref(),
                y,
                ty,
            )?),
            (t, _) => t,
        };
        let class_names = match all_names {
            Some(names)
                if names.len() < train.labels.classes()
                    || (exact && names.len() != train.labels.classes()) =>
            {
                anyhow::bail!(
                    "{}: {} class name{}, but --labels {} has {} classes: expected a name for \
                     every class index (every column of a multi-label matrix), in index order",
                    y.parent()
                        .unwrap_or(Path::new(""))
                        .join("classes.txt")
                        .display(),
                    names.len(),
                    if names.len() == 1 { "" } else { "s" },
                    y.display(),
                    train.labels.classes()
                );
            }
            Some(mut names) => {
                names.truncate(train.labels.classes());
                Some(names)
            }
            None => None,
        };
        // Descriptors are used as given: no SIFT parameters apply, no PCA, no (x, y).
        let config = PipelineConfig {
            pca: PcaConfig {
                dims: 0,
                ..PcaConfig::default()
            },
            l2_normalize: false,
            spatial: false,
            ..PipelineConfig::default()
        };
        return Ok(Sets {
            train,
            test,
            pca: None,
            config,
            class_names,
        });
    }
    if a.descriptors.is_some() {
        return usage("--descriptors needs --offsets and --labels");
    }
    // A pipeline model as --gmm brings the SIFT settings and PCA its GMM was fitted under.
    let from_model = match &a.gmm {
        Some(path) => Some(model_pipeline(path, a.config.as_deref())?),
        None => None,
    };
    let mut config = match &from_model {
        Some((c, _)) => c.clone(),
        None => config_file.unwrap_or_default(),
    };
    config.seed = seed;
    config.validate()?;
    if let Some(p) = &config.pyramid {
        let source = match (&a.gmm, &a.config) {
            (Some(m), _) => format!("the model --gmm {} was trained with", m.display()),
            (None, Some(c)) => format!("--config {} asks for", c.display()),
            (None, None) => "the configuration asks for".to_string(),
        };
        return usage(format!(
            "{source} the spatial pyramid {p}: dfk deep learns the GMM of plain (whole-image) Fisher vectors only"
        ));
    }
    let (mut train, test) = if a.embedded {
        let (tr, te) = dataset::embedded_fashion_mnist()?;
        (tr, Some(te))
    } else if let Some(dir) = &a.fashion_mnist {
        let (tr, te) = dataset::load_fashion_mnist(dir)?;
        (tr, Some(te))
    } else {
        let path = a.data.as_deref().unwrap_or(Path::new("."));
        let policy = if a.skip_unreadable {
            dataset::OnError::Skip
        } else {
            dataset::OnError::Fail
        };
        let (ds, skipped) = if path.is_dir() {
            dataset::load_folder_with(path, policy)?
        } else {
            dataset::load_list_with(path, None, policy)?
        };
        if skipped > 0 {
            tracing::warn!(
                "{}: {skipped} unreadable image{} left out (--skip-unreadable)",
                path.display(),
                if skipped == 1 { "" } else { "s" }
            );
        }
        // Pixels that do not decode behind a readable header (a truncated file): found now,
        // by decoding every image once, rather than stopping the extraction.
        let ds = if a.skip_unreadable {
            crate::util::keep_decodable(ds, &path.display().to_string())?
        } else {
            ds
        };
        let paths = output_paths(a);
        let outputs: Vec<(&str, &Path)> = paths.iter().map(|(f, p)| (*f, p.as_path())).collect();
        check_not_data(
            &outputs,
            &format!("an image of --data {}", path.display()),
            ds.items.iter().filter_map(|item| match &item.source {
                dataset::ImageSource::File(p) => Some(p.as_path()),
                dataset::ImageSource::Memory { .. } => None,
            }),
        )?;
        (ds, None)
    };
    // Subset before extraction, so only the images used are described.
    if let Some(n) = a.max_train.filter(|&n| n < train.len()) {
        // As `limit`: every class keeps an image; an error means nothing rounds away.
        if let Ok((kept, _)) =
            dataset::stratified_split(&train, 1.0 - n as f64 / train.len() as f64, seed)
        {
            train = kept;
        }
    }
    let test = match (test, a.max_test) {
        (Some(t), Some(n)) if n < t.len() => Some(t.subset(&(0..n).collect::<Vec<_>>())?),
        (t, _) => t,
    };
    let pre = match from_model {
        Some((_, pre)) => pre,
        None => fit_preprocessor(&train, &config, &|_| {})?,
    };
    let train_set = extract(&train, &config, &pre, cache)?;
    let test_set = test
        .as_ref()
        .map(|t| extract(t, &config, &pre, cache))
        .transpose()?;
    Ok(Sets {
        train: train_set,
        test: test_set,
        pca: pre.pca,
        config,
        class_names: Some(train.class_names.clone()),
    })
}
