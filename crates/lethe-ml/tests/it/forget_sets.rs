//! The forget-set suite: every family draws a deterministic set of the asked size, the
//! families keep their promises, and bad specs are errors.

use lethe_ml::data::Dataset;
use lethe_ml::forget_sets::{draw, indices_hash, Family, ForgetSetSpec, Split, SUITE};
use lethe_ml::model::{Model, ModelSpec};
use tch::{Device, Kind};

use crate::support::fmnist_tiny;

fn mlp(data: &Dataset) -> Model {
    Model::new(
        &ModelSpec::Mlp { hidden: vec![32] },
        &[5],
        &data.sample_shape,
        data.num_classes,
        Device::Cpu,
    )
    .unwrap()
}

fn train_labels(data: &Dataset) -> Vec<i64> {
    Vec::<i64>::try_from(data.y.narrow(0, 0, data.num_train).to_kind(Kind::Int64)).unwrap()
}

#[test]
fn every_family_draws_the_same_distinct_training_examples_from_the_same_seed() {
    let data = fmnist_tiny();
    let mut model = mlp(&data);
    for family in Family::ALL {
        let spec = ForgetSetSpec::new(family, 3, 20);
        let first = draw(&spec, &data, Some(&mut model)).unwrap();
        let again = draw(&spec, &data, Some(&mut model)).unwrap();
        assert_eq!(first, again, "{family} is not a function of its spec");
        assert_eq!(first.indices.len(), 20, "{family}");
        assert!(
            first.indices.windows(2).all(|pair| pair[0] < pair[1]),
            "{family}: sorted, distinct"
        );
        assert!(
            first
                .indices
                .iter()
                .all(|i| (0..data.num_train).contains(i)),
            "{family}"
        );
        assert_eq!(first.hash(), indices_hash(&first.indices));
        let other = draw(&ForgetSetSpec::new(family, 4, 20), &data, Some(&mut model)).unwrap();
        assert_ne!(
            first.indices, other.indices,
            "{family}: another seed, another set"
        );
    }
}

#[test]
fn families_keep_their_promises() {
    let data = fmnist_tiny();
    let labels = train_labels(&data);
    let mut model = mlp(&data);
    let anchored = ForgetSetSpec {
        anchor: Some(17),
        ..ForgetSetSpec::new(Family::InputNeighbours, 0, 10)
    };
    let cluster = draw(&anchored, &data, None).unwrap();
    assert!(
        cluster.indices.contains(&17),
        "the anchor is its own nearest neighbour"
    );
    assert_eq!(cluster.anchors, vec![17]);

    for family in [Family::ClassRandom, Family::ClassAtypical] {
        let spec = ForgetSetSpec {
            class: Some(2),
            ..ForgetSetSpec::new(family, 1, 15)
        };
        let slice = draw(&spec, &data, Some(&mut model)).unwrap();
        assert_eq!(slice.class, Some(2));
        assert!(
            slice.indices.iter().all(|i| labels[*i as usize] == 2),
            "{family}"
        );
    }

    let union = draw(
        &ForgetSetSpec::new(Family::ClusterUnion, 2, 20),
        &data,
        None,
    )
    .unwrap();
    assert_eq!(union.anchors.len(), 5);
    assert!(union
        .anchors
        .iter()
        .all(|anchor| union.indices.contains(anchor)));
}

#[test]
fn bad_specs_are_errors_that_say_why() {
    let data = fmnist_tiny();
    let message = |spec: ForgetSetSpec| draw(&spec, &data, None).unwrap_err().to_string();
    assert!(message(ForgetSetSpec::new(Family::Random, 0, 0)).contains("size 0"));
    assert!(message(ForgetSetSpec::new(Family::Random, 0, 512)).contains("training split"));
    assert!(message(ForgetSetSpec::new(Family::HighLoss, 0, 10)).contains("deployed model"));
    let far = ForgetSetSpec {
        anchor: Some(10_000),
        ..ForgetSetSpec::new(Family::InputNeighbours, 0, 10)
    };
    assert!(message(far).contains("anchor 10000"));
    let class = ForgetSetSpec {
        class: Some(10),
        ..ForgetSetSpec::new(Family::ClassRandom, 0, 10)
    };
    assert!(message(class).contains("class 10"));
    let crowded = ForgetSetSpec {
        class: Some(0),
        ..ForgetSetSpec::new(Family::ClassRandom, 0, 200)
    };
    assert!(message(crowded).contains("fewer than 200"));
    assert!("input-neighbours".parse::<Family>().is_ok());
    assert!("nearby"
        .parse::<Family>()
        .unwrap_err()
        .to_string()
        .contains("input_neighbours"));
}

#[test]
fn the_suite_reports_every_family_on_instances_it_does_not_tune_on() {
    for family in Family::ALL {
        let of = |split| {
            SUITE
                .iter()
                .filter(|i| i.family == family && i.split == split)
                .count()
        };
        assert!(of(Split::Tuning) >= 1, "{family}");
        assert!(of(Split::Reporting) >= 2, "{family}");
    }
    let mut names: Vec<String> = SUITE.iter().map(|i| i.name()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), SUITE.len(), "instance names are unique");
    // The two sets the earlier defaults were tuned on may never be reported.
    for tuned in ["random/7", "input_neighbours/0"] {
        let instance = SUITE.iter().find(|i| i.name() == tuned).unwrap();
        assert_eq!(instance.split, Split::Tuning, "{tuned}");
    }
}
