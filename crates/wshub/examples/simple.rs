//! Seed: "最简单的Server Example" — send `something` to each new client and log
//! every message it sends.
//!
//! ```text
//! cargo run --release --example simple -- 127.0.0.1:8080
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

    let handler = |mut ws: wshub::WebSocket| async move {
        ws.send("something").ok();
        while let Some(message) = ws.recv().await {
            println!("received: {message}");
        }
    };
    Server::new(Config::default())
        .serve(listener, handler, common::shutdown_signal())
        .await?;
    Ok(())
}
