//! Waiting for the process to be asked to stop.

use std::future::Future;

/// Completes on SIGTERM or SIGINT (Ctrl-C). The listeners are registered when this is called,
/// not when the future is first polled: call it before the process says it is listening, so a
/// signal sent right after start-up is never lost (a tokio signal stream sees only the signals
/// delivered after it was created).
pub fn termination_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let listeners = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        );
        async move {
            match listeners {
                (Ok(mut terminate), Ok(mut interrupt)) => {
                    tokio::select! {
                        _ = terminate.recv() => {}
                        _ = interrupt.recv() => {}
                    }
                }
                // Without signal handlers, never complete on our own: the process stops when
                // killed.
                _ => std::future::pending::<()>().await,
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
