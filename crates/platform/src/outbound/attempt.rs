//! What one attempt learns on its way: which endpoint took it, and that endpoint's breaker permit
//! until the outcome is known. The call loop puts an [`AttemptRecord`] in the request's extensions;
//! the endpoint that takes the request fills it in and settles it from what it sees on the wire
//! (a status, a broken connection); the call loop settles it when its own timer cuts the attempt.
//! Whoever knows first settles; the others find the permit gone.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tonic::Code;

use super::breaker::{Health, Permit};
use super::dependency::Classify as _;

/// Shared between one attempt's request and the call that made it.
#[derive(Debug, Clone, Default)]
pub(crate) struct AttemptRecord(Arc<Mutex<AttemptState>>);

#[derive(Debug, Default)]
struct AttemptState {
    endpoint: Option<String>,
    permit: Option<Permit>,
    /// The attempt's time is the caller's remaining deadline, not the per-attempt timeout: running
    /// out of it says nothing about the endpoint's health.
    cut_by_deadline: bool,
    timed_out: bool,
}

impl AttemptRecord {
    /// A record for an attempt whose end is the caller's deadline (`cut_by_deadline`) or its own
    /// per-attempt timeout.
    pub(crate) fn new(cut_by_deadline: bool) -> Self {
        AttemptRecord(Arc::new(Mutex::new(AttemptState {
            cut_by_deadline,
            ..AttemptState::default()
        })))
    }

    fn lock(&self) -> MutexGuard<'_, AttemptState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The endpoint `address` took the attempt under `permit`.
    pub(crate) fn took(&self, address: &str, permit: Permit) {
        let mut state = self.lock();
        state.endpoint = Some(address.to_owned());
        state.permit = Some(permit);
    }

    /// The endpoint that took the attempt, once one has.
    pub(crate) fn endpoint(&self) -> Option<String> {
        self.lock().endpoint.clone()
    }

    /// The endpoint answered with `code` (in the headers of a trailers-only response, or in the
    /// trailers).
    pub(crate) fn answered(&self, code: Code) {
        let mut state = self.lock();
        if code == Code::DeadlineExceeded {
            // The callee enforced the `grpc-timeout` we sent: the attempt's time ran out.
            state.timed_out = true;
        }
        let Some(permit) = state.permit.take() else {
            return;
        };
        let deadline_ran_out = matches!(code, Code::DeadlineExceeded | Code::Cancelled);
        if state.cut_by_deadline && deadline_ran_out {
            // The callee enforced the caller's own deadline: no verdict on its health.
            return;
        }
        permit.settle(health_of(code));
    }

    /// The response broke off (a connection lost mid-call, a reset stream, a body without
    /// trailers): one failure.
    pub(crate) fn broke(&self) {
        if let Some(permit) = self.lock().permit.take() {
            permit.settle(Health::Unhealthy);
        }
    }

    /// Nothing at the endpoint accepted the connection (refused, connect timeout): the breaker
    /// opens at once.
    pub(crate) fn unreachable(&self) {
        if let Some(permit) = self.lock().permit.take() {
            permit.trip();
        }
    }

    /// The attempt's time ran out before an answer. A slow endpoint counts against its breaker;
    /// the caller's deadline running out does not.
    pub(crate) fn time_out(&self) {
        let mut state = self.lock();
        state.timed_out = true;
        let permit = state.permit.take();
        if let Some(permit) = permit.filter(|_| !state.cut_by_deadline) {
            permit.settle(Health::Unhealthy);
        }
    }

    /// Whether the attempt ran out of time (on our side, or the callee said DEADLINE_EXCEEDED).
    pub(crate) fn timed_out(&self) -> bool {
        self.lock().timed_out
    }
}

/// `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `INTERNAL`, `UNKNOWN`, `DATA_LOSS` say the endpoint is
/// unhealthy; every other code is the callee answering (the same rule as the dependency breaker).
fn health_of(code: Code) -> Health {
    if tonic::Status::new(code, "").counts_against_breaker() {
        Health::Unhealthy
    } else {
        Health::Healthy
    }
}
