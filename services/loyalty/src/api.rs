//! The gRPC handlers of MemberService, PointsService, RewardService and ProgramService: each
//! reads the tenant the platform put on the request, calls the engine, and maps its error once.

use platform::units::timestamp_of_ms;
use std::sync::Arc;

use commerce_api::commerce::loyalty::v1::{
    self as v1, get_member_request::Lookup, member_service_server::MemberService,
    points_service_server::PointsService, program_service_server::ProgramService,
    reward_service_server::RewardService,
};
use platform::ApiError;
use platform::request::{customer, field_mask, idempotency, idempotency_id, page_size, tenant};
use tonic::{Request, Response, Status};

use crate::engine::Loyalty;
use crate::error::{ERROR_DOMAIN, LoyaltyError};
use crate::members::Enrolment;
use crate::points::{PaidLine, PaidOrder, Refund, RefundAmount};
use crate::rewards::Resolution;

/// The four loyalty services over one engine.
#[derive(Clone)]
pub struct LoyaltyApi {
    engine: Arc<Loyalty>,
}

impl LoyaltyApi {
    /// Handlers over `engine`.
    pub fn new(engine: Arc<Loyalty>) -> Self {
        LoyaltyApi { engine }
    }

    /// For a customer token: member `member_id` must be the caller's own. Another customer's
    /// member reads as not found, exactly like one that does not exist.
    async fn own_member<T>(
        &self,
        request: &Request<T>,
        tenant: &str,
        member_id: &str,
    ) -> Result<(), Status> {
        let Some(customer) = customer(request) else {
            return Ok(());
        };
        let member = self.engine.member(tenant, member_id).await.map_err(fail)?;
        owned_by(Some(&customer), &member.customer_id, "member", member_id)
    }
}

/// NOT_FOUND for an object a customer token may not see (see [`platform::request::owned`]).
fn owned_by(
    customer: Option<&str>,
    owner: &str,
    resource: &'static str,
    id: &str,
) -> Result<(), Status> {
    platform::request::owned(customer, owner, || {
        fail(LoyaltyError::NotFound {
            resource,
            id: id.to_owned(),
        })
    })
}

type Reply<T> = Result<Response<T>, Status>;

fn fail(error: LoyaltyError) -> Status {
    ApiError::from(error).into_status(ERROR_DOMAIN)
}

fn ok<T>(message: T) -> Reply<T> {
    Ok(Response::new(message))
}

/// Unix seconds of an optional timestamp.
fn seconds_of(time: Option<prost_types::Timestamp>) -> Option<i64> {
    time.map(|time| time.seconds)
}

#[tonic::async_trait]
impl MemberService for LoyaltyApi {
    async fn enroll_member(
        &self,
        request: Request<v1::EnrollMemberRequest>,
    ) -> Reply<v1::EnrollMemberResponse> {
        let tenant = tenant(&request)?;
        let body = request.into_inner();
        let enrolment = Enrolment {
            customer_id: body.customer_id,
            display_name: body.display_name,
            email: body.email,
            registered: body.registered,
        };
        let (member, created) = self
            .engine
            .enroll(&tenant, &enrolment)
            .await
            .map_err(fail)?;
        ok(v1::EnrollMemberResponse {
            member: Some(member),
            created,
        })
    }

    async fn register_member(
        &self,
        request: Request<v1::RegisterMemberRequest>,
    ) -> Reply<v1::RegisterMemberResponse> {
        let tenant = tenant(&request)?;
        let member = self
            .engine
            .register(&tenant, &request.get_ref().member_id)
            .await
            .map_err(fail)?;
        ok(v1::RegisterMemberResponse {
            member: Some(member),
        })
    }

    async fn get_member(
        &self,
        request: Request<v1::GetMemberRequest>,
    ) -> Reply<v1::GetMemberResponse> {
        let tenant = tenant(&request)?;
        let customer = customer(&request);
        let member = match request.into_inner().lookup {
            Some(Lookup::MemberId(id)) => self.engine.member(&tenant, &id).await,
            Some(Lookup::CustomerId(id)) => self.engine.member_by_customer(&tenant, &id).await,
            None => Err(LoyaltyError::invalid(
                "lookup",
                "name a member_id or a customer_id",
            )),
        }
        .map_err(fail)?;
        owned_by(
            customer.as_deref(),
            &member.customer_id,
            "member",
            &member.member_id,
        )?;
        ok(v1::GetMemberResponse {
            member: Some(member),
        })
    }

    async fn get_balance(
        &self,
        request: Request<v1::GetBalanceRequest>,
    ) -> Reply<v1::GetBalanceResponse> {
        let tenant = tenant(&request)?;
        self.own_member(&request, &tenant, &request.get_ref().member_id)
            .await?;
        let balance = self
            .engine
            .balance(&tenant, &request.get_ref().member_id)
            .await
            .map_err(fail)?;
        ok(v1::GetBalanceResponse {
            balance: Some(balance),
        })
    }

    async fn list_points_entries(
        &self,
        request: Request<v1::ListPointsEntriesRequest>,
    ) -> Reply<v1::ListPointsEntriesResponse> {
        let tenant = tenant(&request)?;
        self.own_member(&request, &tenant, &request.get_ref().member_id)
            .await?;
        let body = request.into_inner();
        let (entries, next_page_token) = self
            .engine
            .points_entries(
                &tenant,
                &body.member_id,
                page_size(body.page_size),
                &body.page_token,
            )
            .await
            .map_err(fail)?;
        ok(v1::ListPointsEntriesResponse {
            entries,
            next_page_token,
        })
    }

    async fn list_expiring_points(
        &self,
        request: Request<v1::ListExpiringPointsRequest>,
    ) -> Reply<v1::ListExpiringPointsResponse> {
        let tenant = tenant(&request)?;
        self.own_member(&request, &tenant, &request.get_ref().member_id)
            .await?;
        let body = request.into_inner();
        let (expiring_points, next_page_token) = self
            .engine
            .expiring_points(
                &tenant,
                &body.member_id,
                seconds_of(body.before_time),
                page_size(body.page_size),
                &body.page_token,
            )
            .await
            .map_err(fail)?;
        ok(v1::ListExpiringPointsResponse {
            expiring_points,
            next_page_token,
        })
    }
}

#[tonic::async_trait]
impl PointsService for LoyaltyApi {
    async fn accrue_points(
        &self,
        request: Request<v1::AccruePointsRequest>,
    ) -> Reply<v1::AccruePointsResponse> {
        let tenant = tenant(&request)?;
        let body = request.into_inner();
        let total = body.eligible_amount.unwrap_or_default();
        let mut lines = Vec::new();
        for (index, line) in body.lines.into_iter().enumerate() {
            let amount = line.amount.unwrap_or_default();
            if amount.currency_code != total.currency_code {
                return Err(fail(LoyaltyError::invalid(
                    &format!("lines[{index}].amount.currency_code"),
                    "differs from eligible_amount's",
                )));
            }
            lines.push(PaidLine {
                sku: line.sku,
                category: line.category,
                amount_minor: amount.amount_minor,
            });
        }
        let order = PaidOrder {
            member_id: body.member_id,
            order_id: body.order_id,
            currency_code: total.currency_code,
            lines,
            eligible_minor: total.amount_minor,
            paid_at: None,
        };
        let (entry, accrued_now) = self
            .engine
            .accrue(&tenant, &order, None)
            .await
            .map_err(fail)?;
        ok(v1::AccruePointsResponse {
            entry: Some(entry),
            accrued_now,
        })
    }

    async fn reverse_accrual(
        &self,
        request: Request<v1::ReverseAccrualRequest>,
    ) -> Reply<v1::ReverseAccrualResponse> {
        let tenant = tenant(&request)?;
        let body = request.into_inner();
        let amount = body.refunded_amount.unwrap_or_default();
        let refund = Refund {
            member_id: body.member_id,
            order_id: body.order_id,
            refund_id: body.refund_id,
            currency_code: amount.currency_code,
            amount: RefundAmount::ThisRefund(amount.amount_minor),
        };
        let entry = self
            .engine
            .reverse_accrual(&tenant, &refund, None)
            .await
            .map_err(fail)?;
        ok(v1::ReverseAccrualResponse { entry: Some(entry) })
    }

    async fn adjust_points(
        &self,
        request: Request<v1::AdjustPointsRequest>,
    ) -> Reply<v1::AdjustPointsResponse> {
        let tenant = tenant(&request)?;
        let key = idempotency_id(&request);
        let idempotency = idempotency(&request);
        let body = request.into_inner();
        // The commit moving the points recorded this very response for the key.
        let entry = self
            .engine
            .adjust_recording(
                &tenant,
                &body.member_id,
                body.points,
                &body.reason,
                &key,
                idempotency.as_ref(),
            )
            .await
            .map_err(fail)?;
        // Fault tests die here: committed, not yet answered.
        platform::failpoint::hit("loyalty.adjust_points.replying");
        ok(v1::AdjustPointsResponse { entry: Some(entry) })
    }
}

#[tonic::async_trait]
impl RewardService for LoyaltyApi {
    async fn create_reward(
        &self,
        request: Request<v1::CreateRewardRequest>,
    ) -> Reply<v1::CreateRewardResponse> {
        let tenant = tenant(&request)?;
        let key = idempotency_id(&request);
        let idempotency = idempotency(&request);
        let reward = request.into_inner().reward.unwrap_or_default();
        // The commit creating the reward recorded this very response for the key.
        let reward = self
            .engine
            .create_reward_recording(&tenant, &reward, &key, idempotency.as_ref())
            .await
            .map_err(fail)?;
        // Fault tests die here: committed, not yet answered.
        platform::failpoint::hit("loyalty.create_reward.replying");
        ok(v1::CreateRewardResponse {
            reward: Some(reward),
        })
    }

    async fn update_reward(
        &self,
        request: Request<v1::UpdateRewardRequest>,
    ) -> Reply<v1::UpdateRewardResponse> {
        let tenant = tenant(&request)?;
        let body = request.into_inner();
        let reward = self
            .engine
            .update_reward(
                &tenant,
                &body.reward.unwrap_or_default(),
                &field_mask(body.update_mask),
            )
            .await
            .map_err(fail)?;
        ok(v1::UpdateRewardResponse {
            reward: Some(reward),
        })
    }

    async fn get_reward(
        &self,
        request: Request<v1::GetRewardRequest>,
    ) -> Reply<v1::GetRewardResponse> {
        let tenant = tenant(&request)?;
        let reward = self
            .engine
            .reward(&tenant, &request.get_ref().reward_id)
            .await
            .map_err(fail)?;
        ok(v1::GetRewardResponse {
            reward: Some(reward),
        })
    }

    async fn list_rewards(
        &self,
        request: Request<v1::ListRewardsRequest>,
    ) -> Reply<v1::ListRewardsResponse> {
        let tenant = tenant(&request)?;
        let body = request.into_inner();
        let member = Some(body.redeemable_by_member_id.as_str()).filter(|id| !id.is_empty());
        let (rewards, next_page_token) = self
            .engine
            .rewards(&tenant, member, page_size(body.page_size), &body.page_token)
            .await
            .map_err(fail)?;
        ok(v1::ListRewardsResponse {
            rewards,
            next_page_token,
        })
    }

    async fn redeem_reward(
        &self,
        request: Request<v1::RedeemRewardRequest>,
    ) -> Reply<v1::RedeemRewardResponse> {
        let tenant = tenant(&request)?;
        let key = idempotency_id(&request);
        let idempotency = idempotency(&request);
        let body = request.into_inner();
        // The commit holding the points recorded this very response for the key.
        let redemption = self
            .engine
            .redeem_recording(
                &tenant,
                &body.member_id,
                &body.reward_id,
                &body.order_id,
                &key,
                idempotency.as_ref(),
            )
            .await
            .map_err(fail)?;
        // Fault tests die here: committed, not yet answered.
        platform::failpoint::hit("loyalty.redeem_reward.replying");
        ok(v1::RedeemRewardResponse {
            redemption: Some(redemption),
        })
    }

    async fn commit_redemption(
        &self,
        request: Request<v1::CommitRedemptionRequest>,
    ) -> Reply<v1::CommitRedemptionResponse> {
        let tenant = tenant(&request)?;
        let redemption = self
            .engine
            .resolve(
                &tenant,
                &request.get_ref().redemption_id,
                Resolution::Commit,
                "",
            )
            .await
            .map_err(fail)?;
        ok(v1::CommitRedemptionResponse {
            redemption: Some(redemption),
        })
    }

    async fn void_redemption(
        &self,
        request: Request<v1::VoidRedemptionRequest>,
    ) -> Reply<v1::VoidRedemptionResponse> {
        let tenant = tenant(&request)?;
        let redemption = self
            .engine
            .resolve(
                &tenant,
                &request.get_ref().redemption_id,
                Resolution::Void,
                "",
            )
            .await
            .map_err(fail)?;
        ok(v1::VoidRedemptionResponse {
            redemption: Some(redemption),
        })
    }

    async fn reverse_redemption(
        &self,
        request: Request<v1::ReverseRedemptionRequest>,
    ) -> Reply<v1::ReverseRedemptionResponse> {
        let tenant = tenant(&request)?;
        let body = request.into_inner();
        let redemption = self
            .engine
            .resolve(
                &tenant,
                &body.redemption_id,
                Resolution::Reverse,
                &body.reason,
            )
            .await
            .map_err(fail)?;
        ok(v1::ReverseRedemptionResponse {
            redemption: Some(redemption),
        })
    }

    async fn get_redemption(
        &self,
        request: Request<v1::GetRedemptionRequest>,
    ) -> Reply<v1::GetRedemptionResponse> {
        let tenant = tenant(&request)?;
        let redemption_id = &request.get_ref().redemption_id;
        let redemption = self
            .engine
            .redemption(&tenant, redemption_id)
            .await
            .map_err(fail)?;
        // A customer sees the redemptions of their own membership only.
        if let Some(customer) = customer(&request) {
            let member = self.engine.member(&tenant, &redemption.member_id).await;
            let owner = member.map(|member| member.customer_id).unwrap_or_default();
            owned_by(Some(&customer), &owner, "redemption", redemption_id)?;
        }
        ok(v1::GetRedemptionResponse {
            redemption: Some(redemption),
        })
    }
}

#[tonic::async_trait]
impl ProgramService for LoyaltyApi {
    async fn get_program(
        &self,
        request: Request<v1::GetProgramRequest>,
    ) -> Reply<v1::GetProgramResponse> {
        let tenant = tenant(&request)?;
        let (_, program) = self.engine.program(&tenant).await.map_err(fail)?;
        ok(v1::GetProgramResponse {
            program: Some(program),
        })
    }

    async fn update_program(
        &self,
        request: Request<v1::UpdateProgramRequest>,
    ) -> Reply<v1::UpdateProgramResponse> {
        let tenant = tenant(&request)?;
        let body = request.into_inner();
        let program = self
            .engine
            .update_program(
                &tenant,
                &body.program.unwrap_or_default(),
                &field_mask(body.update_mask),
                body.expected_version,
            )
            .await
            .map_err(fail)?;
        ok(v1::UpdateProgramResponse {
            program: Some(program),
        })
    }

    async fn run_due_jobs(
        &self,
        request: Request<v1::RunDueJobsRequest>,
    ) -> Reply<v1::RunDueJobsResponse> {
        let tenant = tenant(&request)?;
        let now_ms = self.engine.now_ms(&tenant).await.map_err(fail)?;
        let report = self.engine.run_due(&tenant, now_ms).await.map_err(fail)?;
        ok(v1::RunDueJobsResponse {
            as_of_time: Some(timestamp_of_ms(now_ms)),
            activated_lots: report.activated_lots,
            expired_lots: report.expired_lots,
            expired_holds: report.expired_holds,
            tier_changes: report.tier_changes,
        })
    }

    async fn reconcile_ledger(
        &self,
        request: Request<v1::ReconcileLedgerRequest>,
    ) -> Reply<v1::ReconcileLedgerResponse> {
        let tenant = tenant(&request)?;
        ok(self.engine.reconcile(&tenant).await.map_err(fail)?)
    }
}
