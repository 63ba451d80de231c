//! The shared hot kernel of EM and Fisher-vector encoding: GMM log-likelihoods and posteriors
//! for a block of descriptors, and the zeroth/first/second-order statistics Σγ, γᵀx, γᵀx² — all
//! as matrix products.
//!
//! For a block `X` (n × D) the per-component log-densities are
//! `l = [x², x] · C + b` with `C = [−Λ/2 ; μΛ]ᵀ` (2D × K, Λ = 1/σ²) and
//! `b_k = log π_k − ½ Σ_d log σ²_kd − ½ Σ_d μ²_kd Λ_kd`, so one GEMM of inner size 2D gives all
//! `n × K` log-likelihoods; a row softmax (log-sum-exp) turns them into posteriors γ. The
//! statistics are another GEMM: `γᵀ [x², x]` (K × 2D). Blocks are accumulated in `f64`.

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};

use crate::gmm::Gmm;
use crate::kernels::{self, SimdLevel};

/// Rows per block: small enough that a block's scratch stays in L2 cache.
pub const BLOCK: usize = 256;

/// −(1/2) log(2π), per dimension.
const HALF_LOG_2PI: f64 = 0.918_938_533_204_672_8;

/// Per-GMM constants that turn log-likelihoods into one matrix product.
#[derive(Clone, Debug)]
pub struct GmmTerms {
    k: usize,
    d: usize,
    /// `2D × K` row-major: rows `0..D` hold −1/(2σ²), rows `D..2D` hold μ/σ².
    coef: Vec<f32>,
    /// `K` values: log π − ½ Σ log σ² − ½ Σ μ²/σ².
    bias: Vec<f32>,
    /// −(D/2) log 2π, added to the log-sum-exp to give true log-densities.
    log_norm: f64,
    /// SIMD level of the softmax and sparse-statistics kernels.
    level: SimdLevel,
    /// Direct form for [`refine_posteriors`]: `K × D` means, `K × D` 1/σ², and `K` values
    /// log π − ½ Σ log σ², all in f64.
    mean64: Vec<f64>,
    ivar64: Vec<f64>,
    dbias: Vec<f64>,
}

impl GmmTerms {
    /// Precomputes the matrix-product form of `gmm`'s log-densities.
    pub fn new(gmm: &Gmm) -> Self {
        let (k, d) = (gmm.k(), gmm.d());
        let mut coef = vec![0f32; 2 * d * k];
        let mut bias = vec![0f32; k];
        let mut ivar64 = vec![0f64; k * d];
        let mut dbias = vec![0f64; k];
        for c in 0..k {
            let (mean, var) = (gmm.mean(c), gmm.variance(c));
            let mut b = (gmm.weights()[c] as f64).ln();
            let mut db = b;
            for j in 0..d {
                let inv = 1.0 / var[j] as f64;
                ivar64[c * d + j] = inv;
                coef[j * k + c] = (-0.5 * inv) as f32;
                coef[(d + j) * k + c] = (mean[j] as f64 * inv) as f32;
                b -= 0.5 * (var[j] as f64).ln() + 0.5 * (mean[j] as f64).powi(2) * inv;
                db -= 0.5 * (var[j] as f64).ln();
            }
            bias[c] = b as f32;
            dbias[c] = db;
        }
        Self {
            k,
            d,
            coef,
            bias,
            log_norm: -(d as f64) * HALF_LOG_2PI,
            level: SimdLevel::detect(),
            mean64: gmm.means().iter().map(|&v| v as f64).collect(),
            ivar64,
            dbias,
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
    /// `K × 2D` row-major: the block's `γᵀ[x², x]`.
    pub stats: Vec<f32>,
    /// `BLOCK` per-row log-likelihoods.
    pub row_ll: Vec<f64>,
    /// `K` per-component sums of the block's posteriors, Σᵢ γᵢₖ (f32, one block).
    col: Vec<f32>,
    /// `D`: one row in f64, and `(component, log-density)` pairs, for [`refine_posteriors`].
    xd: Vec<f64>,
    refined: Vec<(usize, f64)>,
    idx: Vec<usize>,
}

impl Scratch {
    /// Working memory for a `k`-component GMM in `d` dimensions.
    pub fn new(k: usize, d: usize) -> Self {
        Self {
            aug: vec![0.0; BLOCK * 2 * d],
            post: vec![0.0; BLOCK * k],
            stats: vec![0.0; k * 2 * d],
            row_ll: vec![0.0; BLOCK],
            col: vec![0.0; k],
            xd: vec![0.0; d],
            refined: Vec::with_capacity(k),
            idx: Vec::with_capacity(k),
        }
    }
}

/// Computes the posteriors γ (into `scratch.post[..n*K]`) and the per-row log-likelihoods
/// `log p(x)` (into `scratch.row_ll[..n]`) of the `n ≤ BLOCK` rows of `x` (`n × D`).
/// Also leaves `[x², x]` in `scratch.aug` for [`block_statistics`].
pub fn block_posteriors(terms: &GmmTerms, x: &[f32], n: usize, scratch: &mut Scratch) {
    block_log_densities(terms, x, None, n, scratch);
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
    finite
}

/// Computes `γᵀ[x², x]` (`K × 2D`, into `scratch.stats`) for the block whose posteriors and
/// augmented rows [`block_posteriors`] left in `scratch`.
///
/// Posteriors that are exactly zero (log-density more than ~87 below the row's best, or removed
/// by [`prune_posteriors`]) contribute nothing, so when few are non-zero the product is formed
/// sparsely — one `γᵢₖ · [xᵢ², xᵢ]` update per non-zero — which gives the same sums up to f32
/// rounding order. Otherwise it is one dense GEMM.
pub fn block_statistics(terms: &GmmTerms, n: usize, scratch: &mut Scratch) {
    let nnz = scratch.post[..n * terms.k]
        .iter()
        .filter(|&&g| g != 0.0)
        .count();
    if nnz * SPARSE_RATIO <= n * terms.k {
        statistics_sparse(terms, n, scratch);
    } else {
        statistics_dense(terms, n, scratch);
    }
}

/// `γᵀ[x², x]` as one GEMM, computed as its transpose `[x², x]ᵀ γ` (2D × K) written through a
/// transposed view of `stats`: faer's kernels run this orientation faster for these shapes.
fn statistics_dense(terms: &GmmTerms, n: usize, scratch: &mut Scratch) {
    let (k, d) = (terms.k, terms.d);
    matmul(
        MatMut::from_row_major_slice_mut(&mut scratch.stats, k, 2 * d).transpose_mut(),
        Accum::Replace,
        MatRef::from_row_major_slice(&scratch.aug[..n * 2 * d], n, 2 * d).transpose(),
        MatRef::from_row_major_slice(&scratch.post[..n * k], n, k),
        1.0f32,
        Par::Seq,
    );
}

/// `γᵀ[x², x]` as one `stats[k] += γᵢₖ [xᵢ², xᵢ]` update per non-zero posterior.
fn statistics_sparse(terms: &GmmTerms, n: usize, scratch: &mut Scratch) {
    let (k, d) = (terms.k, terms.d);
    scratch.stats.fill(0.0);
    kernels::sparse_atb_at(
        terms.level,
        &scratch.post[..n * k],
        &scratch.aug[..n * 2 * d],
        n,
        k,
        2 * d,
        &mut scratch.stats,
    );
}

/// Makes the significant posteriors of a block exact to f64 evaluation: for every row `i` of
/// `x` (`n × D`, the rows given to [`block_posteriors`]) and every component with
/// `γᵢₖ ≥ threshold`, recomputes `lᵢₖ = log πₖ − ½ Σ log σ²ₖ − ½ Σ (xᵢ − μₖ)²/σ²ₖ` directly in
/// f64, then renormalises the row: refined components get `exp(lᵢₖ)/Z`, the others keep their
/// matrix-product values rescaled to the new `Z`, and `row_ll` becomes `log Z − (D/2) log 2π`.
///
/// The matrix-product form loses accuracy when the data spread is large against the component
/// widths (its terms cancel; see `docs/performance.md`); refining the few components that matter
/// costs `O(D)` per significant posterior, vectorised at the dispatched level.
pub fn refine_posteriors(
    terms: &GmmTerms,
    x: &[f32],
    n: usize,
    threshold: f32,
    scratch: &mut Scratch,
) {
    let (k, d) = (terms.k, terms.d);
    debug_assert!(n <= BLOCK && x.len() == n * d);
    let Scratch {
        post,
        row_ll,
        xd,
        refined,
        idx,
        ..
    } = scratch;
    for ((row, g), ll) in x
        .chunks_exact(d)
        .zip(post.chunks_exact_mut(k))
        .zip(row_ll.iter_mut())
        .take(n)
    {
        idx.clear();
        kernels::indices_at_least_at(terms.level, g, threshold, idx);
        if idx.is_empty() {
            continue;
        }
        xd.iter_mut().zip(row).for_each(|(a, &b)| *a = b as f64);
        refined.clear();
        // The row's posteriors sum to one, so the unrefined ones sum to 1 − Σ refined.
        let mut rest = 1f64;
        for &c in idx.iter() {
            rest -= g[c] as f64;
            let q = kernels::quad_form_at(
                terms.level,
                xd,
                &terms.mean64[c * d..],
                &terms.ivar64[c * d..],
            );
            refined.push((c, terms.dbias[c] - 0.5 * q));
        }
        let rest = rest.max(0.0);
        let max = refined
            .iter()
            .map(|r| r.1)
            .fold(f64::NEG_INFINITY, f64::max);
        // The unrefined posteriors are exp(l − lse_old); rescale them to the new max.
        let tail = (*ll - terms.log_norm - max).exp();
        let mut z = rest * tail;
        for r in refined.iter_mut() {
            r.1 = (r.1 - max).exp();
            z += r.1;
        }
        let inv = 1.0 / z;
        let scale = (tail * inv) as f32;
        g.iter_mut().for_each(|v| *v *= scale);
        for &(c, e) in refined.iter() {
            g[c] = (e * inv) as f32;
        }
        *ll = max + z.ln() + terms.log_norm;
    }
}

/// Adds the block's statistics (left in `scratch` by [`block_posteriors`] and
/// [`block_statistics`]) to `f64` accumulators: `s0[k] += Σᵢ γᵢₖ` (`K`), `s1[k·D + j] += Σᵢ γᵢₖ xᵢⱼ`
/// and `s2[k·D + j] += Σᵢ γᵢₖ xᵢⱼ²` (`K × D`). The posterior column sums are formed in f32
/// within the block (as the statistics GEMM sums) with the vector kernel, then added in f64.
pub fn add_block_sums(
    terms: &GmmTerms,
    n: usize,
    scratch: &mut Scratch,
    s0: &mut [f64],
    s1: &mut [f64],
    s2: &mut [f64],
) {
    let (k, d) = (terms.k, terms.d);
    scratch.col.fill(0.0);
    for row in scratch.post[..n * k].chunks_exact(k) {
        kernels::axpy_at(terms.level, 1.0, row, &mut scratch.col);
    }
    for (s, &g) in s0.iter_mut().zip(&scratch.col) {
        *s += g as f64;
    }
    for ((st, s1), s2) in scratch
        .stats
        .chunks_exact(2 * d)
        .zip(s1.chunks_exact_mut(d))
        .zip(s2.chunks_exact_mut(d))
    {
        let (sq, lin) = st.split_at(d);
        for (s, &v) in s2.iter_mut().zip(sq) {
            *s += v as f64;
        }
        for (s, &v) in s1.iter_mut().zip(lin) {
            *s += v as f64;
        }
    }
}

/// The sparse form of [`block_statistics`] is used when at most `1/SPARSE_RATIO` of the block's
/// posteriors are non-zero (one sparse update costs about as much as this many dense ones).
const SPARSE_RATIO: usize = 4;

/// Sets every posterior below `threshold` in the block to zero (VLFeat's rule for Fisher
/// vectors: such terms are skipped, not renormalised) and returns how many were removed.
/// Zeroed posteriors let [`block_statistics`] use its sparse form.
pub fn prune_posteriors(
    terms: &GmmTerms,
    n: usize,
    threshold: f32,
    scratch: &mut Scratch,
) -> usize {
    let mut removed = 0;
    for g in &mut scratch.post[..n * terms.k] {
        // Branch-free so that it vectorises.
        let drop = *g < threshold;
        removed += (drop && *g != 0.0) as usize;
        *g = if drop { 0.0 } else { *g };
    }
    removed
}

/// Sufficient statistics of a set of descriptors under a GMM, accumulated in `f64`.
#[derive(Clone, Debug, PartialEq)]
pub struct SufficientStats {
    /// `K`: Σᵢ γᵢₖ.
    pub s0: Vec<f64>,
    /// `K × D`: Σᵢ γᵢₖ xᵢ.
    pub s1: Vec<f64>,
    /// `K × D`: Σᵢ γᵢₖ xᵢ².
    pub s2: Vec<f64>,
    /// Σᵢ log p(xᵢ).
    pub loglik: f64,
    /// Number of descriptors accumulated.
    pub count: usize,
}

impl SufficientStats {
    /// Zero statistics for `k` components in `d` dimensions.
    pub fn zeros(k: usize, d: usize) -> Self {
        Self {
            s0: vec![0.0; k],
            s1: vec![0.0; k * d],
            s2: vec![0.0; k * d],
            loglik: 0.0,
            count: 0,
        }
    }

    /// Resets to zero without reallocating.
    pub fn clear(&mut self) {
        self.s0.fill(0.0);
        self.s1.fill(0.0);
        self.s2.fill(0.0);
        self.loglik = 0.0;
        self.count = 0;
    }

    /// Adds another accumulator (e.g. another thread's) into this one.
    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.s0.iter_mut().zip(&other.s0) {
            *a += b;
        }
        for (a, b) in self.s1.iter_mut().zip(&other.s1) {
            *a += b;
        }
        for (a, b) in self.s2.iter_mut().zip(&other.s2) {
            *a += b;
        }
        self.loglik += other.loglik;
        self.count += other.count;
    }

    /// Accumulates the statistics of the rows of `x` (`n × D`, any `n`), block by block.
    pub fn accumulate(&mut self, terms: &GmmTerms, x: &[f32], scratch: &mut Scratch) {
        let d = terms.d;
        for block in x.chunks(BLOCK * d) {
            let n = block.len() / d;
            block_posteriors(terms, block, n, scratch);
            block_statistics(terms, n, scratch);
            add_block_sums(terms, n, scratch, &mut self.s0, &mut self.s1, &mut self.s2);
            self.loglik += scratch.row_ll[..n].iter().sum::<f64>();
            self.count += n;
        }
    }
}

/// E-step statistics of EM, taken about reference points `r_k` (the current means) and over
/// the posteriors at or above `τ` times the descriptor's largest one (the others count as
/// zero, as VLFeat's EM skips posteriors below `10⁻²/K`): `s0[k] = Σᵢ γᵢₖ`, and
/// `moments[k·2D..]` = `[Σᵢ γᵢₖ δᵢₖ, Σᵢ γᵢₖ δᵢₖ²]` with `δᵢₖ = xᵢ − r_k`, summed in f32 per
/// block of rows and in f64 across blocks. The log-likelihood is exact (every posterior enters
/// the log-sum-exp).
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
    /// GEMM, then per row one pass that forms `exp(l − max)`, the log-likelihood and the
    /// entries with `exp(l − max) ≥ threshold` ([`kernels::exp_candidates_at`]), then the kept
    /// entries grouped by component and their moments about `refs` (`K × D`, `r_k` in the
    /// coordinates of `x`; [`kernels::moments_grouped_f32_at`]), which costs `O(D)` per kept
    /// posterior instead of a second dense GEMM. Returns whether every value of `x` was
    /// finite.
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
        for block in x.chunks(BLOCK * d) {
            let n = block.len() / d;
            finite &= block_log_densities(terms, block, Some(shift), n, &mut scratch.block);
            let np = scratch.select(terms, n, threshold, self);
            let (starts, rows, w) = (&scratch.gstart, &scratch.grow[..np], &scratch.gw[..np]);
            kernels::moments_grouped_f32_at(
                terms.level,
                block,
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
            self.kept += np;
            self.count += n;
        }
        finite
    }
}

/// Working memory of [`EmStats::accumulate`] for one thread: the block kernel's scratch and
/// the kept (row, component, posterior) entries of one block, before and after grouping by
/// component.
#[derive(Clone, Debug)]
pub struct EmScratch {
    block: Scratch,
    /// The block's kept entries in row order: component and row (grown on demand; at most
    /// `BLOCK × K`).
    comp: Vec<u32>,
    row: Vec<u32>,
    /// `BLOCK`: each row's `1/S`, S the sum of its `exp(l − max)`.
    rinv: Vec<f32>,
    /// `K + 1` offsets of each component's entries in `grow`/`gw`, and a running copy.
    gstart: Vec<u32>,
    gpos: Vec<u32>,
    /// The same entries grouped by component (rows in order within each).
    grow: Vec<u32>,
    gw: Vec<f32>,
}

impl EmScratch {
    /// Working memory for a `k`-component GMM in `d` dimensions.
    pub fn new(k: usize, d: usize) -> Self {
        // Room for 16 entries per row to start with; typical blocks keep far fewer.
        let m = BLOCK * k.min(16) + k;
        Self {
            block: Scratch::new(k, d),
            comp: vec![0; m],
            row: vec![0; m],
            rinv: vec![0.0; BLOCK],
            gstart: vec![0; k + 1],
            gpos: vec![0; k],
            grow: vec![0; m],
            gw: vec![0.0; m],
        }
    }

    /// Turns the block's log-densities into log-likelihoods (added to `st.loglik`, the mass
    /// left out to `st.dropped`) and the kept posteriors — `γᵢₖ ≥ threshold · maxⱼ γᵢⱼ`, i.e.
    /// `exp(lᵢₖ − maxⱼ lᵢⱼ) ≥ threshold` — grouped by component (rows in order within each);
    /// returns how many were kept.
    fn select(&mut self, terms: &GmmTerms, n: usize, threshold: f32, st: &mut EmStats) -> usize {
        let k = terms.k;
        self.gstart.fill(0);
        let mut np = 0;
        // Σ log Sᵢ as the log of products of up to 16 sums (each in [1, K], so the product
        // stays far inside f64's range): one logarithm per 16 rows.
        let (mut prod, mut log_sum) = (1f64, 0f64);
        for (i, row) in self.block.post[..n * k].chunks_exact_mut(k).enumerate() {
            if self.comp.len() < np + k {
                let m = (2 * self.comp.len()).max(np + k);
                self.comp.resize(m, 0);
                self.row.resize(m, 0);
            }
            let r = kernels::exp_candidates_at(terms.level, row, threshold, &mut self.comp[np..]);
            st.loglik += r.max as f64 + terms.log_norm;
            prod *= r.sum;
            if i % 16 == 15 {
                log_sum += prod.ln();
                prod = 1.0;
            }
            self.rinv[i] = (1.0 / r.sum) as f32;
            st.dropped += r.rest / r.sum;
            for &c in &self.comp[np..np + r.count] {
                self.gstart[c as usize + 1] += 1;
            }
            self.row[np..np + r.count].fill(i as u32);
            np += r.count;
        }
        st.loglik += log_sum + prod.ln();
        for c in 0..k {
            self.gstart[c + 1] += self.gstart[c];
        }
        if self.grow.len() < np {
            self.grow.resize(self.comp.len(), 0);
            self.gw.resize(self.comp.len(), 0.0);
        }
        self.gpos.copy_from_slice(&self.gstart[..k]);
        let post = &self.block.post;
        for (&c, &i) in self.comp[..np].iter().zip(&self.row[..np]) {
            let q = &mut self.gpos[c as usize];
            self.grow[*q as usize] = i;
            self.gw[*q as usize] = post[i as usize * k + c as usize] * self.rinv[i as usize];
            *q += 1;
        }
        np
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
        block_posteriors(&terms, &x, n, &mut scratch);
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
        let mut st = SufficientStats::zeros(3, 2);
        st.accumulate(&terms, &x, &mut scratch);
        assert_eq!(st.count, n);
        assert!((st.s0.iter().sum::<f64>() - n as f64).abs() < 1e-5);
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
    fn sparse_and_dense_statistics_agree_at_every_level() {
        let (k, d, n) = (37, 24, 200);
        let (gmm, x) = mixture(k, d, n);
        for level in SimdLevel::available() {
            let terms = GmmTerms::new(&gmm).with_level(level);
            let mut scratch = Scratch::new(k, d);
            block_posteriors(&terms, &x, n, &mut scratch);
            let zeros = scratch.post[..n * k].iter().filter(|&&g| g == 0.0).count();
            assert!(zeros > n * k / 2, "test data should give many exact zeros");
            statistics_dense(&terms, n, &mut scratch);
            let dense = scratch.stats.clone();
            statistics_sparse(&terms, n, &mut scratch);
            // Direct f64 sums Σᵢ γᵢₖ [xᵢ², xᵢ] from the same posteriors.
            for c in 0..k {
                for j in 0..2 * d {
                    let want: f64 = (0..n)
                        .map(|i| scratch.post[i * k + c] as f64 * scratch.aug[i * 2 * d + j] as f64)
                        .sum();
                    let tol = 1e-5 * (want.abs() + 1e-3);
                    let (s, g) = (scratch.stats[c * 2 * d + j], dense[c * 2 * d + j]);
                    assert!((s as f64 - want).abs() < tol, "{level:?} sparse {c} {j}");
                    assert!((g as f64 - want).abs() < tol, "{level:?} dense {c} {j}");
                }
            }
        }
    }

    #[test]
    fn softmax_levels_give_the_same_posteriors() {
        let (k, d, n) = (19, 8, 70);
        let (gmm, x) = mixture(k, d, n);
        let mut reference = Scratch::new(k, d);
        let scalar = GmmTerms::new(&gmm).with_level(SimdLevel::Scalar);
        block_posteriors(&scalar, &x, n, &mut reference);
        for level in SimdLevel::available() {
            let terms = GmmTerms::new(&gmm).with_level(level);
            let mut scratch = Scratch::new(k, d);
            block_posteriors(&terms, &x, n, &mut scratch);
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

    #[test]
    fn pruning_zeroes_small_posteriors_only() {
        let (k, d, n) = (19, 8, 70);
        let (gmm, x) = mixture(k, d, n);
        let terms = GmmTerms::new(&gmm);
        let mut scratch = Scratch::new(k, d);
        block_posteriors(&terms, &x, n, &mut scratch);
        let before = scratch.post.clone();
        let small = before[..n * k]
            .iter()
            .filter(|&&g| g > 0.0 && g < 1e-3)
            .count();
        assert!(small > 0, "test data should have small posteriors");
        assert_eq!(prune_posteriors(&terms, n, 1e-3, &mut scratch), small);
        for (a, b) in scratch.post[..n * k].iter().zip(&before) {
            assert_eq!(*a, if *b < 1e-3 { 0.0 } else { *b });
        }
    }

    #[test]
    fn accumulated_statistics_match_f64_direct_sums() {
        let (k, d, n) = (21, 16, 700);
        let (gmm, x) = mixture(k, d, n);
        let l = log_densities_direct(&gmm, &x);
        let (mut s0, mut s1, mut s2) = (vec![0f64; k], vec![0f64; k * d], vec![0f64; k * d]);
        for (i, row) in x.chunks_exact(d).enumerate() {
            let li = &l[i * k..(i + 1) * k];
            let m = li.iter().cloned().fold(f64::MIN, f64::max);
            let lse = m + li.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
            for c in 0..k {
                let g = (li[c] - lse).exp();
                s0[c] += g;
                for j in 0..d {
                    s1[c * d + j] += g * row[j] as f64;
                    s2[c * d + j] += g * (row[j] as f64).powi(2);
                }
            }
        }
        for level in SimdLevel::available() {
            let terms = GmmTerms::new(&gmm).with_level(level);
            let mut st = SufficientStats::zeros(k, d);
            st.accumulate(&terms, &x, &mut Scratch::new(k, d));
            assert_eq!(st.count, n);
            for c in 0..k {
                assert!(
                    (st.s0[c] - s0[c]).abs() < 1e-4 * (1.0 + s0[c]),
                    "{level:?} s0 {c}"
                );
            }
            for i in 0..k * d {
                assert!(
                    (st.s1[i] - s1[i]).abs() < 1e-4 * (1.0 + s1[i].abs()),
                    "{level:?} s1"
                );
                assert!(
                    (st.s2[i] - s2[i]).abs() < 1e-4 * (1.0 + s2[i]),
                    "{level:?} s2"
                );
            }
        }
    }

    #[test]
    fn refinement_restores_f64_accuracy() {
        // Data far from the origin with narrow components: the expanded form cancels badly.
        let (k, d, n) = (24, 32, 150);
        let (gmm0, x0) = mixture(k, d, n);
        let shift = 4.0f32;
        let means = gmm0.means().iter().map(|m| m + shift).collect();
        let vars = gmm0.variances().iter().map(|v| v * 0.05).collect();
        let gmm = Gmm::new(k, d, means, vars, gmm0.weights().to_vec()).unwrap();
        let x: Vec<f32> = x0.iter().map(|v| v + shift).collect();
        let direct = log_densities_direct(&gmm, &x);
        let errors = |scratch: &Scratch| {
            let (mut ll_err, mut post_err) = (0f64, 0f64);
            for i in 0..n {
                let l = &direct[i * k..(i + 1) * k];
                let m = l.iter().cloned().fold(f64::MIN, f64::max);
                let lse = m + l.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
                ll_err = ll_err.max((scratch.row_ll[i] - lse).abs());
                for c in 0..k {
                    let g = (l[c] - lse).exp();
                    post_err = post_err.max((scratch.post[i * k + c] as f64 - g).abs());
                }
            }
            (ll_err, post_err)
        };
        for level in SimdLevel::available() {
            let terms = GmmTerms::new(&gmm).with_level(level);
            let mut scratch = Scratch::new(k, d);
            block_posteriors(&terms, &x, n, &mut scratch);
            let (ll_before, _) = errors(&scratch);
            refine_posteriors(&terms, &x, n, 1e-7, &mut scratch);
            let (ll_after, post_after) = errors(&scratch);
            assert!(
                ll_before > 1e-3,
                "{level:?}: the test case should be hard ({ll_before})"
            );
            assert!(
                ll_after < 1e-6,
                "{level:?}: log-likelihood error {ll_after}"
            );
            assert!(post_after < 1e-6, "{level:?}: posterior error {post_after}");
        }
    }

    /// [`EmStats::accumulate`] against a direct f64 evaluation in data coordinates: the shifted
    /// model and data, the moments about reference points other than the means, several
    /// blocks, and thresholds that keep everything, some or few entries.
    #[test]
    fn em_statistics_match_direct_evaluation_over_the_kept_posteriors() {
        let (k, d, n) = (7, 5, 700);
        let (gmm, x) = mixture(k, d, n);
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
        for level in SimdLevel::available() {
            let terms = GmmTerms::new(&centred).with_level(level);
            for tau in [0.0f32, 1e-6, 1e-2] {
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
                        assert!(
                            tau == 0.0 || (e / tau as f64 - 1.0).abs() > 1e-3,
                            "entry at the threshold: the test data must avoid it"
                        );
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
            }
        }
    }
}
