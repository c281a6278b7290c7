//! [`RequestHeaders`]: the upgrade request's header fields, kept for the
//! connection's lifetime in one compact allocation.
//!
//! Every open connection pays for what it keeps, so the headers are not an
//! `http::HeaderMap` (a hash index, a bucket per field and an allocation per
//! value: about 620 bytes for the five fields a minimal client sends). They
//! are the fields as received, packed into one boxed byte slice, and looked up
//! by a linear scan: an upgrade request has a handful of fields, a few dozen
//! at most, and they are read rarely (at connect, by the application).
//! [`RequestHeaders::to_header_map`] builds a `HeaderMap` for code that wants
//! one.

use std::fmt;

/// The fields of the upgrade handshake itself, which the server acts on and
/// answers, and which say nothing about the client once the connection is
/// open: a server does not keep them in a connection's [`RequestHeaders`]
/// (about 130 bytes a connection). `Sec-WebSocket-Protocol` is kept (the
/// offered list); the chosen one is `WebSocket::protocol`.
pub const HANDSHAKE_FIELDS: [&str; 5] = [
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
];

/// Whether `name` is one of [`HANDSHAKE_FIELDS`] (ASCII case-insensitive).
pub fn is_handshake_field(name: &str) -> bool {
    HANDSHAKE_FIELDS
        .iter()
        .any(|f| f.eq_ignore_ascii_case(name))
}

/// The header fields of an upgrade request, in the order received.
///
/// Names compare ASCII case-insensitively. Values are the raw bytes with the
/// surrounding whitespace removed; [`get`](Self::get) returns those that are
/// UTF-8 as `&str`, [`get_bytes`](Self::get_bytes) any value.
///
/// ```
/// use wshub::headers::RequestHeaders;
/// let h = RequestHeaders::from_pairs([("Host", &b"example.com"[..]), ("X-Trace", b"42")]);
/// assert_eq!(h.get("x-trace"), Some("42"));
/// assert_eq!(h.len(), 2);
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RequestHeaders {
    /// Each field as `name length (u32 LE) | value length (u32 LE) | name | value`.
    buf: Box<[u8]>,
}

/// Bytes of the two lengths in front of each field.
const PREFIX: usize = 8;

impl RequestHeaders {
    /// Packs `(name, value)` pairs.
    ///
    /// A field whose name or value is longer than 4 GiB cannot arrive in an
    /// upgrade request (the head is capped far below that) and is skipped.
    pub fn from_pairs<'a, N, I>(pairs: I) -> RequestHeaders
    where
        N: AsRef<str> + 'a,
        I: IntoIterator<Item = (N, &'a [u8])>,
    {
        let mut buf = Vec::with_capacity(512);
        for (name, value) in pairs {
            let name = name.as_ref().as_bytes();
            let (Ok(name_len), Ok(value_len)) =
                (u32::try_from(name.len()), u32::try_from(value.len()))
            else {
                continue;
            };
            buf.extend_from_slice(&name_len.to_le_bytes());
            buf.extend_from_slice(&value_len.to_le_bytes());
            buf.extend_from_slice(name);
            buf.extend_from_slice(value);
        }
        // Trimmed to the exact size: this is what the connection keeps.
        RequestHeaders {
            buf: buf.into_boxed_slice(),
        }
    }

    /// Packs the fields of a `HeaderMap` (as hyper and axum hand them over).
    pub fn from_header_map(map: &http::HeaderMap) -> RequestHeaders {
        RequestHeaders::from_pairs(map.iter().map(|(n, v)| (n.as_str(), v.as_bytes())))
    }

    /// Packs the fields of an upgrade request but its
    /// [handshake fields](HANDSHAKE_FIELDS): what a server keeps.
    pub fn from_upgrade_request<'a, N, I>(pairs: I) -> RequestHeaders
    where
        N: AsRef<str> + 'a,
        I: IntoIterator<Item = (N, &'a [u8])>,
    {
        RequestHeaders::from_pairs(
            pairs
                .into_iter()
                .filter(|(n, _)| !is_handshake_field(n.as_ref())),
        )
    }

    /// Every field as `(name, value)`, in the order received.
    pub fn iter(&self) -> Iter<'_> {
        Iter { rest: &self.buf }
    }

    /// Number of fields (a repeated name counts each time).
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// Whether there are no fields.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The raw value of the first field named `name` (ASCII case-insensitive).
    pub fn get_bytes(&self, name: &str) -> Option<&[u8]> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The value of the first field named `name`, if it is UTF-8.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.get_bytes(name)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The raw values of every field named `name`, in order.
    pub fn get_all_bytes<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s [u8]> + 's {
        self.iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Whether a field named `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.get_bytes(name).is_some()
    }

    /// The fields as an `http::HeaderMap` (built on each call). Fields whose
    /// name or value `http` does not accept are left out.
    pub fn to_header_map(&self) -> http::HeaderMap {
        let mut map = http::HeaderMap::with_capacity(self.len());
        for (name, value) in self.iter() {
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                http::HeaderValue::from_bytes(value),
            ) {
                map.append(n, v);
            }
        }
        map
    }

    /// Bytes this value holds on the heap.
    pub fn heap_size(&self) -> usize {
        self.buf.len()
    }
}

impl fmt::Debug for RequestHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.iter().map(|(n, v)| (n, String::from_utf8_lossy(v))))
            .finish()
    }
}

impl<'a> IntoIterator for &'a RequestHeaders {
    type Item = (&'a str, &'a [u8]);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// Iterator over the fields of [`RequestHeaders`].
#[derive(Debug, Clone)]
pub struct Iter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a str, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let (lens, rest) = self.rest.split_first_chunk::<PREFIX>()?;
        let [a, b, c, d, e, f, g, h] = *lens;
        let name_len = u32::from_le_bytes([a, b, c, d]) as usize;
        let value_len = u32::from_le_bytes([e, f, g, h]) as usize;
        // The buffer is only ever built by `from_pairs`, so these hold; an
        // inconsistency ends the iteration rather than panicking.
        let (name, rest) = rest.split_at_checked(name_len)?;
        let (value, rest) = rest.split_at_checked(value_len)?;
        self.rest = rest;
        // Names were `&str` when packed.
        let name = std::str::from_utf8(name).ok()?;
        Some((name, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upgrade_request_keeps_all_but_the_handshake_fields() {
        let h = RequestHeaders::from_upgrade_request([
            ("Host", &b"example.com"[..]),
            ("Upgrade", b"websocket"),
            ("Connection", b"Upgrade"),
            ("Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="),
            ("SEC-WEBSOCKET-VERSION", b"13"),
            ("Sec-WebSocket-Extensions", b"permessage-deflate"),
            ("Sec-WebSocket-Protocol", b"chat, superchat"),
            ("Cookie", b"a=1"),
        ]);
        let names: Vec<&str> = h.iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["Host", "Sec-WebSocket-Protocol", "Cookie"]);
        assert!(h.get("upgrade").is_none());
    }

    fn sample() -> RequestHeaders {
        RequestHeaders::from_pairs([
            ("Host", &b"127.0.0.1:9001"[..]),
            ("Upgrade", b"websocket"),
            ("X-Multi", b"one"),
            ("x-multi", b"two"),
            ("X-Latin1", b"caf\xe9"),
            ("X-Empty", b""),
        ])
    }

    #[test]
    fn lookups_are_case_insensitive_and_ordered() {
        let h = sample();
        assert_eq!(h.len(), 6);
        assert!(!h.is_empty());
        assert_eq!(h.get("HOST"), Some("127.0.0.1:9001"));
        assert_eq!(h.get("x-multi"), Some("one"));
        let all: Vec<_> = h.get_all_bytes("X-MULTI").collect();
        assert_eq!(all, [&b"one"[..], b"two"]);
        assert_eq!(h.get("x-empty"), Some(""));
        assert!(h.contains("upgrade"));
        assert_eq!(h.get("missing"), None);
        assert!(!h.contains("missing"));
    }

    #[test]
    fn non_utf8_values_are_bytes_only() {
        let h = sample();
        assert_eq!(h.get("x-latin1"), None);
        assert_eq!(h.get_bytes("x-latin1"), Some(&b"caf\xe9"[..]));
    }

    #[test]
    fn iteration_keeps_names_as_received() {
        let h = sample();
        let names: Vec<_> = h.iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            ["Host", "Upgrade", "X-Multi", "x-multi", "X-Latin1", "X-Empty"]
        );
    }

    #[test]
    fn one_exact_allocation() {
        let h = sample();
        let payload: usize = h.iter().map(|(n, v)| n.len() + v.len()).sum();
        assert_eq!(h.heap_size(), payload + 6 * PREFIX);
    }

    #[test]
    fn header_map_round_trip() {
        let map = sample().to_header_map();
        assert_eq!(map.len(), 6);
        assert_eq!(map.get_all("x-multi").iter().count(), 2);
        let back = RequestHeaders::from_header_map(&map);
        assert_eq!(back.get("host"), Some("127.0.0.1:9001"));
        assert_eq!(back.len(), 6);
    }

    #[test]
    fn empty() {
        let h = RequestHeaders::default();
        assert!(h.is_empty());
        assert_eq!(h.len(), 0);
        assert_eq!(h.iter().next(), None);
        assert_eq!(format!("{h:?}"), "{}");
    }

    #[test]
    fn debug_shows_fields() {
        let h = RequestHeaders::from_pairs([("A", &b"1"[..])]);
        assert_eq!(format!("{h:?}"), r#"{"A": "1"}"#);
    }
}
