//! The convolutional workloads of `make bench-ensemble`: the zoo's small CNN on fmnist-bench
//! and ResNet-9 on a reduced fmnist-bench, each trained as one ensemble by the engine (with
//! its device's default convolution layout, and with both layouts timed on their own), against
//! PyTorch one model at a time and PyTorch's torch.func/vmap ensemble, in the same run.

use std::time::Instant;

use lethe_ml::data::{Dataset, DatasetSpec};
use lethe_ml::ensemble::{
    member_subset, run_ensemble, EnsembleEvent, EnsembleResults, EnsembleSpec,
};
use lethe_ml::model::{ConvLayout, Model, ModelSpec};
use lethe_ml::recipe::Recipe;
use lethe_ml::train::train;
use serde_json::{json, Value};
use tch::Device;

use crate::peer::run_peer;
use crate::synchronize;

/// One convolutional workload.
pub(crate) struct ConvWorkload {
    /// The JSON key, and the peer's `--model`.
    pub(crate) name: &'static str,
    pub(crate) model: ModelSpec,
    pub(crate) members: usize,
    pub(crate) epochs: usize,
    /// Training and validation examples used (the first ones of fmnist-bench).
    pub(crate) train: usize,
    pub(crate) val: usize,
}

/// The small CNN on fmnist-bench (8 members, 2 epochs) and ResNet-9 on its first 500 training
/// and 200 validation examples (4 members, 1 epoch): each engine or peer run takes about a
/// minute or less on 2 cores.
pub(crate) fn workloads() -> Vec<ConvWorkload> {
    vec![
        ConvWorkload {
            name: "cnn",
            model: ModelSpec::SmallCnn,
            members: 8,
            epochs: 2,
            train: 5_000,
            val: 1_000,
        },
        ConvWorkload {
            name: "resnet9",
            model: ModelSpec::Resnet9,
            members: 4,
            epochs: 1,
            train: 500,
            val: 200,
        },
    ]
}

const ALPHA: f64 = 0.5;

/// Examples per second of all members trained as one network in `layout`.
fn layout_rate(
    workload: &ConvWorkload,
    spec: &EnsembleSpec,
    data: &Dataset,
    layout: ConvLayout,
    device: Device,
) -> f64 {
    let seeds: Vec<u64> = (0..workload.members).map(|m| spec.member_seed(m)).collect();
    let subsets: Vec<Vec<i64>> = seeds
        .iter()
        .map(|seed| member_subset(*seed, data.num_train, ALPHA, &[]))
        .collect();
    let mut model = Model::new(
        &spec.model,
        &seeds,
        &data.sample_shape,
        data.num_classes,
        device,
    )
    .expect("model builds");
    assert!(model.set_conv_layout(layout), "a convolutional network");
    let start = Instant::now();
    let examples = train(&mut model, data, &subsets, &spec.recipe, &mut |_| {})
        .expect("members train")
        .examples;
    synchronize(device);
    examples as f64 / start.elapsed().as_secs_f64()
}

pub(crate) fn measure(workload: &ConvWorkload, device: Device) -> Value {
    let data = Dataset::load(
        &DatasetSpec::fmnist_bench().with_limits(Some(workload.train), Some(workload.val)),
    )
    .expect("Fashion-MNIST is installed (make setup)")
    .to_device(device);
    let device_name = if device.is_cuda() { "cuda" } else { "cpu" };
    // The peers run first, while this process has no libtorch threads that could compete.
    let peer = |mode: &str| {
        let result = run_peer(
            "pytorch_one_at_a_time.py",
            [
                "--model",
                workload.name,
                "--mode",
                mode,
                "--members",
                &workload.members.to_string(),
                "--epochs",
                &workload.epochs.to_string(),
                "--train",
                &workload.train.to_string(),
                "--device",
                device_name,
            ],
        );
        eprintln!(
            "{}: pytorch {mode}: {:.0} examples/s",
            workload.name, result["examples_per_s"]
        );
        result
    };
    let loop_peer = peer("loop");
    let vmap_peer = peer("vmap");

    let spec = EnsembleSpec {
        model: workload.model.clone(),
        recipe: Recipe {
            epochs: workload.epochs,
            ..Recipe::fmnist_mlp()
        },
        members: workload.members,
        alpha: ALPHA,
        base_seed: 0,
        group_size: workload.members,
        exclude: Vec::new(),
        keep_weights: false,
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut examples = 0u64;
    let start = Instant::now();
    run_ensemble(&spec, &data, dir.path(), device, &mut |event| {
        if let EnsembleEvent::GroupFinished { examples: e, .. } = event {
            examples += e;
        }
    })
    .expect("ensemble trains");
    let rate = examples as f64 / start.elapsed().as_secs_f64();
    eprintln!("{}: ensemble {rate:.0} examples/s", workload.name);
    let val_acc = EnsembleResults::load(dir.path())
        .expect("results load")
        .val_accuracy();
    let layouts: serde_json::Map<String, Value> = [ConvLayout::PerMember, ConvLayout::Grouped]
        .into_iter()
        .map(|layout| {
            let rate = layout_rate(workload, &spec, &data, layout, device);
            eprintln!(
                "{}: {} layout {rate:.0} examples/s",
                workload.name,
                layout.name()
            );
            (layout.name().to_owned(), json!({ "examples_per_s": rate }))
        })
        .collect();
    let loop_rate = loop_peer["examples_per_s"].as_f64().expect("peer rate");
    let vmap_rate = vmap_peer["examples_per_s"].as_f64().expect("peer rate");
    let best = loop_rate.max(vmap_rate);
    json!({
        "workload": format!(
            "fmnist-bench ({} train, {} validation examples) {}, {} members, {} epochs, Adam 1e-3, batch 128, alpha 0.5, outputs on every target",
            workload.train, workload.val, workload.model, workload.members, workload.epochs
        ),
        "members": workload.members,
        "epochs": workload.epochs,
        "default_layout": ConvLayout::for_device(device).name(),
        "examples_per_s": rate,
        "val_acc_mean": val_acc.iter().sum::<f64>() / val_acc.len() as f64,
        "layouts": layouts,
        "pytorch_examples_per_s": best,
        "pytorch_baseline": if loop_rate >= vmap_rate { "loop" } else { "vmap" },
        "pytorch_loop_examples_per_s": loop_rate,
        "pytorch_vmap_examples_per_s": vmap_rate,
        "pytorch_val_acc_mean": loop_peer["val_acc_mean"],
        "pytorch_vmap_val_acc_mean": vmap_peer["val_acc_mean"],
        "ratio_vs_pytorch": rate / best,
    })
}
