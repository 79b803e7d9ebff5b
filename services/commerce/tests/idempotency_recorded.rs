//! Every RPC whose contract asks for an idempotency key records its exact answer in the commit of
//! its effect. Each call here dies at its crash point `<service>.<rpc>.replying` — committed, not
//! yet answered, so the idempotency layer never wrote its own record — and the retry with the
//! same key, against a server started again on the same files with that crash point still armed
//! (a handler that ran again would kill it), is a replay (`idempotent-replayed: true`) of the
//! object as stored, and exactly one object exists. Each service is one chain of servers: the
//! server that replays one call is armed for the next call's crash too.

mod common;

use commerce_api::commerce::checkout::v1 as co;
use commerce_api::commerce::common::v1::Money;
use commerce_api::commerce::loyalty::v1 as lo;
use commerce_api::commerce::subscriptions::v1 as su;

fn usd(minor: i64) -> Option<Money> {
    Some(Money {
        currency_code: "USD".into(),
        amount_minor: minor,
    })
}

/// One `commerce serve` of a chain and the token of the chain's tenant.
struct Server {
    running: common::Running,
    token: String,
}

impl Server {
    /// A server on `data` with the crash points `armed`.
    fn start(data: tempfile::TempDir, token: &str, armed: &[&str]) -> Server {
        let armed = armed.join(",");
        Server {
            running: common::start_with(data, &[], &[("COMMERCE_FAILPOINTS", &armed)]),
            token: token.to_owned(),
        }
    }

    /// Calls `path` over gRPC, with `key` as the idempotency key; true when the answer is a
    /// replay.
    async fn call<Req, Resp>(
        &self,
        path: &str,
        request: Req,
        key: Option<&str>,
    ) -> Result<(bool, Resp), tonic::Status>
    where
        Req: prost::Message + 'static,
        Resp: prost::Message + Default + 'static,
    {
        let channel =
            tonic::transport::Channel::from_shared(format!("http://{}", self.running.addr))
                .unwrap()
                .connect()
                .await
                .map_err(|error| tonic::Status::unavailable(error.to_string()))?;
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready()
            .await
            .map_err(|error| tonic::Status::unavailable(error.to_string()))?;
        let mut request = tonic::Request::new(request);
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", self.token).parse().unwrap(),
        );
        if let Some(key) = key {
            request
                .metadata_mut()
                .insert("idempotency-key", key.parse().unwrap());
        }
        let response = grpc
            .unary(
                request,
                path.parse().unwrap(),
                tonic_prost::ProstCodec::default(),
            )
            .await?;
        let replayed = response
            .metadata()
            .get("idempotent-replayed")
            .is_some_and(|value| value == "true");
        Ok((replayed, response.into_inner()))
    }

    /// A call that must succeed (set-up and reads).
    async fn ok<Req, Resp>(&self, path: &str, request: Req, key: Option<&str>) -> Resp
    where
        Req: prost::Message + 'static,
        Resp: prost::Message + Default + 'static,
    {
        match self.call(path, request, key).await {
            Ok((_, response)) => response,
            Err(status) => panic!("{path}: {status:?}"),
        }
    }

    /// Calls `path` with `key`, which kills this server at the call's armed crash point after
    /// its commit; starts the next server of the chain on a copy of the files with `armed` (the
    /// same crash point among them) and retries: the answer must be a replay.
    async fn dies_then_replays<Req, Resp>(
        &mut self,
        path: &str,
        request: Req,
        key: &str,
        armed: &[&str],
    ) -> Resp
    where
        Req: prost::Message + Clone + 'static,
        Resp: prost::Message + Default + 'static,
    {
        let died = self.call::<_, Resp>(path, request.clone(), Some(key)).await;
        assert!(
            died.is_err(),
            "{path} answered instead of dying at its crash point"
        );
        let status = self.running.child.wait().unwrap();
        assert!(!status.success(), "{path}: the server exited with {status}");
        let files = common::copy_of(self.running.data_dir.path());
        *self = Server::start(files, &self.token, armed);
        let (replayed, response) = self
            .call(path, request, Some(key))
            .await
            .unwrap_or_else(|status| panic!("{path} retried: {status:?}"));
        assert!(
            replayed,
            "{path}: the retry must replay the recorded answer"
        );
        response
    }
}

const CREATE_LOCATION: &str = "/commerce.checkout.v1.MenuService/CreateLocation";
const CREATE_MENU_ITEM: &str = "/commerce.checkout.v1.MenuService/CreateMenuItem";
const CREATE_CART: &str = "/commerce.checkout.v1.CartService/CreateCart";
const ADD_CART_LINE: &str = "/commerce.checkout.v1.CartService/AddCartLine";

fn location(name: &str) -> co::CreateLocationRequest {
    co::CreateLocationRequest {
        location: Some(co::Location {
            display_name: name.into(),
            time_zone: "UTC".into(),
            currency_code: "USD".into(),
            opening_hours: (1..=7)
                .map(|day| co::OpeningHours {
                    day,
                    open_minute: 0,
                    close_minute: 1440,
                })
                .collect(),
            fulfillment_modes: vec![co::FulfillmentMode::Pickup as i32],
            ..Default::default()
        }),
    }
}

fn menu_item(sku: &str) -> co::CreateMenuItemRequest {
    co::CreateMenuItemRequest {
        item: Some(co::MenuItem {
            sku: sku.into(),
            display_name: sku.into(),
            category: "drinks".into(),
            base_price: usd(300),
            active: true,
            ..Default::default()
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_creates_and_cart_lines_killed_before_the_reply_replay_after_a_restart() {
    let token = common::token_for("replay-checkout");
    let mut server = Server::start(
        tempfile::tempdir().unwrap(),
        &token,
        &["checkout.add_cart_line.replying"],
    );
    let shop: co::CreateLocationResponse = server
        .ok(CREATE_LOCATION, location("setup"), Some("setup-location"))
        .await;
    let shop = shop.location.unwrap().location_id;
    let coffee: co::CreateMenuItemResponse = server
        .ok(CREATE_MENU_ITEM, menu_item("COFFEE"), Some("setup-item"))
        .await;
    let coffee = coffee.item.unwrap().item_id;
    let cart = co::CreateCartRequest {
        location_id: shop.clone(),
        customer_id: "cust-1".into(),
        fulfillment: None,
    };
    let cart: co::CreateCartResponse = server.ok(CREATE_CART, cart, Some("setup-cart")).await;
    let cart = cart.cart.unwrap().cart_id;
    let get_cart = |cart_id: &str| co::GetCartRequest {
        cart_id: cart_id.into(),
    };

    // AddCartLine: one line, the cart as stored.
    let added: co::AddCartLineResponse = server
        .dies_then_replays(
            ADD_CART_LINE,
            co::AddCartLineRequest {
                cart_id: cart.clone(),
                item_id: coffee.clone(),
                quantity: 2,
                ..Default::default()
            },
            "kill-line",
            &[
                "checkout.add_cart_line.replying",
                "checkout.create_location.replying",
            ],
        )
        .await;
    let stored: co::GetCartResponse = server
        .ok(
            "/commerce.checkout.v1.CartService/GetCart",
            get_cart(&cart),
            None,
        )
        .await;
    assert_eq!(added.cart, stored.cart);
    let lines = &added.cart.as_ref().unwrap().lines;
    assert_eq!(lines.len(), 1, "one line: {lines:?}");
    assert_eq!(
        (lines[0].line_id.as_str(), lines[0].quantity),
        (added.line_id.as_str(), 2)
    );

    // CreateLocation: the location as stored, two locations in all.
    let created: co::CreateLocationResponse = server
        .dies_then_replays(
            CREATE_LOCATION,
            location("uptown"),
            "kill-location",
            &[
                "checkout.create_location.replying",
                "checkout.create_menu_item.replying",
            ],
        )
        .await;
    let uptown = created.location.unwrap();
    let stored: co::GetLocationResponse = server
        .ok(
            "/commerce.checkout.v1.MenuService/GetLocation",
            co::GetLocationRequest {
                location_id: uptown.location_id.clone(),
            },
            None,
        )
        .await;
    assert_eq!(stored.location.as_ref(), Some(&uptown));
    let listed: co::ListLocationsResponse = server
        .ok(
            "/commerce.checkout.v1.MenuService/ListLocations",
            co::ListLocationsRequest::default(),
            None,
        )
        .await;
    assert_eq!(listed.locations.len(), 2);

    // CreateMenuItem: the item as stored, two items in all.
    let created: co::CreateMenuItemResponse = server
        .dies_then_replays(
            CREATE_MENU_ITEM,
            menu_item("TEA"),
            "kill-item",
            &[
                "checkout.create_menu_item.replying",
                "checkout.create_cart.replying",
            ],
        )
        .await;
    let tea = created.item.unwrap();
    let stored: co::GetMenuItemResponse = server
        .ok(
            "/commerce.checkout.v1.MenuService/GetMenuItem",
            co::GetMenuItemRequest {
                item_id: tea.item_id.clone(),
            },
            None,
        )
        .await;
    assert_eq!(stored.item.as_ref(), Some(&tea));
    let listed: co::ListMenuItemsResponse = server
        .ok(
            "/commerce.checkout.v1.MenuService/ListMenuItems",
            co::ListMenuItemsRequest::default(),
            None,
        )
        .await;
    assert_eq!(listed.items.len(), 2);

    // CreateCart: the cart as stored (its id derives from the key: one per key).
    let created: co::CreateCartResponse = server
        .dies_then_replays(
            CREATE_CART,
            co::CreateCartRequest {
                location_id: uptown.location_id.clone(),
                customer_id: "cust-2".into(),
                fulfillment: None,
            },
            "kill-cart",
            &["checkout.create_cart.replying"],
        )
        .await;
    let created = created.cart.unwrap();
    assert_eq!(created.location_id, uptown.location_id);
    let stored: co::GetCartResponse = server
        .ok(
            "/commerce.checkout.v1.CartService/GetCart",
            get_cart(&created.cart_id),
            None,
        )
        .await;
    assert_eq!(stored.cart.as_ref(), Some(&created));
}

const ADJUST_POINTS: &str = "/commerce.loyalty.v1.PointsService/AdjustPoints";
const CREATE_REWARD: &str = "/commerce.loyalty.v1.RewardService/CreateReward";
const REDEEM_REWARD: &str = "/commerce.loyalty.v1.RewardService/RedeemReward";

fn reward(name: &str, cost: i64) -> lo::CreateRewardRequest {
    lo::CreateRewardRequest {
        reward: Some(lo::Reward {
            display_name: name.into(),
            point_cost: cost,
            benefit: Some(lo::reward::Benefit::FreeItemId("coffee".into())),
            active: true,
            ..Default::default()
        }),
    }
}

fn adjustment(member: &str, points: i64) -> lo::AdjustPointsRequest {
    lo::AdjustPointsRequest {
        member_id: member.into(),
        points,
        reason: "goodwill".into(),
    }
}

async fn balance(server: &Server, member: &str) -> lo::Balance {
    let response: lo::GetBalanceResponse = server
        .ok(
            "/commerce.loyalty.v1.MemberService/GetBalance",
            lo::GetBalanceRequest {
                member_id: member.into(),
            },
            None,
        )
        .await;
    response.balance.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loyalty_adjustments_rewards_and_redemptions_killed_before_the_reply_replay_after_a_restart()
 {
    let token = common::token_for("replay-loyalty");
    let mut server = Server::start(
        tempfile::tempdir().unwrap(),
        &token,
        &["loyalty.redeem_reward.replying"],
    );
    let enrolled: lo::EnrollMemberResponse = server
        .ok(
            "/commerce.loyalty.v1.MemberService/EnrollMember",
            lo::EnrollMemberRequest {
                customer_id: "cust-1".into(),
                registered: true,
                ..Default::default()
            },
            None,
        )
        .await;
    let member = enrolled.member.unwrap().member_id;
    let _: lo::AdjustPointsResponse = server
        .ok(
            ADJUST_POINTS,
            adjustment(&member, 100),
            Some("setup-points"),
        )
        .await;
    let coffee: lo::CreateRewardResponse = server
        .ok(
            CREATE_REWARD,
            reward("Free coffee", 20),
            Some("setup-reward"),
        )
        .await;
    let coffee = coffee.reward.unwrap().reward_id;

    // RedeemReward: the redemption as stored, its points held once.
    let redeemed: lo::RedeemRewardResponse = server
        .dies_then_replays(
            REDEEM_REWARD,
            lo::RedeemRewardRequest {
                member_id: member.clone(),
                reward_id: coffee.clone(),
                order_id: "o-1".into(),
            },
            "kill-redeem",
            &[
                "loyalty.redeem_reward.replying",
                "loyalty.adjust_points.replying",
            ],
        )
        .await;
    let redemption = redeemed.redemption.unwrap();
    let stored: lo::GetRedemptionResponse = server
        .ok(
            "/commerce.loyalty.v1.RewardService/GetRedemption",
            lo::GetRedemptionRequest {
                redemption_id: redemption.redemption_id.clone(),
            },
            None,
        )
        .await;
    assert_eq!(stored.redemption.as_ref(), Some(&redemption));
    let held = balance(&server, &member).await;
    assert_eq!((held.available_points, held.held_points), (80, 20));

    // AdjustPoints: the entry with its ledger hash, the points moved once.
    let adjusted: lo::AdjustPointsResponse = server
        .dies_then_replays(
            ADJUST_POINTS,
            adjustment(&member, 50),
            "kill-adjust",
            &[
                "loyalty.adjust_points.replying",
                "loyalty.create_reward.replying",
            ],
        )
        .await;
    let entry = adjusted.entry.unwrap();
    assert_eq!(entry.active_delta, 50);
    assert!(!entry.entry_hash.is_empty(), "{entry:?}");
    assert_eq!(balance(&server, &member).await.available_points, 130);
    let history: lo::ListPointsEntriesResponse = server
        .ok(
            "/commerce.loyalty.v1.MemberService/ListPointsEntries",
            lo::ListPointsEntriesRequest {
                member_id: member.clone(),
                ..Default::default()
            },
            None,
        )
        .await;
    let listed: Vec<&lo::PointsEntry> = history
        .entries
        .iter()
        .filter(|listed| listed.entry_id == entry.entry_id)
        .collect();
    assert_eq!(listed.len(), 1, "{history:?}");
    assert_eq!(listed[0].entry_hash, entry.entry_hash);

    // CreateReward: the reward as stored, two rewards in all.
    let created: lo::CreateRewardResponse = server
        .dies_then_replays(
            CREATE_REWARD,
            reward("Free tea", 30),
            "kill-reward",
            &["loyalty.create_reward.replying"],
        )
        .await;
    let tea = created.reward.unwrap();
    let stored: lo::GetRewardResponse = server
        .ok(
            "/commerce.loyalty.v1.RewardService/GetReward",
            lo::GetRewardRequest {
                reward_id: tea.reward_id.clone(),
            },
            None,
        )
        .await;
    assert_eq!(stored.reward.as_ref(), Some(&tea));
    let listed: lo::ListRewardsResponse = server
        .ok(
            "/commerce.loyalty.v1.RewardService/ListRewards",
            lo::ListRewardsRequest::default(),
            None,
        )
        .await;
    assert_eq!(listed.rewards.len(), 2);
}

const CREATE_PLAN: &str = "/commerce.subscriptions.v1.PlanService/CreatePlan";
const CREATE_PLAN_VERSION: &str = "/commerce.subscriptions.v1.PlanService/CreatePlanVersion";
const CREATE_SUBSCRIPTION: &str =
    "/commerce.subscriptions.v1.SubscriptionService/CreateSubscription";
const CHANGE_PLAN: &str = "/commerce.subscriptions.v1.SubscriptionService/ChangePlan";

fn plan(name: &str, price: i64, trial_days: i32) -> su::CreatePlanRequest {
    su::CreatePlanRequest {
        display_name: name.into(),
        terms: Some(su::PlanVersion {
            price: usd(price),
            interval: su::BillingInterval::Month as i32,
            interval_count: 1,
            trial_days,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn subscribe(customer: &str, plan_id: &str) -> su::CreateSubscriptionRequest {
    su::CreateSubscriptionRequest {
        customer_id: customer.into(),
        plan_id: plan_id.into(),
        payment_token: "tok_ok".into(),
        skip_trial: false,
    }
}

impl Server {
    async fn plan(&self, plan_id: &str) -> su::Plan {
        let response: su::GetPlanResponse = self
            .ok(
                "/commerce.subscriptions.v1.PlanService/GetPlan",
                su::GetPlanRequest {
                    plan_id: plan_id.into(),
                },
                None,
            )
            .await;
        response.plan.unwrap()
    }

    async fn subscription(&self, id: &str) -> su::Subscription {
        let response: su::GetSubscriptionResponse = self
            .ok(
                "/commerce.subscriptions.v1.SubscriptionService/GetSubscription",
                su::GetSubscriptionRequest {
                    subscription_id: id.into(),
                },
                None,
            )
            .await;
        response.subscription.unwrap()
    }

    async fn subscriptions_of(&self, customer: &str) -> Vec<su::Subscription> {
        let response: su::ListSubscriptionsResponse = self
            .ok(
                "/commerce.subscriptions.v1.SubscriptionService/ListSubscriptions",
                su::ListSubscriptionsRequest {
                    customer_id: customer.into(),
                    ..Default::default()
                },
                None,
            )
            .await;
        response.subscriptions
    }

    async fn invoices(&self, subscription: &str) -> Vec<su::Invoice> {
        let response: su::ListInvoicesResponse = self
            .ok(
                "/commerce.subscriptions.v1.InvoiceService/ListInvoices",
                su::ListInvoicesRequest {
                    subscription_id: subscription.into(),
                    ..Default::default()
                },
                None,
            )
            .await;
        response.invoices
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_subscriptions_and_plan_changes_killed_before_the_reply_replay_after_a_restart() {
    let token = common::token_for("replay-subscriptions");
    let mut server = Server::start(
        tempfile::tempdir().unwrap(),
        &token,
        &["subscriptions.create_plan_version.replying"],
    );
    let basic: su::CreatePlanResponse = server
        .ok(CREATE_PLAN, plan("Basic", 1_000, 0), Some("setup-basic"))
        .await;
    let basic = basic.plan.unwrap().plan_id;
    let plus: su::CreatePlanResponse = server
        .ok(CREATE_PLAN, plan("Plus", 3_000, 0), Some("setup-plus"))
        .await;
    let plus = plus.plan.unwrap().plan_id;
    let trial: su::CreatePlanResponse = server
        .ok(CREATE_PLAN, plan("Trial", 2_000, 14), Some("setup-trial"))
        .await;
    let trial = trial.plan.unwrap().plan_id;
    let subscribed: su::CreateSubscriptionResponse = server
        .ok(
            CREATE_SUBSCRIPTION,
            subscribe("cust-1", &basic),
            Some("setup-subscription"),
        )
        .await;
    let upgrading = subscribed.subscription.unwrap().subscription_id;

    // CreatePlanVersion: the plan as stored, with one version more.
    let versioned: su::CreatePlanVersionResponse = server
        .dies_then_replays(
            CREATE_PLAN_VERSION,
            su::CreatePlanVersionRequest {
                plan_id: basic.clone(),
                price: usd(1_500),
                trial_days: 0,
            },
            "kill-version",
            &[
                "subscriptions.create_plan_version.replying",
                "subscriptions.create_plan.replying",
            ],
        )
        .await;
    let versioned = versioned.plan.unwrap();
    assert_eq!(versioned, server.plan(&basic).await);
    assert_eq!(versioned.versions.len(), 2);

    // CreatePlan: the plan as stored, four plans in all.
    let created: su::CreatePlanResponse = server
        .dies_then_replays(
            CREATE_PLAN,
            plan("Premium", 5_000, 0),
            "kill-plan",
            &[
                "subscriptions.create_plan.replying",
                "subscriptions.create_subscription.replying",
            ],
        )
        .await;
    let premium = created.plan.unwrap();
    assert_eq!(premium, server.plan(&premium.plan_id).await);
    let listed: su::ListPlansResponse = server
        .ok(
            "/commerce.subscriptions.v1.PlanService/ListPlans",
            su::ListPlansRequest::default(),
            None,
        )
        .await;
    assert_eq!(listed.plans.len(), 4);

    // CreateSubscription charged at once: recorded with the first charge's outcome; one
    // subscription, one invoice, paid.
    let created: su::CreateSubscriptionResponse = server
        .dies_then_replays(
            CREATE_SUBSCRIPTION,
            subscribe("cust-2", &plus),
            "kill-subscription",
            &["subscriptions.create_subscription.replying"],
        )
        .await;
    let charged = created.subscription.unwrap();
    assert_eq!(charged.status, su::SubscriptionStatus::Active as i32);
    assert_eq!(charged, server.subscription(&charged.subscription_id).await);
    assert_eq!(server.subscriptions_of("cust-2").await.len(), 1);
    let first = created.first_invoice.unwrap();
    assert_eq!(first.status, su::InvoiceStatus::Paid as i32);
    assert_eq!(server.invoices(&charged.subscription_id).await, [first]);

    // CreateSubscription with a trial: recorded with the creation; nothing invoiced.
    let created: su::CreateSubscriptionResponse = server
        .dies_then_replays(
            CREATE_SUBSCRIPTION,
            subscribe("cust-3", &trial),
            "kill-trial",
            &[
                "subscriptions.create_subscription.replying",
                "subscriptions.change_plan.replying",
            ],
        )
        .await;
    let trialing = created.subscription.unwrap();
    assert_eq!(trialing.status, su::SubscriptionStatus::Trialing as i32);
    assert_eq!(created.first_invoice, None);
    assert_eq!(
        trialing,
        server.subscription(&trialing.subscription_id).await
    );
    assert_eq!(server.subscriptions_of("cust-3").await.len(), 1);

    // ChangePlan: recorded with the proration invoice's payment; one proration invoice.
    let changed: su::ChangePlanResponse = server
        .dies_then_replays(
            CHANGE_PLAN,
            su::ChangePlanRequest {
                subscription_id: upgrading.clone(),
                new_plan_id: plus.clone(),
                expected_net: None,
            },
            "kill-change",
            &["subscriptions.change_plan.replying"],
        )
        .await;
    let upgraded = changed.subscription.unwrap();
    assert_eq!(upgraded.plan_id, plus);
    assert_eq!(upgraded, server.subscription(&upgrading).await);
    let proration = changed.invoice.unwrap();
    assert_eq!(proration.status, su::InvoiceStatus::Paid as i32);
    let invoices = server.invoices(&upgrading).await;
    assert_eq!(invoices.len(), 2, "the first invoice and one proration");
    assert!(invoices.contains(&proration), "{invoices:#?}");
}
