//! Image-folder layout: `root/<class>/<image>`, one sub-folder per class.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::{checked_items, empty, Dataset, OnError, Split, IMAGE_EXTENSIONS};
use crate::error::{Error, Result};

/// Entries of `dir` sorted by file name; hidden entries (leading `.`) are left out.
fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        if !entry.file_name().to_string_lossy().starts_with('.') {
            entries.push(entry.path());
        }
    }
    entries.sort();
    Ok(entries)
}

/// Class folder names directly under `root`, sorted. A name that is not UTF-8 cannot be a
/// class name (model files and reports store them as text): an error naming the folder.
fn class_dirs(root: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for dir in sorted_entries(root)?.into_iter().filter(|p| p.is_dir()) {
        match dir.file_name().and_then(|n| n.to_str()) {
            Some(name) => names.push(name.to_string()),
            None => {
                return Err(Error::format(
                    &dir,
                    "class folder name is not valid UTF-8: class names are stored as text, \
                     rename the folder",
                ))
            }
        }
    }
    Ok(names)
}

/// The error for a folder without class sub-folders, with a hint when what it holds looks like
/// another layout (IDX files, images directly in the folder).
fn no_class_folders(root: &Path) -> Error {
    let files = sorted_entries(root).unwrap_or_default();
    let name_has = |p: &PathBuf, part: &str| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().contains(part))
    };
    let hint = if files.iter().any(|p| name_has(p, "-ubyte")) {
        format!(
            "; it holds IDX files: use --fashion-mnist {} (train-* and t10k-* files), or \
             --format idx --data IMAGES --labels LABELS",
            root.display()
        )
    } else if files.iter().any(|p| has_image_extension(p)) {
        format!(
            "; it holds images directly: move them into one sub-folder per class, e.g. \
             {}/cat/1.jpg, or list them with their labels in a list file (--format list)",
            root.display()
        )
    } else {
        String::new()
    };
    Error::format(
        root,
        format!(
            "no class sub-folders (a folder data set has one sub-folder of images per class, \
             e.g. {}/cat/1.jpg){hint}",
            root.display()
        ),
    )
}

/// Whether `path` is named as an image of a format that folder data sets do not read.
fn has_other_image_extension(path: &Path) -> bool {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .is_some_and(|e| {
            [
                "gif", "tif", "tiff", "webp", "tga", "avif", "heic", "heif", "jxl", "jp2", "ico",
            ]
            .contains(&e.as_str())
        })
}

/// What a folder of unlabelled images holds ([`image_files`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FolderImages {
    /// The entries named as images ([`IMAGE_EXTENSIONS`], in any case), sorted by name.
    pub images: Vec<PathBuf>,
    /// The folders in it (not searched), sorted by name.
    pub folders: Vec<PathBuf>,
    /// Files of other image formats (GIF, TIFF, WebP, …), not read, as in a class folder.
    pub other_formats: Vec<PathBuf>,
}

/// The entries directly in `dir`, hidden ones (starting with `.`) left out: a folder of
/// unlabelled images, as `dfk predict` takes.
pub fn image_files(dir: &Path) -> Result<FolderImages> {
    let mut found = FolderImages::default();
    for p in sorted_entries(dir)? {
        if p.is_dir() {
            found.folders.push(p);
        } else if has_image_extension(&p) {
            found.images.push(p);
        } else if has_other_image_extension(&p) {
            found.other_formats.push(p);
        }
    }
    Ok(found)
}

/// Whether `path` is named as an image (by its extension, in any case).
fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str()))
}

/// Collects the images of `root/<class>/` for the given class list (a class folder that is
/// absent contributes nothing; one without any image file is [`Error::Empty`] naming it, since
/// it would otherwise become a class without samples, or a folder written into the data
/// folder, such as a report, would silently become a class).
fn collect(root: &Path, classes: &[String], policy: OnError) -> Result<(Dataset, usize)> {
    let mut candidates = Vec::new();
    let mut not_files = 0;
    for (c, name) in classes.iter().enumerate() {
        let dir = root.join(name);
        if !dir.is_dir() {
            continue;
        }
        let (before, not_files_before) = (candidates.len(), not_files);
        let found = image_files(&dir)?;
        // Folders are not searched, and only the listed formats are read: say so for what
        // looks like data (a nested folder, another image format).
        let mut ignored = [&found.folders[..], &found.other_formats[..]].concat();
        ignored.sort();
        for path in found.images {
            if path.is_file() {
                candidates.push((path, vec![c]));
                continue;
            }
            // Named as an image but not a readable regular file: a broken or looping symbolic
            // link, a FIFO (reading it would block), a device.
            let what = "not a regular file (a broken or looping symbolic link, a FIFO or a \
                        device): expected an image file";
            match policy {
                OnError::Fail => return Err(Error::format(&path, what)),
                OnError::Skip => {
                    tracing::warn!("skipping {}: {what}", path.display());
                    not_files += 1;
                }
            }
        }
        if let Some(first) = ignored.first() {
            tracing::warn!(
                "{}: {} entr{} not read ({}{}): only {} files directly in a class folder are \
                 images of its class",
                dir.display(),
                ignored.len(),
                if ignored.len() == 1 { "y" } else { "ies" },
                first.display(),
                if ignored.len() > 1 { ", …" } else { "" },
                IMAGE_EXTENSIONS.join("/")
            );
        }
        if candidates.len() == before && not_files == not_files_before {
            if !found.folders.is_empty() {
                // Likely a `train/<class>`, `test/<class>` layout read one level too high.
                return Err(empty(format!(
                    "class folder {} (it holds folders but no {} file: a class folder holds \
                     its images directly; for a layout of splits such as {}/train/<class> and \
                     {}/test/<class>, give --data {}/train, and evaluate on the other split)",
                    dir.display(),
                    IMAGE_EXTENSIONS.join("/"),
                    root.display(),
                    root.display(),
                    root.display()
                )));
            }
            return Err(empty(format!(
                "class folder {} (it holds no {} file; every sub-folder of {} is read as a \
                 class, except hidden ones starting with `.`: add images to it, or move it out)",
                dir.display(),
                IMAGE_EXTENSIONS.join("/"),
                root.display()
            )));
        }
    }
    if candidates.is_empty() {
        return Err(empty(format!(
            "image folder {} (no {} files in its class folders)",
            root.display(),
            IMAGE_EXTENSIONS.join("/")
        )));
    }
    let (items, skipped) = checked_items(candidates, policy)?;
    let skipped = skipped + not_files;
    if items.is_empty() {
        return Err(empty(format!(
            "image folder {} after skipping {skipped} unreadable images",
            root.display()
        )));
    }
    Ok((
        Dataset {
            class_names: classes.to_vec(),
            items,
            multilabel: false,
            origin: None,
        },
        skipped,
    ))
}

/// Loads `root/<class>/*.{png,jpg,jpeg,bmp,pgm,ppm,…}` ([`IMAGE_EXTENSIONS`], in any case): classes are the
/// sub-folders sorted by name, images within a class sorted by name. Every image's header is
/// checked; `policy` decides whether a bad one fails the load or is skipped (the count of
/// skipped images is returned). No class folder is [`Error::Format`] naming `root`; a class
/// folder without an image file (named), or no image at all, is [`Error::Empty`].
pub fn load_folder_with(root: impl AsRef<Path>, policy: OnError) -> Result<(Dataset, usize)> {
    let root = root.as_ref();
    let classes = class_dirs(root)?;
    if classes.is_empty() {
        return Err(no_class_folders(root));
    }
    collect(root, &classes, policy)
}

/// [`load_folder_with`] with [`OnError::Fail`].
pub fn load_folder(root: impl AsRef<Path>) -> Result<Dataset> {
    Ok(load_folder_with(root, OnError::Fail)?.0)
}

/// Loads explicit splits `root/train/<class>/...`, and `root/val/...`, `root/test/...` when
/// present. The classes are the sorted union of the class folders of all splits, so labels
/// agree across splits. A split folder without images is [`Error::Empty`]. Returns the splits
/// and the total number of skipped images.
pub fn load_folder_splits(root: impl AsRef<Path>, policy: OnError) -> Result<(Split, usize)> {
    let root = root.as_ref();
    let train_dir = root.join("train");
    if !train_dir.is_dir() {
        return Err(Error::io(
            &train_dir,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "expected a train/ folder with one sub-folder per class",
            ),
        ));
    }
    let dirs: Vec<PathBuf> = ["train", "val", "test"]
        .iter()
        .map(|s| root.join(s))
        .filter(|p| p.is_dir())
        .collect();
    let mut classes = BTreeSet::new();
    for dir in &dirs {
        classes.extend(class_dirs(dir)?);
    }
    if classes.is_empty() {
        return Err(no_class_folders(&train_dir));
    }
    let classes: Vec<String> = classes.into_iter().collect();
    let mut skipped = 0;
    let mut load = |name: &str| -> Result<Option<Dataset>> {
        let dir = root.join(name);
        if !dir.is_dir() {
            return Ok(None);
        }
        let (ds, s) = collect(&dir, &classes, policy)?;
        skipped += s;
        Ok(Some(ds))
    };
    let train = load("train")?.ok_or_else(|| empty("train split"))?;
    let val = load("val")?;
    let test = load("test")?;
    Ok((Split { train, val, test }, skipped))
}
