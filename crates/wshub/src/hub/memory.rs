//! The in-memory broker: the single-process engine and the hub's default.
//!
//! Everything lives in this process's memory and is lost when it exits; the
//! epochs are random, so positions from a previous process are never mistaken
//! for current ones (clients get `recovered: false` and reload).
//!
//! # How it works
//!
//! * Channels are spread over a fixed number of shards by a hash of their
//!   name; each shard is a `std::sync::Mutex` around a map of channel states
//!   (never held across an `.await`: every operation is synchronous inside).
//! * `publish` assigns the offset, appends to history and delivers to the
//!   [`EventSink`] while holding the channel's shard lock, so deliveries of one
//!   channel are in offset order for any number of concurrent publishers.
//! * A channel's **stream** (offset, epoch, history) is created on the first
//!   publish or history read, with a fresh random epoch. Every publish or read
//!   keeps it alive for [`MemoryBrokerConfig::history_meta_ttl`] (at least as
//!   long as its newest history entry); once that passes without activity the
//!   stream is dropped and the next use starts a new epoch at offset 0. This
//!   bounds memory for channels that are no longer used, at the price of
//!   un-recoverable positions after long silences (clients reload).
//! * History is a `VecDeque` of at most `history_size` entries, each expiring
//!   `history_ttl` after its publication. Expired entries are pruned lazily
//!   when the channel is touched. The deque always holds a contiguous run of
//!   offsets with non-decreasing expiry times: when a publish comes with a
//!   shorter TTL than earlier ones, the older entries' expiry is cut to the
//!   new one (never extended), so pruning from the front is exact and no entry
//!   outlives its own TTL.
//! * Presence entries and idempotency keys expire individually, also lazily.
//! * Idle channels (no node subscription, no stream, no presence, no
//!   idempotency keys) are removed: immediately after an `unsubscribe`, and by
//!   a sweep of a shard that runs at most every
//!   [`MemoryBrokerConfig::sweep_interval`] when that shard is used (or when
//!   [`MemoryBroker::sweep`] is called, e.g. from a timer).
//!
//! Time is `tokio::time::Instant`, so tests drive expiry with
//! `tokio::time::pause()` and `advance()`.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::time::Instant;

use super::broker::{
    BoxFuture, Broker, BrokerError, BrokerEvent, ControlCommand, EventSink, HistoryFilter,
    HistoryResult, NodeInfo, PresenceStats, Publication, PublishOptions, StreamPosition,
};
use super::protocol::ClientInfo;

/// The default [`MemoryBrokerConfig::history_meta_ttl`]: one day.
pub const DEFAULT_HISTORY_META_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// The default [`MemoryBrokerConfig::sweep_interval`].
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// The number of shards (independent locks) channels are spread over.
const SHARDS: usize = 64;

/// Settings of a [`MemoryBroker`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryBrokerConfig {
    /// How long a channel's stream (offset and epoch) survives without a
    /// publish or history read; after that it is dropped and a new epoch
    /// starts. Never shorter than the history it holds.
    pub history_meta_ttl: Duration,
    /// The least time between two sweeps of a shard for idle channels.
    pub sweep_interval: Duration,
}

impl Default for MemoryBrokerConfig {
    fn default() -> Self {
        MemoryBrokerConfig {
            history_meta_ttl: DEFAULT_HISTORY_META_TTL,
            sweep_interval: DEFAULT_SWEEP_INTERVAL,
        }
    }
}

/// The in-memory [`Broker`]. See the [module docs](self).
pub struct MemoryBroker {
    config: MemoryBrokerConfig,
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    sink: RwLock<Option<Arc<dyn EventSink>>>,
    /// The node registry: node id → (info, lapses at).
    nodes: Mutex<HashMap<String, (NodeInfo, Instant)>>,
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBroker")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

struct Shard {
    channels: HashMap<String, Channel>,
    next_sweep: Instant,
}

#[derive(Default)]
struct Channel {
    /// Whether this node wants the channel's events.
    subscribed: bool,
    stream: Option<Stream>,
    presence: HashMap<String, PresenceEntry>,
    /// Idempotency key → (original position, expiry).
    idempotency: HashMap<String, (StreamPosition, Instant)>,
}

struct Stream {
    epoch: String,
    offset: u64,
    /// Contiguous offsets, expiry non-decreasing front to back.
    history: VecDeque<Entry>,
    /// When the stream is dropped unless used again.
    expires: Instant,
}

struct Entry {
    publication: Publication,
    expires: Instant,
}

struct PresenceEntry {
    member: ClientInfo,
    expires: Instant,
}

impl Stream {
    fn new(now: Instant, meta_ttl: Duration) -> Stream {
        Stream {
            epoch: new_epoch(),
            offset: 0,
            history: VecDeque::new(),
            expires: now + meta_ttl,
        }
    }

    fn position(&self) -> StreamPosition {
        StreamPosition {
            offset: self.offset,
            epoch: self.epoch.clone(),
        }
    }

    fn prune(&mut self, now: Instant) {
        while self.history.front().is_some_and(|e| e.expires <= now) {
            self.history.pop_front();
        }
    }

    /// Keeps the stream alive until at least `until`.
    fn keep_until(&mut self, until: Instant) {
        self.expires = self.expires.max(until);
    }
}

impl Channel {
    /// The channel's live stream, created (new epoch) if absent or expired,
    /// with expired history pruned.
    fn stream(&mut self, now: Instant, meta_ttl: Duration) -> &mut Stream {
        if self.stream.as_ref().is_some_and(|s| s.expires <= now) {
            self.stream = None;
        }
        let stream = self
            .stream
            .get_or_insert_with(|| Stream::new(now, meta_ttl));
        stream.prune(now);
        stream
    }

    fn prune(&mut self, now: Instant) {
        if self.stream.as_ref().is_some_and(|s| s.expires <= now) {
            self.stream = None;
        }
        if let Some(stream) = &mut self.stream {
            stream.prune(now);
        }
        self.presence.retain(|_, p| p.expires > now);
        self.idempotency.retain(|_, (_, expires)| *expires > now);
    }

    /// Whether `member`'s user has another live client in the presence
    /// (anonymous members never share: each is its own).
    fn user_present(&self, member: &ClientInfo, now: Instant) -> bool {
        !member.user.is_empty()
            && self.presence.iter().any(|(client, p)| {
                *client != member.client && p.expires > now && p.member.user == member.user
            })
    }

    /// Nothing worth keeping (call after `prune`).
    fn is_idle(&self) -> bool {
        !self.subscribed
            && self.stream.is_none()
            && self.presence.is_empty()
            && self.idempotency.is_empty()
    }
}

impl Default for MemoryBroker {
    fn default() -> Self {
        MemoryBroker::new(MemoryBrokerConfig::default())
    }
}

impl MemoryBroker {
    /// A broker with `config`. It needs no runtime to be created; expiry uses
    /// `tokio::time::Instant`.
    pub fn new(config: MemoryBrokerConfig) -> MemoryBroker {
        let now = Instant::now();
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    channels: HashMap::new(),
                    next_sweep: now + config.sweep_interval,
                })
            })
            .collect();
        MemoryBroker {
            config,
            shards,
            hasher: RandomState::new(),
            sink: RwLock::new(None),
            nodes: Mutex::new(HashMap::new()),
        }
    }

    /// Prunes expired state in every shard and removes idle channels. Shards
    /// are swept on use anyway; calling this from a timer also reclaims
    /// shards nobody touches.
    pub fn sweep(&self) {
        let now = Instant::now();
        for shard in self.shards.iter() {
            lock(shard).sweep(now, self.config.sweep_interval);
        }
    }

    /// The number of channels with any state (for metrics and tests).
    pub fn channel_count(&self) -> usize {
        self.shards.iter().map(|s| lock(s).channels.len()).sum()
    }

    /// Locks `channel`'s shard, sweeping it first when its interval is due.
    fn shard(&self, channel: &str, now: Instant) -> MutexGuard<'_, Shard> {
        // `hash_one` of a `RandomState` is stable for the broker's lifetime.
        let index = (self.hasher.hash_one(channel) % SHARDS as u64) as usize;
        let mut shard = lock(&self.shards[index]);
        if now >= shard.next_sweep {
            shard.sweep(now, self.config.sweep_interval);
        }
        shard
    }

    /// Delivers `event` if a sink is set (called with the shard lock held).
    fn deliver(&self, event: BrokerEvent) {
        let sink = self.sink.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(sink) = sink.as_ref() {
            sink.deliver(event);
        }
    }

    fn publish_now(&self, channel: &str, data: Bytes, opts: PublishOptions) -> StreamPosition {
        let now = Instant::now();
        let mut shard = self.shard(channel, now);
        let state = shard.channels.entry(channel.to_owned()).or_default();

        if let Some(key) = &opts.idempotency_key {
            if let Some((position, expires)) = state.idempotency.get(key) {
                if *expires > now {
                    return position.clone();
                }
            }
        }

        let meta_ttl = self.config.history_meta_ttl;
        let subscribed = state.subscribed;
        let stream = state.stream(now, meta_ttl);
        stream.offset += 1;
        let publication = Publication {
            offset: stream.offset,
            data,
            info: opts.info,
            tags: opts.tags,
            audience: opts.audience,
        };
        stream.keep_until(now + meta_ttl);
        if opts.history_size > 0 && !opts.history_ttl.is_zero() {
            let expires = now + opts.history_ttl;
            // Keep expiry non-decreasing: a shorter TTL cuts older entries.
            for older in stream.history.iter_mut().rev() {
                if older.expires <= expires {
                    break;
                }
                older.expires = expires;
            }
            stream.history.push_back(Entry {
                publication: publication.clone(),
                expires,
            });
            while stream.history.len() > opts.history_size {
                stream.history.pop_front();
            }
            stream.keep_until(expires);
        }
        let position = stream.position();

        if let Some(key) = opts.idempotency_key {
            state
                .idempotency
                .insert(key, (position.clone(), now + opts.idempotency_ttl));
        }
        if subscribed {
            self.deliver(BrokerEvent::Publication {
                channel: channel.to_owned(),
                publication,
                epoch: position.epoch.clone(),
            });
        }
        position
    }

    fn history_now(&self, channel: &str, filter: HistoryFilter) -> HistoryResult {
        let now = Instant::now();
        let meta_ttl = self.config.history_meta_ttl;
        let mut shard = self.shard(channel, now);
        let stream = shard
            .channels
            .entry(channel.to_owned())
            .or_default()
            .stream(now, meta_ttl);
        stream.keep_until(now + meta_ttl);
        let position = stream.position();
        let limit = filter.limit.unwrap_or(usize::MAX);
        let history = &stream.history;
        let publications: Vec<Publication> = match &filter.since {
            Some(since) if since.epoch != stream.epoch => Vec::new(),
            Some(since) => {
                // Offsets are contiguous, so the first one after `since` is
                // found by arithmetic.
                let skip = history.front().map_or(0, |first| {
                    usize::try_from(
                        since
                            .offset
                            .saturating_add(1)
                            .saturating_sub(first.publication.offset),
                    )
                    .unwrap_or(usize::MAX)
                });
                history
                    .iter()
                    .skip(skip)
                    .take(limit)
                    .map(|e| e.publication.clone())
                    .collect()
            }
            None => history
                .iter()
                .skip(history.len().saturating_sub(limit))
                .map(|e| e.publication.clone())
                .collect(),
        };
        HistoryResult {
            publications,
            position,
        }
    }

    fn remove_history_now(&self, channel: &str) {
        let now = Instant::now();
        let mut shard = self.shard(channel, now);
        if let Some(stream) = shard
            .channels
            .get_mut(channel)
            .and_then(|c| c.stream.as_mut())
        {
            stream.history.clear();
        }
    }

    fn set_subscribed(&self, channel: &str, subscribed: bool) {
        let now = Instant::now();
        let mut shard = self.shard(channel, now);
        if subscribed {
            shard
                .channels
                .entry(channel.to_owned())
                .or_default()
                .subscribed = true;
        } else if let Some(state) = shard.channels.get_mut(channel) {
            state.subscribed = false;
            state.prune(now);
            if state.is_idle() {
                shard.channels.remove(channel);
            }
        }
    }

    fn add_presence_now(&self, channel: &str, member: ClientInfo, ttl: Duration, join_leave: bool) {
        let now = Instant::now();
        let mut shard = self.shard(channel, now);
        let state = shard.channels.entry(channel.to_owned()).or_default();
        let expires = now + ttl;
        let joined = match state.presence.get_mut(&member.client) {
            Some(entry) if entry.expires > now => {
                entry.member = member.clone();
                entry.expires = expires;
                false
            }
            _ => {
                state.presence.insert(
                    member.client.clone(),
                    PresenceEntry {
                        member: member.clone(),
                        expires,
                    },
                );
                true
            }
        };
        if joined && join_leave && state.subscribed && !state.user_present(&member, now) {
            self.deliver(BrokerEvent::Join {
                channel: channel.to_owned(),
                member,
            });
        }
    }

    fn remove_presence_now(&self, channel: &str, client: &str, join_leave: bool) {
        let now = Instant::now();
        let mut shard = self.shard(channel, now);
        let Some(state) = shard.channels.get_mut(channel) else {
            return;
        };
        let removed = state.presence.remove(client);
        if let Some(entry) = removed {
            if entry.expires > now
                && join_leave
                && state.subscribed
                && !state.user_present(&entry.member, now)
            {
                self.deliver(BrokerEvent::Leave {
                    channel: channel.to_owned(),
                    member: entry.member,
                });
            }
        }
        state.prune(now);
        if state.is_idle() {
            shard.channels.remove(channel);
        }
    }

    fn presence_now(&self, channel: &str) -> HashMap<String, ClientInfo> {
        let now = Instant::now();
        let shard = self.shard(channel, now);
        shard.channels.get(channel).map_or_else(HashMap::new, |c| {
            c.presence
                .iter()
                .filter(|(_, p)| p.expires > now)
                .map(|(client, p)| (client.clone(), p.member.clone()))
                .collect()
        })
    }

    fn presence_stats_now(&self, channel: &str) -> PresenceStats {
        let now = Instant::now();
        let shard = self.shard(channel, now);
        let Some(state) = shard.channels.get(channel) else {
            return PresenceStats::default();
        };
        let live = || state.presence.values().filter(|p| p.expires > now);
        PresenceStats {
            clients: live().count(),
            users: live()
                .map(|p| p.member.user.as_str())
                .collect::<HashSet<_>>()
                .len(),
        }
    }
}

impl Shard {
    fn sweep(&mut self, now: Instant, interval: Duration) {
        self.channels.retain(|_, c| {
            c.prune(now);
            !c.is_idle()
        });
        self.next_sweep = now + interval;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a shard lock (in a sink, say) leaves the state
    // consistent enough: every mutation is a single step.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A new random epoch: 12 characters of base 32 (60 bits). The bits come from
/// std's randomly keyed hasher (seeded by the OS per process), mixed with the
/// wall clock and a process-wide counter, so epochs differ across channels,
/// re-creations and restarts without a random-number crate.
fn new_epoch() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(nanos);
    let mut bits = hasher.finish();
    (0..12)
        .map(|_| {
            let c = ALPHABET[(bits & 31) as usize];
            bits >>= 5;
            char::from(c)
        })
        .collect()
}

impl Broker for MemoryBroker {
    fn set_sink(&self, sink: Arc<dyn EventSink>) {
        *self.sink.write().unwrap_or_else(PoisonError::into_inner) = Some(sink);
    }

    fn control<'a>(&'a self, command: ControlCommand) -> BoxFuture<'a, Result<(), BrokerError>> {
        // One process: this node is every node.
        self.deliver(BrokerEvent::Control(command));
        Box::pin(async { Ok(()) })
    }

    fn announce_node<'a>(
        &'a self,
        info: NodeInfo,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        let now = Instant::now();
        let mut nodes = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
        nodes.retain(|_, (_, until)| *until > now);
        nodes.insert(info.node.clone(), (info, now + ttl));
        Box::pin(async { Ok(()) })
    }

    fn nodes<'a>(&'a self) -> BoxFuture<'a, Result<Vec<NodeInfo>, BrokerError>> {
        let now = Instant::now();
        let nodes = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
        let mut list: Vec<NodeInfo> = nodes
            .values()
            .filter(|(_, until)| *until > now)
            .map(|(n, _)| n.clone())
            .collect();
        list.sort_by(|a, b| a.node.cmp(&b.node));
        Box::pin(async move { Ok(list) })
    }

    fn publish<'a>(
        &'a self,
        channel: &'a str,
        data: Bytes,
        opts: PublishOptions,
    ) -> BoxFuture<'a, Result<StreamPosition, BrokerError>> {
        Box::pin(async move { Ok(self.publish_now(channel, data, opts)) })
    }

    fn subscribe<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            self.set_subscribed(channel, true);
            Ok(())
        })
    }

    fn unsubscribe<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            self.set_subscribed(channel, false);
            Ok(())
        })
    }

    fn history<'a>(
        &'a self,
        channel: &'a str,
        filter: HistoryFilter,
    ) -> BoxFuture<'a, Result<HistoryResult, BrokerError>> {
        Box::pin(async move { Ok(self.history_now(channel, filter)) })
    }

    fn remove_history<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            self.remove_history_now(channel);
            Ok(())
        })
    }

    fn add_presence<'a>(
        &'a self,
        channel: &'a str,
        member: ClientInfo,
        ttl: Duration,
        join_leave: bool,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            self.add_presence_now(channel, member, ttl, join_leave);
            Ok(())
        })
    }

    fn remove_presence<'a>(
        &'a self,
        channel: &'a str,
        client: &'a str,
        join_leave: bool,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            self.remove_presence_now(channel, client, join_leave);
            Ok(())
        })
    }

    fn presence<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<HashMap<String, ClientInfo>, BrokerError>> {
        Box::pin(async move { Ok(self.presence_now(channel)) })
    }

    fn presence_stats<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<PresenceStats, BrokerError>> {
        Box::pin(async move { Ok(self.presence_stats_now(channel)) })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tokio::time::advance;

    use super::*;
    use crate::hub::broker::{recover, Recovery};

    /// Records every delivered event.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<BrokerEvent>>);

    impl EventSink for Recorder {
        fn deliver(&self, event: BrokerEvent) {
            lock(&self.0).push(event);
        }
    }

    impl Recorder {
        fn take(&self) -> Vec<BrokerEvent> {
            std::mem::take(&mut *lock(&self.0))
        }

        fn offsets(&self) -> Vec<u64> {
            self.take()
                .into_iter()
                .filter_map(|e| match e {
                    BrokerEvent::Publication { publication, .. } => Some(publication.offset),
                    _ => None,
                })
                .collect()
        }
    }

    fn broker() -> (Arc<MemoryBroker>, Arc<Recorder>) {
        let broker = Arc::new(MemoryBroker::default());
        let recorder = Arc::new(Recorder::default());
        broker.set_sink(Arc::clone(&recorder) as Arc<dyn EventSink>);
        (broker, recorder)
    }

    fn history_opts(size: usize, ttl_secs: u64) -> PublishOptions {
        PublishOptions {
            history_size: size,
            history_ttl: Duration::from_secs(ttl_secs),
            ..PublishOptions::default()
        }
    }

    fn data(n: u64) -> Bytes {
        Bytes::from(format!("{{\"n\":{n}}}"))
    }

    fn member(client: &str, user: &str) -> ClientInfo {
        ClientInfo {
            client: client.to_owned(),
            user: user.to_owned(),
            info: None,
        }
    }

    async fn publish_n(
        b: &MemoryBroker,
        ch: &str,
        n: u64,
        opts: &PublishOptions,
    ) -> StreamPosition {
        let mut last = None;
        for i in 0..n {
            last = Some(b.publish(ch, data(i), opts.clone()).await);
        }
        match last {
            Some(Ok(p)) => p,
            other => panic!("publish failed: {other:?}"),
        }
    }

    async fn history(b: &MemoryBroker, ch: &str, filter: HistoryFilter) -> HistoryResult {
        match b.history(ch, filter).await {
            Ok(h) => h,
            Err(e) => panic!("history: {e}"),
        }
    }

    fn offsets(h: &HistoryResult) -> Vec<u64> {
        h.publications.iter().map(|p| p.offset).collect()
    }

    #[tokio::test]
    async fn offsets_start_at_one_and_are_contiguous() -> Result<(), BrokerError> {
        let (b, _) = broker();
        let before = history(&b, "a", HistoryFilter::default()).await.position;
        assert_eq!(before.offset, 0);
        let mut seen = Vec::new();
        for i in 0..5 {
            seen.push(b.publish("a", data(i), PublishOptions::default()).await?);
        }
        assert_eq!(
            seen.iter().map(|p| p.offset).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        assert!(seen.iter().all(|p| p.epoch == before.epoch));
        // Channels are independent streams with their own epochs.
        let other = b.publish("b", data(0), PublishOptions::default()).await?;
        assert_eq!(other.offset, 1);
        assert_ne!(other.epoch, before.epoch);
        assert_eq!(other.epoch.len(), 12);
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_publishers_get_unique_contiguous_offsets_in_delivery_order() {
        let (b, rec) = broker();
        let Ok(()) = b.subscribe("hot").await else {
            panic!("subscribe")
        };
        let mut tasks = Vec::new();
        for t in 0..16u64 {
            let b = Arc::clone(&b);
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                for i in 0..50 {
                    match b
                        .publish("hot", data(t * 100 + i), history_opts(1000, 60))
                        .await
                    {
                        Ok(p) => got.push(p),
                        Err(e) => panic!("publish: {e}"),
                    }
                }
                got
            }));
        }
        let mut all = Vec::new();
        for task in tasks {
            match task.await {
                Ok(got) => {
                    // Each publisher sees its own offsets increase.
                    assert!(got.windows(2).all(|w| w[0].offset < w[1].offset));
                    all.extend(got);
                }
                Err(e) => panic!("task: {e}"),
            }
        }
        let epoch = all[0].epoch.clone();
        assert!(all.iter().all(|p| p.epoch == epoch));
        let mut offs: Vec<u64> = all.iter().map(|p| p.offset).collect();
        offs.sort_unstable();
        assert_eq!(offs, (1..=800).collect::<Vec<_>>());
        // Delivered in exactly offset order.
        assert_eq!(rec.offsets(), (1..=800).collect::<Vec<_>>());
        let h = history(&b, "hot", HistoryFilter::default()).await;
        assert_eq!(offsets(&h), (1..=800).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn node_registry_entries_lapse_without_announcements() {
        let (b, rec) = broker();
        let info = |node: &str, connections| NodeInfo {
            node: node.into(),
            connections,
            channels: 0,
            subscriptions: 0,
            uptime_seconds: 1,
        };
        b.announce_node(info("n1", 3), Duration::from_secs(15))
            .await
            .unwrap();
        b.announce_node(info("n2", 1), Duration::from_secs(5))
            .await
            .unwrap();
        let names = |v: Vec<NodeInfo>| v.into_iter().map(|n| n.node).collect::<Vec<_>>();
        assert_eq!(names(b.nodes().await.unwrap()), ["n1", "n2"]);
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(names(b.nodes().await.unwrap()), ["n1"]);
        // A new announcement replaces the entry.
        b.announce_node(info("n1", 7), Duration::from_secs(15))
            .await
            .unwrap();
        assert_eq!(b.nodes().await.unwrap()[0].connections, 7);
        // Control commands come back to this (the only) node.
        let cmd = ControlCommand::Disconnect {
            user: "u".into(),
            code: 4503,
            reason: "r".into(),
        };
        b.control(cmd.clone()).await.unwrap();
        assert_eq!(rec.take(), [BrokerEvent::Control(cmd)]);
    }

    #[tokio::test(start_paused = true)]
    async fn history_size_and_ttl_limits() {
        let (b, _) = broker();
        let opts = history_opts(3, 10);
        publish_n(&b, "a", 5, &opts).await;
        let h = history(&b, "a", HistoryFilter::default()).await;
        assert_eq!(offsets(&h), [3, 4, 5]);
        assert_eq!(h.position.offset, 5);
        assert_eq!(&h.publications[0].data[..], b"{\"n\":2}");

        advance(Duration::from_secs(6)).await;
        publish_n(&b, "a", 1, &opts).await; // offset 6, expires at t=16
        advance(Duration::from_secs(5)).await; // t=11: 3..5 expired
        let h = history(&b, "a", HistoryFilter::default()).await;
        assert_eq!(offsets(&h), [6]);
        advance(Duration::from_secs(5)).await; // t=16: all expired
        let h = history(&b, "a", HistoryFilter::default()).await;
        assert!(h.publications.is_empty());
        assert_eq!(h.position.offset, 6, "the offset survives its history");

        // Without history options nothing is kept, the offset still advances.
        let p = publish_n(&b, "a", 1, &PublishOptions::default()).await;
        assert_eq!(p.offset, 7);
        assert!(history(&b, "a", HistoryFilter::default())
            .await
            .publications
            .is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_shorter_ttl_cuts_older_entries() {
        let (b, _) = broker();
        publish_n(&b, "a", 2, &history_opts(10, 100)).await;
        publish_n(&b, "a", 1, &history_opts(10, 5)).await;
        advance(Duration::from_secs(5)).await;
        // No entry outlives its own TTL, and what is left stays contiguous.
        assert!(history(&b, "a", HistoryFilter::default())
            .await
            .publications
            .is_empty());
        publish_n(&b, "a", 1, &history_opts(10, 100)).await;
        assert_eq!(
            offsets(&history(&b, "a", HistoryFilter::default()).await),
            [4]
        );
    }

    #[tokio::test]
    async fn history_filters() {
        let (b, _) = broker();
        let last = publish_n(&b, "a", 10, &history_opts(5, 60)).await; // keeps 6..=10
        let f = |since: Option<u64>, limit: Option<usize>| HistoryFilter {
            since: since.map(|offset| StreamPosition {
                offset,
                epoch: last.epoch.clone(),
            }),
            limit,
        };
        assert_eq!(offsets(&history(&b, "a", f(None, Some(2))).await), [9, 10]);
        assert_eq!(
            offsets(&history(&b, "a", f(None, Some(0))).await),
            [] as [u64; 0]
        );
        assert_eq!(
            offsets(&history(&b, "a", f(Some(7), None)).await),
            [8, 9, 10]
        );
        assert_eq!(
            offsets(&history(&b, "a", f(Some(6), Some(2))).await),
            [7, 8]
        );
        assert_eq!(
            offsets(&history(&b, "a", f(Some(2), Some(2))).await),
            [6, 7]
        );
        assert_eq!(
            offsets(&history(&b, "a", f(Some(10), None)).await),
            [] as [u64; 0]
        );
        assert_eq!(
            offsets(&history(&b, "a", f(Some(50), None)).await),
            [] as [u64; 0]
        );
        let other_epoch = HistoryFilter {
            since: Some(StreamPosition {
                offset: 7,
                epoch: "other".into(),
            }),
            limit: None,
        };
        let h = history(&b, "a", other_epoch).await;
        assert!(h.publications.is_empty());
        assert_eq!(h.position, last);
    }

    #[tokio::test(start_paused = true)]
    async fn recovery_on_the_memory_engine() {
        let (b, _) = broker();
        let opts = history_opts(5, 60);
        let seen = publish_n(&b, "a", 3, &opts).await;
        publish_n(&b, "a", 4, &opts).await; // 4..=7 missed, history 3..=7
        let read = |since: &StreamPosition, limit| {
            let filter = HistoryFilter {
                since: Some(since.clone()),
                limit: Some(limit),
            };
            let b = Arc::clone(&b);
            async move { history(&b, "a", filter).await }
        };

        // Exact gap fill.
        match recover(&seen, read(&seen, 100).await) {
            Recovery::Recovered {
                publications,
                position,
            } => {
                assert_eq!(
                    publications.iter().map(|p| p.offset).collect::<Vec<_>>(),
                    [4, 5, 6, 7]
                );
                assert_eq!(position.offset, 7);
            }
            other => panic!("{other:?}"),
        }
        // More missed than the recovery limit.
        assert!(matches!(
            recover(&seen, read(&seen, 3).await),
            Recovery::NotRecoverable { .. }
        ));
        // The gap fell out of history (size 5: 3..=7 kept, 2 needed).
        let old = StreamPosition {
            offset: 1,
            epoch: seen.epoch.clone(),
        };
        assert!(matches!(
            recover(&old, read(&old, 100).await),
            Recovery::NotRecoverable { .. }
        ));
        // A position from the future.
        let future = StreamPosition {
            offset: 99,
            epoch: seen.epoch.clone(),
        };
        assert!(matches!(
            recover(&future, read(&future, 100).await),
            Recovery::NotRecoverable { .. }
        ));
        // Another epoch.
        let foreign = StreamPosition {
            offset: 3,
            epoch: "nope".into(),
        };
        assert!(matches!(
            recover(&foreign, read(&foreign, 100).await),
            Recovery::NotRecoverable { .. }
        ));
        // After the stream expires (meta TTL) the epoch changes.
        advance(DEFAULT_HISTORY_META_TTL).await;
        let h = read(&seen, 100).await;
        assert_ne!(h.position.epoch, seen.epoch);
        assert_eq!(h.position.offset, 0);
        match recover(&seen, h) {
            Recovery::NotRecoverable { position } => assert_eq!(position.offset, 0),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_stream_lives_while_used_and_at_least_as_long_as_its_history() {
        let broker = MemoryBroker::new(MemoryBrokerConfig {
            history_meta_ttl: Duration::from_secs(10),
            ..MemoryBrokerConfig::default()
        });
        let first = publish_n(&broker, "a", 1, &history_opts(5, 30)).await;
        advance(Duration::from_secs(20)).await;
        // Meta TTL passed but the history (30 s) is alive: same epoch.
        let h = history(&broker, "a", HistoryFilter::default()).await;
        assert_eq!(h.position, first);
        assert_eq!(offsets(&h), [1]);
        // Reads keep it alive too.
        for _ in 0..5 {
            advance(Duration::from_secs(9)).await;
            assert_eq!(
                history(&broker, "a", HistoryFilter::default())
                    .await
                    .position,
                first
            );
        }
        advance(Duration::from_secs(10)).await;
        let h = history(&broker, "a", HistoryFilter::default()).await;
        assert_ne!(h.position.epoch, first.epoch);
        assert_eq!(h.position.offset, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn idempotency_key_returns_the_original_and_delivers_once() -> Result<(), BrokerError> {
        let (b, rec) = broker();
        b.subscribe("a").await?;
        let opts = PublishOptions {
            idempotency_key: Some("k1".into()),
            idempotency_ttl: Duration::from_secs(30),
            ..history_opts(10, 60)
        };
        let first = b.publish("a", data(1), opts.clone()).await?;
        let again = b.publish("a", data(1), opts.clone()).await?;
        assert_eq!(first, again);
        assert_eq!(rec.offsets(), [1]);
        assert_eq!(
            offsets(&history(&b, "a", HistoryFilter::default()).await),
            [1]
        );
        // Keys are per channel.
        assert_eq!(b.publish("b", data(1), opts.clone()).await?.offset, 1);
        // Another key is another publication.
        let other = PublishOptions {
            idempotency_key: Some("k2".into()),
            ..opts.clone()
        };
        assert_eq!(b.publish("a", data(2), other).await?.offset, 2);
        // After the TTL the key is forgotten.
        advance(Duration::from_secs(30)).await;
        assert_eq!(b.publish("a", data(1), opts).await?.offset, 3);
        assert_eq!(rec.offsets(), [2, 3]);
        Ok(())
    }

    #[tokio::test]
    async fn subscription_gates_delivery() -> Result<(), BrokerError> {
        let (b, rec) = broker();
        b.publish("a", data(1), PublishOptions::default()).await?;
        assert!(rec.take().is_empty(), "not subscribed yet");
        b.subscribe("a").await?;
        b.subscribe("a").await?; // idempotent
        let tags = BTreeMap::from([("k".to_owned(), "v".to_owned())]);
        let opts = PublishOptions {
            info: Some(member("c1", "u1")),
            tags: tags.clone(),
            ..PublishOptions::default()
        };
        let pos = b.publish("a", data(2), opts).await?;
        b.publish("other", data(1), PublishOptions::default())
            .await?;
        let events = rec.take();
        assert_eq!(
            events,
            [BrokerEvent::Publication {
                channel: "a".into(),
                publication: Publication {
                    offset: 2,
                    data: data(2),
                    info: Some(member("c1", "u1")),
                    tags,
                    audience: Default::default(),
                },
                epoch: pos.epoch,
            }]
        );
        b.unsubscribe("a").await?;
        b.publish("a", data(3), PublishOptions::default()).await?;
        assert!(rec.take().is_empty(), "unsubscribed");
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn presence_add_remove_expire_and_stats() -> Result<(), BrokerError> {
        let (b, _) = broker();
        let ttl = Duration::from_secs(10);
        b.add_presence("a", member("c1", "u1"), ttl, false).await?;
        b.add_presence("a", member("c2", "u1"), ttl, false).await?;
        b.add_presence("a", member("c3", ""), ttl, false).await?;
        b.add_presence("a", member("c4", ""), ttl, false).await?;
        let p = b.presence("a").await?;
        assert_eq!(p.len(), 4);
        assert_eq!(p.get("c2"), Some(&member("c2", "u1")));
        assert_eq!(
            b.presence_stats("a").await?,
            PresenceStats {
                clients: 4,
                users: 2
            }
        );
        assert!(b.presence("empty").await?.is_empty());
        assert_eq!(b.presence_stats("empty").await?, PresenceStats::default());

        b.remove_presence("a", "c4", false).await?;
        b.remove_presence("a", "nobody", false).await?;
        assert_eq!(
            b.presence_stats("a").await?,
            PresenceStats {
                clients: 3,
                users: 2
            }
        );

        // c1 refreshes; the others expire.
        advance(Duration::from_secs(6)).await;
        b.add_presence("a", member("c1", "u1"), ttl, false).await?;
        advance(Duration::from_secs(5)).await;
        let p = b.presence("a").await?;
        assert_eq!(p.keys().collect::<Vec<_>>(), ["c1"]);
        assert_eq!(
            b.presence_stats("a").await?,
            PresenceStats {
                clients: 1,
                users: 1
            }
        );
        advance(Duration::from_secs(5)).await;
        assert!(b.presence("a").await?.is_empty());
        b.sweep();
        assert_eq!(
            b.channel_count(),
            0,
            "expired presence leaves nothing behind"
        );
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn join_and_leave_events() -> Result<(), BrokerError> {
        let (b, rec) = broker();
        let ttl = Duration::from_secs(10);
        b.subscribe("a").await?;
        b.add_presence("a", member("c1", "u1"), ttl, true).await?;
        b.add_presence("a", member("c1", "u1"), ttl, true).await?; // refresh: no join
        b.add_presence("a", member("c2", "u2"), ttl, false).await?; // events off
        b.remove_presence("a", "c1", true).await?;
        b.remove_presence("a", "c1", true).await?; // gone already: no leave
        b.remove_presence("a", "c2", false).await?;
        assert_eq!(
            rec.take(),
            [
                BrokerEvent::Join {
                    channel: "a".into(),
                    member: member("c1", "u1"),
                },
                BrokerEvent::Leave {
                    channel: "a".into(),
                    member: member("c1", "u1"),
                },
            ]
        );
        // An expired entry added again is a new join; expiry itself is silent.
        b.add_presence("a", member("c3", "u3"), ttl, true).await?;
        advance(ttl).await;
        b.add_presence("a", member("c3", "u3"), ttl, true).await?;
        assert_eq!(rec.take().len(), 2);
        // A user's second client is neither a join nor, while the first
        // stays, a leave; anonymous clients each count.
        b.add_presence("a", member("t1", "u9"), ttl, true).await?;
        b.add_presence("a", member("t2", "u9"), ttl, true).await?;
        b.remove_presence("a", "t1", true).await?;
        b.add_presence("a", member("x1", ""), ttl, true).await?;
        b.add_presence("a", member("x2", ""), ttl, true).await?;
        assert_eq!(
            rec.take(),
            [
                BrokerEvent::Join {
                    channel: "a".into(),
                    member: member("t1", "u9"),
                },
                BrokerEvent::Join {
                    channel: "a".into(),
                    member: member("x1", ""),
                },
                BrokerEvent::Join {
                    channel: "a".into(),
                    member: member("x2", ""),
                },
            ]
        );
        b.remove_presence("a", "t2", true).await?;
        assert_eq!(
            rec.take(),
            [BrokerEvent::Leave {
                channel: "a".into(),
                member: member("t2", "u9"),
            }]
        );
        // Not subscribed: no events.
        b.add_presence("quiet", member("c1", "u1"), ttl, true)
            .await?;
        b.remove_presence("quiet", "c1", true).await?;
        assert!(rec.take().is_empty());
        Ok(())
    }

    #[tokio::test]
    async fn remove_history_keeps_the_position() -> Result<(), BrokerError> {
        let (b, _) = broker();
        let seen = b.publish("a", data(1), history_opts(10, 60)).await?;
        let last = publish_n(&b, "a", 2, &history_opts(10, 60)).await;
        b.remove_history("a").await?;
        let h = history(
            &b,
            "a",
            HistoryFilter {
                since: Some(seen.clone()),
                limit: None,
            },
        )
        .await;
        assert_eq!(h.position, last);
        assert!(matches!(recover(&seen, h), Recovery::NotRecoverable { .. }));
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn idle_channels_are_removed() -> Result<(), BrokerError> {
        let b = MemoryBroker::new(MemoryBrokerConfig {
            history_meta_ttl: Duration::from_secs(10),
            sweep_interval: Duration::from_secs(1),
        });
        b.subscribe("a").await?;
        b.unsubscribe("a").await?;
        assert_eq!(b.channel_count(), 0);
        for i in 0..100 {
            b.publish(&format!("ch{i}"), data(i), PublishOptions::default())
                .await?;
        }
        assert_eq!(b.channel_count(), 100);
        advance(Duration::from_secs(11)).await;
        b.sweep();
        assert_eq!(b.channel_count(), 0);
        Ok(())
    }

    #[test]
    fn epochs_differ() {
        let epochs: HashSet<String> = (0..1000).map(|_| new_epoch()).collect();
        assert_eq!(epochs.len(), 1000);
        assert!(epochs.iter().all(|e| e.len() == 12 && e.is_ascii()));
    }

    #[test]
    fn is_a_dyn_broker() {
        let b: Arc<dyn Broker> = Arc::new(MemoryBroker::default());
        b.set_sink(Arc::new(|_: BrokerEvent| {}));
    }
}
