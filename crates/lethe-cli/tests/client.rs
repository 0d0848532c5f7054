//! The `lethe` client verbs against a coordinator, PostgreSQL and a runner on loopback.

use std::process::{Command, Output};
use std::time::Duration;

use lethe_testkit::{output_text as text, Stack};

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

fn lethe(endpoint: &str, args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_lethe"))
        .args(args)
        .env("LETHE_COORDINATOR", endpoint)
        .env_remove("LETHE_TENANT")
        .output()
        .unwrap();
    output
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_list_get_cancel_and_wait_through_the_cli() {
    // A runner with two slots, so that the smokes' tasks run side by side.
    let stack = Stack::builder()
        .database("cli")
        .lease(Duration::from_secs(2))
        .workers(1)
        .worker_config(|config| {
            config.name = "cli-test".into();
            config.slots = 2;
            config.poll_wait = Duration::from_secs(1);
            config.drain_grace = Duration::from_millis(100);
        })
        .start()
        .await;
    let endpoint = stack.endpoint();

    let run = |args: &[&str]| {
        let (endpoint, args): (String, Vec<String>) = (
            endpoint.clone(),
            args.iter().map(|a| a.to_string()).collect(),
        );
        tokio::task::spawn_blocking(move || {
            lethe(
                &endpoint,
                &args.iter().map(String::as_str).collect::<Vec<_>>(),
            )
        })
    };
    let smoke = run(&["smoke", "--tasks", "3", "--task-seconds", "0.2"])
        .await
        .unwrap();
    assert!(smoke.status.success(), "{}", text(&smoke));
    let name = String::from_utf8_lossy(&smoke.stdout)
        .lines()
        .next()
        .unwrap()
        .to_string();
    assert!(name.starts_with("operations/"), "{}", text(&smoke));
    assert!(text(&smoke).contains("SUCCEEDED"), "{}", text(&smoke));

    let listed = run(&["op", "list"]).await.unwrap();
    assert!(text(&listed).contains(&name), "{}", text(&listed));
    let other_tenant = run(&["--tenant", "globex", "op", "get", &name])
        .await
        .unwrap();
    assert!(!other_tenant.status.success());
    assert!(
        text(&other_tenant).contains("NotFound"),
        "{}",
        text(&other_tenant)
    );

    // A long smoke, cancelled from another command, ends cancelled.
    let long = run(&[
        "smoke",
        "--tasks",
        "1",
        "--task-seconds",
        "60",
        "--no-watch",
    ])
    .await
    .unwrap();
    let long_name = String::from_utf8_lossy(&long.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cancel = run(&["op", "cancel", &long_name]).await.unwrap();
    assert!(cancel.status.success(), "{}", text(&cancel));
    let waited = run(&["op", "wait", &long_name, "--timeout-seconds", "20"])
        .await
        .unwrap();
    assert!(text(&waited).contains("CANCELLED"), "{}", text(&waited));

    let sha = "ab".repeat(32);
    let registered = run(&[
        "datasets",
        "register",
        "fmnist-tiny",
        "file:///data/fmnist-tiny.safetensors",
        "--sha256",
        &sha,
    ])
    .await
    .unwrap();
    assert!(registered.status.success(), "{}", text(&registered));
    let model = run(&[
        "models",
        "register",
        "mlp",
        "file:///models/mlp.safetensors",
        "--dataset",
        "fmnist-tiny",
    ])
    .await
    .unwrap();
    assert!(
        text(&model).contains("models/mlp  trained on datasets/fmnist-tiny"),
        "{}",
        text(&model)
    );
    let got = run(&["datasets", "get", "fmnist-tiny"]).await.unwrap();
    assert!(text(&got).contains(&sha), "{}", text(&got));
    let bad_hash = run(&["datasets", "register", "x", "file:///x", "--sha256", "zz"])
        .await
        .unwrap();
    assert!(
        !bad_hash.status.success() && text(&bad_hash).contains("64 hex digits"),
        "{}",
        text(&bad_hash)
    );

    // Work on a model: an index build is queued (no ML worker here), a deletion request is
    // refused until the model has an index, and the registered model is version 0.
    let index = run(&["submit", "index", "mlp", "--members", "8", "--no-watch"])
        .await
        .unwrap();
    assert!(
        index.status.success() && text(&index).contains("INDEX_BUILD"),
        "{}",
        text(&index)
    );
    let early = run(&["submit", "deletion", "mlp", "--forget", "1,2", "--no-watch"])
        .await
        .unwrap();
    assert!(
        !early.status.success() && text(&early).contains("no attribution index"),
        "{}",
        text(&early)
    );
    let versions = run(&["models", "versions", "mlp"]).await.unwrap();
    assert!(
        text(&versions).contains("v0") && text(&versions).contains("(registered)"),
        "{}",
        text(&versions)
    );
    let index_name = String::from_utf8_lossy(&index.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let not_done = run(&["download", &index_name, "--out", "/tmp/never"])
        .await
        .unwrap();
    assert!(
        !not_done.status.success() && text(&not_done).contains("not done"),
        "{}",
        text(&not_done)
    );

    // A version downloads through the coordinator, checked against its recorded SHA-256; one
    // whose stored object is not the recorded one fails and leaves no file behind.
    let checkpoint: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::create_dir_all(stack.artifacts_root().join("models")).unwrap();
    std::fs::write(stack.artifacts_root().join("models/kept.bin"), &checkpoint).unwrap();
    let kept = format!("{}/models/kept.bin", stack.artifacts_url());
    let kept_sha = sha256_hex(&checkpoint);
    let wrong_sha = "cd".repeat(32);
    for (id, sha) in [("kept", &kept_sha), ("altered", &wrong_sha)] {
        let registered = run(&[
            "models",
            "register",
            id,
            &kept,
            "--dataset",
            "fmnist-tiny",
            "--sha256",
            sha,
        ])
        .await
        .unwrap();
        assert!(registered.status.success(), "{}", text(&registered));
    }
    let scratch = tempfile::tempdir().unwrap();
    let out = scratch.path().join("kept.safetensors");
    let out_arg = out.display().to_string();
    let downloaded = run(&["download", "models/kept/versions/0", "--out", &out_arg])
        .await
        .unwrap();
    assert!(downloaded.status.success(), "{}", text(&downloaded));
    assert!(
        text(&downloaded).contains(&kept_sha),
        "{}",
        text(&downloaded)
    );
    assert_eq!(std::fs::read(&out).unwrap(), checkpoint);
    let refused_out = scratch.path().join("altered.safetensors");
    let refused_arg = refused_out.display().to_string();
    let refused = run(&[
        "download",
        "models/altered/versions/0",
        "--out",
        &refused_arg,
    ])
    .await
    .unwrap();
    assert!(
        !refused.status.success() && text(&refused).contains("DataLoss"),
        "{}",
        text(&refused)
    );
    assert!(
        !refused_out.exists() && !refused_out.with_extension("partial").exists(),
        "nothing left behind"
    );

    let bad = run(&["op", "get", "jobs/1"]).await.unwrap();
    assert!(
        !bad.status.success() && text(&bad).contains("InvalidArgument"),
        "{}",
        text(&bad)
    );
}
