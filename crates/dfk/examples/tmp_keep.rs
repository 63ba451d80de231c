use dfk::fisher::{FisherEncoder, FisherOptions};
use dfk::gmm::Gmm;
use dfk::npy;
use std::time::Instant;
fn main() {
    let (x, rows, d) = npy::read_f32_matrix("/tmp/dfkd/x605k.npy").unwrap();
    let (m, k, _) = npy::read_f32_matrix("/tmp/dfkd/g16_means.npy").unwrap();
    let (v, _, _) = npy::read_f32_matrix("/tmp/dfkd/g16_variances.npy").unwrap();
    let w: Vec<f32> = npy::read_f32_matrix("/tmp/dfkd/g16_weights.npy")
        .map(|t| t.0)
        .unwrap_or_else(|_| vec![1.0 / k as f32; k]);
    let gmm = Gmm::new(k, d, m, v, w).unwrap();
    let enc = FisherEncoder::new(&gmm, FisherOptions::default()).unwrap();
    let per = 121;
    let images = rows / per;
    let offsets: Vec<usize> = (0..=images).map(|i| i * per).collect();
    let mut fv = vec![0f32; images * enc.len()];
    let mut prev = None;
    for rep in 0..6 {
        for keep in [std::env::var("KEEP")
            .map(|v| v.parse::<usize>().unwrap())
            .unwrap_or(0)]
        {
            let t = Instant::now();
            let c = enc
                .encode_batch_keeping(&x[..images * per * d], &offsets, &mut fv, keep, prev.take())
                .unwrap();
            let e = t.elapsed().as_secs_f64();
            println!(
                "rep {rep} keep {} {:.4}s {:?}",
                keep > 0,
                e,
                c.posterior_size()
            );
        }
    }
}
