//! The hub's configuration: everything `wshub serve` runs with.
//!
//! [`HubConfig`] is one serde value type, written as TOML (see
//! `wshub.example.toml` and `docs/configuration.md` at the repository root).
//! Every section and field has a documented default, so an empty file is a
//! valid configuration. [`HubConfig::load`] builds the effective configuration
//! in one place, each layer overriding the one before it:
//!
//! 1. the defaults ([`HubConfig::default`]);
//! 2. the TOML file, if any;
//! 3. environment variables `WSHUB_<SECTION>_<KEY>` (sections `server`,
//!    `tls`, `limits`, `auth`, `api`, `log`);
//! 4. `--set key.path=value` overrides from the command line.
//!
//! Then [`HubConfig::validate`] checks the result as a whole (limits that must
//! agree with each other, names, origins, secrets), and every error is a
//! [`ConfigError`] that says where the bad value came from (file and line,
//! environment variable, or `--set`), which key it is, and what is wrong.
//!
//! Durations are written as strings such as `"10s"`, `"250ms"`, `"5m"`,
//! `"1h"` (or combinations such as `"1m 30s"`); sizes are integers in bytes.
//!
//! # How the layers are checked
//!
//! Values from the file, the environment and `--set` all end up in one
//! [`toml::Table`] that is deserialized once. Before a value is merged, it is
//! checked on its own against a *schema*: the serialized form of a sample
//! configuration in which every optional field is set. The schema gives each
//! key's TOML type (so `"100"` from an environment variable becomes an integer
//! for an integer field but stays a string for a secret), lists the keys that
//! exist (for "unknown key" messages), and lets a single value be tried in
//! isolation (the value is put into a copy of the sample and deserialized), so
//! an error can name the exact key and source without serde reporting paths.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::{Table, Value};

use crate::client_ip::{ProxyHeader, TrustedProxies};
use crate::config::SlowConsumerPolicy;
use crate::hub::auth::{AuthConfig, AuthError, MAX_LEEWAY, MIN_HMAC_SECRET_LEN};

/// Smallest accepted [`LimitsConfig::max_message_size`]: 125 bytes, the
/// largest control-frame payload (a limit below it could not hold a close
/// reason or ping payload a peer may legally send).
pub const MIN_MESSAGE_SIZE: usize = 125;

/// Largest accepted [`LimitsConfig::max_message_size`]: 64 MiB. Each
/// connection may buffer up to this much, so larger values would let a few
/// clients exhaust memory.
pub const MAX_MESSAGE_SIZE: usize = 64 << 20;

/// Shortest accepted [`ApiConfig::key`], in bytes.
pub const MIN_API_KEY_LEN: usize = 16;

/// Longest namespace name, in bytes.
pub const MAX_NAMESPACE_LEN: usize = 64;

/// What [`HubConfig::to_toml`] writes instead of a secret.
pub const REDACTED: &str = "<redacted>";

/// Prefix of the environment variables [`HubConfig::load`] reads.
pub const ENV_PREFIX: &str = "WSHUB_";

/// Sections whose keys can be set from the environment.
const ENV_SECTIONS: [&str; 10] = [
    "server", "tls", "limits", "auth", "api", "log", "demo", "broker", "ingest", "upstream",
];

// ---------------------------------------------------------------------------
// The configuration types
// ---------------------------------------------------------------------------

/// The whole hub configuration (the TOML file's top level).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HubConfig {
    /// `[server]`: listening socket, WebSocket endpoint, connection admission
    /// and shutdown.
    pub server: ServerConfig,
    /// `[tls]`: serve `wss://` with these PEM files. Default: absent (plain
    /// `ws://`, e.g. behind a TLS-terminating proxy).
    pub tls: Option<TlsConfig>,
    /// `[limits]`: per-connection and per-IP limits and timeouts.
    pub limits: LimitsConfig,
    /// `[auth]`: how connection tokens (JWT) are verified.
    pub auth: AuthSection,
    /// `[api]`: the HTTP API for backends.
    pub api: ApiConfig,
    /// `[log]`: log format and level.
    pub log: LogConfig,
    /// `[demo]`: the demo chat's token endpoint (off by default).
    pub demo: DemoConfig,
    /// `[broker]`: where channels live — in this process, or in Redis for a
    /// cluster of nodes.
    pub broker: BrokerConfig,
    /// `[ingest]`: publications consumed from a message queue (a Redis Stream
    /// or NATS JetStream) and published to channels. Off by default.
    pub ingest: IngestConfig,
    /// `[upstream]`: where client publications on channels of namespaces with
    /// `upstream` set are appended for backend workers. Off by default.
    pub upstream: UpstreamConfig,
    /// Options of channels without a namespace (no `:` in the name).
    pub default_namespace: NamespaceConfig,
    /// `[namespaces.NAME]`: options of channels `NAME:...`. A channel whose
    /// namespace is not listed here does not exist. Each namespace starts from
    /// [`NamespaceConfig::default`], not from `default_namespace`.
    pub namespaces: BTreeMap<String, NamespaceConfig>,
}

/// `[server]`: the listening socket and what happens on it before a client
/// speaks the hub protocol.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address and port to listen on. Default: `127.0.0.1:8080` (local only;
    /// use `0.0.0.0:8080` or `[::]:8080` to accept remote clients).
    #[serde(with = "socket_addr")]
    pub listen: SocketAddr,
    /// HTTP path of the WebSocket endpoint; starts with `/`. Default: `/ws`.
    pub ws_path: String,
    /// Most simultaneous connections; further upgrades get 503. Default:
    /// 100 000.
    pub max_connections: usize,
    /// Deadline for the TLS and HTTP upgrade handshakes. Default: 10 s.
    #[serde(with = "duration_str")]
    pub handshake_timeout: Duration,
    /// Upper bound on a graceful shutdown: clients still connected after it
    /// are dropped. Default: 10 s.
    #[serde(with = "duration_str")]
    pub drain_timeout: Duration,
    /// Clients sent a close frame per batch on shutdown (spreads their
    /// reconnects out). Must be above zero. Default: 1000.
    pub drain_batch: usize,
    /// Random pause of up to this between shutdown batches. Default: 100 ms.
    #[serde(with = "duration_str")]
    pub drain_jitter: Duration,
    /// Reverse proxies (IP addresses or CIDRs) whose forwarding header is
    /// believed for the client IP. Default: none (the TCP peer is the client).
    pub trusted_proxies: Vec<String>,
    /// Which forwarding header trusted proxies write. Default:
    /// `x-forwarded-for`.
    pub proxy_header: ProxyHeaderSetting,
    /// Origins allowed to open a WebSocket (exact matches such as
    /// `https://app.example.com`, or `*`). Default: empty, meaning the
    /// `Origin` header is not checked.
    pub allowed_origins: Vec<String>,
    /// Whether to offer permessage-deflate (server no-context-takeover).
    /// Default: `true`.
    pub deflate: bool,
}

/// Which header carries the client address from a trusted proxy
/// (`server.proxy_header`); see [`ProxyHeader`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProxyHeaderSetting {
    /// `Forwarded` when the request has one, else `X-Forwarded-For`.
    Auto,
    /// Only `Forwarded` (RFC 7239).
    Forwarded,
    /// Only `X-Forwarded-For`. The default: what most proxies write.
    #[default]
    XForwardedFor,
}

impl From<ProxyHeaderSetting> for ProxyHeader {
    fn from(s: ProxyHeaderSetting) -> Self {
        match s {
            ProxyHeaderSetting::Auto => ProxyHeader::Auto,
            ProxyHeaderSetting::Forwarded => ProxyHeader::Forwarded,
            ProxyHeaderSetting::XForwardedFor => ProxyHeader::XForwardedFor,
        }
    }
}

/// `[tls]`: certificate and key for `wss://`. Both files are required when
/// the section is present; they are read at startup (not by
/// [`HubConfig::validate`]).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first. Relative paths are resolved against
    /// the config file's directory.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1). Relative paths are resolved
    /// against the config file's directory.
    pub key: PathBuf,
    /// How often the files are checked for changes and reloaded; `0s`
    /// reloads only on SIGHUP. Default: 10 s.
    #[serde(with = "duration_str", default = "default_tls_reload")]
    pub reload_interval: Duration,
}

fn default_tls_reload() -> Duration {
    Duration::from_secs(10)
}

/// `[limits]`: what one connection (and one client IP) may do.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest frame and message, in bytes, after inflating; larger ones close
    /// the connection with 1009. From 125 bytes to 64 MiB. Default: 65 536.
    pub max_message_size: usize,
    /// Interval between server pings; `0s` turns the heartbeat off.
    /// Default: 25 s.
    #[serde(with = "duration_str")]
    pub ping_interval: Duration,
    /// A connection that has not answered a ping within this is dropped; less
    /// than `ping_interval`. Default: 10 s.
    #[serde(with = "duration_str")]
    pub pong_timeout: Duration,
    /// How long to wait for the peer's close frame before dropping TCP.
    /// Default: 5 s.
    #[serde(with = "duration_str")]
    pub close_timeout: Duration,
    /// Bytes of outbound messages queued per connection before the
    /// namespace's slow-consumer policy applies. Default: 1 MiB.
    pub max_queue_bytes: usize,
    /// A connection whose socket accepts no bytes for this long is treated as
    /// a slow consumer. Default: 5 s.
    #[serde(with = "duration_str")]
    pub write_stall_timeout: Duration,
    /// Deadline from the upgrade to a successful `connect` command (else
    /// close 4005). Default: 10 s.
    #[serde(with = "duration_str")]
    pub connect_timeout: Duration,
    /// Largest frame accepted before `connect` succeeded, in bytes (keeps
    /// unauthenticated clients cheap). Default: 20 480.
    pub max_preauth_message_size: usize,
    /// Most channels one connection may be subscribed to. Default: 128.
    pub max_channels_per_connection: usize,
    /// Commands per second one connection may send on average; `0` turns the
    /// limit off. Default: 100.
    pub command_rate: f64,
    /// Commands one connection may send in a burst above `command_rate`.
    /// Default: 200.
    pub command_burst: u32,
    /// Rate-limit error replies (code 110) a connection gets before it is
    /// closed with 4004. Default: 10.
    pub command_rate_strikes: u32,
    /// Most simultaneous connections from one client IP (429 beyond it);
    /// `0` turns the limit off. Default: 1000.
    pub max_connections_per_ip: usize,
    /// WebSocket upgrades per second one client IP may make on average; `0`
    /// turns the limit off. Default: 20.
    pub handshake_rate_per_ip: f64,
    /// Upgrades one client IP may make in a burst above
    /// `handshake_rate_per_ip`. Default: 50.
    pub handshake_burst_per_ip: u32,
}

/// `[auth]`: where the keys that verify connection tokens come from, and
/// which claims are checked. Turned into an [`AuthConfig`] by
/// [`AuthSection::to_auth_config`].
#[derive(Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// HS256 shared secret, at least [`MIN_HMAC_SECRET_LEN`] bytes.
    /// Default: none.
    pub hmac_secret: Option<String>,
    /// File holding the HS256 secret (a trailing newline is ignored); an
    /// alternative to `hmac_secret`, not both. Default: none.
    pub hmac_secret_file: Option<PathBuf>,
    /// PEM RSA public key that verifies RS256 tokens. Default: none.
    pub rsa_public_key_file: Option<PathBuf>,
    /// PEM P-256 public key that verifies ES256 tokens. Default: none.
    pub ec_public_key_file: Option<PathBuf>,
    /// PEM RSA private key used only by `wshub token` to mint RS256 test
    /// tokens. Default: none.
    pub rsa_private_key_file: Option<PathBuf>,
    /// PEM EC private key used only by `wshub token` to mint ES256 test
    /// tokens. Default: none.
    pub ec_private_key_file: Option<PathBuf>,
    /// If set, a token's `aud` must contain this value. Default: none (not
    /// checked).
    pub audience: Option<String>,
    /// If set, a token's `iss` must equal this value. Default: none (not
    /// checked).
    pub issuer: Option<String>,
    /// Clock-skew allowance for `exp` and `nbf`, at most
    /// [`MAX_LEEWAY`]. Default: 30 s.
    #[serde(with = "duration_str")]
    pub leeway: Duration,
    /// Whether clients may connect without a token (as anonymous users).
    /// Default: `false`.
    pub allow_anonymous: bool,
    /// Whether tokens must carry `exp`. Default: `true`.
    pub require_exp: bool,
}

// The secret never reaches logs.
impl fmt::Debug for AuthSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthSection")
            .field("hmac_secret", &self.hmac_secret.as_ref().map(|_| REDACTED))
            .field("hmac_secret_file", &self.hmac_secret_file)
            .field("rsa_public_key_file", &self.rsa_public_key_file)
            .field("ec_public_key_file", &self.ec_public_key_file)
            .field("rsa_private_key_file", &self.rsa_private_key_file)
            .field("ec_private_key_file", &self.ec_private_key_file)
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("leeway", &self.leeway)
            .field("allow_anonymous", &self.allow_anonymous)
            .field("require_exp", &self.require_exp)
            .finish()
    }
}

/// `[api]`: the HTTP API through which backends publish and manage
/// connections.
#[derive(Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Key that API requests must present; at least [`MIN_API_KEY_LEN`]
    /// bytes. Default: none, which turns the API off.
    pub key: Option<String>,
}

// The key never reaches logs.
impl fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiConfig")
            .field("key", &self.key.as_ref().map(|_| REDACTED))
            .finish()
    }
}

/// `[log]`: how the hub logs.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Output format. Default: `text`.
    pub format: LogFormat,
    /// Which events are logged: a `tracing` filter directive such as `info`
    /// or `wshub=debug,info`. Default: `info`.
    pub level: String,
}

/// `[demo]`: the demo chat served at `/`. When enabled, `POST /demo/token`
/// mints a connection token for any name a visitor picks — anyone who can
/// reach the hub can then connect, so enable it only for demos and
/// development.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DemoConfig {
    /// Whether `POST /demo/token` hands out tokens. Default: `false`.
    pub enabled: bool,
    /// The namespace the demo's rooms live in (must be configured in
    /// `[namespaces.NAME]`). Default: `chat`.
    pub namespace: String,
    /// Lifetime of a demo token. Default: `1h`.
    #[serde(with = "duration_str")]
    pub token_ttl: Duration,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            enabled: false,
            namespace: "chat".to_owned(),
            token_ttl: Duration::from_secs(3600),
        }
    }
}

/// `[broker]`: the engine behind channels, history and presence.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// `memory` (one process, the default) or `redis` (several nodes sharing
    /// one Redis).
    pub engine: BrokerEngine,
    /// The Redis URL (`redis://[:password@]host:port[/db]`, `rediss://` for
    /// TLS). Used by the `redis` engine in `single` mode; in `sentinel` mode
    /// only its credentials, database and TLS apply (to the master); unused
    /// in `cluster` mode (the seeds in `nodes` carry them). Default:
    /// `redis://127.0.0.1:6379`.
    pub url: String,
    /// Prefix of every Redis key and pub/sub channel, so several hubs can
    /// share one Redis. Default: `wshub`.
    pub prefix: String,
    // The Redis deployment (the `redis` engine only).
    /// `single` (one Redis at `url`, the default), `cluster` (a Redis
    /// Cluster, seeds in `nodes`) or `sentinel` (the master named
    /// `sentinel_master`, found through the sentinels in `nodes`).
    pub mode: RedisMode,
    /// `redis://` URLs of cluster seed nodes (`mode = "cluster"`) or of the
    /// sentinels (`mode = "sentinel"`). Default: empty.
    pub nodes: Vec<String>,
    /// The name the sentinels monitor the master under (`mode =
    /// "sentinel"`). Default: empty.
    pub sentinel_master: String,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            engine: BrokerEngine::Memory,
            url: "redis://127.0.0.1:6379".to_owned(),
            prefix: "wshub".to_owned(),
            mode: RedisMode::Single,
            nodes: Vec::new(),
            sentinel_master: String::new(),
        }
    }
}

/// Which message queue an `[ingest]` or `[upstream]` bridge uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueEngine {
    /// No bridge. The default.
    #[default]
    Off,
    /// A Redis Stream.
    Redis,
    /// A NATS JetStream stream.
    Nats,
}

/// `[ingest]`: a consumer that reads publications from a message queue and
/// publishes them to channels, as `POST /api/publish` would.
///
/// Every node runs one consumer of the same group, so each entry is handled
/// by one node. An entry is acknowledged only after its publish succeeded; an
/// entry that cannot be published (bad channel, invalid JSON) or that was
/// delivered `max_deliveries` times goes to the dead-letter stream with the
/// reason. Redelivered entries keep their idempotency key, so clients receive
/// them once.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// `off` (the default), `redis` or `nats`.
    pub engine: QueueEngine,
    /// Where the queue is: a `redis://` URL or a `nats://` URL. Default:
    /// empty, meaning `broker.url` for `redis` and `nats://127.0.0.1:4222`
    /// for `nats`.
    pub url: String,
    /// The Redis Stream key, or the JetStream stream name. Default:
    /// `wshub-ingest`.
    pub stream: String,
    /// NATS only: the subject the stream captures (created with the stream
    /// if it does not exist). Default: `wshub.ingest`.
    pub subject: String,
    /// The consumer group (Redis) or durable consumer (NATS) the nodes share.
    /// Default: `wshub`.
    pub group: String,
    /// Deliveries of one entry before it goes to the dead-letter stream.
    /// Default: 5.
    pub max_deliveries: u32,
    /// Where entries that cannot be published go, with the reason: a Redis
    /// Stream key, or a NATS subject. Default: `wshub-ingest-dead`.
    pub dead_letter: String,
    /// How long an entry may stay unacknowledged before another node takes it
    /// over (Redis: `XAUTOCLAIM` min-idle; NATS: the consumer's ack wait).
    /// Default: `30s`.
    #[serde(with = "duration_str")]
    pub claim_idle: Duration,
    /// Entries fetched per read. Default: 64.
    pub batch: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            engine: QueueEngine::Off,
            url: String::new(),
            stream: "wshub-ingest".to_owned(),
            subject: "wshub.ingest".to_owned(),
            group: "wshub".to_owned(),
            max_deliveries: 5,
            dead_letter: "wshub-ingest-dead".to_owned(),
            claim_idle: Duration::from_secs(30),
            batch: 64,
        }
    }
}

/// `[upstream]`: the stream that client publications on upstream channels
/// (namespaces with `upstream = "also"` or `"only"`) are appended to, for
/// backend workers. A client's `publish` is answered only after the queue
/// acknowledged the append, so every acknowledged publish is in the stream
/// at least once.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// `off` (the default), `redis` or `nats`.
    pub engine: QueueEngine,
    /// Where the queue is: a `redis://` URL or a `nats://` URL. Default:
    /// empty, meaning `broker.url` for `redis` and `nats://127.0.0.1:4222`
    /// for `nats`.
    pub url: String,
    /// The Redis Stream key, or the JetStream stream name (created if it
    /// does not exist). Default: `wshub-upstream`.
    pub stream: String,
    /// NATS only: the subject messages are published on (the stream captures
    /// it). Default: `wshub.upstream`.
    pub subject: String,
    /// Most entries kept in the stream (older ones are trimmed); `0` keeps
    /// everything. Default: 1 000 000.
    pub max_len: u64,
    /// How long an append may take before the client's publish fails with
    /// error 108. Default: `5s`.
    #[serde(with = "duration_str")]
    pub timeout: Duration,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            engine: QueueEngine::Off,
            url: String::new(),
            stream: "wshub-upstream".to_owned(),
            subject: "wshub.upstream".to_owned(),
            max_len: 1_000_000,
            timeout: Duration::from_secs(5),
        }
    }
}

/// What happens to a client's publication in a namespace
/// (`upstream` of a namespace).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamMode {
    /// Fanned out to subscribers only. The default.
    #[default]
    Off,
    /// Appended to the `[upstream]` stream and fanned out.
    Also,
    /// Appended to the `[upstream]` stream only; backends decide what to
    /// publish.
    Only,
}

/// Which Redis deployment the `redis` engine uses (`broker.mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    /// One Redis server at `broker.url`. The default.
    #[default]
    Single,
    /// A Redis Cluster (Redis 7 or later) reached through the seeds in
    /// `broker.nodes`; channel events use sharded pub/sub.
    Cluster,
    /// The master `broker.sentinel_master`, found through the sentinels in
    /// `broker.nodes` and followed across failovers.
    Sentinel,
}

/// Which broker engine runs the hub (`broker.engine`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerEngine {
    /// In this process: one node. The default.
    #[default]
    Memory,
    /// Redis: any number of nodes share channels, history and presence.
    Redis,
}

fn mode_name(mode: RedisMode) -> &'static str {
    match mode {
        RedisMode::Single => "single",
        RedisMode::Cluster => "cluster",
        RedisMode::Sentinel => "sentinel",
    }
}

/// Log output format (`log.format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines. The default.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Options of the channels of one namespace (`[default_namespace]` or
/// `[namespaces.NAME]`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NamespaceConfig {
    /// Who may subscribe. Default: `users`.
    pub subscribe: Access,
    /// Who may publish from a client connection (the HTTP API always may).
    /// Default: `users`.
    pub publish: Access,
    /// Whether subscribers may ask who else is subscribed. Default: `true`.
    pub presence: bool,
    /// Whether subscribers get a push when someone subscribes or leaves.
    /// Default: `false`.
    pub join_leave: bool,
    /// Publications kept per channel for history and recovery; `0` keeps no
    /// history. Default: 100.
    pub history_size: usize,
    /// How long a channel's history is kept after its last publication.
    /// Default: 5 min.
    #[serde(with = "duration_str")]
    pub history_ttl: Duration,
    /// Most publications a resubscribe recovers; at most `history_size`.
    /// Default: 100.
    pub recovery_max: usize,
    /// Most subscribers per channel on one node; `0` means unlimited.
    /// Default: 0.
    pub max_subscribers: usize,
    /// What happens to a subscriber whose outbound queue is full.
    /// Default: `close`.
    pub slow_consumer: SlowConsumer,
    /// Largest publication, in bytes of encoded JSON `data`; at most
    /// `limits.max_message_size`. Default: 16 384.
    pub max_publication_size: usize,
    /// Whether pushes tell subscribers who published (the publisher's user
    /// id and client id). Default: `true`.
    pub show_publisher: bool,
    /// Whether client publications are appended to the `[upstream]` stream:
    /// `off`, `also` (appended and fanned out) or `only` (appended, not
    /// fanned out). Default: `off`.
    pub upstream: UpstreamMode,
}

/// Who may subscribe to or publish in a namespace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Anyone, anonymous connections included.
    All,
    /// Any authenticated user (a connection with a verified token). The
    /// default.
    #[default]
    Users,
    /// Only users whose token grants the channel: its `channels` claim (for
    /// subscribing) or `publish` claim (for publishing) has a matching
    /// pattern.
    Grant,
    /// Nobody; only the backend's HTTP API publishes.
    None,
}

/// What happens to a subscriber whose outbound queue is full
/// (`slow_consumer`); see [`SlowConsumerPolicy`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SlowConsumer {
    /// Close the connection with the slow-consumer code (the client may
    /// reconnect and recover). The default.
    #[default]
    Close,
    /// Drop the oldest queued messages, counting each drop.
    DropOldest,
}

impl From<SlowConsumer> for SlowConsumerPolicy {
    fn from(s: SlowConsumer) -> Self {
        match s {
            SlowConsumer::Close => SlowConsumerPolicy::Close,
            SlowConsumer::DropOldest => SlowConsumerPolicy::DropOldest,
        }
    }
}

// ---------------------------------------------------------------------------
// Defaults
// ---------------------------------------------------------------------------

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            ws_path: "/ws".to_owned(),
            max_connections: 100_000,
            handshake_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            drain_batch: 1000,
            drain_jitter: Duration::from_millis(100),
            trusted_proxies: Vec::new(),
            proxy_header: ProxyHeaderSetting::default(),
            allowed_origins: Vec::new(),
            deflate: true,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_message_size: 64 * 1024,
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            max_queue_bytes: 1 << 20,
            write_stall_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            max_preauth_message_size: 20 * 1024,
            max_channels_per_connection: 128,
            command_rate: 100.0,
            command_burst: 200,
            command_rate_strikes: 10,
            max_connections_per_ip: 1000,
            handshake_rate_per_ip: 20.0,
            handshake_burst_per_ip: 50,
        }
    }
}

impl Default for AuthSection {
    fn default() -> Self {
        // Claim checks follow the library's defaults, so the config file and
        // code that builds an `AuthConfig` directly behave the same.
        let lib = AuthConfig::default();
        AuthSection {
            hmac_secret: None,
            hmac_secret_file: None,
            rsa_public_key_file: None,
            ec_public_key_file: None,
            rsa_private_key_file: None,
            ec_private_key_file: None,
            audience: None,
            issuer: None,
            leeway: lib.leeway,
            allow_anonymous: lib.allow_anonymous,
            require_exp: lib.require_exp,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".to_owned(),
        }
    }
}

impl Default for NamespaceConfig {
    fn default() -> Self {
        NamespaceConfig {
            subscribe: Access::Users,
            publish: Access::Users,
            presence: true,
            join_leave: false,
            history_size: 100,
            history_ttl: Duration::from_secs(300),
            recovery_max: 100,
            max_subscribers: 0,
            slow_consumer: SlowConsumer::Close,
            max_publication_size: 16 * 1024,
            show_publisher: true,
            upstream: UpstreamMode::Off,
        }
    }
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Where a configuration value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigOrigin {
    /// The TOML file at this path.
    File(PathBuf),
    /// TOML text given to [`HubConfig::from_toml_str`] without a path.
    Text,
    /// This environment variable.
    Env(String),
    /// A `--set key=value` override.
    Set,
}

impl fmt::Display for ConfigOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigOrigin::File(p) => write!(f, "{}", p.display()),
            ConfigOrigin::Text => f.write_str("config"),
            ConfigOrigin::Env(var) => f.write_str(var),
            ConfigOrigin::Set => f.write_str("--set"),
        }
    }
}

/// A configuration that cannot be used: where the value came from, which key
/// it is, and why it was refused.
///
/// Displayed as `ORIGIN[ line N]: KEY: REASON`, for example:
///
/// ```text
/// wshub.toml line 4: limits.max_message_size: expected an integer, found a string
/// wshub.toml line 12: unknown key `limtis` (expected one of server, tls, …)
/// WSHUB_SERVER_LISTEN: invalid socket address "x" (write IP:PORT, …)
/// WSHUB_LIMITS_PING_INTERVAL: limits.pong_timeout: 10s must be less than limits.ping_interval (5s)
/// --set limits.pong_timeout: 30s must be less than limits.ping_interval (25s)
/// limits.max_message_size: is 12; must be from 125 to 67108864 (64 MiB)
/// ```
///
/// The key is left out when the origin is the key's own environment
/// variable and when the error concerns no single key (a TOML syntax error,
/// an unknown top-level key); without an origin, the line starts with the
/// key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", display_error(self))]
#[non_exhaustive]
pub struct ConfigError {
    /// Where the offending value came from; `None` when unknown (e.g.
    /// [`HubConfig::validate`] on a value built in code).
    pub origin: Option<ConfigOrigin>,
    /// 1-based line in the file, when the origin is TOML text.
    pub line: Option<usize>,
    /// Dotted key path such as `limits.max_message_size` (segments that are
    /// not bare TOML keys are quoted); empty when the error concerns no
    /// single key, and the enclosing table's path for an unknown key.
    pub key: String,
    /// What is wrong, e.g. `expected an integer, found a string`.
    pub reason: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            origin: None,
            line: None,
            key: key.into(),
            reason: reason.into(),
        }
    }

    fn at(mut self, origin: ConfigOrigin, line: Option<usize>) -> Self {
        self.origin = Some(origin);
        self.line = line;
        self
    }
}

fn display_error(e: &ConfigError) -> String {
    let mut out = String::new();
    let mut key = e.key.as_str();
    if let Some(origin) = &e.origin {
        out.push_str(&origin.to_string());
        if let Some(line) = e.line {
            out.push_str(&format!(" line {line}"));
        }
        match origin {
            ConfigOrigin::Env(var) if env_var_for_key(key).as_deref() == Some(var.as_str()) => {
                key = "";
            }
            // `--set limits.x: ...` reads like the command line.
            ConfigOrigin::Set if !key.is_empty() => {
                out.push(' ');
                out.push_str(key);
                key = "";
            }
            _ => {}
        }
        out.push_str(": ");
    }
    if !key.is_empty() {
        out.push_str(key);
        out.push_str(": ");
    }
    out.push_str(&e.reason);
    out
}

/// The environment variable of a `section.key` path, if it has one.
fn env_var_for_key(key: &str) -> Option<String> {
    let (section, field) = key.split_once('.')?;
    if !ENV_SECTIONS.contains(&section) || field.contains('.') {
        return None;
    }
    Some(format!("{ENV_PREFIX}{section}_{field}").to_uppercase())
}

// ---------------------------------------------------------------------------
// Public methods
// ---------------------------------------------------------------------------

impl HubConfig {
    /// Parses TOML text and validates the result.
    ///
    /// `origin` is the file the text came from; it only serves error messages
    /// (relative paths in the text are *not* resolved here, see
    /// [`AuthSection::to_auth_config`]).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] with the line of the offending key: TOML syntax,
    /// unknown keys, wrongly typed or malformed values, failed
    /// [`validate`](Self::validate) checks.
    pub fn from_toml_str(text: &str, origin: Option<&Path>) -> Result<HubConfig, ConfigError> {
        let origin = match origin {
            Some(p) => ConfigOrigin::File(p.to_owned()),
            None => ConfigOrigin::Text,
        };
        let mut layers = Layers::new()?;
        layers.add_toml(text, origin)?;
        layers.finish()
    }

    /// Builds the effective configuration: defaults, then the TOML file at
    /// `path` (if any), then the `WSHUB_*` variables among `env`, then the
    /// `--set key.path=value` strings in `overrides` (in order; later ones
    /// win). The result is validated.
    ///
    /// Environment variables are named `WSHUB_<SECTION>_<KEY>` in upper case
    /// for every key of the `server`, `tls`, `limits`, `auth`, `api` and
    /// `log` sections (`WSHUB_SERVER_LISTEN`, `WSHUB_AUTH_HMAC_SECRET`,
    /// `WSHUB_API_KEY`, …); namespaces are set only in the file or with
    /// `--set namespaces.NAME.KEY=VALUE`. A value is taken as the key's type:
    /// as is for a string key (so a numeric secret stays a string), parsed
    /// for numbers and booleans (`true`/`false`/`1`/`0`), split at commas for
    /// lists. Variables set to the empty string and `WSHUB_*` variables that
    /// name no key are ignored. `--set` values follow the same rules, except
    /// that an empty value is taken as given (an empty string or list).
    ///
    /// Pass `std::env::vars()` as `env` in the binary; tests pass their own.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the source of the offending value (the file
    /// and line, the variable, or `--set`) and its key.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[String],
    ) -> Result<HubConfig, ConfigError> {
        let mut layers = Layers::new()?;
        if let Some(path) = path {
            let origin = ConfigOrigin::File(path.to_owned());
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new("", format!("cannot read the file: {e}")).at(origin.clone(), None)
            })?;
            layers.add_toml(&text, origin)?;
        }
        layers.add_env(env)?;
        for arg in overrides {
            layers.add_override(arg)?;
        }
        layers.finish()
    }

    /// Checks the configuration as a whole: values in range, limits that
    /// must agree with each other, namespace names, origins, trusted proxies,
    /// secret lengths. Files (TLS, keys) are not read here.
    ///
    /// # Errors
    ///
    /// The first problem found, as a [`ConfigError`] naming the key (its
    /// origin is unknown here; [`load`](Self::load) and
    /// [`from_toml_str`](Self::from_toml_str) fill it in).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check()
            .map_err(|invalid| ConfigError::new(key_string(&invalid.key), invalid.reason))
    }

    /// The options of `channel`'s namespace: the part before the first `:`
    /// picks `namespaces[name]`; a name without `:` belongs to
    /// `default_namespace`. `None` when the namespace is not configured (the
    /// channel does not exist).
    pub fn namespace(&self, channel: &str) -> Option<&NamespaceConfig> {
        match channel.split_once(':') {
            Some((name, _)) => self.namespaces.get(name),
            None => Some(&self.default_namespace),
        }
    }

    /// The configuration as TOML (for `wshub config check --print`), with
    /// `auth.hmac_secret` and `api.key` replaced by [`REDACTED`]. Parsing the
    /// output gives the same configuration except for those secrets.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        if shown.auth.hmac_secret.is_some() {
            shown.auth.hmac_secret = Some(REDACTED.to_owned());
        }
        if shown.api.key.is_some() {
            shown.api.key = Some(REDACTED.to_owned());
        }
        toml::to_string(&shown).unwrap_or_else(|e| {
            // Not reachable with these types (every map key is a string and
            // every value has a TOML form); say so rather than print nothing.
            format!("# the configuration could not be written as TOML: {e}\n")
        })
    }
}

impl ServerConfig {
    /// The trusted proxy networks with [`proxy_header`](Self::proxy_header)
    /// applied, for [`crate::config::Builder`].
    ///
    /// # Errors
    ///
    /// `server.trusted_proxies` holds an entry that is not an IP address or
    /// CIDR.
    pub fn trusted_proxies(&self) -> Result<TrustedProxies, ConfigError> {
        TrustedProxies::parse(&self.trusted_proxies)
            .map(|t| t.with_header(self.proxy_header.into()))
            .map_err(|e| ConfigError::new("server.trusted_proxies", e.to_string()))
    }
}

impl AuthSection {
    /// Reads the configured key files and builds the verifier configuration,
    /// then checks it with [`AuthConfig::validate`].
    ///
    /// Relative paths are resolved against `base_dir`: pass the directory of
    /// the config file (`path.parent()`, an empty path for a file in the
    /// current directory), or the current directory when there is no file.
    /// The private-key files are not read (they are for `wshub token` only).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the key: a file cannot be read or holds no
    /// valid key, both `hmac_secret` and `hmac_secret_file` are set, the
    /// secret is too short, the leeway too large, or no key is configured
    /// while `allow_anonymous` is off.
    pub fn to_auth_config(&self, base_dir: &Path) -> Result<AuthConfig, ConfigError> {
        let read = |key: &str, path: &Path| -> Result<String, ConfigError> {
            let full = base_dir.join(path);
            std::fs::read_to_string(&full)
                .map_err(|e| ConfigError::new(key, format!("cannot read {}: {e}", full.display())))
        };
        let hmac_secret = match (&self.hmac_secret, &self.hmac_secret_file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    "auth.hmac_secret_file",
                    "set either auth.hmac_secret or auth.hmac_secret_file, not both",
                ))
            }
            (Some(secret), None) => Some(secret.clone()),
            (None, Some(path)) => {
                let text = read("auth.hmac_secret_file", path)?;
                Some(text.trim_end_matches(['\n', '\r']).to_owned())
            }
            (None, None) => None,
        };
        let rsa_public_key_pem = match &self.rsa_public_key_file {
            Some(p) => Some(read("auth.rsa_public_key_file", p)?),
            None => None,
        };
        let ec_public_key_pem = match &self.ec_public_key_file {
            Some(p) => Some(read("auth.ec_public_key_file", p)?),
            None => None,
        };
        let config = AuthConfig {
            hmac_secret,
            rsa_public_key_pem,
            ec_public_key_pem,
            audience: self.audience.clone(),
            issuer: self.issuer.clone(),
            leeway: self.leeway,
            allow_anonymous: self.allow_anonymous,
            require_exp: self.require_exp,
        };
        config.validate().map_err(|e| self.auth_error(e))?;
        Ok(config)
    }

    /// Maps an [`AuthError`] from [`AuthConfig::validate`] to the `[auth]`
    /// key it is about. Its messages start with the `AuthConfig` field name.
    fn auth_error(&self, e: AuthError) -> ConfigError {
        let msg = match e {
            AuthError::Config(msg) => msg,
            AuthError::NoKey => {
                return ConfigError::new(
                    "auth",
                    "no token verification key configured: set hmac_secret, \
                     hmac_secret_file, rsa_public_key_file or ec_public_key_file, \
                     or allow_anonymous = true",
                )
            }
            other => return ConfigError::new("auth", other.to_string()),
        };
        let hmac_key = if self.hmac_secret_file.is_some() {
            "auth.hmac_secret_file"
        } else {
            "auth.hmac_secret"
        };
        let fields = [
            ("hmac_secret", hmac_key),
            ("rsa_public_key_pem", "auth.rsa_public_key_file"),
            ("ec_public_key_pem", "auth.ec_public_key_file"),
            ("leeway", "auth.leeway"),
            ("audience", "auth.audience"),
            ("issuer", "auth.issuer"),
        ];
        for (field, key) in fields {
            if let Some(rest) = msg.strip_prefix(field).and_then(|r| r.strip_prefix(' ')) {
                let rest = rest.strip_prefix("is ").unwrap_or(rest);
                return ConfigError::new(key, rest.to_owned());
            }
        }
        ConfigError::new("auth", msg)
    }
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

/// A failed check: the key it is about, another key whose origin may explain
/// it (for checks between two keys), and the reason.
struct Invalid {
    key: Vec<String>,
    also: Option<Vec<String>>,
    reason: String,
}

fn path_of(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| (*s).to_owned()).collect()
}

fn invalid(key: &[&str], reason: impl Into<String>) -> Invalid {
    Invalid {
        key: path_of(key),
        also: None,
        reason: reason.into(),
    }
}

fn invalid2(key: &[&str], also: &[&str], reason: impl Into<String>) -> Invalid {
    Invalid {
        key: path_of(key),
        also: Some(path_of(also)),
        reason: reason.into(),
    }
}

fn fmt_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn nonzero_duration(key: &[&str], d: Duration) -> Result<(), Invalid> {
    if d.is_zero() {
        return Err(invalid(key, "must be longer than 0s"));
    }
    Ok(())
}

fn nonzero(key: &[&str], n: usize) -> Result<(), Invalid> {
    if n == 0 {
        return Err(invalid(key, "must be at least 1"));
    }
    Ok(())
}

fn rate(key: &[&str], burst_key: &[&str], rate: f64, burst: u32) -> Result<(), Invalid> {
    if !rate.is_finite() || rate < 0.0 {
        return Err(invalid(key, format!("must be a number >= 0, found {rate}")));
    }
    if rate > 0.0 && burst == 0 {
        return Err(invalid2(
            burst_key,
            key,
            format!(
                "must be at least 1 while {} is on",
                key_string(&path_of(key))
            ),
        ));
    }
    Ok(())
}

fn non_empty_opt(key: &[&str], v: Option<&str>) -> Result<(), Invalid> {
    match v {
        Some(s) if s.trim().is_empty() => Err(invalid(key, "is set but empty")),
        _ => Ok(()),
    }
}

fn non_empty_path(key: &[&str], p: Option<&Path>) -> Result<(), Invalid> {
    match p {
        Some(p) if p.as_os_str().is_empty() => Err(invalid(key, "is set but empty")),
        _ => Ok(()),
    }
}

impl HubConfig {
    fn check(&self) -> Result<(), Invalid> {
        self.check_server()?;
        if let Some(tls) = &self.tls {
            non_empty_path(&["tls", "cert"], Some(&tls.cert))?;
            non_empty_path(&["tls", "key"], Some(&tls.key))?;
        }
        self.check_limits()?;
        self.check_auth()?;
        if let Some(key) = &self.api.key {
            if key.len() < MIN_API_KEY_LEN {
                return Err(invalid(
                    &["api", "key"],
                    format!(
                        "is {} bytes; use at least {MIN_API_KEY_LEN} (random) bytes",
                        key.len()
                    ),
                ));
            }
        }
        if self.log.level.trim().is_empty() {
            return Err(invalid(
                &["log", "level"],
                "must not be empty (e.g. \"info\" or \"wshub=debug,info\")",
            ));
        }
        if self.demo.enabled {
            if !self.namespaces.contains_key(&self.demo.namespace) {
                return Err(invalid(
                    &["demo", "namespace"],
                    format!(
                        "namespace `{}` is not configured (add [namespaces.{}])",
                        self.demo.namespace, self.demo.namespace
                    ),
                ));
            }
            if self.demo.token_ttl.is_zero() {
                return Err(invalid(&["demo", "token_ttl"], "must be longer than 0s"));
            }
            if self.auth.hmac_secret.is_none() && self.auth.hmac_secret_file.is_none() {
                return Err(invalid(
                    &["demo", "enabled"],
                    "the demo signs its tokens with auth.hmac_secret (or hmac_secret_file); set one",
                ));
            }
        }
        if self.broker.engine == BrokerEngine::Redis {
            let url = self.broker.url.as_str();
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(invalid(
                    &["broker", "url"],
                    format!("{url:?} is not a redis:// or rediss:// URL"),
                ));
            }
            self.check_redis_mode()?;
        }
        if self.broker.prefix.is_empty()
            || !self
                .broker
                .prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b))
        {
            return Err(invalid(
                &["broker", "prefix"],
                "must be 1 or more of A-Z a-z 0-9 _ - . :",
            ));
        }
        self.check_queues()?;
        self.check_namespace(&["default_namespace"], &self.default_namespace)?;
        for (name, ns) in &self.namespaces {
            check_namespace_name(name)?;
            self.check_namespace(&["namespaces", name], ns)?;
        }
        Ok(())
    }

    /// `broker.mode` and the keys it needs (`nodes`, `sentinel_master`).
    fn check_redis_mode(&self) -> Result<(), Invalid> {
        let b = &self.broker;
        let what = match b.mode {
            RedisMode::Single => {
                if !b.nodes.is_empty() {
                    return Err(invalid(
                        &["broker", "nodes"],
                        "is used only with mode = \"cluster\" or \"sentinel\" (mode is \"single\": set broker.url)",
                    ));
                }
                None
            }
            RedisMode::Cluster => Some("cluster seed"),
            RedisMode::Sentinel => Some("sentinel"),
        };
        if b.mode != RedisMode::Sentinel && !b.sentinel_master.is_empty() {
            return Err(invalid(
                &["broker", "sentinel_master"],
                "is used only with mode = \"sentinel\"",
            ));
        }
        let Some(what) = what else { return Ok(()) };
        if b.nodes.is_empty() {
            return Err(invalid(
                &["broker", "nodes"],
                format!(
                    "mode = \"{}\" needs at least one {what} URL",
                    mode_name(b.mode)
                ),
            ));
        }
        if let Some(bad) = b
            .nodes
            .iter()
            .find(|u| !(u.starts_with("redis://") || u.starts_with("rediss://")))
        {
            return Err(invalid(
                &["broker", "nodes"],
                format!("{bad:?} is not a redis:// or rediss:// URL"),
            ));
        }
        if b.mode == RedisMode::Sentinel && b.sentinel_master.is_empty() {
            return Err(invalid(
                &["broker", "sentinel_master"],
                "mode = \"sentinel\" needs the name the sentinels monitor the master under",
            ));
        }
        Ok(())
    }

    fn check_server(&self) -> Result<(), Invalid> {
        let s = &self.server;
        let path = &s.ws_path;
        let path_ok = path.starts_with('/')
            && path.len() <= 1024
            && path
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#');
        if !path_ok {
            return Err(invalid(
                &["server", "ws_path"],
                format!(
                    "{path:?} is not a URL path: it must start with '/' and hold no \
                     spaces, '?' or '#'"
                ),
            ));
        }
        nonzero(&["server", "max_connections"], s.max_connections)?;
        nonzero_duration(&["server", "handshake_timeout"], s.handshake_timeout)?;
        nonzero(&["server", "drain_batch"], s.drain_batch)?;
        if let Err(e) = TrustedProxies::parse(&s.trusted_proxies) {
            return Err(invalid(&["server", "trusted_proxies"], e.to_string()));
        }
        for origin in &s.allowed_origins {
            check_origin(origin).map_err(|why| {
                invalid(
                    &["server", "allowed_origins"],
                    format!(
                        "invalid origin {origin:?}: {why} (write scheme://host[:port] \
                         such as https://app.example.com, or *)"
                    ),
                )
            })?;
        }
        Ok(())
    }

    fn check_limits(&self) -> Result<(), Invalid> {
        let l = &self.limits;
        let mms = ["limits", "max_message_size"];
        if !(MIN_MESSAGE_SIZE..=MAX_MESSAGE_SIZE).contains(&l.max_message_size) {
            return Err(invalid(
                &mms,
                format!(
                    "is {}; must be from {MIN_MESSAGE_SIZE} to {MAX_MESSAGE_SIZE} (64 MiB)",
                    l.max_message_size
                ),
            ));
        }
        nonzero_duration(&["limits", "pong_timeout"], l.pong_timeout)?;
        if !l.ping_interval.is_zero() && l.pong_timeout >= l.ping_interval {
            return Err(invalid2(
                &["limits", "pong_timeout"],
                &["limits", "ping_interval"],
                format!(
                    "{} must be less than limits.ping_interval ({})",
                    fmt_duration(l.pong_timeout),
                    fmt_duration(l.ping_interval)
                ),
            ));
        }
        nonzero_duration(&["limits", "close_timeout"], l.close_timeout)?;
        if l.max_queue_bytes < l.max_message_size {
            return Err(invalid2(
                &["limits", "max_queue_bytes"],
                &mms,
                format!(
                    "{} is less than limits.max_message_size ({}); the queue must hold \
                     at least one message",
                    l.max_queue_bytes, l.max_message_size
                ),
            ));
        }
        nonzero_duration(&["limits", "write_stall_timeout"], l.write_stall_timeout)?;
        nonzero_duration(&["limits", "connect_timeout"], l.connect_timeout)?;
        let pre = ["limits", "max_preauth_message_size"];
        if l.max_preauth_message_size < MIN_MESSAGE_SIZE {
            return Err(invalid(
                &pre,
                format!(
                    "is {}; must be at least {MIN_MESSAGE_SIZE}",
                    l.max_preauth_message_size
                ),
            ));
        }
        if l.max_preauth_message_size > l.max_message_size {
            return Err(invalid2(
                &pre,
                &mms,
                format!(
                    "{} is more than limits.max_message_size ({})",
                    l.max_preauth_message_size, l.max_message_size
                ),
            ));
        }
        nonzero(
            &["limits", "max_channels_per_connection"],
            l.max_channels_per_connection,
        )?;
        rate(
            &["limits", "command_rate"],
            &["limits", "command_burst"],
            l.command_rate,
            l.command_burst,
        )?;
        rate(
            &["limits", "handshake_rate_per_ip"],
            &["limits", "handshake_burst_per_ip"],
            l.handshake_rate_per_ip,
            l.handshake_burst_per_ip,
        )?;
        Ok(())
    }

    fn check_auth(&self) -> Result<(), Invalid> {
        let a = &self.auth;
        if a.hmac_secret.is_some() && a.hmac_secret_file.is_some() {
            return Err(invalid2(
                &["auth", "hmac_secret_file"],
                &["auth", "hmac_secret"],
                "set either auth.hmac_secret or auth.hmac_secret_file, not both",
            ));
        }
        if let Some(secret) = &a.hmac_secret {
            // The secret itself is never echoed.
            if secret.len() < MIN_HMAC_SECRET_LEN {
                return Err(invalid(
                    &["auth", "hmac_secret"],
                    format!(
                        "is {} bytes; use at least {MIN_HMAC_SECRET_LEN} random bytes",
                        secret.len()
                    ),
                ));
            }
        }
        non_empty_path(&["auth", "hmac_secret_file"], a.hmac_secret_file.as_deref())?;
        non_empty_path(
            &["auth", "rsa_public_key_file"],
            a.rsa_public_key_file.as_deref(),
        )?;
        non_empty_path(
            &["auth", "ec_public_key_file"],
            a.ec_public_key_file.as_deref(),
        )?;
        non_empty_path(
            &["auth", "rsa_private_key_file"],
            a.rsa_private_key_file.as_deref(),
        )?;
        non_empty_path(
            &["auth", "ec_private_key_file"],
            a.ec_private_key_file.as_deref(),
        )?;
        non_empty_opt(&["auth", "audience"], a.audience.as_deref())?;
        non_empty_opt(&["auth", "issuer"], a.issuer.as_deref())?;
        if a.leeway > MAX_LEEWAY {
            return Err(invalid(
                &["auth", "leeway"],
                format!(
                    "{} is more than the allowed {}",
                    fmt_duration(a.leeway),
                    fmt_duration(MAX_LEEWAY)
                ),
            ));
        }
        Ok(())
    }

    /// `[ingest]` and `[upstream]`: URLs that fit the engine, names a queue
    /// accepts, and bounds that make sense.
    fn check_queues(&self) -> Result<(), Invalid> {
        let bridges = [
            (
                "ingest",
                self.ingest.engine,
                &self.ingest.url,
                &self.ingest.stream,
            ),
            (
                "upstream",
                self.upstream.engine,
                &self.upstream.url,
                &self.upstream.stream,
            ),
        ];
        for (section, engine, url, stream) in bridges {
            let schemes: &[&str] = match engine {
                QueueEngine::Off => continue,
                QueueEngine::Redis => &["redis://", "rediss://"],
                QueueEngine::Nats => &["nats://", "tls://"],
            };
            if !url.is_empty() && !schemes.iter().any(|s| url.starts_with(s)) {
                return Err(invalid(
                    &[section, "url"],
                    format!("{url:?} does not start with {}", schemes.join(" or ")),
                ));
            }
            if !is_queue_name(stream, engine) {
                return Err(invalid(&[section, "stream"], queue_name_rule(engine)));
            }
        }
        if self.ingest.engine != QueueEngine::Off {
            let i = &self.ingest;
            if i.group.is_empty() || !is_queue_name(&i.group, QueueEngine::Nats) {
                return Err(invalid(
                    &["ingest", "group"],
                    queue_name_rule(QueueEngine::Nats),
                ));
            }
            if i.dead_letter.is_empty() || i.dead_letter == i.stream {
                return Err(invalid(
                    &["ingest", "dead_letter"],
                    "must be set and differ from ingest.stream",
                ));
            }
            if i.max_deliveries == 0 {
                return Err(invalid(&["ingest", "max_deliveries"], "must be at least 1"));
            }
            if i.claim_idle < Duration::from_secs(1) {
                return Err(invalid(&["ingest", "claim_idle"], "must be at least 1s"));
            }
            if !(1..=10_000).contains(&i.batch) {
                return Err(invalid(&["ingest", "batch"], "must be 1 to 10000"));
            }
            if i.engine == QueueEngine::Nats && i.subject.is_empty() {
                return Err(invalid(
                    &["ingest", "subject"],
                    "must be set for engine nats",
                ));
            }
        }
        if self.upstream.engine != QueueEngine::Off {
            if self.upstream.timeout.is_zero() {
                return Err(invalid(&["upstream", "timeout"], "must be longer than 0s"));
            }
            if self.upstream.engine == QueueEngine::Nats && self.upstream.subject.is_empty() {
                return Err(invalid(
                    &["upstream", "subject"],
                    "must be set for engine nats",
                ));
            }
        }
        Ok(())
    }

    fn check_namespace(&self, prefix: &[&str], ns: &NamespaceConfig) -> Result<(), Invalid> {
        let key = |k: &str| -> KeyPath {
            let mut v = path_of(prefix);
            v.push(k.to_owned());
            v
        };
        let fail = |k: &str, also: Option<&str>, reason: String| Invalid {
            key: key(k),
            also: also.map(key),
            reason,
        };
        if ns.history_size > 0 && ns.history_ttl.is_zero() {
            return Err(fail(
                "history_ttl",
                Some("history_size"),
                "must be longer than 0s when history_size is above 0".to_owned(),
            ));
        }
        if ns.upstream != UpstreamMode::Off && self.upstream.engine == QueueEngine::Off {
            return Err(Invalid {
                key: key("upstream"),
                also: Some(path_of(&["upstream", "engine"])),
                reason: "needs an [upstream] stream: set upstream.engine to redis or nats"
                    .to_owned(),
            });
        }
        if ns.max_publication_size == 0 {
            return Err(fail(
                "max_publication_size",
                None,
                "must be at least 1".to_owned(),
            ));
        }
        if ns.max_publication_size > self.limits.max_message_size {
            return Err(Invalid {
                key: key("max_publication_size"),
                also: Some(path_of(&["limits", "max_message_size"])),
                reason: format!(
                    "{} is more than limits.max_message_size ({})",
                    ns.max_publication_size, self.limits.max_message_size
                ),
            });
        }
        Ok(())
    }
}

/// Whether `name` is usable as a stream (and, for NATS, consumer) name: NATS
/// names exclude whitespace, `.`, `*`, `>` and path separators; Redis keys
/// only need to be non-empty (and printable, to keep logs readable).
fn is_queue_name(name: &str, engine: QueueEngine) -> bool {
    let printable = (1..=256).contains(&name.len()) && name.chars().all(|c| !c.is_control());
    match engine {
        QueueEngine::Nats => {
            printable
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
        }
        _ => printable,
    }
}

fn queue_name_rule(engine: QueueEngine) -> &'static str {
    match engine {
        QueueEngine::Nats => "use 1 to 256 characters from A-Z a-z 0-9 _ -",
        _ => "use 1 to 256 printable characters",
    }
}

fn check_namespace_name(name: &str) -> Result<(), Invalid> {
    let ok = (1..=MAX_NAMESPACE_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        return Ok(());
    }
    Err(invalid(
        &["namespaces", name],
        format!(
            "invalid namespace name {name:?}: use 1 to {MAX_NAMESPACE_LEN} characters \
             from A-Z a-z 0-9 _ - ."
        ),
    ))
}

/// Checks that `origin` is `*` or a serialized origin as browsers send it:
/// `scheme://host[:port]`, lowercase, without path, user or trailing slash.
fn check_origin(origin: &str) -> Result<(), &'static str> {
    if origin == "*" {
        return Ok(());
    }
    let (scheme, rest) = origin.split_once("://").ok_or("no scheme")?;
    let scheme_ok = scheme
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase())
        && scheme.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.')
        });
    if !scheme_ok {
        return Err("the scheme must be lowercase letters such as https");
    }
    if rest.bytes().any(|b| matches!(b, b'/' | b'?' | b'#' | b'@')) {
        return Err("an origin has no path, query, user or trailing slash");
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (addr, after) = v6.split_once(']').ok_or("unclosed '['")?;
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err("invalid IPv6 address");
        }
        match after {
            "" => (addr, None),
            _ => (addr, Some(after.strip_prefix(':').ok_or("junk after ']'")?)),
        }
    } else {
        match rest.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if host.is_empty() {
        return Err("no host");
    }
    if !rest.starts_with('[')
        && !host
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.'))
    {
        return Err(
            "the host must be lowercase letters, digits, '-' and '.' (browsers send it lowercase)",
        );
    }
    if let Some(port) = port {
        let valid = !port.is_empty()
            && port.len() <= 5
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u16>().is_ok_and(|p| p > 0);
        if !valid {
            return Err("the port must be a number from 1 to 65535");
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Key paths
// ---------------------------------------------------------------------------

/// Whether `s` can be written as a bare TOML key.
fn is_bare_key(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A key path as written in TOML: `a.b.c`, quoting segments that are not
/// bare keys (`namespaces."a.b".history_size`).
fn key_string(path: &[String]) -> String {
    let parts: Vec<String> = path
        .iter()
        .map(|s| {
            if is_bare_key(s) {
                s.clone()
            } else {
                format!("{s:?}")
            }
        })
        .collect();
    parts.join(".")
}

// ---------------------------------------------------------------------------
// Layers: file, environment, --set
// ---------------------------------------------------------------------------

type KeyPath = Vec<String>;

/// Where a key's current value came from.
#[derive(Clone)]
struct Source {
    origin: ConfigOrigin,
    line: Option<usize>,
}

/// The configuration being assembled from its layers.
struct Layers {
    /// A sample configuration with every optional field set, as TOML: the
    /// keys that exist and their types.
    schema: Table,
    /// The values given so far (defaults are filled in by serde at the end).
    merged: Table,
    /// Which layer set each key (and, for files, each table).
    sources: BTreeMap<KeyPath, Source>,
}

/// The sample behind [`Layers::schema`]: the defaults plus a value for every
/// optional field and one namespace called `NAME`.
fn schema_sample() -> HubConfig {
    let mut c = HubConfig {
        tls: Some(TlsConfig {
            cert: PathBuf::from("cert.pem"),
            key: PathBuf::from("key.pem"),
            reload_interval: default_tls_reload(),
        }),
        ..HubConfig::default()
    };
    c.auth.hmac_secret = Some("s".repeat(MIN_HMAC_SECRET_LEN));
    c.auth.hmac_secret_file = Some(PathBuf::from("hmac.secret"));
    c.auth.rsa_public_key_file = Some(PathBuf::from("rsa-public.pem"));
    c.auth.ec_public_key_file = Some(PathBuf::from("ec-public.pem"));
    c.auth.rsa_private_key_file = Some(PathBuf::from("rsa-private.pem"));
    c.auth.ec_private_key_file = Some(PathBuf::from("ec-private.pem"));
    c.auth.audience = Some("audience".to_owned());
    c.auth.issuer = Some("issuer".to_owned());
    c.api.key = Some("k".repeat(MIN_API_KEY_LEN));
    c.namespaces
        .insert("NAME".to_owned(), NamespaceConfig::default());
    c
}

fn to_table(config: &HubConfig) -> Result<Table, ConfigError> {
    Table::try_from(config).map_err(|e| {
        ConfigError::new(
            "",
            format!("internal error: cannot serialize defaults: {e}"),
        )
    })
}

/// What a key's value must look like, for messages.
fn describe_expected(sample: &Value) -> &'static str {
    match sample {
        Value::String(s) if humantime::parse_duration(s).is_ok() => {
            "a duration string such as \"10s\""
        }
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a number",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "a list of strings",
        Value::Table(_) => "a table",
    }
}

fn describe_found(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

/// The schema of the table at `path` (namespaces share one schema).
fn schema_at<'a>(schema: &'a Table, path: &[String]) -> Option<&'a Value> {
    let mut cur: Option<&Value> = None;
    let mut table = schema;
    for (i, seg) in path.iter().enumerate() {
        let seg = if i == 1 && path[0] == "namespaces" {
            "NAME"
        } else {
            seg.as_str()
        };
        let v = table.get(seg)?;
        cur = Some(v);
        if let Value::Table(t) = v {
            table = t;
        } else if i + 1 < path.len() {
            return None;
        }
    }
    cur
}

fn expected_keys(schema: &Table) -> String {
    schema
        .keys()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A shape error found by [`check_types`].
struct ShapeError {
    /// The key the error names (for an unknown key, its table).
    key: KeyPath,
    /// The key whose line the error points at (for an unknown key, itself).
    at: KeyPath,
    reason: String,
}

impl ShapeError {
    fn at(path: &KeyPath, reason: String) -> Self {
        ShapeError {
            key: path.clone(),
            at: path.clone(),
            reason,
        }
    }
}

/// Checks the shape of `table`: its keys exist and its values have the
/// schema's TOML types.
fn check_types(table: &Table, schema: &Table, path: &mut KeyPath) -> Result<(), ShapeError> {
    for (k, v) in table {
        let sample = if path.len() == 1 && path[0] == "namespaces" {
            // Any name is allowed here (checked by `validate`); its value is
            // a namespace.
            schema.get("NAME")
        } else {
            schema.get(k)
        };
        let table_path = path.clone();
        path.push(k.clone());
        let Some(sample) = sample else {
            return Err(ShapeError {
                key: table_path,
                at: path.clone(),
                reason: format!(
                    "unknown key `{k}` (expected one of {})",
                    expected_keys(schema)
                ),
            });
        };
        check_value(v, sample, path)?;
        path.pop();
    }
    Ok(())
}

fn check_value(v: &Value, sample: &Value, path: &mut KeyPath) -> Result<(), ShapeError> {
    match (sample, v) {
        (Value::Table(s), Value::Table(t)) => check_types(t, s, path),
        (Value::Integer(_), Value::Integer(i)) if *i < 0 => Err(ShapeError::at(
            path,
            format!("expected a non-negative integer, found {i}"),
        )),
        (Value::Array(_), Value::Array(items)) => {
            match items.iter().find(|i| !matches!(i, Value::String(_))) {
                Some(bad) => Err(ShapeError::at(
                    path,
                    format!(
                        "expected a list of strings, found a list holding {}",
                        describe_found(bad)
                    ),
                )),
                None => Ok(()),
            }
        }
        (Value::Integer(_), Value::Integer(_))
        | (Value::Float(_), Value::Float(_) | Value::Integer(_))
        | (Value::String(_), Value::String(_))
        | (Value::Boolean(_), Value::Boolean(_)) => Ok(()),
        _ => Err(ShapeError::at(
            path,
            format!(
                "expected {}, found {}",
                describe_expected(sample),
                describe_found(v)
            ),
        )),
    }
}

/// Every leaf (non-table value) of `table`, with its path.
fn leaves(table: &Table, path: &mut KeyPath, out: &mut Vec<(KeyPath, Value)>) {
    for (k, v) in table {
        path.push(k.clone());
        match v {
            Value::Table(t) => leaves(t, path, out),
            other => out.push((path.clone(), other.clone())),
        }
        path.pop();
    }
}

/// Sets `value` at `path`, creating tables on the way.
fn insert_at(table: &mut Table, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = table;
    for seg in parents {
        let entry = cur
            .entry(seg.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        if !entry.is_table() {
            *entry = Value::Table(Table::new());
        }
        match entry {
            Value::Table(t) => cur = t,
            _ => return,
        }
    }
    cur.insert(last.clone(), value);
}

/// Merges `layer` into `base`: tables merge key by key, other values replace.
fn merge(base: &mut Table, layer: Table) {
    for (k, v) in layer {
        match (base.get_mut(&k), v) {
            (Some(Value::Table(b)), Value::Table(l)) => merge(b, l),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Serde's wording for a few types, made readable.
fn tidy_reason(msg: &str) -> String {
    let msg = msg.trim();
    msg.replace("expected u32", "expected an integer from 0 to 4294967295")
        .replace("expected usize", "expected a non-negative integer")
        .replace("unknown variant", "unknown value")
}

/// 1-based line number of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The line of every key (and table header) in a TOML document.
fn key_lines(text: &str) -> BTreeMap<KeyPath, usize> {
    fn walk(
        text: &str,
        table: &toml::de::DeTable<'_>,
        path: &mut KeyPath,
        out: &mut BTreeMap<KeyPath, usize>,
    ) {
        for (k, v) in table.iter() {
            path.push(k.get_ref().to_string());
            out.entry(path.clone())
                .or_insert_with(|| line_of(text, k.span().start));
            if let toml::de::DeValue::Table(t) = v.get_ref() {
                walk(text, t, path, out);
            }
            path.pop();
        }
    }
    let mut out = BTreeMap::new();
    if let Ok(doc) = toml::de::DeTable::parse(text) {
        walk(text, doc.get_ref(), &mut Vec::new(), &mut out);
    }
    out
}

impl Layers {
    fn new() -> Result<Self, ConfigError> {
        Ok(Layers {
            schema: to_table(&schema_sample())?,
            merged: Table::new(),
            sources: BTreeMap::new(),
        })
    }

    /// Tries `value` at `path` on its own: put into the (valid) sample, does
    /// the configuration still deserialize? Catches malformed durations,
    /// addresses, enum names and out-of-range numbers, for one key.
    fn probe(&self, path: &[String], value: &Value) -> Result<(), String> {
        let mut path = path.to_vec();
        if path.len() == 3 && path[0] == "namespaces" {
            path[1] = "NAME".to_owned();
        }
        let mut sample = self.schema.clone();
        insert_at(&mut sample, &path, value.clone());
        sample
            .try_into::<HubConfig>()
            .map(drop)
            .map_err(|e| tidy_reason(e.message()))
    }

    fn add_toml(&mut self, text: &str, origin: ConfigOrigin) -> Result<(), ConfigError> {
        let table: Table = text.parse().map_err(|e: toml::de::Error| {
            let line = e.span().map(|s| line_of(text, s.start));
            ConfigError::new("", tidy_reason(e.message())).at(origin.clone(), line)
        })?;
        let lines = key_lines(text);
        let fail = |path: &KeyPath, reason: String| {
            let line = lines.get(path).copied();
            ConfigError::new(key_string(path), reason).at(origin.clone(), line)
        };
        if let Err(e) = check_types(&table, &self.schema, &mut Vec::new()) {
            let mut err = fail(&e.key, e.reason);
            err.line = lines.get(&e.at).copied();
            return Err(err);
        }
        let mut all = Vec::new();
        leaves(&table, &mut Vec::new(), &mut all);
        for (path, value) in &all {
            if let Err(reason) = self.probe(path, value) {
                return Err(fail(path, reason));
            }
        }
        merge(&mut self.merged, table);
        for (path, line) in lines {
            self.sources.insert(
                path,
                Source {
                    origin: origin.clone(),
                    line: Some(line),
                },
            );
        }
        Ok(())
    }

    /// The environment variables that map to keys, with their key paths.
    fn env_keys(&self) -> BTreeMap<String, KeyPath> {
        let mut out = BTreeMap::new();
        for section in ENV_SECTIONS {
            let Some(Value::Table(t)) = self.schema.get(section) else {
                continue;
            };
            for (key, v) in t {
                if !v.is_table() {
                    let var = format!("{ENV_PREFIX}{section}_{key}").to_uppercase();
                    out.insert(var, path_of(&[section, key]));
                }
            }
        }
        out
    }

    fn add_env(
        &mut self,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        let keys = self.env_keys();
        // Sorted, so that the first error reported does not depend on the
        // order the environment happens to be in.
        let mut vars: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, v)| !v.is_empty() && keys.contains_key(k))
            .collect();
        vars.sort();
        for (var, raw) in vars {
            let Some(path) = keys.get(&var) else { continue };
            let origin = ConfigOrigin::Env(var.clone());
            self.set_raw(path, &raw, origin)?;
        }
        Ok(())
    }

    fn add_override(&mut self, arg: &str) -> Result<(), ConfigError> {
        let fail =
            |key: &str, reason: String| ConfigError::new(key, reason).at(ConfigOrigin::Set, None);
        let Some((key, raw)) = arg.split_once('=') else {
            return Err(fail("", format!("expected key.path=value, found {arg:?}")));
        };
        let key = key.trim();
        let segs: Vec<&str> = key.split('.').collect();
        let path: KeyPath = if segs[0] == "namespaces" {
            match segs.len() {
                0..=2 => {
                    return Err(fail(
                        key,
                        "is a table; set one of its keys, e.g. namespaces.NAME.history_size=10"
                            .to_owned(),
                    ))
                }
                n => vec![
                    "namespaces".to_owned(),
                    segs[1..n - 1].join("."),
                    segs[n - 1].to_owned(),
                ],
            }
        } else {
            segs.iter().map(|s| (*s).to_owned()).collect()
        };
        // Check the path against the schema, one level at a time, for a
        // precise message.
        let mut table = &self.schema;
        for (i, seg) in path.iter().enumerate() {
            let lookup = if i == 1 && path[0] == "namespaces" {
                "NAME"
            } else {
                seg.as_str()
            };
            let parent = key_string(&path[..i]);
            match table.get(lookup) {
                None => {
                    let reason = format!(
                        "unknown key `{seg}` (expected one of {})",
                        expected_keys(table)
                    );
                    return Err(fail(if parent.is_empty() { key } else { &parent }, reason));
                }
                Some(Value::Table(t)) => {
                    if i + 1 == path.len() {
                        return Err(fail(
                            key,
                            "is a table; set one of its keys (section.key=value)".to_owned(),
                        ));
                    }
                    table = t;
                }
                Some(_) if i + 1 < path.len() => {
                    return Err(fail(
                        key,
                        format!("`{}` is not a table", key_string(&path[..=i])),
                    ))
                }
                Some(_) => {}
            }
        }
        self.set_raw(&path, raw, ConfigOrigin::Set)
    }

    /// Converts a raw string (environment or `--set`) to the key's type,
    /// tries it, and merges it.
    fn set_raw(
        &mut self,
        path: &[String],
        raw: &str,
        origin: ConfigOrigin,
    ) -> Result<(), ConfigError> {
        let key = key_string(path);
        let fail = |reason: String| ConfigError::new(key.clone(), reason).at(origin.clone(), None);
        let sample = schema_at(&self.schema, path).ok_or_else(|| fail("unknown key".to_owned()))?;
        let value = match sample {
            Value::String(_) => Value::String(raw.to_owned()),
            Value::Integer(_) => {
                let t = raw.trim();
                match t.parse::<u64>().ok().and_then(|n| i64::try_from(n).ok()) {
                    Some(n) => Value::Integer(n),
                    None => {
                        return Err(fail(format!(
                            "expected a non-negative integer, found {raw:?}"
                        )))
                    }
                }
            }
            Value::Float(_) => match raw.trim().parse::<f64>() {
                Ok(f) => Value::Float(f),
                Err(_) => return Err(fail(format!("expected a number, found {raw:?}"))),
            },
            Value::Boolean(_) => match raw.trim().to_ascii_lowercase().as_str() {
                "true" | "1" => Value::Boolean(true),
                "false" | "0" => Value::Boolean(false),
                _ => {
                    return Err(fail(format!(
                        "expected a boolean (true or false), found {raw:?}"
                    )))
                }
            },
            Value::Array(_) => Value::Array(
                raw.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| Value::String(s.to_owned()))
                    .collect(),
            ),
            Value::Datetime(_) | Value::Table(_) => {
                return Err(fail("cannot be set from a string".to_owned()))
            }
        };
        self.probe(path, &value).map_err(fail)?;
        insert_at(&mut self.merged, path, value);
        self.sources
            .insert(path.to_vec(), Source { origin, line: None });
        Ok(())
    }

    /// Where the value at `path` (or, failing that, anything under it) came
    /// from.
    fn source_of(&self, path: &[String]) -> Option<&Source> {
        self.sources.get(path).or_else(|| {
            self.sources
                .iter()
                .find(|(k, _)| k.starts_with(path))
                .map(|(_, s)| s)
        })
    }

    fn locate(&self, err: ConfigError, paths: &[&[String]]) -> ConfigError {
        match paths.iter().find_map(|p| self.source_of(p)) {
            Some(src) => err.at(src.origin.clone(), src.line),
            None => err,
        }
    }

    fn finish(self) -> Result<HubConfig, ConfigError> {
        // The one value with no default: [tls] needs both files.
        if let Some(Value::Table(tls)) = self.merged.get("tls") {
            for required in ["cert", "key"] {
                if !tls.contains_key(required) {
                    let err = ConfigError::new(
                        format!("tls.{required}"),
                        "missing: TLS needs both tls.cert and tls.key",
                    );
                    return Err(self.locate(err, &[&path_of(&["tls"])]));
                }
            }
        }
        let config: HubConfig = self
            .merged
            .clone()
            .try_into()
            .map_err(|e| ConfigError::new("", tidy_reason(e.message())))?;
        if let Err(inv) = config.check() {
            let err = ConfigError::new(key_string(&inv.key), inv.reason);
            let mut paths: Vec<&[String]> = vec![&inv.key];
            if let Some(also) = &inv.also {
                paths.push(also);
            }
            return Err(self.locate(err, &paths));
        }
        Ok(config)
    }
}

// ---------------------------------------------------------------------------
// Serde helpers
// ---------------------------------------------------------------------------

/// `Duration` as a human-readable string: `"10s"`, `"250ms"`, `"1m 30s"`.
mod duration_str {
    use std::fmt;
    use std::time::Duration;

    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"10s\", \"250ms\", \"5m\" or \"1h\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                humantime::parse_duration(v.trim()).map_err(|e| {
                    E::custom(format!(
                        "invalid duration {v:?} ({e}); write e.g. \"10s\", \"250ms\", \"5m\" or \"1h\""
                    ))
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// `SocketAddr` as a string, with a message that shows the bad value.
mod socket_addr {
    use std::fmt;
    use std::net::SocketAddr;

    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(a: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(a)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = SocketAddr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a socket address such as \"127.0.0.1:8080\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SocketAddr, E> {
                v.trim().parse().map_err(|_| {
                    E::custom(format!(
                        "invalid socket address {v:?} (write IP:PORT, e.g. 0.0.0.0:8080 or [::]:8080)"
                    ))
                })
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::{AtomicUsize, Ordering};

    fn parse(text: &str) -> Result<HubConfig, ConfigError> {
        HubConfig::from_toml_str(text, Some(Path::new("wshub.toml")))
    }

    fn parse_err(text: &str) -> String {
        match parse(text) {
            Ok(_) => panic!("{text:?} was accepted"),
            Err(e) => e.to_string(),
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn sets(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| (*s).to_owned()).collect()
    }

    fn load_err(path: Option<&Path>, vars: &[(&str, &str)], overrides: &[&str]) -> ConfigError {
        match HubConfig::load(path, env(vars), &sets(overrides)) {
            Ok(_) => panic!("accepted: {vars:?} {overrides:?}"),
            Err(e) => e,
        }
    }

    /// A scratch directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "wshub-config-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn write(&self, name: &str, text: &str) -> PathBuf {
            let p = self.0.join(name);
            std::fs::write(&p, text).unwrap();
            p
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    // -- defaults -----------------------------------------------------------

    #[test]
    fn defaults() {
        let c = HubConfig::default();
        assert_eq!(c.server.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.server.ws_path, "/ws");
        assert_eq!(c.server.max_connections, 100_000);
        assert_eq!(c.server.handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.server.drain_timeout, Duration::from_secs(10));
        assert_eq!(c.server.drain_batch, 1000);
        assert_eq!(c.server.drain_jitter, Duration::from_millis(100));
        assert!(c.server.trusted_proxies.is_empty());
        assert_eq!(c.server.proxy_header, ProxyHeaderSetting::XForwardedFor);
        assert!(c.server.allowed_origins.is_empty());
        assert!(c.server.deflate);
        assert_eq!(c.tls, None);
        assert_eq!(c.limits.max_message_size, 65536);
        assert_eq!(c.limits.ping_interval, Duration::from_secs(25));
        assert_eq!(c.limits.pong_timeout, Duration::from_secs(10));
        assert_eq!(c.limits.close_timeout, Duration::from_secs(5));
        assert_eq!(c.limits.max_queue_bytes, 1 << 20);
        assert_eq!(c.limits.write_stall_timeout, Duration::from_secs(5));
        assert_eq!(c.limits.connect_timeout, Duration::from_secs(10));
        assert_eq!(c.limits.max_preauth_message_size, 20480);
        assert_eq!(c.limits.max_channels_per_connection, 128);
        assert_eq!(c.limits.command_rate, 100.0);
        assert_eq!(c.limits.command_burst, 200);
        assert_eq!(c.limits.command_rate_strikes, 10);
        assert_eq!(c.limits.max_connections_per_ip, 1000);
        assert_eq!(c.limits.handshake_rate_per_ip, 20.0);
        assert_eq!(c.limits.handshake_burst_per_ip, 50);
        assert_eq!(c.auth.hmac_secret, None);
        assert_eq!(c.auth.leeway, Duration::from_secs(30));
        assert!(!c.auth.allow_anonymous);
        assert_eq!(c.api.key, None);
        assert_eq!(c.log.format, LogFormat::Text);
        assert_eq!(c.log.level, "info");
        let ns = &c.default_namespace;
        assert_eq!(ns.subscribe, Access::Users);
        assert_eq!(ns.publish, Access::Users);
        assert!(ns.presence);
        assert!(!ns.join_leave);
        assert_eq!(ns.history_size, 100);
        assert_eq!(ns.history_ttl, Duration::from_secs(300));
        assert_eq!(ns.recovery_max, 100);
        assert_eq!(ns.max_subscribers, 0);
        assert_eq!(ns.slow_consumer, SlowConsumer::Close);
        assert_eq!(ns.max_publication_size, 16384);
        assert!(ns.show_publisher);
        assert!(c.namespaces.is_empty());
        c.validate().unwrap();
    }

    #[test]
    fn auth_defaults_match_the_library() {
        let lib = AuthConfig::default();
        let ours = AuthSection::default();
        assert_eq!(ours.leeway, lib.leeway);
        assert_eq!(ours.allow_anonymous, lib.allow_anonymous);
        assert_eq!(ours.require_exp, lib.require_exp);
        assert!(ours.require_exp);
    }

    #[test]
    fn empty_text_and_empty_sections_are_the_defaults() {
        assert_eq!(parse("").unwrap(), HubConfig::default());
        let text = "[server]\n[limits]\n[auth]\n[api]\n[log]\n[default_namespace]\n";
        assert_eq!(parse(text).unwrap(), HubConfig::default());
        assert_eq!(
            HubConfig::load(None, Vec::new(), &[]).unwrap(),
            HubConfig::default()
        );
    }

    #[test]
    fn enum_conversions() {
        assert_eq!(
            ProxyHeader::from(ProxyHeaderSetting::Auto),
            ProxyHeader::Auto
        );
        assert_eq!(
            ProxyHeader::from(ProxyHeaderSetting::Forwarded),
            ProxyHeader::Forwarded
        );
        assert_eq!(
            ProxyHeader::from(ProxyHeaderSetting::XForwardedFor),
            ProxyHeader::XForwardedFor
        );
        assert_eq!(
            SlowConsumerPolicy::from(SlowConsumer::DropOldest),
            SlowConsumerPolicy::DropOldest
        );
        assert_eq!(
            SlowConsumerPolicy::from(SlowConsumer::Close),
            SlowConsumerPolicy::Close
        );
    }

    // -- parsing ------------------------------------------------------------

    #[test]
    fn parses_every_kind_of_value() {
        let c = parse(
            r#"
            [server]
            listen = "[::]:9000"
            trusted_proxies = ["10.0.0.0/8", "fd00::/8"]
            proxy_header = "forwarded"
            allowed_origins = ["https://app.example.com", "http://localhost:3000"]
            deflate = false
            drain_jitter = "1m 30s"

            [tls]
            cert = "cert.pem"
            key = "key.pem"

            [limits]
            ping_interval = "0s"
            command_rate = 5
            handshake_rate_per_ip = 2.5

            [log]
            format = "json"

            [namespaces.chat]
            subscribe = "grant"
            publish = "none"
            slow_consumer = "drop-oldest"
            history_ttl = "250ms"
            "#,
        )
        .unwrap();
        assert_eq!(c.server.listen, "[::]:9000".parse().unwrap());
        assert_eq!(c.server.trusted_proxies, ["10.0.0.0/8", "fd00::/8"]);
        assert_eq!(c.server.proxy_header, ProxyHeaderSetting::Forwarded);
        assert_eq!(c.server.allowed_origins.len(), 2);
        assert!(!c.server.deflate);
        assert_eq!(c.server.drain_jitter, Duration::from_secs(90));
        let tls = c.tls.as_ref().unwrap();
        assert_eq!(tls.cert, Path::new("cert.pem"));
        assert_eq!(tls.reload_interval, Duration::from_secs(10));
        assert_eq!(c.limits.ping_interval, Duration::ZERO);
        assert_eq!(c.limits.command_rate, 5.0);
        assert_eq!(c.limits.handshake_rate_per_ip, 2.5);
        assert_eq!(c.log.format, LogFormat::Json);
        let chat = &c.namespaces["chat"];
        assert_eq!(chat.subscribe, Access::Grant);
        assert_eq!(chat.publish, Access::None);
        assert_eq!(chat.slow_consumer, SlowConsumer::DropOldest);
        assert_eq!(chat.history_ttl, Duration::from_millis(250));
        // Unset keys of a namespace take the namespace defaults.
        assert_eq!(chat.history_size, 100);
        assert!(chat.presence);
    }

    #[test]
    fn to_toml_round_trips_and_redacts_secrets() {
        let mut c = parse(
            r#"
            [server]
            drain_jitter = "1m 30s"
            [limits]
            ping_interval = "0s"
            [tls]
            cert = "c.pem"
            key = "k.pem"
            reload_interval = "1h"
            [namespaces.chat]
            join_leave = true
            [namespaces."a.b"]
            history_size = 0
            "#,
        )
        .unwrap();
        let text = c.to_toml();
        assert!(text.contains("drain_jitter = \"1m 30s\""), "{text}");
        assert!(text.contains("ping_interval = \"0s\""), "{text}");
        assert!(text.contains("history_ttl = \"5m\""), "{text}");
        assert_eq!(parse(&text).unwrap(), c);

        c.auth.hmac_secret = Some(SECRET.to_owned());
        c.api.key = Some("an-api-key-of-some-length".to_owned());
        let text = c.to_toml();
        assert!(!text.contains(SECRET), "{text}");
        assert!(!text.contains("an-api-key"), "{text}");
        assert!(text.contains("hmac_secret = \"<redacted>\""), "{text}");
        assert!(text.contains("key = \"<redacted>\""), "{text}");
    }

    #[test]
    fn debug_hides_secrets() {
        let mut c = HubConfig::default();
        c.auth.hmac_secret = Some(SECRET.to_owned());
        c.api.key = Some("an-api-key-of-some-length".to_owned());
        let dbg = format!("{c:?}");
        assert!(!dbg.contains(SECRET), "{dbg}");
        assert!(!dbg.contains("an-api-key"), "{dbg}");
        assert!(dbg.contains(REDACTED));
    }

    // -- parse errors -------------------------------------------------------

    #[test]
    fn wrong_type_names_the_key_and_line() {
        assert_eq!(
            parse_err("[limits]\nmax_message_size = \"big\""),
            "wshub.toml line 2: limits.max_message_size: expected an integer, found a string"
        );
        assert_eq!(
            parse_err("[server]\n\n deflate = \"yes\""),
            "wshub.toml line 3: server.deflate: expected a boolean, found a string"
        );
        assert_eq!(
            parse_err("[limits]\nping_interval = 25"),
            "wshub.toml line 2: limits.ping_interval: expected a duration string such as \"10s\", found an integer"
        );
        assert_eq!(
            parse_err("[server]\ntrusted_proxies = \"10.0.0.0/8\""),
            "wshub.toml line 2: server.trusted_proxies: expected a list of strings, found a string"
        );
        assert_eq!(
            parse_err("[server]\ntrusted_proxies = [1]"),
            "wshub.toml line 2: server.trusted_proxies: expected a list of strings, found a list holding an integer"
        );
        assert_eq!(
            parse_err("[limits]\nmax_queue_bytes = -1"),
            "wshub.toml line 2: limits.max_queue_bytes: expected a non-negative integer, found -1"
        );
        assert_eq!(
            parse_err("limits = 3"),
            "wshub.toml line 1: limits: expected a table, found an integer"
        );
        assert_eq!(
            parse_err("[namespaces]\nchat = 1"),
            "wshub.toml line 2: namespaces.chat: expected a table, found an integer"
        );
    }

    #[test]
    fn unknown_keys_name_the_table_the_line_and_the_choices() {
        assert_eq!(
            parse_err("# comment\n\nlimtis = 1"),
            "wshub.toml line 3: unknown key `limtis` (expected one of server, tls, limits, \
             auth, api, log, demo, broker, ingest, upstream, default_namespace, namespaces)"
        );
        let e = parse("[limits]\nmax_message_size = 1000\nmax_mesage_size = 1").unwrap_err();
        assert_eq!(e.line, Some(3));
        assert_eq!(e.key, "limits");
        assert!(
            e.reason.starts_with(
                "unknown key `max_mesage_size` (expected one of max_message_size, ping_interval,"
            ),
            "{e}"
        );
        let e = parse("[namespaces.chat]\nhistroy_size = 1").unwrap_err();
        assert_eq!(e.key, "namespaces.chat");
        assert_eq!(e.line, Some(2));
        let e = parse("[tls]\ncert = \"a\"\nkey = \"b\"\nreload = \"1s\"").unwrap_err();
        assert_eq!(
            e.to_string(),
            "wshub.toml line 4: tls: unknown key `reload` (expected one of cert, key, reload_interval)"
        );
    }

    #[test]
    fn malformed_values_name_the_key() {
        assert_eq!(
            parse_err("[server]\nlisten = \"x\""),
            "wshub.toml line 2: server.listen: invalid socket address \"x\" \
             (write IP:PORT, e.g. 0.0.0.0:8080 or [::]:8080)"
        );
        let e = parse_err("[limits]\nping_interval = \"5 parsecs\"");
        assert!(
            e.starts_with(
                "wshub.toml line 2: limits.ping_interval: invalid duration \"5 parsecs\""
            ),
            "{e}"
        );
        let e = parse_err("[limits]\nping_interval = \"10\"");
        assert!(
            e.starts_with("wshub.toml line 2: limits.ping_interval: invalid duration \"10\""),
            "{e}"
        );
        assert_eq!(
            parse_err("[namespaces.chat]\nsubscribe = \"everyone\""),
            "wshub.toml line 2: namespaces.chat.subscribe: unknown value `everyone`, \
             expected one of `all`, `users`, `grant`, `none`"
        );
        assert_eq!(
            parse_err("[log]\nformat = \"xml\""),
            "wshub.toml line 2: log.format: unknown value `xml`, expected `text` or `json`"
        );
        assert_eq!(
            parse_err("[limits]\ncommand_burst = 5000000000"),
            "wshub.toml line 2: limits.command_burst: invalid value: integer `5000000000`, \
             expected an integer from 0 to 4294967295"
        );
    }

    #[test]
    fn syntax_errors_have_a_line() {
        let e = parse("[server]\nlisten = \"127.0.0.1:1\"\ndeflate = ").unwrap_err();
        assert_eq!(
            e.origin,
            Some(ConfigOrigin::File(PathBuf::from("wshub.toml")))
        );
        assert_eq!(e.line, Some(3));
        assert_eq!(e.key, "");
        assert!(e.to_string().starts_with("wshub.toml line 3: "), "{e}");
        let e = HubConfig::from_toml_str("[server", None).unwrap_err();
        assert!(e.to_string().starts_with("config line 1: "), "{e}");
    }

    #[test]
    fn tls_needs_both_files() {
        assert_eq!(
            parse_err("\n[tls]\ncert = \"c.pem\""),
            "wshub.toml line 2: tls.key: missing: TLS needs both tls.cert and tls.key"
        );
        assert_eq!(
            parse_err("[tls]\nkey = \"k.pem\""),
            "wshub.toml line 1: tls.cert: missing: TLS needs both tls.cert and tls.key"
        );
        assert_eq!(
            parse_err("[tls]\ncert = \"\"\nkey = \"k.pem\""),
            "wshub.toml line 2: tls.cert: is set but empty"
        );
    }

    // -- validation ---------------------------------------------------------

    /// Each check: a change to the defaults, the key the error must name,
    /// and a part of its reason.
    #[test]
    fn each_validation_error_names_its_key() {
        type Change = fn(&mut HubConfig);
        let cases: Vec<(Change, &str, &str)> = vec![
            (
                |c| c.server.ws_path = "ws".into(),
                "server.ws_path",
                "must start with '/'",
            ),
            (
                |c| c.server.ws_path = "/a b".into(),
                "server.ws_path",
                "no\n",
            ),
            (
                |c| c.server.ws_path = "/a?b".into(),
                "server.ws_path",
                "'?'",
            ),
            (
                |c| c.server.max_connections = 0,
                "server.max_connections",
                "at least 1",
            ),
            (
                |c| c.server.handshake_timeout = Duration::ZERO,
                "server.handshake_timeout",
                "longer than 0s",
            ),
            (
                |c| c.server.drain_batch = 0,
                "server.drain_batch",
                "at least 1",
            ),
            (
                |c| c.server.trusted_proxies = vec!["10.0.0.0/33".into()],
                "server.trusted_proxies",
                "prefix length",
            ),
            (
                |c| c.server.trusted_proxies = vec!["proxy.local".into()],
                "server.trusted_proxies",
                "\"proxy.local\"",
            ),
            (
                |c| c.server.allowed_origins = vec!["app.example.com".into()],
                "server.allowed_origins",
                "no scheme",
            ),
            (
                |c| c.server.allowed_origins = vec!["https://app.example.com/".into()],
                "server.allowed_origins",
                "trailing slash",
            ),
            (
                |c| c.server.allowed_origins = vec!["https://App.example.com".into()],
                "server.allowed_origins",
                "lowercase",
            ),
            (
                |c| c.server.allowed_origins = vec!["https://a.com:99999".into()],
                "server.allowed_origins",
                "port",
            ),
            (
                |c| {
                    c.tls = Some(TlsConfig {
                        cert: "c".into(),
                        key: "".into(),
                        reload_interval: Duration::ZERO,
                    })
                },
                "tls.key",
                "empty",
            ),
            (
                |c| c.limits.max_message_size = 124,
                "limits.max_message_size",
                "from 125",
            ),
            (
                |c| c.limits.max_message_size = MAX_MESSAGE_SIZE + 1,
                "limits.max_message_size",
                "64 MiB",
            ),
            (
                |c| c.limits.pong_timeout = Duration::ZERO,
                "limits.pong_timeout",
                "longer than 0s",
            ),
            (
                |c| c.limits.pong_timeout = Duration::from_secs(25),
                "limits.pong_timeout",
                "25s must be less than limits.ping_interval (25s)",
            ),
            (
                |c| c.limits.close_timeout = Duration::ZERO,
                "limits.close_timeout",
                "longer than 0s",
            ),
            (
                |c| c.limits.max_queue_bytes = 1000,
                "limits.max_queue_bytes",
                "less than limits.max_message_size",
            ),
            (
                |c| c.limits.write_stall_timeout = Duration::ZERO,
                "limits.write_stall_timeout",
                "longer than 0s",
            ),
            (
                |c| c.limits.connect_timeout = Duration::ZERO,
                "limits.connect_timeout",
                "longer than 0s",
            ),
            (
                |c| c.limits.max_preauth_message_size = 100,
                "limits.max_preauth_message_size",
                "at least 125",
            ),
            (
                |c| c.limits.max_preauth_message_size = 65537,
                "limits.max_preauth_message_size",
                "more than limits.max_message_size (65536)",
            ),
            (
                |c| c.limits.max_channels_per_connection = 0,
                "limits.max_channels_per_connection",
                "at least 1",
            ),
            (
                |c| c.limits.command_rate = -1.0,
                "limits.command_rate",
                ">= 0",
            ),
            (
                |c| c.limits.command_rate = f64::NAN,
                "limits.command_rate",
                ">= 0",
            ),
            (
                |c| c.limits.command_burst = 0,
                "limits.command_burst",
                "while limits.command_rate is on",
            ),
            (
                |c| c.limits.handshake_rate_per_ip = f64::INFINITY,
                "limits.handshake_rate_per_ip",
                ">= 0",
            ),
            (
                |c| c.limits.handshake_burst_per_ip = 0,
                "limits.handshake_burst_per_ip",
                "at least 1",
            ),
            (
                |c| c.auth.hmac_secret = Some("short".into()),
                "auth.hmac_secret",
                "is 5 bytes; use at least 32",
            ),
            (
                |c| {
                    c.auth.hmac_secret = Some(SECRET.into());
                    c.auth.hmac_secret_file = Some("s".into());
                },
                "auth.hmac_secret_file",
                "not both",
            ),
            (
                |c| c.auth.rsa_public_key_file = Some("".into()),
                "auth.rsa_public_key_file",
                "empty",
            ),
            (
                |c| c.auth.audience = Some(" ".into()),
                "auth.audience",
                "empty",
            ),
            (|c| c.auth.issuer = Some("".into()), "auth.issuer", "empty"),
            (
                |c| c.auth.leeway = Duration::from_secs(301),
                "auth.leeway",
                "5m 1s is more than the allowed 5m",
            ),
            (
                |c| c.api.key = Some("short-key".into()),
                "api.key",
                "is 9 bytes; use at least 16",
            ),
            (
                |c| c.log.level = " ".into(),
                "log.level",
                "must not be empty",
            ),
            (
                |c| c.default_namespace.history_ttl = Duration::ZERO,
                "default_namespace.history_ttl",
                "longer than 0s",
            ),
            (
                |c| c.default_namespace.max_publication_size = 0,
                "default_namespace.max_publication_size",
                "at least 1",
            ),
            (
                |c| {
                    let ns = NamespaceConfig {
                        max_publication_size: 70_000,
                        ..NamespaceConfig::default()
                    };
                    c.namespaces.insert("chat".into(), ns);
                },
                "namespaces.chat.max_publication_size",
                "more than limits.max_message_size",
            ),
            (
                |c| {
                    c.namespaces
                        .insert("a b".into(), NamespaceConfig::default());
                },
                "namespaces.\"a b\"",
                "invalid namespace name",
            ),
            (
                |c| {
                    c.namespaces
                        .insert(String::new(), NamespaceConfig::default());
                },
                "namespaces.\"\"",
                "1 to 64 characters",
            ),
            (
                |c| {
                    c.namespaces
                        .insert("n".repeat(65), NamespaceConfig::default());
                },
                "namespaces.nnnnn",
                "invalid namespace name",
            ),
        ];
        for (change, key, reason) in cases {
            let mut c = HubConfig::default();
            change(&mut c);
            let e = c.validate().expect_err(key);
            assert!(e.key.starts_with(key), "wanted {key}, got {e}");
            let reason = reason.trim_end_matches('\n');
            assert!(e.reason.contains(reason), "{key}: wanted {reason:?} in {e}");
            assert!(e.to_string().starts_with(key), "{e}");
            assert_eq!(e.origin, None);
        }
    }

    #[test]
    fn edge_values_that_are_valid() {
        let mut c = HubConfig::default();
        c.limits.ping_interval = Duration::ZERO; // heartbeat off: pong not compared
        c.limits.pong_timeout = Duration::from_secs(60);
        c.limits.command_rate = 0.0;
        c.limits.command_burst = 0;
        c.limits.handshake_rate_per_ip = 0.0;
        c.limits.handshake_burst_per_ip = 0;
        c.limits.max_message_size = MIN_MESSAGE_SIZE;
        c.limits.max_preauth_message_size = MIN_MESSAGE_SIZE;
        c.default_namespace.max_publication_size = MIN_MESSAGE_SIZE;
        c.server.drain_timeout = Duration::ZERO;
        c.server.allowed_origins = vec![
            "*".into(),
            "https://app.example.com".into(),
            "http://localhost:3000".into(),
            "http://[::1]:8080".into(),
            "chrome-extension://abcdef".into(),
        ];
        c.server.trusted_proxies = vec!["127.0.0.1".into(), "::1/128".into()];
        c.auth.hmac_secret = Some(SECRET.into());
        c.auth.leeway = MAX_LEEWAY;
        c.api.key = Some("k".repeat(MIN_API_KEY_LEN));
        // History off: recovery_max and history_ttl are not compared.
        c.default_namespace.history_size = 0;
        c.default_namespace.history_ttl = Duration::ZERO;
        c.default_namespace.recovery_max = 1000;
        let small = NamespaceConfig {
            max_publication_size: MIN_MESSAGE_SIZE,
            ..NamespaceConfig::default()
        };
        c.namespaces
            .insert("Aa0_-.x".repeat(10)[..64].to_owned(), small);
        c.validate().unwrap();
    }

    #[test]
    fn origin_checks() {
        for ok in [
            "*",
            "https://a.b",
            "http://a:1",
            "https://x.y:65535",
            "http://[::1]",
        ] {
            assert_eq!(check_origin(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "a.b",
            "https://",
            "https://a.b/path",
            "https://user@a.b",
            "HTTPS://a.b",
            "https://a.b:",
            "https://a.b:0",
            "https://a.b:x",
            "http://[::1",
            "http://[zz]",
            "http://[::1]x",
            "https://a b",
            "**",
        ] {
            assert!(check_origin(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn validation_errors_in_a_file_have_the_line_of_the_key() {
        assert_eq!(
            parse_err("[limits]\nping_interval = \"25s\"\npong_timeout = \"30s\"\n"),
            "wshub.toml line 3: limits.pong_timeout: 30s must be less than limits.ping_interval (25s)"
        );
        // The offending key is the default; the other one is from the file.
        assert_eq!(
            parse_err("[limits]\n\nping_interval = \"5s\"\n"),
            "wshub.toml line 3: limits.pong_timeout: 10s must be less than limits.ping_interval (5s)"
        );
        assert_eq!(
            parse_err("[namespaces.\"a b\"]\nhistory_size = 1\nrecovery_max = 1"),
            "wshub.toml line 1: namespaces.\"a b\": invalid namespace name \"a b\": \
             use 1 to 64 characters from A-Z a-z 0-9 _ - ."
        );
        assert_eq!(
            parse_err("[auth]\nhmac_secret = \"abc\""),
            "wshub.toml line 2: auth.hmac_secret: is 3 bytes; use at least 32 random bytes"
        );
    }

    // -- environment --------------------------------------------------------

    #[test]
    fn env_var_names() {
        let layers = Layers::new().unwrap();
        let keys = layers.env_keys();
        for (var, key) in [
            ("WSHUB_SERVER_LISTEN", "server.listen"),
            ("WSHUB_SERVER_TRUSTED_PROXIES", "server.trusted_proxies"),
            ("WSHUB_TLS_CERT", "tls.cert"),
            ("WSHUB_TLS_RELOAD_INTERVAL", "tls.reload_interval"),
            ("WSHUB_LIMITS_MAX_MESSAGE_SIZE", "limits.max_message_size"),
            ("WSHUB_AUTH_HMAC_SECRET", "auth.hmac_secret"),
            ("WSHUB_AUTH_EC_PRIVATE_KEY_FILE", "auth.ec_private_key_file"),
            ("WSHUB_API_KEY", "api.key"),
            ("WSHUB_LOG_FORMAT", "log.format"),
            ("WSHUB_LOG_LEVEL", "log.level"),
        ] {
            assert_eq!(keys.get(var).map(|p| key_string(p)), Some(key.to_owned()));
            assert_eq!(env_var_for_key(key).as_deref(), Some(var));
        }
        // 11 + 3 + 15 + 11 + 1 + 2 + 3 + 6 + 9 + 6 keys; namespaces have none.
        assert_eq!(keys.len(), 67);
        // Namespaces have no variables (`WSHUB_DEMO_NAMESPACE` is a demo key).
        assert!(keys
            .keys()
            .all(|k| !k.contains("NAMESPACE") || k == "WSHUB_DEMO_NAMESPACE"));
    }

    #[test]
    fn env_values_take_the_type_of_their_key() {
        let digits = "12345678901234567890123456789012";
        let c = HubConfig::load(
            None,
            env(&[
                ("WSHUB_AUTH_HMAC_SECRET", digits),
                ("WSHUB_API_KEY", "1234567890123456"),
                ("WSHUB_SERVER_LISTEN", "0.0.0.0:9000"),
                ("WSHUB_SERVER_TRUSTED_PROXIES", "10.0.0.0/8, fd00::/8,,"),
                ("WSHUB_SERVER_ALLOWED_ORIGINS", "https://a.example"),
                ("WSHUB_SERVER_DEFLATE", "FALSE"),
                ("WSHUB_AUTH_ALLOW_ANONYMOUS", "1"),
                ("WSHUB_LIMITS_MAX_MESSAGE_SIZE", " 1048576 "),
                ("WSHUB_LIMITS_COMMAND_RATE", "2.5"),
                ("WSHUB_LIMITS_PING_INTERVAL", "1m"),
                ("WSHUB_LOG_FORMAT", "json"),
                ("WSHUB_LOG_LEVEL", "wshub=debug,info"),
                ("WSHUB_TLS_CERT", "cert.pem"),
                ("WSHUB_TLS_KEY", "key.pem"),
                // Ignored: empty, unknown, other prefixes, namespaces.
                ("WSHUB_LIMITS_PONG_TIMEOUT", ""),
                ("WSHUB_CONFIG", "/etc/wshub.toml"),
                ("WSHUB_SERVER_LISTN", "x"),
                ("WSHUB_DEFAULT_NAMESPACE_HISTORY_SIZE", "x"),
                ("HOME", "/root"),
            ]),
            &[],
        )
        .unwrap();
        assert_eq!(c.auth.hmac_secret.as_deref(), Some(digits));
        assert_eq!(c.api.key.as_deref(), Some("1234567890123456"));
        assert_eq!(c.server.listen, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(c.server.trusted_proxies, ["10.0.0.0/8", "fd00::/8"]);
        assert_eq!(c.server.allowed_origins, ["https://a.example"]);
        assert!(!c.server.deflate);
        assert!(c.auth.allow_anonymous);
        assert_eq!(c.limits.max_message_size, 1 << 20);
        assert_eq!(c.limits.command_rate, 2.5);
        assert_eq!(c.limits.ping_interval, Duration::from_secs(60));
        assert_eq!(c.limits.pong_timeout, Duration::from_secs(10));
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.log.level, "wshub=debug,info");
        let tls = c.tls.unwrap();
        assert_eq!(tls.key, Path::new("key.pem"));
        assert_eq!(tls.reload_interval, Duration::from_secs(10));
        assert_eq!(c.default_namespace, NamespaceConfig::default());
    }

    #[test]
    fn bad_env_values_name_the_variable() {
        let cases = [
            (
                "WSHUB_SERVER_LISTEN",
                "x",
                "WSHUB_SERVER_LISTEN: invalid socket address \"x\" \
                 (write IP:PORT, e.g. 0.0.0.0:8080 or [::]:8080)",
            ),
            (
                "WSHUB_LIMITS_MAX_MESSAGE_SIZE",
                "64k",
                "WSHUB_LIMITS_MAX_MESSAGE_SIZE: expected a non-negative integer, found \"64k\"",
            ),
            (
                "WSHUB_LIMITS_MAX_MESSAGE_SIZE",
                "-1",
                "WSHUB_LIMITS_MAX_MESSAGE_SIZE: expected a non-negative integer, found \"-1\"",
            ),
            (
                "WSHUB_SERVER_DEFLATE",
                "yes please",
                "WSHUB_SERVER_DEFLATE: expected a boolean (true or false), found \"yes please\"",
            ),
            (
                "WSHUB_LIMITS_COMMAND_RATE",
                "fast",
                "WSHUB_LIMITS_COMMAND_RATE: expected a number, found \"fast\"",
            ),
            (
                "WSHUB_LOG_FORMAT",
                "xml",
                "WSHUB_LOG_FORMAT: unknown value `xml`, expected `text` or `json`",
            ),
            (
                "WSHUB_LIMITS_COMMAND_BURST",
                "4294967296",
                "WSHUB_LIMITS_COMMAND_BURST: invalid value: integer `4294967296`, \
                 expected an integer from 0 to 4294967295",
            ),
            (
                "WSHUB_API_KEY",
                "short",
                "WSHUB_API_KEY: is 5 bytes; use at least 16 (random) bytes",
            ),
            (
                "WSHUB_TLS_CERT",
                "c.pem",
                "WSHUB_TLS_CERT: tls.key: missing: TLS needs both tls.cert and tls.key",
            ),
        ];
        for (var, value, want) in cases {
            let e = load_err(None, &[(var, value)], &[]);
            assert_eq!(e.to_string(), want);
            assert_eq!(e.origin, Some(ConfigOrigin::Env(var.to_owned())));
        }
        let e = load_err(None, &[("WSHUB_LIMITS_PING_INTERVAL", "soon")], &[]);
        assert!(
            e.to_string()
                .starts_with("WSHUB_LIMITS_PING_INTERVAL: invalid duration \"soon\""),
            "{e}"
        );
    }

    #[test]
    fn validation_errors_name_the_variable_that_caused_them() {
        // pong_timeout keeps its default; the variable made it too long.
        let e = load_err(None, &[("WSHUB_LIMITS_PING_INTERVAL", "5s")], &[]);
        assert_eq!(
            e.to_string(),
            "WSHUB_LIMITS_PING_INTERVAL: limits.pong_timeout: 10s must be less than \
             limits.ping_interval (5s)"
        );
        let e = load_err(None, &[("WSHUB_LIMITS_MAX_MESSAGE_SIZE", "12")], &[]);
        assert_eq!(
            e.to_string(),
            "WSHUB_LIMITS_MAX_MESSAGE_SIZE: is 12; must be from 125 to 67108864 (64 MiB)"
        );
    }

    // -- --set --------------------------------------------------------------

    #[test]
    fn set_overrides() {
        let c = HubConfig::load(
            None,
            Vec::new(),
            &sets(&[
                "limits.max_message_size=1024",
                "limits.max_preauth_message_size=1000",
                "default_namespace.max_publication_size=1000",
                "namespaces.chat.history_size=10",
                "namespaces.chat.recovery_max=5",
                "namespaces.chat.join_leave=true",
                "namespaces.chat.max_publication_size=512",
                "namespaces.a.b.publish=none",
                "namespaces.a.b.max_publication_size=100",
                "server.allowed_origins=https://a.example,https://b.example",
                "auth.hmac_secret=12345678901234567890123456789012",
                "server.ws_path=/socket",
                "log.level=",
            ]),
        );
        // An empty string is taken as given, and the level must not be empty.
        let e = c.unwrap_err();
        assert_eq!(
            e.to_string(),
            "--set log.level: must not be empty (e.g. \"info\" or \"wshub=debug,info\")"
        );

        let c = HubConfig::load(
            None,
            Vec::new(),
            &sets(&[
                "limits.max_message_size=1024",
                "limits.max_preauth_message_size=1000",
                "default_namespace.max_publication_size=1000",
                "namespaces.chat.history_size=10",
                "namespaces.chat.recovery_max=5",
                "namespaces.chat.join_leave=true",
                "namespaces.chat.max_publication_size=512",
                "namespaces.a.b.publish=none",
                "namespaces.a.b.max_publication_size=100",
                "server.allowed_origins=https://a.example,https://b.example",
                "server.trusted_proxies=",
                "auth.hmac_secret=12345678901234567890123456789012",
                "server.ws_path =/socket",
            ]),
        )
        .unwrap();
        assert_eq!(c.limits.max_message_size, 1024);
        assert_eq!(c.default_namespace.max_publication_size, 1000);
        let chat = &c.namespaces["chat"];
        assert_eq!(chat.history_size, 10);
        assert_eq!(chat.recovery_max, 5);
        assert!(chat.join_leave);
        assert_eq!(chat.history_ttl, Duration::from_secs(300));
        let ab = &c.namespaces["a.b"];
        assert_eq!(ab.publish, Access::None);
        assert_eq!(
            c.server.allowed_origins,
            ["https://a.example", "https://b.example"]
        );
        assert!(c.server.trusted_proxies.is_empty());
        assert_eq!(
            c.auth.hmac_secret.as_deref(),
            Some("12345678901234567890123456789012")
        );
        // The key is trimmed; the value is the raw text after the '='.
        assert_eq!(c.server.ws_path, "/socket");
    }

    #[test]
    fn bad_set_arguments() {
        let cases: [(&str, &str); 11] = [
            ("limits", "--set: expected key.path=value, found \"limits\""),
            (
                "limtis.max_message_size=1",
                "--set limtis.max_message_size: unknown key `limtis` (expected one of \
                 server, tls, limits, auth, api, log, demo, broker, ingest, upstream, default_namespace, namespaces)",
            ),
            (
                "limits.max_msg=1",
                "--set limits: unknown key `max_msg` (expected one of max_message_size, \
                 ping_interval, pong_timeout, close_timeout, max_queue_bytes, \
                 write_stall_timeout, connect_timeout, max_preauth_message_size, \
                 max_channels_per_connection, command_rate, command_burst, \
                 command_rate_strikes, max_connections_per_ip, handshake_rate_per_ip, \
                 handshake_burst_per_ip)",
            ),
            (
                "limits=1",
                "--set limits: is a table; set one of its keys (section.key=value)",
            ),
            (
                "namespaces.chat=1",
                "--set namespaces.chat: is a table; set one of its keys, e.g. \
                 namespaces.NAME.history_size=10",
            ),
            (
                "limits.max_message_size.x=1",
                "--set limits.max_message_size.x: `limits.max_message_size` is not a table",
            ),
            (
                "limits.max_message_size=big",
                "--set limits.max_message_size: expected a non-negative integer, found \"big\"",
            ),
            (
                "namespaces.chat.publish=everyone",
                "--set namespaces.chat.publish: unknown value `everyone`, expected one of \
                 `all`, `users`, `grant`, `none`",
            ),
            (
                "namespaces.chat.histroy=1",
                "--set namespaces.chat: unknown key `histroy` (expected one of subscribe, \
                 publish, presence, join_leave, history_size, history_ttl, recovery_max, \
                 max_subscribers, slow_consumer, max_publication_size, show_publisher, \
                 upstream)",
            ),
            (
                "limits.pong_timeout=30s",
                "--set limits.pong_timeout: 30s must be less than limits.ping_interval (25s)",
            ),
            (
                "namespaces.bad!.history_size=1",
                "--set namespaces.\"bad!\": invalid namespace name \"bad!\": use 1 to 64 \
                 characters from A-Z a-z 0-9 _ - .",
            ),
        ];
        for (arg, want) in cases {
            let e = load_err(None, &[], &[arg]);
            assert_eq!(e.to_string(), want, "{arg}");
            assert_eq!(e.origin, Some(ConfigOrigin::Set));
        }
    }

    // -- precedence ---------------------------------------------------------

    #[test]
    fn precedence_file_then_env_then_set() {
        let dir = TempDir::new();
        let path = dir.write(
            "wshub.toml",
            "[limits]\nmax_message_size = 1000\nmax_preauth_message_size = 500\n\
             [default_namespace]\nmax_publication_size = 500\n\
             [namespaces.chat]\nhistory_size = 7\nrecovery_max = 7\nmax_publication_size = 500\n",
        );
        let var = [("WSHUB_LIMITS_MAX_MESSAGE_SIZE", "2000")];
        let set = ["limits.max_message_size=3000"];

        let c = HubConfig::load(Some(&path), Vec::new(), &[]).unwrap();
        assert_eq!(c.limits.max_message_size, 1000);
        let c = HubConfig::load(Some(&path), env(&var), &[]).unwrap();
        assert_eq!(c.limits.max_message_size, 2000);
        let c = HubConfig::load(Some(&path), env(&var), &sets(&set)).unwrap();
        assert_eq!(c.limits.max_message_size, 3000);
        // Later --set wins over an earlier one.
        let c = HubConfig::load(
            Some(&path),
            env(&var),
            &sets(&[
                "limits.max_message_size=3000",
                "limits.max_message_size=4000",
            ]),
        )
        .unwrap();
        assert_eq!(c.limits.max_message_size, 4000);
        // Keys not overridden keep the file's values; --set on a namespace of
        // the file changes only that key.
        let c = HubConfig::load(
            Some(&path),
            env(&var),
            &sets(&["namespaces.chat.join_leave=true"]),
        )
        .unwrap();
        assert_eq!(c.limits.max_preauth_message_size, 500);
        assert_eq!(c.namespaces["chat"].history_size, 7);
        assert!(c.namespaces["chat"].join_leave);
    }

    #[test]
    fn load_errors_name_the_file_and_the_overriding_source() {
        let dir = TempDir::new();
        let path = dir.write("hub.toml", "[limits]\nmax_message_size = 1000\n");
        let shown = path.display().to_string();

        // The file's value breaks a check on another key: the error points
        // at the file line that set it.
        let e = load_err(Some(&path), &[], &["limits.max_preauth_message_size=2000"]);
        assert_eq!(
            e.to_string(),
            "--set limits.max_preauth_message_size: 2000 is more than \
             limits.max_message_size (1000)"
        );
        let e = load_err(Some(&path), &[], &[]);
        assert_eq!(
            e.to_string(),
            format!(
                "{shown} line 2: limits.max_preauth_message_size: 20480 is more than \
                 limits.max_message_size (1000)"
            )
        );
        // An environment variable overrides the file's value: it is blamed.
        let e = load_err(
            Some(&path),
            &[("WSHUB_LIMITS_MAX_MESSAGE_SIZE", "2000")],
            &[],
        );
        assert_eq!(
            e.origin,
            Some(ConfigOrigin::Env("WSHUB_LIMITS_MAX_MESSAGE_SIZE".into()))
        );

        let missing = dir.0.join("nope.toml");
        let e = load_err(Some(&missing), &[], &[]);
        assert!(
            e.to_string()
                .starts_with(&format!("{}: cannot read the file: ", missing.display())),
            "{e}"
        );
        let bad = dir.write("bad.toml", "[server]\nlisten = 1\n");
        let e = load_err(Some(&bad), &[], &[]);
        assert_eq!(
            e.to_string(),
            format!(
                "{}: line 2: server.listen: expected a string, found an integer",
                bad.display()
            )
            .replace(": line", " line")
        );
    }

    // -- lookups and conversions --------------------------------------------

    #[test]
    fn redis_modes_need_their_keys() {
        let redis = |mode: RedisMode, nodes: &[&str], master: &str| {
            let mut c = HubConfig::default();
            c.broker.engine = BrokerEngine::Redis;
            c.broker.mode = mode;
            c.broker.nodes = nodes.iter().map(|n| (*n).to_owned()).collect();
            c.broker.sentinel_master = master.to_owned();
            c
        };
        let seeds = ["redis://10.0.0.1:7000", "rediss://10.0.0.2:7000"];
        assert!(redis(RedisMode::Single, &[], "").validate().is_ok());
        assert!(redis(RedisMode::Cluster, &seeds, "").validate().is_ok());
        assert!(redis(RedisMode::Sentinel, &seeds, "mymaster")
            .validate()
            .is_ok());
        // The memory engine ignores the Redis keys.
        let mut memory = redis(RedisMode::Sentinel, &[], "");
        memory.broker.engine = BrokerEngine::Memory;
        assert!(memory.validate().is_ok());
        for (config, key, reason) in [
            (
                redis(RedisMode::Single, &seeds, ""),
                "broker.nodes",
                "used only with mode = \"cluster\" or \"sentinel\"",
            ),
            (
                redis(RedisMode::Single, &[], "m"),
                "broker.sentinel_master",
                "used only with mode = \"sentinel\"",
            ),
            (
                redis(RedisMode::Cluster, &seeds, "m"),
                "broker.sentinel_master",
                "used only with mode = \"sentinel\"",
            ),
            (
                redis(RedisMode::Cluster, &[], ""),
                "broker.nodes",
                "mode = \"cluster\" needs at least one cluster seed URL",
            ),
            (
                redis(RedisMode::Sentinel, &[], "m"),
                "broker.nodes",
                "mode = \"sentinel\" needs at least one sentinel URL",
            ),
            (
                redis(RedisMode::Cluster, &["10.0.0.1:7000"], ""),
                "broker.nodes",
                "\"10.0.0.1:7000\" is not a redis:// or rediss:// URL",
            ),
            (
                redis(RedisMode::Sentinel, &seeds, ""),
                "broker.sentinel_master",
                "needs the name the sentinels monitor the master under",
            ),
        ] {
            let e = config.validate().expect_err(key);
            assert_eq!(e.key, key, "{e}");
            assert!(e.reason.contains(reason), "{key}: wanted {reason:?} in {e}");
        }
        // From TOML, the environment and --set.
        let c = HubConfig::from_toml_str(
            "[broker]\nengine = \"redis\"\nmode = \"cluster\"\nnodes = [\"redis://a:1\"]\n",
            None,
        )
        .unwrap();
        assert_eq!(c.broker.mode, RedisMode::Cluster);
        assert_eq!(c.broker.nodes, vec!["redis://a:1".to_owned()]);
        let e = HubConfig::from_toml_str("[broker]\nmode = \"ring\"\n", None).unwrap_err();
        assert!(e.to_string().contains("broker.mode"), "{e}");
    }

    #[test]
    fn namespace_lookup() {
        let c = parse("[namespaces.chat]\njoin_leave = true\n[namespaces.\"a.b\"]\n").unwrap();
        assert_eq!(c.namespace("lobby"), Some(&c.default_namespace));
        assert_eq!(c.namespace("chat:lobby"), Some(&c.namespaces["chat"]));
        assert!(c.namespace("chat:lobby").unwrap().join_leave);
        assert_eq!(c.namespace("chat:a:b"), Some(&c.namespaces["chat"]));
        assert_eq!(c.namespace("a.b:x"), Some(&c.namespaces["a.b"]));
        assert_eq!(c.namespace("news:today"), None);
        assert_eq!(c.namespace(":x"), None);
        assert_eq!(c.namespace("chat"), Some(&c.default_namespace));
    }

    #[test]
    fn trusted_proxies_with_the_header_setting() {
        let c =
            parse("[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\nproxy_header = \"auto\"")
                .unwrap();
        let t = c.server.trusted_proxies().unwrap();
        assert!(t.contains("10.2.3.4".parse().unwrap()));
        assert!(t.contains("::1".parse().unwrap()));
        assert!(!t.contains("192.0.2.1".parse().unwrap()));
        assert_eq!(t.header(), ProxyHeader::Auto);
        let d = HubConfig::default().server.trusted_proxies().unwrap();
        assert!(d.is_empty());
        assert_eq!(d.header(), ProxyHeader::XForwardedFor);

        let s = ServerConfig {
            trusted_proxies: vec!["nope".into()],
            ..ServerConfig::default()
        };
        let e = s.trusted_proxies().unwrap_err();
        assert_eq!(e.key, "server.trusted_proxies");
        assert!(e
            .to_string()
            .starts_with("server.trusted_proxies: invalid trusted proxy entry \"nope\""));
    }

    #[test]
    fn to_auth_config_reads_key_files() {
        let dir = TempDir::new();
        dir.write("hmac.secret", &format!("{SECRET}\n"));
        let key = rcgen::KeyPair::generate().unwrap();
        dir.write("ec.pem", &key.public_key_pem());

        let mut a = AuthSection {
            hmac_secret_file: Some("hmac.secret".into()),
            ec_public_key_file: Some(dir.0.join("ec.pem")),
            audience: Some("aud".into()),
            issuer: Some("iss".into()),
            leeway: Duration::from_secs(5),
            require_exp: false,
            ..AuthSection::default()
        };
        let cfg = a.to_auth_config(&dir.0).unwrap();
        assert_eq!(cfg.hmac_secret.as_deref(), Some(SECRET));
        assert!(cfg.ec_public_key_pem.unwrap().contains("BEGIN PUBLIC KEY"));
        assert_eq!(cfg.rsa_public_key_pem, None);
        assert_eq!(cfg.audience.as_deref(), Some("aud"));
        assert_eq!(cfg.issuer.as_deref(), Some("iss"));
        assert_eq!(cfg.leeway, Duration::from_secs(5));
        assert!(!cfg.require_exp);
        assert!(!cfg.allow_anonymous);

        a.hmac_secret = Some(SECRET.into());
        let e = a.to_auth_config(&dir.0).unwrap_err();
        assert_eq!(e.key, "auth.hmac_secret_file");
        assert!(e.reason.contains("not both"));

        // A secret given inline works without any file.
        let inline = AuthSection {
            hmac_secret: Some(SECRET.into()),
            ..AuthSection::default()
        };
        let cfg = inline.to_auth_config(Path::new("/nonexistent")).unwrap();
        assert_eq!(cfg.hmac_secret.as_deref(), Some(SECRET));
    }

    #[test]
    fn to_auth_config_errors_name_the_key() {
        let dir = TempDir::new();
        dir.write("short.secret", "tooshort\n");
        dir.write("junk.pem", "not a key");

        let missing = AuthSection {
            rsa_public_key_file: Some("missing.pem".into()),
            ..AuthSection::default()
        };
        let e = missing.to_auth_config(&dir.0).unwrap_err();
        assert_eq!(e.key, "auth.rsa_public_key_file");
        assert!(e.reason.starts_with("cannot read "), "{e}");
        assert!(e.reason.contains("missing.pem"), "{e}");

        let short = AuthSection {
            hmac_secret_file: Some("short.secret".into()),
            ..AuthSection::default()
        };
        let e = short.to_auth_config(&dir.0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "auth.hmac_secret_file: 8 bytes; use at least 32 random bytes"
        );

        let junk = AuthSection {
            rsa_public_key_file: Some("junk.pem".into()),
            ..AuthSection::default()
        };
        let e = junk.to_auth_config(&dir.0).unwrap_err();
        assert_eq!(e.key, "auth.rsa_public_key_file");
        assert!(
            e.reason.starts_with("not a valid RSA public key PEM"),
            "{e}"
        );

        let junk_ec = AuthSection {
            ec_public_key_file: Some("junk.pem".into()),
            ..AuthSection::default()
        };
        assert_eq!(
            junk_ec.to_auth_config(&dir.0).unwrap_err().key,
            "auth.ec_public_key_file"
        );

        let leeway = AuthSection {
            hmac_secret: Some(SECRET.into()),
            leeway: Duration::from_secs(600),
            ..AuthSection::default()
        };
        assert_eq!(
            leeway.to_auth_config(&dir.0).unwrap_err().key,
            "auth.leeway"
        );

        let e = AuthSection::default().to_auth_config(&dir.0).unwrap_err();
        assert_eq!(e.key, "auth");
        assert!(e.reason.starts_with("no token verification key configured"));

        let anonymous = AuthSection {
            allow_anonymous: true,
            ..AuthSection::default()
        };
        assert!(anonymous.to_auth_config(&dir.0).unwrap().allow_anonymous);
    }

    #[test]
    fn error_display_forms() {
        let e = ConfigError::new("limits.x", "bad");
        assert_eq!(e.to_string(), "limits.x: bad");
        let e = ConfigError::new("", "bad").at(ConfigOrigin::Text, Some(3));
        assert_eq!(e.to_string(), "config line 3: bad");
        // The variable of another key does not hide the key.
        let e = ConfigError::new("limits.pong_timeout", "bad")
            .at(ConfigOrigin::Env("WSHUB_LIMITS_PING_INTERVAL".into()), None);
        assert_eq!(
            e.to_string(),
            "WSHUB_LIMITS_PING_INTERVAL: limits.pong_timeout: bad"
        );
        let e = ConfigError::new("limits.x", "bad").at(ConfigOrigin::Set, None);
        assert_eq!(e.to_string(), "--set limits.x: bad");
        assert_eq!(
            key_string(&path_of(&["namespaces", "a.b", "history_size"])),
            "namespaces.\"a.b\".history_size"
        );
    }

    #[test]
    fn queue_sections_are_checked() {
        for (toml, want) in [
            (
                "[ingest]\nengine = \"nats\"\nurl = \"redis://x\"",
                "ingest.url: \"redis://x\" does not start with nats:// or tls://",
            ),
            (
                "[ingest]\nengine = \"nats\"\nstream = \"a.b\"",
                "ingest.stream: use 1 to 256 characters from A-Z a-z 0-9 _ -",
            ),
            (
                "[ingest]\nengine = \"redis\"\ndead_letter = \"wshub-ingest\"",
                "ingest.dead_letter: must be set and differ from ingest.stream",
            ),
            (
                "[ingest]\nengine = \"redis\"\nmax_deliveries = 0",
                "ingest.max_deliveries: must be at least 1",
            ),
            (
                "[upstream]\nengine = \"redis\"\nurl = \"nats://x\"",
                "upstream.url: \"nats://x\" does not start with redis:// or rediss://",
            ),
            (
                "[namespaces.orders]\nupstream = \"only\"",
                "namespaces.orders.upstream: needs an [upstream] stream",
            ),
        ] {
            let e = parse_err(toml);
            assert!(e.contains(want), "{toml:?}: {e}");
        }
        // Off bridges are not checked; configured ones pass with defaults.
        parse("[ingest]\nurl = \"anything\"").unwrap();
        parse("[ingest]\nengine = \"nats\"\n[upstream]\nengine = \"redis\"\n[namespaces.o]\nupstream = \"also\"")
            .unwrap();
    }

    #[test]
    fn duration_keys_are_recognised_by_their_sample() {
        let schema = to_table(&schema_sample()).unwrap();
        let mut all = Vec::new();
        leaves(&schema, &mut Vec::new(), &mut all);
        let durations: Vec<String> = all
            .iter()
            .filter(|(_, v)| describe_expected(v).starts_with("a duration"))
            .map(|(p, _)| key_string(p))
            .filter(|k| !k.starts_with("namespaces."))
            .collect();
        assert_eq!(
            durations,
            [
                "server.handshake_timeout",
                "server.drain_timeout",
                "server.drain_jitter",
                "tls.reload_interval",
                "limits.ping_interval",
                "limits.pong_timeout",
                "limits.close_timeout",
                "limits.write_stall_timeout",
                "limits.connect_timeout",
                "auth.leeway",
                "demo.token_ttl",
                "ingest.claim_idle",
                "upstream.timeout",
                "default_namespace.history_ttl",
            ]
        );
    }

    // -- the example file and the docs --------------------------------------

    const EXAMPLE: &str = include_str!("../../../../wshub.example.toml");
    const DOCS: &str = include_str!("../../../../docs/configuration.md");

    #[test]
    fn example_file_parses_and_shows_the_defaults() {
        let c = HubConfig::from_toml_str(EXAMPLE, Some(Path::new("wshub.example.toml"))).unwrap();
        let d = HubConfig::default();
        // The example's uncommented values are the defaults, so its comments
        // ("with its default") stay true.
        assert_eq!(c.server, d.server);
        assert_eq!(c.tls, d.tls);
        assert_eq!(c.limits, d.limits);
        assert_eq!(c.auth, d.auth);
        assert_eq!(c.api, d.api);
        assert_eq!(c.log, d.log);
        assert_eq!(c.default_namespace, d.default_namespace);
        assert_eq!(c.namespaces.keys().collect::<Vec<_>>(), ["chat", "news"]);
        let chat = c.namespace("chat:lobby").unwrap();
        assert!(chat.join_leave);
        assert_eq!(chat.history_size, 500);
        let news = c.namespace("news:today").unwrap();
        assert_eq!(news.publish, Access::None);
        assert_eq!(news.subscribe, Access::All);

        // The commented-out optional keys are valid too once uncommented.
        // (hmac_secret_file is an alternative to hmac_secret: not both.)
        let uncommented: String = EXAMPLE
            .lines()
            .filter(|l| !l.starts_with("# hmac_secret_file = "))
            .map(|l| match l.strip_prefix("# ") {
                Some(r) if is_header(r) || is_assignment(r) => r,
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let c = HubConfig::from_toml_str(&uncommented, None).unwrap();
        assert!(c.tls.is_some());
        assert!(c.auth.rsa_public_key_file.is_some());
        assert!(c.api.key.is_some());
    }

    /// Whether `line` is a table header such as `[namespaces.chat]`.
    fn is_header(line: &str) -> bool {
        line.strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .is_some_and(|name| {
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'.')
            })
    }

    /// Whether `line` looks like `key = value`.
    fn is_assignment(line: &str) -> bool {
        line.split_once(" = ").is_some_and(|(k, _)| {
            !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        })
    }

    /// The text of the part of `doc` that starts at the line `header`
    /// (exactly, or commented out with `# `) and ends before the next header
    /// line.
    fn example_section<'a>(doc: &'a str, header: &str) -> &'a str {
        let mut start = None;
        let mut offset = 0;
        for line in doc.split_inclusive('\n') {
            let t = line.trim_end();
            let is_header = is_header(t) || t.strip_prefix("# ").is_some_and(is_header);
            if let Some(s) = start {
                if is_header {
                    return &doc[s..offset];
                }
            } else if t == header || t == format!("# {header}") {
                start = Some(offset + line.len());
            }
            offset += line.len();
        }
        match start {
            Some(s) => &doc[s..],
            None => panic!("no {header} section in wshub.example.toml"),
        }
    }

    /// The part of the docs under the heading that mentions `[section]`, up
    /// to the next heading.
    fn docs_section<'a>(doc: &'a str, section: &str) -> &'a str {
        let marker = format!("`[{section}]`");
        let start = doc
            .lines()
            .filter(|l| l.starts_with("## ") && l.contains(&marker))
            .map(|l| l.as_ptr() as usize - doc.as_ptr() as usize)
            .next()
            .unwrap_or_else(|| panic!("no heading with {marker} in docs/configuration.md"));
        let rest = &doc[start + 3..];
        let end = rest.find("\n#").map_or(rest.len(), |i| i + 1);
        &rest[..end]
    }

    #[test]
    fn docs_and_example_cover_every_key() {
        let layers = Layers::new().unwrap();
        let env_keys: BTreeMap<String, String> = layers
            .env_keys()
            .into_iter()
            .map(|(var, path)| (key_string(&path), var))
            .collect();
        let mut all = Vec::new();
        leaves(&layers.schema, &mut Vec::new(), &mut all);
        assert!(all.len() > 60, "{}", all.len());
        for (path, _) in &all {
            // namespaces.NAME.x is documented once, with default_namespace.
            let section = match path[0].as_str() {
                "namespaces" => "default_namespace",
                s => s,
            };
            let key = &path[path.len() - 1];
            let full = key_string(path);

            let docs = docs_section(DOCS, section);
            let row = docs
                .lines()
                .find(|l| l.starts_with(&format!("| `{key}` |")))
                .unwrap_or_else(|| panic!("docs/configuration.md has no row for {full}"));
            if let Some(var) = env_keys.get(&full) {
                assert!(row.contains(&format!("`{var}`")), "{full}: row lacks {var}");
            }

            let example = example_section(EXAMPLE, &format!("[{section}]"));
            let shown = example.lines().any(|l| {
                let l = l.strip_prefix("# ").unwrap_or(l);
                l.starts_with(&format!("{key} = "))
            });
            assert!(shown, "wshub.example.toml does not show {full}");
        }
        assert_eq!(env_keys.len(), 67);

        // And the docs list no key that does not exist.
        let schema_keys: Vec<(String, String)> = all
            .iter()
            .map(|(p, _)| {
                let s = if p[0] == "namespaces" {
                    "default_namespace"
                } else {
                    &p[0]
                };
                (s.to_owned(), p[p.len() - 1].clone())
            })
            .collect();
        for section in ENV_SECTIONS.iter().chain(&["default_namespace"]) {
            for line in docs_section(DOCS, section).lines() {
                let Some(rest) = line.strip_prefix("| `") else {
                    continue;
                };
                let Some((key, _)) = rest.split_once("` |") else {
                    continue;
                };
                assert!(
                    schema_keys.contains(&((*section).to_owned(), key.to_owned())),
                    "docs/configuration.md documents {section}.{key}, which does not exist"
                );
            }
        }
    }
}
