//! Helpers shared by the subcommands: progress bars, result printing, usage errors.

use std::io::IsTerminal;
use std::time::Duration;

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
pub fn usage<T>(message: impl Into<String>) -> anyhow::Result<T> {
    Err(UsageError(message.into()).into())
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
pub fn emit(g: &Global, value: &serde_json::Value, human: &str) {
    if g.json {
        println!("{value}");
    } else if !g.quiet {
        println!("{human}");
    }
}
