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

/// The 5 × 3 matrix of `f32_5x3.npy` and `f64_5x3_fortran_bigendian.npy`: entry k is k/4 − 2.
fn m5() -> Vec<f32> {
    (0..15).map(|k| k as f32 / 4.0 - 2.0).collect()
}

#[test]
fn matrix_reader_returns_the_rows_in_blocks_in_every_layout() {
    for name in [
        "f32_5x3.npy",
        "f64_5x3_fortran_bigendian.npy",
        "f32_2x3_fortran.npy",
        "f64_2x3_bigendian.npy",
        "f32_vec3.npy",
    ] {
        let (whole, rows, cols) = npy::read_f32_matrix(fixture(name)).unwrap();
        for block in 1..=rows {
            let mut r = npy::F32MatrixReader::open(fixture(name)).unwrap();
            assert_eq!((r.rows(), r.cols()), (rows, cols), "{name}");
            let mut got = Vec::new();
            let mut buf = Vec::new();
            while r.position() < rows {
                let n = block.min(rows - r.position());
                r.read_rows(n, &mut buf).unwrap();
                assert_eq!(buf.len(), n * cols);
                got.extend_from_slice(&buf);
            }
            assert_eq!(got, whole, "{name}, blocks of {block}");
            // Reading past the end is an error naming the file.
            let e = err(r.read_rows(1, &mut buf));
            assert!(e.contains(name) && e.contains("rows"), "{e}");
        }
    }
    assert_eq!(
        npy::read_f32_matrix(fixture("f32_5x3.npy")).unwrap().0,
        m5()
    );
}

#[test]
fn matrix_reader_rejects_what_read_f32_matrix_rejects() {
    for (name, expected) in [
        ("f32_2x3_truncated.npy", "truncated"),
        ("f32_2x3_trailing.npy", "trailing"),
        ("i32_2x3.npy", "not a float type"),
        ("c64_2x3.npy", "dtype"),
        ("f32_rank3.npy", "rank 3"),
        ("not_npy.npy", "not a valid .npy"),
        ("missing.npy", "missing.npy"),
    ] {
        let e = err(npy::F32MatrixReader::open(fixture(name)));
        assert!(e.contains(name), "no file name in: {e}");
        assert!(e.contains(expected), "{e:?} lacks {expected:?}");
    }
}

#[test]
fn matrix_reader_reports_a_file_cut_after_opening() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cut.npy");
    std::fs::copy(fixture("f32_5x3.npy"), &p).unwrap();
    let mut r = npy::F32MatrixReader::open(&p).unwrap();
    let mut buf = Vec::new();
    r.read_rows(2, &mut buf).unwrap();
    let len = std::fs::metadata(&p).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(len - 12)
        .unwrap();
    let e = err(r.read_rows(3, &mut buf));
    assert!(e.contains("cut.npy") && e.contains("truncated"), "{e}");
}

#[test]
fn matrix_writer_writes_the_bytes_of_write_f32_matrix() {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole.npy");
    npy::write_f32_matrix(&whole, &m5(), 5, 3).unwrap();
    for block in 1..=5 {
        let out = dir.path().join(format!("blocks{block}.npy"));
        let mut w = npy::F32MatrixWriter::create(&out, 5, 3).unwrap();
        for rows in m5().chunks(block * 3) {
            assert!(!out.exists(), "the target appears only at the end");
            w.write_rows(rows).unwrap();
        }
        assert_eq!(w.rows_written(), 5);
        w.finish().unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&whole).unwrap());
    }
    // Only the outputs: no temporary files left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 6);
}

#[test]
fn unfinished_or_short_matrix_writes_leave_the_target_alone() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.npy");
    std::fs::write(&out, b"before").unwrap();
    // Dropped after some rows (an error on the way): temporary file removed.
    let mut w = npy::F32MatrixWriter::create(&out, 5, 3).unwrap();
    w.write_rows(&m5()[..6]).unwrap();
    drop(w);
    // Finished with rows missing: an error, nothing renamed.
    let mut w = npy::F32MatrixWriter::create(&out, 5, 3).unwrap();
    w.write_rows(&m5()[..12]).unwrap();
    let e = err(w.finish());
    assert!(e.contains("m.npy") && e.contains("4 of 5 rows"), "{e}");
    // Too many values, or not whole rows: rejected.
    let mut w = npy::F32MatrixWriter::create(&out, 1, 3).unwrap();
    assert!(w.write_rows(&m5()[..6]).is_err());
    assert!(w.write_rows(&m5()[..2]).is_err());
    drop(w);
    assert_eq!(std::fs::read(&out).unwrap(), b"before");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    let missing = dir.path().join("no/such/dir/m.npy");
    assert!(err(npy::F32MatrixWriter::create(&missing, 1, 1)).contains("m.npy"));
}

#[test]
fn non_finite_values_in_a_block_are_located_in_the_file() {
    let e = npy::require_finite_rows("x.npy", &[1.0, 2.0, 3.0, f32::INFINITY], 2, 40).unwrap_err();
    assert!(e.to_string().contains("row 41, column 1"), "{e}");
}

/// A symbolic link is written through: the file it points to gets the new bytes and the link
/// stays a link, for whole-file writes and for the streaming writer alike.
#[cfg(unix)]
#[test]
fn writes_through_a_symbolic_link_keep_the_link() {
    let dir = tempfile::tempdir().unwrap();
    let (file, link) = (dir.path().join("real.npy"), dir.path().join("link.npy"));
    std::fs::write(&file, b"before").unwrap();
    std::os::unix::fs::symlink(&file, &link).unwrap();
    let whole = dir.path().join("whole.npy");
    npy::write_f32_matrix(&whole, &m5(), 5, 3).unwrap();
    npy::write_f32_matrix(&link, &m5(), 5, 3).unwrap();
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        std::fs::read(&file).unwrap(),
        std::fs::read(&whole).unwrap()
    );
    std::fs::write(&file, b"before").unwrap();
    let mut w = npy::F32MatrixWriter::create(&link, 5, 3).unwrap();
    w.write_rows(&m5()).unwrap();
    w.finish().unwrap();
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        std::fs::read(&file).unwrap(),
        std::fs::read(&whole).unwrap()
    );
    // Nothing else: no temporary files.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
}

/// A FIFO is written in place (a reader gets the bytes) and is still a FIFO afterwards; the
/// atomic rename would have replaced it with a regular file.
#[cfg(unix)]
#[test]
fn a_fifo_is_written_in_place_not_replaced() {
    use std::os::unix::fs::FileTypeExt;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe.npy");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("mkfifo unavailable: skipped");
        return;
    }
    let whole = dir.path().join("whole.npy");
    npy::write_f32_matrix(&whole, &m5(), 5, 3).unwrap();
    for streaming in [false, true] {
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read(fifo).unwrap())
        };
        if streaming {
            let mut w = npy::F32MatrixWriter::create(&fifo, 5, 3).unwrap();
            w.write_rows(&m5()).unwrap();
            w.finish().unwrap();
        } else {
            npy::write_f32_matrix(&fifo, &m5(), 5, 3).unwrap();
        }
        let kind = std::fs::symlink_metadata(&fifo).unwrap().file_type();
        assert!(
            kind.is_fifo(),
            "streaming {streaming}: the FIFO was replaced"
        );
        assert_eq!(reader.join().unwrap(), std::fs::read(&whole).unwrap());
    }
}

/// A directory is no output file: an error naming it, and nothing written.
#[test]
fn a_directory_as_output_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let e = err(npy::write_f32_matrix(&sub, &m5(), 5, 3));
    assert!(e.contains("sub") && e.contains("directory"), "{e}");
    assert!(npy::F32MatrixWriter::create(&sub, 5, 3).is_err());
    assert!(sub.is_dir());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    assert_eq!(std::fs::read_dir(&sub).unwrap().count(), 0);
}

/// A path written with a trailing separator (`new/`) names a folder, not a file: an error
/// naming it before anything is written (the rename used to fail only at the end).
#[test]
fn a_path_ending_in_a_separator_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let folder = format!("{}/new/", dir.path().display());
    let e = err(npy::write_f32_matrix(&folder, &m5(), 5, 3));
    assert!(e.contains("new/") && e.contains("separator"), "{e}");
    assert!(npy::F32MatrixWriter::create(&folder, 5, 3).is_err());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    // `new/.` too (`Path::file_name` reads it as `new`; the rename used to fail at the end).
    let dot = format!("{}/new.npy/.", dir.path().display());
    let e = err(npy::write_f32_matrix(&dot, &m5(), 5, 3));
    assert!(
        e.contains("new.npy/.") && e.contains("separator or `.`"),
        "{e}"
    );
    assert!(npy::F32MatrixWriter::create(&dot, 5, 3).is_err());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// An object array (`|O`, what `np.save` writes for a list of Python objects, followed by a
/// pickle) is refused by its type in every reader, not by a byte count.
#[test]
fn object_arrays_are_an_unsupported_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("obj.npy");
    raw_npy(
        &path,
        "|O",
        false,
        "(2, 2)",
        b"\x80\x04\x95 pickled objects .",
    );
    for message in [
        err(npy::read_f32_matrix(&path)),
        err(npy::read_labels(&path)),
        err(npy::read_usize_offsets(&path, 3)),
        err(npy::read_f32_vector(&path)),
    ] {
        assert!(
            message.contains("obj.npy") && message.contains("unsupported dtype |O"),
            "{message}"
        );
    }
}

/// A `.npy` file of `descr` and `shape` holding `payload` (raw bytes in the file's order).
fn raw_npy(path: &std::path::Path, descr: &str, fortran: bool, shape: &str, payload: &[u8]) {
    let py_bool = if fortran { "True" } else { "False" };
    let dict = format!("{{'descr': '{descr}', 'fortran_order': {py_bool}, 'shape': {shape}, }}");
    raw_npy_dict(path, &dict, payload);
}

/// A version 1.0 `.npy` file whose header is the text `dict` (padded as numpy pads it).
fn raw_npy_dict(path: &std::path::Path, dict: &str, payload: &[u8]) {
    let mut header = dict.to_string();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(payload);
    std::fs::write(path, bytes).unwrap();
}

/// A float64 value that is finite but beyond the float32 range is named with its row and
/// column, by every reader and in both layouts, instead of turning into an infinity that the
/// finiteness check then reports as a value the file does not hold.
#[test]
fn float64_values_beyond_float32_are_located() {
    let dir = tempfile::tempdir().unwrap();
    // 3 × 2, C order, little-endian: entry (2, 1) is 1e300.
    let c_order = dir.path().join("big_c.npy");
    let values = [0.5f64, -1.0, 2.0, 3e38, -4.0, 1e300];
    let le: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    raw_npy(&c_order, "<f8", false, "(3, 2)", &le);
    // The same matrix Fortran order, big-endian, with −1e39 at (1, 0) instead.
    let fortran = dir.path().join("big_f.npy");
    let columns = [0.5f64, -1e39, -4.0, -1.0, 3e38, 1e300];
    let be: Vec<u8> = columns.iter().flat_map(|v| v.to_be_bytes()).collect();
    raw_npy(&fortran, ">f8", true, "(3, 2)", &be);
    for (path, place, value) in [
        (&c_order, "row 2, column 1", "1e300"),
        (&fortran, "row 1, column 0", "-1e39"),
    ] {
        let whole = err(npy::read_f32_matrix(path));
        let mut reader = npy::F32MatrixReader::open(path).unwrap();
        let mut buf = Vec::new();
        let streamed = (0..3)
            .map(|_| reader.read_rows(1, &mut buf))
            .find_map(|r| r.err())
            .map(|e| e.to_string())
            .expect("the reader reports the value");
        for e in [whole, streamed] {
            assert!(
                e.contains(&path.file_name().unwrap().to_string_lossy().to_string())
                    && e.contains(place)
                    && e.contains(value)
                    && e.contains("float32 range"),
                "{e}"
            );
        }
    }
    // An infinity stored as float64 is read as one (the finiteness check names it), and a
    // value within range (3e38) reads as its nearest float32.
    let inf = dir.path().join("inf.npy");
    let le: Vec<u8> = [f64::INFINITY, 3e38]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    raw_npy(&inf, "<f8", false, "(1, 2)", &le);
    let (data, _, _) = npy::read_f32_matrix(&inf).unwrap();
    assert_eq!(data, vec![f32::INFINITY, 3e38f32]);
}

/// A header the reader rejects gives a one-line message naming the file, with a hint for
/// Python 2's long-integer shapes (`(2L, 3L)`, which numpy still reads), both when the whole
/// file is read and when it is streamed.
#[test]
fn python2_headers_get_a_one_line_hint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("py2.npy");
    let payload: Vec<u8> = M.iter().flat_map(|v| v.to_le_bytes()).collect();
    raw_npy(&path, "<f4", false, "(2L, 3L)", &payload);
    let whole = err(npy::read_f32_matrix(&path));
    let streamed = err(npy::F32MatrixReader::open(&path).map(|_| ()));
    for msg in [whole, streamed] {
        assert!(!msg.contains('\n'), "{msg}");
        assert!(msg.contains("py2.npy") && msg.contains("2000L"), "{msg}");
    }
    // A digit and an `L` in the array data after a broken header are not a Python 2 shape.
    let path = dir.path().join("no_shape.npy");
    raw_npy_dict(&path, "{'descr': '<f4', 'fortran_order': False, }", b"7L7L");
    let msg = err(npy::read_f32_matrix(&path));
    assert!(
        msg.contains("no_shape.npy") && !msg.contains("Python 2"),
        "{msg}"
    );
}
