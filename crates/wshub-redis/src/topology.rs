//! How the broker reaches Redis in each [`RedisTopology`]: the connection
//! that runs commands ([`Commands`]) and the pub/sub connections, one per
//! shard ([`Connector::pubsub`]).
//!
//! * **Single**: a reconnecting [`ConnectionManager`] for commands; one
//!   pub/sub connection.
//! * **Sentinel**: the master's address is asked of the sentinels whenever a
//!   connection is (re)opened, so both connections follow a failover: the
//!   command connection is dropped after an I/O error or a `READONLY` reply
//!   (the old master was demoted) and the next command looks the master up
//!   again.
//! * **Cluster**: a [`ClusterConnection`] for commands (it routes each script
//!   by its first key and follows `MOVED`); for pub/sub the slot map is read
//!   with `CLUSTER SLOTS` and each master gets its own connection, because
//!   `SSUBSCRIBE` must reach the shard that owns the channel's slot.
//!
//! Pub/sub connections speak RESP3 with a push sender: subscription replies
//! and messages arrive as push frames, and the connection stays usable for
//! pipelined commands. That is what makes a multi-channel `SUBSCRIBE`
//! possible: it is sent as a one-command pipeline that expects one reply per
//! channel (see `pubsub`).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionAddr, ConnectionInfo, ErrorKind,
    IntoConnectionInfo, Pipeline, ProtocolVersion, PushInfo, RedisError, RedisFuture, Value,
};
use tokio::sync::mpsc::UnboundedSender;
use wshub::hub::broker::BrokerError;

use crate::config::{broker_error, RedisBrokerConfig, RedisTopology};

/// The number of hash slots of a Redis Cluster.
const SLOTS: u16 = 16384;

/// The hash slot of `key`, as Redis Cluster computes it: CRC16 (XMODEM) of
/// the hash tag (the part between the first `{` and the next `}`, when not
/// empty) or of the whole key, modulo 16384.
pub(crate) fn slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(key)) % SLOTS
}

/// The connection that runs the broker's commands and scripts. Cheap to
/// clone; every clone shares the underlying connection(s).
#[derive(Clone)]
pub(crate) enum Commands {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(Arc<SentinelCommands>),
}

impl Commands {
    /// Opens the command connection of `config`'s topology.
    pub(crate) async fn open(config: &RedisBrokerConfig) -> Result<Commands, BrokerError> {
        match &config.topology {
            RedisTopology::Single => {
                let client = Client::open(config.url.as_str())
                    .map_err(|e| BrokerError::Internal(format!("invalid redis url: {e}")))?;
                let manager_config = ConnectionManagerConfig::new()
                    .set_connection_timeout(config.connect_timeout)
                    .set_response_timeout(config.command_timeout)
                    .set_number_of_retries(1);
                let manager = tokio::time::timeout(
                    config.connect_timeout,
                    client.get_connection_manager_with_config(manager_config),
                )
                .await
                .map_err(|_| BrokerError::Timeout)?
                .map_err(broker_error)?;
                Ok(Commands::Single(manager))
            }
            RedisTopology::Cluster { seeds } => {
                let seeds = parse_urls(seeds, "cluster seed")?;
                let client = ClusterClientBuilder::new(seeds)
                    .connection_timeout(config.connect_timeout)
                    .response_timeout(config.command_timeout)
                    .build()
                    .map_err(|e| BrokerError::Internal(format!("redis cluster client: {e}")))?;
                let conn =
                    tokio::time::timeout(config.connect_timeout, client.get_async_connection())
                        .await
                        .map_err(|_| BrokerError::Timeout)?
                        .map_err(broker_error)?;
                Ok(Commands::Cluster(conn))
            }
            RedisTopology::Sentinel { .. } => {
                let db = config
                    .url
                    .as_str()
                    .into_connection_info()
                    .map_or(0, |info| info.redis.db);
                let commands = SentinelCommands {
                    sentinel: tokio::sync::Mutex::new(sentinel_client(config, None)?),
                    db,
                    current: Mutex::new(None),
                    connect_timeout: config.connect_timeout,
                    command_timeout: config.command_timeout,
                };
                // Fail early when no master can be found.
                commands.connection().await.map_err(broker_error)?;
                Ok(Commands::Sentinel(Arc::new(commands)))
            }
        }
    }
}

impl ConnectionLike for Commands {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Commands::Single(c) => c.req_packed_command(cmd),
            Commands::Cluster(c) => c.req_packed_command(cmd),
            Commands::Sentinel(s) => Box::pin(async move {
                let mut conn = s.connection().await?;
                let reply = conn.req_packed_command(cmd).await;
                s.check(&reply);
                reply
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Commands::Single(c) => c.req_packed_commands(cmd, offset, count),
            Commands::Cluster(c) => c.req_packed_commands(cmd, offset, count),
            Commands::Sentinel(s) => Box::pin(async move {
                let mut conn = s.connection().await?;
                let reply = conn.req_packed_commands(cmd, offset, count).await;
                s.check(&reply);
                reply
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Commands::Single(c) => c.get_db(),
            Commands::Cluster(c) => c.get_db(),
            Commands::Sentinel(s) => s.db,
        }
    }
}

/// The command connection of sentinel mode: a multiplexed connection to the
/// master the sentinels named last, replaced after it fails.
pub(crate) struct SentinelCommands {
    sentinel: tokio::sync::Mutex<SentinelClient>,
    current: Mutex<Option<MultiplexedConnection>>,
    /// The database of `RedisBrokerConfig::url`.
    db: i64,
    connect_timeout: Duration,
    command_timeout: Duration,
}

impl SentinelCommands {
    /// The current master connection, looked up and opened when there is
    /// none.
    async fn connection(&self) -> Result<MultiplexedConnection, RedisError> {
        if let Some(conn) = self.current() {
            return Ok(conn);
        }
        let mut sentinel = self.sentinel.lock().await;
        // Another caller may have connected while this one waited.
        if let Some(conn) = self.current() {
            return Ok(conn);
        }
        let client = timed(self.connect_timeout, sentinel.async_get_client()).await?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(self.connect_timeout)
            .set_response_timeout(self.command_timeout);
        let conn = timed(
            self.connect_timeout,
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await?;
        tracing::info!(master = ?client.get_connection_info().addr, "redis sentinel: master connected");
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(conn.clone());
        Ok(conn)
    }

    fn current(&self) -> Option<MultiplexedConnection> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Forgets the connection after an error that means it no longer leads
    /// to a working master.
    fn check<T>(&self, reply: &Result<T, RedisError>) {
        if let Err(e) = reply {
            if e.is_io_error()
                || e.is_connection_dropped()
                || e.is_unrecoverable_error()
                || e.is_timeout()
                || e.kind() == ErrorKind::ReadOnly
            {
                tracing::debug!(error = %e, "redis sentinel: dropping the master connection");
                *self.current.lock().unwrap_or_else(PoisonError::into_inner) = None;
            }
        }
    }
}

/// `f` within `limit`, a time-out being a Redis I/O error.
async fn timed<T>(
    limit: Duration,
    f: impl std::future::Future<Output = Result<T, RedisError>>,
) -> Result<T, RedisError> {
    tokio::time::timeout(limit, f).await.unwrap_or_else(|_| {
        Err(RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "redis connection timed out",
        )))
    })
}

/// A sentinel client for the configured master; `protocol` overrides the
/// master connection's protocol.
fn sentinel_client(
    config: &RedisBrokerConfig,
    protocol: Option<ProtocolVersion>,
) -> Result<SentinelClient, BrokerError> {
    let RedisTopology::Sentinel { sentinels, master } = &config.topology else {
        return Err(BrokerError::Internal("not a sentinel topology".to_owned()));
    };
    let sentinels = parse_urls(sentinels, "sentinel")?;
    let url = config
        .url
        .as_str()
        .into_connection_info()
        .map_err(|e| BrokerError::Internal(format!("invalid redis url: {e}")))?;
    let mut redis = url.redis;
    if let Some(protocol) = protocol {
        redis.protocol = protocol;
    }
    let tls_mode = match url.addr {
        ConnectionAddr::TcpTls { insecure, .. } => Some(if insecure {
            redis::TlsMode::Insecure
        } else {
            redis::TlsMode::Secure
        }),
        _ => None,
    };
    let node = SentinelNodeConnectionInfo {
        tls_mode,
        redis_connection_info: Some(redis),
    };
    SentinelClient::build(
        sentinels,
        master.clone(),
        Some(node),
        SentinelServerType::Master,
    )
    .map_err(|e| BrokerError::Internal(format!("redis sentinel client: {e}")))
}

fn parse_urls(urls: &[String], what: &str) -> Result<Vec<ConnectionInfo>, BrokerError> {
    urls.iter()
        .map(|u| {
            u.as_str()
                .into_connection_info()
                .map_err(|e| BrokerError::Internal(format!("invalid redis {what} url {u:?}: {e}")))
        })
        .collect()
}

/// Opens the pub/sub connections of a topology.
pub(crate) struct Connector {
    kind: ConnectorKind,
    connect_timeout: Duration,
    command_timeout: Duration,
}

enum ConnectorKind {
    Single(ConnectionInfo),
    Sentinel(tokio::sync::Mutex<SentinelClient>),
    Cluster(Vec<ConnectionInfo>),
}

/// The pub/sub connections of one connection generation.
pub(crate) struct Shards {
    /// One connection per shard (one in all for single and sentinel mode).
    pub(crate) conns: Vec<MultiplexedConnection>,
    /// Slot ranges (inclusive) and the index in `conns` of the master that
    /// serves them; empty outside cluster mode.
    slots: Vec<(u16, u16, usize)>,
}

impl Shards {
    /// Whether channels are sharded (`SSUBSCRIBE`), i.e. cluster mode.
    pub(crate) fn sharded(&self) -> bool {
        !self.slots.is_empty()
    }

    /// The connection index and slot of Redis pub/sub channel `name`; `None`
    /// when no known master serves the slot.
    pub(crate) fn route(&self, name: &str) -> Option<(usize, u16)> {
        if self.slots.is_empty() {
            return Some((0, 0));
        }
        let slot = slot(name.as_bytes());
        self.slots
            .iter()
            .find(|(start, end, _)| (*start..=*end).contains(&slot))
            .map(|&(_, _, shard)| (shard, slot))
    }
}

impl Connector {
    pub(crate) fn new(config: &RedisBrokerConfig) -> Result<Connector, BrokerError> {
        let kind = match &config.topology {
            RedisTopology::Single => ConnectorKind::Single(
                config
                    .url
                    .as_str()
                    .into_connection_info()
                    .map_err(|e| BrokerError::Internal(format!("invalid redis url: {e}")))?,
            ),
            RedisTopology::Cluster { seeds } => {
                ConnectorKind::Cluster(parse_urls(seeds, "cluster seed")?)
            }
            RedisTopology::Sentinel { .. } => ConnectorKind::Sentinel(tokio::sync::Mutex::new(
                sentinel_client(config, Some(ProtocolVersion::RESP3))?,
            )),
        };
        Ok(Connector {
            kind,
            connect_timeout: config.connect_timeout,
            command_timeout: config.command_timeout,
        })
    }

    /// Opens a new generation of pub/sub connections; every push frame they
    /// receive (messages, subscription replies, disconnection notices) goes
    /// to `push`.
    pub(crate) async fn pubsub(
        &self,
        push: &UnboundedSender<PushInfo>,
    ) -> Result<Shards, BrokerError> {
        match &self.kind {
            ConnectorKind::Single(info) => Ok(Shards {
                conns: vec![self.open(info.clone(), push).await?],
                slots: Vec::new(),
            }),
            ConnectorKind::Sentinel(sentinel) => {
                let client = timed(
                    self.connect_timeout,
                    sentinel.lock().await.async_get_client(),
                )
                .await
                .map_err(broker_error)?;
                let info = client.get_connection_info().clone();
                Ok(Shards {
                    conns: vec![self.open(info, push).await?],
                    slots: Vec::new(),
                })
            }
            ConnectorKind::Cluster(seeds) => self.cluster(seeds, push).await,
        }
    }

    /// Reads the slot map from the first seed that answers and connects to
    /// every master in it.
    async fn cluster(
        &self,
        seeds: &[ConnectionInfo],
        push: &UnboundedSender<PushInfo>,
    ) -> Result<Shards, BrokerError> {
        let mut last = BrokerError::Unavailable("no redis cluster seed answered".to_owned());
        for seed in seeds {
            let map = async {
                let client = Client::open(seed.clone()).map_err(broker_error)?;
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(self.connect_timeout)
                    .set_response_timeout(self.command_timeout);
                let mut conn = timed(
                    self.connect_timeout,
                    client.get_multiplexed_async_connection_with_config(&config),
                )
                .await
                .map_err(broker_error)?;
                let reply: Value = redis::cmd("CLUSTER")
                    .arg("SLOTS")
                    .query_async(&mut conn)
                    .await
                    .map_err(broker_error)?;
                parse_slots(&reply)
            }
            .await;
            let map = match map {
                Ok(map) if !map.is_empty() => map,
                Ok(_) => {
                    last = BrokerError::Unavailable("redis cluster has no slots assigned".into());
                    continue;
                }
                Err(e) => {
                    tracing::debug!(error = %e, seed = ?seed.addr, "redis cluster seed failed");
                    last = e;
                    continue;
                }
            };
            let mut masters: Vec<(String, u16)> = Vec::new();
            let mut slots = Vec::with_capacity(map.len());
            for (start, end, host, port) in map {
                let host = if host.is_empty() {
                    seed_host(seed)
                } else {
                    host
                };
                let index = match masters.iter().position(|m| m.0 == host && m.1 == port) {
                    Some(i) => i,
                    None => {
                        masters.push((host, port));
                        masters.len() - 1
                    }
                };
                slots.push((start, end, index));
            }
            let mut conns = Vec::with_capacity(masters.len());
            for (host, port) in masters {
                conns.push(self.open(with_addr(seed, host, port), push).await?);
            }
            return Ok(Shards { conns, slots });
        }
        Err(last)
    }

    /// Opens one RESP3 connection delivering pushes to `push`.
    async fn open(
        &self,
        mut info: ConnectionInfo,
        push: &UnboundedSender<PushInfo>,
    ) -> Result<MultiplexedConnection, BrokerError> {
        info.redis.protocol = ProtocolVersion::RESP3;
        let client = Client::open(info).map_err(broker_error)?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(self.connect_timeout)
            .set_response_timeout(self.command_timeout)
            .set_push_sender(push.clone());
        timed(
            self.connect_timeout,
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await
        .map_err(broker_error)
    }
}

fn seed_host(seed: &ConnectionInfo) -> String {
    match &seed.addr {
        ConnectionAddr::Tcp(host, _) | ConnectionAddr::TcpTls { host, .. } => host.clone(),
        _ => "127.0.0.1".to_owned(),
    }
}

/// `seed` with its host and port replaced (keeping credentials and TLS).
fn with_addr(seed: &ConnectionInfo, host: String, port: u16) -> ConnectionInfo {
    let mut info = seed.clone();
    info.addr = match &seed.addr {
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host,
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => ConnectionAddr::Tcp(host, port),
    };
    info
}

/// Parses a `CLUSTER SLOTS` reply into (first slot, last slot, master host,
/// master port).
fn parse_slots(reply: &Value) -> Result<Vec<(u16, u16, String, u16)>, BrokerError> {
    let bad = || BrokerError::Internal("unexpected CLUSTER SLOTS reply".to_owned());
    let Value::Array(ranges) = reply else {
        return Err(bad());
    };
    let int = |v: &Value| match v {
        Value::Int(i) => u16::try_from(*i).ok(),
        _ => None,
    };
    let mut out = Vec::with_capacity(ranges.len());
    for range in ranges {
        let Value::Array(items) = range else {
            return Err(bad());
        };
        let (Some(start), Some(end), Some(Value::Array(master))) = (
            items.first().and_then(int),
            items.get(1).and_then(int),
            items.get(2),
        ) else {
            return Err(bad());
        };
        let host = match master.first() {
            Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(Value::SimpleString(s)) => s.clone(),
            _ => return Err(bad()),
        };
        let port = master.get(1).and_then(int).ok_or_else(bad)?;
        out.push((start, end, host, port));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` of Redis 7.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b"123456789"), 12739);
        // The hash tag decides; an empty tag does not count.
        assert_eq!(slot(b"wshub:{foo}:meta"), slot(b"foo"));
        assert_eq!(slot(b"wshub:{foo}:ch"), slot(b"{foo}"));
        assert_eq!(slot(b"a{}b"), slot(b"a{}b"));
        assert_ne!(slot(b"x{}foo"), slot(b"foo"));
    }

    #[test]
    fn slot_map_is_parsed() {
        let reply = Value::Array(vec![Value::Array(vec![
            Value::Int(0),
            Value::Int(5460),
            Value::Array(vec![
                Value::BulkString(b"127.0.0.1".to_vec()),
                Value::Int(7000),
                Value::BulkString(b"id".to_vec()),
            ]),
        ])]);
        assert_eq!(
            parse_slots(&reply).unwrap_or_default(),
            vec![(0, 5460, "127.0.0.1".to_owned(), 7000)]
        );
        assert!(parse_slots(&Value::Int(1)).is_err());
    }
}
