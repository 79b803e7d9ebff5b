//! Checkout's loyalty port over gRPC: the adapter the split topology uses to reach a loyalty
//! process through its public contract (`commerce.loyalty.v1` — `GetReward`, `RedeemReward`,
//! `CommitRedemption`, `VoidRedemption`, `ReverseRedemption`), never a private back door.
//!
//! Each call goes through the platform's outbound stack ([`Callee`]): balanced over loyalty's
//! replicas, within the inbound call's deadline, retried only where loyalty's contract allows.
//! It authenticates as checkout itself (the callee's metadata hook signs a service token with the
//! scopes the RPC demands) — a customer's token is never forwarded — and a hold carries the
//! placement's idempotency key, so a retried hold cannot hold twice. Loyalty's refusals keep their
//! stable reasons; anything else (loyalty down, slow, its breaker open) is
//! [`CheckoutError::Unavailable`] naming loyalty, so an order that redeems a reward fails fast
//! and nothing is charged.

use async_trait::async_trait;
use commerce_api::commerce::common::v1::ErrorReason;
use commerce_api::commerce::loyalty::v1::get_member_request::Lookup;
use commerce_api::commerce::loyalty::v1::member_service_client::MemberServiceClient;
use commerce_api::commerce::loyalty::v1::reward_service_client::RewardServiceClient;
use commerce_api::commerce::loyalty::v1::{
    CommitRedemptionRequest, GetMemberRequest, GetRewardRequest, RedeemRewardRequest,
    ReverseRedemptionRequest, Reward, VoidRedemptionRequest,
};
use platform::outbound::{CallContext, CallError, Callee, CalleeChannel};
use tonic::{Code, Request, Status};
use tonic_types::StatusExt as _;

use crate::error::CheckoutError;
use crate::quotes::LoyaltyPort;

const SERVICE: &str = "/commerce.loyalty.v1.RewardService/";

/// The loyalty port through the platform's outbound stack (balanced over loyalty's replicas,
/// per-endpoint breakers, the inbound deadline sent on, retries where loyalty's contract allows
/// them). The callee's metadata hook signs each call with checkout's own service token.
#[derive(Clone)]
pub struct RemoteLoyalty {
    callee: Callee,
}

impl RemoteLoyalty {
    /// Loyalty behind `callee`.
    pub fn new(callee: Callee) -> Self {
        RemoteLoyalty { callee }
    }

    /// One call of `method` for `tenant`, within the inbound call's deadline (see
    /// [`CallContext::current`]).
    async fn call<M, R, F, Fut>(
        &self,
        tenant: &str,
        method: &str,
        message: M,
        key: Option<&str>,
        attempt: F,
    ) -> Result<R, CallError>
    where
        M: Clone,
        F: FnMut(CalleeChannel, Request<M>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<R>, Status>>,
    {
        self.call_path(tenant, &format!("{SERVICE}{method}"), message, key, attempt)
            .await
    }

    /// One call of the RPC at `path` (`/pkg.Service/Method`) for `tenant`.
    async fn call_path<M, R, F, Fut>(
        &self,
        tenant: &str,
        path: &str,
        message: M,
        key: Option<&str>,
        attempt: F,
    ) -> Result<R, CallError>
    where
        M: Clone,
        F: FnMut(CalleeChannel, Request<M>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<R>, Status>>,
    {
        let mut context = CallContext::current();
        context.tenant = Some(tenant.to_owned());
        self.callee
            .unary(&context, path, message, key, attempt)
            .await
            .map(tonic::Response::into_inner)
    }
}

/// Loyalty's answer as checkout reports it: its stable refusals as they are, anything else —
/// loyalty down, slow, every replica's breaker open — as loyalty being unavailable.
fn failed(error: CallError, resource: &'static str, id: &str) -> CheckoutError {
    let CallError::Failed { status, .. } = &error else {
        tracing::warn!(%error, "checkout: loyalty unavailable");
        return unavailable();
    };
    let reason = status
        .get_error_details()
        .error_info()
        .and_then(|info| ErrorReason::from_str_name(&format!("ERROR_REASON_{}", info.reason)));
    match (status.code(), reason) {
        (Code::NotFound, _) => CheckoutError::NotFound {
            resource,
            id: id.to_owned(),
        },
        (
            Code::FailedPrecondition,
            Some(
                reason @ (ErrorReason::MemberNotRegistered
                | ErrorReason::InsufficientPoints
                | ErrorReason::RewardUnavailable),
            ),
        ) => CheckoutError::Precondition {
            reason,
            message: status.message().to_owned(),
        },
        _ => {
            tracing::warn!(%error, "checkout: loyalty unavailable");
            unavailable()
        }
    }
}

fn unavailable() -> CheckoutError {
    CheckoutError::Unavailable {
        what: "loyalty",
        reason: ErrorReason::DependencyUnavailable,
    }
}

/// A void or reverse of a redemption already resolved (voided, lapsed, never posted) is done.
fn already_resolved(error: &CallError) -> bool {
    matches!(error, CallError::Failed { status, .. } if status
        .get_error_details()
        .error_info()
        .is_some_and(|info| info.reason == "REDEMPTION_ALREADY_RESOLVED"))
}

#[async_trait]
impl LoyaltyPort for RemoteLoyalty {
    async fn reward(&self, tenant: &str, reward_id: &str) -> Result<Option<Reward>, CheckoutError> {
        let message = GetRewardRequest {
            reward_id: reward_id.to_owned(),
        };
        let answer = self
            .call(
                tenant,
                "GetReward",
                message,
                None,
                |channel, request| async move {
                    RewardServiceClient::new(channel).get_reward(request).await
                },
            )
            .await;
        match answer {
            Ok(response) => Ok(response.reward),
            Err(CallError::Failed { status, .. }) if status.code() == Code::NotFound => Ok(None),
            Err(error) => Err(failed(error, "reward", reward_id)),
        }
    }

    async fn hold(
        &self,
        tenant: &str,
        member_id: &str,
        reward_id: &str,
        order_id: &str,
        key: &str,
    ) -> Result<String, CheckoutError> {
        let message = RedeemRewardRequest {
            member_id: member_id.to_owned(),
            reward_id: reward_id.to_owned(),
            order_id: order_id.to_owned(),
        };
        // The placement's key: a retried hold is the same hold.
        let response = self
            .call(
                tenant,
                "RedeemReward",
                message,
                Some(key),
                |channel, request| async move {
                    RewardServiceClient::new(channel)
                        .redeem_reward(request)
                        .await
                },
            )
            .await
            .map_err(|error| failed(error, "reward", reward_id))?;
        Ok(response
            .redemption
            .map(|redemption| redemption.redemption_id)
            .unwrap_or_default())
    }

    async fn commit(&self, tenant: &str, redemption_id: &str) -> Result<(), CheckoutError> {
        let message = CommitRedemptionRequest {
            redemption_id: redemption_id.to_owned(),
        };
        self.call(
            tenant,
            "CommitRedemption",
            message,
            None,
            |channel, request| async move {
                RewardServiceClient::new(channel)
                    .commit_redemption(request)
                    .await
            },
        )
        .await
        .map(drop)
        .map_err(|error| failed(error, "redemption", redemption_id))
    }

    async fn void(&self, tenant: &str, redemption_id: &str) -> Result<(), CheckoutError> {
        let message = VoidRedemptionRequest {
            redemption_id: redemption_id.to_owned(),
        };
        match self
            .call(
                tenant,
                "VoidRedemption",
                message,
                None,
                |channel, request| async move {
                    RewardServiceClient::new(channel)
                        .void_redemption(request)
                        .await
                },
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if already_resolved(&error) => Ok(()),
            Err(error) => Err(failed(error, "redemption", redemption_id)),
        }
    }

    async fn reverse(&self, tenant: &str, redemption_id: &str) -> Result<(), CheckoutError> {
        let message = ReverseRedemptionRequest {
            redemption_id: redemption_id.to_owned(),
            reason: "order canceled".into(),
        };
        match self
            .call(
                tenant,
                "ReverseRedemption",
                message,
                None,
                |channel, request| async move {
                    RewardServiceClient::new(channel)
                        .reverse_redemption(request)
                        .await
                },
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if already_resolved(&error) => Ok(()),
            Err(error) => Err(failed(error, "redemption", redemption_id)),
        }
    }

    async fn member_customer(
        &self,
        tenant: &str,
        member_id: &str,
    ) -> Result<Option<String>, CheckoutError> {
        let message = GetMemberRequest {
            lookup: Some(Lookup::MemberId(member_id.to_owned())),
        };
        let answer = self
            .call_path(
                tenant,
                "/commerce.loyalty.v1.MemberService/GetMember",
                message,
                None,
                |channel, request| async move {
                    MemberServiceClient::new(channel).get_member(request).await
                },
            )
            .await;
        match answer {
            Ok(response) => Ok(response.member.map(|member| member.customer_id)),
            Err(CallError::Failed { status, .. }) if status.code() == Code::NotFound => Ok(None),
            Err(error) => Err(failed(error, "member", member_id)),
        }
    }
}
