//! The hub's side of the message-queue bridges: what an ingest consumer
//! hands the hub, and what the hub hands an upstream stream.
//!
//! The bridges themselves (a Redis Stream consumer group in `wshub-redis`, a
//! NATS JetStream consumer in `wshub-nats`) live in the engine crates; this
//! module is the contract they share, so neither the hub nor the session
//! knows which queue is behind it.
//!
//! * **Ingest** ([`Hub::ingest`]): a queue entry becomes an
//!   [`IngestMessage`] — the same fields as the body of `POST /api/publish`,
//!   bounded the same way — and is published. The result tells the consumer
//!   what to do with the entry: acknowledge it (published, or a duplicate of
//!   an earlier delivery with the same idempotency key), retry it later
//!   ([`IngestError::Retry`]: the broker is unavailable), or dead-letter it
//!   ([`IngestError::Reject`]: it can never be published).
//! * **Upstream** ([`Upstream`]): in a namespace with `upstream = "also"` or
//!   `"only"`, a client's `publish` is first appended to the upstream stream
//!   and answered only once the queue acknowledged it, so every publish a
//!   client saw succeed is in the stream at least once. Each
//!   [`UpstreamMessage`] carries an id unique to that publish, which NATS
//!   uses to drop a retried duplicate.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::broker::{Audience, BoxFuture, TagFilter};
use super::core::{Hub, OpError, PublishRequest};
use super::metrics::PublishSource;
use super::protocol::{self, ErrorCode, Position};

/// Most tags on one publication.
pub(crate) const MAX_TAGS: usize = 32;
/// Longest tag key or value, and filter key or value, in bytes.
pub(crate) const MAX_TAG_LEN: usize = 128;
/// Longest idempotency key or `except_client`, in bytes.
pub(crate) const MAX_KEY_LEN: usize = 128;
/// Most values over all keys of one tag filter.
pub(crate) const MAX_FILTER_VALUES: usize = 64;

/// Checks the sizes of a publication's options (they are stored with the
/// publication and travel to every node). The error names the field.
pub(crate) fn check_publication_options(
    tags: &BTreeMap<String, String>,
    idempotency_key: Option<&str>,
    except_client: Option<&str>,
    filter: Option<&TagFilter>,
) -> Result<(), String> {
    if tags.len() > MAX_TAGS {
        return Err(format!("`tags`: at most {MAX_TAGS} tags"));
    }
    if let Some((k, _)) = tags
        .iter()
        .find(|(k, v)| k.is_empty() || k.len() > MAX_TAG_LEN || v.len() > MAX_TAG_LEN)
    {
        return Err(format!(
            "`tags`: tag {:?}: keys 1 to {MAX_TAG_LEN} bytes, values at most {MAX_TAG_LEN}",
            k.chars().take(32).collect::<String>()
        ));
    }
    for (name, value) in [
        ("idempotency_key", idempotency_key),
        ("except_client", except_client),
    ] {
        if let Some(v) = value {
            if v.is_empty() || v.len() > MAX_KEY_LEN {
                return Err(format!("`{name}` must be 1 to {MAX_KEY_LEN} bytes"));
            }
        }
    }
    if let Some(filter) = filter {
        let values: usize = filter.0.values().map(Vec::len).sum();
        let long = filter
            .0
            .iter()
            .any(|(k, vs)| k.len() > MAX_TAG_LEN || vs.iter().any(|v| v.len() > MAX_TAG_LEN));
        if filter.0.len() > MAX_TAGS || values > MAX_FILTER_VALUES || long {
            return Err(format!(
                "`filter`: at most {MAX_TAGS} keys and {MAX_FILTER_VALUES} values of at most {MAX_TAG_LEN} bytes"
            ));
        }
    }
    Ok(())
}

/// A publication read from an ingest queue: the fields of a
/// `POST /api/publish` body.
#[derive(Debug, Clone, PartialEq)]
pub struct IngestMessage {
    /// The channel to publish to.
    pub channel: String,
    /// The data: JSON text, checked by [`Hub::ingest`] and delivered byte
    /// for byte.
    pub data: Bytes,
    /// Metadata kept with the publication.
    pub tags: BTreeMap<String, String>,
    /// Deduplicates redeliveries: a second publish with the same key on the
    /// channel (within the namespace's history TTL) is not delivered again.
    /// Consumers set it from the entry's own key, or else from the entry's
    /// id in the queue, which stays the same across redeliveries.
    pub idempotency_key: Option<String>,
    /// Every subscriber but this client receives it.
    pub except_client: Option<String>,
    /// Only subscribers whose connection tags match receive it.
    pub filter: Option<TagFilter>,
}

/// The body of `POST /api/publish` and `/api/broadcast` (one of `channel`
/// and `channels`), which is also an ingest entry's JSON form.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PublishBody {
    pub(crate) channel: Option<String>,
    pub(crate) channels: Option<Vec<String>>,
    pub(crate) data: Box<RawValue>,
    #[serde(default)]
    pub(crate) tags: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) idempotency_key: Option<String>,
    #[serde(default)]
    pub(crate) except_client: Option<String>,
    #[serde(default)]
    pub(crate) filter: Option<TagFilter>,
}

impl IngestMessage {
    /// A publication of `data` (JSON text) to `channel` with no options.
    pub fn new(channel: impl Into<String>, data: impl Into<Bytes>) -> IngestMessage {
        IngestMessage {
            channel: channel.into(),
            data: data.into(),
            tags: BTreeMap::new(),
            idempotency_key: None,
            except_client: None,
            filter: None,
        }
    }

    /// Parses a JSON object with the fields of a `POST /api/publish` body:
    /// `channel` and `data` (any JSON value) required, `tags`,
    /// `idempotency_key`, `except_client` and `filter` optional. Unknown
    /// fields are rejected, like the API does.
    pub fn from_json(body: &[u8]) -> Result<IngestMessage, IngestError> {
        let b: PublishBody = serde_json::from_slice(body)
            .map_err(|e| IngestError::Reject(format!("not a publication: {e}")))?;
        if b.channels.is_some() {
            return Err(IngestError::Reject(
                "not a publication: `channels` is for broadcasts; use `channel`".to_owned(),
            ));
        }
        let Some(channel) = b.channel else {
            return Err(IngestError::Reject(
                "not a publication: missing field `channel`".to_owned(),
            ));
        };
        Ok(IngestMessage {
            channel,
            data: Bytes::copy_from_slice(b.data.get().as_bytes()),
            tags: b.tags,
            idempotency_key: b.idempotency_key,
            except_client: b.except_client,
            filter: b.filter,
        })
    }
}

/// Why [`Hub::ingest`] did not publish an entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    /// The entry can never be published as it is (invalid channel, unknown
    /// namespace, data not JSON, too large, options out of bounds): send it
    /// to the dead-letter stream with this reason and acknowledge it.
    #[error("rejected: {0}")]
    Reject(String),
    /// Publishing failed for now (the broker is unavailable): leave the entry
    /// unacknowledged so it is delivered again.
    #[error("retry later: {0}")]
    Retry(String),
}

impl IngestError {
    /// Whether retrying cannot help.
    pub fn is_permanent(&self) -> bool {
        matches!(self, IngestError::Reject(_))
    }
}

impl Hub {
    /// Publishes a message read from an ingest queue, with the same checks as
    /// `POST /api/publish`. `Ok` means the entry may be acknowledged (also
    /// when the idempotency key shows it was published before: the original
    /// position is returned and nothing is delivered twice).
    pub async fn ingest(&self, msg: IngestMessage) -> Result<Position, IngestError> {
        let IngestMessage {
            channel,
            data,
            tags,
            idempotency_key,
            except_client,
            filter,
        } = msg;
        protocol::check_channel(&channel).map_err(|reason| {
            IngestError::Reject(format!("invalid channel {channel:?}: {reason}"))
        })?;
        if let Err(e) = serde_json::from_slice::<&RawValue>(&data) {
            return Err(IngestError::Reject(format!("`data` is not JSON: {e}")));
        }
        check_publication_options(
            &tags,
            idempotency_key.as_deref(),
            except_client.as_deref(),
            filter.as_ref(),
        )
        .map_err(IngestError::Reject)?;
        let req = PublishRequest {
            data,
            info: None,
            tags,
            audience: Audience {
                except_client,
                filter,
            },
            idempotency_key,
            source: PublishSource::Ingest,
        };
        self.publish(&channel, req).await.map_err(|e: OpError| {
            // The broker's failures arrive as `Internal`; everything else is
            // about the entry itself.
            if e.code == ErrorCode::Internal {
                IngestError::Retry(e.message)
            } else {
                IngestError::Reject(format!("{} ({})", e.message, e.code.code()))
            }
        })
    }

    /// Installs the stream that client publications on upstream namespaces
    /// are appended to, replacing any earlier one. Until one is installed,
    /// such publications fail with error 108.
    pub fn set_upstream(&self, upstream: Arc<dyn Upstream>) {
        let mut slot = self
            .inner
            .upstream
            .write()
            .unwrap_or_else(|p| p.into_inner());
        *slot = Some(upstream);
    }

    /// Appends a client publication to the upstream stream, waiting at most
    /// `upstream.timeout` for the acknowledgement.
    pub(crate) async fn append_upstream(&self, msg: UpstreamMessage) -> Result<(), OpError> {
        let upstream = self
            .inner
            .upstream
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(upstream) = upstream else {
            tracing::error!(channel = %msg.channel, "upstream publication but no upstream stream is installed");
            return Err(OpError::with(
                ErrorCode::NotAvailable,
                "the upstream stream is not available",
            ));
        };
        let timeout: Duration = self.inner.config.upstream.timeout;
        match tokio::time::timeout(timeout, upstream.append(&msg)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                tracing::warn!(channel = %msg.channel, error = %e, "upstream append failed");
                Err(OpError::with(
                    ErrorCode::NotAvailable,
                    format!("the upstream stream is not available: {e}"),
                ))
            }
            Err(_) => {
                tracing::warn!(channel = %msg.channel, ?timeout, "upstream append timed out");
                Err(OpError::with(
                    ErrorCode::NotAvailable,
                    "the upstream stream did not acknowledge in time",
                ))
            }
        }
    }
}

/// A client publication on an upstream channel, as appended to the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamMessage {
    /// Unique to this publish (`{client}-{n}`): a retried append of the same
    /// publish carries the same id, so a queue that deduplicates (NATS
    /// `Nats-Msg-Id`) keeps it once.
    pub id: String,
    /// The channel the client published to.
    pub channel: String,
    /// The data: the client's JSON, as text.
    pub data: Bytes,
    /// The publishing user's id (empty for anonymous clients).
    pub user: String,
    /// The publishing connection's client id.
    pub client: String,
    /// When the hub received it, in milliseconds since the Unix epoch.
    pub time_ms: u64,
}

/// Why an [`Upstream`] append failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// The queue cannot be reached or did not acknowledge.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The queue refused the message (e.g. too large for the stream).
    #[error("rejected: {0}")]
    Rejected(String),
}

/// The stream client publications on upstream channels are appended to.
///
/// Implemented by the engine crates (a Redis Stream, a NATS JetStream
/// stream); install one with [`Hub::set_upstream`].
pub trait Upstream: Send + Sync + 'static {
    /// Appends `msg` and resolves once the queue has acknowledged it (it is
    /// then durable as far as the queue promises). The hub bounds the wait
    /// with `upstream.timeout`.
    fn append<'a>(&'a self, msg: &'a UpstreamMessage) -> BoxFuture<'a, Result<(), UpstreamError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_json_takes_the_api_fields() {
        let m = IngestMessage::from_json(
            br#"{"channel":"news:a","data":{"x":[1, 2]},"tags":{"k":"v"},"idempotency_key":"e1"}"#,
        )
        .unwrap();
        assert_eq!(m.channel, "news:a");
        assert_eq!(&m.data[..], br#"{"x":[1, 2]}"#);
        assert_eq!(m.tags.get("k").map(String::as_str), Some("v"));
        assert_eq!(m.idempotency_key.as_deref(), Some("e1"));

        for bad in [
            &br#"{"data":1}"#[..],
            br#"{"channel":"a"}"#,
            br#"{"channel":"a","data":1,"chanel":"b"}"#,
            br#"{"channels":["a"],"data":1}"#,
            b"not json",
        ] {
            let e = IngestMessage::from_json(bad).unwrap_err();
            assert!(e.is_permanent(), "{e}");
        }
    }

    #[test]
    fn option_bounds_name_the_field() {
        let long = "x".repeat(MAX_KEY_LEN + 1);
        let e = check_publication_options(&BTreeMap::new(), Some(&long), None, None).unwrap_err();
        assert!(e.contains("idempotency_key"), "{e}");
        let tags: BTreeMap<String, String> = (0..=MAX_TAGS)
            .map(|i| (i.to_string(), String::new()))
            .collect();
        let e = check_publication_options(&tags, None, None, None).unwrap_err();
        assert!(e.contains("tags"), "{e}");
        assert!(check_publication_options(&BTreeMap::new(), Some("k"), Some("c"), None).is_ok());
    }
}
