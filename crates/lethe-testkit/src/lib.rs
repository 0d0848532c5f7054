//! What Lethe's integration tests start and share: a PostgreSQL database (on the test binary's
//! shared cluster, or a private one), a store on it, a coordinator serving on loopback, its
//! metrics and dashboard listeners, API credentials, an artifact store in a temporary
//! directory, in-process workers ([`lethe_runner::Runner`]s), and worker or coordinator
//! *processes* from binaries the test names. Plus the helpers every such test used to copy:
//! calls with a bearer token or a tenant header, an operation's typed response, following a
//! watch to its end, scraping `/metrics`, merging reliability figures.
//!
//! ```ignore
//! let stack = Stack::builder().tokens().workers(2).start().await;
//! let name = stack.noop_job(TENANT, [json!({})]).await;
//! ```
//!
//! It links no ML code (no `tch`, no `lethe-worker`): the coordinator, store and CLI crates
//! test with it without libtorch (`scripts/check-boundaries.sh`). The ML worker's tests start
//! `lethe-worker serve` processes from their own binary path instead.
//!
//! This is test code: anything that goes wrong while starting or driving a stack panics with a
//! message that says what, instead of returning errors every test would unwrap anyway.

mod calls;
mod metrics;
mod process;
pub mod reliability;
mod stack;

pub use calls::{
    as_tenant, error, metadata, response, run_id, version_object, watch_to_end, with_token,
};
pub use metrics::scrape;
pub use process::{
    connect_when_up, coordinator_command, free_port, output_text, worker_command, Process,
};
pub use stack::{
    spawn_runner, Database, Stack, StackBuilder, ADMIN_CREDENTIAL, TENANT, TENANT_CREDENTIAL,
    WORKER_CREDENTIAL,
};
