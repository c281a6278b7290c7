//! The payloads of `wshub bench` and their checks.
//!
//! A WebSocket payload (echo, fanout) is a header — sequence number and send
//! time (nanoseconds since the bench started, monotonic) — followed by a
//! deterministic filler that depends on the sequence number and a per-sender
//! salt: binary messages carry the two numbers as little-endian `u64`s, text
//! messages as 16 lowercase hex digits each. A hub publication's `data` is the
//! JSON `{"seq":K,"t":T,"pad":"…"}` with the same kind of filler.
//!
//! Payloads are written into one reused [`BytesMut`]: once the driver has
//! encoded a message and dropped it, `reserve` reclaims the memory, so the
//! sender does not allocate per message. Checks compare slices of a
//! precomputed pattern in place.

use bytes::{BufMut, Bytes, BytesMut};
use wshub::proto::message::Text;
use wshub::Message;

/// The filler alphabet's length; the pattern repeats with this period.
const PERIOD: usize = 26;
const HEX: &[u8; 16] = b"0123456789abcdef";

/// A repeating `a..z` pattern long enough for any filler of `len` bytes at any
/// phase.
#[derive(Debug, Clone)]
pub(crate) struct Pattern(Vec<u8>);

impl Pattern {
    pub(crate) fn new(len: usize) -> Pattern {
        Pattern(
            (0..len + PERIOD)
                .map(|i| b'a' + (i % PERIOD) as u8)
                .collect(),
        )
    }

    /// The filler of `len` bytes at phase `phase`.
    pub(crate) fn slice(&self, phase: u64, len: usize) -> &[u8] {
        let start = (phase % PERIOD as u64) as usize;
        &self.0[start..start + len]
    }
}

/// Why a received payload is not what was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Mismatch {
    Kind,
    Length(usize),
    Header,
    Filler(u64),
    Json(&'static str),
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mismatch::Kind => f.write_str("wrong message type (text/binary)"),
            Mismatch::Length(n) => write!(f, "wrong length {n}"),
            Mismatch::Header => f.write_str("corrupt header"),
            Mismatch::Filler(seq) => write!(f, "corrupt filler in message {seq}"),
            Mismatch::Json(what) => write!(f, "unexpected hub push: {what}"),
        }
    }
}

/// The WebSocket payload format of `echo` and `fanout`.
#[derive(Debug, Clone)]
pub(crate) struct Frames {
    size: usize,
    binary: bool,
    pattern: Pattern,
}

impl Frames {
    /// Payloads of `size` bytes (at least the header: 16 bytes binary, 32 text).
    pub(crate) fn new(size: usize, binary: bool) -> anyhow::Result<Frames> {
        let min = Self::header_len_for(binary);
        if size < min {
            anyhow::bail!(
                "--size must be at least {min} bytes for {} messages (sequence number and timestamp)",
                if binary { "binary" } else { "text" }
            );
        }
        Ok(Frames {
            size,
            binary,
            pattern: Pattern::new(size),
        })
    }

    fn header_len_for(binary: bool) -> usize {
        if binary {
            16
        } else {
            32
        }
    }

    fn header_len(&self) -> usize {
        Self::header_len_for(self.binary)
    }

    /// Writes message `seq` sent at `t` into `arena` and returns it.
    pub(crate) fn write(&self, arena: &mut BytesMut, seq: u64, t: u64, salt: u64) -> Message {
        if arena.capacity() < self.size {
            // Reclaims the buffer once earlier messages were dropped; allocates
            // a fresh block (for many messages) only while they are in flight.
            arena.reserve(self.size.max(64 * 1024));
        }
        if self.binary {
            arena.put_u64_le(seq);
            arena.put_u64_le(t);
        } else {
            put_hex(arena, seq);
            put_hex(arena, t);
        }
        let filler = self.size - self.header_len();
        arena.extend_from_slice(self.pattern.slice(seq.wrapping_add(salt), filler));
        let bytes = arena.split().freeze();
        if self.binary {
            Message::Binary(bytes)
        } else {
            // ASCII only: always valid UTF-8.
            match Text::from_bytes(bytes) {
                Ok(t) => Message::Text(t),
                Err(_) => Message::Binary(Bytes::new()),
            }
        }
    }

    /// Checks `msg` byte for byte; returns its sequence number and send time.
    pub(crate) fn check(&self, msg: &Message, salt: u64) -> Result<(u64, u64), Mismatch> {
        if matches!(msg, Message::Binary(_)) != self.binary {
            return Err(Mismatch::Kind);
        }
        let p = msg.payload();
        if p.len() != self.size {
            return Err(Mismatch::Length(p.len()));
        }
        let (seq, t) = if self.binary {
            let n = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
            (n(&p[..8]), n(&p[8..16]))
        } else {
            (
                parse_hex(&p[..16]).ok_or(Mismatch::Header)?,
                parse_hex(&p[16..32]).ok_or(Mismatch::Header)?,
            )
        };
        let filler = self.size - self.header_len();
        if p[self.header_len()..] != *self.pattern.slice(seq.wrapping_add(salt), filler) {
            return Err(Mismatch::Filler(seq));
        }
        Ok((seq, t))
    }
}

fn put_hex(out: &mut BytesMut, v: u64) {
    for i in (0..16).rev() {
        out.put_u8(HEX[((v >> (i * 4)) & 0xf) as usize]);
    }
}

fn parse_hex(s: &[u8]) -> Option<u64> {
    s.iter().try_fold(0u64, |acc, &c| {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        Some(acc << 4 | u64::from(d))
    })
}

/// The `data` of hub publications: `{"seq":K,"t":T,"pad":"…"}`.
#[derive(Debug, Clone)]
pub(crate) struct HubData {
    pad: usize,
    pattern: Pattern,
}

/// A parsed `pub` push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Delivery {
    pub(crate) offset: u64,
    pub(crate) seq: u64,
    pub(crate) t: u64,
}

impl HubData {
    /// Data of about `size` bytes (the pad is `size` minus the other fields'
    /// typical 48 bytes).
    pub(crate) fn new(size: usize) -> HubData {
        let pad = size.saturating_sub(48);
        HubData {
            pad,
            pattern: Pattern::new(pad),
        }
    }

    /// Appends the data JSON of publication `seq` at `t` to `out`.
    pub(crate) fn write(&self, out: &mut Vec<u8>, seq: u64, t: u64) {
        use std::io::Write;
        let _ = write!(out, "{{\"seq\":{seq},\"t\":{t},\"pad\":\"");
        out.extend_from_slice(self.pattern.slice(seq, self.pad));
        out.extend_from_slice(b"\"}");
    }

    /// Checks a text frame from the hub. `Ok(None)` for frames that are not
    /// `pub` pushes (replies, other pushes); otherwise the push must be on
    /// `channel` and carry exactly the data [`write`](Self::write) produces.
    pub(crate) fn check(&self, frame: &[u8], channel: &[u8]) -> Result<Option<Delivery>, Mismatch> {
        let Some(kind) = after(frame, b"\"push\":\"") else {
            return Ok(None);
        };
        if !kind.starts_with(b"pub\"") {
            return Ok(None);
        }
        let ch = after(frame, b"\"channel\":\"").ok_or(Mismatch::Json("no channel"))?;
        if !ch.starts_with(channel) || ch.get(channel.len()) != Some(&b'"') {
            return Err(Mismatch::Json("wrong channel"));
        }
        let offset = after(frame, b"\"offset\":")
            .and_then(|s| number(s).map(|(n, _)| n))
            .ok_or(Mismatch::Json("no offset"))?;
        let data = after(frame, b"\"data\":{").ok_or(Mismatch::Json("no data object"))?;
        let end = data
            .iter()
            .position(|&c| c == b'}')
            .ok_or(Mismatch::Json("unterminated data"))?;
        let data = &data[..end];
        let seq = after(data, b"\"seq\":")
            .and_then(number)
            .ok_or(Mismatch::Json("no seq"))?
            .0;
        let t = after(data, b"\"t\":")
            .and_then(number)
            .ok_or(Mismatch::Json("no t"))?
            .0;
        let pad = after(data, b"\"pad\":\"").ok_or(Mismatch::Json("no pad"))?;
        if pad.len() < self.pad + 1
            || pad[self.pad] != b'"'
            || pad[..self.pad] != *self.pattern.slice(seq, self.pad)
        {
            return Err(Mismatch::Filler(seq));
        }
        // seq, t, pad and the separators: nothing else in the object.
        let expected_len = data.len();
        let actual = 6 + digits(seq) + 5 + digits(t) + 8 + self.pad + 1;
        if expected_len != actual {
            return Err(Mismatch::Json("extra fields in data"));
        }
        Ok(Some(Delivery { offset, seq, t }))
    }
}

fn digits(mut n: u64) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

/// The bytes after the first occurrence of `needle`.
fn after<'a>(hay: &'a [u8], needle: &[u8]) -> Option<&'a [u8]> {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .map(|i| &hay[i + needle.len()..])
}

/// A decimal number at the start of `s`, and its length.
fn number(s: &[u8]) -> Option<(u64, usize)> {
    let len = s.iter().take_while(|c| c.is_ascii_digit()).count();
    if len == 0 || len > 19 {
        return None;
    }
    let n = s[..len]
        .iter()
        .fold(0u64, |acc, &c| acc * 10 + u64::from(c - b'0'));
    Some((n, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_detect_corruption() {
        for binary in [false, true] {
            let f = Frames::new(100, binary).unwrap();
            let mut arena = BytesMut::new();
            let m = f.write(&mut arena, 42, 123_456_789, 7);
            assert_eq!(m.len(), 100);
            assert_eq!(f.check(&m, 7), Ok((42, 123_456_789)));
            assert_eq!(f.check(&m, 8), Err(Mismatch::Filler(42)));
            let mut bad = m.payload().to_vec();
            bad[60] ^= 1;
            let bad = if binary {
                Message::Binary(bad.into())
            } else {
                Message::Text(Text::from_bytes(bad.into()).unwrap())
            };
            assert!(f.check(&bad, 7).is_err());
        }
        assert!(Frames::new(20, false).is_err());
    }

    #[test]
    fn hub_data_round_trip() {
        let d = HubData::new(100);
        let mut data = Vec::new();
        d.write(&mut data, 5, 999);
        let push = format!(
            r#"{{"push":"pub","channel":"bench:1","offset":7,"epoch":"e","data":{},"info":{{"client":"x","user":"u"}}}}"#,
            String::from_utf8(data.clone()).unwrap()
        );
        assert_eq!(
            d.check(push.as_bytes(), b"bench:1"),
            Ok(Some(Delivery {
                offset: 7,
                seq: 5,
                t: 999
            }))
        );
        assert!(d.check(push.as_bytes(), b"bench:10").is_err());
        assert!(d.check(push.as_bytes(), b"bench:").is_err());
        let bad = push.replace("\"pad\":\"f", "\"pad\":\"g");
        assert!(d.check(bad.as_bytes(), b"bench:1").is_err());
        assert_eq!(d.check(br#"{"id":1,"result":{}}"#, b"bench:1"), Ok(None));
    }
}
