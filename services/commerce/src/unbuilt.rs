//! Registers every v1 service with the generated default implementations, which answer each RPC
//! with UNIMPLEMENTED. A service issue replaces its entry here with the real handlers.

use commerce_api::FILE_DESCRIPTOR_SET;
use commerce_api::commerce::{checkout, loyalty, subscriptions};
use platform::Server;

/// A service whose handlers are not built yet.
#[derive(Debug, Default, Clone, Copy)]
pub struct Unbuilt;

impl checkout::v1::menu_service_server::MenuService for Unbuilt {}
impl checkout::v1::cart_service_server::CartService for Unbuilt {}
impl checkout::v1::order_service_server::OrderService for Unbuilt {}
impl checkout::v1::checkout_admin_service_server::CheckoutAdminService for Unbuilt {}
impl subscriptions::v1::plan_service_server::PlanService for Unbuilt {}
impl subscriptions::v1::subscription_service_server::SubscriptionService for Unbuilt {}
impl subscriptions::v1::invoice_service_server::InvoiceService for Unbuilt {}
impl subscriptions::v1::clock_service_server::ClockService for Unbuilt {}
impl loyalty::v1::member_service_server::MemberService for Unbuilt {}
impl loyalty::v1::points_service_server::PointsService for Unbuilt {}
impl loyalty::v1::reward_service_server::RewardService for Unbuilt {}
impl loyalty::v1::program_service_server::ProgramService for Unbuilt {}

/// Adds all twelve services to `server`.
pub fn register(server: Server) -> Server {
    use checkout::v1::{
        cart_service_server::CartServiceServer,
        checkout_admin_service_server::CheckoutAdminServiceServer,
        menu_service_server::MenuServiceServer, order_service_server::OrderServiceServer,
    };
    use loyalty::v1::{
        member_service_server::MemberServiceServer, points_service_server::PointsServiceServer,
        program_service_server::ProgramServiceServer, reward_service_server::RewardServiceServer,
    };
    use subscriptions::v1::{
        clock_service_server::ClockServiceServer, invoice_service_server::InvoiceServiceServer,
        plan_service_server::PlanServiceServer,
        subscription_service_server::SubscriptionServiceServer,
    };
    server
        .add_service(MenuServiceServer::new(Unbuilt), FILE_DESCRIPTOR_SET)
        .add_service(CartServiceServer::new(Unbuilt), FILE_DESCRIPTOR_SET)
        .add_service(OrderServiceServer::new(Unbuilt), FILE_DESCRIPTOR_SET)
        .add_service(
            CheckoutAdminServiceServer::new(Unbuilt),
            FILE_DESCRIPTOR_SET,
        )
        .add_service(PlanServiceServer::new(Unbuilt), FILE_DESCRIPTOR_SET)
        .add_service(SubscriptionServiceServer::new(Unbuilt), FILE_DESCRIPTOR_SET)
        .add_service(InvoiceServiceServer::new(Unbuilt), FILE_DESCRIPTOR_SET)
        .add_service(ClockServiceServer::new(Unbuilt), FILE_DESCRIPTOR_SET)
        .add_service(MemberServiceServer::new(Unbuilt), FILE_DESCRIPTOR_SET)
        .add_service(PointsServiceServer::new(Unbuilt), FILE_DESCRIPTOR_SET)
        .add_service(RewardServiceServer::new(Unbuilt), FILE_DESCRIPTOR_SET)
        .add_service(ProgramServiceServer::new(Unbuilt), FILE_DESCRIPTOR_SET)
}
