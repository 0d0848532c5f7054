//! The one place where errors become gRPC statuses, with google.rpc details a client can act
//! on: which resource was missing, why a call was fenced, when to retry.

use std::collections::HashMap;
use std::time::Duration;

use lethe_artifacts::ArtifactError;
use lethe_store::StoreError;

use crate::limits::{MAX_FORGET, MAX_REQUEST_BYTES};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The domain of every `ErrorInfo` Lethe sends.
const DOMAIN: &str = "lethe.dev";

pub(crate) fn from_store(error: StoreError) -> Status {
    match error {
        StoreError::NotFound { what, id } => {
            let id = bounded(id);
            Status::with_error_details(
                Code::NotFound,
                format!("{what} {id} not found"),
                ErrorDetails::with_resource_info(what, id, "", ""),
            )
        }
        StoreError::Fenced { task, attempt, state, current_attempt } => Status::with_error_details(
            Code::Aborted,
            format!(
                "task {task} attempt {attempt} is not the current lease (the task is {state} at attempt \
                 {current_attempt}); drop this attempt's work"
            ),
            ErrorDetails::with_error_info(
                "LEASE_FENCED",
                DOMAIN,
                HashMap::from([
                    ("task".to_string(), task.to_string()),
                    ("state".to_string(), state.to_string()),
                    ("current_attempt".to_string(), current_attempt.to_string()),
                ]),
            ),
        ),
        StoreError::TaskCancelled { task } => Status::with_error_details(
            Code::FailedPrecondition,
            format!("task {task} was cancelled; its result is not wanted"),
            ErrorDetails::with_error_info("TASK_CANCELLED", DOMAIN, HashMap::new()),
        ),
        StoreError::IdempotencyConflict { request_id } => Status::with_error_details(
            Code::AlreadyExists,
            format!("request_id {request_id:?} was already used for a different request"),
            ErrorDetails::with_error_info("REQUEST_ID_REUSED", DOMAIN, HashMap::new()),
        ),
        StoreError::AlreadyExists { what, name } => {
            let name = bounded(name);
            Status::with_error_details(
            Code::AlreadyExists,
            format!("{what} {name:?} is already registered with a different URL or hash"),
                ErrorDetails::with_resource_info(
                    what,
                    name,
                    "",
                    "names are bound to one URL for good",
                ),
            )
        }
        StoreError::QuotaExceeded { tenant, limit } => Status::with_error_details(
            Code::ResourceExhausted,
            format!(
                "tenant {tenant:?} has its quota of {limit} unfinished operations; wait for some \
                 to finish or ask for a larger quota"
            ),
            ErrorDetails::with_quota_failure_violation(
                format!("tenants/{tenant}"),
                format!("at most {limit} unfinished operations"),
            ),
        ),
        // A net under the store's own short quotes: no refusal outgrows the trailers.
        StoreError::InvalidArgument(message) => Status::invalid_argument(bounded(message)),
        StoreError::FailedPrecondition(message) => Status::failed_precondition(bounded(message)),
        e if e.is_transient() => {
            tracing::warn!(error = %e, "database unavailable");
            Status::with_error_details(
                Code::Unavailable,
                "the database is unavailable; retry with backoff",
                ErrorDetails::with_retry_info(Some(Duration::from_secs(1))),
            )
        }
        e => {
            tracing::error!(error = %e, "internal error");
            Status::internal("internal error (logged by the coordinator)")
        }
    }
}

/// A model version's checkpoint that could not be read from the artifact store.
pub(crate) fn from_artifacts(error: ArtifactError, version: &str) -> Status {
    match error {
        ArtifactError::NotFound { .. } | ArtifactError::HashMismatch { .. } => {
            tracing::error!(%error, version, "a recorded checkpoint is missing or altered");
            Status::with_error_details(
                Code::DataLoss,
                format!(
                    "the checkpoint of {version} is missing from the artifact store or is not \
                     the recorded object"
                ),
                ErrorDetails::with_error_info("CHECKPOINT_UNREADABLE", DOMAIN, HashMap::new()),
            )
        }
        ArtifactError::ForeignUri { uri, base } => Status::failed_precondition(format!(
            "{version} is at {}, outside this coordinator's artifact store {base}: read it \
             from there",
            bounded(uri)
        )),
        ArtifactError::NotSignable { base } => Status::with_error_details(
            Code::FailedPrecondition,
            format!(
                "the artifact store {base} cannot sign URLs (only s3:// stores can): stream \
                 {version} with DownloadModelVersion"
            ),
            ErrorDetails::with_error_info("URL_SIGNING_UNSUPPORTED", DOMAIN, HashMap::new()),
        ),
        error => {
            tracing::warn!(%error, version, "artifact store unavailable");
            Status::with_error_details(
                Code::Unavailable,
                "the artifact store is unavailable; retry with backoff",
                ErrorDetails::with_retry_info(Some(Duration::from_secs(1))),
            )
        }
    }
}

/// The retry hint of a call shed for load.
const RETRY_SHED_CALL_AFTER: Duration = Duration::from_millis(500);

/// A tenant at its own share of the concurrent calls, while the replica may have room.
pub(crate) fn tenant_overloaded(tenant: &str, limit: usize) -> Status {
    let mut details = ErrorDetails::with_retry_info(Some(RETRY_SHED_CALL_AFTER));
    details.add_quota_failure_violation(
        format!("tenants/{tenant}"),
        format!("at most {limit} concurrent calls per tenant on each replica"),
    );
    Status::with_error_details(
        Code::ResourceExhausted,
        format!(
            "tenant {tenant:?} has {limit} calls in flight on this replica, its limit; retry with \
             backoff"
        ),
        details,
    )
}

/// A call shed because the replica is at `limit` of `what`.
pub(crate) fn overloaded_status(what: &str, limit: usize) -> Status {
    Status::with_error_details(
        Code::ResourceExhausted,
        format!("the coordinator is at its limit of {limit} {what}; retry with backoff"),
        ErrorDetails::with_retry_info(Some(RETRY_SHED_CALL_AFTER)),
    )
}

/// A worker-API call for a worker that registered with another token.
pub(crate) fn worker_of_another_token(worker: uuid::Uuid) -> Status {
    Status::with_error_details(
        Code::PermissionDenied,
        format!(
            "worker {worker} registered with another worker token; a worker's calls must carry \
             the token it registered with"
        ),
        ErrorDetails::with_error_info(
            "WORKER_TOKEN_MISMATCH",
            DOMAIN,
            HashMap::from([("worker".to_string(), worker.to_string())]),
        ),
    )
}

/// A registration of a URL outside the caller's prefixes (`registration_url_prefixes`).
pub(crate) fn outside_registration_prefixes(uri: &str, allowed: &[String]) -> Status {
    Status::with_error_details(
        Code::PermissionDenied,
        format!(
            "uri {:?} is outside the prefixes this tenant may register under: {}",
            bounded(uri.to_string()),
            allowed.join(", ")
        ),
        ErrorDetails::with_error_info(
            "URI_NOT_ALLOWED",
            DOMAIN,
            HashMap::from([("allowed_prefixes".to_string(), allowed.join(","))]),
        ),
    )
}

pub(crate) fn invalid(field: &str, problem: impl Into<String>) -> Status {
    let problem = bounded(problem.into());
    Status::with_error_details(
        Code::InvalidArgument,
        format!("{field}: {problem}"),
        ErrorDetails::with_bad_request_violation(field, problem),
    )
}

/// Messages quote what the caller sent, which can be any size; a status travels in HTTP/2
/// headers, which clients cap (a few KiB to 16 KiB). Quotes past this are cut.
const MAX_QUOTED: usize = 300;

pub(crate) fn bounded(text: String) -> String {
    match text.char_indices().nth(MAX_QUOTED) {
        Some((cut, _)) => format!("{}… ({} bytes in all)", &text[..cut], text.len()),
        None => text,
    }
}

/// tonic answers a request past the decoding limit with OUT_OF_RANGE ("decoded message length
/// too large"), which reads as a server fault of sorts and names no policy. It is the
/// caller's input: INVALID_ARGUMENT, naming the limit and what to do instead.
pub(crate) fn oversized_is_invalid_argument<B>(
    mut response: http::Response<B>,
) -> http::Response<B> {
    let headers = response.headers();
    let out_of_range = headers
        .get("grpc-status")
        .is_some_and(|code| code.as_bytes() == b"11");
    let oversized = headers.get("grpc-message").is_some_and(|message| {
        message
            .as_bytes()
            .starts_with(b"Error,%20decoded%20message%20length%20too%20large")
    });
    if out_of_range && oversized {
        let message = format!(
            "the request is larger than {} MiB, the most any call accepts (a deletion request \
             names at most {} indices: split larger forget sets into several requests)",
            MAX_REQUEST_BYTES >> 20,
            MAX_FORGET
        );
        let headers = response.headers_mut();
        headers.insert("grpc-status", http::HeaderValue::from_static("3"));
        if let Ok(value) = http::HeaderValue::from_str(&percent_encode(&message)) {
            headers.insert("grpc-message", value);
        }
    }
    response
}

/// grpc-message is percent-encoded (gRPC over HTTP/2): everything outside printable ASCII,
/// and `%` itself.
fn percent_encode(message: &str) -> String {
    let mut encoded = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..0x7f).contains(&byte) && byte != b'%' {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// Parses a UUID given by the caller, naming the field when it is not one.
pub(crate) fn parse_uuid(field: &str, text: &str) -> Result<uuid::Uuid, Status> {
    uuid::Uuid::parse_str(text).map_err(|_| invalid(field, format!("{text:?} is not a UUID")))
}

/// tonic answers a request whose bytes do not decode (garbage, a truncated message, a string
/// that is not UTF-8) with INTERNAL, as if the server were at fault. It is the caller's input:
/// this turns those answers into INVALID_ARGUMENT, keeping tonic's message, which says what
/// did not decode.
pub(crate) fn undecodable_is_invalid_argument<B>(
    mut response: http::Response<B>,
) -> http::Response<B> {
    let headers = response.headers();
    let internal = headers
        .get("grpc-status")
        .is_some_and(|code| code.as_bytes() == b"13");
    let undecodable = headers
        .get("grpc-message")
        .is_some_and(|message| message.as_bytes().starts_with(b"failed%20to%20decode"));
    if internal && undecodable {
        response.headers_mut().insert(
            "grpc-status",
            http::HeaderValue::from_static("3"), // INVALID_ARGUMENT
        );
    }
    response
}
