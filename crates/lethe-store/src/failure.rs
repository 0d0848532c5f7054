//! Failures as the store records them: a `google.rpc.Status` with Lethe's `ErrorInfo`
//! (lethe-proto's `failures`), kept encoded in `bytea` columns and decoded when read.

use std::collections::HashMap;

use lethe_proto::failures;
use lethe_proto::google::rpc::Status;
use lethe_proto::lethe::v1::FailureReason;
use prost::Message;
use serde::Serialize;

use crate::StoreError;

#[derive(Clone, Debug, PartialEq)]
pub struct Failure(pub Status);

impl Failure {
    pub fn new<'a>(
        reason: FailureReason,
        message: impl Into<String>,
        metadata: impl IntoIterator<Item = (&'a str, String)>,
    ) -> Self {
        Failure(failures::failure(reason, message, metadata))
    }

    /// A job failed because its task did, with the task's last failure as the cause.
    pub fn task_failed(task: uuid::Uuid, task_kind: &str, attempt: i32, cause: &Failure) -> Self {
        Failure(failures::task_failed(
            &task.to_string(),
            task_kind,
            attempt,
            &cause.0,
        ))
    }

    pub fn reason(&self) -> FailureReason {
        failures::reason_of(&self.0).unwrap_or(FailureReason::Unspecified)
    }

    pub fn message(&self) -> &str {
        &self.0.message
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        self.0.encode_to_vec()
    }

    pub(crate) fn decode(bytes: Option<Vec<u8>>) -> Result<Option<Self>, StoreError> {
        bytes
            .map(|bytes| {
                Status::decode(bytes.as_slice())
                    .map(Failure)
                    .map_err(|e| StoreError::Corrupt(format!("a stored failure: {e}")))
            })
            .transpose()
    }
}

/// What the dashboard and the admin API show of a failure.
#[derive(Serialize)]
struct FailureView<'a> {
    code: String,
    reason: &'static str,
    message: &'a str,
    metadata: HashMap<String, String>,
}

impl Serialize for Failure {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let metadata = failures::error_info(&self.0)
            .map(|info| info.metadata)
            .unwrap_or_default();
        FailureView {
            code: format!("{:?}", lethe_proto::Code::from_i32(self.0.code)),
            reason: failures::reason_name(self.reason()),
            message: &self.0.message,
            metadata,
        }
        .serialize(serializer)
    }
}
