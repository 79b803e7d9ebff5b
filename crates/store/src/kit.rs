//! The record-and-retry kit every service writes its aggregates with: a [`Commit`] built from a
//! protobuf record, [`Versioned::decode`] for loading one back, and [`retry_on_conflict`] for the
//! optimistic-concurrency loop (re-read, recompute, commit; back off when another writer won).

use std::time::Duration;

use bytes::Bytes;

use crate::{AggregateKey, Commit, IdempotencyRecord, IndexEntry, OutboxEvent, Versioned};

impl Commit {
    /// A commit writing `record` as the aggregate's state, computed from `expected_version`
    /// (0 creates the aggregate). No index entries, events or idempotency record yet.
    pub fn record(
        key: AggregateKey,
        expected_version: u64,
        record: &impl prost::Message,
    ) -> Commit {
        Commit {
            key,
            expected_version,
            data: Bytes::from(record.encode_to_vec()),
            index: Vec::new(),
            events: Vec::new(),
            idempotency: None,
        }
    }

    /// The aggregate's secondary keys after the change (they replace the previous ones).
    pub fn indexed(mut self, index: Vec<IndexEntry>) -> Commit {
        self.index = index;
        self
    }

    /// The events the change emits (written to the outbox in the same commit).
    pub fn emitting(mut self, events: Vec<OutboxEvent>) -> Commit {
        self.events = events;
        self
    }

    /// The idempotency record of the keyed request that made the change, if any.
    pub fn answering(mut self, idempotency: Option<IdempotencyRecord>) -> Commit {
        self.idempotency = idempotency;
        self
    }
}

/// A stored record that does not decode as the message it should be: the store holds bytes
/// this build cannot read (a bug, or a record written by something else). Services report it as
/// their `Corrupt` error (an `internal` answer), never as a panic.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{what}: {error}")]
pub struct CorruptRecord {
    /// What was being decoded (e.g. `order o-1`).
    pub what: String,
    /// The decoder's complaint.
    pub error: prost::DecodeError,
}

impl Versioned {
    /// The stored state decoded as `M`; `what` names it in the error.
    pub fn decode<M: prost::Message + Default>(&self, what: &str) -> Result<M, CorruptRecord> {
        M::decode(self.data.as_ref()).map_err(|error| CorruptRecord {
            what: what.to_owned(),
            error,
        })
    }
}

/// An error an optimistic-concurrency attempt can end with.
pub trait Contention: Sized {
    /// Whether re-reading everything and trying again may succeed (another writer moved
    /// something this attempt read).
    fn is_conflict(&self) -> bool;
    /// The error to answer with when every attempt lost its race (`last` is the final conflict).
    fn contended(last: Self) -> Self;
}

/// How often and how patiently [`retry_on_conflict`] tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Attempts in all (at least one is made).
    pub attempts: u32,
    /// The ceiling of the first pause; each later ceiling doubles, up to `max_pause`. Every
    /// pause is drawn uniformly below its ceiling ("full jitter"), so racing writers spread out
    /// instead of retrying in lockstep.
    pub first_pause: Duration,
    /// The largest ceiling.
    pub max_pause: Duration,
}

impl Retry {
    /// For writes racing other requests on one aggregate (a hot member, order or subscription):
    /// 64 attempts, pauses from 200 µs growing to at most 25.6 ms.
    pub const CONTENDED: Retry = Retry {
        attempts: 64,
        first_pause: Duration::from_micros(200),
        max_pause: Duration::from_micros(25_600),
    };

    /// The ceiling of the pause after attempt `round` (1-based) failed.
    fn ceiling(&self, round: u32) -> Duration {
        let doubled = self
            .first_pause
            .checked_mul(1u32 << (round.saturating_sub(1)).min(20))
            .unwrap_or(self.max_pause);
        doubled.min(self.max_pause)
    }

    /// A jittered pause after attempt `round` (1-based) failed.
    pub async fn pause(&self, round: u32) {
        let ceiling = self.ceiling(round).as_micros() as u64;
        tokio::time::sleep(Duration::from_micros(fastrand::u64(0..=ceiling))).await;
    }
}

/// Runs `attempt` until it ends with anything but a conflict, at most `policy.attempts` times,
/// pausing between attempts; when every attempt conflicted, answers `E::contended(last)`.
/// `attempt` must re-read what it depends on each time (it is the whole read-compute-commit).
///
/// Call it as `retry_on_conflict(Retry::CONTENDED, || async move { … }).await`, capturing
/// references (`let request = &request;` first for owned values). It takes a closure returning
/// a future rather than an async closure because a future returned by an `AsyncFnMut` cannot yet
/// be proven `Send` on stable Rust, and tonic handlers must be `Send`.
pub async fn retry_on_conflict<T, E, Attempt, Outcome>(
    policy: Retry,
    mut attempt: Attempt,
) -> Result<T, E>
where
    E: Contention,
    Attempt: FnMut() -> Outcome,
    Outcome: std::future::Future<Output = Result<T, E>>,
{
    let mut round = 0u32;
    loop {
        round += 1;
        match attempt().await {
            Err(error) if error.is_conflict() => {
                if round >= policy.attempts.max(1) {
                    return Err(E::contended(error));
                }
                policy.pause(round).await;
            }
            outcome => return outcome,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    enum Outcome {
        Conflict(u32),
        Contended(u32),
        Other,
    }

    impl Contention for Outcome {
        fn is_conflict(&self) -> bool {
            matches!(self, Outcome::Conflict(_))
        }
        fn contended(last: Self) -> Self {
            match last {
                Outcome::Conflict(round) => Outcome::Contended(round),
                other => other,
            }
        }
    }

    const QUICK: Retry = Retry {
        attempts: 5,
        first_pause: Duration::from_micros(10),
        max_pause: Duration::from_micros(40),
    };

    #[tokio::test]
    async fn a_conflict_is_retried_until_the_attempt_wins() {
        let calls = std::cell::Cell::new(0);
        let outcome: Result<u32, Outcome> = retry_on_conflict(QUICK, || async {
            calls.set(calls.get() + 1);
            if calls.get() < 3 {
                Err(Outcome::Conflict(calls.get()))
            } else {
                Ok(calls.get())
            }
        })
        .await;
        assert_eq!(outcome, Ok(3));
    }

    #[tokio::test]
    async fn retries_stop_at_the_limit_with_the_contended_error() {
        let calls = std::cell::Cell::new(0);
        let outcome: Result<(), Outcome> = retry_on_conflict(QUICK, || async {
            calls.set(calls.get() + 1);
            Err(Outcome::Conflict(calls.get()))
        })
        .await;
        assert_eq!(outcome, Err(Outcome::Contended(5)));
        assert_eq!(calls.get(), 5);
    }

    #[tokio::test]
    async fn any_other_error_ends_at_once() {
        let calls = std::cell::Cell::new(0);
        let outcome: Result<(), Outcome> = retry_on_conflict(QUICK, || async {
            calls.set(calls.get() + 1);
            Err(Outcome::Other)
        })
        .await;
        assert_eq!(outcome, Err(Outcome::Other));
        assert_eq!(calls.get(), 1);
    }

    #[test]
    fn pause_ceilings_double_up_to_the_maximum() {
        let ceilings: Vec<u128> = (1..=5)
            .map(|round| QUICK.ceiling(round).as_micros())
            .collect();
        assert_eq!(ceilings, [10, 20, 40, 40, 40]);
        assert_eq!(Retry::CONTENDED.ceiling(64), Duration::from_micros(25_600));
    }

    #[test]
    fn a_record_decodes_back_and_garbage_is_a_corrupt_record() {
        let commit = Commit::record(
            AggregateKey::new("t", "thing", "1"),
            0,
            &prost_types::Duration {
                seconds: 7,
                nanos: 0,
            },
        );
        let stored = Versioned {
            version: 1,
            data: commit.data.clone(),
        };
        let back: prost_types::Duration = stored.decode("thing 1").unwrap();
        assert_eq!(back.seconds, 7);
        let garbage = Versioned {
            version: 1,
            data: Bytes::from_static(&[0xff, 0xff, 0xff]),
        };
        let error = garbage
            .decode::<prost_types::Duration>("thing 2")
            .unwrap_err();
        assert!(error.to_string().starts_with("thing 2: "), "{error}");
    }
}
