//! Checkout as a module of a `commerce` process: the menu, carts, orders and payment
//! reconciliation services, and the background payment round. Loyalty and the PSP come in as
//! ports: in the same process or over gRPC, the composition root decides.

use std::sync::Arc;
use std::time::Duration;

use commerce_api::FILE_DESCRIPTOR_SET;
use commerce_api::commerce::checkout::v1::{
    cart_service_server::CartServiceServer,
    checkout_admin_service_server::CheckoutAdminServiceServer,
    menu_service_server::MenuServiceServer, order_service_server::OrderServiceServer,
};
use platform::Server;
use platform::clock::Clocks;
use service_module::{BuildError, ServiceModule, Shared, Task};

use crate::{
    CartApi, CartStorage, Carts, Catalog, CheckoutAdminApi, LoyaltyPort, MenuApi, OrderApi, Orders,
    Promotions, Quotes, RedisCarts, StoreCarts,
};

/// Checkout's own settings of `commerce serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct CheckoutArgs {
    /// Minutes a cart lives after its last change.
    #[arg(long, env = "COMMERCE_CART_TTL_MINUTES", default_value_t = 120)]
    pub cart_ttl_minutes: u64,
    /// Milliseconds the tax hook gets before a quote fails with TAX_UNAVAILABLE.
    #[arg(long, env = "COMMERCE_TAX_TIMEOUT_MS", default_value_t = 2000)]
    pub tax_timeout_ms: u64,
    /// JSON file of promotion codes (format: `checkout::promotions`); none when unset.
    #[arg(long, env = "COMMERCE_PROMOTIONS_FILE")]
    pub promotions_file: Option<std::path::PathBuf>,
    /// Seconds between rounds of the payment resolver (settles payments the PSP left unknown,
    /// captures that are due, placements abandoned part-way).
    #[arg(long, env = "COMMERCE_PAYMENT_RESOLVER_SECONDS", default_value_t = 10)]
    pub payment_resolver_seconds: u64,
    /// Placements still unfinished this many seconds after they started are rolled back by the
    /// payment resolver (authorization voided, reward returned).
    #[arg(
        long,
        env = "COMMERCE_PLACEMENT_ABANDON_SECONDS",
        default_value_t = 300
    )]
    pub placement_abandon_seconds: u64,
}

/// The checkout module.
pub struct CheckoutModule {
    catalog: Catalog,
    carts: Carts,
    quotes: Quotes,
    orders: Orders,
    args: CheckoutArgs,
}

impl CheckoutModule {
    /// Builds checkout's engines on the process's store, clocks and Redis (carts live there with
    /// a TTL when it is configured, in the store otherwise), reaching loyalty through `loyalty`
    /// and charging through `psp`.
    pub fn new(
        args: &CheckoutArgs,
        shared: &Shared,
        loyalty: Arc<dyn LoyaltyPort>,
        psp: Arc<dyn payments::PaymentProvider>,
    ) -> Result<Self, BuildError> {
        let catalog = Catalog::new(shared.store.clone(), shared.clocks.clone());
        let promotions = match &args.promotions_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|error| format!("reading {}: {error}", path.display()))?;
                Promotions::from_json(&text)
                    .map_err(|error| format!("{}: {error}", path.display()))?
            }
            None => Promotions::none(),
        };
        let storage: Arc<dyn CartStorage> = match &shared.redis {
            Some(redis) => Arc::new(RedisCarts(fastpath::TtlRecords::new(redis.clone()))),
            None => Arc::new(StoreCarts(shared.store.clone())),
        };
        let carts = Carts::new(
            storage,
            catalog.clone(),
            promotions.clone(),
            shared.clocks.clone(),
            Duration::from_secs(args.cart_ttl_minutes.max(1) * 60),
        );
        let quotes = Quotes::new(
            carts.clone(),
            promotions,
            loyalty.clone(),
            None, // each location's tax rate table
            Duration::from_millis(args.tax_timeout_ms.max(1)),
            shared.store.clone(),
            shared.clocks.clone(),
        );
        let orders = Orders::new(
            shared.store.clone(),
            carts.clone(),
            quotes.clone(),
            loyalty,
            psp,
            shared.clocks.clone(),
        )
        .with_abandon_after(Duration::from_secs(args.placement_abandon_seconds));
        Ok(CheckoutModule {
            catalog,
            carts,
            quotes,
            orders,
            args: args.clone(),
        })
    }
}

impl ServiceModule for CheckoutModule {
    fn name(&self) -> &'static str {
        "checkout"
    }

    fn register(&self, server: Server, _clocks: &Clocks) -> Server {
        server
            .add_service(
                CheckoutAdminServiceServer::new(CheckoutAdminApi::new(self.orders.clone())),
                FILE_DESCRIPTOR_SET,
            )
            .add_service(
                MenuServiceServer::new(MenuApi::new(self.catalog.clone())),
                FILE_DESCRIPTOR_SET,
            )
            .add_service(
                CartServiceServer::new(CartApi::new(self.carts.clone(), self.quotes.clone())),
                FILE_DESCRIPTOR_SET,
            )
            .add_service(
                OrderServiceServer::new(OrderApi::new(self.orders.clone())),
                FILE_DESCRIPTOR_SET,
            )
    }

    fn tasks(&self) -> Vec<Task> {
        let orders = self.orders.clone();
        vec![Task::every(
            "payment resolver",
            Duration::from_secs(self.args.payment_resolver_seconds.max(1)),
            move || {
                let orders = orders.clone();
                async move { orders.settle_payments().await.map(drop) }
            },
        )]
    }
}
