//! `make bench-quality`: unlearning quality (KLoM) and cost on fmnist-bench.
//!
//! N originals trained on the whole training split, N' + H oracles retrained without each forget
//! set (H held out for the noise floor), an attribution index from subset retrains; then every
//! method applied to the N originals at once and audited against the N' oracles. Two forget
//! sets of 100: a random one and a cluster (the training points nearest one training example).
//! GA, GD and SCRUB each run over a small grid and are reported at their best setting, so the
//! comparison flatters the baselines rather than DMM. DMM runs with the shipped defaults, plus
//! an ablation that undoes one choice at a time. Cost: one DMM request on one model against one
//! full retrain, both timed here (medians of repeats).
//!
//! Usage: bench_quality [--estimation-models 2000] [--models 100] [--oracles 100] [--held-out 50]
//!                      [--forget-size 100] [--methods ga,gd,…] [--explore] [--index PATH]
//!                      [--work bench/work/quality] [--out bench/results/quality.json]
//! `--explore` prints DM-direct diagnostics (targets before any fine-tune) for tuning. Trained
//! models are kept in the work directory and reused by later runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use lethe_ml::attribution::{build_index, Estimator};
use lethe_ml::audit::{audit, Audit, KlomStats, SplitAudit, Splits};
use lethe_ml::data::{Dataset, DatasetSpec};
use lethe_ml::ensemble::{load_members, run_ensemble, EnsembleResults, EnsembleSpec};
use lethe_ml::model::{Model, ModelSpec};
use lethe_ml::outputs::{margins, Outputs};
use lethe_ml::recipe::Recipe;
use lethe_ml::tensorio::write_safetensors;
use lethe_ml::unlearn::finetune::{GradientConfig, MatchingConfig, ScrubConfig};
use lethe_ml::unlearn::targets::{predicted_shift, AttributionIndex, Denoise};
use lethe_ml::unlearn::{unlearn, ForgetSet, Method, MethodConfig, Resources};
use rand::seq::index::sample;
use rand::SeedableRng;
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

/// Request seeds; the first is the one every method runs with, DMM and OM run with all.
const REQUEST_SEEDS: [u64; 5] = [42, 0, 1, 2, 3];

struct Options {
    estimation_models: usize,
    models: usize,
    oracles: usize,
    held_out: usize,
    forget_size: usize,
    /// Only these methods (all when empty).
    methods: Vec<Method>,
    explore: bool,
    work: PathBuf,
    out: PathBuf,
    /// An index to use instead of the one built from all estimation models.
    index: Option<PathBuf>,
}

fn options() -> Options {
    let mut options = Options {
        estimation_models: 2000,
        models: 100,
        oracles: 100,
        held_out: 50,
        forget_size: 100,
        methods: Vec::new(),
        explore: false,
        work: PathBuf::from("bench/work/quality"),
        out: PathBuf::from("bench/results/quality.json"),
        index: None,
    };
    let mut raw = std::env::args().skip(1);
    while let Some(flag) = raw.next() {
        if flag == "--explore" {
            options.explore = true;
            continue;
        }
        let value = raw.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        let number = || {
            value
                .parse::<usize>()
                .unwrap_or_else(|_| panic!("{flag} takes a number"))
        };
        match flag.as_str() {
            "--estimation-models" => options.estimation_models = number(),
            "--models" => options.models = number(),
            "--oracles" => options.oracles = number(),
            "--held-out" => options.held_out = number(),
            "--forget-size" => options.forget_size = number(),
            "--methods" => {
                options.methods = value
                    .split(',')
                    .map(|name| name.parse().expect("a method name"))
                    .collect()
            }
            "--work" => options.work = PathBuf::from(&value),
            "--index" => options.index = Some(PathBuf::from(&value)),
            "--out" => options.out = PathBuf::from(&value),
            other => panic!("unknown flag {other}"),
        }
    }
    options
}

fn ensemble(
    members: usize,
    alpha: f64,
    base_seed: u64,
    exclude: &[i64],
    keep_weights: bool,
) -> EnsembleSpec {
    EnsembleSpec {
        model: ModelSpec::Mlp { hidden: vec![128] },
        recipe: Recipe::fmnist_mlp(),
        members,
        alpha,
        base_seed,
        group_size: 10,
        exclude: exclude.to_vec(),
        keep_weights,
    }
}

fn train(spec: &EnsembleSpec, data: &Dataset, dir: &Path, what: &str) -> EnsembleResults {
    let started = Instant::now();
    run_ensemble(spec, data, dir, Device::Cpu, &mut |_| {}).expect("the ensemble trains");
    eprintln!(
        "{what}: {} models ready after {:.0} s",
        spec.members,
        started.elapsed().as_secs_f64()
    );
    EnsembleResults::load(dir).expect("the ensemble loads")
}

/// The `size` training points nearest (in pixel space) to training example `anchor`, the
/// anchor included.
fn nearest_cluster(data: &Dataset, anchor: i64, size: usize) -> Vec<i64> {
    let train = data
        .x
        .narrow(0, 0, data.num_train)
        .to_kind(Kind::Float)
        .view([data.num_train, -1]);
    let distance = (&train - train.get(anchor).unsqueeze(0))
        .square()
        .sum_dim_intlist([1].as_slice(), false, Kind::Float);
    let (_, order) = distance.sort(0, false);
    Vec::<i64>::try_from(order.narrow(0, 0, size as i64)).expect("indices")
}

fn audit_json(result: &Audit) -> serde_json::Map<String, Value> {
    let mut entry = serde_json::Map::new();
    for (split, audited) in [
        ("forget", &result.forget),
        ("retain", &result.retain),
        ("val", &result.val),
    ] {
        entry.insert(format!("{split}_p95"), json!(audited.klom.p95));
        entry.insert(format!("{split}_p99"), json!(audited.klom.p99));
        entry.insert(format!("{split}_mean"), json!(audited.klom.mean));
        entry.insert(format!("{split}_accuracy"), json!(audited.accuracy));
    }
    entry
}

/// The mean of audits of the same models' requests with different seeds: every statistic,
/// and every point's KLoM, averaged.
fn mean_audit(audits: &[Audit]) -> Audit {
    let count = audits.len() as f64;
    let mean = |value: &dyn Fn(&Audit) -> f64| audits.iter().map(value).sum::<f64>() / count;
    let split = |pick: &dyn Fn(&Audit) -> &SplitAudit| SplitAudit {
        klom: KlomStats {
            points: pick(&audits[0]).klom.points,
            p95: mean(&|audit| pick(audit).klom.p95),
            p99: mean(&|audit| pick(audit).klom.p99),
            mean: mean(&|audit| pick(audit).klom.mean),
        },
        accuracy: mean(&|audit| pick(audit).accuracy),
    };
    Audit {
        models: audits[0].models,
        oracles: audits[0].oracles,
        forget: split(&|audit| &audit.forget),
        retain: split(&|audit| &audit.retain),
        val: split(&|audit| &audit.val),
        per_point: (0..audits[0].per_point.len())
            .map(|point| {
                audits
                    .iter()
                    .map(|audit| audit.per_point[point])
                    .sum::<f64>()
                    / count
            })
            .collect(),
    }
}

/// One method setting run on one forget set.
struct Candidate {
    set: &'static str,
    config: MethodConfig,
    result: Audit,
    closure: f64,
    /// Closure of each request seed's audit (one seed for the baselines).
    closure_by_seed: Vec<f64>,
    harmless: bool,
    examples_per_model: f64,
}

fn closure(do_nothing: &Audit, floor: &Audit, method: &Audit) -> f64 {
    (do_nothing.forget.klom.p95 - method.forget.klom.p95)
        / (do_nothing.forget.klom.p95 - floor.forget.klom.p95)
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
        other => vec![MethodConfig::defaults(other, &Recipe::fmnist_mlp())],
    }
}

/// DMM with one shipped choice undone at a time, and the DMM paper's configuration.
fn dmm_ablation() -> Vec<(&'static str, MethodConfig)> {
    let MethodConfig::Dmm {
        matching,
        denoise,
        multiplier,
    } = MethodConfig::defaults(Method::Dmm, &Recipe::fmnist_mlp())
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

/// How good DMM's targets are before any fine-tune (DM-direct: the originals' logits minus the
/// predicted shift), for tuning.
fn explore_targets(
    index: &AttributionIndex,
    forget: &ForgetSet,
    originals: &Tensor,
    oracles: &Tensor,
    labels: &Tensor,
    audit_of: &dyn Fn(&Tensor) -> Audit,
    gap: &dyn Fn(&Audit) -> f64,
) {
    let forget_rows = Tensor::from_slice(forget.indices());
    let mean_forget_margin = |logits: &Tensor| {
        margins(logits, labels)
            .index_select(1, &forget_rows)
            .mean(Kind::Float)
            .double_value(&[])
    };
    eprintln!(
        "mean forget margin: originals {:.2}, oracles {:.2}",
        mean_forget_margin(originals),
        mean_forget_margin(oracles)
    );
    let report = |what: &str, logits: &Tensor| {
        let result = audit_of(logits);
        eprintln!(
            "DM-direct {what}: closure {:+.3} forget {:.3} retain {:.3} val {:.3}, mean forget margin {:.2}",
            gap(&result), result.forget.klom.p95, result.retain.klom.p95, result.val.klom.p95, mean_forget_margin(logits)
        );
    };
    for denoise in [
        Denoise::None,
        Denoise::Hard { z: 2.0 },
        Denoise::Soft { z: 1.0 },
    ] {
        let shift = predicted_shift(index, forget, denoise).expect("shift");
        for multiplier in [0.5, 0.75, 1.0] {
            report(
                &format!("{denoise:?} m = {multiplier}"),
                &(originals - shift.unsqueeze(0) * multiplier),
            );
        }
    }
    // Forget points shifted by their own term only, the rest as denoised.
    let mut shift = predicted_shift(index, forget, Denoise::Hard { z: 2.0 }).expect("shift");
    let own: Vec<Tensor> = forget
        .indices()
        .iter()
        .map(|x| index.beta.rows(&[*x]).expect("row").get(0).get(*x))
        .collect();
    let _ = shift.index_copy_(0, &forget_rows, &Tensor::stack(&own, 0));
    report(
        "own terms only at F, m = 1",
        &(originals - shift.unsqueeze(0)),
    );
}

/// Median seconds of `repeats` runs of `config` on fresh copies of `model`.
fn time_request(
    model: &Model,
    config: &MethodConfig,
    forget: &ForgetSet,
    resources: &Resources,
    repeats: usize,
) -> f64 {
    let mut seconds: Vec<f64> = (0..repeats)
        .map(|_| {
            let mut copy = model.try_clone().expect("clone");
            let started = Instant::now();
            unlearn(&mut copy, config, forget, resources, REQUEST_SEEDS[0])
                .expect("unlearning runs");
            started.elapsed().as_secs_f64()
        })
        .collect();
    seconds.sort_by(f64::total_cmp);
    seconds[repeats / 2]
}

fn main() {
    let options = options();
    let data = Dataset::load(&DatasetSpec::fmnist_bench())
        .expect("Fashion-MNIST is installed (make setup)");
    let work = &options.work;
    let all_targets: Vec<i64> = (0..data.num_targets()).collect();
    let labels = data.y.shallow_clone();

    let subsets = train(
        &ensemble(options.estimation_models, 0.5, 0, &[], false),
        &data,
        &work.join("subsets"),
        "subset retrains",
    );
    let index_path = work.join("index-subsample.beta");
    if !index_path.is_file() {
        let started = Instant::now();
        build_index(
            &subsets,
            0..options.estimation_models,
            Estimator::Subsample,
            &index_path,
            &mut |_| std::ops::ControlFlow::Continue(()),
        )
        .expect("the index builds");
        eprintln!("index built in {:.0} s", started.elapsed().as_secs_f64());
    }
    drop(subsets);
    let index = AttributionIndex::open(options.index.as_ref().unwrap_or(&index_path))
        .expect("the index opens");

    let originals_dir = work.join("originals");
    let original_logits = train(
        &ensemble(options.models, 1.0, 1, &[], true),
        &data,
        &originals_dir,
        "originals",
    )
    .logits
    .to_kind(Kind::Float);
    let originals = load_members(&originals_dir, &data, Device::Cpu).expect("the originals load");

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let random: Vec<i64> = sample(&mut rng, data.num_train as usize, options.forget_size)
        .into_iter()
        .map(|i| i as i64)
        .collect();
    let anchor = 1234;
    let forget_sets = [
        (
            "random",
            random,
            "uniformly random training points (seed 7)".to_owned(),
        ),
        (
            "cluster",
            nearest_cluster(&data, anchor, options.forget_size),
            format!("the training points nearest, in pixel space, to training example {anchor}"),
        ),
    ];

    let mut sets_json = serde_json::Map::new();
    let mut info_json = serde_json::Map::new();
    let mut ablation_json = serde_json::Map::new();
    let mut per_point: Vec<(String, Tensor)> =
        vec![("num_train".into(), Tensor::from_slice(&[data.num_train]))];
    let retrain_examples =
        (data.num_train as usize - options.forget_size) * Recipe::fmnist_mlp().epochs;
    let mut candidates: BTreeMap<Method, Vec<Candidate>> = BTreeMap::new();
    for (set_number, (name, indices, construction)) in forget_sets.iter().enumerate() {
        let forget = ForgetSet::new(indices.clone(), data.num_train).expect("a valid forget set");
        let splits = Splits::new(forget.indices(), data.num_train, data.num_val);
        let oracle_logits = train(
            &ensemble(
                options.oracles + options.held_out,
                1.0,
                100 + set_number as u64,
                forget.indices(),
                false,
            ),
            &data,
            &work.join(format!("oracles-{name}")),
            &format!("oracles without the {name} forget set"),
        )
        .logits
        .to_kind(Kind::Float);
        let reference = margins(&oracle_logits.narrow(0, 0, options.oracles as i64), &labels);
        let held_out = oracle_logits.narrow(0, options.oracles as i64, options.held_out as i64);
        let held_out_mean = held_out.mean_dim([0].as_slice(), false, Kind::Float);
        let audit_of =
            |logits: &Tensor| audit(logits, &labels, &reference, &splits).expect("audit");

        let do_nothing = audit_of(&original_logits);
        let floor = audit_of(&held_out);
        let gap = |result: &Audit| closure(&do_nothing, &floor, result);
        eprintln!(
            "{name}: do-nothing P95 forget {:.3} retain {:.3} val {:.3}; noise floor {:.3} {:.3} {:.3}",
            do_nothing.forget.klom.p95, do_nothing.retain.klom.p95, do_nothing.val.klom.p95,
            floor.forget.klom.p95, floor.retain.klom.p95, floor.val.klom.p95
        );
        if options.explore {
            explore_targets(
                &index,
                &forget,
                &original_logits,
                &oracle_logits.narrow(0, 0, options.oracles as i64),
                &labels,
                &audit_of,
                &gap,
            );
        }
        let resources = Resources {
            index: Some(&index),
            oracle_logits: Some(&held_out_mean),
            ..Resources::new(&data)
        };
        // DMM and OM cost seconds, so they are run with several request seeds (retained sample
        // and shuffles) and reported as the mean; the baselines' grids take minutes per seed.
        let run = |config: &MethodConfig| {
            let seeds = match config.method() {
                Method::Dmm | Method::Om => REQUEST_SEEDS.as_slice(),
                _ => &REQUEST_SEEDS[..1],
            };
            let mut audits = Vec::new();
            let mut examples = 0;
            for seed in seeds {
                let mut model = originals.try_clone().expect("clone");
                let summary = unlearn(&mut model, config, &forget, &resources, *seed)
                    .expect("unlearning runs");
                let logits = Outputs::compute(&mut model, &data, &all_targets)
                    .expect("outputs")
                    .logits;
                audits.push(audit_of(&logits));
                examples = summary.examples;
            }
            (audits, examples as f64 / options.models as f64)
        };

        let mut methods = serde_json::Map::new();
        for (method, result, note) in [
            ("do_nothing", &do_nothing, "the originals"),
            ("noise_floor", &floor, "held-out oracles"),
        ] {
            let mut entry = audit_json(result);
            entry.insert("gap_closure".into(), json!(gap(result)));
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
            Tensor::from_slice(forget.indices()),
        ));

        for method in [
            Method::Ga,
            Method::Gd,
            Method::Scrub,
            Method::Dmm,
            Method::Om,
        ] {
            if !options.methods.is_empty() && !options.methods.contains(&method) {
                continue;
            }
            for config in candidate_configs(method) {
                let started = Instant::now();
                let (audits, examples_per_model) = run(&config);
                let by_seed: Vec<f64> = audits.iter().map(&gap).collect();
                let result = mean_audit(&audits);
                let closure = gap(&result);
                // A setting is harmless when retain and validation P95 stay within 0.1 of
                // doing nothing.
                let harmless = result.retain.klom.p95 <= do_nothing.retain.klom.p95 + 0.1
                    && result.val.klom.p95 <= do_nothing.val.klom.p95 + 0.1;
                eprintln!(
                    "{name:>7} {:<6} closure {closure:+.3} {by_seed:.3?}  forget {:.3} retain {:.3} val {:.3}  ({:.1} s)  {}",
                    method.name(), result.forget.klom.p95, result.retain.klom.p95, result.val.klom.p95,
                    started.elapsed().as_secs_f64(), serde_json::to_string(&config).expect("config serialises")
                );
                candidates.entry(method).or_default().push(Candidate {
                    set: name,
                    config,
                    result,
                    closure,
                    closure_by_seed: by_seed,
                    harmless,
                    examples_per_model,
                });
            }
        }
        sets_json.insert((*name).to_owned(), Value::Object(methods));
        info_json.insert((*name).to_owned(), json!({"size": forget.len(), "construction": construction, "indices": forget.indices()}));

        if options.methods.is_empty() || options.methods.contains(&Method::Dmm) {
            let mut ablation = serde_json::Map::new();
            for (variant, config) in dmm_ablation() {
                let (audits, _) = run(&config);
                let result = mean_audit(&audits);
                eprintln!("{name:>7} dmm ablation {variant:<16} closure {:+.3}  forget {:.3} retain {:.3} val {:.3}",
                    gap(&result), result.forget.klom.p95, result.retain.klom.p95, result.val.klom.p95);
                ablation.insert(variant.to_owned(), json!({"gap_closure": gap(&result), "forget_p95": result.forget.klom.p95,
                    "retain_p95": result.retain.klom.p95, "val_p95": result.val.klom.p95, "config": config}));
            }
            ablation_json.insert((*name).to_owned(), Value::Object(ablation));
        }
    }

    // One setting per method for every forget set, as a deployment would have: the one that
    // is harmless on all sets and closes the most gap on average.
    for (method, runs) in &candidates {
        let settings = runs.len() / forget_sets.len();
        let score = |setting: usize| {
            let of_setting = runs.iter().skip(setting).step_by(settings);
            let harmless = of_setting.clone().all(|run| run.harmless);
            let mean = of_setting.map(|run| run.closure).sum::<f64>() / forget_sets.len() as f64;
            (harmless, mean)
        };
        let chosen = (0..settings)
            .max_by(|a, b| {
                score(*a)
                    .partial_cmp(&score(*b))
                    .expect("closures are numbers")
            })
            .expect("a setting");
        for (set_index, (name, ..)) in forget_sets.iter().enumerate() {
            let run = &runs[set_index * settings + chosen];
            let mut entry = audit_json(&run.result);
            entry.insert("gap_closure".into(), json!(run.closure));
            entry.insert("gap_closure_by_seed".into(), json!(run.closure_by_seed));
            entry.insert(
                "request_seeds".into(),
                json!(&REQUEST_SEEDS[..run.closure_by_seed.len()]),
            );
            entry.insert(
                "cost_vs_retrain".into(),
                json!(run.examples_per_model / retrain_examples as f64),
            );
            entry.insert("examples_per_model".into(), json!(run.examples_per_model));
            entry.insert("config".into(), json!(run.config));
            if settings > 1 {
                let grid: Vec<Value> = runs.iter().filter(|other| other.set == *name).map(|other| json!({
                    "config": other.config, "gap_closure": other.closure, "harmless": other.harmless,
                    "forget_p95": other.result.forget.klom.p95, "retain_p95": other.result.retain.klom.p95, "val_p95": other.result.val.klom.p95,
                })).collect();
                entry.insert("grid".into(), Value::Array(grid));
            }
            sets_json[*name][method.name()] = Value::Object(entry);
            per_point.push((
                format!("{name}/{}", method.name()),
                Tensor::from_slice(&run.result.per_point),
            ));
        }
    }

    // Cost: one request on one model against one retrain, same process, same thread policy.
    let single = originals.select_member(0).expect("member 0");
    let forget = ForgetSet::new(forget_sets[0].1.clone(), data.num_train).expect("forget set");
    let resources = Resources {
        index: Some(&index),
        ..Resources::new(&data)
    };
    let dmm_config = MethodConfig::defaults(Method::Dmm, &Recipe::fmnist_mlp());
    let dmm_seconds = time_request(&single, &dmm_config, &forget, &resources, 11);
    let retrain_seconds = time_request(
        &single,
        &MethodConfig::defaults(Method::Retrain, &Recipe::fmnist_mlp()),
        &forget,
        &resources,
        5,
    );
    eprintln!(
        "one DMM request {:.1} ms, one retrain {:.3} s",
        dmm_seconds * 1e3,
        retrain_seconds
    );

    let report = json!({
        "workload": "fmnist-bench",
        "model": "mlp:128",
        "n": options.models,
        "n_oracles": options.oracles,
        "held_out_oracles": options.held_out,
        "estimation_models": options.estimation_models,
        "estimator": "subsample",
        "retrain_examples_per_model": retrain_examples,
        "forget_sets": sets_json,
        "forget_set_info": info_json,
        "dmm_ablation": ablation_json,
        "dmm_config": dmm_config,
        "dmm_seconds_per_request": dmm_seconds,
        "retrain_seconds": retrain_seconds,
        "cost_ratio": dmm_seconds / retrain_seconds,
    });
    if let Some(parent) = options.out.parent() {
        std::fs::create_dir_all(parent).expect("results directory");
    }
    std::fs::write(
        &options.out,
        serde_json::to_string_pretty(&report).expect("json") + "\n",
    )
    .expect("write results");
    write_safetensors(
        &work.join("klom-per-point.safetensors"),
        &per_point,
        &BTreeMap::new(),
    )
    .expect("write per-point KLoM");
    let closures = |method: &str| json!({"random": report["forget_sets"]["random"][method]["gap_closure"], "cluster": report["forget_sets"]["cluster"][method]["gap_closure"]});
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({"dmm": closures("dmm"), "ga": closures("ga"), "gd": closures("gd"), "scrub": closures("scrub"), "om": closures("om"), "cost_ratio": report["cost_ratio"]}))
            .expect("json")
    );
}
