//! What every part of the bench measures with: the trained models, a forget set's oracles and
//! audits, and one method run over request seeds.

use std::path::{Path, PathBuf};
use std::time::Instant;

use lethe_ml::audit::{audit, Audit, KlomStats, SplitAudit, Splits};
use lethe_ml::data::Dataset;
use lethe_ml::ensemble::{run_ensemble, EnsembleResults, EnsembleSpec};
use lethe_ml::model::{Model, ModelSpec};
use lethe_ml::outputs::{margins, Outputs};
use lethe_ml::recipe::Recipe;
use lethe_ml::unlearn::confidence::TargetConfidence;
use lethe_ml::unlearn::targets::AttributionIndex;
use lethe_ml::unlearn::{unlearn, ForgetSet, Method, MethodConfig, Resources};
use serde_json::{json, Map, Value};
use tch::{Device, Kind, Tensor};

/// The bench's network: the fmnist-bench MLP.
pub(crate) fn bench_model() -> ModelSpec {
    ModelSpec::Mlp { hidden: vec![128] }
}

pub(crate) fn ensemble(
    members: usize,
    alpha: f64,
    base_seed: u64,
    exclude: &[i64],
    keep_weights: bool,
) -> EnsembleSpec {
    EnsembleSpec {
        model: bench_model(),
        recipe: Recipe::fmnist_mlp(),
        members,
        alpha,
        base_seed,
        group_size: 10,
        exclude: exclude.to_vec(),
        keep_weights,
    }
}

pub(crate) fn train(
    spec: &EnsembleSpec,
    data: &Dataset,
    dir: &Path,
    what: &str,
) -> EnsembleResults {
    let started = Instant::now();
    run_ensemble(spec, data, dir, Device::Cpu, &mut |_| {}).expect("the ensemble trains");
    eprintln!(
        "{what}: {} models ready after {:.0} s",
        spec.members,
        started.elapsed().as_secs_f64()
    );
    EnsembleResults::load(dir).expect("the ensemble loads")
}

/// The models every forget set is measured with.
pub(crate) struct Bench {
    pub(crate) data: Dataset,
    pub(crate) labels: Tensor,
    pub(crate) index: AttributionIndex,
    /// The N originals, member-batched.
    pub(crate) originals: Model,
    /// Their logits on every target (`N × T × C`).
    pub(crate) original_logits: Tensor,
    /// The first originals, which the gradient baselines (GA, GD, SCRUB) run on: they pass
    /// over the retain set, 10–40× DMM's examples, and on all N originals they would be most
    /// of the bench's time. Their figures are against doing nothing on the same models.
    pub(crate) few_originals: Model,
    pub(crate) work: PathBuf,
    pub(crate) oracles: usize,
    pub(crate) held_out: usize,
}

/// A forget set with its oracles and the audits every method is compared with.
pub(crate) struct Measured {
    pub(crate) forget: ForgetSet,
    pub(crate) splits: Splits,
    /// Margins of the N' oracles (`N' × T`).
    pub(crate) reference: Tensor,
    /// Mean logits of the held-out oracles (`T × C`), OM's targets.
    pub(crate) held_out_mean: Tensor,
    pub(crate) do_nothing: Audit,
    /// Doing nothing on [`Bench::few_originals`], what the baselines are compared with.
    pub(crate) do_nothing_few: Audit,
    pub(crate) floor: Audit,
}

/// What a method did on a forget set over its request seeds.
pub(crate) struct MethodRun {
    pub(crate) mean: Audit,
    /// Doing nothing on the models the method ran on.
    pub(crate) do_nothing: Audit,
    /// Gap closure of the mean audit, and whether it is harmless (both against `do_nothing`).
    pub(crate) closure: f64,
    pub(crate) harmless: bool,
    pub(crate) closure_by_seed: Vec<f64>,
    pub(crate) seconds: f64,
    pub(crate) examples_per_model: f64,
    pub(crate) confidence: Option<TargetConfidence>,
}

impl Bench {
    /// Oracles retrained without `forget` (N' compared with, H held out), trained once into
    /// `oracles-<first 16 hex digits of the forget set's hash>` and reused.
    pub(crate) fn measure(
        &self,
        forget: &ForgetSet,
        hash: &str,
        oracle_seed: u64,
        name: &str,
    ) -> Measured {
        let logits = train(
            &ensemble(
                self.oracles + self.held_out,
                1.0,
                oracle_seed,
                forget.indices(),
                false,
            ),
            &self.data,
            &self.work.join(format!("oracles-{}", &hash[..16])),
            &format!("oracles without {name}"),
        )
        .logits
        .to_kind(Kind::Float);
        let reference = margins(&logits.narrow(0, 0, self.oracles as i64), &self.labels);
        let held = logits.narrow(0, self.oracles as i64, self.held_out as i64);
        let splits = Splits::new(forget.indices(), self.data.num_train, self.data.num_val);
        let audit_of =
            |logits: &Tensor| audit(logits, &self.labels, &reference, &splits).expect("audit");
        let do_nothing = audit_of(&self.original_logits);
        let do_nothing_few = audit_of(&self.original_logits.narrow(
            0,
            0,
            self.few_originals.members(),
        ));
        let floor = audit_of(&held);
        eprintln!(
            "{name}: do-nothing P95 forget {:.3} retain {:.3} val {:.3}; noise floor {:.3} {:.3} {:.3}",
            do_nothing.forget.klom.p95, do_nothing.retain.klom.p95, do_nothing.val.klom.p95,
            floor.forget.klom.p95, floor.retain.klom.p95, floor.val.klom.p95
        );
        Measured {
            held_out_mean: held.mean_dim([0].as_slice(), false, Kind::Float),
            forget: forget.clone(),
            splits,
            reference,
            do_nothing,
            do_nothing_few,
            floor,
        }
    }

    pub(crate) fn audit(&self, measured: &Measured, logits: &Tensor) -> Audit {
        audit(logits, &self.labels, &measured.reference, &measured.splits).expect("audit")
    }

    /// Applies `config` to the originals (the first few for a gradient baseline) once per seed
    /// and audits each result.
    pub(crate) fn run(
        &self,
        measured: &Measured,
        config: &MethodConfig,
        seeds: &[u64],
    ) -> MethodRun {
        let started = Instant::now();
        let (models, do_nothing) = if runs_on_few(config.method()) {
            (&self.few_originals, &measured.do_nothing_few)
        } else {
            (&self.originals, &measured.do_nothing)
        };
        let resources = Resources {
            index: Some(&self.index),
            oracle_logits: Some(&measured.held_out_mean),
            ..Resources::new(&self.data)
        };
        let all_targets: Vec<i64> = (0..self.data.num_targets()).collect();
        let mut audits = Vec::new();
        let mut examples = 0;
        let mut confidence = None;
        for seed in seeds {
            let mut model = models.try_clone().expect("clone");
            let summary = unlearn(&mut model, config, &measured.forget, &resources, *seed)
                .expect("unlearning runs");
            let logits = Outputs::compute(&mut model, &self.data, &all_targets)
                .expect("outputs")
                .logits;
            audits.push(self.audit(measured, &logits));
            examples = summary.examples;
            confidence = summary.confidence;
        }
        let mean = mean_audit(&audits);
        MethodRun {
            closure_by_seed: audits
                .iter()
                .map(|audit| measured.closure(do_nothing, audit))
                .collect(),
            closure: measured.closure(do_nothing, &mean),
            harmless: harmless(do_nothing, &mean),
            mean,
            do_nothing: do_nothing.clone(),
            examples_per_model: examples as f64 / models.members() as f64,
            confidence,
            seconds: started.elapsed().as_secs_f64(),
        }
    }
}

/// Doing nothing must sit at least this share above the noise floor's forget P95 for gap
/// closure to mean anything: below it, removing the forget set barely changes the models, the
/// gap is noise and its ratio is unbounded (a set whose removal is already within noise needs
/// no unlearning; the suite says so instead of dividing by it).
pub(crate) const MEASURABLE_GAP: f64 = 0.25;

impl Measured {
    /// Whether doing nothing is far enough above the noise floor for closure to be defined.
    pub(crate) fn measurable(&self) -> bool {
        self.do_nothing.forget.klom.p95 >= (1.0 + MEASURABLE_GAP) * self.floor.forget.klom.p95
    }

    /// The share of the forget P95 gap between `do_nothing` (on the same models as `result`)
    /// and the noise floor that `result` closes.
    pub(crate) fn closure(&self, do_nothing: &Audit, result: &Audit) -> f64 {
        (do_nothing.forget.klom.p95 - result.forget.klom.p95)
            / (do_nothing.forget.klom.p95 - self.floor.forget.klom.p95)
    }
}

/// Retain and validation P95 within 0.1 of doing nothing on the same models.
pub(crate) fn harmless(do_nothing: &Audit, result: &Audit) -> bool {
    result.retain.klom.p95 <= do_nothing.retain.klom.p95 + 0.1
        && result.val.klom.p95 <= do_nothing.val.klom.p95 + 0.1
}

/// Whether `method` runs on [`Bench::few_originals`].
pub(crate) fn runs_on_few(method: Method) -> bool {
    matches!(method, Method::Ga | Method::Gd | Method::Scrub)
}

/// Request seeds; the first is the one every method runs with.
pub(crate) const REQUEST_SEEDS: [u64; 5] = [42, 0, 1, 2, 3];

/// The seeds a method runs with: DMM and OM cost seconds, so several (`matching`); the
/// baselines take minutes per seed, so one.
pub(crate) fn seeds_for(method: Method, matching: usize) -> &'static [u64] {
    match method {
        Method::Dmm | Method::Om => &REQUEST_SEEDS[..matching],
        _ => &REQUEST_SEEDS[..1],
    }
}

pub(crate) fn audit_json(result: &Audit) -> Map<String, Value> {
    let mut entry = Map::new();
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
pub(crate) fn mean_audit(audits: &[Audit]) -> Audit {
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
