//! Event registrations (`(commerce.api.v1.event)`): consumers subscribe to an event type and
//! partition by its aggregate, so a registered type that disappears, or whose aggregate changes,
//! breaks them even when every message still decodes.

use prost_reflect::{ExtensionDescriptor, MessageDescriptor};

use crate::options::{extension_message, string_field};

/// The registration of `message`, if it is a registered event: its aggregate.
pub fn registration(
    message: &MessageDescriptor,
    event_option: Option<&ExtensionDescriptor>,
) -> Option<String> {
    extension_message(&message.options(), event_option)
        .map(|event| string_field(&event, "aggregate"))
}

/// The change to a registered event of the release: (rule, `old → new`), `None` when compatible.
pub fn compare(
    released: Option<String>,
    current: Option<Option<String>>,
) -> Option<(&'static str, String)> {
    let aggregate = released?;
    match current {
        None => Some((
            "event-removed",
            format!("event (aggregate {aggregate}) → removed"),
        )),
        Some(None) => Some((
            "event-removed",
            format!("event (aggregate {aggregate}) → not registered"),
        )),
        Some(Some(now)) if now != aggregate => Some((
            "event-registration-changed",
            format!("aggregate {aggregate} → {now}"),
        )),
        Some(Some(_)) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::compare;

    #[test]
    fn only_registered_events_of_the_release_are_held() {
        assert_eq!(compare(None, None), None);
        assert_eq!(
            compare(Some("order".into()), Some(Some("order".into()))),
            None
        );
        assert_eq!(
            compare(Some("order".into()), None).map(|(rule, _)| rule),
            Some("event-removed")
        );
        assert_eq!(
            compare(Some("order".into()), Some(None)).map(|(rule, _)| rule),
            Some("event-removed")
        );
        assert_eq!(
            compare(Some("order".into()), Some(Some("payment".into()))),
            Some((
                "event-registration-changed",
                "aggregate order → payment".into()
            ))
        );
    }
}
