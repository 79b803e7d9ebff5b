//! What the callee's contract says about repeating a call, read from the descriptor pool — the
//! same options the callee's own runtime enforces, so there is no list in Rust to drift:
//!
//! - `option idempotency_level = NO_SIDE_EFFECTS` (a read): may be retried and hedged;
//! - `(commerce.api.v1.rpc).idempotency = IDEMPOTENCY_NATURAL` (the request names its effect):
//!   may be retried;
//! - `IDEMPOTENCY_KEY_REQUIRED` / `IDEMPOTENCY_KEY_OPTIONAL`: may be retried only when the call
//!   carries an idempotency key (the callee replays the first outcome for the same key);
//! - anything else, or a method the pool does not know: one attempt.

use std::collections::HashMap;

use commerce_api::commerce::api::v1::Idempotency;
use prost_reflect::DescriptorPool;
use prost_types::method_options::IdempotencyLevel;

use crate::interceptors::Policies;

/// How a method may be repeated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repeatable {
    /// A read without side effects: retries and hedges.
    NoSideEffects,
    /// Naturally idempotent: retries.
    Natural,
    /// Idempotent by key: retries when the call carries one.
    WithKey,
    /// Not declared repeatable (or unknown): one attempt.
    Once,
}

impl Repeatable {
    /// Whether a call may be sent more than once (`has_key`: it carries an idempotency key).
    pub fn retries(self, has_key: bool) -> bool {
        match self {
            Repeatable::NoSideEffects | Repeatable::Natural => true,
            Repeatable::WithKey => has_key,
            Repeatable::Once => false,
        }
    }

    /// Whether a second attempt may race the first.
    pub fn hedges(self) -> bool {
        self == Repeatable::NoSideEffects
    }
}

/// Every method's [`Repeatable`], by request path (`/pkg.Service/Method`).
#[derive(Debug, Clone, Default)]
pub struct RepeatRules {
    by_path: HashMap<String, Repeatable>,
}

impl RepeatRules {
    /// Reads every method of `pool`.
    pub fn from_pool(pool: &DescriptorPool) -> Self {
        let policies = Policies::from_pool(pool);
        let mut by_path = HashMap::new();
        for service in pool.services() {
            for method in service.methods() {
                let path = format!("/{}/{}", service.full_name(), method.name());
                let no_side_effects = method
                    .method_descriptor_proto()
                    .options
                    .as_ref()
                    .is_some_and(|options| {
                        options.idempotency_level() == IdempotencyLevel::NoSideEffects
                    });
                let idempotency = policies
                    .get(&path)
                    .and_then(|policy| Idempotency::try_from(policy.idempotency).ok());
                let repeatable = match (no_side_effects, idempotency) {
                    (true, _) => Repeatable::NoSideEffects,
                    (false, Some(Idempotency::Natural)) => Repeatable::Natural,
                    (false, Some(Idempotency::KeyRequired | Idempotency::KeyOptional)) => {
                        Repeatable::WithKey
                    }
                    (false, Some(Idempotency::Unspecified) | None) => Repeatable::Once,
                };
                by_path.insert(path, repeatable);
            }
        }
        RepeatRules { by_path }
    }

    /// The rule for `path`; [`Repeatable::Once`] for a method the pool does not know.
    pub fn get(&self, path: &str) -> Repeatable {
        self.by_path.get(path).copied().unwrap_or(Repeatable::Once)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_commerce_contract_decides_what_may_be_repeated() {
        let rules = RepeatRules::from_pool(&commerce_api::DESCRIPTOR_POOL);
        assert_eq!(
            rules.get("/commerce.loyalty.v1.MemberService/GetBalance"),
            Repeatable::NoSideEffects
        );
        assert_eq!(
            rules.get("/commerce.checkout.v1.OrderService/PlaceOrder"),
            Repeatable::WithKey
        );
        assert_eq!(
            rules.get("/commerce.loyalty.v1.PointsService/AccruePoints"),
            Repeatable::Natural
        );
        assert_eq!(
            rules.get("/commerce.loyalty.v1.NoSuchService/Nothing"),
            Repeatable::Once
        );
        assert!(!Repeatable::WithKey.retries(false));
        assert!(Repeatable::WithKey.retries(true));
        assert!(!Repeatable::Once.retries(true));
        assert!(Repeatable::Natural.retries(false));
        assert!(Repeatable::NoSideEffects.hedges());
        assert!(!Repeatable::Natural.hedges());
        assert!(!Repeatable::WithKey.hedges());
    }
}
