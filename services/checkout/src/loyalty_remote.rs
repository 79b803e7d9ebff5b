//! Checkout's loyalty port over gRPC: the adapter the split topology uses to reach a loyalty
//! process through its public contract (`commerce.loyalty.v1` — `GetReward`, `RedeemReward`,
//! `CommitRedemption`, `VoidRedemption`, `ReverseRedemption`), never a private back door.
//!
//! Each call authenticates as checkout itself (the caller supplies the token for the tenant and
//! the RPC: see [`Credentials`]) — a customer's token is never forwarded — and a hold carries the
//! placement's idempotency key, so a retried hold cannot hold twice. Loyalty's refusals keep their
//! stable reasons; anything else (loyalty down, slow, its breaker open) is
//! [`CheckoutError::Unavailable`] naming loyalty, so an order that redeems a reward fails fast
//! and nothing is charged.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use commerce_api::commerce::common::v1::ErrorReason;
use commerce_api::commerce::loyalty::v1::reward_service_client::RewardServiceClient;
use commerce_api::commerce::loyalty::v1::{
    CommitRedemptionRequest, GetRewardRequest, RedeemRewardRequest, ReverseRedemptionRequest,
    Reward, VoidRedemptionRequest,
};
use tonic::{Code, Request, Status};
use tonic_types::StatusExt as _;

use crate::error::CheckoutError;
use crate::quotes::LoyaltyPort;

/// The token a call to loyalty's RPC `path` (`/commerce.loyalty.v1.RewardService/RedeemReward`)
/// carries for `tenant`: checkout's own service token with the scopes that RPC demands.
pub type Credentials = Arc<dyn Fn(&str, &str) -> Option<String> + Send + Sync>;

const SERVICE: &str = "/commerce.loyalty.v1.RewardService/";

/// The loyalty port over a gRPC channel `T` to loyalty's replicas.
#[derive(Clone)]
pub struct RemoteLoyalty<T> {
    channel: T,
    credentials: Credentials,
    timeout: Duration,
}

impl<T> RemoteLoyalty<T>
where
    T: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + Sync + 'static,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T::ResponseBody: tonic::transport::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::transport::Body>::Error:
        Into<Box<dyn std::error::Error + Send + Sync>> + Send,
    T::Future: Send,
{
    /// Loyalty on `channel`; every call authenticated by `credentials` and given at most
    /// `timeout` (sent as `grpc-timeout`).
    pub fn new(channel: T, credentials: Credentials, timeout: Duration) -> Self {
        RemoteLoyalty {
            channel,
            credentials,
            timeout,
        }
    }

    fn client(&self) -> RewardServiceClient<T> {
        RewardServiceClient::new(self.channel.clone())
    }

    fn request<M>(&self, tenant: &str, method: &str, message: M) -> Request<M> {
        let mut request = Request::new(message);
        request.set_timeout(self.timeout);
        if let Some(token) = (self.credentials)(tenant, &format!("{SERVICE}{method}"))
            && let Ok(value) = format!("Bearer {token}").parse()
        {
            request.metadata_mut().insert("authorization", value);
        }
        request
    }
}

/// Loyalty's answer as checkout reports it: its stable refusals as they are, anything else as
/// loyalty being unavailable.
fn failed(status: Status, resource: &'static str, id: &str) -> CheckoutError {
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
            tracing::warn!(code = ?status.code(), message = status.message(), "checkout: loyalty unavailable");
            CheckoutError::Unavailable {
                what: "loyalty",
                reason: ErrorReason::DependencyUnavailable,
            }
        }
    }
}

/// A void or reverse of a redemption already resolved (voided, lapsed, never posted) is done.
fn already_resolved(status: &Status) -> bool {
    status
        .get_error_details()
        .error_info()
        .is_some_and(|info| info.reason == "REDEMPTION_ALREADY_RESOLVED")
}

#[async_trait]
impl<T> LoyaltyPort for RemoteLoyalty<T>
where
    T: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + Sync + 'static,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T::ResponseBody: tonic::transport::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::transport::Body>::Error:
        Into<Box<dyn std::error::Error + Send + Sync>> + Send,
    T::Future: Send,
{
    async fn reward(&self, tenant: &str, reward_id: &str) -> Result<Option<Reward>, CheckoutError> {
        let request = self.request(
            tenant,
            "GetReward",
            GetRewardRequest {
                reward_id: reward_id.to_owned(),
            },
        );
        match self.client().get_reward(request).await {
            Ok(response) => Ok(response.into_inner().reward),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(failed(status, "reward", reward_id)),
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
        let mut request = self.request(
            tenant,
            "RedeemReward",
            RedeemRewardRequest {
                member_id: member_id.to_owned(),
                reward_id: reward_id.to_owned(),
                order_id: order_id.to_owned(),
            },
        );
        // The placement's key: a retried hold is the same hold.
        let key = key
            .parse()
            .map_err(|_| CheckoutError::invalid("idempotency-key", "not a valid header value"))?;
        request.metadata_mut().insert("idempotency-key", key);
        let response = self
            .client()
            .redeem_reward(request)
            .await
            .map_err(|status| failed(status, "reward", reward_id))?;
        Ok(response
            .into_inner()
            .redemption
            .map(|redemption| redemption.redemption_id)
            .unwrap_or_default())
    }

    async fn commit(&self, tenant: &str, redemption_id: &str) -> Result<(), CheckoutError> {
        let request = self.request(
            tenant,
            "CommitRedemption",
            CommitRedemptionRequest {
                redemption_id: redemption_id.to_owned(),
            },
        );
        self.client()
            .commit_redemption(request)
            .await
            .map(drop)
            .map_err(|status| failed(status, "redemption", redemption_id))
    }

    async fn void(&self, tenant: &str, redemption_id: &str) -> Result<(), CheckoutError> {
        let request = self.request(
            tenant,
            "VoidRedemption",
            VoidRedemptionRequest {
                redemption_id: redemption_id.to_owned(),
            },
        );
        match self.client().void_redemption(request).await {
            Ok(_) => Ok(()),
            Err(status) if already_resolved(&status) => Ok(()),
            Err(status) => Err(failed(status, "redemption", redemption_id)),
        }
    }

    async fn reverse(&self, tenant: &str, redemption_id: &str) -> Result<(), CheckoutError> {
        let request = self.request(
            tenant,
            "ReverseRedemption",
            ReverseRedemptionRequest {
                redemption_id: redemption_id.to_owned(),
                reason: "order canceled".into(),
            },
        );
        match self.client().reverse_redemption(request).await {
            Ok(_) => Ok(()),
            Err(status) if already_resolved(&status) => Ok(()),
            Err(status) => Err(failed(status, "redemption", redemption_id)),
        }
    }
}
