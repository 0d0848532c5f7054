//! `retrain`: one member range of an ensemble of subset models (an index build) or of oracles
//! (an audit). `build_index`: the reduce that estimates β from every range.

use std::ops::ControlFlow;
use std::path::Path;

use lethe_ml::attribution::{build_index, Estimator};
use lethe_ml::ensemble::{run_member_range, EnsembleEvent, EnsembleResults, EnsembleSpec};
use lethe_proto::lethe::v1::{IndexEstimator, IndexReport, RetrainReport};
use lethe_proto::tasks::{BuildIndexSpec, EnsembleTask, RetrainSpec};
use lethe_runner::{TaskContext, TaskError, TaskHandler, TaskOutput};

use super::{
    fetch_input, load_checkpoint, load_dataset, ml_error, put, stop_if_cancelled, workspace,
};

/// What `run_member_range` names its files; the reduce rebuilds the directory from them.
const MANIFEST: &str = "ensemble.json";

pub(super) struct Retrain {
    pub(super) device: tch::Device,
}

pub(super) struct BuildIndex;

/// The ensemble a task describes, with the architecture and recipe of its model.
fn ensemble_spec(
    context: &TaskContext,
    task: &EnsembleTask,
    dir: &Path,
    device: tch::Device,
) -> Result<(EnsembleSpec, lethe_ml::data::Dataset), TaskError> {
    let data = load_dataset(context, &task.dataset, dir)?;
    let (_, info, _) = load_checkpoint(
        context,
        &task.model,
        dir,
        "model.safetensors",
        &data,
        device,
    )?;
    let recipe = info.recipe.ok_or_else(|| {
        TaskError::Fatal(format!(
            "checkpoint {} records no training recipe, so it cannot be retrained",
            task.model.uri
        ))
    })?;
    let ensemble = EnsembleSpec {
        model: info.model,
        recipe,
        members: task.members,
        alpha: task.alpha,
        base_seed: task.seed,
        group_size: task.members_per_task,
        exclude: task.exclude.clone(),
        keep_weights: task.keep_weights,
    };
    ensemble
        .validate(data.num_train)
        .map_err(|e| TaskError::Fatal(e.to_string()))?;
    Ok((ensemble, data))
}

impl TaskHandler for Retrain {
    type Spec = RetrainSpec;
    type Report = RetrainReport;

    fn run(
        &self,
        task: RetrainSpec,
        context: &TaskContext,
    ) -> Result<TaskOutput<RetrainReport>, TaskError> {
        let dir = workspace()?;
        let (ensemble, data) = ensemble_spec(context, &task.ensemble, dir.path(), self.device)?;
        let members = task.start..task.end;
        if !ensemble.groups().contains(&members) {
            return Err(TaskError::Fatal(format!(
                "members {members:?} are not one group of {} in an ensemble of {}",
                ensemble.group_size, ensemble.members
            )));
        }
        stop_if_cancelled(context)?;
        let mut val_accuracy = Vec::new();
        let mut events = |event: EnsembleEvent| match event {
            EnsembleEvent::Step { progress, .. } => context.report(
                progress.epoch as f64 / progress.epochs.max(1) as f64,
                format!(
                    "members {}..{}: epoch {}/{}",
                    task.start, task.end, progress.epoch, progress.epochs
                ),
            ),
            EnsembleEvent::GroupFinished {
                val_accuracy: accuracy,
                ..
            } => val_accuracy = accuracy,
            _ => {}
        };
        run_member_range(
            &ensemble,
            &data,
            dir.path(),
            members.clone(),
            self.device,
            &mut events,
        )
        .map_err(ml_error)?;
        stop_if_cancelled(context)?;
        let group = dir.path().join(group_file(&members));
        let artifacts = vec![
            put(context, "members", &group)?,
            put(context, "manifest", &dir.path().join(MANIFEST))?,
        ];
        let mean = val_accuracy.iter().sum::<f64>() / val_accuracy.len().max(1) as f64;
        Ok(TaskOutput {
            artifacts,
            report: RetrainReport {
                member_start: task.start as u64,
                member_end: task.end as u64,
                val_accuracy_mean: mean,
            },
        })
    }
}

fn group_file(members: &std::ops::Range<usize>) -> String {
    format!(
        "members-{:06}-{:06}.safetensors",
        members.start, members.end
    )
}

/// Rebuilds an ensemble directory in `dir` from the `members` and `manifest` inputs of the
/// `retrain` tasks whose ensemble `wanted` accepts (an audit has two: oracles and originals).
pub(super) fn gather_ensemble(
    context: &TaskContext,
    dir: &Path,
    wanted: impl Fn(&EnsembleTask) -> bool,
) -> Result<EnsembleResults, TaskError> {
    let mut retrains = Vec::new();
    for input in &context.inputs {
        if input.task_kind != lethe_proto::tasks::RETRAIN {
            continue;
        }
        let range: RetrainSpec = serde_json::from_value(input.task_spec.clone())
            .map_err(|e| TaskError::Fatal(format!("retrain input spec: {e}")))?;
        if wanted(&range.ensemble) {
            retrains.push((input, range));
        }
    }
    let (manifest, _) = retrains
        .iter()
        .find(|(input, _)| input.name == "manifest")
        .ok_or_else(|| TaskError::Fatal("no `manifest` input".into()))?;
    fetch_input(context, manifest, &dir.join(MANIFEST))?;
    for (input, range) in retrains.iter().filter(|(input, _)| input.name == "members") {
        stop_if_cancelled(context)?;
        fetch_input(
            context,
            input,
            &dir.join(group_file(&(range.start..range.end))),
        )?;
    }
    EnsembleResults::load(dir).map_err(ml_error)
}

impl TaskHandler for BuildIndex {
    type Spec = BuildIndexSpec;
    type Report = IndexReport;

    fn needs_inputs(&self) -> bool {
        true
    }

    fn run(
        &self,
        task: BuildIndexSpec,
        context: &TaskContext,
    ) -> Result<TaskOutput<IndexReport>, TaskError> {
        let dir = workspace()?;
        let ensemble = gather_ensemble(context, dir.path(), |_| true)?;
        if ensemble.seeds.len() != task.ensemble.members {
            return Err(TaskError::Fatal(format!(
                "the retrains hold {} members, the build asked for {}",
                ensemble.seeds.len(),
                task.ensemble.members
            )));
        }
        let accuracy = ensemble.val_accuracy();
        // Validation accuracy of the subset models: a retrain that learnt nothing would make
        // β noise, and this is where an operator sees it.
        let mean = accuracy.iter().sum::<f64>() / accuracy.len().max(1) as f64;
        let members = ensemble.seeds.len() as u32;
        let mut report = IndexReport {
            estimator: IndexEstimator::Subsample as i32,
            estimation_models: members,
            held_out_models: 0,
            members,
            num_train: ensemble.manifest.num_train,
            num_targets: ensemble.manifest.num_targets,
            dataset_sha256: ensemble.manifest.dataset_hash.clone(),
            subset_val_accuracy_mean: mean,
            noise_model: true,
            trak_scale: None,
        };
        if let Some(trak) = &task.trak {
            let (beta, scale) =
                super::trak::reduce(context, &task.ensemble, trak, &ensemble, dir.path())?;
            report.estimator = IndexEstimator::Trak as i32;
            report.estimation_models = trak.checkpoints as u32;
            // TRAK is estimated from the checkpoints; the subset retrains only calibrate it.
            report.held_out_models = members;
            report.trak_scale = Some(scale);
            let mut artifacts = vec![put(context, "beta", &beta)?];
            // A build of two or more checkpoints measures its noise (one cannot).
            let noise = lethe_ml::unlearn::targets::IndexNoise::path_for(&beta);
            report.noise_model = noise.is_file();
            if noise.is_file() {
                artifacts.push(put(context, "beta_noise", &noise)?);
            }
            return Ok(TaskOutput { artifacts, report });
        }
        let beta = dir.path().join("beta.safetensors");
        let rows = ensemble.manifest.num_train.max(1) as f64;
        let mut progress = |done: lethe_ml::attribution::subsample::BuildProgress| {
            context.report(done.rows_done as f64 / rows, "estimating β");
            if context.is_cancelled() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        };
        let built = build_index(
            &ensemble,
            0..ensemble.seeds.len(),
            Estimator::Subsample,
            &beta,
            &mut progress,
        )
        .map_err(ml_error)?;
        if !built.complete {
            return Err(TaskError::Cancelled);
        }
        let noise = lethe_ml::unlearn::targets::IndexNoise::path_for(&beta);
        Ok(TaskOutput {
            artifacts: vec![
                put(context, "beta", &beta)?,
                put(context, "beta_noise", &noise)?,
            ],
            report,
        })
    }
}
