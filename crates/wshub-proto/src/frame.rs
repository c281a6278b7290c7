//! Frame headers (RFC 6455 §5.2): opcodes, the 2–14 byte header, and encoding of
//! whole frames.
//!
//! Decoding is incremental: [`FrameHeader::parse`] answers `Ok(None)` until the
//! whole header is present, then reports how many bytes it used. Payloads are not
//! touched here; the [`Connection`](crate::connection::Connection) streams them.

use crate::error::ProtocolError;

/// Longest possible frame header: 2 + 8 (64-bit length) + 4 (mask).
pub const MAX_HEADER_LEN: usize = 14;

/// Largest payload of a control frame.
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// A frame opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum OpCode {
    /// 0x0: continuation of a fragmented message.
    Continuation = 0x0,
    /// 0x1: first frame of a text message.
    Text = 0x1,
    /// 0x2: first frame of a binary message.
    Binary = 0x2,
    /// 0x8: close.
    Close = 0x8,
    /// 0x9: ping.
    Ping = 0x9,
    /// 0xA: pong.
    Pong = 0xA,
}

impl OpCode {
    /// Decodes the low nibble of the first header byte; `None` for reserved opcodes.
    pub fn from_u8(v: u8) -> Option<OpCode> {
        Some(match v {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    /// Close, ping and pong are control frames.
    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Final fragment of a message.
    pub fin: bool,
    /// RSV1 (the "compressed" bit under permessage-deflate).
    pub rsv1: bool,
    /// RSV2 (no extension defines it).
    pub rsv2: bool,
    /// RSV3 (no extension defines it).
    pub rsv3: bool,
    /// The opcode.
    pub opcode: OpCode,
    /// The masking key, if the frame is masked.
    pub mask: Option<[u8; 4]>,
    /// Payload length in bytes.
    pub payload_len: u64,
}

impl FrameHeader {
    /// Parses a header from the start of `buf`.
    ///
    /// Returns `Ok(None)` if `buf` holds only part of a header, or the header and
    /// its length in bytes. Fails on a reserved opcode and on a 64-bit length with
    /// the top bit set; every other rule (RSV bits, masking, sizes) depends on the
    /// connection's state and is checked there.
    ///
    /// ```
    /// use wshub_proto::frame::{FrameHeader, OpCode};
    /// let (h, n) = FrameHeader::parse(&[0x81, 0x05, b'H']).unwrap().unwrap();
    /// assert_eq!((h.opcode, h.fin, h.payload_len, n), (OpCode::Text, true, 5, 2));
    /// assert_eq!(FrameHeader::parse(&[0x81]).unwrap(), None);
    /// ```
    pub fn parse(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
        let [b0, b1, ..] = *buf else {
            return Ok(None);
        };
        let opcode = OpCode::from_u8(b0 & 0x0f).ok_or(ProtocolError::UnknownOpcode(b0 & 0x0f))?;
        let masked = b1 & 0x80 != 0;
        let (payload_len, mut pos) = match b1 & 0x7f {
            126 => match buf.get(2..4) {
                Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
                None => return Ok(None),
            },
            127 => match buf.get(2..10) {
                Some(b) => {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    let len = u64::from_be_bytes(a);
                    if len >> 63 != 0 {
                        return Err(ProtocolError::InvalidLength);
                    }
                    (len, 10)
                }
                None => return Ok(None),
            },
            n => (u64::from(n), 2),
        };
        let mask = if masked {
            match buf.get(pos..pos + 4) {
                Some(b) => {
                    pos += 4;
                    Some([b[0], b[1], b[2], b[3]])
                }
                None => return Ok(None),
            }
        } else {
            None
        };
        Ok(Some((
            FrameHeader {
                fin: b0 & 0x80 != 0,
                rsv1: b0 & 0x40 != 0,
                rsv2: b0 & 0x20 != 0,
                rsv3: b0 & 0x10 != 0,
                opcode,
                mask,
                payload_len,
            },
            pos,
        )))
    }

    /// Writes this header into `out`, returning its length (2–14 bytes). Lengths are
    /// written in the minimal form, as RFC 6455 requires.
    pub fn encode(&self, out: &mut [u8; MAX_HEADER_LEN]) -> usize {
        out[0] = (u8::from(self.fin) << 7)
            | (u8::from(self.rsv1) << 6)
            | (u8::from(self.rsv2) << 5)
            | (u8::from(self.rsv3) << 4)
            | self.opcode as u8;
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let mut pos = if self.payload_len < 126 {
            out[1] = mask_bit | self.payload_len as u8;
            2
        } else if self.payload_len <= u64::from(u16::MAX) {
            out[1] = mask_bit | 126;
            out[2..4].copy_from_slice(&(self.payload_len as u16).to_be_bytes());
            4
        } else {
            out[1] = mask_bit | 127;
            out[2..10].copy_from_slice(&self.payload_len.to_be_bytes());
            10
        };
        if let Some(m) = self.mask {
            out[pos..pos + 4].copy_from_slice(&m);
            pos += 4;
        }
        pos
    }
}

/// Appends a whole frame (header, then the payload, masked with `mask` if given)
/// to `out`.
pub fn encode_frame(
    out: &mut Vec<u8>,
    opcode: OpCode,
    fin: bool,
    rsv1: bool,
    mask: Option<[u8; 4]>,
    payload: &[u8],
) {
    let mut hdr = [0u8; MAX_HEADER_LEN];
    let n = FrameHeader {
        fin,
        rsv1,
        rsv2: false,
        rsv3: false,
        opcode,
        mask,
        payload_len: payload.len() as u64,
    }
    .encode(&mut hdr);
    out.reserve(n + payload.len());
    out.extend_from_slice(&hdr[..n]);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(m) = mask {
        crate::mask::apply_mask(&mut out[start..], m, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rejects_reserved_opcodes_and_huge_lengths() {
        for op in [3u8, 4, 5, 6, 7, 0xb, 0xc, 0xd, 0xe, 0xf] {
            assert_eq!(
                FrameHeader::parse(&[0x80 | op, 0]),
                Err(ProtocolError::UnknownOpcode(op))
            );
        }
        let mut h = vec![0x82, 127];
        h.extend_from_slice(&(1u64 << 63).to_be_bytes());
        assert_eq!(FrameHeader::parse(&h), Err(ProtocolError::InvalidLength));
    }

    proptest! {
        #[test]
        fn header_round_trip(fin: bool, rsv1: bool, op in prop::sample::select(vec![0u8, 1, 2, 8, 9, 10]),
                             mask: Option<[u8; 4]>, len in prop_oneof![0u64..200, 0u64..70000, 0u64..(1 << 63)]) {
            let h = FrameHeader { fin, rsv1, rsv2: false, rsv3: false,
                opcode: OpCode::from_u8(op).unwrap(), mask, payload_len: len };
            let mut buf = [0u8; MAX_HEADER_LEN];
            let n = h.encode(&mut buf);
            for cut in 0..n {
                prop_assert_eq!(FrameHeader::parse(&buf[..cut]).unwrap(), None);
            }
            prop_assert_eq!(FrameHeader::parse(&buf[..n]).unwrap(), Some((h, n)));
        }

        #[test]
        fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..20)) {
            let _ = FrameHeader::parse(&data);
        }
    }
}
