//! The public API through a second gRPC stack: `clients/conformance`, pytest over Python stubs
//! that grpcio-tools generates from `proto/`, against a real coordinator, PostgreSQL and one
//! `lethe-worker serve` process. The Python side checks names, limits, errors, progress,
//! typed results and downloads (docs/service.md); this side only starts what it needs.

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_meets_the_api_as_documented() {
    common::python::pytest_against_a_stack("conformance", "clients/conformance").await;
}
