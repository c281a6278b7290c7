//! [`IngestConsumer`]: publications pulled from a JetStream stream and
//! published to channels.
//!
//! # Per message
//!
//! The body must be the JSON of a `POST /api/publish` body
//! ([`IngestMessage::from_json`]). Its idempotency key, unless the body sets
//! one, is the `Nats-Msg-Id` header (when 1 to 128 bytes) or else
//! `{stream}:{stream sequence}`; both stay the same across redeliveries. Then
//! [`Hub::ingest`] decides:
//!
//! | outcome | what the consumer does |
//! |---|---|
//! | published, or a duplicate of an earlier publish | `+ACK` |
//! | [`IngestError::Retry`] (the broker is unavailable), or no answer within `claim_idle` (the entry would go to another node by then anyway) | `-NAK` with a delay of `claim_idle`, so the entry comes back later instead of spinning; the consumer also pauses before its next fetch |
//! | [`IngestError::Retry`] on delivery `max_deliveries` (the last one the consumer allows) | dead-letter, then `+TERM` |
//! | [`IngestError::Reject`] (bad JSON, bad channel, unknown namespace, too large …), or a body that is not a publication | dead-letter, then `+TERM` |
//!
//! Nothing is acknowledged before the hub answered: an entry whose node
//! died mid-way is delivered again after `claim_idle`, to any node.
//!
//! # Dead letters
//!
//! A dead entry is published, body unchanged, to the `ingest.dead_letter`
//! subject with headers `Wshub-Error` (the reason), `Wshub-Stream`,
//! `Wshub-Sequence` (its stream sequence), `Wshub-Deliveries` (its delivery
//! count) and, when it had one, `Wshub-Msg-Id` (its `Nats-Msg-Id`); its own
//! `Nats-Msg-Id` is `{stream}:{sequence}`, so dead-lettering the same entry
//! twice stores it once.
//!
//! The publish always goes through JetStream and waits for the stream's ack,
//! so nothing is dropped for want of a listener: at start, if no stream
//! captures the dead-letter subject, the consumer creates one named
//! `{ingest.stream}-dead` (otherwise the existing stream is used, unless it
//! is the ingest stream itself, which would feed dead letters back in and is
//! refused). If the dead-letter publish fails, the entry is not terminated
//! but `-NAK`ed, to come back later. On its last delivery that means the
//! server stops delivering it: it stays in the ingest stream (the server
//! emits a `MAX_DELIVERIES` advisory) and the failure is logged as an error.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, consumer::PullConsumer, AckKind};
use async_nats::HeaderMap;
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use wshub::hub::config::IngestConfig;
use wshub::hub::queue::{IngestError, IngestMessage};
use wshub::hub::Hub;

use crate::{ensure_stream, header_value, NatsError};

/// How long one fetch waits for messages at the server (a long-poll).
const FETCH_WAIT: Duration = Duration::from_secs(2);
/// The first pause after a failed fetch or a publish to retry; doubled up
/// to [`MAX_PAUSE`] while failures continue.
const MIN_PAUSE: Duration = Duration::from_millis(250);
/// The longest pause between fetches while something fails.
const MAX_PAUSE: Duration = Duration::from_secs(5);
/// How long [`IngestConsumer::stop`] lets the message in hand finish.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// The longest idempotency key the hub accepts, in bytes (the hub's
/// `idempotency_key` bound): a longer `Nats-Msg-Id` is not used as the key.
const MAX_KEY_LEN: usize = 128;

/// A running ingest consumer: one task pulling from the shared durable
/// consumer and publishing to the hub.
///
/// [`stop`](Self::stop) it on shutdown; dropping it aborts the task at once
/// (whatever it held unacknowledged comes back after `claim_idle`).
#[derive(Debug)]
pub struct IngestConsumer {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl IngestConsumer {
    /// Makes sure the stream (`config.stream` capturing `config.subject`),
    /// the durable pull consumer (`config.group`) and a stream capturing
    /// `config.dead_letter` exist, then starts consuming.
    ///
    /// An existing stream is used as it is. An existing consumer is updated
    /// to this config's `ack_wait` and `max_deliver` (JetStream allows that
    /// change in place).
    pub async fn start(
        hub: Hub,
        client: async_nats::Client,
        config: &IngestConfig,
    ) -> Result<IngestConsumer, NatsError> {
        let js = jetstream::new(client);
        let consumer = setup(&js, config).await?;
        tracing::info!(
            stream = %config.stream,
            subject = %config.subject,
            consumer = %config.group,
            dead_letter = %config.dead_letter,
            "ingest: nats jetstream"
        );
        let (stop, stopped) = watch::channel(false);
        let worker = Worker {
            hub,
            js,
            config: config.clone(),
            consumer,
            stopped,
        };
        Ok(IngestConsumer {
            stop,
            task: Some(tokio::spawn(worker.run())),
        })
    }

    /// Stops fetching, lets the message in hand finish (for a few seconds at
    /// most) and waits for the task to end. Fetched messages not handled yet
    /// are delivered again after `claim_idle`.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                if e.is_panic() {
                    tracing::error!(error = %e, "ingest: the consumer task panicked");
                }
            }
        }
    }
}

impl Drop for IngestConsumer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The streams and the consumer (see [`IngestConsumer::start`]).
async fn setup(js: &jetstream::Context, config: &IngestConfig) -> Result<PullConsumer, NatsError> {
    ensure_stream(js, &config.stream, &config.subject, 0).await?;
    match js.stream_by_subject(config.dead_letter.as_str()).await {
        Ok(owner) if owner == config.stream => {
            return Err(NatsError::setup(
                format!("ingest.dead_letter {:?}", config.dead_letter),
                format!(
                    "is captured by the ingest stream {owner:?} itself: dead letters would be ingested again"
                ),
            ));
        }
        Ok(_) => {}
        Err(e) if e.kind() == jetstream::context::GetStreamByNameErrorKind::NotFound => {
            let dead = format!("{}-dead", config.stream);
            ensure_stream(js, &dead, &config.dead_letter, 0).await?;
            tracing::info!(stream = %dead, subject = %config.dead_letter, "ingest: created the dead-letter stream");
        }
        Err(e) => {
            return Err(NatsError::setup(
                format!("ingest.dead_letter {:?}", config.dead_letter),
                e,
            ))
        }
    }
    ensure_consumer(js, config).await
}

async fn ensure_consumer(
    js: &jetstream::Context,
    config: &IngestConfig,
) -> Result<PullConsumer, NatsError> {
    let what = || {
        format!(
            "JetStream consumer {:?} on stream {:?}",
            config.group, config.stream
        )
    };
    let stream = js
        .get_stream(&config.stream)
        .await
        .map_err(|e| NatsError::setup(what(), e))?;
    stream
        .create_consumer(pull::Config {
            durable_name: Some(config.group.clone()),
            description: Some("wshub ingest: publishes each message to its channel".to_owned()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: config.claim_idle,
            max_deliver: i64::from(config.max_deliveries),
            ..Default::default()
        })
        .await
        .map_err(|e| NatsError::setup(what(), e))
}

/// What handling one message came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handled {
    /// Acknowledged (published or a duplicate) or dead-lettered.
    Done,
    /// Left for a later delivery (the hub asked to retry, or the
    /// dead-letter publish failed).
    Later,
}

struct Worker {
    hub: Hub,
    js: jetstream::Context,
    config: IngestConfig,
    consumer: PullConsumer,
    stopped: watch::Receiver<bool>,
}

impl Worker {
    async fn run(mut self) {
        let mut pause = MIN_PAUSE;
        while !*self.stopped.borrow() {
            let ok = self.one_batch().await;
            if *self.stopped.borrow() {
                break;
            }
            if ok {
                pause = MIN_PAUSE;
                continue;
            }
            let mut stopped = self.stopped.clone();
            tokio::select! {
                _ = stopped.wait_for(|s| *s) => break,
                _ = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(MAX_PAUSE);
        }
        tracing::info!("ingest: consumer stopped");
    }

    /// Fetches one batch and handles it. `false` when something failed and
    /// the next fetch should wait.
    async fn one_batch(&mut self) -> bool {
        let mut stopped = self.stopped.clone();
        let request = self
            .consumer
            .batch()
            .max_messages(self.config.batch)
            .expires(FETCH_WAIT)
            .messages();
        let batch = tokio::select! {
            _ = stopped.wait_for(|s| *s) => return true,
            b = request => b,
        };
        let mut batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "ingest: fetch failed; will retry");
                self.reensure().await;
                return false;
            }
        };
        // The server ends the request by FETCH_WAIT; past that (plus a
        // margin), with nothing buffered, it was lost or nobody answers it:
        // the server restarted, perhaps without the consumer (a pull request
        // to a missing consumer gets no answer at all).
        let deadline = Instant::now() + FETCH_WAIT + Duration::from_secs(1);
        let mut ok = true;
        loop {
            let next = tokio::select! {
                biased;
                _ = stopped.wait_for(|s| *s) => return true,
                m = batch.next() => Some(m),
                _ = tokio::time::sleep_until(deadline) => None,
            };
            let Some(next) = next else {
                tracing::debug!(
                    "ingest: the fetch got no answer; checking the stream and consumer"
                );
                self.reensure().await;
                return false;
            };
            match next {
                None => return ok,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "ingest: fetch ended with an error; will retry");
                    self.reensure().await;
                    return false;
                }
                Some(Ok(msg)) => {
                    let grace = async {
                        let mut s = self.stopped.clone();
                        let _ = s.wait_for(|s| *s).await;
                        tokio::time::sleep(STOP_GRACE).await;
                    };
                    let handled = tokio::select! {
                        h = self.handle(&msg) => h,
                        _ = grace => return true,
                    };
                    if handled == Handled::Later {
                        ok = false;
                    }
                }
            }
        }
    }

    /// After a failed fetch: make sure the stream and consumer still exist
    /// (a server restarted without its data has neither). Failures are
    /// logged; the next fetch tries again.
    /// Gives up at once when the consumer is stopped (with the server down,
    /// each request would wait for its timeout).
    async fn reensure(&mut self) {
        let mut stopped = self.stopped.clone();
        let result = tokio::select! {
            _ = stopped.wait_for(|s| *s) => return,
            r = setup(&self.js, &self.config) => r,
        };
        match result {
            Ok(consumer) => self.consumer = consumer,
            Err(e) => tracing::warn!(error = %e, "ingest: cannot check the stream and consumer"),
        }
    }

    async fn handle(&self, msg: &jetstream::Message) -> Handled {
        let (stream, sequence, delivered) = match msg.info() {
            Ok(info) => (
                info.stream.to_owned(),
                info.stream_sequence,
                u32::try_from(info.delivered).unwrap_or(u32::MAX),
            ),
            Err(e) => {
                // Not a JetStream delivery (no ack subject): nothing to ack.
                tracing::warn!(error = %e, subject = %msg.subject, "ingest: a message without JetStream metadata; ignored");
                return Handled::Done;
            }
        };
        let msg_id = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
            .map(|v| v.as_str().to_owned());
        let result = match IngestMessage::from_json(&msg.payload) {
            Ok(mut m) => {
                if m.idempotency_key.is_none() {
                    m.idempotency_key = Some(match &msg_id {
                        Some(id) if !id.is_empty() && id.len() <= MAX_KEY_LEN => id.clone(),
                        _ => format!("{stream}:{sequence}"),
                    });
                }
                // Past claim_idle the entry goes to another node anyway.
                let limit = self.config.claim_idle;
                match tokio::time::timeout(limit, self.hub.ingest(m)).await {
                    Ok(r) => r,
                    Err(_) => Err(IngestError::Retry(format!(
                        "the publish did not finish within claim_idle ({limit:?})"
                    ))),
                }
            }
            Err(e) => Err(e),
        };
        let entry = Entry {
            stream: &stream,
            sequence,
            delivered,
            msg_id: msg_id.as_deref(),
        };
        match result {
            Ok(_) => {
                ack(msg, AckKind::Ack, &entry).await;
                Handled::Done
            }
            Err(IngestError::Reject(reason)) => self.dead_letter(msg, &reason, &entry).await,
            Err(IngestError::Retry(reason)) if delivered >= self.config.max_deliveries => {
                let reason = format!("still failing on delivery {delivered}: {reason}");
                self.dead_letter(msg, &reason, &entry).await
            }
            Err(e) => {
                tracing::warn!(%stream, sequence, delivered, error = %e, "ingest: publish failed; the entry comes back later");
                ack(msg, AckKind::Nak(Some(self.config.claim_idle)), &entry).await;
                Handled::Later
            }
        }
    }

    /// Publishes the entry to the dead-letter subject and terminates it; if
    /// that publish fails, `-NAK`s it instead.
    async fn dead_letter(&self, msg: &jetstream::Message, reason: &str, e: &Entry<'_>) -> Handled {
        let mut headers = HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("{}:{}", e.stream, e.sequence),
        );
        headers.insert("Wshub-Error", header_value(reason));
        headers.insert("Wshub-Stream", header_value(e.stream));
        headers.insert("Wshub-Sequence", e.sequence.to_string());
        headers.insert("Wshub-Deliveries", e.delivered.to_string());
        if let Some(id) = e.msg_id {
            headers.insert("Wshub-Msg-Id", header_value(id));
        }
        let published = async {
            self.js
                .publish_with_headers(
                    self.config.dead_letter.clone(),
                    headers,
                    msg.payload.clone(),
                )
                .await?
                .await
        };
        match published.await {
            Ok(_) => {
                tracing::warn!(stream = %e.stream, sequence = e.sequence, deliveries = e.delivered, %reason, dead_letter = %self.config.dead_letter, "ingest: entry dead-lettered");
                ack(msg, AckKind::Term, e).await;
                Handled::Done
            }
            Err(err) => {
                let last = e.delivered >= self.config.max_deliveries;
                if last {
                    tracing::error!(stream = %e.stream, sequence = e.sequence, %reason, error = %err, "ingest: cannot dead-letter an entry on its last delivery; it stays in the stream unacknowledged");
                } else {
                    tracing::warn!(stream = %e.stream, sequence = e.sequence, %reason, error = %err, "ingest: cannot dead-letter an entry; it comes back later");
                }
                ack(msg, AckKind::Nak(Some(self.config.claim_idle)), e).await;
                Handled::Later
            }
        }
    }
}

/// Where an entry came from, for dead letters and logs.
struct Entry<'a> {
    stream: &'a str,
    sequence: u64,
    delivered: u32,
    msg_id: Option<&'a str>,
}

/// Sends `kind`; a failure only means the entry is delivered again after
/// `claim_idle`, where its idempotency key keeps it from reaching clients
/// twice.
async fn ack(msg: &jetstream::Message, kind: AckKind, e: &Entry<'_>) {
    if let Err(err) = msg.ack_with(kind).await {
        tracing::warn!(stream = %e.stream, sequence = e.sequence, ?kind, error = %err, "ingest: cannot answer the server; the entry will be delivered again");
    }
}
