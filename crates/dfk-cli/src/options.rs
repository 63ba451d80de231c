//! Options shared by the front-end subcommands: where the images come from (`DataArgs`) and
//! the pipeline settings, each a flag and all settable from a TOML file (`ConfigArgs`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use dfk::dataset::{self, Dataset, Descriptors};
use dfk::pipeline::{PipelineConfig, RawDescriptors, Weighting};
use dfk::pyramid::SpatialPyramid;
use dfk::sift::Window;

use crate::util::usage;
use crate::Global;

/// Layout of `--data`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DataFormat {
    /// `DIR/<class>/*.{png,jpg,...}` (classes sorted by name).
    Folder,
    /// A list file: `path label [label ...]` per line.
    List,
    /// A PASCAL VOC devkit root (`ImageSets/Main`, `JPEGImages`); `--split` names the split.
    Voc,
    /// Fashion-MNIST/MNIST IDX files: `--data` is the images file, `--labels` the labels file.
    Idx,
    /// Precomputed descriptors instead of images: a list file `file.npy label [label ...]`
    /// naming one N_i×D .npy matrix per image (SIFT is skipped; needs --spatial false).
    Npy,
}

/// Where the images come from: exactly one of `--data`, `--fashion-mnist`, `--embedded`.
#[derive(Debug, Clone, clap::Args)]
pub struct DataArgs {
    /// A data set: a folder of class sub-folders, a list file, a VOC devkit, or IDX images.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Layout of --data (default: folder for a directory, list for a file).
    #[arg(long, value_enum)]
    pub format: Option<DataFormat>,
    /// VOC split (e.g. trainval, test).
    #[arg(long)]
    pub split: Option<String>,
    /// IDX labels file for --format idx.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// A folder with the four Fashion-MNIST IDX files (train-* and t10k-*, gzipped or raw).
    #[arg(long, value_name = "DIR")]
    pub fashion_mnist: Option<PathBuf>,
    /// The embedded Fashion-MNIST subset (2,000 training / 1,000 test images).
    #[arg(long)]
    pub embedded: bool,
    /// Use only the first N images of each set (at least 1).
    #[arg(long, value_parser = parse_limit)]
    pub limit: Option<usize>,
    /// Leave out image files that are missing, whose header cannot be read or whose pixels do
    /// not decode (a warning counts them) instead of stopping at the first; folder, list and
    /// VOC data. Decodes every image once more to find the last kind.
    #[arg(long)]
    pub skip_unreadable: bool,
}

/// A data set and, for sources that have one, its separate test set.
pub struct Loaded {
    pub train: Dataset,
    pub test: Option<Dataset>,
    /// With `--format npy`: the precomputed descriptors of `train`. Their positions are
    /// unknown, so NaN: anything that would use them (a spatial pyramid, appended (x, y))
    /// fails instead of placing every descriptor at the centre.
    pub descriptors: Option<RawDescriptors>,
    /// What was loaded, for messages and reports.
    pub description: String,
}

impl DataArgs {
    /// The files and folders named on the command line, as (flag, path), for
    /// [`crate::util::check_outputs`].
    pub fn inputs(&self) -> Vec<(&'static str, &std::path::Path)> {
        let mut out = Vec::new();
        if let Some(p) = &self.data {
            out.push(("--data", p.as_path()));
        }
        if let Some(p) = &self.labels {
            out.push(("--labels", p.as_path()));
        }
        if let Some(p) = &self.fashion_mnist {
            out.push(("--fashion-mnist", p.as_path()));
        }
        out
    }

    /// Whether `--data` holds precomputed descriptors (`--format npy`) instead of images.
    pub fn is_descriptors(&self) -> bool {
        self.format == Some(DataFormat::Npy)
    }

    /// A list file given as `--data` (`--format list` or `npy`, or a file without
    /// `--format`), whose named files are inputs too.
    fn list_file(&self) -> Option<&Path> {
        let path = self.data.as_deref()?;
        match self.format {
            Some(DataFormat::List | DataFormat::Npy) => Some(path),
            None if path.is_file() => Some(path),
            _ => None,
        }
    }

    /// Refuses, before any work, an output folder (`--report`, `--out-dir`) inside an image
    /// folder given as `--data`: every sub-folder there is read as a class, so the next run on
    /// the same data would find a class folder without images (or with other files).
    pub fn check_folders_outside_data(&self, folders: &[(&str, &Path)]) -> anyhow::Result<()> {
        let Some(root) = self.data.as_deref() else {
            return Ok(());
        };
        let folder_layout = match self.format {
            Some(DataFormat::Folder) => true,
            None => root.is_dir(),
            _ => false,
        };
        if !folder_layout {
            return Ok(());
        }
        for &(flag, dir) in folders {
            crate::util::check_outside_image_folder(flag, dir, root)?;
        }
        Ok(())
    }

    /// Refuses, before loading, an output that is a file named in the `--data` list file (an
    /// image, or a descriptor `.npy` with `--format npy`), which writing it would replace. A
    /// list that cannot be read is left to the loader to report.
    pub fn check_outputs_not_listed(&self, outputs: &[(&str, &Path)]) -> anyhow::Result<()> {
        let Some(list) = self.list_file() else {
            return Ok(());
        };
        let files = dataset::list_paths(list).unwrap_or_default();
        let what = if self.format == Some(DataFormat::Npy) {
            "a descriptor file"
        } else {
            "an image"
        };
        crate::util::check_not_data(
            outputs,
            &format!("{what} listed in --data {}", list.display()),
            files.iter().map(PathBuf::as_path),
        )
    }

    /// Refuses an output that is one of the files of the loaded sets (the images of a folder,
    /// list or VOC devkit, the descriptor files of `--format npy`), which writing it would
    /// replace: after loading, before any work.
    pub fn check_outputs_not_loaded(
        &self,
        outputs: &[(&str, &Path)],
        loaded: &Loaded,
    ) -> anyhow::Result<()> {
        let files = std::iter::once(&loaded.train)
            .chain(&loaded.test)
            .flat_map(|d| &d.items)
            .filter_map(|item| match &item.source {
                dataset::ImageSource::File(p) => Some(p.as_path()),
                dataset::ImageSource::Memory { .. } => None,
            });
        let what = if loaded.descriptors.is_some() {
            "a descriptor file"
        } else {
            "an image"
        };
        let data = self.data.as_deref().unwrap_or(Path::new("."));
        crate::util::check_not_data(
            outputs,
            &format!("{what} of --data {}", data.display()),
            files,
        )
    }

    /// Loads the chosen source (which must be exactly one).
    pub fn load(&self) -> anyhow::Result<Loaded> {
        let chosen = [
            self.data.is_some(),
            self.fashion_mnist.is_some(),
            self.embedded,
        ]
        .iter()
        .filter(|&&b| b)
        .count();
        if chosen != 1 {
            return usage("give exactly one of --data, --fashion-mnist, --embedded");
        }
        if self.skip_unreadable && (self.data.is_none() || self.format == Some(DataFormat::Npy)) {
            return usage(
                "--skip-unreadable applies to image files (folder, list and VOC data given as \
                 --data), not to --fashion-mnist, --embedded or --format npy",
            );
        }
        if self.format == Some(DataFormat::Npy) {
            return self.load_npy();
        }
        let (train, test, description) = if self.embedded {
            let (train, test) = dataset::embedded_fashion_mnist()?;
            (
                train,
                Some(test),
                "embedded Fashion-MNIST subset".to_string(),
            )
        } else if let Some(dir) = &self.fashion_mnist {
            let (train, test) = dataset::load_fashion_mnist(dir)?;
            (
                train,
                Some(test),
                format!("Fashion-MNIST from {}", dir.display()),
            )
        } else {
            let path = self.data.as_deref().unwrap_or(Path::new("."));
            (self.load_path(path)?, None, path.display().to_string())
        };
        let cut = |d: Dataset| -> anyhow::Result<Dataset> {
            match self.limit {
                Some(n) if n < d.len() => {
                    let idx: Vec<usize> = (0..n).collect();
                    Ok(d.subset(&idx)?)
                }
                _ => Ok(d),
            }
        };
        let decodable = |d: Dataset| -> anyhow::Result<Dataset> {
            match self.skip_unreadable {
                true => crate::util::keep_decodable(d, &description),
                false => Ok(d),
            }
        };
        Ok(Loaded {
            train: decodable(cut(train)?)?,
            test: test.map(|t| decodable(cut(t)?)).transpose()?,
            descriptors: None,
            description,
        })
    }

    /// Refuses a `--limit` whose first N training images leave a class without an image (the
    /// SVMs need every class), naming the class, before any work.
    /// Refuses, before any work, training data with a single class: one-vs-rest SVMs need
    /// negatives (multi-label data sets have their own per-class check in training).
    pub fn check_several_classes(&self, train: &Dataset, description: &str) -> anyhow::Result<()> {
        if !train.multilabel && train.classes() < 2 {
            anyhow::bail!(
                "the training data ({description}) have {} class{} ({}): a classifier needs at \
                 least two",
                train.classes(),
                if train.classes() == 1 { "" } else { "es" },
                train.class_names.join(", ")
            );
        }
        Ok(())
    }

    /// Every class needs a training image, and (multi-label) an image without it: each
    /// one-vs-rest SVM needs both. Checked before any extraction, which can take hours, and
    /// named: class indices from a list numbered from 1, a `classes.txt` naming a class the
    /// list lacks, or a label with a space (read as two labels) are the usual causes.
    pub fn check_every_class_trainable(
        &self,
        train: &Dataset,
        description: &str,
    ) -> anyhow::Result<()> {
        let labels = train.labels();
        let name = |c: usize| {
            train
                .class_names
                .get(c)
                .filter(|s| **s != c.to_string())
                .map_or(c.to_string(), |s| format!("{c} ({s})"))
        };
        match dfk::svm::untrainable_class(&labels) {
            Some((c, dfk::svm::Untrainable::NoPositive)) => {
                let numbered = train
                    .class_names
                    .iter()
                    .enumerate()
                    .all(|(i, n)| *n == i.to_string());
                let hint = if numbered {
                    format!(
                        "classes are the indices 0..{}: a list numbered from 1 leaves class 0 \
                         empty",
                        labels.classes() - 1
                    )
                } else {
                    "a classes.txt naming a class that no image has, or a subset without it, \
                     leaves it empty"
                        .to_string()
                };
                anyhow::bail!(
                    "the training data ({description}) have no image of class {}: every class \
                     needs at least one ({hint})",
                    name(c)
                );
            }
            Some((c, dfk::svm::Untrainable::NoNegative)) => {
                // Single-label data with one class are refused earlier (at least two classes);
                // with several, this class holding every image leaves another empty.
                let space = if train.multilabel {
                    " (a label with a space in a list is read as two labels)"
                } else {
                    ""
                };
                anyhow::bail!(
                    "the training data ({description}): all {} images are positives of class \
                     {}: its one-vs-rest SVM needs at least one image without it{space}",
                    labels.n(),
                    name(c)
                );
            }
            None => {}
        }
        Ok(())
    }

    pub fn check_limit_keeps_every_class(&self, train: &Dataset) -> anyhow::Result<()> {
        let Some(n) = self.limit else {
            return Ok(());
        };
        let counts = train.class_counts();
        match counts.iter().position(|&c| c == 0) {
            Some(c) if train.len() == n => {
                let missing = counts.iter().filter(|&&c| c == 0).count();
                let name = train.class_names.get(c).map_or("", String::as_str);
                usage(format!(
                    "--limit {n}: the first {n} training images hold no image of class {c} \
                     ({name}){}; every class needs one: raise --limit",
                    if missing > 1 {
                        format!(" nor of {} other classes", missing - 1)
                    } else {
                        String::new()
                    }
                ))
            }
            _ => Ok(()),
        }
    }

    fn load_npy(&self) -> anyhow::Result<Loaded> {
        let Some(list) = &self.data else {
            return usage("--format npy needs --data LIST-FILE");
        };
        if self.split.is_some() || self.labels.is_some() {
            return usage("--split and --labels do not apply to --format npy");
        }
        let (mut d, mut data) = Descriptors::from_list(list, None)?;
        if let Some(n) = self.limit.filter(|&n| n < data.len()) {
            let idx: Vec<usize> = (0..n).collect();
            data = data.subset(&idx)?;
            d.data.truncate(d.offsets[n] * d.dim);
            d.offsets.truncate(n + 1);
        }
        let positions = vec![f32::NAN; 2 * d.rows()];
        Ok(Loaded {
            train: data,
            test: None,
            descriptors: Some(RawDescriptors {
                descriptors: d,
                positions,
            }),
            description: format!("precomputed descriptors listed in {}", list.display()),
        })
    }

    fn load_path(&self, path: &Path) -> anyhow::Result<Dataset> {
        let format = self.format.unwrap_or(if path.is_dir() {
            DataFormat::Folder
        } else {
            DataFormat::List
        });
        if format != DataFormat::Voc && self.split.is_some() {
            return usage("--split applies to --format voc only");
        }
        if format != DataFormat::Idx && self.labels.is_some() {
            return usage("--labels applies to --format idx only");
        }
        match format {
            DataFormat::List if path.is_dir() => {
                return usage(format!(
                    "--data {} is a folder, but --format list reads a list file (a folder of \
                     class sub-folders is --format folder)",
                    path.display()
                ))
            }
            DataFormat::Folder if path.exists() && !path.is_dir() => {
                return usage(format!(
                    "--data {} is a file, but --format folder reads a folder of class \
                     sub-folders (a list file is --format list)",
                    path.display()
                ))
            }
            _ => {}
        }
        if self.skip_unreadable && format == DataFormat::Idx {
            return usage(
                "--skip-unreadable applies to image files (folder, list and VOC data), not to \
                 --format idx",
            );
        }
        let policy = if self.skip_unreadable {
            dataset::OnError::Skip
        } else {
            dataset::OnError::Fail
        };
        let (data, skipped) = match format {
            DataFormat::Folder => dataset::load_folder_with(path, policy)?,
            DataFormat::List => dataset::load_list_with(path, None, policy)?,
            DataFormat::Voc => {
                let Some(split) = &self.split else {
                    return usage("--format voc needs --split (e.g. trainval or test)");
                };
                let options = dataset::VocOptions {
                    on_error: policy,
                    ..dataset::VocOptions::default()
                };
                let voc = dataset::load_voc_with(path, split, options)?;
                (voc.dataset, voc.skipped)
            }
            DataFormat::Npy => return self.load_npy().map(|l| l.train),
            DataFormat::Idx => {
                let Some(labels) = &self.labels else {
                    return usage("--format idx needs --labels LABELS-FILE");
                };
                (dataset::load_idx(path, labels)?, 0)
            }
        };
        if skipped > 0 {
            tracing::warn!(
                "{}: {skipped} unreadable image{} left out (--skip-unreadable)",
                path.display(),
                if skipped == 1 { "" } else { "s" }
            );
        }
        Ok(data)
    }
}

/// A `--resize` value: a size, or none (keep the image size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resize(pub Option<(u32, u32)>);

/// Parses `WxH` (or `none`).
fn parse_resize(s: &str) -> Result<Resize, String> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(Resize(None));
    }
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("expected WIDTHxHEIGHT or none, got {s:?}"))?;
    let w: u32 = w.trim().parse().map_err(|e| format!("width {w:?}: {e}"))?;
    let h: u32 = h.trim().parse().map_err(|e| format!("height {h:?}: {e}"))?;
    Ok(Resize(Some((w, h))))
}

/// A `--pyramid` value: levels, or none (one Fisher vector per image).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PyramidArg(pub Option<SpatialPyramid>);

/// Parses `ROWSxCOLS,...` (e.g. `1x1,2x2,3x1`) or `none`.
fn parse_pyramid(s: &str) -> Result<PyramidArg, String> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(PyramidArg(None));
    }
    s.parse()
        .map(|p| PyramidArg(Some(p)))
        .map_err(|e| e.to_string())
}

/// Window choice on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WindowArg {
    Flat,
    Gaussian,
}

/// Class weighting on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WeightingArg {
    Uniform,
    Balanced,
}

/// Pipeline settings. Each flag overrides the value from `--config FILE.toml`, which overrides
/// the defaults (see `docs/cli.md`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigArgs {
    /// TOML file with pipeline settings (the keys of `dfk info --config` output).
    #[arg(long, value_name = "FILE.toml")]
    pub config: Option<PathBuf>,
    /// SIFT spatial bin sizes in pixels, comma-separated.
    #[arg(long, value_delimiter = ',', help_heading = "Descriptors")]
    pub bins: Option<Vec<usize>>,
    /// SIFT grid step in pixels.
    #[arg(long, help_heading = "Descriptors")]
    pub step: Option<usize>,
    /// SIFT smoothing: σ = bin / magnif.
    #[arg(long, value_parser = parse_f32, help_heading = "Descriptors")]
    pub magnif: Option<f32>,
    /// SIFT spatial window.
    #[arg(long, value_enum, help_heading = "Descriptors")]
    pub window: Option<WindowArg>,
    /// RootSIFT (L1 normalise, square root).
    #[arg(long, help_heading = "Descriptors")]
    pub root_sift: Option<bool>,
    /// Resize images to WxH before extraction (W·H at most 2^26, e.g. 8192x8192; ~3 GB per image in flight at 4096x4096), or `none`.
    #[arg(long, value_parser = parse_resize, help_heading = "Descriptors")]
    pub resize: Option<Resize>,
    /// PCA output dimension (0: no PCA).
    #[arg(long, help_heading = "Preprocessing")]
    pub pca_dims: Option<usize>,
    /// Whiten the PCA output.
    #[arg(long, help_heading = "Preprocessing")]
    pub whiten: Option<bool>,
    /// L2-normalise each descriptor after PCA.
    #[arg(long, help_heading = "Preprocessing")]
    pub l2: Option<bool>,
    /// Append each descriptor's (x, y) position.
    #[arg(long, help_heading = "Preprocessing")]
    pub spatial: Option<bool>,
    /// Spatial pyramid of Fisher vectors: ROWSxCOLS levels, e.g. 1x1,2x2,3x1 (3x1 = three
    /// horizontal stripes), or `none`.
    #[arg(long, value_parser = parse_pyramid, value_name = "LEVELS", help_heading = "Fisher vector")]
    pub pyramid: Option<PyramidArg>,
    /// Number of GMM components K.
    #[arg(long, short = 'k', help_heading = "GMM")]
    pub k: Option<usize>,
    /// Maximum EM iterations.
    #[arg(long, help_heading = "GMM")]
    pub gmm_iter: Option<usize>,
    /// At most this many descriptors for EM.
    #[arg(long, help_heading = "GMM")]
    pub gmm_sample: Option<usize>,
    /// Variance floor relative to each dimension's data variance (0 to 1).
    #[arg(long, help_heading = "GMM")]
    pub variance_floor: Option<f64>,
    /// EM's M-step posterior threshold: posteriors below this times a descriptor's largest
    /// one are left out of the means, variances and weights (0: keep all).
    #[arg(long, value_parser = parse_f32, help_heading = "GMM")]
    pub gmm_posterior_threshold: Option<f32>,
    /// Improved Fisher vector: the signed square root (`fisher.improved`). The L2
    /// normalisation that completes VLFeat's improved FV is its own setting, `fisher.l2` in a
    /// --config file (on by default): `--improved false` alone still L2-normalises.
    #[arg(long, help_heading = "Fisher vector")]
    pub improved: Option<bool>,
    /// SVM cost C.
    #[arg(long, help_heading = "SVM")]
    pub c: Option<f64>,
    /// SVM stopping tolerance.
    #[arg(long, help_heading = "SVM")]
    pub svm_eps: Option<f64>,
    /// SVM bias feature value (0: no bias).
    #[arg(long, value_parser = parse_f32, help_heading = "SVM")]
    pub bias: Option<f32>,
    /// SVM class weighting.
    #[arg(long, value_enum, help_heading = "SVM")]
    pub weighting: Option<WeightingArg>,
}

impl ConfigArgs {
    /// The configuration file, if any, as (flag, path) for [`crate::util::check_outputs`].
    pub fn inputs(&self) -> Vec<(&'static str, &Path)> {
        self.config
            .iter()
            .map(|p| ("--config", p.as_path()))
            .collect()
    }

    /// Defaults, then `--config`, then the flags, then the global `--seed`; validated.
    pub fn resolve(&self, g: &Global) -> anyhow::Result<PipelineConfig> {
        let mut cfg = match &self.config {
            Some(path) => load_toml(path)?,
            None => PipelineConfig::default(),
        };
        macro_rules! set {
            ($flag:expr, $field:expr) => {
                if let Some(v) = $flag.clone() {
                    $field = v;
                }
            };
        }
        set!(self.bins, cfg.sift.bin_sizes);
        set!(self.step, cfg.sift.step);
        set!(self.magnif, cfg.sift.magnif);
        set!(self.root_sift, cfg.sift.root_sift);
        if let Some(Resize(r)) = self.resize {
            cfg.sift.resize = r;
        }
        if let Some(w) = self.window {
            cfg.sift.window = match w {
                WindowArg::Flat => Window::Flat,
                WindowArg::Gaussian => Window::Gaussian,
            };
        }
        set!(self.pca_dims, cfg.pca.dims);
        set!(self.whiten, cfg.pca.whiten);
        set!(self.l2, cfg.l2_normalize);
        set!(self.spatial, cfg.spatial);
        if let Some(PyramidArg(p)) = &self.pyramid {
            cfg.pyramid = p.clone();
        }
        set!(self.k, cfg.gmm.k);
        set!(self.gmm_iter, cfg.gmm.max_iter);
        set!(self.gmm_sample, cfg.gmm.sample);
        set!(self.variance_floor, cfg.gmm.variance_floor);
        set!(self.gmm_posterior_threshold, cfg.gmm.posterior_threshold);
        set!(self.improved, cfg.fisher.improved);
        set!(self.c, cfg.svm.c);
        set!(self.svm_eps, cfg.svm.eps);
        set!(self.bias, cfg.svm.bias);
        if let Some(w) = self.weighting {
            cfg.svm.weighting = match w {
                WeightingArg::Uniform => Weighting::Uniform,
                WeightingArg::Balanced => Weighting::Balanced,
            };
        }
        if crate::util::seed_given() {
            cfg.seed = g.seed;
        }
        self.validate(&cfg)?;
        // The model stores the configuration, which `info --config` prints as TOML (and
        // `--config` reads): its integers are 64-bit signed, the flags' unsigned.
        if let Some((key, v)) = beyond_toml_integers(&serde_json::to_value(&cfg)?, "") {
            let flags = [
                ("seed", "--seed", crate::util::seed_given()),
                ("gmm.k", "--k", self.k.is_some()),
                ("gmm.max_iter", "--gmm-iter", self.gmm_iter.is_some()),
                ("gmm.sample", "--gmm-sample", self.gmm_sample.is_some()),
                ("pca.dims", "--pca-dims", self.pca_dims.is_some()),
            ];
            let (flag, given) = flags
                .iter()
                .find(|f| f.0 == key)
                .map_or(("", false), |f| (f.1, f.2));
            return self
                .setting_usage(
                    (flag, &key, given),
                    &v.to_string(),
                    &format!(
                        "at most {} (the configuration is stored as TOML, whose integers are \
                         64-bit signed)",
                        i64::MAX
                    ),
                )
                .map(|()| cfg);
        }
        Ok(cfg)
    }

    /// Checks `pca.dims` against the dimension of the descriptors it projects, `d_in`
    /// (`source` says where that comes from), before any work: a usage error naming
    /// `--pca-dims` (or the configuration's key).
    pub fn check_pca_dims(
        &self,
        cfg: &PipelineConfig,
        d_in: usize,
        source: &str,
    ) -> anyhow::Result<()> {
        let dims = cfg.pca.dims;
        if dims <= d_in {
            return Ok(());
        }
        self.setting_usage(
            ("--pca-dims", "pca.dims", self.pca_dims.is_some()),
            &dims.to_string(),
            &format!("at most the input dimension {d_in} ({source}), or 0 for no PCA"),
        )
    }

    /// Checks the merged settings, a usage error naming the flag when it was given, else the
    /// configuration file's key: each part of the configuration is validated on its own, so
    /// that a parameter name the parts share (`posterior_threshold`) finds the right flag.
    fn validate(&self, cfg: &PipelineConfig) -> anyhow::Result<()> {
        // (library name, flag, TOML key, whether the flag was given)
        let sift = [
            ("bin_sizes", "--bins", "sift.bin_sizes", self.bins.is_some()),
            ("step", "--step", "sift.step", self.step.is_some()),
            ("magnif", "--magnif", "sift.magnif", self.magnif.is_some()),
            ("resize", "--resize", "sift.resize", self.resize.is_some()),
            ("window_size", "", "sift.window_size", false),
            ("contrast_threshold", "", "sift.contrast_threshold", false),
            ("clamp", "", "sift.clamp", false),
        ];
        let gmm = [
            ("k", "--k", "gmm.k", self.k.is_some()),
            ("tol", "", "gmm.tol", false),
            ("restarts", "", "gmm.restarts", false),
            (
                "variance_floor",
                "--variance-floor",
                "gmm.variance_floor",
                self.variance_floor.is_some(),
            ),
            ("weight_floor", "", "gmm.weight_floor", false),
            (
                "posterior_threshold",
                "--gmm-posterior-threshold",
                "gmm.posterior_threshold",
                self.gmm_posterior_threshold.is_some(),
            ),
        ];
        let svm = [
            ("svm c", "--c", "svm.c", self.c.is_some()),
            ("svm eps", "--svm-eps", "svm.eps", self.svm_eps.is_some()),
            ("svm max_iter", "", "svm.max_iter", false),
            ("svm bias", "--bias", "svm.bias", self.bias.is_some()),
        ];
        let fisher = [
            ("power", "", "fisher.power", false),
            (
                "posterior_threshold",
                "",
                "fisher.posterior_threshold",
                false,
            ),
            ("sqrt_epsilon", "", "fisher.sqrt_epsilon", false),
        ];
        let rest = [
            ("pca.sample", "", "pca.sample", false),
            (
                "pca.dims",
                "--pca-dims",
                "pca.dims",
                self.pca_dims.is_some(),
            ),
            (
                "gmm.sample",
                "--gmm-sample",
                "gmm.sample",
                self.gmm_sample.is_some(),
            ),
        ];
        let named = |e: dfk::Error, table: &[(&str, &str, &str, bool)]| -> anyhow::Error {
            self.setting_error(e, table)
        };
        cfg.sift.validate().map_err(|e| named(e, &sift))?;
        // The weight floor (default 1e-6) bounds K: name the setting that is out of range.
        let g = &cfg.gmm;
        if let Some(expected) = k_beyond_weight_floor(g.k, g.weight_floor) {
            return self.setting_usage(
                ("--k", "gmm.k", self.k.is_some()),
                &g.k.to_string(),
                &expected,
            );
        }
        if !(g.variance_floor.is_finite() && (0.0..=1.0).contains(&g.variance_floor)) {
            return self.setting_usage(
                (
                    "--variance-floor",
                    "gmm.variance_floor",
                    self.variance_floor.is_some(),
                ),
                &g.variance_floor.to_string(),
                VARIANCE_FLOOR_RANGE,
            );
        }
        cfg.gmm_params().validate().map_err(|e| named(e, &gmm))?;
        // EM fits K components on the sample: fewer than K descriptors always fail, so say
        // so before the work, naming both settings (a flag, or the configuration's key).
        if g.sample < g.k {
            let name = |given: bool, flag: &str, key: &str, value: usize| match &self.config {
                Some(file) if !given => format!("{key} = {value} in {}", file.display()),
                _ => format!("{flag} {value}"),
            };
            return usage(format!(
                "{} is less than {}: EM needs at least one descriptor per component; raise \
                 --gmm-sample or lower --k",
                name(
                    self.gmm_sample.is_some(),
                    "--gmm-sample",
                    "gmm.sample",
                    g.sample
                ),
                name(self.k.is_some(), "--k", "gmm.k", g.k),
            ));
        }
        cfg.svm
            .params(cfg.seed)
            .validate()
            .map_err(|e| named(e, &svm))?;
        cfg.fisher.validate().map_err(|e| named(e, &fisher))?;
        cfg.validate().map_err(|e| named(e, &rest))?;
        Ok(())
    }

    /// A library parameter error in terms of the command line: `--flag VALUE: expected …`
    /// when the flag was given, `key = VALUE in FILE: expected …` when the value came from the
    /// configuration file; other errors as they are.
    fn setting_error(&self, e: dfk::Error, table: &[(&str, &str, &str, bool)]) -> anyhow::Error {
        if let dfk::Error::InvalidParameter {
            name,
            value,
            expected,
        } = &e
        {
            if let Some(&(_, flag, key, given)) = table.iter().find(|(n, ..)| n == name) {
                if let Err(err) = self.setting_usage((flag, key, given), value, expected) {
                    return err;
                }
            }
        }
        crate::util::UsageError(format!("invalid pipeline settings: {e}")).into()
    }

    /// A usage error for a setting given as `flag` on the command line (when `given`) or as
    /// `key` in the configuration file.
    fn setting_usage(
        &self,
        (flag, key, given): (&str, &str, bool),
        value: &str,
        expected: &str,
    ) -> anyhow::Result<()> {
        let value = tidy_number(value);
        match &self.config {
            _ if given && !flag.is_empty() => usage(format!("{flag} {value}: expected {expected}")),
            Some(file) => usage(format!(
                "{key} = {value} in {}: expected {expected}",
                file.display()
            )),
            None => usage(format!(
                "invalid setting {key} = {value}: expected {expected}"
            )),
        }
    }
}

/// What `--pca-dims` is compared with for images: the length of a SIFT descriptor.
pub const SIFT_VALUES: &str = "the values of one SIFT descriptor";

/// When `k` components are too many for EM's weight floor (each weight is kept at or above
/// it, so K · floor must stay below 1), what K may be; `None` when K is fine (or the floor
/// itself is invalid, which its own check reports).
pub fn k_beyond_weight_floor(k: usize, weight_floor: f64) -> Option<String> {
    let floor_ok = weight_floor.is_finite() && weight_floor > 0.0 && weight_floor < 1.0;
    if !floor_ok || k == 0 || weight_floor * (k as f64) < 1.0 {
        return None;
    }
    let max = ((1.0 / weight_floor).ceil() as u64).saturating_sub(1);
    Some(format!(
        "at most {max} components (EM's weight floor {weight_floor:e} needs K · floor < 1)"
    ))
}

/// A number for a message: as written when short, else in scientific notation (`1e300`, not
/// three hundred digits).
pub fn tidy_number(value: &str) -> String {
    // Integers are shown as given (a huge count or seed is not a float).
    if value.parse::<i128>().is_ok() {
        return value.to_string();
    }
    match value.parse::<f64>() {
        Ok(v) if value.len() > 12 && v.is_finite() => format!("{v:e}"),
        _ => value.to_string(),
    }
}

/// The first integer setting of `value` (a configuration as JSON, keys joined by `.`) beyond
/// the TOML integers (64-bit signed), with its key.
fn beyond_toml_integers(value: &serde_json::Value, key: &str) -> Option<(String, u64)> {
    match value {
        serde_json::Value::Number(n) => n
            .as_u64()
            .filter(|&v| v > i64::MAX as u64)
            .map(|v| (key.to_string(), v)),
        serde_json::Value::Object(m) => m.iter().find_map(|(k, v)| {
            let key = if key.is_empty() {
                k.clone()
            } else {
                format!("{key}.{k}")
            };
            beyond_toml_integers(v, &key)
        }),
        serde_json::Value::Array(a) => a
            .iter()
            .enumerate()
            .find_map(|(i, v)| beyond_toml_integers(v, &format!("{key}[{i}]"))),
        _ => None,
    }
}

/// The accepted range of a GMM variance floor relative to the data variance: above 1 a
/// component would be wider than the data, and huge values overflow the float32 variances.
pub const VARIANCE_FLOOR_RANGE: &str = "a value in [0, 1] (relative to each dimension's data \
                                        variance)";

/// Checks a variance floor relative to the data variance (see [`VARIANCE_FLOOR_RANGE`]).
pub fn check_variance_floor(flag: &str, value: f64) -> anyhow::Result<()> {
    if value.is_finite() && (0.0..=1.0).contains(&value) {
        return Ok(());
    }
    usage(format!(
        "{flag} {}: expected {VARIANCE_FLOOR_RANGE}",
        tidy_number(&value.to_string())
    ))
}

/// Parses `--limit N`: a count of images, at least 1 (0 would leave an empty data set).
fn parse_limit(s: &str) -> Result<usize, String> {
    let n: usize = s
        .trim()
        .parse()
        .map_err(|e| format!("`{s}` is not a count of images: {e}"))?;
    if n == 0 {
        return Err("expected at least 1 image (leave --limit out to use them all)".into());
    }
    Ok(n)
}

/// Parses a float32 flag value, refusing one that does not fit (`1e308` would become
/// infinity) and non-finite values.
pub fn parse_f32(s: &str) -> Result<f32, String> {
    let v: f32 = s
        .trim()
        .parse()
        .map_err(|e| format!("`{s}` is not a number: {e}"))?;
    if !v.is_finite() {
        return Err(format!(
            "`{s}` is not a finite 32-bit float (at most ±{:e})",
            f32::MAX
        ));
    }
    Ok(v)
}

/// Reads a pipeline configuration from TOML (missing keys keep their defaults).
pub fn load_toml(path: &Path) -> anyhow::Result<PipelineConfig> {
    parse_toml(path, &read_toml(path)?)
}

/// The text of the configuration file `path`.
pub fn read_toml(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// The configuration in `text`, read from `path` (named in errors).
pub fn parse_toml(path: &Path, text: &str) -> anyhow::Result<PipelineConfig> {
    // A value the file gets wrong is the user's to fix, like a bad flag: a usage error.
    toml::from_str(text).map_err(|e| {
        crate::util::UsageError(format!("{}: invalid configuration: {e}", path.display())).into()
    })
}
