//! Image-folder data sets built in a temporary directory with the `image` crate, including
//! missing folders, corrupt and truncated images under both error policies, and empty splits.

use std::path::Path;

use dfk::dataset::{load_folder, load_folder_splits, load_folder_with, ImageSource, OnError};
use dfk::Error;

/// Writes a `w × h` grey image whose pixel (x, y) is `seed + x + w·y` (mod 256).
fn gray(path: &Path, w: u32, h: u32, seed: u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let img = image::GrayImage::from_fn(w, h, |x, y| {
        image::Luma([seed.wrapping_add((x + w * y) as u8)])
    });
    img.save(path).unwrap();
}

fn rgb(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_pixel(4, 3, image::Rgb([255, 0, 0]))
        .save(path)
        .unwrap();
}

fn garbage(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, b"this is not an image at all").unwrap();
}

/// A PNG cut after its header: the header reads, decoding fails.
fn truncated_png(path: &Path) {
    gray(path, 16, 16, 3);
    let bytes = std::fs::read(path).unwrap();
    std::fs::write(path, &bytes[..bytes.len() / 2]).unwrap();
}

fn file_of(source: &ImageSource) -> &Path {
    match source {
        ImageSource::File(p) => p,
        other => panic!("expected a file, got {other:?}"),
    }
}

#[test]
fn classes_sorted_and_images_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    gray(&r.join("zebra/b.png"), 5, 4, 0);
    gray(&r.join("zebra/a.PNG"), 5, 4, 10);
    rgb(&r.join("apple/x.jpg"));
    gray(&r.join("apple/y.bmp"), 3, 2, 0);
    gray(&r.join("mango/m.pgm"), 2, 2, 0);
    std::fs::write(r.join("mango/notes.txt"), "not an image").unwrap();
    std::fs::write(r.join("stray.png"), "files in the root are not in a class").unwrap();

    let ds = load_folder(r).unwrap();
    assert_eq!(ds.class_names, ["apple", "mango", "zebra"]);
    assert!(!ds.multilabel);
    assert_eq!(ds.first_labels(), [0, 0, 1, 2, 2]);
    let names: Vec<String> = ds
        .items
        .iter()
        .map(|it| {
            file_of(&it.source)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(names, ["x.jpg", "y.bmp", "m.pgm", "a.PNG", "b.png"]);

    let img = ds.load_u8(3).unwrap();
    assert_eq!((img.width, img.height), (5, 4));
    let want: Vec<u8> = (0..20).map(|v| 10 + v).collect();
    assert_eq!(img.pixels, want);
    let g = ds.load_gray(3).unwrap();
    assert_eq!((g.width, g.height), (5, 4));
    for (a, &b) in g.pixels.iter().zip(&want) {
        assert!((a - b as f32 / 255.0).abs() < 1e-6, "{a} vs {b}");
    }
    // Colour converts to luma: pure red (255, 0, 0) → 0.2126·255 ≈ 54 (the image crate's Rec. 709 weights).
    let red = ds.load_u8(0).unwrap();
    assert_eq!((red.width, red.height), (4, 3));
    assert!(
        red.pixels.iter().all(|&p| (50..=80).contains(&p)),
        "{:?}",
        red.pixels
    );
}

#[test]
fn corrupt_image_fails_or_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    gray(&r.join("a/1.png"), 4, 4, 0);
    gray(&r.join("a/2.png"), 4, 4, 0);
    garbage(&r.join("b/broken.png"));
    gray(&r.join("b/ok.png"), 4, 4, 0);

    match load_folder(r) {
        Err(Error::Format { path, .. }) => assert!(path.ends_with("b/broken.png"), "{path:?}"),
        other => panic!("expected a format error naming the file, got {other:?}"),
    }
    let (ds, skipped) = load_folder_with(r, OnError::Skip).unwrap();
    assert_eq!(skipped, 1);
    assert_eq!(ds.len(), 3);
    assert_eq!(ds.first_labels(), [0, 0, 1]);
}

#[test]
fn truncated_image_found_by_decoding() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    gray(&r.join("a/good.png"), 4, 4, 0);
    truncated_png(&r.join("a/half.png"));
    gray(&r.join("b/good.png"), 4, 4, 0);
    // The header is intact, so loading keeps it; decoding reports it with its path.
    let ds = load_folder(r).unwrap();
    assert_eq!(ds.len(), 3);
    let err = ds.load_u8(1).unwrap_err();
    assert!(err.to_string().contains("half.png"), "{err}");
    let err = ds.load_gray(1).unwrap_err();
    assert!(err.to_string().contains("half.png"), "{err}");
    assert!(ds.load_gray(3).is_err());
    match ds.retain_decodable(OnError::Fail) {
        Err(Error::Format { path, .. }) => assert!(path.ends_with("a/half.png")),
        other => panic!("expected a format error, got {other:?}"),
    }
    let (kept, skipped) = ds.retain_decodable(OnError::Skip).unwrap();
    assert_eq!(skipped, 1);
    assert_eq!(kept.first_labels(), [0, 1]);
}

#[test]
fn missing_or_empty_folders() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    match load_folder(&missing) {
        Err(Error::Io { path, .. }) => assert_eq!(path, missing),
        other => panic!("expected an io error, got {other:?}"),
    }
    // No class folders: an error naming the folder; with a hint when it holds IDX files or
    // images directly.
    match load_folder(dir.path()) {
        Err(Error::Format { path, message }) => {
            assert_eq!(path, dir.path());
            assert!(message.contains("no class sub-folders"), "{message}");
            assert!(!message.contains("IDX"), "{message}");
        }
        other => panic!("expected a format error, got {other:?}"),
    }
    let idx = tempfile::tempdir().unwrap();
    std::fs::write(idx.path().join("train-images-idx3-ubyte.gz"), "x").unwrap();
    match load_folder(idx.path()) {
        Err(Error::Format { message, .. }) => {
            assert!(message.contains("--fashion-mnist"), "{message}")
        }
        other => panic!("expected a format error, got {other:?}"),
    }
    let flat = tempfile::tempdir().unwrap();
    gray(&flat.path().join("1.png"), 4, 4, 0);
    match load_folder(flat.path()) {
        Err(Error::Format { message, .. }) => {
            assert!(message.contains("holds images directly"), "{message}")
        }
        other => panic!("expected a format error, got {other:?}"),
    }
    // Class folders without images.
    std::fs::create_dir_all(dir.path().join("a")).unwrap();
    std::fs::write(dir.path().join("a/readme.txt"), "x").unwrap();
    assert!(matches!(load_folder(dir.path()), Err(Error::Empty { .. })));
    // A class folder without images beside one with images: an error naming the folder and
    // the extensions read (it used to become a class without samples, found after the work).
    gray(&dir.path().join("b/1.png"), 4, 4, 0);
    match load_folder(dir.path()) {
        Err(Error::Empty { what }) => assert!(
            what.contains(&dir.path().join("a").display().to_string())
                && what.contains("png/jpg/jpeg/bmp/pgm"),
            "{what}"
        ),
        other => panic!("expected an empty class folder error, got {other:?}"),
    }
    // Hidden folders are not classes.
    std::fs::create_dir_all(dir.path().join(".hidden")).unwrap();
    std::fs::rename(dir.path().join("a"), dir.path().join(".a")).unwrap();
    assert_eq!(load_folder(dir.path()).unwrap().class_names, ["b"]);
    std::fs::rename(dir.path().join(".a"), dir.path().join("a")).unwrap();
    std::fs::remove_dir_all(dir.path().join("b")).unwrap();
    // Only broken images, skipped: nothing left.
    garbage(&dir.path().join("a/x.png"));
    assert!(matches!(
        load_folder_with(dir.path(), OnError::Skip),
        Err(Error::Empty { .. })
    ));
}

#[test]
fn explicit_splits_share_classes() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    gray(&r.join("train/cat/1.png"), 4, 4, 0);
    gray(&r.join("train/dog/1.png"), 4, 4, 0);
    gray(&r.join("test/ant/1.png"), 4, 4, 0);
    gray(&r.join("test/dog/1.png"), 4, 4, 0);
    garbage(&r.join("test/dog/2.png"));

    assert!(load_folder_splits(r, OnError::Fail).is_err());
    let (split, skipped) = load_folder_splits(r, OnError::Skip).unwrap();
    assert_eq!(skipped, 1);
    assert!(split.val.is_none());
    let test = split.test.unwrap();
    for ds in [&split.train, &test] {
        assert_eq!(ds.class_names, ["ant", "cat", "dog"]);
    }
    assert_eq!(split.train.first_labels(), [1, 2]);
    assert_eq!(test.first_labels(), [0, 2]);
}

#[test]
fn empty_or_missing_split() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    gray(&r.join("train/cat/1.png"), 4, 4, 0);
    std::fs::create_dir_all(r.join("val/cat")).unwrap();
    match load_folder_splits(r, OnError::Fail) {
        Err(Error::Empty { what }) => assert!(what.contains("val"), "{what}"),
        other => panic!("expected an empty split error, got {other:?}"),
    }
    let no_train = tempfile::tempdir().unwrap();
    gray(&no_train.path().join("test/cat/1.png"), 4, 4, 0);
    let err = load_folder_splits(no_train.path(), OnError::Fail).unwrap_err();
    assert!(err.to_string().contains("train"), "{err}");
}

#[test]
fn dataset_validation() {
    let dir = tempfile::tempdir().unwrap();
    gray(&dir.path().join("a/1.png"), 2, 2, 0);
    let ds = load_folder(dir.path()).unwrap();
    let mut bad = ds.clone();
    bad.items[0].labels = vec![3];
    assert!(bad.validate().is_err());
    let mut two = ds.clone();
    two.items[0].labels = vec![0, 0];
    assert!(two.validate().is_err());
    assert!(ds.subset(&[1]).is_err());
    assert!(ds.load_u8(5).is_err());
    let mem = ImageSource::Memory {
        width: 3,
        height: 2,
        pixels: vec![0; 5],
    };
    assert!(matches!(mem.decode_u8(), Err(Error::DimMismatch { .. })));
}

/// Entries named as images that are not regular files (a broken symbolic link, a FIFO) fail
/// the load naming them, or are skipped and counted: they used to drop out silently.
#[cfg(unix)]
#[test]
fn entries_named_as_images_that_are_not_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    gray(&r.join("a/1.png"), 4, 4, 0);
    gray(&r.join("b/1.png"), 4, 4, 0);
    std::os::unix::fs::symlink(r.join("missing.png"), r.join("a/broken.png")).unwrap();
    let fifo = r.join("b/pipe.png");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    assert!(made.unwrap().success(), "mkfifo failed");
    match load_folder(r) {
        Err(Error::Format { path, message }) => {
            assert!(path.ends_with("a/broken.png"), "{path:?}");
            assert!(message.contains("not a regular file"), "{message}");
        }
        other => panic!("expected an error naming the link, got {other:?}"),
    }
    let (ds, skipped) = load_folder_with(r, OnError::Skip).unwrap();
    assert_eq!((ds.len(), skipped), (2, 2));
}

/// A class folder whose name is not UTF-8 is an error naming it, not a class left out.
#[cfg(unix)]
#[test]
fn a_class_folder_name_that_is_not_utf8_is_named() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    gray(&r.join("a/1.png"), 4, 4, 0);
    let odd = r.join(std::ffi::OsStr::from_bytes(b"b\xff"));
    gray(&odd.join("1.png"), 4, 4, 0);
    match load_folder(r) {
        Err(Error::Format { path, message }) => {
            assert_eq!(path, odd);
            assert!(message.contains("not valid UTF-8"), "{message}");
        }
        other => panic!("expected an error naming the folder, got {other:?}"),
    }
}

/// PPM/PBM/PNM and the other JPEG names (.jpe, .jfif) are read like the others (they were
/// left out without a word); their pixels decode.
#[test]
fn netpbm_and_jfif_names_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("a")).unwrap();
    image::RgbImage::from_pixel(4, 3, image::Rgb([10, 200, 30]))
        .save(root.join("a/x.ppm"))
        .unwrap();
    gray(&root.join("a/y.png"), 4, 4, 0);
    std::fs::create_dir_all(root.join("b")).unwrap();
    let jpeg = root.join("b/z.jpg");
    image::RgbImage::from_pixel(8, 8, image::Rgb([90, 90, 90]))
        .save(&jpeg)
        .unwrap();
    std::fs::rename(&jpeg, root.join("b/z.jfif")).unwrap();
    let ds = load_folder(root).unwrap();
    assert_eq!(ds.len(), 3);
    assert_eq!(ds.first_labels(), [0, 0, 1]);
    for i in 0..3 {
        assert!(ds.load_u8(i).is_ok(), "{}", ds.item_name(i));
    }
}
