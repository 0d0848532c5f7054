//! Where Lethe keeps what its tasks produce: datasets, checkpoints, β files, audit reports.
//!
//! One interface over `object_store` for `file://` (the default) and `s3://` (any
//! S3-compatible server). Workers write under attempt-scoped keys, so two attempts of a task
//! never write the same object and a committed artifact is never overwritten; every object is
//! described by its URI, SHA-256 and size, and reads check all three.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::signer::Signer;
use object_store::{ObjectStore, WriteMultipart};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use url::Url;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("invalid artifact URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("invalid artifact name {name:?}: use letters, digits, '.', '_' and '-', and no '..'")]
    InvalidName { name: String },
    #[error("{uri} is not under this store ({base})")]
    ForeignUri { uri: String, base: String },
    #[error("{uri}: expected {expected_size} bytes with SHA-256 {expected}, found {size} bytes with {actual}")]
    HashMismatch {
        uri: String,
        expected: String,
        expected_size: u64,
        actual: String,
        size: u64,
    },
    #[error("{uri}: not found")]
    NotFound { uri: String },
    #[error("{base} cannot sign URLs: only s3:// stores can")]
    NotSignable { base: String },
    #[error("object store ({uri}): {source}")]
    Store {
        uri: String,
        source: object_store::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// An object as the coordinator records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredObject {
    pub uri: String,
    pub sha256: [u8; 32],
    pub size: u64,
}

/// A store rooted at a URL: `file:///var/lib/lethe` or `s3://bucket/prefix`. S3 settings come
/// from the usual `AWS_*` environment variables (`AWS_ENDPOINT`, `AWS_REGION`,
/// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ALLOW_HTTP` for a local server).
#[derive(Clone, Debug)]
pub struct ArtifactStore {
    store: Arc<dyn ObjectStore>,
    /// The same store, for presigned URLs: S3 only.
    signer: Option<Arc<AmazonS3>>,
    /// The root URL, with a trailing slash.
    base: String,
    prefix: ObjectPath,
}

impl ArtifactStore {
    pub fn open(url: &str) -> Result<Self, ArtifactError> {
        Self::open_with(url, &[])
    }

    /// Opens a store with explicit S3 options (`aws_endpoint`, `aws_allow_http`, ...) on top of
    /// the environment: what tests and the local stack use.
    pub fn open_with(url: &str, s3_options: &[(&str, &str)]) -> Result<Self, ArtifactError> {
        let invalid = |reason: &str| ArtifactError::InvalidUrl {
            url: url.into(),
            reason: reason.into(),
        };
        let parsed = Url::parse(url).map_err(|e| invalid(&e.to_string()))?;
        let mut signer = None;
        let (store, prefix): (Arc<dyn ObjectStore>, ObjectPath) = match parsed.scheme() {
            "file" => {
                let dir = parsed
                    .to_file_path()
                    .map_err(|_| invalid("not an absolute local path"))?;
                std::fs::create_dir_all(&dir).map_err(|source| ArtifactError::Io {
                    path: dir.clone(),
                    source,
                })?;
                let store = LocalFileSystem::new_with_prefix(&dir).map_err(|source| {
                    ArtifactError::Store {
                        uri: url.into(),
                        source,
                    }
                })?;
                (Arc::new(store), ObjectPath::default())
            }
            "s3" => {
                let bucket = parsed.host_str().ok_or_else(|| invalid("no bucket"))?;
                let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
                for (key, value) in s3_options {
                    let key = key
                        .parse()
                        .map_err(|_| invalid(&format!("unknown S3 option {key}")))?;
                    builder = builder.with_config(key, *value);
                }
                let store = Arc::new(builder.build().map_err(|source| ArtifactError::Store {
                    uri: url.into(),
                    source,
                })?);
                let prefix = ObjectPath::parse(parsed.path().trim_matches('/'))
                    .map_err(|e| invalid(&format!("bad prefix: {e}")))?;
                signer = Some(store.clone());
                (store, prefix)
            }
            other => {
                return Err(invalid(&format!(
                    "unsupported scheme {other:?} (use file:// or s3://)"
                )))
            }
        };
        let base = format!("{}/", url.trim_end_matches('/'));
        Ok(Self {
            store,
            signer,
            base,
            prefix,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The key an attempt writes `name` under: `tasks/{task}/attempts/{attempt}/{name}`. No
    /// other attempt of any task writes there.
    pub fn attempt_key(task: Uuid, attempt: i32, name: &str) -> Result<String, ArtifactError> {
        check_name(name)?;
        Ok(format!("tasks/{task}/attempts/{attempt}/{name}"))
    }

    /// Writes `bytes` under `key` (relative to the root) and describes what was written.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<StoredObject, ArtifactError> {
        let location = self.location(key)?;
        let uri = self.uri(key);
        let sha256: [u8; 32] = Sha256::digest(&bytes).into();
        let size = bytes.len() as u64;
        self.store
            .put(&location, bytes.into())
            .await
            .map_err(|source| ArtifactError::Store {
                uri: uri.clone(),
                source,
            })?;
        Ok(StoredObject { uri, sha256, size })
    }

    /// Uploads a local file in parts, hashing as it goes, so large checkpoints and β files
    /// never sit in memory whole.
    pub async fn put_file(&self, key: &str, path: &Path) -> Result<StoredObject, ArtifactError> {
        let location = self.location(key)?;
        let uri = self.uri(key);
        let io = |source| ArtifactError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = tokio::fs::File::open(path).await.map_err(io)?;
        let store_error = |source| ArtifactError::Store {
            uri: uri.clone(),
            source,
        };
        let upload = self
            .store
            .put_multipart(&location)
            .await
            .map_err(store_error)?;
        let mut writer = WriteMultipart::new(upload);
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buffer = vec![0u8; 8 << 20];
        loop {
            let n = file.read(&mut buffer).await.map_err(io)?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
            size += n as u64;
            writer.write(&buffer[..n]);
        }
        writer.finish().await.map_err(store_error)?;
        Ok(StoredObject {
            uri,
            sha256: hasher.finalize().into(),
            size,
        })
    }

    /// Reads an object and checks it is the one that was recorded.
    pub async fn get_verified(&self, object: &StoredObject) -> Result<Bytes, ArtifactError> {
        let location = self.location_of(&object.uri)?;
        let bytes = self
            .store
            .get(&location)
            .await
            .map_err(|e| self.read_error(&object.uri, e))?
            .bytes()
            .await
            .map_err(|e| self.read_error(&object.uri, e))?;
        check(object, Sha256::digest(&bytes).into(), bytes.len() as u64)?;
        Ok(bytes)
    }

    /// An object's bytes as they arrive, unchecked: the reader hashes them itself (a server
    /// streaming a checkpoint to a client, which must not hold it whole).
    pub async fn read_stream(
        &self,
        uri: &str,
    ) -> Result<BoxStream<'static, Result<Bytes, ArtifactError>>, ArtifactError> {
        let location = self.location_of(uri)?;
        let stream = self
            .store
            .get(&location)
            .await
            .map_err(|e| self.read_error(uri, e))?
            .into_stream();
        let (owner, uri) = (self.clone(), uri.to_string());
        Ok(stream
            .map(move |chunk| chunk.map_err(|e| owner.read_error(&uri, e)))
            .boxed())
    }

    /// A URL that GETs the object without credentials until `lifetime` passes: S3 stores only.
    pub async fn presigned_get(&self, uri: &str, lifetime: Duration) -> Result<Url, ArtifactError> {
        let signer = self
            .signer
            .as_ref()
            .ok_or_else(|| ArtifactError::NotSignable {
                base: self.base.clone(),
            })?;
        let location = self.location_of(uri)?;
        signer
            .signed_url(http::Method::GET, &location, lifetime)
            .await
            .map_err(|source| ArtifactError::Store {
                uri: uri.into(),
                source,
            })
    }

    /// Downloads an object to `dest`, streaming, and checks it before the file appears under
    /// its name (it is written to `dest.partial` first).
    pub async fn download_verified(
        &self,
        object: &StoredObject,
        dest: &Path,
    ) -> Result<(), ArtifactError> {
        self.download_checked(&object.uri, dest, |found| {
            check(object, found.sha256, found.size)
        })
        .await
        .map(|_| ())
    }

    /// Downloads an object registered by a user, whose hash may be known and size is not:
    /// checks the hash when given, and returns what was read either way.
    pub async fn download(
        &self,
        uri: &str,
        sha256: Option<[u8; 32]>,
        dest: &Path,
    ) -> Result<StoredObject, ArtifactError> {
        self.download_checked(uri, dest, |found| match sha256 {
            Some(expected) => check(
                &StoredObject {
                    sha256: expected,
                    ..found.clone()
                },
                found.sha256,
                found.size,
            ),
            None => Ok(()),
        })
        .await
    }

    async fn download_checked(
        &self,
        uri: &str,
        dest: &Path,
        verify: impl FnOnce(&StoredObject) -> Result<(), ArtifactError>,
    ) -> Result<StoredObject, ArtifactError> {
        let location = self.location_of(uri)?;
        let partial = dest.with_extension("partial");
        let io = |source| ArtifactError::Io {
            path: partial.clone(),
            source,
        };
        let mut stream = self
            .store
            .get(&location)
            .await
            .map_err(|e| self.read_error(uri, e))?
            .into_stream();
        let mut file = tokio::fs::File::create(&partial).await.map_err(io)?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.read_error(uri, e))?;
            hasher.update(&chunk);
            size += chunk.len() as u64;
            file.write_all(&chunk).await.map_err(io)?;
        }
        file.flush().await.map_err(io)?;
        drop(file);
        let found = StoredObject {
            uri: uri.to_string(),
            sha256: hasher.finalize().into(),
            size,
        };
        if let Err(e) = verify(&found) {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(e);
        }
        tokio::fs::rename(&partial, dest).await.map_err(io)?;
        Ok(found)
    }

    /// Removes what an attempt wrote: attempts that lost their lease leave objects nobody
    /// will commit.
    pub async fn delete_attempt(&self, task: Uuid, attempt: i32) -> Result<usize, ArtifactError> {
        let prefix = self.location(&format!("tasks/{task}/attempts/{attempt}"))?;
        let uri = self.uri(&format!("tasks/{task}/attempts/{attempt}/"));
        let store_error = |source| ArtifactError::Store {
            uri: uri.clone(),
            source,
        };
        let listed: Vec<_> = self.store.list(Some(&prefix)).collect().await;
        let mut deleted = 0;
        for meta in listed {
            let meta = meta.map_err(store_error)?;
            self.store
                .delete(&meta.location)
                .await
                .map_err(store_error)?;
            deleted += 1;
        }
        Ok(deleted)
    }

    fn uri(&self, key: &str) -> String {
        format!("{}{key}", self.base)
    }

    fn location(&self, key: &str) -> Result<ObjectPath, ArtifactError> {
        for segment in key.split('/') {
            check_name(segment)?;
        }
        Ok(self
            .prefix
            .parts()
            .chain(ObjectPath::from(key).parts())
            .collect())
    }

    /// The key of a URI of this store; a URI of another store (or one that climbs out of this
    /// one) is refused rather than followed.
    fn location_of(&self, uri: &str) -> Result<ObjectPath, ArtifactError> {
        let key = uri
            .strip_prefix(&self.base)
            .ok_or_else(|| ArtifactError::ForeignUri {
                uri: uri.into(),
                base: self.base.clone(),
            })?;
        self.location(key)
    }

    fn read_error(&self, uri: &str, error: object_store::Error) -> ArtifactError {
        match error {
            object_store::Error::NotFound { .. } => ArtifactError::NotFound { uri: uri.into() },
            source => ArtifactError::Store {
                uri: uri.into(),
                source,
            },
        }
    }
}

fn check(object: &StoredObject, sha256: [u8; 32], size: u64) -> Result<(), ArtifactError> {
    if sha256 == object.sha256 && size == object.size {
        return Ok(());
    }
    Err(ArtifactError::HashMismatch {
        uri: object.uri.clone(),
        expected: hex::encode(object.sha256),
        expected_size: object.size,
        actual: hex::encode(sha256),
        size,
    })
}

fn check_name(name: &str) -> Result<(), ArtifactError> {
    let valid = !name.is_empty()
        && name.len() <= 200
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(ArtifactError::InvalidName { name: name.into() })
    }
}
