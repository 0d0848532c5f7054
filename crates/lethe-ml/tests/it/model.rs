use lethe_ml::model::{Model, ModelSpec};
use tch::{Device, Kind, Tensor};

#[test]
fn every_zoo_model_maps_member_batches_to_logits() {
    let cases = [
        ("mlp:32,16", vec![1, 28, 28]),
        ("cnn", vec![1, 28, 28]),
        ("resnet9", vec![3, 32, 32]),
        ("resnet18", vec![3, 32, 32]),
    ];
    for (name, shape) in cases {
        let spec: ModelSpec = name.parse().unwrap();
        let mut model = Model::new(&spec, &[1, 2], &shape, 10, Device::Cpu).unwrap();
        let mut input_shape = vec![2, 3];
        input_shape.extend_from_slice(&shape);
        let logits = model
            .forward(
                &Tensor::rand(input_shape.as_slice(), (Kind::Float, Device::Cpu)),
                true,
            )
            .unwrap();
        assert_eq!(logits.size(), vec![2, 3, 10], "{name}");
    }
}

#[test]
fn resnet9_has_the_papers_parameter_count() {
    let model = Model::new(&ModelSpec::Resnet9, &[0], &[3, 32, 32], 10, Device::Cpu).unwrap();
    assert_eq!(model.parameters_per_member(), 2_274_880);
    let mlp = Model::new(
        &"mlp:128".parse().unwrap(),
        &[0, 1, 2],
        &[1, 28, 28],
        10,
        Device::Cpu,
    )
    .unwrap();
    assert_eq!(mlp.parameters_per_member(), 784 * 128 + 128 + 128 * 10 + 10);
}

#[test]
fn members_are_initialised_from_their_own_seed_only() {
    let spec: ModelSpec = "cnn".parse().unwrap();
    let alone = Model::new(&spec, &[42], &[1, 28, 28], 10, Device::Cpu).unwrap();
    let inside = Model::new(&spec, &[7, 42, 9], &[1, 28, 28], 10, Device::Cpu).unwrap();
    for ((name, a), (_, b)) in alone
        .member_state(0)
        .iter()
        .zip(inside.member_state(1).iter())
    {
        assert!(a.equal(b), "{name} differs");
    }
    let other = inside.member_state(0);
    assert!(!other[0].1.equal(&alone.member_state(0)[0].1));
}

#[test]
fn architectures_that_do_not_fit_the_data_are_rejected_with_a_reason() {
    let error = Model::new(&ModelSpec::SmallCnn, &[0], &[784], 10, Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("needs images"), "{error}");
    let error = Model::new(&ModelSpec::Resnet9, &[0], &[3, 10, 10], 10, Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("at least 12×12"), "{error}");
    for bad in ["mlp:0", "mlp:abc", "vgg", "torchscript:"] {
        assert!(bad.parse::<ModelSpec>().is_err(), "{bad} should not parse");
    }
    let error = Model::new(
        &"torchscript:/nonexistent.pt".parse().unwrap(),
        &[0],
        &[1, 28, 28],
        10,
        Device::Cpu,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(error.contains("/nonexistent.pt"), "{error}");
}

/// The two convolution layouts are one network: the same logits, the same batch-norm running
/// statistics and the same gradients, member by member, up to float32 rounding of sums taken
/// in another order (a wrong member's weights would differ by O(1)). ResNet-18 gets images
/// large enough that its last batch norms normalise more than one value per sample.
#[test]
fn grouped_and_per_member_convolutions_compute_the_same_network() {
    use lethe_ml::model::ConvLayout;
    let cases = [
        ("cnn", vec![1, 12, 12]),
        ("resnet9", vec![3, 16, 16]),
        ("resnet18", vec![3, 64, 64]),
    ];
    for (name, shape) in cases {
        let spec: ModelSpec = name.parse().unwrap();
        let mut input_shape = vec![3, 4];
        input_shape.extend_from_slice(&shape);
        tch::manual_seed(3);
        let x = Tensor::rand(input_shape.as_slice(), (Kind::Float, Device::Cpu));
        let run = |layout: ConvLayout| {
            let mut model = Model::new(&spec, &[1, 2, 3], &shape, 10, Device::Cpu).unwrap();
            assert!(model.set_conv_layout(layout), "{name} has convolutions");
            let logits = model.forward(&x, true).unwrap();
            logits.square().sum(Kind::Float).backward();
            let eval = tch::no_grad(|| model.forward(&x, false).unwrap());
            let mut grads: Vec<(String, Tensor)> = model
                .vars
                .variables()
                .into_iter()
                .map(|(name, tensor)| {
                    let grad = tensor.grad();
                    let value = if grad.defined() {
                        grad
                    } else {
                        tensor.detach()
                    };
                    (name, value)
                })
                .collect();
            grads.sort_by(|a, b| a.0.cmp(&b.0));
            (logits.detach(), eval, grads)
        };
        let (grouped_logits, grouped_eval, grouped_grads) = run(ConvLayout::Grouped);
        let (member_logits, member_eval, member_grads) = run(ConvLayout::PerMember);
        let relative = |a: &Tensor, b: &Tensor| {
            (a - b).norm().double_value(&[]) / (1e-6 + b.norm().double_value(&[]))
        };
        let close = |a: &Tensor, b: &Tensor| relative(a, b) <= 1e-4;
        // A batch-norm bias's gradient is a sum that nearly cancels (the next batch norm
        // removes any shift), so its rounding is measured against the largest gradient; and
        // ResNet-18's twenty training-mode batch norms leave differences up to 2e-3 of it,
        // depending on libtorch's thread count (a wrong member's weights would differ by O(1)).
        let tolerance = if name == "resnet18" { 1e-2 } else { 1e-4 };
        let largest = member_grads
            .iter()
            .map(|(_, g)| g.norm().double_value(&[]))
            .fold(0.0, f64::max);
        assert!(
            close(&grouped_logits, &member_logits),
            "{name}: training logits differ"
        );
        assert!(
            close(&grouped_eval, &member_eval),
            "{name}: running statistics differ"
        );
        for ((param, a), (_, b)) in grouped_grads.iter().zip(&member_grads) {
            let difference = (a - b).norm().double_value(&[]);
            assert!(
                difference <= tolerance * largest.max(b.norm().double_value(&[])),
                "{name}: gradient or buffer of {param} differs by {difference:.1e} (largest gradient {largest:.1e})"
            );
        }
    }
}
