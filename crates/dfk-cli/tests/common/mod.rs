//! Helpers shared by the CLI test binaries: run `dfk`, expect success or a clean failure.
// Each test binary uses only some of these.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs the `dfk` binary built for the tests.
pub fn dfk(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dfk"))
        .args(args)
        .output()
        .expect("run dfk")
}

/// Runs a command that must succeed; returns its stdout.
pub fn ok(args: &[&str]) -> String {
    let out = dfk(args);
    assert!(
        out.status.success(),
        "dfk {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command that must fail with exit status `code` and mention `needle` on stderr.
pub fn fails(args: &[&str], code: i32, needle: &str) {
    let o = dfk(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(code), "dfk {args:?}: {err}");
    assert!(
        err.contains(needle),
        "dfk {args:?}: {err:?} lacks {needle:?}"
    );
}

/// [`fails`], and the command must leave `out` absent.
pub fn fails_leaving_nothing(args: &[&str], code: i32, needle: &str, out: &Path) {
    fails(args, code, needle);
    assert!(!out.exists(), "dfk {args:?} left {}", out.display());
}

/// A path as a command-line argument.
pub fn s(p: &Path) -> String {
    p.display().to_string()
}

/// A file of `fixtures/cli/`.
pub fn cli_fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/cli")
        .join(name)
        .display()
        .to_string()
}

/// Imports the D = 4, K = 3 GMM of the VLFeat golden case (`fixtures/cli/`) into `dir/g.dfk`.
pub fn import_gmm(dir: &Path) -> PathBuf {
    let gmm = dir.join("g.dfk");
    ok(&[
        "gmm",
        "import",
        "--means",
        &cli_fixture("means_f64.npy"),
        "--variances",
        &cli_fixture("variances_f64.npy"),
        "--weights",
        &cli_fixture("weights_f32.npy"),
        "--out",
        &s(&gmm),
    ]);
    gmm
}

/// Trains a small pipeline model on the embedded subset (60 training images, K = 2) into
/// `dir/m.dfk`, for tests of the commands that use a model.
pub fn small_model(dir: &Path) -> PathBuf {
    let m = dir.join("m.dfk");
    ok(&[
        "-q",
        "train",
        "--embedded",
        "--limit",
        "60",
        "--k",
        "2",
        "--no-cache",
        "--out",
        &s(&m),
    ]);
    m
}
