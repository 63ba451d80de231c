//! `dfk`: image classification with Fisher vectors and Deep Fisher Kernels.

use std::io::IsTerminal;

use clap::{Parser, Subcommand};

mod commands;
mod options;
mod report;
mod util;

/// Options shared by every subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct Global {
    /// Worker threads, 1 to 1024 (default, or 0: all cores).
    #[arg(long, global = true, value_parser = parse_threads)]
    pub threads: Option<usize>,
    /// Print nothing but errors (no progress bars).
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// Print machine-readable JSON results on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// Seed of every random choice (sampling, initialisation, shuffling); when not given, a
    /// configuration file's seed is kept.
    #[arg(long, global = true, default_value_t = 0)]
    pub seed: u64,
}

/// Most worker threads accepted: far more than cores only slows a run (and tens of thousands
/// of threads stall the machine).
const MAX_THREADS: usize = 1024;

fn parse_threads(s: &str) -> Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|_| format!("`{s}` is not a thread count"))?;
    if n > MAX_THREADS {
        return Err(format!("at most {MAX_THREADS} threads (0: all cores)"));
    }
    Ok(n)
}

#[derive(Debug, Parser)]
#[command(
    name = "dfk",
    version,
    about = "Fisher vectors and Deep Fisher Kernels for image classification"
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train and evaluate on the embedded Fashion-MNIST subset, print accuracy, write a report.
    Demo(commands::demo::Args),
    /// Fit, import or export a GMM.
    #[command(subcommand)]
    Gmm(commands::gmm::GmmCommand),
    /// Encode descriptors (.npy) into Fisher vectors (.npy).
    Fisher(commands::fisher::Args),
    /// Train or apply one-vs-rest linear SVMs on feature vectors (.npy).
    #[command(subcommand)]
    Svm(commands::svm::SvmCommand),
    /// Extract dense SIFT descriptors from a data set into a cache.
    Extract(commands::extract::Args),
    /// Train a pipeline (PCA + GMM + Fisher vectors + SVMs) with the plain Fisher kernel (`dfk deep` learns the GMM).
    Train(commands::train::Args),
    /// Train with Deep Fisher Kernel learning: the GMM learned jointly with the SVMs.
    Deep(commands::deep::Args),
    /// Evaluate a model on a labelled data set.
    Eval(commands::eval::Args),
    /// Predict classes for new images.
    Predict(commands::predict::Args),
    /// Encode a data set's images into Fisher vectors (.npy).
    Encode(commands::encode::Args),
    /// Describe what a model file holds.
    Info(commands::info::Args),
    /// Measure throughput (descriptors/s, GFLOP/s) of the hot stages on this machine.
    Bench(commands::bench::Args),
}

/// On SIGINT, SIGTERM, SIGHUP or SIGQUIT (Ctrl-C, `kill`, `timeout`, a closed terminal,
/// `Ctrl-\`): remove the temporary files of the writes in progress, then exit with 128 + the
/// signal, as a shell reports it. The signals are blocked in this thread before any other
/// starts (threads inherit the mask), and one thread waits for them, so the cleanup runs in
/// ordinary code, not in a signal handler. A signal that the process inherited as ignored
/// (`nohup` ignores SIGHUP, a shell's background job SIGINT and SIGQUIT) stays ignored: a
/// blocked signal would be delivered to `sigwait` even so.
#[cfg(unix)]
fn clean_up_on_signals() {
    // SAFETY: plain libc calls on a zeroed, then filled, sigset_t owned by this frame, and a
    // query of the current actions (a null new action changes nothing).
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
            let mut old: libc::sigaction = std::mem::zeroed();
            let ignored = libc::sigaction(sig, std::ptr::null(), &mut old) == 0
                && old.sa_sigaction == libc::SIG_IGN;
            if !ignored {
                libc::sigaddset(&mut set, sig);
            }
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return;
        }
        set
    };
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` is a valid signal set and `sig` a valid out-pointer.
            if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
                dfk::npy::remove_temporary_files();
                util::remove_created_dirs();
                std::process::exit(128 + sig);
            }
        });
    if spawned.is_err() {
        // No waiting thread: let the signals act as before.
        // SAFETY: as above.
        unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
    }
}

/// The command line, with negative numbers accepted as flag values: `--c -1` then reaches the
/// flag's own check, which names the accepted range, instead of reading `-1` as an unknown
/// flag (and `-0.1` as the flag `-0`). A float flag takes any value that starts with `-`
/// (clap's test of a number misses `-1e-3`, `-.5` and `-inf`): one that is not a number is
/// then an invalid value named by its flag.
fn parse_command_line() -> Cli {
    use clap::{CommandFactory, FromArgMatches};
    use std::any::TypeId;
    fn negative_values(cmd: clap::Command) -> clap::Command {
        cmd.mut_args(|a| {
            if !a.get_action().takes_values() {
                return a;
            }
            let parsed = a.get_value_parser().type_id();
            if parsed == TypeId::of::<f64>() || parsed == TypeId::of::<f32>() {
                a.allow_hyphen_values(true)
            } else {
                a.allow_negative_numbers(true)
            }
        })
        .mut_subcommands(negative_values)
    }
    let matches = negative_values(Cli::command()).get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

fn main() -> std::process::ExitCode {
    #[cfg(unix)]
    clean_up_on_signals();
    let cli = parse_command_line();
    let filter = if cli.global.quiet { "error" } else { "info" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal, not in logs and pipes.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .without_time()
        .init();
    let threads = cli.global.threads.unwrap_or(0);
    if let Err(e) = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
    {
        util::note!("error: cannot start {threads} worker threads: {e}");
        return std::process::ExitCode::from(2);
    }
    let g = &cli.global;
    let result = match cli.command {
        Command::Demo(a) => commands::demo::run(a, g),
        Command::Gmm(a) => commands::gmm::run(a, g),
        Command::Fisher(a) => commands::fisher::run(a, g),
        Command::Svm(a) => commands::svm::run(a, g),
        Command::Extract(a) => commands::extract::run(a, g),
        Command::Train(a) => commands::train::run(a, g),
        Command::Deep(a) => commands::deep::run(a, g),
        Command::Eval(a) => commands::eval::run(a, g),
        Command::Predict(a) => commands::predict::run(a, g),
        Command::Encode(a) => commands::encode::run(a, g),
        Command::Info(a) => commands::info::run(a, g),
        Command::Bench(a) => commands::bench::run(a, g),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            util::note!("error: {e:#}");
            // Usage errors found after parsing exit with 2, like clap's own.
            if e.downcast_ref::<util::UsageError>().is_some() {
                std::process::ExitCode::from(2)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}
