//! `dfk eval`: metrics of a trained model on a labelled data set.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use dfk::dataset::Dataset;
use dfk::model::ModelFile;
use dfk::pipeline::Pipeline;
use serde_json::json;

use crate::commands::train::evaluate_on;
use crate::options::DataArgs;
use crate::report::{self, Report};
use crate::util::{check_outputs_in_folders, checked_cache_dir, emit};
use crate::Global;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model file (from `dfk train`).
    #[arg(long)]
    model: PathBuf,
    /// The labelled images (for --fashion-mnist and --embedded: their test set).
    #[command(flatten)]
    data: DataArgs,
    /// Write an HTML + JSON report here.
    #[arg(long, value_name = "DIR")]
    report: Option<PathBuf>,
    /// Descriptor cache folder (default: $XDG_CACHE_HOME/dfk/descriptors or ~/.cache/dfk/descriptors).
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// Extract descriptors afresh and do not store them.
    #[arg(long)]
    no_cache: bool,
}

/// Loads a pipeline model, naming the file in errors.
pub fn load_pipeline(path: &std::path::Path) -> anyhow::Result<Pipeline> {
    let model = ModelFile::load(path)?;
    Ok(Pipeline::from_model(&model, path)?)
}

pub fn run(a: Args, g: &Global) -> anyhow::Result<()> {
    let start = Instant::now();
    let report_files = a.report.as_deref().map(report::files).unwrap_or_default();
    let in_report: Vec<(&str, &std::path::Path)> = report_files
        .iter()
        .map(|p| ("--report", p.as_path()))
        .collect();
    let mut inputs = a.data.inputs();
    inputs.push(("--model", &a.model));
    check_outputs_in_folders(&[], &in_report, &inputs)?;
    if let Some(dir) = &a.report {
        a.data.check_folders_outside_data(&[("--report", dir)])?;
    }
    a.data.check_outputs_not_listed(&in_report)?;
    let cache = checked_cache_dir(a.cache.as_deref(), a.no_cache, &a.data)?;
    // Read once (a pipe will do): the report takes its history and configuration.
    let model = ModelFile::load(&a.model)?;
    let pipeline = Pipeline::from_model(&model, &a.model)?;
    let loaded = a.data.load()?;
    a.data.check_outputs_not_loaded(&in_report, &loaded)?;
    let (data, descriptors) = match &loaded.test {
        Some(t) => (t, None),
        None => (&loaded.train, loaded.descriptors.as_ref()),
    };
    let data = &*in_model_classes(data, &pipeline, &loaded.description, &a.model)?;
    let mut timings = Vec::new();
    let e = evaluate_on(
        &pipeline,
        data,
        descriptors,
        cache.as_deref(),
        g,
        &mut timings,
        "",
    )
    .with_context(|| {
        format!(
            "evaluating {} with the model in {}",
            loaded.description,
            a.model.display()
        )
    })?;
    let secs = start.elapsed().as_secs_f64();
    if let Some(dir) = &a.report {
        report::write(
            dir,
            &Report {
                title: "dfk evaluation report",
                evaluation: &e,
                timings: &timings,
                history: &model.history,
                config: &model.config,
                facts: vec![
                    ("data".into(), loaded.description.clone()),
                    ("model".into(), a.model.display().to_string()),
                ],
            },
        )?;
    }
    let acc = e
        .accuracy
        .map_or(String::new(), |v| format!("accuracy {:.2} %, ", 100.0 * v));
    emit(
        g,
        &json!({"images": e.images, "accuracy": e.accuracy, "map": e.map, "map_voc11": e.map_voc11,
                "top_k": e.top_k, "class_names": e.class_names, "per_class_ap": e.per_class_ap,
                "per_class_ap_voc11": e.per_class_ap_voc11,
                "absent_classes": e.absent_classes, "confusion": e.confusion, "seconds": secs,
                "timings": timings}),
        &format!(
            "{} images: {acc}{} ({:.1} s)",
            e.images,
            crate::util::map_summary(&e),
            secs
        ),
    )?;
    Ok(())
}

/// `data` with its labels as the model's class indices: numeric labels name classes by index
/// (a subset may not reach the model's last class: labels 0..2 of a 10-class model), named
/// classes that the model also has (a folder or list holding only some of them, or in another
/// order) are mapped by name; a name the model lacks, or names beside a model whose classes are
/// only numbered, is an error ([`check_same_classes`]).
pub fn in_model_classes<'a>(
    data: &'a Dataset,
    pipeline: &dfk::pipeline::Pipeline,
    description: &str,
    model_path: &std::path::Path,
) -> anyhow::Result<std::borrow::Cow<'a, Dataset>> {
    use std::borrow::Cow;
    let mut data = Cow::Borrowed(data);
    // By name first: class folders named `0 1 2` beside a model trained on folders
    // `0 1 10 2` are the model's classes of those names, not its indices 0..2.
    if let Some(d) = by_model_names(&data, &pipeline.class_names) {
        data = Cow::Owned(d);
    } else if data.classes() < pipeline.svm.classes && index_names(&data.class_names) {
        data.to_mut().class_names = (0..pipeline.svm.classes).map(|c| c.to_string()).collect();
    }
    check_same_classes(
        &data.class_names,
        &pipeline.class_names,
        description,
        model_path,
    )?;
    if data.classes() != pipeline.svm.classes {
        anyhow::bail!(
            "{description} has {} classes but the model in {} was trained on {}",
            data.classes(),
            model_path.display(),
            pipeline.svm.classes
        );
    }
    Ok(data)
}

/// `data` with its classes renamed to the model's (`model` names, in the model's order) and
/// its labels mapped by name, when its class names are other than the model's but all among
/// them (numbers included: they are names when the model has them); `None` otherwise (the
/// same names, or a name the model lacks).
pub fn by_model_names(data: &Dataset, model: &[String]) -> Option<Dataset> {
    if data.class_names == model {
        return None;
    }
    let to_model: Vec<usize> = data
        .class_names
        .iter()
        .map(|name| model.iter().position(|m| m == name))
        .collect::<Option<_>>()?;
    let mut out = data.clone();
    out.class_names = model.to_vec();
    for item in &mut out.items {
        for l in item.labels.iter_mut().chain(&mut item.difficult) {
            *l = *to_model.get(*l)?;
        }
    }
    Some(out)
}

/// Whether class names are just the indices `0, 1, …` (labels from `.npy` or IDX files).
fn index_names(names: &[String]) -> bool {
    names.iter().enumerate().all(|(i, n)| *n == i.to_string())
}

/// Evaluation matches named classes to the model's by name ([`by_model_names`] has mapped
/// every data set whose names the model all has): names left different here include one the
/// model lacks, which is an error naming it. Data whose names are just the indices `0, 1, …`
/// (labels from `.npy` files) are the model's classes by index; named data beside a model
/// whose classes are only numbered (trained on numeric labels) cannot be matched, an error.
fn check_same_classes(
    data: &[String],
    model: &[String],
    description: &str,
    model_path: &std::path::Path,
) -> anyhow::Result<()> {
    if data.is_empty() || model.is_empty() || data == model {
        return Ok(());
    }
    if index_names(data) {
        // Numeric labels are the model's class indices: say which, since a data set numbered
        // in another order (Fashion-MNIST's own, say) would be scored silently wrong.
        if !index_names(model) {
            let shown: Vec<String> = model
                .iter()
                .take(4)
                .enumerate()
                .map(|(i, n)| format!("{i} = {n}"))
                .collect();
            tracing::warn!(
                "{description} numbers its classes: read as the model's class indices, in the \
                 model's order ({}{})",
                shown.join(", "),
                if model.len() > 4 { ", …" } else { "" }
            );
        }
        return Ok(());
    }
    if index_names(model) {
        anyhow::bail!(
            "{description} names its classes [{}] but the model in {} numbers them 0..{} (it \
             was trained on numeric labels), so which is which is unknown: give the data with \
             class indices (a list file of numeric labels)",
            data.join(", "),
            model_path.display(),
            model.len() - 1
        );
    }
    let unknown: Vec<&str> = data
        .iter()
        .filter(|n| !model.contains(n))
        .map(String::as_str)
        .collect();
    anyhow::bail!(
        "{description} has classes [{}] but the model in {} was trained on [{}]: it has no \
         class {}",
        data.join(", "),
        model_path.display(),
        model.join(", "),
        unknown.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::check_same_classes;

    #[test]
    fn named_subsets_are_mapped_to_the_model_classes_by_name() {
        use super::by_model_names;
        use dfk::dataset::{Dataset, ImageSource, Item};
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let item = |l: usize| Item {
            source: ImageSource::File(format!("{l}.png").into()),
            labels: vec![l],
            difficult: Vec::new(),
        };
        let data = Dataset {
            class_names: names(&["dog", "bird"]),
            items: vec![item(0), item(1), item(0)],
            multilabel: false,
            origin: None,
        };
        let model = names(&["bird", "cat", "dog"]);
        let mapped = by_model_names(&data, &model).unwrap();
        assert_eq!(mapped.class_names, model);
        assert_eq!(mapped.first_labels(), vec![2, 0, 2]);
        // A class the model lacks, the model's own names, or index names: left as they are.
        assert!(by_model_names(&data, &names(&["bird", "cat"])).is_none());
        assert!(by_model_names(&data, &names(&["dog", "bird"])).is_none());
        assert!(by_model_names(&data, &names(&["0", "1", "2"])).is_none());
        // Class folders named by numbers beside a model trained on such folders (sorted as
        // text): matched by name, not read as indices.
        let numbered = Dataset {
            class_names: names(&["0", "1", "2"]),
            items: vec![item(0), item(1), item(2)],
            multilabel: false,
            origin: None,
        };
        let model = names(&["0", "1", "10", "2"]);
        let mapped = by_model_names(&numbered, &model).unwrap();
        assert_eq!(mapped.class_names, model);
        assert_eq!(mapped.first_labels(), vec![0, 1, 3]);
    }

    #[test]
    fn a_class_the_model_lacks_is_named() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let path = std::path::Path::new("m.dfk");
        let model = names(&["a", "b"]);
        assert!(check_same_classes(&model, &model, "d", path).is_ok());
        let e = check_same_classes(&names(&["apple", "b"]), &model, "d", path).unwrap_err();
        let e = e.to_string();
        assert!(e.contains("[apple, b]") && e.contains("m.dfk"), "{e}");
        assert!(e.ends_with("no class apple"), "{e}");
        // Index names on the data side or no names: nothing to compare; named data beside a
        // numbered model: no way to match them.
        assert!(check_same_classes(&names(&["0", "1"]), &model, "d", path).is_ok());
        let e = check_same_classes(&model, &names(&["0", "1"]), "d", path).unwrap_err();
        assert!(e.to_string().contains("numbers them 0..1"), "{e}");
        assert!(check_same_classes(&[], &model, "d", path).is_ok());
    }
}
