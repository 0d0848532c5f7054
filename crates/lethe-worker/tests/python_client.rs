//! `lethe_client`, the pip-installable Python client (`clients/python`), against a real
//! coordinator, PostgreSQL and worker: the happy path on fmnist-tiny, idempotency from 20
//! threads, another tenant's reads, cancellation, a bad token and bad indices.

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_works_against_a_real_stack() {
    common::python::pytest_against_a_stack("python_client", "clients/python/tests").await;
}
