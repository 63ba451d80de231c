//! Small SIMD-friendly kernels used by the hot loops: exp and row softmax.
//!
//! Each kernel has a plain scalar definition here; faster runtime-dispatched versions must agree
//! with it (tests compare them).

/// Replaces `row` by `softmax(row)` and returns `log Σ exp(row)` (log-sum-exp with max
/// subtraction, so large negative log-densities do not underflow to NaN).
pub fn softmax_in_place(row: &mut [f32]) -> f64 {
    let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f64;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v as f64;
    }
    let inv = (1.0 / sum) as f32;
    for v in row.iter_mut() {
        *v *= inv;
    }
    max as f64 + sum.ln()
}
