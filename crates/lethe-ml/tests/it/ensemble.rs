use std::path::Path;

use lethe_ml::ensemble::{
    run_ensemble, run_groups, run_member_range, EnsembleEvent, EnsembleResults, EnsembleSpec,
};
use lethe_ml::recipe::Recipe;
use tch::{Device, Kind};

use super::support::fmnist_tiny;

fn spec() -> EnsembleSpec {
    EnsembleSpec {
        model: "mlp:32".parse().unwrap(),
        recipe: Recipe {
            epochs: 1,
            batch_size: 64,
            ..Recipe::fmnist_mlp()
        },
        members: 5,
        alpha: 0.5,
        base_seed: 3,
        group_size: 2,
        exclude: Vec::new(),
        keep_weights: false,
    }
}

fn run(spec: &EnsembleSpec, dir: &Path) -> Vec<String> {
    let data = fmnist_tiny();
    let mut log = Vec::new();
    run_ensemble(spec, &data, dir, Device::Cpu, &mut |event| match event {
        EnsembleEvent::GroupSkipped { members } => log.push(format!("skip {members:?}")),
        EnsembleEvent::GroupFinished { members, .. } => log.push(format!("train {members:?}")),
        _ => {}
    })
    .unwrap();
    // Groups run side by side on a CPU, so they finish in any order.
    log.sort();
    log
}

#[test]
fn an_ensemble_streams_groups_and_a_rerun_skips_finished_members() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec();
    assert_eq!(
        run(&spec, dir.path()),
        ["train 0..2", "train 2..4", "train 4..5"]
    );
    let complete = EnsembleResults::load(dir.path()).unwrap();
    assert_eq!(complete.masks.size(), vec![5, 512]);
    assert_eq!(complete.logits.size(), vec![5, 768, 10]);
    assert_eq!(complete.logits.kind(), Kind::Half);
    let ones = Vec::<i64>::try_from(complete.masks.to_kind(Kind::Int64).sum_dim_intlist(
        1,
        false,
        Kind::Int64,
    ))
    .unwrap();
    assert_eq!(ones, vec![256; 5]);
    assert!(
        !complete.masks.get(0).equal(&complete.masks.get(1)),
        "members draw different subsets"
    );

    assert_eq!(
        run(&spec, dir.path()),
        ["skip 0..2", "skip 2..4", "skip 4..5"]
    );

    // A crash mid-run loses only the group in flight: remove one group, rerun, same results.
    std::fs::remove_file(dir.path().join("members-000002-000004.safetensors")).unwrap();
    assert_eq!(
        run(&spec, dir.path()),
        ["skip 0..2", "skip 4..5", "train 2..4"]
    );
    let resumed = EnsembleResults::load(dir.path()).unwrap();
    assert!(
        resumed.logits.equal(&complete.logits),
        "a resumed ensemble equals an uninterrupted one"
    );
    assert!(resumed.masks.equal(&complete.masks));
    assert_eq!(resumed.seeds, complete.seeds);
}

#[test]
fn run_groups_trains_only_the_groups_it_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec();
    let data = fmnist_tiny();
    let mut trained = Vec::new();
    run_groups(
        &spec,
        &data,
        dir.path(),
        &[0..2, 4..5],
        Device::Cpu,
        &mut |event| {
            if let EnsembleEvent::GroupFinished { members, .. } = event {
                trained.push(members);
            }
        },
    )
    .unwrap();
    trained.sort_by_key(|members| members.start);
    assert_eq!(trained, [0..2, 4..5]);
    assert!(
        EnsembleResults::load(dir.path()).is_err(),
        "group 2..4 is missing"
    );
    assert_eq!(
        run(&spec, dir.path()),
        ["skip 0..2", "skip 4..5", "train 2..4"]
    );

    let error = run_groups(
        &spec,
        &data,
        dir.path(),
        &[4..5, 1..3],
        Device::Cpu,
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("not one group"), "{error}");
}

#[test]
fn member_ranges_run_concurrently_in_one_directory() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec();
    std::thread::scope(|scope| {
        for members in spec.groups() {
            let (spec, dir) = (&spec, dir.path());
            scope.spawn(move || {
                let data = fmnist_tiny();
                run_member_range(spec, &data, dir, members, Device::Cpu, &mut |_| {}).unwrap();
            });
        }
    });
    let concurrent = EnsembleResults::load(dir.path()).unwrap();
    let sequential_dir = tempfile::tempdir().unwrap();
    run(&spec, sequential_dir.path());
    let sequential = EnsembleResults::load(sequential_dir.path()).unwrap();
    assert!(concurrent.masks.equal(&sequential.masks));
    // Bit-for-bit equality needs the same libtorch thread count, and these two runs differ in it
    // (separate processes' threads here, one thread per group there): BLAS sums in another order.
    let difference = (concurrent.logits.to_kind(Kind::Float)
        - sequential.logits.to_kind(Kind::Float))
    .abs()
    .max()
    .double_value(&[]);
    assert!(difference < 1e-2, "logits differ by {difference}");
}

#[test]
fn a_directory_belongs_to_one_ensemble() {
    let dir = tempfile::tempdir().unwrap();
    let first = EnsembleSpec {
        members: 2,
        ..spec()
    };
    run(&first, dir.path());
    let other = EnsembleSpec {
        base_seed: 4,
        ..first
    };
    let data = fmnist_tiny();
    let error = run_ensemble(&other, &data, dir.path(), Device::Cpu, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(error.contains("different spec"), "{error}");
    let incomplete = tempfile::tempdir().unwrap();
    run_member_range(
        &spec(),
        &data,
        incomplete.path(),
        0..2,
        Device::Cpu,
        &mut |_| {},
    )
    .unwrap();
    let error = EnsembleResults::load(incomplete.path())
        .unwrap_err()
        .to_string();
    assert!(error.contains("not finished"), "{error}");
    let bad = EnsembleSpec {
        alpha: 0.0,
        ..spec()
    };
    assert!(run_ensemble(&bad, &data, dir.path(), Device::Cpu, &mut |_| {}).is_err());
}
