//! The hub's Prometheus metrics: counters and gauges the hub bumps from its hot
//! paths, rendered as Prometheus text exposition (format 0.0.4) for a
//! `/metrics` endpoint.
//!
//! # Why hand-written
//!
//! The hub counts a fixed, known set of series: about twenty metrics whose
//! label values are all known at compile time (close reasons, reject reasons,
//! command names, two publication sources). Every one of them is a plain
//! `AtomicU64`/`AtomicI64` (label sets are fixed arrays indexed by an enum),
//! so an update on the message path is one relaxed `fetch_add`: no lock, no
//! hash of a label set, no allocation. A registry crate would add a dependency
//! tree and a label lookup (or a handle cache) per update for features the hub
//! does not use (dynamic labels, unregistering, other formats), and rendering
//! ~100 lines of text by hand is short. Only [`Metrics::render`] allocates.
//!
//! # Consistency
//!
//! Each counter is exact, but [`Metrics::render`] reads them one at a time
//! while other threads keep updating, so a scrape is not an atomic snapshot
//! across metrics (as with every Prometheus client library). Within the
//! publish-duration histogram, `+Inf` and `_count` are computed from the same
//! read of the buckets, so they always agree; `_sum` may be a few
//! observations ahead or behind.
//!
//! ```
//! use std::time::Duration;
//! use wshub::hub::metrics::{DisconnectReason, Metrics, PublishSource};
//!
//! let metrics = Metrics::new();
//! metrics.connection_opened();
//! metrics.message_received(12);
//! metrics.publish_observed(PublishSource::Client, Duration::from_micros(300));
//! metrics.connection_closed();
//! metrics.disconnect(DisconnectReason::Normal);
//! let text = metrics.render();
//! assert!(text.contains("wshub_connections_total 1\n"));
//! assert!(text.contains("wshub_disconnects_total{reason=\"normal\"} 1\n"));
//! ```

use std::fmt::{Display, Write as _};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// The `Content-Type` of [`Metrics::render`]'s output (Prometheus text
/// exposition format 0.0.4).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Why a WebSocket connection ended: the `reason` label of
/// `wshub_disconnects_total`.
///
/// The variants follow the close codes (RFC 6455 and wshub's own) and the
/// local reasons for ending a connection without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// A normal closure (1000).
    Normal,
    /// The peer is going away (1001), e.g. a browser tab closed.
    GoingAway,
    /// The peer violated the WebSocket protocol (1002).
    ProtocolError,
    /// A message exceeded the size limit (1009).
    MessageTooBig,
    /// Invalid payload data, e.g. text that is not UTF-8 (1007).
    InvalidData,
    /// The peer did not answer pings in time.
    PingTimeout,
    /// The peer could not keep up with its outbound queue.
    SlowConsumer,
    /// A write to the peer made no progress for too long.
    WriteStalled,
    /// The connection's token expired and was not refreshed.
    TokenExpired,
    /// The peer was not allowed to do what it asked.
    Forbidden,
    /// The peer sent a malformed hub command.
    BadRequest,
    /// The peer did not negotiate the required subprotocol.
    SubprotocolRequired,
    /// The peer did not send its `connect` command in time.
    ConnectTimeout,
    /// The peer exceeded a rate limit.
    TooManyRequests,
    /// The server is shutting down.
    Shutdown,
    /// The connection was closed through the server API.
    DisconnectedByApi,
    /// The transport failed (reset, broken pipe, TLS error, ...).
    IoError,
    /// Anything else.
    Other,
}

impl DisconnectReason {
    /// Every reason, in label order.
    pub const ALL: [DisconnectReason; 18] = [
        Self::Normal,
        Self::GoingAway,
        Self::ProtocolError,
        Self::MessageTooBig,
        Self::InvalidData,
        Self::PingTimeout,
        Self::SlowConsumer,
        Self::WriteStalled,
        Self::TokenExpired,
        Self::Forbidden,
        Self::BadRequest,
        Self::SubprotocolRequired,
        Self::ConnectTimeout,
        Self::TooManyRequests,
        Self::Shutdown,
        Self::DisconnectedByApi,
        Self::IoError,
        Self::Other,
    ];

    /// The label value, e.g. `"ping_timeout"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::GoingAway => "going_away",
            Self::ProtocolError => "protocol_error",
            Self::MessageTooBig => "message_too_big",
            Self::InvalidData => "invalid_data",
            Self::PingTimeout => "ping_timeout",
            Self::SlowConsumer => "slow_consumer",
            Self::WriteStalled => "write_stalled",
            Self::TokenExpired => "token_expired",
            Self::Forbidden => "forbidden",
            Self::BadRequest => "bad_request",
            Self::SubprotocolRequired => "subprotocol_required",
            Self::ConnectTimeout => "connect_timeout",
            Self::TooManyRequests => "too_many_requests",
            Self::Shutdown => "shutdown",
            Self::DisconnectedByApi => "disconnected_by_api",
            Self::IoError => "io_error",
            Self::Other => "other",
        }
    }

    /// The position in [`Self::ALL`], the index of the counter.
    fn index(self) -> usize {
        self as usize
    }
}

/// Why a connection attempt was refused before it became a WebSocket: the
/// `reason` label of `wshub_rejects_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectReason {
    /// The client's IP already has the maximum number of connections.
    PerIpConnections,
    /// The client's IP opened connections faster than the handshake rate.
    HandshakeRate,
    /// The server has the maximum number of connections.
    MaxConnections,
    /// The `Origin` header is not allowed.
    Origin,
    /// The server is draining and accepts no new connections.
    Draining,
    /// The HTTP upgrade request was invalid.
    BadHandshake,
    /// A server API request was not authorized.
    ApiUnauthorized,
}

impl RejectReason {
    /// Every reason, in label order.
    pub const ALL: [RejectReason; 7] = [
        Self::PerIpConnections,
        Self::HandshakeRate,
        Self::MaxConnections,
        Self::Origin,
        Self::Draining,
        Self::BadHandshake,
        Self::ApiUnauthorized,
    ];

    /// The label value, e.g. `"handshake_rate"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::PerIpConnections => "per_ip_connections",
            Self::HandshakeRate => "handshake_rate",
            Self::MaxConnections => "max_connections",
            Self::Origin => "origin",
            Self::Draining => "draining",
            Self::BadHandshake => "bad_handshake",
            Self::ApiUnauthorized => "api_unauthorized",
        }
    }

    /// The position in [`Self::ALL`], the index of the counter.
    fn index(self) -> usize {
        self as usize
    }
}

/// Where a publication came from: the `source` label of
/// `wshub_publications_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PublishSource {
    /// A client's `publish` command.
    Client,
    /// The server API.
    Api,
    /// A message-queue ingest bridge ([`Hub::ingest`](crate::hub::Hub::ingest)).
    Ingest,
}

impl PublishSource {
    /// Every source, in label order.
    pub const ALL: [PublishSource; 3] = [Self::Client, Self::Api, Self::Ingest];

    /// The label value: `"client"`, `"api"` or `"ingest"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Api => "api",
            Self::Ingest => "ingest",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What a message-queue ingest bridge did with an entry: the `outcome` label
/// of `wshub_ingest_entries_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IngestOutcome {
    /// Published (or found to be a duplicate) and acknowledged.
    Published,
    /// Publishing failed for now; the entry stays unacknowledged and is
    /// tried again (counted per attempt).
    Retried,
    /// Moved to the dead-letter stream with the reason, and acknowledged.
    DeadLettered,
    /// Taken over from a consumer that left it unacknowledged too long.
    Reclaimed,
}

impl IngestOutcome {
    /// Every outcome, in label order.
    pub const ALL: [IngestOutcome; 4] = [
        Self::Published,
        Self::Retried,
        Self::DeadLettered,
        Self::Reclaimed,
    ];

    /// The label value, e.g. `"dead_lettered"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Published => "published",
            Self::Retried => "retried",
            Self::DeadLettered => "dead_lettered",
            Self::Reclaimed => "reclaimed",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The `method` label values of `wshub_commands_total`; a name not in this
/// list is counted as the last one, `"other"`.
pub const COMMAND_METHODS: [&str; 9] = [
    "connect",
    "subscribe",
    "unsubscribe",
    "publish",
    "presence",
    "history",
    "ping",
    "refresh",
    "other",
];

/// Upper bounds of the publish-duration histogram's buckets, in nanoseconds
/// (integers, so an observation is classified without float rounding), and
/// their `le` labels. 100 µs to 2.5 s: an in-memory publish takes tens of
/// microseconds, a broker round trip milliseconds, a stalled one seconds.
const PUBLISH_BUCKETS: [(u64, &str); 14] = [
    (100_000, "0.0001"),
    (250_000, "0.00025"),
    (500_000, "0.0005"),
    (1_000_000, "0.001"),
    (2_500_000, "0.0025"),
    (5_000_000, "0.005"),
    (10_000_000, "0.01"),
    (25_000_000, "0.025"),
    (50_000_000, "0.05"),
    (100_000_000, "0.1"),
    (250_000_000, "0.25"),
    (500_000_000, "0.5"),
    (1_000_000_000, "1"),
    (2_500_000_000, "2.5"),
];

/// A histogram with the fixed [`PUBLISH_BUCKETS`]: one counter per bucket
/// (not cumulative, so an observation is a single add) plus one for
/// observations above the last bound, and the sum in nanoseconds.
#[derive(Debug, Default)]
struct Histogram {
    /// `buckets[i]` counts observations in `(bound[i-1], bound[i]]`; the last
    /// slot counts those above every bound.
    buckets: [AtomicU64; PUBLISH_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn observe(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let slot = PUBLISH_BUCKETS.partition_point(|&(bound, _)| bound < nanos);
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

/// The hub's metrics. Create one, share it as an `Arc<Metrics>`, update it
/// from anywhere and serve [`Metrics::render`] on `/metrics` with
/// [`CONTENT_TYPE`].
///
/// Every update method is one or two relaxed atomic operations. Gauges that
/// go up and down are signed, so a mismatched extra "closed" call shows up as
/// a negative value instead of wrapping around to 2^64.
#[derive(Debug, Default)]
pub struct Metrics {
    connections: AtomicI64,
    connections_total: AtomicU64,
    messages_received: AtomicU64,
    messages_sent: AtomicU64,
    bytes_received: AtomicU64,
    bytes_sent: AtomicU64,
    disconnects: [AtomicU64; DisconnectReason::ALL.len()],
    rejects: [AtomicU64; RejectReason::ALL.len()],
    queue_drops: AtomicU64,
    slow_consumers: AtomicU64,
    publications: [AtomicU64; PublishSource::ALL.len()],
    ingest_entries: [AtomicU64; IngestOutcome::ALL.len()],
    publish_duration: Histogram,
    subscriptions: AtomicI64,
    channels: AtomicU64,
    commands: [AtomicU64; COMMAND_METHODS.len()],
    draining: AtomicBool,
}

/// The totals of [`Metrics`] at one moment (see [`Metrics::snapshot`]);
/// serialised as the admin API's statistics.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MetricsSnapshot {
    /// Open WebSocket connections.
    pub connections: u64,
    /// Connections accepted since start.
    pub connections_total: u64,
    /// Frames received from clients.
    pub messages_received: u64,
    /// Frames queued to clients.
    pub messages_sent: u64,
    /// Bytes received from clients.
    pub bytes_received: u64,
    /// Bytes queued to clients.
    pub bytes_sent: u64,
    /// Subscriptions on this node.
    pub subscriptions: u64,
    /// Channels with subscribers on this node.
    pub channels: u64,
    /// Messages dropped by the drop-oldest policy.
    pub queue_drops: u64,
    /// Connections closed as slow consumers.
    pub slow_consumers: u64,
    /// Publications by source (`client`, `api`).
    pub publications: std::collections::BTreeMap<&'static str, u64>,
    /// Ended connections by reason.
    pub disconnects: std::collections::BTreeMap<&'static str, u64>,
    /// Refused upgrades and API calls by reason.
    pub rejects: std::collections::BTreeMap<&'static str, u64>,
    /// Whether the hub is draining.
    pub draining: bool,
}

/// `usize` to `u64` without a cast that clippy would flag; lossless on every
/// platform Rust supports today, saturating otherwise.
fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

impl Metrics {
    /// All metrics at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// A WebSocket connection was established: `wshub_connections` +1 and
    /// `wshub_connections_total` +1.
    pub fn connection_opened(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.connections_total.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection counted by [`Self::connection_opened`] ended:
    /// `wshub_connections` -1. Record why with [`Self::disconnect`].
    pub fn connection_closed(&self) {
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// A message of `bytes` payload bytes arrived from a client.
    pub fn message_received(&self, bytes: usize) {
        self.messages_received.fetch_add(1, Ordering::Relaxed);
        self.bytes_received
            .fetch_add(to_u64(bytes), Ordering::Relaxed);
    }

    /// A message of `bytes` payload bytes was sent to a client.
    pub fn message_sent(&self, bytes: usize) {
        self.messages_sent(1, to_u64(bytes));
    }

    /// `count` messages totalling `bytes` bytes were sent, e.g. one
    /// publication fanned out to `count` subscribers (two atomic adds for the
    /// whole fan-out instead of two per subscriber).
    pub fn messages_sent(&self, count: u64, bytes: u64) {
        self.messages_sent.fetch_add(count, Ordering::Relaxed);
        self.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A connection ended for `reason` (`wshub_disconnects_total`).
    pub fn disconnect(&self, reason: DisconnectReason) {
        self.disconnects[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// A connection attempt was refused for `reason` (`wshub_rejects_total`).
    pub fn reject(&self, reason: RejectReason) {
        self.rejects[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// `n` queued messages were dropped (`wshub_queue_drops_total`).
    pub fn queue_drops(&self, n: u64) {
        self.queue_drops.fetch_add(n, Ordering::Relaxed);
    }

    /// A client was found to be a slow consumer
    /// (`wshub_slow_consumers_total`).
    pub fn slow_consumer(&self) {
        self.slow_consumers.fetch_add(1, Ordering::Relaxed);
    }

    /// A publication from `source` completed in `elapsed`: counts it in
    /// `wshub_publications_total` and observes `wshub_publish_duration_seconds`.
    pub fn publish_observed(&self, source: PublishSource, elapsed: Duration) {
        self.publications[source.index()].fetch_add(1, Ordering::Relaxed);
        self.publish_duration.observe(elapsed);
    }

    /// An ingest bridge handled `n` entries with `outcome`
    /// (`wshub_ingest_entries_total`).
    pub fn ingest_entries(&self, outcome: IngestOutcome, n: u64) {
        self.ingest_entries[outcome.index()].fetch_add(n, Ordering::Relaxed);
    }

    /// A client subscribed to a channel: `wshub_subscriptions` +1.
    pub fn subscribed(&self) {
        self.subscriptions.fetch_add(1, Ordering::Relaxed);
    }

    /// A subscription ended (unsubscribe or disconnect):
    /// `wshub_subscriptions` -1.
    pub fn unsubscribed(&self) {
        self.subscriptions.fetch_sub(1, Ordering::Relaxed);
    }

    /// Sets `wshub_channels`, the number of channels with subscribers.
    pub fn set_channels(&self, n: usize) {
        self.channels.store(to_u64(n), Ordering::Relaxed);
    }

    /// A client command named `method` was received
    /// (`wshub_commands_total`). Names not in [`COMMAND_METHODS`] are counted
    /// as `"other"`, so a client cannot create new series.
    pub fn command(&self, method: &str) {
        let other = COMMAND_METHODS.len() - 1;
        let index = COMMAND_METHODS[..other]
            .iter()
            .position(|&m| m == method)
            .unwrap_or(other);
        self.commands[index].fetch_add(1, Ordering::Relaxed);
    }

    /// Sets `wshub_draining`: 1 while the server refuses new connections and
    /// waits for existing ones to finish, 0 otherwise.
    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Relaxed);
    }

    /// The current totals, for the admin API and dashboard.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let by_name = |names: &[&'static str], values: &[AtomicU64]| {
            names
                .iter()
                .zip(values)
                .map(|(n, v)| (*n, load(v)))
                .collect::<std::collections::BTreeMap<_, _>>()
        };
        let disconnect_names: Vec<&'static str> = DisconnectReason::ALL
            .iter()
            .map(DisconnectReason::as_str)
            .collect();
        let reject_names: Vec<&'static str> =
            RejectReason::ALL.iter().map(RejectReason::as_str).collect();
        let publish_names: Vec<&'static str> = PublishSource::ALL
            .iter()
            .map(PublishSource::as_str)
            .collect();
        MetricsSnapshot {
            connections: self.connections.load(Ordering::Relaxed).max(0) as u64,
            connections_total: load(&self.connections_total),
            messages_received: load(&self.messages_received),
            messages_sent: load(&self.messages_sent),
            bytes_received: load(&self.bytes_received),
            bytes_sent: load(&self.bytes_sent),
            subscriptions: self.subscriptions.load(Ordering::Relaxed).max(0) as u64,
            channels: load(&self.channels),
            queue_drops: load(&self.queue_drops),
            slow_consumers: load(&self.slow_consumers),
            publications: by_name(&publish_names, &self.publications),
            disconnects: by_name(&disconnect_names, &self.disconnects),
            rejects: by_name(&reject_names, &self.rejects),
            draining: self.draining.load(Ordering::Relaxed),
        }
    }

    /// The metrics in Prometheus text exposition format 0.0.4 (serve it with
    /// [`CONTENT_TYPE`]). Every labelled series is present, zeros included,
    /// so dashboards and `rate()` see a series from the first scrape on.
    pub fn render(&self) -> String {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = Text(String::with_capacity(8 * 1024));

        out.header("wshub_connections", "gauge", "Open WebSocket connections.");
        out.sample(
            "wshub_connections",
            &[],
            self.connections.load(Ordering::Relaxed),
        );
        out.counter(
            "wshub_connections_total",
            "WebSocket connections established.",
            load(&self.connections_total),
        );
        out.counter(
            "wshub_messages_received_total",
            "Messages received from clients.",
            load(&self.messages_received),
        );
        out.counter(
            "wshub_messages_sent_total",
            "Messages sent to clients.",
            load(&self.messages_sent),
        );
        out.counter(
            "wshub_bytes_received_total",
            "Message payload bytes received from clients.",
            load(&self.bytes_received),
        );
        out.counter(
            "wshub_bytes_sent_total",
            "Message payload bytes sent to clients.",
            load(&self.bytes_sent),
        );

        out.header(
            "wshub_disconnects_total",
            "counter",
            "WebSocket connections ended, by reason.",
        );
        for reason in DisconnectReason::ALL {
            out.sample(
                "wshub_disconnects_total",
                &[("reason", reason.as_str())],
                load(&self.disconnects[reason.index()]),
            );
        }
        out.header(
            "wshub_rejects_total",
            "counter",
            "Connection attempts refused before the upgrade, by reason.",
        );
        for reason in RejectReason::ALL {
            out.sample(
                "wshub_rejects_total",
                &[("reason", reason.as_str())],
                load(&self.rejects[reason.index()]),
            );
        }

        out.counter(
            "wshub_queue_drops_total",
            "Queued outbound messages dropped.",
            load(&self.queue_drops),
        );
        out.counter(
            "wshub_slow_consumers_total",
            "Clients found too slow to keep up with their outbound queue.",
            load(&self.slow_consumers),
        );

        out.header(
            "wshub_publications_total",
            "counter",
            "Publications, by source.",
        );
        for source in PublishSource::ALL {
            out.sample(
                "wshub_publications_total",
                &[("source", source.as_str())],
                load(&self.publications[source.index()]),
            );
        }
        self.render_publish_duration(&mut out);
        out.header(
            "wshub_ingest_entries_total",
            "counter",
            "Message-queue entries handled by the ingest bridge, by outcome.",
        );
        for outcome in IngestOutcome::ALL {
            out.sample(
                "wshub_ingest_entries_total",
                &[("outcome", outcome.as_str())],
                load(&self.ingest_entries[outcome.index()]),
            );
        }

        out.header(
            "wshub_subscriptions",
            "gauge",
            "Client channel subscriptions.",
        );
        out.sample(
            "wshub_subscriptions",
            &[],
            self.subscriptions.load(Ordering::Relaxed),
        );
        out.header("wshub_channels", "gauge", "Channels with subscribers.");
        out.sample("wshub_channels", &[], load(&self.channels));

        out.header(
            "wshub_commands_total",
            "counter",
            "Client commands received, by method.",
        );
        for (method, count) in COMMAND_METHODS.iter().zip(&self.commands) {
            out.sample("wshub_commands_total", &[("method", method)], load(count));
        }

        out.header(
            "wshub_draining",
            "gauge",
            "1 while the server is draining (refusing new connections), else 0.",
        );
        out.sample(
            "wshub_draining",
            &[],
            u8::from(self.draining.load(Ordering::Relaxed)),
        );
        out.0
    }

    fn render_publish_duration(&self, out: &mut Text) {
        const NAME: &str = "wshub_publish_duration_seconds";
        let histogram = &self.publish_duration;
        out.header(
            NAME,
            "histogram",
            "Time to publish a message to a channel, in seconds.",
        );
        let bucket = format!("{NAME}_bucket");
        let mut cumulative = 0u64;
        for ((_, le), count) in PUBLISH_BUCKETS.iter().zip(&histogram.buckets) {
            cumulative = cumulative.saturating_add(count.load(Ordering::Relaxed));
            out.sample(&bucket, &[("le", le)], cumulative);
        }
        let overflow = histogram.buckets[PUBLISH_BUCKETS.len()].load(Ordering::Relaxed);
        // `+Inf` and `_count` come from the same loads, so they always agree.
        let count = cumulative.saturating_add(overflow);
        out.sample(&bucket, &[("le", "+Inf")], count);
        // Nanoseconds as u64 are exact in f64 up to 2^53 ns (104 days of total
        // publish time); beyond that the sum loses nanoseconds, not seconds.
        let sum = histogram.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        out.sample(&format!("{NAME}_sum"), &[], sum);
        out.sample(&format!("{NAME}_count"), &[], count);
    }
}

/// The exposition text being written. `fmt::Write` for a `String` never
/// fails, so the results of `write!` are ignored.
struct Text(String);

impl Text {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = write!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                // Label values are compile-time identifiers and bucket
                // bounds: nothing to escape.
                let _ = write!(self.0, "{key}=\"{value}\"");
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.header(name, "counter", help);
        self.sample(name, &[], value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};
    use std::sync::Arc;

    /// One sample line: name, labels, value.
    #[derive(Debug)]
    struct Sample {
        name: String,
        labels: Vec<(String, String)>,
        value: f64,
    }

    fn is_metric_name(s: &str) -> bool {
        let mut chars = s.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }

    fn is_label_name(s: &str) -> bool {
        let mut chars = s.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    }

    fn parse_value(s: &str) -> f64 {
        match s {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            _ => s.parse().unwrap_or_else(|e| panic!("bad value {s:?}: {e}")),
        }
    }

    fn parse_sample(line: &str) -> Sample {
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            None => (series, Vec::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
                let labels = body
                    .split(',')
                    .map(|pair| {
                        let (key, quoted) = pair
                            .split_once('=')
                            .unwrap_or_else(|| panic!("bad label {pair:?} in {line:?}"));
                        assert!(is_label_name(key), "label name {key:?} in {line:?}");
                        let value = quoted
                            .strip_prefix('"')
                            .and_then(|v| v.strip_suffix('"'))
                            .unwrap_or_else(|| panic!("unquoted label in {line:?}"));
                        assert!(
                            !value.contains(['"', '\\', '\n']),
                            "unescaped label value in {line:?}"
                        );
                        (key.to_owned(), value.to_owned())
                    })
                    .collect();
                (name, labels)
            }
        };
        assert!(is_metric_name(name), "metric name {name:?} in {line:?}");
        Sample {
            name: name.to_owned(),
            labels,
            value: parse_value(value),
        }
    }

    /// A small checker of the text format: returns the samples by metric
    /// family after checking that every line is a HELP, TYPE or sample line,
    /// that every family has exactly one HELP and one TYPE before its
    /// samples, that samples belong to a declared family, that no series
    /// repeats, and that histograms are well formed.
    fn check_exposition(text: &str) -> HashMap<String, Vec<Sample>> {
        assert!(text.ends_with('\n'), "the text must end with a newline");
        let mut help = HashSet::new();
        let mut types: HashMap<String, String> = HashMap::new();
        let mut families: HashMap<String, Vec<Sample>> = HashMap::new();
        let mut series = HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, doc) = rest.split_once(' ').expect("HELP without text");
                assert!(!doc.is_empty(), "empty HELP for {name}");
                assert!(help.insert(name.to_owned()), "second HELP for {name}");
                assert!(!families.contains_key(name), "HELP after samples of {name}");
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE without type");
                assert!(
                    ["counter", "gauge", "histogram"].contains(&kind),
                    "type {kind}"
                );
                assert!(
                    types.insert(name.to_owned(), kind.to_owned()).is_none(),
                    "second TYPE for {name}"
                );
                assert!(!families.contains_key(name), "TYPE after samples of {name}");
            } else {
                assert!(!line.starts_with('#') && !line.is_empty(), "line {line:?}");
                let sample = parse_sample(line);
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .filter_map(|suffix| sample.name.strip_suffix(suffix))
                    .find(|base| types.get(*base).is_some_and(|t| t == "histogram"))
                    .unwrap_or(&sample.name)
                    .to_owned();
                assert!(types.contains_key(&family), "no TYPE for {line:?}");
                assert!(help.contains(&family), "no HELP for {line:?}");
                if types[&family] == "counter" {
                    assert!(family.ends_with("_total"), "counter {family}");
                }
                assert!(series.insert(line.rsplit_once(' ').unwrap().0.to_owned()));
                families.entry(family).or_default().push(sample);
            }
        }
        for (name, kind) in &types {
            assert!(help.contains(name), "TYPE without HELP: {name}");
            let samples = families
                .get(name)
                .unwrap_or_else(|| panic!("no samples: {name}"));
            if kind == "histogram" {
                check_histogram(name, samples);
            }
        }
        families
    }

    fn check_histogram(name: &str, samples: &[Sample]) {
        let bucket_name = format!("{name}_bucket");
        let buckets: Vec<(f64, f64)> = samples
            .iter()
            .filter(|s| s.name == bucket_name)
            .map(|s| {
                assert_eq!(s.labels.len(), 1);
                assert_eq!(s.labels[0].0, "le");
                (parse_value(&s.labels[0].1), s.value)
            })
            .collect();
        assert!(buckets.len() >= 2, "{name}: too few buckets");
        for pair in buckets.windows(2) {
            assert!(pair[0].0 < pair[1].0, "{name}: bounds not increasing");
            assert!(pair[0].1 <= pair[1].1, "{name}: buckets not cumulative");
        }
        let (last_le, inf) = *buckets.last().unwrap();
        assert_eq!(last_le, f64::INFINITY, "{name}: last bucket must be +Inf");
        let single = |suffix: &str| {
            let n = format!("{name}{suffix}");
            let found: Vec<_> = samples.iter().filter(|s| s.name == n).collect();
            assert_eq!(found.len(), 1, "{n}");
            found[0].value
        };
        assert_eq!(inf, single("_count"), "{name}: +Inf != _count");
        assert!(single("_sum") >= 0.0);
    }

    fn value(families: &HashMap<String, Vec<Sample>>, name: &str, label: Option<&str>) -> f64 {
        let family = name
            .strip_suffix("_bucket")
            .or_else(|| name.strip_suffix("_sum"))
            .or_else(|| name.strip_suffix("_count"))
            .filter(|base| families.contains_key(*base))
            .unwrap_or(name);
        let found: Vec<_> = families[family]
            .iter()
            .filter(|s| s.name == name && s.labels.first().map(|l| l.1.as_str()) == label)
            .collect();
        assert_eq!(found.len(), 1, "{name} {label:?}");
        found[0].value
    }

    #[test]
    fn fresh_metrics_render_every_series_at_zero() {
        let families = check_exposition(&Metrics::new().render());
        let expected = [
            "wshub_connections",
            "wshub_connections_total",
            "wshub_messages_received_total",
            "wshub_messages_sent_total",
            "wshub_bytes_received_total",
            "wshub_bytes_sent_total",
            "wshub_disconnects_total",
            "wshub_rejects_total",
            "wshub_queue_drops_total",
            "wshub_slow_consumers_total",
            "wshub_publications_total",
            "wshub_publish_duration_seconds",
            "wshub_ingest_entries_total",
            "wshub_subscriptions",
            "wshub_channels",
            "wshub_commands_total",
            "wshub_draining",
        ];
        let mut names: Vec<_> = families.keys().map(String::as_str).collect();
        names.sort_unstable();
        let mut sorted = expected.to_vec();
        sorted.sort_unstable();
        assert_eq!(names, sorted);
        assert_eq!(
            families["wshub_disconnects_total"].len(),
            DisconnectReason::ALL.len()
        );
        assert_eq!(
            families["wshub_rejects_total"].len(),
            RejectReason::ALL.len()
        );
        assert_eq!(families["wshub_commands_total"].len(), 9);
        assert_eq!(
            families["wshub_ingest_entries_total"].len(),
            IngestOutcome::ALL.len()
        );
        // 14 bounds + Inf, _sum, _count.
        assert_eq!(families["wshub_publish_duration_seconds"].len(), 17);
        for samples in families.values() {
            for s in samples {
                assert_eq!(s.value, 0.0, "{s:?}");
            }
        }
    }

    #[test]
    fn label_values_are_distinct_and_in_index_order() {
        let labels: Vec<_> = DisconnectReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.iter().collect::<HashSet<_>>().len(), labels.len());
        for (i, r) in DisconnectReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        let labels: Vec<_> = IngestOutcome::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.iter().collect::<HashSet<_>>().len(), labels.len());
        for (i, r) in IngestOutcome::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        let labels: Vec<_> = RejectReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.iter().collect::<HashSet<_>>().len(), labels.len());
        for (i, r) in RejectReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        for (i, s) in PublishSource::ALL.iter().enumerate() {
            assert_eq!(s.index(), i);
        }
        assert_eq!(
            DisconnectReason::SubprotocolRequired.as_str(),
            "subprotocol_required"
        );
        assert_eq!(RejectReason::ApiUnauthorized.as_str(), "api_unauthorized");
    }

    #[test]
    fn updates_show_up_in_render() {
        let m = Metrics::new();
        m.connection_opened();
        m.connection_opened();
        m.connection_closed();
        m.message_received(10);
        m.message_received(5);
        m.message_sent(7);
        m.messages_sent(3, 30);
        m.disconnect(DisconnectReason::PingTimeout);
        m.disconnect(DisconnectReason::PingTimeout);
        m.disconnect(DisconnectReason::Other);
        m.reject(RejectReason::HandshakeRate);
        m.queue_drops(4);
        m.slow_consumer();
        m.subscribed();
        m.subscribed();
        m.unsubscribed();
        m.set_channels(42);
        m.command("subscribe");
        m.command("subscribe");
        m.command("refresh");
        m.command("no-such-method");
        m.set_draining(true);

        let text = m.render();
        let f = check_exposition(&text);
        assert_eq!(value(&f, "wshub_connections", None), 1.0);
        assert_eq!(value(&f, "wshub_connections_total", None), 2.0);
        assert_eq!(value(&f, "wshub_messages_received_total", None), 2.0);
        assert_eq!(value(&f, "wshub_bytes_received_total", None), 15.0);
        assert_eq!(value(&f, "wshub_messages_sent_total", None), 4.0);
        assert_eq!(value(&f, "wshub_bytes_sent_total", None), 37.0);
        assert_eq!(
            value(&f, "wshub_disconnects_total", Some("ping_timeout")),
            2.0
        );
        assert_eq!(value(&f, "wshub_disconnects_total", Some("other")), 1.0);
        assert_eq!(value(&f, "wshub_disconnects_total", Some("normal")), 0.0);
        assert_eq!(
            value(&f, "wshub_rejects_total", Some("handshake_rate")),
            1.0
        );
        assert_eq!(value(&f, "wshub_queue_drops_total", None), 4.0);
        assert_eq!(value(&f, "wshub_slow_consumers_total", None), 1.0);
        assert_eq!(value(&f, "wshub_subscriptions", None), 1.0);
        assert_eq!(value(&f, "wshub_channels", None), 42.0);
        assert_eq!(value(&f, "wshub_commands_total", Some("subscribe")), 2.0);
        assert_eq!(value(&f, "wshub_commands_total", Some("refresh")), 1.0);
        assert_eq!(value(&f, "wshub_commands_total", Some("other")), 1.0);
        assert_eq!(value(&f, "wshub_draining", None), 1.0);
        // Exact text of a few lines (the format is a contract with scrapers).
        assert!(text.contains("# TYPE wshub_connections gauge\nwshub_connections 1\n"));
        assert!(text.contains("wshub_rejects_total{reason=\"origin\"} 0\n"));

        m.set_draining(false);
        m.connection_closed();
        m.connection_closed();
        let f = check_exposition(&m.render());
        assert_eq!(value(&f, "wshub_draining", None), 0.0);
        // A mismatched close is visible, not wrapped around.
        assert_eq!(value(&f, "wshub_connections", None), -1.0);
    }

    #[test]
    fn publish_histogram_buckets() {
        let m = Metrics::new();
        let us = Duration::from_micros;
        m.publish_observed(PublishSource::Client, us(50)); // <= 0.0001
        m.publish_observed(PublishSource::Client, us(100)); // == 0.0001 (le is inclusive)
        m.publish_observed(PublishSource::Api, us(101)); // <= 0.00025
        m.publish_observed(PublishSource::Api, Duration::from_millis(30)); // <= 0.05
        m.publish_observed(PublishSource::Api, Duration::from_secs(3)); // +Inf only
        let f = check_exposition(&m.render());
        let bucket = |le: &str| {
            let samples = &f["wshub_publish_duration_seconds"];
            samples
                .iter()
                .find(|s| s.name.ends_with("_bucket") && s.labels[0].1 == le)
                .map(|s| s.value)
                .unwrap()
        };
        assert_eq!(bucket("0.0001"), 2.0);
        assert_eq!(bucket("0.00025"), 3.0);
        assert_eq!(bucket("0.025"), 3.0);
        assert_eq!(bucket("0.05"), 4.0);
        assert_eq!(bucket("2.5"), 4.0);
        assert_eq!(bucket("+Inf"), 5.0);
        assert_eq!(value(&f, "wshub_publish_duration_seconds_count", None), 5.0);
        let sum = value(&f, "wshub_publish_duration_seconds_sum", None);
        assert!((sum - 3.030251).abs() < 1e-9, "{sum}");
        assert_eq!(value(&f, "wshub_publications_total", Some("client")), 2.0);
        assert_eq!(value(&f, "wshub_publications_total", Some("api")), 3.0);

        // Durations too long for u64 nanoseconds saturate instead of panicking.
        m.publish_observed(PublishSource::Api, Duration::MAX);
        check_exposition(&m.render());
    }

    #[test]
    fn concurrent_updates_sum_correctly() {
        const THREADS: u64 = 4;
        const ROUNDS: u64 = 10_000;
        let m = Arc::new(Metrics::new());
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let m = Arc::clone(&m);
                std::thread::spawn(move || {
                    for i in 0..ROUNDS {
                        m.connection_opened();
                        m.message_received(3);
                        m.messages_sent(2, 10);
                        m.disconnect(DisconnectReason::ALL[usize::try_from(i % 18).unwrap()]);
                        m.command(COMMAND_METHODS[usize::try_from((i + t) % 9).unwrap()]);
                        m.publish_observed(PublishSource::Client, Duration::from_micros(i % 300));
                        m.connection_closed();
                        // Render while others update: must stay well formed.
                        if i % 2_500 == 0 {
                            check_exposition(&m.render());
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let total = (THREADS * ROUNDS) as f64;
        let f = check_exposition(&m.render());
        assert_eq!(value(&f, "wshub_connections", None), 0.0);
        assert_eq!(value(&f, "wshub_connections_total", None), total);
        assert_eq!(value(&f, "wshub_messages_received_total", None), total);
        assert_eq!(value(&f, "wshub_bytes_received_total", None), 3.0 * total);
        assert_eq!(value(&f, "wshub_messages_sent_total", None), 2.0 * total);
        assert_eq!(value(&f, "wshub_bytes_sent_total", None), 10.0 * total);
        let disconnects: f64 = f["wshub_disconnects_total"].iter().map(|s| s.value).sum();
        assert_eq!(disconnects, total);
        let commands: f64 = f["wshub_commands_total"].iter().map(|s| s.value).sum();
        assert_eq!(commands, total);
        assert_eq!(
            value(&f, "wshub_publish_duration_seconds_count", None),
            total
        );
        assert_eq!(value(&f, "wshub_publications_total", Some("client")), total);
    }
}
