//! The hub's client protocol, `wshub.v1`: the JSON messages browsers and apps
//! exchange with `wshub serve` over WebSocket text frames.
//!
//! The normative description, with an example of every message, the error-code
//! and close-code tables, the recovery rules and the limits, is
//! `docs/protocol.md` at the repository root. This module implements it:
//!
//! * [`parse_command`] turns a client frame into a [`Command`] (an id plus a
//!   typed [`Method`]) or a [`ProtocolError`] naming the field and the reason;
//!   it never panics and its errors stay short whatever the input size.
//! * [`Reply`] (one per command: a [`CommandResult`] or a [`ReplyError`]) and
//!   [`Push`] (server-initiated, no id) are what the server sends;
//!   [`Reply::to_json`] and [`Push::to_json`] encode them.
//! * [`parse_reply`], [`parse_push`] and [`parse_server_message`] are the client
//!   side (the CLI, tests), and [`Command::to_json`] encodes a command.
//!
//! The unit tests parse every example block of `docs/protocol.md` and check
//! that it round-trips, and compare the doc's tables with [`ErrorCode::ALL`]
//! and [`CLOSE_CODES`], so the document and the code cannot drift apart.

use std::fmt;

use serde::de::{self, Deserializer};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The WebSocket subprotocol a client must offer (`Sec-WebSocket-Protocol`).
pub const SUBPROTOCOL: &str = "wshub.v1";

/// The largest command id: 2^53 − 1, the largest integer a JavaScript number
/// holds exactly. Ids are 1..=`MAX_ID`.
pub const MAX_ID: u64 = (1 << 53) - 1;

/// The longest channel name, in bytes.
pub const MAX_CHANNEL_LEN: usize = 255;

/// The longest epoch string, in bytes.
pub const MAX_EPOCH_LEN: usize = 64;

/// The longest client `name` or `version` in `connect`, in bytes.
pub const MAX_CLIENT_NAME_LEN: usize = 64;

/// How many bytes of a client-supplied name (unknown method, unknown field)
/// an error message quotes; longer names are cut and end with `…`.
const MAX_QUOTED_LEN: usize = 64;

// ---------------------------------------------------------------------------
// Shared value types
// ---------------------------------------------------------------------------

/// A place in a channel's stream: the offset of a publication and the epoch of
/// the history it belongs to.
///
/// Offsets increase by one per publication within an epoch, starting at 1
/// (offset 0 means "nothing published yet in this epoch"). The epoch is an
/// opaque string that changes whenever the channel's history is lost; an
/// offset is only meaningful together with its epoch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Position {
    /// The offset of the last publication (0: none yet in this epoch).
    pub offset: u64,
    /// The epoch the offset belongs to.
    pub epoch: String,
}

/// A connected client as other clients see it: in presence, join/leave
/// pushes and as the publisher of a publication.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientInfo {
    /// The connection's id, unique in the cluster (assigned at connect).
    pub client: String,
    /// The user id from the token's `sub` claim; empty for anonymous clients.
    pub user: String,
    /// Connection info from the token's `info` claim, if any (any JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Value>,
}

/// One message of a channel, as found in history and recovery replies (the
/// epoch is that of the reply's `position`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Publication {
    /// The publication's offset in its channel.
    pub offset: u64,
    /// The published data (any JSON).
    pub data: Value,
    /// The publishing client, when a client published it and the namespace
    /// shows publishers; absent for backend publishes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<ClientInfo>,
}

// ---------------------------------------------------------------------------
// Commands (client → server)
// ---------------------------------------------------------------------------

/// A client command: an id, echoed in its single reply, and the method.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// The command id, 1..=[`MAX_ID`]; chosen by the client, echoed in the reply.
    pub id: u64,
    /// What the client asks for, with its parameters.
    pub method: Method,
}

/// The methods of `wshub.v1`, with their typed parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum Method {
    /// Authenticate the connection; must be the first command.
    Connect(ConnectParams),
    /// Subscribe to a channel, optionally recovering what was missed.
    Subscribe(SubscribeParams),
    /// Leave a channel (succeeds when not subscribed).
    Unsubscribe(ChannelParams),
    /// Publish data to a channel.
    Publish(PublishParams),
    /// List the clients present in a channel.
    Presence(ChannelParams),
    /// Read a channel's history.
    History(HistoryParams),
    /// Application-level ping; the reply is empty.
    Ping,
    /// Replace the connection's token before it expires.
    Refresh(RefreshParams),
}

/// The name of a method, without parameters (to decode a reply whose command
/// is known only by its id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MethodKind {
    /// `connect`
    Connect,
    /// `subscribe`
    Subscribe,
    /// `unsubscribe`
    Unsubscribe,
    /// `publish`
    Publish,
    /// `presence`
    Presence,
    /// `history`
    History,
    /// `ping`
    Ping,
    /// `refresh`
    Refresh,
}

impl MethodKind {
    /// Every method, in documentation order.
    pub const ALL: [MethodKind; 8] = [
        MethodKind::Connect,
        MethodKind::Subscribe,
        MethodKind::Unsubscribe,
        MethodKind::Publish,
        MethodKind::Presence,
        MethodKind::History,
        MethodKind::Ping,
        MethodKind::Refresh,
    ];

    /// The method's name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            MethodKind::Connect => "connect",
            MethodKind::Subscribe => "subscribe",
            MethodKind::Unsubscribe => "unsubscribe",
            MethodKind::Publish => "publish",
            MethodKind::Presence => "presence",
            MethodKind::History => "history",
            MethodKind::Ping => "ping",
            MethodKind::Refresh => "refresh",
        }
    }

    /// The method with this wire name, if any.
    pub fn from_name(name: &str) -> Option<MethodKind> {
        MethodKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl fmt::Display for MethodKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Method {
    /// The method's kind (its name without parameters).
    pub fn kind(&self) -> MethodKind {
        match self {
            Method::Connect(_) => MethodKind::Connect,
            Method::Subscribe(_) => MethodKind::Subscribe,
            Method::Unsubscribe(_) => MethodKind::Unsubscribe,
            Method::Publish(_) => MethodKind::Publish,
            Method::Presence(_) => MethodKind::Presence,
            Method::History(_) => MethodKind::History,
            Method::Ping => MethodKind::Ping,
            Method::Refresh(_) => MethodKind::Refresh,
        }
    }
}

/// Parameters of `connect`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ConnectParams {
    /// A JWT (HS256/RS256, per the hub's config); absent for anonymous access
    /// when the hub allows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The client library's name (for logs and metrics), at most 64 bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The client library's version, at most 64 bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// Parameters of `subscribe`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubscribeParams {
    /// The channel.
    pub channel: String,
    /// The position of the last publication the client saw, to recover the
    /// ones it missed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<Position>,
}

/// Parameters of the methods that only name a channel (`unsubscribe`,
/// `presence`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelParams {
    /// The channel.
    pub channel: String,
}

/// Parameters of `publish`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PublishParams {
    /// The channel.
    pub channel: String,
    /// What to publish (any JSON, `null` included).
    pub data: Value,
}

/// Parameters of `history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryParams {
    /// The channel.
    pub channel: String,
    /// At most this many publications (the server caps it at the namespace's
    /// history size; absent: that size; 0: only the current position).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Only publications after this position (absent: the latest ones).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<Position>,
}

/// Parameters of `refresh`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RefreshParams {
    /// The new JWT; its `sub` must equal the connection's user.
    pub token: String,
}

impl Serialize for Command {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let has_params = !matches!(self.method, Method::Ping);
        let mut map = serializer.serialize_map(Some(if has_params { 3 } else { 2 }))?;
        map.serialize_entry("id", &self.id)?;
        map.serialize_entry("method", self.method.kind().name())?;
        match &self.method {
            Method::Connect(p) => map.serialize_entry("params", p)?,
            Method::Subscribe(p) => map.serialize_entry("params", p)?,
            Method::Unsubscribe(p) | Method::Presence(p) => map.serialize_entry("params", p)?,
            Method::Publish(p) => map.serialize_entry("params", p)?,
            Method::History(p) => map.serialize_entry("params", p)?,
            Method::Ping => {}
            Method::Refresh(p) => map.serialize_entry("params", p)?,
        }
        map.end()
    }
}

impl Command {
    /// Encodes the command as one JSON text frame.
    pub fn to_json(&self) -> String {
        encode(self)
    }
}

// ---------------------------------------------------------------------------
// Replies (server → client, one per command)
// ---------------------------------------------------------------------------

/// The single reply to a command: its id and either a result or an error.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The id of the command this answers.
    pub id: u64,
    /// `Ok`: the `result` member; `Err`: the `error` member.
    pub outcome: Result<CommandResult, ReplyError>,
}

impl Reply {
    /// A successful reply.
    pub fn ok(id: u64, result: CommandResult) -> Reply {
        Reply {
            id,
            outcome: Ok(result),
        }
    }

    /// An error reply.
    pub fn error(id: u64, error: ReplyError) -> Reply {
        Reply {
            id,
            outcome: Err(error),
        }
    }

    /// Encodes the reply as one JSON text frame.
    pub fn to_json(&self) -> String {
        encode(self)
    }
}

impl Serialize for Reply {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("id", &self.id)?;
        match &self.outcome {
            Ok(result) => map.serialize_entry("result", result)?,
            Err(error) => map.serialize_entry("error", error)?,
        }
        map.end()
    }
}

/// The `result` of a successful command; the variant matches the method.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandResult {
    /// Reply to `connect`.
    Connect(ConnectResult),
    /// Reply to `subscribe`.
    Subscribe(SubscribeResult),
    /// Reply to `unsubscribe`: `{}`.
    Unsubscribe,
    /// Reply to `publish`: the publication's position, or that it went
    /// upstream only.
    Publish(PublishResult),
    /// Reply to `presence`.
    Presence(PresenceResult),
    /// Reply to `history`.
    History(HistoryResult),
    /// Reply to `ping`: `{}`.
    Ping,
    /// Reply to `refresh`.
    Refresh(RefreshResult),
}

impl CommandResult {
    /// The method this result answers.
    pub fn kind(&self) -> MethodKind {
        match self {
            CommandResult::Connect(_) => MethodKind::Connect,
            CommandResult::Subscribe(_) => MethodKind::Subscribe,
            CommandResult::Unsubscribe => MethodKind::Unsubscribe,
            CommandResult::Publish(_) => MethodKind::Publish,
            CommandResult::Presence(_) => MethodKind::Presence,
            CommandResult::History(_) => MethodKind::History,
            CommandResult::Ping => MethodKind::Ping,
            CommandResult::Refresh(_) => MethodKind::Refresh,
        }
    }
}

impl Serialize for CommandResult {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            CommandResult::Connect(r) => r.serialize(serializer),
            CommandResult::Subscribe(r) => r.serialize(serializer),
            CommandResult::Publish(r) => r.serialize(serializer),
            CommandResult::Presence(r) => r.serialize(serializer),
            CommandResult::History(r) => r.serialize(serializer),
            CommandResult::Refresh(r) => r.serialize(serializer),
            CommandResult::Unsubscribe | CommandResult::Ping => {
                serializer.serialize_map(Some(0))?.end()
            }
        }
    }
}

/// Result of `publish`.
///
/// A publication that was fanned out has a position (`offset` and `epoch`);
/// one in a namespace with `upstream = "only"` has none and `upstream: true`
/// (it was appended to the upstream stream for backends). With
/// `upstream = "also"` both are present.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PublishResult {
    /// The publication's offset, when it was fanned out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// The epoch of `offset`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    /// Whether it was appended to the upstream stream.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub upstream: bool,
}

impl PublishResult {
    /// The result of a publication fanned out at `position`.
    pub fn at(position: Position) -> PublishResult {
        PublishResult {
            offset: Some(position.offset),
            epoch: Some(position.epoch),
            upstream: false,
        }
    }

    /// The position, when the publication was fanned out.
    pub fn position(&self) -> Option<Position> {
        Some(Position {
            offset: self.offset?,
            epoch: self.epoch.clone()?,
        })
    }
}

/// Result of `connect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectResult {
    /// The connection's id, unique in the cluster.
    pub client: String,
    /// The user id from the token; empty when anonymous.
    pub user: String,
    /// When the token expires, Unix time in seconds; absent: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
    /// Seconds from this reply until the token expires (immune to clock skew;
    /// refresh before it elapses); absent: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
    /// Seconds of silence after which the client sends a `ping`.
    pub ping: u32,
    /// Seconds the client waits for the `ping` reply before reconnecting.
    pub pong: u32,
}

/// Result of `subscribe`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscribeResult {
    /// The channel's current position; pushes that follow have larger offsets.
    pub position: Position,
    /// Whether the channel keeps history, so a later `since` can recover.
    pub recoverable: bool,
    /// With `since`: whether every missed publication is in `publications`.
    /// `false` with `since` means the gap cannot be filled. Always `false`
    /// without `since`.
    pub recovered: bool,
    /// The missed publications, oldest first (only when `recovered`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publications: Vec<Publication>,
}

/// Result of `presence`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceResult {
    /// The clients subscribed to the channel, in no particular order.
    pub members: Vec<ClientInfo>,
}

/// Result of `history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryResult {
    /// The channel's current position.
    pub position: Position,
    /// The publications, oldest first.
    pub publications: Vec<Publication>,
}

/// Result of `refresh`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshResult {
    /// When the new token expires, Unix time in seconds; absent: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
    /// Seconds from this reply until the new token expires; absent: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
}

/// The `error` member of a failed command's reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyError {
    /// What went wrong, as a number from the documented table.
    pub code: ErrorCode,
    /// A human-readable explanation (for logs, not for matching).
    pub message: String,
}

impl ReplyError {
    /// An error with the code's standard message.
    pub fn new(code: ErrorCode) -> ReplyError {
        ReplyError {
            code,
            message: code.message().to_owned(),
        }
    }

    /// An error with a specific message.
    pub fn with_message(code: ErrorCode, message: impl Into<String>) -> ReplyError {
        ReplyError {
            code,
            message: message.into(),
        }
    }
}

/// The error codes of `wshub.v1` replies (and of `unsub` pushes).
///
/// On the wire a code is a JSON number; the set is closed within `wshub.v1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u16)]
pub enum ErrorCode {
    /// 100: the server failed; retry with backoff.
    Internal = 100,
    /// 101: no valid token, or a command before `connect`.
    Unauthorized = 101,
    /// 102: the channel's namespace does not exist.
    UnknownChannel = 102,
    /// 103: the token does not allow this on this channel.
    PermissionDenied = 103,
    /// 104: the method is not one of `wshub.v1`.
    MethodNotFound = 104,
    /// 105: the connection is already subscribed to the channel.
    AlreadySubscribed = 105,
    /// 106: a per-connection limit (channels per connection) is reached.
    LimitExceeded = 106,
    /// 107: the command is malformed (the message names the field).
    BadRequest = 107,
    /// 108: the feature (history, presence, publish) is off for the namespace.
    NotAvailable = 108,
    /// 109: the token has expired.
    TokenExpired = 109,
    /// 110: the connection sends commands too fast; slow down.
    TooManyRequests = 110,
    /// 111: history no longer holds the position asked for.
    UnrecoverablePosition = 111,
    /// 112: the publication's data exceeds the namespace's size limit.
    MessageTooLarge = 112,
}

impl ErrorCode {
    /// Every code, in numeric order.
    pub const ALL: [ErrorCode; 13] = [
        ErrorCode::Internal,
        ErrorCode::Unauthorized,
        ErrorCode::UnknownChannel,
        ErrorCode::PermissionDenied,
        ErrorCode::MethodNotFound,
        ErrorCode::AlreadySubscribed,
        ErrorCode::LimitExceeded,
        ErrorCode::BadRequest,
        ErrorCode::NotAvailable,
        ErrorCode::TokenExpired,
        ErrorCode::TooManyRequests,
        ErrorCode::UnrecoverablePosition,
        ErrorCode::MessageTooLarge,
    ];

    /// The number sent on the wire.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The code with this number, if `wshub.v1` defines one.
    pub fn from_code(code: u16) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.code() == code)
    }

    /// The code's name in the documentation's table (`bad_request`, …).
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::Internal => "internal",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::UnknownChannel => "unknown_channel",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::MethodNotFound => "method_not_found",
            ErrorCode::AlreadySubscribed => "already_subscribed",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::NotAvailable => "not_available",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::TooManyRequests => "too_many_requests",
            ErrorCode::UnrecoverablePosition => "unrecoverable_position",
            ErrorCode::MessageTooLarge => "message_too_large",
        }
    }

    /// The standard message (used by [`ReplyError::new`]).
    pub fn message(self) -> &'static str {
        match self {
            ErrorCode::Internal => "internal server error",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::UnknownChannel => "unknown channel",
            ErrorCode::PermissionDenied => "permission denied",
            ErrorCode::MethodNotFound => "method not found",
            ErrorCode::AlreadySubscribed => "already subscribed",
            ErrorCode::LimitExceeded => "limit exceeded",
            ErrorCode::BadRequest => "bad request",
            ErrorCode::NotAvailable => "not available",
            ErrorCode::TokenExpired => "token expired",
            ErrorCode::TooManyRequests => "too many requests",
            ErrorCode::UnrecoverablePosition => "unrecoverable position",
            ErrorCode::MessageTooLarge => "message too large",
        }
    }

    /// Whether sending the same command again later may succeed without the
    /// client changing anything (100 and 110).
    pub fn is_temporary(self) -> bool {
        matches!(self, ErrorCode::Internal | ErrorCode::TooManyRequests)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code(), self.message())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u16(self.code())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = u16::deserialize(deserializer)?;
        ErrorCode::from_code(code)
            .ok_or_else(|| de::Error::custom(format_args!("unknown error code {code}")))
    }
}

// ---------------------------------------------------------------------------
// Pushes (server → client, no id)
// ---------------------------------------------------------------------------

/// A message the server sends on its own; its `push` member names the kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "push", rename_all = "snake_case")]
pub enum Push {
    /// A publication on a subscribed channel.
    Pub {
        /// The channel.
        channel: String,
        /// The publication's offset.
        offset: u64,
        /// The epoch of the offset.
        epoch: String,
        /// The published data.
        data: Value,
        /// The publishing client, if shown (see [`Publication::info`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        info: Option<ClientInfo>,
    },
    /// A client subscribed to a channel (namespaces with join/leave on).
    Join {
        /// The channel.
        channel: String,
        /// Who joined.
        member: ClientInfo,
    },
    /// A client left a channel (namespaces with join/leave on).
    Leave {
        /// The channel.
        channel: String,
        /// Who left.
        member: ClientInfo,
    },
    /// The server ended a subscription.
    Unsub {
        /// The channel.
        channel: String,
        /// Why, from the error-code table.
        code: ErrorCode,
        /// A human-readable reason.
        reason: String,
        /// Whether the client should subscribe again (with its last position).
        resubscribe: bool,
    },
    /// The server is about to close the connection with this close code.
    Disconnect {
        /// The WebSocket close code that follows (see [`CLOSE_CODES`]).
        code: u16,
        /// A human-readable reason.
        reason: String,
        /// Whether the client may reconnect (4000–4499) or not (4500–4999).
        reconnect: bool,
    },
}

impl Push {
    /// Encodes the push as one JSON text frame.
    pub fn to_json(&self) -> String {
        encode(self)
    }

    /// A `pub` push of `publication`, which is at `epoch` in `channel`.
    pub fn publication(
        channel: impl Into<String>,
        epoch: impl Into<String>,
        publication: Publication,
    ) -> Push {
        Push::Pub {
            channel: channel.into(),
            offset: publication.offset,
            epoch: epoch.into(),
            data: publication.data,
            info: publication.info,
        }
    }

    /// A `disconnect` push announcing close code `code`; `reconnect` follows
    /// from the code (see [`may_reconnect`]).
    pub fn disconnect(code: u16, reason: impl Into<String>) -> Push {
        Push::Disconnect {
            code,
            reason: reason.into(),
            reconnect: may_reconnect(code),
        }
    }
}

// ---------------------------------------------------------------------------
// Close codes
// ---------------------------------------------------------------------------

/// A WebSocket close code the hub uses, with its meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubCloseCode {
    /// The close code.
    pub code: u16,
    /// Its short name (the close frame's reason).
    pub name: &'static str,
    /// Whether the client may reconnect; always `code < 4500`.
    pub reconnect: bool,
}

/// The application close codes the hub sends (4000–4499: the client may
/// reconnect with backoff; 4500–4999: it should not). They extend the library's
/// `close_codes` module, which defines 4000, 4001, 4002 and 4500.
pub const CLOSE_CODES: [HubCloseCode; 10] = [
    HubCloseCode {
        code: crate::close_codes::SHUTDOWN.0,
        name: "shutdown",
        reconnect: true,
    },
    HubCloseCode {
        code: crate::close_codes::SLOW_CONSUMER.0,
        name: "slow consumer",
        reconnect: true,
    },
    HubCloseCode {
        code: crate::close_codes::WRITE_STALLED.0,
        name: "write stalled",
        reconnect: true,
    },
    HubCloseCode {
        code: crate::close_codes::TOKEN_EXPIRED.0,
        name: "token expired",
        reconnect: true,
    },
    HubCloseCode {
        code: crate::close_codes::TOO_MANY_REQUESTS.0,
        name: "too many requests",
        reconnect: true,
    },
    HubCloseCode {
        code: crate::close_codes::CONNECT_TIMEOUT.0,
        name: "connect timeout",
        reconnect: true,
    },
    HubCloseCode {
        code: crate::close_codes::FORBIDDEN.0,
        name: "forbidden",
        reconnect: false,
    },
    HubCloseCode {
        code: crate::close_codes::BAD_REQUEST.0,
        name: "bad request",
        reconnect: false,
    },
    HubCloseCode {
        code: crate::close_codes::SUBPROTOCOL_REQUIRED.0,
        name: "subprotocol required",
        reconnect: false,
    },
    HubCloseCode {
        code: crate::close_codes::DISCONNECTED.0,
        name: "disconnected",
        reconnect: false,
    },
];

/// The reconnect advice of an application close code: `true` for
/// 4000–4499, `false` for 4500–4999 and for anything else.
pub fn may_reconnect(code: u16) -> bool {
    (4000..5000).contains(&code) && wshub_proto::CloseCode(code).may_reconnect()
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Why a frame is not a valid message, and the command id when it was read
/// before the problem was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}")]
pub struct ProtocolError {
    /// The command's id, if the frame had a valid one (so the server can reply).
    pub id: Option<u64>,
    /// What is wrong.
    pub kind: ProtocolErrorKind,
}

/// What is wrong with a frame. Names quoted from the input are cut to 64
/// bytes, so errors stay short whatever the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolErrorKind {
    /// The frame is not JSON (or nests deeper than 128 levels).
    #[error("invalid JSON at line {line}, column {column}: {reason}")]
    Syntax {
        /// 1-based line of the problem.
        line: usize,
        /// 1-based column of the problem.
        column: usize,
        /// The JSON parser's description.
        reason: String,
    },
    /// The frame is JSON but not an object.
    #[error("expected a JSON object, found {found}")]
    NotAnObject {
        /// What was found (`an array`, `a string`, …).
        found: &'static str,
    },
    /// A required field is absent.
    #[error("missing field `{field}`")]
    MissingField {
        /// The field's path (`id`, `params.channel`, …).
        field: String,
    },
    /// A field has the wrong type or value.
    #[error("invalid field `{field}`: {reason}")]
    InvalidField {
        /// The field's path.
        field: String,
        /// What was expected and what was found.
        reason: String,
    },
    /// A field that `wshub.v1` does not define.
    #[error("unknown field `{field}`")]
    UnknownField {
        /// The field's path.
        field: String,
    },
    /// The method is not one of `wshub.v1`.
    #[error(
        "unknown method `{method}` (expected connect, subscribe, unsubscribe, publish, presence, history, ping or refresh)"
    )]
    UnknownMethod {
        /// The method name received.
        method: String,
    },
}

impl ProtocolError {
    fn new(id: Option<u64>, kind: ProtocolErrorKind) -> ProtocolError {
        ProtocolError { id, kind }
    }

    /// The reply error code: 104 for an unknown method, 107 otherwise.
    pub fn code(&self) -> ErrorCode {
        match self.kind {
            ProtocolErrorKind::UnknownMethod { .. } => ErrorCode::MethodNotFound,
            _ => ErrorCode::BadRequest,
        }
    }

    /// The error reply the server sends, when the frame had a valid id.
    /// Without one there is nobody to reply to: the server closes with
    /// [`CLOSE_BAD_REQUEST`].
    pub fn to_reply(&self) -> Option<Reply> {
        self.id
            .map(|id| Reply::error(id, ReplyError::with_message(self.code(), self.to_string())))
    }
}

/// The close code (4501) for a frame that cannot be answered: not JSON, not an
/// object, no valid id, or a binary frame.
pub const CLOSE_BAD_REQUEST: u16 = 4501;

// ---------------------------------------------------------------------------
// Parsing commands
// ---------------------------------------------------------------------------

/// Parses one client text frame into a [`Command`].
///
/// Checks, in order: valid JSON, an object, `id` (an integer 1..=[`MAX_ID`]),
/// no unknown top-level field, `method` (a known name), then `params` for that
/// method (no unknown field, each field's type and limits). The first problem
/// found is returned; it carries the id once the id was valid. Never panics;
/// time is linear in the input and the error's size is bounded.
pub fn parse_command(text: &str) -> Result<Command, ProtocolError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| ProtocolError::new(None, syntax_error(&e)))?;
    let Value::Object(map) = value else {
        return Err(ProtocolError::new(
            None,
            ProtocolErrorKind::NotAnObject {
                found: kind_of(&value),
            },
        ));
    };
    let top = Obj {
        map: &map,
        path: "",
    };
    let id = top.id().map_err(|kind| ProtocolError::new(None, kind))?;
    let with_id = |kind| ProtocolError::new(Some(id), kind);
    top.deny_unknown(&["id", "method", "params"])
        .map_err(with_id)?;
    let name = match map.get("method") {
        None => return Err(with_id(missing("", "method"))),
        Some(Value::String(s)) => s,
        Some(other) => {
            return Err(with_id(invalid(
                "",
                "method",
                format!("expected a string, found {}", kind_of(other)),
            )))
        }
    };
    let Some(kind) = MethodKind::from_name(name) else {
        return Err(with_id(ProtocolErrorKind::UnknownMethod {
            method: quote(name),
        }));
    };
    let method = parse_params(kind, map.get("params")).map_err(with_id)?;
    Ok(Command { id, method })
}

fn parse_params(kind: MethodKind, params: Option<&Value>) -> Result<Method, ProtocolErrorKind> {
    let params = match params {
        Some(Value::Object(map)) => map,
        Some(Value::Null) | None if kind == MethodKind::Ping => return Ok(Method::Ping),
        None => return Err(missing("", "params")),
        Some(other) => {
            return Err(invalid(
                "",
                "params",
                format!("expected an object, found {}", kind_of(other)),
            ))
        }
    };
    let p = Obj {
        map: params,
        path: "params",
    };
    Ok(match kind {
        MethodKind::Connect => {
            p.deny_unknown(&["token", "name", "version"])?;
            Method::Connect(ConnectParams {
                token: p.opt_string("token", usize::MAX)?,
                name: p.opt_string("name", MAX_CLIENT_NAME_LEN)?,
                version: p.opt_string("version", MAX_CLIENT_NAME_LEN)?,
            })
        }
        MethodKind::Subscribe => {
            p.deny_unknown(&["channel", "since"])?;
            Method::Subscribe(SubscribeParams {
                channel: p.channel()?,
                since: p.opt_position("since")?,
            })
        }
        MethodKind::Unsubscribe => {
            p.deny_unknown(&["channel"])?;
            Method::Unsubscribe(ChannelParams {
                channel: p.channel()?,
            })
        }
        MethodKind::Publish => {
            p.deny_unknown(&["channel", "data"])?;
            let channel = p.channel()?;
            let data = p
                .map
                .get("data")
                .cloned()
                .ok_or_else(|| missing("params", "data"))?;
            Method::Publish(PublishParams { channel, data })
        }
        MethodKind::Presence => {
            p.deny_unknown(&["channel"])?;
            Method::Presence(ChannelParams {
                channel: p.channel()?,
            })
        }
        MethodKind::History => {
            p.deny_unknown(&["channel", "limit", "since"])?;
            Method::History(HistoryParams {
                channel: p.channel()?,
                limit: p.opt_u32("limit")?,
                since: p.opt_position("since")?,
            })
        }
        MethodKind::Ping => {
            p.deny_unknown(&[])?;
            Method::Ping
        }
        MethodKind::Refresh => {
            p.deny_unknown(&["token"])?;
            let token = p
                .opt_string("token", usize::MAX)?
                .ok_or_else(|| missing("params", "token"))?;
            Method::Refresh(RefreshParams { token })
        }
    })
}

/// A JSON object being validated, with its path for error messages.
struct Obj<'a> {
    map: &'a Map<String, Value>,
    /// `""` (the frame), `"params"` or `"params.since"`.
    path: &'static str,
}

impl Obj<'_> {
    fn deny_unknown(&self, allowed: &[&str]) -> Result<(), ProtocolErrorKind> {
        match self.map.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(key) => Err(ProtocolErrorKind::UnknownField {
                field: path(self.path, &quote(key)),
            }),
            None => Ok(()),
        }
    }

    /// A present, non-null field.
    fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn id(&self) -> Result<u64, ProtocolErrorKind> {
        let value = self.map.get("id").ok_or_else(|| missing(self.path, "id"))?;
        match value.as_u64() {
            Some(id @ 1..=MAX_ID) => Ok(id),
            _ => Err(invalid(
                self.path,
                "id",
                format!(
                    "expected an integer from 1 to {MAX_ID}, found {}",
                    describe(value)
                ),
            )),
        }
    }

    fn opt_string(&self, key: &str, max_len: usize) -> Result<Option<String>, ProtocolErrorKind> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) if s.is_empty() => {
                Err(invalid(self.path, key, "must not be empty".to_owned()))
            }
            Some(Value::String(s)) if s.len() > max_len => Err(invalid(
                self.path,
                key,
                format!("must be at most {max_len} bytes, found {}", s.len()),
            )),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(invalid(
                self.path,
                key,
                format!("expected a string, found {}", kind_of(other)),
            )),
        }
    }

    fn channel(&self) -> Result<String, ProtocolErrorKind> {
        let channel = match self.map.get("channel") {
            None => return Err(missing(self.path, "channel")),
            Some(Value::String(s)) => s,
            Some(other) => {
                return Err(invalid(
                    self.path,
                    "channel",
                    format!("expected a string, found {}", kind_of(other)),
                ))
            }
        };
        if let Err(reason) = check_channel(channel) {
            return Err(invalid(self.path, "channel", reason));
        }
        Ok(channel.clone())
    }

    fn opt_u32(&self, key: &str) -> Result<Option<u32>, ProtocolErrorKind> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        match value.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(n) => Ok(Some(n)),
            None => Err(invalid(
                self.path,
                key,
                format!(
                    "expected an integer from 0 to {}, found {}",
                    u32::MAX,
                    describe(value)
                ),
            )),
        }
    }

    fn opt_position(&self, key: &str) -> Result<Option<Position>, ProtocolErrorKind> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        let Value::Object(map) = value else {
            return Err(invalid(
                self.path,
                key,
                format!("expected an object, found {}", kind_of(value)),
            ));
        };
        // Only `since` holds a position; its path is static.
        let p = Obj {
            map,
            path: "params.since",
        };
        p.deny_unknown(&["offset", "epoch"])?;
        let offset = match map.get("offset") {
            None => return Err(missing(p.path, "offset")),
            Some(v) => v.as_u64().ok_or_else(|| {
                invalid(
                    p.path,
                    "offset",
                    format!(
                        "expected an integer from 0 to {}, found {}",
                        u64::MAX,
                        describe(v)
                    ),
                )
            })?,
        };
        let epoch = match map.get("epoch") {
            None => return Err(missing(p.path, "epoch")),
            Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_EPOCH_LEN => s.clone(),
            Some(Value::String(s)) => {
                return Err(invalid(
                    p.path,
                    "epoch",
                    format!("must be 1 to {MAX_EPOCH_LEN} bytes, found {}", s.len()),
                ))
            }
            Some(other) => {
                return Err(invalid(
                    p.path,
                    "epoch",
                    format!("expected a string, found {}", kind_of(other)),
                ))
            }
        };
        Ok(Some(Position { offset, epoch }))
    }
}

/// Whether `b` may appear in a channel name.
/// Checks a channel name against the rules (1–255 bytes of `A–Z a–z 0–9 _ -
/// : . @ / = #`); the error says what is wrong.
pub fn check_channel(channel: &str) -> Result<(), String> {
    if channel.is_empty() || channel.len() > MAX_CHANNEL_LEN {
        return Err(format!(
            "must be 1 to {MAX_CHANNEL_LEN} bytes, found {}",
            channel.len()
        ));
    }
    if let Some(at) = channel.bytes().position(|b| !is_channel_byte(b)) {
        return Err(format!(
            "byte {at} is not allowed (allowed: A-Z a-z 0-9 _ - : . @ / = #)"
        ));
    }
    Ok(())
}

fn is_channel_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':' | b'.' | b'@' | b'/' | b'=' | b'#')
}

fn path(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

fn missing(prefix: &str, key: &str) -> ProtocolErrorKind {
    ProtocolErrorKind::MissingField {
        field: path(prefix, key),
    }
}

fn invalid(prefix: &str, key: &str, reason: String) -> ProtocolErrorKind {
    ProtocolErrorKind::InvalidField {
        field: path(prefix, key),
        reason,
    }
}

/// `s` cut to at most [`MAX_QUOTED_LEN`] bytes on a char boundary, with `…`
/// when cut.
fn quote(s: &str) -> String {
    if s.len() <= MAX_QUOTED_LEN {
        return s.to_owned();
    }
    let mut end = MAX_QUOTED_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Numbers are shown (bounded: serde_json prints at most ~25 characters for
/// an i64, u64 or f64); other values by kind.
fn describe(value: &Value) -> String {
    match value {
        Value::Number(n) => n.to_string(),
        other => kind_of(other).to_owned(),
    }
}

fn syntax_error(e: &serde_json::Error) -> ProtocolErrorKind {
    let full = e.to_string();
    // serde_json appends " at line L column C"; we report them as fields.
    let reason = match full.rfind(" at line ") {
        Some(at) => full[..at].to_owned(),
        None => full,
    };
    ProtocolErrorKind::Syntax {
        line: e.line(),
        column: e.column(),
        reason,
    }
}

// ---------------------------------------------------------------------------
// Parsing server messages (client side)
// ---------------------------------------------------------------------------

/// A frame from the server: a reply or a push.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage {
    /// The reply to a command.
    Reply(Reply),
    /// A push.
    Push(Push),
}

/// Parses a reply to a command of kind `method` (the client knows it from the
/// id it sent).
pub fn parse_reply(text: &str, method: MethodKind) -> Result<Reply, ProtocolError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| ProtocolError::new(None, syntax_error(&e)))?;
    reply_from_value(value, |_| Some(method))
}

/// Parses a push.
pub fn parse_push(text: &str) -> Result<Push, ProtocolError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| ProtocolError::new(None, syntax_error(&e)))?;
    push_from_value(value)
}

/// Parses a server frame: a push if it has a `push` member, else a reply,
/// whose command kind `method_of` looks up by id (`None`: no such command
/// pending, an error naming `id`).
pub fn parse_server_message(
    text: &str,
    method_of: impl FnOnce(u64) -> Option<MethodKind>,
) -> Result<ServerMessage, ProtocolError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| ProtocolError::new(None, syntax_error(&e)))?;
    if value.get("push").is_some() {
        push_from_value(value).map(ServerMessage::Push)
    } else {
        reply_from_value(value, method_of).map(ServerMessage::Reply)
    }
}

fn push_from_value(value: Value) -> Result<Push, ProtocolError> {
    if !value.is_object() {
        return Err(ProtocolError::new(
            None,
            ProtocolErrorKind::NotAnObject {
                found: kind_of(&value),
            },
        ));
    }
    serde_json::from_value(value)
        .map_err(|e| ProtocolError::new(None, invalid("", "push", e.to_string())))
}

fn reply_from_value(
    value: Value,
    method_of: impl FnOnce(u64) -> Option<MethodKind>,
) -> Result<Reply, ProtocolError> {
    let Value::Object(mut map) = value else {
        return Err(ProtocolError::new(
            None,
            ProtocolErrorKind::NotAnObject {
                found: kind_of(&value),
            },
        ));
    };
    let id = Obj {
        map: &map,
        path: "",
    }
    .id()
    .map_err(|kind| ProtocolError::new(None, kind))?;
    let with_id = |kind| ProtocolError::new(Some(id), kind);
    Obj {
        map: &map,
        path: "",
    }
    .deny_unknown(&["id", "result", "error"])
    .map_err(with_id)?;
    let outcome = match (map.remove("result"), map.remove("error")) {
        (Some(_), Some(_)) => {
            return Err(with_id(invalid(
                "",
                "error",
                "a reply has `result` or `error`, not both".to_owned(),
            )))
        }
        (None, None) => return Err(with_id(missing("", "result"))),
        (None, Some(error)) => Err(serde_json::from_value::<ReplyError>(error)
            .map_err(|e| with_id(invalid("", "error", e.to_string())))?),
        (Some(result), None) => {
            let Some(method) = method_of(id) else {
                return Err(with_id(invalid(
                    "",
                    "id",
                    format!("no pending command has id {id}"),
                )));
            };
            Ok(decode_result(method, result)
                .map_err(|e| with_id(invalid("", "result", e.to_string())))?)
        }
    };
    Ok(Reply { id, outcome })
}

fn decode_result(method: MethodKind, result: Value) -> Result<CommandResult, serde_json::Error> {
    Ok(match method {
        MethodKind::Connect => CommandResult::Connect(serde_json::from_value(result)?),
        MethodKind::Subscribe => CommandResult::Subscribe(serde_json::from_value(result)?),
        MethodKind::Unsubscribe => {
            serde_json::from_value::<Map<String, Value>>(result)?;
            CommandResult::Unsubscribe
        }
        MethodKind::Publish => CommandResult::Publish(serde_json::from_value(result)?),
        MethodKind::Presence => CommandResult::Presence(serde_json::from_value(result)?),
        MethodKind::History => CommandResult::History(serde_json::from_value(result)?),
        MethodKind::Ping => {
            serde_json::from_value::<Map<String, Value>>(result)?;
            CommandResult::Ping
        }
        MethodKind::Refresh => CommandResult::Refresh(serde_json::from_value(result)?),
    })
}

/// Serializes a message. Cannot fail for this module's types (string keys,
/// no fallible `Serialize` impls); should it ever, the result is an
/// internal-error object rather than a panic.
fn encode<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value)
        .unwrap_or_else(|_| r#"{"error":{"code":100,"message":"encoding failed"}}"#.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const DOC: &str = include_str!("../../../../docs/protocol.md");

    /// The fenced blocks of the doc whose info string starts with `lang `:
    /// (tag, body).
    fn blocks(lang: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut current: Option<(String, String)> = None;
        for line in DOC.lines() {
            match &mut current {
                None => {
                    if let Some(info) = line.strip_prefix("```") {
                        if let Some(tag) = info.strip_prefix(lang).and_then(|t| t.strip_prefix(' '))
                        {
                            current = Some((tag.trim().to_owned(), String::new()));
                        }
                    }
                }
                Some((_, body)) if line.starts_with("```") => {
                    let _ = body;
                    out.extend(current.take());
                }
                Some((_, body)) => {
                    body.push_str(line);
                    body.push('\n');
                }
            }
        }
        assert!(current.is_none(), "unterminated block in docs/protocol.md");
        out
    }

    fn json(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    fn assert_same_json(encoded: &str, original: &str) {
        assert_eq!(
            json(encoded),
            json(original),
            "round trip changed:\n{original}\n{encoded}"
        );
    }

    #[test]
    fn doc_commands_round_trip_and_cover_every_method() {
        let mut seen = Vec::new();
        for (tag, body) in blocks("json") {
            if tag != "command" {
                continue;
            }
            let cmd = parse_command(body.trim()).unwrap_or_else(|e| panic!("{body}: {e}"));
            assert_same_json(&cmd.to_json(), &body);
            seen.push(cmd.method.kind());
        }
        for kind in MethodKind::ALL {
            assert!(seen.contains(&kind), "no command example for {kind}");
        }
    }

    #[test]
    fn doc_replies_round_trip_and_cover_every_method() {
        let mut seen = Vec::new();
        for (tag, body) in blocks("json") {
            let Some(method) = tag.strip_prefix("reply:") else {
                continue;
            };
            let kind = MethodKind::from_name(method).unwrap_or_else(|| panic!("bad tag {tag}"));
            let reply = parse_reply(body.trim(), kind).unwrap_or_else(|e| panic!("{body}: {e}"));
            if let Ok(result) = &reply.outcome {
                assert_eq!(result.kind(), kind);
                seen.push(kind);
            }
            assert_same_json(&reply.to_json(), &body);
        }
        for kind in MethodKind::ALL {
            assert!(
                seen.contains(&kind),
                "no successful reply example for {kind}"
            );
        }
    }

    #[test]
    fn doc_pushes_round_trip_and_cover_every_kind() {
        let mut seen = std::collections::HashSet::new();
        for (tag, body) in blocks("json") {
            if tag != "push" {
                continue;
            }
            let push = parse_push(body.trim()).unwrap_or_else(|e| panic!("{body}: {e}"));
            assert_same_json(&push.to_json(), &body);
            seen.insert(json(&body)["push"].as_str().unwrap().to_owned());
        }
        for kind in ["pub", "join", "leave", "unsub", "disconnect"] {
            assert!(seen.contains(kind), "no push example for {kind}");
        }
    }

    #[test]
    fn doc_has_no_untested_json_blocks() {
        for (tag, _) in blocks("json") {
            let known = tag == "command"
                || tag == "push"
                || tag
                    .strip_prefix("reply:")
                    .is_some_and(|m| MethodKind::from_name(m).is_some());
            assert!(known, "json block with unknown tag {tag:?}");
        }
        assert!(
            !DOC.contains("```json\n"),
            "untagged json block: tag it so it is tested"
        );
    }

    /// Every command of the session gets exactly one reply, matched by id,
    /// and every frame round-trips.
    #[test]
    fn doc_session_is_consistent() {
        let sessions = blocks("text");
        let (_, body) = sessions
            .iter()
            .find(|(tag, _)| tag == "session")
            .expect("a session block");
        let mut pending: HashMap<u64, MethodKind> = HashMap::new();
        let (mut commands, mut replies) = (0, 0);
        for line in body.lines() {
            if let Some(frame) = line.strip_prefix("C ") {
                let cmd = parse_command(frame).unwrap_or_else(|e| panic!("{frame}: {e}"));
                assert_same_json(&cmd.to_json(), frame);
                assert!(
                    pending.insert(cmd.id, cmd.method.kind()).is_none(),
                    "id {} reused while pending",
                    cmd.id
                );
                commands += 1;
            } else if let Some(frame) = line.strip_prefix("S ") {
                let msg = parse_server_message(frame, |id| pending.get(&id).copied())
                    .unwrap_or_else(|e| panic!("{frame}: {e}"));
                match msg {
                    ServerMessage::Reply(reply) => {
                        assert!(
                            pending.remove(&reply.id).is_some(),
                            "reply to unknown id {}",
                            reply.id
                        );
                        assert_same_json(&reply.to_json(), frame);
                        replies += 1;
                    }
                    ServerMessage::Push(push) => {
                        assert_same_json(&push.to_json(), frame);
                        if matches!(push, Push::Disconnect { .. }) {
                            assert!(pending.is_empty(), "commands left unanswered at disconnect");
                        }
                    }
                }
            } else {
                panic!("session line must start with `C ` or `S `: {line}");
            }
        }
        assert!(pending.is_empty(), "unanswered commands: {pending:?}");
        assert_eq!(commands, replies);
        assert!(commands >= 10);
    }

    /// The rows of a markdown table whose first cell is a number.
    fn numeric_rows() -> Vec<Vec<String>> {
        DOC.lines()
            .filter_map(|l| l.strip_prefix("| "))
            .map(|l| {
                l.trim_end_matches('|')
                    .split('|')
                    .map(|c| c.trim().to_owned())
                    .collect::<Vec<_>>()
            })
            .filter(|cells| cells[0].parse::<u16>().is_ok())
            .collect()
    }

    #[test]
    fn doc_error_table_matches_the_code() {
        let rows: Vec<_> = numeric_rows()
            .into_iter()
            .filter(|r| r[0].len() == 3)
            .collect();
        assert_eq!(rows.len(), ErrorCode::ALL.len());
        for (row, code) in rows.iter().zip(ErrorCode::ALL) {
            assert_eq!(row[0], code.code().to_string());
            assert_eq!(row[1], code.name());
            assert_eq!(row[2], code.message());
        }
    }

    #[test]
    fn doc_close_table_matches_the_code() {
        let rows: Vec<_> = numeric_rows()
            .into_iter()
            .filter(|r| r[0].starts_with('4') && r[0].len() == 4)
            .collect();
        assert_eq!(rows.len(), CLOSE_CODES.len());
        for (row, close) in rows.iter().zip(CLOSE_CODES) {
            assert_eq!(row[0], close.code.to_string());
            assert_eq!(row[1], close.name);
            assert_eq!(row[2], if close.reconnect { "yes" } else { "no" });
            assert_eq!(close.reconnect, may_reconnect(close.code));
        }
        assert_eq!(CLOSE_BAD_REQUEST, 4501);
    }

    #[test]
    fn error_codes_serialize_as_numbers_and_reject_unknown() {
        for code in ErrorCode::ALL {
            assert_eq!(
                serde_json::to_string(&code).unwrap(),
                code.code().to_string()
            );
            assert_eq!(
                serde_json::from_str::<ErrorCode>(&code.code().to_string()).unwrap(),
                code
            );
        }
        let err = serde_json::from_str::<ErrorCode>("999").unwrap_err();
        assert!(err.to_string().contains("unknown error code 999"), "{err}");
        assert!(ErrorCode::Internal.is_temporary() && !ErrorCode::BadRequest.is_temporary());
    }

    fn err(text: &str) -> ProtocolError {
        parse_command(text).expect_err(text)
    }

    /// (input, id echoed, error code, message)
    const MALFORMED: &[(&str, Option<u64>, ErrorCode, &str)] = &[
        ("", None, ErrorCode::BadRequest, "invalid JSON at line 1, column 0: EOF while parsing a value"),
        ("{\"id\":1,", None, ErrorCode::BadRequest, "invalid JSON at line 1, column 8: EOF while parsing a value"),
        ("{\"id\":1} x", None, ErrorCode::BadRequest, "invalid JSON at line 1, column 10: trailing characters"),
        ("[1]", None, ErrorCode::BadRequest, "expected a JSON object, found an array"),
        ("\"ping\"", None, ErrorCode::BadRequest, "expected a JSON object, found a string"),
        (r#"{"method":"ping"}"#, None, ErrorCode::BadRequest, "missing field `id`"),
        (r#"{"id":"1","method":"ping"}"#, None, ErrorCode::BadRequest, "invalid field `id`: expected an integer from 1 to 9007199254740991, found a string"),
        (r#"{"id":0,"method":"ping"}"#, None, ErrorCode::BadRequest, "invalid field `id`: expected an integer from 1 to 9007199254740991, found 0"),
        (r#"{"id":-3,"method":"ping"}"#, None, ErrorCode::BadRequest, "invalid field `id`: expected an integer from 1 to 9007199254740991, found -3"),
        (r#"{"id":1.5,"method":"ping"}"#, None, ErrorCode::BadRequest, "invalid field `id`: expected an integer from 1 to 9007199254740991, found 1.5"),
        (r#"{"id":9007199254740992,"method":"ping"}"#, None, ErrorCode::BadRequest, "invalid field `id`: expected an integer from 1 to 9007199254740991, found 9007199254740992"),
        (r#"{"id":1}"#, Some(1), ErrorCode::BadRequest, "missing field `method`"),
        (r#"{"id":1,"method":7}"#, Some(1), ErrorCode::BadRequest, "invalid field `method`: expected a string, found a number"),
        (r#"{"id":1,"method":"sub"}"#, Some(1), ErrorCode::MethodNotFound, "unknown method `sub` (expected connect, subscribe, unsubscribe, publish, presence, history, ping or refresh)"),
        (r#"{"id":1,"method":"ping","extra":true}"#, Some(1), ErrorCode::BadRequest, "unknown field `extra`"),
        (r#"{"id":1,"method":"ping","params":{"x":1}}"#, Some(1), ErrorCode::BadRequest, "unknown field `params.x`"),
        (r#"{"id":1,"method":"ping","params":[]}"#, Some(1), ErrorCode::BadRequest, "invalid field `params`: expected an object, found an array"),
        (r#"{"id":1,"method":"subscribe"}"#, Some(1), ErrorCode::BadRequest, "missing field `params`"),
        (r#"{"id":1,"method":"subscribe","params":{}}"#, Some(1), ErrorCode::BadRequest, "missing field `params.channel`"),
        (r#"{"id":1,"method":"subscribe","params":{"chanel":"a"}}"#, Some(1), ErrorCode::BadRequest, "unknown field `params.chanel`"),
        (r#"{"id":1,"method":"subscribe","params":{"channel":null}}"#, Some(1), ErrorCode::BadRequest, "invalid field `params.channel`: expected a string, found null"),
        (r#"{"id":1,"method":"subscribe","params":{"channel":""}}"#, Some(1), ErrorCode::BadRequest, "invalid field `params.channel`: must be 1 to 255 bytes, found 0"),
        (r#"{"id":1,"method":"subscribe","params":{"channel":"a b"}}"#, Some(1), ErrorCode::BadRequest, "invalid field `params.channel`: byte 1 is not allowed (allowed: A-Z a-z 0-9 _ - : . @ / = #)"),
        (r#"{"id":1,"method":"subscribe","params":{"channel":"a","since":5}}"#, Some(1), ErrorCode::BadRequest, "invalid field `params.since`: expected an object, found a number"),
        (r#"{"id":1,"method":"subscribe","params":{"channel":"a","since":{"epoch":"e"}}}"#, Some(1), ErrorCode::BadRequest, "missing field `params.since.offset`"),
        (r#"{"id":1,"method":"subscribe","params":{"channel":"a","since":{"offset":1}}}"#, Some(1), ErrorCode::BadRequest, "missing field `params.since.epoch`"),
        (r#"{"id":1,"method":"subscribe","params":{"channel":"a","since":{"offset":-1,"epoch":"e"}}}"#, Some(1), ErrorCode::BadRequest, "invalid field `params.since.offset`: expected an integer from 0 to 18446744073709551615, found -1"),
        (r#"{"id":1,"method":"subscribe","params":{"channel":"a","since":{"offset":1,"epoch":""}}}"#, Some(1), ErrorCode::BadRequest, "invalid field `params.since.epoch`: must be 1 to 64 bytes, found 0"),
        (r#"{"id":1,"method":"subscribe","params":{"channel":"a","since":{"offset":1,"epoch":"e","x":0}}}"#, Some(1), ErrorCode::BadRequest, "unknown field `params.since.x`"),
        (r#"{"id":1,"method":"history","params":{"channel":"a","limit":-1}}"#, Some(1), ErrorCode::BadRequest, "invalid field `params.limit`: expected an integer from 0 to 4294967295, found -1"),
        (r#"{"id":1,"method":"history","params":{"channel":"a","limit":4294967296}}"#, Some(1), ErrorCode::BadRequest, "invalid field `params.limit`: expected an integer from 0 to 4294967295, found 4294967296"),
        (r#"{"id":1,"method":"publish","params":{"channel":"a"}}"#, Some(1), ErrorCode::BadRequest, "missing field `params.data`"),
        (r#"{"id":1,"method":"connect","params":{"token":5}}"#, Some(1), ErrorCode::BadRequest, "invalid field `params.token`: expected a string, found a number"),
        (r#"{"id":1,"method":"connect","params":{"token":""}}"#, Some(1), ErrorCode::BadRequest, "invalid field `params.token`: must not be empty"),
        (r#"{"id":1,"method":"refresh","params":{}}"#, Some(1), ErrorCode::BadRequest, "missing field `params.token`"),
        (r#"{"id":1,"method":"refresh","params":{"token":null}}"#, Some(1), ErrorCode::BadRequest, "missing field `params.token`"),
    ];

    #[test]
    fn malformed_commands_give_the_exact_error() {
        for &(input, id, code, message) in MALFORMED {
            let e = err(input);
            assert_eq!(
                (e.id, e.code(), e.to_string().as_str()),
                (id, code, message),
                "input: {input}"
            );
            match (e.to_reply(), id) {
                (Some(reply), Some(id)) => {
                    assert_eq!(reply.id, id);
                    assert_eq!(reply.outcome, Err(ReplyError::with_message(code, message)));
                }
                (None, None) => {}
                (reply, _) => panic!("{input}: unexpected reply {reply:?}"),
            }
        }
    }

    #[test]
    fn quoted_names_are_bounded() {
        let long = "é".repeat(10_000);
        let e = err(&format!(r#"{{"id":2,"method":"{long}"}}"#));
        assert!(e.to_string().len() < 250, "{}", e.to_string().len());
        assert!(
            matches!(&e.kind, ProtocolErrorKind::UnknownMethod { method } if method.ends_with('…') && method.len() <= 67)
        );
        let e = err(&format!(
            r#"{{"id":2,"method":"ping","params":{{"{long}":1}}}}"#
        ));
        assert!(e.to_string().len() < 120);
        let e = err(&format!(
            r#"{{"id":2,"method":"subscribe","params":{{"channel":"{}"}}}}"#,
            "a".repeat(100_000)
        ));
        assert_eq!(
            e.to_string(),
            "invalid field `params.channel`: must be 1 to 255 bytes, found 100000"
        );
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = format!(
            r#"{{"id":1,"method":"publish","params":{{"channel":"a","data":{}{}}}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let e = err(&deep);
        assert!(
            matches!(&e.kind, ProtocolErrorKind::Syntax { reason, .. } if reason == "recursion limit exceeded"),
            "{e}"
        );
        assert_eq!(e.id, None);
    }

    #[test]
    fn optional_fields_accept_null_and_data_accepts_anything() {
        let cmd =
            parse_command(r#"{"id":3,"method":"connect","params":{"token":null,"name":null}}"#)
                .unwrap();
        assert_eq!(cmd.method, Method::Connect(ConnectParams::default()));
        let cmd = parse_command(r#"{"id":3,"method":"ping","params":null}"#).unwrap();
        assert_eq!(cmd.method, Method::Ping);
        let cmd = parse_command(r#"{"id":3,"method":"ping","params":{}}"#).unwrap();
        assert_eq!(cmd.to_json(), r#"{"id":3,"method":"ping"}"#);
        let cmd = parse_command(
            r#"{"id":9007199254740991,"method":"publish","params":{"channel":"a","data":null}}"#,
        )
        .unwrap();
        assert_eq!(cmd.id, MAX_ID);
        assert_eq!(
            cmd.method,
            Method::Publish(PublishParams {
                channel: "a".into(),
                data: Value::Null
            })
        );
        let cmd = parse_command(
            r#"{"id":4,"method":"history","params":{"channel":"a","limit":null,"since":null}}"#,
        )
        .unwrap();
        assert_eq!(
            cmd.method,
            Method::History(HistoryParams {
                channel: "a".into(),
                limit: None,
                since: None
            })
        );
    }

    #[test]
    fn reply_and_push_constructors_encode_as_documented() {
        let reply = Reply::error(5, ReplyError::new(ErrorCode::TooManyRequests));
        assert_eq!(
            reply.to_json(),
            r#"{"id":5,"error":{"code":110,"message":"too many requests"}}"#
        );
        assert_eq!(
            Reply::ok(6, CommandResult::Unsubscribe).to_json(),
            r#"{"id":6,"result":{}}"#
        );
        let push = Push::disconnect(4003, "token expired");
        assert_eq!(
            push.to_json(),
            r#"{"push":"disconnect","code":4003,"reason":"token expired","reconnect":true}"#
        );
        assert_eq!(
            Push::disconnect(4500, "forbidden").to_json(),
            r#"{"push":"disconnect","code":4500,"reason":"forbidden","reconnect":false}"#
        );
        let publication = Publication {
            offset: 9,
            data: serde_json::json!([1, "x"]),
            info: None,
        };
        assert_eq!(
            Push::publication("c", "e", publication).to_json(),
            r#"{"push":"pub","channel":"c","offset":9,"epoch":"e","data":[1,"x"]}"#
        );
    }

    #[test]
    fn server_messages_that_are_malformed_are_rejected_precisely() {
        let e = parse_reply(
            r#"{"id":1,"result":{},"error":{"code":100,"message":"x"}}"#,
            MethodKind::Ping,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid field `error`: a reply has `result` or `error`, not both"
        );
        let e = parse_reply(r#"{"id":1}"#, MethodKind::Ping).unwrap_err();
        assert_eq!(e.to_string(), "missing field `result`");
        let e = parse_reply(
            r#"{"id":1,"error":{"code":999,"message":"x"}}"#,
            MethodKind::Ping,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("invalid field `error`: unknown error code 999"),
            "{e}"
        );
        let e = parse_server_message(r#"{"id":1,"result":{}}"#, |_| None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid field `id`: no pending command has id 1"
        );
        let e = parse_push(r#"{"push":"nope"}"#).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("invalid field `push`: unknown variant `nope`"),
            "{e}"
        );
    }
}
