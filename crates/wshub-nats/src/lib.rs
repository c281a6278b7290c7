//! `wshub-nats`: the NATS JetStream bridges of the wshub hub.
//!
//! Two independent pieces, each configured by its own section of
//! `wshub.toml` and started by `wshub serve` when the section's `engine` is
//! `"nats"`:
//!
//! * **Ingest** ([`IngestConsumer`], `[ingest]`): backends publish JSON
//!   bodies of `POST /api/publish` to a JetStream subject; every node pulls
//!   from one shared durable consumer and publishes each message to its
//!   channel with [`Hub::ingest`](wshub::hub::Hub::ingest). A message is
//!   acknowledged only once the hub published it; one that can never be
//!   published, or that failed on its last allowed delivery, goes to the
//!   dead-letter subject with the reason.
//! * **Upstream** ([`NatsUpstream`], `[upstream]`): in namespaces with
//!   `upstream = "also"` or `"only"`, a client's `publish` is appended to a
//!   JetStream stream (with `Nats-Msg-Id` set to the publish's id, so a
//!   retried append is stored once) and the client is answered only after
//!   the stream acknowledged it.
//!
//! # How it works
//!
//! * **Setup is idempotent.** At start, the stream named in the config is
//!   looked up; if it is missing it is created capturing the configured
//!   subject, and if it exists it is used as it is (its limits and storage
//!   are the operator's). Either way the subject must end up captured by
//!   that stream, otherwise start fails with an error naming both. Several
//!   nodes starting at once create the same stream with the same settings,
//!   which JetStream accepts.
//! * **Ingest is a pull consumer.** The durable consumer `ingest.group` uses
//!   explicit acks, `ack_wait = ingest.claim_idle` and `max_deliver =
//!   ingest.max_deliveries`; the nodes share it, so each message goes to one
//!   node at a time, and a message a node took but never answered (it
//!   crashed, or lost its connection) is delivered again after `ack_wait`,
//!   to whichever node asks next. Each node asks for up to `ingest.batch`
//!   messages with a short long-poll, so an idle hub sends one small request
//!   every couple of seconds and a busy one fetches in batches. See
//!   [`ingest`] for what happens to each message.
//! * **Redeliveries reach clients once.** The idempotency key of a message
//!   is, in order: the body's `idempotency_key`, its `Nats-Msg-Id` header,
//!   or `{stream}:{stream sequence}` — all stable across redeliveries — so
//!   the hub's per-channel deduplication drops a second publish of an entry
//!   whose first publish succeeded but whose ack was lost.
//! * **Reconnects are the client's.** `async-nats` reconnects forever with
//!   backoff and resubscribes; meanwhile fetches fail or go unanswered and
//!   the consumer pauses and tries again (checking the streams and consumer
//!   exist, in case the server came back without its data), and upstream
//!   appends fail with error 108 once `upstream.timeout` runs out (an append
//!   that finds no stream creates it again and retries once).
//!
//! # Why `async-nats`
//!
//! `async-nats` is the official NATS client for Rust, maintained by the NATS
//! authors (Synadia) next to the server. It runs on tokio, speaks the core
//! protocol with headers, handles reconnection and resubscription itself,
//! and has a typed JetStream API (stream and consumer management, pull
//! consumers with batches and long-polls, acks with `-NAK` delays and
//! `+TERM`, publish acks). Writing the JetStream JSON API by hand on a raw
//! NATS connection would duplicate all of that for no gain. The 0.46 line is
//! used because it builds with the workspace's Rust 1.85 (0.47 and later
//! need 1.88); only its `jetstream` and `ring` features are enabled, and the
//! `server_2_10`+ features stay off so every request also works with
//! nats-server 2.9, the version Debian ships.
//!
//! # Layout
//!
//! - [`ingest`]: [`IngestConsumer`], the pull loop and dead-lettering.
//! - [`upstream`]: [`NatsUpstream`], the hub's [`Upstream`](wshub::hub::queue::Upstream).
//! - this file: [`connect`] and [`NatsError`].
//!
//! # Example
//!
//! ```no_run
//! use std::path::Path;
//! use std::sync::Arc;
//!
//! use wshub::hub::config::HubConfig;
//! use wshub::hub::memory::{MemoryBroker, MemoryBrokerConfig};
//! use wshub::hub::Hub;
//! use wshub_nats::{IngestConsumer, NatsUpstream};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = HubConfig::default();
//! let broker = Arc::new(MemoryBroker::new(MemoryBrokerConfig::default()));
//! let hub = Hub::new(config.clone(), broker, Path::new("."))?;
//!
//! let client = wshub_nats::connect("nats://127.0.0.1:4222", "wshub example").await?;
//! hub.set_upstream(Arc::new(NatsUpstream::start(client.clone(), &config.upstream).await?));
//! let consumer = IngestConsumer::start(hub.clone(), client, &config.ingest).await?;
//! // … serve the hub; on shutdown:
//! consumer.stop().await;
//! # Ok(())
//! # }
//! ```

pub mod ingest;
pub mod upstream;

use std::time::Duration;

use async_nats::jetstream;

/// The NATS client this crate uses, for callers that connect themselves or
/// publish to the streams (e.g. tests and backends in the same process).
pub use async_nats;
pub use ingest::IngestConsumer;
pub use upstream::NatsUpstream;

/// The server used when a section's `url` is empty.
pub const DEFAULT_URL: &str = "nats://127.0.0.1:4222";

/// How long the first connection may take before [`connect`] fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a bridge could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NatsError {
    /// The server could not be reached (or refused the connection).
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        /// The URL tried.
        url: String,
        /// What the client reported.
        #[source]
        source: async_nats::ConnectError,
    },
    /// A stream or consumer could not be looked up or created, or exists in a
    /// shape the bridge cannot use.
    #[error("{what}: {reason}")]
    Setup {
        /// Which stream or consumer.
        what: String,
        /// What went wrong.
        reason: String,
    },
}

impl NatsError {
    fn setup(what: impl Into<String>, reason: impl ToString) -> NatsError {
        NatsError::Setup {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}

/// Connects to the NATS server at `url` ([`DEFAULT_URL`] when empty),
/// naming the connection `name` (it shows in the server's monitoring).
///
/// The first connection must succeed within a few seconds; after that the
/// client reconnects by itself, forever, and connection changes are logged.
pub async fn connect(url: &str, name: &str) -> Result<async_nats::Client, NatsError> {
    let url = if url.is_empty() { DEFAULT_URL } else { url };
    let shown = url.to_owned();
    async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(CONNECT_TIMEOUT)
        .max_reconnects(None)
        .event_callback(move |event| {
            let url = shown.clone();
            async move {
                match event {
                    async_nats::Event::Connected => tracing::info!(%url, "nats: connected"),
                    async_nats::Event::Disconnected => {
                        tracing::warn!(%url, "nats: disconnected; reconnecting")
                    }
                    other => tracing::warn!(%url, event = %other, "nats: connection event"),
                }
            }
        })
        .connect(url)
        .await
        .map_err(|source| NatsError::Connect {
            url: url.to_owned(),
            source,
        })
}

/// Makes sure stream `name` exists and captures `subject`: creates it (with
/// `max_messages` when non-zero) if missing, uses it as it is otherwise.
pub(crate) async fn ensure_stream(
    js: &jetstream::Context,
    name: &str,
    subject: &str,
    max_messages: u64,
) -> Result<(), NatsError> {
    let what = || format!("JetStream stream {name:?}");
    let config = jetstream::stream::Config {
        name: name.to_owned(),
        subjects: vec![subject.to_owned()],
        max_messages: i64::try_from(max_messages)
            .ok()
            .filter(|n| *n > 0)
            .unwrap_or(-1),
        ..Default::default()
    };
    js.get_or_create_stream(config)
        .await
        .map_err(|e| NatsError::setup(what(), e))?;
    match js.stream_by_subject(subject).await {
        Ok(owner) if owner == name => Ok(()),
        Ok(owner) => Err(NatsError::setup(
            what(),
            format!("subject {subject:?} is captured by stream {owner:?}, not by this one"),
        )),
        Err(e) => Err(NatsError::setup(
            what(),
            format!("the stream exists but does not capture subject {subject:?} ({e})"),
        )),
    }
}

/// A header value without control characters (which would break the NATS
/// header block), at most `MAX_HEADER_VALUE` bytes.
pub(crate) fn header_value(s: &str) -> String {
    const MAX_HEADER_VALUE: usize = 1024;
    let mut out = String::with_capacity(s.len().min(MAX_HEADER_VALUE));
    for c in s.chars() {
        if out.len() + c.len_utf8() > MAX_HEADER_VALUE {
            break;
        }
        out.push(if c.is_control() { ' ' } else { c });
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn header_values_lose_control_characters_and_length() {
        assert_eq!(super::header_value("a\r\nb\tc"), "a  b c");
        assert_eq!(super::header_value(&"é".repeat(600)).len(), 1024);
    }
}
