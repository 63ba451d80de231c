//! Element-wise kernels of the backward pass ([`super`]), each with an AVX-512 and an AVX2
//! version chosen at run time and a scalar twin that gives bit-identical results (same
//! partial sums in the same order, separate multiplies and adds, no fused multiply-add).

use crate::kernels::SimdLevel;

/// Partial sums kept by [`poly_sel_at`]: two AVX-512 vectors of f64, so that two independent
/// chains of additions overlap.
const POLY_LANES: usize = 16;

/// For every selected entry `j` with `mask[j] ≠ 0` (component `c = sel[j]`),
/// `out[j] = r_c + Σ_d δ_jd (u_cd + v_cd δ_jd)`, with `uv` the `K × 2D` rows `[u_c, v_c]`
/// and `delta` the `m × D` centred descriptors `x − μ_c`: the backward pass's
/// `A_ik = ∂L/∂γ_ik` for the kept posteriors of one descriptor. Other entries of `out` are
/// left as they are.
#[allow(clippy::too_many_arguments)]
pub(super) fn poly_sel_at(
    level: SimdLevel,
    d: usize,
    sel: &[u32],
    mask: &[f64],
    delta: &[f64],
    uv: &[f64],
    r: &[f64],
    out: &mut [f64],
) {
    assert!(mask.len() >= sel.len() && out.len() >= sel.len() && delta.len() >= sel.len() * d);
    let k = r.len();
    assert!(uv.len() >= 2 * k * d && sel.iter().all(|&c| (c as usize) < k));
    for (j, &c) in sel.iter().enumerate() {
        if mask[j] == 0.0 {
            continue;
        }
        let c = c as usize;
        let (u, v) = uv[2 * c * d..2 * (c + 1) * d].split_at(d);
        let t = &delta[j * d..(j + 1) * d];
        let p = match level.clamp_to_cpu() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU has AVX-512F (clamp_to_cpu); `t`, `u`, `v` have `d` values.
            SimdLevel::Avx512 => unsafe { x86::poly_avx512(t, u, v) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU has AVX2 (clamp_to_cpu); `t`, `u`, `v` have `d` values.
            SimdLevel::Avx2 => unsafe { x86::poly_avx2(t, u, v) },
            _ => poly_scalar(t, u, v),
        };
        out[j] = r[c] + p;
    }
}

/// Scalar twin of the polynomial of [`poly_sel_at`]: `Σ_j δ_j (u_j + v_j δ_j)` with partial
/// sum `j mod 16`, then [`poly_finish`].
pub(super) fn poly_scalar(delta: &[f64], u: &[f64], v: &[f64]) -> f64 {
    let mut acc = [0f64; POLY_LANES];
    for (j, ((&t, &a), &b)) in delta.iter().zip(u).zip(v).enumerate() {
        acc[j % POLY_LANES] += t * (a + b * t);
    }
    poly_finish(&acc)
}

/// The fixed order in which the partial sums are combined: lane `l` with lane `l + 8`, then
/// pairwise.
#[inline(always)]
fn poly_finish(a: &[f64; POLY_LANES]) -> f64 {
    let s: [f64; 8] = std::array::from_fn(|l| a[l] + a[l + 8]);
    ((s[0] + s[4]) + (s[2] + s[6])) + ((s[1] + s[5]) + (s[3] + s[7]))
}

/// Partial sums of [`quad_poly_pairs_at`], as in the forward pass's
/// [`crate::kernels::quad_pairs_at`].
const PAIR_LANES: usize = 8;

/// For every pair `p` (row `rows[p]` of `x`, `n × D` f32, converted exactly to f64, and
/// component `c = comps[p]`), with `δ = x − μ_c`: `q[p] = Σ_j δ_j² λ_cj` bit for bit as
/// [`crate::kernels::quad_pairs_at`] gives it (same partial sums in the same order, so the
/// forward and backward passes refine and keep the same posteriors), and
/// `a[p] = Σ_j δ_j (u_cj + v_cj δ_j)`. `ml` holds the `K × 2D` rows `[μ_c, λ_c]`, `uv` the
/// rows `[u_c, v_c]`. One pass over δ for both; the vector levels run four pairs at once.
#[allow(clippy::too_many_arguments)]
pub(super) fn quad_poly_pairs_at(
    level: SimdLevel,
    x: &[f32],
    d: usize,
    rows: &[u32],
    comps: &[u32],
    ml: &[f64],
    uv: &[f64],
    q: &mut [f64],
    a: &mut [f64],
) {
    check_pairs(
        "quad_poly_pairs",
        x,
        d,
        rows,
        comps,
        ml,
        uv,
        q.len().min(a.len()),
    );
    match level.clamp_to_cpu() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512F (clamp_to_cpu); indices checked above.
        SimdLevel::Avx512 => unsafe {
            x86::quad_poly_pairs_avx512(x, d, rows, comps, ml, uv, q, a)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2 (clamp_to_cpu); indices checked above.
        SimdLevel::Avx2 => unsafe { x86::quad_poly_pairs_avx2(x, d, rows, comps, ml, uv, q, a) },
        _ => quad_poly_pairs_scalar(x, d, rows, comps, ml, uv, q, a),
    }
}

/// The checks of the pair kernels before their unchecked loads: the shapes of `x` (`n × D`),
/// `ml` and `uv` (`K × 2D`), `out` values for the pairs, and every row and component index in
/// range.
#[allow(clippy::too_many_arguments)]
fn check_pairs(
    what: &str,
    x: &[f32],
    d: usize,
    rows: &[u32],
    comps: &[u32],
    ml: &[f64],
    uv: &[f64],
    out: usize,
) {
    let np = rows.len();
    assert!(comps.len() == np && out >= np);
    assert!(d > 0 && x.len().is_multiple_of(d) && ml.len().is_multiple_of(2 * d));
    let (n, k) = (x.len() / d, ml.len() / (2 * d));
    assert!(uv.len() == ml.len());
    assert!(
        rows.iter().all(|&r| (r as usize) < n) && comps.iter().all(|&c| (c as usize) < k),
        "{what}: row or component index out of range"
    );
}

/// `a[p]` of [`quad_poly_pairs_at`] alone, bit for bit (the quadratic forms are not needed
/// when the posteriors are stored). The AVX-512 level does the last `D mod 8` terms with masked
/// vectors instead of a scalar tail; the others compute `q` too, into `q_scratch`.
#[allow(clippy::too_many_arguments)]
pub(super) fn poly_pairs_at(
    level: SimdLevel,
    x: &[f32],
    d: usize,
    rows: &[u32],
    comps: &[u32],
    ml: &[f64],
    uv: &[f64],
    q_scratch: &mut [f64],
    a: &mut [f64],
) {
    match level.clamp_to_cpu() {
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => {
            check_pairs("poly_pairs", x, d, rows, comps, ml, uv, a.len());
            // SAFETY: the CPU has AVX-512F (clamp_to_cpu); indices checked above.
            unsafe { x86::poly_pairs_avx512(x, d, rows, comps, ml, uv, a) }
        }
        _ => quad_poly_pairs_at(level, x, d, rows, comps, ml, uv, q_scratch, a),
    }
}

/// Scalar twin of [`quad_poly_pairs_at`].
#[allow(clippy::too_many_arguments)]
pub(super) fn quad_poly_pairs_scalar(
    x: &[f32],
    d: usize,
    rows: &[u32],
    comps: &[u32],
    ml: &[f64],
    uv: &[f64],
    q: &mut [f64],
    a: &mut [f64],
) {
    for (p, (&r, &c)) in rows.iter().zip(comps).enumerate() {
        let xr = &x[r as usize * d..(r as usize + 1) * d];
        let (m, l) = ml[2 * c as usize * d..(2 * c as usize + 2) * d].split_at(d);
        let (u, v) = uv[2 * c as usize * d..(2 * c as usize + 2) * d].split_at(d);
        let (mut aq, mut ap) = ([0f64; PAIR_LANES], [0f64; PAIR_LANES]);
        for j in 0..d {
            let t = xr[j] as f64 - m[j];
            aq[j % PAIR_LANES] += t * t * l[j];
            ap[j % PAIR_LANES] += t * (u[j] + v[j] * t);
        }
        q[p] = pair_sum(&aq);
        a[p] = pair_sum(&ap);
    }
}

/// The fixed pairwise order in which the partial sums of [`quad_poly_pairs_at`] are summed
/// (that of the forward pass's kernels).
#[inline(always)]
fn pair_sum(a: &[f64; PAIR_LANES]) -> f64 {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

/// First and second moments of the skipped entries about each component's mean, in f32:
/// for every component `c` with entries `starts[c]..starts[c+1]` (rows `rows[p]` of `x`,
/// `n × D`, weights `w[p]` rounded to f32), `acc[c·2D..]` gets `[Σ_p w_p δ_p, Σ_p (w_p δ_p) δ_p]`
/// with `δ_p = x_{rows[p]} − μ_c` in f32 (`μ_c`, the first half of row `c` of `ml`, rounded
/// to f32), summed in f32 in entry order from zero, then added to `acc` in f64. The skipped
/// entries' B are tiny (their whole sum is ~1e-5 of the gradient on the benchmark workload),
/// so f32 sums are far more precise than needed; half the work of the f64 moments.
#[allow(clippy::too_many_arguments)]
pub(super) fn moments_grouped_f32_at(
    level: SimdLevel,
    x: &[f32],
    d: usize,
    ml: &[f64],
    starts: &[u32],
    rows: &[u32],
    w: &[f64],
    acc: &mut [f64],
) {
    crate::kernels::check_grouped_moments("moments_grouped_f32", x, d, ml, starts, rows, w, acc);
    let k = ml.len() / (2 * d);
    for c in 0..k {
        let range = starts[c] as usize..starts[c + 1] as usize;
        if range.is_empty() {
            continue;
        }
        let (rows, w) = (&rows[range.clone()], &w[range]);
        let m = &ml[2 * c * d..(2 * c + 1) * d];
        let (a1, a2) = acc[2 * c * d..2 * (c + 1) * d].split_at_mut(d);
        let done = match level.clamp_to_cpu() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU has AVX-512F (clamp_to_cpu); rows checked above.
            SimdLevel::Avx512 => unsafe { x86::moments_f32_avx512(x, d, m, rows, w, a1, a2) },
            _ => 0,
        };
        moments_f32_scalar(x, d, done, m, rows, w, a1, a2);
    }
}

/// Scalar part of [`moments_grouped_f32_at`] for dimensions `from..D` of one component.
#[allow(clippy::too_many_arguments)]
fn moments_f32_scalar(
    x: &[f32],
    d: usize,
    from: usize,
    m: &[f64],
    rows: &[u32],
    w: &[f64],
    a1: &mut [f64],
    a2: &mut [f64],
) {
    for j in from..d {
        let mu = m[j] as f32;
        let (mut s1, mut s2) = (0f32, 0f32);
        for (&r, &b) in rows.iter().zip(w) {
            let t = x[r as usize * d + j] - mu;
            let bt = b as f32 * t;
            s1 += bt;
            s2 += bt * t;
        }
        a1[j] += s1 as f64;
        a2[j] += s2 as f64;
    }
}

/// One descriptor's skipped posteriors `post` (`K`, the refined entries already zeroed):
/// every entry `b = f · post[c]` is added to `col[c]` (f32), and those with `post[c] ≥ cut`
/// are listed: their components in `comps[..count]` and `b` (in f64) in `bs[..count]`, in
/// increasing component order. Returns `count`. `comps` and `bs` must hold `K` values.
pub(super) fn skipped_select_at(
    level: SimdLevel,
    post: &[f32],
    f: f32,
    cut: f32,
    col: &mut [f32],
    comps: &mut [u32],
    bs: &mut [f64],
) -> usize {
    let k = post.len();
    assert!(col.len() == k && comps.len() >= k && bs.len() >= k);
    match level.clamp_to_cpu() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512F (clamp_to_cpu); lengths checked above.
        SimdLevel::Avx512 => unsafe { x86::skipped_select_avx512(post, f, cut, col, comps, bs) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2 (clamp_to_cpu); lengths checked above.
        SimdLevel::Avx2 => unsafe { x86::skipped_select_avx2(post, f, cut, col, comps, bs) },
        _ => skipped_select_scalar(post, f, cut, col, comps, bs),
    }
}

/// Scalar twin of [`skipped_select_at`].
pub(super) fn skipped_select_scalar(
    post: &[f32],
    f: f32,
    cut: f32,
    col: &mut [f32],
    comps: &mut [u32],
    bs: &mut [f64],
) -> usize {
    let mut count = 0;
    for (c, &p) in post.iter().enumerate() {
        let b = p * f;
        col[c] += b;
        if p >= cut {
            comps[count] = c as u32;
            bs[count] = b as f64;
            count += 1;
        }
    }
    count
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// Pointers to the rows, `[μ, λ]` and `[u, v]` terms of up to four pairs starting at
    /// `p`; missing pairs repeat pair `p` (computed and discarded). Each pointer comes from a
    /// slice of exactly `d` (row) or `2d` (terms) values.
    #[allow(clippy::type_complexity)]
    #[inline(always)]
    fn pair_ptrs(
        x: &[f32],
        d: usize,
        rows: &[u32],
        comps: &[u32],
        ml: &[f64],
        uv: &[f64],
        p: usize,
    ) -> ([*const f32; 4], [*const f64; 4], [*const f64; 4]) {
        let row = |i: usize| x[rows[i] as usize * d..][..d].as_ptr();
        let terms = |t: &[f64], i: usize| t[2 * comps[i] as usize * d..][..2 * d].as_ptr();
        let mut xs = [row(p); 4];
        let mut ms = [terms(ml, p); 4];
        let mut us = [terms(uv, p); 4];
        for o in 1..(rows.len() - p).min(4) {
            xs[o] = row(p + o);
            ms[o] = terms(ml, p + o);
            us[o] = terms(uv, p + o);
        }
        (xs, ms, us)
    }

    /// Vector lanes back into an array of partial sums, for the scalar tail.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn lanes512(v: __m512d) -> [f64; PAIR_LANES] {
        let mut a = [0f64; PAIR_LANES];
        // SAFETY: `a` holds exactly 8 f64.
        unsafe { _mm512_storeu_pd(a.as_mut_ptr(), v) };
        a
    }

    /// Four pairs at once (see [`super::quad_poly_pairs_at`]).
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub(super) fn quad_poly_pairs_avx512(
        x: &[f32],
        d: usize,
        rows: &[u32],
        comps: &[u32],
        ml: &[f64],
        uv: &[f64],
        q: &mut [f64],
        a: &mut [f64],
    ) {
        let whole = d / PAIR_LANES * PAIR_LANES;
        for p in (0..rows.len()).step_by(4) {
            let (xs, ms, us) = pair_ptrs(x, d, rows, comps, ml, uv, p);
            let mut aq = [_mm512_setzero_pd(); 4];
            let mut ap = [_mm512_setzero_pd(); 4];
            for j in (0..whole).step_by(PAIR_LANES) {
                for o in 0..4 {
                    // SAFETY: j + 8 ≤ whole ≤ d: within the row (d values) and within both
                    // halves of the terms (2d values).
                    unsafe {
                        let xv = _mm512_cvtps_pd(_mm256_loadu_ps(xs[o].add(j)));
                        let t = _mm512_sub_pd(xv, _mm512_loadu_pd(ms[o].add(j)));
                        let l = _mm512_loadu_pd(ms[o].add(d + j));
                        aq[o] = _mm512_add_pd(aq[o], _mm512_mul_pd(_mm512_mul_pd(t, t), l));
                        let w = _mm512_add_pd(
                            _mm512_loadu_pd(us[o].add(j)),
                            _mm512_mul_pd(_mm512_loadu_pd(us[o].add(d + j)), t),
                        );
                        ap[o] = _mm512_add_pd(ap[o], _mm512_mul_pd(t, w));
                    }
                }
            }
            for o in 0..(rows.len() - p).min(4) {
                let (mut lq, mut lp) = (lanes512(aq[o]), lanes512(ap[o]));
                // SAFETY: j < d, within the row and both halves of the terms.
                unsafe {
                    for j in whole..d {
                        let t = *xs[o].add(j) as f64 - *ms[o].add(j);
                        lq[j - whole] += t * t * *ms[o].add(d + j);
                        lp[j - whole] += t * (*us[o].add(j) + *us[o].add(d + j) * t);
                    }
                }
                q[p + o] = pair_sum(&lq);
                a[p + o] = pair_sum(&lp);
            }
        }
    }

    /// Four pairs at once (see [`super::poly_pairs_at`]); the last `d mod 8` terms in masked
    /// lanes, which add exactly what the scalar tail adds to those lanes and leave the others.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub(super) fn poly_pairs_avx512(
        x: &[f32],
        d: usize,
        rows: &[u32],
        comps: &[u32],
        ml: &[f64],
        uv: &[f64],
        a: &mut [f64],
    ) {
        let whole = d / PAIR_LANES * PAIR_LANES;
        let tail = (d - whole) as u32;
        let mask = ((1u32 << tail) - 1) as __mmask8;
        for p in (0..rows.len()).step_by(4) {
            let (xs, ms, us) = pair_ptrs(x, d, rows, comps, ml, uv, p);
            let mut ap = [_mm512_setzero_pd(); 4];
            for j in (0..whole).step_by(PAIR_LANES) {
                for o in 0..4 {
                    // SAFETY: j + 8 ≤ whole ≤ d: within the row (d values) and within both
                    // halves of the terms (2d values).
                    unsafe {
                        let xv = _mm512_cvtps_pd(_mm256_loadu_ps(xs[o].add(j)));
                        let t = _mm512_sub_pd(xv, _mm512_loadu_pd(ms[o].add(j)));
                        let w = _mm512_add_pd(
                            _mm512_loadu_pd(us[o].add(j)),
                            _mm512_mul_pd(_mm512_loadu_pd(us[o].add(d + j)), t),
                        );
                        ap[o] = _mm512_add_pd(ap[o], _mm512_mul_pd(t, w));
                    }
                }
            }
            if tail > 0 {
                for o in 0..4 {
                    // SAFETY: the masked loads read only lanes j < d - whole past `whole`:
                    // within the row and both halves of the terms (masked-out lanes are not
                    // accessed).
                    unsafe {
                        let xf = _mm512_maskz_loadu_ps(mask as __mmask16, xs[o].add(whole));
                        let xv = _mm512_cvtps_pd(_mm512_castps512_ps256(xf));
                        let t = _mm512_sub_pd(xv, _mm512_maskz_loadu_pd(mask, ms[o].add(whole)));
                        let w = _mm512_add_pd(
                            _mm512_maskz_loadu_pd(mask, us[o].add(whole)),
                            _mm512_mul_pd(_mm512_maskz_loadu_pd(mask, us[o].add(d + whole)), t),
                        );
                        ap[o] = _mm512_mask_add_pd(ap[o], mask, ap[o], _mm512_mul_pd(t, w));
                    }
                }
            }
            for o in 0..(rows.len() - p).min(4) {
                a[p + o] = pair_sum(&lanes512(ap[o]));
            }
        }
    }

    /// Four pairs at once (see [`super::quad_poly_pairs_at`]), each partial-sum vector of
    /// the AVX-512 version as two halves.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2")]
    pub(super) fn quad_poly_pairs_avx2(
        x: &[f32],
        d: usize,
        rows: &[u32],
        comps: &[u32],
        ml: &[f64],
        uv: &[f64],
        q: &mut [f64],
        a: &mut [f64],
    ) {
        let whole = d / PAIR_LANES * PAIR_LANES;
        for p in (0..rows.len()).step_by(4) {
            let (xs, ms, us) = pair_ptrs(x, d, rows, comps, ml, uv, p);
            let mut aq = [[_mm256_setzero_pd(); 2]; 4];
            let mut ap = [[_mm256_setzero_pd(); 2]; 4];
            for j in (0..whole).step_by(PAIR_LANES) {
                for o in 0..4 {
                    for h in 0..2 {
                        let e = j + 4 * h;
                        // SAFETY: e + 4 ≤ whole ≤ d: within the row and both halves of the
                        // terms.
                        unsafe {
                            let xv = _mm256_cvtps_pd(_mm_loadu_ps(xs[o].add(e)));
                            let t = _mm256_sub_pd(xv, _mm256_loadu_pd(ms[o].add(e)));
                            let l = _mm256_loadu_pd(ms[o].add(d + e));
                            aq[o][h] =
                                _mm256_add_pd(aq[o][h], _mm256_mul_pd(_mm256_mul_pd(t, t), l));
                            let w = _mm256_add_pd(
                                _mm256_loadu_pd(us[o].add(e)),
                                _mm256_mul_pd(_mm256_loadu_pd(us[o].add(d + e)), t),
                            );
                            ap[o][h] = _mm256_add_pd(ap[o][h], _mm256_mul_pd(t, w));
                        }
                    }
                }
            }
            for o in 0..(rows.len() - p).min(4) {
                let (mut lq, mut lp) = ([0f64; PAIR_LANES], [0f64; PAIR_LANES]);
                // SAFETY: the arrays hold exactly 8 f64.
                unsafe {
                    for h in 0..2 {
                        _mm256_storeu_pd(lq.as_mut_ptr().add(4 * h), aq[o][h]);
                        _mm256_storeu_pd(lp.as_mut_ptr().add(4 * h), ap[o][h]);
                    }
                }
                // SAFETY: j < d, within the row and both halves of the terms.
                unsafe {
                    for j in whole..d {
                        let t = *xs[o].add(j) as f64 - *ms[o].add(j);
                        lq[j - whole] += t * t * *ms[o].add(d + j);
                        lp[j - whole] += t * (*us[o].add(j) + *us[o].add(d + j) * t);
                    }
                }
                q[p + o] = pair_sum(&lq);
                a[p + o] = pair_sum(&lp);
            }
        }
    }

    /// [`poly_scalar`] with the 16 partial sums in two vectors.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(super) fn poly_avx512(delta: &[f64], u: &[f64], v: &[f64]) -> f64 {
        let d = delta.len();
        assert!(u.len() >= d && v.len() >= d);
        let whole = d / POLY_LANES * POLY_LANES;
        let (mut lo, mut hi) = (_mm512_setzero_pd(), _mm512_setzero_pd());
        for j in (0..whole).step_by(POLY_LANES) {
            // SAFETY: j + 16 ≤ whole ≤ the length of all three slices.
            unsafe {
                for (h, acc) in [(0usize, &mut lo), (8, &mut hi)] {
                    let t = _mm512_loadu_pd(delta.as_ptr().add(j + h));
                    let w = _mm512_add_pd(
                        _mm512_loadu_pd(u.as_ptr().add(j + h)),
                        _mm512_mul_pd(_mm512_loadu_pd(v.as_ptr().add(j + h)), t),
                    );
                    *acc = _mm512_add_pd(*acc, _mm512_mul_pd(t, w));
                }
            }
        }
        let mut a = [0f64; POLY_LANES];
        // SAFETY: `a` holds exactly 16 f64.
        unsafe {
            _mm512_storeu_pd(a.as_mut_ptr(), lo);
            _mm512_storeu_pd(a.as_mut_ptr().add(8), hi);
        }
        for j in whole..d {
            a[j - whole] += delta[j] * (u[j] + v[j] * delta[j]);
        }
        poly_finish(&a)
    }

    /// [`poly_scalar`] with the 16 partial sums in four vectors.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) fn poly_avx2(delta: &[f64], u: &[f64], v: &[f64]) -> f64 {
        let d = delta.len();
        assert!(u.len() >= d && v.len() >= d);
        let whole = d / POLY_LANES * POLY_LANES;
        let mut acc = [_mm256_setzero_pd(); 4];
        for j in (0..whole).step_by(POLY_LANES) {
            // SAFETY: j + 16 ≤ whole ≤ the length of all three slices.
            unsafe {
                for (q, a) in acc.iter_mut().enumerate() {
                    let h = 4 * q;
                    let t = _mm256_loadu_pd(delta.as_ptr().add(j + h));
                    let w = _mm256_add_pd(
                        _mm256_loadu_pd(u.as_ptr().add(j + h)),
                        _mm256_mul_pd(_mm256_loadu_pd(v.as_ptr().add(j + h)), t),
                    );
                    *a = _mm256_add_pd(*a, _mm256_mul_pd(t, w));
                }
            }
        }
        let mut a = [0f64; POLY_LANES];
        for (q, v) in acc.iter().enumerate() {
            // SAFETY: `a` holds 16 f64, q ≤ 3.
            unsafe { _mm256_storeu_pd(a.as_mut_ptr().add(4 * q), *v) };
        }
        for j in whole..d {
            a[j - whole] += delta[j] * (u[j] + v[j] * delta[j]);
        }
        poly_finish(&a)
    }

    /// Dimensions `0..16·⌊D/16⌋` of one component of [`super::moments_grouped_f32_at`], 16
    /// at a time with the sums in registers; returns how many dimensions it did.
    #[target_feature(enable = "avx512f")]
    pub(super) fn moments_f32_avx512(
        x: &[f32],
        d: usize,
        m: &[f64],
        rows: &[u32],
        w: &[f64],
        a1: &mut [f64],
        a2: &mut [f64],
    ) -> usize {
        let whole = d / 16 * 16;
        for j in (0..whole).step_by(16) {
            // SAFETY: j + 16 ≤ whole ≤ d: within `m`, `a1`, `a2` and every row of `x` (the
            // caller checked the rows).
            unsafe {
                let mut m32 = [0f32; 16];
                for (o, &v) in m32.iter_mut().zip(&m[j..j + 16]) {
                    *o = v as f32;
                }
                let mu = _mm512_loadu_ps(m32.as_ptr());
                let (mut s1, mut s2) = (_mm512_setzero_ps(), _mm512_setzero_ps());
                for (&r, &b) in rows.iter().zip(w) {
                    let xv = _mm512_loadu_ps(x.as_ptr().add(r as usize * d + j));
                    let t = _mm512_sub_ps(xv, mu);
                    let bt = _mm512_mul_ps(_mm512_set1_ps(b as f32), t);
                    s1 = _mm512_add_ps(s1, bt);
                    s2 = _mm512_add_ps(s2, _mm512_mul_ps(bt, t));
                }
                for (s, a) in [(s1, &mut a1[j..j + 16]), (s2, &mut a2[j..j + 16])] {
                    for (h, part) in [
                        _mm512_castps512_ps256(s),
                        _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(s))),
                    ]
                    .into_iter()
                    .enumerate()
                    {
                        let p = a.as_mut_ptr().add(8 * h);
                        _mm512_storeu_pd(
                            p,
                            _mm512_add_pd(_mm512_loadu_pd(p), _mm512_cvtps_pd(part)),
                        );
                    }
                }
            }
        }
        whole
    }

    #[target_feature(enable = "avx512f,popcnt")]
    pub(super) fn skipped_select_avx512(
        post: &[f32],
        f: f32,
        cut: f32,
        col: &mut [f32],
        comps: &mut [u32],
        bs: &mut [f64],
    ) -> usize {
        let k = post.len();
        let whole = k / 16 * 16;
        let (vf, vcut) = (_mm512_set1_ps(f), _mm512_set1_ps(cut));
        let iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let mut count = 0;
        for base in (0..whole).step_by(16) {
            // SAFETY: base + 16 ≤ whole ≤ k = the length of `post` and `col`.
            let (b, mask) = unsafe {
                let p = _mm512_loadu_ps(post.as_ptr().add(base));
                let b = _mm512_mul_ps(p, vf);
                let cp = col.as_mut_ptr().add(base);
                _mm512_storeu_ps(cp, _mm512_add_ps(_mm512_loadu_ps(cp), b));
                (b, _mm512_cmp_ps_mask::<_CMP_GE_OQ>(p, vcut))
            };
            // The selected lanes compressed in registers (a compressing store is microcoded)
            // and written with masked stores: components, and B widened to f64. No branch
            // for vectors with none selected (a mask of 0 writes nothing): which ones have
            // none is data, and mispredicted it cost more than the work (3-5 % of the
            // recomputing backward pass at K = 64 and 256).
            let cnt = mask.count_ones() as usize;
            let idx = _mm512_add_epi32(_mm512_set1_epi32(base as i32), iota);
            let bc = _mm512_maskz_compress_ps(mask, b);
            let ic = _mm512_maskz_compress_epi32(mask, idx);
            let (lo, hi) = (
                _mm512_cvtps_pd(_mm512_castps512_ps256(bc)),
                _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(
                    _mm512_castps_pd(bc),
                ))),
            );
            let all = ((1u32 << cnt) - 1) as u16;
            // SAFETY: only the first `cnt` lanes from `count` are written, and count + cnt ≤ k
            // ≤ the lengths of `comps` and `bs` (each selected entry is a distinct component);
            // masked-off lanes are not accessed.
            unsafe {
                let (cp, bp) = (comps.as_mut_ptr().add(count), bs.as_mut_ptr().add(count));
                _mm512_mask_storeu_epi32(cp as *mut i32, all, ic);
                _mm512_mask_storeu_pd(bp, all as u8, lo);
                _mm512_mask_storeu_pd(bp.wrapping_add(8), (all >> 8) as u8, hi);
            }
            count += cnt;
        }
        for (c, &p) in post.iter().enumerate().skip(whole) {
            let b = p * f;
            col[c] += b;
            if p >= cut {
                comps[count] = c as u32;
                bs[count] = b as f64;
                count += 1;
            }
        }
        count
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn skipped_select_avx2(
        post: &[f32],
        f: f32,
        cut: f32,
        col: &mut [f32],
        comps: &mut [u32],
        bs: &mut [f64],
    ) -> usize {
        let k = post.len();
        let whole = k / 8 * 8;
        let (vf, vcut) = (_mm256_set1_ps(f), _mm256_set1_ps(cut));
        let mut count = 0;
        for base in (0..whole).step_by(8) {
            // SAFETY: base + 8 ≤ whole ≤ k = the length of `post` and `col`.
            let (b, mut mask) = unsafe {
                let p = _mm256_loadu_ps(post.as_ptr().add(base));
                let b = _mm256_mul_ps(p, vf);
                let cp = col.as_mut_ptr().add(base);
                _mm256_storeu_ps(cp, _mm256_add_ps(_mm256_loadu_ps(cp), b));
                let ge = _mm256_cmp_ps::<_CMP_GE_OQ>(p, vcut);
                (b, _mm256_movemask_ps(ge) as u32)
            };
            if mask == 0 {
                continue;
            }
            let mut lanes = [0f32; 8];
            // SAFETY: `lanes` holds exactly 8 f32.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), b) };
            while mask != 0 {
                let j = mask.trailing_zeros() as usize;
                mask &= mask - 1;
                comps[count] = (base + j) as u32;
                bs[count] = lanes[j] as f64;
                count += 1;
            }
        }
        for (c, &p) in post.iter().enumerate().skip(whole) {
            let b = p * f;
            col[c] += b;
            if p >= cut {
                comps[count] = c as u32;
                bs[count] = b as f64;
                count += 1;
            }
        }
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels;

    /// Deterministic values in [−1, 1).
    fn values(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 11) as f64 / (1u64 << 52) as f64 - 1.0
            })
            .collect()
    }

    const SHAPES: [(usize, usize); 7] = [
        (1, 1),
        (5, 7),
        (16, 8),
        (17, 16),
        (16, 34),
        (37, 33),
        (40, 64),
    ];

    #[test]
    fn quad_poly_pairs_agree_at_every_level_and_with_the_forward_quad_forms() {
        for (k, d) in SHAPES {
            let n = 9;
            let x: Vec<f32> = values(n * d, 1).iter().map(|&v| (3.0 * v) as f32).collect();
            let ml: Vec<f64> = values(2 * k * d, 2)
                .iter()
                .enumerate()
                .map(|(i, &v)| if i % (2 * d) < d { v } else { 1.5 + v })
                .collect();
            let uv = values(2 * k * d, 3);
            // Pair counts that are not multiples of four exercise the partial groups.
            let np = 4 * n + 3;
            let rows: Vec<u32> = (0..np).map(|p| (p * 7 % n) as u32).collect();
            let comps: Vec<u32> = (0..np).map(|p| (p * 5 % k) as u32).collect();
            let (mut q0, mut a0) = (vec![0f64; np], vec![0f64; np]);
            quad_poly_pairs_scalar(&x, d, &rows, &comps, &ml, &uv, &mut q0, &mut a0);
            // Against the definition, and the forward pass's quadratic forms bit for bit.
            for p in 0..np {
                let (r, c) = (rows[p] as usize, comps[p] as usize);
                let (mut q, mut a) = (0f64, 0f64);
                for j in 0..d {
                    let t = x[r * d + j] as f64 - ml[2 * c * d + j];
                    q += t * t * ml[2 * c * d + d + j];
                    a += t * (uv[2 * c * d + j] + uv[2 * c * d + d + j] * t);
                }
                assert!((q0[p] - q).abs() <= 1e-12 * q.abs().max(1.0), "K={k} D={d}");
                assert!((a0[p] - a).abs() <= 1e-12 * (d as f64), "K={k} D={d}");
            }
            for level in SimdLevel::available() {
                let (mut q, mut a) = (vec![0f64; np], vec![0f64; np]);
                quad_poly_pairs_at(level, &x, d, &rows, &comps, &ml, &uv, &mut q, &mut a);
                assert_eq!(q, q0, "{level:?} K={k} D={d}");
                assert_eq!(a, a0, "{level:?} K={k} D={d}");
                let mut qf = vec![0f64; np];
                kernels::quad_pairs_at(level, &x, d, &rows, &comps, &ml, &mut qf);
                assert_eq!(q, qf, "{level:?} K={k} D={d}: forward quadratic forms");
                // The polynomial alone, for every pair count (partial groups of four).
                for m in [0, 1, 2, 3, np] {
                    let mut ap = vec![0f64; m];
                    let mut scratch = vec![0f64; m];
                    poly_pairs_at(
                        level,
                        &x,
                        d,
                        &rows[..m],
                        &comps[..m],
                        &ml,
                        &uv,
                        &mut scratch,
                        &mut ap,
                    );
                    assert_eq!(ap, a0[..m], "{level:?} K={k} D={d} {m} pairs: poly alone");
                }
            }
        }
    }

    #[test]
    fn poly_sel_agrees_at_every_level() {
        for (k, d) in SHAPES {
            let m = k.min(11);
            let sel: Vec<u32> = (0..m).map(|j| ((j * 3 + 1) % k) as u32).collect();
            let mask: Vec<f64> = (0..m).map(|j| (j % 4 != 2) as u32 as f64).collect();
            let delta = values(m * d, 4);
            let uv = values(2 * k * d, 5);
            let r = values(k, 6);
            let mut want = vec![7f64; m];
            for j in 0..m {
                if mask[j] != 0.0 {
                    let c = sel[j] as usize;
                    let (u, v) = uv[2 * c * d..2 * (c + 1) * d].split_at(d);
                    want[j] = r[c] + poly_scalar(&delta[j * d..(j + 1) * d], u, v);
                    let direct: f64 = (0..d)
                        .map(|e| delta[j * d + e] * (u[e] + v[e] * delta[j * d + e]))
                        .sum();
                    assert!((want[j] - r[c] - direct).abs() <= 1e-12 * d as f64);
                }
            }
            for level in SimdLevel::available() {
                let mut out = vec![7f64; m];
                poly_sel_at(level, d, &sel, &mask, &delta, &uv, &r, &mut out);
                assert_eq!(out, want, "{level:?} K={k} D={d}");
            }
        }
    }

    #[test]
    fn grouped_f32_moments_agree_at_every_level_and_with_f64() {
        for (k, d) in SHAPES {
            let n = 9;
            let x: Vec<f32> = values(n * d, 11)
                .iter()
                .map(|&v| (2.0 * v) as f32)
                .collect();
            let ml = values(2 * k * d, 12);
            // Entries of every component in row order; some components have none.
            let mut starts = vec![0u32; k + 1];
            let (mut rows, mut w) = (Vec::new(), Vec::new());
            for c in 0..k {
                for r in (c % 3..n).step_by(2 + c % 2) {
                    rows.push(r as u32);
                    w.push(
                        1e-7 * (1.0 + (r * 3 + c) as f64 % 5.0)
                            * if r % 2 == 0 { 1.0 } else { -1.0 },
                    );
                }
                starts[c + 1] = rows.len() as u32;
            }
            let base = values(2 * k * d, 13);
            let run = |level: SimdLevel| {
                let mut acc = base.clone();
                moments_grouped_f32_at(level, &x, d, &ml, &starts, &rows, &w, &mut acc);
                acc
            };
            let want = run(SimdLevel::Scalar);
            let mut exact = base.clone();
            kernels::moments_grouped_scalar(&x, d, &ml, &starts, &rows, &w, &mut exact);
            // f32 sums: ~6e-8 of Σ|w| (|δ| + δ²), below 5e-11 here.
            for (a, b) in want.iter().zip(&exact) {
                assert!((a - b).abs() <= 5e-11, "K={k} D={d}: {a} vs {b}");
            }
            for level in SimdLevel::available() {
                assert_eq!(run(level), want, "{level:?} K={k} D={d}");
            }
        }
    }

    #[test]
    fn skipped_select_agrees_at_every_level() {
        for k in [1usize, 7, 8, 16, 17, 40, 256] {
            let rows = 5;
            let post: Vec<f32> = values(rows * k, 7)
                .iter()
                .map(|&v| (v.abs() * 1e-6) as f32)
                .collect();
            let run = |level: SimdLevel| {
                let mut col = vec![0f32; k];
                let mut out = Vec::new();
                for i in 0..rows {
                    let f = if i % 2 == 0 { -3.0 } else { 0.5 };
                    let (mut comps, mut bs) = (vec![0u32; k], vec![0f64; k]);
                    let p = &post[i * k..(i + 1) * k];
                    let m = skipped_select_at(level, p, f, 4e-7, &mut col, &mut comps, &mut bs);
                    out.push((comps[..m].to_vec(), bs[..m].to_vec()));
                }
                (col, out)
            };
            let (col0, out0) = run(SimdLevel::Scalar);
            for (i, (comps, bs)) in out0.iter().enumerate() {
                let f = if i % 2 == 0 { -3.0f32 } else { 0.5 };
                let p = &post[i * k..(i + 1) * k];
                let want: Vec<u32> = (0..k as u32).filter(|&c| p[c as usize] >= 4e-7).collect();
                assert_eq!(comps, &want, "K={k}");
                for (&c, &b) in comps.iter().zip(bs) {
                    assert_eq!(b, (p[c as usize] * f) as f64);
                }
            }
            for c in 0..k {
                let s: f64 = (0..rows)
                    .map(|i| (post[i * k + c] * if i % 2 == 0 { -3.0 } else { 0.5 }) as f64)
                    .sum();
                assert!((col0[c] as f64 - s).abs() <= 1e-12, "K={k}: column sums");
            }
            for level in SimdLevel::available() {
                assert_eq!(run(level), (col0.clone(), out0.clone()), "{level:?} K={k}");
            }
        }
    }
}
