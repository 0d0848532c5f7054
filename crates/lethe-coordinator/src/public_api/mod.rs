//! The public API: the `lethe.v1.Lethe` service ([`lethe`]) and google.longrunning's
//! `Operations` ([`operations`]) over the caller's tenant's jobs. Handlers validate nothing of
//! a kind themselves: each kind's module does ([`crate::kinds`]).

mod download;
mod lethe;
mod listing;
mod operations;

use std::sync::Arc;
use std::time::Duration;

use lethe_proto::google::longrunning::Operation;
use tonic::Status;
use uuid::Uuid;

use crate::gate::principal::Caller;
use crate::operation::operation_of;
use crate::state::Shared;

#[derive(Clone)]
pub(crate) struct PublicApi {
    pub(crate) shared: Arc<Shared>,
}

impl PublicApi {
    pub(crate) async fn operation(
        &self,
        caller: &Caller,
        action: &str,
        id: Uuid,
    ) -> Result<Operation, Status> {
        match self.shared.store.get_job(&caller.tenant, id).await {
            Ok(job) => operation_of(&self.shared.store, &job).await,
            Err(error) => Err(self.shared.gate.refused(caller, action, error).await),
        }
    }

    /// The operation once it is done, or as it is when `timeout` passes.
    pub(crate) async fn wait(
        &self,
        caller: &Caller,
        id: Uuid,
        timeout: Duration,
    ) -> Result<Operation, Status> {
        let _permit = self.shared.gate.long_poll()?;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changes = self.shared.wake.watch_jobs();
        loop {
            let operation = self.operation(caller, "operation.wait", id).await?;
            if operation.done || tokio::time::Instant::now() >= deadline {
                return Ok(operation);
            }
            self.next_change(&mut changes, id, deadline).await;
        }
    }

    /// Returns when `id` changed through this replica, a poll interval passed (changes made
    /// through other replicas), or `deadline` came.
    pub(crate) async fn next_change(
        &self,
        changes: &mut tokio::sync::broadcast::Receiver<Uuid>,
        id: Uuid,
        deadline: tokio::time::Instant,
    ) {
        let poll = tokio::time::Instant::now() + self.shared.config.poll_interval;
        let until = poll.min(deadline);
        loop {
            match tokio::time::timeout_at(until, changes.recv()).await {
                Ok(Ok(changed)) if changed != id => continue,
                _ => return,
            }
        }
    }
}
