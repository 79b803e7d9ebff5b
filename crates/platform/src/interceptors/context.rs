//! What the interceptors learn about a call, left in the request's extensions for handlers.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Instant;

/// The call's request id (`x-request-id`, generated when absent); echoed in the response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

/// The peer address of the connection the call arrived on (set by the server for every request).
/// Behind a proxy this is the proxy's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddress(pub SocketAddr);

/// W3C trace context received with the call.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TraceContext {
    /// `traceparent`, when valid.
    pub traceparent: Option<String>,
    /// `tracestate`.
    pub tracestate: Option<String>,
}

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Token subject (`sub`).
    pub subject: String,
    /// Tenant from the `tenant` claim.
    pub tenant: String,
    /// Scopes from the `scope` claim.
    pub scopes: BTreeSet<String>,
    /// The customer a customer token acts for (claim `customer_id`); `None` for staff and
    /// service tokens, which are tenant-wide.
    pub customer: Option<String>,
}

/// The customer a call acts for, set by the authorization layer when a customer token called a
/// method open to customers: handlers answer only for this customer's objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Customer(pub String);

/// The tenant the call acts for: from the token, or from `commerce-tenant` on public methods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant(pub String);

/// When the call must be finished (the caller's deadline, capped by the contract).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline(pub Instant);
