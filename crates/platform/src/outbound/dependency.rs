//! The whole-dependency call policy: how a service calls a dependency that is not a gRPC callee
//! balanced over replicas (the PSP adapter, a tax hook).
//!
//! Every call through an [`Outbound`] gets
//!
//! - a **per-attempt timeout** that never outlives the caller's own deadline ([`Outbound::call_until`]);
//! - **retries** with exponential backoff and full jitter — only when the callee is idempotent
//!   ([`Idempotent::Yes`]) *and* the failure is transient ([`Classify::retryable`], or a timeout).
//!   Retrying a non-idempotent call could charge a card twice, so its timeout is reported as
//!   [`OutboundError::Timeout`] (outcome unknown) for the caller to resolve, e.g. by asking the
//!   PSP for the payment by reference;
//! - a **circuit breaker**, shared by every clone: after `failure_threshold` consecutive unhealthy
//!   outcomes (timeouts, errors whose [`Classify::counts_against_breaker`] is true) it opens and
//!   calls fail fast with [`OutboundError::CircuitOpen`] without reaching the dependency; after
//!   `open_for` it half-opens and lets one trial call through: success closes it, failure re-opens
//!   it. A business answer (a hard decline) is a healthy dependency saying no: it never opens the
//!   breaker, and it resets the count of consecutive failures.
//!
//! Retries and breaker state changes are logged as `tracing` events (target `outbound`) carrying
//! the dependency name, the attempt number and the state. For gRPC callees, use
//! [`Callee`](super::Callee) instead: it adds balancing, per-endpoint breakers, contract-driven
//! retries, hedging and metrics.
//!
//! Time is `tokio::time`, so tests can pause and advance it.
//!
//! ```no_run
//! use std::time::Duration;
//! use platform::outbound::{Classify, Idempotent, Outbound, OutboundError, OutboundPolicy};
//!
//! enum PspError { Unavailable, Declined }
//!
//! impl Classify for PspError {
//!     fn retryable(&self) -> bool { matches!(self, PspError::Unavailable) }
//! }
//!
//! # async fn example() -> Result<(), OutboundError<PspError>> {
//! let psp = Outbound::new(OutboundPolicy { timeout: Duration::from_secs(3), ..OutboundPolicy::new("psp") });
//! let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
//! // Idempotent because every attempt carries the same idempotency key.
//! let authorization = psp
//!     .call_until(deadline, Idempotent::Yes, |attempt| async move {
//!         let _ = attempt; // send the authorization here
//!         Ok::<_, PspError>("auth_123")
//!     })
//!     .await?;
//! # let _ = authorization; Ok(()) }
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::breaker::{BreakerConfig, BreakerState, CircuitBreaker, Health};
use crate::telemetry;

/// How a dependency is called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundPolicy {
    /// The dependency's name, for logs (`psp`, `loyalty`).
    pub name: String,
    /// Time allowed to each attempt.
    pub timeout: Duration,
    /// Attempts per call, the first included (0 behaves as 1). Only idempotent calls get more
    /// than one.
    pub max_attempts: u32,
    /// Ceiling of the first retry's delay; doubles per retry.
    pub backoff_base: Duration,
    /// Largest ceiling of a retry's delay.
    pub backoff_max: Duration,
    /// When to stop calling an unhealthy dependency.
    pub breaker: BreakerConfig,
}

impl OutboundPolicy {
    /// Defaults for the dependency `name`: 2 s per attempt, 3 attempts, backoff 50 ms doubling to
    /// at most 1 s, and the default [`BreakerConfig`].
    pub fn new(name: impl Into<String>) -> Self {
        OutboundPolicy {
            name: name.into(),
            timeout: Duration::from_secs(2),
            max_attempts: 3,
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
            breaker: BreakerConfig::default(),
        }
    }

    /// The largest delay before the retry that follows attempt `attempt` (1-based):
    /// `min(backoff_max, backoff_base · 2^(attempt-1))`. The actual delay is uniformly random in
    /// `[0, ceiling]` ("full jitter"), so callers that failed together do not retry together.
    pub fn backoff_ceiling(&self, attempt: u32) -> Duration {
        self.backoff_base
            .saturating_mul(1 << attempt.saturating_sub(1).min(30))
            .min(self.backoff_max)
    }

    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = u64::try_from(self.backoff_ceiling(attempt).as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(fastrand::u64(0..=ceiling))
    }
}

/// Whether the callee makes a repeated request harmless (an idempotency key, a read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idempotent {
    /// Repeating the request cannot repeat its effect: transient failures are retried.
    Yes,
    /// It might: one attempt only.
    No,
}

/// What a caller knows about its dependency's errors.
pub trait Classify {
    /// A transient failure that a repeat of an idempotent request may get past (PSP
    /// `Unavailable`: yes; a hard decline: no).
    fn retryable(&self) -> bool;

    /// The error says the dependency is unhealthy, so it counts toward opening the breaker.
    /// Defaults to [`retryable`](Classify::retryable); a business answer must say false.
    fn counts_against_breaker(&self) -> bool {
        self.retryable()
    }

    /// The dependency may have acted although the answer is an error (a lost reply): once one
    /// attempt ends like this, a later attempt that fails without acting cannot say "nothing
    /// happened", so the call ends as [`OutboundError::Timeout`] (outcome unknown). Default: no.
    fn outcome_unknown(&self) -> bool {
        false
    }
}

/// gRPC dependencies: `UNAVAILABLE`, `DEADLINE_EXCEEDED` and `ABORTED` (a concurrent duplicate)
/// are worth a retry; `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `INTERNAL`, `UNKNOWN` and `DATA_LOSS`
/// count against the breaker. Everything else is the dependency answering.
impl Classify for tonic::Status {
    fn retryable(&self) -> bool {
        use tonic::Code::*;
        matches!(self.code(), Unavailable | DeadlineExceeded | Aborted)
    }

    fn counts_against_breaker(&self) -> bool {
        use tonic::Code::*;
        matches!(
            self.code(),
            Unavailable | DeadlineExceeded | Internal | Unknown | DataLoss
        )
    }
}

/// Why an outbound call did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError<E> {
    /// The last attempt's error (not retried: not retryable, not idempotent, out of attempts, or
    /// no time left before the deadline).
    #[error("the dependency returned an error")]
    Failed(E),
    /// The last attempt was abandoned by its timeout or by the caller's deadline: its outcome is
    /// unknown. A non-idempotent caller must resolve it (look the operation up) before acting.
    #[error("the dependency did not answer in time; the outcome is unknown")]
    Timeout,
    /// The breaker is open: nothing was sent. Try again after `retry_after`.
    #[error("the dependency's circuit breaker is open; retry after {retry_after:?}")]
    CircuitOpen {
        /// When the breaker will let a trial call through (at the earliest).
        retry_after: Duration,
    },
    /// The caller's deadline had passed before the first attempt: nothing was sent.
    #[error("the caller's deadline passed before the dependency was called")]
    DeadlineExceeded,
}

impl<E> OutboundError<E> {
    /// True when the dependency may have acted on a request whose answer was lost.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, OutboundError::Timeout)
    }
}

/// Calls one dependency under an [`OutboundPolicy`]. Cheap to clone; clones share the breaker.
#[derive(Debug, Clone)]
pub struct Outbound {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    policy: OutboundPolicy,
    breaker: Arc<CircuitBreaker>,
}

impl Outbound {
    /// A client of the dependency described by `policy`, its breaker closed.
    pub fn new(policy: OutboundPolicy) -> Self {
        let breaker =
            CircuitBreaker::new(policy.name.clone(), None, policy.breaker, policy.timeout);
        Outbound {
            inner: Arc::new(Inner { policy, breaker }),
        }
    }

    /// The policy.
    pub fn policy(&self) -> &OutboundPolicy {
        &self.inner.policy
    }

    /// The breaker's state now.
    pub fn breaker_state(&self) -> BreakerState {
        self.inner.breaker.state()
    }

    /// Calls `attempt(n)` (n = 1, 2, ...) under the policy, with no deadline beyond the
    /// per-attempt timeouts.
    pub async fn call<T, E, F, Fut>(
        &self,
        idempotent: Idempotent,
        attempt: F,
    ) -> Result<T, OutboundError<E>>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Classify,
    {
        self.call_traced(None, "call", idempotent, attempt).await
    }

    /// [`call`](Outbound::call) of the dependency's `operation` (e.g. `authorize`), which names
    /// its trace spans.
    pub async fn call_op<T, E, F, Fut>(
        &self,
        operation: &str,
        idempotent: Idempotent,
        attempt: F,
    ) -> Result<T, OutboundError<E>>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Classify,
    {
        self.call_traced(None, operation, idempotent, attempt).await
    }

    /// Like [`call`](Outbound::call), finished by `deadline` (a `tokio` or `std` instant, e.g.
    /// the inbound call's [`Deadline`](crate::interceptors::Deadline)): each attempt is cut at
    /// the deadline, and no retry starts whose backoff would reach it.
    pub async fn call_until<T, E, F, Fut>(
        &self,
        deadline: impl Into<Instant>,
        idempotent: Idempotent,
        attempt: F,
    ) -> Result<T, OutboundError<E>>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Classify,
    {
        self.call_traced(Some(deadline.into()), "call", idempotent, attempt)
            .await
    }

    /// [`call_until`](Outbound::call_until) of the dependency's `operation`.
    pub async fn call_op_until<T, E, F, Fut>(
        &self,
        operation: &str,
        deadline: impl Into<Instant>,
        idempotent: Idempotent,
        attempt: F,
    ) -> Result<T, OutboundError<E>>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Classify,
    {
        self.call_traced(Some(deadline.into()), operation, idempotent, attempt)
            .await
    }

    /// The call as a span (INTERNAL) with a CLIENT span per attempt.
    async fn call_traced<T, E, F, Fut>(
        &self,
        deadline: Option<Instant>,
        operation: &str,
        idempotent: Idempotent,
        mut attempt: F,
    ) -> Result<T, OutboundError<E>>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Classify,
    {
        use tracing::Instrument as _;
        let name = &self.inner.policy.name;
        let span = telemetry::call_span(name, operation);
        let traced_attempt = |number: u32| {
            let attempt_span = telemetry::attempt_span(name, operation, name, number, false);
            let ended = attempt_span.clone();
            let attempt = attempt(number);
            async move {
                let result = attempt.await;
                telemetry::end_attempt_span(
                    &ended,
                    if result.is_ok() {
                        Ok(())
                    } else {
                        Err(tonic::Code::Unknown)
                    },
                );
                result
            }
            .instrument(attempt_span)
        };
        let result = self
            .run(deadline, idempotent, traced_attempt)
            .instrument(span.clone())
            .await;
        telemetry::end_call_span(
            &span,
            &result.as_ref().map(|_| ()).map_err(|error| match error {
                OutboundError::Failed(_) => tonic::Code::Unknown,
                OutboundError::CircuitOpen { .. } => tonic::Code::Unavailable,
                OutboundError::Timeout | OutboundError::DeadlineExceeded => {
                    tonic::Code::DeadlineExceeded
                }
            }),
        );
        result
    }

    async fn run<T, E, F, Fut>(
        &self,
        deadline: Option<Instant>,
        idempotent: Idempotent,
        mut attempt: F,
    ) -> Result<T, OutboundError<E>>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Classify,
    {
        let policy = &self.inner.policy;
        let mut number = 0;
        // An earlier attempt may have acted (timed out, or its reply was lost): a later one that
        // fails without acting must not report "nothing happened".
        let mut may_have_acted = false;
        let unknown_if_acted = |error: OutboundError<E>, may_have_acted: bool| match error {
            OutboundError::DeadlineExceeded | OutboundError::CircuitOpen { .. }
                if may_have_acted =>
            {
                OutboundError::Timeout
            }
            OutboundError::Failed(error) if may_have_acted && error.retryable() => {
                OutboundError::Timeout
            }
            other => other,
        };
        loop {
            number += 1;
            let now = Instant::now();
            if deadline.is_some_and(|deadline| deadline <= now) {
                return Err(unknown_if_acted(
                    OutboundError::DeadlineExceeded,
                    may_have_acted,
                ));
            }
            let permit = match self.inner.breaker.admit(number) {
                Ok(permit) => permit,
                Err(refusal) => {
                    let open = OutboundError::CircuitOpen {
                        retry_after: refusal.retry_after(self.inner.breaker.trial_retry_after()),
                    };
                    return Err(unknown_if_acted(open, may_have_acted));
                }
            };
            // The attempt ends at its own timeout or the caller's deadline, whichever is first.
            let timeout_at = now + policy.timeout;
            let cut_by_deadline = deadline.filter(|deadline| *deadline < timeout_at);
            let end = cut_by_deadline.unwrap_or(timeout_at);
            let last = match tokio::time::timeout_at(end, attempt(number)).await {
                Ok(Ok(value)) => {
                    permit.settle(Health::Healthy);
                    return Ok(value);
                }
                Ok(Err(error)) => {
                    permit.settle(if error.counts_against_breaker() {
                        Health::Unhealthy
                    } else {
                        Health::Healthy
                    });
                    let acted = error.outcome_unknown();
                    if idempotent == Idempotent::No || !error.retryable() {
                        return Err(unknown_if_acted(
                            OutboundError::Failed(error),
                            may_have_acted && !acted,
                        ));
                    }
                    may_have_acted |= acted;
                    OutboundError::Failed(error)
                }
                // The caller ran out of time, not the dependency: no verdict on its health.
                Err(_) if cut_by_deadline.is_some() => return Err(OutboundError::Timeout),
                Err(_) => {
                    permit.settle(Health::Unhealthy);
                    if idempotent == Idempotent::No {
                        return Err(OutboundError::Timeout);
                    }
                    may_have_acted = true;
                    OutboundError::Timeout
                }
            };
            if number >= policy.max_attempts {
                return Err(unknown_if_acted(last, may_have_acted));
            }
            let delay = policy.backoff(number);
            if deadline.is_some_and(|deadline| Instant::now() + delay >= deadline) {
                return Err(unknown_if_acted(last, may_have_acted));
            }
            tracing::warn!(
                target: "outbound",
                dependency = %policy.name,
                attempt = number,
                delay_ms = delay.as_secs_f64() * 1000.0,
                reason = match last { OutboundError::Timeout => "timeout", _ => "retryable error" },
                "retrying outbound call"
            );
            tokio::time::sleep(delay).await;
        }
    }
}
