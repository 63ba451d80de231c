//! The embedded default data set: a stratified 2,000 / 1,000 image subset of Fashion-MNIST
//! (Zalando Research, MIT licence; see `data/fashion-mnist-subset/README.md`).

use std::io::Read;
use std::path::Path;

use super::idx::{idx_dataset, parse_idx};
use super::{Dataset, FASHION_MNIST_CLASSES};
use crate::error::{Error, Result};

const TRAIN_IMAGES: &[u8] =
    include_bytes!("../../../../data/fashion-mnist-subset/train-images-idx3-ubyte.gz");
const TRAIN_LABELS: &[u8] =
    include_bytes!("../../../../data/fashion-mnist-subset/train-labels-idx1-ubyte.gz");
const TEST_IMAGES: &[u8] =
    include_bytes!("../../../../data/fashion-mnist-subset/t10k-images-idx3-ubyte.gz");
const TEST_LABELS: &[u8] =
    include_bytes!("../../../../data/fashion-mnist-subset/t10k-labels-idx1-ubyte.gz");

fn decode(name: &str, gz: &[u8]) -> Result<super::IdxArray> {
    let path = Path::new("<embedded>").join(name);
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::format(&path, format!("corrupt embedded gzip stream: {e}")))?;
    parse_idx(&path, &bytes)
}

fn split(images: (&str, &[u8]), labels: (&str, &[u8])) -> Result<Dataset> {
    let names = FASHION_MNIST_CLASSES
        .iter()
        .map(|s| s.to_string())
        .collect();
    idx_dataset(
        &Path::new("<embedded>").join(images.0),
        decode(images.0, images.1)?,
        &Path::new("<embedded>").join(labels.0),
        decode(labels.0, labels.1)?,
    )?
    .with_class_names(names)
}

/// The embedded Fashion-MNIST subset as `(train, test)`: 2,000 training images (200 per class)
/// and 1,000 test images (100 per class), 28×28 grey, with the ten Fashion-MNIST class names.
pub fn embedded_fashion_mnist() -> Result<(Dataset, Dataset)> {
    Ok((
        split(
            ("train-images-idx3-ubyte.gz", TRAIN_IMAGES),
            ("train-labels-idx1-ubyte.gz", TRAIN_LABELS),
        )?,
        split(
            ("t10k-images-idx3-ubyte.gz", TEST_IMAGES),
            ("t10k-labels-idx1-ubyte.gz", TEST_LABELS),
        )?,
    ))
}
