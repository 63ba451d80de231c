//! List files: one image per line, `path label [label ...]`.
//!
//! The path is relative to the folder of the list file (or absolute) and may contain neither
//! whitespace nor commas; labels follow, separated by whitespace or commas. `#` starts a comment
//! (at the start of a line or after whitespace); blank lines are ignored. The data set is
//! multi-label when any line has more than one distinct label.
//!
//! Classes: given explicitly, else read from `classes.txt` beside the list file (one name per
//! line), else inferred: `0..=max` when every label is written as an integer (then a negative
//! one, or one past [`crate::svm::MAX_CLASSES`], is an error naming the line), otherwise the
//! sorted distinct label names. With a class list, a label is a class name or, failing that,
//! an integer index into the list; anything else "names no class" and is an error.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::{checked_items, empty, Dataset, OnError, Split};
use crate::error::{Error, Result};

/// One parsed line.
struct Entry {
    line: usize,
    path: PathBuf,
    labels: Vec<String>,
}

fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    String::from_utf8(bytes).map_err(|e| {
        // A binary file given as a list: name the likely layouts.
        let b = e.as_bytes();
        let hint = if b.starts_with(&[0, 0, 8]) || b.starts_with(&[0x1f, 0x8b]) {
            " (it looks like an IDX or gzip file: for IDX images give --format idx and \
             --labels LABELS, or --fashion-mnist DIR for the four Fashion-MNIST files)"
        } else if b.starts_with(b"\x93NUMPY") {
            " (it is a .npy file: descriptors go in a list file with --format npy, or to \
             `dfk deep --descriptors`)"
        } else if image::guess_format(b).is_ok() {
            " (it is an image: a data set is a folder of class sub-folders or a list file; \
             `dfk predict --model M.dfk IMAGE…` classifies single images)"
        } else {
            ""
        };
        Error::format(
            path,
            format!(
                "not a text list file: invalid UTF-8 at byte {}{hint}",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// Removes a `#` comment that starts the line or follows whitespace.
/// Whether `name` reads back as itself from a line of a `classes.txt` (not empty, no
/// surrounding white space, no line break, no `#` that would start a comment).
pub fn fits_a_class_line(name: &str) -> bool {
    !name.is_empty()
        && name.trim() == name
        && !name.contains(['\n', '\r'])
        && strip_comment(name) == name
}

fn strip_comment(line: &str) -> &str {
    let bytes = line.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'#' && (i == 0 || bytes[i - 1].is_ascii_whitespace()) {
            return &line[..i];
        }
    }
    line
}

fn parse(list: &Path) -> Result<Vec<Entry>> {
    let text = read_text(list)?;
    // A byte-order mark (some Windows editors write one) is not part of the first path.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let base = list.parent().unwrap_or(Path::new(""));
    let mut entries = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let mut tokens = strip_comment(raw)
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|t| !t.is_empty());
        let Some(path) = tokens.next() else { continue };
        let labels: Vec<String> = tokens.map(str::to_string).collect();
        if labels.is_empty() {
            return Err(Error::format(
                list,
                format!(
                    "line {}: `{}` has no label: expected a path then one or more labels",
                    i + 1,
                    raw.trim()
                ),
            ));
        }
        entries.push(Entry {
            line: i + 1,
            path: base.join(path),
            labels,
        });
    }
    if entries.is_empty() {
        return Err(empty(format!("list file {}", list.display())));
    }
    Ok(entries)
}

/// Warns when a list names a file more than once: each line is an image of the data set, so a
/// repeated one trains twice and counts twice in the metrics (with conflicting labels, as
/// two images of different classes).
fn warn_repeated_paths(list: &Path, entries: &[Entry]) {
    let mut first_line = std::collections::HashMap::new();
    let mut repeats = 0usize;
    let mut example = None;
    for e in entries {
        if let Some(&line) = first_line.get(&e.path) {
            repeats += 1;
            example.get_or_insert((e.line, line));
        } else {
            first_line.insert(&e.path, e.line);
        }
    }
    if let Some((line, first)) = example {
        tracing::warn!(
            "{}: {repeats} line{} name{} a file listed before (line {line} repeats line \
             {first}): each line is one image, so a repeated file counts once per line",
            list.display(),
            if repeats == 1 { "" } else { "s" },
            if repeats == 1 { "s" } else { "" },
        );
    }
}

/// The files a list file names (relative paths joined to its folder), in file order, without
/// opening them or resolving the labels: what a program checks its outputs against before it
/// loads the data.
pub fn list_paths(list: impl AsRef<Path>) -> Result<Vec<PathBuf>> {
    Ok(parse(list.as_ref())?.into_iter().map(|e| e.path).collect())
}

/// Reads `classes.txt` (one name per line, `#` comments) when it exists beside `list` (a
/// list file, or a label file such as `dfk extract`'s `labels.npy`).
pub fn classes_beside(list: &Path) -> Result<Option<Vec<String>>> {
    let path = list.parent().unwrap_or(Path::new("")).join("classes.txt");
    if !path.is_file() {
        return Ok(None);
    }
    let names: Vec<String> = read_text(&path)?
        .lines()
        .map(|l| strip_comment(l).trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    if names.is_empty() {
        return Err(empty(format!("class list {}", path.display())));
    }
    let mut seen = BTreeSet::new();
    if let Some(twice) = names.iter().find(|n| !seen.insert(n.as_str())) {
        return Err(Error::format(
            &path,
            format!("class name `{twice}` is listed twice"),
        ));
    }
    Ok(Some(names))
}

/// Whether a label is written as an integer: an optional sign, then digits only.
fn looks_like_integer(label: &str) -> bool {
    let digits = label.strip_prefix(['+', '-']).unwrap_or(label);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Class names inferred from the labels of all lists: when every label is written as an
/// integer, they are class indices `0..=max`, and one that is not a valid index (negative,
/// or beyond [`crate::svm::MAX_CLASSES`]) is an error naming its file and line — except the
/// binary labels −1 / +1, which name the classes `-1` and `1`; otherwise the labels are
/// names, sorted.
fn infer_classes(lists: &[(&Path, Vec<Entry>)]) -> Result<Vec<String>> {
    let entries = || {
        lists
            .iter()
            .flat_map(|(p, e)| e.iter().map(move |e| (*p, e)))
    };
    let all = || entries().flat_map(|(_, e)| &e.labels);
    if !all().all(|l| looks_like_integer(l)) {
        let names: BTreeSet<&String> = all().collect();
        return Ok(names.into_iter().cloned().collect());
    }
    // The binary convention −1 / +1 (as in liblinear's files): two classes named by value.
    let values: Option<BTreeSet<i64>> = all().map(|l| l.parse::<i64>().ok()).collect();
    if values.is_some_and(|v| v.contains(&-1) && v.iter().all(|&x| x == -1 || x == 1)) {
        return Ok(vec!["-1".to_string(), "1".to_string()]);
    }
    let mut max = 0;
    for (list, entry) in entries() {
        for label in &entry.labels {
            match label.parse::<usize>() {
                Ok(c) if c < crate::svm::MAX_CLASSES => max = max.max(c),
                _ => {
                    let why = if label.starts_with('-') {
                        "is negative".to_string()
                    } else {
                        format!("is too large (at most {} classes)", crate::svm::MAX_CLASSES)
                    };
                    return Err(Error::format(
                        list,
                        format!(
                            "line {}: label {label} {why}: integer labels are class indices \
                             0, 1, … (use names, or a classes.txt beside the list, for other \
                             labels)",
                            entry.line
                        ),
                    ));
                }
            }
        }
    }
    Ok((0..=max).map(|c| c.to_string()).collect())
}

fn resolve(list: &Path, entry: &Entry, classes: &[String]) -> Result<Vec<usize>> {
    let mut out = Vec::with_capacity(entry.labels.len());
    for label in &entry.labels {
        let c = classes
            .iter()
            .position(|n| n == label)
            .or_else(|| label.parse::<usize>().ok().filter(|&c| c < classes.len()))
            .ok_or_else(|| {
                Error::format(
                    list,
                    format!(
                        "line {}: label `{label}` names no class (classes: {})",
                        entry.line,
                        classes.join(", ")
                    ),
                )
            })?;
        out.push(c);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// Labelled entries of several lists resolved against one class list.
pub(crate) struct Resolved {
    /// Per list: `(path, sorted distinct class indices)` per entry, in file order.
    pub lists: Vec<Vec<(PathBuf, Vec<usize>)>>,
    pub classes: Vec<String>,
    pub multilabel: bool,
}

/// Parses the lists and resolves their labels against one class list (`classes`, else
/// `classes.txt` beside the first list, else inferred from all lists). Files are not opened.
pub(crate) fn resolve_lists(paths: &[&Path], classes: Option<&[String]>) -> Result<Resolved> {
    let lists = paths
        .iter()
        .map(|&p| Ok((p, parse(p)?)))
        .collect::<Result<Vec<_>>>()?;
    for (list, entries) in &lists {
        warn_repeated_paths(list, entries);
    }
    let classes = match classes {
        Some([]) => return Err(empty("class list")),
        Some(c) => c.to_vec(),
        None => match classes_beside(paths[0])? {
            Some(c) => c,
            None => infer_classes(&lists)?,
        },
    };
    let mut resolved = Vec::with_capacity(lists.len());
    let mut multilabel = false;
    for (list, entries) in &lists {
        let mut candidates = Vec::with_capacity(entries.len());
        for e in entries {
            let labels = resolve(list, e, &classes)?;
            multilabel |= labels.len() > 1;
            candidates.push((e.path.clone(), labels));
        }
        resolved.push(candidates);
    }
    Ok(Resolved {
        lists: resolved,
        classes,
        multilabel,
    })
}

/// Builds one data set per list with a shared class list; returns them with the total skip count.
fn load_lists(
    paths: &[&Path],
    classes: Option<&[String]>,
    policy: OnError,
) -> Result<(Vec<Dataset>, usize)> {
    let resolved = resolve_lists(paths, classes)?;
    let mut skipped = 0;
    let mut out = Vec::with_capacity(paths.len());
    for (list, candidates) in paths.iter().zip(resolved.lists) {
        // An image that cannot be used is named with the list that names it.
        let (items, s) = checked_items(candidates, policy).map_err(|e| match e {
            Error::Io { path, error } => Error::format(
                path,
                format!(
                    "{error} (an image named in the list file {})",
                    list.display()
                ),
            ),
            Error::Format { path, message } => Error::format(
                path,
                format!(
                    "{message} (an image named in the list file {})",
                    list.display()
                ),
            ),
            other => other,
        })?;
        skipped += s;
        if items.is_empty() {
            return Err(empty(format!(
                "list file {} after skipping {s} unreadable images",
                list.display()
            )));
        }
        out.push(Dataset {
            class_names: resolved.classes.clone(),
            items,
            multilabel: resolved.multilabel,
            origin: None,
        });
    }
    Ok((out, skipped))
}

/// Loads a list file (format in the module docs). `classes` overrides `classes.txt` and
/// inference. Every image's header is checked; `policy` decides whether a missing or unreadable
/// image fails the load or is skipped (the count of skipped images is returned).
pub fn load_list_with(
    path: impl AsRef<Path>,
    classes: Option<&[String]>,
    policy: OnError,
) -> Result<(Dataset, usize)> {
    let (mut sets, skipped) = load_lists(&[path.as_ref()], classes, policy)?;
    Ok((sets.remove(0), skipped))
}

/// [`load_list_with`] with the classes from `classes.txt` or inferred, and [`OnError::Fail`].
pub fn load_list(path: impl AsRef<Path>) -> Result<Dataset> {
    Ok(load_list_with(path, None, OnError::Fail)?.0)
}

/// Loads explicit train / val / test list files with one class list for all of them (given,
/// else `classes.txt` beside the training list, else inferred from the labels of all lists), so
/// class indices agree across splits. A list without entries is [`Error::Empty`].
pub fn load_list_splits(
    train: impl AsRef<Path>,
    val: Option<&Path>,
    test: Option<&Path>,
    classes: Option<&[String]>,
    policy: OnError,
) -> Result<(Split, usize)> {
    let mut paths = vec![train.as_ref()];
    paths.extend(val);
    paths.extend(test);
    let (sets, skipped) = load_lists(&paths, classes, policy)?;
    let mut sets = sets.into_iter();
    let train = sets.next().ok_or_else(|| empty("train split"))?;
    let val = if val.is_some() { sets.next() } else { None };
    let test = if test.is_some() { sets.next() } else { None };
    Ok((Split { train, val, test }, skipped))
}
