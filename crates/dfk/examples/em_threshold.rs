//! Effect of EM's posterior threshold (`GmmParams::posterior_threshold`) on the fitted model and
//! on the time per iteration: EM from the same starting model with every posterior kept
//! (τ = 0), with the default τ, and with VLFeat's `10⁻²/K`, compared parameter by parameter
//! with the τ = 0 fit.
//!
//! ```text
//! cargo run --release -p dfk --example em_threshold -- X.npy GMM_PREFIX [N] [ITERS]
//! ```
//! `GMM_PREFIX` names `<prefix>_means.npy`, `_variances.npy`, `_weights.npy` (as `bench/`
//! writes them); N rows of X are used (default 200 000), ITERS EM iterations (default 10).

use std::time::Instant;

use dfk::gmm::{fit_gmm_from, Gmm, GmmParams, DEFAULT_EM_POSTERIOR_THRESHOLD};
use dfk::npy;
use dfk::stats::{EmScratch, EmStats, GmmTerms};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        return Err("usage: em_threshold X.npy GMM_PREFIX [N] [ITERS]".into());
    }
    let n: usize = args.get(3).map_or(Ok(200_000), |s| s.parse())?;
    let iters: usize = args.get(4).map_or(Ok(10), |s| s.parse())?;
    let (x, rows, d) = npy::read_f32_matrix(&args[1])?;
    let x = &x[..n.min(rows) * d];
    let p = &args[2];
    let (means, k, _) = npy::read_f32_matrix(format!("{p}_means.npy"))?;
    let (vars, _, _) = npy::read_f32_matrix(format!("{p}_variances.npy"))?;
    let mut weights = npy::read_f32_vector(format!("{p}_weights.npy"))?;
    let total: f32 = weights.iter().sum();
    weights.iter_mut().for_each(|w| *w /= total);
    let gmm = Gmm::new(k, d, means, vars, weights)?;
    println!(
        "N = {}, D = {d}, K = {k}, {iters} EM iterations from the given model",
        x.len() / d
    );

    let vlfeat = 1e-2 / k as f32;
    let mut fits = Vec::new();
    for tau in [0.0, DEFAULT_EM_POSTERIOR_THRESHOLD, vlfeat] {
        // Posterior mass left out at the starting model, per descriptor.
        let mut st = EmStats::zeros(k, d);
        let shift = vec![0f32; d];
        st.accumulate(
            &GmmTerms::new(&gmm),
            gmm.means(),
            x,
            &shift,
            tau,
            &mut EmScratch::new(k, d),
        );
        let params = GmmParams::new(k)
            .max_iter(iters)
            .tol(0.0)
            .posterior_threshold(tau);
        let t = Instant::now();
        let fit = fit_gmm_from(x, &gmm, &params)?;
        let secs = t.elapsed().as_secs_f64() / (iters + 1) as f64;
        let ll = fit.loglik_history[fit.loglik_history.len() - 1];
        println!(
            "τ = {tau:.3e}: kept {:.2} posteriors per descriptor, mass left out {:.3e} per \
             descriptor; final average log-likelihood {ll:.6}; {secs:.4} s per E+M pass",
            st.kept as f64 / st.count as f64,
            st.dropped / st.count as f64,
        );
        fits.push((tau, fit.gmm, ll));
    }
    let (_, exact, ll0) = &fits[0];
    for (tau, g, ll) in &fits[1..] {
        let (mut dmu, mut dvar, mut dw) = (0f64, 0f64, 0f64);
        for c in 0..k {
            for j in 0..d {
                let s2 = exact.variance(c)[j] as f64;
                dmu = dmu.max((g.mean(c)[j] as f64 - exact.mean(c)[j] as f64).abs() / s2.sqrt());
                dvar = dvar.max((g.variance(c)[j] as f64 - s2).abs() / s2);
            }
            let w = exact.weights()[c] as f64;
            dw = dw.max((g.weights()[c] as f64 - w).abs() / w);
        }
        println!(
            "τ = {tau:.3e} vs τ = 0: max |Δμ|/σ {dmu:.3e}, max |Δσ²|/σ² {dvar:.3e}, \
             max |Δπ|/π {dw:.3e}, Δ log-likelihood {:.3e}",
            ll - ll0
        );
    }
    Ok(())
}
