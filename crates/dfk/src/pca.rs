//! Principal component analysis of local descriptors, and the per-descriptor preprocessing that
//! follows it in the Fisher-vector pipeline (L2 normalisation, spatial augmentation).
//!
//! [`fit_pca`] estimates the mean `μ` and the covariance `Σ = (1/(n−1)) Σᵢ (xᵢ−μ)(xᵢ−μ)ᵀ` of a
//! seeded random sample of descriptors (both in `f64`, the covariance accumulated block-wise as
//! a matrix product), and keeps the eigenvectors of `Σ` with the `dims` largest eigenvalues. The
//! projection is `y = W (x − μ)`, optionally whitened (`yⱼ / √(λⱼ + ε)`); eigenvalues equal
//! scikit-learn's `PCA.explained_variance_`.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatMut, MatRef, Par, Side};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{check_finite, Error, Result};

/// Whitening regulariser relative to the largest eigenvalue: component `j` is divided by
/// `√(λⱼ + WHITEN_EPS_REL·λ₁)`, so components with (near-)zero variance are not blown up and the
/// result does not depend on the scale of the data.
pub const WHITEN_EPS_REL: f64 = 1e-5;

/// Rows per block when accumulating the covariance or centring during the projection.
const BLOCK: usize = 1024;

/// Parameters of [`fit_pca`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PcaParams {
    /// Output dimension (number of principal components kept), `1 ≤ dims ≤ D_in`.
    pub dims: usize,
    /// Divide each projected coordinate by the square root of its eigenvalue (plus
    /// [`WHITEN_EPS_REL`] times the largest one), giving unit-variance outputs.
    pub whiten: bool,
    /// At most this many descriptors (drawn uniformly without replacement) are used for the fit.
    pub sample: usize,
    /// Seed of the sample draw.
    pub seed: u64,
}

impl Default for PcaParams {
    fn default() -> Self {
        PcaParams {
            dims: 64,
            whiten: false,
            sample: 100_000,
            seed: 0,
        }
    }
}

impl PcaParams {
    /// Default parameters with `dims` output dimensions.
    pub fn new(dims: usize) -> Self {
        PcaParams {
            dims,
            ..Self::default()
        }
    }

    /// Sets [`PcaParams::whiten`].
    pub fn whiten(mut self, whiten: bool) -> Self {
        self.whiten = whiten;
        self
    }

    /// Sets [`PcaParams::sample`].
    pub fn sample(mut self, sample: usize) -> Self {
        self.sample = sample;
        self
    }

    /// Sets [`PcaParams::seed`].
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Checks the parameters against the input dimension `d_in`.
    pub fn validate(&self, d_in: usize) -> Result<()> {
        if d_in == 0 {
            return Err(Error::param("d_in", d_in, "at least 1"));
        }
        if self.dims == 0 || self.dims > d_in {
            return Err(Error::param(
                "pca.dims",
                self.dims,
                format!("between 1 and the input dimension {d_in}"),
            ));
        }
        if self.sample < 2 {
            return Err(Error::param("pca.sample", self.sample, "at least 2"));
        }
        Ok(())
    }
}

/// A fitted PCA projection `y = W (x − μ)` (whitened: `yⱼ /= √(λⱼ + ε)`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pca {
    /// `μ`, length `D_in`.
    pub mean: Vec<f32>,
    /// `W`, `dims × D_in` row-major; rows are orthonormal eigenvectors of the covariance, sorted
    /// by decreasing eigenvalue, each with its largest-magnitude entry positive.
    pub components: Vec<f32>,
    /// `λ`, length `dims`, decreasing, the sample variance (divisor `n − 1`) along each row of `W`.
    pub eigenvalues: Vec<f32>,
    /// Whether [`Pca::transform`] whitens.
    pub whiten: bool,
}

impl Pca {
    /// Builds a PCA from stored parameters, checking sizes and finiteness.
    pub fn new(
        mean: Vec<f32>,
        components: Vec<f32>,
        eigenvalues: Vec<f32>,
        whiten: bool,
    ) -> Result<Self> {
        let pca = Pca {
            mean,
            components,
            eigenvalues,
            whiten,
        };
        pca.validate()?;
        Ok(pca)
    }

    /// Checks that the sizes agree and every value is finite, eigenvalues non-negative.
    pub fn validate(&self) -> Result<()> {
        let (dims, d_in) = (self.eigenvalues.len(), self.mean.len());
        if d_in == 0 || dims == 0 {
            return Err(Error::Empty {
                what: "PCA mean or eigenvalues".into(),
            });
        }
        if self.components.len() != dims * d_in {
            return Err(Error::dim(
                "PCA components (dims × D_in)",
                dims * d_in,
                self.components.len(),
            ));
        }
        check_finite("PCA mean", &self.mean)?;
        check_finite("PCA components", &self.components)?;
        check_finite("PCA eigenvalues", &self.eigenvalues)?;
        if let Some(j) = self.eigenvalues.iter().position(|&l| l < 0.0) {
            return Err(Error::param(
                &format!("PCA eigenvalue {j}"),
                self.eigenvalues[j],
                "non-negative",
            ));
        }
        Ok(())
    }

    /// Input dimension `D_in`.
    pub fn d_in(&self) -> usize {
        self.mean.len()
    }

    /// Output dimension `dims`.
    pub fn dims(&self) -> usize {
        self.eigenvalues.len()
    }

    /// Whitening scales `1/√(λⱼ + ε)`, `ε = WHITEN_EPS_REL·λ₁` (1 where every λ is 0: the data
    /// were constant and there is nothing to rescale).
    fn whitening_scales(&self) -> Vec<f32> {
        let eps = WHITEN_EPS_REL
            * self
                .eigenvalues
                .iter()
                .fold(0.0f64, |m, &l| m.max(l as f64));
        self.eigenvalues
            .iter()
            .map(|&l| {
                let denom = (l as f64 + eps).sqrt();
                if denom > 0.0 {
                    (1.0 / denom) as f32
                } else {
                    1.0
                }
            })
            .collect()
    }

    /// Projects the rows of `x` (`N × D_in`), returning `N × dims`.
    pub fn transform(&self, x: &[f32]) -> Result<Vec<f32>> {
        let n = x.len() / self.d_in().max(1);
        let mut out = vec![0.0; n * self.dims()];
        let mut scratch = Vec::new();
        self.transform_into(x, &mut out, &mut scratch)?;
        Ok(out)
    }

    /// Projects the rows of `x` (`N × D_in`) into `out` (`N × dims`) as one matrix product per
    /// block of rows: `out = (x − 1μᵀ) Wᵀ · diag(scale)`. `scratch` holds the centred block; it
    /// grows to at most `1024 × D_in` and is reused across calls, so repeated per-image calls
    /// allocate nothing.
    pub fn transform_into(&self, x: &[f32], out: &mut [f32], scratch: &mut Vec<f32>) -> Result<()> {
        let (d_in, dims) = (self.d_in(), self.dims());
        if d_in == 0 || !x.len().is_multiple_of(d_in) {
            return Err(Error::dim(
                "PCA input length (a multiple of D_in)",
                d_in,
                x.len(),
            ));
        }
        // The fields are public: a hand-built projection may not be dims × D_in.
        if self.components.len() != dims * d_in {
            return Err(Error::dim(
                "PCA components (dims × D_in)",
                dims * d_in,
                self.components.len(),
            ));
        }
        let n = x.len() / d_in;
        if out.len() != n * dims {
            return Err(Error::dim(
                "PCA output length (N × dims)",
                n * dims,
                out.len(),
            ));
        }
        check_finite("PCA input", x)?;
        let scale = if self.whiten {
            self.whitening_scales()
        } else {
            Vec::new()
        };
        let w = MatRef::from_row_major_slice(&self.components, dims, d_in);
        for (xb, ob) in x.chunks(BLOCK * d_in).zip(out.chunks_mut(BLOCK * dims)) {
            let rows = xb.len() / d_in;
            scratch.resize(xb.len().max(scratch.len()), 0.0);
            let c = &mut scratch[..xb.len()];
            for (dst, src) in c.chunks_exact_mut(d_in).zip(xb.chunks_exact(d_in)) {
                for ((t, &v), &m) in dst.iter_mut().zip(src).zip(&self.mean) {
                    *t = v - m;
                }
            }
            matmul(
                MatMut::from_row_major_slice_mut(ob, rows, dims),
                Accum::Replace,
                MatRef::from_row_major_slice(c, rows, d_in),
                w.transpose(),
                1.0f32,
                Par::Seq,
            );
            if self.whiten {
                for row in ob.chunks_exact_mut(dims) {
                    for (v, &s) in row.iter_mut().zip(&scale) {
                        *v *= s;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Largest input dimension [`fit_pca`] takes: a 16384 × 16384 f64 covariance is 2.1 GB and
/// its eigendecomposition O(D³) ≈ 4·10¹² operations.
pub const MAX_PCA_INPUT: usize = 16384;

/// Fits a PCA to the rows of `x` (`N × d_in`, row-major) using at most `params.sample` rows drawn
/// uniformly without replacement (seeded), or all rows when `N ≤ sample`.
///
/// Errors: `dims` not in `1..=d_in`, fewer than 2 rows, a length that is not a multiple of
/// `d_in`, a non-finite value in the rows used.
pub fn fit_pca(x: &[f32], d_in: usize, params: &PcaParams) -> Result<Pca> {
    params.validate(d_in)?;
    if d_in > MAX_PCA_INPUT {
        // The covariance and the eigendecomposition's workspace are D_in × D_in f64 each: a
        // failed allocation would abort the process.
        return Err(Error::param(
            "PCA input dimension",
            d_in,
            format!(
                "at most {MAX_PCA_INPUT} (its {d_in} × {d_in} covariance would take {:.1} GB, \
                 twice over in the eigendecomposition)",
                (d_in as f64).powi(2) * 8e-9
            ),
        ));
    }
    if !x.len().is_multiple_of(d_in) {
        return Err(Error::dim(
            "PCA training data length (a multiple of d_in)",
            d_in,
            x.len(),
        ));
    }
    let n_all = x.len() / d_in;
    if n_all < 2 {
        return Err(Error::Invalid(format!(
            "PCA needs at least 2 descriptors, got {n_all}"
        )));
    }
    let rows: Vec<usize> = if n_all > params.sample {
        let mut rng = ChaCha8Rng::seed_from_u64(params.seed);
        let mut idx = rand::seq::index::sample(&mut rng, n_all, params.sample).into_vec();
        idx.sort_unstable();
        idx
    } else {
        (0..n_all).collect()
    };
    let n = rows.len();
    for &r in &rows {
        check_finite("PCA training data", &x[r * d_in..(r + 1) * d_in]).map_err(|_| {
            Error::NonFinite {
                what: format!("PCA training data row {r}"),
                index: r,
            }
        })?;
    }

    let mut mean = vec![0.0f64; d_in];
    for &r in &rows {
        for (m, &v) in mean.iter_mut().zip(&x[r * d_in..(r + 1) * d_in]) {
            *m += v as f64;
        }
    }
    for m in &mut mean {
        *m /= n as f64;
    }

    // Σ = CᵀC/(n−1) over centred blocks C, accumulated in f64.
    let mut cov = Mat::<f64>::zeros(d_in, d_in);
    let mut block = vec![0.0f64; BLOCK.min(n) * d_in];
    for chunk in rows.chunks(BLOCK) {
        let c = &mut block[..chunk.len() * d_in];
        for (dst, &r) in c.chunks_exact_mut(d_in).zip(chunk) {
            for ((t, &v), &m) in dst.iter_mut().zip(&x[r * d_in..(r + 1) * d_in]).zip(&mean) {
                *t = v as f64 - m;
            }
        }
        let cm = MatRef::from_row_major_slice(c, chunk.len(), d_in);
        matmul(
            cov.as_mut(),
            Accum::Add,
            cm.transpose(),
            cm,
            1.0 / (n - 1) as f64,
            Par::rayon(0),
        );
    }
    // Symmetrise away rounding differences between the two triangles.
    for i in 0..d_in {
        for j in 0..i {
            let v = 0.5 * (cov[(i, j)] + cov[(j, i)]);
            cov[(i, j)] = v;
            cov[(j, i)] = v;
        }
    }
    let evd = cov
        .self_adjoint_eigen(Side::Lower)
        .map_err(|e| Error::Invalid(format!("PCA eigen-decomposition failed: {e:?}")))?;
    let (u, s) = (evd.U(), evd.S());

    let dims = params.dims;
    let mut components = vec![0.0f32; dims * d_in];
    let mut eigenvalues = vec![0.0f32; dims];
    // faer sorts eigenvalues increasingly; take them from the end.
    for (j, (row, lambda)) in components
        .chunks_exact_mut(d_in)
        .zip(&mut eigenvalues)
        .enumerate()
    {
        let col = d_in - 1 - j;
        *lambda = s[col].max(0.0) as f32;
        let (mut best, mut best_abs) = (0.0f64, -1.0f64);
        for i in 0..d_in {
            let v = u[(i, col)];
            if v.abs() > best_abs {
                best_abs = v.abs();
                best = v;
            }
        }
        let sign = if best < 0.0 { -1.0 } else { 1.0 };
        for (i, w) in row.iter_mut().enumerate() {
            *w = (sign * u[(i, col)]) as f32;
        }
    }
    Pca::new(
        mean.iter().map(|&m| m as f32).collect(),
        components,
        eigenvalues,
        params.whiten,
    )
}

/// Scales each row of `x` (`N × d`) to unit Euclidean norm, `xᵢ ← xᵢ / ‖xᵢ‖₂` (norm in `f64`);
/// all-zero rows are left at zero. A `d` of 0 or a length that is not a multiple of `d` leaves
/// the trailing partial row untouched.
pub fn l2_normalize_rows(x: &mut [f32], d: usize) {
    if d == 0 {
        return;
    }
    for row in x.chunks_exact_mut(d) {
        let norm = row
            .iter()
            .map(|&v| (v as f64) * (v as f64))
            .sum::<f64>()
            .sqrt();
        if norm > 0.0 {
            let inv = (1.0 / norm) as f32;
            for v in row {
                *v *= inv;
            }
        }
    }
}

/// Appends each descriptor's normalised position to it: row `i` of the result is
/// `[xᵢ, (pxᵢ + 0.5)/width − 0.5, (pyᵢ + 0.5)/height − 0.5]` (`N × (d + 2)`), where
/// `(pxᵢ, pyᵢ)` is the keypoint centre in pixel coordinates (pixel `k` centred at `k`, as in
/// VLFeat), so the image extent maps onto `[−0.5, 0.5]²`.
pub fn append_spatial(
    x: &[f32],
    d: usize,
    positions: &[[f32; 2]],
    width: usize,
    height: usize,
) -> Result<Vec<f32>> {
    if d == 0 || !x.len().is_multiple_of(d) {
        return Err(Error::dim(
            "descriptor length (a multiple of d)",
            d,
            x.len(),
        ));
    }
    let n = x.len() / d;
    if positions.len() != n {
        return Err(Error::dim("keypoint positions", n, positions.len()));
    }
    if width == 0 || height == 0 {
        return Err(Error::param(
            "image size",
            format!("{width}x{height}"),
            "positive width and height",
        ));
    }
    let mut out = Vec::with_capacity(n * (d + 2));
    for (row, p) in x.chunks_exact(d).zip(positions) {
        out.extend_from_slice(row);
        out.push((p[0] + 0.5) / width as f32 - 0.5);
        out.push((p[1] + 0.5) / height as f32 - 0.5);
    }
    Ok(out)
}
