//! Image data sets and precomputed descriptors: what the pipeline trains and evaluates on.
//!
//! A [`Dataset`] is a list of [`Item`]s (an image, on disk or in memory, with its class indices)
//! and the class names. Loaders:
//!
//! | layout | function |
//! |---|---|
//! | `root/<class>/*.{png,jpg,jpeg,bmp,pgm,ppm,…}` ([`IMAGE_EXTENSIONS`]; classes sorted by name) | [`load_folder`], [`load_folder_splits`] |
//! | list file: `path label [label ...]` per line | [`load_list`], [`load_list_splits`] |
//! | PASCAL VOC devkit (`ImageSets/Main`, `JPEGImages`) | [`load_voc`], [`load_voc_with`] |
//! | IDX (MNIST, Fashion-MNIST), gzipped or raw | [`load_idx`], [`load_fashion_mnist`] |
//! | the embedded Fashion-MNIST subset | [`embedded_fashion_mnist`] |
//! | precomputed descriptors (`.npy`) | [`Descriptors`] |
//!
//! File-backed loaders check that every image exists and has a readable header; what happens
//! to one that does not is chosen by [`OnError`]: fail with its path, or skip it and report how
//! many were skipped. Full decoding happens in [`Dataset::load_gray`] (errors name the file), or
//! up front with [`Dataset::retain_decodable`].

mod descriptors;
mod embedded;
mod folder;
mod idx;
mod list;
pub(crate) mod split;
mod voc;

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::sift::GrayImage;
use crate::svm::Labels;

pub use descriptors::Descriptors;
pub use embedded::embedded_fashion_mnist;
pub use folder::{image_files, load_folder, load_folder_splits, load_folder_with, FolderImages};
pub use idx::{load_fashion_mnist, load_idx, read_idx, IdxArray};
pub use list::{
    classes_beside, fits_a_class_line, list_paths, load_list, load_list_splits, load_list_with,
};
pub use split::{stratified_split, Split};
pub use voc::{load_voc, load_voc_with, VocData, VocDifficult, VocOptions, VOC_CLASSES};

/// The ten Fashion-MNIST class names, in label order.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// File extensions (lower case) recognised as images by the folder loader.
pub const IMAGE_EXTENSIONS: [&str; 10] = [
    "png", "jpg", "jpeg", "bmp", "pgm", "ppm", "pbm", "pnm", "jpe", "jfif",
];

/// What a loader does with an image it cannot use (missing, unreadable, corrupt).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnError {
    /// Stop with an error naming the file.
    #[default]
    Fail,
    /// Leave the item out, log it, and count it in the returned skip count.
    Skip,
}

/// Where an image's pixels come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageSource {
    /// An image file, decoded on demand (any format the `image` crate reads).
    File(PathBuf),
    /// An 8-bit grey image held in memory, `height × width` row-major.
    Memory {
        width: usize,
        height: usize,
        pixels: Vec<u8>,
    },
}

/// One image and its class indices (exactly one for single-label data sets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub source: ImageSource,
    pub labels: Vec<usize>,
    /// Classes the image is marked "difficult" for (PASCAL VOC flag 0): evaluation leaves the
    /// image out of those classes' AP, as the VOC protocol does. Empty for other formats.
    pub difficult: Vec<usize>,
}

/// A labelled image collection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dataset {
    /// Class `c` is named `class_names[c]`.
    pub class_names: Vec<String>,
    pub items: Vec<Item>,
    /// Whether items may carry several labels (then `labels()` is [`crate::svm::Labels::MultiLabel`]).
    pub multilabel: bool,
    /// Where in-memory images come from (an IDX file, the embedded subset), named in errors
    /// about them; `None` for files, which are named themselves.
    pub origin: Option<String>,
}

/// An 8-bit grey image decoded from an [`ImageSource`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrayU8 {
    pub width: usize,
    pub height: usize,
    /// `height × width`, row-major.
    pub pixels: Vec<u8>,
}

impl ImageSource {
    /// Decodes the image to grey in `[0, 1]`: files through [`GrayImage::from_dynamic`] (so
    /// 16-bit and float images keep their precision), 8-bit memory images divided by 255.
    pub fn load_gray(&self) -> Result<GrayImage> {
        match self {
            ImageSource::File(path) => Ok(GrayImage::from_dynamic(&open_image(path)?)),
            ImageSource::Memory {
                width,
                height,
                pixels,
            } => GrayImage::from_u8(*width, *height, pixels),
        }
    }

    /// A short description for messages: the path, or `memory image`.
    pub fn describe(&self) -> String {
        match self {
            ImageSource::File(p) => p.display().to_string(),
            ImageSource::Memory { width, height, .. } => format!("memory image {width}x{height}"),
        }
    }

    /// Decodes the image to 8-bit grey (luma, as the `image` crate converts colour).
    pub fn decode_u8(&self) -> Result<GrayU8> {
        match self {
            ImageSource::File(path) => {
                let luma = open_image(path)?.to_luma8();
                Ok(GrayU8 {
                    width: luma.width() as usize,
                    height: luma.height() as usize,
                    pixels: luma.into_raw(),
                })
            }
            ImageSource::Memory {
                width,
                height,
                pixels,
            } => {
                if width.checked_mul(*height) != Some(pixels.len()) {
                    return Err(Error::dim(
                        format!("pixels of a {width}x{height} memory image"),
                        width.saturating_mul(*height),
                        pixels.len(),
                    ));
                }
                Ok(GrayU8 {
                    width: *width,
                    height: *height,
                    pixels: pixels.clone(),
                })
            }
        }
    }
}

/// Opens and decodes an image file (format guessed from its content); errors name the file.
fn open_image(path: &Path) -> Result<image::DynamicImage> {
    use image::ImageDecoder;
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let reader = image::ImageReader::new(std::io::Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?;
    let jpeg = reader.format() == Some(image::ImageFormat::Jpeg);
    let cannot = |e: image::ImageError| match e {
        // Name the size the header declares, and the limit.
        image::ImageError::Limits(_) => {
            let size = image::ImageReader::new(std::io::Cursor::new(&bytes))
                .with_guessed_format()
                .ok()
                .and_then(|r| r.into_dimensions().ok())
                .map_or(String::new(), |(w, h)| format!("a {w}x{h} image: "));
            Error::format(
                path,
                format!(
                    "cannot decode image: {size}its decoded pixels would take more memory \
                     than the decoder's limit of 512 MiB"
                ),
            )
        }
        e => Error::format(path, format!("cannot decode image: {e}")),
    };
    let mut decoder = reader.into_decoder().map_err(cannot)?;
    // What `ImageReader::decode` checks before allocating (its default limits, 512 MiB).
    image::Limits::default()
        .reserve(decoder.total_bytes())
        .map_err(cannot)?;
    let orientation = decoder.orientation().ok();
    let decoded = image::DynamicImage::from_decoder(decoder).map_err(cannot)?;
    if let Some(o) = orientation.filter(|&o| o != image::metadata::Orientation::NoTransforms) {
        // The pixels are used as stored, as MATLAB's imread gives them to VLFeat: dense SIFT
        // of a photo whose camera only tagged it as turned sees it turned. Said once per run.
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            tracing::warn!(
                "{}: its EXIF orientation ({o:?}) is not applied: descriptors are computed on \
                 the pixels as stored (as VLFeat does with MATLAB's imread); other images may \
                 carry one too. Turn such images upright first (e.g. `mogrify -auto-orient`) \
                 if their content should be seen upright",
                path.display()
            );
        });
    }
    if jpeg && !jpeg_reaches_its_end(&bytes) {
        // The decoder fills what is missing with grey without a word; libjpeg (MATLAB's
        // imread) warns "premature end of JPEG file" and goes on, and so does this, once per
        // file (an image is decoded more than once: PCA sample, extraction).
        static WARNED: std::sync::LazyLock<std::sync::Mutex<std::collections::HashSet<PathBuf>>> =
            std::sync::LazyLock::new(Default::default);
        let first = WARNED
            .lock()
            .map(|mut w| w.insert(path.to_path_buf()))
            .unwrap_or(true);
        if first {
            tracing::warn!(
                "{}: the JPEG data ends before its end-of-image marker (a truncated file?): \
                 the missing part of the image is filled in",
                path.display()
            );
        }
    }
    Ok(decoded)
}

/// Whether JPEG `bytes` reach their end-of-image marker: walks the segments from the start
/// (lengths of the marker segments, the entropy-coded data of each scan up to the next
/// marker), so that data appended after the image (a "motion photo's" video) is never
/// mistaken for it, and an embedded thumbnail's marker, inside its segment, is skipped.
fn jpeg_reaches_its_end(b: &[u8]) -> bool {
    if !b.starts_with(&[0xFF, 0xD8]) {
        return true;
    }
    let mut i = 2;
    loop {
        // The next marker: 0xFF (fill bytes allowed), then its code.
        match b[i.min(b.len())..].iter().position(|&v| v == 0xFF) {
            Some(p) => i += p,
            None => return false,
        }
        while i < b.len() && b[i] == 0xFF {
            i += 1;
        }
        let Some(&code) = b.get(i) else { return false };
        i += 1;
        match code {
            0xD9 => return true,
            0xD0..=0xD7 | 0x01 => {}
            _ => {
                let Some(len) = b.get(i..i + 2).map(|l| u16::from_be_bytes([l[0], l[1]])) else {
                    return false;
                };
                i += len as usize;
                if code == 0xDA {
                    // Entropy-coded data: up to a 0xFF that is neither stuffed (0xFF 0x00)
                    // nor a restart marker.
                    loop {
                        match b[i.min(b.len())..].iter().position(|&v| v == 0xFF) {
                            Some(p) => i += p,
                            None => return false,
                        }
                        match b.get(i + 1) {
                            None => return false,
                            Some(0x00 | 0xD0..=0xD7) => i += 2,
                            Some(_) => break,
                        }
                    }
                }
            }
        }
    }
}

/// Checks that `path` exists and has a readable image header (cheap: the pixels are not
/// decoded). Returns the reason when it does not.
pub(crate) fn check_image_header(path: &Path) -> std::result::Result<(), String> {
    let reader = image::ImageReader::open(path)
        .map_err(|e| format!("cannot open: {e}"))?
        .with_guessed_format()
        .map_err(|e| format!("cannot read: {e}"))?;
    if reader.format().is_none() {
        return Err("not a recognised image format".into());
    }
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| format!("unreadable image header: {e}"))?;
    if w == 0 || h == 0 {
        return Err(format!("empty image ({w}x{h})"));
    }
    Ok(())
}

/// Applies `policy` to image files: checks every header (in parallel) and returns which to keep
/// and how many were skipped; with `Fail`, the first bad file is an error naming it.
pub(crate) fn check_files(paths: &[&Path], policy: OnError) -> Result<(Vec<bool>, usize)> {
    let checks: Vec<std::result::Result<(), String>> =
        paths.par_iter().map(|p| check_image_header(p)).collect();
    let mut keep = Vec::with_capacity(paths.len());
    let mut skipped = 0;
    for (path, check) in paths.iter().zip(checks) {
        match (check, policy) {
            (Ok(()), _) => keep.push(true),
            (Err(reason), OnError::Fail) => return Err(Error::format(path, reason)),
            (Err(reason), OnError::Skip) => {
                tracing::warn!("skipping {}: {reason}", path.display());
                keep.push(false);
                skipped += 1;
            }
        }
    }
    Ok((keep, skipped))
}

/// [`check_files`] on `(path, labels)` candidates, returning the items kept.
pub(crate) fn checked_items(
    candidates: Vec<(PathBuf, Vec<usize>)>,
    policy: OnError,
) -> Result<(Vec<Item>, usize)> {
    let paths: Vec<&Path> = candidates.iter().map(|(p, _)| p.as_path()).collect();
    let (keep, skipped) = check_files(&paths, policy)?;
    let items = candidates
        .into_iter()
        .zip(keep)
        .filter(|(_, k)| *k)
        .map(|((path, labels), _)| Item {
            source: ImageSource::File(path),
            labels,
            difficult: Vec::new(),
        })
        .collect();
    Ok((items, skipped))
}

impl Dataset {
    /// Builds a data set, checking that every label names a class and single-label items have
    /// exactly one label.
    pub fn new(class_names: Vec<String>, items: Vec<Item>, multilabel: bool) -> Result<Self> {
        let ds = Dataset {
            class_names,
            items,
            multilabel,
            origin: None,
        };
        ds.validate()?;
        Ok(ds)
    }

    /// Checks the invariants listed at [`Dataset::new`].
    pub fn validate(&self) -> Result<()> {
        let c = self.class_names.len();
        for (i, item) in self.items.iter().enumerate() {
            if !self.multilabel && item.labels.len() != 1 {
                return Err(Error::Invalid(format!(
                    "item {i} ({}) has {} labels: a single-label data set needs exactly one",
                    self.describe_item(i),
                    item.labels.len()
                )));
            }
            if let Some(&l) = item.labels.iter().find(|&&l| l >= c) {
                return Err(Error::Invalid(format!(
                    "item {i} ({}) has label {l}, but there are only {c} classes",
                    self.describe_item(i)
                )));
            }
            if let Some(&l) = item.difficult.iter().find(|&&l| l >= c) {
                return Err(Error::Invalid(format!(
                    "item {i} ({}) is marked difficult for class {l}, but there are only {c} \
                     classes",
                    self.describe_item(i)
                )));
            }
        }
        Ok(())
    }

    /// `n × C` row-major: whether item `i` is marked difficult for class `c`
    /// ([`Item::difficult`]), for [`crate::pipeline::evaluate_ignoring`]; `None` when no item
    /// is (every format but VOC).
    pub fn difficult_mask(&self) -> Option<Vec<bool>> {
        if self.items.iter().all(|item| item.difficult.is_empty()) {
            return None;
        }
        let classes = self.classes();
        let mut mask = vec![false; self.len() * classes];
        for (row, item) in mask.chunks_exact_mut(classes.max(1)).zip(&self.items) {
            for &l in &item.difficult {
                if let Some(m) = row.get_mut(l) {
                    *m = true;
                }
            }
        }
        Some(mask)
    }

    /// What item `i` is: its file, or an in-memory image with where it comes from.
    fn describe_item(&self, i: usize) -> String {
        let source = self.items[i].source.describe();
        match (&self.items[i].source, &self.origin) {
            (ImageSource::Memory { .. }, Some(origin)) => format!("{source} of {origin}"),
            _ => source,
        }
    }

    /// Item `i` for messages: an image file by its path, an image held in memory (from an
    /// IDX file or the embedded set) by its index in the data set, which is all that tells
    /// it from the others, and the file it comes from when known.
    pub fn item_name(&self, i: usize) -> String {
        match &self.items[i].source {
            ImageSource::File(p) => p.display().to_string(),
            source => match &self.origin {
                Some(origin) => format!("image {i} of {origin} ({})", source.describe()),
                None => format!("image {i} ({})", source.describe()),
            },
        }
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether there are no items.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.class_names.len()
    }

    /// The first label of every item (the class of a single-label data set).
    pub fn first_labels(&self) -> Vec<usize> {
        self.items
            .iter()
            .map(|it| it.labels.first().copied().unwrap_or(0))
            .collect()
    }

    /// The labels in the form the SVM and metrics take: [`Labels::MultiClass`] (each item's
    /// label) for a single-label data set, [`Labels::MultiLabel`] (`n × C` membership) for a
    /// multi-label one. Assumes the invariants of [`Dataset::validate`]; a label that names no
    /// class is left out.
    pub fn labels(&self) -> Labels {
        let classes = self.classes();
        if self.multilabel {
            let mut targets = vec![false; self.len() * classes];
            for (row, item) in targets.chunks_exact_mut(classes.max(1)).zip(&self.items) {
                for &l in &item.labels {
                    if let Some(t) = row.get_mut(l) {
                        *t = true;
                    }
                }
            }
            Labels::MultiLabel { targets, classes }
        } else {
            Labels::MultiClass {
                labels: self.first_labels(),
                classes,
            }
        }
    }

    /// Items per class (an item with several labels counts once for each).
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes()];
        for item in &self.items {
            for &l in &item.labels {
                if let Some(n) = counts.get_mut(l) {
                    *n += 1;
                }
            }
        }
        counts
    }

    /// Replaces the class names (e.g. the Fashion-MNIST names for an IDX file, whose labels are
    /// bare numbers). There must be at least as many names as the largest label + 1.
    pub fn with_class_names(mut self, names: Vec<String>) -> Result<Self> {
        self.class_names = names;
        self.validate()?;
        Ok(self)
    }

    /// A data set of the items at `indices` (in that order), same classes.
    pub fn subset(&self, indices: &[usize]) -> Result<Self> {
        let items = indices
            .iter()
            .map(|&i| {
                self.items
                    .get(i)
                    .cloned()
                    .ok_or_else(|| Error::param("subset index", i, format!("< {}", self.len())))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Dataset {
            class_names: self.class_names.clone(),
            items,
            multilabel: self.multilabel,
            origin: self.origin.clone(),
        })
    }

    /// Decodes item `i` to 8-bit grey; errors name the file.
    pub fn load_u8(&self, i: usize) -> Result<GrayU8> {
        self.items
            .get(i)
            .ok_or_else(|| Error::param("item index", i, format!("< {}", self.len())))?
            .source
            .decode_u8()
    }

    /// Decodes item `i` to grey in `[0, 1]` (see [`ImageSource::load_gray`]); errors name the file.
    pub fn load_gray(&self, i: usize) -> Result<GrayImage> {
        self.items
            .get(i)
            .ok_or_else(|| Error::param("item index", i, format!("< {}", self.len())))?
            .source
            .load_gray()
    }

    /// Decodes every image (in parallel) and keeps those that decode: `Fail` returns the first
    /// failure (with its path), `Skip` drops failures and returns how many were dropped.
    pub fn retain_decodable(&self, policy: OnError) -> Result<(Dataset, usize)> {
        let results: Vec<Result<()>> = self
            .items
            .par_iter()
            .map(|it| it.source.decode_u8().map(|_| ()))
            .collect();
        let mut items = Vec::with_capacity(self.len());
        let mut skipped = 0;
        for (item, r) in self.items.iter().zip(results) {
            match (r, policy) {
                (Ok(()), _) => items.push(item.clone()),
                (Err(e), OnError::Fail) => return Err(e),
                (Err(e), OnError::Skip) => {
                    tracing::warn!("skipping {e}");
                    skipped += 1;
                }
            }
        }
        Ok((
            Dataset {
                class_names: self.class_names.clone(),
                items,
                multilabel: self.multilabel,
                origin: self.origin.clone(),
            },
            skipped,
        ))
    }
}

/// Error for a split or data set that ended up with no items.
pub(crate) fn empty(what: impl std::fmt::Display) -> Error {
    Error::Empty {
        what: what.to_string(),
    }
}
