//! Outbound metrics on the admin port's registry ([`Metrics`](crate::interceptors::Metrics)):
//!
//! - `outbound_calls_total{callee,method,code}` — calls by their final outcome;
//! - `outbound_call_duration_seconds{callee,method}` — whole calls, retries and hedges included;
//! - `outbound_attempts_total{callee,method}` — requests sent (first attempts, retries, hedges);
//! - `outbound_retries_total{callee,method}`;
//! - `outbound_hedges_total{callee,method}` and `outbound_hedges_won_total{callee,method}`;
//! - `outbound_endpoint_breaker_state{callee,endpoint,state}` — 1 for the state each endpoint's
//!   breaker is in (`closed`, `half_open`, `open`), 0 for the others, read at scrape time;
//! - `outbound_endpoint_in_flight{callee,endpoint}`.

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::breaker::BreakerState;
use super::discovery::Endpoints;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct MethodLabels {
    pub callee: String,
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    callee: String,
    method: String,
    code: String,
}

/// The outbound families, registered once per registry.
#[derive(Debug, Clone)]
pub(crate) struct OutboundMetrics {
    calls: Family<CallLabels, Counter>,
    durations: Family<MethodLabels, Histogram>,
    attempts: Family<MethodLabels, Counter>,
    retries: Family<MethodLabels, Counter>,
    hedges: Family<MethodLabels, Counter>,
    hedges_won: Family<MethodLabels, Counter>,
    callees: Arc<CalleeList>,
}

/// Every callee's endpoints, read at scrape time (a callee dropped is skipped and forgotten).
#[derive(Debug, Default)]
struct CalleeList(Mutex<Vec<(String, Weak<Endpoints>)>>);

impl OutboundMetrics {
    /// Registers the families on `registry`.
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let metrics = OutboundMetrics {
            calls: Family::default(),
            durations: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
            }),
            attempts: Family::default(),
            retries: Family::default(),
            hedges: Family::default(),
            hedges_won: Family::default(),
            callees: Arc::default(),
        };
        registry.register(
            "outbound_calls",
            "Outbound calls by callee, method and final status code",
            metrics.calls.clone(),
        );
        registry.register(
            "outbound_call_duration_seconds",
            "Outbound call duration, retries and hedges included",
            metrics.durations.clone(),
        );
        registry.register(
            "outbound_attempts",
            "Requests sent to callees: first attempts, retries and hedges",
            metrics.attempts.clone(),
        );
        registry.register(
            "outbound_retries",
            "Outbound retries (the callee's contract allowed a repeat)",
            metrics.retries.clone(),
        );
        registry.register(
            "outbound_hedges",
            "Hedged requests sent (a second attempt while the first was still running)",
            metrics.hedges.clone(),
        );
        registry.register(
            "outbound_hedges_won",
            "Hedged requests whose answer was used",
            metrics.hedges_won.clone(),
        );
        registry.register_collector(Box::new(metrics.callees.clone()));
        metrics
    }

    /// Reports `endpoints` of `callee` in the per-endpoint gauges.
    pub(crate) fn watch(&self, callee: &str, endpoints: &Arc<Endpoints>) {
        let mut callees = self
            .callees
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        callees.retain(|(_, endpoints)| endpoints.strong_count() > 0);
        callees.push((callee.to_owned(), Arc::downgrade(endpoints)));
    }

    pub(crate) fn attempt(&self, labels: &MethodLabels) {
        self.attempts.get_or_create(labels).inc();
    }

    pub(crate) fn retry(&self, labels: &MethodLabels) {
        self.retries.get_or_create(labels).inc();
    }

    pub(crate) fn hedge(&self, labels: &MethodLabels) {
        self.hedges.get_or_create(labels).inc();
    }

    pub(crate) fn hedge_won(&self, labels: &MethodLabels) {
        self.hedges_won.get_or_create(labels).inc();
    }

    pub(crate) fn finish(&self, labels: &MethodLabels, code: &str, elapsed: Duration) {
        self.calls
            .get_or_create(&CallLabels {
                callee: labels.callee.clone(),
                method: labels.method.clone(),
                code: code.to_owned(),
            })
            .inc();
        self.durations
            .get_or_create(labels)
            .observe(elapsed.as_secs_f64());
    }
}

impl Collector for CalleeList {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let callees: Vec<(String, Arc<Endpoints>)> = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter_map(|(callee, endpoints)| Some((callee.clone(), endpoints.upgrade()?)))
            .collect();
        // Two `Callee`s for the same callee (rather than clones of one) would repeat a series,
        // which makes the exposition invalid: the first one's endpoints are reported.
        let mut reported = std::collections::HashSet::new();
        let statuses: Vec<(String, Vec<_>)> = callees
            .iter()
            .map(|(callee, endpoints)| {
                let mut statuses = endpoints.statuses();
                statuses.retain(|status| reported.insert((callee.clone(), status.address.clone())));
                (callee.clone(), statuses)
            })
            .collect();
        let mut states = encoder.encode_descriptor(
            "outbound_endpoint_breaker_state",
            "1 for the state each callee endpoint's circuit breaker is in (closed, half_open, open)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (callee, endpoints) in &statuses {
            for endpoint in endpoints {
                for state in [
                    BreakerState::Closed,
                    BreakerState::HalfOpen,
                    BreakerState::Open,
                ] {
                    let labels = [
                        ("callee", callee.as_str()),
                        ("endpoint", endpoint.address.as_str()),
                        ("state", state.name()),
                    ];
                    ConstGauge::new(i64::from(endpoint.breaker == state))
                        .encode(states.encode_family(&labels)?)?;
                }
            }
        }
        let mut in_flight = encoder.encode_descriptor(
            "outbound_endpoint_in_flight",
            "Calls in flight per callee endpoint",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (callee, endpoints) in &statuses {
            for endpoint in endpoints {
                let labels = [
                    ("callee", callee.as_str()),
                    ("endpoint", endpoint.address.as_str()),
                ];
                ConstGauge::new(i64::try_from(endpoint.in_flight).unwrap_or(i64::MAX))
                    .encode(in_flight.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
