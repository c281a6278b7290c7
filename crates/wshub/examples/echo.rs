//! Echo every message back as the same type, with permessage-deflate on. This is
//! the conformance target (Autobahn via kosoku), so it accepts messages up to
//! 64 MiB.
//!
//! ```text
//! cargo run --release --example echo -- 127.0.0.1:9001
//! ```
mod common;

use wshub::{Config, Server};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::init_logging();
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr()?);

    let config = Config::builder()
        .max_message_size(64 << 20)
        .max_queue_bytes(128 << 20)
        .deflate(true)
        .build();
    let handler = |mut ws: wshub::WebSocket| async move {
        while let Some(message) = ws.recv().await {
            if ws.send(message).is_err() {
                break;
            }
        }
    };
    Server::new(config)
        .serve(listener, handler, common::shutdown_signal())
        .await?;
    Ok(())
}
