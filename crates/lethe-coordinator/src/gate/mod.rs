//! The gate every call passes before any handler runs, whether it came over gRPC or to the
//! dashboard: who is calling ([`authenticate`]), whether the replica and the caller's tenant
//! have room for the call ([`admission`]), and the audit lines of what was refused or done
//! ([`audit`]). [`layer`] puts it in front of the gRPC services.
//!
//! With `auth = "tokens"` (the binary's default) a call carries `authorization: Bearer <token>`.
//! A tenant's token calls the public API for its tenant only; a worker's token calls the worker
//! API only; an admin token the admin API only. The dashboard opens to tenant and admin tokens.
//! `auth = "trusted-header"` takes the tenant from `x-lethe-tenant` and lets anyone call the
//! worker and admin APIs: for tests, and behind a gateway that authenticates callers itself.

pub(crate) mod admission;
pub(crate) mod audit;
pub(crate) mod authenticate;
pub(crate) mod credentials;
pub(crate) mod layer;
pub(crate) mod principal;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use lethe_store::Store;
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::config::{AuthMode, CoordinatorConfig};
use crate::tenant::TenantCalls;
use credentials::Credentials;

/// Refusals written to the audit log at once; past it they are only in the process log.
const AUDIT_WRITES: usize = 64;

/// What the gate needs to decide: the store it reads credentials from and writes audit lines
/// to, the limits it admits calls under, and what it remembers between calls.
pub(crate) struct Gatekeeper {
    store: Store,
    auth: AuthMode,
    /// Worker calls must come with a client certificate (mutual TLS).
    workers_need_certificates: bool,
    registration_url_prefixes: Vec<String>,
    max_active_jobs_per_tenant: u32,
    credentials: Credentials,
    /// Permits for calls in flight, long-polls aside.
    calls: Arc<Semaphore>,
    calls_limit: usize,
    /// Each tenant's share of `calls`.
    tenant_calls: Arc<TenantCalls>,
    /// Permits for long-polls held open.
    long_polls: Arc<Semaphore>,
    long_polls_limit: usize,
    /// Permits for refusals being written to the audit log in the background.
    audit_writes: Arc<Semaphore>,
    /// Worker id → the token it registered with, as read from the database (they never change).
    worker_bindings: Mutex<HashMap<Uuid, Uuid>>,
}

impl Gatekeeper {
    pub(crate) fn new(store: Store, config: &CoordinatorConfig) -> Arc<Self> {
        Arc::new(Gatekeeper {
            store,
            auth: config.auth,
            workers_need_certificates: config
                .tls
                .as_ref()
                .is_some_and(|tls| tls.worker_ca.is_some()),
            registration_url_prefixes: config.registration_url_prefixes.clone(),
            max_active_jobs_per_tenant: config.max_active_jobs_per_tenant,
            credentials: Credentials::default(),
            calls: Arc::new(Semaphore::new(config.max_concurrent_calls.max(1))),
            calls_limit: config.max_concurrent_calls,
            tenant_calls: TenantCalls::new(config.max_concurrent_calls_per_tenant),
            long_polls: Arc::new(Semaphore::new(config.max_long_polls.max(1))),
            long_polls_limit: config.max_long_polls,
            audit_writes: Arc::new(Semaphore::new(AUDIT_WRITES)),
            worker_bindings: Mutex::new(HashMap::new()),
        })
    }
}
