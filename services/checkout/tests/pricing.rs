//! Cart pricing and the tax hook port: worked examples in exact cents, the rounding and
//! allocation rules, the invariants every quote keeps, and the tax hook deadline.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use checkout::pricing::{
    self, FeeInput, LineInput, Priced, PricingError, PricingInput, Promotion, PromotionKind,
    RewardBenefit, TaxSource, TipInput, allocate, finish, price,
};
use checkout::tax::{
    LineTax, RateTableTax, TaxError, TaxHook, TaxRequest, TaxResponse, tax_with_deadline,
};
use commerce_api::commerce::checkout::v1::{Quote, TaxRate};
use commerce_api::commerce::common::v1::Money;
use proptest::prelude::*;

/// New York City sales tax, 8.875 %.
const NYC_PPM: i64 = 88_750;

fn line(
    id: &str,
    item: &str,
    quantity: i32,
    base: i64,
    modifiers: i64,
    category: &str,
) -> LineInput {
    LineInput {
        line_id: id.to_owned(),
        item_id: item.to_owned(),
        display_name: format!("{item} ({id})"),
        quantity,
        unit_base_minor: base,
        unit_modifiers_minor: modifiers,
        tax_category: category.to_owned(),
    }
}

fn cart(lines: Vec<LineInput>) -> PricingInput {
    PricingInput {
        currency_code: "USD".to_owned(),
        lines,
        promotions: Vec::new(),
        reward: None,
        fees: Vec::new(),
        tip: TipInput::None,
        tax: TaxSource::Rates(BTreeMap::new()),
    }
}

fn rates(entries: &[(&str, i64)]) -> TaxSource {
    TaxSource::Rates(
        entries
            .iter()
            .map(|(category, ppm)| ((*category).to_owned(), *ppm))
            .collect(),
    )
}

fn percent_off(code: &str, bps: i64, min_subtotal_minor: i64) -> Promotion {
    Promotion {
        code: code.to_owned(),
        description: format!("{code}: {bps} bps off"),
        kind: PromotionKind::PercentOff { bps },
        min_subtotal_minor,
    }
}

fn amount_off(code: &str, minor: i64) -> Promotion {
    Promotion {
        code: code.to_owned(),
        description: format!("{code}: {minor} off"),
        kind: PromotionKind::AmountOff { minor },
        min_subtotal_minor: 0,
    }
}

fn fee(code: &str, minor: i64) -> FeeInput {
    FeeInput {
        code: code.to_owned(),
        display_name: code.to_owned(),
        minor,
    }
}

fn line_discounts(priced: &Priced) -> Vec<i64> {
    priced.lines.iter().map(|l| l.line_discount_minor).collect()
}

fn line_taxes(priced: &Priced) -> Vec<i64> {
    priced.lines.iter().map(|l| l.line_tax_minor).collect()
}

fn line_totals(priced: &Priced) -> Vec<i64> {
    priced.lines.iter().map(|l| l.line_total_minor).collect()
}

/// The two-burger order of the module docs' worked example.
fn burger_order() -> PricingInput {
    PricingInput {
        promotions: vec![percent_off("SAVE10", 1_000, 2_000)],
        reward: Some(RewardBenefit::AmountOff { minor: 500 }),
        fees: vec![fee("delivery", 299)],
        tip: TipInput::PercentBps(1_500),
        tax: rates(&[("prepared_food", NYC_PPM)]),
        ..cart(vec![
            // Two burgers at 12.99 with cheese (+1.50).
            line("l1", "burger", 2, 1_299, 150, "prepared_food"),
            line("l2", "fries", 1, 399, 0, "prepared_food"),
            // Bottled water: a category the location has no rate for, so untaxed.
            line("l3", "water", 1, 250, 0, "grocery"),
        ])
    }
}

#[test]
fn two_burgers_with_promo_reward_nyc_tax_and_tip_price_to_the_cent() {
    let priced = price(&burger_order()).expect("prices");

    // Subtotals: l1 = (1299 + 150) × 2 = 2898, l2 = 399, l3 = 250; items = 3547.
    let subtotals: Vec<i64> = priced.lines.iter().map(|l| l.line_subtotal_minor).collect();
    assert_eq!(subtotals, vec![2_898, 399, 250]);
    assert_eq!(priced.items_subtotal_minor, 3_547);

    // SAVE10 (10 %, min 20.00 ≤ 35.47 applies), per line half up:
    //   l1 289.8 → 290, l2 39.9 → 40, l3 25.0 → 25; discount_total = 355.
    assert_eq!(priced.discount_total_minor, 355);
    assert_eq!(priced.applied_promotions.len(), 1);
    assert_eq!(priced.applied_promotions[0].code, "SAVE10");
    assert_eq!(priced.applied_promotions[0].discount_minor, 355);

    // Reward 5.00 off, split by what is left (2608, 359, 225; sum 3192):
    //   l1 500×2608/3192 = 408.52, l2 56.23, l3 35.24 → floors 408 + 56 + 35 = 499;
    //   the missing cent goes to the largest remainder (l1): 409, 56, 35.
    assert_eq!(priced.reward_discount_minor, 500);
    assert!(priced.reward_applied);
    // Line discounts: l1 290 + 409 = 699, l2 40 + 56 = 96, l3 25 + 35 = 60.
    assert_eq!(line_discounts(&priced), vec![699, 96, 60]);

    // Tax 8.875 % on what is left: l1 2199 × 0.08875 = 195.16 → 195, l2 303 → 26.89 → 27,
    //   l3 untaxed (no rate for `grocery`) → 0; tax_total = 222.
    assert_eq!(line_taxes(&priced), vec![195, 27, 0]);
    assert_eq!(priced.tax_total_minor, 222);

    // Tip 15 % of items after discounts: (3547 − 355 − 500) = 2692 × 0.15 = 403.8 → 404.
    assert_eq!(priced.tip_minor, 404);
    assert_eq!(priced.fees_total_minor, 299);

    // Line totals: 2898 − 699 + 195 = 2394, 399 − 96 + 27 = 330, 250 − 60 + 0 = 190.
    assert_eq!(line_totals(&priced), vec![2_394, 330, 190]);
    // Total: 3547 − 355 − 500 + 299 + 222 + 404 = 3617.
    assert_eq!(priced.total_minor, 3_617);
}

#[test]
fn exact_halves_round_up_in_discounts_tax_and_tip() {
    let input = PricingInput {
        promotions: vec![percent_off("TEN", 1_000, 0)],
        tip: TipInput::PercentBps(625),
        tax: rates(&[("food", 62_500)]),
        ..cart(vec![line("l1", "soup", 1, 1_005, 0, "food")])
    };
    let priced = price(&input).expect("prices");
    // Discount 10 % of 1005 = 100.5 → 101.
    assert_eq!(priced.discount_total_minor, 101);
    // Tax 6.25 % of 904 = 56.5 → 57.
    assert_eq!(priced.tax_total_minor, 57);
    // Tip 6.25 % of 904 = 56.5 → 57.
    assert_eq!(priced.tip_minor, 57);
    // 1005 − 101 + 57 + 57.
    assert_eq!(priced.total_minor, 1_018);

    // Just below a half rounds down, a half and above rounds up.
    assert_eq!(pricing::round_half_up(49, 1, 100), Ok(0));
    assert_eq!(pricing::round_half_up(50, 1, 100), Ok(1));
    assert_eq!(pricing::line_tax(40, 12_500), Ok(1)); // 0.5
    assert_eq!(pricing::line_tax(39, 12_500), Ok(0)); // 0.4875
}

#[test]
fn amount_off_is_split_by_largest_remainder_and_sums_exactly() {
    // Three equal lines, 1.00 off: 33.33 each → 33 + 33 + 33, the missing cent to the first
    // (equal remainders go to the earlier line).
    let mut input = cart(vec![
        line("a", "x", 1, 100, 0, ""),
        line("b", "y", 1, 100, 0, ""),
        line("c", "z", 1, 100, 0, ""),
    ]);
    input.promotions = vec![amount_off("DOLLAR", 100)];
    let priced = price(&input).expect("prices");
    assert_eq!(line_discounts(&priced), vec![34, 33, 33]);
    assert_eq!(priced.discount_total_minor, 100);

    // 3.33, 3.33, 3.34 with 0.01 off: shares 0.00333, 0.00333, 0.00334 → the cent goes to the
    // largest remainder, the last line, not the first.
    let mut input = cart(vec![
        line("a", "x", 1, 333, 0, ""),
        line("b", "y", 1, 333, 0, ""),
        line("c", "z", 1, 334, 0, ""),
    ]);
    input.promotions = vec![amount_off("CENT", 1)];
    let priced = price(&input).expect("prices");
    assert_eq!(line_discounts(&priced), vec![0, 0, 1]);

    // Uneven weights 1, 2, 3 (×100) with 0.10 off: 1.67, 3.33, 5.00 → 1 + 3 + 5 = 9, +1 to the
    // first (remainder 0.67) → 2, 3, 5.
    let mut input = cart(vec![
        line("a", "x", 1, 100, 0, ""),
        line("b", "y", 2, 100, 0, ""),
        line("c", "z", 3, 100, 0, ""),
    ]);
    input.reward = Some(RewardBenefit::AmountOff { minor: 10 });
    let priced = price(&input).expect("prices");
    assert_eq!(line_discounts(&priced), vec![2, 3, 5]);
    assert_eq!(priced.reward_discount_minor, 10);
}

#[test]
fn free_item_reward_discounts_one_unit_of_the_cheapest_matching_line() {
    let mut input = cart(vec![
        // A burger with bacon: unit 12.99 + 3.00.
        line("l1", "burger", 1, 1_299, 300, "food"),
        // Two plain burgers: unit 12.99, the cheapest burger unit.
        line("l2", "burger", 2, 1_299, 0, "food"),
        line("l3", "fries", 1, 399, 0, "food"),
    ]);
    input.reward = Some(RewardBenefit::FreeItem {
        item_id: "burger".to_owned(),
    });
    input.tax = rates(&[("food", NYC_PPM)]);
    let priced = price(&input).expect("prices");
    assert!(priced.reward_applied);
    assert_eq!(priced.reward_discount_minor, 1_299);
    assert_eq!(line_discounts(&priced), vec![0, 1_299, 0]);
    // l2 is taxed on the one burger still paid for: 1299 × 0.08875 = 115.28 → 115.
    assert_eq!(priced.lines[1].line_tax_minor, 115);
}

#[test]
fn free_item_reward_for_an_item_not_in_the_cart_does_not_apply() {
    let mut input = cart(vec![line("l1", "fries", 1, 399, 0, "food")]);
    input.reward = Some(RewardBenefit::FreeItem {
        item_id: "burger".to_owned(),
    });
    let priced = price(&input).expect("prices");
    assert!(!priced.reward_applied);
    assert_eq!(priced.reward_discount_minor, 0);
    assert_eq!(priced.total_minor, 399);
}

#[test]
fn promotion_below_its_min_subtotal_does_not_apply_and_one_at_it_does() {
    let mut input = cart(vec![line("l1", "burger", 2, 1_000, 0, "food")]);
    input.promotions = vec![
        percent_off("BIGSPEND", 1_000, 2_001),
        percent_off("EXACTLY20", 1_000, 2_000),
    ];
    let priced = price(&input).expect("prices");
    let codes: Vec<&str> = priced
        .applied_promotions
        .iter()
        .map(|p| p.code.as_str())
        .collect();
    assert_eq!(codes, vec!["EXACTLY20"]);
    assert_eq!(priced.discount_total_minor, 200);
}

#[test]
fn stacked_percent_promotions_each_take_a_share_of_the_line_subtotal() {
    let mut input = cart(vec![line("l1", "burger", 1, 1_000, 0, "food")]);
    input.promotions = vec![percent_off("A", 1_000, 0), percent_off("B", 1_000, 0)];
    let priced = price(&input).expect("prices");
    // 10 % of 10.00 twice: 1.00 + 1.00 (not 1.00 + 0.90).
    assert_eq!(priced.discount_total_minor, 200);
}

#[test]
fn percent_reward_is_capped_and_the_cap_is_allocated_like_an_amount_off() {
    let mut input = cart(vec![
        line("l1", "platter", 1, 3_000, 0, "food"),
        line("l2", "soda", 1, 1_000, 0, "food"),
    ]);
    // 20 % would be 600 + 200 = 800; capped at 5.00, split 3:1 → 375 + 125.
    input.reward = Some(RewardBenefit::PercentOff {
        bps: 2_000,
        max_minor: Some(500),
    });
    let priced = price(&input).expect("prices");
    assert_eq!(priced.reward_discount_minor, 500);
    assert_eq!(line_discounts(&priced), vec![375, 125]);

    // Under the cap the per-line percent amounts stand.
    input.reward = Some(RewardBenefit::PercentOff {
        bps: 1_000,
        max_minor: Some(500),
    });
    let priced = price(&input).expect("prices");
    assert_eq!(line_discounts(&priced), vec![300, 100]);
}

#[test]
fn discounts_larger_than_the_cart_are_clamped_and_the_total_is_fees_tax_and_tip() {
    let mut input = cart(vec![
        line("l1", "burger", 1, 1_000, 0, "food"),
        line("l2", "fries", 1, 500, 0, "food"),
    ]);
    input.tax = rates(&[("food", NYC_PPM)]);
    input.promotions = vec![amount_off("THOUSAND", 1_000)];
    input.reward = Some(RewardBenefit::AmountOff { minor: 10_000 });
    input.fees = vec![fee("service", 299)];
    input.tip = TipInput::Amount(100);
    let priced = price(&input).expect("prices");
    // The promotion takes 10.00 of 15.00; the reward only the 5.00 left.
    assert_eq!(priced.discount_total_minor, 1_000);
    assert_eq!(priced.reward_discount_minor, 500);
    assert_eq!(line_discounts(&priced), vec![1_000, 500]);
    assert_eq!(line_totals(&priced), vec![0, 0]);
    assert_eq!(priced.tax_total_minor, 0);
    // Nothing left on the items: the customer pays the fee and the tip.
    assert_eq!(priced.total_minor, 399);

    // A percent tip on a fully discounted cart is 0.
    input.tip = TipInput::PercentBps(2_000);
    assert_eq!(price(&input).expect("prices").tip_minor, 0);

    // A free item after a promotion took part of its line is clamped to what is left.
    let mut input = cart(vec![line("l1", "burger", 1, 1_000, 0, "food")]);
    input.promotions = vec![percent_off("TEN", 1_000, 0)];
    input.reward = Some(RewardBenefit::FreeItem {
        item_id: "burger".to_owned(),
    });
    let priced = price(&input).expect("prices");
    assert_eq!(priced.reward_discount_minor, 900);
    assert_eq!(priced.total_minor, 0);
}

#[test]
fn negative_or_out_of_range_inputs_are_invalid() {
    let invalid = |input: &PricingInput| matches!(price(input), Err(PricingError::Invalid { .. }));
    let base = cart(vec![line("l1", "burger", 1, 1_000, 0, "food")]);

    let mut input = base.clone();
    input.lines[0].unit_base_minor = -1;
    assert!(invalid(&input));
    let mut input = base.clone();
    input.lines[0].unit_modifiers_minor = -1;
    assert!(invalid(&input));
    let mut input = base.clone();
    input.lines[0].quantity = 0;
    assert!(invalid(&input));
    let mut input = base.clone();
    input.lines.push(line("l1", "fries", 1, 100, 0, "food"));
    assert!(invalid(&input), "duplicate line id");
    let mut input = base.clone();
    input.promotions = vec![amount_off("NEG", -5)];
    assert!(invalid(&input));
    let mut input = base.clone();
    input.promotions = vec![percent_off("TOO_MUCH", 10_001, 0)];
    assert!(invalid(&input));
    let mut input = base.clone();
    input.reward = Some(RewardBenefit::PercentOff {
        bps: 1_000,
        max_minor: Some(-1),
    });
    assert!(invalid(&input));
    let mut input = base.clone();
    input.fees = vec![fee("service", -1)];
    assert!(invalid(&input));
    let mut input = base.clone();
    input.tip = TipInput::Amount(-1);
    assert!(invalid(&input));
    let mut input = base.clone();
    input.tax = rates(&[("food", -1)]);
    assert!(invalid(&input));
    let mut input = base.clone();
    input.currency_code = "usd".to_owned();
    assert!(invalid(&input));
}

#[test]
fn amounts_beyond_64_bits_fail_with_overflow() {
    let input = cart(vec![line("l1", "gold", 3, i64::MAX / 2, 0, "food")]);
    assert_eq!(price(&input), Err(PricingError::Overflow));

    let mut input = cart(vec![line("l1", "gold", 1, i64::MAX / 2, 0, "food")]);
    input.fees = vec![fee("a", i64::MAX / 2), fee("b", i64::MAX / 2)];
    assert_eq!(price(&input), Err(PricingError::Overflow));
}

#[test]
fn per_line_tax_must_cover_every_line_with_a_non_negative_amount() {
    let input = cart(vec![
        line("l1", "burger", 1, 1_000, 0, "food"),
        line("l2", "fries", 1, 500, 0, "food"),
    ]);
    let per_line = |entries: &[(&str, i64)]| {
        TaxSource::PerLine(
            entries
                .iter()
                .map(|(id, tax)| ((*id).to_owned(), *tax))
                .collect(),
        )
    };
    let allocated = allocate(&input).expect("allocates");

    let priced = finish(allocated.clone(), &per_line(&[("l1", 89), ("l2", 44)])).expect("prices");
    assert_eq!(priced.tax_total_minor, 133);
    assert_eq!(priced.total_minor, 1_633);

    for bad in [
        per_line(&[("l1", 89)]),
        per_line(&[("l1", 89), ("l2", 44), ("l9", 1)]),
        per_line(&[("l1", 89), ("l2", -1)]),
    ] {
        assert!(matches!(
            finish(allocated.clone(), &bad),
            Err(PricingError::Invalid { .. })
        ));
    }
}

#[test]
fn fill_quote_sets_every_amount_in_the_cart_currency_and_keeps_ids() {
    let priced = price(&burger_order()).expect("prices");
    let mut quote = Quote {
        quote_id: "q1".to_owned(),
        cart_id: "c1".to_owned(),
        cart_version: 7,
        ..Quote::default()
    };
    priced.fill_quote(&mut quote);
    let usd = |amount_minor| {
        Some(Money {
            currency_code: "USD".to_owned(),
            amount_minor,
        })
    };
    assert_eq!((quote.quote_id.as_str(), quote.cart_version), ("q1", 7));
    assert_eq!(quote.items_subtotal, usd(3_547));
    assert_eq!(quote.discount_total, usd(355));
    assert_eq!(quote.reward_discount, usd(500));
    assert_eq!(quote.fees_total, usd(299));
    assert_eq!(quote.tax_total, usd(222));
    assert_eq!(quote.tip, usd(404));
    assert_eq!(quote.total, usd(3_617));
    assert_eq!(quote.fees.len(), 1);
    assert_eq!(quote.fees[0].amount, usd(299));
    assert_eq!(quote.applied_promotions[0].discount, usd(355));
    assert_eq!(quote.lines.len(), 3);
    let first = &quote.lines[0];
    assert_eq!(first.line_id, "l1");
    assert_eq!(first.quantity, 2);
    assert_eq!(first.unit_base_price, usd(1_299));
    assert_eq!(first.unit_modifiers_price, usd(150));
    assert_eq!(first.line_subtotal, usd(2_898));
    assert_eq!(first.line_discount, usd(699));
    assert_eq!(first.line_tax, usd(195));
    assert_eq!(first.line_total, usd(2_394));
}

// ---------------------------------------------------------------------------------------------
// The tax hook port.

/// A hook that answers after a delay, with what its inner rate table says.
struct SlowHook(Duration);

#[async_trait]
impl TaxHook for SlowHook {
    async fn tax(&self, request: &TaxRequest) -> Result<TaxResponse, TaxError> {
        tokio::time::sleep(self.0).await;
        RateTableTax::new(&[]).tax(request).await
    }
}

struct FailingHook;

#[async_trait]
impl TaxHook for FailingHook {
    async fn tax(&self, _request: &TaxRequest) -> Result<TaxResponse, TaxError> {
        Err(TaxError::Failed("tax service returned 503".to_owned()))
    }
}

/// A hook that answers with fixed lines, whatever is asked.
struct FixedHook(Vec<(&'static str, i64)>);

#[async_trait]
impl TaxHook for FixedHook {
    async fn tax(&self, _request: &TaxRequest) -> Result<TaxResponse, TaxError> {
        Ok(TaxResponse {
            lines: self
                .0
                .iter()
                .map(|(line_id, tax_minor)| LineTax {
                    line_id: (*line_id).to_owned(),
                    tax_minor: *tax_minor,
                })
                .collect(),
        })
    }
}

fn two_line_request() -> TaxRequest {
    let input = cart(vec![
        line("l1", "burger", 1, 1_000, 0, "food"),
        line("l2", "fries", 1, 500, 0, "food"),
    ]);
    TaxRequest::for_allocation("loc-1", &allocate(&input).expect("allocates"))
}

#[tokio::test(flavor = "current_thread")]
async fn tax_hook_slower_than_the_deadline_fails_with_timeout() {
    tokio::time::pause();
    let request = two_line_request();
    let deadline = Duration::from_millis(800);

    let slow = SlowHook(Duration::from_secs(5));
    assert_eq!(
        tax_with_deadline(&slow, &request, deadline).await,
        Err(TaxError::Timeout(deadline))
    );

    // Within the deadline it answers.
    let quick = SlowHook(Duration::from_millis(100));
    let response = tax_with_deadline(&quick, &request, deadline)
        .await
        .expect("answers in time");
    assert_eq!(response.lines.len(), 2);
}

#[tokio::test]
async fn tax_hook_error_fails_the_tax_with_its_reason() {
    assert_eq!(
        tax_with_deadline(&FailingHook, &two_line_request(), Duration::from_secs(1)).await,
        Err(TaxError::Failed("tax service returned 503".to_owned()))
    );
}

#[tokio::test]
async fn tax_hook_answer_that_omits_repeats_or_invents_a_line_is_invalid() {
    let request = two_line_request();
    let timeout = Duration::from_secs(1);
    for answer in [
        vec![("l1", 89)],
        vec![("l1", 89), ("l2", 44), ("l2", 44)],
        vec![("l1", 89), ("l2", 44), ("l3", 0)],
        vec![("l1", 89), ("l2", -44)],
    ] {
        let hook = FixedHook(answer.clone());
        assert!(
            matches!(
                tax_with_deadline(&hook, &request, timeout).await,
                Err(TaxError::Invalid(_))
            ),
            "{answer:?} should be refused"
        );
    }
    let hook = FixedHook(vec![("l2", 44), ("l1", 89)]);
    assert!(tax_with_deadline(&hook, &request, timeout).await.is_ok());
}

#[tokio::test]
async fn rate_table_hook_between_allocate_and_finish_equals_pricing_with_rates() {
    let input = burger_order();
    let location_rates = vec![TaxRate {
        tax_category: "prepared_food".to_owned(),
        rate_ppm: 88_750,
    }];
    assert_eq!(input.tax, TaxSource::from_tax_rates(&location_rates));

    let allocated = allocate(&input).expect("allocates");
    let request = TaxRequest::for_allocation("loc-1", &allocated);
    assert_eq!(request.currency_code, "USD");
    let taxable: Vec<i64> = request.lines.iter().map(|l| l.taxable_minor).collect();
    assert_eq!(taxable, vec![2_199, 303, 190]);

    let hook = RateTableTax::new(&location_rates);
    let response = tax_with_deadline(&hook, &request, Duration::from_secs(1))
        .await
        .expect("taxes");
    let priced = finish(allocated, &response.into_tax_source()).expect("prices");
    assert_eq!(priced, price(&input).expect("prices"));
}

// ---------------------------------------------------------------------------------------------
// Invariants of every quote.

const ITEMS: [&str; 3] = ["burger", "fries", "soda"];
const CATEGORIES: [&str; 3] = ["food", "drink", "untaxed"];

fn arb_line() -> impl Strategy<Value = (usize, i32, i64, i64, usize)> {
    (
        0..ITEMS.len(),
        1i32..=99,
        0i64..=50_000,
        0i64..=5_000,
        0..CATEGORIES.len(),
    )
}

fn arb_promotion() -> impl Strategy<Value = Promotion> {
    let kind = prop_oneof![
        (0i64..=10_000).prop_map(|bps| PromotionKind::PercentOff { bps }),
        (0i64..=200_000).prop_map(|minor| PromotionKind::AmountOff { minor }),
    ];
    (kind, 0i64..=100_000).prop_map(|(kind, min_subtotal_minor)| Promotion {
        code: "CODE".to_owned(),
        description: String::new(),
        kind,
        min_subtotal_minor,
    })
}

fn arb_reward() -> impl Strategy<Value = Option<RewardBenefit>> {
    prop_oneof![
        Just(None),
        (0..ITEMS.len() + 1).prop_map(|index| Some(RewardBenefit::FreeItem {
            // One past the menu: an item never in the cart.
            item_id: ITEMS.get(index).unwrap_or(&"cake").to_string(),
        })),
        (0i64..=200_000).prop_map(|minor| Some(RewardBenefit::AmountOff { minor })),
        (1i64..=10_000, proptest::option::of(0i64..=50_000))
            .prop_map(|(bps, max_minor)| Some(RewardBenefit::PercentOff { bps, max_minor })),
    ]
}

fn arb_tip() -> impl Strategy<Value = TipInput> {
    prop_oneof![
        Just(TipInput::None),
        (0i64..=10_000).prop_map(TipInput::Amount),
        (0i64..=10_000).prop_map(TipInput::PercentBps),
    ]
}

fn arb_input() -> impl Strategy<Value = PricingInput> {
    (
        proptest::collection::vec(arb_line(), 0..8),
        proptest::collection::vec(arb_promotion(), 0..3),
        arb_reward(),
        proptest::collection::vec(0i64..=5_000, 0..3),
        arb_tip(),
        (0i64..=250_000, 0i64..=250_000),
    )
        .prop_map(|(lines, promotions, reward, fees, tip, (food, drink))| {
            let lines = lines
                .into_iter()
                .enumerate()
                .map(|(index, (item, quantity, base, modifiers, category))| {
                    line(
                        &format!("l{index}"),
                        ITEMS[item],
                        quantity,
                        base,
                        modifiers,
                        CATEGORIES[category],
                    )
                })
                .collect();
            PricingInput {
                promotions,
                reward,
                fees: fees.into_iter().map(|minor| fee("fee", minor)).collect(),
                tip,
                tax: rates(&[("food", food), ("drink", drink)]),
                ..cart(lines)
            }
        })
}

proptest! {
    #[test]
    fn every_quote_adds_up_line_by_line_and_in_total(input in arb_input()) {
        let priced = price(&input).expect("valid random carts price");

        prop_assert_eq!(
            priced.total_minor,
            priced.items_subtotal_minor - priced.discount_total_minor
                - priced.reward_discount_minor + priced.fees_total_minor
                + priced.tax_total_minor + priced.tip_minor
        );
        let sum = |field: fn(&pricing::PricedLine) -> i64| priced.lines.iter().map(field).sum::<i64>();
        prop_assert_eq!(sum(|l| l.line_subtotal_minor), priced.items_subtotal_minor);
        prop_assert_eq!(
            sum(|l| l.line_discount_minor),
            priced.discount_total_minor + priced.reward_discount_minor
        );
        prop_assert_eq!(sum(|l| l.line_tax_minor), priced.tax_total_minor);
        prop_assert_eq!(
            sum(|l| l.line_total_minor),
            priced.total_minor - priced.fees_total_minor - priced.tip_minor
        );
        prop_assert_eq!(
            priced.applied_promotions.iter().map(|p| p.discount_minor).sum::<i64>(),
            priced.discount_total_minor
        );
        prop_assert_eq!(
            priced.fees.iter().map(|f| f.minor).sum::<i64>(),
            priced.fees_total_minor
        );

        let TaxSource::Rates(rates) = &input.tax else { unreachable!("rates generated") };
        for (line, input_line) in priced.lines.iter().zip(&input.lines) {
            prop_assert_eq!(
                line.line_subtotal_minor,
                (line.unit_base_minor + line.unit_modifiers_minor) * i64::from(line.quantity)
            );
            prop_assert_eq!(
                line.line_total_minor,
                line.line_subtotal_minor - line.line_discount_minor + line.line_tax_minor
            );
            prop_assert!(line.line_discount_minor >= 0);
            prop_assert!(line.line_discount_minor <= line.line_subtotal_minor);
            prop_assert!(line.line_tax_minor >= 0);
            prop_assert!(line.line_total_minor >= 0);
            let expected_tax = match rates.get(&input_line.tax_category) {
                Some(rate) => pricing::line_tax(
                    line.line_subtotal_minor - line.line_discount_minor,
                    *rate,
                ).expect("in range"),
                None => 0,
            };
            prop_assert_eq!(line.line_tax_minor, expected_tax);
        }
        for amount in [
            priced.items_subtotal_minor, priced.discount_total_minor,
            priced.reward_discount_minor, priced.fees_total_minor,
            priced.tax_total_minor, priced.tip_minor, priced.total_minor,
        ] {
            prop_assert!(amount >= 0);
        }
        prop_assert!(
            priced.total_minor >= priced.fees_total_minor + priced.tax_total_minor + priced.tip_minor
        );
        if !priced.reward_applied {
            prop_assert_eq!(priced.reward_discount_minor, 0);
        }
    }
}
