//! `dfk encode`: Fisher vectors of a data set's images with a trained model's preprocessing
//! and GMM, written as `.npy`.

use std::path::PathBuf;

use anyhow::Context;
use dfk::npy;
use serde_json::json;

use crate::commands::eval::load_pipeline;
use crate::options::DataArgs;
use crate::util::{check_outputs, checked_cache_dir, emit, Bars};
use crate::Global;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model file (from `dfk train`).
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    /// With --fashion-mnist or --embedded: encode the test set instead of the training set.
    #[arg(long)]
    test: bool,
    /// Output Fisher vectors, images × 2KD float32 .npy (with a spatial pyramid in the model:
    /// images × cells·2KD; with a per-class deep model, one vector per class GMM side by side:
    /// images × classes·2KD).
    #[arg(long, short = 'o')]
    out: PathBuf,
    /// Also write the labels as int64 .npy, in the model's class indices: one class index per
    /// image, or for multi-label data (VOC) the images × classes 0/1 matrix (as `extract`
    /// writes them, and `svm train` and `dfk deep --multilabel` read them).
    #[arg(long)]
    labels_out: Option<PathBuf>,
    /// Descriptor cache folder (default: $XDG_CACHE_HOME/dfk/descriptors or ~/.cache/dfk/descriptors).
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// Extract descriptors afresh and do not store them.
    #[arg(long)]
    no_cache: bool,
}

pub fn run(a: Args, g: &Global) -> anyhow::Result<()> {
    let mut outputs = vec![("--out", a.out.as_path())];
    if let Some(p) = &a.labels_out {
        outputs.push(("--labels-out", p));
    }
    let mut inputs = a.data.inputs();
    inputs.push(("--model", &a.model));
    check_outputs(&outputs, &inputs)?;
    a.data.check_outputs_not_listed(&outputs)?;
    let cache = checked_cache_dir(a.cache.as_deref(), a.no_cache, &a.data)?;
    let pipeline = load_pipeline(&a.model)?;
    let loaded = a.data.load()?;
    a.data.check_outputs_not_loaded(&outputs, &loaded)?;
    let data = match (&loaded.test, a.test) {
        (Some(t), true) => t,
        (None, true) => return crate::util::usage("--test needs --fashion-mnist or --embedded"),
        _ => &loaded.train,
    };
    if loaded.descriptors.is_some() && !a.test {
        crate::util::check_positions_not_needed(&pipeline.config, Some(&a.model))?;
    }
    // The labels as the model's class indices (the rows of its SVMs' scores), checked before
    // the work.
    // (values, columns: 0 for a vector of class indices).
    let labels: Option<(Vec<i64>, usize)> = match &a.labels_out {
        Some(_) => {
            let mapped = crate::commands::eval::in_model_classes(
                data,
                &pipeline,
                &loaded.description,
                &a.model,
            )?;
            // An image of multi-label data may belong to no class: a class index cannot say
            // so, the matrix's row of zeros does.
            Some(match mapped.labels() {
                dfk::svm::Labels::MultiLabel { targets, classes } => {
                    (targets.iter().map(|&t| i64::from(t)).collect(), classes)
                }
                dfk::svm::Labels::MultiClass { labels, .. } => {
                    (labels.iter().map(|&l| l as i64).collect(), 0)
                }
            })
        }
        None => None,
    };
    let fv = match (&loaded.descriptors, a.test) {
        (Some(raw), false) => pipeline.encode_raw(raw, &Bars::new(g)),
        _ => pipeline.encode_dataset(data, cache.as_deref(), &Bars::new(g)),
    }
    .with_context(|| {
        format!(
            "encoding {} with the model in {}",
            loaded.description,
            a.model.display()
        )
    })?;
    let dim = pipeline.feature_len();
    let mut files = npy::FileGroup::new();
    files.f32_matrix(&a.out, &fv, data.len(), dim)?;
    match (&a.labels_out, &labels) {
        (Some(p), Some((m, classes))) if *classes > 0 => {
            files.i64_matrix(p, m, data.len(), *classes)?
        }
        (Some(p), Some((v, _))) => files.i64_vector(p, v)?,
        _ => {}
    }
    files.commit()?;
    emit(
        g,
        &json!({"out": a.out, "images": data.len(), "dim": dim}),
        &format!(
            "encoded {} images → {}×{dim} → {}",
            data.len(),
            data.len(),
            a.out.display()
        ),
    )?;
    Ok(())
}
