//! `dfk train`: fit the whole pipeline (descriptors, PCA, GMM, Fisher vectors, SVMs) on a data
//! set, evaluate on its test set when it has one, save the model, optionally write a report.

use std::path::{Path, PathBuf};
use std::time::Instant;

use dfk::dataset::Dataset;
use dfk::pipeline::{
    evaluate_ignoring, fit_from_descriptors, fit_pipeline, Evaluation, Pipeline, PipelineConfig,
    RawDescriptors, StageTime,
};
use serde_json::json;

use crate::options::{ConfigArgs, DataArgs, Loaded};
use crate::report::{self, Report};
use crate::util::{as_flag_error, check_outputs_in_folders, checked_cache_dir, emit, usage, Bars};
use crate::Global;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    config: ConfigArgs,
    /// Output model file.
    #[arg(long, short = 'o', default_value = "model.dfk")]
    out: PathBuf,
    /// Write an HTML + JSON report of the test-set (else training-set) evaluation here.
    #[arg(long, value_name = "DIR")]
    report: Option<PathBuf>,
    /// Descriptor cache folder (default: $XDG_CACHE_HOME/dfk/descriptors or ~/.cache/dfk/descriptors).
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// Extract descriptors afresh and do not store them.
    #[arg(long)]
    no_cache: bool,
}

/// What a training run produced.
pub struct Trained {
    pub pipeline: Pipeline,
    pub history: serde_json::Value,
    pub timings: Vec<StageTime>,
    /// Evaluation on the test set (`tested = true`) or else on the training set.
    pub evaluation: Evaluation,
    pub tested: bool,
    pub seconds: f64,
}

/// Scores a data set with a trained pipeline and evaluates, appending the stage timings.
pub fn evaluate_on(
    pipeline: &Pipeline,
    data: &Dataset,
    descriptors: Option<&RawDescriptors>,
    cache: Option<&Path>,
    g: &Global,
    timings: &mut Vec<StageTime>,
    prefix: &str,
) -> anyhow::Result<Evaluation> {
    if descriptors.is_some() {
        crate::util::check_positions_not_needed(&pipeline.config, None)?;
    }
    let t = Instant::now();
    let fv = match descriptors {
        Some(raw) => pipeline.encode_raw(raw, &Bars::new(g))?,
        None => pipeline.encode_dataset(data, cache, &Bars::new(g))?,
    };
    timings.push(StageTime {
        stage: format!("{prefix}descriptors + encode"),
        seconds: t.elapsed().as_secs_f64(),
    });
    let t = Instant::now();
    let scores = pipeline.try_scores(&fv, data.len())?;
    // VOC's difficult images are left out of their classes' AP, as its protocol does.
    let e = evaluate_ignoring(
        &scores,
        &data.labels(),
        &pipeline.class_names,
        data.difficult_mask().as_deref(),
    )?;
    timings.push(StageTime {
        stage: format!("{prefix}score + metrics"),
        seconds: t.elapsed().as_secs_f64(),
    });
    Ok(e)
}

/// Trains on `loaded.train`, evaluates on `loaded.test` (or the training set).
/// The GMM size, whose limit (the number of descriptors) is known only after extraction.
const K_FLAG: &[(&str, &str)] = &[("k", "--k (or gmm.k)")];

pub fn train_and_evaluate(
    loaded: &Loaded,
    cfg: &PipelineConfig,
    cache: Option<&Path>,
    g: &Global,
) -> anyhow::Result<Trained> {
    let start = Instant::now();
    let bars = Bars::new(g);
    let fit = match &loaded.descriptors {
        Some(raw) => {
            if cfg.spatial {
                return usage("precomputed descriptors carry no positions: add --spatial false");
            }
            if cfg.pyramid.is_some() {
                return usage(
                    "precomputed descriptors carry no positions: a spatial pyramid needs them \
                     (remove --pyramid or the configuration's `pyramid`)",
                );
            }
            let mut fit = fit_from_descriptors(raw, &loaded.train.labels(), cfg, &bars)
                .map_err(|e| as_flag_error(e, K_FLAG))?;
            fit.pipeline.class_names = loaded.train.class_names.clone();
            fit
        }
        None => {
            fit_pipeline(&loaded.train, cfg, cache, &bars).map_err(|e| as_flag_error(e, K_FLAG))?
        }
    };
    let mut timings = fit.timings;
    // The training set's evaluation, VOC's difficult images left out as in every other mAP:
    // the result when there is no test set, and the stored training mAP (the fit's counts
    // every image) when there are difficult images.
    let difficult = loaded.train.difficult_mask();
    let train_evaluation = || {
        let scores = fit.pipeline.scores(&fit.train_features, loaded.train.len());
        evaluate_ignoring(
            &scores,
            &loaded.train.labels(),
            &fit.pipeline.class_names,
            difficult.as_deref(),
        )
    };
    let (evaluation, tested) = match &loaded.test {
        Some(test) => (
            evaluate_on(&fit.pipeline, test, None, cache, g, &mut timings, "test ")?,
            true,
        ),
        None => (train_evaluation()?, false),
    };
    let train_map = match (&difficult, tested) {
        (None, _) => None,
        (Some(_), false) => Some(evaluation.map),
        (Some(_), true) => Some(train_evaluation()?.map),
    };
    let mut history = fit.history;
    if let Some(map) = train_map {
        history["train_map"] = json!(map);
    }
    history["timings"] = serde_json::to_value(&timings)?;
    history["data"] = json!(loaded.description);
    history["train_images"] = json!(loaded.train.len());
    if tested {
        history["test_accuracy"] = json!(evaluation.accuracy);
        history["test_map"] = json!(evaluation.map);
        history["test_map_voc11"] = json!(evaluation.map_voc11);
        history["test_images"] = json!(evaluation.images);
    }
    Ok(Trained {
        pipeline: fit.pipeline,
        history,
        timings,
        evaluation,
        tested,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// One line of results for people, and the JSON for scripts.
pub fn summarize(t: &Trained, model: Option<&Path>) -> (serde_json::Value, String) {
    let e = &t.evaluation;
    let set = if t.tested { "test" } else { "training" };
    let acc = e
        .accuracy
        .map_or(String::new(), |a| format!("accuracy {:.2} %, ", 100.0 * a));
    // The time covers the test set's extraction and scoring too.
    let done = if t.tested {
        "trained and tested"
    } else {
        "trained"
    };
    let human = format!(
        "{set} set ({} images): {acc}{} — {done} in {:.1} s{}",
        e.images,
        crate::util::map_summary(e),
        t.seconds,
        model.map_or(String::new(), |m| format!(" → {}", m.display()))
    );
    let value = json!({
        "evaluated_on": set,
        "images": e.images,
        "accuracy": e.accuracy,
        "map": e.map,
        "map_voc11": e.map_voc11,
        "top_k": e.top_k,
        "seconds": t.seconds,
        "timings": t.timings,
        "model": model,
    });
    (value, human)
}

/// Renders the report of a training run.
pub fn render_report(
    t: &Trained,
    title: &str,
    facts: Vec<(String, String)>,
) -> anyhow::Result<report::Rendered> {
    let config = serde_json::to_value(&t.pipeline.config)?;
    report::render(&Report {
        title,
        evaluation: &t.evaluation,
        timings: &t.timings,
        history: &t.history,
        config: &config,
        facts,
    })
}

/// Writes the model (when `out` is given) and the report (when `report` is given) as one
/// output: both land, or neither does.
pub fn save_outputs(
    model: Option<(&dfk::model::ModelFile, &Path)>,
    report: Option<(&report::Rendered, &Path)>,
) -> anyhow::Result<()> {
    let mut files = dfk::npy::FileGroup::new();
    if let Some((model, out)) = model {
        model.stage(out, &mut files)?;
    }
    let created = match report {
        Some((rendered, dir)) => Some(rendered.stage(dir, &mut files)?),
        None => None,
    };
    files.commit()?;
    if let Some(created) = created {
        created.keep();
    }
    Ok(())
}

pub fn run(a: Args, g: &Global) -> anyhow::Result<()> {
    let report_files = a.report.as_deref().map(report::files).unwrap_or_default();
    let in_report: Vec<(&str, &Path)> = report_files
        .iter()
        .map(|p| ("--report", p.as_path()))
        .collect();
    let mut inputs = a.data.inputs();
    inputs.extend(a.config.inputs());
    check_outputs_in_folders(&[("--out", &a.out)], &in_report, &inputs)?;
    let outputs: Vec<(&str, &Path)> = std::iter::once(("--out", a.out.as_path()))
        .chain(in_report.iter().copied())
        .collect();
    a.data.check_outputs_not_listed(&outputs)?;
    if let Some(dir) = &a.report {
        a.data.check_folders_outside_data(&[("--report", dir)])?;
    }
    let cache = checked_cache_dir(a.cache.as_deref(), a.no_cache, &a.data)?;
    let cfg = a.config.resolve(g)?;
    if !a.data.is_descriptors() {
        a.config
            .check_pca_dims(&cfg, dfk::sift::DESCRIPTOR_LEN, crate::options::SIFT_VALUES)?;
    }
    let loaded = a.data.load()?;
    a.data.check_outputs_not_loaded(&outputs, &loaded)?;
    a.data
        .check_several_classes(&loaded.train, &loaded.description)?;
    a.data.check_limit_keeps_every_class(&loaded.train)?;
    a.data
        .check_every_class_trainable(&loaded.train, &loaded.description)?;
    // (Positions asked of precomputed descriptors are refused first, by train_and_evaluate.)
    if let Some(d) = loaded
        .descriptors
        .as_ref()
        .filter(|_| !cfg.spatial && cfg.pyramid.is_none())
    {
        a.config.check_pca_dims(
            &cfg,
            d.descriptors.dim,
            "the columns of the descriptor files",
        )?;
    }
    let t = train_and_evaluate(&loaded, &cfg, cache.as_deref(), g)?;
    let model = t.pipeline.to_model(t.history.clone())?;
    let rendered = match &a.report {
        Some(dir) => {
            let facts = vec![
                ("data".to_string(), loaded.description.clone()),
                ("model".to_string(), a.out.display().to_string()),
                (
                    "evaluated on".to_string(),
                    if t.tested { "test set" } else { "training set" }.to_string(),
                ),
            ];
            Some((render_report(&t, "dfk training report", facts)?, dir))
        }
        None => None,
    };
    save_outputs(
        Some((&model, &a.out)),
        rendered.as_ref().map(|(r, dir)| (r, dir.as_path())),
    )?;
    let (value, human) = summarize(&t, Some(&a.out));
    emit(g, &value, &human)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfk::gmm::Gmm;
    use dfk::model::ModelFile;

    fn model() -> ModelFile {
        ModelFile {
            pca: None,
            gmm: Gmm::new(1, 2, vec![0.0; 2], vec![1.0; 2], vec![1.0]).unwrap(),
            svm: None,
            class_gmms: Vec::new(),
            class_names: Vec::new(),
            config: json!({}),
            history: json!({}),
        }
    }

    #[test]
    fn model_and_report_land_together_or_not_at_all() {
        let tmp = tempfile::tempdir().unwrap();
        let (out, report) = (tmp.path().join("m.dfk"), tmp.path().join("new/rep"));
        let rendered = report::Rendered::from_contents("{}", "<html></html>");

        // The report's page cannot be written (a folder is in its place): no model, no
        // report.json, and no folder left from this run.
        let blocked = tmp.path().join("blocked");
        std::fs::create_dir_all(blocked.join("index.html")).unwrap();
        let err = save_outputs(Some((&model(), &out)), Some((&rendered, &blocked))).unwrap_err();
        assert!(format!("{err:#}").contains("index.html"), "{err:#}");
        assert!(!out.exists() && !blocked.join("report.json").exists());

        // The model cannot be written (a folder in its place): no report folder created.
        let err = save_outputs(Some((&model(), &blocked)), Some((&rendered, &report)));
        assert!(err.is_err() && !tmp.path().join("new").exists());

        save_outputs(Some((&model(), &out)), Some((&rendered, &report))).unwrap();
        assert!(ModelFile::load(&out).is_ok());
        assert_eq!(
            std::fs::read(report.join("index.html")).unwrap(),
            b"<html></html>"
        );
        assert_eq!(std::fs::read(report.join("report.json")).unwrap(), b"{}");
    }
}
