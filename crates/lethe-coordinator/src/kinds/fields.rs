//! The fields every Create call shares: priority, idempotency key, and the model it names.

use tonic::Status;

use crate::gate::principal::Caller;
use crate::names::resource_id;
use crate::state::Shared;
use crate::status::invalid;

pub(crate) fn parse_priority(priority: i32) -> Result<i16, Status> {
    i16::try_from(priority)
        .ok()
        .filter(|p| (-100..=100).contains(p))
        .ok_or_else(|| invalid("priority", "must be -100 to 100"))
}

/// The idempotency key of a Create call: absent when empty, else at most 200 characters
/// without control characters.
pub(crate) fn request_id(id: String) -> Result<Option<String>, Status> {
    if id.chars().count() > 200 || id.chars().any(char::is_control) {
        return Err(invalid(
            "request_id",
            "must be at most 200 characters, without control characters",
        ));
    }
    Ok(Some(id).filter(|id| !id.is_empty()))
}

/// The model a request names (`models/{id}`), of the caller's tenant.
pub(crate) async fn named_model(
    shared: &Shared,
    caller: &Caller,
    action: &str,
    name: &str,
) -> Result<lethe_store::Model, Status> {
    let id = resource_id("model", "models", name)?;
    match shared.store.get_model(&caller.tenant, id).await {
        Ok(model) => Ok(model),
        Err(error) => Err(shared.gate.refused(caller, action, error).await),
    }
}
