//! Promotion codes. The v1 contract has no RPC to manage them, so they come from a JSON file
//! given to `commerce serve --promotions-file` (reloaded on restart):
//!
//! ```json
//! {"promotions": [
//!   {"tenant": "demo", "code": "WELCOME10", "description": "10% off your order",
//!    "percent_off_bps": 1000, "min_subtotal_minor": 1000,
//!    "start_time": "2026-01-01T00:00:00Z", "end_time": "2027-01-01T00:00:00Z",
//!    "location_ids": []}
//! ]}
//! ```
//!
//! Exactly one of `percent_off_bps` (1..=10000) and `amount_off_minor` (> 0, in the location's
//! currency); `min_subtotal_minor`, the window and `location_ids` (empty: every location) are
//! optional. Codes match case-insensitively.

use std::collections::HashMap;
use std::sync::Arc;

use commerce_api::commerce::common::v1::ErrorReason;
use serde::Deserialize;

use crate::error::CheckoutError;

/// What a promotion takes off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discount {
    /// Basis points off the items subtotal.
    PercentOff(i64),
    /// A fixed amount off, in minor units.
    AmountOff(i64),
}

/// One promotion code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Promotion {
    /// The code, upper-case.
    pub code: String,
    /// Shown to customers.
    pub description: String,
    /// The discount.
    pub discount: Discount,
    /// Smallest items subtotal it applies to, minor units.
    pub min_subtotal_minor: i64,
    /// Valid from (unix ms), if limited.
    pub start_ms: Option<i64>,
    /// Valid until (unix ms, exclusive), if limited.
    pub end_ms: Option<i64>,
    /// Locations it is offered at; empty for all.
    pub location_ids: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    promotions: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    tenant: String,
    code: String,
    #[serde(default)]
    description: String,
    percent_off_bps: Option<i64>,
    amount_off_minor: Option<i64>,
    #[serde(default)]
    min_subtotal_minor: i64,
    start_time: Option<String>,
    end_time: Option<String>,
    #[serde(default)]
    location_ids: Vec<String>,
}

fn unix_ms(field: &str, time: Option<&str>) -> Result<Option<i64>, String> {
    time.map(|time| {
        time.parse::<jiff::Timestamp>()
            .map(|timestamp| timestamp.as_millisecond())
            .map_err(|error| format!("{field} {time:?}: {error}"))
    })
    .transpose()
}

/// The promotions of every tenant.
#[derive(Debug, Clone, Default)]
pub struct Promotions {
    by_tenant_code: Arc<HashMap<(String, String), Promotion>>,
}

impl Promotions {
    /// No promotions: every code is `PROMOTION_INVALID`.
    pub fn none() -> Self {
        Promotions::default()
    }

    /// Promotions from the JSON format in the module docs.
    pub fn from_json(json: &str) -> Result<Self, String> {
        let file: File = serde_json::from_str(json).map_err(|error| error.to_string())?;
        let mut by_tenant_code = HashMap::new();
        for entry in file.promotions {
            let code = entry.code.to_uppercase();
            let discount = match (entry.percent_off_bps, entry.amount_off_minor) {
                (Some(bps), None) if (1..=10_000).contains(&bps) => Discount::PercentOff(bps),
                (None, Some(minor)) if minor > 0 => Discount::AmountOff(minor),
                _ => {
                    return Err(format!(
                        "{code}: give exactly one of percent_off_bps (1..=10000) and amount_off_minor (> 0)"
                    ));
                }
            };
            let promotion = Promotion {
                description: entry.description,
                discount,
                min_subtotal_minor: entry.min_subtotal_minor.max(0),
                start_ms: unix_ms("start_time", entry.start_time.as_deref())?,
                end_ms: unix_ms("end_time", entry.end_time.as_deref())?,
                location_ids: entry.location_ids,
                code: code.clone(),
            };
            if by_tenant_code
                .insert((entry.tenant, code.clone()), promotion)
                .is_some()
            {
                return Err(format!("{code} is listed twice for one tenant"));
            }
        }
        Ok(Promotions {
            by_tenant_code: Arc::new(by_tenant_code),
        })
    }

    /// The promotion `code` if it can be used at `location_id` at `now_ms`.
    pub fn usable(
        &self,
        tenant: &str,
        code: &str,
        location_id: &str,
        now_ms: i64,
    ) -> Result<&Promotion, CheckoutError> {
        let invalid = |why: &str| CheckoutError::Precondition {
            reason: ErrorReason::PromotionInvalid,
            message: format!("promotion {code} {why}"),
        };
        let promotion = self
            .by_tenant_code
            .get(&(tenant.to_owned(), code.to_uppercase()))
            .ok_or_else(|| invalid("does not exist"))?;
        if promotion.start_ms.is_some_and(|start| now_ms < start) {
            return Err(invalid("has not started"));
        }
        if promotion.end_ms.is_some_and(|end| now_ms >= end) {
            return Err(invalid("has ended"));
        }
        if !promotion.location_ids.is_empty()
            && !promotion.location_ids.iter().any(|id| id == location_id)
        {
            return Err(invalid("is not offered at this location"));
        }
        Ok(promotion)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_case_insensitively_within_their_window_and_locations() {
        let promotions = Promotions::from_json(
            r#"{"promotions": [
              {"tenant": "t", "code": "Welcome10", "percent_off_bps": 1000,
               "start_time": "2026-01-01T00:00:00Z", "end_time": "2026-02-01T00:00:00Z",
               "location_ids": ["loc-1"]}
            ]}"#,
        )
        .unwrap();
        let jan = "2026-01-15T00:00:00Z"
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_millisecond();
        let feb = "2026-02-01T00:00:00Z"
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_millisecond();
        assert_eq!(
            promotions
                .usable("t", "WELCOME10", "loc-1", jan)
                .unwrap()
                .discount,
            Discount::PercentOff(1000)
        );
        assert!(promotions.usable("t", "welcome10", "loc-1", jan).is_ok());
        assert!(promotions.usable("t", "WELCOME10", "loc-2", jan).is_err());
        assert!(promotions.usable("t", "WELCOME10", "loc-1", feb).is_err());
        assert!(
            promotions
                .usable("other", "WELCOME10", "loc-1", jan)
                .is_err()
        );
    }

    #[test]
    fn a_promotion_needs_exactly_one_discount() {
        for bad in [
            r#"{"promotions": [{"tenant": "t", "code": "X"}]}"#,
            r#"{"promotions": [{"tenant": "t", "code": "X", "percent_off_bps": 10, "amount_off_minor": 5}]}"#,
            r#"{"promotions": [{"tenant": "t", "code": "X", "percent_off_bps": 20000}]}"#,
            r#"{"promotions": [{"tenant": "t", "code": "X", "amount_off_minor": 5, "colour": "red"}]}"#,
        ] {
            assert!(Promotions::from_json(bad).is_err(), "{bad}");
        }
    }
}
