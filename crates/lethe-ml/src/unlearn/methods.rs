//! One entry point for every method: [`unlearn`] with a [`MethodConfig`].

use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::data::Dataset;
use crate::error::{MlError, Result};
use crate::model::{Model, ModelSpec};
use crate::outputs::Outputs;
use crate::recipe::Recipe;
use crate::seed;
use crate::train::train;
use crate::unlearn::confidence::{index_confidence, TargetConfidence};
use crate::unlearn::finetune::{
    gradient_ascent, gradient_descent, match_targets, matching_examples, scrub, FineTuneSummary,
    GradientConfig, MatchingConfig, ScrubConfig,
};
use crate::unlearn::targets::{dmm_targets, predicted_shift, AttributionIndex, Denoise};
use crate::unlearn::{ForgetSet, Method};

/// A method with its hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum MethodConfig {
    DoNothing,
    /// Train from scratch on S∖F with the model's recipe (fresh seeds derived from the
    /// request's).
    Retrain {
        recipe: Recipe,
    },
    Dmm {
        matching: MatchingConfig,
        denoise: Denoise,
        /// m in ŷ = f_θ0 − m·Σβ (1 for the subsample estimator; TRAK indexes carry their own
        /// calibrated scale, so 1 there too).
        multiplier: f64,
    },
    Om {
        matching: MatchingConfig,
    },
    Ga(GradientConfig),
    Gd(GradientConfig),
    Scrub(ScrubConfig),
}

impl MethodConfig {
    pub fn method(&self) -> Method {
        match self {
            MethodConfig::DoNothing => Method::DoNothing,
            MethodConfig::Retrain { .. } => Method::Retrain,
            MethodConfig::Dmm { .. } => Method::Dmm,
            MethodConfig::Om { .. } => Method::Om,
            MethodConfig::Ga(_) => Method::Ga,
            MethodConfig::Gd(_) => Method::Gd,
            MethodConfig::Scrub(_) => Method::Scrub,
        }
    }

    /// The shipped defaults of `method`; a retrain uses `recipe`, the model's own.
    pub fn defaults(method: Method, model: &ModelSpec, recipe: &Recipe) -> Self {
        match method {
            Method::DoNothing => MethodConfig::DoNothing,
            Method::Retrain => MethodConfig::Retrain {
                recipe: recipe.clone(),
            },
            Method::Dmm => MethodConfig::Dmm {
                matching: MatchingConfig::for_model(model),
                denoise: Denoise::Hard { z: 2.0 },
                multiplier: 0.75,
            },
            Method::Om => MethodConfig::Om {
                matching: MatchingConfig::for_model(model),
            },
            // The baselines' defaults are the settings `make bench-quality` selects on
            // fmnist-bench: the learning rate of each grid that harms neither forget set's
            // retained and validation points and closes the most gap.
            Method::Ga => MethodConfig::Ga(GradientConfig {
                lr: 1e-4,
                epochs: 3,
                batch_size: 64,
                momentum: 0.9,
                weight_decay: 5e-4,
            }),
            Method::Gd => MethodConfig::Gd(GradientConfig {
                lr: 1e-3,
                epochs: 3,
                batch_size: 64,
                momentum: 0.9,
                weight_decay: 5e-4,
            }),
            Method::Scrub => MethodConfig::Scrub(ScrubConfig {
                lr: 1e-3,
                ..ScrubConfig::paper()
            }),
        }
    }
}

/// DMM's shipped settings for `model` with `index`: [`MethodConfig::defaults`], except that
/// an index without a noise model is used without denoising, and a TRAK index, whose scores
/// are calibrated to logit units when it is built, with multiplier 1 and no denoising (its
/// noise model serves the confidence figure; denoising TRAK's scores is not measured yet).
#[derive(Debug, Clone, PartialEq)]
pub struct DmmSettings {
    pub matching: MatchingConfig,
    pub denoise: Denoise,
    pub multiplier: f64,
}

impl DmmSettings {
    pub fn shipped(model: &ModelSpec, index: &AttributionIndex) -> Self {
        // DMM's defaults do not depend on the training recipe.
        let MethodConfig::Dmm {
            matching,
            denoise,
            multiplier,
        } = MethodConfig::defaults(Method::Dmm, model, &Recipe::fmnist_mlp())
        else {
            unreachable!("the defaults of DMM are a DMM config")
        };
        let (denoise, multiplier) = if index.is_trak() {
            (Denoise::None, 1.0)
        } else if index.noise.is_none() {
            (Denoise::None, multiplier)
        } else {
            (denoise, multiplier)
        };
        DmmSettings {
            matching,
            denoise,
            multiplier,
        }
    }
}

/// What a method may need besides the model and the forget set.
pub struct Resources<'a> {
    pub data: &'a Dataset,
    /// The attribution index (DMM).
    pub index: Option<&'a AttributionIndex>,
    /// Logits (`M × T × C`) of the models DMM's targets are anchored at. By default the
    /// model's own outputs before the request; a sequential request anchors at the first
    /// version, θ0.
    pub anchor_logits: Option<&'a Tensor>,
    /// Mean logits of real oracles on every target (`T × C`) (OM).
    pub oracle_logits: Option<&'a Tensor>,
}

impl<'a> Resources<'a> {
    pub fn new(data: &'a Dataset) -> Self {
        Resources {
            data,
            index: None,
            anchor_logits: None,
            oracle_logits: None,
        }
    }
}

/// What a request did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnlearnSummary {
    pub method: Method,
    /// Example passes (forward and backward), counted over all members.
    pub examples: u64,
    pub seconds: f64,
    pub final_loss: Option<f64>,
    /// How far DMM's targets can be trusted ([`crate::unlearn::confidence`]); `None` for the
    /// other methods and for indexes without a noise model (TRAK).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<TargetConfidence>,
}

/// Applies `config` to every member of `model` for `forget`, in place. Deterministic for a
/// given `seed` on a given machine.
pub fn unlearn(
    model: &mut Model,
    config: &MethodConfig,
    forget: &ForgetSet,
    resources: &Resources,
    seed: u64,
) -> Result<UnlearnSummary> {
    // A request on one small model is a few thousand tiny operations, each cheaper than the
    // fork and join of libtorch's intra-op threads: on a CPU it runs fastest on one thread.
    let small = model.device() == tch::Device::Cpu
        && model.members() * model.parameters_per_member() < SMALL_MODEL_PARAMETERS;
    if !small {
        return unlearn_on_current_threads(model, config, forget, resources, seed);
    }
    let previous = tch::get_num_threads();
    tch::set_num_threads(1);
    let outcome = unlearn_on_current_threads(model, config, forget, resources, seed);
    tch::set_num_threads(previous);
    outcome
}

/// Below this many parameters (all members together) a CPU request runs on one thread.
const SMALL_MODEL_PARAMETERS: i64 = 1 << 22;

fn unlearn_on_current_threads(
    model: &mut Model,
    config: &MethodConfig,
    forget: &ForgetSet,
    resources: &Resources,
    seed: u64,
) -> Result<UnlearnSummary> {
    let started = Instant::now();
    let data = resources.data;
    if let Some(last) = forget.indices().last() {
        if *last >= data.num_train {
            return Err(MlError::spec(
                "forget set",
                format!(
                    "index {last} is outside the training split 0..{}",
                    data.num_train
                ),
            ));
        }
    }
    let retained = forget.retained(data.num_train);
    let mut confidence = None;
    let summary = match config {
        MethodConfig::DoNothing => None,
        MethodConfig::Retrain { recipe } => {
            let seeds: Vec<u64> = model
                .member_seeds
                .iter()
                .map(|member_seed| seed::mix_seed(seed, *member_seed))
                .collect();
            let mut fresh = Model::new(
                &model.spec,
                &seeds,
                &model.sample_shape,
                model.num_classes,
                model.device(),
            )?;
            let subsets = vec![retained; seeds.len()];
            let trained = train(&mut fresh, data, &subsets, recipe, &mut |_| {})?;
            *model = fresh;
            Some(FineTuneSummary {
                examples: trained.examples,
                final_loss: trained.final_loss.iter().sum::<f64>() / seeds.len() as f64,
                head_refitted: false,
            })
        }
        MethodConfig::Dmm { matching, .. } | MethodConfig::Om { matching } => {
            let examples = matching_examples(forget.indices(), &retained, matching, seed);
            let targets = match config {
                MethodConfig::Dmm {
                    denoise,
                    multiplier,
                    ..
                } => {
                    let (targets, trusted) = predicted_targets(
                        model,
                        resources,
                        forget,
                        &examples,
                        *denoise,
                        *multiplier,
                    )?;
                    confidence = trusted;
                    targets
                }
                _ => oracle_targets(model, resources, &examples)?,
            };
            Some(match_targets(
                model,
                data,
                &examples,
                forget.indices(),
                &targets,
                matching,
                seed,
            )?)
        }
        MethodConfig::Ga(gradient) => Some(gradient_ascent(
            model,
            data,
            forget.indices(),
            gradient,
            seed,
        )?),
        MethodConfig::Gd(gradient) => {
            Some(gradient_descent(model, data, &retained, gradient, seed)?)
        }
        MethodConfig::Scrub(settings) => {
            let mut teacher = model.try_clone()?;
            Some(scrub(
                model,
                &mut teacher,
                data,
                forget.indices(),
                &retained,
                settings,
                seed,
            )?)
        }
    };
    Ok(UnlearnSummary {
        method: config.method(),
        examples: summary.as_ref().map_or(0, |summary| summary.examples),
        seconds: started.elapsed().as_secs_f64(),
        final_loss: summary.map(|summary| summary.final_loss),
        confidence,
    })
}

/// The confidence of the targets DMM would fine-tune towards for `forget`, computed without
/// fine-tuning (a request policy reads it first): `None` for methods other than DMM and for
/// indexes without a noise model.
pub fn request_confidence(
    config: &MethodConfig,
    forget: &ForgetSet,
    resources: &Resources,
) -> Result<Option<TargetConfidence>> {
    let MethodConfig::Dmm {
        denoise,
        multiplier,
        ..
    } = config
    else {
        return Ok(None);
    };
    let index = dmm_index(resources)?;
    if index.noise.is_none() {
        return Ok(None);
    }
    let shift = predicted_shift(index, forget, *denoise)?;
    index_confidence(index, &shift, *multiplier, forget)
}

fn dmm_index<'a>(resources: &Resources<'a>) -> Result<&'a AttributionIndex> {
    let data = resources.data;
    let index = resources.index.ok_or_else(|| {
        MlError::spec(
            "DMM",
            "needs an attribution index (build one with `lethe index build`)",
        )
    })?;
    if index.beta.shape.sources != data.num_train || index.beta.shape.targets != data.num_targets()
    {
        return Err(MlError::spec(
            "DMM",
            format!(
                "the index covers {} sources × {} targets, the dataset has {} × {}",
                index.beta.shape.sources,
                index.beta.shape.targets,
                data.num_train,
                data.num_targets()
            ),
        ));
    }
    Ok(index)
}

/// DMM's targets for `examples` (`M × L × C`): the anchor's logits minus the predicted shift,
/// and their confidence when the index has a noise model.
fn predicted_targets(
    model: &mut Model,
    resources: &Resources,
    forget: &ForgetSet,
    examples: &[i64],
    denoise: Denoise,
    multiplier: f64,
) -> Result<(Tensor, Option<TargetConfidence>)> {
    let data = resources.data;
    let index = dmm_index(resources)?;
    let anchor = match resources.anchor_logits {
        Some(anchor) => {
            check_member_logits(anchor, model, data, "anchor logits")?;
            let rows = Tensor::from_slice(examples).to_device(anchor.device());
            anchor.index_select(1, &rows)
        }
        None => Outputs::compute(model, data, examples)?.logits,
    };
    let shift = predicted_shift(index, forget, denoise)?;
    let confidence = index_confidence(index, &shift, multiplier, forget)?;
    Ok((
        dmm_targets(&anchor, &shift, multiplier, examples)?,
        confidence,
    ))
}

/// Oracle Matching's targets for `examples` (`M × L × C`): the oracles' mean logits, the same
/// for every member.
fn oracle_targets(model: &Model, resources: &Resources, examples: &[i64]) -> Result<Tensor> {
    let data = resources.data;
    let oracle = resources.oracle_logits.ok_or_else(|| {
        MlError::spec("Oracle Matching", "needs the mean logits of oracle models")
    })?;
    if oracle.size() != [data.num_targets(), model.num_classes] {
        return Err(MlError::Shape(format!(
            "oracle logits are {:?}, expected [{}, {}]",
            oracle.size(),
            data.num_targets(),
            model.num_classes
        )));
    }
    let rows = Tensor::from_slice(examples).to_device(oracle.device());
    Ok(oracle
        .to_kind(Kind::Float)
        .index_select(0, &rows)
        .unsqueeze(0)
        .expand([model.members(), -1, -1], false))
}

fn check_member_logits(logits: &Tensor, model: &Model, data: &Dataset, what: &str) -> Result<()> {
    let expected = [model.members(), data.num_targets(), model.num_classes];
    if logits.size() != expected {
        return Err(MlError::Shape(format!(
            "{what} are {:?}, expected {expected:?}",
            logits.size()
        )));
    }
    Ok(())
}
