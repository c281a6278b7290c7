//! `wshub serve`: for now the seed's broadcast server with the heartbeat on —
//! every message a client sends goes to every other open client. The full hub
//! (channels, HTTP API, auth) replaces it in the next milestone.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use wshub::{Config, Server};

/// Options of `wshub serve`.
#[derive(Args, Debug)]
pub(crate) struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080", env = "WSHUB_LISTEN")]
    listen: String,
    /// Heartbeat ping interval in seconds (0 turns it off).
    #[arg(long, default_value_t = 25, env = "WSHUB_PING_INTERVAL")]
    ping_interval: u64,
    /// Seconds a client has to answer a ping.
    #[arg(long, default_value_t = 10, env = "WSHUB_PONG_TIMEOUT")]
    pong_timeout: u64,
    /// Log filter (tracing `EnvFilter` syntax).
    #[arg(long, default_value = "info", env = "WSHUB_LOG")]
    log: String,
}

impl Default for ServeArgs {
    fn default() -> Self {
        ServeArgs {
            listen: "127.0.0.1:8080".into(),
            ping_interval: 25,
            pong_timeout: 10,
            log: "info".into(),
        }
    }
}

pub(crate) fn run(args: ServeArgs) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .with_context(|| format!("invalid --log filter {:?}", args.log))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(serve(args))
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let interval = (args.ping_interval > 0).then(|| Duration::from_secs(args.ping_interval));
    let config = Config::builder()
        .ping_interval(interval)
        .pong_timeout(Duration::from_secs(args.pong_timeout.max(1)))
        .deflate(true)
        .build();
    let server = Server::new(config);
    let clients = server.clients().clone();
    tracing::info!(
        listen = %listener.local_addr()?,
        "wshub broadcast server ready: every message goes to every other client"
    );
    server
        .serve(
            listener,
            move |mut ws| {
                let clients = clients.clone();
                async move {
                    tracing::info!(id = ws.id(), client_ip = %ws.client_ip(), "client connected");
                    while let Some(msg) = ws.recv().await {
                        clients.broadcast_except(ws.id(), msg);
                    }
                    if let Some(why) = ws.disconnect() {
                        tracing::info!(id = ws.id(), reason = %why, "client gone");
                    }
                }
            },
            shutdown_signal(),
        )
        .await
        .context("server failed")?;
    tracing::info!("shut down");
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
