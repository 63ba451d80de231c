//! `--report DIR`: a self-contained `index.html` with inline SVG plots (plotters' SVG backend)
//! and `report.json` with the numbers. Both files land together or not at all.

use std::fmt::Write as _;
use std::path::Path;

use dfk::npy::FileGroup;
use dfk::pipeline::{Evaluation, StageTime};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::{json, Value};

use crate::util::{create_output_dir, CreatedDirs};

/// Everything a report shows.
pub struct Report<'a> {
    /// Page title.
    pub title: &'a str,
    /// Metrics on the evaluated set.
    pub evaluation: &'a Evaluation,
    /// Wall-clock time per stage.
    pub timings: &'a [StageTime],
    /// Training history (from the model file); `objective`/`validation` arrays are plotted
    /// when present, at the top level or under `deep`.
    pub history: &'a Value,
    /// The pipeline configuration.
    pub config: &'a Value,
    /// Free-form facts shown in the summary table (data set, model file, ...).
    pub facts: Vec<(String, String)>,
}

const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing a plot: {e:?}")
}

type Area<'b> = DrawingArea<SVGBackend<'b>, Shift>;

fn svg(
    width: u32,
    height: u32,
    draw: impl FnOnce(&Area) -> anyhow::Result<()>,
) -> anyhow::Result<String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        draw(&root)?;
        root.present().map_err(plot_err)?;
    }
    Ok(out)
}

fn class_name(e: &Evaluation, c: usize) -> String {
    e.class_names
        .get(c)
        .cloned()
        .unwrap_or_else(|| format!("class {c}"))
}

/// `name` cut to `max` characters with an ellipsis, for plot labels of fixed width (the
/// per-class table has the full names).
fn short(name: &str, max: usize) -> String {
    if name.chars().count() <= max {
        return name.to_string();
    }
    let mut out: String = name.chars().take(max - 1).collect();
    out.push('…');
    out
}

/// Every how many rows (or columns) of `pixels` each a label of `needed` pixels fits.
fn label_every(pixels: f64, needed: f64) -> usize {
    (needed / pixels.max(1e-9)).ceil().max(1.0) as usize
}

/// Most precision–recall curves drawn with a legend: more cannot be told apart (10 colours)
/// nor fit the legend box.
const PR_LEGEND_MAX: usize = 20;

fn confusion_svg(e: &Evaluation) -> anyhow::Result<String> {
    let c = e.classes;
    let size = (60 + 44 * c as u32).clamp(420, 900);
    svg(size + 140, size + 60, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption("Confusion matrix (row-normalised)", ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(50)
            .y_label_area_size(150)
            .build_cartesian_2d(0.0..c as f64, c as f64..0.0)
            .map_err(plot_err)?;
        // Rows carry the names, columns the class numbers (long names do not fit below);
        // with many classes only every k-th row and column is labelled, so labels do not overlap.
        let names: Vec<String> = (0..c)
            .map(|i| format!("{} ({i})", short(&class_name(e, i), 18)))
            .collect();
        let cell = (size as f64 - 60.0) / c.max(1) as f64;
        let (every_y, every_x) = (label_every(cell, 13.0), label_every(cell, 22.0));
        let centre = |v: &f64, every: usize| {
            let i = v.floor() as usize;
            ((v - v.floor() - 0.5).abs() < 1e-9 && i < c && i.is_multiple_of(every)).then_some(i)
        };
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(2 * c + 1)
            .y_labels(2 * c + 1)
            .x_label_formatter(&|v| centre(v, every_x).map_or(String::new(), |i| i.to_string()))
            .y_label_formatter(&|v| centre(v, every_y).map_or(String::new(), |i| names[i].clone()))
            .x_desc("predicted class")
            .y_desc("true class")
            .draw()
            .map_err(plot_err)?;
        let mut cells = Vec::with_capacity(c * c);
        let mut texts = Vec::new();
        for (t, row) in e.confusion.iter().enumerate() {
            let total: usize = row.iter().sum::<usize>().max(1);
            for (p, &count) in row.iter().enumerate() {
                let f = count as f64 / total as f64;
                let shade = (255.0 * (1.0 - f)) as u8;
                let color = RGBColor(shade, shade, 255);
                cells.push(Rectangle::new(
                    [(p as f64, t as f64), (p as f64 + 1.0, t as f64 + 1.0)],
                    color.filled(),
                ));
                if c <= 20 && count > 0 {
                    let text_color = if f > 0.5 { &WHITE } else { &BLACK };
                    texts.push(Text::new(
                        count.to_string(),
                        (p as f64 + 0.5, t as f64 + 0.5),
                        ("sans-serif", 11)
                            .into_font()
                            .color(text_color)
                            .pos(Pos::new(HPos::Center, VPos::Center)),
                    ));
                }
            }
        }
        chart.draw_series(cells).map_err(plot_err)?;
        chart.draw_series(texts).map_err(plot_err)?;
        Ok(())
    })
}

fn ap_svg(e: &Evaluation) -> anyhow::Result<String> {
    let c = e.classes;
    svg(760, 120 + 24 * c as u32, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(
                format!("Average precision per class (mAP {:.2} %)", 100.0 * e.map),
                ("sans-serif", 20),
            )
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(130)
            .build_cartesian_2d(0.0..100.0, c as f64..0.0)
            .map_err(plot_err)?;
        let names: Vec<String> = (0..c).map(|i| short(&class_name(e, i), 20)).collect();
        chart
            .configure_mesh()
            .y_labels(2 * c + 1)
            .y_label_formatter(&|v: &f64| {
                let i = v.floor() as usize;
                if (v - v.floor() - 0.5).abs() < 1e-9 && i < c {
                    names[i].clone()
                } else {
                    String::new()
                }
            })
            .x_desc("AP (%)")
            .draw()
            .map_err(plot_err)?;
        chart
            .draw_series(e.per_class_ap.iter().enumerate().map(|(i, &ap)| {
                // A class without samples (AP undefined) gets no bar.
                let ap = if ap.is_nan() { 0.0 } else { ap };
                Rectangle::new(
                    [(0.0, i as f64 + 0.15), (100.0 * ap, i as f64 + 0.85)],
                    PALETTE[i % PALETTE.len()].filled(),
                )
            }))
            .map_err(plot_err)?;
        chart
            .draw_series(e.per_class_ap.iter().enumerate().map(|(i, &ap)| {
                // In the bar, white; after a bar too short to hold it, or without a bar, dark
                // on the background.
                let (label, x, colour, align) = if ap.is_nan() {
                    ("no samples".to_string(), 1.0, BLACK, HPos::Left)
                } else if 100.0 * ap < 10.0 {
                    (
                        format!("{:.1}", 100.0 * ap),
                        100.0 * ap + 1.0,
                        BLACK,
                        HPos::Left,
                    )
                } else {
                    (
                        format!("{:.1}", 100.0 * ap),
                        100.0 * ap - 1.0,
                        WHITE,
                        HPos::Right,
                    )
                };
                Text::new(
                    label,
                    (x, i as f64 + 0.5),
                    ("sans-serif", 11)
                        .into_font()
                        .color(&colour)
                        .pos(Pos::new(align, VPos::Center)),
                )
            }))
            .map_err(plot_err)?;
        Ok(())
    })
}

fn pr_svg(e: &Evaluation) -> anyhow::Result<String> {
    // Classes without samples have no curve.
    let drawn = e.per_class_ap.iter().filter(|ap| !ap.is_nan()).count();
    let legend = drawn <= PR_LEGEND_MAX;
    let caption = if legend {
        "Precision–recall curves".to_string()
    } else {
        format!("Precision–recall curves ({drawn} classes: no legend, see the table)")
    };
    svg(760, 520, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(caption, ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..1.0, 0.0..1.02)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("recall")
            .y_desc("precision")
            .draw()
            .map_err(plot_err)?;
        for (i, curve) in e.pr_curves.iter().enumerate() {
            let ap = e.per_class_ap.get(i).copied().unwrap_or(f64::NAN);
            if ap.is_nan() {
                continue;
            }
            let color = PALETTE[i % PALETTE.len()];
            let series = chart
                .draw_series(LineSeries::new(
                    curve
                        .recall
                        .iter()
                        .zip(&curve.precision)
                        .map(|(&r, &p)| (r, p)),
                    color.stroke_width(2),
                ))
                .map_err(plot_err)?;
            if legend {
                series
                    .label(format!(
                        "{} (AP {:.1})",
                        short(&class_name(e, i), 28),
                        100.0 * ap
                    ))
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                    });
            }
        }
        if !legend {
            return Ok(());
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 11))
            .draw()
            .map_err(plot_err)?;
        Ok(())
    })
}

fn timing_svg(timings: &[StageTime]) -> anyhow::Result<String> {
    let n = timings.len();
    let max = timings
        .iter()
        .map(|t| t.seconds)
        .fold(0.0, f64::max)
        .max(1e-3);
    svg(760, 100 + 28 * n as u32, |root| {
        let total: f64 = timings.iter().map(|t| t.seconds).sum();
        let mut chart = ChartBuilder::on(root)
            .caption(
                format!("Time per stage (total {total:.1} s)"),
                ("sans-serif", 20),
            )
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(110)
            .build_cartesian_2d(0.0..max * 1.15, n as f64..0.0)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .y_labels(2 * n + 1)
            .y_label_formatter(&|v: &f64| {
                let i = v.floor() as usize;
                if (v - v.floor() - 0.5).abs() < 1e-9 && i < n {
                    timings[i].stage.clone()
                } else {
                    String::new()
                }
            })
            .x_desc("seconds")
            .draw()
            .map_err(plot_err)?;
        chart
            .draw_series(timings.iter().enumerate().map(|(i, t)| {
                Rectangle::new(
                    [(0.0, i as f64 + 0.2), (t.seconds, i as f64 + 0.8)],
                    PALETTE[0].filled(),
                )
            }))
            .map_err(plot_err)?;
        chart
            .draw_series(timings.iter().enumerate().map(|(i, t)| {
                Text::new(
                    format!("{:.2} s", t.seconds),
                    (t.seconds + max * 0.01, i as f64 + 0.5),
                    ("sans-serif", 11)
                        .into_font()
                        .color(&BLACK)
                        .pos(Pos::new(HPos::Left, VPos::Center)),
                )
            }))
            .map_err(plot_err)?;
        Ok(())
    })
}

/// A chart of one or more curves over iterations: `(title, [(label, values)], kept)`, with
/// `kept` the iteration whose parameters the model holds (marked on the chart).
type Curves = (String, Vec<(String, Vec<f64>)>, Option<usize>);

/// Finds curves to plot in the history: numeric arrays whose key contains `objective` or
/// `validation` (top level or under `deep`), the Deep Fisher Kernel records under
/// `deep.records` (objective; train/validation/test metric), and the EM log-likelihood.
fn history_series(history: &Value) -> Vec<Curves> {
    let numbers = |v: &Value| -> Option<Vec<f64>> {
        let a = v.as_array()?;
        let out: Vec<f64> = a.iter().filter_map(|x| x.as_f64()).collect();
        (out.len() >= 2 && out.len() == a.len()).then_some(out)
    };
    let mut charts = Vec::new();
    for scope in [Some(history), history.get("deep")].into_iter().flatten() {
        if let Some(obj) = scope.as_object() {
            for (key, value) in obj {
                if key.contains("objective") || key.contains("validation") {
                    if let Some(v) = numbers(value) {
                        charts.push((key.clone(), vec![(key.clone(), v)], None));
                    }
                }
            }
        }
    }
    if let Some(records) = history.pointer("/deep/records").and_then(|r| r.as_array()) {
        let field = |name: &str| -> Option<Vec<f64>> {
            let v: Vec<f64> = records
                .iter()
                .filter_map(|r| r.get(name).and_then(|x| x.as_f64()))
                .collect();
            (v.len() >= 2 && v.len() == records.len()).then_some(v)
        };
        // The iteration whose parameters the model holds (the best validated one).
        let best = history
            .pointer("/deep/best_iteration")
            .and_then(|b| b.as_u64())
            .map(|b| b as usize)
            .filter(|&b| b < records.len());
        let kept = best.map_or(String::new(), |b| {
            format!(" (the model keeps iteration {b})")
        });
        if let Some(v) = field("objective") {
            charts.push((
                format!("Deep Fisher Kernel: SVM objective{kept}"),
                vec![("objective".into(), v)],
                best,
            ));
        }
        let metric = history
            .pointer("/deep/metric")
            .and_then(|m| m.as_str())
            .unwrap_or("metric")
            .to_string();
        let lines: Vec<(String, Vec<f64>)> = [
            ("train", "train_metric"),
            ("validation", "val_metric"),
            ("test", "test_metric"),
        ]
        .iter()
        .filter_map(|(label, key)| field(key).map(|v| (label.to_string(), v)))
        .collect();
        if !lines.is_empty() {
            charts.push((format!("Deep Fisher Kernel: {metric}{kept}"), lines, best));
        }
    }
    if let Some(v) = history.pointer("/gmm/loglik").and_then(numbers) {
        let name = "EM log-likelihood per descriptor".to_string();
        charts.push((name.clone(), vec![(name, v)], None));
    }
    charts
}

/// The colour of a curve: the same for a set's curve in every chart and report (train,
/// validation, test), the others by position.
fn series_color(label: &str, index: usize) -> RGBColor {
    match label {
        "train" => PALETTE[0],
        "validation" => PALETTE[1],
        "test" => PALETTE[2],
        _ => PALETTE[(index + 3) % PALETTE.len()],
    }
}

fn series_svg(
    title: &str,
    lines: &[(String, Vec<f64>)],
    kept: Option<usize>,
) -> anyhow::Result<String> {
    let (lo, hi) = lines
        .iter()
        .flat_map(|(_, v)| v.iter())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let pad = ((hi - lo) * 0.05).max(1e-9);
    let len = lines.iter().map(|(_, v)| v.len()).max().unwrap_or(2).max(2);
    svg(760, 360, |root| {
        // Several curves: the legend beside the plot, where it hides none of them.
        let (plot, legend) = if lines.len() > 1 {
            let (p, l) = root.split_horizontally(650);
            (p, Some(l))
        } else {
            (root.clone(), None)
        };
        let mut chart = ChartBuilder::on(&plot)
            .caption(title, ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..(len - 1) as f64, lo - pad..hi + pad)
            .map_err(plot_err)?;
        // Iterations are whole numbers: no ticks between them.
        let whole = |v: &f64| {
            if (v - v.round()).abs() < 1e-9 {
                format!("{}", v.round() as i64)
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .x_labels(len.min(12))
            .x_label_formatter(&whole)
            .x_desc("iteration")
            .draw()
            .map_err(plot_err)?;
        if let Some(b) = kept {
            let x = b as f64;
            chart
                .draw_series(LineSeries::new(
                    [(x, lo - pad), (x, hi + pad)],
                    BLACK.mix(0.45).stroke_width(1),
                ))
                .map_err(plot_err)?;
            // The label on the side of the line where the plot has room.
            let (side, text) = if 2 * b >= len - 1 {
                (HPos::Right, "kept ")
            } else {
                (HPos::Left, " kept")
            };
            chart
                .draw_series(std::iter::once(Text::new(
                    text,
                    (x, hi + pad),
                    ("sans-serif", 12)
                        .into_font()
                        .color(&BLACK.mix(0.7))
                        .pos(Pos::new(side, VPos::Top)),
                )))
                .map_err(plot_err)?;
        }
        for (i, (_, values)) in lines.iter().enumerate() {
            let color = series_color(&lines[i].0, i);
            chart
                .draw_series(LineSeries::new(
                    values.iter().enumerate().map(|(i, &v)| (i as f64, v)),
                    color.stroke_width(2),
                ))
                .map_err(plot_err)?;
            chart
                .draw_series(
                    values
                        .iter()
                        .enumerate()
                        .map(|(i, &v)| Circle::new((i as f64, v), 3, color.filled())),
                )
                .map_err(plot_err)?;
        }
        if let Some(area) = legend {
            for (i, (label, _)) in lines.iter().enumerate() {
                let color = series_color(label, i);
                let y = 50 + 22 * i as i32;
                area.draw(&PathElement::new(
                    vec![(4, y), (24, y)],
                    color.stroke_width(2),
                ))
                .map_err(plot_err)?;
                area.draw(&Circle::new((14, y), 3, color.filled()))
                    .map_err(plot_err)?;
                area.draw(&Text::new(
                    label.clone(),
                    (30, y),
                    ("sans-serif", 13)
                        .into_font()
                        .color(&BLACK)
                        .pos(Pos::new(HPos::Left, VPos::Center)),
                ))
                .map_err(plot_err)?;
            }
        }
        Ok(())
    })
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn pct(v: f64) -> String {
    if v.is_nan() {
        // An AP of a class without samples in the evaluated set.
        return "– (no samples)".into();
    }
    format!("{:.2} %", 100.0 * v)
}

/// Renders the report's HTML page.
pub fn html(r: &Report) -> anyhow::Result<String> {
    let e = r.evaluation;
    let mut page = String::new();
    let title = escape(r.title);
    write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\n\
<style>body{{font-family:sans-serif;margin:2em auto;max-width:1000px;color:#222}}\
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 10px;text-align:left}}\
th{{background:#f3f3f3}}figure{{margin:1.5em 0}}svg{{max-width:100%;height:auto}}\
pre{{background:#f7f7f7;padding:1em;overflow-x:auto}}</style></head><body>\n<h1>{title}</h1>\n"
    )?;
    page.push_str("<h2>Summary</h2>\n<table>\n");
    let mut rows: Vec<(String, String)> = Vec::new();
    if let Some(a) = e.accuracy {
        rows.push(("accuracy".into(), pct(a)));
    }
    for (k, a) in &e.top_k {
        if *k > 1 {
            rows.push((format!("top-{k} accuracy"), pct(*a)));
        }
    }
    rows.push(("mAP (scikit-learn's AP)".into(), pct(e.map)));
    rows.push(("mAP (11-point, VOC 2007)".into(), pct(e.map_voc11)));
    rows.push(("images".into(), e.images.to_string()));
    rows.push(("classes".into(), e.classes.to_string()));
    rows.extend(r.facts.iter().cloned());
    for (k, v) in rows {
        writeln!(
            page,
            "<tr><th>{}</th><td>{}</td></tr>",
            escape(&k),
            escape(&v)
        )?;
    }
    page.push_str("</table>\n");

    let mut figure = |heading: &str, body: String| {
        let _ = write!(
            page,
            "<h2>{}</h2>\n<figure>\n{body}\n</figure>\n",
            escape(heading)
        );
    };
    if !e.confusion.is_empty() {
        figure("Confusion matrix", confusion_svg(e)?);
    }
    figure("Average precision per class", ap_svg(e)?);
    figure("Precision–recall", pr_svg(e)?);
    if !r.timings.is_empty() {
        figure("Timing", timing_svg(r.timings)?);
    }
    for (name, values, kept) in history_series(r.history) {
        figure(
            &format!("Training history: {name}"),
            series_svg(&name, &values, kept)?,
        );
    }
    page.push_str(
        "<h2>Per-class results</h2>\n<table><tr><th>class</th><th>AP</th>\
         <th>AP (11-point, VOC 2007)</th>",
    );
    if !e.confusion.is_empty() {
        page.push_str("<th>recall (accuracy on the class)</th><th>images</th>");
    }
    page.push_str("</tr>\n");
    for c in 0..e.classes {
        write!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{}</td>",
            escape(&class_name(e, c)),
            pct(e.per_class_ap[c]),
            pct(e.per_class_ap_voc11.get(c).copied().unwrap_or(f64::NAN))
        )?;
        if let Some(row) = e.confusion.get(c) {
            let total: usize = row.iter().sum();
            // A class without images has no recall.
            let recall = if total == 0 {
                "–".to_string()
            } else {
                pct(row[c] as f64 / total as f64)
            };
            write!(page, "<td>{recall}</td><td>{total}</td>")?;
        }
        page.push_str("</tr>\n");
    }
    page.push_str("</table>\n<h2>Configuration</h2>\n<pre>");
    page.push_str(&escape(
        &serde_json::to_string_pretty(r.config).unwrap_or_default(),
    ));
    page.push_str(
        "</pre>\n<p>Numbers: <a href=\"report.json\">report.json</a>.</p>\n</body></html>\n",
    );
    Ok(page)
}

/// The file names a report writes in its folder, in the order [`write()`] writes them.
pub const FILES: [&str; 2] = ["report.json", "index.html"];

/// The files a report in `dir` consists of, for the output checks before the work.
pub fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    FILES.iter().map(|name| dir.join(name)).collect()
}

/// A report's two files, rendered: nothing is written yet, so a plot that fails leaves no
/// output behind.
pub struct Rendered {
    json: String,
    html: String,
}

/// Renders the plots and numbers of a report.
pub fn render(r: &Report) -> anyhow::Result<Rendered> {
    let html = html(r)?;
    let numbers = json!({
        "title": r.title,
        "evaluation": r.evaluation,
        "timings": r.timings,
        "history": r.history,
        "config": r.config,
        "facts": r.facts.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect::<serde_json::Map<String, Value>>(),
    });
    let json = serde_json::to_string_pretty(&numbers)?;
    Ok(Rendered { json, html })
}

impl Rendered {
    /// Creates `dir` if missing and stages `report.json` and `index.html` in `files`; the
    /// caller commits them with the rest of its output, then keeps the returned folders.
    pub fn stage(&self, dir: &Path, files: &mut FileGroup) -> anyhow::Result<CreatedDirs> {
        let created = create_output_dir("--report", dir)?;
        files.bytes(dir.join(FILES[0]), self.json.as_bytes())?;
        files.bytes(dir.join(FILES[1]), self.html.as_bytes())?;
        Ok(created)
    }
}

/// Writes `report.json` and `index.html` into `dir` (created if missing), both or neither.
pub fn write(dir: &Path, r: &Report) -> anyhow::Result<()> {
    let rendered = render(r)?;
    let mut files = FileGroup::new();
    let created = rendered.stage(dir, &mut files)?;
    files.commit()?;
    created.keep();
    Ok(())
}

#[cfg(test)]
impl Rendered {
    /// A report of the given contents, for tests of how it is written.
    pub fn from_contents(json: &str, html: &str) -> Self {
        Self {
            json: json.into(),
            html: html.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_deep_fisher_kernel_curves() {
        let history = json!({
            "gmm": {"loglik": [1.0, 2.0, 2.5]},
            "deep": {
                "metric": "accuracy",
                "records": [
                    {"objective": 10.0, "train_metric": 0.8, "val_metric": 0.7, "test_metric": null},
                    {"objective": 9.0, "train_metric": 0.85, "val_metric": 0.72, "test_metric": null},
                ],
            },
        });
        let charts = history_series(&history);
        let titles: Vec<&str> = charts.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(
            titles,
            [
                "Deep Fisher Kernel: SVM objective",
                "Deep Fisher Kernel: accuracy",
                "EM log-likelihood per descriptor"
            ]
        );
        let labels: Vec<&str> = charts[1].1.iter().map(|l| l.0.as_str()).collect();
        assert_eq!(labels, ["train", "validation"]);
        assert_eq!(charts[0].1[0].1, vec![10.0, 9.0]);
        let svg = series_svg(&charts[1].0, &charts[1].1, charts[1].2).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("validation"));
        // Whole iterations only on the x axis.
        assert!(
            !svg.contains("\n0.5\n</text>") && svg.contains("\n1\n</text>"),
            "{svg}"
        );
        // With the kept iteration recorded, the titles name it.
        let mut history = history;
        history["deep"]["best_iteration"] = json!(0);
        let charts = history_series(&history);
        assert_eq!(
            charts[0].0,
            "Deep Fisher Kernel: SVM objective (the model keeps iteration 0)"
        );
        assert_eq!(charts[1].2, Some(0));
        // The kept iteration is marked; each set's curve has its own colour whatever the
        // order of the curves.
        let marked = series_svg(&charts[1].0, &charts[1].1, charts[1].2).unwrap();
        assert!(marked.contains("kept") && !svg.contains("kept"));
        let swapped: Vec<(String, Vec<f64>)> = charts[1].1.iter().rev().cloned().collect();
        let other = series_svg(&charts[1].0, &swapped, None).unwrap();
        let stroke = |c: RGBColor| format!("stroke=\"#{:02X}{:02X}{:02X}\"", c.0, c.1, c.2);
        for svg in [&svg, &other] {
            let pos = |c: RGBColor| svg.find(&stroke(c));
            assert!(
                pos(PALETTE[0]).is_some() && pos(PALETTE[1]).is_some(),
                "{svg}"
            );
        }
        assert_eq!(series_color("validation", 0), series_color("validation", 5));
    }

    /// Many classes, a class without images and very long names: no "AP NaN" legend entry,
    /// no legend beyond [`PR_LEGEND_MAX`] curves, names cut in the plots but whole in the
    /// table, and no recall for the class without images.
    #[test]
    fn plots_stay_readable_with_many_classes() {
        let c = 30;
        let long = format!("{}_end", "x".repeat(100));
        let names: Vec<String> = (0..c)
            .map(|i| {
                if i == 3 {
                    long.clone()
                } else {
                    format!("c{i}")
                }
            })
            .collect();
        // Two images of each class but class 5; each scored highest on its own class.
        let truth: Vec<usize> = (0..c).filter(|&k| k != 5).flat_map(|k| [k, k]).collect();
        let n = truth.len();
        let mut scores = vec![0f32; n * c];
        for (i, &t) in truth.iter().enumerate() {
            for k in 0..c {
                scores[i * c + k] = ((i * 7 + k * 3) % 11) as f32 * 0.01;
            }
            scores[i * c + t] = 1.0;
        }
        let labels = dfk::svm::Labels::MultiClass {
            labels: truth,
            classes: c,
        };
        let e = dfk::pipeline::evaluate(&scores, &labels, &names).unwrap();
        assert!(e.per_class_ap[5].is_nan());
        let pr = pr_svg(&e).unwrap();
        assert!(!pr.contains("NaN") && pr.contains("no legend"), "{pr}");
        let ap = ap_svg(&e).unwrap();
        assert!(!ap.contains(&long) && ap.contains("xxx…"));
        let cm = confusion_svg(&e).unwrap();
        assert!(!cm.contains(&long));
        let page = html(&Report {
            title: "t",
            evaluation: &e,
            timings: &[],
            history: &json!({}),
            config: &json!({}),
            facts: Vec::new(),
        })
        .unwrap();
        assert!(page.contains(&long));
        assert!(page.contains(
            "<tr><td>c5</td><td>– (no samples)</td><td>– (no samples)</td><td>–</td><td>0</td>"
        ));
        assert!(!short("ab", 5).contains('…') && short("abcdefgh", 5) == "abcd…");
    }
}
