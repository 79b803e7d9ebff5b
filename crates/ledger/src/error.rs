//! Why a ledger call failed, in terms a service can map to API errors.

use store::StoreError;

use crate::model::HoldStatus;

/// Why a ledger call failed. Every variant but [`LedgerError::Store`] and
/// [`LedgerError::Corrupt`] means "refused, nothing written".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// The request is malformed (empty or zero postings, bad names, a hold expiring before it
    /// starts).
    #[error("invalid ledger request: {0}")]
    Invalid(String),
    /// A posting is larger than [`crate::model::MAX_AMOUNT`], or the entry would take a balance
    /// beyond what 64 bits hold. Refused before anything is written, so one entry can never
    /// leave a shared account (a tenant's issuer, say) unable to take the next one.
    #[error("amount out of range for {account}: {detail}")]
    AmountOutOfRange {
        /// The account whose posting or balance is out of range.
        account: String,
        /// What is out of range.
        detail: String,
    },
    /// The entry's postings do not sum to zero in `unit`.
    #[error("entry does not balance in {unit}")]
    Unbalanced {
        /// The first unit (by name) that does not balance.
        unit: String,
    },
    /// A posting names an account that was never opened.
    #[error("account {account} does not exist")]
    UnknownAccount {
        /// The account.
        account: String,
    },
    /// `open_account` found the account with another unit or floor.
    #[error("account {account} exists with another unit or floor")]
    AccountConflict {
        /// The account.
        account: String,
    },
    /// A posting's unit is not its account's.
    #[error("account {account} holds {expected}, the posting is in {found}")]
    UnitMismatch {
        /// The account.
        account: String,
        /// The account's unit.
        expected: String,
        /// The posting's unit.
        found: String,
    },
    /// The debit would take the account below its floor.
    #[error("insufficient funds in {account}: {available} available, {required} required")]
    InsufficientFunds {
        /// The account.
        account: String,
        /// What it could give up: available balance minus floor (never below 0).
        available: i64,
        /// What the entry takes from its available balance.
        required: i64,
    },
    /// An entry with this id exists with other content (a retry must repeat the original).
    #[error("entry {id} exists with different content")]
    EntryConflict {
        /// The entry id.
        id: String,
    },
    /// No hold has this id.
    #[error("no hold {hold}")]
    UnknownHold {
        /// The hold id.
        hold: String,
    },
    /// The hold was resolved already.
    #[error("hold {hold} is {status:?}, not pending")]
    HoldNotPending {
        /// The hold id.
        hold: String,
        /// Where it stands.
        status: HoldStatus,
    },
    /// The hold lapsed before this post.
    #[error("hold {hold} has expired")]
    HoldExpired {
        /// The hold id.
        hold: String,
    },
    /// A partial post moves more than the hold reserved, or in another direction or account.
    #[error("posting to {account} exceeds hold {hold}")]
    ExceedsHold {
        /// The hold id.
        hold: String,
        /// The account.
        account: String,
    },
    /// Stored ledger data does not decode; `reconcile` says where.
    #[error("stored ledger data is unreadable: {0}")]
    Corrupt(String),
    /// The store failed, or concurrent writers kept winning until the retries ran out (a
    /// [`StoreError::Conflict`]); nothing was written and the call may be retried.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl store::Contention for LedgerError {
    /// A concurrent writer moved the chain head, an account or a hold this attempt read.
    fn is_conflict(&self) -> bool {
        matches!(self, LedgerError::Store(store::StoreError::Conflict { .. }))
    }

    /// The last conflict itself: callers retrying whole operations see it as a conflict too.
    fn contended(last: Self) -> Self {
        last
    }
}

impl From<store::CorruptRecord> for LedgerError {
    fn from(corrupt: store::CorruptRecord) -> Self {
        LedgerError::Corrupt(corrupt.to_string())
    }
}
