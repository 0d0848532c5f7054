//! `lethe-coordinator credentials|quota|audit-log`: what an operator does to the database
//! directly, not through the API: issue and revoke tokens, set quotas, read the audit log.

use anyhow::Context;
use clap::{Args, Subcommand};
use lethe_store::{CredentialKind, Store, StoreConfig};
use uuid::Uuid;

#[derive(Subcommand, Debug)]
pub(crate) enum CredentialsCommand {
    /// Issue a token. It is printed once, on stdout, and stored only as its SHA-256.
    Create(CreateCredential),
    /// List credentials (never their tokens), one JSON object per line.
    List,
    /// Revoke a credential for good; replicas stop accepting it within 10 seconds.
    Revoke { id: Uuid },
}

#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub(crate) struct CredentialFor {
    /// The tenant the token acts for: it calls the public API for this tenant only.
    #[arg(long)]
    tenant: Option<String>,
    /// A token for workers: it calls the worker API only.
    #[arg(long)]
    worker: bool,
    /// A token for operators and dashboards: it calls the admin API only (all workers, the
    /// queue), never a tenant's resources.
    #[arg(long)]
    admin: bool,
}

#[derive(Args, Debug)]
pub(crate) struct CreateCredential {
    #[command(flatten)]
    r#for: CredentialFor,
    /// A name for the audit log and for `credentials list` (who holds it, what for).
    #[arg(long)]
    name: String,
}

#[derive(Args, Debug)]
pub(crate) struct QuotaCommand {
    /// The tenant whose quota to set.
    #[arg(long)]
    tenant: String,
    /// Unfinished operations the tenant may have.
    #[arg(long, conflicts_with = "default", required_unless_present = "default")]
    max_active_jobs: Option<u32>,
    /// Return the tenant to the coordinator's `max_active_jobs_per_tenant`.
    #[arg(long)]
    default: bool,
}

#[derive(Args, Debug)]
pub(crate) struct AuditLogCommand {
    /// One tenant's lines only.
    #[arg(long)]
    tenant: Option<String>,
    /// Lines after this id (what the previous read printed last).
    #[arg(long, default_value_t = 0)]
    after: i64,
    #[arg(long, default_value_t = 1000)]
    limit: i64,
}

/// Who runs an administrative command, for the audit log: `LETHE_OPERATOR` when set (a
/// person's name behind a shared account), else the login name, else the process's user id
/// (containers and CI often set neither `USER` nor `LOGNAME`).
fn operator() -> String {
    let named = ["LETHE_OPERATOR", "USER", "LOGNAME"]
        .into_iter()
        .find_map(|variable| std::env::var(variable).ok().filter(|v| !v.is_empty()));
    match named {
        Some(name) => format!("operator:{name}"),
        None => format!(
            "operator:uid:{}",
            process_uid().unwrap_or_else(|| "?".into())
        ),
    }
}

/// The real user id of this process, from `/proc/self/status` (Linux, which is where the
/// coordinator runs).
fn process_uid() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("Uid:"))?;
    line.split_whitespace().nth(1).map(str::to_owned)
}

pub(crate) async fn credentials(url: String, command: CredentialsCommand) -> anyhow::Result<()> {
    let store = connect(&url).await?;
    match command {
        CredentialsCommand::Create(create) => {
            let (kind, tenant) = match (&create.r#for.tenant, create.r#for.admin) {
                (Some(tenant), _) => (CredentialKind::Tenant, Some(tenant.as_str())),
                (None, true) => (CredentialKind::Admin, None),
                (None, false) => (CredentialKind::Worker, None),
            };
            if let Some(tenant) = tenant {
                lethe_coordinator::validate_tenant(tenant).map_err(anyhow::Error::msg)?;
            }
            let issued = store
                .create_credential(kind, tenant, &create.name, &operator())
                .await
                .context("creating the credential")?;
            eprintln!(
                "credential {}: {} token {:?}{}; the token below is shown only now",
                issued.credential.id,
                kind.as_str(),
                issued.credential.name,
                tenant
                    .map(|t| format!(" for tenant {t}"))
                    .unwrap_or_default()
            );
            println!("{}", issued.token);
        }
        CredentialsCommand::List => {
            for credential in store.list_credentials().await? {
                println!("{}", serde_json::to_string(&credential)?);
            }
        }
        CredentialsCommand::Revoke { id } => {
            let revoked = store.revoke_credential(id, &operator()).await?;
            eprintln!(
                "credential {} ({:?}) revoked at {}",
                revoked.id,
                revoked.name,
                revoked
                    .revoked_at
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_default()
            );
        }
    }
    Ok(())
}

pub(crate) async fn quota(url: String, command: QuotaCommand) -> anyhow::Result<()> {
    let store = connect(&url).await?;
    lethe_coordinator::validate_tenant(&command.tenant).map_err(anyhow::Error::msg)?;
    let limit = if command.default {
        None
    } else {
        command.max_active_jobs
    };
    store
        .set_tenant_quota(&command.tenant, limit, &operator())
        .await?;
    match limit {
        Some(n) => eprintln!(
            "tenant {}: at most {n} unfinished operations",
            command.tenant
        ),
        None => eprintln!("tenant {}: the coordinator's default quota", command.tenant),
    }
    Ok(())
}

pub(crate) async fn audit_log(url: String, command: AuditLogCommand) -> anyhow::Result<()> {
    let store = connect(&url).await?;
    let lines = store
        .audit_log(command.tenant.as_deref(), command.after, command.limit)
        .await?;
    for line in lines {
        println!("{}", serde_json::to_string(&line)?);
    }
    Ok(())
}

async fn connect(url: &str) -> anyhow::Result<Store> {
    let config = StoreConfig {
        max_connections: 2,
        read_connections: 1,
        ..StoreConfig::default()
    };
    Store::connect(url, config)
        .await
        .context("connecting to the database (database_url)")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_process_user_id_is_read_where_no_login_name_is_set() {
        let uid = super::process_uid().expect("Linux reports the process's user id");
        assert!(uid.parse::<u32>().is_ok(), "{uid}");
    }
}
