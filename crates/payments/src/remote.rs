//! The PSP as a process of its own, spoken to over its internal contract `commerce.psp.v1`:
//! [`PspApi`] serves any [`PaymentProvider`] (the durable simulator, in `commerce psp serve`), and
//! [`RemotePsp`] is the port's adapter that calls it, so every checkout and subscriptions replica
//! charges one PSP. The adapter keeps the port's promises across the network: the simulator's own
//! errors come back exactly (see `crate::wire`); a request that never reached the PSP is
//! [`PspError::Unavailable`] (nothing happened), one whose reply was lost is [`PspError::Timeout`]
//! (outcome unknown: retry with the same key or look it up) — never a guess that could charge twice.

use std::sync::Arc;

use async_trait::async_trait;
use commerce_api::commerce::psp::v1::psp_service_client::PspServiceClient;
use commerce_api::commerce::psp::v1::psp_service_server::PspService;
use commerce_api::commerce::psp::v1::{self as wire};
use platform::outbound::{CallContext, CallError, Callee, CalleeChannel};
use tonic::{Request, Response, Status};

use crate::wire::{
    Failure, error_to_status, money_from_wire, money_to_wire, status_to_failure,
    transaction_from_wire, transaction_to_wire,
};
use crate::{
    AuthorizeRequest, CaptureRequest, PaymentProvider, PspError, RefundRequest, Transaction,
    VoidRequest,
};

/// Serves a [`PaymentProvider`] as `commerce.psp.v1.PspService`.
#[derive(Clone)]
pub struct PspApi {
    psp: Arc<dyn PaymentProvider>,
}

impl PspApi {
    /// The service over `psp`.
    pub fn new(psp: Arc<dyn PaymentProvider>) -> Self {
        PspApi { psp }
    }
}

fn answer(result: Result<Transaction, PspError>) -> Result<Option<wire::Transaction>, Status> {
    result
        .map(|transaction| Some(transaction_to_wire(&transaction)))
        .map_err(|error| error_to_status(&error))
}

/// Page size of `ListTransactions` (the contract: 0 → 100, at most 1000).
fn page_size(requested: i32) -> usize {
    match requested {
        ..=0 => 100,
        size => (size as usize).min(1000),
    }
}

#[tonic::async_trait]
impl PspService for PspApi {
    async fn authorize(
        &self,
        request: Request<wire::AuthorizeRequest>,
    ) -> Result<Response<wire::AuthorizeResponse>, Status> {
        let request = request.into_inner();
        let transaction = answer(
            self.psp
                .authorize(AuthorizeRequest {
                    idempotency_key: request.idempotency_key,
                    payment_token: request.payment_token,
                    amount: money_from_wire(request.amount),
                    reference: request.reference,
                })
                .await,
        )?;
        Ok(Response::new(wire::AuthorizeResponse { transaction }))
    }

    async fn capture(
        &self,
        request: Request<wire::CaptureRequest>,
    ) -> Result<Response<wire::CaptureResponse>, Status> {
        let request = request.into_inner();
        let transaction = answer(
            self.psp
                .capture(CaptureRequest {
                    idempotency_key: request.idempotency_key,
                    authorization_id: request.authorization_id,
                    amount: money_from_wire(request.amount),
                })
                .await,
        )?;
        Ok(Response::new(wire::CaptureResponse { transaction }))
    }

    async fn void(
        &self,
        request: Request<wire::VoidRequest>,
    ) -> Result<Response<wire::VoidResponse>, Status> {
        let request = request.into_inner();
        let transaction = answer(
            self.psp
                .void(VoidRequest {
                    idempotency_key: request.idempotency_key,
                    authorization_id: request.authorization_id,
                })
                .await,
        )?;
        Ok(Response::new(wire::VoidResponse { transaction }))
    }

    async fn refund(
        &self,
        request: Request<wire::RefundRequest>,
    ) -> Result<Response<wire::RefundResponse>, Status> {
        let request = request.into_inner();
        let transaction = answer(
            self.psp
                .refund(RefundRequest {
                    idempotency_key: request.idempotency_key,
                    capture_id: request.capture_id,
                    amount: money_from_wire(request.amount),
                })
                .await,
        )?;
        Ok(Response::new(wire::RefundResponse { transaction }))
    }

    async fn lookup_transaction(
        &self,
        request: Request<wire::LookupTransactionRequest>,
    ) -> Result<Response<wire::LookupTransactionResponse>, Status> {
        let found = self
            .psp
            .lookup(&request.into_inner().idempotency_key)
            .await
            .map_err(|error| error_to_status(&error))?;
        Ok(Response::new(wire::LookupTransactionResponse {
            transaction: found.as_ref().map(transaction_to_wire),
        }))
    }

    async fn list_transactions(
        &self,
        request: Request<wire::ListTransactionsRequest>,
    ) -> Result<Response<wire::ListTransactionsResponse>, Status> {
        let request = request.into_inner();
        let reference = Some(request.reference.as_str()).filter(|r| !r.is_empty());
        let all = self
            .psp
            .transactions(reference)
            .await
            .map_err(|error| error_to_status(&error))?;
        // The ledger only grows and keeps its order, so a position is a stable page token.
        let start: usize = if request.page_token.is_empty() {
            0
        } else {
            request.page_token.parse().map_err(|_| {
                platform::ApiError::new(
                    tonic::Code::InvalidArgument,
                    commerce_api::commerce::common::v1::ErrorReason::InvalidPageToken,
                    "page_token is not one this service issued",
                )
                .into_status(crate::wire::DOMAIN)
            })?
        };
        let size = page_size(request.page_size);
        let page: Vec<wire::Transaction> = all
            .iter()
            .skip(start)
            .take(size)
            .map(transaction_to_wire)
            .collect();
        let next = start + page.len();
        Ok(Response::new(wire::ListTransactionsResponse {
            transactions: page,
            next_page_token: if next < all.len() {
                next.to_string()
            } else {
                String::new()
            },
        }))
    }
}

/// The port's adapter to a PSP process, through the platform's outbound stack (balanced over the
/// PSP's replicas, per-endpoint breakers, the inbound deadline sent on). It makes one attempt per
/// call: retries belong to the caller's own policy, which knows what the port promises.
#[derive(Clone)]
pub struct RemotePsp {
    callee: Callee,
}

impl RemotePsp {
    /// Calls the PSP through `callee` (whose metadata hook authenticates the calls).
    pub fn new(callee: Callee) -> Self {
        RemotePsp { callee }
    }

    async fn call<M, R, F, Fut>(&self, method: &str, message: M, attempt: F) -> Result<R, CallError>
    where
        M: Clone,
        F: FnMut(CalleeChannel, Request<M>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<R>, Status>>,
    {
        self.callee
            .unary(
                &CallContext::current(),
                &format!("/commerce.psp.v1.PspService/{method}"),
                message,
                None,
                attempt,
            )
            .await
            .map(Response::into_inner)
    }
}

/// A failed mutating call: what the PSP said, or — without an answer — nothing happened (never
/// sent) or the outcome is unknown (sent, and the answer lost).
fn mutation_failed(error: CallError) -> PspError {
    match &error {
        CallError::Failed { status, .. } => match status_to_failure(status) {
            Failure::Answered(answered) => answered,
            Failure::Transport { sent: false } => PspError::Unavailable,
            Failure::Transport { sent: true } => PspError::Timeout,
        },
        _ if error.outcome_unknown() => PspError::Timeout,
        _ => PspError::Unavailable,
    }
}

/// A failed read changed nothing, whatever happened to it.
fn read_failed(error: CallError) -> PspError {
    match &error {
        CallError::Failed { status, .. } => match status_to_failure(status) {
            Failure::Answered(answered) => answered,
            Failure::Transport { .. } => PspError::Unavailable,
        },
        _ => PspError::Unavailable,
    }
}

fn transaction(found: Option<wire::Transaction>) -> Result<Transaction, PspError> {
    found
        .and_then(transaction_from_wire)
        .ok_or_else(|| PspError::InvalidRequest("the PSP answered without a transaction".into()))
}

#[async_trait]
impl PaymentProvider for RemotePsp {
    async fn authorize(&self, request: AuthorizeRequest) -> Result<Transaction, PspError> {
        let message = wire::AuthorizeRequest {
            idempotency_key: request.idempotency_key,
            payment_token: request.payment_token,
            amount: money_to_wire(&request.amount),
            reference: request.reference,
        };
        let response = self
            .call("Authorize", message, |channel, request| async move {
                PspServiceClient::new(channel).authorize(request).await
            })
            .await
            .map_err(mutation_failed)?;
        transaction(response.transaction)
    }

    async fn capture(&self, request: CaptureRequest) -> Result<Transaction, PspError> {
        let message = wire::CaptureRequest {
            idempotency_key: request.idempotency_key,
            authorization_id: request.authorization_id,
            amount: money_to_wire(&request.amount),
        };
        let response = self
            .call("Capture", message, |channel, request| async move {
                PspServiceClient::new(channel).capture(request).await
            })
            .await
            .map_err(mutation_failed)?;
        transaction(response.transaction)
    }

    async fn void(&self, request: VoidRequest) -> Result<Transaction, PspError> {
        let message = wire::VoidRequest {
            idempotency_key: request.idempotency_key,
            authorization_id: request.authorization_id,
        };
        let response = self
            .call("Void", message, |channel, request| async move {
                PspServiceClient::new(channel).void(request).await
            })
            .await
            .map_err(mutation_failed)?;
        transaction(response.transaction)
    }

    async fn refund(&self, request: RefundRequest) -> Result<Transaction, PspError> {
        let message = wire::RefundRequest {
            idempotency_key: request.idempotency_key,
            capture_id: request.capture_id,
            amount: money_to_wire(&request.amount),
        };
        let response = self
            .call("Refund", message, |channel, request| async move {
                PspServiceClient::new(channel).refund(request).await
            })
            .await
            .map_err(mutation_failed)?;
        transaction(response.transaction)
    }

    async fn lookup(&self, idempotency_key: &str) -> Result<Option<Transaction>, PspError> {
        let message = wire::LookupTransactionRequest {
            idempotency_key: idempotency_key.to_owned(),
        };
        let response = self
            .call(
                "LookupTransaction",
                message,
                |channel, request| async move {
                    PspServiceClient::new(channel)
                        .lookup_transaction(request)
                        .await
                },
            )
            .await
            .map_err(read_failed)?;
        match response.transaction {
            None => Ok(None),
            found => transaction(found).map(Some),
        }
    }

    async fn transactions(&self, reference: Option<&str>) -> Result<Vec<Transaction>, PspError> {
        let mut all = Vec::new();
        let mut page_token = String::new();
        loop {
            let message = wire::ListTransactionsRequest {
                reference: reference.unwrap_or_default().to_owned(),
                page_size: 1000,
                page_token: page_token.clone(),
            };
            let page = self
                .call("ListTransactions", message, |channel, request| async move {
                    PspServiceClient::new(channel)
                        .list_transactions(request)
                        .await
                })
                .await
                .map_err(read_failed)?;
            for found in page.transactions {
                all.push(transaction(Some(found))?);
            }
            if page.next_page_token.is_empty() {
                return Ok(all);
            }
            page_token = page.next_page_token;
        }
    }
}
