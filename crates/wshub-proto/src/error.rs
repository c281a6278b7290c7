//! Errors of a live connection: [`ProtocolError`] (the peer broke RFC 6455/7692 or
//! a [`Limits`](crate::Limits) bound) and [`Error`] (what a call on the connection
//! can return).
//!
//! Every protocol error knows the close code it is answered with, and all of them
//! derive `PartialEq` so tests can assert on the exact variant.

use crate::close::CloseCode;

/// The peer violated the protocol or a limit. The connection is failed with
/// [`ProtocolError::close_code`].
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// RSV1/2/3 set without an extension that defines them (RSV1 is valid only on
    /// the first frame of a message when permessage-deflate was negotiated).
    #[error("reserved bits set without a negotiated extension")]
    ReservedBits,
    /// Opcode 0x3–0x7 or 0xB–0xF.
    #[error("unknown opcode {0:#x}")]
    UnknownOpcode(u8),
    /// A control frame (close, ping, pong) without FIN.
    #[error("fragmented control frame")]
    FragmentedControl,
    /// A control frame payload over 125 bytes.
    #[error("control frame payload of {0} bytes exceeds 125")]
    ControlTooLarge(u64),
    /// A client frame without a mask (server role).
    #[error("client frame is not masked")]
    UnmaskedFrame,
    /// A server frame with a mask (client role).
    #[error("server frame is masked")]
    MaskedFrame,
    /// A continuation frame with no message in progress.
    #[error("continuation frame without a message in progress")]
    UnexpectedContinuation,
    /// A new text/binary frame while a fragmented message is still open.
    #[error("new data frame while a fragmented message is in progress")]
    ExpectedContinuation,
    /// A 64-bit length with the most significant bit set.
    #[error("frame length has the most significant bit set")]
    InvalidLength,
    /// A text message or close reason that is not valid UTF-8.
    #[error("invalid UTF-8 in a text message or close reason")]
    InvalidUtf8,
    /// A close frame with a 1-byte payload.
    #[error("close frame payload of 1 byte")]
    InvalidClosePayload,
    /// A close frame with a code not allowed on the wire.
    #[error("close code {0} is not allowed on the wire")]
    InvalidCloseCode(u16),
    /// A frame larger than [`Limits::max_frame_size`](crate::Limits::max_frame_size).
    #[error("frame of {size} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// Announced payload length.
        size: u64,
        /// The limit.
        max: usize,
    },
    /// A message larger than [`Limits::max_message_size`](crate::Limits::max_message_size)
    /// (after inflation).
    #[error("message exceeds the limit of {max} bytes")]
    MessageTooLarge {
        /// The limit.
        max: usize,
    },
    /// More fragments than [`Limits::max_fragments`](crate::Limits::max_fragments).
    #[error("message split into more than {max} fragments")]
    TooManyFragments {
        /// The limit.
        max: usize,
    },
    /// The permessage-deflate payload did not inflate.
    #[error("permessage-deflate payload could not be inflated")]
    Inflate,
    /// The peer sent pings faster than it read the pongs
    /// ([`Config::max_pending_pongs`](crate::connection::Config::max_pending_pongs)).
    #[error("too many pings without reading the pongs")]
    PingFlood,
}

impl ProtocolError {
    /// The close code this error is answered with (RFC 6455 §7.4.1).
    ///
    /// ```
    /// use wshub_proto::{CloseCode, ProtocolError};
    /// assert_eq!(ProtocolError::InvalidUtf8.close_code(), CloseCode::INVALID_PAYLOAD);
    /// assert_eq!(ProtocolError::MessageTooLarge { max: 1 }.close_code(), CloseCode::MESSAGE_TOO_BIG);
    /// ```
    pub fn close_code(&self) -> CloseCode {
        match self {
            ProtocolError::InvalidUtf8 | ProtocolError::Inflate => CloseCode::INVALID_PAYLOAD,
            ProtocolError::FrameTooLarge { .. } | ProtocolError::MessageTooLarge { .. } => {
                CloseCode::MESSAGE_TOO_BIG
            }
            ProtocolError::TooManyFragments { .. } | ProtocolError::PingFlood => {
                CloseCode::POLICY_VIOLATION
            }
            _ => CloseCode::PROTOCOL_ERROR,
        }
    }
}

/// What a call on a [`Connection`](crate::Connection) can fail with.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The peer broke the protocol; a close frame with the matching code is queued.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The connection is closing or closed; no more data frames may be sent.
    #[error("the connection is closed")]
    Closed,
    /// A control frame payload given to `ping`/`pong` was over 125 bytes.
    #[error("control frame payload of {0} bytes exceeds 125")]
    ControlTooLarge(usize),
    /// A close code that may not be sent (1005, 1006, 1015, or outside the ranges of
    /// RFC 6455 §7.4).
    #[error("close code {0} may not be sent")]
    InvalidCloseCode(u16),
}
