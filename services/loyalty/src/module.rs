//! Loyalty as a module of a `commerce` process: its four gRPC services, its sweep (on a timer and
//! on a tenant clock's advance), and its consumer of checkout's paid and refunded orders.

use std::sync::Arc;
use std::time::Duration;

use commerce_api::FILE_DESCRIPTOR_SET;
use commerce_api::commerce::loyalty::v1::{
    member_service_server::MemberServiceServer, points_service_server::PointsServiceServer,
    program_service_server::ProgramServiceServer, reward_service_server::RewardServiceServer,
};
use platform::Server;
use platform::clock::{Clocks, DueJobs};
use service_module::{ServiceModule, Shared, Stage, Task};

use crate::{CheckoutEvents, Loyalty, LoyaltyApi, LoyaltyJobs, consumer};

/// Loyalty's own settings of `commerce serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct LoyaltyArgs {
    /// Seconds between loyalty sweeps (activation, expiry, hold expiry, tiers).
    #[arg(long, env = "COMMERCE_LOYALTY_SWEEP_SECONDS", default_value_t = 60)]
    pub loyalty_sweep_seconds: u64,
}

/// The loyalty module.
pub struct LoyaltyModule {
    engine: Arc<Loyalty>,
    args: LoyaltyArgs,
    shared: Shared,
}

impl LoyaltyModule {
    /// Builds the engine on the process's store, clocks and balance cache.
    pub fn new(args: &LoyaltyArgs, shared: &Shared) -> Self {
        let journal = consumer::expect_effects(events::Journal::new(shared.store.clone()));
        let engine = Loyalty::new(
            shared.store.clone(),
            shared.clocks.clone(),
            fastpath::Cache::with_near_cache(
                shared.redis.clone(),
                shared.degraded.clone(),
                "loyalty-balances",
                shared.near_cache,
            ),
        )
        .with_event_journal(journal, shared.repair_after);
        LoyaltyModule {
            engine: Arc::new(engine),
            args: args.clone(),
            shared: shared.clone(),
        }
    }

    /// The engine (checkout in the same process reaches it directly).
    pub fn engine(&self) -> Arc<Loyalty> {
        self.engine.clone()
    }

    fn checkout_stream() -> String {
        events::envelope::stream_of_package(consumer::CHECKOUT_PACKAGE)
    }
}

impl ServiceModule for LoyaltyModule {
    fn name(&self) -> &'static str {
        "loyalty"
    }

    fn register(&self, server: Server, _clocks: &Clocks) -> Server {
        let api = LoyaltyApi::new(self.engine.clone());
        server
            .add_service(MemberServiceServer::new(api.clone()), FILE_DESCRIPTOR_SET)
            .add_service(PointsServiceServer::new(api.clone()), FILE_DESCRIPTOR_SET)
            .add_service(RewardServiceServer::new(api.clone()), FILE_DESCRIPTOR_SET)
            .add_service(ProgramServiceServer::new(api), FILE_DESCRIPTOR_SET)
    }

    fn due_jobs(&self) -> Vec<Arc<dyn DueJobs>> {
        vec![Arc::new(LoyaltyJobs(self.engine.clone()))]
    }

    fn consumer_groups(&self) -> Vec<(String, String)> {
        vec![(Self::checkout_stream(), consumer::GROUP.to_owned())]
    }

    fn expect_effects(&self, journal: events::Journal) -> events::Journal {
        consumer::expect_effects(journal)
    }

    fn tasks(&self) -> Vec<Task> {
        let engine = self.engine.clone();
        let sweep = Task::every(
            "loyalty sweep",
            Duration::from_secs(self.args.loyalty_sweep_seconds.max(1)),
            move || {
                let engine = engine.clone();
                async move { engine.run_due_everywhere().await.map(drop) }
            },
        );
        let consumer = events::Consumer::new(
            self.shared.bus.clone(),
            self.shared.store.clone(),
            CheckoutEvents::new(self.engine.clone()),
            events::ConsumerConfig {
                drain: self.shared.drain,
                ..events::ConsumerConfig::new(
                    Self::checkout_stream(),
                    consumer::GROUP,
                    self.shared.instance.clone(),
                )
            },
        );
        let consumer = Task::new(
            "loyalty consumer of checkout events",
            Stage::Consumer,
            move |shutdown| consumer.run(shutdown.wait()),
        );
        vec![sweep, consumer]
    }
}
