//! Time for dfk's SVM solver to reach a given primal objective (e.g. liblinear's), for the
//! comparison harness (`bench/run.sh`, SVM stage).
//!
//! ```text
//! cargo run --release -p dfk --example svm_to_objective -- \
//!     FEATURES.npy LABELS.npy TARGET C BIAS THREADS REPS [EPS,EPS,…]
//! ```
//!
//! Two classes: one binary SVM (as liblinear trains for two labels); more: one-vs-rest, and
//! the objective is the sum of the class SVMs' primal objectives (liblinear's one-vs-rest
//! likewise). For each tolerance of the ladder (default 0.1, 0.05, 0.03, 0.02, 0.01, 0.005,
//! 0.002, 0.001, 0.0005), largest first, trains from scratch `REPS` times on a `THREADS`
//! pool (after one untimed warm-up solve) and records the median time and the objective; it stops after 0.01 (liblinear's `-e`
//! of the target) once a tolerance has reached `TARGET` (objective ≤ TARGET). Prints one JSON
//! line: every run, and the first tolerance that reached the target with its time.

use std::time::Instant;

use dfk::npy;
use dfk::svm::{train_binary, train_one_vs_rest, ClassWeighting, Labels, SvmParams};
use serde_json::json;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 8 {
        return Err(
            "usage: svm_to_objective FEATURES.npy LABELS.npy TARGET C BIAS THREADS REPS [EPS,…]"
                .into(),
        );
    }
    let (x, n, dim) = npy::read_f32_matrix(&args[1])?;
    npy::require_finite(&args[1], &x, dim)?;
    let raw = npy::read_labels(&args[2])?;
    if raw.len() != n {
        return Err(format!("{} labels for {n} feature rows", raw.len()).into());
    }
    let target: f64 = args[3].parse()?;
    let c: f64 = args[4].parse()?;
    let bias: f32 = args[5].parse()?;
    let threads: usize = args[6].parse()?;
    let reps: usize = args[7].parse::<usize>()?.max(1);
    let ladder: Vec<f64> = match args.get(8) {
        Some(s) => s.split(',').map(str::parse).collect::<Result<_, _>>()?,
        None => vec![0.1, 0.05, 0.03, 0.02, 0.01, 0.005, 0.002, 0.001, 0.0005],
    };
    // Classes renumbered 0.. in order of their values.
    let mut values = raw.clone();
    values.sort_unstable();
    values.dedup();
    let labels: Vec<usize> = raw
        .iter()
        .map(|l| values.binary_search(l).unwrap_or(0))
        .collect();
    let classes = values.len();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    let y: Vec<f32> = labels
        .iter()
        .map(|&l| if l == 0 { 1.0 } else { -1.0 })
        .collect();
    let cost = vec![c; n];
    let multi = Labels::MultiClass {
        labels: labels.clone(),
        classes,
    };
    let train = |eps: f64| -> dfk::Result<(f64, usize)> {
        let params = SvmParams {
            c,
            eps,
            bias,
            ..SvmParams::default()
        };
        pool.install(|| {
            if classes == 2 {
                let m = train_binary(&x, n, dim, &y, &cost, &params, None)?;
                Ok((m.primal, m.iterations))
            } else {
                let m =
                    train_one_vs_rest(&x, n, dim, &multi, &params, ClassWeighting::Uniform, None)?;
                let epochs = m.models.iter().map(|b| b.iterations).max().unwrap_or(0);
                Ok((m.objective(), epochs))
            }
        })
    };
    // Warm-up (page faults of the feature matrix, thread start-up), not timed.
    train(ladder[0])?;
    let mut runs = Vec::new();
    let mut reached: Option<(f64, f64, f64)> = None;
    for &eps in &ladder {
        let mut times = Vec::new();
        let (mut objective, mut epochs) = (f64::NAN, 0);
        for _ in 0..reps {
            let t = Instant::now();
            (objective, epochs) = train(eps)?;
            times.push(t.elapsed().as_secs_f64());
        }
        let t = median(times.clone());
        runs.push(json!({"eps": eps, "median_s": t, "times_s": times,
                         "objective": objective, "max_epochs": epochs}));
        if reached.is_none() && objective <= target {
            reached = Some((eps, t, objective));
        }
        if reached.is_some() && eps <= 0.01 {
            break;
        }
    }
    println!(
        "{}",
        json!({
            "impl": "dfk", "stage": "svm", "n": n, "dim": dim, "classes": classes, "c": c,
            "bias": bias, "threads": threads, "target_objective": target, "runs": runs,
            "reached_eps": reached.map(|r| r.0), "seconds": reached.map(|r| r.1),
            "reached_objective": reached.map(|r| r.2),
        })
    );
    Ok(())
}
