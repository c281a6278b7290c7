//! Shared bits of the peer servers that `bench/compare.sh` runs beside wshub's
//! own examples: the listen address from the command line and the shutdown
//! signal. Each peer is in `src/bin/`, written the way its crate's docs and
//! examples suggest, and every one uses `#[tokio::main]` (the multi-threaded
//! runtime with one worker per CPU the process may run on), as wshub's `echo`
//! and `broadcast` examples do; pinned to one CPU by `taskset`, that is one
//! worker thread for every server.

pub mod fastws;

use std::net::SocketAddr;

/// The address to listen on: the first command-line argument, or `default`.
pub fn listen_addr(default: &str) -> anyhow::Result<SocketAddr> {
    let text = std::env::args()
        .nth(1)
        .unwrap_or_else(|| default.to_owned());
    text.parse()
        .map_err(|e| anyhow::anyhow!("invalid listen address {text:?}: {e}"))
}

/// Binds `addr` and prints `listening on ADDR` (the real port when it was 0).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on {}", listener.local_addr()?);
    Ok(listener)
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
