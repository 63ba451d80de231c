//! Criterion benches of dense SIFT on a 640×480 image, one thread: plain `vl_dsift`-style
//! single scale (bin 8, step 4, flat window, no smoothing) and the `vl_phow`-like default
//! (bins 4/6/8/10, step 4, per-scale smoothing, flat window); Gaussian-window variants too.
//! Throughput is reported in pixels per second; the descriptor count of each setting is
//! printed so descriptors/s = count / time.
//!
//! `cargo bench -p dfk --bench sift` — set `DFK_SIFT_BENCH_IMAGE` to an image file (any format
//! the `image` crate reads; it is converted to grey and resized to 640×480) to time a photo;
//! otherwise a deterministic synthetic texture is used (the cost does not depend on content).

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dfk::sift::{dense_sift_with, DsiftParams, DsiftScratch, GrayImage, Window};

const W: usize = 640;
const H: usize = 480;

fn image() -> GrayImage {
    if let Ok(path) = std::env::var("DFK_SIFT_BENCH_IMAGE") {
        let decoded = image::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let grey = GrayImage::from_dynamic(&decoded);
        return grey.resized(W as u32, H as u32).expect("resize");
    }
    // Sum of a few oriented gratings plus a hash-based noise: every orientation occurs.
    let mut pixels = Vec::with_capacity(W * H);
    for y in 0..H {
        for x in 0..W {
            let (xf, yf) = (x as f32, y as f32);
            let g = (0.11 * xf).sin() + (0.07 * yf + 0.03 * xf).cos() + (0.05 * (xf + yf)).sin();
            let hash = ((x * 7919 + y * 104_729) % 1013) as f32 / 1013.0;
            pixels.push((0.5 + 0.12 * g + 0.15 * (hash - 0.5)).clamp(0.0, 1.0));
        }
    }
    GrayImage::new(W, H, pixels).expect("synthetic image")
}

fn bench(c: &mut Criterion) {
    let img = image();
    let single = DsiftParams {
        bin_sizes: vec![8],
        smooth: false,
        window_size: 2.0,
        contrast_threshold: 0.0,
        ..DsiftParams::default()
    };
    let phow = DsiftParams::default();
    let settings = [
        ("single_b8_flat", single.clone()),
        ("phow_4scales_flat", phow.clone()),
        (
            "single_b8_gaussian",
            DsiftParams {
                window: Window::Gaussian,
                ..single
            },
        ),
        (
            "phow_4scales_gaussian",
            DsiftParams {
                window: Window::Gaussian,
                ..phow
            },
        ),
    ];
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("pool");
    let mut group = c.benchmark_group("dsift_640x480");
    group.throughput(Throughput::Elements((W * H) as u64));
    group.sample_size(20);
    for (name, params) in settings {
        let mut scratch = DsiftScratch::new();
        let mut descriptors = Vec::new();
        let mut keypoints = Vec::new();
        dense_sift_with(
            &img,
            &params,
            &mut scratch,
            &mut descriptors,
            &mut keypoints,
        )
        .expect("dense sift");
        eprintln!("{name}: {} descriptors per image", keypoints.len());
        group.bench_function(BenchmarkId::new(name, "1 thread"), |b| {
            pool.install(|| {
                b.iter(|| {
                    dense_sift_with(
                        black_box(&img),
                        &params,
                        &mut scratch,
                        &mut descriptors,
                        &mut keypoints,
                    )
                    .expect("dense sift")
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
