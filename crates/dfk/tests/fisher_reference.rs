//! Forward and backward against the project's numpy reference (`fv_reference.py`), on the
//! cases committed in `fixtures/fisher/reference_cases.json` by
//! `fixtures/fisher/make_reference_fixtures.py` (dense posteriors: threshold 0).

use dfk::fisher::{FisherEncoder, FisherOptions, GmmGradient};
use dfk::gmm::Gmm;
use serde_json::Value;

fn vec32(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn vec64(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// Max abs error divided by max(largest reference magnitude, 1) (K = 1 has all-zero logit
/// gradients).
fn rel(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(1.0);
    got.iter()
        .zip(want)
        .fold(0f64, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

#[test]
fn matches_the_numpy_reference() {
    let path = format!(
        "{}/../../fixtures/fisher/reference_cases.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let all: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = all["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 5);
    for c in cases {
        let (k, d) = (
            c["k"].as_u64().unwrap() as usize,
            c["d"].as_u64().unwrap() as usize,
        );
        let eps = c["eps"].as_f64().unwrap() as f32;
        let gmm = Gmm::new(
            k,
            d,
            vec32(&c["means"]),
            vec32(&c["variances"]),
            vec32(&c["weights"]),
        )
        .unwrap();
        let x = vec32(&c["data"]);
        let o = FisherOptions {
            posterior_threshold: 0.0,
            sqrt_epsilon: eps,
            ..FisherOptions::default()
        };
        let enc = FisherEncoder::new(&gmm, o).unwrap();
        let mut scratch = enc.scratch();
        let mut phi = vec![0f32; enc.len()];
        enc.encode(&x, &mut phi, &mut scratch).unwrap();
        let phi: Vec<f64> = phi.iter().map(|&v| v as f64).collect();
        let mut grad = GmmGradient::zeros(k, d);
        enc.backward(&x, &vec32(&c["upstream"]), &mut grad, &mut scratch)
            .unwrap();
        let errs = [
            rel(&phi, &vec64(&c["phi"])),
            rel(&grad.means, &vec64(&c["grad_means"])),
            rel(&grad.log_std, &vec64(&c["grad_log_std"])),
            rel(&grad.weight_logits, &vec64(&c["grad_logits"])),
        ];
        println!(
            "K={k} D={d} eps={eps}: rel err φ {:.2e} μ {:.2e} s {:.2e} a {:.2e}",
            errs[0], errs[1], errs[2], errs[3]
        );
        for (what, e) in ["phi", "means", "log-std", "logits"].iter().zip(errs) {
            assert!(e <= 1e-5, "K={k} D={d} eps={eps} {what}: {e:e}");
        }
    }
}
