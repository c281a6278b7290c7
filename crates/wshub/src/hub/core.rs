//! The hub's shared state: the node's channels and their local subscribers,
//! fan-out of broker events to them, the live sessions (by connection and by
//! user), and the operations the HTTP API offers (publish, presence,
//! history, channel list, disconnect and unsubscribe a user).
//!
//! # Channels on a node
//!
//! A channel exists on a node while it has local subscribers; the node is
//! subscribed to it in the broker exactly then. Subscribing and leaving go
//! through a per-channel-stripe async lock held across the broker call, so a
//! first subscriber and a last leaver of the same channel cannot interleave
//! their broker `subscribe`/`unsubscribe` and leave the node deaf.
//!
//! # Ordering of a subscribe
//!
//! A new subscriber is registered in **buffering** state before the node
//! reads the channel's position (and, with `since`, the missed history).
//! Events arriving meanwhile are kept in its buffer. The reply is then sent
//! under the channel's lock, followed by the buffered events newer than the
//! reply's position, and only then does the subscriber go live. So the reply
//! comes before every `pub` push of the channel, and the pushes continue
//! right after the reply's position with none lost and none repeated.
//!
//! # Gaps
//!
//! Per channel the node remembers the last position its stream delivered. A
//! publication that skips offsets, or arrives in another epoch, means the
//! node missed something (a cluster engine lost its stream): every local
//! subscriber gets an `unsub` push with code 111 and `resubscribe: true`, and
//! recovers by subscribing again with its last position.
//!
//! Each subscriber also remembers its own last offset. With a cluster engine
//! a subscribe can read a position ahead of what the node has delivered
//! (history is written before the event reaches the node), so the
//! publications in between are still on their way: they go to the
//! subscribers that lack them and are skipped for the new one. A subscriber
//! whose next publication skips offsets is a gap too (111 for the channel).

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use wshub_proto::{CloseCode, Message, PreparedMessage};

use super::auth::{AuthError, Verifier};
use super::broker::{
    Audience, Broker, BrokerError, BrokerEvent, EventSink, HistoryFilter, PublishOptions,
    StreamPosition,
};
use super::config::{HubConfig, NamespaceConfig, SlowConsumer};
use super::mailbox::Sender;
use super::metrics::{Metrics, PublishSource};
use super::protocol::{ClientInfo, ErrorCode, Position, Push};
use crate::config::SlowConsumerPolicy;
use crate::socket::ConnectionId;
use crate::WebSocket;

/// How long a presence entry lives unless refreshed.
pub(crate) const PRESENCE_TTL: Duration = Duration::from_secs(60);
/// How often the hub refreshes its presence entries.
const PRESENCE_REFRESH: Duration = Duration::from_secs(20);
/// How often a node announces itself in the node registry (its lease).
pub const NODE_ANNOUNCE: Duration = Duration::from_secs(2);
/// How long a node's registry entry lives without a new announcement: a
/// node that died drops out of `/api/nodes`, and its clients out of
/// presence, within this.
pub const NODE_TTL: Duration = Duration::from_secs(5);
/// Events a subscriber may buffer while its subscribe is in flight; beyond
/// this it is told to resubscribe (111) instead of growing without bound.
const MAX_SUBSCRIBE_BUFFER: usize = 4096;
/// Stripes of the subscribe/unsubscribe lock.
const STRIPES: usize = 64;
/// Shards of the channel map.
const SHARDS: usize = 32;

/// Why the hub could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    /// The `[auth]` settings are unusable.
    #[error("auth: {0}")]
    Auth(#[from] AuthError),
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] super::config::ConfigError),
}

/// Why a hub operation failed: an error code of the protocol's table and a
/// message for humans. The HTTP API maps the code to a status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct OpError {
    /// The code (`wshub.v1` error table).
    pub code: ErrorCode,
    /// What went wrong.
    pub message: String,
}

impl OpError {
    pub(crate) fn new(code: ErrorCode) -> OpError {
        OpError {
            code,
            message: code.message().to_owned(),
        }
    }

    pub(crate) fn with(code: ErrorCode, message: impl Into<String>) -> OpError {
        OpError {
            code,
            message: message.into(),
        }
    }
}

impl From<BrokerError> for OpError {
    fn from(e: BrokerError) -> OpError {
        tracing::warn!(error = %e, "broker operation failed");
        OpError::with(ErrorCode::Internal, e.to_string())
    }
}

/// Error 112 when `len` bytes of data exceed the namespace's publication
/// limit.
pub(crate) fn check_size(ns: &NamespaceConfig, len: usize) -> Result<(), OpError> {
    if len > ns.max_publication_size {
        return Err(OpError::with(
            ErrorCode::MessageTooLarge,
            format!(
                "data is {len} bytes; the namespace allows {}",
                ns.max_publication_size
            ),
        ));
    }
    Ok(())
}

/// A message to a session from outside its task (HTTP API, shutdown).
#[derive(Debug)]
pub(crate) enum Control {
    /// End the subscription with an `unsub` push.
    Unsubscribe {
        channel: String,
        code: ErrorCode,
        reason: String,
        resubscribe: bool,
    },
    /// Send a `disconnect` push and close.
    Disconnect { code: u16, reason: String },
    /// The hub already dropped the subscription and sent the `unsub` push
    /// (a stream gap); the session forgets the channel.
    Dropped { channel: String },
}

/// What the hub knows of a live session.
#[derive(Debug, Clone)]
pub(crate) struct SessionEntry {
    pub(crate) user: String,
    pub(crate) control: Sender<Control>,
}

/// A publication to make with [`Hub::publish`].
#[derive(Debug, Clone)]
pub struct PublishRequest {
    /// The data: JSON text, stored and delivered byte for byte.
    pub data: Bytes,
    /// The publishing client (shown to subscribers when the namespace says
    /// so); `None` for backends.
    pub info: Option<ClientInfo>,
    /// Metadata kept with the publication.
    pub tags: BTreeMap<String, String>,
    /// Who receives it.
    pub audience: Audience,
    /// Deduplicates retries (see [`PublishOptions::idempotency_key`]).
    pub idempotency_key: Option<String>,
    /// Where it came from (for metrics).
    pub source: PublishSource,
}

/// What the subscribe path returns to the session before its reply is sent.
#[derive(Debug)]
pub(crate) struct SubscribeHandle {
    pub(crate) channel: String,
    pub(crate) conn: ConnectionId,
}

/// How [`Hub::subscribe_finish`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finish {
    /// The reply was sent and the subscriber is live.
    Live,
    /// The reply was sent, then an `unsub` (111, resubscribe): too much
    /// arrived while subscribing. The session must leave the channel.
    Overflowed,
    /// Nothing was sent: the hub dropped the subscriber meanwhile (a stream
    /// gap). The session must reply with an error and leave.
    Gone,
}

/// A buffered event of a subscriber whose subscribe is in flight.
enum Buffered {
    /// A publication; `msg` is `None` when it is not for this subscriber
    /// (its offset still counts).
    Pub {
        offset: u64,
        epoch: Arc<str>,
        msg: Option<Arc<PreparedMessage>>,
    },
    Other(Arc<PreparedMessage>),
}

struct Subscriber {
    ws: WebSocket,
    client: Arc<str>,
    tags: Arc<BTreeMap<String, String>>,
    /// The presence record, when the namespace tracks presence.
    member: Option<ClientInfo>,
    policy: SlowConsumerPolicy,
    /// `Some` while the subscribe is in flight.
    buffer: Option<Vec<Buffered>>,
    /// The buffer overflowed: resubscribe after the reply.
    overflow: bool,
    /// The epoch and offset of the last publication this subscriber got
    /// (or its subscribe reply's position); set when it goes live.
    epoch: Arc<str>,
    offset: u64,
}

#[derive(Default)]
struct Channel {
    subscribers: HashMap<ConnectionId, Subscriber>,
    /// The last position delivered on this node.
    last: Option<StreamPosition>,
    /// The stream's epoch, shared by the subscribers that are in it: the
    /// fan-out then compares pointers, not a string in each subscriber's
    /// own allocation (a cache miss each, thousands per publication).
    epoch: Option<Arc<str>>,
}

impl Channel {
    /// `epoch` as the channel's shared `Arc`.
    fn shared_epoch(&mut self, epoch: &str) -> Arc<str> {
        match &self.epoch {
            Some(e) if **e == *epoch => Arc::clone(e),
            _ => Arc::clone(self.epoch.insert(Arc::from(epoch))),
        }
    }
}

/// Whether a subscriber's epoch is `epoch`: usually the same `Arc`.
fn same_epoch(a: &Arc<str>, b: &Arc<str>) -> bool {
    Arc::ptr_eq(a, b) || **a == **b
}

/// The hub. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Hub {
    pub(crate) inner: Arc<HubInner>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("node", &self.inner.node)
            .finish_non_exhaustive()
    }
}

pub(crate) struct HubInner {
    pub(crate) config: Arc<HubConfig>,
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) verifier: Verifier,
    pub(crate) metrics: Arc<Metrics>,
    /// This node's id: the prefix of its client ids.
    pub(crate) node: String,
    shards: Box<[Mutex<HashMap<String, Channel>>]>,
    stripes: Box<[tokio::sync::Mutex<()>]>,
    hasher: RandomState,
    sessions: Mutex<Sessions>,
    pub(crate) draining: AtomicBool,
    /// When the hub was built (uptime in the admin API).
    pub(crate) started: Instant,
    /// Mints the demo chat's tokens (`[demo] enabled`).
    pub(crate) demo_minter: Option<super::auth::Minter>,
    /// Channels with local subscribers.
    channel_count: AtomicUsize,
    /// Where client publications on upstream namespaces go
    /// ([`Hub::set_upstream`]).
    pub(crate) upstream: std::sync::RwLock<Option<Arc<dyn super::queue::Upstream>>>,
}

#[derive(Default)]
struct Sessions {
    by_conn: HashMap<ConnectionId, SessionEntry>,
    by_user: HashMap<String, HashSet<ConnectionId>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Hub {
    /// Builds a hub over `broker` with `config` (validated again here) and
    /// installs the hub's event sink in the broker. `base_dir` is where
    /// relative key-file paths of `[auth]` resolve.
    pub fn new(
        config: HubConfig,
        broker: Arc<dyn Broker>,
        base_dir: &std::path::Path,
    ) -> Result<Hub, HubError> {
        config.validate()?;
        let auth = config.auth.to_auth_config(base_dir)?;
        let verifier = Verifier::new(&auth)?;
        #[cfg(all(feature = "axum", feature = "tls"))]
        let demo_minter = super::web::demo_minter(&config, auth.hmac_secret.as_deref());
        #[cfg(not(all(feature = "axum", feature = "tls")))]
        let demo_minter = None;
        let node = random_id(8);
        let inner = Arc::new(HubInner {
            config: Arc::new(config),
            broker: Arc::clone(&broker),
            verifier,
            metrics: Arc::new(Metrics::new()),
            node,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            hasher: RandomState::new(),
            sessions: Mutex::new(Sessions::default()),
            draining: AtomicBool::new(false),
            started: Instant::now(),
            demo_minter,
            channel_count: AtomicUsize::new(0),
            upstream: std::sync::RwLock::new(None),
        });
        let sink = Sink(Arc::downgrade(&inner));
        broker.set_sink(Arc::new(sink));
        Ok(Hub { inner })
    }

    /// The configuration the hub runs with.
    pub fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    /// The hub's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The broker the hub runs on.
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.inner.broker
    }

    /// Whether the hub is draining (shutting down): not ready for new clients.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// Starts the hub's background upkeep: announcing this node in the
    /// registry every [`NODE_ANNOUNCE`] (it lapses after [`NODE_TTL`]) and
    /// refreshing its presence entries before they expire. It ends when the
    /// hub is dropped.
    pub fn spawn_maintenance(&self) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(NODE_ANNOUNCE);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_presence = tokio::time::Instant::now();
            // Nodes seen alive at the previous tick.
            let mut alive: HashSet<String> = HashSet::new();
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let hub = Hub { inner };
                hub.announce().await;
                alive = hub.reap_lapsed_nodes(alive).await;
                if last_presence.elapsed() >= PRESENCE_REFRESH {
                    last_presence = tokio::time::Instant::now();
                    hub.refresh_presence().await;
                }
            }
        })
    }

    /// This node's registry entry.
    pub fn node_info(&self) -> super::broker::NodeInfo {
        let m = self.inner.metrics.snapshot();
        super::broker::NodeInfo {
            node: self.inner.node.clone(),
            connections: m.connections,
            channels: m.channels,
            subscriptions: m.subscriptions,
            uptime_seconds: self.inner.started.elapsed().as_secs(),
        }
    }

    async fn announce(&self) {
        if let Err(e) = self
            .inner
            .broker
            .announce_node(self.node_info(), NODE_TTL)
            .await
        {
            tracing::debug!(error = %e, "node announcement failed");
        }
        if let Err(e) = self
            .inner
            .broker
            .announce_channels(&self.inner.node, self.channels(), NODE_TTL)
            .await
        {
            tracing::debug!(error = %e, "channel announcement failed");
        }
    }

    /// Removes the presence entries (with their leave events) of nodes that
    /// were alive at the previous tick and whose lease has lapsed since: they
    /// crashed or were killed. Returns the nodes alive now. Every live node
    /// does this; the broker removes each entry once.
    async fn reap_lapsed_nodes(&self, before: HashSet<String>) -> HashSet<String> {
        let mut now: HashSet<String> = match self.inner.broker.nodes().await {
            Ok(nodes) => nodes.into_iter().map(|n| n.node).collect(),
            // Unknown: keep the old view and try again next tick.
            Err(_) => return before,
        };
        let lapsed: Vec<String> = before.difference(&now).cloned().collect();
        for node in lapsed {
            if node == self.inner.node {
                continue;
            }
            match self.inner.broker.reap_node(&node).await {
                Ok(n) => {
                    tracing::info!(%node, members = n, "node lapsed; its presence entries removed")
                }
                Err(e) => {
                    tracing::warn!(%node, error = %e, "cannot remove a lapsed node's presence entries; retrying");
                    // Still counted as seen, so the next tick tries again.
                    now.insert(node);
                }
            }
        }
        now
    }

    /// The hub's live nodes (from the broker's registry), this one always
    /// included.
    pub async fn nodes(&self) -> Result<Vec<super::broker::NodeInfo>, OpError> {
        let mut nodes = self.inner.broker.nodes().await?;
        let me = self.node_info();
        match nodes.iter_mut().find(|n| n.node == me.node) {
            Some(n) => *n = me,
            None => nodes.push(me),
        }
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(nodes)
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.inner.node
    }

    async fn refresh_presence(&self) {
        let mut members = Vec::new();
        for shard in self.inner.shards.iter() {
            let shard = lock(shard);
            for (name, ch) in shard.iter() {
                for sub in ch.subscribers.values() {
                    if let Some(m) = &sub.member {
                        members.push((name.clone(), m.clone()));
                    }
                }
            }
        }
        for (channel, member) in members {
            // A refresh is silent, but an entry that was lost meanwhile (the
            // node was taken for dead, Redis restarted empty) comes back as
            // a join.
            let join_leave = self.namespace(&channel).is_ok_and(|ns| ns.join_leave);
            if let Err(e) = self
                .inner
                .broker
                .add_presence(&channel, member, PRESENCE_TTL, join_leave)
                .await
            {
                tracing::warn!(%channel, error = %e, "presence refresh failed");
            }
        }
    }

    pub(crate) fn client_id(&self, conn: ConnectionId) -> String {
        format!("{}-{:x}", self.inner.node, conn)
    }

    // -----------------------------------------------------------------------
    // Sessions
    // -----------------------------------------------------------------------

    pub(crate) fn register_session(&self, conn: ConnectionId, entry: SessionEntry) {
        let mut s = lock(&self.inner.sessions);
        s.by_user
            .entry(entry.user.clone())
            .or_default()
            .insert(conn);
        s.by_conn.insert(conn, entry);
    }

    pub(crate) fn unregister_session(&self, conn: ConnectionId) {
        let mut s = lock(&self.inner.sessions);
        if let Some(entry) = s.by_conn.remove(&conn) {
            if let Entry::Occupied(mut o) = s.by_user.entry(entry.user) {
                o.get_mut().remove(&conn);
                if o.get().is_empty() {
                    o.remove();
                }
            }
        }
    }

    /// Sends `control` to every session of `user`; returns how many.
    fn control_user(&self, user: &str, control: impl Fn() -> Control) -> usize {
        let s = lock(&self.inner.sessions);
        let Some(conns) = s.by_user.get(user) else {
            return 0;
        };
        conns
            .iter()
            .filter_map(|c| s.by_conn.get(c))
            .filter(|e| e.control.send(control()).is_ok())
            .count()
    }

    /// Sends `control` to every session (shutdown), in batches of `batch`
    /// with a random pause of up to `jitter` between batches.
    pub(crate) async fn control_all_batched(
        &self,
        batch: usize,
        jitter: Duration,
        control: impl Fn() -> Control,
    ) {
        let all: Vec<Sender<Control>> = lock(&self.inner.sessions)
            .by_conn
            .values()
            .map(|e| e.control.clone())
            .collect();
        let batch = batch.max(1);
        let mut chunks = all.chunks(batch).peekable();
        while let Some(chunk) = chunks.next() {
            for c in chunk {
                let _ = c.send(control());
            }
            if chunks.peek().is_some() && !jitter.is_zero() {
                let nanos = jitter.as_nanos().min(u128::from(u64::MAX)) as u64;
                tokio::time::sleep(Duration::from_nanos(fastrand::u64(0..=nanos))).await;
            }
        }
    }

    /// Whether connection `conn` has a session (it sent `connect`).
    pub(crate) fn has_session(&self, conn: ConnectionId) -> bool {
        lock(&self.inner.sessions).by_conn.contains_key(&conn)
    }

    /// Number of live hub sessions on this node.
    pub fn session_count(&self) -> usize {
        lock(&self.inner.sessions).by_conn.len()
    }

    // -----------------------------------------------------------------------
    // Subscriptions
    // -----------------------------------------------------------------------

    fn shard(&self, channel: &str) -> &Mutex<HashMap<String, Channel>> {
        let h = self.inner.hasher.hash_one(channel) as usize;
        &self.inner.shards[h % SHARDS]
    }

    fn stripe(&self, channel: &str) -> &tokio::sync::Mutex<()> {
        let h = self.inner.hasher.hash_one(channel) as usize;
        &self.inner.stripes[(h / SHARDS) % STRIPES]
    }

    /// Registers `ws` as a buffering subscriber of `channel` and makes sure
    /// the node is subscribed in the broker. On error nothing is left behind.
    pub(crate) async fn subscribe_begin(
        &self,
        channel: &str,
        ns: &NamespaceConfig,
        ws: &WebSocket,
        client: Arc<str>,
        tags: Arc<BTreeMap<String, String>>,
        member: Option<ClientInfo>,
    ) -> Result<SubscribeHandle, OpError> {
        let conn = ws.id();
        let _stripe = self.stripe(channel).lock().await;
        let first = {
            let mut shard = lock(self.shard(channel));
            let ch = shard.entry(channel.to_owned()).or_default();
            if ns.max_subscribers > 0 && ch.subscribers.len() >= ns.max_subscribers {
                // Not empty (the cap is at least one), so nothing to clean up.
                return Err(OpError::with(
                    ErrorCode::LimitExceeded,
                    format!(
                        "channel has its maximum of {} subscribers",
                        ns.max_subscribers
                    ),
                ));
            }
            let first = ch.subscribers.is_empty();
            ch.subscribers.insert(
                conn,
                Subscriber {
                    ws: ws.clone(),
                    client,
                    tags,
                    member,
                    policy: match ns.slow_consumer {
                        SlowConsumer::Close => SlowConsumerPolicy::Close,
                        SlowConsumer::DropOldest => SlowConsumerPolicy::DropOldest,
                    },
                    buffer: Some(Vec::new()),
                    overflow: false,
                    epoch: Arc::from(""),
                    offset: 0,
                },
            );
            if first {
                self.channel_added();
            }
            first
        };
        if first {
            if let Err(e) = self.inner.broker.subscribe(channel).await {
                let mut shard = lock(self.shard(channel));
                if let Some(ch) = shard.get_mut(channel) {
                    ch.subscribers.remove(&conn);
                    if ch.subscribers.is_empty() {
                        shard.remove(channel);
                        self.channel_removed();
                    }
                }
                return Err(e.into());
            }
        }
        self.inner.metrics.subscribed();
        Ok(SubscribeHandle {
            channel: channel.to_owned(),
            conn,
        })
    }

    /// Sends the subscribe reply (`reply`, already encoded) and the events
    /// buffered since [`subscribe_begin`](Self::subscribe_begin) that follow
    /// `position`, then makes the subscriber live.
    pub(crate) fn subscribe_finish(
        &self,
        handle: &SubscribeHandle,
        position: &StreamPosition,
        reply: &str,
    ) -> Finish {
        let mut shard = lock(self.shard(&handle.channel));
        let Some(ch) = shard.get_mut(&handle.channel) else {
            return Finish::Gone;
        };
        // Only the stream moves the node's position once it has one: a
        // position ahead of it means publications still on their way here,
        // which the other subscribers need (see "Gaps").
        if ch.last.is_none() {
            ch.last = Some(position.clone());
        }
        let epoch = ch.shared_epoch(&position.epoch);
        let Some(sub) = ch.subscribers.get_mut(&handle.conn) else {
            return Finish::Gone;
        };
        let _ = sub.ws.send_text(reply);
        sub.epoch = epoch;
        sub.offset = position.offset;
        let buffered = sub.buffer.take().unwrap_or_default();
        if sub.overflow {
            let push = Push::Unsub {
                channel: handle.channel.clone(),
                code: ErrorCode::UnrecoverablePosition,
                reason: "too many publications while subscribing".into(),
                resubscribe: true,
            };
            let _ = sub.ws.send_text(&push.to_json());
            // Stay silent until the session leaves the channel.
            sub.buffer = Some(Vec::new());
            return Finish::Overflowed;
        }
        for b in buffered {
            match b {
                Buffered::Pub { offset, epoch, msg } => {
                    if same_epoch(&epoch, &sub.epoch) && offset > sub.offset {
                        sub.offset = offset;
                        if let Some(msg) = msg {
                            self.send_counted(&sub.ws, &msg, sub.policy);
                        }
                    }
                }
                Buffered::Other(msg) => {
                    self.send_counted(&sub.ws, &msg, sub.policy);
                }
            }
        }
        Finish::Live
    }

    /// Removes a subscriber (and the node's broker subscription when it was
    /// the last one). Returns whether it was subscribed.
    pub(crate) async fn unsubscribe(&self, channel: &str, conn: ConnectionId) -> bool {
        let _stripe = self.stripe(channel).lock().await;
        let (was, last) = {
            let mut shard = lock(self.shard(channel));
            let Some(ch) = shard.get_mut(channel) else {
                return false;
            };
            let was = ch.subscribers.remove(&conn).is_some();
            let last = ch.subscribers.is_empty();
            if last {
                shard.remove(channel);
            }
            (was, last)
        };
        if was {
            self.inner.metrics.unsubscribed();
        }
        if last {
            self.channel_removed();
            if let Err(e) = self.inner.broker.unsubscribe(channel).await {
                tracing::warn!(%channel, error = %e, "broker unsubscribe failed");
            }
        }
        was
    }

    fn channel_added(&self) {
        let n = self.inner.channel_count.fetch_add(1, Ordering::Relaxed) + 1;
        self.inner.metrics.set_channels(n);
    }

    fn channel_removed(&self) {
        let n = self.inner.channel_count.fetch_sub(1, Ordering::Relaxed) - 1;
        self.inner.metrics.set_channels(n);
    }

    /// The channels with local subscribers and how many each has, sorted by
    /// name.
    pub fn channels(&self) -> Vec<(String, usize)> {
        let mut out: Vec<(String, usize)> = self
            .inner
            .shards
            .iter()
            .flat_map(|s| {
                lock(s)
                    .iter()
                    .map(|(k, c)| (k.clone(), c.subscribers.len()))
                    .collect::<Vec<_>>()
            })
            .collect();
        out.sort();
        out
    }

    // -----------------------------------------------------------------------
    // Fan-out
    // -----------------------------------------------------------------------

    fn deliver(&self, event: BrokerEvent) {
        match event {
            BrokerEvent::Publication {
                channel,
                publication,
                epoch,
            } => {
                let mut shard = lock(self.shard(&channel));
                let Some(ch) = shard.get_mut(&channel) else {
                    return;
                };
                let mut next = true;
                if let Some(last) = &ch.last {
                    // At or before the node's position: already delivered,
                    // or on its way while a subscribe read a later position
                    // (each subscriber's own offset decides below).
                    next = last.epoch != epoch || publication.offset > last.offset;
                    if last.epoch != epoch || publication.offset > last.offset + 1 {
                        let gap = format!(
                            "expected offset {} in epoch {}, got {} in epoch {}",
                            last.offset + 1,
                            last.epoch,
                            publication.offset,
                            epoch
                        );
                        tracing::warn!(%channel, %gap, "stream gap: subscribers must resubscribe");
                        self.drop_channel(&mut shard, &channel);
                        return;
                    }
                }
                if next {
                    ch.last = Some(StreamPosition {
                        offset: publication.offset,
                        epoch: epoch.clone(),
                    });
                }
                let json = encode_pub(&channel, &epoch, &publication);
                let len = json.len() as u64;
                let msg = Arc::new(PreparedMessage::new(&Message::from(json)));
                let epoch = ch.shared_epoch(&epoch);
                let mut sent = 0u64;
                let mut gap = false;
                for sub in ch.subscribers.values_mut() {
                    let mine = publication.audience.includes(&sub.client, &sub.tags);
                    if let Some(buf) = &mut sub.buffer {
                        if buf.len() >= MAX_SUBSCRIBE_BUFFER {
                            sub.overflow = true;
                        } else {
                            buf.push(Buffered::Pub {
                                offset: publication.offset,
                                epoch: Arc::clone(&epoch),
                                msg: mine.then(|| Arc::clone(&msg)),
                            });
                        }
                        continue;
                    }
                    if !same_epoch(&sub.epoch, &epoch) || publication.offset <= sub.offset {
                        continue; // it has this one already
                    }
                    if publication.offset > sub.offset + 1 {
                        gap = true;
                        continue;
                    }
                    sub.offset = publication.offset;
                    if mine && self.send_counted(&sub.ws, &msg, sub.policy) {
                        sent += 1;
                    }
                }
                self.inner.metrics.messages_sent(sent, sent * len);
                if gap {
                    tracing::warn!(
                        %channel,
                        offset = publication.offset,
                        "stream gap for a subscriber: subscribers must resubscribe"
                    );
                    self.drop_channel(&mut shard, &channel);
                }
            }
            BrokerEvent::Resynced => {
                let hub = self.clone();
                tokio::spawn(async move { hub.resync().await });
            }
            BrokerEvent::Control(command) => self.apply_control(command),
            BrokerEvent::Join { channel, member } | BrokerEvent::Leave { channel, member }
                if !self.namespace(&channel).is_ok_and(|ns| ns.join_leave) =>
            {
                // Reaping a dead node's members sends leave events whatever
                // the namespace says; only namespaces with join_leave show them.
                let _ = (channel, member);
            }
            BrokerEvent::Join { channel, member } => {
                let client = member.client.clone();
                self.deliver_member_push(&channel.clone(), &client, Push::Join { channel, member });
            }
            BrokerEvent::Leave { channel, member } => {
                let client = member.client.clone();
                self.deliver_member_push(
                    &channel.clone(),
                    &client,
                    Push::Leave { channel, member },
                );
            }
        }
    }

    /// Sends a join/leave push to the channel's local subscribers, except
    /// the member it is about (buffered for those still subscribing).
    fn deliver_member_push(&self, channel: &str, member_client: &str, push: Push) {
        let mut shard = lock(self.shard(channel));
        let Some(ch) = shard.get_mut(channel) else {
            return;
        };
        let msg = Arc::new(PreparedMessage::new(&Message::from(push.to_json())));
        for sub in ch.subscribers.values_mut() {
            if *sub.client == *member_client {
                continue;
            }
            match &mut sub.buffer {
                Some(buf) if buf.len() < MAX_SUBSCRIBE_BUFFER => {
                    buf.push(Buffered::Other(Arc::clone(&msg)))
                }
                Some(_) => sub.overflow = true,
                None => {
                    self.send_counted(&sub.ws, &msg, sub.policy);
                }
            }
        }
    }

    /// Queues a push, counting drop-oldest discards and slow consumers;
    /// returns whether it was queued.
    fn send_counted(
        &self,
        ws: &WebSocket,
        msg: &Arc<PreparedMessage>,
        policy: SlowConsumerPolicy,
    ) -> bool {
        match ws.send_prepared_with(msg, policy) {
            Ok(0) => true,
            Ok(dropped) => {
                self.inner.metrics.queue_drops(dropped as u64);
                true
            }
            Err(crate::SendError::SlowConsumer) => {
                self.inner.metrics.slow_consumer();
                tracing::info!(
                    client_ip = %ws.client_ip(),
                    connection = ws.id(),
                    "slow consumer: outbound queue full, closing with 4001"
                );
                false
            }
            Err(_) => false,
        }
    }

    /// Ends every local subscription of `channel` after a gap in its stream:
    /// an `unsub` push (111, resubscribe) to each subscriber, the channel
    /// removed, and the node's broker subscription dropped (in a task; the
    /// caller holds the shard lock).
    fn drop_channel(&self, shard: &mut HashMap<String, Channel>, channel: &str) {
        let Some(ch) = shard.remove(channel) else {
            return;
        };
        self.channel_removed();
        let push = Push::Unsub {
            channel: channel.to_owned(),
            code: ErrorCode::UnrecoverablePosition,
            reason: "stream interrupted".into(),
            resubscribe: true,
        };
        let msg = Arc::new(PreparedMessage::new(&Message::from(push.to_json())));
        for sub in ch.subscribers.values() {
            let _ = sub.ws.send_prepared(&msg);
            self.notify_unsubscribed(sub.ws.id(), channel);
        }
        let hub = self.clone();
        let channel = channel.to_owned();
        tokio::spawn(async move {
            let _stripe = hub.stripe(&channel).lock().await;
            if !lock(hub.shard(&channel)).contains_key(&channel) {
                let _ = hub.inner.broker.unsubscribe(&channel).await;
            }
        });
    }

    /// After [`BrokerEvent::Resynced`]: compares every local channel's last
    /// delivered position with its stream and drops (111, resubscribe) the
    /// channels whose stream moved on or changed epoch meanwhile.
    async fn resync(&self) {
        let mut known: Vec<(String, StreamPosition)> = Vec::new();
        for shard in self.inner.shards.iter() {
            for (name, ch) in lock(shard).iter() {
                if let Some(last) = &ch.last {
                    known.push((name.clone(), last.clone()));
                }
            }
        }
        let mut dropped = 0usize;
        for (channel, last) in known {
            let filter = HistoryFilter {
                since: None,
                limit: Some(0),
            };
            let current = match self.inner.broker.history(&channel, filter).await {
                Ok(h) => h.position,
                Err(e) => {
                    tracing::warn!(%channel, error = %e, "resync: cannot read the stream position");
                    continue;
                }
            };
            let mut shard = lock(self.shard(&channel));
            let still = shard
                .get(&channel)
                .and_then(|ch| ch.last.as_ref())
                .is_some_and(|l| *l == last);
            if still && current != last {
                self.drop_channel(&mut shard, &channel);
                dropped += 1;
            }
        }
        tracing::info!(
            dropped,
            "broker resynced: channels with missed events told to resubscribe"
        );
    }

    /// Tells a session that the hub dropped its subscription to `channel`
    /// (it already got the `unsub` push).
    fn notify_unsubscribed(&self, conn: ConnectionId, channel: &str) {
        let s = lock(&self.inner.sessions);
        if let Some(e) = s.by_conn.get(&conn) {
            let _ = e.control.send(Control::Dropped {
                channel: channel.to_owned(),
            });
        }
        self.inner.metrics.unsubscribed();
    }

    /// The hub's channels across all live nodes, with their subscriber
    /// counts summed, sorted by name: this node's now, other nodes' as they
    /// announced them (at most [`NODE_ANNOUNCE`] old).
    pub async fn cluster_channels(&self) -> Result<Vec<(String, usize)>, OpError> {
        let others: Vec<String> = self
            .nodes()
            .await?
            .into_iter()
            .map(|n| n.node)
            .filter(|n| *n != self.inner.node)
            .collect();
        let mut all = if others.is_empty() {
            HashMap::new()
        } else {
            self.inner.broker.channels_of(&others).await?
        };
        for (name, count) in self.channels() {
            *all.entry(name).or_insert(0) += count;
        }
        let mut out: Vec<(String, usize)> = all.into_iter().collect();
        out.sort();
        Ok(out)
    }

    // -----------------------------------------------------------------------
    // Operations (HTTP API and sessions)
    // -----------------------------------------------------------------------

    /// The namespace of `channel`, or error 102.
    pub fn namespace(&self, channel: &str) -> Result<&NamespaceConfig, OpError> {
        self.inner
            .config
            .namespace(channel)
            .ok_or_else(|| OpError::new(ErrorCode::UnknownChannel))
    }

    /// Publishes `req.data` (raw JSON, validated by the caller) to `channel`
    /// with the namespace's history settings.
    pub async fn publish(&self, channel: &str, req: PublishRequest) -> Result<Position, OpError> {
        let PublishRequest {
            data,
            info,
            tags,
            audience,
            idempotency_key,
            source,
        } = req;
        let ns = self.namespace(channel)?;
        check_size(ns, data.len())?;
        let mut opts = PublishOptions {
            history_size: ns.history_size,
            history_ttl: ns.history_ttl,
            info: if ns.show_publisher { info } else { None },
            tags,
            audience,
            ..PublishOptions::default()
        };
        opts.idempotency_key = idempotency_key;
        let started = Instant::now();
        let position = self.inner.broker.publish(channel, data, opts).await?;
        self.inner
            .metrics
            .publish_observed(source, started.elapsed());
        Ok(position)
    }

    /// The members present in `channel`.
    pub async fn presence(&self, channel: &str) -> Result<Vec<ClientInfo>, OpError> {
        let ns = self.namespace(channel)?;
        if !ns.presence {
            return Err(OpError::with(
                ErrorCode::NotAvailable,
                "presence is off in this namespace",
            ));
        }
        let map = self.inner.broker.presence(channel).await?;
        // Members of nodes that stopped announcing themselves (crashed,
        // killed) are gone, without waiting for their entries to expire: a
        // client id starts with its node's id.
        let live: HashSet<String> = self.nodes().await?.into_iter().map(|n| n.node).collect();
        let mut members: Vec<ClientInfo> = map
            .into_values()
            .filter(|m| {
                m.client
                    .split_once('-')
                    .is_none_or(|(node, _)| live.contains(node))
            })
            .collect();
        members.sort_by(|a, b| a.client.cmp(&b.client));
        Ok(members)
    }

    /// Reads history (error 108 without history in the namespace, 111 when
    /// `since` cannot be continued), keeping only what `viewer` (a client id
    /// and its tags; `None` for the backend) may see.
    pub async fn history(
        &self,
        channel: &str,
        limit: Option<usize>,
        since: Option<Position>,
        viewer: Option<(&str, &BTreeMap<String, String>)>,
    ) -> Result<super::protocol::HistoryResult, OpError> {
        let ns = self.namespace(channel)?;
        if ns.history_size == 0 || ns.history_ttl.is_zero() {
            return Err(OpError::with(
                ErrorCode::NotAvailable,
                "history is off in this namespace",
            ));
        }
        let limit = limit.unwrap_or(ns.history_size).min(ns.history_size);
        let filter = HistoryFilter {
            since: since.clone(),
            limit: Some(limit),
        };
        let result = self.inner.broker.history(channel, filter).await?;
        if let Some(since) = &since {
            if !super::broker::continues_from(since, &result) {
                return Err(OpError::new(ErrorCode::UnrecoverablePosition));
            }
        }
        let publications = result
            .publications
            .into_iter()
            .filter(|p| viewer.is_none_or(|(c, t)| p.audience.includes(c, t)))
            .map(to_wire)
            .collect();
        Ok(super::protocol::HistoryResult {
            position: result.position,
            publications,
        })
    }

    /// Carries out a cross-node command on this node's sessions.
    fn apply_control(&self, command: super::broker::ControlCommand) {
        use super::broker::ControlCommand;
        let n = match &command {
            ControlCommand::Disconnect { user, code, reason } => {
                self.disconnect_user(user, *code, reason)
            }
            ControlCommand::Unsubscribe {
                user,
                channel,
                reason,
            } => self.unsubscribe_user(user, channel, reason),
        };
        if n > 0 {
            tracing::info!(?command, sessions = n, "control command applied");
        }
    }

    /// Disconnects every session of `user` on **every node** (through the
    /// broker's control channel): a `disconnect` push, then close `code`.
    /// Returns how many sessions this node had (with the in-memory broker,
    /// the whole hub).
    pub async fn disconnect_user_everywhere(
        &self,
        user: &str,
        code: u16,
        reason: &str,
    ) -> Result<usize, OpError> {
        let command = super::broker::ControlCommand::Disconnect {
            user: user.to_owned(),
            code,
            reason: reason.to_owned(),
        };
        self.control_everywhere(user, command).await
    }

    /// Ends `user`'s subscriptions to `channel` on **every node** (an
    /// `unsub` push, 103). Returns how many sessions this node had.
    pub async fn unsubscribe_user_everywhere(
        &self,
        user: &str,
        channel: &str,
        reason: &str,
    ) -> Result<usize, OpError> {
        let command = super::broker::ControlCommand::Unsubscribe {
            user: user.to_owned(),
            channel: channel.to_owned(),
            reason: reason.to_owned(),
        };
        self.control_everywhere(user, command).await
    }

    /// Sends a command about `user` to every node; returns the user's
    /// session count on this node (taken before the command runs here).
    async fn control_everywhere(
        &self,
        user: &str,
        command: super::broker::ControlCommand,
    ) -> Result<usize, OpError> {
        let local = self.user_session_count(user);
        self.inner.broker.control(command).await?;
        Ok(local)
    }

    fn user_session_count(&self, user: &str) -> usize {
        lock(&self.inner.sessions)
            .by_user
            .get(user)
            .map_or(0, HashSet::len)
    }

    /// Disconnects every session of `user` on this node with `code`
    /// (a `disconnect` push, then the close). Returns how many.
    pub fn disconnect_user(&self, user: &str, code: u16, reason: &str) -> usize {
        self.control_user(user, || Control::Disconnect {
            code,
            reason: reason.to_owned(),
        })
    }

    /// Unsubscribes every session of `user` on this node from `channel`
    /// (an `unsub` push with code 103). Returns how many sessions were told.
    pub fn unsubscribe_user(&self, user: &str, channel: &str, reason: &str) -> usize {
        self.control_user(user, || Control::Unsubscribe {
            channel: channel.to_owned(),
            code: ErrorCode::PermissionDenied,
            reason: reason.to_owned(),
            resubscribe: false,
        })
    }

    /// Closes a connection with a `disconnect` push first.
    pub(crate) fn close_with_push(ws: &WebSocket, code: u16, reason: &str) {
        let _ = ws.send_text(&Push::disconnect(code, reason).to_json());
        let _ = ws.close(CloseCode(code), reason);
    }
}

/// A broker publication as the wire shows it.
pub(crate) fn to_wire(p: super::broker::Publication) -> super::protocol::Publication {
    super::protocol::Publication {
        offset: p.offset,
        data: serde_json::from_slice(&p.data).unwrap_or(serde_json::Value::Null),
        info: p.info,
    }
}

/// Encodes a `pub` push with the data spliced in raw (it is JSON the hub
/// validated at publish time), so fan-out never re-parses it.
fn encode_pub(channel: &str, epoch: &str, p: &super::broker::Publication) -> String {
    #[derive(Serialize)]
    struct Head<'a> {
        push: &'static str,
        channel: &'a str,
        offset: u64,
        epoch: &'a str,
    }
    let head = Head {
        push: "pub",
        channel,
        offset: p.offset,
        epoch,
    };
    let mut out = serde_json::to_string(&head).unwrap_or_default();
    out.pop(); // the closing brace
    out.push_str(",\"data\":");
    out.push_str(std::str::from_utf8(&p.data).unwrap_or("null"));
    if let Some(info) = &p.info {
        out.push_str(",\"info\":");
        out.push_str(&serde_json::to_string(info).unwrap_or_else(|_| "null".into()));
    }
    out.push('}');
    out
}

/// A random lowercase alphanumeric id.
pub(crate) fn random_id(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..len)
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
        .collect()
}

/// The hub's event sink: a weak reference, so the broker does not keep a
/// dropped hub alive.
struct Sink(std::sync::Weak<HubInner>);

impl EventSink for Sink {
    fn deliver(&self, event: BrokerEvent) {
        if let Some(inner) = self.0.upgrade() {
            Hub { inner }.deliver(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pub_push_splices_raw_data() {
        let p = super::super::broker::Publication {
            offset: 7,
            data: Bytes::from_static(br#"{"text":"hi"}"#),
            info: Some(ClientInfo {
                client: "n-1".into(),
                user: "42".into(),
                info: None,
            }),
            tags: BTreeMap::new(),
            audience: Audience::default(),
        };
        let json = encode_pub("chat:lobby", "e1", &p);
        let parsed: Push = serde_json::from_str(&json).unwrap();
        assert_eq!(
            parsed,
            Push::Pub {
                channel: "chat:lobby".into(),
                offset: 7,
                epoch: "e1".into(),
                data: serde_json::json!({"text":"hi"}),
                info: Some(ClientInfo {
                    client: "n-1".into(),
                    user: "42".into(),
                    info: None
                }),
            }
        );
    }

    #[test]
    fn random_ids_are_alphanumeric() {
        let id = random_id(12);
        assert_eq!(id.len(), 12);
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
    }
}
