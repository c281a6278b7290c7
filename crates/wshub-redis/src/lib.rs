//! `wshub-redis`: the Redis [`Broker`](wshub::hub::broker::Broker) for a
//! cluster of wshub nodes, and the Redis Streams message-queue bridges
//! ([`RedisIngest`] consumes publications from a stream with a consumer
//! group; [`RedisUpstream`] appends client publications to a stream for
//! backends — see `docs/queues.md`).
//!
//! Every node connects its own [`RedisBroker`] to the same Redis — one
//! server, a Redis Cluster, or a master found through Sentinel (see
//! [`RedisTopology`]); the hub holds it as an `Arc<dyn Broker>` exactly like
//! the in-memory engine, and nothing above the broker changes. The semantics match
//! [`MemoryBroker`](wshub::hub::memory::MemoryBroker)'s: per-channel offsets
//! from 1 within a random epoch, bounded history with a size and an age
//! limit, idempotency keys per channel, presence with a TTL per member,
//! join/leave events, and delivery only while the node is subscribed.
//!
//! # How it works
//!
//! * **Publish is one Lua script** (run with `EVALSHA`, loaded again after
//!   `NOSCRIPT`): check the idempotency key, create the channel's epoch if it
//!   has none, bump the offset, `XADD` the publication to the channel's
//!   Redis Stream under id `{offset}-0` with `MAXLEN` and `PEXPIRE`, then
//!   `PUBLISH` it with its offset and epoch. Redis runs scripts one at a
//!   time, so offsets are unique and contiguous with any number of nodes
//!   publishing, and every subscribed node receives a channel's publications
//!   in offset order.
//! * **The epoch changes when history is lost**: the meta key (epoch and
//!   offset) expires after [`RedisBrokerConfig::history_meta_ttl`] without
//!   use, and a Redis restarted without its data has none; either way the
//!   next publish or read starts a new random epoch at offset 0 and clients
//!   holding old positions reload instead of trusting stale offsets.
//! * **History reads** are a script too (it creates the epoch like the
//!   in-memory engine does, and keeps it alive); because entry ids are the
//!   offsets, "after `since`" is an exact `XRANGE` and "latest N" an
//!   `XREVRANGE … COUNT N`.
//! * **Events** travel on one pub/sub channel per hub channel,
//!   `{prefix}:ch:{channel}`; each node keeps one pub/sub connection,
//!   subscribed to the channels it has local subscribers for, and reconnects
//!   and resubscribes with backoff after losing it ([`RedisBroker::is_healthy`]
//!   reports it for `/readyz`). Gaps from the outage are the hub's to recover
//!   from history, by offset. Concurrent (un)subscriptions and the
//!   resubscription are **batched** into multi-channel commands of up to
//!   [`RedisBrokerConfig::subscribe_batch`] channels: a node starting with a
//!   thousand channels sends four `SUBSCRIBE`s, not a thousand.
//! * **Cross-node control** commands travel on `{prefix}:control`, and the
//!   **node registry** is one hash, `{prefix}:nodes`, whose entries carry
//!   their expiry and are pruned when read.
//! * **Presence** is a hash of client id → `ClientInfo` JSON plus a sorted set
//!   of expiry times per channel, pruned inside each presence script, and a
//!   count of present clients per user, so a join event goes out with a
//!   user's first client on any node and a leave with its last. When a node's
//!   lease lapses, the nodes that saw it alive reap its members
//!   ([`Broker::reap_node`](wshub::hub::broker::Broker::reap_node): a `SCAN`
//!   of the presence keys and one script per channel), sending the leave
//!   events it can no longer send itself.
//! * **Channel lists**: each node stores its channels and their subscriber
//!   counts under its own key with the node lease as TTL, so
//!   `/api/channels` sums the live nodes' lists on any node.
//!
//! All of a channel's keys carry the `{channel}` hash tag, so on a Redis
//! Cluster they share a slot and every script stays single-slot.
//!
//! # Topologies
//!
//! * **Single** ([`RedisBrokerConfig::new`]): one Redis server.
//! * **Cluster** ([`RedisBrokerConfig::cluster`], Redis 7 or later): scripts
//!   are routed to the master of the channel's slot, and events use
//!   **sharded pub/sub**: the scripts `SPUBLISH` to `{prefix}:{channel}:ch`
//!   (same hash tag, same slot), and each node `SSUBSCRIBE`s, on the master
//!   owning the slot, only to channels with local subscribers — so a
//!   publication crosses the cluster bus only to the shard that owns it, not
//!   to every node. Control commands use a plain `PUBLISH`, which reaches
//!   every node. The node registry and presence are single-key or
//!   single-slot, so they work unchanged. A slot migration makes a master
//!   drop its sharded subscriptions; the node then re-reads the slot map and
//!   resubscribes (as after any connection loss), and the hub recovers the
//!   gap from history.
//! * **Sentinel** ([`RedisBrokerConfig::sentinel`]): the master's address is
//!   asked of the sentinels on every (re)connect; after a failover the old
//!   master's connections are closed by Sentinel (or answer `READONLY`), and
//!   the node reconnects to the new master and resubscribes.
//!
//! # Differences from the in-memory engine
//!
//! * Expiry uses the Redis server's clock (`TIME` inside the scripts), so
//!   nodes with skewed clocks agree.
//! * When publishes to one channel use *different* history TTLs, the
//!   in-memory engine cuts older entries to the newest one's expiry. Here an
//!   entry is dropped when it or a later entry **among those read** has
//!   expired, which is the same whenever the TTL is constant per channel (the
//!   namespace setting); and the whole stream still expires with the newest
//!   TTL.
//!
//! # Why the `redis` crate
//!
//! `redis` (redis-rs) is the most used Redis client for Rust and maintained
//! under the redis-rs organisation; it has tokio support, a reconnecting
//! multiplexed [`ConnectionManager`](redis::aio::ConnectionManager) for
//! commands, RESP3 connections that hand pub/sub messages to a channel of
//! ours, cluster and sentinel clients (features `cluster-async`,
//! `sentinel`), and script invocation with `EVALSHA` fallback. `fred` is a
//! fine alternative with built-in resubscription, but is larger and would
//! hide the resubscribe step that the node's health depends on. The cluster
//! client's own resubscription is not used either: it sends every sharded
//! channel in one `SSUBSCRIBE`, which Redis refuses across slots, so this
//! crate keeps its own connection per master. `crc16` (already a dependency
//! of the cluster client) computes hash slots. The 0.32 line
//! is used because it supports the workspace's Rust 1.85 (the 1.x line needs
//! 1.88).
//!
//! # Layout
//!
//! - [`broker`]: [`RedisBroker`] and its `Broker` implementation.
//! - [`config`]: [`RedisBrokerConfig`], [`RedisTopology`] and error mapping.
//! - `codec`: how publications and join/leave events are encoded.
//! - `pubsub`: the pub/sub connections, batched (un)subscription, delivery
//!   and reconnection.
//! - `scripts`: the Lua scripts and the key layout.
//! - `topology`: connecting to a single server, a cluster or a sentinel
//!   master.
//! - [`ingest`]: [`RedisIngest`], the consumer-group reader that publishes
//!   stream entries to channels (`[ingest] engine = "redis"`).
//! - [`upstream`]: [`RedisUpstream`], the stream client publications on
//!   upstream namespaces are appended to (`[upstream] engine = "redis"`).
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use wshub::hub::broker::{Broker, BrokerEvent, PublishOptions};
//! use wshub_redis::{RedisBroker, RedisBrokerConfig};
//!
//! # async fn run() -> Result<(), wshub::hub::broker::BrokerError> {
//! let broker = RedisBroker::connect(RedisBrokerConfig::new("redis://127.0.0.1:6379")).await?;
//! broker.set_sink(Arc::new(|event: BrokerEvent| println!("{event:?}")));
//! broker.subscribe("chat").await?;
//! let position = broker
//!     .publish("chat", br#"{"text":"hi"}"#.to_vec().into(), PublishOptions::default())
//!     .await?;
//! println!("published at offset {} of epoch {}", position.offset, position.epoch);
//! let hub_broker: Arc<dyn Broker> = Arc::new(broker);
//! # drop(hub_broker);
//! # Ok(())
//! # }
//! ```

pub mod broker;
mod codec;
pub mod config;
pub mod ingest;
mod pubsub;
mod scripts;
mod topology;
pub mod upstream;

pub use broker::RedisBroker;
pub use config::{
    RedisBrokerConfig, RedisTopology, DEFAULT_HISTORY_META_TTL, DEFAULT_SUBSCRIBE_BATCH,
};
pub use ingest::{IngestStats, QueueError, RedisIngest, RedisIngestConfig};
pub use upstream::{RedisUpstream, RedisUpstreamConfig};
