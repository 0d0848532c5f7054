//! Lethe checkpoints in PyTorch, and PyTorch (TorchScript) models in Lethe.

use std::collections::BTreeMap;

use lethe_ml::checkpoint::{self, CheckpointInfo};
use lethe_ml::model::{Model, ModelSpec};
use lethe_ml::outputs::Outputs;
use lethe_ml::recipe::Recipe;
use lethe_ml::tensorio;
use lethe_ml::train::train;
use tch::{Device, Kind, Tensor};

use super::support::{fmnist_tiny, run_python};

/// Loads `checkpoint` into the PyTorch twin of its architecture, runs it on the `x` tensor of
/// `inputs` and prints the largest difference from the `logits` tensor there.
const COMPARE: &str = r#"
import json, sys, torch
from safetensors import safe_open
from safetensors.torch import load_file
import lethe_zoo
checkpoint, inputs = sys.argv[1], sys.argv[2]
with safe_open(checkpoint, "pt") as f:
    info = json.loads(f.metadata()["lethe"])
model = lethe_zoo.build(info["model"], info["sample_shape"], info["num_classes"])
model.load_state_dict(load_file(checkpoint), strict=True)
model.eval()
data = load_file(inputs)
with torch.no_grad():
    logits = model(data["x"])
print(float((logits - data["logits"]).abs().max()))
"#;

#[test]
fn pytorch_loads_lethe_checkpoints_and_gets_the_same_logits() {
    let data = fmnist_tiny();
    let dir = tempfile::tempdir().unwrap();
    let recipe = Recipe {
        epochs: 1,
        batch_size: 128,
        ..Recipe::fmnist_mlp()
    };
    let resnet_data = lethe_ml::data::Dataset::from_raw(
        lethe_ml::data::DatasetSpec::fmnist_tiny(),
        synthetic_split(3, 16, 64),
        synthetic_split(3, 16, 16),
    )
    .unwrap();
    for (spec, data) in [
        ("mlp:64,32", &data),
        ("cnn", &data),
        ("resnet9", &resnet_data),
        ("resnet18", &resnet_data),
    ] {
        let spec: ModelSpec = spec.parse().unwrap();
        let mut model = Model::new(
            &spec,
            &[4],
            &data.sample_shape,
            data.num_classes,
            Device::Cpu,
        )
        .unwrap();
        let subset = vec![(0..data.num_train.min(256)).collect::<Vec<i64>>()];
        train(&mut model, data, &subset, &recipe, &mut |_| {}).unwrap();
        let info = CheckpointInfo {
            model: spec.clone(),
            sample_shape: data.sample_shape.clone(),
            num_classes: data.num_classes,
            seed: 4,
            dataset_hash: Some(data.content_hash.clone()),
            recipe: Some(recipe.clone()),
            lineage: None,
        };
        let path = dir
            .path()
            .join(format!("{spec}.safetensors").replace(':', "-"));
        checkpoint::save_member(&model, 0, &info, &path).unwrap();

        let (mut reloaded, reloaded_info) = checkpoint::load(&path, Device::Cpu).unwrap();
        assert_eq!(reloaded_info, info);
        let targets: Vec<i64> = (0..16).collect();
        let logits = Outputs::compute(&mut model, data, &targets)
            .unwrap()
            .logits
            .get(0);
        let again = Outputs::compute(&mut reloaded, data, &targets)
            .unwrap()
            .logits
            .get(0);
        assert!(
            logits.equal(&again),
            "{spec}: reloaded checkpoint gives other logits"
        );

        let inputs = dir.path().join("inputs.safetensors");
        let x = data.x.narrow(0, 0, 16);
        tensorio::write_safetensors(
            &inputs,
            &[("x".into(), x), ("logits".into(), logits)],
            &BTreeMap::new(),
        )
        .unwrap();
        let difference: f64 =
            run_python(COMPARE, &[path.to_str().unwrap(), inputs.to_str().unwrap()])
                .trim()
                .parse()
                .unwrap();
        assert!(
            difference <= 1e-5,
            "{spec}: PyTorch logits differ by {difference}"
        );
    }
}

fn synthetic_split(channels: i64, side: i64, count: i64) -> lethe_ml::data::RawSplit {
    tch::manual_seed(0);
    let values = Tensor::rand([count * channels * side * side], (Kind::Float, Device::Cpu));
    lethe_ml::data::RawSplit {
        sample_shape: vec![channels, side, side],
        values: lethe_ml::data::RawValues::F32(Vec::<f32>::try_from(values).unwrap()),
        labels: (0..count).map(|index| index % 10).collect(),
    }
}

const SCRIPT_MODULE: &str = r#"
import sys, torch
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 32), torch.nn.ReLU())
        self.head = torch.nn.Linear(32, 10)
    def forward(self, x):
        return self.head(self.body(x))
torch.manual_seed(0)
torch.jit.script(Net()).save(sys.argv[1])
"#;

const RUN_STATE_DICT: &str = r#"
import sys, torch
from safetensors.torch import load_file
module = torch.jit.load(sys.argv[1])
state = load_file(sys.argv[2])
module.load_state_dict(state, strict=False)
data = load_file(sys.argv[3])
module.eval()
with torch.no_grad():
    print(float((module(data["x"]) - data["logits"]).abs().max()))
"#;

#[test]
fn torchscript_modules_train_and_export_their_weights() {
    let data = fmnist_tiny();
    let dir = tempfile::tempdir().unwrap();
    let module_path = dir.path().join("net.pt");
    run_python(SCRIPT_MODULE, &[module_path.to_str().unwrap()]);
    let spec = ModelSpec::Torchscript {
        path: module_path.clone(),
    };
    let mut model = Model::new(&spec, &[0], &data.sample_shape, 10, Device::Cpu).unwrap();
    let before = model.member_state(0);
    let names: Vec<&str> = before.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        ["body.1.bias", "body.1.weight", "head.bias", "head.weight"]
    );
    let recipe = Recipe {
        epochs: 3,
        batch_size: 64,
        ..Recipe::fmnist_mlp()
    };
    train(
        &mut model,
        &data,
        &[data.train_indices()],
        &recipe,
        &mut |_| {},
    )
    .unwrap();
    let after = model.member_state(0);
    assert!(
        !before[3].1.equal(&after[3].1),
        "training changes the module's weights"
    );
    let accuracy = Outputs::compute(&mut model, &data, &data.val_indices())
        .unwrap()
        .accuracy()[0];
    assert!(
        accuracy > 0.5,
        "a trained TorchScript MLP reaches {accuracy}"
    );

    let info = CheckpointInfo {
        model: spec,
        sample_shape: data.sample_shape.clone(),
        num_classes: 10,
        seed: 0,
        dataset_hash: None,
        recipe: None,
        lineage: None,
    };
    let checkpoint_path = dir.path().join("trained.safetensors");
    checkpoint::save_member(&model, 0, &info, &checkpoint_path).unwrap();
    let targets: Vec<i64> = (0..16).collect();
    let logits = Outputs::compute(&mut model, &data, &targets)
        .unwrap()
        .logits
        .get(0);
    let inputs = dir.path().join("inputs.safetensors");
    tensorio::write_safetensors(
        &inputs,
        &[
            ("x".into(), data.x.narrow(0, 0, 16)),
            ("logits".into(), logits),
        ],
        &BTreeMap::new(),
    )
    .unwrap();
    let difference: f64 = run_python(
        RUN_STATE_DICT,
        &[
            module_path.to_str().unwrap(),
            checkpoint_path.to_str().unwrap(),
            inputs.to_str().unwrap(),
        ],
    )
    .trim()
    .parse()
    .unwrap();
    assert!(difference <= 1e-5, "PyTorch logits differ by {difference}");
}

#[test]
fn malformed_checkpoints_are_rejected_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"not a checkpoint at all").unwrap();
    let message = checkpoint::load(&garbage, Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(message.contains("garbage.safetensors"), "{message}");

    let model = Model::new(
        &"mlp:8".parse().unwrap(),
        &[1],
        &[1, 28, 28],
        10,
        Device::Cpu,
    )
    .unwrap();
    let info = CheckpointInfo {
        model: "mlp:8".parse().unwrap(),
        sample_shape: vec![1, 28, 28],
        num_classes: 10,
        seed: 1,
        dataset_hash: None,
        recipe: None,
        lineage: None,
    };
    let good = dir.path().join("good.safetensors");
    checkpoint::save_member(&model, 0, &info, &good).unwrap();
    let mut file = tensorio::read_safetensors(&good).unwrap();
    file.tensors.retain(|(name, _)| name != "layers.1.bias");
    let missing = dir.path().join("missing.safetensors");
    tensorio::write_safetensors(&missing, &file.tensors, &file.metadata).unwrap();
    let message = checkpoint::load(&missing, Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        message.contains("missing tensor `layers.1.bias`"),
        "{message}"
    );

    let mut wrong_shape = tensorio::read_safetensors(&good).unwrap();
    for (name, tensor) in &mut wrong_shape.tensors {
        if name == "layers.0.weight" {
            *tensor = Tensor::zeros([8, 100], (Kind::Float, Device::Cpu));
        }
    }
    let reshaped = dir.path().join("reshaped.safetensors");
    tensorio::write_safetensors(&reshaped, &wrong_shape.tensors, &wrong_shape.metadata).unwrap();
    let message = checkpoint::load(&reshaped, Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(message.contains("has shape [8, 100]"), "{message}");
}
