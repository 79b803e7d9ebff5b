//! Per-method policy read from the contract's custom options (`commerce.api.v1.rpc`,
//! `commerce.api.v1.service`) in the descriptor pool — the proto is the configuration.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use prost_reflect::{
    DescriptorPool, DynamicMessage, MessageDescriptor, MethodDescriptor, ReflectMessage as _, Value,
};

/// Services every server hosts that need neither token nor tenant.
pub(super) const INFRASTRUCTURE_SERVICES: &[&str] = &[
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// Error domain for errors raised before a service is known.
pub const PLATFORM_ERROR_DOMAIN: &str = "platform.commerce.dev";

/// How a method is protected and limited, as its contract declares.
#[derive(Debug, Clone)]
pub struct MethodPolicy {
    /// Fully-qualified method name, `pkg.Service/Method`.
    pub name: String,
    /// Health/reflection: no token, no tenant.
    pub infrastructure: bool,
    /// Callable without a token (tenant from the `commerce-tenant` header).
    pub public: bool,
    /// Scopes the token must carry.
    pub scopes: Vec<String>,
    /// What a customer token may do with the method (`auth.customer`).
    pub customer: CustomerAccess,
    /// `commerce.api.v1.Idempotency` number (0 when unspecified).
    pub idempotency: i32,
    /// Tokens a call costs in the tenant's rate limit.
    pub rate_limit_tokens: u32,
    /// Upper bound on the deadline granted.
    pub max_timeout: Option<Duration>,
    /// `google.rpc.ErrorInfo.domain` of the method's service.
    pub error_domain: String,
    /// Request message type (for validation).
    pub input: MessageDescriptor,
    /// Unary request (validation reads the whole message).
    pub unary_request: bool,
    /// Set when the contract deprecates the method.
    pub deprecation: Option<DeprecationPolicy>,
    /// How HTTP caches may keep its Connect GET answers, from `(commerce.api.v1.rpc).cache`.
    pub cache: Option<CacheRule>,
}

/// What a customer token may do with a method, from `(commerce.api.v1.rpc).auth.customer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CustomerAccess {
    /// Customer tokens are refused (staff and service methods).
    #[default]
    Refused,
    /// Customer tokens may call it for their own objects; the handler checks ownership.
    Own,
    /// Customer tokens may call it; the answer is the same for every customer.
    Shared,
}

/// Cacheability of a public read, from `(commerce.api.v1.rpc).cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheRule {
    /// How long an answer may be reused without asking again.
    pub max_age: Duration,
    /// Shared caches may keep it.
    pub shared: bool,
}

/// How a deprecated method is retired, from `(commerce.api.v1.rpc).deprecation`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeprecationPolicy {
    /// The method callers should move to.
    pub replacement: String,
    /// Earliest version that may remove the method.
    pub removal_version: String,
    /// Date after which the method may stop working (`YYYY-MM-DD`), if announced.
    pub sunset_date: Option<String>,
}

/// Policies of every known method, by request path (`/pkg.Service/Method`).
#[derive(Debug, Clone, Default)]
pub struct Policies {
    by_path: HashMap<String, Arc<MethodPolicy>>,
}

impl Policies {
    /// Reads the policies of every method in `pool`. Methods without an `rpc` option are absent:
    /// the authorization layer refuses them (fail closed), except infrastructure services.
    pub fn from_pool(pool: &DescriptorPool) -> Self {
        let rpc_option = pool.get_extension_by_name("commerce.api.v1.rpc");
        let service_option = pool.get_extension_by_name("commerce.api.v1.service");
        let mut by_path = HashMap::new();
        for service in pool.services() {
            let infrastructure = INFRASTRUCTURE_SERVICES.contains(&service.full_name());
            let error_domain = service_option
                .as_ref()
                .and_then(|option| extension(&service.options(), option))
                .map(|policy| string(&policy, "error_domain"))
                .filter(|domain| !domain.is_empty())
                .unwrap_or_else(|| PLATFORM_ERROR_DOMAIN.to_owned());
            for method in service.methods() {
                let rpc = rpc_option
                    .as_ref()
                    .and_then(|option| extension(&method.options(), option));
                if rpc.is_none() && !infrastructure {
                    continue;
                }
                let policy = method_policy(&method, rpc.as_ref(), infrastructure, &error_domain);
                by_path.insert(
                    format!("/{}/{}", service.full_name(), method.name()),
                    Arc::new(policy),
                );
            }
        }
        Policies { by_path }
    }

    /// The policy of the method at `path`.
    pub fn get(&self, path: &str) -> Option<&Arc<MethodPolicy>> {
        self.by_path.get(path)
    }

    /// Every policy, by request path.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Arc<MethodPolicy>)> {
        self.by_path
            .iter()
            .map(|(path, policy)| (path.as_str(), policy))
    }
}

fn method_policy(
    method: &MethodDescriptor,
    rpc: Option<&DynamicMessage>,
    infrastructure: bool,
    error_domain: &str,
) -> MethodPolicy {
    let auth = rpc.and_then(|rpc| message(rpc, "auth"));
    let max_timeout_ms = rpc.map_or(0, |rpc| uint(rpc, "max_timeout_ms"));
    MethodPolicy {
        name: format!("{}/{}", method.parent_service().full_name(), method.name()),
        infrastructure,
        public: infrastructure
            || auth
                .as_ref()
                .is_some_and(|auth| matches!(field(auth, "public"), Some(Value::Bool(true)))),
        customer: match auth.as_ref().and_then(|auth| field(auth, "customer")) {
            Some(Value::EnumNumber(1)) => CustomerAccess::Own,
            Some(Value::EnumNumber(2)) => CustomerAccess::Shared,
            // Unset, or a value this build does not know: closed to customers.
            _ => CustomerAccess::Refused,
        },
        scopes: match auth.as_ref().and_then(|auth| field(auth, "scopes")) {
            Some(Value::List(items)) => items
                .into_iter()
                .filter_map(|item| item.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        },
        idempotency: match rpc.and_then(|rpc| field(rpc, "idempotency")) {
            Some(Value::EnumNumber(number)) => number,
            _ => 0,
        },
        rate_limit_tokens: rpc.map_or(1, |rpc| uint(rpc, "rate_limit_tokens").max(1)),
        max_timeout: (max_timeout_ms > 0).then(|| Duration::from_millis(u64::from(max_timeout_ms))),
        error_domain: error_domain.to_owned(),
        input: method.input(),
        unary_request: !method.is_client_streaming(),
        deprecation: rpc
            .and_then(|rpc| message(rpc, "deprecation"))
            .map(|deprecation| DeprecationPolicy {
                replacement: string(&deprecation, "replacement"),
                removal_version: string(&deprecation, "removal_version"),
                sunset_date: Some(string(&deprecation, "sunset_date"))
                    .filter(|date| !date.is_empty()),
            }),
        cache: rpc
            .and_then(|rpc| message(rpc, "cache"))
            .map(|cache| CacheRule {
                max_age: Duration::from_secs(u64::from(uint(&cache, "max_age_seconds"))),
                shared: matches!(field(&cache, "shared"), Some(Value::Bool(true))),
            }),
    }
}

fn extension(
    options: &DynamicMessage,
    extension: &prost_reflect::ExtensionDescriptor,
) -> Option<DynamicMessage> {
    if !options.has_extension(extension) {
        return None;
    }
    match options.get_extension(extension).into_owned() {
        Value::Message(message) => Some(message),
        _ => None,
    }
}

fn field(message: &DynamicMessage, name: &str) -> Option<Value> {
    message
        .get_field_by_name(name)
        .map(|value| value.into_owned())
}

/// A sub-message field, only when it is actually set (unset fields read as defaults).
fn message(message: &DynamicMessage, name: &str) -> Option<DynamicMessage> {
    let field = message.descriptor().get_field_by_name(name)?;
    if !message.has_field(&field) {
        return None;
    }
    match message.get_field(&field).into_owned() {
        Value::Message(inner) => Some(inner),
        _ => None,
    }
}

fn string(message: &DynamicMessage, name: &str) -> String {
    field(message, name)
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn uint(message: &DynamicMessage, name: &str) -> u32 {
    match field(message, name) {
        Some(Value::U32(number)) => number,
        _ => 0,
    }
}

/// Puts the method's policy into the request's extensions for the layers after it.
#[derive(Debug, Clone)]
pub struct ResolvePolicy {
    policies: Arc<Policies>,
}

impl ResolvePolicy {
    /// Resolves from `policies`.
    pub fn new(policies: Arc<Policies>) -> Self {
        ResolvePolicy { policies }
    }
}

impl super::check::Check for ResolvePolicy {
    fn check(&self, request: &mut http::Request<tonic::body::Body>) -> Result<(), tonic::Status> {
        if let Some(policy) = self.policies.get(request.uri().path()) {
            request.extensions_mut().insert(policy.clone());
        }
        Ok(())
    }
}
