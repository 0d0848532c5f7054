//! Lethe's coordinator: the public API (operations over jobs) and the worker API, served over
//! gRPC on top of the PostgreSQL store. It keeps no authority in memory: in-process wake-ups
//! only shorten waits, and every decision is a guarded update in the store.
//!
//! Modules depend on each other in one direction (`make lint` checks there is no cycle):
//! leaves ([`config`], `names`, `status`, `tenant`, `wake`, `metrics`, `registry`) < the gate <
//! the shared state < each operation kind < operations < the services, the dashboard and the
//! maintenance loop < `server`, which only assembles.

mod admin_api;
pub mod config;
mod dashboard;
mod gate;
mod kinds;
pub mod limits;
mod maintenance;
mod metrics;
mod names;
mod operation;
mod public_api;
mod registry;
mod server;
pub mod settings;
mod state;
mod status;
mod tenant;
mod wake;
mod worker_api;

pub use config::{AuthMode, CoordinatorConfig, TlsSettings};
pub use names::operation_name;
pub use server::{Coordinator, RunningCoordinator};
pub use tenant::{validate_tenant, DEFAULT_TENANT, TENANT_HEADER};
pub use worker_api::MAX_LONG_POLL;
