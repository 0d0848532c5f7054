//! The read-only dashboard (`dashboard_listen`): one HTML page with its script inline (nothing is
//! fetched from the network), and the JSON it polls. Every JSON call passes the gate like a
//! gRPC call (its refusals are in the audit log): a tenant's token sees that tenant's
//! operations, and only the kinds of other tenants' tasks on the workers; an admin token sees
//! everything; a worker token nothing.

use std::future::Future;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use lethe_store::{Job, JobGraph, StoreError};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tonic::Code;
use uuid::Uuid;

use crate::gate::admission::{Call, Pass};
use crate::gate::authenticate::Api;
use crate::gate::principal::Principal;
use crate::names::operation_name;
use crate::state::Shared;

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

/// Lets a dashboard call through the gate, as any gRPC call: the same credentials, limits
/// and audit lines. The pass is held until the call is answered.
async fn admit(shared: &Shared, path: &str, headers: &HeaderMap) -> Result<(Scope, Pass), Refusal> {
    let pass = shared
        .gate
        .admit(Call {
            api: Api::Dashboard,
            path,
            headers,
            client_certificate: false,
            long_poll: false,
            trace: None,
        })
        .await
        .map_err(|status| refuse(http_status(status.code()), status.message()))?;
    let scope = match &pass.principal {
        Principal::Tenant(caller) => Scope::Tenant(caller.tenant.clone()),
        Principal::Admin(_) => Scope::Everything,
        Principal::Worker(_) | Principal::Anyone => {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "only tenant and admin tokens open the dashboard",
            ))
        }
    };
    Ok((scope, pass))
}

/// The HTTP status of a gate's refusal.
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
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
    let (scope, _pass) = admit(&shared, "/dashboard/api/operations", &headers).await?;
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
    let (scope, _pass) = admit(&shared, "/dashboard/api/operations/{id}", &headers).await?;
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
                "progress": task.progress.as_ref().map(|p| p.fraction),
                "worker": holders.get(&task.id),
                "last_error": task.last_error,
                "attempts": attempts.iter().filter(|a| a.task_id == task.id).collect::<Vec<_>>(),
            })
        })
        .collect();
    let mut body = summary(&job);
    let response = crate::operation::response(&shared.store, &job)
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
    let (scope, _pass) = admit(&shared, "/dashboard/api/workers", &headers).await?;
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
