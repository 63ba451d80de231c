//! Cost of one Deep Fisher Kernel iteration (line-search encodes + SVM solves + backward pass)
//! against one Fisher-vector encoding pass over the same training images.
//!
//! ```text
//! cargo run --release -p dfk --example deep_iteration -- X.npy OFFSETS.npy LABELS.npy K [IMAGES] [ITERS] [GROW] [plain|adaptive] [early|no-early] [stored|recompute]
//! ```
//! (e.g. the files written by `fixtures/deep/make_descriptors.py`). GROW is the line search's
//! growth factor (default 1.5), `plain` selects plain backtracking, `no-early` turns off the
//! early rejection of line-search trials by the SVM dual bound, `recompute` makes the backward
//! pass recompute the posteriors instead of reading those stored by the forward pass. Prints
//! one line per iteration, the median and mean ratio (two decimals), the trials rejected early
//! by the SVM dual bound, J after the last iteration and the mean time of each stage per
//! line-search trial (encode, SVM) and per iteration (backward); the encoding pass is timed
//! before and after training.

use std::time::Instant;

use dfk::deep::{train_deep, DeepData, DeepParams, ImageSet, LineSearch};
use dfk::fisher::FisherEncoder;
use dfk::gmm::{fit_gmm, GmmParams};
use dfk::npy;
use dfk::svm::Labels;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        return Err("usage: deep_iteration X.npy OFFSETS.npy LABELS.npy K [IMAGES] [ITERS]".into());
    }
    let k: usize = args[4].parse()?;
    let images: usize = args.get(5).map_or(Ok(5000), |s| s.parse())?;
    let iters: usize = args.get(6).map_or(Ok(5), |s| s.parse())?;
    let grow: f64 = args.get(7).map_or(Ok(1.5), |s| s.parse())?;
    let adaptive = args.get(8).map(String::as_str) != Some("plain");
    let early_rejection = args.get(9).map(String::as_str) != Some("no-early");
    let recompute = args.get(10).map(String::as_str) == Some("recompute");
    let (data, rows, d) = npy::read_f32_matrix(&args[1])?;
    let offsets = npy::read_usize_offsets(&args[2], rows)?;
    let labels = npy::read_labels(&args[3])?;
    let classes = labels.iter().max().map_or(0, |m| m + 1);
    let all = ImageSet::new(data, d, offsets, Labels::MultiClass { labels, classes })?;
    let set = all.subset(&(0..images.min(all.len())).collect::<Vec<_>>())?;
    let gmm = fit_gmm(&set.data, d, &GmmParams::new(k).seed(0))?.gmm;
    let params = DeepParams {
        max_iter: iters,
        rel_tol: 0.0,
        patience: 0,
        line_search: LineSearch {
            grow,
            adaptive,
            early_rejection,
            ..LineSearch::default()
        },
        max_posterior_bytes: if recompute {
            0
        } else {
            DeepParams::default().max_posterior_bytes
        },
        ..DeepParams::default()
    };

    let enc = FisherEncoder::new(&gmm, params.fisher)?;
    let mut out = vec![0f32; set.len() * enc.len()];
    let mut passes = Vec::new();
    let mut time_passes = |passes: &mut Vec<f64>| -> Result<(), dfk::Error> {
        for _ in 0..3 {
            let t = Instant::now();
            enc.encode_batch(&set.data, &set.offsets, &mut out)?;
            passes.push(t.elapsed().as_secs_f64());
        }
        Ok(())
    };
    time_passes(&mut passes)?;

    let data = DeepData {
        train: &set,
        val: None,
        test: None,
    };
    let model = train_deep(std::slice::from_ref(&gmm), &data, &params, None)?;
    // Passes timed before and after training, so that a change in the machine's load during
    // the run shows in their spread.
    time_passes(&mut passes)?;
    passes.sort_by(f64::total_cmp);
    let pass = (passes[2] + passes[3]) / 2.0;
    println!(
        "{} images, {} descriptors, D = {d}, K = {k}, {} threads: one encoding pass {:.3}s (median of 6, range {:.3}-{:.3}s; {:.0} desc/s)",
        set.len(),
        set.data.len() / d,
        rayon::current_num_threads(),
        pass,
        passes[0],
        passes[5],
        (set.data.len() / d) as f64 / pass
    );
    let mut ratios = Vec::new();
    let mut trials = 0;
    let mut early = 0;
    let mut stages = [0f64; 3];
    for r in &model.history.records[1..] {
        let work = r.time_encode_s + r.time_svm_s + r.time_backward_s;
        ratios.push(work / pass);
        trials += r.trials;
        early += r.early_rejections;
        for (s, t) in stages
            .iter_mut()
            .zip([r.time_encode_s, r.time_svm_s, r.time_backward_s])
        {
            *s += t;
        }
        println!(
            "iteration {}: J {:.4} step {:.4} {} trials ({} rejected early), encode {:.3}s, svm {:.3}s ({} epochs), backward {:.3}s, total {:.3}s = {:.2} encoding passes",
            r.iteration,
            r.objective,
            r.step,
            r.trials,
            r.early_rejections,
            r.time_encode_s,
            r.time_svm_s,
            r.svm_epochs,
            r.time_backward_s,
            work,
            work / pass
        );
    }
    ratios.sort_by(f64::total_cmp);
    if let Some(m) = ratios.get(ratios.len() / 2) {
        println!(
            "median iteration = {m:.2} encoding passes, mean {:.2}; {:.2} trials per iteration ({early} rejected early by the SVM dual bound); J after {} iterations {:.4}",
            ratios.iter().sum::<f64>() / ratios.len() as f64,
            trials as f64 / ratios.len() as f64,
            ratios.len(),
            model.history.records.last().map_or(f64::NAN, |r| r.objective)
        );
        let per_trial = trials.max(1) as f64;
        println!(
            "mean per trial: encode {:.4}s, svm {:.4}s; backward {:.4}s per iteration",
            stages[0] / per_trial,
            stages[1] / per_trial,
            stages[2] / ratios.len() as f64
        );
    }
    Ok(())
}
