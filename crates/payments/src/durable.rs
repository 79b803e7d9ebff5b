//! The simulator's memory in a store, so it survives a restart: every call it records (the
//! request, the transaction it made, and so the payment token behind each authorisation and the
//! idempotency key it consumed) is one aggregate in the [`store::Store`] the simulator runs
//! beside — the embedded engine or MongoDB, whichever the process uses — under a system tenant
//! of its own. A record is written before the call's reply is sent, and the whole set is read
//! back when the simulator starts ([`crate::PspSimulator::durable`]).
//!
//! What is not kept: test programming ([`crate::PspSimulator::configure`], latencies, failure
//! counts) — a restarted simulator behaves by the token grammar again.

use store::{AggregateKey, Commit, IndexEntry, Pages, Store, StoreError};

use crate::{
    AuthorizeRequest, CaptureRequest, Money, RefundRequest, Transaction, TransactionKind,
    TransactionStatus, VoidRequest,
};

/// The tenant the simulator's records live under: no service tenant starts with `_`.
pub const TENANT: &str = "_psp";
/// The kind of its records; one per consumed idempotency key.
pub const KIND: &str = "psp_call";

/// Why the simulator's state could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored record does not decode.
    #[error("the PSP simulator's record {key} is unreadable: {detail}")]
    Corrupt {
        /// The record's idempotency key.
        key: String,
        /// What is wrong.
        detail: String,
    },
}

/// One recorded call: the request as made (the idempotency check compares it) and the
/// transaction it recorded.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct StoredCall {
    /// Order of recording, so the ledger comes back in the order it was written.
    #[prost(uint64, tag = "1")]
    pub(crate) sequence: u64,
    /// The request.
    #[prost(message, optional, tag = "2")]
    request: Option<StoredRequest>,
    /// The transaction the call recorded.
    #[prost(message, optional, tag = "3")]
    transaction: Option<StoredTransaction>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StoredRequest {
    /// [`kind_code`] of the operation.
    #[prost(int32, tag = "1")]
    kind: i32,
    #[prost(string, tag = "2")]
    idempotency_key: String,
    /// Authorisations: the payment token (the token behind the authorisation, whose behaviour
    /// its captures, voids and refunds follow).
    #[prost(string, tag = "3")]
    payment_token: String,
    /// Authorisations: the caller's reference.
    #[prost(string, tag = "4")]
    reference: String,
    /// Captures and voids: the authorisation; refunds: the capture.
    #[prost(string, tag = "5")]
    target_id: String,
    #[prost(string, tag = "6")]
    currency_code: String,
    #[prost(int64, tag = "7")]
    amount_minor: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StoredTransaction {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(int32, tag = "2")]
    kind: i32,
    #[prost(bool, tag = "3")]
    declined: bool,
    #[prost(string, tag = "4")]
    decline_code: String,
    #[prost(bool, tag = "5")]
    hard_decline: bool,
    #[prost(string, tag = "6")]
    currency_code: String,
    #[prost(int64, tag = "7")]
    amount_minor: i64,
    #[prost(string, tag = "8")]
    reference: String,
    #[prost(string, tag = "9")]
    idempotency_key: String,
    /// Empty when the transaction has no parent.
    #[prost(string, tag = "10")]
    parent_id: String,
    #[prost(int64, tag = "11")]
    created_at_ms: i64,
}

/// A request as the simulator compares it for idempotency.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Request {
    Authorize(AuthorizeRequest),
    Capture(CaptureRequest),
    Void(VoidRequest),
    Refund(RefundRequest),
}

impl Request {
    pub(crate) fn idempotency_key(&self) -> &str {
        match self {
            Self::Authorize(r) => &r.idempotency_key,
            Self::Capture(r) => &r.idempotency_key,
            Self::Void(r) => &r.idempotency_key,
            Self::Refund(r) => &r.idempotency_key,
        }
    }

    pub(crate) fn kind(&self) -> TransactionKind {
        match self {
            Self::Authorize(_) => TransactionKind::Authorization,
            Self::Capture(_) => TransactionKind::Capture,
            Self::Void(_) => TransactionKind::Void,
            Self::Refund(_) => TransactionKind::Refund,
        }
    }

    pub(crate) fn amount(&self) -> Option<&Money> {
        match self {
            Self::Authorize(r) => Some(&r.amount),
            Self::Capture(r) => Some(&r.amount),
            Self::Void(_) => None,
            Self::Refund(r) => Some(&r.amount),
        }
    }
}

fn kind_code(kind: TransactionKind) -> i32 {
    match kind {
        TransactionKind::Authorization => 1,
        TransactionKind::Capture => 2,
        TransactionKind::Void => 3,
        TransactionKind::Refund => 4,
    }
}

fn kind_of(code: i32) -> Option<TransactionKind> {
    Some(match code {
        1 => TransactionKind::Authorization,
        2 => TransactionKind::Capture,
        3 => TransactionKind::Void,
        4 => TransactionKind::Refund,
        _ => return None,
    })
}

impl StoredCall {
    /// The record of `request`, which recorded `transaction` as the `sequence`th call.
    pub(crate) fn new(sequence: u64, request: &Request, transaction: &Transaction) -> Self {
        let amount = request.amount().cloned().unwrap_or(Money::new("", 0));
        let (payment_token, reference, target_id) = match request {
            Request::Authorize(r) => (r.payment_token.clone(), r.reference.clone(), String::new()),
            Request::Capture(r) => (String::new(), String::new(), r.authorization_id.clone()),
            Request::Void(r) => (String::new(), String::new(), r.authorization_id.clone()),
            Request::Refund(r) => (String::new(), String::new(), r.capture_id.clone()),
        };
        let (declined, decline_code, hard_decline) = match &transaction.status {
            TransactionStatus::Succeeded => (false, String::new(), false),
            TransactionStatus::Declined { code, hard } => (true, code.clone(), *hard),
        };
        StoredCall {
            sequence,
            request: Some(StoredRequest {
                kind: kind_code(request.kind()),
                idempotency_key: request.idempotency_key().to_owned(),
                payment_token,
                reference,
                target_id,
                currency_code: amount.currency_code,
                amount_minor: amount.amount_minor,
            }),
            transaction: Some(StoredTransaction {
                id: transaction.id.clone(),
                kind: kind_code(transaction.kind),
                declined,
                decline_code,
                hard_decline,
                currency_code: transaction.amount.currency_code.clone(),
                amount_minor: transaction.amount.amount_minor,
                reference: transaction.reference.clone(),
                idempotency_key: transaction.idempotency_key.clone(),
                parent_id: transaction.parent_id.clone().unwrap_or_default(),
                created_at_ms: transaction.created_at_ms,
            }),
        }
    }

    /// The request and transaction again.
    pub(crate) fn decode(
        data: &[u8],
        key: &str,
    ) -> Result<(Self, Request, Transaction), StateError> {
        let corrupt = |detail: String| StateError::Corrupt {
            key: key.to_owned(),
            detail,
        };
        let call =
            <StoredCall as prost::Message>::decode(data).map_err(|e| corrupt(e.to_string()))?;
        let (Some(request), Some(transaction)) = (&call.request, &call.transaction) else {
            return Err(corrupt("request or transaction missing".into()));
        };
        let amount = Money::new(request.currency_code.clone(), request.amount_minor);
        let key = request.idempotency_key.clone();
        let decoded_request = match kind_of(request.kind) {
            Some(TransactionKind::Authorization) => Request::Authorize(AuthorizeRequest {
                idempotency_key: key,
                payment_token: request.payment_token.clone(),
                amount,
                reference: request.reference.clone(),
            }),
            Some(TransactionKind::Capture) => Request::Capture(CaptureRequest {
                idempotency_key: key,
                authorization_id: request.target_id.clone(),
                amount,
            }),
            Some(TransactionKind::Void) => Request::Void(VoidRequest {
                idempotency_key: key,
                authorization_id: request.target_id.clone(),
            }),
            Some(TransactionKind::Refund) => Request::Refund(RefundRequest {
                idempotency_key: key,
                capture_id: request.target_id.clone(),
                amount,
            }),
            None => return Err(corrupt(format!("unknown operation {}", request.kind))),
        };
        let kind = kind_of(transaction.kind)
            .ok_or_else(|| corrupt(format!("unknown transaction kind {}", transaction.kind)))?;
        let decoded_transaction = Transaction {
            id: transaction.id.clone(),
            kind,
            status: if transaction.declined {
                TransactionStatus::Declined {
                    code: transaction.decline_code.clone(),
                    hard: transaction.hard_decline,
                }
            } else {
                TransactionStatus::Succeeded
            },
            amount: Money::new(transaction.currency_code.clone(), transaction.amount_minor),
            reference: transaction.reference.clone(),
            idempotency_key: transaction.idempotency_key.clone(),
            parent_id: Some(transaction.parent_id.clone()).filter(|id| !id.is_empty()),
            created_at_ms: transaction.created_at_ms,
        };
        Ok((call, decoded_request, decoded_transaction))
    }
}

fn all() -> IndexEntry {
    IndexEntry {
        name: "all".into(),
        value: "1".into(),
    }
}

/// Writes `call` under its idempotency key. Already there from an earlier write of this call
/// (whose acknowledgement was lost) counts as written. Another call under the key means a
/// second simulator shares the store — one simulator per store: each keeps its state in
/// memory and only the one that recorded a call knows it — and is refused.
pub(crate) async fn write(store: &dyn Store, call: &StoredCall) -> Result<(), StoreError> {
    let key = call
        .request
        .as_ref()
        .map(|request| request.idempotency_key.clone())
        .unwrap_or_default();
    let aggregate = AggregateKey::new(TENANT, KIND, key.clone());
    let commit = Commit {
        key: aggregate.clone(),
        expected_version: 0,
        data: prost::Message::encode_to_vec(call).into(),
        index: vec![all()],
        events: Vec::new(),
        idempotency: None,
    };
    match store.commit(commit).await {
        Ok(_) => Ok(()),
        Err(StoreError::Conflict { .. }) => {
            let stored = store.load(&aggregate).await?;
            let ours = stored
                .and_then(|stored| <StoredCall as prost::Message>::decode(stored.data).ok())
                .is_some_and(|stored| stored.transaction == call.transaction);
            if ours {
                Ok(())
            } else {
                Err(StoreError::Backend(format!(
                    "PSP idempotency key {key} was recorded by another simulator on this store"
                )))
            }
        }
        Err(error) => Err(error),
    }
}

/// Every recorded call, in the order recorded.
pub(crate) async fn read_all(
    store: &dyn Store,
) -> Result<Vec<(StoredCall, Request, Transaction)>, StateError> {
    let mut pages = Pages::new(store, TENANT, KIND, all(), 512);
    let mut calls = Vec::new();
    while let Some(page) = pages.next().await? {
        for (key, stored) in page {
            calls.push(StoredCall::decode(&stored.data, &key)?);
        }
    }
    calls.sort_by_key(|(call, _, _)| call.sequence);
    Ok(calls)
}
