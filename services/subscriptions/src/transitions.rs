//! The subscription and invoice state machines, exactly as `SubscriptionStatus`
//! (subscription.proto) and `InvoiceStatus` (invoice.proto) document them.
//!
//! # Subscriptions
//!
//! | from       | action                                            | to                   |
//! |------------|---------------------------------------------------|----------------------|
//! | INCOMPLETE | [`FirstPaymentSucceeded`]                         | ACTIVE               |
//! | INCOMPLETE | [`FirstPaymentWindowExpired`] (23 h unpaid)       | INCOMPLETE_EXPIRED   |
//! | TRIALING   | [`TrialEndedPaid`]                                | ACTIVE               |
//! | TRIALING   | [`TrialEndedPaymentFailed`]                       | PAST_DUE             |
//! | TRIALING   | [`Cancel`]                                        | CANCELED             |
//! | TRIALING   | [`ChangePlan`]                                    | TRIALING             |
//! | ACTIVE     | [`RenewalPaid`]                                   | ACTIVE               |
//! | ACTIVE     | [`RenewalFailed`]                                 | PAST_DUE             |
//! | ACTIVE     | [`Pause`]                                         | PAUSED               |
//! | ACTIVE     | [`Cancel`]                                        | CANCELED             |
//! | ACTIVE     | [`ChangePlan`]                                    | ACTIVE               |
//! | PAST_DUE   | [`RetrySucceeded`]                                | ACTIVE               |
//! | PAST_DUE   | [`RetriesExhausted`] (by the dunning policy)      | CANCELED or UNPAID   |
//! | PAST_DUE   | [`Cancel`]                                        | CANCELED             |
//! | PAUSED     | [`Resume`]                                        | ACTIVE               |
//! | PAUSED     | [`Cancel`]                                        | CANCELED             |
//!
//! Everything else is an [`IllegalTransition`] (the RPCs answer
//! `SUBSCRIPTION_TRANSITION_INVALID`). CANCELED, UNPAID and INCOMPLETE_EXPIRED are final: no
//! action leaves them. The two self-loops are the only additions to the proto's list, because
//! they are actions that must be checked even though the status stays: a renewal is collected
//! only from ACTIVE, and plan changes are allowed only where [`can_change_plan`] says.
//!
//! Repeating an action whose effect already holds (pausing a PAUSED subscription, canceling a
//! CANCELED one) is illegal here too: the RPCs that call those no-ops check for them first, so
//! "final means final" stays literally true of the machine.
//!
//! # Invoices
//!
//! DRAFT → OPEN ([`InvoiceAction::Finalize`]); OPEN → PAID | VOID | UNCOLLECTIBLE; UNCOLLECTIBLE →
//! PAID | VOID (a written-off invoice can still be paid or canceled). PAID and VOID are final.
//!
//! [`FirstPaymentSucceeded`]: SubscriptionAction::FirstPaymentSucceeded
//! [`FirstPaymentWindowExpired`]: SubscriptionAction::FirstPaymentWindowExpired
//! [`TrialEndedPaid`]: SubscriptionAction::TrialEndedPaid
//! [`TrialEndedPaymentFailed`]: SubscriptionAction::TrialEndedPaymentFailed
//! [`Cancel`]: SubscriptionAction::Cancel
//! [`ChangePlan`]: SubscriptionAction::ChangePlan
//! [`RenewalPaid`]: SubscriptionAction::RenewalPaid
//! [`RenewalFailed`]: SubscriptionAction::RenewalFailed
//! [`Pause`]: SubscriptionAction::Pause
//! [`RetrySucceeded`]: SubscriptionAction::RetrySucceeded
//! [`RetriesExhausted`]: SubscriptionAction::RetriesExhausted
//! [`Resume`]: SubscriptionAction::Resume

use commerce_api::commerce::subscriptions::v1::{InvoiceStatus, SubscriptionStatus};

use crate::dunning::FinalAction;

/// How long an INCOMPLETE subscription's first invoice may stay unpaid before the subscription
/// expires (INCOMPLETE → INCOMPLETE_EXPIRED): 23 hours, as the contract says, which keeps it
/// inside the day a card authorization for the first payment stays valid.
pub const INCOMPLETE_PAYMENT_WINDOW_MS: i64 = 23 * 3_600_000;

/// Something that happens to a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubscriptionAction {
    /// The first invoice of an INCOMPLETE subscription was paid.
    FirstPaymentSucceeded,
    /// [`INCOMPLETE_PAYMENT_WINDOW_MS`] passed with the first invoice unpaid.
    FirstPaymentWindowExpired,
    /// The trial ended and its first invoice was paid.
    TrialEndedPaid,
    /// The trial ended and charging its first invoice failed; dunning takes over.
    TrialEndedPaymentFailed,
    /// A renewal invoice was paid; the subscription stays ACTIVE.
    RenewalPaid,
    /// Charging a renewal invoice failed; dunning takes over.
    RenewalFailed,
    /// A dunning retry (or the customer paying by hand, or the invoice being voided: nothing
    /// is owed) settled the past-due invoice.
    RetrySucceeded,
    /// Dunning gave up (retries ran out or the decline was hard); the policy's final action
    /// decides where the subscription ends.
    RetriesExhausted(FinalAction),
    /// Collection paused.
    Pause,
    /// Collection resumed.
    Resume,
    /// Canceled now, or the period ended with `cancel_at_period_end` set.
    Cancel,
    /// Moved to another plan; the status stays.
    ChangePlan,
}

impl SubscriptionAction {
    /// The status this action leads to from `from`, whether or not it is legal there.
    fn target(self, from: SubscriptionStatus) -> SubscriptionStatus {
        use SubscriptionAction as A;
        match self {
            A::FirstPaymentSucceeded
            | A::TrialEndedPaid
            | A::RenewalPaid
            | A::RetrySucceeded
            | A::Resume => SubscriptionStatus::Active,
            A::FirstPaymentWindowExpired => SubscriptionStatus::IncompleteExpired,
            A::TrialEndedPaymentFailed | A::RenewalFailed => SubscriptionStatus::PastDue,
            A::RetriesExhausted(final_action) => final_action.subscription_status(),
            A::Pause => SubscriptionStatus::Paused,
            A::Cancel => SubscriptionStatus::Canceled,
            A::ChangePlan => from,
        }
    }
}

/// An action that the subscription state machine does not allow from the current status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "cannot {action:?} a subscription: {} → {} is not a legal transition",
    .from.as_str_name(),
    .to.as_str_name()
)]
pub struct IllegalTransition {
    /// The status the subscription is in.
    pub from: SubscriptionStatus,
    /// The status the action would have led to.
    pub to: SubscriptionStatus,
    /// The action refused.
    pub action: SubscriptionAction,
}

/// The status after `action` from `from`, or why the action is not allowed (see the
/// [module docs](self) for the table).
pub fn next(
    from: SubscriptionStatus,
    action: SubscriptionAction,
) -> Result<SubscriptionStatus, IllegalTransition> {
    use SubscriptionAction as A;
    use SubscriptionStatus as S;
    let legal = matches!(
        (from, action),
        (
            S::Incomplete,
            A::FirstPaymentSucceeded | A::FirstPaymentWindowExpired
        ) | (
            S::Trialing,
            A::TrialEndedPaid | A::TrialEndedPaymentFailed | A::Cancel | A::ChangePlan
        ) | (
            S::Active,
            A::RenewalPaid | A::RenewalFailed | A::Pause | A::Cancel | A::ChangePlan
        ) | (
            S::PastDue,
            A::RetrySucceeded | A::RetriesExhausted(_) | A::Cancel
        ) | (S::Paused, A::Resume | A::Cancel)
    );
    let to = action.target(from);
    if legal {
        Ok(to)
    } else {
        Err(IllegalTransition { from, to, action })
    }
}

/// Whether no action can leave `status`: CANCELED, UNPAID and INCOMPLETE_EXPIRED.
pub fn is_final(status: SubscriptionStatus) -> bool {
    matches!(
        status,
        SubscriptionStatus::Canceled
            | SubscriptionStatus::Unpaid
            | SubscriptionStatus::IncompleteExpired
    )
}

/// Whether the plan may change in `status`: ACTIVE or TRIALING. Proration credits unused time
/// that was *paid for*, so the current period must be paid (ACTIVE) or free (TRIALING, where the
/// change only swaps the plan the trial converts to). PAST_DUE is refused because its period is
/// unpaid: crediting it would hand back money never received, so the customer settles first.
/// INCOMPLETE and PAUSED have no period being collected, and the final statuses nothing at all.
pub fn can_change_plan(status: SubscriptionStatus) -> bool {
    next(status, SubscriptionAction::ChangePlan).is_ok()
}

/// Whether collection may be paused in `status`: only ACTIVE.
pub fn can_pause(status: SubscriptionStatus) -> bool {
    next(status, SubscriptionAction::Pause).is_ok()
}

/// Whether the subscription may be resumed in `status`: only PAUSED.
pub fn can_resume(status: SubscriptionStatus) -> bool {
    next(status, SubscriptionAction::Resume).is_ok()
}

/// Something that happens to an invoice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InvoiceAction {
    /// The draft is complete: it is numbered and becomes collectible (DRAFT → OPEN).
    Finalize,
    /// The amount due was collected (OPEN or UNCOLLECTIBLE → PAID).
    Pay,
    /// Nothing is owed after all (OPEN or UNCOLLECTIBLE → VOID).
    Void,
    /// Dunning gave up; written off but still payable (OPEN → UNCOLLECTIBLE).
    MarkUncollectible,
}

impl InvoiceAction {
    fn target(self) -> InvoiceStatus {
        match self {
            InvoiceAction::Finalize => InvoiceStatus::Open,
            InvoiceAction::Pay => InvoiceStatus::Paid,
            InvoiceAction::Void => InvoiceStatus::Void,
            InvoiceAction::MarkUncollectible => InvoiceStatus::Uncollectible,
        }
    }
}

/// An action that the invoice state machine does not allow from the current status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "cannot {action:?} an invoice: {} → {} is not a legal transition",
    .from.as_str_name(),
    .to.as_str_name()
)]
pub struct IllegalInvoiceTransition {
    /// The status the invoice is in.
    pub from: InvoiceStatus,
    /// The status the action would have led to.
    pub to: InvoiceStatus,
    /// The action refused.
    pub action: InvoiceAction,
}

/// The invoice status after `action` from `from`, or why the action is not allowed.
pub fn next_invoice(
    from: InvoiceStatus,
    action: InvoiceAction,
) -> Result<InvoiceStatus, IllegalInvoiceTransition> {
    use InvoiceAction as A;
    use InvoiceStatus as S;
    let legal = matches!(
        (from, action),
        (S::Draft, A::Finalize)
            | (S::Open, A::Pay | A::Void | A::MarkUncollectible)
            | (S::Uncollectible, A::Pay | A::Void)
    );
    let to = action.target();
    if legal {
        Ok(to)
    } else {
        Err(IllegalInvoiceTransition { from, to, action })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use SubscriptionAction as A;
    use SubscriptionStatus as S;

    const ALL_STATUSES: [S; 9] = [
        S::Unspecified,
        S::Incomplete,
        S::IncompleteExpired,
        S::Trialing,
        S::Active,
        S::PastDue,
        S::Paused,
        S::Canceled,
        S::Unpaid,
    ];

    const ALL_ACTIONS: [A; 13] = [
        A::FirstPaymentSucceeded,
        A::FirstPaymentWindowExpired,
        A::TrialEndedPaid,
        A::TrialEndedPaymentFailed,
        A::RenewalPaid,
        A::RenewalFailed,
        A::RetrySucceeded,
        A::RetriesExhausted(FinalAction::Cancel),
        A::RetriesExhausted(FinalAction::MarkUnpaid),
        A::Pause,
        A::Resume,
        A::Cancel,
        A::ChangePlan,
    ];

    /// Every legal transition, written out from the table in the module docs.
    const LEGAL: [(S, A, S); 17] = [
        (S::Incomplete, A::FirstPaymentSucceeded, S::Active),
        (
            S::Incomplete,
            A::FirstPaymentWindowExpired,
            S::IncompleteExpired,
        ),
        (S::Trialing, A::TrialEndedPaid, S::Active),
        (S::Trialing, A::TrialEndedPaymentFailed, S::PastDue),
        (S::Trialing, A::Cancel, S::Canceled),
        (S::Trialing, A::ChangePlan, S::Trialing),
        (S::Active, A::RenewalPaid, S::Active),
        (S::Active, A::RenewalFailed, S::PastDue),
        (S::Active, A::Pause, S::Paused),
        (S::Active, A::Cancel, S::Canceled),
        (S::Active, A::ChangePlan, S::Active),
        (S::PastDue, A::RetrySucceeded, S::Active),
        (
            S::PastDue,
            A::RetriesExhausted(FinalAction::Cancel),
            S::Canceled,
        ),
        (
            S::PastDue,
            A::RetriesExhausted(FinalAction::MarkUnpaid),
            S::Unpaid,
        ),
        (S::PastDue, A::Cancel, S::Canceled),
        (S::Paused, A::Resume, S::Active),
        (S::Paused, A::Cancel, S::Canceled),
    ];

    /// The status changes listed on `SubscriptionStatus` in subscription.proto, verbatim.
    const PROTO_EDGES: [(S, S); 13] = [
        (S::Incomplete, S::Active),
        (S::Incomplete, S::IncompleteExpired),
        (S::Trialing, S::Active),
        (S::Trialing, S::PastDue),
        (S::Trialing, S::Canceled),
        (S::Active, S::PastDue),
        (S::Active, S::Paused),
        (S::Active, S::Canceled),
        (S::PastDue, S::Active),
        (S::PastDue, S::Canceled),
        (S::PastDue, S::Unpaid),
        (S::Paused, S::Active),
        (S::Paused, S::Canceled),
    ];

    #[test]
    fn every_legal_transition_reaches_its_documented_status() {
        for (from, action, to) in LEGAL {
            assert_eq!(next(from, action), Ok(to), "{from:?} --{action:?}-->");
        }
    }

    #[test]
    fn every_other_status_and_action_pair_is_illegal() {
        for from in ALL_STATUSES {
            for action in ALL_ACTIONS {
                let listed = LEGAL.iter().any(|&(f, a, _)| f == from && a == action);
                assert_eq!(
                    next(from, action).is_ok(),
                    listed,
                    "{from:?} --{action:?}-->"
                );
            }
        }
    }

    #[test]
    fn status_changes_are_exactly_the_ones_the_proto_lists() {
        let mut changes: Vec<(S, S)> = LEGAL
            .iter()
            .filter(|(from, _, to)| from != to)
            .map(|&(from, _, to)| (from, to))
            .collect();
        changes.sort_by_key(|&(from, to)| (from as i32, to as i32));
        changes.dedup();
        let mut documented = PROTO_EDGES.to_vec();
        documented.sort_by_key(|&(from, to)| (from as i32, to as i32));
        assert_eq!(changes, documented);
    }

    #[test]
    fn resuming_an_active_subscription_is_illegal_and_says_so() {
        let error = next(S::Active, A::Resume).unwrap_err();
        assert_eq!(
            error,
            IllegalTransition {
                from: S::Active,
                to: S::Active,
                action: A::Resume,
            }
        );
        assert_eq!(
            error.to_string(),
            "cannot Resume a subscription: SUBSCRIPTION_STATUS_ACTIVE → \
             SUBSCRIPTION_STATUS_ACTIVE is not a legal transition"
        );
    }

    #[test]
    fn changing_plan_on_a_canceled_subscription_is_illegal() {
        assert_eq!(
            next(S::Canceled, A::ChangePlan),
            Err(IllegalTransition {
                from: S::Canceled,
                to: S::Canceled,
                action: A::ChangePlan,
            })
        );
    }

    #[test]
    fn nothing_leaves_a_final_status() {
        for from in [S::Canceled, S::Unpaid, S::IncompleteExpired] {
            assert!(is_final(from));
            for action in ALL_ACTIONS {
                let error = next(from, action).unwrap_err();
                assert_eq!(error.from, from);
            }
        }
        assert_eq!(
            next(S::Canceled, A::Resume).unwrap_err().to_string(),
            "cannot Resume a subscription: SUBSCRIPTION_STATUS_CANCELED → \
             SUBSCRIPTION_STATUS_ACTIVE is not a legal transition"
        );
    }

    #[test]
    fn other_illegal_transitions_name_where_they_would_have_gone() {
        // Pausing during a trial or while past due is not in the contract.
        assert_eq!(
            next(S::Trialing, A::Pause).unwrap_err().to_string(),
            "cannot Pause a subscription: SUBSCRIPTION_STATUS_TRIALING → SUBSCRIPTION_STATUS_PAUSED is not a legal transition"
        );
        assert!(next(S::PastDue, A::Pause).is_err());
        // An INCOMPLETE subscription is not canceled by hand: it expires.
        assert!(next(S::Incomplete, A::Cancel).is_err());
        // Dunning outcomes only apply while past due.
        assert_eq!(
            next(S::Active, A::RetriesExhausted(FinalAction::MarkUnpaid))
                .unwrap_err()
                .to_string(),
            "cannot RetriesExhausted(MarkUnpaid) a subscription: SUBSCRIPTION_STATUS_ACTIVE → \
             SUBSCRIPTION_STATUS_UNPAID is not a legal transition"
        );
        assert!(next(S::Paused, A::RenewalFailed).is_err());
        // Repeating a pause or a cancel is not a transition.
        assert!(next(S::Paused, A::Pause).is_err());
        assert!(next(S::Canceled, A::Cancel).is_err());
        // An unset status allows nothing.
        assert!(
            ALL_ACTIONS
                .iter()
                .all(|&action| next(S::Unspecified, action).is_err())
        );
    }

    #[test]
    fn plan_changes_pauses_and_resumes_are_allowed_where_documented() {
        let allowed = |check: fn(S) -> bool| -> Vec<S> {
            ALL_STATUSES.into_iter().filter(|&s| check(s)).collect()
        };
        assert_eq!(allowed(can_change_plan), [S::Trialing, S::Active]);
        assert_eq!(allowed(can_pause), [S::Active]);
        assert_eq!(allowed(can_resume), [S::Paused]);
        assert_eq!(
            allowed(is_final),
            [S::IncompleteExpired, S::Canceled, S::Unpaid]
        );
    }

    #[test]
    fn first_payment_window_is_23_hours() {
        assert_eq!(INCOMPLETE_PAYMENT_WINDOW_MS, 82_800_000);
    }

    const ALL_INVOICE_STATUSES: [InvoiceStatus; 6] = [
        InvoiceStatus::Unspecified,
        InvoiceStatus::Draft,
        InvoiceStatus::Open,
        InvoiceStatus::Paid,
        InvoiceStatus::Void,
        InvoiceStatus::Uncollectible,
    ];

    const ALL_INVOICE_ACTIONS: [InvoiceAction; 4] = [
        InvoiceAction::Finalize,
        InvoiceAction::Pay,
        InvoiceAction::Void,
        InvoiceAction::MarkUncollectible,
    ];

    const LEGAL_INVOICE: [(InvoiceStatus, InvoiceAction, InvoiceStatus); 6] = [
        (
            InvoiceStatus::Draft,
            InvoiceAction::Finalize,
            InvoiceStatus::Open,
        ),
        (InvoiceStatus::Open, InvoiceAction::Pay, InvoiceStatus::Paid),
        (
            InvoiceStatus::Open,
            InvoiceAction::Void,
            InvoiceStatus::Void,
        ),
        (
            InvoiceStatus::Open,
            InvoiceAction::MarkUncollectible,
            InvoiceStatus::Uncollectible,
        ),
        (
            InvoiceStatus::Uncollectible,
            InvoiceAction::Pay,
            InvoiceStatus::Paid,
        ),
        (
            InvoiceStatus::Uncollectible,
            InvoiceAction::Void,
            InvoiceStatus::Void,
        ),
    ];

    #[test]
    fn every_legal_invoice_transition_reaches_its_documented_status() {
        for (from, action, to) in LEGAL_INVOICE {
            assert_eq!(
                next_invoice(from, action),
                Ok(to),
                "{from:?} --{action:?}-->"
            );
        }
    }

    #[test]
    fn every_other_invoice_status_and_action_pair_is_illegal() {
        for from in ALL_INVOICE_STATUSES {
            for action in ALL_INVOICE_ACTIONS {
                let listed = LEGAL_INVOICE
                    .iter()
                    .any(|&(f, a, _)| f == from && a == action);
                assert_eq!(
                    next_invoice(from, action).is_ok(),
                    listed,
                    "{from:?} --{action:?}-->"
                );
            }
        }
    }

    #[test]
    fn paid_and_void_invoices_are_final_and_drafts_cannot_be_paid() {
        for from in [InvoiceStatus::Paid, InvoiceStatus::Void] {
            assert!(
                ALL_INVOICE_ACTIONS
                    .iter()
                    .all(|&action| next_invoice(from, action).is_err())
            );
        }
        assert_eq!(
            next_invoice(InvoiceStatus::Draft, InvoiceAction::Pay)
                .unwrap_err()
                .to_string(),
            "cannot Pay an invoice: INVOICE_STATUS_DRAFT → INVOICE_STATUS_PAID is not a legal \
             transition"
        );
        assert!(
            next_invoice(
                InvoiceStatus::Uncollectible,
                InvoiceAction::MarkUncollectible
            )
            .is_err()
        );
    }

    proptest! {
        #[test]
        fn any_sequence_of_actions_only_takes_documented_steps_and_never_leaves_a_final_status(
            start in proptest::sample::select(ALL_STATUSES.to_vec()),
            actions in proptest::collection::vec(proptest::sample::select(ALL_ACTIONS.to_vec()), 0..40),
        ) {
            let mut status = start;
            for action in actions {
                match next(status, action) {
                    Ok(to) => {
                        prop_assert!(!is_final(status));
                        prop_assert!(
                            to == status || PROTO_EDGES.contains(&(status, to)),
                            "{status:?} → {to:?} is not documented"
                        );
                        status = to;
                    }
                    Err(error) => {
                        prop_assert_eq!(error.from, status);
                        prop_assert_eq!(error.action, action);
                    }
                }
            }
        }
    }
}
