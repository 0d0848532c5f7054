//! `lethe submit` and `lethe download`: index builds and deletion requests, and downloading the
//! checkpoint of the version a deletion made.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use lethe_artifacts::{ArtifactStore, StoredObject};
use lethe_proto::google::longrunning::{operation, GetOperationRequest};
use lethe_proto::lethe::v1::{
    CreateDeletionRequestRequest, CreateIndexBuildRequest, DeletionResult, IndexEstimator,
};

use super::operations::watch;
use crate::connection::{runtime, Client, Connection};
use crate::render::print_operation;

#[derive(Subcommand, Debug)]
pub(crate) enum SubmitVerb {
    /// Build a model's attribution index (subset retrains fanned out over workers, then β).
    Index(IndexArgs),
    /// Ask for training examples of a model to be forgotten.
    Deletion(DeletionArgs),
}

#[derive(Args, Debug)]
pub(crate) struct Submission {
    /// Idempotency key: submitting again with it returns the same operation.
    #[arg(long, default_value = "")]
    request_id: String,
    /// -100 to 100; higher runs first.
    #[arg(long, default_value_t = 0)]
    priority: i32,
    /// Print the operation and return without watching it.
    #[arg(long)]
    no_watch: bool,
}

#[derive(Args, Debug)]
pub(crate) struct IndexArgs {
    /// The model's id.
    model: String,
    /// Subset retrains (0: the coordinator's default, 128).
    #[arg(long, default_value_t = 0)]
    members: u32,
    /// Fraction of the training set each retrain sees (0: 0.5).
    #[arg(long, default_value_t = 0.0)]
    alpha: f64,
    /// Retrains per task (0: 32).
    #[arg(long, default_value_t = 0)]
    members_per_task: u32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// How β is estimated: subsample (subsampled influence) or trak (MLPs).
    #[arg(long, value_enum, default_value = "subsample")]
    estimator: EstimatorName,
    /// TRAK: checkpoints trained on the whole training set (0: 4).
    #[arg(long, default_value_t = 0)]
    trak_checkpoints: u32,
    /// TRAK: dimension of the gradient projection (0: 2048).
    #[arg(long, default_value_t = 0)]
    trak_projection_dim: u32,
    /// TRAK: featurisation tasks the training set is split into (0: 4).
    #[arg(long, default_value_t = 0)]
    trak_shards: u32,
    #[command(flatten)]
    submission: Submission,
}

#[derive(Copy, Clone, Debug, clap::ValueEnum)]
pub(crate) enum EstimatorName {
    Subsample,
    Trak,
}

#[derive(Args, Debug)]
pub(crate) struct DeletionArgs {
    /// The model's id.
    model: String,
    /// Training indices to forget, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    forget: Vec<i64>,
    /// Audit size N (0: no audit): DMM applied to N originals, judged by KLoM against N
    /// retrains without the forgotten examples (and N/2 more for the noise floor).
    #[arg(long, default_value_t = 0)]
    audit_oracles: u32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Retrain from scratch instead of DMM when the run's confidence in its predicted targets
    /// is below this (0–1]; a retrained version needs a new index before the next request.
    #[arg(long)]
    min_confidence: Option<f64>,
    #[command(flatten)]
    submission: Submission,
}

#[derive(Args, Debug)]
pub(crate) struct DownloadArgs {
    /// A succeeded deletion request (`operations/{uuid}`).
    operation: String,
    /// The artifact store the workers write to (file:///... or s3://...).
    #[arg(long, env = "LETHE_ARTIFACTS")]
    artifacts: String,
    /// Where to write the new version's checkpoint.
    #[arg(long)]
    out: PathBuf,
}

pub(crate) fn submit(connection: Connection, verb: SubmitVerb) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        let client = Client::connect(&connection).await?;
        let (operation, submission) = match verb {
            SubmitVerb::Index(args) => {
                let request = CreateIndexBuildRequest {
                    request_id: args.submission.request_id.clone(),
                    model: format!("models/{}", args.model),
                    members: args.members,
                    alpha: args.alpha,
                    members_per_task: args.members_per_task,
                    seed: args.seed,
                    priority: args.submission.priority,
                    estimator: match args.estimator {
                        EstimatorName::Subsample => IndexEstimator::Subsample,
                        EstimatorName::Trak => IndexEstimator::Trak,
                    } as i32,
                    trak_checkpoints: args.trak_checkpoints,
                    trak_projection_dim: args.trak_projection_dim,
                    trak_shards: args.trak_shards,
                };
                let operation = client
                    .lethe()
                    .create_index_build(client.call(request))
                    .await?;
                (operation.into_inner(), args.submission)
            }
            SubmitVerb::Deletion(args) => {
                let request = CreateDeletionRequestRequest {
                    request_id: args.submission.request_id.clone(),
                    model: format!("models/{}", args.model),
                    forget: args.forget,
                    audit_oracles: args.audit_oracles,
                    seed: args.seed,
                    priority: args.submission.priority,
                    min_confidence: args.min_confidence,
                };
                let operation = client
                    .lethe()
                    .create_deletion_request(client.call(request))
                    .await?;
                (operation.into_inner(), args.submission)
            }
        };
        if submission.no_watch {
            print_operation(&operation, false);
            return Ok(());
        }
        println!("{}", operation.name);
        watch(&client, operation.name).await
    })
}

pub(crate) fn download(connection: Connection, args: DownloadArgs) -> anyhow::Result<()> {
    let store = ArtifactStore::open(&args.artifacts).context("opening --artifacts")?;
    runtime()?.block_on(async move {
        let client = Client::connect(&connection).await?;
        let operation = client
            .operations()
            .get_operation(client.call(GetOperationRequest {
                name: args.operation.clone(),
            }))
            .await?
            .into_inner();
        let result = match &operation.result {
            Some(operation::Result::Response(any)) => any
                .to_msg::<DeletionResult>()
                .context("the operation's response is not a DeletionResult")?,
            Some(operation::Result::Error(status)) => {
                bail!("{} failed: {}", args.operation, status.message)
            }
            None => bail!("{} is not done yet", args.operation),
        };
        let object = model_object(&result)
            .with_context(|| format!("{} made no model version", args.operation))?;
        store
            .download_verified(&object, &args.out)
            .await
            .with_context(|| format!("downloading {}", object.uri))?;
        println!(
            "{} ({} bytes, sha256 {}) → {}",
            object.uri,
            object.size,
            hex::encode(object.sha256),
            args.out.display()
        );
        Ok(())
    })
}

/// The checkpoint a deletion request's result names.
fn model_object(result: &DeletionResult) -> anyhow::Result<StoredObject> {
    let version = result
        .version
        .as_ref()
        .context("the result names no model version")?;
    let sha256 = <[u8; 32]>::try_from(version.sha256.as_slice())
        .ok()
        .context("the version's sha256 is not 32 bytes")?;
    Ok(StoredObject {
        uri: version.uri.clone(),
        sha256,
        size: version.size_bytes,
    })
}
