//! The image classification pipeline around the Fisher vector: configuration, dense SIFT
//! extraction, descriptor preprocessing, GMM fitting, encoding, SVM training, evaluation.
//!
//! The stages follow the paper's Table 1 (see `docs/method.md`):
//!
//! 1. dense SIFT descriptors of every image ([`extract_descriptors`]);
//! 2. preprocessing ([`Preprocessor`]): PCA projection (optional, fitted on a sample), L2
//!    normalisation of each descriptor, and optionally the descriptor's position `(x, y)` in
//!    the image, scaled to `[−0.5, 0.5]²`, appended;
//! 3. a diagonal GMM fitted by EM on a sample of preprocessed descriptors;
//! 4. improved Fisher vectors ([`encode_all`]), optionally a spatial pyramid of them
//!    ([`PipelineConfig::pyramid`], [`encode_all_pyramid`]);
//! 5. one-vs-rest linear SVMs; [`evaluate`] computes accuracy, per-class AP, mAP, the
//!    confusion matrix and top-k accuracy from the scores.
//!
//! Preprocessing is kept apart from encoding so that a GMM learned by another method (the
//! Deep Fisher Kernel trainer) can be swapped in: [`Preprocessor::apply_all`] produces the
//! descriptors any GMM of dimension [`Preprocessor::dim`] encodes.
//!
//! Every long stage reports progress through a [`Progress`] observer, so the command-line tool
//! can draw progress bars without this crate depending on a terminal library.

use std::path::Path;
use std::time::Instant;

use rand::seq::index::sample;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::dataset::{Dataset, Descriptors};
use crate::error::{Error, Result};
use crate::fisher::{FisherEncoder, FisherOptions};
use crate::gmm::{fit_gmm, Gmm, GmmFit, GmmInit, GmmParams};
use crate::metrics;
use crate::model::ModelFile;
use crate::npy;
use crate::pca::{fit_pca, l2_normalize_rows, Pca, PcaParams};
use crate::pyramid::SpatialPyramid;
use crate::sift::{dense_sift_with, DsiftParams, DsiftScratch, GrayImage, DESCRIPTOR_LEN};
use crate::svm::{train_one_vs_rest, ClassWeighting, Labels, OneVsRest, SvmParams};

/// PCA settings; `dims = 0` disables the projection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PcaConfig {
    /// Output dimension (0: no PCA).
    pub dims: usize,
    /// Divide each output by the square root of its eigenvalue.
    pub whiten: bool,
    /// At most this many descriptors (randomly drawn) estimate the covariance.
    pub sample: usize,
}

impl Default for PcaConfig {
    fn default() -> Self {
        PcaConfig {
            dims: 32,
            whiten: false,
            sample: 100_000,
        }
    }
}

/// GMM settings (see [`crate::gmm::GmmParams`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GmmConfig {
    /// Number of components `K`.
    pub k: usize,
    /// Maximum EM iterations.
    pub max_iter: usize,
    /// Relative log-likelihood change at which EM stops.
    pub tol: f64,
    /// Independent initialisations.
    pub restarts: usize,
    /// Variance floor relative to each dimension's data variance.
    pub variance_floor: f64,
    /// Absolute weight floor.
    pub weight_floor: f64,
    /// Lloyd iterations after k-means++ seeding (0: k-means++ seeding only).
    pub kmeans_iters: usize,
    /// At most this many descriptors (randomly drawn) are used for EM.
    pub sample: usize,
    /// EM's M-step posterior threshold ([`GmmParams::posterior_threshold`]).
    pub posterior_threshold: f32,
}

impl Default for GmmConfig {
    fn default() -> Self {
        GmmConfig {
            k: 64,
            max_iter: 30,
            tol: 1e-4,
            restarts: 1,
            variance_floor: 1e-3,
            weight_floor: 1e-6,
            kmeans_iters: 0,
            sample: 200_000,
            posterior_threshold: crate::gmm::DEFAULT_EM_POSTERIOR_THRESHOLD,
        }
    }
}

/// How the classes of the one-vs-rest SVMs are weighted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Weighting {
    /// Every sample has cost C.
    #[serde(alias = "Uniform")]
    Uniform,
    /// Positives and negatives of each task weighted to equal total cost.
    #[serde(alias = "Balanced")]
    Balanced,
}

/// Linear SVM settings (see [`crate::svm::SvmParams`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SvmConfig {
    /// Cost `C` of the hinge loss.
    pub c: f64,
    /// Stopping tolerance of dual coordinate descent.
    pub eps: f64,
    /// Maximum epochs.
    pub max_iter: usize,
    /// Value of the appended bias feature (0: no bias).
    pub bias: f32,
    /// Class weighting.
    pub weighting: Weighting,
}

impl Default for SvmConfig {
    fn default() -> Self {
        SvmConfig {
            c: 3.0,
            eps: 0.1,
            max_iter: 1000,
            bias: 1.0,
            weighting: Weighting::Uniform,
        }
    }
}

impl SvmConfig {
    /// The library parameters these settings stand for (seeded with `seed`).
    pub fn params(&self, seed: u64) -> SvmParams {
        SvmParams {
            c: self.c,
            eps: self.eps,
            max_iter: self.max_iter,
            bias: self.bias,
            seed,
            ..SvmParams::default()
        }
    }

    /// The library class weighting.
    pub fn weighting(&self) -> ClassWeighting {
        match self.weighting {
            Weighting::Uniform => ClassWeighting::Uniform,
            Weighting::Balanced => ClassWeighting::Balanced,
        }
    }
}

/// Everything that defines a trained pipeline except the data; stored in every model file and
/// loadable from TOML (every field optional, defaults as [`PipelineConfig::default`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// Dense SIFT. The keys a configuration gives override [`fashion_mnist_sift`], the
    /// pipeline's default, not [`DsiftParams::default`].
    #[serde(deserialize_with = "sift_over_pipeline_defaults")]
    pub sift: DsiftParams,
    /// PCA projection of the descriptors.
    pub pca: PcaConfig,
    /// L2-normalise each (projected) descriptor.
    pub l2_normalize: bool,
    /// Append each descriptor's position `(x, y) ∈ [−0.5, 0.5]²`.
    pub spatial: bool,
    /// Encode a spatial pyramid of Fisher vectors ([`crate::pyramid`]) instead of one FV per
    /// image, e.g. `[[1, 1], [2, 2], [3, 1]]` (`[rows, cols]` levels); none by default. Works
    /// with or without `spatial`; needs descriptor positions (not available for precomputed
    /// descriptors).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pyramid: Option<SpatialPyramid>,
    /// The GMM.
    pub gmm: GmmConfig,
    /// The Fisher vector.
    pub fisher: FisherOptions,
    /// The SVMs.
    pub svm: SvmConfig,
    /// Seed of every random choice (samples, initialisation, SVM coordinate order).
    pub seed: u64,
}

impl Default for PipelineConfig {
    /// Defaults for small grey images such as Fashion-MNIST (see `docs/cli.md`): dense RootSIFT
    /// on the image upsampled to 56×56 ([`fashion_mnist_sift`]), PCA to 32, L2, (x, y)
    /// appended, K = 64, C = 3.
    fn default() -> Self {
        PipelineConfig {
            sift: fashion_mnist_sift(),
            pca: PcaConfig::default(),
            l2_normalize: true,
            spatial: true,
            pyramid: None,
            gmm: GmmConfig::default(),
            fisher: FisherOptions::default(),
            svm: SvmConfig::default(),
            seed: 0,
        }
    }
}

/// Dense SIFT for Fashion-MNIST-sized images (28×28): RootSIFT on the image upsampled to
/// 56×56, bins of 4 and 6 pixels every 4 pixels.
pub fn fashion_mnist_sift() -> DsiftParams {
    DsiftParams {
        bin_sizes: vec![4, 6],
        step: 4,
        root_sift: true,
        resize: Some((56, 56)),
        ..DsiftParams::default()
    }
}

/// Reads the `sift` table of a configuration over [`fashion_mnist_sift`]: a file that sets only
/// `step` keeps the pipeline's bins, RootSIFT and resize. Unknown keys are errors.
fn sift_over_pipeline_defaults<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<DsiftParams, D::Error> {
    use serde::de::Error as _;
    let given = serde_json::Value::deserialize(d)?;
    let serde_json::Value::Object(given) = given else {
        return Err(D::Error::custom("expected a table of SIFT settings"));
    };
    let defaults = serde_json::to_value(fashion_mnist_sift()).map_err(D::Error::custom)?;
    let over = |entries: &mut dyn Iterator<Item = (&String, &serde_json::Value)>| {
        let mut merged = defaults.clone();
        if let serde_json::Value::Object(m) = &mut merged {
            m.extend(entries.map(|(k, v)| (k.clone(), v.clone())));
        }
        serde_json::from_value::<DsiftParams>(merged)
    };
    over(&mut given.iter()).map_err(|e| {
        // The table's position is all the parser reports: name the key that fails alone.
        let key = given
            .iter()
            .find(|&(k, v)| over(&mut std::iter::once((k, v))).is_err())
            .map(|(k, v)| {
                // TOML's nan and inf arrive as null (JSON has neither).
                let non_finite = if v.is_null() {
                    " (nan and inf are not valid)"
                } else {
                    ""
                };
                format!("sift.{k}{non_finite}: ")
            });
        D::Error::custom(format!("{}{e}", key.unwrap_or_default()))
    })
}

impl PipelineConfig {
    /// Checks every value, naming the first invalid one.
    pub fn validate(&self) -> Result<()> {
        self.sift.validate()?;
        if self.pca.dims > 0 && self.pca.sample < 2 {
            return Err(Error::param("pca.sample", self.pca.sample, "at least 2"));
        }
        if self.gmm.sample < self.gmm.k.max(1) {
            // EM fits K components on the sample: fewer than K descriptors always fail.
            return Err(Error::param(
                "gmm.sample",
                self.gmm.sample,
                format!("at least K = {} (gmm.k)", self.gmm.k),
            ));
        }
        self.gmm_params().validate()?;
        if !(self.svm.c.is_finite() && self.svm.c > 0.0) {
            return Err(Error::param("svm.c", self.svm.c, "a positive number"));
        }
        if !(self.svm.eps.is_finite() && self.svm.eps > 0.0) {
            return Err(Error::param("svm.eps", self.svm.eps, "a positive number"));
        }
        self.fisher.validate()?;
        Ok(())
    }

    /// Length of the vectors the SVMs see for `gmm`: the Fisher vector's `2KD`, times the
    /// number of cells of the pyramid when there is one.
    pub fn feature_len(&self, gmm: &Gmm) -> usize {
        self.pyramid
            .as_ref()
            .map_or(gmm.fisher_len(), |p| p.feature_len(gmm.fisher_len()))
    }

    /// The GMM fitting parameters.
    pub fn gmm_params(&self) -> GmmParams {
        let g = &self.gmm;
        GmmParams::new(g.k)
            .max_iter(g.max_iter)
            .tol(g.tol)
            .restarts(g.restarts)
            .variance_floor(g.variance_floor)
            .weight_floor(g.weight_floor)
            .posterior_threshold(g.posterior_threshold)
            .init(if g.kmeans_iters > 0 {
                GmmInit::KMeans {
                    iters: g.kmeans_iters,
                }
            } else {
                GmmInit::KMeansPlusPlus
            })
            .seed(self.seed)
    }
}

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

/// Dense descriptors of a set of images with each descriptor's normalised position.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RawDescriptors {
    /// The descriptors (`rows × 128` for SIFT) and per-image offsets.
    pub descriptors: Descriptors,
    /// `rows × 2`: each descriptor's centre `(x, y)` scaled to `[−0.5, 0.5]²`
    /// (`(p + 0.5)/size − 0.5`, pixel `k` centred at `k`).
    pub positions: Vec<f32>,
}

impl RawDescriptors {
    /// Number of images.
    pub fn images(&self) -> usize {
        self.descriptors.images()
    }
}

/// Images per extraction chunk: bounds the raw descriptors held at once when streaming.
const CHUNK_IMAGES: usize = 1024;

/// Extracts dense SIFT from the images `indices` of `data` (parallel), in that order.
fn extract_images(
    data: &Dataset,
    indices: &[usize],
    params: &DsiftParams,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<RawDescriptors> {
    let per_image: Vec<(Vec<f32>, Vec<f32>)> = indices
        .par_iter()
        .map_init(DsiftScratch::new, |scratch, &i| {
            let name = || data.item_name(i);
            let img = data.load_u8(i)?;
            let gray = GrayImage::from_u8(img.width, img.height, &img.pixels)
                .map_err(|e| Error::Invalid(format!("{}: {e}", name())))?;
            let (mut d, mut keypoints) = (Vec::new(), Vec::new());
            dense_sift_with(&gray, params, scratch, &mut d, &mut keypoints)
                .map_err(|e| Error::Invalid(format!("{}: {e}", name())))?;
            if keypoints.is_empty() {
                return Err(Error::Invalid(format!(
                    "{}: no descriptors ({}x{} image is smaller than one descriptor)",
                    name(),
                    img.width,
                    img.height
                )));
            }
            // Keypoints are in the coordinates of the image passed in (before any resize).
            let (w, h) = (img.width as f32, img.height as f32);
            let mut pos = Vec::with_capacity(2 * keypoints.len());
            for k in &keypoints {
                pos.push((k.x + 0.5) / w - 0.5);
                pos.push((k.y + 0.5) / h - 0.5);
            }
            progress(1);
            Ok((d, pos))
        })
        // Every result, then the first error in image order: a parallel collect into a
        // `Result` returns whichever error a thread met first, so the message would depend
        // on the timing.
        .collect::<Vec<Result<_>>>()
        .into_iter()
        .collect::<Result<_>>()?;
    let rows: usize = per_image.iter().map(|(_, p)| p.len() / 2).sum();
    let mut out = RawDescriptors {
        descriptors: Descriptors {
            data: Vec::with_capacity(rows * DESCRIPTOR_LEN),
            dim: DESCRIPTOR_LEN,
            offsets: Vec::with_capacity(indices.len() + 1),
        },
        positions: Vec::with_capacity(2 * rows),
    };
    out.descriptors.offsets.push(0);
    for (d, p) in per_image {
        out.descriptors.data.extend_from_slice(&d);
        out.positions.extend_from_slice(&p);
        out.descriptors.offsets.push(out.positions.len() / 2);
    }
    out.descriptors.validate()?;
    Ok(out)
}

/// Extracts dense SIFT from every image of `data`, in parallel on the current rayon pool;
/// `progress` is called with the number of images finished (from worker threads). An image
/// that yields no descriptor (smaller than one descriptor) is an error naming it.
pub fn extract_descriptors(
    data: &Dataset,
    params: &DsiftParams,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<RawDescriptors> {
    if data.is_empty() {
        return Err(Error::Empty {
            what: "data set".into(),
        });
    }
    params.validate()?;
    let all: Vec<usize> = (0..data.len()).collect();
    extract_images(data, &all, params, progress)
}

/// Extracts and preprocesses every image of `data` in chunks of images, so that only one
/// chunk's raw SIFT descriptors are held at a time.
pub fn extract_preprocessed(
    data: &Dataset,
    params: &DsiftParams,
    pre: &Preprocessor,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Descriptors> {
    if data.is_empty() {
        return Err(Error::Empty {
            what: "data set".into(),
        });
    }
    params.validate()?;
    let mut out = Descriptors {
        data: Vec::new(),
        dim: pre.dim(),
        offsets: vec![0],
    };
    let all: Vec<usize> = (0..data.len()).collect();
    for chunk in all.chunks(CHUNK_IMAGES) {
        let raw = extract_images(data, chunk, params, progress)?;
        let d = pre.apply_all(&raw)?;
        let base = out.rows();
        out.data.extend_from_slice(&d.data);
        out.offsets.extend(d.offsets[1..].iter().map(|o| o + base));
    }
    out.validate()?;
    Ok(out)
}

/// A 64-bit FNV-1a hash, for cache keys (not cryptographic).
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x100_0000_01b3);
        }
    }
    fn floats(&mut self, v: &[f32]) {
        for x in v {
            self.write(&x.to_le_bytes());
        }
    }
}

/// Cache key of a data set's preprocessed descriptors: a hash of the SIFT settings, of the
/// preprocessing (PCA arrays and flags) and of every image's content (file bytes or in-memory
/// pixels), so a changed image or setting misses the cache.
pub fn descriptor_cache_key(
    data: &Dataset,
    sift: &DsiftParams,
    pre: &Preprocessor,
) -> Result<String> {
    let mut h = Fnv::new();
    h.write(
        serde_json::to_string(sift)
            .map_err(|e| Error::Invalid(e.to_string()))?
            .as_bytes(),
    );
    h.write(env!("CARGO_PKG_VERSION").as_bytes());
    h.write(&[pre.l2 as u8, pre.spatial as u8]);
    h.write(&(pre.d_in as u64).to_le_bytes());
    if let Some(p) = &pre.pca {
        h.floats(&p.mean);
        h.floats(&p.components);
        h.floats(&p.eigenvalues);
        h.write(&[p.whiten as u8]);
    }
    let item_hashes: Vec<u64> = data
        .items
        .par_iter()
        .map(|item| {
            let mut ih = Fnv::new();
            match &item.source {
                crate::dataset::ImageSource::File(p) => {
                    let bytes = std::fs::read(p).map_err(|e| Error::io(p, e))?;
                    ih.write(&bytes);
                }
                crate::dataset::ImageSource::Memory {
                    width,
                    height,
                    pixels,
                } => {
                    ih.write(&(*width as u64).to_le_bytes());
                    ih.write(&(*height as u64).to_le_bytes());
                    ih.write(pixels);
                }
            }
            Ok(ih.0)
        })
        .collect::<Result<_>>()?;
    for x in item_hashes {
        h.write(&x.to_le_bytes());
    }
    Ok(format!("{:016x}-{}", h.0, data.len()))
}

/// Returns the preprocessed descriptors of `data`, from `cache_dir/<key>/` when present there,
/// else extracted (see [`extract_preprocessed`]) and, with a cache directory, stored there.
/// Also returns whether the cache was hit. A cache is never a reason to fail: an entry that
/// cannot be read or does not match the data set is extracted afresh and replaced, and a
/// cache folder that cannot be written is left alone — each with a warning.
pub fn load_or_extract(
    data: &Dataset,
    sift: &DsiftParams,
    pre: &Preprocessor,
    cache_dir: Option<&Path>,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<(Descriptors, bool)> {
    let Some(cache_dir) = cache_dir else {
        return Ok((extract_preprocessed(data, sift, pre, progress)?, false));
    };
    let key = descriptor_cache_key(data, sift, pre)?;
    let dir = cache_dir.join(&key);
    let (data_path, offsets_path) = (dir.join("descriptors.npy"), dir.join("offsets.npy"));
    let checksum_path = dir.join("checksum.txt");
    if cache_entry_complete(&dir) {
        match Descriptors::from_npy(&data_path, &offsets_path) {
            Ok(d) if d.images() == data.len() && d.dim == pre.dim() => {
                // Entries written before the checksum was recorded have none.
                match std::fs::read_to_string(&checksum_path) {
                    Ok(text) if text.trim() != descriptors_checksum(&d) => tracing::warn!(
                        "{}: the cached descriptors do not match their checksum (changed or \
                         damaged): extracting afresh and replacing them",
                        dir.display()
                    ),
                    _ => {
                        progress(data.len());
                        return Ok((d, true));
                    }
                }
            }
            Ok(d) => tracing::warn!(
                "{}: cached descriptors of {} images × {} columns do not match the data set \
                 ({} images × {}): extracting afresh and replacing them",
                dir.display(),
                d.images(),
                d.dim,
                data.len(),
                pre.dim()
            ),
            Err(e) => tracing::warn!(
                "unreadable descriptor cache entry ({e}): extracting afresh and replacing it"
            ),
        }
    }
    let d = extract_preprocessed(data, sift, pre, progress)?;
    // The key hashed the images before the extraction read them: images replaced in between
    // would store these descriptors under the old content's key. Hashed again, they must
    // give the same key (reading the files costs little beside decoding and SIFT).
    if descriptor_cache_key(data, sift, pre)? != key {
        tracing::warn!(
            "images changed while their descriptors were extracted: not stored in the cache \
             {} (run again to cache the new images)",
            dir.display()
        );
        return Ok((d, false));
    }
    let stored = (|| {
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        // The descriptor file is written last: its presence marks a complete entry.
        let offsets: Vec<i64> = d.offsets.iter().map(|&o| o as i64).collect();
        npy::write_i64_vector(&offsets_path, &offsets)?;
        npy::write_bytes_atomic(
            &checksum_path,
            format!("{}\n", descriptors_checksum(&d)).as_bytes(),
        )?;
        npy::write_f32_matrix(&data_path, &d.data, d.rows(), d.dim)
    })();
    if let Err(e) = stored {
        // An earlier entry's descriptor file would still mark the entry complete.
        let _ = std::fs::remove_file(&data_path);
        tracing::warn!("cannot store the descriptors in the cache ({e}): going on without it");
    }
    Ok((d, false))
}

/// CRC-32 of a cache entry's values (dimension, offsets, descriptors), as its `checksum.txt`
/// records it: values changed in place within the right shape are caught on loading.
fn descriptors_checksum(d: &Descriptors) -> String {
    let mut h = crc32fast::Hasher::new();
    h.update(&(d.dim as u64).to_le_bytes());
    for &o in &d.offsets {
        h.update(&(o as u64).to_le_bytes());
    }
    let mut bytes = Vec::with_capacity(4 * 4096);
    for chunk in d.data.chunks(4096) {
        bytes.clear();
        bytes.extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
        h.update(&bytes);
    }
    format!("crc32:{:08x}", h.finalize())
}

/// Whether the descriptor-cache entry `dir` (`cache_dir/<key>`, see [`load_or_extract`]) was
/// stored whole: its descriptor file, written last, marks that (and a failed store removes it).
pub fn cache_entry_complete(dir: &Path) -> bool {
    dir.join("descriptors.npy").is_file() && dir.join("offsets.npy").is_file()
}

/// [`load_or_extract`], plus (with a pyramid in `config`) each descriptor's position `(x, y)`,
/// `rows × 2`. The positions come from the cache entry of the same preprocessing with `(x, y)`
/// appended (the default's), whose last two columns are split off when `pre` has no `spatial`,
/// so a pyramid needs no cache format of its own.
pub fn load_or_extract_with_positions(
    data: &Dataset,
    config: &PipelineConfig,
    pre: &Preprocessor,
    cache_dir: Option<&Path>,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<(Descriptors, Option<Vec<f32>>, bool)> {
    if config.pyramid.is_none() {
        let (d, hit) = load_or_extract(data, &config.sift, pre, cache_dir, progress)?;
        return Ok((d, None, hit));
    }
    let with_xy = Preprocessor {
        spatial: true,
        ..pre.clone()
    };
    let (mut d, hit) = load_or_extract(data, &config.sift, &with_xy, cache_dir, progress)?;
    let positions = column_positions(&d);
    if !pre.spatial {
        drop_positions(&mut d);
    }
    Ok((d, Some(positions), hit))
}

/// The last two columns `(x, y)` of every row (`rows × 2`).
fn column_positions(d: &Descriptors) -> Vec<f32> {
    let mut positions = Vec::with_capacity(2 * d.rows());
    for row in d.data.chunks_exact(d.dim) {
        positions.extend_from_slice(&row[d.dim - 2..]);
    }
    positions
}

/// Removes the last two columns of every row in place (no second copy of the descriptors).
fn drop_positions(d: &mut Descriptors) {
    let (dim, rows) = (d.dim, d.rows());
    let kept = dim - 2;
    for r in 0..rows {
        d.data.copy_within(r * dim..r * dim + kept, r * kept);
    }
    d.data.truncate(rows * kept);
    d.dim = kept;
}

/// Fits the descriptor preprocessing of `config` on `data`: without PCA nothing is fitted;
/// with PCA, the descriptors of a seeded random subset of images (enough for
/// `config.pca.sample` descriptors) are extracted and the PCA is fitted on them.
pub fn fit_preprocessor(
    data: &Dataset,
    config: &PipelineConfig,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Preprocessor> {
    if data.is_empty() {
        return Err(Error::Empty {
            what: "data set".into(),
        });
    }
    config.sift.validate()?;
    if config.pca.dims == 0 {
        progress(data.len());
        return Ok(Preprocessor {
            d_in: DESCRIPTOR_LEN,
            pca: None,
            l2: config.l2_normalize,
            spatial: config.spatial,
        });
    }
    let first = extract_images(data, &[0], &config.sift, &|_| {})?;
    let idx = pca_images(data.len(), first.descriptors.rows(), config);
    let raw = extract_images(data, &idx, &config.sift, progress)?;
    Preprocessor::fit(&raw.descriptors, config)
}

/// The images whose descriptors the PCA is fitted on: a seeded random subset, enough for
/// `config.pca.sample` descriptors at the first image's count (`first_rows`). The same for
/// images and for their descriptors given as files, so that both fit the same PCA.
fn pca_images(images: usize, first_rows: usize, config: &PipelineConfig) -> Vec<usize> {
    let wanted = config.pca.sample.div_ceil(first_rows.max(1)).max(1);
    sample_rows(images, wanted, config.seed ^ 0x5ca1_ab1e)
}

/// [`Preprocessor::fit`] on the images of `raw` that [`fit_preprocessor`] would extract for
/// the PCA: the same PCA as from the images themselves.
fn fit_on_pca_images(raw: &Descriptors, config: &PipelineConfig) -> Result<Preprocessor> {
    if config.pca.dims == 0 || raw.images() == 0 {
        return Preprocessor::fit(raw, config);
    }
    let idx = pca_images(raw.images(), raw.image(0).len() / raw.dim.max(1), config);
    if idx.len() == raw.images() {
        return Preprocessor::fit(raw, config);
    }
    let mut data = Vec::new();
    let mut offsets = vec![0];
    for &i in &idx {
        let image = raw.image(i);
        data.extend_from_slice(image);
        offsets.push(offsets[offsets.len() - 1] + image.len() / raw.dim);
    }
    Preprocessor::fit(&Descriptors::new(data, raw.dim, offsets)?, config)
}

/// Draws `min(n, max)` distinct indices out of `n` (sorted), seeded.
fn sample_rows(n: usize, max: usize, seed: u64) -> Vec<usize> {
    if n <= max {
        return (0..n).collect();
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut idx = sample(&mut rng, n, max).into_vec();
    idx.sort_unstable();
    idx
}

/// Descriptor preprocessing: `x ↦ [L2(P x), x_pos, y_pos]` with `P` the optional PCA projection.
#[derive(Clone, Debug, PartialEq)]
pub struct Preprocessor {
    /// Dimension of the raw descriptors.
    pub d_in: usize,
    /// The projection, when used.
    pub pca: Option<Pca>,
    /// L2-normalise each projected descriptor.
    pub l2: bool,
    /// Append the position.
    pub spatial: bool,
}

impl Preprocessor {
    /// Fits the PCA (when `config.pca.dims > 0`) on a seeded sample of the raw descriptors.
    pub fn fit(raw: &Descriptors, config: &PipelineConfig) -> Result<Self> {
        let pca = if config.pca.dims > 0 {
            let params = PcaParams::new(config.pca.dims)
                .whiten(config.pca.whiten)
                .sample(config.pca.sample)
                .seed(config.seed);
            Some(fit_pca(&raw.data, raw.dim, &params)?)
        } else {
            None
        };
        Ok(Preprocessor {
            d_in: raw.dim,
            pca,
            l2: config.l2_normalize,
            spatial: config.spatial,
        })
    }

    /// Rebuilds the preprocessor of a stored pipeline.
    pub fn from_parts(d_in: usize, pca: Option<Pca>, config: &PipelineConfig) -> Result<Self> {
        if let Some(p) = &pca {
            if p.d_in() != d_in {
                return Err(Error::dim("PCA input dimension", d_in, p.d_in()));
            }
        }
        Ok(Preprocessor {
            d_in,
            pca,
            l2: config.l2_normalize,
            spatial: config.spatial,
        })
    }

    /// Output dimension `D` (the GMM's dimension).
    pub fn dim(&self) -> usize {
        self.pca.as_ref().map_or(self.d_in, |p| p.dims()) + if self.spatial { 2 } else { 0 }
    }

    /// Preprocesses `x` (`N × d_in`) with positions `N × 2`, returning `N × dim()`.
    pub fn apply(&self, x: &[f32], positions: &[f32]) -> Result<Vec<f32>> {
        if self.d_in == 0 {
            return Err(Error::param("d_in", 0, "at least 1 input dimension"));
        }
        if !x.len().is_multiple_of(self.d_in) {
            return Err(Error::dim(
                "descriptor values (N × d_in)",
                self.d_in,
                x.len(),
            ));
        }
        let n = x.len() / self.d_in;
        if self.spatial && positions.len() != 2 * n {
            return Err(Error::dim(
                "descriptor positions (N × 2)",
                2 * n,
                positions.len(),
            ));
        }
        let mut y = match &self.pca {
            Some(p) => p.transform(x)?,
            None => x.to_vec(),
        };
        if n == 0 {
            return Ok(y);
        }
        let d = y.len() / n;
        if self.l2 {
            l2_normalize_rows(&mut y, d);
        }
        if !self.spatial {
            return Ok(y);
        }
        let mut out = Vec::with_capacity(n * (d + 2));
        for (row, pos) in y.chunks_exact(d).zip(positions.chunks_exact(2)) {
            out.extend_from_slice(row);
            out.extend_from_slice(pos);
        }
        Ok(out)
    }

    /// Preprocesses every image's descriptors (parallel over blocks of images).
    pub fn apply_all(&self, raw: &RawDescriptors) -> Result<Descriptors> {
        let d = &raw.descriptors;
        d.check_layout()?;
        // Positions are used only with `spatial`; without it they may be absent.
        let with_positions = raw.positions.len() == 2 * d.rows();
        if self.spatial && !with_positions {
            return Err(Error::dim(
                "descriptor positions (rows × 2)",
                2 * d.rows(),
                raw.positions.len(),
            ));
        }
        if d.dim != self.d_in {
            return Err(Error::dim(
                "descriptor columns (the model was fitted to descriptors of this dimension)",
                self.d_in,
                d.dim,
            ));
        }
        let images = d.images();
        let block = 256;
        let blocks: Vec<Vec<f32>> = (0..images.div_ceil(block))
            .into_par_iter()
            .map(|b| {
                let (i0, i1) = (b * block, ((b + 1) * block).min(images));
                let (r0, r1) = (d.offsets[i0], d.offsets[i1]);
                let positions = match with_positions {
                    true => &raw.positions[2 * r0..2 * r1],
                    false => &[][..],
                };
                self.apply(&d.data[r0 * d.dim..r1 * d.dim], positions)
            })
            // The first error in block order, whatever the threads' timing.
            .collect::<Vec<Result<_>>>()
            .into_iter()
            .collect::<Result<_>>()?;
        let out_dim = self.dim();
        let mut data = Vec::with_capacity(d.rows() * out_dim);
        for b in blocks {
            data.extend_from_slice(&b);
        }
        Descriptors::new(data, out_dim, d.offsets.clone())
    }
}

/// Fits the GMM on a seeded sample of at most `config.gmm.sample` preprocessed descriptors.
pub fn fit_gmm_sampled(desc: &Descriptors, config: &PipelineConfig) -> Result<GmmFit> {
    let rows = sample_rows(desc.rows(), config.gmm.sample, config.seed ^ 0x9e37_79b9);
    let d = desc.dim;
    let x: Vec<f32> = if rows.len() == desc.rows() {
        desc.data.clone()
    } else {
        rows.iter()
            .flat_map(|&r| desc.data[r * d..(r + 1) * d].iter().copied())
            .collect()
    };
    fit_gmm(&x, d, &config.gmm_params())
}

/// Encodes every image of `desc` against `gmm` (`images × 2KD`, row-major), in blocks of
/// images on the current rayon pool; `progress` is called with the images finished.
pub fn encode_all(
    gmm: &Gmm,
    options: FisherOptions,
    desc: &Descriptors,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Vec<f32>> {
    let encoder = FisherEncoder::new(gmm, options)?;
    desc.check_layout()?;
    encode_in_blocks(desc, encoder.len(), progress, |rows, local, chunk| {
        encoder.encode_batch(
            &desc.data[rows.start * desc.dim..rows.end * desc.dim],
            local,
            chunk,
        )
    })
}

/// Runs `encode(rows, offsets, out)` on blocks of 64 images of `desc` (`rows`: the block's
/// descriptor rows, `offsets`: its images' offsets relative to `rows.start`, `out`: its
/// `images × len` output rows), so progress is reported per block; returns `images × len`.
fn encode_in_blocks(
    desc: &Descriptors,
    len: usize,
    progress: &(dyn Fn(usize) + Sync),
    mut encode: impl FnMut(std::ops::Range<usize>, &[usize], &mut [f32]) -> Result<()>,
) -> Result<Vec<f32>> {
    let mut out = vec![0.0f32; desc.images() * len];
    let block = 64;
    for (b, chunk) in out.chunks_mut(block * len).enumerate() {
        let i0 = b * block;
        let i1 = i0 + chunk.len() / len;
        let (r0, r1) = (desc.offsets[i0], desc.offsets[i1]);
        let local: Vec<usize> = desc.offsets[i0..=i1].iter().map(|o| o - r0).collect();
        encode(r0..r1, &local, chunk)?;
        progress(i1 - i0);
    }
    Ok(out)
}

/// [`encode_all`], or with `pyramid` the spatial pyramid of Fisher vectors of every image
/// (`images × cells·2KD`, see [`crate::pyramid`]); `positions` holds each descriptor row's
/// `(x, y)` (`rows × 2`) and is required with a pyramid.
pub fn encode_all_pyramid(
    gmm: &Gmm,
    options: FisherOptions,
    pyramid: Option<&SpatialPyramid>,
    desc: &Descriptors,
    positions: Option<&[f32]>,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Vec<f32>> {
    let Some(pyramid) = pyramid else {
        return encode_all(gmm, options, desc, progress);
    };
    desc.check_layout()?;
    let Some(positions) = positions else {
        return Err(Error::Invalid(
            "a spatial pyramid needs each descriptor's position (x, y), and these descriptors \
             have none (precomputed descriptors): encode without a pyramid"
                .into(),
        ));
    };
    if positions.len() != 2 * desc.rows() {
        return Err(Error::dim(
            "descriptor positions (rows × 2)",
            2 * desc.rows(),
            positions.len(),
        ));
    }
    let encoder = FisherEncoder::new(gmm, options)?;
    let len = pyramid.feature_len(encoder.len());
    encode_in_blocks(desc, len, progress, |rows, local, chunk| {
        let data = &desc.data[rows.start * desc.dim..rows.end * desc.dim];
        let pos = &positions[2 * rows.start..2 * rows.end];
        pyramid.encode_batch(&encoder, data, local, pos, chunk)
    })
}

/// Wall-clock time of one pipeline stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageTime {
    /// Stage name.
    pub stage: String,
    /// Seconds.
    pub seconds: f64,
}

/// Records stage timings.
#[derive(Default)]
struct Clock {
    times: Vec<StageTime>,
}

impl Clock {
    fn time<T>(&mut self, stage: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let t = Instant::now();
        let out = f()?;
        self.times.push(StageTime {
            stage: stage.into(),
            seconds: t.elapsed().as_secs_f64(),
        });
        Ok(out)
    }
}

/// A trained pipeline: preprocessing, GMM, SVMs, class names and the configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Pipeline {
    /// The configuration it was trained with.
    pub config: PipelineConfig,
    /// Descriptor preprocessing.
    pub pre: Preprocessor,
    /// The GMM of the Fisher vectors.
    pub gmm: Gmm,
    /// One-vs-rest classifiers on the Fisher vectors.
    pub svm: OneVsRest,
    /// Per-class GMMs (per-class Deep Fisher Kernel), empty otherwise: class c's SVM then scores
    /// the Fisher vector under `class_gmms[c]`, and an image's features are the C Fisher
    /// vectors side by side (C × 2KD values).
    pub class_gmms: Vec<Gmm>,
    /// Class names, in SVM order.
    pub class_names: Vec<String>,
}

/// What [`fit_pipeline`] returns besides the pipeline.
#[derive(Clone, Debug)]
pub struct FitOutput {
    /// The trained pipeline.
    pub pipeline: Pipeline,
    /// Training history (stage timings, EM log-likelihoods, SVM objective, training accuracy),
    /// stored in the model file.
    pub history: serde_json::Value,
    /// Stage timings.
    pub timings: Vec<StageTime>,
    /// The training Fisher vectors (`images × 2KD`).
    pub train_features: Vec<f32>,
    /// Whether the training descriptors came from the cache.
    pub cache_hit: bool,
}

/// Trains the whole pipeline on `train`: descriptors (cached in `cache_dir` when given), PCA
/// on a sample, preprocessing, GMM by EM, Fisher vectors, one-vs-rest SVMs.
pub fn fit_pipeline(
    train: &Dataset,
    config: &PipelineConfig,
    cache_dir: Option<&Path>,
    progress: &dyn Progress,
) -> Result<FitOutput> {
    config.validate()?;
    let mut clock = Clock::default();
    progress.start("PCA sample", 1);
    let pre = clock.time("pca", || {
        fit_preprocessor(train, config, &|n| progress.advance(n))
    })?;
    progress.finish();
    progress.start("descriptors", train.len());
    let (desc, positions, cache_hit) = clock.time("descriptors", || {
        load_or_extract_with_positions(train, config, &pre, cache_dir, &|n| progress.advance(n))
    })?;
    progress.finish();
    let mut out = fit_preprocessed_with_positions(
        pre,
        &desc,
        positions.as_deref(),
        &train.labels(),
        config,
        progress,
    )?;
    out.pipeline.class_names = train.class_names.clone();
    clock.times.append(&mut out.timings);
    out.timings = clock.times;
    out.history["timings"] = serde_json::to_value(&out.timings).unwrap_or_default();
    out.cache_hit = cache_hit;
    Ok(out)
}

/// Trains preprocessing, GMM and SVMs from already extracted raw descriptors.
pub fn fit_from_descriptors(
    raw: &RawDescriptors,
    labels: &Labels,
    config: &PipelineConfig,
    progress: &dyn Progress,
) -> Result<FitOutput> {
    config.validate()?;
    let mut clock = Clock::default();
    progress.start("PCA", 1);
    let pre = clock.time("pca", || fit_on_pca_images(&raw.descriptors, config))?;
    progress.finish();
    progress.start("preprocess", 1);
    let desc = clock.time("preprocess", || pre.apply_all(raw))?;
    progress.finish();
    let positions = config.pyramid.as_ref().map(|_| &raw.positions[..]);
    let mut out = fit_preprocessed_with_positions(pre, &desc, positions, labels, config, progress)?;
    clock.times.append(&mut out.timings);
    out.timings = clock.times;
    out.history["timings"] = serde_json::to_value(&out.timings).unwrap_or_default();
    Ok(out)
}

/// Trains the GMM (EM on a sample) and the SVMs on preprocessed descriptors `desc`
/// (the output of `pre`). With a pyramid in `config`, the positions are the last two columns
/// of `desc` (`pre.spatial`), else see [`fit_preprocessed_with_positions`].
pub fn fit_preprocessed(
    pre: Preprocessor,
    desc: &Descriptors,
    labels: &Labels,
    config: &PipelineConfig,
    progress: &dyn Progress,
) -> Result<FitOutput> {
    let positions = match &config.pyramid {
        Some(_) if pre.spatial && desc.dim >= 2 => Some(column_positions(desc)),
        Some(p) => {
            return Err(Error::Invalid(format!(
                "the spatial pyramid {p} needs descriptor positions, and these descriptors carry                  none (spatial = false): use fit_preprocessed_with_positions"
            )))
        }
        None => None,
    };
    fit_preprocessed_with_positions(pre, desc, positions.as_deref(), labels, config, progress)
}

/// [`fit_preprocessed`] with each descriptor row's position `(x, y)` (`rows × 2`) given, as a
/// pyramid in `config` needs.
pub fn fit_preprocessed_with_positions(
    pre: Preprocessor,
    desc: &Descriptors,
    positions: Option<&[f32]>,
    labels: &Labels,
    config: &PipelineConfig,
    progress: &dyn Progress,
) -> Result<FitOutput> {
    config.validate()?;
    let n = desc.images();
    if labels.n() != n {
        return Err(Error::dim("labels (one per image)", n, labels.n()));
    }
    if desc.dim != pre.dim() {
        return Err(Error::dim(
            "preprocessed descriptor dimension",
            pre.dim(),
            desc.dim,
        ));
    }
    let mut clock = Clock::default();
    progress.start("GMM (EM)", 1);
    let gmm_fit = clock.time("gmm", || fit_gmm_sampled(desc, config))?;
    progress.finish();
    progress.start("Fisher vectors", n);
    let fv = clock.time("encode", || {
        encode_all_pyramid(
            &gmm_fit.gmm,
            config.fisher,
            config.pyramid.as_ref(),
            desc,
            positions,
            &|k| progress.advance(k),
        )
    })?;
    progress.finish();
    let dim = config.feature_len(&gmm_fit.gmm);
    progress.start("SVMs", 1);
    let svm = clock.time("svm", || {
        train_one_vs_rest(
            &fv,
            n,
            dim,
            labels,
            &config.svm.params(config.seed),
            config.svm.weighting(),
            None,
        )
    })?;
    progress.finish();
    let train_eval = evaluate(&svm.scores(&fv, n), labels, &[])?;
    let history = serde_json::json!({
        "gmm": {
            "loglik": gmm_fit.loglik_history,
            "iterations": gmm_fit.iterations,
            "converged": gmm_fit.converged,
        },
        "svm_objective": svm.objective(),
        "train_accuracy": train_eval.accuracy,
        "train_map": train_eval.map,
    });
    Ok(FitOutput {
        pipeline: Pipeline {
            config: config.clone(),
            pre,
            gmm: gmm_fit.gmm,
            svm,
            class_gmms: Vec::new(),
            class_names: Vec::new(),
        },
        history,
        timings: clock.times,
        train_features: fv,
        cache_hit: false,
    })
}

impl Pipeline {
    /// The model file holding this pipeline (with `history`).
    pub fn to_model(&self, history: serde_json::Value) -> Result<ModelFile> {
        Ok(ModelFile {
            pca: self.pre.pca.clone(),
            gmm: self.gmm.clone(),
            svm: Some(self.svm.clone()),
            class_gmms: self.class_gmms.clone(),
            class_names: self.class_names.clone(),
            config: serde_json::to_value(&self.config)
                .map_err(|e| Error::Invalid(format!("cannot encode the configuration: {e}")))?,
            history,
        })
    }

    /// Rebuilds a pipeline from a model file (which must hold SVMs and a configuration).
    pub fn from_model(model: &ModelFile, path: &Path) -> Result<Self> {
        let config: PipelineConfig = serde_json::from_value(model.config.clone())
            .map_err(|e| Error::format(path, format!("header field `config`: {e}")))?;
        // The settings that encoding uses, checked on loading rather than when the first
        // image fails (the training-only ones do not matter here).
        config
            .sift
            .validate()
            .and_then(|()| config.fisher.validate())
            .map_err(|e| Error::format(path, format!("stored configuration: {e}")))?;
        let svm = model
            .svm
            .clone()
            .ok_or_else(|| Error::format(path, "the model holds no SVMs: it cannot classify"))?;
        let d_in = match &model.pca {
            Some(p) => p.d_in(),
            None => {
                let xy = if config.spatial { 2 } else { 0 };
                match model.gmm.d().checked_sub(xy) {
                    Some(d) if d > 0 => d,
                    _ => {
                        return Err(Error::format(
                            path,
                            format!(
                                "the GMM has dimension {} but the stored configuration appends \
                                 (x, y) to descriptors of at least one dimension",
                                model.gmm.d()
                            ),
                        ))
                    }
                }
            }
        };
        let pre = Preprocessor::from_parts(d_in, model.pca.clone(), &config)
            .map_err(|e| Error::format(path, e))?;
        if pre.dim() != model.gmm.d() {
            return Err(Error::format(
                path,
                format!(
                    "the GMM has dimension {} but the preprocessing outputs {}",
                    model.gmm.d(),
                    pre.dim()
                ),
            ));
        }
        let features = config.feature_len(&model.gmm);
        if svm.dim != features {
            return Err(Error::format(
                path,
                format!(
                    "the SVMs take {} features but the GMM's Fisher vectors{} have {features}",
                    svm.dim,
                    config
                        .pyramid
                        .as_ref()
                        .map_or(String::new(), |p| format!(" in the pyramid {p}")),
                ),
            ));
        }
        crate::model::check_class_gmm_count(path, model.class_gmms.len(), Some(svm.classes))?;
        if !model.class_gmms.is_empty() && config.pyramid.is_some() {
            return Err(Error::format(
                path,
                "per-class GMMs with a spatial pyramid are not supported",
            ));
        }
        // The stored settings must describe the arrays (`info --config` prints them for
        // training again; an edited K or PCA size would train another model).
        if config.gmm.k != model.gmm.k() {
            return Err(Error::format(
                path,
                format!(
                    "stored configuration: gmm.k = {} but gmm.means holds K = {}",
                    config.gmm.k,
                    model.gmm.k()
                ),
            ));
        }
        let pca_dims = model.pca.as_ref().map_or(0, |p| p.dims());
        if config.pca.dims != pca_dims {
            return Err(Error::format(
                path,
                format!(
                    "stored configuration: pca.dims = {} but the file holds {}",
                    config.pca.dims,
                    match pca_dims {
                        0 => "no PCA".to_string(),
                        d => format!("a PCA to {d} dimensions"),
                    }
                ),
            ));
        }
        if let Some(pca) = &model.pca {
            if config.pca.whiten != pca.whiten {
                return Err(Error::format(
                    path,
                    format!(
                        "stored configuration: pca.whiten = {} but the file's PCA (header field \
                         pca_whiten) is {}",
                        config.pca.whiten,
                        if pca.whiten {
                            "whitened"
                        } else {
                            "not whitened"
                        }
                    ),
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(name) = model.class_names.iter().find(|n| !seen.insert(n.as_str())) {
            return Err(Error::format(
                path,
                format!("class_names lists '{name}' twice: expected distinct class names"),
            ));
        }
        Ok(Pipeline {
            config,
            pre,
            gmm: model.gmm.clone(),
            svm,
            class_gmms: model.class_gmms.clone(),
            class_names: model.class_names.clone(),
        })
    }

    /// Length of the vectors the SVMs see (see [`PipelineConfig::feature_len`]).
    pub fn feature_len(&self) -> usize {
        self.config.feature_len(&self.gmm) * self.class_gmms.len().max(1)
    }

    /// Extracts, preprocesses and encodes a data set: `images × 2KD` Fisher vectors (with a
    /// pyramid, `images × cells·2KD`).
    pub fn encode_dataset(
        &self,
        data: &Dataset,
        cache_dir: Option<&Path>,
        progress: &dyn Progress,
    ) -> Result<Vec<f32>> {
        // A model trained on descriptor files of another length (`dfk deep --descriptors`)
        // cannot take the dense SIFT of images: said before any image is read.
        if self.pre.d_in != DESCRIPTOR_LEN {
            return Err(Error::Invalid(format!(
                "the model was trained on descriptors of dimension {}, not on the {DESCRIPTOR_LEN} \
                 values of dense SIFT: it scores descriptor files (`--format npy`, `dfk fisher` \
                 then `dfk svm predict`), not images",
                self.pre.d_in
            )));
        }
        progress.start("descriptors", data.len());
        let (desc, positions, _) =
            load_or_extract_with_positions(data, &self.config, &self.pre, cache_dir, &|n| {
                progress.advance(n)
            })?;
        progress.finish();
        if !self.class_gmms.is_empty() {
            return self.encode_per_class(&desc, progress);
        }
        progress.start("Fisher vectors", data.len());
        let fv = encode_all_pyramid(
            &self.gmm,
            self.config.fisher,
            self.config.pyramid.as_ref(),
            &desc,
            positions.as_deref(),
            &|n| progress.advance(n),
        )?;
        progress.finish();
        Ok(fv)
    }

    /// Preprocesses and encodes precomputed raw descriptors: `images × 2KD` Fisher vectors
    /// (with a pyramid, `images × cells·2KD`, placed by `raw.positions`).
    pub fn encode_raw(&self, raw: &RawDescriptors, progress: &dyn Progress) -> Result<Vec<f32>> {
        let desc = self.pre.apply_all(raw)?;
        if !self.class_gmms.is_empty() {
            return self.encode_per_class(&desc, progress);
        }
        progress.start("Fisher vectors", raw.images());
        let fv = encode_all_pyramid(
            &self.gmm,
            self.config.fisher,
            self.config.pyramid.as_ref(),
            &desc,
            Some(&raw.positions),
            &|n| progress.advance(n),
        )?;
        progress.finish();
        Ok(fv)
    }

    /// Fisher vectors under every per-class GMM, side by side per image (`n × C·2KD`).
    fn encode_per_class(&self, desc: &Descriptors, progress: &dyn Progress) -> Result<Vec<f32>> {
        let (len, stride) = (self.gmm.fisher_len(), self.feature_len());
        let mut out = vec![0f32; desc.images() * stride];
        progress.start(
            "Fisher vectors (per class)",
            desc.images() * self.class_gmms.len(),
        );
        for (c, gmm) in self.class_gmms.iter().enumerate() {
            let fv = encode_all(gmm, self.config.fisher, desc, &|k| progress.advance(k))?;
            for (dst, src) in out.chunks_exact_mut(stride).zip(fv.chunks_exact(len)) {
                dst[c * len..(c + 1) * len].copy_from_slice(src);
            }
        }
        progress.finish();
        Ok(out)
    }

    /// [`Pipeline::scores`], or an error naming the sample and class of the first score that
    /// overflows `f32` (finite weights near `f32::MAX` in a model file).
    /// Also an error when `features` is not `n × feature_len()`.
    pub fn try_scores(&self, features: &[f32], n: usize) -> Result<Vec<f32>> {
        if self.class_gmms.is_empty() {
            return self.svm.try_scores(features, n);
        }
        // The fields are public: one GMM per class and SVMs of one Fisher vector's width.
        self.svm.validate()?;
        if self.class_gmms.len() != self.svm.classes {
            return Err(Error::Invalid(format!(
                "{} per-class GMMs for {} classes: expected one GMM per class",
                self.class_gmms.len(),
                self.svm.classes
            )));
        }
        let per_class = self.config.feature_len(&self.gmm);
        if self.svm.dim != per_class {
            return Err(Error::dim(
                "SVM weights (one per-class Fisher vector)",
                per_class,
                self.svm.dim,
            ));
        }
        let stride = self.feature_len();
        if n.checked_mul(stride) != Some(features.len()) {
            return Err(Error::dim(
                "features (n × the per-class Fisher vectors' length)",
                n.saturating_mul(stride),
                features.len(),
            ));
        }
        let out = self.scores(features, n);
        match out.iter().position(|s| !s.is_finite()) {
            Some(p) => Err(Error::Invalid(format!(
                "the decision value of sample {} for class {} is {} (it overflows f32): the \
                 model's weights are out of range for these features",
                p / self.svm.classes,
                p % self.svm.classes,
                out[p]
            ))),
            None => Ok(out),
        }
    }

    /// SVM scores (`n × classes`) of the features from [`encode_dataset`](Self::encode_dataset):
    /// ⟨w_c, φ⟩ + b_c, where φ is the Fisher vector under class c's GMM in per-class mode.
    ///
    /// # Panics
    /// If `features` is not `n × feature_len()`; [`Pipeline::try_scores`] returns an error.
    pub fn scores(&self, features: &[f32], n: usize) -> Vec<f32> {
        if self.class_gmms.is_empty() {
            return self.svm.scores(features, n);
        }
        let (len, stride) = (self.gmm.fisher_len(), self.feature_len());
        assert_eq!(
            Some(features.len()),
            n.checked_mul(stride),
            "Pipeline::scores: features must be n × feature_len()"
        );
        let mut out = Vec::with_capacity(n * self.svm.classes);
        for row in features.chunks_exact(stride).take(n) {
            for (c, m) in self.svm.models.iter().enumerate() {
                out.push(m.decision(&row[c * len..(c + 1) * len]));
            }
        }
        out
    }
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
    /// Average precision per class (area under the PR curve, as scikit-learn's
    /// `average_precision_score`); NaN (null in JSON) for a class without samples in the
    /// evaluated set, whose AP is undefined.
    #[serde(deserialize_with = "nan_for_null")]
    pub per_class_ap: Vec<f64>,
    /// 11-point interpolated AP per class (PASCAL VOC 2007's devkit,
    /// [`metrics::average_precision_voc11`]), the AP that VOC results report; NaN (null) as in
    /// `per_class_ap`.
    #[serde(default, deserialize_with = "nan_for_null")]
    pub per_class_ap_voc11: Vec<f64>,
    /// Mean of `per_class_ap` over the classes with samples.
    pub map: f64,
    /// Mean of `per_class_ap_voc11` over the classes with samples.
    pub map_voc11: f64,
    /// The classes without samples in the evaluated set (left out of the mAPs).
    #[serde(default)]
    pub absent_classes: Vec<usize>,
    /// Confusion matrix, `classes × classes`, row = true class (single-label only, and empty
    /// beyond [`metrics::MAX_CONFUSION_CLASSES`] classes).
    pub confusion: Vec<Vec<usize>>,
    /// One precision–recall curve per class, thinned to at most 200 points.
    pub pr_curves: Vec<PrCurve>,
}

/// JSON has no NaN: serde writes the AP of an absent class as null, read back here as NaN.
fn nan_for_null<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<f64>, D::Error> {
    let values: Vec<Option<f64>> = Deserialize::deserialize(d)?;
    Ok(values.into_iter().map(|v| v.unwrap_or(f64::NAN)).collect())
}

fn thin(p: Vec<f64>, r: Vec<f64>, max: usize) -> PrCurve {
    if p.len() <= max {
        return PrCurve {
            precision: p,
            recall: r,
        };
    }
    let step = p.len() as f64 / max as f64;
    let mut idx: Vec<usize> = (0..max).map(|i| (i as f64 * step) as usize).collect();
    idx.push(p.len() - 1);
    idx.dedup();
    PrCurve {
        precision: idx.iter().map(|&i| p[i]).collect(),
        recall: idx.iter().map(|&i| r[i]).collect(),
    }
}

/// Evaluates scores (`n × C`, row-major) against labels.
pub fn evaluate(scores: &[f32], labels: &Labels, class_names: &[String]) -> Result<Evaluation> {
    evaluate_ignoring(scores, labels, class_names, None)
}

/// [`evaluate`], with image `i` left out of class `c`'s AP and precision–recall curve where
/// `ignore[i·C + c]` (`n × C`; PASCAL VOC's "difficult" images, [`Dataset::difficult_mask`]).
/// Accuracy and the confusion matrix (single-label data) use every image.
pub fn evaluate_ignoring(
    scores: &[f32],
    labels: &Labels,
    class_names: &[String],
    ignore: Option<&[bool]>,
) -> Result<Evaluation> {
    // The labels first: their class count sizes what follows.
    labels.validate()?;
    let (n, c) = (labels.n(), labels.classes());
    if scores.len() != n * c {
        return Err(Error::dim("scores (images × classes)", n * c, scores.len()));
    }
    if let Some(m) = ignore.filter(|m| m.len() != n * c) {
        return Err(Error::dim(
            "images left out of AP (images × classes)",
            n * c,
            m.len(),
        ));
    }
    if n == 0 {
        return Err(Error::Empty {
            what: "evaluation set".into(),
        });
    }
    crate::error::check_finite("scores", scores)?;
    // A class without samples here (a subset of a data set) has no AP; the others are scored.
    let columns: Vec<(Vec<f32>, Vec<bool>)> = (0..c)
        .map(|class| metrics::class_column(scores, labels, class, ignore))
        .collect();
    let absent_classes: Vec<usize> = (0..c)
        .filter(|&class| !columns[class].1.contains(&true))
        .collect();
    if absent_classes.len() == c {
        return Err(Error::Invalid(format!(
            "none of the {c} classes has a sample among the {n} evaluated images"
        )));
    }
    let (mut per_class_ap, mut voc11) = (vec![f64::NAN; c], vec![f64::NAN; c]);
    let mut pr_curves = Vec::with_capacity(c);
    for (class, (s, pos)) in columns.iter().enumerate() {
        if absent_classes.contains(&class) {
            pr_curves.push(thin(Vec::new(), Vec::new(), 200));
            continue;
        }
        let named = |e: Error| Error::Invalid(format!("AP of class {class}: {e}"));
        per_class_ap[class] = metrics::average_precision(s, pos).map_err(named)?;
        voc11[class] = metrics::average_precision_voc11(s, pos).map_err(named)?;
        let (p, r) = metrics::precision_recall_curve(s, pos)?;
        pr_curves.push(thin(p, r, 200));
    }
    let present =
        |aps: &[f64]| -> Vec<f64> { aps.iter().copied().filter(|a| !a.is_nan()).collect() };
    let (accuracy, top_k, confusion) = match labels {
        Labels::MultiClass { labels: truth, .. } => {
            let pred = crate::svm::argmax_rows(scores, c);
            // Beyond the table's size limit the confusion matrix is left empty, as for
            // multi-label data.
            let cm = if c <= metrics::MAX_CONFUSION_CLASSES {
                metrics::confusion_matrix(&pred, truth, c)?
            } else {
                Vec::new()
            };
            let top_k = [1, 2, 5]
                .iter()
                .filter(|&&k| k <= c)
                .map(|&k| Ok((k, metrics::top_k_accuracy(scores, c, truth, k)?)))
                .collect::<Result<_>>()?;
            (
                Some(metrics::accuracy(&pred, truth)?),
                top_k,
                cm.chunks(c).map(|r| r.to_vec()).collect(),
            )
        }
        Labels::MultiLabel { .. } => (None, Vec::new(), Vec::new()),
    };
    Ok(Evaluation {
        images: n,
        classes: c,
        class_names: class_names.to_vec(),
        multilabel: matches!(labels, Labels::MultiLabel { .. }),
        accuracy,
        top_k,
        map: metrics::mean_ap(&present(&per_class_ap))?,
        map_voc11: metrics::mean_ap(&present(&voc11))?,
        per_class_ap,
        per_class_ap_voc11: voc11,
        absent_classes,
        confusion,
        pr_curves,
    })
}
