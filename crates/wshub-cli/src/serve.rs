//! `wshub serve` (also what a bare `wshub` runs): the hub on the embedded
//! in-memory broker, or on Redis for a cluster (`[broker] engine = "redis"`,
//! one server, a Redis Cluster or a Sentinel-managed master: `broker.mode`) —
//! WebSocket clients speaking `wshub.v1`, the HTTP API,
//! health and metrics, all on one port; optional TLS with certificate reload
//! on file change or SIGHUP; graceful drain on SIGTERM or Ctrl-C; and the
//! message-queue bridges of `[ingest]` and `[upstream]` (Redis Streams or
//! NATS JetStream).

use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use wshub::hub::broker::Broker;
use wshub::hub::config::{BrokerEngine, HubConfig, LogFormat, QueueEngine, RedisMode};
use wshub::hub::memory::{MemoryBroker, MemoryBrokerConfig};
use wshub::hub::Hub;
use wshub_redis::{
    RedisBroker, RedisBrokerConfig, RedisIngest, RedisIngestConfig, RedisUpstream,
    RedisUpstreamConfig,
};

use crate::settings::ConfigArgs;

/// Options of `wshub serve`.
#[derive(Args, Debug, Default)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Address to listen on (shortcut for `--set server.listen=ADDR`).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
}

pub(crate) fn run(mut args: ServeArgs) -> anyhow::Result<()> {
    if let Some(listen) = args.listen.take() {
        args.config.set.push(format!("server.listen={listen}"));
    }
    let loaded = args.config.load()?;
    init_logging(&loaded.config)?;
    match &loaded.file {
        Some(f) => tracing::info!(config = %f.display(), "configuration loaded"),
        None => tracing::info!("no configuration file: built-in defaults"),
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(serve(loaded))
}

fn init_logging(config: &HubConfig) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .with_context(|| format!("invalid log.level {:?}", config.log.level))?;
    // Colours only on a terminal: log files and journald get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        _ => builder.init(),
    }
    Ok(())
}

async fn serve(loaded: crate::settings::Loaded) -> anyhow::Result<()> {
    let config = loaded.config;
    let broker: Arc<dyn Broker> = match config.broker.engine {
        BrokerEngine::Redis => {
            let b = &config.broker;
            let (mut rc, target) = match b.mode {
                RedisMode::Single => (
                    RedisBrokerConfig::new(&b.url),
                    format!("Redis at {}", b.url),
                ),
                RedisMode::Cluster => (
                    RedisBrokerConfig::cluster(b.nodes.iter().cloned()),
                    format!("the Redis Cluster at {}", b.nodes.join(", ")),
                ),
                RedisMode::Sentinel => {
                    // The URL's credentials and database apply to the master.
                    let mut rc = RedisBrokerConfig::sentinel(
                        b.nodes.iter().cloned(),
                        b.sentinel_master.clone(),
                    );
                    rc.url.clone_from(&b.url);
                    (
                        rc,
                        format!(
                            "the Redis master {:?} through the sentinels at {}",
                            b.sentinel_master,
                            b.nodes.join(", ")
                        ),
                    )
                }
            };
            rc.prefix.clone_from(&b.prefix);
            let redis = RedisBroker::connect(rc)
                .await
                .with_context(|| format!("cannot connect to {target}"))?;
            tracing::info!(mode = ?b.mode, redis = %target, prefix = %b.prefix, "broker: redis");
            Arc::new(redis)
        }
        _ => Arc::new(MemoryBroker::new(MemoryBrokerConfig::default())),
    };
    let hub = Hub::new(config.clone(), broker, &loaded.base_dir).context("cannot start the hub")?;
    let redis_ingest = start_redis_queues(&hub, &config).await?;
    let nats_ingest = start_nats_bridges(&hub, &config).await?;
    let tls = match &config.tls {
        Some(tls) => {
            let cert = wshub::cert_reload::ReloadingCert::load(
                &loaded.base_dir.join(&tls.cert),
                &loaded.base_dir.join(&tls.key),
            )
            .context("cannot load the TLS certificate")?;
            if !tls.reload_interval.is_zero() {
                cert.spawn_watcher(tls.reload_interval);
            }
            spawn_sighup_reload(Arc::clone(&cert));
            Some(cert.server_config())
        }
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    let addr = listener.local_addr()?;
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    let http = if tls.is_some() { "https" } else { "http" };
    tracing::info!(
        websocket = %format!("{scheme}://{addr}{}", config.server.ws_path),
        api = if config.api.key.is_some() { "on" } else { "off (set api.key)" },
        anonymous = config.auth.allow_anonymous,
        "wshub hub ready"
    );
    println!(
        "wshub listening on {scheme}://{addr}{} (HTTP API and /metrics on {http}://{addr})",
        config.server.ws_path
    );
    let served = hub
        .serve(listener, tls, shutdown_signal())
        .await
        .context("server failed");
    // The consumer keeps publishing while clients drain (other nodes'
    // clients still receive), and stops once the hub is done; what it
    // held unacknowledged goes to another node after `claim_idle`.
    if let Some(ingest) = redis_ingest {
        ingest.stop().await;
    }
    if let Some(consumer) = nats_ingest {
        consumer.stop().await;
    }
    served
}

/// The Redis Streams bridges: installs the upstream stream when
/// `upstream.engine = "redis"` and starts the ingest consumer when
/// `ingest.engine = "redis"` (an empty `url` means `broker.url`). Fails when
/// Redis cannot be reached at start, like the Redis broker does.
async fn start_redis_queues(hub: &Hub, config: &HubConfig) -> anyhow::Result<Option<RedisIngest>> {
    let url = |own: &str| {
        if own.is_empty() {
            config.broker.url.clone()
        } else {
            own.to_owned()
        }
    };
    if config.upstream.engine == QueueEngine::Redis {
        let url = url(&config.upstream.url);
        let upstream = RedisUpstream::connect(RedisUpstreamConfig::new(&url, &config.upstream))
            .await
            .with_context(|| format!("cannot start the upstream stream on Redis at {url}"))?;
        hub.set_upstream(Arc::new(upstream));
    }
    if config.ingest.engine != QueueEngine::Redis {
        return Ok(None);
    }
    let url = url(&config.ingest.url);
    let ingest = RedisIngest::start(hub.clone(), RedisIngestConfig::new(&url, &config.ingest))
        .await
        .with_context(|| format!("cannot start the ingest consumer on Redis at {url}"))?;
    Ok(Some(ingest))
}

/// The NATS JetStream bridges of `[upstream]` and `[ingest]` (engine
/// `nats`): installs the upstream stream and starts the ingest consumer,
/// which the caller stops after the hub returned. One client connection
/// serves both when their URLs are the same.
async fn start_nats_bridges(
    hub: &Hub,
    config: &HubConfig,
) -> anyhow::Result<Option<wshub_nats::IngestConsumer>> {
    let name = format!("wshub {}", hub.node_id());
    let mut clients: Vec<(String, wshub_nats::async_nats::Client)> = Vec::new();
    let mut client_for = async |url: &str| -> anyhow::Result<wshub_nats::async_nats::Client> {
        let url = if url.is_empty() {
            wshub_nats::DEFAULT_URL
        } else {
            url
        };
        if let Some((_, c)) = clients.iter().find(|(u, _)| u == url) {
            return Ok(c.clone());
        }
        let c = wshub_nats::connect(url, &name).await?;
        clients.push((url.to_owned(), c.clone()));
        Ok(c)
    };
    if config.upstream.engine == QueueEngine::Nats {
        let client = client_for(&config.upstream.url).await?;
        let upstream = wshub_nats::NatsUpstream::start(client, &config.upstream)
            .await
            .context("cannot set up the [upstream] stream")?;
        hub.set_upstream(Arc::new(upstream));
    }
    if config.ingest.engine == QueueEngine::Nats {
        let client = client_for(&config.ingest.url).await?;
        let consumer = wshub_nats::IngestConsumer::start(hub.clone(), client, &config.ingest)
            .await
            .context("cannot start the [ingest] consumer")?;
        return Ok(Some(consumer));
    }
    Ok(None)
}

/// Reloads the certificate on SIGHUP.
fn spawn_sighup_reload(cert: Arc<wshub::cert_reload::ReloadingCert>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!(
                "cannot install the SIGHUP handler: certificate reload only on file change"
            );
            return;
        };
        while hup.recv().await.is_some() {
            match cert.reload() {
                Ok(true) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                Ok(false) => tracing::info!("SIGHUP: TLS certificate unchanged"),
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: TLS reload failed; keeping the current certificate")
                }
            }
        }
    });
    #[cfg(not(unix))]
    drop(cert);
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
