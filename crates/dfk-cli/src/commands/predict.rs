//! `dfk predict`: class scores and predicted labels for new images, as CSV or JSON.

use std::path::PathBuf;

use anyhow::Context;

use dfk::dataset::{Dataset, ImageSource, Item};
use dfk::npy::write_bytes_atomic;
use serde_json::json;

use crate::commands::eval::load_pipeline;
use crate::options::DataArgs;
use crate::util::{check_outputs, usage, Bars};
use crate::Global;

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A header row, then one row per image: image, predicted class index (`label`), its
    /// name (`class`), then one `score:<name>` column per class.
    Csv,
    /// An array of {image, label, class, scores}.
    Json,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model file (from `dfk train`).
    #[arg(long)]
    model: PathBuf,
    /// Image files to classify, or folders (the images directly in them, sorted by name; or
    /// use the data options).
    images: Vec<PathBuf>,
    #[command(flatten)]
    data: DataArgs,
    /// Output format (default: csv, or json with --json).
    #[arg(long, value_enum)]
    output_format: Option<Format>,
    /// Write to this file instead of standard output.
    #[arg(long, short = 'o')]
    out: Option<PathBuf>,
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// An image's path as text: as it is when it is UTF-8; otherwise with every non-ASCII byte
/// escaped (`\xff`), so that two names never print alike (lossy text would make both `�`).
fn path_text(p: &std::path::Path) -> String {
    match p.to_str() {
        Some(s) => s.to_string(),
        None => {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!(
                    "{}: file names that are not UTF-8 are written with their non-ASCII bytes \
                     escaped (\\xNN)",
                    p.display()
                )
            });
            p.as_os_str().as_encoded_bytes().escape_ascii().to_string()
        }
    }
}

pub fn run(a: Args, g: &Global) -> anyhow::Result<()> {
    if !a.images.is_empty() {
        // Settings of a data set (--data); images given as arguments are read as they are.
        for (flag, given) in [
            ("--format", a.data.format.is_some()),
            ("--split", a.data.split.is_some()),
            ("--labels", a.data.labels.is_some()),
        ] {
            if given {
                return usage(format!(
                    "{flag} describes a data set given with --data: image files and folders \
                     given as arguments are read as images"
                ));
            }
        }
    }
    if let Some(out) = &a.out {
        let mut inputs = a.data.inputs();
        inputs.push(("--model", &a.model));
        inputs.extend(a.images.iter().map(|p| ("an image", p.as_path())));
        check_outputs(&[("--out", out)], &inputs)?;
        a.data.check_outputs_not_listed(&[("--out", out)])?;
    }
    let pipeline = load_pipeline(&a.model)?;
    let has_data = a.data.data.is_some() || a.data.fashion_mnist.is_some() || a.data.embedded;
    let mut descriptors = None;
    let data = match (a.images.is_empty(), has_data) {
        (false, false) => {
            // A folder stands for the images directly in it (sorted by name).
            let mut images = Vec::with_capacity(a.images.len());
            for p in &a.images {
                if !p.is_dir() {
                    images.push(p.clone());
                    continue;
                }
                let found = dfk::dataset::image_files(p)?;
                if let Some(first) = found.other_formats.first() {
                    tracing::warn!(
                        "{}: {} file{} of other image formats not read ({first}{}): only {} \
                         files in a folder are read; name such a file on its own to try it",
                        p.display(),
                        found.other_formats.len(),
                        if found.other_formats.len() == 1 {
                            ""
                        } else {
                            "s"
                        },
                        if found.other_formats.len() > 1 {
                            ", …"
                        } else {
                            ""
                        },
                        dfk::dataset::IMAGE_EXTENSIONS.join("/"),
                        first = first.display(),
                    );
                }
                let (files, has_folders) = (found.images, !found.folders.is_empty());
                if files.is_empty() {
                    if has_folders {
                        return crate::util::usage(format!(
                            "{}: a folder without images directly in it: give --data {} for a \
                             folder of class sub-folders",
                            p.display(),
                            p.display()
                        ));
                    }
                    anyhow::bail!(
                        "{}: the folder holds no image ({} files)",
                        p.display(),
                        dfk::dataset::IMAGE_EXTENSIONS.join("/")
                    );
                }
                images.extend(files);
            }
            // The folders' images are inputs too: --out must not replace one of them.
            if let Some(out) = &a.out {
                let inputs: Vec<(&str, &std::path::Path)> =
                    images.iter().map(|p| ("an image", p.as_path())).collect();
                check_outputs(&[("--out", out)], &inputs)?;
            }
            if let Some(n) = a.data.limit {
                images.truncate(n);
            }
            let mut kept = Vec::with_capacity(images.len());
            for p in images {
                // A pipe (`<(cat x.png)`, `/dev/stdin`) is read once, as a file is; a device
                // such as /dev/zero would never end.
                #[cfg(unix)]
                let pipe = {
                    use std::os::unix::fs::FileTypeExt;
                    std::fs::metadata(&p).is_ok_and(|m| m.file_type().is_fifo())
                };
                #[cfg(not(unix))]
                let pipe = false;
                if p.is_file() || pipe {
                    kept.push(p);
                    continue;
                }
                let why = match (std::fs::symlink_metadata(&p), std::fs::metadata(&p)) {
                    (Ok(_), Ok(_)) => "not a regular file (a device?)",
                    (Ok(m), Err(_)) if m.file_type().is_symlink() => {
                        "a symbolic link that leads to no file"
                    }
                    _ => "no such file",
                };
                if a.data.skip_unreadable {
                    tracing::warn!("skipping {}: {why}", p.display());
                    continue;
                }
                anyhow::bail!("{}: {why}: expected an image file", p.display());
            }
            let set = Dataset {
                class_names: pipeline.class_names.clone(),
                items: kept
                    .iter()
                    .map(|p| Item {
                        source: ImageSource::File(p.clone()),
                        labels: Vec::new(),
                        difficult: Vec::new(),
                    })
                    .collect(),
                multilabel: false,
                origin: None,
            };
            if !a.data.skip_unreadable {
                set
            } else {
                let set = crate::util::keep_decodable(set, "the images given")?;
                if set.is_empty() {
                    anyhow::bail!("no image left to predict (--skip-unreadable)");
                }
                set
            }
        }
        (true, true) => {
            let loaded = a.data.load()?;
            if let Some(out) = &a.out {
                a.data
                    .check_outputs_not_loaded(&[("--out", out)], &loaded)?;
            }
            descriptors = loaded.descriptors;
            match loaded.test {
                Some(test) => {
                    descriptors = None;
                    test
                }
                None => loaded.train,
            }
        }
        (true, false) => {
            return usage(
                "nothing to predict: give image files or one data option (--data, \
                 --fashion-mnist, --embedded)",
            )
        }
        (false, true) => {
            return usage(
                "give image files or one data option (--data, --fashion-mnist, --embedded), \
                 not both",
            )
        }
    };
    if descriptors.is_some() {
        crate::util::check_positions_not_needed(&pipeline.config, Some(&a.model))?;
    }
    let fv = match &descriptors {
        Some(raw) => pipeline.encode_raw(raw, &Bars::new(g)),
        None => pipeline.encode_dataset(&data, None, &Bars::new(g)),
    }
    .with_context(|| format!("encoding with the model in {}", a.model.display()))?;
    let n = data.len();
    let c = pipeline.svm.classes;
    let scores = pipeline
        .try_scores(&fv, n)
        .with_context(|| format!("scoring with the model in {}", a.model.display()))?;
    let pred = dfk::svm::argmax_rows(&scores, c);
    let names: Vec<String> = (0..c)
        .map(|i| {
            pipeline
                .class_names
                .get(i)
                .cloned()
                .unwrap_or_else(|| i.to_string())
        })
        .collect();
    let format = a
        .output_format
        .unwrap_or(if g.json { Format::Json } else { Format::Csv });
    if g.json && format == Format::Csv && a.out.is_none() {
        // --json promises one JSON document on stdout.
        return crate::util::usage(
            "--json with --output-format csv: the predictions would be CSV on stdout; give \
             --out FILE for the CSV, or leave --output-format out",
        );
    }
    // Files by path; in-memory images (IDX, embedded) by their index in the set.
    let image = |i: usize| match &data.items[i].source {
        ImageSource::File(p) => path_text(p),
        ImageSource::Memory { .. } => format!("#{i}"),
    };
    let mut text = String::new();
    match format {
        Format::Csv => {
            text.push_str("image,label,class");
            for name in &names {
                text.push(',');
                text.push_str(&csv_field(&format!("score:{name}")));
            }
            text.push('\n');
            for i in 0..n {
                text.push_str(&csv_field(&image(i)));
                text.push_str(&format!(",{},{}", pred[i], csv_field(&names[pred[i]])));
                for s in &scores[i * c..(i + 1) * c] {
                    text.push_str(&format!(",{s}"));
                }
                text.push('\n');
            }
        }
        Format::Json => {
            let rows: Vec<serde_json::Value> = (0..n)
                .map(|i| {
                    json!({
                        "image": image(i),
                        "label": pred[i],
                        "class": names[pred[i]],
                        "scores": scores[i * c..(i + 1) * c],
                    })
                })
                .collect();
            text = serde_json::to_string_pretty(&rows)?;
            text.push('\n');
        }
    }
    match &a.out {
        Some(p) => {
            write_bytes_atomic(p, text.as_bytes())?;
            // With --out, stdout carries the summary (JSON with --json), as other commands do.
            crate::util::emit(
                g,
                &json!({"out": p, "images": n, "classes": c}),
                &format!("predicted {n} images → {}", p.display()),
            )?;
        }
        None => crate::util::out(format_args!("{text}"))?,
    }
    Ok(())
}
