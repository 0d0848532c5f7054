//! Which tenant a public call acts for: the caller that the gate ([`crate::auth`]) put on the
//! request. Every store query a handler makes is scoped by it.

use tonic::{Request, Status};

use crate::auth::Caller;
use crate::status::invalid;

pub const TENANT_HEADER: &str = "x-lethe-tenant";
pub const DEFAULT_TENANT: &str = "default";

pub(crate) fn caller_of<T>(request: &Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::internal("the call reached its handler unauthenticated"))
}

/// The tenant named by `x-lethe-tenant` (the default tenant when absent), in trusted-header
/// mode.
pub(crate) fn tenant_from_header(headers: &http::HeaderMap) -> Result<String, Status> {
    let Some(value) = headers.get(TENANT_HEADER) else {
        return Ok(DEFAULT_TENANT.to_string());
    };
    let tenant = value
        .to_str()
        .map_err(|_| invalid(TENANT_HEADER, "must be printable ASCII"))?;
    validate_tenant(tenant).map_err(|problem| invalid(TENANT_HEADER, problem))?;
    Ok(tenant.to_string())
}

/// Tenant names: 1 to 200 of `[A-Za-z0-9._-]`.
pub fn validate_tenant(tenant: &str) -> Result<(), String> {
    let valid = !tenant.is_empty()
        && tenant.len() <= 200
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if valid {
        Ok(())
    } else {
        Err("must be 1 to 200 of [A-Za-z0-9._-]".into())
    }
}
