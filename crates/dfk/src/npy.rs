//! Reading and writing NumPy `.npy` arrays (via `npyz`), with checks that name the file.
//!
//! Readers accept little- or big-endian data and both C and Fortran order (a Fortran-order
//! matrix is transposed into row-major order). Every error is an [`Error::Format`] or
//! [`Error::Io`] naming the file and saying what was expected: the wrong dtype, the wrong rank,
//! a file shorter (or longer) than its header promises, offsets that do not partition the rows.
//! Writers go through [`write_atomic`]: a temporary file in the destination directory, renamed
//! over the target only once it is complete, so a failed write never leaves a partial file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use npyz::{DType, Order, TypeChar, WriterBuilder};

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

fn read_array(path: &Path) -> Result<Array> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let file = npyz::NpyFile::new(&bytes[..]).map_err(|e| {
        Error::format(
            path,
            format!("not a valid .npy file (expected the NumPy magic string and header): {e}"),
        )
    })?;
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
    let item = type_str.num_bytes().unwrap_or(0);
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

fn float_values(path: &Path, a: Array, what: &str) -> Result<Vec<f32>> {
    match a.values {
        Values::F32(v) => Ok(v),
        Values::F64(v) => Ok(v.into_iter().map(|x| x as f32).collect()),
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

/// Reads class labels: a vector of non-negative integers (class indices).
pub fn read_labels(path: impl AsRef<Path>) -> Result<Vec<usize>> {
    let path = path.as_ref();
    let raw = read_i64_vector(path)?;
    raw.iter()
        .enumerate()
        .map(|(i, &l)| {
            usize::try_from(l).map_err(|_| {
                Error::format(
                    path,
                    format!("label {l} at index {i} is negative: expected class indices 0, 1, …"),
                )
            })
        })
        .collect()
}

/// Returns an error naming `path` and the row/column of the first NaN or infinite value of a
/// `? × cols` matrix.
pub fn require_finite(path: impl AsRef<Path>, data: &[f32], cols: usize) -> Result<()> {
    match data.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(Error::format(
            path.as_ref(),
            format!(
                "non-finite value {} at row {}, column {}: expected finite numbers",
                data[i],
                i / cols.max(1),
                i % cols.max(1)
            ),
        )),
        None => Ok(()),
    }
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let unique = format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    path.with_file_name(unique)
}

/// Writes a file atomically: `fill` writes the contents into a temporary file in the same
/// directory, which is flushed, synced and renamed over `path`. On any error the temporary file
/// is removed and `path` is left as it was.
pub fn write_atomic(
    path: impl AsRef<Path>,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    let path = path.as_ref();
    if path.file_name().is_none() {
        return Err(Error::format(path, "not a file name"));
    }
    let tmp = temp_path(path);
    let result = (|| {
        let file = std::fs::File::create(&tmp)?;
        let mut w = std::io::BufWriter::new(file);
        fill(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Writes bytes atomically (see [`write_atomic`]).
pub fn write_bytes_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |w| w.write_all(bytes))
}

fn write_array<T: npyz::AutoSerialize + Copy>(
    path: &Path,
    data: &[T],
    shape: &[u64],
) -> Result<()> {
    write_atomic(path, |w| {
        let mut writer = npyz::WriteOptions::<T>::new()
            .default_dtype()
            .shape(shape)
            .writer(w)
            .begin_nd()?;
        writer.extend(data.iter().copied())?;
        writer.finish()
    })
}

/// Writes a row-major `rows × cols` float32 matrix atomically.
pub fn write_f32_matrix(
    path: impl AsRef<Path>,
    data: &[f32],
    rows: usize,
    cols: usize,
) -> Result<()> {
    if data.len() != rows * cols {
        return Err(Error::dim(
            "matrix to write (rows × cols)",
            rows * cols,
            data.len(),
        ));
    }
    write_array(path.as_ref(), data, &[rows as u64, cols as u64])
}

/// Writes a float32 vector atomically.
pub fn write_f32_vector(path: impl AsRef<Path>, data: &[f32]) -> Result<()> {
    write_array(path.as_ref(), data, &[data.len() as u64])
}

/// Writes an int64 vector atomically.
pub fn write_i64_vector(path: impl AsRef<Path>, data: &[i64]) -> Result<()> {
    write_array(path.as_ref(), data, &[data.len() as u64])
}

#[cfg(test)]
mod tests {
    use super::*;

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
