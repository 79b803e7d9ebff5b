//! Store hours in the store's own time zone (IANA, from the bundled tz database, so a machine
//! without tzdata answers the same).

use commerce_api::commerce::checkout::v1::OpeningHours;
use commerce_api::commerce::common::v1::DayOfWeek;
use jiff::Timestamp;
use jiff::tz::TimeZone;

/// The zone named `name`, if the tz database knows it.
pub fn zone(name: &str) -> Option<TimeZone> {
    TimeZone::get(name).ok()
}

/// Minutes in a week.
const WEEK: i32 = 7 * 1440;

/// Whether a store with `hours` in `zone` is open at `unix_ms`. An interval whose close is at or
/// before its open runs past midnight into the next day.
pub fn is_open(hours: &[OpeningHours], zone: &TimeZone, unix_ms: i64) -> bool {
    let Ok(instant) = Timestamp::from_millisecond(unix_ms) else {
        return false;
    };
    let local = zone.to_datetime(instant);
    // Minutes since Monday 00:00 local time.
    let weekday = i32::from(local.weekday().to_monday_zero_offset());
    let now = weekday * 1440 + i32::from(local.hour()) * 60 + i32::from(local.minute());
    hours.iter().any(|interval| {
        let Some(day) = monday_offset(interval.day) else {
            return false;
        };
        let open = day * 1440 + interval.open_minute;
        let mut close = day * 1440 + interval.close_minute;
        if interval.close_minute <= interval.open_minute {
            close += 1440;
        }
        // Check this week's interval and last week's (an interval crossing Sunday midnight).
        [now, now + WEEK].iter().any(|&at| open <= at && at < close)
    })
}

/// Days after Monday of a contract `DayOfWeek`.
fn monday_offset(day: i32) -> Option<i32> {
    match DayOfWeek::try_from(day).ok()? {
        DayOfWeek::Monday => Some(0),
        DayOfWeek::Tuesday => Some(1),
        DayOfWeek::Wednesday => Some(2),
        DayOfWeek::Thursday => Some(3),
        DayOfWeek::Friday => Some(4),
        DayOfWeek::Saturday => Some(5),
        DayOfWeek::Sunday => Some(6),
        DayOfWeek::Unspecified => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hours(day: DayOfWeek, open: i32, close: i32) -> OpeningHours {
        OpeningHours {
            day: day as i32,
            open_minute: open,
            close_minute: close,
        }
    }

    /// Unix ms of a local wall-clock time in `zone`.
    fn at(zone: &str, civil: &str) -> i64 {
        civil
            .parse::<jiff::civil::DateTime>()
            .unwrap()
            .to_zoned_datetime(TimeZone::get(zone).unwrap())
            .unwrap()
            .timestamp()
            .as_millisecond()
    }

    #[test]
    fn open_in_the_stores_own_zone_not_utc() {
        let ny = zone("America/New_York").unwrap();
        // 2026-11-23 is a Monday.
        let week = [hours(DayOfWeek::Monday, 7 * 60, 22 * 60)];
        assert!(is_open(
            &week,
            &ny,
            at("America/New_York", "2026-11-23T07:00")
        ));
        assert!(is_open(
            &week,
            &ny,
            at("America/New_York", "2026-11-23T21:59")
        ));
        assert!(!is_open(
            &week,
            &ny,
            at("America/New_York", "2026-11-23T22:00")
        ));
        assert!(!is_open(
            &week,
            &ny,
            at("America/New_York", "2026-11-23T06:59")
        ));
        // 23:30 UTC on Monday is 18:30 in New York: open, though UTC says late.
        assert!(is_open(&week, &ny, at("UTC", "2026-11-23T23:30")));
    }

    #[test]
    fn an_interval_can_cross_midnight_and_the_end_of_the_week() {
        let utc = zone("UTC").unwrap();
        let late = [hours(DayOfWeek::Sunday, 20 * 60, 2 * 60)];
        assert!(is_open(&late, &utc, at("UTC", "2026-11-29T23:00"))); // Sunday
        assert!(is_open(&late, &utc, at("UTC", "2026-11-30T01:59"))); // Monday morning
        assert!(!is_open(&late, &utc, at("UTC", "2026-11-30T02:00")));
        assert!(!is_open(&late, &utc, at("UTC", "2026-11-29T19:59")));
    }

    #[test]
    fn unknown_zones_are_refused_and_no_hours_means_closed() {
        assert!(zone("Mars/Olympus_Mons").is_none());
        let utc = zone("UTC").unwrap();
        assert!(!is_open(&[], &utc, 0));
    }
}
