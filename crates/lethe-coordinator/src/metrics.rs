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

/// The text exposition format. Every task kind appears, at 0 when none waits, so that a
/// series does not vanish when its queue drains.
fn exposition(depth: &[(String, i64)]) -> String {
    let mut text = String::from(
        "# HELP lethe_queue_depth Tasks ready to be claimed by a worker, by task kind.\n\
         # TYPE lethe_queue_depth gauge\n",
    );
    for kind in lethe_proto::tasks::ALL {
        let count = depth
            .iter()
            .find(|(k, _)| k == kind)
            .map_or(0, |(_, count)| *count);
        text.push_str(&format!("lethe_queue_depth{{kind=\"{kind}\"}} {count}\n"));
    }
    for (kind, count) in depth {
        if !lethe_proto::tasks::ALL.contains(&kind.as_str()) {
            text.push_str(&format!(
                "lethe_queue_depth{{kind=\"{}\"}} {count}\n",
                kind.replace('\\', "\\\\").replace('"', "\\\"")
            ));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_exposed_even_when_empty() {
        let text = exposition(&[("retrain".into(), 7), ("noop".into(), 2)]);
        assert!(text.contains("# TYPE lethe_queue_depth gauge\n"));
        assert!(text.contains("lethe_queue_depth{kind=\"retrain\"} 7\n"));
        assert!(text.contains("lethe_queue_depth{kind=\"match\"} 0\n"));
        assert!(text.contains("lethe_queue_depth{kind=\"noop\"} 2\n"));
    }
}
