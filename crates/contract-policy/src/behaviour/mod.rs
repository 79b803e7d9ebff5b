//! Behavioural compatibility: the working tree's contracts against the released image.
//!
//! `buf breaking` guards the wire shape; this guards what the contract *does*, because the
//! contract is the runtime's configuration: validation rules, the `(commerce.api.v1.rpc)` policy,
//! event registrations and deprecation schedules. Every element present in both images is
//! compared (messages and services by full name, fields by number, RPCs and oneofs by name); a
//! change that refuses a caller the release accepts is a [`Finding`]. Loosening is compatible.
//! A field new in a released message is held too: its rules must accept requests that omit it.
//!
//! Only stable packages (`commerce.<area>.vN`) are held, as `buf breaking` holds them
//! (`ignore_unstable_packages`): alpha and beta packages may change.

mod deprecation;
mod events;
mod rpc;
mod validation;

use std::fmt;

use jiff::civil::Date;
use prost_reflect::{
    DescriptorPool, DynamicMessage, EnumDescriptor, ExtensionDescriptor, FileDescriptor,
    MessageDescriptor, MethodDescriptor, ServiceDescriptor,
};

use crate::options::{bool_field, extension_message, message_field, string_field};
use crate::source;
use deprecation::{PackageVersion, Schedule};
use validation::{ValidateOptions, Verdict};

pub use rpc::RATE_COST_FACTOR;

/// Every behavioural rule with what it refuses, in the order they are checked.
pub const BEHAVIOUR_RULES: &[(&str, &str)] = &[
    (
        "validation-tightened",
        "a buf.validate rule accepts fewer values than the release: a bound, length, count or `within` tightened; `required`, `const`, `in`/`not_in`, a prefix/suffix/contains, a format (email, uuid, ...), `unique`, `defined_only` or a oneof rule added or narrowed; an `ignore` that applies the rules to more values",
    ),
    (
        "validation-incomparable",
        "a buf.validate rule changed in a way that cannot be compared (a pattern, CEL expression, predefined rule or rule kind): breaking unless acknowledged",
    ),
    (
        "auth-tightened",
        "a public RPC requires a token, an RPC requires a scope the release did not, or customer tokens lose access (closed to customers, or shared → own objects only)",
    ),
    (
        "idempotency-tightened",
        "an RPC requires an Idempotency-Key it did not require (any level → IDEMPOTENCY_KEY_REQUIRED)",
    ),
    (
        "no-side-effects-lost",
        "an RPC loses idempotency_level = NO_SIDE_EFFECTS (Connect GET callers and caches break)",
    ),
    (
        "timeout-lowered",
        "an RPC's max_timeout_ms is lowered (0, no cap, is the highest)",
    ),
    (
        "rate-cost-raised",
        "an RPC's rate_limit_tokens more than doubles (0 counts as 1)",
    ),
    (
        "event-removed",
        "a registered event type is removed or no longer registered with (commerce.api.v1.event)",
    ),
    (
        "event-registration-changed",
        "a registered event type's aggregate changes",
    ),
    (
        "deprecated-removed-early",
        "a deprecated RPC, service, message, field, enum or enum value is removed before its removal_version and sunset_date have passed",
    ),
];

const RPC_OPTION: &str = "commerce.api.v1.rpc";
const EVENT_OPTION: &str = "commerce.api.v1.event";

/// One behavioural change of a released element that refuses callers the release accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// File of the element in the working tree (or in the release, when it is gone with its parent).
    pub file: String,
    /// 1-based line, 0 when the image carries no source info.
    pub line: usize,
    /// One of [`BEHAVIOUR_RULES`].
    pub rule: &'static str,
    /// Fully-qualified element, e.g. `commerce.loyalty.v1.GetBalanceRequest.member_id`.
    pub element: String,
    /// What changed, old → new, e.g. `max_len 64 → 8`.
    pub change: String,
    /// The element's name inside its package, as messages print it (`GetBalanceRequest.member_id`).
    pub short_name: String,
}

impl Finding {
    /// The message of the `file:line: rule: message` line.
    pub fn message(&self) -> String {
        format!("{} {}", self.short_name, self.change)
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.file,
            self.line,
            self.rule,
            self.message()
        )
    }
}

/// Compares `current` (the working tree) with `released`; `today` decides which deprecation
/// sunsets have passed. Findings come sorted by file and line.
pub fn compare(released: &DescriptorPool, current: &DescriptorPool, today: Date) -> Vec<Finding> {
    let mut comparison = Comparison {
        current,
        today,
        released_validate: ValidateOptions::of(released),
        current_validate: ValidateOptions::of(current),
        released_rpc: released.get_extension_by_name(RPC_OPTION),
        current_rpc: current.get_extension_by_name(RPC_OPTION),
        released_event: released.get_extension_by_name(EVENT_OPTION),
        current_event: current.get_extension_by_name(EVENT_OPTION),
        findings: Vec::new(),
    };
    for file in released.files().filter(|file| is_held(file.package_name())) {
        for service in file.services() {
            comparison.service(&service);
        }
        for message in file.messages() {
            comparison.message(&message);
        }
        for enumeration in file.enums() {
            comparison.enumeration(&enumeration);
        }
    }
    let mut findings = comparison.findings;
    findings.sort_by(|a, b| {
        (&a.file, a.line, a.rule, &a.element, &a.change)
            .cmp(&(&b.file, b.line, b.rule, &b.element, &b.change))
    });
    findings
}

/// Stable `commerce.*` packages only.
fn is_held(package: &str) -> bool {
    package.starts_with("commerce.")
        && PackageVersion::of_package(package).is_some_and(PackageVersion::is_stable)
}

struct Comparison<'a> {
    current: &'a DescriptorPool,
    today: Date,
    released_validate: ValidateOptions,
    current_validate: ValidateOptions,
    released_rpc: Option<ExtensionDescriptor>,
    current_rpc: Option<ExtensionDescriptor>,
    released_event: Option<ExtensionDescriptor>,
    current_event: Option<ExtensionDescriptor>,
    findings: Vec<Finding>,
}

/// A released element that is gone from the working tree.
struct Removed<'a> {
    full_name: &'a str,
    package: &'a str,
    options: DynamicMessage,
    /// Where it was declared in the release (for its comment).
    released_file: FileDescriptor,
    released_path: &'a [i32],
    /// Its schedule when it is declared in an option rather than a comment (RPCs).
    declared: Option<Schedule>,
}

impl Comparison<'_> {
    fn report(
        &mut self,
        rule: &'static str,
        (file, path): (&FileDescriptor, &[i32]),
        element: &str,
        package: &str,
        change: String,
    ) {
        let short_name = element
            .strip_prefix(package)
            .and_then(|name| name.strip_prefix('.'))
            .unwrap_or(element)
            .to_owned();
        self.findings.push(Finding {
            file: file.name().to_owned(),
            line: source::lookup(file, path).line,
            rule,
            element: element.to_owned(),
            change,
            short_name,
        });
    }

    fn service(&mut self, released: &ServiceDescriptor) {
        let current = self.current.get_service_by_name(released.full_name());
        if current.is_none() {
            self.removed(
                Removed {
                    full_name: released.full_name(),
                    package: released.package_name(),
                    options: released.options(),
                    released_file: released.parent_file(),
                    released_path: released.path(),
                    declared: None,
                },
                (&released.parent_file(), released.path()),
            );
        }
        for method in released.methods() {
            let now = current
                .as_ref()
                .and_then(|service| service.methods().find(|m| m.name() == method.name()));
            match now {
                Some(now) => self.method(&method, &now),
                None => {
                    // Point at the service when it is still there, at the release otherwise.
                    let (file, path) = match &current {
                        Some(service) => (service.parent_file(), service.path().to_vec()),
                        None => (method.parent_file(), method.path().to_vec()),
                    };
                    let declared = extension_message(&method.options(), self.released_rpc.as_ref())
                        .and_then(|policy| message_field(&policy, "deprecation"))
                        .map(|deprecation| {
                            Schedule::declared(
                                string_field(&deprecation, "removal_version"),
                                string_field(&deprecation, "sunset_date"),
                            )
                        });
                    self.removed(
                        Removed {
                            full_name: method.full_name(),
                            package: released.package_name(),
                            options: method.options(),
                            released_file: method.parent_file(),
                            released_path: method.path(),
                            declared,
                        },
                        (&file, &path),
                    );
                }
            }
        }
    }

    fn method(&mut self, released: &MethodDescriptor, current: &MethodDescriptor) {
        let old = rpc::RpcPolicy::read(released, self.released_rpc.as_ref());
        let new = rpc::RpcPolicy::read(current, self.current_rpc.as_ref());
        for (rule, change) in rpc::compare(&old, &new, self.current) {
            self.report(
                rule,
                (&current.parent_file(), current.path()),
                current.full_name(),
                current.parent_service().package_name(),
                change,
            );
        }
    }

    fn message(&mut self, released: &MessageDescriptor) {
        let current = self.current.get_message_by_name(released.full_name());
        let registration = events::registration(released, self.released_event.as_ref());
        let now_registered = current
            .as_ref()
            .map(|message| events::registration(message, self.current_event.as_ref()));
        if let Some((rule, change)) = events::compare(registration, now_registered) {
            let (file, path) = match &current {
                Some(message) => (message.parent_file(), message.path().to_vec()),
                None => (released.parent_file(), released.path().to_vec()),
            };
            self.report(
                rule,
                (&file, &path),
                released.full_name(),
                released.package_name(),
                change,
            );
        }
        let Some(current) = current else {
            self.removed(
                Removed {
                    full_name: released.full_name(),
                    package: released.package_name(),
                    options: released.options(),
                    released_file: released.parent_file(),
                    released_path: released.path(),
                    declared: None,
                },
                (&released.parent_file(), released.path()),
            );
            return;
        };
        let at_message = (current.parent_file(), current.path().to_vec());

        let message_rules = validation::compare_message(
            &self.released_validate.message_rules(&released.options()),
            &self.current_validate.message_rules(&current.options()),
        );
        for change in message_rules {
            self.report(
                verdict_rule(change.verdict),
                (&at_message.0, &at_message.1),
                current.full_name(),
                current.package_name(),
                change.change,
            );
        }

        for oneof in released.oneofs().filter(|oneof| !oneof.is_synthetic()) {
            let Some(now) = current.oneofs().find(|now| now.name() == oneof.name()) else {
                continue;
            };
            let change = validation::compare_oneof(
                self.released_validate.oneof_required(&oneof.options()),
                self.current_validate.oneof_required(&now.options()),
            );
            if let Some(change) = change {
                self.report(
                    verdict_rule(change.verdict),
                    (&now.parent_file(), now.path()),
                    now.full_name(),
                    current.package_name(),
                    change.change,
                );
            }
        }

        for field in released.fields() {
            let Some(now) = current.get_field(field.number()) else {
                self.removed(
                    Removed {
                        full_name: field.full_name(),
                        package: released.package_name(),
                        options: field.options(),
                        released_file: field.parent_file(),
                        released_path: field.path(),
                        declared: None,
                    },
                    (&at_message.0, &at_message.1),
                );
                continue;
            };
            let changes = validation::compare_field(
                &self.released_validate.field_rules(&field.options()),
                &self.current_validate.field_rules(&now.options()),
                now.supports_presence(),
            );
            for change in changes {
                self.report(
                    verdict_rule(change.verdict),
                    (&now.parent_file(), now.path()),
                    now.full_name(),
                    current.package_name(),
                    change.change,
                );
            }
        }

        self.new_members(released, &current);

        for nested in released.child_messages() {
            if !nested.is_map_entry() {
                self.message(&nested);
            }
        }
        for nested in released.child_enums() {
            self.enumeration(&nested);
        }
    }

    /// Fields and oneofs new in a released message: callers built against the release never set
    /// them, so rules that refuse an unset value refuse those callers.
    fn new_members(&mut self, released: &MessageDescriptor, current: &MessageDescriptor) {
        for field in current.fields() {
            if released.get_field(field.number()).is_some() {
                continue;
            }
            let refusals = validation::refusals_of_unset(
                &self.current_validate.field_rules(&field.options()),
                field.supports_presence(),
            );
            for change in refusals {
                self.report(
                    verdict_rule(change.verdict),
                    (&field.parent_file(), field.path()),
                    field.full_name(),
                    current.package_name(),
                    format!("{} (new field)", change.change),
                );
            }
        }
        for oneof in current.oneofs().filter(|oneof| !oneof.is_synthetic()) {
            let is_new = released.oneofs().all(|old| old.name() != oneof.name());
            if is_new && self.current_validate.oneof_required(&oneof.options()) {
                self.report(
                    "validation-tightened",
                    (&oneof.parent_file(), oneof.path()),
                    oneof.full_name(),
                    current.package_name(),
                    "required false → true (new oneof)".to_owned(),
                );
            }
        }
    }

    fn enumeration(&mut self, released: &EnumDescriptor) {
        let Some(current) = self.current.get_enum_by_name(released.full_name()) else {
            self.removed(
                Removed {
                    full_name: released.full_name(),
                    package: released.package_name(),
                    options: released.options(),
                    released_file: released.parent_file(),
                    released_path: released.path(),
                    declared: None,
                },
                (&released.parent_file(), released.path()),
            );
            return;
        };
        for value in released.values() {
            if current.get_value(value.number()).is_none() {
                self.removed(
                    Removed {
                        full_name: value.full_name(),
                        package: released.package_name(),
                        options: value.options(),
                        released_file: value.parent_file(),
                        released_path: value.path(),
                        declared: None,
                    },
                    (&current.parent_file(), current.path()),
                );
            }
        }
    }

    /// A deprecated element removed before its schedule passed. (Removing an element that was
    /// never deprecated is `buf breaking`'s finding, not a behavioural one.)
    fn removed(&mut self, removed: Removed<'_>, location: (&FileDescriptor, &[i32])) {
        if !bool_field(&removed.options, "deprecated") {
            return;
        }
        let schedule = removed.declared.unwrap_or_else(|| {
            Schedule::from_comment(
                &source::lookup(&removed.released_file, removed.released_path).leading_comment,
            )
        });
        if schedule.has_passed(removed.package, self.today) {
            return;
        }
        self.report(
            "deprecated-removed-early",
            location,
            removed.full_name,
            removed.package,
            format!("deprecated ({}) → removed", schedule.describe()),
        );
    }
}

fn verdict_rule(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Tightened => "validation-tightened",
        Verdict::Incomparable => "validation-incomparable",
    }
}
