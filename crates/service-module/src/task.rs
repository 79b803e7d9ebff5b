//! Background work of a module and the one shutdown it stops with.

use std::future::Future;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::watch;

/// When a task stops during shutdown. The server stops first; then background rounds (they may
/// emit events); then the event relay drains the outbox; then consumers, so in process every event
/// published on the way out is still handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Periodic rounds (sweeps, billing runs, payment resolution).
    Background,
    /// Event consumers.
    Consumer,
}

/// A shutdown signal a task awaits; cheap to clone.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// A signal and the sender that fires it.
    pub fn new() -> (watch::Sender<bool>, Shutdown) {
        let (sender, receiver) = watch::channel(false);
        (sender, Shutdown(receiver))
    }

    /// Completes once shutdown begins (at once if it has).
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

/// One unit of background work: runs until its [`Shutdown`] fires, then returns.
pub struct Task {
    /// What it is, for logs (`loyalty sweep`).
    pub name: &'static str,
    /// When it stops.
    pub stage: Stage,
    /// Starts it.
    pub run: Box<dyn FnOnce(Shutdown) -> BoxFuture<'static, ()> + Send>,
}

impl Task {
    /// A task of `stage` that runs `run` with the shutdown signal.
    pub fn new<F, Fut>(name: &'static str, stage: Stage, run: F) -> Self
    where
        F: FnOnce(Shutdown) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Task {
            name,
            stage,
            run: Box::new(move |shutdown| Box::pin(run(shutdown))),
        }
    }

    /// A background round run every `every` until shutdown, logging a failed round and going on.
    pub fn every<F, Fut, E>(name: &'static str, every: Duration, round: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        Task::new(name, Stage::Background, move |shutdown| {
            repeat_every(name, every, shutdown.wait(), round)
        })
    }
}

/// Runs `round` every `every` until `shutdown`, so points move and payments settle without anyone
/// calling in; a failed round is logged and the next one tries again.
pub async fn repeat_every<F, Fut, E>(
    what: &'static str,
    every: Duration,
    shutdown: impl Future<Output = ()>,
    round: F,
) where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(every) => {}
        }
        // Each round is the root of a trace of its own (when traces are exported).
        let span = platform::telemetry::round_span(what);
        use tracing::Instrument as _;
        if let Err(error) = round().instrument(span.clone()).await {
            platform::telemetry::mark_failed(&span, &error);
            let _entered = span.enter();
            tracing::warn!(%error, "{what} failed; retrying next round");
        }
    }
}

/// Something that must answer before a module is ready (a store, a callee's health).
pub struct Readiness {
    /// What is checked, for the log and the readiness report (`loyalty at http://…`).
    pub name: String,
    /// One check: `Ok` when it answers.
    pub check: Box<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>,
}

impl Readiness {
    /// A readiness check named `name`.
    pub fn new<F, Fut>(name: impl Into<String>, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        Readiness {
            name: name.into(),
            check: Box::new(move || Box::pin(check())),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_round_repeats_until_shutdown_and_a_failed_round_does_not_stop_it() {
        let rounds = Arc::new(AtomicUsize::new(0));
        let counted = rounds.clone();
        let task = Task::every("test round", Duration::from_secs(1), move || {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            async move { if n == 0 { Err("first fails") } else { Ok(()) } }
        });
        let (stop, shutdown) = Shutdown::new();
        let running = tokio::spawn((task.run)(shutdown));
        tokio::time::sleep(Duration::from_millis(3_500)).await;
        stop.send(true).unwrap();
        running.await.unwrap();
        assert_eq!(rounds.load(Ordering::SeqCst), 3);
    }
}
