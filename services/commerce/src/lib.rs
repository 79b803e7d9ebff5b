//! What the `commerce` binary wires between services, as a library so tests can build the same
//! pieces in process: the adapter through which checkout reaches loyalty.

use std::sync::Arc;
use tracing::Instrument as _;

/// The loyalty service for checkout (reward values, redemption holds), in process: the same
/// engine calls loyalty's handlers make, so the all-in-one and the split topology differ only in
/// the transport (`checkout::loyalty_remote` is the other adapter).
pub struct LoyaltyForCheckout(pub Arc<loyalty::Loyalty>);

/// The RPC a hold is over the wire (its idempotency records are scoped by it).
const REDEEM_REWARD: &str = "commerce.loyalty.v1.RewardService/RedeemReward";

/// A loyalty refusal as checkout reports it: the same stable reason, or "unavailable".
fn loyalty_failed(error: loyalty::LoyaltyError) -> checkout::error::CheckoutError {
    use checkout::error::CheckoutError;
    use commerce_api::commerce::common::v1::ErrorReason;
    let message = error.to_string();
    match error {
        loyalty::LoyaltyError::NotFound { resource, id } => {
            CheckoutError::NotFound { resource, id }
        }
        loyalty::LoyaltyError::NotRegistered(_) => CheckoutError::Precondition {
            reason: ErrorReason::MemberNotRegistered,
            message,
        },
        loyalty::LoyaltyError::InsufficientPoints { .. } => CheckoutError::Precondition {
            reason: ErrorReason::InsufficientPoints,
            message,
        },
        loyalty::LoyaltyError::RewardUnavailable { .. } => CheckoutError::Precondition {
            reason: ErrorReason::RewardUnavailable,
            message,
        },
        other => {
            tracing::warn!(error = %other, "checkout: loyalty unavailable");
            CheckoutError::Unavailable {
                what: "loyalty",
                reason: ErrorReason::DependencyUnavailable,
            }
        }
    }
}

#[async_trait::async_trait]
impl checkout::LoyaltyPort for LoyaltyForCheckout {
    async fn reward(
        &self,
        tenant: &str,
        reward_id: &str,
    ) -> Result<Option<commerce_api::commerce::loyalty::v1::Reward>, checkout::error::CheckoutError>
    {
        match self.0.reward(tenant, reward_id).await {
            Ok(reward) => Ok(Some(reward)),
            Err(loyalty::LoyaltyError::NotFound { .. }) => Ok(None),
            Err(error) => Err(loyalty_failed(error)),
        }
    }

    async fn hold(
        &self,
        tenant: &str,
        member_id: &str,
        reward_id: &str,
        order_id: &str,
        key: &str,
    ) -> Result<String, checkout::error::CheckoutError> {
        // The id RedeemReward over gRPC derives from the same key: both shapes make one hold.
        let key = platform::request::derived_id(tenant, REDEEM_REWARD, key);
        self.0
            .redeem(tenant, member_id, reward_id, order_id, &key)
            .instrument(platform::telemetry::call_span("loyalty", "RedeemReward"))
            .await
            .map(|redemption| redemption.redemption_id)
            .map_err(loyalty_failed)
    }

    async fn commit(
        &self,
        tenant: &str,
        redemption_id: &str,
    ) -> Result<(), checkout::error::CheckoutError> {
        let commit = loyalty::rewards::Resolution::Commit;
        self.0
            .resolve(tenant, redemption_id, commit, "")
            .instrument(platform::telemetry::call_span(
                "loyalty",
                "CommitRedemption",
            ))
            .await
            .map(drop)
            .map_err(loyalty_failed)
    }

    async fn reverse(
        &self,
        tenant: &str,
        redemption_id: &str,
    ) -> Result<(), checkout::error::CheckoutError> {
        let reverse = loyalty::rewards::Resolution::Reverse;
        match self
            .0
            .resolve(tenant, redemption_id, reverse, "order canceled")
            .instrument(platform::telemetry::call_span(
                "loyalty",
                "ReverseRedemption",
            ))
            .await
        {
            Ok(_) => Ok(()),
            // Never posted (voided or lapsed): nothing to give back.
            Err(loyalty::LoyaltyError::AlreadyResolved { .. }) => Ok(()),
            Err(error) => Err(loyalty_failed(error)),
        }
    }

    async fn void(
        &self,
        tenant: &str,
        redemption_id: &str,
    ) -> Result<(), checkout::error::CheckoutError> {
        let void = loyalty::rewards::Resolution::Void;
        match self
            .0
            .resolve(tenant, redemption_id, void, "order failed")
            .await
        {
            // Lapsed meanwhile: the points are back either way.
            Ok(_) | Err(loyalty::LoyaltyError::AlreadyResolved { .. }) => Ok(()),
            Err(error) => Err(loyalty_failed(error)),
        }
    }

    async fn member_customer(
        &self,
        tenant: &str,
        member_id: &str,
    ) -> Result<Option<String>, checkout::error::CheckoutError> {
        match self.0.member(tenant, member_id).await {
            Ok(member) => Ok(Some(member.customer_id)),
            Err(loyalty::LoyaltyError::NotFound { .. }) => Ok(None),
            Err(error) => Err(loyalty_failed(error)),
        }
    }
}
