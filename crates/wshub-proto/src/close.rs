//! Close codes ([`CloseCode`]) and the close frame payload ([`CloseFrame`]).
//!
//! RFC 6455 §7.4 defines which codes may appear on the wire. wshub adds its own
//! meaning to the private range: 4000–4499 tell a client it may reconnect,
//! 4500–4999 that it should not (bad token, forbidden). See [`CloseCode::may_reconnect`].

use std::fmt;

/// A WebSocket close status code.
///
/// ```
/// use wshub_proto::CloseCode;
/// assert!(CloseCode::NORMAL.is_valid_on_wire());
/// assert!(!CloseCode(1005).is_valid_on_wire()); // reserved: never sent in a frame
/// assert!(CloseCode(4001).may_reconnect());
/// assert!(!CloseCode(4501).may_reconnect());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: normal closure.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// 1001: the endpoint is going away (server shutdown, page navigation).
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// 1002: protocol error.
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    /// 1003: a data type the endpoint cannot accept.
    pub const UNSUPPORTED_DATA: CloseCode = CloseCode(1003);
    /// 1005: no status code was present (never sent on the wire).
    pub const NO_STATUS: CloseCode = CloseCode(1005);
    /// 1006: closed without a close frame (never sent on the wire).
    pub const ABNORMAL: CloseCode = CloseCode(1006);
    /// 1007: invalid payload data (e.g. text that is not UTF-8).
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    /// 1008: policy violation.
    pub const POLICY_VIOLATION: CloseCode = CloseCode(1008);
    /// 1009: message too big.
    pub const MESSAGE_TOO_BIG: CloseCode = CloseCode(1009);
    /// 1010: the client expected an extension the server did not negotiate.
    pub const MANDATORY_EXTENSION: CloseCode = CloseCode(1010);
    /// 1011: internal server error.
    pub const INTERNAL_ERROR: CloseCode = CloseCode(1011);
    /// 1012: service restart.
    pub const SERVICE_RESTART: CloseCode = CloseCode(1012);
    /// 1013: try again later.
    pub const TRY_AGAIN_LATER: CloseCode = CloseCode(1013);

    /// Whether this code may appear in a close frame on the wire (RFC 6455 §7.4 and
    /// the IANA registry): 1000–1003, 1007–1014 and 3000–4999.
    pub fn is_valid_on_wire(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }

    /// wshub's reconnect advice: `true` unless the code is in 4500–4999 (the
    /// application said "do not come back": bad token, forbidden) or is 1008
    /// (policy) / 1003 (unsupported data), which a retry would only repeat.
    pub fn may_reconnect(self) -> bool {
        !matches!(self.0, 4500..=4999 | 1003 | 1008)
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl From<u16> for CloseCode {
    fn from(code: u16) -> Self {
        CloseCode(code)
    }
}

/// The payload of a close frame: a code and a UTF-8 reason of at most 123 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    /// The status code.
    pub code: CloseCode,
    /// The reason; at most 123 bytes so the frame fits the 125-byte control limit.
    pub reason: String,
}

impl CloseFrame {
    /// Largest reason that fits in a control frame next to the 2-byte code.
    pub const MAX_REASON: usize = 123;

    /// Builds a close frame, cutting `reason` at a character boundary so it fits in
    /// [`CloseFrame::MAX_REASON`] bytes.
    pub fn new(code: CloseCode, reason: &str) -> Self {
        let mut end = reason.len().min(Self::MAX_REASON);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        CloseFrame {
            code,
            reason: reason[..end].to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_is_cut_on_char_boundary() {
        let long = "é".repeat(100); // 200 bytes
        let f = CloseFrame::new(CloseCode::NORMAL, &long);
        assert!(f.reason.len() <= CloseFrame::MAX_REASON);
        assert_eq!(f.reason.len() % 2, 0);
    }

    #[test]
    fn wire_validity_matches_rfc() {
        for c in [1000, 1001, 1002, 1003, 1007, 1011, 1014, 3000, 4999] {
            assert!(CloseCode(c).is_valid_on_wire(), "{c}");
        }
        for c in [0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000] {
            assert!(!CloseCode(c).is_valid_on_wire(), "{c}");
        }
    }
}
