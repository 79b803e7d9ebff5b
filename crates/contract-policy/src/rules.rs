//! The house rules. Each rule is one function over the descriptor pool; `check` runs them all.

use prost_reflect::{
    DescriptorPool, DynamicMessage, ExtensionDescriptor, FileDescriptor, Kind, MessageDescriptor,
    MethodDescriptor,
};
use prost_types::method_options::IdempotencyLevel;
use regex::Regex;

use crate::Violation;
use crate::options::{
    bool_field, enum_field, extension_message, message_field, string_field, string_list_field,
};
use crate::source;

/// Every rule with what it demands, in the order they run.
pub const RULES: &[(&str, &str)] = &[
    (
        "auth-declared",
        "every RPC declares (commerce.api.v1.rpc).auth: public, or at least one scope",
    ),
    (
        "customer-access-scoped",
        "(commerce.api.v1.rpc).auth.customer is set only on RPCs that need a token (with scopes), never on public ones",
    ),
    (
        "scope-format",
        "scopes are dotted lower_snake words, e.g. checkout.orders.write",
    ),
    (
        "idempotency-declared",
        "every RPC without idempotency_level = NO_SIDE_EFFECTS declares (commerce.api.v1.rpc).idempotency",
    ),
    (
        "read-without-key",
        "a NO_SIDE_EFFECTS RPC does not demand an idempotency key",
    ),
    (
        "service-error-domain",
        "every service declares (commerce.api.v1.service).error_domain",
    ),
    (
        "money-uses-money",
        "money-like fields (amount, price, total, tax, tip, fee, ...) are messages such as commerce.common.v1.Money, never bare numbers or strings",
    ),
    (
        "list-paged",
        "List* RPCs page per AIP-158: page_size, page_token, next_page_token, results in field 1",
    ),
    (
        "event-registered",
        "every message of an events.proto is registered with (commerce.api.v1.event) or is a part of one that is; registered events live in events.proto and say their aggregate and when they are emitted",
    ),
    (
        "cache-public-reads-only",
        "(commerce.api.v1.rpc).cache is set only on public RPCs with idempotency_level = NO_SIDE_EFFECTS",
    ),
    (
        "deprecation-names-replacement",
        "deprecated RPCs set (commerce.api.v1.rpc).deprecation {replacement, removal_version}; other deprecated elements say `Deprecated: use <replacement>` in their comment",
    ),
];

const RPC_OPTION: &str = "commerce.api.v1.rpc";
const SERVICE_OPTION: &str = "commerce.api.v1.service";
const EVENT_OPTION: &str = "commerce.api.v1.event";
/// `commerce.api.v1.Idempotency` values that demand a key.
const IDEMPOTENCY_KEY_REQUIRED: i32 = 1;

/// Words that make a field money-like when they end its name (`captured_amount`, `tax_total`).
const MONEY_WORDS: &[&str] = &[
    "amount",
    "price",
    "total",
    "subtotal",
    "tax",
    "tip",
    "fee",
    "cost",
    "discount",
    "credit",
    "charge",
    "net",
    "spend",
    "due",
    "paid",
    "refunded",
    "captured",
    "authorized",
    "cents",
    "minor",
];
/// Words that make a field not money even when a money word ends it (`point_cost` counts points).
const NOT_MONEY_WORDS: &[&str] = &[
    "point", "points", "bps", "ppm", "percent", "count", "id", "ids",
];

/// Runs every rule over the `commerce.*` files of `pool`; violations come sorted by file and line.
pub fn check(pool: &DescriptorPool) -> Vec<Violation> {
    let checker = Checker {
        rpc_option: pool.get_extension_by_name(RPC_OPTION),
        service_option: pool.get_extension_by_name(SERVICE_OPTION),
        event_option: pool.get_extension_by_name(EVENT_OPTION),
        scope_pattern: Regex::new(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$").expect("valid regex"),
        deprecation_comment: Regex::new(r"(?is)\bdeprecated\b.*\b(use|replaced by)\s+\S+")
            .expect("valid regex"),
        violations: Vec::new(),
    };
    checker.run(pool)
}

struct Checker {
    rpc_option: Option<ExtensionDescriptor>,
    service_option: Option<ExtensionDescriptor>,
    event_option: Option<ExtensionDescriptor>,
    scope_pattern: Regex,
    deprecation_comment: Regex,
    violations: Vec<Violation>,
}

impl Checker {
    fn run(mut self, pool: &DescriptorPool) -> Vec<Violation> {
        for file in pool
            .files()
            .filter(|file| file.package_name().starts_with("commerce."))
        {
            for service in file.services() {
                self.service_error_domain(&file, &service);
                self.deprecated_element(
                    &file,
                    service.path(),
                    service.full_name(),
                    &service.options(),
                );
                for method in service.methods() {
                    self.method_policy(&file, &method);
                    self.list_paged(&file, &method);
                }
            }
            self.events_registered(&file);
            for message in file.messages() {
                self.message_rules(&file, &message);
            }
            for enumeration in file.enums() {
                self.enum_deprecations(&file, &enumeration);
            }
        }
        self.violations
            .sort_by(|a, b| (&a.file, a.line, a.rule).cmp(&(&b.file, b.line, b.rule)));
        self.violations
    }

    fn report(&mut self, file: &FileDescriptor, path: &[i32], rule: &'static str, message: String) {
        self.violations.push(Violation {
            file: file.name().to_owned(),
            line: source::lookup(file, path).line,
            rule,
            message,
        });
    }

    fn method_policy(&mut self, file: &FileDescriptor, method: &MethodDescriptor) {
        let name = method.full_name();
        let policy = extension_message(&method.options(), self.rpc_option.as_ref());
        let no_side_effects = method
            .method_descriptor_proto()
            .options
            .as_ref()
            .is_some_and(|options| options.idempotency_level() == IdempotencyLevel::NoSideEffects);

        let auth = policy
            .as_ref()
            .and_then(|policy| message_field(policy, "auth"));
        let public = auth.as_ref().is_some_and(|auth| bool_field(auth, "public"));
        let scopes = auth
            .as_ref()
            .map(|auth| string_list_field(auth, "scopes"))
            .unwrap_or_default();
        let auth_problem = match (public, scopes.is_empty()) {
            (true, false) => Some("is public and also lists scopes"),
            (false, true) => Some("declares no auth"),
            _ => None,
        };
        if let Some(problem) = auth_problem {
            self.report(
                file,
                method.path(),
                "auth-declared",
                format!(
                    "RPC {name} {problem}; set (commerce.api.v1.rpc).auth to {{public: true}} or to required scopes"
                ),
            );
        }
        // Customer access narrows what a token may do; on a public method there is no token to
        // narrow, so declaring it there would promise a check that never runs.
        let customer_access = auth.as_ref().map_or(0, |auth| enum_field(auth, "customer"));
        if customer_access != 0 && public {
            self.report(
                file,
                method.path(),
                "customer-access-scoped",
                format!("RPC {name} is public but declares auth.customer; public methods take no token to scope"),
            );
        }
        let bad_scopes: Vec<&String> = scopes
            .iter()
            .filter(|scope| !self.scope_pattern.is_match(scope))
            .collect();
        for scope in bad_scopes {
            self.report(
                file,
                method.path(),
                "scope-format",
                format!("RPC {name} has scope {scope:?}, which is not dotted lower_snake words"),
            );
        }

        let idempotency = policy
            .as_ref()
            .map_or(0, |policy| enum_field(policy, "idempotency"));
        if !no_side_effects && idempotency == 0 {
            self.report(
                file,
                method.path(),
                "idempotency-declared",
                format!(
                    "RPC {name} may have side effects (no idempotency_level = NO_SIDE_EFFECTS) but declares no (commerce.api.v1.rpc).idempotency"
                ),
            );
        }
        if no_side_effects && idempotency == IDEMPOTENCY_KEY_REQUIRED {
            self.report(
                file,
                method.path(),
                "read-without-key",
                format!("RPC {name} is NO_SIDE_EFFECTS but demands an idempotency key"),
            );
        }

        let cached = policy
            .as_ref()
            .and_then(|policy| message_field(policy, "cache"))
            .is_some();
        // A cache in front must never keep an answer that had an effect, or one meant for one
        // caller: a token-bearing answer in a shared cache is another caller's data.
        let cache_problem = match (cached, no_side_effects, public) {
            (true, false, _) => {
                Some("may have side effects (no idempotency_level = NO_SIDE_EFFECTS)")
            }
            (true, true, false) => Some("needs a token (not auth: {public: true})"),
            _ => None,
        };
        if let Some(problem) = cache_problem {
            self.report(
                file,
                method.path(),
                "cache-public-reads-only",
                format!("RPC {name} declares (commerce.api.v1.rpc).cache but {problem}; only public side-effect-free reads may be cached"),
            );
        }

        let deprecation = policy
            .as_ref()
            .and_then(|policy| message_field(policy, "deprecation"));
        let deprecated = bool_field(&method.options(), "deprecated");
        match (deprecated, deprecation) {
            (true, None) => self.report(
                file,
                method.path(),
                "deprecation-names-replacement",
                format!("RPC {name} is deprecated but sets no (commerce.api.v1.rpc).deprecation naming its replacement"),
            ),
            (true, Some(deprecation)) => {
                for field in ["replacement", "removal_version"] {
                    if string_field(&deprecation, field).is_empty() {
                        self.report(
                            file,
                            method.path(),
                            "deprecation-names-replacement",
                            format!("RPC {name} is deprecated but its deprecation has no {field}"),
                        );
                    }
                }
            }
            (false, Some(_)) => self.report(
                file,
                method.path(),
                "deprecation-names-replacement",
                format!("RPC {name} sets a deprecation policy but not `option deprecated = true`"),
            ),
            (false, None) => {}
        }
    }

    fn service_error_domain(
        &mut self,
        file: &FileDescriptor,
        service: &prost_reflect::ServiceDescriptor,
    ) {
        let policy = extension_message(&service.options(), self.service_option.as_ref());
        if policy.is_none_or(|policy| string_field(&policy, "error_domain").is_empty()) {
            self.report(
                file,
                service.path(),
                "service-error-domain",
                format!(
                    "service {} declares no (commerce.api.v1.service).error_domain",
                    service.full_name()
                ),
            );
        }
    }

    fn list_paged(&mut self, file: &FileDescriptor, method: &MethodDescriptor) {
        if !method.name().starts_with("List") {
            return;
        }
        let name = method.full_name();
        let (input, output) = (method.input(), method.output());
        let mut missing = Vec::new();
        if !has_field(&input, "page_size", Kind::Int32) {
            missing.push(format!("{}.page_size (int32)", input.name()));
        }
        if !has_field(&input, "page_token", Kind::String) {
            missing.push(format!("{}.page_token (string)", input.name()));
        }
        if !has_field(&output, "next_page_token", Kind::String) {
            missing.push(format!("{}.next_page_token (string)", output.name()));
        }
        if !output.get_field(1).is_some_and(|field| field.is_list()) {
            missing.push(format!("{} field 1 as the repeated results", output.name()));
        }
        if !missing.is_empty() {
            self.report(
                file,
                method.path(),
                "list-paged",
                format!(
                    "RPC {name} is a List method without AIP-158 paging: missing {}",
                    missing.join(", ")
                ),
            );
        }
    }

    fn events_registered(&mut self, file: &FileDescriptor) {
        let is_events_file =
            file.name().ends_with("/events.proto") || file.name() == "events.proto";
        let registered: Vec<MessageDescriptor> = file
            .messages()
            .filter(|message| {
                extension_message(&message.options(), self.event_option.as_ref()).is_some()
            })
            .collect();
        if !is_events_file {
            for message in &registered {
                self.report(
                    file,
                    message.path(),
                    "event-registered",
                    format!(
                        "event {} must be declared in the package's events.proto",
                        message.full_name()
                    ),
                );
            }
            return;
        }
        for message in file.messages() {
            let Some(event) = extension_message(&message.options(), self.event_option.as_ref())
            else {
                let part_of_event = registered.iter().any(|event| uses_message(event, &message));
                if !part_of_event {
                    self.report(
                        file,
                        message.path(),
                        "event-registered",
                        format!(
                            "message {} in events.proto is not registered; add option (commerce.api.v1.event) or use it in a registered event",
                            message.full_name()
                        ),
                    );
                }
                continue;
            };
            for field in ["aggregate", "emitted_when"] {
                if string_field(&event, field).is_empty() {
                    self.report(
                        file,
                        message.path(),
                        "event-registered",
                        format!("event {} registers no {field}", message.full_name()),
                    );
                }
            }
        }
    }

    fn message_rules(&mut self, file: &FileDescriptor, message: &MessageDescriptor) {
        self.deprecated_element(
            file,
            message.path(),
            message.full_name(),
            &message.options(),
        );
        let is_money_type = message.full_name() == "commerce.common.v1.Money";
        for field in message.fields() {
            self.deprecated_element(file, field.path(), field.full_name(), &field.options());
            let scalar = !matches!(field.kind(), Kind::Message(_) | Kind::Enum(_) | Kind::Bool);
            if !is_money_type && scalar && is_money_like(field.name()) {
                self.report(
                    file,
                    field.path(),
                    "money-uses-money",
                    format!(
                        "field {} looks like money but is a bare {:?}; use commerce.common.v1.Money (currency + integer minor units)",
                        field.full_name(),
                        field.kind()
                    ),
                );
            }
        }
        for nested in message.child_messages() {
            if !nested.is_map_entry() {
                self.message_rules(file, &nested);
            }
        }
        for enumeration in message.child_enums() {
            self.enum_deprecations(file, &enumeration);
        }
    }

    fn enum_deprecations(
        &mut self,
        file: &FileDescriptor,
        enumeration: &prost_reflect::EnumDescriptor,
    ) {
        self.deprecated_element(
            file,
            enumeration.path(),
            enumeration.full_name(),
            &enumeration.options(),
        );
        for value in enumeration.values() {
            self.deprecated_element(file, value.path(), value.full_name(), &value.options());
        }
    }

    /// Non-RPC elements name their replacement in their comment.
    fn deprecated_element(
        &mut self,
        file: &FileDescriptor,
        path: &[i32],
        name: &str,
        options: &DynamicMessage,
    ) {
        if !bool_field(options, "deprecated") {
            return;
        }
        let comment = source::lookup(file, path).leading_comment;
        if !self.deprecation_comment.is_match(&comment) {
            self.report(
                file,
                path,
                "deprecation-names-replacement",
                format!("{name} is deprecated but its comment does not say `Deprecated: use <replacement>`"),
            );
        }
    }
}

fn is_money_like(field_name: &str) -> bool {
    let words: Vec<&str> = field_name.split('_').collect();
    if words.iter().any(|word| NOT_MONEY_WORDS.contains(word)) {
        return false;
    }
    words.last().is_some_and(|last| MONEY_WORDS.contains(last))
}

/// True when `event` (or a message it contains) has a field of type `part`.
fn uses_message(event: &MessageDescriptor, part: &MessageDescriptor) -> bool {
    event.fields().any(|field| match field.kind() {
        Kind::Message(inner) => {
            inner == *part
                || (inner.parent_file() == event.parent_file() && uses_message(&inner, part))
        }
        _ => false,
    })
}

fn has_field(message: &MessageDescriptor, name: &str, kind: Kind) -> bool {
    message
        .get_field_by_name(name)
        .is_some_and(|field| field.kind() == kind && !field.is_list())
}

#[cfg(test)]
mod tests {
    use super::is_money_like;

    #[test]
    fn money_like_names_are_recognised_by_their_last_word() {
        for name in [
            "amount",
            "captured_amount",
            "tax_total",
            "unit_price",
            "amount_due",
            "total_cents",
        ] {
            assert!(is_money_like(name), "{name}");
        }
        for name in [
            "point_cost",
            "percent_bps",
            "tax_category",
            "attempt_count",
            "price_id",
            "total_points",
        ] {
            assert!(!is_money_like(name), "{name}");
        }
    }
}
