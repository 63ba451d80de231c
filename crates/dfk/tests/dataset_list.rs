//! List-file data sets in a temporary directory: single- and multi-label, class lists, comments,
//! and the broken cases (labels that name no class, missing images, lines without labels,
//! empty lists).

use std::path::Path;

use dfk::dataset::{load_list, load_list_splits, load_list_with, ImageSource, OnError};
use dfk::svm::Labels;
use dfk::Error;

fn gray(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::GrayImage::from_pixel(3, 3, image::Luma([7]))
        .save(path)
        .unwrap();
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn format_error(err: Error) -> (std::path::PathBuf, String) {
    match err {
        Error::Format { path, message } => (path, message),
        other => panic!("expected a format error, got {other:?}"),
    }
}

#[test]
fn single_label_names_inferred_and_sorted() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    for name in ["img/a.png", "img/b.png", "img/c.png"] {
        gray(&r.join(name));
    }
    write(
        &r.join("lists/train.txt"),
        "# training images\n\n../img/a.png dog\n../img/b.png\tcat   # trailing comment\n../img/c.png,dog\n",
    );
    let ds = load_list(r.join("lists/train.txt")).unwrap();
    assert_eq!(ds.class_names, ["cat", "dog"]);
    assert!(!ds.multilabel);
    assert_eq!(ds.first_labels(), [1, 0, 1]);
    match ds.labels() {
        Labels::MultiClass { labels, classes } => {
            assert_eq!(classes, 2);
            assert_eq!(labels, [1, 0, 1]);
        }
        other => panic!("expected multi-class, got {other:?}"),
    }
    match &ds.items[1].source {
        ImageSource::File(p) => assert!(p.ends_with("img/b.png"), "{p:?}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(ds.load_u8(2).unwrap().pixels, vec![7; 9]);
}

#[test]
fn integer_labels_are_class_indices() {
    let dir = tempfile::tempdir().unwrap();
    gray(&dir.path().join("a.png"));
    gray(&dir.path().join("b.png"));
    write(&dir.path().join("l.txt"), "a.png 3\nb.png 10\n");
    let ds = load_list(dir.path().join("l.txt")).unwrap();
    assert_eq!(ds.classes(), 11);
    assert_eq!(ds.first_labels(), [3, 10]);
}

#[test]
fn multi_label_with_commas_and_class_file() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    gray(&r.join("a.png"));
    gray(&r.join("b.png"));
    write(&r.join("classes.txt"), "person\ncar\n# comment\nbus\n");
    write(&r.join("l.txt"), "a.png person,car\nb.png bus, 0 bus\n");
    let ds = load_list(r.join("l.txt")).unwrap();
    assert_eq!(ds.class_names, ["person", "car", "bus"]);
    assert!(ds.multilabel);
    assert_eq!(ds.items[0].labels, [0, 1]);
    // `0` is an index into the class file; duplicates collapse.
    assert_eq!(ds.items[1].labels, [0, 2]);
    assert_eq!(ds.class_counts(), [2, 1, 1]);
    match ds.labels() {
        Labels::MultiLabel { targets, classes } => {
            assert_eq!(classes, 3);
            assert_eq!(targets, [true, true, false, true, false, true]);
        }
        other => panic!("expected multi-label, got {other:?}"),
    }
}

#[test]
fn label_naming_no_class_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    gray(&r.join("a.png"));
    write(&r.join("classes.txt"), "person\ncar\n");
    write(&r.join("l.txt"), "a.png person\na.png truck\n");
    let (path, msg) = format_error(load_list(r.join("l.txt")).unwrap_err());
    assert!(path.ends_with("l.txt"));
    assert!(msg.contains("line 2") && msg.contains("truck"), "{msg}");
    // An index past the class list names no class either.
    write(&r.join("l.txt"), "a.png 2\n");
    let (_, msg) = format_error(load_list(r.join("l.txt")).unwrap_err());
    assert!(msg.contains("`2`"), "{msg}");
    // Explicit classes override classes.txt.
    let classes = vec!["truck".to_string(), "bus".to_string()];
    write(&r.join("l.txt"), "a.png truck\n");
    let (ds, _) = load_list_with(r.join("l.txt"), Some(&classes), OnError::Fail).unwrap();
    assert_eq!(ds.first_labels(), [0]);
}

#[test]
fn missing_and_corrupt_images_under_both_policies() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    gray(&r.join("a.png"));
    write(&r.join("bad.jpg"), "garbage");
    write(
        &r.join("l.txt"),
        "a.png x\nmissing.png x\nbad.jpg y\na.png y\n",
    );
    match load_list(r.join("l.txt")) {
        Err(Error::Format { path, message }) => {
            assert!(path.ends_with("missing.png"), "{path:?}");
            assert!(message.contains("cannot open"), "{message}");
        }
        other => panic!("expected an error naming the missing file, got {other:?}"),
    }
    let (ds, skipped) = load_list_with(r.join("l.txt"), None, OnError::Skip).unwrap();
    assert_eq!(skipped, 2);
    assert_eq!(ds.first_labels(), [0, 1]);
    // The classes still come from every line, so indices do not depend on what was skipped.
    assert_eq!(ds.class_names, ["x", "y"]);
}

#[test]
fn malformed_and_empty_lists() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    gray(&r.join("a.png"));
    write(&r.join("nolabel.txt"), "a.png cat\na.png\n");
    let (_, msg) = format_error(load_list(r.join("nolabel.txt")).unwrap_err());
    assert!(msg.contains("line 2") && msg.contains("no label"), "{msg}");

    write(&r.join("empty.txt"), "# nothing here\n\n");
    assert!(matches!(
        load_list(r.join("empty.txt")),
        Err(Error::Empty { .. })
    ));
    let missing = r.join("missing.txt");
    match load_list(&missing) {
        Err(Error::Io { path, .. }) => assert_eq!(path, missing),
        other => panic!("expected an io error, got {other:?}"),
    }
    write(&r.join("classes.txt"), "a\nb\na\n");
    write(&r.join("l.txt"), "a.png a\n");
    let e = load_list(r.join("l.txt")).unwrap_err().to_string();
    assert!(
        e.contains("classes.txt") && e.contains("`a` is listed twice"),
        "{e}"
    );
}

#[test]
fn explicit_list_splits() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    gray(&r.join("a.png"));
    write(&r.join("train.txt"), "a.png cat\na.png dog\n");
    write(&r.join("val.txt"), "a.png bird\n");
    write(&r.join("test.txt"), "a.png dog cat\n");
    let (split, skipped) = load_list_splits(
        r.join("train.txt"),
        Some(&r.join("val.txt")),
        Some(&r.join("test.txt")),
        None,
        OnError::Fail,
    )
    .unwrap();
    assert_eq!(skipped, 0);
    let (val, test) = (split.val.unwrap(), split.test.unwrap());
    for ds in [&split.train, &val, &test] {
        assert_eq!(ds.class_names, ["bird", "cat", "dog"]);
        assert!(
            ds.multilabel,
            "one multi-label line makes every split multi-label"
        );
    }
    assert_eq!(split.train.items[1].labels, [2]);
    assert_eq!(val.items[0].labels, [0]);
    assert_eq!(test.items[0].labels, [1, 2]);

    write(&r.join("empty.txt"), "\n");
    let err = load_list_splits(
        r.join("train.txt"),
        Some(&r.join("empty.txt")),
        None,
        None,
        OnError::Fail,
    )
    .unwrap_err();
    match err {
        Error::Empty { what } => assert!(what.contains("empty.txt"), "{what}"),
        other => panic!("expected an empty split error, got {other:?}"),
    }
}

#[test]
fn integer_labels_that_are_no_class_index_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    gray(&r.join("a.png"));
    // Negative, beyond u64::MAX, beyond the class limit: named with the file, line and value
    // (they used to become class names, or a class count of 2^64).
    for bad in ["-1", "18446744073709551616", "5000000"] {
        write(
            &r.join("l.txt"),
            &format!("a.png 0\na.png 1\na.png {bad}\n"),
        );
        let (path, msg) = format_error(load_list(r.join("l.txt")).unwrap_err());
        assert!(path.ends_with("l.txt"), "{path:?}");
        assert!(
            msg.contains("line 3") && msg.contains(&format!("label {bad} ")),
            "{msg}"
        );
    }
    // The binary labels −1 / +1 (liblinear's convention) name two classes, `-1` and `1`,
    // also when a list holds only one of them.
    for (list, labels) in [
        ("a.png -1\na.png +1\na.png 1\n", vec![0, 1, 1]),
        ("a.png -1\na.png -1\n", vec![0, 0]),
    ] {
        write(&r.join("l.txt"), list);
        let ds = load_list(r.join("l.txt")).unwrap();
        assert_eq!(ds.class_names, ["-1", "1"]);
        assert_eq!(ds.first_labels(), labels);
    }
    // `+1` is written as an integer and is the index 1.
    write(&r.join("l.txt"), "a.png 0\na.png +1\n");
    assert_eq!(load_list(r.join("l.txt")).unwrap().first_labels(), [0, 1]);
    // Among names, an integer-looking label is a name like the others.
    write(&r.join("l.txt"), "a.png cat\na.png -1\na.png 7\n");
    let ds = load_list(r.join("l.txt")).unwrap();
    assert_eq!(ds.class_names, ["-1", "7", "cat"]);
    assert_eq!(ds.first_labels(), [2, 0, 1]);
}

/// An image the list names but that cannot be opened is reported with the list that names
/// it, and a byte-order mark before the first path is not part of it.
#[test]
fn missing_images_name_their_list_and_a_bom_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    gray(&r.join("a.png"));
    gray(&r.join("b.png"));
    write(&r.join("bom.txt"), "\u{feff}a.png cat\nb.png dog\n");
    let ds = load_list(r.join("bom.txt")).unwrap();
    assert_eq!(ds.len(), 2);
    write(&r.join("gone.txt"), "a.png cat\nnot-here.png dog\n");
    let e = load_list(r.join("gone.txt")).unwrap_err().to_string();
    assert!(
        e.contains("not-here.png")
            && e.contains("named in the list file")
            && e.contains("gone.txt"),
        "{e}"
    );
}

/// A binary file given as a list names the file and the layout it looks like (an IDX file
/// read as a list failed with "stream did not contain valid UTF-8").
#[test]
fn a_binary_file_is_not_read_as_a_list() {
    let dir = tempfile::tempdir().unwrap();
    let idx = dir.path().join("train-images-idx3-ubyte");
    std::fs::write(
        &idx,
        [0u8, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0xff],
    )
    .unwrap();
    let (path, message) = format_error(load_list(&idx).unwrap_err());
    assert_eq!(path, idx);
    assert!(
        message.contains("not a text list file") && message.contains("--format idx"),
        "{message}"
    );
    let npy = dir.path().join("x.npy");
    std::fs::write(&npy, b"\x93NUMPY\x01\x00\xff\xfe").unwrap();
    let (_, message) = format_error(load_list(&npy).unwrap_err());
    assert!(message.contains("--format npy"), "{message}");
}
