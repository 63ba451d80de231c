//! The spatial pyramid of Fisher vectors (`dfk::pyramid`) against independent computations:
//! the layout against each cell's descriptors encoded separately with `FisherEncoder::encode`,
//! the backward pass against f64 central differences of the scalar reference FV of
//! `fisher_support`, the single level `[1, 1]` against the plain FV, and the bad-input errors.

mod fisher_support;

use dfk::fisher::{FisherEncoder, FisherOptions, GmmGradient};
use dfk::pyramid::SpatialPyramid;
use dfk::Error;
use fisher_support::{errors, forward, random_case, to_f64, Params, RefOptions, Rng};

/// Positions uniform in [−0.5, 0.5]², some of them exactly on cell boundaries.
fn positions(rng: &mut Rng, n: usize) -> Vec<f32> {
    let edges = [-0.5f32, -0.25, 0.0, 0.25, 0.5];
    (0..2 * n)
        .map(|i| {
            if i % 7 == 3 {
                edges[(rng.uniform() * 5.0) as usize % 5]
            } else {
                (rng.uniform() - 0.5) as f32
            }
        })
        .collect()
}

/// The cell of `v ∈ [−0.5, 0.5]` among `n` equal intervals, by searching for the interval
/// `[j/n, (j+1)/n)` of `v + ½` (the last one closed); `j/n ≤ v + ½` is tested as
/// `2n·v ≥ 2j − n`, exact in f64 (`v + ½` itself rounds for tiny `v`).
fn interval(v: f32, n: usize) -> usize {
    let t = 2.0 * n as f64 * v as f64;
    let starts_below = |j: usize| t >= (2 * j) as f64 - n as f64;
    (0..n).rev().find(|&j| starts_below(j)).unwrap_or(0)
}

/// Row indices of each cell of a `rows × cols` level (row-major cells).
fn cells_of(pos: &[f32], rows: usize, cols: usize) -> Vec<Vec<usize>> {
    let mut cells = vec![Vec::new(); rows * cols];
    for (i, p) in pos.chunks_exact(2).enumerate() {
        cells[interval(p[1], rows) * cols + interval(p[0], cols)].push(i);
    }
    cells
}

fn subset(x: &[f32], d: usize, rows: &[usize]) -> Vec<f32> {
    rows.iter()
        .flat_map(|&r| x[r * d..(r + 1) * d].iter().copied())
        .collect()
}

/// ψ by hand: each cell's rows encoded separately, concatenated, times 1/√C (f64).
fn by_hand(enc: &FisherEncoder, levels: &[[usize; 2]], x: &[f32], pos: &[f32]) -> Vec<f32> {
    let d = enc.gmm().d();
    let total: usize = levels.iter().map(|[r, c]| r * c).sum();
    let scale = 1.0 / (total as f64).sqrt();
    let mut out = Vec::new();
    let mut scratch = enc.scratch();
    for &[rows, cols] in levels {
        for cell in cells_of(pos, rows, cols) {
            let mut block = vec![0.0f32; enc.len()];
            if !cell.is_empty() {
                enc.encode(&subset(x, d, &cell), &mut block, &mut scratch)
                    .unwrap();
            }
            out.extend(block.iter().map(|&v| (v as f64 * scale) as f32));
        }
    }
    out
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt()
}

#[test]
fn layout_matches_cells_encoded_separately() {
    let mut rng = Rng(21);
    let (k, d) = (3, 4);
    let (gmm, x) = random_case(&mut rng, k, d, 150, 0.8, 0.7);
    let pos = positions(&mut rng, 150);
    let offsets = [0usize, 60, 61, 150];
    for levels in [
        vec![[1, 1], [2, 2], [3, 1]],
        vec![[2, 3]],
        vec![[1, 2], [4, 4]],
    ] {
        let p = SpatialPyramid::new(levels.clone()).unwrap();
        for o in [FisherOptions::default(), FisherOptions::plain()] {
            let enc = FisherEncoder::new(&gmm, o).unwrap();
            let len = p.feature_len(enc.len());
            let mut out = vec![f32::NAN; 3 * len];
            p.encode_batch(&enc, &x, &offsets, &pos, &mut out).unwrap();
            for i in 0..3 {
                let (r0, r1) = (offsets[i], offsets[i + 1]);
                let want = by_hand(&enc, &levels, &x[r0 * d..r1 * d], &pos[2 * r0..2 * r1]);
                let got = &out[i * len..(i + 1) * len];
                let err = max_abs_diff(got, &want);
                assert!(err <= 1e-6, "{levels:?} {o:?} image {i}: {err:e}");
            }
        }
    }
}

#[test]
fn improved_pyramid_has_unit_norm_and_empty_cells_are_zero_blocks() {
    let mut rng = Rng(4);
    let (gmm, x) = random_case(&mut rng, 4, 3, 80, 0.8, 0.7);
    let enc = FisherEncoder::new(&gmm, FisherOptions::default()).unwrap();
    let p = SpatialPyramid::perronnin2010();
    let len = enc.len();
    let mut out = vec![0.0; p.feature_len(len)];
    let mut scratch = p.scratch(&enc);
    // Every cell populated.
    let pos = positions(&mut rng, 80);
    p.encode(&enc, &x, &pos, &mut out, &mut scratch).unwrap();
    assert!((norm(&out) - 1.0).abs() < 1e-5, "norm {}", norm(&out));
    for c in 0..8 {
        let cell = norm(&out[c * len..(c + 1) * len]);
        assert!((cell - 1.0 / 8f64.sqrt()).abs() < 1e-5, "cell {c}: {cell}");
    }
    // All descriptors in the left half, upper third: of the 2×2 cells (1 to 4) only the upper
    // left one (1) is populated, of the 3×1 stripes (5 to 7) only the top one (5).
    let left_top: Vec<f32> = pos
        .chunks_exact(2)
        .flat_map(|q| [-0.5 + (q[0] + 0.5) * 0.49, -0.5 + (q[1] + 0.5) * 0.33])
        .collect();
    p.encode(&enc, &x, &left_top, &mut out, &mut scratch)
        .unwrap();
    assert!(out.iter().all(|v| v.is_finite()));
    let empty = [2, 3, 4, 6, 7];
    for c in 0..8 {
        let cell = norm(&out[c * len..(c + 1) * len]);
        if empty.contains(&c) {
            assert_eq!(cell, 0.0, "cell {c} should be a zero block");
        } else {
            assert!((cell - 1.0 / 8f64.sqrt()).abs() < 1e-5, "cell {c}: {cell}");
        }
    }
    assert!((norm(&out) - (3.0f64 / 8.0).sqrt()).abs() < 1e-5);
    // The non-empty cells all hold every descriptor: each is the FV of the image / √8.
    let mut fv = vec![0.0; len];
    enc.encode(&x, &mut fv, &mut enc.scratch()).unwrap();
    for c in [0, 1, 5] {
        let scaled: Vec<f32> = fv.iter().map(|v| v / 8f32.sqrt()).collect();
        assert!(max_abs_diff(&out[c * len..(c + 1) * len], &scaled) < 1e-6);
    }
}

#[test]
fn cell_assignment_at_boundaries() {
    let p = SpatialPyramid::new(vec![[2, 2], [3, 1], [1, 4], [4, 1]]).unwrap();
    // 2×2: inner boundaries go to the lower/right cell, the outer edge +½ to the last one.
    for (x, y, want) in [
        (-0.5, -0.5, 0),
        (0.0, 0.0, 3),
        (0.0, -0.5, 1),
        (-0.5, 0.0, 2),
        (0.5, 0.5, 3),
        (0.5, -0.5, 1),
        (-1e-7, -1e-7, 0),
        (f32::EPSILON, -f32::EPSILON, 1),
    ] {
        assert_eq!(p.cell_of(0, x, y).unwrap(), want, "2x2 at ({x}, {y})");
    }
    // 3×1: horizontal stripes, top to bottom; x does not matter.
    for (y, want) in [(-0.5, 0), (-0.2, 0), (0.0, 1), (0.2, 2), (0.5, 2)] {
        for x in [-0.5, 0.0, 0.5] {
            assert_eq!(p.cell_of(1, x, y).unwrap(), want, "3x1 at ({x}, {y})");
        }
    }
    // 1×4 (vertical stripes) and 4×1 at the exact quarter boundaries and just below them.
    for (v, want) in [
        (-0.25f32, 1),
        (0.0, 2),
        (0.25, 3),
        (0.25f32.next_down(), 2),
        (0.0f32.next_down(), 1),
        (-f32::from_bits(1), 1),
        (f32::from_bits(1), 2),
        ((-0.25f32).next_up(), 1),
        ((-0.25f32).next_down(), 0),
    ] {
        assert_eq!(p.cell_of(2, v, 0.3).unwrap(), want, "1x4 at x = {v}");
        assert_eq!(p.cell_of(3, 0.3, v).unwrap(), want, "4x1 at y = {v}");
        assert_eq!(interval(v, 4), want);
    }
    assert!(matches!(
        p.cell_of(4, 0.0, 0.0),
        Err(Error::InvalidParameter { .. })
    ));
    assert!(matches!(
        p.cell_of(0, f32::NAN, 0.0),
        Err(Error::NonFinite { .. })
    ));
    assert!(matches!(p.cell_of(0, 0.0, 0.6), Err(Error::Invalid(_))));
}

#[test]
fn single_level_is_exactly_the_fisher_vector_and_its_backward() {
    let mut rng = Rng(8);
    let (k, d) = (5, 3);
    let (gmm, x) = random_case(&mut rng, k, d, 300, 0.8, 0.6);
    let pos = positions(&mut rng, 300);
    let offsets = [0usize, 100, 101, 300];
    let p = SpatialPyramid::new(vec![[1, 1]]).unwrap();
    for o in [FisherOptions::default(), FisherOptions::plain()] {
        let enc = FisherEncoder::new(&gmm, o).unwrap();
        let len = enc.len();
        assert_eq!(p.feature_len(len), len);
        let (mut a, mut b) = (vec![0.0; 3 * len], vec![0.0; 3 * len]);
        p.encode_batch(&enc, &x, &offsets, &pos, &mut a).unwrap();
        enc.encode_batch(&x, &offsets, &mut b).unwrap();
        assert_eq!(a, b);
        let g: Vec<f32> = (0..3 * len).map(|_| rng.normal() as f32).collect();
        let ga = p.backward_batch(&enc, &x, &offsets, &pos, &g).unwrap();
        let gb = enc.backward_batch(&x, &offsets, &g).unwrap();
        assert_eq!(ga, gb);
    }
}

/// `θ ↦ ⟨g, ψ(X; θ)⟩` with the scalar f64 reference FV of each cell (cells found by
/// [`cells_of`]).
fn reference_objective(
    levels: &[[usize; 2]],
    x: &[f64],
    d: usize,
    pos: &[f32],
    th: &Params,
    o: &RefOptions,
    g: &[f64],
) -> f64 {
    let len = 2 * th.k * d;
    let total: usize = levels.iter().map(|[r, c]| r * c).sum();
    let mut base = 0;
    let mut sum = 0.0;
    for &[rows, cols] in levels {
        for (c, cell) in cells_of(pos, rows, cols).into_iter().enumerate() {
            if !cell.is_empty() {
                let xs: Vec<f64> = cell
                    .iter()
                    .flat_map(|&r| x[r * d..(r + 1) * d].iter().copied())
                    .collect();
                let gc = &g[(base + c) * len..(base + c + 1) * len];
                sum += forward(&xs, th, o)
                    .phi
                    .iter()
                    .zip(gc)
                    .map(|(a, b)| a * b)
                    .sum::<f64>();
            }
        }
        base += rows * cols;
    }
    sum / (total as f64).sqrt()
}

#[test]
fn backward_matches_finite_differences() {
    let mut rng = Rng(13);
    let (k, d, n) = (3, 2, 40);
    let (gmm, x) = random_case(&mut rng, k, d, n, 0.8, 0.7);
    // The lower right 2×2 cell is empty.
    let pos: Vec<f32> = positions(&mut rng, n)
        .chunks_exact(2)
        .flat_map(|q| {
            if q[0] >= 0.0 && q[1] >= 0.0 {
                [-0.5 + 0.9 * q[0], q[1]]
            } else {
                [q[0], q[1]]
            }
        })
        .collect();
    let levels = vec![[1, 1], [2, 2], [3, 1]];
    let p = SpatialPyramid::new(levels.clone()).unwrap();
    let (th, xf) = (Params::of(&gmm), to_f64(&x));
    for improved in [true, false] {
        let o = FisherOptions {
            improved,
            l2: improved,
            posterior_threshold: 0.0,
            ..FisherOptions::default()
        };
        let enc = FisherEncoder::new(&gmm, o).unwrap();
        let ro = RefOptions::of(&o);
        let g: Vec<f64> = (0..p.feature_len(enc.len()))
            .map(|_| rng.normal() as f32 as f64)
            .collect();
        let g32: Vec<f32> = g.iter().map(|&v| v as f32).collect();
        let mut got = GmmGradient::zeros(k, d);
        p.backward(&enc, &x, &pos, &g32, &mut got, &mut p.scratch(&enc))
            .unwrap();
        let h = 1e-6;
        let f = |t: &Params| reference_objective(&levels, &xf, d, &pos, t, &ro, &g);
        let diff = |which: usize, i: usize| {
            let (mut tp, mut tm) = (th.clone(), th.clone());
            let (a, b) = match which {
                0 => (&mut tp.mu[i], &mut tm.mu[i]),
                1 => (&mut tp.s[i], &mut tm.s[i]),
                _ => (&mut tp.a[i], &mut tm.a[i]),
            };
            *a += h;
            *b -= h;
            (f(&tp) - f(&tm)) / (2.0 * h)
        };
        let nm: Vec<f64> = (0..k * d).map(|i| diff(0, i)).collect();
        let ns: Vec<f64> = (0..k * d).map(|i| diff(1, i)).collect();
        let na: Vec<f64> = (0..k).map(|i| diff(2, i)).collect();
        for (name, a, b) in [
            ("means", &got.means, &nm),
            ("log-std", &got.log_std, &ns),
            ("logits", &got.weight_logits, &na),
        ] {
            let (abs, rel) = errors(a, b);
            println!("improved={improved} {name}: max abs {abs:.2e} rel {rel:.2e}");
            assert!(
                rel <= 2e-5,
                "improved={improved} {name}: relative error {rel:e}"
            );
        }
    }
}

#[test]
fn batch_backward_is_the_sum_over_images_whatever_the_thread_count() {
    let mut rng = Rng(17);
    let (k, d) = (4, 3);
    let (gmm, x) = random_case(&mut rng, k, d, 120, 0.8, 0.6);
    let pos = positions(&mut rng, 120);
    let offsets: Vec<usize> = (0..=12).map(|i| i * 10).collect();
    let p = SpatialPyramid::perronnin2010();
    let enc = FisherEncoder::new(&gmm, FisherOptions::default()).unwrap();
    let len = p.feature_len(enc.len());
    let mut g: Vec<f32> = (0..12 * len).map(|_| rng.normal() as f32).collect();
    g[3 * len..4 * len].fill(0.0);
    let run = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| p.backward_batch(&enc, &x, &offsets, &pos, &g).unwrap())
    };
    let one = run(1);
    assert_eq!(one, run(3));
    let mut want = GmmGradient::zeros(k, d);
    let mut scratch = p.scratch(&enc);
    for i in 0..12 {
        let (r0, r1) = (offsets[i], offsets[i + 1]);
        p.backward(
            &enc,
            &x[r0 * d..r1 * d],
            &pos[2 * r0..2 * r1],
            &g[i * len..(i + 1) * len],
            &mut want,
            &mut scratch,
        )
        .unwrap();
    }
    for (a, b) in [
        (&one.means, &want.means),
        (&one.log_std, &want.log_std),
        (&one.weight_logits, &want.weight_logits),
    ] {
        assert!(errors(a, b).1 < 1e-12);
    }
}

#[test]
fn bad_input_is_a_clear_error() {
    let mut rng = Rng(2);
    let (gmm, x) = random_case(&mut rng, 2, 3, 10, 0.8, 0.6);
    let enc = FisherEncoder::new(&gmm, FisherOptions::default()).unwrap();
    let p = SpatialPyramid::perronnin2010();
    let len = p.feature_len(enc.len());
    let pos = positions(&mut rng, 10);
    let mut out = vec![0.0; 2 * len];
    let mut scratch = p.scratch(&enc);
    let message = |e: Error| e.to_string();

    // Invalid levels.
    for levels in [
        vec![],
        vec![[0, 1]],
        vec![[1, 0]],
        vec![[17, 1]],
        vec![[8, 8], [1, 1]],
    ] {
        assert!(
            matches!(
                SpatialPyramid::new(levels.clone()),
                Err(Error::InvalidParameter { .. })
            ),
            "{levels:?}"
        );
    }
    // Wrong number of positions.
    let e = p
        .encode(&enc, &x, &pos[..18], &mut out[..len], &mut scratch)
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::DimMismatch {
                expected: 20,
                got: 18,
                ..
            }
        ),
        "{e}"
    );
    let e = p
        .encode_batch(&enc, &x, &[0, 4, 10], &pos[..19], &mut out)
        .unwrap_err();
    assert!(matches!(e, Error::DimMismatch { .. }), "{e}");
    // NaN and out-of-range positions, named by image and row.
    let mut bad = pos.clone();
    bad[2 * 6 + 1] = f32::NAN;
    let e = p
        .encode_batch(&enc, &x, &[0, 4, 10], &bad, &mut out)
        .unwrap_err();
    assert!(matches!(e, Error::NonFinite { .. }), "{e}");
    assert!(message(e).contains("image 1: descriptor position (row 2, y)"));
    bad[2 * 6 + 1] = 0.75;
    let e = p
        .encode_batch(&enc, &x, &[0, 4, 10], &bad, &mut out)
        .unwrap_err();
    assert!(
        matches!(e, Error::Invalid(ref m) if m.starts_with("image 1:")),
        "{e}"
    );
    // An image with no descriptors at all (offsets not increasing: the encoder's own check).
    let e = p
        .encode_batch(&enc, &x, &[0, 4, 4, 10], &pos, &mut vec![0.0; 3 * len])
        .unwrap_err();
    assert!(matches!(e, Error::Invalid(_)), "{e}");
    assert!(message(e).contains("image 1 would have no descriptors"));
    let e = p
        .encode(&enc, &[], &[], &mut out[..len], &mut scratch)
        .unwrap_err();
    assert!(matches!(e, Error::Empty { .. }), "{e}");
    // Output and upstream gradient of the wrong length.
    let e = p
        .encode_batch(&enc, &x, &[0, 4, 10], &pos, &mut out[..len])
        .unwrap_err();
    assert!(matches!(e, Error::DimMismatch { .. }), "{e}");
    let e = p
        .backward_batch(&enc, &x, &[0, 4, 10], &pos, &out[..len])
        .unwrap_err();
    assert!(matches!(e, Error::DimMismatch { .. }), "{e}");
    let mut g = vec![0.5; 2 * len];
    g[len + 3] = f32::INFINITY;
    let e = p
        .backward_batch(&enc, &x, &[0, 4, 10], &pos, &g)
        .unwrap_err();
    assert!(matches!(e, Error::NonFinite { .. }), "{e}");
    assert!(message(e).contains("image 1"));
    // Descriptors that are not whole rows, and non-finite descriptors.
    let e = p
        .encode(&enc, &x[..4], &pos[..2], &mut out[..len], &mut scratch)
        .unwrap_err();
    assert!(matches!(e, Error::Invalid(_)), "{e}");
    let mut xn = x.clone();
    xn[5] = f32::NAN;
    let e = p
        .encode(&enc, &xn, &pos, &mut out[..len], &mut scratch)
        .unwrap_err();
    assert!(matches!(e, Error::NonFinite { .. }), "{e}");
}

/// 40 images of two classes with the same bag of descriptors: class 0 has descriptors near
/// `e_0` in the upper half and near `e_1` in the lower half, class 1 the same descriptors
/// mirrored (upper ↔ lower). Only their positions tell the classes apart.
fn mirrored_classes() -> (dfk::pipeline::RawDescriptors, dfk::svm::Labels) {
    let mut rng = Rng(31);
    let (dim, per) = (3, 16);
    let (mut data, mut positions, mut offsets, mut labels) = (vec![], vec![], vec![0], vec![]);
    for _ in 0..20 {
        let rows: Vec<[f32; 5]> = (0..per)
            .map(|r| {
                let upper = r % 2 == 0;
                let mut v = [0.0; 5];
                for (j, x) in v[..dim].iter_mut().enumerate() {
                    let centre = if j == usize::from(!upper) { 3.0 } else { 0.0 };
                    *x = centre + 0.3 * rng.normal() as f32;
                }
                v[3] = (rng.uniform() - 0.5) as f32;
                let y = 0.05 + 0.4 * rng.uniform() as f32;
                v[4] = if upper { -y } else { y };
                v
            })
            .collect();
        for class in 0..2 {
            for row in &rows {
                data.extend_from_slice(&row[..dim]);
                let y = if class == 0 { row[4] } else { -row[4] };
                positions.extend_from_slice(&[row[3], y]);
            }
            offsets.push(offsets.last().unwrap() + per);
            labels.push(class);
        }
    }
    (
        dfk::pipeline::RawDescriptors {
            descriptors: dfk::dataset::Descriptors::new(data, dim, offsets).unwrap(),
            positions,
        },
        dfk::svm::Labels::MultiClass { labels, classes: 2 },
    )
}

#[test]
fn pipeline_with_a_pyramid_separates_classes_only_positions_distinguish() {
    use dfk::pipeline::{fit_from_descriptors, Pipeline, PipelineConfig, Silent};
    let (raw, labels) = mirrored_classes();
    let mut cfg = PipelineConfig {
        l2_normalize: false,
        spatial: false,
        ..PipelineConfig::default()
    };
    cfg.pca.dims = 0;
    // K = 1: the FV of a cell is its descriptors' deviation from the global mean, which points
    // to e_0 or e_1 (with one component per cluster the blocks would carry random signs).
    cfg.gmm.k = 1;
    // Without a pyramid the two classes' Fisher vectors are pairwise identical.
    let plain = fit_from_descriptors(&raw, &labels, &cfg, &Silent).unwrap();
    assert!(plain.history["train_accuracy"].as_f64().unwrap() <= 0.5);
    cfg.pyramid = Some(SpatialPyramid::new(vec![[1, 1], [2, 1]]).unwrap());
    let fit = fit_from_descriptors(&raw, &labels, &cfg, &Silent).unwrap();
    assert_eq!(fit.history["train_accuracy"].as_f64(), Some(1.0));
    let p = &fit.pipeline;
    let len = 3 * 2 * 3;
    assert_eq!((p.feature_len(), p.svm.dim), (len, len));
    assert_eq!(fit.train_features.len(), 40 * len);
    // Applying the trained pipeline encodes with the same pyramid.
    assert_eq!(p.encode_raw(&raw, &Silent).unwrap(), fit.train_features);
    // The model (config included) round-trips; a model whose configuration disagrees with the
    // SVM length is refused.
    let model = p.to_model(fit.history.clone()).unwrap();
    let path = std::path::Path::new("m.dfk");
    assert_eq!(&Pipeline::from_model(&model, path).unwrap(), p);
    let mut other = model.clone();
    other.config["pyramid"] = serde_json::json!([[1, 1]]);
    let e = Pipeline::from_model(&other, path).unwrap_err().to_string();
    assert!(
        e.contains("SVMs take 18 features") && e.contains("1x1"),
        "{e}"
    );
    other.config["pyramid"] = serde_json::json!([[0, 1]]);
    assert!(Pipeline::from_model(&other, path).is_err());
}

#[test]
fn configuration_without_a_pyramid_is_unchanged_and_toml_settable() {
    use dfk::pipeline::PipelineConfig;
    let cfg = PipelineConfig::default();
    assert_eq!(cfg.pyramid, None);
    let v = serde_json::to_value(&cfg).unwrap();
    assert!(v.get("pyramid").is_none(), "old model files' configuration");
    let back: PipelineConfig = serde_json::from_value(v).unwrap();
    assert_eq!(back, cfg);
    let with: PipelineConfig =
        serde_json::from_str(r#"{"pyramid": [[1, 1], [2, 2], [3, 1]]}"#).unwrap();
    assert_eq!(with.pyramid, Some(SpatialPyramid::perronnin2010()));
    for bad in ["[]", "[[1, 0]]", "[[1]]", "\"2x2\"", "[[1, 1, 1]]"] {
        let e = serde_json::from_str::<PipelineConfig>(&format!(r#"{{"pyramid": {bad}}}"#));
        assert!(e.is_err(), "{bad}");
    }
}

#[test]
fn positions_come_with_the_descriptors_with_or_without_spatial() {
    use dfk::pipeline::{
        extract_descriptors, extract_preprocessed, fit_preprocessor,
        load_or_extract_with_positions, PipelineConfig,
    };
    let (train, _) = dfk::dataset::embedded_fashion_mnist().unwrap();
    let data = train.subset(&(0..12).collect::<Vec<_>>()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = PipelineConfig {
        pyramid: Some(SpatialPyramid::perronnin2010()),
        ..PipelineConfig::default()
    };
    cfg.pca.dims = 8;
    let raw = extract_descriptors(&data, &cfg.sift, &|_| {}).unwrap();
    for spatial in [true, false] {
        cfg.spatial = spatial;
        let pre = fit_preprocessor(&data, &cfg, &|_| {}).unwrap();
        let want = extract_preprocessed(&data, &cfg.sift, &pre, &|_| {}).unwrap();
        for cache in [None, Some(dir.path()), Some(dir.path())] {
            let (d, pos, _) =
                load_or_extract_with_positions(&data, &cfg, &pre, cache, &|_| {}).unwrap();
            assert_eq!(d, want, "spatial {spatial}, cache {cache:?}");
            assert_eq!(pos.as_deref(), Some(&raw.positions[..]));
        }
    }
    cfg.pyramid = None;
    let pre = fit_preprocessor(&data, &cfg, &|_| {}).unwrap();
    let (_, pos, _) = load_or_extract_with_positions(&data, &cfg, &pre, None, &|_| {}).unwrap();
    assert_eq!(pos, None);
}

#[test]
fn unknown_positions_are_an_error_not_the_centre() {
    use dfk::pipeline::{fit_from_descriptors, PipelineConfig, Silent};
    let (mut raw, labels) = mirrored_classes();
    let mut cfg = PipelineConfig {
        l2_normalize: false,
        spatial: false,
        pyramid: Some(SpatialPyramid::new(vec![[1, 1], [2, 1]]).unwrap()),
        ..PipelineConfig::default()
    };
    cfg.pca.dims = 0;
    cfg.gmm.k = 1;
    let fit = fit_from_descriptors(&raw, &labels, &cfg, &Silent).unwrap();
    // Precomputed descriptors come with NaN positions (the CLI's `--format npy`).
    raw.positions.fill(f32::NAN);
    let e = fit.pipeline.encode_raw(&raw, &Silent).unwrap_err();
    assert!(matches!(e, Error::NonFinite { .. }), "{e}");
    assert!(e.to_string().contains("descriptor position"), "{e}");
    assert!(fit_from_descriptors(&raw, &labels, &cfg, &Silent).is_err());
}

/// A level must be exactly `[rows, cols]`: a third number is an error, not dropped.
#[test]
fn levels_of_other_than_two_numbers_are_rejected() {
    let ok: dfk::pyramid::SpatialPyramid = serde_json::from_str("[[1, 1], [2, 3]]").unwrap();
    assert_eq!(serde_json::to_string(&ok).unwrap(), "[[1,1],[2,3]]");
    for bad in ["[[2, 2, 2]]", "[[1, 1], [2]]", "[[]]"] {
        let e = serde_json::from_str::<dfk::pyramid::SpatialPyramid>(bad).unwrap_err();
        assert!(e.to_string().contains("two numbers"), "{bad}: {e}");
    }
}
