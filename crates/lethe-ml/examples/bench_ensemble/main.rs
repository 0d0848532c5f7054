//! `make bench-ensemble`: M fmnist-bench MLPs (784-128-10, Adam 1e-3, batch 128, 20 epochs,
//! α = 0.5) trained as one ensemble, against the same members trained one at a time by the
//! engine, a plain one-model-at-a-time PyTorch loop (the peer), and the machine's sgemm rate.
//!
//! On a GPU, where one small model cannot fill the device, `--sweep` also trains ensembles of
//! M = 1, 4, 16, ... members as one batched network each and reports how the rate grows with M
//! (`by_members`); it is on by default there.
//!
//! The convolutional networks (`cnn`, `resnet9`: see `conv.rs`) follow, each against PyTorch
//! one model at a time and PyTorch's vmap ensemble.
//!
//! Usage: bench_ensemble [--members 256] [--group 8] [--single 256] [--peer 16] [--epochs 20]
//!                       [--device cpu|cuda] [--sweep 1,4,16,64,256] [--sweep-epochs 2]
//!                       [--workloads mlp,cnn,resnet9] [--out bench/results/ensemble.json]

use std::path::PathBuf;
use std::time::Instant;

mod conv;
#[path = "../common/peer.rs"]
mod peer;

use lethe_ml::data::{Dataset, DatasetSpec};
use lethe_ml::ensemble::{
    member_subset, run_ensemble, run_groups, EnsembleEvent, EnsembleResults, EnsembleSpec,
};
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
    device: Device,
    sweep: Vec<usize>,
    sweep_epochs: usize,
    workloads: Vec<String>,
    out: PathBuf,
}

fn parse_args() -> Args {
    let mut args = Args {
        members: 256,
        group: 8,
        single: 256,
        peer: 16,
        epochs: 20,
        device: Device::Cpu,
        sweep: Vec::new(),
        sweep_epochs: 2,
        workloads: ["mlp", "cnn", "resnet9"].map(String::from).to_vec(),
        out: PathBuf::from("bench/results/ensemble.json"),
    };
    let mut sweep = None;
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
            "--sweep-epochs" => args.sweep_epochs = number(),
            "--sweep" => {
                sweep = Some(
                    value
                        .split(',')
                        .filter(|m| !m.is_empty())
                        .map(|m| {
                            m.parse()
                                .unwrap_or_else(|_| panic!("--sweep takes numbers"))
                        })
                        .collect(),
                )
            }
            "--device" => {
                args.device = match value.as_str() {
                    "cpu" => Device::Cpu,
                    "cuda" if tch::Cuda::is_available() => Device::Cuda(0),
                    "cuda" => panic!("--device cuda: libtorch sees no CUDA device"),
                    other => panic!("--device takes cpu or cuda, not {other}"),
                }
            }
            "--workloads" => {
                args.workloads = value.split(',').map(str::to_owned).collect();
                for name in &args.workloads {
                    if !["mlp", "cnn", "resnet9"].contains(&name.as_str()) {
                        panic!("--workloads takes mlp, cnn and resnet9, not {name}");
                    }
                }
            }
            "--out" => args.out = PathBuf::from(&value),
            other => panic!("unknown flag {other}"),
        }
    }
    args.sweep = sweep.unwrap_or_else(|| {
        if args.device.is_cuda() {
            vec![1, 4, 16, 64, 256]
        } else {
            Vec::new()
        }
    });
    args
}

/// Waits for the device's queued work, so that a timer sees it done.
fn synchronize(device: Device) {
    if let Device::Cuda(index) = device {
        tch::Cuda::synchronize(index as i64);
    }
}

/// Ensembles of each size in `sweep`, each trained as one batched network for `epochs`:
/// examples/s per size, and its advantage over one member at a time (the first size, 1).
fn sweep_members(
    data: &Dataset,
    spec: &EnsembleSpec,
    sweep: &[usize],
    epochs: usize,
    device: Device,
) -> Vec<serde_json::Value> {
    let mut rows: Vec<serde_json::Value> = Vec::new();
    for &members in sweep {
        let sized = EnsembleSpec {
            members,
            group_size: members,
            recipe: Recipe {
                epochs,
                ..spec.recipe.clone()
            },
            ..spec.clone()
        };
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut examples = 0u64;
        let start = Instant::now();
        run_ensemble(&sized, data, dir.path(), device, &mut |event| {
            if let EnsembleEvent::GroupFinished { examples: e, .. } = event {
                examples += e;
            }
        })
        .expect("sweep ensemble trains");
        let rate = examples as f64 / start.elapsed().as_secs_f64();
        let base = rows.first().and_then(|row| row["examples_per_s"].as_f64());
        eprintln!("sweep: {members} members as one network, {rate:.0} examples/s");
        rows.push(serde_json::json!({
            "members": members,
            "examples_per_s": rate,
            "advantage_vs_first": base.map_or(1.0, |base| rate / base),
        }));
    }
    rows
}

/// Slices of the ensemble between sgemm probes.
const SLICES: usize = 4;

/// fp32 GFLOP/s of a large square matrix product through libtorch, the best of several runs:
/// the CPU's practical peak (the best run, so that noise can only lower `fraction_of_peak`).
fn sgemm_gflops(device: Device) -> f64 {
    let n = 4096i64;
    let a = Tensor::randn([n, n], (Kind::Float, device));
    let b = Tensor::randn([n, n], (Kind::Float, device));
    let _warm = a.matmul(&b);
    synchronize(device);
    let mut best = 0.0f64;
    for _ in 0..4 {
        let start = Instant::now();
        let _product = a.matmul(&b);
        synchronize(device);
        best = best.max(2.0 * (n as f64).powi(3) / start.elapsed().as_secs_f64() / 1e9);
    }
    best
}

fn main() {
    let args = parse_args();
    let mut result = if args.workloads.iter().any(|name| name == "mlp") {
        mlp(&args)
    } else {
        serde_json::Map::new()
    };
    for workload in conv::workloads() {
        if args.workloads.iter().any(|name| name == workload.name) {
            result.insert(
                workload.name.to_owned(),
                conv::measure(&workload, args.device),
            );
        }
    }
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent).expect("results directory");
    }
    let text = serde_json::to_string_pretty(&result).expect("json");
    std::fs::write(&args.out, &text).expect("write results");
    println!("{text}");
}

/// The MLP workload: the top-level keys of the results.
fn mlp(args: &Args) -> serde_json::Map<String, serde_json::Value> {
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
        args.device,
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
            "--device".to_owned(),
            if args.device.is_cuda() { "cuda" } else { "cpu" }.to_owned(),
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
    let mut probes = vec![sgemm_gflops(args.device)];
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut ensemble_examples = 0u64;
    let mut ensemble_seconds = 0.0;
    let mut peak_seconds = 0.0;
    for slice in slices {
        let start = Instant::now();
        run_groups(&spec, &data, dir.path(), slice, args.device, &mut |event| {
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
        probes.push(sgemm_gflops(args.device));
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
            args.device,
        )
        .expect("model builds");
        single_examples += train(&mut model, &data, &[subset], &recipe, &mut |_| {})
            .expect("member trains")
            .examples;
    }
    let single_rate = single_examples as f64 / start.elapsed().as_secs_f64();
    eprintln!("single: {single_rate:.0} examples/s");
    let by_members = sweep_members(&data, &spec, &args.sweep, args.sweep_epochs, args.device);

    let ensemble_gflops = 6.0 * parameters * ensemble_rate / 1e9;
    let result = serde_json::json!({
        "workload": "fmnist-bench MLP 784-128-10, Adam 1e-3, batch 128, alpha 0.5",
        "device": if args.device.is_cuda() { "cuda" } else { "cpu" },
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
        "by_members": by_members,
        "sweep_epochs": args.sweep_epochs,
    });
    match result {
        serde_json::Value::Object(map) => map,
        _ => unreachable!("a JSON object"),
    }
}
