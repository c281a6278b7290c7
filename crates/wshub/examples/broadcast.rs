//! Seed: "服务端向客户端广播" — every message from a client goes to every other open
//! client, not back to the sender. The frame is encoded once for all receivers,
//! and with permessage-deflate (on, for clients that offer it) compressed once
//! for all the receivers that negotiated it.
//!
//! ```text
//! cargo run --release --example broadcast -- 127.0.0.1:8080
//! ```
mod common;

use wshub::{Config, Server};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::init_logging();
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr()?);

    let server = Server::new(Config::builder().deflate(true).build());
    let clients = server.clients().clone();
    let handler = move |mut ws: wshub::WebSocket| {
        let clients = clients.clone();
        async move {
            while let Some(data) = ws.recv().await {
                // `client !== ws && client.readyState === OPEN`: the registry only
                // holds open clients, and we skip the sender.
                clients.broadcast_except(ws.id(), data);
            }
        }
    };
    server
        .serve(listener, handler, common::shutdown_signal())
        .await?;
    Ok(())
}
