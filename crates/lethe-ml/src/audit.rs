//! The KLoM audit (KL divergence of margins), as docs/DESIGN.md §1.7 defines it.
//!
//! For each point x: the margins of N unlearned models U_x and of N' oracles O_x (retrained on
//! S∖F), clipped to [−100, 100]; 20 equal-width bins over [min, max] of U_x ∪ O_x, the last bin
//! closed so that the maximum is counted (`np.histogram`'s convention; the reference code
//! dropped it); oracle bins floored at 1e-5 where the unlearned histogram is non-zero; then
//! KL(unlearned ‖ oracle) with both histograms normalised, as `scipy.stats.entropy` does. The
//! maximum, for disjoint supports, is ln(1 + 1e5) ≈ 11.51.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{MlError, Result};
use crate::outputs::margins;

pub const BINS: i64 = 20;
pub const CLIP: f64 = 100.0;
pub const ORACLE_FLOOR: f64 = 1e-5;

/// Per-point KLoM (`P`, float64) of unlearned margins `N × P` against oracle margins `N' × P`.
pub fn klom(unlearned: &Tensor, oracles: &Tensor) -> Result<Tensor> {
    if unlearned.dim() != 2 || oracles.dim() != 2 || unlearned.size()[1] != oracles.size()[1] {
        return Err(MlError::Shape(format!(
            "KLoM needs N × P and N' × P margins, got {:?} and {:?}",
            unlearned.size(),
            oracles.size()
        )));
    }
    if unlearned.size()[0] == 0 || oracles.size()[0] == 0 {
        return Err(MlError::spec(
            "KLoM",
            "needs at least one unlearned model and one oracle",
        ));
    }
    let unlearned = unlearned.to_kind(Kind::Double).clamp(-CLIP, CLIP);
    let oracles = oracles.to_kind(Kind::Double).clamp(-CLIP, CLIP);
    let low = unlearned
        .amin([0].as_slice(), false)
        .minimum(&oracles.amin([0].as_slice(), false));
    let high = unlearned
        .amax([0].as_slice(), false)
        .maximum(&oracles.amax([0].as_slice(), false));
    let width = &high - &low;
    let histogram = |samples: &Tensor| -> Tensor {
        // Equal low and high put every sample in one bin, as np.histogram does.
        let scaled = ((samples - &low) / width.clamp_min(f64::MIN_POSITIVE) * BINS as f64)
            .floor()
            .clamp(0.0, (BINS - 1) as f64)
            .to_kind(Kind::Int64);
        let bins = scaled.where_self(&width.gt(0.0).expand_as(&scaled), &scaled.zeros_like());
        let count = samples.size()[0];
        Tensor::zeros([samples.size()[1], BINS], (Kind::Double, samples.device())).scatter_add(
            1,
            &bins.transpose(0, 1),
            &Tensor::ones([samples.size()[1], count], (Kind::Double, samples.device())),
        ) / count as f64
    };
    let p = histogram(&unlearned);
    let q = histogram(&oracles);
    let present = p.gt(0.0);
    let q = q.where_self(&present.logical_not(), &q.clamp_min(ORACLE_FLOOR));
    let q = &q / q.sum_dim_intlist([1].as_slice(), true, Kind::Double);
    let terms = (&p * (p.clamp_min(f64::MIN_POSITIVE) / q.clamp_min(f64::MIN_POSITIVE)).log())
        .where_self(&present, &p.zeros_like());
    Ok(terms.sum_dim_intlist([1].as_slice(), false, Kind::Double))
}

/// The `q`-th percentile (0–100) with linear interpolation between order statistics
/// (numpy's default).
pub fn percentile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = q.clamp(0.0, 100.0) / 100.0 * (sorted.len() - 1) as f64;
    let (below, above) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[below] + (sorted[above] - sorted[below]) * (rank - below as f64)
}

/// KLoM statistics of one split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KlomStats {
    pub points: usize,
    pub p95: f64,
    pub p99: f64,
    pub mean: f64,
}

impl KlomStats {
    pub fn of(values: &[f64]) -> Self {
        KlomStats {
            points: values.len(),
            p95: percentile(values, 95.0),
            p99: percentile(values, 99.0),
            mean: values.iter().sum::<f64>() / values.len().max(1) as f64,
        }
    }
}

/// The target indices of the three splits an audit reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Splits {
    pub forget: Vec<i64>,
    pub retain: Vec<i64>,
    pub val: Vec<i64>,
}

impl Splits {
    /// Forget = `forget`, retain = the other training points, val = `n..n+|V|`.
    pub fn new(forget: &[i64], num_train: i64, num_val: i64) -> Self {
        let mut sorted = forget.to_vec();
        sorted.sort_unstable();
        Splits {
            retain: (0..num_train)
                .filter(|index| sorted.binary_search(index).is_err())
                .collect(),
            forget: sorted,
            val: (num_train..num_train + num_val).collect(),
        }
    }

    pub fn named(&self) -> [(&'static str, &[i64]); 3] {
        [
            ("forget", &self.forget),
            ("retain", &self.retain),
            ("val", &self.val),
        ]
    }
}

/// One split of an audit: KLoM and the models' mean accuracy on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitAudit {
    pub klom: KlomStats,
    pub accuracy: f64,
}

/// The audit of N models against N' oracles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Audit {
    /// Models audited (N).
    pub models: usize,
    /// Oracles they are compared with (N').
    pub oracles: usize,
    pub forget: SplitAudit,
    pub retain: SplitAudit,
    pub val: SplitAudit,
    /// Per-point KLoM of every target (`T`), for plots; not serialised.
    #[serde(skip)]
    pub per_point: Vec<f64>,
}

/// Audits models with logits `N × T × C` on every target against oracle margins `N' × T`.
pub fn audit(
    logits: &Tensor,
    labels: &Tensor,
    oracle_margins: &Tensor,
    splits: &Splits,
) -> Result<Audit> {
    let model_margins = margins(logits, labels);
    let per_point = Vec::<f64>::try_from(klom(&model_margins, oracle_margins)?)?;
    let correct = logits
        .argmax(-1, false)
        .eq_tensor(&labels.unsqueeze(0))
        .to_kind(Kind::Double);
    let split = |targets: &[i64]| -> Result<SplitAudit> {
        let values: Vec<f64> = targets
            .iter()
            .map(|target| per_point[*target as usize])
            .collect();
        let accuracy = correct
            .index_select(1, &Tensor::from_slice(targets).to_device(correct.device()))
            .mean(Kind::Double)
            .double_value(&[]);
        Ok(SplitAudit {
            klom: KlomStats::of(&values),
            accuracy,
        })
    };
    Ok(Audit {
        models: logits.size()[0] as usize,
        oracles: oracle_margins.size()[0] as usize,
        forget: split(&splits.forget)?,
        retain: split(&splits.retain)?,
        val: split(&splits.val)?,
        per_point,
    })
}

/// The noise floor of an audit: the last `held_out` of the oracles (logits `N' × T × C`, the
/// first `compared` of which gave `reference`) audited against the reference. `None` when none
/// are held out.
pub fn noise_floor(
    oracle_logits: &Tensor,
    labels: &Tensor,
    reference: &Tensor,
    compared: i64,
    held_out: usize,
    splits: &Splits,
) -> Result<Option<Audit>> {
    if held_out == 0 {
        return Ok(None);
    }
    let held = oracle_logits.narrow(0, compared, held_out as i64);
    audit(&held, labels, reference, splits).map(Some)
}

/// Oracles as an audit compares with them: the first ones give the reference margins, the
/// last `held_out` measure the noise floor (how far oracles are from each other). The one
/// audit routine of `lethe audit` and of the service's `audit` task.
pub struct OracleReference {
    reference: Tensor,
    labels: Tensor,
    splits: Splits,
    pub compared: usize,
    pub held_out: usize,
    pub noise_floor: Option<Audit>,
}

/// Models before and after a method, each audited against the same oracles.
#[derive(Debug, Clone)]
pub struct MethodAudit {
    pub do_nothing: Audit,
    pub result: Audit,
    /// With held-out oracles only.
    pub gap_closure: Option<f64>,
}

impl OracleReference {
    /// `oracle_logits` are `N' × T × C` on every target; an error when `held_out` leaves none
    /// to compare with.
    pub fn new(
        oracle_logits: &Tensor,
        labels: &Tensor,
        held_out: usize,
        splits: Splits,
    ) -> Result<Self> {
        let total = oracle_logits.size()[0] as usize;
        if held_out >= total {
            return Err(MlError::spec(
                "audit",
                format!("{held_out} held-out oracles leave none of {total} to compare with"),
            ));
        }
        let compared = (total - held_out) as i64;
        let oracle_logits = oracle_logits.to_kind(Kind::Float);
        let reference = margins(&oracle_logits.narrow(0, 0, compared), labels);
        let noise_floor = noise_floor(
            &oracle_logits,
            labels,
            &reference,
            compared,
            held_out,
            &splits,
        )?;
        Ok(OracleReference {
            reference,
            labels: labels.shallow_clone(),
            splits,
            compared: compared as usize,
            held_out,
            noise_floor,
        })
    }

    /// Models with logits `N × T × C`, against the reference.
    pub fn audit(&self, logits: &Tensor) -> Result<Audit> {
        audit(
            &logits.to_kind(Kind::Float),
            &self.labels,
            &self.reference,
            &self.splits,
        )
    }

    /// The same models before (`do nothing`) and after a method.
    pub fn method(&self, before: &Tensor, after: &Tensor) -> Result<MethodAudit> {
        let do_nothing = self.audit(before)?;
        let result = self.audit(after)?;
        let gap_closure = self
            .noise_floor
            .as_ref()
            .map(|floor| gap_closure(&do_nothing, &result, floor));
        Ok(MethodAudit {
            do_nothing,
            result,
            gap_closure,
        })
    }
}

/// The share of the forget split's P95 gap between doing nothing and the noise floor that a
/// method closed: 0 is no better than doing nothing, 1 is as close as oracles are to each other.
pub fn gap_closure(do_nothing: &Audit, audited: &Audit, floor: &Audit) -> f64 {
    (do_nothing.forget.klom.p95 - audited.forget.klom.p95)
        / (do_nothing.forget.klom.p95 - floor.forget.klom.p95)
}
