//! Seed: "wss" — the echo server over TLS, with the certificate chain and private
//! key read from PEM files.
//!
//! ```text
//! cargo run --release --example wss -- 127.0.0.1:8443 --cert cert.pem --key key.pem
//! ```
mod common;

use std::path::PathBuf;

use clap::Parser;
use wshub::{Config, Server};

#[derive(Parser)]
struct Args {
    /// Address to listen on.
    #[arg(default_value = "127.0.0.1:8443")]
    addr: String,
    /// PEM certificate chain.
    #[arg(long)]
    cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    #[arg(long)]
    key: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::init_logging();
    let args = Args::parse();
    let tls = wshub::tls::load_server_config(&args.cert, &args.key)?;
    let listener = tokio::net::TcpListener::bind(&args.addr).await?;
    println!("listening on {}", listener.local_addr()?);

    let config = Config::builder().deflate(true).build();
    let handler = |mut ws: wshub::WebSocket| async move {
        while let Some(message) = ws.recv().await {
            if ws.send(message).is_err() {
                break;
            }
        }
    };
    Server::with_tls(config, tls)
        .serve(listener, handler, common::shutdown_signal())
        .await?;
    Ok(())
}
