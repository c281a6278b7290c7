//! WebSocket on the same port as an HTTP app: upgrade a request that hyper (1.x)
//! or axum (0.8) already parsed.
//!
//! Validation, limits, subprotocol and permessage-deflate negotiation, the client
//! IP and the application check are the [`Server`]'s, so a connection accepted
//! here is indistinguishable from one accepted by [`Server::serve`]; it shows up in
//! [`Server::clients`] and is closed by [`Server::shutdown`].
//!
//! With plain hyper, call [`upgrade`] from your service and return its response.
//! With axum, take [`WebSocketUpgrade`] as an extractor and return
//! [`WebSocketUpgrade::on_upgrade`].

use std::future::Future;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use wshub_proto::handshake::{validate_upgrade, UpgradeRequest};

use crate::client_ip::resolve_client_ip;
use crate::headers::RequestHeaders;
use crate::server::{
    into_handler, Accepted, ActiveGuard, Handler, Registration, Rejection, RequestFacts, Server,
};
use crate::WebSocket;

/// The placeholder peer address used when the HTTP layer did not record one.
const UNKNOWN_PEER: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

impl Rejection {
    /// This rejection as an HTTP response with a plain-text body.
    pub fn to_response(&self) -> Response<Full<Bytes>> {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        let mut res = Response::new(Full::new(Bytes::from(format!("{}\n", self.reason))));
        *res.status_mut() = status;
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        for (name, value) in self.required_headers() {
            h.insert(*name, HeaderValue::from_static(value));
        }
        res
    }
}

/// A validated upgrade request, not yet answered.
struct Pending {
    upgrade: UpgradeRequest,
    facts: RequestFacts,
    on_upgrade: OnUpgrade,
}

fn prepare(
    server: &Server,
    method: &http::Method,
    uri: &http::Uri,
    headers: &http::HeaderMap,
    peer: Option<SocketAddr>,
    on_upgrade: Option<OnUpgrade>,
) -> Result<Pending, Rejection> {
    let upgrade = validate_upgrade(
        method.as_str(),
        headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())),
    )?;
    let on_upgrade = on_upgrade.ok_or_else(|| {
        Rejection::new(
            426,
            "this connection cannot be upgraded (HTTP/1.1 with upgrades required)",
        )
    })?;
    let peer = peer.unwrap_or(UNKNOWN_PEER);
    let client_ip = resolve_client_ip(
        peer.ip(),
        headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())),
        server.config().trusted_proxies(),
    );
    Ok(Pending {
        upgrade,
        facts: RequestFacts {
            peer,
            client_ip,
            path: uri.path().to_owned(),
            query: uri.query().map(str::to_owned),
            headers: RequestHeaders::from_upgrade_request(
                headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())),
            ),
        },
        on_upgrade,
    })
}

fn accept(
    server: &Server,
    pending: Pending,
    handler: Handler,
) -> Result<Response<Full<Bytes>>, Rejection> {
    let accepted: Accepted = server.accept_upgrade(&pending.upgrade, &pending.facts)?;
    let mut res = Response::new(Full::new(Bytes::new()));
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(v) = HeaderValue::from_str(&pending.upgrade.accept_key()) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Some(Ok(v)) = accepted.protocol.as_deref().map(HeaderValue::from_str) {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, v);
    }
    if let Some(Ok(v)) = accepted
        .deflate
        .as_ref()
        .map(|(_, s)| HeaderValue::from_str(s))
    {
        h.insert(header::SEC_WEBSOCKET_EXTENSIONS, v);
    }
    let server = server.clone();
    let guard = crate::server::active_guard(&server);
    let Pending {
        facts, on_upgrade, ..
    } = pending;
    let registration = server.register(facts, accepted);
    tokio::spawn(async move {
        match on_upgrade.await {
            // The connection gets a task of its own, sized for the driver
            // alone (this one also holds the upgrade's state).
            Ok(upgraded) => spawn_connection(server, upgraded, registration, handler, guard),
            Err(e) => tracing::debug!(error = %e, "HTTP upgrade failed"),
        }
    });
    Ok(res)
}

/// Runs an upgraded connection on a task of its own.
///
/// When hyper was serving a plain `TcpStream`, or rustls over one, through
/// hyper-util's `TokioIo` (as `axum::serve` and `wshub serve` do), the stream
/// is taken back out of hyper's `Upgraded`, together with any bytes hyper
/// read past the request. The connection then reads and writes the socket
/// directly instead of through `Upgraded`'s boxed trait object and its rewind
/// buffer: no dynamic call per read and write, and one allocation less per
/// connection. Any other transport runs through `Upgraded` as it is.
fn spawn_connection(
    server: Server,
    upgraded: Upgraded,
    registration: Registration,
    handler: Handler,
    guard: ActiveGuard,
) {
    let conn = Upgrading {
        server,
        registration,
        handler,
        guard,
    };
    let upgraded = match take_stream::<TcpStream>(upgraded) {
        Ok((io, leftover)) => return conn.spawn(io, leftover),
        Err(upgraded) => upgraded,
    };
    #[cfg(feature = "tls")]
    let upgraded = match take_stream::<crate::tls::TlsStream<TcpStream>>(upgraded) {
        Ok((io, leftover)) => return conn.spawn(io, leftover),
        Err(upgraded) => upgraded,
    };
    conn.spawn(TokioIo::new(upgraded), Vec::new());
}

/// What a connection needs besides its stream, once hyper has upgraded it.
struct Upgrading {
    server: Server,
    registration: Registration,
    handler: Handler,
    guard: ActiveGuard,
}

impl Upgrading {
    fn spawn<S>(self, io: S, leftover: Vec<u8>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Upgrading {
            server,
            registration,
            handler,
            guard,
        } = self;
        tokio::spawn(server.connection(io, registration, leftover, handler, guard));
    }
}

/// The stream under `upgraded` if hyper was serving it as `TokioIo<S>`, and the
/// bytes hyper had read past the request; `upgraded` back otherwise.
fn take_stream<S>(upgraded: Upgraded) -> Result<(S, Vec<u8>), Upgraded>
where
    TokioIo<S>: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
{
    let parts = upgraded.downcast::<TokioIo<S>>()?;
    Ok((parts.io.into_inner(), parts.read_buf.to_vec()))
}

/// Upgrades a hyper request to a WebSocket run by `server`, calling `handler` with
/// it once hyper hands over the connection. Returns the response to send: `101`,
/// or the rejection's status and reason.
///
/// `peer` is the TCP peer address (for [`WebSocket::client_ip`]); pass it from
/// your accept loop. The hyper connection must be served `with_upgrades()`.
pub fn upgrade<B, H, F>(
    server: &Server,
    req: &mut http::Request<B>,
    peer: Option<SocketAddr>,
    handler: H,
) -> Response<Full<Bytes>>
where
    H: Fn(WebSocket) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let on_upgrade = req.extensions_mut().remove::<OnUpgrade>();
    let result = prepare(
        server,
        req.method(),
        req.uri(),
        req.headers(),
        peer,
        on_upgrade,
    )
    .and_then(|p| accept(server, p, into_handler(handler)));
    result.unwrap_or_else(|rej| rej.to_response())
}

/// Whether a request asks for a WebSocket upgrade (to route it without
/// consuming it).
pub fn is_upgrade_request<B>(req: &http::Request<B>) -> bool {
    req.headers()
        .get_all(header::UPGRADE)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

#[cfg(feature = "axum")]
mod axum_impl {
    use super::*;
    use axum::extract::{ConnectInfo, FromRequestParts};
    use axum::response::{IntoResponse, Response as AxumResponse};
    use http::request::Parts;

    impl IntoResponse for Rejection {
        fn into_response(self) -> AxumResponse {
            self.to_response().map(axum::body::Body::new)
        }
    }

    /// Axum extractor for a WebSocket upgrade request.
    ///
    /// Rejects non-upgrade requests with the [`Rejection`] of the failed check
    /// (e.g. 426 when `Upgrade: websocket` is missing); take
    /// `Result<WebSocketUpgrade, Rejection>` to serve plain HTTP on the same route.
    /// The client IP comes from `ConnectInfo<SocketAddr>` when the app is served
    /// with `into_make_service_with_connect_info::<SocketAddr>()`.
    ///
    /// ```no_run
    /// use axum::{routing::get, Router, response::Response};
    /// use wshub::{Config, Server, upgrade::WebSocketUpgrade};
    ///
    /// let server = Server::new(Config::default());
    /// let app: Router = Router::new().route("/ws", get(move |ws: WebSocketUpgrade| {
    ///     let server = server.clone();
    ///     async move {
    ///         ws.on_upgrade(&server, |ws| async move {
    ///             ws.send("something").ok();
    ///         })
    ///     }
    /// }));
    /// ```
    #[derive(Debug)]
    pub struct WebSocketUpgrade {
        method: http::Method,
        uri: http::Uri,
        headers: http::HeaderMap,
        peer: Option<SocketAddr>,
        on_upgrade: Option<OnUpgrade>,
        validated: UpgradeRequest,
    }

    impl<S: Send + Sync> FromRequestParts<S> for WebSocketUpgrade {
        type Rejection = Rejection;

        async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Rejection> {
            let validated = validate_upgrade(
                parts.method.as_str(),
                parts
                    .headers
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_bytes())),
            )?;
            let peer = parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0);
            Ok(WebSocketUpgrade {
                method: parts.method.clone(),
                uri: parts.uri.clone(),
                headers: parts.headers.clone(),
                peer,
                on_upgrade: parts.extensions.remove::<OnUpgrade>(),
                validated,
            })
        }
    }

    impl WebSocketUpgrade {
        /// The subprotocols the client offers.
        pub fn protocols(&self) -> &[String] {
            &self.validated.protocols
        }

        /// The `Origin` header.
        pub fn origin(&self) -> Option<&str> {
            self.validated.origin.as_deref()
        }

        /// Accepts the upgrade with `server`'s settings and runs `handler` on the
        /// new WebSocket. Returns `101`, or the rejection (e.g. 503 while the
        /// server drains).
        pub fn on_upgrade<H, F>(self, server: &Server, handler: H) -> AxumResponse
        where
            H: Fn(WebSocket) -> F + Send + Sync + 'static,
            F: Future<Output = ()> + Send + 'static,
        {
            let result = prepare(
                server,
                &self.method,
                &self.uri,
                &self.headers,
                self.peer,
                self.on_upgrade,
            )
            .and_then(|p| accept(server, p, into_handler(handler)));
            match result {
                Ok(res) => res.map(axum::body::Body::new),
                Err(rej) => rej.into_response(),
            }
        }
    }
}

#[cfg(feature = "axum")]
pub use axum_impl::WebSocketUpgrade;
