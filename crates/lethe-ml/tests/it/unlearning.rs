//! Unlearning methods and the KLoM audit.

use std::collections::BTreeMap;
use std::path::Path;

use lethe_ml::attribution::beta_file::{BetaShape, BetaWriter};
use lethe_ml::attribution::{build_index, Estimator};
use lethe_ml::audit::{audit, klom, percentile, Splits};
use lethe_ml::checkpoint::{self, CheckpointInfo};
use lethe_ml::data::Dataset;
use lethe_ml::ensemble::{load_members, run_ensemble, EnsembleResults, EnsembleSpec};
use lethe_ml::model::Model;
use lethe_ml::outputs::{margins, Outputs};
use lethe_ml::recipe::Recipe;
use lethe_ml::tensorio::write_safetensors;
use lethe_ml::unlearn::finetune::{GradientConfig, ScrubConfig};
use lethe_ml::unlearn::lineage::{unlearn_version, Lineage};
use lethe_ml::unlearn::targets::{
    dmm_targets, predicted_shift, AttributionIndex, Denoise, IndexNoise,
};
use lethe_ml::unlearn::{parse_indices, unlearn, ForgetSet, Method, MethodConfig, Resources};
use tch::{Device, Kind, Tensor};

use crate::attribution::tiny_subset_ensemble;

fn klom_of(unlearned: &[f64], oracles: &[f64]) -> f64 {
    let column = |values: &[f64]| Tensor::from_slice(values).view([-1, 1]);
    klom(&column(unlearned), &column(oracles))
        .unwrap()
        .double_value(&[0])
}

#[test]
fn klom_matches_hand_computed_cases() {
    assert_eq!(klom_of(&[1.0, 2.0, 3.0], &[3.0, 1.0, 2.0]), 0.0);
    assert_eq!(klom_of(&[5.0, 5.0], &[5.0, 5.0, 5.0]), 0.0);
    // Disjoint supports: all unlearned mass on a bin the oracles floor at 1e-5.
    let disjoint = klom_of(&[0.0, 0.0], &[1.0, 1.0]);
    assert!((disjoint - (1.0f64 + 1e5).ln()).abs() < 1e-9, "{disjoint}");
    assert!((disjoint - 11.5129).abs() < 1e-4);
    // The maximum falls in the last, closed bin: unlearned all at 10, oracles half at 0 and
    // half at 10 → KL = ln 2. Dropping the maximum would leave nothing to compare.
    let top = klom_of(&[10.0, 10.0], &[0.0, 10.0]);
    assert!((top - 2f64.ln()).abs() < 1e-12, "{top}");
    // Bins of width 0.15 over [0, 3]: 0 → bin 0, 1 → 6, 2 → 13, 3 → 19; oracles floored in
    // bins 6 and 13, then renormalised.
    let mixed = klom_of(&[0.0, 1.0, 2.0, 3.0], &[0.0, 0.0, 3.0, 3.0]);
    let total = 1.0 + 2e-5;
    let expected = 0.5 * (0.25f64 / (0.5 / total)).ln() + 0.5 * (0.25f64 / (1e-5 / total)).ln();
    assert!((mixed - expected).abs() < 1e-12, "{mixed} vs {expected}");
    // Margins are clipped to ±100 before binning.
    assert_eq!(klom_of(&[150.0, 400.0], &[100.0, 100.0]), 0.0);
}

#[test]
fn percentiles_interpolate_like_numpy() {
    let values: Vec<f64> = (0..=10).map(f64::from).collect();
    assert_eq!(percentile(&values, 95.0), 9.5);
    assert_eq!(percentile(&[3.0, 1.0, 2.0, 4.0], 50.0), 2.5);
    assert_eq!(percentile(&[7.0], 99.0), 7.0);
}

/// A synthetic index: β (float16 on disk) and a noise model beside it.
fn synthetic_index(
    dir: &Path,
    sources: i64,
    targets: i64,
    classes: i64,
) -> (Tensor, Tensor, Tensor) {
    tch::manual_seed(3);
    let beta = Tensor::randn([sources, targets, classes], (Kind::Float, Device::Cpu));
    let path = dir.join("beta.safetensors");
    let shape = BetaShape {
        sources,
        targets,
        classes,
    };
    let mut writer = BetaWriter::create_or_resume(&path, shape, &BTreeMap::new()).unwrap();
    writer.append_rows(&beta).unwrap();
    writer.finish().unwrap();
    let target_std = Tensor::rand([targets, classes], (Kind::Float, Device::Cpu)) + 0.5;
    let weight_sq = Tensor::rand([sources], (Kind::Float, Device::Cpu)) * 2.0;
    write_safetensors(
        &IndexNoise::path_for(&path),
        &[
            ("target_std".to_owned(), target_std.shallow_clone()),
            ("source_weight_sq".to_owned(), weight_sq.shallow_clone()),
            (
                "target_labels".to_owned(),
                Tensor::arange(targets, (Kind::Int64, Device::Cpu)).remainder(3),
            ),
        ],
        &BTreeMap::new(),
    )
    .unwrap();
    (
        beta.to_kind(Kind::Half).to_kind(Kind::Float),
        target_std,
        weight_sq,
    )
}

#[test]
fn dmm_targets_match_a_dense_computation() {
    let dir = tempfile::tempdir().unwrap();
    let (sources, targets, classes) = (12, 30, 4);
    let (beta, target_std, weight_sq) = synthetic_index(dir.path(), sources, targets, classes);
    let index = AttributionIndex::open(&dir.path().join("beta.safetensors")).unwrap();
    let forget = ForgetSet::new(vec![7, 2, 9], sources).unwrap();
    let mut dense = Tensor::zeros([targets, classes], (Kind::Float, Device::Cpu));
    for source in forget.indices() {
        dense += beta.get(*source);
    }
    let shift = predicted_shift(&index, &forget, Denoise::None).unwrap();
    assert!(shift.allclose(&dense, 1e-5, 1e-5, false));

    // ŷ = anchor − m·Σβ on the requested examples, for every member.
    let examples = [2i64, 7, 20, 20, 29];
    let anchor = Tensor::randn(
        [3, examples.len() as i64, classes],
        (Kind::Float, Device::Cpu),
    );
    let wanted = dmm_targets(&anchor, &shift, 0.5, &examples).unwrap();
    for (position, example) in examples.iter().enumerate() {
        let expected = anchor.select(1, position as i64) - dense.get(*example).unsqueeze(0) * 0.5;
        assert!(wanted
            .select(1, position as i64)
            .allclose(&expected, 1e-6, 1e-6, false));
    }

    // Hard denoising, written out in f64: a target outside F keeps its sum when the RMS
    // z-score passes the threshold; a forget point keeps its own term, plus its cross terms
    // (less the mean shift of the targets outside F with the same label) pooled towards their
    // mean over F.
    let z = 1.0;
    let value = |tensor: &Tensor, row: i64, class: i64| tensor.double_value(&[row, class]);
    let weights: Vec<f64> = (0..sources)
        .map(|source| weight_sq.double_value(&[source]))
        .collect();
    let total: f64 = forget.indices().iter().map(|i| weights[*i as usize]).sum();
    let hard = predicted_shift(&index, &forget, Denoise::Hard { z }).unwrap();
    let outside: Vec<i64> = (0..targets)
        .filter(|target| !forget.contains(*target))
        .collect();
    let (mut kept, mut dropped) = (0, 0);
    for target in &outside {
        let score = ((0..classes)
            .map(|c| {
                (value(&dense, *target, c) / (value(&target_std, *target, c) * total.sqrt()))
                    .powi(2)
            })
            .sum::<f64>()
            / classes as f64)
            .sqrt();
        let keep = score > z;
        for c in 0..classes {
            let expected = if keep { value(&dense, *target, c) } else { 0.0 };
            assert!(
                (value(&hard, *target, c) - expected).abs() < 1e-4,
                "target {target}"
            );
        }
        if keep {
            kept += 1
        } else {
            dropped += 1
        }
    }
    assert!(
        kept > 3 && dropped > 3,
        "the case exercises both branches ({kept} kept, {dropped} dropped)"
    );
    let own = |x: i64, c: i64| beta.double_value(&[x, x, c]);
    // The shared part is measured per label (target t has label t mod 3).
    let common = |x: i64, c: i64| {
        let same: Vec<&i64> = outside.iter().filter(|t| *t % 3 == x % 3).collect();
        same.iter().map(|t| value(&dense, **t, c)).sum::<f64>() / same.len() as f64
    };
    for c in 0..classes {
        let cross: Vec<f64> = forget
            .indices()
            .iter()
            .map(|x| value(&dense, *x, c) - own(*x, c) - common(*x, c))
            .collect();
        let variance: Vec<f64> = forget
            .indices()
            .iter()
            .map(|x| value(&target_std, *x, c).powi(2) * (total - weights[*x as usize]))
            .collect();
        let mean = cross.iter().sum::<f64>() / cross.len() as f64;
        let signal = (cross.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / cross.len() as f64
            - variance.iter().sum::<f64>() / variance.len() as f64)
            .max(0.0);
        for (k, x) in forget.indices().iter().enumerate() {
            let expected = own(*x, c) + mean + (cross[k] - mean) * signal / (signal + variance[k]);
            assert!(
                (value(&hard, *x, c) - expected).abs() < 1e-4,
                "forget point {x}, class {c}"
            );
        }
    }
    assert!(predicted_shift(&index, &forget, Denoise::Soft { z: -1.0 }).is_err());
}

fn tiny_mlp() -> lethe_ml::model::ModelSpec {
    "mlp:64".parse().unwrap()
}

fn tiny_recipe() -> Recipe {
    Recipe {
        epochs: 8,
        batch_size: 64,
        ..Recipe::fmnist_mlp()
    }
}

/// `members` models of the tiny MLP on the whole of fmnist-tiny minus `exclude`.
fn full_ensemble(
    data: &Dataset,
    dir: &Path,
    members: usize,
    base_seed: u64,
    exclude: &[i64],
) -> EnsembleResults {
    let spec = EnsembleSpec {
        model: tiny_mlp(),
        recipe: tiny_recipe(),
        members,
        alpha: 1.0,
        base_seed,
        group_size: 16,
        exclude: exclude.to_vec(),
        keep_weights: exclude.is_empty(),
    };
    run_ensemble(&spec, data, dir, Device::Cpu, &mut |_| {}).unwrap();
    EnsembleResults::load(dir).unwrap()
}

fn weights(model: &Model) -> Vec<Tensor> {
    let mut variables: Vec<(String, Tensor)> = model.vars.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    variables
        .into_iter()
        .map(|(_, tensor)| tensor.detach().copy())
        .collect()
}

fn same(a: &[Tensor], b: &[Tensor]) -> bool {
    a.iter().zip(b).all(|(a, b)| a.equal(b))
}

fn tiny_index(dir: &Path) -> (Dataset, AttributionIndex) {
    let (data, _, ensemble) = tiny_subset_ensemble(&dir.join("subsets"));
    let path = dir.join("beta.safetensors");
    build_index(&ensemble, 0..128, Estimator::Subsample, &path, &mut |_| {
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    (data, AttributionIndex::open(&path).unwrap())
}

#[test]
fn every_method_is_deterministic_for_a_seed_and_depends_on_it() {
    let dir = tempfile::tempdir().unwrap();
    let (data, index) = tiny_index(dir.path());
    full_ensemble(&data, &dir.path().join("originals"), 2, 5, &[]);
    let originals = load_members(&dir.path().join("originals"), &data, Device::Cpu).unwrap();
    let forget = ForgetSet::new((0..20).map(|i| i * 7).collect(), data.num_train).unwrap();
    let oracle_logits = Tensor::randn([data.num_targets(), 10], (Kind::Float, Device::Cpu));
    let resources = Resources {
        index: Some(&index),
        oracle_logits: Some(&oracle_logits),
        ..Resources::new(&data)
    };
    let small = GradientConfig {
        lr: 1e-3,
        epochs: 1,
        batch_size: 8,
        momentum: 0.9,
        weight_decay: 5e-4,
    };
    let configs = [
        MethodConfig::defaults(Method::Dmm, &tiny_mlp(), &tiny_recipe()),
        MethodConfig::defaults(Method::Om, &tiny_mlp(), &tiny_recipe()),
        MethodConfig::Ga(small.clone()),
        MethodConfig::Gd(GradientConfig {
            batch_size: 64,
            ..small
        }),
        MethodConfig::Scrub(ScrubConfig {
            epochs: 2,
            max_epochs: 1,
            ..ScrubConfig::paper()
        }),
        MethodConfig::Retrain {
            recipe: Recipe {
                epochs: 1,
                ..tiny_recipe()
            },
        },
    ];
    let before = weights(&originals);
    for config in &configs {
        let run = |seed: u64| {
            let mut model = originals.try_clone().unwrap();
            unlearn(&mut model, config, &forget, &resources, seed).unwrap();
            weights(&model)
        };
        let first = run(1);
        assert!(same(&first, &run(1)), "{config:?} is not deterministic");
        assert!(!same(&first, &run(2)), "{config:?} ignores its seed");
        // SCRUB included: a public re-implementation optimised the teacher's weights and
        // returned the untouched student.
        assert!(!same(&first, &before), "{config:?} changed nothing");
    }
    let mut untouched = originals.try_clone().unwrap();
    unlearn(
        &mut untouched,
        &MethodConfig::DoNothing,
        &forget,
        &resources,
        1,
    )
    .unwrap();
    assert!(same(&weights(&untouched), &before));
}

#[test]
fn sequential_requests_anchor_at_the_first_version_and_record_the_lineage() {
    let dir = tempfile::tempdir().unwrap();
    let (data, index) = tiny_index(dir.path());
    full_ensemble(&data, &dir.path().join("originals"), 1, 9, &[]);
    let mut base = load_members(&dir.path().join("originals"), &data, Device::Cpu).unwrap();
    let resources = Resources {
        index: Some(&index),
        ..Resources::new(&data)
    };
    let config = MethodConfig::defaults(Method::Dmm, &tiny_mlp(), &tiny_recipe());
    let first = ForgetSet::new(vec![3, 40, 41], data.num_train).unwrap();
    let second = ForgetSet::new(vec![41, 100, 200], data.num_train).unwrap();

    let mut version = base.try_clone().unwrap();
    let (lineage, _) = unlearn_version(
        &mut version,
        &mut base,
        &Lineage::start("θ0"),
        &first,
        &config,
        &resources,
        1,
    )
    .unwrap();
    assert_eq!(
        (lineage.version, lineage.forgotten.as_slice()),
        (1, first.indices())
    );
    let after_first = version.try_clone().unwrap();
    let (lineage, _) = unlearn_version(
        &mut version,
        &mut base,
        &lineage,
        &second,
        &config,
        &resources,
        2,
    )
    .unwrap();
    assert_eq!(lineage.version, 2);
    assert_eq!(lineage.forgotten, vec![3, 40, 41, 100, 200]);
    assert_eq!(lineage.requests.len(), 2);
    assert_eq!(lineage.requests[1].forget, second.indices());

    // The second request is DMM for the union, anchored at θ0's outputs, starting from v1.
    let targets: Vec<i64> = (0..data.num_targets()).collect();
    let anchor = Outputs::compute(&mut base, &data, &targets).unwrap().logits;
    let mut expected = after_first;
    let union = ForgetSet::new(lineage.forgotten.clone(), data.num_train).unwrap();
    let anchored = Resources {
        anchor_logits: Some(&anchor),
        ..Resources::new(&data)
    };
    let anchored = Resources {
        index: Some(&index),
        ..anchored
    };
    unlearn(&mut expected, &config, &union, &anchored, 2).unwrap();
    assert!(same(&weights(&expected), &weights(&version)));

    // The lineage travels with the checkpoint.
    let info = CheckpointInfo {
        model: version.spec.clone(),
        sample_shape: data.sample_shape.clone(),
        num_classes: data.num_classes,
        seed: version.member_seeds[0],
        dataset_hash: Some(data.content_hash.clone()),
        recipe: Some(tiny_recipe()),
        lineage: Some(lineage.clone()),
    };
    let path = dir.path().join("v2.safetensors");
    checkpoint::save_member(&version, 0, &info, &path).unwrap();
    assert_eq!(
        checkpoint::load(&path, Device::Cpu).unwrap().1.lineage,
        Some(lineage)
    );
}

#[test]
fn dmm_forgets_on_fmnist_tiny_where_doing_nothing_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let (data, index) = tiny_index(dir.path());
    let forget = ForgetSet::new((0..24).map(|i| i * 21 + 4).collect(), data.num_train).unwrap();
    let originals_results = full_ensemble(&data, &dir.path().join("originals"), 16, 31, &[]);
    let oracles = full_ensemble(&data, &dir.path().join("oracles"), 16, 47, forget.indices());
    let labels = data.y.shallow_clone();
    let reference = margins(&oracles.logits.to_kind(Kind::Float), &labels);
    let splits = Splits::new(forget.indices(), data.num_train, data.num_val);
    let do_nothing = audit(
        &originals_results.logits.to_kind(Kind::Float),
        &labels,
        &reference,
        &splits,
    )
    .unwrap();

    let mut models = load_members(&dir.path().join("originals"), &data, Device::Cpu).unwrap();
    let resources = Resources {
        index: Some(&index),
        ..Resources::new(&data)
    };
    unlearn(
        &mut models,
        &MethodConfig::defaults(Method::Dmm, &tiny_mlp(), &tiny_recipe()),
        &forget,
        &resources,
        0,
    )
    .unwrap();
    let targets: Vec<i64> = (0..data.num_targets()).collect();
    let logits = Outputs::compute(&mut models, &data, &targets)
        .unwrap()
        .logits;
    let dmm = audit(&logits, &labels, &reference, &splits).unwrap();
    assert_eq!((dmm.models, dmm.oracles), (16, 16));
    assert!(
        dmm.forget.klom.p95 < do_nothing.forget.klom.p95,
        "DMM forget P95 {} is not below do-nothing's {}",
        dmm.forget.klom.p95,
        do_nothing.forget.klom.p95
    );
}

#[test]
fn forget_sets_are_parsed_and_checked() {
    let text = "# two on a line\n17, 2041\n9000 # trailing comment\n\n3";
    assert_eq!(parse_indices(text).unwrap(), vec![17, 2041, 9000, 3]);
    let error = parse_indices("17, x").unwrap_err().to_string();
    assert!(error.contains("line 1") && error.contains("`x`"), "{error}");
    let set = ForgetSet::new(vec![9, 2, 5], 10).unwrap();
    assert_eq!(set.indices(), &[2, 5, 9]);
    assert_eq!(set.retained(10), vec![0, 1, 3, 4, 6, 7, 8]);
    assert_eq!(
        set.union(&ForgetSet::new(vec![5, 1], 10).unwrap())
            .indices(),
        &[1, 2, 5, 9]
    );
    for (indices, expected) in [
        (vec![], "is empty"),
        (vec![3, 3], "appears more than once"),
        (vec![10], "outside the training split 0..10"),
        (vec![-1], "outside the training split"),
        ((0..10).collect(), "nothing would be left"),
    ] {
        let error = ForgetSet::new(indices, 10).unwrap_err().to_string();
        assert!(error.contains(expected), "{error}");
    }
    assert_eq!("do-nothing".parse::<Method>().unwrap(), Method::DoNothing);
    assert_eq!("SCRUB".parse::<Method>().unwrap(), Method::Scrub);
    assert!("forget-harder".parse::<Method>().is_err());
}

#[test]
fn confidence_falls_as_the_targets_reach_beyond_the_index_variation() {
    use lethe_ml::unlearn::confidence::target_confidence;
    let (targets, classes) = (40, 4);
    let noise = IndexNoise {
        target_std: Tensor::full([targets, classes], 0.5, (Kind::Float, Device::Cpu)),
        source_weight_sq: Tensor::ones([30], (Kind::Float, Device::Cpu)),
        target_labels: None,
    };
    let forget = ForgetSet::new(vec![1, 2, 3], 30).unwrap();
    // A shift of one σ at the forget set, none elsewhere: reach 1 at every moved target.
    let shift = Tensor::zeros([targets, classes], (Kind::Float, Device::Cpu));
    let _ = shift.narrow(0, 1, 3).fill_(0.5);
    let within = target_confidence(&noise, &shift, 1.0, &forget).unwrap();
    assert_eq!(within.moved_targets, 3);
    assert!((within.reach_p95 - 1.0).abs() < 1e-6, "{within:?}");
    assert!((within.confidence - 0.5).abs() < 1e-6, "{within:?}");
    // The multiplier scales the reach; a kept shift outside F counts as a moved target.
    let _ = shift.narrow(0, 20, 1).fill_(2.0);
    let beyond = target_confidence(&noise, &shift, 0.5, &forget).unwrap();
    assert_eq!(beyond.moved_targets, 4);
    assert!(beyond.reach_p95 > within.reach_p95 && beyond.confidence < within.confidence);
    // Nothing moved beyond noise: full confidence.
    let still = Tensor::zeros([targets, classes], (Kind::Float, Device::Cpu));
    assert_eq!(
        target_confidence(&noise, &still, 1.0, &forget)
            .unwrap()
            .confidence,
        1.0
    );
    let wrong = Tensor::zeros([targets, classes + 1], (Kind::Float, Device::Cpu));
    assert!(target_confidence(&noise, &wrong, 1.0, &forget).is_err());
}
