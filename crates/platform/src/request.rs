//! What handlers read off a request the platform's layers prepared, in one place so every
//! service reads it the same way.

use tonic::{Request, Status};

use crate::interceptors::{Customer, IdempotencyContext, Tenant};

/// The caller's tenant, set by the authorization layer (from the token, or the
/// `commerce-tenant` header on public reads).
pub fn tenant<T>(request: &Request<T>) -> Result<String, Status> {
    request
        .extensions()
        .get::<Tenant>()
        .map(|tenant| tenant.0.clone())
        .ok_or_else(|| Status::internal("no tenant on the request"))
}

/// The customer a customer token acts for, when one called: the handler answers only for this
/// customer's objects (another customer's are reported as not found). `None` for staff and
/// service tokens, which see the whole tenant.
pub fn customer<T>(request: &Request<T>) -> Option<String> {
    request
        .extensions()
        .get::<Customer>()
        .map(|customer| customer.0.clone())
}

/// Whether the caller may see an object owned by `owner` (a `customer_id`): always for
/// tenant-wide callers, else only its own customer's. An object without an owner belongs to no
/// customer, so a customer may not see it. Otherwise the error `not_found` makes — the service's
/// own "does not exist", so another customer's object reads exactly like a missing one.
pub fn owned<E>(
    customer: Option<&str>,
    owner: &str,
    not_found: impl FnOnce() -> E,
) -> Result<(), E> {
    if customer.is_none_or(|customer| customer == owner) {
        Ok(())
    } else {
        Err(not_found())
    }
}

/// The stable id a call of `method` (`pkg.Service/Method`) with idempotency `key` for `tenant`
/// makes ([`idempotency_id`]): a caller that reaches a service's engine in process uses it so it
/// makes the very object the same call over the wire would.
pub fn derived_id(tenant: &str, method: &str, key: &str) -> String {
    use sha2::{Digest as _, Sha256};
    Sha256::digest(format!("{tenant}\u{1f}{method}\u{1f}{key}").as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// A stable id derived from the request's idempotency key (tenant, method, key), so a create
/// retried after a crash finds what the first attempt made; a fresh UUIDv7 when the call
/// carries no key.
pub fn idempotency_id<T>(request: &Request<T>) -> String {
    request
        .extensions()
        .get::<IdempotencyContext>()
        .map_or_else(
            || uuid::Uuid::now_v7().simple().to_string(),
            IdempotencyContext::derived_id,
        )
}

/// The request's idempotency context, when it carries a key: a handler that changes state
/// passes it on so its commit records the response ([`IdempotencyContext::record`]).
pub fn idempotency<T>(request: &Request<T>) -> Option<IdempotencyContext> {
    request.extensions().get::<IdempotencyContext>().cloned()
}

/// A list's page size as the contracts define it: 0 means 50, above 500 means 500.
pub fn page_size(requested: i32) -> usize {
    match requested {
        ..=0 => 50,
        size => (size as usize).min(500),
    }
}

/// The paths of an update mask (AIP-134); none when unset.
pub fn field_mask(mask: Option<prost_types::FieldMask>) -> Vec<String> {
    mask.map(|mask| mask.paths).unwrap_or_default()
}
