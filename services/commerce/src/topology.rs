//! Which services this process runs and how it reaches the others: the two shapes of the
//! platform. The all-in-one (`commerce serve`, the default) runs every module in one process:
//! checkout reaches loyalty in process, the PSP simulator runs beside the store, events travel on
//! the in-process bus (or Redis). A split deployable (`commerce serve --services checkout`) runs a
//! subset: it reaches loyalty and the PSP over gRPC as itself (its own signed service token),
//! events cross processes on Redis Streams, and every process shares one database.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use platform::identity::ServiceIdentity;
use platform::interceptors::Policies;

/// A service module `--services` can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum ServiceName {
    /// Menu, carts, quotes, orders, payment reconciliation.
    Checkout,
    /// Members, points, rewards, the loyalty program.
    Loyalty,
    /// Plans, subscriptions, invoices, the tenant clock API.
    Subscriptions,
}

impl ServiceName {
    pub const ALL: [ServiceName; 3] = [
        ServiceName::Checkout,
        ServiceName::Loyalty,
        ServiceName::Subscriptions,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ServiceName::Checkout => "checkout",
            ServiceName::Loyalty => "loyalty",
            ServiceName::Subscriptions => "subscriptions",
        }
    }
}

/// How this process reaches the services it does not run.
#[derive(Args, Debug, Clone)]
pub struct TopologyArgs {
    /// The services this process runs (comma-separated). All three by default (the all-in-one);
    /// a subset is one deployable of the split topology, which needs `--redis-url` and a shared
    /// `MONGODB_URI`.
    #[arg(
        long,
        env = "COMMERCE_SERVICES",
        value_enum,
        value_delimiter = ',',
        default_values_t = ServiceName::ALL
    )]
    pub services: Vec<ServiceName>,
    /// Loyalty, for a checkout process that does not run it: `http://host:port`, a
    /// comma-separated list of them, or `dns:///host:port` (re-resolved every 10 s; every address
    /// is a replica).
    #[arg(long, env = "COMMERCE_LOYALTY_URL")]
    pub loyalty_url: Option<String>,
    /// The PSP process (`commerce psp serve`), same forms as `--loyalty-url`. Unset, the PSP
    /// simulator runs in this process beside its store (the all-in-one only).
    #[arg(long, env = "COMMERCE_PSP_URL")]
    pub psp_url: Option<String>,
    /// This service's ES256 private key (PKCS#8 PEM; `commerce keys generate` makes one): it signs
    /// the tokens of this process's calls to other services, whose JWKS lists its public key.
    #[arg(long, env = "COMMERCE_SERVICE_KEY_FILE")]
    pub service_key_file: Option<PathBuf>,
    /// The key's id in the callees' JWKS, and the service's name in its tokens (`sub` =
    /// `service:<name>`); default: the services this process runs, joined with `+`.
    #[arg(long, env = "COMMERCE_SERVICE_NAME")]
    pub service_name: Option<String>,
    /// Milliseconds a call to another service may take per attempt (within the caller's own
    /// deadline).
    #[arg(long, env = "COMMERCE_CALLEE_TIMEOUT_MS", default_value_t = 2000)]
    pub callee_timeout_ms: u64,
    /// Hedge side-effect-free reads of other services: a second attempt on another replica after
    /// this many milliseconds without an answer (the first answer wins). Off when unset.
    #[arg(long, env = "COMMERCE_HEDGE_AFTER_MS")]
    pub hedge_after_ms: Option<u64>,
    /// This process's name on the event bus (a consumer within each group); default: host name
    /// and process id.
    #[arg(long, env = "COMMERCE_INSTANCE")]
    pub instance: Option<String>,
}

impl TopologyArgs {
    /// Whether the process runs `service`.
    pub fn runs(&self, service: ServiceName) -> bool {
        self.services.contains(&service)
    }

    /// Whether this is the all-in-one.
    pub fn all_in_one(&self) -> bool {
        ServiceName::ALL.iter().all(|service| self.runs(*service))
    }

    /// The process's name on the bus.
    pub fn instance(&self) -> String {
        self.instance.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname")
                .map(|name| name.trim().to_owned())
                .unwrap_or_else(|_| "commerce".into());
            format!("{host}-{}", std::process::id())
        })
    }

    /// The service name in this process's tokens.
    pub fn service_name(&self) -> String {
        self.service_name.clone().unwrap_or_else(|| {
            let mut names: Vec<&str> = self.services.iter().map(|s| s.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            names.join("+")
        })
    }

    /// Refuses a shape that cannot work, with a one-line reason, before anything starts.
    pub fn check(&self, redis: bool, shared_database: bool) -> anyhow::Result<()> {
        if self.services.is_empty() {
            bail!("--services names no service; choose from checkout, loyalty, subscriptions");
        }
        if self.all_in_one() {
            return Ok(());
        }
        let subset = self.service_name();
        if !redis {
            bail!(
                "--services {subset} runs part of the platform, so its events must reach the \
                 other processes: set --redis-url (the in-process bus cannot cross processes)"
            );
        }
        if !shared_database {
            bail!(
                "--services {subset} runs part of the platform, so it must share one database \
                 with the others (tenant clocks, the event journal): set MONGODB_URI"
            );
        }
        if self.runs(ServiceName::Checkout)
            && !self.runs(ServiceName::Loyalty)
            && self.loyalty_url.is_none()
        {
            bail!("--services {subset} runs checkout without loyalty: set --loyalty-url");
        }
        let charges = self.runs(ServiceName::Checkout) || self.runs(ServiceName::Subscriptions);
        if charges && self.psp_url.is_none() {
            bail!(
                "--services {subset} charges payments from several processes, which must share \
                 one PSP: set --psp-url (run it with `commerce psp serve`)"
            );
        }
        if (self.loyalty_url.is_some() || self.psp_url.is_some()) && self.service_key_file.is_none()
        {
            bail!(
                "calls to other services authenticate as this service: set --service-key-file \
                 (`commerce keys generate` makes a key and its JWKS entry)"
            );
        }
        Ok(())
    }

    /// The identity this process signs its calls with, when it calls other services.
    pub fn identity(
        &self,
        issuer: Option<String>,
        audience: Option<String>,
    ) -> anyhow::Result<Option<Arc<ServiceIdentity>>> {
        let Some(path) = &self.service_key_file else {
            return Ok(None);
        };
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let name = self.service_name();
        // The key id is derived from the key (`commerce keys generate` publishes it under the
        // same), so a rotated key is told apart from the old one in the callees' JWKS.
        let kid = platform::identity::key_id(&name, &pem)
            .with_context(|| format!("loading the service key {}", path.display()))?;
        let identity = ServiceIdentity::from_pem(&name, &kid, &pem)
            .with_context(|| format!("loading the service key {}", path.display()))?
            .with_issuer_and_audience(issuer, audience);
        Ok(Some(Arc::new(identity)))
    }
}

/// The tenant a process-wide callee (the PSP) is called for: the PSP account is the platform's.
pub const PLATFORM_TENANT: &str = "_platform";

/// The scopes each RPC of the contract demands, from its `(commerce.api.v1.rpc).auth`.
#[derive(Clone)]
pub struct Scopes(Arc<Policies>);

impl Scopes {
    pub fn from_contract() -> anyhow::Result<Self> {
        let pool = prost_reflect::DescriptorPool::decode(commerce_api::FILE_DESCRIPTOR_SET)?;
        Ok(Scopes(Arc::new(Policies::from_pool(&pool))))
    }

    /// The scopes of the RPC at `path` (`/pkg.Service/Method`); none when it declares none.
    pub fn of(&self, path: &str) -> Vec<String> {
        self.0
            .get(path)
            .map(|policy| policy.scopes.clone())
            .unwrap_or_default()
    }
}

/// Signs every call to a callee with this service's own token: for `tenant` when given (a
/// process-wide callee such as the PSP), otherwise for the tenant of the call being served; with
/// exactly the scopes the called RPC demands.
pub fn signed_by(
    identity: Arc<ServiceIdentity>,
    scopes: Scopes,
    tenant: Option<&'static str>,
) -> impl platform::outbound::MetadataHook {
    move |call: &platform::outbound::OutboundCall<'_>,
          metadata: &mut tonic::metadata::MetadataMap| {
        let tenant = tenant
            .or(call.context.tenant.as_deref())
            .ok_or_else(|| tonic::Status::internal("an outbound call serves no tenant"))?;
        let token = identity
            .token(tenant, &scopes.of(call.method))
            .map_err(|error| tonic::Status::internal(error.to_string()))?;
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| tonic::Status::internal("a service token is not a header value"))?;
        metadata.insert("authorization", value);
        Ok(())
    }
}
