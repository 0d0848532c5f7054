//! Who is calling, and whether they may: every call passes this gate before any handler runs.
//!
//! With `auth = "tokens"` (the binary's default) a call carries `authorization: Bearer <token>`.
//! A tenant's token calls the public API for its tenant only; a worker's token calls the worker
//! API only. Refusals are answered before the handler runs and appended to the audit log.
//! `auth = "trusted-header"` takes the tenant from `x-lethe-tenant` and lets anyone call the
//! worker API: for tests, and behind a gateway that authenticates callers itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use lethe_config::logging::{join_trace, TraceContext};
use lethe_store::{AuditEntry, AuditOutcome, Credential, CredentialKind, Store, StoreError};
use serde::{Deserialize, Serialize};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Code, Status};
use tower::{Layer, Service};
use tracing::Instrument;
use uuid::Uuid;

use crate::server::Shared;
use crate::status::{overloaded_status, tenant_overloaded};
use crate::tenant::tenant_from_header;

/// How callers prove who they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMode {
    /// API tokens that `lethe-coordinator credentials create` issues.
    Tokens,
    /// The `x-lethe-tenant` header, believed as sent.
    TrustedHeader,
}

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

/// The API a method belongs to, by its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Api {
    Public,
    Worker,
    Admin,
    /// Health and reflection: probes and tools call them without credentials.
    Open,
}

impl Api {
    fn of(path: &str) -> Api {
        if path.starts_with("/lethe.v1.WorkerService/") {
            Api::Worker
        } else if path.starts_with("/lethe.v1.Admin/") {
            Api::Admin
        } else if path.starts_with("/lethe.v1.Lethe/")
            || path.starts_with("/google.longrunning.Operations/")
        {
            Api::Public
        } else {
            Api::Open
        }
    }
}

/// Calls that may wait for up to a minute: they are bounded by the long-poll limit in their
/// handlers instead of by the concurrent-call limit, which they would otherwise fill.
fn is_long_poll(path: &str) -> bool {
    matches!(
        path,
        "/google.longrunning.Operations/WaitOperation"
            | "/lethe.v1.Lethe/WatchOperation"
            | "/lethe.v1.WorkerService/AcquireTask"
    )
}

/// How long a looked-up credential is believed without asking the database again: the most
/// a revocation takes to reach every replica.
const CREDENTIAL_TTL: Duration = Duration::from_secs(10);
const CACHE_CAPACITY: usize = 10_000;

/// Looks credentials up by token, with a short cache so that a busy worker fleet does not
/// read the credentials table on every call.
#[derive(Default)]
pub(crate) struct Credentials {
    cache: Mutex<HashMap<[u8; 32], (Credential, Instant)>>,
}

impl Credentials {
    pub(crate) async fn lookup(
        &self,
        store: &Store,
        token: &str,
    ) -> Result<Option<Credential>, Status> {
        let digest = lethe_store::token_digest(token);
        if let Some((credential, at)) = self.cache.lock().expect("cache lock").get(&digest) {
            if at.elapsed() < CREDENTIAL_TTL {
                return Ok(Some(credential.clone()));
            }
        }
        let found = store
            .credential_for_token(token)
            .await
            .map_err(crate::status::from_store)?;
        if let Some(credential) = &found {
            let mut cache = self.cache.lock().expect("cache lock");
            if cache.len() >= CACHE_CAPACITY {
                cache.clear();
            }
            cache.insert(digest, (credential.clone(), Instant::now()));
        }
        Ok(found)
    }
}

/// Why a call was refused before it reached its handler.
struct Refusal {
    status: Status,
    /// What the caller presented, for the audit log.
    actor: String,
    tenant: Option<String>,
    credential_id: Option<Uuid>,
}

impl Refusal {
    fn unauthenticated(message: &str, actor: &str) -> Self {
        Refusal {
            status: Status::unauthenticated(message),
            actor: actor.to_string(),
            tenant: None,
            credential_id: None,
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
enum Principal {
    Tenant(Caller),
    Worker(WorkerCaller),
    Admin(Operator),
    Anyone,
}

impl Shared {
    async fn authenticate(
        &self,
        api: Api,
        headers: &http::HeaderMap,
        client_certificate: bool,
    ) -> Result<Principal, Refusal> {
        let mutual_tls = self
            .config
            .tls
            .as_ref()
            .is_some_and(|t| t.worker_ca.is_some());
        if api == Api::Worker && mutual_tls && !client_certificate {
            return Err(Refusal::unauthenticated(
                "the worker API requires a client certificate signed by the workers' CA \
                 (mutual TLS): set the worker's tls_cert and tls_key",
                "(no client certificate)",
            ));
        }
        match (self.config.auth, api) {
            (_, Api::Open) => Ok(Principal::Anyone),
            (AuthMode::TrustedHeader, Api::Worker) => Ok(Principal::Worker(WorkerCaller {
                credential_id: None,
                actor: "(trusted network)".into(),
            })),
            (AuthMode::TrustedHeader, Api::Admin) => Ok(Principal::Admin(Operator {
                credential_id: None,
                actor: "(trusted network)".into(),
            })),
            (AuthMode::TrustedHeader, Api::Public) => {
                let tenant = tenant_from_header(headers).map_err(|status| Refusal {
                    status,
                    actor: "x-lethe-tenant".into(),
                    tenant: None,
                    credential_id: None,
                })?;
                Ok(Principal::Tenant(Caller {
                    actor: format!("x-lethe-tenant:{tenant}"),
                    tenant,
                    credential_id: None,
                    trace: None,
                }))
            }
            (AuthMode::Tokens, api) => self.authenticate_token(api, headers).await,
        }
    }

    async fn authenticate_token(
        &self,
        api: Api,
        headers: &http::HeaderMap,
    ) -> Result<Principal, Refusal> {
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return Err(Refusal::unauthenticated(
                "this call needs an API token: send `authorization: Bearer <token>` (the lethe \
                 CLI reads it from --token or LETHE_TOKEN)",
                "(no token)",
            ));
        };
        let token = bearer_token(value).ok_or_else(|| {
            Refusal::unauthenticated(
                "the authorization metadata must be `Bearer <token>`",
                "(malformed token)",
            )
        })?;
        let credential = self
            .credentials
            .lookup(&self.store, token)
            .await
            .map_err(|status| Refusal {
                status,
                actor: "(token not checked)".into(),
                tenant: None,
                credential_id: None,
            })?
            .ok_or_else(|| {
                Refusal::unauthenticated(
                    "the API token is not one this service issued",
                    "(unknown token)",
                )
            })?;
        let refuse = |status: Status| Refusal {
            status,
            actor: credential.name.clone(),
            tenant: credential.tenant.clone(),
            credential_id: Some(credential.id),
        };
        if credential.revoked_at.is_some() {
            return Err(refuse(Status::unauthenticated(format!(
                "the API token {:?} was revoked",
                credential.name
            ))));
        }
        match (credential.kind, api, credential.tenant.clone()) {
            (CredentialKind::Tenant, Api::Public, Some(tenant)) => Ok(Principal::Tenant(Caller {
                tenant,
                credential_id: Some(credential.id),
                actor: credential.name.clone(),
                trace: None,
            })),
            (CredentialKind::Worker, Api::Worker, _) => Ok(Principal::Worker(WorkerCaller {
                credential_id: Some(credential.id),
                actor: credential.name.clone(),
            })),
            (CredentialKind::Admin, Api::Admin, _) => Ok(Principal::Admin(Operator {
                credential_id: Some(credential.id),
                actor: credential.name.clone(),
            })),
            (CredentialKind::Worker, _, _) => Err(refuse(Status::permission_denied(
                "a worker's token may call the worker API only",
            ))),
            (CredentialKind::Admin, _, _) => Err(refuse(Status::permission_denied(
                "an admin token may call the admin API only, never a tenant's resources",
            ))),
            (CredentialKind::Tenant, api, _) => Err(refuse(Status::permission_denied(format!(
                "a tenant's token may call the public API only, not the {} API",
                if api == Api::Admin { "admin" } else { "worker" }
            )))),
        }
    }

    /// Appends a refusal to the audit log, in the background: the caller is answered at once.
    /// Under a flood of refusals, lines past the concurrent-write bound are dropped (and said
    /// so in the process log) rather than queued without end.
    fn record_refusal(self: &Arc<Self>, path: &str, refusal: &Refusal) {
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
        let shared = self.clone();
        tokio::spawn(async move {
            if let Err(error) = shared.store.append_audit(&entry).await {
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
        let prefixes = &self.config.registration_url_prefixes;
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

/// The tower layer that authenticates every call and sheds load when the coordinator is full.
#[derive(Clone)]
pub(crate) struct GateLayer {
    pub(crate) shared: Arc<Shared>,
}

impl<S> Layer<S> for GateLayer {
    type Service = Gate<S>;

    fn layer(&self, inner: S) -> Gate<S> {
        Gate {
            inner,
            shared: self.shared.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Gate<S> {
    inner: S,
    shared: Arc<Shared>,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B> Service<http::Request<B>> for Gate<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone that was polled ready serves this call (tower's rule for cloned services).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        let path = request.uri().path().to_string();
        // Every call runs in a span of its trace: the caller's (W3C `traceparent`) or a new one.
        let parent = request
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(TraceContext::parse);
        let span = tracing::info_span!(
            "rpc",
            otel.name = path.trim_start_matches('/'),
            otel.kind = "server",
            method = %path,
            trace_id = tracing::field::Empty,
        );
        let trace = join_trace(&span, parent.as_ref());
        Box::pin(
            async move {
                let api = Api::of(&path);
                if api == Api::Open {
                    return inner.call(request).await;
                }
                let permit = if is_long_poll(&path) {
                    None
                } else {
                    match shared.calls.clone().try_acquire_owned() {
                        Ok(permit) => Some(permit),
                        Err(_) => return Ok(overloaded("concurrent calls", shared.calls_limit())),
                    }
                };
                // Held, like the permit, until the handler answers.
                let mut tenant_place = None;
                let client_certificate = has_client_certificate(&request);
                let headers = std::mem::take(request.headers_mut());
                let authenticated = shared.authenticate(api, &headers, client_certificate).await;
                *request.headers_mut() = headers;
                match authenticated {
                    Ok(Principal::Tenant(mut caller)) => {
                        // Long-polls aside, as for the replica's own limit.
                        if permit.is_some() {
                            match shared.tenant_calls.enter(&caller.tenant) {
                                Some(place) => tenant_place = Some(place),
                                None => {
                                    let limit = shared.tenant_calls.limit();
                                    return Ok(tenant_overloaded(&caller.tenant, limit).into_http());
                                }
                            }
                        }
                        caller.trace = Some(trace);
                        request.extensions_mut().insert(caller);
                    }
                    Ok(Principal::Admin(operator)) => {
                        request.extensions_mut().insert(operator);
                    }
                    Ok(Principal::Worker(worker)) => {
                        request.extensions_mut().insert(worker);
                    }
                    Ok(Principal::Anyone) => {}
                    Err(refusal) => {
                        if refusal.status.code() != Code::Unavailable {
                            shared.record_refusal(&path, &refusal);
                        }
                        return Ok(refusal.status.into_http());
                    }
                }
                tracing::debug!("call");
                let answer = inner.call(request).await;
                drop(tenant_place);
                answer
            }
            .instrument(span),
        )
    }
}

/// The token of an `authorization: Bearer <token>` value, if it is one (at most 200 bytes).
pub(crate) fn bearer_token(value: &http::HeaderValue) -> Option<&str> {
    value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= 200)
}

/// Whether the TLS handshake verified a client certificate (against the workers' CA: the
/// server accepts no other).
fn has_client_certificate<B>(request: &http::Request<B>) -> bool {
    request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|info| info.peer_certs())
        .is_some_and(|certs| !certs.is_empty())
}

/// RESOURCE_EXHAUSTED with a hint of when to retry: what an overloaded coordinator answers
/// instead of queueing calls it cannot serve soon.
pub(crate) fn overloaded<B: Default>(what: &str, limit: usize) -> http::Response<B> {
    overloaded_status(what, limit).into_http()
}
