use lethe_ml::data::Dataset;
use lethe_ml::model::{Model, ModelSpec};
use lethe_ml::outputs::{margins, Outputs};
use lethe_ml::recipe::{Optimizer, Recipe, Schedule};
use lethe_ml::train::train;
use tch::{Device, Tensor};

use super::support::fmnist_tiny;

fn short_recipe(epochs: usize) -> Recipe {
    Recipe {
        epochs,
        batch_size: 64,
        ..Recipe::fmnist_mlp()
    }
}

fn train_members(
    spec: &str,
    seeds: &[u64],
    subsets: &[Vec<i64>],
    recipe: &Recipe,
    data: &Dataset,
) -> Model {
    let mut model = Model::new(
        &spec.parse().unwrap(),
        seeds,
        &data.sample_shape,
        data.num_classes,
        Device::Cpu,
    )
    .unwrap();
    train(&mut model, data, subsets, recipe, &mut |_| {}).unwrap();
    model
}

#[test]
fn same_seed_gives_the_same_weights_bit_for_bit() {
    let data = fmnist_tiny();
    let subset = vec![data.train_indices()];
    let sgd = Recipe {
        optimizer: Optimizer::Sgd {
            momentum: 0.9,
            nesterov: true,
        },
        lr: 0.05,
        weight_decay: 5e-4,
        schedule: Schedule::Step {
            every_epochs: 1,
            gamma: 0.5,
        },
        ..short_recipe(2)
    };
    for recipe in [short_recipe(2), sgd] {
        let first = train_members("mlp:64", &[5], &subset, &recipe, &data);
        let second = train_members("mlp:64", &[5], &subset, &recipe, &data);
        let other = train_members("mlp:64", &[6], &subset, &recipe, &data);
        for ((name, a), (_, b)) in first
            .member_state(0)
            .iter()
            .zip(second.member_state(0).iter())
        {
            assert!(
                a.equal(b),
                "{name} differs between two runs with the same seed"
            );
        }
        assert!(!first.member_state(0)[0]
            .1
            .equal(&other.member_state(0)[0].1));
    }
}

#[test]
fn a_short_training_on_fashion_mnist_beats_chance_by_far() {
    let data = fmnist_tiny();
    let mut model = train_members(
        "mlp:128",
        &[1],
        &[data.train_indices()],
        &short_recipe(8),
        &data,
    );
    let accuracy = Outputs::compute(&mut model, &data, &data.val_indices())
        .unwrap()
        .accuracy()[0];
    assert!(
        accuracy > 0.6,
        "validation accuracy {accuracy} is not far above chance (0.1)"
    );
}

/// A member of an ensemble is the model trained alone with its seed and subset.
fn assert_member_equivalence(spec: &str, recipe: &Recipe, tolerance: f64) {
    let data = fmnist_tiny();
    let seeds = [11, 12, 13];
    let subsets: Vec<Vec<i64>> = seeds
        .iter()
        .map(|seed| lethe_ml::ensemble::member_subset(*seed, data.num_train, 0.5, &[]))
        .collect();
    let mut ensemble = train_members(spec, &seeds, &subsets, recipe, &data);
    let mut alone = train_members(spec, &seeds[1..2], &subsets[1..2], recipe, &data);
    let mut largest = 0.0f64;
    for ((name, a), (_, b)) in ensemble
        .member_state(1)
        .iter()
        .zip(alone.member_state(0).iter())
    {
        let difference = (a - b).abs().max().double_value(&[]);
        largest = largest.max(difference);
        assert!(
            difference <= tolerance,
            "{spec} {name}: member and lone model differ by {difference}"
        );
    }
    let targets = data.val_indices();
    let ensemble_logits = Outputs::compute(&mut ensemble, &data, &targets)
        .unwrap()
        .logits
        .get(1);
    let alone_logits = Outputs::compute(&mut alone, &data, &targets)
        .unwrap()
        .logits
        .get(0);
    let logit_difference = (ensemble_logits - alone_logits)
        .abs()
        .max()
        .double_value(&[]);
    assert!(
        logit_difference <= 1e-3,
        "{spec}: logits differ by {logit_difference} (weights by {largest})"
    );
}

#[test]
fn an_mlp_ensemble_member_is_the_model_trained_alone() {
    assert_member_equivalence("mlp:64", &short_recipe(2), 1e-5);
}

#[test]
fn a_cnn_ensemble_member_is_the_model_trained_alone() {
    assert_member_equivalence("cnn", &short_recipe(1), 1e-5);
}

#[test]
fn learning_rate_schedules_follow_their_definitions() {
    let triangular = Recipe {
        lr: 0.4,
        epochs: 24,
        schedule: Schedule::Triangular { peak_epoch: 5.0 },
        ..Recipe::resnet9_cifar10()
    };
    assert!((triangular.lr_at(4, 9, 10) - 0.4).abs() < 1e-12);
    assert!((triangular.lr_at(1, 9, 10) - 0.4 * 2.0 / 5.0).abs() < 1e-12);
    assert!(triangular.lr_at(23, 9, 10).abs() < 1e-12);
    assert!((triangular.lr_at(14, 9, 10) - 0.4 * 9.0 / 19.0).abs() < 1e-12);
    let step = Recipe {
        lr: 1.0,
        schedule: Schedule::Step {
            every_epochs: 2,
            gamma: 0.5,
        },
        ..Recipe::fmnist_mlp()
    };
    assert_eq!(
        (
            step.lr_at(1, 0, 5),
            step.lr_at(2, 0, 5),
            step.lr_at(5, 3, 5)
        ),
        (1.0, 0.5, 0.25)
    );
    let bad = Recipe {
        epochs: 0,
        ..Recipe::fmnist_mlp()
    };
    assert!(bad.validate().unwrap_err().to_string().contains("epochs"));
    let bad_peak = Recipe {
        schedule: Schedule::Triangular { peak_epoch: 30.0 },
        ..triangular
    };
    assert!(bad_peak.validate().is_err());
}

#[test]
fn training_rejects_bad_subsets_without_panicking() {
    let data = fmnist_tiny();
    let mut model = Model::new(
        &ModelSpec::Mlp { hidden: vec![8] },
        &[1, 2],
        &data.sample_shape,
        10,
        Device::Cpu,
    )
    .unwrap();
    let cases = [
        (vec![vec![0, 1]], "1 subsets for 2 members"),
        (vec![vec![0, 1], vec![2]], "equal subset sizes"),
        (vec![vec![0, 1], vec![2, 512]], "outside the training split"),
        (vec![vec![], vec![]], "empty"),
    ];
    for (subsets, expected) in cases {
        let message = train(&mut model, &data, &subsets, &short_recipe(1), &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(message.contains(expected), "{message}");
    }
}

#[test]
fn margins_match_a_hand_computation() {
    let logits = Tensor::from_slice(&[2.0f32, 1.0, 0.0, 0.0, 3.0, 1.0]).view([1, 2, 3]);
    let labels = Tensor::from_slice(&[0i64, 2]);
    let computed = Vec::<f32>::try_from(margins(&logits, &labels).view([-1])).unwrap();
    let first = 2.0 - (1.0f32.exp() + 0.0f32.exp()).ln();
    let second = 1.0 - (0.0f32.exp() + 3.0f32.exp()).ln();
    assert!(
        (computed[0] - first).abs() < 1e-6 && (computed[1] - second).abs() < 1e-6,
        "{computed:?}"
    );
}
