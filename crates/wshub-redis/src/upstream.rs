//! The Redis Streams upstream bridge: client publications on namespaces with
//! `upstream = "also"` or `"only"` are appended to a stream that backend
//! workers read with their own consumer group.
//!
//! Each publication is one `XADD {stream} MAXLEN ~ {max_len} * id … channel
//! … data … user … client … time …` (without `MAXLEN` when `max_len` is 0).
//! [`RedisUpstream::append`](wshub::hub::queue::Upstream::append) resolves
//! once Redis replied with the entry's id, so a publish the client saw
//! succeed is in the stream; a failed or unanswered append fails the
//! client's publish with error 108, and the client may retry (the retry is a
//! new entry: backends that must not act twice deduplicate on the `id`
//! field). This is at-least-once into the stream.
//!
//! `MAXLEN ~` lets Redis trim in whole macro nodes, which is much cheaper
//! than exact trimming; the stream then holds at least `max_len` entries and
//! a few more.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Value};
use wshub::hub::broker::BoxFuture;
use wshub::hub::config::UpstreamConfig;
use wshub::hub::queue::{Upstream, UpstreamError, UpstreamMessage};

use crate::ingest::QueueError;

/// Settings of a [`RedisUpstream`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisUpstreamConfig {
    /// The Redis URL. Default `redis://127.0.0.1:6379`.
    pub url: String,
    /// The stream key publications are appended to. Default
    /// `wshub-upstream`.
    pub stream: String,
    /// Approximate most entries kept (`MAXLEN ~`); 0 keeps everything.
    /// Default 1 000 000.
    pub max_len: u64,
    /// How long connecting may take. Default 5 s.
    pub connect_timeout: Duration,
    /// How long an `XADD` may take (the hub bounds the whole append with
    /// `upstream.timeout` as well). Default 5 s.
    pub command_timeout: Duration,
}

impl Default for RedisUpstreamConfig {
    fn default() -> Self {
        RedisUpstreamConfig::new("redis://127.0.0.1:6379", &UpstreamConfig::default())
    }
}

impl RedisUpstreamConfig {
    /// The settings of the `[upstream]` section with Redis at `url` (the
    /// caller resolves an empty `upstream.url` to `broker.url`).
    pub fn new(url: impl Into<String>, upstream: &UpstreamConfig) -> RedisUpstreamConfig {
        RedisUpstreamConfig {
            url: url.into(),
            stream: upstream.stream.clone(),
            max_len: upstream.max_len,
            connect_timeout: Duration::from_secs(5),
            command_timeout: upstream.timeout,
        }
    }
}

/// The upstream stream on Redis; install it with
/// [`Hub::set_upstream`](wshub::hub::Hub::set_upstream).
#[derive(Clone)]
pub struct RedisUpstream {
    conn: ConnectionManager,
    config: RedisUpstreamConfig,
}

impl std::fmt::Debug for RedisUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisUpstream")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl RedisUpstream {
    /// Connects to Redis. Fails for an invalid URL, an empty stream name, or
    /// a Redis that cannot be reached now; later outages fail the appends
    /// made during them, and the connection is re-established for the next.
    pub async fn connect(config: RedisUpstreamConfig) -> Result<RedisUpstream, QueueError> {
        if config.stream.is_empty() {
            return Err(QueueError::Config(
                "upstream.stream must not be empty".into(),
            ));
        }
        let client = Client::open(config.url.as_str())
            .map_err(|e| QueueError::Config(format!("invalid redis url: {e}")))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(config.connect_timeout)
            .set_response_timeout(config.command_timeout)
            .set_number_of_retries(1);
        let conn = tokio::time::timeout(
            config.connect_timeout,
            client.get_connection_manager_with_config(manager_config),
        )
        .await
        .map_err(|_| QueueError::Unavailable("connection timed out".into()))?
        .map_err(|e| QueueError::Unavailable(e.to_string()))?;
        tracing::info!(stream = %config.stream, max_len = config.max_len,
            "upstream: appending client publications to the redis stream");
        Ok(RedisUpstream { conn, config })
    }

    /// The settings it was connected with.
    pub fn config(&self) -> &RedisUpstreamConfig {
        &self.config
    }

    fn command(&self, msg: &UpstreamMessage) -> redis::Cmd {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&self.config.stream);
        if self.config.max_len > 0 {
            cmd.arg("MAXLEN").arg("~").arg(self.config.max_len);
        }
        cmd.arg("*")
            .arg("id")
            .arg(&msg.id)
            .arg("channel")
            .arg(&msg.channel)
            .arg("data")
            .arg(&msg.data[..])
            .arg("user")
            .arg(&msg.user)
            .arg("client")
            .arg(&msg.client)
            .arg("time")
            .arg(msg.time_ms);
        cmd
    }
}

impl Upstream for RedisUpstream {
    fn append<'a>(&'a self, msg: &'a UpstreamMessage) -> BoxFuture<'a, Result<(), UpstreamError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let reply: Value = self
                .command(msg)
                .query_async(&mut conn)
                .await
                .map_err(|e| UpstreamError::Unavailable(e.to_string()))?;
            match reply {
                Value::BulkString(_) | Value::SimpleString(_) => Ok(()),
                other => Err(UpstreamError::Unavailable(format!(
                    "unexpected XADD reply: {other:?}"
                ))),
            }
        })
    }
}
