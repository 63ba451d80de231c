//! The shared hot kernel of EM and Fisher-vector encoding: GMM log-likelihoods and posteriors
//! for a block of descriptors as one matrix product, and EM's E-step statistics.
//!
//! For a block `X` (n × D) the per-component log-densities are
//! `l = [x², x] · C + b` with `C = [−Λ/2 ; μΛ]ᵀ` (2D × K, Λ = 1/σ²) and
//! `b_k = log π_k − ½ Σ_d log σ²_kd − ½ Σ_d μ²_kd Λ_kd`, so one GEMM of inner size 2D gives all
//! `n × K` log-likelihoods; a row softmax (log-sum-exp) turns them into posteriors γ. EM's
//! statistics Σγ, Σγ(x − r), Σγ(x − r)² ([`EmStats`]) are then formed from the posteriors that
//! matter only — a few per descriptor — at `O(D)` each, instead of a second dense product
//! `γᵀ[x², x]` of the same cost as the first. Blocks are accumulated in `f64`.

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};

use crate::gmm::Gmm;
use crate::kernels::{self, SimdLevel};

/// Rows per block: small enough that a block's scratch stays in L2 cache.
pub const BLOCK: usize = 256;

/// Prefetches block `b + 1` of `x` (rows of `d` values, [`BLOCK`] per block; nothing past the
/// end) in `parts` pieces of whole cache lines, one per [`next_part`](Self::next_part), so that
/// the next block streams in from memory while a block pass computes this one. Spread over the
/// pass's steps: issued at once, a block's ~1,000 line prefetches stall on the full miss queue.
pub(crate) struct BlockPrefetch<'a> {
    /// What is not yet prefetched, and the size of a piece (whole lines).
    rest: &'a [f32],
    size: usize,
}

impl<'a> BlockPrefetch<'a> {
    pub(crate) fn new(x: &'a [f32], b: usize, d: usize, parts: usize) -> Self {
        let next = x.get((b + 1) * BLOCK * d..).unwrap_or(&[]);
        let next = &next[..next.len().min(BLOCK * d)];
        let size = next
            .len()
            .div_ceil(parts.max(1))
            .next_multiple_of(16)
            .max(16);
        Self { rest: next, size }
    }

    /// Prefetches the next piece (nothing once all are issued).
    pub(crate) fn next_part(&mut self) {
        let (part, rest) = self.rest.split_at(self.size.min(self.rest.len()));
        kernels::prefetch(part);
        self.rest = rest;
    }

    /// The pieces not yet issued, as one slice, handed over to a kernel that spreads its
    /// prefetches itself (nothing is left for [`next_part`](Self::next_part)).
    pub(crate) fn rest(&mut self) -> &'a [f32] {
        std::mem::take(&mut self.rest)
    }
}

/// −(1/2) log(2π), per dimension.
const HALF_LOG_2PI: f64 = 0.918_938_533_204_672_8;

/// A component whose `Σ_d μ²/σ²` (in the coordinates the product is formed in) exceeds this is
/// too narrow for the expanded product: its terms `x²/2σ²`, `xμ/σ²`, `μ²/2σ²` near its mean are
/// each about this large, and their f32 sum then carries an error of ~1.2·10⁻⁷ of it
/// (> 10⁻³ nats here; at σ² = 10⁻⁶ and |μ| = 100, hundreds of nats). Its log-densities are
/// formed directly as `Σ_d −(x − μ)²/2σ²` instead, as VLFeat forms them. A component that has
/// collapsed onto repeated descriptors (the flat background of Fashion-MNIST images) is one.
const NARROW_SCALE: f64 = 1e4;

/// A component whose log-densities are formed directly ([`NARROW_SCALE`]).
#[derive(Clone, Debug)]
struct NarrowComponent {
    /// Its index.
    c: usize,
    /// `D`: its mean in the model's coordinates (`x − shift`), or, once
    /// [`GmmTerms::with_means_in_x`] gives it, in those of the rows as given, before any shift
    /// (so that `x − μ` is formed from the values as given, exact when they are close).
    mean: Vec<f32>,
    /// Whether `mean` is in the coordinates of the rows as given.
    unshifted: bool,
    /// `D`: −1/(2σ²).
    neg_half_precision: Vec<f32>,
    /// log π − ½ Σ log σ².
    bias: f32,
    /// Σ μ²/σ² in the model's coordinates.
    scale: f32,
}

impl NarrowComponent {
    /// `log π − ½ Σ log σ² − ½ Σ (x − μ)²/σ²` of one row `x` (shifted by `shift` first when
    /// the unshifted mean is not known).
    #[inline(always)]
    fn log_density(&self, x: &[f32], shift: Option<&[f32]>) -> f32 {
        let p = &self.neg_half_precision;
        let shift = if self.unshifted { None } else { shift };
        let sum = weighted_square_distance(x, &self.mean, shift, p);
        self.bias + sum
    }
}

/// `Σ_j p_j (x_j − s_j − μ_j)²` (no `s` when `shift` is `None`), in 16 independent lanes
/// summed in a fixed order, so that it vectorises and gives the same bits everywhere.
#[inline(always)]
fn weighted_square_distance(x: &[f32], mean: &[f32], shift: Option<&[f32]>, p: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let zero = [0f32; 16];
    let main = x.len() / 16 * 16;
    for start in (0..main).step_by(16) {
        let end = start + 16;
        let s = shift.map_or(&zero[..], |s| &s[start..end]);
        let (x, m, p) = (&x[start..end], &mean[start..end], &p[start..end]);
        for l in 0..16 {
            let delta = (x[l] - s[l]) - m[l];
            acc[l] += p[l] * delta * delta;
        }
    }
    for j in main..x.len() {
        let delta = (x[j] - shift.map_or(0.0, |s| s[j])) - mean[j];
        acc[j - main] += p[j] * delta * delta;
    }
    kernels::pairwise_sum(acc)
}

/// Largest value of a row (NaN ignored), in 16 lanes so that it vectorises.
#[inline(always)]
fn row_max(row: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; 16];
    let mut chunks = row.chunks_exact(16);
    for c in &mut chunks {
        for l in 0..16 {
            m[l] = if c[l] > m[l] { c[l] } else { m[l] };
        }
    }
    for (l, &v) in chunks.remainder().iter().enumerate() {
        m[l] = if v > m[l] { v } else { m[l] };
    }
    m.iter()
        .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a })
}

/// [`GmmTerms::fix_narrow_rows`] and [`GmmTerms::fix_narrow_columns`] compiled for one SIMD
/// level each: the compiler vectorises their 16-lane loops at the width it is allowed.
macro_rules! narrow_at_level {
    ($module:ident, $features:literal) => {
        #[cfg(target_arch = "x86_64")]
        mod $module {
            use super::GmmTerms;

            #[target_feature(enable = $features)]
            pub(super) unsafe fn rows(t: &GmmTerms, x: &[f32], s: Option<&[f32]>, out: &mut [f32]) {
                t.fix_narrow_rows_body(x, s, out)
            }

            #[target_feature(enable = $features)]
            pub(super) unsafe fn columns(
                t: &GmmTerms,
                x: &[f32],
                s: Option<&[f32]>,
                lt: &mut [f32],
                stride: usize,
                max: &mut [f32],
            ) {
                t.fix_narrow_columns_body(x, s, lt, stride, max)
            }
        }
    };
}
narrow_at_level!(narrow_avx512, "avx512f");
narrow_at_level!(narrow_avx2, "avx2");

/// A narrow component's value from the product is left as it is when even its error bound
/// keeps it this far (in nats) below the row's largest log-density: its posterior is below
/// e⁻⁶⁴ of the largest either way, far below what the posteriors and log-likelihoods keep.
const NARROW_SKIP: f32 = 64.0;

/// Per-GMM constants that turn log-likelihoods into one matrix product.
#[derive(Clone, Debug)]
pub struct GmmTerms {
    k: usize,
    d: usize,
    /// `2D × K` row-major: rows `0..D` hold −1/(2σ²), rows `D..2D` hold μ/σ².
    coef: Vec<f32>,
    /// `coef` in the tiles of [`kernels::log_densities_direct_at`].
    coef_tiles: Vec<f32>,
    /// `K` values: log π − ½ Σ log σ² − ½ Σ μ²/σ².
    bias: Vec<f32>,
    /// −(D/2) log 2π, added to the log-sum-exp to give true log-densities.
    log_norm: f64,
    /// SIMD level of the element-wise kernels.
    level: SimdLevel,
    /// Components whose log-densities are formed directly ([`NARROW_SCALE`]); usually none.
    narrow: Vec<NarrowComponent>,
    /// A component that is not narrow, if any (its product value is accurate).
    accurate: Option<usize>,
    /// `(2D + 2)·2⁻²⁴`: the bound on the relative error of the product's sum of `2D` terms and
    /// the bias, relative to the sum of their magnitudes.
    product_error: f32,
}

impl GmmTerms {
    /// Precomputes the matrix-product form of `gmm`'s log-densities.
    pub fn new(gmm: &Gmm) -> Self {
        let (k, d) = (gmm.k(), gmm.d());
        let mut coef = vec![0f32; 2 * d * k];
        let mut bias = vec![0f32; k];
        let mut narrow = Vec::new();
        for c in 0..k {
            let (mean, var) = (gmm.mean(c), gmm.variance(c));
            let mut b = (gmm.weights()[c] as f64).ln();
            // Without the Σ μ²/σ² of the product form, for the direct form.
            let mut b_direct = b;
            let mut scale = 0f64;
            for j in 0..d {
                let inv = 1.0 / var[j] as f64;
                coef[j * k + c] = (-0.5 * inv) as f32;
                coef[(d + j) * k + c] = (mean[j] as f64 * inv) as f32;
                b -= 0.5 * (var[j] as f64).ln() + 0.5 * (mean[j] as f64).powi(2) * inv;
                b_direct -= 0.5 * (var[j] as f64).ln();
                scale += (mean[j] as f64).powi(2) * inv;
            }
            bias[c] = b as f32;
            if scale > NARROW_SCALE {
                narrow.push(NarrowComponent {
                    c,
                    mean: mean.to_vec(),
                    unshifted: false,
                    neg_half_precision: var.iter().map(|&v| (-0.5 / v as f64) as f32).collect(),
                    bias: b_direct as f32,
                    scale: scale as f32,
                });
            }
        }
        Self {
            accurate: (0..k).find(|&c| narrow.iter().all(|n| n.c != c)),
            narrow,
            product_error: (2 * d + 2) as f32 * f32::EPSILON / 2.0,
            k,
            d,
            coef_tiles: kernels::pack_density_tiles(&coef, 2 * d, k),
            coef,
            bias,
            log_norm: -(d as f64) * HALF_LOG_2PI,
            level: SimdLevel::detect(),
        }
    }

    /// The same terms for a model that was shifted by `−shift` from one with these `means`
    /// (`K × D`, in the coordinates of the rows the kernels are given): the components formed
    /// directly take `x − μ` from the values as given, not through the rounded shift.
    pub fn with_means_in_x(mut self, means: &[f32]) -> Self {
        assert_eq!(
            means.len(),
            self.k * self.d,
            "with_means_in_x: means must be K × D"
        );
        for n in &mut self.narrow {
            n.mean = means[n.c * self.d..(n.c + 1) * self.d].to_vec();
            n.unshifted = true;
        }
        self
    }

    /// Number of components whose log-densities are formed directly, not by the product.
    pub fn narrow_components(&self) -> usize {
        self.narrow.len()
    }

    /// Bound on the error of a narrow component's value `t` from the product. Its terms near
    /// x sum in magnitude to `Σ (x² + 2|xμ| + μ²)/2σ² ≤ Σ ((x − μ)² + 4μ²)/σ² = 2|t₀| +
    /// 4·scale` (t₀ the exact value without the bias), to which the bias adds its own size.
    /// The 64-nat margin of [`NARROW_SKIP`] covers the roundings of the inputs that this
    /// first-order bound leaves out.
    #[inline(always)]
    fn narrow_bound(&self, n: &NarrowComponent, t: f32) -> f32 {
        self.product_error * (2.0 * (t - n.bias).abs() + 4.0 * n.scale + n.bias.abs())
    }

    /// Fixes the narrow components of one row (`x`; its log-densities are
    /// `values[c·stride + i]`, and `max`, when known, the largest of them): each one whose
    /// value may matter is formed directly. Whether it may is judged against a lower bound of
    /// the row's true largest value: the largest value when no narrow value reaches it (it is
    /// then an accurate one), else the exact values of the narrow ones that reach it (formed
    /// first: a narrow value from the product may be too high by thousands of nats) and the
    /// other narrow values minus their bounds. Returns whether any was formed.
    #[inline(always)]
    fn fix_narrow_row(
        &self,
        x: &[f32],
        shift: Option<&[f32]>,
        values: &mut [f32],
        stride: usize,
        i: usize,
        max: Option<f32>,
    ) -> bool {
        let at = |c: usize| c * stride + i;
        let skip_below = |n: &NarrowComponent, t: f32, lower: f32| {
            t + self.narrow_bound(n, t) < lower - NARROW_SKIP
        };
        // Most rows are far from every narrow component: one accurate value settles them.
        if let Some(j) = self.accurate {
            let q = values[at(j)];
            if self
                .narrow
                .iter()
                .all(|n| skip_below(n, values[at(n.c)], q))
            {
                return false;
            }
        }
        // Without `max` the values are one contiguous row (stride 1).
        let max = max.unwrap_or_else(|| row_max(&values[i..i + self.k]));
        // A narrow value at the largest (or NaN) may be too high by thousands of nats: such
        // ones are formed first (they would be anyway), and their exact values, with each
        // other narrow value minus its bound, bound the true largest from below. Otherwise
        // the largest is an accurate value and bounds it.
        let reaches = |t: f32| t.partial_cmp(&max) != Some(std::cmp::Ordering::Less);
        let mut lower = max;
        // Bit m: narrow component m was formed here (from the 128th on they share bit 127 and
        // may be formed twice, to the same value).
        let mut formed = 0u128;
        if self.narrow.iter().any(|n| reaches(values[at(n.c)])) {
            lower = f32::NEG_INFINITY;
            for (m, n) in self.narrow.iter().enumerate() {
                let t = values[at(n.c)];
                if reaches(t) {
                    let v = n.log_density(x, shift);
                    values[at(n.c)] = v;
                    lower = lower.max(v);
                    formed |= 1 << m.min(127);
                } else {
                    lower = lower.max(t - self.narrow_bound(n, t));
                }
            }
        }
        for (m, n) in self.narrow.iter().enumerate() {
            let t = values[at(n.c)];
            // Bit 127 also stands for every component past it: from 127 on, check again.
            if (m >= 127 || formed & (1 << m) == 0) && !skip_below(n, t, lower) {
                values[at(n.c)] = n.log_density(x, shift);
                formed |= 1 << m.min(127);
            }
        }
        formed != 0
    }

    /// Overwrites the narrow components' entries of row-major log-densities (`n × K`, rows of
    /// `x`, `n × D`) with their directly formed values where they may matter. The loops are
    /// compiled for each SIMD level (the same operations in the same order: the same bits).
    fn fix_narrow_rows(&self, x: &[f32], shift: Option<&[f32]>, out: &mut [f32]) {
        match self.level.clamp_to_cpu() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU has AVX-512F (clamp_to_cpu).
            SimdLevel::Avx512 => unsafe { narrow_avx512::rows(self, x, shift, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU has AVX2 (clamp_to_cpu).
            SimdLevel::Avx2 => unsafe { narrow_avx2::rows(self, x, shift, out) },
            _ => self.fix_narrow_rows_body(x, shift, out),
        }
    }

    #[inline(always)]
    fn fix_narrow_rows_body(&self, x: &[f32], shift: Option<&[f32]>, out: &mut [f32]) {
        for (row, l) in x.chunks_exact(self.d).zip(out.chunks_exact_mut(self.k)) {
            self.fix_narrow_row(row, shift, l, 1, 0, None);
        }
    }

    /// The same for component-major log-densities (`lt[c·stride + i]`) with each row's
    /// largest value in `max`, which is kept up to date.
    fn fix_narrow_columns(
        &self,
        x: &[f32],
        shift: Option<&[f32]>,
        lt: &mut [f32],
        stride: usize,
        max: &mut [f32],
    ) {
        match self.level.clamp_to_cpu() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU has AVX-512F (clamp_to_cpu).
            SimdLevel::Avx512 => unsafe { narrow_avx512::columns(self, x, shift, lt, stride, max) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU has AVX2 (clamp_to_cpu).
            SimdLevel::Avx2 => unsafe { narrow_avx2::columns(self, x, shift, lt, stride, max) },
            _ => self.fix_narrow_columns_body(x, shift, lt, stride, max),
        }
    }

    #[inline(always)]
    fn fix_narrow_columns_body(
        &self,
        x: &[f32],
        shift: Option<&[f32]>,
        lt: &mut [f32],
        stride: usize,
        max: &mut [f32],
    ) {
        for (i, row) in x.chunks_exact(self.d).enumerate() {
            if self.fix_narrow_row(row, shift, lt, stride, i, Some(max[i])) {
                max[i] = (0..self.k)
                    .map(|c| lt[c * stride + i])
                    .fold(f32::NEG_INFINITY, f32::max);
            }
        }
    }

    /// The same terms with the element-wise kernels run at `level` (clamped to what the CPU
    /// supports); for tests and benchmarks comparing dispatch levels.
    pub fn with_level(mut self, level: SimdLevel) -> Self {
        self.level = level.clamp_to_cpu();
        self
    }

    /// The SIMD level the element-wise kernels run at.
    pub fn level(&self) -> SimdLevel {
        self.level
    }

    /// Number of components.
    pub fn k(&self) -> usize {
        self.k
    }
    /// Descriptor dimension.
    pub fn d(&self) -> usize {
        self.d
    }

    /// `−(D/2) log 2π`: [`block_posteriors`]'s `row_ll` minus this is the row's log-sum-exp
    /// of `log πₖ − ½ Σ log σ²ₖ − ½ Σ (x − μₖ)²/σ²ₖ`.
    pub fn log_norm(&self) -> f64 {
        self.log_norm
    }
}

/// Caller-provided working memory for one block; allocate one per thread and reuse it.
#[derive(Clone, Debug)]
pub struct Scratch {
    /// `BLOCK × 2D` row-major: `[x², x]` for each row of the block.
    pub aug: Vec<f32>,
    /// `BLOCK × K` row-major: log-densities, then posteriors.
    pub post: Vec<f32>,
    /// `BLOCK` per-row log-likelihoods.
    pub row_ll: Vec<f64>,
}

impl Scratch {
    /// Working memory for a `k`-component GMM in `d` dimensions.
    pub fn new(k: usize, d: usize) -> Self {
        Self {
            aug: vec![0.0; BLOCK * 2 * d],
            post: vec![0.0; BLOCK * k],
            row_ll: vec![0.0; BLOCK],
        }
    }
}

/// Computes the posteriors γ (into `scratch.post[..n*K]`) and the per-row log-likelihoods
/// `log p(x)` (into `scratch.row_ll[..n]`) of the `n ≤ BLOCK` rows of `x` (`n × D`), each
/// first shifted by `−shift` when given (`terms` is then a model in those coordinates).
/// Also leaves `[x², x]` (shifted) in `scratch.aug`.
pub fn block_posteriors(
    terms: &GmmTerms,
    x: &[f32],
    shift: Option<&[f32]>,
    n: usize,
    scratch: &mut Scratch,
) {
    block_log_densities(terms, x, shift, n, scratch);
    let post = &mut scratch.post[..terms.k * n];
    for (row, ll) in post.chunks_exact_mut(terms.k).zip(&mut scratch.row_ll[..n]) {
        *ll = kernels::softmax_in_place_at(terms.level, row) + terms.log_norm;
    }
}

/// The per-component log-densities `log πₖ − ½ Σ log σ²ₖ − ½ Σ (x − μₖ)²/σ²ₖ` (without the
/// `−(D/2) log 2π` of [`GmmTerms::log_norm`]) of the `n ≤ BLOCK` rows of `x` (`n × D`), each
/// first shifted by `−shift` (`D` values) when given, into `scratch.post[..n*K]`: one GEMM
/// `[x², x] · C + b`. Leaves `[x², x]` (shifted) in `scratch.aug`, and returns whether every
/// value of `x` was finite (checked while forming it). [`block_posteriors`] is this without a
/// shift, then a row softmax.
pub fn block_log_densities(
    terms: &GmmTerms,
    x: &[f32],
    shift: Option<&[f32]>,
    n: usize,
    scratch: &mut Scratch,
) -> bool {
    let (k, d) = (terms.k, terms.d);
    assert!(n <= BLOCK && x.len() == n * d);
    let aug = &mut scratch.aug[..n * 2 * d];
    let finite = kernels::shift_square_at(terms.level, x, d, shift, aug);
    let post = &mut scratch.post[..n * k];
    for row in post.chunks_exact_mut(k) {
        row.copy_from_slice(&terms.bias);
    }
    matmul(
        MatMut::from_row_major_slice_mut(post, n, k),
        Accum::Add,
        MatRef::from_row_major_slice(aug, n, 2 * d),
        MatRef::from_row_major_slice(&terms.coef, 2 * d, k),
        1.0f32,
        Par::Seq,
    );
    if !terms.narrow.is_empty() {
        terms.fix_narrow_rows(x, shift, post);
    }
    finite
}

/// E-step statistics of EM, taken about reference points `r_k` (the current means) and over
/// the posteriors at or above `τ` times the descriptor's largest one (the others count as
/// zero, as VLFeat's EM skips posteriors below `10⁻²/K`): `s0[k] = Σᵢ γᵢₖ`, and
/// `moments[k·2D..]` = `[Σᵢ γᵢₖ δᵢₖ, Σᵢ γᵢₖ δᵢₖ²]` with `δᵢₖ = xᵢ − r_k`, summed in f32 per
/// block of rows and in f64 across blocks. The log-likelihood is exact to f32 rounding: every
/// posterior enters the log-sum-exp but those below half an f32 unit of it all together
/// ([`kernels::negligible_log_ratio`]).
///
/// Moments about the current means keep the M-step's `σ² = E[δ²] − E[δ]²` free of the
/// cancellation of `E[x²] − E[x]²` when a component is narrow and far from the origin.
#[derive(Clone, Debug, PartialEq)]
pub struct EmStats {
    /// `K`: Σᵢ γᵢₖ over the kept posteriors.
    pub s0: Vec<f64>,
    /// `K × 2D`: per component `[Σ γ δ, Σ γ δ²]` over the kept posteriors.
    pub moments: Vec<f64>,
    /// Σᵢ log p(xᵢ).
    pub loglik: f64,
    /// Σᵢ of the posterior mass left out (`Σₖ γᵢₖ` over the entries below the threshold).
    pub dropped: f64,
    /// Number of kept posteriors.
    pub kept: usize,
    /// Number of descriptors accumulated.
    pub count: usize,
}

impl EmStats {
    /// Zero statistics for `k` components in `d` dimensions.
    pub fn zeros(k: usize, d: usize) -> Self {
        Self {
            s0: vec![0.0; k],
            moments: vec![0.0; 2 * k * d],
            loglik: 0.0,
            dropped: 0.0,
            kept: 0,
            count: 0,
        }
    }

    /// Resets to zero without reallocating.
    pub fn clear(&mut self) {
        self.s0.fill(0.0);
        self.moments.fill(0.0);
        (self.loglik, self.dropped, self.kept, self.count) = (0.0, 0.0, 0, 0);
    }

    /// Adds another accumulator (e.g. another chunk's) into this one.
    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.s0.iter_mut().zip(&other.s0) {
            *a += b;
        }
        for (a, b) in self.moments.iter_mut().zip(&other.moments) {
            *a += b;
        }
        self.loglik += other.loglik;
        self.dropped += other.dropped;
        self.kept += other.kept;
        self.count += other.count;
    }

    /// Accumulates the statistics of the rows of `x` (`n × D`, any `n`) block by block: the
    /// log-densities of `x − shift` under `terms` (a model in those shifted coordinates) as one
    /// matrix product into a component-major block ([`kernels::log_densities_direct_at`] at
    /// AVX-512, a GEMM and a transpose below it), then the exponentials, log-likelihoods and kept
    /// posteriors down its columns, grouped by component
    /// ([`kernels::posteriors_by_component_at`]), then their moments about `refs` (`K × D`,
    /// `r_k` in the coordinates of `x`; [`kernels::moments_grouped_f32_at`]), which costs
    /// `O(D)` per kept posterior instead of a second dense GEMM. Where a block's runs of equal
    /// consecutive rows save an eighth of it or more (dense descriptors of flat image regions),
    /// each run is computed once and weighted by its length. Returns whether every value of
    /// `x` was finite.
    ///
    /// # Panics
    /// If the shapes disagree: `refs` not `K × D`, `shift` not `D`, `self` or `scratch` made
    /// for another `K`/`D` (`EmStats::new(K, D)`, `EmScratch::new(K, D)`). This is the E-step's
    /// kernel; `gmm::em_step` and `gmm::fit_gmm` are the checked entry points.
    pub fn accumulate(
        &mut self,
        terms: &GmmTerms,
        refs: &[f32],
        x: &[f32],
        shift: &[f32],
        threshold: f32,
        scratch: &mut EmScratch,
    ) -> bool {
        let (k, d) = (terms.k, terms.d);
        assert!(refs.len() == k * d && self.s0.len() == k && shift.len() == d);
        let mut finite = true;
        for (b, block) in x.chunks(BLOCK * d).enumerate() {
            // The next block, a quarter before each of four steps (issued at once, the
            // prefetches cost 4-5 % of a K = 64 step at 2 threads).
            let mut ahead = BlockPrefetch::new(x, b, d, 4);
            ahead.next_part();
            // A run of identical consecutive rows (the flat background of an image gives
            // thousands) is one row weighted by its length: the same posteriors, computed once.
            let (rows_x, weights) = match compact_runs(
                block,
                d,
                &mut scratch.run_starts,
                &mut scratch.compact,
                &mut scratch.counts,
            ) {
                Some(m) => (&scratch.compact[..m * d], Some(&scratch.counts[..m])),
                None => (block, None),
            };
            let n = rows_x.len() / d;
            // The log-densities component-major, so that the rows of x are the vector lanes
            // of what follows: at AVX-512 formed that way directly, below it as the row-major
            // product (the GEMM's fastest shape there) made component-major.
            let direct = kernels::log_densities_direct_at(
                terms.level,
                rows_x,
                d,
                Some(shift),
                &terms.coef_tiles,
                &terms.bias,
                &mut scratch.aug,
                &mut scratch.lt,
                BLOCK,
                &mut scratch.max,
                ahead.rest(),
            );
            match direct {
                Some(ok) => finite &= ok,
                None => {
                    ahead.next_part();
                    let aug = &mut scratch.aug[..n * 2 * d];
                    finite &= kernels::shift_square_at(terms.level, rows_x, d, Some(shift), aug);
                    // Rows n..lanes of `post` keep the previous block's values: they only
                    // fill vector lanes whose results are never used.
                    let lanes = n.next_multiple_of(16);
                    let post = &mut scratch.post[..lanes * k];
                    matmul(
                        MatMut::from_row_major_slice_mut(&mut post[..n * k], n, k),
                        Accum::Replace,
                        MatRef::from_row_major_slice(aug, n, 2 * d),
                        MatRef::from_row_major_slice(&terms.coef, 2 * d, k),
                        1.0f32,
                        Par::Seq,
                    );
                    let (lt, max) = (&mut scratch.lt, &mut scratch.max);
                    kernels::transpose_log_densities_at(
                        terms.level,
                        post,
                        lanes,
                        &terms.bias,
                        lt,
                        BLOCK,
                        max,
                    );
                }
            }
            if !terms.narrow.is_empty() {
                terms.fix_narrow_columns(
                    rows_x,
                    Some(shift),
                    &mut scratch.lt,
                    BLOCK,
                    &mut scratch.max,
                );
            }
            ahead.next_part();
            let found = kernels::posteriors_by_component_at(
                terms.level,
                &scratch.lt,
                n,
                BLOCK,
                &scratch.max,
                weights,
                threshold,
                &mut scratch.rowbuf,
                &mut scratch.starts,
                &mut scratch.rows,
                &mut scratch.w,
            );
            ahead.next_part();
            let rows_total = block.len() / d;
            self.loglik += found.loglik + rows_total as f64 * terms.log_norm;
            self.dropped += found.dropped;
            let (starts, np) = (&scratch.starts, found.kept);
            let (rows, w) = (&scratch.rows[..np], &scratch.w[..np]);
            kernels::moments_grouped_f32_at(
                terms.level,
                rows_x,
                d,
                refs,
                starts,
                rows,
                w,
                &mut self.moments,
            );
            for (s, r) in self.s0.iter_mut().zip(starts.windows(2)) {
                *s += w[r[0] as usize..r[1] as usize].iter().sum::<f32>() as f64;
            }
            self.kept += match weights {
                Some(c) => rows.iter().map(|&r| c[r as usize] as usize).sum(),
                None => np,
            };
            self.count += rows_total;
        }
        finite
    }
}

/// Collapses the runs of equal consecutive rows of `block` (`n × d`) when they save at least
/// an eighth of its rows: writes the first row of each run to `compact` and the run's length
/// to `counts` and returns the number of runs; otherwise `None` (and the rows are used as
/// they are, repeats computed again). Rows are equal when all their values compare equal: a
/// run's rows then have the same log-densities (−0 and +0 give the same terms), and a row
/// holding a NaN never joins a run.
fn compact_runs(
    block: &[f32],
    d: usize,
    starts: &mut Vec<u32>,
    compact: &mut [f32],
    counts: &mut [f32],
) -> Option<usize> {
    let n = block.len() / d;
    starts.clear();
    let mut prev: &[f32] = &[];
    for (i, row) in block.chunks_exact(d).enumerate() {
        if !same_row(prev, row) {
            starts.push(i as u32);
        }
        prev = row;
    }
    let m = starts.len();
    if (n - m) * 8 < n {
        return None;
    }
    for (j, &i) in starts.iter().enumerate() {
        let i = i as usize;
        compact[j * d..(j + 1) * d].copy_from_slice(&block[i * d..(i + 1) * d]);
        let end = starts.get(j + 1).map_or(n, |&e| e as usize);
        counts[j] = (end - i) as f32;
    }
    Some(m)
}

/// Whether two rows compare equal value by value (rows of different lengths never do). The
/// first values decide for almost every pair of distinct rows, so they are tested alone first.
#[inline]
fn same_row(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len()
        && a.first() == b.first()
        && a.chunks(16)
            .zip(b.chunks(16))
            .all(|(x, y)| x.iter().zip(y).fold(true, |all, (p, q)| all & (p == q)))
}

/// Working memory of [`EmStats::accumulate`] for one thread: one block's `[δ², δ]` and its
/// log-densities, row- and component-major, per-row scratch, and the kept (row, posterior)
/// pairs grouped by component.
#[derive(Clone, Debug)]
pub struct EmScratch {
    /// The block's rows with runs of equal rows collapsed (`BLOCK × D`), where each run starts
    /// and how long it is (`BLOCK` each).
    compact: Vec<f32>,
    run_starts: Vec<u32>,
    counts: Vec<f32>,
    /// `BLOCK × 2D`: the block's `[δ², δ]` for the GEMM below AVX-512; at AVX-512 only its
    /// first 32 rows' worth, the transposed slab pair of [`kernels::log_densities_direct_at`].
    aug: Vec<f32>,
    /// `BLOCK × K`: the product part of its log-densities.
    post: Vec<f32>,
    /// `K × BLOCK`: the log-densities, component-major.
    lt: Vec<f32>,
    /// `BLOCK`: each row's largest log-density.
    max: Vec<f32>,
    /// `2 × BLOCK` per-row scratch of the column kernel.
    rowbuf: Vec<f32>,
    /// `K + 1` offsets of each component's pairs in `rows`/`w`.
    starts: Vec<u32>,
    /// Kept pairs, grouped by component, rows in order within each (grown on demand).
    rows: Vec<u32>,
    w: Vec<f32>,
}

impl EmScratch {
    /// Working memory for a `k`-component GMM in `d` dimensions.
    pub fn new(k: usize, d: usize) -> Self {
        // Room for 16 pairs per row to start with; typical blocks keep far fewer.
        let m = BLOCK * k.min(16) + 16;
        Self {
            compact: vec![0.0; BLOCK * d],
            run_starts: Vec::with_capacity(BLOCK),
            counts: vec![0.0; BLOCK],
            aug: vec![0.0; BLOCK * 2 * d],
            post: vec![0.0; BLOCK * k],
            lt: vec![0.0; k * BLOCK],
            max: vec![0.0; BLOCK],
            rowbuf: vec![0.0; 2 * BLOCK],
            starts: vec![0; k + 1],
            rows: vec![0; m],
            w: vec![0.0; m],
        }
    }
}

#[cfg(test)]
#[allow(clippy::needless_range_loop)] // index loops mirror the formulas being checked
mod tests {
    use super::*;

    /// Direct per-component evaluation in f64, the definition the GEMM form must match.
    fn log_densities_direct(gmm: &Gmm, x: &[f32]) -> Vec<f64> {
        let (k, d) = (gmm.k(), gmm.d());
        let mut out = Vec::new();
        for row in x.chunks_exact(d) {
            for c in 0..k {
                let mut l = (gmm.weights()[c] as f64).ln() - d as f64 * HALF_LOG_2PI;
                for j in 0..d {
                    let v = gmm.variance(c)[j] as f64;
                    let z = row[j] as f64 - gmm.mean(c)[j] as f64;
                    l -= 0.5 * v.ln() + 0.5 * z * z / v;
                }
                out.push(l);
            }
        }
        out
    }

    #[test]
    fn posteriors_and_loglik_match_direct_evaluation() {
        let gmm = Gmm::new(
            3,
            2,
            vec![0.0, 0.0, 1.0, -0.5, -1.5, 1.0],
            vec![1.0, 0.5, 0.25, 1.5, 2.0, 1.0],
            vec![0.5, 0.3, 0.2],
        )
        .unwrap();
        let x = [0.5f32, -0.25, 1.25, -0.5, -1.0, 1.5, 3.0, -2.0, 0.0, 0.0];
        let n = x.len() / 2;
        let terms = GmmTerms::new(&gmm);
        let mut scratch = Scratch::new(3, 2);
        block_posteriors(&terms, &x, None, n, &mut scratch);
        let direct = log_densities_direct(&gmm, &x);
        for i in 0..n {
            let l = &direct[i * 3..(i + 1) * 3];
            let m = l.iter().cloned().fold(f64::MIN, f64::max);
            let s: f64 = l.iter().map(|v| (v - m).exp()).sum();
            let ll = m + s.ln();
            assert!((scratch.row_ll[i] - ll).abs() < 1e-5 * ll.abs().max(1.0));
            for c in 0..3 {
                let g = (l[c] - ll).exp();
                assert!((scratch.post[i * 3 + c] as f64 - g).abs() < 1e-6, "{i} {c}");
            }
        }
    }

    /// A mixture with well-separated and overlapping components and rows drawn near them, so
    /// posteriors range from exact zeros to ties.
    fn mixture(k: usize, d: usize, n: usize) -> (Gmm, Vec<f32>) {
        let h = |i: usize| ((i as f64 * 0.618_034).fract() - 0.5) as f32;
        let means: Vec<f32> = (0..k * d).map(|i| h(i * 7 + 3)).collect();
        let vars: Vec<f32> = (0..k * d)
            .map(|i| 0.002 + 0.01 * (h(i * 13) + 0.5))
            .collect();
        let weights: Vec<f32> = (0..k).map(|c| 1.0 + (c % 3) as f32).collect();
        let x: Vec<f32> = (0..n * d)
            .map(|i| means[(i / d * 5 % k) * d + i % d] + 0.08 * h(i * 31 + 1))
            .collect();
        (Gmm::new(k, d, means, vars, weights).unwrap(), x)
    }

    #[test]
    fn softmax_levels_give_the_same_posteriors() {
        let (k, d, n) = (19, 8, 70);
        let (gmm, x) = mixture(k, d, n);
        let mut reference = Scratch::new(k, d);
        let scalar = GmmTerms::new(&gmm).with_level(SimdLevel::Scalar);
        block_posteriors(&scalar, &x, None, n, &mut reference);
        for level in SimdLevel::available() {
            let terms = GmmTerms::new(&gmm).with_level(level);
            let mut scratch = Scratch::new(k, d);
            block_posteriors(&terms, &x, None, n, &mut scratch);
            for (a, b) in scratch.post[..n * k].iter().zip(&reference.post[..n * k]) {
                assert!(
                    (a - b).abs() <= 1e-6 * b.max(1e-30),
                    "{level:?}: {a} vs {b}"
                );
            }
            for (a, b) in scratch.row_ll[..n].iter().zip(&reference.row_ll[..n]) {
                assert!((a - b).abs() < 1e-6, "{level:?}: {a} vs {b}");
            }
        }
    }

    /// A component far narrower than its distance from the origin is formed directly, the
    /// same bits at every level, and matches the f64 definition where the product is off by
    /// nats; the others keep the product's values.
    #[test]
    fn narrow_components_are_formed_directly_at_every_level() {
        let (k, d) = (3, 20);
        let mut means = vec![0f32; 2 * d];
        means.extend((0..d).map(|j| 50.0 + j as f32 * 0.25));
        let mut variances = vec![100f32; 2 * d];
        variances.extend(std::iter::repeat_n(1e-6f32, d));
        let gmm = Gmm::new(k, d, means, variances, vec![0.3, 0.3, 0.4]).unwrap();
        // Rows alternately within ~1σ of the narrow mean and spread widely.
        let n = 40;
        let x: Vec<f32> = (0..n * d)
            .map(|i| {
                let (r, j) = (i / d, i % d);
                let wiggle = ((i * 7919) % 13) as f32 / 13.0 - 0.5;
                if r % 2 == 0 {
                    gmm.mean(2)[j] + 1e-3 * wiggle
                } else {
                    20.0 * wiggle + r as f32
                }
            })
            .collect();
        let direct = log_densities_direct(&gmm, &x);
        let plain = GmmTerms::new(&gmm);
        assert_eq!(plain.narrow_components(), 1);
        let mut reference: Option<Vec<f32>> = None;
        for level in SimdLevel::available() {
            let terms = GmmTerms::new(&gmm).with_level(level);
            let mut scratch = Scratch::new(k, d);
            block_log_densities(&terms, &x, None, n, &mut scratch);
            let got = scratch.post[..n * k].to_vec();
            for i in (0..n).step_by(2) {
                let want = direct[i * k + 2] + d as f64 * HALF_LOG_2PI;
                let err = (got[i * k + 2] as f64 - want).abs();
                assert!(
                    err < 1e-3,
                    "{level:?} row {i}: {} vs {want}",
                    got[i * k + 2]
                );
            }
            match &reference {
                None => reference = Some(got),
                Some(r) => assert_eq!(&got, r, "{level:?}"),
            }
        }
    }

    /// Two narrow components side by side, one far too high from the product: the other
    /// must not be judged against that wrong value (a review's case: log p(x) came out −0.94
    /// where it is 5.10).
    #[test]
    #[allow(clippy::excessive_precision)]
    fn narrow_components_are_judged_against_their_true_values() {
        let gmm = Gmm::new(
            3,
            2,
            vec![100.0, 0.0, 100.023_024_544, 0.0, -100.011_512_272, 0.0],
            vec![
                1.735_537_2e-4,
                1.735_537_2e-4,
                6.034_574e-8,
                6.034_574e-8,
                1e4,
                1e4,
            ],
            vec![0.25, 0.25, 0.5],
        )
        .unwrap();
        let x = [100.010_735f32, 0.001_661_426_5];
        let terms = GmmTerms::new(&gmm);
        assert_eq!(terms.narrow_components(), 2);
        let mut scratch = Scratch::new(3, 2);
        block_posteriors(&terms, &x, None, 1, &mut scratch);
        let l = log_densities_direct(&gmm, &x);
        let m = l.iter().cloned().fold(f64::MIN, f64::max);
        let want = m + l.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        assert!(
            (scratch.row_ll[0] - want).abs() < 1e-3,
            "{} vs {want}",
            scratch.row_ll[0]
        );
        for c in 0..3 {
            let g = (l[c] - want).exp();
            assert!(
                (scratch.post[c] as f64 - g).abs() < 1e-4,
                "{c}: {} vs {g}",
                scratch.post[c]
            );
        }
    }

    /// [`EmStats::accumulate`] against a direct f64 evaluation in data coordinates: the shifted
    /// model and data, the moments about reference points other than the means, several
    /// blocks, and thresholds that keep everything, some or few entries.
    #[test]
    fn em_statistics_match_direct_evaluation_over_the_kept_posteriors() {
        // K below, at and above one 16-lane tile, not a multiple of it; n = 700 leaves a
        // partial last block (188 rows, not a multiple of 16).
        for (k, d) in [(7, 5), (16, 6), (37, 5)] {
            em_statistics_case(k, d, 700, false);
        }
        // Runs of equal consecutive rows, collapsed into weighted rows by `accumulate`.
        em_statistics_case(16, 6, 700, true);
    }

    #[test]
    fn compact_runs_merges_equal_consecutive_rows_only_when_it_pays() {
        let d = 3;
        let row = |v: f32| [v, 1.0, 2.0];
        // 8 rows, 3 repeats (≥ 1/8): collapsed. −0 joins a run of +0; NaN rows never join.
        let rows = [
            row(0.0),
            row(-0.0),
            row(0.0),
            row(5.0),
            row(f32::NAN),
            row(f32::NAN),
            row(5.0),
            row(5.0),
        ];
        let x: Vec<f32> = rows.concat();
        let mut starts = Vec::new();
        let (mut c, mut w) = (vec![0f32; 8 * d], vec![0f32; 8]);
        let m = compact_runs(&x, d, &mut starts, &mut c, &mut w).unwrap();
        assert_eq!(m, 5);
        assert_eq!(w[..m], [3.0, 1.0, 1.0, 1.0, 2.0]);
        assert_eq!(c[4 * d], 5.0);
        assert!(c[2 * d].is_nan() && c[3 * d].is_nan() && c[d] == 5.0);
        // 16 distinct rows and one repeat (< 1/8): left as they are.
        let y: Vec<f32> = (0..17).flat_map(|i| row((i.min(15)) as f32)).collect();
        let (mut c, mut w) = (vec![0f32; 17 * d], vec![0f32; 17]);
        assert!(compact_runs(&y, d, &mut starts, &mut c, &mut w).is_none());
    }

    fn em_statistics_case(k: usize, d: usize, n: usize, runs: bool) {
        let (gmm, mut x) = mixture(k, d, n);
        if runs {
            // Every third row repeated 1 to 6 times: a third or more of each block repeats.
            let rows: Vec<&[f32]> = x.chunks_exact(d).collect();
            let mut with_runs = Vec::with_capacity(n * d);
            for (i, row) in rows.iter().enumerate() {
                let times = if i % 3 == 0 { 2 + i % 6 } else { 1 };
                for _ in 0..times {
                    with_runs.extend_from_slice(row);
                }
            }
            with_runs.truncate(n * d);
            x = with_runs;
            let first = &x[..BLOCK * d];
            let mut starts = Vec::new();
            let (mut c, mut w) = (vec![0f32; BLOCK * d], vec![0f32; BLOCK]);
            let m = compact_runs(first, d, &mut starts, &mut c, &mut w).expect("runs collapsed");
            assert!(m < BLOCK * 3 / 4 && w[..m].iter().sum::<f32>() == BLOCK as f32);
        }
        let shift: Vec<f32> = (0..d).map(|j| 0.05 * j as f32 - 0.1).collect();
        let shifted_means: Vec<f32> = gmm
            .means()
            .chunks_exact(d)
            .flat_map(|m| m.iter().zip(&shift).map(|(&m, &s)| m - s))
            .collect();
        let centred = Gmm::new(
            k,
            d,
            shifted_means,
            gmm.variances().to_vec(),
            gmm.weights().to_vec(),
        )
        .unwrap();
        let refs: Vec<f32> = gmm.means().iter().map(|&m| m + 0.01).collect();
        let direct = log_densities_direct(&gmm, &x);
        // Thresholds near 1e-6 and 1e-2 with no entry within 0.1 % of them, so that f32
        // rounding cannot decide which side an entry falls on.
        let rel: Vec<f64> = direct
            .chunks_exact(k)
            .flat_map(|l| {
                let max = l.iter().cloned().fold(f64::MIN, f64::max);
                l.iter().map(move |v| (v - max).exp())
            })
            .collect();
        let clear = |t: f64| {
            (0..100)
                .map(|j| t * 1.013f64.powi(j))
                .find(|&t| rel.iter().all(|&e| (e / t - 1.0).abs() > 1e-3))
                .expect("a threshold clear of the entries") as f32
        };
        for tau in [0.0f32, clear(1e-6), clear(1e-2)] {
            let mut first: Option<EmStats> = None;
            for level in SimdLevel::available() {
                let terms = GmmTerms::new(&centred).with_level(level);
                let mut st = EmStats::zeros(k, d);
                let mut scratch = EmScratch::new(k, d);
                assert!(st.accumulate(&terms, &refs, &x, &shift, tau, &mut scratch));
                let (mut s0, mut m) = (vec![0f64; k], vec![0f64; 2 * k * d]);
                let (mut ll, mut dropped, mut kept) = (0f64, 0f64, 0usize);
                for (i, l) in direct.chunks_exact(k).enumerate() {
                    let max = l.iter().cloned().fold(f64::MIN, f64::max);
                    let z: f64 = l.iter().map(|v| (v - max).exp()).sum();
                    ll += max + z.ln();
                    for c in 0..k {
                        let e = (l[c] - max).exp();

                        if e < tau as f64 {
                            dropped += e / z;
                            continue;
                        }
                        kept += 1;
                        let g = e / z;
                        s0[c] += g;
                        for j in 0..d {
                            let delta = x[i * d + j] as f64 - refs[c * d + j] as f64;
                            m[2 * c * d + j] += g * delta;
                            m[(2 * c + 1) * d + j] += g * delta * delta;
                        }
                    }
                }
                assert_eq!(st.count, n);
                assert_eq!(st.kept, kept, "{level:?} τ {tau}");
                assert!(
                    (st.loglik - ll).abs() < 1e-5 * ll.abs(),
                    "{level:?} τ {tau}"
                );
                assert!(
                    (st.dropped - dropped).abs() < 1e-6 * (1.0 + dropped),
                    "{level:?}"
                );
                for c in 0..k {
                    assert!(
                        (st.s0[c] - s0[c]).abs() < 1e-5 * (1.0 + s0[c]),
                        "{level:?} s0"
                    );
                }
                for (i, (&got, &want)) in st.moments.iter().zip(&m).enumerate() {
                    assert!(
                        (got - want).abs() < 1e-5 * (1.0 + want.abs()),
                        "{level:?} τ {tau} moment {i}: {got} vs {want}"
                    );
                }
                if tau > 0.0 {
                    assert!(
                        kept < n * k && dropped > 0.0,
                        "τ {tau} must leave entries out"
                    );
                } else {
                    assert_eq!(kept, n * k);
                }
                match &first {
                    None => first = Some(st),
                    Some(f) => assert_eq!(f, &st, "{level:?} τ {tau}: the same bits as scalar"),
                }
            }
        }
    }
}
