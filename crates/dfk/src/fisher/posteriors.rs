//! Posteriors kept by the forward pass for the backward pass of the same θ.
//!
//! Without them the cached backward pass ([`FisherEncoder::backward_batch_cached`]) recomputes
//! every block's posteriors exactly as the forward pass did: the GEMM log-densities, the
//! selection, the f64 refinement, the renormalisation. That is most of a forward pass again.
//! The posteriors are sparse (3.2 entries per descriptor on the Fashion-MNIST benchmark at
//! K = 16), so the forward pass can store them
//! ([`FisherEncoder::encode_batch_keeping`]): per block of descriptors, every refined entry
//! (f64 γ) that VLFeat's rule keeps or that is ≥ [`KEEP_CUTOFF`], and every unrefined entry
//! with `exp(l − l_max) ≥ KEEP_CUTOFF` (GEMM γ), as (row, component, kept) and γ, 12 bytes
//! each. The backward pass then forms A for the kept entries only, `B = γ (A − s)` for them and
//! `B = −γ s` for the others, and their moments ([`FisherEncoder::second_pass_kept`]).
//!
//! Against the recomputing pass, the entries carry the same γ (the backward pass refines
//! exactly as the forward pass does) and are summed the same way (f64 moments for the kept
//! entries, f32 for the skipped ones), except that the skipped entries are split differently:
//! refined but not kept ones go with the skipped, and the unrefined ones below the cutoff leave
//! out their `B = −γ s` from T0 as well (the recomputing pass drops those below `SKIP_CUTOFF` =
//! 3e-8 from T1 and T2 only). With posterior threshold 0 (every posterior kept) both passes
//! give the same bits; with VLFeat's 1e-6 they differed by 1.2e-8 of the gradient's largest
//! entry in `stored_posteriors_give_the_recomputed_gradient`.

use super::simd;
use crate::fisher::{FisherEncoder, FisherScratch, Refined};
use crate::kernels;
use crate::stats::{BlockPrefetch, BLOCK};

/// Unrefined posteriors with `exp(l − l_max)` below this are not stored: their `B = −γ s` is
/// left out of T0, T1 and T2 (see the module documentation).
pub(in crate::fisher) const KEEP_CUTOFF: f64 = 1e-9;

/// Bits of an entry's code: the row within its block above [`ROW_SHIFT`], then the kept flag,
/// then the component.
const ROW_SHIFT: u32 = 24;
const KEPT_BIT: u32 = 1 << 23;
const COMP_MASK: u32 = KEPT_BIT - 1;

/// The largest K whose components fit the code.
pub(in crate::fisher) const MAX_K: usize = COMP_MASK as usize + 1;

const _: () = assert!(
    BLOCK <= 1 << (32 - ROW_SHIFT),
    "a block's rows must fit the code"
);

/// The code of entry (row `i` of its block, component `c`, kept or not).
#[inline(always)]
fn code(i: usize, c: usize, kept: bool) -> u32 {
    ((i as u32) << ROW_SHIFT) | (kept as u32 * KEPT_BIT) | c as u32
}

/// The stored posteriors of a run of consecutive images (one parallel job's, so that a batch
/// makes a few allocations, not several per image): image `j` of the run owns blocks
/// `image_blocks[j]..image_blocks[j+1]`, block `b` the entries
/// `block_ends[b]..block_ends[b+1]`.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredPosteriors {
    image_blocks: Vec<u32>,
    block_ends: Vec<u32>,
    gamma: Vec<f64>,
    code: Vec<u32>,
}

impl Default for StoredPosteriors {
    fn default() -> Self {
        Self {
            image_blocks: vec![0],
            block_ends: vec![0],
            gamma: Vec::new(),
            code: Vec::new(),
        }
    }
}

/// One image's entries in a [`StoredPosteriors`]: block `b` owns `ends[b]..ends[b+1]` of
/// `gamma` and `code`.
pub(in crate::fisher) struct ImageEntries<'a> {
    ends: &'a [u32],
    gamma: &'a [f64],
    code: &'a [u32],
}

impl ImageEntries<'_> {
    /// Number of blocks.
    pub(in crate::fisher) fn blocks(&self) -> usize {
        self.ends.len() - 1
    }
}

impl StoredPosteriors {
    /// Bytes the entries take, counted without the per-run overhead so that the total does not
    /// depend on how images were grouped into runs: 12 per entry, 4 per block and per image.
    pub(in crate::fisher) fn bytes(&self) -> usize {
        12 * self.gamma.len() + 4 * (self.block_ends.len() - 1) + 4 * (self.image_blocks.len() - 1)
    }

    /// Number of stored entries.
    pub(in crate::fisher) fn entries(&self) -> usize {
        self.gamma.len()
    }

    /// Empties the run (keeping the capacity).
    pub(in crate::fisher) fn reset(&mut self) {
        self.image_blocks.truncate(1);
        self.block_ends.truncate(1);
        self.gamma.clear();
        self.code.clear();
    }

    /// Image `j` of the run.
    pub(in crate::fisher) fn image(&self, j: usize) -> ImageEntries<'_> {
        let (a, b) = (
            self.image_blocks[j] as usize,
            self.image_blocks[j + 1] as usize,
        );
        ImageEntries {
            ends: &self.block_ends[a..=b],
            gamma: &self.gamma,
            code: &self.code,
        }
    }

    /// Stores entry (row `i` of the current block, component `c`) with posterior `g` when the
    /// forward pass kept it or `g ≥ KEEP_CUTOFF`.
    #[inline]
    fn push(&mut self, i: usize, c: usize, g: f64, kept: bool) {
        if kept || g >= KEEP_CUTOFF {
            self.gamma.push(g);
            self.code.push(code(i, c, kept));
        }
    }

    /// Closes the current block.
    pub(in crate::fisher) fn end_block(&mut self) {
        self.block_ends.push(self.gamma.len() as u32);
    }

    /// Closes the current image.
    pub(in crate::fisher) fn end_image(&mut self) {
        self.image_blocks.push((self.block_ends.len() - 1) as u32);
    }
}

/// Every image's stored posteriors: image `i` is image `i % per` of run `i / per`.
#[derive(Clone, Debug, PartialEq)]
pub(in crate::fisher) struct Posteriors {
    pub(in crate::fisher) per: usize,
    pub(in crate::fisher) runs: Vec<StoredPosteriors>,
}

impl Posteriors {
    /// Image `i`'s entries.
    pub(in crate::fisher) fn image(&self, i: usize) -> ImageEntries<'_> {
        self.runs[i / self.per].image(i % self.per)
    }

    /// Bytes (as [`StoredPosteriors::bytes`] counts them) and entries.
    pub(in crate::fisher) fn size(&self) -> (usize, usize) {
        self.runs
            .iter()
            .fold((0, 0), |(b, e), r| (b + r.bytes(), e + r.entries()))
    }
}

impl FisherEncoder {
    /// Stores the entries of the rows that [`block_statistics`](Self::block_statistics)
    /// refined block-wise (its `np` grouped pairs; rows with `rinv` = 0 are left to
    /// [`keep_row_posteriors`](Self::keep_row_posteriors)): the refined ones with their f64
    /// γ, then the unrefined ones with `exp(l − max) ≥ KEEP_CUTOFF` from the GEMM, `γ =
    /// exp(l − max) · rinv`. Written without data-dependent branches (they mispredict at
    /// every row): every candidate goes to the staging buffers and the position only advances
    /// for those stored, and the unrefined ones come from one selection over the whole block
    /// after the refined ones are zeroed in it.
    pub(in crate::fisher) fn keep_block_posteriors(
        &self,
        n: usize,
        np: usize,
        scratch: &mut FisherScratch,
    ) {
        let k = self.gmm.k();
        let thr = self.options.posterior_threshold as f64;
        if scratch.cgam.len() < BLOCK * k {
            scratch.cgam.resize(BLOCK * k, 0.0);
            scratch.ccode.resize(BLOCK * k, 0);
        }
        let FisherScratch {
            block,
            prow,
            pval,
            rinv,
            grow,
            gcomp,
            kept,
            cgam,
            ccode,
            ..
        } = scratch;
        // Slices, so that the loops keep their pointers and lengths in registers.
        let (cgam, ccode, rinv, active) =
            (&mut cgam[..], &mut ccode[..], &rinv[..], &self.active[..]);
        let post = &mut block.post[..n * k];
        let mut m = 0;
        for ((&r, &c), &v) in grow[..np].iter().zip(&gcomp[..np]).zip(&pval[..np]) {
            let (r, c) = (r as usize, c as usize);
            let inv = rinv[r];
            let g = v * inv;
            let is_kept = (g >= thr) & (g > 0.0) & active[c];
            cgam[m] = g;
            ccode[m] = code(r, c, is_kept);
            m += ((inv != 0.0) & (is_kept | (g >= KEEP_CUTOFF))) as usize;
            // Not selected again below; the rows left to the row-by-row path keep theirs.
            post[r * k + c] *= (inv == 0.0) as u32 as f32;
        }
        let count = kernels::select_at_least_at(self.level, post, KEEP_CUTOFF as f32, prow);
        for &p in &prow[..count] {
            let (r, c) = (p as usize / k, p as usize % k);
            let inv = rinv[r];
            cgam[m] = post[p as usize] as f64 * inv;
            ccode[m] = code(r, c, false);
            m += (inv != 0.0) as usize;
        }
        kept.gamma.extend_from_slice(&cgam[..m]);
        kept.code.extend_from_slice(&ccode[..m]);
    }

    /// Stores the entries of row `i`, refined on its own by
    /// [`refine_row`](Self::refine_row) (`refined`): its refined entries, then the others with
    /// `exp(l − max) ≥ KEEP_CUTOFF` from the GEMM (the row's buffer holds the softmax, i.e.
    /// `exp(l − max)/rsum`), `γ = softmax · scale`.
    pub(in crate::fisher) fn keep_row_posteriors(
        &self,
        i: usize,
        refined: Refined,
        scratch: &mut FisherScratch,
    ) {
        let k = self.gmm.k();
        let Refined { m, scale } = refined;
        let FisherScratch {
            block,
            sel,
            gam,
            kept,
            rsum,
            ..
        } = scratch;
        let row = &mut block.post[i * k..(i + 1) * k];
        for (&c, &g) in sel[..m].iter().zip(&gam[..m]) {
            kept.push(i, c as usize, g, self.kept(c as usize, g));
            row[c as usize] = 0.0;
        }
        if m < k {
            let t = (KEEP_CUTOFF / rsum[i]) as f32;
            let n = kernels::select_at_least_at(self.level, row, t, sel);
            for &c in &sel[..n] {
                kept.push(i, c as usize, row[c as usize] as f64 * scale, false);
            }
        }
    }

    /// The backward pass's pass over the descriptors `x` from the stored posteriors `kept`
    /// (instead of [`second_pass`](Self::second_pass)): per block, the entries grouped by
    /// whether the forward pass kept them, then by component; A for the kept ones with the
    /// recomputing pass's kernel; per row `s = Σ_kept γ A`; `B = γ (A − s)` for the kept
    /// entries and `B = −γ s` for the others; T0, and T1, T2 in f64 for the kept entries and in
    /// f32 for the others, as the recomputing pass sums its skipped entries.
    pub(in crate::fisher) fn second_pass_kept(
        &self,
        x: &[f32],
        kept: &ImageEntries,
        scratch: &mut FisherScratch,
    ) {
        let (k, d) = (self.gmm.k(), self.gmm.d());
        scratch.t0.fill(0.0);
        scratch.t12.fill(0.0);
        if scratch.cgam.len() < BLOCK * k {
            scratch.cgam.resize(BLOCK * k, 0.0);
        }
        scratch.cstart.resize(2 * k + 1, 0);
        scratch.cpos.resize(2 * k, 0);
        let FisherScratch {
            grow,
            gcomp,
            gw,
            pval,
            rrest,
            r,
            t0,
            t12,
            cgam,
            cstart,
            cpos,
            cuv,
            ..
        } = scratch;
        for (b, (block, ends)) in x.chunks(BLOCK * d).zip(kept.ends.windows(2)).enumerate() {
            let mut ahead = BlockPrefetch::new(x, b, d, 2);
            ahead.next_part();
            let (n, start, end) = (block.len() / d, ends[0] as usize, ends[1] as usize);
            let (codes, gammas) = (&kept.code[start..end], &kept.gamma[start..end]);
            let np = end - start;
            // Bucket c: kept entries of component c; bucket K + c: the others.
            let bucket =
                |code: u32| (code & COMP_MASK) as usize + if code & KEPT_BIT != 0 { 0 } else { k };
            cstart.fill(0);
            for &code in codes {
                cstart[bucket(code) + 1] += 1;
            }
            for b in 0..2 * k {
                cstart[b + 1] += cstart[b];
            }
            cpos.copy_from_slice(&cstart[..2 * k]);
            for (&code, &g) in codes.iter().zip(gammas) {
                let b = bucket(code);
                let q = cpos[b] as usize;
                cpos[b] += 1;
                grow[q] = code >> ROW_SHIFT;
                gcomp[q] = code & COMP_MASK;
                cgam[q] = g;
            }
            let nk = cstart[k] as usize;
            let (qrow, qg) = (&grow[..np], &cgam[..np]);
            let qa = &mut gw[..np];
            simd::poly_pairs_at(
                self.level,
                block,
                d,
                &qrow[..nk],
                &gcomp[..nk],
                &self.ml,
                cuv,
                &mut pval[..nk],
                &mut qa[..nk],
            );
            ahead.next_part();
            let s_row = &mut rrest[..n];
            s_row.fill(0.0);
            for c in 0..k {
                let range = cstart[c] as usize..cstart[c + 1] as usize;
                let rc = r[c];
                for ((a, &g), &row) in qa[range.clone()]
                    .iter_mut()
                    .zip(&qg[range.clone()])
                    .zip(&qrow[range])
                {
                    *a += rc;
                    s_row[row as usize] += g * *a;
                }
            }
            for c in 0..k {
                let mut sum = 0f64;
                let range = cstart[c] as usize..cstart[c + 1] as usize;
                for ((a, &g), &row) in qa[range.clone()]
                    .iter_mut()
                    .zip(&qg[range.clone()])
                    .zip(&qrow[range])
                {
                    let b = g * (*a - s_row[row as usize]);
                    *a = b;
                    sum += b;
                }
                let range = cstart[k + c] as usize..cstart[k + c + 1] as usize;
                for ((a, &g), &row) in qa[range.clone()]
                    .iter_mut()
                    .zip(&qg[range.clone()])
                    .zip(&qrow[range])
                {
                    let b = -g * s_row[row as usize];
                    *a = b;
                    sum += b;
                }
                t0[c] += sum;
            }
            kernels::moments_grouped_at(
                self.level,
                block,
                d,
                &self.ml,
                &cstart[..=k],
                qrow,
                qa,
                t12,
            );
            simd::moments_grouped_f32_at(
                self.level,
                block,
                d,
                &self.ml,
                &cstart[k..],
                qrow,
                qa,
                t12,
            );
        }
    }
}
