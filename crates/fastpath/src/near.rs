//! The near cache: a small, short-lived copy of Redis cache values in process memory, so a hot
//! read makes no Redis round trip at all.
//!
//! Staleness is bounded three ways:
//!
//! - a write-through or invalidation **in this process** replaces or drops the near value at
//!   once;
//! - every write-through or invalidation is published on the namespace's Redis pub/sub channel,
//!   and every process drops its near value of that key when the message arrives — other
//!   replicas see a write within the pub/sub delay (well under a millisecond on a LAN);
//! - a value is never served longer than the near TTL after it was read from Redis or the store,
//!   which bounds what a lost message can cost. The near cache only serves while its subscription
//!   is up: when the subscription drops (Redis killed, the connection killed, a ping unanswered
//!   within the response timeout) the whole near cache is cleared and stays off until the
//!   process has subscribed again, so a message lost with the connection costs nothing. Only a
//!   message lost without the connection noticing is bounded by the TTL alone.
//!
//! A value read from Redis (or loaded from the store) while a write to the same key is in flight
//! in this process, or while an invalidation from another process arrives, must not overwrite the
//! newer state: every read takes a [`Ticket`] (a generation of the key's stripe, and the epoch of
//! the last clear) before it asks Redis, and fills the near cache only if no write, invalidation
//! or clear touched the stripe since. Keys hash to 1024 stripes, so memory stays fixed whatever
//! keys callers invent; two keys sharing a stripe only cost each other a near fill now and then.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt as _;

use crate::Redis;
use crate::connection::{CONNECTION_TIMEOUT, RESPONSE_TIMEOUT};
use crate::expiring::{ExpiringMap, WhenFull};

/// Settings of a [`crate::Cache`]'s near cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NearCache {
    /// How long a value is served from process memory without asking Redis; zero turns the near
    /// cache off (every read asks Redis).
    pub ttl: Duration,
    /// Values kept at most; when full, those expiring soonest are forgotten first.
    pub capacity: usize,
}

impl NearCache {
    /// The default TTL: the bound on staleness when an invalidation message is lost unnoticed.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(1);
    /// The default number of values kept.
    pub const DEFAULT_CAPACITY: usize = 4096;
    /// No near cache: every read asks Redis.
    pub const OFF: NearCache = NearCache {
        ttl: Duration::ZERO,
        capacity: Self::DEFAULT_CAPACITY,
    };

    /// Whether values are kept at all.
    pub fn is_on(&self) -> bool {
        !self.ttl.is_zero() && self.capacity > 0
    }
}

impl Default for NearCache {
    fn default() -> Self {
        NearCache {
            ttl: Self::DEFAULT_TTL,
            capacity: Self::DEFAULT_CAPACITY,
        }
    }
}

/// Generations kept (keys hash to one of them).
const STRIPES: usize = 1024;
/// How often an idle subscription is pinged (a hung Redis sends nothing, and says nothing).
const PING_EVERY: Duration = Duration::from_secs(1);
/// Pause between subscription attempts while Redis cannot be reached.
const RETRY_EVERY: Duration = Duration::from_millis(250);

/// The pub/sub channel of a cache namespace.
pub(crate) fn channel(namespace: &str) -> String {
    format!("cache-invalidations:{namespace}")
}

/// The near cache of one [`crate::Cache`].
pub(crate) struct Near {
    ttl: Duration,
    /// `cache-invalidations:{namespace}`.
    channel: String,
    /// This cache's id in its messages, so it skips its own.
    origin: String,
    state: Mutex<State>,
    /// Whether the subscriber task was started.
    started: AtomicBool,
}

struct State {
    values: ExpiringMap<Bytes>,
    /// Bumped by every write, invalidation or message touching a key of the stripe.
    stripes: Vec<u64>,
    /// Bumped by every clear.
    epoch: u64,
    /// Whether the subscription is up: only then are values kept and served.
    subscribed: bool,
}

/// What a read saw before it asked Redis; its fill counts only if nothing changed since.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket {
    stripe: usize,
    generation: u64,
    epoch: u64,
}

impl Near {
    pub(crate) fn new(namespace: &str, config: NearCache) -> Self {
        Near {
            ttl: config.ttl,
            channel: channel(namespace),
            origin: uuid::Uuid::now_v7().to_string(),
            state: Mutex::new(State {
                values: ExpiringMap::new(config.capacity, WhenFull::EvictSoonestToExpire),
                stripes: vec![0; STRIPES],
                epoch: 0,
                subscribed: false,
            }),
            started: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn stripe(key: &str) -> usize {
        let mut hasher = DefaultHasher::new();
        key.hash(&mut hasher);
        (hasher.finish() % STRIPES as u64) as usize
    }

    /// The message announcing a write of `key`.
    pub(crate) fn message(&self, key: &str) -> String {
        format!("{} {key}", self.origin)
    }

    /// The live near value of `key`, or the ticket a read from Redis fills it with.
    pub(crate) fn get(&self, key: &str) -> Result<Bytes, Ticket> {
        let stripe = Self::stripe(key);
        let state = self.lock();
        if state.subscribed
            && let Some((value, _)) = state.values.get(key, Instant::now())
        {
            return Ok(value.clone());
        }
        Err(Ticket {
            stripe,
            generation: state.stripes[stripe],
            epoch: state.epoch,
        })
    }

    /// A ticket for a read of `key` starting now.
    pub(crate) fn ticket(&self, key: &str) -> Ticket {
        let stripe = Self::stripe(key);
        let state = self.lock();
        Ticket {
            stripe,
            generation: state.stripes[stripe],
            epoch: state.epoch,
        }
    }

    /// Keeps `value` (read under `ticket`) unless something changed the key since.
    pub(crate) fn fill(&self, key: &str, value: &Bytes, ticket: Ticket) {
        let mut state = self.lock();
        if state.subscribed
            && state.epoch == ticket.epoch
            && state.stripes[ticket.stripe] == ticket.generation
        {
            let now = Instant::now();
            if let Some(expires) = now.checked_add(self.ttl) {
                state.values.insert(key, value.clone(), expires, now);
            }
        }
    }

    /// A write of `key` begins: the near value goes, reads in flight will not fill it.
    pub(crate) fn begin_write(&self, key: &str) -> Ticket {
        let stripe = Self::stripe(key);
        let mut state = self.lock();
        state.stripes[stripe] += 1;
        state.values.remove(key);
        Ticket {
            stripe,
            generation: state.stripes[stripe],
            epoch: state.epoch,
        }
    }

    /// The write begun with `ticket` ended, leaving `value` in Redis (`None`: nothing, or not
    /// known). The value is kept only if no other write of the stripe began meanwhile (which one
    /// landed last in Redis is then unknown); reads in flight will not fill it either way.
    pub(crate) fn end_write(&self, key: &str, value: Option<&Bytes>, ticket: Ticket) {
        let mut state = self.lock();
        let undisturbed =
            state.epoch == ticket.epoch && state.stripes[ticket.stripe] == ticket.generation;
        state.stripes[ticket.stripe] += 1;
        match value {
            Some(value) if undisturbed && state.subscribed => {
                let now = Instant::now();
                if let Some(expires) = now.checked_add(self.ttl) {
                    state.values.insert(key, value.clone(), expires, now);
                }
            }
            _ => {
                state.values.remove(key);
            }
        }
    }

    /// Another process wrote `key`.
    fn drop_key(&self, key: &str) {
        let stripe = Self::stripe(key);
        let mut state = self.lock();
        state.stripes[stripe] += 1;
        state.values.remove(key);
    }

    /// Forgets every value; `subscribed` says whether values may be kept from now on.
    fn clear(&self, subscribed: bool) {
        let mut state = self.lock();
        state.epoch += 1;
        state.subscribed = subscribed;
        state.values.clear();
    }

    /// Whether the subscription is up (values are being kept).
    pub(crate) fn is_subscribed(&self) -> bool {
        self.lock().subscribed
    }

    /// Values held (live or not yet swept).
    pub(crate) fn len(&self) -> usize {
        self.lock().values.len()
    }

    /// Starts the subscriber (once; it ends when the cache is dropped). Needs a Tokio runtime:
    /// outside one the near cache stays off.
    pub(crate) fn start(self: &Arc<Self>, redis: &Redis) {
        if self.started.load(Ordering::Relaxed) || self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.started.store(false, Ordering::Release);
            return;
        };
        let clients: Vec<redis::Client> = redis.pubsub_clients().to_vec();
        if clients.is_empty() {
            return;
        }
        runtime.spawn(subscribe(Arc::downgrade(self), clients));
    }
}

/// Keeps a subscription to the cache's channel up while the cache lives: clears the near cache
/// whenever the subscription is (re)established or lost, and drops the keys other processes wrote.
async fn subscribe(near: Weak<Near>, clients: Vec<redis::Client>) {
    let Some((channel, origin)) = near
        .upgrade()
        .map(|near| (near.channel.clone(), near.origin.clone()))
    else {
        return;
    };
    let mut attempt = 0usize;
    let mut was_up = true;
    loop {
        let client = &clients[attempt % clients.len()];
        attempt = attempt.wrapping_add(1);
        let connected = tokio::time::timeout(CONNECTION_TIMEOUT + RESPONSE_TIMEOUT, async {
            let (mut sink, stream) = client.get_async_pubsub().await?.split();
            sink.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>((sink, stream))
        })
        .await;
        match connected {
            Ok(Ok((mut sink, mut stream))) => {
                match near.upgrade() {
                    // Whatever was published while unsubscribed is lost: start empty.
                    Some(near) => near.clear(true),
                    None => return,
                }
                if !was_up {
                    tracing::info!(channel, "near cache subscribed again");
                }
                was_up = true;
                let near_alive = listen(&near, &origin, &mut sink, &mut stream).await;
                let Some(near) = near.upgrade().filter(|_| near_alive) else {
                    return;
                };
                near.clear(false);
                tracing::warn!(
                    channel,
                    "near cache subscription lost; near cache off until it is back"
                );
            }
            Ok(Err(error)) if was_up => {
                was_up = false;
                tracing::warn!(channel, %error, "near cache cannot subscribe; near cache off");
            }
            Err(_) if was_up => {
                was_up = false;
                tracing::warn!(channel, "near cache subscription timed out; near cache off");
            }
            _ => {}
        }
        if near.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(RETRY_EVERY).await;
    }
}

/// Applies messages until the subscription ends or stops answering pings (`true`), or the near
/// cache is dropped (`false`).
async fn listen(
    near: &Weak<Near>,
    origin: &str,
    sink: &mut redis::aio::PubSubSink,
    stream: &mut redis::aio::PubSubStream,
) -> bool {
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    loop {
        tokio::select! {
            message = stream.next() => {
                let Some(message) = message else {
                    return true;
                };
                let Some(near) = near.upgrade() else {
                    return false;
                };
                let payload = String::from_utf8_lossy(message.get_payload_bytes());
                match payload.split_once(' ') {
                    Some((sender, _)) if sender == origin => {}
                    Some((_, key)) => near.drop_key(key),
                    // Not ours to read: forget everything rather than guess.
                    None => near.clear(true),
                }
            }
            _ = ping.tick() => {
                if near.strong_count() == 0 {
                    return false;
                }
                let answered =
                    tokio::time::timeout(RESPONSE_TIMEOUT, sink.ping::<redis::Value>()).await;
                if !matches!(answered, Ok(Ok(_))) {
                    return true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscribed() -> Near {
        let near = Near::new("test", NearCache::default());
        near.clear(true);
        near
    }

    #[test]
    fn a_fill_after_a_write_began_is_refused() {
        let near = subscribed();
        let ticket = near.get("k").unwrap_err();
        let write = near.begin_write("k");
        near.fill("k", &Bytes::from_static(b"old"), ticket);
        assert!(near.get("k").is_err(), "the read began before the write");
        near.end_write("k", Some(&Bytes::from_static(b"new")), write);
        assert_eq!(near.get("k").unwrap(), Bytes::from_static(b"new"));
        near.fill("k", &Bytes::from_static(b"old"), ticket);
        assert_eq!(near.get("k").unwrap(), Bytes::from_static(b"new"));
    }

    #[test]
    fn overlapping_writes_keep_no_value_and_messages_and_clears_refuse_fills() {
        let near = subscribed();
        let first = near.begin_write("k");
        let second = near.begin_write("k");
        near.end_write("k", Some(&Bytes::from_static(b"2")), second);
        near.end_write("k", Some(&Bytes::from_static(b"1")), first);
        assert!(near.get("k").is_err(), "which write landed last is unknown");

        let ticket = near.get("k").unwrap_err();
        near.drop_key("k");
        near.fill("k", &Bytes::from_static(b"old"), ticket);
        assert!(near.get("k").is_err());

        let ticket = near.get("k").unwrap_err();
        near.clear(true);
        near.fill("k", &Bytes::from_static(b"old"), ticket);
        assert!(near.get("k").is_err());

        near.clear(false);
        let ticket = near.get("k").unwrap_err();
        near.fill("k", &Bytes::from_static(b"v"), ticket);
        assert!(near.get("k").is_err(), "nothing is kept while unsubscribed");
    }

    #[test]
    fn the_near_cache_is_bounded() {
        let near = Near::new(
            "test",
            NearCache {
                ttl: Duration::from_secs(60),
                capacity: 100,
            },
        );
        near.clear(true);
        for i in 0..1000 {
            let key = format!("k{i}");
            let ticket = near.ticket(&key);
            near.fill(&key, &Bytes::from_static(b"v"), ticket);
        }
        assert!(near.len() <= 100);
    }
}
