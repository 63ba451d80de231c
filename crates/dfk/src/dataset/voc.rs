//! PASCAL VOC devkit layout (VOC 2007 classification): 20 classes, multi-label.
//!
//! `root` is the year folder (e.g. `VOCdevkit/VOC2007`) holding
//! `ImageSets/Main/<class>_<split>.txt` (lines `<image id> <flag>`, flag 1 = present, −1 =
//! absent, 0 = present but only as "difficult" objects), optionally `ImageSets/Main/<split>.txt`
//! (the image ids of the split, in order), and `JPEGImages/<id>.jpg`.
//!
//! Difficult (flag 0) labels: the official VOC evaluation ignores an image for a class where it
//! is difficult. [`crate::svm::Labels`] has no "ignore" value, so [`VocOptions::difficult`]
//! decides how they enter the labels, and [`VocData::difficult`] keeps the mask so an evaluation
//! can leave them out as VOC does.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{check_files, empty, Dataset, ImageSource, Item, OnError};
use crate::error::{Error, Result};

/// The 20 VOC classes in the devkit's order.
pub const VOC_CLASSES: [&str; 20] = [
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
];

/// How difficult (flag 0) labels enter [`Dataset`] labels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VocDifficult {
    /// The object is in the image, so the image is a positive for the class (default).
    #[default]
    Positive,
    /// Only clearly visible objects count: the image is a negative for the class.
    Negative,
}

/// Options of [`load_voc_with`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VocOptions {
    pub difficult: VocDifficult,
    /// What to do with an image file that is missing or unreadable.
    pub on_error: OnError,
}

/// A loaded VOC split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VocData {
    /// Multi-label data set over [`VOC_CLASSES`].
    pub dataset: Dataset,
    /// `n × 20` row-major: image `i` is difficult (flag 0) for class `c`.
    pub difficult: Vec<bool>,
    /// The ids of the images kept, in order.
    pub ids: Vec<String>,
    /// Images left out under [`OnError::Skip`].
    pub skipped: usize,
}

fn read_lines(path: &Path) -> Result<Vec<(usize, String)>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    Ok(text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim().to_string()))
        .filter(|(_, l)| !l.is_empty())
        .collect())
}

/// Parses `<class>_<split>.txt` into id → flag.
fn read_class_file(path: &Path) -> Result<Vec<(String, i8)>> {
    read_lines(path)?
        .into_iter()
        .map(|(n, line)| {
            let mut t = line.split_whitespace();
            let (Some(id), Some(flag), None) = (t.next(), t.next(), t.next()) else {
                return Err(Error::format(
                    path,
                    format!("line {n}: `{line}`: expected `<image id> <1|-1|0>`"),
                ));
            };
            match flag.parse::<i8>() {
                Ok(f @ -1..=1) => Ok((id.to_string(), f)),
                _ => Err(Error::format(
                    path,
                    format!("line {n}: flag `{flag}`: expected 1, -1 or 0"),
                )),
            }
        })
        .collect()
}

/// Loads split `split` (`train`, `val`, `trainval`, `test`) of the VOC devkit folder `root`.
pub fn load_voc_with(root: impl AsRef<Path>, split: &str, options: VocOptions) -> Result<VocData> {
    let root = root.as_ref();
    let main = root.join("ImageSets").join("Main");
    if !main.is_dir() && root.is_dir() {
        // The devkit's top folder instead of a year folder inside it, say.
        let years: Vec<String> = std::fs::read_dir(root)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.path().join("ImageSets").join("Main").is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let hint = match years.first() {
            Some(y) => format!(": give the year folder, e.g. {}", root.join(y).display()),
            None => String::new(),
        };
        return Err(Error::format(
            root,
            format!("not a VOC year folder (expected ImageSets/Main inside it){hint}"),
        ));
    }
    let c = VOC_CLASSES.len();
    let mut flags: Vec<HashMap<String, i8>> = Vec::with_capacity(c);
    let mut first_order = Vec::new();
    for (k, class) in VOC_CLASSES.iter().enumerate() {
        let path = main.join(format!("{class}_{split}.txt"));
        let entries = read_class_file(&path)?;
        if k == 0 {
            first_order = entries.iter().map(|(id, _)| id.clone()).collect();
        }
        flags.push(entries.into_iter().collect());
    }
    let split_file = main.join(format!("{split}.txt"));
    let ids: Vec<String> = if split_file.is_file() {
        read_lines(&split_file)?
            .into_iter()
            .map(|(_, l)| l.split_whitespace().next().unwrap_or_default().to_string())
            .collect()
    } else {
        first_order
    };
    if ids.is_empty() {
        return Err(empty(format!("VOC split `{split}` in {}", main.display())));
    }

    let mut labels = Vec::with_capacity(ids.len());
    let mut difficult = Vec::with_capacity(ids.len() * c);
    for id in &ids {
        let mut item = Vec::new();
        for (k, class) in VOC_CLASSES.iter().enumerate() {
            let flag = *flags[k].get(id).ok_or_else(|| {
                Error::format(
                    main.join(format!("{class}_{split}.txt")),
                    format!("image {id} of split `{split}` has no line"),
                )
            })?;
            difficult.push(flag == 0);
            if flag == 1 || (flag == 0 && options.difficult == VocDifficult::Positive) {
                item.push(k);
            }
        }
        labels.push(item);
    }

    let images = root.join("JPEGImages");
    let paths: Vec<PathBuf> = ids
        .iter()
        .map(|id| images.join(format!("{id}.jpg")))
        .collect();
    let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    let (keep, skipped) = check_files(&refs, options.on_error)?;
    let mut items = Vec::with_capacity(ids.len());
    let mut kept_ids = Vec::with_capacity(ids.len());
    let mut kept_difficult = Vec::with_capacity(difficult.len());
    for (i, ((path, labels), k)) in paths.into_iter().zip(labels).zip(keep).enumerate() {
        if k {
            items.push(Item {
                source: ImageSource::File(path),
                labels,
                difficult: (0..c).filter(|&k| difficult[i * c + k]).collect(),
            });
            kept_ids.push(ids[i].clone());
            kept_difficult.extend_from_slice(&difficult[i * c..(i + 1) * c]);
        }
    }
    if items.is_empty() {
        return Err(empty(format!(
            "VOC split `{split}` after skipping {skipped} missing or unreadable images"
        )));
    }
    Ok(VocData {
        dataset: Dataset {
            class_names: VOC_CLASSES.iter().map(|s| s.to_string()).collect(),
            items,
            multilabel: true,
            origin: None,
        },
        difficult: kept_difficult,
        ids: kept_ids,
        skipped,
    })
}

/// [`load_voc_with`] with the default options (difficult = positive, fail on a bad image).
pub fn load_voc(root: impl AsRef<Path>, split: &str) -> Result<Dataset> {
    Ok(load_voc_with(root, split, VocOptions::default())?.dataset)
}
