//! Billing periods: where each period of a subscription starts and ends.
//!
//! A subscription's periods are laid out from its *billing anchor*, the instant billing started
//! or restarted (creation, trial end, resumption). Boundary `k` (any integer; boundary 0 is the
//! anchor) is:
//!
//! - **day and week intervals**: `anchor + k × count × 1 or 7 days`, each day exactly
//!   [`MILLIS_PER_DAY`] (UTC has no daylight-saving shifts);
//! - **month and year intervals** (a year is 12 months): the anchor's UTC date moved `k × count`
//!   months, with the anchor's day of month clamped to that month's last day, at the anchor's UTC
//!   time of day.
//!
//! Every boundary is computed from the anchor, never from the previous boundary, so a clamp does
//! not stick: an anchor on Jan 31 bills on Feb 29 (or Feb 28), then on Mar 31 again. Chaining
//! "add one month" instead would drift to the 28th for good after the first February.
//!
//! A period is the half-open interval `[boundary k, boundary k + 1)`: `start ≤ t < end`, so every
//! instant belongs to exactly one period and consecutive periods share their edge.

use commerce_api::commerce::subscriptions::v1::BillingInterval;
use jiff::Timestamp;
use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;

use crate::MILLIS_PER_DAY;

/// Smallest and largest `interval_count` a plan version may have (`PlanVersion.interval_count`).
pub const INTERVAL_COUNT_RANGE: std::ops::RangeInclusive<i32> = 1..=365;

/// One billing period, `[start_ms, end_ms)` in unix milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Period {
    /// First instant of the period (inclusive).
    pub start_ms: i64,
    /// First instant after the period (exclusive); the next period starts here.
    pub end_ms: i64,
}

impl Period {
    /// Length of the period in milliseconds.
    pub fn length_ms(&self) -> i64 {
        self.end_ms - self.start_ms
    }

    /// Whether `time_ms` falls in the period (`start ≤ time < end`).
    pub fn contains(&self, time_ms: i64) -> bool {
        self.start_ms <= time_ms && time_ms < self.end_ms
    }
}

/// Why a period could not be computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PeriodError {
    /// The interval is `BILLING_INTERVAL_UNSPECIFIED`; the contract forbids it on a plan.
    #[error("billing interval is unspecified")]
    UnspecifiedInterval,
    /// The interval count is outside [`INTERVAL_COUNT_RANGE`].
    #[error("interval count {0} is outside 1..=365")]
    IntervalCountOutOfRange(i32),
    /// An instant, given or computed, is outside the calendar range the rules support (years
    /// -9999..=9999).
    #[error("time is outside the supported calendar range (years -9999..=9999)")]
    OutOfRange,
}

/// End of the period that starts at `start_ms`: the first boundary of `anchor_ms`'s schedule
/// after `start_ms`.
///
/// `start_ms` is normally a boundary (the anchor or a previous period's end), and then the result
/// is `start_ms` plus `count` intervals with the month-end clamping of the [module docs](self). A
/// `start_ms` between boundaries still gets the end of the period containing it, so the result is
/// always a boundary and always after `start_ms`.
pub fn period_end(
    anchor_ms: i64,
    start_ms: i64,
    interval: BillingInterval,
    count: i32,
) -> Result<i64, PeriodError> {
    Ok(period_containing(anchor_ms, start_ms, interval, count)?.end_ms)
}

/// The period of `anchor_ms`'s schedule that contains `time_ms`. Times before the anchor get the
/// schedule extended backwards by the same rule.
pub fn period_containing(
    anchor_ms: i64,
    time_ms: i64,
    interval: BillingInterval,
    count: i32,
) -> Result<Period, PeriodError> {
    if !INTERVAL_COUNT_RANGE.contains(&count) {
        return Err(PeriodError::IntervalCountOutOfRange(count));
    }
    let count = i64::from(count);
    // Converting both instants first bounds them to ±10 000 years, so the arithmetic below cannot
    // overflow an i64.
    let anchor = utc_datetime(anchor_ms)?;
    utc_datetime(time_ms)?;
    match interval {
        BillingInterval::Day => Ok(fixed_period(anchor_ms, time_ms, count * MILLIS_PER_DAY)),
        BillingInterval::Week => Ok(fixed_period(anchor_ms, time_ms, count * 7 * MILLIS_PER_DAY)),
        BillingInterval::Month => month_period(anchor, time_ms, count),
        BillingInterval::Year => month_period(anchor, time_ms, count * 12),
        BillingInterval::Unspecified => Err(PeriodError::UnspecifiedInterval),
    }
}

/// The period after `current`: it starts where `current` ends and ends at the next boundary of
/// `anchor_ms`'s schedule, so renewals are contiguous by construction.
pub fn next_period(
    anchor_ms: i64,
    current: Period,
    interval: BillingInterval,
    count: i32,
) -> Result<Period, PeriodError> {
    Ok(Period {
        start_ms: current.end_ms,
        end_ms: period_end(anchor_ms, current.end_ms, interval, count)?,
    })
}

/// Periods of a fixed length `step_ms`: boundary `k` is `anchor + k × step`.
fn fixed_period(anchor_ms: i64, time_ms: i64, step_ms: i64) -> Period {
    let index = (time_ms - anchor_ms).div_euclid(step_ms);
    let start_ms = anchor_ms + index * step_ms;
    Period {
        start_ms,
        end_ms: start_ms + step_ms,
    }
}

/// Periods of `step` calendar months from `anchor`.
fn month_period(anchor: DateTime, time_ms: i64, step: i64) -> Result<Period, PeriodError> {
    let time = utc_datetime(time_ms)?;
    let months_apart = (i64::from(time.year()) - i64::from(anchor.year())) * 12
        + (i64::from(time.month()) - i64::from(anchor.month()));
    // Boundary k falls in calendar month `anchor's month + k × step`. The last boundary in a month
    // no later than `time`'s is index floor(months_apart / step); when that boundary is in
    // `time`'s own month but later in it (a later day or time of day), the period containing
    // `time` is the one before.
    let mut index = months_apart.div_euclid(step);
    let mut start_ms = month_boundary(anchor, index * step)?;
    if start_ms > time_ms {
        index -= 1;
        start_ms = month_boundary(anchor, index * step)?;
    }
    Ok(Period {
        start_ms,
        end_ms: month_boundary(anchor, (index + 1) * step)?,
    })
}

/// The anchor moved `months` calendar months: same UTC time of day, day of month clamped to the
/// target month's last day.
fn month_boundary(anchor: DateTime, months: i64) -> Result<i64, PeriodError> {
    let month_index = i64::from(anchor.year()) * 12 + i64::from(anchor.month() - 1) + months;
    let year = i16::try_from(month_index.div_euclid(12)).map_err(|_| PeriodError::OutOfRange)?;
    // rem_euclid(12) + 1 is in 1..=12, so it fits an i8.
    let month = (month_index.rem_euclid(12) + 1) as i8;
    let days_in_month = Date::new(year, month, 1)
        .map_err(|_| PeriodError::OutOfRange)?
        .days_in_month();
    let date = Date::new(year, month, anchor.day().min(days_in_month))
        .map_err(|_| PeriodError::OutOfRange)?;
    let instant = TimeZone::UTC
        .to_timestamp(date.to_datetime(anchor.time()))
        .map_err(|_| PeriodError::OutOfRange)?;
    Ok(instant.as_millisecond())
}

fn utc_datetime(time_ms: i64) -> Result<DateTime, PeriodError> {
    let instant = Timestamp::from_millisecond(time_ms).map_err(|_| PeriodError::OutOfRange)?;
    Ok(TimeZone::UTC.to_datetime(instant))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use BillingInterval::{Day, Month, Week, Year};

    /// Unix ms of a UTC date and time.
    fn utc(year: i16, month: i8, day: i8, hour: i8, minute: i8) -> i64 {
        let datetime = jiff::civil::date(year, month, day).at(hour, minute, 0, 0);
        TimeZone::UTC
            .to_timestamp(datetime)
            .expect("test dates are in range")
            .as_millisecond()
    }

    /// `(year, month, day, hour, minute)` of unix ms, for readable assertions.
    fn civil(time_ms: i64) -> (i16, i8, i8, i8, i8) {
        let dt = utc_datetime(time_ms).expect("in range");
        (dt.year(), dt.month(), dt.day(), dt.hour(), dt.minute())
    }

    #[test]
    fn day_and_week_periods_add_whole_days_from_the_start() {
        let anchor = utc(2024, 3, 9, 14, 30);
        assert_eq!(
            period_end(anchor, anchor, Day, 10),
            Ok(anchor + 10 * MILLIS_PER_DAY)
        );
        assert_eq!(
            period_end(anchor, anchor, Week, 2),
            Ok(anchor + 14 * MILLIS_PER_DAY)
        );
        let second = anchor + 14 * MILLIS_PER_DAY;
        assert_eq!(
            civil(period_end(anchor, second, Week, 2).unwrap()),
            (2024, 4, 6, 14, 30)
        );
    }

    #[test]
    fn jan_31_clamps_to_feb_29_in_a_leap_year_then_returns_to_mar_31() {
        let anchor = utc(2024, 1, 31, 9, 15);
        let february_end = period_end(anchor, anchor, Month, 1).unwrap();
        assert_eq!(civil(february_end), (2024, 2, 29, 9, 15));
        let march_end = period_end(anchor, february_end, Month, 1).unwrap();
        assert_eq!(civil(march_end), (2024, 3, 31, 9, 15));
    }

    #[test]
    fn jan_31_clamps_to_feb_28_in_a_common_year() {
        let anchor = utc(2023, 1, 31, 0, 0);
        let february_end = period_end(anchor, anchor, Month, 1).unwrap();
        assert_eq!(civil(february_end), (2023, 2, 28, 0, 0));
        assert_eq!(
            civil(period_end(anchor, february_end, Month, 1).unwrap()),
            (2023, 3, 31, 0, 0)
        );
    }

    #[test]
    fn twelve_monthly_periods_from_jan_31_are_contiguous_and_end_on_the_anchor_day_or_month_end() {
        let anchor = utc(2024, 1, 31, 23, 59);
        let expected_ends = [
            (2024, 2, 29),
            (2024, 3, 31),
            (2024, 4, 30),
            (2024, 5, 31),
            (2024, 6, 30),
            (2024, 7, 31),
            (2024, 8, 31),
            (2024, 9, 30),
            (2024, 10, 31),
            (2024, 11, 30),
            (2024, 12, 31),
            (2025, 1, 31),
        ];
        let mut period = period_containing(anchor, anchor, Month, 1).unwrap();
        assert_eq!(period.start_ms, anchor);
        for (index, (year, month, day)) in expected_ends.into_iter().enumerate() {
            assert_eq!(
                civil(period.end_ms),
                (year, month, day, 23, 59),
                "end of period {index}"
            );
            let next = next_period(anchor, period, Month, 1).unwrap();
            assert_eq!(next.start_ms, period.end_ms, "period {index} is contiguous");
            period = next;
        }
    }

    #[test]
    fn yearly_periods_from_feb_29_end_on_feb_28_until_the_next_leap_year() {
        let anchor = utc(2024, 2, 29, 12, 0);
        let mut period = period_containing(anchor, anchor, Year, 1).unwrap();
        let mut ends = Vec::new();
        for _ in 0..4 {
            ends.push(civil(period.end_ms));
            period = next_period(anchor, period, Year, 1).unwrap();
        }
        assert_eq!(
            ends,
            [
                (2025, 2, 28, 12, 0),
                (2026, 2, 28, 12, 0),
                (2027, 2, 28, 12, 0),
                (2028, 2, 29, 12, 0),
            ]
        );
    }

    #[test]
    fn quarterly_periods_step_three_months_with_clamping() {
        let anchor = utc(2023, 11, 30, 8, 0);
        let end = period_end(anchor, anchor, Month, 3).unwrap();
        assert_eq!(civil(end), (2024, 2, 29, 8, 0));
        assert_eq!(
            civil(period_end(anchor, end, Month, 3).unwrap()),
            (2024, 5, 30, 8, 0)
        );
    }

    #[test]
    fn a_time_on_a_boundary_starts_that_period() {
        let anchor = utc(2024, 1, 31, 0, 0);
        let boundary = utc(2024, 2, 29, 0, 0);
        let period = period_containing(anchor, boundary, Month, 1).unwrap();
        assert_eq!(period.start_ms, boundary);
        assert_eq!(civil(period.end_ms), (2024, 3, 31, 0, 0));
        let just_before = period_containing(anchor, boundary - 1, Month, 1).unwrap();
        assert_eq!(just_before.start_ms, anchor);
        assert_eq!(just_before.end_ms, boundary);
    }

    #[test]
    fn a_time_early_in_the_boundary_month_belongs_to_the_previous_period() {
        // The March boundary is Mar 15 10:00; Mar 15 09:00 is still in the February period.
        let anchor = utc(2024, 1, 15, 10, 0);
        let period = period_containing(anchor, utc(2024, 3, 15, 9, 0), Month, 1).unwrap();
        assert_eq!(civil(period.start_ms), (2024, 2, 15, 10, 0));
        assert_eq!(civil(period.end_ms), (2024, 3, 15, 10, 0));
    }

    #[test]
    fn times_before_the_anchor_extend_the_schedule_backwards() {
        let anchor = utc(2024, 3, 31, 0, 0);
        let period = period_containing(anchor, utc(2024, 2, 10, 0, 0), Month, 1).unwrap();
        assert_eq!(civil(period.start_ms), (2024, 1, 31, 0, 0));
        assert_eq!(civil(period.end_ms), (2024, 2, 29, 0, 0));
    }

    #[test]
    fn invalid_plans_are_rejected() {
        let anchor = utc(2024, 1, 1, 0, 0);
        assert_eq!(
            period_end(anchor, anchor, BillingInterval::Unspecified, 1),
            Err(PeriodError::UnspecifiedInterval)
        );
        assert_eq!(
            period_end(anchor, anchor, Month, 0),
            Err(PeriodError::IntervalCountOutOfRange(0))
        );
        assert_eq!(
            period_end(anchor, anchor, Day, 366),
            Err(PeriodError::IntervalCountOutOfRange(366))
        );
        assert_eq!(
            period_end(i64::MAX, i64::MAX, Day, 1),
            Err(PeriodError::OutOfRange)
        );
    }

    fn any_interval() -> impl Strategy<Value = BillingInterval> {
        prop_oneof![Just(Day), Just(Week), Just(Month), Just(Year)]
    }

    // Anchors and times between 1900 and 2200.
    const EARLIEST: i64 = -2_208_988_800_000;
    const LATEST: i64 = 7_258_118_400_000;

    proptest! {
        #[test]
        fn the_containing_period_contains_the_time_and_its_edges_are_boundaries(
            anchor in EARLIEST..LATEST,
            time in EARLIEST..LATEST,
            interval in any_interval(),
            count in 1i32..=36,
        ) {
            let period = period_containing(anchor, time, interval, count).unwrap();
            prop_assert!(period.contains(time));
            // The start is a boundary: the period it starts ends where this one does.
            prop_assert_eq!(period_end(anchor, period.start_ms, interval, count), Ok(period.end_ms));
            let next = next_period(anchor, period, interval, count).unwrap();
            prop_assert_eq!(next.start_ms, period.end_ms);
            prop_assert_eq!(period_containing(anchor, period.end_ms, interval, count), Ok(next));
        }

        #[test]
        fn month_boundaries_keep_the_anchor_day_clamped_and_its_time_of_day(
            anchor in EARLIEST..LATEST,
            time in EARLIEST..LATEST,
            count in 1i32..=24,
        ) {
            let period = period_containing(anchor, time, Month, count).unwrap();
            let anchor_dt = utc_datetime(anchor).unwrap();
            for edge in [period.start_ms, period.end_ms] {
                let dt = utc_datetime(edge).unwrap();
                prop_assert_eq!(dt.time(), anchor_dt.time());
                prop_assert_eq!(dt.day(), anchor_dt.day().min(dt.date().days_in_month()));
            }
            let count = i64::from(count);
            prop_assert!(period.length_ms() >= count * 28 * MILLIS_PER_DAY);
            prop_assert!(period.length_ms() <= count * 31 * MILLIS_PER_DAY);
        }
    }
}
