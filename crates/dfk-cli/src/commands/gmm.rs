//! `dfk gmm fit | import | export`: a diagonal GMM to and from `.npy` descriptors and arrays.

use std::path::PathBuf;

use anyhow::Context;
use dfk::gmm::{fit_gmm, Gmm, GmmParams};
use dfk::{model, npy};
use serde_json::json;

use crate::util::{as_flag_error, check_outputs, check_outputs_in_folders, emit, usage};
use crate::Global;

#[derive(Debug, clap::Subcommand)]
pub enum GmmCommand {
    /// Fit a GMM to descriptors (N×D float32/float64 .npy) by EM.
    Fit(FitArgs),
    /// Build a GMM file from means (K×D), variances (K×D) and weights (K) .npy arrays.
    Import(ImportArgs),
    /// Write a GMM's means.npy, variances.npy and weights.npy (float32) into a folder.
    Export(ExportArgs),
}

#[derive(Debug, clap::Args)]
pub struct FitArgs {
    /// Descriptors, N×D float32 or float64 .npy.
    #[arg(long)]
    descriptors: PathBuf,
    /// Number of components.
    #[arg(long, short = 'k')]
    k: usize,
    /// Maximum EM iterations (default: the library's, 500).
    #[arg(long)]
    max_iter: Option<usize>,
    /// Relative log-likelihood change at which EM stops (default: the library's, 1e-7).
    #[arg(long)]
    tol: Option<f64>,
    /// Independent initialisations (the best likelihood is kept).
    #[arg(long, default_value_t = 1)]
    restarts: usize,
    /// Variance floor relative to each dimension's data variance (0 to 1).
    #[arg(long, default_value_t = 1e-4)]
    variance_floor: f64,
    /// M-step posterior threshold: posteriors below this times a descriptor's largest one
    /// are left out of the means, variances and weights (0: keep all; the log-likelihood
    /// always uses all).
    #[arg(long, default_value_t = dfk::gmm::DEFAULT_EM_POSTERIOR_THRESHOLD,
          value_parser = crate::options::parse_f32)]
    posterior_threshold: f32,
    /// Output GMM file.
    #[arg(long, short = 'o')]
    out: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// Means, K×D .npy.
    #[arg(long)]
    means: PathBuf,
    /// Diagonal variances σ², K×D .npy.
    #[arg(long)]
    variances: PathBuf,
    /// Mixture weights, K .npy (renormalised to sum to one).
    #[arg(long)]
    weights: PathBuf,
    /// Output GMM file.
    #[arg(long, short = 'o')]
    out: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// A GMM or pipeline model file.
    gmm: PathBuf,
    /// Folder for means.npy, variances.npy, weights.npy (created if missing).
    #[arg(long)]
    out_dir: PathBuf,
}

pub fn run(args: GmmCommand, g: &Global) -> anyhow::Result<()> {
    match args {
        GmmCommand::Fit(a) => fit(a, g),
        GmmCommand::Import(a) => import(a, g),
        GmmCommand::Export(a) => export(a, g),
    }
}

fn fit(a: FitArgs, g: &Global) -> anyhow::Result<()> {
    if a.k == 0 {
        return usage("--k must be at least 1");
    }
    crate::options::check_variance_floor("--variance-floor", a.variance_floor)?;
    if let Some(expected) =
        crate::options::k_beyond_weight_floor(a.k, GmmParams::new(a.k).weight_floor)
    {
        return usage(format!("--k {}: expected {expected}", a.k));
    }
    check_outputs(&[("--out", &a.out)], &[("--descriptors", &a.descriptors)])?;
    let (x, n, d) = npy::read_f32_matrix(&a.descriptors)?;
    npy::require_finite(&a.descriptors, &x, d)?;
    if n < a.k {
        anyhow::bail!(
            "{}: {n} descriptors cannot fit {} components (need at least K rows)",
            a.descriptors.display(),
            a.k
        );
    }
    let mut params = GmmParams::new(a.k);
    if let Some(v) = a.max_iter {
        params = params.max_iter(v);
    }
    if let Some(v) = a.tol {
        params = params.tol(v);
    }
    let params = params
        .restarts(a.restarts)
        .variance_floor(a.variance_floor)
        .posterior_threshold(a.posterior_threshold)
        .seed(g.seed);
    params.validate().map_err(|e| {
        as_flag_error(
            e,
            &[
                ("max_iter", "--max-iter"),
                ("tol", "--tol"),
                ("restarts", "--restarts"),
                ("variance_floor", "--variance-floor"),
                ("posterior_threshold", "--posterior-threshold"),
            ],
        )
    })?;
    let start = std::time::Instant::now();
    let fit = fit_gmm(&x, d, &params)
        .with_context(|| format!("fitting a GMM to {}", a.descriptors.display()))?;
    let secs = start.elapsed().as_secs_f64();
    model::save_gmm(&a.out, &fit.gmm)?;
    let ll = fit.loglik_history.last().copied().unwrap_or(f64::NAN);
    emit(
        g,
        &json!({"out": a.out, "k": a.k, "d": d, "descriptors": n, "iterations": fit.iterations,
                "converged": fit.converged, "log_likelihood": ll, "seconds": secs}),
        &format!(
            "fitted K={} D={d} on {n} descriptors: {} iterations ({}), average log-likelihood {ll:.4}, {secs:.2} s → {}",
            a.k,
            fit.iterations,
            if fit.converged { "converged" } else { "iteration limit" },
            a.out.display()
        ),
    )?;
    Ok(())
}

fn import(a: ImportArgs, g: &Global) -> anyhow::Result<()> {
    check_outputs(
        &[("--out", &a.out)],
        &[
            ("--means", &a.means),
            ("--variances", &a.variances),
            ("--weights", &a.weights),
        ],
    )?;
    let (means, k, d) = npy::read_f32_matrix(&a.means)?;
    let (variances, kv, dv) = npy::read_f32_matrix(&a.variances)?;
    if (kv, dv) != (k, d) {
        anyhow::bail!(
            "{}: shape ({kv}, {dv}) does not match the means' ({k}, {d})",
            a.variances.display()
        );
    }
    let weights = npy::read_f32_vector(&a.weights)?;
    if weights.len() != k {
        anyhow::bail!(
            "{}: {} weights, expected K = {k} (one per row of the means)",
            a.weights.display(),
            weights.len()
        );
    }
    npy::require_finite(&a.means, &means, d)?;
    npy::require_finite(&a.variances, &variances, d)?;
    npy::require_finite(&a.weights, &weights, 1)?;
    let gmm = Gmm::new(k, d, means, variances, weights).with_context(|| {
        format!(
            "invalid GMM from {}, {}, {}",
            a.means.display(),
            a.variances.display(),
            a.weights.display()
        )
    })?;
    model::save_gmm(&a.out, &gmm)?;
    emit(
        g,
        &json!({"out": a.out, "k": k, "d": d}),
        &format!("imported K={k} D={d} → {}", a.out.display()),
    )?;
    Ok(())
}

fn export(a: ExportArgs, g: &Global) -> anyhow::Result<()> {
    let [means, variances, weights] =
        ["means.npy", "variances.npy", "weights.npy"].map(|name| a.out_dir.join(name));
    check_outputs_in_folders(
        &[],
        &[
            ("--out-dir", &means),
            ("--out-dir", &variances),
            ("--out-dir", &weights),
        ],
        &[("GMM file", &a.gmm)],
    )?;
    let gmm = model::load_gmm(&a.gmm)?;
    let created = crate::util::create_output_dir("--out-dir", &a.out_dir)?;
    let (k, d) = (gmm.k(), gmm.d());
    // All three or none: a full disk must not leave means.npy without its variances.
    let mut files = npy::FileGroup::new();
    files.f32_matrix(&means, gmm.means(), k, d)?;
    files.f32_matrix(&variances, gmm.variances(), k, d)?;
    files.f32_vector(&weights, gmm.weights())?;
    files.commit()?;
    created.keep();
    emit(
        g,
        &json!({"out_dir": a.out_dir, "k": k, "d": d}),
        &format!(
            "wrote means.npy, variances.npy, weights.npy (K={k}, D={d}) to {}",
            a.out_dir.display()
        ),
    )?;
    Ok(())
}
