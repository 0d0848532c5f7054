//! The real `lethe` binary hands ML subcommands to the worker with their arguments untouched.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn lethe() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lethe"))
}

#[test]
fn ml_subcommands_are_forwarded_verbatim_with_the_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let worker = dir.path().join("recording-worker");
    let record = dir.path().join("args");
    std::fs::write(
        &worker,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > {}\nexit 7\n",
            record.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&worker, std::fs::Permissions::from_mode(0o755)).unwrap();
    let status = lethe()
        .args([
            "ensemble",
            "--members",
            "4",
            "--out",
            "dir with space",
            "--help",
        ])
        .env("LETHE_WORKER", &worker)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(7));
    let recorded = std::fs::read_to_string(&record).unwrap();
    assert_eq!(
        recorded.lines().collect::<Vec<_>>(),
        [
            "ensemble",
            "--members",
            "4",
            "--out",
            "dir with space",
            "--help"
        ]
    );
}

#[test]
fn a_missing_worker_is_a_clear_error() {
    let output = lethe()
        .args(["train", "--epochs", "1"])
        .env("LETHE_WORKER", "/nonexistent/lethe-worker")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/lethe-worker"), "{stderr}");
}
