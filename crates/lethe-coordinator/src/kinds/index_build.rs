//! Index builds: an estimator fitted on subset retrains of the model's anchor (the subsample
//! estimator, or TRAK featurised in shards), as `retrain` tasks, one per range of
//! `members_per_task` subset models, and a `build_index` reduce that depends on all of them.

use lethe_proto::lethe::v1::task_report::Report;
use lethe_proto::lethe::v1::{self as pb, IndexBuildResult, IndexEstimator, IndexReport};
use lethe_proto::tasks::{
    self, BuildIndexSpec, EnsembleTask, ObjectRef, RetrainSpec, TrakCheckpointsSpec, TrakSettings,
    TrakShardSpec,
};
use lethe_store::{Job, JobKind, NewJob, NewTask, Store, StoredRef};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tonic::Status;
use uuid::Uuid;

use super::fields::{named_model, parse_priority, request_id};
use super::stored::{corrupt, only, stored_object};
use crate::gate::principal::Caller;
use crate::state::Shared;
use crate::status::{from_store, invalid};

/// Subset retrains an index build may ask for.
const MAX_MEMBERS: u32 = 100_000;
/// An index build as asked for, defaults applied.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct IndexBuildPlan {
    pub(crate) model: String,
    pub(crate) dataset: ObjectRef,
    pub(crate) checkpoint: ObjectRef,
    pub(crate) members: usize,
    pub(crate) alpha: f64,
    pub(crate) members_per_task: usize,
    pub(crate) seed: u64,
    /// Examples the indexed version was trained without (a retrained anchor's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) exclude: Vec<i64>,
    /// The version whose predictions the index serves.
    pub(crate) anchor_version: i32,
    /// TRAK instead of the subsample estimator, featurised in `trak_shards` tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) trak: Option<TrakSettings>,
    #[serde(default)]
    pub(crate) trak_shards: usize,
}

pub(crate) const DEFAULT_MEMBERS: usize = 128;
pub(crate) const DEFAULT_ALPHA: f64 = 0.5;
pub(crate) const DEFAULT_MEMBERS_PER_TASK: usize = 32;

/// Validates `request`, plans the build and submits its job.
pub(crate) async fn create(
    shared: &Shared,
    caller: &Caller,
    request: pb::CreateIndexBuildRequest,
) -> Result<Job, Status> {
    let tenant = caller.tenant.clone();
    let model = named_model(shared, caller, "index_build.create", &request.model).await?;
    let dataset = shared
        .store
        .get_dataset(&tenant, &model.dataset)
        .await
        .map_err(from_store)?;
    // The index serves the latest anchor: version 0, or the latest full retrain.
    let versions = shared
        .store
        .model_versions(&tenant, model.id)
        .await
        .map_err(from_store)?;
    let anchor = versions
        .into_iter()
        .find(|version| version.anchor)
        .ok_or_else(|| Status::internal("a model without version 0"))?;
    let members = match request.members {
        0 => DEFAULT_MEMBERS,
        n if !(2..=MAX_MEMBERS).contains(&n) => {
            return Err(invalid("members", format!("must be 2 to {MAX_MEMBERS}")))
        }
        n => n as usize,
    };
    let alpha = match request.alpha {
        0.0 => DEFAULT_ALPHA,
        a if a > 0.0 && a < 1.0 => a,
        _ => return Err(invalid("alpha", "must lie in (0, 1)")),
    };
    let members_per_task = match request.members_per_task {
        0 => DEFAULT_MEMBERS_PER_TASK.min(members),
        n if n as usize > members => {
            return Err(invalid(
                "members_per_task",
                format!("{n} is more than the {members} members"),
            ))
        }
        n => n as usize,
    };
    let trak = match IndexEstimator::try_from(request.estimator) {
        Ok(IndexEstimator::Unspecified | IndexEstimator::Subsample) => None,
        Ok(IndexEstimator::Trak) => Some(TrakSettings {
            checkpoints: match request.trak_checkpoints {
                0 => 4,
                n @ 1..=64 => n as usize,
                _ => return Err(invalid("trak_checkpoints", "must be at most 64")),
            },
            projection_dim: match request.trak_projection_dim {
                0 => 2048,
                n @ 16..=16384 => i64::from(n),
                _ => return Err(invalid("trak_projection_dim", "must be 16 to 16384")),
            },
            seed: request.seed,
            relative_damping: 1e-3,
        }),
        Err(_) => return Err(invalid("estimator", "unknown estimator")),
    };
    let trak_shards = match request.trak_shards {
        0 => 4,
        n @ 1..=1024 => n as usize,
        _ => return Err(invalid("trak_shards", "must be at most 1024")),
    };
    let plan = IndexBuildPlan {
        model: model.name.clone(),
        dataset: ObjectRef {
            uri: dataset.uri,
            sha256: dataset.sha256.map(hex::encode),
        },
        checkpoint: object_ref(&anchor.object),
        members,
        alpha,
        members_per_task,
        seed: request.seed,
        exclude: anchor.forgotten,
        anchor_version: anchor.version,
        trak,
        trak_shards,
    };
    let request_id = request_id(request.request_id)?;
    let detail = json!({"model": model.name, "members": members, "request_id": request_id});
    let job = NewJob {
        tenant,
        kind: JobKind::IndexBuild,
        request_id,
        spec: serde_json::to_value(&plan).expect("plans serialise"),
        priority: parse_priority(request.priority)?,
        deadline: None,
        tasks: index_build_tasks(&plan),
        admission: Some(
            shared
                .gate
                .job_admission(caller, "index_build.create", detail),
        ),
    };
    let (job, created) = shared
        .store
        .create_index_build(&job, model.id, anchor.run_id)
        .await
        .map_err(from_store)?;
    if created {
        shared.wake.tasks_available(job.tasks.available as usize);
    }
    Ok(job)
}

/// A stored object as a task spec names it.
pub(crate) fn object_ref(stored: &StoredRef) -> ObjectRef {
    ObjectRef {
        uri: stored.uri.clone(),
        sha256: stored.sha256.map(hex::encode),
    }
}

/// Subset retrains in member ranges, then the reduce that estimates β.
pub(crate) fn index_build_tasks(plan: &IndexBuildPlan) -> Vec<NewTask> {
    let ensemble = EnsembleTask {
        dataset: plan.dataset.clone(),
        model: plan.checkpoint.clone(),
        members: plan.members,
        alpha: plan.alpha,
        seed: plan.seed,
        members_per_task: plan.members_per_task,
        exclude: plan.exclude.clone(),
        keep_weights: false,
    };
    let mut graph = retrain_tasks(&ensemble);
    let mut reduce_deps: Vec<usize> = (0..graph.len()).collect();
    if let Some(trak) = &plan.trak {
        let checkpoints = graph.len();
        graph.push(NewTask::new(
            tasks::TRAK_CHECKPOINTS,
            to_json(&TrakCheckpointsSpec {
                ensemble: ensemble.clone(),
                trak: trak.clone(),
            }),
        ));
        reduce_deps.push(checkpoints);
        let shards = plan.trak_shards.max(1);
        for shard in 0..shards {
            reduce_deps.push(graph.len());
            graph.push(
                NewTask::new(
                    tasks::TRAK_SHARD,
                    to_json(&TrakShardSpec {
                        ensemble: ensemble.clone(),
                        trak: trak.clone(),
                        shard,
                        shards,
                    }),
                )
                .after([checkpoints]),
            );
        }
    }
    graph.push(
        NewTask::new(
            tasks::BUILD_INDEX,
            to_json(&BuildIndexSpec {
                ensemble: ensemble.clone(),
                trak: plan.trak.clone(),
            }),
        )
        .after(reduce_deps),
    );
    graph
}

pub(crate) fn retrain_tasks(ensemble: &EnsembleTask) -> Vec<NewTask> {
    (0..ensemble.members)
        .step_by(ensemble.members_per_task.max(1))
        .map(|start| {
            let end = (start + ensemble.members_per_task).min(ensemble.members);
            NewTask::new(
                tasks::RETRAIN,
                to_json(&RetrainSpec {
                    ensemble: ensemble.clone(),
                    start,
                    end,
                }),
            )
        })
        .collect()
}

pub(crate) fn to_json(spec: &impl Serialize) -> serde_json::Value {
    serde_json::to_value(spec).expect("task specs serialise")
}

/// What a succeeded index build answers: its reduce's report and the β it wrote.
pub(crate) async fn result(store: &Store, job: Uuid) -> Result<IndexBuildResult, Status> {
    let reduce = only(
        job,
        store
            .reported_tasks(job, &[tasks::BUILD_INDEX])
            .await
            .map_err(from_store)?,
    )?;
    let report: IndexReport = match &reduce.report {
        Some(lethe_proto::lethe::v1::TaskReport {
            report: Some(Report::BuildIndex(report)),
        }) => report.clone(),
        _ => return Err(corrupt(job, "its build_index task wrote no index report")),
    };
    let index = reduce
        .artifact("beta")
        .ok_or_else(|| corrupt(job, "its build_index task wrote no beta"))?;
    Ok(IndexBuildResult {
        report: Some(report),
        index: Some(stored_object(index)),
        noise_model: reduce.artifact("beta_noise").map(stored_object),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index_plan(
        members: usize,
        trak: Option<TrakSettings>,
        trak_shards: usize,
    ) -> IndexBuildPlan {
        IndexBuildPlan {
            model: "m".into(),
            dataset: ObjectRef {
                uri: "builtin:fmnist-tiny".into(),
                sha256: None,
            },
            checkpoint: ObjectRef {
                uri: "file:///m".into(),
                sha256: None,
            },
            members,
            alpha: 0.5,
            members_per_task: 32,
            seed: 1,
            exclude: vec![],
            anchor_version: 0,
            trak,
            trak_shards,
        }
    }

    #[test]
    fn an_index_build_fans_out_and_reduces() {
        let graph = index_build_tasks(&index_plan(100, None, 0));
        let ranges: Vec<(usize, usize)> = graph[..4]
            .iter()
            .map(|t| {
                let spec: RetrainSpec = serde_json::from_value(t.spec.clone()).unwrap();
                (spec.start, spec.end)
            })
            .collect();
        assert_eq!(ranges, [(0, 32), (32, 64), (64, 96), (96, 100)]);
        assert_eq!(graph[4].kind, tasks::BUILD_INDEX);
        assert_eq!(graph[4].depends_on, [0, 1, 2, 3]);
    }

    #[test]
    fn a_trak_build_adds_checkpoints_and_shards_before_the_reduce() {
        let trak = TrakSettings {
            checkpoints: 2,
            projection_dim: 256,
            seed: 4,
            relative_damping: 1e-3,
        };
        let graph = index_build_tasks(&index_plan(64, Some(trak), 3));
        let kinds: Vec<&str> = graph.iter().map(|t| t.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                tasks::RETRAIN,
                tasks::RETRAIN,
                tasks::TRAK_CHECKPOINTS,
                tasks::TRAK_SHARD,
                tasks::TRAK_SHARD,
                tasks::TRAK_SHARD,
                tasks::BUILD_INDEX
            ]
        );
        assert_eq!(graph[3].depends_on, [2]);
        assert_eq!(graph[6].depends_on, [0, 1, 2, 3, 4, 5]);
        let shard: TrakShardSpec = serde_json::from_value(graph[5].spec.clone()).unwrap();
        // 5,000 examples in 3 shards: 1,667 each, rounded up to 2,048.
        assert_eq!(shard.examples(5_000), 4_096..5_000);
        assert_eq!(
            shard.examples(512),
            512..512,
            "past the end of a small split"
        );
    }
}
