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
//! are one f32 GEMM ([`crate::stats::block_log_densities`]) on data shifted by the GMM's centre
//! `c = Σ_k π_k μ_k`. That form cancels (`x²/σ² − 2xμ/σ² + μ²/σ²`): on the committed VLFeat
//! fixture K=32, D=64 its error in log γ (for γ ≥ 1e-6) was 3.7e-4 (4.6e-4 unshifted). So the
//! entries that matter, `γ_ik ≥ threshold/2` by the GEMM, are recomputed directly in f64 from
//! the unshifted `(x − μ_k)²/σ²_k` and each row renormalised with the remaining GEMM values.
//! This is done for a whole block at once: the
//! softmax's exponentials and the selection in one kernel, the selected entries grouped by
//! component, their f64 quadratic forms four at a time, one vector `exp`, the renormalisation
//! per row (a row whose GEMM values were too far off goes through [`FisherEncoder`]'s
//! row-by-row `refine_row`). Likewise the expanded statistics `(S2 − 2μ S1 + μ² S0)/σ²` from the GEMM
//! `γᵀ[x², x]`: the first all-GEMM version of this encoder was 4.2e-6 (max abs, improved FV)
//! off the f64 definition on the fixture with tight components far from the centre, against
//! ≤ 1e-8 now. With VLFeat's threshold only a few posteriors per descriptor are kept, so the
//! statistics are accumulated directly about each component's mean, `Σ γ (x − μ_k)` and
//! `Σ γ (x − μ_k)²`, in f64, per component over the block's entries with the sums in
//! registers (AVX-512/AVX2 kernels with bit-identical scalar twins in [`crate::kernels`]); with `posterior_threshold = 0` every posterior is refined and
//! accumulated that way (VLFeat's cost for that part).

mod backward;

pub(crate) use backward::sum_gradients;
pub use backward::{ForwardCache, GmmGradient, StoredPosteriors};

use serde::{Deserialize, Serialize};

use crate::error::{all_finite, Error, Result};
use crate::gmm::Gmm;
use crate::kernels::{self, SimdLevel};
use crate::stats::{self, BlockPrefetch, GmmTerms, Scratch, BLOCK};

/// Components with a weight below this are skipped (VLFeat 0.9.21's rule).
pub const MIN_PRIOR: f32 = 1e-6;

/// Posteriors at or above this fraction of the threshold (from the GEMM) are recomputed
/// exactly: the GEMM's error in log γ (≤ 5e-4 measured on the fixtures) is far from the factor
/// 2 it would take to move a posterior across the threshold unseen.
const REFINE_FRACTION: f32 = 0.5;

/// How the Fisher vector is post-processed.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
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
    /// `K × 2D`: per component `[μ (D), 1/σ² (D)]`, for the direct f64 evaluation.
    ml: Vec<f64>,
    /// `K`: `log π − ½ Σ_d log σ²` in f64.
    dbias: Vec<f64>,
    /// `K × D`: 1/σ and 1/σ².
    inv_sigma: Vec<f64>,
    inv_var: Vec<f64>,
    /// Posteriors at or above this (from the GEMM) are recomputed in f64:
    /// [`REFINE_FRACTION`] of the threshold (0, i.e. every entry, without one).
    refine: f32,
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
    /// One row: the descriptor in f64 (`D`), the refined components (`K`), their f64
    /// posteriors (`K`), their `x − μ_k` (`K × D`) and (backward) their A (`K`).
    xd: Vec<f64>,
    sel: Vec<u32>,
    gam: Vec<f64>,
    delta: Vec<f64>,
    arow: Vec<f64>,
    /// `K`: the weight of each refined entry in the statistics (0 where it is skipped).
    w: Vec<f64>,
    /// `K`, `K × 2D`: f64 sums Σγ and, per component, `[Σγ(x − μ), Σγ(x − μ)²]` over the image.
    s0: Vec<f64>,
    s12: Vec<f64>,
    /// `2KD`: raw Φ of the last image, then (backward) ∂L/∂Φ.
    phi: Vec<f64>,
    /// `2KD`: the post-processed vector of the last image (p, then φ).
    out: Vec<f64>,
    /// ‖p‖ of the last image (1 when not normalised).
    norm: f64,
    /// Backward: `K × 2D` coefficients `[cu, cv]` of `A_ik = r_k + Σ_d δ (cu + cv δ)`,
    /// δ = x − μ, and `K` offsets r.
    cuv: Vec<f64>,
    r: Vec<f64>,
    /// Backward: f64 sums Σ B and, per component, `[Σ B (x − μ), Σ B (x − μ)²]`.
    t0: Vec<f64>,
    t12: Vec<f64>,
    /// Backward: `K` f32 column sums of one block's skipped B.
    col: Vec<f32>,
    /// Forward, per block (`BLOCK × K` at most): the refined entries as pairs (row,
    /// component) in row order, then (in the grouped order below) their quadratic form,
    /// log-density and posterior (`pval`).
    prow: Vec<u32>,
    pcomp: Vec<u32>,
    pval: Vec<f64>,
    /// Forward, per row of the block: the end of its pairs, and from the GEMM its maximum
    /// log-density m, `S = Σ exp(l − m)` and the part of S from unrefined entries.
    rend: Vec<u32>,
    rmax: Vec<f64>,
    rsum: Vec<f64>,
    rrest: Vec<f64>,
    /// Forward, per row of the block: the reciprocal of its new normaliser (0 for a row left
    /// to the row-by-row path).
    rinv: Vec<f64>,
    /// Forward: the refined pairs grouped by component: `gstart` (`K + 1`) ranges into their
    /// rows `grow`, components `gcomp` and weights `gw` (0 where skipped); `gpos` (`K`) the
    /// fill positions.
    gstart: Vec<u32>,
    gpos: Vec<u32>,
    grow: Vec<u32>,
    gcomp: Vec<u32>,
    gw: Vec<f64>,
    /// Rows of the block left to the row-by-row path ([`FisherEncoder::refine_row`]).
    slow: Vec<usize>,
    /// `4K`: the selections of up to four rows before they join the pairs.
    cand: Vec<u32>,
    /// Whether the forward pass appends the image's posteriors to `kept` for the backward pass.
    keeping: bool,
    kept: StoredPosteriors,
    /// Stored posteriors, per block, allocated on first use. Forward: the entries staged as γ
    /// (`cgam`, `BLOCK × K`) and codes (`ccode`). Backward: their γ grouped (`cgam`), the
    /// starts of the `2K` buckets (kept entries by component, then the others; `cstart`) and
    /// fill positions (`cpos`).
    cgam: Vec<f64>,
    ccode: Vec<u32>,
    cstart: Vec<u32>,
    cpos: Vec<u32>,
}

/// The refined entries of one row, as [`FisherEncoder::refine_row`] leaves them in the
/// scratch: `sel[..m]`, `gam[..m]`, `delta[..m·D]`; every other posterior of the row is its
/// GEMM value times `scale`.
struct Refined {
    m: usize,
    scale: f64,
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
        let mut ml = vec![0f64; 2 * k * d];
        let mut dbias = vec![0f64; k];
        for c in 0..k {
            let (m, v) = (gmm.mean(c), gmm.variance(c));
            let row = &mut ml[2 * c * d..2 * (c + 1) * d];
            let mut b = (gmm.weights()[c] as f64).ln();
            for j in 0..d {
                row[j] = m[j] as f64;
                row[d + j] = 1.0 / v[j] as f64;
                b -= 0.5 * (v[j] as f64).ln();
            }
            dbias[c] = b;
        }
        let refine = REFINE_FRACTION * options.posterior_threshold;

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
            terms: GmmTerms::new(&shifted_gmm).with_means_in_x(gmm.means()),
            center,
            ml,
            dbias,
            inv_sigma: gmm
                .variances()
                .iter()
                .map(|&v| 1.0 / (v as f64).sqrt())
                .collect(),
            inv_var: gmm.variances().iter().map(|&v| 1.0 / v as f64).collect(),
            refine,
            level: SimdLevel::detect(),
            active: gmm.weights().iter().map(|&w| w >= MIN_PRIOR).collect(),
        })
    }

    /// The same encoder with its element-wise kernels at `level` (clamped to what the CPU
    /// supports); for tests and benchmarks comparing dispatch levels.
    pub fn with_level(mut self, level: SimdLevel) -> Self {
        self.level = level.clamp_to_cpu();
        self.terms = self.terms.with_level(self.level);
        self
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
            xd: vec![0.0; d],
            sel: vec![0; k],
            gam: vec![0.0; k],
            delta: vec![0.0; k * d],
            arow: vec![0.0; k],
            w: vec![0.0; k],
            s0: vec![0.0; k],
            s12: vec![0.0; 2 * k * d],
            phi: vec![0.0; 2 * k * d],
            out: vec![0.0; 2 * k * d],
            norm: 1.0,
            cuv: vec![0.0; 2 * k * d],
            r: vec![0.0; k],
            t0: vec![0.0; k],
            t12: vec![0.0; 2 * k * d],
            col: vec![0.0; k],
            prow: vec![0; BLOCK * k],
            pcomp: vec![0; BLOCK * k],
            pval: vec![0.0; BLOCK * k],
            rend: vec![0; BLOCK],
            rmax: vec![0.0; BLOCK],
            rsum: vec![0.0; BLOCK],
            rrest: vec![0.0; BLOCK],
            rinv: vec![0.0; BLOCK],
            gstart: vec![0; k + 1],
            gpos: vec![0; k],
            grow: vec![0; BLOCK * k],
            gcomp: vec![0; BLOCK * k],
            gw: vec![0.0; BLOCK * k],
            slow: Vec::with_capacity(BLOCK),
            cand: vec![0; 4 * k],
            keeping: false,
            kept: StoredPosteriors::default(),
            cgam: Vec::new(),
            cstart: Vec::new(),
            cpos: Vec::new(),
            ccode: Vec::new(),
        }
    }

    /// Encodes one image: `x` is `N × D` (N ≥ 1), `out` has [`len`](Self::len) values.
    pub fn encode(&self, x: &[f32], out: &mut [f32], scratch: &mut FisherScratch) -> Result<()> {
        if out.len() != self.len() {
            return Err(Error::dim("Fisher vector output", self.len(), out.len()));
        }
        self.check_scratch(scratch)?;
        self.forward(x, scratch)?;
        for (o, &v) in out.iter_mut().zip(&scratch.out) {
            *o = v as f32;
        }
        Ok(())
    }

    /// `scratch` must be this encoder's ([`scratch`](Self::scratch)): another encoder's is
    /// sized for another K or D.
    pub(crate) fn check_scratch(&self, scratch: &FisherScratch) -> Result<()> {
        let (k, d) = (self.gmm.k(), self.gmm.d());
        if scratch.sel.len() != k || scratch.xd.len() != d {
            return Err(Error::Invalid(format!(
                "Fisher scratch for K = {}, D = {}: this encoder has K = {k}, D = {d} (use its \
                 own scratch())",
                scratch.sel.len(),
                scratch.xd.len()
            )));
        }
        Ok(())
    }

    /// Encodes images `i = 0..offsets.len()−1`, image `i` being rows
    /// `offsets[i]..offsets[i+1]` of `data` (`rows × D`), into `out` (`images × 2KD`), in
    /// parallel over images on the current rayon pool. Offsets must increase strictly (no
    /// empty image) and stay within the rows of `data`.
    pub fn encode_batch(&self, data: &[f32], offsets: &[usize], out: &mut [f32]) -> Result<()> {
        // The cached encoding without stored posteriors; its per-image ‖p‖ and S0 are small.
        self.encode_batch_cached(data, offsets, out).map(drop)
    }

    /// Validates a batch layout and returns the number of images.
    pub(crate) fn check_batch(&self, data: &[f32], offsets: &[usize]) -> Result<usize> {
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
    pub(crate) fn check_image(&self, x: &[f32]) -> Result<usize> {
        let rows = self.check_shape(x)?;
        // The vectorised check first; the scalar search only to name the culprit.
        if !all_finite(x) {
            Self::name_non_finite(x, self.gmm.d())?;
        }
        Ok(rows)
    }

    /// The error naming the first non-finite value of `x` (`N × d`), if there is one.
    fn name_non_finite(x: &[f32], d: usize) -> Result<()> {
        match x.iter().position(|v| !v.is_finite()) {
            Some(i) => Err(Error::NonFinite {
                what: format!("descriptor row {} (dimension {})", i / d, i % d),
                index: i,
            }),
            None => Ok(()),
        }
    }

    /// Checks one image's shape: a whole number of rows, at least one; returns the rows.
    fn check_shape(&self, x: &[f32]) -> Result<usize> {
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
        Ok(x.len() / d)
    }

    /// The GEMM log-densities of block `x` (`n` rows, shifted by the centre) into the
    /// posterior buffer, and `[x², x]` in the shifted frame; returns `n`.
    fn block_log_densities(&self, x: &[f32], scratch: &mut FisherScratch) -> usize {
        self.block_log_densities_checked(x, scratch).0
    }

    /// [`block_log_densities`](Self::block_log_densities), also returning whether `x` is all
    /// finite.
    fn block_log_densities_checked(&self, x: &[f32], scratch: &mut FisherScratch) -> (usize, bool) {
        let n = x.len() / self.gmm.d();
        let finite =
            stats::block_log_densities(&self.terms, x, Some(&self.center), n, &mut scratch.block);
        (n, finite)
    }

    /// Recomputes the posteriors of row `i` of the block (descriptor `x`) that the GEMM puts
    /// at or above `self.refine` directly in f64 from the unshifted `(x − μ_k)²/σ²_k`, and
    /// renormalises: the refined entries get `exp(l_k)/Z`, the others keep their GEMM values
    /// rescaled to the new `Z`, fused with the selection of the kept entries (keeping
    /// `x − μ_k` for the statistics). Every kept entry
    /// (γ ≥ threshold) is refined: should the rescaling lift an unrefined one to the threshold
    /// (it never does unless the GEMM is off by a factor 2), the whole row is refined: then
    /// every component is recomputed and `Z` is their sum alone, so that a row whose GEMM
    /// values are meaningless (descriptor values so large that `x²` swamps the f32 sums) is
    /// still weighed by its exact posteriors instead of a NaN from the GEMM's `Z`.
    fn refine_row(&self, x: &[f32], i: usize, scratch: &mut FisherScratch) -> Refined {
        let k = self.gmm.k();
        let post = &scratch.block.post[i * k..(i + 1) * k];
        let lse = scratch.block.row_ll[i] - self.terms.log_norm();
        let thr = self.options.posterior_threshold as f64;
        for (a, &b) in scratch.xd.iter_mut().zip(x) {
            *a = b as f64;
        }
        let mut t = self.refine;
        loop {
            let m = if t == 0.0 {
                for (c, s) in scratch.sel[..k].iter_mut().enumerate() {
                    *s = c as u32;
                }
                k
            } else {
                kernels::select_at_least_at(self.level, post, t, &mut scratch.sel)
            };
            kernels::centre_quad_sel_at(
                self.level,
                &scratch.xd,
                &self.ml,
                &scratch.sel[..m],
                &mut scratch.gam,
                &mut scratch.delta,
            );
            let mut rest = 1f64;
            let mut max = f64::NEG_INFINITY;
            for (g, &c) in scratch.gam[..m].iter_mut().zip(&scratch.sel[..m]) {
                rest -= post[c as usize] as f64;
                *g = self.dbias[c as usize] - 0.5 * *g;
                max = max.max(*g);
            }
            if m > 0 {
                // The unrefined posteriors are exp(l − lse); rescale them to the new max.
                let tail = if t == 0.0 { 0.0 } else { (lse - max).exp() };
                let gam = &mut scratch.gam[..m];
                gam.iter_mut().for_each(|g| *g -= max);
                kernels::exp_f64_in_place_at(self.level, gam);
                let z = rest.max(0.0) * tail + gam.iter().sum::<f64>();
                let inv = 1.0 / z;
                scratch.gam[..m].iter_mut().for_each(|g| *g *= inv);
                let scale = tail * inv;
                if thr == 0.0 || t == 0.0 || scale * (t as f64) < thr {
                    return Refined { m, scale };
                }
            } else if t == 0.0 {
                return Refined { m, scale: 1.0 };
            }
            t = 0.0;
        }
    }

    /// Whether refined entry `j` (component `c`, f64 posterior `g`) is kept: VLFeat skips
    /// posteriors below the threshold and components below the prior floor.
    #[inline]
    fn kept(&self, c: usize, g: f64) -> bool {
        g >= self.options.posterior_threshold as f64 && g > 0.0 && self.active[c]
    }

    /// The first step of the block-wise refinement (forward and backward): per row of the
    /// GEMM log-densities in `scratch.block.post`, the entries whose posterior is at least the
    /// refinement threshold (one [`kernels::exp_select_at`] per row, which leaves
    /// `exp(l − max)` in the row; its maximum, sum and unrefined sum go to `rmax`, `rsum`,
    /// `rrest`, the end of its entries to `rend`), then those (row, component) pairs grouped
    /// by component, rows in order within each (`grow`, `gcomp`, component starts in
    /// `gstart`), so that one component's terms stay in L1. Returns the number of pairs.
    fn select_pairs(&self, n: usize, scratch: &mut FisherScratch) -> usize {
        let k = self.gmm.k();
        let FisherScratch {
            block,
            prow,
            pcomp,
            rend,
            rmax,
            rsum,
            rrest,
            gstart,
            gpos,
            grow,
            gcomp,
            slow,
            cand,
            ..
        } = scratch;
        slow.clear();
        let mut np = 0;
        gstart.fill(0);
        // Four rows at a time, so that their independent chains overlap; the last n mod 4
        // one by one.
        let mut i = 0;
        while i < n {
            let rows = if i + 4 <= n { 4 } else { 1 };
            let post = &mut block.post[i * k..(i + rows) * k];
            let found = if rows == 4 {
                kernels::exp_select4_at(self.level, post, self.refine, cand)
            } else {
                [kernels::exp_select_at(self.level, post, self.refine, &mut cand[..k]); 4]
            };
            for (j, r) in found[..rows].iter().enumerate() {
                for &c in &cand[j * k..j * k + r.count] {
                    pcomp[np] = c;
                    prow[np] = (i + j) as u32;
                    gstart[c as usize + 1] += 1;
                    np += 1;
                }
                (rmax[i + j], rsum[i + j], rrest[i + j]) = (r.max as f64, r.sum, r.rest);
                rend[i + j] = np as u32;
            }
            i += rows;
        }
        for c in 0..k {
            gstart[c + 1] += gstart[c];
        }
        gpos.copy_from_slice(&gstart[..k]);
        for (&r, &c) in prow[..np].iter().zip(&pcomp[..np]) {
            let q = &mut gpos[c as usize];
            grow[*q as usize] = r;
            gcomp[*q as usize] = c;
            *q += 1;
        }
        np
    }

    /// Turns row `i` of a block that [`renormalise_pairs`](Self::renormalise_pairs) left to the
    /// whole-row path (its buffer holding `exp(l − max)`) into the row's softmax and
    /// log-likelihood, as [`refine_row`](Self::refine_row) reads them.
    fn prepare_slow_row(&self, i: usize, scratch: &mut FisherScratch) {
        let k = self.gmm.k();
        let inv = (1.0 / scratch.rsum[i]) as f32;
        scratch.block.post[i * k..(i + 1) * k]
            .iter_mut()
            .for_each(|e| *e *= inv);
        scratch.block.row_ll[i] = scratch.rmax[i] + scratch.rsum[i].ln() + self.terms.log_norm();
    }

    /// The second step, after the f64 quadratic forms of the `np` grouped pairs were written
    /// to `pval`: `pval` becomes `exp(l − max)` with l in f64 (the refined entries on the
    /// scale of the unrefined ones, one vector `exp`), each row's new normaliser
    /// `rest + Σ refined` is formed in `rrest` and its inverse stored in `rinv`. A row is
    /// left to the whole-row path ([`refine_row`](Self::refine_row); listed in `slow`,
    /// `rinv` 0) when an unrefined entry could reach the posterior threshold (its posterior is
    /// below t·S·inv), when the GEMM was so far off that the rescaling over- or underflowed,
    /// or when nothing was selected.
    fn renormalise_pairs(&self, n: usize, np: usize, scratch: &mut FisherScratch) {
        let thr = self.options.posterior_threshold as f64;
        let t = self.refine;
        let FisherScratch {
            pval,
            rend,
            rmax,
            rsum,
            rrest,
            rinv,
            grow,
            gcomp,
            slow,
            ..
        } = scratch;
        let (grow, gcomp, pval) = (&grow[..np], &gcomp[..np], &mut pval[..np]);
        for ((v, &c), &r) in pval.iter_mut().zip(gcomp).zip(grow) {
            *v = self.dbias[c as usize] - 0.5 * *v - rmax[r as usize];
        }
        kernels::exp_f64_in_place_at(self.level, pval);
        for (&e, &r) in pval.iter().zip(grow) {
            rrest[r as usize] += e;
        }
        for i in 0..n {
            let inv = 1.0 / rrest[i];
            let count = rend[i] - if i > 0 { rend[i - 1] } else { 0 };
            rinv[i] = if count == 0
                || !(inv.is_finite() && inv > 0.0)
                || (thr != 0.0 && t != 0.0 && rsum[i] * inv * t as f64 >= thr)
            {
                slow.push(i);
                0.0
            } else {
                inv
            };
        }
    }

    /// Adds the statistics of the block's rows (descriptors `x`, `n` rows, GEMM log-densities
    /// from [`block_log_densities`](Self::block_log_densities)) to S0..S2, with the same
    /// refinement as [`refine_row`](Self::refine_row), but in passes over all of the block's
    /// refined entries at once: the softmax's exponentials and the selection in one kernel
    /// ([`kernels::exp_select_at`], no division); the entries grouped by component (in row
    /// order within each), so that the f64 quadratic forms ([`kernels::quad_pairs_at`], four
    /// entries at a time) reuse one component's terms from L1 and the moments
    /// ([`kernels::moments_grouped_at`]) keep its sums in registers; one vector `exp` for the
    /// block; renormalisation per row. Rows whose refinement needs the whole row (see
    /// `refine_row`) are left out and listed in `scratch.slow`; the posterior buffer is left
    /// holding `exp(l − max)` per row (`rmax`, `rsum` give its maximum and sum). Returns the
    /// number of refined pairs.
    fn block_statistics(&self, x: &[f32], n: usize, scratch: &mut FisherScratch) -> usize {
        let (k, d) = (self.gmm.k(), self.gmm.d());
        let thr = self.options.posterior_threshold as f64;
        let np = self.select_pairs(n, scratch);
        kernels::quad_pairs_at(
            self.level,
            x,
            d,
            &scratch.grow[..np],
            &scratch.gcomp[..np],
            &self.ml,
            &mut scratch.pval[..np],
        );
        self.renormalise_pairs(n, np, scratch);
        let FisherScratch {
            pval,
            rinv,
            gstart,
            grow,
            gw,
            s0,
            s12,
            ..
        } = scratch;
        let (grow, pval, gw) = (&grow[..np], &pval[..np], &mut gw[..np]);
        // Posteriors and weights (0 where skipped, or in a row left to the slow path).
        for c in 0..k {
            let range = gstart[c] as usize..gstart[c + 1] as usize;
            let active = self.active[c];
            let mut sum = s0[c];
            for ((v, w), &r) in pval[range.clone()]
                .iter()
                .zip(&mut gw[range.clone()])
                .zip(&grow[range])
            {
                let g = v * rinv[r as usize];
                *w = if active && g >= thr && g > 0.0 {
                    g
                } else {
                    0.0
                };
                sum += *w;
            }
            s0[c] = sum;
        }
        kernels::moments_grouped_at(self.level, x, d, &self.ml, gstart, grow, gw, s12);
        np
    }

    /// Adds the statistics of row `i` of the block (descriptor `x`) to S0..S2 on its own,
    /// through [`refine_row`](Self::refine_row), whose result it returns.
    fn row_statistics(&self, x: &[f32], i: usize, scratch: &mut FisherScratch) -> Refined {
        let d = self.gmm.d();
        let refined = self.refine_row(x, i, scratch);
        let m = refined.m;
        for j in 0..m {
            let (c, g) = (scratch.sel[j] as usize, scratch.gam[j]);
            scratch.w[j] = if self.kept(c, g) {
                scratch.s0[c] += g;
                g
            } else {
                0.0
            };
        }
        kernels::moments_sel_at(
            self.level,
            d,
            &scratch.sel[..m],
            &scratch.w,
            &scratch.delta,
            &mut scratch.s12,
        );
        refined
    }

    /// Forward pass: leaves S0..S2, Φ (`scratch.phi`), the output (`scratch.out`) and ‖p‖.
    fn forward(&self, x: &[f32], scratch: &mut FisherScratch) -> Result<()> {
        // Finiteness is checked block by block while the GEMM's input is formed.
        let n_total = self.check_shape(x)?;
        let (k, d) = (self.gmm.k(), self.gmm.d());
        scratch.s0.fill(0.0);
        scratch.s12.fill(0.0);
        for (b, block) in x.chunks(BLOCK * d).enumerate() {
            // The image's next block, half before each of the two main steps.
            let mut ahead = BlockPrefetch::new(x, b, d, 2);
            ahead.next_part();
            let (n, finite) = self.block_log_densities_checked(block, scratch);
            if !finite {
                Self::name_non_finite(x, d)?;
            }
            ahead.next_part();
            let np = self.block_statistics(block, n, scratch);
            if scratch.keeping {
                self.keep_block_posteriors(n, np, scratch);
            }
            for j in 0..scratch.slow.len() {
                let i = scratch.slow[j];
                self.prepare_slow_row(i, scratch);
                let refined = self.row_statistics(&block[i * d..(i + 1) * d], i, scratch);
                if scratch.keeping {
                    self.keep_row_posteriors(i, refined, scratch);
                }
            }
            if scratch.keeping {
                scratch.kept.end_block();
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
            let (s1, s2) = scratch.s12[2 * c * d..2 * (c + 1) * d].split_at(d);
            let (pu, pv) = scratch.phi.split_at_mut(kd);
            let r = c * d..(c + 1) * d;
            for ((((o, &s), &is), &iv), (ov, &q)) in pu[r.clone()]
                .iter_mut()
                .zip(s1)
                .zip(&self.inv_sigma[r.clone()])
                .zip(&self.inv_var[r.clone()])
                .zip(pv[r].iter_mut().zip(s2))
            {
                *o = cu * s * is;
                *ov = cv * (q * iv - s0);
            }
        }
        self.postprocess(scratch);
        // Unnormalised, descriptors or means near the float32 limit give statistics beyond it:
        // refuse them rather than return infinities.
        let fits = |v: &f64| v.abs() <= f32::MAX as f64;
        if let Some(index) = scratch.out.iter().position(|v| !fits(v)) {
            return Err(Error::NonFinite {
                what: "unnormalised Fisher vector (its statistics exceed the float32 range: the \
                       descriptors or the GMM's means are too large for their variances)"
                    .into(),
                index,
            });
        }
        Ok(())
    }

    /// `scratch.out` = normalised signed power of `scratch.phi`; sets `scratch.norm`.
    fn postprocess(&self, scratch: &mut FisherScratch) {
        let o = &self.options;
        let (out, phi) = (&mut scratch.out[..], &scratch.phi[..]);
        let (a, eps) = (o.power as f64, o.sqrt_epsilon as f64);
        let norm = match self.level {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the level was detected on this CPU (AVX-512F and FMA).
            SimdLevel::Avx512 => unsafe { postprocess_avx512(o, a, eps, phi, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the level was detected on this CPU (AVX2 and FMA).
            SimdLevel::Avx2 => unsafe { postprocess_avx2(o, a, eps, phi, out) },
            _ => postprocess_body(o, a, eps, phi, out),
        };
        scratch.norm = norm;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn postprocess_avx512(
    o: &FisherOptions,
    a: f64,
    e: f64,
    phi: &[f64],
    out: &mut [f64],
) -> f64 {
    postprocess_body(o, a, e, phi, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn postprocess_avx2(o: &FisherOptions, a: f64, e: f64, phi: &[f64], out: &mut [f64]) -> f64 {
    postprocess_body(o, a, e, phi, out)
}

/// The signed power and L2 normalisation of Φ into `out`; returns the divisor (1 without
/// `l2`). One loop per case and eight partial sums for the norm, so that it vectorises; only
/// exactly rounded operations, so every vector width gives the same result.
#[inline(always)]
fn postprocess_body(o: &FisherOptions, a: f64, eps: f64, phi: &[f64], out: &mut [f64]) -> f64 {
    if !o.improved {
        out.copy_from_slice(phi);
    } else if a == 0.5 {
        let se = eps.sqrt();
        for (p, &f) in out.iter_mut().zip(phi) {
            *p = ((f.abs() + eps).sqrt() - se).copysign(f);
        }
    } else {
        let ea = eps.powf(a);
        for (p, &f) in out.iter_mut().zip(phi) {
            *p = ((f.abs() + eps).powf(a) - ea).copysign(f);
        }
    }
    if !o.l2 {
        return 1.0;
    }
    let mut acc = [0f64; 8];
    let mut chunks = out.chunks_exact(8);
    for ch in &mut chunks {
        for (s, v) in acc.iter_mut().zip(ch) {
            *s += v * v;
        }
    }
    for (s, v) in acc.iter_mut().zip(chunks.remainder()) {
        *s += v * v;
    }
    let norm = acc.iter().sum::<f64>().sqrt().max(L2_FLOOR);
    let inv = 1.0 / norm;
    out.iter_mut().for_each(|v| *v *= inv);
    norm
}

/// Images per parallel job of a batch: about four jobs per thread, enough to balance the
/// threads, few enough that the per-job overhead is negligible.
pub(crate) fn images_per_job(images: usize) -> usize {
    images.div_ceil(4 * rayon::current_num_threads()).max(1)
}

/// VLFeat's floor of the L2 norm.
const L2_FLOOR: f64 = 1e-12;

/// Prefixes an error with the index of the image it came from.
pub(crate) fn image_error(i: usize, e: Error) -> Error {
    match e {
        Error::NonFinite { what, index } => Error::NonFinite {
            what: format!("image {i}: {what}"),
            index,
        },
        Error::Empty { what } => Error::Empty {
            what: format!("image {i}: {what}"),
        },
        Error::Invalid(m) => Error::Invalid(format!("image {i}: {m}")),
        Error::DimMismatch {
            what,
            expected,
            got,
        } => Error::DimMismatch {
            what: format!("image {i}: {what}"),
            expected,
            got,
        },
        other => other,
    }
}
