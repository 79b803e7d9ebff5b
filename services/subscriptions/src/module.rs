//! Subscriptions as a module of a `commerce` process: plans, subscriptions and invoices, the
//! tenant clock's API (its advance runs every module's due jobs), and the billing run on a timer.

use std::sync::Arc;
use std::time::Duration;

use commerce_api::FILE_DESCRIPTOR_SET;
use commerce_api::commerce::subscriptions::v1::{
    invoice_service_server::InvoiceServiceServer, plan_service_server::PlanServiceServer,
    subscription_service_server::SubscriptionServiceServer,
};
use platform::Server;
use platform::clock::{Clocks, DueJobs};
use service_module::{ServiceModule, Shared, Task};

use crate::{InvoiceApi, PlanApi, SubscriptionApi, SubscriptionJobs, Subscriptions};

/// Subscriptions' own settings of `commerce serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct SubscriptionsArgs {
    /// Seconds between billing runs for every tenant (renewals, dunning retries, trial ends,
    /// scheduled resumes and cancellations) on the wall clock; frozen tenant clocks run theirs on
    /// AdvanceClock.
    #[arg(long, env = "COMMERCE_BILLING_SECONDS", default_value_t = 60)]
    pub billing_seconds: u64,
}

/// The subscriptions module.
pub struct SubscriptionsModule {
    engine: Arc<Subscriptions>,
    args: SubscriptionsArgs,
}

impl SubscriptionsModule {
    /// Builds the engine on the process's store and clocks, charging through `psp`.
    pub fn new(
        args: &SubscriptionsArgs,
        shared: &Shared,
        psp: Arc<dyn payments::PaymentProvider>,
    ) -> Self {
        SubscriptionsModule {
            engine: Arc::new(Subscriptions::new(
                shared.store.clone(),
                shared.clocks.clone(),
                psp,
            )),
            args: args.clone(),
        }
    }
}

impl ServiceModule for SubscriptionsModule {
    fn name(&self) -> &'static str {
        "subscriptions"
    }

    fn register(&self, server: Server, clocks: &Clocks) -> Server {
        let server = server
            .add_service(
                PlanServiceServer::new(PlanApi::new(self.engine.clone())),
                FILE_DESCRIPTOR_SET,
            )
            .add_service(
                SubscriptionServiceServer::new(SubscriptionApi::new(self.engine.clone())),
                FILE_DESCRIPTOR_SET,
            )
            .add_service(
                InvoiceServiceServer::new(InvoiceApi::new(self.engine.clone())),
                FILE_DESCRIPTOR_SET,
            );
        crate::clock_api::register_clock(server, clocks.clone())
    }

    fn due_jobs(&self) -> Vec<Arc<dyn DueJobs>> {
        vec![Arc::new(SubscriptionJobs(self.engine.clone()))]
    }

    fn tasks(&self) -> Vec<Task> {
        let engine = self.engine.clone();
        vec![Task::every(
            "billing run",
            Duration::from_secs(self.args.billing_seconds.max(1)),
            move || {
                let engine = engine.clone();
                async move { engine.run_due_everywhere().await.map(drop) }
            },
        )]
    }
}
