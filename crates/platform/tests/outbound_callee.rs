//! The outbound call stack for gRPC callees (`platform::outbound::Callee`) against real tonic
//! replicas on loopback: balancing, a replica killed mid-run, DNS targets, per-endpoint breakers,
//! contract-driven retries, hedged reads and their cancellation, deadlines sent on as
//! `grpc-timeout`, propagation of request id / trace context, and the metrics on the admin port.

mod common;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use platform::interceptors::Metrics;
use platform::outbound::{
    BreakerConfig, BreakerState, CallContext, CallError, Callee, CalleeConfig, OutboundCall,
};
use platform::{Server, ServerConfig};
use prost_reflect::DescriptorPool;
use protocol_testkit::pb::echo_service_client::EchoServiceClient;
use protocol_testkit::pb::echo_service_server::{EchoService, EchoServiceServer};
use protocol_testkit::pb::*;
use tokio::net::TcpListener;
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_types::{ErrorDetails, StatusExt as _};
use tower::ServiceExt as _;

const ECHO: &str = "/protocol.test.v1.EchoService/Echo";
const SLEEP: &str = "/protocol.test.v1.EchoService/Sleep";
const CHARGE: &str = "/protocol.test.v1.EchoService/Charge";
const FAIL: &str = "/protocol.test.v1.EchoService/Fail";

// ---------------------------------------------------------------------------------------------
// A replica of the test service whose behaviour a test scripts, and which records what it saw.

/// One request as the replica received it.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: http::HeaderMap,
    at: Instant,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// The `grpc-timeout` received, parsed.
    fn grpc_timeout(&self) -> Option<Duration> {
        let value = self.header("grpc-timeout")?;
        let (digits, unit) = value.split_at(value.len() - 1);
        let amount: u64 = digits.parse().ok()?;
        Some(match unit {
            "H" => Duration::from_secs(amount * 3600),
            "M" => Duration::from_secs(amount * 60),
            "S" => Duration::from_secs(amount),
            "m" => Duration::from_millis(amount),
            "u" => Duration::from_micros(amount),
            "n" => Duration::from_nanos(amount),
            _ => return None,
        })
    }
}

#[derive(Debug, Default)]
struct ReplicaState {
    /// Every handler sleeps this long first.
    delay_ms: AtomicU64,
    /// The next handled calls fail with these, in order.
    script: Mutex<VecDeque<Status>>,
    /// Every handled call fails with this code (after the script).
    always: Mutex<Option<Code>>,
    seen: Mutex<Vec<Seen>>,
    completed: AtomicU32,
    /// Handlers dropped before they finished: the caller cancelled.
    cancelled: AtomicU32,
}

impl ReplicaState {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn requests(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn fail_next(&self, statuses: impl IntoIterator<Item = Status>) {
        self.script.lock().unwrap().extend(statuses);
    }

    fn fail_always(&self, code: Code) {
        *self.always.lock().unwrap() = Some(code);
    }

    fn set_delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }
}

/// Counts a handler that is dropped before it finishes.
struct CancelGuard {
    state: Arc<ReplicaState>,
    finished: bool,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if self.finished {
            self.state.completed.fetch_add(1, Ordering::SeqCst);
        } else {
            self.state.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[derive(Clone)]
struct ReplicaService {
    name: String,
    state: Arc<ReplicaState>,
    kit: protocol_testkit::Echo,
}

impl ReplicaService {
    /// The scripted behaviour every handler shares: wait, then fail or succeed.
    async fn behave(&self) -> Result<(), Status> {
        let mut guard = CancelGuard {
            state: self.state.clone(),
            finished: false,
        };
        let delay = self.state.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        guard.finished = true;
        if let Some(status) = self.state.script.lock().unwrap().pop_front() {
            return Err(status);
        }
        if let Some(code) = *self.state.always.lock().unwrap() {
            return Err(Status::new(code, format!("{} fails", self.name)));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl EchoService for ReplicaService {
    async fn echo(&self, request: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        self.behave().await?;
        let mut response = request.into_inner();
        response.text = self.name.clone();
        Ok(Response::new(EchoResponse {
            text: response.text,
            ..EchoResponse::default()
        }))
    }

    async fn echo_legacy(
        &self,
        request: Request<EchoRequest>,
    ) -> Result<Response<EchoResponse>, Status> {
        self.echo(request).await
    }

    async fn fail(&self, _: Request<FailRequest>) -> Result<Response<FailResponse>, Status> {
        // Fails only as scripted.
        self.behave().await?;
        Ok(Response::new(FailResponse {}))
    }

    async fn sleep(
        &self,
        request: Request<SleepRequest>,
    ) -> Result<Response<SleepResponse>, Status> {
        self.behave().await?;
        self.kit.sleep(request).await
    }

    type CountStream = <protocol_testkit::Echo as EchoService>::CountStream;

    async fn count(
        &self,
        request: Request<CountRequest>,
    ) -> Result<Response<Self::CountStream>, Status> {
        self.kit.count(request).await
    }

    async fn sum(
        &self,
        request: Request<Streaming<SumRequest>>,
    ) -> Result<Response<SumResponse>, Status> {
        self.kit.sum(request).await
    }

    async fn charge(
        &self,
        request: Request<ChargeRequest>,
    ) -> Result<Response<ChargeResponse>, Status> {
        self.behave().await?;
        self.kit.charge(request).await
    }

    type ChatStream = <protocol_testkit::Echo as EchoService>::ChatStream;

    async fn chat(
        &self,
        request: Request<Streaming<ChatRequest>>,
    ) -> Result<Response<Self::ChatStream>, Status> {
        self.kit.chat(request).await
    }
}

/// A replica serving on its own port. `kill` is the SIGKILL equivalent: the listener and every
/// open connection are dropped at once, in-flight handlers included.
struct Replica {
    addr: SocketAddr,
    state: Arc<ReplicaState>,
    task: tokio::task::JoinHandle<()>,
}

impl Replica {
    async fn start(name: &str) -> Replica {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ReplicaState::default());
        let service = ReplicaService {
            name: name.to_owned(),
            state: state.clone(),
            kit: protocol_testkit::Echo::default(),
        };
        let routes = tonic::service::Routes::new(EchoServiceServer::new(service));
        let recorder = state.clone();
        let task = tokio::spawn(async move {
            // Owned here, so aborting this task drops every connection with it.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let recorder = recorder.clone();
                let service = routes.clone().map_request(
                    move |request: http::Request<hyper::body::Incoming>| {
                        recorder.seen.lock().unwrap().push(Seen {
                            path: request.uri().path().to_owned(),
                            headers: request.headers().clone(),
                            at: Instant::now(),
                        });
                        request
                    },
                );
                connections.spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
                        .await;
                });
            }
        });
        Replica { addr, state, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn kill(&self) {
        self.task.abort();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// The caller side.

fn testkit_pool() -> DescriptorPool {
    DescriptorPool::decode(protocol_testkit::FILE_DESCRIPTOR_SET).unwrap()
}

/// Fast settings for tests: 1 s per attempt, 3 attempts, 5–20 ms back-off, breakers opening
/// after 3 failures for 30 s (no half-open during a test unless it asks).
fn config(target: &str) -> CalleeConfig {
    let mut config = CalleeConfig::new("echo", target);
    config.policy.timeout = Duration::from_secs(1);
    config.policy.max_attempts = 3;
    config.policy.backoff_base = Duration::from_millis(5);
    config.policy.backoff_max = Duration::from_millis(20);
    config.policy.breaker = BreakerConfig {
        failure_threshold: 3,
        open_for: Duration::from_secs(30),
    };
    config
}

fn callee(config: CalleeConfig, metrics: &Metrics) -> Callee {
    Callee::new(config, &testkit_pool(), metrics).unwrap()
}

fn targets(replicas: &[&Replica]) -> String {
    replicas
        .iter()
        .map(|replica| replica.url())
        .collect::<Vec<_>>()
        .join(",")
}

async fn echo(callee: &Callee, context: &CallContext) -> Result<String, CallError> {
    let message = EchoRequest {
        text: "hello".to_owned(),
        ..EchoRequest::default()
    };
    let response = callee
        .unary(
            context,
            ECHO,
            message,
            None,
            |channel, request| async move { EchoServiceClient::new(channel).echo(request).await },
        )
        .await?;
    Ok(response.into_inner().text)
}

async fn charge(callee: &Callee, key: Option<&str>) -> Result<Response<ChargeResponse>, CallError> {
    let message = ChargeRequest {
        account: "acct-1".to_owned(),
        amount: 250,
        ..ChargeRequest::default()
    };
    callee
        .unary(
            &CallContext::default(),
            CHARGE,
            message,
            key,
            |channel, request| async move { EchoServiceClient::new(channel).charge(request).await },
        )
        .await
}

fn total_requests(replicas: &[&Replica]) -> usize {
    replicas
        .iter()
        .map(|replica| replica.state.requests())
        .sum()
}

fn unavailable() -> Status {
    Status::unavailable("replica going away")
}

// ---------------------------------------------------------------------------------------------
// Balancing and discovery.

#[tokio::test]
async fn calls_are_spread_over_three_replicas() {
    let replicas = [
        Replica::start("a").await,
        Replica::start("b").await,
        Replica::start("c").await,
    ];
    let all: Vec<&Replica> = replicas.iter().collect();
    let callee = callee(config(&targets(&all)), &Metrics::default());
    let context = CallContext::default();
    // Concurrent callers, so in-flight counts differ and p2c has something to compare.
    let calls = (0..6).map(|_| {
        let (callee, context) = (callee.clone(), context.clone());
        tokio::spawn(async move {
            for _ in 0..20 {
                echo(&callee, &context).await.unwrap();
            }
        })
    });
    for call in calls.collect::<Vec<_>>() {
        call.await.unwrap();
    }
    let counts: Vec<usize> = replicas.iter().map(|r| r.state.requests()).collect();
    assert_eq!(counts.iter().sum::<usize>(), 120);
    assert!(
        counts.iter().all(|count| *count >= 15),
        "every replica takes a share: {counts:?}"
    );
}

#[tokio::test]
async fn a_killed_replica_moves_calls_to_the_others_without_a_failed_read() {
    let replicas = [
        Replica::start("a").await,
        Replica::start("b").await,
        Replica::start("c").await,
    ];
    for replica in &replicas {
        // Calls stay in flight long enough for the kill to catch some of them.
        replica.state.set_delay(Duration::from_millis(20));
    }
    let all: Vec<&Replica> = replicas.iter().collect();
    let metrics = Metrics::default();
    let callee = callee(config(&targets(&all)), &metrics);
    let failures = Arc::new(AtomicU32::new(0));
    let calls: Vec<_> = (0..6)
        .map(|_| {
            let (callee, failures) = (callee.clone(), failures.clone());
            tokio::spawn(async move {
                for _ in 0..25 {
                    if let Err(error) = echo(&callee, &CallContext::default()).await {
                        eprintln!("failed call: {error}");
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let killed = &replicas[0];
    let seen_before_kill = killed.state.requests();
    assert!(
        seen_before_kill > 0,
        "the replica took calls before it died"
    );
    killed.kill();
    for call in calls {
        call.await.unwrap();
    }
    assert_eq!(failures.load(Ordering::SeqCst), 0, "no read failed");
    let survivors: usize = replicas[1..].iter().map(|r| r.state.requests()).sum();
    assert!(survivors > 100, "the others took over: {survivors}");
    let status = callee.endpoints();
    let dead = status
        .iter()
        .find(|endpoint| endpoint.address == killed.url())
        .unwrap();
    // Its breaker opened on a failed attempt, which was retried elsewhere.
    assert_eq!(dead.breaker, BreakerState::Open, "{status:?}");
    let retries = metric(
        &metrics.encode(),
        &format!(
            "outbound_retries_total{{callee=\"echo\",method=\"{}\"}}",
            ECHO.trim_start_matches('/')
        ),
    );
    assert!(retries >= 1, "the failed attempts were retried");
}

#[tokio::test]
async fn a_dns_target_resolves_localhost_to_the_replica() {
    let replica = Replica::start("dns").await;
    let target = format!("dns:///localhost:{}", replica.addr.port());
    let callee = callee(config(&target), &Metrics::default());
    assert_eq!(echo(&callee, &CallContext::default()).await.unwrap(), "dns");
    let addresses: Vec<String> = callee
        .endpoints()
        .into_iter()
        .map(|endpoint| endpoint.address)
        .collect();
    assert!(addresses.contains(&replica.url()), "{addresses:?}");
}

#[tokio::test]
async fn a_dns_name_that_does_not_resolve_fails_fast_with_unavailable_naming_the_callee() {
    let target = "dns:///no-such-host.invalid:8080";
    let mut config = config(target);
    config.policy.timeout = Duration::from_millis(500);
    let callee = callee(config, &Metrics::default());
    let started = Instant::now();
    let error = echo(&callee, &CallContext::default()).await.unwrap_err();
    assert!(matches!(error, CallError::Unavailable { .. }), "{error:?}");
    assert!(error.to_string().contains("echo"), "{error}");
    assert!(error.to_string().contains(target), "{error}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

// ---------------------------------------------------------------------------------------------
// Retries only where the contract allows them.

#[tokio::test]
async fn a_key_required_method_without_a_key_is_tried_once_even_on_unavailable() {
    let replicas = [Replica::start("a").await, Replica::start("b").await];
    for replica in &replicas {
        replica.state.fail_next([unavailable()]);
    }
    let all: Vec<&Replica> = replicas.iter().collect();
    let callee = callee(config(&targets(&all)), &Metrics::default());
    // Charge requires an idempotency key; without one a repeat could charge twice.
    let error = charge(&callee, None).await.unwrap_err();
    match &error {
        CallError::Failed { status, .. } => assert_eq!(status.code(), Code::Unavailable),
        other => panic!("expected the callee's UNAVAILABLE, got {other:?}"),
    }
    assert!(error.outcome_unknown());
    assert_eq!(total_requests(&all), 1, "exactly one attempt");
}

#[tokio::test]
async fn a_method_the_contract_does_not_know_is_tried_once() {
    let replica = Replica::start("a").await;
    replica.state.fail_next([unavailable()]);
    // The commerce contract does not describe the test service: no rule, so no repeat.
    let callee = Callee::new(
        config(&replica.url()),
        &commerce_api::DESCRIPTOR_POOL,
        &Metrics::default(),
    )
    .unwrap();
    let error = echo(&callee, &CallContext::default()).await.unwrap_err();
    assert_eq!(error.code(), Code::Unavailable);
    assert_eq!(replica.state.requests(), 1);
}

#[tokio::test]
async fn a_key_required_method_is_retried_with_the_same_key() {
    let replica = Replica::start("a").await;
    replica.state.fail_next([unavailable(), unavailable()]);
    let callee = callee(config(&replica.url()), &Metrics::default());
    let response = charge(&callee, Some("hold-7f3a")).await.unwrap();
    assert_eq!(response.into_inner().amount, 250);
    let seen = replica.state.seen();
    assert_eq!(seen.len(), 3);
    for request in &seen {
        assert_eq!(request.path, CHARGE);
        assert_eq!(request.header("idempotency-key"), Some("hold-7f3a"));
    }
}

#[tokio::test]
async fn a_read_is_retried_on_unavailable() {
    let replica = Replica::start("a").await;
    replica.state.fail_next([unavailable()]);
    let callee = callee(config(&replica.url()), &Metrics::default());
    assert_eq!(echo(&callee, &CallContext::default()).await.unwrap(), "a");
    assert_eq!(replica.state.requests(), 2);
}

#[tokio::test]
async fn a_read_is_not_retried_on_an_answer() {
    let replica = Replica::start("a").await;
    replica
        .state
        .fail_next([Status::failed_precondition("no such thing")]);
    let callee = callee(config(&replica.url()), &Metrics::default());
    let error = echo(&callee, &CallContext::default()).await.unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition);
    assert!(!error.outcome_unknown());
    assert_eq!(replica.state.requests(), 1);
}

#[tokio::test]
async fn resource_exhausted_is_retried_only_with_retry_info_and_after_its_delay() {
    let replica = Replica::start("a").await;
    let callee = callee(config(&replica.url()), &Metrics::default());
    let call = |callee: Callee| async move {
        callee
            .unary(
                &CallContext::default(),
                FAIL,
                FailRequest::default(),
                None,
                |channel, request| async move { EchoServiceClient::new(channel).fail(request).await },
            )
            .await
    };

    replica
        .state
        .fail_next([Status::resource_exhausted("quota spent")]);
    let error = call(callee.clone()).await.unwrap_err();
    assert_eq!(error.code(), Code::ResourceExhausted);
    assert_eq!(replica.state.requests(), 1, "no RetryInfo: final");

    let asked = Duration::from_millis(150);
    replica.state.fail_next([Status::with_error_details(
        Code::ResourceExhausted,
        "rate limited",
        ErrorDetails::with_retry_info(Some(asked)),
    )]);
    call(callee.clone()).await.unwrap();
    let seen = replica.state.seen();
    assert_eq!(seen.len(), 3, "retried once after the RetryInfo delay");
    let gap = seen[2].at - seen[1].at;
    assert!(gap >= asked, "waited {gap:?}, asked {asked:?}");
}

// ---------------------------------------------------------------------------------------------
// Hedging.

#[tokio::test]
async fn a_hedged_read_is_answered_by_the_fast_replica_and_cancelled_on_the_slow_one() {
    let slow = Replica::start("slow").await;
    let fast = Replica::start("fast").await;
    slow.state.set_delay(Duration::from_secs(3));
    let mut config = config(&targets(&[&slow, &fast]));
    config.policy.timeout = Duration::from_secs(5);
    config.hedge_after = Some(Duration::from_millis(100));
    let metrics = Metrics::default();
    let callee = callee(config, &metrics);
    // The balancer picks the first endpoint at random: call until one first attempt went to the
    // slow replica (each call then needs the hedge to finish quickly).
    for _ in 0..30 {
        let started = Instant::now();
        let answer = echo(&callee, &CallContext::default()).await.unwrap();
        assert_eq!(answer, "fast");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the hedge answered"
        );
        if slow.state.requests() > 0 {
            break;
        }
    }
    assert!(
        slow.state.requests() > 0,
        "a first attempt reached the slow replica"
    );
    // The slow replica's handler was dropped: its stream was reset when the hedge won.
    let deadline = Instant::now() + Duration::from_secs(2);
    while slow.state.cancelled.load(Ordering::SeqCst) < slow.state.requests() as u32 {
        assert!(
            Instant::now() < deadline,
            "the slow replica saw no cancellation"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(slow.state.completed.load(Ordering::SeqCst), 0);
    let text = metrics.encode();
    let labels = format!(
        "{{callee=\"echo\",method=\"{}\"}}",
        ECHO.trim_start_matches('/')
    );
    // Every request the slow replica saw was either a first attempt the hedge overtook or a hedge.
    let hedges = metric(&text, &format!("outbound_hedges_total{labels}"));
    assert_eq!(hedges, slow.state.requests() as u64, "{text}");
    assert!(metric(&text, &format!("outbound_hedges_won_total{labels}")) >= 1);
}

/// The value of the series `name{labels}` in a text exposition (0 when absent).
fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_hedge_never_fires_for_a_method_with_side_effects() {
    let replicas = [Replica::start("a").await, Replica::start("b").await];
    for replica in &replicas {
        replica.state.set_delay(Duration::from_millis(300));
    }
    let all: Vec<&Replica> = replicas.iter().collect();
    let mut config = config(&targets(&all));
    config.hedge_after = Some(Duration::from_millis(20));
    let callee = callee(config, &Metrics::default());
    // Sleep is naturally idempotent (retried), but not free of side effects: never hedged.
    callee
        .unary(
            &CallContext::default(),
            SLEEP,
            SleepRequest { millis: 0 },
            None,
            |channel, request| async move { EchoServiceClient::new(channel).sleep(request).await },
        )
        .await
        .unwrap();
    charge(&callee, Some("key-1")).await.unwrap();
    assert_eq!(total_requests(&all), 2, "one request per call");
}

#[tokio::test]
async fn a_hedge_does_not_outlive_the_callers_deadline() {
    let replicas = [Replica::start("a").await, Replica::start("b").await];
    for replica in &replicas {
        replica.state.set_delay(Duration::from_secs(3));
    }
    let all: Vec<&Replica> = replicas.iter().collect();
    let mut config = config(&targets(&all));
    config.hedge_after = Some(Duration::from_millis(50));
    let callee = callee(config, &Metrics::default());
    let context = CallContext::default().with_deadline(Instant::now() + Duration::from_millis(200));
    let started = Instant::now();
    let error = echo(&callee, &context).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        matches!(error, CallError::TimedOut { deadline: true, .. }),
        "{error:?}"
    );
    assert!(elapsed < Duration::from_millis(400), "{elapsed:?}");
    let seen: Vec<Seen> = all.iter().flat_map(|r| r.state.seen()).collect();
    assert_eq!(seen.len(), 2, "the first attempt and its hedge");
    for request in &seen {
        let sent = request.grpc_timeout().expect("grpc-timeout");
        assert!(sent <= Duration::from_millis(200), "{sent:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Deadlines and propagation, through a real platform server as the caller.

/// A service whose `Echo` calls the callee's `Echo` on behalf of the inbound request.
struct Forwarder {
    callee: Callee,
}

#[tonic::async_trait]
impl EchoService for Forwarder {
    async fn echo(&self, request: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        let context = CallContext::from_request(&request);
        let message = request.into_inner();
        let response =
            self.callee
                .unary(
                    &context,
                    ECHO,
                    message,
                    None,
                    |channel, request| async move {
                        EchoServiceClient::new(channel).echo(request).await
                    },
                )
                .await
                .map_err(|error| error.into_status("forwarder.test"))?;
        Ok(Response::new(response.into_inner()))
    }
    async fn echo_legacy(
        &self,
        request: Request<EchoRequest>,
    ) -> Result<Response<EchoResponse>, Status> {
        self.echo(request).await
    }
    async fn fail(&self, _: Request<FailRequest>) -> Result<Response<FailResponse>, Status> {
        Err(Status::unimplemented("forwarder"))
    }
    async fn sleep(&self, _: Request<SleepRequest>) -> Result<Response<SleepResponse>, Status> {
        Err(Status::unimplemented("forwarder"))
    }
    type CountStream = <protocol_testkit::Echo as EchoService>::CountStream;
    async fn count(&self, _: Request<CountRequest>) -> Result<Response<Self::CountStream>, Status> {
        Err(Status::unimplemented("forwarder"))
    }
    async fn sum(
        &self,
        _: Request<Streaming<SumRequest>>,
    ) -> Result<Response<SumResponse>, Status> {
        Err(Status::unimplemented("forwarder"))
    }
    async fn charge(&self, _: Request<ChargeRequest>) -> Result<Response<ChargeResponse>, Status> {
        Err(Status::unimplemented("forwarder"))
    }
    type ChatStream = <protocol_testkit::Echo as EchoService>::ChatStream;
    async fn chat(
        &self,
        _: Request<Streaming<ChatRequest>>,
    ) -> Result<Response<Self::ChatStream>, Status> {
        Err(Status::unimplemented("forwarder"))
    }
}

/// The caller: a platform server (full interceptor stack, open mode) hosting the forwarder, its
/// admin port exporting the metrics the callee counts into.
struct Caller {
    addr: SocketAddr,
    admin: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start_caller(callee: Callee, metrics: Metrics) -> Caller {
    let config = ServerConfig {
        listen_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        admin_addr: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        ..ServerConfig::default()
    };
    let bound = Server::new(config)
        .metrics(metrics)
        .add_service(
            EchoServiceServer::new(Forwarder { callee }),
            protocol_testkit::FILE_DESCRIPTOR_SET,
        )
        .bind()
        .await
        .unwrap();
    let addr = bound.local_addr();
    let admin = bound.admin_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(bound.serve(async {
        let _ = stopped.await;
    }));
    Caller {
        addr,
        admin,
        _stop: stop,
    }
}

/// The service-identity hook: what the lead's signing code will do.
fn service_token(call: &OutboundCall<'_>, metadata: &mut MetadataMap) -> Result<(), Status> {
    assert_eq!(call.callee, "echo");
    metadata.insert("authorization", "Bearer service-token".parse().unwrap());
    Ok(())
}

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

async fn call_forwarder(caller: &Caller, timeout: Duration) -> Result<String, Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", caller.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut request = Request::new(EchoRequest {
        text: "via forwarder".to_owned(),
        ..EchoRequest::default()
    });
    request.set_timeout(timeout);
    let metadata = request.metadata_mut();
    metadata.insert("x-request-id", "req-42".parse().unwrap());
    metadata.insert("traceparent", TRACEPARENT.parse().unwrap());
    metadata.insert("tracestate", "vendor=1".parse().unwrap());
    metadata.insert("authorization", "Bearer end-user-token".parse().unwrap());
    let response = EchoServiceClient::new(channel).echo(request).await?;
    Ok(response.into_inner().text)
}

#[tokio::test]
async fn an_inbound_deadline_of_200ms_is_sent_on_below_200ms_with_request_id_and_trace() {
    let replica = Replica::start("callee").await;
    let mut config = config(&replica.url());
    // The per-attempt timeout is longer: the caller's deadline is what bounds the attempt.
    config.policy.timeout = Duration::from_secs(10);
    let metrics = Metrics::default();
    let callee = callee(config, &metrics).with_metadata_hook(service_token);
    let caller = start_caller(callee, metrics).await;

    let answer = call_forwarder(&caller, Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(answer, "callee");
    let seen = replica.state.seen();
    assert_eq!(seen.len(), 1);
    let request = &seen[0];
    let sent = request
        .grpc_timeout()
        .expect("the callee got a grpc-timeout");
    assert!(
        sent < Duration::from_millis(200) && sent > Duration::from_millis(100),
        "grpc-timeout {sent:?}"
    );
    assert_eq!(request.header("x-request-id"), Some("req-42"));
    assert_eq!(request.header("traceparent"), Some(TRACEPARENT));
    assert_eq!(request.header("tracestate"), Some("vendor=1"));
    // The end user's token stays behind; the service's own identity goes out.
    assert_eq!(
        request.header("authorization"),
        Some("Bearer service-token")
    );
}

#[tokio::test]
async fn an_inbound_deadline_bounds_a_slow_callee_and_the_callee_sees_the_cancellation() {
    let replica = Replica::start("slow").await;
    replica.state.set_delay(Duration::from_secs(5));
    let mut config = config(&replica.url());
    config.policy.timeout = Duration::from_secs(10);
    let metrics = Metrics::default();
    let caller = start_caller(callee(config, &metrics), metrics).await;
    let started = Instant::now();
    let status = call_forwarder(&caller, Duration::from_millis(200))
        .await
        .unwrap_err();
    // The server answers DEADLINE_EXCEEDED at 200 ms; the test client's own tonic channel enforces
    // the same 200 ms and may give up first (CANCELLED, "Timeout expired").
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(600));
    let deadline = Instant::now() + Duration::from_secs(2);
    while replica.state.cancelled.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the callee never saw the cancellation"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(replica.state.requests(), 1, "no retry past the deadline");
}

#[tokio::test]
async fn an_expired_deadline_sends_nothing() {
    let replica = Replica::start("a").await;
    let callee = callee(config(&replica.url()), &Metrics::default());
    let context = CallContext {
        deadline: Some(Instant::now() - Duration::from_millis(1)),
        ..CallContext::default()
    };
    let error = echo(&callee, &context).await.unwrap_err();
    assert!(
        matches!(error, CallError::DeadlineExceeded { .. }),
        "{error:?}"
    );
    assert_eq!(error.code(), Code::DeadlineExceeded);
    assert_eq!(replica.state.requests(), 0);
}

#[tokio::test]
async fn a_retry_whose_back_off_would_cross_the_deadline_is_not_made() {
    let replica = Replica::start("a").await;
    replica.state.fail_next([Status::with_error_details(
        Code::Unavailable,
        "come back later",
        ErrorDetails::with_retry_info(Some(Duration::from_millis(300))),
    )]);
    let callee = callee(config(&replica.url()), &Metrics::default());
    let context = CallContext::default().with_deadline(Instant::now() + Duration::from_millis(200));
    let error = echo(&callee, &context).await.unwrap_err();
    assert_eq!(error.code(), Code::Unavailable);
    assert_eq!(replica.state.requests(), 1);
}

// ---------------------------------------------------------------------------------------------
// Per-endpoint breakers.

#[tokio::test]
async fn a_failing_replica_opens_only_its_own_breaker_and_calls_keep_succeeding() {
    let replicas = [
        Replica::start("a").await,
        Replica::start("b").await,
        Replica::start("c").await,
    ];
    replicas[0].state.fail_always(Code::Unavailable);
    let all: Vec<&Replica> = replicas.iter().collect();
    let callee = callee(config(&targets(&all)), &Metrics::default());
    for _ in 0..40 {
        let answer = echo(&callee, &CallContext::default()).await.unwrap();
        assert_ne!(answer, "a");
    }
    assert_eq!(
        replicas[0].state.requests(),
        3,
        "the failing replica got exactly the failures that opened its breaker"
    );
    for endpoint in callee.endpoints() {
        let expected = if endpoint.address == replicas[0].url() {
            BreakerState::Open
        } else {
            BreakerState::Closed
        };
        assert_eq!(endpoint.breaker, expected, "{endpoint:?}");
    }
}

#[tokio::test]
async fn an_endpoint_that_refuses_connections_opens_its_breaker_on_the_first_refusal() {
    let live = Replica::start("live").await;
    // A port nothing listens on any more.
    let refusing = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = format!("http://{}", refusing.local_addr().unwrap());
    drop(refusing);
    let metrics = Metrics::default();
    let callee = callee(config(&format!("{},{dead}", live.url())), &metrics);
    for _ in 0..20 {
        assert_eq!(
            echo(&callee, &CallContext::default()).await.unwrap(),
            "live"
        );
    }
    let dead_status = callee
        .endpoints()
        .into_iter()
        .find(|endpoint| endpoint.address == dead)
        .unwrap();
    assert_eq!(dead_status.breaker, BreakerState::Open);
    // One refused attempt (then retried on the live replica), not `failure_threshold` of them.
    let retries = metric(
        &metrics.encode(),
        &format!(
            "outbound_retries_total{{callee=\"echo\",method=\"{}\"}}",
            ECHO.trim_start_matches('/')
        ),
    );
    assert_eq!(retries, 1);
}

#[tokio::test]
async fn every_breaker_open_fails_fast_with_unavailable_naming_the_callee_and_sends_nothing() {
    let replicas = [Replica::start("a").await, Replica::start("b").await];
    for replica in &replicas {
        replica.state.fail_always(Code::Internal);
    }
    let all: Vec<&Replica> = replicas.iter().collect();
    let callee = callee(config(&targets(&all)), &Metrics::default());
    // INTERNAL is not retried, but counts against the endpoint that said it.
    let mut calls = 0;
    while callee
        .endpoints()
        .iter()
        .any(|endpoint| endpoint.breaker != BreakerState::Open)
    {
        calls += 1;
        assert!(
            calls <= 20,
            "breakers never opened: {:?}",
            callee.endpoints()
        );
        let error = echo(&callee, &CallContext::default()).await.unwrap_err();
        assert_eq!(error.code(), Code::Internal);
    }
    let sent = total_requests(&all);
    let started = Instant::now();
    let error = echo(&callee, &CallContext::default()).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(50), "fast");
    assert_eq!(total_requests(&all), sent, "nothing sent");
    let CallError::Unavailable { retry_after, .. } = &error else {
        panic!("expected Unavailable, got {error:?}");
    };
    assert!(retry_after.is_some_and(|after| after <= Duration::from_secs(30)));
    let message = error.to_string();
    assert!(message.starts_with("echo is unavailable"), "{message}");
    assert!(message.contains("open"), "{message}");
    let status = error.into_status("checkout.test");
    assert_eq!(status.code(), Code::Unavailable);
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "DEPENDENCY_UNAVAILABLE");
    assert_eq!(
        info.metadata.get("callee").map(String::as_str),
        Some("echo")
    );
}

#[tokio::test]
async fn an_open_endpoint_half_opens_and_its_successful_trial_closes_it() {
    let replica = Replica::start("a").await;
    replica
        .state
        .fail_next([unavailable(), unavailable(), unavailable()]);
    let mut config = config(&replica.url());
    config.policy.max_attempts = 1;
    config.policy.breaker.open_for = Duration::from_millis(200);
    let callee = callee(config, &Metrics::default());
    for _ in 0..3 {
        assert!(echo(&callee, &CallContext::default()).await.is_err());
    }
    assert_eq!(callee.endpoints()[0].breaker, BreakerState::Open);
    assert!(matches!(
        echo(&callee, &CallContext::default()).await,
        Err(CallError::Unavailable { .. })
    ));
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(callee.endpoints()[0].breaker, BreakerState::HalfOpen);
    assert_eq!(echo(&callee, &CallContext::default()).await.unwrap(), "a");
    assert_eq!(callee.endpoints()[0].breaker, BreakerState::Closed);
}

// ---------------------------------------------------------------------------------------------
// Metrics.

#[tokio::test]
async fn outbound_metrics_are_scraped_from_the_callers_admin_port() {
    let replica = Replica::start("callee").await;
    replica.state.fail_next([unavailable()]);
    let metrics = Metrics::default();
    let callee = callee(config(&replica.url()), &metrics);
    let caller = start_caller(callee, metrics).await;
    call_forwarder(&caller, Duration::from_secs(5))
        .await
        .unwrap();

    let scrape = common::send(
        http::Request::get(format!("http://{}/metrics", caller.admin))
            .body(Full::new(Bytes::new()))
            .unwrap(),
        false,
    )
    .await;
    assert_eq!(scrape.status, 200);
    let text = String::from_utf8(scrape.body.to_vec()).unwrap();
    let method = ECHO.trim_start_matches('/');
    let endpoint = replica.url();
    for line in [
        format!("outbound_calls_total{{callee=\"echo\",method=\"{method}\",code=\"ok\"}} 1"),
        format!("outbound_attempts_total{{callee=\"echo\",method=\"{method}\"}} 2"),
        format!("outbound_retries_total{{callee=\"echo\",method=\"{method}\"}} 1"),
        format!("outbound_call_duration_seconds_count{{callee=\"echo\",method=\"{method}\"}} 1"),
        format!(
            "outbound_endpoint_breaker_state{{callee=\"echo\",endpoint=\"{endpoint}\",state=\"closed\"}} 1"
        ),
        format!(
            "outbound_endpoint_breaker_state{{callee=\"echo\",endpoint=\"{endpoint}\",state=\"open\"}} 0"
        ),
        format!("outbound_endpoint_in_flight{{callee=\"echo\",endpoint=\"{endpoint}\"}} 0"),
        // The inbound RPC metrics share the registry.
        format!("rpc_calls_total{{method=\"{method}\",code=\"ok\"}} 1"),
    ] {
        assert!(text.contains(&line), "missing {line} in\n{text}");
    }
}

#[test]
fn a_call_is_a_send_future_for_use_in_handlers() {
    fn assert_send<T: Send>(_: &T) {}
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _guard = runtime.enter();
    let callee = callee(config("http://127.0.0.1:9"), &Metrics::default());
    let context = CallContext::default();
    let call = echo(&callee, &context);
    assert_send(&call);
}

#[tokio::test]
async fn two_callees_for_the_same_replicas_report_each_endpoint_once() {
    let replica = Replica::start("a").await;
    let metrics = Metrics::default();
    let first = callee(config(&replica.url()), &metrics);
    let second = callee(config(&replica.url()), &metrics);
    echo(&first, &CallContext::default()).await.unwrap();
    echo(&second, &CallContext::default()).await.unwrap();
    let text = metrics.encode();
    let series = format!(
        "outbound_endpoint_in_flight{{callee=\"echo\",endpoint=\"{}\"}}",
        replica.url()
    );
    assert_eq!(text.matches(&series).count(), 1, "{text}");
    assert!(text.contains(&format!(
        "outbound_calls_total{{callee=\"echo\",method=\"{}\",code=\"ok\"}} 2",
        ECHO.trim_start_matches('/')
    )));
}
