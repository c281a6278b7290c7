//! Running a hub on a listener: the accept loop (optional TLS, HTTP/1.1 with
//! upgrades, one deadline for the TLS handshake and the request head), the
//! WebSocket server settings derived from the hub's config, the per-IP
//! limiter's upkeep, and graceful shutdown.
//!
//! # Shutdown
//!
//! When the shutdown future resolves the hub starts **draining**: `/readyz`
//! answers 503 (load balancers stop sending new clients), new upgrades get
//! 503, and every session is sent a `disconnect` push and close code 4000
//! (reconnect elsewhere) — in batches of `server.drain_batch` with a random
//! pause of up to `server.drain_jitter` between batches, so that thousands of
//! clients do not all reconnect in the same millisecond. The listener keeps
//! answering HTTP meanwhile. Connections still open after
//! `server.drain_timeout` are dropped.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tower_service::Service;

use super::api::{router, App};
use super::config::{HubConfig, ProxyHeaderSetting};
use super::core::{Control, Hub};
use super::protocol::SUBPROTOCOL;
use super::ratelimit::IpLimiter;
use crate::client_ip::{ProxyHeader, TrustedProxies};
use crate::config::{Config, SlowConsumerPolicy};
use crate::Server;

/// How often idle per-IP entries are swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// The WebSocket server settings for a hub config.
pub(crate) fn server_config(config: &HubConfig, trusted: TrustedProxies) -> Config {
    let l = &config.limits;
    Config::builder()
        .max_message_size(l.max_message_size)
        .ping_interval((!l.ping_interval.is_zero()).then_some(l.ping_interval))
        .pong_timeout(l.pong_timeout)
        .close_timeout(l.close_timeout)
        .handshake_timeout(config.server.handshake_timeout)
        .shutdown_timeout(config.server.drain_timeout)
        .max_queue_bytes(l.max_queue_bytes)
        .write_stall_timeout(l.write_stall_timeout)
        .slow_consumer(SlowConsumerPolicy::Close)
        .max_connections(config.server.max_connections)
        .deflate(config.server.deflate)
        .protocols([SUBPROTOCOL])
        .trusted_proxies(trusted)
        .build()
}

/// The trusted proxies of a hub config.
pub(crate) fn trusted_proxies(config: &HubConfig) -> TrustedProxies {
    // `validate` checked the CIDRs; an error here cannot happen, and would
    // mean trusting nobody, the safe side.
    let trusted = config
        .server
        .trusted_proxies()
        .unwrap_or_else(|_| TrustedProxies::none());
    trusted.with_header(match config.server.proxy_header {
        ProxyHeaderSetting::Auto => ProxyHeader::Auto,
        ProxyHeaderSetting::Forwarded => ProxyHeader::Forwarded,
        ProxyHeaderSetting::XForwardedFor => ProxyHeader::XForwardedFor,
    })
}

impl Hub {
    /// Serves the hub on `listener` (with TLS when `tls` is given) until
    /// `shutdown` resolves, then drains and returns.
    ///
    /// Draining: `/readyz` answers 503, new upgrades get 503, and every
    /// client is sent a `disconnect` push and close code 4000 in batches of
    /// `server.drain_batch` with random pauses of up to `server.drain_jitter`;
    /// HTTP keeps being answered meanwhile. Connections still open after
    /// `server.drain_timeout` are dropped.
    pub async fn serve(
        &self,
        listener: TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        let config = self.config();
        let trusted = trusted_proxies(config);
        let server = Server::new(server_config(config, trusted.clone()));
        let limits = &config.limits;
        let limiter = Arc::new(IpLimiter::new(
            limits.max_connections_per_ip,
            limits.handshake_rate_per_ip,
            limits.handshake_burst_per_ip,
        ));
        let app = App {
            hub: self.clone(),
            server: server.clone(),
            limiter: Arc::clone(&limiter),
            trusted,
        };
        let router = router(app);
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let handshake_timeout = config.server.handshake_timeout;
        let maintenance = self.spawn_maintenance();
        let sweeper = {
            let limiter = Arc::downgrade(&limiter);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(SWEEP_INTERVAL);
                loop {
                    tick.tick().await;
                    let Some(l) = limiter.upgrade() else { return };
                    l.sweep(Instant::now());
                }
            })
        };
        drop(limiter);

        let accept = |tcp: TcpStream, peer: SocketAddr| {
            let router = router.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let service =
                    hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                        req.extensions_mut()
                            .insert(axum::extract::ConnectInfo(peer));
                        let mut router = router.clone();
                        async move { router.call(req).await }
                    });
                let mut http = hyper::server::conn::http1::Builder::new();
                http.timer(TokioTimer::new())
                    .header_read_timeout(handshake_timeout);
                match acceptor {
                    Some(acceptor) => {
                        match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                            Ok(Ok(tls)) => serve_http(&http, tls, service, peer).await,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed")
                            }
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        }
                    }
                    None => serve_http(&http, tcp, service, peer).await,
                }
            });
        };

        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                res = listener.accept() => match res {
                    Ok((tcp, peer)) => accept(tcp, peer),
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }

        // Drain while still answering HTTP (readiness says 503).
        tracing::info!(
            connections = server.active_connections(),
            "shutting down: draining clients"
        );
        self.inner.draining.store(true, Ordering::Release);
        self.metrics().set_draining(true);
        server.start_draining();
        let drain = async {
            self.control_all_batched(
                config.server.drain_batch,
                config.server.drain_jitter,
                || Control::Disconnect {
                    code: crate::close_codes::SHUTDOWN.0,
                    reason: "shutdown".into(),
                },
            )
            .await;
            // Connections that never sent `connect` have no session entry.
            for ws in server.clients().all() {
                if !self.has_session(ws.id()) {
                    Hub::close_with_push(&ws, crate::close_codes::SHUTDOWN.0, "shutdown");
                }
            }
            server.wait_closed(config.server.drain_timeout).await
        };
        let drained = {
            tokio::pin!(drain);
            loop {
                tokio::select! {
                    done = &mut drain => break done,
                    res = listener.accept() => if let Ok((tcp, peer)) = res { accept(tcp, peer) },
                }
            }
        };
        if !drained {
            tracing::warn!(
                remaining = server.active_connections(),
                "drain timeout: dropping the remaining connections"
            );
            server.clients().terminate_all();
            server.wait_closed(Duration::from_secs(1)).await;
        }
        maintenance.abort();
        sweeper.abort();
        tracing::info!("shutdown complete");
        Ok(())
    }
}

/// Serves HTTP/1.1 (with upgrades) on one accepted connection, plain or TLS.
async fn serve_http<I, S>(
    http: &hyper::server::conn::http1::Builder,
    io: I,
    service: S,
    peer: SocketAddr,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = http
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
    }
}
