//! google.longrunning's `Operations` service: Get, List, Cancel and Wait.

use std::time::Duration;

use lethe_proto::google::longrunning::{
    operations_server::Operations, CancelOperationRequest, GetOperationRequest,
    ListOperationsRequest, ListOperationsResponse, Operation, WaitOperationRequest,
};
use lethe_store::AuditOutcome;
use tonic::{Request, Response, Status};

use super::listing::{parse_filter, BadPageToken, PageToken};
use super::PublicApi;
use crate::gate::principal::caller_of;
use crate::limits::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, MAX_WAIT};
use crate::names::{operation_name, parse_operation_name};
use crate::operation::operation_of;
use crate::status::{from_store, invalid};

#[tonic::async_trait]
impl Operations for PublicApi {
    async fn get_operation(
        &self,
        request: Request<GetOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        let caller = caller_of(&request)?;
        let id = parse_operation_name("name", &request.get_ref().name)?;
        Ok(Response::new(
            self.operation(&caller, "operation.get", id).await?,
        ))
    }

    async fn list_operations(
        &self,
        request: Request<ListOperationsRequest>,
    ) -> Result<Response<ListOperationsResponse>, Status> {
        let caller = caller_of(&request)?;
        let tenant = caller.tenant.clone();
        let request = request.into_inner();
        let filter = parse_filter(&request.filter)?;
        let page_size = match request.page_size {
            n if n < 0 => return Err(invalid("page_size", "must not be negative")),
            0 => DEFAULT_PAGE_SIZE,
            n => (n as u32).min(MAX_PAGE_SIZE),
        };
        let after = match request.page_token.as_str() {
            "" => None,
            token => match PageToken::decode(token, &request.filter, &tenant) {
                Ok(after) => Some(after),
                Err(BadPageToken::Foreign(status)) => {
                    self.shared
                        .gate
                        .record(caller.audit(
                            "operation.list",
                            String::new(),
                            AuditOutcome::Denied,
                            Some("a page token issued to another tenant".into()),
                            serde_json::json!({}),
                        ))
                        .await;
                    return Err(status);
                }
                Err(BadPageToken::Invalid(status)) => return Err(status),
            },
        };
        let page = self
            .shared
            .store
            .list_jobs(&tenant, &filter, page_size, after)
            .await
            .map_err(from_store)?;
        let mut operations = Vec::with_capacity(page.items.len());
        for job in &page.items {
            operations.push(operation_of(&self.shared.store, job).await?);
        }
        let next_page_token = page
            .next
            .map(|after| {
                PageToken {
                    after,
                    filter: request.filter.clone(),
                    tenant: tenant.clone(),
                }
                .encode()
            })
            .unwrap_or_default();
        Ok(Response::new(ListOperationsResponse {
            operations,
            next_page_token,
        }))
    }

    async fn cancel_operation(
        &self,
        request: Request<CancelOperationRequest>,
    ) -> Result<Response<()>, Status> {
        let caller = caller_of(&request)?;
        let id = parse_operation_name("name", &request.get_ref().name)?;
        if let Err(error) = self.shared.store.cancel_job(&caller.tenant, id).await {
            return Err(self
                .shared
                .gate
                .refused(&caller, "operation.cancel", error)
                .await);
        }
        self.shared.wake.job_changed(id);
        self.shared
            .gate
            .record(caller.audit(
                "operation.cancel",
                operation_name(id),
                AuditOutcome::Allowed,
                None,
                serde_json::json!({}),
            ))
            .await;
        Ok(Response::new(()))
    }

    async fn wait_operation(
        &self,
        request: Request<WaitOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let id = parse_operation_name("name", &request.name)?;
        let timeout = match request.timeout {
            None => MAX_WAIT,
            Some(t) => Duration::try_from(t)
                .map_err(|_| invalid("timeout", "must not be negative"))?
                .min(MAX_WAIT),
        };
        Ok(Response::new(self.wait(&caller, id, timeout).await?))
    }
}
