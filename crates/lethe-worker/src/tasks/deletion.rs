//! A deletion run's tasks. `predict`: DMM's predicted retrain logits on every target,
//! anchored at the model's latest anchor with everything forgotten since it. `match`: the matching fine-tune of
//! the latest version towards them, written as the next version with its lineage. `audit`:
//! KLoM of DMM applied the same way to independently trained originals, against oracles
//! retrained without the forgotten examples (docs/DESIGN.md §1.7), and how far the margins of the
//! version before and after lie from the oracles'.

use std::collections::BTreeMap;

use lethe_ml::audit::{MethodAudit, OracleReference, Splits};
use lethe_ml::checkpoint::{self, CheckpointInfo};
use lethe_ml::data::Dataset;
use lethe_ml::ensemble::load_members;
use lethe_ml::outputs::{margins, Outputs};
use lethe_ml::tensorio;
use lethe_ml::unlearn::confidence::{index_confidence, TargetConfidence};
use lethe_ml::unlearn::finetune::{match_targets, matching_examples, MatchingConfig};
use lethe_ml::unlearn::lineage::Lineage;
use lethe_ml::unlearn::targets::{dmm_targets, predicted_shift, AttributionIndex, IndexNoise};
use lethe_ml::unlearn::{unlearn, DmmSettings, ForgetSet, Method, MethodConfig, Resources};
use lethe_proto::lethe::v1::{
    AuditReport, DeletionMethod, FullRetrainReport, MarginGap, MatchReport, PredictReport,
    VersionMargins,
};
use lethe_proto::tasks::{AuditDmm, AuditSpec, FullRetrainSpec, MatchSpec, PredictSpec};
use lethe_runner::{TaskContext, TaskError, TaskHandler, TaskOutput};
use tch::{Kind, Tensor};

use super::ensemble::gather_ensemble;
use super::reports;
use super::{
    fetch, fetch_input, load_checkpoint, load_dataset, ml_error, one_input, put, stop_if_cancelled,
    workspace,
};

pub(super) struct Predict {
    pub(super) device: tch::Device,
}

pub(super) struct Match {
    pub(super) device: tch::Device,
}

pub(super) struct Audit {
    pub(super) device: tch::Device,
}

pub(super) struct FullRetrain {
    pub(super) device: tch::Device,
}

/// The training examples a fine-tune may use as retain points: neither forgotten now nor
/// excluded from the anchor's training.
fn retained_without(forgotten: &ForgetSet, excluded: &[i64], data: &Dataset) -> Vec<i64> {
    let excluded: std::collections::BTreeSet<i64> = excluded.iter().copied().collect();
    forgotten
        .retained(data.num_train)
        .into_iter()
        .filter(|i| !excluded.contains(i))
        .collect()
}

fn forget_set(indices: &[i64], data: &Dataset) -> Result<ForgetSet, TaskError> {
    ForgetSet::new(indices.to_vec(), data.num_train).map_err(ml_error)
}

/// Where the predicted targets file keeps their [`TargetConfidence`] (as JSON).
const CONFIDENCE_METADATA: &str = "confidence";

/// The `predict` task's output: the predicted logits on every target and their confidence.
struct PredictedTargets {
    logits: Tensor,
    confidence: Option<TargetConfidence>,
}

/// Fetches and reads the run's `targets` input.
fn read_targets(
    context: &TaskContext,
    dir: &std::path::Path,
) -> Result<PredictedTargets, TaskError> {
    let path = dir.join("targets.safetensors");
    fetch_input(context, one_input(context, "targets")?, &path)?;
    let file = tensorio::read_safetensors(&path).map_err(ml_error)?;
    let logits = file
        .get("logits")
        .map(Tensor::shallow_clone)
        .ok_or_else(|| TaskError::Fatal("targets file has no `logits`".into()))?;
    let confidence = file
        .metadata
        .get(CONFIDENCE_METADATA)
        .map(|text| serde_json::from_str::<TargetConfidence>(text))
        .transpose()
        .map_err(|e| TaskError::Fatal(format!("the targets' confidence is malformed: {e}")))?;
    Ok(PredictedTargets { logits, confidence })
}

/// A run with a minimum confidence needs targets that have one: an index without a noise
/// model (TRAK of one checkpoint) gives none, and the request cannot be held to its minimum.
fn required_confidence(
    confidence: Option<&TargetConfidence>,
    minimum: f64,
) -> Result<&TargetConfidence, TaskError> {
    confidence.ok_or_else(|| {
        TaskError::Fatal(format!(
            "the request asks for a confidence of at least {minimum}, but the model's index has no noise model (a TRAK index of one checkpoint), so its targets have no confidence figure"
        ))
    })
}

fn all_targets(data: &Dataset) -> Vec<i64> {
    (0..data.num_targets()).collect()
}

impl TaskHandler for Predict {
    type Spec = PredictSpec;
    type Report = PredictReport;

    fn run(
        &self,
        task: PredictSpec,
        context: &TaskContext,
    ) -> Result<TaskOutput<PredictReport>, TaskError> {
        let dir = workspace()?;
        let data = load_dataset(context, &task.dataset, dir.path())?;
        let forgotten = forget_set(&task.forgotten, &data)?;
        let (mut base, _, _) = load_checkpoint(
            context,
            &task.base,
            dir.path(),
            "base.safetensors",
            &data,
            self.device,
        )?;
        let beta = dir.path().join("beta.safetensors");
        fetch(context, &task.beta, &beta)?;
        if let Some(noise) = &task.beta_noise {
            fetch(context, noise, &IndexNoise::path_for(&beta))?;
        }
        stop_if_cancelled(context)?;
        context.report(0.3, "reading β rows of the forget set");
        let index = AttributionIndex::open(&beta).map_err(ml_error)?;
        let DmmSettings {
            denoise,
            multiplier,
            ..
        } = DmmSettings::shipped(&base.spec, &index);
        let targets = all_targets(&data);
        let anchor = Outputs::compute(&mut base, &data, &targets)
            .map_err(ml_error)?
            .logits;
        let shift = predicted_shift(&index, &forgotten, denoise).map_err(ml_error)?;
        let confidence =
            index_confidence(&index, &shift, multiplier, &forgotten).map_err(ml_error)?;
        let predicted = dmm_targets(&anchor, &shift, multiplier, &targets).map_err(ml_error)?;
        let path = dir.path().join("targets.safetensors");
        let mut metadata = BTreeMap::new();
        metadata.insert("forgotten".to_owned(), forgotten.len().to_string());
        if let Some(confidence) = &confidence {
            metadata.insert(
                CONFIDENCE_METADATA.to_owned(),
                serde_json::to_string(confidence).expect("the confidence serialises"),
            );
        }
        tensorio::write_safetensors(
            &path,
            &[("logits".to_owned(), predicted.get(0).to_kind(Kind::Float))],
            &metadata,
        )
        .map_err(ml_error)?;
        let forget_rows = Tensor::from_slice(forgotten.indices());
        let forget_shift = shift
            .index_select(0, &forget_rows)
            .abs()
            .mean(Kind::Float)
            .double_value(&[]);
        Ok(TaskOutput {
            artifacts: vec![put(context, "targets", &path)?],
            report: PredictReport {
                forgotten: forgotten.len() as u64,
                mean_abs_logit_shift_on_forget: forget_shift,
                confidence: confidence.as_ref().map(reports::confidence),
            },
        })
    }
}

impl TaskHandler for Match {
    type Spec = MatchSpec;
    type Report = MatchReport;

    fn needs_inputs(&self) -> bool {
        true
    }

    fn run(
        &self,
        task: MatchSpec,
        context: &TaskContext,
    ) -> Result<TaskOutput<MatchReport>, TaskError> {
        let dir = workspace()?;
        let data = load_dataset(context, &task.dataset, dir.path())?;
        let forgotten = forget_set(&task.forgotten, &data)?;
        let requested = forget_set(&task.requested, &data)?;
        let (mut current, info, current_sha256) = load_checkpoint(
            context,
            &task.current,
            dir.path(),
            "current.safetensors",
            &data,
            self.device,
        )?;
        let lineage = match &info.lineage {
            Some(lineage) => lineage.clone(),
            // The current version is version 0: it anchors the lineage.
            None => Lineage::start(current_sha256),
        };
        if let Some(expected) = &task.base.sha256 {
            if *expected != lineage.base_sha256 {
                return Err(TaskError::Fatal(format!(
                    "version {} descends from {}, not from the model's version 0 ({expected})",
                    lineage.version, lineage.base_sha256
                )));
            }
        }
        let PredictedTargets {
            logits: predicted,
            confidence,
        } = read_targets(context, dir.path())?;
        if let Some(minimum) = task.min_confidence {
            let trusted = required_confidence(confidence.as_ref(), minimum)?;
            if trusted.confidence < minimum {
                // The run's full_retrain writes the version instead.
                return Ok(TaskOutput::report(MatchReport {
                    retrained_instead: true,
                    confidence: Some(reports::confidence(trusted)),
                    min_confidence: Some(minimum),
                    forgotten: forgotten.len() as u64,
                    requested: requested.len() as u64,
                    ..MatchReport::default()
                }));
            }
        }
        if predicted.size() != [data.num_targets(), data.num_classes] {
            return Err(TaskError::Fatal(format!(
                "targets are {:?}, the dataset needs [{}, {}]",
                predicted.size(),
                data.num_targets(),
                data.num_classes
            )));
        }
        stop_if_cancelled(context)?;
        context.report(0.2, "matching fine-tune");
        let matching = MatchingConfig::for_model(&current.spec);
        let retained = retained_without(&forgotten, &task.excluded, &data);
        let examples = matching_examples(forgotten.indices(), &retained, &matching, task.seed);
        let rows = Tensor::from_slice(&examples);
        let targets = predicted.index_select(0, &rows).unsqueeze(0);
        let summary = match_targets(
            &mut current,
            &data,
            &examples,
            forgotten.indices(),
            &targets,
            &matching,
            task.seed,
        )
        .map_err(ml_error)?;
        stop_if_cancelled(context)?;
        let next = lineage.advance(&forgotten, Method::Dmm, &requested, task.seed);
        let new_info = CheckpointInfo {
            lineage: Some(next.clone()),
            ..info
        };
        let path = dir
            .path()
            .join(format!("model-v{}.safetensors", next.version));
        checkpoint::save_member(&current, 0, &new_info, &path).map_err(ml_error)?;
        Ok(TaskOutput {
            artifacts: vec![put(context, "model", &path)?],
            report: MatchReport {
                retrained_instead: false,
                version: next.version as i32,
                forgotten: forgotten.len() as u64,
                requested: requested.len() as u64,
                examples: summary.examples as u64,
                final_loss: summary.final_loss,
                architecture: current.spec.to_string(),
                settings: Some(reports::matching(&matching)),
                head_refitted: summary.head_refitted,
                confidence: confidence.as_ref().map(reports::confidence),
                min_confidence: task.min_confidence,
            },
        })
    }
}

impl TaskHandler for FullRetrain {
    type Spec = FullRetrainSpec;
    type Report = FullRetrainReport;

    fn needs_inputs(&self) -> bool {
        // A retrain that stands in for DMM reads the predicted targets' confidence.
        true
    }

    fn run(
        &self,
        task: FullRetrainSpec,
        context: &TaskContext,
    ) -> Result<TaskOutput<FullRetrainReport>, TaskError> {
        let dir = workspace()?;
        let mut confidence = None;
        if let Some(minimum) = task.only_below_confidence {
            let predicted = read_targets(context, dir.path())?;
            let trusted = required_confidence(predicted.confidence.as_ref(), minimum)?.clone();
            if trusted.confidence >= minimum {
                // The run's match writes the version.
                return Ok(TaskOutput::report(FullRetrainReport {
                    skipped: true,
                    confidence: Some(reports::confidence(&trusted)),
                    min_confidence: Some(minimum),
                    ..FullRetrainReport::default()
                }));
            }
            confidence = Some(trusted);
        }
        let data = load_dataset(context, &task.dataset, dir.path())?;
        let forgotten = forget_set(&task.exclude, &data)?;
        let (mut model, info, _) = load_checkpoint(
            context,
            &task.model,
            dir.path(),
            "model.safetensors",
            &data,
            self.device,
        )?;
        let Some(recipe) = info.recipe.clone() else {
            return Err(TaskError::Fatal(format!(
                "checkpoint {} records no training recipe, so it cannot be retrained",
                task.model.uri
            )));
        };
        stop_if_cancelled(context)?;
        context.report(
            0.1,
            "retraining from scratch without the forgotten examples",
        );
        let summary = unlearn(
            &mut model,
            &MethodConfig::Retrain { recipe },
            &forgotten,
            &Resources::new(&data),
            task.seed,
        )
        .map_err(ml_error)?;
        stop_if_cancelled(context)?;
        // A new anchor: its lineage starts over (the store records what it was retrained
        // without).
        let new_info = CheckpointInfo {
            seed: model.member_seeds[0],
            lineage: None,
            ..info
        };
        let path = dir.path().join("model-retrained.safetensors");
        checkpoint::save_member(&model, 0, &new_info, &path).map_err(ml_error)?;
        let val: Vec<i64> = (data.num_train..data.num_targets()).collect();
        let accuracy = Outputs::compute(&mut model, &data, &val)
            .map_err(ml_error)?
            .accuracy();
        Ok(TaskOutput {
            artifacts: vec![put(context, "model", &path)?],
            report: FullRetrainReport {
                skipped: false,
                retrained_without: forgotten.len() as u64,
                examples: summary.examples as u64,
                val_accuracy: accuracy.first().copied().unwrap_or(0.0),
                confidence: confidence.as_ref().map(reports::confidence),
                min_confidence: task.only_below_confidence,
            },
        })
    }
}

impl TaskHandler for Audit {
    type Spec = AuditSpec;
    type Report = AuditReport;

    fn needs_inputs(&self) -> bool {
        true
    }

    fn run(
        &self,
        task: AuditSpec,
        context: &TaskContext,
    ) -> Result<TaskOutput<AuditReport>, TaskError> {
        let dir = workspace()?;
        let data = load_dataset(context, &task.dataset, dir.path())?;
        let forgotten = forget_set(&task.forgotten, &data)?;
        let oracle_dir = dir.path().join("oracles");
        create_dir(&oracle_dir)?;
        let oracles = gather_ensemble(context, &oracle_dir, |ensemble| !ensemble.keep_weights)?;
        if oracles.manifest.spec.exclude != forgotten.indices() {
            return Err(TaskError::Fatal(
                "the oracles were not retrained without exactly the forgotten examples".into(),
            ));
        }
        let total = oracles.seeds.len();
        if task.held_out >= total {
            return Err(TaskError::Fatal(format!(
                "{} held-out oracles leave none of {total} to compare with",
                task.held_out
            )));
        }
        let oracle_logits = oracles.logits.to_kind(Kind::Float);
        let labels = data.y.shallow_clone();
        let splits = Splits::new(forgotten.indices(), data.num_train, data.num_val);
        let reference = OracleReference::new(&oracle_logits, &labels, task.held_out, splits)
            .map_err(ml_error)?;
        stop_if_cancelled(context)?;

        let mut report = AuditReport {
            oracles: reference.compared as u32,
            held_out_oracles: task.held_out as u32,
            noise_floor: reference.noise_floor.as_ref().map(reports::audit),
            ..AuditReport::default()
        };
        // A run held to a minimum confidence may have retrained instead of running DMM.
        let retrained = one_input(context, "model")?.task_kind == lethe_proto::tasks::FULL_RETRAIN;
        if let Some(dmm) = task.dmm.as_ref().filter(|_| !retrained) {
            context.report(0.3, "DMM on the originals");
            let originals = audit_dmm(context, dmm, &data, dir.path(), self.device)?;
            let MethodAudit {
                do_nothing,
                result: audited,
                gap_closure,
            } = reference
                .method(&originals.before, &originals.after)
                .map_err(ml_error)?;
            report.method = DeletionMethod::Dmm as i32;
            report.result = Some(reports::audit(&audited));
            report.do_nothing = Some(reports::audit(&do_nothing));
            report.gap_closure = gap_closure;
            // What the run predicted about its targets before the fine-tune, beside what it
            // achieved.
            report.confidence = originals.confidence.as_ref().map(reports::confidence);
        } else {
            // A retrain from scratch is exact: it is one more oracle.
            report.method = DeletionMethod::Retrain as i32;
        }
        stop_if_cancelled(context)?;
        context.report(0.9, "margins of the versions before and after");
        let (mut before, _, _) = load_checkpoint(
            context,
            &task.before,
            dir.path(),
            "before.safetensors",
            &data,
            self.device,
        )?;
        let after_path = dir.path().join("after.safetensors");
        fetch_input(context, one_input(context, "model")?, &after_path)?;
        let (mut after, info) = checkpoint::load(&after_path, self.device).map_err(ml_error)?;
        super::check_fits(&info, &data, &after_path)?;
        let targets = all_targets(&data);
        let version_margins = |model: &mut lethe_ml::model::Model| {
            Outputs::compute(model, &data, &targets)
                .map(|outputs| outputs.margins().get(0))
                .map_err(ml_error)
        };
        let (before_margins, after_margins) =
            (version_margins(&mut before)?, version_margins(&mut after)?);
        let oracle_margins = margins(&oracle_logits, &labels);
        report.version = Some(margin_report(
            &oracle_margins,
            &before_margins,
            &after_margins,
            &forgotten,
            &data,
        ));
        Ok(TaskOutput::report(report))
    }
}

/// Logits (`N × T × C`) of the originals before and after DMM, and the confidence of the
/// targets.
struct AuditedOriginals {
    before: Tensor,
    after: Tensor,
    confidence: Option<TargetConfidence>,
}

/// Applies DMM to the originals exactly as the run applied it to the deployed model: targets
/// predicted from each original's own logits with the run's index, then the matching
/// fine-tune on the same examples.
fn audit_dmm(
    context: &TaskContext,
    dmm: &AuditDmm,
    data: &Dataset,
    dir: &std::path::Path,
    device: tch::Device,
) -> Result<AuditedOriginals, TaskError> {
    let originals_dir = dir.join("originals");
    create_dir(&originals_dir)?;
    let originals = gather_ensemble(context, &originals_dir, |ensemble| ensemble.keep_weights)?;
    let mut models = load_members(&originals_dir, data, device).map_err(ml_error)?;
    let excluded = originals.manifest.spec.exclude.clone();
    let beta = dir.join("beta.safetensors");
    fetch(context, &dmm.beta, &beta)?;
    if let Some(noise) = &dmm.beta_noise {
        fetch(context, noise, &IndexNoise::path_for(&beta))?;
    }
    let index = AttributionIndex::open(&beta).map_err(ml_error)?;
    let forget = forget_set(&dmm.since_anchor, data)?;
    let settings = DmmSettings::shipped(&models.spec, &index);
    let targets = all_targets(data);
    let before = Outputs::compute(&mut models, data, &targets)
        .map_err(ml_error)?
        .logits;
    let shift = predicted_shift(&index, &forget, settings.denoise).map_err(ml_error)?;
    let confidence =
        index_confidence(&index, &shift, settings.multiplier, &forget).map_err(ml_error)?;
    let predicted =
        dmm_targets(&before, &shift, settings.multiplier, &targets).map_err(ml_error)?;
    let examples = matching_examples(
        forget.indices(),
        &retained_without(&forget, &excluded, data),
        &settings.matching,
        dmm.seed,
    );
    let rows = Tensor::from_slice(&examples).to_device(predicted.device());
    stop_if_cancelled(context)?;
    match_targets(
        &mut models,
        data,
        &examples,
        forget.indices(),
        &predicted.index_select(1, &rows),
        &settings.matching,
        dmm.seed,
    )
    .map_err(ml_error)?;
    let after = Outputs::compute(&mut models, data, &targets)
        .map_err(ml_error)?
        .logits;
    Ok(AuditedOriginals {
        before,
        after,
        confidence,
    })
}

fn create_dir(path: &std::path::Path) -> Result<(), TaskError> {
    std::fs::create_dir_all(path)
        .map_err(|e| TaskError::Retryable(format!("create {}: {e}", path.display())))
}

/// Per split (forget, retain, validation): the mean absolute distance of each target's margin
/// from the oracles' mean margin, before and after, and the share of that gap the run closed.
fn margin_report(
    oracles: &Tensor,
    before: &Tensor,
    after: &Tensor,
    forgotten: &ForgetSet,
    data: &Dataset,
) -> VersionMargins {
    let oracle_mean = oracles.mean_dim([0].as_slice(), false, Kind::Float);
    let retained = forgotten.retained(data.num_train);
    let validation: Vec<i64> = (data.num_train..data.num_targets()).collect();
    let split = |indices: &[i64]| {
        if indices.is_empty() {
            return None;
        }
        let rows = Tensor::from_slice(indices);
        let gap = |margins: &Tensor| {
            (margins.index_select(0, &rows) - oracle_mean.index_select(0, &rows))
                .abs()
                .mean(Kind::Float)
                .double_value(&[])
        };
        let (gap_before, gap_after) = (gap(before), gap(after));
        Some(MarginGap {
            points: indices.len() as u64,
            margin_gap_before: gap_before,
            margin_gap_after: gap_after,
            gap_closed: if gap_before > 0.0 {
                1.0 - gap_after / gap_before
            } else {
                0.0
            },
        })
    };
    VersionMargins {
        forget: split(forgotten.indices()),
        retain: split(&retained),
        validation: split(&validation),
    }
}
