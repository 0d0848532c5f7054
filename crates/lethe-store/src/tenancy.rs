//! Who may call, how much a tenant may queue, and the append-only record of who asked for
//! what. Tokens are shown once, when they are made; the store keeps only their SHA-256.

use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::{Postgres, Row, Transaction};
use uuid::Uuid;

use crate::{Store, StoreError};

/// What a credential may call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    /// The public API, for one tenant.
    Tenant,
    /// The worker API, and nothing else.
    Worker,
    /// The admin API: workers and queue statistics across tenants.
    Admin,
}

impl CredentialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Tenant => "tenant",
            CredentialKind::Worker => "worker",
            CredentialKind::Admin => "admin",
        }
    }

    fn parse(text: &str) -> Result<Self, StoreError> {
        match text {
            "tenant" => Ok(CredentialKind::Tenant),
            "worker" => Ok(CredentialKind::Worker),
            "admin" => Ok(CredentialKind::Admin),
            other => Err(StoreError::Corrupt(format!("credential kind {other:?}"))),
        }
    }

    /// The token's prefix says what it is, so that secret scanners and people can tell.
    fn token_prefix(self) -> &'static str {
        match self {
            CredentialKind::Tenant => "lethe_t_",
            CredentialKind::Worker => "lethe_w_",
            CredentialKind::Admin => "lethe_a_",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Credential {
    pub id: Uuid,
    pub kind: CredentialKind,
    /// The tenant a tenant credential acts for; `None` for workers.
    pub tenant: Option<String>,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A credential just made, with the only copy of its token.
#[derive(Debug)]
pub struct IssuedCredential {
    pub credential: Credential,
    pub token: String,
}

/// The SHA-256 under which a token is stored and looked up.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditOutcome {
    Allowed,
    Denied,
}

impl AuditOutcome {
    fn as_str(self) -> &'static str {
        match self {
            AuditOutcome::Allowed => "allowed",
            AuditOutcome::Denied => "denied",
        }
    }
}

/// One line of the audit log, as it is written.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AuditEntry {
    /// `None` when the caller could not be identified.
    pub tenant: Option<String>,
    pub credential_id: Option<Uuid>,
    /// Who, in words: a credential's name, or how an unidentified caller presented itself.
    pub actor: String,
    /// What was asked, as `resource.verb` (`deletion.create`, `operation.get`).
    pub action: String,
    /// The resource's name in the API (`operations/{id}`, `models/{name}`).
    pub resource: String,
    pub outcome: AuditOutcome,
    /// Why a call was denied.
    pub reason: Option<String>,
    pub detail: Value,
}

/// An audit log line as it was stored.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AuditRecord {
    pub id: i64,
    pub at: DateTime<Utc>,
    #[serde(flatten)]
    pub entry: AuditEntry,
}

/// What a job submitted through the public API carries to the store: the line that records it,
/// written in the transaction that creates the job, and the tenant's default quota.
#[derive(Clone, Debug, PartialEq)]
pub struct Admission {
    /// The line to append; its resource is set to the new job's name (`operations/{id}`).
    pub audit: AuditEntry,
    /// Unfinished jobs the tenant may have, unless `tenant_quotas` says otherwise.
    pub default_max_active_jobs: u32,
    /// The W3C `traceparent` of the span that accepted the job (`00-{trace id}-{span id}-{flags}`),
    /// kept with it so that its tasks' spans are that span's children.
    pub traceparent: Option<String>,
}

/// Bounds what lands in a text column, whatever a caller sent.
fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => text[..cut].to_string(),
        None => text.to_string(),
    }
}

impl Store {
    /// Makes a credential and returns its token, which is not stored and cannot be shown again.
    /// The creation is audited with `actor` (who ran the command).
    pub async fn create_credential(
        &self,
        kind: CredentialKind,
        tenant: Option<&str>,
        name: &str,
        actor: &str,
    ) -> Result<IssuedCredential, StoreError> {
        if (kind == CredentialKind::Tenant) != tenant.is_some() {
            return Err(StoreError::InvalidArgument(
                "a tenant credential names its tenant; worker and admin credentials name none"
                    .into(),
            ));
        }
        if name.is_empty() || name.len() > 200 {
            return Err(StoreError::InvalidArgument(
                "a credential's name is 1 to 200 bytes".into(),
            ));
        }
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        let token = format!("{}{}", kind.token_prefix(), hex::encode(secret));
        let id = Uuid::now_v7();
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "INSERT INTO credentials (id, kind, tenant, name, secret_sha256) \
             VALUES ($1, $2, $3, $4, $5) RETURNING created_at",
        )
        .bind(id)
        .bind(kind.as_str())
        .bind(tenant)
        .bind(name)
        .bind(token_digest(&token).as_slice())
        .fetch_one(&mut *tx)
        .await?;
        let credential = Credential {
            id,
            kind,
            tenant: tenant.map(str::to_string),
            name: name.to_string(),
            created_at: row.try_get("created_at")?,
            revoked_at: None,
        };
        append(
            &mut tx,
            &AuditEntry {
                tenant: credential.tenant.clone(),
                credential_id: None,
                actor: actor.to_string(),
                action: "credential.create".into(),
                resource: format!("credentials/{id}"),
                outcome: AuditOutcome::Allowed,
                reason: None,
                detail: serde_json::json!({"kind": kind.as_str(), "name": name}),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(IssuedCredential { credential, token })
    }

    /// The live credential a token belongs to; `Ok(None)` for an unknown or revoked token.
    pub async fn credential_for_token(
        &self,
        token: &str,
    ) -> Result<Option<Credential>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE secret_sha256 = $1"
        ))
        .bind(token_digest(token).as_slice())
        .fetch_optional(&self.reads)
        .await?;
        row.map(|row| credential(&row)).transpose()
    }

    pub async fn list_credentials(&self) -> Result<Vec<Credential>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {CREDENTIAL_COLUMNS} FROM credentials ORDER BY id"
        ))
        .fetch_all(&self.reads)
        .await?;
        rows.iter().map(credential).collect()
    }

    /// Revokes a credential for good (again is a no-op); the revocation is audited.
    pub async fn revoke_credential(&self, id: Uuid, actor: &str) -> Result<Credential, StoreError> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(&format!(
            "UPDATE credentials SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 \
             RETURNING {CREDENTIAL_COLUMNS}"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: "credential",
            id: id.to_string(),
        })?;
        let revoked = credential(&row)?;
        append(
            &mut tx,
            &AuditEntry {
                tenant: revoked.tenant.clone(),
                credential_id: None,
                actor: actor.to_string(),
                action: "credential.revoke".into(),
                resource: format!("credentials/{id}"),
                outcome: AuditOutcome::Allowed,
                reason: None,
                detail: serde_json::json!({"name": revoked.name}),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(revoked)
    }

    /// Sets a tenant's limit on unfinished jobs, or with `None` returns it to the default.
    pub async fn set_tenant_quota(
        &self,
        tenant: &str,
        max_active_jobs: Option<u32>,
        actor: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        match max_active_jobs {
            Some(limit) => {
                sqlx::query(
                    "INSERT INTO tenant_quotas (tenant, max_active_jobs) VALUES ($1, $2) \
                     ON CONFLICT (tenant) DO UPDATE SET max_active_jobs = EXCLUDED.max_active_jobs, \
                     updated_at = now()",
                )
                .bind(tenant)
                .bind(i32::try_from(limit).unwrap_or(i32::MAX))
                .execute(&mut *tx)
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM tenant_quotas WHERE tenant = $1")
                    .bind(tenant)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        append(
            &mut tx,
            &AuditEntry {
                tenant: Some(tenant.to_string()),
                credential_id: None,
                actor: actor.to_string(),
                action: "quota.set".into(),
                resource: format!("tenants/{tenant}"),
                outcome: AuditOutcome::Allowed,
                reason: None,
                detail: serde_json::json!({"max_active_jobs": max_active_jobs}),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Appends one line to the audit log.
    pub async fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        append(&mut tx, entry).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Audit lines after `after` (an id; 0 for the first), oldest first, of one tenant or all.
    pub async fn audit_log(
        &self,
        tenant: Option<&str>,
        after: i64,
        limit: i64,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at, tenant, credential_id, actor, action, resource, outcome, reason, detail \
             FROM audit_log WHERE id > $1 AND ($2::text IS NULL OR tenant = $2) \
             ORDER BY id LIMIT $3",
        )
        .bind(after)
        .bind(tenant)
        .bind(limit.clamp(1, 10_000))
        .fetch_all(&self.reads)
        .await?;
        rows.iter()
            .map(|row| {
                let outcome: String = row.try_get("outcome")?;
                Ok(AuditRecord {
                    id: row.try_get("id")?,
                    at: row.try_get("at")?,
                    entry: AuditEntry {
                        tenant: row.try_get("tenant")?,
                        credential_id: row.try_get("credential_id")?,
                        actor: row.try_get("actor")?,
                        action: row.try_get("action")?,
                        resource: row.try_get("resource")?,
                        outcome: match outcome.as_str() {
                            "allowed" => AuditOutcome::Allowed,
                            _ => AuditOutcome::Denied,
                        },
                        reason: row.try_get("reason")?,
                        detail: row.try_get("detail")?,
                    },
                })
            })
            .collect()
    }

    /// Another tenant that holds what a refusal could not find in `tenant` (`what` as in
    /// [`StoreError::NotFound`]: a job by id, a model or dataset by name). This is how a
    /// cross-tenant attempt is told from a mistake and logged; the caller is only ever told
    /// "not found", so that nothing about other tenants can be probed.
    pub async fn holder_elsewhere(
        &self,
        what: &str,
        key: &str,
        tenant: &str,
    ) -> Result<Option<String>, StoreError> {
        let query = match what {
            "job" => {
                let Ok(id) = Uuid::parse_str(key) else {
                    return Ok(None);
                };
                return Ok(sqlx::query_scalar(
                    "SELECT tenant FROM jobs WHERE id = $1 AND tenant <> $2",
                )
                .bind(id)
                .bind(tenant)
                .fetch_optional(&self.reads)
                .await?);
            }
            "model" => "SELECT tenant FROM models WHERE name = $1 AND tenant <> $2 LIMIT 1",
            "dataset" => "SELECT tenant FROM datasets WHERE name = $1 AND tenant <> $2 LIMIT 1",
            _ => return Ok(None),
        };
        Ok(sqlx::query_scalar(query)
            .bind(key)
            .bind(tenant)
            .fetch_optional(&self.reads)
            .await?)
    }
}

/// Takes the tenant's quota lock, for the rest of the transaction: two submissions of one
/// tenant then count each other's jobs.
pub(crate) async fn lock_tenant_quota(
    tx: &mut Transaction<'_, Postgres>,
    tenant: &str,
) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('lethe.quota:' || $1, 0))")
        .bind(tenant)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Refuses the job just inserted if it takes its tenant past the quota (the caller rolls back).
pub(crate) async fn check_tenant_quota(
    tx: &mut Transaction<'_, Postgres>,
    tenant: &str,
    default_limit: u32,
) -> Result<(), StoreError> {
    let row = sqlx::query(
        "SELECT (SELECT count(*) FROM jobs WHERE tenant = $1 \
                 AND state IN ('queued', 'running', 'cancelling')) AS active, \
                coalesce((SELECT max_active_jobs FROM tenant_quotas WHERE tenant = $1), $2) AS lim",
    )
    .bind(tenant)
    .bind(i32::try_from(default_limit).unwrap_or(i32::MAX))
    .fetch_one(&mut **tx)
    .await?;
    let active: i64 = row.try_get("active")?;
    let limit: i32 = row.try_get("lim")?;
    if active > i64::from(limit) {
        return Err(StoreError::QuotaExceeded {
            tenant: tenant.to_string(),
            limit: limit.max(0) as u32,
        });
    }
    Ok(())
}

pub(crate) async fn append(
    tx: &mut Transaction<'_, Postgres>,
    entry: &AuditEntry,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_log (tenant, credential_id, actor, action, resource, outcome, reason, \
         detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(entry.tenant.as_deref().map(|t| clip(t, 200)))
    .bind(entry.credential_id)
    .bind(match clip(&entry.actor, 200) {
        actor if actor.is_empty() => "(unnamed)".to_string(),
        actor => actor,
    })
    .bind(clip(&entry.action, 100))
    .bind(clip(&entry.resource, 400))
    .bind(entry.outcome.as_str())
    .bind(entry.reason.as_deref().map(|r| clip(r, 400)))
    .bind(&entry.detail)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

const CREDENTIAL_COLUMNS: &str = "id, kind, tenant, name, created_at, revoked_at";

fn credential(row: &sqlx::postgres::PgRow) -> Result<Credential, StoreError> {
    let kind: String = row.try_get("kind")?;
    Ok(Credential {
        id: row.try_get("id")?,
        kind: CredentialKind::parse(&kind)?,
        tenant: row.try_get("tenant")?,
        name: row.try_get("name")?,
        created_at: row.try_get("created_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}
