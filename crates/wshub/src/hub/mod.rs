//! The hub: what `wshub serve` runs on top of the server library — channels,
//! the `wshub.v1` client protocol, authentication, presence and history behind a
//! broker. Being built; so far:
//!
//! - [`auth`]: JWT connection tokens (HS256/RS256/ES256) and channel grants.
//! - [`broker`]: the `Broker` trait (publish, history, presence) and recovery.
//! - [`memory`]: the in-memory broker, the single-process default.
//! - [`protocol`]: the `wshub.v1` client protocol's messages (see
//!   `docs/protocol.md`).
pub mod auth;
pub mod broker;
pub mod memory;
pub mod protocol;
