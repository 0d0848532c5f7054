//! Headless Chromium over WebDriver (Debian's `chromium` and `chromium-driver`), with the few
//! commands the dashboard test needs: open a URL, run a script, take a screenshot.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub(crate) struct Browser {
    driver: Child,
    port: u16,
    session: String,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// One HTTP/1.1 request to chromedriver, answered with its JSON `value`.
async fn call(port: u16, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
    tokio::time::timeout(Duration::from_secs(120), exchange(port, method, path, body))
        .await
        .map_err(|_| format!("chromedriver did not answer {method} {path} in 120 s"))?
}

async fn exchange(
    port: u16,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<Value, String> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    // Read the head, then exactly Content-Length bytes: chromedriver may keep the connection.
    let mut received = Vec::new();
    let mut buffer = [0u8; 65536];
    let (head_end, length) = loop {
        let n = stream.read(&mut buffer).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("chromedriver closed the connection".into());
        }
        received.extend_from_slice(&buffer[..n]);
        if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&received[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|n| n.trim().parse::<usize>().ok())
                .ok_or_else(|| format!("no content-length in {head}"))?;
            break (end + 4, length);
        }
    };
    while received.len() < head_end + length {
        let n = stream.read(&mut buffer).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        received.extend_from_slice(&buffer[..n]);
    }
    let payload = &received[head_end..(head_end + length).min(received.len())];
    let answer: Value = serde_json::from_slice(payload)
        .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(payload)))?;
    match answer.get("value") {
        Some(value) if value.get("error").is_some() => Err(value.to_string()),
        Some(value) => Ok(value.clone()),
        None => Err(answer.to_string()),
    }
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session of `width` × `height`.
    pub(crate) async fn start(width: u32, height: u32) -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "chromedriver is installed (Debian's chromium-driver; `make setup` installs it)",
            );
        let mut ready = false;
        for _ in 0..100 {
            if call(port, "GET", "/status", None).await.is_ok() {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ready, "chromedriver did not answer");
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                // As root, Chromium runs only without its sandbox.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", format!("--window-size={width},{height}")]
            }
        }}});
        let session = call(port, "POST", "/session", Some(capabilities))
            .await
            .expect("a Chromium session");
        let session = session["sessionId"].as_str().unwrap().to_string();
        Browser {
            driver,
            port,
            session,
        }
    }

    pub(crate) async fn open(&self, url: &str) {
        let path = format!("/session/{}/url", self.session);
        call(self.port, "POST", &path, Some(json!({ "url": url })))
            .await
            .unwrap();
    }

    /// Runs `script` (a function body) in the page and returns what it returns.
    pub(crate) async fn run(&self, script: &str) -> Value {
        let path = format!("/session/{}/execute/sync", self.session);
        call(
            self.port,
            "POST",
            &path,
            Some(json!({ "script": script, "args": [] })),
        )
        .await
        .unwrap()
    }

    /// Polls `script` until it returns something truthy (not null, false, 0 or ""), for up to
    /// `patience`; returns that value.
    pub(crate) async fn wait_for(&self, script: &str, patience: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let value = self.run(script).await;
            let truthy = !matches!(&value, Value::Null | Value::Bool(false))
                && value != json!(0)
                && value != json!("");
            if truthy {
                return value;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the page never satisfied: {script}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A PNG of the window.
    pub(crate) async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine;
        let path = format!("/session/{}/screenshot", self.session);
        let encoded = call(self.port, "GET", &path, None).await.unwrap();
        base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().unwrap())
            .unwrap()
    }
}
