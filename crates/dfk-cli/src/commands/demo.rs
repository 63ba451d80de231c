//! `dfk demo`: train and evaluate on the embedded Fashion-MNIST subset, print the accuracy and
//! write a report.

use std::path::PathBuf;

use crate::commands::train::{render_report, save_outputs, summarize, train_and_evaluate};
use crate::options::{ConfigArgs, DataArgs};
use crate::report;
use crate::util::{check_outputs_in_folders, emit};
use crate::Global;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArgs,
    /// Report folder.
    #[arg(long, value_name = "DIR", default_value = "dfk-demo-report")]
    report: PathBuf,
    /// Also save the trained model here.
    #[arg(long, short = 'o')]
    out: Option<PathBuf>,
}

pub fn run(a: Args, g: &Global) -> anyhow::Result<()> {
    let report_files = report::files(&a.report);
    let in_report: Vec<(&str, &std::path::Path)> = report_files
        .iter()
        .map(|p| ("--report", p.as_path()))
        .collect();
    let outputs: Vec<(&str, &std::path::Path)> =
        a.out.iter().map(|p| ("--out", p.as_path())).collect();
    check_outputs_in_folders(&outputs, &in_report, &a.config.inputs())?;
    let cfg = a.config.resolve(g)?;
    a.config
        .check_pca_dims(&cfg, dfk::sift::DESCRIPTOR_LEN, crate::options::SIFT_VALUES)?;
    let data = DataArgs {
        data: None,
        format: None,
        split: None,
        labels: None,
        fashion_mnist: None,
        embedded: true,
        limit: None,
        skip_unreadable: false,
    };
    let loaded = data.load()?;
    if !g.quiet && !g.json {
        crate::util::note!(
            "dfk demo: {} training / {} test images of the embedded Fashion-MNIST subset, K = {}, PCA {}, C = {}",
            loaded.train.len(),
            loaded.test.as_ref().map_or(0, |t| t.len()),
            cfg.gmm.k,
            cfg.pca.dims,
            cfg.svm.c
        );
    }
    // The demo measures the whole pipeline: no descriptor cache.
    let t = train_and_evaluate(&loaded, &cfg, None, g)?;
    let model = match &a.out {
        Some(_) => Some(t.pipeline.to_model(t.history.clone())?),
        None => None,
    };
    let facts = vec![
        ("data".to_string(), loaded.description.clone()),
        (
            "training images".to_string(),
            loaded.train.len().to_string(),
        ),
        ("total time".to_string(), format!("{:.1} s", t.seconds)),
    ];
    let rendered = render_report(&t, "dfk demo: embedded Fashion-MNIST subset", facts)?;
    save_outputs(
        model.as_ref().zip(a.out.as_deref()),
        Some((&rendered, &a.report)),
    )?;
    let (mut value, human) = summarize(&t, a.out.as_deref());
    value["report"] = serde_json::json!(a.report.join("index.html"));
    emit(
        g,
        &value,
        &format!("{human}\nreport: {}", a.report.join("index.html").display()),
    )?;
    Ok(())
}
