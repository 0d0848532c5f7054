//! TRAK (Park et al., 2023) for any network, per logit, calibrated to logit units.
//!
//! For each of K checkpoints (models trained on the whole training split with their own seeds):
//! - training examples are featurised by the projected gradient of their margin
//!   f = z_y − logsumexp_{j≠y} z_j (TRAK's model output for classification), and get the
//!   out-to-loss weight q = 1 − p_y;
//! - targets are featurised by the projected gradient of each logit z_c;
//! - X = Φ_trainᵀΦ_train is accumulated from shards of examples, and the scores are
//!   Φ_train (X + λI)⁻¹ Φ_target,cᵀ.
//!
//! Scores are averaged over checkpoints and multiplied row-wise by the average q, then by one
//! scale, fitted by least squares on subset retrains so that β is in logit units and can stand
//! in for the estimators of [`super::subsample`]: the predicted change of a retrain's logits,
//! Σ_i (a_i − p_i)·β_i, is regressed on the actual change.
//!
//! With two or more checkpoints the index also gets a noise model: how much the checkpoints'
//! own scores disagree, so that denoising and the confidence figure work as for the linear
//! estimators.
//!
//! Per-example gradients come from the hand-written MLP featuriser ([`mlp_gradients`]) or,
//! for every other network, from autograd ([`autograd_gradients`]).

mod autograd_gradients;
mod mlp_gradients;

use std::collections::BTreeMap;
use std::ops::{ControlFlow, Range};
use std::path::Path;

use tch::{Device, Kind, Tensor};

use autograd_gradients::AutogradGradients;
use mlp_gradients::MlpWeights;

use super::beta_file::{BetaShape, BetaWriter};
use super::projection::{ParameterShape, Projection};
use super::subsample::BuildProgress;
use crate::data::Dataset;
use crate::ensemble::EnsembleResults;
use crate::error::{MlError, Result};
use crate::model::{Model, ModelSpec};
use crate::recipe::Recipe;
use crate::seed;
use crate::train::train;
use crate::unlearn::targets::IndexNoise;

/// Examples featurised at once.
const SHARD: i64 = 512;
/// Rows of β computed at once.
const ROW_BLOCK: i64 = 256;

/// How to build a TRAK index.
#[derive(Debug, Clone, PartialEq)]
pub struct TrakConfig {
    pub model: ModelSpec,
    pub recipe: Recipe,
    pub checkpoints: usize,
    pub projection_dim: i64,
    pub seed: u64,
    /// Ridge term of X + λI, relative to the mean of X's diagonal.
    pub relative_damping: f64,
    /// Where to save the checkpoints as Lethe checkpoints (`checkpoint-K.safetensors`), so that
    /// another tool can be run on the very same models.
    pub save_checkpoints: Option<std::path::PathBuf>,
}

/// One checkpoint's per-example gradient featuriser.
enum Featurizer {
    Mlp(MlpWeights),
    Autograd(AutogradGradients),
}

impl Featurizer {
    fn of_checkpoint(checkpoint: &Model) -> Result<Self> {
        Ok(match checkpoint.spec {
            ModelSpec::Mlp { .. } => Featurizer::Mlp(MlpWeights::of_member(checkpoint, 0)?),
            _ => Featurizer::Autograd(AutogradGradients::of_checkpoint(checkpoint)?),
        })
    }

    fn parameter_shapes(&self) -> Vec<ParameterShape> {
        match self {
            Featurizer::Mlp(weights) => weights.parameter_shapes(),
            Featurizer::Autograd(gradients) => gradients.parameter_shapes(),
        }
    }

    /// Margin gradients (`len × k`) and out-to-loss weights 1 − p_y (`len`) of `x`, `y`.
    fn train_block(
        &mut self,
        projection: &Projection,
        x: &Tensor,
        y: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (block, logits) = match self {
            Featurizer::Mlp(weights) => {
                let flat = x.view([x.size()[0], -1]);
                let (inputs, logits) = weights.forward(&flat);
                // ∂margin/∂z = e_y − softmax over the other classes.
                let label = y.unsqueeze(1);
                let others = logits
                    .scatter_value(1, &label, f64::NEG_INFINITY)
                    .softmax(1, Kind::Float);
                let output_weights = -others.scatter_value(1, &label, -1.0);
                (
                    weights.projected_gradients(projection, &inputs, &output_weights),
                    logits,
                )
            }
            Featurizer::Autograd(gradients) => gradients.margin_gradients(projection, x, y)?,
        };
        let out_to_loss = 1.0
            - logits
                .softmax(1, Kind::Float)
                .gather(1, &y.unsqueeze(1), false)
                .squeeze_dim(1);
        Ok((block, out_to_loss))
    }

    /// Per-logit gradients of `x`: `len × C × k`.
    fn target_block(
        &mut self,
        projection: &Projection,
        x: &Tensor,
        classes: i64,
    ) -> Result<Tensor> {
        match self {
            Featurizer::Mlp(weights) => {
                let len = x.size()[0];
                let (inputs, _) = weights.forward(&x.view([len, -1]));
                // Each (example, class) pair is one row: repeat the activations C times.
                let repeated: Vec<Tensor> = inputs
                    .iter()
                    .map(|input| input.repeat_interleave_self_int(classes, 0, None))
                    .collect();
                let output_weights =
                    Tensor::eye(classes, (Kind::Float, Device::Cpu)).repeat([len, 1]);
                let projected = weights.projected_gradients(projection, &repeated, &output_weights);
                Ok(projected.view([len, classes, projection.dim]))
            }
            Featurizer::Autograd(gradients) => gradients.logit_gradients(projection, x),
        }
    }
}

/// Train-side features of one checkpoint for `examples` (margin gradients, `len × k`), their
/// out-to-loss weights, and their part of X = ΦᵀΦ (`k × k`, float64), summed over blocks of
/// [`SHARD`] examples in order.
fn train_features(
    featurizer: &mut Featurizer,
    projection: &Projection,
    data: &Dataset,
    examples: Range<i64>,
) -> Result<(Tensor, Tensor, Tensor)> {
    let mut features = Vec::new();
    let mut out_to_loss = Vec::new();
    let mut gram = Tensor::zeros(
        [projection.dim, projection.dim],
        (Kind::Double, Device::Cpu),
    );
    for start in examples.clone().step_by(SHARD as usize) {
        let len = SHARD.min(examples.end - start);
        let x = data.x.narrow(0, start, len);
        let y = data.y.narrow(0, start, len);
        let (block, q) = featurizer.train_block(projection, &x, &y)?;
        let wide = block.to_kind(Kind::Double);
        gram += wide.transpose(0, 1).matmul(&wide);
        features.push(block);
        out_to_loss.push(q);
    }
    Ok((
        Tensor::cat(&features, 0),
        Tensor::cat(&out_to_loss, 0),
        gram,
    ))
}

/// Target-side features of one checkpoint: per-logit gradients, `T × C × k`.
fn target_features(
    featurizer: &mut Featurizer,
    projection: &Projection,
    data: &Dataset,
) -> Result<Tensor> {
    let mut features = Vec::new();
    for start in (0..data.num_targets()).step_by(SHARD as usize) {
        let len = SHARD.min(data.num_targets() - start);
        let x = data.x.narrow(0, start, len);
        features.push(featurizer.target_block(projection, &x, data.num_classes)?);
    }
    Ok(Tensor::cat(&features, 0))
}

/// What a TRAK build did.
#[derive(Debug, Clone, PartialEq)]
pub struct TrakBuild {
    pub complete: bool,
    /// The multiplier that puts raw scores in logit units.
    pub scale: f64,
    /// Training examples featurised per second (margin gradients, projected), over all
    /// checkpoints.
    pub featurize_examples_per_s: f64,
}

/// Builds a TRAK index for `data` and writes it to `out`, calibrated on the members
/// `calibration` of `ensemble` (subset retrains of the same data and model): the checkpoints,
/// one shard of features over the whole training split, and the reduce, in one process.
pub fn build_trak_index(
    data: &Dataset,
    config: &TrakConfig,
    ensemble: &EnsembleResults,
    calibration: Range<usize>,
    out: &Path,
    progress: &mut dyn FnMut(BuildProgress) -> ControlFlow<()>,
) -> Result<TrakBuild> {
    check_calibration(config, ensemble, &calibration, data)?;
    let checkpoints = train_checkpoints(data, config)?;
    let shard = featurize_shard(&checkpoints, config, data, 0..data.num_train)?;
    write_trak_index(
        &checkpoints,
        config,
        data,
        &[shard],
        ensemble,
        calibration,
        out,
        progress,
    )
}

fn check_calibration(
    config: &TrakConfig,
    ensemble: &EnsembleResults,
    calibration: &Range<usize>,
    data: &Dataset,
) -> Result<()> {
    if config.checkpoints == 0 || calibration.len() < 2 || calibration.end > ensemble.seeds.len() {
        return Err(MlError::spec(
            "TRAK",
            format!(
                "needs at least one checkpoint and two calibration members inside 0..{}",
                ensemble.seeds.len()
            ),
        ));
    }
    if ensemble.manifest.dataset_hash != data.content_hash {
        return Err(MlError::spec(
            "TRAK",
            "the ensemble was trained on other data",
        ));
    }
    Ok(())
}

/// The K checkpoints of an index, one single-member model each, on the CPU.
pub struct TrakCheckpoints {
    pub models: Vec<Model>,
}

impl TrakCheckpoints {
    pub fn len(&self) -> usize {
        self.models.len()
    }

    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }
}

/// The K checkpoints of the index (`config.checkpoints` models, each trained on the whole
/// training split with its own seed), on the CPU; saved as Lethe checkpoints when
/// `config.save_checkpoints` says where. Zoo networks train as one ensemble; a TorchScript
/// module, which holds one model, trains K times from its file's weights.
pub fn train_checkpoints(data: &Dataset, config: &TrakConfig) -> Result<TrakCheckpoints> {
    if config.checkpoints == 0 {
        return Err(MlError::spec("TRAK", "needs at least one checkpoint"));
    }
    let data = data.to_device(Device::Cpu);
    let seeds = checkpoint_seeds(config);
    let new_model = |seeds: &[u64]| {
        Model::new(
            &config.model,
            seeds,
            &data.sample_shape,
            data.num_classes,
            Device::Cpu,
        )
    };
    let models = if matches!(config.model, ModelSpec::Torchscript { .. }) {
        seeds
            .iter()
            .map(|seed| {
                let mut model = new_model(&[*seed])?;
                train(
                    &mut model,
                    &data,
                    &[data.train_indices()],
                    &config.recipe,
                    &mut |_| {},
                )?;
                Ok(model)
            })
            .collect::<Result<Vec<_>>>()?
    } else {
        let mut model = new_model(&seeds)?;
        let everything = vec![data.train_indices(); seeds.len()];
        train(&mut model, &data, &everything, &config.recipe, &mut |_| {})?;
        (0..seeds.len() as i64)
            .map(|member| model.select_member(member))
            .collect::<Result<Vec<_>>>()?
    };
    if let Some(dir) = &config.save_checkpoints {
        for (member, (model, member_seed)) in models.iter().zip(&seeds).enumerate() {
            let info = crate::checkpoint::CheckpointInfo {
                model: config.model.clone(),
                sample_shape: data.sample_shape.clone(),
                num_classes: data.num_classes,
                seed: *member_seed,
                dataset_hash: Some(data.content_hash.clone()),
                recipe: Some(config.recipe.clone()),
                lineage: None,
            };
            crate::checkpoint::save_member(
                model,
                0,
                &info,
                &dir.join(format!("checkpoint-{member}.safetensors")),
            )?;
        }
    }
    Ok(TrakCheckpoints { models })
}

/// The checkpoints saved by [`train_checkpoints`] (`checkpoint-K.safetensors`, in order):
/// what the shards and the reduce of a distributed build load.
pub fn load_checkpoints(
    config: &TrakConfig,
    data: &Dataset,
    paths: &[&Path],
) -> Result<TrakCheckpoints> {
    if paths.len() != config.checkpoints {
        return Err(MlError::spec(
            "TRAK",
            format!(
                "{} checkpoint files for {} checkpoints",
                paths.len(),
                config.checkpoints
            ),
        ));
    }
    let models = paths
        .iter()
        .zip(checkpoint_seeds(config))
        .map(|(path, seed)| {
            let mut model = Model::new(
                &config.model,
                &[seed],
                &data.sample_shape,
                data.num_classes,
                Device::Cpu,
            )?;
            let file = crate::tensorio::read_safetensors(path)?;
            model.load_member_state(0, &file.tensors, path)?;
            Ok(model)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(TrakCheckpoints { models })
}

/// The seeds of the checkpoints, member by member.
pub fn checkpoint_seeds(config: &TrakConfig) -> Vec<u64> {
    (0..config.checkpoints)
        .map(|index| seed::member_seed(config.seed, index as u64))
        .collect()
}

/// The train-side features of a range of training examples for every checkpoint: what one
/// shard of a distributed build computes. The reduce sums the shards' X and stacks their
/// features, so a build split into shards aligned to 512 examples writes what one shard would.
#[derive(Debug)]
pub struct TrakShard {
    pub examples: Range<i64>,
    /// `K × len × k`, float32.
    pub features: Tensor,
    /// `K × len`: each example's out-to-loss weight 1 − p_y.
    pub out_to_loss: Tensor,
    /// `K × k × k`, float64: this shard's part of X = ΦᵀΦ.
    pub gram: Tensor,
    pub seconds: f64,
}

fn checkpoint_projection(config: &TrakConfig, featurizer: &Featurizer) -> Result<Projection> {
    Projection::new(
        seed::mix_seed(config.seed, 0x7a4b),
        config.projection_dim,
        &featurizer.parameter_shapes(),
    )
}

/// Featurises `examples` with every member of `checkpoints`.
pub fn featurize_shard(
    checkpoints: &TrakCheckpoints,
    config: &TrakConfig,
    data: &Dataset,
    examples: Range<i64>,
) -> Result<TrakShard> {
    if examples.is_empty() || examples.start < 0 || examples.end > data.num_train {
        return Err(MlError::spec(
            "TRAK shard",
            format!(
                "examples {examples:?} are not a range inside 0..{}",
                data.num_train
            ),
        ));
    }
    let started = std::time::Instant::now();
    let data = data.to_device(Device::Cpu);
    let (mut features, mut out_to_loss, mut grams) = (Vec::new(), Vec::new(), Vec::new());
    for checkpoint in &checkpoints.models {
        let mut featurizer = Featurizer::of_checkpoint(checkpoint)?;
        let projection = checkpoint_projection(config, &featurizer)?;
        let (phi, q, gram) = train_features(&mut featurizer, &projection, &data, examples.clone())?;
        features.push(phi);
        out_to_loss.push(q);
        grams.push(gram);
    }
    Ok(TrakShard {
        examples,
        features: Tensor::stack(&features, 0),
        out_to_loss: Tensor::stack(&out_to_loss, 0),
        gram: Tensor::stack(&grams, 0),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The reduce of a TRAK build: from the checkpoints and the shards (in order, covering the
/// training split), the scores, their calibration on `calibration` members of `ensemble`, and
/// β written to `out`.
#[allow(clippy::too_many_arguments)]
pub fn write_trak_index(
    checkpoints: &TrakCheckpoints,
    config: &TrakConfig,
    data: &Dataset,
    shards: &[TrakShard],
    ensemble: &EnsembleResults,
    calibration: Range<usize>,
    out: &Path,
    progress: &mut dyn FnMut(BuildProgress) -> ControlFlow<()>,
) -> Result<TrakBuild> {
    check_calibration(config, ensemble, &calibration, data)?;
    if checkpoints.len() != config.checkpoints {
        return Err(MlError::spec(
            "TRAK",
            format!(
                "{} checkpoints given, the config names {}",
                checkpoints.len(),
                config.checkpoints
            ),
        ));
    }
    let mut covered = 0;
    for shard in shards {
        if shard.examples.start != covered || shard.features.size()[0] != checkpoints.len() as i64 {
            return Err(MlError::spec(
                "TRAK",
                format!(
                    "shard {:?} does not continue the shards before it at {covered}, or has \
                     another number of checkpoints",
                    shard.examples
                ),
            ));
        }
        covered = shard.examples.end;
    }
    if covered != data.num_train {
        return Err(MlError::spec(
            "TRAK",
            format!(
                "the shards cover 0..{covered}, the training split is 0..{}",
                data.num_train
            ),
        ));
    }
    let data = data.to_device(Device::Cpu);
    let featurize_seconds: f64 = shards.iter().map(|shard| shard.seconds).sum();
    let mut scorers = Vec::new();
    let mut targets = Vec::new();
    let mut out_to_loss = Tensor::zeros([data.num_train], (Kind::Float, Device::Cpu));
    for (member, checkpoint) in checkpoints.models.iter().enumerate() {
        let member = member as i64;
        let mut featurizer = Featurizer::of_checkpoint(checkpoint)?;
        let projection = checkpoint_projection(config, &featurizer)?;
        let features = Tensor::cat(
            &shards
                .iter()
                .map(|shard| shard.features.get(member))
                .collect::<Vec<_>>(),
            0,
        );
        let q = Tensor::cat(
            &shards
                .iter()
                .map(|shard| shard.out_to_loss.get(member))
                .collect::<Vec<_>>(),
            0,
        );
        // X = Σ over shards of ΦᵀΦ.
        let mut gram = Tensor::zeros(
            [config.projection_dim, config.projection_dim],
            (Kind::Double, Device::Cpu),
        );
        for shard in shards {
            gram += shard.gram.get(member);
        }
        let damping =
            config.relative_damping * gram.diagonal(0, 0, 1).mean(Kind::Double).double_value(&[]);
        let inverse = Tensor::f_linalg_inv(
            &(gram + Tensor::eye(config.projection_dim, (Kind::Double, Device::Cpu)) * damping),
        )?;
        scorers.push(
            features
                .to_kind(Kind::Double)
                .matmul(&inverse)
                .to_kind(Kind::Float),
        );
        // Kept as float32 `k × (T·C)`: every block of rows of β multiplies by all of it.
        targets.push(
            target_features(&mut featurizer, &projection, &data)?
                .view([-1, config.projection_dim])
                .to_kind(Kind::Float)
                .transpose(0, 1)
                .contiguous(),
        );
        out_to_loss += q;
    }
    let out_to_loss = out_to_loss / config.checkpoints as f64;
    let featurize_examples_per_s = (data.num_train as f64 * config.checkpoints as f64)
        / featurize_seconds.max(f64::MIN_POSITIVE);
    let checkpoint_count = config.checkpoints as f64;
    // Rows `start..start + len` of the raw scores (`len × T·C`), and, with two or more
    // checkpoints, the variance of that mean over checkpoints.
    let rows_and_spread = |start: i64, len: i64, spread: bool| -> (Tensor, Option<Tensor>) {
        let q = out_to_loss.narrow(0, start, len).unsqueeze(1);
        let shape = [len, data.num_targets() * data.num_classes];
        let mut sum = Tensor::zeros(shape, (Kind::Float, Device::Cpu));
        let mut sum_sq = Tensor::zeros(shape, (Kind::Float, Device::Cpu));
        for (scorer, target) in scorers.iter().zip(&targets) {
            let own = scorer.narrow(0, start, len).matmul(target) * &q;
            if spread {
                sum_sq += own.square();
            }
            sum += own;
        }
        let mean = sum / checkpoint_count;
        let variance = (spread && config.checkpoints > 1).then(|| {
            ((sum_sq / checkpoint_count - mean.square())
                * (checkpoint_count / (checkpoint_count - 1.0)))
                .clamp_min(0.0)
                / checkpoint_count
        });
        (mean, variance)
    };
    let raw_rows = |start: i64, len: i64| rows_and_spread(start, len, false).0;

    // Calibration: least squares of the actual change of the calibration retrains' logits on
    // the change the raw scores predict. It takes a pass over all rows of β before the one that
    // writes them: the scale goes in the file header, which is written first and identifies a
    // build when it resumes.
    let (cal_start, cal_len) = (calibration.start as i64, calibration.len() as i64);
    let masks = ensemble
        .masks
        .narrow(0, cal_start, cal_len)
        .to_kind(Kind::Float);
    let centred = &masks - masks.mean_dim(0, true, Kind::Float);
    let logits = ensemble
        .logits
        .narrow(0, cal_start, cal_len)
        .to_kind(Kind::Float)
        .reshape([cal_len, -1]);
    let actual = &logits - logits.mean_dim(0, true, Kind::Float);
    let mut predicted = Tensor::zeros_like(&actual);
    // The noise model: the variance of each entry of β (raw units) over the checkpoints,
    // approximated as source weight × target variance, the factored form of the linear
    // estimators' noise (IndexNoise), with the same marginals.
    let mut source_variance = Vec::new();
    let mut target_variance = Tensor::zeros(
        [data.num_targets() * data.num_classes],
        (Kind::Double, Device::Cpu),
    );
    for start in (0..data.num_train).step_by(ROW_BLOCK as usize) {
        let len = ROW_BLOCK.min(data.num_train - start);
        let (rows, variance) = rows_and_spread(start, len, true);
        predicted += centred.narrow(1, start, len).matmul(&rows);
        if let Some(variance) = variance {
            let variance = variance.to_kind(Kind::Double);
            source_variance.push(variance.mean_dim([1].as_slice(), false, Kind::Double));
            target_variance += variance.sum_dim_intlist([0].as_slice(), false, Kind::Double);
        }
    }
    let scale = (&predicted * &actual).sum(Kind::Double).double_value(&[])
        / predicted
            .square()
            .sum(Kind::Double)
            .double_value(&[])
            .max(f64::MIN_POSITIVE);

    let mut metadata = BTreeMap::new();
    metadata.insert("method".to_owned(), "trak".to_owned());
    metadata.insert(
        "ensemble_fingerprint".to_owned(),
        ensemble.manifest.fingerprint.clone(),
    );
    metadata.insert("dataset_hash".to_owned(), data.content_hash.clone());
    metadata.insert(
        "estimation_members".to_owned(),
        format!("{}..{}", calibration.start, calibration.end),
    );
    metadata.insert("num_train".to_owned(), data.num_train.to_string());
    metadata.insert(
        "trak_checkpoints".to_owned(),
        config.checkpoints.to_string(),
    );
    metadata.insert(
        "trak_projection_dim".to_owned(),
        config.projection_dim.to_string(),
    );
    metadata.insert("trak_seed".to_owned(), config.seed.to_string());
    // The calibrated values are far below float16's normal range: store the raw scores and let
    // the reader apply the scale.
    metadata.insert("scale".to_owned(), scale.to_string());
    let shape = BetaShape {
        sources: data.num_train,
        targets: data.num_targets(),
        classes: data.num_classes,
    };
    let mut writer = BetaWriter::create_or_resume(out, shape, &metadata)?;
    while writer.rows_written() < shape.sources {
        let start = writer.rows_written();
        let len = ROW_BLOCK.min(shape.sources - start);
        writer.append_rows(&raw_rows(start, len).view([len, shape.targets, shape.classes]))?;
        let reported = BuildProgress {
            rows_done: writer.rows_written(),
            rows_total: shape.sources,
        };
        if progress(reported).is_break() && writer.rows_written() < shape.sources {
            return Ok(TrakBuild {
                featurize_examples_per_s,
                complete: false,
                scale,
            });
        }
    }
    writer.finish()?;
    if !source_variance.is_empty() {
        let source_variance = Tensor::cat(&source_variance, 0);
        let mean = source_variance
            .mean(Kind::Double)
            .clamp_min(f64::MIN_POSITIVE);
        let noise = IndexNoise {
            target_std: (target_variance / data.num_train as f64)
                .sqrt()
                .view([data.num_targets(), data.num_classes])
                * scale.abs(),
            source_weight_sq: source_variance / mean,
            target_labels: None,
        };
        noise.write(out, &metadata)?;
    }
    Ok(TrakBuild {
        featurize_examples_per_s,
        complete: true,
        scale,
    })
}
