//! `lethe smoke`: a noop operation through the queue and the workers, watched to its end.

use clap::Args;
use lethe_proto::lethe::v1::CreateNoopOperationRequest;

use super::operations::watch;
use crate::connection::{runtime, Client, Connection};
use crate::render::print_operation;

#[derive(Args, Debug)]
pub(crate) struct SmokeArgs {
    /// No-op tasks to run.
    #[arg(long, default_value_t = 4)]
    tasks: u32,
    /// Seconds each task waits.
    #[arg(long, default_value_t = 1.0)]
    task_seconds: f64,
    /// Bytes of the artifact each task writes (0: none).
    #[arg(long, default_value_t = 1024)]
    artifact_bytes: u64,
    /// Idempotency key: running the same command again returns the same operation.
    #[arg(long, default_value = "")]
    request_id: String,
    /// Print the operation and return without watching it.
    #[arg(long)]
    no_watch: bool,
}

pub(crate) fn smoke(connection: Connection, args: SmokeArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        let client = Client::connect(&connection).await?;
        let request = CreateNoopOperationRequest {
            request_id: args.request_id,
            tasks: args.tasks,
            task_seconds: args.task_seconds,
            artifact_bytes: args.artifact_bytes,
            priority: 0,
        };
        let operation = client
            .lethe()
            .create_noop_operation(client.call(request))
            .await?
            .into_inner();
        if args.no_watch {
            print_operation(&operation, false);
            return Ok(());
        }
        println!("{}", operation.name);
        watch(&client, operation.name).await
    })
}
