//! Echo every message back as the same type, with permessage-deflate on. This is
//! the conformance target (Autobahn via kosoku), so it accepts messages up to
//! 64 MiB in up to a million fragments.
//!
//! ```text
//! cargo run --release --example echo -- 127.0.0.1:9001
//! ```
//!
//! The heartbeat is the library's default (a ping every 25 s);
//! `WSHUB_EXAMPLE_PING_MS` changes the interval, so that the comparison
//! suite's idle case (`bench/compare.sh`) sees pings within a short hold.
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

    // The library's defaults are for untrusted clients (16 MiB, 1024 fragments a
    // message). As the conformance target this example takes what Autobahn
    // sends: 9.x has 16 MiB messages and up to 65,536 fragments.
    let limits = wshub::proto::Limits::default()
        .with_max_message_size(64 << 20)
        .with_max_frame_size(64 << 20)
        .with_max_fragments(1 << 20);
    let mut config = Config::builder();
    if let Ok(ms) = std::env::var("WSHUB_EXAMPLE_PING_MS") {
        let ms: u64 = ms
            .parse()
            .map_err(|e| anyhow::anyhow!("WSHUB_EXAMPLE_PING_MS={ms:?}: {e}"))?;
        let interval = std::time::Duration::from_millis(ms.max(1));
        config = config.ping_interval(Some(interval)).pong_timeout(interval);
    }
    let config = config
        .limits(limits)
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
