//! The hub: what `wshub serve` runs on top of the server library — channels,
//! the `wshub.v1` client protocol, authentication, presence and history behind a
//! broker.
//!
//! - [`auth`]: JWT connection tokens (HS256/RS256/ES256) and channel grants.
//! - [`broker`]: the `Broker` trait (publish, history, presence) and recovery.
//! - [`config`]: the hub's configuration (TOML file, environment, flags).
//! - `api`: the HTTP API, health and metrics endpoints, the WebSocket route.
//! - `core`: the [`Hub`]: channels on this node, fan-out, the operations.
//! - `mailbox`: a session's control mailbox (allocates nothing until used).
//! - [`memory`]: the in-memory broker, the single-process default.
//! - [`metrics`]: Prometheus metrics.
//! - [`protocol`]: the `wshub.v1` client protocol's messages (see
//!   `docs/protocol.md`).
//! - [`queue`]: the contract of the message-queue bridges (ingest and
//!   upstream streams).
//! - [`ratelimit`]: token buckets and per-IP limits.
//! - `serve`: the accept loop (TLS, HTTP/1.1) and graceful shutdown.
//! - `session`: one client connection speaking `wshub.v1`.
//! - `web`: the client library, demo chat and admin dashboard, and their endpoints.
#[cfg(all(feature = "axum", feature = "tls"))]
mod api;
pub mod auth;
pub mod broker;
pub mod config;
mod core;
mod mailbox;
pub mod memory;
pub mod metrics;
pub mod protocol;
pub mod queue;
pub mod ratelimit;
#[cfg(all(feature = "axum", feature = "tls"))]
mod serve;
mod session;
#[cfg(all(feature = "axum", feature = "tls"))]
mod web;

pub use self::core::{Hub, HubError, OpError, PublishRequest, NODE_ANNOUNCE, NODE_TTL};
