//! PCA against scikit-learn and numpy (`fixtures/pca/make_fixtures.py`), plus its bad-input
//! paths and the preprocessing helpers.

use std::path::PathBuf;

use dfk::pca::{append_spatial, fit_pca, l2_normalize_rows, Pca, PcaParams};
use dfk::Error;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/pca")
        .join(name)
}

/// Reads a committed `.npy` (f32 or f64) as f64 values with its shape.
fn npy(name: &str) -> (Vec<f64>, Vec<usize>) {
    let bytes = std::fs::read(fixture(name)).expect("fixture present");
    let file = npyz::NpyFile::new(&bytes[..]).expect("valid npy");
    assert_eq!(
        file.order(),
        npyz::Order::C,
        "{name} must be stored in C order"
    );
    let shape: Vec<usize> = file.shape().iter().map(|&s| s as usize).collect();
    let values = match file.dtype() {
        npyz::DType::Plain(t) if t.size_field() == 4 => file
            .into_vec::<f32>()
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect(),
        _ => file.into_vec::<f64>().unwrap(),
    };
    (values, shape)
}

fn npy_f32(name: &str) -> (Vec<f32>, Vec<usize>) {
    let (v, s) = npy(name);
    (v.into_iter().map(|x| x as f32).collect(), s)
}

/// Sign that aligns row `j` of `ours` with row `j` of `reference`.
fn sign(ours: &[f32], reference: &[f64], d: usize, j: usize) -> f64 {
    let dot: f64 = ours[j * d..(j + 1) * d]
        .iter()
        .zip(&reference[j * d..(j + 1) * d])
        .map(|(&a, &b)| a as f64 * b)
        .sum();
    dot.signum()
}

fn fit_case1(whiten: bool) -> Pca {
    let (x, shape) = npy_f32("x.npy");
    fit_pca(&x, shape[1], &PcaParams::new(8).whiten(whiten)).unwrap()
}

#[test]
fn matches_sklearn_mean_variances_components() {
    let pca = fit_case1(false);
    let (mean, _) = npy("mean.npy");
    let (var, _) = npy("explained_variance.npy");
    let (comp, shape) = npy("components.npy");
    let d = shape[1];
    assert_eq!(pca.dims(), 8);
    assert_eq!(pca.d_in(), d);
    for (a, b) in pca.mean.iter().zip(&mean) {
        assert!(
            (*a as f64 - b).abs() < 1e-5 * (1.0 + b.abs()),
            "mean {a} vs {b}"
        );
    }
    for (a, b) in pca.eigenvalues.iter().zip(&var) {
        assert!((*a as f64 - b).abs() <= 1e-4 * b, "variance {a} vs {b}");
    }
    for j in 0..8 {
        let s = sign(&pca.components, &comp, d, j);
        for i in 0..d {
            let (a, b) = (pca.components[j * d + i] as f64, s * comp[j * d + i]);
            assert!((a - b).abs() < 1e-4, "component {j},{i}: {a} vs {b}");
        }
    }
}

#[test]
fn sign_convention_and_orthonormal_rows() {
    let pca = fit_case1(false);
    let d = pca.d_in();
    for j in 0..pca.dims() {
        let row = &pca.components[j * d..(j + 1) * d];
        let big = row
            .iter()
            .copied()
            .fold(0.0f32, |m, v| if v.abs() > m.abs() { v } else { m });
        assert!(big > 0.0, "largest entry of component {j} is {big}");
        for k in 0..pca.dims() {
            let dot: f64 = row
                .iter()
                .zip(&pca.components[k * d..(k + 1) * d])
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum();
            let want = if j == k { 1.0 } else { 0.0 };
            assert!((dot - want).abs() < 1e-5, "<w{j}, w{k}> = {dot}");
        }
    }
    assert!(pca.eigenvalues.windows(2).all(|w| w[0] >= w[1]));
}

fn check_transform(pca: &Pca, reference: &str) {
    let (x_new, _) = npy_f32("x_new.npy");
    let (want, shape) = npy(reference);
    let (comp, _) = npy("components.npy");
    let dims = shape[1];
    let got = pca.transform(&x_new).unwrap();
    assert_eq!(got.len(), want.len());
    for j in 0..dims {
        let s = sign(&pca.components, &comp, pca.d_in(), j);
        for r in 0..shape[0] {
            let (a, b) = (got[r * dims + j] as f64, s * want[r * dims + j]);
            assert!(
                (a - b).abs() < 1e-4 * (1.0 + b.abs()),
                "{reference} row {r} col {j}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn transform_matches_sklearn() {
    check_transform(&fit_case1(false), "transform_new.npy");
}

#[test]
fn whitened_transform_matches_sklearn() {
    let pca = fit_case1(true);
    assert!(pca.whiten);
    check_transform(&pca, "transform_new_whiten.npy");
}

#[test]
fn transform_into_reuses_scratch_over_blocks() {
    // More rows than one internal block, to cover the block loop; the blocked result must agree
    // with the row-by-row one (up to the rounding of differently shaped products).
    let pca = fit_case1(false);
    let (x, shape) = npy_f32("x.npy");
    let mut many = Vec::new();
    for _ in 0..2 {
        many.extend_from_slice(&x);
    }
    let all = pca.transform(&many).unwrap();
    let mut scratch = Vec::new();
    let mut one = vec![0.0; pca.dims()];
    for (r, row) in many.chunks_exact(shape[1]).enumerate() {
        pca.transform_into(row, &mut one, &mut scratch).unwrap();
        for (a, b) in all[r * 8..(r + 1) * 8].iter().zip(&one) {
            assert!(
                (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                "row {r}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn all_components_match_numpy_eigh() {
    let (x, shape) = npy_f32("x2.npy");
    let d = shape[1];
    let pca = fit_pca(&x, d, &PcaParams::new(d)).unwrap();
    let (vals, _) = npy("eigh_values.npy");
    let (vecs, _) = npy("eigh_vectors.npy");
    for (a, b) in pca.eigenvalues.iter().zip(&vals) {
        assert!((*a as f64 - b).abs() <= 1e-4 * b, "eigenvalue {a} vs {b}");
    }
    for j in 0..d {
        let s = sign(&pca.components, &vecs, d, j);
        for i in 0..d {
            let (a, b) = (pca.components[j * d + i] as f64, s * vecs[j * d + i]);
            assert!((a - b).abs() < 1e-4, "eigenvector {j},{i}: {a} vs {b}");
        }
    }
}

#[test]
fn sample_is_seeded() {
    let (x, shape) = npy_f32("x.npy");
    let d = shape[1];
    let p = PcaParams::new(4).sample(200).seed(7);
    let a = fit_pca(&x, d, &p).unwrap();
    let b = fit_pca(&x, d, &p).unwrap();
    assert_eq!(a, b);
    let c = fit_pca(&x, d, &p.clone().seed(8)).unwrap();
    assert_ne!(a.mean, c.mean);
    // A sample at least as large as the data uses every row: same as the full fit.
    let full = fit_pca(&x, d, &PcaParams::new(4)).unwrap();
    let big = fit_pca(&x, d, &PcaParams::new(4).sample(600).seed(3)).unwrap();
    assert_eq!(full, big);
}

#[test]
fn independent_of_thread_count() {
    let (x, shape) = npy_f32("x.npy");
    let fit = |threads| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| fit_pca(&x, shape[1], &PcaParams::new(8)).unwrap())
    };
    let (a, b) = (fit(1), fit(2));
    for (u, v) in a.eigenvalues.iter().zip(&b.eigenvalues) {
        assert!((u - v).abs() <= 1e-5 * u);
    }
    for (u, v) in a.components.iter().zip(&b.components) {
        assert!((u - v).abs() <= 1e-5);
    }
}

#[test]
fn rejects_bad_input() {
    let (x, shape) = npy_f32("x.npy");
    let d = shape[1];
    assert!(matches!(
        fit_pca(&x, d, &PcaParams::new(d + 1)),
        Err(Error::InvalidParameter { .. })
    ));
    assert!(matches!(
        fit_pca(&x, d, &PcaParams::new(0)),
        Err(Error::InvalidParameter { .. })
    ));
    assert!(matches!(
        fit_pca(&x[..d], d, &PcaParams::new(2)),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        fit_pca(&x[..d + 1], d, &PcaParams::new(2)),
        Err(Error::DimMismatch { .. })
    ));
    let mut bad = x.clone();
    bad[5 * d + 3] = f32::NAN;
    match fit_pca(&bad, d, &PcaParams::new(2)) {
        Err(Error::NonFinite { what, .. }) => assert!(what.contains("row 5"), "{what}"),
        other => panic!("expected NonFinite, got {other:?}"),
    }

    let pca = fit_pca(&x, d, &PcaParams::new(3)).unwrap();
    assert!(matches!(
        pca.transform(&x[..d - 1]),
        Err(Error::DimMismatch { .. })
    ));
    let mut out = vec![0.0; 2];
    assert!(matches!(
        pca.transform_into(&x[..d], &mut out, &mut Vec::new()),
        Err(Error::DimMismatch { .. })
    ));
    let mut row = x[..d].to_vec();
    row[0] = f32::INFINITY;
    assert!(matches!(pca.transform(&row), Err(Error::NonFinite { .. })));
    assert!(matches!(
        Pca::new(vec![0.0; 3], vec![0.0; 5], vec![1.0, 1.0], false),
        Err(Error::DimMismatch { .. })
    ));
    assert!(Pca::new(vec![0.0; 2], vec![1.0, 0.0], vec![-1.0], false).is_err());
}

#[test]
fn l2_rows_and_spatial_augmentation() {
    let mut x = vec![3.0, 4.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0];
    l2_normalize_rows(&mut x, 3);
    let want = [0.6, 0.8, 0.0, 0.0, 0.0, 0.0];
    for (a, b) in x.iter().zip(&want) {
        assert!((a - b).abs() < 1e-7);
    }
    let r3 = 1.0 / 3f32.sqrt();
    assert!(x[6..].iter().all(|&v| (v - r3).abs() < 1e-7));

    let desc = [1.0, 2.0, 3.0, 4.0];
    let pos = [[-0.5, -0.5], [9.5, 4.0]];
    let out = append_spatial(&desc, 2, &pos, 10, 20).unwrap();
    assert_eq!(out.len(), 8);
    assert_eq!(&out[..4], &[1.0, 2.0, -0.5, -0.5]);
    assert_eq!(&out[4..6], &[3.0, 4.0]);
    assert!((out[6] - 0.5).abs() < 1e-7 && (out[7] - (4.5 / 20.0 - 0.5)).abs() < 1e-7);
    assert!(matches!(
        append_spatial(&desc, 2, &pos[..1], 10, 20),
        Err(Error::DimMismatch { .. })
    ));
    assert!(append_spatial(&desc, 2, &pos, 0, 20).is_err());
}

#[test]
fn whitened_training_data_has_unit_variance() {
    let (x, shape) = npy_f32("x.npy");
    let pca = fit_pca(&x, shape[1], &PcaParams::new(8).whiten(true)).unwrap();
    let y = pca.transform(&x).unwrap();
    let n = shape[0] as f64;
    for j in 0..8 {
        let col: Vec<f64> = y.iter().skip(j).step_by(8).map(|&v| v as f64).collect();
        let mean = col.iter().sum::<f64>() / n;
        let var = col.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1.0);
        assert!(mean.abs() < 1e-4, "mean of column {j}: {mean}");
        // ε = 1e-5·λ₁ shrinks the variance by at most λ₁/λ₈ · 1e-5 ≈ 3e-5 here.
        assert!((var - 1.0).abs() < 1e-4, "variance of column {j}: {var}");
    }
}

#[test]
fn constant_data_gives_zero_variances() {
    let x = vec![2.5f32; 40];
    let pca = fit_pca(&x, 4, &PcaParams::new(2).whiten(true)).unwrap();
    assert_eq!(pca.eigenvalues, [0.0, 0.0]);
    assert_eq!(pca.mean, [2.5; 4]);
    let y = pca.transform(&x[..8]).unwrap();
    assert!(y.iter().all(|&v| v == 0.0), "{y:?}");
}
