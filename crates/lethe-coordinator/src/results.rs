//! The response of a done operation, per kind, built from the reports of the tasks the kind
//! names: a noop operation's from its `noop` tasks, an index build's from its `build_index`
//! reduce, a deletion's from its run's `match` or `full_retrain` (the task that wrote the
//! version), its `audit`, and the version the store recorded. Nothing else is read, so the
//! order tasks are created or finish in does not decide what a client sees.

use lethe_proto::lethe::v1::task_report::Report;
use lethe_proto::lethe::v1::{
    AuditReport, DeletionMethod, DeletionResult, FullRetrainReport, IndexBuildResult, IndexReport,
    MatchReport, NoopResult, StoredObject,
};
use lethe_proto::reports::NOOP;
use lethe_proto::tasks;
use lethe_store::{Job, JobKind, JobState, ReportedTask, Store, StoredRef};
use prost_types::Any;
use tonic::Status;
use uuid::Uuid;

use crate::operations::operation_name;
use crate::planner::{DeletionRequestSpec, DeletionRunSpec};
use crate::requests::version_to_proto;
use crate::status::from_store;

/// What a succeeded operation produced, by kind.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(untagged)]
pub(crate) enum OperationResponse {
    Noop(NoopResult),
    IndexBuild(IndexBuildResult),
    Deletion(Box<DeletionResult>),
}

impl OperationResponse {
    /// As `google.longrunning.Operation.response` carries it.
    pub(crate) fn to_any(&self) -> Any {
        match self {
            OperationResponse::Noop(result) => pack(result),
            OperationResponse::IndexBuild(result) => pack(result),
            OperationResponse::Deletion(result) => pack(result.as_ref()),
        }
    }
}

/// The response of `job` once it succeeded (`None` before).
pub(crate) async fn response(
    store: &Store,
    job: &Job,
) -> Result<Option<OperationResponse>, Status> {
    if job.state != JobState::Succeeded {
        return Ok(None);
    }
    let response = match job.kind {
        JobKind::Noop => OperationResponse::Noop(noop(store, job.id).await?),
        JobKind::IndexBuild => OperationResponse::IndexBuild(index_build(store, job.id).await?),
        JobKind::DeletionRun => {
            let run: DeletionRunSpec = spec(job)?;
            OperationResponse::Deletion(Box::new(
                deletion(store, job.id, &run, run.requested.len()).await?,
            ))
        }
        JobKind::Deletion => {
            let request: DeletionRequestSpec = spec(job)?;
            let run_id = job
                .run_id
                .ok_or_else(|| corrupt(job.id, "a succeeded deletion request without a run"))?;
            let run = store
                .get_job(&job.tenant, run_id)
                .await
                .map_err(from_store)?;
            let run_spec: DeletionRunSpec = spec(&run)?;
            OperationResponse::Deletion(Box::new(
                deletion(store, run_id, &run_spec, request.forget.len()).await?,
            ))
        }
    };
    Ok(Some(response))
}

async fn noop(store: &Store, job: Uuid) -> Result<NoopResult, Status> {
    let tasks = store
        .reported_tasks(job, &[NOOP])
        .await
        .map_err(from_store)?;
    Ok(NoopResult {
        tasks: tasks.len() as u32,
        artifact_bytes: tasks
            .iter()
            .flat_map(|task| &task.artifacts)
            .map(|(_, object)| object.size_bytes.unwrap_or(0) as u64)
            .sum(),
    })
}

async fn index_build(store: &Store, job: Uuid) -> Result<IndexBuildResult, Status> {
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

async fn deletion(
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

fn stored_object(object: &StoredRef) -> StoredObject {
    StoredObject {
        uri: object.uri.clone(),
        sha256: object.sha256.map(|h| h.to_vec()).unwrap_or_default(),
        size_bytes: object.size_bytes.unwrap_or(0) as u64,
    }
}

fn only(job: Uuid, mut tasks: Vec<ReportedTask>) -> Result<ReportedTask, Status> {
    match tasks.len() {
        1 => Ok(tasks.remove(0)),
        n => Err(corrupt(
            job,
            &format!("{n} result tasks where one was planned"),
        )),
    }
}

fn spec<T: serde::de::DeserializeOwned>(job: &Job) -> Result<T, Status> {
    serde_json::from_value(job.spec.clone())
        .map_err(|e| corrupt(job.id, &format!("its spec does not parse: {e}")))
}

fn corrupt(job: Uuid, what: &str) -> Status {
    tracing::error!(operation = %operation_name(job), "{what}");
    Status::internal(format!(
        "the result of {} cannot be read: {what}",
        operation_name(job)
    ))
}

pub(crate) fn pack<M: prost::Name>(message: &M) -> Any {
    Any::from_msg(message).expect("a result encodes")
}
