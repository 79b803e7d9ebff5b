//! The outbound call policy: timeouts, deadlines, retries with full jitter, circuit breaker.
//! Every test runs on paused tokio time, so sleeps and timeouts are exact and instant.

use std::future::{Future, pending};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use platform::outbound::{
    BreakerConfig, BreakerState, Classify, Idempotent, Outbound, OutboundError, OutboundPolicy,
};
use tokio::time::Instant;

/// A PSP's answers: `Unavailable` is transient; `Declined` is the PSP saying no.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PspError {
    Unavailable,
    Declined,
}

impl Classify for PspError {
    fn retryable(&self) -> bool {
        matches!(self, PspError::Unavailable)
    }
}

fn policy() -> OutboundPolicy {
    OutboundPolicy {
        timeout: Duration::from_millis(100),
        max_attempts: 3,
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(40),
        breaker: BreakerConfig {
            failure_threshold: 3,
            open_for: Duration::from_secs(5),
        },
        ..OutboundPolicy::new("psp")
    }
}

/// One attempt per call, so each call is one breaker outcome.
fn single_attempt_policy() -> OutboundPolicy {
    OutboundPolicy {
        max_attempts: 1,
        ..policy()
    }
}

/// An attempt that answers `result` at once.
fn answer(
    result: Result<&'static str, PspError>,
) -> impl Future<Output = Result<&'static str, PspError>> {
    std::future::ready(result)
}

/// An attempt that never answers.
async fn hang() -> Result<&'static str, PspError> {
    pending().await
}

/// Calls `outbound` once (one attempt) with `result`, counting the attempt in `calls`.
async fn call_once(
    outbound: &Outbound,
    calls: &AtomicU32,
    result: Result<&'static str, PspError>,
) -> Result<&'static str, OutboundError<PspError>> {
    outbound
        .call(Idempotent::Yes, |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            answer(result)
        })
        .await
}

#[tokio::test(start_paused = true)]
async fn succeeds_on_the_first_attempt_without_retrying() {
    let outbound = Outbound::new(policy());
    let mut attempts = Vec::new();
    let result = outbound
        .call(Idempotent::Yes, |n| {
            attempts.push(n);
            answer(Ok("auth_1"))
        })
        .await;
    assert_eq!(result.unwrap(), "auth_1");
    assert_eq!(attempts, [1]);
}

#[tokio::test(start_paused = true)]
async fn retries_a_retryable_error_of_an_idempotent_call_and_succeeds_on_attempt_three() {
    let outbound = Outbound::new(policy());
    let mut attempts = Vec::new();
    let result = outbound
        .call(Idempotent::Yes, |n| {
            attempts.push(n);
            answer(if n < 3 {
                Err(PspError::Unavailable)
            } else {
                Ok("auth_3")
            })
        })
        .await;
    assert_eq!(result.unwrap(), "auth_3");
    assert_eq!(attempts, [1, 2, 3]);
}

#[tokio::test(start_paused = true)]
async fn gives_up_with_the_last_error_when_attempts_run_out() {
    let outbound = Outbound::new(policy());
    let calls = AtomicU32::new(0);
    let result = call_once(&outbound, &calls, Err(PspError::Unavailable)).await;
    assert!(matches!(
        result,
        Err(OutboundError::Failed(PspError::Unavailable))
    ));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn does_not_retry_a_non_retryable_error() {
    let outbound = Outbound::new(policy());
    let calls = AtomicU32::new(0);
    let result = call_once(&outbound, &calls, Err(PspError::Declined)).await;
    assert!(matches!(
        result,
        Err(OutboundError::Failed(PspError::Declined))
    ));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn does_not_retry_a_retryable_error_of_a_non_idempotent_call() {
    let outbound = Outbound::new(policy());
    let calls = AtomicU32::new(0);
    let result = outbound
        .call(Idempotent::No, |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            answer(Err(PspError::Unavailable))
        })
        .await;
    assert!(matches!(
        result,
        Err(OutboundError::Failed(PspError::Unavailable))
    ));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn does_not_retry_a_non_idempotent_calls_timeout_and_reports_timeout() {
    let outbound = Outbound::new(policy());
    let calls = AtomicU32::new(0);
    let started = Instant::now();
    let result = outbound
        .call(Idempotent::No, |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            hang()
        })
        .await;
    let error = result.unwrap_err();
    assert!(matches!(error, OutboundError::Timeout));
    assert!(error.outcome_unknown());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(started.elapsed(), Duration::from_millis(100));
}

#[tokio::test(start_paused = true)]
async fn each_attempt_is_cut_at_the_per_attempt_timeout() {
    let outbound = Outbound::new(OutboundPolicy {
        backoff_base: Duration::ZERO,
        ..policy()
    });
    let started = Instant::now();
    let mut attempt_starts = Vec::new();
    let result = outbound
        .call(Idempotent::Yes, |_| {
            attempt_starts.push(started.elapsed());
            hang()
        })
        .await;
    assert!(matches!(result, Err(OutboundError::Timeout)));
    // No backoff: each attempt starts when the previous one timed out.
    let ms = Duration::from_millis;
    assert_eq!(attempt_starts, [ms(0), ms(100), ms(200)]);
    assert_eq!(started.elapsed(), ms(300));
}

#[tokio::test(start_paused = true)]
async fn a_slow_answer_within_the_timeout_is_accepted() {
    let outbound = Outbound::new(policy());
    let result = outbound
        .call(Idempotent::No, |_| async {
            tokio::time::sleep(Duration::from_millis(99)).await;
            Ok::<_, PspError>("auth_slow")
        })
        .await;
    assert_eq!(result.unwrap(), "auth_slow");
}

#[tokio::test(start_paused = true)]
async fn the_callers_deadline_cuts_an_attempt_short_and_is_not_exceeded() {
    let outbound = Outbound::new(OutboundPolicy {
        timeout: Duration::from_secs(10),
        ..policy()
    });
    let started = Instant::now();
    let calls = AtomicU32::new(0);
    let result = outbound
        .call_until(
            started + Duration::from_millis(250),
            Idempotent::Yes,
            |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                hang()
            },
        )
        .await;
    // Cut mid-flight: the outcome is unknown, whatever the reason.
    assert!(matches!(result, Err(OutboundError::Timeout)));
    assert_eq!(started.elapsed(), Duration::from_millis(250));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // The caller's own deadline says nothing about the dependency's health.
    assert_eq!(outbound.breaker_state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn retries_stop_before_the_callers_deadline() {
    let outbound = Outbound::new(OutboundPolicy {
        max_attempts: 100,
        breaker: BreakerConfig {
            failure_threshold: u32::MAX,
            ..BreakerConfig::default()
        },
        ..policy()
    });
    let started = Instant::now();
    let deadline = started + Duration::from_millis(330);
    let calls = AtomicU32::new(0);
    let result = outbound
        .call_until(deadline, Idempotent::Yes, |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            hang()
        })
        .await;
    assert!(matches!(result, Err(OutboundError::Timeout)));
    assert!(Instant::now() <= deadline);
    // 100 ms attempts plus at most 40 ms backoff each: at most 4 fit in 330 ms.
    let calls = calls.load(Ordering::SeqCst);
    assert!((2..=4).contains(&calls), "{calls} attempts");
}

#[tokio::test(start_paused = true)]
async fn a_deadline_already_passed_sends_nothing() {
    let outbound = Outbound::new(policy());
    let calls = AtomicU32::new(0);
    let result = outbound
        .call_until(Instant::now(), Idempotent::Yes, |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            answer(Ok("never"))
        })
        .await;
    assert!(matches!(result, Err(OutboundError::DeadlineExceeded)));
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn a_std_deadline_is_accepted() {
    let outbound = Outbound::new(policy());
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    let result = outbound
        .call_until(deadline, Idempotent::Yes, |_| answer(Ok("auth")))
        .await;
    assert_eq!(result.unwrap(), "auth");
}

#[test]
fn backoff_ceiling_doubles_up_to_the_maximum() {
    let policy = OutboundPolicy {
        backoff_base: Duration::from_millis(100),
        backoff_max: Duration::from_millis(700),
        ..OutboundPolicy::new("psp")
    };
    let ceilings: Vec<u128> = (1..=6)
        .map(|attempt| policy.backoff_ceiling(attempt).as_millis())
        .collect();
    assert_eq!(ceilings, [100, 200, 400, 700, 700, 700]);
    assert_eq!(policy.backoff_ceiling(u32::MAX), Duration::from_millis(700));
}

#[tokio::test(start_paused = true)]
async fn backoff_delays_stay_within_the_full_jitter_bounds() {
    let policy = OutboundPolicy {
        max_attempts: 6,
        backoff_base: Duration::from_millis(100),
        backoff_max: Duration::from_millis(400),
        breaker: BreakerConfig {
            failure_threshold: u32::MAX,
            ..BreakerConfig::default()
        },
        ..policy()
    };
    let outbound = Outbound::new(policy.clone());
    let mut delays_after: Vec<Vec<Duration>> = vec![Vec::new(); 5];
    for _ in 0..40 {
        let mut starts = Vec::new();
        let result = outbound
            .call(Idempotent::Yes, |_| {
                starts.push(Instant::now());
                answer(Err(PspError::Unavailable))
            })
            .await;
        assert!(matches!(
            result,
            Err(OutboundError::Failed(PspError::Unavailable))
        ));
        assert_eq!(starts.len(), 6);
        for (retry, pair) in starts.windows(2).enumerate() {
            delays_after[retry].push(pair[1] - pair[0]);
        }
    }
    for (index, delays) in delays_after.iter().enumerate() {
        let ceiling = policy.backoff_ceiling(index as u32 + 1);
        // tokio's timer rounds a sleep up to the next millisecond.
        let bound = ceiling + Duration::from_millis(1);
        assert!(
            delays.iter().all(|delay| *delay <= bound),
            "after attempt {}: {delays:?} exceeds {ceiling:?}",
            index + 1
        );
        // Full jitter spreads the delays over [0, ceiling] rather than sitting at the ceiling.
        let mut distinct = delays.clone();
        distinct.sort();
        distinct.dedup();
        assert!(
            distinct.len() > 5,
            "after attempt {}: {delays:?}",
            index + 1
        );
        assert!(delays.iter().any(|delay| *delay < ceiling / 2));
    }
}

#[tokio::test(start_paused = true)]
async fn breaker_opens_after_consecutive_unhealthy_failures_and_fails_fast_without_calling() {
    let outbound = Outbound::new(single_attempt_policy());
    let calls = AtomicU32::new(0);
    for _ in 0..3 {
        assert_eq!(outbound.breaker_state(), BreakerState::Closed);
        let result = call_once(&outbound, &calls, Err(PspError::Unavailable)).await;
        assert!(matches!(
            result,
            Err(OutboundError::Failed(PspError::Unavailable))
        ));
    }
    assert_eq!(outbound.breaker_state(), BreakerState::Open);
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    tokio::time::advance(Duration::from_secs(2)).await;
    let result = call_once(&outbound, &calls, Ok("never")).await;
    match result {
        Err(OutboundError::CircuitOpen { retry_after }) => {
            assert_eq!(retry_after, Duration::from_secs(3));
        }
        other => panic!("expected CircuitOpen, got {other:?}"),
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "an open breaker must not call"
    );
}

#[tokio::test(start_paused = true)]
async fn timeouts_count_against_the_breaker() {
    let outbound = Outbound::new(single_attempt_policy());
    for _ in 0..3 {
        let result = outbound.call(Idempotent::No, |_| hang()).await;
        assert!(matches!(result, Err(OutboundError::Timeout)));
    }
    assert_eq!(outbound.breaker_state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn a_success_resets_the_count_of_consecutive_failures() {
    let outbound = Outbound::new(single_attempt_policy());
    let calls = AtomicU32::new(0);
    for _ in 0..2 {
        let _ = call_once(&outbound, &calls, Err(PspError::Unavailable)).await;
    }
    call_once(&outbound, &calls, Ok("auth")).await.unwrap();
    for _ in 0..2 {
        let _ = call_once(&outbound, &calls, Err(PspError::Unavailable)).await;
    }
    assert_eq!(outbound.breaker_state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn business_errors_do_not_open_the_breaker() {
    let outbound = Outbound::new(single_attempt_policy());
    let calls = AtomicU32::new(0);
    for _ in 0..20 {
        let result = call_once(&outbound, &calls, Err(PspError::Declined)).await;
        assert!(matches!(
            result,
            Err(OutboundError::Failed(PspError::Declined))
        ));
    }
    assert_eq!(outbound.breaker_state(), BreakerState::Closed);
    assert_eq!(calls.load(Ordering::SeqCst), 20);
    // A decline is a healthy answer: it breaks a run of failures too.
    for error in [
        PspError::Unavailable,
        PspError::Unavailable,
        PspError::Declined,
    ] {
        let _ = call_once(&outbound, &calls, Err(error)).await;
    }
    let _ = call_once(&outbound, &calls, Err(PspError::Unavailable)).await;
    assert_eq!(outbound.breaker_state(), BreakerState::Closed);
}

/// Opens `outbound`'s breaker with three unhealthy failures.
async fn open_breaker(outbound: &Outbound) {
    let calls = AtomicU32::new(0);
    for _ in 0..3 {
        let _ = call_once(outbound, &calls, Err(PspError::Unavailable)).await;
    }
    assert_eq!(outbound.breaker_state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn breaker_half_opens_after_open_for_and_closes_on_a_successful_trial() {
    let outbound = Outbound::new(single_attempt_policy());
    open_breaker(&outbound).await;
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(outbound.breaker_state(), BreakerState::HalfOpen);

    let calls = AtomicU32::new(0);
    assert_eq!(
        call_once(&outbound, &calls, Ok("trial")).await.unwrap(),
        "trial"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(outbound.breaker_state(), BreakerState::Closed);
    assert_eq!(
        call_once(&outbound, &calls, Ok("next")).await.unwrap(),
        "next"
    );
}

#[tokio::test(start_paused = true)]
async fn breaker_reopens_when_the_trial_fails() {
    let outbound = Outbound::new(single_attempt_policy());
    open_breaker(&outbound).await;
    tokio::time::advance(Duration::from_secs(5)).await;

    let calls = AtomicU32::new(0);
    let trial = call_once(&outbound, &calls, Err(PspError::Unavailable)).await;
    assert!(matches!(
        trial,
        Err(OutboundError::Failed(PspError::Unavailable))
    ));
    assert_eq!(outbound.breaker_state(), BreakerState::Open);

    // Open for a full `open_for` again, failing fast.
    let result = call_once(&outbound, &calls, Ok("never")).await;
    assert!(
        matches!(result, Err(OutboundError::CircuitOpen { retry_after }) if retry_after == Duration::from_secs(5))
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_declined_trial_closes_the_breaker() {
    let outbound = Outbound::new(single_attempt_policy());
    open_breaker(&outbound).await;
    tokio::time::advance(Duration::from_secs(5)).await;
    let calls = AtomicU32::new(0);
    let _ = call_once(&outbound, &calls, Err(PspError::Declined)).await;
    assert_eq!(outbound.breaker_state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn half_open_lets_exactly_one_trial_through_concurrent_callers() {
    let outbound = Outbound::new(single_attempt_policy());
    open_breaker(&outbound).await;
    tokio::time::advance(Duration::from_secs(5)).await;

    let calls = Arc::new(AtomicU32::new(0));
    let tasks: Vec<_> = (0..5)
        .map(|_| {
            let outbound = outbound.clone();
            let calls = calls.clone();
            tokio::spawn(async move {
                outbound
                    .call(Idempotent::Yes, |_| {
                        calls.fetch_add(1, Ordering::SeqCst);
                        async {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            Ok::<_, PspError>("trial")
                        }
                    })
                    .await
            })
        })
        .collect();
    let mut succeeded = 0;
    let mut failed_fast = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => succeeded += 1,
            Err(OutboundError::CircuitOpen { .. }) => failed_fast += 1,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((succeeded, failed_fast), (1, 4));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(outbound.breaker_state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn an_abandoned_trial_frees_the_half_open_slot() {
    let outbound = Outbound::new(single_attempt_policy());
    open_breaker(&outbound).await;
    tokio::time::advance(Duration::from_secs(5)).await;

    // The trial's caller gives up (its own timeout drops the call future).
    let abandoned = tokio::time::timeout(
        Duration::from_millis(10),
        outbound.call(Idempotent::Yes, |_| hang()),
    )
    .await;
    assert!(abandoned.is_err());
    assert_eq!(outbound.breaker_state(), BreakerState::HalfOpen);

    let calls = AtomicU32::new(0);
    assert_eq!(
        call_once(&outbound, &calls, Ok("trial")).await.unwrap(),
        "trial"
    );
    assert_eq!(outbound.breaker_state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn concurrent_callers_share_one_breaker() {
    let outbound = Outbound::new(single_attempt_policy());
    let calls = Arc::new(AtomicU32::new(0));
    // Three callers on different tasks, each failing once, open the breaker for all clones.
    let tasks: Vec<_> = (0..3)
        .map(|_| {
            let outbound = outbound.clone();
            let calls = calls.clone();
            tokio::spawn(async move {
                outbound
                    .call(Idempotent::Yes, |_| {
                        calls.fetch_add(1, Ordering::SeqCst);
                        async {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            Err::<&str, _>(PspError::Unavailable)
                        }
                    })
                    .await
            })
        })
        .collect();
    for task in tasks {
        assert!(matches!(
            task.await.unwrap(),
            Err(OutboundError::Failed(PspError::Unavailable))
        ));
    }
    let another_clone = outbound.clone();
    assert_eq!(another_clone.breaker_state(), BreakerState::Open);
    let result = call_once(&another_clone, &calls, Ok("never")).await;
    assert!(matches!(result, Err(OutboundError::CircuitOpen { .. })));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn a_breaker_opened_mid_call_stops_that_calls_retries() {
    let outbound = Outbound::new(OutboundPolicy {
        max_attempts: 10,
        ..policy()
    });
    let calls = AtomicU32::new(0);
    let result = call_once(&outbound, &calls, Err(PspError::Unavailable)).await;
    // The third failure opens the breaker; the fourth attempt fails fast.
    assert!(matches!(result, Err(OutboundError::CircuitOpen { .. })));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[test]
fn grpc_statuses_are_classified() {
    let unavailable = tonic::Status::unavailable("down");
    assert!(unavailable.retryable() && unavailable.counts_against_breaker());
    let aborted = tonic::Status::aborted("concurrent duplicate");
    assert!(aborted.retryable() && !aborted.counts_against_breaker());
    let internal = tonic::Status::internal("bug");
    assert!(!internal.retryable() && internal.counts_against_breaker());
    let declined = tonic::Status::failed_precondition("card declined");
    assert!(!declined.retryable() && !declined.counts_against_breaker());
}

#[test]
fn a_call_is_a_send_future_for_use_in_handlers() {
    fn assert_send<T: Send>(_: &T) {}
    let outbound = Outbound::new(policy());
    let call = outbound.call(Idempotent::Yes, |_| answer(Ok("auth")));
    assert_send(&call);
}

/// A dependency whose reply can be lost: `Lost` may have acted, `Down` certainly did not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flaky {
    Lost,
    Down,
}

impl Classify for Flaky {
    fn retryable(&self) -> bool {
        true
    }

    fn outcome_unknown(&self) -> bool {
        *self == Flaky::Lost
    }
}

#[tokio::test(start_paused = true)]
async fn a_call_whose_first_attempt_may_have_acted_never_ends_as_nothing_happened() {
    // A lost reply, then the dependency is down for the retries: the call may have been done.
    let outbound = Outbound::new(policy());
    let result = outbound
        .call(Idempotent::Yes, |n| {
            std::future::ready(Err::<(), _>(if n == 1 { Flaky::Lost } else { Flaky::Down }))
        })
        .await;
    assert!(matches!(result, Err(OutboundError::Timeout)), "{result:?}");

    // An attempt that timed out, then a breaker that opens: still unknown, not "circuit open".
    let outbound = Outbound::new(OutboundPolicy {
        breaker: BreakerConfig {
            failure_threshold: 1,
            open_for: Duration::from_secs(5),
        },
        ..policy()
    });
    let result: Result<(), _> = outbound
        .call(Idempotent::Yes, |n| async move {
            if n == 1 {
                pending::<Result<(), Flaky>>().await
            } else {
                Err(Flaky::Down)
            }
        })
        .await;
    assert!(matches!(result, Err(OutboundError::Timeout)), "{result:?}");

    // Nothing ever acted: the last error says so.
    let outbound = Outbound::new(policy());
    let result = outbound
        .call(Idempotent::Yes, |_| {
            std::future::ready(Err::<(), _>(Flaky::Down))
        })
        .await;
    assert!(
        matches!(result, Err(OutboundError::Failed(Flaky::Down))),
        "{result:?}"
    );
}
