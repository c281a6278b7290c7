//! permessage-deflate (RFC 7692): the `Sec-WebSocket-Extensions` header parser,
//! the negotiation for both roles, and the per-message compressor ([`Deflater`])
//! and decompressor ([`Inflater`]).
//!
//! The flow is: the server passes the client's header values to
//! [`server_negotiate`], which picks the first acceptable offer and returns the
//! [`DeflateParams`] together with the response header value; a client sends
//! [`client_offer`] and checks the answer with [`client_accept`]. The params then
//! say how to build the codec for each direction ([`DeflateParams::server_deflater`],
//! [`DeflateParams::server_inflater`], and the `client_*` pair).
//!
//! Everything here is sans-IO and never panics on peer input: the parser runs in
//! one pass over the header (linear time, at most [`MAX_EXTENSIONS`] extensions of
//! [`MAX_PARAMS`] parameters each), and [`Inflater::decompress`] inflates in bounded
//! steps, stopping with [`DeflateError::TooLarge`] as soon as the message would
//! grow past the caller's limit (a decompression bomb costs at most that limit
//! plus one byte of output).
//!
//! ## Window bits and the 8-bit window
//! zlib (and `zlib-rs`, its Rust port used here) cannot produce a *raw* deflate
//! stream with an 8-bit (256-byte) window: zlib silently used 9 bits for years
//! (producing back-references a real 8-bit decoder rejects) and now refuses. So
//! wshub never promises to compress with 8 bits: a server declines an offer with
//! `server_max_window_bits=8`, a client fails the handshake if the server answers
//! `client_max_window_bits=8`, and [`DeflateConfig::validate`] only allows 9..=15.
//! Decompressing an 8-bit stream is no problem (see [`Inflater`]).
//!
//! ## Memory
//! Measured with `zlib-rs`: a [`Deflater`] holds about 245 KiB at 9 window bits
//! and 370 KiB at 15; an [`Inflater`] about 46 KiB whatever the window. With no
//! context takeover that state only matters while one message is processed, so
//! keep a few per thread and lend them out instead of holding one per connection.
//! Construction is a single allocation plus zlib's table initialisation (cheap, but
//! not free: reuse beats re-creating per message).

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The extension token of permessage-deflate.
pub const EXTENSION_NAME: &str = "permessage-deflate";

/// Most extensions accepted in one `Sec-WebSocket-Extensions` header value; more is
/// [`ExtensionError::TooManyExtensions`].
pub const MAX_EXTENSIONS: usize = 16;

/// Most parameters accepted on one extension; more is
/// [`ExtensionError::TooManyParams`].
pub const MAX_PARAMS: usize = 16;

/// The four bytes a sync flush ends with; stripped by the sender and re-appended
/// by the receiver (RFC 7692 §7.2.1 and §7.2.2).
const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Largest output step of one inflate call.
const MAX_INFLATE_STEP: usize = 32 * 1024;

/// Smallest output step of one inflate call.
const MIN_INFLATE_STEP: usize = 512;

/// Spare output room kept for each deflate call (zlib wants more than 6 bytes so a
/// sync flush marker is never split).
const MIN_DEFLATE_ROOM: usize = 64;

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// A `Sec-WebSocket-Extensions` header that cannot be parsed, or (client role) a
/// server answer that cannot be accepted.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtensionError {
    /// The header does not follow the grammar of RFC 6455 §9.1.
    #[error("malformed Sec-WebSocket-Extensions header at byte {position}: {reason}")]
    Malformed {
        /// Byte offset in the header value where parsing stopped.
        position: usize,
        /// What was expected there.
        reason: &'static str,
    },
    /// More than [`MAX_EXTENSIONS`] extensions in one header value.
    #[error("more than {max} extensions in one Sec-WebSocket-Extensions value")]
    TooManyExtensions {
        /// The limit.
        max: usize,
    },
    /// More than [`MAX_PARAMS`] parameters on one extension.
    #[error("more than {max} parameters on one extension")]
    TooManyParams {
        /// The limit.
        max: usize,
    },
    /// A permessage-deflate parameter that is unknown, repeated, or has an invalid
    /// value (or a missing/unexpected one).
    #[error("invalid permessage-deflate parameter {name:?}: {reason}")]
    InvalidParam {
        /// The parameter name as received.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Client role: the server answered an extension that was not offered.
    #[error("the server accepted extension {0:?}, which was not offered")]
    UnexpectedExtension(String),
    /// Client role: the server answered permessage-deflate more than once.
    #[error("the server accepted permessage-deflate more than once")]
    DuplicateExtension,
    /// Client role: the server asked for a window size wshub cannot compress with
    /// (8 bits, see the [module docs](self)).
    #[error("cannot compress with a {0}-bit window")]
    UnsupportedWindowBits(u8),
}

/// A failure of the compressor or decompressor, or an invalid codec setting.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeflateError {
    /// The inflated message would exceed the caller's limit (answer with close
    /// 1009).
    #[error("inflated message exceeds the size limit")]
    TooLarge,
    /// The compressed payload is not a valid deflate stream (answer with close
    /// 1007).
    #[error("corrupt deflate data")]
    Corrupt,
    /// A window size outside the supported range (9..=15 to compress, 8..=15 to
    /// decompress).
    #[error("unsupported deflate window size of {0} bits")]
    InvalidWindowBits(u8),
    /// A compression level above 9.
    #[error("unsupported compression level {0} (0..=9)")]
    InvalidLevel(u32),
    /// zlib failed while compressing; not caused by the peer. The compressor has
    /// been reset and can be used again.
    #[error("deflate failed: {0}")]
    Compress(String),
}

// ---------------------------------------------------------------------------
// Header parsing
// ---------------------------------------------------------------------------

/// One extension of a `Sec-WebSocket-Extensions` header: its token and its
/// parameters in order, with quoted-string values already unescaped.
///
/// ```
/// use wshub_proto::deflate::parse_extensions;
/// let offers = parse_extensions(r#"permessage-deflate; client_max_window_bits="10", x-foo"#).unwrap();
/// assert_eq!(offers[0].name, "permessage-deflate");
/// assert_eq!(offers[0].params, vec![("client_max_window_bits".to_owned(), Some("10".to_owned()))]);
/// assert_eq!(offers[1].name, "x-foo");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionOffer {
    /// The extension token, as received (compare it case-insensitively).
    pub name: String,
    /// `(name, value)` pairs; `None` for a parameter without `=value`.
    pub params: Vec<(String, Option<String>)>,
}

/// Whether `b` is a `tchar` of RFC 7230 §3.2.6.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// A one-pass cursor over a header value.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    fn malformed(&self, reason: &'static str) -> ExtensionError {
        ExtensionError::Malformed {
            position: self.pos,
            reason,
        }
    }

    /// Reads a non-empty token.
    fn token(&mut self, what: &'static str) -> Result<String, ExtensionError> {
        let start = self.pos;
        while self.peek().is_some_and(is_tchar) {
            self.pos += 1;
        }
        if self.pos == start {
            return Err(self.malformed(what));
        }
        // tchars are ASCII, so every byte maps to one char.
        Ok(self.bytes[start..self.pos]
            .iter()
            .map(|&b| char::from(b))
            .collect())
    }

    /// Reads a quoted-string (the cursor is on the opening quote) and returns the
    /// unescaped content, which RFC 6455 §9.1 requires to be a token.
    fn quoted(&mut self) -> Result<String, ExtensionError> {
        self.pos += 1; // opening quote
        let mut value = String::new();
        loop {
            match self.peek() {
                None => return Err(self.malformed("unterminated quoted-string")),
                Some(b'"') => {
                    self.pos += 1;
                    break;
                }
                Some(b'\\') => {
                    self.pos += 1;
                    match self.peek() {
                        Some(b) if is_tchar(b) => value.push(char::from(b)),
                        _ => return Err(self.malformed("quoted value is not a token")),
                    }
                    self.pos += 1;
                }
                Some(b) if is_tchar(b) => {
                    value.push(char::from(b));
                    self.pos += 1;
                }
                Some(_) => return Err(self.malformed("quoted value is not a token")),
            }
        }
        if value.is_empty() {
            return Err(self.malformed("empty quoted value"));
        }
        Ok(value)
    }
}

/// Parses one `Sec-WebSocket-Extensions` header value (RFC 6455 §9.1): a
/// comma-separated list of extensions, each a token followed by `;`-separated
/// parameters `name` or `name=value`, the value a token or a quoted-string.
///
/// Optional whitespace is allowed around every separator and empty list elements
/// (`a, , b`) are skipped; an empty value gives an empty list. Runs in linear time
/// and fails with [`ExtensionError::TooManyExtensions`] /
/// [`ExtensionError::TooManyParams`] past [`MAX_EXTENSIONS`] / [`MAX_PARAMS`].
///
/// ```
/// use wshub_proto::deflate::parse_extensions;
/// assert_eq!(parse_extensions("permessage-deflate; server_no_context_takeover").unwrap().len(), 1);
/// assert!(parse_extensions("permessage-deflate; =x").is_err());
/// ```
pub fn parse_extensions(value: &str) -> Result<Vec<ExtensionOffer>, ExtensionError> {
    let mut cur = Cursor {
        bytes: value.as_bytes(),
        pos: 0,
    };
    let mut extensions = Vec::new();
    loop {
        cur.skip_ows();
        match cur.peek() {
            None => break,
            Some(b',') => {
                cur.pos += 1;
                continue;
            }
            Some(_) => {}
        }
        if extensions.len() == MAX_EXTENSIONS {
            return Err(ExtensionError::TooManyExtensions {
                max: MAX_EXTENSIONS,
            });
        }
        let name = cur.token("expected an extension token")?;
        let mut params = Vec::new();
        loop {
            cur.skip_ows();
            match cur.peek() {
                None => break,
                Some(b',') => {
                    cur.pos += 1;
                    break;
                }
                Some(b';') => cur.pos += 1,
                Some(_) => return Err(cur.malformed("expected ';' or ','")),
            }
            if params.len() == MAX_PARAMS {
                return Err(ExtensionError::TooManyParams { max: MAX_PARAMS });
            }
            cur.skip_ows();
            let param = cur.token("expected a parameter name")?;
            cur.skip_ows();
            let param_value = if cur.peek() == Some(b'=') {
                cur.pos += 1;
                cur.skip_ows();
                if cur.peek() == Some(b'"') {
                    Some(cur.quoted()?)
                } else {
                    Some(cur.token("expected a parameter value")?)
                }
            } else {
                None
            };
            params.push((param, param_value));
        }
        extensions.push(ExtensionOffer { name, params });
    }
    Ok(extensions)
}

/// Parses every header value and concatenates the lists (several header fields of
/// the same name form one list).
fn parse_all<S: AsRef<str>>(header_values: &[S]) -> Result<Vec<ExtensionOffer>, ExtensionError> {
    let mut all = Vec::new();
    for value in header_values {
        all.extend(parse_extensions(value.as_ref())?);
    }
    Ok(all)
}

// ---------------------------------------------------------------------------
// Configuration and negotiated parameters
// ---------------------------------------------------------------------------

/// The local permessage-deflate policy, for either role.
///
/// ```
/// use wshub_proto::deflate::DeflateConfig;
/// let config = DeflateConfig::default().with_compression_level(6).with_client_max_window_bits(12);
/// assert!(config.validate().is_ok());
/// assert!(DeflateConfig::default().with_server_max_window_bits(8).validate().is_err());
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateConfig {
    /// Server role: the server compresses every message with a fresh context
    /// (`server_no_context_takeover` is always put in the response). Client role:
    /// the client asks the server for it. Default: `true`, which lets the server
    /// compress a broadcast once for all receivers and lend a compressor per
    /// message instead of keeping one per connection.
    pub server_no_context_takeover: bool,
    /// Server role: the server tells clients to compress with a fresh context
    /// (saving the server a decompressor per connection between messages). Client
    /// role: the client announces it will do so. Default: `false`.
    pub client_no_context_takeover: bool,
    /// Largest window the server compresses with, 9..=15. Client role: asked from
    /// the server when below 15. Default: 15.
    pub server_max_window_bits: u8,
    /// Largest window the client compresses with, 9..=15. Server role: asked from
    /// clients that support the parameter (a client that does not may use 15).
    /// Default: 15.
    pub client_max_window_bits: u8,
    /// zlib compression level, 0..=9. Default: 1 (fastest; most of the gain on
    /// JSON-like messages at a fraction of the CPU of the higher levels).
    pub compression_level: u32,
    /// Messages shorter than this many bytes are sent uncompressed (deflate would
    /// not make them smaller). Default: 32.
    pub min_message_size: usize,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        DeflateConfig {
            server_no_context_takeover: true,
            client_no_context_takeover: false,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
            compression_level: 1,
            min_message_size: 32,
        }
    }
}

impl DeflateConfig {
    /// Sets [`DeflateConfig::server_no_context_takeover`]. Default is `true`.
    #[must_use]
    pub fn with_server_no_context_takeover(mut self, on: bool) -> Self {
        self.server_no_context_takeover = on;
        self
    }

    /// Sets [`DeflateConfig::client_no_context_takeover`]. Default is `false`.
    #[must_use]
    pub fn with_client_no_context_takeover(mut self, on: bool) -> Self {
        self.client_no_context_takeover = on;
        self
    }

    /// Sets [`DeflateConfig::server_max_window_bits`]. Default is 15.
    #[must_use]
    pub fn with_server_max_window_bits(mut self, bits: u8) -> Self {
        self.server_max_window_bits = bits;
        self
    }

    /// Sets [`DeflateConfig::client_max_window_bits`]. Default is 15.
    #[must_use]
    pub fn with_client_max_window_bits(mut self, bits: u8) -> Self {
        self.client_max_window_bits = bits;
        self
    }

    /// Sets [`DeflateConfig::compression_level`]. Default is 1.
    #[must_use]
    pub fn with_compression_level(mut self, level: u32) -> Self {
        self.compression_level = level;
        self
    }

    /// Sets [`DeflateConfig::min_message_size`]. Default is 32.
    #[must_use]
    pub fn with_min_message_size(mut self, bytes: usize) -> Self {
        self.min_message_size = bytes;
        self
    }

    /// Checks the settings: both window sizes in 9..=15 (zlib cannot compress raw
    /// deflate with an 8-bit window, see the [module docs](self)) and the level in
    /// 0..=9. Call it when loading the configuration; the negotiation functions
    /// clamp out-of-range values instead of failing.
    pub fn validate(&self) -> Result<(), DeflateError> {
        for bits in [self.server_max_window_bits, self.client_max_window_bits] {
            if !(9..=15).contains(&bits) {
                return Err(DeflateError::InvalidWindowBits(bits));
            }
        }
        if self.compression_level > 9 {
            return Err(DeflateError::InvalidLevel(self.compression_level));
        }
        Ok(())
    }

    /// Whether a message of `len` bytes is worth compressing
    /// (`len >= min_message_size`).
    pub fn should_compress(&self, len: usize) -> bool {
        len >= self.min_message_size
    }

    /// The config with window sizes clamped to 9..=15 and the level to 0..=9.
    fn clamped(&self) -> DeflateConfig {
        DeflateConfig {
            server_max_window_bits: self.server_max_window_bits.clamp(9, 15),
            client_max_window_bits: self.client_max_window_bits.clamp(9, 15),
            compression_level: self.compression_level.min(9),
            ..*self
        }
    }
}

/// The negotiated permessage-deflate parameters of one connection.
///
/// `server_*` describe what the server compresses with (and the client inflates),
/// `client_*` the other direction. A `*_max_window_bits` of 15 also stands for
/// "not limited".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateParams {
    /// The server resets its compressor after every message.
    pub server_no_context_takeover: bool,
    /// The client resets its compressor after every message.
    pub client_no_context_takeover: bool,
    /// Largest window the server compresses with (9..=15 when wshub is the
    /// server; 8..=15 when a foreign server said so).
    pub server_max_window_bits: u8,
    /// Largest window the client compresses with (8..=15 when a foreign client
    /// asked for it; 9..=15 when wshub is the client).
    pub client_max_window_bits: u8,
}

impl DeflateParams {
    /// Server role: the compressor for outgoing messages.
    pub fn server_deflater(&self, level: u32) -> Result<Deflater, DeflateError> {
        Deflater::new(
            self.server_max_window_bits,
            level,
            self.server_no_context_takeover,
        )
    }

    /// Server role: the decompressor for incoming (client) messages.
    pub fn server_inflater(&self) -> Result<Inflater, DeflateError> {
        Inflater::new(self.client_max_window_bits, self.client_no_context_takeover)
    }

    /// Client role: the compressor for outgoing messages.
    pub fn client_deflater(&self, level: u32) -> Result<Deflater, DeflateError> {
        Deflater::new(
            self.client_max_window_bits,
            level,
            self.client_no_context_takeover,
        )
    }

    /// Client role: the decompressor for incoming (server) messages.
    pub fn client_inflater(&self) -> Result<Inflater, DeflateError> {
        Inflater::new(self.server_max_window_bits, self.server_no_context_takeover)
    }
}

// ---------------------------------------------------------------------------
// Negotiation
// ---------------------------------------------------------------------------

/// The permessage-deflate parameters of one offer or response, checked for
/// syntax (known names, no duplicates, values where required and in 8..=15).
#[derive(Debug, Default)]
struct PmdParams {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: present without a value.
    client_max_window_bits: Option<Option<u8>>,
}

/// A window-bits value: a decimal integer in 8..=15 without leading zeros
/// (RFC 7692 §7.1.2).
fn window_bits_value(value: &str) -> Option<u8> {
    match value {
        "8" => Some(8),
        "9" => Some(9),
        "10" => Some(10),
        "11" => Some(11),
        "12" => Some(12),
        "13" => Some(13),
        "14" => Some(14),
        "15" => Some(15),
        _ => None,
    }
}

/// Checks the parameters of one permessage-deflate element. `client_bits_needs_value`
/// is true for a server response (where `client_max_window_bits` must carry one).
fn parse_pmd_params(
    params: &[(String, Option<String>)],
    client_bits_needs_value: bool,
) -> Result<PmdParams, ExtensionError> {
    let mut out = PmdParams::default();
    let mut seen = [false; 4];
    for (name, value) in params {
        let invalid = |reason| ExtensionError::InvalidParam {
            name: name.clone(),
            reason,
        };
        let index = if name.eq_ignore_ascii_case("server_no_context_takeover") {
            0
        } else if name.eq_ignore_ascii_case("client_no_context_takeover") {
            1
        } else if name.eq_ignore_ascii_case("server_max_window_bits") {
            2
        } else if name.eq_ignore_ascii_case("client_max_window_bits") {
            3
        } else {
            return Err(invalid("unknown parameter"));
        };
        if std::mem::replace(&mut seen[index], true) {
            return Err(invalid("duplicate parameter"));
        }
        match index {
            0 | 1 => {
                if value.is_some() {
                    return Err(invalid("takes no value"));
                }
                if index == 0 {
                    out.server_no_context_takeover = true;
                } else {
                    out.client_no_context_takeover = true;
                }
            }
            2 => {
                let bits = value
                    .as_deref()
                    .and_then(window_bits_value)
                    .ok_or_else(|| invalid("needs a value in 8..=15"))?;
                out.server_max_window_bits = Some(bits);
            }
            _ => {
                let bits = match value.as_deref() {
                    None if client_bits_needs_value => {
                        return Err(invalid("needs a value in 8..=15"))
                    }
                    None => None,
                    Some(v) => Some(
                        window_bits_value(v).ok_or_else(|| invalid("needs a value in 8..=15"))?,
                    ),
                };
                out.client_max_window_bits = Some(bits);
            }
        }
    }
    Ok(out)
}

/// Server role: picks the first acceptable permessage-deflate offer from the
/// client's `Sec-WebSocket-Extensions` header values, and returns the negotiated
/// params with the value of the response header.
///
/// Offers are tried in order across all values. Other extensions are skipped; a
/// permessage-deflate offer with an unknown or duplicate parameter or an invalid
/// value is declined (the next one is tried), and so is one asking for
/// `server_max_window_bits=8`. A header that does not parse at all declines
/// compression: `None` means "answer without the extension", never an error.
/// Out-of-range values in `config` are clamped (see [`DeflateConfig::validate`]).
///
/// The response always names `server_no_context_takeover` and
/// `client_no_context_takeover` when in force, `server_max_window_bits` when the
/// client asked for it or the config limits it, and `client_max_window_bits` only
/// when the client offered it.
///
/// ```
/// use wshub_proto::deflate::{server_negotiate, DeflateConfig};
/// let (params, response) =
///     server_negotiate(&["permessage-deflate; client_max_window_bits"], &DeflateConfig::default()).unwrap();
/// assert_eq!(response, "permessage-deflate; server_no_context_takeover; client_max_window_bits=15");
/// assert!(params.server_no_context_takeover);
/// ```
pub fn server_negotiate<S: AsRef<str>>(
    header_values: &[S],
    config: &DeflateConfig,
) -> Option<(DeflateParams, String)> {
    let config = config.clamped();
    let offers = parse_all(header_values).ok()?;
    offers
        .iter()
        .filter(|offer| offer.name.eq_ignore_ascii_case(EXTENSION_NAME))
        .find_map(|offer| accept_offer(offer, &config))
}

/// Accepts one permessage-deflate offer, or `None` to decline it.
fn accept_offer(offer: &ExtensionOffer, config: &DeflateConfig) -> Option<(DeflateParams, String)> {
    let req = parse_pmd_params(&offer.params, false).ok()?;
    if req.server_max_window_bits == Some(8) {
        return None;
    }
    let params = DeflateParams {
        server_no_context_takeover: config.server_no_context_takeover
            || req.server_no_context_takeover,
        client_no_context_takeover: config.client_no_context_takeover
            || req.client_no_context_takeover,
        server_max_window_bits: config
            .server_max_window_bits
            .min(req.server_max_window_bits.unwrap_or(15)),
        client_max_window_bits: match req.client_max_window_bits {
            Some(hint) => config.client_max_window_bits.min(hint.unwrap_or(15)),
            None => 15,
        },
    };
    let mut response = String::from(EXTENSION_NAME);
    if params.server_no_context_takeover {
        response.push_str("; server_no_context_takeover");
    }
    if params.client_no_context_takeover {
        response.push_str("; client_no_context_takeover");
    }
    if req.server_max_window_bits.is_some() || params.server_max_window_bits < 15 {
        response.push_str("; server_max_window_bits=");
        response.push_str(&params.server_max_window_bits.to_string());
    }
    if req.client_max_window_bits.is_some() {
        response.push_str("; client_max_window_bits=");
        response.push_str(&params.client_max_window_bits.to_string());
    }
    Some((params, response))
}

/// Client role: the `Sec-WebSocket-Extensions` value offering permessage-deflate.
///
/// Always includes `client_max_window_bits` (with the configured value when below
/// 15), so the server may limit the client's window; adds
/// `server_no_context_takeover`, `client_no_context_takeover` and
/// `server_max_window_bits=N` as configured. Out-of-range values are clamped.
///
/// ```
/// use wshub_proto::deflate::{client_offer, DeflateConfig};
/// assert_eq!(
///     client_offer(&DeflateConfig::default()),
///     "permessage-deflate; server_no_context_takeover; client_max_window_bits"
/// );
/// ```
pub fn client_offer(config: &DeflateConfig) -> String {
    let config = config.clamped();
    let mut offer = String::from(EXTENSION_NAME);
    if config.server_no_context_takeover {
        offer.push_str("; server_no_context_takeover");
    }
    if config.client_no_context_takeover {
        offer.push_str("; client_no_context_takeover");
    }
    if config.server_max_window_bits < 15 {
        offer.push_str("; server_max_window_bits=");
        offer.push_str(&config.server_max_window_bits.to_string());
    }
    offer.push_str("; client_max_window_bits");
    if config.client_max_window_bits < 15 {
        offer.push('=');
        offer.push_str(&config.client_max_window_bits.to_string());
    }
    offer
}

/// Client role: checks the server's `Sec-WebSocket-Extensions` answer to
/// [`client_offer`] (same `config`) and returns the negotiated params, or
/// `Ok(None)` when the server did not accept the extension.
///
/// Fails (the client must then fail the connection, RFC 6455 §9.1) when the
/// header is malformed, names another extension or permessage-deflate twice, has an
/// invalid parameter, a `server_max_window_bits` above the one offered, or a
/// `client_max_window_bits` wshub cannot honour (8, or above the one offered).
/// A missing `server_no_context_takeover` that was asked for is tolerated: the
/// decompressor just keeps its context.
///
/// ```
/// use wshub_proto::deflate::{client_accept, DeflateConfig};
/// let params = client_accept(&["permessage-deflate; server_no_context_takeover"], &DeflateConfig::default())
///     .unwrap()
///     .unwrap();
/// assert!(params.server_no_context_takeover);
/// assert_eq!(params.client_max_window_bits, 15);
/// ```
pub fn client_accept<S: AsRef<str>>(
    header_values: &[S],
    config: &DeflateConfig,
) -> Result<Option<DeflateParams>, ExtensionError> {
    let config = config.clamped();
    let mut accepted = None;
    for ext in parse_all(header_values)? {
        if !ext.name.eq_ignore_ascii_case(EXTENSION_NAME) {
            return Err(ExtensionError::UnexpectedExtension(ext.name));
        }
        if accepted.is_some() {
            return Err(ExtensionError::DuplicateExtension);
        }
        let resp = parse_pmd_params(&ext.params, true)?;
        // An omitted server_max_window_bits (even one we asked for) is tolerated:
        // the decompressor reads any window. An explicit larger one is an error.
        if let Some(bits) = resp.server_max_window_bits {
            if bits > config.server_max_window_bits {
                return Err(ExtensionError::InvalidParam {
                    name: "server_max_window_bits".to_owned(),
                    reason: "larger than offered",
                });
            }
        }
        let server_bits = resp.server_max_window_bits.unwrap_or(15);
        // `parse_pmd_params` guarantees a value when the parameter is present.
        if let Some(bits) = resp.client_max_window_bits.flatten() {
            if bits > config.client_max_window_bits {
                return Err(ExtensionError::InvalidParam {
                    name: "client_max_window_bits".to_owned(),
                    reason: "larger than offered",
                });
            }
            if bits < 9 {
                return Err(ExtensionError::UnsupportedWindowBits(bits));
            }
        }
        let client_bits = resp.client_max_window_bits.flatten().unwrap_or(15);
        accepted = Some(DeflateParams {
            server_no_context_takeover: resp.server_no_context_takeover,
            client_no_context_takeover: resp.client_no_context_takeover
                || config.client_no_context_takeover,
            server_max_window_bits: server_bits,
            client_max_window_bits: client_bits.min(config.client_max_window_bits),
        });
    }
    Ok(accepted)
}

// ---------------------------------------------------------------------------
// Codec
// ---------------------------------------------------------------------------

/// A raw-deflate compressor for whole messages (RFC 7692 §7.2.1).
///
/// Holds zlib's compressor state: about 245 KiB at 9 window bits, 370 KiB at 15.
/// With no context takeover the state is reset after every message, so one
/// `Deflater` can serve any number of connections in turn (and a broadcast can be
/// compressed once for all of them); lend it out from a per-thread pool rather
/// than keeping one per connection.
pub struct Deflater {
    inner: Compress,
    window_bits: u8,
    no_context_takeover: bool,
}

impl std::fmt::Debug for Deflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deflater")
            .field("window_bits", &self.window_bits)
            .field("no_context_takeover", &self.no_context_takeover)
            .finish_non_exhaustive()
    }
}

impl Deflater {
    /// A compressor with a `window_bits` window (9..=15) at zlib `level` (0..=9).
    ///
    /// An 8-bit window is refused with [`DeflateError::InvalidWindowBits`]: zlib
    /// cannot make a raw deflate stream with it, and using 9 bits instead could emit
    /// back-references an 8-bit peer rejects.
    pub fn new(
        window_bits: u8,
        level: u32,
        no_context_takeover: bool,
    ) -> Result<Self, DeflateError> {
        if !(9..=15).contains(&window_bits) {
            return Err(DeflateError::InvalidWindowBits(window_bits));
        }
        if level > 9 {
            return Err(DeflateError::InvalidLevel(level));
        }
        Ok(Deflater {
            inner: Compress::new_with_window_bits(Compression::new(level), false, window_bits),
            window_bits,
            no_context_takeover,
        })
    }

    /// The window size this compressor uses.
    pub fn window_bits(&self) -> u8 {
        self.window_bits
    }

    /// Whether the state is reset after every message.
    pub fn no_context_takeover(&self) -> bool {
        self.no_context_takeover
    }

    /// Compresses one whole message and appends the payload to `out`: the deflate
    /// data, sync-flushed, without the trailing `00 00 ff ff`. An empty message
    /// becomes the single byte `00` (RFC 7692 §7.2.3.6).
    ///
    /// With context takeover the output *must* be sent: the next message may refer
    /// back to this one. To send a message uncompressed instead, do not compress it
    /// at all, or call [`Deflater::reset`] after dropping the output (a fresh
    /// compressor never refers to earlier messages, so resetting at a message
    /// boundary is always safe for the peer).
    ///
    /// ```
    /// use wshub_proto::deflate::Deflater;
    /// let mut deflater = Deflater::new(15, 1, true).unwrap();
    /// let mut out = Vec::new();
    /// deflater.compress(b"Hello", &mut out).unwrap();
    /// assert_eq!(out, [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]);
    /// ```
    pub fn compress(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), DeflateError> {
        if input.is_empty() {
            // zlib would emit nothing for a repeated flush; an empty stored-block
            // header is the canonical empty message and leaves the state alone.
            out.push(0x00);
            return Ok(());
        }
        let start = out.len();
        let result = self.deflate_sync(input, out);
        let result = result.and_then(|()| {
            if out.len() >= start + SYNC_TAIL.len() && out.ends_with(&SYNC_TAIL) {
                out.truncate(out.len() - SYNC_TAIL.len());
                Ok(())
            } else {
                Err(DeflateError::Compress(
                    "sync flush did not end with 00 00 ff ff".to_owned(),
                ))
            }
        });
        if result.is_err() {
            out.truncate(start);
            self.reset();
        } else if self.no_context_takeover {
            self.reset();
        }
        result
    }

    /// Runs deflate with a sync flush until all input is consumed and the flush is
    /// complete (zlib returned with output room to spare).
    fn deflate_sync(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), DeflateError> {
        // Enough for incompressible input in one call (zlib's deflateBound is
        // about len + len/4096 + a few bytes); compressible input just leaves room.
        out.reserve(input.len() + input.len() / 1024 + MIN_DEFLATE_ROOM);
        let mut consumed = 0;
        loop {
            if out.capacity() - out.len() < MIN_DEFLATE_ROOM {
                out.reserve(input.len().saturating_sub(consumed).max(4096));
            }
            let rest = input.get(consumed..).unwrap_or_default();
            let (in_before, out_before) = (self.inner.total_in(), out.len());
            self.inner
                .compress_vec(rest, out, FlushCompress::Sync)
                .map_err(|e| DeflateError::Compress(e.to_string()))?;
            let step = counter_delta(self.inner.total_in(), in_before)
                .filter(|&n| n <= rest.len())
                .ok_or_else(|| DeflateError::Compress("bad input counter".to_owned()))?;
            consumed += step;
            if consumed >= input.len() && out.len() < out.capacity() {
                return Ok(());
            }
            if step == 0 && out.len() == out_before {
                // Room to write and nothing done: never spin on a broken state.
                return Err(DeflateError::Compress(
                    "deflate made no progress".to_owned(),
                ));
            }
        }
    }

    /// Forgets all earlier messages (a no-op for the peer, see
    /// [`Deflater::compress`]). Called automatically after each message with no
    /// context takeover.
    pub fn reset(&mut self) {
        self.inner.reset();
    }
}

/// A raw-deflate decompressor for messages received in fragments
/// (RFC 7692 §7.2.2).
///
/// Always decodes with a 15-bit window: a 15-bit decoder reads every stream made
/// with a smaller window (8-bit ones included, which zlib cannot produce but other
/// encoders may), and with `zlib-rs` the state is the same ~46 KiB whatever the
/// window, so honouring a smaller negotiated size would save nothing. It also
/// means any spare `Inflater` from a pool fits any connection, and resetting
/// never reallocates.
pub struct Inflater {
    inner: Decompress,
    window_bits: u8,
    no_context_takeover: bool,
    /// The stream hit a final block (BFINAL=1) and was restarted, and no byte has
    /// been read since: the sync tail must not be appended at `fin` (it would
    /// start a truncated stored block in the fresh stream).
    at_stream_end: bool,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater")
            .field("window_bits", &self.window_bits)
            .field("no_context_takeover", &self.no_context_takeover)
            .finish_non_exhaustive()
    }
}

impl Inflater {
    /// A decompressor for a peer compressing with at most `window_bits` (8..=15;
    /// recorded, see the type docs for why decoding always uses 15).
    /// `no_context_takeover`: reset after every message.
    pub fn new(window_bits: u8, no_context_takeover: bool) -> Result<Self, DeflateError> {
        if !(8..=15).contains(&window_bits) {
            return Err(DeflateError::InvalidWindowBits(window_bits));
        }
        Ok(Inflater {
            inner: Decompress::new(false),
            window_bits,
            no_context_takeover,
            at_stream_end: false,
        })
    }

    /// The window size the peer agreed to compress with.
    pub fn window_bits(&self) -> u8 {
        self.window_bits
    }

    /// Whether the state is reset after every message.
    pub fn no_context_takeover(&self) -> bool {
        self.no_context_takeover
    }

    /// Inflates one fragment of a compressed message (`input` = that frame's
    /// payload) and appends the output to `out`, which holds the message so far.
    /// With `fin` (last fragment) the `00 00 ff ff` the sender stripped is
    /// re-appended, so all of the message comes out.
    ///
    /// Fails with [`DeflateError::TooLarge`] as soon as `out.len()` would exceed
    /// `max_total`: output is produced in steps of at most 32 KiB and `out` is never
    /// made longer than `max_total` (nor its capacity grown past
    /// `max_total + 1`), so a bomb costs no more than the limit. Invalid data fails
    /// with [`DeflateError::Corrupt`]. After an error the state is reset (the
    /// connection is failed anyway, and the object can go back to a pool); after
    /// `fin` it is reset when there is no context takeover.
    ///
    /// A message ending in a final (BFINAL) block, with or without an empty
    /// stored block after it, is accepted (RFC 7692 §7.2.3.4). A message cut short
    /// mid-block is not detected here: deflate has no end marker between messages.
    ///
    /// ```
    /// use wshub_proto::deflate::Inflater;
    /// let mut inflater = Inflater::new(15, false).unwrap();
    /// let mut out = Vec::new();
    /// inflater.decompress(&[0xf2, 0x48, 0xcd], false, &mut out, 1024).unwrap();
    /// inflater.decompress(&[0xc9, 0xc9, 0x07, 0x00], true, &mut out, 1024).unwrap();
    /// assert_eq!(out, b"Hello");
    /// ```
    pub fn decompress(
        &mut self,
        input: &[u8],
        fin: bool,
        out: &mut Vec<u8>,
        max_total: usize,
    ) -> Result<(), DeflateError> {
        let mut result = self.inflate(input, out, max_total, FlushDecompress::None);
        if fin && result.is_ok() && !self.at_stream_end {
            result = self.inflate(&SYNC_TAIL, out, max_total, FlushDecompress::Sync);
        }
        if result.is_err() || (fin && self.no_context_takeover) {
            self.reset();
        } else if fin {
            self.at_stream_end = false;
        }
        result
    }

    /// Inflates all of `input` into `out` in bounded steps.
    fn inflate(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        max_total: usize,
        flush: FlushDecompress,
    ) -> Result<(), DeflateError> {
        if input.is_empty() {
            // Earlier calls always drained their output, so there is nothing to do.
            return Ok(());
        }
        let mut pos = 0;
        // Small fragments usually inflate to a few times their size; start near
        // that and double while the output keeps filling the step.
        let mut step = input
            .len()
            .saturating_mul(4)
            .clamp(MIN_INFLATE_STEP, MAX_INFLATE_STEP);
        // One byte over the limit is what tells "exactly at the limit" from "over".
        let cap_limit = max_total.saturating_add(1);
        loop {
            let len = out.len();
            let this_step = step.min(cap_limit.saturating_sub(len));
            if this_step == 0 {
                return Err(DeflateError::TooLarge);
            }
            reserve_capped(out, this_step, cap_limit);
            out.resize(len + this_step, 0);
            let rest = input.get(pos..).unwrap_or_default();
            let (in_before, out_before) = (self.inner.total_in(), self.inner.total_out());
            let status = self.inner.decompress(rest, &mut out[len..], flush);
            let consumed = counter_delta(self.inner.total_in(), in_before);
            let produced = counter_delta(self.inner.total_out(), out_before);
            let (status, consumed, produced) = match (status, consumed, produced) {
                (Ok(status), Some(c), Some(p)) if c <= rest.len() && p <= this_step => {
                    (status, c, p)
                }
                (Err(_), _, Some(p)) if p <= this_step => {
                    // Output produced before the corruption was found counts
                    // first, so the outcome does not depend on how the input was
                    // split into fragments or reads.
                    out.truncate(len + p);
                    if out.len() > max_total {
                        out.truncate(max_total);
                        return Err(DeflateError::TooLarge);
                    }
                    return Err(DeflateError::Corrupt);
                }
                _ => {
                    out.truncate(len);
                    return Err(DeflateError::Corrupt);
                }
            };
            out.truncate(len + produced);
            if out.len() > max_total {
                out.truncate(max_total);
                return Err(DeflateError::TooLarge);
            }
            pos += consumed;
            if status == Status::StreamEnd {
                // A final block ended the deflate stream; whatever follows starts
                // a new one (RFC 7692 §7.2.3.4).
                self.inner.reset(false);
                self.at_stream_end = true;
            } else if consumed > 0 {
                self.at_stream_end = false;
            }
            if pos >= input.len() && produced < this_step {
                return Ok(());
            }
            if consumed == 0 && produced == 0 && status != Status::StreamEnd {
                // No progress with input left and room to write: cannot happen with
                // a working zlib, but never spin.
                return Err(DeflateError::Corrupt);
            }
            if produced == this_step {
                step = step.saturating_mul(2).min(MAX_INFLATE_STEP);
            }
        }
    }

    /// Forgets the current message and all earlier ones.
    pub fn reset(&mut self) {
        self.inner.reset(false);
        self.at_stream_end = false;
    }
}

/// `after - before` as a `usize`, `None` if the counter went backwards or the
/// difference does not fit.
fn counter_delta(after: u64, before: u64) -> Option<usize> {
    after
        .checked_sub(before)
        .and_then(|d| usize::try_from(d).ok())
}

/// Makes room for `additional` more bytes in `out`, doubling the capacity as `Vec`
/// would but never past `cap_limit` (unless `out` already needs more).
fn reserve_capped(out: &mut Vec<u8>, additional: usize, cap_limit: usize) {
    let needed = out.len().saturating_add(additional);
    if needed <= out.capacity() {
        return;
    }
    let target = out.capacity().saturating_mul(2).min(cap_limit).max(needed);
    out.reserve_exact(target - out.len());
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(name: &str, value: Option<&str>) -> (String, Option<String>) {
        (name.to_owned(), value.map(str::to_owned))
    }

    // --- parser --------------------------------------------------------------

    #[test]
    fn parses_lists_params_and_quoted_values() {
        let got = parse_extensions(
            "permessage-deflate; client_max_window_bits; server_max_window_bits=\"1\\0\", x-webkit-deflate-frame",
        )
        .unwrap();
        assert_eq!(
            got,
            vec![
                ExtensionOffer {
                    name: "permessage-deflate".into(),
                    params: vec![
                        p("client_max_window_bits", None),
                        p("server_max_window_bits", Some("10")),
                    ],
                },
                ExtensionOffer {
                    name: "x-webkit-deflate-frame".into(),
                    params: vec![],
                },
            ]
        );
    }

    #[test]
    fn tolerates_odd_spacing_and_empty_elements() {
        let got = parse_extensions(" \t,a ;b = 1\t;  c=\"x\" ,, ,d;e ,").unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].name, "a");
        assert_eq!(got[0].params, vec![p("b", Some("1")), p("c", Some("x"))]);
        assert_eq!(got[1].name, "d");
        assert_eq!(got[1].params, vec![p("e", None)]);
        assert_eq!(parse_extensions("").unwrap(), vec![]);
        assert_eq!(parse_extensions("  ,  ").unwrap(), vec![]);
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "permessage-deflate;",
            "permessage-deflate; ",
            ";x",
            "a b",
            "a; b c",
            "a; b=",
            "a; b=;",
            "a; b=\"unterminated",
            "a; b=\"two words\"",
            "a; b=\"\"",
            "a; b=\"\\\"",
            "a; b=\"é\"",
            "\"quoted\"",
            "a; =1",
            "a; b=1=2",
            "a; b==1",
            "é",
            "a\u{0}",
            "a; b=(x)",
            "a, =",
        ] {
            assert!(
                matches!(parse_extensions(bad), Err(ExtensionError::Malformed { .. })),
                "{bad:?} -> {:?}",
                parse_extensions(bad)
            );
        }
    }

    #[test]
    fn caps_params_and_extensions() {
        let many_params = format!("permessage-deflate{}", "; a".repeat(5000));
        assert_eq!(
            parse_extensions(&many_params),
            Err(ExtensionError::TooManyParams { max: MAX_PARAMS })
        );
        let at_cap = format!("x{}", "; a".repeat(MAX_PARAMS));
        assert_eq!(
            parse_extensions(&at_cap).unwrap()[0].params.len(),
            MAX_PARAMS
        );

        let many_exts = vec!["x"; 5000].join(", ");
        assert_eq!(
            parse_extensions(&many_exts),
            Err(ExtensionError::TooManyExtensions {
                max: MAX_EXTENSIONS
            })
        );
        let at_cap = vec!["x"; MAX_EXTENSIONS].join(",");
        assert_eq!(parse_extensions(&at_cap).unwrap().len(), MAX_EXTENSIONS);
    }

    #[test]
    fn hostile_long_input_is_parsed_in_one_pass() {
        // 4 MiB inputs of several shapes. The answers are checked exactly: a long
        // token comes back whole (the output is never larger than the input), and
        // a malformed value is rejected at the byte where the single left-to-right
        // pass ran out of input, which is the end of it. How fast this runs is
        // measured in benchmarks, not asserted here.
        let long_token = format!("x; v={}", "a".repeat(4 << 20));
        let parsed = parse_extensions(&long_token).unwrap();
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].name, "x");
        assert_eq!(parsed[0].params.len(), 1);
        assert_eq!(parsed[0].params[0].0, "v");
        let value = parsed[0].params[0].1.as_deref().unwrap();
        assert_eq!(value.len(), 4 << 20);
        assert!(value.bytes().all(|b| b == b'a'));

        let long_quoted = format!("x; v=\"{}", "\\a".repeat(2 << 20));
        assert_eq!(
            parse_extensions(&long_quoted),
            Err(ExtensionError::Malformed {
                position: long_quoted.len(),
                reason: "unterminated quoted-string",
            })
        );
        // A bad byte after a long quoted prefix is reported where it is.
        let bad_escape = format!("x; v=\"{}\\ \"", "\\a".repeat(2 << 20));
        assert_eq!(
            parse_extensions(&bad_escape),
            Err(ExtensionError::Malformed {
                position: bad_escape.len() - 2,
                reason: "quoted value is not a token",
            })
        );

        let spaces = format!("x{};", " ".repeat(4 << 20));
        assert_eq!(
            parse_extensions(&spaces),
            Err(ExtensionError::Malformed {
                position: spaces.len(),
                reason: "expected a parameter name",
            })
        );
        let spaced_params = format!("x{};{}", " ".repeat(4 << 20), " ".repeat(4 << 20));
        assert_eq!(
            parse_extensions(&spaced_params),
            Err(ExtensionError::Malformed {
                position: spaced_params.len(),
                reason: "expected a parameter name",
            })
        );

        let commas = ",".repeat(4 << 20);
        assert_eq!(parse_extensions(&commas).unwrap(), vec![]);
        // Empty elements around real ones are skipped, still capped by count.
        let sparse = format!(
            "{}a{}b{}",
            ",".repeat(1 << 20),
            ",".repeat(1 << 20),
            ",".repeat(1 << 20)
        );
        let names: Vec<String> = parse_extensions(&sparse)
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["a", "b"]);
        let many = format!("{}x", "x,,,".repeat(1 << 20));
        assert_eq!(
            parse_extensions(&many),
            Err(ExtensionError::TooManyExtensions {
                max: MAX_EXTENSIONS
            })
        );
    }

    // --- server negotiation --------------------------------------------------

    fn negotiate(offer: &str) -> Option<(DeflateParams, String)> {
        server_negotiate(&[offer], &DeflateConfig::default())
    }

    fn params(snct: bool, cnct: bool, sbits: u8, cbits: u8) -> DeflateParams {
        DeflateParams {
            server_no_context_takeover: snct,
            client_no_context_takeover: cnct,
            server_max_window_bits: sbits,
            client_max_window_bits: cbits,
        }
    }

    #[test]
    fn server_negotiation_table() {
        let table: &[(&str, DeflateParams, &str)] = &[
            (
                "permessage-deflate",
                params(true, false, 15, 15),
                "permessage-deflate; server_no_context_takeover",
            ),
            (
                "permessage-deflate; client_max_window_bits",
                params(true, false, 15, 15),
                "permessage-deflate; server_no_context_takeover; client_max_window_bits=15",
            ),
            (
                "permessage-deflate; client_no_context_takeover",
                params(true, true, 15, 15),
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
            ),
            (
                "permessage-deflate; server_no_context_takeover",
                params(true, false, 15, 15),
                "permessage-deflate; server_no_context_takeover",
            ),
            (
                "permessage-deflate; client_max_window_bits=10",
                params(true, false, 15, 10),
                "permessage-deflate; server_no_context_takeover; client_max_window_bits=10",
            ),
            (
                "permessage-deflate; client_max_window_bits=8",
                params(true, false, 15, 8),
                "permessage-deflate; server_no_context_takeover; client_max_window_bits=8",
            ),
            (
                "permessage-deflate; server_max_window_bits=12",
                params(true, false, 12, 15),
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=12",
            ),
            // Autobahn 13.x offers: accept_no_context_takeover + accept_max_window_bits
            // + request_no_context_takeover / request_max_window_bits.
            (
                "permessage-deflate; client_no_context_takeover; client_max_window_bits",
                params(true, true, 15, 15),
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; client_max_window_bits=15",
            ),
            (
                "permessage-deflate; client_no_context_takeover; client_max_window_bits; server_no_context_takeover; server_max_window_bits=9",
                params(true, true, 9, 15),
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=9; client_max_window_bits=15",
            ),
            // Case-insensitive names, quoted values, odd spacing.
            (
                "PerMessage-Deflate ;\tSERVER_MAX_WINDOW_BITS = \"11\"",
                params(true, false, 11, 15),
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=11",
            ),
        ];
        for (offer, want, response) in table {
            let (got, resp) = negotiate(offer).unwrap_or_else(|| panic!("declined {offer:?}"));
            assert_eq!(&got, want, "{offer}");
            assert_eq!(&resp, response, "{offer}");
        }
    }

    #[test]
    fn server_max_window_bits_9_to_15_and_client_bits() {
        for bits in 9..=15u8 {
            let (got, resp) = negotiate(&format!(
                "permessage-deflate; server_max_window_bits={bits}"
            ))
            .unwrap();
            assert_eq!(got.server_max_window_bits, bits);
            assert!(resp.ends_with(&format!("; server_max_window_bits={bits}")));
            assert!(!resp.contains("client_max_window_bits"));

            let (got, resp) = negotiate(&format!(
                "permessage-deflate; client_max_window_bits={bits}"
            ))
            .unwrap();
            assert_eq!(got.client_max_window_bits, bits);
            assert!(resp.ends_with(&format!("; client_max_window_bits={bits}")));
            assert!(!resp.contains("server_max_window_bits"));
        }
    }

    #[test]
    fn server_declines_invalid_offers() {
        for bad in [
            "permessage-deflate; server_max_window_bits=8",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=09",
            "permessage-deflate; server_max_window_bits=0x0f",
            "permessage-deflate; server_max_window_bits=-10",
            "permessage-deflate; client_max_window_bits=16",
            "permessage-deflate; client_max_window_bits=1",
            "permessage-deflate; client_max_window_bits=abc",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover=\"x\"",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
            "permessage-deflate; unknown_param",
            "permessage-deflate; mux",
            "x-webkit-deflate-frame",
            "permessage-deflate; ;",
            "permessage-deflate, x y",
        ] {
            assert_eq!(negotiate(bad), None, "{bad}");
        }
        assert_eq!(
            server_negotiate::<&str>(&[], &DeflateConfig::default()),
            None
        );
    }

    #[test]
    fn server_takes_first_valid_offer_across_values() {
        // Autobahn 13.7: [(true, 8), (true, 0), (false, 0)].
        let offers = [
            "permessage-deflate; client_no_context_takeover; client_max_window_bits; server_no_context_takeover; server_max_window_bits=8",
            "permessage-deflate; client_no_context_takeover; client_max_window_bits; server_no_context_takeover, permessage-deflate; client_no_context_takeover; client_max_window_bits",
        ];
        let (got, resp) =
            server_negotiate(&[offers.join(", ")], &DeflateConfig::default()).unwrap();
        assert_eq!(got, params(true, true, 15, 15));
        assert_eq!(
            resp,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; client_max_window_bits=15"
        );
        // Same, split over two header fields, with a foreign extension first.
        let values = [
            "x-foo; bar=1, permessage-deflate; server_max_window_bits=8",
            "permessage-deflate; bogus, permessage-deflate; server_max_window_bits=10",
        ];
        let (got, _) = server_negotiate(&values, &DeflateConfig::default()).unwrap();
        assert_eq!(got.server_max_window_bits, 10);
        // A malformed field anywhere declines everything.
        let values = ["permessage-deflate", "permessage-deflate; ="];
        assert_eq!(server_negotiate(&values, &DeflateConfig::default()), None);
    }

    #[test]
    fn server_config_is_applied() {
        let config = DeflateConfig::default()
            .with_server_no_context_takeover(false)
            .with_client_no_context_takeover(true)
            .with_server_max_window_bits(10)
            .with_client_max_window_bits(11);
        let (got, resp) = server_negotiate(&["permessage-deflate"], &config).unwrap();
        // client_max_window_bits cannot be imposed on a client that did not offer it.
        assert_eq!(got, params(false, true, 10, 15));
        assert_eq!(
            resp,
            "permessage-deflate; client_no_context_takeover; server_max_window_bits=10"
        );
        let (got, resp) = server_negotiate(
            &["permessage-deflate; server_max_window_bits=12; client_max_window_bits=9"],
            &config,
        )
        .unwrap();
        assert_eq!(got, params(false, true, 10, 9));
        assert_eq!(
            resp,
            "permessage-deflate; client_no_context_takeover; server_max_window_bits=10; client_max_window_bits=9"
        );
        // The client can still ask the server for no context takeover.
        let (got, _) =
            server_negotiate(&["permessage-deflate; server_no_context_takeover"], &config).unwrap();
        assert!(got.server_no_context_takeover);
        // Out-of-range config values are clamped, not trusted.
        let bad = DeflateConfig::default().with_server_max_window_bits(8);
        assert!(bad.validate().is_err());
        let (got, _) = server_negotiate(&["permessage-deflate"], &bad).unwrap();
        assert_eq!(got.server_max_window_bits, 9);
        got.server_deflater(1).unwrap();
    }

    // --- client negotiation --------------------------------------------------

    #[test]
    fn client_offer_reflects_config() {
        assert_eq!(
            client_offer(&DeflateConfig::default()),
            "permessage-deflate; server_no_context_takeover; client_max_window_bits"
        );
        let config = DeflateConfig::default()
            .with_server_no_context_takeover(false)
            .with_client_no_context_takeover(true)
            .with_server_max_window_bits(10)
            .with_client_max_window_bits(12);
        assert_eq!(
            client_offer(&config),
            "permessage-deflate; client_no_context_takeover; server_max_window_bits=10; client_max_window_bits=12"
        );
        // Our own offers are valid offers for our own server.
        for c in [DeflateConfig::default(), config] {
            assert!(server_negotiate(&[client_offer(&c)], &DeflateConfig::default()).is_some());
        }
    }

    #[test]
    fn client_accepts_valid_answers() {
        let config = DeflateConfig::default();
        assert_eq!(client_accept::<&str>(&[], &config), Ok(None));
        assert_eq!(client_accept(&[""], &config), Ok(None));
        assert_eq!(
            client_accept(&["permessage-deflate"], &config),
            Ok(Some(params(false, false, 15, 15)))
        );
        assert_eq!(
            client_accept(
                &["permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=8; client_max_window_bits=10"],
                &config
            ),
            Ok(Some(params(true, true, 8, 10)))
        );
        // Our config's smaller client window is used even if the server allows more.
        let small = config.with_client_max_window_bits(10);
        assert_eq!(
            client_accept(&["permessage-deflate; client_max_window_bits=10"], &small),
            Ok(Some(params(false, false, 15, 10)))
        );
        assert_eq!(
            client_accept(&["permessage-deflate"], &small),
            Ok(Some(params(false, false, 15, 10)))
        );
    }

    #[test]
    fn client_rejects_invalid_answers() {
        let config = DeflateConfig::default()
            .with_server_max_window_bits(10)
            .with_client_max_window_bits(12);
        type Check = fn(&ExtensionError) -> bool;
        let cases: &[(&str, Check)] = &[
            (
                "x-foo",
                |e| matches!(e, ExtensionError::UnexpectedExtension(n) if n == "x-foo"),
            ),
            ("permessage-deflate, permessage-deflate", |e| {
                *e == ExtensionError::DuplicateExtension
            }),
            ("permessage-deflate; foo", |e| {
                matches!(e, ExtensionError::InvalidParam { .. })
            }),
            ("permessage-deflate; client_max_window_bits", |e| {
                matches!(e, ExtensionError::InvalidParam { .. })
            }),
            ("permessage-deflate; server_max_window_bits=11", |e| {
                matches!(e, ExtensionError::InvalidParam { .. })
            }),
            ("permessage-deflate; client_max_window_bits=13", |e| {
                matches!(e, ExtensionError::InvalidParam { .. })
            }),
            ("permessage-deflate; client_max_window_bits=8", |e| {
                *e == ExtensionError::UnsupportedWindowBits(8)
            }),
            ("permessage-deflate; server_no_context_takeover=x", |e| {
                matches!(e, ExtensionError::InvalidParam { .. })
            }),
            ("permessage-deflate;", |e| {
                matches!(e, ExtensionError::Malformed { .. })
            }),
        ];
        for (answer, check) in cases {
            let err = client_accept(&[answer], &config).unwrap_err();
            assert!(check(&err), "{answer}: {err:?}");
        }
        // Omitting a requested server_max_window_bits or server_no_context_takeover
        // is tolerated: the decompressor copes with any window and with context.
        let asked = config.with_server_no_context_takeover(true);
        assert_eq!(
            client_accept(&["permessage-deflate"], &asked),
            Ok(Some(params(false, false, 15, 12)))
        );
    }

    #[test]
    fn server_answers_are_accepted_by_client() {
        let configs = [
            DeflateConfig::default(),
            DeflateConfig::default()
                .with_server_no_context_takeover(false)
                .with_client_no_context_takeover(true)
                .with_server_max_window_bits(10)
                .with_client_max_window_bits(11),
        ];
        for client in &configs {
            for server in &configs {
                let (server_params, response) =
                    server_negotiate(&[client_offer(client)], server).unwrap();
                let client_params = client_accept(&[response], client).unwrap().unwrap();
                assert_eq!(
                    client_params.server_max_window_bits,
                    server_params.server_max_window_bits
                );
                assert_eq!(
                    client_params.server_no_context_takeover,
                    server_params.server_no_context_takeover
                );
                assert!(
                    client_params.client_max_window_bits <= server_params.client_max_window_bits
                );
                // The codecs of both ends can be built.
                client_params.client_deflater(1).unwrap();
                client_params.client_inflater().unwrap();
                server_params.server_deflater(1).unwrap();
                server_params.server_inflater().unwrap();
            }
        }
    }

    // --- codec ---------------------------------------------------------------

    const HELLO: [u8; 7] = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];

    fn inflate_all(
        inf: &mut Inflater,
        payload: &[u8],
        max: usize,
    ) -> Result<Vec<u8>, DeflateError> {
        let mut out = Vec::new();
        inf.decompress(payload, true, &mut out, max)?;
        Ok(out)
    }

    #[test]
    fn rfc7692_vectors() {
        // §7.2.3.1: a single message.
        let mut def = Deflater::new(15, 6, false).unwrap();
        let mut out = Vec::new();
        def.compress(b"Hello", &mut out).unwrap();
        assert_eq!(out, HELLO);
        let mut inf = Inflater::new(15, false).unwrap();
        assert_eq!(inflate_all(&mut inf, &HELLO, 100).unwrap(), b"Hello");

        // §7.2.3.2: the same message twice with context takeover.
        let mut second = Vec::new();
        def.compress(b"Hello", &mut second).unwrap();
        assert_eq!(second, [0xf2, 0x00, 0x11, 0x00, 0x00]);
        assert_eq!(inflate_all(&mut inf, &second, 100).unwrap(), b"Hello");

        // §7.2.3.3: a stored (uncompressed) block.
        let stored = [
            0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
        ];
        let mut inf = Inflater::new(15, false).unwrap();
        assert_eq!(inflate_all(&mut inf, &stored, 100).unwrap(), b"Hello");

        // §7.2.3.4: a BFINAL block, followed by an empty stored block header, and
        // also without it; the next message still decodes.
        for payload in [
            &[0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00][..],
            &[0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00][..],
        ] {
            let mut inf = Inflater::new(15, false).unwrap();
            assert_eq!(inflate_all(&mut inf, payload, 100).unwrap(), b"Hello");
            assert_eq!(inflate_all(&mut inf, &HELLO, 100).unwrap(), b"Hello");
        }

        // §7.2.3.6: the empty message.
        let mut out = Vec::new();
        def.compress(b"", &mut out).unwrap();
        assert_eq!(out, [0x00]);
        let mut inf = Inflater::new(15, true).unwrap();
        assert_eq!(inflate_all(&mut inf, &[0x00], 100).unwrap(), b"");
    }

    #[test]
    fn fragments_and_empty_fragments() {
        let mut inf = Inflater::new(15, true).unwrap();
        let mut out = Vec::new();
        for b in HELLO {
            inf.decompress(&[b], false, &mut out, 100).unwrap();
            inf.decompress(&[], false, &mut out, 100).unwrap();
        }
        inf.decompress(&[], true, &mut out, 100).unwrap();
        assert_eq!(out, b"Hello");
    }

    #[test]
    fn window_and_level_bounds() {
        assert_eq!(
            Deflater::new(8, 1, true).unwrap_err(),
            DeflateError::InvalidWindowBits(8)
        );
        assert_eq!(
            Deflater::new(16, 1, true).unwrap_err(),
            DeflateError::InvalidWindowBits(16)
        );
        assert_eq!(
            Deflater::new(15, 10, true).unwrap_err(),
            DeflateError::InvalidLevel(10)
        );
        assert!(Deflater::new(9, 0, true).is_ok());
        assert!(Inflater::new(8, true).is_ok());
        assert_eq!(
            Inflater::new(7, true).unwrap_err(),
            DeflateError::InvalidWindowBits(7)
        );
        assert_eq!(
            Inflater::new(16, true).unwrap_err(),
            DeflateError::InvalidWindowBits(16)
        );
        assert_eq!(DeflateConfig::default().validate(), Ok(()));
        assert_eq!(
            DeflateConfig::default()
                .with_client_max_window_bits(16)
                .validate(),
            Err(DeflateError::InvalidWindowBits(16))
        );
        assert_eq!(
            DeflateConfig::default()
                .with_compression_level(11)
                .validate(),
            Err(DeflateError::InvalidLevel(11))
        );
        assert!(DeflateConfig::default().should_compress(32));
        assert!(!DeflateConfig::default().should_compress(31));
    }

    #[test]
    fn decompression_bomb_is_stopped() {
        let zeros = vec![0u8; 10 << 20];
        let mut compressed = Vec::new();
        Deflater::new(15, 9, true)
            .unwrap()
            .compress(&zeros, &mut compressed)
            .unwrap();
        assert!(compressed.len() < 20 << 10, "{}", compressed.len());
        let max = 64 << 10;

        // Whole payload at once.
        let mut inf = Inflater::new(15, false).unwrap();
        let mut out = Vec::new();
        assert_eq!(
            inf.decompress(&compressed, true, &mut out, max),
            Err(DeflateError::TooLarge)
        );
        assert!(out.len() <= max);
        assert!(out.capacity() <= max + 1, "capacity {}", out.capacity());

        // Fragment by fragment: fails on the fragment that crosses the limit.
        let mut inf = Inflater::new(15, false).unwrap();
        let mut out = Vec::new();
        let mut failed = false;
        for chunk in compressed.chunks(7) {
            match inf.decompress(chunk, false, &mut out, max) {
                Ok(()) => assert!(out.len() <= max),
                Err(e) => {
                    assert_eq!(e, DeflateError::TooLarge);
                    failed = true;
                    break;
                }
            }
        }
        assert!(failed);
        assert!(out.len() <= max && out.capacity() <= max + 1);

        // After the error the inflater is clean and usable again.
        assert_eq!(inflate_all(&mut inf, &HELLO, 100).unwrap(), b"Hello");
    }

    #[test]
    fn limit_is_exact_and_counts_earlier_output() {
        let msg = vec![b'a'; 1000];
        let mut c = Vec::new();
        Deflater::new(15, 1, true)
            .unwrap()
            .compress(&msg, &mut c)
            .unwrap();
        let mut inf = Inflater::new(15, true).unwrap();
        assert_eq!(inflate_all(&mut inf, &c, 1000).unwrap(), msg);
        assert_eq!(inflate_all(&mut inf, &c, 999), Err(DeflateError::TooLarge));
        // `out` already holds 10 bytes: the limit is on the total.
        let mut out = vec![0; 10];
        assert_eq!(
            inf.decompress(&c, true, &mut out, 1009),
            Err(DeflateError::TooLarge)
        );
        let mut out = vec![0; 10];
        inf.decompress(&c, true, &mut out, 1010).unwrap();
        assert_eq!(&out[10..], &msg[..]);
        // A zero limit still allows the empty message.
        assert_eq!(inflate_all(&mut inf, &[0x00], 0).unwrap(), b"");
        assert_eq!(
            inflate_all(&mut inf, &HELLO, 0),
            Err(DeflateError::TooLarge)
        );
    }

    #[test]
    fn corrupt_input_is_reported() {
        for bad in [
            &[0xff; 16][..],
            &[0x07][..],                         // BTYPE=11 (reserved)
            &[0x00, 0x05, 0x00, 0x00, 0x00][..], // stored block with bad NLEN
        ] {
            let mut inf = Inflater::new(15, false).unwrap();
            assert_eq!(
                inflate_all(&mut inf, bad, 1 << 20),
                Err(DeflateError::Corrupt),
                "{bad:x?}"
            );
            // Reset after the error: a valid message decodes.
            assert_eq!(inflate_all(&mut inf, &HELLO, 100).unwrap(), b"Hello");
        }
        // A back-reference into a previous message the inflater never saw.
        let mut def = Deflater::new(15, 6, false).unwrap();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        def.compress(b"a message that will be repeated", &mut a)
            .unwrap();
        def.compress(b"a message that will be repeated", &mut b)
            .unwrap();
        let mut inf = Inflater::new(15, false).unwrap();
        assert_eq!(
            inflate_all(&mut inf, &b, 1 << 20),
            Err(DeflateError::Corrupt)
        );
    }

    #[test]
    fn large_incompressible_message_round_trips() {
        let mut rng = fastrand::Rng::with_seed(7);
        let data: Vec<u8> = (0..3_000_000).map(|_| rng.u8(..)).collect();
        for level in [0, 1, 9] {
            let mut c = Vec::new();
            Deflater::new(15, level, true)
                .unwrap()
                .compress(&data, &mut c)
                .unwrap();
            let mut inf = Inflater::new(15, true).unwrap();
            assert_eq!(inflate_all(&mut inf, &c, data.len()).unwrap(), data);
        }
    }

    #[test]
    fn context_takeover_shrinks_repeats_and_reset_is_safe() {
        let msg = b"{\"type\":\"tick\",\"symbol\":\"ABC\",\"price\":100}";
        let mut def = Deflater::new(15, 1, false).unwrap();
        let mut inf = Inflater::new(15, false).unwrap();
        let (mut first, mut second) = (Vec::new(), Vec::new());
        def.compress(msg, &mut first).unwrap();
        def.compress(msg, &mut second).unwrap();
        assert!(second.len() < first.len() / 2);
        assert_eq!(inflate_all(&mut inf, &first, 1000).unwrap(), msg);
        assert_eq!(inflate_all(&mut inf, &second, 1000).unwrap(), msg);
        // Resetting the compressor between messages never breaks the peer.
        def.reset();
        let mut third = Vec::new();
        def.compress(msg, &mut third).unwrap();
        assert_eq!(third, first);
        assert_eq!(inflate_all(&mut inf, &third, 1000).unwrap(), msg);
    }

    fn message_strategy() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..3000),
            // Repetitive data, so back-references (and window limits) matter.
            (proptest::collection::vec(0u8..4, 1..64), 0usize..40_000)
                .prop_map(|(pattern, len)| pattern.iter().copied().cycle().take(len).collect()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn round_trip(
            messages in proptest::collection::vec(message_strategy(), 1..5),
            window_bits in prop_oneof![Just(9u8), Just(10), Just(12), Just(15)],
            level in 0u32..=9,
            no_context_takeover in any::<bool>(),
            split in 1usize..50,
        ) {
            let mut def = Deflater::new(window_bits, level, no_context_takeover).unwrap();
            let mut inf = Inflater::new(window_bits, no_context_takeover).unwrap();
            for msg in &messages {
                let mut compressed = Vec::new();
                def.compress(msg, &mut compressed).unwrap();
                let mut out = Vec::new();
                let chunk = compressed.len().div_ceil(split).max(1);
                let chunks: Vec<&[u8]> = compressed.chunks(chunk).collect();
                for (i, c) in chunks.iter().enumerate() {
                    inf.decompress(c, i + 1 == chunks.len(), &mut out, msg.len()).unwrap();
                }
                prop_assert_eq!(&out, msg);
            }
        }

        #[test]
        fn decompress_never_panics_and_respects_limit(
            data in proptest::collection::vec(any::<u8>(), 0..2000),
            max in 0usize..5000,
            split in 1usize..8,
        ) {
            let mut inf = Inflater::new(15, false).unwrap();
            let mut out = Vec::new();
            let chunk = data.len().div_ceil(split).max(1);
            let chunks: Vec<&[u8]> = data.chunks(chunk).collect();
            for (i, c) in chunks.iter().enumerate() {
                let r = inf.decompress(c, i + 1 == chunks.len(), &mut out, max);
                prop_assert!(out.len() <= max);
                if r.is_err() {
                    break;
                }
            }
        }

        #[test]
        fn parser_never_panics(s in "\\PC{0,200}") {
            let _ = parse_extensions(&s);
            let _ = server_negotiate(&[&s], &DeflateConfig::default());
            let _ = client_accept(&[&s], &DeflateConfig::default());
        }

        #[test]
        fn parser_never_panics_on_header_alphabet(s in "[a-z_=;, \t\"\\\\0-9]{0,200}") {
            if let Ok(exts) = parse_extensions(&s) {
                prop_assert!(exts.len() <= MAX_EXTENSIONS);
                prop_assert!(exts.iter().all(|e| e.params.len() <= MAX_PARAMS));
            }
            if let Some((_, response)) = server_negotiate(&[&s], &DeflateConfig::default()) {
                let parsed = parse_extensions(&response).unwrap();
                prop_assert_eq!(parsed.len(), 1);
            }
        }
    }
}
