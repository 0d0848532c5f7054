//! Reading a Prometheus endpoint (the coordinator's or a worker's) as a test asserts on it.

use std::collections::HashMap;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Every `lethe_*` sample of the OpenMetrics exposition at `address`, by series
/// (`name{labels}`). A bare HTTP/1.1 request, so that the kit needs no HTTP client; panics if
/// the endpoint does not answer 200.
pub async fn scrape(address: SocketAddr) -> HashMap<String, f64> {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .unwrap_or_else(|e| panic!("connect to the metrics endpoint {address}: {e}"));
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: lethe\r\nConnection: close\r\n\r\n")
        .await
        .expect("send the scrape");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read the scrape");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
        .lines()
        .filter(|line| line.starts_with("lethe_"))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}
