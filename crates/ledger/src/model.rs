//! The ledger's vocabulary and its rules, as plain values: no storage here.
//!
//! **Sign convention** (the one place it is defined): a posting's `amount` is what it adds to the
//! account's balance. Positive credits the account (its balance grows), negative debits it.
//! Earning 100 points is `member:m-1:points +100, loyalty:issued:points -100`; an entry balances
//! when, for each unit, its amounts sum to zero.

use std::collections::BTreeMap;

use crate::error::LedgerError;

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// The `prev_hash` of a tenant's first entry.
pub const GENESIS: Hash = [0; 32];

/// Most postings in one entry, so that one entry stays one modest transaction.
pub const MAX_POSTINGS: usize = 64;

/// Largest magnitude of one posting: 10^15 units. A thousand times the largest amount any
/// contract accepts (10^12 minor units; points operations are 10^9), so no legitimate entry is
/// ever refused — while it takes over 9,000 postings of this size to overflow an account, so a
/// caller that forgot its own bounds still cannot exhaust a shared account with one entry.
pub const MAX_AMOUNT: i64 = 1_000_000_000_000_000;

/// One line of an entry: `amount` (in minor units of `unit`) added to `account`'s balance.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Posting {
    /// Account name within the tenant, e.g. `member:m-1:points`.
    pub account: String,
    /// `points`, or an ISO-4217 currency code whose minor units `amount` counts.
    pub unit: String,
    /// Credit when positive, debit when negative; never zero.
    pub amount: i64,
}

/// What an entry does to balances.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// Moves posted balances.
    Posted,
    /// Reserves its postings as pending until posted, voided or expired (unix ms, exclusive:
    /// from `expires_at` on, the hold can no longer be posted).
    Hold {
        /// When the hold lapses, unix milliseconds.
        expires_at: i64,
    },
    /// Releases the hold and posts this entry's postings (all of the hold, or less).
    HoldPosted {
        /// The hold's entry id.
        hold_id: String,
    },
    /// Releases the hold; no postings.
    HoldVoided {
        /// The hold's entry id.
        hold_id: String,
    },
    /// Releases a hold that lapsed, written by [`crate::Ledger::expire_holds`]; no postings.
    HoldExpired {
        /// The hold's entry id.
        hold_id: String,
    },
}

impl EntryKind {
    /// The hold this entry resolves, if it resolves one.
    pub fn resolves(&self) -> Option<&str> {
        match self {
            EntryKind::HoldPosted { hold_id }
            | EntryKind::HoldVoided { hold_id }
            | EntryKind::HoldExpired { hold_id } => Some(hold_id),
            EntryKind::Posted | EntryKind::Hold { .. } => None,
        }
    }
}

/// A request to write an entry. The id makes it idempotent: a repeat with the same content
/// returns the entry already written, other content under the same id is
/// [`LedgerError::EntryConflict`] — so a retry must reuse the original's values, `occurred_at`
/// included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEntry {
    /// Unique within the tenant (time-ordered ids read best in account histories).
    pub id: String,
    /// The postings; for [`crate::Ledger::post_hold`] empty means "the whole hold".
    pub postings: Vec<Posting>,
    /// Free-form context (order id, reason), kept and hashed with the entry.
    pub metadata: BTreeMap<String, String>,
    /// When it happened on the tenant's clock, unix milliseconds.
    pub occurred_at: i64,
}

impl NewEntry {
    /// An entry with no postings yet.
    pub fn new(id: impl Into<String>, occurred_at: i64) -> Self {
        NewEntry {
            id: id.into(),
            postings: Vec::new(),
            metadata: BTreeMap::new(),
            occurred_at,
        }
    }

    /// Adds a posting (see the sign convention in [`Posting`]).
    pub fn posting(
        mut self,
        account: impl Into<String>,
        unit: impl Into<String>,
        amount: i64,
    ) -> Self {
        self.postings.push(Posting {
            account: account.into(),
            unit: unit.into(),
            amount,
        });
        self
    }

    /// Adds `amount` moved from `from` to `to`: a debit and a credit.
    pub fn transfer(self, from: &str, to: &str, unit: &str, amount: i64) -> Self {
        self.posting(from, unit, amount.saturating_neg())
            .posting(to, unit, amount)
    }

    /// Adds a metadata pair.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }
}

/// A written entry: immutable, numbered and chained within its tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Tenant.
    pub tenant: String,
    /// Id, unique within the tenant.
    pub id: String,
    /// Position in the tenant's chain, from 1 without gaps.
    pub sequence: u64,
    /// What it does.
    pub kind: EntryKind,
    /// Its postings.
    pub postings: Vec<Posting>,
    /// Its metadata.
    pub metadata: BTreeMap<String, String>,
    /// When it happened, unix milliseconds (the caller's clock).
    pub occurred_at: i64,
    /// The previous entry's hash ([`GENESIS`] for the first).
    pub prev_hash: Hash,
    /// SHA-256 of this entry's canonical encoding, `prev_hash` included.
    pub hash: Hash,
}

/// An account's balances, derived from its entries and cached on the account.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Balances {
    /// Sum of posted amounts.
    pub posted: i64,
    /// Sum of the debits reserved by pending holds, as a positive number.
    pub pending_debits: i64,
    /// Sum of the credits promised by pending holds (not spendable until posted).
    pub pending_credits: i64,
}

impl Balances {
    /// What can be spent: posted minus what pending holds reserve.
    pub fn available(&self) -> i64 {
        self.posted.saturating_sub(self.pending_debits)
    }

    /// `self + change`, or `None` on overflow — including when the result's available balance
    /// (posted − pending debits) would not fit, so [`Balances::available`] of any written
    /// balance is exact.
    pub fn plus(&self, change: &Balances) -> Option<Balances> {
        let sum = Balances {
            posted: self.posted.checked_add(change.posted)?,
            pending_debits: self.pending_debits.checked_add(change.pending_debits)?,
            pending_credits: self.pending_credits.checked_add(change.pending_credits)?,
        };
        sum.posted.checked_sub(sum.pending_debits)?;
        Some(sum)
    }
}

/// An account: its unit, its constraint and its cached balances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Name within the tenant.
    pub name: String,
    /// The one unit its postings use.
    pub unit: String,
    /// The lowest available balance a debit may leave (`Some(0)`: never negative; `Some(-500)`:
    /// overdraft up to 500); `None` for accounts that may go anywhere (issuers, clearing).
    pub floor: Option<i64>,
    /// Balances, kept in step with the entries by every write.
    pub balances: Balances,
}

/// Where a hold stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HoldStatus {
    /// Reserving its amounts.
    Pending,
    /// Posted (in full or in part).
    Posted,
    /// Voided by a caller.
    Voided,
    /// Released by [`crate::Ledger::expire_holds`].
    Expired,
}

/// A hold's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// The hold's entry id.
    pub id: String,
    /// Where it stands.
    pub status: HoldStatus,
    /// When it lapses, unix milliseconds.
    pub expires_at: i64,
    /// The entry that resolved it, once resolved.
    pub resolved_by: Option<String>,
}

/// Names and units become store keys: no control characters (the store's key separator is one),
/// not empty, not huge.
pub(crate) fn check_name(what: &str, name: &str) -> Result<(), LedgerError> {
    if name.is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
        return Err(LedgerError::Invalid(format!(
            "{what} {name:?} must be 1 to 256 bytes without control characters"
        )));
    }
    Ok(())
}

/// A posted or held entry's postings: some, not too many, none zero, valid names, and summing to
/// zero per unit.
pub(crate) fn check_postings(postings: &[Posting]) -> Result<(), LedgerError> {
    if postings.is_empty() || postings.len() > MAX_POSTINGS {
        return Err(LedgerError::Invalid(format!(
            "an entry has 1 to {MAX_POSTINGS} postings, not {}",
            postings.len()
        )));
    }
    for posting in postings {
        check_name("account", &posting.account)?;
        check_name("unit", &posting.unit)?;
        if posting.amount == 0 {
            return Err(LedgerError::Invalid(format!(
                "zero posting to {}",
                posting.account
            )));
        }
        if !(-MAX_AMOUNT..=MAX_AMOUNT).contains(&posting.amount) {
            return Err(LedgerError::AmountOutOfRange {
                account: posting.account.clone(),
                detail: format!(
                    "a posting moves at most {MAX_AMOUNT} {}, not {}",
                    posting.unit, posting.amount
                ),
            });
        }
    }
    match unbalanced_unit(postings) {
        Some(unit) => Err(LedgerError::Unbalanced { unit }),
        None => Ok(()),
    }
}

/// The first unit (by name) whose amounts do not sum to zero. Sums in i128: no i64 amounts can
/// overflow it.
pub(crate) fn unbalanced_unit(postings: &[Posting]) -> Option<String> {
    let mut sums: BTreeMap<&str, i128> = BTreeMap::new();
    for posting in postings {
        *sums.entry(&posting.unit).or_default() += i128::from(posting.amount);
    }
    sums.into_iter()
        .find(|(_, sum)| *sum != 0)
        .map(|(unit, _)| unit.to_owned())
}

/// Net amount per (account, unit).
fn net(postings: &[Posting]) -> BTreeMap<(&str, &str), i128> {
    let mut net = BTreeMap::new();
    for posting in postings {
        *net.entry((posting.account.as_str(), posting.unit.as_str()))
            .or_default() += i128::from(posting.amount);
    }
    net
}

/// A partial post may move less than the hold reserved, never more, never elsewhere: each
/// account's net amount in the same direction as held and at most as large.
pub(crate) fn check_within_hold(
    hold_id: &str,
    held: &[Posting],
    posted: &[Posting],
) -> Result<(), LedgerError> {
    let held = net(held);
    for ((account, unit), amount) in net(posted) {
        let reserved = held.get(&(account, unit)).copied().unwrap_or(0);
        if amount.signum() != reserved.signum() || amount.abs() > reserved.abs() {
            return Err(LedgerError::ExceedsHold {
                hold: hold_id.to_owned(),
                account: account.to_owned(),
            });
        }
    }
    Ok(())
}

/// How an entry changes each account's balances. `held` is the resolved hold's postings, for
/// entries that resolve one. The same function drives writes and reconciliation, so the two
/// can only disagree when stored data changed. `None` when a sum overflows.
pub(crate) fn effects(
    kind: &EntryKind,
    postings: &[Posting],
    held: &[Posting],
) -> Option<BTreeMap<String, Balances>> {
    let mut changes: BTreeMap<String, Balances> = BTreeMap::new();
    let mut add = |account: &str, change: Balances| -> Option<()> {
        let current = changes.entry(account.to_owned()).or_default();
        *current = current.plus(&change)?;
        Some(())
    };
    // Pending amounts as (debits, credits) magnitudes, `sign` +1 to reserve, -1 to release.
    let pending = |amount: i64, sign: i64| -> Option<Balances> {
        let magnitude = amount.checked_abs()?.checked_mul(sign)?;
        Some(if amount < 0 {
            Balances {
                pending_debits: magnitude,
                ..Balances::default()
            }
        } else {
            Balances {
                pending_credits: magnitude,
                ..Balances::default()
            }
        })
    };
    match kind {
        EntryKind::Posted => {}
        EntryKind::Hold { .. } => {
            for posting in postings {
                add(&posting.account, pending(posting.amount, 1)?)?;
            }
            return Some(changes);
        }
        EntryKind::HoldPosted { .. }
        | EntryKind::HoldVoided { .. }
        | EntryKind::HoldExpired { .. } => {
            for posting in held {
                add(&posting.account, pending(posting.amount, -1)?)?;
            }
        }
    }
    for posting in postings {
        add(
            &posting.account,
            Balances {
                posted: posting.amount,
                ..Balances::default()
            },
        )?;
    }
    Some(changes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Values that crowd the edges of i64 (where overflow lives) as well as ordinary ones.
    fn near_bounds() -> impl Strategy<Value = i64> {
        prop_oneof![
            (i64::MAX - (1 << 20))..=i64::MAX,
            i64::MIN..=(i64::MIN + (1 << 20)),
            -(1i64 << 20)..(1 << 20),
            (MAX_AMOUNT - 5)..=(MAX_AMOUNT + 5),
            (-MAX_AMOUNT - 5)..=(-MAX_AMOUNT + 5),
            any::<i64>(),
        ]
    }

    fn balances() -> impl Strategy<Value = Balances> {
        (near_bounds(), near_bounds(), near_bounds()).prop_map(
            |(posted, pending_debits, pending_credits)| Balances {
                posted,
                pending_debits,
                pending_credits,
            },
        )
    }

    fn fits(value: i128) -> bool {
        i64::try_from(value).is_ok()
    }

    proptest! {
        /// `plus` is exact where the true (i128) sums and the available balance fit in i64,
        /// and refuses otherwise — never wraps, never panics.
        #[test]
        fn balances_add_exactly_or_refuse(current in balances(), change in balances()) {
            let posted = i128::from(current.posted) + i128::from(change.posted);
            let debits = i128::from(current.pending_debits) + i128::from(change.pending_debits);
            let credits =
                i128::from(current.pending_credits) + i128::from(change.pending_credits);
            let representable =
                fits(posted) && fits(debits) && fits(credits) && fits(posted - debits);
            match current.plus(&change) {
                Some(sum) => {
                    prop_assert!(representable);
                    prop_assert_eq!(i128::from(sum.posted), posted);
                    prop_assert_eq!(i128::from(sum.pending_debits), debits);
                    prop_assert_eq!(i128::from(sum.pending_credits), credits);
                    prop_assert_eq!(i128::from(sum.available()), posted - debits);
                }
                None => prop_assert!(!representable),
            }
        }

        /// A posting is accepted only within ±MAX_AMOUNT, and an accepted entry's effects (a
        /// hold reserving, a post releasing it) are the exact i128 sums.
        #[test]
        fn postings_are_bounded_and_effects_are_exact(amount in near_bounds()) {
            let postings = [p("a", amount.saturating_neg()), p("b", amount)];
            let checked = check_postings(&postings);
            let in_bounds = amount != 0
                && amount != i64::MIN
                && (-MAX_AMOUNT..=MAX_AMOUNT).contains(&amount);
            prop_assert_eq!(checked.is_ok(), in_bounds, "{:?}", checked);
            if amount == 0 {
                return Ok(());
            }
            if !in_bounds {
                let is_range_error = matches!(
                    checked,
                    Err(LedgerError::AmountOutOfRange { .. } | LedgerError::Unbalanced { .. })
                );
                prop_assert!(is_range_error);
                return Ok(());
            }
            let hold = effects(&EntryKind::Hold { expires_at: 1 }, &postings, &[]).unwrap();
            let magnitude = amount.abs();
            let debited = if amount > 0 { "a" } else { "b" };
            prop_assert_eq!(hold[debited].pending_debits, magnitude);
            let post = effects(
                &EntryKind::HoldPosted { hold_id: "h".into() },
                &postings,
                &postings,
            )
            .unwrap();
            prop_assert_eq!(post[debited].pending_debits, -magnitude);
            prop_assert_eq!(post[debited].posted, -magnitude);
        }
    }

    fn p(account: &str, amount: i64) -> Posting {
        Posting {
            account: account.into(),
            unit: "points".into(),
            amount,
        }
    }

    #[test]
    fn balance_is_checked_per_unit() {
        let mixed = [
            p("a", -5),
            Posting {
                unit: "USD".into(),
                ..p("b", 5)
            },
        ];
        assert_eq!(unbalanced_unit(&mixed).as_deref(), Some("USD"));
        assert_eq!(unbalanced_unit(&[p("a", -5), p("b", 5)]), None);
        // No overflow on extreme amounts.
        assert_eq!(
            unbalanced_unit(&[p("a", i64::MIN), p("b", i64::MAX), p("c", 1)]),
            None
        );
    }

    #[test]
    fn a_posted_hold_releases_what_it_reserved_and_posts_what_it_says() {
        let held = [p("member", -100), p("pool", 100)];
        let reserve = effects(&EntryKind::Hold { expires_at: 9 }, &held, &[]).unwrap();
        assert_eq!(reserve["member"].pending_debits, 100);
        assert_eq!(reserve["pool"].pending_credits, 100);
        let post = effects(
            &EntryKind::HoldPosted {
                hold_id: "h".into(),
            },
            &[p("member", -60), p("pool", 60)],
            &held,
        )
        .unwrap();
        assert_eq!(
            post["member"],
            Balances {
                posted: -60,
                pending_debits: -100,
                pending_credits: 0
            }
        );
        assert_eq!(
            check_within_hold("h", &held, &[p("member", -101), p("pool", 101)]),
            Err(LedgerError::ExceedsHold {
                hold: "h".into(),
                account: "member".into()
            })
        );
        assert!(check_within_hold("h", &held, &[p("member", -60), p("pool", 60)]).is_ok());
    }
}
