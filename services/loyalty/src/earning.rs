//! Points earned by one order, and points taken back when it is refunded.
//!
//! # The earning rule
//!
//! For an order in the program's earning currency (`EarningRule.per_spend.currency_code`):
//!
//! 1. **Eligible spend** is the sum of the lines' `amount_minor`.
//! 2. **Base** = `floor(eligible_spend × points / per_spend.amount_minor)`, rounded down once for
//!    the whole order (the contract's "rounded down per order"), so $12.34 at 10 points per $1.00
//!    earns 123, not the 120 that per-line rounding would give.
//! 3. **Line multipliers**: the base is split over the lines in proportion to their amounts by
//!    largest remainder — each line gets the floor of its exact share and the units left over go
//!    one each to the largest fractional parts, ties to the earlier line — so the shares sum
//!    exactly to the base. A line matched by a multiplier earns
//!    `floor(share × multiplier_bps / 10_000)` instead of its share; the difference is its
//!    *line bonus*, which is negative for multipliers below 1× (0 bps excludes an item). A SKU
//!    multiplier beats a category multiplier; when several multipliers of the same kind match,
//!    the highest wins, because a member reading "1.5× on coffee" and "2× on lattes" expects the
//!    better of the two, not a product or an arbitrary pick. Empty SKUs or categories never match.
//! 4. **Tier**: a member in a tier earns `floor(base × multiplier_bps / 10_000) − base` extra.
//! 5. **Campaigns** active at the order time (`start_time ≤ t < end_time`) whose `min_spend` is
//!    unset, or in the order currency and ≤ the eligible spend, each add
//!    `floor(base × multiplier_bps / 10_000) − base` plus their flat `bonus_points`.
//!
//! Tier and campaign multipliers are bonuses: a multiplier of 1× or less (including the
//! contract's "0 for none") adds nothing and never reduces earnings. All multipliers apply to the
//! base independently and *add* rather than compound: double points for a 1.25× member is
//! `base + base + 0.25 × base`. Each `× bps / 10_000` rounds down on its own.
//!
//! An order in any other currency earns nothing at all, bonuses included.
//!
//! All arithmetic is integer with `i128` intermediates; a result that does not fit `i64` is an
//! [`EarningError::Overflow`] rather than a wrapped number.

use commerce_api::commerce::loyalty::v1::{
    Campaign, EarningMultiplier, LoyaltyProgram, TierBasis, earning_multiplier::Target,
};
use prost_types::Timestamp;

/// Basis points in 1×.
const BPS_ONE: i128 = 10_000;

/// One order line as the earning rule sees it: what multipliers match on, and its eligible
/// amount (after discounts, before tax and tip) in minor units of the order currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EligibleLine<'a> {
    /// Item SKU, matched by SKU multipliers.
    pub sku: &'a str,
    /// Menu category, matched by category multipliers.
    pub category: &'a str,
    /// Eligible amount in minor units; must not be negative.
    pub amount_minor: i64,
}

/// The points an order earns and where they come from. `total` is the sum of the rest.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Earning {
    /// Eligible spend in minor units of the earning currency; 0 for an order in another currency.
    pub eligible_spend_minor: i64,
    /// Base points for the order.
    pub base: i64,
    /// Per input line, in input order.
    pub lines: Vec<LinePoints>,
    /// Sum of the lines' bonuses (negative when multipliers below 1× dominate).
    pub line_bonus: i64,
    /// Extra points from the member's tier.
    pub tier_bonus: i64,
    /// One entry per qualifying campaign, in program order.
    pub campaign_bonuses: Vec<CampaignBonus>,
    /// Points to accrue: base + line bonus + tier bonus + campaign bonuses; never negative.
    pub total: i64,
}

/// One line's part of the base and what its multiplier added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinePoints {
    /// The line's share of the order's base points.
    pub base: i64,
    /// The multiplier that matched the line, if any.
    pub multiplier_bps: Option<i32>,
    /// `floor(base × multiplier_bps / 10_000) − base`, or 0 without a multiplier.
    pub bonus: i64,
}

/// Points one campaign added to an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CampaignBonus {
    /// The campaign.
    pub campaign_id: String,
    /// Its multiplier bonus plus its flat bonus.
    pub points: i64,
}

/// Why an order's points could not be computed; each is a bad program or a bad caller, never a
/// member's fault, so handlers map them to internal or invalid-argument errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EarningError {
    /// The program has no earning rule or no spend unit (the contract requires both).
    #[error("the loyalty program has no earning rule with a spend unit")]
    MissingEarningRule,
    /// The spend unit is zero or negative, which would divide by zero or invert earning.
    #[error("the earning rule's spend unit must be positive, got {amount_minor} minor units")]
    NonPositiveSpendUnit {
        /// The configured `per_spend.amount_minor`.
        amount_minor: i64,
    },
    /// A line's eligible amount is negative.
    #[error("order line {index} has a negative eligible amount")]
    NegativeLineAmount {
        /// Position of the line in the input.
        index: usize,
    },
    /// A points value does not fit in `i64`.
    #[error("points overflow 64 bits")]
    Overflow,
}

/// Computes the points one order earns under `program` (see the [module docs](self) for the rule).
///
/// `order_time` is unix seconds; `member_tier_id` is the member's current tier, if any (ignored
/// when the program's tiers are off or the id is not one of its tiers).
pub fn earn_points(
    program: &LoyaltyProgram,
    order_currency: &str,
    lines: &[EligibleLine<'_>],
    order_time: i64,
    member_tier_id: Option<&str>,
) -> Result<Earning, EarningError> {
    let rule = program
        .earning
        .as_ref()
        .ok_or(EarningError::MissingEarningRule)?;
    let per_spend = rule
        .per_spend
        .as_ref()
        .ok_or(EarningError::MissingEarningRule)?;
    if per_spend.amount_minor <= 0 {
        return Err(EarningError::NonPositiveSpendUnit {
            amount_minor: per_spend.amount_minor,
        });
    }
    if let Some(index) = lines.iter().position(|line| line.amount_minor < 0) {
        return Err(EarningError::NegativeLineAmount { index });
    }
    if order_currency != per_spend.currency_code {
        return Ok(Earning {
            lines: vec![LinePoints::default(); lines.len()],
            ..Earning::default()
        });
    }

    let spend: i128 = lines.iter().map(|line| i128::from(line.amount_minor)).sum();
    let base = spend * i128::from(rule.points.max(0)) / i128::from(per_spend.amount_minor);
    let base = to_i64(base)?;

    let amounts: Vec<i64> = lines.iter().map(|line| line.amount_minor).collect();
    let shares = allocate_proportionally(base, &amounts);
    let line_points: Vec<LinePoints> = lines
        .iter()
        .zip(shares)
        .map(|(line, share)| {
            let multiplier_bps = line_multiplier(&program.multipliers, line);
            let bonus = multiplier_bps.map_or(0, |bps| times_bps(share, bps) - i128::from(share));
            Ok(LinePoints {
                base: share,
                multiplier_bps,
                bonus: to_i64(bonus)?,
            })
        })
        .collect::<Result<_, EarningError>>()?;
    let line_bonus: i128 = line_points.iter().map(|line| i128::from(line.bonus)).sum();

    let tier_bonus = member_tier_id
        .and_then(|tier_id| tier_multiplier(program, tier_id))
        .map_or(0, |bps| extra_from_multiplier(base, bps));

    let mut campaign_bonuses = Vec::new();
    for campaign in &program.campaigns {
        if campaign_qualifies(campaign, order_currency, spend, order_time) {
            let points = extra_from_multiplier(base, campaign.multiplier_bps)
                + i128::from(campaign.bonus_points.max(0));
            campaign_bonuses.push(CampaignBonus {
                campaign_id: campaign.campaign_id.clone(),
                points: to_i64(points)?,
            });
        }
    }
    let campaign_total: i128 = campaign_bonuses.iter().map(|c| i128::from(c.points)).sum();

    // Line multipliers never take a line below zero, so the total cannot be negative; the max is
    // a belt for that invariant, not a rule.
    let total = (i128::from(base) + line_bonus + tier_bonus + campaign_total).max(0);
    Ok(Earning {
        eligible_spend_minor: to_i64(spend)?,
        base,
        lines: line_points,
        line_bonus: to_i64(line_bonus)?,
        tier_bonus: to_i64(tier_bonus)?,
        campaign_bonuses,
        total: to_i64(total)?,
    })
}

/// Points to take back for a refund, so that the points reversed so far stay proportional to the
/// amount refunded so far.
///
/// `total_refunded_amount_minor` is **cumulative**: every refund of the order so far, this one
/// included. `already_reversed_points` is what earlier refunds of the order reversed. The result is
///
/// ```text
/// floor(original_points × min(total_refunded, original_amount) / original_amount)
///     − already_reversed
/// ```
///
/// clamped to `0..=original_points − already_reversed`. Rounding the cumulative target (not each
/// refund) is what makes partial refunds add up: the reversals never sum past `original_points`,
/// and the refund that brings the order to fully refunded lands exactly on it. Three refunds of a
/// third of a 100-point order reverse 33, 33 and 34.
///
/// An order with no eligible amount (`original_amount_minor ≤ 0`) has nothing proportional to
/// reverse and yields 0; negative inputs count as 0.
pub fn reversal_for_refund(
    original_points: i64,
    original_amount_minor: i64,
    total_refunded_amount_minor: i64,
    already_reversed_points: i64,
) -> i64 {
    if original_amount_minor <= 0 {
        return 0;
    }
    let original_points = i128::from(original_points.max(0));
    let already = i128::from(already_reversed_points).clamp(0, original_points);
    let refunded = i128::from(total_refunded_amount_minor.clamp(0, original_amount_minor));
    let target = original_points * refunded / i128::from(original_amount_minor);
    // target ≤ original_points and already ≥ 0, so the difference fits in i64.
    i64::try_from((target - already).max(0)).unwrap_or(0)
}

/// Splits `total` over `weights` in proportion, by largest remainder: each part gets
/// `floor(total × weight / Σweights)`, and the units left over go one each to the parts with the
/// largest remainders (ties to the earlier part). The parts sum exactly to `total`.
///
/// Expects non-negative inputs. When the weights sum to 0 every part is 0 (earning only calls it
/// so with a zero total, because zero spend earns zero base).
pub(crate) fn allocate_proportionally(total: i64, weights: &[i64]) -> Vec<i64> {
    let sum: i128 = weights.iter().map(|&w| i128::from(w.max(0))).sum();
    if sum == 0 || total <= 0 {
        return vec![0; weights.len()];
    }
    let total = i128::from(total);
    let mut parts: Vec<i128> = Vec::with_capacity(weights.len());
    let mut remainders: Vec<(i128, usize)> = Vec::with_capacity(weights.len());
    for (index, &weight) in weights.iter().enumerate() {
        let scaled = total * i128::from(weight.max(0));
        parts.push(scaled / sum);
        remainders.push((scaled % sum, index));
    }
    let left_over = total - parts.iter().sum::<i128>();
    // Largest remainder first; the index breaks ties so the result is deterministic.
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, index) in remainders
        .iter()
        .take(usize::try_from(left_over).unwrap_or(0))
    {
        parts[index] += 1;
    }
    // Each part is at most `total`, which came from an i64.
    parts
        .into_iter()
        .map(|part| i64::try_from(part).unwrap_or(i64::MAX))
        .collect()
}

/// The multiplier for a line: the highest matching SKU multiplier, else the highest matching
/// category multiplier, else none.
fn line_multiplier(multipliers: &[EarningMultiplier], line: &EligibleLine<'_>) -> Option<i32> {
    let best = |matches: &dyn Fn(&Target) -> bool| {
        multipliers
            .iter()
            .filter(|m| m.target.as_ref().is_some_and(matches))
            .map(|m| m.multiplier_bps.max(0))
            .max()
    };
    // An empty SKU or category names nothing, so it must not match lines that lack one.
    let same = |wanted: &str, have: &str| !wanted.is_empty() && wanted == have;
    let is_sku = |target: &Target| matches!(target, Target::Sku(sku) if same(sku, line.sku));
    let is_category =
        |target: &Target| matches!(target, Target::Category(c) if same(c, line.category));
    best(&is_sku).or_else(|| best(&is_category))
}

/// The multiplier of `tier_id`, when the program's tiers are on and the tier exists.
fn tier_multiplier(program: &LoyaltyProgram, tier_id: &str) -> Option<i32> {
    let tiers_on =
        TierBasis::try_from(program.tier_basis).is_ok_and(|basis| basis != TierBasis::Unspecified);
    if !tiers_on {
        return None;
    }
    program
        .tiers
        .iter()
        .find(|tier| tier.tier_id == tier_id)
        .map(|tier| tier.multiplier_bps)
}

/// Whether `campaign` applies to an order at `order_time` (unix seconds) with `spend` in
/// `order_currency`. A campaign missing either end of its window (the contract requires both)
/// never applies: an open-ended bonus by accident would be costly.
fn campaign_qualifies(
    campaign: &Campaign,
    order_currency: &str,
    spend: i128,
    order_time: i64,
) -> bool {
    let (Some(start), Some(end)) = (&campaign.start_time, &campaign.end_time) else {
        return false;
    };
    let in_window = !is_before(order_time, start) && is_before(order_time, end);
    let spends_enough = campaign.min_spend.as_ref().is_none_or(|min| {
        min.currency_code == order_currency && spend >= i128::from(min.amount_minor)
    });
    in_window && spends_enough
}

/// Whether the whole second `seconds` is strictly before `timestamp` (which may carry nanos).
fn is_before(seconds: i64, timestamp: &Timestamp) -> bool {
    (seconds, 0) < (timestamp.seconds, timestamp.nanos)
}

/// `floor(points × bps / 10_000)` for non-negative inputs.
fn times_bps(points: i64, bps: i32) -> i128 {
    i128::from(points.max(0)) * i128::from(bps.max(0)) / BPS_ONE
}

/// What a bonus multiplier adds on top of `points`: `floor(points × bps / 10_000) − points`,
/// or 0 for multipliers of 1× or less.
fn extra_from_multiplier(points: i64, bps: i32) -> i128 {
    (times_bps(points, bps) - i128::from(points)).max(0)
}

fn to_i64(value: i128) -> Result<i64, EarningError> {
    i64::try_from(value).map_err(|_| EarningError::Overflow)
}

#[cfg(test)]
mod tests {
    use super::*;
    use commerce_api::commerce::common::v1::Money;
    use commerce_api::commerce::loyalty::v1::{EarningRule, Tier};
    use proptest::prelude::*;

    fn usd(amount_minor: i64) -> Money {
        Money {
            currency_code: "USD".into(),
            amount_minor,
        }
    }

    /// 10 points per USD 1.00, no multipliers, campaigns or tiers.
    fn ten_per_dollar() -> LoyaltyProgram {
        LoyaltyProgram {
            earning: Some(EarningRule {
                points: 10,
                per_spend: Some(usd(100)),
            }),
            ..LoyaltyProgram::default()
        }
    }

    fn line(sku: &'static str, category: &'static str, amount_minor: i64) -> EligibleLine<'static> {
        EligibleLine {
            sku,
            category,
            amount_minor,
        }
    }

    fn campaign(
        id: &str,
        start: i64,
        end: i64,
        multiplier_bps: i32,
        bonus_points: i64,
    ) -> Campaign {
        Campaign {
            campaign_id: id.into(),
            start_time: Some(Timestamp {
                seconds: start,
                nanos: 0,
            }),
            end_time: Some(Timestamp {
                seconds: end,
                nanos: 0,
            }),
            multiplier_bps,
            bonus_points,
            ..Campaign::default()
        }
    }

    fn sku_multiplier(sku: &str, multiplier_bps: i32) -> EarningMultiplier {
        EarningMultiplier {
            target: Some(Target::Sku(sku.into())),
            multiplier_bps,
        }
    }

    fn category_multiplier(category: &str, multiplier_bps: i32) -> EarningMultiplier {
        EarningMultiplier {
            target: Some(Target::Category(category.into())),
            multiplier_bps,
        }
    }

    fn earn(program: &LoyaltyProgram, lines: &[EligibleLine<'_>]) -> Earning {
        earn_points(program, "USD", lines, 1_000, None).expect("valid program")
    }

    #[test]
    fn one_dollar_earns_ten_points() {
        let earning = earn(&ten_per_dollar(), &[line("latte", "coffee", 100)]);
        assert_eq!(earning.base, 10);
        assert_eq!(earning.total, 10);
    }

    #[test]
    fn base_is_rounded_down_once_per_order_not_per_line() {
        // $12.34 → 123.4 → 123; per-line rounding of 3 × $4.11 + $0.01 would give 120.
        let lines = [
            line("a", "", 411),
            line("b", "", 411),
            line("c", "", 411),
            line("d", "", 1),
        ];
        let earning = earn(&ten_per_dollar(), &lines);
        assert_eq!(earning.eligible_spend_minor, 1234);
        assert_eq!(earning.base, 123);
        assert_eq!(earning.lines.iter().map(|l| l.base).sum::<i64>(), 123);
        assert_eq!(earning.total, 123);
    }

    #[test]
    fn order_in_another_currency_earns_nothing_even_in_a_campaign() {
        let mut program = ten_per_dollar();
        program
            .campaigns
            .push(campaign("double", 0, 10_000, 20_000, 50));
        let earning = earn_points(&program, "EUR", &[line("latte", "", 1_000)], 1_000, None)
            .expect("valid program");
        assert_eq!(earning.total, 0);
        assert_eq!(earning.eligible_spend_minor, 0);
        assert!(earning.campaign_bonuses.is_empty());
        assert_eq!(earning.lines, vec![LinePoints::default()]);
    }

    #[test]
    fn sku_multiplier_of_one_and_a_half_applies_to_its_line_only() {
        let mut program = ten_per_dollar();
        program.multipliers.push(sku_multiplier("latte", 15_000));
        // $5.00 latte → 50 base → 75; $3.00 muffin → 30.
        let earning = earn(
            &program,
            &[line("latte", "coffee", 500), line("muffin", "bakery", 300)],
        );
        assert_eq!(earning.base, 80);
        assert_eq!(earning.lines[0].multiplier_bps, Some(15_000));
        assert_eq!(earning.lines[0].bonus, 25);
        assert_eq!(earning.lines[1].bonus, 0);
        assert_eq!(earning.line_bonus, 25);
        assert_eq!(earning.total, 105);
    }

    #[test]
    fn sku_multiplier_beats_a_higher_category_multiplier() {
        let mut program = ten_per_dollar();
        program
            .multipliers
            .push(category_multiplier("coffee", 30_000));
        program.multipliers.push(sku_multiplier("latte", 15_000));
        let earning = earn(
            &program,
            &[line("latte", "coffee", 100), line("drip", "coffee", 100)],
        );
        assert_eq!(earning.lines[0].multiplier_bps, Some(15_000));
        assert_eq!(earning.lines[1].multiplier_bps, Some(30_000));
        assert_eq!(earning.total, 10 + 5 + 10 + 20);
    }

    #[test]
    fn highest_of_several_matching_multipliers_wins() {
        let mut program = ten_per_dollar();
        program.multipliers.push(sku_multiplier("latte", 12_000));
        program.multipliers.push(sku_multiplier("latte", 20_000));
        program.multipliers.push(sku_multiplier("latte", 15_000));
        let earning = earn(&program, &[line("latte", "coffee", 100)]);
        assert_eq!(earning.lines[0].multiplier_bps, Some(20_000));
        assert_eq!(earning.total, 20);
    }

    #[test]
    fn zero_multiplier_excludes_a_line_and_empty_targets_never_match() {
        let mut program = ten_per_dollar();
        program.multipliers.push(category_multiplier("alcohol", 0));
        program.multipliers.push(sku_multiplier("", 50_000));
        let earning = earn(
            &program,
            &[line("", "alcohol", 1_000), line("", "food", 1_000)],
        );
        assert_eq!(earning.lines[0].bonus, -100);
        assert_eq!(earning.lines[1].multiplier_bps, None);
        assert_eq!(earning.total, 100);
    }

    #[test]
    fn line_bonus_rounds_down_per_line() {
        let mut program = ten_per_dollar();
        program.multipliers.push(sku_multiplier("latte", 15_000));
        // $0.50 → 5 base → 7.5 → 7.
        let earning = earn(&program, &[line("latte", "", 50)]);
        assert_eq!(earning.lines[0].bonus, 2);
        assert_eq!(earning.total, 7);
    }

    #[test]
    fn double_points_campaign_applies_only_inside_its_window() {
        let mut program = ten_per_dollar();
        program
            .campaigns
            .push(campaign("double", 1_000, 2_000, 20_000, 0));
        let lines = [line("latte", "", 500)];
        let at = |t| earn_points(&program, "USD", &lines, t, None).expect("valid program");

        assert_eq!(at(999).total, 50, "before the start");
        assert_eq!(at(1_000).total, 100, "at the start (inclusive)");
        assert_eq!(at(1_999).total, 100, "inside");
        assert_eq!(at(2_000).total, 50, "at the end (exclusive)");
        assert_eq!(
            at(1_500).campaign_bonuses,
            vec![CampaignBonus {
                campaign_id: "double".into(),
                points: 50
            }]
        );
    }

    #[test]
    fn campaign_start_with_nanos_excludes_its_whole_second() {
        let mut program = ten_per_dollar();
        let mut half_past = campaign("c", 1_000, 2_000, 0, 7);
        half_past.start_time = Some(Timestamp {
            seconds: 1_000,
            nanos: 500_000_000,
        });
        program.campaigns.push(half_past);
        let earning =
            earn_points(&program, "USD", &[line("", "", 100)], 1_000, None).expect("valid");
        assert!(earning.campaign_bonuses.is_empty());
    }

    #[test]
    fn campaign_min_spend_in_another_currency_does_not_qualify() {
        let mut program = ten_per_dollar();
        let mut euros = campaign("eur", 0, 10_000, 0, 25);
        euros.min_spend = Some(Money {
            currency_code: "EUR".into(),
            amount_minor: 100,
        });
        let mut dollars = campaign("usd", 0, 10_000, 0, 40);
        dollars.min_spend = Some(usd(1_000));
        program.campaigns = vec![euros, dollars];

        let small = earn(&program, &[line("", "", 999)]);
        assert!(small.campaign_bonuses.is_empty(), "below the USD minimum");
        let enough = earn(&program, &[line("", "", 1_000)]);
        assert_eq!(
            enough.campaign_bonuses,
            vec![CampaignBonus {
                campaign_id: "usd".into(),
                points: 40
            }]
        );
        assert_eq!(enough.total, 100 + 40);
    }

    #[test]
    fn campaign_without_a_window_never_applies() {
        let mut program = ten_per_dollar();
        let mut open = campaign("open", 0, 10_000, 20_000, 5);
        open.end_time = None;
        program.campaigns.push(open);
        assert!(
            earn(&program, &[line("", "", 100)])
                .campaign_bonuses
                .is_empty()
        );
    }

    fn program_with_tiers() -> LoyaltyProgram {
        let mut program = ten_per_dollar();
        program.tier_basis = TierBasis::PointsEarned as i32;
        program.tiers = vec![
            Tier {
                tier_id: "member".into(),
                threshold: 0,
                multiplier_bps: 0,
                ..Tier::default()
            },
            Tier {
                tier_id: "gold".into(),
                threshold: 1_000,
                multiplier_bps: 12_500,
                ..Tier::default()
            },
        ];
        program
    }

    #[test]
    fn tier_multiplier_adds_to_base_and_stacks_additively_with_campaigns() {
        let mut program = program_with_tiers();
        program
            .campaigns
            .push(campaign("double", 0, 10_000, 20_000, 0));
        let lines = [line("", "", 1_000)];
        let gold = earn_points(&program, "USD", &lines, 1_000, Some("gold")).expect("valid");
        assert_eq!(gold.base, 100);
        assert_eq!(gold.tier_bonus, 25);
        assert_eq!(gold.campaign_bonuses[0].points, 100);
        assert_eq!(gold.total, 225);
    }

    #[test]
    fn tier_multipliers_of_one_or_less_and_unknown_or_disabled_tiers_add_nothing() {
        let mut program = program_with_tiers();
        let lines = [line("", "", 1_000)];
        let member = earn_points(&program, "USD", &lines, 1_000, Some("member")).expect("valid");
        assert_eq!((member.tier_bonus, member.total), (0, 100));
        let unknown = earn_points(&program, "USD", &lines, 1_000, Some("platinum")).expect("valid");
        assert_eq!(unknown.tier_bonus, 0);
        program.tier_basis = TierBasis::Unspecified as i32;
        let off = earn_points(&program, "USD", &lines, 1_000, Some("gold")).expect("valid");
        assert_eq!(off.tier_bonus, 0);
    }

    #[test]
    fn invalid_programs_and_lines_are_errors() {
        let no_rule = LoyaltyProgram::default();
        assert_eq!(
            earn_points(&no_rule, "USD", &[], 0, None),
            Err(EarningError::MissingEarningRule)
        );
        let mut zero_unit = ten_per_dollar();
        zero_unit.earning = Some(EarningRule {
            points: 10,
            per_spend: Some(usd(0)),
        });
        assert_eq!(
            earn_points(&zero_unit, "USD", &[], 0, None),
            Err(EarningError::NonPositiveSpendUnit { amount_minor: 0 })
        );
        assert_eq!(
            earn_points(
                &ten_per_dollar(),
                "USD",
                &[line("", "", 5), line("", "", -1)],
                0,
                None
            ),
            Err(EarningError::NegativeLineAmount { index: 1 })
        );
    }

    #[test]
    fn empty_order_earns_only_flat_campaign_bonus() {
        let mut program = ten_per_dollar();
        program
            .campaigns
            .push(campaign("hello", 0, 10_000, 20_000, 15));
        let earning = earn(&program, &[]);
        assert_eq!((earning.base, earning.total), (0, 15));
    }

    #[test]
    fn allocation_gives_leftovers_to_largest_remainders() {
        // 10 over 1:1:1 → 3.33 each; the first gets the leftover unit.
        assert_eq!(allocate_proportionally(10, &[1, 1, 1]), vec![4, 3, 3]);
        // 123 over 411,411,411,1 → 40.97 three times and 0.10: the 3 leftover units go to the .97s.
        assert_eq!(
            allocate_proportionally(123, &[411, 411, 411, 1]),
            vec![41, 41, 41, 0]
        );
        assert_eq!(allocate_proportionally(5, &[0, 0]), vec![0, 0]);
    }

    #[test]
    fn full_refund_reverses_everything() {
        assert_eq!(reversal_for_refund(123, 1_234, 1_234, 0), 123);
    }

    #[test]
    fn three_partial_refunds_of_a_third_reverse_exactly_the_original() {
        let (points, amount) = (100, 1_000);
        let first = reversal_for_refund(points, amount, 333, 0);
        let second = reversal_for_refund(points, amount, 666, first);
        let third = reversal_for_refund(points, amount, 1_000, first + second);
        assert_eq!((first, second, third), (33, 33, 34));
    }

    #[test]
    fn refund_beyond_the_order_amount_reverses_only_what_remains() {
        assert_eq!(reversal_for_refund(100, 1_000, 5_000, 40), 60);
        assert_eq!(reversal_for_refund(100, 1_000, 1_000, 100), 0);
        assert_eq!(reversal_for_refund(100, 0, 10, 0), 0);
        assert_eq!(reversal_for_refund(100, 1_000, -5, 0), 0);
    }

    proptest! {
        #[test]
        fn allocation_sums_exactly_to_the_total(
            total in 0i64..1_000_000_000,
            weights in prop::collection::vec(0i64..10_000_000, 0..40),
        ) {
            let parts = allocate_proportionally(total, &weights);
            prop_assert_eq!(parts.len(), weights.len());
            let weight_sum: i64 = weights.iter().sum();
            let expected = if weight_sum == 0 { 0 } else { total };
            prop_assert_eq!(parts.iter().sum::<i64>(), expected);
            for (part, weight) in parts.iter().zip(&weights) {
                prop_assert!(*part >= 0);
                // Never more than one unit above the exact proportional share.
                if weight_sum > 0 {
                    let exact = i128::from(total) * i128::from(*weight) / i128::from(weight_sum);
                    let part = i128::from(*part);
                    prop_assert!(exact <= part && part <= exact + 1);
                }
            }
        }

        #[test]
        fn line_shares_sum_to_the_base_and_total_matches_the_breakdown(
            amounts in prop::collection::vec(0i64..100_000, 1..20),
            multiplier in 0i32..40_000,
        ) {
            let mut program = ten_per_dollar();
            program.multipliers.push(sku_multiplier("x", multiplier));
            let lines: Vec<EligibleLine<'_>> = amounts
                .iter()
                .enumerate()
                .map(|(i, &amount_minor)| EligibleLine {
                    sku: if i % 2 == 0 { "x" } else { "y" },
                    category: "",
                    amount_minor,
                })
                .collect();
            let earning = earn(&program, &lines);
            prop_assert_eq!(earning.lines.iter().map(|l| l.base).sum::<i64>(), earning.base);
            prop_assert_eq!(earning.base, amounts.iter().sum::<i64>() * 10 / 100);
            prop_assert_eq!(earning.total, earning.base + earning.line_bonus + earning.tier_bonus);
            prop_assert!(earning.total >= 0);
        }

        #[test]
        fn partial_reversals_never_exceed_the_original_and_a_full_refund_reaches_it(
            points in 0i64..1_000_000,
            refunds in prop::collection::vec(1i64..50_000, 1..12),
        ) {
            let amount: i64 = refunds.iter().sum();
            let mut refunded = 0;
            let mut reversed = 0;
            for refund in &refunds {
                refunded += refund;
                let step = reversal_for_refund(points, amount, refunded, reversed);
                prop_assert!(step >= 0);
                reversed += step;
                prop_assert!(reversed <= points);
            }
            prop_assert_eq!(reversed, points);
        }
    }
}
