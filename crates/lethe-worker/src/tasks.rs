//! The ML task kinds a served worker runs (specs in `lethe_proto::tasks`): subset and oracle
//! retrains, the index reduce, and a deletion run's predict, match, full retrain and audit. Each attempt
//! works in its own temporary directory, reads its inputs from the artifact store with their
//! hashes checked, and writes its outputs under its attempt-scoped keys.

mod deletion;
mod ensemble;
mod reports;
mod trak;

use std::future::Future;
use std::path::{Path, PathBuf};

use lethe_artifacts::{ArtifactError, StoredObject};
use lethe_ml::checkpoint::{self, CheckpointInfo};
use lethe_ml::data::{Dataset, DatasetSource, DatasetSpec};
use lethe_ml::error::MlError;
use lethe_ml::model::Model;
use lethe_proto::tasks::{self, DatasetRef, ObjectRef};
use lethe_runner::{Runner, TaskContext, TaskError, TaskInput};

use crate::local::options::checkpoint_fits;

/// Registers every ML task kind, running on `device`.
pub(crate) fn register(runner: &mut Runner, device: tch::Device) {
    runner.handle(tasks::RETRAIN, ensemble::Retrain { device });
    runner.handle(tasks::BUILD_INDEX, ensemble::BuildIndex);
    runner.handle(tasks::TRAK_CHECKPOINTS, trak::TrakCheckpoints);
    runner.handle(tasks::TRAK_SHARD, trak::TrakFeatures);
    runner.handle(tasks::PREDICT, deletion::Predict { device });
    runner.handle(tasks::MATCH, deletion::Match { device });
    runner.handle(tasks::AUDIT, deletion::Audit { device });
    runner.handle(tasks::FULL_RETRAIN, deletion::FullRetrain { device });
}

/// Datasets a worker image carries, named by `builtin:NAME`. Only these names: a tenant must
/// not make a worker read arbitrary local paths.
const BUILTIN_DATASETS: &[&str] = &["fmnist", "fmnist-tiny", "fmnist-bench"];

fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Handle::current().block_on(future)
}

/// Bad input fails for good; I/O and libtorch (memory, say) may fare better on another try.
fn ml_error(error: MlError) -> TaskError {
    match error {
        MlError::Io { .. } | MlError::Torch(_) => TaskError::Retryable(error.to_string()),
        _ => TaskError::Fatal(error.to_string()),
    }
}

/// Names the object a local copy came from in an error about the copy: the scratch path means
/// nothing to whoever reads the operation's error.
fn about_object(error: TaskError, local: &Path, uri: &str) -> TaskError {
    let name = |message: String| message.replace(&local.display().to_string(), uri);
    match error {
        TaskError::Retryable(message) => TaskError::Retryable(name(message)),
        TaskError::Fatal(message) => TaskError::Fatal(name(message)),
        TaskError::Cancelled => TaskError::Cancelled,
    }
}

fn artifact_error(error: ArtifactError) -> TaskError {
    match error {
        ArtifactError::InvalidUrl { .. } | ArtifactError::HashMismatch { .. } => {
            TaskError::Fatal(error.to_string())
        }
        _ => TaskError::Retryable(error.to_string()),
    }
}

fn stop_if_cancelled(context: &TaskContext) -> Result<(), TaskError> {
    if context.is_cancelled() {
        return Err(TaskError::Cancelled);
    }
    Ok(())
}

/// A scratch directory for one attempt, removed when the attempt ends.
fn workspace() -> Result<tempfile::TempDir, TaskError> {
    tempfile::Builder::new()
        .prefix("lethe-task-")
        .tempdir()
        .map_err(|e| TaskError::Retryable(format!("creating a scratch directory: {e}")))
}

fn parse_hash(hash: Option<&str>) -> Result<Option<[u8; 32]>, TaskError> {
    hash.map(|text| {
        hex::decode(text)
            .ok()
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
            .ok_or_else(|| TaskError::Fatal(format!("sha256 {text:?} is not 64 hex digits")))
    })
    .transpose()
}

/// Downloads a registered object (its hash checked when it has one) to `dest`; returns what
/// was read, hash included.
fn fetch(
    context: &TaskContext,
    object: &ObjectRef,
    dest: &Path,
) -> Result<StoredObject, TaskError> {
    let sha256 = parse_hash(object.sha256.as_deref())?;
    block_on(context.artifacts.download(&object.uri, sha256, dest)).map_err(artifact_error)
}

/// Downloads a committed artifact (hash and size checked) to `dest`.
fn fetch_input(context: &TaskContext, input: &TaskInput, dest: &Path) -> Result<(), TaskError> {
    block_on(context.artifacts.download_verified(&input.object, dest)).map_err(artifact_error)
}

/// The inputs named `name`, with their producing task's spec.
fn inputs_named<'a>(context: &'a TaskContext, name: &str) -> Vec<&'a TaskInput> {
    context
        .inputs
        .iter()
        .filter(|input| input.name == name)
        .collect()
}

fn one_input<'a>(context: &'a TaskContext, name: &str) -> Result<&'a TaskInput, TaskError> {
    match inputs_named(context, name).as_slice() {
        [one] => Ok(one),
        found => Err(TaskError::Fatal(format!(
            "expected one `{name}` input, found {}",
            found.len()
        ))),
    }
}

/// Writes `path` as this attempt's artifact `name` (the key keeps the file's name).
fn put(
    context: &TaskContext,
    name: &str,
    path: &Path,
) -> Result<(String, StoredObject), TaskError> {
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| TaskError::Fatal(format!("{} has no file name", path.display())))?;
    let key = context.artifact_key(file_name)?;
    let object = block_on(context.artifacts.put_file(&key, path)).map_err(artifact_error)?;
    Ok((name.to_string(), object))
}

/// A dataset: `builtin:NAME`, or an object-store prefix with `train.safetensors` and
/// `val.safetensors`, downloaded into `dir`.
fn load_dataset(
    context: &TaskContext,
    dataset: &DatasetRef,
    dir: &Path,
) -> Result<Dataset, TaskError> {
    let spec = match dataset.uri.strip_prefix("builtin:") {
        Some(name) if BUILTIN_DATASETS.contains(&name) => {
            name.parse::<DatasetSpec>().map_err(ml_error)?
        }
        Some(name) => {
            return Err(TaskError::Fatal(format!(
                "unknown built-in dataset {name:?} (this worker has {})",
                BUILTIN_DATASETS.join(", ")
            )))
        }
        None => {
            if dataset.sha256.is_some() {
                return Err(TaskError::Fatal(
                    "a dataset prefix holds two files and cannot have one sha256".into(),
                ));
            }
            let mut local = Vec::new();
            let mut split = |name: &str| -> Result<PathBuf, TaskError> {
                let object = ObjectRef {
                    uri: format!("{}/{name}.safetensors", dataset.uri.trim_end_matches('/')),
                    sha256: None,
                };
                let path = dir.join(format!("dataset-{name}.safetensors"));
                fetch(context, &object, &path)?;
                local.push((path.clone(), object.uri));
                Ok(path)
            };
            let spec = DatasetSpec {
                source: DatasetSource::Safetensors {
                    train: split("train")?,
                    val: split("val")?,
                },
                train_limit: None,
                val_limit: None,
            };
            return Dataset::load(&spec).map_err(|error| {
                local.iter().fold(ml_error(error), |error, (path, uri)| {
                    about_object(error, path, uri)
                })
            });
        }
    };
    Dataset::load(&spec).map_err(ml_error)
}

/// A checkpoint, downloaded into `dir` as `file_name`, loaded on `device` and checked
/// against the dataset. Returns its SHA-256 (hex) too, as read.
fn load_checkpoint(
    context: &TaskContext,
    object: &ObjectRef,
    dir: &Path,
    file_name: &str,
    data: &Dataset,
    device: tch::Device,
) -> Result<(Model, CheckpointInfo, String), TaskError> {
    let path = dir.join(file_name);
    let read = fetch(context, object, &path)?;
    let (model, info) = checkpoint::load(&path, device)
        .map_err(|error| about_object(ml_error(error), &path, &object.uri))?;
    check_fits(&info, data, Path::new(&object.uri))?;
    Ok((model, info, hex::encode(read.sha256)))
}

/// A checkpoint may only be used with the data it was trained on.
fn check_fits(info: &CheckpointInfo, data: &Dataset, origin: &Path) -> Result<(), TaskError> {
    match checkpoint_fits(info, data, origin) {
        Ok(true) => Ok(()),
        Ok(false) => Err(TaskError::Fatal(format!(
            "checkpoint {} was trained on other data than dataset {} (content hashes differ)",
            origin.display(),
            data.spec
        ))),
        Err(mismatch) => Err(TaskError::Fatal(format!("{mismatch:#}"))),
    }
}
