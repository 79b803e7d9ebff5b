//! One value of a validation rule (a bound, a length, an allowed value), read out of whichever
//! descriptor pool it came from so values of the released and the working-tree image compare.

use std::cmp::Ordering;
use std::fmt;

use prost_reflect::{DynamicMessage, ReflectMessage as _, Value};

const NANOS_PER_SECOND: i128 = 1_000_000_000;

/// A rule value. Numbers of every integer kind widen to `Int`, so `int32` and `uint64` bounds
/// compare; durations and timestamps become nanoseconds so `gt: {seconds: 1}` compares too.
#[derive(Debug, Clone, PartialEq)]
pub enum RuleScalar {
    Bool(bool),
    Int(i128),
    Float(f64),
    Text(String),
    Bytes(Vec<u8>),
    /// A `google.protobuf.Duration`, in nanoseconds.
    Duration(i128),
    /// A `google.protobuf.Timestamp`, in nanoseconds since the Unix epoch.
    Timestamp(i128),
    /// Any other message (e.g. a `FieldMask` const): compared for equality only.
    Other(String),
}

impl RuleScalar {
    /// Reads a single (non-list) option value.
    pub fn read(value: &Value) -> Self {
        match value {
            Value::Bool(flag) => RuleScalar::Bool(*flag),
            Value::I32(number) => RuleScalar::Int((*number).into()),
            Value::I64(number) => RuleScalar::Int((*number).into()),
            Value::U32(number) => RuleScalar::Int((*number).into()),
            Value::U64(number) => RuleScalar::Int((*number).into()),
            Value::EnumNumber(number) => RuleScalar::Int((*number).into()),
            Value::F32(number) => RuleScalar::Float((*number).into()),
            Value::F64(number) => RuleScalar::Float(*number),
            Value::String(text) => RuleScalar::Text(text.clone()),
            Value::Bytes(bytes) => RuleScalar::Bytes(bytes.to_vec()),
            Value::Message(message) => Self::read_message(message),
            other => RuleScalar::Other(format!("{other:?}")),
        }
    }

    fn read_message(message: &DynamicMessage) -> Self {
        let seconds_and_nanos = || {
            let seconds = message
                .get_field_by_name("seconds")
                .and_then(|value| value.as_i64())
                .unwrap_or(0);
            let nanos = message
                .get_field_by_name("nanos")
                .and_then(|value| value.as_i32())
                .unwrap_or(0);
            i128::from(seconds) * NANOS_PER_SECOND + i128::from(nanos)
        };
        match message.descriptor().full_name() {
            "google.protobuf.Duration" => RuleScalar::Duration(seconds_and_nanos()),
            "google.protobuf.Timestamp" => RuleScalar::Timestamp(seconds_and_nanos()),
            _ => RuleScalar::Other(format!("{message:?}")),
        }
    }

    /// Order of two values of the same kind; `None` across kinds or for NaN.
    pub fn compare(&self, other: &Self) -> Option<Ordering> {
        use RuleScalar::*;
        match (self, other) {
            (Bool(a), Bool(b)) => Some(a.cmp(b)),
            (Int(a), Int(b)) | (Duration(a), Duration(b)) | (Timestamp(a), Timestamp(b)) => {
                Some(a.cmp(b))
            }
            (Float(a), Float(b)) => a.partial_cmp(b),
            (Text(a), Text(b)) => Some(a.cmp(b)),
            (Bytes(a), Bytes(b)) => Some(a.cmp(b)),
            _ => None,
        }
    }

    /// The next integer (for turning an exclusive integer bound into an inclusive one).
    pub fn shifted(&self, by: i128) -> Self {
        match self {
            RuleScalar::Int(number) => RuleScalar::Int(number + by),
            other => other.clone(),
        }
    }

    pub fn is_integer(&self) -> bool {
        matches!(self, RuleScalar::Int(_))
    }
}

impl fmt::Display for RuleScalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleScalar::Bool(flag) => write!(f, "{flag}"),
            RuleScalar::Int(number) => write!(f, "{number}"),
            RuleScalar::Float(number) => write!(f, "{number}"),
            RuleScalar::Text(text) => write!(f, "{text:?}"),
            RuleScalar::Bytes(bytes) => write!(f, "b\"{}\"", bytes.escape_ascii()),
            RuleScalar::Duration(nanos) => write_seconds(f, *nanos),
            RuleScalar::Timestamp(nanos) => match jiff::Timestamp::from_nanosecond(*nanos) {
                Ok(time) => write!(f, "{time}"),
                Err(_) => write_seconds(f, *nanos),
            },
            RuleScalar::Other(text) => f.write_str(text),
        }
    }
}

/// Protobuf JSON form of a duration: `1s`, `1.5s`, `-0.25s`.
fn write_seconds(f: &mut fmt::Formatter<'_>, nanos: i128) -> fmt::Result {
    let sign = if nanos < 0 { "-" } else { "" };
    let magnitude = nanos.unsigned_abs();
    let whole = magnitude / NANOS_PER_SECOND.unsigned_abs();
    let fraction = magnitude % NANOS_PER_SECOND.unsigned_abs();
    if fraction == 0 {
        write!(f, "{sign}{whole}s")
    } else {
        let digits = format!("{fraction:09}");
        write!(f, "{sign}{whole}.{}s", digits.trim_end_matches('0'))
    }
}

/// `[a, b, c]`.
pub fn list(values: &[RuleScalar]) -> String {
    let items: Vec<String> = values.iter().map(ToString::to_string).collect();
    format!("[{}]", items.join(", "))
}

#[cfg(test)]
mod tests {
    use super::RuleScalar;

    #[test]
    fn durations_print_in_protobuf_json_form() {
        assert_eq!(RuleScalar::Duration(1_500_000_000).to_string(), "1.5s");
        assert_eq!(RuleScalar::Duration(2_000_000_000).to_string(), "2s");
        assert_eq!(RuleScalar::Duration(-250_000_000).to_string(), "-0.25s");
    }

    #[test]
    fn values_of_different_kinds_do_not_compare() {
        assert!(
            RuleScalar::Int(1)
                .compare(&RuleScalar::Text("1".into()))
                .is_none()
        );
        assert!(
            RuleScalar::Float(f64::NAN)
                .compare(&RuleScalar::Float(1.0))
                .is_none()
        );
    }
}
