//! The forget-set suite: every instance of `lethe_ml::forget_sets::SUITE`, each method at its
//! shipped setting, and the figures on reporting instances that the goals read.

use std::collections::BTreeMap;

use lethe_ml::audit::Audit;
use lethe_ml::forget_sets::{draw, Family, Split, SUITE};
use lethe_ml::recipe::Recipe;
use lethe_ml::unlearn::{ForgetSet, Method, MethodConfig};
use serde_json::{json, Map, Value};

use crate::measure::{audit_json, runs_on_few, seeds_for, Bench, Measured};

/// Request seeds DMM and OM run with on each suite instance.
const SUITE_MATCHING_SEEDS: usize = 3;

/// Oracle ensembles of suite instance `position` start from this base seed.
const ORACLE_BASE_SEED: u64 = 100;

pub(crate) struct SuiteInstance {
    pub(crate) name: String,
    pub(crate) family: Family,
    pub(crate) split: Split,
    pub(crate) measured: Measured,
    pub(crate) description: String,
    pub(crate) hash: String,
    /// DMM's and OM's gap closure (`None` where the gap is not measurable), DMM's confidence,
    /// its forget P95 excess over doing nothing (what an unmeasurable instance is judged by)
    /// and its retain and validation P95 excess.
    pub(crate) dmm_closure: Option<f64>,
    pub(crate) om_closure: Option<f64>,
    pub(crate) forget_excess: f64,
    pub(crate) confidence: Option<f64>,
    pub(crate) retain_excess: f64,
    pub(crate) val_excess: f64,
    pub(crate) entry: Value,
}

/// Runs the suite; `size` examples per forget set.
pub(crate) fn run(bench: &Bench, size: usize) -> Vec<SuiteInstance> {
    let mut deployed = bench.originals.select_member(0).expect("member 0");
    let mut instances = Vec::new();
    for (position, instance) in SUITE.iter().enumerate() {
        let drawn = draw(&instance.spec(size), &bench.data, Some(&mut deployed))
            .expect("the suite's forget sets draw");
        let hash = drawn.hash();
        let name = instance.name();
        let forget =
            ForgetSet::new(drawn.indices.clone(), bench.data.num_train).expect("forget set");
        let measured = bench.measure(&forget, &hash, ORACLE_BASE_SEED + position as u64, &name);
        let mut entry = Map::new();
        entry.insert("instance".into(), json!(name));
        entry.insert("family".into(), json!(instance.family));
        entry.insert("seed".into(), json!(instance.seed));
        entry.insert("split".into(), json!(instance.split));
        entry.insert("forget_hash".into(), json!(hash));
        entry.insert("size".into(), json!(forget.len()));
        entry.insert("description".into(), json!(drawn.description));
        entry.insert("anchors".into(), json!(drawn.anchors));
        entry.insert("class".into(), json!(drawn.class));
        let measurable = measured.measurable();
        entry.insert("measurable".into(), json!(measurable));
        let closure_of =
            |result: &Audit| measurable.then(|| measured.closure(&measured.do_nothing, result));
        for (method, result) in [
            ("do_nothing", &measured.do_nothing),
            ("noise_floor", &measured.floor),
        ] {
            let mut figures = audit_json(result);
            figures.insert("gap_closure".into(), json!(closure_of(result)));
            entry.insert(method.into(), Value::Object(figures));
        }
        let mut closures = BTreeMap::new();
        let mut dmm_audit = None;
        let mut confidence = None;
        for method in [
            Method::Dmm,
            Method::Om,
            Method::Ga,
            Method::Gd,
            Method::Scrub,
        ] {
            let config = MethodConfig::defaults(
                method,
                &crate::measure::bench_model(),
                &Recipe::fmnist_mlp(),
            );
            let run = bench.run(&measured, &config, seeds_for(method, SUITE_MATCHING_SEEDS));
            let closure = measurable.then_some(run.closure);
            let mut figures = audit_json(&run.mean);
            figures.insert("models".into(), json!(run.mean.models));
            figures.insert("seconds".into(), json!(run.seconds));
            if runs_on_few(method) {
                // Run on fewer models than DMM: its closure and harm are against doing
                // nothing on the same models.
                figures.insert(
                    "do_nothing_same_models".into(),
                    Value::Object(audit_json(&run.do_nothing)),
                );
            }
            figures.insert("gap_closure".into(), json!(closure));
            figures.insert(
                "gap_closure_by_seed".into(),
                json!(measurable.then_some(&run.closure_by_seed)),
            );
            figures.insert("harmless".into(), json!(run.harmless));
            if let Some(trusted) = &run.confidence {
                figures.insert("confidence".into(), json!(trusted.confidence));
                figures.insert("reach_p95".into(), json!(trusted.reach_p95));
                confidence = Some(trusted.confidence);
            }
            eprintln!(
                "{name:>22} {:<6} closure {} {:.3?}  forget {:.3} retain {:.3} val {:.3}  {:.0} s{}",
                method.name(),
                closure.map_or("unmeasurable".into(), |c| format!("{c:+.3}")),
                run.closure_by_seed,
                run.mean.forget.klom.p95,
                run.mean.retain.klom.p95,
                run.mean.val.klom.p95,
                run.seconds,
                run.confidence
                    .as_ref()
                    .map(|c| format!("  confidence {:.3}", c.confidence))
                    .unwrap_or_default()
            );
            closures.insert(method, closure);
            if method == Method::Dmm {
                dmm_audit = Some(run.mean);
            }
            entry.insert(method.name().into(), Value::Object(figures));
        }
        entry.insert("confidence".into(), json!(confidence));
        let dmm = dmm_audit.expect("DMM ran");
        instances.push(SuiteInstance {
            dmm_closure: closures[&Method::Dmm],
            om_closure: closures[&Method::Om],
            confidence,
            forget_excess: dmm.forget.klom.p95 - measured.do_nothing.forget.klom.p95,
            retain_excess: dmm.retain.klom.p95 - measured.do_nothing.retain.klom.p95,
            val_excess: dmm.val.klom.p95 - measured.do_nothing.val.klom.p95,
            entry: Value::Object(entry),
            name,
            family: instance.family,
            split: instance.split,
            measured,
            description: drawn.description,
            hash,
        });
    }
    instances
}

/// The suite's keys of `quality.json`: every entry, the figures on reporting instances, the
/// rank correlation of DMM's confidence with its real closure, and a summary per family.
/// Closure figures read measurable instances only; the others are named in
/// `suite_unmeasurable` and judged by `suite_reporting_max_forget_excess_unmeasurable`.
pub(crate) fn report(instances: &[SuiteInstance]) -> Map<String, Value> {
    let reporting: Vec<&SuiteInstance> = instances
        .iter()
        .filter(|instance| instance.split == Split::Reporting)
        .collect();
    let min = |values: &mut dyn Iterator<Item = f64>| values.fold(f64::INFINITY, f64::min);
    let max = |values: &mut dyn Iterator<Item = f64>| values.fold(f64::NEG_INFINITY, f64::max);
    let mut out = Map::new();
    out.insert(
        "suite".into(),
        Value::Array(instances.iter().map(|i| i.entry.clone()).collect()),
    );
    out.insert(
        "suite_reporting_min_closure".into(),
        json!(min(&mut reporting.iter().filter_map(|i| i.dmm_closure))),
    );
    out.insert(
        "suite_reporting_min_closure_minus_om".into(),
        json!(min(&mut reporting
            .iter()
            .filter_map(|i| Some(i.dmm_closure? - i.om_closure?)))),
    );
    out.insert(
        "suite_reporting_max_retain_excess".into(),
        json!(max(&mut reporting.iter().map(|i| i.retain_excess))),
    );
    out.insert(
        "suite_reporting_max_val_excess".into(),
        json!(max(&mut reporting.iter().map(|i| i.val_excess))),
    );
    out.insert(
        "suite_unmeasurable".into(),
        json!(instances
            .iter()
            .filter(|i| i.dmm_closure.is_none())
            .map(|i| &i.name)
            .collect::<Vec<_>>()),
    );
    out.insert(
        "suite_reporting_max_forget_excess_unmeasurable".into(),
        json!(max(&mut reporting
            .iter()
            .filter(|i| i.dmm_closure.is_none())
            .map(|i| i.forget_excess))),
    );
    let (confidences, closures): (Vec<f64>, Vec<f64>) = instances
        .iter()
        .filter_map(|i| Some((i.confidence?, i.dmm_closure?)))
        .unzip();
    out.insert(
        "confidence_spearman".into(),
        json!(spearman(&confidences, &closures)),
    );
    let mut families = Map::new();
    for family in Family::ALL {
        let of = |split: Split| -> Vec<&SuiteInstance> {
            instances
                .iter()
                .filter(|i| i.family == family && i.split == split)
                .collect()
        };
        let (tuning, reported) = (of(Split::Tuning), of(Split::Reporting));
        families.insert(
            family.name().into(),
            json!({
                "tuning_dmm_closure": tuning.iter().map(|i| i.dmm_closure).collect::<Vec<_>>(),
                "reporting_dmm_closure": reported.iter().map(|i| i.dmm_closure).collect::<Vec<_>>(),
                "reporting_om_closure": reported.iter().map(|i| i.om_closure).collect::<Vec<_>>(),
                "reporting_confidence": reported.iter().map(|i| i.confidence).collect::<Vec<_>>(),
                "reporting_max_retain_excess": max(&mut reported.iter().map(|i| i.retain_excess)),
                "reporting_max_val_excess": max(&mut reported.iter().map(|i| i.val_excess)),
            }),
        );
    }
    out.insert("suite_by_family".into(), Value::Object(families));
    out
}

/// Spearman's rank correlation (ties take their mean rank); NaN below three pairs.
pub(crate) fn spearman(a: &[f64], b: &[f64]) -> f64 {
    if a.len() != b.len() || a.len() < 3 {
        return f64::NAN;
    }
    let ranks = |values: &[f64]| -> Vec<f64> {
        let mut order: Vec<usize> = (0..values.len()).collect();
        order.sort_by(|x, y| values[*x].total_cmp(&values[*y]));
        let mut ranks = vec![0.0; values.len()];
        let mut start = 0;
        while start < order.len() {
            let mut end = start;
            while end + 1 < order.len() && values[order[end + 1]] == values[order[start]] {
                end += 1;
            }
            let mean_rank = (start + end) as f64 / 2.0;
            for position in &order[start..=end] {
                ranks[*position] = mean_rank;
            }
            start = end + 1;
        }
        ranks
    };
    let (ra, rb) = (ranks(a), ranks(b));
    let mean = (a.len() - 1) as f64 / 2.0;
    let (mut covariance, mut va, mut vb) = (0.0, 0.0, 0.0);
    for (x, y) in ra.iter().zip(&rb) {
        covariance += (x - mean) * (y - mean);
        va += (x - mean) * (x - mean);
        vb += (y - mean) * (y - mean);
    }
    covariance / (va * vb).sqrt()
}
