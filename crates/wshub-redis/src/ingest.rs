//! The Redis Streams ingest bridge: a consumer-group reader that publishes
//! each stream entry to a hub channel with [`Hub::ingest`].
//!
//! Every node runs one consumer, named after its node id, in the same
//! consumer group, so each entry is handed to one node. The consumer is one
//! tokio task running a sequential loop:
//!
//! 1. **Read** new entries with `XREADGROUP GROUP {group} {node} COUNT
//!    {batch} BLOCK … STREAMS {stream} >` and keep them, in stream order, in a
//!    local queue. Entries of one read are published one after the other, so
//!    a channel's entries reach clients in stream order while one node
//!    consumes.
//! 2. **Publish** the head of the queue: parse it ([`parse_entry`]), call
//!    [`Hub::ingest`], and `XACK` only after it returned `Ok` (published, or
//!    a duplicate of an earlier delivery with the same idempotency key).
//!    * [`IngestError::Reject`] (or an entry that does not parse): `XADD`
//!      the entry's fields plus `error`, `stream`, `id` and `deliveries` to
//!      the dead-letter stream, then `XACK`.
//!    * [`IngestError::Retry`] (the hub's broker is unavailable): keep the
//!      entry and everything after it, wait (100 ms doubling to 5 s, with
//!      jitter) and publish it again. Retries by the same node are not
//!      deliveries: the entry stays in this node's pending list, and other
//!      nodes do not take it over while its owner is alive (see below).
//!      Such an entry holds back this node's later ones (they keep their
//!      order); since a temporary failure means the broker is unavailable,
//!      they would fail alike. An outage therefore never sends entries to
//!      the dead-letter stream.
//! 3. **Reclaim** every `claim_idle / 2` (at most 15 s): `XAUTOCLAIM … JUSTID`
//!    takes over entries idle for `claim_idle` in any consumer's pending list
//!    (a node that died or lost its connection), `XPENDING` tells how often
//!    each was delivered, and `XCLAIM` fetches them (counting this
//!    delivery). An entry already delivered `max_deliveries` times goes to the
//!    dead-letter stream with the reason `delivered N times without being
//!    acknowledged`; the others are published as in step 2. Consumers of the
//!    group idle for [`RedisIngestConfig::consumer_expiry`] with nothing
//!    pending (nodes that stopped) are removed with `XGROUP DELCONSUMER` (in
//!    a script, so the check and the removal are one step).
//!
//! While it holds entries — publishing, waiting to retry, or working
//! through a batch — the node refreshes its claim on them every
//! `claim_idle / 3` with `XCLAIM … JUSTID` (which resets their idle time
//! without counting a delivery), so only entries of a node that stopped
//! working reach `claim_idle` and are taken over.
//!
//! Every outcome is counted in the hub's `wshub_ingest_entries_total{outcome}`
//! and in [`RedisIngest::stats`].
//!
//! Redis errors (the queue's Redis) are logged and retried with backoff; a
//! group that disappeared (the stream was deleted) is created again. The
//! loop ends when [`RedisIngest::stop`] is called or the handle is dropped;
//! entries it held unacknowledged are taken over by another node after
//! `claim_idle`.
//!
//! # Entry format
//!
//! Either the fields of a `POST /api/publish` body, one stream field each —
//! `channel` (required), `data` (required, JSON text), and optionally
//! `idempotency_key`, `tags` (a JSON object of strings), `except_client`
//! and `filter` (a JSON object of string arrays) — or a single field
//! `payload` holding the whole `POST /api/publish` body as JSON. Any other
//! field, a repeated field, or a mix of the two forms is rejected, like the
//! API rejects unknown fields.
//!
//! # Idempotency
//!
//! An entry without an `idempotency_key` gets `{stream}:{entry id}`: the id
//! stays the same across redeliveries, so an entry whose publish succeeded
//! but whose `XACK` was lost (the node died in between) is not delivered to
//! clients twice when another node takes it over within the idempotency
//! window (5 minutes). For that key to fit the 128-byte limit, the stream
//! name may be at most [`MAX_STREAM_NAME`] bytes.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::StreamPendingCountReply;
use redis::{Client, RedisError, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use wshub::hub::broker::TagFilter;
use wshub::hub::config::IngestConfig;
use wshub::hub::metrics::IngestOutcome;
use wshub::hub::queue::{IngestError, IngestMessage};
use wshub::hub::Hub;

/// Longest [`RedisIngestConfig::stream`] name, in bytes, so that the default
/// idempotency key `{stream}:{entry id}` (an id is at most 41 bytes) stays
/// within the hub's 128-byte limit.
pub const MAX_STREAM_NAME: usize = 86;

/// The fields of an entry in the field-per-option form.
const FIELDS: [&str; 6] = [
    "channel",
    "data",
    "idempotency_key",
    "tags",
    "except_client",
    "filter",
];

/// Why a queue bridge could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The settings cannot work (an invalid URL, an over-long stream name).
    #[error("invalid queue settings: {0}")]
    Config(String),
    /// Redis could not be reached or refused the setup commands.
    #[error("redis is unavailable: {0}")]
    Unavailable(String),
}

/// Settings of a [`RedisIngest`] consumer.
///
/// [`RedisIngestConfig::new`] takes the `[ingest]` section; the other fields
/// have defaults suited to production and are shortened by tests.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisIngestConfig {
    /// The Redis URL. Default `redis://127.0.0.1:6379`.
    pub url: String,
    /// The stream key entries are read from. Default `wshub-ingest`.
    pub stream: String,
    /// The consumer group all nodes share. Created (with the stream, if
    /// missing) at the start of the stream — id `0` — so entries added before
    /// the first node ever started are published too. Default `wshub`.
    pub group: String,
    /// The stream key rejected entries are appended to. Default
    /// `wshub-ingest-dead`.
    pub dead_letter: String,
    /// An entry reclaimed after this many deliveries is dead-lettered.
    /// Default 5.
    pub max_deliveries: u32,
    /// How long an entry may sit unacknowledged with a consumer before
    /// another takes it over. Default 30 s.
    pub claim_idle: Duration,
    /// Entries per `XREADGROUP` and per `XAUTOCLAIM`. Default 64.
    pub batch: usize,
    /// The longest `XREADGROUP … BLOCK`; also capped by the reclaim
    /// interval so reclaiming is not delayed. Default 2 s.
    pub block: Duration,
    /// The first wait before publishing an entry again after a temporary
    /// failure, or before the next Redis command after a Redis error; it
    /// doubles per failure, with ±25 % jitter. Default 100 ms.
    pub retry_min_delay: Duration,
    /// The longest such wait. Default 5 s.
    pub retry_max_delay: Duration,
    /// Consumers of the group idle this long with no pending entries are
    /// deleted (they belonged to nodes that stopped). Never less than
    /// twice `claim_idle`. Default 1 hour.
    pub consumer_expiry: Duration,
    /// How long connecting may take. Default 5 s.
    pub connect_timeout: Duration,
    /// How long a command (other than the blocking read) may take.
    /// Default 5 s.
    pub command_timeout: Duration,
}

impl Default for RedisIngestConfig {
    fn default() -> Self {
        RedisIngestConfig::new("redis://127.0.0.1:6379", &IngestConfig::default())
    }
}

impl RedisIngestConfig {
    /// The settings of the `[ingest]` section with Redis at `url` (the
    /// caller resolves an empty `ingest.url` to `broker.url`).
    pub fn new(url: impl Into<String>, ingest: &IngestConfig) -> RedisIngestConfig {
        RedisIngestConfig {
            url: url.into(),
            stream: ingest.stream.clone(),
            group: ingest.group.clone(),
            dead_letter: ingest.dead_letter.clone(),
            max_deliveries: ingest.max_deliveries,
            claim_idle: ingest.claim_idle,
            batch: ingest.batch,
            block: Duration::from_secs(2),
            retry_min_delay: Duration::from_millis(100),
            retry_max_delay: Duration::from_secs(5),
            consumer_expiry: Duration::from_secs(60 * 60),
            connect_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(5),
        }
    }

    fn check(&self) -> Result<(), QueueError> {
        if self.stream.is_empty() || self.stream.len() > MAX_STREAM_NAME {
            return Err(QueueError::Config(format!(
                "ingest.stream must be 1 to {MAX_STREAM_NAME} bytes (the default idempotency key is `stream:id`)"
            )));
        }
        if self.group.is_empty() || self.dead_letter.is_empty() {
            return Err(QueueError::Config(
                "ingest.group and ingest.dead_letter must not be empty".into(),
            ));
        }
        if self.dead_letter == self.stream {
            return Err(QueueError::Config(
                "ingest.dead_letter must differ from ingest.stream".into(),
            ));
        }
        if self.batch == 0 || self.max_deliveries == 0 || self.claim_idle.is_zero() {
            return Err(QueueError::Config(
                "ingest.batch, ingest.max_deliveries and ingest.claim_idle must be above 0".into(),
            ));
        }
        Ok(())
    }

    /// How often pending lists are checked for entries to take over.
    fn reclaim_interval(&self) -> Duration {
        (self.claim_idle / 2).clamp(Duration::from_millis(10), Duration::from_secs(15))
    }

    /// The `BLOCK` of a read, in milliseconds (never 0, which blocks forever).
    fn block_ms(&self) -> u64 {
        millis(self.block.min(self.reclaim_interval())).max(1)
    }
}

/// What a [`RedisIngest`] consumer did so far (see [`RedisIngest::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct IngestStats {
    /// Entries published and acknowledged (a redelivered entry that the
    /// idempotency key showed to be a duplicate counts too: it was
    /// acknowledged without being delivered again).
    pub published: u64,
    /// Publish attempts that failed temporarily and will be retried.
    pub retried: u64,
    /// Entries appended to the dead-letter stream and acknowledged.
    pub dead_lettered: u64,
    /// Entries taken over from another consumer's pending list.
    pub reclaimed: u64,
    /// Redis errors on the queue's connection.
    pub redis_errors: u64,
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    reclaimed: AtomicU64,
    redis_errors: AtomicU64,
}

impl Counters {
    fn bump(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn snapshot(&self) -> IngestStats {
        IngestStats {
            published: self.published.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            reclaimed: self.reclaimed.load(Ordering::Relaxed),
            redis_errors: self.redis_errors.load(Ordering::Relaxed),
        }
    }
}

/// A running ingest consumer (see the [module docs](self)).
///
/// Dropping the handle stops the consumer too, without waiting for it.
#[derive(Debug)]
pub struct RedisIngest {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    counters: Arc<CountersDebug>,
    consumer: String,
}

/// [`Counters`] with a `Debug` that shows the numbers.
#[derive(Default)]
struct CountersDebug(Counters);

impl std::fmt::Debug for CountersDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.snapshot().fmt(f)
    }
}

impl RedisIngest {
    /// Connects to Redis, creates the consumer group if it does not exist
    /// (`XGROUP CREATE … 0 MKSTREAM`) and starts consuming on behalf of
    /// `hub`, as the consumer named [`Hub::node_id`].
    ///
    /// Fails when the settings are invalid or Redis cannot be reached now;
    /// later outages are survived by retrying.
    pub async fn start(hub: Hub, config: RedisIngestConfig) -> Result<RedisIngest, QueueError> {
        config.check()?;
        let client = Client::open(config.url.as_str())
            .map_err(|e| QueueError::Config(format!("invalid redis url: {e}")))?;
        let block = Duration::from_millis(config.block_ms());
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(config.connect_timeout)
            .set_response_timeout(config.command_timeout + block)
            .set_number_of_retries(1);
        let mut conn = tokio::time::timeout(
            config.connect_timeout,
            client.get_connection_manager_with_config(manager_config),
        )
        .await
        .map_err(|_| QueueError::Unavailable("connection timed out".into()))?
        .map_err(|e| QueueError::Unavailable(e.to_string()))?;
        let consumer = hub.node_id().to_owned();
        create_group(&mut conn, &config)
            .await
            .map_err(|e| QueueError::Unavailable(e.to_string()))?;
        create_consumer(&mut conn, &config, &consumer)
            .await
            .map_err(|e| QueueError::Unavailable(e.to_string()))?;
        tracing::info!(
            stream = %config.stream,
            group = %config.group,
            consumer = %consumer,
            dead_letter = %config.dead_letter,
            "ingest: consuming the redis stream"
        );
        let (stop, stopped) = watch::channel(false);
        let counters = Arc::new(CountersDebug::default());
        let worker = Worker {
            hub,
            consumer: consumer.clone(),
            reclaim_every: config.reclaim_interval(),
            config,
            conn,
            held: VecDeque::new(),
            counters: Arc::clone(&counters),
            stopped,
            error_delay: None,
            reclaim_cursor: "0-0".to_owned(),
            last_refresh: Instant::now(),
            next_reclaim: Instant::now(),
            next_cleanup: Instant::now(),
        };
        let task = tokio::spawn(worker.run());
        Ok(RedisIngest {
            stop,
            task: Some(task),
            counters,
            consumer,
        })
    }

    /// The consumer's name in the group (the hub's node id).
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// What the consumer did so far.
    pub fn stats(&self) -> IngestStats {
        self.counters.0.snapshot()
    }

    /// Asks the consumer to stop; it finishes the entry it is publishing
    /// (publish and acknowledge), leaves the rest pending for other nodes,
    /// and ends. Returns once it ended.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "ingest: the consumer task failed");
            }
        }
    }
}

impl Drop for RedisIngest {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// One stream entry this node holds until it is acknowledged.
#[derive(Debug)]
struct Entry {
    id: String,
    fields: Vec<(Vec<u8>, Vec<u8>)>,
    /// Deliveries so far, this one included (`XPENDING`'s count).
    deliveries: u64,
    stage: Stage,
}

#[derive(Debug, Clone, PartialEq)]
enum Stage {
    /// To be published.
    Publish,
    /// To be appended to the dead-letter stream with this reason.
    DeadLetter(String),
    /// Done (published or dead-lettered): only the `XACK` is left.
    Ack { dead: bool },
}

/// What handling the head entry came to.
enum Step {
    /// Acknowledged: take the next one.
    Done,
    /// The hub could not publish it for now.
    Retry(String),
}

struct Worker {
    hub: Hub,
    config: RedisIngestConfig,
    consumer: String,
    conn: ConnectionManager,
    /// Entries read or claimed and not yet acknowledged, in stream order.
    held: VecDeque<Entry>,
    counters: Arc<CountersDebug>,
    stopped: watch::Receiver<bool>,
    /// The current backoff after consecutive failures (Redis errors or
    /// temporary publish failures); `None` after a success.
    error_delay: Option<Duration>,
    reclaim_every: Duration,
    /// When the claims on the held entries were last refreshed (or the
    /// entries received).
    last_refresh: Instant,
    reclaim_cursor: String,
    next_reclaim: Instant,
    next_cleanup: Instant,
}

impl Worker {
    fn counters(&self) -> &Counters {
        &self.counters.0
    }

    async fn run(mut self) {
        let mut retrying_since: Option<Instant> = None;
        while !*self.stopped.borrow() {
            let result = if self.held.is_empty() {
                if Instant::now() >= self.next_reclaim {
                    self.reclaim().await
                } else {
                    self.read_new().await
                }
            } else {
                match self.process_head().await {
                    Ok(Step::Done) => {
                        let entry = self.held.pop_front();
                        if let Some(Entry {
                            stage: Stage::Ack { dead },
                            ..
                        }) = entry
                        {
                            let (counter, outcome) = if dead {
                                (&self.counters().dead_lettered, IngestOutcome::DeadLettered)
                            } else {
                                (&self.counters().published, IngestOutcome::Published)
                            };
                            Counters::bump(counter, 1);
                            self.hub.metrics().ingest_entries(outcome, 1);
                        }
                        if let Some(since) = retrying_since.take() {
                            tracing::info!(after = ?since.elapsed(), "ingest: publishing works again");
                        }
                        self.error_delay = None;
                        Ok(())
                    }
                    Ok(Step::Retry(reason)) => {
                        Counters::bump(&self.counters().retried, 1);
                        self.hub.metrics().ingest_entries(IngestOutcome::Retried, 1);
                        if retrying_since.is_none() {
                            retrying_since = Some(Instant::now());
                            tracing::warn!(id = %self.held.front().map_or("", |e| e.id.as_str()), %reason,
                                "ingest: publishing failed for now; the entry stays pending and is retried");
                        } else {
                            tracing::debug!(%reason, "ingest: publishing still fails");
                        }
                        self.backoff().await;
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            };
            if let Err(e) = result {
                self.redis_failed(e).await;
            }
        }
        if !self.held.is_empty() {
            tracing::info!(
                pending = self.held.len(),
                "ingest: consumer stopped; its unacknowledged entries go to another node after claim_idle"
            );
        } else {
            tracing::info!("ingest: consumer stopped");
        }
    }

    /// How often the claims on held entries are refreshed: three times per
    /// `claim_idle`, so another node never sees them idle that long.
    fn refresh_every(&self) -> Duration {
        (self.config.claim_idle / 3).max(Duration::from_millis(1))
    }

    /// Runs `fut` while refreshing the claims on the held entries on time
    /// (a publish or a backoff may outlast `claim_idle`).
    async fn refreshing<F: std::future::Future>(&mut self, fut: F) -> F::Output {
        let every = self.refresh_every();
        let ids: Vec<String> = self.held.iter().map(|e| e.id.clone()).collect();
        tokio::pin!(fut);
        loop {
            let due = self.last_refresh + every;
            tokio::select! {
                out = &mut fut => return out,
                _ = tokio::time::sleep_until(due) => {
                    self.last_refresh = Instant::now();
                    if let Err(e) = refresh_claims(&mut self.conn, &self.config, &self.consumer, &ids).await {
                        tracing::debug!(error = %e, "ingest: refreshing claims failed");
                    }
                }
            }
        }
    }

    /// Moves the head entry on: publish (or dead-letter), then `XACK`. A
    /// Redis error leaves it at the stage it reached, so nothing is
    /// published or dead-lettered twice by this node.
    async fn process_head(&mut self) -> Result<Step, RedisError> {
        let Some(head) = self.held.front() else {
            return Ok(Step::Done);
        };
        if head.stage == Stage::Publish {
            let stage = match parse_entry(&self.config.stream, &head.id, &head.fields) {
                Err(reason) => Stage::DeadLetter(reason),
                Ok(msg) => {
                    let hub = self.hub.clone();
                    match self.refreshing(hub.ingest(msg)).await {
                        Ok(_) => Stage::Ack { dead: false },
                        Err(IngestError::Retry(reason)) => return Ok(Step::Retry(reason)),
                        Err(IngestError::Reject(reason)) => Stage::DeadLetter(reason),
                        Err(other) => Stage::DeadLetter(other.to_string()),
                    }
                }
            };
            if let Some(head) = self.held.front_mut() {
                head.stage = stage;
            }
        }
        let config = &self.config;
        let Some(entry) = self.held.front_mut() else {
            return Ok(Step::Done);
        };
        if let Stage::DeadLetter(reason) = &entry.stage {
            let mut cmd = redis::cmd("XADD");
            cmd.arg(&config.dead_letter).arg("*");
            for (name, value) in &entry.fields {
                cmd.arg(name.as_slice()).arg(value.as_slice());
            }
            cmd.arg("error")
                .arg(reason)
                .arg("stream")
                .arg(&config.stream)
                .arg("id")
                .arg(&entry.id)
                .arg("deliveries")
                .arg(entry.deliveries);
            let _: Value = cmd.query_async(&mut self.conn).await?;
            tracing::warn!(id = %entry.id, stream = %config.stream, dead_letter = %config.dead_letter,
                %reason, "ingest: entry moved to the dead-letter stream");
            entry.stage = Stage::Ack { dead: true };
        }
        let _: Value = redis::cmd("XACK")
            .arg(&config.stream)
            .arg(&config.group)
            .arg(&entry.id)
            .query_async(&mut self.conn)
            .await?;
        Ok(Step::Done)
    }

    /// Waits the current backoff (or until stopped) and doubles it.
    async fn backoff(&mut self) {
        let delay = match self.error_delay {
            None => self.config.retry_min_delay,
            Some(d) => (d * 2).min(self.config.retry_max_delay),
        };
        self.error_delay = Some(delay);
        let jittered = delay.mul_f64(0.75 + fastrand::f64() * 0.5);
        let mut stopped = self.stopped.clone();
        let wait = async move {
            tokio::select! {
                _ = tokio::time::sleep(jittered) => {}
                _ = stopped.wait_for(|s| *s) => {}
            }
        };
        self.refreshing(wait).await;
    }

    async fn redis_failed(&mut self, e: RedisError) {
        Counters::bump(&self.counters().redis_errors, 1);
        if e.code() == Some("NOGROUP") {
            tracing::warn!(stream = %self.config.stream, group = %self.config.group,
                "ingest: the consumer group is gone (stream deleted?); creating it again");
            let created = match create_group(&mut self.conn, &self.config).await {
                Ok(()) => create_consumer(&mut self.conn, &self.config, &self.consumer).await,
                Err(e) => Err(e),
            };
            match created {
                Ok(()) => return,
                Err(e) => tracing::warn!(error = %e, "ingest: creating the consumer group failed"),
            }
        } else {
            tracing::warn!(error = %e, "ingest: redis command failed; retrying with backoff");
        }
        self.backoff().await;
    }

    /// Reads new entries (`>`), blocking up to the configured time.
    async fn read_new(&mut self) -> Result<(), RedisError> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.config.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(self.config.batch)
            .arg("BLOCK")
            .arg(self.config.block_ms())
            .arg("STREAMS")
            .arg(&self.config.stream)
            .arg(">");
        let mut stopped = self.stopped.clone();
        let reply: Value = tokio::select! {
            r = cmd.query_async(&mut self.conn) => r?,
            // Dropping the read is safe on a multiplexed connection; an
            // entry it delivered meanwhile stays pending for another node.
            _ = stopped.wait_for(|s| *s) => return Ok(()),
        };
        self.error_delay = None;
        self.last_refresh = Instant::now();
        for (id, fields) in parse_read_reply(&reply) {
            match fields {
                Some(fields) => self.held.push_back(Entry {
                    id,
                    fields,
                    deliveries: 1,
                    stage: Stage::Publish,
                }),
                None => tracing::warn!(%id, "ingest: a delivered entry has no fields; skipped"),
            }
        }
        Ok(())
    }

    /// Takes over entries idle for `claim_idle` in any consumer's pending
    /// list, and removes long-idle consumers.
    async fn reclaim(&mut self) -> Result<(), RedisError> {
        let c = &self.config;
        let reply: Value = redis::cmd("XAUTOCLAIM")
            .arg(&c.stream)
            .arg(&c.group)
            .arg(&self.consumer)
            .arg(millis(c.claim_idle))
            .arg(&self.reclaim_cursor)
            .arg("COUNT")
            .arg(c.batch)
            .arg("JUSTID")
            .query_async(&mut self.conn)
            .await?;
        let (next, ids, deleted) = parse_autoclaim_reply(&reply);
        for id in &deleted {
            tracing::warn!(%id, stream = %c.stream,
                "ingest: a pending entry was deleted from the stream before it was acknowledged; dropped");
        }
        if let (Some(first), Some(last)) = (ids.first(), ids.last()) {
            self.last_refresh = Instant::now();
            let pending: StreamPendingCountReply = redis::cmd("XPENDING")
                .arg(&c.stream)
                .arg(&c.group)
                .arg(first)
                .arg(last)
                .arg(ids.len())
                .arg(&self.consumer)
                .query_async(&mut self.conn)
                .await?;
            let counts: HashMap<&str, u64> = pending
                .ids
                .iter()
                .map(|p| (p.id.as_str(), to_u64(p.times_delivered)))
                .collect();
            let claimed: Value = redis::cmd("XCLAIM")
                .arg(&c.stream)
                .arg(&c.group)
                .arg(&self.consumer)
                .arg(0)
                .arg(&ids)
                .query_async(&mut self.conn)
                .await?;
            for (id, fields) in parse_entries(&claimed) {
                let Some(fields) = fields else {
                    tracing::warn!(%id, "ingest: a reclaimed entry was deleted meanwhile; skipped");
                    continue;
                };
                let before = counts.get(id.as_str()).copied().unwrap_or(1);
                let stage = if before >= u64::from(c.max_deliveries) {
                    Stage::DeadLetter(format!(
                        "delivered {before} times without being acknowledged"
                    ))
                } else {
                    Stage::Publish
                };
                tracing::info!(%id, deliveries = before, "ingest: took over an idle entry");
                Counters::bump(&self.counters.0.reclaimed, 1);
                self.hub
                    .metrics()
                    .ingest_entries(IngestOutcome::Reclaimed, 1);
                self.held.push_back(Entry {
                    id,
                    fields,
                    deliveries: if matches!(stage, Stage::Publish) {
                        before + 1
                    } else {
                        before
                    },
                    stage,
                });
            }
        }
        // Continue right away while the pending lists have more to scan.
        if next == "0-0" || next.is_empty() {
            self.reclaim_cursor = "0-0".to_owned();
            self.next_reclaim = Instant::now() + self.reclaim_every;
        } else {
            self.reclaim_cursor = next;
        }
        if Instant::now() >= self.next_cleanup {
            self.cleanup_consumers().await?;
        }
        self.error_delay = None;
        Ok(())
    }

    /// Deletes consumers idle for `consumer_expiry` with nothing pending.
    async fn cleanup_consumers(&mut self) -> Result<(), RedisError> {
        let expiry = self.config.consumer_expiry.max(self.config.claim_idle * 2);
        self.next_cleanup = Instant::now() + (expiry / 4).max(Duration::from_millis(100));
        let removed: Vec<String> = redis::Script::new(DELETE_IDLE_CONSUMERS)
            .key(&self.config.stream)
            .arg(&self.config.group)
            .arg(&self.consumer)
            .arg(millis(expiry))
            .invoke_async(&mut self.conn)
            .await?;
        for name in removed {
            tracing::info!(consumer = %name, ?expiry,
                "ingest: removed an idle consumer with nothing pending (a stopped node)");
        }
        Ok(())
    }
}

/// Resets the idle time of `ids` (held by `consumer`) without counting a
/// delivery (`XCLAIM … JUSTID`), so other nodes do not take them over while
/// this one works on them.
async fn refresh_claims(
    conn: &mut ConnectionManager,
    config: &RedisIngestConfig,
    consumer: &str,
    ids: &[String],
) -> Result<(), RedisError> {
    if ids.is_empty() {
        return Ok(());
    }
    let _: Value = redis::cmd("XCLAIM")
        .arg(&config.stream)
        .arg(&config.group)
        .arg(consumer)
        .arg(0)
        .arg(ids)
        .arg("JUSTID")
        .query_async(conn)
        .await?;
    Ok(())
}

/// `XGROUP CREATE {stream} {group} 0 MKSTREAM`, where "already exists" is
/// success.
async fn create_group(
    conn: &mut ConnectionManager,
    config: &RedisIngestConfig,
) -> Result<(), RedisError> {
    let created: Result<Value, RedisError> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&config.stream)
        .arg(&config.group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match created {
        Ok(_) => {
            tracing::info!(stream = %config.stream, group = %config.group,
                "ingest: created the consumer group (from the start of the stream)");
            Ok(())
        }
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        Err(e) => Err(e),
    }
}

/// `XGROUP CREATECONSUMER`, so a node shows in `XINFO CONSUMERS` from its
/// start (Redis creates a consumer only when it first receives an entry).
async fn create_consumer(
    conn: &mut ConnectionManager,
    config: &RedisIngestConfig,
    consumer: &str,
) -> Result<(), RedisError> {
    let _: Value = redis::cmd("XGROUP")
        .arg("CREATECONSUMER")
        .arg(&config.stream)
        .arg(&config.group)
        .arg(consumer)
        .query_async(conn)
        .await?;
    Ok(())
}

/// Deletes the group's consumers (other than ARGV[2]) that have nothing
/// pending and were idle at least ARGV[3] ms, and returns their names.
/// A script, so that no entry can reach a consumer between the check and
/// `XGROUP DELCONSUMER` (which drops the consumer's pending entries).
/// KEYS: the stream. ARGV: group, this consumer, idle threshold in ms.
const DELETE_IDLE_CONSUMERS: &str = r"
local removed = {}
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for i = 1, #c, 2 do info[c[i]] = c[i + 1] end
  if info['name'] ~= ARGV[2] and tonumber(info['pending']) == 0
      and tonumber(info['idle']) >= tonumber(ARGV[3]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    removed[#removed + 1] = info['name']
  end
end
return removed
";

/// Turns a stream entry into a publication, or says why it cannot be one.
///
/// The entry is either the fields `channel`, `data`, `idempotency_key`,
/// `tags`, `except_client`, `filter` (see the [module docs](self)) or the
/// single field `payload`. Without an idempotency key of its own, the
/// entry's is `{stream}:{id}`.
pub fn parse_entry(
    stream: &str,
    id: &str,
    fields: &[(Vec<u8>, Vec<u8>)],
) -> Result<IngestMessage, String> {
    let mut msg = match fields {
        [(name, payload)] if name.as_slice() == b"payload" => IngestMessage::from_json(payload)
            .map_err(|e| match e {
                IngestError::Reject(reason) => format!("`payload`: {reason}"),
                other => format!("`payload`: {other}"),
            })?,
        _ => from_fields(fields)?,
    };
    if msg.idempotency_key.is_none() {
        msg.idempotency_key = Some(format!("{stream}:{id}"));
    }
    Ok(msg)
}

fn from_fields(fields: &[(Vec<u8>, Vec<u8>)]) -> Result<IngestMessage, String> {
    let mut found: [Option<&[u8]>; FIELDS.len()] = [None; FIELDS.len()];
    for (name, value) in fields {
        let name = String::from_utf8_lossy(name);
        if name == "payload" {
            return Err(
                "`payload` must be the only field (or use channel, data, … fields instead)".into(),
            );
        }
        let Some(i) = FIELDS.iter().position(|f| *f == name) else {
            return Err(format!(
                "unknown field `{}` (expected channel, data, idempotency_key, tags, except_client, filter, or a single payload)",
                name.chars().take(64).collect::<String>()
            ));
        };
        if found[i].replace(value).is_some() {
            return Err(format!("field `{name}` appears twice"));
        }
    }
    let [channel, data, key, tags, except, filter] = found;
    let text = |name: &str, v: &[u8]| -> Result<String, String> {
        String::from_utf8(v.to_vec()).map_err(|_| format!("`{name}` is not UTF-8"))
    };
    let channel = text(
        "channel",
        channel.ok_or("missing field `channel` (or a single `payload` field)")?,
    )?;
    let data = data.ok_or("missing field `data`")?;
    let mut msg = IngestMessage::new(channel, data.to_vec());
    if let Some(v) = key {
        msg.idempotency_key = Some(text("idempotency_key", v)?);
    }
    if let Some(v) = except {
        msg.except_client = Some(text("except_client", v)?);
    }
    if let Some(v) = tags {
        msg.tags = serde_json::from_slice(v)
            .map_err(|e| format!("`tags` is not a JSON object of strings: {e}"))?;
    }
    if let Some(v) = filter {
        let f: TagFilter = serde_json::from_slice(v)
            .map_err(|e| format!("`filter` is not a JSON object of string arrays: {e}"))?;
        msg.filter = Some(f);
    }
    Ok(msg)
}

/// An entry as Redis returned it: its id and its fields (`None` for an
/// entry deleted from the stream while pending).
type RawEntry = (String, Option<Vec<(Vec<u8>, Vec<u8>)>>);

fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn string(v: &Value) -> Option<String> {
    bytes(v).map(|b| String::from_utf8_lossy(b).into_owned())
}

/// `[[id, [field, value, …]], …]` (an `XCLAIM` reply, or one stream's part
/// of an `XREADGROUP` reply).
fn parse_entries(v: &Value) -> Vec<RawEntry> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let Value::Array(pair) = item else {
                return None;
            };
            let id = string(pair.first()?)?;
            let fields = match pair.get(1) {
                Some(Value::Array(kv)) => Some(
                    kv.chunks_exact(2)
                        .filter_map(|c| Some((bytes(&c[0])?.to_vec(), bytes(&c[1])?.to_vec())))
                        .collect(),
                ),
                Some(Value::Map(kv)) => Some(
                    kv.iter()
                        .filter_map(|(k, v)| Some((bytes(k)?.to_vec(), bytes(v)?.to_vec())))
                        .collect(),
                ),
                _ => None,
            };
            Some((id, fields))
        })
        .collect()
}

/// An `XREADGROUP` reply for one stream: nil (nothing new), or
/// `[[stream, entries]]` (RESP2) / `{stream: entries}` (RESP3).
fn parse_read_reply(v: &Value) -> Vec<RawEntry> {
    match v {
        Value::Array(streams) => streams
            .iter()
            .filter_map(|s| match s {
                Value::Array(pair) => pair.get(1).map(parse_entries),
                _ => None,
            })
            .flatten()
            .collect(),
        Value::Map(streams) => streams.iter().flat_map(|(_, e)| parse_entries(e)).collect(),
        _ => Vec::new(),
    }
}

/// An `XAUTOCLAIM … JUSTID` reply: the next cursor, the claimed ids, and the
/// ids found deleted.
fn parse_autoclaim_reply(v: &Value) -> (String, Vec<String>, Vec<String>) {
    let Value::Array(items) = v else {
        return ("0-0".into(), Vec::new(), Vec::new());
    };
    let ids = |i: usize| -> Vec<String> {
        match items.get(i) {
            Some(Value::Array(ids)) => ids.iter().filter_map(string).collect(),
            _ => Vec::new(),
        }
    };
    let next = items
        .first()
        .and_then(string)
        .unwrap_or_else(|| "0-0".into());
    (next, ids(1), ids(2))
}

/// A duration in whole milliseconds, saturating.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(kv: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        kv.iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn field_form_and_payload_form_give_the_same_publication() {
        let a = parse_entry(
            "s",
            "1-0",
            &fields(&[
                ("channel", "news:a"),
                ("data", r#"{"x":1}"#),
                ("tags", r#"{"k":"v"}"#),
                ("filter", r#"{"plan":["pro"]}"#),
                ("except_client", "c1"),
            ]),
        )
        .unwrap();
        let b = parse_entry(
            "s",
            "1-0",
            &fields(&[(
                "payload",
                r#"{"channel":"news:a","data":{"x":1},"tags":{"k":"v"},"filter":{"plan":["pro"]},"except_client":"c1"}"#,
            )]),
        )
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.idempotency_key.as_deref(), Some("s:1-0"));
        assert_eq!(&a.data[..], br#"{"x":1}"#);
        let own = parse_entry(
            "s",
            "2-0",
            &fields(&[("channel", "a"), ("data", "1"), ("idempotency_key", "k")]),
        )
        .unwrap();
        assert_eq!(own.idempotency_key.as_deref(), Some("k"));
    }

    #[test]
    fn bad_entries_say_why() {
        let cases: [(&[(&str, &str)], &str); 7] = [
            (&[("data", "1")], "missing field `channel`"),
            (&[("channel", "a")], "missing field `data`"),
            (
                &[("channel", "a"), ("data", "1"), ("x", "1")],
                "unknown field `x`",
            ),
            (
                &[("channel", "a"), ("channel", "b"), ("data", "1")],
                "appears twice",
            ),
            (
                &[("channel", "a"), ("data", "1"), ("tags", "[1]")],
                "`tags`",
            ),
            (
                &[("payload", "{}"), ("channel", "a")],
                "`payload` must be the only",
            ),
            (&[("payload", "nope")], "`payload`: not a publication"),
        ];
        for (kv, want) in cases {
            let e = parse_entry("s", "1-0", &fields(kv)).unwrap_err();
            assert!(e.contains(want), "{kv:?}: {e} lacks {want}");
        }
        let bad_utf8 = vec![
            (b"channel".to_vec(), vec![0xff]),
            (b"data".to_vec(), b"1".to_vec()),
        ];
        assert!(parse_entry("s", "1-0", &bad_utf8)
            .unwrap_err()
            .contains("UTF-8"));
    }

    #[test]
    fn replies_parse() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let entry = |id: &str, kv: &[&str]| {
            Value::Array(vec![
                bulk(id),
                Value::Array(kv.iter().map(|s| bulk(s)).collect()),
            ])
        };
        let read = Value::Array(vec![Value::Array(vec![
            bulk("s"),
            Value::Array(vec![entry("1-0", &["a", "1"]), entry("2-0", &["b", "2"])]),
        ])]);
        let got = parse_read_reply(&read);
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].0, "2-0");
        assert_eq!(got[1].1, Some(vec![(b"b".to_vec(), b"2".to_vec())]));
        assert!(parse_read_reply(&Value::Nil).is_empty());
        let deleted = Value::Array(vec![Value::Array(vec![bulk("3-0"), Value::Nil])]);
        assert_eq!(parse_entries(&deleted), vec![("3-0".to_owned(), None)]);
        let auto = Value::Array(vec![
            bulk("5-0"),
            Value::Array(vec![bulk("1-0"), bulk("2-0")]),
            Value::Array(vec![bulk("0-1")]),
        ]);
        assert_eq!(
            parse_autoclaim_reply(&auto),
            (
                "5-0".to_owned(),
                vec!["1-0".to_owned(), "2-0".to_owned()],
                vec!["0-1".to_owned()]
            )
        );
    }

    #[test]
    fn config_checks() {
        let mut c = RedisIngestConfig::default();
        assert!(c.check().is_ok());
        c.stream = "s".repeat(MAX_STREAM_NAME + 1);
        assert!(c.check().is_err());
        let c = RedisIngestConfig {
            dead_letter: "wshub-ingest".into(),
            ..RedisIngestConfig::default()
        };
        assert!(c.check().is_err());
        assert_eq!(
            RedisIngestConfig::default().reclaim_interval(),
            Duration::from_secs(15)
        );
        assert_eq!(RedisIngestConfig::default().block_ms(), 2000);
    }
}
