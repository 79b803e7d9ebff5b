//! Versioned records with a time to live: short-lived state (carts) kept in Redis, changed with
//! compare-and-set on a version so two writers cannot overwrite each other, and gone after its
//! TTL without a cleanup job.

use std::time::Duration;

use bytes::Bytes;

use crate::Redis;

/// Compare-and-set: writes when the stored version (0 when absent) is the expected one, bumps it
/// and renews the TTL. Returns `{1, new}` or `{0, stored}`.
const SAVE_SCRIPT: &str = r"
local stored = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if stored ~= tonumber(ARGV[1]) then return {0, stored} end
redis.call('HSET', KEYS[1], 'v', stored + 1, 'd', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {1, stored + 1}
";

/// Why a record call failed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The record is not at the expected version.
    #[error("record {key} is at version {found}, not {expected}")]
    Conflict {
        /// The record.
        key: String,
        /// Version the caller expected.
        expected: u64,
        /// Version stored (0: absent or expired).
        found: u64,
    },
    /// Redis failed.
    #[error("record backend failed: {0}")]
    Backend(#[from] redis::RedisError),
}

/// Versioned TTL records in Redis, under `record:<key>`.
#[derive(Clone)]
pub struct TtlRecords {
    redis: Redis,
}

impl TtlRecords {
    /// Records in `redis`.
    pub fn new(redis: Redis) -> Self {
        TtlRecords { redis }
    }

    /// The record and its version, if it exists and has not expired.
    pub async fn load(&self, key: &str) -> Result<Option<(u64, Bytes)>, RecordError> {
        let mut connection = self.redis.clone();
        let (version, data): (Option<u64>, Option<Vec<u8>>) = redis::cmd("HMGET")
            .arg(format!("record:{key}"))
            .arg("v")
            .arg("d")
            .query_async(&mut connection)
            .await?;
        Ok(version
            .zip(data)
            .map(|(version, data)| (version, Bytes::from(data))))
    }

    /// Writes `data` if the record is at `expected_version` (0 creates it); returns the new
    /// version. The record expires `ttl` after this write.
    pub async fn save(
        &self,
        key: &str,
        expected_version: u64,
        data: &Bytes,
        ttl: Duration,
    ) -> Result<u64, RecordError> {
        let mut connection = self.redis.clone();
        let (written, version): (u8, u64) = redis::Script::new(SAVE_SCRIPT)
            .key(format!("record:{key}"))
            .arg(expected_version)
            .arg(data.as_ref())
            .arg(ttl.as_millis().max(1) as u64)
            .invoke_async(&mut connection)
            .await?;
        if written == 1 {
            Ok(version)
        } else {
            Err(RecordError::Conflict {
                key: key.to_owned(),
                expected: expected_version,
                found: version,
            })
        }
    }
}
