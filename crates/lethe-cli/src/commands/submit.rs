//! `lethe submit`: index builds and deletion requests.

use clap::{Args, Subcommand};
use lethe_proto::lethe::v1::{
    CreateDeletionRequestRequest, CreateIndexBuildRequest, IndexEstimator,
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
