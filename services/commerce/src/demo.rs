//! `commerce demo`: seeds a tenant of its own on a running server — a location open around the
//! clock, a menu with modifier groups, a loyalty member, a subscription plan, and a cart of that
//! member with two lines, quoted — then prints shell `export` lines with the real ids and the
//! next calls to try. `eval "$(commerce demo)"` puts the ids into the shell; the README's quick
//! start does exactly that, and a test runs the README's block.
//!
//! Every create carries a fixed idempotency key, so running it again (within the server's
//! idempotency retention) answers with the same objects instead of making new ones. It never
//! touches the tenant clock: the demo tenant's times are wall-clock times.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use commerce_api::commerce::checkout::v1::{
    AddCartLineRequest, CreateCartRequest, CreateLocationRequest, CreateMenuItemRequest,
    Fulfillment, FulfillmentMode, Location, MenuItem, ModifierGroup, ModifierOption, OpeningHours,
    QuoteCartRequest, SelectedModifier, SlotCapacity, TaxRate,
    cart_service_client::CartServiceClient, menu_service_client::MenuServiceClient,
};
use commerce_api::commerce::common::v1::{DayOfWeek, Money};
use commerce_api::commerce::loyalty::v1::{
    EnrollMemberRequest, member_service_client::MemberServiceClient,
};
use commerce_api::commerce::subscriptions::v1::{
    BillingInterval, CreatePlanRequest, PlanVersion, plan_service_client::PlanServiceClient,
};
use tonic::transport::Channel;

/// Arguments of `demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// The running server (its API port).
    #[arg(long, env = "COMMERCE_URL", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// The tenant to seed (its own, so the demo never disturbs another tenant's data).
    #[arg(long, default_value = "quickstart")]
    pub tenant: String,
    /// How long to wait for a server that is still starting.
    #[arg(long, default_value_t = 60)]
    pub wait_seconds: u64,
    #[command(flatten)]
    pub auth: crate::AuthArgs,
}

/// The customer the demo's member and cart belong to.
const CUSTOMER: &str = "c-quickstart";
/// Every RPC gets this deadline: the demo talks to a local server.
const DEADLINE: Duration = Duration::from_secs(10);

/// What the demo made.
struct Seeded {
    location_id: String,
    item_id: String,
    member_id: String,
    plan_id: String,
    cart_id: String,
    quote_id: String,
    total_minor: i64,
    currency: String,
}

pub async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let token = crate::token(&crate::TokenArgs {
        tenant: args.tenant.clone(),
        subject: "quickstart".into(),
        scopes: None,
        ttl_minutes: 12 * 60,
        customer: None,
        auth: args.auth.clone(),
    })?;
    let channel = connect(&args.server, Duration::from_secs(args.wait_seconds)).await?;
    let seeded = seed(channel, &token, Duration::from_secs(args.wait_seconds)).await?;
    print!("{}", script(&args, &token, &seeded));
    Ok(())
}

/// A channel to `server`, retrying while it is still starting.
async fn connect(server: &str, patience: Duration) -> anyhow::Result<Channel> {
    let endpoint = Channel::from_shared(server.to_owned())
        .with_context(|| format!("{server} is not a URL"))?
        .connect_timeout(Duration::from_secs(2));
    let started = Instant::now();
    loop {
        match endpoint.connect().await {
            Ok(channel) => return Ok(channel),
            Err(error) if started.elapsed() < patience => {
                tracing::debug!(%error, "demo: server not up yet");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(error) => {
                return Err(error).with_context(|| {
                    format!(
                        "no server at {server} after {patience:?} (start it with `commerce serve`)"
                    )
                });
            }
        }
    }
}

/// `message` with the token, a deadline and, for creates, the idempotency key `key`.
fn request<M>(message: M, token: &str, key: Option<&str>) -> anyhow::Result<tonic::Request<M>> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(DEADLINE);
    let metadata = request.metadata_mut();
    metadata.insert("authorization", format!("Bearer {token}").parse()?);
    if let Some(key) = key {
        metadata.insert("idempotency-key", key.parse()?);
    }
    Ok(request)
}

fn usd(minor: i64) -> Option<Money> {
    platform::units::money("USD", minor)
}

async fn seed(channel: Channel, token: &str, patience: Duration) -> anyhow::Result<Seeded> {
    let location = create_location(&channel, token, patience).await?;
    let mut menu = MenuServiceClient::new(channel.clone());
    let coffee = menu
        .create_menu_item(request(
            CreateMenuItemRequest {
                item: Some(demo_coffee()),
            },
            token,
            Some("quickstart-coffee"),
        )?)
        .await
        .context("CreateMenuItem")?
        .into_inner()
        .item
        .unwrap_or_default();
    let member = MemberServiceClient::new(channel.clone())
        .enroll_member(request(
            EnrollMemberRequest {
                customer_id: CUSTOMER.into(),
                display_name: "Quick Start".into(),
                registered: true,
                ..Default::default()
            },
            token,
            Some("quickstart-member"),
        )?)
        .await
        .context("EnrollMember")?
        .into_inner()
        .member
        .unwrap_or_default();
    let plan = create_plan(&channel, token).await?;
    let (cart_id, quote) =
        quoted_cart(channel, token, &location.location_id, &coffee.item_id).await?;
    let total = quote.total.clone().unwrap_or_default();
    Ok(Seeded {
        location_id: location.location_id,
        item_id: coffee.item_id,
        member_id: member.member_id,
        plan_id: plan.plan_id,
        cart_id,
        quote_id: quote.quote_id,
        total_minor: total.amount_minor,
        currency: total.currency_code,
    })
}

/// The demo location; the first call also waits out a server that listens but is not serving
/// yet.
async fn create_location(
    channel: &Channel,
    token: &str,
    patience: Duration,
) -> anyhow::Result<Location> {
    let mut menu = MenuServiceClient::new(channel.clone());
    let started = Instant::now();
    loop {
        match menu
            .create_location(request(
                demo_location(),
                token,
                Some("quickstart-location"),
            )?)
            .await
        {
            Ok(response) => return Ok(response.into_inner().location.unwrap_or_default()),
            Err(status)
                if status.code() == tonic::Code::Unavailable && started.elapsed() < patience =>
            {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(status) => return Err(status).context("CreateLocation"),
        }
    }
}

/// A monthly plan.
async fn create_plan(
    channel: &Channel,
    token: &str,
) -> anyhow::Result<commerce_api::commerce::subscriptions::v1::Plan> {
    Ok(PlanServiceClient::new(channel.clone())
        .create_plan(request(
            CreatePlanRequest {
                display_name: "Coffee Club".into(),
                description: "A coffee a day, billed monthly.".into(),
                terms: Some(PlanVersion {
                    price: usd(1999),
                    interval: BillingInterval::Month as i32,
                    interval_count: 1,
                    ..Default::default()
                }),
            },
            token,
            Some("quickstart-plan"),
        )?)
        .await
        .context("CreatePlan")?
        .into_inner()
        .plan
        .unwrap_or_default())
}

/// The member's cart at `location_id` with two coffees (a large one, two regular), quoted.
async fn quoted_cart(
    channel: Channel,
    token: &str,
    location_id: &str,
    item_id: &str,
) -> anyhow::Result<(String, commerce_api::commerce::checkout::v1::Quote)> {
    let mut carts = CartServiceClient::new(channel);
    let cart = carts
        .create_cart(request(
            CreateCartRequest {
                location_id: location_id.to_owned(),
                customer_id: CUSTOMER.into(),
                fulfillment: Some(Fulfillment {
                    mode: FulfillmentMode::Pickup as i32,
                    ..Default::default()
                }),
            },
            token,
            Some("quickstart-cart"),
        )?)
        .await
        .context("CreateCart")?
        .into_inner()
        .cart
        .unwrap_or_default();
    let lines = [
        ("quickstart-line-1", "large", 1),
        ("quickstart-line-2", "regular", 2),
    ];
    for (key, size, quantity) in lines {
        carts
            .add_cart_line(request(
                AddCartLineRequest {
                    cart_id: cart.cart_id.clone(),
                    item_id: item_id.to_owned(),
                    quantity,
                    modifiers: vec![SelectedModifier {
                        group_id: "size".into(),
                        option_id: size.into(),
                        quantity: 1,
                    }],
                    ..Default::default()
                },
                token,
                Some(key),
            )?)
            .await
            .context("AddCartLine")?;
    }
    let quote = carts
        .quote_cart(request(
            QuoteCartRequest {
                cart_id: cart.cart_id.clone(),
            },
            token,
            None,
        )?)
        .await
        .context("QuoteCart")?
        .into_inner()
        .quote
        .unwrap_or_default();
    Ok((cart.cart_id, quote))
}

/// A location open around the clock (UTC), so the demo works at any hour: a location without
/// opening hours is always closed.
fn demo_location() -> CreateLocationRequest {
    let days = [
        DayOfWeek::Monday,
        DayOfWeek::Tuesday,
        DayOfWeek::Wednesday,
        DayOfWeek::Thursday,
        DayOfWeek::Friday,
        DayOfWeek::Saturday,
        DayOfWeek::Sunday,
    ];
    CreateLocationRequest {
        location: Some(Location {
            display_name: "Quick Start Café".into(),
            time_zone: "UTC".into(),
            currency_code: "USD".into(),
            opening_hours: days
                .into_iter()
                .map(|day| OpeningHours {
                    day: day as i32,
                    open_minute: 0,
                    close_minute: 24 * 60,
                })
                .collect(),
            fulfillment_modes: vec![FulfillmentMode::Pickup as i32],
            slot_capacity: Some(SlotCapacity {
                slot_minutes: 15,
                max_orders_per_slot: 50,
                prep_minutes: 5,
                ..Default::default()
            }),
            tax_rates: vec![TaxRate {
                tax_category: "prepared_food".into(),
                rate_ppm: 88_750,
            }],
            ..Default::default()
        }),
    }
}

/// A coffee with a required size choice (exactly one) and optional extras (up to two).
fn demo_coffee() -> MenuItem {
    let option = |id: &str, name: &str, price: i64, default: bool| ModifierOption {
        option_id: id.into(),
        display_name: name.into(),
        price: (price > 0).then(|| usd(price)).flatten(),
        default_selected: default,
        available: true,
    };
    MenuItem {
        sku: "COFFEE-1".into(),
        display_name: "Coffee".into(),
        category: "drinks".into(),
        tax_category: "prepared_food".into(),
        base_price: usd(350),
        modifier_groups: vec![
            ModifierGroup {
                group_id: "size".into(),
                display_name: "Size".into(),
                min_selections: 1,
                max_selections: 1,
                options: vec![
                    option("regular", "Regular", 0, true),
                    option("large", "Large", 75, false),
                ],
                ..Default::default()
            },
            ModifierGroup {
                group_id: "extras".into(),
                display_name: "Extras".into(),
                min_selections: 0,
                max_selections: 2,
                options: vec![
                    option("oat-milk", "Oat milk", 60, false),
                    option("extra-shot", "Extra shot", 90, false),
                ],
                ..Default::default()
            },
        ],
        active: true,
        ..Default::default()
    }
}

/// The shell lines `demo` prints: exports (for `eval`) and, as comments, the next calls with
/// the real ids.
fn script(args: &DemoArgs, token: &str, seeded: &Seeded) -> String {
    let api = args.server.trim_end_matches('/');
    let tenant = &args.tenant;
    let Seeded {
        location_id,
        item_id,
        member_id,
        plan_id,
        cart_id,
        quote_id,
        total_minor,
        currency,
    } = seeded;
    format!(
        r#"# commerce demo: tenant "{tenant}" on {api} is seeded (run it again: same objects).
# A location open around the clock, a coffee with size and extras, a loyalty member ({CUSTOMER}),
# a monthly plan, and the member's cart with two lines, quoted ({total_minor} {currency} minor units).
export API={api}
export TENANT={tenant}
export TOKEN={token}
export AUTH="authorization: Bearer {token}"
export LOCATION_ID={location_id}
export ITEM_ID={item_id}
export MEMBER_ID={member_id}
export PLAN_ID={plan_id}
export CART_ID={cart_id}
export QUOTE_ID={quote_id}
export TOTAL_MINOR={total_minor}
# Next (the quote expires after 10 minutes: run `commerce demo` again for a fresh one):
#   curl -s -H 'content-type: application/json' -H 'commerce-tenant: {tenant}' -d '{{"locationId":"{location_id}"}}' {api}/commerce.checkout.v1.MenuService/ListMenuItems
#   curl -s -H 'content-type: application/json' -H "$AUTH" -H 'idempotency-key: order-{cart_id}' -d '{{"cartId":"{cart_id}","quoteId":"{quote_id}","expectedTotal":{{"currencyCode":"{currency}","amountMinor":"{total_minor}"}},"paymentToken":"tok_ok"}}' {api}/commerce.checkout.v1.OrderService/PlaceOrder
#   curl -s -H 'content-type: application/json' -H "$AUTH" -d '{{"memberId":"{member_id}"}}' {api}/commerce.loyalty.v1.MemberService/GetBalance
#   curl -s -H 'content-type: application/json' -H "$AUTH" -H 'idempotency-key: sub-{member_id}' -d '{{"customerId":"{CUSTOMER}","planId":"{plan_id}","paymentToken":"tok_ok"}}' {api}/commerce.subscriptions.v1.SubscriptionService/CreateSubscription
"#
    )
}
