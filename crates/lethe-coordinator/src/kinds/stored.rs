//! Reading back what an operation kind stored: its spec, its tasks' reports and artifacts. What
//! does not read is a corrupt operation, said so in the log and answered as INTERNAL.

use lethe_proto::lethe::v1::StoredObject;
use lethe_store::{Job, ReportedTask, StoredRef};
use tonic::Status;
use uuid::Uuid;

use crate::names::operation_name;

pub(crate) fn spec<T: serde::de::DeserializeOwned>(job: &Job) -> Result<T, Status> {
    serde_json::from_value(job.spec.clone())
        .map_err(|e| corrupt(job.id, &format!("its spec does not parse: {e}")))
}

/// The one task of `tasks` the plan made.
pub(crate) fn only(job: Uuid, mut tasks: Vec<ReportedTask>) -> Result<ReportedTask, Status> {
    match tasks.len() {
        1 => Ok(tasks.remove(0)),
        n => Err(corrupt(
            job,
            &format!("{n} result tasks where one was planned"),
        )),
    }
}

pub(crate) fn stored_object(object: &StoredRef) -> StoredObject {
    StoredObject {
        uri: object.uri.clone(),
        sha256: object.sha256.map(|h| h.to_vec()).unwrap_or_default(),
        size_bytes: object.size_bytes.unwrap_or(0) as u64,
    }
}

pub(crate) fn corrupt(job: Uuid, what: &str) -> Status {
    tracing::error!(operation = %operation_name(job), "{what}");
    Status::internal(format!(
        "the result of {} cannot be read: {what}",
        operation_name(job)
    ))
}
