//! The `noop` task kind: waits, reporting progress and honouring cancellation, and optionally
//! writes an artifact. Load tests, smoke tests of a deployment, and the runner's own tests use
//! it; it needs no ML code.

use std::time::{Duration, Instant};

use lethe_proto::lethe::v1::NoopReport;
use lethe_proto::tasks::NoopSpec;

use crate::{TaskContext, TaskError, TaskHandler, TaskOutput};

pub struct NoopHandler;

impl TaskHandler for NoopHandler {
    type Spec = NoopSpec;
    type Report = NoopReport;

    fn run(
        &self,
        spec: NoopSpec,
        context: &TaskContext,
    ) -> Result<TaskOutput<NoopReport>, TaskError> {
        let seconds = spec.seconds;
        if !(0.0..=3600.0).contains(&seconds) {
            return Err(TaskError::Fatal(format!(
                "seconds must be in [0, 3600], got {seconds}"
            )));
        }
        let total = Duration::from_secs_f64(seconds);
        let start = Instant::now();
        while start.elapsed() < total {
            if context.is_cancelled() {
                return Err(TaskError::Cancelled);
            }
            context.report(start.elapsed().as_secs_f64() / seconds, "waiting");
            std::thread::sleep(
                Duration::from_millis(50).min(total.saturating_sub(start.elapsed())),
            );
        }
        let mut output = TaskOutput::report(NoopReport { seconds });
        if let Some(size) = spec.artifact_bytes {
            if size > 64 << 20 {
                return Err(TaskError::Fatal(format!(
                    "artifact_bytes must be at most 64 MiB, got {size}"
                )));
            }
            let key = context.artifact_key("noop.bin")?;
            let bytes = artifact_bytes(context.task_id, size as usize);
            let handle = tokio::runtime::Handle::current();
            let object = handle
                .block_on(context.artifacts.put(&key, bytes.into()))
                .map_err(|e| TaskError::Retryable(e.to_string()))?;
            output.artifacts.push(("noop.bin".into(), object));
        }
        Ok(output)
    }
}

/// Deterministic content per task, so a test can tell whose artifact it reads.
fn artifact_bytes(task: uuid::Uuid, size: usize) -> Vec<u8> {
    let seed = task.as_u128();
    (0..size)
        .map(|i| (seed.wrapping_mul(i as u128 + 1) >> 64) as u8)
        .collect()
}
