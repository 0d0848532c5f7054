//! Which tenant a public call acts for. Until API tokens exist (they will replace this), the
//! tenant is the `x-lethe-tenant` header; every store query is scoped by it.

use tonic::{Request, Status};

use crate::status::invalid;

pub const TENANT_HEADER: &str = "x-lethe-tenant";
pub const DEFAULT_TENANT: &str = "default";

pub(crate) fn tenant_of<T>(request: &Request<T>) -> Result<String, Status> {
    let Some(value) = request.metadata().get(TENANT_HEADER) else {
        return Ok(DEFAULT_TENANT.to_string());
    };
    let tenant = value
        .to_str()
        .map_err(|_| invalid(TENANT_HEADER, "must be printable ASCII"))?;
    let valid = !tenant.is_empty()
        && tenant.len() <= 200
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !valid {
        return Err(invalid(TENANT_HEADER, "must be 1 to 200 of [A-Za-z0-9._-]"));
    }
    Ok(tenant.to_string())
}
