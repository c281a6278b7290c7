//! Rate and connection limits: a [`TokenBucket`] for "N per second with
//! bursts of B", and an [`IpLimiter`] that caps, per client address, both the
//! rate of new handshakes and the number of concurrent connections.
//!
//! Time is always passed in (`now: Instant`): nothing here reads a clock, so
//! tests are deterministic and callers on a tokio runtime can pass
//! `tokio::time::Instant::now().into_std()` to follow a paused test clock.
//!
//! # Addresses
//!
//! The [`IpLimiter`] does not count per exact address but per [`ip_key`]:
//!
//! * IPv4 addresses count on their own.
//! * IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, what a dual-stack socket
//!   reports for an IPv4 client) count as the IPv4 address `a.b.c.d`, so one
//!   client gets one budget whichever socket it arrived on.
//! * Other IPv6 addresses count by their /64 prefix. A single host or home
//!   network is normally given a whole /64 and can pick any address in it
//!   (privacy extensions change it daily, and an abuser can rotate per
//!   connection), so a per-address limit would be no limit at all. The price:
//!   clients sharing a /64 (one LAN behind one router) share a budget, just as
//!   IPv4 clients behind one NAT do.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::metrics::RejectReason;

/// The slowest refill a [`TokenBucket`] supports: rates below one token a
/// year are treated as one a year (keeps every `Instant` computation far from
/// overflow).
const MAX_INTERVAL: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// A token bucket: on average `rate_per_sec` takes per second, with up to
/// `burst` at once after a quiet period.
///
/// The bucket starts full. It is implemented as the equivalent *generic cell
/// rate algorithm*: instead of a fractional token count that is refilled on
/// every call, it keeps the instant at which the bucket will be full again, so
/// the arithmetic is exact integer `Duration` math and an idle bucket needs no
/// updates.
///
/// Time is passed in; the bucket never reads a clock. An earlier `now` than a
/// previous call is treated as no time having passed.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Time to earn one token; `None` when unlimited.
    interval: Option<Duration>,
    /// How far ahead of `now` `full_at` may be while a token is still
    /// available: `(burst - 1) * interval`.
    tolerance: Duration,
    /// When the bucket will hold `burst` tokens again (at or before `now`
    /// means it is full).
    full_at: Instant,
}

impl TokenBucket {
    /// A full bucket allowing `rate_per_sec` takes per second on average and
    /// `burst` at once.
    ///
    /// A rate of 0 (or negative, NaN or infinite) means unlimited: every
    /// [`try_take`](Self::try_take) succeeds. A burst of 0 is treated as 1,
    /// since a bucket that holds no token would never allow anything. Rates
    /// below one per year are treated as one per year.
    pub fn new(rate_per_sec: f64, burst: u32, now: Instant) -> Self {
        let interval = (rate_per_sec > 0.0 && rate_per_sec.is_finite()).then(|| {
            Duration::try_from_secs_f64(1.0 / rate_per_sec)
                .unwrap_or(MAX_INTERVAL)
                .clamp(Duration::from_nanos(1), MAX_INTERVAL)
        });
        let tolerance = interval.map_or(Duration::ZERO, |interval| {
            interval
                .checked_mul(burst.max(1) - 1)
                .unwrap_or(Duration::MAX)
        });
        Self {
            interval,
            tolerance,
            full_at: now,
        }
    }

    /// Whether this bucket is unlimited (rate 0).
    pub fn is_unlimited(&self) -> bool {
        self.interval.is_none()
    }

    /// Takes one token if there is one at `now`: `true` if the action is
    /// allowed, `false` if it must be refused (nothing is taken then).
    pub fn try_take(&mut self, now: Instant) -> bool {
        let Some(interval) = self.interval else {
            return true;
        };
        let start = self.full_at.max(now);
        if start.saturating_duration_since(now) > self.tolerance {
            return false;
        }
        match start.checked_add(interval) {
            Some(full_at) => {
                self.full_at = full_at;
                true
            }
            // Only reachable with absurd bursts; refusing is the safe side.
            None => false,
        }
    }

    /// Whether the bucket is full at `now` (as if it had never been used), so
    /// forgetting it loses nothing. Always `true` when unlimited.
    pub fn is_full(&self, now: Instant) -> bool {
        self.interval.is_none() || self.full_at <= now
    }
}

/// The address an [`IpLimiter`] counts `ip` under: IPv4 as is, IPv4-mapped
/// IPv6 as the IPv4 address, other IPv6 as its /64 prefix (the low 64 bits
/// zeroed). See the [module docs](self) for why.
pub fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
    }
}

/// Why [`IpLimiter::try_acquire`] refused a connection.
///
/// Both map to HTTP 429 Too Many Requests ([`status`](Self::status)): in
/// both cases this one client is asking for too much, and the server is fine.
/// 503 Service Unavailable would tell clients and load balancers that the
/// server as a whole is unavailable (some take a backend out of rotation on
/// 503s), which is what the global connection limit is for, not this one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IpLimitError {
    /// The address (see [`ip_key`]) already has `limit` open connections.
    #[error("too many connections from this address (limit {limit})")]
    TooManyConnections {
        /// The configured per-address connection limit.
        limit: usize,
    },
    /// The address opened connections faster than the handshake rate allows.
    #[error("too many connection attempts from this address, slow down")]
    HandshakeRate,
}

impl IpLimitError {
    /// The HTTP status of the rejection: 429 for both variants (see the
    /// type's docs).
    pub fn status(&self) -> u16 {
        429
    }

    /// The `wshub_rejects_total` reason for this rejection.
    pub fn reject_reason(&self) -> RejectReason {
        match self {
            Self::TooManyConnections { .. } => RejectReason::PerIpConnections,
            Self::HandshakeRate => RejectReason::HandshakeRate,
        }
    }
}

/// Number of independently locked parts of an [`IpLimiter`]'s table, so
/// handshakes from different addresses rarely wait on each other (a power of
/// two comfortably above typical core counts).
const SHARDS: usize = 16;

/// Per-address state.
#[derive(Debug)]
struct Entry {
    /// Open connections (permits not yet dropped).
    connections: usize,
    /// The handshake-rate bucket; `None` when the rate limit is off.
    bucket: Option<TokenBucket>,
}

/// The state shared by an [`IpLimiter`] and its [`IpPermit`]s.
#[derive(Debug)]
struct State {
    max_connections: usize,
    handshake_rate: f64,
    handshake_burst: u32,
    hasher: RandomState,
    shards: [Mutex<HashMap<IpAddr, Entry>>; SHARDS],
}

impl State {
    fn shard_of(&self, key: &IpAddr) -> usize {
        // The modulo keeps the value below SHARDS, so the cast cannot truncate.
        (self.hasher.hash_one(key) % SHARDS as u64) as usize
    }

    fn lock(&self, shard: usize) -> MutexGuard<'_, HashMap<IpAddr, Entry>> {
        // Nothing panics while a shard is locked, and the counts stay
        // consistent even if something did, so a poisoned lock is usable.
        self.shards[shard]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn rate_limited(&self) -> bool {
        self.handshake_rate > 0.0 && self.handshake_rate.is_finite()
    }
}

/// Per-address limits on new and concurrent connections.
///
/// Call [`try_acquire`](Self::try_acquire) when a connection arrives (before
/// the WebSocket handshake, so refused clients cost little) and keep the
/// returned [`IpPermit`] for as long as the connection is open. Call
/// [`sweep`](Self::sweep) periodically (say every minute) to forget addresses
/// that have no connection and a full bucket again; without it, the table
/// keeps one small entry per address seen while the rate limit is on.
///
/// Cheap to clone (an `Arc`); clones share the same table. The table is
/// split into 16 shards, each a `std::sync::Mutex<HashMap>` held only for a
/// map lookup and a few integer operations, never across an `.await`.
#[derive(Clone)]
pub struct IpLimiter {
    state: Arc<State>,
}

impl fmt::Debug for IpLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IpLimiter")
            .field("max_connections_per_ip", &self.state.max_connections)
            .field("handshake_rate", &self.state.handshake_rate)
            .field("handshake_burst", &self.state.handshake_burst)
            .field("tracked", &self.tracked())
            .finish()
    }
}

impl IpLimiter {
    /// A limiter allowing each address (see [`ip_key`]) at most
    /// `max_connections_per_ip` open connections (0 = no limit) and new
    /// connections at `handshake_rate` per second on average with bursts of
    /// `handshake_burst` (rate 0 = no limit; see [`TokenBucket::new`]).
    pub fn new(max_connections_per_ip: usize, handshake_rate: f64, handshake_burst: u32) -> Self {
        Self {
            state: Arc::new(State {
                max_connections: max_connections_per_ip,
                handshake_rate,
                handshake_burst,
                hasher: RandomState::new(),
                shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            }),
        }
    }

    /// Admits a new connection from `ip` at `now`, or says why not.
    ///
    /// The handshake rate is checked first, so every attempt spends a token,
    /// including those then refused for the connection count (a client
    /// hammering a full quota is slowed down too). On success the connection
    /// is counted until the returned permit is dropped.
    ///
    /// # Errors
    ///
    /// [`IpLimitError::HandshakeRate`] if the address has no token left,
    /// [`IpLimitError::TooManyConnections`] if it is at its connection limit.
    pub fn try_acquire(&self, ip: IpAddr, now: Instant) -> Result<IpPermit, IpLimitError> {
        let state = &self.state;
        if state.max_connections == 0 && !state.rate_limited() {
            return Ok(IpPermit { release: None });
        }
        let key = ip_key(ip);
        let shard = state.shard_of(&key);
        let mut map = state.lock(shard);
        let entry = map.entry(key).or_insert_with(|| Entry {
            connections: 0,
            bucket: state
                .rate_limited()
                .then(|| TokenBucket::new(state.handshake_rate, state.handshake_burst, now)),
        });
        if let Some(bucket) = &mut entry.bucket {
            if !bucket.try_take(now) {
                return Err(IpLimitError::HandshakeRate);
            }
        }
        if state.max_connections != 0 && entry.connections >= state.max_connections {
            return Err(IpLimitError::TooManyConnections {
                limit: state.max_connections,
            });
        }
        entry.connections += 1;
        drop(map);
        Ok(IpPermit {
            release: Some(Release {
                state: Arc::clone(state),
                key,
                shard,
            }),
        })
    }

    /// Forgets addresses that have no open connection and whose handshake
    /// bucket is full again at `now` (nothing is lost: a new entry would be
    /// the same). Takes each shard's lock in turn, briefly.
    pub fn sweep(&self, now: Instant) {
        for shard in 0..SHARDS {
            self.state.lock(shard).retain(|_, entry| {
                entry.connections > 0 || entry.bucket.as_ref().is_some_and(|b| !b.is_full(now))
            });
        }
    }

    /// How many addresses (keys) the limiter currently holds state for.
    pub fn tracked(&self) -> usize {
        (0..SHARDS).map(|shard| self.state.lock(shard).len()).sum()
    }
}

/// What an [`IpPermit`] gives back when dropped.
#[derive(Debug)]
struct Release {
    state: Arc<State>,
    key: IpAddr,
    shard: usize,
}

/// One admitted connection from [`IpLimiter::try_acquire`]; dropping it
/// releases the address's connection slot. Keep it alive as long as the
/// connection (move it into the connection's task).
#[derive(Debug)]
#[must_use = "the connection slot is released when the permit is dropped"]
pub struct IpPermit {
    /// `None` when the limiter has every limit off and tracks nothing.
    release: Option<Release>,
}

impl IpPermit {
    /// The address this permit is counted under (see [`ip_key`]); `None`
    /// when the limiter has both limits off and counts nothing.
    pub fn key(&self) -> Option<IpAddr> {
        self.release.as_ref().map(|r| r.key)
    }
}

impl Drop for IpPermit {
    fn drop(&mut self) {
        let Some(release) = &self.release else {
            return;
        };
        let mut map = release.state.lock(release.shard);
        if let Some(entry) = map.get_mut(&release.key) {
            entry.connections = entry.connections.saturating_sub(1);
            // Without a bucket there is nothing to remember about an address
            // with no connection. With one, `sweep` decides once it is full
            // (checking here would need a clock).
            if entry.connections == 0 && entry.bucket.is_none() {
                map.remove(&release.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn v4(d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, d))
    }

    #[test]
    fn bucket_allows_burst_then_refuses() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 3, t0);
        assert!(b.is_full(t0));
        assert!(b.try_take(t0));
        assert!(b.try_take(t0));
        assert!(b.try_take(t0));
        assert!(!b.try_take(t0));
        assert!(!b.try_take(t0 + ms(99)));
        assert!(!b.is_full(t0 + ms(99)));
    }

    #[test]
    fn bucket_refills_over_time() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 3, t0);
        for _ in 0..3 {
            assert!(b.try_take(t0));
        }
        // One token per 100 ms.
        assert!(b.try_take(t0 + ms(100)));
        assert!(!b.try_take(t0 + ms(100)));
        assert!(!b.try_take(t0 + ms(199)));
        assert!(b.try_take(t0 + ms(200)));
        // A long pause refills to the burst, not beyond.
        let later = t0 + Duration::from_secs(60);
        assert!(b.is_full(later));
        for _ in 0..3 {
            assert!(b.try_take(later));
        }
        assert!(!b.try_take(later));
        // Exactly `rate` per second in steady state.
        let start = later + Duration::from_secs(1);
        let taken = (0..1000).filter(|i| b.try_take(start + ms(*i))).count();
        // 3 from the refilled burst, then one per 100 ms over 999 ms.
        assert_eq!(taken, 3 + 9);
    }

    #[test]
    fn bucket_edge_cases() {
        let t0 = Instant::now();
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let mut b = TokenBucket::new(rate, 0, t0);
            assert!(b.is_unlimited());
            assert!((0..10_000).all(|_| b.try_take(t0)));
            assert!(b.is_full(t0));
        }
        // Burst 0 behaves as 1.
        let mut b = TokenBucket::new(1.0, 0, t0);
        assert!(b.try_take(t0));
        assert!(!b.try_take(t0));
        assert!(b.try_take(t0 + Duration::from_secs(1)));
        // Going back in time neither panics nor refills.
        assert!(!b.try_take(t0));
        // Fractional and tiny rates.
        let mut b = TokenBucket::new(0.5, 1, t0);
        assert!(b.try_take(t0));
        assert!(!b.try_take(t0 + ms(1999)));
        assert!(b.try_take(t0 + ms(2000)));
        let mut b = TokenBucket::new(1e-300, u32::MAX, t0);
        assert!(b.try_take(t0));
        assert!(b.try_take(t0));
    }

    #[test]
    fn ip_keys() {
        assert_eq!(ip_key(v4(7)), v4(7));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(ip_key(mapped), v4(7));
        let a: IpAddr = "2001:db8:1:2:aaaa:bbbb:cccc:dddd".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let prefix: IpAddr = "2001:db8:1:2::".parse().unwrap();
        assert_eq!(ip_key(a), prefix);
        assert_eq!(ip_key(b), prefix);
        assert_ne!(ip_key(other), prefix);
        assert_eq!(
            ip_key(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        );
    }

    #[test]
    fn connection_limit_and_permit_drop() {
        let t0 = Instant::now();
        let limiter = IpLimiter::new(2, 0.0, 0);
        let p1 = limiter.try_acquire(v4(1), t0).unwrap();
        let p2 = limiter.try_acquire(v4(1), t0).unwrap();
        let err = limiter.try_acquire(v4(1), t0).unwrap_err();
        assert_eq!(err, IpLimitError::TooManyConnections { limit: 2 });
        assert_eq!(err.status(), 429);
        assert_eq!(err.reject_reason(), RejectReason::PerIpConnections);
        // Another address has its own quota.
        let other = limiter.try_acquire(v4(2), t0).unwrap();
        assert_eq!(limiter.tracked(), 2);

        drop(p1);
        let p3 = limiter.try_acquire(v4(1), t0).unwrap();
        assert_eq!(p3.key(), Some(v4(1)));
        drop((p2, p3, other));
        // Without a rate limit, an address with no connection is forgotten
        // at once.
        assert_eq!(limiter.tracked(), 0);
    }

    #[test]
    fn handshake_rate_is_checked_first() {
        let t0 = Instant::now();
        let limiter = IpLimiter::new(1, 1.0, 2);
        let held = limiter.try_acquire(v4(1), t0).unwrap();
        // Second token spent, refused for the count.
        assert_eq!(
            limiter.try_acquire(v4(1), t0).unwrap_err(),
            IpLimitError::TooManyConnections { limit: 1 }
        );
        // No token left: refused for the rate even though it is also full.
        let err = limiter.try_acquire(v4(1), t0).unwrap_err();
        assert_eq!(err, IpLimitError::HandshakeRate);
        assert_eq!(err.status(), 429);
        assert_eq!(err.reject_reason(), RejectReason::HandshakeRate);
        drop(held);
        assert_eq!(
            limiter.try_acquire(v4(1), t0 + ms(500)).unwrap_err(),
            IpLimitError::HandshakeRate
        );
        let p = limiter.try_acquire(v4(1), t0 + ms(1000)).unwrap();
        drop(p);
    }

    #[test]
    fn sweep_forgets_idle_addresses_with_full_buckets() {
        let t0 = Instant::now();
        let limiter = IpLimiter::new(0, 10.0, 5);
        let held = limiter.try_acquire(v4(1), t0).unwrap();
        drop(limiter.try_acquire(v4(2), t0).unwrap());
        assert_eq!(limiter.tracked(), 2);
        // v4(2)'s bucket is not full yet: kept.
        limiter.sweep(t0 + ms(50));
        assert_eq!(limiter.tracked(), 2);
        // Full again after 100 ms: forgotten; v4(1) still has a connection.
        limiter.sweep(t0 + ms(100));
        assert_eq!(limiter.tracked(), 1);
        drop(held);
        limiter.sweep(t0 + ms(100));
        assert_eq!(limiter.tracked(), 0);
        // A forgotten address starts again with a full burst.
        for _ in 0..5 {
            drop(limiter.try_acquire(v4(2), t0 + ms(100)).unwrap());
        }
        assert!(limiter.try_acquire(v4(2), t0 + ms(100)).is_err());
    }

    #[test]
    fn ipv6_addresses_share_their_64() {
        let t0 = Instant::now();
        let limiter = IpLimiter::new(2, 0.0, 0);
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::ffff:1234".parse().unwrap();
        let c: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        let _pa = limiter.try_acquire(a, t0).unwrap();
        let _pb = limiter.try_acquire(b, t0).unwrap();
        assert!(matches!(
            limiter.try_acquire("2001:db8::9".parse().unwrap(), t0),
            Err(IpLimitError::TooManyConnections { .. })
        ));
        let _pc = limiter.try_acquire(c, t0).unwrap();
        // IPv4-mapped counts as the IPv4 address.
        let _p4 = limiter.try_acquire(v4(9), t0).unwrap();
        let _p4b = limiter
            .try_acquire("::ffff:192.0.2.9".parse().unwrap(), t0)
            .unwrap();
        assert!(limiter.try_acquire(v4(9), t0).is_err());
        assert_eq!(limiter.tracked(), 3);
    }

    #[test]
    fn no_limits_tracks_nothing() {
        let limiter = IpLimiter::new(0, 0.0, 0);
        let t0 = Instant::now();
        let permits: Vec<_> = (0..100)
            .map(|_| limiter.try_acquire(v4(1), t0).unwrap())
            .collect();
        assert_eq!(limiter.tracked(), 0);
        assert_eq!(permits[0].key(), None);
    }

    #[test]
    fn permits_are_send_and_static() {
        fn check<T: Send + Sync + 'static>() {}
        fn check_send<T: Send + 'static>() {}
        check::<IpLimiter>();
        check_send::<IpPermit>();
    }

    #[test]
    fn concurrent_acquire_and_drop() {
        const LIMIT: usize = 3;
        const THREADS: usize = 4;
        let limiter = IpLimiter::new(LIMIT, 0.0, 0);
        let held = Arc::new(AtomicUsize::new(0));
        let admitted = Arc::new(AtomicUsize::new(0));
        let t0 = Instant::now();
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let limiter = limiter.clone();
                let held = Arc::clone(&held);
                let admitted = Arc::clone(&admitted);
                std::thread::spawn(move || {
                    let mut mine = Vec::new();
                    for i in 0..20_000usize {
                        // Everyone shares one address; a second one per
                        // thread checks that shards do not interfere.
                        if let Ok(p) = limiter.try_acquire(v4(1), t0) {
                            let now_held = held.fetch_add(1, Ordering::SeqCst) + 1;
                            assert!(now_held <= LIMIT, "{now_held} > {LIMIT}");
                            admitted.fetch_add(1, Ordering::Relaxed);
                            mine.push(p);
                        }
                        let own = u8::try_from(10 + t).unwrap();
                        drop(limiter.try_acquire(v4(own), t0).unwrap());
                        if (i + t) % 3 == 0 {
                            if let Some(p) = mine.pop() {
                                held.fetch_sub(1, Ordering::SeqCst);
                                drop(p);
                            }
                        }
                    }
                    held.fetch_sub(mine.len(), Ordering::SeqCst);
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert!(admitted.load(Ordering::Relaxed) > LIMIT);
        assert_eq!(limiter.tracked(), 0);
        // All slots are free again.
        let all: Vec<_> = (0..LIMIT)
            .map(|_| limiter.try_acquire(v4(1), t0).unwrap())
            .collect();
        assert!(limiter.try_acquire(v4(1), t0).is_err());
        drop(all);
    }
}
