//! Precomputed local descriptors: all images' rows in one `rows × dim` matrix, image `i` owning
//! rows `offsets[i]..offsets[i+1]`.
//!
//! On disk either one `.npy` matrix plus an int64 offsets `.npy` (`images + 1` entries, from 0,
//! non-decreasing, ending at the row count), or one `.npy` matrix per image (named in a list
//! file with labels, or all `*.npy` of a folder in name order).

use std::path::{Path, PathBuf};

use super::list::resolve_lists;
use super::{empty, Dataset, ImageSource, Item};
use crate::error::{check_finite, Error, Result};
use crate::npy;

/// Descriptors of a set of images, concatenated row-major.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Descriptors {
    /// `rows × dim`, row-major.
    pub data: Vec<f32>,
    pub dim: usize,
    /// `images + 1` non-decreasing row offsets, `offsets[0] = 0`, last = rows.
    pub offsets: Vec<usize>,
}

impl Descriptors {
    /// Builds and validates (see [`Descriptors::validate`]).
    pub fn new(data: Vec<f32>, dim: usize, offsets: Vec<usize>) -> Result<Self> {
        let d = Descriptors { data, dim, offsets };
        d.validate()?;
        Ok(d)
    }

    /// Checks `dim > 0`, that the data length is a multiple of `dim`, that the offsets
    /// partition the rows, and that every value is finite.
    pub fn validate(&self) -> Result<()> {
        self.check_layout()?;
        check_finite("descriptors", &self.data)
    }

    /// [`Descriptors::validate`] without the pass over the values (the fields are public: a
    /// caller may have built an inconsistent value, which would index out of range).
    pub fn check_layout(&self) -> Result<()> {
        if self.dim == 0 {
            return Err(Error::param("descriptor dim", 0, "at least 1"));
        }
        if !self.data.len().is_multiple_of(self.dim) {
            return Err(Error::dim(
                "descriptor data length (a multiple of dim)",
                self.dim,
                self.data.len(),
            ));
        }
        let rows = self.rows();
        match (self.offsets.first(), self.offsets.last()) {
            (Some(0), Some(&last)) if self.offsets.len() >= 2 && last == rows => {}
            _ => {
                return Err(Error::Invalid(format!(
                    "descriptor offsets must run from 0 to the row count {rows} with at least \
                     one image, got {} offsets starting {:?} and ending {:?}",
                    self.offsets.len(),
                    self.offsets.first(),
                    self.offsets.last()
                )))
            }
        }
        if let Some(i) = self.offsets.windows(2).position(|w| w[1] < w[0]) {
            return Err(Error::Invalid(format!(
                "descriptor offsets decrease at index {}: {} then {}",
                i + 1,
                self.offsets[i],
                self.offsets[i + 1]
            )));
        }
        Ok(())
    }

    /// Number of images.
    pub fn images(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// Total number of descriptor rows.
    pub fn rows(&self) -> usize {
        self.data.len() / self.dim.max(1)
    }

    /// The `n_i × dim` descriptors of image `i` (panics when `i ≥ images()`, like slice indexing).
    pub fn image(&self, i: usize) -> &[f32] {
        &self.data[self.offsets[i] * self.dim..self.offsets[i + 1] * self.dim]
    }

    /// Reads one `.npy` matrix (f32 or f64) and its int64 offsets `.npy`.
    pub fn from_npy(data_path: impl AsRef<Path>, offsets_path: impl AsRef<Path>) -> Result<Self> {
        let data_path = data_path.as_ref();
        let (data, rows, dim) = npy::read_f32_matrix(data_path)?;
        if dim == 0 {
            return Err(Error::format(
                data_path,
                "0 columns: expected a rows × dim matrix, dim ≥ 1",
            ));
        }
        npy::require_finite(data_path, &data, dim)?;
        let offsets = npy::read_usize_offsets(offsets_path, rows)?;
        Ok(Descriptors { data, dim, offsets })
    }

    /// Reads one `.npy` matrix per image (all with the same number of columns).
    pub fn from_npy_files(paths: &[PathBuf]) -> Result<Self> {
        if paths.is_empty() {
            return Err(empty("descriptor file list"));
        }
        let mut out = Descriptors {
            data: Vec::new(),
            dim: 0,
            offsets: vec![0],
        };
        for path in paths {
            let (data, rows, dim) = npy::read_f32_matrix(path)?;
            if rows == 0 {
                return Err(Error::format(
                    path,
                    "0 rows: each file holds one image's descriptors, at least one",
                ));
            }
            if out.dim == 0 {
                if dim == 0 {
                    return Err(Error::format(path, "0 columns: expected dim ≥ 1"));
                }
                out.dim = dim;
            } else if dim != out.dim {
                // A 1-D array reads as one column: say which file is the odd one out.
                let rank1 = |p: &Path| matches!(npy::header_shape(p).as_deref(), Some(&[_]));
                let note = if rank1(&paths[0]) {
                    format!(
                        " ({} holds a 1-D array, read as one descriptor value per row; save \
                         each image's descriptors as an N × D matrix)",
                        paths[0].display()
                    )
                } else if rank1(path) {
                    " (this file holds a 1-D array, read as one column; save each image's \
                     descriptors as an N × D matrix)"
                        .to_string()
                } else {
                    String::new()
                };
                return Err(Error::format(
                    path,
                    format!(
                        "{dim} column{}: expected {} like {}{note}",
                        if dim == 1 { "" } else { "s" },
                        out.dim,
                        paths[0].display()
                    ),
                ));
            }
            npy::require_finite(path, &data, dim)?;
            out.data.extend_from_slice(&data);
            out.offsets.push(out.offsets[out.offsets.len() - 1] + rows);
        }
        Ok(out)
    }

    /// Reads every `*.npy` directly in `dir`, in file-name order, one image each.
    pub fn from_folder(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let path = entry.map_err(|e| Error::io(dir, e))?.path();
            if path.is_file() && path.extension().is_some_and(|e| e == "npy") {
                paths.push(path);
            }
        }
        if paths.is_empty() {
            return Err(empty(format!(
                "descriptor folder {} (no .npy files)",
                dir.display()
            )));
        }
        paths.sort();
        Self::from_npy_files(&paths)
    }

    /// Reads per-image `.npy` files named in a list file (the format of
    /// [`super::load_list`]: `file.npy label [label ...]`, paths relative to the list), returning
    /// the descriptors and a data set whose items are those files with their labels.
    pub fn from_list(
        list: impl AsRef<Path>,
        classes: Option<&[String]>,
    ) -> Result<(Self, Dataset)> {
        let list = list.as_ref();
        let mut resolved = resolve_lists(&[list], classes)?;
        let entries = resolved.lists.remove(0);
        let paths: Vec<PathBuf> = entries.iter().map(|(p, _)| p.clone()).collect();
        let descriptors = Self::from_npy_files(&paths)?;
        let items = entries
            .into_iter()
            .map(|(path, labels)| Item {
                source: ImageSource::File(path),
                labels,
                difficult: Vec::new(),
            })
            .collect();
        Ok((
            descriptors,
            Dataset {
                class_names: resolved.classes,
                items,
                multilabel: resolved.multilabel,
                origin: None,
            },
        ))
    }

    /// Writes the matrix and its int64 offsets as two `.npy` files, both or neither
    /// ([`npy::FileGroup`]).
    pub fn save_npy(
        &self,
        data_path: impl AsRef<Path>,
        offsets_path: impl AsRef<Path>,
    ) -> Result<()> {
        let mut files = npy::FileGroup::new();
        self.stage_npy(&mut files, data_path, offsets_path)?;
        files.commit()
    }

    /// [`save_npy`](Self::save_npy) into a group of files that the caller commits with others.
    pub fn stage_npy(
        &self,
        files: &mut npy::FileGroup,
        data_path: impl AsRef<Path>,
        offsets_path: impl AsRef<Path>,
    ) -> Result<()> {
        self.validate()?;
        files.f32_matrix(data_path, &self.data, self.rows(), self.dim)?;
        let offsets: Vec<i64> = self.offsets.iter().map(|&o| o as i64).collect();
        files.i64_vector(offsets_path, &offsets)
    }
}
