//! What the CLI prints: an operation as a line (and, in detail, its result or error), and the
//! typed results of each kind ([`results`]).

mod results;

use lethe_proto::google::longrunning::{operation, Operation};
use lethe_proto::lethe::v1::{OperationKind, OperationMetadata, OperationState};
use prost::Message;

pub(crate) fn metadata(operation: &Operation) -> OperationMetadata {
    operation
        .metadata
        .as_ref()
        .and_then(|any| OperationMetadata::decode(any.value.as_slice()).ok())
        .unwrap_or_default()
}

pub(crate) fn progress_line(metadata: &OperationMetadata) -> String {
    let tasks = metadata.tasks.unwrap_or_default();
    format!(
        "{:<10} {}/{} tasks done, {} running",
        state_name(metadata.state),
        tasks.succeeded,
        tasks.total,
        tasks.running
    )
}

fn state_name(state: i32) -> &'static str {
    OperationState::try_from(state)
        .map(|s| s.as_str_name().trim_start_matches("OPERATION_STATE_"))
        .unwrap_or("UNKNOWN")
}

pub(crate) fn print_operation(operation: &Operation, detailed: bool) {
    let metadata = metadata(operation);
    let kind = OperationKind::try_from(metadata.kind)
        .map(|k| k.as_str_name().trim_start_matches("OPERATION_KIND_"))
        .unwrap_or("UNKNOWN");
    let created = metadata
        .create_time
        .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, 0))
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default();
    println!(
        "{}  {:<11} {:>4.0}%  {}  created {created}",
        operation.name,
        kind,
        metadata.progress * 100.0,
        progress_line(&metadata)
    );
    if !detailed {
        return;
    }
    if !metadata.request_id.is_empty() {
        println!("  request_id: {}", metadata.request_id);
    }
    match &operation.result {
        Some(operation::Result::Error(status)) => {
            let code = tonic::Code::from_i32(status.code);
            let reason = lethe_proto::failures::reason_of(status)
                .map(|reason| format!(" [{}]", lethe_proto::failures::reason_name(reason)))
                .unwrap_or_default();
            println!("  error: {code:?}{reason}: {}", status.message);
        }
        Some(operation::Result::Response(any)) => {
            for line in results::response(any) {
                println!("  {line}");
            }
        }
        None => {}
    }
}

pub(crate) fn hex_or_none(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        "(none)".into()
    } else {
        hex::encode(bytes)
    }
}
