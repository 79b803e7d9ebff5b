//! Rule-by-rule comparison of released and working-tree validation rules.
//!
//! Every rule name has a *meaning* (a lower bound, an allow-list, an opaque pattern, ...) and one
//! function per meaning decides whether the new value accepts fewer values than the old one
//! (tightened), cannot be compared with it (incomparable), or accepts at least as much
//! (compatible, not reported). Rules are data: a new protovalidate rule needs one line in
//! [`MEANINGS`], and an unknown one is still compared as an opaque value.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use super::value::{RuleScalar, list};
use super::{FieldRules, Ignore, MessageRules, RuleValue};

/// How a changed rule affects callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Some value accepted by the release is refused now.
    Tightened,
    /// The rules differ and neither provably accepts more (a changed pattern or CEL expression).
    Incomparable,
}

/// One reported rule change, `max_len 64 → 8`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleChange {
    pub verdict: Verdict,
    pub change: String,
}

/// What a rule says about the values it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Meaning {
    /// Exactly this value (`const`, `len`): any new or changed value refuses the old ones.
    Exact,
    /// A minimum count (`min_len`, `min_items`): raising it tightens; unset is 0.
    AtLeast,
    /// A maximum (`max_len`, `max_items`, `within`): lowering or adding it tightens.
    AtMost,
    /// `in`: dropping a value, or adding the list, tightens.
    AllowList,
    /// `not_in`: adding a value tightens.
    DenyList,
    /// `prefix`: tightened unless the old prefix still starts with the new one.
    Prefix,
    /// `suffix`: tightened unless the old suffix still ends with the new one.
    Suffix,
    /// `contains`: tightened unless the old substring still contains the new one.
    Contains,
    /// `not_contains`: tightened unless the new forbidden substring contains the old one.
    NotContains,
    /// A flag that restricts when true (`unique`, `defined_only`, `email`, `uuid`, ...).
    Restriction,
    /// `strict` of `well_known_regex`: true when unset; turning it on tightens.
    StrictByDefault,
    /// Cannot be compared (`pattern`, `well_known_regex`, predefined rules): new is tightened,
    /// changed is incomparable, removed is compatible.
    Opaque,
    /// Rules of the elements (`repeated.items`, `map.keys`, `map.values`), compared recursively.
    Nested,
    /// No effect on what is accepted (`example`).
    Documentation,
}

/// The rule names whose meaning is not "a boolean restriction" or "opaque" (the defaults for
/// booleans and everything else).
const MEANINGS: &[(&str, Meaning)] = &[
    ("const", Meaning::Exact),
    ("len", Meaning::Exact),
    ("len_bytes", Meaning::Exact),
    ("min_len", Meaning::AtLeast),
    ("min_bytes", Meaning::AtLeast),
    ("min_items", Meaning::AtLeast),
    ("min_pairs", Meaning::AtLeast),
    ("max_len", Meaning::AtMost),
    ("max_bytes", Meaning::AtMost),
    ("max_items", Meaning::AtMost),
    ("max_pairs", Meaning::AtMost),
    ("within", Meaning::AtMost),
    ("in", Meaning::AllowList),
    ("not_in", Meaning::DenyList),
    ("prefix", Meaning::Prefix),
    ("suffix", Meaning::Suffix),
    ("contains", Meaning::Contains),
    ("not_contains", Meaning::NotContains),
    ("strict", Meaning::StrictByDefault),
    ("pattern", Meaning::Opaque),
    ("well_known_regex", Meaning::Opaque),
    ("items", Meaning::Nested),
    ("keys", Meaning::Nested),
    ("values", Meaning::Nested),
    ("example", Meaning::Documentation),
];

/// Bound rules, compared together (`gt: 5` and `gte: 6` are the same integer bound).
const BOUND_RULES: &[&str] = &["gt", "gte", "lt", "lte"];

fn meaning_of(name: &str, sample: &RuleValue) -> Meaning {
    if let Some((_, meaning)) = MEANINGS.iter().find(|(rule, _)| *rule == name) {
        return *meaning;
    }
    match sample {
        RuleValue::One(RuleScalar::Bool(_)) => Meaning::Restriction,
        RuleValue::Nested(_) => Meaning::Nested,
        _ => Meaning::Opaque,
    }
}

/// Compares the rules of one field. `tracks_presence`: the field has explicit presence (a
/// message, `optional`, or oneof member), so its rules never applied to an unset value anyway.
pub fn compare_field(old: &FieldRules, new: &FieldRules, tracks_presence: bool) -> Vec<RuleChange> {
    let mut changes = Vec::new();
    compare_field_at("", old, new, tracks_presence, &mut changes);
    changes
}

fn compare_field_at(
    prefix: &str,
    old: &FieldRules,
    new: &FieldRules,
    tracks_presence: bool,
    changes: &mut Vec<RuleChange>,
) {
    match (old.ignore, new.ignore) {
        // Nothing is checked any more, not even `required`.
        (_, Ignore::Always) => return,
        // Nothing was checked: whatever is checked now is new.
        (Ignore::Always, now) => {
            if !new.is_empty() {
                changes.push(tightened(format!(
                    "{prefix}ignore {} → {}",
                    Ignore::Always.name(),
                    now.name()
                )));
            }
            return;
        }
        // The rules now apply to the zero value as well.
        (Ignore::IfZeroValue, Ignore::Unspecified) if !tracks_presence && new.has_value_rules() => {
            changes.push(tightened(format!(
                "{prefix}ignore {} → {}",
                Ignore::IfZeroValue.name(),
                Ignore::Unspecified.name()
            )));
        }
        _ => {}
    }
    if new.required && !old.required {
        changes.push(tightened(format!("{prefix}required false → true")));
    }
    if new.cel.difference(&old.cel).next().is_some() {
        changes.push(incomparable(format!(
            "{prefix}cel {} → {}",
            text_list(old.cel.iter()),
            text_list(new.cel.iter())
        )));
    }
    match (&old.typed, &new.typed) {
        (_, None) => {}
        (None, Some(now)) => {
            compare_rules(prefix, &BTreeMap::new(), &now.rules, changes);
        }
        (Some(before), Some(now)) if before.kind == now.kind => {
            compare_rules(prefix, &before.rules, &now.rules, changes);
        }
        (Some(before), Some(now)) => changes.push(incomparable(format!(
            "{prefix}{} rules → {} rules",
            before.kind, now.kind
        ))),
    }
    compare_rules(prefix, &old.other, &new.other, changes);
}

/// Compares two sets of rules of the same kind, by rule name.
fn compare_rules(
    prefix: &str,
    old: &BTreeMap<String, RuleValue>,
    new: &BTreeMap<String, RuleValue>,
    changes: &mut Vec<RuleChange>,
) {
    compare_bounds(prefix, old, new, changes);
    let names: BTreeSet<&String> = old
        .keys()
        .chain(new.keys())
        .filter(|name| !BOUND_RULES.contains(&name.as_str()))
        .collect();
    for name in names {
        let (before, now) = (old.get(name), new.get(name));
        let Some(sample) = now.or(before) else {
            continue;
        };
        let label = format!("{prefix}{name}");
        let meaning = meaning_of(name, sample);
        if meaning == Meaning::Nested {
            let empty = FieldRules::default();
            let nested = |value: Option<&RuleValue>| match value {
                Some(RuleValue::Nested(rules)) => (**rules).clone(),
                _ => empty.clone(),
            };
            // Elements of a list or map are always "set": their rules apply to every element.
            compare_field_at(
                &format!("{label}."),
                &nested(before),
                &nested(now),
                false,
                changes,
            );
            continue;
        }
        if let Some(verdict) = judge(meaning, before, now) {
            changes.push(RuleChange {
                verdict,
                change: format!("{label} {} → {}", shown(before), shown(now)),
            });
        }
    }
}

/// The verdict on one rule, `None` when the new rule accepts at least what the old one did.
fn judge(meaning: Meaning, old: Option<&RuleValue>, new: Option<&RuleValue>) -> Option<Verdict> {
    let new = new?;
    match meaning {
        Meaning::Exact => (old != Some(new)).then_some(Verdict::Tightened),
        Meaning::AtLeast => {
            let zero = RuleScalar::Int(0);
            let before = old.and_then(single).unwrap_or(&zero);
            ordered(single(new)?, before, Ordering::Greater)
        }
        Meaning::AtMost => match old.and_then(single) {
            None => Some(Verdict::Tightened),
            Some(before) => ordered(single(new)?, before, Ordering::Less),
        },
        Meaning::AllowList => {
            let (before, now) = (many(old), many(Some(new)));
            let narrowed = before.is_empty() || before.iter().any(|value| !now.contains(value));
            (!now.is_empty() && narrowed).then_some(Verdict::Tightened)
        }
        Meaning::DenyList => {
            let before = many(old);
            many(Some(new))
                .iter()
                .any(|value| !before.contains(value))
                .then_some(Verdict::Tightened)
        }
        Meaning::Prefix => substring_rule(old, new, |old, new| old.starts_with(new)),
        Meaning::Suffix => substring_rule(old, new, |old, new| old.ends_with(new)),
        Meaning::Contains => substring_rule(old, new, contains),
        Meaning::NotContains => substring_rule(old, new, |old, new| contains(new, old)),
        Meaning::Restriction => {
            let on = |value: Option<&RuleValue>| {
                matches!(value, Some(RuleValue::One(RuleScalar::Bool(true))))
            };
            (on(Some(new)) && !on(old)).then_some(Verdict::Tightened)
        }
        Meaning::StrictByDefault => {
            let on = |value: Option<&RuleValue>| {
                !matches!(value, Some(RuleValue::One(RuleScalar::Bool(false))))
            };
            (on(Some(new)) && !on(old)).then_some(Verdict::Tightened)
        }
        Meaning::Opaque => match old {
            None => Some(Verdict::Tightened),
            Some(before) => (before != new).then_some(Verdict::Incomparable),
        },
        Meaning::Nested | Meaning::Documentation => None,
    }
}

/// `Tightened` when `new` compares to `old` as `tighter`; incomparable values are reported too.
fn ordered(new: &RuleScalar, old: &RuleScalar, tighter: Ordering) -> Option<Verdict> {
    match new.compare(old) {
        Some(order) if order == tighter => Some(Verdict::Tightened),
        Some(_) => None,
        None => Some(Verdict::Incomparable),
    }
}

/// A string/bytes rule (`prefix`, `contains`, ...): new is tightened, changed is tightened unless
/// `still_accepts(old, new)` proves every value the old rule accepted still passes.
fn substring_rule(
    old: Option<&RuleValue>,
    new: &RuleValue,
    still_accepts: impl Fn(&[u8], &[u8]) -> bool,
) -> Option<Verdict> {
    let Some(old) = old else {
        return Some(Verdict::Tightened);
    };
    let bytes = |value: &RuleValue| match single(value) {
        Some(RuleScalar::Text(text)) => Some(text.as_bytes().to_vec()),
        Some(RuleScalar::Bytes(bytes)) => Some(bytes.clone()),
        _ => None,
    };
    match (bytes(old), bytes(new)) {
        (Some(before), Some(now)) => (!still_accepts(&before, &now)).then_some(Verdict::Tightened),
        _ => (old != new).then_some(Verdict::Incomparable),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty()
        || haystack
            .windows(needle.len())
            .any(|window| window == needle)
}

/// A lower or upper bound: the rule that set it, its value, and whether it is exclusive.
#[derive(Debug, Clone, PartialEq)]
struct Bound<'a> {
    rule: &'a str,
    value: &'a RuleScalar,
    exclusive: bool,
}

impl Bound<'_> {
    /// The bound as (value, exclusive) with integer bounds made inclusive, so `gt 5` = `gte 6`.
    fn normalized(&self, lower: bool) -> (RuleScalar, bool) {
        if self.exclusive && self.value.is_integer() {
            (self.value.shifted(if lower { 1 } else { -1 }), false)
        } else {
            (self.value.clone(), self.exclusive)
        }
    }
}

fn bound<'a>(
    rules: &'a BTreeMap<String, RuleValue>,
    exclusive: &'a str,
    inclusive: &'a str,
) -> Option<Bound<'a>> {
    [(exclusive, true), (inclusive, false)]
        .into_iter()
        .find_map(|(rule, is_exclusive)| {
            rules.get(rule).and_then(single).map(|value| Bound {
                rule,
                value,
                exclusive: is_exclusive,
            })
        })
}

/// protovalidate reads `gt` above `lt` as "outside the range": such bounds are compared as a whole.
fn inverted(lower: &Option<Bound<'_>>, upper: &Option<Bound<'_>>) -> bool {
    match (lower, upper) {
        (Some(lower), Some(upper)) => lower.value.compare(upper.value) == Some(Ordering::Greater),
        _ => false,
    }
}

fn compare_bounds(
    prefix: &str,
    old: &BTreeMap<String, RuleValue>,
    new: &BTreeMap<String, RuleValue>,
    changes: &mut Vec<RuleChange>,
) {
    let (old_lower, old_upper) = (bound(old, "gt", "gte"), bound(old, "lt", "lte"));
    let (new_lower, new_upper) = (bound(new, "gt", "gte"), bound(new, "lt", "lte"));
    if inverted(&old_lower, &old_upper) || inverted(&new_lower, &new_upper) {
        if (&old_lower, &old_upper) != (&new_lower, &new_upper) {
            changes.push(incomparable(format!(
                "{prefix}range {} → {}",
                range(&old_lower, &old_upper),
                range(&new_lower, &new_upper)
            )));
        }
        return;
    }
    for (before, now, lower) in [(old_lower, new_lower, true), (old_upper, new_upper, false)] {
        let Some(now) = now else {
            continue;
        };
        let verdict = match &before {
            None => Some(Verdict::Tightened),
            Some(before) => {
                let (old_value, old_exclusive) = before.normalized(lower);
                let (new_value, new_exclusive) = now.normalized(lower);
                let tighter = if lower {
                    Ordering::Greater
                } else {
                    Ordering::Less
                };
                match new_value.compare(&old_value) {
                    Some(order) if order == tighter => Some(Verdict::Tightened),
                    Some(Ordering::Equal) => {
                        (new_exclusive && !old_exclusive).then_some(Verdict::Tightened)
                    }
                    Some(_) => None,
                    None => Some(Verdict::Incomparable),
                }
            }
        };
        if let Some(verdict) = verdict {
            let change = match before {
                None => format!("{prefix}{} unset → {}", now.rule, now.value),
                Some(before) if before.rule == now.rule => {
                    format!("{prefix}{} {} → {}", now.rule, before.value, now.value)
                }
                Some(before) => format!(
                    "{prefix}{} {} → {} {}",
                    before.rule, before.value, now.rule, now.value
                ),
            };
            changes.push(RuleChange { verdict, change });
        }
    }
}

fn range(lower: &Option<Bound<'_>>, upper: &Option<Bound<'_>>) -> String {
    let parts: Vec<String> = [lower, upper]
        .into_iter()
        .flatten()
        .map(|bound| format!("{} {}", bound.rule, bound.value))
        .collect();
    if parts.is_empty() {
        "unset".to_owned()
    } else {
        parts.join(", ")
    }
}

/// Compares the message-level rules: new CEL expressions cannot be compared; a new `oneof` rule,
/// or one that became required, refuses messages that passed.
pub fn compare_message(old: &MessageRules, new: &MessageRules) -> Vec<RuleChange> {
    let mut changes = Vec::new();
    if new.cel.difference(&old.cel).next().is_some() {
        changes.push(incomparable(format!(
            "cel {} → {}",
            text_list(old.cel.iter()),
            text_list(new.cel.iter())
        )));
    }
    for (fields, &required) in &new.oneofs {
        let members = text_list(fields.iter());
        match old.oneofs.get(fields) {
            None => changes.push(tightened(format!(
                "oneof {members} unset → {}",
                if required {
                    "exactly one"
                } else {
                    "at most one"
                }
            ))),
            Some(false) if required => {
                changes.push(tightened(format!("oneof {members} required false → true")));
            }
            Some(_) => {}
        }
    }
    compare_rules("", &old.other, &new.other, &mut changes);
    changes
}

/// A oneof that must now have a member set.
pub fn compare_oneof(old_required: bool, new_required: bool) -> Option<RuleChange> {
    (new_required && !old_required).then(|| tightened("required false → true".to_owned()))
}

fn tightened(change: String) -> RuleChange {
    RuleChange {
        verdict: Verdict::Tightened,
        change,
    }
}

fn incomparable(change: String) -> RuleChange {
    RuleChange {
        verdict: Verdict::Incomparable,
        change,
    }
}

fn single(value: &RuleValue) -> Option<&RuleScalar> {
    match value {
        RuleValue::One(scalar) => Some(scalar),
        _ => None,
    }
}

fn many(value: Option<&RuleValue>) -> &[RuleScalar] {
    match value {
        Some(RuleValue::Many(values)) => values,
        Some(RuleValue::One(value)) => std::slice::from_ref(value),
        _ => &[],
    }
}

fn shown(value: Option<&RuleValue>) -> String {
    match value {
        None => "unset".to_owned(),
        Some(RuleValue::One(scalar)) => scalar.to_string(),
        Some(RuleValue::Many(values)) => list(values),
        Some(RuleValue::Nested(_)) => "{…}".to_owned(),
    }
}

fn text_list<'a>(items: impl Iterator<Item = &'a String>) -> String {
    let quoted: Vec<String> = items.map(|item| format!("{item:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::behaviour::validation::TypedRules;

    fn int(value: i128) -> RuleValue {
        RuleValue::One(RuleScalar::Int(value))
    }

    fn float(value: f64) -> RuleValue {
        RuleValue::One(RuleScalar::Float(value))
    }

    fn text(value: &str) -> RuleValue {
        RuleValue::One(RuleScalar::Text(value.to_owned()))
    }

    fn flag(value: bool) -> RuleValue {
        RuleValue::One(RuleScalar::Bool(value))
    }

    fn texts(values: &[&str]) -> RuleValue {
        RuleValue::Many(
            values
                .iter()
                .map(|value| RuleScalar::Text((*value).to_owned()))
                .collect(),
        )
    }

    /// Rules of `kind` (`string`, `int32`, ...).
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

    /// The reported changes of a field without presence, as `verdict: change`.
    fn changes(old: &FieldRules, new: &FieldRules) -> Vec<String> {
        compare_field(old, new, false)
            .into_iter()
            .map(|change| format!("{:?}: {}", change.verdict, change.change))
            .collect()
    }

    /// Asserts `old → new` is breaking with exactly `expected`, and `new → old` is compatible.
    fn tightening(old: FieldRules, new: FieldRules, expected: &str) {
        assert_eq!(changes(&old, &new), [expected]);
        assert_eq!(
            changes(&new, &old),
            Vec::<String>::new(),
            "reverse of {expected}"
        );
    }

    #[test]
    fn lengths_and_counts_tighten_one_way_only() {
        tightening(
            rules("string", &[("max_len", int(64))]),
            rules("string", &[("max_len", int(8))]),
            "Tightened: max_len 64 → 8",
        );
        tightening(
            rules("string", &[("min_len", int(1))]),
            rules("string", &[("min_len", int(3))]),
            "Tightened: min_len 1 → 3",
        );
        tightening(
            rules("repeated", &[]),
            rules("repeated", &[("max_items", int(10))]),
            "Tightened: max_items unset → 10",
        );
        tightening(
            rules("map", &[("min_pairs", int(0))]),
            rules("map", &[("min_pairs", int(1))]),
            "Tightened: min_pairs 0 → 1",
        );
        // A minimum of 0 is no rule at all.
        assert!(
            changes(
                &FieldRules::default(),
                &rules("string", &[("min_len", int(0))])
            )
            .is_empty()
        );
    }

    #[test]
    fn a_rule_on_a_field_that_had_none_is_a_tightening() {
        tightening(
            FieldRules::default(),
            rules("string", &[("max_len", int(64))]),
            "Tightened: max_len unset → 64",
        );
    }

    #[test]
    fn integer_bounds_compare_as_inclusive_values() {
        // gt 5 and gte 6 accept the same integers.
        assert!(
            changes(
                &rules("int32", &[("gt", int(5))]),
                &rules("int32", &[("gte", int(6))])
            )
            .is_empty()
        );
        tightening(
            rules("int64", &[("gte", int(0))]),
            rules("int64", &[("gt", int(0))]),
            "Tightened: gte 0 → gt 0",
        );
        tightening(
            rules("int32", &[("gte", int(0)), ("lte", int(100))]),
            rules("int32", &[("gte", int(0)), ("lte", int(50))]),
            "Tightened: lte 100 → 50",
        );
        tightening(
            rules("uint32", &[]),
            rules("uint32", &[("lt", int(1000))]),
            "Tightened: lt unset → 1000",
        );
    }

    #[test]
    fn float_bounds_keep_exclusiveness() {
        tightening(
            rules("double", &[("gte", float(0.0))]),
            rules("double", &[("gt", float(0.0))]),
            "Tightened: gte 0 → gt 0",
        );
        tightening(
            rules("float", &[("lte", float(1.5))]),
            rules("float", &[("lte", float(1.25))]),
            "Tightened: lte 1.5 → 1.25",
        );
    }

    #[test]
    fn durations_bound_like_numbers() {
        let seconds = |s: i128| RuleValue::One(RuleScalar::Duration(s * 1_000_000_000));
        tightening(
            rules("duration", &[("lte", seconds(3600))]),
            rules("duration", &[("lte", seconds(60))]),
            "Tightened: lte 3600s → 60s",
        );
    }

    #[test]
    fn a_changed_inverted_range_cannot_be_compared() {
        let old = rules("int32", &[("gt", int(10)), ("lt", int(5))]);
        let new = rules("int32", &[("gt", int(20)), ("lt", int(5))]);
        assert_eq!(
            changes(&old, &new),
            ["Incomparable: range gt 10, lt 5 → gt 20, lt 5"]
        );
        assert!(changes(&old, &old).is_empty());
    }

    #[test]
    fn allow_lists_tighten_when_narrowed_deny_lists_when_grown() {
        tightening(
            rules("string", &[("in", texts(&["a", "b", "c"]))]),
            rules("string", &[("in", texts(&["a", "b"]))]),
            r#"Tightened: in ["a", "b", "c"] → ["a", "b"]"#,
        );
        tightening(
            rules("string", &[]),
            rules("string", &[("in", texts(&["a"]))]),
            r#"Tightened: in unset → ["a"]"#,
        );
        tightening(
            rules("string", &[("not_in", texts(&["x"]))]),
            rules("string", &[("not_in", texts(&["x", "y"]))]),
            r#"Tightened: not_in ["x"] → ["x", "y"]"#,
        );
    }

    #[test]
    fn const_is_exact() {
        tightening(
            rules("string", &[]),
            rules("string", &[("const", text("v1"))]),
            r#"Tightened: const unset → "v1""#,
        );
        assert_eq!(
            changes(
                &rules("string", &[("const", text("v1"))]),
                &rules("string", &[("const", text("v2"))])
            ),
            [r#"Tightened: const "v1" → "v2""#]
        );
    }

    #[test]
    fn patterns_cannot_be_compared_once_changed() {
        let old = rules("string", &[("pattern", text("^[a-z]+$"))]);
        let new = rules("string", &[("pattern", text("^[a-z0-9]+$"))]);
        // Even a wider pattern is reported: regular expressions are not compared.
        assert_eq!(
            changes(&old, &new),
            [r#"Incomparable: pattern "^[a-z]+$" → "^[a-z0-9]+$""#]
        );
        tightening(
            rules("string", &[]),
            old.clone(),
            r#"Tightened: pattern unset → "^[a-z]+$""#,
        );
    }

    #[test]
    fn prefixes_and_substrings_compare_by_containment() {
        tightening(
            rules("string", &[("prefix", text("ord_"))]),
            rules("string", &[("prefix", text("ord_v2_"))]),
            r#"Tightened: prefix "ord_" → "ord_v2_""#,
        );
        tightening(
            rules("string", &[("contains", text("@"))]),
            rules("string", &[("contains", text("@example"))]),
            r#"Tightened: contains "@" → "@example""#,
        );
        tightening(
            rules("string", &[("not_contains", text("--"))]),
            rules("string", &[("not_contains", text("-"))]),
            r#"Tightened: not_contains "--" → "-""#,
        );
    }

    #[test]
    fn formats_and_flags_tighten_when_switched_on() {
        tightening(
            rules("string", &[]),
            rules("string", &[("uuid", flag(true))]),
            "Tightened: uuid unset → true",
        );
        tightening(
            rules("repeated", &[("unique", flag(false))]),
            rules("repeated", &[("unique", flag(true))]),
            "Tightened: unique false → true",
        );
        tightening(
            rules("enum", &[]),
            rules("enum", &[("defined_only", flag(true))]),
            "Tightened: defined_only unset → true",
        );
        // `strict` is on when unset: setting it changes nothing, switching it off loosens.
        let header = rules("string", &[("well_known_regex", int(1))]);
        let strict = rules(
            "string",
            &[("well_known_regex", int(1)), ("strict", flag(true))],
        );
        assert!(changes(&header, &strict).is_empty());
    }

    #[test]
    fn required_is_a_tightening() {
        let required = FieldRules {
            required: true,
            ..FieldRules::default()
        };
        tightening(
            FieldRules::default(),
            required,
            "Tightened: required false → true",
        );
    }

    #[test]
    fn new_cel_expressions_cannot_be_compared_and_removed_ones_loosen() {
        let cel = FieldRules {
            cel: BTreeSet::from(["this > 0".to_owned()]),
            ..FieldRules::default()
        };
        tightening(
            FieldRules::default(),
            cel,
            r#"Incomparable: cel [] → ["this > 0"]"#,
        );
    }

    #[test]
    fn ignore_that_applies_rules_to_more_values_is_a_tightening() {
        let mut if_zero = rules("string", &[("min_len", int(3))]);
        if_zero.ignore = Ignore::IfZeroValue;
        let always_checked = rules("string", &[("min_len", int(3))]);
        tightening(
            if_zero.clone(),
            always_checked.clone(),
            "Tightened: ignore IGNORE_IF_ZERO_VALUE → IGNORE_UNSPECIFIED",
        );
        // A field with presence was never checked when unset: nothing changes.
        assert!(compare_field(&if_zero, &always_checked, true).is_empty());

        let mut switched_off = always_checked.clone();
        switched_off.ignore = Ignore::Always;
        tightening(
            switched_off,
            always_checked,
            "Tightened: ignore IGNORE_ALWAYS → IGNORE_UNSPECIFIED",
        );
    }

    #[test]
    fn element_rules_are_compared_inside_their_list() {
        let items = |max: i128| {
            let mut nested = BTreeMap::new();
            nested.insert(
                "items".to_owned(),
                RuleValue::Nested(Box::new(rules("string", &[("max_len", int(max))]))),
            );
            FieldRules {
                typed: Some(TypedRules {
                    kind: "repeated".to_owned(),
                    rules: nested,
                }),
                ..FieldRules::default()
            }
        };
        tightening(items(64), items(8), "Tightened: items.max_len 64 → 8");
    }

    #[test]
    fn a_changed_rule_kind_cannot_be_compared() {
        assert_eq!(
            changes(&rules("string", &[]), &rules("bytes", &[])),
            ["Incomparable: string rules → bytes rules"]
        );
    }

    #[test]
    fn an_unknown_rule_is_compared_as_an_opaque_value() {
        let old = rules("string", &[("(acme.rules.sku)", text("v1"))]);
        let new = rules("string", &[("(acme.rules.sku)", text("v2"))]);
        assert_eq!(
            changes(&old, &new),
            [r#"Incomparable: (acme.rules.sku) "v1" → "v2""#]
        );
        assert!(changes(&old, &FieldRules::default()).is_empty());
    }

    #[test]
    fn examples_change_nothing() {
        assert!(
            changes(
                &rules("string", &[("example", texts(&["a"]))]),
                &rules("string", &[("example", texts(&["b"]))])
            )
            .is_empty()
        );
    }

    #[test]
    fn message_rules_new_oneof_rules_tighten_and_new_cel_is_incomparable() {
        let members = BTreeSet::from(["email".to_owned(), "phone".to_owned()]);
        let at_most_one = MessageRules {
            oneofs: BTreeMap::from([(members.clone(), false)]),
            ..MessageRules::default()
        };
        let exactly_one = MessageRules {
            oneofs: BTreeMap::from([(members, true)]),
            ..MessageRules::default()
        };
        let verdicts = |old: &MessageRules, new: &MessageRules| -> Vec<String> {
            compare_message(old, new)
                .into_iter()
                .map(|change| format!("{:?}: {}", change.verdict, change.change))
                .collect()
        };
        assert_eq!(
            verdicts(&MessageRules::default(), &at_most_one),
            [r#"Tightened: oneof ["email", "phone"] unset → at most one"#]
        );
        assert_eq!(
            verdicts(&at_most_one, &exactly_one),
            [r#"Tightened: oneof ["email", "phone"] required false → true"#]
        );
        assert!(verdicts(&exactly_one, &MessageRules::default()).is_empty());
        let cel = MessageRules {
            cel: BTreeSet::from(["this.a < this.b".to_owned()]),
            ..MessageRules::default()
        };
        assert_eq!(
            verdicts(&MessageRules::default(), &cel),
            [r#"Incomparable: cel [] → ["this.a < this.b"]"#]
        );
        assert!(verdicts(&cel, &MessageRules::default()).is_empty());
    }

    #[test]
    fn a_oneof_that_became_required_is_a_tightening() {
        assert!(compare_oneof(false, true).is_some());
        assert!(compare_oneof(true, false).is_none());
    }
}
