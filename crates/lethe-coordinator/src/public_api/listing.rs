//! ListOperations' filter and page tokens.

use lethe_store::{JobFilter, JobKind, JobState};
use serde::{Deserialize, Serialize};
use tonic::Status;
use uuid::Uuid;

use crate::status::invalid;

/// `state=SUCCEEDED AND kind=DELETION`: each term at most once; values are the enum names with
/// or without their prefix, in any case.
pub(crate) fn parse_filter(filter: &str) -> Result<JobFilter, Status> {
    let mut parsed = JobFilter::default();
    if filter.trim().is_empty() {
        return Ok(parsed);
    }
    for term in filter.split(" AND ") {
        let (key, value) = term
            .split_once('=')
            .ok_or_else(|| invalid("filter", format!("{term:?} is not key=value")))?;
        let value = value.trim().to_ascii_lowercase();
        match key.trim() {
            "state" if parsed.state.is_none() => {
                let name = value.strip_prefix("operation_state_").unwrap_or(&value);
                parsed.state = Some(
                    *JobState::ALL
                        .iter()
                        .find(|s| s.as_str() == name)
                        .ok_or_else(|| invalid("filter", format!("unknown state {value:?}")))?,
                );
            }
            "kind" if parsed.kind.is_none() => {
                let name = value.strip_prefix("operation_kind_").unwrap_or(&value);
                parsed.kind = Some(
                    *JobKind::ALL
                        .iter()
                        .find(|k| k.as_str() == name)
                        .ok_or_else(|| invalid("filter", format!("unknown kind {value:?}")))?,
                );
            }
            other => {
                return Err(invalid(
                    "filter",
                    format!(
                    "{other:?} is not a filterable field, or appears twice (use state and kind)"
                ),
                ))
            }
        }
    }
    Ok(parsed)
}

/// Why a page token was refused: a token of another tenant is also audited.
#[derive(Debug)]
pub(crate) enum BadPageToken {
    Invalid(Status),
    Foreign(Status),
}

/// Opaque to clients; binds a page to the filter it was made with (AIP-158) and to the
/// tenant it was issued to.
#[derive(Serialize, Deserialize)]
pub(crate) struct PageToken {
    pub(crate) after: Uuid,
    pub(crate) filter: String,
    pub(crate) tenant: String,
}

impl PageToken {
    pub(crate) fn encode(&self) -> String {
        hex::encode(serde_json::to_vec(self).unwrap_or_default())
    }

    pub(crate) fn decode(token: &str, filter: &str, tenant: &str) -> Result<Uuid, BadPageToken> {
        let token: PageToken = hex::decode(token)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or_else(|| {
                BadPageToken::Invalid(invalid("page_token", "not a token this API issued"))
            })?;
        if token.tenant != tenant {
            return Err(BadPageToken::Foreign(invalid(
                "page_token",
                "was issued to another tenant",
            )));
        }
        if token.filter != filter {
            return Err(BadPageToken::Invalid(invalid(
                "page_token",
                "was issued for a different filter",
            )));
        }
        Ok(token.after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn filters_parse_and_reject_what_they_do_not_know() {
        let f = parse_filter("state=OPERATION_STATE_SUCCEEDED AND kind=deletion").unwrap();
        assert_eq!(
            (f.state, f.kind),
            (Some(JobState::Succeeded), Some(JobKind::Deletion))
        );
        assert!(parse_filter("").unwrap().state.is_none());
        for bad in [
            "state",
            "state=done",
            "owner=me",
            "state=queued AND state=running",
        ] {
            assert_eq!(
                parse_filter(bad).unwrap_err().code(),
                Code::InvalidArgument,
                "{bad}"
            );
        }
    }

    #[test]
    fn page_tokens_are_bound_to_their_filter() {
        let id = Uuid::now_v7();
        let token = PageToken {
            after: id,
            filter: "kind=noop".into(),
            tenant: "acme".into(),
        }
        .encode();
        assert_eq!(PageToken::decode(&token, "kind=noop", "acme").unwrap(), id);
        assert!(matches!(
            PageToken::decode(&token, "", "acme"),
            Err(BadPageToken::Invalid(status)) if status.code() == Code::InvalidArgument
        ));
        assert!(matches!(
            PageToken::decode(&token, "kind=noop", "globex"),
            Err(BadPageToken::Foreign(status)) if status.code() == Code::InvalidArgument
        ));
        assert!(matches!(
            PageToken::decode("zz", "", "acme"),
            Err(BadPageToken::Invalid(status)) if status.code() == Code::InvalidArgument
        ));
    }
}
