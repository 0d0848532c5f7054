//! Who is calling: the credential a call presents, checked against the API it calls.

use lethe_store::CredentialKind;
use tonic::Status;
use uuid::Uuid;

use super::principal::{Caller, Operator, Principal, WorkerCaller};
use super::Gatekeeper;
use crate::config::AuthMode;
use crate::tenant::tenant_from_header;

/// The API a method belongs to, by its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Api {
    Public,
    Worker,
    Admin,
    /// The dashboard's JSON: tenant tokens see their tenant, admin tokens everything.
    Dashboard,
    /// Health and reflection: probes and tools call them without credentials.
    Open,
}

impl Api {
    /// The API of a gRPC method.
    pub(crate) fn of(path: &str) -> Api {
        if path.starts_with("/lethe.v1.WorkerService/") {
            Api::Worker
        } else if path.starts_with("/lethe.v1.Admin/") {
            Api::Admin
        } else if path.starts_with("/lethe.v1.Lethe/")
            || path.starts_with("/google.longrunning.Operations/")
        {
            Api::Public
        } else {
            Api::Open
        }
    }
}

/// Calls that may wait for up to a minute: they are bounded by the long-poll limit in their
/// handlers instead of by the concurrent-call limit, which they would otherwise fill.
pub(crate) fn is_long_poll(path: &str) -> bool {
    matches!(
        path,
        "/google.longrunning.Operations/WaitOperation"
            | "/lethe.v1.Lethe/WatchOperation"
            | "/lethe.v1.WorkerService/AcquireTask"
    )
}

/// Why a call was refused before it reached its handler.
pub(crate) struct Refusal {
    pub(crate) status: Status,
    /// What the caller presented, for the audit log.
    pub(crate) actor: String,
    pub(crate) tenant: Option<String>,
    pub(crate) credential_id: Option<Uuid>,
}

impl Refusal {
    fn unauthenticated(message: &str, actor: &str) -> Self {
        Refusal {
            status: Status::unauthenticated(message),
            actor: actor.to_string(),
            tenant: None,
            credential_id: None,
        }
    }
}

impl Gatekeeper {
    pub(crate) async fn authenticate(
        &self,
        api: Api,
        headers: &http::HeaderMap,
        client_certificate: bool,
    ) -> Result<Principal, Refusal> {
        if api == Api::Worker && self.workers_need_certificates && !client_certificate {
            return Err(Refusal::unauthenticated(
                "the worker API requires a client certificate signed by the workers' CA \
                 (mutual TLS): set the worker's tls_cert and tls_key",
                "(no client certificate)",
            ));
        }
        match (self.auth, api) {
            (_, Api::Open) => Ok(Principal::Anyone),
            (AuthMode::TrustedHeader, Api::Worker) => Ok(Principal::Worker(WorkerCaller {
                credential_id: None,
                actor: "(trusted network)".into(),
            })),
            (AuthMode::TrustedHeader, Api::Admin) => Ok(Principal::Admin(Operator {
                credential_id: None,
                actor: "(trusted network)".into(),
            })),
            (AuthMode::TrustedHeader, Api::Public | Api::Dashboard) => {
                let tenant = tenant_from_header(headers).map_err(|status| Refusal {
                    status,
                    actor: "x-lethe-tenant".into(),
                    tenant: None,
                    credential_id: None,
                })?;
                Ok(Principal::Tenant(Caller {
                    actor: format!("x-lethe-tenant:{tenant}"),
                    tenant,
                    credential_id: None,
                    trace: None,
                }))
            }
            (AuthMode::Tokens, api) => self.authenticate_token(api, headers).await,
        }
    }

    async fn authenticate_token(
        &self,
        api: Api,
        headers: &http::HeaderMap,
    ) -> Result<Principal, Refusal> {
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return Err(Refusal::unauthenticated(
                "this call needs an API token: send `authorization: Bearer <token>` (the lethe \
                 CLI reads it from --token or LETHE_TOKEN)",
                "(no token)",
            ));
        };
        let token = bearer_token(value).ok_or_else(|| {
            Refusal::unauthenticated(
                "the authorization metadata must be `Bearer <token>`",
                "(malformed token)",
            )
        })?;
        let credential = self
            .credentials
            .lookup(&self.store, token)
            .await
            .map_err(|status| Refusal {
                status,
                actor: "(token not checked)".into(),
                tenant: None,
                credential_id: None,
            })?
            .ok_or_else(|| {
                Refusal::unauthenticated(
                    "the API token is not one this service issued",
                    "(unknown token)",
                )
            })?;
        let refuse = |status: Status| Refusal {
            status,
            actor: credential.name.clone(),
            tenant: credential.tenant.clone(),
            credential_id: Some(credential.id),
        };
        if credential.revoked_at.is_some() {
            return Err(refuse(Status::unauthenticated(format!(
                "the API token {:?} was revoked",
                credential.name
            ))));
        }
        match (credential.kind, api, credential.tenant.clone()) {
            (CredentialKind::Tenant, Api::Public, Some(tenant)) => Ok(Principal::Tenant(Caller {
                tenant,
                credential_id: Some(credential.id),
                actor: credential.name.clone(),
                trace: None,
            })),
            (CredentialKind::Tenant, Api::Dashboard, Some(tenant)) => {
                Ok(Principal::Tenant(Caller {
                    tenant,
                    credential_id: Some(credential.id),
                    actor: credential.name.clone(),
                    trace: None,
                }))
            }
            (CredentialKind::Admin, Api::Dashboard, _) => Ok(Principal::Admin(Operator {
                credential_id: Some(credential.id),
                actor: credential.name.clone(),
            })),
            (CredentialKind::Worker, Api::Dashboard, _) => Err(refuse(Status::permission_denied(
                "a worker's token does not open the dashboard",
            ))),
            (CredentialKind::Worker, Api::Worker, _) => Ok(Principal::Worker(WorkerCaller {
                credential_id: Some(credential.id),
                actor: credential.name.clone(),
            })),
            (CredentialKind::Admin, Api::Admin, _) => Ok(Principal::Admin(Operator {
                credential_id: Some(credential.id),
                actor: credential.name.clone(),
            })),
            (CredentialKind::Worker, _, _) => Err(refuse(Status::permission_denied(
                "a worker's token may call the worker API only",
            ))),
            (CredentialKind::Admin, _, _) => Err(refuse(Status::permission_denied(
                "an admin token may call the admin API only, never a tenant's resources",
            ))),
            (CredentialKind::Tenant, api, _) => Err(refuse(Status::permission_denied(format!(
                "a tenant's token may call the public API only, not the {} API",
                if api == Api::Admin { "admin" } else { "worker" }
            )))),
        }
    }
}

/// The token of an `authorization: Bearer <token>` value, if it is one (at most 200 bytes).
/// The scheme is case-insensitive (RFC 7235 §2.1): `bearer` and `BEARER` are `Bearer`.
pub(crate) fn bearer_token(value: &http::HeaderValue) -> Option<&str> {
    let (scheme, token) = value.to_str().ok()?.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && token.len() <= 200)
        .then_some(token)
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_the_token_is_required() {
        let token = |value: &str| {
            bearer_token(&http::HeaderValue::from_str(value).unwrap()).map(str::to_string)
        };
        for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
            assert_eq!(
                token(&format!("{scheme} abc")).as_deref(),
                Some("abc"),
                "{scheme}"
            );
        }
        assert_eq!(token("Bearer   abc  ").as_deref(), Some("abc"));
        for bad in ["Bearer", "Bearer ", "Basic abc", "Bearerabc", "abc"] {
            assert_eq!(token(bad), None, "{bad:?}");
        }
        assert_eq!(token(&format!("Bearer {}", "x".repeat(201))), None);
    }
}
