//! Datasets and models, registered by name and object-store URL, per tenant.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;
use uuid::Uuid;

use crate::error::quoted;
use crate::{Store, StoreError};

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Dataset {
    pub id: Uuid,
    pub tenant: String,
    pub name: String,
    pub uri: String,
    pub sha256: Option<[u8; 32]>,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Model {
    pub id: Uuid,
    pub tenant: String,
    pub name: String,
    pub dataset: String,
    pub uri: String,
    pub sha256: Option<[u8; 32]>,
    pub created_at: DateTime<Utc>,
}

impl Store {
    /// Registers a dataset. Registering the same name with the same URL and hash again returns
    /// the first registration (`false`: not created now); the same name with anything else is
    /// refused, since requests already made may name it.
    pub async fn register_dataset(
        &self,
        tenant: &str,
        name: &str,
        uri: &str,
        sha256: Option<[u8; 32]>,
    ) -> Result<(Dataset, bool), StoreError> {
        check(name, uri, true)?;
        let inserted = sqlx::query(
            "INSERT INTO datasets (id, tenant, name, uri, sha256) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (tenant, name) DO NOTHING RETURNING id",
        )
        .bind(Uuid::now_v7())
        .bind(tenant)
        .bind(name)
        .bind(uri)
        .bind(sha256.as_ref().map(|h| &h[..]))
        .fetch_optional(&self.pool)
        .await?;
        let existing = self.get_dataset(tenant, name).await?;
        if inserted.is_none() && (existing.uri != uri || existing.sha256 != sha256) {
            return Err(StoreError::AlreadyExists {
                what: "dataset",
                name: name.into(),
            });
        }
        Ok((existing, inserted.is_some()))
    }

    pub async fn get_dataset(&self, tenant: &str, name: &str) -> Result<Dataset, StoreError> {
        let row = sqlx::query(
            "SELECT id, tenant, name, uri, sha256, created_at FROM datasets WHERE tenant = $1 AND name = $2",
        )
        .bind(tenant)
        .bind(name)
        .fetch_optional(&self.reads)
        .await?
        .ok_or_else(|| StoreError::NotFound { what: "dataset", id: name.into() })?;
        Ok(Dataset {
            id: row.try_get("id")?,
            tenant: row.try_get("tenant")?,
            name: row.try_get("name")?,
            uri: row.try_get("uri")?,
            sha256: hash(row.try_get("sha256")?)?,
            created_at: row.try_get("created_at")?,
        })
    }

    /// Registers a model trained on `dataset` (a dataset of the same tenant), with the same
    /// rules as datasets.
    pub async fn register_model(
        &self,
        tenant: &str,
        name: &str,
        dataset: &str,
        uri: &str,
        sha256: Option<[u8; 32]>,
    ) -> Result<(Model, bool), StoreError> {
        check(name, uri, false)?;
        let dataset_id = self.get_dataset(tenant, dataset).await?.id;
        let inserted = sqlx::query(
            "INSERT INTO models (id, tenant, name, dataset_id, uri, sha256) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (tenant, name) DO NOTHING RETURNING id",
        )
        .bind(Uuid::now_v7())
        .bind(tenant)
        .bind(name)
        .bind(dataset_id)
        .bind(uri)
        .bind(sha256.as_ref().map(|h| &h[..]))
        .fetch_optional(&self.pool)
        .await?;
        let existing = self.get_model(tenant, name).await?;
        let same = existing.uri == uri && existing.sha256 == sha256 && existing.dataset == dataset;
        if inserted.is_none() && !same {
            return Err(StoreError::AlreadyExists {
                what: "model",
                name: name.into(),
            });
        }
        Ok((existing, inserted.is_some()))
    }

    pub async fn get_model(&self, tenant: &str, name: &str) -> Result<Model, StoreError> {
        let row = sqlx::query(
            "SELECT m.id, m.tenant, m.name, d.name AS dataset, m.uri, m.sha256, m.created_at \
             FROM models m JOIN datasets d ON d.id = m.dataset_id WHERE m.tenant = $1 AND m.name = $2",
        )
        .bind(tenant)
        .bind(name)
        .fetch_optional(&self.reads)
        .await?
        .ok_or_else(|| StoreError::NotFound { what: "model", id: name.into() })?;
        Ok(Model {
            id: row.try_get("id")?,
            tenant: row.try_get("tenant")?,
            name: row.try_get("name")?,
            dataset: row.try_get("dataset")?,
            uri: row.try_get("uri")?,
            sha256: hash(row.try_get("sha256")?)?,
            created_at: row.try_get("created_at")?,
        })
    }
}

/// Names are short lowercase handles; URLs are object-store URLs that stay where they point.
/// `builtin:NAME`: a dataset that worker images carry (`fmnist-tiny`, say).
fn is_builtin(uri: &str) -> bool {
    uri.strip_prefix("builtin:").is_some_and(|name| {
        !name.is_empty()
            && name.len() <= 100
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    })
}

/// A dataset or model id: 1 to 100 of [a-z0-9._-], starting with a letter or digit. Ids
/// are checked on registration and on every lookup, so a malformed one is refused as such.
pub fn check_resource_id(name: &str) -> Result<(), StoreError> {
    let name_ok = !name.is_empty()
        && name.len() <= 100
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
    if !name_ok {
        return Err(StoreError::InvalidArgument(format!(
            "name {}: 1 to 100 of [a-z0-9._-], starting with a letter or digit",
            quoted(name)
        )));
    }
    Ok(())
}

fn check(name: &str, uri: &str, builtin_allowed: bool) -> Result<(), StoreError> {
    check_resource_id(name)?;
    let scheme_ok = ["file:///", "s3://"].iter().any(|s| uri.starts_with(s))
        || (builtin_allowed && is_builtin(uri));
    // URL parsers treat a percent-encoded dot as a dot, so `%2e%2e` is `..` too.
    let decoded_dots = uri.replace("%2e", ".").replace("%2E", ".");
    let escapes = decoded_dots
        .split('/')
        .any(|segment| segment == ".." || segment == ".")
        || uri.contains("%2f")
        || uri.contains("%2F");
    if !scheme_ok || escapes || uri.len() > 2000 || uri.chars().any(char::is_control) {
        return Err(StoreError::InvalidArgument(format!(
            "uri {}: a file:/// or s3:// URL of at most 2000 characters, without '.' or '..' \
             segments, encoded or not (datasets may also be builtin:NAME)",
            quoted(uri)
        )));
    }
    Ok(())
}

fn hash(bytes: Option<Vec<u8>>) -> Result<Option<[u8; 32]>, StoreError> {
    bytes
        .map(|b| {
            b.try_into()
                .map_err(|_| StoreError::Corrupt("a stored sha256 is not 32 bytes".into()))
        })
        .transpose()
}
