//! Lethe's coordinator: the public API (operations over jobs) and the worker API, served over
//! gRPC on top of the PostgreSQL store. It keeps no authority in memory: in-process wake-ups
//! only shorten waits, and every decision is a guarded update in the store.

mod admin_api;
mod auth;
mod dashboard;
mod metrics;
mod operations;
mod planner;
mod registry;
mod requests;
mod results;
mod server;
pub mod settings;
mod status;
mod tenant;
mod wake;
mod worker_api;

pub use auth::AuthMode;
pub use operations::operation_name;
pub use server::{Coordinator, CoordinatorConfig, RunningCoordinator, TlsSettings};
pub use tenant::{validate_tenant, DEFAULT_TENANT, TENANT_HEADER};
pub use worker_api::MAX_LONG_POLL;
