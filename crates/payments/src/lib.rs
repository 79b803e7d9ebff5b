//! The payment service provider (PSP) port: how checkout and subscriptions move money, and what
//! the PSP promises their sagas and billing runs in return. Its own crate, so no service imports
//! another to charge a card.
//!
//! Checkout never sees a card. The client tokenises the card with the PSP and hands checkout an
//! opaque **payment token**; checkout authorises against that token, captures when the order is
//! committed, voids when it is not, and refunds later. [`PaymentProvider`] is the port; the
//! [`simulator`] is the adapter every test, demo and benchmark uses — in memory, or kept in the
//! store it runs beside ([`durable`]) so it survives a restart. [`PspApi`] serves it as a process
//! of its own (internal contract `commerce.psp.v1`, `commerce psp serve`) and [`RemotePsp`] is
//! the port's adapter to that process.
//!
//! # What the port promises callers
//!
//! The saga and the background resolver rely on these, and every adapter must keep them:
//!
//! 1. **No card data, ever.** A payment token that looks like a card number (a run of 13 or more
//!    digits, possibly separated by spaces or dashes, Luhn-valid or not — see
//!    [`looks_like_card_number`]) is refused with [`PspError::CardDataRejected`] before anything
//!    else happens: nothing is recorded, the idempotency key is not consumed, and the number is
//!    never echoed back (not in the error, not in `Debug` output).
//! 2. **Idempotent by key.** Every mutating call carries an idempotency key. A repeat with the same
//!    key and the same request returns the original outcome without acting again — a success
//!    returns the original [`Transaction`], a decline returns the same [`PspError::Declined`].
//!    The same key with a different request (other amount, other operation, …) is refused with
//!    [`PspError::IdempotencyKeyReused`]. Keys are global to the PSP account, not per operation.
//!    Calls that did nothing (validation errors, [`PspError::Unavailable`], a
//!    [`PspError::Timeout`] where the PSP never acted, rule refusals such as
//!    [`PspError::ExceedsCaptured`]) do not consume the key: retrying it is safe.
//! 3. **Errors say what happened.** [`PspError::Unavailable`] means nothing happened.
//!    [`PspError::Timeout`] means the outcome is *unknown*: the PSP may have acted and the reply
//!    was lost. The caller then either retries with the **same** key (never a new one — that
//!    could charge twice) or asks [`PaymentProvider::lookup`] until it knows. A
//!    [`PspError::Declined`] with `hard: true` must not be retried; a soft one may succeed as a
//!    *new* attempt later (new key), never by repeating the key.
//! 4. **Money rules.** Amounts are positive integer minor units in the authorisation's currency.
//!    One capture per authorisation, of at most the authorised amount (partial capture releases
//!    the rest). Only an uncaptured, unvoided authorisation can be voided. Refunds name the
//!    **capture** they refund (`capture_id`); several are allowed, totalling at most the captured
//!    amount.
//! 5. **A ledger to reconcile against.** [`PaymentProvider::transactions`] lists everything the PSP
//!    recorded — successes and declines, in the order they happened — optionally for one
//!    `reference` (the order id). Captures, voids and refunds carry their authorisation's
//!    reference and point at their parent through `parent_id`.
//!
//! # The simulator's token grammar
//!
//! [`simulator::PspSimulator`] picks its behaviour by payment token:
//!
//! | token                      | behaviour                                                              |
//! |----------------------------|------------------------------------------------------------------------|
//! | `tok_ok`                   | succeeds                                                               |
//! | `tok_decline_<code>`       | declined with `<code>`; hard for `stolen_card`, `lost_card`, `pickup_card`, `fraudulent`, `expired_card`, `incorrect_number`, `restricted_card`, `card_not_supported`; soft otherwise (e.g. `insufficient_funds`) |
//! | `tok_latency_<ms>`         | succeeds, replying after `<ms>` milliseconds                           |
//! | `tok_timeout`              | does nothing; replies [`PspError::Timeout`] after the timeout delay     |
//! | `tok_reply_lost`           | acts (records a success) but replies [`PspError::Timeout`] after the timeout delay |
//! | `tok_unavailable`          | does nothing; replies [`PspError::Unavailable`] without extra delay      |
//! | anything else              | [`PspError::InvalidRequest`] (unknown token), unless configured        |
//!
//! Captures, voids and refunds behave as their authorisation's token says (a `tok_reply_lost`
//! capture is recorded and its reply lost too). Tests program other behaviour per token —
//! including "fail the first N calls, then succeed" and per-operation overrides — with
//! [`simulator::PspSimulator::configure`] and [`simulator::PspSimulator::configure_for`]; a
//! global latency (0 by default) is added to every reply.

pub mod durable;
mod remote;
pub mod simulator;
mod wire;

use std::fmt;

use async_trait::async_trait;

pub use durable::StateError;
pub use remote::{PspApi, RemotePsp};
pub use simulator::{Behaviour, Outcome, PspSimulator};

/// An amount of money: ISO-4217 currency code and integer minor units (no floats near money).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Money {
    /// Upper-case ISO-4217 code, e.g. `USD`.
    pub currency_code: String,
    /// Amount in minor units of `currency_code` (cents for USD).
    pub amount_minor: i64,
}

impl Money {
    /// `amount_minor` minor units of `currency_code`.
    pub fn new(currency_code: impl Into<String>, amount_minor: i64) -> Self {
        Self {
            currency_code: currency_code.into(),
            amount_minor,
        }
    }
}

/// Place a hold of `amount` on the payment method behind `payment_token`.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthorizeRequest {
    /// Makes the call idempotent; ≤ 255 characters. Derive it from the order, never from an
    /// attempt counter.
    pub idempotency_key: String,
    /// The PSP's token for the payment method. Never a card number.
    pub payment_token: String,
    /// How much to hold; positive.
    pub amount: Money,
    /// The caller's reference for the payment: the order id.
    pub reference: String,
}

impl fmt::Debug for AuthorizeRequest {
    // A card number passed by mistake must not reach logs through `{:?}`.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let token: &dyn fmt::Debug = if looks_like_card_number(&self.payment_token) {
            &"<card number redacted>"
        } else {
            &self.payment_token
        };
        formatter
            .debug_struct("AuthorizeRequest")
            .field("idempotency_key", &self.idempotency_key)
            .field("payment_token", token)
            .field("amount", &self.amount)
            .field("reference", &self.reference)
            .finish()
    }
}

/// Take `amount` (≤ the authorised amount) of an authorisation; the rest is released.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureRequest {
    /// Makes the call idempotent.
    pub idempotency_key: String,
    /// The id of the authorisation [`Transaction`].
    pub authorization_id: String,
    /// How much to capture; positive, same currency as the authorisation.
    pub amount: Money,
}

/// Release an uncaptured authorisation in full.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VoidRequest {
    /// Makes the call idempotent.
    pub idempotency_key: String,
    /// The id of the authorisation [`Transaction`].
    pub authorization_id: String,
}

/// Give back `amount` of a capture. Refunds name the capture (not the authorisation): money is
/// refunded from what was taken, and the capture is what carries the captured amount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundRequest {
    /// Makes the call idempotent.
    pub idempotency_key: String,
    /// The id of the capture [`Transaction`] being refunded.
    pub capture_id: String,
    /// How much to refund; positive, at most captured minus already refunded.
    pub amount: Money,
}

/// What a recorded transaction did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransactionKind {
    /// A hold on the payment method.
    Authorization,
    /// Money taken from an authorisation.
    Capture,
    /// An authorisation released without capture.
    Void,
    /// Money given back from a capture.
    Refund,
}

/// How a recorded transaction ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransactionStatus {
    /// It happened.
    Succeeded,
    /// The issuer (or the PSP) said no. `hard`: do not retry this payment method.
    Declined {
        /// The decline code, e.g. `insufficient_funds`.
        code: String,
        /// True when retrying cannot help (stolen card, …).
        hard: bool,
    },
}

/// One entry of the PSP's ledger. Immutable once recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transaction {
    /// The PSP's id: `auth_…`, `cap_…`, `void_…` or `re_…`.
    pub id: String,
    /// What it did.
    pub kind: TransactionKind,
    /// How it ended.
    pub status: TransactionStatus,
    /// The amount requested (for a void: the authorised amount released).
    pub amount: Money,
    /// The authorisation's reference (the order id), carried by every child.
    pub reference: String,
    /// The key of the call that created it.
    pub idempotency_key: String,
    /// The authorisation a capture or void acts on, the capture a refund acts on.
    pub parent_id: Option<String>,
    /// When the PSP recorded it, unix milliseconds.
    pub created_at_ms: i64,
}

impl Transaction {
    /// True when the transaction happened (was not declined).
    pub fn succeeded(&self) -> bool {
        self.status == TransactionStatus::Succeeded
    }
}

/// Why a PSP call did not return a successful transaction.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PspError {
    /// Declined and recorded as such. `hard`: do not retry.
    #[error("declined ({code}{})", if *hard { ", do not retry" } else { "" })]
    Declined {
        /// The decline code, e.g. `insufficient_funds`.
        code: String,
        /// True when retrying cannot help.
        hard: bool,
    },
    /// No reply in time: the PSP may or may not have acted. Retry with the same key or `lookup`.
    #[error("the payment provider did not reply in time; the outcome is unknown")]
    Timeout,
    /// The PSP could not take the call: nothing happened. Safe to retry with the same key.
    #[error("the payment provider is unavailable; nothing happened")]
    Unavailable,
    /// The payment token looks like a card number. Only PSP tokens are accepted.
    #[error("card numbers are not accepted; send a payment provider token")]
    CardDataRejected,
    /// The request is malformed or not allowed in the current state.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A capture for more than was authorised.
    #[error("the amount exceeds the authorised amount")]
    ExceedsAuthorized,
    /// A refund for more than was captured and not yet refunded.
    #[error("the amount exceeds the captured amount not yet refunded")]
    ExceedsCaptured,
    /// No such authorisation or capture.
    #[error("no such transaction")]
    NotFound,
    /// The idempotency key was already used for a different request.
    #[error("the idempotency key was already used for a different request")]
    IdempotencyKeyReused,
}

impl PspError {
    /// The decline code and whether it is hard, for a decline.
    pub fn declined(&self) -> Option<(&str, bool)> {
        match self {
            Self::Declined { code, hard } => Some((code, *hard)),
            _ => None,
        }
    }

    /// True when the PSP may have acted: find out with the same key (retry or `lookup`).
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(self, Self::Timeout)
    }

    /// True when repeating the call with the same key may give a different answer.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Timeout | Self::Unavailable)
    }
}

/// The port to a payment service provider. Every mutating call is idempotent by its key; see the
/// module documentation for the full contract.
#[async_trait]
pub trait PaymentProvider: Send + Sync {
    /// Hold `amount` on the payment method behind the token.
    async fn authorize(&self, request: AuthorizeRequest) -> Result<Transaction, PspError>;

    /// Take up to the authorised amount; one capture per authorisation.
    async fn capture(&self, request: CaptureRequest) -> Result<Transaction, PspError>;

    /// Release an uncaptured authorisation.
    async fn void(&self, request: VoidRequest) -> Result<Transaction, PspError>;

    /// Give back part or all of a capture, never more than captured minus refunded.
    async fn refund(&self, request: RefundRequest) -> Result<Transaction, PspError>;

    /// What the call made with `idempotency_key` recorded, if anything — for a caller whose reply
    /// was lost. `None` means the PSP never acted on that key (so far).
    async fn lookup(&self, idempotency_key: &str) -> Result<Option<Transaction>, PspError>;

    /// The PSP's ledger in the order recorded, optionally only for one reference (order id).
    async fn transactions(&self, reference: Option<&str>) -> Result<Vec<Transaction>, PspError>;
}

/// True when `token` contains something that could be a card number: a run of 13 or more digits,
/// possibly separated by single spaces or dashes. The Luhn check is deliberately not applied — a
/// mistyped card number is still card data.
pub fn looks_like_card_number(token: &str) -> bool {
    let mut digits_in_run = 0usize;
    let mut previous_was_separator = false;
    for character in token.chars() {
        if character.is_ascii_digit() {
            digits_in_run += 1;
            if digits_in_run >= 13 {
                return true;
            }
            previous_was_separator = false;
        } else if (character == ' ' || character == '-')
            && digits_in_run > 0
            && !previous_was_separator
        {
            previous_was_separator = true;
        } else {
            digits_in_run = 0;
            previous_was_separator = false;
        }
    }
    false
}

/// Calls to the PSP go through `platform::outbound`, which retries only what may succeed when
/// repeated with the same key.
impl platform::outbound::Classify for PspError {
    fn retryable(&self) -> bool {
        self.is_retryable()
    }

    fn outcome_unknown(&self) -> bool {
        self.is_outcome_unknown()
    }
}

#[cfg(test)]
mod tests {
    use super::looks_like_card_number;

    #[test]
    fn card_numbers_in_any_usual_spelling_are_recognised() {
        for token in [
            "4242424242424242",
            "4242 4242 4242 4242",
            "4242-4242-4242-4242",
            "4242424242424241", // Luhn-invalid
            "4000056655665",    // 13 digits
            "6011000990139424123",
            "tok_4242424242424242",
            " 3782 822463 10005 ",
        ] {
            assert!(looks_like_card_number(token), "{token}");
        }
    }

    #[test]
    fn ordinary_tokens_are_not_card_numbers() {
        for token in [
            "tok_ok",
            "tok_latency_250",
            "tok_1N3T00LkdIwHu7ix",
            "424242424242",      // 12 digits
            "4242  4242 4242 4", // double separator breaks the run
            "",
        ] {
            assert!(!looks_like_card_number(token), "{token}");
        }
    }
}
