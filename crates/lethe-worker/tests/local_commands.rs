//! The worker's local commands, run as a user would: train, evaluate, ensemble, and their errors.

use std::process::{Command, Output};

fn worker(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lethe-worker"))
        .args(args)
        .output()
        .expect("the worker runs")
}

/// Runs each case and checks it fails with exit code 1 and a message containing its text.
fn assert_failures(cases: &[(&[&str], &str)]) {
    for (args, expected) in cases {
        let output = worker(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn train_then_evaluate_reports_the_same_accuracy() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("model.safetensors");
    let outputs = dir.path().join("outputs.safetensors");
    let checkpoint_arg = checkpoint.to_str().unwrap();
    let trained = stdout(&worker(&[
        "train",
        "--dataset",
        "fmnist-tiny",
        "--device",
        "cpu",
        "--epochs",
        "3",
        "--batch-size",
        "64",
        "--out",
        checkpoint_arg,
        "--outputs",
        outputs.to_str().unwrap(),
    ]));
    let val_accuracy = trained
        .split("val accuracy ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let evaluated = stdout(&worker(&[
        "evaluate",
        "--dataset",
        "fmnist-tiny",
        "--device",
        "cpu",
        "--checkpoint",
        checkpoint_arg,
    ]));
    assert!(
        evaluated.contains(&format!("accuracy {val_accuracy}")),
        "{trained}\n{evaluated}"
    );
    let written = lethe_ml::tensorio::read_safetensors(&outputs).unwrap();
    assert_eq!(written.get("logits").unwrap().size(), vec![1, 768, 10]);
    assert_eq!(written.get("margins").unwrap().size(), vec![1, 768]);
}

#[test]
fn an_ensemble_rerun_skips_finished_members() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let args = [
        "ensemble",
        "--dataset",
        "fmnist-tiny",
        "--device",
        "cpu",
        "--members",
        "6",
        "--group-size",
        "3",
        "--epochs",
        "1",
        "--out",
        out,
    ];
    assert!(stdout(&worker(&args)).contains("trained 6 members, skipped 0"));
    assert!(stdout(&worker(&args)).contains("trained 0 members, skipped 6"));
}

#[test]
fn bad_input_is_an_error_message_not_a_crash() {
    let cases: [(&[&str], &str); 5] = [
        (
            &["train", "--dataset", "nope", "--out", "/tmp/x"],
            "unknown dataset `nope`",
        ),
        (
            &[
                "train",
                "--dataset",
                "fmnist-tiny",
                "--model",
                "cnn",
                "--epochs",
                "0",
                "--out",
                "/tmp/x",
            ],
            "epochs must be at least 1",
        ),
        (
            &[
                "train",
                "--dataset",
                "fmnist-tiny",
                "--schedule",
                "cosine",
                "--out",
                "/tmp/x",
            ],
            "unknown schedule `cosine`",
        ),
        (
            &[
                "train",
                "--dataset",
                "fmnist-tiny",
                "--device",
                "cuda:7",
                "--out",
                "/tmp/x",
            ],
            "cuda:7",
        ),
        (
            &[
                "evaluate",
                "--dataset",
                "fmnist-tiny",
                "--checkpoint",
                "/nonexistent.safetensors",
            ],
            "/nonexistent.safetensors",
        ),
    ];
    assert_failures(&cases);
}

#[test]
fn an_index_is_built_evaluated_and_inspected_from_an_ensemble() {
    let dir = tempfile::tempdir().unwrap();
    let ensemble = dir.path().join("ensemble");
    let ensemble_arg = ensemble.to_str().unwrap();
    let index = dir.path().join("beta.safetensors");
    let index_arg = index.to_str().unwrap();
    stdout(&worker(&[
        "ensemble",
        "--dataset",
        "fmnist-tiny",
        "--device",
        "cpu",
        "--members",
        "24",
        "--epochs",
        "2",
        "--out",
        ensemble_arg,
    ]));
    let built = stdout(&worker(&[
        "index",
        "build",
        "--ensemble",
        ensemble_arg,
        "--estimation-members",
        "0..18",
        "--out",
        index_arg,
    ]));
    assert!(
        built.contains("512 sources × 768 targets × 10 classes"),
        "{built}"
    );
    let evaluated = stdout(&worker(&[
        "index",
        "evaluate",
        "--index",
        index_arg,
        "--ensemble",
        ensemble_arg,
    ]));
    assert!(
        evaluated.starts_with("LDS ") && evaluated.contains("6 held-out models 18..24"),
        "{evaluated}"
    );
    let inspected = stdout(&worker(&[
        "index", "inspect", "--index", index_arg, "--source", "5", "--top", "3",
    ]));
    assert!(
        inspected.contains("method: subsample") && inspected.contains("source example 5"),
        "{inspected}"
    );

    let manifest = ensemble.join("ensemble.json");
    let manifest_arg = manifest.to_str().unwrap();
    let failures: [(&[&str], &str); 4] = [
        (
            &[
                "index",
                "build",
                "--ensemble",
                ensemble_arg,
                "--estimation-members",
                "20..30",
                "--out",
                index_arg,
            ],
            "inside 0..24",
        ),
        (
            &[
                "index",
                "build",
                "--ensemble",
                ensemble_arg,
                "--penalty",
                "1",
                "--out",
                index_arg,
            ],
            "--method regression only",
        ),
        (
            &["index", "inspect", "--index", index_arg, "--source", "512"],
            "out of range",
        ),
        (
            &[
                "index",
                "evaluate",
                "--index",
                manifest_arg,
                "--ensemble",
                ensemble_arg,
            ],
            "ensemble.json",
        ),
    ];
    assert_failures(&failures);
}

#[test]
fn unlearn_writes_versions_and_audit_scores_a_method() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let ensemble = |out: &str, extra: &[&str]| {
        let mut args = vec![
            "ensemble",
            "--dataset",
            "fmnist-tiny",
            "--device",
            "cpu",
            "--model",
            "mlp:32",
            "--epochs",
            "2",
            "--batch-size",
            "64",
            "--out",
            out,
        ];
        args.extend_from_slice(extra);
        stdout(&worker(&args))
    };
    std::fs::write(
        path("forget.txt"),
        "# ten examples\n3, 14, 15\n92 65 35\n89 79 32 38\n",
    )
    .unwrap();
    ensemble(&path("subsets"), &["--members", "16"]);
    stdout(&worker(&[
        "index",
        "build",
        "--ensemble",
        &path("subsets"),
        "--out",
        &path("beta.safetensors"),
    ]));
    ensemble(
        &path("originals"),
        &["--members", "4", "--alpha", "1", "--keep-weights"],
    );
    let oracles = ensemble(
        &path("oracles"),
        &[
            "--members",
            "6",
            "--alpha",
            "1",
            "--exclude-file",
            &path("forget.txt"),
        ],
    );
    assert!(oracles.contains("trained 6 members"), "{oracles}");
    stdout(&worker(&[
        "train",
        "--dataset",
        "fmnist-tiny",
        "--device",
        "cpu",
        "--model",
        "mlp:32",
        "--epochs",
        "2",
        "--batch-size",
        "64",
        "--out",
        &path("v0.safetensors"),
    ]));

    let first = stdout(&worker(&[
        "unlearn",
        "--dataset",
        "fmnist-tiny",
        "--device",
        "cpu",
        "--model",
        &path("v0.safetensors"),
        "--method",
        "dmm",
        "--index",
        &path("beta.safetensors"),
        "--forget-file",
        &path("forget.txt"),
        "--forget-weight",
        "3",
        "--head-penalty",
        "none",
        "--out",
        &path("v1.safetensors"),
    ]));
    assert!(
        first.contains("dmm: version 1") && first.contains("(10 forgotten"),
        "{first}"
    );
    let second = stdout(&worker(&[
        "unlearn",
        "--dataset",
        "fmnist-tiny",
        "--device",
        "cpu",
        "--model",
        &path("v1.safetensors"),
        "--base",
        &path("v0.safetensors"),
        "--method",
        "ga",
        "--forget",
        "5,6",
        "--retrain-threshold",
        "0.02",
        "--out",
        &path("v2.safetensors"),
    ]));
    assert!(
        second.contains("ga: version 2") && second.contains("(12 forgotten"),
        "{second}"
    );
    assert!(
        second.contains("retrain on what remains"),
        "12 of 512 is past 2%: {second}"
    );

    let audited = stdout(&worker(&[
        "audit",
        "--dataset",
        "fmnist-tiny",
        "--device",
        "cpu",
        "--originals",
        &path("originals"),
        "--oracles",
        &path("oracles"),
        "--held-out",
        "2",
        "--method",
        "dmm",
        "--index",
        &path("beta.safetensors"),
        "--out",
        &path("audit.json"),
    ]));
    assert!(
        audited.contains("KLoM of dmm on 4 models against 4 oracles (10 forgotten)"),
        "{audited}"
    );
    assert!(audited.contains("gap closure"), "{audited}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path("audit.json")).unwrap()).unwrap();
    assert!(
        report["result"]["forget"]["klom"]["p95"].as_f64().is_some(),
        "{report}"
    );
    assert!(std::fs::read_to_string(path("audit.md"))
        .unwrap()
        .contains("| dmm |"));

    let dmm_with_minimum = |minimum: &str, out: &str| {
        stdout(&worker(&[
            "unlearn",
            "--dataset",
            "fmnist-tiny",
            "--device",
            "cpu",
            "--model",
            &path("v0.safetensors"),
            "--method",
            "dmm",
            "--index",
            &path("beta.safetensors"),
            "--forget-file",
            &path("forget.txt"),
            "--min-confidence",
            minimum,
            "--out",
            &path(out),
        ]))
    };
    let trusted = dmm_with_minimum("0.000001", "trusted.safetensors");
    assert!(
        trusted.contains("dmm: version 1") && trusted.contains("  confidence 0."),
        "{trusted}"
    );
    let retrained = dmm_with_minimum("1", "retrained.safetensors");
    assert!(
        retrained.contains("is below --min-confidence 1: retraining from scratch without the 10")
            && retrained.contains("retrain: version 1"),
        "a 16-model index never predicts within its own noise everywhere: {retrained}"
    );

    let v1 = path("v1.safetensors");
    let beta = path("beta.safetensors");
    let v0 = path("v0.safetensors");
    let failures: [(&[&str], &str); 10] = [
        (
            &[
                "unlearn",
                "--dataset",
                "fmnist-tiny",
                "--model",
                &v0,
                "--method",
                "dmm",
                "--index",
                &beta,
                "--min-confidence",
                "1.5",
                "--forget",
                "5",
                "--out",
                &path("x"),
            ],
            "--min-confidence 1.5 must lie in (0, 1]",
        ),
        (
            &[
                "unlearn",
                "--dataset",
                "fmnist-tiny",
                "--model",
                &v0,
                "--method",
                "ga",
                "--min-confidence",
                "0.5",
                "--forget",
                "5",
                "--out",
                &path("x"),
            ],
            "--min-confidence needs DMM",
        ),
        (
            &[
                "unlearn",
                "--dataset",
                "fmnist-tiny",
                "--model",
                &v0,
                "--method",
                "dmm",
                "--index",
                &beta,
                "--head-penalty",
                "lots",
                "--forget",
                "5",
                "--out",
                &path("x"),
            ],
            "neither a number nor `none`",
        ),
        (
            &[
                "unlearn",
                "--dataset",
                "fmnist-tiny",
                "--model",
                &v1,
                "--method",
                "ga",
                "--forget",
                "5",
                "--out",
                &path("x"),
            ],
            "pass the first version with --base",
        ),
        (
            &[
                "unlearn",
                "--dataset",
                "fmnist-tiny",
                "--model",
                &v1,
                "--base",
                &v1,
                "--method",
                "ga",
                "--forget",
                "5",
                "--out",
                &path("x"),
            ],
            "is not the first version",
        ),
        (
            &[
                "unlearn",
                "--dataset",
                "fmnist-tiny",
                "--model",
                &v0,
                "--method",
                "dmm",
                "--forget",
                "5",
                "--out",
                &path("x"),
            ],
            "DMM needs --index",
        ),
        (
            &[
                "unlearn",
                "--dataset",
                "fmnist-tiny",
                "--model",
                &v0,
                "--method",
                "ga",
                "--forget",
                "5,5",
                "--out",
                &path("x"),
            ],
            "appears more than once",
        ),
        (
            &[
                "unlearn",
                "--dataset",
                "fmnist-tiny",
                "--model",
                &v0,
                "--method",
                "gd",
                "--denoise",
                "hard:2",
                "--forget",
                "5",
                "--out",
                &path("x"),
            ],
            "--denoise do(es) not apply",
        ),
        (
            &[
                "unlearn",
                "--dataset",
                "fmnist-tiny",
                "--model",
                &v0,
                "--method",
                "ga",
                "--forget",
                "9999",
                "--out",
                &path("x"),
            ],
            "outside the training split 0..512",
        ),
        (
            &[
                "audit",
                "--dataset",
                "fmnist-tiny",
                "--originals",
                &path("originals"),
                "--oracles",
                &path("oracles"),
                "--forget",
                "1,2",
                "--method",
                "ga",
            ],
            "were retrained without 10 examples",
        ),
    ];
    assert_failures(&failures);
}

#[test]
fn forget_sets_are_drawn_by_family_into_files_that_requests_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let listed = stdout(&worker(&["forget-sets", "suite"]));
    assert!(
        listed.contains("random/7") && listed.contains("tuning") && listed.contains("reporting"),
        "{listed}"
    );
    let draw = |extra: &[&str]| {
        let mut args = vec![
            "forget-sets",
            "draw",
            "--dataset",
            "fmnist-tiny",
            "--device",
            "cpu",
            "--size",
            "12",
        ];
        args.extend_from_slice(extra);
        stdout(&worker(&args))
    };
    let slice = draw(&["--family", "class-random", "--class", "3", "--seed", "9"]);
    assert_eq!(
        slice,
        draw(&["--family", "class_random", "--class", "3", "--seed", "9"])
    );
    assert!(
        slice.contains("12 random training examples of class 3"),
        "{slice}"
    );
    let indices = lethe_ml::unlearn::parse_indices(&slice).unwrap();
    assert_eq!(indices.len(), 12, "{slice}");

    stdout(&worker(&[
        "train",
        "--dataset",
        "fmnist-tiny",
        "--device",
        "cpu",
        "--model",
        "mlp:32",
        "--epochs",
        "1",
        "--out",
        &path("v0.safetensors"),
    ]));
    draw(&[
        "--family",
        "high_loss",
        "--model",
        &path("v0.safetensors"),
        "--out",
        &path("hard.txt"),
    ]);
    let hard = std::fs::read_to_string(path("hard.txt")).unwrap();
    assert!(
        hard.contains("highest loss") && hard.contains("sha256"),
        "{hard}"
    );
    let forgotten = stdout(&worker(&[
        "unlearn",
        "--dataset",
        "fmnist-tiny",
        "--device",
        "cpu",
        "--model",
        &path("v0.safetensors"),
        "--method",
        "ga",
        "--forget-file",
        &path("hard.txt"),
        "--out",
        &path("v1.safetensors"),
    ]));
    assert!(forgotten.contains("(12 forgotten"), "{forgotten}");

    assert_failures(&[
        (
            &[
                "forget-sets",
                "draw",
                "--dataset",
                "fmnist-tiny",
                "--family",
                "high_loss",
            ],
            "defined by the deployed model",
        ),
        (
            &[
                "forget-sets",
                "draw",
                "--dataset",
                "fmnist-tiny",
                "--family",
                "nearby",
            ],
            "unknown family `nearby`",
        ),
        (
            &[
                "forget-sets",
                "draw",
                "--dataset",
                "fmnist-tiny",
                "--family",
                "random",
                "--size",
                "600",
            ],
            "size 600 must lie in 1..512",
        ),
    ]);
}
