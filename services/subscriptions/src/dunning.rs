//! Dunning: when a failed invoice payment is tried again, and what happens when it never succeeds.
//!
//! A [`RetryPolicy`] is a list of delays and a final action. After the payment attempt number `n`
//! (counting every attempt, the first one included, as `Invoice.attempt_count` does) fails:
//!
//! - a **hard decline** (stolen card, closed account: `PaymentDecline.hard`) ends dunning at
//!   once, because retrying cannot fix it and only piles up declines on the customer's card;
//! - otherwise, if the policy has an `n`-th delay, the next attempt is that long after the failed
//!   one: delays are measured from the last attempt, so a late-running retry job shifts the rest
//!   of the schedule instead of bunching the remaining attempts together;
//! - otherwise retries are exhausted and the policy's [`FinalAction`] applies.
//!
//! The default, 1, 3, 5 and 5 days, makes 4 retries (5 attempts) over the 2 weeks after the first
//! failure: quick at first, for the card that was briefly over its limit, then spaced out to
//! catch the next payday.

use commerce_api::commerce::subscriptions::v1::SubscriptionStatus;

use crate::MILLIS_PER_DAY;

/// What happens to the subscription when dunning gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FinalAction {
    /// Cancel the subscription (`PAST_DUE → CANCELED`).
    Cancel,
    /// Keep the subscription but mark it unpaid (`PAST_DUE → UNPAID`), so the merchant can chase
    /// the debt without the customer losing their history.
    MarkUnpaid,
}

impl FinalAction {
    /// The subscription status the action leads to.
    pub fn subscription_status(self) -> SubscriptionStatus {
        match self {
            FinalAction::Cancel => SubscriptionStatus::Canceled,
            FinalAction::MarkUnpaid => SubscriptionStatus::Unpaid,
        }
    }
}

/// Delays between payment attempts and what to do when they run out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    retry_delays_ms: Vec<i64>,
    final_action: FinalAction,
}

/// A retry policy was built with a delay that is not positive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("retry delay {delay_ms} ms at position {position} is not positive")]
pub struct InvalidRetryPolicy {
    /// Index of the offending delay in the list.
    pub position: usize,
    /// The delay given.
    pub delay_ms: i64,
}

/// What dunning does after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DunningStep {
    /// Try the payment again at this time (unix ms).
    RetryAt(i64),
    /// Stop retrying and apply this action.
    GiveUp(FinalAction),
}

impl RetryPolicy {
    /// A policy with these delays (milliseconds; the `n`-th follows the `n`-th failed attempt)
    /// and final action. An empty list gives up on the first failure. Every delay must be
    /// positive, so a retry never lands at or before the attempt it follows.
    pub fn new(
        retry_delays_ms: Vec<i64>,
        final_action: FinalAction,
    ) -> Result<Self, InvalidRetryPolicy> {
        if let Some((position, &delay_ms)) = retry_delays_ms
            .iter()
            .enumerate()
            .find(|&(_, &delay)| delay <= 0)
        {
            return Err(InvalidRetryPolicy { position, delay_ms });
        }
        Ok(Self {
            retry_delays_ms,
            final_action,
        })
    }

    /// The delays, in order.
    pub fn retry_delays_ms(&self) -> &[i64] {
        &self.retry_delays_ms
    }

    /// What happens when retries run out or a decline is hard.
    pub fn final_action(&self) -> FinalAction {
        self.final_action
    }

    /// What to do after payment attempt number `attempt_count` (1 for the first attempt; 0 is
    /// treated as 1) failed at `last_attempt_ms`; `hard_decline` is `PaymentDecline.hard`.
    pub fn next_step(
        &self,
        attempt_count: u32,
        last_attempt_ms: i64,
        hard_decline: bool,
    ) -> DunningStep {
        if hard_decline {
            return DunningStep::GiveUp(self.final_action);
        }
        let retry_index = usize::try_from(attempt_count.saturating_sub(1)).unwrap_or(usize::MAX);
        match self.retry_delays_ms.get(retry_index) {
            Some(&delay_ms) => DunningStep::RetryAt(last_attempt_ms.saturating_add(delay_ms)),
            None => DunningStep::GiveUp(self.final_action),
        }
    }
}

impl Default for RetryPolicy {
    /// Retries 1, 3, 5 and 5 days apart (2 weeks in all), then cancels.
    fn default() -> Self {
        Self {
            retry_delays_ms: [1, 3, 5, 5].map(|days| days * MILLIS_PER_DAY).to_vec(),
            final_action: FinalAction::Cancel,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DAY: i64 = MILLIS_PER_DAY;

    #[test]
    fn default_policy_retries_four_times_over_two_weeks_then_cancels() {
        let policy = RetryPolicy::default();
        let first_failure = 1_700_000_000_000;
        let mut attempt_time = first_failure;
        let mut attempt_count = 1;
        let mut retry_times = Vec::new();
        let outcome = loop {
            match policy.next_step(attempt_count, attempt_time, false) {
                DunningStep::RetryAt(time) => {
                    retry_times.push(time - first_failure);
                    attempt_time = time;
                    attempt_count += 1;
                }
                DunningStep::GiveUp(action) => break action,
            }
        };
        assert_eq!(retry_times, [DAY, 4 * DAY, 9 * DAY, 14 * DAY]);
        assert_eq!(attempt_count, 5);
        assert_eq!(outcome, FinalAction::Cancel);
    }

    #[test]
    fn delays_are_measured_from_the_last_attempt_not_the_first() {
        let policy = RetryPolicy::default();
        // The second attempt ran 2 hours late; the third is still 3 days after it.
        let late_second_attempt = 10 * DAY + 2 * 3_600_000;
        assert_eq!(
            policy.next_step(2, late_second_attempt, false),
            DunningStep::RetryAt(late_second_attempt + 3 * DAY)
        );
    }

    #[test]
    fn a_hard_decline_gives_up_at_once_with_the_policy_action() {
        let policy = RetryPolicy::new(vec![DAY, DAY], FinalAction::MarkUnpaid).unwrap();
        assert_eq!(
            policy.next_step(1, 0, true),
            DunningStep::GiveUp(FinalAction::MarkUnpaid)
        );
        assert_eq!(
            policy.next_step(2, DAY, true),
            DunningStep::GiveUp(FinalAction::MarkUnpaid)
        );
    }

    #[test]
    fn exhausted_retries_apply_the_final_action() {
        let policy = RetryPolicy::new(vec![DAY], FinalAction::MarkUnpaid).unwrap();
        assert_eq!(policy.next_step(1, 0, false), DunningStep::RetryAt(DAY));
        assert_eq!(
            policy.next_step(2, DAY, false),
            DunningStep::GiveUp(FinalAction::MarkUnpaid)
        );
        assert_eq!(
            policy.next_step(u32::MAX, DAY, false),
            DunningStep::GiveUp(FinalAction::MarkUnpaid)
        );
    }

    #[test]
    fn attempt_count_zero_is_read_as_the_first_attempt() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.next_step(0, 0, false), policy.next_step(1, 0, false));
    }

    #[test]
    fn an_empty_policy_gives_up_on_the_first_failure() {
        let policy = RetryPolicy::new(Vec::new(), FinalAction::Cancel).unwrap();
        assert_eq!(
            policy.next_step(1, 0, false),
            DunningStep::GiveUp(FinalAction::Cancel)
        );
    }

    #[test]
    fn non_positive_delays_are_rejected() {
        assert_eq!(
            RetryPolicy::new(vec![DAY, 0, DAY], FinalAction::Cancel),
            Err(InvalidRetryPolicy {
                position: 1,
                delay_ms: 0,
            })
        );
        assert!(RetryPolicy::new(vec![-DAY], FinalAction::Cancel).is_err());
    }

    #[test]
    fn final_actions_map_to_the_documented_statuses() {
        assert_eq!(
            FinalAction::Cancel.subscription_status(),
            SubscriptionStatus::Canceled
        );
        assert_eq!(
            FinalAction::MarkUnpaid.subscription_status(),
            SubscriptionStatus::Unpaid
        );
    }

    proptest! {
        #[test]
        fn soft_declines_retry_exactly_once_per_delay_each_later_than_the_last(
            delays in proptest::collection::vec(1i64..30 * DAY, 0..10),
            first_failure in 0i64..4_000_000_000_000,
            unpaid in any::<bool>(),
        ) {
            let action = if unpaid { FinalAction::MarkUnpaid } else { FinalAction::Cancel };
            let policy = RetryPolicy::new(delays.clone(), action).unwrap();
            let mut attempt_time = first_failure;
            let mut retries = 0;
            for attempt_count in 1u32.. {
                match policy.next_step(attempt_count, attempt_time, false) {
                    DunningStep::RetryAt(time) => {
                        prop_assert!(time > attempt_time);
                        attempt_time = time;
                        retries += 1;
                    }
                    DunningStep::GiveUp(given) => {
                        prop_assert_eq!(given, action);
                        break;
                    }
                }
            }
            prop_assert_eq!(retries, delays.len());
            prop_assert_eq!(attempt_time - first_failure, delays.iter().sum::<i64>());
        }

        #[test]
        fn hard_declines_always_give_up(
            attempt_count in any::<u32>(),
            last_attempt in any::<i64>(),
        ) {
            prop_assert_eq!(
                RetryPolicy::default().next_step(attempt_count, last_attempt, true),
                DunningStep::GiveUp(FinalAction::Cancel)
            );
        }
    }
}
