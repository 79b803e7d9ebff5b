//! The server: every registered tonic service on one port, reachable over gRPC (HTTP/2), gRPC-web
//! (HTTP/1.1 and 2) and Connect (HTTP/1.1 and 2), with health, reflection, CORS and graceful
//! shutdown. The protocol stack, outermost first: CORS → Connect → gRPC-web → tonic routes.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use http::{Request, Response};
use prost_reflect::DescriptorPool;
use tokio::net::TcpListener;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::{Routes, RoutesBuilder};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower::util::Either;
use tower::{ServiceBuilder, ServiceExt as _};

use crate::CorsConfig;
use crate::admin;
use crate::connection;
use crate::drain::{self, DrainBudget, DrainUnread};
use crate::interceptors::{self, ClientAddress, GrpcService, InterceptorConfig, Metrics};
use crate::listener::{ConnectionLimits, Listener};

/// Settings of the API port.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on; port 0 picks a free port (see [`BoundServer::local_addr`]).
    pub listen_addr: SocketAddr,
    /// Browser origins allowed by CORS.
    pub cors: CorsConfig,
    /// After shutdown is asked for, how long health answers NOT_SERVING while the server still
    /// accepts and serves, so probes and load balancers take it out before it closes its listener.
    pub shutdown_delay: Duration,
    /// How long in-flight unary calls may run once the server drains (after `shutdown_delay`).
    pub shutdown_grace: Duration,
    /// Largest Connect message, compressed or not.
    pub max_message_bytes: usize,
    /// The interceptor stack (auth, limits, deadlines, validation).
    pub interceptors: InterceptorConfig,
    /// Address of the admin port (`/metrics`, `/healthz`); `None` serves no admin port.
    pub admin_addr: Option<SocketAddr>,
    /// Redis for the fast path (`redis://host:port/db`, or `redis+cluster://host:port,…` for a
    /// Redis Cluster); `None` keeps everything in process.
    pub redis_url: Option<String>,
    /// Connection caps and timeouts of both ports (slow or idle clients, descriptor exhaustion).
    pub connections: ConnectionLimits,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            cors: CorsConfig::default(),
            // Embedders and tests stop at once; `commerce serve` defaults to a few seconds.
            shutdown_delay: Duration::ZERO,
            shutdown_grace: Duration::from_secs(10),
            max_message_bytes: 4 * 1024 * 1024,
            interceptors: InterceptorConfig::default(),
            admin_addr: None,
            redis_url: None,
            connections: ConnectionLimits::default(),
        }
    }
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A descriptor set could not be decoded.
    #[error("invalid descriptor set: {0}")]
    Descriptors(#[from] prost_reflect::DescriptorError),
    /// Reflection could not be built from the descriptor sets.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// Binding or accepting failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    /// Redis is configured but could not be reached at start-up.
    #[error("redis: {0}")]
    Redis(String),
    /// The store could not be opened.
    #[error("store: {0}")]
    Store(String),
    /// The authentication settings are unusable.
    #[error("authentication: {0}")]
    Auth(#[from] crate::interceptors::AuthConfigError),
}

/// Collects services before binding.
pub struct Server {
    config: ServerConfig,
    store: Option<Arc<dyn store::Store>>,
    degraded: fastpath::Degraded,
    redis: Option<fastpath::Redis>,
    routes: RoutesBuilder,
    descriptor_sets: Vec<&'static [u8]>,
    service_names: Vec<&'static str>,
    metrics: Metrics,
    gates: Vec<ReadinessGate>,
}

/// Something that must answer before the server reports SERVING (its store, Redis, a callee):
/// a name for the log and a check, `Ok` when it answers.
#[derive(Clone)]
pub struct ReadinessGate {
    name: String,
    check: Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>,
}

impl ReadinessGate {
    /// A gate named `name` (`loyalty at http://…`) passed when `check` answers `Ok`.
    pub fn new<F, Fut>(name: impl Into<String>, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        ReadinessGate {
            name: name.into(),
            check: Arc::new(move || Box::pin(check())),
        }
    }
}

impl Server {
    /// A server with no services yet.
    pub fn new(config: ServerConfig) -> Self {
        Server {
            config,
            store: None,
            degraded: fastpath::Degraded::default(),
            redis: None,
            routes: Routes::builder(),
            descriptor_sets: Vec::new(),
            service_names: Vec::new(),
            metrics: Metrics::default(),
            gates: Vec::new(),
        }
    }

    /// Health reports NOT_SERVING until `gate` (and every other gate) has answered once, so a
    /// readiness probe keeps traffic away until what the services need is reachable.
    pub fn ready_when(mut self, gate: ReadinessGate) -> Self {
        self.gates.push(gate);
        self
    }

    /// Exports `metrics` on the admin port (instead of a registry of its own), so what the
    /// process's outbound callees count is scraped with its RPC metrics.
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Registers a tonic service and the encoded descriptor set that describes it (used for
    /// reflection and Connect JSON). The same set may be passed for several services.
    pub fn add_service<S>(mut self, service: S, descriptor_set: &'static [u8]) -> Self
    where
        S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.routes.add_service(service);
        self.service_names.push(S::NAME);
        if !self.descriptor_sets.contains(&descriptor_set) {
            self.descriptor_sets.push(descriptor_set);
        }
        self
    }

    /// The store idempotent outcomes are recorded in — the services' own, so a handler's commit
    /// and its idempotency record are one atomic write. Without one, records live in memory
    /// (tests and stateless demos only: a restart forgets them).
    pub fn store(mut self, store: Arc<dyn store::Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Uses a Redis connection (and health flag) the process already has — shared with its other
    /// Redis users, such as the event bus — instead of connecting to `redis_url`; `/healthz` then
    /// reports degraded when any of them fails.
    pub fn fast_path(
        mut self,
        redis: Option<fastpath::Redis>,
        degraded: fastpath::Degraded,
    ) -> Self {
        self.redis = redis;
        self.degraded = degraded;
        self
    }

    /// Binds the listener and builds the protocol stack; health reports every service SERVING.
    pub async fn bind(mut self) -> Result<BoundServer, ServerError> {
        let (health, health_service) = tonic_health::server::health_reporter();
        let mut reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        let mut pool = DescriptorPool::new();
        pool.decode_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)?;
        pool.decode_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)?;
        pool.decode_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)?;
        for set in &self.descriptor_sets {
            reflection = reflection.register_encoded_file_descriptor_set(set);
            pool.decode_file_descriptor_set(*set)?;
        }
        self.routes
            .add_service(health_service)
            .add_service(reflection.build_v1()?)
            .add_service(reflection_v1alpha(&self.descriptor_sets)?);
        // Gates that answer at once leave the server SERVING from its first call; the others
        // are waited for in the background, NOT_SERVING until they answer.
        let mut closed = Vec::new();
        for gate in std::mem::take(&mut self.gates) {
            match tokio::time::timeout(Duration::from_secs(1), (gate.check)()).await {
                Ok(Ok(())) => {}
                _ => closed.push(gate),
            }
        }
        let ready = if closed.is_empty() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        health.set_service_status("", ready).await;
        for name in &self.service_names {
            health.set_service_status(*name, ready).await;
        }
        if !closed.is_empty() {
            tokio::spawn(open_gates(
                closed,
                health.clone(),
                self.service_names.clone(),
            ));
        }

        let connect = connect::ConnectLayer::new(connect_config(&pool, &self.config));
        let metrics = self.metrics.clone();
        let degraded = self.degraded.clone();
        let redis = match (self.redis.take(), &self.config.redis_url) {
            (Some(redis), _) => Some(redis),
            (None, Some(url)) => Some(
                fastpath::connect(url)
                    .await
                    .map_err(|err| ServerError::Redis(err.to_string()))?,
            ),
            (None, None) => None,
        };
        let store = match self.store.take() {
            Some(store) => store,
            None => Arc::new(
                store::EmbeddedStore::in_memory()
                    .map_err(|error| ServerError::Store(error.to_string()))?,
            ),
        };
        let purge = tokio::spawn(purge_expired_idempotency(store.clone()));
        let (drain_streams, draining) = tokio::sync::watch::channel(false);
        let grpc = interceptors::stack(
            self.routes.routes(),
            &pool,
            &self.config.interceptors,
            metrics.clone(),
            self.config.max_message_bytes,
            interceptors::StackState {
                redis,
                degraded: degraded.clone(),
                store,
                draining,
            },
        )?;
        let stack = ServiceBuilder::new()
            .layer(tower::util::option_layer(self.config.cors.layer()))
            // Noted before the translations below make every call gRPC (spans name it).
            .map_request(note_wire_protocol as fn(_) -> _)
            .layer(connect)
            .layer(tonic_web::GrpcWebLayer::new())
            .service(grpc);

        let listener = TcpListener::bind(self.config.listen_addr).await?;
        let local_addr = listener.local_addr()?;
        let admin = match self.config.admin_addr {
            Some(addr) => Some(TcpListener::bind(addr).await?),
            None => None,
        };
        Ok(BoundServer {
            listener,
            local_addr,
            admin,
            metrics,
            degraded,
            stack,
            health,
            service_names: self.service_names,
            config: self.config,
            purge,
            drain_streams,
        })
    }
}

/// Checks every gate until all have answered, then reports every service SERVING; says once per
/// gate what it is waiting for.
async fn open_gates(gates: Vec<ReadinessGate>, health: HealthReporter, names: Vec<&'static str>) {
    let mut waiting: Vec<(ReadinessGate, bool)> =
        gates.into_iter().map(|gate| (gate, false)).collect();
    while !waiting.is_empty() {
        let mut still = Vec::new();
        for (gate, said) in waiting {
            match (gate.check)().await {
                Ok(()) => tracing::info!(gate = %gate.name, "readiness: reachable"),
                Err(error) => {
                    if !said {
                        tracing::warn!(gate = %gate.name, %error, "readiness: waiting (NOT_SERVING until it answers)");
                    }
                    still.push((gate, true));
                }
            }
        }
        waiting = still;
        if !waiting.is_empty() {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    health.set_service_status("", ServingStatus::Serving).await;
    for name in names {
        health
            .set_service_status(name, ServingStatus::Serving)
            .await;
    }
    tracing::info!("readiness: SERVING");
}

/// The Connect layer's settings: the message limit, and HTTP caching of GET answers as each
/// method's contract declares it.
fn connect_config(pool: &DescriptorPool, config: &ServerConfig) -> connect::ConnectConfig {
    let policies = interceptors::Policies::from_pool(pool);
    let connect = connect::ConnectConfig::new(pool)
        .max_message_bytes(config.max_message_bytes)
        // A GET answer depends on the tenant (header or token) besides its URL; CORS adds
        // `Origin` itself when it is on.
        .vary([
            http::HeaderName::from_static(interceptors::TENANT_HEADER),
            http::header::AUTHORIZATION,
        ]);
    policies
        .iter()
        .filter_map(|(path, policy)| Some((path, policy.cache?)))
        .fold(connect, |connect, (path, cache)| {
            connect.get_caching(
                path,
                connect::GetCaching {
                    max_age: cache.max_age,
                    shared: cache.shared,
                },
            )
        })
}

/// Drops expired idempotency records every few minutes (MongoDB's TTL index does it too).
async fn purge_expired_idempotency(store: Arc<dyn store::Store>) {
    let mut every = tokio::time::interval(Duration::from_secs(300));
    loop {
        every.tick().await;
        if let Err(error) = store.purge_expired_idempotency(store::unix_now()).await {
            tracing::warn!(%error, "purging expired idempotency records failed");
        }
    }
}

fn reflection_v1alpha(
    descriptor_sets: &[&'static [u8]],
) -> Result<
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
    ServerError,
> {
    let mut builder = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
    for set in descriptor_sets {
        builder = builder.register_encoded_file_descriptor_set(set);
    }
    Ok(builder.build_v1alpha()?)
}

/// The translations in front of the interceptor stack, after the wire protocol is noted.
type Translated = tower::util::MapRequest<
    connect::Connect<tonic_web::GrpcWebService<GrpcService>>,
    fn(Request<drain::ReturnedBody>) -> Request<drain::ReturnedBody>,
>;

type Stack = Either<tower_http::cors::Cors<Translated>, Translated>;

/// Notes the protocol a request arrived in (see [`interceptors::WireProtocol`]).
fn note_wire_protocol(mut request: Request<drain::ReturnedBody>) -> Request<drain::ReturnedBody> {
    let protocol = interceptors::WireProtocol::of(&request);
    request.extensions_mut().insert(protocol);
    request
}

/// A server bound to its port, ready to serve.
pub struct BoundServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    admin: Option<TcpListener>,
    metrics: Metrics,
    degraded: fastpath::Degraded,
    stack: Stack,
    health: HealthReporter,
    service_names: Vec<&'static str>,
    config: ServerConfig,
    purge: tokio::task::JoinHandle<()>,
    /// Ends open server streams when set.
    drain_streams: tokio::sync::watch::Sender<bool>,
}

impl BoundServer {
    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The admin port's address, when one is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
            .as_ref()
            .and_then(|admin| admin.local_addr().ok())
    }

    /// Serves until `shutdown` completes, then shuts down in three steps:
    ///
    /// 1. health flips to NOT_SERVING, while the server keeps accepting and serving for
    ///    `shutdown_delay`, so probes and load balancers see it and stop sending calls;
    /// 2. the listener closes, open server streams end at once with UNAVAILABLE and a retry hint,
    ///    and every connection is told to finish (HTTP/2 GOAWAY);
    /// 3. in-flight unary calls get up to `shutdown_grace` to complete, then the server returns.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let BoundServer {
            listener,
            admin,
            metrics,
            degraded,
            stack,
            health,
            service_names,
            config,
            purge,
            drain_streams,
            ..
        } = self;
        let limits = config.connections;
        let admin_task = admin.map(|listener| {
            tokio::spawn(admin::serve(
                Listener::new(listener, &limits, "admin"),
                limits,
                metrics,
                degraded,
            ))
        });
        let builder = Arc::new(connection::builder(&limits));
        let drain_budget = DrainBudget::for_messages_of(config.max_message_bytes);
        let mut listener = Listener::new(listener, &limits, "api");
        // Flipped to true when shutdown begins: every connection then finishes gracefully.
        let (stop_connections, connections_stop) = tokio::sync::watch::channel(false);
        // Owning the connection tasks lets shutdown end the ones that outlive the grace period.
        let mut connections = tokio::task::JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        // Set once shutdown is asked for: the end of the NOT_SERVING window.
        let mut closing_at: Option<tokio::time::Instant> = None;
        loop {
            let (stream, peer, slot) = tokio::select! {
                accepted = listener.accept() => accepted,
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
                () = &mut shutdown, if closing_at.is_none() => {
                    announce_not_serving(&health, &service_names).await;
                    closing_at = Some(tokio::time::Instant::now() + config.shutdown_delay);
                    continue;
                }
                () = sleep_until_set(closing_at) => break,
            };
            let _ = stream.set_nodelay(true);
            // Every request learns the peer it came from (per-address limits, logs).
            let service =
                stack
                    .clone()
                    .map_request(move |mut request: Request<drain::ReturnedBody>| {
                        request.extensions_mut().insert(ClientAddress(peer));
                        request
                    });
            // HTTP/1 clients still sending when an early answer comes must get to read it.
            let service = DrainUnread::new(service, drain_budget);
            let (builder, stop) = (builder.clone(), connections_stop.clone());
            connections.spawn(async move {
                // The slot is held (counted against the caps) until the connection ends.
                let _slot = slot;
                connection::serve(builder, stream, service, limits, stop).await;
            });
        }
        drop(listener);
        let _ = drain_streams.send(true);
        let _ = stop_connections.send(true);
        let _ = tokio::time::timeout(config.shutdown_grace, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        connections.abort_all();
        while connections.join_next().await.is_some() {}
        if let Some(admin_task) = admin_task {
            admin_task.abort();
        }
        purge.abort();
        Ok(())
    }
}

/// Health says NOT_SERVING for the server and each of its services.
async fn announce_not_serving(health: &HealthReporter, service_names: &[&'static str]) {
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    for name in service_names {
        health
            .set_service_status(*name, ServingStatus::NotServing)
            .await;
    }
}

/// Completes at `at`; never when unset.
async fn sleep_until_set(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
