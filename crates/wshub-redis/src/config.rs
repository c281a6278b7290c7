//! Settings of a [`RedisBroker`](crate::RedisBroker) — which Redis
//! deployment it talks to ([`RedisTopology`]) and its timeouts — and how Redis
//! errors map to [`BrokerError`]s.

use std::time::Duration;

use redis::RedisError;
use wshub::hub::broker::BrokerError;

/// The default [`RedisBrokerConfig::history_meta_ttl`]: one day, like the
/// in-memory broker's.
pub const DEFAULT_HISTORY_META_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// The default [`RedisBrokerConfig::subscribe_batch`].
pub const DEFAULT_SUBSCRIBE_BATCH: usize = 256;

/// Which Redis deployment the broker uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum RedisTopology {
    /// One Redis server at [`RedisBrokerConfig::url`]. The default.
    #[default]
    Single,
    /// A Redis Cluster (Redis 7 or later, for sharded pub/sub). `seeds` are
    /// `redis://` URLs of some of its nodes; the rest is discovered. The
    /// password and TLS settings of the seeds apply to every node.
    Cluster {
        /// URLs of cluster nodes to start from (at least one).
        seeds: Vec<String>,
    },
    /// A master found through Redis Sentinel, looked up again on every
    /// reconnect so the broker follows a failover. The credentials and
    /// database of [`RedisBrokerConfig::url`] apply to the master; its host
    /// and port are ignored.
    Sentinel {
        /// `redis://` URLs of the sentinels (at least one).
        sentinels: Vec<String>,
        /// The monitored master's name (`sentinel monitor NAME …`).
        master: String,
    },
}

/// Settings of a [`RedisBroker`](crate::RedisBroker).
///
/// Build one with [`RedisBrokerConfig::new`] and adjust fields; every field
/// documents its default.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisBrokerConfig {
    /// The Redis URL, e.g. `redis://127.0.0.1:6379/0` or
    /// `redis://:password@host/`. Default `redis://127.0.0.1:6379`.
    pub url: String,
    /// Single server, Redis Cluster or Sentinel. Default
    /// [`RedisTopology::Single`].
    pub topology: RedisTopology,
    /// The most channels one `SUBSCRIBE`/`UNSUBSCRIBE` (or `SSUBSCRIBE`)
    /// carries: concurrent (un)subscriptions, and the resubscription after a
    /// reconnect, are coalesced into commands of up to this many channels.
    /// Zero counts as one. Default [`DEFAULT_SUBSCRIBE_BATCH`].
    pub subscribe_batch: usize,
    /// The prefix of every key and pub/sub channel, so several hubs can
    /// share one Redis. Default `wshub`.
    pub prefix: String,
    /// How long a channel's stream (offset and epoch) survives without a
    /// publish or history read; after that a new epoch starts. Never shorter
    /// than the history it holds. Default [`DEFAULT_HISTORY_META_TTL`].
    pub history_meta_ttl: Duration,
    /// How long a command may take before it fails with
    /// [`BrokerError::Timeout`]. Default 5 s.
    pub command_timeout: Duration,
    /// How long one connection attempt may take. Default 5 s.
    pub connect_timeout: Duration,
    /// The first delay before reconnecting the pub/sub connection; it
    /// doubles per failed attempt, with ±50 % jitter so nodes that lost the
    /// same Redis do not reconnect in lockstep. Default 100 ms.
    pub reconnect_min_delay: Duration,
    /// The longest delay between reconnect attempts. Default 5 s.
    pub reconnect_max_delay: Duration,
    /// How often the idle pub/sub connection is checked with `PING`; a ping
    /// without answer within `command_timeout` counts as a lost connection
    /// (it catches half-open TCP connections). Default 10 s.
    pub ping_interval: Duration,
}

impl Default for RedisBrokerConfig {
    fn default() -> Self {
        RedisBrokerConfig {
            url: "redis://127.0.0.1:6379".to_owned(),
            topology: RedisTopology::Single,
            subscribe_batch: DEFAULT_SUBSCRIBE_BATCH,
            prefix: "wshub".to_owned(),
            history_meta_ttl: DEFAULT_HISTORY_META_TTL,
            command_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            reconnect_min_delay: Duration::from_millis(100),
            reconnect_max_delay: Duration::from_secs(5),
            ping_interval: Duration::from_secs(10),
        }
    }
}

impl RedisBrokerConfig {
    /// The defaults with `url`.
    pub fn new(url: impl Into<String>) -> RedisBrokerConfig {
        RedisBrokerConfig {
            url: url.into(),
            ..RedisBrokerConfig::default()
        }
    }

    /// The defaults for a Redis Cluster reached through `seeds`.
    pub fn cluster<S: Into<String>>(seeds: impl IntoIterator<Item = S>) -> RedisBrokerConfig {
        RedisBrokerConfig {
            topology: RedisTopology::Cluster {
                seeds: seeds.into_iter().map(Into::into).collect(),
            },
            ..RedisBrokerConfig::default()
        }
    }

    /// The defaults for the master `master` monitored by `sentinels`.
    pub fn sentinel<S: Into<String>>(
        sentinels: impl IntoIterator<Item = S>,
        master: impl Into<String>,
    ) -> RedisBrokerConfig {
        RedisBrokerConfig {
            topology: RedisTopology::Sentinel {
                sentinels: sentinels.into_iter().map(Into::into).collect(),
                master: master.into(),
            },
            ..RedisBrokerConfig::default()
        }
    }

    /// Checks the settings [`RedisBroker::connect`](crate::RedisBroker::connect)
    /// cannot work without; the error says which and why.
    pub fn validate(&self) -> Result<(), BrokerError> {
        let bad = |msg: String| Err(BrokerError::Internal(msg));
        match &self.topology {
            RedisTopology::Single => {}
            RedisTopology::Cluster { seeds } => {
                if seeds.is_empty() {
                    return bad("redis cluster mode needs at least one seed node URL".to_owned());
                }
            }
            RedisTopology::Sentinel { sentinels, master } => {
                if sentinels.is_empty() {
                    return bad("redis sentinel mode needs at least one sentinel URL".to_owned());
                }
                if master.is_empty() {
                    return bad("redis sentinel mode needs the master's name".to_owned());
                }
            }
        }
        if self.prefix.contains(['{', '}']) {
            return bad(format!(
                "redis key prefix {:?} must not contain braces (they are cluster hash tags)",
                self.prefix
            ));
        }
        Ok(())
    }
}

/// Maps a Redis client error to the broker's error kinds: lost or refused
/// connections are temporary ([`BrokerError::Unavailable`]), time-outs are
/// [`BrokerError::Timeout`], anything else (a script error, an unexpected
/// reply) is [`BrokerError::Internal`].
pub(crate) fn broker_error(err: RedisError) -> BrokerError {
    if err.is_timeout() {
        BrokerError::Timeout
    } else if err.is_io_error()
        || err.is_connection_refusal()
        || err.is_connection_dropped()
        || err.is_unrecoverable_error()
    {
        BrokerError::Unavailable(err.to_string())
    } else {
        BrokerError::Internal(err.to_string())
    }
}
