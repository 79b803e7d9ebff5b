//! Which endpoints a callee has: resolved from its [`Target`] by a background task that feeds the
//! balancer (`tower::discover::Change`s) and keeps [`Endpoints`], the registry the call loop reads
//! (breaker states before sending, another endpoint for a hedge, the status for operators).
//!
//! A static list is resolved once. A `dns:///` name is resolved at start and then every
//! `resolve_every`: new addresses become new endpoints, vanished ones are removed (their
//! connections close when their last call ends). A failed or empty lookup keeps the endpoints
//! already known — a DNS blip should not empty a healthy callee.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tower::discover::Change;

use super::breaker::{BreakerState, Refusal};
use super::endpoint::{EndpointService, EndpointSettings};
use super::target::Target;

/// The balancer's view of endpoint changes.
pub(crate) type Discovered = tokio_stream::wrappers::UnboundedReceiverStream<
    Result<Change<String, EndpointService>, Infallible>,
>;

/// An endpoint as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointStatus {
    /// `http://host:port`.
    pub address: String,
    /// Its circuit breaker.
    pub breaker: BreakerState,
    /// Calls in flight on it.
    pub in_flight: usize,
}

/// The callee's current endpoints.
#[derive(Debug)]
pub(crate) struct Endpoints {
    by_address: RwLock<BTreeMap<String, EndpointService>>,
    /// Becomes true once the first resolution finished (with or without endpoints).
    resolved: watch::Sender<bool>,
}

impl Endpoints {
    fn new() -> Arc<Self> {
        Arc::new(Endpoints {
            by_address: RwLock::default(),
            resolved: watch::Sender::new(false),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, EndpointService>> {
        self.by_address
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, EndpointService>> {
        self.by_address
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until the first resolution finished.
    pub(crate) async fn resolved(&self) {
        let mut resolved = self.resolved.subscribe();
        // Fails only when the sender is gone, which `self` holds.
        let _ = resolved.wait_for(|resolved| *resolved).await;
    }

    /// Every endpoint's status, by address.
    pub(crate) fn statuses(&self) -> Vec<EndpointStatus> {
        self.read()
            .values()
            .map(|endpoint| EndpointStatus {
                address: endpoint.address().to_owned(),
                breaker: endpoint.breaker_state(),
                in_flight: endpoint.in_flight(),
            })
            .collect()
    }

    /// `Ok` when at least one endpoint's breaker would admit a call (or holds a trial it has not
    /// sent yet); otherwise why each refuses
    /// (empty: there are no endpoints) and the shortest wait until one might.
    pub(crate) fn admissible(&self) -> Result<(), Unadmissible> {
        let endpoints = self.read();
        let mut refusals = Vec::new();
        let mut retry_after: Option<Duration> = None;
        for endpoint in endpoints.values() {
            match endpoint.would_admit() {
                Ok(()) => return Ok(()),
                // The balancer reserved the trial when it found the endpoint ready, but nothing is
                // in flight yet: the next call it routes there is the trial.
                Err(Refusal::TrialInFlight) if endpoint.in_flight() == 0 => return Ok(()),
                Err(refusal) => {
                    let wait = refusal.retry_after(endpoint.trial_retry_after());
                    retry_after = Some(retry_after.map_or(wait, |shortest| shortest.min(wait)));
                    refusals.push((endpoint.address().to_owned(), refusal));
                }
            }
        }
        Err(Unadmissible {
            refusals,
            retry_after,
        })
    }

    /// An endpoint other than `except` whose breaker admits calls, the least loaded of them (ties
    /// broken at random): where a hedge goes.
    pub(crate) fn other_than(&self, except: Option<&str>) -> Option<EndpointService> {
        let endpoints = self.read();
        let candidates: Vec<&EndpointService> = endpoints
            .values()
            .filter(|endpoint| Some(endpoint.address()) != except)
            .filter(|endpoint| endpoint.would_admit().is_ok())
            .collect();
        let least = candidates
            .iter()
            .map(|endpoint| endpoint.in_flight())
            .min()?;
        let least_loaded: Vec<&&EndpointService> = candidates
            .iter()
            .filter(|endpoint| endpoint.in_flight() == least)
            .collect();
        least_loaded
            .get(fastrand::usize(..least_loaded.len()))
            .map(|endpoint| (**endpoint).clone())
    }
}

/// Why no endpoint can take a call now.
#[derive(Debug, Clone)]
pub(crate) struct Unadmissible {
    /// Each endpoint and its breaker's refusal; empty when there is no endpoint at all.
    pub refusals: Vec<(String, Refusal)>,
    /// When the first of them may admit again.
    pub retry_after: Option<Duration>,
}

/// Starts resolving `target`: returns the registry and the stream the balancer discovers from.
pub(crate) fn start(
    target: Target,
    settings: EndpointSettings,
    resolve_every: Duration,
) -> (Arc<Endpoints>, Discovered) {
    let endpoints = Endpoints::new();
    let (changes, discovered) = mpsc::unbounded_channel();
    let resolver = Resolver {
        endpoints: endpoints.clone(),
        changes,
        settings,
    };
    match target {
        Target::Static(urls) => {
            // Known now: no task, no wait before the first call.
            resolver.apply(urls.into_iter().collect());
            resolver.endpoints.resolved.send_replace(true);
        }
        Target::Dns { host, port } => {
            tokio::spawn(resolver.resolve_periodically(host, port, resolve_every));
        }
    }
    (
        endpoints,
        tokio_stream::wrappers::UnboundedReceiverStream::new(discovered),
    )
}

struct Resolver {
    endpoints: Arc<Endpoints>,
    changes: mpsc::UnboundedSender<Result<Change<String, EndpointService>, Infallible>>,
    settings: EndpointSettings,
}

impl Resolver {
    /// Re-resolves until the balancer is gone (every channel to the callee dropped).
    async fn resolve_periodically(self, host: String, port: u16, every: Duration) {
        let mut ticks = tokio::time::interval(every.max(Duration::from_millis(100)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if self.changes.is_closed() {
                return;
            }
            match tokio::net::lookup_host((host.as_str(), port)).await {
                Ok(addresses) => {
                    let urls: BTreeSet<String> = addresses
                        .map(|address| format!("http://{address}"))
                        .collect();
                    if urls.is_empty() {
                        tracing::warn!(target: "outbound", callee = %self.settings.callee, %host, "DNS returned no address; keeping the known endpoints");
                    } else {
                        self.apply(urls);
                    }
                }
                Err(error) => {
                    tracing::warn!(target: "outbound", callee = %self.settings.callee, %host, %error, "DNS lookup failed; keeping the known endpoints");
                }
            }
            self.endpoints.resolved.send_replace(true);
        }
    }

    /// Makes the endpoint set exactly `urls`.
    fn apply(&self, urls: BTreeSet<String>) {
        let mut endpoints = self.endpoints.write();
        let gone: Vec<String> = endpoints
            .keys()
            .filter(|address| !urls.contains(*address))
            .cloned()
            .collect();
        for address in gone {
            endpoints.remove(&address);
            tracing::info!(target: "outbound", callee = %self.settings.callee, endpoint = %address, "endpoint removed");
            let _ = self.changes.send(Ok(Change::Remove(address)));
        }
        for url in urls {
            if endpoints.contains_key(&url) {
                continue;
            }
            match EndpointService::new(&url, &self.settings) {
                Ok(endpoint) => {
                    tracing::info!(target: "outbound", callee = %self.settings.callee, endpoint = %url, "endpoint added");
                    let _ = self
                        .changes
                        .send(Ok(Change::Insert(url.clone(), endpoint.clone())));
                    endpoints.insert(url, endpoint);
                }
                Err(error) => {
                    tracing::warn!(target: "outbound", callee = %self.settings.callee, endpoint = %url, %error, "endpoint unusable");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::BreakerConfig;

    fn settings() -> EndpointSettings {
        EndpointSettings {
            callee: "loyalty".to_owned(),
            connect_timeout: Duration::from_millis(100),
            breaker: BreakerConfig::default(),
            trial_retry_after: Duration::from_secs(1),
        }
    }

    fn urls(ports: &[u16]) -> BTreeSet<String> {
        ports
            .iter()
            .map(|port| format!("http://127.0.0.1:{port}"))
            .collect()
    }

    #[tokio::test]
    async fn a_new_resolution_adds_new_addresses_and_removes_vanished_ones() {
        let endpoints = Endpoints::new();
        let (changes, mut discovered) = mpsc::unbounded_channel();
        let resolver = Resolver {
            endpoints: endpoints.clone(),
            changes,
            settings: settings(),
        };
        resolver.apply(urls(&[1, 2]));
        resolver.apply(urls(&[2, 3]));
        let mut seen = Vec::new();
        while let Ok(change) = discovered.try_recv() {
            seen.push(match change {
                Ok(Change::Insert(address, _)) => format!("+{address}"),
                Ok(Change::Remove(address)) => format!("-{address}"),
                Err(never) => match never {},
            });
        }
        assert_eq!(
            seen,
            [
                "+http://127.0.0.1:1",
                "+http://127.0.0.1:2",
                "-http://127.0.0.1:1",
                "+http://127.0.0.1:3"
            ]
        );
        let known: Vec<String> = endpoints
            .statuses()
            .into_iter()
            .map(|status| status.address)
            .collect();
        assert_eq!(known, ["http://127.0.0.1:2", "http://127.0.0.1:3"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_half_open_endpoint_whose_trial_is_reserved_but_unsent_still_admits_calls() {
        let endpoints = Endpoints::new();
        let (changes, _discovered) = mpsc::unbounded_channel();
        let resolver = Resolver {
            endpoints: endpoints.clone(),
            changes,
            settings: settings(),
        };
        resolver.apply(urls(&[1]));
        let mut endpoint = endpoints.read().values().next().unwrap().clone();
        endpoint.breaker().admit(1).unwrap().trip();
        assert!(endpoints.admissible().is_err(), "open");
        tokio::time::advance(BreakerConfig::default().open_for).await;
        // The balancer polls the endpoint ready: that reserves the half-open trial.
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        assert!(tower::Service::poll_ready(&mut endpoint, &mut cx).is_ready());
        assert_eq!(endpoint.breaker_state(), BreakerState::HalfOpen);
        assert!(endpoint.would_admit().is_err(), "the trial is taken");
        assert!(endpoints.admissible().is_ok(), "but not sent: calls go on");
    }

    #[tokio::test]
    async fn a_hedge_goes_to_an_admitting_endpoint_other_than_the_first() {
        let endpoints = Endpoints::new();
        let (changes, _discovered) = mpsc::unbounded_channel();
        let resolver = Resolver {
            endpoints: endpoints.clone(),
            changes,
            settings: settings(),
        };
        resolver.apply(urls(&[1, 2]));
        for _ in 0..20 {
            let other = endpoints.other_than(Some("http://127.0.0.1:1")).unwrap();
            assert_eq!(other.address(), "http://127.0.0.1:2");
        }
        resolver.apply(urls(&[1]));
        assert!(endpoints.other_than(Some("http://127.0.0.1:1")).is_none());
        assert!(endpoints.admissible().is_ok());
    }
}
