//! `lethe operations`: list, get, watch, wait for and cancel operations.

use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use lethe_proto::google::longrunning::{
    operation, CancelOperationRequest, GetOperationRequest, ListOperationsRequest,
    WaitOperationRequest,
};
use lethe_proto::lethe::v1::WatchOperationRequest;

use crate::connection::{runtime, Client, Connection};
use crate::render::{metadata, print_operation, progress_line};

#[derive(Subcommand, Debug)]
pub(crate) enum OperationsVerb {
    /// List operations, newest first.
    List {
        /// `state=RUNNING`, `kind=DELETION`, or both joined by ` AND `.
        #[arg(long, default_value = "")]
        filter: String,
        /// Operations per page; every page is fetched.
        #[arg(long, default_value_t = 100)]
        page_size: i32,
    },
    /// Show one operation.
    Get { name: String },
    /// Follow an operation with a progress bar until it is done.
    Watch { name: String },
    /// Wait until an operation is done (or the timeout passes) and show it.
    Wait {
        name: String,
        #[arg(long, default_value_t = 60.0)]
        timeout_seconds: f64,
    },
    /// Cancel an operation: queued work stops now, running work at its next heartbeat.
    Cancel { name: String },
}

pub(crate) fn operations(connection: Connection, verb: OperationsVerb) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        let client = Client::connect(&connection).await?;
        match verb {
            OperationsVerb::List { filter, page_size } => list(&client, filter, page_size).await,
            OperationsVerb::Get { name } => {
                let operation = client
                    .operations()
                    .get_operation(client.call(GetOperationRequest { name }))
                    .await?;
                print_operation(&operation.into_inner(), true);
                Ok(())
            }
            OperationsVerb::Watch { name } => watch(&client, name).await,
            OperationsVerb::Wait {
                name,
                timeout_seconds,
            } => {
                let timeout = Duration::try_from_secs_f64(timeout_seconds)
                    .context("--timeout-seconds must be a non-negative number")?;
                let request = WaitOperationRequest {
                    name,
                    timeout: Some(timeout.try_into()?),
                };
                let operation = client
                    .operations()
                    .wait_operation(client.call(request))
                    .await?;
                print_operation(&operation.into_inner(), true);
                Ok(())
            }
            OperationsVerb::Cancel { name } => {
                client
                    .operations()
                    .cancel_operation(client.call(CancelOperationRequest { name: name.clone() }))
                    .await?;
                println!("cancellation requested for {name}");
                Ok(())
            }
        }
    })
}

async fn list(client: &Client, filter: String, page_size: i32) -> anyhow::Result<()> {
    let mut page_token = String::new();
    let mut shown = 0;
    loop {
        let request = ListOperationsRequest {
            filter: filter.clone(),
            page_size,
            page_token,
            ..Default::default()
        };
        let page = client
            .operations()
            .list_operations(client.call(request))
            .await?
            .into_inner();
        for operation in &page.operations {
            print_operation(operation, false);
        }
        shown += page.operations.len();
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    if shown == 0 {
        eprintln!("no operations");
    }
    Ok(())
}

/// Follows `name` with a progress bar until it is done; fails if it did not succeed.
pub(crate) async fn watch(client: &Client, name: String) -> anyhow::Result<()> {
    let mut stream = client
        .lethe()
        .watch_operation(client.call(WatchOperationRequest { name: name.clone() }))
        .await?
        .into_inner();
    let bar = ProgressBar::new(1000).with_style(
        ProgressStyle::with_template("{spinner} {elapsed_precise} [{bar:30}] {percent:>3}% {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let mut last = None;
    while let Some(operation) = stream.message().await? {
        let metadata = metadata(&operation);
        bar.set_position((metadata.progress * 1000.0).round() as u64);
        bar.set_message(progress_line(&metadata));
        last = Some(operation);
    }
    bar.finish_and_clear();
    let Some(operation) = last else {
        anyhow::bail!("the watch of {name} ended without an update")
    };
    print_operation(&operation, true);
    match &operation.result {
        Some(operation::Result::Error(status)) => {
            anyhow::bail!("{name} did not succeed: {}", status.message)
        }
        _ => Ok(()),
    }
}
