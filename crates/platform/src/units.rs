//! Conversions between the contract's types and the integers the services compute with: times
//! are unix milliseconds (`i64`, UTC; negative before 1970), money is `i64` minor units of one
//! currency. One place for them, so every service rounds and defaults the same way.

use commerce_api::commerce::common::v1::Money;
use prost_types::Timestamp;

/// The protobuf timestamp of unix ms `ms` (floored to whole seconds plus non-negative nanos, as
/// the protobuf JSON mapping requires, also before 1970).
pub fn timestamp_of_ms(ms: i64) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// The protobuf timestamp of unix seconds `seconds`.
pub fn timestamp_of_seconds(seconds: i64) -> Timestamp {
    Timestamp { seconds, nanos: 0 }
}

/// The wall clock in unix ms (0 before 1970, saturating far after).
pub fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

/// Unix ms of `time`, truncating below a millisecond; saturates far outside the contract's range.
pub fn ms_of_timestamp(time: &Timestamp) -> i64 {
    time.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(time.nanos) / 1_000_000)
}

/// Unix ms of an optional timestamp; 0 (the epoch) when unset.
pub fn ms_or_epoch(time: &Option<Timestamp>) -> i64 {
    time.as_ref().map_or(0, ms_of_timestamp)
}

/// Unix ms of an optional timestamp; `None` when unset.
pub fn ms_of(time: &Option<Timestamp>) -> Option<i64> {
    time.as_ref().map(ms_of_timestamp)
}

/// `minor` units of `currency`, as the contract's optional `Money` field.
pub fn money(currency: &str, minor: i64) -> Option<Money> {
    Some(Money {
        currency_code: currency.to_owned(),
        amount_minor: minor,
    })
}

/// The minor units of an optional amount; 0 when unset.
pub fn minor(money: &Option<Money>) -> i64 {
    money.as_ref().map_or(0, |money| money.amount_minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_round_trip_through_timestamps_including_before_1970() {
        for ms in [0, 1, 999, 1000, 1_700_000_000_123, -1, -999, -1000, -1001] {
            let time = timestamp_of_ms(ms);
            assert!((0..1_000_000_000).contains(&time.nanos), "{ms}: {time:?}");
            assert_eq!(ms_of_timestamp(&time), ms, "{time:?}");
        }
        assert_eq!(timestamp_of_ms(-1).seconds, -1);
        assert_eq!(ms_or_epoch(&None), 0);
        assert_eq!(ms_of(&None), None);
    }

    #[test]
    fn extreme_timestamps_saturate_instead_of_overflowing() {
        let far = Timestamp {
            seconds: i64::MAX,
            nanos: 0,
        };
        assert_eq!(ms_of_timestamp(&far), i64::MAX);
    }

    #[test]
    fn money_and_minor_units_agree() {
        let amount = money("USD", 1250);
        assert_eq!(minor(&amount), 1250);
        assert_eq!(amount.unwrap().currency_code, "USD");
        assert_eq!(minor(&None), 0);
    }
}
