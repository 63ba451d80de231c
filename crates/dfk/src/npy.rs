//! Reading and writing NumPy `.npy` arrays (via `npyz`), with checks that name the file.
//!
//! Readers accept little- or big-endian data and both C and Fortran order (a Fortran-order
//! matrix is transposed into row-major order). Every error is an [`Error::Format`] or
//! [`Error::Io`] naming the file and saying what was expected: the wrong dtype, the wrong rank,
//! a file shorter (or longer) than its header promises, offsets that do not partition the rows.
//! Writers go through [`write_atomic`]: a temporary file in the destination directory, renamed
//! over the target only once it is complete, so a failed write never leaves a partial file.
//!
//! For data larger than memory, [`F32MatrixReader`] reads a float matrix a block of rows at a
//! time and [`F32MatrixWriter`] writes a float32 matrix a block of rows at a time (same bytes as
//! [`write_f32_matrix`], same temporary-file-and-rename guarantee).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use npyz::{DType, Endianness, Order, TypeChar, WriterBuilder};

use crate::error::{Error, Result};

/// Element values of an array as read, converted to C (row-major) order.
enum Values {
    F32(Vec<f32>),
    F64(Vec<f64>),
    Int(Vec<i64>),
    Bool(Vec<bool>),
}

/// An array read from a `.npy` file.
struct Array {
    shape: Vec<usize>,
    values: Values,
    /// The dtype as written in the file, for error messages.
    descr: String,
}

fn describe(dtype: &DType) -> String {
    match dtype {
        DType::Plain(t) => t.to_string(),
        other => format!("{:?}", other.descr()),
    }
}

/// The error for a file whose magic string or header the `.npy` reader rejects: one line (the
/// reader's own message can span several), with a hint for the shapes of Python 2's numpy
/// (`(2000L, 8L)`), which the reader does not accept. `start` is the file's first bytes.
fn header_error(path: &Path, start: &[u8], e: &dyn std::fmt::Display) -> Error {
    // The header alone (version 1: its length in bytes 8-9, from byte 10; later versions:
    // bytes 8-11, from byte 12), not the array data after it.
    let header: &[u8] = match start.get(6) {
        Some(1) if start.len() >= 10 => {
            let len = u16::from_le_bytes([start[8], start[9]]) as usize;
            &start[10..(10 + len).min(start.len())]
        }
        Some(2 | 3) if start.len() >= 12 => {
            let len = u32::from_le_bytes([start[8], start[9], start[10], start[11]]) as usize;
            &start[12..12usize.saturating_add(len).min(start.len())]
        }
        _ => &[],
    };
    let long_suffix = header
        .windows(2)
        .any(|w| w[0].is_ascii_digit() && w[1] == b'L');
    let reason = e.to_string();
    let reason = reason.lines().next().unwrap_or_default().trim();
    let hint = if start.starts_with(b"\x93NUMPY") && long_suffix {
        ": its shape has Python 2 long-integer suffixes (e.g. 2000L); save the array again with \
         a current numpy"
    } else {
        ""
    };
    Error::format(
        path,
        format!(
            "not a valid .npy file (expected the NumPy magic string and header): {reason}{hint}"
        ),
    )
}

fn read_array(path: &Path) -> Result<Array> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let file = npyz::NpyFile::new(&bytes[..]).map_err(|e| header_error(path, &bytes, &e))?;
    let header = file.header().clone();
    let dtype = header.dtype();
    let descr = describe(&dtype);
    let type_str = match &dtype {
        DType::Plain(t) => t.clone(),
        _ => {
            return Err(Error::format(
                path,
                format!(
                "dtype {descr} is a structured or sub-array type: expected a plain numeric array"
            ),
            ))
        }
    };
    let shape: Vec<usize> = header
        .shape()
        .iter()
        .map(|&s| usize::try_from(s))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| Error::format(path, "array shape does not fit in memory"))?;
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &s| acc.checked_mul(s))
        .ok_or_else(|| Error::format(path, "array shape overflows"))?;
    // Object arrays (`|O`, pickled Python objects) have no item size: refused by type, not by
    // their byte count.
    let Some(item) = type_str.num_bytes() else {
        return Err(Error::format(
            path,
            format!("unsupported dtype {descr}: expected float32/float64, an integer type or bool"),
        ));
    };
    let expected_bytes = count.checked_mul(item);
    let data = file.into_inner();
    match expected_bytes {
        Some(n) if n == data.len() => {}
        Some(n) if n > data.len() => {
            return Err(Error::format(
                path,
                format!(
                    "file is truncated: header promises shape {shape:?} of {descr} ({n} data bytes), found {} bytes",
                    data.len()
                ),
            ))
        }
        Some(n) => {
            return Err(Error::format(
                path,
                format!(
                    "file has {} bytes of trailing data after the {n} data bytes of shape {shape:?} ({descr})",
                    data.len() - n
                ),
            ))
        }
        None => return Err(Error::format(path, "array size overflows")),
    }
    let fortran = header.order() == Order::Fortran && shape.len() > 1;
    if fortran && shape.len() > 2 {
        return Err(Error::format(
            path,
            format!("Fortran-order arrays of rank {} are not supported: save it with numpy.ascontiguousarray", shape.len()),
        ));
    }
    let bad = |e: std::io::Error| Error::format(path, format!("cannot decode {descr} data: {e}"));
    let reread = || npyz::NpyFile::new(&bytes[..]).map_err(bad);
    let size = type_str.size_field();
    let values = match (type_str.type_char(), size) {
        (TypeChar::Float, 4) => Values::F32(reread()?.into_vec::<f32>().map_err(bad)?),
        (TypeChar::Float, 8) => Values::F64(reread()?.into_vec::<f64>().map_err(bad)?),
        (TypeChar::Int, 1) => Values::Int(widen(reread()?.into_vec::<i8>().map_err(bad)?)),
        (TypeChar::Int, 2) => Values::Int(widen(reread()?.into_vec::<i16>().map_err(bad)?)),
        (TypeChar::Int, 4) => Values::Int(widen(reread()?.into_vec::<i32>().map_err(bad)?)),
        (TypeChar::Int, 8) => Values::Int(reread()?.into_vec::<i64>().map_err(bad)?),
        (TypeChar::Uint, 1) => Values::Int(widen(reread()?.into_vec::<u8>().map_err(bad)?)),
        (TypeChar::Uint, 2) => Values::Int(widen(reread()?.into_vec::<u16>().map_err(bad)?)),
        (TypeChar::Uint, 4) => Values::Int(widen(reread()?.into_vec::<u32>().map_err(bad)?)),
        (TypeChar::Uint, 8) => {
            let v = reread()?.into_vec::<u64>().map_err(bad)?;
            let mut out = Vec::with_capacity(v.len());
            for (i, x) in v.into_iter().enumerate() {
                out.push(i64::try_from(x).map_err(|_| {
                    Error::format(
                        path,
                        format!("value {x} at index {i} does not fit in int64"),
                    )
                })?);
            }
            Values::Int(out)
        }
        (TypeChar::Bool, 1) => Values::Bool(reread()?.into_vec::<bool>().map_err(bad)?),
        _ => {
            return Err(Error::format(
                path,
                format!(
                    "unsupported dtype {descr}: expected float32/float64, an integer type or bool"
                ),
            ))
        }
    };
    let values = if fortran {
        let (rows, cols) = (shape[0], shape[1]);
        match values {
            Values::F32(v) => Values::F32(transpose(&v, rows, cols)),
            Values::F64(v) => Values::F64(transpose(&v, rows, cols)),
            Values::Int(v) => Values::Int(transpose(&v, rows, cols)),
            Values::Bool(v) => Values::Bool(transpose(&v, rows, cols)),
        }
    } else {
        values
    };
    Ok(Array {
        shape,
        values,
        descr,
    })
}

fn widen<T: Into<i64>>(v: Vec<T>) -> Vec<i64> {
    v.into_iter().map(Into::into).collect()
}

/// Fortran-order data of a `rows × cols` matrix is the row-major `cols × rows` transpose.
fn transpose<T: Copy>(v: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(v.len());
    for r in 0..rows {
        for c in 0..cols {
            out.push(v[c * rows + r]);
        }
    }
    out
}

/// The error for a finite float64 value that has no float32 counterpart (it would become
/// ±inf, and be reported as a non-finite value the file does not hold).
fn beyond_f32(path: &Path, index: usize, cols: usize, value: f64) -> Error {
    Error::format(
        path,
        format!(
            "row {}, column {}: value {value:e} is beyond the float32 range (±{:e}) in which \
             dfk computes",
            index / cols,
            index % cols,
            f32::MAX
        ),
    )
}

/// `f64` values narrowed to `f32`; `cols` (the row length) places a value that is finite in
/// `f64` but beyond the `f32` range, which is an error.
fn narrow(path: &Path, v: &[f64], cols: usize) -> Result<Vec<f32>> {
    v.iter()
        .enumerate()
        .map(|(i, &x)| {
            let y = x as f32;
            if y.is_infinite() && x.is_finite() {
                Err(beyond_f32(path, i, cols.max(1), x))
            } else {
                Ok(y)
            }
        })
        .collect()
}

fn float_values(path: &Path, a: Array, what: &str) -> Result<Vec<f32>> {
    let cols = match a.shape[..] {
        [_, c] => c,
        _ => 1,
    };
    match a.values {
        Values::F32(v) => Ok(v),
        Values::F64(v) => narrow(path, &v, cols),
        _ => Err(Error::format(
            path,
            format!(
                "dtype {} is not a float type: expected float32 or float64 {what}",
                a.descr
            ),
        )),
    }
}

fn int_values(path: &Path, a: Array, what: &str) -> Result<Vec<i64>> {
    match a.values {
        Values::Int(v) => Ok(v),
        Values::Bool(v) => Ok(v.into_iter().map(i64::from).collect()),
        _ => Err(Error::format(
            path,
            format!(
                "dtype {} is not an integer type: expected integer {what}",
                a.descr
            ),
        )),
    }
}

/// The length of a vector stored as shape `(n,)`, `(n, 1)` or `(1, n)`.
fn vector_len(path: &Path, shape: &[usize], what: &str) -> Result<usize> {
    match shape {
        [n] => Ok(*n),
        [n, 1] | [1, n] => Ok(*n),
        _ => Err(Error::format(
            path,
            format!("shape {shape:?}: expected {what} as a vector (rank 1)"),
        )),
    }
}

/// The shape in the header of the `.npy` file at `path`, or `None` when it cannot be read
/// (for error messages that depend on how an array was read, e.g. a rank-1 array as `n × 1`).
pub fn header_shape(path: impl AsRef<Path>) -> Option<Vec<u64>> {
    let mut file = File::open(path).ok()?;
    let header = npyz::NpyHeader::from_reader(&mut file).ok()?;
    Some(header.shape().to_vec())
}

/// Reads a float32 or float64 matrix as row-major `f32` (`rows × cols`); a rank-1 array of
/// length `n` is read as `n × 1`. Values are not checked for finiteness (see [`require_finite`]).
pub fn read_f32_matrix(path: impl AsRef<Path>) -> Result<(Vec<f32>, usize, usize)> {
    let path = path.as_ref();
    let a = read_array(path)?;
    let (rows, cols) = match a.shape[..] {
        [r, c] => (r, c),
        [n] => (n, 1),
        _ => {
            return Err(Error::format(
                path,
                format!(
                    "array has rank {} (shape {:?}): expected a matrix (rank 2, rows × columns)",
                    a.shape.len(),
                    a.shape
                ),
            ))
        }
    };
    let data = float_values(path, a, "values")?;
    Ok((data, rows, cols))
}

/// Reads a float32 or float64 vector (shape `(n,)`, `(n, 1)` or `(1, n)`) as `f32`.
pub fn read_f32_vector(path: impl AsRef<Path>) -> Result<Vec<f32>> {
    let path = path.as_ref();
    let a = read_array(path)?;
    vector_len(path, &a.shape, "float values")?;
    float_values(path, a, "values")
}

/// Reads an integer (any width, signed or unsigned) or bool vector as `i64`.
pub fn read_i64_vector(path: impl AsRef<Path>) -> Result<Vec<i64>> {
    let path = path.as_ref();
    let a = read_array(path)?;
    vector_len(path, &a.shape, "integers")?;
    int_values(path, a, "values")
}

/// Reads an integer or bool matrix (`rows × cols`, row-major) as `i64`.
pub fn read_i64_matrix(path: impl AsRef<Path>) -> Result<(Vec<i64>, usize, usize)> {
    let path = path.as_ref();
    let a = read_array(path)?;
    let (rows, cols) = match a.shape[..] {
        [r, c] => (r, c),
        _ => {
            return Err(Error::format(
                path,
                format!("shape {:?}: expected an integer matrix (rank 2)", a.shape),
            ))
        }
    };
    Ok((int_values(path, a, "values")?, rows, cols))
}

/// Reads the image offsets of a descriptor matrix: integers `O` of length `images + 1` with
/// `O[0] = 0`, `O[i] ≤ O[i+1]` and `O[images] = total_rows`, so image `i` owns rows
/// `O[i]..O[i+1]`.
pub fn read_usize_offsets(path: impl AsRef<Path>, total_rows: usize) -> Result<Vec<usize>> {
    let path = path.as_ref();
    let raw = read_i64_vector(path)?;
    check_offsets(path, &raw, total_rows)
}

/// Checks offsets as described in [`read_usize_offsets`], naming `path` in errors.
pub fn check_offsets(path: &Path, raw: &[i64], total_rows: usize) -> Result<Vec<usize>> {
    if raw.len() < 2 {
        return Err(Error::format(
            path,
            format!(
                "{} offsets: expected images + 1 ≥ 2 offsets (0, …, {total_rows})",
                raw.len()
            ),
        ));
    }
    if raw[0] != 0 {
        return Err(Error::format(
            path,
            format!("offsets start at {}: expected 0", raw[0]),
        ));
    }
    let mut out = Vec::with_capacity(raw.len());
    for (i, &o) in raw.iter().enumerate() {
        if i > 0 && o < raw[i - 1] {
            return Err(Error::format(
                path,
                format!(
                    "offsets decrease at index {i} ({} then {o}): expected non-decreasing offsets",
                    raw[i - 1]
                ),
            ));
        }
        let o = usize::try_from(o)
            .map_err(|_| Error::format(path, format!("offset {o} at index {i} is negative")))?;
        if o > total_rows {
            return Err(Error::format(
                path,
                format!("offset {o} at index {i} is out of range: the descriptors have {total_rows} rows"),
            ));
        }
        out.push(o);
    }
    let last = out[out.len() - 1];
    if last != total_rows {
        return Err(Error::format(
            path,
            format!("offsets end at {last}: expected the number of descriptor rows, {total_rows}"),
        ));
    }
    Ok(out)
}

/// Reads class labels: a vector of non-negative integers (class indices below
/// [`crate::svm::MAX_CLASSES`]).
pub fn read_labels(path: impl AsRef<Path>) -> Result<Vec<usize>> {
    let path = path.as_ref();
    let raw = read_i64_vector(path)?;
    raw.iter()
        .enumerate()
        .map(|(i, &l)| match usize::try_from(l) {
            Ok(c) if c < crate::svm::MAX_CLASSES => Ok(c),
            Ok(_) => Err(Error::format(
                path,
                format!(
                    "label {l} at index {i} is too large: labels are class indices 0, 1, … \
                     (at most {} classes)",
                    crate::svm::MAX_CLASSES
                ),
            )),
            Err(_) => Err(Error::format(
                path,
                format!("label {l} at index {i} is negative: expected class indices 0, 1, …"),
            )),
        })
        .collect()
}

/// Returns an error naming `path` and the row/column of the first NaN or infinite value of a
/// `? × cols` matrix.
pub fn require_finite(path: impl AsRef<Path>, data: &[f32], cols: usize) -> Result<()> {
    require_finite_rows(path, data, cols, 0)
}

/// [`require_finite`] for a block of rows that starts at row `first_row` of the file, so the
/// error gives the row number in the file.
pub fn require_finite_rows(
    path: impl AsRef<Path>,
    data: &[f32],
    cols: usize,
    first_row: usize,
) -> Result<()> {
    match data.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(Error::format(
            path.as_ref(),
            format!(
                "non-finite value {} at row {}, column {}: expected finite numbers",
                data[i],
                first_row + i / cols.max(1),
                i % cols.max(1)
            ),
        )),
        None => Ok(()),
    }
}

/// Reads a float32 or float64 matrix from a `.npy` file a block of rows at a time (as `f32`,
/// row-major), so that a file larger than memory is processed in memory bounded by the block.
///
/// [`F32MatrixReader::open`] reads and checks the header only: dtype (float32/float64, either
/// byte order), rank (a rank-1 array of length `n` is `n × 1`) and that the file size matches the
/// shape, with the same errors as [`read_f32_matrix`]. C-order data are read sequentially;
/// Fortran-order data one contiguous column segment per column and block.
#[derive(Debug)]
pub struct F32MatrixReader {
    path: PathBuf,
    file: File,
    rows: usize,
    cols: usize,
    item: usize,
    big_endian: bool,
    fortran: bool,
    data_start: u64,
    next: usize,
    bytes: Vec<u8>,
}

impl F32MatrixReader {
    /// Opens `path` and checks its header against the file size.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let mut file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        // Rows are read in batches from their place in the file, so it must be one.
        if !file.metadata().map_err(|e| Error::io(&path, e))?.is_file() {
            return Err(Error::format(
                &path,
                "not a regular file (a pipe or device?): the descriptors are read in batches \
                 from their place in the file, which needs a file on disk; save the array to \
                 a file first",
            ));
        }
        let header = npyz::NpyHeader::from_reader(&mut file).map_err(|e| {
            let mut start = Vec::new();
            if let Ok(f) = File::open(&path) {
                let _ = f.take(4096).read_to_end(&mut start);
            }
            header_error(&path, &start, &e)
        })?;
        let dtype = header.dtype();
        let descr = describe(&dtype);
        let DType::Plain(type_str) = &dtype else {
            return Err(Error::format(
                &path,
                format!(
                    "dtype {descr} is a structured or sub-array type: expected a plain numeric array"
                ),
            ));
        };
        let item = match (type_str.type_char(), type_str.size_field()) {
            (TypeChar::Float, 4) => 4,
            (TypeChar::Float, 8) => 8,
            (TypeChar::Int | TypeChar::Uint | TypeChar::Bool, _) => {
                return Err(Error::format(
                    &path,
                    format!(
                        "dtype {descr} is not a float type: expected float32 or float64 values"
                    ),
                ))
            }
            _ => {
                return Err(Error::format(
                    &path,
                    format!("unsupported dtype {descr}: expected float32 or float64"),
                ))
            }
        };
        let shape: Vec<usize> = header
            .shape()
            .iter()
            .map(|&s| usize::try_from(s))
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| Error::format(&path, "array shape does not fit in memory"))?;
        let (rows, cols) = match shape[..] {
            [r, c] => (r, c),
            [n] => (n, 1),
            _ => {
                return Err(Error::format(
                    &path,
                    format!(
                        "array has rank {} (shape {shape:?}): expected a matrix (rank 2, rows × columns)",
                        shape.len()
                    ),
                ))
            }
        };
        let data_start = file.stream_position().map_err(|e| Error::io(&path, e))?;
        let file_len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        let have = file_len.saturating_sub(data_start);
        let want = rows
            .checked_mul(cols)
            .and_then(|c| c.checked_mul(item))
            .and_then(|b| u64::try_from(b).ok())
            .ok_or_else(|| Error::format(&path, "array size overflows"))?;
        if want > have {
            return Err(Error::format(
                &path,
                format!(
                    "file is truncated: header promises shape {shape:?} of {descr} ({want} data bytes), found {have} bytes"
                ),
            ));
        }
        if want < have {
            return Err(Error::format(
                &path,
                format!(
                    "file has {} bytes of trailing data after the {want} data bytes of shape {shape:?} ({descr})",
                    have - want
                ),
            ));
        }
        Ok(Self {
            path,
            file,
            rows,
            cols,
            item,
            big_endian: type_str.endianness() == Endianness::Big,
            fortran: header.order() == Order::Fortran && shape.len() > 1,
            data_start,
            next: 0,
            bytes: Vec::new(),
        })
    }

    /// Number of rows of the matrix.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns of the matrix.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Of the `raw` values just decoded from float64 bytes (value `r` stored at
    /// `out[place(r)]`), the first that is finite but beyond the `f32` range: its place in
    /// `out` and its value.
    fn first_beyond_f32(
        &self,
        raw: usize,
        place: impl Fn(usize) -> usize,
        out: &[f32],
    ) -> Option<(usize, f64)> {
        if self.item != 8 {
            return None;
        }
        (0..raw)
            .filter(|&r| out[place(r)].is_infinite())
            .map(|r| (place(r), f64_at(&self.bytes, r, self.big_endian)))
            .find(|(_, x)| x.is_finite())
    }

    /// Index of the next row [`read_rows`](Self::read_rows) returns.
    pub fn position(&self) -> usize {
        self.next
    }

    /// Reads the next `count` rows into `out` (resized to `count × cols`, row-major `f32`).
    /// Values are not checked for finiteness (see [`require_finite_rows`]). Errors: more rows
    /// than are left, and a file that ends early (e.g. truncated after it was opened).
    pub fn read_rows(&mut self, count: usize, out: &mut Vec<f32>) -> Result<()> {
        if count > self.rows - self.next {
            return Err(Error::format(
                &self.path,
                format!(
                    "asked for rows {}..{} of a matrix with {} rows",
                    self.next,
                    self.next + count,
                    self.rows
                ),
            ));
        }
        let (cols, item) = (self.cols, self.item);
        out.clear();
        out.resize(count * cols, 0.0);
        let first = self.next;
        let ended = |path: &Path, e: std::io::Error| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Error::format(
                    path,
                    format!(
                        "file is truncated: it ended within rows {first}..{}",
                        first + count
                    ),
                )
            } else {
                Error::io(path, e)
            }
        };
        if self.fortran {
            // Column j of rows first..first+count is one contiguous run of the file.
            self.bytes.resize(count * item, 0);
            for j in 0..cols {
                let at = self.data_start + ((j * self.rows + first) * item) as u64;
                self.file
                    .seek(SeekFrom::Start(at))
                    .and_then(|_| self.file.read_exact(&mut self.bytes))
                    .map_err(|e| ended(&self.path, e))?;
                for (i, v) in decode(&self.bytes, item, self.big_endian).enumerate() {
                    out[i * cols + j] = v;
                }
                if let Some((i, x)) = self.first_beyond_f32(count, |r| r * cols + j, out) {
                    return Err(beyond_f32(&self.path, first * cols + i, cols, x));
                }
            }
        } else {
            let at = self.data_start + (first * cols * item) as u64;
            self.bytes.resize(count * cols * item, 0);
            self.file
                .seek(SeekFrom::Start(at))
                .and_then(|_| self.file.read_exact(&mut self.bytes))
                .map_err(|e| ended(&self.path, e))?;
            for (o, v) in out
                .iter_mut()
                .zip(decode(&self.bytes, item, self.big_endian))
            {
                *o = v;
            }
            if let Some((i, x)) = self.first_beyond_f32(count * cols, |r| r, out) {
                return Err(beyond_f32(&self.path, first * cols + i, cols, x));
            }
        }
        self.next += count;
        Ok(())
    }
}

/// Value `i` of raw float64 bytes.
fn f64_at(bytes: &[u8], i: usize, big_endian: bool) -> f64 {
    let b: [u8; 8] = bytes[8 * i..8 * i + 8].try_into().expect("eight bytes");
    if big_endian {
        f64::from_be_bytes(b)
    } else {
        f64::from_le_bytes(b)
    }
}

/// The `f32` values of raw float32 (`item` = 4) or float64 (8) bytes in either byte order.
fn decode(bytes: &[u8], item: usize, big_endian: bool) -> impl Iterator<Item = f32> + '_ {
    bytes
        .chunks_exact(item)
        .map(move |b| match (item, big_endian) {
            (4, false) => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            (4, true) => f32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            (_, false) => {
                f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
            }
            (_, true) => {
                f64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
            }
        })
}

/// Writes a `rows × cols` float32 `.npy` matrix a block of rows at a time, in bounded memory.
///
/// The header (the row count is known in advance) is written first, then rows as they are
/// produced, into a temporary file in the destination folder; [`finish`](Self::finish) checks
/// that every row was written and renames it over the target. A writer dropped unfinished (an
/// error on the way) removes its temporary file and leaves the target as it was. The bytes are
/// those [`write_f32_matrix`] writes for the same matrix.
#[derive(Debug)]
pub struct F32MatrixWriter {
    path: PathBuf,
    /// The temporary file renamed over the target at the end, or, when `in_place`, the
    /// device or FIFO written directly.
    tmp: PathBuf,
    in_place: bool,
    out: Option<std::io::BufWriter<File>>,
    rows: usize,
    cols: usize,
    written: usize,
    bytes: Vec<u8>,
}

impl F32MatrixWriter {
    /// Creates the temporary file next to `path` and writes the header of a `rows × cols`
    /// float32 matrix.
    pub fn create(path: impl AsRef<Path>, rows: usize, cols: usize) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        // A matrix without columns holds no rows to write, and its file would not read back.
        if cols == 0 || rows.checked_mul(cols).is_none() {
            return Err(Error::param(
                "matrix shape",
                format!("{rows} × {cols}"),
                "at least one column, and a size that fits in memory",
            ));
        }
        let target = output_target(&path)?;
        // npyz renders the header; it is written before any data, so an unfinished writer over
        // a buffer leaves exactly the header bytes in it.
        let mut header = Vec::new();
        {
            let writer = npyz::WriteOptions::<f32>::new()
                .default_dtype()
                .shape(&[rows as u64, cols as u64])
                .writer(&mut header)
                .begin_nd()
                .map_err(|e| Error::io(&path, e))?;
            drop(writer);
        }
        let (tmp, in_place) = match target {
            Target::Replace(target) => (temp_path(&target), false),
            Target::InPlace(device) => (device, true),
        };
        let mut w = Self {
            out: None,
            tmp,
            in_place,
            rows,
            cols,
            written: 0,
            bytes: Vec::new(),
            path,
        };
        let file = if w.in_place {
            std::fs::OpenOptions::new().write(true).open(&w.tmp)
        } else {
            create_tracked(&w.tmp)
        }
        .map_err(|e| Error::io(&w.path, e))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        let wrote = out.write_all(&header);
        w.out = Some(out);
        wrote.map_err(|e| Error::io(&w.path, e))?;
        Ok(w)
    }

    /// Rows written so far.
    pub fn rows_written(&self) -> usize {
        self.written
    }

    /// Appends whole rows (`data.len()` a multiple of `cols`, at most the rows left).
    pub fn write_rows(&mut self, data: &[f32]) -> Result<()> {
        let cols = self.cols.max(1);
        if !data.len().is_multiple_of(cols) || data.len() / cols > self.rows - self.written {
            return Err(Error::dim(
                format!(
                    "rows for {} ({} of {} rows written, {} columns)",
                    self.path.display(),
                    self.written,
                    self.rows,
                    self.cols
                ),
                (self.rows - self.written) * self.cols,
                data.len(),
            ));
        }
        let Some(out) = self.out.as_mut() else {
            return Err(Error::format(&self.path, "writer already finished"));
        };
        self.bytes.clear();
        self.bytes.extend(data.iter().flat_map(|v| v.to_le_bytes()));
        out.write_all(&self.bytes)
            .map_err(|e| Error::io(&self.path, e))?;
        self.written += data.len().checked_div(self.cols).unwrap_or(0);
        Ok(())
    }

    /// Checks that all rows were written, flushes, syncs and renames the file over the target.
    pub fn finish(mut self) -> Result<()> {
        if self.written != self.rows && self.cols > 0 {
            return Err(Error::format(
                &self.path,
                format!("only {} of {} rows were written", self.written, self.rows),
            ));
        }
        let Some(out) = self.out.take() else {
            return Err(Error::format(&self.path, "writer already finished"));
        };
        if self.in_place {
            let mut out = out;
            return out.flush().map_err(|e| Error::io(&self.path, e));
        }
        // The target: the path itself, or the file a symbolic link at it points to.
        let target = match output_target(&self.path) {
            Ok(Target::Replace(target)) => target,
            Ok(Target::InPlace(_)) => {
                let _ = std::fs::remove_file(&self.tmp);
                untrack_temp(&self.tmp);
                return Err(Error::format(
                    &self.path,
                    "became a device or FIFO while it was being written",
                ));
            }
            Err(e) => {
                let _ = std::fs::remove_file(&self.tmp);
                untrack_temp(&self.tmp);
                return Err(e);
            }
        };
        let result = (|| {
            let file = out.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            keep_mode(&self.tmp, &target);
            std::fs::rename(&self.tmp, &target)
        })();
        untrack_temp(&self.tmp);
        if let Err(e) = result {
            let _ = std::fs::remove_file(&self.tmp);
            return Err(Error::io(&self.path, e));
        }
        Ok(())
    }
}

impl Drop for F32MatrixWriter {
    fn drop(&mut self) {
        // An unfinished temporary file goes; a device written in place stays.
        if self.out.take().is_some() && !self.in_place {
            let _ = std::fs::remove_file(&self.tmp);
            untrack_temp(&self.tmp);
        }
    }
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Temporary files being written now, so that an interrupted program can remove them
/// ([`remove_temporary_files`]).
static LIVE_TEMPS: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Gives the temporary file `tmp` the permissions of the file it replaces, `target`, if any:
/// a private output stays private (the new file would get the umask's mode).
fn keep_mode(tmp: &Path, target: &Path) {
    if let Ok(m) = std::fs::metadata(target) {
        let _ = std::fs::set_permissions(tmp, m.permissions());
    }
}

/// Creates the temporary file `path` and records it, under the lock that
/// [`remove_temporary_files`] takes for good: a file is either removed by it or never made.
fn create_tracked(path: &Path) -> std::io::Result<File> {
    let mut live = LIVE_TEMPS.lock().unwrap_or_else(|e| e.into_inner());
    let file = File::create(path)?;
    live.push(path.to_path_buf());
    Ok(file)
}

fn untrack_temp(path: &Path) {
    if let Ok(mut live) = LIVE_TEMPS.lock() {
        live.retain(|p| p != path);
    }
}

/// Removes the temporary files of every write in progress (the targets stay as they were).
/// For a program that is about to exit on a signal: Ctrl-C during a long write would
/// otherwise leave a hidden `.NAME.tmp-…` file of up to the output's size.
///
/// The lock on the list stays taken afterwards, so that no other thread makes a new temporary
/// file before the program exits: call it only on the way out.
pub fn remove_temporary_files() {
    let mut live = LIVE_TEMPS.lock().unwrap_or_else(|e| e.into_inner());
    for p in live.drain(..) {
        let _ = std::fs::remove_file(p);
    }
    std::mem::forget(live);
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    remove_stale_temporaries(path, &name);
    let unique = format!(
        ".{name}.tmp-{}-{}-{}",
        namespace_token().unwrap_or("dfk"),
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    path.with_file_name(unique)
}

/// What names this machine's boot and process-id namespace in temporary file names:
/// `dfk` and the CRC-32 of the boot id and the pid namespace, so that a process id in a
/// temporary name is only ever compared with the processes of the namespace that made it
/// (containers sharing a folder, machines sharing a network disk). `None` where `/proc` does
/// not tell them (not Linux), or hides other users' processes (`hidepid`): no clean-up then.
fn namespace_token() -> Option<&'static str> {
    static TOKEN: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    TOKEN
        .get_or_init(|| {
            let boot = std::fs::read("/proc/sys/kernel/random/boot_id").ok()?;
            let ns = std::fs::read_link("/proc/self/ns/pid").ok()?;
            // Process 1 is visible unless /proc hides other users' processes.
            if !Path::new("/proc/1").exists() {
                return None;
            }
            let mut h = crc32fast::Hasher::new();
            h.update(&boot);
            h.update(ns.as_os_str().as_encoded_bytes());
            Some(format!("dfk{:08x}", h.finalize()))
        })
        .as_deref()
}

/// Removes the temporary files that earlier writers of `path` left when they were killed
/// without a chance to clean up (`kill -9`, a crash): `.NAME.tmp-TOKEN-PID-N` beside it, made
/// in this boot and pid namespace ([`namespace_token`]), whose process no longer runs. A file
/// whose process id has been reused is kept.
fn remove_stale_temporaries(path: &Path, name: &str) {
    let Some(token) = namespace_token() else {
        return;
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = format!(".{name}.tmp-{token}-");
    let own = std::process::id();
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(rest) = file.to_str().and_then(|f| f.strip_prefix(&prefix)) else {
            continue;
        };
        let Some((pid, counter)) = rest.split_once('-') else {
            continue;
        };
        if !digits(pid) || !digits(counter) {
            continue;
        }
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if pid != own && !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Where a writer puts the bytes meant for an output path.
#[derive(Debug)]
enum Target {
    /// A regular file, or nothing yet: written to a temporary file beside it, then renamed
    /// over it (through a symbolic link, the file it points to).
    Replace(PathBuf),
    /// A character device or a FIFO (`/dev/null`, a pipe): written in place. Renaming over
    /// it would replace the device with a regular file.
    InPlace(PathBuf),
}

/// Whether `path` is written as a folder, not a file name: with a trailing separator (`out/`)
/// or a trailing `.` component (`out/.`, which `Path::file_name` reads as `out`).
pub fn written_as_folder(path: &Path) -> bool {
    let is_sep = |b: u8| std::path::is_separator(b as char);
    match path.as_os_str().as_encoded_bytes() {
        [.., b] if is_sep(*b) => true,
        [b'.'] => true,
        [.., sep, b'.'] => is_sep(*sep),
        _ => false,
    }
}

/// What writing to `path` means; an error for a directory, a path ending in a separator
/// (`out/`), a socket or block device, or a symbolic link that leads nowhere.
fn output_target(path: &Path) -> Result<Target> {
    if path.file_name().is_none() {
        return Err(Error::format(path, "not a file name"));
    }
    if written_as_folder(path) && !path.is_dir() {
        return Err(Error::format(
            path,
            "ends in a path separator or `.` but is not a folder: expected a file name",
        ));
    }
    let meta = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Target::Replace(path.to_path_buf()))
        }
        Err(e) => return Err(Error::io(path, e)),
        Ok(m) => m,
    };
    let (resolved, meta) = if meta.file_type().is_symlink() {
        // `/dev/stdout` on a pipe leads to `pipe:[…]`, which has no path but opens: written
        // in place, as a FIFO is.
        #[cfg(unix)]
        if std::fs::canonicalize(path).is_err() {
            use std::os::unix::fs::FileTypeExt;
            if let Ok(m) = std::fs::metadata(path) {
                let t = m.file_type();
                if t.is_fifo() || t.is_char_device() || t.is_socket() {
                    return Ok(Target::InPlace(path.to_path_buf()));
                }
            }
        }
        let resolved = std::fs::canonicalize(path).map_err(|e| {
            Error::format(
                path,
                format!("a symbolic link whose target cannot be written ({e})"),
            )
        })?;
        let meta = std::fs::metadata(&resolved).map_err(|e| Error::io(&resolved, e))?;
        (resolved, meta)
    } else {
        (path.to_path_buf(), meta)
    };
    let kind = meta.file_type();
    if kind.is_file() {
        return Ok(Target::Replace(resolved));
    }
    if kind.is_dir() {
        return Err(Error::format(path, "is a directory: expected a file path"));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_char_device() || kind.is_fifo() {
            return Ok(Target::InPlace(resolved));
        }
    }
    Err(Error::format(
        path,
        "exists and is neither a regular file nor a character device or FIFO",
    ))
}

/// Writes a file atomically: `fill` writes the contents into a temporary file in the same
/// directory, which is flushed, synced and renamed over `path`. On any error the temporary file
/// is removed and `path` is left as it was. A symbolic link is written through (the file it
/// points to is replaced), and a character device or FIFO (`/dev/null`) is written in place,
/// never replaced.
pub fn write_atomic(
    path: impl AsRef<Path>,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    match stage(path.as_ref(), fill)? {
        Some(staged) => staged.commit(),
        None => Ok(()),
    }
}

/// A complete, synced temporary file waiting to be renamed over its target.
struct Staged {
    tmp: PathBuf,
    target: PathBuf,
    /// The path as the caller named it, for messages.
    shown: PathBuf,
}

impl Staged {
    fn commit(self) -> Result<()> {
        keep_mode(&self.tmp, &self.target);
        let result = std::fs::rename(&self.tmp, &self.target);
        self.discard();
        result.map_err(|e| Error::io(&self.shown, e))
    }

    /// Removes the temporary file (a no-op once renamed).
    fn discard(&self) {
        untrack_temp(&self.tmp);
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// The first half of [`write_atomic`]: the contents written and synced into a temporary file
/// beside the target (`None`: a device or FIFO, written in place).
fn stage(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<Option<Staged>> {
    let target = match output_target(path)? {
        Target::InPlace(device) => {
            let result = (|| {
                let file = std::fs::OpenOptions::new().write(true).open(&device)?;
                let mut w = std::io::BufWriter::new(file);
                fill(&mut w)?;
                w.flush()
            })();
            return result.map(|()| None).map_err(|e| Error::io(path, e));
        }
        Target::Replace(target) => target,
    };
    let staged = Staged {
        tmp: temp_path(&target),
        target,
        shown: path.to_path_buf(),
    };
    let result = (|| {
        let file = create_tracked(&staged.tmp)?;
        let mut w = std::io::BufWriter::new(file);
        fill(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    })();
    match result {
        Ok(()) => Ok(Some(staged)),
        Err(e) => {
            staged.discard();
            Err(Error::io(path, e))
        }
    }
}

/// Several files (`.npy` arrays, or raw bytes) written as one output: each goes to a temporary file beside its
/// target, and only [`commit`](Self::commit), once all are complete, renames them into place.
/// On an error before that (a full disk, say) or when dropped uncommitted, the temporary files
/// are removed and no target changes, so a reader never finds part of the set.
#[derive(Default)]
pub struct FileGroup {
    staged: Vec<Staged>,
}

impl FileGroup {
    /// An empty group.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a row-major `rows × cols` float32 matrix (see [`write_f32_matrix`]).
    pub fn f32_matrix(
        &mut self,
        path: impl AsRef<Path>,
        data: &[f32],
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        self.matrix(path.as_ref(), data, rows, cols)
    }

    /// Adds a float32 vector.
    pub fn f32_vector(&mut self, path: impl AsRef<Path>, data: &[f32]) -> Result<()> {
        self.add(path.as_ref(), data, &[data.len() as u64])
    }

    /// Adds a row-major `rows × cols` int64 matrix.
    pub fn i64_matrix(
        &mut self,
        path: impl AsRef<Path>,
        data: &[i64],
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        self.matrix(path.as_ref(), data, rows, cols)
    }

    /// A row-major `rows × cols` matrix, its length checked against the shape.
    fn matrix<T: npyz::AutoSerialize + Copy>(
        &mut self,
        path: &Path,
        data: &[T],
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(Error::dim(
                "matrix to write (rows × cols)",
                rows.saturating_mul(cols),
                data.len(),
            ));
        }
        self.add(path, data, &[rows as u64, cols as u64])
    }

    /// Adds an int64 vector.
    pub fn i64_vector(&mut self, path: impl AsRef<Path>, data: &[i64]) -> Result<()> {
        self.add(path.as_ref(), data, &[data.len() as u64])
    }

    /// Adds a file of raw bytes (a model, a report page).
    pub fn bytes(&mut self, path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
        if let Some(staged) = stage(path.as_ref(), |w| w.write_all(bytes))? {
            self.staged.push(staged);
        }
        Ok(())
    }

    fn add<T: npyz::AutoSerialize + Copy>(
        &mut self,
        path: &Path,
        data: &[T],
        shape: &[u64],
    ) -> Result<()> {
        if let Some(staged) = stage(path, |w| fill_array(w, data, shape))? {
            self.staged.push(staged);
        }
        Ok(())
    }

    /// Renames every file into place. A rename fails only in rare cases (the folder removed
    /// meanwhile); then the files renamed so far stay and the others are removed.
    pub fn commit(mut self) -> Result<()> {
        for staged in std::mem::take(&mut self.staged) {
            staged.commit()?;
        }
        Ok(())
    }
}

impl Drop for FileGroup {
    fn drop(&mut self) {
        for staged in &self.staged {
            staged.discard();
        }
    }
}

/// Writes bytes atomically (see [`write_atomic`]).
pub fn write_bytes_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |w| w.write_all(bytes))
}

fn fill_array<T: npyz::AutoSerialize + Copy>(
    w: &mut dyn Write,
    data: &[T],
    shape: &[u64],
) -> std::io::Result<()> {
    let mut writer = npyz::WriteOptions::<T>::new()
        .default_dtype()
        .shape(shape)
        .writer(w)
        .begin_nd()?;
    writer.extend(data.iter().copied())?;
    writer.finish()
}

/// Writes a row-major `rows × cols` float32 matrix atomically.
pub fn write_f32_matrix(
    path: impl AsRef<Path>,
    data: &[f32],
    rows: usize,
    cols: usize,
) -> Result<()> {
    let mut one = FileGroup::new();
    one.f32_matrix(path, data, rows, cols)?;
    one.commit()
}

/// Writes a float32 vector atomically.
pub fn write_f32_vector(path: impl AsRef<Path>, data: &[f32]) -> Result<()> {
    let mut one = FileGroup::new();
    one.f32_vector(path, data)?;
    one.commit()
}

/// Writes an int64 vector atomically.
pub fn write_i64_vector(path: impl AsRef<Path>, data: &[i64]) -> Result<()> {
    let mut one = FileGroup::new();
    one.i64_vector(path, data)?;
    one.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// A killed writer's temporary file (its process gone) is removed by the next write of
    /// the same output; those of running processes, of other outputs and other names stay.
    #[test]
    #[cfg(target_os = "linux")]
    fn the_next_write_removes_a_killed_writers_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.npy");
        // Process ids stay below 2^22 on Linux: 4000000000 never runs; 1 always does.
        let own = std::process::id();
        let token = namespace_token().expect("Linux tells the boot and pid namespace");
        let kept = [
            format!(".out.npy.tmp-{token}-{own}-999999"),
            format!(".out.npy.tmp-{token}-1-0"),
            format!(".other.npy.tmp-{token}-4000000000-1"),
            format!(".out.npy.tmp-{token}-4000000000-"),
            format!(".out.npy.tmp-{token}-x-1"),
            // Another namespace's or machine's writer, and a user's file of a similar name.
            ".out.npy.tmp-dfk00000000-4000000000-7".to_string(),
            ".out.npy.tmp-4000000000-7".to_string(),
            ".out.npy.tmp-2024-01".to_string(),
        ];
        let stale = format!(".out.npy.tmp-{token}-4000000000-7");
        for name in kept.iter().map(String::as_str).chain([stale.as_str()]) {
            std::fs::write(dir.path().join(name), b"partial").unwrap();
        }
        write_f32_vector(&out, &[1.0, 2.0]).unwrap();
        let mut expected: Vec<String> = kept.to_vec();
        expected.push("out.npy".into());
        expected.sort();
        assert_eq!(names(dir.path()), expected);
    }

    /// Replacing an output keeps its permissions (a private file stayed private only until
    /// the first rewrite, which gave it the umask's mode).
    #[test]
    #[cfg(unix)]
    fn a_replaced_output_keeps_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.npy");
        write_f32_vector(&out, &[1.0]).unwrap();
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o600)).unwrap();
        write_f32_vector(&out, &[2.0]).unwrap();
        let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let mut w = F32MatrixWriter::create(&out, 1, 1).unwrap();
        w.write_rows(&[3.0]).unwrap();
        w.finish().unwrap();
        let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(read_f32_vector(&out).unwrap(), [3.0]);
    }

    #[test]
    fn a_file_group_lands_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.npy"), dir.path().join("b.npy"));
        // The second file cannot be written: the first must not appear, no temporary stays.
        let mut group = FileGroup::new();
        group.f32_vector(&a, &[1.0, 2.0]).unwrap();
        assert!(!a.exists(), "staged, not yet in place");
        let err = group
            .f32_vector(dir.path().join("missing").join("b.npy"), &[3.0])
            .unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        drop(group);
        assert!(names(dir.path()).is_empty(), "{:?}", names(dir.path()));
        // A shape error before anything is staged.
        let mut group = FileGroup::new();
        assert!(group.f32_matrix(&a, &[1.0; 5], 2, 3).is_err());
        // Committed: both in place, with their contents, nothing else beside them.
        let mut group = FileGroup::new();
        group.f32_matrix(&a, &[1.0, 2.0, 3.0, 4.0], 2, 2).unwrap();
        group.f32_vector(&b, &[5.0]).unwrap();
        group.commit().unwrap();
        assert_eq!(names(dir.path()), ["a.npy", "b.npy"]);
        assert_eq!(
            read_f32_matrix(&a).unwrap(),
            (vec![1.0, 2.0, 3.0, 4.0], 2, 2)
        );
    }

    #[test]
    fn transpose_maps_fortran_to_c_order() {
        // 2×3 matrix [[1,2,3],[4,5,6]] in Fortran order is 1,4,2,5,3,6.
        assert_eq!(transpose(&[1, 4, 2, 5, 3, 6], 2, 3), vec![1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn offsets_are_checked() {
        let p = Path::new("o.npy");
        assert_eq!(
            check_offsets(p, &[0, 2, 2, 5], 5).unwrap(),
            vec![0, 2, 2, 5]
        );
        for bad in [
            &[0i64][..],
            &[1, 5],
            &[0, 3, 2, 5],
            &[0, 6],
            &[0, 4],
            &[0, -1, 5],
        ] {
            let e = check_offsets(p, bad, 5).unwrap_err().to_string();
            assert!(e.starts_with("o.npy: "), "{e}");
        }
    }
}
