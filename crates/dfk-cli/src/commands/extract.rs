//! `dfk extract`: the descriptors of a data set as the GMM sees them (dense SIFT, then PCA, L2
//! and (x, y) as configured) into the cache, and optionally into `.npy` files, so that training
//! runs with the same settings do not extract again.

use std::path::{Path, PathBuf};

use anyhow::Context;

use dfk::npy;
use dfk::pipeline::{
    descriptor_cache_key, fit_preprocessor, load_or_extract_with_positions, Preprocessor,
};
use dfk::svm::Labels;
use serde_json::json;

use crate::options::{ConfigArgs, DataArgs};
use crate::util::{bar, check_outputs_in_folders, checked_cache_dir, emit, spinner, usage};
use crate::Global;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    config: ConfigArgs,
    /// With --fashion-mnist or --embedded: extract the test set too.
    #[arg(long)]
    with_test: bool,
    /// A test set (folder or list file, as --data) extracted with the training set's PCA
    /// (one `extract` per set would fit two PCAs, so their descriptors would not match); its
    /// classes are matched to the training classes by name. Writes train/ and test/.
    #[arg(long, value_name = "PATH", requires = "data", conflicts_with_all = ["with_test", "test_split"])]
    test_data: Option<PathBuf>,
    /// With --format voc: the test split of the same devkit (e.g. test), extracted with the
    /// training split's PCA. Writes train/ and test/.
    #[arg(
        long,
        value_name = "NAME",
        requires = "split",
        conflicts_with = "with_test"
    )]
    test_split: Option<String>,
    /// Also write descriptors.npy (rows × D float32), offsets.npy (int64, images + 1) and
    /// labels.npy (int64: a class index per image, or images × classes 0/1 for multi-label
    /// data, with difficult.npy beside it: the VOC "difficult" flags, images × classes 0/1, for
    /// `dfk deep --difficult`) here (in train/ and test/ with --with-test), classes.txt (the
    /// class names in index order, which `dfk deep --labels` reads beside the labels), and
    /// with a --pyramid positions.npy (rows × 2 float32, each descriptor's (x, y)). For raw
    /// 128-d SIFT use --pca-dims 0 --l2 false --spatial false.
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
    /// Descriptor cache folder (default: $XDG_CACHE_HOME/dfk/descriptors or ~/.cache/dfk/descriptors).
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// Do not use the cache (then --out-dir is required).
    #[arg(long)]
    no_cache: bool,
}

/// The files `--out-dir DIR` receives: per set (`DIR`, or `DIR/train` and `DIR/test` with
/// `--with-test`) the descriptors, offsets, labels and, with a pyramid, positions.
fn out_files(dir: &Path, with_test: bool, positions: bool) -> Vec<PathBuf> {
    let sets = if with_test {
        vec![dir.join("train"), dir.join("test")]
    } else {
        vec![dir.to_path_buf()]
    };
    // difficult.npy is written for multi-label data only; checked in any case.
    let mut names = vec![
        "descriptors.npy",
        "offsets.npy",
        "labels.npy",
        "difficult.npy",
        "classes.txt",
    ];
    if positions {
        names.push("positions.npy");
    }
    sets.iter()
        .flat_map(|set| names.iter().map(move |n| set.join(n)))
        .collect()
}

pub fn run(mut a: Args, g: &Global) -> anyhow::Result<()> {
    let cfg = a.config.resolve(g)?;
    // The test set of the user's own data: the data options with its path or split.
    let test_args = match (&a.test_data, &a.test_split) {
        (None, None) => None,
        (data, split) => {
            let mut t = a.data.clone();
            if let Some(p) = data {
                t.data = Some(p.clone());
            }
            if let Some(s) = split {
                t.split = Some(s.clone());
            }
            Some(t)
        }
    };
    if test_args.is_some() {
        a.with_test = true;
    }
    if a.no_cache && a.out_dir.is_none() {
        return usage("--no-cache without --out-dir would keep nothing");
    }
    let files = a
        .out_dir
        .as_deref()
        .map(|dir| out_files(dir, a.with_test, cfg.pyramid.is_some()))
        .unwrap_or_default();
    let in_dir: Vec<(&str, &Path)> = files.iter().map(|p| ("--out-dir", p.as_path())).collect();
    let mut inputs = a.data.inputs();
    inputs.extend(a.config.inputs());
    if let Some(t) = &test_args {
        inputs.extend(t.inputs());
    }
    check_outputs_in_folders(&[], &in_dir, &inputs)?;
    a.data.check_outputs_not_listed(&in_dir)?;
    if let Some(dir) = &a.out_dir {
        a.data.check_folders_outside_data(&[("--out-dir", dir)])?;
    }
    if let Some(t) = &test_args {
        t.check_outputs_not_listed(&in_dir)?;
        if let Some(dir) = &a.out_dir {
            t.check_folders_outside_data(&[("--out-dir", dir)])?;
        }
    }
    if a.data.is_descriptors() {
        return usage(
            "extract computes dense SIFT from images, and --format npy data are descriptors \
             already: `dfk train`, `dfk eval` and `dfk encode` read them as they are",
        );
    }
    let cache = checked_cache_dir(a.cache.as_deref(), a.no_cache, &a.data)?;
    a.config
        .check_pca_dims(&cfg, dfk::sift::DESCRIPTOR_LEN, crate::options::SIFT_VALUES)?;
    let mut loaded = a.data.load()?;
    a.data.check_outputs_not_loaded(&in_dir, &loaded)?;
    if let Some(t) = &test_args {
        let test = t.load()?;
        t.check_outputs_not_loaded(&in_dir, &test)?;
        let names = &loaded.train.class_names;
        let test = match crate::commands::eval::by_model_names(&test.train, names) {
            Some(mapped) => mapped,
            None => test.train,
        };
        if &test.class_names != names {
            let missing: Vec<&str> = test
                .class_names
                .iter()
                .filter(|n| !names.contains(n))
                .map(String::as_str)
                .collect();
            anyhow::bail!(
                "the test data ({}) have the class{} {} that the training data ({}) lack: \
                 expected test classes among the training classes",
                t.data.as_deref().unwrap_or(Path::new(".")).display(),
                if missing.len() == 1 { "" } else { "es" },
                missing.join(", "),
                loaded.description
            );
        }
        loaded.test = Some(test);
    }
    // Without --with-test the one set is whatever was loaded (a VOC test split, say).
    let mut sets = vec![(if a.with_test { "train" } else { "data" }, &loaded.train)];
    if a.with_test {
        match &loaded.test {
            Some(t) => sets.push(("test", t)),
            None => {
                return usage(
                    "--with-test needs --fashion-mnist or --embedded; for other data give \
                     --test-data PATH (or --test-split NAME with --format voc)",
                )
            }
        }
    }
    // The PCA is fitted on the training set, as `dfk train` does, so the cache entries match.
    let pb = spinner(g, "PCA sample");
    let pre = fit_preprocessor(&loaded.train, &cfg, &|_| {})?;
    pb.finish();
    // Every set's files land together or not at all (a failing test set, a full disk), and
    // the folders made for them go again on failure.
    let mut created: Option<crate::util::CreatedDirs> = None;
    if let Some(dir) = &a.out_dir {
        for (name, _) in &sets {
            let dir = if a.with_test {
                dir.join(name)
            } else {
                dir.clone()
            };
            let made = crate::util::create_output_dir("--out-dir", &dir)?;
            created = Some(match created {
                Some(earlier) => earlier.and(made),
                None => made,
            });
        }
    }
    let mut files = npy::FileGroup::new();
    let mut stale_files = Vec::new();
    let mut results = Vec::new();
    let mut lines = Vec::new();
    for (name, data) in sets {
        let pb = bar(g, data.len() as u64, &format!("{name} descriptors"));
        let started = std::time::SystemTime::now();
        // With a pyramid, the entry holding (x, y) is the one `dfk train` reads.
        let (d, positions, hit) =
            load_or_extract_with_positions(data, &cfg, &pre, cache.as_deref(), &|n| {
                pb.inc(n as u64)
            })?;
        pb.finish();
        if let Some(dir) = &a.out_dir {
            let dir = if a.with_test {
                dir.join(name)
            } else {
                dir.clone()
            };
            d.stage_npy(
                &mut files,
                dir.join("descriptors.npy"),
                dir.join("offsets.npy"),
            )?;
            // The class names, in index order, where `dfk deep --labels` (and a list file)
            // look for them. A name that the file cannot hold as a line is left numbered.
            let names = &loaded.train.class_names;
            if names.iter().all(|n| dfk::dataset::fits_a_class_line(n)) {
                let text: String = names.iter().map(|n| format!("{n}\n")).collect();
                files.bytes(dir.join("classes.txt"), text.as_bytes())?;
            } else {
                // No file rather than an earlier run's names beside these labels.
                stale_files.push(dir.join("classes.txt"));
                tracing::warn!(
                    "classes.txt not written: a class name is empty, has surrounding spaces, \
                     a line break or a `#` after a space, which its one-name-per-line format \
                     cannot hold"
                );
            }
            // Multi-label data (VOC) as the images × classes 0/1 matrix that `dfk deep
            // --multilabel` reads; single-label data as one class index per image.
            match data.labels() {
                Labels::MultiLabel { targets, classes } => {
                    let m: Vec<i64> = targets.iter().map(|&t| i64::from(t)).collect();
                    files.i64_matrix(dir.join("labels.npy"), &m, data.len(), classes)?;
                    let flags: Vec<i64> = data
                        .difficult_mask()
                        .unwrap_or_else(|| vec![false; m.len()])
                        .iter()
                        .map(|&d| i64::from(d))
                        .collect();
                    files.i64_matrix(dir.join("difficult.npy"), &flags, data.len(), classes)?;
                }
                Labels::MultiClass { labels, .. } => {
                    let v: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
                    files.i64_vector(dir.join("labels.npy"), &v)?;
                    // Only multi-label data have difficult flags.
                    stale_files.push(dir.join("difficult.npy"));
                }
            }
            match &positions {
                Some(p) => files.f32_matrix(dir.join("positions.npy"), p, d.rows(), 2)?,
                // No earlier run's positions beside descriptors they do not fit.
                None => stale_files.push(dir.join("positions.npy")),
            }
        }
        let cached = Preprocessor {
            spatial: pre.spatial || cfg.pyramid.is_some(),
            ..pre.clone()
        };
        let key = descriptor_cache_key(data, &cfg.sift, &cached)?;
        // A cache that cannot be written is only a warning to the loader; here, without
        // --out-dir, filling it is the whole point, so its absence is an error.
        let entry = cache.as_ref().map(|c| c.join(&key));
        // A hit, or an entry written by this run: a failed store can leave an earlier,
        // damaged entry's files behind (a read-only cache folder keeps them).
        let written = |e: &Path| {
            std::fs::metadata(e.join("descriptors.npy"))
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= started)
        };
        let stored = entry
            .as_ref()
            .is_some_and(|e| dfk::pipeline::cache_entry_complete(e) && (hit || written(e)));
        if let (Some(e), false, None) = (&entry, stored, &a.out_dir) {
            anyhow::bail!(
                "{name}: the descriptors could not be stored in the cache {} (see the warning \
                 above), and without --out-dir nothing else is kept",
                e.display()
            );
        }
        results.push(
            json!({"set": name, "images": data.len(), "descriptors": d.rows(),
                            "dim": d.dim, "cache_hit": hit, "cached": stored, "cache_key": key}),
        );
        if !g.json && !g.quiet {
            lines.push(format!(
                "{name}: {} images, {} descriptors of dimension {}{}",
                data.len(),
                d.rows(),
                d.dim,
                match (&cache, hit, stored) {
                    (Some(c), true, _) => format!(" (from cache {})", c.join(&key).display()),
                    (Some(c), false, true) => format!(" (cached in {})", c.join(&key).display()),
                    (Some(c), false, false) => {
                        format!(" (not cached: {} could not be written)", c.display())
                    }
                    (None, _, _) => String::new(),
                }
            ));
        }
    }
    files.commit()?;
    for path in stale_files {
        if path.is_file() {
            std::fs::remove_file(&path).with_context(|| {
                format!(
                    "removing {}, an earlier run's file that these data do not have",
                    path.display()
                )
            })?;
        }
    }
    if let Some(c) = created {
        c.keep();
    }
    // Said once every set is extracted and every file written.
    if g.json {
        emit(g, &json!({ "sets": results }), "")?;
    }
    for line in lines {
        crate::util::out(format_args!("{line}\n"))?;
    }
    Ok(())
}
