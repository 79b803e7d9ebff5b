//! Members: enrolment (one member per customer id), registration, look-ups and history.

use commerce_api::commerce::loyalty::v1::{
    ExpiringPoints, Member, MemberEnrolled, PointsEntry, RegistrationState,
};
use platform::units::{timestamp_of_ms, timestamp_of_seconds};
use store::{Retry, retry_on_conflict};

use crate::engine::{Change, Loyalty, seconds};
use crate::error::LoyaltyError;
use crate::lots;
use crate::records::{self, MemberRecord};
use crate::wallet;
use platform::page_token;

/// What `EnrollMember` asks for.
#[derive(Debug, Clone, Default)]
pub struct Enrolment {
    /// The caller's customer id.
    pub customer_id: String,
    /// Name shown in apps.
    pub display_name: String,
    /// E-mail for notices.
    pub email: String,
    /// Enrol as registered.
    pub registered: bool,
}

/// A page of results and the token of the next one.
pub type Page<T> = (Vec<T>, String);

impl Loyalty {
    /// Enrols a customer, or returns the member already enrolled for them (`false`).
    pub async fn enroll(
        &self,
        tenant: &str,
        enrolment: &Enrolment,
    ) -> Result<(Member, bool), LoyaltyError> {
        let claim_key = records::key(tenant, records::CUSTOMER, &enrolment.customer_id);
        let claim_key = &claim_key;
        let (member, created) = retry_on_conflict(Retry::CONTENDED, || async move {
            if let Some(claim) = self.store.load(claim_key).await? {
                let member_id = String::from_utf8_lossy(&claim.data).into_owned();
                let state = self.load_member(tenant, &member_id).await?;
                return Ok::<_, LoyaltyError>((state.member().clone(), false));
            }
            let now_ms = self.now_ms(tenant).await?;
            let member_id = uuid::Uuid::now_v7().to_string();
            let registered = enrolment.registered;
            let member = Member {
                member_id: member_id.clone(),
                customer_id: enrolment.customer_id.clone(),
                registration_state: if registered {
                    RegistrationState::Registered
                } else {
                    RegistrationState::Unregistered
                } as i32,
                display_name: enrolment.display_name.clone(),
                email: enrolment.email.clone(),
                tier_id: String::new(),
                enroll_time: Some(timestamp_of_ms(now_ms)),
                register_time: registered.then(|| timestamp_of_ms(now_ms)),
                version: 0,
            };
            let mut change = Change::default();
            change.emit(&MemberEnrolled {
                member_id: member_id.clone(),
                customer_id: enrolment.customer_id.clone(),
                registered,
            });
            change.also.push(store::Commit {
                data: bytes::Bytes::from(member_id.clone().into_bytes()),
                ..store::Commit::record(claim_key.clone(), 0, &())
            });
            let record = MemberRecord {
                member: Some(member),
                ..MemberRecord::default()
            };
            let state = crate::engine::MemberState {
                version: 0,
                record: record.clone(),
            };
            self.commit_member(tenant, &state, record, change, now_ms)
                .await?;
            let state = self.load_member(tenant, &member_id).await?;
            Ok((state.member().clone(), true))
        })
        .await?;
        if created {
            self.open_accounts(tenant, &member.member_id).await?;
            self.note_tenant(tenant).await?;
        }
        Ok((member, created))
    }

    /// Registers a member (a no-op when registered).
    pub async fn register(&self, tenant: &str, member_id: &str) -> Result<Member, LoyaltyError> {
        retry_on_conflict(Retry::CONTENDED, || async move {
            let state = self.load_member(tenant, member_id).await?;
            if state.member().registration_state == RegistrationState::Registered as i32 {
                return Ok(state.member().clone());
            }
            let now_ms = self.now_ms(tenant).await?;
            let mut record = state.record.clone();
            let member = record.member.get_or_insert_with(|| state.member().clone());
            member.registration_state = RegistrationState::Registered as i32;
            member.register_time = Some(timestamp_of_ms(now_ms));
            // Registration is not a change of points: keep the balance's as-of time.
            let changed_at = record.changed_at_ms;
            self.commit_member(tenant, &state, record, Change::default(), changed_at)
                .await?;
            Ok(self.load_member(tenant, member_id).await?.member().clone())
        })
        .await
    }

    /// A member by id.
    pub async fn member(&self, tenant: &str, member_id: &str) -> Result<Member, LoyaltyError> {
        Ok(self.load_member(tenant, member_id).await?.member().clone())
    }

    /// A member by the caller's customer id.
    pub async fn member_by_customer(
        &self,
        tenant: &str,
        customer_id: &str,
    ) -> Result<Member, LoyaltyError> {
        let claim = self
            .store
            .load(&records::key(tenant, records::CUSTOMER, customer_id))
            .await?
            .ok_or_else(|| LoyaltyError::NotFound {
                resource: "customer",
                id: customer_id.to_owned(),
            })?;
        self.member(tenant, &String::from_utf8_lossy(&claim.data))
            .await
    }

    /// The member's points entries, newest first.
    pub async fn points_entries(
        &self,
        tenant: &str,
        member_id: &str,
        page_size: usize,
        page_token: &str,
    ) -> Result<Page<PointsEntry>, LoyaltyError> {
        self.load_member(tenant, member_id).await?;
        let scope = format!("entries:{member_id}");
        let after = page_token::decode(&scope, page_token)?;
        let page = self
            .store
            .find(
                tenant,
                records::POINTS_ENTRY,
                &records::entries_of(member_id),
                after.as_deref(),
                page_size + 1,
            )
            .await?;
        let more = page.len() > page_size;
        let mut entries = Vec::new();
        let mut last = String::new();
        for (id, stored) in page.into_iter().take(page_size) {
            let entry: PointsEntry = stored.decode("points entry")?;
            entries.push(self.with_hash(tenant, entry).await?);
            last = id;
        }
        let next = if more {
            page_token::encode(&scope, &last)
        } else {
            String::new()
        };
        Ok((entries, next))
    }

    /// Points that will expire, grouped by instant, soonest first; `before` (unix seconds)
    /// limits the horizon.
    pub async fn expiring_points(
        &self,
        tenant: &str,
        member_id: &str,
        before: Option<i64>,
        page_size: usize,
        page_token: &str,
    ) -> Result<Page<ExpiringPoints>, LoyaltyError> {
        let state = self.load_member(tenant, member_id).await?;
        let now = seconds(self.now_ms(tenant).await?);
        let horizon = before.map_or(i64::MAX / 4, |before| before - 1 - now);
        let upcoming = lots::upcoming_expiries(&wallet::domain_lots(&state.record), now, horizon);
        let scope = format!("expiring:{member_id}");
        let skip: usize = match page_token::decode(&scope, page_token)? {
            None => 0,
            Some(position) => position
                .parse()
                .map_err(|_| LoyaltyError::InvalidPageToken)?,
        };
        let page: Vec<ExpiringPoints> = upcoming
            .iter()
            .skip(skip)
            .take(page_size)
            .map(|expiry| ExpiringPoints {
                points: expiry.points,
                expire_time: Some(timestamp_of_seconds(expiry.expires_at)),
            })
            .collect();
        let next = skip + page.len();
        let token = if next < upcoming.len() {
            page_token::encode(&scope, &next.to_string())
        } else {
            String::new()
        };
        Ok((page, token))
    }
}

/// Lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
