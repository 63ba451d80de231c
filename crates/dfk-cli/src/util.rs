//! Helpers shared by the subcommands: progress bars, result printing, usage errors.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::Global;

/// An error in how the command was invoked (bad combination of options): exit status 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Returns a usage error (exit status 2) with `message`.
/// For a dimension error about the matrix read from `path` with `cols` columns: a note when
/// the file holds a 1-D array (read as `n` rows × 1 column), saying what was meant; empty
/// otherwise.
pub fn rank1_note(path: &std::path::Path, cols: usize, expected: &str) -> String {
    match dfk::npy::header_shape(path).as_deref() {
        Some(&[n]) if cols == 1 => format!(
            " (the file holds a 1-D array of {n} values, read as {n} rows × 1 column: {expected})"
        ),
        _ => String::new(),
    }
}

/// For a command that reads the file at `path` more than once (`why`): a pipe or device,
/// which would be empty (or different) the second time, is a usage error naming `flag`, before
/// any work. Missing files and folders are left to the readers' own messages.
pub fn require_file_on_disk(flag: &str, path: &std::path::Path, why: &str) -> anyhow::Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() && !m.is_dir() => usage(format!(
            "{flag} {}: not a regular file (a pipe or device?): {why}, so it needs a file on disk",
            path.display()
        )),
        _ => Ok(()),
    }
}

/// `--skip-unreadable`'s decoding pass: every image of `set` decoded once, those whose
/// pixels do not decode behind a readable header (a truncated file) left out with a warning
/// that counts them under `source`, so that a long extraction does not stop at one.
pub fn keep_decodable(
    set: dfk::dataset::Dataset,
    source: &str,
) -> anyhow::Result<dfk::dataset::Dataset> {
    let (kept, skipped) = set.retain_decodable(dfk::dataset::OnError::Skip)?;
    if skipped > 0 {
        tracing::warn!(
            "{source}: {skipped} image{} that cannot be decoded left out (--skip-unreadable)",
            if skipped == 1 { "" } else { "s" }
        );
    }
    Ok(kept)
}

pub fn usage<T>(message: impl Into<String>) -> anyhow::Result<T> {
    Err(UsageError(message.into()).into())
}

/// Usage error unless a pipeline configured by `config` (of the model `model`, when named) can
/// encode precomputed descriptors, which carry no positions: neither the (x, y) columns of
/// `spatial` nor a spatial pyramid can be formed without them.
pub fn check_positions_not_needed(
    config: &dfk::pipeline::PipelineConfig,
    model: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let name = model.map_or("the model".to_string(), |m| m.display().to_string());
    if config.pyramid.is_some() {
        return usage(format!(
            "precomputed descriptors carry no positions, but {name} encodes a spatial pyramid"
        ));
    }
    if config.spatial {
        return usage(format!(
            "precomputed descriptors carry no positions, but {name} appends each descriptor's \
             (x, y) (spatial = true): use a model trained on descriptors with --spatial false"
        ));
    }
    Ok(())
}

/// Whether progress bars are drawn: not with `--quiet`, `--json`, or when stderr is not a terminal.
pub fn show_progress(g: &Global) -> bool {
    !g.quiet && !g.json && std::io::stderr().is_terminal()
}

/// A progress bar over `total` items with rate and ETA, hidden when [`show_progress`] is false.
pub fn bar(g: &Global, total: u64, message: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(
        Some(total),
        if show_progress(g) {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:>14} [{bar:30}] {human_pos}/{human_len} {per_sec} ETA {eta} ({elapsed})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_message(message.to_string());
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

/// Prints a result: `value` as one JSON line with `--json`, else `human` (unless `--quiet`).
/// A standard output that cannot be written (a reader that went away) is an error, not a
/// panic as with `println!`.
pub fn emit(g: &Global, value: &serde_json::Value, human: &str) -> anyhow::Result<()> {
    if g.json {
        out(format_args!("{value}\n"))
    } else if !g.quiet {
        out(format_args!("{human}\n"))
    } else {
        Ok(())
    }
}

/// The mAP of an evaluation for the one-line summaries: on multi-label data (VOC style) also
/// the 11-point mAP of PASCAL VOC 2007, the figure VOC results are compared by.
pub fn map_summary(e: &dfk::pipeline::Evaluation) -> String {
    let map = format!("mAP {:.2} %", 100.0 * e.map);
    if e.multilabel {
        format!("{map} (11-point VOC 2007 mAP {:.2} %)", 100.0 * e.map_voc11)
    } else {
        map
    }
}

/// Writes to standard output; failing to is an error naming it (`println!` would panic).
pub fn out(text: std::fmt::Arguments<'_>) -> anyhow::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_fmt(text)
        .and_then(|()| stdout.flush())
        .context("cannot write to standard output")
}

/// `eprintln!` for messages: a standard error that cannot be written (`dfk … 2>&1 | head -1`,
/// once `head` has gone) is ignored, where `eprintln!` would panic and end the work.
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}
pub(crate) use note;

/// Progress bars for the library's pipeline stages (one bar per stage). Without bars (quiet,
/// JSON, or no terminal), each finished stage is logged with its duration unless `--quiet`.
pub struct Bars<'a> {
    g: &'a Global,
    current: std::sync::Mutex<Option<(ProgressBar, String, std::time::Instant)>>,
}

impl<'a> Bars<'a> {
    pub fn new(g: &'a Global) -> Self {
        Bars {
            g,
            current: std::sync::Mutex::new(None),
        }
    }
}

impl dfk::pipeline::Progress for Bars<'_> {
    fn start(&self, stage: &str, total: usize) {
        let pb = if total > 1 {
            bar(self.g, total as u64, stage)
        } else {
            spinner(self.g, stage)
        };
        if let Ok(mut c) = self.current.lock() {
            *c = Some((pb, stage.to_string(), std::time::Instant::now()));
        }
    }

    fn advance(&self, n: usize) {
        if let Ok(c) = self.current.lock() {
            if let Some((pb, _, _)) = c.as_ref() {
                pb.inc(n as u64);
            }
        }
    }

    fn finish(&self) {
        if let Ok(mut c) = self.current.lock() {
            if let Some((pb, stage, start)) = c.take() {
                pb.finish();
                if !show_progress(self.g) && !self.g.quiet && !self.g.json {
                    note!("{stage:>14}: {:.2} s", start.elapsed().as_secs_f64());
                }
            }
        }
    }
}

/// A spinner with elapsed time for a step without a known length.
pub fn spinner(g: &Global, message: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(
        None,
        if show_progress(g) {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    pb.set_style(
        ProgressStyle::with_template("{msg:>14} {spinner} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    pb.set_message(message.to_string());
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

/// The descriptor cache folder: `--cache DIR`, else `$XDG_CACHE_HOME/dfk/descriptors`, else
/// `$HOME/.cache/dfk/descriptors`; `None` with `--no-cache` or when no home is known.
pub fn cache_dir(flag: Option<&std::path::Path>, disabled: bool) -> Option<std::path::PathBuf> {
    if disabled {
        return None;
    }
    if let Some(p) = flag {
        return Some(folder_path(p));
    }
    default_cache_dir().map(|(dir, _)| dir)
}

/// The default descriptor cache folder and the environment variable it comes from.
fn default_cache_dir() -> Option<(std::path::PathBuf, &'static str)> {
    let (base, var) = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(x) => (std::path::PathBuf::from(x), "XDG_CACHE_HOME"),
        None => (
            std::path::PathBuf::from(std::env::var_os("HOME")?).join(".cache"),
            "HOME",
        ),
    };
    Some((base.join("dfk").join("descriptors"), var))
}

/// [`cache_dir`], checked before any image is read (by `train`, `eval`, `encode`, `extract`):
///
/// - An explicit `--cache DIR` that exists but is not a folder (a regular file, say) is a
///   usage error (exit status 2); so is one that is the image folder given as `--data` or
///   lies inside it, whose sub-folders would be read as classes by the next run on that data
///   (checked as `--report` and `--out-dir` are, by
///   [`DataArgs::check_folders_outside_data`](crate::options::DataArgs::check_folders_outside_data)).
/// - The default folder (from `$XDG_CACHE_HOME` or `$HOME`) that exists but is not a folder
///   is an error too, naming the path and the variable it comes from, but with exit status 1:
///   no flag was wrong. It is not checked against `--data` (it lies there only when the data
///   folder is, or holds, the cache home), nor with `--format npy`, whose precomputed
///   descriptors never use the cache.
/// - Whether the folder can be created and written is not probed: storing descriptors is
///   allowed to fail (`load_or_extract` warns and goes on without the cache, and a read-only
///   cache still serves its entries), so a cache below a file or in a read-only folder only
///   brings that warning, as before.
pub fn checked_cache_dir(
    flag: Option<&std::path::Path>,
    disabled: bool,
    data: &crate::options::DataArgs,
) -> anyhow::Result<Option<std::path::PathBuf>> {
    if disabled {
        return Ok(None);
    }
    if let Some(dir) = flag {
        if data.is_descriptors() {
            return usage(format!(
                "--cache {}: the data are descriptors already (--format npy), which are read, \
                 not extracted or cached: leave --cache out",
                dir.display()
            ));
        }
        if std::fs::metadata(dir).is_ok_and(|m| !m.is_dir()) {
            return usage(format!(
                "--cache {}: exists and is not a folder: give a folder path (created when \
                 missing), or --no-cache",
                dir.display()
            ));
        }
        data.check_folders_outside_data(&[("--cache", dir)])?;
    } else if !data.is_descriptors() {
        if let Some((dir, var)) = default_cache_dir() {
            if std::fs::metadata(&dir).is_ok_and(|m| !m.is_dir()) {
                anyhow::bail!(
                    "the default descriptor cache {} (from ${var}) exists and is not a folder: \
                     remove or rename it, or choose a folder with --cache DIR, or give \
                     --no-cache",
                    dir.display()
                );
            }
        }
    }
    Ok(cache_dir(flag, disabled))
}

/// Whether `--seed` was given on the command line (clap fills in 0 otherwise; a configuration
/// file's seed is kept unless the flag is explicit).
pub fn seed_given() -> bool {
    flag_given("--seed")
}

/// Whether the long flag `flag` (e.g. `--patience`) was given on the command line, as
/// `--flag VALUE` or `--flag=VALUE` (clap fills in defaults, which are not "given").
pub fn flag_given(flag: &str) -> bool {
    std::env::args_os().any(|a| {
        let a = a.to_string_lossy();
        a == flag
            || a.strip_prefix(flag)
                .is_some_and(|rest| rest.starts_with('='))
    })
}

/// Checks, before any work, the files a command will write: no output may be one of its
/// inputs or another output (a usage error, exit status 2), and each output's folder must take
/// a new file (tried with an empty probe file, removed at once), so that a command does not
/// compute for minutes and then fail to save, or save one output and fail on the next.
/// Devices and FIFOs (`/dev/null`) are written in place and need no probe.
pub fn check_outputs(
    outputs: &[(&str, &std::path::Path)],
    inputs: &[(&str, &std::path::Path)],
) -> anyhow::Result<()> {
    check_outputs_in_folders(outputs, &[], inputs)
}

/// [`check_outputs`] for a command that also writes files into folders it creates (a
/// `--report` folder, `--out-dir`): `in_folders` are those files, each with the flag of its
/// folder. They must not collide with the inputs or the other outputs either, their folders
/// are checked as [`check_output_dir`] does, and none of them may be an existing directory.
pub fn check_outputs_in_folders(
    outputs: &[(&str, &std::path::Path)],
    in_folders: &[(&str, &std::path::Path)],
    inputs: &[(&str, &std::path::Path)],
) -> anyhow::Result<()> {
    let all: Vec<(&str, &std::path::Path)> = outputs.iter().chain(in_folders).copied().collect();
    check_distinct(&all, inputs)?;
    for &(flag, out) in outputs {
        probe_writable(flag, out)?;
    }
    check_folder_outputs(in_folders)
}

/// No output may be an input, another output, or lie inside another output (which is
/// written as a file).
fn check_distinct(
    outputs: &[(&str, &std::path::Path)],
    inputs: &[(&str, &std::path::Path)],
) -> anyhow::Result<()> {
    for (i, &(flag, out)) in outputs.iter().enumerate() {
        for &(input_flag, input) in inputs {
            if same_file(out, input) {
                // Inputs are named by their flag or kind (`--data`, "GMM file"), or described
                // with an article ("an image").
                let what = if input_flag.starts_with("a ") || input_flag.starts_with("an ") {
                    input_flag.to_string()
                } else {
                    format!("the input {input_flag}")
                };
                return usage(format!(
                    "{flag} {} is also {what}: writing it would replace the input; choose \
                     another output path",
                    out.display()
                ));
            }
        }
        for &(other_flag, other) in &outputs[..i] {
            if same_file(out, other) {
                return usage(format!(
                    "{flag} and {other_flag} are the same file ({}): give each output its own \
                     path",
                    out.display()
                ));
            }
        }
        for &(other_flag, other) in outputs {
            if let (Some(a), Some(b)) = (absolute(out), absolute(other)) {
                if a != b && a.starts_with(&b) {
                    if other.is_dir() {
                        // The real mistake (`-o folder/`, whose checkpoint lies inside it).
                        return usage(format!(
                            "{other_flag} {}: is a directory, expected a file path",
                            other.display()
                        ));
                    }
                    return usage(format!(
                        "{flag} {} lies inside {other_flag} {}, which is written as a file: \
                         give each output its own path",
                        out.display(),
                        other.display()
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Refuses, before any work, an output that is one of the files a data set consists of (an
/// image, or a descriptor file named in a list file): `what` says where they come from (e.g.
/// "an image listed in --data list.txt"). Only outputs that exist can be such a file, so
/// this costs nothing when none does.
pub fn check_not_data<'p>(
    outputs: &[(&str, &std::path::Path)],
    what: &str,
    files: impl IntoIterator<Item = &'p std::path::Path>,
) -> anyhow::Result<()> {
    let existing: Vec<(&str, &std::path::Path)> = outputs
        .iter()
        .copied()
        .filter(|(_, p)| std::fs::metadata(p).is_ok_and(|m| m.is_file()))
        .collect();
    if existing.is_empty() {
        return Ok(());
    }
    for file in files {
        for &(flag, out) in &existing {
            if same_file(out, file) {
                return usage(format!(
                    "{flag} {} is also {what} ({}): writing it would replace the input; \
                     choose another output path",
                    out.display(),
                    file.display()
                ));
            }
        }
    }
    Ok(())
}

/// Whether `a` and `b` name the same file: the same file on disk when both exist, else the
/// same absolute path (the existing part resolved).
fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(ma), Ok(mb)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            return ma.dev() == mb.dev() && ma.ino() == mb.ino();
        }
    }
    match (absolute(a), absolute(b)) {
        (Some(a), Some(b)) => a == b,
        _ => a == b,
    }
}

/// `path` made absolute: its longest existing ancestor resolved (links and `..`), the rest
/// appended with `.` and `..` applied as written.
fn absolute(path: &std::path::Path) -> Option<std::path::PathBuf> {
    use std::path::{Component, Path};
    let mut rest = Vec::new();
    let mut p = path;
    loop {
        let existing = if p.as_os_str().is_empty() {
            Path::new(".")
        } else {
            p
        };
        if let Ok(mut out) = std::fs::canonicalize(existing) {
            for c in rest.iter().rev() {
                match c {
                    Component::ParentDir => {
                        out.pop();
                    }
                    Component::Normal(name) => out.push(name),
                    _ => {}
                }
            }
            return Some(out);
        }
        rest.push(p.components().next_back()?);
        p = p.parent()?;
    }
}

/// Refuses a folder output (`flag dir`) that lies inside the image folder `root`, whose
/// sub-folders are read as classes, or inside one of its class folders reached through a
/// symbolic link (`root/cat` → `elsewhere/cat`).
pub fn check_outside_image_folder(
    flag: &str,
    dir: &std::path::Path,
    root: &std::path::Path,
) -> anyhow::Result<()> {
    let inside_class = || {
        std::fs::read_dir(root).ok().and_then(|entries| {
            entries
                .flatten()
                // Hidden folders are not classes.
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .find(|class| lies_inside(dir, class))
        })
    };
    if lies_inside(dir, root) {
        return usage(format!(
            "{flag} {} lies inside the image folder --data {}, whose sub-folders are read as \
             classes: choose a folder outside it",
            dir.display(),
            root.display()
        ));
    }
    if let Some(class) = inside_class() {
        return usage(format!(
            "{flag} {} lies inside the class folder {} of --data {} (through a symbolic link), \
             whose files are read as images: choose a folder outside it",
            dir.display(),
            class.display(),
            root.display()
        ));
    }
    Ok(())
}

/// Whether `path` is `folder` or lies below it (both made absolute, links resolved where they
/// exist).
pub fn lies_inside(path: &std::path::Path, folder: &std::path::Path) -> bool {
    match (absolute(path), absolute(folder)) {
        (Some(p), Some(f)) => p.starts_with(f),
        _ => false,
    }
}

/// A folder path as the file system functions expect it: `.` components dropped (`out/.` is
/// `out`, which `std::fs::create_dir_all` would otherwise fail to create).
pub fn folder_path(dir: &std::path::Path) -> std::path::PathBuf {
    let p: std::path::PathBuf = dir.components().collect();
    if p.as_os_str().is_empty() {
        std::path::PathBuf::from(".")
    } else {
        p
    }
}

/// Creates the output folder `dir` and its missing parents ([`folder_path`] first). The
/// folders it created are removed again (when still empty) if the returned guard is dropped
/// before [`CreatedDirs::keep`]: a command that fails leaves no empty output folder behind.
pub fn create_output_dir(flag: &str, dir: &std::path::Path) -> anyhow::Result<CreatedDirs> {
    let dir = folder_path(dir);
    let missing: Vec<std::path::PathBuf> = dir
        .ancestors()
        .take_while(|p| !p.as_os_str().is_empty() && std::fs::symlink_metadata(p).is_err())
        .map(|p| p.to_path_buf())
        .collect();
    // Each missing folder made one by one, outermost first, and counted as this run's only
    // when this run made it (another process may make the same one at the same time: a
    // failure or signal here must not remove that one's folders). Under the lock that
    // [`remove_created_dirs`] takes for good, so that a signal sees every folder made.
    let mut all = CREATED.lock().unwrap_or_else(|e| e.into_inner());
    let mut created = Vec::new();
    for folder in missing.iter().rev() {
        match std::fs::create_dir(folder) {
            Ok(()) => created.push(folder.clone()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && folder.is_dir() => {}
            Err(e) => {
                drop(all);
                drop(CreatedDirs { created });
                return Err(anyhow::Error::new(e))
                    .with_context(|| format!("{flag}: cannot create {}", folder.display()));
            }
        }
    }
    // Deepest first, as the guard removes them.
    created.reverse();
    all.extend_from_slice(&created);
    Ok(CreatedDirs { created })
}

/// The folders of every live [`CreatedDirs`], for [`remove_created_dirs`] on a signal.
static CREATED: std::sync::Mutex<Vec<std::path::PathBuf>> = std::sync::Mutex::new(Vec::new());

fn unregister_created(dirs: &[std::path::PathBuf]) {
    if let Ok(mut all) = CREATED.lock() {
        all.retain(|d| !dirs.contains(d));
    }
}

/// Removes the folders that outputs in progress created, deepest first, where they are empty
/// (after [`dfk::npy::remove_temporary_files`]): for a program about to exit on a signal,
/// whose guards' `Drop` will not run.
pub fn remove_created_dirs() {
    let mut all = CREATED.lock().unwrap_or_else(|e| e.into_inner());
    all.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for dir in all.drain(..) {
        let _ = std::fs::remove_dir(dir);
    }
    // Kept taken: no folder is made between here and the exit.
    std::mem::forget(all);
}

/// The folders [`create_output_dir`] created, deepest first.
#[must_use = "dropping the guard removes the folders it created"]
pub struct CreatedDirs {
    created: Vec<std::path::PathBuf>,
}

impl CreatedDirs {
    /// The output is complete: keep the folders.
    pub fn keep(mut self) {
        unregister_created(&self.created);
        self.created.clear();
    }

    /// One guard for the folders of `self` and of a `later` call, removed latest first (a
    /// parent that `self` created is then empty again when its turn comes).
    pub fn and(mut self, mut later: CreatedDirs) -> CreatedDirs {
        let mut created = std::mem::take(&mut later.created);
        created.append(&mut self.created);
        CreatedDirs { created }
    }
}

impl Drop for CreatedDirs {
    fn drop(&mut self) {
        // `remove_dir` removes only empty folders: anything another writer put there stays.
        for dir in &self.created {
            if std::fs::remove_dir(dir).is_err() {
                break;
            }
        }
        unregister_created(&self.created);
    }
}

/// For an output path that is a symbolic link: the file it points to, or a usage error naming
/// `flag` when the link leads nowhere (the writers refuse such a link, so refusing it before
/// the work saves a run that could not be saved). `None` when `path` is not a link.
fn link_target(flag: &str, path: &std::path::Path) -> anyhow::Result<Option<std::path::PathBuf>> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => match std::fs::canonicalize(path) {
            Ok(resolved) => Ok(Some(resolved)),
            // `/dev/stdout` on a pipe leads to `pipe:[…]`, which has no path but opens: a
            // stream written in place, as a FIFO is.
            Err(_) if is_stream(path) => Ok(None),
            Err(e) => {
                let to = std::fs::read_link(path)
                    .map(|t| format!(" (to {})", t.display()))
                    .unwrap_or_default();
                usage(format!(
                    "{flag} {}: a symbolic link{to} whose target does not exist ({e}): \
                     remove the link or create its target first",
                    path.display()
                ))
            }
        },
        _ => Ok(None),
    }
}

/// Whether `path` (through links) is a FIFO, socket or character device: written in place.
fn is_stream(path: &std::path::Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        std::fs::metadata(path).is_ok_and(|m| {
            let t = m.file_type();
            t.is_fifo() || t.is_char_device() || t.is_socket()
        })
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        false
    }
}

/// Fails, naming `flag` and the folder, when a new file cannot be created beside `path`.
fn probe_writable(flag: &str, path: &std::path::Path) -> anyhow::Result<()> {
    if path.file_name().is_none() {
        return usage(format!("{flag} {}: expected a file path", path.display()));
    }
    let written = path;
    // Through a symbolic link, the temporary file is written beside the file it points to.
    let resolved = link_target(flag, path)?;
    let path = resolved.as_deref().unwrap_or(path);
    let Some(name) = path.file_name() else {
        return usage(format!(
            "{flag} {}: expected a file path",
            written.display()
        ));
    };
    if let Ok(meta) = std::fs::metadata(path) {
        if !check_file_target(flag, written, &meta)? {
            return Ok(());
        }
    } else if dfk::npy::written_as_folder(written) {
        return usage(format!(
            "{flag} {}: ends in a path separator or `.` but is not a folder: expected a file \
             path",
            written.display()
        ));
    }
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    let probe = format!(".{}.probe-{}", name.to_string_lossy(), std::process::id());
    create_and_remove(&folder.join(probe)).with_context(|| {
        format!(
            "{flag} {}: cannot write a file in {}",
            written.display(),
            if folder == std::path::Path::new(".") {
                "the current folder".to_string()
            } else {
                format!("the folder {}", folder.display())
            }
        )
    })
}

/// For an output path that exists: an error for a directory; `true` for a regular file
/// (replaced, so its folder must take a new file), `false` for a device or FIFO (written in
/// place).
fn check_file_target(
    flag: &str,
    path: &std::path::Path,
    meta: &std::fs::Metadata,
) -> anyhow::Result<bool> {
    if meta.is_dir() {
        return usage(format!(
            "{flag} {}: is a directory, expected a file path",
            path.display()
        ));
    }
    Ok(meta.is_file())
}

/// Files a command writes into folders it creates: each file's folder is checked as
/// [`check_output_dir`] does, and no file may be an existing directory.
fn check_folder_outputs(files: &[(&str, &std::path::Path)]) -> anyhow::Result<()> {
    let mut folders: Vec<&std::path::Path> = Vec::new();
    for &(flag, file) in files {
        let folder = file.parent().unwrap_or(std::path::Path::new("."));
        if !folders.contains(&folder) {
            check_output_dir(flag, folder)?;
            folders.push(folder);
        }
        link_target(flag, file)?;
        if let Ok(meta) = std::fs::metadata(file) {
            check_file_target(flag, file, &meta)?;
        }
    }
    Ok(())
}

/// Creates `probe` as a new empty file and removes it again: whether its folder takes files.
fn create_and_remove(probe: &std::path::Path) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(probe)?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// Checks, before any work, a folder a command will write into (creating it and missing
/// parents if needed): it must not be a file, and the folder, or its nearest existing
/// ancestor, must take a new file.
pub fn check_output_dir(flag: &str, dir: &std::path::Path) -> anyhow::Result<()> {
    let normal = folder_path(dir);
    let mut existing = normal.as_path();
    loop {
        match std::fs::metadata(existing) {
            Ok(m) if m.is_dir() => break,
            Ok(_) => {
                return usage(format!(
                    "{flag} {}: {} exists and is not a folder",
                    dir.display(),
                    existing.display()
                ))
            }
            Err(_) => match existing.parent() {
                Some(p) if !p.as_os_str().is_empty() => existing = p,
                _ => {
                    existing = std::path::Path::new(".");
                    break;
                }
            },
        }
    }
    let probe = existing.join(format!(".dfk-probe-{}", std::process::id()));
    create_and_remove(&probe).with_context(|| {
        format!(
            "{flag} {}: cannot write in {}",
            dir.display(),
            existing.display()
        )
    })
}

/// A library parameter error as a usage error (exit status 2) naming the command-line flag:
/// `flags` maps the library's parameter names to the flags that set them. Other errors are
/// returned as they are.
pub fn as_flag_error(e: dfk::Error, flags: &[(&str, &str)]) -> anyhow::Error {
    if let dfk::Error::InvalidParameter {
        name,
        value,
        expected,
    } = &e
    {
        if let Some((_, flag)) = flags.iter().find(|(n, _)| n == name) {
            let value = crate::options::tidy_number(value);
            return UsageError(format!("{flag} {value}: expected {expected}")).into();
        }
    }
    e.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_output_folders_are_removed_unless_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let deep = tmp.path().join("a/b/c");
        drop(create_output_dir("--out-dir", &deep).unwrap());
        assert!(!tmp.path().join("a").exists(), "dropped: a/b/c removed");

        // A folder that already existed stays, and only what was created goes.
        std::fs::create_dir(tmp.path().join("a")).unwrap();
        drop(create_output_dir("--out-dir", &deep).unwrap());
        assert!(tmp.path().join("a").is_dir() && !tmp.path().join("a/b").exists());

        // A folder someone wrote into is not removed (nor its parents).
        let guard = create_output_dir("--out-dir", &deep).unwrap();
        std::fs::write(deep.join("other.txt"), b"x").unwrap();
        drop(guard);
        assert!(deep.join("other.txt").is_file());

        let kept = tmp.path().join("k/l");
        create_output_dir("--out-dir", &kept).unwrap().keep();
        assert!(kept.is_dir());
    }
}
