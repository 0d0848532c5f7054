//! The two historical forget sets (`forget_sets` of `quality.json`): the baselines over small
//! grids, reported at the one setting per method that is harmless on both sets and closes the
//! most gap on average, as a deployment would have to choose; DMM and OM with five request
//! seeds; and DMM's ablation. Both sets are tuning instances of the suite: the grids choose
//! settings here, so these figures are in-sample.

use std::collections::BTreeMap;

use lethe_ml::recipe::Recipe;
use lethe_ml::unlearn::finetune::{GradientConfig, MatchingConfig, ScrubConfig};
use lethe_ml::unlearn::targets::Denoise;
use lethe_ml::unlearn::{Method, MethodConfig};
use serde_json::{json, Map, Value};
use tch::Tensor;

use crate::measure::{audit_json, runs_on_few, seeds_for, Bench, MethodRun, REQUEST_SEEDS};
use crate::suite::SuiteInstance;

pub(crate) struct Tuned {
    pub(crate) sets: Value,
    pub(crate) info: Value,
    pub(crate) ablation: Value,
    pub(crate) per_point: Vec<(String, Tensor)>,
    pub(crate) retrain_examples: usize,
}

/// The settings each method is run with: grids for the baselines, the shipped defaults for
/// DMM and OM.
fn candidate_configs(method: Method) -> Vec<MethodConfig> {
    let sgd = |lr: f64| GradientConfig {
        lr,
        epochs: 3,
        batch_size: 64,
        momentum: 0.9,
        weight_decay: 5e-4,
    };
    match method {
        Method::Ga => [1e-4, 3e-4, 1e-3, 3e-3]
            .into_iter()
            .map(|lr| MethodConfig::Ga(sgd(lr)))
            .collect(),
        Method::Gd => [1e-3, 1e-2, 3e-2]
            .into_iter()
            .map(|lr| MethodConfig::Gd(sgd(lr)))
            .collect(),
        Method::Scrub => [1e-3, 1e-2]
            .into_iter()
            .map(|lr| {
                MethodConfig::Scrub(ScrubConfig {
                    lr,
                    ..ScrubConfig::paper()
                })
            })
            .collect(),
        other => vec![MethodConfig::defaults(
            other,
            &crate::measure::bench_model(),
            &Recipe::fmnist_mlp(),
        )],
    }
}

/// DMM with one shipped choice undone at a time, and the DMM paper's configuration.
fn dmm_ablation() -> Vec<(&'static str, MethodConfig)> {
    let MethodConfig::Dmm {
        matching,
        denoise,
        multiplier,
    } = MethodConfig::defaults(
        Method::Dmm,
        &crate::measure::bench_model(),
        &Recipe::fmnist_mlp(),
    )
    else {
        unreachable!("DMM's defaults are a DMM configuration")
    };
    let dmm = |matching: MatchingConfig, denoise: Denoise, multiplier: f64| MethodConfig::Dmm {
        matching,
        denoise,
        multiplier,
    };
    vec![
        ("paper", dmm(MatchingConfig::paper(), Denoise::None, 1.0)),
        (
            "no_denoising",
            dmm(matching.clone(), Denoise::None, multiplier),
        ),
        ("multiplier_1", dmm(matching.clone(), denoise, 1.0)),
        (
            "no_head_refit",
            dmm(
                MatchingConfig {
                    head_penalty: None,
                    ..matching.clone()
                },
                denoise,
                multiplier,
            ),
        ),
        (
            "paper_fine_tune",
            dmm(MatchingConfig::paper(), denoise, multiplier),
        ),
    ]
}

/// One method setting run on one set.
struct Candidate {
    set: &'static str,
    config: MethodConfig,
    run: MethodRun,
    closure: f64,
    harmless: bool,
}

/// `historical` names each set and the suite instance it is.
pub(crate) fn run(
    bench: &Bench,
    instances: &[SuiteInstance],
    historical: &[(&'static str, &str)],
) -> Tuned {
    let sets: Vec<(&'static str, &SuiteInstance)> = historical
        .iter()
        .map(|(name, instance)| {
            let found = instances
                .iter()
                .find(|candidate| candidate.name == *instance)
                .expect("the historical sets are suite instances");
            (*name, found)
        })
        .collect();
    let mut sets_json = Map::new();
    let mut info_json = Map::new();
    let mut ablation_json = Map::new();
    let mut per_point = Vec::new();
    let forget_size = sets[0].1.measured.forget.len();
    let retrain_examples =
        (bench.data.num_train as usize - forget_size) * Recipe::fmnist_mlp().epochs;
    let mut candidates: BTreeMap<Method, Vec<Candidate>> = BTreeMap::new();
    for (name, instance) in &sets {
        let measured = &instance.measured;
        let mut methods = Map::new();
        for (method, result, note) in [
            ("do_nothing", &measured.do_nothing, "the originals"),
            ("noise_floor", &measured.floor, "held-out oracles"),
        ] {
            let mut entry = audit_json(result);
            entry.insert(
                "gap_closure".into(),
                json!(measured.closure(&measured.do_nothing, result)),
            );
            entry.insert("cost_vs_retrain".into(), json!(0.0));
            entry.insert("note".into(), json!(note));
            methods.insert(method.to_owned(), Value::Object(entry));
            per_point.push((
                format!("{name}/{method}"),
                Tensor::from_slice(&result.per_point),
            ));
        }
        per_point.push((
            format!("{name}/forget"),
            Tensor::from_slice(measured.forget.indices()),
        ));
        for method in [
            Method::Ga,
            Method::Gd,
            Method::Scrub,
            Method::Dmm,
            Method::Om,
        ] {
            for config in candidate_configs(method) {
                let run = bench.run(measured, &config, seeds_for(method, REQUEST_SEEDS.len()));
                let closure = run.closure;
                eprintln!(
                    "{name:>7} {:<6} closure {closure:+.3} {:.3?}  forget {:.3} retain {:.3} val {:.3}  {}",
                    method.name(), run.closure_by_seed, run.mean.forget.klom.p95, run.mean.retain.klom.p95,
                    run.mean.val.klom.p95, serde_json::to_string(&config).expect("config serialises")
                );
                candidates.entry(method).or_default().push(Candidate {
                    set: name,
                    harmless: run.harmless,
                    config,
                    closure,
                    run,
                });
            }
        }
        sets_json.insert((*name).to_owned(), Value::Object(methods));
        info_json.insert(
            (*name).to_owned(),
            json!({"size": measured.forget.len(), "construction": instance.description,
                   "suite_instance": instance.name, "forget_hash": instance.hash,
                   "indices": measured.forget.indices()}),
        );
        let mut ablation = Map::new();
        for (variant, config) in dmm_ablation() {
            let run = bench.run(measured, &config, &REQUEST_SEEDS);
            let closure = run.closure;
            eprintln!(
                "{name:>7} dmm ablation {variant:<16} closure {closure:+.3}  forget {:.3} retain {:.3} val {:.3}",
                run.mean.forget.klom.p95, run.mean.retain.klom.p95, run.mean.val.klom.p95
            );
            ablation.insert(
                variant.to_owned(),
                json!({"gap_closure": closure, "forget_p95": run.mean.forget.klom.p95,
                       "retain_p95": run.mean.retain.klom.p95, "val_p95": run.mean.val.klom.p95, "config": config}),
            );
        }
        ablation_json.insert((*name).to_owned(), Value::Object(ablation));
    }

    for (method, runs) in &candidates {
        let settings = runs.len() / sets.len();
        let score = |setting: usize| {
            let of_setting = runs.iter().skip(setting).step_by(settings);
            let harmless = of_setting.clone().all(|run| run.harmless);
            let mean = of_setting.map(|run| run.closure).sum::<f64>() / sets.len() as f64;
            (harmless, mean)
        };
        let chosen = (0..settings)
            .max_by(|a, b| {
                score(*a)
                    .partial_cmp(&score(*b))
                    .expect("closures are numbers")
            })
            .expect("a setting");
        for (set_index, (name, _)) in sets.iter().enumerate() {
            let candidate = &runs[set_index * settings + chosen];
            let mut entry = audit_json(&candidate.run.mean);
            entry.insert("gap_closure".into(), json!(candidate.closure));
            entry.insert(
                "gap_closure_by_seed".into(),
                json!(candidate.run.closure_by_seed),
            );
            entry.insert(
                "request_seeds".into(),
                json!(&REQUEST_SEEDS[..candidate.run.closure_by_seed.len()]),
            );
            entry.insert(
                "cost_vs_retrain".into(),
                json!(candidate.run.examples_per_model / retrain_examples as f64),
            );
            entry.insert(
                "examples_per_model".into(),
                json!(candidate.run.examples_per_model),
            );
            entry.insert("config".into(), json!(candidate.config));
            entry.insert("models".into(), json!(candidate.run.mean.models));
            if runs_on_few(*method) {
                entry.insert(
                    "do_nothing_same_models".into(),
                    Value::Object(audit_json(&candidate.run.do_nothing)),
                );
            }
            if let Some(confidence) = &candidate.run.confidence {
                entry.insert("confidence".into(), json!(confidence.confidence));
            }
            if settings > 1 {
                let grid: Vec<Value> = runs
                    .iter()
                    .filter(|other| other.set == *name)
                    .map(|other| {
                        json!({
                            "config": other.config, "gap_closure": other.closure, "harmless": other.harmless,
                            "forget_p95": other.run.mean.forget.klom.p95, "retain_p95": other.run.mean.retain.klom.p95,
                            "val_p95": other.run.mean.val.klom.p95,
                        })
                    })
                    .collect();
                entry.insert("grid".into(), Value::Array(grid));
            }
            sets_json[*name][method.name()] = Value::Object(entry);
            per_point.push((
                format!("{name}/{}", method.name()),
                Tensor::from_slice(&candidate.run.mean.per_point),
            ));
        }
    }
    Tuned {
        sets: Value::Object(sets_json),
        info: Value::Object(info_json),
        ablation: Value::Object(ablation_json),
        per_point,
        retrain_examples,
    }
}
