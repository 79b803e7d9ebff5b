//! The Redis connection the fast path (and the event bus) share: one node or a Redis Cluster,
//! chosen by the URL. Both kinds multiplex every caller over shared sockets, reconnect by
//! themselves, and answer `redis::aio::ConnectionLike`, so callers write commands, scripts and
//! pipelines once and never ask which kind they hold.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, Value};

use crate::outage::{self, Outage};

/// The URL scheme that selects Redis Cluster (see [`connect`]).
pub(crate) const CLUSTER_SCHEME: &str = "redis+cluster://";

/// How long to wait for a node to accept a connection, and for any reply: the fast path has
/// local fallbacks, so a slow Redis should fail fast and let them answer.
pub(crate) const CONNECTION_TIMEOUT: Duration = Duration::from_millis(500);
pub(crate) const RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);

/// A Redis connection shared by the fast-path parts; cheap to clone, reconnects by itself.
///
/// Every clone shares what is known about Redis being reachable: after a call finds it
/// unreachable, calls fail at once (no call waits on a Redis already known to be down) until a
/// background probe reaches it again — see [`Redis::is_down`].
#[derive(Clone)]
pub struct Redis {
    connection: Connection,
    outage: Arc<Outage>,
    /// Where a dedicated pub/sub connection goes (a subscriber cannot share the multiplexed
    /// connection): the server, or each seed node of a cluster in turn — a message published on
    /// any node of a cluster reaches subscribers on every node.
    pubsub: Arc<[redis::Client]>,
}

#[derive(Clone)]
enum Connection {
    /// One Redis server.
    Single(ConnectionManager),
    /// A Redis Cluster: each command goes to the node owning its key's slot.
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.connection {
            Connection::Single(_) => "Redis::Single",
            Connection::Cluster(_) => "Redis::Cluster",
        })
    }
}

impl Redis {
    fn new(connection: Connection, pubsub: Vec<redis::Client>) -> Self {
        Redis {
            connection,
            outage: Arc::default(),
            pubsub: pubsub.into(),
        }
    }

    /// Clients for dedicated pub/sub connections (see the `pubsub` field).
    pub(crate) fn pubsub_clients(&self) -> &[redis::Client] {
        &self.pubsub
    }

    /// Whether this is a Redis Cluster connection.
    pub fn is_cluster(&self) -> bool {
        matches!(self.connection, Connection::Cluster(_))
    }

    /// True while Redis is known to be unreachable: from the first call that could not reach it
    /// until a background `PING` (every 250 ms, bounded by the same short timeout) is answered.
    /// Meanwhile every command fails at once, without touching the network.
    pub fn is_down(&self) -> bool {
        self.outage.is_down()
    }

    /// Notes a failed call; the first one that finds Redis unreachable starts the probe.
    fn failed(&self, error: &RedisError) {
        // The probe needs a runtime; outside one, calls simply keep trying Redis.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.outage.begins_outage(error) {
            let connection = self.connection.clone();
            runtime.spawn(outage::probe(Arc::downgrade(&self.outage), move || {
                let mut connection = connection.clone();
                async move {
                    connection
                        .req_packed_command(&redis::cmd("PING"))
                        .await
                        .map(|_| ())
                }
            }));
        }
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(connection) => connection.req_packed_command(cmd),
            Connection::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
            Connection::Cluster(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(connection) => connection.get_db(),
            Connection::Cluster(connection) => connection.get_db(),
        }
    }
}

impl ConnectionLike for Redis {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        if self.is_down() {
            return Box::pin(std::future::ready(Err(outage::known_down())));
        }
        Box::pin(async move {
            let result = self.connection.req_packed_command(cmd).await;
            if let Err(error) = &result {
                self.failed(error);
            }
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        if self.is_down() {
            return Box::pin(std::future::ready(Err(outage::known_down())));
        }
        Box::pin(async move {
            let result = self
                .connection
                .req_packed_commands(pipeline, offset, count)
                .await;
            if let Err(error) = &result {
                self.failed(error);
            }
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.connection.get_db()
    }
}

/// Connects to Redis at `url`:
///
/// - `redis://[user:password@]host:port[/db]` — one server;
/// - `redis+cluster://[user:password@]host1:port1[,host2:port2…]` — a Redis Cluster, reached
///   through any of the listed seed nodes (one is enough; the rest of the cluster is discovered
///   from it). Credentials, when given, apply to every node. A cluster has only database 0.
///
/// One server is connected lazily: one that is unreachable at start is an outage like any later
/// one (calls fail, the fallbacks answer, health says degraded) until it is reachable. A cluster
/// needs its seed nodes at start to learn the slot map.
///
/// In a cluster, a command touching several keys (a script, or a `MULTI`/`EXEC` pipeline) works
/// only when its keys share a hash slot, e.g. through a `{hash tag}`.
pub async fn connect(url: &str) -> Result<Redis, RedisError> {
    match url.strip_prefix(CLUSTER_SCHEME) {
        Some(nodes) => {
            let pubsub = cluster_seeds(nodes)?
                .iter()
                .map(|seed| redis::Client::open(seed.as_str()))
                .collect::<Result<Vec<_>, _>>()?;
            connect_cluster(nodes)
                .await
                .map(|cluster| Redis::new(Connection::Cluster(cluster), pubsub))
        }
        None => {
            let client = redis::Client::open(url)?;
            connect_single(client.clone())
                .await
                .map(|single| Redis::new(Connection::Single(single), vec![client]))
        }
    }
}

async fn connect_single(client: redis::Client) -> Result<ConnectionManager, RedisError> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECTION_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(1);
    // Lazy: a Redis that is down when the process starts is the same outage as one that goes
    // down later — the fast path degrades and recovers — rather than a crash loop.
    ConnectionManager::new_lazy_with_config(client, config)
}

/// `nodes` is the part of a cluster URL after the scheme.
async fn connect_cluster(nodes: &str) -> Result<ClusterConnection, RedisError> {
    let seeds = cluster_seeds(nodes)?;
    ClusterClient::builder(seeds)
        .connection_timeout(CONNECTION_TIMEOUT)
        // Also bounds a whole request, retries included (the client's default).
        .response_timeout(RESPONSE_TIMEOUT)
        // Two retries: enough to follow a MOVED/ASK redirect after a reshard or failover and
        // then survive one reconnect, few enough that a failing cluster degrades quickly.
        .retries(2)
        // The default waits (over a second) would never fit in the response timeout.
        .min_retry_wait(10)
        .max_retry_wait(100)
        .build()?
        .get_async_connection()
        .await
}

/// `[user:password@]host1:port1,host2:port2` → one `redis://` URL per seed node.
fn cluster_seeds(nodes: &str) -> Result<Vec<String>, RedisError> {
    // The last `@` ends the credentials: host lists never contain one, passwords might.
    let (credentials, hosts) = match nodes.rsplit_once('@') {
        Some((credentials, hosts)) => (format!("{credentials}@"), hosts),
        None => (String::new(), nodes),
    };
    let hosts: Vec<&str> = hosts
        .trim_end_matches('/')
        .split(',')
        .map(str::trim)
        .collect();
    if hosts.iter().any(|host| host.is_empty()) {
        return Err(RedisError::from((
            ErrorKind::InvalidClientConfig,
            "a redis+cluster:// URL needs host:port seed nodes separated by commas",
        )));
    }
    let seeds = hosts
        .iter()
        .map(|host| format!("redis://{credentials}{host}"))
        .collect();
    Ok(seeds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_name_every_seed_with_the_shared_credentials() {
        assert_eq!(
            cluster_seeds("10.0.0.1:7000,10.0.0.2:7001/").unwrap(),
            ["redis://10.0.0.1:7000", "redis://10.0.0.2:7001"]
        );
        assert_eq!(
            cluster_seeds("app:secret@redis-a:6379, redis-b:6379").unwrap(),
            [
                "redis://app:secret@redis-a:6379",
                "redis://app:secret@redis-b:6379"
            ]
        );
        assert!(cluster_seeds("").is_err());
        assert!(cluster_seeds("a:1,,b:2").is_err());
    }
}
