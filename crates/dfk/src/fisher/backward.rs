//! Backward pass of the Fisher vector: the gradient of `L = ⟨g, φ(X)⟩` with respect to the GMM
//! means μ, log-standard deviations s = log σ and softmax weight logits a (π = softmax(a)),
//! method.md §3, in matrix-product form.
//!
//! With `c_k = 1/(N√π_k)`, `c'_k = c_k/√2`, `z_ikd = (x_id − μ_kd)/σ_kd`:
//!
//! ```text
//! ∂L/∂p   = (g − φ⟨φ, g⟩)/‖p‖                        (l2; the identity otherwise)
//! ∂L/∂Φ   = ∂L/∂p · a (|Φ| + ε)^(a−1)                 (improved; split into G^u, G^v)
//! A_ik    = Σ_d [c_k G^u_kd z_ikd + c'_k G^v_kd (z²_ikd − 1)]      (= ∂L/∂γ_ik)
//! B_ik    = γ_ik (A_ik − Σ_j γ_ij A_ij)                            (= ∂L/∂l_ik)
//! T0_k = Σ_i B_ik,  T1_kd = Σ_i B_ik (x_id − μ_kd),  T2_kd = Σ_i B_ik (x_id − μ_kd)²
//! ∂L/∂μ   = (T1/σ − c G^u S0 − √2 G^v u)/σ
//! ∂L/∂s   = T2/σ² − T0 − G^u u − 2 G^v (v + c' S0)
//! E_k     = T0_k − ½ Σ_d (G^u u + G^v v),   ∂L/∂a_j = E_j − π_j Σ_k E_k
//! ```
//!
//! where `S0_k = Σ_i γ_ik` and `u`, `v` come from the forward pass (`Σ_i γ z = u/c`,
//! `Σ_i γ z² = v/c' + S0` remove the other direct terms of method.md §3).
//!
//! Posteriors VLFeat skips (below the threshold, inactive components) are constant zeros of
//! the forward function, so A is only needed where γ is kept, and the exact derivative is
//! `B_ik = γ_ik (m_ik A_ik − Σ_j m_ij γ_ij A_ij)` with the keep-mask `m`.
//!
//! Shape of the computation, per image (Φ, p and ‖p‖ must be known before A can be formed;
//! nothing of size N × K × D is stored):
//! 1. the forward results: [`FisherEncoder::backward_batch_cached`] restores Φ from the encoded
//!    vector and [`ForwardCache`] (‖p‖, S0), which the caller has anyway after encoding;
//!    [`FisherEncoder::backward`] runs the forward pass first;
//! 2. one pass over the descriptors, per block of rows, laid out as the forward pass's
//!    (`FisherEncoder::block_statistics`): the GEMM log-densities, the entries to refine,
//!    grouped by component, their f64 log-densities together with A
//!    (`simd::quad_poly_pairs_at`, the same quadratic forms as the forward pass, so the same
//!    posteriors are kept), then `B = γ (m A − s)` and their moments about μ_k in f64 with
//!    one component's sums in registers — the expanded GEMM form `[x², x] W + r` would cancel
//!    like the forward statistics do. The unrefined entries, whose `B = −γ s` is tiny but
//!    dense, all enter `T0`; those with `γ ≥ SKIP_CUTOFF` (3e-8) also `T1`, `T2` through the
//!    same grouped moments in f32 (a dense `Bᵀ[x², x]` product of forward size before);
//!    dropping the rest changes the gradient by < 1e-7 of its largest entry on the benchmark
//!    workload (f32 rounding of the cached vectors alone is ~4e-8).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use rayon::prelude::*;

use super::{
    all_finite, image_error, images_per_job, FisherEncoder, FisherOptions, FisherScratch, Refined,
    L2_FLOOR,
};
use crate::error::{check_finite, Error, Result};
use crate::kernels::{self, SimdLevel};
use crate::stats::{BlockPrefetch, BLOCK};

#[path = "backward_simd.rs"]
mod simd;

#[path = "posteriors.rs"]
mod posteriors;

pub use posteriors::StoredPosteriors;
use posteriors::{ImageEntries, Posteriors, MAX_K};

/// Gradient of a scalar with respect to the GMM parameters, accumulated in f64.
#[derive(Clone, Debug, PartialEq)]
pub struct GmmGradient {
    /// Number of components.
    pub k: usize,
    /// Dimension.
    pub d: usize,
    /// `K × D`: ∂L/∂μ.
    pub means: Vec<f64>,
    /// `K × D`: ∂L/∂s with s = log σ.
    pub log_std: Vec<f64>,
    /// `K`: ∂L/∂a with π = softmax(a).
    pub weight_logits: Vec<f64>,
}

impl GmmGradient {
    /// A zero gradient for `k` components in `d` dimensions.
    pub fn zeros(k: usize, d: usize) -> Self {
        Self {
            k,
            d,
            means: vec![0.0; k * d],
            log_std: vec![0.0; k * d],
            weight_logits: vec![0.0; k],
        }
    }

    /// Adds `other` (same shape) element-wise.
    pub fn merge(&mut self, other: &Self) {
        debug_assert!(self.k == other.k && self.d == other.d);
        for (a, b) in self.means.iter_mut().zip(&other.means) {
            *a += b;
        }
        for (a, b) in self.log_std.iter_mut().zip(&other.log_std) {
            *a += b;
        }
        for (a, b) in self.weight_logits.iter_mut().zip(&other.weight_logits) {
            *a += b;
        }
    }

    /// Multiplies every entry by `f`.
    pub fn scale(&mut self, f: f64) {
        self.means
            .iter_mut()
            .chain(&mut self.log_std)
            .chain(&mut self.weight_logits)
            .for_each(|v| *v *= f);
    }

    /// `∂L/∂(log σ²) = ½ ∂L/∂(log σ)`, `K × D`.
    pub fn log_variance(&self) -> Vec<f64> {
        self.log_std.iter().map(|v| 0.5 * v).collect()
    }
}

/// What [`FisherEncoder::backward_batch_cached`] needs from the forward pass of a batch, made
/// by [`FisherEncoder::encode_batch_cached`]: per image its descriptor count, `‖p‖` (the L2
/// divisor, 1 without `l2`) and `S0_k = Σ_i γ_ik` (`K` values), i.e. `O(images · K)`.
/// Φ itself is recovered from the encoded vector: `p = φ‖p‖`, then the signed power inverted.
/// Made by [`FisherEncoder::encode_batch_keeping`], it may also hold the images' posteriors,
/// which spare the backward pass recomputing them (see [`StoredPosteriors`]).
#[derive(Clone, Debug, PartialEq)]
pub struct ForwardCache {
    k: usize,
    len: usize,
    counts: Vec<usize>,
    norms: Vec<f64>,
    s0: Vec<f64>,
    posteriors: Option<Posteriors>,
}

impl ForwardCache {
    /// Number of images the cache describes.
    pub fn images(&self) -> usize {
        self.counts.len()
    }

    /// Whether the images' posteriors are stored (the backward pass then does not recompute
    /// them).
    pub fn has_posteriors(&self) -> bool {
        self.posteriors.is_some()
    }

    /// Bytes of the stored posteriors (12 per entry, 4 per block of descriptors and per
    /// image; 0 without them) and their number of entries.
    pub fn posterior_size(&self) -> (usize, usize) {
        self.posteriors.as_ref().map_or((0, 0), Posteriors::size)
    }
}

/// A batch of images (`data`, `offsets`) with its encoding and forward cache, as the cached
/// backward passes read them.
struct CachedBatch<'a> {
    data: &'a [f32],
    offsets: &'a [usize],
    encoded: &'a [f32],
    cache: &'a ForwardCache,
}

/// Images per run of stored posteriors (at most; see
/// [`FisherEncoder::encode_batch_keeping`]).
const IMAGES_PER_RUN: usize = 16;

/// Images are summed in at most this many fixed chunks, so the order of the f64 sums (and the
/// result) does not depend on the thread count.
const MAX_CHUNKS: usize = 64;

/// Skipped posteriors below this (by the GEMM, renormalised) enter only `T0` of the backward
/// pass, not T1 and T2: their `B = −γ s` times `[x − μ, (x − μ)²]` is then tiny. The error
/// is linear in the cutoff; measured relative to the gradient's largest entry: ~3e-8 (μ and
/// log σ) on the K = 64 benchmark workload against a 1e-8 cutoff (1e-8 changed it by 1e-8 to
/// 3e-8 at K = 64 and 256), 1.3e-7 on the test case with tight components
/// (`fisher_backward.rs`); the cached pass's f32 vectors alone give ~4e-8, dropping every
/// skipped entry up to 9e-6. A smaller cutoff costs time: at 1e-8 the pass took ~3 % more of
/// the forward time at K = 64 (2 threads).
const SKIP_CUTOFF: f64 = 3e-8;

/// Sums `f(image, upstream, gradient, scratch)` over `images` images whose upstream gradients
/// are the rows of `upstream` (`images × len`), skipping all-zero rows, in [`MAX_CHUNKS`] fixed
/// chunks run in parallel (one scratch per worker from `scratch`), so the result does not
/// depend on the thread count. Errors are prefixed with the image index.
pub(crate) fn sum_gradients<S, F>(
    k: usize,
    d: usize,
    images: usize,
    len: usize,
    upstream: &[f32],
    scratch: impl Fn() -> S + Sync + Send,
    f: F,
) -> Result<GmmGradient>
where
    F: Fn(usize, &[f32], &mut GmmGradient, &mut S) -> Result<()> + Sync,
{
    sum_chunked(k, d, images, scratch, |i, g, scratch| {
        let gp = &upstream[i * len..(i + 1) * len];
        if gp.iter().all(|&v| v == 0.0) {
            return Ok(());
        }
        f(i, gp, g, scratch).map_err(|e| image_error(i, e))
    })
}

/// Sums `f(image, gradient, scratch)` over `images` images in [`MAX_CHUNKS`] fixed chunks run
/// in parallel (one scratch per worker from `scratch`), so the result does not depend on the
/// thread count.
fn sum_chunked<S, F>(
    k: usize,
    d: usize,
    images: usize,
    scratch: impl Fn() -> S + Sync + Send,
    f: F,
) -> Result<GmmGradient>
where
    F: Fn(usize, &mut GmmGradient, &mut S) -> Result<()> + Sync,
{
    let per = images.div_ceil(MAX_CHUNKS).max(1);
    let chunks = images.div_ceil(per);
    let parts: Vec<Result<GmmGradient>> = (0..chunks)
        .into_par_iter()
        .map_init(&scratch, |scratch, c| {
            let mut g = GmmGradient::zeros(k, d);
            for i in c * per..((c + 1) * per).min(images) {
                f(i, &mut g, scratch)?;
            }
            Ok(g)
        })
        .collect();
    let mut total = GmmGradient::zeros(k, d);
    for p in parts {
        total.merge(&p?);
    }
    Ok(total)
}

impl FisherEncoder {
    /// Adds to `grad` the gradient of `L = ⟨grad_phi, φ(x)⟩` for one image `x` (`N × D`),
    /// with ε = `options.sqrt_epsilon`; see the module documentation of the backward pass.
    pub fn backward(
        &self,
        x: &[f32],
        grad_phi: &[f32],
        grad: &mut GmmGradient,
        scratch: &mut FisherScratch,
    ) -> Result<()> {
        let (k, d) = (self.gmm.k(), self.gmm.d());
        if grad_phi.len() != self.len() {
            return Err(Error::dim(
                "upstream gradient ∂L/∂φ",
                self.len(),
                grad_phi.len(),
            ));
        }
        // Every array of the accumulator: its fields are public.
        let arrays = [
            ("means (K·D)", grad.means.len(), k * d),
            ("log-std (K·D)", grad.log_std.len(), k * d),
            ("weight logits (K)", grad.weight_logits.len(), k),
        ];
        if grad.k != k || grad.d != d {
            return Err(Error::dim(
                format!(
                    "gradient accumulator (K = {k}, D = {d}; it has K = {}, D = {})",
                    grad.k, grad.d
                ),
                k * d,
                grad.k * grad.d,
            ));
        }
        if let Some((what, got, expected)) = arrays.into_iter().find(|a| a.1 != a.2) {
            return Err(Error::dim(
                format!("gradient accumulator {what}"),
                expected,
                got,
            ));
        }
        self.check_scratch(scratch)?;
        self.forward(x, scratch)?;
        self.backward_from_forward(x, grad_phi, grad, scratch, None)
    }

    /// The backward pass of one image whose forward results (Φ, φ, ‖p‖, S0) are in `scratch`:
    /// one pass over the descriptors, recomputing the posteriors unless they are given
    /// (`kept`).
    fn backward_from_forward(
        &self,
        x: &[f32],
        grad_phi: &[f32],
        grad: &mut GmmGradient,
        scratch: &mut FisherScratch,
        kept: Option<&ImageEntries>,
    ) -> Result<()> {
        if !all_finite(grad_phi) {
            check_finite("upstream gradient ∂L/∂φ", grad_phi)?;
        }
        let n_total = (x.len() / self.gmm.d()) as f64;
        self.upstream_phi(grad_phi, scratch);
        self.coefficients(n_total, scratch);
        match kept {
            Some(kept) => self.second_pass_kept(x, kept, scratch),
            None => self.second_pass(x, scratch),
        }
        self.parameter_gradient(n_total, grad, scratch);
        // Finite descriptors far from every component (|x − μ|/σ ≳ 1e5) overflow the f32
        // products of the pass: an error, never a NaN gradient returned as a result.
        let finite = |v: &[f64]| v.iter().all(|g| g.is_finite());
        if !(finite(&grad.means) && finite(&grad.log_std) && finite(&grad.weight_logits)) {
            return Err(Error::Invalid(
                "the gradient is not finite: a descriptor lies so far from the GMM's \
                 components (|x − μ|/σ of order 1e5 or more) that float32 products overflow; \
                 rescale the descriptors (PCA whitening, L2 normalisation)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Sum over images of [`backward`](Self::backward), image `i` being rows
    /// `offsets[i]..offsets[i+1]` of `data` and its upstream gradient row `i` of `grad_phis`
    /// (`images × 2KD`). Parallel over images with per-thread scratch; images whose upstream
    /// gradient is all zero are skipped. The result does not depend on the thread count.
    /// When the vectors were just encoded, [`backward_batch_cached`](Self::backward_batch_cached)
    /// saves the forward pass.
    pub fn backward_batch(
        &self,
        data: &[f32],
        offsets: &[usize],
        grad_phis: &[f32],
    ) -> Result<GmmGradient> {
        let images = self.check_batch(data, offsets)?;
        let len = self.len();
        if grad_phis.len() != images * len {
            return Err(Error::dim(
                format!("upstream gradients ({images} images × {len})"),
                images * len,
                grad_phis.len(),
            ));
        }
        let d = self.gmm.d();
        self.sum_over_images(images, grad_phis, |i, gp, g, scratch| {
            self.backward(&data[offsets[i] * d..offsets[i + 1] * d], gp, g, scratch)
        })
    }

    /// [`encode_batch`](Self::encode_batch), also returning what
    /// [`backward_batch_cached`](Self::backward_batch_cached) needs (per image `‖p‖` and S0).
    pub fn encode_batch_cached(
        &self,
        data: &[f32],
        offsets: &[usize],
        out: &mut [f32],
    ) -> Result<ForwardCache> {
        self.encode_batch_keeping(data, offsets, out, 0, None)
    }

    /// [`encode_batch_cached`](Self::encode_batch_cached) that also stores the images'
    /// posteriors in the cache ([`StoredPosteriors`], 12 bytes per entry ≥ 1e-9 of its row's
    /// largest, a few per descriptor) when they take at most `max_posterior_bytes` in all: the
    /// backward pass then reads them instead of recomputing them. Whether they are kept
    /// depends only on the data and the GMM, not on the thread count; collection stops as soon
    /// as the running total exceeds the limit. `recycle`, a cache this encoder is done with,
    /// lends its memory (writing tens of MB into fresh pages costs more than storing them).
    pub fn encode_batch_keeping(
        &self,
        data: &[f32],
        offsets: &[usize],
        out: &mut [f32],
        max_posterior_bytes: usize,
        recycle: Option<ForwardCache>,
    ) -> Result<ForwardCache> {
        let images = self.check_batch(data, offsets)?;
        let (k, d, len) = (self.gmm.k(), self.gmm.d(), self.len());
        if out.len() != images * len {
            return Err(Error::dim(
                format!("Fisher vector batch output ({images} images × {len})"),
                images * len,
                out.len(),
            ));
        }
        let keep = max_posterior_bytes > 0 && k <= MAX_K;
        let used = AtomicUsize::new(0);
        let over = AtomicBool::new(false);
        // Short runs when storing: their buffers stay small enough to be reused from the heap.
        let per = if keep {
            images_per_job(images).min(IMAGES_PER_RUN)
        } else {
            images_per_job(images)
        };
        let mut norms = vec![0f64; images];
        let mut s0 = vec![0f64; images * k];
        let mut spare = recycle
            .and_then(|c| c.posteriors)
            .map_or_else(Vec::new, |p| p.runs);
        let mut runs: Vec<Option<StoredPosteriors>> =
            (0..images.div_ceil(per)).map(|_| spare.pop()).collect();
        // One scratch per worker at a time, handed from job to job.
        let pool = Mutex::new(Vec::new());
        out.par_chunks_mut(per * len)
            .zip(s0.par_chunks_mut(per * k))
            .zip(norms.par_chunks_mut(per))
            .zip(runs.par_iter_mut())
            .enumerate()
            .try_for_each(|(j, (((rows, s0), norms), run))| {
                let taken = pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
                let mut scratch = taken.unwrap_or_else(|| self.scratch());
                scratch.keeping = keep && !over.load(Ordering::Relaxed);
                scratch.kept.reset();
                for (u, row) in rows.chunks_mut(len).enumerate() {
                    let i = j * per + u;
                    self.encode(&data[offsets[i] * d..offsets[i + 1] * d], row, &mut scratch)
                        .map_err(|e| image_error(i, e))?;
                    s0[u * k..(u + 1) * k].copy_from_slice(&scratch.s0);
                    norms[u] = scratch.norm;
                    if scratch.keeping {
                        scratch.kept.end_image();
                    }
                }
                if scratch.keeping {
                    let bytes = scratch.kept.bytes();
                    // Entries are indexed by u32 within a run.
                    if used.fetch_add(bytes, Ordering::Relaxed) + bytes > max_posterior_bytes
                        || scratch.kept.entries() > u32::MAX as usize / 2
                    {
                        over.store(true, Ordering::Relaxed);
                    } else {
                        // The run takes the scratch's buffers; the scratch takes the
                        // recycled run's (or fresh ones) for its next job.
                        let taken = run.take().unwrap_or_default();
                        *run = Some(std::mem::replace(&mut scratch.kept, taken));
                    }
                }
                scratch.keeping = false;
                pool.lock().unwrap_or_else(|e| e.into_inner()).push(scratch);
                Ok::<(), Error>(())
            })?;
        let posteriors = (keep && !over.load(Ordering::Relaxed)).then(|| Posteriors {
            per,
            runs: runs.into_iter().flatten().collect(),
        });
        Ok(ForwardCache {
            k,
            len,
            counts: offsets.windows(2).map(|w| w[1] - w[0]).collect(),
            norms,
            s0,
            posteriors,
        })
    }

    /// The same gradient as [`backward_batch`](Self::backward_batch)`(data, offsets,
    /// grad_phis)`, reusing `encoded` (the `out` of
    /// [`encode_batch_cached`](Self::encode_batch_cached) on the same data) and its `cache`:
    /// one pass over the descriptors instead of two. Φ is recovered from the f32 `encoded`
    /// vectors, so the result agrees with `backward_batch` to f32 rounding of φ (relative
    /// ~1e-7), not bit for bit. A cache or `encoded` that does not fit this encoder and batch
    /// is an error.
    pub fn backward_batch_cached(
        &self,
        data: &[f32],
        offsets: &[usize],
        encoded: &[f32],
        cache: &ForwardCache,
        grad_phis: &[f32],
    ) -> Result<GmmGradient> {
        let images = self.check_cached(data, offsets, encoded, cache)?;
        let len = self.len();
        if grad_phis.len() != images * len {
            return Err(Error::dim(
                format!("upstream gradients ({images} images × {len})"),
                images * len,
                grad_phis.len(),
            ));
        }
        let batch = CachedBatch {
            data,
            offsets,
            encoded,
            cache,
        };
        self.sum_over_images(images, grad_phis, |i, gp, g, scratch| {
            self.backward_cached_image(&batch, i, gp, g, scratch)
        })
    }

    /// [`backward_batch_cached`](Self::backward_batch_cached) for upstream gradients that are
    /// combinations of a few vectors — the SVM objective's `∂L/∂φ_i = Σ_c −α_{c,i} y_{c,i} w_c`:
    /// image `i`'s upstream gradient is `Σ_c coefs[i·m + c] · vectors[c]` (`vectors`: `m × len`
    /// row-major, `coefs`: `images × m`), formed per image in `f32` (added in order of `c`,
    /// zero coefficients skipped) instead of being passed as an `images × len` matrix. The same
    /// result as `backward_batch_cached` on those rows, bit for bit.
    pub fn backward_batch_cached_combined(
        &self,
        data: &[f32],
        offsets: &[usize],
        encoded: &[f32],
        cache: &ForwardCache,
        coefs: &[f32],
        vectors: &[f32],
    ) -> Result<GmmGradient> {
        let images = self.check_cached(data, offsets, encoded, cache)?;
        let (k, d, len) = (self.gmm.k(), self.gmm.d(), self.len());
        if !vectors.len().is_multiple_of(len) {
            return Err(Error::Invalid(format!(
                "upstream vectors have {} values: expected a multiple of the Fisher vector length {len}",
                vectors.len()
            )));
        }
        let m = vectors.len() / len;
        if coefs.len() != images * m {
            return Err(Error::dim(
                format!("upstream coefficients ({images} images × {m} vectors)"),
                images * m,
                coefs.len(),
            ));
        }
        let batch = CachedBatch {
            data,
            offsets,
            encoded,
            cache,
        };
        let scratch = || (self.scratch(), vec![0f32; len]);
        sum_chunked(k, d, images, scratch, |i, g, (scratch, row)| {
            row.fill(0.0);
            for (&c, v) in coefs[i * m..(i + 1) * m]
                .iter()
                .zip(vectors.chunks_exact(len))
            {
                if c != 0.0 {
                    for (r, &w) in row.iter_mut().zip(v) {
                        *r += c * w;
                    }
                }
            }
            if row.iter().all(|&v| v == 0.0) {
                return Ok(());
            }
            self.backward_cached_image(&batch, i, row, g, scratch)
                .map_err(|e| image_error(i, e))
        })
    }

    /// Checks that `encoded` and `cache` come from [`encode_batch_cached`](Self::encode_batch_cached)
    /// of this encoder on the batch `data`/`offsets`; returns the number of images.
    fn check_cached(
        &self,
        data: &[f32],
        offsets: &[usize],
        encoded: &[f32],
        cache: &ForwardCache,
    ) -> Result<usize> {
        let images = self.check_batch(data, offsets)?;
        let (k, len) = (self.gmm.k(), self.len());
        if cache.k != k || cache.len != len {
            return Err(Error::Invalid(format!(
                "forward cache was made for K = {} and Fisher vectors of {} values, this encoder has K = {k} and {len}",
                cache.k, cache.len
            )));
        }
        if cache.images() != images {
            return Err(Error::dim("forward cache (images)", images, cache.images()));
        }
        if let Some(i) = (0..images).find(|&i| cache.counts[i] != offsets[i + 1] - offsets[i]) {
            return Err(Error::Invalid(format!(
                "forward cache: image {i} had {} descriptors, the batch gives it {}",
                cache.counts[i],
                offsets[i + 1] - offsets[i]
            )));
        }
        if let Some(p) = &cache.posteriors {
            if let Some(i) =
                (0..images).find(|&i| p.image(i).blocks() != cache.counts[i].div_ceil(BLOCK))
            {
                return Err(Error::Invalid(format!(
                    "forward cache: image {i}'s stored posteriors cover {} blocks, its {} descriptors make {}",
                    p.image(i).blocks(),
                    cache.counts[i],
                    cache.counts[i].div_ceil(BLOCK)
                )));
            }
        }
        if encoded.len() != images * len {
            return Err(Error::dim(
                format!("encoded Fisher vectors ({images} images × {len})"),
                images * len,
                encoded.len(),
            ));
        }
        Ok(images)
    }

    /// Adds image `i`'s gradient for the upstream gradient `gp` to `g`, its forward results
    /// restored from the batch's encoding and cache (checked by
    /// [`check_cached`](Self::check_cached)).
    fn backward_cached_image(
        &self,
        batch: &CachedBatch,
        i: usize,
        gp: &[f32],
        g: &mut GmmGradient,
        scratch: &mut FisherScratch,
    ) -> Result<()> {
        let (k, d, len) = (self.gmm.k(), self.gmm.d(), self.len());
        let x = &batch.data[batch.offsets[i] * d..batch.offsets[i + 1] * d];
        let enc = &batch.encoded[i * len..(i + 1) * len];
        if !all_finite(enc) {
            check_finite("encoded Fisher vector", enc)?;
        }
        let s0 = &batch.cache.s0[i * k..(i + 1) * k];
        self.restore_forward(enc, batch.cache.norms[i], s0, scratch);
        let kept = batch.cache.posteriors.as_ref().map(|p| p.image(i));
        self.backward_from_forward(x, gp, g, scratch, kept.as_ref())
    }

    /// Sums `f(image, upstream, gradient, scratch)` over the images with a non-zero upstream
    /// gradient; see [`sum_gradients`].
    fn sum_over_images<F>(&self, images: usize, grad_phis: &[f32], f: F) -> Result<GmmGradient>
    where
        F: Fn(usize, &[f32], &mut GmmGradient, &mut FisherScratch) -> Result<()> + Sync,
    {
        let (k, d) = (self.gmm.k(), self.gmm.d());
        sum_gradients(k, d, images, self.len(), grad_phis, || self.scratch(), f)
    }

    /// Puts the forward results of one image back into `scratch` from its encoded vector φ,
    /// `‖p‖` and S0: `out` = φ, `phi` = Φ (the signed power inverted on `p = φ‖p‖`).
    fn restore_forward(&self, enc: &[f32], norm: f64, s0: &[f64], scratch: &mut FisherScratch) {
        scratch.norm = norm;
        scratch.s0.copy_from_slice(s0);
        let (o, out, phi) = (&self.options, &mut scratch.out[..], &mut scratch.phi[..]);
        match self.level {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the level was detected on this CPU (AVX-512F and FMA).
            SimdLevel::Avx512 => unsafe { restore_avx512(o, norm, enc, out, phi) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the level was detected on this CPU (AVX2 and FMA).
            SimdLevel::Avx2 => unsafe { restore_avx2(o, norm, enc, out, phi) },
            _ => restore_body(o, norm, enc, out, phi),
        }
    }

    /// Turns `scratch.out` (φ) into ∂L/∂Φ given ∂L/∂φ; `scratch.phi` keeps Φ.
    fn upstream_phi(&self, grad_phi: &[f32], scratch: &mut FisherScratch) {
        let (o, norm) = (&self.options, scratch.norm);
        let (out, phi) = (&mut scratch.out[..], &scratch.phi[..]);
        match self.level {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the level was detected on this CPU (AVX-512F and FMA).
            SimdLevel::Avx512 => unsafe { upstream_avx512(o, norm, grad_phi, out, phi) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the level was detected on this CPU (AVX2 and FMA).
            SimdLevel::Avx2 => unsafe { upstream_avx2(o, norm, grad_phi, out, phi) },
            _ => upstream_body(o, norm, grad_phi, out, phi),
        }
    }

    /// Fills `cuv = [c G^u/σ, c' G^v/σ²]` per component and `r = −Σ_d c' G^v` so that
    /// `A_ik = r_k + Σ_d δ (cu + cv δ)` with `δ = x_id − μ_kd`.
    fn coefficients(&self, n_total: f64, scratch: &mut FisherScratch) {
        let (k, d) = (self.gmm.k(), self.gmm.d());
        let kd = k * d;
        for c in 0..k {
            let ck = 1.0 / (n_total * (self.gmm.weights()[c] as f64).sqrt());
            let ckv = ck / std::f64::consts::SQRT_2;
            let mut r = 0f64;
            let (cu, cv) = scratch.cuv[2 * c * d..2 * (c + 1) * d].split_at_mut(d);
            for j in 0..d {
                let i = c * d + j;
                let (gu, gv) = (scratch.out[i], scratch.out[kd + i]);
                cu[j] = ck * gu * self.inv_sigma[i];
                cv[j] = ckv * gv * self.inv_var[i];
                r -= ckv * gv;
            }
            scratch.r[c] = r;
        }
    }

    /// The one pass over the descriptors: per block the posteriors (GEMM, then the f64
    /// refinement of the significant ones, exactly as the forward pass), then `T0 = Σ_i B_ik`,
    /// `T1 = Σ_i B_ik (x_i − μ_k)`, `T2 = Σ_i B_ik (x_i − μ_k)²` in f64.
    ///
    /// The refined entries (a few per row) go through the f64 path about μ_k: A and
    /// `B = γ (A − s)` where γ is kept, `B = −γ s` where it is skipped. The other entries are
    /// skipped, with `B_ik = −γ_ik s_i` tiny but dense: every one of them enters T0
    /// ([`simd::skipped_select_at`]), and those with `γ ≥` [`SKIP_CUTOFF`] also T1 and T2
    /// ([`simd::moments_grouped_f32_at`]).
    fn second_pass(&self, x: &[f32], scratch: &mut FisherScratch) {
        let d = self.gmm.d();
        scratch.t0.fill(0.0);
        scratch.t12.fill(0.0);
        for (b, block) in x.chunks(BLOCK * d).enumerate() {
            let mut ahead = BlockPrefetch::new(x, b, d, 2);
            ahead.next_part();
            let n = self.block_log_densities(block, scratch);
            scratch.col.fill(0.0);
            ahead.next_part();
            self.block_backward(block, n, scratch);
            for j in 0..scratch.slow.len() {
                let i = scratch.slow[j];
                self.prepare_slow_row(i, scratch);
                self.row_backward(&block[i * d..(i + 1) * d], i, scratch);
            }
            for (t, &b) in scratch.t0.iter_mut().zip(&scratch.col) {
                *t += b as f64;
            }
        }
    }

    /// The backward pass over the rows of a block (descriptors `x`, `n` rows, GEMM
    /// log-densities from [`block_log_densities`](Self::block_log_densities)) with the
    /// forward pass's block-wise refinement (`FisherEncoder::block_statistics`: the same
    /// selection, f64 quadratic forms, `exp` and renormalisation, so the same posteriors are
    /// kept): A comes with the quadratic forms ([`simd::quad_poly_pairs_at`]), then per row s,
    /// B and the skipped entries, then the moments of B per component
    /// ([`kernels::moments_grouped_at`]). Rows that the forward pass refines whole are left
    /// out and listed in `scratch.slow`, their posterior buffer holding `exp(l − max)`.
    fn block_backward(&self, x: &[f32], n: usize, scratch: &mut FisherScratch) {
        let (k, d) = (self.gmm.k(), self.gmm.d());
        let thr = self.options.posterior_threshold as f64;
        let np = self.select_pairs(n, scratch);
        // A (without r) in `gw`, the quadratic forms exactly as the forward pass's.
        simd::quad_poly_pairs_at(
            self.level,
            x,
            d,
            &scratch.grow[..np],
            &scratch.gcomp[..np],
            &self.ml,
            &scratch.cuv,
            &mut scratch.pval[..np],
            &mut scratch.gw[..np],
        );
        // The forward pass's renormalisation and its test for the rows it refines whole
        // (their γ are 0 here).
        self.renormalise_pairs(n, np, scratch);
        let FisherScratch {
            block,
            prow,
            pcomp,
            pval,
            rend,
            rrest,
            rinv,
            gstart,
            gpos,
            grow,
            gw,
            r,
            t0,
            t12,
            col,
            ..
        } = scratch;
        let qrow = &grow[..np];
        let (qval, qw) = (&mut pval[..np], &mut gw[..np]);
        // Per component: γ (into `qval`), A = r + poly (into `qw`), and per row
        // s = Σ_kept γ A (into `rrest`); then B = γ (m A − s) with the keep-mask m.
        let s_row = &mut rrest[..n];
        s_row.fill(0.0);
        // Whether a pair is kept decides by data, half and half on the benchmark: selected
        // through bit masks, not branches (mispredicted, they were most of these loops' time).
        for c in 0..k {
            let range = gstart[c] as usize..gstart[c + 1] as usize;
            let (active, rc) = (self.active[c], r[c]);
            for ((v, a), &row) in qval[range.clone()]
                .iter_mut()
                .zip(&mut qw[range.clone()])
                .zip(&qrow[range])
            {
                let g = *v * rinv[row as usize];
                let m = keep_only(active & (g >= thr) & (g > 0.0), g);
                *v = g;
                *a += rc;
                s_row[row as usize] += m * *a;
            }
        }
        for c in 0..k {
            let range = gstart[c] as usize..gstart[c + 1] as usize;
            let active = self.active[c];
            let mut sum = 0f64;
            for ((&g, a), &row) in qval[range.clone()]
                .iter()
                .zip(&mut qw[range.clone()])
                .zip(&qrow[range])
            {
                let ma = keep_only(active & (g >= thr) & (g > 0.0), *a);
                let b = g * (ma - s_row[row as usize]);
                *a = b;
                sum += b;
            }
            t0[c] += sum;
        }
        kernels::moments_grouped_at(self.level, x, d, &self.ml, gstart, qrow, qw, t12);
        // The unrefined entries of each row: γ = exp(l − max) × inv, B = −γ s; all of them
        // into T0 (`col`), those with γ ≥ SKIP_CUTOFF listed (rows in `prow`, components in
        // `pcomp`, B in `pval`), grouped by component and added to T1, T2 like the others.
        let mut start = 0;
        for i in 0..n {
            let end = rend[i] as usize;
            if rinv[i] != 0.0 && s_row[i] != 0.0 {
                let post = &mut block.post[i * k..(i + 1) * k];
                for &c in &pcomp[start..end] {
                    post[c as usize] = 0.0;
                }
            }
            start = end;
        }
        let mut ns = 0;
        for i in 0..n {
            let (inv, s) = (rinv[i], s_row[i]);
            if inv == 0.0 || s == 0.0 {
                continue;
            }
            let m = simd::skipped_select_at(
                self.level,
                &block.post[i * k..(i + 1) * k],
                (-s * inv) as f32,
                (SKIP_CUTOFF / inv) as f32,
                col,
                &mut pcomp[ns..ns + k],
                &mut pval[ns..ns + k],
            );
            prow[ns..ns + m].fill(i as u32);
            ns += m;
        }
        group_by_component(
            k,
            &prow[..ns],
            &pcomp[..ns],
            &pval[..ns],
            gstart,
            gpos,
            grow,
            gw,
        );
        simd::moments_grouped_f32_at(
            self.level,
            x,
            d,
            &self.ml,
            gstart,
            &grow[..ns],
            &gw[..ns],
            t12,
        );
    }

    /// The backward pass of row `i` of the block (descriptor `x`) on its own, through
    /// [`refine_row`](Self::refine_row), for the rows that the forward pass refines whole.
    fn row_backward(&self, x: &[f32], i: usize, scratch: &mut FisherScratch) {
        let (k, d) = (self.gmm.k(), self.gmm.d());
        let Refined { m, scale } = self.refine_row(x, i, scratch);
        for j in 0..m {
            let (c, g) = (scratch.sel[j] as usize, scratch.gam[j]);
            scratch.w[j] = if self.kept(c, g) { 1.0 } else { 0.0 };
        }
        simd::poly_sel_at(
            self.level,
            d,
            &scratch.sel[..m],
            &scratch.w,
            &scratch.delta,
            &scratch.cuv,
            &scratch.r,
            &mut scratch.arow,
        );
        let mut s = 0f64;
        for j in 0..m {
            if scratch.w[j] != 0.0 {
                s += scratch.gam[j] * scratch.arow[j];
            }
        }
        if s == 0.0 {
            return;
        }
        for j in 0..m {
            let (c, g) = (scratch.sel[j] as usize, scratch.gam[j]);
            let b = if scratch.w[j] != 0.0 {
                g * (scratch.arow[j] - s)
            } else {
                -g * s
            };
            scratch.t0[c] += b;
            scratch.w[j] = b;
        }
        kernels::moments_sel_at(
            self.level,
            d,
            &scratch.sel[..m],
            &scratch.w,
            &scratch.delta,
            &mut scratch.t12,
        );
        if m == k {
            return;
        }
        let post = &mut scratch.block.post[i * k..(i + 1) * k];
        for &c in &scratch.sel[..m] {
            post[c as usize] = 0.0;
        }
        let ns = simd::skipped_select_at(
            self.level,
            post,
            (-s * scale) as f32,
            (SKIP_CUTOFF / scale) as f32,
            &mut scratch.col,
            &mut scratch.sel,
            &mut scratch.gam,
        );
        // One row: every entry's row is 0 of `x`.
        scratch.prow[..ns].fill(0);
        group_by_component(
            k,
            &scratch.prow[..ns],
            &scratch.sel[..ns],
            &scratch.gam[..ns],
            &mut scratch.gstart,
            &mut scratch.gpos,
            &mut scratch.grow,
            &mut scratch.gw,
        );
        simd::moments_grouped_f32_at(
            self.level,
            x,
            d,
            &self.ml,
            &scratch.gstart,
            &scratch.grow[..ns],
            &scratch.gw[..ns],
            &mut scratch.t12,
        );
    }

    /// Combines T, S and ∂L/∂Φ into the parameter gradient (added to `grad`).
    /// `scratch.t0` is overwritten with E.
    fn parameter_gradient(
        &self,
        n_total: f64,
        grad: &mut GmmGradient,
        scratch: &mut FisherScratch,
    ) {
        let (k, d) = (self.gmm.k(), self.gmm.d());
        let kd = k * d;
        let mut e_sum = 0f64;
        for c in 0..k {
            let t0 = scratch.t0[c];
            let ck = 1.0 / (n_total * (self.gmm.weights()[c] as f64).sqrt());
            let ckv = ck / std::f64::consts::SQRT_2;
            let s0 = scratch.s0[c];
            let (t1, t2) = scratch.t12[2 * c * d..2 * (c + 1) * d].split_at(d);
            let (lo, hi) = (c * d, (c + 1) * d);
            let (inv_sigma, inv_var) = (&self.inv_sigma[lo..hi], &self.inv_var[lo..hi]);
            let (means, log_std) = (&mut grad.means[lo..hi], &mut grad.log_std[lo..hi]);
            // Slices of one length, element-wise: the compiler vectorises these loops.
            if !self.active[c] {
                for j in 0..d {
                    means[j] += t1[j] * inv_sigma[j] * inv_sigma[j];
                    log_std[j] += t2[j] * inv_var[j] - t0;
                }
                scratch.t0[c] = t0;
                e_sum += t0;
                continue;
            }
            let (gu, gv) = (&scratch.out[lo..hi], &scratch.out[kd + lo..kd + hi]);
            let (u, v) = (&scratch.phi[lo..hi], &scratch.phi[kd + lo..kd + hi]);
            for j in 0..d {
                let is = inv_sigma[j];
                let dm = t1[j] * is - (ck * gu[j] * s0 + std::f64::consts::SQRT_2 * gv[j] * u[j]);
                let ds = t2[j] * inv_var[j] - t0 - (gu[j] * u[j] + 2.0 * gv[j] * (v[j] + ckv * s0));
                means[j] += dm * is;
                log_std[j] += ds;
            }
            // E_k = T0_k − ½ Σ_d (G^u u + G^v v), summed in eight lanes (one serial chain of
            // D additions was most of this function's time).
            let mut lanes = [0f64; 8];
            for (j, lane) in (0..d).zip((0..8).cycle()) {
                lanes[lane] += gu[j] * u[j] + gv[j] * v[j];
            }
            let dot = ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6]))
                + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]));
            let ek = t0 - 0.5 * dot;
            scratch.t0[c] = ek;
            e_sum += ek;
        }
        for (c, g) in grad.weight_logits.iter_mut().enumerate() {
            *g += scratch.t0[c] - self.gmm.weights()[c] as f64 * e_sum;
        }
    }
}

/// `x` where `keep`, else +0 (as `if keep { x } else { 0.0 }`, without a branch).
#[inline(always)]
fn keep_only(keep: bool, x: f64) -> f64 {
    f64::from_bits(x.to_bits() & (keep as u64).wrapping_neg())
}

/// Groups the entries `(rows[p], comps[p], w[p])` by component, rows in order within each:
/// `starts` (`K + 1`) gets the ranges into `grow`, `gw`; `pos` (`K`) is scratch.
#[allow(clippy::too_many_arguments)]
fn group_by_component(
    k: usize,
    rows: &[u32],
    comps: &[u32],
    w: &[f64],
    starts: &mut [u32],
    pos: &mut [u32],
    grow: &mut [u32],
    gw: &mut [f64],
) {
    starts.fill(0);
    for &c in comps {
        starts[c as usize + 1] += 1;
    }
    for c in 0..k {
        starts[c + 1] += starts[c];
    }
    pos.copy_from_slice(&starts[..k]);
    for ((&r, &c), &v) in rows.iter().zip(comps).zip(w) {
        let q = &mut pos[c as usize];
        grow[*q as usize] = r;
        gw[*q as usize] = v;
        *q += 1;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn restore_avx512(
    o: &FisherOptions,
    norm: f64,
    enc: &[f32],
    out: &mut [f64],
    phi: &mut [f64],
) {
    restore_body(o, norm, enc, out, phi)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn restore_avx2(
    o: &FisherOptions,
    norm: f64,
    enc: &[f32],
    out: &mut [f64],
    phi: &mut [f64],
) {
    restore_body(o, norm, enc, out, phi)
}

/// `out` = φ (from f32) and `phi` = Φ, the signed power inverted on `p = φ‖p‖`:
/// `|Φ| = (|p| + ε^a)^(1/a) − ε`. One loop per case, so that each vectorises.
#[inline(always)]
fn restore_body(o: &FisherOptions, norm: f64, enc: &[f32], out: &mut [f64], phi: &mut [f64]) {
    let (a, eps) = (o.power as f64, o.sqrt_epsilon as f64);
    for (f, &e) in out.iter_mut().zip(enc) {
        *f = e as f64;
    }
    if !o.improved {
        for (p, &f) in phi.iter_mut().zip(out.iter()) {
            *p = f * norm;
        }
    } else if a == 0.5 {
        let ea = eps.sqrt();
        for (p, &f) in phi.iter_mut().zip(out.iter()) {
            let q = f * norm;
            let t = q.abs() + ea;
            *p = (t * t - eps).copysign(q);
        }
    } else {
        let ea = eps.powf(a);
        for (p, &f) in phi.iter_mut().zip(out.iter()) {
            let q = f * norm;
            *p = ((q.abs() + ea).powf(1.0 / a) - eps).copysign(q);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn upstream_avx512(o: &FisherOptions, norm: f64, g: &[f32], out: &mut [f64], phi: &[f64]) {
    upstream_body(o, norm, g, out, phi)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn upstream_avx2(o: &FisherOptions, norm: f64, g: &[f32], out: &mut [f64], phi: &[f64]) {
    upstream_body(o, norm, g, out, phi)
}

/// `out` (φ on entry) becomes ∂L/∂Φ given ∂L/∂φ = `g`: through the L2 normalisation
/// (`(g − φ⟨φ, g⟩)/‖p‖`), then the signed power (`· a (|Φ| + ε)^(a−1)`). The dot product
/// keeps eight partial sums and the branches are selects, so that the loops vectorise.
#[inline(always)]
fn upstream_body(o: &FisherOptions, norm: f64, g: &[f32], out: &mut [f64], phi: &[f64]) {
    if o.l2 {
        let mut acc = [0f64; 8];
        let (mut fc, mut gc) = (out.chunks_exact(8), g.chunks_exact(8));
        for (f8, g8) in (&mut fc).zip(&mut gc) {
            for ((s, &f), &v) in acc.iter_mut().zip(f8).zip(g8) {
                *s += f * v as f64;
            }
        }
        for ((s, &f), &v) in acc.iter_mut().zip(fc.remainder()).zip(gc.remainder()) {
            *s += f * v as f64;
        }
        let dot: f64 = acc.iter().sum();
        // Below the floor the divisor is the constant 1e-12, not ‖p‖.
        let proj = if norm > L2_FLOOR { dot } else { 0.0 };
        let inv = 1.0 / norm;
        for (o, &v) in out.iter_mut().zip(g) {
            *o = (v as f64 - *o * proj) * inv;
        }
    } else {
        for (o, &v) in out.iter_mut().zip(g) {
            *o = v as f64;
        }
    }
    if o.improved {
        let (a, eps) = (o.power as f64, o.sqrt_epsilon as f64);
        // At Φ = 0 with ε = 0 the derivative is unbounded; take the subgradient 0.
        if a == 0.5 {
            for (o, &f) in out.iter_mut().zip(phi) {
                let t = f.abs() + eps;
                let d = *o * 0.5 / t.sqrt();
                *o = if t > 0.0 { d } else { 0.0 };
            }
        } else {
            for (o, &f) in out.iter_mut().zip(phi) {
                let t = f.abs() + eps;
                *o = if t > 0.0 {
                    *o * a * t.powf(a - 1.0)
                } else {
                    0.0
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gmm::Gmm;

    /// A small GMM and three images of pseudo-random descriptors.
    fn case() -> (FisherEncoder, Vec<f32>, Vec<usize>) {
        let (k, d) = (3, 4);
        let wave = |i: usize, f: f32| (i as f32 * f).sin() * 0.8;
        let means = (0..k * d).map(|i| wave(i, 1.3)).collect();
        let vars = (0..k * d).map(|i| 0.5 + 0.3 * wave(i, 0.7).abs()).collect();
        let gmm = Gmm::new(k, d, means, vars, vec![0.5, 0.3, 0.2]).unwrap();
        let data = (0..40 * d).map(|i| wave(i, 0.37) * 1.5).collect();
        let enc = FisherEncoder::new(&gmm, FisherOptions::default()).unwrap();
        (enc, data, vec![0, 10, 25, 40])
    }

    #[test]
    fn combined_upstream_gives_the_same_gradient_as_its_rows() {
        let (enc, data, offsets) = case();
        let (images, len) = (offsets.len() - 1, enc.len());
        let mut fv = vec![0f32; images * len];
        let cache = enc.encode_batch_cached(&data, &offsets, &mut fv).unwrap();
        let m = 3;
        let vectors: Vec<f32> = (0..m * len).map(|i| (i as f32 * 0.61).cos()).collect();
        // Image 1 has no non-zero coefficient (skipped), image 2 one zero coefficient.
        let coefs = [0.7f32, -1.2, 0.3, 0.0, 0.0, 0.0, -0.4, 0.0, 2.5];
        let mut rows = vec![0f32; images * len];
        for (row, c) in rows.chunks_exact_mut(len).zip(coefs.chunks_exact(m)) {
            for (&ci, v) in c.iter().zip(vectors.chunks_exact(len)) {
                if ci != 0.0 {
                    for (r, &w) in row.iter_mut().zip(v) {
                        *r += ci * w;
                    }
                }
            }
        }
        let want = enc
            .backward_batch_cached(&data, &offsets, &fv, &cache, &rows)
            .unwrap();
        let got = enc
            .backward_batch_cached_combined(&data, &offsets, &fv, &cache, &coefs, &vectors)
            .unwrap();
        assert_eq!(got, want);
        assert!(got.means.iter().any(|&v| v != 0.0));
    }

    #[test]
    fn combined_upstream_rejects_bad_sizes() {
        let (enc, data, offsets) = case();
        let len = enc.len();
        let mut fv = vec![0f32; 3 * len];
        let cache = enc.encode_batch_cached(&data, &offsets, &mut fv).unwrap();
        let vectors = vec![0.5f32; 2 * len];
        let run = |coefs: &[f32], vectors: &[f32]| {
            enc.backward_batch_cached_combined(&data, &offsets, &fv, &cache, coefs, vectors)
        };
        assert!(matches!(
            run(&[1.0; 6], &vectors[..len + 1]),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            run(&[1.0; 5], &vectors),
            Err(Error::DimMismatch { .. })
        ));
        assert!(matches!(
            enc.backward_batch_cached_combined(
                &data,
                &offsets,
                &fv[1..],
                &cache,
                &[1.0; 6],
                &vectors
            ),
            Err(Error::DimMismatch { .. })
        ));
        assert!(run(&[1.0; 6], &vectors).is_ok());
    }
}
