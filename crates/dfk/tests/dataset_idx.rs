//! IDX loading (raw and gzipped), its broken cases, and the embedded Fashion-MNIST subset
//! (checked against `fixtures/dataset/embedded_expect.json`, written by
//! `fixtures/dataset/make_fixtures.py` with gzip + numpy).

use std::io::Write;
use std::path::{Path, PathBuf};

use dfk::dataset::{
    embedded_fashion_mnist, load_fashion_mnist, load_idx, read_idx, Dataset, ImageSource,
    FASHION_MNIST_CLASSES,
};
use dfk::Error;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/dataset")
        .join(name)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn format_message(err: Error) -> (PathBuf, String) {
    match err {
        Error::Format { path, message } => (path, message),
        other => panic!("expected a format error, got {other:?}"),
    }
}

#[test]
fn tiny_raw_images_with_gzipped_labels() {
    let ds = load_idx(
        fixture("idx/tiny-images-idx3-ubyte"),
        fixture("idx/tiny-labels-idx1-ubyte.gz"),
    )
    .unwrap();
    assert_eq!(ds.len(), 3);
    assert!(!ds.multilabel);
    assert_eq!(ds.class_names, ["0", "1", "2"]);
    assert_eq!(ds.first_labels(), [2, 0, 2]);
    let img = ds.load_u8(1).unwrap();
    assert_eq!((img.width, img.height), (3, 2));
    let want: Vec<u8> = (6..12).map(|v| v * 10).collect();
    assert_eq!(img.pixels, want);
    let g = ds.load_gray(1).unwrap();
    assert_eq!((g.width, g.height), (3, 2));
    for (a, &b) in g.pixels.iter().zip(&want) {
        assert!((a - b as f32 / 255.0).abs() < 1e-7);
    }
    assert!(matches!(
        &ds.items[0].source,
        ImageSource::Memory {
            width: 3,
            height: 2,
            ..
        }
    ));
}

#[test]
fn gzip_is_detected_by_content() {
    let dir = tempfile::tempdir().unwrap();
    let raw = std::fs::read(fixture("idx/tiny-images-idx3-ubyte")).unwrap();
    let gz = write(dir.path(), "images.idx", &gzip(&raw));
    let a = read_idx(gz).unwrap();
    let b = read_idx(fixture("idx/tiny-images-idx3-ubyte")).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.dims, [3, 2, 3]);
}

#[test]
fn bad_magic_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut raw = std::fs::read(fixture("idx/tiny-images-idx3-ubyte")).unwrap();
    raw[0] = 0x12;
    let p = write(dir.path(), "bad", &raw);
    let (path, msg) = format_message(read_idx(&p).unwrap_err());
    assert_eq!(path, p);
    assert!(msg.contains("magic"), "{msg}");

    raw[0] = 0;
    raw[2] = 0x0d; // float32 elements: not supported
    let p = write(dir.path(), "float", &raw);
    let (_, msg) = format_message(read_idx(&p).unwrap_err());
    assert!(msg.contains("0x0d"), "{msg}");

    let p = write(dir.path(), "short", &[0, 0]);
    assert!(matches!(read_idx(&p), Err(Error::Format { .. })));
}

#[test]
fn truncated_file_names_path_and_expected_size() {
    let dir = tempfile::tempdir().unwrap();
    let raw = std::fs::read(fixture("idx/tiny-images-idx3-ubyte")).unwrap();
    assert_eq!(raw.len(), 16 + 18);
    let p = write(dir.path(), "trunc.gz", &gzip(&raw[..30]));
    let err = read_idx(&p).unwrap_err();
    let text = err.to_string();
    let (path, msg) = format_message(err);
    assert_eq!(path, p);
    assert!(msg.contains("truncated") && msg.contains("34"), "{msg}");
    assert!(text.contains("trunc.gz"), "{text}");

    let mut long = raw.clone();
    long.push(7);
    let p = write(dir.path(), "long", &long);
    let (_, msg) = format_message(read_idx(&p).unwrap_err());
    assert!(msg.contains("trailing"), "{msg}");

    // A gzip stream cut in the middle is reported, not silently shortened.
    let gz = gzip(&raw);
    let p = write(dir.path(), "cut.gz", &gz[..gz.len() - 10]);
    assert!(matches!(read_idx(&p), Err(Error::Format { .. })));
}

#[test]
fn mismatched_pairs_and_missing_files() {
    let dir = tempfile::tempdir().unwrap();
    let labels4 = [0u8, 0, 8, 1, 0, 0, 0, 4, 1, 2, 3, 4];
    let lp = write(dir.path(), "labels4", &labels4);
    let (path, msg) =
        format_message(load_idx(fixture("idx/tiny-images-idx3-ubyte"), &lp).unwrap_err());
    assert_eq!(path, lp);
    assert!(msg.contains("4 labels for 3 images"), "{msg}");

    // Labels passed as images: wrong rank.
    let (_, msg) = format_message(
        load_idx(
            fixture("idx/tiny-labels-idx1-ubyte.gz"),
            fixture("idx/tiny-labels-idx1-ubyte.gz"),
        )
        .unwrap_err(),
    );
    assert!(msg.contains("expected 3"), "{msg}");

    let missing = dir.path().join("nope.gz");
    match load_idx(&missing, &lp) {
        Err(Error::Io { path, .. }) => assert_eq!(path, missing),
        other => panic!("expected an io error, got {other:?}"),
    }
    assert!(matches!(
        load_fashion_mnist(dir.path()),
        Err(Error::Io { .. })
    ));
}

#[test]
fn too_few_class_names_are_rejected() {
    let ds = load_idx(
        fixture("idx/tiny-images-idx3-ubyte"),
        fixture("idx/tiny-labels-idx1-ubyte.gz"),
    )
    .unwrap();
    assert!(ds
        .clone()
        .with_class_names(vec!["a".into(), "b".into()])
        .is_err());
    let named = ds
        .with_class_names(vec!["a".into(), "b".into(), "c".into()])
        .unwrap();
    assert_eq!(named.classes(), 3);
}

fn check_against_expectation(ds: &Dataset, expect: &serde_json::Value) {
    let shape: Vec<usize> = serde_json::from_value(expect["shape"].clone()).unwrap();
    let labels: Vec<usize> = serde_json::from_value(expect["labels"].clone()).unwrap();
    let sums: Vec<u64> = serde_json::from_value(expect["pixel_sums"].clone()).unwrap();
    let first: Vec<u8> = serde_json::from_value(expect["first_image"].clone()).unwrap();
    assert_eq!(ds.len(), shape[0]);
    assert_eq!(ds.first_labels(), labels);
    assert_eq!(ds.class_names, FASHION_MNIST_CLASSES);
    for (i, &want) in sums.iter().enumerate() {
        let img = ds.load_u8(i).unwrap();
        assert_eq!((img.height, img.width), (shape[1], shape[2]));
        let got: u64 = img.pixels.iter().map(|&p| p as u64).sum();
        assert_eq!(got, want, "pixel sum of image {i}");
    }
    assert_eq!(ds.load_u8(0).unwrap().pixels, first);
}

#[test]
fn embedded_subset_matches_the_committed_files() {
    let expect: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("embedded_expect.json")).unwrap())
            .unwrap();
    let (train, test) = embedded_fashion_mnist().unwrap();
    check_against_expectation(&train, &expect["train"]);
    check_against_expectation(&test, &expect["t10k"]);
    assert_eq!(train.class_counts(), vec![200; 10]);
    assert_eq!(test.class_counts(), vec![100; 10]);
}

#[test]
fn embedded_subset_equals_the_files_read_from_disk() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/fashion-mnist-subset");
    let (train, test) = load_fashion_mnist(&dir).unwrap();
    let (etrain, etest) = embedded_fashion_mnist().unwrap();
    // The same images and labels; each names its own origin.
    assert_eq!(
        train.origin.as_deref(),
        Some(
            dir.join("train-images-idx3-ubyte.gz")
                .display()
                .to_string()
                .as_str()
        )
    );
    assert_eq!(
        etest.origin.as_deref(),
        Some("<embedded>/t10k-images-idx3-ubyte.gz")
    );
    let same =
        |a: Dataset, b: Dataset| Dataset { origin: None, ..a } == Dataset { origin: None, ..b };
    assert!(same(train, etrain));
    assert!(same(test, etest));
}

#[test]
fn full_fashion_mnist_when_installed() {
    // The Debian package dataset-fashion-mnist; the test only runs where it is installed.
    let dir = Path::new("/usr/share/datasets/fashion-mnist");
    if !dir.join("t10k-images-idx3-ubyte.gz").exists() {
        eprintln!("skipped: {} not installed", dir.display());
        return;
    }
    let test = load_idx(
        dir.join("t10k-images-idx3-ubyte.gz"),
        dir.join("t10k-labels-idx1-ubyte.gz"),
    )
    .unwrap();
    assert_eq!(test.len(), 10_000);
    assert_eq!(test.class_counts(), vec![1000; 10]);
}

/// A Fashion-MNIST label beyond the ten classes: an error naming the label file, the image
/// and the labels expected.
#[test]
fn a_fashion_mnist_label_beyond_the_classes_names_its_file() {
    let dir = tempfile::tempdir().unwrap();
    for split in ["train", "t10k"] {
        let mut images = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2];
        images.extend([7u8; 8]);
        write(dir.path(), &format!("{split}-images-idx3-ubyte"), &images);
        let label = if split == "t10k" { 12 } else { 3 };
        let labels = [0, 0, 8, 1, 0, 0, 0, 2, 1, label];
        write(dir.path(), &format!("{split}-labels-idx1-ubyte"), &labels);
    }
    let (path, msg) = format_message(load_fashion_mnist(dir.path()).unwrap_err());
    assert_eq!(path, dir.path().join("t10k-labels-idx1-ubyte"));
    assert!(
        msg.contains("label 12 of image 1: expected 0 to 9"),
        "{msg}"
    );
}
