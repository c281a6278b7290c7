//! Working out the real client IP address behind reverse proxies.
//!
//! When wshub runs behind a load balancer or reverse proxy, the TCP peer is the
//! proxy and the client's address only shows up in a `Forwarded` (RFC 7239) or
//! `X-Forwarded-For` header. Those headers are plain request data: anyone can
//! send them, so they are only believed when the TCP peer is a proxy the
//! operator explicitly trusts ([`TrustedProxies`]). Each proxy *appends* the
//! address it received the request from, so the only entries that can be
//! relied on are the ones on the right written by trusted proxies.
//! [`resolve_client_ip`] therefore walks the hop list from right to left,
//! skipping trusted proxies, and returns the first address that is not a
//! trusted proxy. It never takes the leftmost entry merely because it is
//! leftmost, since a client can put anything there. Parsing is strict (an entry
//! that is not an IP address stops the walk) and bounded ([`MAX_HOPS`],
//! [`MAX_HEADER_VALUE_LEN`]), so hostile headers cannot cost more than linear
//! time.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Maximum number of hop entries (from the right) [`resolve_client_ip`] looks at.
///
/// If a chain is longer and every entry looked at is a trusted proxy, the
/// leftmost entry looked at is returned (an address of a trusted proxy): we
/// never go further left than we have checked.
pub const MAX_HOPS: usize = 64;

/// Header values (a single header line) longer than this many bytes are not
/// parsed.
///
/// An over-long line is treated as an unparsable hop at its position: the walk
/// stops there instead of skipping it, because skipping it would expose the
/// (client-controlled) entries on its left.
pub const MAX_HEADER_VALUE_LEN: usize = 8 * 1024;

/// Errors from configuring trusted proxies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientIpError {
    /// The entry is neither an IP address nor `address/prefix-length`.
    #[error("invalid trusted proxy entry {entry:?}: expected an IP address or CIDR such as 10.0.0.0/8 or ::1/128")]
    InvalidAddress {
        /// The entry as given.
        entry: String,
    },
    /// The prefix length is not a number in `0..=max`.
    #[error(
        "invalid trusted proxy entry {entry:?}: prefix length must be a number from 0 to {max}"
    )]
    InvalidPrefix {
        /// The entry as given.
        entry: String,
        /// Largest prefix length for the address family (32 or 128).
        max: u8,
    },
}

/// Which forwarding header [`resolve_client_ip`] reads.
///
/// The default, [`ProxyHeader::Auto`], reads `Forwarded` when the request has
/// one and `X-Forwarded-For` otherwise. That is only safe if your proxy
/// removes or overwrites the header it does *not* maintain: a proxy that only
/// appends to `X-Forwarded-For` but passes a client-supplied `Forwarded`
/// through unchanged lets the client choose its address. Pin the header your
/// proxy writes with [`TrustedProxies::with_header`] in that case.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProxyHeader {
    /// `Forwarded` if present in the request, else `X-Forwarded-For`.
    #[default]
    Auto,
    /// Only `Forwarded` (RFC 7239); `X-Forwarded-For` is ignored.
    Forwarded,
    /// Only `X-Forwarded-For`; `Forwarded` is ignored.
    XForwardedFor,
}

/// One network in a [`TrustedProxies`] set, stored with host bits cleared.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cidr {
    V4 { net: u32, len: u8 },
    V6 { net: u128, len: u8 },
}

fn mask_v4(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

fn mask_v6(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

impl Cidr {
    /// `len` must already be validated against the address family.
    fn new(addr: IpAddr, len: u8) -> Self {
        match addr {
            IpAddr::V4(a) => Cidr::V4 {
                net: u32::from(a) & mask_v4(len),
                len,
            },
            IpAddr::V6(a) => Cidr::V6 {
                net: u128::from(a) & mask_v6(len),
                len,
            },
        }
    }

    /// `ip` must be canonical (IPv4-mapped IPv6 already turned into IPv4).
    fn contains(self, ip: IpAddr) -> bool {
        match (self, ip) {
            (Cidr::V4 { net, len }, IpAddr::V4(a)) => u32::from(a) & mask_v4(len) == net,
            (Cidr::V6 { net, len }, IpAddr::V6(a)) => u128::from(a) & mask_v6(len) == net,
            // An IPv6 network such as ::ffff:0:0/96 or ::/0 covers IPv4 clients
            // through their IPv4-mapped form.
            (Cidr::V6 { net, len }, IpAddr::V4(a)) => {
                u128::from(a.to_ipv6_mapped()) & mask_v6(len) == net
            }
            (Cidr::V4 { .. }, IpAddr::V6(_)) => false,
        }
    }

    fn parse(entry: &str) -> Result<Self, ClientIpError> {
        let s = entry.trim();
        let (addr_s, len_s) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr_s.parse().map_err(|_| ClientIpError::InvalidAddress {
            entry: entry.to_owned(),
        })?;
        let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len_s {
            None => max,
            Some(l) => {
                let parsed =
                    if !l.is_empty() && l.len() <= 3 && l.bytes().all(|b| b.is_ascii_digit()) {
                        l.parse::<u8>().ok()
                    } else {
                        None
                    };
                match parsed {
                    Some(n) if n <= max => n,
                    _ => {
                        return Err(ClientIpError::InvalidPrefix {
                            entry: entry.to_owned(),
                            max,
                        })
                    }
                }
            }
        };
        let cidr = Cidr::new(addr, len);
        if cidr.network() != addr {
            tracing::warn!(
                entry,
                network = %cidr,
                "trusted proxy entry has host bits set; using the enclosing network"
            );
        }
        Ok(cidr)
    }

    fn network(self) -> IpAddr {
        match self {
            Cidr::V4 { net, .. } => IpAddr::V4(Ipv4Addr::from(net)),
            Cidr::V6 { net, .. } => IpAddr::V6(Ipv6Addr::from(net)),
        }
    }

    fn len(self) -> u8 {
        match self {
            Cidr::V4 { len, .. } | Cidr::V6 { len, .. } => len,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.len())
    }
}

impl fmt::Debug for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Canonical form used for matching: IPv4-mapped IPv6 (`::ffff:a.b.c.d`, what a
/// dual-stack socket reports for IPv4 peers) becomes plain IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

/// The set of proxy networks whose forwarding headers are believed.
///
/// The default ([`TrustedProxies::none`]) trusts nobody, so forwarding headers
/// are ignored and the TCP peer address is the client address. Membership is a
/// linear scan, meant for the handful of networks a deployment has.
///
/// ```
/// use wshub::client_ip::TrustedProxies;
///
/// let trusted = TrustedProxies::parse(["10.0.0.0/8", "fd00::/8", "192.0.2.7"])?;
/// assert!(trusted.contains("10.1.2.3".parse()?));
/// assert!(trusted.contains("::ffff:10.1.2.3".parse()?));
/// assert!(!trusted.contains("192.0.2.8".parse()?));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Vec<Cidr>,
    header: ProxyHeader,
}

impl TrustedProxies {
    /// Trusts no proxy: forwarding headers are always ignored.
    pub fn none() -> Self {
        Self::default()
    }

    /// Trusts the loopback networks `127.0.0.0/8` and `::1/128` (a proxy on the
    /// same host).
    pub fn loopback() -> Self {
        Self {
            nets: vec![
                Cidr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8),
                Cidr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 128),
            ],
            header: ProxyHeader::Auto,
        }
    }

    /// Parses networks such as `10.0.0.0/8` or `2001:db8::/32`, and bare
    /// addresses (taken as `/32` or `/128`).
    ///
    /// Surrounding whitespace is ignored. Host bits below the prefix are
    /// cleared (`10.1.2.3/8` means `10.0.0.0/8`, with a warning logged).
    ///
    /// # Errors
    ///
    /// The first entry that is not an address or has a bad prefix length, as
    /// [`ClientIpError`] naming that entry.
    pub fn parse<I, S>(cidrs: I) -> Result<Self, ClientIpError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let nets = cidrs
            .into_iter()
            .map(|c| Cidr::parse(c.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            nets,
            header: ProxyHeader::Auto,
        })
    }

    /// Selects which forwarding header is read (default [`ProxyHeader::Auto`]).
    #[must_use]
    pub fn with_header(mut self, header: ProxyHeader) -> Self {
        self.header = header;
        self
    }

    /// The forwarding header selection in effect.
    pub fn header(&self) -> ProxyHeader {
        self.header
    }

    /// Whether `ip` lies in one of the trusted networks.
    ///
    /// IPv4-mapped IPv6 addresses (`::ffff:127.0.0.1`) match IPv4 networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets.iter().any(|n| n.contains(ip))
    }

    /// Whether no network is trusted.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }
}

/// Determines the client address of a request that arrived from `peer`.
///
/// * If `peer` is not in `trusted`, `peer` is returned and the headers are
///   ignored: anyone can send them.
/// * Otherwise the hop list comes from the `Forwarded` header (RFC 7239 `for=`
///   parameters) if the request has one, else from `X-Forwarded-For` (see
///   [`ProxyHeader`] to pin one). Several header lines are joined in order.
///   Header names are matched case-insensitively.
/// * The list is walked from right to left. While the current entry is a
///   trusted proxy, the walk moves one entry left; the first untrusted entry
///   is the client and is returned.
/// * If every entry is trusted, the leftmost one is returned (likewise when
///   the [`MAX_HOPS`] entries looked at are all trusted).
/// * If an entry cannot be parsed as an IP address (garbage, `unknown`, an
///   obfuscated identifier such as `_hidden`, a `Forwarded` element without
///   `for=`, a line over [`MAX_HEADER_VALUE_LEN`]), the walk stops and the last
///   trusted hop is returned: `peer` itself or the trusted proxy on the
///   right of that entry. We never return an address we could not parse, and
///   we never skip past an entry we could not check, because whatever lies on
///   its left may have been written by the client.
///
/// Accepted entry forms: `192.0.2.1`, `192.0.2.1:8080`, `2001:db8::1`,
/// `[2001:db8::1]`, `[2001:db8::1]:4711` (ports may also be obfuscated like
/// `_p1`), and in `Forwarded` the same forms as quoted strings
/// (`for="[2001:db8::1]:4711"`). Empty list elements are skipped. In
/// `Forwarded`, elements are separated at every comma, even inside quotes (no
/// valid node contains one), so an unbalanced quote sent by a client cannot
/// swallow the elements proxies append after it.
///
/// The returned address is as written in its source (an IPv4-mapped `peer`
/// is returned as it is).
///
/// Work is linear in the total header size; at most [`MAX_HOPS`] entries
/// are retained and looked at.
///
/// ```
/// use std::net::IpAddr;
/// use wshub::client_ip::{resolve_client_ip, TrustedProxies};
///
/// let mut headers = http::HeaderMap::new();
/// headers.insert("x-forwarded-for", "203.0.113.9, 10.0.0.2".parse()?);
/// let trusted = TrustedProxies::parse(["10.0.0.0/8"])?;
/// let peer: IpAddr = "10.0.0.1".parse()?;
///
/// let client = resolve_client_ip(
///     peer,
///     headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())),
///     &trusted,
/// );
/// assert_eq!(client, "203.0.113.9".parse::<IpAddr>()?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn resolve_client_ip<'a, I>(peer: IpAddr, headers: I, trusted: &TrustedProxies) -> IpAddr
where
    I: IntoIterator<Item = (&'a str, &'a [u8])>,
{
    if !trusted.contains(peer) {
        return peer;
    }
    let want_forwarded = matches!(trusted.header, ProxyHeader::Auto | ProxyHeader::Forwarded);
    let want_xff = matches!(
        trusted.header,
        ProxyHeader::Auto | ProxyHeader::XForwardedFor
    );

    let mut forwarded = Hops::new(Syntax::Forwarded);
    let mut xff = Hops::new(Syntax::XForwardedFor);
    let mut saw_forwarded = false;
    for (name, value) in headers {
        if want_forwarded && name.eq_ignore_ascii_case("forwarded") {
            saw_forwarded = true;
            forwarded.push_line(value);
        } else if want_xff && name.eq_ignore_ascii_case("x-forwarded-for") {
            xff.push_line(value);
        }
    }
    let hops = if saw_forwarded { &forwarded } else { &xff };
    hops.walk(peer, trusted)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Syntax {
    Forwarded,
    XForwardedFor,
}

/// The rightmost [`MAX_HOPS`] raw entries of one header; `None` marks an
/// entry that must stop the walk (an over-long line).
struct Hops<'a> {
    syntax: Syntax,
    entries: VecDeque<Option<&'a [u8]>>,
}

impl<'a> Hops<'a> {
    fn new(syntax: Syntax) -> Self {
        Self {
            syntax,
            entries: VecDeque::new(),
        }
    }

    fn push(&mut self, entry: Option<&'a [u8]>) {
        if self.entries.len() == MAX_HOPS {
            self.entries.pop_front();
        }
        self.entries.push_back(entry);
    }

    fn push_line(&mut self, value: &'a [u8]) {
        if value.len() > MAX_HEADER_VALUE_LEN {
            // Nothing to the left of this barrier will ever be looked at.
            self.entries.clear();
            self.push(None);
            return;
        }
        for element in value.split(|&b| b == b',') {
            let element = element.trim_ascii();
            if !element.is_empty() {
                self.push(Some(element));
            }
        }
    }

    fn parse(&self, entry: &[u8]) -> Option<IpAddr> {
        match self.syntax {
            Syntax::Forwarded => forwarded_for(entry),
            Syntax::XForwardedFor => parse_node(std::str::from_utf8(entry).ok()?),
        }
    }

    fn walk(&self, peer: IpAddr, trusted: &TrustedProxies) -> IpAddr {
        let mut current = peer;
        for entry in self.entries.iter().rev() {
            let Some(ip) = entry.and_then(|e| self.parse(e)) else {
                tracing::debug!(
                    %peer,
                    last_trusted = %current,
                    header = ?self.syntax,
                    "unparsable forwarding entry; using the last trusted hop as client address"
                );
                return current;
            };
            if !trusted.contains(ip) {
                return ip;
            }
            current = ip;
        }
        current
    }
}

/// The address of the single `for=` parameter of one `Forwarded` element
/// (`for=192.0.2.60;proto=http;by=203.0.113.43`), or `None` if the element is
/// malformed, has no or several `for=`, or its node is not an IP address.
fn forwarded_for(element: &[u8]) -> Option<IpAddr> {
    let mut found: Option<&[u8]> = None;
    for pair in split_pairs(element)? {
        let pair = pair.trim_ascii();
        if pair.is_empty() {
            continue; // RFC 7239 allows empty pairs: `for=x;;proto=y`.
        }
        let eq = pair.iter().position(|&b| b == b'=')?;
        let (name, value) = (pair[..eq].trim_ascii(), pair[eq + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"for") {
            if found.is_some() {
                return None;
            }
            found = Some(value);
        }
    }
    let value = unquote(std::str::from_utf8(found?).ok()?)?;
    parse_node(&value)
}

/// Splits a `Forwarded` element at `;` outside quoted strings. `None` if a
/// quoted string is not terminated.
fn split_pairs(element: &[u8]) -> Option<Vec<&[u8]>> {
    let mut pairs = Vec::new();
    let mut start = 0;
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, &b) in element.iter().enumerate() {
        if in_quotes {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_quotes = false;
            }
        } else if b == b'"' {
            in_quotes = true;
        } else if b == b';' {
            pairs.push(&element[start..i]);
            start = i + 1;
        }
    }
    if in_quotes {
        return None;
    }
    pairs.push(&element[start..]);
    Some(pairs)
}

/// Removes the quotes (and `\` escapes) of a quoted-string; returns tokens
/// unchanged. `None` for a malformed quoted-string.
fn unquote(value: &str) -> Option<Cow<'_, str>> {
    let Some(rest) = value.strip_prefix('"') else {
        return (!value.contains('"')).then_some(Cow::Borrowed(value));
    };
    let inner = rest.strip_suffix('"')?;
    if !inner.contains(['\\', '"']) {
        return Some(Cow::Borrowed(inner));
    }
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '"' => return None,
            c => out.push(c),
        }
    }
    Some(Cow::Owned(out))
}

/// Parses a node: `a.b.c.d`, `a.b.c.d:port`, `v6`, `[v6]`, `[v6]:port`.
/// `unknown`, obfuscated names and anything else yield `None`.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Some(rest) = node.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let ip: Ipv6Addr = inside.parse().ok()?;
        let port_ok = after.is_empty() || after.strip_prefix(':').is_some_and(valid_port);
        return port_ok.then_some(IpAddr::V6(ip));
    }
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip);
    }
    let (host, port) = node.rsplit_once(':')?;
    let ip: Ipv4Addr = host.parse().ok()?;
    valid_port(port).then_some(IpAddr::V4(ip))
}

/// A decimal port (`0..=65535`) or an RFC 7239 obfuscated port (`_abc`).
fn valid_port(port: &str) -> bool {
    let bytes = port.as_bytes();
    match bytes.split_first() {
        Some((b'_', rest)) => {
            !rest.is_empty()
                && rest
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        }
        Some(_) => {
            bytes.len() <= 5 && bytes.iter().all(u8::is_ascii_digit) && port.parse::<u16>().is_ok()
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn resolve(peer: &str, headers: &[(&str, &str)], trusted: &TrustedProxies) -> IpAddr {
        resolve_client_ip(
            ip(peer),
            headers.iter().map(|(n, v)| (*n, v.as_bytes())),
            trusted,
        )
    }

    fn ten() -> TrustedProxies {
        TrustedProxies::parse(["10.0.0.0/8"]).unwrap()
    }

    #[test]
    fn untrusted_peer_ignores_spoofed_headers() {
        let h = [("X-Forwarded-For", "1.2.3.4"), ("Forwarded", "for=5.6.7.8")];
        assert_eq!(resolve("203.0.113.5", &h, &ten()), ip("203.0.113.5"));
        assert_eq!(
            resolve("10.0.0.1", &h, &TrustedProxies::none()),
            ip("10.0.0.1")
        );
        assert_eq!(
            resolve("127.0.0.1", &h, &TrustedProxies::default()),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn trusted_peer_single_xff() {
        let h = [("x-forwarded-for", "1.2.3.4")];
        assert_eq!(resolve("10.0.0.1", &h, &ten()), ip("1.2.3.4"));
    }

    #[test]
    fn walks_right_to_left_skipping_trusted() {
        let h = [("X-Forwarded-For", "spoofed, 1.2.3.4, 10.0.0.2")];
        assert_eq!(resolve("10.0.0.1", &h, &ten()), ip("1.2.3.4"));
        // A spoofed but well-formed leftmost entry is not taken either.
        let h = [("X-Forwarded-For", "6.6.6.6, 1.2.3.4, 10.0.0.2")];
        assert_eq!(resolve("10.0.0.1", &h, &ten()), ip("1.2.3.4"));
    }

    #[test]
    fn no_header_returns_peer() {
        assert_eq!(resolve("10.0.0.1", &[], &ten()), ip("10.0.0.1"));
        let h = [("X-Forwarded-For", ""), ("X-Forwarded-For", " , ")];
        assert_eq!(resolve("10.0.0.1", &h, &ten()), ip("10.0.0.1"));
    }

    #[test]
    fn xff_ports_and_ipv6_forms() {
        let t = ten();
        for (xff, want) in [
            ("1.2.3.4:5678", "1.2.3.4"),
            ("2001:db8::1", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("  1.2.3.4  ,\t10.0.0.9:80 ", "1.2.3.4"),
            ("::ffff:1.2.3.4", "::ffff:1.2.3.4"),
            ("1.2.3.4, [fd00::1]:1", "fd00::1"),
        ] {
            let h = [("X-Forwarded-For", xff)];
            assert_eq!(resolve("10.0.0.1", &h, &t), ip(want), "XFF {xff:?}");
        }
    }

    #[test]
    fn forwarded_forms() {
        let t = ten();
        for (fwd, want) in [
            (r#"for="[2001:db8::1]:4711""#, "2001:db8::1"),
            (r#"for="[2001:db8::1]""#, "2001:db8::1"),
            ("for=192.0.2.60;proto=http;by=203.0.113.43", "192.0.2.60"),
            (r#"FOR="192.0.2.60:8080""#, "192.0.2.60"),
            (r#"for="192.0.2.60:_port""#, "192.0.2.60"),
            (
                r#"for=192.0.2.43, for="[2001:db8:cafe::17]", for=10.1.1.1"#,
                "2001:db8:cafe::17",
            ),
            (r#"proto=https; for = "1.2.3.4" ; host="a;b""#, "1.2.3.4"),
            (r#"for="\1.2.3.4""#, "1.2.3.4"),
            ("for=1.2.3.4;", "1.2.3.4"),
            (";for=1.2.3.4;;proto=https", "1.2.3.4"),
        ] {
            let h = [("Forwarded", fwd)];
            assert_eq!(resolve("10.0.0.1", &h, &t), ip(want), "Forwarded {fwd:?}");
        }
    }

    #[test]
    fn forwarded_takes_precedence_over_xff() {
        let h = [("X-Forwarded-For", "9.9.9.9"), ("Forwarded", "for=1.2.3.4")];
        assert_eq!(resolve("10.0.0.1", &h, &ten()), ip("1.2.3.4"));
    }

    #[test]
    fn header_can_be_pinned() {
        let h = [("X-Forwarded-For", "9.9.9.9"), ("Forwarded", "for=1.2.3.4")];
        let xff_only = ten().with_header(ProxyHeader::XForwardedFor);
        assert_eq!(xff_only.header(), ProxyHeader::XForwardedFor);
        assert_eq!(resolve("10.0.0.1", &h, &xff_only), ip("9.9.9.9"));
        let fwd_only = ten().with_header(ProxyHeader::Forwarded);
        assert_eq!(resolve("10.0.0.1", &h, &fwd_only), ip("1.2.3.4"));
        let h = [("X-Forwarded-For", "9.9.9.9")];
        assert_eq!(resolve("10.0.0.1", &h, &fwd_only), ip("10.0.0.1"));
    }

    #[test]
    fn multiple_header_lines_are_joined_in_order() {
        let t = ten();
        let h = [
            ("X-Forwarded-For", "6.6.6.6"),
            ("x-forwarded-for", "1.2.3.4, 10.0.0.3"),
            ("Other", "x"),
            ("X-FORWARDED-FOR", "10.0.0.2"),
        ];
        assert_eq!(resolve("10.0.0.1", &h, &t), ip("1.2.3.4"));
        let h = [
            ("X-Forwarded-For", "6.6.6.6, 10.0.0.5"),
            ("X-Forwarded-For", "10.0.0.2"),
        ];
        assert_eq!(resolve("10.0.0.1", &h, &t), ip("6.6.6.6"));
        let h = [
            ("Forwarded", "for=6.6.6.6"),
            ("Forwarded", r#"for="1.2.3.4:1", for=10.0.0.2"#),
        ];
        assert_eq!(resolve("10.0.0.1", &h, &t), ip("1.2.3.4"));
    }

    #[test]
    fn garbage_stops_at_last_trusted_hop() {
        let t = ten();
        // Garbage right next to the peer: the peer is the last trusted hop.
        for xff in [
            "1.2.3.4, garbage",
            "1.2.3.4, unknown",
            "1.2.3.4, 10.0.0.2:99999",
            "1.2.3.4, 1.2.3.4:",
            "1.2.3.4, [::1",
            "1.2.3.4, fe80::1%eth0",
            "1.2.3.4, 1.2.3.4.5",
            "1.2.3.4, \"1.2.3.4\"",
        ] {
            let h = [("X-Forwarded-For", xff)];
            assert_eq!(resolve("10.0.0.1", &h, &t), ip("10.0.0.1"), "XFF {xff:?}");
        }
        // Garbage behind a trusted proxy entry: that proxy is returned, and
        // the (possibly spoofed) entry on the left of the garbage is not.
        let h = [("X-Forwarded-For", "6.6.6.6, nonsense, 10.0.0.7")];
        assert_eq!(resolve("10.0.0.1", &h, &t), ip("10.0.0.7"));
        // Garbage on the left of the client does not matter.
        let h = [("X-Forwarded-For", "nonsense, 1.2.3.4, 10.0.0.7")];
        assert_eq!(resolve("10.0.0.1", &h, &t), ip("1.2.3.4"));
        // Invalid UTF-8.
        let raw: [(&str, &[u8]); 1] = [("X-Forwarded-For", b"1.2.3.4, \xff\xfe")];
        assert_eq!(resolve_client_ip(ip("10.0.0.1"), raw, &t), ip("10.0.0.1"));
    }

    #[test]
    fn forwarded_obfuscated_and_malformed_stop() {
        let t = ten();
        for fwd in [
            r#"for=1.2.3.4, for="_hidden""#,
            "for=1.2.3.4, for=unknown",
            "for=1.2.3.4, for=_gazonk",
            "for=1.2.3.4, proto=https",
            "for=1.2.3.4, for=5.6.7.8;for=9.9.9.9",
            r#"for=1.2.3.4, for="10.0.0.2"#,
            r#"for=1.2.3.4, for="1.2"3.4""#,
            r#"for=1.2.3.4, for="1.2.3.4"x"#,
            "for=1.2.3.4, for",
            "for=1.2.3.4, for=1.2.3.4;junk",
        ] {
            let h = [("Forwarded", fwd)];
            assert_eq!(
                resolve("10.0.0.1", &h, &t),
                ip("10.0.0.1"),
                "Forwarded {fwd:?}"
            );
        }
    }

    #[test]
    fn unbalanced_quote_cannot_swallow_appended_entries() {
        // The client sends an unterminated quote; the proxy appends its entry.
        let h = [("Forwarded", r#"for="6.6.6.6, for=1.2.3.4"#)];
        assert_eq!(resolve("10.0.0.1", &h, &ten()), ip("1.2.3.4"));
    }

    #[test]
    fn all_trusted_returns_leftmost() {
        let h = [("X-Forwarded-For", "10.0.0.9, 10.0.0.8, 10.0.0.7")];
        assert_eq!(resolve("10.0.0.1", &h, &ten()), ip("10.0.0.9"));
    }

    #[test]
    fn ipv4_mapped_peer_is_trusted() {
        let h = [("X-Forwarded-For", "1.2.3.4")];
        let lo = TrustedProxies::loopback();
        assert_eq!(resolve("::ffff:127.0.0.1", &h, &lo), ip("1.2.3.4"));
        assert_eq!(resolve("::1", &h, &lo), ip("1.2.3.4"));
        assert_eq!(resolve("127.8.9.10", &h, &lo), ip("1.2.3.4"));
        assert_eq!(resolve("::ffff:10.0.0.1", &h, &ten()), ip("1.2.3.4"));
        // Untrusted mapped peer is returned unchanged.
        assert_eq!(resolve("::ffff:8.8.8.8", &h, &lo), ip("::ffff:8.8.8.8"));
        // Mapped entries in the chain are matched against IPv4 networks too.
        let h = [("X-Forwarded-For", "1.2.3.4, ::ffff:10.0.0.2")];
        assert_eq!(resolve("10.0.0.1", &h, &ten()), ip("1.2.3.4"));
    }

    #[test]
    fn contains_and_parse() {
        let t = TrustedProxies::parse([
            " 10.0.0.0/8 ",
            "::1/128",
            "192.0.2.7",
            "2001:db8::/32",
            "172.16.5.4/12",
        ])
        .unwrap();
        assert!(!t.is_empty());
        assert!(t.contains(ip("10.255.255.255")));
        assert!(!t.contains(ip("11.0.0.0")));
        assert!(t.contains(ip("::1")));
        assert!(!t.contains(ip("::2")));
        assert!(t.contains(ip("192.0.2.7")));
        assert!(!t.contains(ip("192.0.2.6")));
        assert!(t.contains(ip("2001:db8:ffff::1")));
        assert!(!t.contains(ip("2001:db9::1")));
        assert!(t.contains(ip("172.31.0.1")), "host bits are masked");
        assert!(!t.contains(ip("172.32.0.1")));
        assert!(t.contains(ip("::ffff:10.1.1.1")));
        // IPv4 networks do not match non-mapped IPv6 addresses.
        assert!(!t.contains(ip("::a01:101")));

        let all = TrustedProxies::parse(["0.0.0.0/0"]).unwrap();
        assert!(all.contains(ip("255.255.255.255")));
        assert!(!all.contains(ip("2001:db8::1")));
        let all6 = TrustedProxies::parse(["::/0"]).unwrap();
        assert!(all6.contains(ip("2001:db8::1")));
        assert!(all6.contains(ip("1.2.3.4")));
        let mapped = TrustedProxies::parse(["::ffff:10.0.0.0/104"]).unwrap();
        assert!(mapped.contains(ip("10.9.9.9")));
        assert!(!mapped.contains(ip("11.0.0.1")));

        assert!(TrustedProxies::none().is_empty());
        assert!(!TrustedProxies::none().contains(ip("127.0.0.1")));
        let empty: [&str; 0] = [];
        assert!(TrustedProxies::parse(empty).unwrap().is_empty());
        assert_eq!(
            format!("{:?}", TrustedProxies::loopback()),
            "TrustedProxies { nets: [127.0.0.0/8, ::1/128], header: Auto }"
        );
    }

    #[test]
    fn cidr_parse_errors_name_the_entry() {
        for bad in [
            "",
            "   ",
            "10.0.0",
            "not-an-ip",
            "fe80::1%eth0",
            "1.2.3.4:80",
        ] {
            let err = TrustedProxies::parse(["10.0.0.0/8", bad]).unwrap_err();
            assert_eq!(
                err,
                ClientIpError::InvalidAddress {
                    entry: bad.to_owned()
                },
                "entry {bad:?}"
            );
            assert!(err.to_string().contains(&format!("{bad:?}")));
        }
        for (bad, max) in [
            ("10.0.0.0/33", 32),
            ("10.0.0.0/", 32),
            ("10.0.0.0/+8", 32),
            ("10.0.0.0/-1", 32),
            ("10.0.0.0/8/8", 32),
            ("10.0.0.0/0008", 32),
            ("::/129", 128),
            ("::/abc", 128),
        ] {
            let err = TrustedProxies::parse([bad]).unwrap_err();
            assert_eq!(
                err,
                ClientIpError::InvalidPrefix {
                    entry: bad.to_owned(),
                    max
                },
                "entry {bad:?}"
            );
            assert!(err.to_string().contains(bad));
        }
    }

    #[test]
    fn hop_cap_is_enforced() {
        let t = ten();
        // 100 trusted entries left of which sits the real client: only the
        // rightmost MAX_HOPS entries are looked at.
        let mut list = vec!["1.2.3.4".to_owned()];
        list.extend((0..100).map(|i| format!("10.0.{}.{}", i / 250, i % 250 + 1)));
        let joined = list.join(", ");
        let h = [("X-Forwarded-For", joined.as_str())];
        let expected = &list[list.len() - MAX_HOPS];
        assert_eq!(resolve("10.0.0.1", &h, &t), ip(expected));
        // A client within reach is found.
        let mut list = vec!["1.2.3.4".to_owned()];
        list.extend((0..MAX_HOPS - 1).map(|i| format!("10.1.0.{}", i + 1)));
        let joined = list.join(",");
        let h = [("X-Forwarded-For", joined.as_str())];
        assert_eq!(resolve("10.0.0.1", &h, &t), ip("1.2.3.4"));
    }

    #[test]
    fn oversized_line_is_a_barrier() {
        let t = ten();
        let long = format!("{}, 1.2.3.4", "x".repeat(MAX_HEADER_VALUE_LEN));
        // Oversized rightmost line: nothing behind the peer can be trusted.
        let h = [
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Forwarded-For", long.as_str()),
        ];
        assert_eq!(resolve("10.0.0.1", &h, &t), ip("10.0.0.1"));
        // Entries right of an oversized line still work.
        let h = [
            ("X-Forwarded-For", long.as_str()),
            ("X-Forwarded-For", "5.6.7.8, 10.0.0.3"),
        ];
        assert_eq!(resolve("10.0.0.1", &h, &t), ip("5.6.7.8"));
        let h = [
            ("X-Forwarded-For", long.as_str()),
            ("X-Forwarded-For", "10.0.0.3"),
        ];
        assert_eq!(resolve("10.0.0.1", &h, &t), ip("10.0.0.3"));
        // Exactly at the limit is still parsed.
        let pad = MAX_HEADER_VALUE_LEN - "1.2.3.4".len();
        let exact = format!("{}1.2.3.4", " ".repeat(pad));
        assert_eq!(exact.len(), MAX_HEADER_VALUE_LEN);
        let h = [("X-Forwarded-For", exact.as_str())];
        assert_eq!(resolve("10.0.0.1", &h, &t), ip("1.2.3.4"));
    }

    #[test]
    fn large_hostile_input_is_bounded() {
        // The work is bounded by counting, not by a clock: every header line is
        // pulled from the iterator exactly once, and at most MAX_HOPS entries are
        // ever retained, which bounds the entries the walk parses. How fast this
        // runs is measured in benchmarks.
        let t = ten();
        let line = ",".repeat(MAX_HEADER_VALUE_LEN);
        let pulled = std::cell::Cell::new(0usize);
        let lines = (0..1000).map(|_| {
            pulled.set(pulled.get() + 1);
            ("X-Forwarded-For", line.as_bytes())
        });
        assert_eq!(resolve_client_ip(ip("10.0.0.1"), lines, &t), ip("10.0.0.1"));
        assert_eq!(pulled.get(), 1000);

        // Lines of empty elements leave nothing to walk.
        let mut hops = Hops::new(Syntax::XForwardedFor);
        for _ in 0..1000 {
            hops.push_line(line.as_bytes());
        }
        assert!(hops.entries.is_empty());
        assert_eq!(hops.walk(ip("10.0.0.1"), &t), ip("10.0.0.1"));

        // 1000 full lines of trusted entries (~900k entries in all): only the
        // rightmost MAX_HOPS are kept, and the walk ends on the leftmost of them.
        let entries: Vec<String> = (0..MAX_HEADER_VALUE_LEN / 12)
            .map(|i| format!("10.2.{}.{}", i / 250, i % 250 + 1))
            .collect();
        let full = entries.join(",");
        assert!(full.len() <= MAX_HEADER_VALUE_LEN);
        for _ in 0..1000 {
            hops.push_line(full.as_bytes());
            assert!(hops.entries.len() <= MAX_HOPS);
        }
        assert_eq!(hops.entries.len(), MAX_HOPS);
        let leftmost_kept = &entries[entries.len() - MAX_HOPS];
        assert_eq!(hops.walk(ip("10.0.0.1"), &t), ip(leftmost_kept));
        let h: Vec<(&str, &str)> = (0..1000)
            .map(|_| ("X-Forwarded-For", full.as_str()))
            .collect();
        assert_eq!(resolve("10.0.0.1", &h, &t), ip(leftmost_kept));

        // A line of nothing but quotes (balanced or not) is one unparsable
        // element: the walk stops at once on the peer.
        for n in [MAX_HEADER_VALUE_LEN, MAX_HEADER_VALUE_LEN - 1] {
            let quotes = "\"".repeat(n);
            let mut hops = Hops::new(Syntax::Forwarded);
            hops.push_line(quotes.as_bytes());
            assert_eq!(hops.entries.len(), 1);
            let h = [("Forwarded", quotes.as_str())];
            assert_eq!(resolve("10.0.0.1", &h, &t), ip("10.0.0.1"));
        }
        // One byte over the limit: a barrier, never split into elements.
        let over = ",".repeat(MAX_HEADER_VALUE_LEN + 1);
        let mut hops = Hops::new(Syntax::XForwardedFor);
        hops.push_line(over.as_bytes());
        assert_eq!(hops.entries, [None]);
    }

    #[test]
    fn node_parser() {
        assert_eq!(parse_node("1.2.3.4:0"), Some(ip("1.2.3.4")));
        assert_eq!(parse_node("1.2.3.4:65535"), Some(ip("1.2.3.4")));
        assert_eq!(parse_node("1.2.3.4:65536"), None);
        assert_eq!(parse_node("1.2.3.4:+80"), None);
        assert_eq!(parse_node("1.2.3.4:_"), None);
        assert_eq!(parse_node("[::1]:_a-b.c"), Some(ip("::1")));
        assert_eq!(parse_node("[::1]x"), None);
        assert_eq!(parse_node("[1.2.3.4]"), None);
        assert_eq!(parse_node("_hidden"), None);
        assert_eq!(parse_node("unknown"), None);
        assert_eq!(parse_node(""), None);
        assert_eq!(unquote(r#""a\"b""#).as_deref(), Some("a\"b"));
        assert_eq!(unquote(r#""a\""#), None);
        assert_eq!(unquote("\""), None);
        assert_eq!(unquote("a\"b"), None);
    }
}
