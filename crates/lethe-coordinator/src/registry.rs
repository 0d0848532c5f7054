//! Datasets, models and model versions: the `datasets/{id}` and `models/{id}` resources, and
//! where tenants may register them.

use lethe_proto::lethe::v1 as pb;
use lethe_store::{Dataset, Model};
use tonic::Status;

use crate::names::{operation_name, timestamp, version_name};
use crate::status::{invalid, outside_registration_prefixes};

/// Where a registration prefix puts the caller's tenant.
const TENANT_PLACEHOLDER: &str = "{tenant}";

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

/// A model version as the API shows it, in `ListModelVersions` and a deletion's result.
pub(crate) fn version_to_proto(version: &lethe_store::ModelVersion) -> pb::ModelVersion {
    pb::ModelVersion {
        name: version_name(&version.model, version.version),
        version: version.version,
        uri: version.object.uri.clone(),
        sha256: version
            .object
            .sha256
            .map(|h| h.to_vec())
            .unwrap_or_default(),
        forgotten_count: version.forgotten.len() as i64,
        size_bytes: version.object.size_bytes.unwrap_or(0) as u64,
        run: version.run_id.map(operation_name).unwrap_or_default(),
    }
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

/// A registration prefix as the settings may give it: a `file:///` or `s3://` URL prefix that
/// ends at a `/`, so that `s3://data/acme/` does not also admit `s3://data/acme-corp/`.
pub(crate) fn validate_prefix(prefix: &str) -> Result<(), String> {
    let without_placeholder = prefix.replace(TENANT_PLACEHOLDER, "");
    if !(prefix.starts_with("file:///") || prefix.starts_with("s3://")) {
        return Err(format!("{prefix:?} is not a file:/// or s3:// URL prefix"));
    }
    if !prefix.ends_with('/') {
        return Err(format!("{prefix:?} must end with '/'"));
    }
    if without_placeholder.contains(['{', '}', '%']) {
        return Err(format!(
            "{prefix:?}: only {TENANT_PLACEHOLDER} may appear in braces, and no escapes"
        ));
    }
    if prefix
        .split('/')
        .skip(3)
        .any(|segment| segment == "." || segment == "..")
    {
        return Err(format!("{prefix:?} has a '.' or '..' segment"));
    }
    Ok(())
}

/// Whether `tenant` may register `uri`: any URL when no prefixes are set, else one under a
/// prefix with `{tenant}` read as `tenant`. Built-in datasets belong to no one. The store
/// refuses `..` segments and encoded slashes afterwards, so a URL under a prefix stays there.
pub(crate) fn check_registrable(
    prefixes: &[String],
    tenant: &str,
    uri: &str,
) -> Result<(), Status> {
    if prefixes.is_empty() || uri.starts_with("builtin:") {
        return Ok(());
    }
    let allowed: Vec<String> = prefixes
        .iter()
        .map(|prefix| prefix.replace(TENANT_PLACEHOLDER, tenant))
        .collect();
    if allowed
        .iter()
        .any(|prefix| uri.starts_with(prefix.as_str()))
    {
        Ok(())
    } else {
        Err(outside_registration_prefixes(uri, &allowed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_stay_under_the_callers_prefixes() {
        let prefixes = vec![
            "s3://lethe-data/{tenant}/".to_string(),
            "file:///srv/shared/".to_string(),
        ];
        let allowed = [
            "s3://lethe-data/acme/fmnist.safetensors",
            "file:///srv/shared/base.safetensors",
            "builtin:fmnist-tiny",
        ];
        for uri in allowed {
            assert!(check_registrable(&prefixes, "acme", uri).is_ok(), "{uri}");
        }
        let refused = [
            "s3://lethe-data/beta/model.safetensors",
            "s3://lethe-data/acme-corp/model.safetensors",
            "s3://lethe-data/acme",
            "s3://other/acme/model.safetensors",
            "file:///var/lib/lethe/artifacts/t/1/model.safetensors",
        ];
        for uri in refused {
            let status = check_registrable(&prefixes, "acme", uri).unwrap_err();
            assert_eq!(status.code(), tonic::Code::PermissionDenied, "{uri}");
            assert!(
                status.message().contains("s3://lethe-data/acme/"),
                "{status:?}"
            );
        }
        assert!(check_registrable(&[], "acme", "s3://anywhere/x").is_ok());
    }

    #[test]
    fn prefixes_must_end_at_a_directory() {
        assert!(validate_prefix("s3://lethe-data/{tenant}/").is_ok());
        assert!(validate_prefix("file:///srv/lethe/").is_ok());
        for bad in [
            "s3://lethe-data/{tenant}",
            "http://lethe-data/",
            "s3://lethe-data/{user}/",
            "s3://lethe-data/../{tenant}/",
            "s3://lethe-data/%2e%2e/",
        ] {
            assert!(validate_prefix(bad).is_err(), "{bad}");
        }
    }
}
