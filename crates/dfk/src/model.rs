//! The dfk model file: one self-describing container for everything a trained pipeline needs.
//!
//! A model file is a [safetensors](https://github.com/huggingface/safetensors) file. Its arrays
//! hold the numbers (little-endian, exact: `f32` parameters as `F32`, `f64` solver values as
//! `F64`), and its `__metadata__` map holds one key, [`METADATA_KEY`], whose value is a JSON
//! document ([`Header`]): the format name and version, the `kind` of file (a whole pipeline,
//! a GMM alone, SVMs alone), class names, the pipeline configuration and the training history.
//!
//! | array | dtype | shape |
//! |---|---|---|
//! | `gmm.means`, `gmm.variances` | F32 | K × D |
//! | `gmm.weights` | F32 | K |
//! | `pca.mean` | F32 | D_in |
//! | `pca.components` | F32 | dims × D_in |
//! | `pca.eigenvalues` | F32 | dims |
//! | `svm.w` | F32 | C × dim |
//! | `svm.b` | F32 | C |
//! | `svm.primal`, `svm.dual` | F64 | C |
//! | `svm.iterations` | I64 | C |
//! | `svm.alpha` | F64 | C × n (n = 0 when the duals were not kept) |
//! | `class_gmm.means`, `class_gmm.variances` | F32 | C × K × D (per-class GMMs only) |
//! | `class_gmm.weights` | F32 | C × K (per-class GMMs only) |
//!
//! With per-class GMMs (a Deep Fisher Kernel trained with one GMM per class), class c's SVM
//! row scores the Fisher vector computed under class c's GMM; `gmm.*` then holds the GMM the
//! training started from.
//!
//! Files are written atomically and load back bit for bit: saving a loaded model reproduces
//! the file byte for byte.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::gmm::Gmm;
use crate::npy::FileGroup;
use crate::pca::Pca;
use crate::svm::{BinarySvm, OneVsRest};

/// Name stored in every header, to tell a dfk model from other safetensors files.
pub const FORMAT_NAME: &str = "dfk-model";
/// Version of the layout described in the module documentation. Files of another version are
/// rejected with an error naming both versions.
pub const FORMAT_VERSION: u32 = 1;
/// The `__metadata__` key holding the JSON [`Header`].
pub const METADATA_KEY: &str = "dfk";

/// What a model file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// A whole pipeline: optional PCA, GMM, optional SVMs, configuration and history.
    Pipeline,
    /// A GMM alone (`dfk gmm fit/import`).
    Gmm,
    /// One-vs-rest SVMs alone (`dfk svm train`).
    Svm,
}

impl std::fmt::Display for ModelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ModelKind::Pipeline => "pipeline",
            ModelKind::Gmm => "gmm",
            ModelKind::Svm => "svm",
        })
    }
}

/// The JSON document stored under [`METADATA_KEY`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// Always [`FORMAT_NAME`].
    pub format: String,
    /// [`FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// What the file holds.
    pub kind: ModelKind,
    /// The program that wrote the file (`dfk <version>`), for information only.
    pub writer: String,
    /// Class names, in the order of the SVM rows (may be empty).
    pub class_names: Vec<String>,
    /// Whether the PCA whitens (absent without PCA).
    pub pca_whiten: Option<bool>,
    /// Whether the SVMs are multi-label (absent without SVMs).
    pub svm_multilabel: Option<bool>,
    /// The pipeline configuration (`null` when none).
    pub config: serde_json::Value,
    /// The training history (`null` when none).
    pub history: serde_json::Value,
}

/// A whole trained pipeline, as stored in a model file of kind `pipeline`.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelFile {
    /// Descriptor projection, when the pipeline uses PCA.
    pub pca: Option<Pca>,
    /// The mixture the Fisher vectors are computed against.
    pub gmm: Gmm,
    /// The classifiers, when trained.
    pub svm: Option<OneVsRest>,
    /// One GMM per class (per-class Deep Fisher Kernel): class c's SVM applies to the Fisher
    /// vector under `class_gmms[c]`. Empty when every class uses `gmm`.
    pub class_gmms: Vec<Gmm>,
    /// Class names in the order of the SVM rows.
    pub class_names: Vec<String>,
    /// The pipeline configuration (see `dfk::pipeline::PipelineConfig`).
    pub config: serde_json::Value,
    /// Training history (timings, objectives, validation curves), free-form JSON.
    pub history: serde_json::Value,
}

impl ModelFile {
    /// Writes the model to `path` atomically.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let mut one = FileGroup::new();
        self.stage(path, &mut one)?;
        one.commit()
    }

    /// Stages the model file for `path` in `files`, so that it lands together with the
    /// other files of an output (a report) or not at all.
    pub fn stage(&self, path: impl AsRef<Path>, files: &mut FileGroup) -> Result<()> {
        let mut w = Writer::default();
        w.gmm(&self.gmm);
        if let Some(pca) = &self.pca {
            w.pca(pca);
        }
        if let Some(svm) = &self.svm {
            w.svm(svm)?;
        }
        if !self.class_gmms.is_empty() {
            w.class_gmms(&self.gmm, &self.class_gmms)?;
        }
        let header = Header {
            format: FORMAT_NAME.into(),
            format_version: FORMAT_VERSION,
            kind: ModelKind::Pipeline,
            writer: writer_name(),
            class_names: self.class_names.clone(),
            pca_whiten: self.pca.as_ref().map(|p| p.whiten),
            svm_multilabel: self.svm.as_ref().map(|s| s.multilabel),
            config: self.config.clone(),
            history: self.history.clone(),
        };
        w.stage(path.as_ref(), &header, files)
    }

    /// Reads a model file of kind `pipeline`, checking the format version and every array's
    /// dtype and shape.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = read_file(path)?;
        Self::from_reader(Reader::new(path, &bytes)?)
    }

    /// [`ModelFile::load`] on a file already read.
    fn from_reader(r: Reader<'_>) -> Result<Self> {
        let path = r.path;
        r.expect_kind(&[ModelKind::Pipeline])?;
        let gmm = r.gmm()?;
        let pca = if r.has("pca.mean") {
            Some(r.pca()?)
        } else {
            None
        };
        let svm = if r.has("svm.w") { Some(r.svm()?) } else { None };
        let class_gmms = if r.has("class_gmm.means") {
            r.class_gmms()?
        } else {
            Vec::new()
        };
        if let Some(first) = class_gmms.first() {
            if (first.k(), first.d()) != (gmm.k(), gmm.d()) {
                return Err(Error::format(
                    path,
                    format!(
                        "class_gmm.means holds K = {}, D = {} but gmm.means K = {}, D = {}: expected the same shapes",
                        first.k(),
                        first.d(),
                        gmm.k(),
                        gmm.d()
                    ),
                ));
            }
            check_class_gmm_count(path, class_gmms.len(), svm.as_ref().map(|s| s.classes))?;
        }
        if let (Some(pca), Some(_)) = (&pca, Some(&gmm)) {
            // The GMM models projected descriptors, possibly with (x, y) appended.
            if gmm.d() < pca.dims() {
                return Err(Error::format(
                    path,
                    format!(
                        "gmm.means has dimension {} but the PCA outputs {}: expected at least the PCA dimension",
                        gmm.d(),
                        pca.dims()
                    ),
                ));
            }
        }
        if let Some(svm) = &svm {
            // One 2KD block per spatial-pyramid cell; `Pipeline::from_model` checks the exact
            // count against the configuration's pyramid.
            if svm.dim == 0 || !svm.dim.is_multiple_of(gmm.fisher_len()) {
                return Err(Error::format(
                    path,
                    format!(
                        "svm.w has {} columns: expected the Fisher vector length 2KD = {} \
                         (times the cells of a spatial pyramid)",
                        svm.dim,
                        gmm.fisher_len()
                    ),
                ));
            }
        }
        if let Some(svm) = &svm {
            check_class_names(path, &r.header.class_names, svm.classes)?;
        }
        let header = r.header;
        Ok(ModelFile {
            pca,
            gmm,
            svm,
            class_gmms,
            class_names: header.class_names,
            config: header.config,
            history: header.history,
        })
    }
}

/// The header's class names, when there are any, must name every one-vs-rest SVM.
fn check_class_names(path: &Path, names: &[String], classes: usize) -> Result<()> {
    if !names.is_empty() && names.len() != classes {
        return Err(Error::format(
            path,
            format!(
                "class_names has {} names but the file holds {classes} one-vs-rest SVMs: \
                 expected one name per SVM (or none)",
                names.len()
            ),
        ));
    }
    Ok(())
}

/// Writes a GMM alone (a model file of kind `gmm`) atomically.
pub fn save_gmm(path: impl AsRef<Path>, gmm: &Gmm) -> Result<()> {
    let mut w = Writer::default();
    w.gmm(gmm);
    w.finish(path.as_ref(), &bare_header(ModelKind::Gmm, Vec::new()))
}

/// Reads the GMM of a model file of kind `gmm` or `pipeline`.
pub fn load_gmm(path: impl AsRef<Path>) -> Result<Gmm> {
    let path = path.as_ref();
    let bytes = read_file(path)?;
    let r = Reader::new(path, &bytes)?;
    r.expect_kind(&[ModelKind::Gmm, ModelKind::Pipeline])?;
    r.gmm()
}

/// The GMM of a model file of kind `gmm`, or of one of kind `pipeline` checked whole as the
/// commands that classify with it check it ([`crate::pipeline::Pipeline::from_model`] when it
/// holds SVMs), with the per-class GMMs of a per-class deep model (empty otherwise). The file
/// is read once, so a pipe will do.
pub fn load_gmm_checked(path: impl AsRef<Path>) -> Result<(Gmm, Vec<Gmm>)> {
    load_gmm_and_encoder(path).map(|(gmm, class_gmms, _)| (gmm, class_gmms))
}

/// [`load_gmm_checked`], with the Fisher vector settings that a pipeline model's SVMs were
/// trained on (its configuration's `fisher`: a deep model may have its own `sqrt_epsilon` and
/// posterior threshold); `None` for a GMM file, which has none.
pub fn load_gmm_and_encoder(
    path: impl AsRef<Path>,
) -> Result<(Gmm, Vec<Gmm>, Option<crate::fisher::FisherOptions>)> {
    let path = path.as_ref();
    let bytes = read_file(path)?;
    let r = Reader::new(path, &bytes)?;
    r.expect_kind(&[ModelKind::Gmm, ModelKind::Pipeline])?;
    if r.header.kind == ModelKind::Gmm {
        return Ok((r.gmm()?, Vec::new(), None));
    }
    let file = ModelFile::from_reader(r)?;
    let fisher = if file.svm.is_some() {
        Some(
            crate::pipeline::Pipeline::from_model(&file, path)?
                .config
                .fisher,
        )
    } else if file.config.is_null() {
        None
    } else {
        let config: crate::pipeline::PipelineConfig =
            serde_json::from_value(file.config.clone())
                .map_err(|e| Error::format(path, format!("stored configuration: {e}")))?;
        Some(config.fisher)
    };
    Ok((file.gmm, file.class_gmms, fisher))
}

/// Per-class GMMs (a per-class Deep Fisher Kernel model) need one one-vs-rest SVM each; checked
/// on loading a file and again by `Pipeline::from_model`, which may be given a hand-built model.
pub(crate) fn check_class_gmm_count(
    path: &Path,
    class_gmms: usize,
    svm_classes: Option<usize>,
) -> Result<()> {
    if class_gmms == 0 || svm_classes == Some(class_gmms) {
        return Ok(());
    }
    let svms = match svm_classes {
        Some(c) => format!("{c} one-vs-rest SVMs"),
        None => "no SVMs".to_string(),
    };
    Err(Error::format(
        path,
        format!("{class_gmms} per-class GMMs (class_gmm.*) for {svms}: expected one GMM per class"),
    ))
}

/// Reads the per-class GMMs of a model file of kind `gmm` or `pipeline` (those of a
/// per-class Deep Fisher Kernel model; empty when it has none).
pub fn load_class_gmms(path: impl AsRef<Path>) -> Result<Vec<Gmm>> {
    let path = path.as_ref();
    let bytes = read_file(path)?;
    let r = Reader::new(path, &bytes)?;
    r.expect_kind(&[ModelKind::Gmm, ModelKind::Pipeline])?;
    if r.has("class_gmm.means") {
        r.class_gmms()
    } else {
        Ok(Vec::new())
    }
}

/// Writes one-vs-rest SVMs alone (a model file of kind `svm`) atomically; `class_names` may
/// be empty.
pub fn save_svm(path: impl AsRef<Path>, svm: &OneVsRest, class_names: &[String]) -> Result<()> {
    let mut w = Writer::default();
    w.svm(svm)?;
    let mut header = bare_header(ModelKind::Svm, class_names.to_vec());
    header.svm_multilabel = Some(svm.multilabel);
    w.finish(path.as_ref(), &header)
}

/// Reads the SVMs (and class names) of a model file of kind `svm` or `pipeline`.
pub fn load_svm(path: impl AsRef<Path>) -> Result<(OneVsRest, Vec<String>)> {
    let path = path.as_ref();
    let bytes = read_file(path)?;
    let r = Reader::new(path, &bytes)?;
    r.expect_kind(&[ModelKind::Svm, ModelKind::Pipeline])?;
    if !r.has("svm.w") {
        return Err(Error::format(
            path,
            "the model holds no SVMs (array svm.w is missing): train them first",
        ));
    }
    let svm = r.svm()?;
    check_class_names(path, &r.header.class_names, svm.classes)?;
    Ok((svm, r.header.class_names.clone()))
}

/// What a model file holds, for `dfk info`: its header and each array's dtype and shape.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// The JSON header.
    pub header: Header,
    /// `(name, dtype, shape)` of every array, sorted by name.
    pub arrays: Vec<(String, String, Vec<usize>)>,
    /// File size in bytes.
    pub bytes: usize,
}

/// Reads a model file's header and array shapes without interpreting the arrays.
pub fn summarize(path: impl AsRef<Path>) -> Result<Summary> {
    let path = path.as_ref();
    let bytes = read_file(path)?;
    let r = Reader::new(path, &bytes)?;
    let mut arrays: Vec<_> = r
        .tensors
        .tensors()
        .into_iter()
        .map(|(name, t)| (name, format!("{:?}", t.dtype()), t.shape().to_vec()))
        .collect();
    arrays.sort();
    Ok(Summary {
        header: r.header.clone(),
        arrays,
        bytes: bytes.len(),
    })
}

fn writer_name() -> String {
    format!("dfk {}", env!("CARGO_PKG_VERSION"))
}

fn bare_header(kind: ModelKind, class_names: Vec<String>) -> Header {
    Header {
        format: FORMAT_NAME.into(),
        format_version: FORMAT_VERSION,
        kind,
        writer: writer_name(),
        class_names,
        pca_whiten: None,
        svm_multilabel: None,
        config: serde_json::Value::Null,
        history: serde_json::Value::Null,
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    if std::fs::metadata(path).is_ok_and(|m| m.is_dir()) {
        return Err(Error::format(
            path,
            "a folder, not a model file (a .dfk file that `dfk train`, `dfk deep` or `dfk gmm` \
             wrote)",
        ));
    }
    let special = std::fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir());
    if special {
        read_declared(path)
    } else {
        std::fs::read(path).map_err(|e| Error::io(path, e))
    }
}

/// Largest header a model file may declare (ours are a few kB; safetensors allows 100 MB).
const MAX_HEADER_BYTES: u64 = 100 << 20;

/// Reads a model from a device or pipe (`--model <(cat m.dfk)`) as far as its header says it
/// extends, and one byte more to find data beyond it (refused, as in a file): reading to the
/// end would never stop on `/dev/zero`. Nothing is allocated ahead of the bytes read. A pipe
/// can be read once: commands that read their model twice need a file.
fn read_declared(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let short = |what: &str| Error::format(path, format!("the file ends within its {what}"));
    let mut bytes = Vec::new();
    let mut file = file.take(8);
    file.read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    let Ok(len) = <[u8; 8]>::try_from(&bytes[..]) else {
        return Err(short("header length"));
    };
    let n = u64::from_le_bytes(len);
    if n == 0 || n > MAX_HEADER_BYTES {
        return Err(Error::format(
            path,
            format!("a header of {n} bytes: not a model file (at most {MAX_HEADER_BYTES})"),
        ));
    }
    file.set_limit(n);
    file.read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 != 8 + n {
        return Err(short("header"));
    }
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..])
        .map_err(|e| Error::format(path, format!("unreadable header: {e}")))?;
    // The data extend to the largest end offset of the arrays (relative to the header's end).
    let end = header
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(_, t)| t.get("data_offsets")?.get(1)?.as_u64())
        .max()
        .unwrap_or(0);
    let at = bytes.len() as u64;
    file.set_limit(end.saturating_add(1));
    file.read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    match (bytes.len() as u64 - at).cmp(&end) {
        std::cmp::Ordering::Less => Err(short("arrays")),
        std::cmp::Ordering::Greater => Err(Error::format(
            path,
            format!("data continue after the {end} bytes of arrays its header declares"),
        )),
        std::cmp::Ordering::Equal => Ok(bytes),
    }
}

/// Collects arrays as little-endian bytes, then serialises them with the header.
#[derive(Default)]
struct Writer {
    arrays: Vec<(String, Dtype, Vec<usize>, Vec<u8>)>,
}

impl Writer {
    fn f32(&mut self, name: &str, shape: Vec<usize>, v: &[f32]) {
        let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.arrays.push((name.into(), Dtype::F32, shape, bytes));
    }

    fn f64(&mut self, name: &str, shape: Vec<usize>, v: &[f64]) {
        let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.arrays.push((name.into(), Dtype::F64, shape, bytes));
    }

    fn i64(&mut self, name: &str, shape: Vec<usize>, v: &[i64]) {
        let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.arrays.push((name.into(), Dtype::I64, shape, bytes));
    }

    fn gmm(&mut self, gmm: &Gmm) {
        let (k, d) = (gmm.k(), gmm.d());
        self.f32("gmm.means", vec![k, d], gmm.means());
        self.f32("gmm.variances", vec![k, d], gmm.variances());
        self.f32("gmm.weights", vec![k], gmm.weights());
    }

    /// Per-class GMMs as C × K × D / C × K arrays; each must have the shape of `gmm`.
    fn class_gmms(&mut self, gmm: &Gmm, gmms: &[Gmm]) -> Result<()> {
        let (c, k, d) = (gmms.len(), gmm.k(), gmm.d());
        let (mut means, mut variances, mut weights) = (Vec::new(), Vec::new(), Vec::new());
        for (i, g) in gmms.iter().enumerate() {
            if (g.k(), g.d()) != (k, d) {
                return Err(Error::dim(
                    format!("per-class GMM {i} (K·D, as the shared GMM)"),
                    k * d,
                    g.k() * g.d(),
                ));
            }
            means.extend_from_slice(g.means());
            variances.extend_from_slice(g.variances());
            weights.extend_from_slice(g.weights());
        }
        self.f32("class_gmm.means", vec![c, k, d], &means);
        self.f32("class_gmm.variances", vec![c, k, d], &variances);
        self.f32("class_gmm.weights", vec![c, k], &weights);
        Ok(())
    }

    fn pca(&mut self, pca: &Pca) {
        let (dims, d_in) = (pca.dims(), pca.d_in());
        self.f32("pca.mean", vec![d_in], &pca.mean);
        self.f32("pca.components", vec![dims, d_in], &pca.components);
        self.f32("pca.eigenvalues", vec![dims], &pca.eigenvalues);
    }

    fn svm(&mut self, svm: &OneVsRest) -> Result<()> {
        let c = svm.models.len();
        if c != svm.classes {
            return Err(Error::dim("SVM models (one per class)", svm.classes, c));
        }
        let n_alpha = svm.models.first().map_or(0, |m| m.alpha.len());
        let mut w = Vec::with_capacity(c * svm.dim);
        let mut alpha = Vec::with_capacity(c * n_alpha);
        for (i, m) in svm.models.iter().enumerate() {
            if m.w.len() != svm.dim {
                return Err(Error::dim(format!("SVM {i} weights"), svm.dim, m.w.len()));
            }
            if m.alpha.len() != n_alpha {
                return Err(Error::dim(
                    format!("SVM {i} dual variables"),
                    n_alpha,
                    m.alpha.len(),
                ));
            }
            w.extend_from_slice(&m.w);
            alpha.extend_from_slice(&m.alpha);
        }
        let b: Vec<f32> = svm.models.iter().map(|m| m.b).collect();
        let primal: Vec<f64> = svm.models.iter().map(|m| m.primal).collect();
        let dual: Vec<f64> = svm.models.iter().map(|m| m.dual).collect();
        let iterations: Vec<i64> = svm.models.iter().map(|m| m.iterations as i64).collect();
        self.f32("svm.w", vec![c, svm.dim], &w);
        self.f32("svm.b", vec![c], &b);
        self.f64("svm.primal", vec![c], &primal);
        self.f64("svm.dual", vec![c], &dual);
        self.i64("svm.iterations", vec![c], &iterations);
        self.f64("svm.alpha", vec![c, n_alpha], &alpha);
        Ok(())
    }

    fn finish(self, path: &Path, header: &Header) -> Result<()> {
        let mut one = FileGroup::new();
        self.stage(path, header, &mut one)?;
        one.commit()
    }

    /// The encoded model file, staged in `files` to land with the rest of an output.
    fn stage(self, path: &Path, header: &Header, files: &mut FileGroup) -> Result<()> {
        let json = serde_json::to_string(header)
            .map_err(|e| Error::format(path, format!("cannot encode the model header: {e}")))?;
        let views = self
            .arrays
            .iter()
            .map(|(name, dtype, shape, bytes)| {
                TensorView::new(*dtype, shape.clone(), bytes)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| Error::format(path, format!("array {name}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let metadata = HashMap::from([(METADATA_KEY.to_string(), json)]);
        let bytes = safetensors::serialize(views, Some(metadata))
            .map_err(|e| Error::format(path, format!("cannot encode the model: {e}")))?;
        files.bytes(path, &bytes)
    }
}

/// What a file that is not a model looks like by its first bytes, for the error message.
fn looks_like(bytes: &[u8]) -> Option<&'static str> {
    let start = &bytes[..bytes.len().min(4096)];
    let has = |needle: &[u8]| start.windows(needle.len()).any(|w| w == needle);
    Some(if start.starts_with(b"\x93NUMPY") {
        "a .npy array"
    } else if image::guess_format(start).is_ok() {
        "an image"
    } else if start.starts_with(b"{") && has(b"dfk-deep-checkpoint") {
        "a `dfk deep` checkpoint (JSON), which `dfk deep --resume` continues; the model is \
         the file `dfk deep -o` wrote"
    } else if start.starts_with(b"{") {
        "a JSON file"
    } else {
        return None;
    })
}

/// A parsed model file: checked header plus typed, shape-checked access to its arrays.
struct Reader<'a> {
    path: &'a Path,
    header: Header,
    tensors: SafeTensors<'a>,
}

impl<'a> Reader<'a> {
    fn new(path: &'a Path, bytes: &'a [u8]) -> Result<Self> {
        let tensors = SafeTensors::deserialize(bytes).map_err(|e| {
            let what = match looks_like(bytes) {
                Some(kind) => format!("it looks like {kind}"),
                None => "the file may be truncated or of another type".to_string(),
            };
            Error::format(
                path,
                format!("not a dfk model file (expected a safetensors container; {e}); {what}"),
            )
        })?;
        let (_, metadata) = SafeTensors::read_metadata(bytes)
            .map_err(|e| Error::format(path, format!("unreadable model header: {e}")))?;
        let json = metadata
            .metadata()
            .as_ref()
            .and_then(|m| m.get(METADATA_KEY))
            .ok_or_else(|| {
                Error::format(
                    path,
                    format!("a safetensors file without the `{METADATA_KEY}` metadata entry: not a dfk model file"),
                )
            })?;
        let value: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| Error::format(path, format!("model header is not valid JSON: {e}")))?;
        let format = value.get("format");
        if format.and_then(|v| v.as_str()) != Some(FORMAT_NAME) {
            let found = format.map_or("missing".to_string(), |v| v.to_string());
            return Err(Error::format(
                path,
                format!("header field `format` is {found}: expected \"{FORMAT_NAME}\""),
            ));
        }
        let version = value.get("format_version").and_then(|v| v.as_u64());
        if version != Some(FORMAT_VERSION as u64) {
            return Err(Error::format(
                path,
                format!(
                    "header field `format_version` is {}: this dfk reads version {FORMAT_VERSION} (re-create the model with this version)",
                    version.map_or("missing".to_string(), |v| v.to_string())
                ),
            ));
        }
        let header: Header = serde_json::from_value(value)
            .map_err(|e| Error::format(path, format!("model header: {e}")))?;
        Ok(Reader {
            path,
            header,
            tensors,
        })
    }

    fn expect_kind(&self, kinds: &[ModelKind]) -> Result<()> {
        if kinds.contains(&self.header.kind) {
            return Ok(());
        }
        let wanted: Vec<String> = kinds.iter().map(|k| k.to_string()).collect();
        Err(Error::format(
            self.path,
            format!(
                "header field `kind` is {}: expected a model of kind {}",
                self.header.kind,
                wanted.join(" or ")
            ),
        ))
    }

    fn has(&self, name: &str) -> bool {
        self.tensors.tensor(name).is_ok()
    }

    fn view(&self, name: &str, dtype: Dtype, rank: usize) -> Result<TensorView<'a>> {
        let t = self
            .tensors
            .tensor(name)
            .map_err(|_| Error::format(self.path, format!("array `{name}` is missing")))?;
        if t.dtype() != dtype {
            return Err(Error::format(
                self.path,
                format!(
                    "array `{name}` has dtype {:?}: expected {dtype:?}",
                    t.dtype()
                ),
            ));
        }
        if t.shape().len() != rank {
            return Err(Error::format(
                self.path,
                format!(
                    "array `{name}` has shape {:?}: expected rank {rank}",
                    t.shape()
                ),
            ));
        }
        Ok(t)
    }

    /// `name`'s shape must be `expected`, which `basis` (e.g. "K × D of `gmm.means`") says
    /// where it comes from: two arrays that disagree are both named, as either may be wrong.
    fn check_shape(
        &self,
        name: &str,
        got: &[usize],
        expected: &[usize],
        basis: &str,
    ) -> Result<()> {
        if got != expected {
            return Err(Error::format(
                self.path,
                format!("array `{name}` has shape {got:?}: expected {expected:?}, the {basis}"),
            ));
        }
        Ok(())
    }

    fn f32(&self, name: &str, rank: usize) -> Result<(Vec<f32>, Vec<usize>)> {
        let t = self.view(name, Dtype::F32, rank)?;
        let v = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok((v, t.shape().to_vec()))
    }

    fn f64(&self, name: &str, rank: usize) -> Result<(Vec<f64>, Vec<usize>)> {
        let t = self.view(name, Dtype::F64, rank)?;
        let v = t
            .data()
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
            .collect();
        Ok((v, t.shape().to_vec()))
    }

    fn i64(&self, name: &str, rank: usize) -> Result<(Vec<i64>, Vec<usize>)> {
        let t = self.view(name, Dtype::I64, rank)?;
        let v = t
            .data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
            .collect();
        Ok((v, t.shape().to_vec()))
    }

    fn invalid(&self, what: &str, e: Error) -> Error {
        Error::format(self.path, format!("{what}: {e}"))
    }

    fn gmm(&self) -> Result<Gmm> {
        let (means, ms) = self.f32("gmm.means", 2)?;
        let (k, d) = (ms[0], ms[1]);
        let (variances, vs) = self.f32("gmm.variances", 2)?;
        self.check_shape("gmm.variances", &vs, &[k, d], "K × D of `gmm.means`")?;
        let (weights, ws) = self.f32("gmm.weights", 1)?;
        self.check_shape("gmm.weights", &ws, &[k], "K of `gmm.means`")?;
        self.build_gmm(k, d, means, variances, weights, "the GMM arrays (gmm.*)")
    }

    fn class_gmms(&self) -> Result<Vec<Gmm>> {
        let (means, ms) = self.f32("class_gmm.means", 3)?;
        let (c, k, d) = (ms[0], ms[1], ms[2]);
        let (variances, vs) = self.f32("class_gmm.variances", 3)?;
        let basis = "classes × K × D of `class_gmm.means`";
        self.check_shape("class_gmm.variances", &vs, &[c, k, d], basis)?;
        let (weights, ws) = self.f32("class_gmm.weights", 2)?;
        let basis = "classes × K of `class_gmm.means`";
        self.check_shape("class_gmm.weights", &ws, &[c, k], basis)?;
        if c == 0 {
            return Err(Error::format(
                self.path,
                "array `class_gmm.means` holds no GMM: expected one per class",
            ));
        }
        (0..c)
            .map(|i| {
                let kd = i * k * d..(i + 1) * k * d;
                self.build_gmm(
                    k,
                    d,
                    means[kd.clone()].to_vec(),
                    variances[kd].to_vec(),
                    weights[i * k..(i + 1) * k].to_vec(),
                    &format!("per-class GMM {i} (class_gmm.*)"),
                )
            })
            .collect()
    }

    /// A validated GMM whose weights are exactly the stored ones.
    fn build_gmm(
        &self,
        k: usize,
        d: usize,
        means: Vec<f32>,
        variances: Vec<f32>,
        weights: Vec<f32>,
        what: &str,
    ) -> Result<Gmm> {
        // The stored weights exactly (renormalising could move one by an ulp); saved weights
        // sum to 1 within their f32 roundings, another sum is a file that dfk did not write,
        // whose weights would scale the plain Fisher vectors.
        Gmm::from_normalised(k, d, means, variances, weights).map_err(|e| {
            let e = match e {
                Error::Invalid(m) if m.starts_with("GMM weights sum to") => Error::Invalid(
                    format!("{m}: a model file holds normalised weights (`dfk gmm import` normalises them)"),
                ),
                e => e,
            };
            self.invalid(what, e)
        })
    }

    fn pca(&self) -> Result<Pca> {
        let (mean, ms) = self.f32("pca.mean", 1)?;
        let (components, cs) = self.f32("pca.components", 2)?;
        let (eigenvalues, es) = self.f32("pca.eigenvalues", 1)?;
        let basis = "dims of `pca.eigenvalues` × input dimension of `pca.mean`";
        self.check_shape("pca.components", &cs, &[es[0], ms[0]], basis)?;
        let whiten = self.header.pca_whiten.ok_or_else(|| {
            Error::format(
                self.path,
                "header field `pca_whiten` is missing although the file holds a PCA",
            )
        })?;
        Pca::new(mean, components, eigenvalues, whiten)
            .map_err(|e| self.invalid("the PCA arrays (pca.*)", e))
    }

    fn svm(&self) -> Result<OneVsRest> {
        let (w, ws) = self.f32("svm.w", 2)?;
        let (c, dim) = (ws[0], ws[1]);
        let (b, bs) = self.f32("svm.b", 1)?;
        if bs[..] == [dim] && dim != c {
            // One bias per class: a `w` whose second axis matches them is stored transposed.
            return Err(Error::format(
                self.path,
                format!(
                    "array `svm.w` has shape {ws:?}: expected classes × features, [{dim}, {c}] \
                     for the {dim} biases of `svm.b` (it looks transposed)"
                ),
            ));
        }
        self.check_shape("svm.b", &bs, &[c], "classes of `svm.w` (its rows)")?;
        let (primal, ps) = self.f64("svm.primal", 1)?;
        self.check_shape("svm.primal", &ps, &[c], "classes of `svm.w` (its rows)")?;
        let (dual, ds) = self.f64("svm.dual", 1)?;
        self.check_shape("svm.dual", &ds, &[c], "classes of `svm.w` (its rows)")?;
        let (iterations, is) = self.i64("svm.iterations", 1)?;
        self.check_shape("svm.iterations", &is, &[c], "classes of `svm.w` (its rows)")?;
        let (alpha, a_shape) = self.f64("svm.alpha", 2)?;
        if a_shape[0] != c {
            return Err(Error::format(
                self.path,
                format!("array `svm.alpha` has shape {a_shape:?}: expected {c} rows"),
            ));
        }
        let n = a_shape[1];
        crate::error::check_finite("svm.w", &w).map_err(|e| self.invalid("svm.w", e))?;
        crate::error::check_finite("svm.b", &b).map_err(|e| self.invalid("svm.b", e))?;
        if c == 0 || dim == 0 {
            return Err(Error::format(
                self.path,
                format!(
                    "array `svm.w` has shape {ws:?}: expected at least one class and one feature"
                ),
            ));
        }
        let multilabel = self.header.svm_multilabel.ok_or_else(|| {
            Error::format(
                self.path,
                "header field `svm_multilabel` is missing although the file holds SVMs",
            )
        })?;
        let models = (0..c)
            .map(|i| BinarySvm {
                w: w[i * dim..(i + 1) * dim].to_vec(),
                b: b[i],
                alpha: alpha[i * n..(i + 1) * n].to_vec(),
                primal: primal[i],
                dual: dual[i],
                iterations: iterations[i].max(0) as usize,
            })
            .collect();
        Ok(OneVsRest {
            classes: c,
            dim,
            multilabel,
            models,
        })
    }
}
