//! The hub: what `wshub serve` runs on top of the server library — channels,
//! the `wshub.v1` client protocol, authentication, presence and history behind a
//! broker. Being built; so far:
//!
//! - [`auth`]: JWT connection tokens (HS256/RS256/ES256) and channel grants.
//! - [`protocol`]: the `wshub.v1` client protocol's messages (see
//!   `docs/protocol.md`).
pub mod auth;
pub mod protocol;
