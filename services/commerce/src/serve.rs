//! `commerce serve`: the composition root. It opens what the process shares (store, Redis, the
//! event bus, tenant clocks), builds the service modules `--services` names (see
//! `service_module`), wires checkout to loyalty and both charging services to the PSP — in process
//! or over gRPC — and runs them under one task set and one shutdown.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use platform::clock::Clocks;
use platform::interceptors::{
    AnonymousRateLimitConfig, IdempotencyConfig, InterceptorConfig, RateLimitConfig, TrustedProxies,
};
use platform::{ConnectionLimits, CorsConfig, Server, ServerConfig};
use service_module::{ServiceModule, Shared, Shutdown, Stage, Task};

use crate::auth::AuthArgs;
use crate::storage;
use crate::topology::{PLATFORM_TENANT, Scopes, ServiceName, TopologyArgs, signed_by};

/// Configuration of `serve`; every flag can also come from the environment.
#[derive(Args, Debug)]
pub struct ServeConfig {
    /// Address of the API port (gRPC, gRPC-web, Connect); port 0 picks a free one.
    #[arg(long, env = "COMMERCE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Address of the admin port (`/metrics`, `/healthz`).
    #[arg(long, env = "COMMERCE_ADMIN_LISTEN", default_value = "127.0.0.1:9090")]
    pub admin_listen: SocketAddr,
    /// Browser origins allowed by CORS (comma-separated; `*` for any).
    #[arg(long, env = "COMMERCE_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// Seconds after SIGTERM/SIGINT during which health answers NOT_SERVING while the server
    /// still accepts and serves, so probes and load balancers take it out first (with a
    /// Kubernetes preStop pause as long as this, it may be 0).
    #[arg(long, env = "COMMERCE_SHUTDOWN_DELAY_SECONDS", default_value_t = 3)]
    pub shutdown_delay_seconds: u64,
    /// Seconds in-flight unary calls get to finish once the server drains (after the delay; open
    /// server streams end at once with UNAVAILABLE and a retry hint); events then drain for up to
    /// as long again.
    #[arg(long, env = "COMMERCE_SHUTDOWN_GRACE_SECONDS", default_value_t = 10)]
    pub shutdown_grace_seconds: u64,
    /// Largest request message in bytes, on every protocol (before and after decompression).
    #[arg(long, env = "COMMERCE_MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_message_bytes: usize,
    #[command(flatten)]
    pub connections: ConnectionArgs,
    /// Calls in flight before new ones are shed with UNAVAILABLE.
    #[arg(long, env = "COMMERCE_MAX_IN_FLIGHT", default_value_t = 1024)]
    pub max_in_flight: usize,
    /// Per-tenant rate limit of authenticated calls: tokens per second.
    #[arg(long, env = "COMMERCE_RATE_LIMIT_PER_SECOND", default_value_t = 200.0, value_parser = positive)]
    pub rate_limit_per_second: f64,
    /// Per-tenant rate limit of authenticated calls: burst size.
    #[arg(long, env = "COMMERCE_RATE_LIMIT_BURST", default_value_t = 400.0, value_parser = positive)]
    pub rate_limit_burst: f64,
    /// Anonymous calls (public methods without a token) per client address: tokens per second.
    #[arg(
        long,
        env = "COMMERCE_ANONYMOUS_CLIENT_RATE_LIMIT_PER_SECOND",
        default_value_t = 50.0,
        value_parser = positive
    )]
    pub anonymous_client_rate_limit_per_second: f64,
    /// Anonymous calls per client address: burst size.
    #[arg(
        long,
        env = "COMMERCE_ANONYMOUS_CLIENT_RATE_LIMIT_BURST",
        default_value_t = 100.0,
        value_parser = positive
    )]
    pub anonymous_client_rate_limit_burst: f64,
    /// Anonymous calls per tenant (all clients together, apart from the tenant's authenticated
    /// limit): tokens per second.
    #[arg(
        long,
        env = "COMMERCE_ANONYMOUS_TENANT_RATE_LIMIT_PER_SECOND",
        default_value_t = 200.0,
        value_parser = positive
    )]
    pub anonymous_tenant_rate_limit_per_second: f64,
    /// Anonymous calls per tenant: burst size.
    #[arg(
        long,
        env = "COMMERCE_ANONYMOUS_TENANT_RATE_LIMIT_BURST",
        default_value_t = 400.0,
        value_parser = positive
    )]
    pub anonymous_tenant_rate_limit_burst: f64,
    /// Proxies whose `X-Forwarded-For` names the client of anonymous calls (comma-separated
    /// addresses or CIDR ranges); unset: the header is ignored and the peer address counts.
    #[arg(long, env = "COMMERCE_TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: TrustedProxies,
    /// Redis for the fast path (shared rate limits, idempotency locks, event bus); unset keeps
    /// everything in process.
    #[arg(long, env = "COMMERCE_REDIS_URL")]
    pub redis_url: Option<RedisUrl>,
    /// With Redis: milliseconds a cached value (a loyalty balance) is served from process memory
    /// without asking Redis; 0 turns the near cache off. A write in this process is seen at once,
    /// one in another replica within the pub/sub delay; this bounds what a lost invalidation
    /// message can cost (see docs/operations.md).
    #[arg(long, env = "COMMERCE_NEAR_CACHE_TTL_MS", default_value_t = 1000)]
    pub near_cache_ttl_ms: u64,
    /// With Redis: values the near cache keeps at most (per cache).
    #[arg(long, env = "COMMERCE_NEAR_CACHE_CAPACITY", default_value_t = 4096)]
    pub near_cache_capacity: usize,
    /// With Redis: how replicas share rate limits. `batched`: each call is decided in process and
    /// spend is synced to Redis in one pipeline every `--rate-limit-sync-ms` (or sooner when a
    /// key spent a tenth of its burst), so the shared limit may be overshot by about
    /// replicas × burst/10; `exact`: one Redis script per call, the limit exact.
    #[arg(
        long,
        env = "COMMERCE_RATE_LIMIT_SYNC",
        value_enum,
        default_value_t = RateLimitSyncMode::Batched
    )]
    pub rate_limit_sync: RateLimitSyncMode,
    /// With `--rate-limit-sync batched`: the longest time between syncs, in milliseconds.
    #[arg(long, env = "COMMERCE_RATE_LIMIT_SYNC_MS", default_value_t = 100)]
    pub rate_limit_sync_ms: u64,
    /// How long idempotency keys are remembered, in hours.
    #[arg(
        long,
        env = "COMMERCE_IDEMPOTENCY_RETENTION_HOURS",
        default_value_t = 24
    )]
    pub idempotency_retention_hours: u64,
    /// Seconds between repair sweeps of the event journal (proves paid orders and refunds had
    /// their effect in loyalty; publishes again what a bus lost).
    #[arg(long, env = "COMMERCE_EVENT_REPAIR_SECONDS", default_value_t = 30)]
    pub event_repair_seconds: u64,
    /// Seconds a journaled event may wait for its consumers before the repair sweep publishes it
    /// again and loyalty reconciliation reports it missing.
    #[arg(
        long,
        env = "COMMERCE_EVENT_REPAIR_AFTER_SECONDS",
        default_value_t = 60
    )]
    pub event_repair_after_seconds: u64,
    #[command(flatten)]
    pub topology: TopologyArgs,
    #[command(flatten)]
    pub checkout: checkout::CheckoutArgs,
    #[command(flatten)]
    pub loyalty: loyalty::LoyaltyArgs,
    #[command(flatten)]
    pub subscriptions: subscriptions::SubscriptionsArgs,
    #[command(flatten)]
    pub store: storage::StoreArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
}

/// How replicas share rate limits through Redis (`--rate-limit-sync`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateLimitSyncMode {
    /// One Redis script per call: the shared limit is exact.
    Exact,
    /// Decided in process, synced in batches: no Redis round trip per call.
    Batched,
}

/// Connection caps and timeouts of both ports (API and admin): slow, idle and greedy clients.
#[derive(Args, Debug)]
pub struct ConnectionArgs {
    /// Seconds a client gets to send a request's headers; an HTTP/1 connection waiting for its
    /// next request, and any connection before its first, is closed after it.
    #[arg(
        long,
        env = "COMMERCE_HEADER_READ_TIMEOUT_SECONDS",
        default_value_t = 10
    )]
    pub header_read_timeout_seconds: u64,
    /// Seconds a connection may stay open with no call in flight and no bytes moving.
    #[arg(long, env = "COMMERCE_IDLE_TIMEOUT_SECONDS", default_value_t = 60)]
    pub idle_timeout_seconds: u64,
    /// Open connections per port; more are closed at once (0: no cap).
    #[arg(long, env = "COMMERCE_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// Open connections per client IP address and port (0: no cap). Behind a proxy every caller
    /// shares its address: raise this there.
    #[arg(
        long,
        env = "COMMERCE_MAX_CONNECTIONS_PER_ADDRESS",
        default_value_t = 256
    )]
    pub max_connections_per_address: usize,
    /// Concurrent HTTP/2 streams per connection.
    #[arg(
        long,
        env = "COMMERCE_HTTP2_MAX_CONCURRENT_STREAMS",
        default_value_t = 200
    )]
    pub http2_max_concurrent_streams: u32,
    /// Largest request header section in bytes (HTTP/2 header list, HTTP/1 head; at least 8 KiB
    /// for HTTP/1).
    #[arg(long, env = "COMMERCE_MAX_HEADER_BYTES", default_value_t = 32 * 1024)]
    pub max_header_bytes: u32,
    /// Seconds between HTTP/2 keep-alive pings (0: none).
    #[arg(long, env = "COMMERCE_HTTP2_KEEPALIVE_SECONDS", default_value_t = 30)]
    pub http2_keepalive_seconds: u64,
    /// Seconds an HTTP/2 keep-alive ping may go unanswered before the connection is closed.
    #[arg(
        long,
        env = "COMMERCE_HTTP2_KEEPALIVE_TIMEOUT_SECONDS",
        default_value_t = 10
    )]
    pub http2_keepalive_timeout_seconds: u64,
}

impl ConnectionArgs {
    fn limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            header_read_timeout: Duration::from_secs(self.header_read_timeout_seconds.max(1)),
            idle_timeout: Duration::from_secs(self.idle_timeout_seconds.max(1)),
            max_connections: self.max_connections,
            max_connections_per_address: self.max_connections_per_address,
            max_concurrent_streams: self.http2_max_concurrent_streams.max(1),
            max_header_bytes: self.max_header_bytes,
            keep_alive_interval: (self.http2_keepalive_seconds > 0)
                .then(|| Duration::from_secs(self.http2_keepalive_seconds)),
            keep_alive_timeout: Duration::from_secs(self.http2_keepalive_timeout_seconds.max(1)),
        }
    }
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

pub async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    let hosted: Vec<&str> = config
        .topology
        .services
        .iter()
        .map(|s| s.as_str())
        .collect();
    // One name for the all-in-one (its spans say which service answered), one per service
    // otherwise: `commerce-checkout`, …
    let service_name = if config.topology.services.len() == ServiceName::ALL.len() {
        "commerce".to_owned()
    } else {
        format!("commerce-{}", hosted.join("-"))
    };
    let (traces, telemetry) = platform::telemetry::init(
        &service_name,
        vec![opentelemetry::KeyValue::new(
            "commerce.services",
            hosted.join(","),
        )],
    )?;
    eprintln!("commerce: configuration {config:?}");
    eprintln!("commerce: traces {traces}");
    let topology = &config.topology;
    topology.check(
        config.redis_url.is_some(),
        config.store.mongodb_uri.is_some(),
    )?;
    if config.auth.jwt_hs256_secret.is_none() {
        eprintln!(
            "commerce: WARNING no COMMERCE_JWT_HS256_SECRET set; accepting tokens signed with the development secret"
        );
    }
    let grace = Duration::from_secs(config.shutdown_grace_seconds);
    let server_config = config.server_config()?;

    // What every module of the process shares.
    let shared = shared_parts(&config, grace).await?;
    let Shared {
        store,
        redis,
        degraded,
        bus,
        ..
    } = shared.clone();

    // The modules, and how they reach each other.
    let metrics = platform::interceptors::Metrics::default();
    let callees = Callees {
        identity: topology.identity(
            config.auth.jwt_issuer.clone(),
            config.auth.jwt_audience.clone(),
        )?,
        scopes: Scopes::from_contract()?,
        metrics: metrics.clone(),
        timeout: Duration::from_millis(topology.callee_timeout_ms.max(1)),
        hedge_after: topology.hedge_after_ms.map(Duration::from_millis),
        built: std::sync::Mutex::default(),
    };
    let modules = build_modules(&config, &shared, &callees).await?;

    // Advancing a tenant's clock runs every module's due jobs, in module order (loyalty's sweep
    // before the billing run).
    let clocks = modules
        .iter()
        .flat_map(|module| module.due_jobs())
        .fold(shared.clocks.clone(), Clocks::with_jobs);
    // Consumer groups exist before the relay publishes anything, so an in-process bus knows from
    // the first event who must settle it.
    for (stream, group) in modules.iter().flat_map(|module| module.consumer_groups()) {
        if let Err(error) = bus.ensure_group(&stream, &group).await {
            tracing::warn!(%error, %stream, %group, "consumer group not created yet; the consumer retries");
        }
    }
    let journal = modules
        .iter()
        .fold(events::Journal::new(store.clone()), |journal, module| {
            module.expect_effects(journal)
        });

    // Background work: the modules' tasks, the event repair sweep, the relay.
    let (stop_background, background) = Shutdown::new();
    let (stop_consumers, consumers) = Shutdown::new();
    let mut background_tasks = Vec::new();
    let mut consumer_tasks = Vec::new();
    let repair = {
        let (journal, bus, grace) = (journal.clone(), bus.clone(), shared.repair_after);
        Task::every(
            "event repair sweep",
            Duration::from_secs(config.event_repair_seconds.max(1)),
            move || {
                let (journal, bus) = (journal.clone(), bus.clone());
                async move {
                    let report = journal.sweep(bus.as_ref(), grace).await?;
                    if report.republished > 0 {
                        tracing::warn!(
                            republished = report.republished,
                            confirmed = report.confirmed,
                            "event repair sweep published events again"
                        );
                    }
                    Ok::<_, events::SweepError>(())
                }
            },
        )
    };
    for task in modules
        .iter()
        .flat_map(|module| module.tasks())
        .chain(std::iter::once(repair))
    {
        let (shutdown, tasks) = match task.stage {
            Stage::Background => (background.clone(), &mut background_tasks),
            Stage::Consumer => (consumers.clone(), &mut consumer_tasks),
        };
        tasks.push(tokio::spawn((task.run)(shutdown)));
    }
    let (stop_relay, relay_stopped) = tokio::sync::oneshot::channel::<()>();
    let relay = tokio::spawn(
        events::Relay::new(
            store.clone(),
            bus.clone(),
            fastpath::Locks::new(redis.clone(), degraded.clone()),
            events::RelayConfig {
                drain: grace,
                ..events::RelayConfig::default()
            },
        )
        .with_journal(journal)
        .run(async {
            let _ = relay_stopped.await;
        }),
    );

    let mut server = Server::new(server_config).metrics(metrics);
    for gate in own_gates(&store, &redis).into_iter().chain(callees.gates()) {
        server = server.ready_when(gate);
    }
    let mut server = server.store(store).fast_path(redis, degraded);
    for module in &modules {
        server = module.register(server, &clocks);
    }
    // Listening for SIGTERM/SIGINT before saying where we listen: a stop sent right after that
    // line is honoured, not lost.
    let stop = platform::termination_signal();
    let bound = server.bind().await?;
    print_banner(
        bound.local_addr(),
        bound.admin_addr(),
        &config.store,
        &modules,
    );
    bound.serve(stop).await?;

    // Background rounds first (they emit events), then the relay drains the outbox, then the
    // consumers handle what it published.
    let _ = stop_background.send(true);
    for task in background_tasks {
        let _ = task.await;
    }
    let _ = stop_relay.send(());
    let _ = relay.await;
    let _ = stop_consumers.send(true);
    for task in consumer_tasks {
        let _ = task.await;
    }
    telemetry.shutdown();
    eprintln!("commerce: stopped");
    Ok(())
}

impl ServeConfig {
    /// The rate limiters' sharing mode.
    fn rate_limit_sync(&self) -> fastpath::RateLimitSync {
        match self.rate_limit_sync {
            RateLimitSyncMode::Exact => fastpath::RateLimitSync::Exact,
            RateLimitSyncMode::Batched => fastpath::RateLimitSync::Batched {
                interval: Duration::from_millis(self.rate_limit_sync_ms.max(1)),
            },
        }
    }

    /// The near cache in front of Redis.
    fn near_cache(&self) -> fastpath::NearCache {
        fastpath::NearCache {
            ttl: Duration::from_millis(self.near_cache_ttl_ms),
            capacity: self.near_cache_capacity,
        }
    }

    /// The server's own settings: where it listens, its limits, its interceptors.
    fn server_config(&self) -> anyhow::Result<ServerConfig> {
        let grace = Duration::from_secs(self.shutdown_grace_seconds);
        Ok(ServerConfig {
            listen_addr: self.listen,
            admin_addr: Some(self.admin_listen),
            cors: CorsConfig {
                allowed_origins: self.cors_origins.clone(),
            },
            shutdown_delay: Duration::from_secs(self.shutdown_delay_seconds),
            shutdown_grace: grace,
            max_message_bytes: self.max_message_bytes,
            connections: self.connections.limits(),
            // The connection made below is handed to the server (`fast_path`), not made twice.
            redis_url: None,
            interceptors: InterceptorConfig {
                auth: Some(self.auth.config()?),
                rate_limit: RateLimitConfig {
                    tokens_per_second: self.rate_limit_per_second,
                    burst: self.rate_limit_burst,
                },
                anonymous_rate_limit: AnonymousRateLimitConfig {
                    per_client: RateLimitConfig {
                        tokens_per_second: self.anonymous_client_rate_limit_per_second,
                        burst: self.anonymous_client_rate_limit_burst,
                    },
                    per_tenant: RateLimitConfig {
                        tokens_per_second: self.anonymous_tenant_rate_limit_per_second,
                        burst: self.anonymous_tenant_rate_limit_burst,
                    },
                    trusted_proxies: self.trusted_proxies.clone(),
                },
                rate_limit_sync: self.rate_limit_sync(),
                max_in_flight: self.max_in_flight,
                default_timeout: None,
                idempotency: IdempotencyConfig {
                    retention: Duration::from_secs(self.idempotency_retention_hours * 3600),
                    ..IdempotencyConfig::default()
                },
            },
        })
    }
}

/// What every module of the process shares: the store, Redis (when configured), the event bus
/// (Redis Streams with Redis, in process without), the tenant clocks.
async fn shared_parts(config: &ServeConfig, grace: Duration) -> anyhow::Result<Shared> {
    let topology = &config.topology;
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
        Some(redis) => {
            let bus = events::RedisBus::new(redis.clone(), degraded.clone());
            warn_if_not_durable(&bus).await;
            Arc::new(bus)
        }
        None => Arc::new(events::MemoryBus::new()),
    };
    Ok(Shared {
        store: store.clone(),
        redis: redis.clone(),
        degraded: degraded.clone(),
        near_cache: config.near_cache(),
        bus: bus.clone(),
        clocks: Clocks::new(store.clone()),
        instance: topology.instance(),
        drain: grace,
        repair_after: Duration::from_secs(config.event_repair_after_seconds.max(1)),
    })
}

/// The modules `--services` names, and how they reach each other: loyalty in process or over
/// gRPC, the PSP in process or over gRPC.
async fn build_modules(
    config: &ServeConfig,
    shared: &Shared,
    callees: &Callees,
) -> anyhow::Result<Vec<Box<dyn ServiceModule>>> {
    let topology = &config.topology;
    let psp = psp(topology, shared, callees).await?;
    let mut modules: Vec<Box<dyn ServiceModule>> = Vec::new();
    let mut loyalty_in_process = None;
    if topology.runs(ServiceName::Loyalty) {
        let module = loyalty::LoyaltyModule::new(&config.loyalty, shared);
        loyalty_in_process = Some(module.engine());
        modules.push(Box::new(module));
    }
    if topology.runs(ServiceName::Checkout) {
        let loyalty_port: Arc<dyn checkout::LoyaltyPort> =
            match (&loyalty_in_process, &topology.loyalty_url) {
                (Some(engine), _) => Arc::new(commerce::LoyaltyForCheckout(engine.clone())),
                (None, Some(url)) => Arc::new(checkout::loyalty_remote::RemoteLoyalty::new(
                    callees.callee("loyalty", url, None, |_| {})?,
                )),
                (None, None) => {
                    unreachable!("checked: checkout without loyalty needs --loyalty-url")
                }
            };
        let psp = psp.clone().context("checkout needs a PSP")?;
        modules.push(Box::new(
            checkout::CheckoutModule::new(&config.checkout, shared, loyalty_port, psp)
                .map_err(|error| anyhow::anyhow!("checkout: {error}"))?,
        ));
    }
    if topology.runs(ServiceName::Subscriptions) {
        let psp = psp.clone().context("subscriptions needs a PSP")?;
        modules.push(Box::new(subscriptions::SubscriptionsModule::new(
            &config.subscriptions,
            shared,
            psp,
        )));
    }
    Ok(modules)
}

/// How this process builds its callees: its identity (every call signed with it), the scopes
/// each RPC demands, the admin registry their metrics go to, and the call policy.
struct Callees {
    identity: Option<Arc<platform::identity::ServiceIdentity>>,
    scopes: Scopes,
    metrics: platform::interceptors::Metrics,
    timeout: Duration,
    hedge_after: Option<Duration>,
    /// Every callee built, so readiness waits for each to answer.
    built: std::sync::Mutex<Vec<platform::outbound::Callee>>,
}

impl Callees {
    /// The callee `name` at `target`, its calls signed for `tenant` (the served call's tenant
    /// when `None`), with the process's call policy as `adjust` changes it.
    fn callee(
        &self,
        name: &str,
        target: &str,
        tenant: Option<&'static str>,
        adjust: impl FnOnce(&mut platform::outbound::CalleeConfig),
    ) -> anyhow::Result<platform::outbound::Callee> {
        let mut config = platform::outbound::CalleeConfig::new(name, target);
        config.policy.timeout = self.timeout;
        config.hedge_after = self.hedge_after;
        adjust(&mut config);
        let callee =
            platform::outbound::Callee::new(config, &commerce_api::DESCRIPTOR_POOL, &self.metrics)?;
        let identity = self
            .identity
            .clone()
            .context("calls to other services need --service-key-file")?;
        let callee = callee.with_metadata_hook(signed_by(identity, self.scopes.clone(), tenant));
        self.built
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(callee.clone());
        Ok(callee)
    }

    /// A readiness gate per callee: its health check answers SERVING.
    fn gates(&self) -> Vec<platform::ReadinessGate> {
        let built = self
            .built
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        built
            .into_iter()
            .map(|callee| {
                platform::ReadinessGate::new(format!("callee {}", callee.name()), move || {
                    let callee = callee.clone();
                    async move { callee_serving(&callee).await }
                })
            })
            .collect()
    }
}

/// Whether a callee's health check answers SERVING.
async fn callee_serving(callee: &platform::outbound::Callee) -> Result<(), String> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let context = platform::outbound::CallContext {
        tenant: Some(PLATFORM_TENANT.to_owned()),
        ..platform::outbound::CallContext::default()
    }
    .with_deadline(std::time::Instant::now() + Duration::from_secs(1));
    let response = callee
        .unary(
            &context,
            "/grpc.health.v1.Health/Check",
            HealthCheckRequest::default(),
            None,
            |channel, request| async move { HealthClient::new(channel).check(request).await },
        )
        .await
        .map_err(|error| error.to_string())?;
    match response.into_inner().status() {
        ServingStatus::Serving => Ok(()),
        status => Err(format!("{} reports {status:?}", callee.name())),
    }
}

/// Readiness of what the process itself depends on: its store answers a read, and Redis (when
/// configured) a PING.
fn own_gates(
    store: &Arc<dyn store::Store>,
    redis: &Option<fastpath::Redis>,
) -> Vec<platform::ReadinessGate> {
    let store = store.clone();
    let mut gates = vec![platform::ReadinessGate::new("store", move || {
        let store = store.clone();
        async move {
            store
                .load(&store::AggregateKey::new("_system", "readiness", "probe"))
                .await
                .map(drop)
                .map_err(|error| error.to_string())
        }
    })];
    if let Some(redis) = redis.clone() {
        gates.push(platform::ReadinessGate::new("redis", move || {
            let mut redis = redis.clone();
            async move {
                redis::cmd("PING")
                    .query_async::<String>(&mut redis)
                    .await
                    .map(drop)
                    .map_err(|error| error.to_string())
            }
        }));
    }
    gates
}

/// The PSP the process charges through: the PSP process (`--psp-url`), or the simulator beside
/// this process's store; none when no module of the process charges.
async fn psp(
    topology: &TopologyArgs,
    shared: &Shared,
    callees: &Callees,
) -> anyhow::Result<Option<Arc<dyn payments::PaymentProvider>>> {
    if !topology.runs(ServiceName::Checkout) && !topology.runs(ServiceName::Subscriptions) {
        return Ok(None);
    }
    match &topology.psp_url {
        Some(url) => {
            // One attempt per call, as long as the charging services' own PSP policy allows:
            // that policy decides retries, by what the port promises (same key, or look the
            // outcome up).
            let callee = callees.callee("psp", url, Some(PLATFORM_TENANT), |config| {
                config.policy.max_attempts = 1;
                config.policy.timeout = Duration::from_secs(30);
            })?;
            Ok(Some(Arc::new(payments::RemotePsp::new(callee))))
        }
        None => {
            // The simulator (its token grammar is in the `payments` crate) keeps its state in the
            // store it runs beside; a real PSP adapter implements the same port.
            let simulator = payments::PspSimulator::durable(shared.store.clone())
                .await
                .context("loading the PSP simulator's state")?;
            Ok(Some(Arc::new(simulator)))
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

/// The bus needs a Redis that keeps what it acknowledged; say so loudly when it does not.
async fn warn_if_not_durable(bus: &events::RedisBus) {
    match bus.persistence().await {
        Ok(persistence) if persistence.append_only => {}
        Ok(_) => eprintln!(
            "commerce: WARNING Redis runs without appendonly: if it restarts, events not yet \
             consumed and carts are lost. The repair sweep publishes lost paid-order and refund \
             events again; carts are gone. Run Redis with `appendonly yes` (see docs/operations.md)."
        ),
        Err(error) => eprintln!(
            "commerce: WARNING could not read Redis persistence settings ({error}); make sure it \
             runs with `appendonly yes` (see docs/operations.md)"
        ),
    }
}

fn print_banner(
    addr: SocketAddr,
    admin: Option<SocketAddr>,
    store: &storage::StoreArgs,
    modules: &[Box<dyn ServiceModule>],
) {
    let url = format!("http://{addr}");
    println!("commerce: listening on {url}");
    println!(
        "  protocols: gRPC (HTTP/2 cleartext), gRPC-web and Connect (HTTP/1.1 and HTTP/2) on this one port"
    );
    if let Some(admin) = admin {
        println!("  admin:     http://{admin}/metrics (Prometheus), http://{admin}/healthz");
    }
    println!("  state:     {}", store.describe());
    let names: Vec<&str> = modules.iter().map(|module| module.name()).collect();
    println!("  services:  {}", names.join(", "));
    println!(
        "  auth:      JWT bearer; dev token: TOKEN=$(target/release/commerce token --tenant <tenant>)"
    );
    println!("  try:");
    println!(
        "    eval \"$(target/release/commerce demo --server {url})\"   # seeds tenant \"quickstart\", prints the next calls"
    );
    println!("    scripts/buf curl --http2-prior-knowledge {url}/grpc.health.v1.Health/Check");
    println!("    scripts/buf curl --http2-prior-knowledge --list-methods {url}");
    println!(
        "    curl -s -H 'commerce-tenant: quickstart' -H 'content-type: application/json' -d '{{}}' {url}/commerce.checkout.v1.MenuService/ListLocations"
    );
}
