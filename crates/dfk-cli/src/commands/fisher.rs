//! `dfk fisher`: Fisher vectors of descriptors in `.npy` files, in VLFeat's layout.
//!
//! The descriptors are streamed: a reader thread reads batches of whole images (by the
//! offsets) while the previous batch is encoded in parallel, and the vectors are appended to a
//! temporary output file (header first: the image count is known from the offsets) that is
//! renamed over `--out` at the end. Memory is bounded by the batch (at most three batches of
//! descriptors and one of vectors are held), not by the size of the data set; a single image
//! is never split, so an image larger than the batch is held whole.

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use anyhow::Context;
use dfk::fisher::{FisherEncoder, FisherOptions};
use dfk::npy::{F32MatrixReader, F32MatrixWriter};
use dfk::{model, npy};
use serde_json::json;

use crate::util::{check_outputs, emit, usage};
use crate::Global;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// GMM (or pipeline) model file.
    #[arg(long)]
    gmm: PathBuf,
    /// Descriptors, N×D float32/float64 .npy (D must match the GMM).
    #[arg(long)]
    descriptors: PathBuf,
    /// Integer offsets (any integer dtype), images+1 entries: image i owns rows `O[i]..O[i+1]`. Without it the whole
    /// matrix is one image.
    #[arg(long)]
    offsets: Option<PathBuf>,
    /// Plain Fisher vector (no signed square root, no L2 normalisation).
    #[arg(long)]
    plain: bool,
    /// Images read and encoded per batch: memory holds a few batches of descriptors and one of
    /// Fisher vectors, whatever the size of the data set.
    #[arg(long, default_value_t = 256)]
    batch_images: usize,
    /// Output: images × 2KD float32 .npy (all mean blocks, then all variance blocks).
    #[arg(long, short = 'o')]
    out: PathBuf,
}

pub fn run(a: Args, g: &Global) -> anyhow::Result<()> {
    if a.batch_images == 0 {
        return usage("--batch-images must be at least 1");
    }
    let mut inputs = vec![
        ("--gmm", a.gmm.as_path()),
        ("--descriptors", &a.descriptors),
    ];
    if let Some(o) = &a.offsets {
        inputs.push(("--offsets", o));
    }
    check_outputs(&[("--out", &a.out)], &inputs)?;
    let (gmm, model_fisher) = load_one_gmm(&a.gmm)?;
    let mut reader = F32MatrixReader::open(&a.descriptors)?;
    let (rows, d) = (reader.rows(), reader.cols());
    if d != gmm.d() {
        anyhow::bail!(
            "{}: descriptors have {d} column{} but the GMM in {} has dimension {}{}",
            a.descriptors.display(),
            if d == 1 { "" } else { "s" },
            a.gmm.display(),
            gmm.d(),
            crate::util::rank1_note(&a.descriptors, d, "descriptors are an N × D matrix")
        );
    }
    let offsets = match &a.offsets {
        Some(p) => npy::read_usize_offsets(p, rows)?,
        None => vec![0, rows],
    };
    if a.offsets.is_none() && rows == 0 {
        anyhow::bail!(
            "{}: the array has no rows: without --offsets it is one image, and a Fisher vector \
             needs at least one descriptor",
            a.descriptors.display()
        );
    }
    if let Some(i) = offsets.windows(2).position(|w| w[0] == w[1]) {
        anyhow::bail!(
            "{}: image {i} has no descriptors (offsets {} and {} are equal): a Fisher vector needs at least one",
            a.offsets.as_deref().unwrap_or(a.descriptors.as_path()).display(),
            offsets[i],
            offsets[i + 1]
        );
    }
    // A pipeline model's own settings (a deep model's sqrt_epsilon and posterior threshold),
    // so that the vectors are those its SVMs score; a GMM file's: VLFeat's improved FV.
    let options = match (a.plain, model_fisher) {
        (true, _) => FisherOptions::plain(),
        (false, Some(o)) => o,
        (false, None) => FisherOptions::default(),
    };
    let encoder = FisherEncoder::new(&gmm, options)?;
    let images = offsets.len() - 1;
    let len = encoder.len();
    let batches: Vec<(usize, usize)> = (0..images)
        .step_by(a.batch_images)
        .map(|first| (first, (first + a.batch_images).min(images)))
        .collect();
    let start = std::time::Instant::now();
    let mut writer = F32MatrixWriter::create(&a.out, images, len)?;
    let path = a.descriptors.as_path();
    std::thread::scope(|s| -> anyhow::Result<()> {
        // Filled batches flow to the encoder (at most one waiting), emptied buffers come back.
        let (full_tx, full_rx) = mpsc::sync_channel::<dfk::Result<Vec<f32>>>(1);
        let (empty_tx, empty_rx) = mpsc::channel::<Vec<f32>>();
        let (offsets, batches) = (&offsets, &batches);
        s.spawn(move || {
            for &(first, last) in batches {
                let mut buf = empty_rx.try_recv().unwrap_or_default();
                let (r0, r1) = (offsets[first], offsets[last]);
                let read = reader
                    .read_rows(r1 - r0, &mut buf)
                    .and_then(|()| npy::require_finite_rows(path, &buf, d, r0))
                    .map(|()| buf);
                let failed = read.is_err();
                // A closed channel means the encoder stopped on an error: stop too.
                if full_tx.send(read).is_err() || failed {
                    return;
                }
            }
        });
        let mut fv = Vec::new();
        let mut local = Vec::new();
        for &(first, last) in batches {
            let x = full_rx
                .recv()
                .context("the descriptor reader stopped early")??;
            local.clear();
            local.extend(offsets[first..=last].iter().map(|&o| o - offsets[first]));
            fv.clear();
            fv.resize((last - first) * len, 0.0);
            encoder
                .encode_batch(&x, &local, &mut fv)
                .with_context(|| batch_context(path, first, last))?;
            writer.write_rows(&fv)?;
            // The reader may have finished: then the buffer is simply freed.
            let _ = empty_tx.send(x);
        }
        Ok(())
    })?;
    writer.finish()?;
    let secs = start.elapsed().as_secs_f64();
    emit(
        g,
        &json!({"out": a.out, "images": images, "dim": len, "descriptors": rows, "seconds": secs,
                "batch_images": a.batch_images}),
        &format!(
            "encoded {images} image(s), {rows} descriptors → {images}×{len} Fisher vectors in {secs:.3} s → {}",
            a.out.display()
        ),
    )?;
    Ok(())
}

fn batch_context(path: &Path, first: usize, last: usize) -> String {
    format!(
        "encoding images {first}..{last} of {} (image numbers within the batch)",
        path.display()
    )
}

/// The GMM of `--gmm`: a GMM file, or a pipeline model checked whole
/// ([`model::load_gmm_checked`]). A per-class deep model holds one learned GMM per class beside
/// its initial one, which one GMM cannot stand for: refused.
fn load_one_gmm(path: &std::path::Path) -> anyhow::Result<(dfk::gmm::Gmm, Option<FisherOptions>)> {
    let (gmm, class_gmms, fisher) = model::load_gmm_and_encoder(path)?;
    if !class_gmms.is_empty() {
        anyhow::bail!(
            "{}: a per-class deep model holds one learned GMM per class ({} of them) beside its \
             initial GMM; `dfk fisher` encodes with one GMM: give a GMM file or a pipeline or \
             shared-mode deep model",
            path.display(),
            class_gmms.len()
        );
    }
    Ok((gmm, fisher))
}
