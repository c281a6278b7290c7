//! [`Server`]: accepts TCP (optionally TLS) connections on a bound listener,
//! performs the upgrade handshake with the sans-IO parser, and runs one driver task
//! per connection until a shutdown future resolves; then closes every client with
//! 1001 and waits, bounded, for them to go.
//!
//! The same accept path (limits, subprotocol, permessage-deflate, client IP,
//! application check) serves connections upgraded by hyper or axum
//! ([`crate::upgrade`]), so an app on a shared port behaves exactly like the
//! standalone server.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use wshub_proto::deflate::{server_negotiate, DeflateParams};
use wshub_proto::handshake::{parse_request, HandshakeError, UpgradeRequest};
use wshub_proto::{CloseCode, Connection, Role};

use crate::client_ip::resolve_client_ip;
use crate::config::Config;
use crate::driver::{Driver, DriverParts};
use crate::headers::RequestHeaders;
use crate::registry::Clients;
use crate::socket::{Gate, HandlerWaker, Info, Shared, WebSocket};

/// A refused upgrade: the HTTP status and a plain-text reason for the body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {reason}")]
pub struct Rejection {
    /// HTTP status code (400, 403, 426, 429, 431, 503 …).
    pub status: u16,
    /// Human-readable reason, sent as the response body.
    pub reason: String,
}

impl Rejection {
    /// A rejection with `status` and `reason`.
    pub fn new(status: u16, reason: impl Into<String>) -> Rejection {
        Rejection {
            status,
            reason: reason.into(),
        }
    }

    /// Headers the status requires: `426` names the protocol and version to
    /// upgrade to (RFC 9110 §15.5.22, RFC 6455 §4.4), `405` the allowed method.
    pub fn required_headers(&self) -> &'static [(&'static str, &'static str)] {
        match self.status {
            426 => &[("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")],
            405 => &[("Allow", "GET")],
            _ => &[],
        }
    }

    /// Writes this rejection as a raw HTTP/1.1 response.
    pub fn write_response(&self, out: &mut Vec<u8>) {
        wshub_proto::handshake::write_reject_response(
            out,
            self.status,
            &self.reason,
            self.required_headers(),
        );
    }
}

impl From<HandshakeError> for Rejection {
    fn from(e: HandshakeError) -> Rejection {
        Rejection::new(e.status(), e.to_string())
    }
}

/// What an application check sees of an upgrade request (see
/// [`Server::check_request`]).
#[derive(Debug)]
pub struct HandshakeRequest<'a> {
    /// Request path without the query.
    pub path: &'a str,
    /// Query string without `?`.
    pub query: Option<&'a str>,
    /// The `Origin` header (browsers always send it).
    pub origin: Option<&'a str>,
    /// The resolved client IP.
    pub client_ip: IpAddr,
    /// The request headers but the handshake's own
    /// ([`HANDSHAKE_FIELDS`](crate::headers::HANDSHAKE_FIELDS)), which the
    /// server has checked.
    pub headers: &'a RequestHeaders,
}

type Check = Arc<dyn Fn(&HandshakeRequest<'_>) -> Result<(), Rejection> + Send + Sync>;

/// The connection handler: called once per accepted WebSocket.
pub(crate) type Handler =
    Arc<dyn Fn(WebSocket) -> crate::driver::HandlerFuture + Send + Sync + 'static>;

/// A WebSocket server. Cheap to clone; clones share connections and settings.
///
/// ```no_run
/// # async fn f() -> std::io::Result<()> {
/// use wshub::{Config, Server};
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// let server = Server::new(Config::default());
/// let handler = |mut ws: wshub::WebSocket| async move {
///     ws.send("something").ok();
///     while let Some(msg) = ws.recv().await {
///         println!("received: {msg}");
///     }
/// };
/// let shutdown = async {
///     let _ = tokio::signal::ctrl_c().await;
/// };
/// server.serve(listener, handler, shutdown).await
/// # }
/// ```
#[derive(Clone)]
pub struct Server {
    inner: Arc<ServerInner>,
}

struct ServerInner {
    config: Config,
    /// The protocol settings of every connection without permessage-deflate,
    /// shared rather than copied into each.
    conn_config: Arc<wshub_proto::connection::Config>,
    clients: Clients,
    /// Open connections plus upgrades accepted and not yet open: reserved
    /// atomically so concurrent upgrades cannot overshoot `max_connections`.
    slots: AtomicUsize,
    active: AtomicUsize,
    idle: Notify,
    draining: AtomicBool,
    check: Mutex<Option<Check>>,
    #[cfg(feature = "tls")]
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("config", &self.inner.config)
            .field("connections", &self.inner.clients.len())
            .finish_non_exhaustive()
    }
}

/// Counts a connection (from accept to the end of its driver) while alive.
pub(crate) struct ActiveGuard(Arc<ServerInner>);

impl ActiveGuard {
    fn new(inner: &Arc<ServerInner>) -> ActiveGuard {
        inner.active.fetch_add(1, Ordering::AcqRel);
        ActiveGuard(Arc::clone(inner))
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// A reserved connection slot, released when dropped.
pub(crate) struct Slot(Arc<ServerInner>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.slots.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The outcome of the accept checks: what to answer in the 101 response, and
/// the connection slot it holds.
pub(crate) struct Accepted {
    pub(crate) protocol: Option<String>,
    pub(crate) deflate: Option<(DeflateParams, String)>,
    pub(crate) slot: Slot,
}

/// Releases a connection's registry entry and wakes its waiters however the
/// connection task ends, panics included.
struct Registered {
    clients: Clients,
    shared: Arc<Shared>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.clients.remove(self.shared.id);
        self.shared.mark_ended(crate::Disconnect::Terminated);
    }
}

/// Facts of one upgrade request, gathered by whichever HTTP layer parsed it.
pub(crate) struct RequestFacts {
    pub(crate) peer: SocketAddr,
    pub(crate) client_ip: IpAddr,
    pub(crate) path: String,
    pub(crate) query: Option<String>,
    pub(crate) headers: RequestHeaders,
}

impl Server {
    /// A server with `config`.
    pub fn new(config: Config) -> Server {
        Server::build(config, None)
    }

    /// A server that speaks TLS (wss://) with `tls` on every accepted connection.
    #[cfg(feature = "tls")]
    pub fn with_tls(config: Config, tls: Arc<rustls::ServerConfig>) -> Server {
        Server::build(config, Some(tokio_rustls::TlsAcceptor::from(tls)))
    }

    fn build(
        config: Config,
        #[cfg(feature = "tls")] tls: Option<tokio_rustls::TlsAcceptor>,
        #[cfg(not(feature = "tls"))] _tls: Option<()>,
    ) -> Server {
        Server {
            inner: Arc::new(ServerInner {
                conn_config: Arc::new(
                    config
                        .conn_config(Role::Server)
                        .with_deferred_error_close(true),
                ),
                config,
                clients: Clients::default(),
                slots: AtomicUsize::new(0),
                active: AtomicUsize::new(0),
                idle: Notify::new(),
                draining: AtomicBool::new(false),
                check: Mutex::new(None),
                #[cfg(feature = "tls")]
                tls,
            }),
        }
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The open connections.
    pub fn clients(&self) -> &Clients {
        &self.inner.clients
    }

    /// Connections being handshaked or open.
    pub fn active_connections(&self) -> usize {
        self.inner.active.load(Ordering::Acquire)
    }

    /// Whether [`shutdown`](Self::shutdown) has begun (new upgrades get 503).
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// Installs an application check run on every upgrade request after the
    /// protocol checks (authentication, an Origin allow-list …). Returning a
    /// [`Rejection`] refuses the upgrade with its status and reason.
    pub fn check_request(
        &self,
        check: impl Fn(&HandshakeRequest<'_>) -> Result<(), Rejection> + Send + Sync + 'static,
    ) {
        let mut slot = self.inner.check.lock().unwrap_or_else(|p| p.into_inner());
        *slot = Some(Arc::new(check));
    }

    /// Accepts connections from `listener` until `shutdown` resolves, calling
    /// `handler` with each new WebSocket (in the connection's own task). Then
    /// runs [`shutdown`](Self::shutdown).
    pub async fn serve<H, F>(
        &self,
        listener: TcpListener,
        handler: H,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()>
    where
        H: Fn(WebSocket) -> F + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let handler = into_handler(handler);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                res = listener.accept() => match res {
                    Ok((tcp, peer)) => {
                        let this = self.clone();
                        let handler = Arc::clone(&handler);
                        let guard = ActiveGuard::new(&self.inner);
                        tokio::spawn(this.handle_tcp(tcp, peer, handler, guard));
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        drop(listener);
        self.shutdown().await;
        Ok(())
    }

    /// Starts draining without closing anyone: from now on new upgrades get
    /// 503. For applications that close their clients themselves (the hub
    /// closes in batches, with its own close code) and then call
    /// [`wait_closed`](Self::wait_closed).
    pub fn start_draining(&self) {
        self.inner.draining.store(true, Ordering::Release);
    }

    /// Waits until every connection has ended or `timeout` has passed;
    /// returns whether all ended.
    pub async fn wait_closed(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.wait_idle())
            .await
            .is_ok()
    }

    /// Graceful shutdown: new upgrades get 503, every client is sent close 1001,
    /// and after [`shutdown_timeout`](crate::config::Builder::shutdown_timeout)
    /// the remaining connections are dropped.
    pub async fn shutdown(&self) {
        self.inner.draining.store(true, Ordering::Release);
        self.inner
            .clients
            .close_all(CloseCode::GOING_AWAY, "server shutting down");
        let timeout = self.inner.config.shutdown_timeout;
        if tokio::time::timeout(timeout, self.wait_idle())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = self.active_connections(),
                "shutdown timeout: dropping remaining connections"
            );
            self.inner.clients.terminate_all();
            let _ = tokio::time::timeout(Duration::from_secs(1), self.wait_idle()).await;
        }
    }

    async fn wait_idle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            if self.active_connections() == 0 {
                return;
            }
            notified.await;
        }
    }

    // Each accepted connection is two tasks. The first runs TLS (if any)
    // and the upgrade handshake; once upgraded, it spawns the second, which
    // runs the connection and is built eagerly around the driver, so that an
    // open connection's task holds the driver and little else. (As one task,
    // each nested `async` layer kept its by-value captures for the
    // connection's whole life, rust-lang/rust#62958: 376 of the 896 bytes
    // of every idle connection's future.)

    /// One accepted TCP connection's opening task: TLS (if configured) and
    /// the upgrade; it spawns the connection's own task.
    #[allow(clippy::manual_async_fn)] // an async block on purpose (rust-lang/rust#62958)
    fn handle_tcp(
        self,
        tcp: TcpStream,
        peer: SocketAddr,
        handler: Handler,
        guard: ActiveGuard,
    ) -> impl Future<Output = ()> + Send + 'static {
        async move {
            let _ = tcp.set_nodelay(true);
            // One deadline covers the TLS handshake and the upgrade request.
            let deadline = tokio::time::Instant::now() + self.inner.config.handshake_timeout;
            #[cfg(feature = "tls")]
            if let Some(acceptor) = self.inner.tls.clone() {
                // Boxed: rustls' handshake state is far larger than a plain
                // upgrade's, and an unboxed branch would size every plain
                // connection's opening task for it.
                return Box::pin(self.handle_tls(acceptor, tcp, peer, handler, guard, deadline))
                    .await;
            }
            self.spawn_connection(tcp, peer, handler, guard, deadline)
                .await;
        }
    }

    #[cfg(feature = "tls")]
    async fn handle_tls(
        &self,
        acceptor: tokio_rustls::TlsAcceptor,
        tcp: TcpStream,
        peer: SocketAddr,
        handler: Handler,
        guard: ActiveGuard,
        deadline: tokio::time::Instant,
    ) {
        match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => {
                self.spawn_connection(tls, peer, handler, guard, deadline)
                    .await
            }
            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
        }
    }

    /// Runs the upgrade handshake and then the connection on an accepted stream
    /// (for custom accept loops). TLS, if any, must already be done.
    pub async fn accept_stream<S, H, F>(&self, io: S, peer: SocketAddr, handler: H)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        H: Fn(WebSocket) -> F + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let guard = ActiveGuard::new(&self.inner);
        let deadline = tokio::time::Instant::now() + self.inner.config.handshake_timeout;
        if let Some(run) = self
            .open(io, peer, into_handler(handler), guard, deadline)
            .await
        {
            run.await;
        }
    }

    /// Upgrades `io`; on success, spawns the connection's own task.
    async fn spawn_connection<S>(
        &self,
        io: S,
        peer: SocketAddr,
        handler: Handler,
        guard: ActiveGuard,
        deadline: tokio::time::Instant,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        if let Some(run) = self.open(io, peer, handler, guard, deadline).await {
            tokio::spawn(run);
        }
    }

    /// Upgrades `io`; on success, the future that runs the connection.
    async fn open<S>(
        &self,
        io: S,
        peer: SocketAddr,
        handler: Handler,
        guard: ActiveGuard,
        deadline: tokio::time::Instant,
    ) -> Option<impl Future<Output = ()> + Send + 'static + use<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (io, registration, leftover) = self.handshake(io, peer, deadline).await?;
        Some(self.connection(io, registration, leftover, handler, guard))
    }

    /// Reads and answers the upgrade request; `None` when the connection
    /// was rejected or lost.
    async fn handshake<S>(
        &self,
        mut io: S,
        peer: SocketAddr,
        deadline: tokio::time::Instant,
    ) -> Option<(S, Registration, Vec<u8>)>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let config = &self.inner.config;
        let read = tokio::time::timeout_at(deadline, read_head(&mut io, config)).await;
        let (req, mut buf) = match read {
            Err(_) => {
                tracing::debug!(%peer, "upgrade request timed out");
                let rej = Rejection::new(408, "upgrade request not received in time");
                reject(io, &rej).await;
                return None;
            }
            Ok(Err(HeadError::Io)) => return None,
            Ok(Err(HeadError::Reject(e))) => {
                tracing::debug!(%peer, error = %e, "bad upgrade request");
                reject(io, &Rejection::from(e)).await;
                return None;
            }
            Ok(Ok(x)) => x,
        };
        let upgrade = match req.validate_upgrade() {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "bad upgrade request");
                reject(io, &Rejection::from(e)).await;
                return None;
            }
        };
        let headers = RequestHeaders::from_upgrade_request(req.iter_headers());
        let facts = RequestFacts {
            peer,
            client_ip: resolve_client_ip(peer.ip(), req.iter_headers(), &config.trusted_proxies),
            path: req.path().to_owned(),
            query: req.query().map(str::to_owned),
            headers,
        };
        let accepted = match self.accept_upgrade(&upgrade, &facts) {
            Ok(a) => a,
            Err(rej) => {
                tracing::info!(%peer, client_ip = %facts.client_ip, status = rej.status, reason = %rej.reason, "upgrade rejected");
                reject(io, &rej).await;
                return None;
            }
        };
        let mut response = Vec::with_capacity(256);
        upgrade.write_accept(
            &mut response,
            accepted.protocol.as_deref(),
            accepted.deflate.as_ref().map(|(_, h)| h.as_str()),
            &[],
        );
        let registration = self.register(facts, accepted);
        if io.write_all(&response).await.is_err() || io.flush().await.is_err() {
            return None;
        }
        let leftover = buf.split_off(req.len);
        Some((io, registration, leftover))
    }

    /// The checks every upgrade goes through, whichever HTTP layer parsed it.
    pub(crate) fn accept_upgrade(
        &self,
        upgrade: &UpgradeRequest,
        facts: &RequestFacts,
    ) -> Result<Accepted, Rejection> {
        let config = &self.inner.config;
        if self.is_draining() {
            return Err(Rejection::new(503, "server is shutting down"));
        }
        let max = config.max_connections;
        if self
            .inner
            .slots
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_err()
        {
            return Err(Rejection::new(503, "too many connections"));
        }
        let slot = Slot(Arc::clone(&self.inner));
        let protocol = config.choose_protocol(&upgrade.protocols);
        if protocol.is_none() && config.require_protocol {
            let supported = config.protocols.join(", ");
            return Err(Rejection::new(
                400,
                format!("no supported subprotocol offered (supported: {supported})"),
            ));
        }
        let check = self
            .inner
            .check
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(check) = check {
            check(&HandshakeRequest {
                path: &facts.path,
                query: facts.query.as_deref(),
                origin: upgrade.origin.as_deref(),
                client_ip: facts.client_ip,
                headers: &facts.headers,
            })?;
        }
        let deflate = config
            .deflate
            .as_ref()
            .and_then(|d| server_negotiate(&upgrade.extensions, d));
        Ok(Accepted {
            protocol,
            deflate,
            slot,
        })
    }

    /// Registers an accepted connection, before its 101 response is written: a
    /// broadcast that races with the handshake is queued and follows the 101 on
    /// the wire instead of missing the new client.
    pub(crate) fn register(&self, facts: RequestFacts, accepted: Accepted) -> Registration {
        let config = &self.inner.config;
        let params = accepted.deflate.map(|(p, _)| p);
        let shared = Arc::new_cyclic(|weak| Shared {
            id: crate::socket::next_id(),
            info: Info::new(
                facts.peer,
                facts.client_ip,
                &facts.path,
                facts.query.as_deref(),
                config.keep_headers.then_some(facts.headers),
                accepted.protocol,
                params.is_some(),
            ),
            max_queue_bytes: config.max_queue_bytes,
            policy: config.slow_consumer,
            max_inbound_bytes: config.max_inbound_bytes,
            inner: Mutex::default(),
            ended: Notify::new(),
            gate: Gate::new(),
            handler_waker: HandlerWaker::new(weak),
        });
        self.inner.clients.insert(Arc::clone(&shared));
        Registration {
            registered: Registered {
                clients: self.inner.clients.clone(),
                shared,
            },
            params,
            _slot: accepted.slot,
        }
    }

    /// The future that runs a registered, upgraded connection to its end:
    /// a connection's own task. Its state is the driver's run and the
    /// registration (see the note above `handle_tcp`).
    pub(crate) fn connection<S>(
        &self,
        io: S,
        registration: Registration,
        leftover: Vec<u8>,
        handler: Handler,
        guard: ActiveGuard,
    ) -> impl Future<Output = ()> + Send + 'static + use<S>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let shared = &registration.registered.shared;
        tracing::debug!(
            id = shared.id,
            peer = %shared.info.peer_addr,
            client_ip = %shared.info.client_ip,
            "connection open"
        );
        // The registration and the guard live in the run's `on_end`: an
        // `async` block around the run would store the run future twice
        // (its capture and the awaited copy, rust-lang/rust#62958).
        let driver = self.driver(io, &registration, leftover, handler);
        driver.run(move || {
            let shared = &registration.registered.shared;
            if let Some(reason) = shared.ended_reason() {
                tracing::debug!(id = shared.id, client_ip = %shared.info.client_ip, %reason, "connection closed");
            }
            drop(registration);
            drop(guard);
        })
    }
}

impl Server {
    fn driver<S>(
        &self,
        io: S,
        registration: &Registration,
        leftover: Vec<u8>,
        handler: Handler,
    ) -> Driver<S>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let config = &self.inner.config;
        let shared = Arc::clone(&registration.registered.shared);
        let conn_config = match registration.params {
            None => Arc::clone(&self.inner.conn_config),
            Some(p) => Arc::new((*self.inner.conn_config).clone().with_deflate(Some(p))),
        };
        let conn = Connection::new(conn_config, tokio::time::Instant::now().into_std());
        let ws = WebSocket::new(Arc::clone(&shared));
        Driver::new(
            io,
            DriverParts {
                conn,
                shared,
                handler: Some(handler(ws)),
                write_stall_timeout: config.write_stall_timeout,
                close_timeout: config.close_timeout,
                leftover,
            },
        )
    }
}

/// A connection in the registry, holding its slot; dropping it deregisters.
pub(crate) struct Registration {
    registered: Registered,
    params: Option<DeflateParams>,
    _slot: Slot,
}

pub(crate) fn into_handler<H, F>(handler: H) -> Handler
where
    H: Fn(WebSocket) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    Arc::new(move |ws| Box::pin(handler(ws)))
}

pub(crate) fn active_guard(server: &Server) -> ActiveGuard {
    ActiveGuard::new(&server.inner)
}

enum HeadError {
    Io,
    Reject(HandshakeError),
}

/// Reads until a complete request head is buffered (bytes after it are kept for
/// the connection).
async fn read_head<S: AsyncRead + Unpin>(
    io: &mut S,
    config: &Config,
) -> Result<(wshub_proto::handshake::Request, Vec<u8>), HeadError> {
    let limits = config.limits();
    let mut buf = Vec::with_capacity(1024);
    loop {
        if let Some(req) = parse_request(&buf, limits).map_err(HeadError::Reject)? {
            return Ok((req, buf));
        }
        if buf.len() == buf.capacity() {
            buf.reserve(buf.capacity().min(limits.max_header_bytes));
        }
        let n = io.read_buf(&mut buf).await.map_err(|_| HeadError::Io)?;
        if n == 0 {
            return Err(HeadError::Io);
        }
    }
}

async fn reject<S: AsyncWrite + Unpin>(mut io: S, rej: &Rejection) {
    let mut out = Vec::with_capacity(256);
    rej.write_response(&mut out);
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        io.write_all(&out).await?;
        io.shutdown().await
    })
    .await;
}

/// A connection from `peer` registered with `server` without a handshake,
/// for tests that need its state or a [`WebSocket`] handle to it.
#[cfg(test)]
pub(crate) fn test_registration(server: &Server, peer: SocketAddr) -> Registration {
    server.register(
        RequestFacts {
            peer,
            client_ip: peer.ip(),
            path: "/".to_owned(),
            query: None,
            headers: RequestHeaders::from_pairs([("Host", &b"example.com"[..])]),
        },
        Accepted {
            protocol: None,
            deflate: None,
            slot: {
                server.inner.slots.fetch_add(1, Ordering::AcqRel);
                Slot(Arc::clone(&server.inner))
            },
        },
    )
}

#[cfg(test)]
impl Registration {
    /// A handle to the registered connection.
    pub(crate) fn websocket(&self) -> WebSocket {
        WebSocket::new(Arc::clone(&self.registered.shared))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle connection costs its task's future: keep it small. (It was
    /// 22.5 KB in a release build when the TLS branch, the handshake state,
    /// a close buffer and double-stored `async fn` arguments were all in it;
    /// 1.2 KB after, 896 B with the handshake's captures still in it, and
    /// 520 B as a task of its own; 528 B in a debug build.)
    #[tokio::test]
    async fn a_connection_task_is_small() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (_client, (tcp, peer)) = (client.unwrap(), server.unwrap());
        let server = Server::new(Config::default());
        let handler = into_handler(|_ws: WebSocket| async {});
        let guard = ActiveGuard::new(&server.inner);
        let registration = test_registration(&server, peer);
        let task = server.connection(tcp, registration, Vec::new(), handler, guard);
        let size = std::mem::size_of_val(&task);
        eprintln!("connection task: {size} bytes");
        // tokio allocates a task as one 128-byte-aligned cell: a 32-byte
        // header, 16 bytes of scheduler and id, the future plus an 8-byte
        // stage tag, a 48-byte trailer (tokio 1.54). Up to 536 bytes of
        // future, that is 640 bytes a connection; 8 more would make it 768.
        assert!(size <= 536, "a connection's task is {size} bytes");
    }

    /// The other per-connection allocation: the state shared by the driver,
    /// the handles and the registry (488 bytes with a `HeaderMap` and a
    /// `String` each for path, query and subprotocol in it; 360 after).
    #[test]
    fn shared_state_is_small() {
        let shared = std::mem::size_of::<Shared>();
        eprintln!(
            "Shared {shared} B (Info {} B, Inner {} B), Connection {} B",
            std::mem::size_of::<Info>(),
            std::mem::size_of::<crate::socket::Inner>(),
            std::mem::size_of::<Connection>(),
        );
        assert!(shared <= 400, "Shared is {shared} bytes");
    }
}
