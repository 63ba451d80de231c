//! `dfk info`: what a model file holds.

use std::fmt::Write as _;
use std::path::PathBuf;

use dfk::model::{self, ModelFile, ModelKind};
use dfk::pipeline::{Pipeline, PipelineConfig};

use crate::util::emit;
use crate::Global;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A model file (pipeline, GMM or SVM).
    model: Option<PathBuf>,
    /// Print the pipeline configuration as TOML (usable with `--config`); without a model
    /// file, the default configuration.
    #[arg(long)]
    config: bool,
}

pub fn run(a: Args, g: &Global) -> anyhow::Result<()> {
    let Some(path) = &a.model else {
        if a.config {
            print_config(&PipelineConfig::default(), g)?;
            return Ok(());
        }
        return crate::util::usage("give a model file (or --config for the default configuration)");
    };
    crate::util::require_file_on_disk(
        "the model",
        path,
        "`dfk info` reads it twice (its summary, then a full load)",
    )?;
    let s = model::summarize(path)?;
    if a.config {
        if s.header.config.is_null() {
            anyhow::bail!(
                "{}: a {} model holds no pipeline configuration (only pipeline models, from train and deep, do)",
                path.display(),
                s.header.kind
            );
        }
        let cfg: PipelineConfig = serde_json::from_value(s.header.config.clone())
            .map_err(|e| anyhow::anyhow!("{}: header field `config`: {e}", path.display()))?;
        // Settings of a file that does not load are no settings to train with.
        if let Some(e) = load_problem(s.header.kind, path) {
            return Err(anyhow::Error::from(e).context(format!(
                "{} does not load as a {} model, so its configuration is not printed",
                path.display(),
                s.header.kind
            )));
        }
        print_config(&cfg, g)?;
        return Ok(());
    }
    let h = &s.header;
    let mut text = String::new();
    writeln!(
        text,
        "{}: dfk model of kind {} (format version {}, written by {}), {} bytes",
        path.display(),
        h.kind,
        h.format_version,
        h.writer,
        s.bytes
    )?;
    if !h.class_names.is_empty() {
        writeln!(
            text,
            "classes ({}): {}",
            h.class_names.len(),
            h.class_names.join(", ")
        )?;
    }
    writeln!(text, "arrays:")?;
    let width = s.arrays.iter().map(|(n, _, _)| n.len()).max().unwrap_or(0);
    for (name, dtype, shape) in &s.arrays {
        writeln!(text, "  {name:<width$} {dtype:<4} {shape:?}")?;
    }
    if let Some(obj) = h.history.as_object() {
        for key in [
            "train_accuracy",
            "test_accuracy",
            "test_map",
            "svm_objective",
            "data",
        ] {
            if let Some(v) = obj.get(key).filter(|v| !v.is_null()) {
                writeln!(text, "{key}: {v}")?;
            }
        }
    }
    if let Some(line) = deep_summary(&h.history) {
        writeln!(text, "{line}")?;
    }
    if !h.config.is_null() {
        writeln!(text, "configuration: {}", h.config)?;
    }
    // The summary reads the header and the arrays' shapes only: load the file as the
    // commands that use it do, so that an inconsistent one is reported here too.
    let problem = load_problem(h.kind, path);
    let mut json = serde_json::to_value(&s)?;
    json["problem"] = problem.as_ref().map(|e| e.to_string()).into();
    if let Some(e) = &problem {
        writeln!(text, "problem: the file does not load: {e}")?;
    }
    emit(g, &json, text.trim_end())?;
    match problem {
        Some(e) => Err(anyhow::Error::from(e).context(format!(
            "{} does not load as a {} model",
            path.display(),
            h.kind
        ))),
        None => Ok(()),
    }
}

/// One line on a Deep Fisher Kernel model's training (`history.deep`): iterations, the kept
/// one and why it stopped, and the objective and scores of iteration 0 (the plain Fisher
/// kernel) against the kept iteration's.
fn deep_summary(history: &serde_json::Value) -> Option<String> {
    let deep = history.get("deep")?;
    let records = deep.get("records")?.as_array()?;
    let best = deep.get("best_iteration")?.as_u64()? as usize;
    let (first, kept) = (records.first()?, records.get(best)?);
    let metric = deep
        .get("metric")
        .and_then(|m| m.as_str())
        .unwrap_or("metric");
    let pair = |key: &str, percent: bool| -> Option<String> {
        let (a, b) = (first.get(key)?.as_f64()?, kept.get(key)?.as_f64()?);
        Some(if percent {
            format!("{key} {:.2} % → {:.2} %", 100.0 * a, 100.0 * b)
        } else {
            format!("{key} {a:.4} → {b:.4}")
        })
    };
    let iterations = records.len() - 1;
    let mut parts = vec![format!(
        "deep: {iterations} iteration{}, kept iteration {best} ({})",
        if iterations == 1 { "" } else { "s" },
        deep.get("stop_reason")
            .and_then(|r| r.as_str())
            .unwrap_or("")
    )];
    parts.extend(pair("objective", false));
    for key in ["val_metric", "test_metric"] {
        parts.extend(pair(key, true).map(|p| p.replace("metric", metric)));
    }
    Some(parts.join("; "))
}

/// Why the model file at `path` (of kind `kind`) does not load as the commands that use it
/// load it, if it does not.
fn load_problem(kind: ModelKind, path: &std::path::Path) -> Option<dfk::Error> {
    match kind {
        ModelKind::Pipeline => ModelFile::load(path)
            .and_then(|m| Pipeline::from_model(&m, path))
            .err(),
        ModelKind::Gmm => model::load_gmm(path).err(),
        ModelKind::Svm => model::load_svm(path).err(),
    }
}

/// The configuration as TOML (for `--config`), or with `--json` that TOML and the settings as
/// one JSON document.
fn print_config(cfg: &PipelineConfig, g: &Global) -> anyhow::Result<()> {
    let text = shortest_f32(&toml::to_string(cfg)?);
    if g.json {
        let json = serde_json::json!({"toml": text, "config": cfg});
        crate::util::out(format_args!("{}\n", serde_json::to_string_pretty(&json)?))
    } else {
        crate::util::out(format_args!("{text}"))
    }
}

/// `text` (TOML) with every `key = float` that is an `f32` setting widened to `f64` (`1e-6`
/// became `0.0000009999999974752427`) written as the shortest decimal of that `f32`, which
/// reads back to the same `f32`; the keys keep their order.
fn shortest_f32(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let short = line.split_once(" = ").and_then(|(key, value)| {
            let v: f64 = value.parse().ok()?;
            let narrow = v as f32;
            let fits = value.contains('.') && v.is_finite() && narrow as f64 == v;
            // Display gives the shortest decimal; TOML needs a point to read a float.
            let mut digits = narrow.to_string();
            if !digits.contains(['.', 'e']) {
                digits.push_str(".0");
            }
            fits.then(|| format!("{key} = {digits}"))
        });
        out.push_str(short.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}
