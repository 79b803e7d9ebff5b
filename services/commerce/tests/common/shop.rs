//! A small shop on a running binary for end-to-end and fault tests: one always-open location, one
//! $10.00 item, one registered member; orders placed one cart each (a cart places one order).

use commerce_api::commerce::checkout::v1 as co;
use commerce_api::commerce::common::v1::Money;
use commerce_api::commerce::loyalty::v1 as lo;

use super::client::Caller;

pub fn usd(cents: i64) -> Option<Money> {
    Some(Money {
        currency_code: "USD".into(),
        amount_minor: cents,
    })
}

/// What the shop is made of.
#[derive(Debug, Clone)]
pub struct Shop {
    pub location: String,
    pub item: String,
    pub member: String,
    pub customer: String,
}

/// A placed order as the caller saw it.
#[derive(Debug, Clone)]
pub struct Placed {
    pub order_id: String,
    pub total: i64,
}

impl Shop {
    /// Creates the shop (idempotently: the same keys give the same objects).
    pub async fn open(client: &impl Caller) -> Result<Shop, String> {
        let every_day = [1, 2, 3, 4, 5, 6, 7].map(|day| co::OpeningHours {
            day,
            open_minute: 0,
            close_minute: 1440,
        });
        let location: co::CreateLocationResponse = client
            .call(
                "/commerce.checkout.v1.MenuService/CreateLocation",
                co::CreateLocationRequest {
                    location: Some(co::Location {
                        display_name: "Fault shop".into(),
                        time_zone: "UTC".into(),
                        currency_code: "USD".into(),
                        opening_hours: every_day.to_vec(),
                        fulfillment_modes: vec![co::FulfillmentMode::Pickup as i32],
                        ..Default::default()
                    }),
                },
                Some("shop-location"),
            )
            .await?;
        let item: co::CreateMenuItemResponse = client
            .call(
                "/commerce.checkout.v1.MenuService/CreateMenuItem",
                co::CreateMenuItemRequest {
                    item: Some(co::MenuItem {
                        sku: "COFFEE".into(),
                        display_name: "Coffee".into(),
                        category: "drinks".into(),
                        base_price: usd(1_000),
                        active: true,
                        ..Default::default()
                    }),
                },
                Some("shop-item"),
            )
            .await?;
        let customer = "shop-customer".to_owned();
        let member: lo::EnrollMemberResponse = client
            .call(
                "/commerce.loyalty.v1.MemberService/EnrollMember",
                lo::EnrollMemberRequest {
                    customer_id: customer.clone(),
                    registered: true,
                    ..Default::default()
                },
                None,
            )
            .await?;
        Ok(Shop {
            location: location.location.unwrap_or_default().location_id,
            item: item.item.unwrap_or_default().item_id,
            member: member.member.unwrap_or_default().member_id,
            customer,
        })
    }

    /// Places one order of `quantity` items with idempotency key `key` (its cart's keys derive
    /// from it, so a retry of the whole sequence reuses the same cart and order).
    pub async fn place(
        &self,
        client: &impl Caller,
        key: &str,
        quantity: i32,
    ) -> Result<Placed, String> {
        let request = self.prepare(client, key, quantity, None).await?;
        let total = request
            .expected_total
            .as_ref()
            .map_or(0, |total| total.amount_minor);
        let placed: co::PlaceOrderResponse = client
            .call(
                "/commerce.checkout.v1.OrderService/PlaceOrder",
                request,
                Some(key),
            )
            .await?;
        Ok(Placed {
            order_id: placed.order.unwrap_or_default().order_id,
            total,
        })
    }

    /// A quoted cart of `quantity` items, with the member's `reward` applied if any, ready to
    /// place (its keys derive from `key`): the PlaceOrder request paying with `tok_ok`.
    pub async fn prepare(
        &self,
        client: &impl Caller,
        key: &str,
        quantity: i32,
        reward: Option<&str>,
    ) -> Result<co::PlaceOrderRequest, String> {
        let cart: co::CreateCartResponse = client
            .call(
                "/commerce.checkout.v1.CartService/CreateCart",
                co::CreateCartRequest {
                    location_id: self.location.clone(),
                    customer_id: self.customer.clone(),
                    fulfillment: None,
                },
                Some(&format!("{key}-cart")),
            )
            .await?;
        let cart = cart.cart.unwrap_or_default().cart_id;
        let _: co::AddCartLineResponse = client
            .call(
                "/commerce.checkout.v1.CartService/AddCartLine",
                co::AddCartLineRequest {
                    cart_id: cart.clone(),
                    item_id: self.item.clone(),
                    quantity,
                    ..Default::default()
                },
                Some(&format!("{key}-line")),
            )
            .await?;
        if let Some(reward) = reward {
            let _: co::SetLoyaltyRewardResponse = client
                .call(
                    "/commerce.checkout.v1.CartService/SetLoyaltyReward",
                    co::SetLoyaltyRewardRequest {
                        cart_id: cart.clone(),
                        member_id: self.member.clone(),
                        reward: Some(co::LoyaltyRewardSelection {
                            reward_id: reward.to_owned(),
                        }),
                    },
                    None,
                )
                .await?;
        }
        let quote: co::QuoteCartResponse = client
            .call(
                "/commerce.checkout.v1.CartService/QuoteCart",
                co::QuoteCartRequest {
                    cart_id: cart.clone(),
                },
                None,
            )
            .await?;
        let quote = quote.quote.unwrap_or_default();
        Ok(co::PlaceOrderRequest {
            cart_id: cart,
            quote_id: quote.quote_id,
            expected_total: quote.total,
            payment_token: "tok_ok".into(),
            ..Default::default()
        })
    }

    /// Gives the member `points` and makes a $2-off reward costing 20 points; returns its id.
    pub async fn reward(&self, client: &impl Caller, points: i64) -> String {
        let _: lo::AdjustPointsResponse = client
            .call(
                "/commerce.loyalty.v1.PointsService/AdjustPoints",
                lo::AdjustPointsRequest {
                    member_id: self.member.clone(),
                    points,
                    reason: "welcome bonus".into(),
                },
                Some(&format!("welcome-{points}")),
            )
            .await
            .unwrap();
        let reward: lo::CreateRewardResponse = client
            .call(
                "/commerce.loyalty.v1.RewardService/CreateReward",
                lo::CreateRewardRequest {
                    reward: Some(lo::Reward {
                        display_name: "$2 off".into(),
                        point_cost: 20,
                        benefit: Some(lo::reward::Benefit::AmountOff(Money {
                            currency_code: "USD".into(),
                            amount_minor: 200,
                        })),
                        active: true,
                        ..Default::default()
                    }),
                },
                Some("reward-1"),
            )
            .await
            .unwrap();
        reward.reward.unwrap().reward_id
    }

    /// Every point the member ever earned.
    pub async fn lifetime_points(&self, client: &impl Caller) -> Result<i64, String> {
        let balance: lo::GetBalanceResponse = client
            .call(
                "/commerce.loyalty.v1.MemberService/GetBalance",
                lo::GetBalanceRequest {
                    member_id: self.member.clone(),
                },
                None,
            )
            .await?;
        Ok(balance.balance.unwrap_or_default().lifetime_points)
    }
}
