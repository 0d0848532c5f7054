//! Failures as Lethe stores and serves them: a `google.rpc.Status` whose details hold one
//! `google.rpc.ErrorInfo` (domain [`ERROR_DOMAIN`]) with a [`FailureReason`]. The store writes
//! them, encoded, for every failed attempt and operation; the API hands them out unchanged.

use prost::Message;
use prost_types::Any;
use tonic::Code;

use crate::google::rpc::{ErrorInfo, Status};
use crate::lethe::v1::FailureReason;

pub const ERROR_DOMAIN: &str = "lethe.dev";

const REASON_PREFIX: &str = "FAILURE_REASON_";

/// The `ErrorInfo.reason` of `reason`: its proto name without the enum's prefix
/// (`TASK_FAILED`), as AIP-193 spells reasons.
pub fn reason_name(reason: FailureReason) -> &'static str {
    let name = reason.as_str_name();
    name.strip_prefix(REASON_PREFIX).unwrap_or(name)
}

/// The reason an `ErrorInfo.reason` names, if it is one of Lethe's.
pub fn reason_from_name(name: &str) -> Option<FailureReason> {
    FailureReason::from_str_name(&format!("{REASON_PREFIX}{name}"))
}

/// The gRPC code a failure of this reason carries.
pub fn code_of(reason: FailureReason) -> Code {
    match reason {
        // Another try of the same input fails the same way.
        FailureReason::TaskFatal | FailureReason::RunRefused => Code::FailedPrecondition,
        FailureReason::TaskRetryable
        | FailureReason::TaskInterrupted
        | FailureReason::LeaseExpired => Code::Unavailable,
        FailureReason::Cancelled => Code::Cancelled,
        FailureReason::DeadlineExceeded => Code::DeadlineExceeded,
        FailureReason::TaskFailed => Code::Aborted,
        FailureReason::Unspecified => Code::Unknown,
    }
}

/// A failure of `reason` with its message and the ErrorInfo metadata that locates it.
pub fn failure<'a>(
    reason: FailureReason,
    message: impl Into<String>,
    metadata: impl IntoIterator<Item = (&'a str, String)>,
) -> Status {
    with_code(code_of(reason), reason, message.into(), metadata)
}

/// An operation failed because one of its tasks did, for good: the task's own failure (its
/// last attempt's) says why, and decides the code (a fatal input stays FAILED_PRECONDITION;
/// exhausted retries and interruptions are ABORTED).
pub fn task_failed(task: &str, task_kind: &str, attempt: i32, cause: &Status) -> Status {
    let cause_reason = reason_of(cause).unwrap_or(FailureReason::Unspecified);
    let code = match cause_reason {
        FailureReason::TaskFatal => Code::FailedPrecondition,
        _ => Code::Aborted,
    };
    with_code(
        code,
        FailureReason::TaskFailed,
        format!(
            "task {task} ({task_kind}) failed on attempt {attempt} ({}): {}",
            reason_name(cause_reason).to_lowercase(),
            cause.message
        ),
        [
            ("task", task.to_owned()),
            ("task_kind", task_kind.to_owned()),
            ("attempt", attempt.to_string()),
            ("task_reason", reason_name(cause_reason).to_owned()),
        ],
    )
}

fn with_code<'a>(
    code: Code,
    reason: FailureReason,
    message: String,
    metadata: impl IntoIterator<Item = (&'a str, String)>,
) -> Status {
    let info = ErrorInfo {
        reason: reason_name(reason).to_owned(),
        domain: ERROR_DOMAIN.to_owned(),
        metadata: metadata
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value))
            .collect(),
    };
    Status {
        code: code as i32,
        message,
        details: vec![Any::from_msg(&info).expect("an ErrorInfo encodes")],
    }
}

/// The ErrorInfo of a failure Lethe wrote, if it holds one.
pub fn error_info(status: &Status) -> Option<ErrorInfo> {
    status
        .details
        .iter()
        .filter_map(|any| any.to_msg::<ErrorInfo>().ok())
        .find(|info| info.domain == ERROR_DOMAIN)
}

/// The reason of a failure Lethe wrote.
pub fn reason_of(status: &Status) -> Option<FailureReason> {
    error_info(status).and_then(|info| reason_from_name(&info.reason))
}

/// A stored failure, decoded; `None` for bytes that are not one (never written by Lethe).
pub fn decode(bytes: &[u8]) -> Option<Status> {
    Status::decode(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_round_trips_through_its_error_info_name() {
        for value in 0..=8 {
            let reason = FailureReason::try_from(value).unwrap();
            let status = failure(reason, "why", [("worker", "w1".to_owned())]);
            let decoded = decode(&status.encode_to_vec()).unwrap();
            assert_eq!(reason_of(&decoded), Some(reason));
            assert_eq!(decoded.code, code_of(reason) as i32);
            assert_eq!(error_info(&decoded).unwrap().metadata["worker"], "w1");
        }
        assert!(
            FailureReason::try_from(9).is_err(),
            "a new reason needs a case here"
        );
    }

    #[test]
    fn a_task_failure_keeps_its_cause_and_a_fatal_one_stays_a_precondition() {
        let fatal = failure(FailureReason::TaskFatal, "bad checkpoint", []);
        let failed = task_failed("t1", "match", 1, &fatal);
        assert_eq!(failed.code, Code::FailedPrecondition as i32);
        assert_eq!(reason_of(&failed), Some(FailureReason::TaskFailed));
        assert!(
            failed.message.contains("bad checkpoint"),
            "{}",
            failed.message
        );
        let info = error_info(&failed).unwrap();
        assert_eq!(info.metadata["task_reason"], "TASK_FATAL");
        assert_eq!(info.metadata["task_kind"], "match");

        let expired = failure(FailureReason::LeaseExpired, "no heartbeat", []);
        assert_eq!(
            task_failed("t2", "retrain", 4, &expired).code,
            Code::Aborted as i32
        );
    }
}
