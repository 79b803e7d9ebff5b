//! When points activate, expire, and when members hear about it.
//!
//! All instants are unix seconds in UTC (the contract's "tenant's clock, UTC"); a day is exactly
//! 86 400 seconds. An expiry instant is *exclusive*: a lot with `expires_at = e` is spendable at
//! `e − 1` and expired at `e`, matching campaign windows (`start ≤ t < end`).

use commerce_api::commerce::loyalty::v1::{ExpiryKind, ExpiryPolicy};

use crate::SECONDS_PER_DAY;

/// When points accrued at `accrued_at` become active: `accrued_at + pending_days × 86 400`.
/// Negative `pending_days` count as 0 (the contract forbids them).
pub fn activates_at(pending_days: i32, accrued_at: i64) -> i64 {
    accrued_at.saturating_add(days_to_seconds(pending_days))
}

/// When a lot activated at `activated_at` expires, or `None` if it never does.
///
/// - `EXPIRY_KIND_NEVER` → `None`.
/// - `EXPIRY_KIND_AFTER_DAYS` → `activated_at + days × 86 400`.
/// - `EXPIRY_KIND_END_OF_MONTH` → the end of the UTC calendar month containing
///   `activated_at + days × 86 400`, as the exclusive instant 00:00:00 UTC on the 1st of the next
///   month (so points activated on 2024-02-10 with `days = 0` are spendable through
///   2024-02-29 23:59:59 and expire at 2024-03-01 00:00:00).
/// - Unspecified or unknown kinds → `None`: the contract forbids them, and if one slips through,
///   keeping the member's points is the recoverable mistake, expiring them is not.
///
/// Negative `days` count as 0.
pub fn expires_at(policy: &ExpiryPolicy, activated_at: i64) -> Option<i64> {
    let after_days = activated_at.saturating_add(days_to_seconds(policy.days));
    match ExpiryKind::try_from(policy.kind) {
        Ok(ExpiryKind::AfterDays) => Some(after_days),
        Ok(ExpiryKind::EndOfMonth) => Some(start_of_next_month(after_days)),
        Ok(ExpiryKind::Never | ExpiryKind::Unspecified) | Err(_) => None,
    }
}

/// When to tell the member that points expiring at `expires_at` are about to:
/// `expires_at − notice_days × 86 400`, or `None` when `notice_days` is 0 (no notice).
pub fn notice_at(policy: &ExpiryPolicy, expires_at: i64) -> Option<i64> {
    (policy.notice_days > 0).then(|| expires_at.saturating_sub(days_to_seconds(policy.notice_days)))
}

fn days_to_seconds(days: i32) -> i64 {
    i64::from(days.max(0)) * SECONDS_PER_DAY
}

/// 00:00:00 UTC on the first day of the month after the one containing `instant`.
fn start_of_next_month(instant: i64) -> i64 {
    let (year, month, _) = civil_from_days(instant.div_euclid(SECONDS_PER_DAY));
    let (year, month) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    days_from_civil(year, month, 1).saturating_mul(SECONDS_PER_DAY)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`,
/// <https://howardhinnant.github.io/date_algorithms.html>): shifting the year to start in March
/// puts the leap day last, so each 400-year era is a fixed 146 097 days.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_from_march = i64::from((month + 9) % 12);
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The inverse of [`days_from_civil`]: `(year, month 1..=12, day 1..=31)`.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    // month is in 1..=12 and day in 1..=31 by construction, so the casts cannot truncate.
    (year, month as u32, day as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn utc(year: i64, month: u32, day: u32, hour: i64, minute: i64, second: i64) -> i64 {
        days_from_civil(year, month, day) * SECONDS_PER_DAY + hour * 3_600 + minute * 60 + second
    }

    fn policy(kind: ExpiryKind, days: i32, notice_days: i32) -> ExpiryPolicy {
        ExpiryPolicy {
            kind: kind as i32,
            days,
            notice_days,
        }
    }

    #[test]
    fn civil_math_matches_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(utc(2000, 3, 1, 0, 0, 0), 951_868_800);
        assert_eq!(utc(2024, 2, 29, 12, 0, 0), 1_709_208_000);
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn never_expires() {
        assert_eq!(expires_at(&policy(ExpiryKind::Never, 30, 7), 1_000), None);
    }

    #[test]
    fn unspecified_kind_keeps_points_rather_than_expiring_them() {
        assert_eq!(
            expires_at(&policy(ExpiryKind::Unspecified, 30, 0), 1_000),
            None
        );
        let unknown = ExpiryPolicy {
            kind: 99,
            days: 1,
            notice_days: 0,
        };
        assert_eq!(expires_at(&unknown, 1_000), None);
    }

    #[test]
    fn after_days_adds_whole_days() {
        let activated = utc(2024, 1, 15, 10, 30, 0);
        assert_eq!(
            expires_at(&policy(ExpiryKind::AfterDays, 365, 0), activated),
            Some(utc(2025, 1, 14, 10, 30, 0))
        );
    }

    #[test]
    fn end_of_month_crosses_december_into_january() {
        // 2024-12-10 + 10 days = 2024-12-20 → expires 2025-01-01 00:00:00.
        let activated = utc(2024, 12, 10, 18, 0, 0);
        assert_eq!(
            expires_at(&policy(ExpiryKind::EndOfMonth, 10, 0), activated),
            Some(utc(2025, 1, 1, 0, 0, 0))
        );
        // 2024-12-10 + 30 days = 2025-01-09 → expires 2025-02-01.
        assert_eq!(
            expires_at(&policy(ExpiryKind::EndOfMonth, 30, 0), activated),
            Some(utc(2025, 2, 1, 0, 0, 0))
        );
    }

    #[test]
    fn end_of_month_in_a_leap_february_includes_the_29th() {
        let end_of_february = policy(ExpiryKind::EndOfMonth, 0, 0);
        assert_eq!(
            expires_at(&end_of_february, utc(2024, 2, 29, 23, 59, 59)),
            Some(utc(2024, 3, 1, 0, 0, 0))
        );
        // 2024-01-31 + 29 days = 2024-02-29 (leap) → March; 2023-01-31 + 29 = 2023-03-01 → April.
        let plus_29 = policy(ExpiryKind::EndOfMonth, 29, 0);
        assert_eq!(
            expires_at(&plus_29, utc(2024, 1, 31, 0, 0, 0)),
            Some(utc(2024, 3, 1, 0, 0, 0))
        );
        assert_eq!(
            expires_at(&plus_29, utc(2023, 1, 31, 0, 0, 0)),
            Some(utc(2023, 4, 1, 0, 0, 0))
        );
    }

    #[test]
    fn end_of_month_on_the_first_second_of_a_month_expires_at_the_end_of_that_month() {
        assert_eq!(
            expires_at(
                &policy(ExpiryKind::EndOfMonth, 0, 0),
                utc(2024, 4, 1, 0, 0, 0)
            ),
            Some(utc(2024, 5, 1, 0, 0, 0))
        );
    }

    #[test]
    fn notice_is_notice_days_before_expiry_or_none() {
        let expiry = utc(2025, 1, 1, 0, 0, 0);
        assert_eq!(
            notice_at(&policy(ExpiryKind::EndOfMonth, 0, 7), expiry),
            Some(utc(2024, 12, 25, 0, 0, 0))
        );
        assert_eq!(
            notice_at(&policy(ExpiryKind::EndOfMonth, 0, 0), expiry),
            None
        );
    }

    #[test]
    fn activation_waits_pending_days() {
        assert_eq!(activates_at(0, 1_000), 1_000);
        assert_eq!(activates_at(14, 1_000), 1_000 + 14 * SECONDS_PER_DAY);
        assert_eq!(activates_at(-3, 1_000), 1_000);
    }

    proptest! {
        #[test]
        fn civil_round_trips(days in -1_000_000i64..1_000_000) {
            let (year, month, day) = civil_from_days(days);
            prop_assert_eq!(days_from_civil(year, month, day), days);
        }

        #[test]
        fn end_of_month_is_the_next_first_after_the_shifted_instant(
            activated in 0i64..4_102_444_800,
            days in 0i32..1_000,
        ) {
            let shifted = activated + i64::from(days) * SECONDS_PER_DAY;
            let expiry = expires_at(&policy(ExpiryKind::EndOfMonth, days, 0), activated)
                .expect("end of month expires");
            prop_assert!(expiry > shifted);
            prop_assert!(expiry - shifted <= 31 * SECONDS_PER_DAY);
            prop_assert_eq!(expiry % SECONDS_PER_DAY, 0);
            let (_, _, day) = civil_from_days(expiry / SECONDS_PER_DAY);
            prop_assert_eq!(day, 1);
            let (y1, m1, _) = civil_from_days(shifted.div_euclid(SECONDS_PER_DAY));
            let (y2, m2, _) = civil_from_days((expiry - 1).div_euclid(SECONDS_PER_DAY));
            prop_assert_eq!((y1, m1), (y2, m2), "last second before expiry is in the same month");
        }
    }
}
