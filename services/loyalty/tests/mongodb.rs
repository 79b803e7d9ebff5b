//! The loyalty lifecycle on MongoDB (SecantusDB started by the test, or `MONGODB_URI` when set):
//! the engine's atomic commits are multi-document transactions there, so this is where a
//! missing transaction or a lost race would show.

mod common;

use std::sync::Arc;

use common::{TENANT, World, simple_program};
use loyalty::LoyaltyError;
use loyalty::rewards::Resolution;
use store::testing::MongoServer;
use store::{MongoOptions, MongoStore, Store};

async fn mongo_world() -> (World, Option<MongoServer>) {
    let (uri, server) = match std::env::var("MONGODB_URI") {
        Ok(uri) => (uri, None),
        Err(_) => {
            let server = MongoServer::start();
            (server.uri(), Some(server))
        }
    };
    let database = format!("loyalty_test_{}", uuid::Uuid::now_v7().simple());
    let store: Arc<dyn Store> = Arc::new(
        MongoStore::connect(&uri, &database, MongoOptions::default())
            .await
            .expect("connect"),
    );
    (World::with_store(store).await, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_points_lifecycle_ties_out_on_mongodb() {
    let (world, _server) = mongo_world().await;
    world
        .program(|program| simple_program(program, 2, 10))
        .await;
    let member = world.member("c-1", true).await;
    assert_eq!(
        world.member("c-1", true).await,
        member,
        "enrolment is idempotent"
    );
    world.accrue(&member, "o-1", 10_000).await;
    world.accrue(&member, "o-1", 10_000).await;
    world.advance_days(2).await;
    assert_eq!(world.balance(&member).await.active_points, 100);

    let reward = world.reward(30).await;
    let outcomes = world.redeem_at_once(&member, &reward, 6).await;
    let held: Vec<_> = outcomes
        .into_iter()
        .filter_map(|outcome| match outcome {
            Ok(redemption) => Some(redemption),
            Err(LoyaltyError::InsufficientPoints { .. }) => None,
            Err(error) => panic!("{error:?}"),
        })
        .collect();
    assert_eq!(held.len(), 3, "three of 30 fit in 100");
    world
        .engine
        .resolve(TENANT, &held[0].redemption_id, Resolution::Commit, "")
        .await
        .unwrap();
    world
        .engine
        .resolve(TENANT, &held[1].redemption_id, Resolution::Void, "")
        .await
        .unwrap();
    world.refund(&member, "o-1", "r-1", 5_000).await;
    let balance = world.balance(&member).await;
    // 100 active: 30 spent, 30 still held, 40 left in lots. Reversing 50 takes those 40 and
    // writes off 10 (no negative balance allowed); the held 30 are untouched.
    assert_eq!(
        (balance.active_points, balance.available_points),
        (30, 0),
        "{balance:?}"
    );
    assert_eq!(balance.held_points, 30, "{balance:?}");
    world.advance_days(11).await; // the hold lapses, the lots expire
    let balance = world.balance(&member).await;
    assert_eq!(
        (balance.held_points, balance.active_points),
        (0, 0),
        "{balance:?}"
    );
    world.assert_reconciled().await;
}
