//! Whether a call gets in: a permit of the replica's concurrent calls (long-polls have their
//! own), a place among its tenant's, and a principal. What a caller may submit is also
//! admitted here: the quota and the audit line a new job carries to the store.

use std::sync::Arc;

use lethe_config::logging::TraceContext;
use lethe_store::{Admission, AuditOutcome};
use tokio::sync::OwnedSemaphorePermit;
use tonic::{Code, Status};

use super::authenticate::Api;
use super::principal::{Caller, Principal};
use super::Gatekeeper;
use crate::status::{overloaded_status, tenant_overloaded};
use crate::tenant::TenantCall;

/// A call as the gate sees it.
pub(crate) struct Call<'a> {
    pub(crate) api: Api,
    /// The gRPC method or dashboard path: the action of a refusal's audit line.
    pub(crate) path: &'a str,
    pub(crate) headers: &'a http::HeaderMap,
    /// The TLS handshake verified a client certificate.
    pub(crate) client_certificate: bool,
    /// A long-poll: bounded by the long-poll permits its handler takes, not by the concurrent
    /// calls, which it would otherwise fill.
    pub(crate) long_poll: bool,
    /// The span of the call's trace, kept by a tenant's caller for the jobs it creates.
    pub(crate) trace: Option<TraceContext>,
}

/// A call let in: who makes it, and the places it holds until it is answered (dropped).
pub(crate) struct Pass {
    pub(crate) principal: Principal,
    _permit: Option<OwnedSemaphorePermit>,
    _tenant_place: Option<TenantCall>,
}

impl Gatekeeper {
    /// Lets `call` in, or says why not. Refusals other than overload and an unavailable
    /// database are appended to the audit log.
    pub(crate) async fn admit(self: &Arc<Self>, call: Call<'_>) -> Result<Pass, Status> {
        let permit = if call.long_poll {
            None
        } else {
            Some(
                self.calls
                    .clone()
                    .try_acquire_owned()
                    .map_err(|_| overloaded_status("concurrent calls", self.calls_limit))?,
            )
        };
        let mut principal = match self
            .authenticate(call.api, call.headers, call.client_certificate)
            .await
        {
            Ok(principal) => principal,
            Err(refusal) => {
                if refusal.status.code() != Code::Unavailable {
                    self.record_refusal(call.path, &refusal);
                }
                return Err(refusal.status);
            }
        };
        let mut tenant_place = None;
        if let Principal::Tenant(caller) = &mut principal {
            // Long-polls aside, as for the replica's own limit.
            if permit.is_some() {
                tenant_place =
                    Some(self.tenant_calls.enter(&caller.tenant).ok_or_else(|| {
                        tenant_overloaded(&caller.tenant, self.tenant_calls.limit())
                    })?);
            }
            caller.trace = call.trace;
        }
        Ok(Pass {
            principal,
            _permit: permit,
            _tenant_place: tenant_place,
        })
    }

    /// A long-poll permit, or RESOURCE_EXHAUSTED when as many are open as allowed.
    pub(crate) fn long_poll(&self) -> Result<OwnedSemaphorePermit, Status> {
        self.long_polls
            .clone()
            .try_acquire_owned()
            .map_err(|_| overloaded_status("long-polls", self.long_polls_limit))
    }

    /// What a job submitted by `caller` carries to the store: its quota and its audit line.
    pub(crate) fn job_admission(
        &self,
        caller: &Caller,
        action: &str,
        detail: serde_json::Value,
    ) -> Admission {
        Admission {
            audit: caller.audit(action, String::new(), AuditOutcome::Allowed, None, detail),
            default_max_active_jobs: self.max_active_jobs_per_tenant,
            traceparent: caller.trace.as_ref().map(TraceContext::traceparent),
        }
    }
}
