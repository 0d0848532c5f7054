//! The fine-tunes behind the unlearning methods, all member-batched: each member sees its
//! own shuffle of the same examples, and the loss is the sum over members of each member's
//! mean loss, so every member is updated exactly as if it were fine-tuned alone.

use serde::{Deserialize, Serialize};
use tch::{Kind, Reduction, Tensor};

use rand::seq::SliceRandom;

use crate::data::Dataset;
use crate::error::{MlError, Result};
use crate::model::{Model, ModelSpec};
use crate::optim::{BatchedOptimizer, GradientReset};
use crate::recipe::{Optimizer, Recipe, Schedule};
use crate::seed;

/// The matching fine-tune of DMM and Oracle Matching: mean squared error between the model's
/// logits and per-point targets, on the forget set repeated `forget_repeats` times plus
/// `retain_per_forget`·|F| retained points drawn without replacement (seeded), with Adam and
/// the rate multiplied by `lr_decay` after every epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MatchingConfig {
    pub optimizer: MatchingOptimizer,
    pub forget_repeats: usize,
    /// Weight of a forget point's squared error relative to a retained point's: the effect
    /// of more repeats without their cost.
    pub forget_weight: f64,
    pub retain_per_forget: usize,
    pub lr: f64,
    pub lr_decay: f64,
    pub epochs: usize,
    pub batch_size: usize,
    /// After the epochs, refit the final affine layer in closed form: ridge regression of the
    /// targets on the features, pulled towards the current layer with this penalty (relative
    /// to the mean diagonal of the features' Gram matrix). A network without a known affine
    /// head (a TorchScript module) refuses it with an error.
    pub head_penalty: Option<f64>,
}

impl MatchingConfig {
    /// The configuration of the DMM paper's code (forget ×5, 20·|F| retained points, Adam
    /// 1e-4, batch 512, 4 epochs, ×0.95 per epoch).
    pub fn paper() -> Self {
        MatchingConfig {
            optimizer: MatchingOptimizer::Adam,
            forget_repeats: 5,
            forget_weight: 1.0,
            retain_per_forget: 20,
            lr: 1e-4,
            lr_decay: 0.95,
            epochs: 4,
            batch_size: 512,
            head_penalty: None,
        }
    }

    /// Lethe's defaults, tuned on fmnist-bench (docs/unlearning.md says how and why).
    pub fn shipped() -> Self {
        MatchingConfig {
            forget_repeats: 4,
            forget_weight: 5.0,
            retain_per_forget: 2,
            lr: 1e-3,
            epochs: 2,
            batch_size: 64,
            head_penalty: Some(1e-3),
            ..MatchingConfig::paper()
        }
    }

    /// The shipped settings for a network: [`Self::shipped`] where the network exposes its
    /// final affine layer (every zoo architecture), and [`Self::shipped_without_refit`] for a
    /// TorchScript module, whose head Lethe cannot see.
    pub fn for_model(model: &ModelSpec) -> Self {
        match model {
            ModelSpec::Torchscript { .. } => Self::shipped_without_refit(),
            _ => Self::shipped(),
        }
    }

    /// The shipped fine-tune without the closed-form head refit: twice the epochs instead,
    /// for networks whose final layer is opaque. Not tuned or measured on any forget set yet.
    pub fn shipped_without_refit() -> Self {
        MatchingConfig {
            epochs: 4,
            head_penalty: None,
            ..Self::shipped()
        }
    }

    fn validate(&self) -> Result<()> {
        positive(
            "matching fine-tune",
            &[
                ("forget repeats", self.forget_repeats),
                ("batch size", self.batch_size),
            ],
        )?;
        match self.head_penalty {
            None if self.epochs == 0 => {
                return Err(MlError::spec(
                    "matching fine-tune",
                    "needs at least one epoch or a head refit",
                ))
            }
            Some(penalty) if !(penalty.is_finite() && penalty > 0.0) => {
                return Err(MlError::spec(
                    "matching fine-tune",
                    format!("head penalty {penalty} must be positive"),
                ))
            }
            _ => {}
        }
        rate("matching fine-tune", self.lr)?;
        if !(self.forget_weight.is_finite() && self.forget_weight > 0.0) {
            return Err(MlError::spec(
                "matching fine-tune",
                format!("forget weight {} must be positive", self.forget_weight),
            ));
        }
        if !(self.lr_decay > 0.0 && self.lr_decay <= 1.0) {
            return Err(MlError::spec(
                "matching fine-tune",
                format!("lr decay {} must lie in (0, 1]", self.lr_decay),
            ));
        }
        Ok(())
    }
}

/// The optimizer of a matching fine-tune.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MatchingOptimizer {
    /// Adam (β = 0.9, 0.999), as in the DMM paper's code.
    Adam,
    /// SGD with momentum: steps follow the gradient's size, so parameters the targets do not
    /// pull on stay where they are (fresh Adam moves every parameter by about the rate).
    Sgd { momentum: f64 },
}

/// Plain gradient steps with SGD (momentum, coupled weight decay): ascent on the forget set
/// (GA) or descent on the retained set (GD).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GradientConfig {
    pub lr: f64,
    pub epochs: usize,
    pub batch_size: usize,
    pub momentum: f64,
    pub weight_decay: f64,
}

impl GradientConfig {
    fn validate(&self, what: &'static str) -> Result<()> {
        positive(
            what,
            &[("epochs", self.epochs), ("batch size", self.batch_size)],
        )?;
        rate(what, self.lr)
    }
}

/// SCRUB (Kurmanji et al., 2023): the student (a copy of the model) alternates *max* passes
/// over the forget set, pushing its softened outputs away from the frozen teacher's, and *min*
/// passes over the retained set with γ·cross-entropy + α·KL to the teacher. Only the
/// student's weights are optimised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScrubConfig {
    pub lr: f64,
    pub epochs: usize,
    /// Epochs that begin with a max pass.
    pub max_epochs: usize,
    pub forget_batch_size: usize,
    pub retain_batch_size: usize,
    pub temperature: f64,
    pub gamma: f64,
    pub alpha: f64,
    /// Epochs after which the rate is multiplied by 0.1.
    pub decay_epochs: Vec<usize>,
    pub momentum: f64,
    pub weight_decay: f64,
}

impl ScrubConfig {
    /// The DMM authors' settings for SCRUB: SGD 0.01 (momentum 0.9, weight decay 5e-4),
    /// 10 epochs of which 3 with a max pass, forget batch 32, retain batch 64, T = 4,
    /// γ = 0.99, α = 0.1, rate ×0.1 after epochs 3, 5 and 9.
    pub fn paper() -> Self {
        ScrubConfig {
            lr: 0.01,
            epochs: 10,
            max_epochs: 3,
            forget_batch_size: 32,
            retain_batch_size: 64,
            temperature: 4.0,
            gamma: 0.99,
            alpha: 0.1,
            decay_epochs: vec![3, 5, 9],
            momentum: 0.9,
            weight_decay: 5e-4,
        }
    }

    fn validate(&self) -> Result<()> {
        positive(
            "SCRUB",
            &[
                ("epochs", self.epochs),
                ("forget batch size", self.forget_batch_size),
                ("retain batch size", self.retain_batch_size),
            ],
        )?;
        rate("SCRUB", self.lr)?;
        if self.temperature.is_nan() || self.temperature <= 0.0 {
            return Err(MlError::spec("SCRUB", "temperature must be positive"));
        }
        Ok(())
    }

    fn lr_at(&self, epoch: usize) -> f64 {
        let decays = self.decay_epochs.iter().filter(|at| epoch >= **at).count();
        self.lr * 0.1f64.powi(decays as i32)
    }
}

fn positive(what: &'static str, values: &[(&str, usize)]) -> Result<()> {
    match values.iter().find(|(_, value)| *value == 0) {
        Some((name, _)) => Err(MlError::spec(what, format!("{name} must be at least 1"))),
        None => Ok(()),
    }
}

fn rate(what: &'static str, lr: f64) -> Result<()> {
    if lr.is_finite() && lr > 0.0 {
        Ok(())
    } else {
        Err(MlError::spec(
            what,
            format!("learning rate {lr} must be positive"),
        ))
    }
}

fn sgd(momentum: f64, weight_decay: f64) -> Recipe {
    Recipe {
        optimizer: Optimizer::Sgd {
            momentum,
            nesterov: false,
        },
        lr: 1.0,
        weight_decay,
        schedule: Schedule::Constant,
        epochs: 1,
        batch_size: 1,
    }
}

fn adam() -> Recipe {
    Recipe {
        optimizer: Optimizer::Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        },
        ..sgd(0.0, 0.0)
    }
}

/// One batch of a pass: inputs `M × B × sample_shape`, labels `M × B`, and `positions`
/// (`M × B`) into the pass's example list.
pub(crate) struct Batch {
    pub x: Tensor,
    pub labels: Tensor,
    pub positions: Tensor,
}

/// A model being fine-tuned, its optimizer, and the data on the model's device.
pub(crate) struct FineTuner<'a> {
    model: &'a mut Model,
    parameters: Vec<Tensor>,
    gradient_reset: GradientReset,
    optimizer: BatchedOptimizer,
    x_all: Tensor,
    y_all: Tensor,
    sample_shape: Vec<i64>,
    seed: u64,
    passes: usize,
    /// Examples processed, counted over all members.
    pub examples: u64,
}

impl<'a> FineTuner<'a> {
    fn new(model: &'a mut Model, data: &Dataset, optimizer: &Recipe, seed: u64) -> Result<Self> {
        model.check_samples(data, "fine-tune data")?;
        let device = model.device();
        let parameters = model.vars.trainable_variables();
        Ok(FineTuner {
            gradient_reset: GradientReset::new(&model.vars)?,
            optimizer: BatchedOptimizer::new(
                parameters.iter().map(Tensor::shallow_clone).collect(),
                optimizer,
            ),
            parameters,
            x_all: data.x.to_device(device),
            y_all: data.y.to_device(device),
            sample_shape: data.sample_shape.clone(),
            model,
            seed,
            passes: 0,
            examples: 0,
        })
    }

    /// One pass over `examples` (dataset indices, repeats allowed) in batches of `batch_size`,
    /// each member in its own seeded order, minimising the sum over members of `loss`
    /// (`M` per-member losses of a batch, given the model's logits `M × B × C`). Returns the
    /// mean loss over members and batches.
    fn pass(
        &mut self,
        examples: &[i64],
        batch_size: usize,
        lr: f64,
        loss: &mut dyn FnMut(&Batch, &Tensor) -> Result<Tensor>,
    ) -> Result<f64> {
        let members = self.model.members() as usize;
        let pass = self.passes;
        self.passes += 1;
        let orders: Vec<Vec<i64>> = self
            .model
            .member_seeds
            .iter()
            .map(|member_seed| {
                let mut order: Vec<i64> = (0..examples.len() as i64).collect();
                order.shuffle(&mut seed::rng_for_epoch(
                    seed::mix_seed(self.seed, *member_seed),
                    pass,
                ));
                order
            })
            .collect();
        let device = self.model.device();
        let mut total = 0.0;
        let mut batches = 0;
        for start in (0..examples.len()).step_by(batch_size) {
            let end = (start + batch_size).min(examples.len());
            let batch = (end - start) as i64;
            let positions: Vec<i64> = orders
                .iter()
                .flat_map(|order| order[start..end].iter().copied())
                .collect();
            let indices: Vec<i64> = positions
                .iter()
                .map(|position| examples[*position as usize])
                .collect();
            let index = Tensor::from_slice(&indices).to_device(device);
            let mut shape = vec![members as i64, batch];
            shape.extend_from_slice(&self.sample_shape);
            let batch_data = Batch {
                x: self.x_all.index_select(0, &index).view(shape.as_slice()),
                labels: self
                    .y_all
                    .index_select(0, &index)
                    .view([members as i64, batch]),
                positions: Tensor::from_slice(&positions)
                    .to_device(device)
                    .view([members as i64, batch]),
            };
            let logits = self.model.forward(&batch_data.x, true)?;
            let member_loss = loss(&batch_data, &logits)?;
            self.gradient_reset.zero_grad();
            member_loss.sum(Kind::Float).backward();
            let gradients: Vec<Tensor> = self.parameters.iter().map(Tensor::grad).collect();
            self.optimizer.step(lr, &gradients)?;
            total += member_loss.detach().mean(Kind::Float).double_value(&[]);
            batches += 1;
            self.examples += members as u64 * batch as u64;
        }
        Ok(total / batches.max(1) as f64)
    }
}

/// Per-member mean cross-entropy of logits `M × B × C` against labels `M × B`.
fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let [members, batch, classes] = logits.size()[..] else {
        return Err(MlError::Shape(format!("logits {:?}", logits.size())));
    };
    Ok(logits
        .view([-1, classes])
        .log_softmax(-1, Kind::Float)
        .f_nll_loss(&labels.view([-1]), None::<Tensor>, Reduction::None, -100)?
        .view([members, batch])
        .mean_dim(1, false, Kind::Float))
}

/// What a fine-tune did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FineTuneSummary {
    /// Example passes, counted over all members.
    pub examples: u64,
    /// Mean loss of the last pass.
    pub final_loss: f64,
    /// Whether the final affine layer was refitted in closed form after the epochs.
    #[serde(default)]
    pub head_refitted: bool,
}

/// The examples of a matching fine-tune: the forget set `forget_repeats` times, then
/// `retain_per_forget`·|F| points of `retained` drawn without replacement with `seed` (all of
/// them if there are fewer).
pub fn matching_examples(
    forget: &[i64],
    retained: &[i64],
    config: &MatchingConfig,
    seed: u64,
) -> Vec<i64> {
    let mut examples =
        Vec::with_capacity(forget.len() * (config.forget_repeats + config.retain_per_forget));
    for _ in 0..config.forget_repeats {
        examples.extend_from_slice(forget);
    }
    let wanted = (config.retain_per_forget * forget.len()).min(retained.len());
    let mut pool = retained.to_vec();
    let mut rng = seed::rng_for_epoch(seed, usize::MAX);
    let (sample, _) = pool.partial_shuffle(&mut rng, wanted);
    let mut sample = sample.to_vec();
    sample.sort_unstable();
    examples.extend(sample);
    examples
}

/// Fine-tunes every member towards its own targets: `targets` is `M × L × C`, row `l` the
/// target logits of `examples[l]`; examples in `forget` (sorted) carry the forget weight.
pub fn match_targets(
    model: &mut Model,
    data: &Dataset,
    examples: &[i64],
    forget: &[i64],
    targets: &Tensor,
    config: &MatchingConfig,
    seed: u64,
) -> Result<FineTuneSummary> {
    config.validate()?;
    let members = model.members();
    let expected = [members, examples.len() as i64, model.num_classes];
    if targets.size() != expected {
        return Err(MlError::Shape(format!(
            "matching targets are {:?}, expected {expected:?}",
            targets.size()
        )));
    }
    let device = model.device();
    let flat_targets = targets
        .to_kind(Kind::Float)
        .to_device(device)
        .reshape([-1, model.num_classes]);
    let length = examples.len() as i64;
    let member_offsets = (Tensor::arange(members, (Kind::Int64, device)) * length).unsqueeze(1);
    let weights: Vec<f32> = examples
        .iter()
        .map(|example| match forget.binary_search(example) {
            Ok(_) => config.forget_weight as f32,
            Err(_) => 1.0,
        })
        .collect();
    let weights = Tensor::from_slice(&weights).to_device(device);
    let optimizer = match config.optimizer {
        MatchingOptimizer::Adam => adam(),
        MatchingOptimizer::Sgd { momentum } => sgd(momentum, 0.0),
    };
    let mut tuner = FineTuner::new(model, data, &optimizer, seed)?;
    let mut final_loss = f64::NAN;
    for epoch in 0..config.epochs {
        let lr = config.lr * config.lr_decay.powi(epoch as i32);
        final_loss = tuner.pass(examples, config.batch_size, lr, &mut |batch, logits| {
            let rows = (&batch.positions + &member_offsets).view([-1]);
            let wanted = flat_targets.index_select(0, &rows).view_as(logits);
            let weight = weights
                .index_select(0, &batch.positions.view([-1]))
                .view_as(&batch.positions);
            Ok(((logits - wanted)
                .square()
                .mean_dim([2].as_slice(), false, Kind::Float)
                * weight)
                .mean_dim([1].as_slice(), false, Kind::Float))
        })?;
    }
    let examples_seen = tuner.examples;
    let head_refitted = config.head_penalty.is_some();
    if let Some(penalty) = config.head_penalty {
        let members = model.members();
        let per_example = weights.unsqueeze(0).expand([members, -1], false);
        final_loss = refit_head(
            model,
            data,
            examples,
            &flat_targets.view([members, length, -1]),
            &per_example,
            penalty,
        )?;
    }
    Ok(FineTuneSummary {
        examples: examples_seen,
        final_loss,
        head_refitted,
    })
}

/// Refits the final affine layer of every member in closed form (see
/// [`MatchingConfig::head_penalty`]) on `examples` with per-member targets `M × L × C` and
/// example weights `M × L`. Returns the weighted mean squared error after the refit. A layer
/// without bias is refitted without one; an output scale `s` fits `targets / s`. A network
/// without a known affine head (a TorchScript module) is an error: its settings must not ask
/// for a refit ([`crate::unlearn::MethodConfig::defaults`] does not).
fn refit_head(
    model: &mut Model,
    data: &Dataset,
    examples: &[i64],
    targets: &Tensor,
    weights: &Tensor,
    penalty: f64,
) -> Result<f64> {
    let device = model.device();
    let members = model.members();
    let index = Tensor::from_slice(examples).to_device(device);
    let x = data.x.to_device(device).index_select(0, &index);
    let mut shape = vec![members];
    shape.extend_from_slice(&x.size());
    let x = x.unsqueeze(0).expand(shape.as_slice(), false);
    let Some(head) = tch::no_grad(|| model.linear_head(&x)) else {
        return Err(MlError::spec(
            "matching fine-tune",
            format!(
                "a head refit needs a known final affine layer, which a {} model does not expose; use settings without head_penalty",
                model.spec
            ),
        ));
    };
    let head = head?;
    tch::no_grad(|| -> Result<f64> {
        let targets = targets.to_kind(Kind::Double);
        let scaled_targets = &targets / head.scale;
        let features = head.features.to_kind(Kind::Double);
        let mut design_parts = vec![features.shallow_clone()];
        let mut current_parts = vec![head.weight.to_kind(Kind::Double)];
        if let Some(bias) = &head.bias {
            design_parts.push(features.ones_like().narrow(2, 0, 1));
            current_parts.push(bias.to_kind(Kind::Double).unsqueeze(1));
        }
        let design = Tensor::cat(&design_parts, 2);
        let current = Tensor::cat(&current_parts, 1);
        let weighted = design.transpose(1, 2) * weights.to_kind(Kind::Double).unsqueeze(1);
        let gram = weighted.bmm(&design);
        let width = gram.size()[1];
        let scale = gram
            .diagonal(0, 1, 2)
            .mean_dim([1].as_slice(), true, Kind::Double);
        let ridge = (scale * penalty).unsqueeze(2);
        let eye = Tensor::eye(width, (Kind::Double, device)).unsqueeze(0);
        let solution = Tensor::f_linalg_solve(
            &(&gram + &eye * &ridge),
            &(weighted.bmm(&scaled_targets) + &current * &ridge),
            true,
        )?;
        let fitted = design.bmm(&solution) * head.scale;
        let error = ((fitted - &targets)
            .square()
            .mean_dim([2].as_slice(), false, Kind::Double)
            * weights.to_kind(Kind::Double))
        .mean(Kind::Double)
        .double_value(&[]);
        let rows = head.weight.size()[1];
        head.weight
            .shallow_clone()
            .copy_(&solution.narrow(1, 0, rows).to_kind(head.weight.kind()));
        if let Some(bias) = &head.bias {
            bias.shallow_clone()
                .copy_(&solution.select(1, rows).to_kind(bias.kind()));
        }
        Ok(error)
    })
}

/// Gradient ascent on the cross-entropy of `forget`.
pub fn gradient_ascent(
    model: &mut Model,
    data: &Dataset,
    forget: &[i64],
    config: &GradientConfig,
    seed: u64,
) -> Result<FineTuneSummary> {
    config.validate("gradient ascent")?;
    gradient_steps(model, data, forget, config, seed, -1.0)
}

/// Gradient descent on the cross-entropy of `retained`.
pub fn gradient_descent(
    model: &mut Model,
    data: &Dataset,
    retained: &[i64],
    config: &GradientConfig,
    seed: u64,
) -> Result<FineTuneSummary> {
    config.validate("gradient descent")?;
    gradient_steps(model, data, retained, config, seed, 1.0)
}

fn gradient_steps(
    model: &mut Model,
    data: &Dataset,
    examples: &[i64],
    config: &GradientConfig,
    seed: u64,
    sign: f64,
) -> Result<FineTuneSummary> {
    let mut tuner = FineTuner::new(
        model,
        data,
        &sgd(config.momentum, config.weight_decay),
        seed,
    )?;
    let mut final_loss = f64::NAN;
    for _ in 0..config.epochs {
        final_loss = tuner.pass(
            examples,
            config.batch_size,
            config.lr,
            &mut |batch, logits| Ok(cross_entropy(logits, &batch.labels)? * sign),
        )?;
    }
    Ok(FineTuneSummary {
        examples: tuner.examples,
        final_loss,
        head_refitted: false,
    })
}

/// Per-member KL(teacher ‖ student) of softened outputs, × T² as in distillation.
fn distillation_kl(student: &Tensor, teacher: &Tensor, temperature: f64) -> Tensor {
    let student_log = (student / temperature).log_softmax(-1, Kind::Float);
    let teacher_log = (teacher / temperature).log_softmax(-1, Kind::Float);
    let pointwise = teacher_log.exp() * (&teacher_log - &student_log);
    pointwise
        .sum_dim_intlist([2].as_slice(), false, Kind::Float)
        .mean_dim([1].as_slice(), false, Kind::Float)
        * (temperature * temperature)
}

/// SCRUB on `model` (the student); `teacher` is a frozen copy of the original.
pub fn scrub(
    model: &mut Model,
    teacher: &mut Model,
    data: &Dataset,
    forget: &[i64],
    retained: &[i64],
    config: &ScrubConfig,
    seed: u64,
) -> Result<FineTuneSummary> {
    config.validate()?;
    if teacher.members() != model.members() {
        return Err(MlError::Shape(format!(
            "teacher has {} members, student {}",
            teacher.members(),
            model.members()
        )));
    }
    let temperature = config.temperature;
    let mut tuner = FineTuner::new(
        model,
        data,
        &sgd(config.momentum, config.weight_decay),
        seed,
    )?;
    let mut final_loss = f64::NAN;
    for epoch in 0..config.epochs {
        let lr = config.lr_at(epoch);
        if epoch < config.max_epochs {
            tuner.pass(
                forget,
                config.forget_batch_size,
                lr,
                &mut |batch, logits| {
                    let teacher_logits = tch::no_grad(|| teacher.forward(&batch.x, false))?;
                    Ok(-distillation_kl(logits, &teacher_logits, temperature))
                },
            )?;
        }
        final_loss = tuner.pass(
            retained,
            config.retain_batch_size,
            lr,
            &mut |batch, logits| {
                let teacher_logits = tch::no_grad(|| teacher.forward(&batch.x, false))?;
                Ok(cross_entropy(logits, &batch.labels)? * config.gamma
                    + distillation_kl(logits, &teacher_logits, temperature) * config.alpha)
            },
        )?;
    }
    Ok(FineTuneSummary {
        examples: tuner.examples,
        final_loss,
        head_refitted: false,
    })
}
