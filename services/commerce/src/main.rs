//! `commerce serve`: checkout, subscriptions and loyalty on one port over gRPC, gRPC-web and
//! Connect, behind the platform's interceptor stack. Needs no Redis or MongoDB. `commerce token`
//! mints a development token; `commerce store`, `commerce dead-letters`, `commerce idempotency`,
//! `commerce loyalty` and `commerce checkout` are the operator commands.

mod clock;
mod ops;
mod storage;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use platform::clock::Clocks;
use platform::interceptors::{
    AnonymousRateLimitConfig, AuthConfig, Claims, IdempotencyConfig, InterceptorConfig, Policies,
    RateLimitConfig, TrustedProxies, mint_hs256,
};
use platform::{CorsConfig, Server, ServerConfig};

/// The secret used when none is configured: fine on a laptop, never in a deployment.
const DEV_SECRET: &str = "commerce-dev-secret-not-for-production";

/// Commerce API platform.
#[derive(Parser)]
#[command(version, about, args_override_self = true)] // a repeated flag: the last one wins
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve every service on one port.
    Serve(Box<ServeConfig>),
    /// Print an HS256 development token (signed with the same secret `serve` uses).
    Token(TokenArgs),
    /// Check or compact the embedded store (stop `serve` first: it holds the file).
    #[command(subcommand)]
    Store(ops::StoreCommand),
    /// List or replay events that consumers gave up on (Redis Streams bus).
    #[command(subcommand)]
    DeadLetters(ops::DeadLetterCommand),
    /// Look up the recorded outcome of an idempotency key.
    #[command(subcommand)]
    Idempotency(ops::IdempotencyCommand),
    /// Loyalty operator tools (reconcile a tenant's points ledger).
    #[command(subcommand)]
    Loyalty(ops::LoyaltyCommand),
    /// Checkout operator tools (reconcile a tenant's payments on a running server).
    #[command(subcommand)]
    Checkout(ops::CheckoutCommand),
}

/// Token verification settings shared by `serve` and `token`.
#[derive(Args, Clone)]
struct AuthArgs {
    /// HS256 secret for bearer tokens; unset uses a fixed development secret (with a warning).
    #[arg(long, env = "COMMERCE_JWT_HS256_SECRET")]
    jwt_hs256_secret: Option<String>,
    /// JWKS file with the RS256/ES256 public keys to accept.
    #[arg(long, env = "COMMERCE_JWKS_FILE")]
    jwks_file: Option<PathBuf>,
    /// Required token issuer (`iss`).
    #[arg(long, env = "COMMERCE_JWT_ISSUER")]
    jwt_issuer: Option<String>,
    /// Required token audience (`aud`).
    #[arg(long, env = "COMMERCE_JWT_AUDIENCE")]
    jwt_audience: Option<String>,
}

impl AuthArgs {
    fn secret(&self) -> &str {
        self.jwt_hs256_secret.as_deref().unwrap_or(DEV_SECRET)
    }

    fn config(&self) -> anyhow::Result<AuthConfig> {
        let jwks_json = match &self.jwks_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?,
            ),
            None => None,
        };
        Ok(AuthConfig {
            hs256_secret: Some(self.secret().as_bytes().to_vec()),
            jwks_json,
            issuer: self.jwt_issuer.clone(),
            audience: self.jwt_audience.clone(),
        })
    }
}

impl fmt::Debug for AuthArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthArgs")
            .field(
                "jwt_hs256_secret",
                &if self.jwt_hs256_secret.is_some() {
                    "<redacted>"
                } else {
                    "<development secret>"
                },
            )
            .field("jwks_file", &self.jwks_file)
            .field("jwt_issuer", &self.jwt_issuer)
            .field("jwt_audience", &self.jwt_audience)
            .finish()
    }
}

/// Configuration of `serve`; every flag can also come from the environment.
#[derive(Args, Debug)]
struct ServeConfig {
    /// Address of the API port (gRPC, gRPC-web, Connect); port 0 picks a free one.
    #[arg(long, env = "COMMERCE_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Address of the admin port (`/metrics`, `/healthz`).
    #[arg(long, env = "COMMERCE_ADMIN_LISTEN", default_value = "127.0.0.1:9090")]
    admin_listen: SocketAddr,
    /// Browser origins allowed by CORS (comma-separated; `*` for any).
    #[arg(long, env = "COMMERCE_CORS_ORIGINS", value_delimiter = ',')]
    cors_origins: Vec<String>,
    /// Seconds in-flight calls get to finish after SIGTERM/SIGINT.
    #[arg(long, env = "COMMERCE_SHUTDOWN_GRACE_SECONDS", default_value_t = 10)]
    shutdown_grace_seconds: u64,
    /// Largest Connect message in bytes.
    #[arg(long, env = "COMMERCE_MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024)]
    max_message_bytes: usize,
    /// Calls in flight before new ones are shed with UNAVAILABLE.
    #[arg(long, env = "COMMERCE_MAX_IN_FLIGHT", default_value_t = 1024)]
    max_in_flight: usize,
    /// Per-tenant rate limit of authenticated calls: tokens per second.
    #[arg(long, env = "COMMERCE_RATE_LIMIT_PER_SECOND", default_value_t = 200.0, value_parser = positive)]
    rate_limit_per_second: f64,
    /// Per-tenant rate limit of authenticated calls: burst size.
    #[arg(long, env = "COMMERCE_RATE_LIMIT_BURST", default_value_t = 400.0, value_parser = positive)]
    rate_limit_burst: f64,
    /// Anonymous calls (public methods without a token) per client address: tokens per second.
    #[arg(
        long,
        env = "COMMERCE_ANONYMOUS_CLIENT_RATE_LIMIT_PER_SECOND",
        default_value_t = 50.0,
        value_parser = positive
    )]
    anonymous_client_rate_limit_per_second: f64,
    /// Anonymous calls per client address: burst size.
    #[arg(
        long,
        env = "COMMERCE_ANONYMOUS_CLIENT_RATE_LIMIT_BURST",
        default_value_t = 100.0,
        value_parser = positive
    )]
    anonymous_client_rate_limit_burst: f64,
    /// Anonymous calls per tenant (all clients together, apart from the tenant's authenticated
    /// limit): tokens per second.
    #[arg(
        long,
        env = "COMMERCE_ANONYMOUS_TENANT_RATE_LIMIT_PER_SECOND",
        default_value_t = 200.0,
        value_parser = positive
    )]
    anonymous_tenant_rate_limit_per_second: f64,
    /// Anonymous calls per tenant: burst size.
    #[arg(
        long,
        env = "COMMERCE_ANONYMOUS_TENANT_RATE_LIMIT_BURST",
        default_value_t = 400.0,
        value_parser = positive
    )]
    anonymous_tenant_rate_limit_burst: f64,
    /// Proxies whose `X-Forwarded-For` names the client of anonymous calls (comma-separated
    /// addresses or CIDR ranges); unset: the header is ignored and the peer address counts.
    #[arg(long, env = "COMMERCE_TRUSTED_PROXIES", default_value = "")]
    trusted_proxies: TrustedProxies,
    /// Redis for the fast path (shared rate limits, idempotency locks, event bus); unset keeps
    /// everything in process.
    #[arg(long, env = "COMMERCE_REDIS_URL")]
    redis_url: Option<RedisUrl>,
    /// How long idempotency keys are remembered, in hours.
    #[arg(
        long,
        env = "COMMERCE_IDEMPOTENCY_RETENTION_HOURS",
        default_value_t = 24
    )]
    idempotency_retention_hours: u64,
    /// Minutes a cart lives after its last change.
    #[arg(long, env = "COMMERCE_CART_TTL_MINUTES", default_value_t = 120)]
    cart_ttl_minutes: u64,
    /// Milliseconds the tax hook gets before a quote fails with TAX_UNAVAILABLE.
    #[arg(long, env = "COMMERCE_TAX_TIMEOUT_MS", default_value_t = 2000)]
    tax_timeout_ms: u64,
    /// JSON file of promotion codes (format: `checkout::promotions`); none when unset.
    #[arg(long, env = "COMMERCE_PROMOTIONS_FILE")]
    promotions_file: Option<PathBuf>,
    /// Seconds between rounds of the payment resolver (settles payments the PSP left unknown).
    #[arg(long, env = "COMMERCE_PAYMENT_RESOLVER_SECONDS", default_value_t = 10)]
    payment_resolver_seconds: u64,
    /// Placements still unfinished this many seconds after they started are rolled back by the
    /// payment resolver (authorization voided, reward returned).
    #[arg(
        long,
        env = "COMMERCE_PLACEMENT_ABANDON_SECONDS",
        default_value_t = 300
    )]
    placement_abandon_seconds: u64,
    /// Seconds between billing runs for every tenant (renewals, dunning retries, trial ends,
    /// scheduled resumes and cancellations) on the wall clock; frozen tenant clocks run theirs on
    /// AdvanceClock.
    #[arg(long, env = "COMMERCE_BILLING_SECONDS", default_value_t = 60)]
    billing_seconds: u64,
    /// Seconds between loyalty sweeps (activation, expiry, hold expiry, tiers).
    #[arg(long, env = "COMMERCE_LOYALTY_SWEEP_SECONDS", default_value_t = 60)]
    loyalty_sweep_seconds: u64,
    #[command(flatten)]
    store: storage::StoreArgs,
    #[command(flatten)]
    auth: AuthArgs,
}

/// A rate or burst: a finite number above zero.
fn positive(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(number) if number.is_finite() && number > 0.0 => Ok(number),
        _ => Err(format!("{value:?} is not a number above zero")),
    }
}

/// A Redis URL whose password never reaches the printed configuration.
#[derive(Clone)]
pub struct RedisUrl(pub String);

impl std::str::FromStr for RedisUrl {
    type Err = std::convert::Infallible;
    fn from_str(url: &str) -> Result<Self, Self::Err> {
        Ok(RedisUrl(url.to_owned()))
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // redis://user:password@host:port/db → redis://<credentials>@host:port/db
        match self.0.split_once('@') {
            Some((scheme_and_credentials, host)) => {
                let scheme = scheme_and_credentials
                    .split("://")
                    .next()
                    .unwrap_or("redis");
                write!(f, "{scheme}://<credentials>@{host}")
            }
            None => write!(f, "{}", self.0),
        }
    }
}

/// Arguments of `token`.
#[derive(Args, Debug)]
struct TokenArgs {
    /// Tenant the token acts for.
    #[arg(long, default_value = "demo")]
    tenant: String,
    /// Subject (caller) of the token.
    #[arg(long, default_value = "developer")]
    subject: String,
    /// Scopes (space- or comma-separated); default: every scope the contract declares.
    #[arg(long)]
    scopes: Option<String>,
    /// Lifetime in minutes.
    #[arg(long, default_value_t = 60)]
    ttl_minutes: u64,
    #[command(flatten)]
    auth: AuthArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve(config) => serve(*config).await,
        Command::Token(args) => {
            println!("{}", token(&args)?);
            Ok(())
        }
        Command::Store(command) => ops::store(command),
        Command::DeadLetters(command) => ops::dead_letters(command).await,
        Command::Idempotency(command) => ops::idempotency(command).await,
        Command::Loyalty(command) => ops::loyalty(command).await,
        Command::Checkout(command) => ops::checkout(command).await,
    }
}

async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("COMMERCE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    eprintln!("commerce: configuration {config:?}");
    if config.auth.jwt_hs256_secret.is_none() {
        eprintln!(
            "commerce: WARNING no COMMERCE_JWT_HS256_SECRET set; accepting tokens signed with the development secret"
        );
    }
    let server_config = ServerConfig {
        listen_addr: config.listen,
        admin_addr: Some(config.admin_listen),
        cors: CorsConfig {
            allowed_origins: config.cors_origins.clone(),
        },
        shutdown_grace: Duration::from_secs(config.shutdown_grace_seconds),
        max_message_bytes: config.max_message_bytes,
        // The connection made below is handed to the server (`fast_path`), not made twice.
        redis_url: None,
        interceptors: InterceptorConfig {
            auth: Some(config.auth.config()?),
            rate_limit: RateLimitConfig {
                tokens_per_second: config.rate_limit_per_second,
                burst: config.rate_limit_burst,
            },
            anonymous_rate_limit: AnonymousRateLimitConfig {
                per_client: RateLimitConfig {
                    tokens_per_second: config.anonymous_client_rate_limit_per_second,
                    burst: config.anonymous_client_rate_limit_burst,
                },
                per_tenant: RateLimitConfig {
                    tokens_per_second: config.anonymous_tenant_rate_limit_per_second,
                    burst: config.anonymous_tenant_rate_limit_burst,
                },
                trusted_proxies: config.trusted_proxies.clone(),
            },
            max_in_flight: config.max_in_flight,
            default_timeout: None,
            idempotency: IdempotencyConfig {
                retention: Duration::from_secs(config.idempotency_retention_hours * 3600),
                ..IdempotencyConfig::default()
            },
        },
    };
    let store = config.store.open().await?;
    let degraded = fastpath::Degraded::default();
    let redis = match &config.redis_url {
        Some(url) => {
            let redis = fastpath::connect(&url.0)
                .await
                .context("connecting to Redis")?;
            warn_if_unreachable(&redis, &degraded).await;
            Some(redis)
        }
        None => None,
    };
    let bus: Arc<dyn events::Bus> = match &redis {
        Some(redis) => Arc::new(events::RedisBus::new(redis.clone(), degraded.clone())),
        None => Arc::new(events::MemoryBus::new()),
    };
    let (stop_relay, relay_stopped) = tokio::sync::oneshot::channel::<()>();
    let relay = tokio::spawn(
        events::Relay::new(
            store.clone(),
            bus.clone(),
            fastpath::Locks::new(redis.clone(), degraded.clone()),
            events::RelayConfig::default(),
        )
        .run(async {
            let _ = relay_stopped.await;
        }),
    );
    let clocks = Clocks::new(store.clone());
    let loyalty = Arc::new(loyalty::Loyalty::new(
        store.clone(),
        clocks.clone(),
        fastpath::Cache::new(redis.clone(), degraded.clone()),
    ));
    // The PSP simulator (its token grammar is in the `payments` crate), shared by checkout and
    // subscriptions; a real PSP adapter implements the same port.
    let psp: Arc<dyn payments::PaymentProvider> = Arc::new(payments::PspSimulator::new());
    let billing = Arc::new(subscriptions::Subscriptions::new(
        store.clone(),
        clocks.clone(),
        psp.clone(),
    ));
    // Advancing a tenant's clock runs loyalty's sweep, then the billing run, at the target time.
    let clocks = clocks
        .with_jobs(Arc::new(loyalty::LoyaltyJobs(loyalty.clone())))
        .with_jobs(Arc::new(subscriptions::SubscriptionJobs(billing.clone())));
    let (stop_background, background_stopped) = tokio::sync::watch::channel(false);
    let stopped = |mut signal: tokio::sync::watch::Receiver<bool>| async move {
        let _ = signal.wait_for(|stop| *stop).await;
    };
    let consumer = tokio::spawn(
        events::Consumer::new(
            bus.clone(),
            store.clone(),
            loyalty::CheckoutEvents::new(loyalty.clone()),
            events::ConsumerConfig::new(
                events::envelope::stream_of_package(loyalty::consumer::CHECKOUT_PACKAGE),
                loyalty::consumer::GROUP,
                format!("commerce-{}", std::process::id()),
            ),
        )
        .run(stopped(background_stopped.clone())),
    );
    let sweeper = {
        let loyalty = loyalty.clone();
        tokio::spawn(repeat_every(
            "loyalty sweep",
            Duration::from_secs(config.loyalty_sweep_seconds.max(1)),
            stopped(background_stopped.clone()),
            move || {
                let loyalty = loyalty.clone();
                async move { loyalty.run_due_everywhere().await.map(drop) }
            },
        ))
    };
    let checkout = Checkout::new(
        &config,
        store.clone(),
        redis.clone(),
        clocks.clone(),
        loyalty.clone(),
        psp,
    )?;
    let billing_runs = {
        let billing = billing.clone();
        tokio::spawn(repeat_every(
            "billing run",
            Duration::from_secs(config.billing_seconds.max(1)),
            stopped(background_stopped.clone()),
            move || {
                let billing = billing.clone();
                async move { billing.run_due_everywhere().await.map(drop) }
            },
        ))
    };
    let server = Server::new(server_config)
        .store(store)
        .fast_path(redis, degraded);
    let server = loyalty_services(server, loyalty::LoyaltyApi::new(loyalty));
    let resolver = {
        let orders = checkout.orders.clone();
        tokio::spawn(repeat_every(
            "payment resolver",
            Duration::from_secs(config.payment_resolver_seconds.max(1)),
            stopped(background_stopped),
            move || {
                let orders = orders.clone();
                async move { orders.settle_payments().await.map(drop) }
            },
        ))
    };
    let server = checkout_services(server, checkout);
    let server = subscription_services(server, billing);
    let server = clock::register_clock(server, clocks);
    let bound = server.bind().await?;
    print_banner(bound.local_addr(), bound.admin_addr(), &config.store);
    bound.serve(platform::termination_signal()).await?;
    let _ = stop_relay.send(());
    let _ = stop_background.send(true);
    let _ = relay.await;
    let _ = consumer.await;
    let _ = sweeper.await;
    let _ = billing_runs.await;
    let _ = resolver.await;
    eprintln!("commerce: stopped");
    Ok(())
}

/// Checkout's engines, from the configuration.
struct Checkout {
    catalog: checkout::Catalog,
    carts: checkout::Carts,
    quotes: checkout::Quotes,
    orders: checkout::Orders,
}

impl Checkout {
    fn new(
        config: &ServeConfig,
        store: Arc<dyn store::Store>,
        redis: Option<fastpath::Redis>,
        clocks: Clocks,
        loyalty: Arc<loyalty::Loyalty>,
        psp: Arc<dyn payments::PaymentProvider>,
    ) -> anyhow::Result<Self> {
        let catalog = checkout::Catalog::new(store.clone(), clocks.clone());
        let promotions = match &config.promotions_file {
            Some(path) => checkout::Promotions::from_json(
                &std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?,
            )
            .map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))?,
            None => checkout::Promotions::none(),
        };
        // Carts live in Redis with a TTL when it is configured, in the store otherwise.
        let storage: Arc<dyn checkout::CartStorage> = match redis {
            Some(redis) => Arc::new(checkout::RedisCarts(fastpath::TtlRecords::new(redis))),
            None => Arc::new(checkout::StoreCarts(store.clone())),
        };
        let carts = checkout::Carts::new(
            storage,
            catalog.clone(),
            promotions.clone(),
            clocks.clone(),
            Duration::from_secs(config.cart_ttl_minutes.max(1) * 60),
        );
        let loyalty: Arc<dyn checkout::LoyaltyPort> =
            Arc::new(commerce::LoyaltyForCheckout(loyalty));
        let quotes = checkout::Quotes::new(
            carts.clone(),
            promotions,
            loyalty.clone(),
            None, // each location's tax rate table
            Duration::from_millis(config.tax_timeout_ms.max(1)),
            store.clone(),
            clocks.clone(),
        );
        let orders =
            checkout::Orders::new(store, carts.clone(), quotes.clone(), loyalty, psp, clocks)
                .with_abandon_after(Duration::from_secs(config.placement_abandon_seconds));
        Ok(Checkout {
            catalog,
            carts,
            quotes,
            orders,
        })
    }
}

/// Adds checkout's services built so far.
fn checkout_services(server: Server, checkout: Checkout) -> Server {
    use commerce_api::FILE_DESCRIPTOR_SET;
    use commerce_api::commerce::checkout::v1::{
        cart_service_server::CartServiceServer,
        checkout_admin_service_server::CheckoutAdminServiceServer,
        menu_service_server::MenuServiceServer, order_service_server::OrderServiceServer,
    };
    server
        .add_service(
            CheckoutAdminServiceServer::new(checkout::CheckoutAdminApi::new(
                checkout.orders.clone(),
            )),
            FILE_DESCRIPTOR_SET,
        )
        .add_service(
            MenuServiceServer::new(checkout::MenuApi::new(checkout.catalog)),
            FILE_DESCRIPTOR_SET,
        )
        .add_service(
            CartServiceServer::new(checkout::CartApi::new(checkout.carts, checkout.quotes)),
            FILE_DESCRIPTOR_SET,
        )
        .add_service(
            OrderServiceServer::new(checkout::OrderApi::new(checkout.orders)),
            FILE_DESCRIPTOR_SET,
        )
}

/// Adds the three subscriptions services (ClockService is registered with the clocks).
fn subscription_services(server: Server, billing: Arc<subscriptions::Subscriptions>) -> Server {
    use commerce_api::FILE_DESCRIPTOR_SET;
    use commerce_api::commerce::subscriptions::v1::{
        invoice_service_server::InvoiceServiceServer, plan_service_server::PlanServiceServer,
        subscription_service_server::SubscriptionServiceServer,
    };
    server
        .add_service(
            PlanServiceServer::new(subscriptions::PlanApi::new(billing.clone())),
            FILE_DESCRIPTOR_SET,
        )
        .add_service(
            SubscriptionServiceServer::new(subscriptions::SubscriptionApi::new(billing.clone())),
            FILE_DESCRIPTOR_SET,
        )
        .add_service(
            InvoiceServiceServer::new(subscriptions::InvoiceApi::new(billing)),
            FILE_DESCRIPTOR_SET,
        )
}

/// Adds the four loyalty services.
fn loyalty_services(server: Server, api: loyalty::LoyaltyApi) -> Server {
    use commerce_api::FILE_DESCRIPTOR_SET;
    use commerce_api::commerce::loyalty::v1::{
        member_service_server::MemberServiceServer, points_service_server::PointsServiceServer,
        program_service_server::ProgramServiceServer, reward_service_server::RewardServiceServer,
    };
    server
        .add_service(MemberServiceServer::new(api.clone()), FILE_DESCRIPTOR_SET)
        .add_service(PointsServiceServer::new(api.clone()), FILE_DESCRIPTOR_SET)
        .add_service(RewardServiceServer::new(api.clone()), FILE_DESCRIPTOR_SET)
        .add_service(ProgramServiceServer::new(api), FILE_DESCRIPTOR_SET)
}

/// Runs `round` every `every` until `shutdown`: the loyalty sweep and the payment resolver,
/// so points move and unknown payments settle without anyone calling in.
async fn repeat_every<F, Fut, E>(
    what: &'static str,
    every: Duration,
    shutdown: impl std::future::Future<Output = ()>,
    round: F,
) where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(every) => {}
        }
        if let Err(error) = round().await {
            tracing::warn!(%error, "{what} failed; retrying next round");
        }
    }
}

/// Starting with Redis down is allowed (the fast path degrades), but worth saying out loud.
async fn warn_if_unreachable(redis: &fastpath::Redis, degraded: &fastpath::Degraded) {
    let mut connection = redis.clone();
    let ping: Result<String, _> = redis::cmd("PING").query_async(&mut connection).await;
    degraded.record(&ping);
    if let Err(error) = ping {
        eprintln!(
            "commerce: WARNING Redis unreachable ({error}); serving degraded on in-process fallbacks until it answers"
        );
    }
}

fn token(args: &TokenArgs) -> anyhow::Result<String> {
    let scopes = match &args.scopes {
        Some(scopes) => scopes
            .split([' ', ','])
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" "),
        None => all_contract_scopes()?.join(" "),
    };
    let exp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + args.ttl_minutes * 60;
    let claims = Claims {
        sub: args.subject.clone(),
        tenant: args.tenant.clone(),
        scope: scopes,
        exp,
    };
    Ok(mint_hs256(args.auth.secret().as_bytes(), &claims)?)
}

/// Every scope any RPC of the contract requires.
fn all_contract_scopes() -> anyhow::Result<Vec<String>> {
    let pool = prost_reflect::DescriptorPool::decode(commerce_api::FILE_DESCRIPTOR_SET)?;
    let policies = Policies::from_pool(&pool);
    let mut scopes: Vec<String> = pool
        .services()
        .flat_map(|service| {
            service
                .methods()
                .map(|method| format!("/{}/{}", service.full_name(), method.name()))
                .collect::<Vec<_>>()
        })
        .filter_map(|path| policies.get(&path).map(|policy| policy.scopes.clone()))
        .flatten()
        .collect();
    scopes.sort();
    scopes.dedup();
    Ok(scopes)
}

fn print_banner(addr: SocketAddr, admin: Option<SocketAddr>, store: &storage::StoreArgs) {
    let url = format!("http://{addr}");
    println!("commerce: listening on {url}");
    println!(
        "  protocols: gRPC (HTTP/2 cleartext), gRPC-web and Connect (HTTP/1.1 and HTTP/2) on this one port"
    );
    if let Some(admin) = admin {
        println!("  admin:     http://{admin}/metrics (Prometheus), http://{admin}/healthz");
    }
    println!("  state:     {}", store.describe());
    println!(
        "  services:  checkout (menu, carts, quotes, orders; PSP simulator), subscriptions (plans, billing, invoices; tenant clocks), loyalty"
    );
    println!(
        "  auth:      JWT bearer; dev token: TOKEN=$(cargo run -q -p commerce -- token --tenant demo)"
    );
    println!("  try:");
    println!("    npx buf curl --http2-prior-knowledge {url}/grpc.health.v1.Health/Check");
    println!("    npx buf curl --http2-prior-knowledge --list-methods {url}");
    println!(
        "    curl -s -H \"authorization: Bearer $TOKEN\" -H 'content-type: application/json' -d '{{\"customerId\":\"c-1\",\"registered\":true}}' {url}/commerce.loyalty.v1.MemberService/EnrollMember"
    );
    println!(
        "    curl -s -H 'commerce-tenant: demo' -H 'content-type: application/json' -d '{{}}' {url}/commerce.checkout.v1.MenuService/ListLocations"
    );
}
