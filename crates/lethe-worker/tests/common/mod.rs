//! What the service tests of this crate share beyond `lethe-testkit` (which starts their
//! stacks): the worker binary they serve with, a browser for the dashboard, and the stack
//! the Python suites run against.
// Each test binary compiles this module and uses part of it.
#![allow(dead_code)]

pub(crate) mod browser;
pub(crate) mod python;

/// `lethe-worker`, for `Stack::serve`: the kit cannot name it (it does not link libtorch).
pub(crate) const WORKER: &str = env!("CARGO_BIN_EXE_lethe-worker");

/// Trains a model on fmnist-tiny on CPU into `out` (`lethe-worker train`, with `recipe` such
/// as `["--epochs", "1"]` or `["--model", "cnn"]` on top of the defaults).
pub(crate) fn train_on_fmnist_tiny(out: &std::path::Path, recipe: &[&str]) {
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    let trained = std::process::Command::new(WORKER)
        .args(["train", "--dataset", "fmnist-tiny", "--device", "cpu"])
        .args(recipe)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert!(trained.status.success(), "{trained:?}");
}
