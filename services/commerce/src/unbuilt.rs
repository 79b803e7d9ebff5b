//! Registers every v1 service with the generated default implementations, which answer each RPC
//! with UNIMPLEMENTED. A service issue replaces its entry here with the real handlers.

use commerce_api::FILE_DESCRIPTOR_SET;
use commerce_api::commerce::subscriptions;
use platform::Server;

/// A service whose handlers are not built yet.
#[derive(Debug, Default, Clone, Copy)]
pub struct Unbuilt;

impl subscriptions::v1::plan_service_server::PlanService for Unbuilt {}
impl subscriptions::v1::subscription_service_server::SubscriptionService for Unbuilt {}
impl subscriptions::v1::invoice_service_server::InvoiceService for Unbuilt {}

/// Adds the services not built yet (three of subscriptions') to `server`.
pub fn register(server: Server) -> Server {
    use subscriptions::v1::{
        invoice_service_server::InvoiceServiceServer, plan_service_server::PlanServiceServer,
        subscription_service_server::SubscriptionServiceServer,
    };
    server
        .add_service(PlanServiceServer::new(Unbuilt), FILE_DESCRIPTOR_SET)
        .add_service(SubscriptionServiceServer::new(Unbuilt), FILE_DESCRIPTOR_SET)
        .add_service(InvoiceServiceServer::new(Unbuilt), FILE_DESCRIPTOR_SET)
}
