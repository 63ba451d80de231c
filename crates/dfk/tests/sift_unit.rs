//! Properties of `dfk::sift` that hold independently of VLFeat: orientation binning under
//! rotation, contrast thresholding, RootSIFT, resizing, batching, and every bad-input path.

use dfk::sift::{
    dense_sift, dense_sift_batch, DsiftParams, GrayImage, Keypoint, Window, DESCRIPTOR_LEN,
};
use dfk::Error;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random_image(width: usize, height: usize, seed: u64) -> GrayImage {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let pixels = (0..width * height).map(|_| rng.random::<f32>()).collect();
    GrayImage::new(width, height, pixels).unwrap()
}

fn image_fn(width: usize, height: usize, f: impl Fn(usize, usize) -> f32) -> GrayImage {
    let mut pixels = Vec::with_capacity(width * height);
    for y in 0..height {
        for x in 0..width {
            pixels.push(f(x, y));
        }
    }
    GrayImage::new(width, height, pixels).unwrap()
}

fn one_scale(bin: usize) -> DsiftParams {
    DsiftParams {
        bin_sizes: vec![bin],
        contrast_threshold: 0.0,
        ..DsiftParams::default()
    }
}

/// Fraction of the descriptor mass in each orientation bin.
fn orientation_mass(d: &[f32]) -> [f32; 8] {
    let mut m = [0.0f32; 8];
    for (i, v) in d.iter().enumerate() {
        m[i % 8] += v;
    }
    let total: f32 = m.iter().sum();
    m.map(|v| v / total)
}

#[test]
fn linear_ramps_fall_into_the_orientation_bin_of_their_gradient() {
    // x to the right, y down; bin t is centred at angle 2πt/8.
    let cases: [(f32, f32, usize); 4] =
        [(1.0, 0.0, 0), (0.0, 1.0, 2), (-1.0, 0.0, 4), (0.0, -1.0, 6)];
    for (ax, ay, bin) in cases {
        let img = image_fn(40, 40, |x, y| 0.5 + 0.01 * (ax * x as f32 + ay * y as f32));
        let (descr, _) = dense_sift(&img, &one_scale(6)).unwrap();
        for d in descr.chunks_exact(DESCRIPTOR_LEN) {
            let m = orientation_mass(d);
            assert!(m[bin] > 0.999, "gradient ({ax}, {ay}): mass {m:?}");
        }
    }
}

#[test]
fn rotating_the_image_by_90_degrees_shifts_orientations_by_two_bins() {
    // J(u, v) = I(v, N−1−u): the point (x, y) of I goes to (N−1−y, x) and every gradient
    // turns by +90°, i.e. +2 orientation bins; spatial bin (bx, by) goes to (3−by, bx).
    // N − 1 − 3b is a multiple of the step, so both grids hold the mapped centres.
    let n = 41;
    let img = random_image(n, n, 7);
    let rotated = image_fn(n, n, |u, v| img.pixels[(n - 1 - u) * n + v]);
    for window in [Window::Flat, Window::Gaussian] {
        let params = DsiftParams {
            window,
            ..one_scale(4)
        };
        let (d0, k0) = dense_sift(&img, &params).unwrap();
        let (d1, k1) = dense_sift(&rotated, &params).unwrap();
        assert_eq!(k0.len(), k1.len());
        let mut max_diff = 0.0f32;
        for (a, ka) in d0.chunks_exact(DESCRIPTOR_LEN).zip(&k0) {
            let target = (n as f32 - 1.0 - ka.y, ka.x);
            let idx = k1
                .iter()
                .position(|k| (k.x, k.y) == target)
                .expect("rotated keypoint on the grid");
            let b = &d1[idx * DESCRIPTOR_LEN..(idx + 1) * DESCRIPTOR_LEN];
            assert!((k1[idx].contrast - ka.contrast).abs() < 1e-2 * ka.contrast);
            for by in 0..4 {
                for bx in 0..4 {
                    for t in 0..8 {
                        let va = a[by * 32 + bx * 8 + t];
                        let vb = b[bx * 32 + (3 - by) * 8 + (t + 2) % 8];
                        max_diff = max_diff.max((va - vb).abs());
                    }
                }
            }
        }
        eprintln!("{window:?}: rotation max difference {max_diff:.2e}");
        // Central differences map exactly under the quarter turn, and VLFeat's fast atan2
        // (a cubic in (x − |y|)/(x + |y|) per half plane) turns out covariant under it too:
        // the measured difference is float rounding, about 5e-7.
        assert!(max_diff < 1e-5, "{window:?}: max difference {max_diff}");
    }
}

#[test]
fn constant_image_gives_zero_contrast_and_zero_descriptors() {
    let img = image_fn(50, 40, |_, _| 0.7);
    let (descr, kps) = dense_sift(&img, &DsiftParams::default()).unwrap();
    assert!(!kps.is_empty());
    assert!(kps.iter().all(|k| k.contrast == 0.0));
    assert!(descr.iter().all(|&v| v == 0.0));
}

#[test]
fn contrast_threshold_zeroes_exactly_the_low_contrast_descriptors() {
    // Left half flat, right half textured: low-contrast descriptors on the left only.
    let noise = random_image(64, 40, 3);
    let img = image_fn(64, 40, |x, y| {
        if x < 32 {
            0.5
        } else {
            noise.pixels[y * 64 + x]
        }
    });
    let keep_all = one_scale(4);
    let (raw, kps) = dense_sift(&img, &keep_all).unwrap();
    let threshold = 0.005;
    let (thr, kps_t) = dense_sift(
        &img,
        &DsiftParams {
            contrast_threshold: threshold,
            ..keep_all
        },
    )
    .unwrap();
    assert_eq!(kps, kps_t);
    let (mut zeroed, mut kept) = (0, 0);
    for ((a, b), k) in raw
        .chunks_exact(DESCRIPTOR_LEN)
        .zip(thr.chunks_exact(DESCRIPTOR_LEN))
        .zip(&kps)
    {
        if k.contrast < threshold {
            assert!(b.iter().all(|&v| v == 0.0));
            zeroed += 1;
        } else {
            assert_eq!(a, b);
            kept += 1;
        }
    }
    assert!(zeroed > 0 && kept > 0, "zeroed {zeroed}, kept {kept}");
}

#[test]
fn descriptors_are_unit_l2_nonnegative_and_root_sift_is_sqrt_of_l1_normalised() {
    let img = random_image(48, 44, 11);
    let plain = one_scale(5);
    let (d, _) = dense_sift(&img, &plain).unwrap();
    let (r, _) = dense_sift(
        &img,
        &DsiftParams {
            root_sift: true,
            ..plain
        },
    )
    .unwrap();
    for (a, b) in d
        .chunks_exact(DESCRIPTOR_LEN)
        .zip(r.chunks_exact(DESCRIPTOR_LEN))
    {
        assert!(a.iter().all(|&v| v >= 0.0));
        let l2: f32 = a.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((l2 - 1.0).abs() < 1e-4, "L2 norm {l2}");
        let l1: f64 = a.iter().map(|&v| v as f64).sum();
        for (x, y) in a.iter().zip(b) {
            let expected = (*x as f64 / l1).sqrt();
            assert!((*y as f64 - expected).abs() < 1e-5, "{y} vs {expected}");
        }
        // Σ (√(x/Σx))² = 1: RootSIFT descriptors are L2-normalised too.
        let l2r: f32 = b.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((l2r - 1.0).abs() < 1e-4);
    }
}

#[test]
fn keypoints_follow_the_phow_grid_and_count_matches() {
    let img = random_image(70, 50, 5);
    let params = DsiftParams::default();
    let (descr, kps) = dense_sift(&img, &params).unwrap();
    assert_eq!(descr.len(), kps.len() * DESCRIPTOR_LEN);
    assert_eq!(params.keypoint_count(70, 50).unwrap(), kps.len());
    // Every scale's first centre is at 3/2 · max bin = 15; bins 4, 6, 8, 10 in order.
    let mut scales: Vec<f32> = kps.iter().map(|k| k.scale).collect();
    scales.dedup();
    assert_eq!(scales, [4.0, 6.0, 8.0, 10.0]);
    for s in scales {
        let first = kps.iter().find(|k| k.scale == s).unwrap();
        assert_eq!((first.x, first.y), (15.0, 15.0));
    }
}

/// Without a resize an image is used at its size, up to the 2²⁶ pixels a resize may have:
/// beyond, extraction would need tens of GB, so it is refused with the image's size.
#[test]
fn images_beyond_the_resize_cap_are_refused_without_a_resize() {
    let (w, h) = (8193, 8192);
    // Zeroed memory: its pages are not touched unless the image is scanned.
    let img = GrayImage::new(w, h, vec![0.0; w * h]).unwrap();
    let err = dense_sift(&img, &DsiftParams::default()).unwrap_err();
    assert!(
        err.to_string()
            .contains("a 8193x8192 image: more pixels than"),
        "{err}"
    );
    let params = DsiftParams {
        resize: Some((64, 64)),
        ..DsiftParams::default()
    };
    let small = random_image(300, 200, 2);
    assert!(dense_sift(&small, &DsiftParams::default()).is_ok());
    assert!(dense_sift(&small, &params).is_ok());
    // The count agrees, without overflowing on sizes no image has.
    let defaults = DsiftParams::default();
    let err = defaults.keypoint_count(w, h).unwrap_err();
    assert!(err.to_string().contains("more pixels than"), "{err}");
    assert!(defaults.keypoint_count(usize::MAX, usize::MAX).is_err());
    assert!(params.keypoint_count(usize::MAX, usize::MAX).is_ok());
    let huge_bins = DsiftParams {
        bin_sizes: vec![usize::MAX],
        ..DsiftParams::default()
    };
    assert_eq!(huge_bins.min_image_side(), usize::MAX);
}

#[test]
fn resize_enlarges_small_images_and_reports_keypoints_in_input_coordinates() {
    let img = random_image(28, 28, 1);
    let err = dense_sift(&img, &DsiftParams::default()).unwrap_err();
    assert!(err.to_string().contains("31x31"), "{err}");
    let params = DsiftParams {
        resize: Some((56, 56)),
        ..DsiftParams::default()
    };
    let (descr, kps) = dense_sift(&img, &params).unwrap();
    assert_eq!(descr.len(), kps.len() * DESCRIPTOR_LEN);
    assert_eq!(params.keypoint_count(28, 28).unwrap(), kps.len());
    // Working-image centre 15 maps to (15 + 0.5) / 2 − 0.5 = 7.25; bin 10 is 5 input pixels.
    assert_eq!((kps[0].x, kps[0].y), (7.25, 7.25));
    assert_eq!(kps.last().unwrap().scale, 5.0);
    assert!(kps.iter().all(|k| k.x >= 0.0 && k.x < 28.0 && k.y < 28.0));
}

#[test]
fn batch_matches_single_images_for_any_thread_count() {
    let images: Vec<GrayImage> = (0..5)
        .map(|i| random_image(40 + 3 * i, 36 + i, i as u64))
        .collect();
    let params = DsiftParams::default();
    let single: Vec<(Vec<f32>, Vec<Keypoint>)> = images
        .iter()
        .map(|im| dense_sift(im, &params).unwrap())
        .collect();
    for threads in [1, 2, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let batch = pool.install(|| dense_sift_batch(&images, &params)).unwrap();
        assert_eq!(batch, single, "{threads} threads");
    }
}

#[test]
fn batch_error_names_the_image() {
    let mut images = vec![random_image(40, 40, 0), random_image(40, 40, 1)];
    images[1].pixels[5] = f32::NAN;
    let err = dense_sift_batch(&images, &DsiftParams::default()).unwrap_err();
    assert!(err.to_string().contains("image 1"), "{err}");
}

#[test]
fn bad_images_are_errors() {
    let params = DsiftParams::default();
    let empty = GrayImage {
        width: 0,
        height: 10,
        pixels: vec![],
    };
    assert!(matches!(
        dense_sift(&empty, &params),
        Err(Error::Empty { .. })
    ));
    let wrong_len = GrayImage {
        width: 40,
        height: 40,
        pixels: vec![0.0; 10],
    };
    assert!(matches!(
        dense_sift(&wrong_len, &params),
        Err(Error::DimMismatch { .. })
    ));
    let mut nan = random_image(40, 40, 0);
    nan.pixels[123] = f32::NAN;
    match dense_sift(&nan, &params) {
        Err(Error::NonFinite { index, .. }) => assert_eq!(index, 123),
        other => panic!("expected NonFinite, got {other:?}"),
    }
    let mut inf = random_image(40, 40, 0);
    inf.pixels[0] = f32::INFINITY;
    assert!(matches!(
        dense_sift(&inf, &params),
        Err(Error::NonFinite { .. })
    ));
    // One pixel short of the largest descriptor (3 · 10 + 1 = 31) in either direction.
    for (w, h) in [(30, 40), (40, 30)] {
        let err = dense_sift(&random_image(w, h, 0), &params).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("{w}x{h}")) && msg.contains("31x31"),
            "{msg}"
        );
    }
    assert!(dense_sift(&random_image(31, 31, 0), &params).is_ok());
    assert!(GrayImage::from_u8(3, 3, &[0; 8]).is_err());
    assert!(GrayImage::new(3, 3, vec![0.0; 10]).is_err());
    // Resizing to more pixels than a `resize` setting may ask for is refused, not allocated
    // (100000² f32 values are 40 GB).
    let small = random_image(2, 2, 0);
    let err = small.resized(100_000, 100_000).unwrap_err().to_string();
    assert!(
        err.contains("resize") && err.contains("100000x100000"),
        "{err}"
    );
    assert!(small.resized(8, 8).is_ok());
}

#[test]
fn invalid_parameters_are_errors_naming_the_field() {
    let img = random_image(40, 40, 0);
    let base = DsiftParams::default();
    let cases: Vec<(&str, DsiftParams)> = vec![
        (
            "step",
            DsiftParams {
                step: 0,
                ..base.clone()
            },
        ),
        (
            "bin_sizes",
            DsiftParams {
                bin_sizes: vec![],
                ..base.clone()
            },
        ),
        (
            "bin_sizes",
            DsiftParams {
                bin_sizes: vec![4, 0],
                ..base.clone()
            },
        ),
        (
            "magnif",
            DsiftParams {
                magnif: 0.0,
                ..base.clone()
            },
        ),
        (
            "magnif",
            DsiftParams {
                magnif: f32::NAN,
                ..base.clone()
            },
        ),
        (
            "window_size",
            DsiftParams {
                window_size: -1.0,
                ..base.clone()
            },
        ),
        (
            "contrast_threshold",
            DsiftParams {
                contrast_threshold: f32::NAN,
                ..base.clone()
            },
        ),
        (
            "clamp",
            DsiftParams {
                clamp: 0.0,
                ..base.clone()
            },
        ),
        (
            "resize",
            DsiftParams {
                resize: Some((0, 10)),
                ..base.clone()
            },
        ),
        // Smaller than one descriptor of the largest bin (3 · bin + 1 pixels): every image
        // would fail, so it is a parameter error, not one per image.
        (
            "resize",
            DsiftParams {
                resize: Some((base.min_image_side() as u32, 1)),
                ..base.clone()
            },
        ),
    ];
    for (field, params) in cases {
        match dense_sift(&img, &params) {
            Err(Error::InvalidParameter { name, .. }) => assert_eq!(name, field),
            other => panic!("{field}: expected InvalidParameter, got {other:?}"),
        }
        assert!(dense_sift_batch(std::slice::from_ref(&img), &params).is_err());
    }
}

#[test]
fn from_u8_and_from_dynamic_give_luma_in_unit_range() {
    let g = GrayImage::from_u8(2, 1, &[0, 255]).unwrap();
    assert_eq!(g.pixels, [0.0, 1.0]);
    let grey = image::DynamicImage::ImageLuma8(
        image::GrayImage::from_raw(2, 2, vec![0, 51, 102, 255]).unwrap(),
    );
    let g = GrayImage::from_dynamic(&grey);
    assert_eq!((g.width, g.height), (2, 2));
    for (a, b) in g.pixels.iter().zip([0.0, 0.2, 0.4, 1.0]) {
        assert!((a - b).abs() < 1e-6);
    }
    // Pure colours give their luma weights (Rec. 709, as the image crate converts).
    let rgb = image::DynamicImage::ImageRgb8(
        image::RgbImage::from_raw(3, 1, vec![255, 0, 0, 0, 255, 0, 0, 0, 255]).unwrap(),
    );
    let g = GrayImage::from_dynamic(&rgb);
    for (a, b) in g.pixels.iter().zip([0.2126, 0.7152, 0.0722]) {
        assert!((a - b).abs() < 1e-3, "{a} vs {b}");
    }
}

#[test]
fn params_round_trip_through_serde_with_defaults_for_missing_fields() {
    let params: DsiftParams =
        serde_json::from_str(r#"{"bin_sizes": [8], "root_sift": true}"#).unwrap();
    assert_eq!(params.bin_sizes, [8]);
    assert!(params.root_sift);
    assert_eq!(params.step, DsiftParams::default().step);
    let json = serde_json::to_string(&params).unwrap();
    assert_eq!(serde_json::from_str::<DsiftParams>(&json).unwrap(), params);
}
