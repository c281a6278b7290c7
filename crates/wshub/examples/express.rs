//! Seed: "websocket In express" — an HTTP app (axum) and WebSocket on one port.
//! Any plain HTTP GET answers `{"msg":"hello"}`; a WebSocket client gets
//! `something`, and the server logs the client IP: the socket address, or the
//! `X-Forwarded-For` client when the peer is a trusted proxy (loopback here).
//!
//! ```text
//! cargo run --release --example express -- 127.0.0.1:8080
//! ```
mod common;

use std::net::SocketAddr;

use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::Router;
use wshub::client_ip::{ProxyHeader, TrustedProxies};
use wshub::upgrade::WebSocketUpgrade;
use wshub::{Config, Rejection, Server};

async fn app(server: Server, upgrade: Result<WebSocketUpgrade, Rejection>) -> Response {
    match upgrade {
        Ok(ws) => ws.on_upgrade(&server, |mut ws| async move {
            println!("websocket client ip: {}", ws.client_ip());
            ws.send("something").ok();
            while let Some(message) = ws.recv().await {
                println!("received: {message}");
            }
        }),
        // Not a WebSocket request: the express app answers.
        Err(_) => ([(CONTENT_TYPE, "application/json")], r#"{"msg":"hello"}"#).into_response(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::init_logging();
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr()?);

    let config = Config::builder()
        .trusted_proxies(TrustedProxies::loopback().with_header(ProxyHeader::XForwardedFor))
        .build();
    let server = Server::new(config);
    let router = Router::new().fallback({
        let server = server.clone();
        move |upgrade| app(server.clone(), upgrade)
    });
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        common::shutdown_signal().await;
        server.shutdown().await;
    })
    .await?;
    Ok(())
}
