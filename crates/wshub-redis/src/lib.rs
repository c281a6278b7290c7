//! `wshub-redis`: the Redis [`Broker`](wshub::hub::broker::Broker) for a
//! cluster of wshub nodes, and the Redis Streams message-queue bridges
//! ([`RedisIngest`] consumes publications from a stream with a consumer
//! group; [`RedisUpstream`] appends client publications to a stream for
//! backends — see `docs/queues.md`).
//!
//! Every node connects its own [`RedisBroker`] to one Redis; the hub holds it
//! as an `Arc<dyn Broker>` exactly like the in-memory engine, and nothing
//! above the broker changes. The semantics match
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
//!   from history, by offset.
//! * **Presence** is a hash of client id → `ClientInfo` JSON plus a sorted set
//!   of expiry times per channel, pruned inside each presence script.
//!
//! All of a channel's keys carry the `{channel}` hash tag, so on a Redis
//! Cluster they share a slot and every script stays single-slot. (This crate
//! connects to a single Redis today.)
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
//! commands, a pub/sub connection that can be split into a command half and a
//! message stream, and script invocation with `EVALSHA` fallback. `fred` is a
//! fine alternative with built-in resubscription, but is larger and would
//! hide the resubscribe step that the node's health depends on. The 0.32 line
//! is used because it supports the workspace's Rust 1.85 (the 1.x line needs
//! 1.88).
//!
//! # Layout
//!
//! - [`broker`]: [`RedisBroker`] and its `Broker` implementation.
//! - [`config`]: [`RedisBrokerConfig`] and error mapping.
//! - `codec`: how publications and join/leave events are encoded.
//! - `pubsub`: the pub/sub connection, delivery and reconnection.
//! - `scripts`: the Lua scripts and the key layout.
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
pub mod upstream;

pub use broker::RedisBroker;
pub use config::{RedisBrokerConfig, DEFAULT_HISTORY_META_TTL};
pub use ingest::{IngestStats, QueueError, RedisIngest, RedisIngestConfig};
pub use upstream::{RedisUpstream, RedisUpstreamConfig};
