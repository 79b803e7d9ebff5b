//! The in-process bus, for a single process without Redis: the same consumer-group semantics as
//! Redis Streams (every group sees every message; pending until acknowledged; stale messages can
//! be claimed; dead letters), kept in memory. Nothing on it survives the process, so it does not
//! *retain* messages ([`Bus::retains_messages`]): it tracks which consumer groups still owe each
//! message a settlement, and the relay leaves an event in the store's outbox until every group
//! has settled it ([`Bus::settled`]). A process that dies therefore publishes its unsettled
//! events again when it restarts, and consumers, deduplicating by event id, apply each once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::bus::{Bus, BusError, BusMessage, DeadLetter, Delivery, dead_letter_stream};

/// The in-process bus.
#[derive(Debug, Default)]
pub struct MemoryBus {
    streams: Mutex<HashMap<String, Stream>>,
}

#[derive(Debug, Default)]
struct Stream {
    next_id: u64,
    entries: BTreeMap<u64, Entry>,
    groups: HashMap<String, Group>,
    /// Event id → the groups that have not settled it yet (absent: settled by all).
    unsettled: HashMap<String, HashSet<String>>,
}

#[derive(Debug, Clone)]
struct Entry {
    message: BusMessage,
    /// Set on dead-letter entries.
    dead: Option<(String, String)>,
}

#[derive(Debug, Default)]
struct Group {
    last_delivered: u64,
    pending: BTreeMap<u64, Pending>,
}

#[derive(Debug)]
struct Pending {
    consumer: String,
    since: Instant,
    deliveries: u64,
}

impl MemoryBus {
    /// An empty bus.
    pub fn new() -> Self {
        MemoryBus::default()
    }

    fn with<T>(&self, stream: &str, f: impl FnOnce(&mut Stream) -> T) -> T {
        let mut streams = self
            .streams
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(streams.entry(stream.to_owned()).or_default())
    }
}

impl Stream {
    fn append(&mut self, entry: Entry) -> u64 {
        self.next_id += 1;
        self.entries.insert(self.next_id, entry);
        self.next_id
    }
}

fn id_string(id: u64) -> String {
    format!("0-{id}")
}

fn parse_id(id: &str) -> Option<u64> {
    id.strip_prefix("0-")?.parse().ok()
}

fn no_group(group: &str) -> BusError {
    BusError(format!("no consumer group {group}"))
}

#[async_trait]
impl Bus for MemoryBus {
    async fn publish(&self, stream: &str, message: &BusMessage) -> Result<(), BusError> {
        self.with(stream, |s| {
            // Every group reading the stream owes the message a settlement; a stream nobody
            // reads settles it at once.
            if !s.groups.is_empty() {
                s.unsettled
                    .insert(message.event_id.clone(), s.groups.keys().cloned().collect());
            }
            s.append(Entry {
                message: message.clone(),
                dead: None,
            })
        });
        Ok(())
    }

    fn retains_messages(&self) -> bool {
        false
    }

    async fn settled(&self, stream: &str, event_ids: &[String]) -> Result<Vec<String>, BusError> {
        Ok(self.with(stream, |s| {
            event_ids
                .iter()
                .filter(|id| !s.unsettled.contains_key(*id))
                .cloned()
                .collect()
        }))
    }

    async fn ensure_group(&self, stream: &str, group: &str) -> Result<(), BusError> {
        self.with(stream, |s| {
            s.groups.entry(group.to_owned()).or_default();
        });
        Ok(())
    }

    async fn read(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<Delivery>, BusError> {
        self.with(stream, |s| {
            let Stream {
                entries, groups, ..
            } = s;
            let group = groups.get_mut(group).ok_or_else(|| no_group(group))?;
            let mut out = Vec::new();
            for (id, entry) in entries.range(group.last_delivered + 1..).take(count) {
                group.last_delivered = *id;
                group.pending.insert(
                    *id,
                    Pending {
                        consumer: consumer.to_owned(),
                        since: Instant::now(),
                        deliveries: 1,
                    },
                );
                out.push(Delivery {
                    id: id_string(*id),
                    message: entry.message.clone(),
                    deliveries: 1,
                });
            }
            Ok(out)
        })
    }

    async fn claim_stale(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Delivery>, BusError> {
        self.with(stream, |s| {
            let Stream {
                entries, groups, ..
            } = s;
            let group = groups.get_mut(group).ok_or_else(|| no_group(group))?;
            let mut out = Vec::new();
            for (id, pending) in group.pending.iter_mut() {
                if out.len() == count {
                    break;
                }
                if pending.since.elapsed() < min_idle {
                    continue;
                }
                let Some(entry) = entries.get(id) else {
                    continue;
                };
                pending.consumer = consumer.to_owned();
                pending.since = Instant::now();
                pending.deliveries += 1;
                out.push(Delivery {
                    id: id_string(*id),
                    message: entry.message.clone(),
                    deliveries: pending.deliveries,
                });
            }
            Ok(out)
        })
    }

    async fn ack(&self, stream: &str, group: &str, id: &str) -> Result<(), BusError> {
        let id = parse_id(id).ok_or_else(|| BusError(format!("bad entry id {id}")))?;
        self.with(stream, |s| {
            if let Some(group) = s.groups.get_mut(group) {
                group.pending.remove(&id);
            }
            if let Some(entry) = s.entries.get(&id) {
                let event_id = &entry.message.event_id;
                if let Some(waiting) = s.unsettled.get_mut(event_id) {
                    waiting.remove(group);
                    if waiting.is_empty() {
                        s.unsettled.remove(event_id);
                    }
                }
            }
            // Drop entries every group has handled, so the bus does not grow without bound.
            let handled_by_all = |entry_id: u64| {
                s.groups
                    .values()
                    .all(|g| g.last_delivered >= entry_id && !g.pending.contains_key(&entry_id))
            };
            let done: Vec<u64> = s
                .entries
                .keys()
                .copied()
                .take_while(|entry_id| handled_by_all(*entry_id))
                .collect();
            for entry_id in done {
                s.entries.remove(&entry_id);
            }
        });
        Ok(())
    }

    async fn dead_letter(
        &self,
        stream: &str,
        group: &str,
        delivery: &Delivery,
        error: &str,
    ) -> Result<(), BusError> {
        self.with(&dead_letter_stream(stream), |dead| {
            dead.append(Entry {
                message: delivery.message.clone(),
                dead: Some((group.to_owned(), error.to_owned())),
            })
        });
        self.ack(stream, group, &delivery.id).await
    }

    async fn dead_letters(&self, stream: &str, limit: usize) -> Result<Vec<DeadLetter>, BusError> {
        Ok(self.with(&dead_letter_stream(stream), |dead| {
            dead.entries
                .iter()
                .take(limit)
                .map(|(id, entry)| {
                    let (group, error) = entry.dead.clone().unwrap_or_default();
                    DeadLetter {
                        id: id_string(*id),
                        message: entry.message.clone(),
                        group,
                        error,
                    }
                })
                .collect()
        }))
    }

    async fn replay_dead_letter(&self, stream: &str, id: &str) -> Result<bool, BusError> {
        let Some(id) = parse_id(id) else {
            return Ok(false);
        };
        let entry = self.with(&dead_letter_stream(stream), |dead| dead.entries.remove(&id));
        let Some(entry) = entry else {
            return Ok(false);
        };
        self.publish(stream, &entry.message).await?;
        Ok(true)
    }
}
