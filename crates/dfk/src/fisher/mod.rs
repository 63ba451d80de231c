//! The improved Fisher vector, with VLFeat 0.9.21's values and layout (`vl_fisher_encode`), and
//! its backward pass with respect to the GMM parameters ([`GmmGradient`]).
//!
//! For descriptors `x_1..x_N` of one image and a diagonal GMM `{π_k, μ_k, σ²_k}`:
//!
//! ```text
//! γ_ik = softmax_k(log π_k − ½ Σ_d log σ²_kd − ½ Σ_d (x_id − μ_kd)²/σ²_kd)
//! u_kd = 1/(N √π_k)    Σ_i γ_ik (x_id − μ_kd)/σ_kd
//! v_kd = 1/(N √(2π_k)) Σ_i γ_ik ((x_id − μ_kd)²/σ²_kd − 1)
//! Φ    = [u_1 … u_K, v_1 … v_K]                  (all mean blocks, then all variance blocks)
//! p    = sign(Φ) ((|Φ| + ε)^a − ε^a)            (improved; a = 0.5, ε = 0 is VLFeat's sqrt)
//! φ    = p / max(‖p‖₂, 1e-12)                    (l2)
//! ```
//!
//! Like VLFeat, posteriors `γ_ik < posterior_threshold` (1e-6) are skipped, not renormalised,
//! and components with `π_k < 1e-6` are skipped (their blocks are zero).
//!
//! Matrix-product form and precision. The log-densities of a block of [`BLOCK`] descriptors
//! are one f32 GEMM ([`crate::stats::block_posteriors`]) on data shifted by the GMM's centre
//! `c = Σ_k π_k μ_k`. That form cancels (`x²/σ² − 2xμ/σ² + μ²/σ²`): on the committed VLFeat
//! fixture K=32, D=64 its error in log γ (for γ ≥ 1e-6) was 3.7e-4 (4.6e-4 unshifted). So the
//! entries that matter, `γ_ik ≥ 1e-7`, are recomputed directly in f64 from the unshifted
//! `(x − μ_k)²/σ²_k` and each row renormalised with the remaining GEMM values
//! ([`crate::stats::refine_posteriors`]). Likewise the expanded statistics
//! `(S2 − 2μ S1 + μ² S0)/σ²` from the GEMM `γᵀ[x², x]`: the first all-GEMM version of this
//! encoder was 4.2e-6 (max abs, improved FV) off the f64 definition on the fixture with tight
//! components far from the centre, against ≤ 1e-8 now. With VLFeat's threshold only a few
//! posteriors per descriptor are non-zero, so the statistics are accumulated directly about
//! each component's mean, `Σ γ (x − μ_k)` and `Σ γ (x − μ_k)²`, in f64 (vectorised); with
//! `posterior_threshold = 0` every non-zero posterior is accumulated that way (VLFeat's cost
//! for that part).

mod backward;

pub use backward::{ForwardCache, GmmGradient};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::gmm::Gmm;
use crate::kernels::SimdLevel;
use crate::stats::{self, GmmTerms, Scratch, BLOCK};

/// Components with a weight below this are skipped (VLFeat 0.9.21's rule).
pub const MIN_PRIOR: f32 = 1e-6;

/// Posteriors at or above this (from the GEMM) are recomputed exactly; the GEMM's relative
/// error (≤ 5e-4 measured on the fixtures) cannot move a posterior ≥ 1e-6 below it.
const REFINE: f32 = 1e-7;

/// How the Fisher vector is post-processed.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FisherOptions {
    /// Apply the signed power `sign(Φ)|Φ|^power` (VLFeat's `VL_FISHER_FLAG_SQUARE_ROOT` when
    /// `power` = 0.5); with `l2` this is VLFeat's `VL_FISHER_FLAG_IMPROVED`.
    pub improved: bool,
    /// Exponent of the signed power when `improved` (0.5 = signed square root).
    pub power: f32,
    /// Divide by `max(‖p‖₂, 1e-12)` (VLFeat's `VL_FISHER_FLAG_NORMALIZED`).
    pub l2: bool,
    /// Posteriors below this are skipped, not renormalised (VLFeat: 1e-6; 0 = dense).
    pub posterior_threshold: f32,
    /// ε of the smoothed signed power `sign(Φ)((|Φ|+ε)^a − ε^a)`, which has a bounded
    /// derivative at 0 for ε > 0. Used by forward and backward alike; 0 matches VLFeat.
    pub sqrt_epsilon: f32,
}

impl Default for FisherOptions {
    /// The improved Fisher vector: signed square root, then L2 normalisation.
    fn default() -> Self {
        Self {
            improved: true,
            power: 0.5,
            l2: true,
            posterior_threshold: 1e-6,
            sqrt_epsilon: 0.0,
        }
    }
}

impl FisherOptions {
    /// The raw Fisher vector Φ (VLFeat with no flags).
    pub fn plain() -> Self {
        Self {
            improved: false,
            l2: false,
            ..Self::default()
        }
    }

    /// Checks the ranges: `power` in (0, 1], threshold in [0, 1), ε ≥ 0, all finite.
    pub fn validate(&self) -> Result<()> {
        if !(self.power.is_finite() && self.power > 0.0 && self.power <= 1.0) {
            return Err(Error::param("power", self.power, "a value in (0, 1]"));
        }
        let t = self.posterior_threshold;
        if !(t.is_finite() && (0.0..1.0).contains(&t)) {
            return Err(Error::param("posterior_threshold", t, "a value in [0, 1)"));
        }
        let e = self.sqrt_epsilon;
        if !(e.is_finite() && e >= 0.0) {
            return Err(Error::param("sqrt_epsilon", e, "a finite value >= 0"));
        }
        Ok(())
    }
}

/// Encodes sets of descriptors as Fisher vectors of one GMM; see the module documentation.
#[derive(Clone, Debug)]
pub struct FisherEncoder {
    gmm: Gmm,
    options: FisherOptions,
    /// Log-density terms of the GMM shifted by `-center`.
    terms: GmmTerms,
    /// `D`: the shift `c = Σ π_k μ_k` subtracted from every descriptor.
    center: Vec<f32>,
    /// `K × D`: `μ − c`, the means in the shifted frame.
    cmeans: Vec<f64>,
    /// `K × D`: μ.
    means: Vec<f64>,
    /// `K × D`: σ and 1/σ².
    sigma: Vec<f64>,
    inv_var: Vec<f64>,
    /// Terms of the unshifted GMM: exact f64 recomputation of significant posteriors.
    raw_terms: GmmTerms,
    /// Vector level of the f64 loops.
    level: SimdLevel,
    /// `K`: whether the component takes part (π ≥ [`MIN_PRIOR`]).
    active: Vec<bool>,
}

/// Per-thread working memory of [`FisherEncoder`]; reuse it across images.
#[derive(Clone, Debug)]
pub struct FisherScratch {
    /// Block scratch of the shared statistics kernel.
    block: Scratch,
    /// `BLOCK × D`: the shifted descriptors of a block.
    xc: Vec<f32>,
    /// Backward: `K` values of A for one descriptor.
    lrow: Vec<f64>,
    /// `K`, `K × D`, `K × D`: f64 sums Σγ, Σγ(x − μ), Σγ(x − μ)² over the image.
    s0: Vec<f64>,
    s1: Vec<f64>,
    s2: Vec<f64>,
    /// `2KD`: raw Φ of the last image, then (backward) ∂L/∂Φ.
    phi: Vec<f64>,
    /// `2KD`: the post-processed vector of the last image (p, then φ).
    out: Vec<f64>,
    /// ‖p‖ of the last image (1 when not normalised).
    norm: f64,
    /// Backward: `K × D` coefficients of `A_ik = r_k + Σ_d δ (cu + cv δ)`, δ = x − μ, and `K`
    /// offsets r.
    cu: Vec<f64>,
    cv: Vec<f64>,
    r: Vec<f64>,
    /// Backward: f64 sums Σ B, Σ B (x − μ), Σ B (x − μ)² over the image.
    t0: Vec<f64>,
    t1: Vec<f64>,
    t2: Vec<f64>,
}

impl FisherEncoder {
    /// Prepares the encoder (validates `options`, precomputes the shifted GMM terms).
    pub fn new(gmm: &Gmm, options: FisherOptions) -> Result<Self> {
        options.validate()?;
        let (k, d) = (gmm.k(), gmm.d());
        let mut center = vec![0f64; d];
        for c in 0..k {
            let w = gmm.weights()[c] as f64;
            for (s, &m) in center.iter_mut().zip(gmm.mean(c)) {
                *s += w * m as f64;
            }
        }
        let center: Vec<f32> = center.iter().map(|&v| v as f32).collect();
        let shifted: Vec<f32> = gmm
            .means()
            .iter()
            .enumerate()
            .map(|(i, &m)| m - center[i % d])
            .collect();
        let cmeans = gmm
            .means()
            .iter()
            .enumerate()
            .map(|(i, &m)| m as f64 - center[i % d] as f64)
            .collect();

        let shifted_gmm = Gmm::new(
            k,
            d,
            shifted,
            gmm.variances().to_vec(),
            gmm.weights().to_vec(),
        )?;
        Ok(Self {
            gmm: gmm.clone(),
            options,
            terms: GmmTerms::new(&shifted_gmm),
            center,
            cmeans,
            means: gmm.means().iter().map(|&v| v as f64).collect(),
            sigma: gmm.variances().iter().map(|&v| (v as f64).sqrt()).collect(),
            inv_var: gmm.variances().iter().map(|&v| 1.0 / v as f64).collect(),
            raw_terms: GmmTerms::new(gmm),
            level: SimdLevel::detect(),
            active: gmm.weights().iter().map(|&w| w >= MIN_PRIOR).collect(),
        })
    }

    /// Length of the Fisher vector, `2 K D`.
    pub fn len(&self) -> usize {
        self.gmm.fisher_len()
    }

    /// Always false (a GMM has at least one component and dimension).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The GMM.
    pub fn gmm(&self) -> &Gmm {
        &self.gmm
    }

    /// The options.
    pub fn options(&self) -> &FisherOptions {
        &self.options
    }

    /// Fresh working memory for one thread.
    pub fn scratch(&self) -> FisherScratch {
        let (k, d) = (self.gmm.k(), self.gmm.d());
        FisherScratch {
            block: Scratch::new(k, d),
            xc: vec![0.0; BLOCK * d],
            lrow: vec![0.0; k],
            s0: vec![0.0; k],
            s1: vec![0.0; k * d],
            s2: vec![0.0; k * d],
            phi: vec![0.0; 2 * k * d],
            out: vec![0.0; 2 * k * d],
            norm: 1.0,
            cu: vec![0.0; k * d],
            cv: vec![0.0; k * d],
            r: vec![0.0; k],
            t0: vec![0.0; k],
            t1: vec![0.0; k * d],
            t2: vec![0.0; k * d],
        }
    }

    /// Encodes one image: `x` is `N × D` (N ≥ 1), `out` has [`len`](Self::len) values.
    pub fn encode(&self, x: &[f32], out: &mut [f32], scratch: &mut FisherScratch) -> Result<()> {
        if out.len() != self.len() {
            return Err(Error::dim("Fisher vector output", self.len(), out.len()));
        }
        self.forward(x, scratch)?;
        for (o, &v) in out.iter_mut().zip(&scratch.out) {
            *o = v as f32;
        }
        Ok(())
    }

    /// Encodes images `i = 0..offsets.len()−1`, image `i` being rows
    /// `offsets[i]..offsets[i+1]` of `data` (`rows × D`), into `out` (`images × 2KD`), in
    /// parallel over images on the current rayon pool. Offsets must increase strictly (no
    /// empty image) and stay within the rows of `data`.
    pub fn encode_batch(&self, data: &[f32], offsets: &[usize], out: &mut [f32]) -> Result<()> {
        let images = self.check_batch(data, offsets)?;
        if out.len() != images * self.len() {
            return Err(Error::dim(
                format!(
                    "Fisher vector batch output ({images} images × {})",
                    self.len()
                ),
                images * self.len(),
                out.len(),
            ));
        }
        let d = self.gmm.d();
        out.par_chunks_mut(self.len())
            .enumerate()
            .try_for_each_init(
                || self.scratch(),
                |scratch, (i, row)| {
                    self.encode(&data[offsets[i] * d..offsets[i + 1] * d], row, scratch)
                        .map_err(|e| image_error(i, e))
                },
            )
    }

    /// Validates a batch layout and returns the number of images.
    fn check_batch(&self, data: &[f32], offsets: &[usize]) -> Result<usize> {
        let d = self.gmm.d();
        if !data.len().is_multiple_of(d) {
            return Err(Error::Invalid(format!(
                "descriptor batch has {} values, not a multiple of the dimension {d}",
                data.len()
            )));
        }
        let rows = data.len() / d;
        if offsets.is_empty() {
            return Err(Error::Invalid(
                "image offsets are empty: expected images + 1 values".into(),
            ));
        }
        for (i, w) in offsets.windows(2).enumerate() {
            if w[1] <= w[0] {
                return Err(Error::Invalid(format!(
                    "image offsets must increase strictly: offsets[{i}] = {} and offsets[{}] = {} (image {i} would have no descriptors)",
                    w[0],
                    i + 1,
                    w[1]
                )));
            }
        }
        let last = offsets[offsets.len() - 1];
        if last > rows {
            return Err(Error::Invalid(format!(
                "image offset {last} is past the {rows} descriptor rows"
            )));
        }
        Ok(offsets.len() - 1)
    }

    /// Checks one image's descriptors: a whole number of rows, at least one, all finite.
    fn check_image(&self, x: &[f32]) -> Result<usize> {
        let d = self.gmm.d();
        if !x.len().is_multiple_of(d) {
            return Err(Error::Invalid(format!(
                "descriptors have {} values, not a multiple of the GMM dimension {d}",
                x.len()
            )));
        }
        if x.is_empty() {
            return Err(Error::Empty {
                what: "image (no descriptors)".into(),
            });
        }
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                what: format!("descriptor row {} (dimension {})", i / d, i % d),
                index: i,
            });
        }
        Ok(x.len() / d)
    }

    /// Shifts block `x` (`n` rows) into `scratch.xc` and computes its posteriors and `[x², x]`.
    fn block_posteriors(&self, x: &[f32], scratch: &mut FisherScratch) -> usize {
        let d = self.gmm.d();
        let n = x.len() / d;
        let xc = &mut scratch.xc[..n * d];
        for (row, src) in xc.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
            for ((o, &v), &c) in row.iter_mut().zip(src).zip(&self.center) {
                *o = v - c;
            }
        }
        stats::block_posteriors(&self.terms, &scratch.xc[..n * d], n, &mut scratch.block);
        stats::refine_posteriors(&self.raw_terms, x, n, REFINE, &mut scratch.block);
        n
    }

    /// Zeroes the posteriors VLFeat skips: below the threshold, or of inactive components.
    fn prune(&self, n: usize, scratch: &mut FisherScratch) {
        let k = self.gmm.k();
        let t = self.options.posterior_threshold;
        if t > 0.0 {
            stats::prune_posteriors(&self.terms, n, t, &mut scratch.block);
        }
        if self.active.iter().any(|a| !a) {
            for row in scratch.block.post[..n * k].chunks_exact_mut(k) {
                for (g, &a) in row.iter_mut().zip(&self.active) {
                    if !a {
                        *g = 0.0;
                    }
                }
            }
        }
    }

    /// Forward pass: leaves S0..S2, Φ (`scratch.phi`), the output (`scratch.out`) and ‖p‖.
    fn forward(&self, x: &[f32], scratch: &mut FisherScratch) -> Result<()> {
        let n_total = self.check_image(x)?;
        let (k, d) = (self.gmm.k(), self.gmm.d());
        scratch.s0.fill(0.0);
        scratch.s1.fill(0.0);
        scratch.s2.fill(0.0);
        for block in x.chunks(BLOCK * d) {
            let n = self.block_posteriors(block, scratch);
            self.prune(n, scratch);
            for (row, post) in block
                .chunks_exact(d)
                .zip(scratch.block.post[..n * k].chunks_exact(k))
            {
                for (c, &g) in post.iter().enumerate() {
                    if g == 0.0 {
                        continue;
                    }
                    let g = g as f64;
                    scratch.s0[c] += g;
                    let r = c * d..(c + 1) * d;
                    centred_moments(
                        self.level,
                        g,
                        row,
                        &self.means[r.clone()],
                        &mut scratch.s1[r.clone()],
                        &mut scratch.s2[r],
                    );
                }
            }
        }
        let nf = n_total as f64;
        let kd = k * d;
        for c in 0..k {
            let (u, v) = (c * d..(c + 1) * d, kd + c * d..kd + (c + 1) * d);
            if !self.active[c] {
                scratch.phi[u].fill(0.0);
                scratch.phi[v].fill(0.0);
                continue;
            }
            let pi = self.gmm.weights()[c] as f64;
            let cu = 1.0 / (nf * pi.sqrt());
            let cv = 1.0 / (nf * (2.0 * pi).sqrt());
            let s0 = scratch.s0[c];
            for j in 0..d {
                let i = c * d + j;
                scratch.phi[i] = cu * scratch.s1[i] / self.sigma[i];
                scratch.phi[kd + i] = cv * (scratch.s2[i] * self.inv_var[i] - s0);
            }
        }
        self.postprocess(scratch);
        Ok(())
    }

    /// `scratch.out` = normalised signed power of `scratch.phi`; sets `scratch.norm`.
    fn postprocess(&self, scratch: &mut FisherScratch) {
        let o = &self.options;
        let eps = o.sqrt_epsilon as f64;
        let a = o.power as f64;
        for (p, &f) in scratch.out.iter_mut().zip(&scratch.phi) {
            *p = if o.improved {
                let mag = if a == 0.5 {
                    (f.abs() + eps).sqrt() - eps.sqrt()
                } else {
                    (f.abs() + eps).powf(a) - eps.powf(a)
                };
                mag.copysign(f)
            } else {
                f
            };
        }
        scratch.norm = 1.0;
        if o.l2 {
            let norm = scratch.out.iter().map(|v| v * v).sum::<f64>().sqrt();
            scratch.norm = norm.max(L2_FLOOR);
            let inv = 1.0 / scratch.norm;
            scratch.out.iter_mut().for_each(|v| *v *= inv);
        }
    }
}

/// VLFeat's floor of the L2 norm.
const L2_FLOOR: f64 = 1e-12;

/// Prefixes an error with the index of the image it came from.
fn image_error(i: usize, e: Error) -> Error {
    match e {
        Error::NonFinite { what, index } => Error::NonFinite {
            what: format!("image {i}: {what}"),
            index,
        },
        Error::Empty { what } => Error::Empty {
            what: format!("image {i}: {what}"),
        },
        Error::Invalid(m) => Error::Invalid(format!("image {i}: {m}")),
        other => other,
    }
}

/// `s1 += g (x − m)` and `s2 += g (x − m)²` element-wise in f64 (the centred statistics).
fn centred_moments(level: SimdLevel, g: f64, x: &[f32], m: &[f64], s1: &mut [f64], s2: &mut [f64]) {
    #[cfg(target_arch = "x86_64")]
    if level != SimdLevel::Scalar {
        // SAFETY: every level above Scalar implies AVX2 and FMA (SimdLevel::detect).
        return unsafe { centred_moments_avx2(g, x, m, s1, s2) };
    }
    let _ = level;
    centred_moments_body(g, x, m, s1, s2)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn centred_moments_avx2(g: f64, x: &[f32], m: &[f64], s1: &mut [f64], s2: &mut [f64]) {
    centred_moments_body(g, x, m, s1, s2)
}

#[inline(always)]
fn centred_moments_body(g: f64, x: &[f32], m: &[f64], s1: &mut [f64], s2: &mut [f64]) {
    for (((a1, a2), &x), &m) in s1.iter_mut().zip(s2.iter_mut()).zip(x).zip(m) {
        let t = x as f64 - m;
        let gt = g * t;
        *a1 += gt;
        *a2 += gt * t;
    }
}

/// `Σ_d t_d (cu_d + cv_d t_d)` with `t = x − m`, in f64 (the backward pass's A).
fn centred_quadratic(level: SimdLevel, x: &[f32], m: &[f64], cu: &[f64], cv: &[f64]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if level != SimdLevel::Scalar {
        // SAFETY: every level above Scalar implies AVX2 and FMA (SimdLevel::detect).
        return unsafe { centred_quadratic_avx2(x, m, cu, cv) };
    }
    let _ = level;
    centred_quadratic_body(x, m, cu, cv)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn centred_quadratic_avx2(x: &[f32], m: &[f64], cu: &[f64], cv: &[f64]) -> f64 {
    centred_quadratic_body(x, m, cu, cv)
}

/// Eight independent partial sums, so the loop vectorises without reassociating.
#[inline(always)]
fn centred_quadratic_body(x: &[f32], m: &[f64], cu: &[f64], cv: &[f64]) -> f64 {
    const L: usize = 8;
    let mut acc = [0f64; L];
    let whole = x.len() / L * L;
    for (((xs, ms), us), vs) in x[..whole]
        .chunks_exact(L)
        .zip(m.chunks_exact(L))
        .zip(cu.chunks_exact(L))
        .zip(cv.chunks_exact(L))
    {
        for l in 0..L {
            let t = xs[l] as f64 - ms[l];
            acc[l] += t * (us[l] + vs[l] * t);
        }
    }
    let mut sum: f64 = acc.iter().sum();
    for i in whole..x.len() {
        let t = x[i] as f64 - m[i];
        sum += t * (cu[i] + cv[i] * t);
    }
    sum
}
