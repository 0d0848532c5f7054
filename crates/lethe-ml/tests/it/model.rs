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
    let error = Model::new(&ModelSpec::Resnet9, &[0], &[3, 4, 4], 10, Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("at least 8×8"), "{error}");
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
