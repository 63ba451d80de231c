//! `dfk::npy` against files written by NumPy (`fixtures/npy/make_fixtures.py`).

use std::path::PathBuf;

use dfk::npy;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/npy")
        .join(name)
}

const M: [f32; 6] = [1.5, -2.0, 3.25, 4.0, 5.5, -6.75];

#[test]
fn reads_float_matrices_in_every_layout() {
    for name in [
        "f32_2x3.npy",
        "f64_2x3.npy",
        "f32_2x3_fortran.npy",
        "f64_2x3_bigendian.npy",
    ] {
        let (data, rows, cols) = npy::read_f32_matrix(fixture(name)).unwrap();
        assert_eq!((rows, cols), (2, 3), "{name}");
        assert_eq!(data, M, "{name}");
    }
    let (v, rows, cols) = npy::read_f32_matrix(fixture("f32_vec3.npy")).unwrap();
    assert_eq!((v, rows, cols), (vec![1.0, 2.0, 3.0], 3, 1));
    assert_eq!(
        npy::read_f32_vector(fixture("f32_vec3.npy")).unwrap(),
        vec![1.0, 2.0, 3.0]
    );
}

#[test]
fn reads_integers() {
    assert_eq!(
        npy::read_labels(fixture("i32_labels.npy")).unwrap(),
        vec![2, 0, 1, 2]
    );
    assert_eq!(
        npy::read_labels(fixture("u8_labels.npy")).unwrap(),
        vec![2, 0, 1, 2]
    );
    assert_eq!(
        npy::read_usize_offsets(fixture("i64_offsets.npy"), 2).unwrap(),
        vec![0, 1, 1, 2]
    );
    let (m, r, c) = npy::read_i64_matrix(fixture("i32_2x3.npy")).unwrap();
    assert_eq!((r, c), (2, 3));
    assert_eq!(m, vec![1, -2, 3, 4, 5, -6]);
}

fn err(r: dfk::Result<impl std::fmt::Debug>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn malformed_files_are_named_and_explained() {
    let cases: Vec<(String, &str)> = vec![
        (
            err(npy::read_f32_matrix(fixture("f32_2x3_truncated.npy"))),
            "truncated",
        ),
        (
            err(npy::read_f32_matrix(fixture("f32_2x3_trailing.npy"))),
            "trailing",
        ),
        (
            err(npy::read_f32_matrix(fixture("f32_rank3.npy"))),
            "rank 3",
        ),
        (
            err(npy::read_f32_matrix(fixture("i32_2x3.npy"))),
            "not a float type",
        ),
        (
            err(npy::read_f32_matrix(fixture("c64_2x3.npy"))),
            "unsupported dtype",
        ),
        (
            err(npy::read_f32_matrix(fixture("not_npy.npy"))),
            "not a valid .npy",
        ),
        (
            err(npy::read_f32_matrix(fixture("missing.npy"))),
            "missing.npy",
        ),
        (
            err(npy::read_labels(fixture("f32_vec3.npy"))),
            "not an integer type",
        ),
        (
            err(npy::read_labels(fixture("i32_2x3.npy"))),
            "expected integers as a vector",
        ),
        (
            err(npy::read_usize_offsets(fixture("i64_offsets.npy"), 3)),
            "expected the number of descriptor rows, 3",
        ),
        (err(npy::read_f32_vector(fixture("f32_2x3.npy"))), "rank 1"),
    ];
    for (message, expected) in cases {
        assert!(message.contains(".npy"), "no file name in: {message}");
        assert!(message.contains(expected), "{message:?} lacks {expected:?}");
    }
}

#[test]
fn write_then_read_round_trips_and_matches_numpy_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.npy");
    npy::write_f32_matrix(&out, &M, 2, 3).unwrap();
    assert_eq!(npy::read_f32_matrix(&out).unwrap(), (M.to_vec(), 2, 3));
    // Same header length and data bytes as NumPy's file for the same float32 C-order array
    // (npyz writes the shape tuple as `(2, 3, )`, NumPy as `(2, 3)`).
    let (ours, numpy) = (
        std::fs::read(&out).unwrap(),
        std::fs::read(fixture("f32_2x3.npy")).unwrap(),
    );
    assert_eq!(ours.len(), numpy.len());
    assert_eq!(ours[128..], numpy[128..]);
    let v = dir.path().join("v.npy");
    npy::write_i64_vector(&v, &[0, 1, 1, 2]).unwrap();
    assert_eq!(npy::read_i64_vector(&v).unwrap(), vec![0, 1, 1, 2]);
    // Only the two outputs: no temporary files left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}

#[test]
fn failed_writes_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.npy");
    assert!(npy::write_f32_matrix(&out, &M, 4, 3).is_err());
    let missing_dir = dir.path().join("no/such/dir/m.npy");
    let e = npy::write_f32_matrix(&missing_dir, &M, 2, 3).unwrap_err();
    assert!(e.to_string().contains("m.npy"), "{e}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn non_finite_values_are_located() {
    let e = npy::require_finite("x.npy", &[1.0, 2.0, f32::NAN, 4.0], 2).unwrap_err();
    assert!(e.to_string().contains("x.npy"));
    assert!(e.to_string().contains("row 1, column 0"), "{e}");
}
