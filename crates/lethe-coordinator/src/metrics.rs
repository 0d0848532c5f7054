//! The Prometheus endpoint (`metrics_listen`, path `/metrics`): what an autoscaler needs to
//! size the worker fleet. Values are read from the database at each scrape, so every replica
//! reports the same queue.

use std::future::Future;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use lethe_store::Store;
use tokio::net::TcpListener;

/// Serves `/metrics` on `listener` until `shutdown` completes.
pub async fn serve_metrics(
    listener: TcpListener,
    store: Store,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(store);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn scrape(State(store): State<Store>) -> Response {
    match store.queue_depth().await {
        Ok(depth) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            exposition(&depth),
        )
            .into_response(),
        Err(error) => {
            tracing::warn!(%error, "metrics scrape could not read the queue");
            (StatusCode::SERVICE_UNAVAILABLE, format!("{error}\n")).into_response()
        }
    }
}

/// The text exposition format. Every task kind appears, at 0 when it has no task, so that a
/// series does not vanish when its queue drains.
fn exposition(depth: &[(String, String, i64)]) -> String {
    let mut text = String::new();
    for (name, state, help) in [
        (
            "lethe_queue_depth",
            "available",
            "Tasks ready to be claimed by a worker, by task kind.",
        ),
        (
            "lethe_tasks_leased",
            "leased",
            "Tasks a worker holds (running), by task kind.",
        ),
    ] {
        text.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        let count_of = |kind: &str| {
            depth
                .iter()
                .find(|(k, s, _)| k == kind && s == state)
                .map_or(0, |(_, _, count)| *count)
        };
        // A kind appears once per state in `depth`: the set lists each once, in any order.
        let others: std::collections::BTreeSet<&str> = depth
            .iter()
            .map(|(kind, _, _)| kind.as_str())
            .filter(|kind| !lethe_proto::tasks::ALL.contains(kind))
            .collect();
        let kinds = lethe_proto::tasks::ALL.iter().copied().chain(others);
        for kind in kinds {
            let label = kind.replace('\\', "\\\\").replace('"', "\\\"");
            text.push_str(&format!("{name}{{kind=\"{label}\"}} {}\n", count_of(kind)));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_exposed_even_when_empty() {
        let row = |kind: &str, state: &str, count| (kind.to_string(), state.to_string(), count);
        let text = exposition(&[
            row("noop", "available", 2),
            row("noop", "leased", 1),
            row("retrain", "available", 7),
            row("retrain", "leased", 3),
        ]);
        assert!(text.contains("# TYPE lethe_queue_depth gauge\n"));
        assert!(text.contains("lethe_queue_depth{kind=\"retrain\"} 7\n"));
        assert!(text.contains("lethe_queue_depth{kind=\"match\"} 0\n"));
        assert!(text.contains("lethe_queue_depth{kind=\"noop\"} 2\n"));
        assert!(text.contains("lethe_tasks_leased{kind=\"retrain\"} 3\n"));
        assert!(text.contains("lethe_tasks_leased{kind=\"audit\"} 0\n"));
        assert_eq!(text.matches("lethe_tasks_leased{kind=\"noop\"}").count(), 1);
    }
}
