//! Which failed attempts of a repeatable method are worth another attempt.
//!
//! - `UNAVAILABLE`: the callee (or the way to it) is down or shedding load; nothing suggests the
//!   request itself is at fault. Retried, after the callee's `RetryInfo` delay when it sent one.
//! - `RESOURCE_EXHAUSTED` and `ABORTED` only with a `RetryInfo`: with it the callee says "come
//!   back in N ms" (a rate limit, an idempotency key still in flight); without it they are limits
//!   or conflicts a repeat would meet again (a message too large, a lost compare-and-set the
//!   caller must re-read for).
//! - The attempt ran out of its time (our timer, or the callee's `DEADLINE_EXCEEDED` for the
//!   `grpc-timeout` we sent): retried while the caller's deadline leaves room.
//! - Everything else is the callee's answer: final.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::StatusExt as _;

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The answer stands.
    Final,
    /// Worth another attempt, no sooner than `after` when the callee said so.
    Transient { after: Option<Duration> },
}

/// Judges one failed attempt (`timed_out`: it ran out of time rather than being answered).
pub(crate) fn judge(status: &Status, timed_out: bool) -> Verdict {
    if timed_out {
        return Verdict::Transient { after: None };
    }
    let asked_delay = || {
        status
            .get_details_retry_info()
            .and_then(|info| info.retry_delay)
    };
    match status.code() {
        Code::Unavailable => Verdict::Transient {
            after: asked_delay(),
        },
        Code::ResourceExhausted | Code::Aborted => match asked_delay() {
            Some(after) => Verdict::Transient { after: Some(after) },
            None => Verdict::Final,
        },
        _ => Verdict::Final,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::ErrorDetails;

    fn with_retry_info(code: Code, delay: Duration) -> Status {
        Status::with_error_details(code, "later", ErrorDetails::with_retry_info(Some(delay)))
    }

    #[test]
    fn unavailable_is_transient_and_carries_the_callees_delay() {
        assert_eq!(
            judge(&Status::unavailable("down"), false),
            Verdict::Transient { after: None }
        );
        assert_eq!(
            judge(
                &with_retry_info(Code::Unavailable, Duration::from_millis(250)),
                false
            ),
            Verdict::Transient {
                after: Some(Duration::from_millis(250))
            }
        );
    }

    #[test]
    fn resource_exhausted_and_aborted_are_transient_only_with_retry_info() {
        for code in [Code::ResourceExhausted, Code::Aborted] {
            assert_eq!(judge(&Status::new(code, "no"), false), Verdict::Final);
            assert_eq!(
                judge(&with_retry_info(code, Duration::from_millis(500)), false),
                Verdict::Transient {
                    after: Some(Duration::from_millis(500))
                }
            );
        }
    }

    #[test]
    fn answers_are_final_and_timeouts_are_transient() {
        for code in [
            Code::InvalidArgument,
            Code::FailedPrecondition,
            Code::NotFound,
            Code::Internal,
            Code::Unknown,
            Code::DeadlineExceeded,
            Code::Cancelled,
        ] {
            assert_eq!(judge(&Status::new(code, "no"), false), Verdict::Final);
        }
        assert_eq!(
            judge(&Status::deadline_exceeded("slow"), true),
            Verdict::Transient { after: None }
        );
    }
}
