//! The read-only dashboard (`dashboard_listen`): one HTML page with its script inline (nothing is
//! fetched from the network), and the JSON it polls. Every JSON call carries a token like the
//! gRPC API: a tenant's token sees that tenant's operations, and only the kinds of other
//! tenants' tasks on the workers; an admin token sees everything; a worker token nothing.

use std::future::Future;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use lethe_store::{CredentialKind, Job, JobGraph, StoreError};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use uuid::Uuid;

use crate::auth::{bearer_token, AuthMode};
use crate::operations::operation_name;
use crate::server::Shared;
use crate::tenant::tenant_from_header;

const PAGE: &str = include_str!("dashboard.html");

/// What a dashboard caller may see.
enum Scope {
    Tenant(String),
    Everything,
}

impl Scope {
    fn tenant(&self) -> Option<&str> {
        match self {
            Scope::Tenant(tenant) => Some(tenant),
            Scope::Everything => None,
        }
    }
}

type Refusal = (StatusCode, Json<Value>);

fn refuse(status: StatusCode, message: &str) -> Refusal {
    (status, Json(json!({ "error": message })))
}

pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/", get(page))
        .route("/api/operations", get(operations))
        .route("/api/operations/{id}", get(operation))
        .route("/api/workers", get(workers))
        .with_state(shared);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // The page runs its own inline script and talks to this origin only.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; img-src data:",
            ),
        ],
        Html(PAGE),
    )
        .into_response()
}

impl Shared {
    async fn dashboard_scope(&self, headers: &HeaderMap) -> Result<Scope, Refusal> {
        if self.config.auth == AuthMode::TrustedHeader {
            return tenant_from_header(headers)
                .map(Scope::Tenant)
                .map_err(|status| refuse(StatusCode::BAD_REQUEST, status.message()));
        }
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(bearer_token)
            .ok_or_else(|| refuse(StatusCode::UNAUTHORIZED, "sign in with an API token"))?;
        let credential = self
            .credentials
            .lookup(&self.store, token)
            .await
            .map_err(|status| refuse(StatusCode::SERVICE_UNAVAILABLE, status.message()))?
            .filter(|c| c.revoked_at.is_none())
            .ok_or_else(|| refuse(StatusCode::UNAUTHORIZED, "unknown or revoked token"))?;
        match (credential.kind, credential.tenant) {
            (CredentialKind::Tenant, Some(tenant)) => Ok(Scope::Tenant(tenant)),
            (CredentialKind::Admin, _) => Ok(Scope::Everything),
            _ => Err(refuse(
                StatusCode::FORBIDDEN,
                "a worker's token does not open the dashboard",
            )),
        }
    }
}

fn store_refusal(error: StoreError) -> Refusal {
    match error {
        StoreError::NotFound { .. } => refuse(StatusCode::NOT_FOUND, "no such operation"),
        error => {
            tracing::warn!(%error, "dashboard query failed");
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "the database is unavailable",
            )
        }
    }
}

fn summary(job: &Job) -> Value {
    let now = chrono::Utc::now();
    json!({
        "name": operation_name(job.id),
        "tenant": job.tenant,
        "kind": job.kind.as_str(),
        "state": job.state.as_str(),
        "model": job.spec.get("model"),
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "age_seconds": (now - job.created_at).as_seconds_f64(),
        "progress": if job.state.is_terminal() { 1.0 } else { job.tasks.fraction_done() },
        "tasks": job.tasks,
    })
}

async fn operations(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
) -> Result<Json<Value>, Refusal> {
    let scope = shared.dashboard_scope(&headers).await?;
    let jobs = shared
        .store
        .recent_jobs(scope.tenant(), 100)
        .await
        .map_err(store_refusal)?;
    Ok(Json(json!({
        "scope": scope.tenant().unwrap_or("(all tenants)"),
        "operations": jobs.iter().map(summary).collect::<Vec<_>>(),
    })))
}

async fn operation(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, Refusal> {
    let scope = shared.dashboard_scope(&headers).await?;
    let id =
        Uuid::parse_str(&id).map_err(|_| refuse(StatusCode::BAD_REQUEST, "not an operation id"))?;
    let JobGraph {
        job,
        tasks,
        attempts,
        holders,
    } = shared
        .store
        .job_graph(scope.tenant(), id)
        .await
        .map_err(store_refusal)?;
    let tasks: Vec<Value> = tasks
        .iter()
        .map(|task| {
            json!({
                "id": task.id,
                "kind": task.kind,
                "state": task.state.as_str(),
                "attempt": task.attempt,
                "max_attempts": task.max_attempts,
                "depends_on": task.depends_on,
                "progress": task.progress.as_ref().and_then(|p| p.get("fraction")),
                "worker": holders.get(&task.id),
                "last_error": task.last_error,
                "attempts": attempts.iter().filter(|a| a.task_id == task.id).collect::<Vec<_>>(),
            })
        })
        .collect();
    let mut body = summary(&job);
    let response = crate::results::response(&shared.store, &job)
        .await
        .map_err(|status| refuse(StatusCode::INTERNAL_SERVER_ERROR, status.message()))?;
    body["result"] = serde_json::to_value(response).expect("results serialise");
    body["error"] = serde_json::to_value(&job.error).expect("failures serialise");
    body["graph"] = json!({ "tasks": tasks });
    Ok(Json(body))
}

async fn workers(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
) -> Result<Json<Value>, Refusal> {
    let scope = shared.dashboard_scope(&headers).await?;
    let workers = shared
        .store
        .list_workers(false)
        .await
        .map_err(store_refusal)?;
    let workers: Vec<Value> = workers
        .into_iter()
        .map(|worker| {
            let tasks: Vec<Value> = worker
                .tasks
                .iter()
                .map(|task| match scope.tenant() {
                    Some(tenant) if tenant != task.tenant => {
                        json!({ "kind": task.kind, "operation": null })
                    }
                    _ => json!({
                        "kind": task.kind,
                        "operation": operation_name(task.job_id),
                        "attempt": task.attempt,
                        "progress": task.progress,
                        "leased_at": task.leased_at,
                    }),
                })
                .collect();
            json!({
                "name": worker.name,
                "device": worker.device,
                "state": worker.state,
                "slots": worker.slots,
                "last_seen_at": worker.last_seen_at,
                "tasks": tasks,
            })
        })
        .collect();
    Ok(Json(json!({ "workers": workers })))
}
