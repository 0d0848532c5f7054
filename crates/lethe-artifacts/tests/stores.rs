//! The artifact store on a local directory and on a real S3-compatible server (moto, from the
//! project's virtualenv) that the test starts on loopback: the same operations, the same
//! checks.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use lethe_artifacts::{ArtifactError, ArtifactStore, StoredObject};
use uuid::Uuid;

/// Everything the store promises, on any backend.
async fn exercise(store: &ArtifactStore, scratch: &std::path::Path) {
    let task = Uuid::now_v7();
    let key = ArtifactStore::attempt_key(task, 1, "model.safetensors").unwrap();
    assert_eq!(key, format!("tasks/{task}/attempts/1/model.safetensors"));
    let object = store
        .put(&key, Bytes::from_static(b"weights"))
        .await
        .unwrap();
    assert_eq!(object.uri, format!("{}{key}", store.base()));
    assert_eq!(object.size, 7);
    assert_eq!(
        store.get_verified(&object).await.unwrap(),
        Bytes::from_static(b"weights")
    );

    // A recorded hash or size that does not match what is stored is refused.
    let wrong_hash = StoredObject {
        sha256: [0; 32],
        ..object.clone()
    };
    assert!(matches!(
        store.get_verified(&wrong_hash).await,
        Err(ArtifactError::HashMismatch { .. })
    ));
    let wrong_size = StoredObject {
        size: 8,
        ..object.clone()
    };
    assert!(matches!(
        store.get_verified(&wrong_size).await,
        Err(ArtifactError::HashMismatch { .. })
    ));
    // Content changed behind the store's back is caught on read.
    store
        .put(&key, Bytes::from_static(b"WEIGHTS"))
        .await
        .unwrap();
    assert!(matches!(
        store.get_verified(&object).await,
        Err(ArtifactError::HashMismatch { .. })
    ));

    // Names and URIs cannot escape the store.
    for bad in ["../x", "a/../../b", "", "with space", "a\\b"] {
        assert!(ArtifactStore::attempt_key(task, 1, bad).is_err(), "{bad:?}");
    }
    let climbing = StoredObject {
        uri: format!("{}../secret", store.base()),
        ..object.clone()
    };
    assert!(matches!(
        store.get_verified(&climbing).await,
        Err(ArtifactError::InvalidName { .. })
    ));
    let foreign = StoredObject {
        uri: "file:///etc/passwd".into(),
        ..object.clone()
    };
    assert!(matches!(
        store.get_verified(&foreign).await,
        Err(ArtifactError::ForeignUri { .. })
    ));
    let missing = StoredObject {
        uri: format!("{}tasks/{task}/attempts/9/none", store.base()),
        ..object.clone()
    };
    assert!(matches!(
        store.get_verified(&missing).await,
        Err(ArtifactError::NotFound { .. })
    ));

    // Large files go up in parts and come down checked.
    let big: Vec<u8> = (0..(12 << 20))
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let source = scratch.join("big.bin");
    std::fs::write(&source, &big).unwrap();
    let big_key = ArtifactStore::attempt_key(task, 2, "beta.bin").unwrap();
    let uploaded = store.put_file(&big_key, &source).await.unwrap();
    assert_eq!(uploaded.size, big.len() as u64);
    let dest = scratch.join("back.bin");
    store.download_verified(&uploaded, &dest).await.unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), big);
    // Streamed, the same bytes arrive in order.
    let mut streamed = Vec::new();
    let mut chunks = store.read_stream(&uploaded.uri).await.unwrap();
    while let Some(chunk) = futures::StreamExt::next(&mut chunks).await {
        streamed.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(streamed, big);
    assert!(matches!(
        store.read_stream(&foreign.uri).await.err(),
        Some(ArtifactError::ForeignUri { .. })
    ));
    let corrupt = StoredObject {
        sha256: [1; 32],
        ..uploaded.clone()
    };
    let refused = scratch.join("refused.bin");
    assert!(store.download_verified(&corrupt, &refused).await.is_err());
    assert!(
        !refused.exists() && !refused.with_extension("partial").exists(),
        "nothing left behind"
    );

    // An attempt's objects can be removed together, and only that attempt's.
    assert_eq!(store.delete_attempt(task, 2).await.unwrap(), 1);
    assert!(matches!(
        store.get_verified(&uploaded).await,
        Err(ArtifactError::NotFound { .. })
    ));
    let untouched = store.get_verified(&object).await;
    assert!(
        matches!(untouched, Err(ArtifactError::HashMismatch { .. })),
        "attempt 1 is still there: {untouched:?}"
    );
}

#[tokio::test]
async fn a_local_directory_store_keeps_its_promises() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}/artifacts", dir.path().display());
    let store = ArtifactStore::open(&url).unwrap();
    exercise(&store, dir.path()).await;
    let object = store.put("loose", Bytes::from_static(b"x")).await.unwrap();
    assert!(matches!(
        store
            .presigned_get(&object.uri, Duration::from_secs(60))
            .await,
        Err(ArtifactError::NotSignable { .. })
    ));
    assert!(ArtifactStore::open("ftp://host/x").is_err());
    assert!(ArtifactStore::open("not a url").is_err());
}

/// A moto server on a free loopback port, stopped when dropped.
struct S3Server {
    child: Child,
    port: u16,
}

impl S3Server {
    fn start() -> Self {
        let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/moto_server");
        assert!(
            venv.exists(),
            "{} is missing: run `make setup` (it installs moto[server] into the virtualenv)",
            venv.display()
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(&venv)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not start within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { child, port }
    }

    /// S3 CreateBucket is an unsigned-enough PUT for moto.
    fn create_bucket(&self, bucket: &str) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(stream, "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", self.port).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
}

impl S3Server {
    /// The body of a GET of `url` (on this server), with no credentials of its own.
    fn get(&self, url: &url::Url) -> Vec<u8> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let target = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_string(),
        };
        write!(
            stream,
            "GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            self.port
        )
        .unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).unwrap();
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        let body = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        answer[body..].to_vec()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn an_s3_store_keeps_the_same_promises_against_a_real_server() {
    let server = S3Server::start();
    server.create_bucket("lethe-test");
    let endpoint = format!("http://127.0.0.1:{}", server.port);
    let options = [
        ("aws_endpoint", endpoint.as_str()),
        ("aws_allow_http", "true"),
        ("aws_region", "us-east-1"),
        ("aws_access_key_id", "test"),
        ("aws_secret_access_key", "test"),
        ("aws_virtual_hosted_style_request", "false"),
    ];
    let store = ArtifactStore::open_with("s3://lethe-test/deploy-a", &options).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    exercise(&store, scratch.path()).await;
    // Another prefix of the same bucket is another store.
    let other = ArtifactStore::open_with("s3://lethe-test/deploy-b", &options).unwrap();
    let object = store
        .put("tasks/x/attempts/1/a", Bytes::from_static(b"a"))
        .await
        .unwrap();
    assert!(matches!(
        other.get_verified(&object).await,
        Err(ArtifactError::ForeignUri { .. })
    ));

    // A presigned URL reads the object without the store's credentials.
    let url = store
        .presigned_get(&object.uri, Duration::from_secs(300))
        .await
        .unwrap();
    assert!(
        url.query().is_some_and(|q| q.contains("X-Amz-Signature")),
        "{url}"
    );
    assert_eq!(server.get(&url), b"a");
    assert!(matches!(
        other
            .presigned_get(&object.uri, Duration::from_secs(300))
            .await,
        Err(ArtifactError::ForeignUri { .. })
    ));
}
