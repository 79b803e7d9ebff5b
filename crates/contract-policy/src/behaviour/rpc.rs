//! The runtime policy of an RPC (`(commerce.api.v1.rpc)` and `idempotency_level`), compared
//! between releases: the platform enforces these options, so a stricter value refuses callers
//! that work today exactly as a removed field would.

use std::collections::BTreeSet;

use prost_reflect::{DescriptorPool, ExtensionDescriptor, MethodDescriptor};
use prost_types::method_options::IdempotencyLevel;

use crate::options::{
    bool_field, enum_field, extension_message, message_field, string_list_field, uint_field,
};

/// `commerce.api.v1.Idempotency.IDEMPOTENCY_KEY_REQUIRED`: the only level that refuses a call
/// for what it lacks (no `Idempotency-Key`).
const IDEMPOTENCY_KEY_REQUIRED: i32 = 1;

/// `commerce.api.v1.CustomerAccess.CUSTOMER_ACCESS_OWN` and `..._SHARED`.
const CUSTOMER_ACCESS_OWN: i32 = 1;
const CUSTOMER_ACCESS_SHARED: i32 = 2;

/// `rate_limit_tokens` may grow up to this factor before callers' budgets visibly shrink.
pub const RATE_COST_FACTOR: u32 = 2;

/// What the runtime enforces for one RPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcPolicy {
    pub public: bool,
    pub scopes: BTreeSet<String>,
    /// `commerce.api.v1.CustomerAccess` number of `auth.customer` (0: closed to customer tokens).
    pub customer: i32,
    /// `commerce.api.v1.Idempotency` number.
    pub idempotency: i32,
    /// `google.protobuf.MethodOptions.IdempotencyLevel` number.
    pub idempotency_level: i32,
    /// Tokens a call costs, as the runtime counts them (0 counts as 1).
    pub rate_limit_tokens: u32,
    /// Deadline cap in milliseconds; `None` when 0 (no cap: the caller's or the server's default).
    pub max_timeout_ms: Option<u32>,
}

impl RpcPolicy {
    pub fn read(method: &MethodDescriptor, rpc_option: Option<&ExtensionDescriptor>) -> Self {
        let policy = extension_message(&method.options(), rpc_option);
        let auth = policy
            .as_ref()
            .and_then(|policy| message_field(policy, "auth"));
        let uint = |name| policy.as_ref().map_or(0, |policy| uint_field(policy, name));
        RpcPolicy {
            public: auth.as_ref().is_some_and(|auth| bool_field(auth, "public")),
            scopes: auth
                .as_ref()
                .map(|auth| string_list_field(auth, "scopes"))
                .unwrap_or_default()
                .into_iter()
                .collect(),
            customer: auth.as_ref().map_or(0, |auth| enum_field(auth, "customer")),
            idempotency: policy
                .as_ref()
                .map_or(0, |policy| enum_field(policy, "idempotency")),
            idempotency_level: method
                .method_descriptor_proto()
                .options
                .as_ref()
                .map_or(0, |options| options.idempotency_level() as i32),
            rate_limit_tokens: uint("rate_limit_tokens").max(1),
            max_timeout_ms: Some(uint("max_timeout_ms")).filter(|ms| *ms > 0),
        }
    }

    /// A method that declares neither `public` nor a scope is refused by the runtime (fail
    /// closed): nothing about it can get stricter.
    fn callable(&self) -> bool {
        self.public || !self.scopes.is_empty()
    }
}

fn customer_name(access: i32) -> &'static str {
    match access {
        CUSTOMER_ACCESS_OWN => "CUSTOMER_ACCESS_OWN",
        CUSTOMER_ACCESS_SHARED => "CUSTOMER_ACCESS_SHARED",
        _ => "none",
    }
}

/// One RPC policy change that refuses callers the release accepted: (rule, `old → new`).
pub fn compare(
    old: &RpcPolicy,
    new: &RpcPolicy,
    pool: &DescriptorPool,
) -> Vec<(&'static str, String)> {
    let mut changes = Vec::new();
    if old.callable() {
        if old.public && !new.public {
            changes.push((
                "auth-tightened",
                format!("auth public → scopes {}", scope_list(&new.scopes)),
            ));
        } else if !old.public && new.scopes.difference(&old.scopes).next().is_some() {
            changes.push((
                "auth-tightened",
                format!(
                    "scopes {} → {}",
                    scope_list(&old.scopes),
                    scope_list(&new.scopes)
                ),
            ));
        }
        // Browsers and apps holding customer tokens break when a method they call is closed to
        // customers, or when a shared read starts answering only for the caller's own objects.
        let narrowed = (old.customer != 0 && new.customer == 0)
            || (old.customer == CUSTOMER_ACCESS_SHARED && new.customer == CUSTOMER_ACCESS_OWN);
        if narrowed {
            changes.push((
                "auth-tightened",
                format!(
                    "customer access {} → {}",
                    customer_name(old.customer),
                    customer_name(new.customer)
                ),
            ));
        }
    }
    if new.idempotency == IDEMPOTENCY_KEY_REQUIRED && old.idempotency != IDEMPOTENCY_KEY_REQUIRED {
        changes.push((
            "idempotency-tightened",
            format!(
                "idempotency {} → {}",
                idempotency_name(pool, old.idempotency),
                idempotency_name(pool, new.idempotency)
            ),
        ));
    }
    let no_side_effects = IdempotencyLevel::NoSideEffects as i32;
    if old.idempotency_level == no_side_effects && new.idempotency_level != no_side_effects {
        changes.push((
            "no-side-effects-lost",
            format!(
                "idempotency_level {} → {}",
                level_name(old.idempotency_level),
                level_name(new.idempotency_level)
            ),
        ));
    }
    let lowered = match (old.max_timeout_ms, new.max_timeout_ms) {
        (None, Some(_)) => true,
        (Some(before), Some(now)) => now < before,
        (_, None) => false,
    };
    if lowered {
        changes.push((
            "timeout-lowered",
            format!(
                "max_timeout_ms {} → {}",
                timeout(old.max_timeout_ms),
                timeout(new.max_timeout_ms)
            ),
        ));
    }
    if u64::from(new.rate_limit_tokens)
        > u64::from(old.rate_limit_tokens) * u64::from(RATE_COST_FACTOR)
    {
        changes.push((
            "rate-cost-raised",
            format!(
                "rate_limit_tokens {} → {}",
                old.rate_limit_tokens, new.rate_limit_tokens
            ),
        ));
    }
    changes
}

fn scope_list(scopes: &BTreeSet<String>) -> String {
    let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
    format!("[{}]", scopes.join(", "))
}

fn timeout(ms: Option<u32>) -> String {
    ms.map_or_else(|| "0 (no cap)".to_owned(), |ms| ms.to_string())
}

fn idempotency_name(pool: &DescriptorPool, number: i32) -> String {
    pool.get_enum_by_name("commerce.api.v1.Idempotency")
        .and_then(|enumeration| enumeration.get_value(number))
        .map_or_else(|| number.to_string(), |value| value.name().to_owned())
}

fn level_name(number: i32) -> String {
    IdempotencyLevel::try_from(number).map_or_else(
        |_| number.to_string(),
        |level| level.as_str_name().to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RpcPolicy {
        RpcPolicy {
            public: false,
            scopes: ["loyalty.members.read".to_owned()].into(),
            customer: CUSTOMER_ACCESS_OWN,
            idempotency: 2,
            idempotency_level: 0,
            rate_limit_tokens: 1,
            max_timeout_ms: None,
        }
    }

    fn rules(old: &RpcPolicy, new: &RpcPolicy) -> Vec<&'static str> {
        compare(old, new, &DescriptorPool::new())
            .into_iter()
            .map(|(rule, _)| rule)
            .collect()
    }

    #[test]
    fn an_unchanged_policy_reports_nothing() {
        assert!(rules(&policy(), &policy()).is_empty());
    }

    #[test]
    fn a_removed_scope_or_a_public_rpc_loosens() {
        let mut new = policy();
        new.scopes.clear();
        new.public = true;
        assert!(rules(&policy(), &new).is_empty());
    }

    #[test]
    fn a_renamed_scope_is_a_tightening() {
        let mut new = policy();
        new.scopes = ["loyalty.read".to_owned()].into();
        assert_eq!(rules(&policy(), &new), ["auth-tightened"]);
    }

    #[test]
    fn closing_a_method_to_customers_is_a_tightening_and_opening_it_is_not() {
        let mut closed = policy();
        closed.customer = 0;
        assert_eq!(rules(&policy(), &closed), ["auth-tightened"]);
        assert!(rules(&closed, &policy()).is_empty());
        let mut shared = policy();
        shared.customer = CUSTOMER_ACCESS_SHARED;
        assert_eq!(rules(&shared, &policy()), ["auth-tightened"]);
        assert!(rules(&policy(), &shared).is_empty());
    }

    #[test]
    fn a_method_that_declared_no_auth_cannot_get_stricter() {
        let mut old = policy();
        old.scopes.clear();
        assert!(rules(&old, &policy()).is_empty());
    }

    #[test]
    fn only_a_required_key_is_a_stricter_idempotency() {
        for (old, new, breaking) in [(2, 1, true), (3, 1, true), (0, 1, true), (3, 2, false)] {
            let (mut before, mut now) = (policy(), policy());
            before.idempotency = old;
            now.idempotency = new;
            assert_eq!(
                rules(&before, &now) == ["idempotency-tightened"],
                breaking,
                "{old} → {new}"
            );
        }
    }

    #[test]
    fn zero_max_timeout_means_no_cap() {
        let (mut old, mut new) = (policy(), policy());
        new.max_timeout_ms = Some(30_000);
        assert_eq!(rules(&old, &new), ["timeout-lowered"]);
        old.max_timeout_ms = Some(10_000);
        assert!(rules(&old, &new).is_empty());
        new.max_timeout_ms = None;
        assert!(rules(&old, &new).is_empty());
    }

    #[test]
    fn rate_cost_may_double_but_not_more() {
        let (old, mut new) = (policy(), policy());
        new.rate_limit_tokens = 2;
        assert!(rules(&old, &new).is_empty());
        new.rate_limit_tokens = 3;
        assert_eq!(rules(&old, &new), ["rate-cost-raised"]);
    }

    #[test]
    fn losing_no_side_effects_breaks_get_callers() {
        let (mut old, new) = (policy(), policy());
        old.idempotency_level = IdempotencyLevel::NoSideEffects as i32;
        assert_eq!(rules(&old, &new), ["no-side-effects-lost"]);
        assert!(rules(&new, &old).is_empty());
    }
}
