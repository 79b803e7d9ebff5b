//! The tenant clock (like Stripe's test clocks): every time-dependent decision of a tenant reads
//! [`Clocks::now`]. Unfrozen, a tenant's clock is wall time; [`Clocks::advance`] freezes it and
//! moves it forward, then runs every registered [`DueJobs`] runner at the new time.
//!
//! Each tenant's clock is one store aggregate (`<tenant>/clock/clock`); its absence means
//! "unfrozen". Moves are compare-and-set on the aggregate's version, so concurrent advances never
//! lose an update: the clock ends at the highest target, and a move that would go backwards fails.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message as _;
use store::{AggregateKey, Commit, Store, StoreError};

use crate::ApiError;

/// How often `advance` re-reads and retries after losing a compare-and-set race before giving up
/// with the conflict. Every lost race means another move succeeded, so this only bounds one
/// caller's wait under heavy contention.
const MAX_COMMIT_ATTEMPTS: usize = 64;

/// A tenant's clock at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockReading {
    /// The tenant's current time, unix milliseconds.
    pub now_ms: i64,
    /// True when the clock is frozen and only moves by [`Clocks::advance`].
    pub frozen: bool,
}

/// What the due-job runners did during one [`Clocks::advance`], summed over runners.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DueJobsReport {
    /// Subscriptions renewed.
    pub renewals: i64,
    /// Invoices paid.
    pub invoices_paid: i64,
    /// Payment attempts that failed.
    pub payment_failures: i64,
    /// Subscriptions that changed status.
    pub status_changes: i64,
}

impl std::ops::AddAssign for DueJobsReport {
    fn add_assign(&mut self, other: DueJobsReport) {
        self.renewals += other.renewals;
        self.invoices_paid += other.invoices_paid;
        self.payment_failures += other.payment_failures;
        self.status_changes += other.status_changes;
    }
}

/// Work that becomes due as a tenant's clock moves (renewals, dunning retries, trial ends, ...).
#[async_trait::async_trait]
pub trait DueJobs: Send + Sync + 'static {
    /// Runs everything due for `tenant` at `now_ms`; must be idempotent (running again finds
    /// nothing due).
    async fn run_due(&self, tenant: &str, now_ms: i64) -> Result<DueJobsReport, ApiError>;
}

/// Why [`Clocks::advance`] failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClockError {
    /// The target is before the clock's current time; the clock did not move.
    #[error("the clock can only move forward: now {now_ms} ms, target {target_ms} ms")]
    Backwards {
        /// The tenant's current time, unix milliseconds.
        now_ms: i64,
        /// The requested time, unix milliseconds.
        target_ms: i64,
    },
    /// Reading or moving the clock failed; the clock did not move.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The clock moved, but a due-job runner failed; advancing to the same time again re-runs
    /// the runners (they are idempotent) without moving the clock.
    #[error("the clock moved but a due-job runner failed: {0:?}")]
    Job(ApiError),
}

/// The stored state of a frozen clock.
#[derive(Clone, PartialEq, prost::Message)]
struct FrozenClock {
    /// The clock's time, unix milliseconds.
    #[prost(int64, tag = "1")]
    now_ms: i64,
}

/// The tenant clocks, over the store, with the due-job runners `advance` triggers.
#[derive(Clone)]
pub struct Clocks {
    store: Arc<dyn Store>,
    jobs: Vec<Arc<dyn DueJobs>>,
}

impl Clocks {
    /// Clocks kept in `store`, with no due-job runners.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Clocks {
            store,
            jobs: Vec::new(),
        }
    }

    /// Adds a due-job runner; `advance` runs the runners in the order they were added.
    pub fn with_jobs(mut self, jobs: Arc<dyn DueJobs>) -> Self {
        self.jobs.push(jobs);
        self
    }

    /// The tenant's current time: wall time when its clock is unfrozen, the stored time when it is
    /// frozen.
    pub async fn now(&self, tenant: &str) -> Result<ClockReading, StoreError> {
        Ok(self.read(tenant).await?.0)
    }

    /// The tenant's current time in unix ms (see [`Clocks::now`]).
    pub async fn now_ms(&self, tenant: &str) -> Result<i64, StoreError> {
        Ok(self.read(tenant).await?.0.now_ms)
    }

    /// Freezes the tenant's clock (if it is not) and moves it to `target_ms`, then runs every
    /// due-job runner at the new time, in the order they were added, and returns the clock after
    /// the move with the runners' summed report.
    ///
    /// Moving a frozen clock to its current time again does not change it (the runners still run,
    /// and being idempotent find nothing due — unless an earlier move's runner failed, which this
    /// retry then completes). A target before the current time fails with
    /// [`ClockError::Backwards`]. The move is committed before any runner starts, so a failing
    /// runner ([`ClockError::Job`]) does not undo it.
    pub async fn advance(
        &self,
        tenant: &str,
        target_ms: i64,
    ) -> Result<(ClockReading, DueJobsReport), ClockError> {
        let reading = self.move_to(tenant, target_ms).await?;
        let mut report = DueJobsReport::default();
        for jobs in &self.jobs {
            report += jobs
                .run_due(tenant, reading.now_ms)
                .await
                .map_err(ClockError::Job)?;
        }
        Ok((reading, report))
    }

    /// The compare-and-set move, retried on a lost race (re-reading and re-checking direction).
    async fn move_to(&self, tenant: &str, target_ms: i64) -> Result<ClockReading, ClockError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (current, version) = self.read(tenant).await?;
            if target_ms < current.now_ms {
                return Err(ClockError::Backwards {
                    now_ms: current.now_ms,
                    target_ms,
                });
            }
            if current.frozen && target_ms == current.now_ms {
                return Ok(current);
            }
            let commit = Commit {
                key: clock_key(tenant),
                expected_version: version,
                data: FrozenClock { now_ms: target_ms }.encode_to_vec().into(),
                index: Vec::new(),
                events: Vec::new(),
                idempotency: None,
            };
            match self.store.commit(commit).await {
                Ok(_) => {
                    return Ok(ClockReading {
                        now_ms: target_ms,
                        frozen: true,
                    });
                }
                Err(StoreError::Conflict { .. }) if attempts < MAX_COMMIT_ATTEMPTS => continue,
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// The tenant's clock and the version of its aggregate (0 while unfrozen).
    async fn read(&self, tenant: &str) -> Result<(ClockReading, u64), StoreError> {
        let key = clock_key(tenant);
        match self.store.load(&key).await? {
            Some(stored) => {
                let frozen = FrozenClock::decode(stored.data).map_err(|error| {
                    StoreError::Backend(format!("clock {key} does not decode: {error}"))
                })?;
                Ok((
                    ClockReading {
                        now_ms: frozen.now_ms,
                        frozen: true,
                    },
                    stored.version,
                ))
            }
            None => Ok((
                ClockReading {
                    now_ms: system_now_ms(),
                    frozen: false,
                },
                0,
            )),
        }
    }
}

fn clock_key(tenant: &str) -> AggregateKey {
    AggregateKey::new(tenant, "clock", "clock")
}

/// Wall time, unix milliseconds.
fn system_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}
