//! [`RedisBroker`]: the [`Broker`] of a cluster of hub nodes sharing one Redis
//! (a single server, a Redis Cluster, or a master found through Sentinel).
//!
//! Commands (the Lua scripts of the `scripts` module) run on the command
//! connection of the `topology` module — a multiplexed
//! [`ConnectionManager`](redis::aio::ConnectionManager) for a single server,
//! which reconnects by itself after a failed command, a cluster connection,
//! or a sentinel-resolved master connection; events arrive on the separate
//! pub/sub connections of the `pubsub` module, which this crate reconnects
//! and resubscribes itself.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use redis::{RedisError, Value};
use wshub::hub::broker::{
    BoxFuture, Broker, BrokerError, ControlCommand, EventSink, HistoryFilter, HistoryResult,
    NodeInfo, PresenceStats, PublishOptions, StreamPosition,
};
use wshub::hub::protocol::ClientInfo;

use crate::codec;
use crate::config::{broker_error, RedisBrokerConfig, RedisTopology};
use crate::pubsub::{self, Subscriber};
use crate::scripts::Scripts;
use crate::topology::{Commands, Connector};

/// The Redis [`Broker`]. See the [crate docs](crate).
///
/// Cheap to share behind an `Arc`; dropping it stops its pub/sub task.
pub struct RedisBroker {
    config: RedisBrokerConfig,
    commands: Commands,
    scripts: Scripts,
    subscriber: Arc<Subscriber>,
    /// The pub/sub tasks; dropping them stops them.
    _tasks: pubsub::Tasks,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("prefix", &self.config.prefix)
            .field("healthy", &self.is_healthy())
            .finish_non_exhaustive()
    }
}

impl RedisBroker {
    /// Connects to Redis as [`RedisBrokerConfig::topology`] says: opens the
    /// command connection and the pub/sub connection(s) and starts the tasks
    /// that serve the latter. Must be called inside a tokio runtime.
    ///
    /// Fails with [`BrokerError::Internal`] for invalid settings (see
    /// [`RedisBrokerConfig::validate`]) or URLs and
    /// [`BrokerError::Unavailable`] or [`BrokerError::Timeout`] when Redis
    /// cannot be reached (later outages are survived by reconnecting).
    pub async fn connect(config: RedisBrokerConfig) -> Result<RedisBroker, BrokerError> {
        config.validate()?;
        let connector = Connector::new(&config)?;
        let commands = Commands::open(&config).await?;
        let subscriber = Arc::new(Subscriber::new(&config));
        let tasks = pubsub::start(Arc::clone(&subscriber), connector, &config).await?;
        let sharded = matches!(config.topology, RedisTopology::Cluster { .. });
        Ok(RedisBroker {
            config,
            commands,
            scripts: Scripts::new(sharded),
            subscriber,
            _tasks: tasks,
        })
    }

    /// Whether the pub/sub connection is up (for `/readyz`): while it is
    /// down, this node receives no events of other nodes.
    pub fn is_healthy(&self) -> bool {
        self.subscriber.is_healthy()
    }

    /// The settings this broker was connected with.
    pub fn config(&self) -> &RedisBrokerConfig {
        &self.config
    }

    /// The node registry's key (see the `scripts` module).
    fn registry_key(&self) -> String {
        format!("{}:nodes", self.config.prefix)
    }

    fn key(&self, channel: &str, suffix: &str) -> String {
        format!("{}:{{{channel}}}:{suffix}", self.config.prefix)
    }

    async fn publish_now(
        &self,
        channel: &str,
        data: Bytes,
        opts: PublishOptions,
    ) -> Result<StreamPosition, BrokerError> {
        let keeps_history = opts.keeps_history();
        let (history_size, history_ttl) = if keeps_history {
            (opts.history_size, millis(opts.history_ttl))
        } else {
            (0, 0)
        };
        let (idem_key, idem_ttl) = match &opts.idempotency_key {
            Some(key) if !opts.idempotency_ttl.is_zero() => (
                self.key(channel, &format!("idem:{key}")),
                millis(opts.idempotency_ttl),
            ),
            _ => (self.key(channel, "idem"), 0),
        };
        let body = codec::encode_body(&data, opts.info, opts.tags, opts.audience)
            .map_err(|e| BrokerError::Internal(format!("encoding publication: {e}")))?;
        let reply: Vec<String> = self
            .scripts
            .publish
            .key(self.key(channel, "meta"))
            .key(self.key(channel, "stream"))
            .key(idem_key)
            .arg(self.subscriber.redis_channel(channel))
            .arg(body)
            .arg(new_epoch())
            .arg(millis(self.config.history_meta_ttl).max(1))
            .arg(history_size)
            .arg(history_ttl)
            .arg(idem_ttl)
            .invoke_async(&mut self.commands.clone())
            .await
            .map_err(broker_error)?;
        match reply.as_slice() {
            [epoch, offset] => Ok(StreamPosition {
                offset: codec::parse_offset(offset.as_bytes())
                    .ok_or_else(|| bad_reply("offset"))?,
                epoch: epoch.clone(),
            }),
            _ => Err(bad_reply("publish")),
        }
    }

    async fn history_now(
        &self,
        channel: &str,
        filter: HistoryFilter,
    ) -> Result<HistoryResult, BrokerError> {
        let (since_id, since_epoch) = match &filter.since {
            Some(since) => (
                format!("{}-0", since.offset.saturating_add(1)),
                since.epoch.clone(),
            ),
            None => (String::new(), String::new()),
        };
        let limit: i64 = filter
            .limit
            .map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
        let (meta, stream) = (self.key(channel, "meta"), self.key(channel, "stream"));
        let meta_ttl = millis(self.config.history_meta_ttl).max(1);
        let reply: Vec<Value> = retry_once(|| {
            let mut invocation = self.scripts.history.key(&meta);
            invocation
                .key(&stream)
                .arg(new_epoch())
                .arg(meta_ttl)
                .arg(&since_id)
                .arg(&since_epoch)
                .arg(limit);
            let mut con = self.commands.clone();
            async move { invocation.invoke_async(&mut con).await }
        })
        .await?;
        let mut items = reply.iter().map(bulk);
        let epoch = items.next().flatten().ok_or_else(|| bad_reply("epoch"))?;
        let offset = items
            .next()
            .flatten()
            .and_then(codec::parse_offset)
            .ok_or_else(|| bad_reply("offset"))?;
        let mut publications = Vec::with_capacity(reply.len().saturating_sub(2) / 2);
        while let Some(id) = items.next() {
            let id = id.and_then(codec::parse_offset);
            let body = items.next().flatten();
            let (Some(id), Some(body)) = (id, body) else {
                return Err(bad_reply("history entry"));
            };
            publications.push(
                codec::decode_body(id, body)
                    .map_err(|e| BrokerError::Internal(format!("stored publication: {e}")))?,
            );
        }
        publications.sort_by_key(|p| p.offset);
        Ok(HistoryResult {
            publications,
            position: StreamPosition {
                offset,
                epoch: String::from_utf8_lossy(epoch).into_owned(),
            },
        })
    }

    async fn add_presence_now(
        &self,
        channel: &str,
        member: ClientInfo,
        ttl: Duration,
        join_leave: bool,
    ) -> Result<(), BrokerError> {
        let json = serde_json::to_vec(&member)
            .map_err(|e| BrokerError::Internal(format!("encoding presence: {e}")))?;
        let events = if join_leave {
            self.subscriber.redis_channel(channel)
        } else {
            String::new()
        };
        let _joined: i64 = self
            .scripts
            .add_presence
            .key(self.key(channel, "presence"))
            .key(self.key(channel, "presence:exp"))
            .key(self.key(channel, "presence:users"))
            .arg(&member.client)
            .arg(json)
            .arg(millis(ttl).max(1))
            .arg(&member.user)
            .arg(events)
            .invoke_async(&mut self.commands.clone())
            .await
            .map_err(broker_error)?;
        Ok(())
    }

    async fn remove_presence_now(
        &self,
        channel: &str,
        client: &str,
        join_leave: bool,
    ) -> Result<(), BrokerError> {
        let events = if join_leave {
            self.subscriber.redis_channel(channel)
        } else {
            String::new()
        };
        let _removed: i64 = self
            .scripts
            .remove_presence
            .key(self.key(channel, "presence"))
            .key(self.key(channel, "presence:exp"))
            .key(self.key(channel, "presence:users"))
            .arg(client)
            .arg(events)
            .invoke_async(&mut self.commands.clone())
            .await
            .map_err(broker_error)?;
        Ok(())
    }

    async fn presence_now(
        &self,
        channel: &str,
    ) -> Result<HashMap<String, ClientInfo>, BrokerError> {
        let (members, expiry, users) = (
            self.key(channel, "presence"),
            self.key(channel, "presence:exp"),
            self.key(channel, "presence:users"),
        );
        let reply: HashMap<String, Vec<u8>> = retry_once(|| {
            let mut invocation = self.scripts.presence.key(&members);
            invocation.key(&expiry).key(&users);
            let mut con = self.commands.clone();
            async move { invocation.invoke_async(&mut con).await }
        })
        .await?;
        reply
            .into_iter()
            .map(|(client, json)| {
                serde_json::from_slice(&json)
                    .map(|member| (client, member))
                    .map_err(|e| BrokerError::Internal(format!("stored presence: {e}")))
            })
            .collect()
    }

    /// Every key matching `pattern`, by `SCAN` — on every master in cluster
    /// mode, where one node's `SCAN` sees only its own shard.
    async fn scan(&self, pattern: &str) -> Result<Vec<String>, BrokerError> {
        let mut keys: Vec<String> = Vec::new();
        match self.subscriber.master_connections().await {
            Some(masters) => {
                if masters.is_empty() {
                    return Err(BrokerError::Unavailable(
                        "not connected to the cluster's masters".to_owned(),
                    ));
                }
                for mut conn in masters {
                    scan_into(&mut conn, pattern, &mut keys).await?;
                }
            }
            None => scan_into(&mut self.commands.clone(), pattern, &mut keys).await?,
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    async fn reap_node_now(&self, node: &str) -> Result<usize, BrokerError> {
        // `{prefix}:{channel}:presence` for every channel with presence.
        let head = format!("{}:{{", self.config.prefix);
        let tail = "}:presence";
        let mut removed = 0usize;
        for key in self.scan(&format!("{head}*{tail}")).await? {
            let Some(channel) = key
                .strip_prefix(head.as_str())
                .and_then(|k| k.strip_suffix(tail))
            else {
                continue;
            };
            let n: i64 = self
                .scripts
                .reap_presence
                .key(self.key(channel, "presence"))
                .key(self.key(channel, "presence:exp"))
                .key(self.key(channel, "presence:users"))
                .arg(format!("{node}-"))
                .arg(self.subscriber.redis_channel(channel))
                .invoke_async(&mut self.commands.clone())
                .await
                .map_err(broker_error)?;
            removed += usize::try_from(n).unwrap_or(0);
        }
        Ok(removed)
    }

    fn node_channels_key(&self, node: &str) -> String {
        format!("{}:nodechannels:{node}", self.config.prefix)
    }
}

impl Broker for RedisBroker {
    fn reap_node<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<usize, BrokerError>> {
        Box::pin(self.reap_node_now(node))
    }

    fn announce_channels<'a>(
        &'a self,
        node: &'a str,
        channels: Vec<(String, usize)>,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let json = serde_json::to_vec(&channels)
                .map_err(|e| BrokerError::Internal(format!("encoding channels: {e}")))?;
            redis::cmd("SET")
                .arg(self.node_channels_key(node))
                .arg(json)
                .arg("PX")
                .arg(millis(ttl).max(1))
                .query_async::<()>(&mut self.commands.clone())
                .await
                .map_err(broker_error)
        })
    }

    fn channels_of<'a>(
        &'a self,
        nodes: &'a [String],
    ) -> BoxFuture<'a, Result<HashMap<String, usize>, BrokerError>> {
        Box::pin(async move {
            let mut out: HashMap<String, usize> = HashMap::new();
            for node in nodes {
                // One GET per node (a handful), not MGET: the keys may live
                // on different shards of a Redis Cluster.
                let json: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(self.node_channels_key(node))
                    .query_async(&mut self.commands.clone())
                    .await
                    .map_err(broker_error)?;
                let Some(json) = json else { continue };
                let list: Vec<(String, usize)> = serde_json::from_slice(&json)
                    .map_err(|e| BrokerError::Internal(format!("stored channels: {e}")))?;
                for (name, count) in list {
                    *out.entry(name).or_insert(0) += count;
                }
            }
            Ok(out)
        })
    }

    fn set_sink(&self, sink: Arc<dyn EventSink>) {
        self.subscriber.set_sink(sink);
    }

    fn control<'a>(&'a self, command: ControlCommand) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let payload =
                serde_json::to_vec(&command).map_err(|e| BrokerError::Internal(e.to_string()))?;
            let mut conn = self.commands.clone();
            let _receivers: i64 = redis::cmd("PUBLISH")
                .arg(&self.subscriber.control_channel)
                .arg(payload)
                .query_async(&mut conn)
                .await
                .map_err(broker_error)?;
            Ok(())
        })
    }

    fn announce_node<'a>(
        &'a self,
        info: NodeInfo,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let json =
                serde_json::to_vec(&info).map_err(|e| BrokerError::Internal(e.to_string()))?;
            let _: i64 = self
                .scripts
                .announce_node
                .key(self.registry_key())
                .arg(&info.node)
                .arg(json)
                .arg(millis(ttl).max(1))
                .invoke_async(&mut self.commands.clone())
                .await
                .map_err(broker_error)?;
            Ok(())
        })
    }

    fn nodes<'a>(&'a self) -> BoxFuture<'a, Result<Vec<NodeInfo>, BrokerError>> {
        Box::pin(async move {
            let key = self.registry_key();
            let values: Vec<Vec<u8>> = retry_once(|| {
                let invocation = self.scripts.nodes.key(&key);
                let mut con = self.commands.clone();
                async move { invocation.invoke_async(&mut con).await }
            })
            .await?;
            let mut nodes: Vec<NodeInfo> = values
                .iter()
                .filter_map(|v| serde_json::from_slice(v).ok())
                .collect();
            nodes.sort_by(|a, b| a.node.cmp(&b.node));
            nodes.dedup_by(|a, b| a.node == b.node);
            Ok(nodes)
        })
    }

    fn publish<'a>(
        &'a self,
        channel: &'a str,
        data: Bytes,
        opts: PublishOptions,
    ) -> BoxFuture<'a, Result<StreamPosition, BrokerError>> {
        Box::pin(self.publish_now(channel, data, opts))
    }

    fn subscribe<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(self.subscriber.subscribe(channel))
    }

    fn unsubscribe<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            self.subscriber.unsubscribe(channel).await;
            Ok(())
        })
    }

    fn history<'a>(
        &'a self,
        channel: &'a str,
        filter: HistoryFilter,
    ) -> BoxFuture<'a, Result<HistoryResult, BrokerError>> {
        Box::pin(self.history_now(channel, filter))
    }

    fn remove_history<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let stream = self.key(channel, "stream");
            retry_once(|| {
                let mut con = self.commands.clone();
                let mut del = redis::cmd("DEL");
                del.arg(&stream);
                async move { del.query_async::<()>(&mut con).await }
            })
            .await
        })
    }

    fn add_presence<'a>(
        &'a self,
        channel: &'a str,
        member: ClientInfo,
        ttl: Duration,
        join_leave: bool,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(self.add_presence_now(channel, member, ttl, join_leave))
    }

    fn remove_presence<'a>(
        &'a self,
        channel: &'a str,
        client: &'a str,
        join_leave: bool,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(self.remove_presence_now(channel, client, join_leave))
    }

    fn presence<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<HashMap<String, ClientInfo>, BrokerError>> {
        Box::pin(self.presence_now(channel))
    }

    fn presence_stats<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<PresenceStats, BrokerError>> {
        Box::pin(async move {
            let members = self.presence_now(channel).await?;
            let users: HashSet<&str> = members.values().map(|m| m.user.as_str()).collect();
            Ok(PresenceStats {
                clients: members.len(),
                users: users.len(),
            })
        })
    }

    fn is_healthy(&self) -> bool {
        RedisBroker::is_healthy(self)
    }
}

/// Runs `op`, and once more if it failed because the command connection was
/// found dead: the [`ConnectionManager`] only notices a lost connection when
/// a command fails on it, and reconnects for the next one. Only for
/// operations that are safe to repeat (reads, deletions); a publish is not
/// retried here, its caller retries with an idempotency key.
/// Appends to `keys` every key of `conn`'s server matching `pattern`.
async fn scan_into<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    pattern: &str,
    keys: &mut Vec<String>,
) -> Result<(), BrokerError> {
    let mut cursor: u64 = 0;
    for _ in 0..1_000_000 {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .map_err(broker_error)?;
        keys.extend(batch);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    Ok(())
}

async fn retry_once<T, F, Fut>(mut op: F) -> Result<T, BrokerError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, RedisError>>,
{
    match op().await {
        Err(e) if e.is_connection_dropped() || e.is_io_error() => {
            tracing::debug!(error = %e, "redis command failed; retrying once");
            op().await.map_err(broker_error)
        }
        other => other.map_err(broker_error),
    }
}

/// A duration in whole milliseconds, saturating.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The bytes of a bulk-string reply element.
fn bulk(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn bad_reply(what: &str) -> BrokerError {
    BrokerError::Internal(format!("unexpected redis reply ({what})"))
}

/// A candidate epoch for a channel that has none: 12 characters of base 32
/// (60 random bits), the same shape as the in-memory broker's. It is only
/// used when the script finds no epoch, so concurrent publishers racing to
/// create one agree on the first writer's.
fn new_epoch() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut bits = fastrand::u64(..)
        ^ u64::from(nanos).rotate_left(32)
        ^ COUNTER.fetch_add(1, Ordering::Relaxed);
    (0..12)
        .map(|_| {
            let c = ALPHABET[(bits & 31) as usize];
            bits >>= 5;
            char::from(c)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_differ() {
        let epochs: HashSet<String> = (0..1000).map(|_| new_epoch()).collect();
        assert_eq!(epochs.len(), 1000);
        assert!(epochs.iter().all(|e| e.len() == 12 && e.is_ascii()));
    }
}
