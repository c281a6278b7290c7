//! A WebSocket client on the same driver as the server: [`connect`] a `ws://` or
//! `wss://` URL and get a [`WebSocket`] handle.
//!
//! The CLI (`wshub connect`), the load generator and the tests use it, so both
//! roles of the protocol core are exercised over real sockets.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use wshub_proto::deflate::{client_accept, client_offer, DeflateConfig, ExtensionError};
use wshub_proto::handshake::{parse_response, ClientRequest, HandshakeError};
use wshub_proto::{Connection, Limits, Role};

use crate::config::SlowConsumerPolicy;
use crate::driver::{Driver, DriverParts};
use crate::socket::{Gate, HandlerWaker, Info, Shared, WebSocket};

/// Why [`connect`] failed.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL is not `ws://host[:port]/path` or `wss://…`.
    #[error("invalid WebSocket URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Connecting, or the handshake I/O, failed.
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// The handshake did not complete within the connect timeout.
    #[error("the handshake timed out")]
    Timeout,
    /// The server refused the upgrade or answered something else.
    #[error("handshake failed: {0}")]
    Handshake(#[from] HandshakeError),
    /// The server's `Sec-WebSocket-Extensions` answer is invalid.
    #[error("extension negotiation failed: {0}")]
    Extension(#[from] ExtensionError),
    /// `wss://` without a TLS configuration, or a TLS failure.
    #[error("TLS: {0}")]
    Tls(String),
}

/// Options of a client connection. Every setter says its default.
#[derive(Debug, Clone)]
#[must_use]
pub struct ClientBuilder {
    protocols: Vec<String>,
    headers: Vec<(String, String)>,
    deflate: Option<DeflateConfig>,
    limits: Limits,
    ping_interval: Option<Duration>,
    pong_timeout: Duration,
    connect_timeout: Duration,
    max_queue_bytes: usize,
    local_ip: Option<std::net::IpAddr>,
    #[cfg(feature = "tls")]
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            protocols: Vec::new(),
            headers: Vec::new(),
            deflate: None,
            limits: Limits::default(),
            ping_interval: None,
            pong_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            max_queue_bytes: 16 << 20,
            local_ip: None,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

impl ClientBuilder {
    /// Defaults: no subprotocol, no extra headers, no compression, no heartbeat
    /// (the client still answers the server's pings), 10 s connect timeout.
    pub fn new() -> Self {
        Self::default()
    }

    /// Subprotocols to offer, in order of preference. Default is none.
    pub fn protocols<I, S>(mut self, protocols: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.protocols = protocols.into_iter().map(Into::into).collect();
        self
    }

    /// Adds a request header. Default is none.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Offers permessage-deflate with default parameters. Default is off.
    pub fn deflate(mut self, on: bool) -> Self {
        self.deflate = on.then(DeflateConfig::default);
        self
    }

    /// Protocol limits. Default is [`Limits::default`].
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Heartbeat from the client side. Default is off.
    pub fn ping_interval(mut self, interval: Option<Duration>) -> Self {
        self.ping_interval = interval;
        self
    }

    /// How long the server has to answer a client heartbeat ping. Default is 10 s.
    pub fn pong_timeout(mut self, timeout: Duration) -> Self {
        self.pong_timeout = timeout;
        self
    }

    /// Deadline for TCP connect + TLS + upgrade. Default is 10 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Outbound queue limit in bytes (sends beyond fail). Default is 16 MiB.
    pub fn max_queue_bytes(mut self, bytes: usize) -> Self {
        self.max_queue_bytes = bytes;
        self
    }

    /// TLS settings for `wss://`. Default is none (wss fails without it); see
    /// [`crate::tls::client_config_with_ca`] and [`crate::tls::insecure_client_config`].
    #[cfg(feature = "tls")]
    pub fn tls_config(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// Connects from this local address (e.g. `127.0.0.7`, to look like
    /// another client behind a proxy, or to spread many connections over
    /// source addresses). Default: chosen by the OS.
    pub fn local_ip(mut self, ip: std::net::IpAddr) -> Self {
        self.local_ip = Some(ip);
        self
    }

    /// Connects to `url` and completes the upgrade handshake.
    pub async fn connect(&self, url: &str) -> Result<WebSocket, ConnectError> {
        tokio::time::timeout(self.connect_timeout, self.connect_inner(url))
            .await
            .map_err(|_| ConnectError::Timeout)?
    }

    async fn connect_inner(&self, url: &str) -> Result<WebSocket, ConnectError> {
        let target = Target::parse(url)?;
        let tcp = match self.local_ip {
            None => TcpStream::connect((target.host.as_str(), target.port)).await?,
            Some(ip) => {
                let addr = tokio::net::lookup_host((target.host.as_str(), target.port))
                    .await?
                    .find(|a| a.is_ipv4() == ip.is_ipv4())
                    .ok_or_else(|| {
                        std::io::Error::new(
                            std::io::ErrorKind::AddrNotAvailable,
                            "no address of the host matches the local address family",
                        )
                    })?;
                let socket = if ip.is_ipv4() {
                    tokio::net::TcpSocket::new_v4()?
                } else {
                    tokio::net::TcpSocket::new_v6()?
                };
                socket.bind(SocketAddr::new(ip, 0))?;
                socket.connect(addr).await?
            }
        };
        let _ = tcp.set_nodelay(true);
        let peer = tcp.peer_addr()?;
        if target.secure {
            #[cfg(feature = "tls")]
            {
                let Some(cfg) = self.tls.clone() else {
                    return Err(ConnectError::Tls(
                        "wss:// needs a TLS client configuration".into(),
                    ));
                };
                let name = rustls::pki_types::ServerName::try_from(target.host.clone())
                    .map_err(|e| ConnectError::Tls(e.to_string()))?;
                let tls = tokio_rustls::TlsConnector::from(cfg)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| ConnectError::Tls(e.to_string()))?;
                return self.handshake(tls, &target, peer).await;
            }
            #[cfg(not(feature = "tls"))]
            return Err(ConnectError::Tls("built without the `tls` feature".into()));
        }
        self.handshake(tcp, &target, peer).await
    }

    async fn handshake<S>(
        &self,
        mut io: S,
        target: &Target,
        peer: SocketAddr,
    ) -> Result<WebSocket, ConnectError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let protocols: Vec<&str> = self.protocols.iter().map(String::as_str).collect();
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let offer = self.deflate.as_ref().map(client_offer);
        let mut request = Vec::with_capacity(512);
        let key = ClientRequest {
            host: &target.host_header,
            path: &target.path,
            protocols: &protocols,
            extensions: offer.as_deref(),
            headers: &headers,
        }
        .write(&mut request);
        io.write_all(&request).await?;
        io.flush().await?;

        let mut buf = Vec::with_capacity(1024);
        let response = loop {
            if let Some(r) = parse_response(&buf, &self.limits, &key, &protocols)? {
                break r;
            }
            if io.read_buf(&mut buf).await? == 0 {
                return Err(ConnectError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        };
        let params = match &self.deflate {
            Some(cfg) => client_accept(&response.extensions, cfg)?,
            None if !response.extensions.is_empty() => {
                return Err(ConnectError::Extension(
                    ExtensionError::UnexpectedExtension(response.extensions.join(", ")),
                ))
            }
            None => None,
        };
        let leftover = buf.split_off(response.len);
        let (path, query) = match target.path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target.path.as_str(), None),
        };
        let shared = Arc::new_cyclic(|weak| Shared {
            id: crate::socket::next_id(),
            info: Info::new(
                peer,
                peer.ip(),
                path,
                query,
                None,
                response.protocol,
                params.is_some(),
            ),
            max_queue_bytes: self.max_queue_bytes,
            policy: SlowConsumerPolicy::Close,
            max_inbound_bytes: 1 << 20,
            inner: Mutex::default(),
            ended: Notify::new(),
            gate: Gate::new(),
            handler_waker: HandlerWaker::new(weak),
        });
        let mut cfg = wshub_proto::connection::Config::new(Role::Client)
            .with_limits(self.limits)
            .with_heartbeat(self.ping_interval, self.pong_timeout)
            .with_deflate(params);
        if let Some(d) = &self.deflate {
            cfg = cfg.with_compression(d.compression_level, d.min_message_size);
        }
        let conn = Connection::new(cfg, tokio::time::Instant::now().into_std());
        let ws = WebSocket::new(Arc::clone(&shared));
        let driver = Driver::new(
            io,
            DriverParts {
                conn,
                shared,
                handler: None,
                write_stall_timeout: Duration::from_secs(30),
                close_timeout: Duration::from_secs(5),
                leftover,
            },
        );
        tokio::spawn(driver.run(|| ()));
        Ok(ws)
    }
}

/// Connects to `url` with default options.
///
/// ```no_run
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// let mut ws = wshub::client::connect("ws://127.0.0.1:8080/").await?;
/// ws.send("hello")?;
/// println!("{:?}", ws.recv().await);
/// # Ok(()) }
/// ```
pub async fn connect(url: &str) -> Result<WebSocket, ConnectError> {
    ClientBuilder::new().connect(url).await
}

/// A parsed `ws://` / `wss://` URL.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    secure: bool,
    host: String,
    host_header: String,
    port: u16,
    path: String,
}

impl Target {
    fn parse(url: &str) -> Result<Target, ConnectError> {
        let bad = |reason| ConnectError::InvalidUrl {
            url: url.to_owned(),
            reason,
        };
        let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
        let secure = match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("ws") => false,
            Some(s) if s.eq_ignore_ascii_case("wss") => true,
            _ => return Err(bad("the scheme must be ws or wss")),
        };
        let auth = uri.authority().ok_or_else(|| bad("missing host"))?;
        let host = auth.host().trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        let port = auth.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let path = uri
            .path_and_query()
            .map(|p| p.as_str())
            .filter(|p| !p.is_empty())
            .unwrap_or("/")
            .to_owned();
        Ok(Target {
            secure,
            host: host.to_owned(),
            host_header: auth.as_str().to_owned(),
            port,
            path,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let t = Target::parse("ws://127.0.0.1:9000/chat?room=1").unwrap();
        assert_eq!(
            t,
            Target {
                secure: false,
                host: "127.0.0.1".into(),
                host_header: "127.0.0.1:9000".into(),
                port: 9000,
                path: "/chat?room=1".into()
            }
        );
        let t = Target::parse("wss://[::1]/").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.secure), ("::1", 443, true));
        assert_eq!(Target::parse("ws://localhost").unwrap().path, "/");
        assert!(Target::parse("http://x/").is_err());
        assert!(Target::parse("nonsense").is_err());
    }
}
