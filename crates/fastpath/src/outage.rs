//! What the process knows about Redis being reachable. Once a call finds Redis unreachable (it
//! refused the connection, dropped it, or did not answer within the response timeout), every
//! later call through any clone of that connection fails at once — the fast path answers from
//! its local fallbacks without waiting on a Redis already known to be down — while one background
//! task pings it. The first answered ping ends the outage and calls go to Redis again.
//!
//! Only failures that say Redis is *unreachable* start an outage; an error Redis answered with
//! (a script error, a full memory, a missing consumer group) says it is up.

use std::sync::Weak;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::{ErrorKind, RedisError, ServerErrorKind};

/// How long the probe waits between pings (a ping itself is bounded by the connection's
/// response timeout).
pub(crate) const PROBE_INTERVAL: Duration = Duration::from_millis(250);

/// Whether Redis is known to be down; shared by every clone of one connection.
#[derive(Debug, Default)]
pub(crate) struct Outage {
    down: AtomicBool,
}

impl Outage {
    /// True from the first unreachable failure until a probe answers.
    pub(crate) fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    /// Notes that `error` happened; `true` when it begins an outage, so the caller starts the
    /// (single) probe.
    pub(crate) fn begins_outage(&self, error: &RedisError) -> bool {
        is_unreachable(error)
            && self
                .down
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// The probe reached Redis.
    pub(crate) fn end(&self) {
        self.down.store(false, Ordering::Release);
    }
}

/// The error every call gets, at once, while Redis is known to be down.
pub(crate) fn known_down() -> RedisError {
    RedisError::from((
        ErrorKind::Io,
        "Redis is unreachable",
        "not tried: a background probe reconnects; the fast path runs on its local fallbacks meanwhile"
            .to_owned(),
    ))
}

/// Failures that mean Redis cannot be reached or cannot serve at all right now.
fn is_unreachable(error: &RedisError) -> bool {
    error.is_io_error() // refused, reset, dropped, timed out
        || matches!(
            error.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    ServerErrorKind::ClusterDown
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::BusyLoading
                )
        )
}

/// Pings with `ping` every [`PROBE_INTERVAL`] until one answers, then ends the outage. Stops
/// early when every handle on the connection is gone.
pub(crate) async fn probe<F, Fut>(outage: Weak<Outage>, mut ping: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), RedisError>>,
{
    tracing::warn!(
        "Redis unreachable: the fast path runs on its local fallbacks; probing every {} ms",
        PROBE_INTERVAL.as_millis()
    );
    loop {
        tokio::time::sleep(PROBE_INTERVAL).await;
        let Some(outage) = outage.upgrade() else {
            return;
        };
        if ping().await.is_ok() {
            outage.end();
            tracing::info!("Redis reachable again: the fast path uses it");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failures_to_reach_redis_begin_an_outage() {
        let outage = Outage::default();
        let script_error = RedisError::from((
            ErrorKind::Server(ServerErrorKind::ResponseError),
            "ERR",
            "user script failed".to_owned(),
        ));
        assert!(!outage.begins_outage(&script_error));
        assert!(!outage.is_down());

        let refused = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(
            outage.begins_outage(&refused),
            "the first failure begins it"
        );
        assert!(outage.is_down());
        assert!(!outage.begins_outage(&refused), "one outage, one probe");
        outage.end();
        assert!(!outage.is_down());
    }
}
