//! IDX files (the MNIST / Fashion-MNIST format), gzipped or raw.
//!
//! Layout: two zero bytes, a type byte (`0x08` = unsigned byte, the only type these data sets
//! use), the number of dimensions, each dimension as a big-endian `u32`, then the values in
//! row-major order. Images are `N × rows × cols`, labels `N`.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::{Dataset, ImageSource, Item, FASHION_MNIST_CLASSES};
use crate::error::{Error, Result};

/// A decoded IDX array of unsigned bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Decompresses when the bytes start with the gzip magic, else returns them as they are.
fn maybe_gunzip(path: &Path, bytes: Vec<u8>) -> Result<Vec<u8>> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&bytes[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::format(path, format!("corrupt gzip stream: {e}")))?;
        Ok(out)
    } else {
        Ok(bytes)
    }
}

/// Parses IDX bytes read from `path` (used in messages).
pub(crate) fn parse_idx(path: &Path, bytes: &[u8]) -> Result<IdxArray> {
    if bytes.len() < 4 {
        return Err(Error::format(
            path,
            format!(
                "{} bytes: too short for an IDX header (4 bytes of magic)",
                bytes.len()
            ),
        ));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(Error::format(
            path,
            format!(
                "bad IDX magic {:02x} {:02x} {:02x} {:02x}: expected 00 00 08 <ndim>",
                bytes[0], bytes[1], bytes[2], bytes[3]
            ),
        ));
    }
    if bytes[2] != 0x08 {
        return Err(Error::format(
            path,
            format!(
                "IDX element type 0x{:02x}: only unsigned bytes (0x08) are supported",
                bytes[2]
            ),
        ));
    }
    let ndim = bytes[3] as usize;
    if ndim == 0 {
        return Err(Error::format(path, "IDX header declares 0 dimensions"));
    }
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(Error::format(
            path,
            format!(
                "truncated IDX header: {} bytes, expected {header} for {ndim} dimensions",
                bytes.len()
            ),
        ));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| Error::format(path, format!("IDX dimensions {dims:?} overflow")))?;
    let expected = header + count;
    if bytes.len() != expected {
        let what = if bytes.len() < expected {
            "truncated"
        } else {
            "trailing data after the array in"
        };
        return Err(Error::format(
            path,
            format!(
                "{what} IDX file: {} bytes (decompressed), expected {expected} for dimensions {dims:?}",
                bytes.len()
            ),
        ));
    }
    Ok(IdxArray {
        dims,
        data: bytes[header..].to_vec(),
    })
}

/// Reads an IDX file of unsigned bytes (gzip detected from its magic bytes), checking the magic
/// and that the length is exactly what the dimensions promise.
pub fn read_idx(path: impl AsRef<Path>) -> Result<IdxArray> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bytes = maybe_gunzip(path, bytes)?;
    parse_idx(path, &bytes)
}

/// Builds a single-label data set from parsed image (`N × rows × cols`) and label (`N`) arrays.
/// Classes are `0..=max label`, named by their number.
pub(crate) fn idx_dataset(
    images_path: &Path,
    images: IdxArray,
    labels_path: &Path,
    labels: IdxArray,
) -> Result<Dataset> {
    if images.dims.len() != 3 {
        return Err(Error::format(
            images_path,
            format!(
                "IDX images have dimensions {:?}: expected 3 (count × rows × cols)",
                images.dims
            ),
        ));
    }
    if labels.dims.len() != 1 {
        return Err(Error::format(
            labels_path,
            format!(
                "IDX labels have dimensions {:?}: expected 1 (count)",
                labels.dims
            ),
        ));
    }
    let (n, h, w) = (images.dims[0], images.dims[1], images.dims[2]);
    if labels.dims[0] != n {
        return Err(Error::format(
            labels_path,
            format!(
                "{} labels for {n} images in {}",
                labels.dims[0],
                images_path.display()
            ),
        ));
    }
    if n == 0 {
        return Err(super::empty(format!("IDX file {}", images_path.display())));
    }
    if h == 0 || w == 0 {
        return Err(Error::format(
            images_path,
            format!("IDX images are {h}x{w}: expected positive sizes"),
        ));
    }
    let classes = labels
        .data
        .iter()
        .copied()
        .max()
        .map_or(0, |m| m as usize + 1);
    let items = images
        .data
        .chunks_exact(h * w)
        .zip(&labels.data)
        .map(|(px, &l)| Item {
            source: ImageSource::Memory {
                width: w,
                height: h,
                pixels: px.to_vec(),
            },
            labels: vec![l as usize],
            difficult: Vec::new(),
        })
        .collect();
    Ok(Dataset {
        class_names: (0..classes).map(|c| c.to_string()).collect(),
        items,
        multilabel: false,
        origin: Some(images_path.display().to_string()),
    })
}

/// Loads an IDX image file and its IDX label file (each gzipped or raw) as a single-label data
/// set of in-memory images. Classes are `0..=max label`, named by their number (see
/// [`Dataset::with_class_names`], or [`load_fashion_mnist`] for the named classes).
pub fn load_idx(images_path: impl AsRef<Path>, labels_path: impl AsRef<Path>) -> Result<Dataset> {
    let (ip, lp) = (images_path.as_ref(), labels_path.as_ref());
    idx_dataset(ip, read_idx(ip)?, lp, read_idx(lp)?)
}

/// First of `dir/<stem>.gz` and `dir/<stem>` that exists (the `.gz` name when neither does, so
/// the error names the usual file).
fn find(dir: &Path, stem: &str) -> PathBuf {
    let gz = dir.join(format!("{stem}.gz"));
    let raw = dir.join(stem);
    if !gz.exists() && raw.exists() {
        raw
    } else {
        gz
    }
}

/// Loads Fashion-MNIST (or MNIST, with other names) from a folder holding the four standard
/// files (`train-images-idx3-ubyte[.gz]`, `train-labels-idx1-ubyte[.gz]`, `t10k-...`), as
/// `(train, test)` with the ten Fashion-MNIST class names.
pub fn load_fashion_mnist(dir: impl AsRef<Path>) -> Result<(Dataset, Dataset)> {
    let dir = dir.as_ref();
    let names: Vec<String> = FASHION_MNIST_CLASSES
        .iter()
        .map(|s| s.to_string())
        .collect();
    let load = |split: &str| {
        let labels = find(dir, &format!("{split}-labels-idx1-ubyte"));
        let set = load_idx(find(dir, &format!("{split}-images-idx3-ubyte")), &labels)?;
        // A label beyond the ten classes is the label file's fault: name it.
        if let Some((i, l)) = set.items.iter().enumerate().find_map(|(i, it)| {
            it.labels
                .iter()
                .find(|&&l| l >= names.len())
                .map(|&l| (i, l))
        }) {
            return Err(Error::format(
                &labels,
                format!(
                    "label {l} of image {i}: expected 0 to {} (the ten Fashion-MNIST classes)",
                    names.len() - 1
                ),
            ));
        }
        set.with_class_names(names.clone())
    };
    Ok((load("train")?, load("t10k")?))
}
