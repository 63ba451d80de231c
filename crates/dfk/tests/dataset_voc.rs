//! A miniature PASCAL VOC devkit in a temporary directory: labels and difficult flags, the
//! split file, and the broken cases (missing image under both policies, missing class file,
//! bad flag, an image absent from a class file, an empty split).

use std::path::Path;

use dfk::dataset::{load_voc, load_voc_with, OnError, VocDifficult, VocOptions, VOC_CLASSES};
use dfk::Error;

const IDS: [&str; 3] = ["000005", "000007", "000009"];

/// Flags per image: image 0 has a dog (11) and a difficult chair (8); image 1 a car (6);
/// image 2 a person (14) and a difficult bottle (4).
fn flag(image: usize, class: usize) -> i8 {
    match (image, class) {
        (0, 11) | (1, 6) | (2, 14) => 1,
        (0, 8) | (2, 4) => 0,
        _ => -1,
    }
}

fn devkit(root: &Path, split: &str, with_split_file: bool) {
    let main = root.join("ImageSets/Main");
    std::fs::create_dir_all(&main).unwrap();
    std::fs::create_dir_all(root.join("JPEGImages")).unwrap();
    for (c, class) in VOC_CLASSES.iter().enumerate() {
        let text: String = IDS
            .iter()
            .enumerate()
            .map(|(i, id)| format!("{id} {:2}\n", flag(i, c)))
            .collect();
        std::fs::write(main.join(format!("{class}_{split}.txt")), text).unwrap();
    }
    if with_split_file {
        // A different order than the class files: the split file decides.
        std::fs::write(
            main.join(format!("{split}.txt")),
            "000009\n000005\n000007\n",
        )
        .unwrap();
    }
    for id in IDS {
        image::RgbImage::from_pixel(6, 4, image::Rgb([10, 200, 30]))
            .save(root.join(format!("JPEGImages/{id}.jpg")))
            .unwrap();
    }
}

#[test]
fn labels_difficult_and_order() {
    let dir = tempfile::tempdir().unwrap();
    devkit(dir.path(), "trainval", false);
    let voc = load_voc_with(dir.path(), "trainval", VocOptions::default()).unwrap();
    let ds = &voc.dataset;
    assert_eq!(ds.class_names, VOC_CLASSES);
    assert!(ds.multilabel);
    assert_eq!(voc.ids, IDS);
    assert_eq!(voc.skipped, 0);
    // Difficult counts as positive by default.
    assert_eq!(ds.items[0].labels, [8, 11]);
    assert_eq!(ds.items[1].labels, [6]);
    assert_eq!(ds.items[2].labels, [4, 14]);
    let difficult: Vec<(usize, usize)> = (0..3 * 20)
        .filter(|&k| voc.difficult[k])
        .map(|k| (k / 20, k % 20))
        .collect();
    assert_eq!(difficult, [(0, 8), (2, 4)]);
    // The items carry them too, for evaluation to leave out of those classes' AP.
    assert_eq!(ds.items[0].difficult, [8]);
    assert!(ds.items[1].difficult.is_empty());
    assert_eq!(ds.items[2].difficult, [4]);
    assert_eq!(ds.difficult_mask().as_ref(), Some(&voc.difficult));
    let img = ds.load_u8(1).unwrap();
    assert_eq!((img.width, img.height), (6, 4));

    let strict = load_voc_with(
        dir.path(),
        "trainval",
        VocOptions {
            difficult: VocDifficult::Negative,
            on_error: OnError::Fail,
        },
    )
    .unwrap();
    assert_eq!(strict.dataset.items[0].labels, [11]);
    assert_eq!(strict.dataset.items[2].labels, [14]);
    assert_eq!(strict.difficult, voc.difficult);
    assert_eq!(load_voc(dir.path(), "trainval").unwrap(), voc.dataset);
}

#[test]
fn split_file_sets_the_order() {
    let dir = tempfile::tempdir().unwrap();
    devkit(dir.path(), "test", true);
    let voc = load_voc_with(dir.path(), "test", VocOptions::default()).unwrap();
    assert_eq!(voc.ids, ["000009", "000005", "000007"]);
    assert_eq!(voc.dataset.items[0].labels, [4, 14]);
    assert!(voc.difficult[4] && voc.difficult[20 + 8]);
}

#[test]
fn missing_image_fails_or_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    devkit(dir.path(), "val", false);
    std::fs::remove_file(dir.path().join("JPEGImages/000007.jpg")).unwrap();
    match load_voc(dir.path(), "val") {
        Err(Error::Format { path, .. }) => assert!(path.ends_with("JPEGImages/000007.jpg")),
        other => panic!("expected an error naming the image, got {other:?}"),
    }
    let voc = load_voc_with(
        dir.path(),
        "val",
        VocOptions {
            on_error: OnError::Skip,
            ..VocOptions::default()
        },
    )
    .unwrap();
    assert_eq!(voc.skipped, 1);
    assert_eq!(voc.ids, ["000005", "000009"]);
    assert_eq!(voc.dataset.len(), 2);
    assert_eq!(voc.difficult.len(), 2 * 20);
    // The mask rows follow the kept images: image 000009 is difficult for bottle.
    assert!(voc.difficult[20 + 4] && voc.difficult[8]);
}

#[test]
fn broken_devkit_files() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    devkit(r, "train", false);
    let cow = r.join("ImageSets/Main/cow_train.txt");

    std::fs::write(&cow, "000005 -1\n000007 2\n000009 -1\n").unwrap();
    match load_voc(r, "train") {
        Err(Error::Format { path, message }) => {
            assert_eq!(path, cow);
            assert!(message.contains("line 2"), "{message}");
        }
        other => panic!("expected a format error, got {other:?}"),
    }

    std::fs::write(&cow, "000005 -1\n000009 -1\n").unwrap();
    match load_voc(r, "train") {
        Err(Error::Format { path, message }) => {
            assert_eq!(path, cow);
            assert!(message.contains("000007"), "{message}");
        }
        other => panic!("expected a format error, got {other:?}"),
    }

    std::fs::remove_file(&cow).unwrap();
    match load_voc(r, "train") {
        Err(Error::Io { path, .. }) => assert_eq!(path, cow),
        other => panic!("expected an io error, got {other:?}"),
    }
    assert!(matches!(load_voc(r, "nosuchsplit"), Err(Error::Io { .. })));
}

#[test]
fn empty_split_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    devkit(r, "test", true);
    std::fs::write(r.join("ImageSets/Main/test.txt"), "\n").unwrap();
    assert!(matches!(load_voc(r, "test"), Err(Error::Empty { .. })));
    // Every image missing and skipped leaves nothing either.
    devkit(r, "val", false);
    std::fs::remove_dir_all(r.join("JPEGImages")).unwrap();
    let skip = VocOptions {
        on_error: OnError::Skip,
        ..VocOptions::default()
    };
    assert!(matches!(
        load_voc_with(r, "val", skip),
        Err(Error::Empty { .. })
    ));
}

/// The devkit's top folder given instead of its year folder: an error naming the year folder
/// to give.
#[test]
fn the_devkit_root_points_to_its_year_folder() {
    let dir = tempfile::tempdir().unwrap();
    devkit(&dir.path().join("VOC2007"), "test", true);
    match load_voc(dir.path(), "test") {
        Err(Error::Format { path, message }) => {
            assert_eq!(path, dir.path());
            let year = dir.path().join("VOC2007").display().to_string();
            assert!(
                message.contains(&format!("give the year folder, e.g. {year}")),
                "{message}"
            );
        }
        other => panic!("expected a format error, got {other:?}"),
    }
}
