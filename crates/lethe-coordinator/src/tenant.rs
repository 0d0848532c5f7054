//! Tenants: their names, the trusted header that names one, and each tenant's share of a
//! replica's concurrent calls.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tonic::Status;

use crate::status::invalid;

pub const TENANT_HEADER: &str = "x-lethe-tenant";
pub const DEFAULT_TENANT: &str = "default";

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

/// Each tenant's calls in flight on this replica, so that one tenant cannot hold every permit
/// of `max_concurrent_calls` and starve the others.
pub(crate) struct TenantCalls {
    limit: usize,
    in_flight: Mutex<HashMap<String, usize>>,
}

/// One call in flight for a tenant; its place is given back when it drops.
pub(crate) struct TenantCall {
    calls: Arc<TenantCalls>,
    tenant: String,
}

impl TenantCalls {
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(TenantCalls {
            limit: limit.max(1),
            in_flight: Mutex::new(HashMap::new()),
        })
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// A place for one more call of `tenant`, or `None` when it has `limit` in flight.
    pub(crate) fn enter(self: &Arc<Self>, tenant: &str) -> Option<TenantCall> {
        let mut in_flight = self.in_flight.lock().expect("tenant calls lock");
        let count = in_flight.entry(tenant.to_string()).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(TenantCall {
            calls: self.clone(),
            tenant: tenant.to_string(),
        })
    }
}

impl Drop for TenantCall {
    fn drop(&mut self) {
        let mut in_flight = self.calls.in_flight.lock().expect("tenant calls lock");
        if let Some(count) = in_flight.get_mut(&self.tenant) {
            *count -= 1;
            // Tenants without calls leave the map, so it holds only those being served.
            if *count == 0 {
                in_flight.remove(&self.tenant);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_at_its_limit_is_refused_while_others_are_served() {
        let calls = TenantCalls::new(2);
        let first = calls.enter("acme").unwrap();
        let _second = calls.enter("acme").unwrap();
        assert!(calls.enter("acme").is_none());
        let other = calls
            .enter("globex")
            .expect("another tenant has its own places");
        drop(first);
        let _third = calls
            .enter("acme")
            .expect("a finished call gives its place back");
        drop(other);
        assert!(!calls.in_flight.lock().unwrap().contains_key("globex"));
    }
}
