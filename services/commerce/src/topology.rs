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
    /// comma-separated list of them, or `dns:///host:port` (every address it resolves to is a
    /// replica).
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
        let identity = ServiceIdentity::from_pem(&name, &name, &pem)
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

/// A channel to a callee's replicas from its target: `http://host:port`, a comma-separated list
/// (balanced per request), or `dns:///host:port` (every address it resolves to).
pub async fn callee_channel(target: &str) -> anyhow::Result<tonic::transport::Channel> {
    use tonic::transport::{Channel, Endpoint};
    let urls: Vec<String> = match target.strip_prefix("dns:///") {
        Some(host_port) => {
            let (host, port) = host_port
                .rsplit_once(':')
                .with_context(|| format!("{target}: dns:/// needs host:port"))?;
            let addresses = tokio::net::lookup_host((host, port.parse::<u16>()?))
                .await
                .with_context(|| format!("resolving {target}"))?;
            addresses
                .map(|address| format!("http://{address}"))
                .collect()
        }
        None => target
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(str::to_owned)
            .collect(),
    };
    if urls.is_empty() {
        bail!("{target}: no address to call");
    }
    let endpoints = urls
        .iter()
        .map(|url| Endpoint::from_shared(url.clone()).with_context(|| format!("{url}: not a URL")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Channel::balance_list(endpoints.into_iter()))
}
