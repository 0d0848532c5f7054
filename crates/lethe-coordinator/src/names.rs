//! How resources are named on the wire (AIP-122): `operations/{uuid}`, `datasets/{id}`,
//! `models/{id}`, `models/{id}/versions/{n}`, and the timestamps every resource carries.

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

/// The id in `{collection}/{id}`, checked as registration checks it: an id that cannot exist
/// is INVALID_ARGUMENT, not NOT_FOUND.
pub(crate) fn resource_id<'a>(
    field: &str,
    collection: &str,
    name: &'a str,
) -> Result<&'a str, Status> {
    let id = name
        .strip_prefix(collection)
        .and_then(|rest| rest.strip_prefix('/'))
        .filter(|id| !id.is_empty())
        .ok_or_else(|| {
            invalid(
                field,
                format!("{name:?} is not of the form {collection}/{{id}}"),
            )
        })?;
    lethe_store::check_resource_id(id).map_err(|error| match error {
        lethe_store::StoreError::InvalidArgument(problem) => {
            invalid(field, format!("{problem} (the id of {collection}/{{id}})"))
        }
        other => crate::status::from_store(other),
    })?;
    Ok(id)
}

pub(crate) fn version_name(model: &str, version: i32) -> String {
    format!("models/{model}/versions/{version}")
}

/// The model id and version number of a `models/{id}/versions/{n}` name given in `field`.
pub(crate) fn parse_version_name<'a>(field: &str, name: &'a str) -> Result<(&'a str, i32), Status> {
    let malformed = || {
        invalid(
            field,
            format!("{name:?} is not of the form models/{{model_id}}/versions/{{version}}"),
        )
    };
    let rest = name.strip_prefix("models/").ok_or_else(malformed)?;
    let (model, version) = rest.split_once("/versions/").ok_or_else(malformed)?;
    let version = version
        .parse::<i32>()
        .ok()
        .filter(|v| *v >= 0 && !model.is_empty() && !model.contains('/'))
        .ok_or_else(malformed)?;
    Ok((model, version))
}

pub(crate) fn timestamp(time: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: time.timestamp_subsec_nanos() as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_names_round_trip_and_malformed_ones_are_refused() {
        assert_eq!(version_name("fmnist", 3), "models/fmnist/versions/3");
        assert_eq!(
            parse_version_name("name", "models/fmnist/versions/3").unwrap(),
            ("fmnist", 3)
        );
        for bad in [
            "fmnist/versions/3",
            "models/fmnist/versions/",
            "models/fmnist/versions/-1",
            "models//versions/1",
            "models/a/b/versions/1",
            "models/fmnist/versions/1x",
            "models/fmnist",
        ] {
            assert_eq!(
                parse_version_name("name", bad).unwrap_err().code(),
                tonic::Code::InvalidArgument,
                "{bad}"
            );
        }
    }
}
