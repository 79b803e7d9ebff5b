//! Connect GET answers and HTTP caches, against the real commerce contract: the public menu reads
//! declare `(commerce.api.v1.rpc).cache`, so their answers say who may keep them and for how long,
//! vary on every header they depend on (the tenant above all), carry a strong ETag and revalidate
//! to `304 Not Modified`; authenticated and undeclared answers are never stored.

mod common;

use std::net::SocketAddr;

use bytes::Bytes;
use commerce_api::FILE_DESCRIPTOR_SET;
use commerce_api::commerce::checkout::v1::menu_service_server::{MenuService, MenuServiceServer};
use commerce_api::commerce::checkout::v1::order_service_server::{
    OrderService, OrderServiceServer,
};
use commerce_api::commerce::checkout::v1::{
    GetOrderRequest, GetOrderResponse, ListLocationsRequest, ListLocationsResponse, Location, Order,
};
use common::{ALLOWED_ORIGIN, Reply, send};
use http::Request;
use http_body_util::Full;
use platform::{CorsConfig, Server, ServerConfig};

/// Answers that depend on the tenant header, as the real menu does.
#[derive(Clone)]
struct Menu;

#[tonic::async_trait]
impl MenuService for Menu {
    async fn list_locations(
        &self,
        request: tonic::Request<ListLocationsRequest>,
    ) -> Result<tonic::Response<ListLocationsResponse>, tonic::Status> {
        let tenant = request
            .metadata()
            .get("commerce-tenant")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        Ok(tonic::Response::new(ListLocationsResponse {
            locations: vec![Location {
                location_id: "loc-1".into(),
                display_name: format!("{tenant} downtown"),
                ..Location::default()
            }],
            next_page_token: String::new(),
        }))
    }
}

#[tonic::async_trait]
impl OrderService for Menu {
    async fn get_order(
        &self,
        request: tonic::Request<GetOrderRequest>,
    ) -> Result<tonic::Response<GetOrderResponse>, tonic::Status> {
        Ok(tonic::Response::new(GetOrderResponse {
            order: Some(Order {
                order_id: request.into_inner().order_id,
                ..Order::default()
            }),
        }))
    }
}

async fn start() -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let config = ServerConfig {
        listen_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        cors: CorsConfig {
            allowed_origins: vec![ALLOWED_ORIGIN.to_owned()],
        },
        ..ServerConfig::default()
    };
    let bound = Server::new(config)
        .add_service(MenuServiceServer::new(Menu), FILE_DESCRIPTOR_SET)
        .add_service(OrderServiceServer::new(Menu), FILE_DESCRIPTOR_SET)
        .bind()
        .await
        .expect("bind");
    let addr = bound.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(bound.serve(async {
        let _ = stopped.await;
    }));
    (addr, stop)
}

async fn get(addr: SocketAddr, path_and_query: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = Request::get(format!("http://{addr}{path_and_query}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(request.body(Full::<Bytes>::default()).unwrap(), false).await
}

const LIST_LOCATIONS: &str =
    "/commerce.checkout.v1.MenuService/ListLocations?encoding=json&message=%7B%7D";

/// Every `Vary` value, lower-cased, however many headers carry them.
fn vary(reply: &Reply) -> Vec<String> {
    reply
        .headers
        .get_all("vary")
        .iter()
        .flat_map(|value| value.to_str().unwrap().split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .collect()
}

#[tokio::test]
async fn a_declared_public_read_is_cacheable_by_shared_caches_and_varies_on_the_tenant() {
    let (addr, _stop) = start().await;
    let a = get(
        addr,
        LIST_LOCATIONS,
        &[("commerce-tenant", "tenant-a"), ("origin", ALLOWED_ORIGIN)],
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("cache-control"), Some("public, max-age=60"));
    let names = vary(&a);
    for header in [
        "commerce-tenant",
        "authorization",
        "accept-encoding",
        "origin",
    ] {
        assert!(
            names.contains(&header.to_owned()),
            "{header} not in {names:?}"
        );
    }
    let etag = a.header("etag").expect("an ETag").to_owned();
    assert!(
        etag.starts_with('"') && !etag.starts_with("W/"),
        "strong: {etag}"
    );

    // The same URL for another tenant is another answer, with another validator.
    let b = get(addr, LIST_LOCATIONS, &[("commerce-tenant", "tenant-b")]).await;
    assert_ne!(a.body, b.body);
    assert_ne!(b.header("etag"), Some(etag.as_str()));
}

#[tokio::test]
async fn if_none_match_with_the_current_etag_is_answered_not_modified_without_a_body() {
    let (addr, _stop) = start().await;
    let first = get(addr, LIST_LOCATIONS, &[("commerce-tenant", "tenant-a")]).await;
    let etag = first.header("etag").unwrap().to_owned();
    let again = get(
        addr,
        LIST_LOCATIONS,
        &[("commerce-tenant", "tenant-a"), ("if-none-match", &etag)],
    )
    .await;
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    assert_eq!(again.header("etag"), Some(etag.as_str()));
    assert_eq!(again.header("cache-control"), Some("public, max-age=60"));
    // Another tenant's validator does not match this tenant's answer.
    let other = get(
        addr,
        LIST_LOCATIONS,
        &[("commerce-tenant", "tenant-b"), ("if-none-match", &etag)],
    )
    .await;
    assert_eq!(other.status, 200);
}

#[tokio::test]
async fn authenticated_and_undeclared_get_answers_are_never_stored() {
    let (addr, _stop) = start().await;
    let authenticated = get(
        addr,
        LIST_LOCATIONS,
        &[
            ("commerce-tenant", "tenant-a"),
            ("authorization", "Bearer some-token"),
        ],
    )
    .await;
    assert_eq!(authenticated.status, 200);
    assert_eq!(
        authenticated.header("cache-control"),
        Some("private, no-store")
    );
    // GetOrder is a side-effect-free read without a cache policy.
    let undeclared = get(
        addr,
        "/commerce.checkout.v1.OrderService/GetOrder?encoding=json&message=%7B%22orderId%22%3A%22o-1%22%7D",
        &[],
    )
    .await;
    assert_eq!(undeclared.status, 200);
    assert_eq!(undeclared.header("cache-control"), Some("no-store"));
    // Errors are not stored either.
    let failed = get(
        addr,
        "/commerce.checkout.v1.OrderService/GetOrder?encoding=json&message=%7B%7D",
        &[],
    )
    .await;
    assert_eq!(failed.status, 400);
    assert_eq!(failed.header("cache-control"), Some("no-store"));
    assert!(vary(&failed).contains(&"commerce-tenant".to_owned()));
}
