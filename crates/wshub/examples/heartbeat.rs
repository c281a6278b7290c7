//! Seed: "服务端维持心跳包" — ping every client every 30 s and terminate those that
//! did not answer the previous ping. The heartbeat is built into the server:
//! a ping each interval, and a peer whose pong has not arrived by the next one is
//! dropped.
//!
//! ```text
//! cargo run --release --example heartbeat -- 127.0.0.1:8080 [--interval-ms 30000]
//! ```
mod common;

use std::time::Duration;

use clap::Parser;
use wshub::{Config, Server};

#[derive(Parser)]
struct Args {
    /// Address to listen on.
    #[arg(default_value = "127.0.0.1:8080")]
    addr: String,
    /// Ping interval in milliseconds; a client has one interval to answer.
    #[arg(long, default_value_t = 30_000)]
    interval_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::init_logging();
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(&args.addr).await?;
    println!("listening on {}", listener.local_addr()?);

    let interval = Duration::from_millis(args.interval_ms.max(1));
    let config = Config::builder()
        .ping_interval(Some(interval))
        .pong_timeout(interval)
        .build();
    let handler = |ws: wshub::WebSocket| async move {
        println!("client {} connected from {}", ws.id(), ws.client_ip());
        let why = ws.closed().await;
        println!("client {} gone: {why}", ws.id());
    };
    Server::new(config)
        .serve(listener, handler, common::shutdown_signal())
        .await?;
    Ok(())
}
