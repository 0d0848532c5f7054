//! The audit log's lines about callers: every refusal the gate makes, every cross-tenant
//! probe, and the changes handlers make on a caller's behalf.

use std::sync::Arc;

use lethe_store::{AuditEntry, AuditOutcome, StoreError};
use tonic::Status;
use uuid::Uuid;

use super::authenticate::Refusal;
use super::principal::{Caller, WorkerCaller};
use super::Gatekeeper;

impl Gatekeeper {
    /// Appends a refusal to the audit log, in the background: the caller is answered at once.
    /// Under a flood of refusals, lines past the concurrent-write bound are dropped (and said
    /// so in the process log) rather than queued without end.
    pub(crate) fn record_refusal(self: &Arc<Self>, path: &str, refusal: &Refusal) {
        tracing::warn!(
            method = path,
            actor = %refusal.actor,
            code = ?refusal.status.code(),
            reason = refusal.status.message(),
            "call refused"
        );
        let Ok(permit) = self.audit_writes.clone().try_acquire_owned() else {
            tracing::warn!(
                method = path,
                "audit log writes saturated; refusal not recorded"
            );
            return;
        };
        let entry = AuditEntry {
            tenant: refusal.tenant.clone(),
            credential_id: refusal.credential_id,
            actor: refusal.actor.clone(),
            action: path.trim_start_matches('/').to_string(),
            resource: String::new(),
            outcome: AuditOutcome::Denied,
            reason: Some(refusal.status.message().to_string()),
            detail: serde_json::json!({"code": format!("{:?}", refusal.status.code())}),
        };
        let gate = self.clone();
        tokio::spawn(async move {
            if let Err(error) = gate.store.append_audit(&entry).await {
                tracing::warn!(%error, "recording a refusal in the audit log failed");
            }
            drop(permit);
        });
    }

    /// The status for a store error met while acting for `caller`. What another tenant holds is
    /// reported as not found, exactly like what does not exist, so that IDs and names cannot be
    /// probed; the attempt is appended to the audit log as denied.
    pub(crate) async fn refused(&self, caller: &Caller, action: &str, error: StoreError) -> Status {
        if let StoreError::NotFound { what, id } = &error {
            if let Ok(Some(owner)) = self.store.holder_elsewhere(what, id, &caller.tenant).await {
                let resource = match *what {
                    "job" => format!("operations/{id}"),
                    other => format!("{other}s/{id}"),
                };
                tracing::warn!(tenant = %caller.tenant, actor = %caller.actor, action, %resource, "cross-tenant access refused");
                self.record(caller.audit(
                    action,
                    resource,
                    AuditOutcome::Denied,
                    Some("held by another tenant".into()),
                    serde_json::json!({"owner": owner}),
                ))
                .await;
            }
        }
        crate::status::from_store(error)
    }

    /// Refuses a worker-API call that acts for `worker` with a token other than the one the
    /// worker registered with, and appends the attempt to the audit log as denied. A binding
    /// never changes, so each replica remembers the ones it has read.
    pub(crate) async fn admit_worker(
        &self,
        caller: &WorkerCaller,
        worker: Uuid,
        action: &str,
    ) -> Result<(), Status> {
        let Some(credential) = caller.credential_id else {
            return Ok(());
        };
        let bound = self.worker_binding(worker).await?;
        if bound.is_none_or(|bound| bound == credential) {
            return Ok(());
        }
        tracing::warn!(actor = %caller.actor, %worker, action, "worker call with another worker's token refused");
        self.record(AuditEntry {
            tenant: None,
            credential_id: Some(credential),
            actor: caller.actor.clone(),
            action: action.to_string(),
            resource: format!("workers/{worker}"),
            outcome: AuditOutcome::Denied,
            reason: Some("the worker registered with another token".into()),
            detail: serde_json::json!({}),
        })
        .await;
        Err(crate::status::worker_of_another_token(worker))
    }

    /// The token `worker` registered with, remembered once read.
    async fn worker_binding(&self, worker: Uuid) -> Result<Option<Uuid>, Status> {
        let remembered = self
            .worker_bindings
            .lock()
            .expect("worker bindings lock")
            .get(&worker)
            .copied();
        if remembered.is_some() {
            return Ok(remembered);
        }
        let bound = self
            .store
            .worker_credential(worker)
            .await
            .map_err(crate::status::from_store)?;
        if let Some(bound) = bound {
            let mut bindings = self.worker_bindings.lock().expect("worker bindings lock");
            // Every restart registers a new worker id: a long-lived replica forgets them all
            // now and then rather than keep every one it has seen.
            if bindings.len() >= MAX_REMEMBERED_BINDINGS {
                bindings.clear();
            }
            bindings.insert(worker, bound);
        }
        Ok(bound)
    }

    /// Refuses a registration of `uri` outside the caller's `registration_url_prefixes`, and
    /// appends the attempt to the audit log as denied.
    pub(crate) async fn admit_registration(
        &self,
        caller: &Caller,
        action: &str,
        resource: String,
        uri: &str,
    ) -> Result<(), Status> {
        let prefixes = &self.registration_url_prefixes;
        let Err(status) = crate::registry::check_registrable(prefixes, &caller.tenant, uri) else {
            return Ok(());
        };
        tracing::warn!(tenant = %caller.tenant, actor = %caller.actor, action, %resource, "registration outside the tenant's prefixes refused");
        // Both are the caller's text, of any length, and not yet checked by the store.
        self.record(caller.audit(
            action,
            crate::status::bounded(resource),
            AuditOutcome::Denied,
            Some("outside the tenant's registration prefixes".into()),
            serde_json::json!({"uri": crate::status::bounded(uri.to_string())}),
        ))
        .await;
        Err(status)
    }

    /// Appends a line for a change the caller made; a failure is logged, not returned, since the
    /// change itself has been made.
    pub(crate) async fn record(&self, entry: AuditEntry) {
        if let Err(error) = self.store.append_audit(&entry).await {
            tracing::error!(%error, action = %entry.action, "writing the audit log failed");
        }
    }
}

/// Worker bindings a replica keeps before it starts over (about 5 MB).
const MAX_REMEMBERED_BINDINGS: usize = 100_000;
