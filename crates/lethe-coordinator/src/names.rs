//! How resources are named on the wire (AIP-122): `operations/{uuid}`, `datasets/{id}`,
//! `models/{id}`, and the timestamps every resource carries.

use tonic::Status;
use uuid::Uuid;

use crate::status::{invalid, parse_uuid};

const OPERATIONS: &str = "operations/";

pub fn operation_name(job: Uuid) -> String {
    format!("{OPERATIONS}{job}")
}

/// The job of an `operations/{uuid}` name given in `field`.
pub(crate) fn parse_operation_name(field: &str, name: &str) -> Result<Uuid, Status> {
    let id = name.strip_prefix(OPERATIONS).ok_or_else(|| {
        invalid(
            field,
            format!("{name:?} is not of the form operations/{{uuid}}"),
        )
    })?;
    parse_uuid(field, id)
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

pub(crate) fn timestamp(time: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: time.timestamp_subsec_nanos() as i32,
    }
}
