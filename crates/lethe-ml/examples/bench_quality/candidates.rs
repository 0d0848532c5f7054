//! `--explore`: the estimators of DMM's predicted shift that were measured against the shipped
//! one, each run through the shipped matching fine-tune on the suite's tuning instances only.
//! The shipped estimator is `lethe_ml::unlearn::targets::predicted_shift`; these variants
//! undo or replace one of its steps (docs/unlearning.md gives the figures and the choice).

use lethe_ml::audit::Audit;
use lethe_ml::outputs::Outputs;
use lethe_ml::unlearn::finetune::{match_targets, matching_examples, MatchingConfig};
use lethe_ml::unlearn::targets::{
    dmm_targets, pooled_cross_terms, predicted_shift, AttributionIndex, Denoise,
};
use lethe_ml::unlearn::ForgetSet;
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

use crate::measure::{Bench, REQUEST_SEEDS};
use crate::suite::SuiteInstance;

const MULTIPLIERS: [f64; 2] = [0.75, 1.0];
const SEEDS: usize = 2;

/// The spread across estimation models of each label's mean logits (`labels × C`): the noise
/// of a class-wide component of Σβ per unit of √(Σ‖W_i‖²).
pub(crate) fn class_spread(subset_logits: &Tensor, labels: &Tensor, classes: i64) -> Tensor {
    let rows: Vec<Tensor> = (0..classes)
        .map(|class| {
            let members = labels.eq(class).nonzero().squeeze_dim(1);
            subset_logits
                .index_select(1, &members)
                .to_kind(Kind::Float)
                .mean_dim([1].as_slice(), false, Kind::Float)
                .std_correction([0].as_slice(), 1, false)
        })
        .collect();
    Tensor::stack(&rows, 0)
}

/// The pieces the variants are built from.
struct Pieces {
    rows: Tensor,
    raw: Tensor,
    own: Tensor,
    cross: Tensor,
    cross_variance: Tensor,
    outside_tested: Tensor,
    labels: Tensor,
    forget_labels: Vec<i64>,
    class_mean: Tensor,
    class_se: Tensor,
    standard_error: Tensor,
}

fn pieces(index: &AttributionIndex, forget: &ForgetSet, spread: &Tensor) -> Pieces {
    let noise = index
        .noise
        .as_ref()
        .expect("a linear index has a noise model");
    let labels = noise
        .target_labels
        .as_ref()
        .expect("labels")
        .shallow_clone();
    let rows = Tensor::from_slice(forget.indices());
    let beta = index.beta.rows(forget.indices()).expect("rows");
    let raw = beta.sum_dim_intlist([0].as_slice(), false, Kind::Float);
    let own = beta
        .index_select(1, &rows)
        .diagonal(0, 0, 1)
        .transpose(0, 1);
    let weight_sq = noise.source_weight_sq.index_select(0, &rows);
    let total = weight_sq.sum(Kind::Float);
    let standard_error = &noise.target_std * total.sqrt();
    let outside =
        Tensor::ones([raw.size()[0]], (Kind::Float, Device::Cpu)).index_fill(0, &rows, 0.0);
    let classes = spread.size()[0];
    let sums = Tensor::zeros([classes, raw.size()[1]], (Kind::Float, Device::Cpu)).index_add(
        0,
        &labels,
        &(&raw * outside.unsqueeze(1)),
    );
    let counts =
        Tensor::zeros([classes], (Kind::Float, Device::Cpu)).index_add(0, &labels, &outside);
    Pieces {
        cross: raw.index_select(0, &rows) - &own,
        cross_variance: noise.target_std.index_select(0, &rows).square()
            * (&total - &weight_sq).clamp_min(0.0).unsqueeze(1),
        outside_tested: hard(&raw, &standard_error),
        class_mean: sums / counts.clamp_min(1.0).unsqueeze(1),
        class_se: spread * total.sqrt(),
        forget_labels: Vec::<i64>::try_from(labels.index_select(0, &rows)).expect("labels"),
        labels,
        standard_error,
        raw,
        own,
        rows,
    }
}

/// Keeps a target's sum when its RMS z-score over the logits exceeds 2.
fn hard(sum: &Tensor, standard_error: &Tensor) -> Tensor {
    let score = (sum / standard_error.clamp_min(1e-12))
        .square()
        .mean_dim([-1].as_slice(), false, Kind::Float)
        .sqrt();
    sum * score.gt(2.0).to_kind(Kind::Float).unsqueeze(-1)
}

impl Pieces {
    fn with_forget(&self, outside: &Tensor, at_forget: &Tensor) -> Tensor {
        let mut shift = outside.copy();
        let _ = shift.index_copy_(0, &self.rows, at_forget);
        shift
    }

    fn label_mean_at_forget(&self) -> Tensor {
        self.class_mean
            .index_select(0, &self.labels.index_select(0, &self.rows))
    }

    /// Cross terms pooled within each label of F rather than over all of F.
    fn pooled_by_label(&self, cross: &Tensor) -> Tensor {
        let result = cross.zeros_like();
        let mut labels = self.forget_labels.clone();
        labels.sort_unstable();
        labels.dedup();
        for label in labels {
            let members: Vec<i64> = (0..self.forget_labels.len() as i64)
                .filter(|i| self.forget_labels[*i as usize] == label)
                .collect();
            let at = Tensor::from_slice(&members);
            let part = if members.len() >= 2 {
                pooled_cross_terms(
                    &cross.index_select(0, &at),
                    &self.cross_variance.index_select(0, &at),
                )
            } else {
                cross.index_select(0, &at).zeros_like()
            };
            let _ = result.shallow_clone().index_copy_(0, &at, &part);
        }
        result
    }
}

/// Every variant's shift for `forget`.
fn variants(
    index: &AttributionIndex,
    forget: &ForgetSet,
    spread: &Tensor,
) -> Vec<(&'static str, Tensor)> {
    let p = pieces(index, forget, spread);
    let shipped = predicted_shift(index, forget, Denoise::Hard { z: 2.0 }).expect("shift");
    // The class-wide component kept in proportion to its signal over its noise (measured
    // across the estimation models), everywhere; only its noise share is removed at F.
    let signal = (p.class_mean.square() - p.class_se.square()).clamp_min(0.0);
    let keep = &signal / (&signal + p.class_se.square()).clamp_min(1e-12);
    let kept = &p.class_mean * &keep;
    let kept_everywhere = kept.index_select(0, &p.labels);
    let class_outside = &kept_everywhere + hard(&(&p.raw - &kept_everywhere), &p.standard_error);
    let kept_at_forget = kept.index_select(0, &p.labels.index_select(0, &p.rows));
    let noise_share = p.label_mean_at_forget() - &kept_at_forget;
    vec![
        ("shipped", shipped),
        ("paper_no_denoising", p.raw.shallow_clone()),
        (
            "no_label_mean",
            p.with_forget(
                &p.outside_tested,
                &(&p.own + pooled_cross_terms(&p.cross, &p.cross_variance)),
            ),
        ),
        (
            "forget_raw",
            p.with_forget(&p.outside_tested, &p.raw.index_select(0, &p.rows)),
        ),
        (
            "class_term",
            p.with_forget(
                &class_outside,
                &(&p.own + pooled_cross_terms(&(&p.cross - &noise_share), &p.cross_variance)),
            ),
        ),
        (
            "label_pooled",
            p.with_forget(
                &p.outside_tested,
                &(&p.own + p.pooled_by_label(&(&p.cross - p.label_mean_at_forget()))),
            ),
        ),
    ]
}

/// DMM with a given shift: the originals' targets, the shipped fine-tune.
fn run_with_shift(
    bench: &Bench,
    instance: &SuiteInstance,
    shift: &Tensor,
    multiplier: f64,
    seed: u64,
) -> Audit {
    let config = MatchingConfig::shipped();
    let forget = &instance.measured.forget;
    let retained = forget.retained(bench.data.num_train);
    let examples = matching_examples(forget.indices(), &retained, &config, seed);
    let anchor = bench
        .original_logits
        .index_select(1, &Tensor::from_slice(&examples));
    let targets = dmm_targets(&anchor, shift, multiplier, &examples).expect("targets");
    let mut model = bench.originals.try_clone().expect("clone");
    match_targets(
        &mut model,
        &bench.data,
        &examples,
        forget.indices(),
        &targets,
        &config,
        seed,
    )
    .expect("fine-tune");
    let all: Vec<i64> = (0..bench.data.num_targets()).collect();
    let logits = Outputs::compute(&mut model, &bench.data, &all)
        .expect("outputs")
        .logits;
    bench.audit(&instance.measured, &logits)
}

/// Measures every variant × multiplier on the tuning instances; returns the JSON rows.
pub(crate) fn explore(bench: &Bench, instances: &[SuiteInstance], spread: &Tensor) -> Value {
    let mut rows = Vec::new();
    for instance in instances
        .iter()
        .filter(|i| i.split == lethe_ml::forget_sets::Split::Tuning)
    {
        for (variant, shift) in variants(&bench.index, &instance.measured.forget, spread) {
            for multiplier in MULTIPLIERS {
                let audits: Vec<Audit> = REQUEST_SEEDS[..SEEDS]
                    .iter()
                    .map(|seed| run_with_shift(bench, instance, &shift, multiplier, *seed))
                    .collect();
                let mean =
                    |pick: fn(&Audit) -> f64| audits.iter().map(pick).sum::<f64>() / SEEDS as f64;
                let measured = &instance.measured;
                let closure = audits
                    .iter()
                    .map(|a| measured.closure(&measured.do_nothing, a))
                    .sum::<f64>()
                    / SEEDS as f64;
                let (retain, val) = (mean(|a| a.retain.klom.p95), mean(|a| a.val.klom.p95));
                eprintln!(
                    "explore {:>22} {variant:<20} m={multiplier:<4} closure {closure:+.3} retain {retain:.3} val {val:.3}",
                    instance.name
                );
                rows.push(json!({
                    "instance": instance.name, "family": instance.family, "variant": variant,
                    "multiplier": multiplier, "gap_closure": closure, "retain_p95": retain, "val_p95": val,
                    "do_nothing_retain_p95": instance.measured.do_nothing.retain.klom.p95,
                    "do_nothing_val_p95": instance.measured.do_nothing.val.klom.p95,
                }));
            }
        }
    }
    json!({"seeds": &REQUEST_SEEDS[..SEEDS], "rows": rows})
}
