//! The circuit breaker: one per dependency for [`Outbound`](super::Outbound), one per endpoint for
//! a [`Callee`](super::Callee). Both use this same state machine.
//!
//! After `failure_threshold` consecutive unhealthy outcomes it opens and admits nothing; after
//! `open_for` it half-opens and admits one trial: a healthy trial closes it, an unhealthy one
//! re-opens it. A business answer is a healthy dependency saying no: it resets the count. An
//! endpoint that refuses connections is [tripped](Permit::trip): opened at once, since nothing at
//! that address is answering.
//!
//! Time is `tokio::time`, so tests can pause and advance it.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Waker};
use std::time::Duration;

use tokio::time::Instant;

/// When the circuit breaker opens and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive unhealthy outcomes that open the breaker (0 behaves as 1).
    pub failure_threshold: u32,
    /// How long it stays open before letting one trial call through.
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    /// Opens after 5 consecutive failures, for 10 s.
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            open_for: Duration::from_secs(10),
        }
    }
}

/// The breaker's state, as a caller sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls fail fast.
    Open,
    /// `open_for` has passed: the next call is the trial (or the trial is in flight).
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half_open` (logs, metrics, error messages).
    pub fn name(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// Whether an attempt's outcome says the dependency is healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Health {
    Healthy,
    Unhealthy,
}

/// One breaker, shared by everything that calls the same dependency (or endpoint).
#[derive(Debug)]
pub(crate) struct CircuitBreaker {
    dependency: String,
    /// Set for a per-endpoint breaker: the endpoint's address, for logs.
    endpoint: Option<String>,
    config: BreakerConfig,
    /// How long a caller refused during a trial should wait: the trial settles within one attempt.
    trial_retry_after: Duration,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: State,
    /// Tasks waiting for the breaker to admit again (a balancer's endpoint readiness).
    waiters: Vec<Waker>,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed { consecutive_failures: u32 },
    Open { until: Instant },
    HalfOpen { trial_in_flight: bool },
}

/// Why the breaker admitted nothing, and until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Open until this instant.
    Open { until: Instant },
    /// Half open with its one trial in flight.
    TrialInFlight,
}

impl Refusal {
    /// How long the caller should wait before trying again.
    pub(crate) fn retry_after(self, trial_retry_after: Duration) -> Duration {
        match self {
            Refusal::Open { until } => until.saturating_duration_since(Instant::now()),
            Refusal::TrialInFlight => trial_retry_after,
        }
    }
}

impl CircuitBreaker {
    /// A closed breaker for `dependency` (and `endpoint`, for a per-endpoint breaker).
    pub(crate) fn new(
        dependency: impl Into<String>,
        endpoint: Option<String>,
        config: BreakerConfig,
        trial_retry_after: Duration,
    ) -> Arc<Self> {
        Arc::new(CircuitBreaker {
            dependency: dependency.into(),
            endpoint,
            config,
            trial_retry_after,
            inner: Mutex::new(Inner {
                state: State::Closed {
                    consecutive_failures: 0,
                },
                waiters: Vec::new(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // No code panics while holding the lock; a poisoned state is still a valid state.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How long a caller refused during a trial should wait.
    pub(crate) fn trial_retry_after(&self) -> Duration {
        self.trial_retry_after
    }

    /// The state now.
    pub(crate) fn state(&self) -> BreakerState {
        match self.lock().state {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { until } if Instant::now() < until => BreakerState::Open,
            State::Open { .. } | State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Whether [`admit`](Self::admit) would let a call through now (without taking the trial).
    pub(crate) fn would_admit(&self) -> Result<(), Refusal> {
        match self.lock().state {
            State::Closed { .. }
            | State::HalfOpen {
                trial_in_flight: false,
            } => Ok(()),
            State::Open { until } if Instant::now() < until => Err(Refusal::Open { until }),
            State::Open { .. } => Ok(()),
            State::HalfOpen {
                trial_in_flight: true,
            } => Err(Refusal::TrialInFlight),
        }
    }

    /// Lets attempt `number` through (taking the trial when half open), or says why not.
    pub(crate) fn admit(self: &Arc<Self>, number: u32) -> Result<Permit, Refusal> {
        let mut inner = self.lock();
        self.admit_locked(&mut inner, number)
    }

    /// Like [`admit`](Self::admit), but a refused caller is woken when the breaker changes state
    /// (a trial settles or frees its slot); an open breaker also says until when, for a timer.
    pub(crate) fn poll_admit(
        self: &Arc<Self>,
        cx: &mut Context<'_>,
        number: u32,
    ) -> Result<Permit, Refusal> {
        let mut inner = self.lock();
        let admitted = self.admit_locked(&mut inner, number);
        if admitted.is_err() && !inner.waiters.iter().any(|w| w.will_wake(cx.waker())) {
            inner.waiters.push(cx.waker().clone());
        }
        admitted
    }

    fn admit_locked(self: &Arc<Self>, inner: &mut Inner, number: u32) -> Result<Permit, Refusal> {
        let trial = match inner.state {
            State::Closed { .. } => false,
            State::Open { until } => {
                if Instant::now() < until {
                    return Err(Refusal::Open { until });
                }
                self.log_change(BreakerState::HalfOpen, number, 0);
                true
            }
            State::HalfOpen {
                trial_in_flight: true,
            } => return Err(Refusal::TrialInFlight),
            State::HalfOpen {
                trial_in_flight: false,
            } => true,
        };
        if trial {
            inner.state = State::HalfOpen {
                trial_in_flight: true,
            };
        }
        Ok(Permit {
            breaker: self.clone(),
            trial,
            number,
            settled: false,
        })
    }

    fn log_change(&self, state: BreakerState, attempt: u32, consecutive_failures: u32) {
        let dependency = &self.dependency;
        let endpoint = self.endpoint.as_deref().unwrap_or("");
        let opened = state == BreakerState::Open;
        let state = state.name();
        if opened {
            tracing::warn!(target: "outbound", %dependency, endpoint, attempt, state, consecutive_failures, "circuit breaker state changed");
        } else {
            tracing::info!(target: "outbound", %dependency, endpoint, attempt, state, "circuit breaker state changed");
        }
    }
}

impl Inner {
    fn wake_waiters(&mut self) {
        for waker in self.waiters.drain(..) {
            waker.wake();
        }
    }
}

/// One admitted attempt; its outcome updates the breaker. Dropped unsettled (the caller gave up,
/// its deadline cut the attempt, or it lost a hedge race), it says nothing about the dependency's
/// health, and a trial frees the half-open slot for the next caller.
#[derive(Debug)]
pub(crate) struct Permit {
    breaker: Arc<CircuitBreaker>,
    trial: bool,
    number: u32,
    settled: bool,
}

impl Permit {
    /// True while the permit may still be used: a trial always, a normal permit only while the
    /// breaker stays closed (a balancer re-checks an endpoint it picked a while ago).
    pub(crate) fn still_valid(&self) -> bool {
        self.trial || matches!(self.breaker.lock().state, State::Closed { .. })
    }

    /// Records the attempt's outcome.
    pub(crate) fn settle(self, health: Health) {
        self.finish(Outcome::Health(health));
    }

    /// Records that the endpoint could not be reached at all: opens the breaker at once.
    pub(crate) fn trip(self) {
        self.finish(Outcome::Unreachable);
    }

    fn finish(mut self, outcome: Outcome) {
        self.settled = true;
        let breaker = &self.breaker;
        let mut inner = breaker.lock();
        let threshold = breaker.config.failure_threshold.max(1);
        let open = State::Open {
            until: Instant::now() + breaker.config.open_for,
        };
        let change = match (inner.state, outcome) {
            (State::Closed { .. }, Outcome::Health(Health::Healthy)) => {
                inner.state = State::Closed {
                    consecutive_failures: 0,
                };
                None
            }
            (
                State::Closed {
                    consecutive_failures,
                },
                Outcome::Health(Health::Unhealthy) | Outcome::Unreachable,
            ) => {
                let failures = consecutive_failures.saturating_add(1);
                if failures >= threshold || outcome == Outcome::Unreachable {
                    inner.state = open;
                    Some((BreakerState::Open, failures))
                } else {
                    inner.state = State::Closed {
                        consecutive_failures: failures,
                    };
                    None
                }
            }
            (State::HalfOpen { .. }, Outcome::Health(Health::Healthy)) if self.trial => {
                inner.state = State::Closed {
                    consecutive_failures: 0,
                };
                Some((BreakerState::Closed, 0))
            }
            (State::HalfOpen { .. }, Outcome::Health(Health::Unhealthy) | Outcome::Unreachable)
                if self.trial =>
            {
                inner.state = open;
                Some((BreakerState::Open, 1))
            }
            // Outcomes of calls admitted before the breaker opened are stale: ignored.
            _ => None,
        };
        if change.is_some() {
            inner.wake_waiters();
        }
        drop(inner);
        if let Some((state, failures)) = change {
            breaker.log_change(state, self.number, failures);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Health(Health),
    Unreachable,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.trial && !self.settled {
            let mut inner = self.breaker.lock();
            if let State::HalfOpen { .. } = inner.state {
                inner.state = State::HalfOpen {
                    trial_in_flight: false,
                };
                inner.wake_waiters();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(threshold: u32) -> Arc<CircuitBreaker> {
        CircuitBreaker::new(
            "loyalty",
            Some("http://127.0.0.1:1".to_owned()),
            BreakerConfig {
                failure_threshold: threshold,
                open_for: Duration::from_secs(5),
            },
            Duration::from_secs(1),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreachable_endpoint_opens_the_breaker_at_once_below_the_threshold() {
        let breaker = breaker(5);
        breaker.admit(1).unwrap().trip();
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(matches!(breaker.would_admit(), Err(Refusal::Open { .. })));
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreachable_trial_reopens_the_breaker() {
        let breaker = breaker(1);
        breaker.admit(1).unwrap().trip();
        tokio::time::advance(Duration::from_secs(5)).await;
        let trial = breaker.admit(2).unwrap();
        assert_eq!(breaker.would_admit(), Err(Refusal::TrialInFlight));
        trial.trip();
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_waiter_is_woken_when_the_trial_settles() {
        let breaker = breaker(1);
        breaker.admit(1).unwrap().settle(Health::Unhealthy);
        tokio::time::advance(Duration::from_secs(5)).await;
        let trial = breaker.admit(2).unwrap();
        let woken = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let waker = waker_fn(woken.clone());
        let mut cx = Context::from_waker(&waker);
        assert_eq!(
            breaker.poll_admit(&mut cx, 3).unwrap_err(),
            Refusal::TrialInFlight
        );
        trial.settle(Health::Healthy);
        assert!(woken.load(std::sync::atomic::Ordering::SeqCst));
        assert!(breaker.poll_admit(&mut cx, 4).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_normal_permit_stops_being_valid_when_the_breaker_opens() {
        let breaker = breaker(1);
        let held = breaker.admit(1).unwrap();
        assert!(held.still_valid());
        breaker.admit(2).unwrap().settle(Health::Unhealthy);
        assert!(!held.still_valid());
    }

    fn waker_fn(flag: Arc<std::sync::atomic::AtomicBool>) -> Waker {
        struct Flag(Arc<std::sync::atomic::AtomicBool>);
        impl std::task::Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        Waker::from(Arc::new(Flag(flag)))
    }
}
