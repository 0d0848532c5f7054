//! `lethe download`: a model version's checkpoint, streamed through the coordinator
//! (DownloadModelVersion), written under a temporary name and kept only once its SHA-256 is
//! the one the coordinator recorded. No access to the artifact store is needed.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context};
use clap::Args;
use lethe_proto::google::longrunning::{operation, GetOperationRequest};
use lethe_proto::lethe::v1::{DeletionResult, DownloadModelVersionRequest, ModelVersion};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::connection::{runtime, Client, Connection};

#[derive(Args, Debug)]
pub(crate) struct DownloadArgs {
    /// A model version (`models/{id}/versions/{n}`), or a succeeded deletion request or run
    /// (`operations/{uuid}`), whose new version is downloaded.
    target: String,
    /// Where to write the checkpoint.
    #[arg(long)]
    out: PathBuf,
}

pub(crate) fn download(connection: Connection, args: DownloadArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        let client = Client::connect(&connection).await?;
        let name = if args.target.starts_with("operations/") {
            version_of_deletion(&client, &args.target).await?
        } else {
            args.target.clone()
        };
        let (version, size, sha256) = fetch(&client, &name, &args.out).await?;
        println!(
            "{} ({size} bytes, sha256 {}) → {}",
            version.name,
            hex::encode(sha256),
            args.out.display()
        );
        Ok(())
    })
}

/// The name of the version a succeeded deletion request (or run) made.
async fn version_of_deletion(client: &Client, operation: &str) -> anyhow::Result<String> {
    let operation = client
        .operations()
        .get_operation(client.call(GetOperationRequest {
            name: operation.to_string(),
        }))
        .await?
        .into_inner();
    let result = match &operation.result {
        Some(operation::Result::Response(any)) => any
            .to_msg::<DeletionResult>()
            .context("the operation's response is not a DeletionResult")?,
        Some(operation::Result::Error(status)) => {
            bail!("{} failed: {}", operation.name, status.message)
        }
        None => bail!("{} is not done yet", operation.name),
    };
    let version = result
        .version
        .with_context(|| format!("{} made no model version", operation.name))?;
    Ok(version.name)
}

/// Streams version `name` into `out` and checks it; returns the version, its size and hash.
async fn fetch(
    client: &Client,
    name: &str,
    out: &Path,
) -> anyhow::Result<(ModelVersion, u64, [u8; 32])> {
    let partial = out.with_extension("partial");
    let result = stream_to(client, name, &partial).await;
    match result {
        Ok(fetched) => {
            tokio::fs::rename(&partial, out)
                .await
                .with_context(|| format!("moving the download to {}", out.display()))?;
            Ok(fetched)
        }
        Err(error) => {
            let _ = tokio::fs::remove_file(&partial).await;
            Err(error)
        }
    }
}

async fn stream_to(
    client: &Client,
    name: &str,
    partial: &Path,
) -> anyhow::Result<(ModelVersion, u64, [u8; 32])> {
    let mut chunks = client
        .lethe()
        .download_model_version(client.call(DownloadModelVersionRequest {
            name: name.to_string(),
        }))
        .await?
        .into_inner();
    let mut file = tokio::fs::File::create(partial)
        .await
        .with_context(|| format!("creating {}", partial.display()))?;
    let mut version = None;
    let mut sent_hash = None;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = chunks.message().await? {
        if let Some(header) = chunk.version {
            version = Some(header);
        }
        ensure!(
            chunk.offset == size,
            "the coordinator sent bytes at {} after {size}",
            chunk.offset
        );
        hasher.update(&chunk.data);
        size += chunk.data.len() as u64;
        file.write_all(&chunk.data)
            .await
            .with_context(|| format!("writing {}", partial.display()))?;
        if !chunk.sha256.is_empty() {
            sent_hash = Some(chunk.sha256);
        }
    }
    file.flush().await?;
    let version = version.context("the coordinator sent no version header")?;
    let sha256: [u8; 32] = hasher.finalize().into();
    ensure!(
        sent_hash.as_deref() == Some(sha256.as_slice()),
        "the download of {name} is not what the coordinator sent (SHA-256 {})",
        hex::encode(sha256)
    );
    ensure!(
        version.sha256.is_empty() || version.sha256 == sha256,
        "{name} is recorded with SHA-256 {} but {} arrived",
        hex::encode(&version.sha256),
        hex::encode(sha256)
    );
    Ok((version, size, sha256))
}
