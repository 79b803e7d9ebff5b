//! Rules of a field that is new in a released message: callers built against the release never
//! send it, so its rules break them exactly when they refuse the unset value (`required`,
//! `min_len: 1`, a range without zero, a pattern the empty string does not match, ...).

use std::cmp::Ordering;

use regex::Regex;

use super::compare::{RuleChange, Verdict};
use super::value::RuleScalar;
use super::{FieldRules, Ignore, RuleValue};

/// Boolean rules the zero value always passes (an empty list is unique, enum 0 is defined in
/// proto3, 0.0 is finite); every other boolean rule is a format the empty string fails.
const FLAGS_THE_ZERO_VALUE_PASSES: &[&str] = &["unique", "defined_only", "finite", "strict"];

/// The rules of a new field that refuse a request that does not set it, as `rule unset → value`
/// changes. `tracks_presence`: an unset field of this kind is skipped by every rule but `required`.
pub fn refusals_of_unset(rules: &FieldRules, tracks_presence: bool) -> Vec<RuleChange> {
    let mut refusals = Vec::new();
    if rules.ignore == Ignore::Always {
        return refusals;
    }
    if rules.required {
        refusals.push(change(
            Verdict::Tightened,
            "required false → true".to_owned(),
        ));
    }
    if tracks_presence || rules.ignore == Ignore::IfZeroValue {
        return refusals;
    }
    if !rules.cel.is_empty() {
        let expressions: Vec<String> = rules.cel.iter().map(|cel| format!("{cel:?}")).collect();
        refusals.push(change(
            Verdict::Incomparable,
            format!("cel [] → [{}]", expressions.join(", ")),
        ));
    }
    let Some(typed) = &rules.typed else {
        return refusals;
    };
    for (name, value) in &typed.rules {
        if let Some(verdict) = refuses_zero(name, value) {
            refusals.push(change(verdict, format!("{name} unset → {}", shown(value))));
        }
    }
    refusals
}

/// Whether rule `name` refuses its kind's zero value (`""`, `0`, `false`, an empty list).
fn refuses_zero(name: &str, value: &RuleValue) -> Option<Verdict> {
    let tightened = |refused: bool| refused.then_some(Verdict::Tightened);
    match (name, value) {
        ("min_len" | "min_bytes" | "min_items" | "min_pairs" | "len" | "len_bytes", value) => {
            tightened(single(value).is_some_and(|count| *count != RuleScalar::Int(0)))
        }
        ("max_len" | "max_bytes" | "max_items" | "max_pairs" | "not_contains" | "example", _)
        | ("items" | "keys" | "values", _) => None,
        ("gt" | "gte" | "lt" | "lte", RuleValue::One(bound)) => {
            let zero = zero_like(bound)?;
            let passes = match (name, zero.compare(bound)) {
                (_, None) => return Some(Verdict::Incomparable),
                ("gt", Some(order)) => order == Ordering::Greater,
                ("gte", Some(order)) => order != Ordering::Less,
                ("lt", Some(order)) => order == Ordering::Less,
                (_, Some(order)) => order != Ordering::Greater,
            };
            tightened(!passes)
        }
        ("const", RuleValue::One(constant)) => {
            tightened(zero_like(constant).is_none_or(|zero| zero != *constant))
        }
        ("in", RuleValue::Many(allowed)) => {
            let zero = allowed.first().and_then(zero_like)?;
            tightened(!allowed.contains(&zero))
        }
        ("not_in", RuleValue::Many(denied)) => {
            let zero = denied.first().and_then(zero_like)?;
            tightened(denied.contains(&zero))
        }
        ("prefix" | "suffix" | "contains", RuleValue::One(part)) => tightened(match part {
            RuleScalar::Text(text) => !text.is_empty(),
            RuleScalar::Bytes(bytes) => !bytes.is_empty(),
            _ => true,
        }),
        ("pattern", RuleValue::One(RuleScalar::Text(pattern))) => match Regex::new(pattern) {
            Ok(regex) => tightened(!regex.is_match("")),
            Err(_) => Some(Verdict::Incomparable),
        },
        (flag, RuleValue::One(RuleScalar::Bool(on))) => {
            tightened(*on && !FLAGS_THE_ZERO_VALUE_PASSES.contains(&flag))
        }
        // `well_known_regex`, predefined rules, rules this code does not know.
        _ => Some(Verdict::Incomparable),
    }
}

/// The zero value of `sample`'s kind.
fn zero_like(sample: &RuleScalar) -> Option<RuleScalar> {
    Some(match sample {
        RuleScalar::Bool(_) => RuleScalar::Bool(false),
        RuleScalar::Int(_) => RuleScalar::Int(0),
        RuleScalar::Float(_) => RuleScalar::Float(0.0),
        RuleScalar::Text(_) => RuleScalar::Text(String::new()),
        RuleScalar::Bytes(_) => RuleScalar::Bytes(Vec::new()),
        RuleScalar::Duration(_) | RuleScalar::Timestamp(_) | RuleScalar::Other(_) => return None,
    })
}

fn single(value: &RuleValue) -> Option<&RuleScalar> {
    match value {
        RuleValue::One(scalar) => Some(scalar),
        _ => None,
    }
}

fn shown(value: &RuleValue) -> String {
    match value {
        RuleValue::One(scalar) => scalar.to_string(),
        RuleValue::Many(values) => super::value::list(values),
        RuleValue::Nested(_) => "{…}".to_owned(),
    }
}

fn change(verdict: Verdict, change: String) -> RuleChange {
    RuleChange { verdict, change }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::behaviour::validation::TypedRules;

    fn rules(kind: &str, entries: &[(&str, RuleValue)]) -> FieldRules {
        FieldRules {
            typed: Some(TypedRules {
                kind: kind.to_owned(),
                rules: entries
                    .iter()
                    .map(|(name, value)| ((*name).to_owned(), value.clone()))
                    .collect(),
            }),
            ..FieldRules::default()
        }
    }

    fn refused(rules: &FieldRules) -> Vec<String> {
        refusals_of_unset(rules, false)
            .into_iter()
            .map(|change| format!("{:?}: {}", change.verdict, change.change))
            .collect()
    }

    fn int(value: i128) -> RuleValue {
        RuleValue::One(RuleScalar::Int(value))
    }

    fn text(value: &str) -> RuleValue {
        RuleValue::One(RuleScalar::Text(value.to_owned()))
    }

    #[test]
    fn rules_the_unset_value_passes_break_nobody() {
        for passing in [
            rules("string", &[("max_len", int(64))]),
            rules("string", &[("min_len", int(0))]),
            rules("int32", &[("gte", int(0)), ("lte", int(100))]),
            rules("string", &[("pattern", text("^[a-z]*$"))]),
            rules(
                "enum",
                &[("defined_only", RuleValue::One(RuleScalar::Bool(true)))],
            ),
            rules(
                "repeated",
                &[
                    ("max_items", int(10)),
                    ("unique", RuleValue::One(RuleScalar::Bool(true))),
                ],
            ),
        ] {
            assert_eq!(refused(&passing), Vec::<String>::new(), "{passing:?}");
        }
    }

    #[test]
    fn rules_that_refuse_the_unset_value_are_reported() {
        assert_eq!(
            refused(&rules(
                "string",
                &[("min_len", int(1)), ("max_len", int(64))]
            )),
            ["Tightened: min_len unset → 1"]
        );
        assert_eq!(
            refused(&rules("int64", &[("gt", int(0))])),
            ["Tightened: gt unset → 0"]
        );
        assert_eq!(
            refused(&rules("string", &[("pattern", text("^[A-Z]{3}$"))])),
            [r#"Tightened: pattern unset → "^[A-Z]{3}$""#]
        );
        assert_eq!(
            refused(&rules(
                "string",
                &[("email", RuleValue::One(RuleScalar::Bool(true)))]
            )),
            ["Tightened: email unset → true"]
        );
        assert_eq!(
            refused(&rules("repeated", &[("min_items", int(1))])),
            ["Tightened: min_items unset → 1"]
        );
    }

    #[test]
    fn required_refuses_even_a_field_with_presence_and_ignore_switches_rules_off() {
        let required = FieldRules {
            required: true,
            ..rules("string", &[("min_len", int(1))])
        };
        assert_eq!(
            refusals_of_unset(&required, true)
                .into_iter()
                .map(|change| change.change)
                .collect::<Vec<_>>(),
            ["required false → true"]
        );
        let if_zero = FieldRules {
            ignore: Ignore::IfZeroValue,
            ..rules("string", &[("min_len", int(1))])
        };
        assert!(refused(&if_zero).is_empty());
        let always = FieldRules {
            ignore: Ignore::Always,
            ..required
        };
        assert!(refused(&always).is_empty());
    }
}
