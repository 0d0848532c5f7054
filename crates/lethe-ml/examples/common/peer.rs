//! Runs a benchmark peer: a script of `bench/peers/` in the virtualenv's Python (with the zoo's
//! PyTorch twins importable), which prints its result as one JSON line.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;

pub(crate) fn run_peer<I, S>(script: &str, args: I) -> serde_json::Value
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new("python")
        .arg(manifest_dir.join("../../bench/peers").join(script))
        .args(args)
        .env("PYTHONPATH", manifest_dir.join("python"))
        .output()
        .expect("the virtualenv's python runs (make setup)");
    assert!(
        output.status.success(),
        "peer {script} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(output.stdout.trim_ascii()).expect("the peer prints one JSON line")
}
