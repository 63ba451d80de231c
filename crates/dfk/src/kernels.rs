//! Small SIMD kernels used by the hot loops: a polynomial `exp`, row softmax, `y += a·x`, and an
//! FMA throughput probe.
//!
//! Every kernel has a plain scalar twin that defines it; the vectorised versions are selected at
//! run time ([`SimdLevel::detect`]: AVX-512F, else AVX2+FMA, else scalar) and compute the same
//! arithmetic (same polynomial, same fused multiply-adds), so they agree with the twin to a few
//! ulps. Tests run every level the machine supports against the scalar twin. Nothing here needs
//! the crate to be built with `-C target-cpu`.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Instruction-set level a kernel runs at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SimdLevel {
    /// Portable scalar code (the reference definition).
    Scalar,
    /// 256-bit AVX2 with FMA.
    Avx2,
    /// 512-bit AVX-512F.
    Avx512,
}

impl SimdLevel {
    /// The best level this CPU supports (detected once, then cached).
    pub fn detect() -> Self {
        static BEST: std::sync::OnceLock<SimdLevel> = std::sync::OnceLock::new();
        *BEST.get_or_init(Self::probe_cpu)
    }

    fn probe_cpu() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            // POPCNT (on every AVX-512 CPU) counts the lanes a compressing store keeps.
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("popcnt")
            {
                return SimdLevel::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return SimdLevel::Avx2;
            }
        }
        SimdLevel::Scalar
    }

    /// Every level this CPU supports, scalar first.
    pub fn available() -> Vec<Self> {
        let best = Self::detect();
        [SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512]
            .into_iter()
            .filter(|l| l.lanes() <= best.lanes())
            .collect()
    }

    /// `f32` lanes per vector register at this level.
    pub fn lanes(self) -> usize {
        match self {
            SimdLevel::Scalar => 1,
            SimdLevel::Avx2 => 8,
            SimdLevel::Avx512 => 16,
        }
    }

    /// Short name for reports (`scalar`, `avx2`, `avx512`).
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Scalar => "scalar",
            SimdLevel::Avx2 => "avx2+fma",
            SimdLevel::Avx512 => "avx512",
        }
    }

    /// `self` if the CPU supports it, else the best supported level below it. Makes an
    /// explicitly requested level safe to run.
    pub fn clamp_to_cpu(self) -> Self {
        let best = Self::detect();
        if self.lanes() <= best.lanes() {
            self
        } else {
            best
        }
    }
}

/// Below this, `e^x` is smaller than the smallest normal `f32` and [`exp_scalar`] returns 0
/// (no denormals: they are slow and meaningless as posteriors).
pub const EXP_UNDERFLOW: f32 = -87.336_55;
/// Above this, `e^x` overflows `f32` and [`exp_scalar`] returns +∞.
pub const EXP_OVERFLOW: f32 = 88.722_84;

const LOG2E: f32 = std::f32::consts::LOG2_E;
// ln 2 split in two (Cephes): C1 is exact in a few bits so `x − n·C1` is exact.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
// Cephes expf minimax polynomial for e^r − 1 − r on |r| ≤ ln2/2.
const P0: f32 = 1.987_569_1e-4;
const P1: f32 = 1.398_2e-3;
const P2: f32 = 8.333_452e-3;
const P3: f32 = 4.166_579_6e-2;
const P4: f32 = 1.666_666_5e-1;
const P5: f32 = 0.5; // Cephes writes 5.0000001201e-1, which is 0.5 in f32.

/// `e^x` in `f32` (Cephes-style: `x = n ln2 + r`, a degree-7 polynomial on `r`, then `2^n`),
/// relative error about 1e-7 over the normal range. Returns exactly 0 for
/// `x < EXP_UNDERFLOW` (including −∞), +∞ above [`EXP_OVERFLOW`], NaN for NaN.
/// This is the reference the SIMD versions reproduce operation by operation.
#[inline]
pub fn exp_scalar(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    if x < EXP_UNDERFLOW {
        return 0.0;
    }
    if x > EXP_OVERFLOW {
        return f32::INFINITY;
    }
    let n = (x * LOG2E).round_ties_even();
    let r = (-n).mul_add(LN2_HI, x);
    let r = (-n).mul_add(LN2_LO, r);
    let mut p = P0.mul_add(r, P1);
    p = p.mul_add(r, P2);
    p = p.mul_add(r, P3);
    p = p.mul_add(r, P4);
    p = p.mul_add(r, P5);
    let y = p.mul_add(r * r, r) + 1.0;
    // 2^n as two normal factors so that n ∈ [−126, 128] never leaves the exponent range.
    let n = n as i32;
    let n1 = n >> 1;
    let n2 = n - n1;
    y * f32::from_bits(((n1 + 127) as u32) << 23) * f32::from_bits(((n2 + 127) as u32) << 23)
}

/// Replaces `row` by `softmax(row)` and returns `log Σ exp(row)` (log-sum-exp with max
/// subtraction, so very negative log-densities underflow to exact zeros instead of NaN).
/// Runs at the best level the CPU supports.
pub fn softmax_in_place(row: &mut [f32]) -> f64 {
    softmax_in_place_at(SimdLevel::detect(), row)
}

/// [`softmax_in_place`] at a given level (clamped to what the CPU supports).
pub fn softmax_in_place_at(level: SimdLevel, row: &mut [f32]) -> f64 {
    match level.clamp_to_cpu() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: clamp_to_cpu guarantees the CPU has AVX-512F and FMA.
        SimdLevel::Avx512 => unsafe { x86::softmax_avx512(row) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: clamp_to_cpu guarantees the CPU has AVX2 and FMA.
        SimdLevel::Avx2 => unsafe { x86::softmax_avx2(row) },
        _ => softmax_scalar(row),
    }
}

/// Scalar twin of [`softmax_in_place`]: max, then `exp_scalar(v − max)` summed in `f64`, then
/// scaling by the reciprocal sum.
pub fn softmax_scalar(row: &mut [f32]) -> f64 {
    let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f64;
    for v in row.iter_mut() {
        *v = exp_scalar(*v - max);
        sum += *v as f64;
    }
    let inv = (1.0 / sum) as f32;
    for v in row.iter_mut() {
        *v *= inv;
    }
    max as f64 + sum.ln()
}

/// What [`exp_select_at`] found in a row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ExpSelect {
    /// The row's maximum `m` (of the input).
    pub max: f32,
    /// `S = Σ eᵢ` with `eᵢ = exp(rowᵢ − m)`.
    pub sum: f64,
    /// `Σ eᵢ` over the entries not selected.
    pub rest: f64,
    /// How many entries were selected (`out[..count]`).
    pub count: usize,
}

/// A row softmax without the final division, with a selection: replaces `row` by
/// `eᵢ = exp(rowᵢ − max)` ([`exp_scalar`]), writes to `out[..count]` the indices with
/// `eᵢ ≥ frac·S` (i.e. softmax ≥ `frac`), in increasing order, and returns the maximum, `S`
/// and the sum of the unselected `eᵢ`. `out` must hold at least `row.len()` values (those past
/// `count` are overwritten with scratch values). It is [`exp_candidates_at`] (the entries with
/// `eᵢ ≥ frac`, a superset as `S ≥ 1`, taken in the pass of the exponentials) followed by the
/// cut `frac·S` on those few. The vector levels sum in f32 lanes (as [`softmax_in_place_at`]),
/// so `S` and the rest agree with the scalar twin to rounding, not bit for bit.
#[inline]
pub fn exp_select_at(level: SimdLevel, row: &mut [f32], frac: f32, out: &mut [u32]) -> ExpSelect {
    let r = exp_candidates_at(level, row, frac, out);
    cut_candidates(row, frac, r, out)
}

/// Scalar twin of [`exp_select_at`].
pub fn exp_select_scalar(row: &mut [f32], frac: f32, out: &mut [u32]) -> ExpSelect {
    let r = exp_candidates_scalar(row, frac, out);
    cut_candidates(row, frac, r, out)
}

/// [`exp_select_at`] on four consecutive rows of one length `k` (`rows` holds `4k` values):
/// row `r`'s indices go to `out[r·k..]` (`out` must hold at least `4k` values) and its
/// [`ExpSelect`] to the `r`-th result. Per row the same bits as [`exp_select_at`]: the AVX-512
/// level runs the same operations on the four rows interleaved, so that their dependency
/// chains (maximum, exponentials, sums) overlap instead of running one after the other; the
/// other levels call it row by row.
#[inline]
pub fn exp_select4_at(
    level: SimdLevel,
    rows: &mut [f32],
    frac: f32,
    out: &mut [u32],
) -> [ExpSelect; 4] {
    assert!(
        rows.len().is_multiple_of(4) && out.len() >= rows.len(),
        "exp_select4: four rows of one length, and an output as long"
    );
    let k = rows.len() / 4;
    match level.clamp_to_cpu() {
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => {
            // SAFETY: the CPU has AVX-512F and FMA (clamp_to_cpu).
            let candidates = unsafe { x86::exp_candidates4_avx512(rows, k, frac, out) };
            std::array::from_fn(|r| {
                let (row, out) = (&rows[r * k..(r + 1) * k], &mut out[r * k..(r + 1) * k]);
                cut_candidates(row, frac, candidates[r], out)
            })
        }
        _ => std::array::from_fn(|r| {
            let (row, out) = (&mut rows[r * k..(r + 1) * k], &mut out[r * k..(r + 1) * k]);
            exp_select_at(level, row, frac, out)
        }),
    }
}

/// Keeps the candidates `out[..r.count]` of [`exp_candidates_at`] with `eᵢ ≥ frac·S` (in
/// order), adding the others to the rest.
#[inline(always)]
fn cut_candidates(row: &[f32], frac: f32, r: ExpSelect, out: &mut [u32]) -> ExpSelect {
    let cut = (frac as f64 * r.sum) as f32;
    let (mut n, mut rest) = (0, r.rest);
    for j in 0..r.count {
        let i = out[j];
        let e = row[i as usize];
        out[n] = i;
        let keep = e >= cut;
        n += keep as usize;
        rest += if keep { 0.0 } else { e as f64 };
    }
    ExpSelect {
        count: n,
        rest,
        ..r
    }
}

/// A row softmax without the final division, with the candidates of a selection: replaces
/// `row` by `eᵢ = exp(rowᵢ − max)` ([`exp_scalar`]), writes to `out[..count]` the indices with
/// `eᵢ ≥ frac` in increasing order, and returns the maximum, `S = Σ eᵢ` and the sum of the
/// other `eᵢ` (as [`ExpSelect`]). As `S ≥ 1`, every entry with softmax `eᵢ/S ≥ frac` is a
/// candidate; the caller tests the few candidates against `frac·S` ([`exp_select_at`] does).
/// The candidates are taken in the same pass as the exponentials. `out` must hold at least `row.len()` values (those past
/// `count` are overwritten with scratch values). The vector levels sum in f32 lanes, so `S`
/// and the rest agree with the scalar twin to rounding; `row` and the candidates are the same
/// at every level.
#[inline]
pub fn exp_candidates_at(
    level: SimdLevel,
    row: &mut [f32],
    frac: f32,
    out: &mut [u32],
) -> ExpSelect {
    assert!(
        out.len() >= row.len(),
        "exp_candidates: output shorter than the row"
    );
    match level.clamp_to_cpu() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512F and FMA (clamp_to_cpu); `out` is long enough.
        SimdLevel::Avx512 => unsafe { x86::exp_candidates_avx512(row, frac, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2 and FMA (clamp_to_cpu); `out` is long enough.
        SimdLevel::Avx2 => unsafe { x86::exp_candidates_avx2(row, frac, out) },
        _ => exp_candidates_scalar(row, frac, out),
    }
}

/// Scalar twin of [`exp_candidates_at`].
pub fn exp_candidates_scalar(row: &mut [f32], frac: f32, out: &mut [u32]) -> ExpSelect {
    let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f64;
    for v in row.iter_mut() {
        *v = exp_scalar(*v - max);
        sum += *v as f64;
    }
    select_rest(row, 0, frac, max, sum, 0, 0.0, out)
}

/// The candidates of [`exp_candidates_at`] on `row[from..]` (`eᵢ ≥ cut`), continuing a count
/// `n` and rest `rest` of `row[..from]`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn select_rest(
    row: &[f32],
    from: usize,
    cut: f32,
    max: f32,
    sum: f64,
    mut n: usize,
    mut rest: f64,
    out: &mut [u32],
) -> ExpSelect {
    for (i, &e) in row.iter().enumerate().skip(from) {
        out[n] = i as u32;
        let keep = e >= cut;
        n += keep as usize;
        rest += if keep { 0.0 } else { e as f64 };
    }
    ExpSelect {
        max,
        sum,
        rest,
        count: n,
    }
}

/// What [`posteriors_by_component_at`] found in a block.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockPosteriors {
    /// `Σᵢ (mᵢ + ln Sᵢ)`: the rows' log-sum-exp of the log-densities.
    pub loglik: f64,
    /// `Σᵢ restᵢ / Sᵢ`: the posterior mass left out, summed over the rows.
    pub dropped: f64,
    /// Number of (component, row) pairs kept.
    pub kept: usize,
}

/// Makes a block of log-densities component-major for [`posteriors_by_component_at`]:
/// `lt[c·stride + i] = post[i·K + c] + bias[c]` for the `rows` rows of the row-major `post`
/// (`K = bias.len()`; `rows` a multiple of 16, ≤ `stride`) and
/// `max[i] = max_c lt[c·stride + i]`, the maximum taken as `vmaxps` does (`a > b ? a : b`, so
/// that a NaN entry gives the same bits at every level). EM runs it after the row-major
/// product, the faster shape of that product; the AVX-512 level transposes 16 × 16 tiles in
/// registers, the others element by element. One f32 addition per element, so every level
/// gives the same bits.
pub fn transpose_log_densities_at(
    level: SimdLevel,
    post: &[f32],
    rows: usize,
    bias: &[f32],
    lt: &mut [f32],
    stride: usize,
    max: &mut [f32],
) {
    let k = bias.len();
    assert!(
        rows.is_multiple_of(16) && rows <= stride && post.len() >= rows * k,
        "transpose_log_densities: rows must be a multiple of 16 within the stride and the block"
    );
    assert!(lt.len() >= k * stride && max.len() >= rows);
    match level.clamp_to_cpu() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512F (clamp_to_cpu); lengths checked above.
        SimdLevel::Avx512 => unsafe {
            x86::transpose_log_densities_avx512(post, rows, bias, lt, stride, max)
        },
        _ => transpose_log_densities_scalar(post, rows, bias, lt, stride, max),
    }
}

/// Components per register tile of [`log_densities_direct_at`]: two 16-row slabs × 14
/// components are 28 of the 32 vector registers.
pub const DENSITY_TILE: usize = 14;

/// Slabs of 16 rows per register tile of [`log_densities_direct_at`].
const DENSITY_SLABS: usize = 2;

/// The component ranges of the register tiles of [`log_densities_direct_at`] for `k`
/// components: `⌈k / DENSITY_TILE⌉` tiles whose widths differ by at most one (K = 64: four of
/// 13 and one of 12 rather than four of 14 and one of 8). A narrow last tile streams the slabs
/// once more for few components (K = 256: 4); balanced, one EM iteration at K = 256 took ~2 %
/// less time on an AMD EPYC (Zen 5), with identical results (each sum keeps its order).
pub fn density_tiles(k: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let tiles = k.div_ceil(DENSITY_TILE);
    let (base, wider) = (k / tiles.max(1), k % tiles.max(1));
    (0..tiles).map(move |t| {
        let c0 = t * base + t.min(wider);
        c0..c0 + base + usize::from(t < wider)
    })
}

/// `coef` (`two_d × K` row-major) regrouped for [`log_densities_direct_at`]: the tiles of
/// [`density_tiles`], each `two_d × width` row-major, one after another, so that a tile's
/// coefficients are one contiguous stream.
pub fn pack_density_tiles(coef: &[f32], two_d: usize, k: usize) -> Vec<f32> {
    assert_eq!(
        coef.len(),
        two_d * k,
        "pack_density_tiles: coef must be two_d × K"
    );
    let mut tiles = Vec::with_capacity(coef.len());
    for range in density_tiles(k) {
        for row in coef.chunks_exact(k) {
            tiles.extend_from_slice(&row[range.clone()]);
        }
    }
    tiles
}

/// Pairwise sum of `L` (a power of two) accumulator lanes, in a fixed order: halves added
/// lane by lane until one is left, so that it vectorises and gives the same bits everywhere.
#[inline(always)]
pub(crate) fn pairwise_sum<T: Copy + std::ops::AddAssign, const L: usize>(mut acc: [T; L]) -> T {
    let mut width = L / 2;
    while width > 0 {
        for k in 0..width {
            let v = acc[k + width];
            acc[k] += v;
        }
        width /= 2;
    }
    acc[0]
}

/// EM's block of log-densities straight into the component-major layout of
/// [`posteriors_by_component_at`], without a row-major product to transpose: for the `n` rows
/// of `x` (`n × d`, `n ≤ stride`) with `δ = x − shift`,
/// `lt[c·stride + i] = Σ_j [δᵢ², δᵢ]_j · coef[j][c] + bias[c]` (one fused multiply-add per
/// term, in order of `j`, from zero: the sums a row-major GEMM microkernel forms) and
/// `max[i] = max_c lt[c·stride + i]` as [`transpose_log_densities_at`] takes it. The rows'
/// `[δ², δ]` are transposed, 32 rows at a time, into `slabs` (≥ 32·2d values, reused; rows
/// past `n` are zero, so lanes `n..` up to the next multiple of 16 hold `bias`). `tiles` is
/// [`pack_density_tiles`] of the `2d × K` coefficients. `ahead` (the next block's rows, or
/// empty) is prefetched in pieces spread over the products, so that it streams in while they
/// compute instead of stalling on a full miss queue. Returns whether every value of `x`
/// is finite, or `None` below AVX-512, where the caller forms the product with a GEMM and
/// [`transpose_log_densities_at`] (the shape that is fastest there).
#[allow(clippy::too_many_arguments)]
pub fn log_densities_direct_at(
    level: SimdLevel,
    x: &[f32],
    d: usize,
    shift: Option<&[f32]>,
    tiles: &[f32],
    bias: &[f32],
    slabs: &mut [f32],
    lt: &mut [f32],
    stride: usize,
    max: &mut [f32],
    ahead: &[f32],
) -> Option<bool> {
    let k = bias.len();
    assert!(
        d > 0 && x.len().is_multiple_of(d),
        "log_densities_direct: x must be n × d"
    );
    let lanes = (x.len() / d).next_multiple_of(16);
    assert!(
        stride.is_multiple_of(16) && lanes <= stride,
        "log_densities_direct: the rows must fit the stride, a multiple of 16"
    );
    assert!(shift.is_none_or(|s| s.len() == d) && tiles.len() == 2 * d * k);
    assert!(
        slabs.len() >= DENSITY_SLABS * 16 * 2 * d && lt.len() >= k * stride && max.len() >= lanes
    );
    match level.clamp_to_cpu() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512F and FMA (clamp_to_cpu); lengths checked above.
        SimdLevel::Avx512 => unsafe {
            Some(x86::log_densities_slabs_avx512(
                x, d, shift, slabs, tiles, bias, lt, stride, max, ahead,
            ))
        },
        _ => None,
    }
}

/// Scalar twin of [`transpose_log_densities_at`].
pub fn transpose_log_densities_scalar(
    post: &[f32],
    rows: usize,
    bias: &[f32],
    lt: &mut [f32],
    stride: usize,
    max: &mut [f32],
) {
    let k = bias.len();
    max[..rows].fill(f32::NEG_INFINITY);
    for (c, &b) in bias.iter().enumerate() {
        let out = &mut lt[c * stride..c * stride + rows];
        for (i, (o, m)) in out.iter_mut().zip(&mut max[..rows]).enumerate() {
            *o = post[i * k + c] + b;
            *m = if *m > *o { *m } else { *o };
        }
    }
}

/// EM's posteriors of a block of `n` rows from its component-major log-densities, grouped by
/// component: `lᵢc = lt[c·stride + i]` (`K = starts.len() − 1` rows of `stride`, a multiple
/// of 16 ≥ `n`) and the rows' maxima `mᵢ = max[i]`, as [`transpose_log_densities_at`] leaves
/// them. Per row `eᵢc = exp(lᵢc − mᵢ)` ([`exp_scalar`]) and `Sᵢ = Σ_c eᵢc` (summed in component
/// order) over the entries that are not negligible ([`negligible_log_ratio`]: no exponential
/// for them, and a vector of rows without any costs one comparison). Writes, component after
/// component, the rows with `eᵢc ≥ frac` (posterior at least
/// `frac` times the row's largest) in increasing order to `rows[starts[c]..starts[c+1]]` and
/// their posteriors `eᵢc / Sᵢ` to `w` (both grown as needed; entries past `starts[K]` are
/// scratch), and returns the totals. With `weights` (one per row, e.g. the length of a run of
/// identical rows that the row stands for) row `i` counts `weights[i]` times: its posteriors
/// are multiplied by it and so are its terms of the totals (`kept` still counts pairs).
/// `rowbuf` (≥ 2·stride values) is scratch. Lanes `n..` of
/// `lt` and `max` (up to the next multiple of 16) may hold anything, NaN included: they never
/// reach the results.
///
/// The rows are the vector lanes, so there is no horizontal reduction, and `lt` is read once:
/// the kept pairs are taken with `eᵢc` while the sums build up, and divided by `Sᵢ` at the
/// end. Every level does the same f32 operations per element in the same order, so all give
/// the same bits.
#[allow(clippy::too_many_arguments)]
pub fn posteriors_by_component_at(
    level: SimdLevel,
    lt: &[f32],
    n: usize,
    stride: usize,
    max: &[f32],
    weights: Option<&[f32]>,
    frac: f32,
    rowbuf: &mut [f32],
    starts: &mut [u32],
    rows: &mut Vec<u32>,
    w: &mut Vec<f32>,
) -> BlockPosteriors {
    assert!(!starts.is_empty());
    let (k, lanes) = (starts.len() - 1, n.next_multiple_of(16));
    assert!(
        stride.is_multiple_of(16) && lanes <= stride && lt.len() >= k * stride,
        "posteriors_by_component: lt must hold K rows of a stride ≥ n, multiple of 16"
    );
    assert!(max.len() >= lanes && rowbuf.len() >= 2 * stride);
    assert!(
        weights.is_none_or(|c| c.len() == n),
        "posteriors_by_component: one weight per row"
    );
    let (sum, rest) = rowbuf.split_at_mut(stride);
    sum[..lanes].fill(0.0);
    rest[..lanes].fill(0.0);
    let cut = negligible_log_ratio(k, frac);
    let kept = match level.clamp_to_cpu() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512F and FMA (clamp_to_cpu); every row c·stride + [0, lanes)
        // of lt and [0, lanes) of max/sum/rest lies within the lengths checked above.
        SimdLevel::Avx512 => unsafe {
            x86::exp_select_columns_avx512(
                lt, n, stride, max, frac, cut, sum, rest, starts, rows, w,
            )
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above; the CPU has AVX2 and FMA.
        SimdLevel::Avx2 => unsafe {
            x86::exp_select_columns_avx2(lt, n, stride, max, frac, cut, sum, rest, starts, rows, w)
        },
        _ => exp_select_columns_scalar(lt, n, stride, max, frac, cut, sum, rest, starts, rows, w),
    };
    starts[k] = kept as u32;
    let mut totals = BlockPosteriors {
        kept,
        ..Default::default()
    };
    // ln of a product of up to 16 sums (each in [1, K]) instead of 16 logarithms; a weighted
    // row (a run of identical rows) has its own.
    let (mut prod, mut log_sum) = (1f64, 0f64);
    for i in 0..n {
        let s = sum[i] as f64;
        let c = weights.map_or(1.0, |c| c[i] as f64);
        totals.loglik += c * max[i] as f64;
        totals.dropped += c * rest[i] as f64 / s;
        if c == 1.0 {
            prod *= s;
        } else {
            log_sum += c * s.ln();
        }
        if i % 16 == 15 {
            log_sum += prod.ln();
            prod = 1.0;
        }
        sum[i] = (c / s) as f32;
    }
    totals.loglik += log_sum + prod.ln();
    for (&r, w) in rows[..kept].iter().zip(&mut w[..kept]) {
        *w *= sum[r as usize];
    }
    totals
}

/// The log-ratio `x = lᵢc − mᵢ` below which [`posteriors_by_component_at`] counts an entry as
/// zero, without an exponential: `ln(2⁻²⁴ / K)` (−20.8 at K = 64), so all of a row's
/// negligible entries together are below half a unit in the last place of its sum `Sᵢ ≥ 1`
/// and the log-likelihood stays exact to f32 rounding; lower where `frac` asks to keep
/// smaller posteriors, and −∞ (nothing left out) when it is 0.
pub fn negligible_log_ratio(k: usize, frac: f32) -> f32 {
    if frac > 0.0 {
        let below_rounding = -(24.0 * std::f32::consts::LN_2 + (k.max(1) as f32).ln());
        below_rounding.min(frac.ln() - 1.0)
    } else {
        f32::NEG_INFINITY
    }
}

/// Scalar twin of the pass of [`posteriors_by_component_at`] over `lt`: the sums and left-out
/// sums per row added to `sum`/`rest` (zeroed by the caller), the kept pairs with their `e`
/// and each component's start in `starts[..K]`; returns how many pairs (the caller sets
/// `starts[K]`).
#[allow(clippy::too_many_arguments)]
pub fn exp_select_columns_scalar(
    lt: &[f32],
    n: usize,
    stride: usize,
    max: &[f32],
    frac: f32,
    cut: f32,
    sum: &mut [f32],
    rest: &mut [f32],
    starts: &mut [u32],
    rows: &mut Vec<u32>,
    w: &mut Vec<f32>,
) -> usize {
    let k = starts.len() - 1;
    let mut np = 0;
    for (c, row) in lt.chunks(stride).take(k).enumerate() {
        starts[c] = np as u32;
        reserve_pairs(rows, w, np + n);
        for i in 0..n {
            let x = row[i] - max[i];
            // Negligible (a NaN goes on, so that it reaches the sum).
            if x < cut {
                continue;
            }
            let e = exp_scalar(x);
            sum[i] += e;
            let keep = e >= frac;
            rest[i] += if keep { 0.0 } else { e };
            if keep {
                rows[np] = i as u32;
                w[np] = e;
                np += 1;
            }
        }
    }
    np
}

/// Grows the pair lists of the column selection to at least `need` (+ one vector of slack for
/// full-width stores), doubling.
#[inline]
fn reserve_pairs(rows: &mut Vec<u32>, w: &mut Vec<f32>, need: usize) {
    let need = need + 16;
    if rows.len() < need || w.len() < need {
        let len = need.max(2 * rows.len());
        rows.resize(len, 0);
        w.resize(len, 0.0);
    }
}

/// Asks the CPU to bring `x` into cache, one request per 64-byte line (a hint: no effect on
/// results).
#[inline(always)]
pub fn prefetch(x: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in x.chunks(16) {
        // SAFETY: prefetching is a hint that never faults, and the address is in bounds.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = x;
}

/// Writes `[v², v]` with `v = x − shift` (`v = x` without a shift) for every row of `x`
/// (`n × D`), row `i` into `aug[i·2D..(i+1)·2D]`, and returns whether every value of `x` is
/// finite (exponent bits, as `error::all_finite`). Exactly rounded element-wise operations
/// only, so every level gives the same bits, for any `D` (the vector levels finish a row that
/// is not a multiple of their width with a masked vector or element by element).
pub fn shift_square_at(
    level: SimdLevel,
    x: &[f32],
    d: usize,
    shift: Option<&[f32]>,
    aug: &mut [f32],
) -> bool {
    assert!(d > 0 && x.len().is_multiple_of(d) && aug.len() >= 2 * x.len());
    assert!(
        shift.is_none_or(|c| c.len() == d),
        "shift_square: shift of the wrong length"
    );
    match level.clamp_to_cpu() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512F (clamp_to_cpu); lengths checked above.
        SimdLevel::Avx512 => unsafe { x86::shift_square_avx512(x, d, shift, aug) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2 (clamp_to_cpu); lengths checked above.
        SimdLevel::Avx2 => unsafe { x86::shift_square_avx2(x, d, shift, aug) },
        _ => shift_square_scalar(x, d, shift, aug),
    }
}

/// Scalar twin of [`shift_square_at`].
pub fn shift_square_scalar(x: &[f32], d: usize, shift: Option<&[f32]>, aug: &mut [f32]) -> bool {
    // Written as plain element-wise loops (the shift chosen once, not per element) so that
    // the compiler vectorises them where the dispatch lands here.
    let mut bad = false;
    for (row, out) in x.chunks_exact(d).zip(aug.chunks_exact_mut(2 * d)) {
        let (sq, lin) = out.split_at_mut(d);
        match shift {
            Some(c) => {
                for ((l, &a), &c) in lin.iter_mut().zip(row).zip(c) {
                    *l = a - c;
                }
            }
            None => lin.copy_from_slice(row),
        }
        for (s, &l) in sq.iter_mut().zip(lin.iter()) {
            *s = l * l;
        }
        bad |= row.iter().fold(false, |b, &a| {
            b | (a.to_bits() & 0x7f80_0000 == 0x7f80_0000)
        });
    }
    !bad
}

/// Applies [`exp_scalar`] to every element of `xs` at the best supported level.
pub fn exp_in_place(xs: &mut [f32]) {
    exp_in_place_at(SimdLevel::detect(), xs)
}

/// [`exp_in_place`] at a given level (clamped to what the CPU supports).
pub fn exp_in_place_at(level: SimdLevel, xs: &mut [f32]) {
    match level.clamp_to_cpu() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512F and FMA (clamp_to_cpu).
        SimdLevel::Avx512 => unsafe { x86::exp_slice_avx512(xs) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2 and FMA (clamp_to_cpu).
        SimdLevel::Avx2 => unsafe { x86::exp_slice_avx2(xs) },
        _ => xs.iter_mut().for_each(|v| *v = exp_scalar(*v)),
    }
}

/// `y += a · x` (`x` and `y` of equal length) at the given level; the scalar twin uses the same
/// fused multiply-add, so every level gives identical results.
pub fn axpy_at(level: SimdLevel, a: f32, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "axpy: x and y lengths differ");
    match level.clamp_to_cpu() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512F and FMA (clamp_to_cpu); lengths checked above.
        SimdLevel::Avx512 => unsafe { x86::axpy_avx512(a, x, y) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2 and FMA (clamp_to_cpu); lengths checked above.
        SimdLevel::Avx2 => unsafe { x86::axpy_avx2(a, x, y) },
        _ => axpy_scalar(a, x, y),
    }
}

/// Scalar twin of [`axpy_at`].
pub fn axpy_scalar(a: f32, x: &[f32], y: &mut [f32]) {
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi = a.mul_add(xi, *yi);
    }
}

/// Writes to `out[..n]` the indices `i` with `row[i] ≥ threshold`, in increasing order, and
/// returns `n`. `out` must hold at least `row.len()` values; its entries past `n` (up to
/// `row.len()`) are overwritten with scratch values. Branch-free: AVX-512 compresses
/// the indices of a 16-lane compare mask into `out`; the other levels store every index and
/// advance the count by the comparison.
#[inline]
pub fn select_at_least_at(level: SimdLevel, row: &[f32], threshold: f32, out: &mut [u32]) -> usize {
    assert!(
        out.len() >= row.len(),
        "select: output shorter than the row"
    );
    match level.clamp_to_cpu() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512F (clamp_to_cpu); `out` is long enough (checked above).
        SimdLevel::Avx512 => unsafe { x86::select_at_least_avx512(row, threshold, out) },
        _ => select_at_least_scalar(row, threshold, out),
    }
}

/// Scalar twin of [`select_at_least_at`].
pub fn select_at_least_scalar(row: &[f32], threshold: f32, out: &mut [u32]) -> usize {
    let mut n = 0;
    for (i, &v) in row.iter().enumerate() {
        out[n] = i as u32;
        n += (v >= threshold) as usize;
    }
    n
}

/// Lanes of the f64 kernels below: each keeps this many independent partial sums, combined
/// in a fixed order, with separate multiplies and adds (no fused multiply-add), so every level
/// gives bit-identical results to the scalar twin.
const F64_LANES: usize = 8;

/// `δ = x − μ` (into `delta`) and returns `Σ_j δ_j² λ_j` in f64, with `ml = [μ (D), λ (D)]`
/// one component's means and precisions side by side (`D = x.len()`).
#[inline]
pub fn centre_quad_at(level: SimdLevel, x: &[f64], ml: &[f64], delta: &mut [f64]) -> f64 {
    let d = x.len();
    let (m, l) = ml[..2 * d].split_at(d);
    let delta = &mut delta[..d];
    match level.clamp_to_cpu() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512F and FMA (clamp_to_cpu).
        SimdLevel::Avx512 => unsafe { x86::centre_quad_avx512(x, m, l, delta) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2 and FMA (clamp_to_cpu).
        SimdLevel::Avx2 => unsafe { x86::centre_quad_avx2(x, m, l, delta) },
        _ => centre_quad_body(x, m, l, delta),
    }
}

#[inline(always)]
fn centre_quad_body(x: &[f64], m: &[f64], l: &[f64], delta: &mut [f64]) -> f64 {
    let mut acc = [0f64; F64_LANES];
    let whole = x.len() / F64_LANES * F64_LANES;
    for (((xs, ms), ls), ds) in x[..whole]
        .chunks_exact(F64_LANES)
        .zip(m.chunks_exact(F64_LANES))
        .zip(l.chunks_exact(F64_LANES))
        .zip(delta[..whole].chunks_exact_mut(F64_LANES))
    {
        for j in 0..F64_LANES {
            let t = xs[j] - ms[j];
            ds[j] = t;
            acc[j] += t * t * ls[j];
        }
    }
    for j in whole..x.len() {
        let t = x[j] - m[j];
        delta[j] = t;
        acc[j - whole] += t * t * l[j];
    }
    lane_sum(&acc)
}

/// The fixed pairwise order in which the lanes are summed.
#[inline(always)]
fn lane_sum(a: &[f64; F64_LANES]) -> f64 {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

/// `acc[..D] += g δ` and `acc[D..2D] += g δ²` in f64 (`D = delta.len()`): one weighted
/// first- and second-moment update about a component's mean.
#[inline]
pub fn moments_at(level: SimdLevel, g: f64, delta: &[f64], acc: &mut [f64]) {
    let d = delta.len();
    let (a1, a2) = acc[..2 * d].split_at_mut(d);
    match level.clamp_to_cpu() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512F and FMA (clamp_to_cpu).
        SimdLevel::Avx512 => unsafe { x86::moments_avx512(g, delta, a1, a2) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2 and FMA (clamp_to_cpu).
        SimdLevel::Avx2 => unsafe { x86::moments_avx2(g, delta, a1, a2) },
        _ => moments_body(g, delta, a1, a2),
    }
}

#[inline(always)]
fn moments_body(g: f64, delta: &[f64], a1: &mut [f64], a2: &mut [f64]) {
    for ((s1, s2), &t) in a1.iter_mut().zip(a2.iter_mut()).zip(delta) {
        let gt = g * t;
        *s1 += gt;
        *s2 += gt * t;
    }
}

/// `Σ_j δ_j (u_j + v_j δ_j)` in f64 with `uv = [u (D), v (D)]` (`D = delta.len()`): a
/// quadratic polynomial in the centred descriptor, the backward pass's `∂L/∂γ`.
#[inline]
pub fn centred_poly_at(level: SimdLevel, delta: &[f64], uv: &[f64]) -> f64 {
    let d = delta.len();
    let (u, v) = uv[..2 * d].split_at(d);
    match level.clamp_to_cpu() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512F and FMA (clamp_to_cpu).
        SimdLevel::Avx512 => unsafe { x86::centred_poly_avx512(delta, u, v) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2 and FMA (clamp_to_cpu).
        SimdLevel::Avx2 => unsafe { x86::centred_poly_avx2(delta, u, v) },
        _ => centred_poly_body(delta, u, v),
    }
}

#[inline(always)]
fn centred_poly_body(delta: &[f64], u: &[f64], v: &[f64]) -> f64 {
    let mut acc = [0f64; F64_LANES];
    let whole = delta.len() / F64_LANES * F64_LANES;
    for ((ds, us), vs) in delta[..whole]
        .chunks_exact(F64_LANES)
        .zip(u.chunks_exact(F64_LANES))
        .zip(v.chunks_exact(F64_LANES))
    {
        for j in 0..F64_LANES {
            acc[j] += ds[j] * (us[j] + vs[j] * ds[j]);
        }
    }
    for j in whole..delta.len() {
        acc[j - whole] += delta[j] * (u[j] + v[j] * delta[j]);
    }
    lane_sum(&acc)
}

/// [`centre_quad_at`] for the components `sel` of one descriptor `x` (`D`): for the `j`-th
/// selected component `c`, `delta[j·D..]` = `x − μ_c` and `q[j]` = `Σ δ² λ_c`, with `ml` the
/// `K × 2D` rows `[μ_c, λ_c]`. One dispatch per descriptor instead of one per component.
#[inline]
pub fn centre_quad_sel_at(
    level: SimdLevel,
    x: &[f64],
    ml: &[f64],
    sel: &[u32],
    q: &mut [f64],
    delta: &mut [f64],
) {
    let d = x.len();
    assert!(q.len() >= sel.len() && delta.len() >= sel.len() * d);
    match level.clamp_to_cpu() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512F and FMA (clamp_to_cpu).
        SimdLevel::Avx512 => unsafe { x86::centre_quad_sel_avx512(x, ml, sel, q, delta) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2 and FMA (clamp_to_cpu).
        SimdLevel::Avx2 => unsafe { x86::centre_quad_sel_avx2(x, ml, sel, q, delta) },
        _ => {
            for (j, &c) in sel.iter().enumerate() {
                let (m, l) = ml[2 * c as usize * d..(2 * c as usize + 2) * d].split_at(d);
                q[j] = centre_quad_body(x, m, l, &mut delta[j * d..(j + 1) * d]);
            }
        }
    }
}

/// [`moments_at`] for the components `sel` of one descriptor: for the `j`-th selected
/// component `c` with `w[j] ≠ 0`, `acc[c·2D..]` gets `w[j]` times `[δ_j, δ_j²]`
/// (`delta` as [`centre_quad_sel_at`] leaves it). Entries with a zero weight are skipped.
#[inline]
pub fn moments_sel_at(
    level: SimdLevel,
    d: usize,
    sel: &[u32],
    w: &[f64],
    delta: &[f64],
    acc: &mut [f64],
) {
    assert!(w.len() >= sel.len() && delta.len() >= sel.len() * d);
    match level.clamp_to_cpu() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512F and FMA (clamp_to_cpu).
        SimdLevel::Avx512 => unsafe { x86::moments_sel_avx512(d, sel, w, delta, acc) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2 and FMA (clamp_to_cpu).
        SimdLevel::Avx2 => unsafe { x86::moments_sel_avx2(d, sel, w, delta, acc) },
        _ => {
            for (j, &c) in sel.iter().enumerate() {
                if w[j] != 0.0 {
                    let (a1, a2) =
                        acc[2 * c as usize * d..(2 * c as usize + 2) * d].split_at_mut(d);
                    moments_body(w[j], &delta[j * d..(j + 1) * d], a1, a2);
                }
            }
        }
    }
}

/// [`centred_poly_at`] for the components `sel` of one descriptor: for the `j`-th selected
/// component `c` with `mask[j] ≠ 0`, `out[j]` = `Σ δ_j (u_c + v_c δ_j)` with `uv` the
/// `K × 2D` rows `[u_c, v_c]` (`delta` as [`centre_quad_sel_at`] leaves it); other entries of
/// `out` are left as they are.
#[inline]
pub fn centred_poly_sel_at(
    level: SimdLevel,
    d: usize,
    sel: &[u32],
    mask: &[f64],
    delta: &[f64],
    uv: &[f64],
    out: &mut [f64],
) {
    assert!(mask.len() >= sel.len() && out.len() >= sel.len() && delta.len() >= sel.len() * d);
    match level.clamp_to_cpu() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512F and FMA (clamp_to_cpu).
        SimdLevel::Avx512 => unsafe { x86::centred_poly_sel_avx512(d, sel, mask, delta, uv, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2 and FMA (clamp_to_cpu).
        SimdLevel::Avx2 => unsafe { x86::centred_poly_sel_avx2(d, sel, mask, delta, uv, out) },
        _ => {
            for (j, &c) in sel.iter().enumerate() {
                if mask[j] != 0.0 {
                    let (u, v) = uv[2 * c as usize * d..(2 * c as usize + 2) * d].split_at(d);
                    out[j] = centred_poly_body(&delta[j * d..(j + 1) * d], u, v);
                }
            }
        }
    }
}

/// `q[p] = Σ_j (x_{r} − μ_c)_j² λ_{c,j}` in f64 for every pair `p` of a block, with
/// `r = rows[p]` a row of `x` (`n × D` f32, converted exactly to f64) and `c = comps[p]` a
/// row `[μ_c, λ_c]` of `ml` (`K × 2D`). Each pair gives bit for bit what
/// [`centre_quad_at`] gives for that row and component (same partial sums, same order), but
/// nothing is stored per dimension and the vector levels run four pairs at once, so that the
/// additions of different pairs overlap instead of waiting on one another.
pub fn quad_pairs_at(
    level: SimdLevel,
    x: &[f32],
    d: usize,
    rows: &[u32],
    comps: &[u32],
    ml: &[f64],
    q: &mut [f64],
) {
    assert!(rows.len() == comps.len() && q.len() >= rows.len());
    assert!(d > 0 && x.len().is_multiple_of(d) && ml.len().is_multiple_of(2 * d));
    let (n, k) = (x.len() / d, ml.len() / (2 * d));
    assert!(
        rows.iter().all(|&r| (r as usize) < n) && comps.iter().all(|&c| (c as usize) < k),
        "quad_pairs: row or component index out of range"
    );
    match level.clamp_to_cpu() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512F and FMA (clamp_to_cpu); indices checked above.
        SimdLevel::Avx512 => unsafe { x86::quad_pairs_avx512(x, d, rows, comps, ml, q) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2 and FMA (clamp_to_cpu); indices checked above.
        SimdLevel::Avx2 => unsafe { x86::quad_pairs_avx2(x, d, rows, comps, ml, q) },
        _ => quad_pairs_scalar(x, d, rows, comps, ml, q),
    }
}

/// Scalar twin of [`quad_pairs_at`].
pub fn quad_pairs_scalar(
    x: &[f32],
    d: usize,
    rows: &[u32],
    comps: &[u32],
    ml: &[f64],
    q: &mut [f64],
) {
    for ((&r, &c), q) in rows.iter().zip(comps).zip(q.iter_mut()) {
        let xr = &x[r as usize * d..(r as usize + 1) * d];
        let (m, l) = ml[2 * c as usize * d..(2 * c as usize + 2) * d].split_at(d);
        let mut acc = [0f64; F64_LANES];
        for (j, ((&a, &mu), &lj)) in xr.iter().zip(m).zip(l).enumerate() {
            let t = a as f64 - mu;
            acc[j % F64_LANES] += t * t * lj;
        }
        *q = lane_sum(&acc);
    }
}

/// The argument checks shared by the grouped-moments kernels (`what` names the kernel): `x` is
/// `n × d`, `ml` is `K × 2d`, `starts` holds `K + 1` non-decreasing component starts within
/// `rows`, one weight per row index, every row index `< n`, and `acc` is `K × 2d`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn check_grouped_moments(
    what: &str,
    x: &[f32],
    d: usize,
    ml: &[f64],
    starts: &[u32],
    rows: &[u32],
    w: &[f64],
    acc: &[f64],
) {
    assert!(d > 0 && x.len().is_multiple_of(d) && ml.len().is_multiple_of(2 * d));
    let (n, k) = (x.len() / d, ml.len() / (2 * d));
    assert!(starts.len() == k + 1 && acc.len() == 2 * k * d && rows.len() == w.len());
    assert!(
        starts.windows(2).all(|s| s[0] <= s[1]) && starts[k] as usize <= rows.len(),
        "{what}: component ranges must increase within the pairs"
    );
    assert!(
        rows.iter().all(|&r| (r as usize) < n),
        "{what}: row index out of range"
    );
}

/// First and second moments about each component's mean, grouped by component: for every
/// component `c` with pairs `starts[c]..starts[c+1]` (rows `rows[p]` of `x`, `n × D` f32,
/// weights `w[p]`), `acc[c·2D..]` gets `[Σ_p w_p δ_p, Σ_p (w_p δ_p) δ_p]` with
/// `δ_p = x_{rows[p]} − μ_c` (`μ_c` the first half of row `c` of `ml`, `K × 2D`), summed in
/// pair order from zero and then added to `acc`. Element-wise arithmetic only (no fused
/// multiply-add, no reassociation), so every level gives the same bits; the vector levels keep
/// a component's sums in registers across its pairs instead of loading and storing them once
/// per pair.
#[allow(clippy::too_many_arguments)]
pub fn moments_grouped_at(
    level: SimdLevel,
    x: &[f32],
    d: usize,
    ml: &[f64],
    starts: &[u32],
    rows: &[u32],
    w: &[f64],
    acc: &mut [f64],
) {
    check_grouped_moments("moments_grouped", x, d, ml, starts, rows, w, acc);
    match level.clamp_to_cpu() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512F (clamp_to_cpu); ranges and indices checked above.
        SimdLevel::Avx512 => unsafe { x86::moments_grouped_avx512(x, d, ml, starts, rows, w, acc) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2 (clamp_to_cpu); ranges and indices checked above.
        SimdLevel::Avx2 => unsafe { x86::moments_grouped_avx2(x, d, ml, starts, rows, w, acc) },
        _ => moments_grouped_scalar(x, d, ml, starts, rows, w, acc),
    }
}

/// Scalar twin of [`moments_grouped_at`].
pub fn moments_grouped_scalar(
    x: &[f32],
    d: usize,
    ml: &[f64],
    starts: &[u32],
    rows: &[u32],
    w: &[f64],
    acc: &mut [f64],
) {
    for (c, s) in starts.windows(2).enumerate() {
        let pairs = s[0] as usize..s[1] as usize;
        if pairs.is_empty() {
            continue;
        }
        let m = &ml[2 * c * d..(2 * c + 1) * d];
        let (a1, a2) = acc[2 * c * d..2 * (c + 1) * d].split_at_mut(d);
        for j in 0..d {
            let (mut s1, mut s2) = (0f64, 0f64);
            for p in pairs.clone() {
                let t = x[rows[p] as usize * d + j] as f64 - m[j];
                let gt = w[p] * t;
                s1 += gt;
                s2 += gt * t;
            }
            a1[j] += s1;
            a2[j] += s2;
        }
    }
}

/// The f32 form of [`moments_grouped_at`] for EM's E-step: for every component `c` with pairs
/// `starts[c]..starts[c+1]` (rows `rows[p]` of `x`, `n × D`, weights `w[p]`), the f32 sums
/// `[Σ_p t_p, Σ_p t_p δ_p]`, `t_p = w_p δ_p`, `δ_p = x_{rows[p]} − r_c` (`r_c` row `c` of
/// `refs`, `K × D`), formed in pair order from zero with one fused multiply-add for the second
/// sum, are added to the f64 accumulators `acc[c·2D..(c+1)·2D]`. The same operations per
/// element at every level (the scalar twin uses `mul_add`), so every level gives the same
/// bits.
#[allow(clippy::too_many_arguments)]
pub fn moments_grouped_f32_at(
    level: SimdLevel,
    x: &[f32],
    d: usize,
    refs: &[f32],
    starts: &[u32],
    rows: &[u32],
    w: &[f32],
    acc: &mut [f64],
) {
    assert!(d > 0 && x.len().is_multiple_of(d) && refs.len().is_multiple_of(d));
    let (n, k) = (x.len() / d, refs.len() / d);
    assert!(starts.len() == k + 1 && acc.len() == 2 * k * d && rows.len() == w.len());
    assert!(
        starts.windows(2).all(|s| s[0] <= s[1]) && starts[k] as usize <= rows.len(),
        "moments_grouped_f32: component ranges must increase within the pairs"
    );
    assert!(
        rows.iter().all(|&r| (r as usize) < n),
        "moments_grouped_f32: row index out of range"
    );
    match level.clamp_to_cpu() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512F and FMA (clamp_to_cpu); ranges and indices checked.
        SimdLevel::Avx512 => unsafe {
            x86::moments_grouped_f32_avx512(x, d, refs, starts, rows, w, acc)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2 and FMA (clamp_to_cpu); ranges and indices checked.
        SimdLevel::Avx2 => unsafe {
            x86::moments_grouped_f32_avx2(x, d, refs, starts, rows, w, acc)
        },
        _ => moments_grouped_f32_scalar(x, d, refs, starts, rows, w, acc),
    }
}

/// Scalar twin of [`moments_grouped_f32_at`].
pub fn moments_grouped_f32_scalar(
    x: &[f32],
    d: usize,
    refs: &[f32],
    starts: &[u32],
    rows: &[u32],
    w: &[f32],
    acc: &mut [f64],
) {
    for (c, s) in starts.windows(2).enumerate() {
        let pairs = s[0] as usize..s[1] as usize;
        if pairs.is_empty() {
            continue;
        }
        let (o1, o2) = acc[2 * c * d..2 * (c + 1) * d].split_at_mut(d);
        moments_f32_dims(
            x,
            d,
            0,
            &refs[c * d..(c + 1) * d],
            &rows[pairs.clone()],
            &w[pairs],
            o1,
            o2,
        );
    }
}

/// Dimensions `j0..d` of one component's f32 moments, one at a time (the scalar order).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn moments_f32_dims(
    x: &[f32],
    d: usize,
    j0: usize,
    r: &[f32],
    rows: &[u32],
    w: &[f32],
    o1: &mut [f64],
    o2: &mut [f64],
) {
    for j in j0..d {
        let (mut s1, mut s2) = (0f32, 0f32);
        for (&row, &g) in rows.iter().zip(w) {
            let delta = x[row as usize * d + j] - r[j];
            let t = g * delta;
            s1 += t;
            s2 = t.mul_add(delta, s2);
        }
        o1[j] += s1 as f64;
        o2[j] += s2 as f64;
    }
}

/// Below this `e^x` is not a normal `f64` and [`exp_f64_scalar`] returns 0.
pub const EXP_F64_UNDERFLOW: f64 = -708.0;
/// Above this [`exp_f64_scalar`] returns +∞.
pub const EXP_F64_OVERFLOW: f64 = 709.0;
// ln 2 split in two (fdlibm): the high part has 32 trailing zero bits, so `n · LN2_HI_64` is
// exact for every `n` this range gives.
const LN2_HI_64: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
const LN2_LO_64: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);
/// Taylor coefficients 1/j! of `e^r`, highest first: degree 12 on `|r| ≤ ln2/2` truncates
/// below 2e-16 relative.
const EXP64_POLY: [f64; 13] = [
    1.0 / 479_001_600.0,
    1.0 / 39_916_800.0,
    1.0 / 3_628_800.0,
    1.0 / 362_880.0,
    1.0 / 40_320.0,
    1.0 / 5_040.0,
    1.0 / 720.0,
    1.0 / 120.0,
    1.0 / 24.0,
    1.0 / 6.0,
    0.5,
    1.0,
    1.0,
];

/// `e^x` in f64 to a few ulps (`x = n ln2 + r`, a degree-12 polynomial, then `2^n`), with
/// separate multiplies and adds so that the vector versions give identical results. Returns
/// 0 below [`EXP_F64_UNDERFLOW`] (and for −∞), +∞ above [`EXP_F64_OVERFLOW`], NaN for NaN.
#[inline]
pub fn exp_f64_scalar(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    if x < EXP_F64_UNDERFLOW {
        return 0.0;
    }
    if x > EXP_F64_OVERFLOW {
        return f64::INFINITY;
    }
    let n = (x * std::f64::consts::LOG2_E).round_ties_even();
    let r = (x - n * LN2_HI_64) - n * LN2_LO_64;
    let mut p = EXP64_POLY[0];
    for &c in &EXP64_POLY[1..] {
        p = p * r + c;
    }
    // n ∈ [−1021, 1023]: 2^n is a normal f64 and the product is exact.
    p * f64::from_bits(((n as i64 + 1023) as u64) << 52)
}

/// Applies [`exp_f64_scalar`] to every element of `xs` at `level`; every level gives the
/// same results.
#[inline]
pub fn exp_f64_in_place_at(level: SimdLevel, xs: &mut [f64]) {
    match level.clamp_to_cpu() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512F and FMA (clamp_to_cpu).
        SimdLevel::Avx512 => unsafe { x86::exp_f64_avx512(xs) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2 and FMA (clamp_to_cpu).
        SimdLevel::Avx2 => unsafe { x86::exp_f64_avx2(xs) },
        _ => xs.iter_mut().for_each(|v| *v = exp_f64_scalar(*v)),
    }
}

/// Runs `iters` rounds of independent fused multiply-add chains at `level` on one thread and
/// returns the number of floating-point operations done (2 per lane per FMA). Used to measure
/// the machine's attainable FMA peak: time it and divide.
pub fn fma_probe(level: SimdLevel, iters: u64) -> u64 {
    const CHAINS: u64 = 12;
    let level = level.clamp_to_cpu();
    let flops = iters * CHAINS * 2 * level.lanes() as u64;
    let sink = match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512F and FMA (clamp_to_cpu).
        SimdLevel::Avx512 => unsafe { x86::fma_probe_avx512(iters) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2 and FMA (clamp_to_cpu).
        SimdLevel::Avx2 => unsafe { x86::fma_probe_avx2(iters) },
        _ => {
            let mut acc = [1.0f32; CHAINS as usize];
            for _ in 0..iters {
                for a in acc.iter_mut() {
                    *a = a.mul_add(0.999_999, 1e-7);
                }
                std::hint::black_box(&mut acc);
            }
            acc.iter().sum()
        }
    };
    std::hint::black_box(sink);
    flops
}

// The AVX-512 intrinsics are stable since Rust 1.89 (the workspace's rust-version).
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;

    /// The shared core of [`exp512`] and [`exp512_nonpositive`]: e^x for `x` already clamped
    /// to [`EXP_UNDERFLOW`, `EXP_OVERFLOW`] (or NaN): range reduction, polynomial, `2^n`.
    #[inline]
    #[target_feature(enable = "avx512f,fma")]
    fn exp512_in_range(xc: __m512) -> __m512 {
        let set1 = _mm512_set1_ps;
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(xc, set1(LOG2E)),
        );
        let r = _mm512_fnmadd_ps(n, set1(LN2_HI), xc);
        let r = _mm512_fnmadd_ps(n, set1(LN2_LO), r);
        let mut p = _mm512_fmadd_ps(set1(P0), r, set1(P1));
        p = _mm512_fmadd_ps(p, r, set1(P2));
        p = _mm512_fmadd_ps(p, r, set1(P3));
        p = _mm512_fmadd_ps(p, r, set1(P4));
        p = _mm512_fmadd_ps(p, r, set1(P5));
        let y = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), set1(1.0));
        _mm512_scalef_ps(y, n)
    }

    /// e^x on 16 lanes; see [`exp_scalar`] for the special cases. `2^n` is one `vscalefps`,
    /// exact for the normal results this range gives, so values match the scalar twin.
    #[inline]
    #[target_feature(enable = "avx512f,fma")]
    fn exp512(x: __m512) -> __m512 {
        let set1 = _mm512_set1_ps;
        let xc = _mm512_min_ps(_mm512_max_ps(x, set1(EXP_UNDERFLOW)), set1(EXP_OVERFLOW));
        let y = exp512_in_range(xc);
        let under = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, set1(EXP_UNDERFLOW));
        let over = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, set1(EXP_OVERFLOW));
        let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
        let y = _mm512_mask_mov_ps(y, under, _mm512_setzero_ps());
        let y = _mm512_mask_mov_ps(y, over, set1(f32::INFINITY));
        _mm512_mask_mov_ps(y, nan, x)
    }

    /// [`exp512`] for `x ≤ 0` or NaN (`l − max` of a softmax), with the same values there:
    /// no overflow to handle, and a NaN carried through the arithmetic (the clamp's `max`
    /// returns its second operand, `x`, when that is NaN) instead of being patched in.
    #[inline]
    #[target_feature(enable = "avx512f,fma")]
    fn exp512_nonpositive(x: __m512) -> __m512 {
        let set1 = _mm512_set1_ps;
        let xc = _mm512_max_ps(set1(EXP_UNDERFLOW), x);
        let y = exp512_in_range(xc);
        let under = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, set1(EXP_UNDERFLOW));
        _mm512_mask_mov_ps(y, under, _mm512_setzero_ps())
    }

    /// e^x on 8 lanes; see [`exp_scalar`] for the special cases. `2^n` is built from the
    /// exponent bits in two normal halves, as in the scalar twin.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn exp256(x: __m256) -> __m256 {
        let set1 = _mm256_set1_ps;
        let xc = _mm256_min_ps(_mm256_max_ps(x, set1(EXP_UNDERFLOW)), set1(EXP_OVERFLOW));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(xc, set1(LOG2E)),
        );
        let r = _mm256_fnmadd_ps(n, set1(LN2_HI), xc);
        let r = _mm256_fnmadd_ps(n, set1(LN2_LO), r);
        let mut p = _mm256_fmadd_ps(set1(P0), r, set1(P1));
        p = _mm256_fmadd_ps(p, r, set1(P2));
        p = _mm256_fmadd_ps(p, r, set1(P3));
        p = _mm256_fmadd_ps(p, r, set1(P4));
        p = _mm256_fmadd_ps(p, r, set1(P5));
        let y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), set1(1.0));
        let ni = _mm256_cvtps_epi32(n);
        let n1 = _mm256_srai_epi32::<1>(ni);
        let n2 = _mm256_sub_epi32(ni, n1);
        let bias = _mm256_set1_epi32(127);
        let s1 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(n1, bias)));
        let s2 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(n2, bias)));
        let y = _mm256_mul_ps(_mm256_mul_ps(y, s1), s2);
        let under = _mm256_cmp_ps::<_CMP_LT_OQ>(x, set1(EXP_UNDERFLOW));
        let over = _mm256_cmp_ps::<_CMP_GT_OQ>(x, set1(EXP_OVERFLOW));
        let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x);
        let y = _mm256_andnot_ps(under, y);
        let y = _mm256_blendv_ps(y, set1(f32::INFINITY), over);
        _mm256_blendv_ps(y, x, nan)
    }

    #[target_feature(enable = "avx512f,fma")]
    pub(super) fn exp_slice_avx512(xs: &mut [f32]) {
        let mut chunks = xs.chunks_exact_mut(16);
        for c in &mut chunks {
            // SAFETY: `c` holds exactly 16 f32 (unaligned load/store).
            unsafe {
                let v = _mm512_loadu_ps(c.as_ptr());
                _mm512_storeu_ps(c.as_mut_ptr(), exp512(v));
            }
        }
        for v in chunks.into_remainder() {
            *v = exp_scalar(*v);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn exp_slice_avx2(xs: &mut [f32]) {
        let mut chunks = xs.chunks_exact_mut(8);
        for c in &mut chunks {
            // SAFETY: `c` holds exactly 8 f32 (unaligned load/store).
            unsafe {
                let v = _mm256_loadu_ps(c.as_ptr());
                _mm256_storeu_ps(c.as_mut_ptr(), exp256(v));
            }
        }
        for v in chunks.into_remainder() {
            *v = exp_scalar(*v);
        }
    }

    #[target_feature(enable = "avx512f,fma")]
    pub(super) fn softmax_avx512(row: &mut [f32]) -> f64 {
        let (body, tail) = row.split_at_mut(row.len() / 16 * 16);
        let mut vmax = _mm512_set1_ps(f32::NEG_INFINITY);
        for c in body.chunks_exact(16) {
            // SAFETY: `c` holds exactly 16 f32.
            vmax = _mm512_max_ps(vmax, unsafe { _mm512_loadu_ps(c.as_ptr()) });
        }
        let max = tail
            .iter()
            .fold(_mm512_reduce_max_ps(vmax), |m, &v| m.max(v));
        let vm = _mm512_set1_ps(max);
        let mut vsum = _mm512_setzero_ps();
        for c in body.chunks_exact_mut(16) {
            // SAFETY: `c` holds exactly 16 f32.
            unsafe {
                let e = exp512(_mm512_sub_ps(_mm512_loadu_ps(c.as_ptr()), vm));
                _mm512_storeu_ps(c.as_mut_ptr(), e);
                vsum = _mm512_add_ps(vsum, e);
            }
        }
        let mut sum = _mm512_reduce_add_ps(vsum) as f64;
        for v in tail.iter_mut() {
            *v = exp_scalar(*v - max);
            sum += *v as f64;
        }
        let inv = (1.0 / sum) as f32;
        let vinv = _mm512_set1_ps(inv);
        for c in body.chunks_exact_mut(16) {
            // SAFETY: `c` holds exactly 16 f32.
            unsafe {
                let v = _mm512_mul_ps(_mm512_loadu_ps(c.as_ptr()), vinv);
                _mm512_storeu_ps(c.as_mut_ptr(), v);
            }
        }
        for v in tail.iter_mut() {
            *v *= inv;
        }
        max as f64 + sum.ln()
    }

    #[target_feature(enable = "avx2,fma")]
    fn hmax256(v: __m256) -> f32 {
        let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_max_ss(m, _mm_shuffle_ps::<1>(m, m));
        _mm_cvtss_f32(m)
    }

    #[target_feature(enable = "avx2,fma")]
    fn hsum256(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
        _mm_cvtss_f32(s)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn softmax_avx2(row: &mut [f32]) -> f64 {
        let (body, tail) = row.split_at_mut(row.len() / 8 * 8);
        let mut vmax = _mm256_set1_ps(f32::NEG_INFINITY);
        for c in body.chunks_exact(8) {
            // SAFETY: `c` holds exactly 8 f32.
            vmax = _mm256_max_ps(vmax, unsafe { _mm256_loadu_ps(c.as_ptr()) });
        }
        let max = tail.iter().fold(hmax256(vmax), |m, &v| m.max(v));
        let vm = _mm256_set1_ps(max);
        let mut vsum = _mm256_setzero_ps();
        for c in body.chunks_exact_mut(8) {
            // SAFETY: `c` holds exactly 8 f32.
            unsafe {
                let e = exp256(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), vm));
                _mm256_storeu_ps(c.as_mut_ptr(), e);
                vsum = _mm256_add_ps(vsum, e);
            }
        }
        let mut sum = hsum256(vsum) as f64;
        for v in tail.iter_mut() {
            *v = exp_scalar(*v - max);
            sum += *v as f64;
        }
        let inv = (1.0 / sum) as f32;
        let vinv = _mm256_set1_ps(inv);
        for c in body.chunks_exact_mut(8) {
            // SAFETY: `c` holds exactly 8 f32.
            unsafe {
                let v = _mm256_mul_ps(_mm256_loadu_ps(c.as_ptr()), vinv);
                _mm256_storeu_ps(c.as_mut_ptr(), v);
            }
        }
        for v in tail.iter_mut() {
            *v *= inv;
        }
        max as f64 + sum.ln()
    }

    #[target_feature(enable = "avx512f,fma,popcnt")]
    pub(super) fn exp_candidates_avx512(row: &mut [f32], frac: f32, out: &mut [u32]) -> ExpSelect {
        let [r] = exp_candidates_rows_avx512::<1>(row, row.len(), frac, out);
        r
    }

    /// [`exp_candidates_avx512`] on four rows of `k` values (`out` at least `4k` long, row
    /// `r`'s indices at `out[r·k..]`): per row the same operations in the same order, the four
    /// rows interleaved.
    #[target_feature(enable = "avx512f,fma,popcnt")]
    pub(super) fn exp_candidates4_avx512(
        rows: &mut [f32],
        k: usize,
        frac: f32,
        out: &mut [u32],
    ) -> [ExpSelect; 4] {
        exp_candidates_rows_avx512::<4>(rows, k, frac, out)
    }

    /// The candidates of [`super::exp_candidates_at`] for `R` rows of `k` values (`rows`
    /// holds `R·k`, `out` at least as many, row `r`'s indices at `out[r·k..]`), the rows'
    /// vector steps interleaved: the maximum, then per 16 values the exponentials, their sums
    /// and the compressed indices of the candidates; the last `k mod 16` values of each row
    /// one by one ([`exp_scalar`]).
    #[inline]
    #[target_feature(enable = "avx512f,fma,popcnt")]
    fn exp_candidates_rows_avx512<const R: usize>(
        rows: &mut [f32],
        k: usize,
        frac: f32,
        out: &mut [u32],
    ) -> [ExpSelect; R] {
        assert!(rows.len() == R * k && out.len() >= R * k);
        let body = k / 16 * 16;
        let (mut max, mut vm) = ([0f32; R], [_mm512_setzero_ps(); R]);
        for r in 0..R {
            let row = &rows[r * k..(r + 1) * k];
            let mut vmax = _mm512_set1_ps(f32::NEG_INFINITY);
            for c in row[..body].chunks_exact(16) {
                // SAFETY: `c` holds exactly 16 f32.
                vmax = _mm512_max_ps(vmax, unsafe { _mm512_loadu_ps(c.as_ptr()) });
            }
            max[r] = row[body..]
                .iter()
                .fold(_mm512_reduce_max_ps(vmax), |m, &v| m.max(v));
            vm[r] = _mm512_set1_ps(max[r]);
        }
        let vfrac = _mm512_set1_ps(frac);
        let (mut vsum, mut vrest) = ([_mm512_setzero_ps(); R], [_mm512_setzero_ps(); R]);
        let mut n = [0usize; R];
        let step = _mm512_set1_epi32(16);
        let mut idx = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        for j in (0..body).step_by(16) {
            for r in 0..R {
                // SAFETY: r·k + j + 16 ≤ r·k + body ≤ rows.len(); the store writes 16 lanes at
                // out[r·k + n_r..] with n_r ≤ j, so below r·k + body ≤ out.len().
                unsafe {
                    let p = rows.as_mut_ptr().add(r * k + j);
                    let e = exp512_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(p), vm[r]));
                    _mm512_storeu_ps(p, e);
                    vsum[r] = _mm512_add_ps(vsum[r], e);
                    let keep = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(e, vfrac);
                    vrest[r] = _mm512_mask_add_ps(vrest[r], !keep, vrest[r], e);
                    // Compress in a register, then store all 16 lanes (the compressing store
                    // to memory is microcoded and slow on some CPUs).
                    let packed = _mm512_maskz_compress_epi32(keep, idx);
                    _mm512_storeu_si512(out.as_mut_ptr().add(r * k + n[r]) as *mut _, packed);
                    n[r] += keep.count_ones() as usize;
                }
            }
            idx = _mm512_add_epi32(idx, step);
        }
        let mut found = [ExpSelect {
            max: 0.0,
            sum: 0.0,
            rest: 0.0,
            count: 0,
        }; R];
        for (r, f) in found.iter_mut().enumerate() {
            let row = &mut rows[r * k..(r + 1) * k];
            let mut sum = _mm512_reduce_add_ps(vsum[r]) as f64;
            for v in row[body..].iter_mut() {
                *v = exp_scalar(*v - max[r]);
                sum += *v as f64;
            }
            let rest = _mm512_reduce_add_ps(vrest[r]) as f64;
            let out = &mut out[r * k..(r + 1) * k];
            *f = select_rest(row, body, frac, max[r], sum, n[r], rest, out);
        }
        found
    }

    /// Transposes the 16 × 16 block held by `r` (row `i` in `r[i]`) in registers: afterwards
    /// `r[j]` holds column `j`. Unpacks within 128-bit lanes, then 128-bit lane shuffles.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn transpose16(r: &mut [__m512; 16]) {
        let mut t = [_mm512_setzero_ps(); 16];
        for p in 0..8 {
            t[2 * p] = _mm512_unpacklo_ps(r[2 * p], r[2 * p + 1]);
            t[2 * p + 1] = _mm512_unpackhi_ps(r[2 * p], r[2 * p + 1]);
        }
        // u[4q + m], 128-bit lane L: column 4L + m of rows 4q..4q+3.
        let mut u = [_mm512_setzero_ps(); 16];
        for q in 0..4 {
            u[4 * q] = _mm512_shuffle_ps::<0x44>(t[4 * q], t[4 * q + 2]);
            u[4 * q + 1] = _mm512_shuffle_ps::<0xEE>(t[4 * q], t[4 * q + 2]);
            u[4 * q + 2] = _mm512_shuffle_ps::<0x44>(t[4 * q + 1], t[4 * q + 3]);
            u[4 * q + 3] = _mm512_shuffle_ps::<0xEE>(t[4 * q + 1], t[4 * q + 3]);
        }
        // Column 4L + m gathers lane L of u[m], u[4+m], u[8+m], u[12+m].
        for m in 0..4 {
            let p0 = _mm512_shuffle_f32x4::<0x44>(u[m], u[4 + m]);
            let p1 = _mm512_shuffle_f32x4::<0xEE>(u[m], u[4 + m]);
            let q0 = _mm512_shuffle_f32x4::<0x44>(u[8 + m], u[12 + m]);
            let q1 = _mm512_shuffle_f32x4::<0xEE>(u[8 + m], u[12 + m]);
            r[m] = _mm512_shuffle_f32x4::<0x88>(p0, q0);
            r[4 + m] = _mm512_shuffle_f32x4::<0xDD>(p0, q0);
            r[8 + m] = _mm512_shuffle_f32x4::<0x88>(p1, q1);
            r[12 + m] = _mm512_shuffle_f32x4::<0xDD>(p1, q1);
        }
    }

    /// [`super::transpose_log_densities_scalar`] in 16 × 16 tiles transposed in registers (the
    /// last tile of a row masked when K is not a multiple of 16), with the running maxima of
    /// the 16 rows in one vector; the rows of the next tile down are prefetched (the product
    /// was just written and sits in L2).
    #[target_feature(enable = "avx512f")]
    pub(super) fn transpose_log_densities_avx512(
        post: &[f32],
        rows: usize,
        bias: &[f32],
        lt: &mut [f32],
        stride: usize,
        max: &mut [f32],
    ) {
        let k = bias.len();
        let mut r = [_mm512_setzero_ps(); 16];
        for i0 in (0..rows).step_by(16) {
            let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
            for c0 in (0..k).step_by(16) {
                let width = (k - c0).min(16);
                let mask = if width == 16 {
                    u16::MAX
                } else {
                    (1u16 << width) - 1
                };
                // SAFETY (loads and prefetches): row i0 + i < rows of `post` (rows·K values
                // checked), columns c0..c0 + width within it and within `bias`; masked lanes
                // are not read. The prefetch is a hint, issued for rows within the block.
                let b = unsafe { _mm512_maskz_loadu_ps(mask, bias.as_ptr().add(c0)) };
                for (i, v) in r.iter_mut().enumerate() {
                    let at = (i0 + i) * k + c0;
                    unsafe {
                        *v = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, post.as_ptr().add(at)), b);
                        if i0 + 16 < rows {
                            _mm_prefetch::<_MM_HINT_T0>(post.as_ptr().add(at + 16 * k).cast());
                        }
                    }
                }
                transpose16(&mut r);
                let out = lt.as_mut_ptr();
                if width == 16 {
                    for (j, v) in r.iter().enumerate() {
                        m = _mm512_max_ps(m, *v);
                        // SAFETY: c0 + j < K and i0 + 16 ≤ rows ≤ stride: within row c0 + j.
                        unsafe { _mm512_storeu_ps(out.add((c0 + j) * stride + i0), *v) };
                    }
                } else {
                    for (j, v) in r.iter().enumerate().take(width) {
                        m = _mm512_max_ps(m, *v);
                        // SAFETY: as above.
                        unsafe { _mm512_storeu_ps(out.add((c0 + j) * stride + i0), *v) };
                    }
                }
            }
            // SAFETY: i0 + 16 ≤ rows ≤ max.len().
            unsafe { _mm512_storeu_ps(max.as_mut_ptr().add(i0), m) };
        }
    }

    /// The `[δ², δ]` of [`super::log_densities_direct_at`] in slabs of 16 rows: slab `s` holds
    /// value `j` of rows `16s..16s + 16` at `slabs[(s·2d + j)·16..][..16]` (rows past the end
    /// zero). 16 × 16 tiles of `δ` transposed in registers. Returns whether `x` is finite.
    #[target_feature(enable = "avx512f")]
    pub(super) fn shift_square_slabs_avx512(
        x: &[f32],
        d: usize,
        shift: Option<&[f32]>,
        slabs: &mut [f32],
    ) -> bool {
        let n = x.len() / d;
        let expo = _mm512_set1_epi32(0x7f80_0000);
        let mut bad: u16 = 0;
        for (s, slab) in slabs
            .chunks_exact_mut(32 * d)
            .take(n.div_ceil(16))
            .enumerate()
        {
            let rows = (n - 16 * s).min(16);
            for j0 in (0..d).step_by(16) {
                let width = (d - j0).min(16);
                let m = if width == 16 {
                    u16::MAX
                } else {
                    (1u16 << width) - 1
                };
                // SAFETY: the lanes of mask m are j0..j0 + width ≤ d: within the shift and
                // within row 16s + i < n of x; masked lanes are not read.
                let c = match shift {
                    Some(c) => unsafe { _mm512_maskz_loadu_ps(m, c.as_ptr().add(j0)) },
                    None => _mm512_setzero_ps(),
                };
                let mut r = [_mm512_setzero_ps(); 16];
                for (i, v) in r.iter_mut().enumerate().take(rows) {
                    let a =
                        unsafe { _mm512_maskz_loadu_ps(m, x.as_ptr().add((16 * s + i) * d + j0)) };
                    let bits = _mm512_and_si512(_mm512_castps_si512(a), expo);
                    bad |= _mm512_cmpeq_epi32_mask(bits, expo);
                    *v = _mm512_sub_ps(a, c);
                }
                transpose16(&mut r);
                for (t, v) in r.iter().enumerate().take(width) {
                    // SAFETY: j0 + t < d, so both values lie within the slab's 2d × 16.
                    unsafe {
                        let at = slab.as_mut_ptr().add((j0 + t) * 16);
                        _mm512_storeu_ps(at, _mm512_mul_ps(*v, *v));
                        _mm512_storeu_ps(at.add(d * 16), *v);
                    }
                }
            }
        }
        bad == 0
    }

    /// One register tile of [`log_densities_slabs_avx512`]: `MR` slabs × `NR` components, the
    /// 2d products summed in registers, then the bias added, stored component-major and
    /// folded into the running maxima.
    ///
    /// # Safety
    /// `slabs` holds `MR` slabs of `two_d × 16`, `tile` `two_d × NR` values, `bias` `NR`;
    /// `out` row `t < NR` at `t·stride` has `16·MR` writable values.
    // Indices over the tile's rows and columns read as the register tile they name.
    #[allow(clippy::needless_range_loop)]
    #[inline]
    #[target_feature(enable = "avx512f,fma")]
    unsafe fn density_tile<const MR: usize, const NR: usize>(
        slabs: *const f32,
        two_d: usize,
        tile: *const f32,
        bias: *const f32,
        out: *mut f32,
        stride: usize,
        max: &mut [__m512; DENSITY_SLABS],
    ) {
        let mut acc = [[_mm512_setzero_ps(); NR]; MR];
        for j in 0..two_d {
            let mut a = [_mm512_setzero_ps(); MR];
            for (m, a) in a.iter_mut().enumerate() {
                *a = unsafe { _mm512_loadu_ps(slabs.add((m * two_d + j) * 16)) };
            }
            for t in 0..NR {
                let b = _mm512_set1_ps(unsafe { *tile.add(j * NR + t) });
                for m in 0..MR {
                    acc[m][t] = _mm512_fmadd_ps(a[m], b, acc[m][t]);
                }
            }
        }
        for t in 0..NR {
            let b = _mm512_set1_ps(unsafe { *bias.add(t) });
            for m in 0..MR {
                let v = _mm512_add_ps(acc[m][t], b);
                max[m] = _mm512_max_ps(max[m], v);
                unsafe { _mm512_storeu_ps(out.add(t * stride + m * 16), v) };
            }
        }
    }

    /// [`density_tile`] for a tile of `nr` components.
    ///
    /// # Safety
    /// As [`density_tile`] with `NR = nr`, `1 ≤ nr ≤ DENSITY_TILE`.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx512f,fma")]
    unsafe fn density_tile_any<const MR: usize>(
        nr: usize,
        slabs: *const f32,
        two_d: usize,
        tile: *const f32,
        bias: *const f32,
        out: *mut f32,
        stride: usize,
        max: &mut [__m512; DENSITY_SLABS],
    ) {
        macro_rules! widths {
            ($($w:literal)*) => {
                match nr {
                    $($w => unsafe {
                        density_tile::<MR, $w>(slabs, two_d, tile, bias, out, stride, max)
                    },)*
                    _ => unreachable!("density tile of width {nr}"),
                }
            };
        }
        const _: () = assert!(DENSITY_TILE == 14, "list every tile width below");
        widths!(1 2 3 4 5 6 7 8 9 10 11 12 13 14)
    }

    /// [`super::log_densities_direct_at`] a pair of slabs (32 rows) at a time: their `[δ², δ]`
    /// transposed into `slabs` ([`shift_square_slabs_avx512`]), then against each tile of
    /// components in turn, so the pair's 2d × 32 values are written and read in L1 while the
    /// packed coefficients stream from L2; the maxima stay in registers across the tiles.
    /// Returns whether `x` is finite.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,fma")]
    pub(super) fn log_densities_slabs_avx512(
        x: &[f32],
        d: usize,
        shift: Option<&[f32]>,
        slabs: &mut [f32],
        tiles: &[f32],
        bias: &[f32],
        lt: &mut [f32],
        stride: usize,
        max: &mut [f32],
        ahead: &[f32],
    ) -> bool {
        let (k, n, two_d) = (bias.len(), x.len() / d, 2 * d);
        let n_slabs = n.div_ceil(16);
        let mut finite = true;
        // `ahead` in equal pieces of whole lines, one before each tile's products.
        let calls = n_slabs.div_ceil(DENSITY_SLABS) * k.div_ceil(DENSITY_TILE);
        let piece = ahead
            .len()
            .div_ceil(calls.max(1))
            .next_multiple_of(16)
            .max(16);
        let mut pieces = ahead.chunks(piece);
        let mut s = 0;
        while s < n_slabs {
            let mr = if n_slabs - s >= DENSITY_SLABS {
                DENSITY_SLABS
            } else {
                1
            };
            let mut mx = [_mm512_set1_ps(f32::NEG_INFINITY); DENSITY_SLABS];
            let rows = &x[16 * s * d..(16 * (s + mr)).min(n) * d];
            finite &= shift_square_slabs_avx512(rows, d, shift, slabs);
            // SAFETY (pointers): the mr slabs lie within `slabs` (DENSITY_SLABS · two_d · 16
            // checked by the caller), tile c0 at c0·two_d within `tiles` (two_d · K), rows
            // c0.. of lt at column 16s with 16·mr ≤ stride − 16s lanes, maxima 16s + 16·mr ≤
            // 16·n_slabs ≤ max.len().
            let sp = slabs.as_ptr();
            for range in super::density_tiles(k) {
                let (c0, nr) = (range.start, range.len());
                if let Some(p) = pieces.next() {
                    super::prefetch(p);
                }
                unsafe {
                    let tp = tiles.as_ptr().add(c0 * two_d);
                    let (bp, op) = (
                        bias.as_ptr().add(c0),
                        lt.as_mut_ptr().add(c0 * stride + 16 * s),
                    );
                    if mr == DENSITY_SLABS {
                        density_tile_any::<DENSITY_SLABS>(
                            nr, sp, two_d, tp, bp, op, stride, &mut mx,
                        )
                    } else {
                        density_tile_any::<1>(nr, sp, two_d, tp, bp, op, stride, &mut mx)
                    }
                }
            }
            for (m, v) in mx.iter().enumerate().take(mr) {
                unsafe { _mm512_storeu_ps(max.as_mut_ptr().add(16 * (s + m)), *v) };
            }
            s += mr;
        }
        finite
    }

    /// [`super::exp_select_columns_scalar`] 16 rows at a time: the kept rows and values of a
    /// vector are compressed in registers and stored whole (the pair lists have 16 values of
    /// slack, [`super::reserve_pairs`]).
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,fma,popcnt")]
    pub(super) unsafe fn exp_select_columns_avx512(
        lt: &[f32],
        n: usize,
        stride: usize,
        max: &[f32],
        frac: f32,
        cut: f32,
        sum: &mut [f32],
        rest: &mut [f32],
        starts: &mut [u32],
        rows: &mut Vec<u32>,
        w: &mut Vec<f32>,
    ) -> usize {
        let (k, lanes) = (starts.len() - 1, n.next_multiple_of(16));
        let (vfrac, vcut) = (_mm512_set1_ps(frac), _mm512_set1_ps(cut));
        let step = _mm512_set1_epi32(16);
        let mut np = 0usize;
        for (c, start) in starts[..k].iter_mut().enumerate() {
            *start = np as u32;
            super::reserve_pairs(rows, w, np + n);
            let (rp, wp) = (rows.as_mut_ptr(), w.as_mut_ptr());
            let mut idx = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
            for i in (0..lanes).step_by(16) {
                let valid = if n - i >= 16 {
                    u16::MAX
                } else {
                    (1u16 << (n - i)) - 1
                };
                // SAFETY: i + 16 ≤ lanes ≤ stride within row c of `lt`, and ≤ the lengths of
                // `max`, `sum`, `rest` (checked by the caller); the stores land below
                // np + n + 16 ≤ the lists' length (reserve_pairs), as np grows by at most i
                // within this component.
                unsafe {
                    let l = _mm512_loadu_ps(lt.as_ptr().add(c * stride + i));
                    let x = _mm512_sub_ps(l, _mm512_loadu_ps(max.as_ptr().add(i)));
                    // The lanes that are not negligible (NaN included); on real descriptors
                    // most of a component's vectors have none (2-3 % of a K = 64 EM step).
                    let near = _mm512_mask_cmp_ps_mask::<_CMP_NLT_UQ>(valid, x, vcut);
                    if near == 0 {
                        idx = _mm512_add_epi32(idx, step);
                        continue;
                    }
                    let e = exp512_nonpositive(x);
                    let s = _mm512_loadu_ps(sum.as_ptr().add(i));
                    _mm512_storeu_ps(sum.as_mut_ptr().add(i), _mm512_mask_add_ps(s, near, s, e));
                    let keep = _mm512_mask_cmp_ps_mask::<_CMP_GE_OQ>(near, e, vfrac);
                    let r = _mm512_loadu_ps(rest.as_ptr().add(i));
                    let left = near & !keep;
                    _mm512_storeu_ps(rest.as_mut_ptr().add(i), _mm512_mask_add_ps(r, left, r, e));
                    _mm512_storeu_si512(
                        rp.add(np) as *mut _,
                        _mm512_maskz_compress_epi32(keep, idx),
                    );
                    _mm512_storeu_ps(wp.add(np), _mm512_maskz_compress_ps(keep, e));
                    np += keep.count_ones() as usize;
                }
                idx = _mm512_add_epi32(idx, step);
            }
        }
        np
    }

    /// [`super::exp_select_columns_scalar`] 8 rows at a time; the kept lanes are written one
    /// by one from the comparison's bits (AVX2 has no compressing store).
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp_select_columns_avx2(
        lt: &[f32],
        n: usize,
        stride: usize,
        max: &[f32],
        frac: f32,
        cut: f32,
        sum: &mut [f32],
        rest: &mut [f32],
        starts: &mut [u32],
        rows: &mut Vec<u32>,
        w: &mut Vec<f32>,
    ) -> usize {
        let (k, lanes) = (starts.len() - 1, n.next_multiple_of(16));
        let (vfrac, vcut) = (_mm256_set1_ps(frac), _mm256_set1_ps(cut));
        let mut np = 0usize;
        let mut e8 = [0f32; 8];
        for (c, start) in starts[..k].iter_mut().enumerate() {
            *start = np as u32;
            super::reserve_pairs(rows, w, np + n);
            for i in (0..lanes).step_by(8) {
                // Lanes from n on are scratch (i may pass n in the last 16).
                let valid = (1u32 << n.saturating_sub(i).min(8)) - 1;
                // SAFETY: i + 8 ≤ lanes ≤ stride within row c of `lt`, and ≤ the lengths of
                // `max`, `sum`, `rest` (checked by the caller).
                let mut bits = unsafe {
                    let l = _mm256_loadu_ps(lt.as_ptr().add(c * stride + i));
                    let x = _mm256_sub_ps(l, _mm256_loadu_ps(max.as_ptr().add(i)));
                    // The lanes that are not negligible (NaN included); negligible ones add
                    // nothing (+0 leaves a sum as it is).
                    let near = _mm256_cmp_ps::<_CMP_NLT_UQ>(x, vcut);
                    if _mm256_movemask_ps(near) as u32 & valid == 0 {
                        continue;
                    }
                    let e = _mm256_and_ps(near, exp256(x));
                    let s = _mm256_loadu_ps(sum.as_ptr().add(i));
                    _mm256_storeu_ps(sum.as_mut_ptr().add(i), _mm256_add_ps(s, e));
                    let keep = _mm256_cmp_ps::<_CMP_GE_OQ>(e, vfrac);
                    let r = _mm256_loadu_ps(rest.as_ptr().add(i));
                    let r = _mm256_add_ps(r, _mm256_andnot_ps(keep, e));
                    _mm256_storeu_ps(rest.as_mut_ptr().add(i), r);
                    _mm256_storeu_ps(e8.as_mut_ptr(), e);
                    _mm256_movemask_ps(keep) as u32 & valid
                };
                while bits != 0 {
                    let b = bits.trailing_zeros() as usize;
                    rows[np] = (i + b) as u32;
                    w[np] = e8[b];
                    np += 1;
                    bits &= bits - 1;
                }
            }
        }
        np
    }

    /// As [`exp_candidates_avx512`] with 8-lane vectors; the selection stores every index and
    /// advances by the comparison (AVX2 has no compressed store).
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn exp_candidates_avx2(row: &mut [f32], frac: f32, out: &mut [u32]) -> ExpSelect {
        let body = row.len() / 8 * 8;
        let mut vmax = _mm256_set1_ps(f32::NEG_INFINITY);
        for c in row[..body].chunks_exact(8) {
            // SAFETY: `c` holds exactly 8 f32.
            vmax = _mm256_max_ps(vmax, unsafe { _mm256_loadu_ps(c.as_ptr()) });
        }
        let max = row[body..].iter().fold(hmax256(vmax), |m, &v| m.max(v));
        let (vm, vfrac) = (_mm256_set1_ps(max), _mm256_set1_ps(frac));
        let (mut vsum, mut vrest) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut n = 0usize;
        for (ci, c) in row[..body].chunks_exact_mut(8).enumerate() {
            // SAFETY: `c` holds exactly 8 f32.
            let keep = unsafe {
                let e = exp256(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), vm));
                _mm256_storeu_ps(c.as_mut_ptr(), e);
                vsum = _mm256_add_ps(vsum, e);
                let keep = _mm256_cmp_ps::<_CMP_GE_OQ>(e, vfrac);
                vrest = _mm256_add_ps(vrest, _mm256_andnot_ps(keep, e));
                _mm256_movemask_ps(keep) as u32
            };
            for b in 0..8 {
                out[n] = (8 * ci + b) as u32;
                n += (keep >> b & 1) as usize;
            }
        }
        let mut sum = hsum256(vsum) as f64;
        for v in row[body..].iter_mut() {
            *v = exp_scalar(*v - max);
            sum += *v as f64;
        }
        let rest = hsum256(vrest) as f64;
        select_rest(row, body, frac, max, sum, n, rest, out)
    }

    /// `[v², v]` rows 16 lanes at a time, the last vector of a row masked when `d` is not a
    /// multiple of 16; see [`super::shift_square_at`].
    #[target_feature(enable = "avx512f")]
    pub(super) fn shift_square_avx512(
        x: &[f32],
        d: usize,
        shift: Option<&[f32]>,
        aug: &mut [f32],
    ) -> bool {
        let expo = _mm512_set1_epi32(0x7f80_0000);
        let mut bad: u16 = 0;
        for (row, out) in x.chunks_exact(d).zip(aug.chunks_exact_mut(2 * d)) {
            for j in (0..d).step_by(16) {
                let m = if d - j >= 16 {
                    u16::MAX
                } else {
                    (1u16 << (d - j)) - 1
                };
                // SAFETY: the lanes of mask m are j..min(j + 16, d): within the row, the
                // shift (d values) and both halves of `out` (2d values); masked lanes are
                // neither read nor written.
                unsafe {
                    let a = _mm512_maskz_loadu_ps(m, row.as_ptr().add(j));
                    let bits = _mm512_and_si512(_mm512_castps_si512(a), expo);
                    bad |= _mm512_cmpeq_epi32_mask(bits, expo);
                    let c = match shift {
                        Some(c) => _mm512_maskz_loadu_ps(m, c.as_ptr().add(j)),
                        None => _mm512_setzero_ps(),
                    };
                    let v = _mm512_sub_ps(a, c);
                    _mm512_mask_storeu_ps(out.as_mut_ptr().add(j), m, _mm512_mul_ps(v, v));
                    _mm512_mask_storeu_ps(out.as_mut_ptr().add(d + j), m, v);
                }
            }
        }
        bad == 0
    }

    /// As [`shift_square_avx512`], 8 lanes at a time, the last `d mod 8` values of a row one
    /// by one.
    #[target_feature(enable = "avx2")]
    pub(super) fn shift_square_avx2(
        x: &[f32],
        d: usize,
        shift: Option<&[f32]>,
        aug: &mut [f32],
    ) -> bool {
        let expo = _mm256_set1_epi32(0x7f80_0000);
        let mut bad = _mm256_setzero_si256();
        let body = d / 8 * 8;
        let mut tail_finite = true;
        for (row, out) in x.chunks_exact(d).zip(aug.chunks_exact_mut(2 * d)) {
            for j in (0..body).step_by(8) {
                // SAFETY: j + 8 ≤ d: within the row, the shift (d values) and both halves of
                // `out` (2d values).
                unsafe {
                    let a = _mm256_loadu_ps(row.as_ptr().add(j));
                    let bits = _mm256_and_si256(_mm256_castps_si256(a), expo);
                    bad = _mm256_or_si256(bad, _mm256_cmpeq_epi32(bits, expo));
                    let c = match shift {
                        Some(c) => _mm256_loadu_ps(c.as_ptr().add(j)),
                        None => _mm256_setzero_ps(),
                    };
                    let v = _mm256_sub_ps(a, c);
                    _mm256_storeu_ps(out.as_mut_ptr().add(j), _mm256_mul_ps(v, v));
                    _mm256_storeu_ps(out.as_mut_ptr().add(d + j), v);
                }
            }
            for j in body..d {
                tail_finite &= row[j].is_finite();
                let v = row[j] - shift.map_or(0.0, |c| c[j]);
                out[j] = v * v;
                out[d + j] = v;
            }
        }
        tail_finite && _mm256_testz_si256(bad, bad) == 1
    }

    #[inline]
    #[target_feature(enable = "avx512f,fma")]
    pub(super) fn axpy_avx512(a: f32, x: &[f32], y: &mut [f32]) {
        let va = _mm512_set1_ps(a);
        let n = x.len() / 16 * 16;
        for (xc, yc) in x[..n].chunks_exact(16).zip(y[..n].chunks_exact_mut(16)) {
            // SAFETY: both chunks hold exactly 16 f32.
            unsafe {
                let v = _mm512_fmadd_ps(
                    va,
                    _mm512_loadu_ps(xc.as_ptr()),
                    _mm512_loadu_ps(yc.as_ptr()),
                );
                _mm512_storeu_ps(yc.as_mut_ptr(), v);
            }
        }
        axpy_scalar(a, &x[n..], &mut y[n..]);
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn axpy_avx2(a: f32, x: &[f32], y: &mut [f32]) {
        let va = _mm256_set1_ps(a);
        let n = x.len() / 8 * 8;
        for (xc, yc) in x[..n].chunks_exact(8).zip(y[..n].chunks_exact_mut(8)) {
            // SAFETY: both chunks hold exactly 8 f32.
            unsafe {
                let v = _mm256_fmadd_ps(
                    va,
                    _mm256_loadu_ps(xc.as_ptr()),
                    _mm256_loadu_ps(yc.as_ptr()),
                );
                _mm256_storeu_ps(yc.as_mut_ptr(), v);
            }
        }
        axpy_scalar(a, &x[n..], &mut y[n..]);
    }

    /// Indices of the lanes at or above the threshold, compressed into `out` 16 at a time.
    #[target_feature(enable = "avx512f,popcnt")]
    pub(super) fn select_at_least_avx512(row: &[f32], threshold: f32, out: &mut [u32]) -> usize {
        let t = _mm512_set1_ps(threshold);
        let step = _mm512_set1_epi32(16);
        let mut idx = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let mut chunks = row.chunks_exact(16);
        let mut n = 0usize;
        for ch in &mut chunks {
            // SAFETY: `ch` holds exactly 16 f32; the store writes 16 values at `out[n..]`
            // (the first popcount(mask) of them selected), and n + 16 ≤ (index of this chunk)
            // + 16 ≤ row.len() ≤ out.len().
            unsafe {
                let v = _mm512_loadu_ps(ch.as_ptr());
                let mask = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(v, t);
                // Compress in a register, then store all 16 lanes: the compressing store to
                // memory is microcoded and slow on some CPUs.
                let packed = _mm512_maskz_compress_epi32(mask, idx);
                _mm512_storeu_si512(out.as_mut_ptr().add(n) as *mut _, packed);
                n += mask.count_ones() as usize;
            }
            idx = _mm512_add_epi32(idx, step);
        }
        let base = row.len() - chunks.remainder().len();
        for (j, &g) in chunks.remainder().iter().enumerate() {
            out[n] = (base + j) as u32;
            n += (g >= threshold) as usize;
        }
        n
    }

    /// Sums the eight lanes in [`lane_sum`]'s order.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn lane_sum512(acc: __m512d) -> f64 {
        let q = _mm256_add_pd(
            _mm512_castpd512_pd256(acc),
            _mm512_extractf64x4_pd::<1>(acc),
        );
        lane_sum256(q)
    }

    /// `[a0+a4, a1+a5, a2+a6, a3+a7]` summed in [`lane_sum`]'s order.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn lane_sum256(q: __m256d) -> f64 {
        let h = _mm_add_pd(_mm256_castpd256_pd128(q), _mm256_extractf128_pd::<1>(q));
        _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)))
    }

    /// Vector lanes back into the array of partial sums, for the scalar tail.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn lanes512(acc: __m512d) -> [f64; F64_LANES] {
        let mut a = [0f64; F64_LANES];
        // SAFETY: `a` holds exactly 8 f64.
        unsafe { _mm512_storeu_pd(a.as_mut_ptr(), acc) };
        a
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn lanes256(lo: __m256d, hi: __m256d) -> [f64; F64_LANES] {
        let mut a = [0f64; F64_LANES];
        // SAFETY: `a` holds exactly 8 f64.
        unsafe {
            _mm256_storeu_pd(a.as_mut_ptr(), lo);
            _mm256_storeu_pd(a.as_mut_ptr().add(4), hi);
        }
        a
    }

    #[inline]
    #[target_feature(enable = "avx512f,fma")]
    pub(super) fn centre_quad_avx512(x: &[f64], m: &[f64], l: &[f64], delta: &mut [f64]) -> f64 {
        let d = x.len();
        let whole = d / F64_LANES * F64_LANES;
        let mut acc = _mm512_setzero_pd();
        for j in (0..whole).step_by(F64_LANES) {
            // SAFETY: j + 8 ≤ whole ≤ the length of all four slices (the caller's split).
            unsafe {
                let t = _mm512_sub_pd(
                    _mm512_loadu_pd(x.as_ptr().add(j)),
                    _mm512_loadu_pd(m.as_ptr().add(j)),
                );
                _mm512_storeu_pd(delta.as_mut_ptr().add(j), t);
                let q = _mm512_mul_pd(_mm512_mul_pd(t, t), _mm512_loadu_pd(l.as_ptr().add(j)));
                acc = _mm512_add_pd(acc, q);
            }
        }
        if whole == d {
            return lane_sum512(acc);
        }
        let mut a = lanes512(acc);
        for j in whole..d {
            let t = x[j] - m[j];
            delta[j] = t;
            a[j - whole] += t * t * l[j];
        }
        lane_sum(&a)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn centre_quad_avx2(x: &[f64], m: &[f64], l: &[f64], delta: &mut [f64]) -> f64 {
        let d = x.len();
        let whole = d / F64_LANES * F64_LANES;
        let (mut lo, mut hi) = (_mm256_setzero_pd(), _mm256_setzero_pd());
        for j in (0..whole).step_by(F64_LANES) {
            // SAFETY: j + 8 ≤ whole ≤ the length of all four slices (the caller's split).
            unsafe {
                for (h, acc) in [(0usize, &mut lo), (4, &mut hi)] {
                    let t = _mm256_sub_pd(
                        _mm256_loadu_pd(x.as_ptr().add(j + h)),
                        _mm256_loadu_pd(m.as_ptr().add(j + h)),
                    );
                    _mm256_storeu_pd(delta.as_mut_ptr().add(j + h), t);
                    let q =
                        _mm256_mul_pd(_mm256_mul_pd(t, t), _mm256_loadu_pd(l.as_ptr().add(j + h)));
                    *acc = _mm256_add_pd(*acc, q);
                }
            }
        }
        if whole == d {
            return lane_sum256(_mm256_add_pd(lo, hi));
        }
        let mut a = lanes256(lo, hi);
        for j in whole..d {
            let t = x[j] - m[j];
            delta[j] = t;
            a[j - whole] += t * t * l[j];
        }
        lane_sum(&a)
    }

    #[inline]
    #[target_feature(enable = "avx512f,fma")]
    pub(super) fn moments_avx512(g: f64, delta: &[f64], a1: &mut [f64], a2: &mut [f64]) {
        let d = delta.len();
        let whole = d / F64_LANES * F64_LANES;
        let vg = _mm512_set1_pd(g);
        for j in (0..whole).step_by(F64_LANES) {
            // SAFETY: j + 8 ≤ whole ≤ the length of all three slices (the caller's split).
            unsafe {
                let t = _mm512_loadu_pd(delta.as_ptr().add(j));
                let gt = _mm512_mul_pd(vg, t);
                let p1 = a1.as_mut_ptr().add(j);
                let p2 = a2.as_mut_ptr().add(j);
                _mm512_storeu_pd(p1, _mm512_add_pd(_mm512_loadu_pd(p1), gt));
                _mm512_storeu_pd(p2, _mm512_add_pd(_mm512_loadu_pd(p2), _mm512_mul_pd(gt, t)));
            }
        }
        moments_body(g, &delta[whole..], &mut a1[whole..], &mut a2[whole..]);
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn moments_avx2(g: f64, delta: &[f64], a1: &mut [f64], a2: &mut [f64]) {
        let d = delta.len();
        let whole = d / 4 * 4;
        let vg = _mm256_set1_pd(g);
        for j in (0..whole).step_by(4) {
            // SAFETY: j + 4 ≤ whole ≤ the length of all three slices (the caller's split).
            unsafe {
                let t = _mm256_loadu_pd(delta.as_ptr().add(j));
                let gt = _mm256_mul_pd(vg, t);
                let p1 = a1.as_mut_ptr().add(j);
                let p2 = a2.as_mut_ptr().add(j);
                _mm256_storeu_pd(p1, _mm256_add_pd(_mm256_loadu_pd(p1), gt));
                _mm256_storeu_pd(p2, _mm256_add_pd(_mm256_loadu_pd(p2), _mm256_mul_pd(gt, t)));
            }
        }
        moments_body(g, &delta[whole..], &mut a1[whole..], &mut a2[whole..]);
    }

    #[inline]
    #[target_feature(enable = "avx512f,fma")]
    pub(super) fn centred_poly_avx512(delta: &[f64], u: &[f64], v: &[f64]) -> f64 {
        let d = delta.len();
        let whole = d / F64_LANES * F64_LANES;
        let mut acc = _mm512_setzero_pd();
        for j in (0..whole).step_by(F64_LANES) {
            // SAFETY: j + 8 ≤ whole ≤ the length of all three slices (the caller's split).
            unsafe {
                let t = _mm512_loadu_pd(delta.as_ptr().add(j));
                let w = _mm512_add_pd(
                    _mm512_loadu_pd(u.as_ptr().add(j)),
                    _mm512_mul_pd(_mm512_loadu_pd(v.as_ptr().add(j)), t),
                );
                acc = _mm512_add_pd(acc, _mm512_mul_pd(t, w));
            }
        }
        if whole == d {
            return lane_sum512(acc);
        }
        let mut a = lanes512(acc);
        for j in whole..d {
            a[j - whole] += delta[j] * (u[j] + v[j] * delta[j]);
        }
        lane_sum(&a)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn centred_poly_avx2(delta: &[f64], u: &[f64], v: &[f64]) -> f64 {
        let d = delta.len();
        let whole = d / F64_LANES * F64_LANES;
        let (mut lo, mut hi) = (_mm256_setzero_pd(), _mm256_setzero_pd());
        for j in (0..whole).step_by(F64_LANES) {
            // SAFETY: j + 8 ≤ whole ≤ the length of all three slices (the caller's split).
            unsafe {
                for (h, acc) in [(0usize, &mut lo), (4, &mut hi)] {
                    let t = _mm256_loadu_pd(delta.as_ptr().add(j + h));
                    let w = _mm256_add_pd(
                        _mm256_loadu_pd(u.as_ptr().add(j + h)),
                        _mm256_mul_pd(_mm256_loadu_pd(v.as_ptr().add(j + h)), t),
                    );
                    *acc = _mm256_add_pd(*acc, _mm256_mul_pd(t, w));
                }
            }
        }
        if whole == d {
            return lane_sum256(_mm256_add_pd(lo, hi));
        }
        let mut a = lanes256(lo, hi);
        for j in whole..d {
            a[j - whole] += delta[j] * (u[j] + v[j] * delta[j]);
        }
        lane_sum(&a)
    }

    #[target_feature(enable = "avx512f,fma")]
    pub(super) fn centre_quad_sel_avx512(
        x: &[f64],
        ml: &[f64],
        sel: &[u32],
        q: &mut [f64],
        delta: &mut [f64],
    ) {
        let d = x.len();
        for (j, &c) in sel.iter().enumerate() {
            let (m, l) = ml[2 * c as usize * d..(2 * c as usize + 2) * d].split_at(d);
            q[j] = centre_quad_avx512(x, m, l, &mut delta[j * d..(j + 1) * d]);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn centre_quad_sel_avx2(
        x: &[f64],
        ml: &[f64],
        sel: &[u32],
        q: &mut [f64],
        delta: &mut [f64],
    ) {
        let d = x.len();
        for (j, &c) in sel.iter().enumerate() {
            let (m, l) = ml[2 * c as usize * d..(2 * c as usize + 2) * d].split_at(d);
            q[j] = centre_quad_avx2(x, m, l, &mut delta[j * d..(j + 1) * d]);
        }
    }

    #[target_feature(enable = "avx512f,fma")]
    pub(super) fn moments_sel_avx512(
        d: usize,
        sel: &[u32],
        w: &[f64],
        delta: &[f64],
        acc: &mut [f64],
    ) {
        for (j, &c) in sel.iter().enumerate() {
            if w[j] != 0.0 {
                let (a1, a2) = acc[2 * c as usize * d..(2 * c as usize + 2) * d].split_at_mut(d);
                moments_avx512(w[j], &delta[j * d..(j + 1) * d], a1, a2);
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn moments_sel_avx2(
        d: usize,
        sel: &[u32],
        w: &[f64],
        delta: &[f64],
        acc: &mut [f64],
    ) {
        for (j, &c) in sel.iter().enumerate() {
            if w[j] != 0.0 {
                let (a1, a2) = acc[2 * c as usize * d..(2 * c as usize + 2) * d].split_at_mut(d);
                moments_avx2(w[j], &delta[j * d..(j + 1) * d], a1, a2);
            }
        }
    }

    #[target_feature(enable = "avx512f,fma")]
    pub(super) fn centred_poly_sel_avx512(
        d: usize,
        sel: &[u32],
        mask: &[f64],
        delta: &[f64],
        uv: &[f64],
        out: &mut [f64],
    ) {
        for (j, &c) in sel.iter().enumerate() {
            if mask[j] != 0.0 {
                let (u, v) = uv[2 * c as usize * d..(2 * c as usize + 2) * d].split_at(d);
                out[j] = centred_poly_avx512(&delta[j * d..(j + 1) * d], u, v);
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn centred_poly_sel_avx2(
        d: usize,
        sel: &[u32],
        mask: &[f64],
        delta: &[f64],
        uv: &[f64],
        out: &mut [f64],
    ) {
        for (j, &c) in sel.iter().enumerate() {
            if mask[j] != 0.0 {
                let (u, v) = uv[2 * c as usize * d..(2 * c as usize + 2) * d].split_at(d);
                out[j] = centred_poly_avx2(&delta[j * d..(j + 1) * d], u, v);
            }
        }
    }

    /// Pointers to the rows and component terms of up to four pairs starting at `p`; missing
    /// pairs repeat pair `p` (computed and discarded). Each pointer comes from a slice of
    /// exactly `d` (row) or `2d` (terms) values.
    #[inline(always)]
    fn pair_ptrs(
        x: &[f32],
        d: usize,
        rows: &[u32],
        comps: &[u32],
        ml: &[f64],
        p: usize,
    ) -> ([*const f32; 4], [*const f64; 4]) {
        let row = |i: usize| x[rows[i] as usize * d..][..d].as_ptr();
        let terms = |i: usize| ml[2 * comps[i] as usize * d..][..2 * d].as_ptr();
        let mut xs = [row(p); 4];
        let mut ms = [terms(p); 4];
        for u in 1..(rows.len() - p).min(4) {
            xs[u] = row(p + u);
            ms[u] = terms(p + u);
        }
        (xs, ms)
    }

    /// Four pairs at once (see [`super::quad_pairs_at`]); lanes as in [`centre_quad_avx512`].
    #[target_feature(enable = "avx512f,fma")]
    pub(super) fn quad_pairs_avx512(
        x: &[f32],
        d: usize,
        rows: &[u32],
        comps: &[u32],
        ml: &[f64],
        q: &mut [f64],
    ) {
        let whole = d / F64_LANES * F64_LANES;
        for p in (0..rows.len()).step_by(4) {
            let (xs, ms) = pair_ptrs(x, d, rows, comps, ml, p);
            let mut acc = [_mm512_setzero_pd(); 4];
            for j in (0..whole).step_by(F64_LANES) {
                for u in 0..4 {
                    // SAFETY: j + 8 ≤ whole ≤ d: within the row (d values) and within both
                    // halves of the terms (2d values).
                    unsafe {
                        let xv = _mm512_cvtps_pd(_mm256_loadu_ps(xs[u].add(j)));
                        let t = _mm512_sub_pd(xv, _mm512_loadu_pd(ms[u].add(j)));
                        let l = _mm512_loadu_pd(ms[u].add(d + j));
                        acc[u] = _mm512_add_pd(acc[u], _mm512_mul_pd(_mm512_mul_pd(t, t), l));
                    }
                }
            }
            for u in 0..(rows.len() - p).min(4) {
                q[p + u] = if whole == d {
                    lane_sum512(acc[u])
                } else {
                    let mut a = lanes512(acc[u]);
                    // SAFETY: j < d, within the row and both halves of the terms.
                    unsafe {
                        for j in whole..d {
                            let t = *xs[u].add(j) as f64 - *ms[u].add(j);
                            a[j - whole] += t * t * *ms[u].add(d + j);
                        }
                    }
                    lane_sum(&a)
                };
            }
        }
    }

    /// Four pairs at once (see [`super::quad_pairs_at`]); lanes as in [`centre_quad_avx2`].
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn quad_pairs_avx2(
        x: &[f32],
        d: usize,
        rows: &[u32],
        comps: &[u32],
        ml: &[f64],
        q: &mut [f64],
    ) {
        let whole = d / F64_LANES * F64_LANES;
        for p in (0..rows.len()).step_by(4) {
            let (xs, ms) = pair_ptrs(x, d, rows, comps, ml, p);
            let mut lo = [_mm256_setzero_pd(); 4];
            let mut hi = [_mm256_setzero_pd(); 4];
            for j in (0..whole).step_by(F64_LANES) {
                for u in 0..4 {
                    for (h, acc) in [(0usize, &mut lo[u]), (4, &mut hi[u])] {
                        // SAFETY: j + h + 4 ≤ whole ≤ d: within the row and both halves of
                        // the terms.
                        unsafe {
                            let xv = _mm256_cvtps_pd(_mm_loadu_ps(xs[u].add(j + h)));
                            let t = _mm256_sub_pd(xv, _mm256_loadu_pd(ms[u].add(j + h)));
                            let l = _mm256_loadu_pd(ms[u].add(d + j + h));
                            *acc = _mm256_add_pd(*acc, _mm256_mul_pd(_mm256_mul_pd(t, t), l));
                        }
                    }
                }
            }
            for u in 0..(rows.len() - p).min(4) {
                q[p + u] = if whole == d {
                    lane_sum256(_mm256_add_pd(lo[u], hi[u]))
                } else {
                    let mut a = lanes256(lo[u], hi[u]);
                    // SAFETY: j < d, within the row and both halves of the terms.
                    unsafe {
                        for j in whole..d {
                            let t = *xs[u].add(j) as f64 - *ms[u].add(j);
                            a[j - whole] += t * t * *ms[u].add(d + j);
                        }
                    }
                    lane_sum(&a)
                };
            }
        }
    }

    /// One component's moments over dimensions `j..j + 8V`, the `2V` sums in registers
    /// across its pairs, then added to `a1`, `a2` (see [`super::moments_grouped_at`]).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn moments_chunk512<const V: usize>(
        x: &[f32],
        d: usize,
        j: usize,
        m: &[f64],
        rows: &[u32],
        w: &[f64],
        a1: &mut [f64],
        a2: &mut [f64],
    ) {
        let m = &m[j..j + 8 * V];
        let (a1, a2) = (&mut a1[j..j + 8 * V], &mut a2[j..j + 8 * V]);
        // SAFETY (all blocks below): every pointer is into a slice of exactly 8V values
        // (`m`, `a1`, `a2`, `xr`) and v < V; the caller enables AVX-512F.
        unsafe {
            let mut mu = [_mm512_setzero_pd(); V];
            for (v, mv) in mu.iter_mut().enumerate() {
                *mv = _mm512_loadu_pd(m.as_ptr().add(8 * v));
            }
            let mut s1 = [_mm512_setzero_pd(); V];
            let mut s2 = [_mm512_setzero_pd(); V];
            for (&r, &g) in rows.iter().zip(w) {
                let xr = &x[r as usize * d + j..][..8 * V];
                let vg = _mm512_set1_pd(g);
                for v in 0..V {
                    let xv = _mm512_cvtps_pd(_mm256_loadu_ps(xr.as_ptr().add(8 * v)));
                    let t = _mm512_sub_pd(xv, mu[v]);
                    let gt = _mm512_mul_pd(vg, t);
                    s1[v] = _mm512_add_pd(s1[v], gt);
                    s2[v] = _mm512_add_pd(s2[v], _mm512_mul_pd(gt, t));
                }
            }
            for v in 0..V {
                let (p1, p2) = (a1.as_mut_ptr().add(8 * v), a2.as_mut_ptr().add(8 * v));
                _mm512_storeu_pd(p1, _mm512_add_pd(_mm512_loadu_pd(p1), s1[v]));
                _mm512_storeu_pd(p2, _mm512_add_pd(_mm512_loadu_pd(p2), s2[v]));
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    pub(super) fn moments_grouped_avx512(
        x: &[f32],
        d: usize,
        ml: &[f64],
        starts: &[u32],
        rows: &[u32],
        w: &[f64],
        acc: &mut [f64],
    ) {
        for (c, s) in starts.windows(2).enumerate() {
            let (rows, w) = (
                &rows[s[0] as usize..s[1] as usize],
                &w[s[0] as usize..s[1] as usize],
            );
            if rows.is_empty() {
                continue;
            }
            let m = &ml[2 * c * d..(2 * c + 1) * d];
            let (a1, a2) = acc[2 * c * d..2 * (c + 1) * d].split_at_mut(d);
            let mut j = 0;
            while j + 32 <= d {
                moments_chunk512::<4>(x, d, j, m, rows, w, a1, a2);
                j += 32;
            }
            while j + 8 <= d {
                moments_chunk512::<1>(x, d, j, m, rows, w, a1, a2);
                j += 8;
            }
            moments_grouped_tail(x, d, j, m, rows, w, a1, a2);
        }
    }

    /// As [`moments_chunk512`] with 4-lane vectors.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn moments_chunk256<const V: usize>(
        x: &[f32],
        d: usize,
        j: usize,
        m: &[f64],
        rows: &[u32],
        w: &[f64],
        a1: &mut [f64],
        a2: &mut [f64],
    ) {
        let m = &m[j..j + 4 * V];
        let (a1, a2) = (&mut a1[j..j + 4 * V], &mut a2[j..j + 4 * V]);
        // SAFETY (all blocks below): every pointer is into a slice of exactly 4V values
        // (`m`, `a1`, `a2`, `xr`) and v < V; the caller enables AVX2.
        unsafe {
            let mut mu = [_mm256_setzero_pd(); V];
            for (v, mv) in mu.iter_mut().enumerate() {
                *mv = _mm256_loadu_pd(m.as_ptr().add(4 * v));
            }
            let mut s1 = [_mm256_setzero_pd(); V];
            let mut s2 = [_mm256_setzero_pd(); V];
            for (&r, &g) in rows.iter().zip(w) {
                let xr = &x[r as usize * d + j..][..4 * V];
                let vg = _mm256_set1_pd(g);
                for v in 0..V {
                    let xv = _mm256_cvtps_pd(_mm_loadu_ps(xr.as_ptr().add(4 * v)));
                    let t = _mm256_sub_pd(xv, mu[v]);
                    let gt = _mm256_mul_pd(vg, t);
                    s1[v] = _mm256_add_pd(s1[v], gt);
                    s2[v] = _mm256_add_pd(s2[v], _mm256_mul_pd(gt, t));
                }
            }
            for v in 0..V {
                let (p1, p2) = (a1.as_mut_ptr().add(4 * v), a2.as_mut_ptr().add(4 * v));
                _mm256_storeu_pd(p1, _mm256_add_pd(_mm256_loadu_pd(p1), s1[v]));
                _mm256_storeu_pd(p2, _mm256_add_pd(_mm256_loadu_pd(p2), s2[v]));
            }
        }
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn moments_grouped_avx2(
        x: &[f32],
        d: usize,
        ml: &[f64],
        starts: &[u32],
        rows: &[u32],
        w: &[f64],
        acc: &mut [f64],
    ) {
        for (c, s) in starts.windows(2).enumerate() {
            let (rows, w) = (
                &rows[s[0] as usize..s[1] as usize],
                &w[s[0] as usize..s[1] as usize],
            );
            if rows.is_empty() {
                continue;
            }
            let m = &ml[2 * c * d..(2 * c + 1) * d];
            let (a1, a2) = acc[2 * c * d..2 * (c + 1) * d].split_at_mut(d);
            let mut j = 0;
            while j + 16 <= d {
                moments_chunk256::<4>(x, d, j, m, rows, w, a1, a2);
                j += 16;
            }
            while j + 4 <= d {
                moments_chunk256::<1>(x, d, j, m, rows, w, a1, a2);
                j += 4;
            }
            moments_grouped_tail(x, d, j, m, rows, w, a1, a2);
        }
    }

    /// Dimensions `j0..d` of one component's moments, one at a time (the scalar twin's order).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn moments_grouped_tail(
        x: &[f32],
        d: usize,
        j0: usize,
        m: &[f64],
        rows: &[u32],
        w: &[f64],
        a1: &mut [f64],
        a2: &mut [f64],
    ) {
        for j in j0..d {
            let (mut s1, mut s2) = (0f64, 0f64);
            for (&r, &g) in rows.iter().zip(w) {
                let t = x[r as usize * d + j] as f64 - m[j];
                let gt = g * t;
                s1 += gt;
                s2 += gt * t;
            }
            a1[j] += s1;
            a2[j] += s2;
        }
    }

    /// `8·L·V` dimensions from `j` of one component's f32 moments (see
    /// [`super::moments_grouped_f32_at`]), the sums in registers across its pairs. `L` is the
    /// vector width in units of 8 lanes (2: AVX-512, 1: AVX2).
    /// The macro also makes the level's `$driver` (see [`super::moments_grouped_f32_at`]):
    /// per component with pairs, 4-vector chunks, then single vectors, then the scalar tail.
    macro_rules! moments_f32_level {
        ($driver:ident, $name:ident, $feat:literal, $vec:ty, $lanes:expr, $zero:ident,
         $load:ident, $set1:ident, $sub:ident, $mul:ident, $add:ident, $fmadd:ident,
         $widen_add:ident) => {
            #[allow(clippy::too_many_arguments)]
            #[inline]
            #[target_feature(enable = $feat)]
            fn $name<const V: usize>(
                x: &[f32],
                d: usize,
                j: usize,
                r: &[f32],
                rows: &[u32],
                w: &[f32],
                o1: &mut [f64],
                o2: &mut [f64],
            ) {
                let r = &r[j..j + $lanes * V];
                let (o1, o2) = (&mut o1[j..j + $lanes * V], &mut o2[j..j + $lanes * V]);
                // SAFETY (all blocks below): every pointer is into a slice of exactly
                // lanes·V values (`r`, `o1`, `o2`, `xr`) and v < V; the feature is enabled.
                unsafe {
                    let mut mu: [$vec; V] = [$zero(); V];
                    for (v, mv) in mu.iter_mut().enumerate() {
                        *mv = $load(r.as_ptr().add($lanes * v));
                    }
                    let mut s1: [$vec; V] = [$zero(); V];
                    let mut s2: [$vec; V] = [$zero(); V];
                    for (&row, &g) in rows.iter().zip(w) {
                        let xr = &x[row as usize * d + j..][..$lanes * V];
                        let vg = $set1(g);
                        for v in 0..V {
                            let delta = $sub($load(xr.as_ptr().add($lanes * v)), mu[v]);
                            let t = $mul(vg, delta);
                            s1[v] = $add(s1[v], t);
                            s2[v] = $fmadd(t, delta, s2[v]);
                        }
                    }
                    for v in 0..V {
                        $widen_add(o1.as_mut_ptr().add($lanes * v), s1[v]);
                        $widen_add(o2.as_mut_ptr().add($lanes * v), s2[v]);
                    }
                }
            }

            #[target_feature(enable = $feat)]
            pub(super) fn $driver(
                x: &[f32],
                d: usize,
                refs: &[f32],
                starts: &[u32],
                rows: &[u32],
                w: &[f32],
                acc: &mut [f64],
            ) {
                for (c, s) in starts.windows(2).enumerate() {
                    let pairs = s[0] as usize..s[1] as usize;
                    if pairs.is_empty() {
                        continue;
                    }
                    let (rows, w) = (&rows[pairs.clone()], &w[pairs]);
                    let r = &refs[c * d..(c + 1) * d];
                    let (o1, o2) = acc[2 * c * d..2 * (c + 1) * d].split_at_mut(d);
                    let mut j = 0;
                    while j + 4 * $lanes <= d {
                        $name::<4>(x, d, j, r, rows, w, o1, o2);
                        j += 4 * $lanes;
                    }
                    while j + $lanes <= d {
                        $name::<1>(x, d, j, r, rows, w, o1, o2);
                        j += $lanes;
                    }
                    moments_f32_dims(x, d, j, r, rows, w, o1, o2);
                }
            }
        };
    }
    /// `acc[0..16] += s` in f64 (the 16 f32 lanes widened).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn widen_add512(acc: *mut f64, s: __m512) {
        // SAFETY: the caller passes a pointer to 16 f64.
        unsafe {
            let lo = _mm512_cvtps_pd(_mm512_castps512_ps256(s));
            let hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(
                _mm512_castps_pd(s),
            )));
            _mm512_storeu_pd(acc, _mm512_add_pd(_mm512_loadu_pd(acc), lo));
            _mm512_storeu_pd(acc.add(8), _mm512_add_pd(_mm512_loadu_pd(acc.add(8)), hi));
        }
    }
    /// `acc[0..8] += s` in f64 (the 8 f32 lanes widened).
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn widen_add256(acc: *mut f64, s: __m256) {
        // SAFETY: the caller passes a pointer to 8 f64.
        unsafe {
            let lo = _mm256_cvtps_pd(_mm256_castps256_ps128(s));
            let hi = _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(s));
            _mm256_storeu_pd(acc, _mm256_add_pd(_mm256_loadu_pd(acc), lo));
            _mm256_storeu_pd(acc.add(4), _mm256_add_pd(_mm256_loadu_pd(acc.add(4)), hi));
        }
    }
    moments_f32_level!(
        moments_grouped_f32_avx512,
        moments_f32_chunk512,
        "avx512f,fma",
        __m512,
        16,
        _mm512_setzero_ps,
        _mm512_loadu_ps,
        _mm512_set1_ps,
        _mm512_sub_ps,
        _mm512_mul_ps,
        _mm512_add_ps,
        _mm512_fmadd_ps,
        widen_add512
    );
    moments_f32_level!(
        moments_grouped_f32_avx2,
        moments_f32_chunk256,
        "avx2,fma",
        __m256,
        8,
        _mm256_setzero_ps,
        _mm256_loadu_ps,
        _mm256_set1_ps,
        _mm256_sub_ps,
        _mm256_mul_ps,
        _mm256_add_ps,
        _mm256_fmadd_ps,
        widen_add256
    );

    #[target_feature(enable = "avx512f,fma")]
    pub(super) fn exp_f64_avx512(xs: &mut [f64]) {
        let set1 = _mm512_set1_pd;
        let mut chunks = xs.chunks_exact_mut(8);
        for ch in &mut chunks {
            // SAFETY: `ch` holds exactly 8 f64.
            let x = unsafe { _mm512_loadu_pd(ch.as_ptr()) };
            let xc = _mm512_min_pd(
                _mm512_max_pd(x, set1(EXP_F64_UNDERFLOW)),
                set1(EXP_F64_OVERFLOW),
            );
            let n = _mm512_roundscale_pd::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm512_mul_pd(xc, set1(std::f64::consts::LOG2_E)),
            );
            let r = _mm512_sub_pd(xc, _mm512_mul_pd(n, set1(LN2_HI_64)));
            let r = _mm512_sub_pd(r, _mm512_mul_pd(n, set1(LN2_LO_64)));
            let mut p = set1(EXP64_POLY[0]);
            for &c in &EXP64_POLY[1..] {
                p = _mm512_add_pd(_mm512_mul_pd(p, r), set1(c));
            }
            let y = _mm512_scalef_pd(p, n);
            let under = _mm512_cmp_pd_mask::<_CMP_LT_OQ>(x, set1(EXP_F64_UNDERFLOW));
            let over = _mm512_cmp_pd_mask::<_CMP_GT_OQ>(x, set1(EXP_F64_OVERFLOW));
            let nan = _mm512_cmp_pd_mask::<_CMP_UNORD_Q>(x, x);
            let y = _mm512_mask_mov_pd(y, under, _mm512_setzero_pd());
            let y = _mm512_mask_mov_pd(y, over, set1(f64::INFINITY));
            let y = _mm512_mask_mov_pd(y, nan, x);
            // SAFETY: as above.
            unsafe { _mm512_storeu_pd(ch.as_mut_ptr(), y) };
        }
        for v in chunks.into_remainder() {
            *v = exp_f64_scalar(*v);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn exp_f64_avx2(xs: &mut [f64]) {
        let set1 = _mm256_set1_pd;
        let mut chunks = xs.chunks_exact_mut(4);
        for ch in &mut chunks {
            // SAFETY: `ch` holds exactly 4 f64.
            let x = unsafe { _mm256_loadu_pd(ch.as_ptr()) };
            let xc = _mm256_min_pd(
                _mm256_max_pd(x, set1(EXP_F64_UNDERFLOW)),
                set1(EXP_F64_OVERFLOW),
            );
            let n = _mm256_round_pd::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm256_mul_pd(xc, set1(std::f64::consts::LOG2_E)),
            );
            let r = _mm256_sub_pd(xc, _mm256_mul_pd(n, set1(LN2_HI_64)));
            let r = _mm256_sub_pd(r, _mm256_mul_pd(n, set1(LN2_LO_64)));
            let mut p = set1(EXP64_POLY[0]);
            for &c in &EXP64_POLY[1..] {
                p = _mm256_add_pd(_mm256_mul_pd(p, r), set1(c));
            }
            // 2^n from the exponent bits (n ∈ [−1021, 1023] after the clamp).
            let ni = _mm256_cvtepi32_epi64(_mm256_cvtpd_epi32(n));
            let bits = _mm256_slli_epi64::<52>(_mm256_add_epi64(ni, _mm256_set1_epi64x(1023)));
            let y = _mm256_mul_pd(p, _mm256_castsi256_pd(bits));
            let under = _mm256_cmp_pd::<_CMP_LT_OQ>(x, set1(EXP_F64_UNDERFLOW));
            let over = _mm256_cmp_pd::<_CMP_GT_OQ>(x, set1(EXP_F64_OVERFLOW));
            let nan = _mm256_cmp_pd::<_CMP_UNORD_Q>(x, x);
            let y = _mm256_andnot_pd(under, y);
            let y = _mm256_blendv_pd(y, set1(f64::INFINITY), over);
            let y = _mm256_blendv_pd(y, x, nan);
            // SAFETY: as above.
            unsafe { _mm256_storeu_pd(ch.as_mut_ptr(), y) };
        }
        for v in chunks.into_remainder() {
            *v = exp_f64_scalar(*v);
        }
    }

    macro_rules! probe_body {
        ($iters:expr, $ty:ty, $set1:ident, $fmadd:ident, $add:ident) => {{
            let mul = $set1(0.999_999);
            let inc = $set1(1e-7);
            let mut acc: [$ty; 12] = [$set1(1.0); 12];
            for _ in 0..$iters {
                for a in acc.iter_mut() {
                    *a = $fmadd(*a, mul, inc);
                }
            }
            let mut s = acc[0];
            for a in &acc[1..] {
                s = $add(s, *a);
            }
            s
        }};
    }

    #[target_feature(enable = "avx512f,fma")]
    pub(super) fn fma_probe_avx512(iters: u64) -> f32 {
        let s = probe_body!(
            iters,
            __m512,
            _mm512_set1_ps,
            _mm512_fmadd_ps,
            _mm512_add_ps
        );
        _mm512_reduce_add_ps(s)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn fma_probe_avx2(iters: u64) -> f32 {
        let s = probe_body!(
            iters,
            __m256,
            _mm256_set1_ps,
            _mm256_fmadd_ps,
            _mm256_add_ps
        );
        hsum256(s)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// The softmax's `exp512_nonpositive` gives `exp512`'s bits on every `x ≤ 0` (zeros,
        /// subnormals, the underflow edge, −∞) and a NaN for a NaN.
        #[test]
        fn nonpositive_exp_matches_the_general_one() {
            if !(is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma")) {
                return;
            }
            let mut xs: Vec<f32> = (0..=40_000).map(|i| -100.0 * i as f32 / 40_000.0).collect();
            xs.extend([
                -0.0,
                -1e-30,
                -1e-45,
                f32::NEG_INFINITY,
                f32::MIN,
                -1e30,
                EXP_UNDERFLOW,
                EXP_UNDERFLOW - 1e-5,
                EXP_UNDERFLOW + 1e-4,
                -0.346_573_6,
                f32::NAN,
                -f32::NAN,
            ]);
            xs.resize(xs.len().next_multiple_of(16), -1.0);
            for chunk in xs.chunks_exact(16) {
                let (mut got, mut want) = ([0f32; 16], [0f32; 16]);
                // SAFETY: AVX-512F and FMA checked above; 16 lanes read and written.
                unsafe {
                    let v = _mm512_loadu_ps(chunk.as_ptr());
                    _mm512_storeu_ps(got.as_mut_ptr(), exp512_nonpositive(v));
                    _mm512_storeu_ps(want.as_mut_ptr(), exp512(v));
                }
                for ((x, g), w) in chunk.iter().zip(got).zip(want) {
                    if x.is_nan() {
                        assert!(g.is_nan(), "exp({x}) = {g}");
                    } else {
                        assert_eq!(g.to_bits(), w.to_bits(), "exp({x}): {g} against {w}");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inputs spanning the whole range, the special values, and the underflow boundary.
    fn exp_inputs() -> Vec<f32> {
        let mut xs: Vec<f32> = (0..20_000)
            .map(|i| -100.0 + 190.0 * i as f32 / 20_000.0)
            .collect();
        xs.extend([
            0.0,
            -0.0,
            1e-30,
            -1e-30,
            f32::NEG_INFINITY,
            f32::INFINITY,
            -1e30,
            1e30,
            f32::MIN,
            EXP_UNDERFLOW,
            EXP_UNDERFLOW - 1e-5,
            EXP_UNDERFLOW + 1e-4,
            EXP_OVERFLOW,
            88.5,
            -0.346_573_6,
            0.346_573_6,
        ]);
        // Odd length exercises the scalar tails of the vector loops.
        xs.push(-3.5);
        xs
    }

    #[test]
    fn exp_scalar_matches_f64_exp() {
        for x in exp_inputs() {
            let got = exp_scalar(x);
            let want = (x as f64).exp();
            if x < EXP_UNDERFLOW {
                assert_eq!(got, 0.0, "exp({x})");
            } else if want > f32::MAX as f64 {
                assert_eq!(got, f32::INFINITY, "exp({x})");
            } else {
                let rel = (got as f64 - want).abs() / want;
                assert!(rel < 2.5e-7, "exp({x}) = {got}, want {want}, rel {rel}");
            }
        }
        assert!(exp_scalar(f32::NAN).is_nan());
    }

    #[test]
    fn exp_levels_agree_with_scalar_twin() {
        let xs = exp_inputs();
        let want: Vec<f32> = xs.iter().map(|&x| exp_scalar(x)).collect();
        for level in SimdLevel::available() {
            let mut got = xs.clone();
            exp_in_place_at(level, &mut got);
            for ((g, w), x) in got.iter().zip(&want).zip(&xs) {
                let ok = g == w || (g - w).abs() <= 2.0 * f32::EPSILON * w.abs();
                assert!(ok, "{level:?}: exp({x}) = {g}, scalar {w}");
            }
            let mut nan = vec![f32::NAN; 17];
            exp_in_place_at(level, &mut nan);
            assert!(nan.iter().all(|v| v.is_nan()), "{level:?}: NaN lost");
        }
    }

    #[test]
    fn softmax_levels_agree_with_scalar_twin_and_f64() {
        for len in [1usize, 3, 8, 16, 31, 64, 256, 257] {
            // Log-densities as the GMM produces them: a few close ones, most very negative,
            // some −∞ (zero weights).
            let row: Vec<f32> = (0..len)
                .map(|i| match i % 7 {
                    0 => -1.0e4 - i as f32,
                    1 if i > 0 => f32::NEG_INFINITY,
                    2 => -150.0 + (i as f32) * 0.25,
                    _ => -((i * 37 % 11) as f32) * 0.7 - 250.0,
                })
                .collect();
            let m = row
                .iter()
                .cloned()
                .fold(f64::NEG_INFINITY, |a, b| a.max(b as f64));
            let s: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
            let lse = m + s.ln();
            let mut scalar = row.clone();
            let lse_s = softmax_scalar(&mut scalar);
            assert!((lse_s - lse).abs() < 1e-6 * lse.abs().max(1.0));
            for (&p, &v) in scalar.iter().zip(&row) {
                let want = (v as f64 - lse).exp();
                assert!(
                    (p as f64 - want).abs() < 1e-6 * want + 1e-30,
                    "{p} vs {want}"
                );
            }
            for level in SimdLevel::available() {
                let mut got = row.clone();
                let l = softmax_in_place_at(level, &mut got);
                assert!((l - lse_s).abs() < 1e-6 * lse.abs().max(1.0), "{level:?}");
                for (g, w) in got.iter().zip(&scalar) {
                    assert!(
                        (g - w).abs() <= 4.0 * f32::EPSILON * w,
                        "{level:?}: {g} vs {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn axpy_levels_are_identical() {
        let x: Vec<f32> = (0..131).map(|i| (i as f32 * 0.37).sin()).collect();
        let y0: Vec<f32> = (0..131).map(|i| (i as f32 * 0.11).cos()).collect();
        let mut want = y0.clone();
        axpy_scalar(0.3, &x, &mut want);
        assert!((want[5] - (y0[5] + 0.3 * x[5])).abs() < 1e-6);
        for level in SimdLevel::available() {
            let mut y = y0.clone();
            axpy_at(level, 0.3, &x, &mut y);
            assert_eq!(y, want, "{level:?}");
        }
    }

    #[test]
    fn f64_row_kernels_are_identical_across_levels_and_match_f64() {
        // D = 64 (whole lanes) and 67 (a tail).
        for d in [64usize, 67, 5] {
            let x: Vec<f64> = (0..d).map(|i| (i as f64 * 0.3).sin()).collect();
            let ml: Vec<f64> = (0..2 * d)
                .map(|i| {
                    if i < d {
                        (i as f64 * 0.7).cos()
                    } else {
                        1.0 + (i % 5) as f64
                    }
                })
                .collect();
            let mut want_delta = vec![0f64; d];
            let want_q = centre_quad_body(&x, &ml[..d], &ml[d..], &mut want_delta);
            let direct: f64 = (0..d).map(|j| (x[j] - ml[j]).powi(2) * ml[d + j]).sum();
            assert!((want_q - direct).abs() < 1e-12 * direct, "d={d}");
            for j in 0..d {
                assert_eq!(want_delta[j], x[j] - ml[j]);
            }
            let uv: Vec<f64> = (0..2 * d).map(|i| (i as f64 * 0.11).sin()).collect();
            let want_p = centred_poly_body(&want_delta, &uv[..d], &uv[d..]);
            let direct: f64 = (0..d)
                .map(|j| want_delta[j] * (uv[j] + uv[d + j] * want_delta[j]))
                .sum();
            assert!(
                (want_p - direct).abs() < 1e-12 * direct.abs().max(1.0),
                "d={d}"
            );
            let acc0: Vec<f64> = (0..2 * d).map(|i| i as f64 * 0.01).collect();
            let mut want_acc = acc0.clone();
            let (a1, a2) = want_acc.split_at_mut(d);
            moments_body(0.3, &want_delta, a1, a2);
            for j in 0..d {
                assert!((want_acc[j] - (acc0[j] + 0.3 * want_delta[j])).abs() < 1e-15);
                let sq = acc0[d + j] + 0.3 * want_delta[j] * want_delta[j];
                assert!((want_acc[d + j] - sq).abs() < 1e-15);
            }
            for level in SimdLevel::available() {
                let mut delta = vec![0f64; d];
                assert_eq!(
                    centre_quad_at(level, &x, &ml, &mut delta),
                    want_q,
                    "{level:?}"
                );
                assert_eq!(delta, want_delta, "{level:?}");
                assert_eq!(centred_poly_at(level, &delta, &uv), want_p, "{level:?}");
                let mut acc = acc0.clone();
                moments_at(level, 0.3, &delta, &mut acc);
                assert_eq!(acc, want_acc, "{level:?}");
            }
        }
    }

    #[test]
    fn selected_row_kernels_match_the_single_ones_at_every_level() {
        let (k, d) = (5usize, 67usize);
        let x: Vec<f64> = (0..d).map(|i| (i as f64 * 0.3).sin()).collect();
        let ml: Vec<f64> = (0..2 * k * d)
            .map(|i| {
                if (i / d) % 2 == 0 {
                    (i as f64 * 0.7).cos()
                } else {
                    1.0 + (i % 5) as f64
                }
            })
            .collect();
        let sel = [3u32, 0, 4];
        let w = [0.25, 0.0, -1.5];
        let acc0: Vec<f64> = (0..2 * k * d).map(|i| i as f64 * 0.01).collect();
        let mut want_q = [0f64; 3];
        let mut want_delta = vec![0f64; 3 * d];
        let mut want_acc = acc0.clone();
        for (j, &c) in sel.iter().enumerate() {
            let c = c as usize;
            want_q[j] = centre_quad_at(
                SimdLevel::Scalar,
                &x,
                &ml[2 * c * d..2 * (c + 1) * d],
                &mut want_delta[j * d..(j + 1) * d],
            );
            if w[j] != 0.0 {
                let delta = want_delta[j * d..(j + 1) * d].to_vec();
                moments_at(
                    SimdLevel::Scalar,
                    w[j],
                    &delta,
                    &mut want_acc[2 * c * d..2 * (c + 1) * d],
                );
            }
        }
        for level in SimdLevel::available() {
            let mut q = [0f64; 3];
            let mut delta = vec![0f64; 3 * d];
            centre_quad_sel_at(level, &x, &ml, &sel, &mut q, &mut delta);
            assert_eq!(q, want_q, "{level:?}");
            assert_eq!(delta, want_delta, "{level:?}");
            let mut acc = acc0.clone();
            moments_sel_at(level, d, &sel, &w, &delta, &mut acc);
            assert_eq!(acc, want_acc, "{level:?}");
            let mut poly = [7.0f64; 3];
            centred_poly_sel_at(level, d, &sel, &w, &delta, &ml, &mut poly);
            for (j, &c) in sel.iter().enumerate() {
                let c = c as usize;
                let want = if w[j] != 0.0 {
                    centred_poly_at(
                        SimdLevel::Scalar,
                        &want_delta[j * d..(j + 1) * d],
                        &ml[2 * c * d..2 * (c + 1) * d],
                    )
                } else {
                    7.0
                };
                assert_eq!(poly[j], want, "{level:?} {j}");
            }
        }
    }

    #[test]
    fn pair_kernels_match_the_per_row_ones_at_every_level() {
        let (n, k) = (9usize, 6usize);
        for d in [64usize, 67, 40, 5, 3] {
            let x: Vec<f32> = (0..n * d)
                .map(|i| ((i as f64 * 0.37).sin() * 2.0) as f32)
                .collect();
            let ml: Vec<f64> = (0..2 * k * d)
                .map(|i| {
                    if (i / d) % 2 == 0 {
                        (i as f64 * 0.7).cos()
                    } else {
                        1.0 + (i % 5) as f64
                    }
                })
                .collect();
            // 11 pairs (not a multiple of four); component 4 gets none.
            let rows: Vec<u32> = (0..11).map(|p| (p * 5 % n) as u32).collect();
            let comps: Vec<u32> = (0..11u32)
                .map(|p| [0, 3, 1, 5, 2][p as usize % 5])
                .collect();
            let w: Vec<f64> = (0..11).map(|p| 0.1 + 0.3 * p as f64).collect();
            let row64 = |r: u32| -> Vec<f64> {
                x[r as usize * d..(r as usize + 1) * d]
                    .iter()
                    .map(|&v| v as f64)
                    .collect()
            };
            let mut delta = vec![0f64; d];
            let want_q: Vec<f64> = rows
                .iter()
                .zip(&comps)
                .map(|(&r, &c)| {
                    let c = c as usize;
                    centre_quad_at(
                        SimdLevel::Scalar,
                        &row64(r),
                        &ml[2 * c * d..2 * (c + 1) * d],
                        &mut delta,
                    )
                })
                .collect();
            // Pairs grouped by component (stable), each group summed from zero, then added.
            let mut order: Vec<usize> = (0..rows.len()).collect();
            order.sort_by_key(|&p| comps[p]);
            let g_rows: Vec<u32> = order.iter().map(|&p| rows[p]).collect();
            let g_w: Vec<f64> = order.iter().map(|&p| w[p]).collect();
            let mut starts = vec![0u32; k + 1];
            for c in 0..k {
                starts[c + 1] =
                    starts[c] + comps.iter().filter(|&&q| q as usize == c).count() as u32;
            }
            let acc0: Vec<f64> = (0..2 * k * d).map(|i| i as f64 * 0.01).collect();
            let mut want_acc = acc0.clone();
            for c in 0..k {
                let mut local = vec![0f64; 2 * d];
                for p in starts[c] as usize..starts[c + 1] as usize {
                    let xr = row64(g_rows[p]);
                    centre_quad_at(
                        SimdLevel::Scalar,
                        &xr,
                        &ml[2 * c * d..2 * (c + 1) * d],
                        &mut delta,
                    );
                    moments_at(SimdLevel::Scalar, g_w[p], &delta, &mut local);
                }
                for (a, l) in want_acc[2 * c * d..2 * (c + 1) * d].iter_mut().zip(&local) {
                    *a += l;
                }
            }
            let mut q = vec![0f64; rows.len()];
            quad_pairs_scalar(&x, d, &rows, &comps, &ml, &mut q);
            assert_eq!(q, want_q, "scalar twin, d {d}");
            for level in SimdLevel::available() {
                let mut q = vec![7f64; rows.len() + 1];
                quad_pairs_at(level, &x, d, &rows, &comps, &ml, &mut q);
                assert_eq!(&q[..rows.len()], &want_q[..], "{level:?} d {d}");
                assert_eq!(q[rows.len()], 7.0, "{level:?}: wrote past the pairs");
                let mut acc = acc0.clone();
                moments_grouped_at(level, &x, d, &ml, &starts, &g_rows, &g_w, &mut acc);
                assert_eq!(acc, want_acc, "{level:?} d {d}");
            }
        }
    }

    /// A row of `len` log-densities spread over 30 nats, its maximum, and its exponentials
    /// `exp(l − max)` and their sum in f64.
    fn softmax_case(len: usize) -> (Vec<f32>, f32, Vec<f64>, f64) {
        let row: Vec<f32> = (0..len)
            .map(|i| -30.0 * ((i * 7919 % 101) as f32 / 101.0) + 3.0)
            .collect();
        let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let e64: Vec<f64> = row.iter().map(|&v| (v as f64 - max as f64).exp()).collect();
        let s64 = e64.iter().sum();
        (row, max, e64, s64)
    }

    #[test]
    fn exp_select4_gives_each_row_what_exp_select_gives_it_at_every_level() {
        // Four different rows per call (shifted and permuted), one with a NaN and one with a
        // -inf entry, at lengths that are whole AVX-512 vectors (16, 64) and lengths with a
        // tail of k mod 16 values that the kernel takes one by one (5, 37).
        for len in [5usize, 16, 37, 64] {
            let (base, ..) = softmax_case(len);
            let mut rows = Vec::with_capacity(4 * len);
            for r in 0..4 {
                rows.extend((0..len).map(|i| base[(i * (2 * r + 1) + r) % len] - 3.0 * r as f32));
            }
            rows[len + len / 2] = f32::NAN;
            rows[3 * len] = f32::NEG_INFINITY;
            for frac in [0.0f32, 1e-6, 1e-3, 0.2] {
                for level in SimdLevel::available() {
                    let mut got_rows = rows.clone();
                    let mut out = vec![u32::MAX; 4 * len];
                    let got = exp_select4_at(level, &mut got_rows, frac, &mut out);
                    for r in 0..4 {
                        let mut row = rows[r * len..(r + 1) * len].to_vec();
                        let mut want_idx = vec![u32::MAX; len];
                        let want = exp_select_at(level, &mut row, frac, &mut want_idx);
                        let what = format!("{level:?} len {len} frac {frac} row {r}");
                        let same = |a: &[f32], b: &[f32]| {
                            a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
                        };
                        assert!(same(&got_rows[r * len..(r + 1) * len], &row), "{what}");
                        assert_eq!(got[r].max.to_bits(), want.max.to_bits(), "{what}");
                        assert_eq!(got[r].sum.to_bits(), want.sum.to_bits(), "{what}");
                        assert_eq!(got[r].rest.to_bits(), want.rest.to_bits(), "{what}");
                        assert_eq!(got[r].count, want.count, "{what}");
                        let sel = &out[r * len..r * len + got[r].count];
                        assert_eq!(sel, &want_idx[..want.count], "{what}");
                    }
                }
            }
        }
    }

    #[test]
    fn exp_candidates_match_f64_softmax_and_cut_at_every_level() {
        for len in [1usize, 5, 16, 37, 64, 256] {
            let (row0, max, e64, s64) = softmax_case(len);
            for frac in [0.0f32, 1e-6, 1e-3, 0.2] {
                let mut scalar = row0.clone();
                let mut want_idx = vec![u32::MAX; len];
                let want = exp_candidates_scalar(&mut scalar, frac, &mut want_idx);
                for level in SimdLevel::available() {
                    let mut row = row0.clone();
                    let mut out = vec![u32::MAX; len];
                    let got = exp_candidates_at(level, &mut row, frac, &mut out);
                    assert_eq!(got.max, max, "{level:?}");
                    assert_eq!(row, scalar, "{level:?}: the same exp as the scalar twin");
                    assert_eq!(got.count, want.count, "{level:?} {len} {frac}");
                    assert_eq!(out[..got.count], want_idx[..want.count], "{level:?}");
                    assert!((got.sum - s64).abs() <= 1e-6 * s64, "{level:?} sum");
                    let sel = &out[..got.count];
                    let mut rest = 0f64;
                    for (i, &e) in e64.iter().enumerate() {
                        assert!((row[i] as f64 - e).abs() <= 1e-6 * e, "{level:?} e[{i}]");
                        let picked = sel.contains(&(i as u32));
                        // The cut is on exp(l − max), not on the softmax.
                        assert_eq!(picked, row[i] >= frac, "{level:?} {len} {frac} {i}");
                        if !picked {
                            rest += e;
                        }
                    }
                    assert!((got.rest - rest).abs() <= 1e-6 * rest + 1e-30, "{level:?}");
                    assert!((got.rest - want.rest).abs() <= 1e-6 * rest + 1e-30);
                }
            }
        }
    }

    /// A `rows × k` row-major block of log-densities spread over ~60 nats, with a bias.
    fn log_density_block(rows: usize, k: usize) -> (Vec<f32>, Vec<f32>) {
        let post = (0..rows * k)
            .map(|t| -60.0 * ((t * 7919 % 1009) as f32 / 1009.0) + 2.5)
            .collect();
        let bias = (0..k).map(|c| 0.37 * (c % 5) as f32 - 1.0).collect();
        (post, bias)
    }

    /// The log-densities of [`log_densities_direct_at`] against the path it replaces at
    /// AVX-512 (`[δ², δ]` rows, a row-major GEMM, [`transpose_log_densities_at`]).
    #[test]
    fn direct_log_densities_match_the_gemm_and_transpose() {
        use faer::linalg::matmul::matmul;
        use faer::{Accum, MatMut, MatRef, Par};
        let stride = 64;
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut uniform = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let mut differing = 0;
        for (n, d, k) in [
            (1usize, 1usize, 1usize),
            (15, 5, 3),
            (16, 16, 14),
            (17, 34, 15),
            (33, 64, 64),
            (64, 20, 29),
            (48, 64, 256),
        ] {
            let x: Vec<f32> = (0..n * d).map(|_| 8.0 * uniform()).collect();
            let shift: Vec<f32> = (0..d).map(|_| uniform()).collect();
            let coef: Vec<f32> = (0..2 * d * k).map(|_| 2.0 * uniform()).collect();
            let bias: Vec<f32> = (0..k).map(|_| 10.0 * uniform()).collect();
            let tiles = pack_density_tiles(&coef, 2 * d, k);
            let lanes = n.next_multiple_of(16);
            let mut slabs = vec![f32::NAN; 32 * 2 * d];
            let mut lt = vec![-7f32; k * stride];
            let mut max = vec![-7f32; lanes + 1];
            let Some(finite) = log_densities_direct_at(
                SimdLevel::Avx512,
                &x,
                d,
                Some(&shift),
                &tiles,
                &bias,
                &mut slabs,
                &mut lt,
                stride,
                &mut max,
                &[],
            ) else {
                assert!(!SimdLevel::available().contains(&SimdLevel::Avx512));
                return;
            };
            assert!(finite);
            // The reference: rows [δ², δ] (zero rows up to the lane count), GEMM, transpose.
            let mut aug = vec![0f32; lanes * 2 * d];
            assert!(shift_square_scalar(
                &x,
                d,
                Some(&shift),
                &mut aug[..n * 2 * d]
            ));
            let mut post = vec![0f32; lanes * k];
            matmul(
                MatMut::from_row_major_slice_mut(&mut post, lanes, k),
                Accum::Replace,
                MatRef::from_row_major_slice(&aug, lanes, 2 * d),
                MatRef::from_row_major_slice(&coef, 2 * d, k),
                1.0f32,
                Par::Seq,
            );
            let mut want = vec![-7f32; k * stride];
            let mut want_max = vec![-7f32; lanes + 1];
            transpose_log_densities_scalar(&post, lanes, &bias, &mut want, stride, &mut want_max);
            for c in 0..k {
                for i in 0..stride {
                    let (got, exp) = (lt[c * stride + i], want[c * stride + i]);
                    // One sum of 2d products: the GEMM may group them differently.
                    let scale: f32 = (0..2 * d)
                        .map(|j| (aug[i.min(lanes - 1) * 2 * d + j] * coef[j * k + c]).abs())
                        .sum::<f32>()
                        + bias[c].abs();
                    assert!(
                        (got - exp).abs() <= 2.0 * d as f32 * f32::EPSILON * scale,
                        "{n}×{d}, K {k}: ({i}, {c}) {got} against {exp}"
                    );
                    if got.to_bits() != exp.to_bits() {
                        differing += 1;
                    }
                }
            }
            for i in 0..lanes {
                let m = (0..k)
                    .map(|c| lt[c * stride + i])
                    .fold(f32::NEG_INFINITY, f32::max);
                assert_eq!(max[i], m, "{n}×{d}, K {k}: maximum of row {i}");
            }
            assert_eq!(max[lanes], -7.0, "wrote past the maxima");
        }
        eprintln!("entries differing in bits from the GEMM: {differing}");
    }

    /// The tiles cover 0..K in order, as few as DENSITY_TILE allows, widths within one.
    #[test]
    fn density_tiles_cover_the_components_evenly() {
        for k in 1..=300 {
            let tiles: Vec<_> = density_tiles(k).collect();
            assert_eq!(tiles.len(), k.div_ceil(DENSITY_TILE), "k = {k}");
            assert_eq!(tiles[0].start, 0);
            assert_eq!(tiles.last().unwrap().end, k, "k = {k}");
            for pair in tiles.windows(2) {
                assert_eq!(pair[0].end, pair[1].start, "k = {k}");
            }
            let widths: Vec<usize> = tiles.iter().map(|t| t.len()).collect();
            let (lo, hi) = (widths.iter().min().unwrap(), widths.iter().max().unwrap());
            assert!(
                *lo >= 1 && *hi <= DENSITY_TILE && hi - lo <= 1,
                "k = {k}: {widths:?}"
            );
        }
    }

    /// A non-finite value anywhere in the rows is reported, as by [`shift_square_at`].
    #[test]
    fn direct_log_densities_report_non_finite_rows() {
        let (n, d, k, stride) = (20usize, 18usize, 5usize, 32usize);
        let coef = vec![0.5f32; 2 * d * k];
        let tiles = pack_density_tiles(&coef, 2 * d, k);
        let bias = vec![0f32; k];
        for (at, bad) in [
            (0usize, f32::NAN),
            (n * d - 1, f32::INFINITY),
            (17 * d + 16, f32::NEG_INFINITY),
        ] {
            let mut x = vec![0.25f32; n * d];
            x[at] = bad;
            let mut slabs = vec![0f32; stride * 2 * d];
            let (mut lt, mut max) = (vec![0f32; k * stride], vec![0f32; stride]);
            let got = log_densities_direct_at(
                SimdLevel::Avx512,
                &x,
                d,
                None,
                &tiles,
                &bias,
                &mut slabs,
                &mut lt,
                stride,
                &mut max,
                &x,
            );
            assert!(
                got.is_none_or(|finite| !finite),
                "{bad} at {at} not reported"
            );
            x[at] = 0.25;
            let got = log_densities_direct_at(
                SimdLevel::Avx512,
                &x,
                d,
                None,
                &tiles,
                &bias,
                &mut slabs,
                &mut lt,
                stride,
                &mut max,
                &[],
            );
            assert!(got.is_none_or(|finite| finite));
        }
    }

    #[test]
    fn transpose_log_densities_is_the_transpose_plus_bias_at_every_level() {
        let stride = 64;
        for (rows, k) in [(16usize, 1usize), (16, 7), (48, 16), (64, 37), (32, 64)] {
            let (mut post, bias) = log_density_block(rows, k);
            // A NaN entry: the maximum must still give the same bits at every level.
            post[(rows - 1) * k] = f32::NAN;
            let mut first: Option<(Vec<f32>, Vec<f32>)> = None;
            for level in SimdLevel::available() {
                let mut lt = vec![-7f32; k * stride];
                let mut max = vec![-7f32; rows + 1];
                transpose_log_densities_at(level, &post, rows, &bias, &mut lt, stride, &mut max);
                for i in 0..rows {
                    let mut m = f32::NEG_INFINITY;
                    for c in 0..k {
                        let want = post[i * k + c] + bias[c];
                        let got = lt[c * stride + i];
                        assert!(
                            got == want || (got.is_nan() && want.is_nan()),
                            "{level:?} {rows}×{k} ({i}, {c})"
                        );
                        m = if m > want { m } else { want };
                    }
                    assert_eq!(
                        max[i].to_bits(),
                        m.to_bits(),
                        "{level:?} {rows}×{k} row {i}"
                    );
                }
                for c in 0..k {
                    let pad = &lt[c * stride + rows..(c + 1) * stride];
                    assert!(
                        pad.iter().all(|&v| v == -7.0),
                        "{level:?}: wrote past the rows"
                    );
                }
                assert_eq!(max[rows], -7.0, "{level:?}: wrote past the maxima");
                let same = |a: &[f32], b: &[f32]| {
                    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
                };
                match &first {
                    None => first = Some((lt, max)),
                    Some((l0, m0)) => {
                        assert!(same(l0, &lt) && same(m0, &max), "{level:?}: same bits")
                    }
                }
            }
        }
    }

    #[test]
    fn posteriors_by_component_match_f64_softmax_at_every_level() {
        let stride = 64;
        for (n, k) in [(1usize, 1usize), (5, 3), (16, 16), (37, 7), (64, 37)] {
            let (post, bias) = log_density_block(n.next_multiple_of(16), k);
            let mut lt0 = vec![0f32; k * stride];
            let mut max = vec![0f32; stride];
            let lanes = n.next_multiple_of(16);
            transpose_log_densities_scalar(&post, lanes, &bias, &mut lt0, stride, &mut max);
            // Lanes past n hold whatever the previous block left, NaN included.
            for i in n..lanes {
                max[i] = f32::NAN;
                lt0[(k - 1) * stride + i] = f32::NAN;
            }
            // 1.0 keeps exactly the maxima (e = 1), 2.0 nothing.
            for frac in [0.0f32, 1e-6, 1e-2, 0.3, 1.0, 2.0] {
                type Found = (Vec<u32>, Vec<u32>, Vec<f32>, BlockPosteriors);
                let mut want: Option<Found> = None;
                for level in SimdLevel::available() {
                    let (mut starts, mut rows, mut w) = (vec![0u32; k + 1], Vec::new(), Vec::new());
                    let mut rowbuf = vec![f32::NAN; 2 * stride];
                    let got = posteriors_by_component_at(
                        level,
                        &lt0,
                        n,
                        stride,
                        &max,
                        None,
                        frac,
                        &mut rowbuf,
                        &mut starts,
                        &mut rows,
                        &mut w,
                    );
                    // f64 reference from the same log-densities.
                    let (mut ll, mut dropped, mut kept) = (0f64, 0f64, 0usize);
                    let mut pairs = vec![Vec::new(); k];
                    for i in 0..n {
                        let l: Vec<f64> = (0..k).map(|c| lt0[c * stride + i] as f64).collect();
                        let m = l.iter().cloned().fold(f64::MIN, f64::max);
                        let z: f64 = l.iter().map(|v| (v - m).exp()).sum();
                        ll += m + z.ln();
                        for (c, &v) in l.iter().enumerate() {
                            let e = (v - m).exp();
                            assert!(
                                frac == 0.0 || e == 1.0 || (e / frac as f64 - 1.0).abs() > 1e-4,
                                "test data at the threshold"
                            );
                            if e >= frac as f64 {
                                pairs[c].push((i as u32, e / z));
                                kept += 1;
                            } else {
                                dropped += e / z;
                            }
                        }
                    }
                    assert_eq!(got.kept, kept, "{level:?} n {n} k {k} frac {frac}");
                    assert_eq!(starts[k] as usize, kept);
                    assert!(
                        (got.loglik - ll).abs() <= 1e-5 * ll.abs().max(1.0),
                        "{level:?}"
                    );
                    assert!(
                        (got.dropped - dropped).abs() <= 1e-6 * (1.0 + dropped),
                        "{level:?}"
                    );
                    for (c, p) in pairs.iter().enumerate() {
                        let range = starts[c] as usize..starts[c + 1] as usize;
                        assert_eq!(range.len(), p.len(), "{level:?} component {c}");
                        for (q, &(i, g)) in range.zip(p) {
                            assert_eq!(rows[q], i, "{level:?} component {c}: rows in order");
                            assert!((w[q] as f64 - g).abs() <= 1e-6 * g.max(1e-30) + 1e-7);
                        }
                    }
                    let kept_part = (
                        starts.clone(),
                        rows[..kept].to_vec(),
                        w[..kept].to_vec(),
                        got,
                    );
                    match &want {
                        None => want = Some(kept_part),
                        Some(first) => assert_eq!(first, &kept_part, "{level:?}: same bits"),
                    }
                }
            }
        }
    }

    /// Entries more than [`negligible_log_ratio`] below their row's maximum leave every result
    /// as an impossible (−∞) entry would, whole vectors of them included; one just above the
    /// cut still counts; a NaN still reaches the log-likelihood; `frac = 0` keeps them all.
    #[test]
    fn negligible_entries_count_as_zero_at_every_level() {
        let (n, k, stride) = (40usize, 3usize, 48usize);
        let cut = negligible_log_ratio(k, 1e-6);
        assert!(cut < 1e-6f32.ln() && (-(cut as f64)).exp() * (k as f64) > 1.6e7);
        // Row maxima 0 (component 0), a second component at −3, the third at cut − 0.01 for
        // rows 0..32 (two whole vectors of negligible entries), cut + 0.5 for row 35.
        let mut lt = vec![f32::NAN; k * stride];
        for i in 0..n {
            lt[i] = 0.0;
            lt[stride + i] = -3.0 - 0.01 * i as f32;
            lt[2 * stride + i] = if i == 35 { cut + 0.5 } else { cut - 0.01 };
        }
        let max = vec![0f32; stride];
        let run = |level: SimdLevel, lt: &[f32], frac: f32| {
            let (mut starts, mut rows, mut w) = (vec![0u32; k + 1], Vec::new(), Vec::new());
            let mut rowbuf = vec![0f32; 2 * stride];
            let got = posteriors_by_component_at(
                level,
                lt,
                n,
                stride,
                &max,
                None,
                frac,
                &mut rowbuf,
                &mut starts,
                &mut rows,
                &mut w,
            );
            let kept = got.kept;
            (got, starts, rows[..kept].to_vec(), w[..kept].to_vec())
        };
        for level in SimdLevel::available() {
            let with = run(level, &lt, 1e-6);
            // The same block without the negligible entries.
            let mut without = lt.clone();
            for i in (0..n).filter(|&i| i != 35) {
                without[2 * stride + i] = f32::NEG_INFINITY;
            }
            assert_eq!(with, run(level, &without, 1e-6), "{level:?}");
            // The entry above the cut is left out of the kept pairs but is in the mass.
            without[2 * stride + 35] = f32::NEG_INFINITY;
            let bare = run(level, &without, 1e-6);
            assert_eq!(with.0.kept, bare.0.kept, "{level:?}");
            assert!(
                with.0.dropped > bare.0.dropped,
                "{level:?}: the entry above the cut"
            );
            // frac = 0 keeps every finite entry, the far ones too.
            assert_eq!(run(level, &lt, 0.0).0.kept, k * n, "{level:?}");
            // A NaN log-density is not negligible.
            let mut nan = lt.clone();
            nan[2 * stride + 3] = f32::NAN;
            assert!(run(level, &nan, 1e-6).0.loglik.is_nan(), "{level:?}");
        }
    }

    #[test]
    fn exp_select_matches_f64_softmax_and_selection_at_every_level() {
        for len in [1usize, 5, 16, 37, 64, 256] {
            let (row0, max, e64, s64) = softmax_case(len);
            for frac in [0.0f32, 1e-6, 1e-3, 0.2] {
                let mut scalar = row0.clone();
                let mut want_idx = vec![u32::MAX; len];
                let want = exp_select_scalar(&mut scalar, frac, &mut want_idx);
                for level in SimdLevel::available() {
                    let mut row = row0.clone();
                    let mut out = vec![u32::MAX; len];
                    let got = exp_select_at(level, &mut row, frac, &mut out);
                    assert_eq!(got.max, max, "{level:?}");
                    assert_eq!(row, scalar, "{level:?}: the same exp as the scalar twin");
                    assert!((got.sum - s64).abs() <= 1e-6 * s64, "{level:?} sum");
                    assert_eq!(got.count, want.count, "{level:?} {len} {frac}");
                    assert_eq!(out[..got.count], want_idx[..want.count], "{level:?}");
                    let sel = &out[..got.count];
                    let mut rest = 0f64;
                    for (i, &e) in e64.iter().enumerate() {
                        assert!((row[i] as f64 - e).abs() <= 1e-6 * e, "{level:?} e[{i}]");
                        let p = e / s64;
                        let picked = sel.contains(&(i as u32));
                        if (p - frac as f64).abs() > 1e-4 * frac as f64 {
                            assert_eq!(picked, p >= frac as f64, "{level:?} {len} {frac} {i}");
                        }
                        if !picked {
                            rest += e;
                        }
                    }
                    assert!(
                        (got.rest - rest).abs() <= 1e-6 * rest + 1e-30,
                        "{level:?} rest"
                    );
                    assert!((got.rest - want.rest).abs() <= 1e-6 * rest + 1e-30);
                }
            }
        }
    }

    #[test]
    fn f32_grouped_moments_match_f64_and_are_identical_at_every_level() {
        // Dimensions covering the 64-, 16/8-lane and scalar-tail paths of each level.
        for d in [3usize, 8, 16, 37, 64, 80] {
            let (n, k) = (11usize, 5usize);
            let x: Vec<f32> = (0..n * d)
                .map(|i| ((i * 7919 % 113) as f32 / 113.0 - 0.5) * 3.0)
                .collect();
            let refs: Vec<f32> = (0..k * d).map(|i| (i % 7) as f32 * 0.1 - 0.3).collect();
            // Components 0 and 3 get no pairs; 2 gets every row, some twice.
            let groups: Vec<Vec<u32>> = vec![
                vec![],
                vec![1, 4, 9],
                (0..n as u32).chain([2, 5]).collect(),
                vec![],
                vec![10],
            ];
            let mut starts = vec![0u32];
            let mut rows = Vec::new();
            for g in &groups {
                rows.extend_from_slice(g);
                starts.push(rows.len() as u32);
            }
            let w: Vec<f32> = (0..rows.len())
                .map(|p| 0.05 + (p % 5) as f32 * 0.2)
                .collect();
            let sentinel = -7.0f64;
            let mut want = vec![sentinel; 2 * k * d];
            moments_grouped_f32_scalar(&x, d, &refs, &starts, &rows, &w, &mut want);
            for (c, g) in groups.iter().enumerate() {
                for j in 0..d {
                    let (mut s1, mut s2) = (0f64, 0f64);
                    for p in starts[c] as usize..starts[c + 1] as usize {
                        let delta = x[rows[p] as usize * d + j] as f64 - refs[c * d + j] as f64;
                        s1 += w[p] as f64 * delta;
                        s2 += w[p] as f64 * delta * delta;
                    }
                    // The sums are added to the accumulators' starting value.
                    let (g1, g2) = (
                        want[2 * c * d + j] - sentinel,
                        want[(2 * c + 1) * d + j] - sentinel,
                    );
                    if g.is_empty() {
                        assert_eq!((g1, g2), (0.0, 0.0), "untouched component {c}");
                    } else {
                        assert!((g1 - s1).abs() <= 1e-5 * (1.0 + s2), "d {d} c {c} j {j}");
                        assert!((g2 - s2).abs() <= 1e-5 * (1.0 + s2), "d {d} c {c} j {j}");
                    }
                }
            }
            for level in SimdLevel::available() {
                let mut got = vec![sentinel; 2 * k * d];
                moments_grouped_f32_at(level, &x, d, &refs, &starts, &rows, &w, &mut got);
                assert_eq!(got, want, "{level:?} d {d}");
            }
        }
    }

    #[test]
    fn shift_square_matches_the_scalar_twin_and_flags_non_finite_values() {
        for d in [64usize, 34, 19, 16, 8, 5, 1] {
            let n = 7;
            let x: Vec<f32> = (0..n * d)
                .map(|i| ((i as f32) * 0.37).sin() * 3.0)
                .collect();
            let shift: Vec<f32> = (0..d).map(|j| j as f32 * 0.1 - 0.4).collect();
            for sh in [None, Some(&shift[..])] {
                let mut want = vec![0f32; 2 * n * d];
                assert!(shift_square_scalar(&x, d, sh, &mut want));
                for i in 0..n {
                    for j in 0..d {
                        let v = x[i * d + j] - sh.map_or(0.0, |c| c[j]);
                        assert_eq!(want[i * 2 * d + j], v * v);
                        assert_eq!(want[i * 2 * d + d + j], v);
                    }
                }
                for level in SimdLevel::available() {
                    let mut aug = vec![7f32; 2 * n * d + 1];
                    assert!(shift_square_at(level, &x, d, sh, &mut aug), "{level:?}");
                    assert_eq!(aug[..2 * n * d], want[..], "{level:?} d {d}");
                    assert_eq!(aug[2 * n * d], 7.0, "{level:?}: wrote past the rows");
                    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                        // In a full vector and in the last (partial) one of a row.
                        for at in [(n - 1) * d + d / 2, 2 * d - 1] {
                            let mut y = x.clone();
                            y[at] = bad;
                            assert!(!shift_square_at(level, &y, d, sh, &mut aug), "{level:?}");
                            assert!(!shift_square_scalar(&y, d, sh, &mut aug));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn selection_matches_filter_at_every_level() {
        for len in [0usize, 5, 16, 37, 256] {
            let row: Vec<f32> = (0..len).map(|i| ((i * 7) % 10) as f32 * 0.1).collect();
            let want: Vec<u32> = (0..len as u32)
                .filter(|&i| row[i as usize] >= 0.5)
                .collect();
            for level in SimdLevel::available() {
                let mut out = vec![u32::MAX; len];
                let n = select_at_least_at(level, &row, 0.5, &mut out);
                assert_eq!(&out[..n], &want[..], "{level:?} len {len}");
            }
        }
    }

    #[test]
    fn exp_f64_matches_libm_and_levels_are_identical() {
        let mut xs: Vec<f64> = (0..40_001)
            .map(|i| -720.0 + 1440.0 * i as f64 / 40_000.0)
            .collect();
        xs.extend((0..5000).map(|i| -20.0 * i as f64 / 5000.0));
        xs.extend([
            0.0,
            -0.0,
            1e-300,
            -1e-300,
            f64::NEG_INFINITY,
            f64::INFINITY,
            EXP_F64_UNDERFLOW,
            EXP_F64_UNDERFLOW - 1e-9,
            EXP_F64_OVERFLOW,
            0.346_573_590_279_972_6,
            -0.346_573_590_279_972_6,
            -3.5,
        ]);
        let want: Vec<f64> = xs.iter().map(|&x| exp_f64_scalar(x)).collect();
        for (&x, &y) in xs.iter().zip(&want) {
            if x < EXP_F64_UNDERFLOW {
                assert_eq!(y, 0.0, "exp({x})");
            } else if x > EXP_F64_OVERFLOW {
                assert_eq!(y, f64::INFINITY, "exp({x})");
            } else {
                let e = x.exp();
                assert!(
                    (y - e).abs() <= 4.0 * f64::EPSILON * e,
                    "exp({x}) = {y}, libm {e}"
                );
            }
        }
        assert!(exp_f64_scalar(f64::NAN).is_nan());
        for level in SimdLevel::available() {
            let mut got = xs.clone();
            exp_f64_in_place_at(level, &mut got);
            for ((g, w), x) in got.iter().zip(&want).zip(&xs) {
                assert_eq!(g.to_bits(), w.to_bits(), "{level:?}: exp({x})");
            }
            let mut nan = vec![f64::NAN; 9];
            exp_f64_in_place_at(level, &mut nan);
            assert!(nan.iter().all(|v| v.is_nan()), "{level:?}: NaN lost");
        }
    }

    #[test]
    fn fma_probe_counts_flops() {
        for level in SimdLevel::available() {
            assert_eq!(fma_probe(level, 10), 10 * 12 * 2 * level.lanes() as u64);
        }
    }
}
