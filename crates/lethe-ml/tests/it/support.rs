use std::path::PathBuf;
use std::process::Command;

use lethe_ml::data::{Dataset, DatasetSpec};

/// The fmnist-tiny workload (512 train, 256 validation), from the Debian package.
pub(crate) fn fmnist_tiny() -> Dataset {
    Dataset::load(&DatasetSpec::fmnist_tiny()).expect("Fashion-MNIST is installed (make setup)")
}

/// The project's virtualenv Python, which has torch (make setup installs it).
pub(crate) fn python() -> Command {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    assert!(
        venv.is_file(),
        "{} is missing: run `make setup`",
        venv.display()
    );
    let mut command = Command::new(venv);
    command.env(
        "PYTHONPATH",
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python"),
    );
    command
}

/// Runs a Python snippet with the virtualenv and returns its stdout; panics with stderr on failure.
pub(crate) fn run_python(script: &str, args: &[&str]) -> String {
    // A file, not `-c`: TorchScript reads the source of the classes it compiles.
    let file = tempfile::Builder::new()
        .suffix(".py")
        .tempfile()
        .expect("temporary file");
    std::fs::write(file.path(), script).expect("write the script");
    let output = python()
        .arg(file.path())
        .args(args)
        .output()
        .expect("python starts");
    assert!(
        output.status.success(),
        "python failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
