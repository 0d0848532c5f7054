//! Datasets and models: the `datasets/{id}` and `models/{id}` resources.

use lethe_proto::lethe::v1 as pb;
use lethe_store::{Dataset, Model};
use tonic::Status;

use crate::operations::timestamp;
use crate::status::invalid;

pub(crate) fn dataset_to_proto(dataset: Dataset) -> pb::Dataset {
    pb::Dataset {
        name: format!("datasets/{}", dataset.name),
        uri: dataset.uri,
        sha256: dataset.sha256.map(|h| h.to_vec()).unwrap_or_default(),
        create_time: Some(timestamp(dataset.created_at)),
    }
}

pub(crate) fn model_to_proto(model: Model) -> pb::Model {
    pb::Model {
        name: format!("models/{}", model.name),
        dataset: format!("datasets/{}", model.dataset),
        uri: model.uri,
        sha256: model.sha256.map(|h| h.to_vec()).unwrap_or_default(),
        create_time: Some(timestamp(model.created_at)),
    }
}

/// The id in `{collection}/{id}`.
pub(crate) fn resource_id<'a>(
    field: &str,
    collection: &str,
    name: &'a str,
) -> Result<&'a str, Status> {
    name.strip_prefix(collection)
        .and_then(|rest| rest.strip_prefix('/'))
        .filter(|id| !id.is_empty())
        .ok_or_else(|| {
            invalid(
                field,
                format!("{name:?} is not of the form {collection}/{{id}}"),
            )
        })
}

/// An optional SHA-256: empty, or exactly 32 bytes.
pub(crate) fn optional_hash(field: &str, bytes: &[u8]) -> Result<Option<[u8; 32]>, Status> {
    match bytes.len() {
        0 => Ok(None),
        32 => Ok(bytes.try_into().ok()),
        n => Err(invalid(
            field,
            format!("must be empty or 32 bytes, got {n}"),
        )),
    }
}
