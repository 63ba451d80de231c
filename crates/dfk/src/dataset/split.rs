//! Train / validation / test splits: explicit ones come from the loaders, a seeded stratified
//! one from [`stratified_split`].

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{empty, Dataset};
use crate::error::{Error, Result};

/// A data set divided into training, and optionally validation and test, parts that share one
/// class list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    pub train: Dataset,
    pub val: Option<Dataset>,
    pub test: Option<Dataset>,
}

/// Splits `data` into `(rest, held_out)` with about `fraction` of every class held out.
///
/// Each item belongs to one stratum: its label, or for a multi-label item its rarest label (the
/// usual approximation to multi-label stratification); items without labels form their own
/// stratum. Within a stratum of `m` items, `round(fraction · m)` chosen by a seeded shuffle are
/// held out, at most `m − 1`; a class left without an item in the rest (a multi-label class
/// that only appears beside a rarer one) gets one back, so the rest keeps every class. Both parts keep the original item order. Errors: `fraction` outside `(0, 1)`, an
/// empty data set, or a split that leaves either part empty.
pub fn stratified_split(data: &Dataset, fraction: f64, seed: u64) -> Result<(Dataset, Dataset)> {
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(Error::param(
            "split fraction",
            fraction,
            "strictly between 0 and 1",
        ));
    }
    if data.is_empty() {
        return Err(empty("data set to split"));
    }
    data.validate()?;
    let counts = data.class_counts();
    let c = data.classes();
    let mut strata: Vec<Vec<usize>> = vec![Vec::new(); c + 1];
    for (i, item) in data.items.iter().enumerate() {
        let s = item
            .labels
            .iter()
            .copied()
            .min_by_key(|&l| (counts[l], l))
            .unwrap_or(c);
        strata[s].push(i);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut held = vec![false; data.len()];
    for stratum in &mut strata {
        stratum.shuffle(&mut rng);
        let take = held_out_count(stratum.len(), fraction);
        for &i in &stratum[..take] {
            held[i] = true;
        }
    }
    // A multi-label class seen only beside a rarer label.
    keep_every_class(&mut held, c, |i, class| {
        data.items[i].labels.contains(&class)
    });
    let (mut rest, mut out) = (Vec::new(), Vec::new());
    for (i, &h) in held.iter().enumerate() {
        if h {
            out.push(i);
        } else {
            rest.push(i);
        }
    }
    if rest.is_empty() || out.is_empty() {
        return Err(empty(format!(
            "split part (fraction {fraction} of {} items leaves {} + {})",
            data.len(),
            rest.len(),
            out.len()
        )));
    }
    Ok((data.subset(&rest)?, data.subset(&out)?))
}

/// How many of a stratum of `len` items to hold out at `fraction`: rounded, but at most
/// `len − 1`, so that the rest keeps an item of every stratum (a class of one item at 0.5
/// would otherwise be held out whole, and training would lack it).
pub(crate) fn held_out_count(len: usize, fraction: f64) -> usize {
    ((fraction * len as f64).round() as usize).min(len.saturating_sub(1))
}

/// Gives back to the rest one held-out item (`held[i]`) of every class of `0..classes` that
/// the rest has none of (`positive(i, class)`): stratifying multi-label items by one of their
/// labels can hold out every item of another one.
pub(crate) fn keep_every_class(
    held: &mut [bool],
    classes: usize,
    positive: impl Fn(usize, usize) -> bool,
) {
    for class in 0..classes {
        if !(0..held.len()).any(|i| !held[i] && positive(i, class)) {
            if let Some(i) = (0..held.len()).find(|&i| held[i] && positive(i, class)) {
                held[i] = false;
            }
        }
    }
}
