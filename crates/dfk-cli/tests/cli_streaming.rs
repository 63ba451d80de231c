//! `dfk fisher` streams its input: batches of whole images are read, encoded and appended to a
//! temporary output file. The streamed file must be byte-identical to encoding everything in
//! memory (`FisherEncoder::encode_batch`, written by `npy::write_f32_matrix`) for every batch
//! size and input layout, and a failure half-way (truncated file, bad value in a later batch)
//! must leave no output and no temporary file. Peak memory against the data-set size is
//! measured by `bench/fisher_rss.sh` (see docs/performance.md), not here.

mod common;
use common::*;

use std::path::Path;

use dfk::fisher::{FisherEncoder, FisherOptions};
use dfk::npy;

const D: usize = 4;

/// 13 images of 1 to 9 descriptors (79 rows), deterministic values around the GMM's means.
fn data() -> (Vec<f32>, Vec<usize>) {
    let mut offsets = vec![0usize];
    for i in 0..13 {
        offsets.push(offsets[i] + 1 + (i * 5) % 9);
    }
    let rows = offsets[13];
    let mut state = 12345u64;
    let x = (0..rows * D)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // Multiples of 1/64 in [-2, 2): exact in float32 and float64.
            ((state >> 40) % 256) as f32 / 64.0 - 2.0
        })
        .collect();
    (x, offsets)
}

/// A `.npy` file of `x` (`rows × D`) as float64 big-endian in Fortran order, written by hand.
fn write_fortran_f64_be(path: &Path, x: &[f32], rows: usize) {
    let mut header = format!("{{'descr': '>f8', 'fortran_order': True, 'shape': ({rows}, {D}), }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    for j in 0..D {
        for i in 0..rows {
            bytes.extend(f64::from(x[i * D + j]).to_be_bytes());
        }
    }
    std::fs::write(path, bytes).unwrap();
}

struct Case {
    dir: tempfile::TempDir,
    gmm: String,
    x: String,
    offsets: String,
}

fn case() -> Case {
    let dir = tempfile::tempdir().unwrap();
    let gmm = s(&import_gmm(dir.path()));
    let (x, offsets) = data();
    let xp = dir.path().join("x.npy");
    npy::write_f32_matrix(&xp, &x, x.len() / D, D).unwrap();
    let op = dir.path().join("o.npy");
    let o: Vec<i64> = offsets.iter().map(|&v| v as i64).collect();
    npy::write_i64_vector(&op, &o).unwrap();
    Case {
        gmm,
        x: s(&xp),
        offsets: s(&op),
        dir,
    }
}

/// Files in `dir` other than the inputs the case made.
fn strays(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !["g.dfk", "x.npy", "o.npy", "xf.npy"].contains(&n.as_str()))
        .collect()
}

#[test]
fn streamed_output_is_the_in_memory_encoding_for_every_batch_size_and_layout() {
    let c = case();
    let (x, offsets) = data();
    let gmm = dfk::model::load_gmm(&c.gmm).unwrap();
    let xf = c.dir.path().join("xf.npy");
    write_fortran_f64_be(&xf, &x, offsets[13]);
    for plain in [false, true] {
        let options = if plain {
            FisherOptions::plain()
        } else {
            FisherOptions::default()
        };
        let enc = FisherEncoder::new(&gmm, options).unwrap();
        let mut fv = vec![0f32; 13 * enc.len()];
        enc.encode_batch(&x, &offsets, &mut fv).unwrap();
        let reference = c.dir.path().join("reference.npy");
        npy::write_f32_matrix(&reference, &fv, 13, enc.len()).unwrap();
        let want = std::fs::read(&reference).unwrap();
        std::fs::remove_file(&reference).unwrap();
        for input in [&c.x, &s(&xf)] {
            for batch in ["1", "2", "5", "12", "13", "256"] {
                let out = c.dir.path().join("fv.npy");
                let mut args = vec![
                    "--threads",
                    "2",
                    "fisher",
                    "--gmm",
                    &c.gmm,
                    "--descriptors",
                    input,
                    "--offsets",
                    &c.offsets,
                    "--batch-images",
                    batch,
                ];
                if plain {
                    args.push("--plain");
                }
                let o = s(&out);
                args.extend(["--out", &o]);
                ok(&args);
                assert!(
                    std::fs::read(&out).unwrap() == want,
                    "{input}, --batch-images {batch}, plain {plain}: output differs"
                );
                std::fs::remove_file(&out).unwrap();
            }
        }
    }
    assert!(
        strays(c.dir.path()).is_empty(),
        "{:?}",
        strays(c.dir.path())
    );
}

/// Runs a `dfk fisher` that must fail with exit status 1 and a message containing `needles`,
/// leaving `out` as it was (`before`) and no temporary file.
fn fails_cleanly(c: &Case, x: &str, batch: &str, needles: &[&str]) {
    let out = c.dir.path().join("fv.npy");
    std::fs::write(&out, b"before").unwrap();
    let o = dfk(&[
        "fisher",
        "--gmm",
        &c.gmm,
        "--descriptors",
        x,
        "--offsets",
        &c.offsets,
        "--batch-images",
        batch,
        "--out",
        &s(&out),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    for n in needles {
        assert!(err.contains(n), "{err:?} lacks {n:?}");
    }
    assert_eq!(std::fs::read(&out).unwrap(), b"before");
    std::fs::remove_file(&out).unwrap();
    assert!(
        strays(c.dir.path()).is_empty(),
        "{:?}",
        strays(c.dir.path())
    );
}

#[test]
fn a_bad_value_in_a_later_batch_leaves_no_output() {
    let c = case();
    let (mut x, offsets) = data();
    // Row 2 of the last image: reached only after 12 batches of one image were written.
    let row = offsets[12] + 2;
    x[row * D + 1] = f32::NAN;
    npy::write_f32_matrix(&c.x, &x, offsets[13], D).unwrap();
    let needle = format!("row {row}, column 1");
    fails_cleanly(&c, &c.x, "1", &["x.npy", &needle]);
}

#[test]
fn a_truncated_descriptor_file_leaves_no_output() {
    let c = case();
    let len = std::fs::metadata(&c.x).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&c.x)
        .unwrap()
        .set_len(len - 3 * 16)
        .unwrap();
    fails_cleanly(&c, &c.x, "1", &["x.npy", "truncated"]);
}

#[test]
fn offsets_that_do_not_cover_the_rows_are_rejected() {
    let c = case();
    let (x, offsets) = data();
    // Two rows more than the offsets describe.
    let mut more = x.clone();
    more.extend_from_slice(&x[..2 * D]);
    npy::write_f32_matrix(&c.x, &more, offsets[13] + 2, D).unwrap();
    fails_cleanly(&c, &c.x, "4", &["o.npy", "offsets end at"]);
}

#[test]
fn zero_batch_images_is_a_usage_error() {
    let c = case();
    let out = c.dir.path().join("fv.npy");
    let o = dfk(&[
        "fisher",
        "--gmm",
        &c.gmm,
        "--descriptors",
        &c.x,
        "--batch-images",
        "0",
        "--out",
        &s(&out),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--batch-images"));
    assert!(!out.exists());
}
