//! Reading option values (custom extensions and their fields) from descriptor options as plain
//! Rust values; absent fields read as their defaults.

use prost_reflect::{DynamicMessage, ExtensionDescriptor, ReflectMessage as _, Value};

pub fn extension_message(
    options: &DynamicMessage,
    extension: Option<&ExtensionDescriptor>,
) -> Option<DynamicMessage> {
    let extension = extension?;
    if !options.has_extension(extension) {
        return None;
    }
    match options.get_extension(extension).as_ref() {
        Value::Message(message) => Some(message.clone()),
        _ => None,
    }
}

pub fn field_value(message: &DynamicMessage, name: &str) -> Option<Value> {
    message
        .get_field_by_name(name)
        .map(|value| value.into_owned())
}

pub fn message_field(message: &DynamicMessage, name: &str) -> Option<DynamicMessage> {
    let descriptor = message.descriptor().get_field_by_name(name)?;
    if !message.has_field(&descriptor) {
        return None;
    }
    match field_value(message, name)? {
        Value::Message(inner) => Some(inner),
        _ => None,
    }
}

pub fn bool_field(message: &DynamicMessage, name: &str) -> bool {
    matches!(field_value(message, name), Some(Value::Bool(true)))
}

pub fn enum_field(message: &DynamicMessage, name: &str) -> i32 {
    match field_value(message, name) {
        Some(Value::EnumNumber(number)) => number,
        _ => 0,
    }
}

pub fn string_field(message: &DynamicMessage, name: &str) -> String {
    match field_value(message, name) {
        Some(Value::String(text)) => text,
        _ => String::new(),
    }
}

pub fn string_list_field(message: &DynamicMessage, name: &str) -> Vec<String> {
    match field_value(message, name) {
        Some(Value::List(items)) => items
            .into_iter()
            .filter_map(|item| match item {
                Value::String(text) => Some(text),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

pub fn uint_field(message: &DynamicMessage, name: &str) -> u32 {
    match field_value(message, name) {
        Some(Value::U32(number)) => number,
        _ => 0,
    }
}
