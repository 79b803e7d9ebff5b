//! Cart pricing: a pure function from a cart's lines, promotions, loyalty reward, fees, tip and
//! tax to every amount a [`Quote`] shows. No I/O, no clock: the same input always prices the same.
//!
//! Two entry points:
//!
//! - [`price`] prices in one step, taking tax from [`PricingInput::tax`].
//! - [`allocate`] then [`finish`]: the engine calls the tax hook in between. [`allocate`] works
//!   out subtotals and discounts per line (exactly what a tax hook needs, see
//!   [`crate::tax::TaxRequest::for_allocation`]); [`finish`] adds tax, fees and tip and totals.
//!   [`price`] is `finish(allocate(input)?, &input.tax)`.
//!
//! [`Priced::fill_quote`] copies the result into a [`Quote`] so callers do not repeat the mapping.
//!
//! # The rounding rule
//!
//! These are the rules the `Quote` contract calls "the rounding rule"; clients rely on them to
//! reproduce a quote to the minor unit.
//!
//! 1. **Integer minor units only.** Every amount is an `i64` of minor units; products and
//!    quotients are taken in `i128` and must fit back into `i64`, or pricing fails with
//!    [`PricingError::Overflow`]. Negative amounts, quantities below 1, basis points above 10 000
//!    and rates above 1 000 000 ppm are refused with [`PricingError::Invalid`].
//! 2. **Half up.** Every percentage is computed per line and rounded half up to the minor unit:
//!    `round_half_up(amount × rate / scale)`, so 2.5 → 3 and 2.49 → 2 (amounts are never
//!    negative, so "half up" and "half away from zero" agree).
//! 3. **Line subtotal** = `(unit_base + unit_modifiers) × quantity`; `items_subtotal` is the sum of
//!    line subtotals.
//! 4. **Discounts are allocated to lines**, promotions first (in the order given), then the
//!    loyalty reward. Each discount only takes what is still *left* on a line (its subtotal less
//!    the discounts allocated to it before), so a line never goes below zero and a discount
//!    larger than the cart is clamped to what is left:
//!    - *Percent off* (`bps`): per line, `round_half_up(line_subtotal × bps / 10 000)`, clamped to
//!      what is left on that line. It is a share of the line subtotal, not of what earlier
//!      discounts left (two 10 % promotions take 20 %, as `Reward.percent_off_bps` says "off the
//!      items subtotal").
//!    - *Amount off*: clamped to what is left on the whole cart, then split across lines in
//!      proportion to what is left on each line (for the first discount that is the line
//!      subtotal) by the **largest-remainder method**: each line gets the floor of its exact share
//!      and the minor units still missing go one each to the lines with the largest remainders,
//!      ties to the earlier line. The shares sum exactly to the discount and never exceed a line.
//!    - *Percent-off reward with a cap* (`max_minor`): the per-line percent amounts are used
//!      unless their sum exceeds the cap; then the discount is the cap, allocated like an amount
//!      off.
//!    - *Free-item reward*: one unit (unit base + unit modifiers) of the cheapest line with that
//!      item (ties to the earlier line), clamped to what is left on that line. If the item is not
//!      in the cart the reward does not apply ([`Priced::reward_applied`] is false).
//!    - A promotion whose `min_subtotal_minor` exceeds `items_subtotal` (before any discount) does
//!      not apply and is not listed in [`Priced::applied_promotions`]. One that meets it is listed
//!      with its amount, which may be 0 when earlier discounts left nothing.
//!
//!    `discount_total` is the sum of promotion amounts, `reward_discount` the reward's, and each
//!    line's `line_discount` is the sum of both allocated to it.
//! 5. **Tax** per line = `round_half_up((line_subtotal − line_discount) × rate_ppm / 1 000 000)`
//!    with the rate of the line's tax category. A category without a rate (including an empty
//!    category) is **untaxed**: its tax is 0. Fees and the tip are **not taxed**. A tax hook may
//!    instead supply the tax per line ([`TaxSource::PerLine`]); `tax_total` is the sum.
//! 6. **Tip**: a fixed amount, or `round_half_up((items_subtotal − discount_total −
//!    reward_discount) × bps / 10 000)` — the items after discounts, before tax and fees.
//! 7. **Fees** are added as given; `fees_total` is their sum.
//! 8. `line_total = line_subtotal − line_discount + line_tax`, and
//!    `total = items_subtotal − discount_total − reward_discount + fees_total + tax_total + tip`.
//!    Every amount in the result is non-negative.

use std::collections::{BTreeMap, BTreeSet};

use commerce_api::commerce::checkout::v1::{AppliedPromotion, Fee, Quote, QuoteLine, TaxRate};
use platform::units::money;

/// Basis points in one whole (10 000 bps = 100 %).
pub const BPS_SCALE: i64 = 10_000;
/// Parts per million in one whole (1 000 000 ppm = 100 %).
pub const PPM_SCALE: i64 = 1_000_000;

/// Why a cart could not be priced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PricingError {
    /// An amount does not fit in 64-bit minor units.
    #[error("an amount overflows 64-bit minor units")]
    Overflow,
    /// An input breaks a rule (negative amount, zero quantity, duplicate line id, ...).
    #[error("{field}: {message}")]
    Invalid {
        /// The input concerned, e.g. `lines[2].quantity`.
        field: String,
        /// What is wrong.
        message: String,
    },
}

impl PricingError {
    fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        PricingError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Everything needed to price a cart. Prices come from the menu, never from the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricingInput {
    /// ISO-4217 code of every amount (the location's currency).
    pub currency_code: String,
    /// The cart lines, in cart order (the order breaks allocation ties).
    pub lines: Vec<LineInput>,
    /// Promotions the cart's codes resolved to, applied in this order.
    pub promotions: Vec<Promotion>,
    /// The loyalty reward to redeem, if any; applied after the promotions.
    pub reward: Option<RewardBenefit>,
    /// Service and delivery fees (untaxed).
    pub fees: Vec<FeeInput>,
    /// The customer's tip (untaxed).
    pub tip: TipInput,
    /// Where tax comes from; only [`price`] and [`finish`] read it.
    pub tax: TaxSource,
}

/// One cart line with its menu prices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineInput {
    /// The cart line id, unique within the cart.
    pub line_id: String,
    /// The menu item.
    pub item_id: String,
    /// Item name at pricing time.
    pub display_name: String,
    /// Number of items, at least 1.
    pub quantity: i32,
    /// Price of one item without modifiers.
    pub unit_base_minor: i64,
    /// Price of the chosen modifiers for one item.
    pub unit_modifiers_minor: i64,
    /// The item's tax category; looked up in [`TaxSource::Rates`].
    pub tax_category: String,
}

/// A promotion that a cart's code resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Promotion {
    /// The code the customer entered.
    pub code: String,
    /// Description shown to customers.
    pub description: String,
    /// What it takes off.
    pub kind: PromotionKind,
    /// Smallest items subtotal (before discounts) it applies to; 0 for any.
    pub min_subtotal_minor: i64,
}

/// What a promotion takes off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromotionKind {
    /// Basis points of each line subtotal (1000 = 10 %), at most 10 000.
    PercentOff {
        /// Basis points off.
        bps: i64,
    },
    /// A fixed amount off the cart, allocated to lines.
    AmountOff {
        /// Amount off.
        minor: i64,
    },
}

/// What a loyalty reward gives (the `benefit` of `commerce.loyalty.v1.Reward`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RewardBenefit {
    /// One unit of this menu item free (the cheapest matching line's unit price).
    FreeItem {
        /// Checkout's menu item id.
        item_id: String,
    },
    /// A fixed amount off the cart, allocated to lines.
    AmountOff {
        /// Amount off.
        minor: i64,
    },
    /// Basis points of each line subtotal, optionally capped in total.
    PercentOff {
        /// Basis points off (1000 = 10 %), at most 10 000.
        bps: i64,
        /// Cap on the whole reward; `None` for no cap.
        max_minor: Option<i64>,
    },
}

/// A fee added to the order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeeInput {
    /// Stable code, e.g. `delivery`.
    pub code: String,
    /// Name shown to customers.
    pub display_name: String,
    /// Amount of the fee.
    pub minor: i64,
}

/// The customer's tip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TipInput {
    /// No tip.
    #[default]
    None,
    /// A fixed amount.
    Amount(i64),
    /// Basis points (1500 = 15 %, at most 10 000) of the items subtotal after discounts.
    PercentBps(i64),
}

/// Where the tax of each line comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaxSource {
    /// Rates in ppm per tax category (8.875 % = 88 750); categories not listed are untaxed.
    Rates(BTreeMap<String, i64>),
    /// The tax of every line by line id, as a tax hook answered it; must cover each line once.
    PerLine(BTreeMap<String, i64>),
}

impl TaxSource {
    /// Rates from a location's `tax_rates`. A category listed twice keeps its last rate.
    pub fn from_tax_rates(rates: &[TaxRate]) -> Self {
        TaxSource::Rates(rate_table(rates))
    }
}

/// A location's `tax_rates` as category → ppm.
pub(crate) fn rate_table(rates: &[TaxRate]) -> BTreeMap<String, i64> {
    rates
        .iter()
        .map(|rate| (rate.tax_category.clone(), i64::from(rate.rate_ppm)))
        .collect()
}

/// `round_half_up(amount × numerator / denominator)` for a non-negative amount and ratio, computed
/// in `i128`. This is the one rounding helper behind every percentage (discounts, tip, tax).
pub fn round_half_up(amount: i64, numerator: i64, denominator: i64) -> Result<i64, PricingError> {
    if amount < 0 || numerator < 0 || denominator <= 0 {
        return Err(PricingError::invalid(
            "amount",
            "rounding needs a non-negative amount and ratio",
        ));
    }
    let product = i128::from(amount) * i128::from(numerator);
    let denominator = i128::from(denominator);
    // floor((2·a·n + d) / 2d) is a·n/d rounded half up, exactly, for non-negative values.
    let rounded = (2 * product + denominator) / (2 * denominator);
    i64::try_from(rounded).map_err(|_| PricingError::Overflow)
}

/// Tax on one line: `round_half_up(taxable × rate_ppm / 1 000 000)`; shared with the default
/// tax hook so both compute tax the same way.
pub fn line_tax(taxable_minor: i64, rate_ppm: i64) -> Result<i64, PricingError> {
    check_rate(rate_ppm, PPM_SCALE, "rate_ppm")?;
    check_amount(taxable_minor, "taxable_minor")?;
    round_half_up(taxable_minor, rate_ppm, PPM_SCALE)
}

/// A cart line after discounts are allocated: what a tax hook is asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocatedLine {
    /// The line as given.
    pub line: LineInput,
    /// `(unit_base + unit_modifiers) × quantity`.
    pub line_subtotal_minor: i64,
    /// Promotion and reward discounts allocated to the line.
    pub line_discount_minor: i64,
}

impl AllocatedLine {
    /// What tax is charged on: `line_subtotal − line_discount` (never negative).
    pub fn taxable_minor(&self) -> i64 {
        self.line_subtotal_minor - self.line_discount_minor
    }
}

/// A cart with subtotals and discounts worked out, waiting for tax. Built only by [`allocate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocated {
    currency_code: String,
    lines: Vec<AllocatedLine>,
    items_subtotal_minor: i64,
    discount_total_minor: i64,
    reward_discount_minor: i64,
    reward_applied: bool,
    applied_promotions: Vec<AppliedPromotionAmount>,
    fees: Vec<FeeInput>,
    tip: TipInput,
}

impl Allocated {
    /// The currency of every amount.
    pub fn currency_code(&self) -> &str {
        &self.currency_code
    }

    /// The lines with their subtotals and discounts, in cart order.
    pub fn lines(&self) -> &[AllocatedLine] {
        &self.lines
    }

    /// Sum of line subtotals.
    pub fn items_subtotal_minor(&self) -> i64 {
        self.items_subtotal_minor
    }

    /// Sum of promotion discounts.
    pub fn discount_total_minor(&self) -> i64 {
        self.discount_total_minor
    }

    /// The reward's discount.
    pub fn reward_discount_minor(&self) -> i64 {
        self.reward_discount_minor
    }
}

/// A promotion that applied, with the discount it gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedPromotionAmount {
    /// The code the customer entered.
    pub code: String,
    /// Description shown to customers.
    pub description: String,
    /// Discount it gave (non-negative; 0 if earlier discounts left nothing).
    pub discount_minor: i64,
}

/// One priced line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricedLine {
    /// The cart line.
    pub line_id: String,
    /// The menu item.
    pub item_id: String,
    /// Item name at pricing time.
    pub display_name: String,
    /// Quantity.
    pub quantity: i32,
    /// Price of one item without modifiers.
    pub unit_base_minor: i64,
    /// Price of the modifiers of one item.
    pub unit_modifiers_minor: i64,
    /// `(unit_base + unit_modifiers) × quantity`.
    pub line_subtotal_minor: i64,
    /// Promotion and reward discounts allocated to this line.
    pub line_discount_minor: i64,
    /// Tax on this line.
    pub line_tax_minor: i64,
    /// `line_subtotal − line_discount + line_tax`.
    pub line_total_minor: i64,
}

/// A priced cart: every amount of a [`Quote`], without its ids and times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Priced {
    /// The currency of every amount.
    pub currency_code: String,
    /// The priced lines, in cart order.
    pub lines: Vec<PricedLine>,
    /// Sum of line subtotals.
    pub items_subtotal_minor: i64,
    /// Sum of promotion discounts.
    pub discount_total_minor: i64,
    /// The loyalty reward's discount (0 when there is none or it did not apply).
    pub reward_discount_minor: i64,
    /// Whether the reward applied (false without a reward, or for a free item not in the cart).
    pub reward_applied: bool,
    /// The fees, as given.
    pub fees: Vec<FeeInput>,
    /// Sum of the fees.
    pub fees_total_minor: i64,
    /// Sum of line taxes.
    pub tax_total_minor: i64,
    /// The tip.
    pub tip_minor: i64,
    /// What the customer pays.
    pub total_minor: i64,
    /// Promotions that applied, in the order given, with their amounts.
    pub applied_promotions: Vec<AppliedPromotionAmount>,
}

impl Priced {
    /// The lines as `QuoteLine`s.
    pub fn quote_lines(&self) -> Vec<QuoteLine> {
        let currency = self.currency_code.as_str();
        self.lines
            .iter()
            .map(|line| QuoteLine {
                line_id: line.line_id.clone(),
                item_id: line.item_id.clone(),
                display_name: line.display_name.clone(),
                quantity: line.quantity,
                unit_base_price: money(currency, line.unit_base_minor),
                unit_modifiers_price: money(currency, line.unit_modifiers_minor),
                line_subtotal: money(currency, line.line_subtotal_minor),
                line_discount: money(currency, line.line_discount_minor),
                line_tax: money(currency, line.line_tax_minor),
                line_total: money(currency, line.line_total_minor),
            })
            .collect()
    }

    /// Sets every amount of `quote` (lines, totals, fees, applied promotions); leaves its ids,
    /// cart version and times alone.
    pub fn fill_quote(&self, quote: &mut Quote) {
        let currency = self.currency_code.as_str();
        quote.lines = self.quote_lines();
        quote.items_subtotal = money(currency, self.items_subtotal_minor);
        quote.discount_total = money(currency, self.discount_total_minor);
        quote.reward_discount = money(currency, self.reward_discount_minor);
        quote.fees = self
            .fees
            .iter()
            .map(|fee| Fee {
                code: fee.code.clone(),
                display_name: fee.display_name.clone(),
                amount: money(currency, fee.minor),
            })
            .collect();
        quote.fees_total = money(currency, self.fees_total_minor);
        quote.tax_total = money(currency, self.tax_total_minor);
        quote.tip = money(currency, self.tip_minor);
        quote.total = money(currency, self.total_minor);
        quote.applied_promotions = self
            .applied_promotions
            .iter()
            .map(|promotion| AppliedPromotion {
                code: promotion.code.clone(),
                description: promotion.description.clone(),
                discount: money(currency, promotion.discount_minor),
            })
            .collect();
    }
}

/// Prices a cart in one step, with tax from `input.tax`.
pub fn price(input: &PricingInput) -> Result<Priced, PricingError> {
    finish(allocate(input)?, &input.tax)
}

/// Validates the input and works out line subtotals and discounts (rules 1–4). Does not read
/// `input.tax`.
pub fn allocate(input: &PricingInput) -> Result<Allocated, PricingError> {
    validate(input)?;

    let subtotals = input
        .lines
        .iter()
        .map(|line| {
            let unit = checked_add(line.unit_base_minor, line.unit_modifiers_minor)?;
            checked_mul(unit, i64::from(line.quantity))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let items_subtotal = checked_sum(subtotals.iter().copied())?;

    // What is still left on each line; every discount takes from it and only from it.
    let mut left = subtotals.clone();

    let mut applied_promotions = Vec::new();
    let mut discount_total = 0i64;
    for promotion in &input.promotions {
        if items_subtotal < promotion.min_subtotal_minor {
            continue;
        }
        let shares = match promotion.kind {
            PromotionKind::PercentOff { bps } => percent_shares(&subtotals, &left, bps)?,
            PromotionKind::AmountOff { minor } => largest_remainder(minor, &left)?,
        };
        let amount = take(&mut left, &shares)?;
        discount_total = checked_add(discount_total, amount)?;
        applied_promotions.push(AppliedPromotionAmount {
            code: promotion.code.clone(),
            description: promotion.description.clone(),
            discount_minor: amount,
        });
    }

    let (reward_shares, reward_applied) = reward_shares(input, &subtotals, &left)?;
    let reward_discount = take(&mut left, &reward_shares)?;

    let lines = input
        .lines
        .iter()
        .zip(subtotals)
        .zip(left)
        .map(|((line, subtotal), left)| AllocatedLine {
            line: line.clone(),
            line_subtotal_minor: subtotal,
            line_discount_minor: subtotal - left,
        })
        .collect();

    Ok(Allocated {
        currency_code: input.currency_code.clone(),
        lines,
        items_subtotal_minor: items_subtotal,
        discount_total_minor: discount_total,
        reward_discount_minor: reward_discount,
        reward_applied,
        applied_promotions,
        fees: input.fees.clone(),
        tip: input.tip,
    })
}

/// What the reward takes from each line's `left` (rule 4), and whether it applied: an amount
/// or a capped percentage spread like a promotion, or one unit of the cheapest matching line.
fn reward_shares(
    input: &PricingInput,
    subtotals: &[i64],
    left: &[i64],
) -> Result<(Vec<i64>, bool), PricingError> {
    Ok(match &input.reward {
        None => (vec![0; left.len()], false),
        Some(RewardBenefit::AmountOff { minor }) => (largest_remainder(*minor, left)?, true),
        Some(RewardBenefit::PercentOff { bps, max_minor }) => {
            let shares = percent_shares(subtotals, left, *bps)?;
            let shares = match max_minor {
                Some(cap) if checked_sum(shares.iter().copied())? > *cap => {
                    largest_remainder(*cap, left)?
                }
                _ => shares,
            };
            (shares, true)
        }
        Some(RewardBenefit::FreeItem { item_id }) => {
            let cheapest = input
                .lines
                .iter()
                .enumerate()
                .filter(|(_, line)| &line.item_id == item_id)
                // `allocate` checked unit prices add without overflow; ties keep the earlier.
                .min_by_key(|(_, line)| line.unit_base_minor + line.unit_modifiers_minor);
            match cheapest {
                None => (vec![0; left.len()], false),
                Some((index, line)) => {
                    let mut shares = vec![0; left.len()];
                    shares[index] =
                        (line.unit_base_minor + line.unit_modifiers_minor).min(left[index]);
                    (shares, true)
                }
            }
        }
    })
}

/// Adds tax (from rates, or per line from a tax hook), fees and tip, and totals (rules 5–8).
pub fn finish(allocated: Allocated, tax: &TaxSource) -> Result<Priced, PricingError> {
    let taxes = line_taxes(&allocated.lines, tax)?;

    let mut lines = Vec::with_capacity(allocated.lines.len());
    for (allocated_line, line_tax_minor) in allocated.lines.into_iter().zip(taxes) {
        let taxable = allocated_line.taxable_minor();
        let line = allocated_line.line;
        lines.push(PricedLine {
            line_total_minor: checked_add(taxable, line_tax_minor)?,
            line_id: line.line_id,
            item_id: line.item_id,
            display_name: line.display_name,
            quantity: line.quantity,
            unit_base_minor: line.unit_base_minor,
            unit_modifiers_minor: line.unit_modifiers_minor,
            line_subtotal_minor: allocated_line.line_subtotal_minor,
            line_discount_minor: allocated_line.line_discount_minor,
            line_tax_minor,
        });
    }
    let tax_total = checked_sum(lines.iter().map(|line| line.line_tax_minor))?;
    let fees_total = checked_sum(allocated.fees.iter().map(|fee| fee.minor))?;

    // Items after discounts; never negative since discounts are clamped to the lines.
    let discounted_items = allocated.items_subtotal_minor
        - allocated.discount_total_minor
        - allocated.reward_discount_minor;
    let tip = match allocated.tip {
        TipInput::None => 0,
        TipInput::Amount(minor) => minor,
        TipInput::PercentBps(bps) => round_half_up(discounted_items, bps, BPS_SCALE)?,
    };
    let total = checked_sum([discounted_items, fees_total, tax_total, tip])?;

    Ok(Priced {
        currency_code: allocated.currency_code,
        lines,
        items_subtotal_minor: allocated.items_subtotal_minor,
        discount_total_minor: allocated.discount_total_minor,
        reward_discount_minor: allocated.reward_discount_minor,
        reward_applied: allocated.reward_applied,
        fees: allocated.fees,
        fees_total_minor: fees_total,
        tax_total_minor: tax_total,
        tip_minor: tip,
        total_minor: total,
        applied_promotions: allocated.applied_promotions,
    })
}

/// The tax of each line, in line order.
fn line_taxes(lines: &[AllocatedLine], tax: &TaxSource) -> Result<Vec<i64>, PricingError> {
    match tax {
        TaxSource::Rates(rates) => {
            for (category, rate) in rates {
                check_rate(*rate, PPM_SCALE, &format!("tax.rates[{category}]"))?;
            }
            lines
                .iter()
                .map(|line| match rates.get(&line.line.tax_category) {
                    Some(rate) => line_tax(line.taxable_minor(), *rate),
                    None => Ok(0),
                })
                .collect()
        }
        TaxSource::PerLine(per_line) => {
            let line_ids: BTreeSet<&str> = lines.iter().map(|l| l.line.line_id.as_str()).collect();
            if let Some(unknown) = per_line.keys().find(|id| !line_ids.contains(id.as_str())) {
                return Err(PricingError::invalid(
                    format!("tax.per_line[{unknown}]"),
                    "no such line",
                ));
            }
            lines
                .iter()
                .map(|line| {
                    let field = format!("tax.per_line[{}]", line.line.line_id);
                    let tax = per_line
                        .get(&line.line.line_id)
                        .copied()
                        .ok_or_else(|| PricingError::invalid(&field, "line has no tax"))?;
                    check_amount(tax, &field)?;
                    Ok(tax)
                })
                .collect()
        }
    }
}

/// Per line, `round_half_up(subtotal × bps / 10 000)` clamped to what is left on the line.
fn percent_shares(subtotals: &[i64], left: &[i64], bps: i64) -> Result<Vec<i64>, PricingError> {
    subtotals
        .iter()
        .zip(left)
        .map(|(subtotal, left)| Ok(round_half_up(*subtotal, bps, BPS_SCALE)?.min(*left)))
        .collect()
}

/// Splits `amount` (clamped to the sum of `weights`) across lines in proportion to `weights` by
/// the largest-remainder method; ties go to the earlier line. With the weights being what is left
/// on each line, no share exceeds its line.
fn largest_remainder(amount: i64, weights: &[i64]) -> Result<Vec<i64>, PricingError> {
    let total_weight = checked_sum(weights.iter().copied())?;
    let amount = amount.min(total_weight);
    if amount == 0 {
        return Ok(vec![0; weights.len()]);
    }
    let amount_wide = i128::from(amount);
    let total_wide = i128::from(total_weight);
    let mut shares = Vec::with_capacity(weights.len());
    let mut remainders = Vec::with_capacity(weights.len());
    for (index, weight) in weights.iter().enumerate() {
        let exact = amount_wide * i128::from(*weight);
        // The share is at most `amount`, so it fits in i64.
        shares.push((exact / total_wide) as i64);
        remainders.push((exact % total_wide, index));
    }
    let missing = amount - shares.iter().sum::<i64>();
    // Largest remainder first; on equal remainders the earlier line first.
    remainders.sort_by(|(a, a_index), (b, b_index)| b.cmp(a).then(a_index.cmp(b_index)));
    for (_, index) in remainders.into_iter().take(missing as usize) {
        shares[index] += 1;
    }
    Ok(shares)
}

/// Takes `shares` off `left` line by line and returns their sum.
fn take(left: &mut [i64], shares: &[i64]) -> Result<i64, PricingError> {
    for (left, share) in left.iter_mut().zip(shares) {
        debug_assert!(
            *share >= 0 && *share <= *left,
            "a share never exceeds its line"
        );
        *left -= *share;
    }
    checked_sum(shares.iter().copied())
}

fn validate(input: &PricingInput) -> Result<(), PricingError> {
    let code = &input.currency_code;
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(PricingError::invalid(
            "currency_code",
            "must be an upper-case ISO-4217 code",
        ));
    }
    let mut line_ids = BTreeSet::new();
    for (index, line) in input.lines.iter().enumerate() {
        let field = |name: &str| format!("lines[{index}].{name}");
        if line.line_id.is_empty() {
            return Err(PricingError::invalid(field("line_id"), "must not be empty"));
        }
        if !line_ids.insert(line.line_id.as_str()) {
            return Err(PricingError::invalid(field("line_id"), "duplicate line id"));
        }
        if line.quantity < 1 {
            return Err(PricingError::invalid(
                field("quantity"),
                "must be at least 1",
            ));
        }
        check_amount(line.unit_base_minor, &field("unit_base_minor"))?;
        check_amount(line.unit_modifiers_minor, &field("unit_modifiers_minor"))?;
    }
    for (index, promotion) in input.promotions.iter().enumerate() {
        let field = |name: &str| format!("promotions[{index}].{name}");
        check_amount(promotion.min_subtotal_minor, &field("min_subtotal_minor"))?;
        match promotion.kind {
            PromotionKind::PercentOff { bps } => check_rate(bps, BPS_SCALE, &field("bps"))?,
            PromotionKind::AmountOff { minor } => check_amount(minor, &field("minor"))?,
        }
    }
    match &input.reward {
        None | Some(RewardBenefit::FreeItem { .. }) => {}
        Some(RewardBenefit::AmountOff { minor }) => check_amount(*minor, "reward.minor")?,
        Some(RewardBenefit::PercentOff { bps, max_minor }) => {
            check_rate(*bps, BPS_SCALE, "reward.bps")?;
            if let Some(cap) = max_minor {
                check_amount(*cap, "reward.max_minor")?;
            }
        }
    }
    for (index, fee) in input.fees.iter().enumerate() {
        check_amount(fee.minor, &format!("fees[{index}].minor"))?;
    }
    match input.tip {
        TipInput::None => {}
        TipInput::Amount(minor) => check_amount(minor, "tip.amount")?,
        TipInput::PercentBps(bps) => check_rate(bps, BPS_SCALE, "tip.percent_bps")?,
    }
    Ok(())
}

fn check_amount(minor: i64, field: &str) -> Result<(), PricingError> {
    if minor < 0 {
        return Err(PricingError::invalid(field, "must not be negative"));
    }
    Ok(())
}

fn check_rate(rate: i64, scale: i64, field: &str) -> Result<(), PricingError> {
    if !(0..=scale).contains(&rate) {
        return Err(PricingError::invalid(
            field,
            format!("must be between 0 and {scale}"),
        ));
    }
    Ok(())
}

fn checked_add(a: i64, b: i64) -> Result<i64, PricingError> {
    a.checked_add(b).ok_or(PricingError::Overflow)
}

fn checked_mul(a: i64, b: i64) -> Result<i64, PricingError> {
    a.checked_mul(b).ok_or(PricingError::Overflow)
}

fn checked_sum(amounts: impl IntoIterator<Item = i64>) -> Result<i64, PricingError> {
    amounts.into_iter().try_fold(0i64, checked_add)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_half_up_rounds_exact_halves_up() {
        assert_eq!(round_half_up(25, 1_000, BPS_SCALE), Ok(3)); // 2.5
        assert_eq!(round_half_up(24, 1_000, BPS_SCALE), Ok(2)); // 2.4
        assert_eq!(round_half_up(26, 1_000, BPS_SCALE), Ok(3)); // 2.6
        assert_eq!(round_half_up(1, 1, 3), Ok(0)); // 0.33
        assert_eq!(round_half_up(2, 1, 3), Ok(1)); // 0.67
    }

    #[test]
    fn largest_remainder_gives_missing_units_to_largest_remainders_then_earlier_lines() {
        assert_eq!(
            largest_remainder(100, &[100, 100, 100]),
            Ok(vec![34, 33, 33])
        );
        assert_eq!(largest_remainder(10, &[100, 200, 300]), Ok(vec![2, 3, 5]));
        // More than the weights hold is clamped to them.
        assert_eq!(largest_remainder(10, &[1, 2, 3]), Ok(vec![1, 2, 3]));
        assert_eq!(largest_remainder(50, &[10, 5]), Ok(vec![10, 5]));
        assert_eq!(largest_remainder(5, &[0, 0]), Ok(vec![0, 0]));
    }
}
