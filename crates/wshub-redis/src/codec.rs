//! How publications and join/leave events are encoded in Redis: in history
//! stream entries and in pub/sub messages.
//!
//! A publication **body** is one line of compact JSON metadata (publisher,
//! tags, audience; empty parts omitted) followed by `\n` and the data bytes,
//! untouched: the hub validated them and no node parses them again. Compact
//! JSON never contains a raw newline, so the first `\n` ends the metadata.
//!
//! A pub/sub **message** is one of
//!
//! * `p\n{offset}\n{epoch}\n{body}` — a publication (the Lua script adds the
//!   offset and epoch it assigned),
//! * `j\n{ClientInfo JSON}` — a join, `l\n{ClientInfo JSON}` — a leave.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use wshub::hub::broker::{Audience, BrokerEvent, Publication};
use wshub::hub::protocol::ClientInfo;

/// Why a stored or received message could not be decoded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DecodeError {
    /// The framing (kind, separators, offset) is wrong.
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    /// The metadata or client info is not the expected JSON.
    #[error("bad JSON in message: {0}")]
    Json(#[from] serde_json::Error),
}

/// The metadata line of a publication body.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Meta {
    #[serde(default, rename = "i", skip_serializing_if = "Option::is_none")]
    info: Option<ClientInfo>,
    #[serde(default, rename = "t", skip_serializing_if = "BTreeMap::is_empty")]
    tags: BTreeMap<String, String>,
    #[serde(default, rename = "a", skip_serializing_if = "Audience::is_everyone")]
    audience: Audience,
}

/// Encodes a publication body (everything but offset and epoch).
pub(crate) fn encode_body(
    data: &[u8],
    info: Option<ClientInfo>,
    tags: BTreeMap<String, String>,
    audience: Audience,
) -> Result<Vec<u8>, serde_json::Error> {
    let meta = Meta {
        info,
        tags,
        audience,
    };
    let mut out = serde_json::to_vec(&meta)?;
    out.reserve(data.len() + 1);
    out.push(b'\n');
    out.extend_from_slice(data);
    Ok(out)
}

/// Decodes a publication body stored or sent with `offset`.
pub(crate) fn decode_body(offset: u64, body: &[u8]) -> Result<Publication, DecodeError> {
    let (meta, data) = split_line(body).ok_or(DecodeError::Malformed("no metadata line"))?;
    let meta: Meta = serde_json::from_slice(meta)?;
    Ok(Publication {
        offset,
        data: Bytes::copy_from_slice(data),
        info: meta.info,
        tags: meta.tags,
        audience: meta.audience,
    })
}

/// Decodes a pub/sub message received on `channel`'s pub/sub channel.
pub(crate) fn decode_message(channel: &str, message: &[u8]) -> Result<BrokerEvent, DecodeError> {
    let (kind, rest) = split_line(message).ok_or(DecodeError::Malformed("no kind"))?;
    match kind {
        b"p" => {
            let (offset, rest) = split_line(rest).ok_or(DecodeError::Malformed("no offset"))?;
            let (epoch, body) = split_line(rest).ok_or(DecodeError::Malformed("no epoch"))?;
            let offset = parse_offset(offset).ok_or(DecodeError::Malformed("bad offset"))?;
            let epoch = std::str::from_utf8(epoch)
                .map_err(|_| DecodeError::Malformed("epoch is not UTF-8"))?
                .to_owned();
            Ok(BrokerEvent::Publication {
                channel: channel.to_owned(),
                publication: decode_body(offset, body)?,
                epoch,
            })
        }
        b"j" => Ok(BrokerEvent::Join {
            channel: channel.to_owned(),
            member: serde_json::from_slice(rest)?,
        }),
        b"l" => Ok(BrokerEvent::Leave {
            channel: channel.to_owned(),
            member: serde_json::from_slice(rest)?,
        }),
        _ => Err(DecodeError::Malformed("unknown kind")),
    }
}

/// Parses a decimal offset or a stream id `{offset}-0`.
pub(crate) fn parse_offset(text: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(text).ok()?;
    let digits = text.strip_suffix("-0").unwrap_or(text);
    digits.parse().ok()
}

fn split_line(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = bytes.iter().position(|&b| b == b'\n')?;
    Some((&bytes[..at], &bytes[at + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wshub::hub::broker::TagFilter;

    fn member() -> ClientInfo {
        ClientInfo {
            client: "c1".into(),
            user: "u\n1".into(),
            info: Some(serde_json::json!({"name": "a\nb"})),
        }
    }

    #[test]
    fn bodies_round_trip() -> Result<(), DecodeError> {
        let tags = BTreeMap::from([("k".to_owned(), "v\n".to_owned())]);
        let audience = Audience {
            except_client: Some("c2".into()),
            filter: Some(TagFilter(BTreeMap::from([(
                "region".to_owned(),
                vec!["eu".to_owned()],
            )]))),
        };
        let data = b"{\"text\":\"multi\\nline\"}\n";
        let body = encode_body(data, Some(member()), tags.clone(), audience.clone())?;
        let p = decode_body(7, &body)?;
        assert_eq!(p.offset, 7);
        assert_eq!(&p.data[..], data);
        assert_eq!(p.info, Some(member()));
        assert_eq!(p.tags, tags);
        assert_eq!(p.audience, audience);
        // Empty metadata stays small.
        let body = encode_body(b"1", None, BTreeMap::new(), Audience::default())?;
        assert_eq!(body, b"{}\n1");
        Ok(())
    }

    #[test]
    fn messages_decode() -> Result<(), DecodeError> {
        let mut msg = b"p\n42\nepoch1\n".to_vec();
        msg.extend(encode_body(
            b"[1]",
            None,
            BTreeMap::new(),
            Audience::default(),
        )?);
        match decode_message("ch", &msg)? {
            BrokerEvent::Publication {
                channel,
                publication,
                epoch,
            } => {
                assert_eq!(channel, "ch");
                assert_eq!(publication.offset, 42);
                assert_eq!(&publication.data[..], b"[1]");
                assert_eq!(epoch, "epoch1");
            }
            other => panic!("{other:?}"),
        }
        let join = [b"j\n".as_slice(), &serde_json::to_vec(&member())?].concat();
        assert_eq!(
            decode_message("ch", &join)?,
            BrokerEvent::Join {
                channel: "ch".into(),
                member: member()
            }
        );
        let leave = [b"l\n".as_slice(), &serde_json::to_vec(&member())?].concat();
        assert!(matches!(
            decode_message("ch", &leave)?,
            BrokerEvent::Leave { .. }
        ));
        assert!(decode_message("ch", b"x\n").is_err());
        assert!(decode_message("ch", b"p\nnope\ne\n{}\n1").is_err());
        assert!(decode_message("ch", b"garbage").is_err());
        Ok(())
    }

    #[test]
    fn offsets_parse() {
        assert_eq!(parse_offset(b"12-0"), Some(12));
        assert_eq!(parse_offset(b"12"), Some(12));
        assert_eq!(parse_offset(b"x"), None);
    }
}
