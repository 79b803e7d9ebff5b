//! A gRPC callee: another service's replicas, called with a generated client over a balanced
//! [`CalleeChannel`], each unary call run by [`Callee::unary`]:
//!
//! 1. nothing is sent when the caller's deadline has passed (`DeadlineExceeded`) or when every
//!    endpoint's breaker refuses (`Unavailable`, naming the callee and each breaker's state);
//! 2. each attempt ends at `min(per-attempt timeout, caller's deadline)`, sent as `grpc-timeout`;
//! 3. a failed attempt is repeated only when the callee's contract allows it ([`RepeatRules`]) and
//!    the failure is transient ([`retry`](super::retry)), after the callee's `RetryInfo` delay or
//!    a jittered back-off, never past the deadline, on another endpoint when there is one;
//! 4. for a `NO_SIDE_EFFECTS` method with hedging on, a second attempt goes to another endpoint
//!    when the first has not answered after `hedge_after`; the first answer wins and the other
//!    attempt is dropped (its stream reset, so the callee sees the cancellation).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use prost_reflect::DescriptorPool;
use tokio::time::Instant;
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

use commerce_api::commerce::common::v1::ErrorReason;

use super::attempt::AttemptRecord;
use super::breaker::{BreakerConfig, Refusal};
use super::channel::CalleeChannel;
use super::context::{CallContext, MetadataHook, OutboundCall, outbound_metadata};
use super::contract::{RepeatRules, Repeatable};
use super::dependency::OutboundPolicy;
use super::discovery::{self, EndpointStatus, Endpoints, Unadmissible};
use super::endpoint::EndpointSettings;
use super::metrics::{MethodLabels, OutboundMetrics};
use super::retry::{Verdict, judge};
use super::target::{Target, TargetError};
use crate::ApiError;
use crate::interceptors::Metrics;
use crate::telemetry;
use tracing::Instrument as _;

/// How a callee is reached and called.
#[derive(Debug, Clone)]
pub struct CalleeConfig {
    /// The callee's name (`policy.name`, e.g. `loyalty`), per-attempt timeout, attempts, back-off
    /// and per-endpoint breaker.
    pub policy: OutboundPolicy,
    /// `http://host:port[,http://host:port…]` or `dns:///host:port`.
    pub target: String,
    /// Send a hedge for `NO_SIDE_EFFECTS` methods after this long without an answer; `None`
    /// (the default) never hedges.
    pub hedge_after: Option<Duration>,
    /// The longest `RetryInfo` delay honoured by waiting; a callee asking for more ends the
    /// retries and its answer goes back to the caller.
    pub max_retry_info_delay: Duration,
    /// How often a `dns:///` target is re-resolved.
    pub resolve_every: Duration,
    /// Time allowed to open a connection to an endpoint.
    pub connect_timeout: Duration,
    /// Calls that may wait for an endpoint to be ready.
    pub buffer: usize,
}

impl CalleeConfig {
    /// Defaults for the callee `name` at `target`: 2 s per attempt, 3 attempts, back-off from
    /// 25 ms doubling to 500 ms; each endpoint's breaker opens after 5 consecutive failures for
    /// 5 s; no hedging; `RetryInfo` delays up to 1 s; DNS re-resolved every 10 s; connections
    /// opened within 1 s; 1024 calls buffered.
    pub fn new(name: impl Into<String>, target: impl Into<String>) -> Self {
        CalleeConfig {
            policy: OutboundPolicy {
                backoff_base: Duration::from_millis(25),
                backoff_max: Duration::from_millis(500),
                breaker: BreakerConfig {
                    failure_threshold: 5,
                    open_for: Duration::from_secs(5),
                },
                ..OutboundPolicy::new(name)
            },
            target: target.into(),
            hedge_after: None,
            max_retry_info_delay: Duration::from_secs(1),
            resolve_every: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(1),
            buffer: 1024,
        }
    }
}

/// Why a callee could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum CalleeError {
    /// The target string is unusable.
    #[error("callee {callee}: {source}")]
    Target {
        /// The callee's name.
        callee: String,
        /// What is wrong with the target.
        source: TargetError,
    },
    /// Created outside a tokio runtime (its connections and resolver run on it).
    #[error("callee {0}: must be created inside a tokio runtime")]
    NoRuntime(String),
}

/// Why an outbound call did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The last attempt failed with `status`: the callee's answer, or `UNAVAILABLE` when it could
    /// not be reached.
    #[error("{callee} failed with {:?}: {}", status.code(), status.message())]
    Failed {
        /// The callee's name.
        callee: String,
        /// The last attempt's status.
        status: Status,
    },
    /// The last attempt ran out of time: the callee may have acted on it.
    #[error("{callee} did not answer in time ({attempts} attempt(s)); the outcome is unknown")]
    TimedOut {
        /// The callee's name.
        callee: String,
        /// Attempts made (hedges not counted).
        attempts: u32,
        /// The caller's deadline ended it (rather than per-attempt timeouts running out).
        deadline: bool,
    },
    /// Nothing was sent: no endpoint, or every endpoint's circuit breaker refuses.
    #[error("{callee} is unavailable: {detail}")]
    Unavailable {
        /// The callee's name.
        callee: String,
        /// Which endpoints refuse and why.
        detail: String,
        /// When the first of them may admit a call again.
        retry_after: Option<Duration>,
    },
    /// Nothing was sent: the caller's deadline had already passed.
    #[error("the caller's deadline passed before {callee} was called")]
    DeadlineExceeded {
        /// The callee's name.
        callee: String,
    },
    /// Nothing was sent: the call's metadata could not be made (a bad idempotency key, a
    /// [`MetadataHook`] error).
    #[error("the call to {callee} was not sent: {}", status.message())]
    Refused {
        /// The callee's name.
        callee: String,
        /// Why.
        status: Status,
    },
}

impl CallError {
    /// The callee's name.
    pub fn callee(&self) -> &str {
        match self {
            CallError::Failed { callee, .. }
            | CallError::TimedOut { callee, .. }
            | CallError::Unavailable { callee, .. }
            | CallError::DeadlineExceeded { callee }
            | CallError::Refused { callee, .. } => callee,
        }
    }

    /// The status code [`into_status`](Self::into_status) gives.
    pub fn code(&self) -> Code {
        match self {
            CallError::Failed { status, .. } | CallError::Refused { status, .. } => status.code(),
            CallError::TimedOut { deadline: true, .. } | CallError::DeadlineExceeded { .. } => {
                Code::DeadlineExceeded
            }
            CallError::TimedOut {
                deadline: false, ..
            }
            | CallError::Unavailable { .. } => Code::Unavailable,
        }
    }

    /// True when the callee may have acted on a request whose answer was lost (a timeout, a
    /// connection lost mid-call, a fault inside the callee): a non-idempotent caller must look
    /// the operation up before acting on the failure.
    pub fn outcome_unknown(&self) -> bool {
        match self {
            CallError::TimedOut { .. } => true,
            CallError::Failed { status, .. } => matches!(
                status.code(),
                Code::Unavailable
                    | Code::DeadlineExceeded
                    | Code::Cancelled
                    | Code::Unknown
                    | Code::Internal
                    | Code::DataLoss
            ),
            CallError::Unavailable { .. }
            | CallError::DeadlineExceeded { .. }
            | CallError::Refused { .. } => false,
        }
    }

    /// The status to answer the caller's own caller with: the callee's status as it came
    /// (`Failed`, `Refused`), otherwise `UNAVAILABLE` / `DEPENDENCY_UNAVAILABLE` or
    /// `DEADLINE_EXCEEDED` with `ErrorInfo` metadata `callee` in `domain` (the calling
    /// service's error domain).
    pub fn into_status(self, domain: &str) -> Status {
        let code = self.code();
        let message = self.to_string();
        match self {
            CallError::Failed { status, .. } | CallError::Refused { status, .. } => status,
            CallError::Unavailable {
                callee,
                retry_after,
                ..
            } => {
                let error = ApiError::new(code, ErrorReason::DependencyUnavailable, message)
                    .with_metadata("callee", callee);
                match retry_after {
                    Some(delay) => error.with_retry_after(delay),
                    None => error,
                }
                .into_status(domain)
            }
            CallError::TimedOut { callee, .. } | CallError::DeadlineExceeded { callee } => {
                let reason = if code == Code::DeadlineExceeded {
                    ErrorReason::DeadlineExceeded
                } else {
                    ErrorReason::DependencyUnavailable
                };
                ApiError::new(code, reason, message)
                    .with_metadata("callee", callee)
                    .into_status(domain)
            }
        }
    }
}

/// One gRPC callee. Cheap to clone; clones share the channel, the endpoints and their breakers.
#[derive(Clone)]
pub struct Callee {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    config: CalleeConfig,
    target: Target,
    channel: CalleeChannel,
    endpoints: Arc<Endpoints>,
    rules: Arc<RepeatRules>,
    metrics: OutboundMetrics,
    hook: Option<Arc<dyn MetadataHook>>,
}

impl std::fmt::Debug for Callee {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Callee")
            .field("name", &self.inner.config.policy.name)
            .field("target", &self.inner.target)
            .finish_non_exhaustive()
    }
}

/// Why one round (an attempt and its hedge) failed.
struct Failed {
    status: Status,
    timed_out: bool,
    /// The endpoint whose failure this is, when one took the attempt.
    endpoint: Option<String>,
}

impl Callee {
    /// Connects (lazily) to the callee `config` describes. `pool` holds the callee's contract
    /// (`commerce_api::DESCRIPTOR_POOL`); `metrics` is the process's admin registry.
    pub fn new(
        config: CalleeConfig,
        pool: &DescriptorPool,
        metrics: &Metrics,
    ) -> Result<Callee, CalleeError> {
        let name = config.policy.name.clone();
        let target = Target::parse(&config.target).map_err(|source| CalleeError::Target {
            callee: name.clone(),
            source,
        })?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(CalleeError::NoRuntime(name));
        }
        let settings = EndpointSettings {
            callee: name.clone(),
            connect_timeout: config.connect_timeout,
            breaker: config.policy.breaker,
            trial_retry_after: config.policy.timeout,
        };
        let (endpoints, discovered) =
            discovery::start(target.clone(), settings, config.resolve_every);
        let channel = CalleeChannel::balanced(discovered, config.buffer);
        let metrics = metrics.outbound().clone();
        metrics.watch(&name, &endpoints);
        Ok(Callee {
            inner: Arc::new(Inner {
                config,
                target,
                channel,
                endpoints,
                rules: Arc::new(RepeatRules::from_pool(pool)),
                metrics,
                hook: None,
            }),
        })
    }

    /// The same callee, adding `hook`'s metadata to every call (a service-identity token).
    pub fn with_metadata_hook(self, hook: impl MetadataHook) -> Callee {
        Callee {
            inner: Arc::new(Inner {
                hook: Some(Arc::new(hook)),
                ..(*self.inner).clone()
            }),
        }
    }

    /// The callee's name.
    pub fn name(&self) -> &str {
        &self.inner.config.policy.name
    }

    /// The balanced channel, for calls [`unary`](Self::unary) does not cover (streams): they get
    /// balancing and per-endpoint breakers, not retries, hedges or deadline propagation.
    pub fn channel(&self) -> CalleeChannel {
        self.inner.channel.clone()
    }

    /// The endpoints and their breakers now.
    pub fn endpoints(&self) -> Vec<EndpointStatus> {
        self.inner.endpoints.statuses()
    }

    /// What the callee's contract says about repeating `method` (`/pkg.Service/Method`).
    pub fn repeatable(&self, method: &str) -> Repeatable {
        self.inner.rules.get(method)
    }

    /// Calls `method` (`/pkg.Service/Method`) with `message`, on behalf of `context`: `call`
    /// makes one attempt with a generated client over the channel it is given, e.g.
    ///
    /// ```ignore
    /// loyalty.unary(&context, "/commerce.loyalty.v1.RewardService/RedeemReward", request, Some(key),
    ///     |channel, request| async move { RewardServiceClient::new(channel).redeem_reward(request).await })
    /// ```
    ///
    /// `idempotency_key` goes out as `idempotency-key` on every attempt; the request id, trace
    /// context and the caller's metadata too. See the module documentation for the rules.
    pub async fn unary<M, R, F, Fut>(
        &self,
        context: &CallContext,
        method: &str,
        message: M,
        idempotency_key: Option<&str>,
        mut call: F,
    ) -> Result<tonic::Response<R>, CallError>
    where
        M: Clone,
        F: FnMut(CalleeChannel, tonic::Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, Status>>,
    {
        let labels = MethodLabels {
            callee: self.name().to_owned(),
            method: method.trim_start_matches('/').to_owned(),
        };
        let started = Instant::now();
        // The logical call; each attempt (retry or hedge) is a CLIENT span under it.
        let span = telemetry::call_span(self.name(), &labels.method);
        let result = self
            .run(
                context,
                method,
                &message,
                idempotency_key,
                &mut call,
                &labels,
            )
            .instrument(span.clone())
            .await;
        telemetry::end_call_span(&span, &result.as_ref().map(|_| ()).map_err(CallError::code));
        let code = match &result {
            Ok(_) => Code::Ok,
            Err(error) => error.code(),
        };
        let code = connect::Code::from_grpc(code as i32).name();
        self.inner.metrics.finish(&labels, code, started.elapsed());
        if let Err(error) = &result {
            tracing::info!(
                target: "outbound",
                callee = %labels.callee,
                method = %labels.method,
                code,
                request_id = context.request_id.as_deref().unwrap_or(""),
                %error,
                "outbound call failed"
            );
        }
        result
    }

    async fn run<M, R, F, Fut>(
        &self,
        context: &CallContext,
        method: &str,
        message: &M,
        idempotency_key: Option<&str>,
        call: &mut F,
        labels: &MethodLabels,
    ) -> Result<tonic::Response<R>, CallError>
    where
        M: Clone,
        F: FnMut(CalleeChannel, tonic::Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, Status>>,
    {
        let inner = &*self.inner;
        let callee = self.name();
        let policy = &inner.config.policy;
        let repeatable = inner.rules.get(method);
        let may_retry = repeatable.retries(idempotency_key.is_some());
        let hedge_after = inner.config.hedge_after.filter(|_| repeatable.hedges());
        let deadline = context.deadline.map(Instant::from_std);
        let outbound = OutboundCall {
            callee,
            method,
            context,
        };
        let metadata = outbound_metadata(&outbound, idempotency_key, inner.hook.as_ref()).map_err(
            |status| CallError::Refused {
                callee: callee.to_owned(),
                status,
            },
        )?;
        let deadline_exceeded = || CallError::DeadlineExceeded {
            callee: callee.to_owned(),
        };
        if deadline.is_some_and(|deadline| deadline <= Instant::now()) {
            return Err(deadline_exceeded());
        }
        // A `dns:///` callee created a moment ago may not have resolved yet.
        let resolved_by = Instant::now() + policy.timeout;
        let resolved_by = deadline.map_or(resolved_by, |deadline| deadline.min(resolved_by));
        let _ = tokio::time::timeout_at(resolved_by, inner.endpoints.resolved()).await;

        let mut number = 0;
        let mut failed_endpoint: Option<String> = None;
        let mut last_error: Option<CallError> = None;
        loop {
            number += 1;
            let now = Instant::now();
            if deadline.is_some_and(|deadline| deadline <= now) {
                // A retry's wait ended a timer tick past the deadline: the last answer stands.
                return Err(last_error.unwrap_or_else(deadline_exceeded));
            }
            inner
                .endpoints
                .admissible()
                .map_err(|refused| self.unavailable(refused))?;
            let attempt_end = now + policy.timeout;
            let (end, cut_by_deadline) = match deadline {
                Some(deadline) if deadline < attempt_end => (deadline, true),
                _ => (attempt_end, false),
            };
            // A retry goes to another endpoint than the one that just failed, when there is one.
            let channel = failed_endpoint
                .as_deref()
                .and_then(|failed| inner.endpoints.other_than(Some(failed)))
                .map_or_else(|| self.channel(), CalleeChannel::pinned);
            let round = Round {
                channel,
                message,
                metadata: &metadata,
                end,
                cut_by_deadline,
                hedge_after,
                labels,
                number,
            };
            let failed = match self.round(call, &round).await {
                Ok(response) => return Ok(response),
                Err(failed) => failed,
            };
            failed_endpoint = failed.endpoint.clone();
            let error = if failed.timed_out {
                CallError::TimedOut {
                    callee: callee.to_owned(),
                    attempts: number,
                    deadline: cut_by_deadline,
                }
            } else {
                CallError::Failed {
                    callee: callee.to_owned(),
                    status: failed.status.clone(),
                }
            };
            let Verdict::Transient { after } = judge(&failed.status, failed.timed_out) else {
                return Err(error);
            };
            if !may_retry || number >= policy.max_attempts.max(1) || cut_by_deadline {
                return Err(error);
            }
            let delay = match after {
                Some(asked) if asked > inner.config.max_retry_info_delay => return Err(error),
                Some(asked) => asked,
                None => policy.backoff(number),
            };
            if deadline.is_some_and(|deadline| Instant::now() + delay >= deadline) {
                return Err(error);
            }
            inner.metrics.retry(labels);
            tracing::warn!(
                target: "outbound",
                callee,
                method = %labels.method,
                attempt = number,
                delay_ms = delay.as_secs_f64() * 1000.0,
                reason = %error,
                request_id = context.request_id.as_deref().unwrap_or(""),
                "retrying outbound call"
            );
            tokio::time::sleep(delay).await;
            last_error = Some(error);
        }
    }

    /// One attempt, plus its hedge when one is due, within `round.end`.
    async fn round<M, R, F, Fut>(
        &self,
        call: &mut F,
        round: &Round<'_, M>,
    ) -> Result<tonic::Response<R>, Failed>
    where
        M: Clone,
        F: FnMut(CalleeChannel, tonic::Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, Status>>,
    {
        let first = AttemptRecord::new(round.cut_by_deadline);
        let hedge = AttemptRecord::new(round.cut_by_deadline);
        let raced = self.race(call, round, &first, &hedge);
        match tokio::time::timeout_at(round.end, raced).await {
            Ok(result) => result,
            Err(_) => {
                // The attempts were dropped (their streams reset); now their endpoints learn why.
                first.time_out();
                hedge.time_out();
                Err(Failed {
                    status: Status::deadline_exceeded(format!(
                        "{} did not answer in time",
                        self.name()
                    )),
                    timed_out: true,
                    endpoint: first.endpoint(),
                })
            }
        }
    }

    /// The first attempt; after `hedge_after` without an answer, a hedge to another endpoint.
    /// The first settled answer wins; a transient failure of one waits for the other.
    async fn race<M, R, F, Fut>(
        &self,
        call: &mut F,
        round: &Round<'_, M>,
        first_record: &AttemptRecord,
        hedge_record: &AttemptRecord,
    ) -> Result<tonic::Response<R>, Failed>
    where
        M: Clone,
        F: FnMut(CalleeChannel, tonic::Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, Status>>,
    {
        let first = self.attempt(call, round.channel.clone(), round, first_record, false);
        let hedge_after = round
            .hedge_after
            .filter(|delay| Instant::now() + *delay < round.end);
        let Some(hedge_after) = hedge_after else {
            return outcome(first.await, first_record);
        };
        tokio::pin!(first);
        tokio::select! {
            result = &mut first => return outcome(result, first_record),
            () = tokio::time::sleep(hedge_after) => {}
        }
        let taken = first_record.endpoint();
        let Some(endpoint) = self.inner.endpoints.other_than(taken.as_deref()) else {
            return outcome(first.await, first_record);
        };
        self.inner.metrics.hedge(round.labels);
        tracing::debug!(
            target: "outbound",
            callee = self.name(),
            method = %round.labels.method,
            first = taken.as_deref().unwrap_or(""),
            hedge = endpoint.address(),
            "hedging outbound call"
        );
        let hedge = self.attempt(
            call,
            CalleeChannel::pinned(endpoint),
            round,
            hedge_record,
            true,
        );
        tokio::pin!(hedge);
        let hedge_result = tokio::select! {
            result = &mut first => {
                if settles(&result, first_record) {
                    return outcome(result, first_record);
                }
                hedge.await
            }
            result = &mut hedge => {
                if !settles(&result, hedge_record) {
                    return outcome(first.await, first_record);
                }
                result
            }
        };
        if hedge_result.is_ok() {
            self.inner.metrics.hedge_won(round.labels);
        }
        outcome(hedge_result, hedge_record)
    }

    /// Prepares one attempt's request and starts it through `channel`.
    fn attempt<M, R, F, Fut>(
        &self,
        call: &mut F,
        channel: CalleeChannel,
        round: &Round<'_, M>,
        record: &AttemptRecord,
        hedge: bool,
    ) -> impl Future<Output = Result<tonic::Response<R>, Status>> + use<M, R, F, Fut>
    where
        M: Clone,
        F: FnMut(CalleeChannel, tonic::Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, Status>>,
    {
        let mut request = tonic::Request::new(round.message.clone());
        *request.metadata_mut() = round.metadata.clone();
        request.set_timeout(round.end.saturating_duration_since(Instant::now()));
        request.extensions_mut().insert(record.clone());
        self.inner.metrics.attempt(round.labels);
        let span = telemetry::attempt_span(
            self.name(),
            &round.labels.method,
            "grpc",
            round.number,
            hedge,
        );
        // The callee's server span is a child of this attempt, not of the caller's call.
        if let Some((traceparent, tracestate)) = telemetry::trace_context_of(&span) {
            let metadata = request.metadata_mut();
            if let Ok(value) = traceparent.parse() {
                metadata.insert("traceparent", value);
            }
            match tracestate.and_then(|state| state.parse().ok()) {
                Some(value) => {
                    metadata.insert("tracestate", value);
                }
                None => {
                    metadata.remove("tracestate");
                }
            }
        }
        let attempt = call(channel, request);
        let ended = span.clone();
        async move {
            let result = attempt.await;
            telemetry::end_attempt_span(&ended, result.as_ref().map(|_| ()).map_err(Status::code));
            result
        }
        .instrument(span)
    }

    fn unavailable(&self, refused: Unadmissible) -> CallError {
        let detail = if refused.refusals.is_empty() {
            format!("no endpoint resolved from {}", self.inner.target)
        } else {
            let states: Vec<String> = refused
                .refusals
                .iter()
                .map(|(address, refusal)| match refusal {
                    Refusal::Open { until } => format!(
                        "{address} open, half-opens in {} ms",
                        until.saturating_duration_since(Instant::now()).as_millis()
                    ),
                    Refusal::TrialInFlight => format!("{address} half_open, trial in flight"),
                })
                .collect();
            format!(
                "every endpoint's circuit breaker is open ({})",
                states.join("; ")
            )
        };
        CallError::Unavailable {
            callee: self.name().to_owned(),
            detail,
            retry_after: refused.retry_after,
        }
    }
}

/// What every attempt of one round shares.
struct Round<'a, M> {
    /// Where the round's first attempt goes.
    channel: CalleeChannel,
    message: &'a M,
    metadata: &'a MetadataMap,
    end: Instant,
    cut_by_deadline: bool,
    hedge_after: Option<Duration>,
    labels: &'a MethodLabels,
    /// Which attempt of the call the round makes (1-based).
    number: u32,
}

/// Whether an attempt's result ends the round (an answer, not a transient failure).
fn settles<R>(result: &Result<tonic::Response<R>, Status>, record: &AttemptRecord) -> bool {
    match result {
        Ok(_) => true,
        Err(status) => judge(status, record.timed_out()) == Verdict::Final,
    }
}

fn outcome<R>(
    result: Result<tonic::Response<R>, Status>,
    record: &AttemptRecord,
) -> Result<tonic::Response<R>, Failed> {
    result.map_err(|status| Failed {
        timed_out: record.timed_out(),
        endpoint: record.endpoint(),
        status,
    })
}
