//! Carts on both storages: concurrent changes are all kept, carts expire by the tenant clock,
//! promotions apply within their rules, and a cart in Redis behaves like one in the store.

mod common;

use std::sync::Arc;

use checkout::RedisCarts;
use checkout::error::CheckoutError;
use commerce_api::commerce::common::v1::ErrorReason;
use common::{TENANT, World, world};

async fn scenario(world: &World) {
    let cart = world
        .carts
        .create(TENANT, &world.location, "c-1", None, "cart-1")
        .await
        .unwrap();
    // Ten lines added at once: every one is kept (compare-and-set, re-read on a lost race).
    let one = checkout::carts::LineChoice {
        quantity: 1,
        ..Default::default()
    };
    let adds = (0..10).map(|n| {
        let one = one.clone();
        let (carts, cart_id, burger) = (
            world.carts.clone(),
            cart.cart_id.clone(),
            world.burger.clone(),
        );
        tokio::spawn(async move {
            carts
                .add_line(TENANT, &cart_id, &burger, &one, &format!("add-{n}"))
                .await
        })
    });
    for add in futures_util::future::join_all(adds).await {
        add.unwrap().unwrap();
    }
    let cart = world.carts.get(TENANT, &cart.cart_id).await.unwrap();
    assert_eq!(cart.lines.len(), 10);
    assert_eq!(cart.version, 11);

    // Promotions: known code applies once, case-insensitively; another location's is refused.
    world
        .carts
        .apply_promotion(TENANT, &cart.cart_id, "tenoff")
        .await
        .unwrap();
    let cart = world
        .carts
        .apply_promotion(TENANT, &cart.cart_id, "TenOff")
        .await
        .unwrap();
    assert_eq!(cart.promotion_codes, ["TENOFF"]);
    let elsewhere = world
        .carts
        .apply_promotion(TENANT, &cart.cart_id, "ELSEWHERE")
        .await;
    assert!(
        matches!(
            elsewhere,
            Err(CheckoutError::Precondition {
                reason: ErrorReason::PromotionInvalid,
                ..
            })
        ),
        "{elsewhere:?}"
    );

    // The cart expires an hour after its last change, by the tenant clock.
    let now = world.clocks.now(TENANT).await.unwrap().now_ms;
    world.clocks.advance(TENANT, now + 3_599_000).await.unwrap();
    world.carts.get(TENANT, &cart.cart_id).await.unwrap();
    world.clocks.advance(TENANT, now + 3_600_000).await.unwrap();
    let expired = world.carts.get(TENANT, &cart.cart_id).await;
    assert!(
        matches!(
            expired,
            Err(CheckoutError::Precondition {
                reason: ErrorReason::CartExpired,
                ..
            })
        ),
        "{expired:?}"
    );
    let change = world.carts.remove_line(TENANT, &cart.cart_id, "x").await;
    assert!(matches!(
        change,
        Err(CheckoutError::Precondition {
            reason: ErrorReason::CartExpired,
            ..
        })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carts_in_the_store() {
    scenario(&world(None).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carts_in_redis() {
    let redis = fastpath::testing::RedisServer::start();
    let records = fastpath::TtlRecords::new(fastpath::connect(&redis.url()).await.unwrap());
    scenario(&world(Some(Arc::new(RedisCarts(records)))).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_is_unavailable_not_a_lost_cart() {
    let mut redis = fastpath::testing::RedisServer::start();
    let records = fastpath::TtlRecords::new(fastpath::connect(&redis.url()).await.unwrap());
    let world = world(Some(Arc::new(RedisCarts(records)))).await;
    let cart = world
        .carts
        .create(TENANT, &world.location, "", None, "cart-1")
        .await
        .unwrap();
    redis.kill();
    let down = world.carts.get(TENANT, &cart.cart_id).await;
    assert!(
        matches!(
            down,
            Err(CheckoutError::Unavailable {
                reason: ErrorReason::DependencyUnavailable,
                ..
            })
        ),
        "{down:?}"
    );
}

/// Carts in the store, except that every change of an existing cart loses its race (another
/// writer always got there first); counts the attempts.
struct AlwaysRaced {
    inner: checkout::StoreCarts,
    attempts: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl checkout::CartStorage for AlwaysRaced {
    async fn load(
        &self,
        tenant: &str,
        cart_id: &str,
    ) -> Result<Option<store::Versioned>, CheckoutError> {
        self.inner.load(tenant, cart_id).await
    }

    async fn save(
        &self,
        tenant: &str,
        cart_id: &str,
        expected_version: u64,
        data: bytes::Bytes,
        ttl: std::time::Duration,
        idempotency: Option<store::IdempotencyRecord>,
    ) -> Result<u64, CheckoutError> {
        if expected_version == 0 {
            return self
                .inner
                .save(tenant, cart_id, 0, data, ttl, idempotency)
                .await;
        }
        self.attempts
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Err(CheckoutError::Store(store::StoreError::Conflict {
            key: cart_id.to_owned(),
            expected: expected_version,
            found: expected_version + 1,
        }))
    }
}

#[tokio::test]
async fn a_cart_change_that_loses_every_race_gives_up_as_contended_after_bounded_attempts() {
    let store: Arc<dyn store::Store> = Arc::new(store::EmbeddedStore::in_memory().unwrap());
    let raced = Arc::new(AlwaysRaced {
        inner: checkout::StoreCarts(store.clone()),
        attempts: 0.into(),
    });
    let world = common::world_on(store, Some(raced.clone())).await;
    let cart = world
        .carts
        .create(TENANT, &world.location, "", None, "cart-1")
        .await
        .unwrap();
    let one = checkout::carts::LineChoice {
        quantity: 1,
        ..Default::default()
    };
    let added = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        world
            .carts
            .add_line(TENANT, &cart.cart_id, &world.burger, &one, "add-1"),
    )
    .await
    .expect("a bounded number of attempts, not a loop without end");
    assert!(
        matches!(added, Err(CheckoutError::Contended(_))),
        "{added:?}"
    );
    let attempts = raced.attempts.load(std::sync::atomic::Ordering::SeqCst);
    assert!((2..=64).contains(&attempts), "{attempts} attempts");
    let status =
        platform::ApiError::from(added.unwrap_err()).into_status(checkout::error::ERROR_DOMAIN);
    assert_eq!(status.code(), tonic::Code::Aborted);
}
