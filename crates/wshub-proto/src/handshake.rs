//! The HTTP/1.1 Upgrade handshake of RFC 6455 §4, for both roles, without I/O.
//!
//! Server role: [`parse_request`] turns the bytes read so far into a [`Request`]
//! (or asks for more), [`validate_upgrade`] checks the WebSocket headers and yields
//! an [`UpgradeRequest`], [`select_protocol`] picks a subprotocol, and
//! [`write_accept_response`] / [`HandshakeError::write_response`] write the answer.
//! [`validate_upgrade`] takes plain `(name, value)` pairs so the hyper/axum
//! integration, which parses HTTP itself, runs exactly the same checks.
//!
//! Client role: [`ClientRequest::write`] writes the upgrade request and returns the
//! key it generated; [`parse_response`] checks the server's answer against that key
//! and the subprotocols offered.
//!
//! Both parsers are bounded by [`Limits::max_header_bytes`] and
//! [`Limits::max_headers`]: they never look at more than `max_header_bytes` bytes,
//! so their cost is linear in that bound whatever the peer sends.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha1::{Digest, Sha1};

use crate::limits::Limits;

/// The GUID that RFC 6455 §1.3 appends to the client's key before hashing.
const WEBSOCKET_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Longest piece of peer input echoed back inside an error message.
const MAX_ECHO: usize = 32;

/// Why a handshake failed, on either side.
///
/// The message of each variant is a plain-language reason: on the server it becomes
/// the body of the HTTP error response ([`HandshakeError::write_response`]), in the
/// client it is what the user sees. [`HandshakeError::status`] gives the HTTP status.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    // ---- server side: the request ----
    /// The request is not valid HTTP/1.1 (400).
    #[error("malformed HTTP request: {0}")]
    MalformedRequest(&'static str),
    /// The request (or response) is HTTP/1.0; WebSocket needs HTTP/1.1 (505).
    #[error("HTTP/1.0 is not supported: a WebSocket handshake needs HTTP/1.1")]
    HttpVersion,
    /// More header fields than [`Limits::max_headers`] (431).
    #[error("too many header fields (the limit is {max})")]
    TooManyHeaders {
        /// The limit.
        max: usize,
    },
    /// The request line and headers exceed [`Limits::max_header_bytes`] (431).
    #[error("request line and headers exceed {max} bytes")]
    HeadersTooLarge {
        /// The limit.
        max: usize,
    },
    /// The method is not `GET` (405). Holds the method, cut to a few characters.
    #[error("method {0} is not allowed: a WebSocket upgrade must use GET")]
    MethodNotAllowed(String),
    /// No `Host` header (400).
    #[error("missing Host header")]
    MissingHost,
    /// A header that may appear only once appeared several times (400).
    #[error("the {0} header appears more than once")]
    DuplicateHeader(&'static str),
    /// A header value that is empty, not ASCII/UTF-8, or holds control characters (400).
    #[error("invalid value in the {0} header")]
    InvalidHeaderValue(&'static str),
    /// No `Upgrade` header: a plain HTTP request reached a WebSocket endpoint (426).
    #[error("this endpoint only speaks WebSocket: send Upgrade: websocket")]
    MissingUpgrade,
    /// An `Upgrade` header that does not offer `websocket` (426).
    #[error("the Upgrade header does not offer websocket")]
    UpgradeNotWebSocket,
    /// No `Connection` header listing `upgrade` (400).
    #[error("the Connection header does not list upgrade")]
    MissingConnectionUpgrade,
    /// No `Sec-WebSocket-Version` header (426).
    #[error("missing Sec-WebSocket-Version header: this server speaks version 13")]
    MissingVersion,
    /// A `Sec-WebSocket-Version` other than 13 (426). Holds the offered value, cut
    /// to a few characters.
    #[error("unsupported WebSocket version {0:?}: this server speaks version 13")]
    UnsupportedVersion(String),
    /// No `Sec-WebSocket-Key` header (400).
    #[error("missing Sec-WebSocket-Key header")]
    MissingKey,
    /// A `Sec-WebSocket-Key` that is not the base64 encoding of 16 bytes (400).
    #[error("Sec-WebSocket-Key is not the base64 encoding of 16 bytes")]
    InvalidKey,
    /// A `Sec-WebSocket-Protocol` entry that is not an HTTP token (400).
    #[error("Sec-WebSocket-Protocol holds an entry that is not a valid token")]
    InvalidProtocol,

    // ---- client side: the response ----
    /// The response is not valid HTTP/1.1.
    #[error("malformed HTTP response from the server: {0}")]
    MalformedResponse(&'static str),
    /// The server answered with a status other than 101.
    #[error("the server answered HTTP {0} instead of 101 Switching Protocols")]
    Status(u16),
    /// The 101 response lacks `Upgrade: websocket`.
    #[error("the server response lacks Upgrade: websocket")]
    ResponseNotWebSocket,
    /// The 101 response lacks `Connection: Upgrade`.
    #[error("the server response lacks Connection: Upgrade")]
    ResponseNotUpgrade,
    /// The 101 response has no `Sec-WebSocket-Accept`.
    #[error("the server response lacks Sec-WebSocket-Accept")]
    MissingAccept,
    /// `Sec-WebSocket-Accept` does not match the key the client sent.
    #[error("Sec-WebSocket-Accept does not match the key sent")]
    AcceptMismatch,
    /// The server selected a subprotocol the client did not offer. Holds the
    /// selected value, cut to a few characters.
    #[error("the server selected subprotocol {0:?}, which the client did not offer")]
    UnexpectedProtocol(String),
    /// A response header that is duplicated or has an invalid value.
    #[error("the server response has an invalid {0} header")]
    InvalidResponseHeader(&'static str),
}

impl HandshakeError {
    /// The HTTP status the server answers this error with.
    ///
    /// 400 for malformed requests and bad WebSocket headers, 405 for a method other
    /// than GET, 426 for a missing/foreign `Upgrade` or an unsupported version, 431
    /// for the header limits, 505 for HTTP/1.0. The client-side variants are never
    /// sent over HTTP; they map to 502 (a bad answer from upstream).
    ///
    /// ```
    /// use wshub_proto::handshake::HandshakeError;
    /// assert_eq!(HandshakeError::MissingVersion.status(), 426);
    /// assert_eq!(HandshakeError::HeadersTooLarge { max: 8192 }.status(), 431);
    /// ```
    pub fn status(&self) -> u16 {
        use HandshakeError as E;
        match self {
            E::MalformedRequest(_)
            | E::MissingHost
            | E::DuplicateHeader(_)
            | E::InvalidHeaderValue(_)
            | E::MissingConnectionUpgrade
            | E::MissingKey
            | E::InvalidKey
            | E::InvalidProtocol => 400,
            E::MethodNotAllowed(_) => 405,
            E::MissingUpgrade | E::UpgradeNotWebSocket | E::MissingVersion => 426,
            E::UnsupportedVersion(_) => 426,
            E::TooManyHeaders { .. } | E::HeadersTooLarge { .. } => 431,
            E::HttpVersion => 505,
            E::MalformedResponse(_)
            | E::Status(_)
            | E::ResponseNotWebSocket
            | E::ResponseNotUpgrade
            | E::MissingAccept
            | E::AcceptMismatch
            | E::UnexpectedProtocol(_)
            | E::InvalidResponseHeader(_) => 502,
        }
    }

    /// Writes the complete HTTP error response for this error into `out`: status
    /// [`HandshakeError::status`], the message as a `text/plain` body, and the
    /// headers the status calls for: `Allow: GET` with 405; `Upgrade: websocket`
    /// and `Connection: Upgrade, close` with 426; `Sec-WebSocket-Version: 13` with
    /// the version errors.
    pub fn write_response(&self, out: &mut Vec<u8>) {
        let upgrade: [(&str, &str); 2] =
            [("Upgrade", "websocket"), ("Connection", "Upgrade, close")];
        let version: [(&str, &str); 3] = [
            ("Sec-WebSocket-Version", "13"),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade, close"),
        ];
        let extra: &[(&str, &str)] = match self {
            HandshakeError::MethodNotAllowed(_) => &[("Allow", "GET")],
            HandshakeError::MissingVersion | HandshakeError::UnsupportedVersion(_) => &version,
            HandshakeError::MissingUpgrade | HandshakeError::UpgradeNotWebSocket => &upgrade,
            _ => &[],
        };
        write_reject_response(out, self.status(), &self.to_string(), extra);
    }
}

// ---------------------------------------------------------------------------
// Server side
// ---------------------------------------------------------------------------

/// A parsed HTTP request head: request line and header fields, nothing more.
///
/// Produced by [`parse_request`]; check it with [`Request::validate_upgrade`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method, e.g. `GET` (case-sensitive, as sent).
    pub method: String,
    /// The request target as sent: usually origin-form (`/chat?room=1`).
    pub target: String,
    /// Header fields in the order received; names keep their original case, values
    /// their raw bytes with surrounding whitespace removed.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Bytes of the input the request head occupies, final empty line included.
    /// Whatever follows belongs to the WebSocket stream.
    pub len: usize,
}

impl Request {
    /// The value of the first header named `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        find_header(&self.headers, name)
    }

    /// The values of every header named `name` (ASCII case-insensitive), in order.
    pub fn header_all<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s [u8]> + 's {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// All headers as `(name, value)` pairs, the form [`validate_upgrade`] takes.
    pub fn iter_headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.headers.iter().map(|(n, v)| (n.as_str(), v.as_slice()))
    }

    /// The path of the target, without the query: `/chat` for `/chat?room=1`.
    /// For an absolute-form target (`http://host/chat`) the scheme and authority
    /// are dropped; an absolute-form target without a path gives `/`.
    pub fn path(&self) -> &str {
        let origin_form = strip_authority(&self.target);
        match origin_form.split_once('?') {
            Some((path, _)) => path,
            None => origin_form,
        }
    }

    /// The query of the target, without the `?`: `room=1` for `/chat?room=1`.
    /// `None` when the target has no `?`.
    pub fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, q)| q)
    }

    /// Checks this request is a valid WebSocket upgrade; see [`validate_upgrade`].
    pub fn validate_upgrade(&self) -> Result<UpgradeRequest, HandshakeError> {
        validate_upgrade(&self.method, self.iter_headers())
    }
}

/// Drops `scheme://authority` from an absolute-form target; other forms pass.
fn strip_authority(target: &str) -> &str {
    if target.starts_with('/') {
        return target;
    }
    match target.split_once("://") {
        Some((scheme, rest))
            if !scheme.is_empty()
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) =>
        {
            match rest.find(['/', '?']) {
                Some(i) if rest.as_bytes().get(i) == Some(&b'/') => &rest[i..],
                _ => "/",
            }
        }
        _ => target,
    }
}

/// What a valid upgrade request asks for, as found by [`validate_upgrade`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeRequest {
    /// The `Host` header.
    pub host: String,
    /// The `Sec-WebSocket-Key` header (base64 of 16 bytes), to answer with
    /// [`accept_key`].
    pub key: String,
    /// The `Origin` header, if any. Browsers always send it; checking it is the
    /// application's job.
    pub origin: Option<String>,
    /// Subprotocols the client offers, in its order of preference, from every
    /// `Sec-WebSocket-Protocol` header.
    pub protocols: Vec<String>,
    /// The raw values of every `Sec-WebSocket-Extensions` header, in order, for the
    /// extension parser of [`crate::deflate`].
    pub extensions: Vec<String>,
}

impl UpgradeRequest {
    /// The `Sec-WebSocket-Accept` value for this request's key.
    pub fn accept_key(&self) -> String {
        accept_key(self.key.as_bytes())
    }

    /// Writes the 101 response accepting this request; see [`write_accept_response`].
    pub fn write_accept(
        &self,
        out: &mut Vec<u8>,
        protocol: Option<&str>,
        extensions: Option<&str>,
        extra_headers: &[(&str, &str)],
    ) {
        write_accept_response(out, &self.key, protocol, extensions, extra_headers);
    }
}

/// Parses an HTTP/1.1 request head from the start of `buf`.
///
/// Returns `Ok(None)` while the head is incomplete (call again with more bytes),
/// `Ok(Some(request))` once the empty line ending the headers is in `buf`
/// (`request.len` says where it ends), or an error:
/// [`HandshakeError::TooManyHeaders`] past [`Limits::max_headers`] fields,
/// [`HandshakeError::HeadersTooLarge`] if the head is longer than
/// [`Limits::max_header_bytes`] (or still incomplete when `buf` holds that many
/// bytes), [`HandshakeError::HttpVersion`] for HTTP/1.0 and
/// [`HandshakeError::MalformedRequest`] for anything that is not HTTP.
///
/// At most `max_header_bytes` bytes of `buf` are examined, once.
///
/// ```
/// use wshub_proto::{handshake::parse_request, Limits};
/// let buf = b"GET /chat HTTP/1.1\r\nHost: example.com\r\n\r\n";
/// assert_eq!(parse_request(&buf[..10], &Limits::default()), Ok(None));
/// let req = parse_request(buf, &Limits::default()).unwrap().unwrap();
/// assert_eq!((req.path(), req.len), ("/chat", buf.len()));
/// ```
pub fn parse_request(buf: &[u8], limits: &Limits) -> Result<Option<Request>, HandshakeError> {
    let window = &buf[..buf.len().min(limits.max_header_bytes)];
    let mut slots = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut req = httparse::Request::new(&mut slots);
    let len = match req.parse(window) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return incomplete(buf, limits),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HandshakeError::TooManyHeaders {
                max: limits.max_headers,
            })
        }
        Err(e) => return Err(HandshakeError::MalformedRequest(describe(e))),
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(HandshakeError::MalformedRequest("incomplete request line"));
    };
    if version != 1 {
        return Err(HandshakeError::HttpVersion);
    }
    Ok(Some(Request {
        method: method.to_owned(),
        target: target.to_owned(),
        headers: own_headers(req.headers),
        len,
    }))
}

/// The answer for a head that is not complete yet: wait, unless the limit is hit.
fn incomplete<T>(buf: &[u8], limits: &Limits) -> Result<Option<T>, HandshakeError> {
    if buf.len() >= limits.max_header_bytes {
        Err(HandshakeError::HeadersTooLarge {
            max: limits.max_header_bytes,
        })
    } else {
        Ok(None)
    }
}

fn own_headers(headers: &[httparse::Header<'_>]) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .map(|h| (h.name.to_owned(), h.value.trim_ascii().to_vec()))
        .collect()
}

fn find_header<'h>(headers: &'h [(String, Vec<u8>)], name: &str) -> Option<&'h [u8]> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
}

fn describe(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status line",
        httparse::Error::Token => "invalid method or token",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "invalid HTTP version",
    }
}

/// Checks that a request is a valid WebSocket upgrade (RFC 6455 §4.2.1) and
/// extracts what it asks for.
///
/// `headers` are `(name, value)` pairs; names are matched ASCII
/// case-insensitively, values may carry surrounding whitespace. The raw parser
/// passes [`Request::iter_headers`]; the hyper/axum integration passes its own
/// header map, so both run the same checks, in this order:
///
/// 1. method `GET`, else [`HandshakeError::MethodNotAllowed`] (405);
/// 2. an `Upgrade` header listing `websocket` (any case), else
///    [`HandshakeError::MissingUpgrade`] / [`HandshakeError::UpgradeNotWebSocket`] (426);
/// 3. a `Connection` header listing `upgrade` (any case; every `Connection` header
///    is searched), else [`HandshakeError::MissingConnectionUpgrade`] (400);
/// 4. exactly one non-empty `Host` of visible ASCII (400);
/// 5. exactly one `Sec-WebSocket-Version`, equal to `13`, else
///    [`HandshakeError::MissingVersion`] / [`HandshakeError::UnsupportedVersion`] (426);
/// 6. exactly one `Sec-WebSocket-Key`, the base64 of 16 bytes (400);
/// 7. at most one `Origin`, UTF-8 without control characters (400);
/// 8. every `Sec-WebSocket-Protocol` entry a token (400); every
///    `Sec-WebSocket-Extensions` value UTF-8 (400).
///
/// ```
/// use wshub_proto::handshake::validate_upgrade;
/// let headers: [(&str, &[u8]); 5] = [
///     ("Host", b"example.com"),
///     ("Upgrade", b"websocket"),
///     ("Connection", b"keep-alive, Upgrade"),
///     ("Sec-WebSocket-Version", b"13"),
///     ("Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="),
/// ];
/// let up = validate_upgrade("GET", headers).unwrap();
/// assert_eq!(up.host, "example.com");
/// ```
pub fn validate_upgrade<'a, I>(method: &str, headers: I) -> Result<UpgradeRequest, HandshakeError>
where
    I: IntoIterator<Item = (&'a str, &'a [u8])>,
{
    if method != "GET" {
        return Err(HandshakeError::MethodNotAllowed(echo(method.as_bytes())));
    }

    let mut upgrade_seen = false;
    let mut upgrade_ws = false;
    let mut connection_upgrade = false;
    let mut host = Single::default();
    let mut version = Single::default();
    let mut key = Single::default();
    let mut origin = Single::default();
    let mut protocols = Vec::new();
    let mut bad_protocol = false;
    let mut extensions = Vec::new();
    let mut bad_extensions = false;

    for (name, value) in headers {
        let value = value.trim_ascii();
        if name.eq_ignore_ascii_case("upgrade") {
            upgrade_seen = true;
            upgrade_ws |= has_token(value, b"websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            connection_upgrade |= has_token(value, b"upgrade");
        } else if name.eq_ignore_ascii_case("host") {
            host.add(value);
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            version.add(value);
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            key.add(value);
        } else if name.eq_ignore_ascii_case("origin") {
            origin.add(value);
        } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
            for item in list_items(value) {
                match std::str::from_utf8(item) {
                    Ok(token) if is_token(item) => protocols.push(token.to_owned()),
                    _ => bad_protocol = true,
                }
            }
        } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
            match std::str::from_utf8(value) {
                Ok(_) if value.is_empty() => {}
                Ok(s) if !has_controls(value) => extensions.push(s.to_owned()),
                _ => bad_extensions = true,
            }
        }
    }

    if !upgrade_seen {
        return Err(HandshakeError::MissingUpgrade);
    }
    if !upgrade_ws {
        return Err(HandshakeError::UpgradeNotWebSocket);
    }
    if !connection_upgrade {
        return Err(HandshakeError::MissingConnectionUpgrade);
    }

    let host = match host.get("Host")? {
        None => return Err(HandshakeError::MissingHost),
        Some(h) if !h.is_empty() && h.iter().all(|b| (0x21..=0x7e).contains(b)) => {
            String::from_utf8_lossy(h).into_owned()
        }
        Some(_) => return Err(HandshakeError::InvalidHeaderValue("Host")),
    };

    match version.get("Sec-WebSocket-Version")? {
        None => return Err(HandshakeError::MissingVersion),
        Some(b"13") => {}
        Some(v) => return Err(HandshakeError::UnsupportedVersion(echo(v))),
    }

    let key = match key.get("Sec-WebSocket-Key")? {
        None => return Err(HandshakeError::MissingKey),
        Some(k) if is_valid_key(k) => String::from_utf8_lossy(k).into_owned(),
        Some(_) => return Err(HandshakeError::InvalidKey),
    };

    let origin = match origin.get("Origin")? {
        None => None,
        Some(o) => match std::str::from_utf8(o) {
            Ok(s) if !has_controls(o) => Some(s.to_owned()),
            _ => return Err(HandshakeError::InvalidHeaderValue("Origin")),
        },
    };

    if bad_protocol {
        return Err(HandshakeError::InvalidProtocol);
    }
    if bad_extensions {
        return Err(HandshakeError::InvalidHeaderValue(
            "Sec-WebSocket-Extensions",
        ));
    }

    Ok(UpgradeRequest {
        host,
        key,
        origin,
        protocols,
        extensions,
    })
}

/// A header that must appear at most once: its first value and whether it repeated.
#[derive(Default)]
struct Single<'a> {
    value: Option<&'a [u8]>,
    repeated: bool,
}

impl<'a> Single<'a> {
    fn add(&mut self, value: &'a [u8]) {
        if self.value.is_some() {
            self.repeated = true;
        } else {
            self.value = Some(value);
        }
    }

    fn get(&self, name: &'static str) -> Result<Option<&'a [u8]>, HandshakeError> {
        if self.repeated {
            Err(HandshakeError::DuplicateHeader(name))
        } else {
            Ok(self.value)
        }
    }
}

/// Whether `key` is the padded base64 of exactly 16 bytes.
fn is_valid_key(key: &[u8]) -> bool {
    key.len() == 24 && BASE64.decode(key).is_ok_and(|raw| raw.len() == 16)
}

/// The non-empty, trimmed elements of a comma-separated header list.
fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|item| !item.is_empty())
}

/// Whether the comma-separated list `value` holds `token`, ASCII case-insensitively.
fn has_token(value: &[u8], token: &[u8]) -> bool {
    list_items(value).any(|item| item.eq_ignore_ascii_case(token))
}

/// Whether `s` is a non-empty HTTP token (RFC 9110 §5.6.2).
fn is_token(s: &[u8]) -> bool {
    !s.is_empty()
        && s.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn has_controls(s: &[u8]) -> bool {
    s.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
}

/// Peer input for an error message: lossy UTF-8, at most [`MAX_ECHO`] characters.
fn echo(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .take(MAX_ECHO)
        .collect()
}

/// The `Sec-WebSocket-Accept` value for a `Sec-WebSocket-Key`: the base64 of the
/// SHA-1 of the key followed by the RFC 6455 GUID.
///
/// ```
/// use wshub_proto::handshake::accept_key;
/// assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
/// ```
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(WEBSOCKET_GUID);
    BASE64.encode(sha.finalize())
}

/// Picks the subprotocol to answer with: the first protocol **in the client's
/// order** (`offered`, i.e. [`UpgradeRequest::protocols`]) that is in `supported`.
/// The client lists its protocols by preference, so the server honours that order;
/// the order of `supported` does not matter. Names compare case-sensitively.
///
/// ```
/// use wshub_proto::handshake::select_protocol;
/// let offered = vec!["v2.chat".to_string(), "v1.chat".to_string()];
/// assert_eq!(select_protocol(&offered, &["v1.chat", "v2.chat"]), Some("v2.chat"));
/// assert_eq!(select_protocol(&offered, &["mqtt"]), None);
/// ```
pub fn select_protocol<'a>(offered: &[String], supported: &[&'a str]) -> Option<&'a str> {
    offered
        .iter()
        .find_map(|o| supported.iter().copied().find(|s| *s == o.as_str()))
}

/// Writes the `101 Switching Protocols` response accepting a handshake.
///
/// `key` is the client's `Sec-WebSocket-Key` ([`UpgradeRequest::key`]);
/// `protocol` the subprotocol chosen (see [`select_protocol`]), `extensions` the
/// negotiated `Sec-WebSocket-Extensions` value; `extra_headers` are appended as
/// given. CR and LF are removed from every value written, so no caller-supplied
/// string can inject a header.
pub fn write_accept_response(
    out: &mut Vec<u8>,
    key: &str,
    protocol: Option<&str>,
    extensions: Option<&str>,
    extra_headers: &[(&str, &str)],
) {
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n",
    );
    push_header(out, "Sec-WebSocket-Accept", &accept_key(key.as_bytes()));
    if let Some(p) = protocol {
        push_header(out, "Sec-WebSocket-Protocol", p);
    }
    if let Some(e) = extensions {
        push_header(out, "Sec-WebSocket-Extensions", e);
    }
    for (name, value) in extra_headers {
        push_header(out, name, value);
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes a complete HTTP error response refusing a handshake.
///
/// Status line `HTTP/1.1 {status} {canonical reason phrase}` (a status outside
/// 100–999 is written as 500), `Content-Type: text/plain; charset=utf-8`, a
/// matching `Content-Length`, `Connection: close` unless `extra_headers` holds its
/// own `Connection`, then `extra_headers`; the body is `reason` and a newline. CR
/// and LF are removed from header values as in [`write_accept_response`].
///
/// ```
/// use wshub_proto::handshake::write_reject_response;
/// let mut out = Vec::new();
/// write_reject_response(&mut out, 403, "origin not allowed", &[]);
/// assert!(out.starts_with(b"HTTP/1.1 403 Forbidden\r\n"));
/// assert!(out.ends_with(b"\r\n\r\norigin not allowed\n"));
/// ```
pub fn write_reject_response(
    out: &mut Vec<u8>,
    status: u16,
    reason: &str,
    extra_headers: &[(&str, &str)],
) {
    let status = if (100..=999).contains(&status) {
        status
    } else {
        500
    };
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status_reason(status).as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: text/plain; charset=utf-8\r\n");
    push_header(out, "Content-Length", &(reason.len() + 1).to_string());
    if !extra_headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("connection"))
    {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    for (name, value) in extra_headers {
        push_header(out, name, value);
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(reason.as_bytes());
    out.push(b'\n');
}

/// The canonical reason phrase of an HTTP status code (RFC 9110 §15), or the
/// name of its class (`Client Error`, ...) for codes without one.
pub fn status_reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        413 => "Content Too Large",
        414 => "URI Too Long",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => match status / 100 {
            1 => "Informational",
            2 => "Success",
            3 => "Redirection",
            4 => "Client Error",
            _ => "Server Error",
        },
    }
}

/// Writes `name: value\r\n`, dropping any CR or LF from both.
fn push_header(out: &mut Vec<u8>, name: &str, value: &str) {
    push_clean(out, name);
    out.extend_from_slice(b": ");
    push_clean(out, value);
    out.extend_from_slice(b"\r\n");
}

fn push_clean(out: &mut Vec<u8>, s: &str) {
    out.extend(s.bytes().filter(|&b| b != b'\r' && b != b'\n'));
}

// ---------------------------------------------------------------------------
// Client side
// ---------------------------------------------------------------------------

/// The client's upgrade request, written by [`ClientRequest::write`].
///
/// ```
/// use wshub_proto::handshake::ClientRequest;
/// let mut out = Vec::new();
/// let key = ClientRequest {
///     host: "example.com:8080",
///     path: "/chat?room=1",
///     protocols: &["v1.chat"],
///     ..Default::default()
/// }
/// .write(&mut out);
/// assert_eq!(key.len(), 24);
/// assert!(out.starts_with(b"GET /chat?room=1 HTTP/1.1\r\nHost: example.com:8080\r\n"));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientRequest<'a> {
    /// The `Host` header: host, plus `:port` when not the scheme's default.
    pub host: &'a str,
    /// The request target: path and query (`/chat?room=1`). Empty means `/`.
    pub path: &'a str,
    /// Subprotocols to offer, by preference; none means no `Sec-WebSocket-Protocol`.
    pub protocols: &'a [&'a str],
    /// The `Sec-WebSocket-Extensions` offer, if any.
    pub extensions: Option<&'a str>,
    /// Further headers (`Origin`, `Authorization`, ...), written as given.
    pub headers: &'a [(&'a str, &'a str)],
}

impl ClientRequest<'_> {
    /// Writes the request into `out` with a fresh random key and returns that key,
    /// to be passed to [`parse_response`].
    ///
    /// The 16 key bytes come from the operating system (`getrandom`); if it fails,
    /// from `fastrand` (the key is a nonce against caches, not a secret). Never
    /// panics. CR and LF are removed from every value written.
    pub fn write(&self, out: &mut Vec<u8>) -> String {
        let mut nonce = [0u8; 16];
        if getrandom::fill(&mut nonce).is_err() {
            fastrand::fill(&mut nonce);
        }
        self.write_with_nonce(&nonce, out)
    }

    /// Like [`ClientRequest::write`] with the 16 key bytes given, for reproducible
    /// output in tests and fuzzing. Returns the key (the base64 of `nonce`).
    pub fn write_with_nonce(&self, nonce: &[u8; 16], out: &mut Vec<u8>) -> String {
        let key = BASE64.encode(nonce);
        out.extend_from_slice(b"GET ");
        if self.path.is_empty() {
            out.push(b'/');
        } else {
            push_clean(out, self.path);
        }
        out.extend_from_slice(b" HTTP/1.1\r\n");
        push_header(out, "Host", self.host);
        out.extend_from_slice(b"Upgrade: websocket\r\nConnection: Upgrade\r\n");
        push_header(out, "Sec-WebSocket-Key", &key);
        out.extend_from_slice(b"Sec-WebSocket-Version: 13\r\n");
        if !self.protocols.is_empty() {
            push_header(out, "Sec-WebSocket-Protocol", &self.protocols.join(", "));
        }
        if let Some(e) = self.extensions {
            push_header(out, "Sec-WebSocket-Extensions", e);
        }
        for (name, value) in self.headers {
            push_header(out, name, value);
        }
        out.extend_from_slice(b"\r\n");
        key
    }
}

/// A server's successful `101` answer, as checked by [`parse_response`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code: always 101 in a value returned by [`parse_response`].
    pub status: u16,
    /// The subprotocol the server selected, one of those offered.
    pub protocol: Option<String>,
    /// The raw values of every `Sec-WebSocket-Extensions` header, for the extension
    /// parser of [`crate::deflate`] (which must also check they were offered).
    pub extensions: Vec<String>,
    /// Header fields in the order received, values trimmed.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Bytes of the input the response head occupies; what follows is WebSocket
    /// frames.
    pub len: usize,
}

impl Response {
    /// The value of the first header named `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        find_header(&self.headers, name)
    }
}

/// Parses and checks the server's answer to a [`ClientRequest`] (RFC 6455 §4.1).
///
/// `key` is the value [`ClientRequest::write`] returned; `offered_protocols` the
/// subprotocols the request offered. Returns `Ok(None)` while the head is
/// incomplete. The same [`Limits`] as [`parse_request`] apply. Checks, in order:
/// HTTP/1.1, status 101 (else [`HandshakeError::Status`]), `Upgrade: websocket`,
/// `Connection: upgrade`, exactly one `Sec-WebSocket-Accept` equal to
/// [`accept_key`]`(key)`, and at most one `Sec-WebSocket-Protocol`, naming one
/// offered protocol.
pub fn parse_response(
    buf: &[u8],
    limits: &Limits,
    key: &str,
    offered_protocols: &[&str],
) -> Result<Option<Response>, HandshakeError> {
    let window = &buf[..buf.len().min(limits.max_header_bytes)];
    let mut slots = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut resp = httparse::Response::new(&mut slots);
    let len = match resp.parse(window) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return incomplete(buf, limits),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HandshakeError::TooManyHeaders {
                max: limits.max_headers,
            })
        }
        Err(e) => return Err(HandshakeError::MalformedResponse(describe(e))),
    };
    let (Some(version), Some(status)) = (resp.version, resp.code) else {
        return Err(HandshakeError::MalformedResponse("incomplete status line"));
    };
    if version != 1 {
        return Err(HandshakeError::HttpVersion);
    }
    if status != 101 {
        return Err(HandshakeError::Status(status));
    }

    let headers = own_headers(resp.headers);
    let all = |name: &'static str| {
        headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    };
    if !all("upgrade").any(|v| has_token(v, b"websocket")) {
        return Err(HandshakeError::ResponseNotWebSocket);
    }
    if !all("connection").any(|v| has_token(v, b"upgrade")) {
        return Err(HandshakeError::ResponseNotUpgrade);
    }

    let mut accepts = all("sec-websocket-accept");
    match (accepts.next(), accepts.next()) {
        (None, _) => return Err(HandshakeError::MissingAccept),
        (Some(_), Some(_)) => {
            return Err(HandshakeError::InvalidResponseHeader(
                "Sec-WebSocket-Accept",
            ))
        }
        (Some(v), None) if v == accept_key(key.as_bytes()).as_bytes() => {}
        (Some(_), None) => return Err(HandshakeError::AcceptMismatch),
    }

    let mut protocols = all("sec-websocket-protocol");
    let protocol = match (protocols.next(), protocols.next()) {
        (None, _) => None,
        (Some(_), Some(_)) => {
            return Err(HandshakeError::InvalidResponseHeader(
                "Sec-WebSocket-Protocol",
            ))
        }
        (Some(p), None) => match offered_protocols.iter().find(|o| o.as_bytes() == p) {
            Some(o) => Some((*o).to_owned()),
            None => return Err(HandshakeError::UnexpectedProtocol(echo(p))),
        },
    };

    let mut extensions = Vec::new();
    for value in all("sec-websocket-extensions") {
        match std::str::from_utf8(value) {
            Ok(_) if value.is_empty() => {}
            Ok(s) if !has_controls(value) => extensions.push(s.to_owned()),
            _ => {
                return Err(HandshakeError::InvalidResponseHeader(
                    "Sec-WebSocket-Extensions",
                ))
            }
        }
    }

    Ok(Some(Response {
        status,
        protocol,
        extensions,
        headers,
        len,
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    const VALID: &[u8] = b"GET /chat?room=1&x=2 HTTP/1.1\r\n\
Host: server.example.com\r\n\
Upgrade: websocket\r\n\
Connection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Origin: http://example.com\r\n\
Sec-WebSocket-Protocol: chat, superchat\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
Sec-WebSocket-Version: 13\r\n\
\r\n";

    fn limits() -> Limits {
        Limits::default()
    }

    fn parse(buf: &[u8]) -> Request {
        parse_request(buf, &limits()).unwrap().unwrap()
    }

    /// Builds a request from a request line and header lines.
    fn request(line: &str, headers: &[&str]) -> Vec<u8> {
        let mut s = format!("{line}\r\n");
        for h in headers {
            s.push_str(h);
            s.push_str("\r\n");
        }
        s.push_str("\r\n");
        s.into_bytes()
    }

    const BASE: [&str; 5] = [
        "Host: example.com",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    ];

    /// The BASE headers with the one starting with `drop` removed and `add` added.
    fn validate_with(drop: &[&str], add: &[&str]) -> Result<UpgradeRequest, HandshakeError> {
        let mut headers: Vec<&str> = BASE
            .iter()
            .copied()
            .filter(|h| !drop.iter().any(|d| h.starts_with(d)))
            .collect();
        headers.extend_from_slice(add);
        let buf = request("GET / HTTP/1.1", &headers);
        parse(&buf).validate_upgrade()
    }

    fn response_text(err: &HandshakeError) -> String {
        let mut out = Vec::new();
        err.write_response(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(accept_key(KEY.as_bytes()), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn valid_request_yields_upgrade_request() {
        let mut buf = VALID.to_vec();
        buf.extend_from_slice(&[0x81, 0x85, 1, 2, 3, 4]); // a frame right behind
        let req = parse(&buf);
        assert_eq!(req.len, VALID.len());
        assert_eq!(req.method, "GET");
        assert_eq!(req.target, "/chat?room=1&x=2");
        assert_eq!(req.path(), "/chat");
        assert_eq!(req.query(), Some("room=1&x=2"));
        assert_eq!(req.header("HOST"), Some(&b"server.example.com"[..]));
        assert_eq!(req.header_all("upgrade").count(), 1);
        assert_eq!(req.header("x-missing"), None);
        let up = req.validate_upgrade().unwrap();
        assert_eq!(
            up,
            UpgradeRequest {
                host: "server.example.com".into(),
                key: KEY.into(),
                origin: Some("http://example.com".into()),
                protocols: vec!["chat".into(), "superchat".into()],
                extensions: vec!["permessage-deflate; client_max_window_bits".into()],
            }
        );
        assert_eq!(up.accept_key(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn path_and_query_forms() {
        let mk = |target: &str| Request {
            method: "GET".into(),
            target: target.into(),
            headers: vec![],
            len: 0,
        };
        assert_eq!(mk("/").path(), "/");
        assert_eq!(mk("/a?").query(), Some(""));
        assert_eq!(mk("/a").query(), None);
        assert_eq!(mk("http://h:1/x/y?q=1").path(), "/x/y");
        assert_eq!(mk("http://h:1/x/y?q=1").query(), Some("q=1"));
        assert_eq!(mk("ws://h").path(), "/");
        assert_eq!(mk("ws://h?q").path(), "/");
        assert_eq!(mk("*").path(), "*");
    }

    #[test]
    fn invalid_requests_give_exact_errors() {
        use HandshakeError as E;
        let cases: Vec<(Result<UpgradeRequest, HandshakeError>, HandshakeError, u16)> = vec![
            (validate_with(&["Host"], &[]), E::MissingHost, 400),
            (
                validate_with(&[], &["Host: other.example"]),
                E::DuplicateHeader("Host"),
                400,
            ),
            (
                validate_with(&["Host"], &["Host: a b"]),
                E::InvalidHeaderValue("Host"),
                400,
            ),
            (validate_with(&["Upgrade"], &[]), E::MissingUpgrade, 426),
            (
                validate_with(&["Upgrade"], &["Upgrade: h2c"]),
                E::UpgradeNotWebSocket,
                426,
            ),
            (
                validate_with(&["Upgrade"], &["Upgrade: websocket/13"]),
                E::UpgradeNotWebSocket,
                426,
            ),
            (
                validate_with(&["Connection"], &[]),
                E::MissingConnectionUpgrade,
                400,
            ),
            (
                validate_with(&["Connection"], &["Connection: keep-alive"]),
                E::MissingConnectionUpgrade,
                400,
            ),
            (
                validate_with(&["Connection"], &["Connection: upgrades"]),
                E::MissingConnectionUpgrade,
                400,
            ),
            (
                validate_with(&["Sec-WebSocket-Version"], &[]),
                E::MissingVersion,
                426,
            ),
            (
                validate_with(&["Sec-WebSocket-Version"], &["Sec-WebSocket-Version: 8"]),
                E::UnsupportedVersion("8".into()),
                426,
            ),
            (
                validate_with(&[], &["Sec-WebSocket-Version: 13"]),
                E::DuplicateHeader("Sec-WebSocket-Version"),
                400,
            ),
            (
                validate_with(&["Sec-WebSocket-Key"], &[]),
                E::MissingKey,
                400,
            ),
            (
                validate_with(&["Sec-WebSocket-Key"], &["Sec-WebSocket-Key: c2hvcnQ="]),
                E::InvalidKey,
                400,
            ),
            (
                // 24 characters that are not base64.
                validate_with(
                    &["Sec-WebSocket-Key"],
                    &["Sec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!=="],
                ),
                E::InvalidKey,
                400,
            ),
            (
                // base64 of 17 bytes.
                validate_with(
                    &["Sec-WebSocket-Key"],
                    &["Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAAA="],
                ),
                E::InvalidKey,
                400,
            ),
            (
                validate_with(&[], &["Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA=="]),
                E::DuplicateHeader("Sec-WebSocket-Key"),
                400,
            ),
            (
                validate_with(&[], &["Sec-WebSocket-Protocol: chat, sup@r"]),
                E::InvalidProtocol,
                400,
            ),
            (
                validate_with(&[], &["Sec-WebSocket-Protocol: a b"]),
                E::InvalidProtocol,
                400,
            ),
            (
                validate_with(&[], &["Origin: http://a", "Origin: http://b"]),
                E::DuplicateHeader("Origin"),
                400,
            ),
        ];
        for (i, (got, want, status)) in cases.into_iter().enumerate() {
            assert_eq!(got.as_ref().err(), Some(&want), "case {i}");
            assert_eq!(want.status(), status, "case {i}");
        }

        let post = request("POST / HTTP/1.1", &BASE);
        let err = parse(&post).validate_upgrade().unwrap_err();
        assert_eq!(err, E::MethodNotAllowed("POST".into()));
        assert_eq!(err.status(), 405);

        let v10 = request("GET / HTTP/1.0", &BASE);
        let err = parse_request(&v10, &limits()).unwrap_err();
        assert_eq!(err, E::HttpVersion);
        assert_eq!(err.status(), 505);

        for garbage in [
            &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
            b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
        ] {
            let err = parse_request(garbage, &limits()).unwrap_err();
            assert!(matches!(err, E::MalformedRequest(_)), "{err:?}");
            assert_eq!(err.status(), 400);
        }
    }

    #[test]
    fn accepted_variants_of_the_headers() {
        // Several Connection headers, keep-alive first, odd case everywhere.
        let up = validate_with(
            &["Connection", "Upgrade"],
            &[
                "connection: keep-alive",
                "CONNECTION: keep-alive, UPGRADE",
                "upgrade: WebSocket",
            ],
        );
        assert!(up.is_ok(), "{up:?}");
        let up = validate_with(&["Connection"], &["Connection: keep-alive, Upgrade"]);
        assert!(up.is_ok(), "{up:?}");
        let up = validate_with(&["Connection"], &["Connection: ,, Upgrade ,"]);
        assert!(up.is_ok(), "{up:?}");
        let up = validate_with(&["Upgrade"], &["Upgrade: h2c, websocket"]);
        assert!(up.is_ok(), "{up:?}");
        // Protocols gathered from several headers, in order; empty items skipped.
        let up = validate_with(
            &[],
            &[
                "Sec-WebSocket-Protocol: a, b",
                "Sec-WebSocket-Protocol: c,,",
                "Sec-WebSocket-Extensions: x",
                "Sec-WebSocket-Extensions: y; z=1",
            ],
        )
        .unwrap();
        assert_eq!(up.protocols, ["a", "b", "c"]);
        assert_eq!(up.extensions, ["x", "y; z=1"]);
        assert_eq!(up.origin, None);
    }

    #[test]
    fn validate_upgrade_takes_plain_pairs() {
        let headers: Vec<(&str, &[u8])> = vec![
            ("host", b"h"),
            ("upgrade", b"websocket"),
            ("connection", b"upgrade"),
            ("sec-websocket-version", b" 13 "),
            ("sec-websocket-key", b" dGhlIHNhbXBsZSBub25jZQ== "),
        ];
        let up = validate_upgrade("GET", headers.iter().copied()).unwrap();
        assert_eq!(up.key, KEY);
        assert_eq!(
            validate_upgrade("get", headers.iter().copied()),
            Err(HandshakeError::MethodNotAllowed("get".into()))
        );
        let long = "X".repeat(1000);
        match validate_upgrade(&long, headers) {
            Err(HandshakeError::MethodNotAllowed(m)) => assert_eq!(m.len(), MAX_ECHO),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn error_responses_carry_the_right_headers() {
        let text = response_text(&HandshakeError::UnsupportedVersion("8".into()));
        assert!(
            text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nSec-WebSocket-Version: 13\r\n"), "{text}");
        assert!(text.contains("\r\nUpgrade: websocket\r\n"), "{text}");
        assert!(
            text.contains("\r\nConnection: Upgrade, close\r\n"),
            "{text}"
        );
        assert!(!text.contains("Connection: close\r\n"), "{text}");

        let text = response_text(&HandshakeError::MissingUpgrade);
        assert!(
            text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nUpgrade: websocket\r\n"), "{text}");
        assert!(!text.contains("Sec-WebSocket-Version"), "{text}");

        let text = response_text(&HandshakeError::MethodNotAllowed("POST".into()));
        assert!(
            text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nAllow: GET\r\n"), "{text}");

        let err = HandshakeError::HeadersTooLarge { max: 8192 };
        let text = response_text(&err);
        assert!(text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(text.contains("\r\nConnection: close\r\n"));
        assert!(text.contains("\r\nContent-Type: text/plain; charset=utf-8\r\n"));
        let body = format!("{err}\n");
        assert!(text.ends_with(&format!("\r\n\r\n{body}")));
        assert!(text.contains(&format!("\r\nContent-Length: {}\r\n", body.len())));
    }

    #[test]
    fn reject_response_format() {
        let mut out = Vec::new();
        write_reject_response(&mut out, 403, "nope", &[("X-Why", "bad\r\nInjected: 1")]);
        assert_eq!(
            out,
            b"HTTP/1.1 403 Forbidden\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Length: 5\r\n\
Connection: close\r\n\
X-Why: badInjected: 1\r\n\
\r\n\
nope\n"
        );
        let mut out = Vec::new();
        write_reject_response(&mut out, 7, "", &[]);
        assert!(out.starts_with(b"HTTP/1.1 500 Internal Server Error\r\n"));
        assert_eq!(status_reason(418), "Client Error");
        assert_eq!(status_reason(599), "Server Error");
    }

    #[test]
    fn accept_response_format() {
        let mut out = Vec::new();
        write_accept_response(
            &mut out,
            KEY,
            Some("chat"),
            Some("permessage-deflate"),
            &[("X-Server", "wshub")],
        );
        assert_eq!(
            out,
            b"HTTP/1.1 101 Switching Protocols\r\n\
Upgrade: websocket\r\n\
Connection: Upgrade\r\n\
Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
Sec-WebSocket-Protocol: chat\r\n\
Sec-WebSocket-Extensions: permessage-deflate\r\n\
X-Server: wshub\r\n\
\r\n"
        );
    }

    #[test]
    fn header_byte_limit_is_exact() {
        let buf = VALID;
        let at = limits().with_max_header_bytes(buf.len());
        assert_eq!(parse_request(buf, &at).unwrap().unwrap().len, buf.len());
        // Extra bytes behind a head that fits are not the parser's concern.
        let mut more = buf.to_vec();
        more.extend_from_slice(&[0u8; 100]);
        assert_eq!(parse_request(&more, &at).unwrap().unwrap().len, buf.len());

        let under = limits().with_max_header_bytes(buf.len() - 1);
        let err = parse_request(buf, &under).unwrap_err();
        assert_eq!(err, HandshakeError::HeadersTooLarge { max: buf.len() - 1 });
        assert_eq!(err.status(), 431);
        // Incomplete: wait below the limit, fail at it.
        assert_eq!(parse_request(&buf[..buf.len() - 2], &under), Ok(None));
        assert!(parse_request(&buf[..buf.len() - 1], &under).is_err());
    }

    #[test]
    fn header_count_limit_is_exact() {
        let count = BASE.len();
        let buf = request("GET / HTTP/1.1", &BASE);
        let at = limits().with_max_headers(count);
        assert!(parse_request(&buf, &at).unwrap().is_some());
        let over = limits().with_max_headers(count - 1);
        let err = parse_request(&buf, &over).unwrap_err();
        assert_eq!(err, HandshakeError::TooManyHeaders { max: count - 1 });
        assert_eq!(err.status(), 431);

        let many: Vec<String> = (0..65).map(|i| format!("X-{i}: v")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let buf = request("GET / HTTP/1.1", &many);
        assert_eq!(
            parse_request(&buf, &limits()),
            Err(HandshakeError::TooManyHeaders { max: 64 })
        );
    }

    #[test]
    fn byte_by_byte_then_complete() {
        for i in 0..VALID.len() {
            assert_eq!(
                parse_request(&VALID[..i], &limits()),
                Ok(None),
                "prefix {i}"
            );
        }
        assert_eq!(parse(VALID).len, VALID.len());
    }

    #[test]
    fn random_splits_give_the_same_request() {
        let whole = parse(VALID);
        let mut rng = fastrand::Rng::with_seed(6455);
        for _ in 0..200 {
            // Simulate reads of random sizes into a growing buffer.
            let mut buf = Vec::new();
            let mut pos = 0;
            let mut got = None;
            while got.is_none() {
                let n = rng.usize(1..=VALID.len() - pos);
                buf.extend_from_slice(&VALID[pos..pos + n]);
                pos += n;
                got = parse_request(&buf, &limits()).unwrap();
                assert_eq!(got.is_some(), pos == VALID.len());
            }
            assert_eq!(got.as_ref(), Some(&whole));
        }
    }

    /// Only the first `max_header_bytes` of the buffer decide the answer: the
    /// same error for the whole input, for its first `max_header_bytes` bytes, and
    /// for the input with everything past that window replaced. So a peer cannot
    /// make the parser look at more than the window, however much it sends.
    /// (How fast the window is parsed is measured in benchmarks, not here.)
    fn assert_decided_by_window(input: &[u8], limits: &Limits, expected: &HandshakeError) {
        let max = limits.max_header_bytes;
        assert!(input.len() > max, "the input must overflow the window");
        assert_eq!(parse_request(input, limits).as_ref(), Err(expected));
        assert_eq!(parse_request(&input[..max], limits).as_ref(), Err(expected));
        let mut tail_changed = input[..max].to_vec();
        tail_changed.extend_from_slice(b"\r\n\r\n");
        tail_changed.resize(input.len(), 0);
        assert_eq!(parse_request(&tail_changed, limits).as_ref(), Err(expected));
        // One byte short of the window is still "wait for more" or the same error,
        // never a different answer that would need the rest of the input.
        match parse_request(&input[..max - 1], limits) {
            Ok(None) => {}
            Err(e) => assert_eq!(&e, expected),
            Ok(Some(r)) => panic!("a head inside the window parsed: {r:?}"),
        }
    }

    #[test]
    fn hostile_input_is_rejected_within_the_header_window() {
        let too_large = HandshakeError::HeadersTooLarge { max: 8192 };
        let mut big = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        big.resize(big.len() + (1 << 20), b'a');
        assert_decided_by_window(&big, &limits(), &too_large);
        big.extend_from_slice(b"\r\n\r\n");
        assert_decided_by_window(&big, &limits(), &too_large);
        // A 1 MB request line without a newline.
        let mut line = b"GET /".to_vec();
        line.resize(1 << 20, b'a');
        assert_decided_by_window(&line, &limits(), &too_large);
        // 1 MB of tiny headers: the header count limit trips first.
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        while many.len() < 1 << 20 {
            many.extend_from_slice(b"a:b\r\n");
        }
        assert_decided_by_window(
            &many,
            &limits(),
            &HandshakeError::TooManyHeaders { max: 64 },
        );
        // Many headers under a generous count limit: stopped by the byte limit.
        let loose = limits().with_max_headers(1 << 20);
        assert_decided_by_window(&many, &loose, &too_large);
        // A smaller window is enforced just the same.
        let small = limits().with_max_header_bytes(256);
        assert_decided_by_window(&many, &small, &HandshakeError::HeadersTooLarge { max: 256 });
    }

    #[test]
    fn protocol_selection_follows_client_order() {
        let offered: Vec<String> = ["b", "a", "c"].iter().map(|s| s.to_string()).collect();
        assert_eq!(select_protocol(&offered, &["a", "b"]), Some("b"));
        assert_eq!(select_protocol(&offered, &["c", "a"]), Some("a"));
        assert_eq!(select_protocol(&offered, &["C"]), None);
        assert_eq!(select_protocol(&offered, &[]), None);
        assert_eq!(select_protocol(&[], &["a"]), None);
    }

    #[test]
    fn client_server_round_trip() {
        let mut wire = Vec::new();
        let key = ClientRequest {
            host: "localhost:9001",
            path: "/hub?token=abc",
            protocols: &["v2.wshub", "v1.wshub"],
            extensions: Some("permessage-deflate"),
            headers: &[("Origin", "http://localhost")],
        }
        .write(&mut wire);
        assert_eq!(BASE64.decode(&key).unwrap().len(), 16);

        let req = parse(&wire);
        assert_eq!(req.len, wire.len());
        assert_eq!(req.path(), "/hub");
        assert_eq!(req.query(), Some("token=abc"));
        let up = req.validate_upgrade().unwrap();
        assert_eq!(up.key, key);
        assert_eq!(up.host, "localhost:9001");
        assert_eq!(up.origin.as_deref(), Some("http://localhost"));
        assert_eq!(up.protocols, ["v2.wshub", "v1.wshub"]);
        assert_eq!(up.extensions, ["permessage-deflate"]);
        let chosen = select_protocol(&up.protocols, &["v1.wshub", "v2.wshub"]);
        assert_eq!(chosen, Some("v2.wshub"));

        let mut answer = Vec::new();
        up.write_accept(&mut answer, chosen, None, &[]);
        let head_len = answer.len();
        answer.extend_from_slice(&[0x81, 0x02, b'h', b'i']);
        for i in 0..head_len {
            let partial = parse_response(&answer[..i], &limits(), &key, &["v2.wshub", "v1.wshub"]);
            assert_eq!(partial, Ok(None), "prefix {i}");
        }
        let resp = parse_response(&answer, &limits(), &key, &["v2.wshub", "v1.wshub"])
            .unwrap()
            .unwrap();
        assert_eq!(resp.status, 101);
        assert_eq!(resp.len, head_len);
        assert_eq!(resp.protocol.as_deref(), Some("v2.wshub"));
        assert!(resp.extensions.is_empty());
        assert_eq!(resp.header("upgrade"), Some(&b"websocket"[..]));

        // Two writes use different keys.
        let mut other = Vec::new();
        let key2 = ClientRequest {
            host: "h",
            ..Default::default()
        }
        .write(&mut other);
        assert_ne!(key, key2);
        assert!(other.starts_with(b"GET / HTTP/1.1\r\nHost: h\r\n"));
        assert!(!String::from_utf8(other)
            .unwrap()
            .contains("Sec-WebSocket-Protocol"));
    }

    #[test]
    fn client_request_exact_bytes() {
        let mut out = Vec::new();
        let key = ClientRequest {
            host: "example.com",
            path: "/chat",
            protocols: &["chat", "superchat"],
            extensions: Some("permessage-deflate"),
            headers: &[("Origin", "http://example.com\r\nEvil: 1")],
        }
        .write_with_nonce(b"the sample nonce", &mut out);
        assert_eq!(key, KEY);
        assert_eq!(
            out,
            b"GET /chat HTTP/1.1\r\n\
Host: example.com\r\n\
Upgrade: websocket\r\n\
Connection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\n\
Sec-WebSocket-Protocol: chat, superchat\r\n\
Sec-WebSocket-Extensions: permessage-deflate\r\n\
Origin: http://example.comEvil: 1\r\n\
\r\n"
        );
    }

    fn response(status_line: &str, headers: &[&str]) -> Vec<u8> {
        request(status_line, headers)
    }

    const ACCEPT: &str = "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    #[test]
    fn client_rejects_bad_responses() {
        use HandshakeError as E;
        let ok = ["Upgrade: websocket", "Connection: Upgrade", ACCEPT];
        let check = |buf: Vec<u8>, offered: &[&str]| parse_response(&buf, &limits(), KEY, offered);

        let r = check(response("HTTP/1.1 101 Switching Protocols", &ok), &[]);
        assert_eq!(r.unwrap().unwrap().protocol, None);
        // Offered protocols but the server chose none: allowed.
        let r = check(response("HTTP/1.1 101 Switching Protocols", &ok), &["chat"]);
        assert_eq!(r.unwrap().unwrap().protocol, None);

        let cases: Vec<(Vec<u8>, &[&str], HandshakeError)> = vec![
            (
                response("HTTP/1.1 403 Forbidden", &["Content-Length: 0"]),
                &[],
                E::Status(403),
            ),
            (response("HTTP/1.1 200 OK", &ok), &[], E::Status(200)),
            (
                response("HTTP/1.0 101 Switching Protocols", &ok),
                &[],
                E::HttpVersion,
            ),
            (
                response("HTTP/1.1 101 X", &["Connection: Upgrade", ACCEPT]),
                &[],
                E::ResponseNotWebSocket,
            ),
            (
                response("HTTP/1.1 101 X", &["Upgrade: websocket", ACCEPT]),
                &[],
                E::ResponseNotUpgrade,
            ),
            (
                response(
                    "HTTP/1.1 101 X",
                    &["Upgrade: websocket", "Connection: upgrade"],
                ),
                &[],
                E::MissingAccept,
            ),
            (
                response(
                    "HTTP/1.1 101 X",
                    &[
                        "Upgrade: websocket",
                        "Connection: upgrade",
                        "Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                    ],
                ),
                &[],
                E::AcceptMismatch,
            ),
            (
                response(
                    "HTTP/1.1 101 X",
                    &["Upgrade: websocket", "Connection: upgrade", ACCEPT, ACCEPT],
                ),
                &[],
                E::InvalidResponseHeader("Sec-WebSocket-Accept"),
            ),
            (
                response(
                    "HTTP/1.1 101 X",
                    &[
                        "Upgrade: websocket",
                        "Connection: upgrade",
                        ACCEPT,
                        "Sec-WebSocket-Protocol: mqtt",
                    ],
                ),
                &["chat"],
                E::UnexpectedProtocol("mqtt".into()),
            ),
            (
                response(
                    "HTTP/1.1 101 X",
                    &[
                        "Upgrade: websocket",
                        "Connection: upgrade",
                        ACCEPT,
                        "Sec-WebSocket-Protocol: chat",
                    ],
                ),
                &[],
                E::UnexpectedProtocol("chat".into()),
            ),
            (
                response(
                    "HTTP/1.1 101 X",
                    &[
                        "Upgrade: websocket",
                        "Connection: upgrade",
                        ACCEPT,
                        "Sec-WebSocket-Protocol: chat",
                        "Sec-WebSocket-Protocol: chat",
                    ],
                ),
                &["chat"],
                E::InvalidResponseHeader("Sec-WebSocket-Protocol"),
            ),
        ];
        for (i, (buf, offered, want)) in cases.into_iter().enumerate() {
            assert_eq!(check(buf, offered), Err(want), "case {i}");
        }

        let err = parse_response(b"SSH-2.0-OpenSSH\r\n\r\n", &limits(), KEY, &[]).unwrap_err();
        assert!(matches!(err, E::MalformedResponse(_)), "{err:?}");
        assert_eq!(err.status(), 502);

        let mut big = b"HTTP/1.1 101 X\r\nX: ".to_vec();
        big.resize(1 << 20, b'a');
        assert_eq!(
            parse_response(&big, &limits(), KEY, &[]),
            Err(E::HeadersTooLarge { max: 8192 })
        );
    }

    #[test]
    fn server_error_responses_parse_as_client_status_errors() {
        for err in [
            HandshakeError::MissingVersion,
            HandshakeError::MethodNotAllowed("PUT".into()),
            HandshakeError::TooManyHeaders { max: 1 },
            HandshakeError::HttpVersion,
            HandshakeError::InvalidKey,
        ] {
            let mut out = Vec::new();
            err.write_response(&mut out);
            assert_eq!(
                parse_response(&out, &limits(), KEY, &[]),
                Err(HandshakeError::Status(err.status()))
            );
        }
    }

    /// A valid request with random byte edits applied.
    fn mutated() -> impl Strategy<Value = Vec<u8>> {
        let edit = (any::<u8>(), any::<usize>(), any::<u8>());
        proptest::collection::vec(edit, 0..8).prop_map(|edits| {
            let mut buf = VALID.to_vec();
            for (kind, at, byte) in edits {
                let at = at % (buf.len() + 1);
                match kind % 4 {
                    0 if at < buf.len() => buf[at] = byte,
                    1 => buf.insert(at, byte),
                    2 if at < buf.len() => {
                        buf.remove(at);
                    }
                    _ => buf.truncate(at),
                }
            }
            buf
        })
    }

    fn exercise(buf: &[u8]) {
        let small = Limits::default()
            .with_max_headers(4)
            .with_max_header_bytes(200);
        for l in [Limits::default(), small] {
            match parse_request(buf, &l) {
                Ok(Some(req)) => {
                    assert!(req.len <= buf.len() && req.len <= l.max_header_bytes);
                    let _ = (req.path(), req.query());
                    let mut out = Vec::new();
                    match req.validate_upgrade() {
                        Ok(up) => up.write_accept(&mut out, None, None, &[]),
                        Err(e) => e.write_response(&mut out),
                    }
                }
                Ok(None) => assert!(buf.len() < l.max_header_bytes),
                Err(e) => {
                    let mut out = Vec::new();
                    e.write_response(&mut out);
                }
            }
            let _ = parse_response(buf, &l, KEY, &["chat"]);
        }
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(buf in proptest::collection::vec(any::<u8>(), 0..600)) {
            exercise(&buf);
        }

        #[test]
        fn never_panics_on_mutated_requests(buf in mutated()) {
            exercise(&buf);
        }

        #[test]
        fn valid_request_survives_any_split(cut in 0..VALID.len()) {
            prop_assert_eq!(parse_request(&VALID[..cut], &limits()), Ok(None));
            prop_assert!(parse_request(VALID, &limits()).unwrap().is_some());
        }
    }
}
