//! wshub's application close codes (4000–4999) and their reconnect advice.
//!
//! 4000–4499: the client may reconnect (with backoff). 4500–4999: it should not
//! (the same request would be refused again). [`CloseCode::may_reconnect`]
//! applies this split; the CLI and the JavaScript client honour it.
//!
//! [`CloseCode::may_reconnect`]: wshub_proto::CloseCode::may_reconnect

use wshub_proto::CloseCode;

/// 4000: the server is shutting down or restarting; reconnect (to another node).
pub const SHUTDOWN: CloseCode = CloseCode(4000);
/// 4001: the client read too slowly and its outbound queue overflowed; reconnect
/// and recover what was missed.
pub const SLOW_CONSUMER: CloseCode = CloseCode(4001);
/// 4002: a write to the client stalled; reconnect.
pub const WRITE_STALLED: CloseCode = CloseCode(4002);
/// 4003: the connection token expired without a refresh; reconnect with a new
/// token.
pub const TOKEN_EXPIRED: CloseCode = CloseCode(4003);
/// 4004: the client sent commands faster than allowed; reconnect after a backoff.
pub const TOO_MANY_REQUESTS: CloseCode = CloseCode(4004);
/// 4005: the client did not authenticate (`connect`) in time; reconnect.
pub const CONNECT_TIMEOUT: CloseCode = CloseCode(4005);
/// 4500: the request was refused (bad token, forbidden); do not reconnect as is.
pub const FORBIDDEN: CloseCode = CloseCode(4500);
/// 4501: the client sent something that is not a valid hub command; a retry
/// would repeat it.
pub const BAD_REQUEST: CloseCode = CloseCode(4501);
/// 4502: the client did not offer the `wshub.v1` subprotocol.
pub const SUBPROTOCOL_REQUIRED: CloseCode = CloseCode(4502);
/// 4503: an operator disconnected the client (banned); do not reconnect.
pub const DISCONNECTED: CloseCode = CloseCode(4503);
