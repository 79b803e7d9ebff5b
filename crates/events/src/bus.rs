//! The bus port: streams of messages read by consumer groups (Redis Streams' model). Each group
//! gets every message; within a group each message goes to one consumer and stays *pending* until
//! acknowledged, so a consumer that dies leaves its messages to be claimed by another. Failed
//! messages go to the stream's dead-letter stream, from which an operator replays them.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

/// One event on the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusMessage {
    /// The event id (consumers deduplicate by it).
    pub event_id: String,
    /// Fully-qualified event type.
    pub event_type: String,
    /// Tenant of the event.
    pub tenant: String,
    /// The encoded `EventEnvelope`.
    pub envelope: Bytes,
}

/// A message handed to a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Entry id in the stream (ack with it).
    pub id: String,
    /// The message.
    pub message: BusMessage,
    /// How many times the group has handed this entry out, this time included.
    pub deliveries: u64,
}

/// A message that failed for good, kept for inspection and replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Entry id in the dead-letter stream.
    pub id: String,
    /// The message.
    pub message: BusMessage,
    /// The consumer group that gave up.
    pub group: String,
    /// Why it gave up (the last error).
    pub error: String,
}

/// A bus call failed (e.g. Redis unreachable); nothing was changed and it may be retried.
#[derive(Debug, Clone, thiserror::Error)]
#[error("event bus unavailable: {0}")]
pub struct BusError(pub String);

/// The dead-letter stream of `stream`, in the same Redis Cluster hash slot: moving a message
/// between the two is one MULTI/EXEC, which a cluster allows only within one slot. A stream named
/// with a hash tag (as [`crate::stream_of`] names them) keeps it; any other name (without braces)
/// becomes the tag, which hashes exactly as the untagged name does.
pub fn dead_letter_stream(stream: &str) -> String {
    if has_hash_tag(stream) {
        format!("{stream}:dead")
    } else {
        format!("{{{stream}}}:dead")
    }
}

/// Whether Redis Cluster hashes `key` by a tag — the text between its first `{` and the next
/// `}`, when not empty — rather than by the whole key.
fn has_hash_tag(key: &str) -> bool {
    key.split_once('{')
        .and_then(|(_, after)| after.find('}'))
        .is_some_and(|tag_length| tag_length > 0)
}

/// The bus the relay publishes to and consumers read from.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Appends `message` to `stream`.
    async fn publish(&self, stream: &str, message: &BusMessage) -> Result<(), BusError>;

    /// Whether a published message outlives this process: true when `publish` returning means
    /// the bus holds it (Redis acknowledged the `XADD`), so the relay may forget it at once;
    /// false for a bus in this process's memory, where it is safe only once every consumer group
    /// has settled it ([`Bus::settled`]) — until then it stays in the store's outbox.
    fn retains_messages(&self) -> bool {
        true
    }

    /// Of `event_ids` published to `stream` by this process, the ones every consumer group of
    /// the stream has settled (acknowledged after handling, or dead-lettered). Only asked of a
    /// bus that does not retain messages.
    async fn settled(&self, stream: &str, event_ids: &[String]) -> Result<Vec<String>, BusError> {
        let _ = stream;
        Ok(event_ids.to_vec())
    }

    /// Creates `group` on `stream` (reading from the stream's beginning) unless it exists.
    async fn ensure_group(&self, stream: &str, group: &str) -> Result<(), BusError>;

    /// Up to `count` messages never yet handed to `group`, now pending for `consumer`.
    async fn read(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<Delivery>, BusError>;

    /// Up to `count` of `group`'s messages left unacknowledged for at least `min_idle` (their
    /// consumer died or hangs), now pending for `consumer`.
    async fn claim_stale(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Delivery>, BusError>;

    /// Acknowledges a handled message.
    async fn ack(&self, stream: &str, group: &str, id: &str) -> Result<(), BusError>;

    /// Moves a message `group` gave up on to the dead-letter stream and acknowledges it.
    async fn dead_letter(
        &self,
        stream: &str,
        group: &str,
        delivery: &Delivery,
        error: &str,
    ) -> Result<(), BusError>;

    /// The oldest `limit` dead letters of `stream`.
    async fn dead_letters(&self, stream: &str, limit: usize) -> Result<Vec<DeadLetter>, BusError>;

    /// Publishes dead letter `id` to `stream` again and removes it from the dead-letter stream;
    /// `false` when there is no such dead letter.
    async fn replay_dead_letter(&self, stream: &str, id: &str) -> Result<bool, BusError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letters_share_the_hash_tag_of_their_stream() {
        assert_eq!(
            dead_letter_stream("events:{commerce.checkout.v1}"),
            "events:{commerce.checkout.v1}:dead"
        );
        // Untagged: the whole name becomes the tag, which hashes like the untagged name.
        assert_eq!(dead_letter_stream("orders"), "{orders}:dead");
    }
}
