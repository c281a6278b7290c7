//! Application messages: [`Message`], [`Text`] (bytes known to be UTF-8) and
//! [`PreparedMessage`], a frame encoded once and sent to many connections.

use std::fmt;
use std::sync::OnceLock;

use bytes::Bytes;

use crate::frame::{encode_frame, OpCode};

/// UTF-8 text backed by [`Bytes`], so it can be shared and sliced without copying.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Text(Bytes);

impl Text {
    /// Wraps bytes after checking that they are UTF-8.
    pub fn from_bytes(bytes: Bytes) -> Result<Text, crate::utf8::InvalidUtf8> {
        crate::utf8::Utf8Validator::validate(&bytes)?;
        Ok(Text(bytes))
    }

    /// Wraps bytes the caller has already validated.
    pub(crate) fn from_validated(bytes: Bytes) -> Text {
        debug_assert!(std::str::from_utf8(&bytes).is_ok());
        Text(bytes)
    }

    /// The text as `&str`.
    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor validates UTF-8 (`from_bytes`, `From<String>`,
        // `From<&str>`) or is crate-private and only called on validated payloads.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    /// The underlying bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// Unwraps the underlying bytes.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the text is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<String> for Text {
    fn from(s: String) -> Self {
        Text(Bytes::from(s))
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Self {
        Text(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<&'static str> for Message {
    fn from(s: &'static str) -> Self {
        Message::Text(Text(Bytes::from_static(s.as_bytes())))
    }
}

impl From<String> for Message {
    fn from(s: String) -> Self {
        Message::Text(Text::from(s))
    }
}

impl From<Vec<u8>> for Message {
    fn from(v: Vec<u8>) -> Self {
        Message::Binary(Bytes::from(v))
    }
}

impl From<Bytes> for Message {
    fn from(b: Bytes) -> Self {
        Message::Binary(b)
    }
}

/// A complete data message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message (UTF-8 guaranteed).
    Text(Text),
    /// A binary message.
    Binary(Bytes),
}

impl Message {
    /// The payload bytes.
    pub fn payload(&self) -> &Bytes {
        match self {
            Message::Text(t) => t.as_bytes(),
            Message::Binary(b) => b,
        }
    }

    /// Payload length in bytes.
    pub fn len(&self) -> usize {
        self.payload().len()
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.payload().is_empty()
    }

    /// The text, for a text message.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Message::Text(t) => Some(t.as_str()),
            Message::Binary(_) => None,
        }
    }

    /// The frame opcode of this message.
    pub fn opcode(&self) -> OpCode {
        match self {
            Message::Text(_) => OpCode::Text,
            Message::Binary(_) => OpCode::Binary,
        }
    }
}

impl fmt::Display for Message {
    /// Text as is; binary as a byte count (binary data is rarely printable).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Message::Text(t) => f.write_str(t.as_str()),
            Message::Binary(b) => write!(f, "<{} bytes of binary data>", b.len()),
        }
    }
}

/// A message encoded once as a server frame, to be queued on many connections.
///
/// The plain frame (header + payload in one buffer) is built when the
/// `PreparedMessage` is created; each receiver's queue holds a reference-counted
/// clone of it. For receivers that negotiated permessage-deflate with
/// `server_no_context_takeover`, the compressed frame is built once per window size
/// on first use and shared the same way. Receivers that use context takeover cannot
/// share a compressed frame; their connection compresses for them.
///
/// ```
/// use wshub_proto::message::{Message, PreparedMessage};
/// let p = PreparedMessage::new(&Message::from("hi"));
/// assert_eq!(&p.plain_frame()[..], &[0x81, 0x02, b'h', b'i']);
/// ```
#[derive(Debug)]
pub struct PreparedMessage {
    message: Message,
    plain: Bytes,
    /// Compressed frames for window bits 9..=15 (index bits - 9). The inner `None`
    /// records that compression did not pay off for this message.
    compressed: [OnceLock<Option<Bytes>>; 7],
}

impl PreparedMessage {
    /// Encodes `message` as an unmasked (server-role) frame.
    pub fn new(message: &Message) -> PreparedMessage {
        let mut out = Vec::with_capacity(message.len() + 10);
        encode_frame(
            &mut out,
            message.opcode(),
            true,
            false,
            None,
            message.payload(),
        );
        PreparedMessage {
            message: message.clone(),
            plain: Bytes::from(out),
            compressed: Default::default(),
        }
    }

    /// The message this frame carries.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// The uncompressed frame, header included.
    pub fn plain_frame(&self) -> &Bytes {
        &self.plain
    }

    /// The frame compressed without context takeover with a `window_bits` window
    /// (9–15), built on first use; `None` if compression would not shrink it.
    pub fn compressed_frame(&self, window_bits: u8, level: u32) -> Option<&Bytes> {
        let bits = window_bits.clamp(9, 15);
        let cell = &self.compressed[usize::from(bits - 9)];
        cell.get_or_init(|| {
            let payload = self.message.payload();
            let mut z = Vec::with_capacity(payload.len() / 2 + 16);
            crate::pool::with_shared_deflater(bits, level, |d| d.compress(payload, &mut z)).ok()?;
            if z.len() >= payload.len() {
                return None;
            }
            let mut out = Vec::with_capacity(z.len() + 10);
            encode_frame(&mut out, self.message.opcode(), true, true, None, &z);
            Some(Bytes::from(out))
        })
        .as_ref()
    }
}
