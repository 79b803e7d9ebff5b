//! The calls that build stored state, shared by the benchmarks that need carts, orders or
//! members: preparing carts (CreateCart, AddCartLine, QuoteCart), placing orders, checking them
//! with GetOrder, and enrolling members. Included with `#[path = "workload.rs"] mod workload;`
//! beside `harness`.
#![allow(dead_code)]

use crate::harness::{Menu, Run, authorized, drive, keyed};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context as _, ensure};
use commerce_api::commerce::checkout::v1::cart_service_client::CartServiceClient;
use commerce_api::commerce::checkout::v1::order_service_client::OrderServiceClient;
use commerce_api::commerce::checkout::v1::{
    AddCartLineRequest, CreateCartRequest, GetOrderRequest, PaymentStatus, PlaceOrderRequest,
    QuoteCartRequest,
};
use commerce_api::commerce::common::v1::Money;
use commerce_api::commerce::loyalty::v1::EnrollMemberRequest;
use commerce_api::commerce::loyalty::v1::member_service_client::MemberServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tonic::{Request, Status};

/// Concurrency of preparation and verification (not what is measured).
pub const PREP_CONCURRENCY: usize = 32;
/// The payment token the PSP simulator authorizes and captures at once.
pub const PAYMENT_TOKEN: &str = "tok_ok";

/// A cart ready to be ordered.
#[derive(Clone)]
pub struct Prepared {
    pub cart_id: String,
    pub quote_id: String,
    pub total: Option<Money>,
}

/// What a successful PlaceOrder answered.
pub struct Placed {
    pub order_id: String,
    pub captured: bool,
}

/// Prepares `count` carts for run `run` at [`PREP_CONCURRENCY`]: CreateCart, AddCartLine (one
/// item), QuoteCart. Fails on any error: preparation is not what is measured.
pub async fn prepare_carts(
    channels: &[Channel],
    bearer: &MetadataValue<Ascii>,
    menu: &Menu,
    run: &str,
    count: usize,
) -> anyhow::Result<Vec<Prepared>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut callers = Vec::with_capacity(PREP_CONCURRENCY);
    for caller in 0..PREP_CONCURRENCY {
        let mut carts = CartServiceClient::new(channels[caller % channels.len()].clone());
        let (next, bearer, run) = (next.clone(), bearer.clone(), run.to_owned());
        let (location_id, item_id) = (menu.location_id.clone(), menu.item_id.clone());
        callers.push(tokio::spawn(async move {
            let mut prepared = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= count {
                    return Ok::<_, anyhow::Error>(prepared);
                }
                let cart_id = carts
                    .create_cart(keyed(
                        CreateCartRequest {
                            location_id: location_id.clone(),
                            customer_id: format!("bench-{run}-{index}"),
                            fulfillment: None,
                        },
                        &bearer,
                        &format!("bench-cart-{run}-{index}"),
                    ))
                    .await
                    .with_context(|| format!("CreateCart {run}/{index}"))?
                    .into_inner()
                    .cart
                    .context("CreateCart returned no cart")?
                    .cart_id;
                carts
                    .add_cart_line(keyed(
                        AddCartLineRequest {
                            cart_id: cart_id.clone(),
                            item_id: item_id.clone(),
                            quantity: 1,
                            ..Default::default()
                        },
                        &bearer,
                        &format!("bench-line-{run}-{index}"),
                    ))
                    .await
                    .with_context(|| format!("AddCartLine {run}/{index}"))?;
                let quote = carts
                    .quote_cart(authorized(
                        QuoteCartRequest {
                            cart_id: cart_id.clone(),
                        },
                        &bearer,
                    ))
                    .await
                    .with_context(|| format!("QuoteCart {run}/{index}"))?
                    .into_inner()
                    .quote
                    .context("QuoteCart returned no quote")?;
                prepared.push((
                    index,
                    Prepared {
                        cart_id,
                        quote_id: quote.quote_id,
                        total: quote.total,
                    },
                ));
            }
        }));
    }
    let mut carts: Vec<Option<Prepared>> = vec![None; count];
    for caller in callers {
        for (index, cart) in caller.await?? {
            carts[index] = Some(cart);
        }
    }
    carts
        .into_iter()
        .map(|cart| cart.context("a cart was not prepared"))
        .collect()
}

/// PlaceOrder once per prepared cart from `concurrency` callers, with key
/// `bench-order-{run}-{index}` and `tok_ok`.
pub async fn place_orders(
    channels: &[Channel],
    bearer: &MetadataValue<Ascii>,
    run: &str,
    carts: Vec<Prepared>,
    concurrency: usize,
) -> anyhow::Result<Run<Placed>> {
    let clients: Arc<Vec<OrderServiceClient<Channel>>> = Arc::new(
        (0..concurrency)
            .map(|caller| OrderServiceClient::new(channels[caller % channels.len()].clone()))
            .collect(),
    );
    let calls = carts.len();
    // Requests built before the clock starts; each is taken once.
    let requests: Arc<Vec<std::sync::Mutex<Option<Request<PlaceOrderRequest>>>>> = Arc::new(
        carts
            .into_iter()
            .enumerate()
            .map(|(index, cart)| {
                std::sync::Mutex::new(Some(keyed(
                    PlaceOrderRequest {
                        cart_id: cart.cart_id,
                        quote_id: cart.quote_id,
                        expected_total: cart.total,
                        payment_token: PAYMENT_TOKEN.into(),
                        ..Default::default()
                    },
                    bearer,
                    &format!("bench-order-{run}-{index}"),
                )))
            })
            .collect(),
    );
    drive(concurrency, calls, move |caller, index| {
        let mut client = clients[caller].clone();
        let request = requests[index].lock().expect("lock").take();
        async move {
            let request = request.ok_or_else(|| Status::internal("request taken twice"))?;
            let order = client
                .place_order(request)
                .await?
                .into_inner()
                .order
                .ok_or_else(|| Status::internal("PlaceOrder answered without an order"))?;
            let captured = order
                .payment
                .as_ref()
                .is_some_and(|payment| payment.status == PaymentStatus::Captured as i32);
            Ok(Placed {
                order_id: order.order_id,
                captured,
            })
        }
    })
    .await
}

/// GetOrder on every id at [`PREP_CONCURRENCY`]: (found, with payment CAPTURED, missing).
pub async fn check_orders(
    channels: &[Channel],
    bearer: &MetadataValue<Ascii>,
    order_ids: &[String],
) -> anyhow::Result<(usize, usize, usize)> {
    let ids: Arc<Vec<String>> = Arc::new(order_ids.to_vec());
    let clients: Arc<Vec<OrderServiceClient<Channel>>> = Arc::new(
        (0..PREP_CONCURRENCY)
            .map(|caller| OrderServiceClient::new(channels[caller % channels.len()].clone()))
            .collect(),
    );
    let bearer = bearer.clone();
    let run = drive(PREP_CONCURRENCY, ids.len(), move |caller, index| {
        let mut client = clients[caller].clone();
        let request = authorized(
            GetOrderRequest {
                order_id: ids[index].clone(),
            },
            &bearer,
        );
        async move {
            let order = client.get_order(request).await?.into_inner().order;
            Ok(order
                .and_then(|order| order.payment)
                .is_some_and(|payment| payment.status == PaymentStatus::Captured as i32))
        }
    })
    .await?;
    let found = run.ok.len();
    let captured = run.ok.iter().filter(|captured| **captured).count();
    let not_found = run
        .errors
        .iter()
        .filter(|(label, _)| label.starts_with("NotFound"))
        .map(|(_, count)| count)
        .sum();
    ensure!(
        found + not_found == run.calls,
        "GetOrder failed: {}",
        run.errors_text()
    );
    Ok((found, captured, not_found))
}

/// Enrols `bench-member-{i}` for every `i` in `indexes` from `concurrency` callers; their member
/// ids in index order. Fails on any error or a member that existed already.
pub async fn enrol(
    channels: &[Channel],
    bearer: &MetadataValue<Ascii>,
    indexes: std::ops::Range<usize>,
    concurrency: usize,
) -> anyhow::Result<Vec<String>> {
    let (first, count) = (indexes.start, indexes.len());
    let next = Arc::new(AtomicUsize::new(0));
    let mut callers = Vec::with_capacity(concurrency);
    for caller in 0..concurrency {
        let mut client = MemberServiceClient::new(channels[caller % channels.len()].clone());
        let (next, bearer) = (next.clone(), bearer.clone());
        callers.push(tokio::spawn(async move {
            let mut enrolled = Vec::new();
            loop {
                let offset = next.fetch_add(1, Ordering::Relaxed);
                if offset >= count {
                    return Ok::<_, anyhow::Error>(enrolled);
                }
                let index = first + offset;
                let response = client
                    .enroll_member(authorized(
                        EnrollMemberRequest {
                            customer_id: format!("bench-member-{index}"),
                            display_name: format!("Bench Member {index}"),
                            registered: true,
                            ..Default::default()
                        },
                        &bearer,
                    ))
                    .await?
                    .into_inner();
                ensure!(response.created, "bench-member-{index} already existed");
                let member = response.member.context("EnrollMember returned no member")?;
                enrolled.push((offset, member.member_id));
            }
        }));
    }
    let mut member_ids = vec![String::new(); count];
    for caller in callers {
        for (offset, member_id) in caller.await?? {
            member_ids[offset] = member_id;
        }
    }
    Ok(member_ids)
}
