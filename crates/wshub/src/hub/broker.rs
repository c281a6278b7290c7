//! The broker: what the hub publishes to, subscribes through, and keeps history
//! and presence in — one trait, several engines.
//!
//! The hub never talks to Redis (or to its in-memory maps) directly; it holds an
//! `Arc<dyn Broker>`. [`MemoryBroker`](super::memory::MemoryBroker) is the
//! single-process default; a Redis engine implements the same trait for a
//! cluster, so nothing above this module changes when a deployment grows from
//! one node to many.
//!
//! # Model
//!
//! * Every channel has a **stream**: an offset that grows by exactly one per
//!   publication and an **epoch**, an opaque string that changes whenever the
//!   stream's state is lost (together: a [`StreamPosition`]). Offsets start at 1
//!   in each epoch; offset 0 means "nothing published yet in this epoch".
//! * [`Broker::publish`] assigns the next offset, appends to the channel's
//!   bounded history (when [`PublishOptions`] asks for history), and delivers a
//!   [`BrokerEvent::Publication`] to every node subscribed to the channel — as
//!   one atomic step, so every node sees a channel's publications in offset
//!   order. (Redis: one Lua script bumps the offset, `XADD`s with a length and
//!   age limit and `PUBLISH`es.)
//! * A node declares interest in a channel with [`Broker::subscribe`] while it
//!   has local subscribers; events for that channel reach the node's
//!   [`EventSink`] only while it is subscribed. Fan-out to connections is the
//!   hub's job, not the broker's.
//! * History is read with [`Broker::history`]; [`recover`] — a pure function,
//!   the same for every engine — decides whether a client's `since` position can
//!   be filled exactly from it (see `docs/protocol.md`, "Recovery").
//! * Presence is a per-channel map of client id → [`ClientInfo`] with a TTL per
//!   entry (the hub refreshes by adding again); join/leave events are delivered
//!   like publications when the caller asks for them.
//!
//! # Object safety
//!
//! The trait is used as `dyn Broker`, so its async methods return
//! [`BoxFuture`]s instead of being `async fn`s. The futures borrow their
//! arguments; an engine that needs owned data (e.g. to hand a request to a
//! connection task) copies what it needs.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::protocol::ClientInfo;

/// A boxed, `Send` future: what the [`Broker`] methods return, which keeps the
/// trait object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A place in a channel's stream: an offset and the epoch it belongs to.
///
/// This is the wire type [`protocol::Position`](super::protocol::Position)
/// itself, not a copy of it: the broker's positions are exactly what clients
/// see in `pub` pushes and replies, and sharing the type means the hub never
/// converts between the two.
pub type StreamPosition = super::protocol::Position;

/// One publication as the broker stores and delivers it.
#[derive(Debug, Clone, PartialEq)]
pub struct Publication {
    /// The publication's offset in its channel's current epoch (from 1).
    pub offset: u64,
    /// The published data: the raw JSON bytes, passed through untouched (the
    /// hub validated them; no engine parses them again).
    pub data: Bytes,
    /// The publishing client, when the hub wants it shown.
    pub info: Option<ClientInfo>,
    /// Free key/value metadata from the publisher (backend API).
    pub tags: BTreeMap<String, String>,
    /// Which of the channel's subscribers receive it (default: all).
    pub audience: Audience,
}

/// Which subscribers of a channel a publication is for: all of them by
/// default, or all but one client, or those whose connection tags match a
/// filter — or both restrictions at once.
///
/// The audience travels with the publication (through the broker, into
/// history), so every node applies it to its own subscribers and recovery
/// never hands a client a publication that was not meant for it. A
/// publication still takes its offset in the channel's stream whoever receives
/// it, so the offsets one client sees may skip the ones addressed to others.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Audience {
    /// Skip this client id (e.g. the publisher: "everyone but the sender").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub except_client: Option<String>,
    /// Deliver only to connections whose tags match (see [`TagFilter`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<TagFilter>,
}

impl Audience {
    /// Whether the connection `client`, tagged `tags`, is in this audience.
    pub fn includes(&self, client: &str, tags: &BTreeMap<String, String>) -> bool {
        if self.except_client.as_deref() == Some(client) {
            return false;
        }
        self.filter.as_ref().is_none_or(|f| f.matches(tags))
    }

    /// Whether everyone is in this audience (no exception, no filter).
    pub fn is_everyone(&self) -> bool {
        self.except_client.is_none() && self.filter.is_none()
    }
}

/// A filter on connection tags (the token's `tags` claim): for every key, the
/// connection's tag must be one of the listed values. `{"region": ["eu",
/// "us"], "plan": ["pro"]}` selects pro-plan connections in eu or us. An empty
/// filter matches every connection; a key with an empty list matches none.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct TagFilter(pub BTreeMap<String, Vec<String>>);

impl TagFilter {
    /// Whether connection tags `tags` pass the filter.
    pub fn matches(&self, tags: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|(key, allowed)| {
            tags.get(key)
                .is_some_and(|v| allowed.iter().any(|a| a == v))
        })
    }
}

/// The default time an idempotency key is remembered.
pub const DEFAULT_IDEMPOTENCY_TTL: Duration = Duration::from_secs(5 * 60);

/// How to publish: history limits, the publisher, tags, idempotency.
///
/// The default keeps no history and has no idempotency key.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishOptions {
    /// Keep at most this many publications of the channel in history. History
    /// is kept only when both this and [`history_ttl`](Self::history_ttl) are
    /// non-zero; without history the offset still advances (every `pub` push
    /// has an offset), but nothing can be recovered.
    pub history_size: usize,
    /// Keep each publication in history for at most this long after it was
    /// published (zero: no history).
    pub history_ttl: Duration,
    /// The publishing client, if it should be shown to subscribers.
    pub info: Option<ClientInfo>,
    /// Metadata stored and delivered with the publication.
    pub tags: BTreeMap<String, String>,
    /// Deduplicates retries: a publish with a key already seen **on the same
    /// channel** within [`idempotency_ttl`](Self::idempotency_ttl) is not
    /// stored or delivered again; it returns the original publication's
    /// position.
    pub idempotency_key: Option<String>,
    /// How long [`idempotency_key`](Self::idempotency_key) is remembered
    /// (default [`DEFAULT_IDEMPOTENCY_TTL`]).
    pub idempotency_ttl: Duration,
    /// Who receives the publication (default: every subscriber).
    pub audience: Audience,
}

impl Default for PublishOptions {
    fn default() -> Self {
        PublishOptions {
            history_size: 0,
            history_ttl: Duration::ZERO,
            info: None,
            tags: BTreeMap::new(),
            idempotency_key: None,
            idempotency_ttl: DEFAULT_IDEMPOTENCY_TTL,
            audience: Audience::default(),
        }
    }
}

impl PublishOptions {
    /// Whether these options keep history.
    pub fn keeps_history(&self) -> bool {
        self.history_size > 0 && !self.history_ttl.is_zero()
    }
}

/// Which part of a channel's history to read.
///
/// * `since: None`: the **latest** `limit` publications (all kept ones when
///   `limit` is `None`).
/// * `since: Some(p)`: the publications after `p.offset`, the **oldest**
///   `limit` of them (page by passing the last one's position again). When
///   `p.epoch` is not the channel's current epoch the offsets say nothing about
///   the current stream, and no publications are returned.
/// * `limit: Some(0)`: no publications, only the current position.
///
/// Publications are always oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryFilter {
    /// Return only publications after this position.
    pub since: Option<StreamPosition>,
    /// Return at most this many publications.
    pub limit: Option<usize>,
}

/// A history read: publications (oldest first) and the channel's current
/// position at the time of the read.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryResult {
    /// The publications selected by the [`HistoryFilter`], oldest first.
    pub publications: Vec<Publication>,
    /// The channel's current position (offset of its latest publication).
    pub position: StreamPosition,
}

/// The number of clients and distinct users present in a channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PresenceStats {
    /// Clients (connections) present.
    pub clients: usize,
    /// Distinct user ids among them (all anonymous clients share the user id
    /// `""` and count as one).
    pub users: usize,
}

/// What a broker delivers to its node's [`EventSink`].
///
/// Non-exhaustive: engines may grow events (e.g. a cluster engine telling the
/// hub that a channel's stream was interrupted).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum BrokerEvent {
    /// A publication on a channel this node is subscribed to. Per channel,
    /// publications arrive in offset order.
    Publication {
        /// The channel.
        channel: String,
        /// The publication.
        publication: Publication,
        /// The epoch of its offset.
        epoch: String,
    },
    /// A client joined a channel (published with join/leave on).
    Join {
        /// The channel.
        channel: String,
        /// Who joined.
        member: ClientInfo,
    },
    /// A client left a channel (removed with join/leave on).
    Leave {
        /// The channel.
        channel: String,
        /// Who left.
        member: ClientInfo,
    },
    /// A command for every node of the hub (see [`Broker::control`]).
    Control(ControlCommand),
    /// The engine's event stream was interrupted and is back (e.g. Redis
    /// reconnected and the node resubscribed): events of that time may be
    /// lost. The hub compares each of its channels' last delivered position
    /// with the stream's and tells subscribers to resubscribe where they
    /// differ. The in-process engine never sends it.
    Resynced,
}

impl BrokerEvent {
    /// The channel the event is about (empty for [`BrokerEvent::Resynced`],
    /// which is about every channel).
    pub fn channel(&self) -> &str {
        match self {
            BrokerEvent::Publication { channel, .. }
            | BrokerEvent::Join { channel, .. }
            | BrokerEvent::Leave { channel, .. } => channel,
            BrokerEvent::Resynced | BrokerEvent::Control(_) => "",
        }
    }
}

/// A hub node as the node registry lists it ([`Broker::announce_node`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeInfo {
    /// The node's id (the prefix of its client ids).
    pub node: String,
    /// Its open WebSocket connections.
    pub connections: u64,
    /// Channels with subscribers on it.
    pub channels: u64,
    /// Subscriptions on it.
    pub subscriptions: u64,
    /// Seconds since it started.
    pub uptime_seconds: u64,
}

/// An operation every node of the hub carries out on its own sessions,
/// sent with [`Broker::control`] (the HTTP API's disconnect and unsubscribe
/// work whichever node receives the request).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ControlCommand {
    /// Disconnect every connection of `user` with `code` (a `disconnect`
    /// push first).
    Disconnect {
        /// The user id.
        user: String,
        /// The close code (4000–4999).
        code: u16,
        /// The close reason.
        reason: String,
    },
    /// End `user`'s subscriptions to `channel` (an `unsub` push, 103).
    Unsubscribe {
        /// The user id.
        user: String,
        /// The channel.
        channel: String,
        /// Why, for the push.
        reason: String,
    },
}

/// Why a broker operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The backend cannot be reached (connection lost, not yet connected);
    /// retrying later may succeed.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The backend did not answer in time; the operation may or may not have
    /// taken effect (a publish retried with the same idempotency key is safe).
    #[error("broker timeout")]
    Timeout,
    /// The backend answered with something unexpected.
    #[error("broker internal error: {0}")]
    Internal(String),
}

impl BrokerError {
    /// Whether retrying the operation later may succeed.
    pub fn is_temporary(&self) -> bool {
        matches!(self, BrokerError::Unavailable(_) | BrokerError::Timeout)
    }
}

/// Where a broker delivers events for the channels its node is subscribed to.
///
/// `deliver` is called synchronously, possibly while the engine holds a lock
/// that orders the channel's events, so it **must not block and must not call
/// back into the broker**: the hub's sink only enqueues.
pub trait EventSink: Send + Sync + 'static {
    /// Takes one event.
    fn deliver(&self, event: BrokerEvent);
}

impl<F> EventSink for F
where
    F: Fn(BrokerEvent) + Send + Sync + 'static,
{
    fn deliver(&self, event: BrokerEvent) {
        self(event)
    }
}

/// The engine behind the hub: publication, node-level subscription, history
/// and presence. See the [module docs](self).
///
/// Every method may be called concurrently from many tasks.
pub trait Broker: Send + Sync + 'static {
    /// Sets the sink events are delivered to, replacing any previous one.
    ///
    /// The hub and its broker refer to each other (the hub calls the broker,
    /// the broker delivers to the hub), so the sink is set after construction
    /// rather than passed to an engine-specific constructor: the hub takes any
    /// `Arc<dyn Broker>` and installs its own sink. Events produced while no
    /// sink is set are dropped (there is nothing to deliver them to; the hub
    /// sets its sink before its first [`subscribe`](Self::subscribe)).
    fn set_sink(&self, sink: Arc<dyn EventSink>);

    /// Publishes `data` (raw JSON) to `channel` and returns the new
    /// publication's position.
    ///
    /// The offset is assigned, the history appended and the event delivered
    /// atomically with respect to other publishes on the channel, so
    /// subscribers see offset order. With an
    /// [`idempotency_key`](PublishOptions::idempotency_key) seen on the
    /// channel within its TTL, nothing is stored or delivered and the original
    /// publication's position is returned.
    fn publish<'a>(
        &'a self,
        channel: &'a str,
        data: Bytes,
        opts: PublishOptions,
    ) -> BoxFuture<'a, Result<StreamPosition, BrokerError>>;

    /// Declares this node's interest in `channel`: from when the future
    /// completes, the channel's events are delivered to the sink. Idempotent
    /// and not counted: the hub subscribes on its first local subscriber and
    /// unsubscribes after its last.
    fn subscribe<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Ends this node's interest in `channel`; no more events of it are
    /// delivered once the future completes. Idempotent.
    fn unsubscribe<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Reads `channel`'s history (see [`HistoryFilter`]) and its current
    /// position. A channel never published to (or whose stream expired) gets a
    /// fresh epoch at offset 0; reading keeps the stream's epoch alive like a
    /// publish does.
    fn history<'a>(
        &'a self,
        channel: &'a str,
        filter: HistoryFilter,
    ) -> BoxFuture<'a, Result<HistoryResult, BrokerError>>;

    /// Drops `channel`'s history. The offset and epoch stay, so a later
    /// recovery from a position inside the dropped range reports a gap
    /// rather than silently skipping it.
    fn remove_history<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Adds (or refreshes) `member` in `channel`'s presence for `ttl`; the
    /// entry vanishes unless added again before it expires. `member.client`
    /// is the key (a client is present at most once per channel). With
    /// `join_leave`, a [`BrokerEvent::Join`] is delivered when the client was
    /// not present yet (not on a refresh) **and** its user had no other
    /// client present: a user's second tab, on this node or any other, is
    /// not a join. Anonymous members (user `""`) each count on their own.
    fn add_presence<'a>(
        &'a self,
        channel: &'a str,
        member: ClientInfo,
        ttl: Duration,
        join_leave: bool,
    ) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Removes `client` from `channel`'s presence. With `join_leave`, a
    /// [`BrokerEvent::Leave`] is delivered when the client was present and
    /// was its user's last client in the channel (anonymous members each
    /// count on their own). Entries that merely expire produce no leave
    /// event; the members of a node that died are removed, with their leave
    /// events, by [`reap_node`](Self::reap_node).
    fn remove_presence<'a>(
        &'a self,
        channel: &'a str,
        client: &'a str,
        join_leave: bool,
    ) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// The clients present in `channel`, by client id.
    fn presence<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<HashMap<String, ClientInfo>, BrokerError>>;

    /// How many clients and distinct users are present in `channel`.
    fn presence_stats<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<PresenceStats, BrokerError>>;

    /// Sends `command` to every node of the hub, this one included: each
    /// node's sink receives [`BrokerEvent::Control`] and applies it to its own
    /// sessions. Delivery is best effort (a node that is disconnected from
    /// the engine at that moment misses it).
    fn control<'a>(&'a self, command: ControlCommand) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Records this node in the registry for `ttl` (the hub re-announces
    /// well before it lapses, so a node that died vanishes within `ttl`).
    fn announce_node<'a>(
        &'a self,
        info: NodeInfo,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// The live nodes of the hub (announced and not lapsed), by node id.
    fn nodes<'a>(&'a self) -> BoxFuture<'a, Result<Vec<NodeInfo>, BrokerError>>;

    /// Removes from every channel's presence the clients of `node` (client
    /// ids `{node}-…`), a node that stopped renewing its registry lease, and
    /// returns how many entries went. A [`BrokerEvent::Leave`] is delivered
    /// for each removed member that was its user's last client in the
    /// channel, whatever the namespace says (hubs deliver leave pushes only
    /// in namespaces with `join_leave`). Safe to call from several nodes at
    /// once: each entry is removed, and its event sent, once.
    ///
    /// The default does nothing: a single-process engine has no other nodes.
    fn reap_node<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<usize, BrokerError>> {
        let _ = node;
        Box::pin(async { Ok(0) })
    }

    /// Records `channels` (name and local subscriber count) as `node`'s for
    /// `ttl`, replacing what it recorded before, so any node can list the
    /// hub's channels ([`channels_of`](Self::channels_of)).
    ///
    /// The default records nothing (a single-process engine has only the
    /// local node, whose channels the hub knows itself).
    fn announce_channels<'a>(
        &'a self,
        node: &'a str,
        channels: Vec<(String, usize)>,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        let _ = (node, channels, ttl);
        Box::pin(async { Ok(()) })
    }

    /// The channels `nodes` announced with
    /// [`announce_channels`](Self::announce_channels) and not lapsed, with
    /// their subscriber counts summed over those nodes.
    fn channels_of<'a>(
        &'a self,
        nodes: &'a [String],
    ) -> BoxFuture<'a, Result<HashMap<String, usize>, BrokerError>> {
        let _ = nodes;
        Box::pin(async { Ok(HashMap::new()) })
    }

    /// Whether the engine can currently deliver events (e.g. its pub/sub
    /// connection is up). `/readyz` answers 503 while it is not, so load
    /// balancers send new clients elsewhere. The in-process engine is always
    /// healthy.
    fn is_healthy(&self) -> bool {
        true
    }
}

/// The outcome of [`recover`].
#[derive(Debug, Clone, PartialEq)]
pub enum Recovery {
    /// The epoch is current and history holds every missed offset:
    /// `publications` are exactly offsets `since.offset + 1 ..= position.offset`,
    /// oldest first (empty when nothing was missed).
    Recovered {
        /// The missed publications.
        publications: Vec<Publication>,
        /// The channel's current position.
        position: StreamPosition,
    },
    /// The gap cannot be filled (another epoch, offsets no longer kept, a
    /// `since` ahead of the stream, or more missed publications than were
    /// read); the client must reload its state and continue from `position`.
    NotRecoverable {
        /// The channel's current position.
        position: StreamPosition,
    },
}

impl Recovery {
    /// The channel's current position, whatever the outcome.
    pub fn position(&self) -> &StreamPosition {
        match self {
            Recovery::Recovered { position, .. } | Recovery::NotRecoverable { position } => {
                position
            }
        }
    }
}

/// Decides whether a client that last saw `since` can be brought up to date
/// from `history`, for any engine.
///
/// The hub reads `history` with `HistoryFilter { since: Some(since), limit:
/// Some(max) }` (`max`: the namespace's recovery limit) right after
/// subscribing the node to the channel, then calls this. The rule is exact:
/// recovered only when the epochs match and the publications after
/// `since.offset` are precisely `since.offset + 1 ..= position.offset` — no
/// gap (expired or trimmed history), none missing (the read's limit cut them
/// off, i.e. more were missed than the recovery limit), no duplicate. Any
/// other `history` (a full read, say) is accepted too: publications at or
/// before `since.offset` are skipped.
///
/// Takes `history` by value to move the publications out without copying.
pub fn recover(since: &StreamPosition, history: HistoryResult) -> Recovery {
    let HistoryResult {
        publications,
        position,
    } = history;
    if since.epoch != position.epoch || since.offset > position.offset {
        return Recovery::NotRecoverable { position };
    }
    let missed: Vec<Publication> = publications
        .into_iter()
        .filter(|p| p.offset > since.offset)
        .collect();
    let contiguous = missed.len() as u64 == position.offset - since.offset
        && missed
            .iter()
            .zip(since.offset + 1..)
            .all(|(p, want)| p.offset == want);
    if contiguous {
        Recovery::Recovered {
            publications: missed,
            position,
        }
    } else {
        Recovery::NotRecoverable { position }
    }
}

/// Whether `history`, read with `since` (and any limit), continues exactly
/// from `since`: same epoch, `since` not ahead of the stream, and the first
/// returned publication is `since.offset + 1` (or nothing was published after
/// `since`). This is the `history` command's check (error 111 when false);
/// unlike [`recover`] it accepts a page cut short by the limit. A read with
/// `limit: Some(0)` returns no publications and so can only pass when nothing
/// was published after `since`.
pub fn continues_from(since: &StreamPosition, history: &HistoryResult) -> bool {
    if since.epoch != history.position.epoch || since.offset > history.position.offset {
        return false;
    }
    match history.publications.first() {
        Some(first) => Some(first.offset) == since.offset.checked_add(1),
        None => since.offset == history.position.offset,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(offset: u64, epoch: &str) -> StreamPosition {
        StreamPosition {
            offset,
            epoch: epoch.to_owned(),
        }
    }

    fn publication(offset: u64) -> Publication {
        Publication {
            offset,
            data: Bytes::from(format!("{{\"n\":{offset}}}")),
            info: None,
            tags: BTreeMap::new(),
            audience: Audience::default(),
        }
    }

    fn history(offsets: impl IntoIterator<Item = u64>, current: u64) -> HistoryResult {
        HistoryResult {
            publications: offsets.into_iter().map(publication).collect(),
            position: pos(current, "e1"),
        }
    }

    fn recovered_offsets(r: Recovery) -> Option<Vec<u64>> {
        match r {
            Recovery::Recovered { publications, .. } => {
                Some(publications.iter().map(|p| p.offset).collect())
            }
            Recovery::NotRecoverable { .. } => None,
        }
    }

    #[test]
    fn recover_fills_the_exact_gap() {
        // Filtered read (offsets after since) and a full read give the same.
        let r = recover(&pos(5, "e1"), history(6..=9, 9));
        assert_eq!(recovered_offsets(r), Some(vec![6, 7, 8, 9]));
        let r = recover(&pos(5, "e1"), history(3..=9, 9));
        assert_eq!(recovered_offsets(r), Some(vec![6, 7, 8, 9]));
        // First retained offset exactly since + 1.
        let r = recover(&pos(5, "e1"), history(6..=6, 6));
        assert_eq!(recovered_offsets(r), Some(vec![6]));
    }

    #[test]
    fn recover_nothing_missed() {
        // Up to date, even with empty (expired) history.
        assert_eq!(
            recovered_offsets(recover(&pos(9, "e1"), history([], 9))),
            Some(vec![])
        );
        assert_eq!(
            recovered_offsets(recover(&pos(0, "e1"), history([], 0))),
            Some(vec![])
        );
    }

    #[test]
    fn recover_refuses_gaps() {
        // Offset 6 fell out of history.
        let r = recover(&pos(5, "e1"), history(7..=9, 9));
        assert_eq!(
            r,
            Recovery::NotRecoverable {
                position: pos(9, "e1")
            }
        );
        // History empty but publications were missed.
        assert_eq!(
            recovered_offsets(recover(&pos(5, "e1"), history([], 9))),
            None
        );
        // A hole in the middle.
        assert_eq!(
            recovered_offsets(recover(&pos(5, "e1"), history([6, 7, 9], 9))),
            None
        );
        // The read's limit cut the tail off: more missed than the limit.
        assert_eq!(
            recovered_offsets(recover(&pos(5, "e1"), history(6..=8, 9))),
            None
        );
        // Duplicates.
        assert_eq!(
            recovered_offsets(recover(&pos(5, "e1"), history([6, 6, 7], 7))),
            None
        );
    }

    #[test]
    fn recover_refuses_other_epochs_and_the_future() {
        let r = recover(&pos(5, "e0"), history(1..=9, 9));
        assert_eq!(r.position(), &pos(9, "e1"));
        assert!(matches!(r, Recovery::NotRecoverable { .. }));
        let r = recover(&pos(12, "e1"), history(1..=9, 9));
        assert!(matches!(r, Recovery::NotRecoverable { .. }));
    }

    #[test]
    fn continues_from_accepts_pages() {
        assert!(continues_from(&pos(5, "e1"), &history(6..=7, 9)));
        assert!(continues_from(&pos(9, "e1"), &history([], 9)));
        assert!(!continues_from(&pos(5, "e1"), &history(7..=9, 9)));
        assert!(!continues_from(&pos(5, "e1"), &history([], 9)));
        assert!(!continues_from(&pos(5, "e0"), &history(6..=9, 9)));
        assert!(!continues_from(&pos(10, "e1"), &history([], 9)));
    }

    #[test]
    fn publish_options_default_keeps_no_history() {
        let opts = PublishOptions::default();
        assert!(!opts.keeps_history());
        assert_eq!(opts.idempotency_ttl, DEFAULT_IDEMPOTENCY_TTL);
        let opts = PublishOptions {
            history_size: 10,
            ..PublishOptions::default()
        };
        assert!(!opts.keeps_history(), "a zero TTL keeps nothing");
        let opts = PublishOptions {
            history_size: 10,
            history_ttl: Duration::from_secs(60),
            ..PublishOptions::default()
        };
        assert!(opts.keeps_history());
    }

    #[test]
    fn closures_are_sinks() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = Arc::clone(&seen);
        let sink: Arc<dyn EventSink> = Arc::new(move |e: BrokerEvent| {
            s.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(e.channel().to_owned())
        });
        sink.deliver(BrokerEvent::Leave {
            channel: "a".into(),
            member: ClientInfo {
                client: "c".into(),
                user: "u".into(),
                info: None,
            },
        });
        assert_eq!(
            *seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            vec!["a".to_owned()]
        );
    }
}
