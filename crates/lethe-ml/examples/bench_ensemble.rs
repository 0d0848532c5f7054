//! `make bench-ensemble`: M fmnist-bench MLPs (784-128-10, Adam 1e-3, batch 128, 20 epochs,
//! α = 0.5) trained as one ensemble, against the same members trained one at a time by the
//! engine, a plain one-model-at-a-time PyTorch loop (the peer), and the machine's sgemm rate.
//!
//! Usage: bench_ensemble [--members 256] [--group 8] [--single 256] [--peer 16] [--epochs 20]
//!                       [--out bench/results/ensemble.json]

use std::path::PathBuf;
use std::time::Instant;

#[path = "common/peer.rs"]
mod peer;

use lethe_ml::data::{Dataset, DatasetSpec};
use lethe_ml::ensemble::{member_subset, run_groups, EnsembleEvent, EnsembleResults, EnsembleSpec};
use lethe_ml::model::{Model, ModelSpec};
use lethe_ml::recipe::Recipe;
use lethe_ml::train::train;
use tch::{Device, Kind, Tensor};

struct Args {
    members: usize,
    group: usize,
    single: usize,
    peer: usize,
    epochs: usize,
    out: PathBuf,
}

fn parse_args() -> Args {
    let mut args = Args {
        members: 256,
        group: 8,
        single: 256,
        peer: 16,
        epochs: 20,
        out: PathBuf::from("bench/results/ensemble.json"),
    };
    let mut raw = std::env::args().skip(1);
    while let Some(flag) = raw.next() {
        let value = raw.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        let number = || {
            value
                .parse::<usize>()
                .unwrap_or_else(|_| panic!("{flag} takes a number"))
        };
        match flag.as_str() {
            "--members" => args.members = number(),
            "--group" => args.group = number(),
            "--single" => args.single = number(),
            "--peer" => args.peer = number(),
            "--epochs" => args.epochs = number(),
            "--out" => args.out = PathBuf::from(&value),
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

/// Slices of the ensemble between sgemm probes.
const SLICES: usize = 4;

/// fp32 GFLOP/s of a large square matrix product through libtorch, the best of several runs:
/// the CPU's practical peak (the best run, so that noise can only lower `fraction_of_peak`).
fn sgemm_gflops() -> f64 {
    let n = 4096i64;
    let a = Tensor::randn([n, n], (Kind::Float, Device::Cpu));
    let b = Tensor::randn([n, n], (Kind::Float, Device::Cpu));
    let _warm = a.matmul(&b);
    let mut best = 0.0f64;
    for _ in 0..4 {
        let start = Instant::now();
        let _product = a.matmul(&b);
        best = best.max(2.0 * (n as f64).powi(3) / start.elapsed().as_secs_f64() / 1e9);
    }
    best
}

fn main() {
    let args = parse_args();
    let data = Dataset::load(&DatasetSpec::fmnist_bench())
        .expect("Fashion-MNIST is installed (make setup)");
    let recipe = Recipe {
        epochs: args.epochs,
        ..Recipe::fmnist_mlp()
    };
    let spec = EnsembleSpec {
        model: ModelSpec::Mlp { hidden: vec![128] },
        recipe: recipe.clone(),
        members: args.members,
        alpha: 0.5,
        base_seed: 0,
        group_size: args.group,
        exclude: Vec::new(),
        keep_weights: false,
    };
    let parameters = Model::new(
        &spec.model,
        &[0],
        &data.sample_shape,
        data.num_classes,
        Device::Cpu,
    )
    .expect("the MLP fits Fashion-MNIST")
    .parameters_per_member() as f64;

    // The peer runs first, while this process has no libtorch threads that could compete.
    let peer = peer::run_peer(
        "pytorch_one_at_a_time.py",
        [
            "--members".to_owned(),
            args.peer.to_string(),
            "--epochs".to_owned(),
            args.epochs.to_string(),
        ],
    );
    let peer_rate = peer["examples_per_s"].as_f64().expect("peer rate");
    eprintln!("pytorch peer: {peer_rate:.0} examples/s");

    // The machine is shared and its speed drifts over a run, so the sgemm rate is probed
    // between slices of the ensemble and each slice is held to the faster of its two
    // neighbouring probes: the peak that applies is the one measured at the same time.
    let groups = spec.groups();
    let slices: Vec<&[std::ops::Range<usize>]> =
        groups.chunks(groups.len().div_ceil(SLICES)).collect();
    let mut probes = vec![sgemm_gflops()];
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut ensemble_examples = 0u64;
    let mut ensemble_seconds = 0.0;
    let mut peak_seconds = 0.0;
    for slice in slices {
        let start = Instant::now();
        run_groups(&spec, &data, dir.path(), slice, Device::Cpu, &mut |event| {
            if let EnsembleEvent::GroupFinished {
                members,
                seconds,
                examples,
                ..
            } = event
            {
                ensemble_examples += examples;
                eprintln!(
                    "ensemble: members {members:?} in {seconds:.1}s ({:.0} examples/s)",
                    examples as f64 / seconds
                );
            }
        })
        .expect("ensemble trains");
        let seconds = start.elapsed().as_secs_f64();
        probes.push(sgemm_gflops());
        let [before, after] = probes[probes.len() - 2..] else {
            unreachable!("a probe precedes and follows every slice")
        };
        ensemble_seconds += seconds;
        peak_seconds += before.max(after) * seconds;
    }
    let peak = peak_seconds / ensemble_seconds;
    eprintln!("sgemm probes: {probes:.0?} GFLOP/s; {peak:.1} over the ensemble");
    let ensemble_rate = ensemble_examples as f64 / ensemble_seconds;
    let val_acc = EnsembleResults::load(dir.path())
        .expect("results load")
        .val_accuracy();
    let val_acc_mean = val_acc.iter().sum::<f64>() / val_acc.len() as f64;

    let mut single_examples = 0u64;
    let start = Instant::now();
    for index in 0..args.single.min(args.members) {
        let seed = spec.member_seed(index);
        let subset = member_subset(seed, data.num_train, spec.alpha, &[]);
        let mut model = Model::new(
            &spec.model,
            &[seed],
            &data.sample_shape,
            data.num_classes,
            Device::Cpu,
        )
        .expect("model builds");
        single_examples += train(&mut model, &data, &[subset], &recipe, &mut |_| {})
            .expect("member trains")
            .examples;
    }
    let single_rate = single_examples as f64 / start.elapsed().as_secs_f64();
    eprintln!("single: {single_rate:.0} examples/s");

    let ensemble_gflops = 6.0 * parameters * ensemble_rate / 1e9;
    let result = serde_json::json!({
        "workload": "fmnist-bench MLP 784-128-10, Adam 1e-3, batch 128, alpha 0.5",
        "device": "cpu",
        "threads": tch::get_num_threads(),
        "members": args.members,
        "group_size": args.group,
        "epochs": args.epochs,
        "parameters_per_member": parameters,
        "ensemble_seconds": ensemble_seconds,
        "ensemble_examples_per_s": ensemble_rate,
        "single_members_timed": args.single.min(args.members),
        "single_examples_per_s": single_rate,
        "pytorch_members_timed": args.peer,
        "pytorch_examples_per_s": peer_rate,
        "pytorch_val_acc_mean": peer["val_acc_mean"],
        "ratio_vs_pytorch": ensemble_rate / peer_rate,
        "ratio_vs_single": ensemble_rate / single_rate,
        "sgemm_gflops": peak,
        "sgemm_gflops_probes": probes,
        "ensemble_gflops": ensemble_gflops,
        "fraction_of_peak": ensemble_gflops / peak,
        "val_acc_mean": val_acc_mean,
        "val_acc_min": val_acc.iter().cloned().fold(f64::INFINITY, f64::min),
    });
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent).expect("results directory");
    }
    std::fs::write(
        &args.out,
        serde_json::to_string_pretty(&result).expect("json"),
    )
    .expect("write results");
    println!("{}", serde_json::to_string_pretty(&result).expect("json"));
}
