//! [`Config`] and its [`Builder`]: every knob of the server, with its default and
//! why that default is safe.

use std::sync::Arc;
use std::time::Duration;

use wshub_proto::deflate::DeflateConfig;
use wshub_proto::Limits;

use crate::client_ip::TrustedProxies;

/// What to do with a connection whose outbound queue is full (the peer reads
/// slower than the server sends).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SlowConsumerPolicy {
    /// Drop the queued backlog and close the connection with
    /// [`close_codes::SLOW_CONSUMER`](crate::close_codes::SLOW_CONSUMER) (a code
    /// that tells the client it may reconnect). The default: a client that cannot
    /// keep up learns it, instead of silently missing messages.
    #[default]
    Close,
    /// Drop the oldest queued messages to make room; each drop is counted
    /// ([`WebSocket::dropped_messages`](crate::WebSocket::dropped_messages)).
    DropOldest,
}

/// Decides which subprotocol to accept from the client's list; see
/// [`Builder::select_protocol`].
pub type ProtocolSelector = Arc<dyn Fn(&[String]) -> Option<String> + Send + Sync>;

/// Server settings. Build with [`Config::builder`].
#[derive(Clone)]
pub struct Config {
    pub(crate) limits: Limits,
    pub(crate) ping_interval: Option<Duration>,
    pub(crate) pong_timeout: Duration,
    pub(crate) close_timeout: Duration,
    pub(crate) handshake_timeout: Duration,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) max_queue_bytes: usize,
    pub(crate) write_stall_timeout: Duration,
    pub(crate) slow_consumer: SlowConsumerPolicy,
    pub(crate) max_connections: usize,
    pub(crate) max_inbound_bytes: usize,
    pub(crate) deflate: Option<DeflateConfig>,
    pub(crate) protocols: Vec<String>,
    pub(crate) protocol_selector: Option<ProtocolSelector>,
    pub(crate) require_protocol: bool,
    pub(crate) trusted_proxies: TrustedProxies,
    pub(crate) keep_headers: bool,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("limits", &self.limits)
            .field("ping_interval", &self.ping_interval)
            .field("pong_timeout", &self.pong_timeout)
            .field("close_timeout", &self.close_timeout)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("max_queue_bytes", &self.max_queue_bytes)
            .field("write_stall_timeout", &self.write_stall_timeout)
            .field("slow_consumer", &self.slow_consumer)
            .field("max_connections", &self.max_connections)
            .field("deflate", &self.deflate)
            .field("protocols", &self.protocols)
            .field("trusted_proxies", &self.trusted_proxies)
            .finish_non_exhaustive()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            limits: Limits::default(),
            ping_interval: Some(Duration::from_secs(25)),
            pong_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(10),
            max_queue_bytes: 1 << 20,
            write_stall_timeout: Duration::from_secs(5),
            slow_consumer: SlowConsumerPolicy::Close,
            max_connections: 100_000,
            max_inbound_bytes: 1 << 20,
            deflate: None,
            protocols: Vec::new(),
            protocol_selector: None,
            require_protocol: false,
            trusted_proxies: TrustedProxies::none(),
            keep_headers: true,
        }
    }
}

impl Config {
    /// A builder starting from the defaults.
    pub fn builder() -> Builder {
        Builder(Config::default())
    }

    /// The protocol limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The trusted proxies used to resolve client IPs.
    pub fn trusted_proxies(&self) -> &TrustedProxies {
        &self.trusted_proxies
    }

    pub(crate) fn conn_config(&self, role: wshub_proto::Role) -> wshub_proto::connection::Config {
        let mut c = wshub_proto::connection::Config::new(role)
            .with_limits(self.limits)
            .with_heartbeat(self.ping_interval, self.pong_timeout)
            .with_close_timeout(self.close_timeout);
        if let Some(d) = &self.deflate {
            c = c.with_compression(d.compression_level, d.min_message_size);
        }
        c
    }

    /// Picks the subprotocol for a client that offered `offered`.
    pub(crate) fn choose_protocol(&self, offered: &[String]) -> Option<String> {
        if let Some(sel) = &self.protocol_selector {
            return sel(offered);
        }
        let supported: Vec<&str> = self.protocols.iter().map(String::as_str).collect();
        wshub_proto::handshake::select_protocol(offered, &supported).map(str::to_owned)
    }
}

/// Builds a [`Config`]. Every setter says its default.
///
/// ```
/// use std::time::Duration;
/// use wshub::Config;
/// let config = Config::builder()
///     .ping_interval(Some(Duration::from_secs(30)))
///     .max_message_size(64 * 1024)
///     .deflate(true)
///     .build();
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct Builder(Config);

impl Builder {
    /// Protocol limits (frame, message, fragments, header sizes). Default is
    /// [`Limits::default`]: 16 MiB frames and messages, 1024 fragments, 8 KiB / 64
    /// request headers.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.0.limits = limits;
        self
    }

    /// Largest message (after inflation) and frame. Default is 16 MiB.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.0.limits = self
            .0
            .limits
            .with_max_message_size(bytes)
            .with_max_frame_size(bytes);
        self
    }

    /// Heartbeat ping interval; `None` turns the heartbeat off. Default is 25 s:
    /// below the 30–60 s idle timeouts of common proxies and NATs.
    pub fn ping_interval(mut self, interval: Option<Duration>) -> Self {
        self.0.ping_interval = interval;
        self
    }

    /// How long a peer has to answer a heartbeat ping before it is terminated.
    /// Default is 10 s.
    pub fn pong_timeout(mut self, timeout: Duration) -> Self {
        self.0.pong_timeout = timeout;
        self
    }

    /// How long to wait for the peer's close frame after sending ours before the
    /// TCP connection is dropped. Default is 5 s.
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.0.close_timeout = timeout;
        self
    }

    /// Deadline for the TLS handshake plus the HTTP upgrade request. Default is
    /// 10 s: a peer that connects and sends nothing (slowloris) is dropped.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.0.handshake_timeout = timeout;
        self
    }

    /// On shutdown, how long clients get to complete the close handshake before
    /// the remaining connections are dropped. Default is 10 s.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.0.shutdown_timeout = timeout;
        self
    }

    /// Most bytes queued for one connection (not yet written to its socket) before
    /// the [slow-consumer policy](Self::slow_consumer) applies. Default is 1 MiB.
    pub fn max_queue_bytes(mut self, bytes: usize) -> Self {
        self.0.max_queue_bytes = bytes;
        self
    }

    /// A connection whose socket accepts no bytes for this long while output is
    /// pending is terminated. Default is 5 s.
    pub fn write_stall_timeout(mut self, timeout: Duration) -> Self {
        self.0.write_stall_timeout = timeout;
        self
    }

    /// What happens when a connection's queue is full. Default is
    /// [`SlowConsumerPolicy::Close`].
    pub fn slow_consumer(mut self, policy: SlowConsumerPolicy) -> Self {
        self.0.slow_consumer = policy;
        self
    }

    /// Most open connections; further upgrades get `503 Service Unavailable`.
    /// Default is 100,000.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.0.max_connections = max;
        self
    }

    /// Received messages queued for the application before the server stops
    /// reading from that socket (backpressure). Default is 1 MiB; a single larger
    /// message is still delivered.
    pub fn max_inbound_bytes(mut self, bytes: usize) -> Self {
        self.0.max_inbound_bytes = bytes;
        self
    }

    /// Turns permessage-deflate on with [`DeflateConfig::default`] (server
    /// no-context-takeover, so broadcast frames are compressed once). Default is
    /// off.
    pub fn deflate(mut self, on: bool) -> Self {
        self.0.deflate = on.then(DeflateConfig::default);
        self
    }

    /// permessage-deflate with explicit parameters. Fails if they are invalid.
    pub fn deflate_config(mut self, config: DeflateConfig) -> Result<Self, crate::Error> {
        config
            .validate()
            .map_err(|e| crate::Error::Config(format!("permessage-deflate: {e}")))?;
        self.0.deflate = Some(config);
        Ok(self)
    }

    /// Subprotocols the server speaks, in no particular order: the first one in
    /// the client's list that is also here is selected. Default is none.
    pub fn protocols<I, S>(mut self, protocols: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.0.protocols = protocols.into_iter().map(Into::into).collect();
        self
    }

    /// A custom subprotocol choice from the client's list (like `ws`'s
    /// `handleProtocols`). Overrides [`protocols`](Self::protocols).
    pub fn select_protocol(
        mut self,
        f: impl Fn(&[String]) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.0.protocol_selector = Some(Arc::new(f));
        self
    }

    /// Reject clients that offer none of the supported subprotocols with
    /// `400 Bad Request`. Default is `false` (they connect without a subprotocol).
    pub fn require_protocol(mut self, on: bool) -> Self {
        self.0.require_protocol = on;
        self
    }

    /// Proxies whose `Forwarded` / `X-Forwarded-For` headers are believed when
    /// resolving the client IP. Default is none: the socket address is the client.
    pub fn trusted_proxies(mut self, proxies: TrustedProxies) -> Self {
        self.0.trusted_proxies = proxies;
        self
    }

    /// Keep the upgrade request's headers (but the handshake's own,
    /// [`HANDSHAKE_FIELDS`](crate::headers::HANDSHAKE_FIELDS)) for
    /// [`WebSocket::headers`](crate::WebSocket::headers). Default is `true`;
    /// turn off to save their size (typically 50 to 800 bytes) per connection.
    pub fn keep_headers(mut self, on: bool) -> Self {
        self.0.keep_headers = on;
        self
    }

    /// Finishes the configuration.
    pub fn build(self) -> Config {
        self.0
    }
}
