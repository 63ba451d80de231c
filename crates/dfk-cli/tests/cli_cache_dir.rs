//! The descriptor cache folder is checked before any image is read, by `train`, `eval`,
//! `encode` and `extract`: a `--cache` that is a file, or that is (or lies inside) the image
//! folder given as `--data`, is a usage error naming `--cache` and the path, and a default
//! cache location that is a file is an error naming it and the variable it comes from. A valid
//! `--cache` still works and receives the descriptors.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A 32×32 binary PGM image (a format the loaders read) at `path`.
fn pgm(path: &Path, seed: u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut bytes = b"P5\n32 32\n255\n".to_vec();
    bytes.extend((0..32 * 32).map(|i: u32| (i as u8).wrapping_mul(seed | 1)));
    std::fs::write(path, bytes).unwrap();
}

/// The settings that keep a run on four tiny images short (all commands).
const QUICK: &[&str] = &["--threads", "2", "-q"];

/// The pipeline settings for tiny images (`train` and `extract`).
const SMALL: &[&str] = &["--resize", "none", "--k", "2", "--pca-dims", "8"];

/// A temporary folder holding `good/` (two classes of two images each), `bad/` (the same
/// images and a class folder without any, which fails as soon as the data is loaded, so a
/// check made after loading would report that instead) and `m.dfk`, a model trained on
/// `good/` without a cache.
struct Setup {
    tmp: tempfile::TempDir,
}

impl Setup {
    fn new(with_model: bool) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        for set in ["good", "bad"] {
            for (c, class) in ["b", "c"].iter().enumerate() {
                for i in 0..2u8 {
                    pgm(
                        &tmp.path().join(set).join(class).join(format!("{i}.pgm")),
                        3 * c as u8 + i + 1,
                    );
                }
            }
        }
        let empty = tmp.path().join("bad").join("aempty");
        std::fs::create_dir_all(&empty).unwrap();
        std::fs::write(empty.join("notes.txt"), b"not an image").unwrap();
        let setup = Setup { tmp };
        if with_model {
            let mut train = args(&["train", "--data", "good", "--no-cache", "--out", "m.dfk"]);
            train.extend(args(QUICK));
            train.extend(args(SMALL));
            let out = setup.run(&train);
            assert!(out.status.success(), "{}", stderr(&out));
        }
        setup
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// Runs `dfk` in the temporary folder (relative paths are taken from there).
    fn run(&self, args: &[String]) -> Output {
        self.command(args).output().expect("run dfk")
    }

    fn command(&self, args: &[String]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_dfk"));
        c.args(args).current_dir(self.tmp.path());
        c
    }

    /// Each of the four commands on `--data data` with `cache` (extra flags appended), and the
    /// output it would write (relative to the temporary folder).
    fn commands(&self, data: &str, cache: &[&str]) -> Vec<(Vec<String>, &'static str)> {
        let with = |base: &[&str], out: &'static str| {
            let mut v = args(base);
            v.extend(args(&["--data", data]));
            v.extend(args(QUICK));
            if matches!(base[0], "train" | "extract") {
                v.extend(args(SMALL));
            }
            v.extend(args(cache));
            (v, out)
        };
        vec![
            with(&["train", "--out", "new.dfk"], "new.dfk"),
            with(&["eval", "--model", "m.dfk", "--report", "rep"], "rep"),
            with(&["encode", "--model", "m.dfk", "--out", "fv.npy"], "fv.npy"),
            with(&["extract", "--out-dir", "desc"], "desc"),
        ]
    }
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `command` in `setup`: it must exit with `code`, name every needle on stderr and write
/// nothing at `out`.
fn refused(setup: &Setup, command: &[String], out: &str, code: i32, needles: &[&str]) {
    let o = setup.run(command);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(code), "dfk {command:?}: {err}");
    for needle in needles {
        assert!(
            err.contains(needle),
            "dfk {command:?}: {err:?} lacks {needle:?}"
        );
    }
    assert!(
        !setup.path(out).exists(),
        "dfk {command:?} wrote {out}: {err}"
    );
}

#[test]
fn a_cache_that_is_a_file_is_refused_before_the_data_is_read() {
    let setup = Setup::new(true);
    let file = setup.path("cachefile");
    std::fs::write(&file, b"not a folder").unwrap();
    // Given as an absolute path, and relative with `.`/`..` components.
    for cache in [s(&file), "good/../cachefile".to_string()] {
        for (command, out) in setup.commands("bad", &["--cache", &cache]) {
            refused(
                &setup,
                &command,
                out,
                2,
                &[
                    &format!("--cache {cache}: exists and is not a folder"),
                    "--no-cache",
                ],
            );
        }
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"not a folder");
}

#[test]
fn a_cache_that_is_the_data_folder_is_refused() {
    let setup = Setup::new(true);
    for cache in ["bad", "./bad/", &s(&setup.path("bad"))] {
        for (command, out) in setup.commands("bad", &["--cache", cache]) {
            refused(
                &setup,
                &command,
                out,
                2,
                &[&format!(
                    "--cache {cache} lies inside the image folder --data bad, whose \
                     sub-folders are read as classes"
                )],
            );
        }
    }
    // Nothing was stored in the data folder: only its class folders are there.
    let mut entries: Vec<String> = std::fs::read_dir(setup.path("bad"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(entries, ["aempty", "b", "c"]);
}

#[test]
fn a_cache_inside_the_data_folder_is_refused() {
    let setup = Setup::new(true);
    // A missing sub-folder spelled with `..` and `.`, and an existing class folder.
    let data = s(&setup.path("bad"));
    for cache in ["bad/b/../cache/.", "bad/c"] {
        for (command, out) in setup.commands(&data, &["--cache", cache]) {
            refused(
                &setup,
                &command,
                out,
                2,
                &[&format!(
                    "--cache {cache} lies inside the image folder --data {data}"
                )],
            );
        }
    }
    assert!(!setup.path("bad/cache").exists());
    let class: Vec<_> = std::fs::read_dir(setup.path("bad/c")).unwrap().collect();
    assert_eq!(class.len(), 2, "files were added to the class folder c");
}

#[test]
fn a_valid_cache_outside_the_data_folder_is_filled_and_read() {
    let setup = Setup::new(false);
    // Beside the data folder, spelled through it: not inside it.
    let cache = "good/../cache";
    let mut commands = setup.commands("good", &["--cache", cache]).into_iter();
    let (train, model) = commands.next().unwrap();
    let o = setup.run(&train);
    assert!(o.status.success(), "dfk {train:?}: {}", stderr(&o));
    assert!(setup.path(model).is_file());
    let entries: Vec<PathBuf> = std::fs::read_dir(setup.path("cache"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(!entries.is_empty(), "train stored nothing in the cache");
    for entry in &entries {
        for file in ["descriptors.npy", "offsets.npy"] {
            assert!(
                entry.join(file).is_file(),
                "{} lacks {file}",
                entry.display()
            );
        }
    }
    // The other commands take the same cache (their model: the one just trained).
    for (mut command, out) in commands {
        for a in command.iter_mut().filter(|a| *a == "m.dfk") {
            *a = model.to_string();
        }
        if command[0] == "extract" {
            command.retain(|a| a != "-q");
        }
        let o = setup.run(&command);
        assert!(o.status.success(), "dfk {command:?}: {}", stderr(&o));
        assert!(setup.path(out).exists(), "dfk {command:?} wrote no {out}");
        if command[0] == "extract" {
            let stdout = String::from_utf8_lossy(&o.stdout);
            assert!(stdout.contains("from cache"), "{stdout}");
        }
    }
}

#[test]
fn a_default_cache_that_is_a_file_is_named_with_its_variable() {
    let setup = Setup::new(false);
    let xdg = setup.path("xdg");
    let home = setup.path("home");
    let in_xdg = xdg.join("dfk").join("descriptors");
    let in_home = home.join(".cache").join("dfk").join("descriptors");
    for file in [&in_xdg, &in_home] {
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, b"not a folder").unwrap();
    }
    let train = args(&[
        "train",
        "--data",
        "bad",
        "--threads",
        "2",
        "-q",
        "--out",
        "new.dfk",
    ]);
    let cases = [
        (Some(&xdg), &in_xdg, "$XDG_CACHE_HOME"),
        (None, &in_home, "$HOME"),
    ];
    for (xdg_value, file, var) in cases {
        let mut c = setup.command(&train);
        c.env("HOME", &home);
        match xdg_value {
            Some(x) => c.env("XDG_CACHE_HOME", x),
            None => c.env_remove("XDG_CACHE_HOME"),
        };
        let o = c.output().expect("run dfk");
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{var}: {err}");
        for needle in [
            format!("the default descriptor cache {}", file.display()),
            format!("(from {var}) exists and is not a folder"),
            "--cache DIR".to_string(),
            "--no-cache".to_string(),
        ] {
            assert!(err.contains(&needle), "{err:?} lacks {needle:?}");
        }
        assert!(!setup.path("new.dfk").exists());
    }
    // --no-cache does not look at it; an explicit --cache replaces it.
    for extra in [&["--no-cache"][..], &["--cache", "cache"]] {
        let mut command = args(&["train", "--data", "good", "--out", "new.dfk"]);
        command.extend(args(QUICK));
        command.extend(args(SMALL));
        command.extend(args(extra));
        let o = setup
            .command(&command)
            .env("HOME", &home)
            .env("XDG_CACHE_HOME", &xdg)
            .output()
            .expect("run dfk");
        assert!(o.status.success(), "dfk {command:?}: {}", stderr(&o));
        std::fs::remove_file(setup.path("new.dfk")).unwrap();
    }
    assert_eq!(std::fs::read(&in_xdg).unwrap(), b"not a folder");
}
