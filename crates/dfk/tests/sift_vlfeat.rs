//! Dense SIFT against VLFeat 0.9.21's `vl_dsift_process` on a real photo.
//!
//! The expected values were produced by `fixtures/sift/vlfeat_dsift.c` (run by
//! `fixtures/sift/make_fixtures.sh`) on `fixtures/sift/building_128x96.pgm`; each line of
//! `cases.txt` describes one case (name, count, step, window, window size, smoothing, magnif,
//! contrast threshold, bin sizes).

use std::path::PathBuf;

use dfk::sift::{dense_sift, DsiftParams, GrayImage, Window, DESCRIPTOR_LEN};

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/sift")
}

/// Minimal reader of the committed 8-bit binary PGM.
fn read_pgm(path: &PathBuf) -> GrayImage {
    let bytes = std::fs::read(path).expect("fixture image");
    let mut fields = Vec::new();
    let mut pos = 0;
    while fields.len() < 4 {
        while bytes[pos].is_ascii_whitespace() {
            pos += 1;
        }
        let start = pos;
        while !bytes[pos].is_ascii_whitespace() {
            pos += 1;
        }
        fields.push(String::from_utf8(bytes[start..pos].to_vec()).unwrap());
    }
    assert_eq!(fields[0], "P5");
    assert_eq!(fields[3], "255");
    let (w, h): (usize, usize) = (fields[1].parse().unwrap(), fields[2].parse().unwrap());
    let pixels = &bytes[pos + 1..];
    assert_eq!(pixels.len(), w * h);
    GrayImage::from_u8(w, h, pixels).unwrap()
}

fn read_f32(path: PathBuf) -> Vec<f32> {
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

struct Case {
    name: String,
    count: usize,
    params: DsiftParams,
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(fixture_dir().join("cases.txt")).unwrap();
    text.lines()
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            Case {
                name: f[0].to_string(),
                count: f[1].parse().unwrap(),
                params: DsiftParams {
                    step: f[2].parse().unwrap(),
                    window: if f[3] == "1" {
                        Window::Gaussian
                    } else {
                        Window::Flat
                    },
                    window_size: f[4].parse().unwrap(),
                    smooth: f[5] == "1",
                    magnif: f[6].parse().unwrap(),
                    contrast_threshold: f[7].parse().unwrap(),
                    bin_sizes: f[8..].iter().map(|b| b.parse().unwrap()).collect(),
                    ..DsiftParams::default()
                },
            }
        })
        .collect()
}

/// Agreement of one case: (max |Δ|, mean |Δ|, fraction of entries with |Δ| ≤ 1e-3).
fn compare(case: &Case) -> (f32, f64, f64) {
    let image = read_pgm(&fixture_dir().join("building_128x96.pgm"));
    let expected = read_f32(fixture_dir().join(format!("{}_descr.bin", case.name)));
    let frames = read_f32(fixture_dir().join(format!("{}_frames.bin", case.name)));
    assert_eq!(expected.len(), case.count * DESCRIPTOR_LEN);
    let (descr, kps) = dense_sift(&image, &case.params).unwrap();
    assert_eq!(kps.len(), case.count, "{}: keypoint count", case.name);
    assert_eq!(descr.len(), expected.len());
    for (k, (kp, f)) in kps.iter().zip(frames.chunks_exact(4)).enumerate() {
        assert_eq!(
            (kp.x, kp.y),
            (f[0], f[1]),
            "{}: keypoint {k} position",
            case.name
        );
        assert_eq!(kp.scale, f[3], "{}: keypoint {k} scale", case.name);
        let rel = (kp.contrast - f[2]).abs() / f[2].abs().max(1e-6);
        assert!(
            rel < 1e-4,
            "{}: keypoint {k} contrast {} vs VLFeat {}",
            case.name,
            kp.contrast,
            f[2]
        );
    }
    let mut max = 0.0f32;
    let mut sum = 0.0f64;
    let mut within = 0usize;
    for (a, b) in descr.iter().zip(&expected) {
        let d = (a - b).abs();
        max = max.max(d);
        sum += d as f64;
        within += usize::from(d <= 1e-3);
    }
    let n = expected.len() as f64;
    let stats = (max, sum / n, within as f64 / n);
    eprintln!(
        "{}: {} keypoints, max |d| {:.3e}, mean |d| {:.3e}, within 1e-3 {:.6}",
        case.name, case.count, stats.0, stats.1, stats.2
    );
    stats
}

fn check(name: &str) {
    let case = cases().into_iter().find(|c| c.name == name).unwrap();
    let (max, mean, within) = compare(&case);
    // Entries are in [0, 0.2]-ish after clamping and renormalising; float rounding of the
    // separable sums (VLFeat uses running integrals) leaves differences around 1e-6.
    assert!(max < 1e-4, "{name}: max |d| {max}");
    assert!(mean < 1e-6, "{name}: mean |d| {mean}");
    assert_eq!(within, 1.0, "{name}");
}

#[test]
fn single_scale_flat_window_matches_vlfeat() {
    check("single_flat_b8");
}

#[test]
fn single_scale_gaussian_window_matches_vlfeat() {
    check("single_gauss_b8");
}

#[test]
fn phow_multiscale_flat_window_matches_vlfeat() {
    check("phow_flat");
}

#[test]
fn phow_multiscale_gaussian_window_matches_vlfeat() {
    check("phow_gauss_step8");
}

#[test]
fn all_fixture_cases_are_tested() {
    let names: Vec<String> = cases().into_iter().map(|c| c.name).collect();
    assert_eq!(
        names,
        [
            "single_flat_b8",
            "single_gauss_b8",
            "phow_flat",
            "phow_gauss_step8"
        ]
    );
}
