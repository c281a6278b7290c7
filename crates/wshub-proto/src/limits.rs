//! [`Limits`]: every size bound the protocol core enforces, as one documented value.
//!
//! Each field says its default and why that default is safe. Exceeding a limit is
//! never a panic: the handshake answers with an HTTP status (431 for headers) and a
//! live connection fails with the close code listed on the field.

/// Size bounds enforced by the handshake parser and the frame decoder.
///
/// Build one with [`Limits::default`] and the `with_*` setters:
///
/// ```
/// use wshub_proto::Limits;
/// let limits = Limits::default().with_max_message_size(64 * 1024);
/// assert_eq!(limits.max_message_size, 64 * 1024);
/// assert_eq!(limits.max_fragments, 1024);
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest payload of a single frame, in bytes (after the 7/16/64-bit length is
    /// read, before any inflation). Default: 16 MiB. Breach: close 1009.
    ///
    /// Checked on the frame header, before a byte of the payload is buffered, so a
    /// peer announcing a 2^63-byte frame costs nothing.
    pub max_frame_size: usize,
    /// Largest message, in bytes, after reassembly of fragments and after
    /// permessage-deflate inflation. Default: 16 MiB (the hub sets 64 KiB).
    /// Breach: close 1009.
    ///
    /// Inflation is capped by this value while it runs, so a decompression bomb is
    /// stopped after at most `max_message_size` bytes of output.
    pub max_message_size: usize,
    /// Most frames one message may be split into, empty continuation frames
    /// included. Default: 1024. Breach: close 1008.
    ///
    /// Without it a peer could keep a message open forever with empty fragments.
    pub max_fragments: usize,
    /// Most bytes of the HTTP upgrade request (or response, in the client role),
    /// request line and headers included. Default: 8 KiB. Breach: HTTP 431.
    pub max_header_bytes: usize,
    /// Most header fields in the HTTP upgrade request or response. Default: 64.
    /// Breach: HTTP 431.
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_size: 16 << 20,
            max_message_size: 16 << 20,
            max_fragments: 1024,
            max_header_bytes: 8 << 10,
            max_headers: 64,
        }
    }
}

impl Limits {
    /// Sets [`Limits::max_frame_size`]. Default is 16 MiB.
    #[must_use]
    pub fn with_max_frame_size(mut self, bytes: usize) -> Self {
        self.max_frame_size = bytes;
        self
    }

    /// Sets [`Limits::max_message_size`]. Default is 16 MiB.
    #[must_use]
    pub fn with_max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Sets [`Limits::max_fragments`]. Default is 1024.
    #[must_use]
    pub fn with_max_fragments(mut self, count: usize) -> Self {
        self.max_fragments = count;
        self
    }

    /// Sets [`Limits::max_header_bytes`]. Default is 8 KiB.
    #[must_use]
    pub fn with_max_header_bytes(mut self, bytes: usize) -> Self {
        self.max_header_bytes = bytes;
        self
    }

    /// Sets [`Limits::max_headers`]. Default is 64.
    #[must_use]
    pub fn with_max_headers(mut self, count: usize) -> Self {
        self.max_headers = count;
        self
    }
}
