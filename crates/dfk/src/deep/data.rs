//! The images the trainer works on: descriptors grouped per image, with labels.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::dataset::split::{held_out_count, keep_every_class};
use crate::error::{Error, Result};
use crate::svm::Labels;

/// A labelled set of images, each a block of descriptors: image `i` is rows
/// `offsets[i]..offsets[i+1]` of `data` (`rows × d`, row-major).
#[derive(Clone, Debug, PartialEq)]
pub struct ImageSet {
    /// Descriptors of all images, `rows × d`.
    pub data: Vec<f32>,
    /// Descriptor dimension.
    pub d: usize,
    /// `images + 1` row offsets, starting at 0 and ending at `rows`.
    pub offsets: Vec<usize>,
    /// One label (multi-class) or label set (multi-label) per image.
    pub labels: Labels,
    /// Multi-label only, `images × classes` or empty (none): the image is a "difficult"
    /// positive of the class (PASCAL VOC), left out of that class's AP in the trainer's mAPs
    /// as VOC's evaluation does; it still trains as a positive. Set by
    /// [`ImageSet::with_difficult`].
    pub difficult: Vec<bool>,
}

impl ImageSet {
    /// Checks the shapes (offsets start at 0, increase strictly — every image needs at least
    /// one descriptor — and end at the number of rows; one label per image) and that every
    /// descriptor is finite.
    pub fn new(data: Vec<f32>, d: usize, offsets: Vec<usize>, labels: Labels) -> Result<Self> {
        let set = Self {
            data,
            d,
            offsets,
            labels,
            difficult: Vec::new(),
        };
        set.validate()?;
        if let Some(i) = set.data.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                what: format!("descriptor row {} (dimension {})", i / set.d, i % set.d),
                index: i,
            });
        }
        Ok(set)
    }

    /// The checks of [`ImageSet::new`] but the descriptors' finiteness, and that the
    /// difficult flags fit the labels: the fields are public, so the functions that take a set
    /// check it again rather than index it blindly.
    pub fn validate(&self) -> Result<()> {
        let (d, data, offsets, labels) = (self.d, &self.data, &self.offsets, &self.labels);
        if d == 0 {
            return Err(Error::param("d", d, "at least 1 dimension"));
        }
        if !data.len().is_multiple_of(d) {
            return Err(Error::param(
                "descriptor matrix length",
                data.len(),
                format!("a multiple of the dimension d = {d}"),
            ));
        }
        let rows = data.len() / d;
        if offsets.len() < 2 {
            return Err(Error::Empty {
                what: "image set (offsets need at least two entries)".into(),
            });
        }
        if offsets[0] != 0 {
            return Err(Error::param("offsets[0]", offsets[0], "0"));
        }
        if let Some(i) = offsets.windows(2).position(|w| w[1] <= w[0]) {
            return Err(Error::Invalid(format!(
                "image {i} has no descriptors (offsets[{i}] = {}, offsets[{}] = {}): every image needs at least one",
                offsets[i],
                i + 1,
                offsets[i + 1]
            )));
        }
        let last = offsets[offsets.len() - 1];
        if last != rows {
            return Err(Error::dim("last offset (descriptor rows)", rows, last));
        }
        let n = offsets.len() - 1;
        if labels.n() != n {
            return Err(Error::dim("labels (one per image)", n, labels.n()));
        }
        // Class indices are used to index per-class tables (the hold-out split, the SVMs).
        labels.validate()?;
        if !self.difficult.is_empty() {
            let Labels::MultiLabel { classes, .. } = labels else {
                return Err(Error::Invalid(
                    "difficult flags need multi-label labels (images × classes)".into(),
                ));
            };
            if self.difficult.len() != n * classes {
                return Err(Error::dim(
                    "difficult flags (images × classes)",
                    n * classes,
                    self.difficult.len(),
                ));
            }
        }
        Ok(())
    }

    /// The same set with VOC "difficult" flags (`images × classes`, multi-label labels only);
    /// an empty mask, or one without a flag set, removes them (so that a set is the same, and
    /// hashes the same in checkpoints, whether its flags are absent or all zero).
    pub fn with_difficult(mut self, mut difficult: Vec<bool>) -> Result<Self> {
        if !difficult.is_empty() {
            let Labels::MultiLabel { classes, .. } = &self.labels else {
                return Err(Error::Invalid(
                    "difficult flags need multi-label labels (images × classes)".into(),
                ));
            };
            if difficult.len() != self.len() * classes {
                return Err(Error::dim(
                    "difficult flags (images × classes)",
                    self.len() * classes,
                    difficult.len(),
                ));
            }
        }
        if !difficult.contains(&true) {
            difficult.clear();
        }
        self.difficult = difficult;
        Ok(self)
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// Always false: an image set holds at least one image.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Descriptors of image `i`.
    pub fn image(&self, i: usize) -> &[f32] {
        &self.data[self.offsets[i] * self.d..self.offsets[i + 1] * self.d]
    }

    /// The images at `indices`, in that order.
    pub fn subset(&self, indices: &[usize]) -> Result<Self> {
        self.validate()?;
        let n = self.len();
        if let Some(&i) = indices.iter().find(|&&i| i >= n) {
            return Err(Error::param("image index", i, format!("< {n}")));
        }
        let mut data = Vec::new();
        let mut offsets = vec![0];
        for &i in indices {
            data.extend_from_slice(self.image(i));
            offsets.push(data.len() / self.d);
        }
        let labels = match &self.labels {
            Labels::MultiClass { labels, classes } => Labels::MultiClass {
                labels: indices.iter().map(|&i| labels[i]).collect(),
                classes: *classes,
            },
            Labels::MultiLabel { targets, classes } => Labels::MultiLabel {
                targets: indices
                    .iter()
                    .flat_map(|&i| targets[i * classes..(i + 1) * classes].iter().copied())
                    .collect(),
                classes: *classes,
            },
        };
        let classes = self.labels.classes();
        let difficult = if self.difficult.is_empty() {
            Vec::new()
        } else {
            indices
                .iter()
                .flat_map(|&i| {
                    self.difficult[i * classes..(i + 1) * classes]
                        .iter()
                        .copied()
                })
                .collect()
        };
        Self::new(data, self.d, offsets, labels)?.with_difficult(difficult)
    }

    /// Splits off a held-out part: `fraction` of the images of each class (multi-class; by
    /// first positive label for multi-label) chosen with a seeded shuffle. Returns
    /// `(kept, held_out)`, each in the original image order.
    pub fn split_holdout(&self, fraction: f64, seed: u64) -> Result<(Self, Self)> {
        self.validate()?;
        if !(fraction > 0.0 && fraction < 1.0) {
            return Err(Error::param(
                "validation fraction",
                fraction,
                "a value in (0, 1)",
            ));
        }
        let classes = self.labels.classes();
        let mut by_class = vec![Vec::new(); classes + 1];
        for i in 0..self.len() {
            let c = match &self.labels {
                Labels::MultiClass { labels, .. } => labels[i],
                Labels::MultiLabel { targets, classes } => targets[i * classes..(i + 1) * classes]
                    .iter()
                    .position(|&t| t)
                    .unwrap_or(*classes),
            };
            by_class[c].push(i);
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut held = vec![false; self.len()];
        for members in &mut by_class {
            members.shuffle(&mut rng);
            let take = held_out_count(members.len(), fraction);
            for &i in members.iter().take(take) {
                held[i] = true;
            }
        }
        // A multi-label class seen only beside another image's first label.
        keep_every_class(&mut held, classes, |i, c| self.labels.is_positive(i, c));
        let kept: Vec<usize> = (0..self.len()).filter(|&i| !held[i]).collect();
        let out: Vec<usize> = (0..self.len()).filter(|&i| held[i]).collect();
        if kept.is_empty() || out.is_empty() {
            // 1e-300 as such, not as 300 digits.
            // As the command line's messages show numbers: short ones as written.
            let plain = fraction.to_string();
            let shown = if plain.len() > 12 {
                format!("{fraction:e}")
            } else {
                plain
            };
            return Err(Error::Invalid(format!(
                "a validation fraction of {shown} of {} images leaves one side empty",
                self.len()
            )));
        }
        Ok((self.subset(&kept)?, self.subset(&out)?))
    }

    /// A 64-bit hash of the descriptors (their bits), the offsets and the labels: recognises
    /// the same set again (a checkpoint records it), not a cryptographic digest.
    pub(crate) fn content_hash(&self) -> u64 {
        // Blocks hashed in parallel, combined in order: the same value for any thread count.
        const BLOCK: usize = 1 << 16;
        let blocks: Vec<u64> = self
            .data
            .par_chunks(BLOCK)
            .map(|b| {
                let mut h = Hash64::new();
                let mut pairs = b.chunks_exact(2);
                for p in &mut pairs {
                    h.write(u64::from(p[0].to_bits()) | (u64::from(p[1].to_bits()) << 32));
                }
                for v in pairs.remainder() {
                    h.write(u64::from(v.to_bits()));
                }
                h.finish()
            })
            .collect();
        let mut h = Hash64::new();
        h.write(self.d as u64);
        h.write(self.data.len() as u64);
        for b in blocks {
            h.write(b);
        }
        h.write(self.offsets.len() as u64);
        for &o in &self.offsets {
            h.write(o as u64);
        }
        match &self.labels {
            Labels::MultiClass { labels, classes } => {
                h.write(0);
                h.write(*classes as u64);
                for &l in labels {
                    h.write(l as u64);
                }
            }
            Labels::MultiLabel { targets, classes } => {
                h.write(1);
                h.write(*classes as u64);
                for t in targets.chunks(64) {
                    h.write(t.iter().rev().fold(0u64, |a, &b| (a << 1) | u64::from(b)));
                }
            }
        }
        // Only when present, so that a set without flags hashes as it always did.
        if !self.difficult.is_empty() {
            h.write(2);
            for t in self.difficult.chunks(64) {
                h.write(t.iter().rev().fold(0u64, |a, &b| (a << 1) | u64::from(b)));
            }
        }
        h.finish()
    }
}

/// Word-at-a-time multiplicative hash (FxHash's step) with a SplitMix64 finaliser.
struct Hash64(u64);

impl Hash64 {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn finish(&self) -> u64 {
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}
