//! Getting a model version's checkpoint out, tenant-scoped like every read: streamed through
//! the coordinator and hashed on the way, or as a short-lived URL of an s3:// store. Tenants
//! never need read access to the fleet's artifact store.

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use lethe_artifacts::ArtifactError;
use lethe_proto::lethe::v1::{self as pb, ModelVersionChunk};
use lethe_store::{AuditOutcome, ModelVersion, StoreError};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt};
use tonic::Status;

use super::PublicApi;
use crate::gate::principal::Caller;
use crate::kinds::fields::named_model;
use crate::limits::{DEFAULT_URL_LIFETIME, DOWNLOAD_CHUNK_BYTES, MAX_URL_LIFETIME};
use crate::names::parse_version_name;
use crate::registry::version_to_proto;
use crate::status::{from_artifacts, from_store, invalid};

pub(crate) type ChunkStream = Pin<Box<dyn Stream<Item = Result<ModelVersionChunk, Status>> + Send>>;

impl PublicApi {
    /// Streams the checkpoint of the version `name` names.
    pub(crate) async fn download(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<ChunkStream, Status> {
        let action = "model_version.download";
        let version = self.version_named(caller, action, name).await?;
        let artifacts = self.artifacts()?;
        let chunks = artifacts
            .read_stream(&version.object.uri)
            .await
            .map_err(|e| from_artifacts(e, name))?;
        self.record_download(caller, action, name, &version).await;
        let (sender, receiver) = mpsc::channel(4);
        tokio::spawn(send_checkpoint(version, name.to_string(), chunks, sender));
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(
            receiver,
        )))
    }

    /// A URL that reads the version's checkpoint without credentials for `lifetime`.
    pub(crate) async fn download_url(
        &self,
        caller: &Caller,
        request: pb::GetModelVersionDownloadUrlRequest,
    ) -> Result<pb::ModelVersionDownloadUrl, Status> {
        let action = "model_version.download_url";
        let lifetime = url_lifetime(request.lifetime)?;
        let version = self.version_named(caller, action, &request.name).await?;
        let url = self
            .artifacts()?
            .presigned_get(&version.object.uri, lifetime)
            .await
            .map_err(|e| from_artifacts(e, &request.name))?;
        self.record_download(caller, action, &request.name, &version)
            .await;
        let expires = chrono::Utc::now()
            + chrono::Duration::from_std(lifetime).expect("at most an hour fits");
        Ok(pb::ModelVersionDownloadUrl {
            version: Some(version_to_proto(&version)),
            url: url.to_string(),
            expire_time: Some(crate::names::timestamp(expires)),
        })
    }

    fn artifacts(&self) -> Result<&lethe_artifacts::ArtifactStore, Status> {
        self.shared.config.artifacts.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "this coordinator has no artifact store configured (its `artifacts` setting), \
                 so it cannot serve downloads",
            )
        })
    }

    /// The version `name` names, of one of the caller's models.
    async fn version_named(
        &self,
        caller: &Caller,
        action: &str,
        name: &str,
    ) -> Result<ModelVersion, Status> {
        let (model, number) = parse_version_name("name", name)?;
        let model = named_model(&self.shared, caller, action, &format!("models/{model}")).await?;
        self.shared
            .store
            .model_versions(&caller.tenant, model.id)
            .await
            .map_err(from_store)?
            .into_iter()
            .find(|version| version.version == number)
            .ok_or_else(|| {
                from_store(StoreError::NotFound {
                    what: "model version",
                    id: name.to_string(),
                })
            })
    }

    /// A checkpoint leaving the service is an audit line, as a registration is: which
    /// object, by its URI and hash.
    async fn record_download(
        &self,
        caller: &Caller,
        action: &str,
        name: &str,
        version: &ModelVersion,
    ) {
        let detail = serde_json::json!({
            "uri": version.object.uri,
            "sha256": version.object.sha256.map(hex::encode),
        });
        self.shared
            .gate
            .record(caller.audit(
                action,
                name.to_string(),
                AuditOutcome::Allowed,
                None,
                detail,
            ))
            .await;
    }
}

/// A lifetime of 0 (or none) means the default; past an hour is refused.
fn url_lifetime(lifetime: Option<prost_types::Duration>) -> Result<Duration, Status> {
    let Some(lifetime) = lifetime else {
        return Ok(DEFAULT_URL_LIFETIME);
    };
    let out_of_range = || {
        invalid(
            "lifetime",
            format!(
                "must be 0 (meaning {} minutes) to {} minutes",
                DEFAULT_URL_LIFETIME.as_secs() / 60,
                MAX_URL_LIFETIME.as_secs() / 60
            ),
        )
    };
    let lifetime = Duration::try_from(lifetime).map_err(|_| out_of_range())?;
    match lifetime {
        Duration::ZERO => Ok(DEFAULT_URL_LIFETIME),
        lifetime if lifetime <= MAX_URL_LIFETIME => Ok(lifetime),
        _ => Err(out_of_range()),
    }
}

/// Sends the version, then the checkpoint in chunks, then the SHA-256 of what was sent; ends
/// with DATA_LOSS when that is not the recorded object. Stops when the client goes away.
async fn send_checkpoint(
    version: ModelVersion,
    name: String,
    mut source: BoxStream<'static, Result<Bytes, ArtifactError>>,
    sender: mpsc::Sender<Result<ModelVersionChunk, Status>>,
) {
    let header = ModelVersionChunk {
        version: Some(version_to_proto(&version)),
        ..ModelVersionChunk::default()
    };
    if sender.send(Ok(header)).await.is_err() {
        return;
    }
    let mut hasher = Sha256::new();
    let mut offset = 0u64;
    while let Some(read) = source.next().await {
        let bytes = match read {
            Ok(bytes) => bytes,
            Err(error) => {
                let _ = sender.send(Err(from_artifacts(error, &name))).await;
                return;
            }
        };
        hasher.update(&bytes);
        for start in (0..bytes.len()).step_by(DOWNLOAD_CHUNK_BYTES) {
            let piece = bytes.slice(start..bytes.len().min(start + DOWNLOAD_CHUNK_BYTES));
            let chunk = ModelVersionChunk {
                offset,
                data: piece.to_vec(),
                ..ModelVersionChunk::default()
            };
            offset += piece.len() as u64;
            if sender.send(Ok(chunk)).await.is_err() {
                return;
            }
        }
    }
    let sha256: [u8; 32] = hasher.finalize().into();
    let trailer = ModelVersionChunk {
        offset,
        sha256: sha256.to_vec(),
        ..ModelVersionChunk::default()
    };
    if sender.send(Ok(trailer)).await.is_err() {
        return;
    }
    let recorded = &version.object;
    let altered = recorded.sha256.is_some_and(|expected| expected != sha256)
        || recorded
            .size_bytes
            .is_some_and(|size| u64::try_from(size).ok() != Some(offset));
    if altered {
        let error = ArtifactError::HashMismatch {
            uri: recorded.uri.clone(),
            expected: recorded.sha256.map(hex::encode).unwrap_or_default(),
            expected_size: recorded.size_bytes.unwrap_or(0).max(0) as u64,
            actual: hex::encode(sha256),
            size: offset,
        };
        let _ = sender.send(Err(from_artifacts(error, &name))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn url_lifetimes_default_and_are_bounded() {
        let seconds = |s| {
            Some(prost_types::Duration {
                seconds: s,
                nanos: 0,
            })
        };
        assert_eq!(url_lifetime(None).unwrap(), DEFAULT_URL_LIFETIME);
        assert_eq!(url_lifetime(seconds(0)).unwrap(), DEFAULT_URL_LIFETIME);
        assert_eq!(url_lifetime(seconds(60)).unwrap(), Duration::from_secs(60));
        assert_eq!(url_lifetime(seconds(3600)).unwrap(), MAX_URL_LIFETIME);
        for bad in [seconds(3601), seconds(-1)] {
            assert_eq!(url_lifetime(bad).unwrap_err().code(), Code::InvalidArgument);
        }
    }
}
