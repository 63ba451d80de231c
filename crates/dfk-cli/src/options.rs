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
    /// Use only the first N images of each set.
    #[arg(long)]
    pub limit: Option<usize>,
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
        Ok(Loaded {
            train: cut(train)?,
            test: test.map(cut).transpose()?,
            descriptors: None,
            description,
        })
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
        Ok(match format {
            DataFormat::Folder => dataset::load_folder(path)?,
            DataFormat::List => dataset::load_list(path)?,
            DataFormat::Voc => {
                let Some(split) = &self.split else {
                    return usage("--format voc needs --split (e.g. trainval or test)");
                };
                dataset::load_voc(path, split)?
            }
            DataFormat::Npy => return self.load_npy().map(|l| l.train),
            DataFormat::Idx => {
                let Some(labels) = &self.labels else {
                    return usage("--format idx needs --labels LABELS-FILE");
                };
                dataset::load_idx(path, labels)?
            }
        })
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
    #[arg(long, help_heading = "Descriptors")]
    pub magnif: Option<f32>,
    /// SIFT spatial window.
    #[arg(long, value_enum, help_heading = "Descriptors")]
    pub window: Option<WindowArg>,
    /// RootSIFT (L1 normalise, square root).
    #[arg(long, help_heading = "Descriptors")]
    pub root_sift: Option<bool>,
    /// Resize images to WxH before extraction, or `none`.
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
    #[arg(long, help_heading = "GMM")]
    pub k: Option<usize>,
    /// Maximum EM iterations.
    #[arg(long, help_heading = "GMM")]
    pub gmm_iter: Option<usize>,
    /// At most this many descriptors for EM.
    #[arg(long, help_heading = "GMM")]
    pub gmm_sample: Option<usize>,
    /// Relative variance floor.
    #[arg(long, help_heading = "GMM")]
    pub variance_floor: Option<f64>,
    /// EM's M-step posterior threshold: posteriors below this times a descriptor's largest
    /// one are left out of the means, variances and weights (0: keep all).
    #[arg(long, help_heading = "GMM")]
    pub gmm_posterior_threshold: Option<f32>,
    /// Improved Fisher vector (signed square root + L2).
    #[arg(long, help_heading = "Fisher vector")]
    pub improved: Option<bool>,
    /// SVM cost C.
    #[arg(long, help_heading = "SVM")]
    pub c: Option<f64>,
    /// SVM stopping tolerance.
    #[arg(long, help_heading = "SVM")]
    pub svm_eps: Option<f64>,
    /// SVM bias feature value (0: no bias).
    #[arg(long, help_heading = "SVM")]
    pub bias: Option<f32>,
    /// SVM class weighting.
    #[arg(long, value_enum, help_heading = "SVM")]
    pub weighting: Option<WeightingArg>,
}

impl ConfigArgs {
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
        if let Err(e) = cfg.validate() {
            return usage(format!("invalid pipeline settings: {e}"));
        }
        Ok(cfg)
    }
}

/// Reads a pipeline configuration from TOML (missing keys keep their defaults).
pub fn load_toml(path: &Path) -> anyhow::Result<PipelineConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let cfg: PipelineConfig = toml::from_str(&text)
        .with_context(|| format!("{}: invalid configuration", path.display()))?;
    Ok(cfg)
}
