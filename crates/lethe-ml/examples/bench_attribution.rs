//! `make bench-attribution`: the attribution estimators on fmnist-bench, and Lethe's TRAK
//! against the TRAK library (`traker`, its CPU projector) on the very same checkpoint,
//! projection dimension, examples and held-out subset retrains.
//!
//! Usage: bench_attribution [--members 2000] [--held-out 200] [--proj-dim 2048]
//!                          [--work bench/work/attribution] [--out bench/results/attribution.json]
//! The ensemble in the work directory is reused by later runs (finished groups are skipped).

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

#[path = "common/peer.rs"]
mod peer;

use lethe_ml::attribution::beta_file::BetaReader;
use lethe_ml::attribution::lds::linear_datamodeling_score;
use lethe_ml::attribution::trak::{build_trak_index, TrakConfig};
use lethe_ml::attribution::{build_index, Estimator};
use lethe_ml::data::{Dataset, DatasetSpec};
use lethe_ml::ensemble::{run_ensemble, EnsembleResults, EnsembleSpec};
use lethe_ml::model::ModelSpec;
use lethe_ml::recipe::Recipe;
use tch::Device;

fn main() {
    let mut members = 2000usize;
    let mut held_out = 200usize;
    let mut proj_dim = 2048i64;
    let mut work = PathBuf::from("bench/work/attribution");
    let mut out = PathBuf::from("bench/results/attribution.json");
    let mut raw = std::env::args().skip(1);
    while let Some(flag) = raw.next() {
        let value = raw.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--members" => members = value.parse().expect("--members takes a number"),
            "--held-out" => held_out = value.parse().expect("--held-out takes a number"),
            "--proj-dim" => proj_dim = value.parse().expect("--proj-dim takes a number"),
            "--work" => work = PathBuf::from(value),
            "--out" => out = PathBuf::from(value),
            other => panic!("unknown flag {other}"),
        }
    }
    let data = Dataset::load(&DatasetSpec::fmnist_bench())
        .expect("Fashion-MNIST is installed (make setup)");
    let spec = EnsembleSpec {
        model: ModelSpec::Mlp { hidden: vec![128] },
        recipe: Recipe::fmnist_mlp(),
        members: members + held_out,
        alpha: 0.5,
        base_seed: 0,
        group_size: 8,
        exclude: Vec::new(),
        keep_weights: false,
    };
    let ensemble_dir = work.join("ensemble");
    let started = Instant::now();
    run_ensemble(&spec, &data, &ensemble_dir, Device::Cpu, &mut |_| {})
        .expect("the ensemble trains");
    eprintln!(
        "ensemble of {} ready after {:.0} s",
        spec.members,
        started.elapsed().as_secs_f64()
    );
    let ensemble = EnsembleResults::load(&ensemble_dir).expect("the ensemble loads");
    let estimation = 0..members;
    let held = members..members + held_out;
    let val_targets = data.num_train..data.num_targets();
    let lds = |path: &PathBuf| {
        let reader = BetaReader::open(path).expect("the index opens");
        linear_datamodeling_score(
            &reader,
            &ensemble.masks,
            &ensemble.logits,
            &ensemble.labels,
            estimation.clone(),
            held.clone(),
            val_targets.clone(),
        )
        .expect("LDS")
        .lds
    };
    let mut seconds = serde_json::Map::new();
    let mut scores = serde_json::Map::new();
    for (name, estimator) in [
        ("subsample", Estimator::Subsample),
        ("regression", Estimator::Ridge { penalty: None }),
    ] {
        let path = work.join(format!("{name}.safetensors"));
        let _ = std::fs::remove_file(&path);
        let started = Instant::now();
        build_index(&ensemble, estimation.clone(), estimator, &path, &mut |_| {
            ControlFlow::Continue(())
        })
        .expect("the index builds");
        seconds.insert(name.into(), started.elapsed().as_secs_f64().into());
        scores.insert(name.into(), lds(&path).into());
        eprintln!("{name}: LDS {} in {:.1} s", scores[name], seconds[name]);
    }

    let trak_path = work.join("trak.safetensors");
    let _ = std::fs::remove_file(&trak_path);
    let checkpoints = work.join("trak-checkpoints");
    std::fs::create_dir_all(&checkpoints).expect("work directory");
    let config = TrakConfig {
        model: spec.model.clone(),
        recipe: spec.recipe.clone(),
        checkpoints: 1,
        projection_dim: proj_dim,
        seed: 0,
        relative_damping: 1e-3,
        save_checkpoints: Some(checkpoints.clone()),
    };
    let started = Instant::now();
    let trak = build_trak_index(
        &data,
        &config,
        &ensemble,
        estimation.clone(),
        &trak_path,
        &mut |_| ControlFlow::Continue(()),
    )
    .expect("TRAK builds");
    seconds.insert("trak".into(), started.elapsed().as_secs_f64().into());
    scores.insert("trak".into(), lds(&trak_path).into());
    eprintln!(
        "trak: LDS {} in {:.1} s, featurising {:.0} examples/s",
        scores["trak"], seconds["trak"], trak.featurize_examples_per_s
    );

    let checkpoint = checkpoints.join("checkpoint-0.safetensors");
    let peer = peer::run_peer(
        "traker_lds.py",
        [
            checkpoint.display().to_string(),
            ensemble_dir.display().to_string(),
            "--held-out".into(),
            held.start.to_string(),
            held.end.to_string(),
            "--estimation".into(),
            estimation.start.to_string(),
            estimation.end.to_string(),
            "--proj-dim".into(),
            proj_dim.to_string(),
        ],
    );
    eprintln!("traker: {peer}");
    scores.insert("traker".into(), peer["lds"].clone());
    let peer_rate = peer["featurize_examples_per_s"]
        .as_f64()
        .expect("peer rate");

    let result = serde_json::json!({
        "workload": "fmnist-bench MLP 784-128-10, Adam 1e-3, batch 128, 20 epochs, alpha 0.5",
        "lds": scores,
        "lds_targets": "validation (1000)",
        "estimation_models": members,
        "held_out_models": held_out,
        "featurize_examples_per_s": {"lethe": trak.featurize_examples_per_s, "traker": peer_rate},
        "ratio_vs_traker": trak.featurize_examples_per_s / peer_rate,
        "trak_checkpoints": 1,
        "projection_dim": proj_dim,
        "trak_scale": trak.scale,
        "index_build_seconds": seconds["subsample"],
        "build_seconds": seconds,
    });
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).expect("results directory");
    }
    std::fs::write(&out, serde_json::to_string_pretty(&result).expect("json"))
        .expect("write results");
    println!("{}", serde_json::to_string_pretty(&result).expect("json"));
}
