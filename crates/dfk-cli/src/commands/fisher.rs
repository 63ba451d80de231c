//! `dfk fisher`: Fisher vectors of descriptors in `.npy` files, in VLFeat's layout.

use std::path::PathBuf;

use anyhow::Context;
use dfk::fisher::{FisherEncoder, FisherOptions};
use dfk::{model, npy};
use serde_json::json;

use crate::util::emit;
use crate::Global;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// GMM (or pipeline) model file.
    #[arg(long)]
    gmm: PathBuf,
    /// Descriptors, N×D float32/float64 .npy (D must match the GMM).
    #[arg(long)]
    descriptors: PathBuf,
    /// int64 offsets, images+1 entries: image i owns rows O[i]..O[i+1]. Without it the whole
    /// matrix is one image.
    #[arg(long)]
    offsets: Option<PathBuf>,
    /// Plain Fisher vector (no signed square root, no L2 normalisation).
    #[arg(long)]
    plain: bool,
    /// Output: images × 2KD float32 .npy (all mean blocks, then all variance blocks).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: Args, g: &Global) -> anyhow::Result<()> {
    let gmm = model::load_gmm(&a.gmm)?;
    let (x, rows, d) = npy::read_f32_matrix(&a.descriptors)?;
    if d != gmm.d() {
        anyhow::bail!(
            "{}: descriptors have {d} columns but the GMM in {} has dimension {}",
            a.descriptors.display(),
            a.gmm.display(),
            gmm.d()
        );
    }
    npy::require_finite(&a.descriptors, &x, d)?;
    let offsets = match &a.offsets {
        Some(p) => npy::read_usize_offsets(p, rows)?,
        None => vec![0, rows],
    };
    if let Some(i) = offsets.windows(2).position(|w| w[0] == w[1]) {
        anyhow::bail!(
            "{}: image {i} has no descriptors (offsets {} and {} are equal): a Fisher vector needs at least one",
            a.offsets.as_deref().unwrap_or(a.descriptors.as_path()).display(),
            offsets[i],
            offsets[i + 1]
        );
    }
    let options = if a.plain {
        FisherOptions::plain()
    } else {
        FisherOptions::default()
    };
    let encoder = FisherEncoder::new(&gmm, options)?;
    let images = offsets.len() - 1;
    let len = encoder.len();
    let mut out = vec![0.0f32; images * len];
    let start = std::time::Instant::now();
    encoder
        .encode_batch(&x, &offsets, &mut out)
        .with_context(|| format!("encoding {}", a.descriptors.display()))?;
    let secs = start.elapsed().as_secs_f64();
    npy::write_f32_matrix(&a.out, &out, images, len)?;
    emit(
        g,
        &json!({"out": a.out, "images": images, "dim": len, "descriptors": rows, "seconds": secs}),
        &format!(
            "encoded {images} image(s), {rows} descriptors → {images}×{len} Fisher vectors in {secs:.3} s → {}",
            a.out.display()
        ),
    );
    Ok(())
}
