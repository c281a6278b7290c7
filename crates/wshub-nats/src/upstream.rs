//! [`NatsUpstream`]: client publications on upstream namespaces appended to
//! a JetStream stream.
//!
//! Each [`UpstreamMessage`] becomes one JetStream message on
//! `upstream.subject`, body = the client's JSON data byte for byte, with
//! headers:
//!
//! | header | value |
//! |---|---|
//! | `Nats-Msg-Id` | the publish's id (`{client}-{n}`): JetStream stores a retried append once within the stream's duplicate window |
//! | `Wshub-Channel` | the channel |
//! | `Wshub-User` | the publishing user's id (empty for anonymous clients) |
//! | `Wshub-Client` | the publishing connection's client id |
//! | `Wshub-Time` | when the hub received it, milliseconds since the Unix epoch |
//!
//! Header values have control characters replaced by spaces (a header block
//! cannot carry line breaks). The append resolves only after the stream's
//! publish ack; a lost connection or a missing ack fail it, and the hub
//! answers the client with error 108 (it also bounds the wait by
//! `upstream.timeout`). A stream that vanished (a server restarted without
//! its data) is created again and the append retried once.

use async_nats::jetstream::{self, context::PublishErrorKind};
use async_nats::HeaderMap;
use wshub::hub::broker::BoxFuture;
use wshub::hub::config::UpstreamConfig;
use wshub::hub::queue::{Upstream, UpstreamError, UpstreamMessage};

use crate::{ensure_stream, header_value, NatsError};

/// The hub's [`Upstream`] on a JetStream stream. Install it with
/// [`Hub::set_upstream`](wshub::hub::Hub::set_upstream).
#[derive(Debug, Clone)]
pub struct NatsUpstream {
    js: jetstream::Context,
    stream: String,
    subject: String,
    max_len: u64,
}

impl NatsUpstream {
    /// Makes sure stream `config.stream` exists and captures
    /// `config.subject` (created with `max_msgs = config.max_len` when
    /// non-zero if missing; used as it is otherwise) and returns the
    /// upstream. Publish acks are awaited for at most `config.timeout`.
    pub async fn start(
        client: async_nats::Client,
        config: &UpstreamConfig,
    ) -> Result<NatsUpstream, NatsError> {
        let mut js = jetstream::new(client);
        js.set_timeout(config.timeout);
        ensure_stream(&js, &config.stream, &config.subject, config.max_len).await?;
        tracing::info!(stream = %config.stream, subject = %config.subject, "upstream: nats jetstream");
        Ok(NatsUpstream {
            js,
            stream: config.stream.clone(),
            subject: config.subject.clone(),
            max_len: config.max_len,
        })
    }

    /// Publishes `msg`; when no stream captures the subject any more (the
    /// server came back without its data), creates it again and retries
    /// once. The same `Nats-Msg-Id` makes the retry safe.
    async fn append_once_stored(&self, msg: &UpstreamMessage) -> Result<(), UpstreamError> {
        match self.publish(msg).await {
            Err(e) if e.kind() == PublishErrorKind::StreamNotFound => {
                tracing::warn!(stream = %self.stream, "upstream: no stream captures the subject; creating it again");
                ensure_stream(&self.js, &self.stream, &self.subject, self.max_len)
                    .await
                    .map_err(|e| UpstreamError::Unavailable(e.to_string()))?;
                self.publish(msg).await.map_err(publish_error)
            }
            other => other.map_err(publish_error),
        }
    }

    async fn publish(&self, msg: &UpstreamMessage) -> Result<(), jetstream::context::PublishError> {
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, header_value(&msg.id));
        headers.insert("Wshub-Channel", header_value(&msg.channel));
        headers.insert("Wshub-User", header_value(&msg.user));
        headers.insert("Wshub-Client", header_value(&msg.client));
        headers.insert("Wshub-Time", msg.time_ms.to_string());
        self.js
            .publish_with_headers(self.subject.clone(), headers, msg.data.clone())
            .await?
            .await?;
        Ok(())
    }
}

/// The stream refused the message (an error answer from JetStream, e.g.
/// too large) or could not be reached (everything else).
fn publish_error(e: jetstream::context::PublishError) -> UpstreamError {
    let refused = e.kind() == PublishErrorKind::Other
        && std::error::Error::source(&e)
            .is_some_and(|s| s.downcast_ref::<jetstream::Error>().is_some());
    if refused {
        UpstreamError::Rejected(e.to_string())
    } else {
        UpstreamError::Unavailable(e.to_string())
    }
}

impl Upstream for NatsUpstream {
    fn append<'a>(&'a self, msg: &'a UpstreamMessage) -> BoxFuture<'a, Result<(), UpstreamError>> {
        Box::pin(self.append_once_stored(msg))
    }
}
