//! `dfk svm train | predict`: one-vs-rest linear SVMs on feature vectors in `.npy` files.

use std::path::PathBuf;

use anyhow::Context;

use dfk::svm::{train_one_vs_rest, ClassWeighting, Labels, SvmParams};
use dfk::{model, npy};
use serde_json::json;

use crate::options::WeightingArg;
use crate::util::{as_flag_error, check_outputs, emit, usage};
use crate::Global;

#[derive(Debug, clap::Subcommand)]
pub enum SvmCommand {
    /// Train one-vs-rest SVMs (L1-loss, dual coordinate descent).
    Train(TrainArgs),
    /// Score feature vectors: writes n×C float32 decision values.
    Predict(PredictArgs),
}

#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Features, n×dim float32/float64 .npy.
    #[arg(long)]
    features: PathBuf,
    /// Labels: an integer vector of n class indices, or an n×C 0/1 matrix (multi-label).
    #[arg(long)]
    labels: PathBuf,
    /// Cost C.
    #[arg(long, default_value_t = 1.0)]
    c: f64,
    /// Stopping tolerance (projected gradient, as liblinear).
    #[arg(long, default_value_t = 0.1)]
    eps: f64,
    /// Maximum epochs.
    #[arg(long, default_value_t = 1000)]
    max_iter: usize,
    /// Bias feature value (0: no bias).
    #[arg(long, default_value_t = 1.0, value_parser = crate::options::parse_f32)]
    bias: f32,
    /// Class weighting.
    #[arg(long, value_enum, default_value = "uniform")]
    weighting: WeightingArg,
    /// Output SVM file.
    #[arg(long, short = 'o')]
    out: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct PredictArgs {
    /// SVM (or pipeline) model file.
    svm: PathBuf,
    /// Features, n×dim float32/float64 .npy.
    #[arg(long)]
    features: PathBuf,
    /// Output scores, n×C float32 .npy.
    #[arg(long, short = 'o')]
    out: PathBuf,
}

pub fn run(args: SvmCommand, g: &Global) -> anyhow::Result<()> {
    match args {
        SvmCommand::Train(a) => train(a, g),
        SvmCommand::Predict(a) => predict(a, g),
    }
}

fn read_labels(a: &TrainArgs, n: usize) -> anyhow::Result<Labels> {
    let labels = match npy::read_labels(&a.labels) {
        Ok(l) => {
            let classes = l.iter().max().map_or(0, |m| m + 1);
            Labels::MultiClass { labels: l, classes }
        }
        Err(vector_err) => match npy::read_i64_matrix(&a.labels) {
            Ok((m, rows, classes))
                if m.iter().all(|&v| v == 0 || v == 1) && rows == n && classes > 0 =>
            {
                Labels::MultiLabel {
                    targets: m.iter().map(|&v| v == 1).collect(),
                    classes,
                }
            }
            Ok((m, rows, classes)) => {
                let shape = format!("shape [{rows}, {classes}]");
                let problem = if rows != n {
                    format!(
                        "{shape}: {rows} rows but {} has {n}{}",
                        a.features.display(),
                        if classes == n { " (transposed?)" } else { "" }
                    )
                } else if classes == 0 {
                    format!("{shape}: no class columns")
                } else {
                    let v = m.iter().find(|&&v| v != 0 && v != 1).copied().unwrap_or(0);
                    format!("{shape}: it holds the value {v}")
                };
                anyhow::bail!(
                    "{}: {problem}; a label matrix is n × C (one row per feature row, one \
                     column per class) with 0/1 entries",
                    a.labels.display()
                )
            }
            // A file that is not a vector is reported as the matrix it tried to be (a float
            // 0/1 matrix: its dtype, not its shape, is wrong).
            Err(matrix_err) if vector_err.to_string().contains("as a vector (rank 1)") => {
                return Err(matrix_err.into())
            }
            Err(_) => return Err(vector_err.into()),
        },
    };
    if labels.n() != n {
        anyhow::bail!(
            "{}: {} labels but {} has {n} rows",
            a.labels.display(),
            labels.n(),
            a.features.display()
        );
    }
    if labels.classes() < 2 {
        anyhow::bail!(
            "{}: only {} class(es): one-vs-rest needs at least 2",
            a.labels.display(),
            labels.classes()
        );
    }
    // Classes are the indices 0..C (the columns of a matrix): one without a sample has no SVM.
    if let Some(c) = labels.positives_per_class().iter().position(|&p| p == 0) {
        anyhow::bail!(
            "{}: class {c} has no sample (classes are 0..{} by index{}): every class needs one \
             to train its SVM",
            a.labels.display(),
            labels.classes() - 1,
            match labels {
                Labels::MultiClass { .. } => ", up to the largest label",
                Labels::MultiLabel { .. } => ", one per column",
            }
        );
    }
    Ok(labels)
}

fn train(a: TrainArgs, g: &Global) -> anyhow::Result<()> {
    if !(a.c.is_finite() && a.c > 0.0) {
        return usage(format!("--c {}: expected a finite number > 0", a.c));
    }
    if !(a.eps.is_finite() && a.eps > 0.0) {
        return usage(format!("--eps {}: expected a finite number > 0", a.eps));
    }
    check_outputs(
        &[("--out", &a.out)],
        &[("--features", &a.features), ("--labels", &a.labels)],
    )?;
    let (x, n, dim) = npy::read_f32_matrix(&a.features)?;
    if dim == 0 {
        anyhow::bail!(
            "{}: 0 columns: expected at least one feature per row",
            a.features.display()
        );
    }
    npy::require_finite(&a.features, &x, dim)?;
    let labels = read_labels(&a, n)?;
    let params = SvmParams {
        c: a.c,
        eps: a.eps,
        max_iter: a.max_iter,
        bias: a.bias,
        seed: g.seed,
        ..SvmParams::default()
    };
    params.validate().map_err(|e| {
        as_flag_error(
            e,
            &[
                ("svm c", "--c"),
                ("svm eps", "--eps"),
                ("svm max_iter", "--max-iter"),
                ("svm bias", "--bias"),
            ],
        )
    })?;
    let weighting = match a.weighting {
        WeightingArg::Uniform => ClassWeighting::Uniform,
        WeightingArg::Balanced => ClassWeighting::Balanced,
    };
    let start = std::time::Instant::now();
    let svm = train_one_vs_rest(&x, n, dim, &labels, &params, weighting, None)?;
    let secs = start.elapsed().as_secs_f64();
    model::save_svm(&a.out, &svm, &[])?;
    let pred = svm.predict(&x, n);
    let train_acc = match &labels {
        Labels::MultiClass { labels, .. } => Some(dfk::metrics::accuracy(&pred, labels)?),
        Labels::MultiLabel { .. } => None,
    };
    emit(
        g,
        &json!({"out": a.out, "n": n, "dim": dim, "classes": svm.classes,
                "objective": svm.objective(), "train_accuracy": train_acc, "seconds": secs}),
        &format!(
            "trained {} one-vs-rest SVMs on {n}×{dim} features in {secs:.2} s (objective {:.4}{}) → {}",
            svm.classes,
            svm.objective(),
            train_acc.map_or(String::new(), |t| format!(", training accuracy {:.2} %", 100.0 * t)),
            a.out.display()
        ),
    )?;
    Ok(())
}

fn predict(a: PredictArgs, g: &Global) -> anyhow::Result<()> {
    check_outputs(
        &[("--out", &a.out)],
        &[("SVM file", &a.svm), ("--features", &a.features)],
    )?;
    let (svm, _) = model::load_svm(&a.svm)?;
    let (x, n, dim) = npy::read_f32_matrix(&a.features)?;
    if dim != svm.dim {
        anyhow::bail!(
            "{}: features have {dim} column{} but the SVMs in {} expect {}{}",
            a.features.display(),
            if dim == 1 { "" } else { "s" },
            a.svm.display(),
            svm.dim,
            crate::util::rank1_note(
                &a.features,
                dim,
                &format!("one feature vector is a 1 × {} matrix", svm.dim)
            )
        );
    }
    npy::require_finite(&a.features, &x, dim)?;
    let scores = svm
        .try_scores(&x, n)
        .with_context(|| format!("scoring with the SVMs in {}", a.svm.display()))?;
    npy::write_f32_matrix(&a.out, &scores, n, svm.classes)?;
    emit(
        g,
        &json!({"out": a.out, "n": n, "classes": svm.classes}),
        &format!(
            "scored {n} vectors on {} classes → {}",
            svm.classes,
            a.out.display()
        ),
    )?;
    Ok(())
}
