//! `buf.validate` (protovalidate) rules as plain data: read from a field's, oneof's or message's
//! options in either image, then compared rule by rule (see [`compare`]).
//!
//! The rules are read by field *name*, not through generated types, so the released image and the
//! working tree may even carry different versions of `buf/validate/validate.proto`: a rule this
//! code does not know is still compared, as an opaque value.

mod compare;
mod unset;
mod value;

use std::collections::{BTreeMap, BTreeSet};

use prost_reflect::{DescriptorPool, DynamicMessage, ExtensionDescriptor, Value};

pub use compare::{Verdict, compare_field, compare_message, compare_oneof};
pub use unset::refusals_of_unset;
pub use value::RuleScalar;

use crate::options::extension_message;

/// The three `buf.validate` option extensions, as one image declares them.
pub struct ValidateOptions {
    field: Option<ExtensionDescriptor>,
    oneof: Option<ExtensionDescriptor>,
    message: Option<ExtensionDescriptor>,
}

impl ValidateOptions {
    /// The extensions of `pool`; an image that imports no `buf/validate` has no rules at all.
    pub fn of(pool: &DescriptorPool) -> Self {
        ValidateOptions {
            field: pool.get_extension_by_name("buf.validate.field"),
            oneof: pool.get_extension_by_name("buf.validate.oneof"),
            message: pool.get_extension_by_name("buf.validate.message"),
        }
    }

    /// The rules on a field (`(buf.validate.field)`), empty when it has none.
    pub fn field_rules(&self, options: &DynamicMessage) -> FieldRules {
        extension_message(options, self.field.as_ref())
            .map_or_else(FieldRules::default, |rules| FieldRules::read(&rules))
    }

    /// Whether a oneof must have a member set (`(buf.validate.oneof).required`).
    pub fn oneof_required(&self, options: &DynamicMessage) -> bool {
        extension_message(options, self.oneof.as_ref()).is_some_and(|rules| {
            rules
                .get_field_by_name("required")
                .is_some_and(|value| value.as_bool() == Some(true))
        })
    }

    /// The message-level rules (`(buf.validate.message)`), empty when it has none.
    pub fn message_rules(&self, options: &DynamicMessage) -> MessageRules {
        extension_message(options, self.message.as_ref())
            .map_or_else(MessageRules::default, |rules| MessageRules::read(&rules))
    }
}

/// protovalidate's `Ignore`: which values of a field its rules are applied to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ignore {
    /// Every value (set values only, for fields that track presence).
    #[default]
    Unspecified,
    /// Every value but the zero value.
    IfZeroValue,
    /// No value: the rules, `required` included, are switched off.
    Always,
}

impl Ignore {
    fn from_number(number: i32) -> Self {
        match number {
            1 => Ignore::IfZeroValue,
            3 => Ignore::Always,
            _ => Ignore::Unspecified,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Ignore::Unspecified => "IGNORE_UNSPECIFIED",
            Ignore::IfZeroValue => "IGNORE_IF_ZERO_VALUE",
            Ignore::Always => "IGNORE_ALWAYS",
        }
    }
}

/// A `buf.validate.FieldRules`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldRules {
    pub required: bool,
    pub ignore: Ignore,
    /// CEL expressions (`cel[].expression` and `cel_expression`).
    pub cel: BTreeSet<String>,
    /// The type-specific rules (`string`, `int32`, `repeated`, ...) and their kind.
    pub typed: Option<TypedRules>,
    /// Fields of `FieldRules` this code does not know (a newer protovalidate) and extensions.
    pub other: BTreeMap<String, RuleValue>,
}

/// The rules of one kind (`StringRules`, `Int64Rules`, `RepeatedRules`, ...), by rule name.
#[derive(Debug, Clone, PartialEq)]
pub struct TypedRules {
    /// The `FieldRules.type` member: `string`, `int32`, `repeated`, ...
    pub kind: String,
    pub rules: BTreeMap<String, RuleValue>,
}

/// The value of one rule.
#[derive(Debug, Clone, PartialEq)]
pub enum RuleValue {
    One(RuleScalar),
    Many(Vec<RuleScalar>),
    /// `repeated.items`, `map.keys`, `map.values`: rules of the elements.
    Nested(Box<FieldRules>),
}

impl FieldRules {
    fn read(rules: &DynamicMessage) -> Self {
        let mut read = FieldRules::default();
        for (field, value) in rules.fields() {
            match field.name() {
                "required" => read.required = value.as_bool() == Some(true),
                "ignore" => read.ignore = Ignore::from_number(value.as_enum_number().unwrap_or(0)),
                "cel" => read.cel.extend(cel_expressions(value)),
                "cel_expression" => read.cel.extend(strings(value)),
                name => match (field.containing_oneof(), value) {
                    (Some(oneof), Value::Message(typed)) if oneof.name() == "type" => {
                        read.typed = Some(TypedRules {
                            kind: name.to_owned(),
                            rules: read_typed(typed),
                        });
                    }
                    _ => {
                        read.other.insert(name.to_owned(), RuleValue::read(value));
                    }
                },
            }
        }
        for (extension, value) in rules.extensions() {
            read.other.insert(
                format!("({})", extension.full_name()),
                RuleValue::read(value),
            );
        }
        read
    }

    /// True when no rule is set (what `ignore` does then does not matter).
    pub fn is_empty(&self) -> bool {
        !self.required && self.cel.is_empty() && self.typed.is_none() && self.other.is_empty()
    }

    /// True when a rule other than `required` is set: the rules `ignore` applies to.
    pub fn has_value_rules(&self) -> bool {
        !self.cel.is_empty()
            || self
                .typed
                .as_ref()
                .is_some_and(|typed| !typed.rules.is_empty())
            || !self.other.is_empty()
    }
}

fn read_typed(rules: &DynamicMessage) -> BTreeMap<String, RuleValue> {
    let mut read = BTreeMap::new();
    for (field, value) in rules.fields() {
        let rule = match (field.name(), value) {
            ("items" | "keys" | "values", Value::Message(nested)) => {
                RuleValue::Nested(Box::new(FieldRules::read(nested)))
            }
            _ => RuleValue::read(value),
        };
        read.insert(field.name().to_owned(), rule);
    }
    // Predefined rules (protovalidate extensions of the rule messages) by their full name.
    for (extension, value) in rules.extensions() {
        read.insert(
            format!("({})", extension.full_name()),
            RuleValue::read(value),
        );
    }
    read
}

impl RuleValue {
    fn read(value: &Value) -> Self {
        match value {
            Value::List(items) => RuleValue::Many(items.iter().map(RuleScalar::read).collect()),
            single => RuleValue::One(RuleScalar::read(single)),
        }
    }
}

/// The message-level rules.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MessageRules {
    /// CEL expressions over the whole message.
    pub cel: BTreeSet<String>,
    /// `oneof` rules over plain fields: the member names, and whether one must be set.
    pub oneofs: BTreeMap<BTreeSet<String>, bool>,
    /// Rules this code does not know, compared as opaque values.
    pub other: BTreeMap<String, RuleValue>,
}

impl MessageRules {
    fn read(rules: &DynamicMessage) -> Self {
        let mut read = MessageRules::default();
        for (field, value) in rules.fields() {
            match field.name() {
                "cel" => read.cel.extend(cel_expressions(value)),
                "cel_expression" => read.cel.extend(strings(value)),
                "oneof" => {
                    for rule in value.as_list().unwrap_or_default() {
                        let Some(rule) = rule.as_message() else {
                            continue;
                        };
                        let fields: BTreeSet<String> = rule
                            .get_field_by_name("fields")
                            .map(|fields| strings(&fields))
                            .unwrap_or_default()
                            .into_iter()
                            .collect();
                        let required = rule
                            .get_field_by_name("required")
                            .is_some_and(|value| value.as_bool() == Some(true));
                        read.oneofs.insert(fields, required);
                    }
                }
                name => {
                    read.other.insert(name.to_owned(), RuleValue::read(value));
                }
            }
        }
        read
    }
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_list()
        .unwrap_or_default()
        .iter()
        .filter_map(|item| item.as_str().map(str::to_owned))
        .collect()
}

/// The expressions of a list of `buf.validate.Rule` (its `id` and `message` do not change what
/// is accepted).
fn cel_expressions(value: &Value) -> Vec<String> {
    value
        .as_list()
        .unwrap_or_default()
        .iter()
        .filter_map(|rule| {
            rule.as_message()?
                .get_field_by_name("expression")
                .and_then(|expression| expression.as_str().map(str::to_owned))
        })
        .collect()
}
