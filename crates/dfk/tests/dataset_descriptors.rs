//! Precomputed descriptors from the numpy-made files in `fixtures/dataset/desc/`
//! (`fixtures/dataset/make_fixtures.py`): one matrix + offsets, one file per image, and the
//! broken cases (offsets not increasing, offsets not ending at the row count, column mismatch).

use std::path::PathBuf;

use dfk::dataset::Descriptors;
use dfk::Error;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/dataset/desc")
        .join(name)
}

/// The fixture matrix: row r is (3r, 3r+1, 3r+2) / 4.
fn expected_rows(rows: std::ops::Range<usize>) -> Vec<f32> {
    rows.flat_map(|r| (0..3).map(move |c| (3 * r + c) as f32 / 4.0))
        .collect()
}

#[test]
fn matrix_with_offsets() {
    let d = Descriptors::from_npy(fixture("data.npy"), fixture("offsets.npy")).unwrap();
    assert_eq!((d.dim, d.rows(), d.images()), (3, 7, 3));
    assert_eq!(d.offsets, [0, 2, 2, 7]);
    assert_eq!(d.image(0), &expected_rows(0..2)[..]);
    assert!(d.image(1).is_empty());
    assert_eq!(d.image(2), &expected_rows(2..7)[..]);
}

#[test]
fn offsets_not_increasing_or_not_covering_rows() {
    match Descriptors::from_npy(fixture("data.npy"), fixture("offsets_decreasing.npy")) {
        Err(Error::Format { path, message }) => {
            assert!(path.ends_with("offsets_decreasing.npy"));
            assert!(message.contains("decrease"), "{message}");
        }
        other => panic!("expected a format error, got {other:?}"),
    }
    match Descriptors::from_npy(fixture("data.npy"), fixture("offsets_short.npy")) {
        Err(Error::Format { path, message }) => {
            assert!(path.ends_with("offsets_short.npy"));
            assert!(message.contains('7'), "{message}");
        }
        other => panic!("expected a format error, got {other:?}"),
    }
    assert!(matches!(
        Descriptors::from_npy(fixture("data.npy"), fixture("missing.npy")),
        Err(Error::Io { .. })
    ));
    // The same checks on values built in memory.
    assert!(Descriptors::new(vec![0.0; 6], 3, vec![0, 2, 1, 2]).is_err());
    assert!(Descriptors::new(vec![0.0; 6], 3, vec![0, 1]).is_err());
    assert!(Descriptors::new(vec![0.0; 6], 3, vec![0]).is_err());
    assert!(Descriptors::new(vec![0.0; 5], 3, vec![0, 1]).is_err());
    assert!(matches!(
        Descriptors::new(vec![0.0, f32::NAN, 0.0], 3, vec![0, 1]),
        Err(Error::NonFinite { .. })
    ));
    assert!(Descriptors::new(vec![0.0; 6], 3, vec![0, 1, 2]).is_ok());
}

#[test]
fn one_file_per_image_f32_and_f64() {
    let d = Descriptors::from_folder(fixture("per_image")).unwrap();
    assert_eq!(d.offsets, [0, 2, 7]);
    assert_eq!(d.data, expected_rows(0..7));

    let (d2, ds) = Descriptors::from_list(fixture("per_image/labels.txt"), None).unwrap();
    assert_eq!(d2, d);
    assert_eq!(ds.class_names, ["bag", "shoe"]);
    assert_eq!(ds.first_labels(), [1, 0]);
}

#[test]
fn column_mismatch_between_files() {
    match Descriptors::from_folder(fixture("mismatch")) {
        Err(Error::Format { path, message }) => {
            assert!(path.ends_with("mismatch/b.npy"));
            assert!(
                message.contains("4 columns") && message.contains("expected 3"),
                "{message}"
            );
        }
        other => panic!("expected a format error, got {other:?}"),
    }
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        Descriptors::from_folder(empty.path()),
        Err(Error::Empty { .. })
    ));
    assert!(Descriptors::from_npy_files(&[]).is_err());
    // A file of 0 rows is named (it used to surface as "offsets must increase strictly").
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.npy"), dir.path().join("b.npy"));
    dfk::npy::write_f32_matrix(&a, &[1.0, 2.0, 3.0], 1, 3).unwrap();
    dfk::npy::write_f32_matrix(&b, &[], 0, 3).unwrap();
    match Descriptors::from_npy_files(&[a.clone(), b]) {
        Err(Error::Format { path, message }) => {
            assert!(
                path.ends_with("b.npy") && message.contains("0 rows"),
                "{message}"
            );
        }
        other => panic!("expected a format error, got {other:?}"),
    }
    // A 1-D array first (one descriptor saved as a vector) reads as 3 rows × 1 column: the
    // error on the next, valid file says that the first one is the odd one out.
    let flat = dir.path().join("flat.npy");
    dfk::npy::write_f32_vector(&flat, &[1.0, 2.0, 3.0]).unwrap();
    match Descriptors::from_npy_files(&[flat.clone(), a.clone()]) {
        Err(Error::Format { path, message }) => {
            assert!(path.ends_with("a.npy"), "{path:?}");
            assert!(
                message.contains("3 columns: expected 1 like")
                    && message.contains("flat.npy holds a 1-D array"),
                "{message}"
            );
        }
        other => panic!("expected a format error, got {other:?}"),
    }
    match Descriptors::from_npy_files(&[a, flat]) {
        Err(Error::Format { path, message }) => {
            assert!(path.ends_with("flat.npy"), "{path:?}");
            assert!(
                message.contains("1 column: expected 3")
                    && message.contains("this file holds a 1-D array"),
                "{message}"
            );
        }
        other => panic!("expected a format error, got {other:?}"),
    }
}

#[test]
fn save_and_reload() {
    let d = Descriptors::from_npy(fixture("data.npy"), fixture("offsets.npy")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("d.npy"), dir.path().join("o.npy"));
    d.save_npy(&a, &b).unwrap();
    assert_eq!(Descriptors::from_npy(&a, &b).unwrap(), d);
}
