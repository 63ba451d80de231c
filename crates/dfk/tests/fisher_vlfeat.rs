//! The Fisher vector against VLFeat 0.9.21 (`vl_fisher_encode`, float data): the cases made by
//! `fixtures/fisher/make_vlfeat_fixtures.py` with `fixtures/fisher/vlfeat_fisher.c`, and the
//! project's golden case (`fixtures/fisher/golden_vlfeat.json`, a copy of
//! `shared/golden/golden_vlfeat.json`). Also against the f64 reference in `fisher_support`.

mod fisher_support;

use dfk::fisher::{FisherEncoder, FisherOptions};
use dfk::gmm::Gmm;
use fisher_support::{errors, forward, to_f64, Params, RefOptions};
use serde_json::Value;

fn load(name: &str) -> Value {
    let path = format!(
        "{}/../../fixtures/fisher/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn doubles(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn encode(gmm: &Gmm, x: &[f32], options: FisherOptions) -> Vec<f64> {
    let enc = FisherEncoder::new(gmm, options).unwrap();
    let mut out = vec![0f32; enc.len()];
    enc.encode(x, &mut out, &mut enc.scratch()).unwrap();
    to_f64(&out)
}

#[test]
fn matches_vlfeat_cases() {
    let cases = load("vlfeat_cases.json");
    let cases = cases["cases"].as_array().unwrap();
    assert!(cases.len() >= 8);
    let mut worst = (0f64, 0f64, 0f64);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let (k, d) = (
            case["k"].as_u64().unwrap() as usize,
            case["d"].as_u64().unwrap() as usize,
        );
        let gmm = Gmm::new(
            k,
            d,
            floats(&case["means"]),
            floats(&case["covariances"]),
            floats(&case["priors"]),
        )
        .unwrap();
        let x = floats(&case["data"]);
        assert_eq!(x.len(), case["n"].as_u64().unwrap() as usize * d);
        let improved = encode(&gmm, &x, FisherOptions::default());
        let plain = encode(&gmm, &x, FisherOptions::plain());
        let want_i = to_f64(&floats(&case["improved"]));
        let want_p = to_f64(&floats(&case["plain"]));
        let want_i64 = doubles(&case["improved_f64"]);
        let want_p64 = doubles(&case["plain_f64"]);
        // Against VLFeat run in double on the same inputs: the tight check.
        let (ai, ri) = errors(&improved, &want_i64);
        let (ap, rp) = errors(&plain, &want_p64);
        // Against VLFeat's float build: it has its own rounding (large where the sums cancel),
        // so the bound is 1e-6 or twice VLFeat float's distance from VLFeat double.
        let (afi, rfi) = errors(&improved, &want_i);
        let (afp, rfp) = errors(&plain, &want_p);
        let (vfi, _) = errors(&want_i, &want_i64);
        let (_, vfp) = errors(&want_p, &want_p64);
        // Independent check of the same: the scalar f64 definition in `fisher_support`.
        let exact = forward(
            &to_f64(&x),
            &Params::of(&gmm),
            &RefOptions::of(&FisherOptions::default()),
        );
        let (ae, _) = errors(&improved, &exact.phi);
        println!(
            "{name}: vs VLFeat double: improved max abs {ai:.2e} (rel {ri:.2e}), plain max abs {ap:.2e} rel {rp:.2e}; \
             vs VLFeat float: improved max abs {afi:.2e} (rel {rfi:.2e}), plain rel {rfp:.2e} (abs {afp:.2e}); \
             VLFeat float vs double: {vfi:.2e}; ours vs f64 scalar {ae:.2e}"
        );
        assert!(ai <= 1e-6, "{name}: improved max abs error {ai:e}");
        assert!(rp <= 1e-5, "{name}: plain relative error {rp:e}");
        assert!(
            afi <= 1e-6f64.max(2.0 * vfi),
            "{name}: improved vs float {afi:e}"
        );
        assert!(
            rfp <= 1e-5f64.max(2.0 * vfp),
            "{name}: plain vs float {rfp:e}"
        );
        assert!(ae <= 1e-6, "{name}: improved vs f64 scalar {ae:e}");
        worst = (worst.0.max(ai), worst.1.max(rp), worst.2.max(afi));
    }
    println!(
        "worst vs VLFeat double: improved max abs {:.2e}, plain rel {:.2e}; vs VLFeat float: improved max abs {:.2e}",
        worst.0, worst.1, worst.2
    );
}

#[test]
fn matches_the_shared_golden_case() {
    let g = load("golden_vlfeat.json");
    let (k, d) = (
        g["K"].as_u64().unwrap() as usize,
        g["D"].as_u64().unwrap() as usize,
    );
    let gmm = Gmm::new(
        k,
        d,
        floats(&g["means"]),
        floats(&g["covariances"]),
        floats(&g["priors"]),
    )
    .unwrap();
    let x = floats(&g["data"]);
    let variants = [
        ("fv_raw_f64", FisherOptions::plain()),
        (
            "fv_sqrt_f64",
            FisherOptions {
                l2: false,
                ..FisherOptions::default()
            },
        ),
        (
            "fv_l2_f64",
            FisherOptions {
                improved: false,
                ..FisherOptions::default()
            },
        ),
        ("fv_improved_f64", FisherOptions::default()),
    ];
    for (key, opts) in variants {
        let got = encode(&gmm, &x, opts);
        let want = doubles(&g[key]);
        let (abs, rel) = errors(&got, &want);
        println!("golden {key}: max abs {abs:.2e} rel {rel:.2e}");
        assert!(rel <= 1e-6, "{key}: relative error {rel:e}");
    }
}
