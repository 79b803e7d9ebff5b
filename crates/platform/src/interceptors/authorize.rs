//! Authorization from the contract: each method's `(commerce.api.v1.rpc).auth` says whether it is
//! public or which scopes it needs. Decides the call's [`Tenant`]. Methods the contract gives no
//! auth policy are refused (fail closed); health and reflection are open.

use commerce_api::commerce::common::v1::ErrorReason;
use std::sync::Arc;

use http::Request;
use tonic::body::Body;
use tonic::{Code, Status};

use super::check::Check;
use super::context::{Customer, Principal, Tenant};
use super::errors;
use super::policy::{CustomerAccess, MethodPolicy, PLATFORM_ERROR_DOMAIN};

/// Header naming the tenant of calls to public methods.
pub const TENANT_HEADER: &str = "commerce-tenant";

/// The authorization check.
#[derive(Debug, Clone)]
pub struct Authorize {
    known_methods: Arc<std::collections::HashSet<String>>,
}

impl Authorize {
    /// Authorizes against the policy `ResolvePolicy` put in the request; `known_methods` are every
    /// served path (with a policy or not), to tell a closed method from an unknown one.
    pub fn new(known_methods: Arc<std::collections::HashSet<String>>) -> Self {
        Authorize { known_methods }
    }
}

impl Check for Authorize {
    fn check(&self, request: &mut Request<Body>) -> Result<(), Status> {
        let path = request.uri().path();
        let Some(policy) = request.extensions().get::<Arc<MethodPolicy>>().cloned() else {
            if self.known_methods.contains(path) {
                return Err(errors::status(
                    Code::PermissionDenied,
                    ErrorReason::ScopeMissing,
                    PLATFORM_ERROR_DOMAIN,
                    format!("{path} declares no auth policy in its contract and is closed"),
                ));
            }
            return Ok(()); // unknown method: the router answers UNIMPLEMENTED
        };
        let domain = policy.error_domain.clone();
        if policy.infrastructure {
            return Ok(());
        }
        // Borrowed, not cloned (its scopes are a set of strings): what the call needs from it is
        // taken out below, and the extensions are changed once the borrow ends.
        let principal = request.extensions().get::<Principal>();
        let mut customer_of_call = None;
        let tenant = if policy.public {
            match principal {
                Some(principal) => principal.tenant.clone(),
                None => request
                    .headers()
                    .get(TENANT_HEADER)
                    .and_then(|value| value.to_str().ok())
                    .filter(|tenant| !tenant.is_empty() && tenant.len() <= 64)
                    .map(str::to_owned)
                    .ok_or_else(|| {
                        errors::status(
                            Code::InvalidArgument,
                            ErrorReason::TenantMissing,
                            &domain,
                            format!(
                                "public method {} needs the {TENANT_HEADER} header",
                                policy.name
                            ),
                        )
                    })?,
            }
        } else {
            let principal = principal.ok_or_else(|| {
                errors::status(
                    Code::Unauthenticated,
                    ErrorReason::TokenMissing,
                    &domain,
                    format!("{} needs a bearer token", policy.name),
                )
            })?;
            let missing: Vec<&str> = policy
                .scopes
                .iter()
                .filter(|scope| !principal.scopes.contains(*scope))
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                return Err(errors::status_with_metadata(
                    Code::PermissionDenied,
                    ErrorReason::ScopeMissing,
                    &domain,
                    format!("{} needs scopes: {}", policy.name, missing.join(" ")),
                    [("missing_scopes".to_owned(), missing.join(" "))],
                ));
            }
            // A customer token reaches only what the contract opens to customers, whatever
            // scopes it carries: scopes say what kind of call, this says on whose behalf.
            if let Some(customer) = &principal.customer {
                if policy.customer == CustomerAccess::Refused {
                    return Err(errors::status(
                        Code::PermissionDenied,
                        ErrorReason::CustomerNotAllowed,
                        &domain,
                        format!("{} is not open to customer tokens", policy.name),
                    ));
                }
                customer_of_call = Some(Customer(customer.clone()));
            }
            principal.tenant.clone()
        };
        if let Some(customer) = customer_of_call {
            request.extensions_mut().insert(customer);
        }
        request.extensions_mut().insert(Tenant(tenant));
        Ok(())
    }
}
