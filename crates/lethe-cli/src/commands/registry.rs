//! `lethe datasets` and `lethe models`: register and show them, and list a model's versions.

use anyhow::Context;
use clap::Subcommand;
use lethe_proto::lethe::v1::{
    GetDatasetRequest, GetModelRequest, ListModelVersionsRequest, RegisterDatasetRequest,
    RegisterModelRequest,
};

use crate::connection::{runtime, Client, Connection};
use crate::render::hex_or_none;

#[derive(Subcommand, Debug)]
pub(crate) enum DatasetsVerb {
    /// Register a dataset by object-store URL (file:///... or s3://...).
    Register {
        /// The dataset's id: 1 to 100 of [a-z0-9._-].
        id: String,
        uri: String,
        /// SHA-256 of the object, in hex, checked by workers on every read.
        #[arg(long)]
        sha256: Option<String>,
    },
    /// Show a dataset.
    Get { id: String },
}

#[derive(Subcommand, Debug)]
pub(crate) enum ModelsVerb {
    /// Register a model trained on a registered dataset.
    Register {
        id: String,
        uri: String,
        /// The dataset it was trained on.
        #[arg(long)]
        dataset: String,
        #[arg(long)]
        sha256: Option<String>,
    },
    /// Show a model.
    Get { id: String },
    /// List a model's versions, newest first.
    Versions { id: String },
}

pub(crate) fn datasets(connection: Connection, verb: DatasetsVerb) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        let client = Client::connect(&connection).await?;
        let dataset = match verb {
            DatasetsVerb::Register { id, uri, sha256 } => {
                let request = RegisterDatasetRequest {
                    dataset_id: id,
                    uri,
                    sha256: parse_hash(sha256)?,
                };
                client
                    .lethe()
                    .register_dataset(client.call(request))
                    .await?
            }
            DatasetsVerb::Get { id } => {
                let request = GetDatasetRequest {
                    name: format!("datasets/{id}"),
                };
                client.lethe().get_dataset(client.call(request)).await?
            }
        }
        .into_inner();
        println!(
            "{}  {}  sha256 {}",
            dataset.name,
            dataset.uri,
            hex_or_none(&dataset.sha256)
        );
        Ok(())
    })
}

pub(crate) fn models(connection: Connection, verb: ModelsVerb) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        let client = Client::connect(&connection).await?;
        let model = match verb {
            ModelsVerb::Register {
                id,
                uri,
                dataset,
                sha256,
            } => {
                let request = RegisterModelRequest {
                    model_id: id,
                    dataset: format!("datasets/{dataset}"),
                    uri,
                    sha256: parse_hash(sha256)?,
                };
                client.lethe().register_model(client.call(request)).await?
            }
            ModelsVerb::Get { id } => {
                let request = GetModelRequest {
                    name: format!("models/{id}"),
                };
                client.lethe().get_model(client.call(request)).await?
            }
            ModelsVerb::Versions { id } => return print_versions(&client, id).await,
        }
        .into_inner();
        println!(
            "{}  trained on {}  {}  sha256 {}",
            model.name,
            model.dataset,
            model.uri,
            hex_or_none(&model.sha256)
        );
        Ok(())
    })
}

fn parse_hash(text: Option<String>) -> anyhow::Result<Vec<u8>> {
    let Some(text) = text else {
        return Ok(Vec::new());
    };
    hex::decode(&text)
        .ok()
        .filter(|bytes| bytes.len() == 32)
        .with_context(|| format!("--sha256 {text:?} is not 64 hex digits"))
}

pub(crate) async fn print_versions(client: &Client, model: String) -> anyhow::Result<()> {
    let request = ListModelVersionsRequest {
        model: format!("models/{model}"),
    };
    let versions = client
        .lethe()
        .list_model_versions(client.call(request))
        .await?
        .into_inner()
        .versions;
    for version in versions {
        println!(
            "v{:<4} {:>6} forgotten  {}  {}",
            version.version,
            version.forgotten_count,
            version.uri,
            if version.run.is_empty() {
                "(registered)".to_string()
            } else {
                version.run
            }
        );
    }
    Ok(())
}
