//! Who a call is made by, once the gate has authenticated it: put on the request for its
//! handler, which reads it with [`authenticated`] (or [`caller_of`] for the public API).

use lethe_config::logging::TraceContext;
use lethe_store::{AuditEntry, AuditOutcome};
use tonic::{Request, Status};
use uuid::Uuid;

/// A caller of the public API, once authenticated: handlers read it from the request.
#[derive(Clone, Debug)]
pub(crate) struct Caller {
    pub(crate) tenant: String,
    pub(crate) credential_id: Option<Uuid>,
    /// Who, in words, for the audit log.
    pub(crate) actor: String,
    /// This call's span in its trace (the caller's, or one it started); a job it creates
    /// keeps it, as the parent of its tasks' spans.
    pub(crate) trace: Option<TraceContext>,
}

impl Caller {
    /// An audit line about this caller.
    pub(crate) fn audit(
        &self,
        action: &str,
        resource: String,
        outcome: AuditOutcome,
        reason: Option<String>,
        detail: serde_json::Value,
    ) -> AuditEntry {
        AuditEntry {
            tenant: Some(self.tenant.clone()),
            credential_id: self.credential_id,
            actor: self.actor.clone(),
            action: action.to_string(),
            resource,
            outcome,
            reason,
            detail,
        }
    }
}

/// An operator calling the admin API, once authenticated.
#[derive(Clone, Debug)]
pub(crate) struct Operator {
    pub(crate) credential_id: Option<Uuid>,
    pub(crate) actor: String,
}

/// What the gate put on the request for its handler: a tenant's [`Caller`], an admin's
/// [`Operator`] or a [`WorkerCaller`].
pub(crate) fn authenticated<P, T>(request: &tonic::Request<T>) -> Result<P, Status>
where
    P: Clone + Send + Sync + 'static,
{
    request
        .extensions()
        .get::<P>()
        .cloned()
        .ok_or_else(|| Status::internal("the call reached its handler unauthenticated"))
}

/// A caller of the worker API, once authenticated.
#[derive(Clone, Debug)]
pub(crate) struct WorkerCaller {
    /// The worker token; `None` behind trusted headers, where workers are bound to none.
    pub(crate) credential_id: Option<Uuid>,
    pub(crate) actor: String,
}

/// The principal a call is made by: inserted into the request for handlers.
pub(crate) enum Principal {
    Tenant(Caller),
    Worker(WorkerCaller),
    Admin(Operator),
    Anyone,
}

/// The tenant's caller of a public-API call: every store query its handler makes is scoped by
/// its tenant.
pub(crate) fn caller_of<T>(request: &Request<T>) -> Result<Caller, Status> {
    authenticated(request)
}
