//! Seeded stratified splits: per-class proportions, reproducibility, order, multi-label strata,
//! bad fractions and empty parts.

use dfk::dataset::{stratified_split, Dataset, ImageSource, Item};
use dfk::Error;

/// A single-label data set with `counts[c]` items of class `c`; item `i` is a 1×1 image whose
/// pixel is `i` (to identify items after splitting).
fn synthetic(counts: &[usize]) -> Dataset {
    let mut items = Vec::new();
    for (c, &n) in counts.iter().enumerate() {
        for _ in 0..n {
            let id = items.len() as u8;
            items.push(Item {
                source: ImageSource::Memory {
                    width: 1,
                    height: 1,
                    pixels: vec![id],
                },
                labels: vec![c],
                difficult: Vec::new(),
            });
        }
    }
    Dataset::new(
        (0..counts.len()).map(|c| format!("c{c}")).collect(),
        items,
        false,
    )
    .unwrap()
}

fn ids(ds: &Dataset) -> Vec<u8> {
    ds.items
        .iter()
        .map(|it| match &it.source {
            ImageSource::Memory { pixels, .. } => pixels[0],
            other => panic!("{other:?}"),
        })
        .collect()
}

#[test]
fn proportions_per_class() {
    let ds = synthetic(&[50, 30, 10, 20]);
    let (rest, held) = stratified_split(&ds, 0.2, 1).unwrap();
    assert_eq!(held.class_counts(), [10, 6, 2, 4]);
    assert_eq!(rest.class_counts(), [40, 24, 8, 16]);
    assert_eq!(rest.class_names, ds.class_names);
    // Together the parts are the data set, each in the original order.
    let (r, h) = (ids(&rest), ids(&held));
    assert!(r.windows(2).all(|w| w[0] < w[1]) && h.windows(2).all(|w| w[0] < w[1]));
    let mut all: Vec<u8> = r.iter().chain(&h).copied().collect();
    all.sort_unstable();
    assert_eq!(all, ids(&ds));
}

#[test]
fn seeded() {
    let ds = synthetic(&[40, 40]);
    let a = stratified_split(&ds, 0.25, 9).unwrap();
    let b = stratified_split(&ds, 0.25, 9).unwrap();
    assert_eq!(a, b);
    let c = stratified_split(&ds, 0.25, 10).unwrap();
    assert_ne!(ids(&a.1), ids(&c.1));
}

#[test]
fn multilabel_items_follow_their_rarest_label() {
    let mut ds = synthetic(&[20, 4]);
    ds.multilabel = true;
    // Items 16..20 carry both labels; class 1 (4 + 4 items) is rarer than class 0 (20 items).
    for it in &mut ds.items[16..20] {
        it.labels = vec![0, 1];
    }
    let (_, held) = stratified_split(&ds, 0.5, 3).unwrap();
    // Stratum 0: items 0..16 (8 held); stratum 1: items 16..24 (4 held).
    let h = ids(&held);
    assert_eq!(h.iter().filter(|&&i| i < 16).count(), 8);
    assert_eq!(h.iter().filter(|&&i| i >= 16).count(), 4);
    assert!(held.multilabel);
}

#[test]
fn bad_fraction_or_empty_part() {
    let ds = synthetic(&[5, 5]);
    for f in [0.0, 1.0, -0.1, f64::NAN] {
        assert!(matches!(
            stratified_split(&ds, f, 0),
            Err(Error::InvalidParameter { .. })
        ));
    }
    // 2 % of 5 rounds to 0 in every class: the held-out part would be empty.
    assert!(matches!(
        stratified_split(&ds, 0.02, 0),
        Err(Error::Empty { .. })
    ));
    let empty = Dataset::new(vec!["a".into()], Vec::new(), false).unwrap();
    assert!(matches!(
        stratified_split(&empty, 0.5, 0),
        Err(Error::Empty { .. })
    ));
}

/// A class of one item is never held out whole: the rest keeps every class (at 0.5 it
/// rounded to the held-out side, and training then lacked the class).
#[test]
fn the_rest_keeps_every_class() {
    let ds = synthetic(&[10, 1, 2]);
    for fraction in [0.5, 0.9] {
        let (rest, held) = stratified_split(&ds, fraction, 3).unwrap();
        assert_eq!(rest.class_counts()[1], 1, "fraction {fraction}");
        assert!(
            rest.class_counts().iter().all(|&n| n >= 1),
            "fraction {fraction}"
        );
        assert_eq!(rest.len() + held.len(), 13);
    }
}

/// Multi-label: a class that only appears beside rarer ones is not held out whole (the items
/// are stratified by their rarest label).
#[test]
fn the_rest_keeps_a_class_seen_only_beside_rarer_ones() {
    // Class 1 is in four items, each beside one of classes 2..5 (two items each, the other
    // without class 1): each stratum holds out one of its two items.
    let mut ds = synthetic(&[8, 0, 0, 0, 0, 0]);
    ds.multilabel = true;
    for (j, extra) in (2..6).enumerate() {
        ds.items[2 * j].labels = vec![1, extra];
        ds.items[2 * j + 1].labels = vec![extra];
    }
    for seed in 0..64 {
        let (rest, _) = stratified_split(&ds, 0.5, seed).unwrap();
        let counts = rest.class_counts();
        assert!(counts[1] > 0, "seed {seed}: {counts:?}");
    }
}
