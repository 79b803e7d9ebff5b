//! The PSP as a process of its own, spoken to over its internal contract `commerce.psp.v1`:
//! [`PspApi`] serves any [`PaymentProvider`] (the durable simulator, in `commerce psp serve`), and
//! [`RemotePsp`] is the port's adapter that calls it, so every checkout and subscriptions replica
//! charges one PSP. The adapter keeps the port's promises across the network: the simulator's own
//! errors come back exactly (see [`crate::wire`]); a request that never reached the PSP is
//! [`PspError::Unavailable`] (nothing happened), one whose reply was lost is [`PspError::Timeout`]
//! (outcome unknown: retry with the same key or look it up) — never a guess that could charge twice.

use std::sync::Arc;

use async_trait::async_trait;
use commerce_api::commerce::psp::v1::psp_service_client::PspServiceClient;
use commerce_api::commerce::psp::v1::psp_service_server::PspService;
use commerce_api::commerce::psp::v1::{self as wire};
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

/// Where a [`RemotePsp`] gets the bearer token of a call to the PSP RPC at the given path
/// (`/commerce.psp.v1.PspService/Authorize`): the calling service's own identity with the scopes
/// that RPC demands; `None` sends none.
pub type Bearer = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// The port's adapter to a PSP process, over any gRPC channel `T` (a plain tonic `Channel`, or
/// the platform's balanced channel).
#[derive(Clone)]
pub struct RemotePsp<T> {
    channel: T,
    bearer: Bearer,
}

impl<T> RemotePsp<T>
where
    T: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + Sync + 'static,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T::ResponseBody: tonic::transport::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::transport::Body>::Error:
        Into<Box<dyn std::error::Error + Send + Sync>> + Send,
    T::Future: Send,
{
    /// Calls the PSP on `channel`, authenticating each call with `bearer`.
    pub fn new(channel: T, bearer: Bearer) -> Self {
        RemotePsp { channel, bearer }
    }

    fn client(&self) -> PspServiceClient<T> {
        PspServiceClient::new(self.channel.clone())
    }

    fn request<M>(&self, method: &str, message: M) -> Request<M> {
        let mut request = Request::new(message);
        if let Some(token) = (self.bearer)(&format!("/commerce.psp.v1.PspService/{method}"))
            && let Ok(value) = format!("Bearer {token}").parse()
        {
            request.metadata_mut().insert("authorization", value);
        }
        request
    }
}

/// A failed mutating call: what the PSP said, or — without an answer — nothing happened (never
/// sent) or the outcome is unknown.
fn mutation_failed(status: Status) -> PspError {
    match status_to_failure(&status) {
        Failure::Answered(error) => error,
        Failure::Transport { sent: false } => PspError::Unavailable,
        Failure::Transport { sent: true } => PspError::Timeout,
    }
}

/// A failed read changed nothing, whatever happened to it.
fn read_failed(status: Status) -> PspError {
    match status_to_failure(&status) {
        Failure::Answered(error) => error,
        Failure::Transport { .. } => PspError::Unavailable,
    }
}

fn transaction(found: Option<wire::Transaction>) -> Result<Transaction, PspError> {
    found
        .and_then(transaction_from_wire)
        .ok_or_else(|| PspError::InvalidRequest("the PSP answered without a transaction".into()))
}

#[async_trait]
impl<T> PaymentProvider for RemotePsp<T>
where
    T: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + Sync + 'static,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T::ResponseBody: tonic::transport::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::transport::Body>::Error:
        Into<Box<dyn std::error::Error + Send + Sync>> + Send,
    T::Future: Send,
{
    async fn authorize(&self, request: AuthorizeRequest) -> Result<Transaction, PspError> {
        let call = self.request(
            "Authorize",
            wire::AuthorizeRequest {
                idempotency_key: request.idempotency_key,
                payment_token: request.payment_token,
                amount: money_to_wire(&request.amount),
                reference: request.reference,
            },
        );
        let response = self
            .client()
            .authorize(call)
            .await
            .map_err(mutation_failed)?;
        transaction(response.into_inner().transaction)
    }

    async fn capture(&self, request: CaptureRequest) -> Result<Transaction, PspError> {
        let call = self.request(
            "Capture",
            wire::CaptureRequest {
                idempotency_key: request.idempotency_key,
                authorization_id: request.authorization_id,
                amount: money_to_wire(&request.amount),
            },
        );
        let response = self.client().capture(call).await.map_err(mutation_failed)?;
        transaction(response.into_inner().transaction)
    }

    async fn void(&self, request: VoidRequest) -> Result<Transaction, PspError> {
        let call = self.request(
            "Void",
            wire::VoidRequest {
                idempotency_key: request.idempotency_key,
                authorization_id: request.authorization_id,
            },
        );
        let response = self.client().void(call).await.map_err(mutation_failed)?;
        transaction(response.into_inner().transaction)
    }

    async fn refund(&self, request: RefundRequest) -> Result<Transaction, PspError> {
        let call = self.request(
            "Refund",
            wire::RefundRequest {
                idempotency_key: request.idempotency_key,
                capture_id: request.capture_id,
                amount: money_to_wire(&request.amount),
            },
        );
        let response = self.client().refund(call).await.map_err(mutation_failed)?;
        transaction(response.into_inner().transaction)
    }

    async fn lookup(&self, idempotency_key: &str) -> Result<Option<Transaction>, PspError> {
        let call = self.request(
            "LookupTransaction",
            wire::LookupTransactionRequest {
                idempotency_key: idempotency_key.to_owned(),
            },
        );
        let response = self
            .client()
            .lookup_transaction(call)
            .await
            .map_err(read_failed)?;
        match response.into_inner().transaction {
            None => Ok(None),
            found => transaction(found).map(Some),
        }
    }

    async fn transactions(&self, reference: Option<&str>) -> Result<Vec<Transaction>, PspError> {
        let mut all = Vec::new();
        let mut page_token = String::new();
        loop {
            let call = self.request(
                "ListTransactions",
                wire::ListTransactionsRequest {
                    reference: reference.unwrap_or_default().to_owned(),
                    page_size: 1000,
                    page_token: page_token.clone(),
                },
            );
            let page = self
                .client()
                .list_transactions(call)
                .await
                .map_err(read_failed)?
                .into_inner();
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
