//! TRAK's distributed stages: `trak_checkpoints` trains the checkpoints, each `trak_shard`
//! featurises a range of the training split with all of them, and `build_index` (with TRAK
//! settings) reduces the shards into β, calibrated on the subset retrains.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lethe_ml::attribution::trak::{
    featurize_shard, load_checkpoints, train_checkpoints, write_trak_index, TrakConfig, TrakShard,
};
use lethe_ml::data::Dataset;
use lethe_ml::ensemble::EnsembleResults;
use lethe_ml::tensorio;
use lethe_proto::lethe::v1::{TrakCheckpointsReport, TrakShardReport};
use lethe_proto::tasks::{EnsembleTask, TrakCheckpointsSpec, TrakSettings, TrakShardSpec};
use lethe_runner::{TaskContext, TaskError, TaskHandler, TaskOutput};
use tch::{Kind, Tensor};

use super::{
    fetch_input, inputs_named, load_checkpoint, load_dataset, ml_error, put, stop_if_cancelled,
    workspace,
};

pub(super) struct TrakCheckpoints;

pub(super) struct TrakFeatures;

/// The TRAK configuration of a task: the architecture and recipe of its model's checkpoint.
fn trak_config(
    context: &TaskContext,
    ensemble: &EnsembleTask,
    trak: &TrakSettings,
    dir: &Path,
) -> Result<(TrakConfig, Dataset), TaskError> {
    let data = load_dataset(context, &ensemble.dataset, dir)?;
    // TRAK runs on the CPU: its featurisation is blocks of small matrix products.
    let (_, info, _) = load_checkpoint(
        context,
        &ensemble.model,
        dir,
        "model.safetensors",
        &data,
        tch::Device::Cpu,
    )?;
    let recipe = info.recipe.ok_or_else(|| {
        TaskError::Fatal(format!(
            "checkpoint {} records no training recipe",
            ensemble.model.uri
        ))
    })?;
    let config = TrakConfig {
        model: info.model,
        recipe,
        checkpoints: trak.checkpoints,
        projection_dim: trak.projection_dim,
        seed: trak.seed,
        relative_damping: trak.relative_damping,
        save_checkpoints: Some(dir.to_owned()),
    };
    Ok((config, data))
}

fn checkpoint_name(member: usize) -> String {
    format!("checkpoint-{member}")
}

/// Downloads the `checkpoint-K` inputs into `dir` and loads them as one model.
fn gather_checkpoints(
    context: &TaskContext,
    config: &TrakConfig,
    data: &Dataset,
    dir: &Path,
) -> Result<lethe_ml::attribution::trak::TrakCheckpoints, TaskError> {
    let mut paths: Vec<PathBuf> = Vec::new();
    for member in 0..config.checkpoints {
        let name = checkpoint_name(member);
        let input = inputs_named(context, &name)
            .first()
            .copied()
            .ok_or_else(|| TaskError::Fatal(format!("no `{name}` input")))?;
        let path = dir.join(format!("{name}.safetensors"));
        fetch_input(context, input, &path)?;
        paths.push(path);
    }
    let paths: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    load_checkpoints(config, data, &paths).map_err(ml_error)
}

impl TaskHandler for TrakCheckpoints {
    type Spec = TrakCheckpointsSpec;
    type Report = TrakCheckpointsReport;

    fn run(
        &self,
        task: TrakCheckpointsSpec,
        context: &TaskContext,
    ) -> Result<TaskOutput<TrakCheckpointsReport>, TaskError> {
        let dir = workspace()?;
        let (config, data) = trak_config(context, &task.ensemble, &task.trak, dir.path())?;
        stop_if_cancelled(context)?;
        context.report(0.1, format!("training {} checkpoints", config.checkpoints));
        train_checkpoints(&data, &config).map_err(ml_error)?;
        stop_if_cancelled(context)?;
        let artifacts = (0..config.checkpoints)
            .map(|member| {
                let path = dir.path().join(format!("checkpoint-{member}.safetensors"));
                put(context, &checkpoint_name(member), &path)
            })
            .collect::<Result<_, _>>()?;
        Ok(TaskOutput {
            artifacts,
            report: TrakCheckpointsReport {
                checkpoints: config.checkpoints as u32,
            },
        })
    }
}

impl TaskHandler for TrakFeatures {
    type Spec = TrakShardSpec;
    type Report = TrakShardReport;

    fn needs_inputs(&self) -> bool {
        true
    }

    fn run(
        &self,
        task: TrakShardSpec,
        context: &TaskContext,
    ) -> Result<TaskOutput<TrakShardReport>, TaskError> {
        let dir = workspace()?;
        let (config, data) = trak_config(context, &task.ensemble, &task.trak, dir.path())?;
        let examples = task.examples(data.num_train);
        let report = TrakShardReport {
            example_start: examples.start,
            example_end: examples.end,
        };
        if examples.is_empty() {
            // A shard past the end of a small training split: nothing to featurise.
            return Ok(TaskOutput::report(report));
        }
        let checkpoints = gather_checkpoints(context, &config, &data, dir.path())?;
        stop_if_cancelled(context)?;
        context.report(0.2, format!("featurising examples {examples:?}"));
        let shard =
            featurize_shard(&checkpoints, &config, &data, examples.clone()).map_err(ml_error)?;
        let path = dir.path().join(format!(
            "trak-features-{:08}-{:08}.safetensors",
            examples.start, examples.end
        ));
        let mut metadata = BTreeMap::new();
        metadata.insert("start".to_owned(), examples.start.to_string());
        metadata.insert("end".to_owned(), examples.end.to_string());
        metadata.insert("seconds".to_owned(), shard.seconds.to_string());
        tensorio::write_safetensors(
            &path,
            &[
                ("features".to_owned(), shard.features),
                ("out_to_loss".to_owned(), shard.out_to_loss),
                ("gram".to_owned(), shard.gram.to_kind(Kind::Double)),
            ],
            &metadata,
        )
        .map_err(ml_error)?;
        Ok(TaskOutput {
            artifacts: vec![put(context, "trak_features", &path)?],
            report,
        })
    }
}

/// The reduce for TRAK: β from the checkpoints and every shard, calibrated on all the subset
/// retrains. Returns β's path and the calibrated scale.
pub(super) fn reduce(
    context: &TaskContext,
    ensemble_task: &EnsembleTask,
    trak: &TrakSettings,
    ensemble: &EnsembleResults,
    dir: &Path,
) -> Result<(PathBuf, f64), TaskError> {
    let (config, data) = trak_config(context, ensemble_task, trak, dir)?;
    let checkpoints = gather_checkpoints(context, &config, &data, dir)?;
    let mut shards = Vec::new();
    for input in inputs_named(context, "trak_features") {
        stop_if_cancelled(context)?;
        let path = dir.join(format!("features-{}.safetensors", input.task_id));
        fetch_input(context, input, &path)?;
        let file = tensorio::read_safetensors(&path).map_err(ml_error)?;
        let bound = |key: &str| -> Result<i64, TaskError> {
            file.metadata
                .get(key)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| TaskError::Fatal(format!("features file without `{key}`")))
        };
        let tensor = |name: &str| -> Result<Tensor, TaskError> {
            file.get(name)
                .map(Tensor::shallow_clone)
                .ok_or_else(|| TaskError::Fatal(format!("features file without `{name}`")))
        };
        shards.push(TrakShard {
            examples: bound("start")?..bound("end")?,
            features: tensor("features")?,
            out_to_loss: tensor("out_to_loss")?,
            gram: tensor("gram")?,
            seconds: file
                .metadata
                .get("seconds")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0),
        });
    }
    shards.sort_by_key(|shard| shard.examples.start);
    let beta = dir.join("beta.safetensors");
    let rows = data.num_train.max(1) as f64;
    let built = write_trak_index(
        &checkpoints,
        &config,
        &data,
        &shards,
        ensemble,
        0..ensemble.seeds.len(),
        &beta,
        &mut |done| {
            context.report(done.rows_done as f64 / rows, "writing β (TRAK)");
            if context.is_cancelled() {
                std::ops::ControlFlow::Break(())
            } else {
                std::ops::ControlFlow::Continue(())
            }
        },
    )
    .map_err(ml_error)?;
    if !built.complete {
        return Err(TaskError::Cancelled);
    }
    Ok((beta, built.scale))
}
