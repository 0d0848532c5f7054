//! Calls as a client makes them, and reading what comes back.

use std::time::Duration;

use lethe_artifacts::StoredObject;
use lethe_coordinator::TENANT_HEADER;
use lethe_proto::google::longrunning::{operation, Operation};
use lethe_proto::lethe::v1::{DeletionResult, OperationMetadata};
use prost::Message;

/// `message` as a call with `token` as its bearer token (coordinators with `AuthMode::Tokens`).
pub fn with_token<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let bearer = format!("Bearer {token}")
        .parse()
        .expect("a token is printable ASCII");
    request.metadata_mut().insert("authorization", bearer);
    request
}

/// `message` as a call of `tenant` (coordinators that trust the `x-lethe-tenant` header).
pub fn as_tenant<T>(tenant: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let tenant = tenant.parse().expect("a tenant is printable ASCII");
    request.metadata_mut().insert(TENANT_HEADER, tenant);
    request
}

/// The response of an operation that succeeded, as its kind's result message; panics if it did
/// not succeed or responded with another type.
pub fn response<M: prost::Name + Default>(operation: &Operation) -> M {
    match &operation.result {
        Some(operation::Result::Response(any)) => any
            .to_msg()
            .unwrap_or_else(|e| panic!("{} responded with {}: {e}", operation.name, any.type_url)),
        other => panic!("{} did not succeed: {other:?}", operation.name),
    }
}

/// The error of an operation that failed; panics if it did not fail.
pub fn error(operation: &Operation) -> lethe_proto::google::rpc::Status {
    match &operation.result {
        Some(operation::Result::Error(status)) => status.clone(),
        other => panic!("{} did not fail: {other:?}", operation.name),
    }
}

/// An operation's metadata (state, progress, kind); panics if it has none.
pub fn metadata(operation: &Operation) -> OperationMetadata {
    let any = operation
        .metadata
        .as_ref()
        .unwrap_or_else(|| panic!("{} has no metadata", operation.name));
    OperationMetadata::decode(any.value.as_slice())
        .unwrap_or_else(|e| panic!("{}'s metadata: {e}", operation.name))
}

/// Reads a `WatchOperation` stream to its end, handing each operation to `each`; returns the
/// last one. Panics if the stream fails or does not end within `limit` (a bound on a hung
/// test, not a measurement).
pub async fn watch_to_end(
    mut stream: tonic::Streaming<Operation>,
    limit: Duration,
    mut each: impl AsyncFnMut(&Operation),
) -> Operation {
    let mut last = None;
    let following = async {
        while let Some(operation) = stream.message().await.expect("the watch stream") {
            each(&operation).await;
            last = Some(operation);
        }
    };
    tokio::time::timeout(limit, following)
        .await
        .unwrap_or_else(|_| panic!("the operation ends within {limit:?}"));
    last.expect("the watch sent the operation at least once")
}

/// The checkpoint of the version a deletion made, as a client downloads it.
pub fn version_object(result: &DeletionResult) -> StoredObject {
    let version = result
        .version
        .as_ref()
        .expect("a deletion names its version");
    StoredObject {
        uri: version.uri.clone(),
        sha256: version
            .sha256
            .as_slice()
            .try_into()
            .expect("a version's SHA-256 is 32 bytes"),
        size: version.size_bytes,
    }
}

/// The uuid of a deletion's run (its `operations/…` name).
pub fn run_id(result: &DeletionResult) -> uuid::Uuid {
    result
        .run
        .strip_prefix("operations/")
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("{:?} is not an operation's name", result.run))
}
