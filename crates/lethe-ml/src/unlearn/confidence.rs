//! How far a request's predicted targets can be trusted, measured before any fine-tune.
//!
//! A linear index is fitted on subset models whose outputs at a target x vary, from model to
//! model, by about σ(x) (the noise model's `target_std`). A request asks the index for the
//! change that removing F causes, m·Δ(x). Where that change stays within the variation the
//! index was fitted on, the linear prediction interpolates; where it is several σ(x), it
//! extrapolates, and the suite shows where that fails: the forget sets that move their points
//! furthest (the most atypical members of a class, the highest-loss examples) are the ones
//! whose targets fall short, because the joint removal of many such points is not the sum of
//! the single removals the index measured.
//!
//! The *reach* of a moved target is ‖m·Δ(x)‖ / ‖σ(x)‖ (root mean square over the C logits);
//! the targets a request moves are F and every target outside F whose shift survived
//! denoising. The confidence is 1 / (1 + r²) with r the 95th percentile of the reach over the
//! moved targets: 1 for a request that moves nothing beyond the index's own variation, ½ when
//! the worst twentieth of its moved targets reach one σ. KLoM's P95 is decided by those worst
//! points, hence the percentile. docs/unlearning.md gives the figure against the real gap
//! closure on every instance of the forget-set suite.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::audit::percentile;
use crate::error::{MlError, Result};
use crate::unlearn::targets::{AttributionIndex, IndexNoise};
use crate::unlearn::ForgetSet;

/// The confidence of a request's targets, with what it was computed from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetConfidence {
    /// 1 / (1 + reach_p95²), in (0, 1].
    pub confidence: f64,
    /// The 95th percentile of the reach over the moved targets.
    pub reach_p95: f64,
    /// Targets the request moves: the forget set and the kept shifts outside it.
    pub moved_targets: usize,
}

/// The confidence of targets anchored at the deployed model minus `multiplier` × `shift`
/// (`T × C`, as [`crate::unlearn::targets::predicted_shift`] returns it) for `forget`.
pub fn target_confidence(
    noise: &IndexNoise,
    shift: &Tensor,
    multiplier: f64,
    forget: &ForgetSet,
) -> Result<TargetConfidence> {
    if noise.target_std.size() != shift.size() {
        return Err(MlError::Shape(format!(
            "noise model is {:?}, the shift {:?}",
            noise.target_std.size(),
            shift.size()
        )));
    }
    let rms = |values: &Tensor| {
        values
            .square()
            .mean_dim([-1].as_slice(), false, Kind::Float)
            .sqrt()
    };
    let moved_size = rms(shift);
    let moved = moved_size
        .gt(0.0)
        .index_fill(0, &Tensor::from_slice(forget.indices()), 1);
    let rows = moved.nonzero().squeeze_dim(1);
    let reach = (moved_size.index_select(0, &rows) * multiplier.abs())
        / rms(&noise.target_std.index_select(0, &rows)).clamp_min(1e-6);
    let reach = Vec::<f64>::try_from(reach.to_kind(Kind::Double))?;
    let reach_p95 = percentile(&reach, 95.0);
    Ok(TargetConfidence {
        confidence: 1.0 / (1.0 + reach_p95 * reach_p95),
        reach_p95,
        moved_targets: reach.len(),
    })
}

/// [`target_confidence`] with `index`'s noise model; `None` for an index without one (TRAK),
/// whose targets have no confidence figure.
pub fn index_confidence(
    index: &AttributionIndex,
    shift: &Tensor,
    multiplier: f64,
    forget: &ForgetSet,
) -> Result<Option<TargetConfidence>> {
    index
        .noise
        .as_ref()
        .map(|noise| target_confidence(noise, shift, multiplier, forget))
        .transpose()
}
