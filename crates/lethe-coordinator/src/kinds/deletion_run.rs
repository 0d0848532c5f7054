//! Deletion runs: one for every pending request of a model, planned from the store's
//! [`RunInputs`] under the model's lock by any replica's maintenance loop once the oldest
//! pending request has waited out the coalescing window.
//!
//! A run is `predict` → `match`; when a request sets `min_confidence`, also `predict` →
//! `full_retrain`, of which exactly one writes the version: `match` when the predicted targets'
//! confidence reaches the minimum, the retrain when it does not (the other completes without a
//! model and says why). With an audit, `retrain` tasks for oracles (on everything but the
//! forgotten examples) and for originals (copies of the anchor, with their weights), in
//! parallel with the rest, and an `audit` that depends on the match and on them.

use std::collections::BTreeSet;

use lethe_proto::lethe::v1::task_report::Report;
use lethe_proto::lethe::v1::{
    AuditReport, DeletionMethod, DeletionResult, FullRetrainReport, MatchReport,
};
use lethe_proto::tasks::{
    self, AuditDmm, AuditSpec, EnsembleTask, FullRetrainSpec, MatchSpec, ObjectRef, PredictSpec,
};
use lethe_store::{
    Job, JobKind, NewJob, NewTask, NewVersion, RunInputs, RunPlan, Store, StoreError,
};
use serde::{Deserialize, Serialize};
use tonic::Status;
use uuid::Uuid;

use super::deletion::DeletionRequestSpec;
use super::index_build::{
    index_build_tasks, object_ref, retrain_tasks, to_json, IndexBuildPlan, DEFAULT_ALPHA,
    DEFAULT_MEMBERS, DEFAULT_MEMBERS_PER_TASK,
};
use super::stored::{corrupt, spec};
use crate::names::operation_name;
use crate::registry::version_to_proto;
use crate::state::Shared;
use crate::status::from_store;

/// What a deletion run does, as stored in its job's spec. The version it writes is also given
/// to the store as a [`NewVersion`], from which the store records it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct DeletionRunSpec {
    /// The version it writes, the one it starts from, and the anchor DMM predicts from.
    pub(crate) version: i32,
    pub(crate) parent_version: i32,
    pub(crate) anchor_version: i32,
    /// `dmm` or `retrain`.
    pub(crate) method: String,
    /// The index build DMM predicts with.
    pub(crate) index: Option<Uuid>,
    pub(crate) requests: Vec<Uuid>,
    /// The union of its requests' indices, and everything forgotten since version 0.
    pub(crate) requested: Vec<i64>,
    pub(crate) forgotten: Vec<i64>,
    pub(crate) audit_oracles: usize,
    pub(crate) min_confidence: Option<f64>,
    pub(crate) seed: u64,
}

/// Oracles trained together in one batched network by an audit's retrain tasks.
const ORACLES_PER_TASK: usize = 16;

/// Starts a run for every model whose pending requests have waited out the window.
/// Returns how many runs started.
pub(crate) async fn plan_due_runs(shared: &Shared) -> Result<usize, lethe_store::StoreError> {
    let due = shared
        .store
        .models_due_for_a_run(shared.config.coalescing_window, 100)
        .await?;
    let mut started = 0;
    for model in due {
        if let Some(run) = shared
            .store
            .start_deletion_run(model, |inputs| {
                plan_run(inputs, shared.config.retrain_threshold)
            })
            .await?
        {
            tracing::info!(run = %run.id, model = %model, "started a deletion run");
            shared.wake.tasks_available(run.tasks_total as usize);
            started += 1;
        }
    }
    Ok(started)
}

/// One run for every pending request of a model (docs/DESIGN.md §1.8). The union of their forget
/// sets is added to what the current version forgot. While the forgotten fraction stays within
/// `retrain_threshold` since the anchor, DMM predicts targets from the anchor (version 0, or the latest version
/// retrained from scratch) with its index and fine-tunes the current version; past it, the run
/// retrains from scratch without everything forgotten, and an index for that new anchor is
/// built beside it.
pub(crate) fn plan_run(inputs: &RunInputs, retrain_threshold: f64) -> Result<RunPlan, StoreError> {
    let refuse = |message: String| Err(StoreError::FailedPrecondition(message));
    let requests: Vec<DeletionRequestSpec> = inputs
        .requests
        .iter()
        .map(|request| serde_json::from_value(request.spec.clone()))
        .collect::<Result<_, _>>()
        .map_err(|e| StoreError::Corrupt(format!("deletion request spec: {e}")))?;
    let requested: BTreeSet<i64> = requests.iter().flat_map(|r| r.forget.clone()).collect();
    let before: BTreeSet<i64> = inputs.current.forgotten.iter().copied().collect();
    if requested.is_subset(&before) {
        return refuse(format!(
            "every example asked for is already forgotten by version {}",
            inputs.current.version
        ));
    }
    let forgotten: Vec<i64> = requested.union(&before).copied().collect();
    let Some(num_train) = inputs.num_train else {
        return refuse("the model has no attribution index: build one (CreateIndexBuild)".into());
    };
    let audit_oracles = requests.iter().map(|r| r.audit_oracles).max().unwrap_or(0);
    // Coalesced requests share one run: the strictest minimum holds for all of them.
    let min_confidence = requests
        .iter()
        .filter_map(|r| r.min_confidence)
        .reduce(f64::max);
    // The first request's seed: a run is reproducible from its requests.
    let seed = requests.first().map_or(0, |r| r.seed);
    let dataset = object_ref(&inputs.dataset);
    let current = object_ref(&inputs.current.object);
    let anchor = object_ref(&inputs.base.object);
    // DMM's predictions are linear in the removal from the anchor: what counts is how much
    // was forgotten since the anchor was trained.
    let anchored: BTreeSet<i64> = inputs.base.forgotten.iter().copied().collect();
    let since_anchor: Vec<i64> = forgotten
        .iter()
        .filter(|i| !anchored.contains(i))
        .copied()
        .collect();
    let retrain = since_anchor.len() as f64 > retrain_threshold * num_train as f64;

    let full_retrain = |only_below_confidence| {
        NewTask::new(
            tasks::FULL_RETRAIN,
            to_json(&FullRetrainSpec {
                dataset: dataset.clone(),
                model: anchor.clone(),
                exclude: forgotten.clone(),
                seed,
                only_below_confidence,
            }),
        )
    };
    // `producers`: the tasks that may write the new version (exactly one does).
    let (mut graph, method, fresh_index, audited_dmm, producers) = if retrain {
        let graph = vec![full_retrain(None)];
        let index = index_build_for_retrain(inputs, &dataset, &anchor, &forgotten, seed);
        (graph, "retrain", Some(index), None, vec![0])
    } else {
        let Some(index) = &inputs.index else {
            if inputs.index_pending {
                return Ok(RunPlan::Wait);
            }
            return refuse(format!(
                "version {} (the model's latest anchor) has no attribution index: build one \
                 (CreateIndexBuild)",
                inputs.base.version
            ));
        };
        let mut graph = vec![NewTask::new(
            tasks::PREDICT,
            to_json(&PredictSpec {
                dataset: dataset.clone(),
                base: anchor.clone(),
                beta: object_ref(&index.beta),
                beta_noise: index.noise.as_ref().map(object_ref),
                forgotten: since_anchor.clone(),
            }),
        )];
        // The retrain that stands in for DMM, beside the match: whichever of the two the
        // confidence picks writes the version (the other reports that it stood aside).
        if let Some(minimum) = min_confidence {
            graph.push(full_retrain(Some(minimum)).after([0]));
        }
        graph.push(
            NewTask::new(
                tasks::MATCH,
                to_json(&MatchSpec {
                    dataset: dataset.clone(),
                    base: anchor.clone(),
                    current: current.clone(),
                    forgotten: since_anchor.clone(),
                    requested: requested.iter().copied().collect(),
                    excluded: inputs.base.forgotten.clone(),
                    seed,
                    min_confidence,
                }),
            )
            .after([0]),
        );
        let audited = AuditDmm {
            beta: object_ref(&index.beta),
            beta_noise: index.noise.as_ref().map(object_ref),
            since_anchor,
            seed,
        };
        let producers = (1..graph.len()).collect();
        (graph, "dmm", None, Some(audited), producers)
    };
    if audit_oracles > 0 {
        // N' oracles are compared with; half as many again are held out for the noise floor.
        let held_out = audit_oracles.div_ceil(2);
        let oracles = EnsembleTask {
            dataset: dataset.clone(),
            model: anchor.clone(),
            members: audit_oracles + held_out,
            alpha: 1.0,
            seed: seed ^ ORACLE_SEED_SALT,
            members_per_task: ORACLES_PER_TASK,
            exclude: forgotten.clone(),
            keep_weights: false,
        };
        let first_retrain = graph.len();
        graph.extend(retrain_tasks(&oracles));
        if audited_dmm.is_some() {
            // N originals: copies of the anchor from other seeds, for DMM to be applied to.
            let originals = EnsembleTask {
                members: audit_oracles,
                seed: seed ^ ORIGINAL_SEED_SALT,
                exclude: inputs.base.forgotten.clone(),
                keep_weights: true,
                ..oracles
            };
            graph.extend(retrain_tasks(&originals));
        }
        let audit_deps: Vec<usize> = producers
            .into_iter()
            .chain(first_retrain..graph.len())
            .collect();
        graph.push(
            NewTask::new(
                tasks::AUDIT,
                to_json(&AuditSpec {
                    dataset,
                    before: current,
                    forgotten: forgotten.clone(),
                    held_out,
                    dmm: audited_dmm,
                }),
            )
            .after(audit_deps),
        );
    }
    let writes = NewVersion {
        version: inputs.current.version + 1,
        forgotten,
    };
    let priority = inputs
        .requests
        .iter()
        .map(|r| r.priority)
        .max()
        .unwrap_or(0);
    let run = NewJob {
        tenant: inputs.tenant.clone(),
        kind: JobKind::DeletionRun,
        request_id: None,
        spec: to_json(&DeletionRunSpec {
            version: writes.version,
            parent_version: inputs.current.version,
            anchor_version: inputs.base.version,
            method: method.to_owned(),
            index: inputs.index.as_ref().map(|index| index.job_id),
            requests: inputs.requests.iter().map(|r| r.id).collect(),
            requested: requested.into_iter().collect(),
            forgotten: writes.forgotten.clone(),
            audit_oracles,
            min_confidence,
            seed,
        }),
        priority,
        deadline: None,
        tasks: graph,
        admission: None,
    };
    Ok(RunPlan::Start {
        run,
        writes,
        fresh_index,
    })
}

/// The index of the version a full retrain makes: subset retrains of what remains, the same
/// size as the model's current index.
fn index_build_for_retrain(
    inputs: &RunInputs,
    dataset: &ObjectRef,
    model: &ObjectRef,
    forgotten: &[i64],
    seed: u64,
) -> NewJob {
    let members = inputs
        .index
        .as_ref()
        .map_or(DEFAULT_MEMBERS, |index| index.report.members as usize);
    let plan = IndexBuildPlan {
        model: String::new(),
        dataset: dataset.clone(),
        checkpoint: model.clone(),
        members,
        alpha: DEFAULT_ALPHA,
        members_per_task: DEFAULT_MEMBERS_PER_TASK.min(members),
        seed,
        exclude: forgotten.to_vec(),
        anchor_version: inputs.current.version + 1,
        trak: None,
        trak_shards: 0,
    };
    NewJob {
        tenant: inputs.tenant.clone(),
        kind: JobKind::IndexBuild,
        request_id: None,
        spec: to_json(&plan),
        priority: 0,
        deadline: None,
        tasks: index_build_tasks(&plan),
        admission: None,
    }
}

/// Oracles must not share seeds with the subset retrains of the index.
const ORACLE_SEED_SALT: u64 = 0x6f72_6163_6c65_7321;
/// Nor originals with either.
const ORIGINAL_SEED_SALT: u64 = 0x6f72_6967_696e_616c;

/// What a succeeded deletion request answers: its run's result, with how many examples it
/// asked for.
pub(crate) async fn request_result(store: &Store, job: &Job) -> Result<DeletionResult, Status> {
    let request: DeletionRequestSpec = spec(job)?;
    let run_id = job
        .run_id
        .ok_or_else(|| corrupt(job.id, "a succeeded deletion request without a run"))?;
    let run = store
        .get_job(&job.tenant, run_id)
        .await
        .map_err(from_store)?;
    let run_spec: DeletionRunSpec = spec(&run)?;
    result(store, run_id, &run_spec, request.forget.len()).await
}

/// What a succeeded run answers.
pub(crate) async fn run_result(store: &Store, job: &Job) -> Result<DeletionResult, Status> {
    let run: DeletionRunSpec = spec(job)?;
    result(store, job.id, &run, run.requested.len()).await
}

/// What run `run_id` answers, to itself and to each request it served (`requested` being
/// how many examples the one asking named).
pub(crate) async fn result(
    store: &Store,
    run_id: Uuid,
    run: &DeletionRunSpec,
    requested: usize,
) -> Result<DeletionResult, Status> {
    let version = store
        .version_of_run(run_id)
        .await
        .map_err(from_store)?
        .ok_or_else(|| corrupt(run_id, "a succeeded run recorded no model version"))?;
    let reported = store
        .reported_tasks(run_id, &[tasks::MATCH, tasks::FULL_RETRAIN, tasks::AUDIT])
        .await
        .map_err(from_store)?;
    let mut matching: Option<MatchReport> = None;
    let mut retrain: Option<FullRetrainReport> = None;
    let mut audit: Option<AuditReport> = None;
    for task in &reported {
        match task.report.as_ref().and_then(|r| r.report.clone()) {
            Some(Report::Match(report)) if task.kind == tasks::MATCH => matching = Some(report),
            Some(Report::FullRetrain(report)) if task.kind == tasks::FULL_RETRAIN => {
                retrain = Some(report)
            }
            Some(Report::Audit(report)) if task.kind == tasks::AUDIT => audit = Some(report),
            _ => {
                return Err(corrupt(
                    run_id,
                    &format!("its {} task {} wrote no {0} report", task.kind, task.id),
                ))
            }
        }
    }
    // The task that wrote the version decides the method: a match that stood aside for a
    // retrain (confidence below the minimum) and a retrain that was not needed report so.
    let retrained = version.anchor;
    let method = if retrained {
        DeletionMethod::Retrain
    } else {
        DeletionMethod::Dmm
    };
    Ok(DeletionResult {
        run: operation_name(run_id),
        version: Some(version_to_proto(&version)),
        from_version: run.parent_version,
        requested: requested as u64,
        forgotten_in_run: run.requested.len() as u64,
        method: method as i32,
        matching: matching.filter(|m| !m.retrained_instead),
        retrain: retrain.filter(|r| !r.skipped),
        audit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lethe_proto::tasks::RetrainSpec;
    use lethe_store::{IndexRef, ModelVersion, PendingRequest, StoredRef};
    use uuid::Uuid;

    fn stored(uri: &str) -> StoredRef {
        StoredRef {
            uri: uri.into(),
            sha256: Some([7; 32]),
            size_bytes: None,
        }
    }

    fn inputs(requests: &[(&[i64], usize)], forgotten_before: Vec<i64>) -> RunInputs {
        with_minimums(requests, &[], forgotten_before)
    }

    /// Requests with their forget sets and audit sizes, the first ones with the minimum
    /// confidences of `minimums`.
    fn with_minimums(
        requests: &[(&[i64], usize)],
        minimums: &[f64],
        forgotten_before: Vec<i64>,
    ) -> RunInputs {
        RunInputs {
            tenant: "acme".into(),
            model_id: Uuid::now_v7(),
            dataset: stored("builtin:fmnist-tiny"),
            base: ModelVersion {
                model: "m".into(),
                version: 0,
                object: stored("file:///m/v0"),
                forgotten: vec![],
                run_id: None,
                anchor: true,
            },
            current: ModelVersion {
                model: "m".into(),
                version: 2,
                object: stored("file:///m/v2"),
                forgotten: forgotten_before,
                run_id: Some(Uuid::now_v7()),
                anchor: false,
            },
            index: Some(IndexRef {
                job_id: Uuid::now_v7(),
                beta: stored("file:///beta"),
                noise: None,
                report: lethe_proto::lethe::v1::IndexReport {
                    members: 64,
                    num_train: 100,
                    ..Default::default()
                },
            }),
            index_pending: false,
            num_train: Some(100),
            requests: requests
                .iter()
                .enumerate()
                .map(|(position, (forget, oracles))| PendingRequest {
                    id: Uuid::now_v7(),
                    spec: serde_json::to_value(DeletionRequestSpec {
                        model: "m".into(),
                        forget: forget.to_vec(),
                        audit_oracles: *oracles,
                        seed: 3,
                        min_confidence: minimums.get(position).copied(),
                    })
                    .unwrap(),
                    priority: 0,
                })
                .collect(),
        }
    }

    fn started(plan: RunPlan) -> (NewJob, Option<NewJob>) {
        match plan {
            RunPlan::Start {
                run,
                writes,
                fresh_index,
            } => {
                let spec: DeletionRunSpec = serde_json::from_value(run.spec.clone()).unwrap();
                assert_eq!(
                    (spec.version, &spec.forgotten),
                    (writes.version, &writes.forgotten),
                    "the spec and what the store records agree"
                );
                (run, fresh_index)
            }
            RunPlan::Wait => panic!("the planner waited"),
        }
    }

    #[test]
    fn coalesced_requests_forget_their_union_on_top_of_earlier_versions() {
        let plan = plan_run(&inputs(&[(&[5, 3], 0), (&[3, 9], 20)], vec![1, 5]), 0.05);
        let (run, fresh_index) = started(plan.unwrap());
        assert!(fresh_index.is_none());
        let spec: DeletionRunSpec = serde_json::from_value(run.spec.clone()).unwrap();
        assert_eq!(spec.method, "dmm");
        assert_eq!(spec.version, 3);
        assert_eq!(spec.forgotten, [1, 3, 5, 9]);
        assert_eq!(spec.requested, [3, 5, 9]);
        let kinds: Vec<&str> = run.tasks.iter().map(|t| t.kind.as_str()).collect();
        // The larger audit wins: 20 + 10 held-out oracles and 20 originals, in ranges of 16.
        assert_eq!(
            kinds,
            [
                tasks::PREDICT,
                tasks::MATCH,
                tasks::RETRAIN,
                tasks::RETRAIN,
                tasks::RETRAIN,
                tasks::RETRAIN,
                tasks::AUDIT
            ]
        );
        assert_eq!(run.tasks[6].depends_on, [1, 2, 3, 4, 5]);
        let matching: MatchSpec = serde_json::from_value(run.tasks[1].spec.clone()).unwrap();
        assert_eq!(matching.current.uri, "file:///m/v2");
        assert_eq!(matching.base.uri, "file:///m/v0");
        let oracle: RetrainSpec = serde_json::from_value(run.tasks[2].spec.clone()).unwrap();
        assert_eq!(oracle.ensemble.exclude, [1, 3, 5, 9]);
        assert_eq!(oracle.ensemble.members, 30);
        assert!(!oracle.ensemble.keep_weights);
        let original: RetrainSpec = serde_json::from_value(run.tasks[4].spec.clone()).unwrap();
        assert_eq!(original.ensemble.members, 20);
        assert!(original.ensemble.keep_weights, "DMM is applied to them");
        assert!(original.ensemble.exclude.is_empty(), "copies of version 0");
        assert_ne!(original.ensemble.seed, oracle.ensemble.seed);
        let audit: AuditSpec = serde_json::from_value(run.tasks[6].spec.clone()).unwrap();
        assert_eq!(audit.held_out, 10);
        assert_eq!(
            audit.dmm.expect("DMM is audited").since_anchor,
            [1, 3, 5, 9]
        );
    }

    #[test]
    fn a_minimum_confidence_adds_the_retrain_that_stands_in_for_dmm() {
        let requests: &[(&[i64], usize)] = &[(&[5], 16), (&[6], 0), (&[7], 0)];
        let plan = plan_run(&with_minimums(requests, &[0.4, 0.7], vec![]), 0.05);
        let (run, fresh_index) = started(plan.unwrap());
        assert!(
            fresh_index.is_none(),
            "no index until the run knows it retrains"
        );
        let kinds: Vec<&str> = run.tasks.iter().map(|t| t.kind.as_str()).collect();
        assert_eq!(
            &kinds[..3],
            [tasks::PREDICT, tasks::FULL_RETRAIN, tasks::MATCH],
            "predict, then the retrain that may stand in, then the match"
        );
        assert_eq!(run.tasks[1].depends_on, [0]);
        assert_eq!(run.tasks[2].depends_on, [0]);
        let retrain: FullRetrainSpec = serde_json::from_value(run.tasks[1].spec.clone()).unwrap();
        assert_eq!(
            retrain.only_below_confidence,
            Some(0.7),
            "the strictest minimum"
        );
        assert_eq!(retrain.exclude, [5, 6, 7]);
        let matching: MatchSpec = serde_json::from_value(run.tasks[2].spec.clone()).unwrap();
        assert_eq!(matching.min_confidence, Some(0.7));
        let audit = run.tasks.last().unwrap();
        assert_eq!(audit.kind, tasks::AUDIT);
        assert_eq!(
            &audit.depends_on[..2],
            [1, 2],
            "the audit waits for whichever writes the version"
        );

        let (plain, _) = started(plan_run(&inputs(&[(&[5], 0)], vec![]), 0.05).unwrap());
        let kinds: Vec<&str> = plain.tasks.iter().map(|t| t.kind.as_str()).collect();
        assert_eq!(kinds, [tasks::PREDICT, tasks::MATCH]);
        let matching: MatchSpec = serde_json::from_value(plain.tasks[1].spec.clone()).unwrap();
        assert_eq!(matching.min_confidence, None);
    }

    #[test]
    fn past_the_threshold_a_run_retrains_and_indexes_the_new_anchor() {
        // 4 forgotten and 3 more of 100 examples: past 5 %.
        let plan = plan_run(&inputs(&[(&[10, 11, 12], 8)], vec![1, 2, 3, 4]), 0.05);
        let (run, fresh_index) = started(plan.unwrap());
        let spec: DeletionRunSpec = serde_json::from_value(run.spec.clone()).unwrap();
        assert_eq!(spec.method, "retrain");
        let kinds: Vec<&str> = run.tasks.iter().map(|t| t.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [tasks::FULL_RETRAIN, tasks::RETRAIN, tasks::AUDIT],
            "oracles, but no originals: a retrain is exact"
        );
        assert_eq!(run.tasks[2].depends_on, [0, 1]);
        let audit: AuditSpec = serde_json::from_value(run.tasks[2].spec.clone()).unwrap();
        assert!(audit.dmm.is_none());
        let retrain: FullRetrainSpec = serde_json::from_value(run.tasks[0].spec.clone()).unwrap();
        assert_eq!(retrain.exclude, [1, 2, 3, 4, 10, 11, 12]);
        let index = fresh_index.expect("an index for the new anchor");
        assert_eq!(index.tasks.len(), 3, "64 members in 2 ranges and a reduce");
        let member: RetrainSpec = serde_json::from_value(index.tasks[0].spec.clone()).unwrap();
        assert_eq!(member.ensemble.exclude, retrain.exclude);
    }

    #[test]
    fn after_a_retrain_targets_come_from_the_new_anchor() {
        let mut after = inputs(&[(&[20], 0)], vec![1, 2, 3]);
        after.base.forgotten = vec![1, 2];
        let (run, _) = started(plan_run(&after, 0.05).unwrap());
        let predict: PredictSpec = serde_json::from_value(run.tasks[0].spec.clone()).unwrap();
        assert_eq!(
            predict.forgotten,
            [3, 20],
            "only what the anchor still knows"
        );
        let matching: MatchSpec = serde_json::from_value(run.tasks[1].spec.clone()).unwrap();
        assert_eq!(matching.excluded, [1, 2]);
        let spec: DeletionRunSpec = serde_json::from_value(run.spec.clone()).unwrap();
        assert_eq!(spec.forgotten, [1, 2, 3, 20]);
    }

    #[test]
    fn a_run_waits_for_a_pending_index_and_is_refused_without_one() {
        let mut without = inputs(&[(&[1], 0)], vec![]);
        without.index = None;
        without.index_pending = true;
        assert!(matches!(plan_run(&without, 0.05), Ok(RunPlan::Wait)));
        without.index_pending = false;
        assert!(matches!(
            plan_run(&without, 0.05),
            Err(StoreError::FailedPrecondition(_))
        ));
        let again = inputs(&[(&[1], 0)], vec![1]);
        assert!(matches!(
            plan_run(&again, 0.05),
            Err(StoreError::FailedPrecondition(_))
        ));
    }
}
